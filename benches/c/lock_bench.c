/* goalkeeper lock benchmarks through the C ABI, each against the same
 * system calls written directly in C, in the same process, run alternately
 * (batch of the library, batch of the baseline, ...), medians reported.
 *
 *   lock_bench STOREDIR [ROUNDS_SCALE]
 *
 * Prints one line per benchmark:
 *   RESULT name value baseline_value min max ratio_min ratio_max reps
 * (value and baseline are medians over `reps` alternating repetitions; min
 * and max are the value's; ratio_min and ratio_max those of the
 * per-repetition ratio value/baseline, "-" where there is none). Compiled against
 * include/goalkeeper.h and linked with the release libgoalkeeper.so by
 * `make bench` (benches/gk). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <goalkeeper.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Exported only by a library built with the `noop` cargo feature (the one
 * benches/gk builds for this program), so the header does not declare it. */
gk_status gk_noop(void);

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "lock_bench: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void check(gk_status st, const char *what) {
  if (st != GK_OK) {
    fprintf(stderr, "lock_bench: %s: %s: %s\n", what, gk_status_name(st), gk_last_error_message());
    exit(1);
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double quantile(double *v, int n, double q) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  int i = (int)(q * (n - 1) + 0.5);
  return v[i];
}

/* Prints a RESULT line for `n` paired repetitions: a[i] of the value was
 * measured next to b[i] of the baseline (b may be NULL: no baseline pairs,
 * `base` is then printed as the baseline value). Sorts a and b. */
static void result(const char *name, double *a, double *b, double base, int n, const char *fmt) {
  double rmin = 0, rmax = 0;
  if (b) {
    for (int i = 0; i < n; i++) {
      double r = a[i] / b[i];
      if (i == 0 || r < rmin) rmin = r;
      if (i == 0 || r > rmax) rmax = r;
    }
    base = quantile(b, n, 0.5);
  }
  double med = quantile(a, n, 0.5);
  char line[512];
  int k = snprintf(line, sizeof line, "RESULT %s ", name);
  k += snprintf(line + k, sizeof line - (size_t)k, fmt, med);
  k += snprintf(line + k, sizeof line - (size_t)k, " ");
  k += snprintf(line + k, sizeof line - (size_t)k, fmt, base);
  k += snprintf(line + k, sizeof line - (size_t)k, " ");
  k += snprintf(line + k, sizeof line - (size_t)k, fmt, a[0]);
  k += snprintf(line + k, sizeof line - (size_t)k, " ");
  k += snprintf(line + k, sizeof line - (size_t)k, fmt, a[n - 1]);
  if (b)
    snprintf(line + k, sizeof line - (size_t)k, " %.4f %.4f %d", rmin, rmax, n);
  else
    snprintf(line + k, sizeof line - (size_t)k, " - - %d", n);
  printf("%s\n", line);
  fflush(stdout);
}

/* ---- the raw baseline: the protocol's system calls, nothing else ---- */

static int raw_lock(const char *lockpath, int cmd) {
  int fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) die("open");
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  while (fcntl(fd, cmd, &fl) == -1) {
    if (errno != EINTR) die("lock");
  }
  struct stat st;
  if (fstat(fd, &st) == -1) die("fstat");
  if (st.st_nlink == 0 || st.st_size != 0) {
    fprintf(stderr, "lock_bench: unexpected stale lock file %s\n", lockpath);
    exit(1);
  }
  return fd;
}

static void raw_unlock(int fd, const char *lockpath, int delete) {
  if (delete) {
    /* guix-daemon's deleteLockFile: unlink, then the token. */
    if (unlink(lockpath) == -1) die("unlink");
    if (write(fd, "d", 1) != 1) die("write token");
  }
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl(fd, F_OFD_SETLK, &fl) == -1) die("unlock");
  close(fd);
}

/* ---- alternating measurement ---- */

typedef void (*bench_fn)(void *ctx, int iters);

/* Runs `lib` and `raw` alternately, `rounds` batches of `iters` each, and
 * prints the medians of the per-operation times (divided by `per`). */
