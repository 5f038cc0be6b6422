/*
 * goalkeeper-pathlocks.hh: a drop-in for guix-daemon's PathLocks
 * (nix/libstore/pathlocks.hh), implemented on goalkeeper's C ABI, with what
 * the daemon needs to end Guix bug #31785: locks owned by goals and
 * released when the goal finishes, and lock waits its select() loop can
 * wait on. doc/migrating-guix-daemon.md (in goalkeeper's source tree)
 * walks through every edit of the daemon.
 *
 * Header-only C++17; link with -lgoalkeeper (`pkg-config --cflags --libs
 * goalkeeper`). In pathlocks.hh, the include goes at the top, outside any
 * namespace, and two declarations replace the class and pathIsLockedByMe()
 * inside namespace nix:
 *
 *     #include <goalkeeper-pathlocks.hh>
 *     namespace nix {
 *     typedef goalkeeper::compat::PathLocks PathLocks;
 *     using goalkeeper::compat::pathIsLockedByMe;
 *     }
 *
 * pathIsLockedByMe() must move together with the class: guix-daemon's own
 * version looks in the set of lock files its PathLocks took, which this
 * class never fills. openLockFile(), lockFile() and deleteLockFile() stay:
 * they serve the GC lock, the build-user pool and the temporary roots.
 *
 * What stays as in guix-daemon (the same signatures over std::set<std::string>):
 *
 *   - lockPaths(paths, waitMsg, wait) locks in sorted order. Without `wait`,
 *     a busy path makes it return false, holding nothing. With `wait`, the
 *     first time it finds a path busy it prints `waitMsg` (unless empty),
 *     once, then blocks until it holds every path.
 *   - A path this process already holds is never locked again and never
 *     waited for: lockPaths() throws goalkeeper::error with status
 *     errc::held_by_this_process, whose what() contains guix-daemon's words
 *     "deadlock: trying to re-acquire self-held lock".
 *   - setDeletion(true) makes unlock() delete the lock files; the flag
 *     belongs to the object and survives unlock() and later lockPaths().
 *   - unlock() on an object that holds nothing does nothing; so does the
 *     destructor. A fork child's inherited object never touches its
 *     parent's locks.
 *   - The lock files are guix-daemon's (P.lock, whole-file record locks):
 *     goalkeeper's OFD locks and guix-daemon's POSIX fcntl locks exclude
 *     each other, so old and new daemons can share a store.
 *
 * What is defined where guix-daemon asserts or leaves it open:
 *
 *   - lockPaths() on an object that already holds locks throws
 *     errc::invalid_state and keeps what it holds; with an empty set it
 *     returns true and holds nothing.
 *   - Errors are goalkeeper::error, passed through the error hook first
 *     (below), so that the daemon can throw its own nix::Error instead.
 *   - unlock() releases every lock even when it throws (a lock file could
 *     not be deleted; it stays, unlocked).
 *   - While lockPaths() waits, it never holds one path while blocking on
 *     another (it gives back what it took and blocks on the busy path
 *     alone), so a waiter cannot be part of a cycle of waits.
 *   - Not copyable; movable.
 *
 * Lock lifetime follows the goal (G1). In guix-daemon a lock lived as long
 * as the object holding it, and goal objects outlive their work: a goal
 * that finished on a path that forgot unlock() kept its locks until the
 * whole request ended, and other clients waited for them (#31785; today
 * the --cache-failures path still does it). Here:
 *
 *   - A GoalScope around a goal's work() makes that goal the owner of every
 *     PathLocks that takes locks on this thread meanwhile.
 *   - goalFinished(goal, name), called when the goal finishes
 *     (Goal::amDone, before its waiters are told), releases every lock the
 *     goal still holds, deleting the lock files where setDeletion(true) was
 *     called, and reports each, naming the goal (set_goal_report_sink;
 *     default: one line on stderr). That report is the only one: it is the
 *     #31785 shape, a lock still held after its owner finished.
 *   - Everything else is quiet: a lock released by unlock(), by the end of
 *     its scope (local-store.cc's addTextToStore, addToStoreFromDump,
 *     importPath), by stack unwinding, or by the destructor of a goal whose
 *     work was abandoned (a client that hung up). A PathLocks whose locks
 *     were released at its goal's end holds nothing afterwards.
 *
 * Waiting from the daemon's select() loop (G4): when lockPaths(paths, "",
 * false) returns false, lockWait() gives a goalkeeper::LockWait whose fd()
 * becomes readable when those paths' locks may be free (released, or their
 * lock files deleted), whoever holds them (an old guix-daemon's POSIX locks
 * included). The goal retries then, instead of after pollInterval (5 s).
 *
 * Hooks (process-wide, atomic; set them once at start-up, e.g. in
 * pathlocks.cc):
 *
 *   - set_error_hook(): sees every goalkeeper::error before it is thrown
 *     and may throw the daemon's own type, so that nix-daemon.cc's
 *     catch (Error &) answers the client (an insecure store, a lock file
 *     that is not ours):
 *         set_error_hook([](const goalkeeper::error &e) { throw Error(e.what()); });
 *   - set_wait_message_sink(): where lockPaths()'s wait message goes.
 *     Default: stderr. guix-daemon printed it with printMsg(lvlError, ...).
 *   - set_interrupt_check(): a blocking lockPaths() calls it while it waits
 *     (every 100 ms by default); whatever it throws ends the wait, holding
 *     nothing. guix-daemon's F_SETLKW returned on the daemon's SIGPOLL;
 *     goalkeeper's wait restarts after signals, so set
 *         set_interrupt_check([] { checkInterrupt(); });
 *   - set_goal_report_sink(): where goalFinished()'s reports go.
 *
 * Thread safety: like guix-daemon's, one object is not safe to use from
 * two threads at once; different objects are. The current goal of a
 * GoalScope is per thread.
 */

