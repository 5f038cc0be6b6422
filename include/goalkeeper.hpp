/*
 * goalkeeper.hpp: a header-only C++17 wrapper over goalkeeper.h.
 *
 * What it gives a C++ caller (guix-daemon during its migration, or any
 * other host):
 *
 *   - goalkeeper::error, a std::system_error whose code() is in the
 *     goalkeeper error category (goalkeeper::errc mirrors gk_status) and
 *     whose what() carries the library's message (gk_last_error_message);
 *   - move-only owners: goalkeeper::LockSet (a set of store path locks);
 *   - std::string_view / std::vector<std::string> friendly path lists.
 *
 * Errors are exceptions. The expected outcomes of contention are values:
 * try_acquire() returns std::nullopt when another process holds a path,
 * acquire_for() when the time ran out.
 *
 * RELEASE EXPLICITLY. The documented way to give locks back is
 * LockSet::release() (after set_deletion(true) once the paths are valid).
 * The destructors release too, but only as a safety net, and they report
 * it (see set_safety_net_handler). Why: in guix-daemon, a PathLocks object
 * releases its locks in its destructor, so a lock lives as long as the
 * object that holds it, and goal objects outlive their work (kept alive by
 * shared pointers from other goals and from the worker). A goal that had
 * finished could keep its output locks, and other clients waited for them
 * forever: Guix bug #31785. Lock lifetime must follow the work, not an
 * object's lifetime. A destructor that fires means the code lost track of
 * a lock; the safety net keeps the process correct, the report makes the
 * mistake visible.
 *
 * Thread safety: as the C ABI. Handles may be used from any thread of the
 * process that created them; gk_last_error_message() is per thread.
 * Fork: a child inherits copies of these objects, but the library refuses
 * to let it use its parent's locks (GK_ERROR_WRONG_PROCESS).
 */

#ifndef GOALKEEPER_HPP
#define GOALKEEPER_HPP

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "goalkeeper.h"

namespace goalkeeper {

/// The statuses of the C ABI (gk_status), as an error-code enum.
enum class errc : std::int32_t {
  ok = GK_OK,
  busy = GK_BUSY,
  held_by_this_process = GK_HELD_BY_THIS_PROCESS,
  timed_out = GK_TIMED_OUT,
  null_pointer = GK_ERROR_NULL_POINTER,
  invalid_path = GK_ERROR_INVALID_PATH,
  invalid_argument = GK_ERROR_INVALID_ARGUMENT,
  stale_handle = GK_ERROR_STALE_HANDLE,
  wrong_process = GK_ERROR_WRONG_PROCESS,
  buffer_too_small = GK_ERROR_BUFFER_TOO_SMALL,
  invalid_state = GK_ERROR_INVALID_STATE,
  io = GK_ERROR_IO,
  permission_denied = GK_ERROR_PERMISSION_DENIED,
  symlink = GK_ERROR_SYMLINK,
  name_too_long = GK_ERROR_NAME_TOO_LONG,
  no_space = GK_ERROR_NO_SPACE,
  deadlock = GK_ERROR_DEADLOCK,
  stale_lock_file = GK_ERROR_STALE_LOCK_FILE,
  insecure_store = GK_ERROR_INSECURE_STORE,
  invariant_violation = GK_ERROR_INVARIANT_VIOLATION,
  scheduler_deadlock = GK_ERROR_SCHEDULER_DEADLOCK,
  panic = GK_ERROR_PANIC,
};

/// The C name of a status, e.g. "GK_BUSY" (static storage).
[[nodiscard]] inline const char *status_name(errc e) noexcept {
  return gk_status_name(static_cast<std::int32_t>(e));
}

namespace detail {
class category_impl final : public std::error_category {
public:
  const char *name() const noexcept override { return "goalkeeper"; }
  std::string message(int value) const override {
    return gk_status_name(static_cast<std::int32_t>(value));
  }
};
} // namespace detail

/// The goalkeeper error category: its messages are the status names.
[[nodiscard]] inline const std::error_category &error_category() noexcept {
  static const detail::category_impl category;
  return category;
}

/// Makes a std::error_code in the goalkeeper category.
[[nodiscard]] inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

/// The library's message about the most recent failed call on this thread
/// ("" after a success). Copied, so it stays valid.
[[nodiscard]] inline std::string last_error_message() {
  return gk_last_error_message();
}

/// A goalkeeper call failed. code() is in error_category(); status() is the
/// same as errc; message() is the library's text naming the path, handle
/// or goal; what() is "<function>: <message> [<STATUS>]".
class error : public std::system_error {
public:
  error(errc status, const std::string &function, std::string message)
      : std::system_error(make_error_code(status),
                          function + ": " + message + " [" +
                              status_name(status) + "]"),
        message_(std::move(message)) {}

