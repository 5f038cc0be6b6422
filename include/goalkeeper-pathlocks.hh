/*
 * goalkeeper-pathlocks.hh: a drop-in for guix-daemon's PathLocks
 * (nix/libstore/pathlocks.hh), implemented on goalkeeper's C ABI.
 *
 * Header-only C++17 (it also compiles as C++20); link with -lgoalkeeper
 * (`pkg-config --cflags --libs goalkeeper`). The daemon migrates its store
 * path locks with two declarations in namespace nix, where pathlocks.hh
 * declared the class and pathIsLockedByMe():
 *
 *     #include <goalkeeper-pathlocks.hh>
 *     typedef goalkeeper::compat::PathLocks PathLocks;
 *     using goalkeeper::compat::pathIsLockedByMe;
 *
 * pathIsLockedByMe() must move together with the class: guix-daemon's own
 * version looks in the set of lock files its PathLocks took, which this
 * class never fills, and DerivationGoal::tryToBuild asks it before
 * lockPaths() so that a goal whose outputs another goal of the same process
 * holds waits for that goal instead of hitting the self-lock error.
 * openLockFile(), lockFile() and deleteLockFile() stay: they serve the GC
 * lock, the build-user pool and the temporary roots, which are not store
 * path locks.
 *
 * What stays as in guix-daemon (the same signatures over std::set<std::string>):
 *
 *   - lockPaths(paths, waitMsg, wait) locks in sorted order. Without `wait`,
 *     a busy path makes it return false, holding nothing. With `wait`, the
 *     first time it finds a path busy it prints `waitMsg` (unless empty),
 *     once, then blocks until it holds every path.
 *   - A path this process already holds (through any PathLocks, a
 *     goalkeeper::LockSet or a goalkeeper scheduler goal) is never locked
 *     again and never waited for: lockPaths() throws goalkeeper::error with
 *     status errc::held_by_this_process, whose what() contains guix-daemon's
 *     words "deadlock: trying to re-acquire self-held lock". It is a
 *     programming error of the caller, like guix-daemon's Error; it is not
 *     contention, so it is not the `false` of a busy path.
 *   - setDeletion(true) makes unlock() delete the lock files. The flag
 *     belongs to the object and survives unlock() and later lockPaths()
 *     calls, as in guix-daemon.
 *   - unlock() on an object that holds nothing does nothing. In a fork
 *     child that inherited a PathLocks, unlock() and the destructor only
 *     forget the parent's locks (the child never held them, as with POSIX
 *     locks); the parent keeps them.
 *   - The lock files are guix-daemon's (P.lock, whole-file record locks);
 *     goalkeeper's OFD locks and guix-daemon's POSIX fcntl locks exclude
 *     each other, so old and new daemons can share a store during the
 *     migration, and either side survives the other's deletion of a lock
 *     file (README, "Lock-file protocol").
 *
 * What is defined where guix-daemon asserts or leaves it open:
 *
 *   - lockPaths() on an object that already holds locks throws
 *     goalkeeper::error (errc::invalid_state) and keeps what it holds
 *     (guix-daemon: assert(fds.empty())).
 *   - lockPaths() with an empty set returns true and holds nothing.
 *   - Errors are goalkeeper::error (a std::system_error; code() is in the
 *     goalkeeper category, what() names the path). set_error_hook() lets
 *     the daemon translate them into its own type (nix::Error), so that
 *     its `catch (Error &)` sites keep reporting lock failures to the
 *     client instead of ending the connection.
 *   - unlock() releases every lock even when it throws: an exception then
 *     means a lock file could not be deleted (it stays, unlocked).
 *   - Not copyable (a copy would release the same locks twice); movable.
 *
 * The one behavioural change: a PathLocks destroyed while it still holds
 * locks reports it through goalkeeper's safety net
 * (goalkeeper::set_safety_net_handler; default: one line on stderr), then
 * releases them as guix-daemon's destructor does (deleting the lock files
 * if setDeletion(true) was called). Release explicitly with unlock(): in
 * guix-daemon a lock lived as long as the object holding it, and goal
 * objects outlive their work, which is Guix bug #31785. The scoped uses in
 * local-store.cc (addToStore, addTextToStore, importPath: lock, check
 * validity, write, setDeletion(true), end of scope) should call unlock()
 * before the end of the scope, or each of them is reported.
 *
 * Waiting for several paths (G2): guix-daemon locks the sorted paths one
 * by one and, in wait mode, blocks on a busy path while HOLDING the paths
 * before it. This class never holds one lock while blocking on another:
 * on contention it gives back what it took, blocks on the busy path alone
 * and then tries the whole set again (goalkeeper's gk_lockset_acquire).
 * When lockPaths() returns, the caller sees the same result as with
 * guix-daemon: true with every path held, false (no wait) with none held,
 * or an exception with none held (guix-daemon could throw while holding
 * the first paths, which its destructor released later). What changes is
 * only what happens while it waits: other processes can use the paths
 * this call does not hold yet, instead of queueing behind a waiter, and a
 * waiter cannot be part of a cycle of waits (with peers that do not sort,
 * or with a self-held path further down the list). Neither version queues
 * waiters fairly: a waiter can be overtaken on a path it does not hold, in
 * guix-daemon on the paths after the busy one, here on any of them.
 *
 * Hooks (process-wide, atomic; set them once at start-up):
 *
 *   - set_wait_message_sink(): where the wait message goes. Default: the
 *     message and a newline on stderr, flushed. guix-daemon printed it with
 *     printMsg(lvlError, waitMsg), which the daemon routes to the client:
 *         set_wait_message_sink([](const std::string &m) { printMsg(lvlError, m); });
 *   - set_error_hook(): sees every goalkeeper::error before it is thrown
 *     and may throw the daemon's own exception instead:
 *         set_error_hook([](const goalkeeper::error &e) { throw Error(e.what()); });
 *   - set_interrupt_check(): a blocking lockPaths() calls it before it
 *     locks and, while it waits, every `period` (default 100 ms); whatever
 *     it throws ends the wait, holding nothing. guix-daemon's lockPaths()
 *     called checkInterrupt(), and its blocking F_SETLKW returned on the
 *     daemon's SIGINT/SIGPOLL; goalkeeper's blocking wait restarts after
 *     signals, so without this hook a client that hangs up leaves the
 *     daemon child waiting until the lock is free. With it, the wait is a
 *     series of bounded waits (gk_lockset_acquire_timeout); an interrupted
 *     one leaves goalkeeper's helper thread blocked on the busy path until
 *     that path is free, when it takes the lock and drops it at once (the
 *     next wait for the same path reuses that thread):
 *         set_interrupt_check([] { checkInterrupt(); });
 *
 * Thread safety: like guix-daemon's, one object is not safe to use from
 * two threads at once; different objects are (the library's registry is).
 */

