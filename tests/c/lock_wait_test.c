/*
 * gk_lock_wait (the lock wait an event loop can wait on) from C, against
 * real holder processes: a POSIX fcntl holder (guix-daemon's PathLocks), a
 * flock holder (Nix), a goalkeeper (OFD) holder, and a holder that deletes
 * its lock file as it releases. Compiled against include/goalkeeper.h and
 * run by tests/c_abi_lock_wait.rs.
 *
 *   lock_wait_test STORE_DIR SECTION
 *
 * SECTION: holders, paths, selfpipe, lifecycle, args. Prints TAP-like lines
 * and a plan; exits non-zero if a check failed. Every wait is bounded.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <goalkeeper.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks, failures;
static const char *store;

static void report(int ok, int line, const char *what) {
  checks++;
  if (ok) {
    printf("ok %d - %s\n", checks, what);
  } else {
    failures++;
    printf("not ok %d - %s  [line %d] last error: \"%s\"\n", checks, what, line,
           gk_last_error_message());
  }
  fflush(stdout);
}

#define CHECK(cond, what) report((cond) ? 1 : 0, __LINE__, what)
#define STATUS(call, want, what)                                                        \
  do {                                                                                  \
    gk_status got_ = (call);                                                            \
    char msg_[512];                                                                     \
    snprintf(msg_, sizeof msg_, "%s: %s (want %s)", what, gk_status_name(got_),         \
             gk_status_name(want));                                                     \
    report(got_ == (want), __LINE__, msg_);                                             \
  } while (0)

/* The longest any check waits for something that must happen. */
#define BOUND_MS 10000
/* How long a check looks for something that must not happen. */
#define QUIET_MS 150

static char *path(const char *name) {
  static char bufs[8][PATH_MAX];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, PATH_MAX, "%s/%s", store, name);
  return b;
}

static char *lock_file(const char *p) {
  static char bufs[4][PATH_MAX];
  static int next;
  char *b = bufs[next++ % 4];
  snprintf(b, PATH_MAX, "%s.lock", p);
  return b;
}

/* Whether `fd` becomes readable within `ms`. */
static int readable(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n;
  do
    n = poll(&p, 1, ms);
  while (n < 0 && errno == EINTR);
  return n == 1 && (p.revents & POLLIN);
}

/* ------------------------------------------------------------- holders */

/* A holder: another process that locks a lock file the way a peer does,
 * then obeys one-byte commands on a pipe: 'r' release, 'd' delete the lock
 * file and release (guix-daemon's deletion: unlink, write "d", unlock),
 * 's' send SIGUSR1 to its parent. It says 'L' once it holds the lock. */
enum kind { POSIX, FLOCK, OFD };

struct holder {
  pid_t pid;
  int cmd, ack;
};

static void holder_main(enum kind k, const char *p, int cmd, int ack) {
  const char *lf = lock_file(p);
  int fd = -1;
  gk_lockset set = 0;
  if (k == OFD) {
    const char *ps[1] = {p};
    if (gk_lockset_try_acquire(ps, 1, GK_BACKEND_OFD, &set) != GK_OK) _exit(3);
  } else {
    fd = open(lf, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) _exit(4);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (k == POSIX ? fcntl(fd, F_SETLK, &fl) : flock(fd, LOCK_EX | LOCK_NB)) _exit(5);
  }
  if (write(ack, "L", 1) != 1) _exit(6);
  char c;
  while (read(cmd, &c, 1) == 1) {
    if (c == 's') {
      kill(getppid(), SIGUSR1);
      continue;
    }
    if (k == OFD) {
      if (c == 'd') gk_lockset_set_deletion(set, true);
      gk_lockset_release(set);
    } else {
      if (c == 'd') {
        unlink(lf);
        if (write(fd, "d", 1) != 1) _exit(7);
      }
      struct flock un = {.l_type = F_UNLCK, .l_whence = SEEK_SET};
      if (k == POSIX) fcntl(fd, F_SETLK, &un);
      else flock(fd, LOCK_UN);
      close(fd);
    }
    if (write(ack, "R", 1) != 1) _exit(8);
    break;
  }
  _exit(0);
}

static struct holder hold(enum kind k, const char *p) {
  int c[2], a[2];
  if (pipe2(c, O_CLOEXEC) || pipe2(a, O_CLOEXEC)) abort();
  pid_t pid = fork();
  if (pid < 0) abort();
  if (pid == 0) {
    close(c[1]);
    close(a[0]);
    holder_main(k, p, c[0], a[1]);
  }
  close(c[0]);
  close(a[1]);
  struct holder h = {pid, c[1], a[0]};
  char got = 0;
  CHECK(readable(h.ack, BOUND_MS) && read(h.ack, &got, 1) == 1 && got == 'L',
        "the holder process holds the lock");
  return h;
}

