/*
 * The lock-set half of goalkeeper's C ABI, exercised from C as a daemon
 * would call it, error paths included. Compiled against include/goalkeeper.h
 * and linked with the built libgoalkeeper.so by tests/c_abi_locks.rs.
 *
 *   locks_test STORE_DIR VERSION SECTION
 *
 * SECTION is one of: basics, args, handles, processes, files, forksafety.
 * STORE_DIR is a
 * fresh private directory; VERSION the crate version gk_version() must give.
 * Prints TAP-like lines ("ok N - ...", "not ok N - ...") and a plan, and
 * exits non-zero if any check failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <goalkeeper.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int checks, failures;
static const char *store;

static void report(int ok, const char *file, int line, const char *what) {
  checks++;
  if (ok) {
    printf("ok %d - %s\n", checks, what);
  } else {
    failures++;
    printf("not ok %d - %s  [%s:%d] last error: \"%s\"\n", checks, what, file, line,
           gk_last_error_message());
  }
  fflush(stdout);
}

#define CHECK(cond, what) report((cond) ? 1 : 0, __FILE__, __LINE__, what)

/* Checks that a call returned `want`; prints both names otherwise. */
#define STATUS(call, want, what)                                                        \
  do {                                                                                  \
    gk_status got_ = (call);                                                            \
    char msg_[512];                                                                     \
    snprintf(msg_, sizeof msg_, "%s: %s (want %s)", what, gk_status_name(got_),         \
             gk_status_name(want));                                                     \
    report(got_ == (want), __FILE__, __LINE__, msg_);                                   \
  } while (0)

/* The message of the last failed call contains `needle`. */
#define MESSAGE_HAS(needle, what)                                                       \
  report(strstr(gk_last_error_message(), needle) != NULL, __FILE__, __LINE__, what)

static char *path(const char *name) {
  static char bufs[16][PATH_MAX];
  static int next;
  char *b = bufs[next++ % 16];
  snprintf(b, PATH_MAX, "%s/%s", store, name);
  return b;
}

static char *lock_file(const char *name) {
  static char bufs[4][PATH_MAX];
  static int next;
  char *b = bufs[next++ % 4];
  snprintf(b, PATH_MAX, "%s/%s.lock", store, name);
  return b;
}

static size_t held(void) {
  size_t n = 12345;
  if (gk_held_count(&n) != GK_OK) return 12345;
  return n;
}

