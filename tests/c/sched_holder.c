/* A foreign lock holder for the scheduler tests: the "other daemon".
 *
 *   sched_holder LOCKFILE posix|ofd|flock
 *
 * Opens LOCKFILE, takes an exclusive lock of the given kind (posix = the
 * classic fcntl F_SETLK record lock that guix-daemon's C++ PathLocks takes),
 * prints "locked", then for each line on stdin: releases the lock and prints
 * "released". Exits at end of input (or when killed). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static int lock_file(int fd, const char *kind, int type) {
  if (strcmp(kind, "flock") == 0)
    return flock(fd, type == F_UNLCK ? LOCK_UN : LOCK_EX);
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = (short)type;
  fl.l_whence = SEEK_SET;
  int cmd = strcmp(kind, "ofd") == 0 ? F_OFD_SETLKW : F_SETLKW;
  return fcntl(fd, cmd, &fl);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: sched_holder LOCKFILE posix|ofd|flock\n");
    return 2;
  }
  int fd = open(argv[1], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    perror("open");
    return 1;
  }
  if (lock_file(fd, argv[2], F_WRLCK) != 0) {
    perror("lock");
    return 1;
  }
  printf("locked\n");
  fflush(stdout);
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    if (lock_file(fd, argv[2], F_UNLCK) != 0) {
      perror("unlock");
      return 1;
    }
    printf("released\n");
    fflush(stdout);
  }
  return 0;
}
