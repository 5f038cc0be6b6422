/*
 * The lock-set C ABI driven from C, through every misuse the header
 * documents an answer for: NULL pointers, relative and over-long paths,
 * `..`, an embedded NUL in the packed API, empty sets, a bad backend,
 * stale, forged, double-released and wrong-kind handles, short buffers,
 * and a fork child using its parent's handle. Contention comes from a
 * real second process. Self-contained (its own temporary store), no
 * arguments, exit status 0 on success; tests/c_programs.rs runs it, and
 * `make check-valgrind` runs it under valgrind's memcheck.
 */
#define _GNU_SOURCE
#include <goalkeeper.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks, failures;

#define EXPECT(call, want)                                                     \
  do {                                                                         \
    gk_status got_ = (call);                                                   \
    checks++;                                                                  \
    if (got_ != (want)) {                                                      \
      fprintf(stderr, "%s:%d: %s\n  got %s (%s), want %s\n", __FILE__,         \
              __LINE__, #call, gk_status_name(got_), gk_last_error_message(),  \
              gk_status_name(want));                                           \
      failures++;                                                              \
    } else if ((want) != GK_OK && gk_last_error_message()[0] == '\0') {        \
      fprintf(stderr, "%s:%d: %s: %s without a message\n", __FILE__,           \
              __LINE__, #call, gk_status_name(got_));                          \
      failures++;                                                              \
    }                                                                          \
  } while (0)

#define CHECK(cond)                                                            \
  do {                                                                         \
    checks++;                                                                  \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                              \
    }                                                                          \
  } while (0)

static char store[64];

static char *path_of(const char *name) {
  char *p = malloc(strlen(store) + strlen(name) + 2);
  sprintf(p, "%s/%s", store, name);
  return p;
}

/* A second process holding `path` until told to exit. */
struct holder {
  pid_t pid;
  int to_child, from_child;
};

/*
 * The backend for the blocking waits below. Valgrind (3.19 at least) does
 * not know that fcntl(F_OFD_SETLKW) may block: a thread blocked in it keeps
 * valgrind's scheduler lock and freezes every other thread. Under valgrind
 * the waits therefore use flock(2), which valgrind handles.
 */
static uint32_t wait_backend(void) {
  const char *v = getenv("GOALKEEPER_UNDER_VALGRIND");
  return v && strcmp(v, "1") == 0 ? GK_BACKEND_FLOCK : GK_BACKEND_OFD;
}

static struct holder hold_in_child(const char *path) {
  int down[2], up[2];
  struct holder h = {-1, -1, -1};
  if (pipe(down) || pipe(up)) abort();
  h.pid = fork();
  if (h.pid == 0) {
    close(down[1]);
    close(up[0]);
    gk_lockset s = 0;
    const char *ps[] = {path};
    char ok = gk_lockset_try_acquire(ps, 1, wait_backend(), &s) == GK_OK;
    if (write(up[1], &ok, 1) != 1) _exit(3);
    char c;
    if (read(down[0], &c, 1) < 0) _exit(4);
    _exit(gk_lockset_release(s) == GK_OK ? 0 : 5);
  }
  close(down[0]);
  close(up[1]);
  h.to_child = down[1];
  h.from_child = up[0];
  char ok = 0;
  struct pollfd pfd = {h.from_child, POLLIN, 0};
  if (poll(&pfd, 1, 20000) != 1 || read(h.from_child, &ok, 1) != 1 || !ok) {
    fprintf(stderr, "holder child did not lock %s\n", path);
    failures++;
  }
  return h;
}