static int locked_by_me(const char *p) {
  bool b = false;
  if (gk_path_is_locked_by_me(p, &b) != GK_OK) return -1;
  return b ? 1 : 0;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* ------------------------------------------------------------------ basics */

static void *message_in_other_thread(void *arg) {
  (void)arg;
  const char *m = gk_last_error_message();
  return (void *)(m != NULL && m[0] == '\0' ? "empty" : "not empty");
}

static void basics(const char *version) {
  CHECK(gk_abi_version() == GK_ABI_VERSION, "gk_abi_version() == GK_ABI_VERSION");
  CHECK(gk_version() != NULL && strcmp(gk_version(), version) == 0,
        "gk_version() is the crate version");

  /* Every status has its own name; anything else is unknown. */
  static const struct {
    gk_status s;
    const char *name;
  } names[] = {
      {GK_OK, "GK_OK"},
      {GK_BUSY, "GK_BUSY"},
      {GK_HELD_BY_THIS_PROCESS, "GK_HELD_BY_THIS_PROCESS"},
      {GK_TIMED_OUT, "GK_TIMED_OUT"},
      {GK_ERROR_NULL_POINTER, "GK_ERROR_NULL_POINTER"},
      {GK_ERROR_INVALID_PATH, "GK_ERROR_INVALID_PATH"},
      {GK_ERROR_INVALID_ARGUMENT, "GK_ERROR_INVALID_ARGUMENT"},
      {GK_ERROR_STALE_HANDLE, "GK_ERROR_STALE_HANDLE"},
      {GK_ERROR_WRONG_PROCESS, "GK_ERROR_WRONG_PROCESS"},
      {GK_ERROR_BUFFER_TOO_SMALL, "GK_ERROR_BUFFER_TOO_SMALL"},
      {GK_ERROR_INVALID_STATE, "GK_ERROR_INVALID_STATE"},
      {GK_ERROR_IO, "GK_ERROR_IO"},
      {GK_ERROR_PERMISSION_DENIED, "GK_ERROR_PERMISSION_DENIED"},
      {GK_ERROR_SYMLINK, "GK_ERROR_SYMLINK"},
      {GK_ERROR_NAME_TOO_LONG, "GK_ERROR_NAME_TOO_LONG"},
      {GK_ERROR_NO_SPACE, "GK_ERROR_NO_SPACE"},
      {GK_ERROR_DEADLOCK, "GK_ERROR_DEADLOCK"},
      {GK_ERROR_STALE_LOCK_FILE, "GK_ERROR_STALE_LOCK_FILE"},
      {GK_ERROR_INSECURE_STORE, "GK_ERROR_INSECURE_STORE"},
      {GK_ERROR_FOREIGN_LOCK_FILE, "GK_ERROR_FOREIGN_LOCK_FILE"},
      {GK_ERROR_INVARIANT_VIOLATION, "GK_ERROR_INVARIANT_VIOLATION"},
      {GK_ERROR_SCHEDULER_DEADLOCK, "GK_ERROR_SCHEDULER_DEADLOCK"},
      {GK_ERROR_PANIC, "GK_ERROR_PANIC"},
  };
  int all = 1;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    const char *n = gk_status_name((int32_t)names[i].s);
    if (n == NULL || strcmp(n, names[i].name) != 0) {
      printf("# gk_status_name(%d) = %s, want %s\n", (int)names[i].s, n ? n : "NULL",
             names[i].name);
      all = 0;
    }
  }
  CHECK(all, "gk_status_name names every status");
  CHECK(strcmp(gk_status_name(12345), "GK_UNKNOWN_STATUS") == 0 &&
            strcmp(gk_status_name(-1), "GK_UNKNOWN_STATUS") == 0 &&
            strcmp(gk_status_name(4), "GK_UNKNOWN_STATUS") == 0,
        "gk_status_name of a non-status is GK_UNKNOWN_STATUS");

  /* The happy path, with the buffer sizing protocol. */
  const char *ps[] = {path("bbb-two"), path("aaa-one")};
  gk_lockset set = 0;
  STATUS(gk_lockset_try_acquire(ps, 2, GK_BACKEND_OFD, &set), GK_OK, "try_acquire two paths");
  CHECK(set != 0, "a lock set handle is never 0");
  CHECK(gk_last_error_message() != NULL && gk_last_error_message()[0] == '\0',
        "the message is empty after success");
  CHECK(held() == 2, "gk_held_count is 2");
  CHECK(locked_by_me(path("aaa-one")) == 1 && locked_by_me(path("bbb-two")) == 1,
        "gk_path_is_locked_by_me for both");
  CHECK(locked_by_me(path("ccc-other")) == 0, "gk_path_is_locked_by_me is false for others");
  STATUS(gk_lockset_check(set), GK_OK, "gk_lockset_check of a live set");

  char expect[2 * PATH_MAX];
  size_t el = (size_t)snprintf(expect, sizeof expect, "%s", path("aaa-one")) + 1;
  el += (size_t)snprintf(expect + el, sizeof expect - el, "%s", path("bbb-two")) + 1;
  size_t need = 0;
  STATUS(gk_lockset_paths(set, NULL, 0, &need), GK_ERROR_BUFFER_TOO_SMALL,
         "gk_lockset_paths with cap 0 asks for a buffer");
  CHECK(need == el, "... and says the exact size needed");
  char buf[2 * PATH_MAX];
  memset(buf, 'X', sizeof buf);
  size_t len = 0;
  STATUS(gk_lockset_paths(set, buf, need - 1, &len), GK_ERROR_BUFFER_TOO_SMALL,
         "one byte short is too small");
  CHECK(len == need && buf[0] == 'X' && buf[need - 2] == 'X',
        "... and nothing was written into the short buffer");
  STATUS(gk_lockset_paths(set, buf, need, &len), GK_OK, "the exact size is enough");
  CHECK(len == el && memcmp(buf, expect, el) == 0, "paths sorted, NUL-terminated");
  CHECK(buf[el] == 'X', "nothing written past the reported size");
  STATUS(gk_held_paths(NULL, 0, &need), GK_ERROR_BUFFER_TOO_SMALL, "gk_held_paths sizing");
  CHECK(need == el, "gk_held_paths needs the same size");
  STATUS(gk_held_paths(buf, sizeof buf, &len), GK_OK, "gk_held_paths");
  CHECK(len == el && memcmp(buf, expect, el) == 0, "gk_held_paths lists both");

  /* G5: re-acquiring is reported, in every mode, never a self-block. */
  const char *again[] = {path("aaa-one")};
  gk_lockset other = 77;
  STATUS(gk_lockset_try_acquire(again, 1, GK_BACKEND_OFD, &other), GK_HELD_BY_THIS_PROCESS,
         "try_acquire of a held path");
  CHECK(other == 0, "*out is 0 when nothing was acquired");
  MESSAGE_HAS("already locked by this process", "the message says who holds it");
  STATUS(gk_lockset_acquire(again, 1, GK_BACKEND_OFD, &other), GK_HELD_BY_THIS_PROCESS,
         "blocking acquire of a held path returns at once");
  double t = now_ms();
  STATUS(gk_lockset_acquire_timeout(again, 1, GK_BACKEND_OFD, 10000, &other),
         GK_HELD_BY_THIS_PROCESS, "timed acquire of a held path");
  CHECK(now_ms() - t < 5000, "... without waiting out the timeout");
  STATUS(gk_lockset_try_acquire(again, 1, GK_BACKEND_FLOCK, &other), GK_HELD_BY_THIS_PROCESS,
         "held whatever the backend asked");
  char packed[PATH_MAX + 1];
  size_t pl = (size_t)snprintf(packed, sizeof packed, "%s", path("aaa-one")) + 1;
  STATUS(gk_lockset_acquire_packed((const uint8_t *)packed, pl, GK_BACKEND_OFD, -1, &other),
         GK_HELD_BY_THIS_PROCESS, "packed blocking acquire of a held path");
  /* The message is per thread. */
  pthread_t th;
  void *r = NULL;
  pthread_create(&th, NULL, message_in_other_thread, NULL);
  pthread_join(th, &r);
  CHECK(strcmp((const char *)r, "empty") == 0, "another thread's message is its own (empty)");
  MESSAGE_HAS("already locked", "this thread's message is kept");
  CHECK(held() == 2, "still exactly the two paths");

  STATUS(gk_lockset_release(set), GK_OK, "release");
  CHECK(gk_last_error_message()[0] == '\0', "the message is cleared by a successful call");
  CHECK(held() == 0 && locked_by_me(path("aaa-one")) == 0, "nothing held after release");
  STATUS(gk_held_paths(NULL, 0, &len), GK_OK, "gk_held_paths with nothing held and cap 0");
  CHECK(len == 0, "... needs 0 bytes");

  /* Timeout 0 is a try; a positive timeout acquires a free set at once. */
  STATUS(gk_lockset_acquire_timeout(ps, 2, GK_BACKEND_FLOCK, 0, &set), GK_OK,
         "acquire_timeout(0) of free paths");
  STATUS(gk_lockset_release(set), GK_OK, "release it");
  STATUS(gk_lockset_acquire_timeout(ps, 2, GK_BACKEND_OFD, UINT64_MAX, &set), GK_OK,
         "acquire_timeout(UINT64_MAX) of free paths");
  STATUS(gk_lockset_release(set), GK_OK, "release it");
  STATUS(gk_lockset_acquire(ps, 2, GK_BACKEND_OFD, &set), GK_OK, "blocking acquire, free");
  STATUS(gk_lockset_release(set), GK_OK, "release it");
}