/* Sends a command; for 'r'/'d', waits until the holder has done it. */
static void command(struct holder *h, char c) {
  if (write(h->cmd, &c, 1) != 1) abort();
  if (c == 's') return;
  char got = 0;
  CHECK(readable(h->ack, BOUND_MS) && read(h->ack, &got, 1) == 1 && got == 'R',
        "the holder released");
}

static void finish(struct holder *h) {
  close(h->cmd);
  close(h->ack);
  int st = 0;
  waitpid(h->pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the holder exited 0");
}

static gk_lock_wait wait_for(const char *const *ps, size_t n, uint32_t backend, int *fd) {
  gk_lock_wait w = 0;
  STATUS(gk_lock_wait_new(ps, n, backend, &w), GK_OK, "gk_lock_wait_new");
  *fd = -1;
  STATUS(gk_lock_wait_fd(w, fd), GK_OK, "gk_lock_wait_fd");
  CHECK(*fd >= 0, "the wait has a descriptor");
  return w;
}

static size_t held(void) {
  size_t n = 12345;
  gk_held_count(&n);
  return n;
}

/* One holder of kind k on a fresh path; how each kind of release ends the wait. */
static void one_holder(enum kind k, uint32_t backend, const char *name, char how) {
  char msg[256];
  const char *p = path(name);
  const char *ps[1] = {p};
  struct holder h = hold(k, p);
  int fd;
  gk_lock_wait w = wait_for(ps, 1, backend, &fd);
  snprintf(msg, sizeof msg, "%s: not readable while the holder holds the lock", name);
  CHECK(!readable(fd, QUIET_MS), msg);
  gk_lockset s = 0;
  snprintf(msg, sizeof msg, "%s: the wait holds nothing (a try is still busy)", name);
  STATUS(gk_lockset_try_acquire(ps, 1, backend, &s), GK_BUSY, msg);
  command(&h, how);
  snprintf(msg, sizeof msg, "%s: readable once the holder %s", name,
           how == 'd' ? "deleted its lock file" : "released");
  CHECK(readable(fd, BOUND_MS), msg);
  snprintf(msg, sizeof msg, "%s: and stays readable (level-triggered)", name);
  CHECK(readable(fd, 0), msg);
  if (how == 'd') {
    struct stat st;
    snprintf(msg, sizeof msg, "%s: the wait did not re-create the deleted lock file", name);
    CHECK(lstat(lock_file(p), &st) != 0 && errno == ENOENT, msg);
  }
  snprintf(msg, sizeof msg, "%s: the retry gets the lock (the wait kept nothing)", name);
  STATUS(gk_lockset_try_acquire(ps, 1, backend, &s), GK_OK, msg);
  STATUS(gk_lockset_release(s), GK_OK, "release");
  STATUS(gk_lock_wait_free(w), GK_OK, "gk_lock_wait_free");
  finish(&h);
}

static void holders(void) {
  one_holder(POSIX, GK_BACKEND_OFD, "posix-holder", 'r');
  one_holder(POSIX, GK_BACKEND_OFD, "posix-deleter", 'd');
  one_holder(FLOCK, GK_BACKEND_FLOCK, "flock-holder", 'r');
  one_holder(FLOCK, GK_BACKEND_FLOCK, "flock-deleter", 'd');
  one_holder(OFD, GK_BACKEND_OFD, "ofd-holder", 'r');
  one_holder(OFD, GK_BACKEND_OFD, "ofd-deleter", 'd');
  CHECK(held() == 0, "nothing held afterwards");
}

/* --------------------------------------------------------------- paths */

static void paths(void) {
  const char *a = path("aaa"), *b = path("bbb");
  const char *ps[3] = {b, a, b}; /* unsorted, with a duplicate */
  struct holder ha = hold(POSIX, a), hb = hold(OFD, b);
  int fd;
  gk_lock_wait w = wait_for(ps, 3, GK_BACKEND_OFD, &fd);
  command(&ha, 'r');
  CHECK(!readable(fd, QUIET_MS), "one path of two seen free: not readable yet");
  command(&hb, 'd');
  CHECK(readable(fd, BOUND_MS), "both seen free: readable");
  STATUS(gk_lock_wait_free(w), GK_OK, "free");
  finish(&ha);
  finish(&hb);

  /* A path nobody holds is seen free at once. */
  const char *c = path("ccc");
  w = wait_for(&c, 1, GK_BACKEND_OFD, &fd);
  CHECK(readable(fd, BOUND_MS), "a free path: readable at once");
  STATUS(gk_lock_wait_free(w), GK_OK, "free");

  /* A path this process holds: refused, nothing started. */
  gk_lockset s = 0;
  STATUS(gk_lockset_try_acquire(&c, 1, GK_BACKEND_OFD, &s), GK_OK, "lock ccc here");
  gk_lock_wait w2 = 77;
  STATUS(gk_lock_wait_new(&c, 1, GK_BACKEND_OFD, &w2), GK_HELD_BY_THIS_PROCESS,
         "a wait for a path this process holds");
  CHECK(w2 == 0, "*out is 0 on refusal");
  CHECK(strstr(gk_last_error_message(), "ccc") != NULL, "the message names the path");
  STATUS(gk_lockset_release(s), GK_OK, "release ccc");

  /* An insecure store: the probe fails at once, the wait fires, the retry says why. */
  char dir[PATH_MAX], ip[PATH_MAX + 8];
  snprintf(dir, sizeof dir, "%s/insecure", store);
  if (mkdir(dir, 0700) != 0 || chmod(dir, 0777) != 0) abort();
  snprintf(ip, sizeof ip, "%s/ddd", dir);
  const char *ips[1] = {ip};
  w = wait_for(ips, 1, GK_BACKEND_OFD, &fd);
  CHECK(readable(fd, BOUND_MS), "an insecure store: the wait fires");
  STATUS(gk_lockset_try_acquire(ips, 1, GK_BACKEND_OFD, &s), GK_ERROR_INSECURE_STORE,
         "and the retry reports the error");
  STATUS(gk_lock_wait_free(w), GK_OK, "free");
  CHECK(held() == 0, "nothing held afterwards");
}

/* ------------------------------------------------------------ selfpipe */

/* The header's example: wait for the lock or for a signal, whichever comes
 * first, with a self-pipe written by the signal handler. */
static int self_pipe[2];

static void on_signal(int sig) {
  (void)sig;
  int saved = errno;
  (void)!write(self_pipe[1], "!", 1);
  errno = saved;
}

static void selfpipe(void) {
  if (pipe2(self_pipe, O_CLOEXEC | O_NONBLOCK)) abort();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGUSR1, &sa, NULL);

  const char *p = path("eee");
  struct holder h = hold(POSIX, p);
  int fd;
  gk_lock_wait w = wait_for(&p, 1, GK_BACKEND_OFD, &fd);
  command(&h, 's'); /* the holder sends us SIGUSR1 and keeps the lock */
  struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = self_pipe[0], .events = POLLIN}};
  int n;
  do
    n = poll(fds, 2, BOUND_MS);
  while (n < 0 && errno == EINTR);
  CHECK(n == 1 && (fds[1].revents & POLLIN) && !(fds[0].revents & POLLIN),
        "the signal ends the wait through the self-pipe, the lock is still held");
  STATUS(gk_lock_wait_free(w), GK_OK, "the interrupted wait is freed");
  CHECK(held() == 0, "holding nothing");
  gk_lockset s = 0;
  STATUS(gk_lockset_try_acquire(&p, 1, GK_BACKEND_OFD, &s), GK_BUSY, "the holder still holds it");
  /* A new wait for the same path (it takes over the freed wait's thread). */
  w = wait_for(&p, 1, GK_BACKEND_OFD, &fd);
  command(&h, 'r');
  CHECK(readable(fd, BOUND_MS), "a new wait fires on the release");
  STATUS(gk_lockset_try_acquire(&p, 1, GK_BACKEND_OFD, &s), GK_OK, "and the retry locks");
  STATUS(gk_lockset_release(s), GK_OK, "release");
  STATUS(gk_lock_wait_free(w), GK_OK, "free");
  finish(&h);
}