#ifndef GOALKEEPER_PATHLOCKS_HH
#define GOALKEEPER_PATHLOCKS_HH

#include "goalkeeper.hpp"

#if defined(__cplusplus) && __cplusplus >= 201703L

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace goalkeeper {
namespace compat {

/// guix-daemon's PathSet: a sorted set of absolute store paths.
typedef std::set<std::string> PathSet;

/// Receives a line of text: lockPaths()'s wait message, goalFinished()'s
/// report. A wait-message sink may throw; lockPaths() then throws it,
/// holding nothing. A report sink must not throw.
using wait_message_sink = void (*)(const std::string &message);

/// Sees every goalkeeper::error before PathLocks or pathIsLockedByMe()
/// throws it. It may throw an exception of its own instead; if it returns,
/// the goalkeeper::error is thrown.
using error_hook = void (*)(const goalkeeper::error &e);

/// Called by a blocking lockPaths() before it locks and while it waits; to
/// stop the wait, throw (nothing is held then).
using interrupt_check = void (*)();

class PathLocks;

namespace detail {

inline void line_to_stderr(const std::string &message) {
  std::fwrite(message.data(), 1, message.size(), stderr);
  std::fputc('\n', stderr);
  std::fflush(stderr);
}

inline std::atomic<wait_message_sink> &wait_sink() noexcept {
  static std::atomic<wait_message_sink> sink{&line_to_stderr};
  return sink;
}

inline std::atomic<wait_message_sink> &report_sink() noexcept {
  static std::atomic<wait_message_sink> sink{&line_to_stderr};
  return sink;
}

inline std::atomic<error_hook> &error_translator() noexcept {
  static std::atomic<error_hook> hook{nullptr};
  return hook;
}

inline std::atomic<interrupt_check> &interrupt_hook() noexcept {
  static std::atomic<interrupt_check> hook{nullptr};
  return hook;
}

inline std::atomic<std::uint64_t> &interrupt_period_ms() noexcept {
  static std::atomic<std::uint64_t> ms{100};
  return ms;
}

/// Runs `f`; a goalkeeper::error leaving it goes through the error hook.
template <class F> auto translating(F f) -> decltype(f()) {
  try {
    return f();
  } catch (const goalkeeper::error &e) {
    if (error_hook h = error_translator().load())
      h(e);
    throw;
  }
}

/// "/s/a, /s/b" for messages.
inline std::string join(const PathSet &paths) {
  std::string s;
  for (const auto &p : paths) {
    if (!s.empty())
      s += ", ";
    s += p;
  }
  return s;
}

/// The goal whose work runs on this thread (GoalScope), or nullptr.
inline const void *&current_goal() noexcept {
  thread_local const void *goal = nullptr;
  return goal;
}

/// Every PathLocks that holds locks for a goal, with its goal.
struct Owned {
  std::mutex mutex;
  std::vector<std::pair<const void *, PathLocks *>> locks;
};

inline Owned &owned() noexcept {
  static Owned o;
  return o;
}

} // namespace detail

/// Replaces the wait-message sink (default: the message and a newline on
/// stderr); nullptr silences it. Returns the previous one.
inline wait_message_sink set_wait_message_sink(wait_message_sink sink) noexcept {
  return detail::wait_sink().exchange(sink);
}

/// Replaces where goalFinished() reports a goal that finished holding locks
/// (default: one line on stderr); nullptr silences it. Returns the previous one.
inline wait_message_sink set_goal_report_sink(wait_message_sink sink) noexcept {
  return detail::report_sink().exchange(sink);
}

/// Replaces the error hook (default: none); nullptr removes it. Returns the
/// previous one.
inline error_hook set_error_hook(error_hook hook) noexcept {
  return detail::error_translator().exchange(hook);
}

/// Sets the interrupt check of blocking waits and how often a wait calls it
/// (at least every millisecond; default 100 ms); nullptr removes it, and a
/// blocking wait then blocks in the kernel until the lock is free. Returns
/// the previous check.
inline interrupt_check
set_interrupt_check(interrupt_check check,
                    std::chrono::milliseconds period = std::chrono::milliseconds(100)) noexcept {
  auto ms = period.count() < 1 ? 1 : static_cast<std::uint64_t>(period.count());
  detail::interrupt_period_ms().store(ms);
  return detail::interrupt_hook().exchange(check);
}

/// Whether this process holds the lock on `path` (through a PathLocks, a
/// goalkeeper::LockSet or a scheduler goal). guix-daemon's
/// pathIsLockedByMe(): a lookup that never blocks; a path that is not a
/// valid absolute store path is not locked (false). Other failures throw
/// goalkeeper::error (through the error hook).
inline bool pathIsLockedByMe(const std::string &path) {
  if (path.find('\0') != std::string::npos)
    return false;
  return detail::translating([&] {
    bool out = false;
    gk_status s = gk_path_is_locked_by_me(path.c_str(), &out);
    if (s == GK_ERROR_INVALID_PATH)
      return false;
    goalkeeper::detail::check(s, "pathIsLockedByMe");
    return out;
  });
}

/// Makes `goal` (any address that names the goal, e.g. the Goal object)
/// the owner of every PathLocks that takes locks on this thread while this
/// object lives: put one around a goal's work(). Nests (restores the
/// previous goal).
class GoalScope {
public:
  explicit GoalScope(const void *goal) noexcept
      : previous_(std::exchange(detail::current_goal(), goal)) {}
  GoalScope(const GoalScope &) = delete;
  GoalScope &operator=(const GoalScope &) = delete;
  ~GoalScope() { detail::current_goal() = previous_; }

private:
  const void *previous_;
};

/// guix-daemon's PathLocks over goalkeeper lock sets (see the top of this
/// file for what is kept, what is defined, and what changes).
class PathLocks {
public:
  /// Holds nothing; deletion off.
  PathLocks() noexcept = default;

  /// lockPaths(paths, waitMsg) with wait: blocks until every path is held.
  PathLocks(const PathSet &paths, const std::string &waitMsg = "") {
    lockPaths(paths, waitMsg);
  }

  PathLocks(const PathLocks &) = delete;
  PathLocks &operator=(const PathLocks &) = delete;

  /// Takes over `other`'s locks, owner and deletion flag; `other` holds nothing.
  PathLocks(PathLocks &&other) noexcept { take(other); }

  /// Releases what this object holds (quietly, as the destructor), then
  /// takes over `other`'s locks, owner and deletion flag.
  PathLocks &operator=(PathLocks &&other) noexcept {
    if (this != &other) {
      release_quietly();
      take(other);
    }
    return *this;
  }

  /// Releases locks still held, honouring setDeletion(), as guix-daemon's
  /// destructor does. Quiet: scopes, stack unwinding and abandoned goals
  /// end this way; a goal that finished holding locks is reported by
  /// goalFinished() instead, which released them already.
  ~PathLocks() { release_quietly(); }

  /// Locks every path of `paths`, in sorted order, all or nothing.
  ///
  /// Without `wait`: false when another process holds one of them (nothing
  /// is held then; lockWait() gives a wait for them). With `wait`: prints
  /// `waitMsg` once if it has to wait, then blocks until all are held,
  /// never holding one while blocking on another. Inside a GoalScope, the
  /// locks belong to that goal. Throws goalkeeper::error (through the
  /// error hook), holding nothing new: errc::held_by_this_process for a
  /// path this process already holds ("deadlock: trying to re-acquire
  /// self-held lock"), errc::invalid_state if this object already holds
  /// locks, errc::invalid_path for a relative or malformed path, and the
  /// library's other errors (permissions, symlinks, insecure store, ...).
  bool lockPaths(const PathSet &paths, const std::string &waitMsg = "", bool wait = true) {
    return detail::translating([&] { return lock_paths(paths, waitMsg, wait); });
  }

  /// Releases every lock, deleting the lock files if setDeletion(true) was
  /// called. Does nothing when nothing is held. The locks are released
  /// even when it throws (a lock file could not be deleted; it stays in
  /// place, unlocked).
  void unlock() {
    detail::translating([&] { release(); });
  }

  /// Whether unlock() (and the destructor) delete the lock files: allowed
  /// once the paths are valid. Kept across unlock() and lockPaths().
  void setDeletion(bool deletePaths) noexcept { deletePaths_ = deletePaths; }

  // -- Not in guix-daemon's class -------------------------------------------

  /// A wait for the paths of the last lockPaths(paths, waitMsg, false) that
  /// returned false: its fd() becomes readable when their locks may be free
  /// (then call lockPaths() again; it may find them busy again). Empty (no
  /// descriptor) when the last lockPaths() did not return false. Throws as
  /// lockPaths().
  [[nodiscard]] goalkeeper::LockWait lockWait() const {
    if (busy_.empty())
      return {};
    return detail::translating([&] { return goalkeeper::LockWait(busy_); });
  }

  /// The paths held (empty when nothing is held).
  [[nodiscard]] const PathSet &paths() const noexcept { return paths_; }

  /// Whether nothing is held.
  [[nodiscard]] bool empty() const noexcept { return handle_ == 0; }

  /// The goalkeeper lock set held (0 when nothing is held); still owned by
  /// this object.
  [[nodiscard]] gk_lockset handle() const noexcept { return handle_; }

private:
  friend std::size_t goalFinished(const void *goal, const std::string &name) noexcept;

  bool lock_paths(const PathSet &paths, const std::string &waitMsg, bool wait) {
    static const char *const function = "PathLocks::lockPaths";
    if (handle_ != 0)
      throw goalkeeper::error(errc::invalid_state, function,
                              "this PathLocks already holds " + detail::join(paths_) +
                                  "; unlock() it before locking " + detail::join(paths) +
                                  " (guix-daemon asserts here)");
    busy_.clear();
    if (paths.empty())
      return true;
    // Every allocation happens before the locks are taken, so nothing can
    // throw between taking them and recording them here.
    goalkeeper::detail::c_paths c(paths, function);
    PathSet copy = paths;
    interrupt_check check = wait ? detail::interrupt_hook().load() : nullptr;
    if (check)
      check();
    gk_lockset h = 0;
    gk_status s = gk_lockset_try_acquire(c.data(), c.size(), GK_BACKEND_OFD, &h);
    if (s == GK_BUSY) {
      if (!wait) {
        busy_.swap(copy);
        return false;
      }
      if (!waitMsg.empty())
        if (wait_message_sink sink = detail::wait_sink().load())
          sink(waitMsg);
      s = block(c, check, &h);
    }
    if (s == GK_HELD_BY_THIS_PROCESS)
      throw goalkeeper::error(errc::held_by_this_process, function,
                              std::string("deadlock: trying to re-acquire self-held lock: ") +
                                  gk_last_error_message());
    goalkeeper::detail::check(s, function);
    if (const void *goal = detail::current_goal()) {
      try {
        std::lock_guard<std::mutex> g(detail::owned().mutex);
        detail::owned().locks.emplace_back(goal, this);
      } catch (...) {
        (void)gk_lockset_release(h); // out of memory: hold nothing
        throw;
      }
      owner_ = goal;
    }
    handle_ = h;
    paths_.swap(copy);
    return true;
  }

  /// Blocks until every path is held: in the kernel, or, with an interrupt
  /// check, in bounded waits with the check between them (each bounded
  /// wait that runs out holds nothing).
  static gk_status block(const goalkeeper::detail::c_paths &c, interrupt_check check,
                         gk_lockset *h) {
    if (!check)
      return gk_lockset_acquire(c.data(), c.size(), GK_BACKEND_OFD, h);
    for (;;) {
      gk_status s = gk_lockset_acquire_timeout(c.data(), c.size(), GK_BACKEND_OFD,
                                               detail::interrupt_period_ms().load(), h);
      if (s != GK_TIMED_OUT && s != GK_BUSY)
        return s;
      check();
    }
  }

  /// Forgets the owner (under the registry's mutex).
  void disown() noexcept {
    if (!owner_)
      return;
    std::lock_guard<std::mutex> g(detail::owned().mutex);
    auto &v = detail::owned().locks;
    v.erase(std::remove(v.begin(), v.end(), std::make_pair(owner_, this)), v.end());
    owner_ = nullptr;
  }

  void take(PathLocks &other) noexcept {
    handle_ = std::exchange(other.handle_, 0);
    paths_ = std::move(other.paths_);
    other.paths_.clear();
    busy_ = std::move(other.busy_);
    other.busy_.clear();
    deletePaths_ = other.deletePaths_;
    owner_ = std::exchange(other.owner_, nullptr);
    if (owner_) {
      std::lock_guard<std::mutex> g(detail::owned().mutex);
      for (auto &e : detail::owned().locks)
        if (e.second == &other)
          e.second = this;
    }
  }

  void release() {
    busy_.clear();
    if (handle_ == 0)
      return;
    disown();
    gk_lockset h = std::exchange(handle_, 0);
    paths_.clear();
    gk_status d = GK_OK;
    std::string dmsg;
    if (deletePaths_) {
      d = gk_lockset_set_deletion(h, true);
      if (d != GK_OK)
        dmsg = gk_last_error_message();
    }
    gk_status s = gk_lockset_release(h);
    // A fork child that inherited this object: the locks are its parent's.
    if (s == GK_ERROR_WRONG_PROCESS)
      return;
    if (s != GK_OK)
      throw goalkeeper::error(static_cast<errc>(s), "PathLocks::unlock",
                              std::string(gk_last_error_message()) + " (the locks were released)");
    if (d != GK_OK)
      throw goalkeeper::error(static_cast<errc>(d), "PathLocks::unlock",
                              dmsg + " (the locks were released; their lock files were kept)");
  }

  /// release() that reports nothing and never throws (the destructor).
  void release_quietly() noexcept {
    try {
      release();
    } catch (...) {
      // The locks are released; a lock file that could not be deleted
      // stays, unlocked, as with guix-daemon's destructor.
    }
  }

  gk_lockset handle_ = 0;
  PathSet paths_;
  PathSet busy_;
  bool deletePaths_ = false;
  const void *owner_ = nullptr;
};

/// The goal `goal` (as given to GoalScope) has finished: call it before
/// its waiters are told (Goal::amDone). Every lock a PathLocks of that goal
/// still holds is released now, deleting the lock files where
/// setDeletion(true) was called, and reported through the goal report sink
/// with the goal's `name`: a lock still held when its goal finishes is the
/// #31785 shape. Returns how many PathLocks it released (0 when the goal
/// released everything itself). Never throws.
inline std::size_t goalFinished(const void *goal, const std::string &name) noexcept {
  std::vector<PathLocks *> left;
  {
    std::lock_guard<std::mutex> g(detail::owned().mutex);
    for (auto &e : detail::owned().locks)
      if (e.first == goal)
        try {
          left.push_back(e.second);
        } catch (...) {
          // Out of memory: this one is released by its destructor.
        }
  }
  for (PathLocks *l : left) {
    try {
      std::string what = "goalkeeper: " + name + " finished holding the lock on " +
                         detail::join(l->paths_) + "; released it now, before its waiters were "
                         "told (" + (l->deletePaths_ ? "lock files deleted" : "lock files kept") +
                         "): a lock must be released when its goal finishes (Guix bug #31785)";
      try {
        l->release();
      } catch (const std::exception &e) {
        what += "; releasing it: ";
        what += e.what();
      }
      if (wait_message_sink sink = detail::report_sink().load())
        sink(what);
    } catch (...) {
      l->release_quietly();
    }
  }
  return left.size();
}

} // namespace compat
} // namespace goalkeeper

#endif /* C++17 */
#endif /* GOALKEEPER_PATHLOCKS_HH */
