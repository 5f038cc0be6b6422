// A guix-daemon-style lock peer for the crash tests (tests/legacy_crash.rs)
// and the soak (tests/soak.rs): one process locking store paths with
// legacy::PathLocks (legacy_pathlocks.cc, which behaves as the daemon's
// PathLocks: POSIX locks, st_size as the only stale check, unbounded
// retries). It records every hold in an O_APPEND holder log, one write(2)
// per line, CLOCK_MONOTONIC nanoseconds:
//
//   S PID PATH T [unlinked] [symlink]
//                             it holds PATH (the lock was granted on an
//                             inode already unlinked but empty, which the
//                             daemon takes for a live lock: "unlinked"; on
//                             a file reached through a symlink, or not a
//                             regular file, since the daemon's open follows
//                             symlinks: "symlink")
//   E PID PATH T              it is about to let PATH go
//
// Usage:
//   legacy_peer serve LOG
//     Commands on stdin, one per line; replies on stdout, "@gk ..." lines:
//       lock wait|nowait PATH  lock PATH, blocking (lockPaths(wait = true))
//                              or by retrying lockPaths(wait = false) every
//                              millisecond; "@gk locked US UNLINKED STALE":
//                              microseconds taken, 1 if the inode was
//                              already unlinked, stale retries so far
//       try PATH               one lockPaths(wait = false): "@gk locked ..."
//                              as above, or "@gk busy"
//       release keep|delete    "@gk released" (with deletion: the daemon's
//                              unlink, then "d")
//     EOF: exits (the kernel drops whatever is still held).
//   legacy_peer loop LOG SEED wait|nowait PATH...
//     Until EOF on stdin: lock a random PATH (blocking, or one try without
//     waiting, pausing 1-4 ms when busy), hold it 0-4 ms, release it (with
//     deletion half the time, never after a lock on an unlinked inode),
//     pause 0-9 ms. Then lock every PATH at once, blocking, and
//     report "@gk done HOLDS STALE UNLINKED FINAL_US". A peer that never
//     reports is wedged (spinning on a lock file it takes for stale).
//
// Errors go to stderr with exit status 1.
#include "legacy_pathlocks.hh"

#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string &what) {
  std::fprintf(stderr, "legacy_peer[%d]: %s\n", static_cast<int>(getpid()), what.c_str());
  std::exit(1);
}

void say(const std::string &line) {
  std::printf("@gk %s\n", line.c_str());
  std::fflush(stdout);
}

unsigned long long monoNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<unsigned long long>(ts.tv_sec) * 1000000000ull +
         static_cast<unsigned long long>(ts.tv_nsec);
}

/// Appends one line with one write(2) to the O_APPEND holder log.
void logLine(int log, const std::string &line) {
  std::string l = line + "\n";
  if (write(log, l.data(), l.size()) != static_cast<ssize_t>(l.size()))
    die("short write to the holder log");
}

void pauseMs(unsigned ms) {
  // Scenario pacing (the daemon's retry interval, shortened), never
  // synchronisation.
  struct timespec ts = {0, static_cast<long>(ms) * 1000000L};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

/// One held path, as the daemon's goal holds its output locks.
struct Hold {
  std::unique_ptr<legacy::PathLocks> locks = std::make_unique<legacy::PathLocks>();
  std::string path;
};

/// Locks `path`: blocking, or by retrying without waiting. Returns the
/// reply's fields, logs the S line.
std::string lockOne(int log, Hold &h, const std::string &path, bool wait, bool once,
                    bool &got, bool &unlinked) {
  auto start = std::chrono::steady_clock::now();
  unsigned before = h.locks->unlinkedTaken, beforeSymlink = h.locks->symlinkTaken;
  got = false;
  for (;;) {
    if (h.locks->lockPaths({path}, "", wait)) {
      got = true;
      break;
    }
    if (once)
      return "busy";
    pauseMs(1);
  }
  unlinked = h.locks->unlinkedTaken != before;
  bool symlink = h.locks->symlinkTaken != beforeSymlink;
  h.path = path;
  logLine(log, "S " + std::to_string(getpid()) + " " + path + " " + std::to_string(monoNs()) +
                   (unlinked ? " unlinked" : "") + (symlink ? " symlink" : ""));
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::steady_clock::now() - start)
                .count();
  return "locked " + std::to_string(us) + " " + (unlinked ? "1" : "0") + " " +
         std::to_string(h.locks->staleRetries);
}

