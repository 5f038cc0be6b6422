// Every function of the C ABI, called through goalkeeper.hpp, with its
// error paths: stale handles, double release, relative and malformed paths,
// timeouts, self-locks, fork children, the safety net. The few edge cases
// the wrapper cannot produce (NULL pointers, short buffers) are called on
// the raw C functions and their statuses mapped through the wrapper.
//
// Usage: api_test <store-dir>
#include "harness.hh"

#include <goalkeeper.hpp>

#include <array>
#include <set>

using namespace harness;
namespace gk = goalkeeper;

namespace {

std::string g_store;
std::string sp(const std::string &name) { return g_store + "/" + name; }
bool exists(const std::string &p) {
  struct stat st;
  return lstat(p.c_str(), &st) == 0;
}

/// Runs `f`, which must throw gk::error with status `want`; returns the error's what().
template <class F> std::string expect_error(gk::errc want, F f, const char *what) {
  try {
    f();
  } catch (const gk::error &e) {
    CHECK(e.status() == want, "%s: expected %s, got %s (%s)", what,
          gk::status_name(want), gk::status_name(e.status()), e.what());
    CHECK(e.code() == want, "%s: error_code comparison", what);
    CHECK(e.code().category() == gk::error_category(), "%s: category", what);
    CHECK(!e.message().empty(), "%s: the library's message is carried", what);
    return e.what();
  }
  die("%s: expected %s, nothing thrown", what, gk::status_name(want));
}

int g_safety_net_calls = 0;
std::string g_safety_net_what;
void count_safety_net(const char *what, std::uint64_t, const char *) noexcept {
  ++g_safety_net_calls;
  g_safety_net_what = what;
}

void test_versions_and_errors() {
  gk::check_abi();
  CHECK(gk::abi_version() == GK_ABI_VERSION, "abi");
  CHECK(!gk::version().empty() && gk::version().find('.') != std::string_view::npos,
        "version '%s'", std::string(gk::version()).c_str());
  CHECK(std::string(gk::status_name(gk::errc::busy)) == "GK_BUSY", "status name");
  CHECK(std::string(gk::status_name(gk::errc::panic)) == "GK_ERROR_PANIC", "status name");
  CHECK(std::string(gk::status_name(static_cast<gk::errc>(77))) == "GK_UNKNOWN_STATUS",
        "unknown status");
  std::error_code ec = gk::errc::timed_out;
  CHECK(ec.category().name() == std::string("goalkeeper"), "category name");
  CHECK(ec.message() == "GK_TIMED_OUT", "message %s", ec.message().c_str());
  CHECK(ec == gk::make_error_code(gk::errc::timed_out) && ec != gk::errc::busy,
        "comparisons");
  // The thread-local message follows the last call.
  (void)gk::held_count();
  CHECK(gk::last_error_message().empty(), "cleared after a success");
  std::string w = expect_error(
      gk::errc::invalid_path, [] { (void)gk::is_locked_by_me("relative/x"); },
      "relative path");
  CHECK(w.find("relative/x") != std::string::npos, "message names the path: %s", w.c_str());
  CHECK(w.find("gk_path_is_locked_by_me") != std::string::npos, "names the function");
  CHECK(w.find("[GK_ERROR_INVALID_PATH]") != std::string::npos, "names the status");
  CHECK(!gk::last_error_message().empty(), "set after a failure");
  log("versions and errors ok: goalkeeper %s ABI %u", std::string(gk::version()).c_str(),
      gk::abi_version());
}

void test_acquire_release() {
  const std::string a = sp("aaaa-a"), b = sp("bbbb-b"), c = sp("cccc-c");
  // vector<string>, with a duplicate and unsorted: merged and sorted.
  std::vector<std::string> v = {c, a, c};
  gk::LockSet s = gk::LockSet::acquire(v);
  CHECK(static_cast<bool>(s) && s.handle() != 0, "held");
  CHECK((s.paths() == std::vector<std::string>{a, c}), "paths sorted, deduplicated");
  s.check();
  CHECK(gk::is_locked_by_me(a) && gk::is_locked_by_me(c) && !gk::is_locked_by_me(b),
        "is_locked_by_me");
  CHECK(gk::held_count() == 2, "held_count %zu", gk::held_count());
  CHECK((gk::held_paths() == std::vector<std::string>{a, c}), "held_paths");
  // Release without deletion keeps the lock files.
  s.release();
  CHECK(!s && s.handle() == 0, "empty after release");
  CHECK(exists(a + ".lock") && exists(c + ".lock"), "lock files kept");
  CHECK(gk::held_count() == 0 && gk::held_paths().empty(), "nothing held");

  // try_acquire with a braced list, deletion on release.
  auto t = gk::LockSet::try_acquire({a, b});
  CHECK(t.has_value(), "try on free paths");
  t->set_deletion(true);
  t->release();
  CHECK(!exists(a + ".lock") && !exists(b + ".lock"), "lock files deleted");

  // acquire_for with a std::array<std::string_view> and std::set<std::string>.
  std::array<std::string_view, 2> arr = {a, b};
  auto f = gk::LockSet::acquire_for(arr, milliseconds(100));
  CHECK(f.has_value(), "acquire_for free");
  f->release();
  std::set<std::string> set = {b, c};
  auto z = gk::LockSet::acquire_for(set, milliseconds(0));
  CHECK(z.has_value(), "acquire_for 0 = try");
  z->release();

  // Packed, the batch entry point: forever, try, bounded.
  std::string packed = gk::pack({c, a});
  CHECK(packed.size() == a.size() + c.size() + 2, "packed layout");
  for (auto timeout : {gk::wait_forever, milliseconds(0), milliseconds(50)}) {
    auto p = gk::LockSet::acquire_packed(packed, gk::Backend::ofd, timeout);
    CHECK(p.has_value(), "packed acquire (%lld)", static_cast<long long>(timeout.count()));
    CHECK((p->paths() == std::vector<std::string>{a, c}), "packed paths");
    p->release();
  }
  // The flock backend, on other paths (never mixed on one store path).
  auto fl = gk::LockSet::try_acquire({sp("ffff-flock")}, gk::Backend::flock);
  CHECK(fl.has_value(), "flock backend");
  fl->release();

  // A raw handle, adopted and given back.
  gk::LockSet r = gk::LockSet::acquire({a});
  gk_lockset raw = r.into_raw();
  CHECK(!r && raw != 0, "into_raw");
  gk::LockSet back = gk::LockSet::adopt(raw);
  back.release();
  log("acquire/release ok");
}

void test_error_paths() {
  const std::string a = sp("aaaa-err");
  // Stale handles and double release.
  gk::LockSet s = gk::LockSet::acquire({a});
  gk_lockset h = s.handle();
  s.release();
  expect_error(gk::errc::stale_handle, [&] { s.release(); }, "double release (wrapper)");
  expect_error(gk::errc::stale_handle, [&] { gk::LockSet::adopt(h).release(); },
               "double release of the raw handle");
  gk::LockSet stale = gk::LockSet::adopt(h);
  expect_error(gk::errc::stale_handle, [&] { stale.check(); }, "check on a stale handle");
  expect_error(gk::errc::stale_handle, [&] { stale.set_deletion(true); }, "set_deletion stale");
  expect_error(gk::errc::stale_handle, [&] { (void)stale.paths(); }, "paths stale");
  std::error_code ec;
  stale.release(ec);
  CHECK(ec == gk::errc::stale_handle, "release(ec) reports: %s", ec.message().c_str());
  gk::LockSet moved_from;
  expect_error(gk::errc::stale_handle, [&] { moved_from.check(); }, "empty LockSet");
  expect_error(gk::errc::stale_handle,
               [] { gk::LockSet::adopt((0x57ull << 56) | (1ull << 32)).release(); },
               "a worker-kind handle used as a lock set");
  expect_error(gk::errc::stale_handle,
               [] { gk::LockSet::adopt((0x4cull << 56) | (9ull << 32) | 4242).check(); },
               "a forged handle");

  // Malformed paths and arguments.
  std::string w = expect_error(gk::errc::invalid_path,
                               [] { (void)gk::LockSet::try_acquire({"relative/p"}); },
                               "relative path");
  CHECK(w.find("relative/p") != std::string::npos, "%s", w.c_str());
  expect_error(gk::errc::invalid_path, [&] { (void)gk::LockSet::acquire({g_store + "/../x"}); },
               "'..' component");
  expect_error(gk::errc::invalid_path, [] { (void)gk::LockSet::acquire({"/"}); }, "the root");
  expect_error(gk::errc::invalid_path, [] { (void)gk::LockSet::acquire({""}); }, "empty path");
  std::string with_nul = a + std::string("\0x", 2);
  expect_error(gk::errc::invalid_path, [&] { (void)gk::LockSet::acquire({with_nul}); },
               "embedded NUL (refused by the wrapper)");
  expect_error(gk::errc::invalid_path, [&] { (void)gk::pack({with_nul}); }, "pack with NUL");
  expect_error(gk::errc::invalid_path,
               [&] { (void)gk::LockSet::acquire({"/" + std::string(5000, 'x')}); },
               "longer than PATH_MAX");
  expect_error(gk::errc::name_too_long,
               [&] { (void)gk::LockSet::acquire({sp(std::string(300, 'n'))}); },
               "a component longer than NAME_MAX");
  expect_error(gk::errc::invalid_argument,
               [] { (void)gk::LockSet::acquire(std::vector<std::string>{}); }, "empty set");
  expect_error(gk::errc::invalid_argument,
               [&] { (void)gk::LockSet::acquire({a}, static_cast<gk::Backend>(7)); },
               "unknown backend");
  expect_error(gk::errc::invalid_argument,
               [&] { (void)gk::LockSet::acquire_for({a}, milliseconds(-5)); },
               "negative timeout");
  expect_error(gk::errc::invalid_argument,
               [&] { (void)gk::LockSet::acquire_packed(a); }, "packed list without a NUL");
  expect_error(gk::errc::invalid_argument,
               [&] { (void)gk::LockSet::acquire_packed(""); }, "empty packed list");
  expect_error(gk::errc::invalid_path,
               [&] { (void)gk::LockSet::acquire_packed(a + std::string("\0\0", 2)); },
               "packed list with an empty item");

  // A symlink as lock file is never followed.
  std::string ln = sp("llll-link");
  CHECK(symlink((g_store + "/elsewhere").c_str(), (ln + ".lock").c_str()) == 0, "symlink");
  expect_error(gk::errc::symlink, [&] { (void)gk::LockSet::acquire({ln}); }, "symlink");
  CHECK(!exists(g_store + "/elsewhere"), "the link target was not created");

  // A world-writable store directory without the sticky bit is refused.
  std::string insecure = g_store + "/insecure";
  CHECK(mkdir(insecure.c_str(), 0700) == 0 && chmod(insecure.c_str(), 0777) == 0, "mkdir");
  expect_error(gk::errc::insecure_store, [&] { (void)gk::LockSet::acquire({insecure + "/p"}); },
               "insecure store");

  // Self-locks (G5): reported at once, never re-granted, never a self-block.
  gk::LockSet held = gk::LockSet::acquire({a});
  expect_error(gk::errc::held_by_this_process, [&] { (void)gk::LockSet::try_acquire({a}); },
               "try on a self-held path");
  expect_error(gk::errc::held_by_this_process, [&] { (void)gk::LockSet::acquire({a}); },
               "blocking acquire on a self-held path returns at once");
  expect_error(gk::errc::held_by_this_process,
               [&] { (void)gk::LockSet::acquire_for({sp("zzzz-other"), a}, milliseconds(50)); },
               "bounded acquire on a self-held path");
  CHECK(!gk::is_locked_by_me(sp("zzzz-other")), "nothing else taken");
  held.release();
  CHECK(gk::held_count() == 0, "nothing held");
  log("error paths ok");
}

void test_raw_edges() {
  // What the wrapper never does: NULL pointers and short buffers.
  gk_lockset h = 1;
  const char *one[] = {"/tmp/x"};
  CHECK(gk_lockset_try_acquire(nullptr, 1, GK_BACKEND_OFD, &h) == GK_ERROR_NULL_POINTER,
        "NULL paths");
  CHECK(h == 0, "*out zeroed on failure");
  CHECK(gk_lockset_acquire(one, 1, GK_BACKEND_OFD, nullptr) == GK_ERROR_NULL_POINTER,
        "NULL out");
  CHECK(gk_lockset_acquire_timeout(one, 1, GK_BACKEND_OFD, 1, nullptr) == GK_ERROR_NULL_POINTER,
        "NULL out (timeout)");
  CHECK(gk_lockset_acquire_packed(nullptr, 3, GK_BACKEND_OFD, 0, &h) == GK_ERROR_NULL_POINTER,
        "NULL packed");
  bool b = false;
  CHECK(gk_path_is_locked_by_me(nullptr, &b) == GK_ERROR_NULL_POINTER, "NULL path");
  CHECK(gk_held_count(nullptr) == GK_ERROR_NULL_POINTER, "NULL count");
  expect_error(gk::errc::null_pointer,
               [] { gk::detail::check(gk_held_count(nullptr), "gk_held_count"); },
               "mapped through the wrapper");

  gk::LockSet s = gk::LockSet::acquire({sp("aaaa-buf"), sp("bbbb-buf")});
  size_t len = 0;
  CHECK(gk_lockset_paths(s.handle(), nullptr, 0, &len) == GK_ERROR_BUFFER_TOO_SMALL, "size query");
  CHECK(len == sp("aaaa-buf").size() + sp("bbbb-buf").size() + 2, "needed size %zu", len);
  char small[4];
  CHECK(gk_lockset_paths(s.handle(), small, sizeof small, &len) == GK_ERROR_BUFFER_TOO_SMALL,
        "short buffer");
  CHECK(gk_held_paths(nullptr, 0, &len) == GK_ERROR_BUFFER_TOO_SMALL, "held size query");
  CHECK(gk_held_paths(small, sizeof small, nullptr) == GK_ERROR_NULL_POINTER, "NULL len_out");
  s.release();
  log("raw edges ok");
}

void test_timeout_and_busy() {
  // Another process holds T; this one tries, times out, then blocks until
  // the other process lets go.
  const std::string T = sp("tttt-timeout");
  Bus up;
  Gate let_go;
  pid_t child = fork();
  CHECK(child >= 0, "fork");
  if (child == 0) {
    up.keep_write();
    let_go.forget_write();
    gk::LockSet s = gk::LockSet::acquire({T});
    up.send("held");
    let_go.wait(milliseconds(10000), "let go");
    s.release();
    _exit(0);
  }
  up.keep_read();
  up.wait_for([](const std::string &l) { return l == "held"; }, milliseconds(10000),
              "the child to hold T");
  CHECK(!gk::LockSet::try_acquire({T}), "busy: another process holds T");
  CHECK(!gk::LockSet::try_acquire({sp("aaaa-first"), T}), "busy at path 2 of 2");
  CHECK(!gk::is_locked_by_me(sp("aaaa-first")), "path 1 given back (L8)");
  auto t0 = clock::now();
  CHECK(!gk::LockSet::acquire_for({T}, milliseconds(60)), "timed out");
  auto waited = clock::now() - t0;
  CHECK(waited >= milliseconds(60) && waited < milliseconds(5000), "waited %lld ms",
        static_cast<long long>(std::chrono::duration_cast<milliseconds>(waited).count()));
  CHECK(!gk::LockSet::acquire_packed(gk::pack({T}), gk::Backend::ofd, milliseconds(0)),
        "packed try: busy");
  CHECK(!gk::LockSet::acquire_packed(gk::pack({T}), gk::Backend::ofd, milliseconds(30)),
        "packed bounded: timed out");
  CHECK(gk::held_count() == 0, "nothing held after timeouts");
  let_go.open();
  gk::LockSet s = gk::LockSet::acquire({T}); // blocks until the child releases
  s.release();
  int st = wait_child(child, milliseconds(10000), "holder");
  CHECK(exited_ok(st), "holder: %s", describe_status(st).c_str());
  log("timeout and busy ok");
}

void test_fork_child() {
  // A fork child inherits a copy of the LockSet object but must never use
  // (or release) the parent's locks.
  const std::string F = sp("ffff-fork");
  gk::LockSet s = gk::LockSet::acquire({F});
  pid_t child = fork();
  CHECK(child >= 0, "fork");
  if (child == 0) {
    CHECK(!gk::is_locked_by_me(F), "the child does not hold the parent's lock");
    CHECK(gk::held_count() == 0, "the child's registry is empty");
    CHECK(!gk::LockSet::try_acquire({F}), "the parent's lock excludes the child");
    expect_error(gk::errc::wrong_process, [&] { s.release(); },
                 "releasing the parent's lock set in the child");
    _exit(0);
  }
  int st = wait_child(child, milliseconds(10000), "fork child");
  CHECK(exited_ok(st), "fork child: %s", describe_status(st).c_str());
  CHECK(gk::is_locked_by_me(F), "the parent still holds F");
  s.check();
  s.release();
  log("fork child ok");
}

void test_safety_net() {
  auto previous = gk::set_safety_net_handler(&count_safety_net);
  const std::string a = sp("aaaa-net"), b = sp("bbbb-net");
  {
    gk::LockSet forgotten = gk::LockSet::acquire({a});
  } // destructor: released, and reported
  CHECK(g_safety_net_calls == 1 && g_safety_net_what == "lock set", "reported");
  CHECK(!gk::is_locked_by_me(a) && exists(a + ".lock"), "released without deletion");
  gk::LockSet x = gk::LockSet::acquire({a});
  x = gk::LockSet::acquire({b}); // the old set is released by the assignment
  CHECK(g_safety_net_calls == 2, "move-assignment over a live set is reported");
  CHECK(!gk::is_locked_by_me(a) && gk::is_locked_by_me(b), "x now holds b only");
  gk::LockSet y = std::move(x);
  CHECK(!x && y && g_safety_net_calls == 2, "a move is not a release");
  y.release();
  {
    gk::LockSet released = gk::LockSet::acquire({a});
    released.release();
  }
  CHECK(g_safety_net_calls == 2, "an explicit release leaves nothing to the destructor");
  gk::set_safety_net_handler(previous);
  log("safety net ok");
}

} // namespace

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: api_test <store-dir>");
  g_store = argv[1];
  test_versions_and_errors();
  test_acquire_release();
  test_error_paths();
  test_raw_edges();
  test_timeout_and_busy();
  test_fork_child();
  test_safety_net();
  CHECK(gk::held_count() == 0, "nothing held at the end");
  log("api_test: all passed");
  return 0;
}
