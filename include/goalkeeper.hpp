/*
 * goalkeeper.hpp: a header-only C++17 wrapper over goalkeeper.h.
 *
 * What it gives a C++ caller (guix-daemon during its migration, or any
 * other host):
 *
 *   - goalkeeper::error, a std::system_error whose code() is in the
 *     goalkeeper error category (goalkeeper::errc mirrors gk_status; codes
 *     compare equal to the std::errc conditions that fit, e.g.
 *     std::errc::permission_denied) and whose what() carries the library's
 *     message (gk_last_error_message) and the status's name;
 *   - move-only owners: goalkeeper::LockSet (a set of store path locks),
 *     goalkeeper::LockWait (a descriptor for the host's poll loop that
 *     becomes readable when busy locks may be free),
 *     goalkeeper::Worker (the goal scheduler, driven by a pull loop:
 *     next_event() / report(), or their batched forms add_goals(),
 *     next_events() / report_many(), with fd() for the host's poll loop;
 *     BasicWorker<T> carries the host's data of type T per goal) and
 *     goalkeeper::StoreDb (the store database, read-only: "is this path
 *     valid?");
 *   - std::string_view / std::vector<std::string> friendly path lists.
 *
 * Errors are exceptions. The expected outcomes of contention are values:
 * try_acquire() returns std::nullopt when another process holds a path,
 * acquire_for() when the time ran out.
 *
 * RELEASE EXPLICITLY. The documented way to give locks back is
 * LockSet::release() (after set_deletion(true) once the paths are valid)
 * and, for a worker's goals, goal completion: Worker::report() or cancel()
 * ends a goal, and that releases its locks at once (G1; the guarantees
 * G1-G7 and the items S3, S9 cited below are defined in doc/design.md in
 * goalkeeper's source tree).
 * The destructors release too, but only as a safety net, and they report
 * it (see set_safety_net_handler), unless the object is destroyed by stack
 * unwinding: releasing on an exception is what RAII is for. Why: in guix-daemon, a PathLocks object
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

#if !defined(__cplusplus) || __cplusplus < 201703L
#error "goalkeeper.hpp needs C++17 or later (compile with -std=c++17); C callers include goalkeeper.h"
#else

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <memory>
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
  foreign_lock_file = GK_ERROR_FOREIGN_LOCK_FILE,
  store_db_missing = GK_ERROR_STORE_DB_MISSING,
  store_db_not_sqlite = GK_ERROR_STORE_DB_NOT_SQLITE,
  store_db_no_valid_paths = GK_ERROR_STORE_DB_NO_VALID_PATHS,
  store_db_locked = GK_ERROR_STORE_DB_LOCKED,
  store_db_unreadable = GK_ERROR_STORE_DB_UNREADABLE,
  store_db = GK_ERROR_STORE_DB,
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

  /// What the status means, in words (status_name() gives its C name).
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
    case errc::ok: return "success";
    case errc::busy: return "the lock is held by another process";
    case errc::held_by_this_process: return "the lock is already held by this process";
    case errc::timed_out: return "the wait timed out";
    case errc::null_pointer: return "a required pointer is null";
    case errc::invalid_path: return "invalid store path";
    case errc::invalid_argument: return "invalid argument";
    case errc::stale_handle: return "the handle was released, freed or never issued";
    case errc::wrong_process: return "the handle belongs to the parent of this fork child";
    case errc::buffer_too_small: return "the output buffer is too small";
    case errc::invalid_state: return "not allowed in the object's current state";
    case errc::io: return "input/output error";
    case errc::permission_denied: return "permission denied";
    case errc::symlink: return "the lock file is a symbolic link";
    case errc::name_too_long: return "file name too long";
    case errc::no_space: return "no space left on device";
    case errc::deadlock: return "the kernel reported a lock deadlock";
    case errc::stale_lock_file: return "the lock file kept being deleted under us";
    case errc::insecure_store: return "the store directory is writable by others without the sticky bit";
    case errc::foreign_lock_file: return "the lock file is not one goalkeeper may use";
    case errc::store_db_missing: return "the store database does not exist";
    case errc::store_db_not_sqlite: return "the store database is not an SQLite database";
    case errc::store_db_no_valid_paths: return "the store database has no ValidPaths table";
    case errc::store_db_locked: return "the store database stayed locked by a writer";
    case errc::store_db_unreadable: return "the store database cannot be read";
    case errc::store_db: return "store database error";
    case errc::invariant_violation: return "a ledger invariant does not hold";
    case errc::scheduler_deadlock: return "the scheduler cannot progress";
    case errc::panic: return "internal error in goalkeeper";
    }
    return "unknown goalkeeper status " + std::to_string(value);
  }

  /// The portable condition (std::errc) a status stands for, where one fits:
  /// `e == std::errc::permission_denied` works on a goalkeeper error code.
  std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<errc>(value)) {
    case errc::busy: return std::errc::resource_unavailable_try_again;
    case errc::held_by_this_process:
    case errc::deadlock: return std::errc::resource_deadlock_would_occur;
    case errc::timed_out: return std::errc::timed_out;
    case errc::null_pointer:
    case errc::invalid_path:
    case errc::invalid_argument: return std::errc::invalid_argument;
    case errc::stale_handle: return std::errc::bad_file_descriptor;
    case errc::buffer_too_small: return std::errc::result_out_of_range;
    case errc::io: return std::errc::io_error;
    case errc::permission_denied: return std::errc::permission_denied;
    case errc::symlink: return std::errc::too_many_symbolic_link_levels;
    case errc::name_too_long: return std::errc::filename_too_long;
    case errc::no_space: return std::errc::no_space_on_device;
    case errc::store_db_missing: return std::errc::no_such_file_or_directory;
    case errc::store_db_locked: return std::errc::device_or_resource_busy;
    default: return std::error_condition(value, *this);
    }
  }
};
} // namespace detail

/// The goalkeeper error category: message() says what a status means, and
/// codes compare equal to the std::errc conditions that fit them.
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
      : std::system_error(make_error_code(status)), message_(std::move(message)),
        what_(function + ": " + message_ + " [" + status_name(status) + "]") {}

  /// "<function>: <message> [<STATUS>]", the status named once.
  const char *what() const noexcept override { return what_.c_str(); }

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
  std::string what_;
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
// The store database

namespace detail {
/// A NUL-terminated copy of `s`; a NUL inside is refused (the C side would
/// silently cut the string short there).
inline std::string c_string(std::string_view s, const char *function, const char *what) {
  if (s.find('\0') != std::string_view::npos)
    throw error(errc::invalid_path, function,
                std::string(what) + " \"" + std::string(s.substr(0, s.find('\0'))) +
                    "\\0...\": contains a NUL byte");
  return std::string(s);
}
} // namespace detail

/// The store's database (`/var/guix/db/db.sqlite`, `/nix/var/nix/db/db.sqlite`),
/// read-only: a store path is valid when it is registered in `ValidPaths`.
///
/// Move-only. Keeps one connection and its prepared statement, for a host
/// that asks often (store_path_valid() opens the database at every call).
/// Its errors name the file: errc::invalid_path (a relative path),
/// store_db_missing, store_db_not_sqlite, store_db_no_valid_paths,
/// store_db_locked (a writer held it past the busy timeout),
/// store_db_unreadable, store_db (anything else). goalkeeper never writes
/// the database. Unlike a lock set, a database needs no explicit release:
/// the destructor closes it.
class [[nodiscard]] StoreDb {
public:
  /// Opens and checks the database at `db_path` (absolute). A query waits
  /// at most `busy_timeout` for a writer (0: the library's 5 s).
  explicit StoreDb(std::string_view db_path,
                   std::chrono::milliseconds busy_timeout = std::chrono::milliseconds(0)) {
    if (busy_timeout.count() < 0 ||
        busy_timeout.count() > std::chrono::milliseconds::rep(UINT32_MAX))
      throw error(errc::invalid_argument, "gk_store_db_open",
                  "busy_timeout must be between 0 and 2^32-1 ms");
    std::string p = detail::c_string(db_path, "gk_store_db_open", "database path");
    detail::check(gk_store_db_open(p.c_str(), static_cast<std::uint32_t>(busy_timeout.count()),
                                   &handle_),
                  "gk_store_db_open");
  }

  StoreDb(const StoreDb &) = delete;
  StoreDb &operator=(const StoreDb &) = delete;
  StoreDb(StoreDb &&other) noexcept : handle_(std::exchange(other.handle_, 0)) {}
  StoreDb &operator=(StoreDb &&other) noexcept {
    if (this != &other) {
      free_quietly();
      handle_ = std::exchange(other.handle_, 0);
    }
    return *this;
  }
  ~StoreDb() { free_quietly(); }

  /// Whether `store_path` (absolute, as the daemon registers it) is
  /// registered. Throws on any database error: an error is never "valid".
  [[nodiscard]] bool is_valid(std::string_view store_path) const {
    std::string p = detail::c_string(store_path, "gk_store_db_is_valid", "store path");
    bool out = false;
    detail::check(gk_store_db_is_valid(handle_, p.c_str(), &out), "gk_store_db_is_valid");
    return out;
  }

  /// is_valid() for each path, in order, from one consistent read.
  template <class Range,
            std::enable_if_t<detail::is_path_range<Range>::value, int> = 0>
  [[nodiscard]] std::vector<bool> valid_paths(const Range &paths) const {
    detail::c_paths p(paths, "gk_store_db_valid_paths");
    if (p.size() == 0)
      return {};
    std::unique_ptr<bool[]> out(new bool[p.size()]());
    detail::check(gk_store_db_valid_paths(handle_, p.data(), p.size(), out.get()),
                  "gk_store_db_valid_paths");
    return std::vector<bool>(out.get(), out.get() + p.size());
  }
  [[nodiscard]] std::vector<bool>
  valid_paths(std::initializer_list<std::string_view> paths) const {
    return valid_paths<std::initializer_list<std::string_view>>(paths);
  }

  /// Closes the database; throws errc::stale_handle when already closed.
  void close() {
    if (handle_ == 0)
      throw error(errc::stale_handle, "goalkeeper::StoreDb::close",
                  "this store database was already closed (or moved from)");
    gk_store_db h = std::exchange(handle_, 0);
    detail::check(gk_store_db_free(h), "gk_store_db_free");
  }

  /// The raw handle (0 once closed); still owned by this object.
  [[nodiscard]] gk_store_db handle() const noexcept { return handle_; }

  explicit operator bool() const noexcept { return handle_ != 0; }

private:
  void free_quietly() noexcept {
    if (handle_ != 0)
      (void)gk_store_db_free(std::exchange(handle_, 0));
  }

  gk_store_db handle_ = 0;
};

/// One query without a StoreDb: opens the database at `db_path`, asks
/// whether `store_path` is registered, and closes it. Throws as StoreDb.
[[nodiscard]] inline bool store_path_valid(std::string_view db_path,
                                           std::string_view store_path) {
  std::string d = detail::c_string(db_path, "gk_store_path_valid", "database path");
  std::string p = detail::c_string(store_path, "gk_store_path_valid", "store path");
  bool out = false;
  detail::check(gk_store_path_valid(d.c_str(), p.c_str(), &out), "gk_store_path_valid");
  return out;
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
  /// empty (moved-from or released) set throws errc::stale_handle, "already
  /// released".
  void release() {
    if (handle_ == 0)
      throw error(errc::stale_handle, "goalkeeper::LockSet::release",
                  "this lock set was already released (or moved from, or never held)");
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
    // Stack unwinding is what RAII is for: not a lost lock.
    if (s == GK_ERROR_STALE_HANDLE || s == GK_ERROR_WRONG_PROCESS ||
        std::uncaught_exceptions() > 0)
      return;
    detail::report_safety_net("lock set", h,
                              s == GK_OK ? "its locks were released"
                                         : gk_last_error_message());
  }

  gk_lockset handle_ = 0;
};


// ---------------------------------------------------------------------------
// LockWait

/// A wait, for an event loop, until the locks of some store paths may be
/// free (gk_lock_wait): fd() becomes readable, and stays readable, once each
/// path's lock was seen free since the wait began (its holder released it
/// or deleted its lock file). It holds nothing: then retry the non-blocking
/// acquisition (LockSet::try_acquire, or PathLocks::lockPaths(..., false));
/// if another process was quicker, wait again. Works whoever holds the
/// locks: guix-daemon (POSIX locks) and goalkeeper with Backend::ofd, Nix
/// with Backend::flock.
///
/// Move-only; the destructor frees the wait (fired or not; nothing to
/// report, since it holds nothing). An empty LockWait (default, moved-from)
/// has no descriptor.
class [[nodiscard]] LockWait {
public:
  /// Waits for nothing; fd() is -1.
  LockWait() noexcept = default;

  /// Starts waiting for `paths`. Throws errc::held_by_this_process if this
  /// process holds one of them (the wait would never end), and the path
  /// errors of LockSet::try_acquire.
  template <class Range,
            std::enable_if_t<detail::is_path_range<Range>::value, int> = 0>
  explicit LockWait(const Range &paths, Backend backend = Backend::ofd) {
    detail::c_paths p(paths, "gk_lock_wait_new");
    detail::check(gk_lock_wait_new(p.data(), p.size(),
                                   static_cast<std::uint32_t>(backend), &handle_),
                  "gk_lock_wait_new");
    std::int32_t fd = -1;
    gk_status s = gk_lock_wait_fd(handle_, &fd);
    if (s != GK_OK) {
      (void)gk_lock_wait_free(std::exchange(handle_, 0));
      detail::check(s, "gk_lock_wait_fd");
    }
    fd_ = fd;
  }
  explicit LockWait(std::initializer_list<std::string_view> paths,
                    Backend backend = Backend::ofd)
      : LockWait(std::vector<std::string_view>(paths), backend) {}

  LockWait(const LockWait &) = delete;
  LockWait &operator=(const LockWait &) = delete;
  LockWait(LockWait &&other) noexcept
      : handle_(std::exchange(other.handle_, 0)), fd_(std::exchange(other.fd_, -1)) {}
  LockWait &operator=(LockWait &&other) noexcept {
    if (this != &other) {
      free_quietly();
      handle_ = std::exchange(other.handle_, 0);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~LockWait() { free_quietly(); }

  /// The descriptor to poll for reading (-1 when empty). It belongs to the
  /// wait; never read or close it.
  [[nodiscard]] int fd() const noexcept { return fd_; }

  /// The raw handle (0 when empty); still owned by this object.
  [[nodiscard]] gk_lock_wait handle() const noexcept { return handle_; }

  /// Whether this object waits for something.
  explicit operator bool() const noexcept { return handle_ != 0; }

private:
  void free_quietly() noexcept {
    if (handle_ != 0)
      (void)gk_lock_wait_free(std::exchange(handle_, 0));
    fd_ = -1;
  }

  gk_lock_wait handle_ = 0;
  int fd_ = -1;
};

// ---------------------------------------------------------------------------
// Worker: the goal scheduler, driven by a pull loop

/// What a goal does with its outputs.
enum class GoalKind : std::uint32_t {
  /// Locks all its outputs, then is run by the host (a derivation).
  build = GK_GOAL_BUILD,
  /// Locks its one output, then is run by the host (a substitution).
  substitute = GK_GOAL_SUBSTITUTE,
  /// No locks: ordering only.
  plain = GK_GOAL_PLAIN,
};

/// The daemon's build modes.
enum class BuildMode : std::uint32_t {
  normal = GK_MODE_NORMAL,
  repair = GK_MODE_REPAIR,
  check = GK_MODE_CHECK,
};

/// How a goal ended (none: not yet).
enum class Outcome : std::uint32_t {
  none = GK_OUTCOME_NONE,
  built = GK_OUTCOME_BUILT,
  substituted = GK_OUTCOME_SUBSTITUTED,
  already_valid = GK_OUTCOME_ALREADY_VALID,
  failed = GK_OUTCOME_FAILED,
  timed_out = GK_OUTCOME_TIMED_OUT,
  cached_failure = GK_OUTCOME_CACHED_FAILURE,
  dependency_failed = GK_OUTCOME_DEPENDENCY_FAILED,
  cancelled = GK_OUTCOME_CANCELLED,
};

/// The outcome's name, e.g. "already-valid" (static storage).
[[nodiscard]] inline const char *outcome_name(Outcome o) noexcept {
  return gk_outcome_name(static_cast<std::uint32_t>(o));
}

/// Built, substituted or already valid.
[[nodiscard]] inline bool is_success(Outcome o) noexcept {
  return o == Outcome::built || o == Outcome::substituted ||
         o == Outcome::already_valid;
}

/// Where a goal is.
enum class GoalState : std::uint32_t {
  waiting_deps = GK_STATE_WAITING_DEPS,
  ready = GK_STATE_READY,
  waiting_slot = GK_STATE_WAITING_SLOT,
  waiting_lock = GK_STATE_WAITING_LOCK,
  running = GK_STATE_RUNNING,
  finished = GK_STATE_FINISHED,
};

/// A goal id, meaningful only with the worker that issued it.
struct Goal {
  gk_goal id = 0;
  explicit operator bool() const noexcept { return id != 0; }
  friend bool operator==(Goal a, Goal b) noexcept { return a.id == b.id; }
  friend bool operator!=(Goal a, Goal b) noexcept { return a.id != b.id; }
  friend bool operator<(Goal a, Goal b) noexcept { return a.id < b.id; }
};

/// Goal k of the batch being added (GoalBatch), as a dependency of another
/// goal of the same batch, earlier or later in it (GK_BATCH_GOAL(k)).
[[nodiscard]] inline Goal batch_goal(std::uint32_t k) noexcept {
  return Goal{GK_BATCH_GOAL(k)};
}

/// How a goal's host data of type T travels in its 64-bit tag (gk_event.tag):
/// bit for bit. T must be trivially copyable, trivially default-constructible
/// and at most 8 bytes: a pointer to the host's own goal object, an index,
/// an enum. The library never dereferences, copies out or frees it; it hands
/// it back with every event about the goal. Specialise for another mapping.
template <class T> struct tag_traits {
  static_assert(std::is_trivially_copyable_v<T> &&
                    std::is_trivially_default_constructible_v<T> &&
                    sizeof(T) <= sizeof(std::uint64_t),
                "a goal's host data is stored in its 64-bit tag: use a "
                "pointer, an index or an enum (or specialise tag_traits)");
  [[nodiscard]] static std::uint64_t to_tag(const T &v) noexcept {
    std::uint64_t t = 0;
    std::memcpy(&t, &v, sizeof v);
    return t;
  }
  [[nodiscard]] static T from_tag(std::uint64_t t) noexcept {
    T v;
    std::memcpy(&v, &t, sizeof v);
    return v;
  }
};

/// Worker settings (gk_worker_options).
struct WorkerOptions {
  /// Build slots (the daemon's max-jobs).
  std::uint32_t max_jobs = 1;
  /// Go on with independent goals after a failure.
  bool keep_going = false;
  Backend backend = Backend::ofd;
  /// How often a goal waiting on another process's lock re-checks whether
  /// its outputs became valid (S3); zero means the library's default.
  std::chrono::milliseconds recheck_interval{0};
  /// Emulate the old daemon: finished goals keep their locks (tests only).
  bool legacy_hold = false;
};

/// The kind of an event (gk_event_kind).
enum class EventKind : std::uint32_t {
  /// Start goal's builder: its inputs are done, a slot is taken, its
  /// output locks are held and its outputs are not valid.
  run = GK_EVENT_RUN,
  /// The goal ended without running (already valid, dependency failed,
  /// cached failure, cancelled); see outcome.
  finished = GK_EVENT_FINISHED,
  /// Nothing to do now: poll fd (and your builders) for at most timeout.
  wait = GK_EVENT_WAIT,
  /// Every goal has finished.
  done = GK_EVENT_DONE,
};

/// One step of the pull loop (gk_event), with the goal's host data as a T
/// (see BasicWorker).
template <class T> struct BasicEvent {
  using Kind = EventKind;
  Kind kind = Kind::done;
  Goal goal;
  GoalKind goal_kind = GoalKind::plain;
  /// The goal's host data, as given when it was added (run, finished); for
  /// a goal shared by two requests for the same outputs (S9), the first's.
  T data{};
  /// The same, as the raw 64-bit tag.
  std::uint64_t tag = 0;
  Outcome outcome = Outcome::none;
  int fd = -1;
  std::optional<std::chrono::milliseconds> timeout;

  /// timeout as poll(2) wants it: -1 for none.
  [[nodiscard]] int poll_timeout() const noexcept {
    if (!timeout)
      return -1;
    auto ms = timeout->count();
    return ms > 0x7fffffff ? 0x7fffffff : static_cast<int>(ms < 0 ? 0 : ms);
  }

  /// The event of a raw gk_event.
  [[nodiscard]] static BasicEvent from_c(const gk_event &raw) noexcept {
    BasicEvent ev;
    ev.kind = static_cast<Kind>(raw.kind);
    ev.goal = Goal{raw.goal};
    ev.goal_kind = static_cast<GoalKind>(raw.goal_kind);
    ev.tag = raw.tag;
    ev.data = tag_traits<T>::from_tag(raw.tag);
    ev.outcome = static_cast<Outcome>(raw.outcome);
    ev.fd = raw.fd;
    if (raw.timeout_ms >= 0)
      ev.timeout = std::chrono::milliseconds(raw.timeout_ms);
    return ev;
  }
};

/// An event of a Worker, whose host data is the raw 64-bit tag.
using Event = BasicEvent<std::uint64_t>;

/// What a goal is and how it ended (gk_goal_result).
struct GoalResult {
  GoalState state;
  Outcome outcome;
  GoalKind kind;
  BuildMode mode;
};

/// The worker's counts (gk_audit): goals by state, locks, slots, waits.
/// locks_held_by_finished and violations must always be 0.
using Audit = gk_audit;

// ---------------------------------------------------------------------------
// Diagnostics log records (gk_log_record)

/// What a diagnostics log record reports (gk_log_kind).
enum class LogKind : std::uint32_t {
  /// The goal waits for a lock held in the kernel by another process (or
  /// another lock set or worker of this process); holder_pid when known.
  waits_foreign = GK_LOG_WAITS_FOREIGN,
  /// The goal waits for a lock held by holder_goal of the same worker.
  waits_local = GK_LOG_WAITS_LOCAL,
  /// The goal got the lock handed over after waiting `duration`.
  handed_over = GK_LOG_HANDED_OVER,
  /// The goal, waiting `duration` for a lock, found its outputs valid.
  became_valid = GK_LOG_BECAME_VALID,
  /// The goal could not lock its outputs (or wait for a lock) and failed.
  could_not_lock = GK_LOG_COULD_NOT_LOCK,
  /// Releasing the goal's locks reported an error.
  release_failed = GK_LOG_RELEASE_FAILED,
  /// A host predicate failed on `path`; taken as "no".
  predicate_error = GK_LOG_PREDICATE_ERROR,
  /// The cached-failure predicate said `path` failed before.
  cached_failure = GK_LOG_CACHED_FAILURE,
  /// Reported built, but `path` is not valid: recorded failed.
  not_valid_after_success = GK_LOG_NOT_VALID_AFTER_SUCCESS,
  /// The goal failed without keep-going: the rest was cancelled.
  cancelled_by_failure = GK_LOG_CANCELLED_BY_FAILURE,
  /// A build with max_jobs 0: it failed.
  no_build_slots = GK_LOG_NO_BUILD_SLOTS,
  /// Requested again in another build mode; it keeps its mode.
  mode_kept = GK_LOG_MODE_KEPT,
  /// A ledger invariant check failed.
  ledger_violation = GK_LOG_LEDGER_VIOLATION,
  /// The log was full; older records were dropped.
  dropped = GK_LOG_DROPPED,
  /// The store database could not say whether an output is valid; the goal
  /// was not finished as valid on it.
  validity_unknown = GK_LOG_VALIDITY_UNKNOWN,
  /// A waiting goal's re-check found an output on disk but not valid (not
  /// registered in the store database): still being built; it keeps waiting.
  on_disk_not_valid = GK_LOG_ON_DISK_NOT_VALID,
};

/// The kind's name, e.g. "waits-foreign" (static storage).
[[nodiscard]] inline const char *log_kind_name(LogKind k) noexcept {
  return gk_log_kind_name(static_cast<std::uint32_t>(k));
}

/// One record of a worker's diagnostics log (gk_log_record), with its
/// strings copied: it outlives the worker.
struct LogRecord {
  LogKind kind = LogKind::dropped;
  /// The goal concerned (empty if none).
  Goal goal;
  /// For waits: the process holding the lock, when known.
  std::optional<int> holder_pid;
  /// For waits on a goal of this process: that goal (else empty).
  Goal holder_goal;
  /// When it was recorded: CLOCK_MONOTONIC, which is steady_clock on Linux.
  std::chrono::steady_clock::time_point time;
  /// For hand-offs and goals that became valid: how long the goal waited.
  std::optional<std::chrono::nanoseconds> duration;
  /// The store path concerned (an output; its lock file is path + ".lock").
  std::optional<std::string> path;
  /// The human-readable line, as take_log() gives it.
  std::string message;

  /// A copy of a raw record, whose strings are valid only until the next
  /// gk_worker_take_log_records call on its worker.
  [[nodiscard]] static LogRecord from_c(const gk_log_record &r) {
    LogRecord out;
    out.kind = static_cast<LogKind>(r.kind);
    out.goal = Goal{r.goal};
    if (r.holder_pid >= 0)
      out.holder_pid = r.holder_pid;
    out.holder_goal = Goal{r.holder_goal};
    out.time = std::chrono::steady_clock::time_point(
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::nanoseconds(static_cast<std::int64_t>(r.time_ns))));
    if (r.duration_ns >= 0)
      out.duration = std::chrono::nanoseconds(r.duration_ns);
    if (r.path != nullptr)
      out.path = std::string(r.path, r.path_len);
    if (r.message != nullptr)
      out.message.assign(r.message, r.message_len);
    return out;
  }
};

/// A host predicate on store paths, e.g. "is this output valid?". It runs on
/// the thread that called into the worker. An exception it throws is
/// treated as "no" (and logged by the library); it never crosses into C.
using PathPredicate = std::function<bool(std::string_view path)>;

/// Which part of a batch element a batch_error names (gk_batch_field).
enum class BatchField : std::uint32_t {
  /// The batch as a whole.
  none = GK_FIELD_NONE,
  kind = GK_FIELD_KIND,
  mode = GK_FIELD_MODE,
  /// Output sub of goal index (in the order given), or its outputs as a whole.
  output = GK_FIELD_OUTPUT,
  output_offsets = GK_FIELD_OUTPUT_OFFSETS,
  /// Dependency sub of goal index.
  dependency = GK_FIELD_DEPENDENCY,
  dep_offsets = GK_FIELD_DEP_OFFSETS,
  /// The goal of report index.
  goal = GK_FIELD_GOAL,
  /// The outcome of report index.
  outcome = GK_FIELD_OUTCOME,
};

/// A refused batch (Worker::add_goals, Worker::report_many): nothing was
/// changed; index(), sub() and field() name the first bad element, as
/// does message() ("goals[3].deps[1]: ...").
class batch_error : public error {
public:
  batch_error(errc status, const std::string &function, std::string message,
              const gk_batch_error &e)
      : error(status, function, std::move(message)), index_(e.index),
        sub_(e.sub), field_(static_cast<BatchField>(e.field)) {}

  /// The goal (add_goals) or report (report_many), or the offset.
  [[nodiscard]] std::size_t index() const noexcept { return index_; }
  /// Which output or dependency of it.
  [[nodiscard]] std::size_t sub() const noexcept { return sub_; }
  [[nodiscard]] BatchField field() const noexcept { return field_; }

private:
  std::size_t index_, sub_;
  BatchField field_;
};

namespace detail {
inline void check_batch(gk_status s, const char *function,
                        const gk_batch_error &e) {
  if (s != GK_OK)
    throw batch_error(static_cast<errc>(s), function, gk_last_error_message(), e);
}
} // namespace detail

/// One report for Worker::report_many (gk_report).
struct Report {
  Goal goal;
  /// built, substituted, failed or timed_out.
  Outcome outcome = Outcome::built;
  /// Out: the outcome recorded (failed for a success whose outputs are not
  /// all valid); none until the batch is accepted.
  Outcome recorded = Outcome::none;
};

/// Goals to add in one call (Worker::add_goals), with their outputs, host
/// data and dependencies, kept in the flat arrays the C ABI takes
/// (gk_goal_batch). Reusable: clear() keeps the memory.
template <class T> class BasicGoalBatch {
public:
  /// Adds a goal (see Worker::add_goal) that waits for `deps`: goals of the
  /// worker, or batch_goal(k) for goal k of this batch (earlier or later).
  /// Returns its index in the batch.
  template <class Range, class Deps = std::initializer_list<Goal>,
            std::enable_if_t<detail::is_path_range<Range>::value, int> = 0>
  std::size_t add(GoalKind kind, const Range &outputs,
                  BuildMode mode = BuildMode::normal, T data = T{},
                  const Deps &deps = {}) {
    if (kinds_.size() >= UINT32_MAX)
      throw error(errc::invalid_argument, "goalkeeper::GoalBatch::add",
                  "a batch holds fewer than 2^32 goals");
    for (const auto &p : outputs) {
      std::string_view v(p);
      if (v.find('\0') != std::string_view::npos)
        throw error(errc::invalid_path, "goalkeeper::GoalBatch::add",
                    "invalid store path: contains a NUL byte");
      packed_.append(v);
      packed_.push_back('\0');
      ++n_outputs_;
    }
    for (Goal d : deps)
      deps_.push_back(d.id);
    kinds_.push_back(static_cast<std::uint32_t>(kind));
    modes_.push_back(static_cast<std::uint32_t>(mode));
    tags_.push_back(tag_traits<T>::to_tag(data));
    output_offsets_.push_back(n_outputs_);
    dep_offsets_.push_back(static_cast<std::uint32_t>(deps_.size()));
    return kinds_.size() - 1;
  }
  /// add() for a braced list of outputs and of dependencies.
  std::size_t add(GoalKind kind, std::initializer_list<std::string_view> outputs,
                  BuildMode mode = BuildMode::normal, T data = T{},
                  std::initializer_list<Goal> deps = {}) {
    return add<std::initializer_list<std::string_view>,
               std::initializer_list<Goal>>(kind, outputs, mode, data, deps);
  }

  [[nodiscard]] std::size_t size() const noexcept { return kinds_.size(); }
  [[nodiscard]] bool empty() const noexcept { return kinds_.empty(); }
  void clear() noexcept {
    kinds_.clear();
    modes_.clear();
    tags_.clear();
    output_offsets_.assign(1, 0);
    dep_offsets_.assign(1, 0);
    deps_.clear();
    packed_.clear();
    n_outputs_ = 0;
  }

  /// The C description (valid while the batch is not changed).
  [[nodiscard]] gk_goal_batch c_batch() const noexcept {
    gk_goal_batch b{};
    b.struct_size = sizeof(gk_goal_batch);
    b.n_goals = static_cast<std::uint32_t>(kinds_.size());
    b.kinds = kinds_.data();
    b.modes = modes_.data();
    b.tags = tags_.data();
    b.output_offsets = n_outputs_ ? output_offsets_.data() : nullptr;
    b.outputs_packed = n_outputs_ ? reinterpret_cast<const std::uint8_t *>(packed_.data()) : nullptr;
    b.outputs_packed_len = packed_.size();
    b.dep_offsets = deps_.empty() ? nullptr : dep_offsets_.data();
    b.deps = deps_.empty() ? nullptr : deps_.data();
    return b;
  }

private:
  std::vector<std::uint32_t> kinds_, modes_;
  std::vector<std::uint64_t> tags_;
  std::vector<std::uint32_t> output_offsets_{0}, dep_offsets_{0};
  std::vector<gk_goal> deps_;
  std::string packed_;
  std::uint32_t n_outputs_ = 0;
};

/// One scheduler per client request, as in the daemon.
///
/// T is the type of the host's data per goal, carried in the goal's 64-bit
/// tag: give it when adding a goal, get it back in every event about the
/// goal (BasicEvent::data) and from data(), so that a daemon finds its own
/// goal object without a table of goal ids. Worker is BasicWorker<uint64_t>
/// (the raw tag); a daemon typically uses BasicWorker<MyGoal *>. T is a
/// template parameter rather than a std::any per goal: it costs nothing (no
/// side table, no allocation, no type check per event), and the library,
/// which cannot run C++ destructors, owns nothing of the host's: the host
/// keeps its goal objects alive until their goals finish (as guix-daemon
/// does). A goal shared by a second request for the same outputs (S9) keeps
/// its first data; the second request gets the same Goal.
///
/// Move-only. The pull loop is next_event() / report(). A goal's locks are
/// released when it finishes, on every path, before any dependent wakes
/// (G1): report() and cancel() are where the host ends its goals. close()
/// frees the worker; freeing a worker with unfinished goals cancels them
/// (the host abandoning its goals). The destructor frees too, as a safety
/// net, and reports it when that cancelled goals or released locks.
template <class T = std::uint64_t> class [[nodiscard]] BasicWorker {
public:
  /// The host's data per goal.
  using Data = T;
  /// This worker's events.
  using Event = BasicEvent<T>;
  /// This worker's batches of goals.
  using GoalBatch = BasicGoalBatch<T>;

  /// A new worker.
  explicit BasicWorker(const WorkerOptions &opts = {}) {
    if (opts.recheck_interval.count() < 0 ||
        opts.recheck_interval.count() > std::chrono::milliseconds::rep(UINT32_MAX))
      throw error(errc::invalid_argument, "gk_worker_new",
                  "recheck_interval must be between 0 and 2^32-1 ms");
    gk_worker_options o{};
    o.max_jobs = opts.max_jobs;
    o.keep_going = opts.keep_going;
    o.backend = static_cast<std::uint32_t>(opts.backend);
    o.recheck_interval_ms =
        static_cast<std::uint32_t>(opts.recheck_interval.count());
    o.legacy_hold = opts.legacy_hold;
    detail::check(gk_worker_new(&o, &handle_), "gk_worker_new");
  }

  /// Takes ownership of a raw handle from the C ABI.
  static BasicWorker adopt(gk_worker handle) noexcept { return BasicWorker(handle); }

  /// A worker with the library's defaults (gk_worker_new with NULL options).
  static BasicWorker with_defaults() {
    gk_worker h = 0;
    detail::check(gk_worker_new(nullptr, &h), "gk_worker_new");
    return BasicWorker(h);
  }

  BasicWorker(const BasicWorker &) = delete;
  BasicWorker &operator=(const BasicWorker &) = delete;
  BasicWorker(BasicWorker &&other) noexcept
      : handle_(std::exchange(other.handle_, 0)),
        valid_(std::move(other.valid_)), cached_(std::move(other.cached_)),
        events_(std::move(other.events_)), reports_(std::move(other.reports_)) {}
  BasicWorker &operator=(BasicWorker &&other) noexcept {
    if (this != &other) {
      safety_net_free();
      handle_ = std::exchange(other.handle_, 0);
      valid_ = std::move(other.valid_);
      cached_ = std::move(other.cached_);
      events_ = std::move(other.events_);
      reports_ = std::move(other.reports_);
    }
    return *this;
  }
  ~BasicWorker() { safety_net_free(); }

  /// Frees the worker. Unfinished goals are cancelled and everything they
  /// hold is released. Throws errc::stale_handle when already closed.
  void close() {
    if (handle_ == 0)
      throw error(errc::stale_handle, "goalkeeper::Worker::close",
                  "this worker was already closed (or moved from)");
    gk_worker h = std::exchange(handle_, 0);
    detail::check(gk_worker_free(h), "gk_worker_free");
  }

  /// Takes validity from the store database at `db_path` (absolute, e.g.
  /// "/var/guix/db/db.sqlite"): an output is valid when it is registered in
  /// ValidPaths. What a real store needs; the file-existence default is only
  /// right for a store without a database. The database is opened and
  /// checked now: a bad one throws (errc::store_db_*, invalid_path) and the
  /// worker keeps its previous validity. It replaces a validity predicate.
  /// If the database cannot answer later, no goal is finished as valid (a
  /// goal about to run fails, a waiting one keeps waiting, a reported
  /// success is recorded as failed) and take_log() says why.
  void set_store_database(std::string_view db_path) {
    std::string p = detail::c_string(db_path, "gk_worker_set_store_database", "database path");
    detail::check(gk_worker_set_store_database(handle_, p.c_str()),
                  "gk_worker_set_store_database");
    valid_.reset(); // the library no longer uses the predicate
  }

  /// Back to the default validity, "the path exists" (dropping a store
  /// database or a validity predicate).
  void reset_validity() {
    detail::check(gk_worker_set_store_database(handle_, nullptr),
                  "gk_worker_set_store_database");
    valid_.reset();
  }

  /// Sets the validity predicate ("is this output valid?"), replacing a
  /// store database; an empty function restores the default ("the path
  /// exists"). A real store should use set_store_database().
  void set_valid_path(PathPredicate f) { set_predicate(valid_, std::move(f), true); }

  /// Sets the cached-failure predicate; an empty function: never.
  void set_cached_failure(PathPredicate f) { set_predicate(cached_, std::move(f), false); }

  /// Adds a goal (build: >= 1 output; substitute: exactly 1; plain: any),
  /// with the host's `data` for it (see the class). The same output set
  /// again gives the same goal (S9), which keeps its first data.
  template <class Range,
            std::enable_if_t<detail::is_path_range<Range>::value, int> = 0>
  Goal add_goal(GoalKind kind, const Range &outputs,
                BuildMode mode = BuildMode::normal, T data = T{}) {
    detail::c_paths p(outputs, "gk_worker_add_goal");
    Goal g;
    detail::check(gk_worker_add_goal(handle_, static_cast<std::uint32_t>(kind),
                                     p.size() ? p.data() : nullptr, p.size(),
                                     static_cast<std::uint32_t>(mode),
                                     tag_traits<T>::to_tag(data), &g.id),
                  "gk_worker_add_goal");
    return g;
  }
  Goal add_goal(GoalKind kind, std::initializer_list<std::string_view> outputs,
                BuildMode mode = BuildMode::normal, T data = T{}) {
    return add_goal<std::initializer_list<std::string_view>>(kind, outputs, mode,
                                                             data);
  }

  /// add_goal() with the outputs packed (see pack()); "" for none.
  Goal add_goal_packed(GoalKind kind, std::string_view packed,
                       BuildMode mode = BuildMode::normal, T data = T{}) {
    Goal g;
    detail::check(gk_worker_add_goal_packed(
                      handle_, static_cast<std::uint32_t>(kind),
                      reinterpret_cast<const std::uint8_t *>(packed.data()),
                      packed.size(), static_cast<std::uint32_t>(mode),
                      tag_traits<T>::to_tag(data), &g.id),
                  "gk_worker_add_goal_packed");
    return g;
  }

  /// Adds the goals of `batch`, with their dependencies, in one call, all
  /// or nothing (gk_worker_add_goals); returns their ids, in order (a goal
  /// with the same outputs as another gives its id: S9). Throws
  /// batch_error naming the first bad goal, output or dependency; the
  /// worker is then unchanged.
  std::vector<Goal> add_goals(const GoalBatch &batch) {
    gk_goal_batch b = batch.c_batch();
    std::vector<Goal> ids(batch.size());
    gk_batch_error e{};
    static_assert(sizeof(Goal) == sizeof(gk_goal), "Goal is a gk_goal");
    std::vector<gk_goal> raw(batch.size());
    detail::check_batch(gk_worker_add_goals(handle_, &b, raw.data(), &e),
                        "gk_worker_add_goals", e);
    for (std::size_t i = 0; i < raw.size(); ++i)
      ids[i] = Goal{raw[i]};
    return ids;
  }

  /// The host's data of `goal`, as given when it was added.
  [[nodiscard]] T data(Goal goal) const {
    std::uint64_t tag = 0;
    detail::check(gk_worker_goal_tag(handle_, goal.id, &tag), "gk_worker_goal_tag");
    return tag_traits<T>::from_tag(tag);
  }

  /// Makes `goal` wait for `dep` (goal must not have started).
  void add_dependency(Goal goal, Goal dep) {
    detail::check(gk_worker_add_dependency(handle_, goal.id, dep.id),
                  "gk_worker_add_dependency");
  }

  /// The next event; never blocks. errc::scheduler_deadlock when goals
  /// remain but nothing can progress (the message names them).
  [[nodiscard]] Event next_event() {
    gk_event raw{};
    detail::check(gk_worker_next_event(handle_, &raw), "gk_worker_next_event");
    return Event::from_c(raw);
  }

  /// The next events, at most `max` (> 0), in one call
  /// (gk_worker_next_events): `out` is cleared and filled; returns how
  /// many. A wait event comes only alone, a done event last.
  std::size_t next_events(std::vector<Event> &out, std::size_t max = 64) {
    out.clear();
    if (events_.size() < max)
      events_.resize(max);
    std::size_t n = 0;
    detail::check(gk_worker_next_events(handle_, events_.data(), max, &n),
                  "gk_worker_next_events");
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
      out.push_back(Event::from_c(events_[i]));
    return n;
  }

  /// Reports many goals that were run, in one call, all or nothing
  /// (gk_worker_report_many); each report's `recorded` is then the outcome
  /// recorded. Throws batch_error naming the first bad report; nothing is
  /// then reported.
  void report_many(std::vector<Report> &reports) {
    reports_.resize(reports.size());
    for (std::size_t i = 0; i < reports.size(); ++i) {
      reports_[i].goal = reports[i].goal.id;
      reports_[i].outcome = static_cast<std::uint32_t>(reports[i].outcome);
      reports_[i].recorded = 0;
    }
    gk_batch_error e{};
    detail::check_batch(gk_worker_report_many(handle_, reports_.data(),
                                              reports_.size(), &e),
                        "gk_worker_report_many", e);
    for (std::size_t i = 0; i < reports.size(); ++i)
      reports[i].recorded = static_cast<Outcome>(reports_[i].recorded);
  }

  /// Reports how a goal that was run ended: built, substituted, failed or
  /// timed_out. Its locks and slot are released before any dependent wakes.
  void report(Goal goal, Outcome outcome) {
    detail::check(gk_worker_report(handle_, goal.id,
                                   static_cast<std::uint32_t>(outcome)),
                  "gk_worker_report");
  }

  /// Cancels a goal that has not finished (a running one: the host stopped
  /// its builder); its dependents end dependency_failed.
  void cancel(Goal goal) {
    detail::check(gk_worker_cancel(handle_, goal.id), "gk_worker_cancel");
  }

  /// A goal's state, outcome, kind and mode (they outlive its execution).
  [[nodiscard]] GoalResult result(Goal goal) const {
    gk_goal_result r{};
    detail::check(gk_worker_goal_result(handle_, goal.id, &r),
                  "gk_worker_goal_result");
    return {static_cast<GoalState>(r.state), static_cast<Outcome>(r.outcome),
            static_cast<GoalKind>(r.kind), static_cast<BuildMode>(r.mode)};
  }

  /// A goal's outputs, sorted.
  [[nodiscard]] std::vector<std::string> outputs(Goal goal) const {
    gk_worker h = handle_;
    return detail::read_list(
        [h, goal](char *b, std::size_t c, std::size_t *l) {
          return gk_worker_goal_outputs(h, goal.id, b, c, l);
        },
        "gk_worker_goal_outputs");
  }

  /// The worker's counts (checks nothing; violations are counted).
  [[nodiscard]] Audit audit() const {
    Audit a{};
    detail::check(gk_worker_audit(handle_, &a), "gk_worker_audit");
    return a;
  }

  /// The descriptor of WAIT events (an eventfd), for the host's poll loop.
  [[nodiscard]] int fd() const {
    std::int32_t fd = -1;
    detail::check(gk_worker_fd(handle_, &fd), "gk_worker_fd");
    return fd;
  }

  /// Drains the diagnostics log, e.g. "goal 3 waits for /s/x.lock held by
  /// pid 123 (other process)".
  [[nodiscard]] std::vector<std::string> take_log() {
    gk_worker h = handle_;
    return detail::read_list(
        [h](char *b, std::size_t c, std::size_t *l) {
          return gk_worker_take_log(h, b, c, l);
        },
        "gk_worker_take_log");
  }

  /// Drains the diagnostics log as structured records, oldest first (the
  /// same log as take_log(): a record taken by either is gone for both).
  [[nodiscard]] std::vector<LogRecord> take_log_records() {
    std::vector<LogRecord> out;
    gk_log_record batch[32];
    for (;;) {
      std::size_t n = 0;
      detail::check(gk_worker_take_log_records(handle_, batch, std::size(batch), &n),
                    "gk_worker_take_log_records");
      for (std::size_t i = 0; i < n; i++)
        out.push_back(LogRecord::from_c(batch[i]));
      if (n < std::size(batch))
        return out;
    }
  }

  /// The raw handle (0 once closed); still owned by this object.
  [[nodiscard]] gk_worker handle() const noexcept { return handle_; }

  /// Gives up ownership of the raw handle without freeing it. Predicates
  /// set through this object die with it, so they are reset to the
  /// library's defaults first.
  [[nodiscard]] gk_worker into_raw() noexcept {
    if (valid_)
      (void)gk_worker_set_valid_path(handle_, nullptr, nullptr);
    if (cached_)
      (void)gk_worker_set_cached_failure(handle_, nullptr, nullptr);
    valid_.reset();
    cached_.reset();
    return std::exchange(handle_, 0);
  }

  explicit operator bool() const noexcept { return handle_ != 0; }

private:
  explicit BasicWorker(gk_worker h) noexcept : handle_(h) {}

  static std::int32_t trampoline(void *data, const char *path) noexcept {
    try {
      return (*static_cast<PathPredicate *>(data))(path) ? 1 : 0;
    } catch (...) {
      return -1;
    }
  }

  void set_predicate(std::unique_ptr<PathPredicate> &slot, PathPredicate f,
                     bool valid) {
    std::unique_ptr<PathPredicate> next;
    if (f)
      next = std::make_unique<PathPredicate>(std::move(f));
    gk_path_predicate fn = next ? &BasicWorker::trampoline : nullptr;
    gk_status s = valid ? gk_worker_set_valid_path(handle_, fn, next.get())
                        : gk_worker_set_cached_failure(handle_, fn, next.get());
    detail::check(s, valid ? "gk_worker_set_valid_path"
                           : "gk_worker_set_cached_failure");
    slot = std::move(next); // the library no longer uses the old one
  }

  void safety_net_free() noexcept {
    gk_worker h = std::exchange(handle_, 0);
    if (h == 0)
      return;
    gk_audit a{};
    bool audited = gk_worker_audit(h, &a) == GK_OK;
    gk_status s = gk_worker_free(h);
    // Stack unwinding abandons the worker's goals on purpose: not reported.
    if (s == GK_ERROR_STALE_HANDLE || s == GK_ERROR_WRONG_PROCESS ||
        std::uncaught_exceptions() > 0)
      return;
    if (s != GK_OK) {
      detail::report_safety_net("worker", h, gk_last_error_message());
    } else if (audited && (a.finished != a.goals || a.locks_held != 0)) {
      char detail_text[160];
      std::snprintf(detail_text, sizeof detail_text,
                    "%llu unfinished goal(s) cancelled, %llu lock(s) released",
                    static_cast<unsigned long long>(a.goals - a.finished),
                    static_cast<unsigned long long>(a.locks_held));
      detail::report_safety_net("worker", h, detail_text);
    }
  }

  gk_worker handle_ = 0;
  std::unique_ptr<PathPredicate> valid_, cached_;
  /// Reused buffers of next_events() and report_many().
  std::vector<gk_event> events_;
  std::vector<gk_report> reports_;
};

/// A worker whose host data per goal is the raw 64-bit tag.
using Worker = BasicWorker<>;

/// A batch of goals for a Worker.
using GoalBatch = BasicGoalBatch<std::uint64_t>;


} // namespace goalkeeper

namespace std {
template <> struct is_error_code_enum<goalkeeper::errc> : true_type {};
template <> struct hash<goalkeeper::Goal> {
  size_t operator()(goalkeeper::Goal g) const noexcept { return hash<uint64_t>()(g.id); }
};
} // namespace std

#endif /* C++17 */
#endif /* GOALKEEPER_HPP */
