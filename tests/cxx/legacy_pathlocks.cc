// See legacy_pathlocks.hh: the old daemon's lock protocol and goal loop,
// re-implemented for the migration tests.
#include "legacy_pathlocks.hh"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace legacy {

namespace {

std::string sysError(const std::string &what) {
  return what + ": " + std::strerror(errno);
}

/// The lock files this process holds. POSIX locks cannot tell us that: a
/// second open+close of a held lock file would silently drop the lock.
std::set<std::string> &lockedPaths() {
  static std::set<std::string> s;
  return s;
}

bool pathExists(const std::string &p) {
  struct stat st;
  return lstat(p.c_str(), &st) == 0;
}

} // namespace

int openLockFile(const std::string &path, bool create) {
  int fd = open(path.c_str(), O_RDWR | (create ? O_CREAT : 0), 0600);
  if (fd == -1) {
    if (!create && errno == ENOENT)
      return -1;
    throw Error(sysError("opening lock file '" + path + "'"));
  }
  // The daemon sets close-on-exec after open (closeOnExec()).
  int flags = fcntl(fd, F_GETFD);
  if (flags == -1 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == -1) {
    int e = errno;
    close(fd);
    errno = e;
    throw Error(sysError("setting close-on-exec flag"));
  }
  return fd;
}

void deleteLockFile(const std::string &path, int fd) {
  // The daemon's order: unlink first, then the token that tells waiters
  // blocked on this inode that it is stale. The unlink result is ignored:
  // removing the file is an optimisation.
  (void)unlink(path.c_str());
  ssize_t n;
  do {
    n = write(fd, "d", 1);
  } while (n == -1 && errno == EINTR);
  if (n != 1)
    throw Error(sysError("writing to file"));
}

bool lockFile(int fd, LockType lockType, bool wait) {
  struct flock lock;
  std::memset(&lock, 0, sizeof lock);
  switch (lockType) {
  case ltRead: lock.l_type = F_RDLCK; break;
  case ltWrite: lock.l_type = F_WRLCK; break;
  case ltNone: lock.l_type = F_UNLCK; break;
  }
  lock.l_whence = SEEK_SET;
  lock.l_start = 0;
  lock.l_len = 0; // the whole file
  for (;;) {
    if (fcntl(fd, wait ? F_SETLKW : F_SETLK, &lock) == 0)
      return true;
    if (errno == EINTR)
      continue;
    if (!wait && (errno == EACCES || errno == EAGAIN))
      return false;
    throw Error(sysError("acquiring/releasing lock"));
  }
}

bool pathIsLockedByMe(const std::string &path) {
  return lockedPaths().count(path + ".lock") != 0;
}

namespace {
/// Closes its descriptor when it goes out of scope or gets another one
/// (the daemon's AutoCloseFD).
class AutoFD {
public:
  AutoFD() = default;
  AutoFD(const AutoFD &) = delete;
  AutoFD &operator=(const AutoFD &) = delete;
  ~AutoFD() { reset(-1); }
  void reset(int fd) {
    if (fd_ != -1)
      close(fd_);
    fd_ = fd;
  }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

private:
  int fd_ = -1;
};
} // namespace

PathLocks::PathLocks() = default;

PathLocks::PathLocks(const std::set<std::string> &paths, const std::string &waitMsg) {
  lockPaths(paths, waitMsg);
}

PathLocks::~PathLocks() {
  try {
    unlock();
  } catch (std::exception &e) {
    // The daemon's ignoreException(): a destructor must not throw.
    std::fprintf(stderr, "error (ignored): %s\n", e.what());
  }
}

bool PathLocks::lockPaths(const std::set<std::string> &paths, const std::string &waitMsg,
                          bool wait) {
  assert(fds.empty());
  // std::set iterates in sorted order: every process locks in the same order.
  for (const std::string &path : paths) {
    std::string lockPath = path + ".lock";
    if (lockedPaths().count(lockPath))
      throw Error("deadlock: trying to re-acquire self-held lock");
    AutoFD fd;
    for (;;) { // no bound: the daemon retries for as long as the file is stale
      fd.reset(openLockFile(lockPath, true));
      if (!lockFile(fd.get(), ltWrite, false)) {
        if (wait) {
          if (!waitMsg.empty())
            std::fprintf(stderr, "%s\n", waitMsg.c_str());
          lockFile(fd.get(), ltWrite, true);
        } else {
          unlock(); // give up the paths locked so far; fd closes on return
          return false;
        }
      }
      struct stat st;
      if (fstat(fd.get(), &st) == -1)
        throw Error(sysError("statting lock file '" + lockPath + "'"));
      if (st.st_size != 0) {
        // Its holder deleted it: others may already lock a fresh file
        // under this name. Retry.
        ++staleRetries;
        continue;
      }
      // Observed only: the daemon does not look.
      if (st.st_nlink == 0)
        ++unlinkedTaken;
      struct stat name;
      if (!S_ISREG(st.st_mode) ||
          (lstat(lockPath.c_str(), &name) == 0 && S_ISLNK(name.st_mode)))
        ++symlinkTaken;
      break;
    }
    fds.emplace_back(fd.release(), lockPath);
    lockedPaths().insert(lockPath);
  }
  return true;
}