static void compare(const char *name, bench_fn lib, bench_fn raw, void *ctx, int rounds, int iters,
                    int per) {
  double *a = calloc((size_t)rounds, sizeof *a), *b = calloc((size_t)rounds, sizeof *b);
  lib(ctx, iters / 10 + 1); /* warm up both */
  raw(ctx, iters / 10 + 1);
  for (int r = 0; r < rounds; r++) {
    /* Alternate which goes first, so neither always follows the other. */
    for (int k = 0; k < 2; k++) {
      int do_lib = (k == 0) == (r % 2 == 0);
      double t0 = now_ns();
      (do_lib ? lib : raw)(ctx, iters);
      double dt = (now_ns() - t0) / iters / per;
      if (do_lib)
        a[r] = dt;
      else
        b[r] = dt;
    }
  }
  result(name, a, b, 0, rounds, "%.1f");
  free(a);
  free(b);
}

struct one {
  const char *path;
  char lockpath[4096];
};

static void lib_cycle(void *c, int n) {
  struct one *o = c;
  for (int i = 0; i < n; i++) {
    gk_lockset s;
    check(gk_lockset_try_acquire(&o->path, 1, GK_BACKEND_OFD, &s), "try_acquire");
    check(gk_lockset_release(s), "release");
  }
}

static void raw_cycle(void *c, int n) {
  struct one *o = c;
  for (int i = 0; i < n; i++) raw_unlock(raw_lock(o->lockpath, F_OFD_SETLK), o->lockpath, 0);
}

static void lib_cycle_delete(void *c, int n) {
  struct one *o = c;
  for (int i = 0; i < n; i++) {
    gk_lockset s;
    check(gk_lockset_try_acquire(&o->path, 1, GK_BACKEND_OFD, &s), "try_acquire");
    check(gk_lockset_set_deletion(s, true), "set_deletion");
    check(gk_lockset_release(s), "release");
  }
}

static void raw_cycle_delete(void *c, int n) {
  struct one *o = c;
  for (int i = 0; i < n; i++) raw_unlock(raw_lock(o->lockpath, F_OFD_SETLK), o->lockpath, 1);
}

#define SET 100
struct many {
  const char *paths[SET];
  char *lockpaths[SET];
};

static void lib_set(void *c, int n) {
  struct many *m = c;
  for (int i = 0; i < n; i++) {
    gk_lockset s;
    check(gk_lockset_try_acquire(m->paths, SET, GK_BACKEND_OFD, &s), "try_acquire 100");
    check(gk_lockset_release(s), "release 100");
  }
}

static void raw_set(void *c, int n) {
  struct many *m = c;
  int fds[SET];
  for (int i = 0; i < n; i++) {
    for (int k = 0; k < SET; k++) fds[k] = raw_lock(m->lockpaths[k], F_OFD_SETLK);
    for (int k = 0; k < SET; k++) raw_unlock(fds[k], m->lockpaths[k], 0);
  }
}

/* ---- cross-process hand-off ---- */

