/* The store database through the C ABI: gk_store_db_* (a handle),
 * gk_store_path_valid (one call) and gk_worker_set_store_database, with
 * real SQLite files written here through the system libsqlite3 (the same
 * library goalkeeper uses: one SQLite per process). Every error path:
 * NULL arguments, a relative path, a missing file, a directory, a file that
 * is not SQLite, an empty file, a database without ValidPaths, a corrupt
 * one, one locked past the busy timeout by a connection of this process
 * (as the daemon's own connection would be), an unreadable one (a child
 * that drops root), stale and wrong-kind handles; and a database that
 * turns bad while a worker runs.
 *
 *   store_db_test STORE_DIR      (prints "ok N checks" and exits 0) */
#define _GNU_SOURCE
#include <goalkeeper.h>

#include <poll.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks;

#define CHECK(cond)                                                            \
  do {                                                                         \
    checks++;                                                                  \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__,   \
              __LINE__, #cond, gk_last_error_message());                       \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#define EXPECT(call, status) CHECK((call) == (status))

/* The last message names `what` (the database file, usually). */
#define NAMES(what) CHECK(strstr(gk_last_error_message(), (what)) != NULL)

static char store[512];

static void path_of(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", store, name);
}

static void sql(sqlite3 *db, const char *text) {
  char *err = NULL;
  if (sqlite3_exec(db, text, NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "sqlite: %s: %s\n", text, err ? err : "?");
    exit(1);
  }
}

/* Creates `file` with Guix's ValidPaths in `journal` mode, with `paths`. */
static void create_db(const char *file, const char *journal,
                      const char *const *paths, int n) {
  sqlite3 *db = NULL;
  CHECK(sqlite3_open(file, &db) == SQLITE_OK);
  char buf[1200];
  snprintf(buf, sizeof buf, "pragma journal_mode = %s", journal);
  sql(db, buf);
  sql(db, "create table ValidPaths (id integer primary key autoincrement "
          "not null, path text unique not null, hash text not null, "
          "registrationTime integer not null, deriver text, narSize integer)");
  for (int i = 0; i < n; i++) {
    snprintf(buf, sizeof buf,
             "insert into ValidPaths (path, hash, registrationTime) "
             "values ('%s', 'sha256:0', 1)",
             paths[i]);
    sql(db, buf);
  }
  CHECK(sqlite3_close(db) == SQLITE_OK);
}

static void register_path(const char *file, const char *path) {
  const char *p[1] = {path};
  sqlite3 *db = NULL;
  CHECK(sqlite3_open(file, &db) == SQLITE_OK);
  char buf[1200];
  snprintf(buf, sizeof buf,
           "insert into ValidPaths (path, hash, registrationTime) "
           "values ('%s', 'sha256:0', 1)",
           p[0]);
  sql(db, buf);
  CHECK(sqlite3_close(db) == SQLITE_OK);
}

static void write_file(const char *file, const void *bytes, size_t n) {
  FILE *f = fopen(file, "w");
  CHECK(f != NULL);
  CHECK(n == 0 || fwrite(bytes, 1, n, f) == n);
  CHECK(fclose(f) == 0);
}

/* Overwrites `n` bytes of `file` at `offset` in place (same inode). */
static void overwrite(const char *file, long offset, size_t n) {
  FILE *f = fopen(file, "r+");
  CHECK(f != NULL);
  CHECK(fseek(f, offset, SEEK_SET) == 0);
  int ok = 1;
  for (size_t i = 0; i < n; i++)
    ok &= fputc((int)((i * 7 + 13) & 0xff), f) != EOF;
  CHECK(ok);
  CHECK(fclose(f) == 0);
}

/* A connection of this process holding an exclusive transaction. */
static sqlite3 *lock_exclusively(const char *file) {
  sqlite3 *db = NULL;
  CHECK(sqlite3_open(file, &db) == SQLITE_OK);
  sql(db, "begin exclusive");
  return db;
}

static void unlock(sqlite3 *db) {
  sql(db, "rollback");
  CHECK(sqlite3_close(db) == SQLITE_OK);
}

static char good[600], rollback[600], missing[600], garbage[600], empty[600],
    no_table[600], corrupt[600], valid_path[600], unregistered[600];

static void make_databases(void) {
  char dir[600];
  path_of(dir, sizeof dir, "state");
  CHECK(mkdir(dir, 0700) == 0);
  path_of(good, sizeof good, "state/db.sqlite");
  path_of(rollback, sizeof rollback, "state/rollback.sqlite");
  path_of(missing, sizeof missing, "state/missing.sqlite");
  path_of(garbage, sizeof garbage, "state/garbage.sqlite");
  path_of(empty, sizeof empty, "state/empty.sqlite");
  path_of(no_table, sizeof no_table, "state/other.sqlite");
  path_of(corrupt, sizeof corrupt, "state/corrupt.sqlite");
  path_of(valid_path, sizeof valid_path, "aaa-valid");
  path_of(unregistered, sizeof unregistered, "bbb-unregistered");
  const char *paths[1] = {valid_path};
  create_db(good, "wal", paths, 1);
  create_db(rollback, "delete", paths, 1);
  char junk[4096];
  for (size_t i = 0; i < sizeof junk; i++)
    junk[i] = (char)('x' + i % 3);
  write_file(garbage, junk, sizeof junk);
  write_file(empty, "", 0);
  sqlite3 *db = NULL;
  CHECK(sqlite3_open(no_table, &db) == SQLITE_OK);
  sql(db, "create table Other (x)");
  CHECK(sqlite3_close(db) == SQLITE_OK);
  /* A corrupt database: a sound header and schema, ValidPaths' pages
   * overwritten (everything after page 1 of a 4096-byte-page file). */
  create_db(corrupt, "delete", paths, 1);
  struct stat st;
  CHECK(stat(corrupt, &st) == 0 && st.st_size > 4096);
  overwrite(corrupt, 4096, (size_t)st.st_size - 4096);
}

static void test_open_errors(void) {
  gk_store_db db = 7;
  EXPECT(gk_store_db_open(NULL, 0, &db), GK_ERROR_NULL_POINTER);
  CHECK(db == 0);
  EXPECT(gk_store_db_open(good, 0, NULL), GK_ERROR_NULL_POINTER);
  EXPECT(gk_store_db_open("var/guix/db/db.sqlite", 0, &db), GK_ERROR_INVALID_PATH);
  NAMES("var/guix/db/db.sqlite");
  EXPECT(gk_store_db_open("", 0, &db), GK_ERROR_INVALID_PATH);
  EXPECT(gk_store_db_open(missing, 0, &db), GK_ERROR_STORE_DB_MISSING);
  NAMES(missing);
  CHECK(db == 0);
  EXPECT(gk_store_db_open(store, 0, &db), GK_ERROR_STORE_DB_NOT_SQLITE);
  NAMES(store);
  EXPECT(gk_store_db_open(garbage, 0, &db), GK_ERROR_STORE_DB_NOT_SQLITE);
  NAMES(garbage);
  EXPECT(gk_store_db_open(empty, 0, &db), GK_ERROR_STORE_DB_NO_VALID_PATHS);
  NAMES(empty);
  EXPECT(gk_store_db_open(no_table, 0, &db), GK_ERROR_STORE_DB_NO_VALID_PATHS);
  NAMES(no_table);
  NAMES("ValidPaths");
  /* Locked past a 50 ms busy timeout by this process's own connection. */
  sqlite3 *writer = lock_exclusively(rollback);
  EXPECT(gk_store_db_open(rollback, 50, &db), GK_ERROR_STORE_DB_LOCKED);
  NAMES(rollback);
  NAMES("50 ms");
  CHECK(db == 0);
  unlock(writer);
  /* A path longer than PATH_MAX without a NUL within it. */
  char *longpath = malloc(5000);
  CHECK(longpath != NULL);
  memset(longpath, 'a', 4999);
  longpath[0] = '/';
  longpath[4999] = 0;
  EXPECT(gk_store_db_open(longpath, 0, &db), GK_ERROR_INVALID_PATH);
  free(longpath);
  CHECK(strcmp(gk_status_name(GK_ERROR_STORE_DB_LOCKED), "GK_ERROR_STORE_DB_LOCKED") == 0);
  CHECK(strcmp(gk_status_name(GK_ERROR_STORE_DB), "GK_ERROR_STORE_DB") == 0);
}

/* A database this process cannot read: a child that drops root to nobody
 * (the store directory is 0700), or a file with mode 0 for a non-root run. */
static void test_unreadable(void) {
  if (geteuid() != 0) {
    char file[600];
    path_of(file, sizeof file, "state/unreadable.sqlite");
    const char *none[1] = {NULL};
    create_db(file, "delete", none, 0);
    CHECK(chmod(file, 0) == 0);
    gk_store_db db = 0;
    EXPECT(gk_store_db_open(file, 0, &db), GK_ERROR_STORE_DB_UNREADABLE);
    NAMES(file);
    return;
  }
  int pipefd[2];
  CHECK(pipe(pipefd) == 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(pipefd[0]);
    int code = 1;
    if (setgid(65534) == 0 && setuid(65534) == 0) {
      gk_store_db db = 0;
      gk_status s = gk_store_db_open(good, 0, &db);
      bool valid = true;
      gk_status one = gk_store_path_valid(good, valid_path, &valid);
      const char *m = gk_last_error_message();
      if (s == GK_ERROR_STORE_DB_UNREADABLE && one == GK_ERROR_STORE_DB_UNREADABLE &&
          !valid && strstr(m, good) != NULL)
        code = 0;
      else
        dprintf(pipefd[1], "status %d/%d: %s", s, one, m);
    }
    close(pipefd[1]);
    _exit(code);
  }
  close(pipefd[1]);
  char why[1024] = {0};
  ssize_t n = read(pipefd[0], why, sizeof why - 1);
  (void)n;
  close(pipefd[0]);
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
    fprintf(stderr, "unreadable child: %s\n", why);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_queries(void) {
  gk_store_db db = 0;
  EXPECT(gk_store_db_open(good, 0, &db), GK_OK);
  CHECK(db != 0);
  bool valid = false;
  EXPECT(gk_store_db_is_valid(db, valid_path, &valid), GK_OK);
  CHECK(valid);
  EXPECT(gk_store_db_is_valid(db, unregistered, &valid), GK_OK);
  CHECK(!valid);
  /* Bad arguments: *valid is false on every error. */
  valid = true;
  EXPECT(gk_store_db_is_valid(db, "relative/path", &valid), GK_ERROR_INVALID_PATH);
  CHECK(!valid);
  NAMES(good);
  NAMES("relative/path");
  EXPECT(gk_store_db_is_valid(db, NULL, &valid), GK_ERROR_NULL_POINTER);
  EXPECT(gk_store_db_is_valid(db, valid_path, NULL), GK_ERROR_NULL_POINTER);

  /* A batch, in the order given, duplicates included. */
  const char *list[4] = {unregistered, valid_path, valid_path, unregistered};
  bool out[4] = {true, false, false, true};
  EXPECT(gk_store_db_valid_paths(db, list, 4, out), GK_OK);
  CHECK(!out[0] && out[1] && out[2] && !out[3]);
  bool out2[2] = {true, true};
  EXPECT(gk_store_db_valid_paths(db, list, 0, out2), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_store_db_valid_paths(db, NULL, 2, out2), GK_ERROR_NULL_POINTER);
  CHECK(!out2[0] && !out2[1]);
  const char *with_null[2] = {valid_path, NULL};
  out2[0] = out2[1] = true;
  EXPECT(gk_store_db_valid_paths(db, with_null, 2, out2), GK_ERROR_NULL_POINTER);
  CHECK(!out2[0] && !out2[1]);
  const char *with_rel[2] = {valid_path, "rel"};
  EXPECT(gk_store_db_valid_paths(db, with_rel, 2, out2), GK_ERROR_INVALID_PATH);
  EXPECT(gk_store_db_valid_paths(db, list, 2, NULL), GK_ERROR_NULL_POINTER);
  EXPECT(gk_store_db_valid_paths(db, list, (size_t)1 << 40, out2),
         GK_ERROR_INVALID_ARGUMENT);

  /* Stale, forged and wrong-kind handles. */
  EXPECT(gk_store_db_is_valid(0, valid_path, &valid), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_store_db_is_valid(db ^ (1ull << 33), valid_path, &valid),
         GK_ERROR_STALE_HANDLE);
  gk_worker w = 0;
  EXPECT(gk_worker_new(NULL, &w), GK_OK);
  EXPECT(gk_store_db_is_valid((gk_store_db)w, valid_path, &valid), GK_ERROR_STALE_HANDLE);
  NAMES("worker handle");
  EXPECT(gk_worker_next_event((gk_worker)db, &(gk_event){0}), GK_ERROR_STALE_HANDLE);
  NAMES("store database handle");
  EXPECT(gk_store_db_free((gk_store_db)w), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_worker_free(w), GK_OK);
  EXPECT(gk_store_db_free(db), GK_OK);
  EXPECT(gk_store_db_free(db), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_store_db_is_valid(db, valid_path, &valid), GK_ERROR_STALE_HANDLE);
  NAMES("stale");
  EXPECT(gk_store_db_valid_paths(db, list, 1, out), GK_ERROR_STALE_HANDLE);
}

/* A handle whose database turns bad: locked, then garbage, then corrupt. */
static void test_database_turning_bad(void) {
  gk_store_db db = 0;
  EXPECT(gk_store_db_open(rollback, 50, &db), GK_OK);
  bool valid = false;
  EXPECT(gk_store_db_is_valid(db, valid_path, &valid), GK_OK);
  CHECK(valid);
  sqlite3 *writer = lock_exclusively(rollback);
  valid = true;
  EXPECT(gk_store_db_is_valid(db, valid_path, &valid), GK_ERROR_STORE_DB_LOCKED);
  CHECK(!valid);
  NAMES(rollback);
  const char *list[1] = {valid_path};
  bool out[1] = {true};
  EXPECT(gk_store_db_valid_paths(db, list, 1, out), GK_ERROR_STORE_DB_LOCKED);
  CHECK(!out[0]);
  unlock(writer);
  EXPECT(gk_store_db_is_valid(db, valid_path, &valid), GK_OK);
  CHECK(valid);
  EXPECT(gk_store_db_free(db), GK_OK);

  /* Corrupt pages behind a sound header: "any other error". */
  EXPECT(gk_store_db_open(corrupt, 0, &db), GK_OK);
  EXPECT(gk_store_db_is_valid(db, valid_path, &valid), GK_ERROR_STORE_DB);
  CHECK(!valid);
  NAMES(corrupt);
  EXPECT(gk_store_db_free(db), GK_OK);
  EXPECT(gk_store_path_valid(corrupt, valid_path, &valid), GK_ERROR_STORE_DB);
}

static void test_one_call(void) {
  bool valid = false;
  EXPECT(gk_store_path_valid(good, valid_path, &valid), GK_OK);
  CHECK(valid);
  EXPECT(gk_store_path_valid(good, unregistered, &valid), GK_OK);
  CHECK(!valid);
  valid = true;
  EXPECT(gk_store_path_valid(missing, valid_path, &valid), GK_ERROR_STORE_DB_MISSING);
  CHECK(!valid);
  NAMES(missing);
  EXPECT(gk_store_path_valid("db.sqlite", valid_path, &valid), GK_ERROR_INVALID_PATH);
  NAMES("db.sqlite");
  EXPECT(gk_store_path_valid(good, "relative", &valid), GK_ERROR_INVALID_PATH);
  NAMES(good);
  EXPECT(gk_store_path_valid(garbage, valid_path, &valid), GK_ERROR_STORE_DB_NOT_SQLITE);
  EXPECT(gk_store_path_valid(no_table, valid_path, &valid),
         GK_ERROR_STORE_DB_NO_VALID_PATHS);
  EXPECT(gk_store_path_valid(NULL, valid_path, &valid), GK_ERROR_NULL_POINTER);
  EXPECT(gk_store_path_valid(good, NULL, &valid), GK_ERROR_NULL_POINTER);
  EXPECT(gk_store_path_valid(good, valid_path, NULL), GK_ERROR_NULL_POINTER);
}

static void build(const char *out) {
  write_file(out, "built\n", 6);
}

static gk_event next_non_wait(gk_worker w) {
  for (int i = 0; i < 1000; i++) {
    gk_event ev;
    EXPECT(gk_worker_next_event(w, &ev), GK_OK);
    if (ev.kind != GK_EVENT_WAIT)
      return ev;
    struct pollfd p = {ev.fd, POLLIN, 0};
    poll(&p, 1, ev.timeout_ms < 0 || ev.timeout_ms > 100 ? 100 : (int)ev.timeout_ms);
  }
  CHECK(!"no event");
  return (gk_event){0};
}

static gk_goal add_build(gk_worker w, const char *path) {
  const char *outs[1] = {path};
  gk_goal g = 0;
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, outs, 1, GK_MODE_NORMAL, 0, &g), GK_OK);
  return g;
}

