/* Drives a goalkeeper worker through the C ABI: add, next, report, results,
 * audit, log (text and records, with a real foreign holder process), stale
 * handles, forged goal ids, invalid enums, NULL pointers, re-entrant
 * predicates, abandonment and the legacy-hold fault.
 *
 *   worker_test STORE_DIR      (prints "ok N checks" and exits 0 on success) */
#define _GNU_SOURCE
#include <goalkeeper.h>

#include <fcntl.h>
#include <poll.h>
#include <stdalign.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static char store[512];

static void path_of(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", store, name);
}

static void build(const char *out) {
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp", out);
  FILE *f = fopen(tmp, "w");
  CHECK(f != NULL);
  fputs("built\n", f);
  fclose(f);
  CHECK(rename(tmp, out) == 0);
}

struct pred_state {
  gk_worker self;
  int calls;
  int saw_locked;
  gk_status reentrant;
};

/* Validity: the path exists. Also calls back into goalkeeper: asks whether
 * the path is locked by this process (allowed) and calls its own worker
 * (refused with GK_ERROR_INVALID_STATE, never a deadlock). */
static int32_t valid_path(void *data, const char *path) {
  struct pred_state *st = data;
  st->calls++;
  bool locked = false;
  if (gk_path_is_locked_by_me(path, &locked) == GK_OK && locked)
    st->saw_locked++;
  gk_audit a;
  st->reentrant = gk_worker_audit(st->self, &a);
  return access(path, F_OK) == 0 ? 1 : 0;
}

static gk_goal add1(gk_worker w, uint32_t kind, const char *path) {
  gk_goal g = 0;
  const char *outs[1] = {path};
  EXPECT(gk_worker_add_goal(w, kind, outs, 1, GK_MODE_NORMAL, 0, &g), GK_OK);
  CHECK(g != 0);
  return g;
}

