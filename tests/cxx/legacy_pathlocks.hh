// The "old store" side of the migration tests: a re-implementation, written
// for this repository, of the lock protocol and goal loop of guix-daemon's
// C++ code (nix/libstore/pathlocks.cc and the Worker/DerivationGoal parts
// of nix/libstore/build.cc), reduced to what touches locks. The lock part
// behaves exactly as the daemon's (checked against Guix's pathlocks.cc,
// 2025), including its hazards: tests need a peer that fails where the
// daemon fails.
//
//   - openLockFile: open(O_RDWR | O_CREAT, 0600), then FD_CLOEXEC with
//     F_GETFD/F_SETFD (closeOnExec()).
//   - lockFile: a classic POSIX record lock over the whole file,
//     fcntl(F_SETLK / F_SETLKW, F_WRLCK), retrying on EINTR; EACCES/EAGAIN
//     from F_SETLK mean "busy"; any other error throws.
//   - PathLocks::lockPaths(paths, waitMsg = "", wait = true): asserts that
//     it holds nothing; sorted; a process-wide set of held lock files
//     refuses to re-lock one ("deadlock: trying to re-acquire self-held
//     lock"); per path, in an UNBOUNDED loop: open (creating), try; if busy,
//     either print waitMsg (when not empty) and block, or (no wait) unlock
//     everything held so far and return false; then fstat, and if
//     st_size != 0 the file is stale (its holder deleted it): re-open and
//     retry. Only st_size is looked at, in both modes, so a linked lock
//     file carrying the token makes it spin for ever, even without waiting
//     (issue 10), and an unlinked empty inode passes for a live lock.
//   - deleteLockFile: unlink(path) (result ignored), then write the token
//     "d" (writeFull: retried on EINTR, an error throws).
//   - PathLocks::unlock: for each lock, deleteLockFile if setDeletion(true),
//     drop it from the held set, close (which drops the POSIX lock; a close
//     error is printed and ignored). The destructor unlocks, printing and
//     ignoring an exception.
//   - The goal loop: a goal checks validity, waits for its inputs, then
//     tries its output locks WITHOUT waiting; when busy it sleeps in the
//     worker's waitingForAWhile list and is retried every pollInterval
//     (5 s in the daemon; a parameter here). Under the lock it re-checks
//     validity ("someone beat us to it"). A waiting goal never re-checks
//     validity without the lock, which is why a leaked lock hangs old
//     clients (Guix bug #31785).
//   - Child processes are detected by EOF on the builder's log pipe, as in
//     Worker::waitForInput.
//
// Where this differs from the daemon, and why:
//   - No checkInterrupt(): the daemon's loops also stop on SIGINT (its
//     interrupt flag); a spinning peer here can only be killed.
//   - No debug() messages; instead three counters: staleRetries,
//     unlinkedTaken (locks granted on an inode that fstat shows already
//     unlinked, st_nlink == 0, which st_size let through) and
//     symlinkTaken (locks granted on something that is not a regular file,
//     or through a name that is a symlink: the daemon's open follows
//     symlinks). They only observe: no decision uses them.
//   - unlock() after a failed token write: the daemon's loop stops at the
//     throw, leaving that lock and the later ones held and in the set (as
//     here), and also leaving the entries it already closed in its list, so
//     that a second unlock() (the destructor's) closes their descriptor
//     numbers again. Here those closed entries are removed from the list.
//
// Corrected on comparison with the daemon (issue 10): lockPaths took no
// waitMsg and threw on a PathLocks that held locks (the daemon asserts);
// unlock() went on after a failed deletion and threw the first error
// afterwards (the daemon stops at once); the destructor swallowed errors
// silently; a close error was ignored without a word; the no-wait path
// closed the busy descriptor before unlocking the others (the daemon
// unlocks, then closes it).
#ifndef GK_TEST_LEGACY_PATHLOCKS_HH
#define GK_TEST_LEGACY_PATHLOCKS_HH

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace legacy {

/// The daemon's Error: thrown for protocol failures.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int openLockFile(const std::string &path, bool create);
void deleteLockFile(const std::string &path, int fd);
enum LockType { ltRead, ltWrite, ltNone };
bool lockFile(int fd, LockType lockType, bool wait);
bool pathIsLockedByMe(const std::string &path);

class PathLocks {
public:
  PathLocks();
  /// Locks `paths`, waiting (as the daemon's constructor of that form).
  PathLocks(const std::set<std::string> &paths, const std::string &waitMsg = "");
  PathLocks(const PathLocks &) = delete;
  PathLocks &operator=(const PathLocks &) = delete;
  ~PathLocks();
  /// Locks every path (sorted); false (holding nothing) when !wait and one
  /// is busy. Prints waitMsg (if not empty) each time it has to block.
  bool lockPaths(const std::set<std::string> &paths, const std::string &waitMsg = "",
                 bool wait = true);
  void unlock();
  void setDeletion(bool deletePaths);
  bool empty() const { return fds.empty(); }
  /// Observation for the tests (no decision uses them): how often a lock
  /// file turned out stale, how many locks were granted on an inode
  /// that was already unlinked yet empty (taken for a live lock), and how
  /// many on a file reached through a symlink or not a regular file at all
  /// (which excludes nobody who locks the path's real lock file).
  unsigned staleRetries = 0;
  unsigned unlinkedTaken = 0;
  unsigned symlinkTaken = 0;

private:
  std::vector<std::pair<int, std::string>> fds;
  bool deletePaths = false;
};

/// One derivation as the legacy worker sees it.
struct Derivation {
  std::string name;
  std::vector<std::string> outputs; // absolute store paths
  std::vector<std::string> inputs;  // names of input derivations
};

enum class Result { None, Built, AlreadyValid, Failed, DependencyFailed };
const char *resultName(Result r);

struct Options {
  std::chrono::milliseconds pollInterval{5000};
  unsigned maxBuildJobs = 1;
  /// The #31785 way: a finished goal's PathLocks object stays alive (as if
  /// another goal still held a shared pointer to it), so its locks stay held
  /// until the process exits.
  bool leakLocks = false;
  /// Starts a builder for `drv` with stdout/stderr on `logFd`; returns its pid.
  std::function<pid_t(const Derivation &drv, int logFd)> spawn;
  /// Called when a goal found an output lock busy (before sleeping).
  std::function<void(const Derivation &drv)> onBusy;
  /// Called when a goal finishes.
  std::function<void(const Derivation &drv, Result r)> onDone;
};

struct Stats {
  unsigned built = 0, alreadyValid = 0, failed = 0, busy = 0, wakeups = 0,
           staleRetries = 0, leaked = 0;
};

class Worker {
public:
  Worker(std::vector<Derivation> drvs, Options opts);
  ~Worker();
  /// Runs until every wanted derivation has finished; true if all succeeded.
  bool run(const std::vector<std::string> &wanted);
  Result result(const std::string &name) const;
  const Stats &stats() const { return stats_; }
  /// Drops the leaked locks (the end of the #31785 scenario).
  void releaseLeaked();

private:
  struct Goal;
  Goal &makeGoal(const std::string &name);
  void wakeUp(Goal &g);
  void work(Goal &g);
  void done(Goal &g, Result r);
  void waitForInput();
  bool validOutputs(const Derivation &d) const;

  std::map<std::string, Derivation> drvs_;
  Options opts_;
  std::map<std::string, std::unique_ptr<Goal>> goals_;
  std::vector<Goal *> awake_, waitingForAnyGoal_, waitingForAWhile_, wantingToBuild_;
  std::map<int, Goal *> children_; // log fd -> goal
  unsigned nrLocalBuilds_ = 0;
  std::chrono::steady_clock::time_point lastWokenUp_{};
  std::vector<std::unique_ptr<PathLocks>> leaked_;
  Stats stats_;
};

} // namespace legacy

#endif
