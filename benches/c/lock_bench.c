/* goalkeeper lock benchmarks through the C ABI, each against the same
 * system calls written directly in C, in the same process, run alternately
 * (batch of the library, batch of the baseline, ...), medians reported.
 *
 *   lock_bench STOREDIR [ROUNDS_SCALE]
 *
 * Prints one line per benchmark:
 *   RESULT name value baseline_value
 * and SAMPLES lines for the hand-off latencies. Compiled against
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
    if (write(fd, "d", 1) != 1) die("write token");
    if (unlink(lockpath) == -1) die("unlink");
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
  printf("RESULT %s %.1f %.1f\n", name, quantile(a, rounds, 0.5), quantile(b, rounds, 0.5));
  fflush(stdout);
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

enum waiter_kind { WAIT_RAW = 0, WAIT_LIB = 1 };

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
    } else {
      gk_lockset s;
      check(gk_lockset_acquire(&o->path, 1, GK_BACKEND_OFD, &s), "acquire (waiter)");
      t1 = now_ns();
      if (write(done, &t1, sizeof t1) != sizeof t1) die("write");
      check(gk_lockset_release(s), "release (waiter)");
    }
  }
  _exit(0);
}

static void handoff(struct one *o, int iters) {
  int go[2][2], done[2][2];
  pid_t pid[2];
  for (int k = 0; k < 2; k++)
    if (pipe2(go[k], O_CLOEXEC) || pipe2(done[k], O_CLOEXEC)) die("pipe");
  for (int k = 0; k < 2; k++) {
    pid[k] = fork();
    if (pid[k] < 0) die("fork");
    if (pid[k] == 0) {
      /* Keep only this waiter's ends, so that every other end reaches EOF. */
      for (int j = 0; j < 2; j++) {
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
  for (int k = 0; k < 2; k++) {
    close(go[k][0]);
    close(done[k][1]);
  }
  double *lat[2] = {calloc((size_t)iters, sizeof(double)), calloc((size_t)iters, sizeof(double))};
  struct stat st;
  for (int i = 0; i < iters * 2; i++) {
    int k = i % 2; /* alternate raw and library waiters */
    int fd = raw_lock(o->lockpath, F_OFD_SETLKW);
    if (fstat(fd, &st) == -1) die("fstat");
    if (write(go[k][1], "g", 1) != 1) die("write go");
    await_waiter((unsigned long)st.st_ino);
    double t0 = now_ns();
    raw_unlock(fd, o->lockpath, 0);
    double t1;
    if (read(done[k][0], &t1, sizeof t1) != sizeof t1) die("read done");
    lat[k][i / 2] = (t1 - t0) / 1e3; /* µs */
  }
  for (int k = 0; k < 2; k++) {
    close(go[k][1]);
    waitpid(pid[k], NULL, 0);
  }
  double lib50 = quantile(lat[1], iters, 0.5), lib99 = quantile(lat[1], iters, 0.99);
  double raw50 = quantile(lat[0], iters, 0.5), raw99 = quantile(lat[0], iters, 0.99);
  printf("RESULT handoff_cross_process_p50 %.2f %.2f\n", lib50, raw50);
  printf("RESULT handoff_cross_process_p99 %.2f %.2f\n", lib99, raw99);
  fflush(stdout);
  free(lat[0]);
  free(lat[1]);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: lock_bench STOREDIR [SCALE]\n");
    return 2;
  }
  const char *dir = argv[1];
  double scale = argc > 2 ? atof(argv[2]) : 1.0;
  if (scale <= 0) scale = 1.0;
#define N(x) ((int)((x) * scale) > 0 ? (int)((x) * scale) : 1)
  const char *which = getenv("GK_BENCH_ONLY"); /* optional: run one benchmark */
#define WANT(name) (!which || strcmp(which, name) == 0)

  static char path1[2048];
  snprintf(path1, sizeof path1, "%.1900s/0000000000000000000000000000000a-bench-1.0", dir);
  struct one o = {.path = path1};
  snprintf(o.lockpath, sizeof o.lockpath, "%s.lock", path1);

  if (WANT("lock_cycle_c")) compare("lock_cycle_c", lib_cycle, raw_cycle, &o, 31, N(4000), 1);
  if (WANT("lock_cycle_delete_c"))
    compare("lock_cycle_delete_c", lib_cycle_delete, raw_cycle_delete, &o, 31, N(1000), 1);
  if (WANT("lock_set_100_c")) {
    struct many m;
    for (int k = 0; k < SET; k++) {
      char *p = malloc(2048), *l = malloc(2100);
      snprintf(p, 2048, "%.1900s/%032d-bench-set-%03d", dir, k, k);
      snprintf(l, 2100, "%s.lock", p);
      m.paths[k] = p;
      m.lockpaths[k] = l;
    }
    compare("lock_set_100_c", lib_set, raw_set, &m, 31, N(40), SET);
  }
  if (WANT("handoff")) handoff(&o, N(300));
  return 0;
}
