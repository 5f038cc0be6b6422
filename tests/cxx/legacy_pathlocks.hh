// The "old store" side of the migration tests: a re-implementation, written
// for this repository, of the lock protocol and goal loop of guix-daemon's
// C++ code (nix/libstore/pathlocks.cc and the Worker/DerivationGoal parts
// of nix/libstore/build.cc), reduced to what touches locks:
//
//   - openLockFile: open(O_RDWR | O_CREAT, 0600), then FD_CLOEXEC.
//   - lockFile: a classic POSIX record lock over the whole file,
//     fcntl(F_SETLK / F_SETLKW, F_WRLCK), retrying on EINTR; EACCES/EAGAIN
//     from F_SETLK mean "busy".
//   - PathLocks::lockPaths: sorted; a process-wide set of held lock files
//     refuses to re-lock one ("deadlock: trying to re-acquire self-held
//     lock"); per path: open, try, and either block (wait) or give up
//     everything (no wait); after locking, fstat and treat st_size != 0 as
//     stale (the holder deleted it): re-open and retry.
//   - deleteLockFile: unlink(path), then write the token "d" (that order).
//   - PathLocks::unlock: for each lock, deleteLockFile if setDeletion(true),
//     then close (which drops the POSIX lock). The destructor unlocks.
//   - The goal loop: a goal checks validity, waits for its inputs, then
//     tries its output locks WITHOUT waiting; when busy it sleeps in the
//     worker's waitingForAWhile list and is retried every pollInterval
//     (5 s in the daemon; a parameter here). Under the lock it re-checks
//     validity ("someone beat us to it"). A waiting goal never re-checks
//     validity without the lock, which is why a leaked lock hangs old
//     clients (Guix bug #31785).
//   - Child processes are detected by EOF on the builder's log pipe, as in
//     Worker::waitForInput.
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
  PathLocks(const PathLocks &) = delete;
  PathLocks &operator=(const PathLocks &) = delete;
  ~PathLocks();
  /// Locks every path (sorted); false (holding nothing) when !wait and one is busy.
  bool lockPaths(const std::set<std::string> &paths, bool wait = true);
  void unlock();
  void setDeletion(bool deletePaths);
  bool empty() const { return fds.empty(); }
  /// Counters for the tests: how often a lock file turned out stale.
  unsigned staleRetries = 0;

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
