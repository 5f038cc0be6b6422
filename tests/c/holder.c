/* A lock holder or waiter that is not goalkeeper, for the inspector tests:
 *
 *   holder posix|flock|posix-wait|flock-wait LOCKFILE
 *
 * takes a classic POSIX fcntl lock (as guix-daemon does) or a flock lock
 * (as Nix does) on LOCKFILE, non-blocking for posix/flock (exit 3 if busy),
 * blocking for the -wait modes; then prints "locked" and keeps the lock
 * until standard input reaches EOF. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: holder posix|flock|posix-wait|flock-wait LOCKFILE\n");
    return 2;
  }
  const char *mode = argv[1];
  int wait = strstr(mode, "-wait") != NULL;
  int fd = open(argv[2], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    perror("open");
    return 1;
  }
  int rc;
  if (strncmp(mode, "posix", 5) == 0) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    rc = fcntl(fd, wait ? F_SETLKW : F_SETLK, &fl);
  } else if (strncmp(mode, "flock", 5) == 0) {
    rc = flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB));
  } else {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  if (rc != 0) {
    perror("lock");
    return 3;
  }
  printf("locked\n");
  fflush(stdout);
  char buf[64];
  while (read(0, buf, sizeof buf) > 0) {
  }
  return 0;
}