void PathLocks::unlock() {
  while (!fds.empty()) {
    auto &[fd, lockPath] = fds.front();
    if (deletePaths)
      deleteLockFile(lockPath, fd); // a throw leaves this lock and the rest held
    lockedPaths().erase(lockPath);
    if (close(fd) == -1)
      std::fprintf(stderr, "error (ignored): cannot close lock file on '%s'\n",
                   lockPath.c_str());
    fds.erase(fds.begin());
  }
}

void PathLocks::setDeletion(bool d) { deletePaths = d; }

const char *resultName(Result r) {
  switch (r) {
  case Result::None: return "none";
  case Result::Built: return "built";
  case Result::AlreadyValid: return "already-valid";
  case Result::Failed: return "failed";
  case Result::DependencyFailed: return "dependency-failed";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// The goal loop

struct Worker::Goal {
  enum class State { Init, InputsRealised, TryToBuild, Building, Done };
  const Derivation *drv = nullptr;
  State state = State::Init;
  std::set<Goal *> waitees;
  std::vector<Goal *> waiters;
  unsigned nrFailed = 0;
  std::unique_ptr<PathLocks> outputLocks = std::make_unique<PathLocks>();
  pid_t pid = -1;
  int logFd = -1;
  Result result = Result::None;
};

Worker::Worker(std::vector<Derivation> drvs, Options opts) : opts_(std::move(opts)) {
  for (auto &d : drvs)
    drvs_.emplace(d.name, std::move(d));
}

Worker::~Worker() {
  for (auto &[fd, g] : children_) {
    close(fd);
    if (g->pid > 0)
      waitpid(g->pid, nullptr, 0);
  }
}

void Worker::releaseLeaked() { leaked_.clear(); }

Result Worker::result(const std::string &name) const {
  auto i = goals_.find(name);
  return i == goals_.end() ? Result::None : i->second->result;
}

bool Worker::validOutputs(const Derivation &d) const {
  for (auto &o : d.outputs)
    if (!pathExists(o))
      return false;
  return true;
}

template <class T> static void addUnique(std::vector<T *> &v, T *g) {
  if (std::find(v.begin(), v.end(), g) == v.end())
    v.push_back(g);
}

Worker::Goal &Worker::makeGoal(const std::string &name) {
  auto &slot = goals_[name];
  if (!slot) {
    auto d = drvs_.find(name);
    if (d == drvs_.end())
      throw Error("unknown derivation " + name);
    slot = std::make_unique<Goal>();
    slot->drv = &d->second;
    wakeUp(*slot);
  }
  return *slot;
}

void Worker::wakeUp(Goal &g) { addUnique(awake_, &g); }

void Worker::done(Goal &g, Result r) {
  g.result = r;
  g.state = Goal::State::Done;
  bool failed = r == Result::Failed || r == Result::DependencyFailed;
  if (r == Result::Built)
    ++stats_.built;
  else if (r == Result::AlreadyValid)
    ++stats_.alreadyValid;
  else
    ++stats_.failed;
  stats_.staleRetries += g.outputLocks->staleRetries;
  // The goal is over. In the daemon its PathLocks is released when the goal
  // object dies, i.e. when the last shared pointer to it goes away.
  if (!g.outputLocks->empty()) {
    if (opts_.leakLocks) {
      // #31785: something still holds a pointer to the goal.
      leaked_.push_back(std::move(g.outputLocks));
      g.outputLocks = std::make_unique<PathLocks>();
      ++stats_.leaked;
    } else {
      g.outputLocks->unlock();
    }
  }
  for (Goal *w : g.waiters) {
    w->waitees.erase(&g);
    if (failed)
      ++w->nrFailed;
    if (w->waitees.empty() || failed) {
      w->waitees.clear();
      wakeUp(*w);
    }
  }
  g.waiters.clear();
  // removeGoal(): wake the goals waiting for any goal to finish.
  for (Goal *w : waitingForAnyGoal_)
    wakeUp(*w);
  waitingForAnyGoal_.clear();
  if (opts_.onDone)
    opts_.onDone(*g.drv, r);
}

void Worker::work(Goal &g) {
  const Derivation &drv = *g.drv;
  switch (g.state) {
  case Goal::State::Init:
    if (validOutputs(drv)) {
      done(g, Result::AlreadyValid);
      return;
    }
    for (auto &in : drv.inputs) {
      Goal &w = makeGoal(in);
      if (w.state != Goal::State::Done) {
        g.waitees.insert(&w);
        w.waiters.push_back(&g);
      } else if (w.result == Result::Failed || w.result == Result::DependencyFailed) {
        ++g.nrFailed;
      }
    }
    g.state = Goal::State::InputsRealised;
    if (g.waitees.empty())
      wakeUp(g);
    return;

  case Goal::State::InputsRealised:
    if (g.nrFailed) {
      done(g, Result::DependencyFailed);
      return;
    }
    g.state = Goal::State::TryToBuild;
    [[fallthrough]];

  case Goal::State::TryToBuild: {
    for (auto &o : drv.outputs)
      if (pathIsLockedByMe(o)) {
        addUnique(waitingForAnyGoal_, &g);
        return;
      }
    std::set<std::string> outs(drv.outputs.begin(), drv.outputs.end());
    if (!g.outputLocks->lockPaths(outs, "", false)) {
      ++stats_.busy;
      if (opts_.onBusy)
        opts_.onBusy(drv);
      addUnique(waitingForAWhile_, &g);
      return;
    }
    // Someone may have built it while we waited; under the lock, check again.
    if (validOutputs(drv)) {
      g.outputLocks->setDeletion(true);
      done(g, Result::AlreadyValid);
      return;
    }
    if (nrLocalBuilds_ >= opts_.maxBuildJobs) {
      addUnique(wantingToBuild_, &g);
      g.outputLocks->unlock();
      return;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) == -1)
      throw Error(sysError("pipe"));
    g.pid = opts_.spawn(drv, p[1]);
    close(p[1]);
    if (g.pid <= 0) {
      close(p[0]);
      g.outputLocks->unlock();
      done(g, Result::Failed);
      return;
    }
    g.logFd = p[0];
    children_[p[0]] = &g;
    ++nrLocalBuilds_;
    g.state = Goal::State::Building;
    return;
  }

  case Goal::State::Building: {
    // Woken by EOF on the log pipe: the builder has exited.
    int status = 0;
    while (waitpid(g.pid, &status, 0) == -1) {
      if (errno != EINTR)
        throw Error(sysError("waitpid"));
    }
    children_.erase(g.logFd);
    close(g.logFd);
    g.logFd = -1;
    g.pid = -1;
    --nrLocalBuilds_;
    for (Goal *w : wantingToBuild_)
      wakeUp(*w);
    wantingToBuild_.clear();
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && validOutputs(drv)) {
      g.outputLocks->setDeletion(true);
      if (!opts_.leakLocks)
        g.outputLocks->unlock();
      done(g, Result::Built);
    } else {
      g.outputLocks->unlock();
      done(g, Result::Failed);
    }
    return;
  }

  case Goal::State::Done:
    return;
  }
}