/* Waits until /proc/locks shows a blocked request (a "->" line) on `ino`. */
static void await_waiter(unsigned long ino) {
  char needle[64];
  snprintf(needle, sizeof needle, ":%lu ", ino);
  static char buf[1 << 20];
  double deadline = now_ns() + 10e9;
  for (;;) {
    int fd = open("/proc/locks", O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open /proc/locks");
    ssize_t len = 0, r;
    while ((r = read(fd, buf + len, sizeof buf - 1 - (size_t)len)) > 0) len += r;
    close(fd);
    buf[len] = 0;
    for (char *line = buf; line && *line;) {
      char *nl = strchr(line, '\n');
      if (nl) *nl = 0;
      if (strstr(line, "->") && strstr(line, needle)) return;
      line = nl ? nl + 1 : NULL;
    }
    if (now_ns() > deadline) {
      fprintf(stderr, "lock_bench: the waiter never blocked\n");
      exit(1);
    }
  }
}

enum waiter_kind { WAIT_RAW = 0, WAIT_LIB = 1, WAIT_WORKER = 2 };
#define N_WAITERS 3

/* The waiting process: for each byte on `go`, block for the lock the way
 * `kind` says, write the time it got it to `done`, release it. */
static void waiter(enum waiter_kind kind, struct one *o, int go, int done) {
  char c;
  while (read(go, &c, 1) == 1) {
    double t1;
    if (kind == WAIT_RAW) {
      int fd = raw_lock(o->lockpath, F_OFD_SETLKW);
      t1 = now_ns();
      if (write(done, &t1, sizeof t1) != sizeof t1) die("write");
      raw_unlock(fd, o->lockpath, 0);
    } else if (kind == WAIT_LIB) {
      gk_lockset s;
      check(gk_lockset_acquire(&o->path, 1, GK_BACKEND_OFD, &s), "acquire (waiter)");
      t1 = now_ns();
      if (write(done, &t1, sizeof t1) != sizeof t1) die("write");
      check(gk_lockset_release(s), "release (waiter)");
    } else {
      /* A worker with one build goal whose output lock A holds: the goal
       * waits (the worker's wait thread blocks in F_OFD_SETLKW), the host
       * polls the worker's fd, and t1 is when next_event returns RUN. */
      gk_worker w;
      gk_goal g;
      gk_event ev;
      check(gk_worker_new(NULL, &w), "worker_new");
      check(gk_worker_add_goal(w, GK_GOAL_BUILD, &o->path, 1, GK_MODE_NORMAL, 0, &g), "add_goal");
      for (;;) {
        check(gk_worker_next_event(w, &ev), "next_event");
        if (ev.kind == GK_EVENT_RUN) break;
        if (ev.kind != GK_EVENT_WAIT) {
          fprintf(stderr, "lock_bench: unexpected event %u\n", ev.kind);
          exit(1);
        }
        struct pollfd pfd = {.fd = ev.fd, .events = POLLIN};
        if (poll(&pfd, 1, ev.timeout_ms < 0 ? -1 : (int)ev.timeout_ms) < 0 && errno != EINTR)
          die("poll");
      }
      t1 = now_ns();
      if (write(done, &t1, sizeof t1) != sizeof t1) die("write");
      check(gk_worker_report(w, ev.goal, GK_OUTCOME_FAILED), "report");
      do check(gk_worker_next_event(w, &ev), "next_event");
      while (ev.kind != GK_EVENT_DONE);
      check(gk_worker_free(w), "worker_free");
    }
  }
  _exit(0);
}

#define HANDOFF_BLOCKS 5

/* The quantile `q` of v[0..n), without reordering v. */
static double quantile_of(const double *v, int n, double q) {
  double *c = malloc(sizeof *c * (size_t)n);
  memcpy(c, v, sizeof *c * (size_t)n);
  double r = quantile(c, n, q);
  free(c);
  return r;
}

/* A RESULT line for a latency quantile: overall, with the spread of the
 * per-block quantiles and of their ratios to the baseline's. */
static void handoff_result(const char *name, const double *v, const double *base, int n, double q) {
  double a[HANDOFF_BLOCKS], b[HANDOFF_BLOCKS];
  int per = n / HANDOFF_BLOCKS;
  for (int k = 0; k < HANDOFF_BLOCKS; k++) {
    a[k] = quantile_of(v + k * per, per, q);
    b[k] = quantile_of(base + k * per, per, q);
  }
  double rmin = 0, rmax = 0, lo = a[0], hi = a[0];
  for (int k = 0; k < HANDOFF_BLOCKS; k++) {
    double r = a[k] / b[k];
    if (k == 0 || r < rmin) rmin = r;
    if (k == 0 || r > rmax) rmax = r;
    if (a[k] < lo) lo = a[k];
    if (a[k] > hi) hi = a[k];
  }
  printf("RESULT %s %.2f %.2f %.2f %.2f %.4f %.4f %d\n", name, quantile_of(v, n, q),
         quantile_of(base, n, q), lo, hi, rmin, rmax, HANDOFF_BLOCKS);
  fflush(stdout);
}

static void handoff(struct one *o, int iters) {
  int go[N_WAITERS][2], done[N_WAITERS][2];
  pid_t pid[N_WAITERS];
  for (int k = 0; k < N_WAITERS; k++)
    if (pipe2(go[k], O_CLOEXEC) || pipe2(done[k], O_CLOEXEC)) die("pipe");
  for (int k = 0; k < N_WAITERS; k++) {
    pid[k] = fork();
    if (pid[k] < 0) die("fork");
    if (pid[k] == 0) {
      /* Keep only this waiter's ends, so that every other end reaches EOF. */
      for (int j = 0; j < N_WAITERS; j++) {
        close(go[j][1]);
        close(done[j][0]);
        if (j != k) {
          close(go[j][0]);
          close(done[j][1]);
        }
      }
      waiter((enum waiter_kind)k, o, go[k][0], done[k][1]);
    }
  }
  for (int k = 0; k < N_WAITERS; k++) {
    close(go[k][0]);
    close(done[k][1]);
  }
  double *lat[N_WAITERS];
  for (int k = 0; k < N_WAITERS; k++) lat[k] = calloc((size_t)iters, sizeof(double));
  struct stat st;
  for (int i = 0; i < iters * N_WAITERS; i++) {
    int k = i % N_WAITERS; /* the waiters take turns */
    int fd = raw_lock(o->lockpath, F_OFD_SETLKW);
    if (fstat(fd, &st) == -1) die("fstat");
    if (write(go[k][1], "g", 1) != 1) die("write go");
    await_waiter((unsigned long)st.st_ino);
    double t0 = now_ns();
    raw_unlock(fd, o->lockpath, 0);
    double t1;
    if (read(done[k][0], &t1, sizeof t1) != sizeof t1) die("read done");
    lat[k][i / N_WAITERS] = (t1 - t0) / 1e3; /* µs */
  }
  for (int k = 0; k < N_WAITERS; k++) {
    close(go[k][1]);
    waitpid(pid[k], NULL, 0);
  }
  /* Each figure is the quantile over all iterations; its spread is that of
   * the same quantile over HANDOFF_BLOCKS consecutive blocks of them (the
   * waiters take turns throughout, so each block alternates all three). */
  handoff_result("handoff_cross_process_p50", lat[WAIT_WORKER], lat[WAIT_RAW], iters, 0.5);
  handoff_result("handoff_cross_process_p99", lat[WAIT_WORKER], lat[WAIT_RAW], iters, 0.99);
  handoff_result("handoff_lockset_p50", lat[WAIT_LIB], lat[WAIT_RAW], iters, 0.5);
  handoff_result("handoff_lockset_p99", lat[WAIT_LIB], lat[WAIT_RAW], iters, 0.99);
  for (int k = 0; k < N_WAITERS; k++) free(lat[k]);
}

/* ---- the scheduler through the C ABI ---- */

/* The benchmark DAG, the same as benches/gk/sched.rs generates: goal i
 * depends on min(i, 4) distinct earlier goals drawn by xorshift64. */
static uint64_t rng;
static uint64_t xorshift(void) {
  uint64_t x = rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return rng = x;
}

static uint32_t *make_edges(uint32_t n, size_t *n_edges) {
  uint32_t *e = malloc(sizeof(uint32_t) * 2 * 4 * (size_t)n);
  size_t m = 0;
  rng = 0x9E3779B97F4A7C15ull;
  for (uint32_t i = 1; i < n; i++) {
    uint32_t k = i < 4 ? i : 4, got[4];
    for (uint32_t j = 0; j < k;) {
      uint32_t d = (uint32_t)(xorshift() % i);
      int dup = 0;
      for (uint32_t q = 0; q < j; q++) dup |= got[q] == d;
      if (dup) continue;
      got[j++] = d;
      e[2 * m] = i;
      e[2 * m + 1] = d;
      m++;
    }
  }
  *n_edges = m;
  return e;
}

/* The DAG through the C ABI, 7 calls per goal: gk_worker_add_goal, then
 * one gk_worker_add_dependency per edge, then next_event and report one at
 * a time. Returns seconds, and the seconds the add_dependency calls took in
 * *edges_s. */
static double sched_c_per_edge(uint32_t n, const uint32_t *e, size_t m, double *edges_s) {
  double t0 = now_ns();
  gk_worker w;
  check(gk_worker_new(NULL, &w), "worker_new");
  gk_goal *ids = malloc(sizeof(gk_goal) * n);
  for (uint32_t i = 0; i < n; i++)
    check(gk_worker_add_goal(w, GK_GOAL_PLAIN, NULL, 0, GK_MODE_NORMAL, i, &ids[i]), "add_goal");
  double te = now_ns();
  for (size_t j = 0; j < m; j++)
    check(gk_worker_add_dependency(w, ids[e[2 * j]], ids[e[2 * j + 1]]), "add_dependency");
  *edges_s = (now_ns() - te) / 1e9;
  uint32_t ran = 0;
  for (;;) {
    gk_event ev;
    check(gk_worker_next_event(w, &ev), "next_event");
    if (ev.kind == GK_EVENT_DONE) break;
    if (ev.kind != GK_EVENT_RUN) {
      fprintf(stderr, "lock_bench: unexpected event %u in the DAG run\n", ev.kind);
      exit(1);
    }
    check(gk_worker_report(w, ev.goal, GK_OUTCOME_BUILT), "report");
    ran++;
  }
  double dt = (now_ns() - t0) / 1e9;
  if (ran != n) {
    fprintf(stderr, "lock_bench: ran %u goals of %u\n", ran, n);
    exit(1);
  }
  check(gk_worker_free(w), "worker_free");
  free(ids);
  return dt;
}

/* The DAG through the C ABI with single calls, 3 per goal: each goal is
 * added with its dependencies in one call (gk_worker_add_goals with one
 * goal; the host looks its dependencies' ids up in its own table), then
 * next_event and report one at a time. The edge list is grouped by goal
 * (make_edges). Returns seconds. */
static double sched_c_single(uint32_t n, const uint32_t *e, size_t m) {
  double t0 = now_ns();
  gk_worker w;
  check(gk_worker_new(NULL, &w), "worker_new");
  gk_goal *ids = malloc(sizeof(gk_goal) * n);
  uint32_t kind = GK_GOAL_PLAIN, off[2] = {0, 0};
  uint64_t tag = 0;
  gk_goal deps[4];
  gk_goal_batch b = {.struct_size = sizeof(gk_goal_batch), .n_goals = 1, .kinds = &kind,
                     .tags = &tag, .dep_offsets = off, .deps = deps};
  size_t j = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t k = 0;
    for (; j < m && e[2 * j] == i; j++) deps[k++] = ids[e[2 * j + 1]];
    off[1] = k;
    tag = i;
    check(gk_worker_add_goals(w, &b, &ids[i], NULL), "add_goals (one goal)");
  }
  uint32_t ran = 0;
  for (;;) {
    gk_event ev;
    check(gk_worker_next_event(w, &ev), "next_event");
    if (ev.kind == GK_EVENT_DONE) break;
    if (ev.kind != GK_EVENT_RUN || ev.tag >= n) {
      fprintf(stderr, "lock_bench: unexpected event %u in the DAG run\n", ev.kind);
      exit(1);
    }
    check(gk_worker_report(w, ev.goal, GK_OUTCOME_BUILT), "report");
    ran++;
  }
  double dt = (now_ns() - t0) / 1e9;
  if (ran != n) {
    fprintf(stderr, "lock_bench: ran %u goals of %u\n", ran, n);
    exit(1);
  }
  check(gk_worker_free(w), "worker_free");
  free(ids);
  return dt;
}