void releaseOne(int log, Hold &h, bool del) {
  logLine(log, "E " + std::to_string(getpid()) + " " + h.path + " " + std::to_string(monoNs()));
  h.locks->setDeletion(del);
  h.locks->unlock();
  h.locks->setDeletion(false);
}

int openLog(const char *path) {
  int log = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (log == -1)
    die(std::string("open log: ") + std::strerror(errno));
  return log;
}

int serve(const char *logPath) {
  int log = openLog(logPath);
  Hold h;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd, a, b;
    in >> cmd >> a >> b;
    if (cmd == "lock" || cmd == "try") {
      if (!h.locks->empty())
        die("lock: already holding " + h.path);
      bool got = false, unlinked = false;
      bool once = cmd == "try";
      const std::string &path = once ? a : b;
      say(lockOne(log, h, path, !once && a == "wait", once, got, unlinked));
    } else if (cmd == "release") {
      if (!h.locks->empty())
        releaseOne(log, h, a == "delete");
      say("released");
    } else {
      die("unknown command: " + line);
    }
  }
  return 0;
}

/// Whether stdin has reached EOF (or says "stop"), without blocking.
bool stdinClosed() {
  struct pollfd p = {0, POLLIN, 0};
  if (poll(&p, 1, 0) <= 0)
    return false;
  char buf[64];
  ssize_t n = read(0, buf, sizeof buf);
  return n <= 0 || std::strncmp(buf, "stop", 4) == 0;
}

int loop(const char *logPath, unsigned long seed, bool wait, std::vector<std::string> paths) {
  int log = openLog(logPath);
  std::mt19937_64 rng(seed);
  unsigned holds = 0;
  Hold h;
  while (!stdinClosed()) {
    const std::string &p = paths[rng() % paths.size()];
    bool got = false, unlinked = false;
    lockOne(log, h, p, wait, !wait, got, unlinked);
    if (!got) {
      pauseMs(1 + static_cast<unsigned>(rng() % 4));
      continue;
    }
    ++holds;
    pauseMs(static_cast<unsigned>(rng() % 5));
    // A hold on an unlinked inode (the crash window) is released without
    // deletion: the daemon would unlink whatever file has the name by then,
    // someone else's live one, and the one misstep would cascade into
    // overlaps the holder log could not tell from real ones.
    releaseOne(log, h, !unlinked && rng() % 2 == 0);
    pauseMs(static_cast<unsigned>(rng() % 10));
  }
  // Every path must still be lockable: none wedged.
  auto start = std::chrono::steady_clock::now();
  legacy::PathLocks all;
  all.lockPaths(std::set<std::string>(paths.begin(), paths.end()), "", true);
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::steady_clock::now() - start)
                .count();
  all.unlock();
  say("done " + std::to_string(holds) + " " +
      std::to_string(h.locks->staleRetries + all.staleRetries) + " " +
      std::to_string(h.locks->unlinkedTaken + all.unlinkedTaken) + " " + std::to_string(us));
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  try {
    if (argc == 3 && std::strcmp(argv[1], "serve") == 0)
      return serve(argv[2]);
    if (argc >= 6 && std::strcmp(argv[1], "loop") == 0)
      return loop(argv[2], std::strtoul(argv[3], nullptr, 0), std::strcmp(argv[4], "wait") == 0,
                  std::vector<std::string>(argv + 5, argv + argc));
  } catch (std::exception &e) {
    die(e.what());
  }
  std::fprintf(stderr, "usage: legacy_peer serve LOG | loop LOG SEED wait|nowait PATH...\n");
  return 64;
}