  /// The status, as an errc.
  [[nodiscard]] errc status() const noexcept {
    return static_cast<errc>(code().value());
  }

  /// The library's message (without the function name and status).
  [[nodiscard]] const std::string &message() const noexcept {
    return message_;
  }

private:
  std::string message_;
};

namespace detail {
/// Throws goalkeeper::error for any status but GK_OK.
inline void check(gk_status s, const char *function) {
  if (s != GK_OK)
    throw error(static_cast<errc>(s), function, gk_last_error_message());
}
} // namespace detail

/// The library's version, e.g. "0.1.0".
[[nodiscard]] inline std::string_view version() noexcept { return gk_version(); }

/// The ABI version of the loaded library.
[[nodiscard]] inline std::uint32_t abi_version() noexcept {
  return gk_abi_version();
}

/// Throws unless the loaded library has the ABI this header was written for.
inline void check_abi() {
  if (gk_abi_version() != GK_ABI_VERSION)
    throw error(errc::invalid_state, "goalkeeper::check_abi",
                "libgoalkeeper has ABI " + std::to_string(gk_abi_version()) +
                    ", this header was written for ABI " +
                    std::to_string(GK_ABI_VERSION));
}

// ---------------------------------------------------------------------------
// The safety net

/// Called when a destructor had to release what the code should have
/// released explicitly. `what` names the object ("lock set", "worker"),
/// `handle` is its handle, `detail` says what was released.
using safety_net_handler = void (*)(const char *what, std::uint64_t handle,
                                    const char *detail) noexcept;

namespace detail {
inline void report_to_stderr(const char *what, std::uint64_t handle,
                             const char *detail) noexcept {
  std::fprintf(stderr,
               "goalkeeper: %s %#llx was released by its destructor, not "
               "explicitly (%s); lock lifetime must follow the work, not the "
               "object (Guix bug #31785)\n",
               what, static_cast<unsigned long long>(handle), detail);
}
inline std::atomic<safety_net_handler> &safety_net() noexcept {
  static std::atomic<safety_net_handler> handler{&report_to_stderr};
  return handler;
}
inline void report_safety_net(const char *what, std::uint64_t handle,
                              const char *detail) noexcept {
  if (safety_net_handler h = safety_net().load())
    h(what, handle, detail);
}
} // namespace detail

/// Replaces the safety-net reporter (the default prints one line to
/// stderr); nullptr silences it. Returns the previous one.
inline safety_net_handler set_safety_net_handler(safety_net_handler h) noexcept {
  return detail::safety_net().exchange(h);
}

// ---------------------------------------------------------------------------
// Paths

/// Which kernel lock a store uses (never mix them on one store).
enum class Backend : std::uint32_t {
  /// OFD record locks: they exclude guix-daemon's POSIX fcntl locks.
  ofd = GK_BACKEND_OFD,
  /// flock(2), for stores shared with current Nix.
  flock = GK_BACKEND_FLOCK,
};

/// A timeout meaning "wait as long as it takes" (LockSet::acquire_packed).
inline constexpr std::chrono::milliseconds wait_forever{-1};

namespace detail {
template <class Range, class = void>
struct is_path_range : std::false_type {};
template <class Range>
struct is_path_range<
    Range, std::enable_if_t<std::is_convertible_v<
               decltype(*std::begin(std::declval<const Range &>())),
               std::string_view>>> : std::true_type {};

/// NUL-terminated copies of a list of paths and the pointer array the C ABI
/// takes. A path with an embedded NUL byte would be silently cut short by
/// the C side, so it is refused here.
class c_paths {
public:
  template <class Range>
  c_paths(const Range &paths, const char *function) {
    for (const auto &p : paths) {
      std::string_view v(p);
      if (v.find('\0') != std::string_view::npos)
        throw error(errc::invalid_path, function,
                    "invalid store path \"" +
                        std::string(v.substr(0, v.find('\0'))) +
                        "\\0...\": contains a NUL byte");
      owned_.emplace_back(v);
    }
    ptrs_.reserve(owned_.size());
    for (const auto &s : owned_)
      ptrs_.push_back(s.c_str());
  }
  const char *const *data() const noexcept { return ptrs_.data(); }
  std::size_t size() const noexcept { return ptrs_.size(); }

private:
  std::vector<std::string> owned_;
  std::vector<const char *> ptrs_;
};

/// Splits a buffer of NUL-terminated strings.
inline std::vector<std::string> split_list(const std::vector<char> &buf,
                                           std::size_t len) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at < len) {
    std::string s(buf.data() + at);
    at += s.size() + 1;
    out.push_back(std::move(s));
  }
  return out;
}