/* The DAG through the batch calls: the whole request in one
 * gk_worker_add_goals (the host writes its edges as GK_BATCH_GOAL
 * references, CSR style), then gk_worker_next_events for up to 256 events
 * and gk_worker_report_many for their outcomes. Returns seconds. */
#define SCHED_BATCH 256
static double sched_c_batch(uint32_t n, const uint32_t *e, size_t m) {
  double t0 = now_ns();
  gk_worker w;
  check(gk_worker_new(NULL, &w), "worker_new");
  uint32_t *kinds = malloc(sizeof(uint32_t) * n), *off = malloc(sizeof(uint32_t) * (n + 1));
  uint64_t *tags = malloc(sizeof(uint64_t) * n);
  gk_goal *deps = malloc(sizeof(gk_goal) * (m ? m : 1)), *ids = malloc(sizeof(gk_goal) * n);
  size_t j = 0;
  for (uint32_t i = 0; i < n; i++) {
    kinds[i] = GK_GOAL_PLAIN;
    tags[i] = i;
    off[i] = (uint32_t)j;
    for (; j < m && e[2 * j] == i; j++) deps[j] = GK_BATCH_GOAL(e[2 * j + 1]);
  }
  off[n] = (uint32_t)j;
  gk_goal_batch b = {.struct_size = sizeof(gk_goal_batch), .n_goals = n, .kinds = kinds,
                     .tags = tags, .dep_offsets = off, .deps = deps};
  gk_batch_error err;
  check(gk_worker_add_goals(w, &b, ids, &err), "add_goals");
  gk_event ev[SCHED_BATCH];
  gk_report rep[SCHED_BATCH];
  uint32_t ran = 0;
  for (int done = 0; !done;) {
    size_t k = 0, r = 0;
    check(gk_worker_next_events(w, ev, SCHED_BATCH, &k), "next_events");
    for (size_t i = 0; i < k; i++) {
      if (ev[i].kind == GK_EVENT_RUN && ev[i].tag < n) {
        rep[r].goal = ev[i].goal;
        rep[r].outcome = GK_OUTCOME_BUILT;
        r++;
      } else if (ev[i].kind == GK_EVENT_DONE) {
        done = 1;
      } else {
        fprintf(stderr, "lock_bench: unexpected event %u in the DAG run\n", ev[i].kind);
        exit(1);
      }
    }
    if (r) check(gk_worker_report_many(w, rep, r, &err), "report_many");
    ran += (uint32_t)r;
  }
  double dt = (now_ns() - t0) / 1e9;
  if (ran != n) {
    fprintf(stderr, "lock_bench: ran %u goals of %u\n", ran, n);
    exit(1);
  }
  check(gk_worker_free(w), "worker_free");
  free(kinds);
  free(off);
  free(tags);
  free(deps);
  free(ids);
  return dt;
}