static void test_pull_loop(void) {
  gk_worker w = 0;
  EXPECT(gk_worker_new(NULL, &w), GK_OK);
  CHECK(w != 0);

  struct pred_state st = {w, 0, 0, GK_OK};
  EXPECT(gk_worker_set_valid_path(w, valid_path, &st), GK_OK);

  char x[600], y[600];
  path_of(x, sizeof x, "x");
  path_of(y, sizeof y, "y");

  gk_goal top = 0;
  EXPECT(gk_worker_add_goal(w, GK_GOAL_PLAIN, NULL, 0, GK_MODE_NORMAL, 0, &top), GK_OK);
  gk_goal gx = add1(w, GK_GOAL_BUILD, x);
  /* packed: "<store>/y\0" */
  char packed[600];
  size_t plen = strlen(y) + 1;
  memcpy(packed, y, plen);
  gk_goal gy = 0;
  EXPECT(gk_worker_add_goal_packed(w, GK_GOAL_BUILD, (const uint8_t *)packed, plen,
                                   GK_MODE_NORMAL, 0, &gy),
         GK_OK);
  /* S9: the same output again is the same goal. */
  CHECK(add1(w, GK_GOAL_BUILD, x) == gx);
  EXPECT(gk_worker_add_dependency(w, gy, gx), GK_OK);
  EXPECT(gk_worker_add_dependency(w, top, gy), GK_OK);

  /* Invalid arguments. */
  gk_goal bad = 123;
  const char *outs[1] = {x};
  EXPECT(gk_worker_add_goal(w, 7, outs, 1, GK_MODE_NORMAL, 0, &bad), GK_ERROR_INVALID_ARGUMENT);
  CHECK(bad == 0);
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, outs, 1, 9, 0, &bad), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, outs, 1, GK_MODE_NORMAL, 0, NULL),
         GK_ERROR_NULL_POINTER);
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, NULL, 1, GK_MODE_NORMAL, 0, &bad),
         GK_ERROR_NULL_POINTER);
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, NULL, 0, GK_MODE_NORMAL, 0, &bad),
         GK_ERROR_INVALID_ARGUMENT);
  const char *rel[1] = {"relative/path"};
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, rel, 1, GK_MODE_NORMAL, 0, &bad),
         GK_ERROR_INVALID_PATH);
  EXPECT(gk_worker_add_dependency(w, gx, gx), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_next_event(w, NULL), GK_ERROR_NULL_POINTER);

  /* The pull loop. */
  gk_goal order[8];
  int n_run = 0, n_wait = 0;
  for (int iter = 0; iter < 100; iter++) {
    gk_event ev;
    EXPECT(gk_worker_next_event(w, &ev), GK_OK);
    if (ev.kind == GK_EVENT_RUN) {
      CHECK(n_run < 8);
      order[n_run++] = ev.goal;
      if (ev.goal == gx) {
        bool locked = false;
        EXPECT(gk_path_is_locked_by_me(x, &locked), GK_OK);
        CHECK(locked);
        build(x);
      } else if (ev.goal == gy) {
        build(y);
      }
      EXPECT(gk_worker_report(w, ev.goal, GK_OUTCOME_BUILT), GK_OK);
    } else if (ev.kind == GK_EVENT_WAIT) {
      n_wait++;
      struct pollfd p = {ev.fd, POLLIN, 0};
      poll(&p, 1, ev.timeout_ms < 0 ? 100 : (int)ev.timeout_ms);
    } else if (ev.kind == GK_EVENT_DONE) {
      break;
    } else {
      CHECK(!"unexpected FINISHED event");
    }
  }
  CHECK(n_run == 3);
  CHECK(order[0] == gx && order[1] == gy && order[2] == top);
  CHECK(n_wait == 0);
  CHECK(st.calls >= 4);      /* x, y: before locking and under the lock */
  CHECK(st.saw_locked >= 2); /* the re-check runs with the locks held */
  CHECK(st.reentrant == GK_ERROR_INVALID_STATE);

  /* Results outlive execution. */
  gk_goal_result r;
  EXPECT(gk_worker_goal_result(w, gy, &r), GK_OK);
  CHECK(r.state == GK_STATE_FINISHED && r.outcome == GK_OUTCOME_BUILT);
  CHECK(r.kind == GK_GOAL_BUILD && r.mode == GK_MODE_NORMAL);
  EXPECT(gk_worker_goal_result(w, gy, NULL), GK_ERROR_NULL_POINTER);
  size_t len = 0;
  EXPECT(gk_worker_goal_outputs(w, gy, NULL, 0, &len), GK_ERROR_BUFFER_TOO_SMALL);
  CHECK(len == strlen(y) + 1);
  char buf[600];
  EXPECT(gk_worker_goal_outputs(w, gy, buf, sizeof buf, &len), GK_OK);
  CHECK(strcmp(buf, y) == 0);

  /* Reports that are not allowed. */
  EXPECT(gk_worker_report(w, gx, GK_OUTCOME_BUILT), GK_ERROR_INVALID_STATE);
  EXPECT(gk_worker_report(w, gx, 42), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_report(w, gx, GK_OUTCOME_ALREADY_VALID), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_cancel(w, gx), GK_ERROR_INVALID_STATE);

  /* Forged and foreign goal ids. */
  gk_worker w2 = 0;
  EXPECT(gk_worker_new(NULL, &w2), GK_OK);
  gk_goal other = 0;
  EXPECT(gk_worker_add_goal(w2, GK_GOAL_PLAIN, NULL, 0, GK_MODE_NORMAL, 0, &other), GK_OK);
  EXPECT(gk_worker_goal_result(w, other, &r), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_worker_goal_result(w, 0, &r), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_worker_goal_result(w, gy + 1000, &r), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_worker_report(w, gx ^ (1ull << 40), GK_OUTCOME_BUILT), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_worker_add_dependency(w, gx, other), GK_ERROR_STALE_HANDLE);
  CHECK(strstr(gk_last_error_message(), "does not belong") != NULL);

  /* The audit and the log. */
  gk_audit a;
  EXPECT(gk_worker_audit(w, &a), GK_OK);
  CHECK(a.goals == 3 && a.finished == 3 && a.succeeded == 3 && a.failed == 0);
  CHECK(a.locks_held == 0 && a.locks_held_by_finished == 0 && a.slots_used == 0);
  CHECK(a.max_jobs == 1 && a.checks > 5 && a.violations == 0);
  EXPECT(gk_worker_take_log(w, NULL, 0, &len), GK_OK); /* empty log: size 0 */
  CHECK(len == 0);
  int32_t fd = -1;
  EXPECT(gk_worker_fd(w, &fd), GK_OK);
  CHECK(fd >= 0);

  CHECK(strcmp(gk_outcome_name(GK_OUTCOME_ALREADY_VALID), "already-valid") == 0);
  CHECK(strcmp(gk_outcome_name(0), "none") == 0);
  CHECK(strcmp(gk_outcome_name(99), "unknown") == 0);

  /* Stale and wrong-kind handles. */
  EXPECT(gk_worker_free(w), GK_OK);
  EXPECT(gk_worker_free(w), GK_ERROR_STALE_HANDLE);
  gk_event ev;
  EXPECT(gk_worker_next_event(w, &ev), GK_ERROR_STALE_HANDLE);
  CHECK(ev.kind == 0);
  EXPECT(gk_worker_next_event(0, &ev), GK_ERROR_STALE_HANDLE);
  gk_lockset set = 0;
  const char *lp[1] = {x};
  EXPECT(gk_lockset_try_acquire(lp, 1, GK_BACKEND_OFD, &set), GK_OK);
  EXPECT(gk_worker_next_event((gk_worker)set, &ev), GK_ERROR_STALE_HANDLE);
  CHECK(strstr(gk_last_error_message(), "lock set") != NULL);
  EXPECT(gk_lockset_release(set), GK_OK);
  EXPECT(gk_worker_free(w2), GK_OK);
}