/* -------------------------------------------------------------------- args */

static void args(void) {
  gk_lockset out = 99;
  const char *one[] = {path("aaa-one")};
  const char *with_null[] = {path("aaa-one"), NULL};

  STATUS(gk_lockset_try_acquire(NULL, 1, GK_BACKEND_OFD, &out), GK_ERROR_NULL_POINTER,
         "paths NULL");
  CHECK(out == 0, "*out zeroed on error");
  MESSAGE_HAS("paths", "the message names the argument");
  STATUS(gk_lockset_try_acquire(one, 1, GK_BACKEND_OFD, NULL), GK_ERROR_NULL_POINTER,
         "out NULL");
  MESSAGE_HAS("out", "the message names out");
  STATUS(gk_lockset_acquire(with_null, 2, GK_BACKEND_OFD, &out), GK_ERROR_NULL_POINTER,
         "a NULL element");
  STATUS(gk_lockset_acquire_timeout(NULL, 1, GK_BACKEND_OFD, 10, &out), GK_ERROR_NULL_POINTER,
         "timed: paths NULL");
  STATUS(gk_lockset_acquire_packed(NULL, 5, GK_BACKEND_OFD, 0, &out), GK_ERROR_NULL_POINTER,
         "packed: buf NULL");
  bool b;
  STATUS(gk_path_is_locked_by_me(NULL, &b), GK_ERROR_NULL_POINTER, "is_locked_by_me(NULL)");
  STATUS(gk_path_is_locked_by_me(path("x"), NULL), GK_ERROR_NULL_POINTER,
         "is_locked_by_me out NULL");
  STATUS(gk_held_count(NULL), GK_ERROR_NULL_POINTER, "gk_held_count(NULL)");
  STATUS(gk_held_paths(NULL, 0, NULL), GK_ERROR_NULL_POINTER, "gk_held_paths len_out NULL");

  /* Empty sets. */
  STATUS(gk_lockset_try_acquire(one, 0, GK_BACKEND_OFD, &out), GK_ERROR_INVALID_ARGUMENT,
         "an empty set");
  STATUS(gk_lockset_try_acquire(NULL, 0, GK_BACKEND_OFD, &out), GK_ERROR_INVALID_ARGUMENT,
         "an empty set given as NULL, 0");
  MESSAGE_HAS("empty", "the message says empty");
  STATUS(gk_lockset_acquire_packed((const uint8_t *)"", 0, GK_BACKEND_OFD, 0, &out),
         GK_ERROR_INVALID_ARGUMENT, "packed: an empty buffer");

  /* Bad paths. */
  static char over[PATH_MAX + 64];
  over[0] = '/';
  memset(over + 1, 'a', sizeof over - 2);
  over[sizeof over - 1] = '\0';
  static char unterminated[PATH_MAX + 64];
  memset(unterminated, 'b', sizeof unterminated);
  unterminated[0] = '/';
  unterminated[sizeof unterminated - 1] = '\0'; /* beyond PATH_MAX: never read that far */
  struct {
    const char *p;
    const char *what;
  } bad[] = {
      {"relative/path", "a relative path"},
      {"", "an empty path"},
      {"/", "the root"},
      {"//", "the root spelled //"},
      {"/gnu/store/../etc", "a .. component"},
      {"/gnu/./store", "a . component"},
      {over, "a path over PATH_MAX"},
      {unterminated, "a string without NUL within PATH_MAX"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const char *v[] = {path("aaa-ok"), bad[i].p};
    char what[128];
    snprintf(what, sizeof what, "invalid path: %s", bad[i].what);
    STATUS(gk_lockset_try_acquire(v, 2, GK_BACKEND_OFD, &out), GK_ERROR_INVALID_PATH, what);
    CHECK(out == 0 && held() == 0, "... nothing held, not even the valid path");
  }
  STATUS(gk_path_is_locked_by_me("rel", &b), GK_ERROR_INVALID_PATH,
         "is_locked_by_me of a relative path");
  MESSAGE_HAS("not absolute", "the message says why");

  /* The packed API: NUL-separated, NUL-terminated. */
  char pk[3 * PATH_MAX];
  size_t n = 0;
  n += (size_t)snprintf(pk + n, sizeof pk - n, "%s", path("bbb-p")) + 1;
  n += (size_t)snprintf(pk + n, sizeof pk - n, "%s", path("aaa-p")) + 1;
  STATUS(gk_lockset_acquire_packed((const uint8_t *)pk, n, GK_BACKEND_OFD, 0, &out), GK_OK,
         "packed: two paths");
  CHECK(held() == 2, "... both held");
  STATUS(gk_lockset_release(out), GK_OK, "... released");
  STATUS(gk_lockset_acquire_packed((const uint8_t *)pk, n - 1, GK_BACKEND_OFD, 0, &out),
         GK_ERROR_INVALID_ARGUMENT, "packed: the last path not NUL-terminated");
  /* An embedded NUL: "/s/a\0\0/s/b\0" holds an empty path. */
  char emb[3 * PATH_MAX];
  size_t m = (size_t)snprintf(emb, sizeof emb, "%s", path("aaa-p")) + 1;
  emb[m++] = '\0';
  m += (size_t)snprintf(emb + m, sizeof emb - m, "%s", path("bbb-p")) + 1;
  STATUS(gk_lockset_acquire_packed((const uint8_t *)emb, m, GK_BACKEND_OFD, 0, &out),
         GK_ERROR_INVALID_PATH, "packed: an embedded NUL (empty element)");
  STATUS(gk_lockset_acquire_packed((const uint8_t *)"rel\0", 4, GK_BACKEND_OFD, 0, &out),
         GK_ERROR_INVALID_PATH, "packed: a relative path");
  CHECK(held() == 0, "nothing held after the packed errors");

  /* Duplicates are merged, in any spelling. */
  char dup2[PATH_MAX + 16];
  snprintf(dup2, sizeof dup2, "%s//aaa-dup/", store);
  const char *dups[] = {path("aaa-dup"), dup2, path("aaa-dup")};
  STATUS(gk_lockset_try_acquire(dups, 3, GK_BACKEND_OFD, &out), GK_OK, "duplicates");
  size_t len = 0;
  gk_lockset_paths(out, NULL, 0, &len);
  CHECK(len == strlen(path("aaa-dup")) + 1 && held() == 1, "... merged into one path");
  STATUS(gk_lockset_release(out), GK_OK, "... released");

  /* Backends. */
  STATUS(gk_lockset_try_acquire(one, 1, 2, &out), GK_ERROR_INVALID_ARGUMENT,
         "backend 2 is not a backend");
  MESSAGE_HAS("backend", "the message names the backend");
  STATUS(gk_lockset_acquire(one, 1, 0xffffffffu, &out), GK_ERROR_INVALID_ARGUMENT,
         "backend 0xffffffff");
  CHECK(out == 0 && held() == 0, "nothing held after a bad backend");

  /* A misaligned out pointer is refused, not written through. */
  uint64_t cells[2] = {0, 0};
  gk_lockset *mis = (gk_lockset *)(void *)((char *)cells + 1);
  STATUS(gk_lockset_try_acquire(one, 1, GK_BACKEND_OFD, mis), GK_ERROR_INVALID_ARGUMENT,
         "a misaligned out pointer");
  CHECK(cells[0] == 0 && cells[1] == 0 && held() == 0, "... nothing written, nothing held");
}

/* ----------------------------------------------------------------- handles */

static void handles(void) {
  const char *one[] = {path("aaa-h")};
  gk_lockset set = 0;
  STATUS(gk_lockset_try_acquire(one, 1, GK_BACKEND_OFD, &set), GK_OK, "acquire");
  STATUS(gk_lockset_release(set), GK_OK, "release");
  STATUS(gk_lockset_release(set), GK_ERROR_STALE_HANDLE, "double release");
  MESSAGE_HAS("stale", "the message says stale");
  STATUS(gk_lockset_check(set), GK_ERROR_STALE_HANDLE, "check of a released set");
  STATUS(gk_lockset_set_deletion(set, true), GK_ERROR_STALE_HANDLE,
         "set_deletion on a released set");
  size_t len = 0;
  STATUS(gk_lockset_paths(set, NULL, 0, &len), GK_ERROR_STALE_HANDLE,
         "paths of a released set");

  /* The slot is reused with a new generation: the old handle stays stale. */
  gk_lockset again = 0;
  STATUS(gk_lockset_try_acquire(one, 1, GK_BACKEND_OFD, &again), GK_OK, "acquire again");
  CHECK(again != set, "a new handle, not the old one");
  STATUS(gk_lockset_release(set), GK_ERROR_STALE_HANDLE, "the old handle is still stale");
  STATUS(gk_lockset_check(again), GK_OK, "the new set was not touched by it");

  /* Forged handles. */
  gk_lockset forged[] = {0, UINT64_MAX, again ^ (1ull << 32), again + 1000,
                         ((uint64_t)0x4c << 56) | (1ull << 32) | 4000000ull, 42};
  int all = 1;
  for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
    if (gk_lockset_release(forged[i]) != GK_ERROR_STALE_HANDLE ||
        gk_lockset_check(forged[i]) != GK_ERROR_STALE_HANDLE ||
        gk_lockset_set_deletion(forged[i], true) != GK_ERROR_STALE_HANDLE) {
      printf("# forged handle %#llx accepted\n", (unsigned long long)forged[i]);
      all = 0;
    }
  }
  CHECK(all, "forged handles are stale for release, check and set_deletion");
  STATUS(gk_lockset_check(again), GK_OK, "the live set survived the forgeries");

  /* A handle of another kind. */
  gk_worker w = 0;
  if (gk_worker_new(NULL, &w) == GK_OK) {
    STATUS(gk_lockset_release((gk_lockset)w), GK_ERROR_STALE_HANDLE,
           "a worker handle is not a lock set handle");
    MESSAGE_HAS("worker", "the message says it is a worker handle");
    gk_worker_free(w);
  }

  /* NULL buffer with a capacity. */
  STATUS(gk_lockset_paths(again, NULL, 100, &len), GK_ERROR_NULL_POINTER,
         "paths: buf NULL with cap > 0");
  STATUS(gk_lockset_paths(again, (char[8]){0}, 8, NULL), GK_ERROR_NULL_POINTER,
         "paths: len_out NULL");

  /* Deletion. */
  STATUS(gk_lockset_set_deletion(again, true), GK_OK, "set_deletion(true)");
  STATUS(gk_lockset_release(again), GK_OK, "release with deletion");
  CHECK(access(lock_file("aaa-h"), F_OK) == -1 && errno == ENOENT, "the lock file is gone");
  STATUS(gk_lockset_try_acquire(one, 1, GK_BACKEND_FLOCK, &set), GK_OK, "acquire (flock)");
  STATUS(gk_lockset_set_deletion(set, true), GK_OK, "set_deletion(true)");
  STATUS(gk_lockset_set_deletion(set, false), GK_OK, "set_deletion(false) again");
  STATUS(gk_lockset_release(set), GK_OK, "release without deletion");
  CHECK(access(lock_file("aaa-h"), F_OK) == 0, "the lock file stays");
  CHECK(held() == 0, "nothing held");
}