/* The floor: the same DAG walked over flat arrays (CSR of dependents,
 * in-degree counts, a FIFO of ready goals), construction included. */
static double sched_flat(uint32_t n, const uint32_t *e, size_t m) {
  double t0 = now_ns();
  uint32_t *indeg = calloc(n, sizeof *indeg), *start = calloc((size_t)n + 1, sizeof *start);
  uint32_t *adj = malloc(sizeof *adj * (m ? m : 1)), *queue = malloc(sizeof *queue * n);
  for (size_t j = 0; j < m; j++) {
    indeg[e[2 * j]]++;
    start[e[2 * j + 1] + 1]++;
  }
  for (uint32_t i = 0; i < n; i++) start[i + 1] += start[i];
  uint32_t *fill = malloc(sizeof *fill * n);
  memcpy(fill, start, sizeof *fill * n);
  for (size_t j = 0; j < m; j++) adj[fill[e[2 * j + 1]]++] = e[2 * j];
  uint32_t head = 0, tail = 0, ran = 0;
  for (uint32_t i = 0; i < n; i++)
    if (indeg[i] == 0) queue[tail++] = i;
  while (head < tail) {
    uint32_t g = queue[head++];
    ran++;
    for (uint32_t a = start[g]; a < start[g + 1]; a++)
      if (--indeg[adj[a]] == 0) queue[tail++] = adj[a];
  }
  double dt = (now_ns() - t0) / 1e9;
  if (ran != n) exit(1);
  free(indeg);
  free(start);
  free(adj);
  free(queue);
  free(fill);
  return dt;
}

