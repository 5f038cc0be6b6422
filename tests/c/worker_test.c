/* Drives a goalkeeper worker through the C ABI: add, next, report, results,
 * audit, log (text and records, with a real foreign holder process), stale
 * handles, forged goal ids, invalid enums, NULL pointers, re-entrant
 * predicates, abandonment and the legacy-hold fault; tags in events, and the
 * batch calls with every error path (a refused batch changes nothing: the
 * audit, the locks held and the goals' results are compared).
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

/* ---- Tags and the batch calls ---- */

/* A batch description over fixed arrays (up to 8 goals, 16 outputs, 16
 * dependencies), reset to n plain goals without outputs or dependencies. */
struct tbatch {
  gk_goal_batch b;
  uint32_t kinds[8], modes[8], out_off[9], dep_off[9];
  uint64_t tags[8];
  const char *outs[16];
  gk_goal deps[16];
  gk_goal ids[8];
  gk_batch_error err;
};

static void tb_reset(struct tbatch *t, uint32_t n) {
  memset(t, 0, sizeof *t);
  t->b.struct_size = sizeof(gk_goal_batch);
  t->b.n_goals = n;
  t->b.kinds = t->kinds;
  t->b.modes = t->modes;
  t->b.tags = t->tags;
  for (uint32_t i = 0; i < n; i++) {
    t->kinds[i] = GK_GOAL_PLAIN;
    t->modes[i] = GK_MODE_NORMAL;
    t->tags[i] = 1000 + i;
  }
}

/* Outputs: goal i gets counts[i] strings from `names`, in order. */
static void tb_outputs(struct tbatch *t, const uint32_t *counts, const char **names) {
  uint32_t at = 0;
  for (uint32_t i = 0; i < t->b.n_goals; i++) {
    t->out_off[i] = at;
    for (uint32_t j = 0; j < counts[i]; j++, at++)
      t->outs[at] = names[at];
  }
  t->out_off[t->b.n_goals] = at;
  t->b.output_offsets = t->out_off;
  t->b.outputs = t->outs;
}

/* Dependencies: goal i gets counts[i] ids from `ids`, in order. */
static void tb_deps(struct tbatch *t, const uint32_t *counts, const gk_goal *ids) {
  uint32_t at = 0;
  for (uint32_t i = 0; i < t->b.n_goals; i++) {
    t->dep_off[i] = at;
    for (uint32_t j = 0; j < counts[i]; j++, at++)
      t->deps[at] = ids[at];
  }
  t->dep_off[t->b.n_goals] = at;
  t->b.dep_offsets = t->dep_off;
  t->b.deps = t->deps;
}

/* What a refused batch must leave as it was. */
struct snapshot {
  gk_audit audit;
  size_t held;
  gk_goal_result results[8];
};

static void snap(gk_worker w, const gk_goal *goals, int n, struct snapshot *s) {
  memset(s, 0, sizeof *s);
  EXPECT(gk_worker_audit(w, &s->audit), GK_OK);
  s->audit.checks = 0; /* every call runs the ledger */
  EXPECT(gk_held_count(&s->held), GK_OK);
  for (int i = 0; i < n; i++)
    EXPECT(gk_worker_goal_result(w, goals[i], &s->results[i]), GK_OK);
}

/* The message of the last refusal seen by expect_refused. */
static char refusal[1024];

/* gk_worker_add_goals refuses the batch with `status`, naming element
 * (index, sub, field), and changes nothing. */
static void expect_refused(gk_worker w, struct tbatch *t, gk_status status, size_t index,
                           size_t sub, uint32_t field, const gk_goal *goals, int n_goals,
                           int line) {
  struct snapshot before, after;
  snap(w, goals, n_goals, &before);
  for (int i = 0; i < 8; i++)
    t->ids[i] = 77;
  t->err.index = t->err.sub = 99;
  gk_status got = gk_worker_add_goals(w, &t->b, t->ids, &t->err);
  if (got != status || t->err.index != index || t->err.sub != sub || t->err.field != field) {
    fprintf(stderr,
            "worker_test.c:%d: add_goals gave %s {index %zu, sub %zu, field %u}, expected %s "
            "{%zu, %zu, %u}: %s\n",
            line, gk_status_name(got), t->err.index, t->err.sub, t->err.field,
            gk_status_name(status), index, sub, field, gk_last_error_message());
    exit(1);
  }
  checks++;
  for (uint32_t i = 0; i < t->b.n_goals && i < 8; i++)
    CHECK(t->ids[i] == 0);
  snprintf(refusal, sizeof refusal, "%s", gk_last_error_message());
  CHECK(strlen(refusal) > 0);
  snap(w, goals, n_goals, &after);
  CHECK(memcmp(&before, &after, sizeof before) == 0);
}