static void test_options_and_abandon(void) {
  gk_worker_options o = {2, true, 42, 0, false};
  gk_worker w = 7;
  EXPECT(gk_worker_new(&o, &w), GK_ERROR_INVALID_ARGUMENT);
  CHECK(w == 0);
  EXPECT(gk_worker_new(NULL, NULL), GK_ERROR_NULL_POINTER);
  o.backend = GK_BACKEND_OFD;
  EXPECT(gk_worker_new(&o, &w), GK_OK);

  char a[600];
  path_of(a, sizeof a, "abandoned");
  gk_goal g = add1(w, GK_GOAL_SUBSTITUTE, a);
  gk_event ev;
  EXPECT(gk_worker_next_event(w, &ev), GK_OK);
  CHECK(ev.kind == GK_EVENT_RUN && ev.goal == g && ev.goal_kind == GK_GOAL_SUBSTITUTE);
  bool locked = false;
  EXPECT(gk_path_is_locked_by_me(a, &locked), GK_OK);
  CHECK(locked);
  /* The host abandons its goals: freeing the worker releases everything. */
  EXPECT(gk_worker_free(w), GK_OK);
  EXPECT(gk_path_is_locked_by_me(a, &locked), GK_OK);
  CHECK(!locked);
}

static void test_legacy_hold_is_detected(void) {
  gk_worker_options o = {1, false, GK_BACKEND_OFD, 0, true};
  gk_worker w = 0;
  EXPECT(gk_worker_new(&o, &w), GK_OK);
  char p[600];
  path_of(p, sizeof p, "leaky");
  gk_goal g = add1(w, GK_GOAL_BUILD, p);
  gk_event ev;
  EXPECT(gk_worker_next_event(w, &ev), GK_OK);
  CHECK(ev.kind == GK_EVENT_RUN);
  build(p);
  /* The finished goal keeps its lock (bug #31785 emulated): the ledger says so. */
  EXPECT(gk_worker_report(w, g, GK_OUTCOME_BUILT), GK_ERROR_INVARIANT_VIOLATION);
  CHECK(strstr(gk_last_error_message(), "goal 0") != NULL);
  CHECK(strstr(gk_last_error_message(), p) != NULL);
  gk_audit a;
  EXPECT(gk_worker_audit(w, &a), GK_OK);
  CHECK(a.locks_held_by_finished == 1 && a.violations == 1);
  EXPECT(gk_worker_free(w), GK_OK);
  bool locked = true;
  EXPECT(gk_path_is_locked_by_me(p, &locked), GK_OK);
  CHECK(!locked);
}