/* The three C pull loops and the flat walk, in rounds: in each, one run of
 * each, in an order that rotates from round to round. */
static void schedule(uint32_t n, int rounds) {
  size_t m;
  uint32_t *e = make_edges(n, &m);
  double *single = calloc((size_t)rounds, sizeof(double)), *flat = calloc((size_t)rounds, sizeof(double));
  double *per_edge = calloc((size_t)rounds, sizeof(double)), *batch = calloc((size_t)rounds, sizeof(double));
  double *flat2 = calloc((size_t)rounds, sizeof(double)), *flat3 = calloc((size_t)rounds, sizeof(double));
  double *pe = calloc((size_t)rounds, sizeof(double)), es;
  sched_c_batch(n, e, m); /* warm up */
  for (int r = 0; r < rounds; r++) {
    for (int k = 0; k < 4; k++) {
      switch ((k + r) % 4) {
      case 0: single[r] = n / sched_c_single(n, e, m); break;
      case 1: flat[r] = n / sched_flat(n, e, m); break;
      case 2: per_edge[r] = n / sched_c_per_edge(n, e, m, &es); pe[r] = es * 1e9 / (double)m; break;
      case 3: batch[r] = n / sched_c_batch(n, e, m); break;
      }
    }
    /* Each figure's ratio pairs it with the flat walk of its own round. */
    flat2[r] = flat[r];
    flat3[r] = flat[r];
  }
  /* Throughput: more is better, so the ratio's spread is of goals/s too. */
  result("schedule_100k_c", single, flat, 0, rounds, "%.0f");
  result("schedule_100k_c_per_edge", per_edge, flat2, 0, rounds, "%.0f");
  result("schedule_100k_c_batch", batch, flat3, 0, rounds, "%.0f");
  /* The cost of one add_dependency call (ns per edge) in the 7-call loop. */
  printf("INFO schedule_100k_c edges %zu per_edge_ns %.1f\n", m, quantile(pe, rounds, 0.5));
  fflush(stdout);
  free(single);
  free(flat);
  free(flat2);
  free(flat3);
  free(per_edge);
  free(batch);
  free(pe);
  free(e);
}