/* ----------------------------------------------------------- lifecycle */

static int open_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

static void lifecycle(void) {
  const char *p = path("fff");
  struct holder h = hold(POSIX, p);
  int fd;
  gk_lock_wait w = wait_for(&p, 1, GK_BACKEND_OFD, &fd);
  STATUS(gk_lock_wait_free(w), GK_OK, "free a pending wait");
  int before = open_fds();
  for (int i = 0; i < 50; i++) {
    w = wait_for(&p, 1, GK_BACKEND_OFD, &fd);
    STATUS(gk_lock_wait_free(w), GK_OK, "free a pending wait");
  }
  int after = open_fds();
  char msg[128];
  snprintf(msg, sizeof msg, "50 waits freed while pending reuse one thread (%d fds, then %d)",
           before, after);
  CHECK(after <= before + 1, msg);

  /* A fork child cannot use its parent's wait. */
  w = wait_for(&p, 1, GK_BACKEND_OFD, &fd);
  pid_t pid = fork();
  if (pid == 0) {
    int f = -1;
    _exit(gk_lock_wait_fd(w, &f) == GK_ERROR_WRONG_PROCESS &&
                  gk_lock_wait_free(w) == GK_ERROR_WRONG_PROCESS
              ? 0
              : 1);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a fork child gets GK_ERROR_WRONG_PROCESS");
  command(&h, 'r');
  CHECK(readable(fd, BOUND_MS), "the parent's wait still fires");
  STATUS(gk_lock_wait_free(w), GK_OK, "free");
  finish(&h);
  gk_lockset s = 0;
  STATUS(gk_lockset_try_acquire(&p, 1, GK_BACKEND_OFD, &s), GK_OK,
         "the abandoned waits' thread let the lock go");
  STATUS(gk_lockset_release(s), GK_OK, "release");
}

/* ---------------------------------------------------------------- args */

static void args(void) {
  const char *p = path("ggg");
  const char *rel[1] = {"relative/path"};
  const char *nul[1] = {NULL};
  gk_lock_wait w = 1;
  int fd = 7;
  STATUS(gk_lock_wait_new(&p, 1, GK_BACKEND_OFD, NULL), GK_ERROR_NULL_POINTER, "out NULL");
  STATUS(gk_lock_wait_new(NULL, 1, GK_BACKEND_OFD, &w), GK_ERROR_NULL_POINTER, "paths NULL");
  CHECK(w == 0, "*out is 0 on error");
  STATUS(gk_lock_wait_new(nul, 1, GK_BACKEND_OFD, &w), GK_ERROR_NULL_POINTER, "an element NULL");
  STATUS(gk_lock_wait_new(&p, 0, GK_BACKEND_OFD, &w), GK_ERROR_INVALID_ARGUMENT, "no paths");
  STATUS(gk_lock_wait_new(rel, 1, GK_BACKEND_OFD, &w), GK_ERROR_INVALID_PATH, "a relative path");
  STATUS(gk_lock_wait_new(&p, 1, 42, &w), GK_ERROR_INVALID_ARGUMENT, "an unknown backend");
  STATUS(gk_lock_wait_fd(0, &fd), GK_ERROR_STALE_HANDLE, "fd of handle 0");
  CHECK(fd == 7, "*fd_out untouched on error");
  STATUS(gk_lock_wait_free(0), GK_ERROR_STALE_HANDLE, "free handle 0");
  w = 0;
  STATUS(gk_lock_wait_new(&p, 1, GK_BACKEND_OFD, &w), GK_OK, "a wait");
  STATUS(gk_lock_wait_fd(w, NULL), GK_ERROR_NULL_POINTER, "fd_out NULL");
  STATUS(gk_lock_wait_fd(w, &fd), GK_OK, "its descriptor");
  CHECK(readable(fd, BOUND_MS), "a free path: seen free (its probe let the lock go)");
  gk_lockset s = 0;
  STATUS(gk_lockset_try_acquire(&p, 1, GK_BACKEND_OFD, &s), GK_OK, "a lock set");
  STATUS(gk_lock_wait_fd(s, &fd), GK_ERROR_STALE_HANDLE, "a lock set handle as a wait");
  CHECK(strstr(gk_last_error_message(), "lock set handle") != NULL, "the message says what it is");
  STATUS(gk_lockset_release(w), GK_ERROR_STALE_HANDLE, "a wait handle as a lock set");
  STATUS(gk_lockset_release(s), GK_OK, "release");
  STATUS(gk_lock_wait_free(w), GK_OK, "free");
  STATUS(gk_lock_wait_free(w), GK_ERROR_STALE_HANDLE, "a second free");
  STATUS(gk_lock_wait_fd(w, &fd), GK_ERROR_STALE_HANDLE, "fd after free");
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: lock_wait_test STORE_DIR SECTION\n");
    return 2;
  }
  store = argv[1];
  signal(SIGPIPE, SIG_IGN);
  const char *s = argv[2];
  if (!strcmp(s, "holders")) holders();
  else if (!strcmp(s, "paths")) paths();
  else if (!strcmp(s, "selfpipe")) selfpipe();
  else if (!strcmp(s, "lifecycle")) lifecycle();
  else if (!strcmp(s, "args")) args();
  else {
    fprintf(stderr, "unknown section %s\n", s);
    return 2;
  }
  printf("1..%d\n", checks);
  return failures ? 1 : 0;
}
