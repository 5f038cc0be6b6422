/* What a stack frame that lives across a system call costs, and what code
 * first run after a system call costs.
 *
 * The raw lock cycle of lock_bench.c (open, OFD lock, fstat, unlock, close),
 * with each system call made at the bottom of D nested calls of small
 * functions, for several depths D. A nested call costs a few instructions,
 * but on machines whose kernel refills or clears the return-address
 * predictor on the way back to user space, the return out of each frame
 * that was live across the system call is mispredicted. The lock layer is
 * written so that the C ABI's cycle runs in one frame of the library
 * (doc/design.md#where-an-uncontended-lock-cycles-time-goes); this program
 * measures what that is worth on the machine at hand.
 *
 * `make bench` runs it; by hand:
 *
 *   cc -O2 -o /tmp/syscall_frames benches/c/syscall_frames.c
 *   /tmp/syscall_frames /dev/shm
 *
 * Prints, for each depth, the median ns per cycle over 31 alternated rounds
 * and the extra cost per frame and system call against depth 0. On x86-64
 * it then runs the cycle with a chain of L code lines (64 bytes, a few
 * instructions and a jump to a line 1 KiB further) after each system call,
 * and prints the extra cost per line. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 31
#define ITERS 2000
#define SYSCALLS 5

static const int depths[] = {0, 2, 4, 8};
#define NDEPTHS (int)(sizeof depths / sizeof depths[0])

static char lockpath[4096];
static volatile long sink;

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

/* Calls f(a) at the bottom of d frames of its own. */
__attribute__((noinline)) static long nest(int d, long (*f)(long), long a) {
  if (d == 0) return f(a);
  long r = nest(d - 1, f, a);
  sink = r; /* not a tail call: the frame stays live across f */
  return r;
}

static long do_open(long unused) {
  (void)unused;
  int fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) die("open");
  return fd;
}

static long set_lock(long fd, short type) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  if (fcntl((int)fd, F_OFD_SETLK, &fl) == -1) die("fcntl");
  return 0;
}

static long do_lock(long fd) { return set_lock(fd, F_WRLCK); }
static long do_unlock(long fd) { return set_lock(fd, F_UNLCK); }

static long do_stat(long fd) {
  struct stat st;
  if (fstat((int)fd, &st) == -1) die("fstat");
  return st.st_size;
}

static long do_close(long fd) { return close((int)fd); }

static void cycles(int d, int n) {
  for (int i = 0; i < n; i++) {
    long fd = nest(d, do_open, 0);
    nest(d, do_lock, fd);
    nest(d, do_stat, fd);
    nest(d, do_unlock, fd);
    nest(d, do_close, fd);
  }
}

#if defined(__x86_64__)
/* Chains of code lines: each line holds seven 4-byte instructions and a jump
 * to the next line, 1 KiB further on, so no line is fetched with another. */
#define STR(x) #x
#define XSTR(x) STR(x)
#define CHAIN(name, lines)                                                        \
  __asm__(".text\n.p2align 12\n" #name ":\n.rept " XSTR(lines) "\n"             \
          "lea 1(%rax),%rax\nlea 1(%rax),%rax\nlea 1(%rax),%rax\n"               \
          "lea 1(%rax),%rax\nlea 1(%rax),%rax\nlea 1(%rax),%rax\n"               \
          "lea 1(%rax),%rax\njmp 1f\n.p2align 10\n1:\n.endr\nret\n");            \
  void name(void)
#define LINES 24
CHAIN(gk_chain_0, LINES);
CHAIN(gk_chain_1, LINES);
CHAIN(gk_chain_2, LINES);
CHAIN(gk_chain_3, LINES);
CHAIN(gk_chain_4, LINES);

static void cycles_with_code(int with, int n) {
  for (int i = 0; i < n; i++) {
    long fd = do_open(0);
    if (with) gk_chain_0();
    do_lock(fd);
    if (with) gk_chain_1();
    do_stat(fd);
    if (with) gk_chain_2();
    do_unlock(fd);
    if (with) gk_chain_3();
    do_close(fd);
    if (with) gk_chain_4();
  }
}

static int cmp(const void *, const void *);

/* The cycle without and with a chain of LINES lines after each system call. */
static void code_lines(void) {
  static double t[2][ROUNDS];
  cycles_with_code(0, ITERS / 10);
  cycles_with_code(1, ITERS / 10);
  for (int r = 0; r < ROUNDS; r++) {
    for (int j = 0; j < 2; j++) {
      int k = (j + r) % 2;
      double t0 = now_ns();
      cycles_with_code(k, ITERS);
      t[k][r] = (now_ns() - t0) / ITERS;
    }
  }
  for (int k = 0; k < 2; k++) qsort(t[k], ROUNDS, sizeof t[k][0], cmp);
  double a = t[0][ROUNDS / 2], b = t[1][ROUNDS / 2];
  printf("%d code lines after each system call: %.0f ns per cycle against %.0f, %+.1f ns per line\n",
         LINES, b, a, (b - a) / (LINES * SYSCALLS));
}
#endif

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: syscall_frames DIR\n");
    return 2;
  }
  snprintf(lockpath, sizeof lockpath, "%s/syscall-frames-%d.lock", argv[1], (int)getpid());
  static double t[NDEPTHS][ROUNDS];
  for (int k = 0; k < NDEPTHS; k++) cycles(depths[k], ITERS / 10); /* warm up */
  for (int r = 0; r < ROUNDS; r++) {
    for (int j = 0; j < NDEPTHS; j++) {
      int k = (j + r) % NDEPTHS; /* rotate which depth goes first */
      double t0 = now_ns();
      cycles(depths[k], ITERS);
      t[k][r] = (now_ns() - t0) / ITERS;
    }
  }
  double base = 0;
  for (int k = 0; k < NDEPTHS; k++) {
    qsort(t[k], ROUNDS, sizeof t[k][0], cmp);
    double med = t[k][ROUNDS / 2];
    if (k == 0) {
      base = med;
      printf("depth %d: %.0f ns per cycle\n", depths[k], med);
    } else {
      printf("depth %d: %.0f ns per cycle, %+.1f ns per frame and system call\n", depths[k], med,
             (med - base) / (depths[k] * SYSCALLS));
    }
  }
#if defined(__x86_64__)
  code_lines();
#endif
  unlink(lockpath);
  return 0;
}