/// Calls f(buf, cap, &len) with a growing buffer until it fits.
template <class F>
std::vector<std::string> read_list(F f, const char *function) {
  std::vector<char> buf;
  std::size_t len = 0;
  for (int attempt = 0; attempt < 8; ++attempt) {
    gk_status s = f(buf.empty() ? nullptr : buf.data(), buf.size(), &len);
    if (s == GK_OK)
      return split_list(buf, len);
    if (s != GK_ERROR_BUFFER_TOO_SMALL)
      check(s, function);
    buf.assign(len, '\0'); // the list may grow between calls: retry
  }
  throw error(errc::buffer_too_small, function,
              "the list kept growing while it was being read");
}
} // namespace detail

/// Packs paths into one buffer of NUL-terminated strings, the batch format
/// of LockSet::acquire_packed (one call, no pointer array).
template <class Range,
          std::enable_if_t<detail::is_path_range<Range>::value, int> = 0>
[[nodiscard]] std::string pack(const Range &paths) {
  std::string out;
  for (const auto &p : paths) {
    std::string_view v(p);
    if (v.find('\0') != std::string_view::npos)
      throw error(errc::invalid_path, "goalkeeper::pack",
                  "invalid store path: contains a NUL byte");
    out.append(v);
    out.push_back('\0');
  }
  return out;
}

/// pack() for a braced list: pack({"/s/a", "/s/b"}).
[[nodiscard]] inline std::string pack(std::initializer_list<std::string_view> paths) {
  return pack<std::initializer_list<std::string_view>>(paths);
}

/// Whether this process holds the lock on `path` (through a lock set or a
/// scheduler goal). The replacement for the daemon's pathIsLockedByMe().
[[nodiscard]] inline bool is_locked_by_me(std::string_view path) {
  detail::c_paths p(std::initializer_list<std::string_view>{path},
                    "gk_path_is_locked_by_me");
  bool out = false;
  detail::check(gk_path_is_locked_by_me(p.data()[0], &out),
                "gk_path_is_locked_by_me");
  return out;
}

/// Every store path this process holds, sorted.
[[nodiscard]] inline std::vector<std::string> held_paths() {
  return detail::read_list(
      [](char *b, std::size_t c, std::size_t *l) { return gk_held_paths(b, c, l); },
      "gk_held_paths");
}

/// The number of store paths this process holds.
[[nodiscard]] inline std::size_t held_count() {
  std::size_t n = 0;
  detail::check(gk_held_count(&n), "gk_held_count");
  return n;
}