void Worker::waitForInput() {
  using clock = std::chrono::steady_clock;
  auto before = clock::now();
  int timeout = -1;
  if (!waitingForAWhile_.empty()) {
    if (lastWokenUp_ == clock::time_point{} || lastWokenUp_ > before)
      lastWokenUp_ = before;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        lastWokenUp_ + opts_.pollInterval - before);
    timeout = static_cast<int>(std::max<long long>(1, left.count()));
  } else {
    lastWokenUp_ = clock::time_point{};
  }
  std::vector<pollfd> pfds;
  for (auto &[fd, g] : children_)
    pfds.push_back({fd, POLLIN, 0});
  int n = poll(pfds.data(), pfds.size(), timeout);
  if (n == -1) {
    if (errno == EINTR)
      return;
    throw Error(sysError("poll"));
  }
  for (auto &p : pfds) {
    if (!(p.revents & (POLLIN | POLLHUP | POLLERR)))
      continue;
    char buf[4096];
    ssize_t rd = read(p.fd, buf, sizeof buf);
    if (rd == -1 && errno == EINTR)
      continue;
    if (rd > 0) {
      // Build log: pass it through.
      ssize_t off = 0;
      while (off < rd) {
        ssize_t w = write(STDERR_FILENO, buf + off, rd - off);
        if (w <= 0)
          break;
        off += w;
      }
      continue;
    }
    Goal *g = children_[p.fd];
    wakeUp(*g); // EOF (or error): the builder is gone
  }
  auto after = clock::now();
  if (!waitingForAWhile_.empty() && lastWokenUp_ + opts_.pollInterval <= after) {
    lastWokenUp_ = after;
    ++stats_.wakeups;
    for (Goal *g : waitingForAWhile_)
      wakeUp(*g);
    waitingForAWhile_.clear();
  }
}

bool Worker::run(const std::vector<std::string> &wanted) {
  std::vector<Goal *> top;
  for (auto &w : wanted)
    top.push_back(&makeGoal(w));
  auto topDone = [&] {
    return std::all_of(top.begin(), top.end(),
                       [](Goal *g) { return g->state == Goal::State::Done; });
  };
  for (;;) {
    while (!awake_.empty() && !topDone()) {
      std::vector<Goal *> now;
      now.swap(awake_);
      for (Goal *g : now)
        work(*g);
    }
    if (topDone())
      break;
    if (!children_.empty() || !waitingForAWhile_.empty())
      waitForInput();
    else if (awake_.empty())
      throw Error("legacy worker: no goal can progress");
  }
  return std::all_of(top.begin(), top.end(), [](Goal *g) {
    return g->result == Result::Built || g->result == Result::AlreadyValid;
  });
}

} // namespace legacy