#define REFUSED(t, st, index, sub, field)                                      \
  expect_refused(w, (t), (st), (index), (sub), (field), known, n_known, __LINE__)

static void test_batches(void) {
  gk_worker w = 0, w2 = 0;
  gk_worker_options o = {2, true, GK_BACKEND_OFD, 0, false};
  EXPECT(gk_worker_new(&o, &w), GK_OK);
  EXPECT(gk_worker_new(NULL, &w2), GK_OK);
  char p[6][600];
  const char *names[6];
  for (int i = 0; i < 6; i++) {
    char n[8];
    snprintf(n, sizeof n, "b%d", i);
    path_of(p[i], sizeof p[i], n);
    names[i] = p[i];
  }

  /* Tags: given when a goal is added, carried by its events. */
  gk_goal known[8], batch_ids[3];
  int n_known = 0;
  const char *o0[1] = {p[0]};
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, o0, 1, GK_MODE_NORMAL, 0xfeedull, &known[0]), GK_OK);
  n_known = 1;
  uint64_t tag = 0;
  EXPECT(gk_worker_goal_tag(w, known[0], &tag), GK_OK);
  CHECK(tag == 0xfeed);
  EXPECT(gk_worker_goal_tag(w, known[0], NULL), GK_ERROR_NULL_POINTER);
  EXPECT(gk_worker_goal_tag(w, 0, &tag), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_worker_goal_tag(0, known[0], &tag), GK_ERROR_STALE_HANDLE);
  /* S9: the same outputs again keep the first tag. */
  gk_goal again = 0;
  EXPECT(gk_worker_add_goal(w, GK_GOAL_BUILD, o0, 1, GK_MODE_NORMAL, 0xbeef, &again), GK_OK);
  CHECK(again == known[0]);
  EXPECT(gk_worker_goal_tag(w, again, &tag), GK_OK);
  CHECK(tag == 0xfeed);
  gk_event ev;
  EXPECT(gk_worker_next_event(w, &ev), GK_OK);
  CHECK(ev.kind == GK_EVENT_RUN && ev.goal == known[0] && ev.tag == 0xfeed);
  CHECK(ev.goal_kind == GK_GOAL_BUILD && ev.outcome == GK_OUTCOME_NONE && ev.fd == -1);
  /* known[0] runs, holding b0's lock, for the rest of the refusals. */

  struct tbatch t;
  /* The call's own arguments. */
  tb_reset(&t, 2);
  EXPECT(gk_worker_add_goals(w, NULL, t.ids, &t.err), GK_ERROR_NULL_POINTER);
  CHECK(t.err.field == GK_FIELD_NONE);
  EXPECT(gk_worker_add_goals(w, (const gk_goal_batch *)((char *)&t.b + 1), t.ids, &t.err),
         GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_add_goals(w, &t.b, NULL, &t.err), GK_ERROR_NULL_POINTER);
  EXPECT(gk_worker_add_goals(w, &t.b, (gk_goal *)((char *)t.ids + 1), &t.err),
         GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_add_goals(w, &t.b, t.ids, (gk_batch_error *)((char *)&t.err + 1)),
         GK_ERROR_INVALID_ARGUMENT);
  t.b.struct_size = sizeof(gk_goal_batch) - 8;
  REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_NONE);
  CHECK(strstr(refusal, "struct_size") != NULL);
  tb_reset(&t, 2);
  EXPECT(gk_worker_add_goals(0x5700000100000042ull, &t.b, t.ids, &t.err), GK_ERROR_STALE_HANDLE);
  CHECK(t.err.field == GK_FIELD_NONE && t.ids[0] == 0);

  /* The batch as a whole. */
  tb_reset(&t, 2);
  t.b.kinds = NULL;
  REFUSED(&t, GK_ERROR_NULL_POINTER, 0, 0, GK_FIELD_KIND);
  tb_reset(&t, 2);
  t.b.kinds = (const uint32_t *)((const char *)t.kinds + 1);
  REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_KIND);
  tb_reset(&t, 2);
  t.b.modes = (const uint32_t *)((const char *)t.modes + 2);
  REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_MODE);
  {
    uint32_t counts[2] = {0, 1};
    tb_reset(&t, 2);
    t.kinds[1] = GK_GOAL_BUILD;
    tb_outputs(&t, counts, names + 1);
    char packed[700];
    size_t plen = strlen(p[1]) + 1;
    memcpy(packed, p[1], plen);
    t.b.outputs_packed = (const uint8_t *)packed;
    t.b.outputs_packed_len = plen;
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_NONE); /* both */
    t.b.outputs = NULL;
    t.b.outputs_packed = NULL;
    REFUSED(&t, GK_ERROR_NULL_POINTER, 0, 0, GK_FIELD_NONE); /* neither */
    t.b.outputs = (const char *const *)((const char *)t.outs + 4);
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_NONE);
    t.b.outputs = NULL;
    t.b.outputs_packed = (const uint8_t *)packed;
    memcpy(packed + plen, "/x\0", 3);
    t.b.outputs_packed_len = plen + 3;
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_NONE); /* trailing bytes */
    t.b.outputs_packed_len = plen - 1;
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 1, 0, GK_FIELD_OUTPUT); /* cut short */
    t.b.outputs_packed_len = plen;
    /* The packed form works. */
    EXPECT(gk_worker_add_goals(w, &t.b, t.ids, &t.err), GK_OK);
    CHECK(t.err.field == 0 && t.err.index == 0 && t.ids[0] != 0 && t.ids[1] != 0);
    known[n_known++] = t.ids[0];
    known[n_known++] = t.ids[1];
  }
  {
    gk_goal d[1] = {known[1]};
    uint32_t counts[2] = {0, 1};
    tb_reset(&t, 2);
    tb_deps(&t, counts, d);
    t.b.deps = (const gk_goal *)((const char *)t.deps + 4);
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_NONE);
    t.b.deps = NULL;
    REFUSED(&t, GK_ERROR_NULL_POINTER, 1, 0, GK_FIELD_DEPENDENCY);
  }

  /* Goal by goal: the first bad element in the middle of good ones. */
  tb_reset(&t, 3);
  t.kinds[1] = 7;
  REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 1, 0, GK_FIELD_KIND);
  t.kinds[2] = 9; /* a second bad element: the first is named */
  REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 1, 0, GK_FIELD_KIND);
  tb_reset(&t, 3);
  t.modes[1] = 5;
  REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 1, 0, GK_FIELD_MODE);
  {
    uint32_t counts[3] = {1, 2, 1};
    const char *outs[4] = {p[2], p[4], p[3], p[5]};
    tb_reset(&t, 3);
    for (int i = 0; i < 3; i++)
      t.kinds[i] = GK_GOAL_BUILD;
    tb_outputs(&t, counts, outs);
    t.out_off[0] = 1;
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_OUTPUT_OFFSETS);
    t.out_off[0] = 0;
    t.out_off[2] = 0; /* decreasing: goal 1's end */
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 2, 0, GK_FIELD_OUTPUT_OFFSETS);
    t.out_off[2] = 5; /* beyond the last */
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 2, 0, GK_FIELD_OUTPUT_OFFSETS);
    t.out_off[2] = 3;
    t.outs[2] = NULL;
    REFUSED(&t, GK_ERROR_NULL_POINTER, 1, 1, GK_FIELD_OUTPUT);
    t.outs[2] = "relative/out";
    REFUSED(&t, GK_ERROR_INVALID_PATH, 1, 1, GK_FIELD_OUTPUT);
    t.outs[2] = p[3];
    t.kinds[1] = GK_GOAL_SUBSTITUTE; /* two outputs */
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 1, 0, GK_FIELD_OUTPUT);
    t.kinds[1] = GK_GOAL_BUILD;
    /* Goal 1's outputs in the caller's order are b4, b0: b0, a goal of
     * the worker, is its output 1 (sorted, it would be 0). */
    t.outs[2] = p[0];
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 1, 1, GK_FIELD_OUTPUT);
    CHECK(strstr(refusal, "goals[1].outputs[1]") != NULL);
    /* Within the batch: goal 2 substitutes b2, which goal 0 builds. */
    t.outs[2] = p[3];
    t.outs[3] = p[2];
    t.kinds[2] = GK_GOAL_SUBSTITUTE;
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 2, 0, GK_FIELD_OUTPUT);
    t.outs[3] = p[5];
    t.kinds[2] = GK_GOAL_BUILD;
    t.kinds[0] = GK_GOAL_BUILD;
    t.out_off[1] = 0; /* goal 0: a build without outputs */
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_OUTPUT);
  }
  {
    gk_goal d[4] = {known[1], known[2], GK_BATCH_GOAL(0), GK_BATCH_GOAL(2)};
    uint32_t counts[3] = {0, 2, 2};
    tb_reset(&t, 3);
    tb_deps(&t, counts, d);
    t.dep_off[0] = 2;
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 0, 0, GK_FIELD_DEP_OFFSETS);
    t.dep_off[0] = 0;
    t.dep_off[2] = 1;
    t.dep_off[3] = 0; /* the last offset is 0: offset 2 exceeds it */
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 2, 0, GK_FIELD_DEP_OFFSETS);
    t.dep_off[1] = 2;
    t.dep_off[3] = 4; /* offset 2 goes back */
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 2, 0, GK_FIELD_DEP_OFFSETS);
    t.dep_off[1] = 0;
    t.dep_off[2] = 2;
    t.dep_off[3] = 4;
    /* goal 2 depends on itself */
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 2, 1, GK_FIELD_DEPENDENCY);
    t.deps[3] = GK_BATCH_GOAL(3);
    REFUSED(&t, GK_ERROR_INVALID_ARGUMENT, 2, 1, GK_FIELD_DEPENDENCY);
    t.deps[3] = GK_BATCH_GOAL(1);
    t.deps[1] = known[2] + 1000; /* never issued */
    REFUSED(&t, GK_ERROR_STALE_HANDLE, 1, 1, GK_FIELD_DEPENDENCY);
    gk_goal other = 0;
    EXPECT(gk_worker_add_goal(w2, GK_GOAL_PLAIN, NULL, 0, GK_MODE_NORMAL, 0, &other), GK_OK);
    t.deps[1] = other;
    REFUSED(&t, GK_ERROR_STALE_HANDLE, 1, 1, GK_FIELD_DEPENDENCY);
    CHECK(strstr(refusal, "goals[1].deps[1]") != NULL);
    t.deps[1] = 0;
    REFUSED(&t, GK_ERROR_STALE_HANDLE, 1, 1, GK_FIELD_DEPENDENCY);
    /* A goal that has started cannot take dependencies: goal 1 is b0. */
    uint32_t oc[3] = {0, 1, 0};
    tb_outputs(&t, oc, names);
    t.kinds[1] = GK_GOAL_BUILD;
    t.deps[1] = known[2];
    REFUSED(&t, GK_ERROR_INVALID_STATE, 1, 0, GK_FIELD_DEPENDENCY);
    t.b.output_offsets = NULL;
    t.kinds[1] = GK_GOAL_PLAIN;
    /* Forward references, tags and S9 within a batch: it goes in. */
    EXPECT(gk_worker_add_goals(w, &t.b, t.ids, &t.err), GK_OK);
    memcpy(batch_ids, t.ids, sizeof batch_ids);
    for (int i = 0; i < 3; i++) {
      EXPECT(gk_worker_goal_tag(w, t.ids[i], &tag), GK_OK);
      CHECK(tag == 1000u + (unsigned)i);
    }
    gk_goal_result r;
    EXPECT(gk_worker_goal_result(w, t.ids[1], &r), GK_OK);
    CHECK(r.state == GK_STATE_WAITING_DEPS);
  }
  /* n_goals 0: nothing. */
  tb_reset(&t, 0);
  EXPECT(gk_worker_add_goals(w, &t.b, NULL, NULL), GK_OK);

  /* gk_worker_next_events. */
  gk_event evs[8];
  size_t n = 99;
  EXPECT(gk_worker_next_events(w, evs, 0, &n), GK_ERROR_INVALID_ARGUMENT);
  CHECK(n == 0);
  EXPECT(gk_worker_next_events(w, NULL, 8, &n), GK_ERROR_NULL_POINTER);
  EXPECT(gk_worker_next_events(w, evs, 8, NULL), GK_ERROR_NULL_POINTER);
  EXPECT(gk_worker_next_events(w, (gk_event *)((char *)evs + 4), 7, &n), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_next_events(w, evs, SIZE_MAX, &n), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_next_events(0x5700000100000042ull, evs, 8, &n), GK_ERROR_STALE_HANDLE);
  /* Ready now: known[1] (plain, tag 1000), known[2] (build b1, tag 1001),
   * the batch's goal 0 (plain, tag 1000). Goal 2 waits for goal 0 (and
   * goal 1, which waits for known[2]). */
  EXPECT(gk_worker_next_events(w, evs, 8, &n), GK_OK);
  CHECK(n == 3);
  for (size_t i = 0; i < n; i++)
    CHECK(evs[i].kind == GK_EVENT_RUN && evs[i].tag >= 1000 && evs[i].tag <= 1001);
  CHECK(evs[1].goal == known[2] && evs[1].tag == 1001 && evs[1].goal_kind == GK_GOAL_BUILD);
  /* Nothing else is ready: a WAIT, alone. */
  EXPECT(gk_worker_next_events(w, evs + 3, 4, &n), GK_OK);
  CHECK(n == 1 && evs[3].kind == GK_EVENT_WAIT && evs[3].fd >= 0 && evs[3].tag == 0);

  /* gk_worker_report_many. */
  gk_goal plain_a = evs[0].goal, build_b1 = evs[1].goal, plain_b = evs[2].goal;
  gk_report reps[4];
  gk_batch_error e;
  EXPECT(gk_worker_report_many(w, NULL, 2, &e), GK_ERROR_NULL_POINTER);
  EXPECT(gk_worker_report_many(w, (gk_report *)((char *)reps + 4), 2, &e),
         GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_worker_report_many(w, NULL, 0, &e), GK_OK);
  EXPECT(gk_worker_report_many(w, reps, 1, (gk_batch_error *)((char *)&e + 1)),
         GK_ERROR_INVALID_ARGUMENT);
  reps[0] = (gk_report){plain_a, GK_OUTCOME_BUILT, 0};
  EXPECT(gk_worker_report_many(0x5700000100000042ull, reps, 1, &e), GK_ERROR_STALE_HANDLE);
  gk_goal w2_goal = 0;
  EXPECT(gk_worker_add_goal(w2, GK_GOAL_PLAIN, NULL, 0, GK_MODE_NORMAL, 0, &w2_goal), GK_OK);
  struct {
    gk_goal goal;
    uint32_t outcome;
    gk_status status;
    uint32_t field;
  } bad[] = {
      {build_b1, 42, GK_ERROR_INVALID_ARGUMENT, GK_FIELD_OUTCOME},
      {build_b1, GK_OUTCOME_NONE, GK_ERROR_INVALID_ARGUMENT, GK_FIELD_OUTCOME},
      {build_b1, GK_OUTCOME_CANCELLED, GK_ERROR_INVALID_ARGUMENT, GK_FIELD_OUTCOME},
      {0, GK_OUTCOME_BUILT, GK_ERROR_STALE_HANDLE, GK_FIELD_GOAL},
      {w2_goal, GK_OUTCOME_BUILT, GK_ERROR_STALE_HANDLE, GK_FIELD_GOAL},
      {batch_ids[2], GK_OUTCOME_BUILT, GK_ERROR_INVALID_STATE, GK_FIELD_GOAL},
      {plain_a, GK_OUTCOME_FAILED, GK_ERROR_INVALID_ARGUMENT, GK_FIELD_GOAL}, /* twice */
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    struct snapshot before, after;
    snap(w, known, n_known, &before);
    reps[0] = (gk_report){plain_a, GK_OUTCOME_BUILT, 77};
    reps[1] = (gk_report){bad[k].goal, bad[k].outcome, 77};
    reps[2] = (gk_report){plain_b, GK_OUTCOME_BUILT, 77};
    e.index = 9;
    gk_status got = gk_worker_report_many(w, reps, 3, &e);
    if (got != bad[k].status || e.index != 1 || e.field != bad[k].field) {
      fprintf(stderr, "report_many case %zu: %s {%zu, %u}: %s\n", k, gk_status_name(got),
              e.index, e.field, gk_last_error_message());
      exit(1);
    }
    CHECK(strstr(gk_last_error_message(), "reports[1]") != NULL);
    CHECK(reps[0].recorded == 0 && reps[1].recorded == 0 && reps[2].recorded == 0);
    snap(w, known, n_known, &after);
    CHECK(memcmp(&before, &after, sizeof before) == 0);
  }
  /* All good: b0 reported built but not built (recorded failed; keep-going
   * is on), b1 built for real, the plain goals built. */
  build(p[1]);
  reps[0] = (gk_report){known[0], GK_OUTCOME_BUILT, 0};
  reps[1] = (gk_report){build_b1, GK_OUTCOME_BUILT, 0};
  reps[2] = (gk_report){plain_a, GK_OUTCOME_BUILT, 0};
  reps[3] = (gk_report){plain_b, GK_OUTCOME_SUBSTITUTED, 0};
  e.index = 9;
  EXPECT(gk_worker_report_many(w, reps, 4, &e), GK_OK);
  CHECK(e.index == 0 && e.sub == 0 && e.field == GK_FIELD_NONE);
  CHECK(reps[0].recorded == GK_OUTCOME_FAILED && reps[1].recorded == GK_OUTCOME_BUILT);
  CHECK(reps[2].recorded == GK_OUTCOME_BUILT && reps[3].recorded == GK_OUTCOME_SUBSTITUTED);
  size_t held = 9;
  EXPECT(gk_held_count(&held), GK_OK);
  CHECK(held == 0);
  /* The rest, batch by batch: goal 1, then goal 2. */
  for (int step = 0; step < 2; step++) {
    EXPECT(gk_worker_next_events(w, evs, 8, &n), GK_OK);
    CHECK(n == 1 && evs[0].kind == GK_EVENT_RUN && evs[0].goal == batch_ids[1 + step]);
    CHECK(evs[0].tag == 1001u + (unsigned)step);
    reps[0] = (gk_report){evs[0].goal, GK_OUTCOME_BUILT, 0};
    EXPECT(gk_worker_report_many(w, reps, 1, NULL), GK_OK);
  }
  /* A goal whose dependency failed ends at once: FINISHED, then DONE, in
   * one call. */
  {
    gk_goal d[1] = {known[0]};
    uint32_t counts[1] = {1};
    tb_reset(&t, 1);
    t.tags[0] = 4242;
    tb_deps(&t, counts, d);
    EXPECT(gk_worker_add_goals(w, &t.b, t.ids, NULL), GK_OK);
    EXPECT(gk_worker_next_events(w, evs, 8, &n), GK_OK);
    CHECK(n == 2 && evs[0].kind == GK_EVENT_FINISHED && evs[0].goal == t.ids[0]);
    CHECK(evs[0].tag == 4242 && evs[0].outcome == GK_OUTCOME_DEPENDENCY_FAILED);
    CHECK(evs[1].kind == GK_EVENT_DONE);
  }
  gk_audit a;
  EXPECT(gk_worker_audit(w, &a), GK_OK);
  CHECK(a.finished == a.goals && a.violations == 0 && a.locks_held == 0);
  EXPECT(gk_worker_free(w2), GK_OK);
  EXPECT(gk_worker_free(w), GK_OK);
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
  test_batches();
  printf("ok %d checks\n", checks);
  return 0;
}