static void end_holder(struct holder h) {
  int st = 0;
  close(h.to_child); /* EOF tells the child to release and exit */
  close(h.from_child);
  waitpid(h.pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void test_arguments(void) {
  char *a = path_of("a");
  const char *one[] = {a};
  gk_lockset s = 42;

  EXPECT(gk_lockset_try_acquire(one, 1, GK_BACKEND_OFD, NULL), GK_ERROR_NULL_POINTER);
  EXPECT(gk_lockset_try_acquire(NULL, 1, GK_BACKEND_OFD, &s), GK_ERROR_NULL_POINTER);
  CHECK(s == 0);
  EXPECT(gk_lockset_try_acquire(one, 0, GK_BACKEND_OFD, &s), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_lockset_try_acquire(one, (size_t)-1, GK_BACKEND_OFD, &s), GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_lockset_try_acquire(one, 1, 7, &s), GK_ERROR_INVALID_ARGUMENT);

  const char *with_null[] = {a, NULL};
  EXPECT(gk_lockset_try_acquire(with_null, 2, GK_BACKEND_OFD, &s), GK_ERROR_NULL_POINTER);
  const char *rel[] = {"relative/path"};
  EXPECT(gk_lockset_try_acquire(rel, 1, GK_BACKEND_OFD, &s), GK_ERROR_INVALID_PATH);
  char *dotdot = path_of("../a");
  const char *dd[] = {dotdot};
  EXPECT(gk_lockset_try_acquire(dd, 1, GK_BACKEND_OFD, &s), GK_ERROR_INVALID_PATH);
  const char *root[] = {"/"};
  EXPECT(gk_lockset_try_acquire(root, 1, GK_BACKEND_OFD, &s), GK_ERROR_INVALID_PATH);
  const char *empty[] = {""};
  EXPECT(gk_lockset_try_acquire(empty, 1, GK_BACKEND_OFD, &s), GK_ERROR_INVALID_PATH);

  /* Exactly PATH_MAX bytes and no NUL inside them: never read further. */
  char *unterminated = malloc(PATH_MAX);
  memset(unterminated, 'x', PATH_MAX);
  unterminated[0] = '/';
  const char *ut[] = {unterminated};
  /* valgrind would flag a read past the PATH_MAX bytes of this block. */
  EXPECT(gk_lockset_try_acquire(ut, 1, GK_BACKEND_OFD, &s), GK_ERROR_INVALID_PATH);
  free(unterminated);

  /* A name longer than NAME_MAX: valid as a path, refused by the kernel. */
  char longname[300];
  memset(longname, 'n', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  char *lp = path_of(longname);
  const char *lps[] = {lp};
  EXPECT(gk_lockset_try_acquire(lps, 1, GK_BACKEND_OFD, &s), GK_ERROR_NAME_TOO_LONG);

  /* Packed: an embedded NUL makes an empty or relative item. */
  char packed[128];
  int n = snprintf(packed, sizeof packed, "%s/a", store);
  packed[n] = '\0';
  memcpy(packed + n + 1, "b", 2); /* "<store>/a\0b\0" */
  EXPECT(gk_lockset_acquire_packed((const uint8_t *)packed, (size_t)n + 3, GK_BACKEND_OFD, 0, &s),
         GK_ERROR_INVALID_PATH);
  EXPECT(gk_lockset_acquire_packed((const uint8_t *)packed, (size_t)n, GK_BACKEND_OFD, 0, &s),
         GK_ERROR_INVALID_ARGUMENT); /* not NUL-terminated */
  EXPECT(gk_lockset_acquire_packed(NULL, 4, GK_BACKEND_OFD, 0, &s), GK_ERROR_NULL_POINTER);
  EXPECT(gk_lockset_acquire_packed((const uint8_t *)packed, 0, GK_BACKEND_OFD, 0, &s),
         GK_ERROR_INVALID_ARGUMENT);
  EXPECT(gk_lockset_acquire_packed((const uint8_t *)packed, SIZE_MAX, GK_BACKEND_OFD, 0, &s),
         GK_ERROR_INVALID_ARGUMENT);

  /* Non-UTF-8 bytes are fine in a store path. */
  char *odd = path_of("\xff\xfe-odd");
  const char *os[] = {odd};
  EXPECT(gk_lockset_try_acquire(os, 1, GK_BACKEND_FLOCK, &s), GK_OK);
  EXPECT(gk_lockset_release(s), GK_OK);

  bool held = true;
  EXPECT(gk_path_is_locked_by_me(NULL, &held), GK_ERROR_NULL_POINTER);
  EXPECT(gk_path_is_locked_by_me(a, NULL), GK_ERROR_NULL_POINTER);
  EXPECT(gk_path_is_locked_by_me("rel", &held), GK_ERROR_INVALID_PATH);
  EXPECT(gk_path_is_locked_by_me(a, &held), GK_OK);
  CHECK(!held);
  EXPECT(gk_held_count(NULL), GK_ERROR_NULL_POINTER);

  free(a);
  free(dotdot);
  free(lp);
  free(odd);
}

static void test_handles(void) {
  char *a = path_of("a"), *b = path_of("b");
  const char *two[] = {b, a, b}; /* unsorted, with a duplicate */
  gk_lockset s = 0;
  EXPECT(gk_lockset_try_acquire(two, 3, GK_BACKEND_OFD, &s), GK_OK);
  CHECK(s != 0);
  EXPECT(gk_lockset_check(s), GK_OK);
  gk_lockset again = 42;
  EXPECT(gk_lockset_try_acquire(two, 1, GK_BACKEND_OFD, &again), GK_HELD_BY_THIS_PROCESS);
  CHECK(again == 0);

  /* Size query, short buffer, exact buffer. */
  size_t need = 0;
  EXPECT(gk_lockset_paths(s, NULL, 0, &need), GK_ERROR_BUFFER_TOO_SMALL);
  CHECK(need == strlen(a) + strlen(b) + 2);
  char *buf = malloc(need);
  size_t len = 0;
  memset(buf, 'Z', need);
  EXPECT(gk_lockset_paths(s, buf, need - 1, &len), GK_ERROR_BUFFER_TOO_SMALL);
  CHECK(buf[0] == 'Z');
  EXPECT(gk_lockset_paths(s, buf, need, NULL), GK_ERROR_NULL_POINTER);
  EXPECT(gk_lockset_paths(s, buf, need, &len), GK_OK);
  CHECK(len == need && strcmp(buf, a) == 0 && strcmp(buf + strlen(a) + 1, b) == 0);
  free(buf);

  size_t count = 0;
  EXPECT(gk_held_count(&count), GK_OK);
  CHECK(count == 2);
  EXPECT(gk_held_paths(NULL, 0, &need), GK_ERROR_BUFFER_TOO_SMALL);

  gk_lockset stale = s;
  EXPECT(gk_lockset_set_deletion(s, true), GK_OK);
  EXPECT(gk_lockset_release(s), GK_OK);
  struct stat st;
  char *alock = path_of("a.lock");
  CHECK(stat(alock, &st) == -1 && errno == ENOENT);
  EXPECT(gk_lockset_release(stale), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_lockset_check(stale), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_lockset_set_deletion(stale, false), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_lockset_paths(stale, NULL, 0, &need), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_lockset_release(0), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_lockset_release(UINT64_MAX), GK_ERROR_STALE_HANDLE);
  /* The same slot and generation with a worker's kind byte. */
  EXPECT(gk_lockset_release((stale & 0x00ffffffffffffffULL) | (0x57ULL << 56)),
         GK_ERROR_STALE_HANDLE);
  /* A reused slot gets a new generation: the old handle stays stale. */
  EXPECT(gk_lockset_try_acquire(two, 2, GK_BACKEND_OFD, &s), GK_OK);
  CHECK(s != stale);
  EXPECT(gk_lockset_release(stale), GK_ERROR_STALE_HANDLE);
  EXPECT(gk_lockset_check(s), GK_OK);
  EXPECT(gk_lockset_release(s), GK_OK);
  EXPECT(gk_held_count(&count), GK_OK);
  CHECK(count == 0);
  EXPECT(gk_held_paths(NULL, 0, &need), GK_OK);
  CHECK(need == 0);
  free(a);
  free(b);
  free(alock);
}

static void test_contention_and_fork(void) {
  char *c = path_of("c"), *d = path_of("d");
  const char *cs[] = {c}, *both[] = {d, c};
  gk_lockset s = 0;

  uint32_t be = wait_backend();
  struct holder h = hold_in_child(c);
  EXPECT(gk_lockset_try_acquire(both, 2, be, &s), GK_BUSY);
  bool held = true;
  EXPECT(gk_path_is_locked_by_me(d, &held), GK_OK);
  CHECK(!held); /* L8: the free path was given back */
  EXPECT(gk_lockset_acquire_timeout(cs, 1, be, 30, &s), GK_TIMED_OUT);
  EXPECT(gk_lockset_acquire_packed((const uint8_t *)c, strlen(c) + 1, be, 20, &s), GK_TIMED_OUT);
  end_holder(h);
  /* The abandoned waits take and drop the lock; a blocking call gets it. */
  EXPECT(gk_lockset_acquire(both, 2, be, &s), GK_OK);

  /* A fork child holds nothing and may not use its parent's handle. The
   * parent has abandoned (timed-out) waits at this point, so under valgrind
   * this is also fork_child_after_timeouts_leaks_nothing: the child once
   * forgot the inherited wait list, which memcheck reported as a definite
   * leak in every fork child of a process that had timed out. */
  pid_t pid = fork();
  if (pid == 0) {
    size_t count = 99;
    gk_lockset t = 0;
    int bad = 0;
    bad |= gk_held_count(&count) != GK_OK || count != 0;
    bad |= (gk_lockset_check(s) != GK_ERROR_WRONG_PROCESS) << 1;
    bad |= (gk_lockset_try_acquire(cs, 1, be, &t) != GK_BUSY) << 2;
    bad |= (gk_lockset_release(s) != GK_ERROR_WRONG_PROCESS) << 3;
    bad |= (gk_lockset_release(s) != GK_ERROR_STALE_HANDLE) << 4;
    _exit(bad);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  if (WIFEXITED(st) && WEXITSTATUS(st) != 0)
    fprintf(stderr, "fork child failed checks %#x\n", WEXITSTATUS(st));
  EXPECT(gk_lockset_check(s), GK_OK); /* the parent still holds it */
  EXPECT(gk_lockset_release(s), GK_OK);
  free(c);
  free(d);
}

int main(void) {
  CHECK(gk_abi_version() == GK_ABI_VERSION);
  CHECK(strcmp(gk_status_name(-5), "GK_UNKNOWN_STATUS") == 0);
  CHECK(strcmp(gk_status_name(GK_BUSY), "GK_BUSY") == 0);
  strcpy(store, "/tmp/gk-c-misuse-XXXXXX");
  if (!mkdtemp(store)) {
    perror("mkdtemp");
    return 2;
  }
  test_arguments();
  test_handles();
  test_contention_and_fork();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", store);
  if (system(cmd) != 0) failures++;
  if (failures) {
    fprintf(stderr, "abi_misuse: %d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("abi_misuse: all checks passed (%d checks)\n", checks);
  return 0;
}