/* --------------------------------------------------------------- processes */

/* A child process that locks `names` and holds them until told to go. */
struct holder {
  pid_t pid;
  int to_child;
};

static struct holder hold_in_child(const char **names, size_t n, uint32_t backend) {
  int up[2], down[2];
  if (pipe(up) || pipe(down)) abort();
  pid_t pid = fork();
  if (pid == 0) {
    close(up[0]);
    close(down[1]);
    const char *ps[8];
    for (size_t i = 0; i < n; i++) ps[i] = path(names[i]);
    gk_lockset s;
    char ok = gk_lockset_try_acquire(ps, n, backend, &s) == GK_OK ? 'y' : 'n';
    if (write(up[1], &ok, 1) != 1) _exit(2);
    char c;
    ssize_t r = read(down[0], &c, 1); /* until told, or the parent is gone */
    (void)r;
    _exit(gk_lockset_release(s) == GK_OK ? 0 : 1);
  }
  close(up[1]);
  close(down[0]);
  char ok = 0;
  if (read(up[0], &ok, 1) != 1 || ok != 'y') {
    printf("# the child could not lock\n");
    failures++;
  }
  close(up[0]);
  return (struct holder){pid, down[1]};
}

static int end_holder(struct holder h) {
  char c = 'x';
  if (write(h.to_child, &c, 1) != 1) return -1;
  close(h.to_child);
  int st = 0;
  waitpid(h.pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Waits (bounded, 10 s) until /proc/locks shows a request blocked on the
 * inode of `lockfile`: a thread waiting in the kernel has no event to wait
 * for, so this polls the kernel's state every millisecond. */
static int wait_for_waiter(const char *lockfile) {
  struct stat st;
  if (stat(lockfile, &st) != 0) return 0;
  char needle[64];
  snprintf(needle, sizeof needle, ":%lu ", (unsigned long)st.st_ino);
  for (int i = 0; i < 10000; i++) {
    FILE *f = fopen("/proc/locks", "r");
    char line[256];
    int found = 0;
    while (f && fgets(line, sizeof line, f))
      if (strstr(line, "->") && strstr(line, needle)) found = 1;
    if (f) fclose(f);
    if (found) return 1;
    struct timespec ts = {0, 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

static void processes(void) {
  /* Contention with another process: busy, timed out, all or nothing. */
  const char *mid[] = {"ccc"};
  struct holder h = hold_in_child(mid, 1, GK_BACKEND_OFD);
  const char *set4[] = {path("ddd"), path("bbb"), path("ccc"), path("aaa")};
  gk_lockset out = 5;
  STATUS(gk_lockset_try_acquire(set4, 4, GK_BACKEND_OFD, &out), GK_BUSY,
         "try: another process holds ccc");
  CHECK(out == 0, "*out is 0");
  MESSAGE_HAS("ccc", "the message names the busy path");
  CHECK(held() == 0, "L8: nothing kept of aaa, bbb (taken before ccc)");
  double t = now_ms();
  STATUS(gk_lockset_acquire_timeout(set4, 4, GK_BACKEND_OFD, 100, &out), GK_TIMED_OUT,
         "timed: gives up");
  double waited = now_ms() - t;
  CHECK(waited >= 100 && waited < 5000, "... after about the timeout");
  CHECK(held() == 0, "... holding nothing");
  STATUS(gk_lockset_acquire_timeout(set4, 4, GK_BACKEND_OFD, 0, &out), GK_BUSY,
         "timeout 0 is a try: busy, not timed out");
  /* The other paths are free for a third process meanwhile. */
  const char *others[] = {"aaa", "bbb", "ddd"};
  struct holder h2 = hold_in_child(others, 3, GK_BACKEND_OFD);
  CHECK(end_holder(h2) == 0, "a third process could take aaa, bbb, ddd");
  CHECK(end_holder(h) == 0, "the holder released ccc");
  STATUS(gk_lockset_acquire(set4, 4, GK_BACKEND_OFD, &out), GK_OK, "then all four");
  CHECK(held() == 4, "four held");

  /* A fork child does not hold its parent's locks, and cannot use or
   * release the parent's handle; the parent's lock is unaffected. */
  int fds[2];
  if (pipe(fds)) abort();
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    char res[6] = "nnnnn";
    size_t n = 99;
    bool b = true;
    gk_lockset mine = 0;
    const char *c1[] = {path("ccc")};
    res[0] = gk_held_count(&n) == GK_OK && n == 0 ? 'y' : 'n';
    res[1] = gk_path_is_locked_by_me(path("ccc"), &b) == GK_OK && !b ? 'y' : 'n';
    res[2] = gk_lockset_check(out) == GK_ERROR_WRONG_PROCESS ? 'y' : 'n';
    res[3] = gk_lockset_release(out) == GK_ERROR_WRONG_PROCESS ? 'y' : 'n';
    res[4] = gk_lockset_try_acquire(c1, 1, GK_BACKEND_OFD, &mine) == GK_BUSY ? 'y' : 'n';
    if (write(fds[1], res, 5) != 5) _exit(2);
    _exit(0);
  }
  close(fds[1]);
  char res[6] = {0};
  ssize_t r = read(fds[0], res, 5);
  close(fds[0]);
  waitpid(pid, NULL, 0);
  CHECK(r == 5, "the fork child reported");
  CHECK(res[0] == 'y', "fork child: gk_held_count is 0");
  CHECK(res[1] == 'y', "fork child: does not believe it holds the parent's path");
  CHECK(res[2] == 'y', "fork child: check of the parent's handle is GK_ERROR_WRONG_PROCESS");
  CHECK(res[3] == 'y', "fork child: release of the parent's handle is GK_ERROR_WRONG_PROCESS");
  CHECK(res[4] == 'y', "fork child: the parent's path is busy for it");
  STATUS(gk_lockset_check(out), GK_OK, "the parent's set is intact after the child");
  CHECK(held() == 4, "and still holds four");
  /* Still locked for others: a new child cannot take ccc. */
  pid = fork();
  if (pid == 0) {
    gk_lockset s;
    const char *c1[] = {path("ccc")};
    _exit(gk_lockset_try_acquire(c1, 1, GK_BACKEND_OFD, &s) == GK_BUSY ? 0 : 1);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the parent still holds ccc for others");
  STATUS(gk_lockset_release(out), GK_OK, "release the four");

  /* Blocking hand-off across processes. */
  const char *x[] = {"xxx"};
  h = hold_in_child(x, 1, GK_BACKEND_FLOCK);
  const char *px[] = {path("xxx")};
  STATUS(gk_lockset_try_acquire(px, 1, GK_BACKEND_FLOCK, &out), GK_BUSY, "flock: busy");
  pid_t releaser = fork();
  if (releaser == 0) {
    /* Releases the holder once the parent is blocked in the kernel. */
    _exit(wait_for_waiter(lock_file("xxx")) && end_holder(h) == 0 ? 0 : 1);
  }
  close(h.to_child);
  STATUS(gk_lockset_acquire(px, 1, GK_BACKEND_FLOCK, &out), GK_OK,
         "blocking acquire wakes when the holder releases");
  waitpid(releaser, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "... which it did while we were blocked");
  waitpid(h.pid, NULL, 0);
  STATUS(gk_lockset_release(out), GK_OK, "release");
}

/* ------------------------------------------------------------------- files */

static void files(void) {
  gk_lockset out = 0;
  /* A symlink planted at P.lock is refused; its target is untouched. */
  char target[PATH_MAX + 16];
  snprintf(target, sizeof target, "%s/target", store);
  FILE *f = fopen(target, "w");
  fputs("precious", f);
  fclose(f);
  if (symlink(target, lock_file("aaa-link")) != 0) abort();
  const char *l[] = {path("aaa-link")};
  STATUS(gk_lockset_try_acquire(l, 1, GK_BACKEND_OFD, &out), GK_ERROR_SYMLINK,
         "a symlink at P.lock");
  MESSAGE_HAS("symbolic link", "the message says symbolic link");
  STATUS(gk_lockset_acquire(l, 1, GK_BACKEND_FLOCK, &out), GK_ERROR_SYMLINK,
         "a symlink at P.lock, blocking, flock");
  struct stat st;
  CHECK(stat(target, &st) == 0 && st.st_size == 8, "the target is untouched");

  /* A component longer than NAME_MAX but a path within PATH_MAX. */
  char longname[400];
  memset(longname, 'n', 300);
  longname[300] = '\0';
  const char *ln[] = {path(longname)};
  STATUS(gk_lockset_try_acquire(ln, 1, GK_BACKEND_OFD, &out), GK_ERROR_NAME_TOO_LONG,
         "a name component over NAME_MAX");

  /* A store directory anyone may write without the sticky bit. */
  char insecure[PATH_MAX];
  snprintf(insecure, sizeof insecure, "%s/insecure", store);
  if (mkdir(insecure, 0700) != 0 || chmod(insecure, 0777) != 0) abort();
  char ip[PATH_MAX + 16];
  snprintf(ip, sizeof ip, "%s/aaa", insecure);
  const char *ins[] = {ip};
  STATUS(gk_lockset_try_acquire(ins, 1, GK_BACKEND_OFD, &out), GK_ERROR_INSECURE_STORE,
         "a 0777 store directory");
  MESSAGE_HAS("0777", "the message gives the mode");
  if (chmod(insecure, 01777) != 0) abort();
  STATUS(gk_lockset_try_acquire(ins, 1, GK_BACKEND_OFD, &out), GK_OK,
         "the same directory with the sticky bit (1777)");
  STATUS(gk_lockset_release(out), GK_OK, "release");

  /* A store directory that does not exist. */
  char missing[PATH_MAX + 16];
  snprintf(missing, sizeof missing, "%s/missing/aaa", store);
  const char *mi[] = {missing};
  STATUS(gk_lockset_try_acquire(mi, 1, GK_BACKEND_OFD, &out), GK_ERROR_IO,
         "a missing store directory");
  MESSAGE_HAS("missing", "the message names the directory");
  CHECK(held() == 0, "nothing held");
}

/* ------------------------------------------------------------- fork safety */

static volatile int stop_churn;

/* Takes and drops the library's handle table lock, as fast as it can. */
static void *churn(void *arg) {
  (void)arg;
  while (!stop_churn) gk_lockset_release(((uint64_t)0x4c << 56) | (1ull << 32) | 7);
  return NULL;
}

/* A fork child must be able to call the library, whatever another thread
 * of the parent was doing in it at the time of the fork; here, in a process
 * that has not opened any lock file yet. */
static void fork_safety(void) {
  pthread_t th;
  pthread_create(&th, NULL, churn, NULL);
  int hung = 0, bad = 0;
  for (int i = 0; i < 100 && !hung; i++) {
    pid_t pid = fork();
    if (pid == 0) {
      size_t n = 1;
      int ok = gk_lockset_release(42) == GK_ERROR_STALE_HANDLE &&
               gk_held_count(&n) == GK_OK && n == 0;
      _exit(ok ? 0 : 1);
    }
    int st = 0;
    int done = 0;
    for (int ms = 0; ms < 5000 && !done; ms++) {
      if (waitpid(pid, &st, WNOHANG) == pid) {
        done = 1;
      } else {
        struct timespec ts = {0, 1000 * 1000}; /* bounded wait for an exit */
        nanosleep(&ts, NULL);
      }
    }
    if (!done) {
      hung = 1;
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
    } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      bad = 1;
    }
  }
  stop_churn = 1;
  pthread_join(th, NULL);
  CHECK(!hung, "fork children never hang on a lock the parent's other thread held");
  CHECK(!bad, "fork children get correct answers");
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: locks_test STORE_DIR VERSION SECTION\n");
    return 64;
  }
  store = argv[1];
  const char *section = argv[3];
  if (strcmp(section, "basics") == 0) basics(argv[2]);
  else if (strcmp(section, "args") == 0) args();
  else if (strcmp(section, "handles") == 0) handles();
  else if (strcmp(section, "processes") == 0) processes();
  else if (strcmp(section, "files") == 0) files();
  else if (strcmp(section, "forksafety") == 0) fork_safety();
  else {
    fprintf(stderr, "unknown section %s\n", section);
    return 64;
  }
  printf("1..%d\n", checks);
  if (failures) printf("# %d of %d checks failed\n", failures, checks);
  return failures ? 1 : 0;
}