/* ---- the cost of a checked call ---- */

static void audit_calls(void *c, int n) {
  gk_worker w = *(gk_worker *)c;
  gk_audit au;
  for (int i = 0; i < n; i++) check(gk_worker_audit(w, &au), "audit");
}

static void noop_calls(void *c, int n) {
  (void)c;
  for (int i = 0; i < n; i++)
    if (gk_noop() != GK_OK) exit(1);
}

/* `lock_bench STOREDIR --serve`: the raw baselines on demand, for the
 * Guile comparison: each line "raw_cycle N" or "raw_set N" on stdin runs one
 * batch and answers with its ns per cycle (per path for sets). */
static int serve(struct one *o, struct many *m) {
  char line[128];
  while (fgets(line, sizeof line, stdin)) {
    int n = 0;
    double t0 = now_ns();
    if (sscanf(line, "raw_cycle %d", &n) == 1 && n > 0) {
      raw_cycle(o, n);
      printf("%.1f\n", (now_ns() - t0) / n);
    } else if (sscanf(line, "raw_walk %d", &n) == 1 && n > 0) {
      /* The flat walk of the benchmark DAG of n goals: ns per goal
       * (the edges are made outside the measured time). */
      size_t me;
      uint32_t *e = make_edges((uint32_t)n, &me);
      double dt = sched_flat((uint32_t)n, e, me);
      free(e);
      printf("%.1f\n", dt * 1e9 / n);
    } else if (sscanf(line, "raw_set %d", &n) == 1 && n > 0) {
      raw_set(m, n);
      printf("%.1f\n", (now_ns() - t0) / n / SET);
    } else {
      printf("error: unknown command %s", line);
    }
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: lock_bench STOREDIR [SCALE]\n");
    return 2;
  }
  const char *dir = argv[1];
  double scale = argc > 2 && argv[2][0] != '-' ? atof(argv[2]) : 1.0;
  if (scale <= 0) scale = 1.0;
#define N(x) ((int)((x) * scale) > 0 ? (int)((x) * scale) : 1)
  const char *which = getenv("GK_BENCH_ONLY"); /* optional: run one benchmark */
#define WANT(name) (!which || strcmp(which, name) == 0)

  static char path1[2048];
  snprintf(path1, sizeof path1, "%.1900s/0000000000000000000000000000000a-bench-1.0", dir);
  struct one o = {.path = path1};
  snprintf(o.lockpath, sizeof o.lockpath, "%s.lock", path1);

  static struct many m;
  for (int k = 0; k < SET; k++) {
    char *p = malloc(2048), *l = malloc(2100);
    snprintf(p, 2048, "%.1900s/%032d-bench-set-%03d", dir, k, k);
    snprintf(l, 2100, "%s.lock", p);
    m.paths[k] = p;
    m.lockpaths[k] = l;
  }
  if (argc > 2 && strcmp(argv[2], "--serve") == 0) return serve(&o, &m);
  if (WANT("lock_cycle_c")) compare("lock_cycle_c", lib_cycle, raw_cycle, &o, 31, N(4000), 1);
  if (WANT("lock_cycle_delete_c"))
    compare("lock_cycle_delete_c", lib_cycle_delete, raw_cycle_delete, &o, 31, N(1000), 1);
  if (WANT("lock_set_100_c")) compare("lock_set_100_c", lib_set, raw_set, &m, 31, N(40), SET);
  if (WANT("handoff")) handoff(&o, N(300));
  if (WANT("boundary_call_ns")) {
    gk_worker w;
    check(gk_worker_new(NULL, &w), "worker_new");
    compare("boundary_call_ns", audit_calls, noop_calls, &w, 31, N(100000), 1);
    check(gk_worker_free(w), "worker_free");
  }
  if (WANT("schedule_100k_c")) schedule(100000, 7);
  return 0;
}