#ifndef GOALKEEPER_PATHLOCKS_HH
#define GOALKEEPER_PATHLOCKS_HH

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <utility>

#include "goalkeeper.hpp"

namespace goalkeeper {
namespace compat {

/// guix-daemon's PathSet: a sorted set of absolute store paths.
typedef std::set<std::string> PathSet;

/// Receives the wait message of a lockPaths() that has to wait. It may
/// throw; lockPaths() then throws it, holding nothing.
using wait_message_sink = void (*)(const std::string &message);

/// Sees every goalkeeper::error before PathLocks or pathIsLockedByMe()
/// throws it. It may throw an exception of its own instead; if it returns,
/// the goalkeeper::error is thrown.
using error_hook = void (*)(const goalkeeper::error &e);

/// Called by a blocking lockPaths() before it locks and while it waits; to
/// stop the wait, throw (nothing is held then).
using interrupt_check = void (*)();

namespace detail {

inline void wait_message_to_stderr(const std::string &message) {
  std::fwrite(message.data(), 1, message.size(), stderr);
  std::fputc('\n', stderr);
  std::fflush(stderr);
}

inline std::atomic<wait_message_sink> &wait_sink() noexcept {
  static std::atomic<wait_message_sink> sink{&wait_message_to_stderr};
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

} // namespace detail

/// Replaces the wait-message sink (default: the message and a newline on
/// stderr); nullptr silences it. Returns the previous one.
inline wait_message_sink set_wait_message_sink(wait_message_sink sink) noexcept {
  return detail::wait_sink().exchange(sink);
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

/// guix-daemon's PathLocks over goalkeeper lock sets (see the top of this
/// file for what is kept, what is defined, and the one change).
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

  /// Takes over `other`'s locks and deletion flag; `other` holds nothing.
  PathLocks(PathLocks &&other) noexcept
      : handle_(std::exchange(other.handle_, 0)), paths_(std::move(other.paths_)),
        deletePaths_(other.deletePaths_) {
    other.paths_.clear();
  }

  /// Releases what this object holds (reported, as by the destructor), then
  /// takes over `other`'s locks and deletion flag.
  PathLocks &operator=(PathLocks &&other) noexcept {
    if (this != &other) {
      safety_net_release();
      handle_ = std::exchange(other.handle_, 0);
      paths_ = std::move(other.paths_);
      other.paths_.clear();
      deletePaths_ = other.deletePaths_;
    }
    return *this;
  }

  /// Releases locks still held, honouring setDeletion(), and reports that
  /// through goalkeeper's safety net: release explicitly with unlock().
  ~PathLocks() { safety_net_release(); }

  /// Locks every path of `paths`, in sorted order, all or nothing.
  ///
  /// Without `wait`: false when another process holds one of them (nothing
  /// is held then). With `wait`: prints `waitMsg` once if it has to wait,
  /// then blocks until all are held, never holding one while blocking on
  /// another. Throws goalkeeper::error (through the error hook), holding
  /// nothing new: errc::held_by_this_process for a path this process
  /// already holds ("deadlock: trying to re-acquire self-held lock"),
  /// errc::invalid_state if this object already holds locks,
  /// errc::invalid_path for a relative or malformed path, and the
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

  /// The paths held (empty when nothing is held).
  [[nodiscard]] const PathSet &paths() const noexcept { return paths_; }

  /// Whether nothing is held.
  [[nodiscard]] bool empty() const noexcept { return handle_ == 0; }

  /// The goalkeeper lock set held (0 when nothing is held); still owned by
  /// this object.
  [[nodiscard]] gk_lockset handle() const noexcept { return handle_; }

private:
  bool lock_paths(const PathSet &paths, const std::string &waitMsg, bool wait) {
    static const char *const function = "PathLocks::lockPaths";
    if (handle_ != 0)
      throw goalkeeper::error(errc::invalid_state, function,
                              "this PathLocks already holds " + detail::join(paths_) +
                                  "; unlock() it before locking " + detail::join(paths) +
                                  " (guix-daemon asserts here)");
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
      if (!wait)
        return false;
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

  void release() {
    if (handle_ == 0)
      return;
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

  void safety_net_release() noexcept {
    if (handle_ == 0)
      return;
    gk_lockset h = handle_;
    gk_status c = gk_lockset_check(h);
    if (c == GK_ERROR_WRONG_PROCESS || c == GK_ERROR_STALE_HANDLE) {
      handle_ = 0; // a fork child's copy, or a set that no longer exists
      paths_.clear();
      return;
    }
    try {
      std::string held = "it held " + detail::join(paths_) +
                         (deletePaths_ ? "; its lock files are deleted (setDeletion)"
                                       : "; its lock files are kept");
      goalkeeper::detail::report_safety_net("PathLocks", h, held.c_str());
    } catch (...) {
      goalkeeper::detail::report_safety_net("PathLocks", h, "it held locks");
    }
    try {
      release();
    } catch (const std::exception &e) {
      goalkeeper::detail::report_safety_net("PathLocks", h, e.what());
    } catch (...) {
      goalkeeper::detail::report_safety_net("PathLocks", h, "release failed");
    }
    handle_ = 0;
    paths_.clear();
  }

  gk_lockset handle_ = 0;
  PathSet paths_;
  bool deletePaths_ = false;
};

} // namespace compat
} // namespace goalkeeper

#endif /* GOALKEEPER_PATHLOCKS_HH */
