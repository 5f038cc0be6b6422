/*
 * A plain C lock peer for the lock-layer tests: it takes locks on a lock file
 * the way other daemons do, without goalkeeper.
 *
 *   locker KIND hold  LOCKFILE   non-blocking lock; "@gk locked" (or "@gk busy"
 *                                and exit 2), then waits for a line or EOF on
 *                                stdin, unlocks, "@gk released"
 *   locker KIND holdw LOCKFILE   the same, blocking (F_SETLKW / LOCK_EX)
 *   locker KIND holddel LOCKFILE like hold, but releases with deletion the way
 *                                guix-daemon does: unlink, write "d", close
 *   locker KIND try   LOCKFILE   "@gk free" (lock then unlock) or "@gk busy"
 *   locker posix daemon STOREPATH ITERS LOG
 *                                guix-daemon's PathLocks loop (nix/libstore/
 *                                pathlocks.cc), ITERS times: open P.lock
 *                                O_RDWR|O_CREAT 0600, F_SETLKW, fstat, retry if
 *                                st_size != 0; append "enter PID" and "exit PID"
 *                                to LOG (O_APPEND), then delete the lock file
 *                                as the C++ daemon does (unlink, write "d")
 *                                and close.
 *
 * KIND is posix (classic process-owned fcntl F_SETLK, as guix-daemon), ofd
 * (F_OFD_SETLK) or flock. Output lines start with "@gk " so that the tests
 * can tell them from anything else. Errors go to stderr with exit status 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

enum kind { POSIX, OFD, FLOCK };

static void die(const char *what) {
  fprintf(stderr, "locker: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void say(const char *word) {
  printf("@gk %s\n", word);
  fflush(stdout);
}

/* 1: locked, 0: busy (non-blocking only); dies on any other error. */
static int lock_fd(enum kind k, int fd, int wait) {
  int r;
  if (k == FLOCK) {
    do {
      r = flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB));
    } while (r == -1 && errno == EINTR);
  } else {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 0;
    int cmd = k == POSIX ? (wait ? F_SETLKW : F_SETLK) : (wait ? F_OFD_SETLKW : F_OFD_SETLK);
    do {
      r = fcntl(fd, cmd, &fl);
    } while (r == -1 && errno == EINTR);
  }
  if (r == 0) return 1;
  if (!wait && (errno == EAGAIN || errno == EACCES || errno == EWOULDBLOCK)) return 0;
  die("lock");
  return 0;
}

static void unlock_fd(enum kind k, int fd) {
  if (k == FLOCK) {
    if (flock(fd, LOCK_UN) == -1) die("unlock");
  } else {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_UNLCK;
    if (fcntl(fd, k == POSIX ? F_SETLK : F_OFD_SETLK, &fl) == -1) die("unlock");
  }
}

static void append(int log, const char *what) {
  char line[64];
  int n = snprintf(line, sizeof line, "%s %d\n", what, (int)getpid());
  if (write(log, line, (size_t)n) != n) die("write log");
}

/* guix-daemon: PathLocks::lockPaths + ~PathLocks with deletion. */
static int daemon_loop(const char *path, long iters, const char *logpath) {
  char lockpath[4096];
  snprintf(lockpath, sizeof lockpath, "%s.lock", path);
  int log = open(logpath, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (log == -1) die("open log");
  for (long i = 0; i < iters; i++) {
    int fd;
    for (;;) {
      fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd == -1) die("open lock file");
      lock_fd(POSIX, fd, 1);
      struct stat st;
      if (fstat(fd, &st) == -1) die("fstat");
      if (st.st_size != 0) { /* stale: the previous holder deleted it */
        close(fd);
        continue;
      }
      break;
    }
    append(log, "enter");
    append(log, "exit");
    /* deleteLockFile: unlink first, then the token, then close (unlocks). */
    if (unlink(lockpath) == -1 && errno != ENOENT) die("unlink");
    if (write(fd, "d", 1) != 1) die("write token");
    close(fd);
  }
  say("done");
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: locker posix|ofd|flock hold|holdw|try LOCKFILE\n");
    return 64;
  }
  enum kind k;
  if (strcmp(argv[1], "posix") == 0) k = POSIX;
  else if (strcmp(argv[1], "ofd") == 0) k = OFD;
  else if (strcmp(argv[1], "flock") == 0) k = FLOCK;
  else {
    fprintf(stderr, "locker: unknown kind %s\n", argv[1]);
    return 64;
  }
  const char *op = argv[2];
  if (strcmp(op, "daemon") == 0) {
    if (argc != 6 || k != POSIX) {
      fprintf(stderr, "usage: locker posix daemon STOREPATH ITERS LOG\n");
      return 64;
    }
    return daemon_loop(argv[3], atol(argv[4]), argv[5]);
  }
  int fd = open(argv[3], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd == -1) die("open");
  if (strcmp(op, "try") == 0) {
    if (lock_fd(k, fd, 0)) {
      unlock_fd(k, fd);
      say("free");
    } else {
      say("busy");
    }
    return 0;
  }
  int wait = strcmp(op, "holdw") == 0;
  int del = strcmp(op, "holddel") == 0;
  if (!wait && !del && strcmp(op, "hold") != 0) {
    fprintf(stderr, "locker: unknown operation %s\n", op);
    return 64;
  }
  if (!lock_fd(k, fd, wait)) {
    say("busy");
    return 2;
  }
  say("locked");
  char buf[64];
  ssize_t n;
  do {
    n = read(0, buf, sizeof buf);
  } while (n == -1 && errno == EINTR);
  if (del) {
    if (unlink(argv[3]) == -1) die("unlink");
    if (write(fd, "d", 1) != 1) die("write token");
  } else {
    unlock_fd(k, fd);
  }
  close(fd);
  say("released");
  return 0;
}