/* Under valgrind (make check-valgrind), blocking waits use flock: valgrind
 * does not know that fcntl(F_OFD_SETLKW) blocks. */
static bool use_flock(void) {
  const char *v = getenv("GOALKEEPER_UNDER_VALGRIND");
  return v != NULL && strcmp(v, "1") == 0;
}

/* A foreign holder: a child process that takes an OFD lock (or a flock, see
 * use_flock) on LOCKFILE itself (no goalkeeper), says so on a pipe, and
 * holds it until its other pipe closes. Returns its pid; *release is the
 * pipe end to close. */
static pid_t start_holder(const char *lockfile, int *release) {
  int ready[2], hold[2];
  CHECK(pipe(ready) == 0 && pipe(hold) == 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(ready[0]);
    close(hold[1]);
    int fd = open(lockfile, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fd < 0 || (use_flock() ? flock(fd, LOCK_EX | LOCK_NB)
                               : fcntl(fd, F_OFD_SETLK, &fl)) != 0)
      _exit(1);
    if (write(ready[1], "L", 1) != 1)
      _exit(1);
    char c;
    while (read(hold[0], &c, 1) > 0) {
    }
    _exit(0);
  }
  close(ready[1]);
  close(hold[0]);
  char c = 0;
  CHECK(read(ready[0], &c, 1) == 1 && c == 'L');
  close(ready[0]);
  *release = hold[1];
  return pid;
}

/* gk_worker_take_log_records: every misuse, then the records of a wait on a
 * real foreign holder and of the hand-off that ends it. */