static void test_worker(void) {
  gk_worker_options o = {1, true, GK_BACKEND_OFD, 0, false};
  gk_worker w = 0;
  EXPECT(gk_worker_new(&o, &w), GK_OK);
  /* Every bad database is refused at once, naming the file. */
  EXPECT(gk_worker_set_store_database(w, "db.sqlite"), GK_ERROR_INVALID_PATH);
  NAMES("db.sqlite");
  EXPECT(gk_worker_set_store_database(w, missing), GK_ERROR_STORE_DB_MISSING);
  NAMES(missing);
  EXPECT(gk_worker_set_store_database(w, garbage), GK_ERROR_STORE_DB_NOT_SQLITE);
  NAMES(garbage);
  EXPECT(gk_worker_set_store_database(w, no_table), GK_ERROR_STORE_DB_NO_VALID_PATHS);
  NAMES(no_table);
  EXPECT(gk_worker_set_store_database(0, good), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_worker_set_store_database(w, NULL), GK_OK); /* the default */

  /* With the database: a path that exists but is not registered is built,
   * a registered one is already valid. */
  char written[600];
  path_of(written, sizeof written, "ccc-written");
  build(written);
  EXPECT(gk_worker_set_store_database(w, good), GK_OK);
  /* A failed call keeps the database. */
  EXPECT(gk_worker_set_store_database(w, missing), GK_ERROR_STORE_DB_MISSING);
  gk_goal gv = add_build(w, valid_path);
  gk_event ev = next_non_wait(w);
  CHECK(ev.kind == GK_EVENT_FINISHED && ev.goal == gv &&
        ev.outcome == GK_OUTCOME_ALREADY_VALID);
  gk_goal gw = add_build(w, written);
  ev = next_non_wait(w);
  CHECK(ev.kind == GK_EVENT_RUN && ev.goal == gw);
  /* The database turns to garbage while the builder runs: the reported
   * success is recorded as a failure, and the log names the file. */
  struct stat st;
  CHECK(stat(good, &st) == 0);
  register_path(good, written);
  char *saved = malloc((size_t)st.st_size);
  CHECK(saved != NULL);
  FILE *f = fopen(good, "r");
  CHECK(f != NULL && fread(saved, 1, (size_t)st.st_size, f) == (size_t)st.st_size);
  fclose(f);
  overwrite(good, 0, (size_t)st.st_size);
  EXPECT(gk_worker_report(w, gw, GK_OUTCOME_BUILT), GK_OK);
  gk_goal_result r;
  EXPECT(gk_worker_goal_result(w, gw, &r), GK_OK);
  CHECK(r.outcome == GK_OUTCOME_FAILED);
  size_t len = 0;
  EXPECT(gk_worker_take_log(w, NULL, 0, &len), GK_ERROR_BUFFER_TOO_SMALL);
  char *log = malloc(len);
  CHECK(log != NULL);
  EXPECT(gk_worker_take_log(w, log, len, &len), GK_OK);
  bool named = false;
  for (size_t at = 0; at < len; at += strlen(log + at) + 1)
    if (strstr(log + at, good) && strstr(log + at, "not an SQLite database") &&
        strstr(log + at, "recorded as failed"))
      named = true;
  CHECK(named);
  free(log);
  /* Put the file back: the same worker answers again. */
  FILE *g = fopen(good, "r+");
  CHECK(g != NULL && fwrite(saved, 1, (size_t)st.st_size, g) == (size_t)st.st_size);
  fclose(g);
  free(saved);
  char other[600];
  path_of(other, sizeof other, "ddd-other");
  gk_goal go = add_build(w, other);
  ev = next_non_wait(w);
  CHECK(ev.kind == GK_EVENT_RUN && ev.goal == go);
  build(other);
  register_path(good, other);
  EXPECT(gk_worker_report(w, go, GK_OUTCOME_BUILT), GK_OK);
  EXPECT(gk_worker_goal_result(w, go, &r), GK_OK);
  CHECK(r.outcome == GK_OUTCOME_BUILT);
  ev = next_non_wait(w);
  CHECK(ev.kind == GK_EVENT_DONE);
  EXPECT(gk_worker_free(w), GK_OK);
  EXPECT(gk_worker_set_store_database(w, good), GK_ERROR_STALE_HANDLE);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: store_db_test STORE_DIR\n");
    return 2;
  }
  snprintf(store, sizeof store, "%s", argv[1]);
  make_databases();
  test_open_errors();
  test_unreadable();
  test_queries();
  test_database_turning_bad();
  test_one_call();
  test_worker();
  printf("ok %d checks\n", checks);
  return 0;
}