// ---------------------------------------------------------------------------
// LockSet

/// The locks on a set of store paths, all held (all or nothing, sorted).
///
/// Move-only. Release it with release(), after set_deletion(true) if the
/// paths are now valid. The destructor releases a set still held (never
/// deleting the lock files) and reports it as a safety-net release.
class [[nodiscard]] LockSet {
public:
  /// An empty set (holds nothing).
  LockSet() noexcept = default;

  /// Takes ownership of a raw handle from the C ABI.
  static LockSet adopt(gk_lockset handle) noexcept { return LockSet(handle); }

  LockSet(const LockSet &) = delete;
  LockSet &operator=(const LockSet &) = delete;
  LockSet(LockSet &&other) noexcept : handle_(std::exchange(other.handle_, 0)) {}
  LockSet &operator=(LockSet &&other) noexcept {
    if (this != &other) {
      safety_net_release();
      handle_ = std::exchange(other.handle_, 0);
    }
    return *this;
  }
  ~LockSet() { safety_net_release(); }

  /// Locks every path, blocking until all are held. Never holds one lock
  /// while blocking on another. Throws errc::held_by_this_process at once
  /// instead of blocking on a lock this process holds.
  template <class Range,
            std::enable_if_t<detail::is_path_range<Range>::value, int> = 0>
  static LockSet acquire(const Range &paths, Backend backend = Backend::ofd) {
    detail::c_paths p(paths, "gk_lockset_acquire");
    gk_lockset h = 0;
    detail::check(gk_lockset_acquire(p.data(), p.size(),
                                     static_cast<std::uint32_t>(backend), &h),
                  "gk_lockset_acquire");
    return LockSet(h);
  }
  static LockSet acquire(std::initializer_list<std::string_view> paths,
                         Backend backend = Backend::ofd) {
    return acquire<std::initializer_list<std::string_view>>(paths, backend);
  }

  /// Tries once, without blocking: std::nullopt when another process holds
  /// one of the paths (GK_BUSY; nothing is held then). A path this process
  /// already holds throws errc::held_by_this_process, as the daemon's
  /// PathLocks threw on a self-held lock: inside one process, waiting for
  /// another goal is the scheduler's business (check is_locked_by_me()).
  template <class Range,
            std::enable_if_t<detail::is_path_range<Range>::value, int> = 0>
  static std::optional<LockSet> try_acquire(const Range &paths,
                                            Backend backend = Backend::ofd) {
    detail::c_paths p(paths, "gk_lockset_try_acquire");
    gk_lockset h = 0;
    gk_status s = gk_lockset_try_acquire(
        p.data(), p.size(), static_cast<std::uint32_t>(backend), &h);
    if (s == GK_BUSY)
      return std::nullopt;
    detail::check(s, "gk_lockset_try_acquire");
    return LockSet(h);
  }
  static std::optional<LockSet>
  try_acquire(std::initializer_list<std::string_view> paths,
              Backend backend = Backend::ofd) {
    return try_acquire<std::initializer_list<std::string_view>>(paths, backend);
  }

  /// Blocks at most `timeout`: std::nullopt when it ran out (GK_TIMED_OUT)
  /// or, for a zero timeout, when a path is busy. Errors as acquire().
  template <class Range,
            std::enable_if_t<detail::is_path_range<Range>::value, int> = 0>
  static std::optional<LockSet> acquire_for(const Range &paths,
                                            std::chrono::milliseconds timeout,
                                            Backend backend = Backend::ofd) {
    if (timeout.count() < 0)
      throw error(errc::invalid_argument, "gk_lockset_acquire_timeout",
                  "negative timeout; use acquire() to wait without limit");
    detail::c_paths p(paths, "gk_lockset_acquire_timeout");
    gk_lockset h = 0;
    gk_status s = gk_lockset_acquire_timeout(
        p.data(), p.size(), static_cast<std::uint32_t>(backend),
        static_cast<std::uint64_t>(timeout.count()), &h);
    if (s == GK_TIMED_OUT || s == GK_BUSY)
      return std::nullopt;
    detail::check(s, "gk_lockset_acquire_timeout");
    return LockSet(h);
  }
  static std::optional<LockSet>
  acquire_for(std::initializer_list<std::string_view> paths,
              std::chrono::milliseconds timeout, Backend backend = Backend::ofd) {
    return acquire_for<std::initializer_list<std::string_view>>(paths, timeout,
                                                                backend);
  }