static void test_log_records(void) {
  gk_worker_options o = {1, false, use_flock() ? GK_BACKEND_FLOCK : GK_BACKEND_OFD,
                         0, false};
  gk_worker w = 0;
  EXPECT(gk_worker_new(&o, &w), GK_OK);
  alignas(gk_log_record) unsigned char raw[sizeof(gk_log_record) * 5];
  gk_log_record *recs = (gk_log_record *)raw;
  size_t n = 77;

  /* Misuse: nothing is taken, *n_out is 0 when it can be written. */
  EXPECT(gk_worker_take_log_records(w, recs, 4, NULL), GK_ERROR_NULL_POINTER);
  EXPECT(gk_worker_take_log_records(w, NULL, 4, &n), GK_ERROR_NULL_POINTER);
  CHECK(n == 0);
  n = 77;
  EXPECT(gk_worker_take_log_records(w, (gk_log_record *)(raw + 1), 4, &n),
         GK_ERROR_INVALID_ARGUMENT);
  CHECK(n == 0 && strstr(gk_last_error_message(), "aligned") != NULL);
  EXPECT(gk_worker_take_log_records(w, recs, SIZE_MAX, &n), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_take_log_records(w, recs, 4, (size_t *)((char *)&n + 1)),
         GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_take_log_records(0, recs, 4, &n), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_worker_take_log_records(w ^ 0x10000, recs, 4, &n), GK_ERROR_STALE_HANDLE);
  n = 77;
  EXPECT(gk_worker_take_log_records(w, NULL, 0, &n), GK_OK); /* cap 0: nothing */
  CHECK(n == 0);
  EXPECT(gk_worker_take_log_records(w, recs, 4, &n), GK_OK); /* empty log */
  CHECK(n == 0);

  /* A wait on a lock another process holds. */
  char p[600], lock[640];
  path_of(p, sizeof p, "records");
  snprintf(lock, sizeof lock, "%s.lock", p);
  int release = -1;
  pid_t holder = start_holder(lock, &release);
  gk_goal g = add1(w, GK_GOAL_BUILD, p);
  gk_event ev;
  EXPECT(gk_worker_next_event(w, &ev), GK_OK);
  CHECK(ev.kind == GK_EVENT_WAIT);
  memset(raw, 0xa5, sizeof raw);
  EXPECT(gk_worker_take_log_records(w, recs, 4, &n), GK_OK);
  CHECK(n == 1);
  CHECK(recs[0].kind == GK_LOG_WAITS_FOREIGN);
  CHECK(strcmp(gk_log_kind_name(recs[0].kind), "waits-foreign") == 0);
  CHECK(recs[0].goal == g && recs[0].holder_goal == 0);
  CHECK(recs[0].holder_pid == (int32_t)holder); /* found through /proc */
  CHECK(recs[0].duration_ns == -1 && recs[0].time_ns > 0);
  CHECK(recs[0].path != NULL && strcmp(recs[0].path, p) == 0);
  CHECK(recs[0].path_len == strlen(p));
  CHECK(recs[0].message != NULL && strlen(recs[0].message) == recs[0].message_len);
  CHECK(strstr(recs[0].message, "waits for") != NULL);
  {
    unsigned char canary[sizeof(gk_log_record)];
    memset(canary, 0xa5, sizeof canary);
    CHECK(memcmp(&recs[1], canary, sizeof canary) == 0); /* nothing past n */
  }
  /* The strings outlive other calls on the worker. */
  gk_audit a;
  EXPECT(gk_worker_audit(w, &a), GK_OK);
  CHECK(a.foreign_waits == 1 && strcmp(recs[0].path, p) == 0);

  /* The holder goes; the lock is handed over. */
  close(release);
  int status = 0;
  CHECK(waitpid(holder, &status, 0) == holder && WIFEXITED(status) &&
        WEXITSTATUS(status) == 0);
  int iter = 0;
  do {
    EXPECT(gk_worker_next_event(w, &ev), GK_OK);
    if (ev.kind == GK_EVENT_WAIT) {
      struct pollfd pfd = {ev.fd, POLLIN, 0};
      poll(&pfd, 1, 1000);
    }
  } while (ev.kind == GK_EVENT_WAIT && ++iter < 20);
  CHECK(ev.kind == GK_EVENT_RUN && ev.goal == g);
  /* One record at a time: the rest stays. */
  size_t total = 0;
  bool handed = false;
  for (;;) {
    EXPECT(gk_worker_take_log_records(w, recs, 1, &n), GK_OK);
    if (n == 0)
      break;
    CHECK(n == 1);
    total++;
    if (recs[0].kind == GK_LOG_HANDED_OVER) {
      handed = true;
      CHECK(recs[0].goal == g && recs[0].duration_ns > 0);
      CHECK(strcmp(recs[0].path, p) == 0);
      CHECK(strstr(recs[0].message, "handed over after") != NULL);
    }
  }
  CHECK(handed && total == 1);

  /* The text log is drawn from the same records. */
  build(p);
  EXPECT(gk_worker_report(w, g, GK_OUTCOME_BUILT), GK_OK);
  char q[600];
  path_of(q, sizeof q, "records-again");
  gk_goal g2 = 0;
  const char *outs[1] = {q};
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, outs, 1, GK_MODE_CHECK, 0, &g2), GK_OK);
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, outs, 1, GK_MODE_NORMAL, 0, &g2), GK_OK);
  size_t len = 0;
  EXPECT(gk_worker_take_log(w, NULL, 0, &len), GK_ERROR_BUFFER_TOO_SMALL);
  CHECK(len > 0);
  char text[1024];
  EXPECT(gk_worker_take_log(w, text, sizeof text, &len), GK_OK);
  CHECK(strstr(text, "keeps mode") != NULL);
  EXPECT(gk_worker_take_log_records(w, recs, 4, &n), GK_OK);
  CHECK(n == 0); /* taken as text: gone */

  CHECK(strcmp(gk_log_kind_name(GK_LOG_DROPPED), "dropped") == 0);
  CHECK(strcmp(gk_log_kind_name(0), "unknown") == 0);
  CHECK(strcmp(gk_log_kind_name(99), "unknown") == 0);
  EXPECT(gk_worker_free(w), GK_OK);
  EXPECT(gk_worker_take_log_records(w, recs, 4, &n), GK_ERROR_STALE_HANDLE);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: worker_test STORE_DIR\n");
    return 2;
  }
  snprintf(store, sizeof store, "%s", argv[1]);
  test_pull_loop();
  test_options_and_abandon();
  test_legacy_hold_is_detected();
  test_log_records();
  printf("ok %d checks\n", checks);
  return 0;
}