  /// The batch entry point: `packed` holds NUL-terminated paths back to
  /// back (see pack()). `timeout`: wait_forever, zero (try) or a bound.
  /// std::nullopt on GK_BUSY / GK_TIMED_OUT.
  static std::optional<LockSet>
  acquire_packed(std::string_view packed, Backend backend = Backend::ofd,
                 std::chrono::milliseconds timeout = wait_forever) {
    gk_lockset h = 0;
    gk_status s = gk_lockset_acquire_packed(
        reinterpret_cast<const std::uint8_t *>(packed.data()), packed.size(),
        static_cast<std::uint32_t>(backend),
        static_cast<std::int64_t>(timeout.count()), &h);
    if (s == GK_TIMED_OUT || s == GK_BUSY)
      return std::nullopt;
    detail::check(s, "gk_lockset_acquire_packed");
    return LockSet(h);
  }

  /// Whether release() deletes the lock files; allowed once the paths are
  /// valid (the daemon's setDeletion(true)).
  void set_deletion(bool del) {
    detail::check(gk_lockset_set_deletion(handle_, del), "gk_lockset_set_deletion");
  }

  /// Releases every lock (deleting the lock files if asked) and empties
  /// this object. The locks are released even when it throws: errc::no_space
  /// or errc::io then mean a lock file could not be deleted. Releasing an
  /// empty (moved-from or released) set throws errc::stale_handle.
  void release() {
    gk_lockset h = std::exchange(handle_, 0);
    detail::check(gk_lockset_release(h), "gk_lockset_release");
  }

  /// release() for cleanup paths that must not throw: the status goes to `ec`.
  void release(std::error_code &ec) noexcept {
    gk_lockset h = std::exchange(handle_, 0);
    gk_status s = gk_lockset_release(h);
    ec = s == GK_OK ? std::error_code() : make_error_code(static_cast<errc>(s));
  }

  /// Checks the ledger invariants of this set (G6).
  void check() const { detail::check(gk_lockset_check(handle_), "gk_lockset_check"); }

  /// The locked paths, sorted.
  [[nodiscard]] std::vector<std::string> paths() const {
    gk_lockset h = handle_;
    return detail::read_list(
        [h](char *b, std::size_t c, std::size_t *l) {
          return gk_lockset_paths(h, b, c, l);
        },
        "gk_lockset_paths");
  }

  /// The raw handle (0 when empty); still owned by this object.
  [[nodiscard]] gk_lockset handle() const noexcept { return handle_; }

  /// Gives up ownership of the raw handle without releasing it.
  [[nodiscard]] gk_lockset into_raw() noexcept { return std::exchange(handle_, 0); }

  /// Whether this object holds a lock set.
  explicit operator bool() const noexcept { return handle_ != 0; }

private:
  explicit LockSet(gk_lockset h) noexcept : handle_(h) {}

  void safety_net_release() noexcept {
    gk_lockset h = std::exchange(handle_, 0);
    if (h == 0)
      return;
    gk_status s = gk_lockset_release(h);
    // A stale handle or a fork parent's set: this object held nothing here.
    if (s == GK_ERROR_STALE_HANDLE || s == GK_ERROR_WRONG_PROCESS)
      return;
    detail::report_safety_net("lock set", h,
                              s == GK_OK ? "its locks were released"
                                         : gk_last_error_message());
  }

  gk_lockset handle_ = 0;
};

} // namespace goalkeeper

namespace std {
template <> struct is_error_code_enum<goalkeeper::errc> : true_type {};
} // namespace std

#endif /* GOALKEEPER_HPP */
