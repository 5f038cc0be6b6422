// Every function of the C ABI, called through goalkeeper.hpp, with its
// error paths (the batch calls and BasicWorker<T>'s host data included): stale handles, double release, relative and malformed paths,
// timeouts, self-locks, fork children, the safety net. The few edge cases
// the wrapper cannot produce (NULL pointers, short buffers) are called on
// the raw C functions and their statuses mapped through the wrapper.
//
// Usage: api_test <store-dir>
#include "harness.hh"

#include <goalkeeper.hpp>

#include <array>
#include <map>
#include <set>

using namespace harness;
namespace gk = goalkeeper;

// The headers must not put unprefixed names into the global namespace: a
// daemon including them has its own Built, Failed, TimedOut... (This fails
// to compile if the generated header leaks such enumerators again.)
[[maybe_unused]] static const int Built = 1, Substituted = 2, AlreadyValid = 3, Failed = 4,
                                  TimedOut = 5, CachedFailure = 6, DependencyFailed = 7,
                                  Cancelled = 8, Outcome = 9;

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
  CHECK(ec.message() == "the wait timed out", "message() is text: %s", ec.message().c_str());
  CHECK(ec == gk::make_error_code(gk::errc::timed_out) && ec != gk::errc::busy,
        "comparisons");
  // Portable conditions where one fits; none where none does.
  CHECK(gk::make_error_code(gk::errc::permission_denied) == std::errc::permission_denied &&
            ec == std::errc::timed_out &&
            gk::make_error_code(gk::errc::busy) == std::errc::resource_unavailable_try_again &&
            gk::make_error_code(gk::errc::held_by_this_process) ==
                std::errc::resource_deadlock_would_occur &&
            gk::make_error_code(gk::errc::no_space) == std::errc::no_space_on_device &&
            gk::make_error_code(gk::errc::invalid_path) == std::errc::invalid_argument,
        "codes compare equal to the std::errc conditions that fit");
  CHECK(gk::make_error_code(gk::errc::permission_denied) != std::errc::no_space_on_device &&
            gk::make_error_code(gk::errc::insecure_store) != std::errc::permission_denied &&
            gk::make_error_code(gk::errc::insecure_store).default_error_condition().category() ==
                gk::error_category(),
        "and to no other");
  for (int v : {0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30,
                31, 40, 41, 42, 43, 44, 45, 99}) {
    std::string m = gk::error_category().message(v);
    CHECK(!m.empty() && m.find("GK_") == std::string::npos && m.find("unknown") == std::string::npos,
          "status %d has a message in words: '%s'", v, m.c_str());
  }
  // The thread-local message follows the last call.
  (void)gk::held_count();
  CHECK(gk::last_error_message().empty(), "cleared after a success");
  std::string w = expect_error(
      gk::errc::invalid_path, [] { (void)gk::is_locked_by_me("relative/x"); },
      "relative path");
  CHECK(w.find("relative/x") != std::string::npos, "message names the path: %s", w.c_str());
  CHECK(w.find("gk_path_is_locked_by_me") != std::string::npos, "names the function");
  CHECK(w.find("[GK_ERROR_INVALID_PATH]") != std::string::npos, "names the status");
  CHECK(w.find("GK_ERROR_INVALID_PATH") == w.rfind("GK_ERROR_INVALID_PATH"),
        "names it once: %s", w.c_str());
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
  std::string twice = expect_error(gk::errc::stale_handle, [&] { s.release(); },
                                   "double release (wrapper)");
  CHECK(twice.find("already released") != std::string::npos, "says so: %s", twice.c_str());
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

void test_lock_wait() {
  const std::string a = sp("aaaa-wait");
  gk::LockWait none;
  CHECK(!none && none.fd() == -1, "an empty wait has no descriptor");
  gk::LockSet s = gk::LockSet::acquire({a});
  std::string w = expect_error(gk::errc::held_by_this_process, [&] { gk::LockWait x({a}); },
                               "a wait for a path this process holds");
  CHECK(w.find(a) != std::string::npos, "names the path: %s", w.c_str());
  s.release();
  gk::LockWait free_now({a});
  pollfd pfd{free_now.fd(), POLLIN, 0};
  CHECK(free_now && poll(&pfd, 1, 10000) == 1, "a free path: readable");
  gk::LockWait moved = std::move(free_now);
  CHECK(!free_now && moved.fd() == pfd.fd, "moves carry the wait");
  expect_error(gk::errc::invalid_path, [] { gk::LockWait x({"relative"}); }, "relative path");
  log("lock wait ok");
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
  // Stack unwinding releases quietly: that is what RAII is for.
  bool caught = false;
  try {
    gk::LockSet held = gk::LockSet::acquire({a});
    gk::Worker w;
    (void)w.add_goal(gk::GoalKind::build, {b});
    (void)w.next_event(); // the goal runs, holding b
    throw std::runtime_error("a build error");
  } catch (const std::runtime_error &) {
    caught = true;
  }
  CHECK(caught && !gk::is_locked_by_me(a) && !gk::is_locked_by_me(b),
        "unwinding released the set and the worker's goal");
  CHECK(g_safety_net_calls == 2, "and reported nothing (%d)", g_safety_net_calls);
  gk::set_safety_net_handler(previous);
  log("safety net ok");
}


// ---------------------------------------------------------------------------
// Worker

/// Runs the pull loop without builders: every RUN is "built" at once after
/// writing the outputs. Returns goal -> outcome for every RUN/FINISHED.
std::map<gk_goal, gk::Outcome> drive(gk::Worker &w, int max_steps = 200) {
  std::map<gk_goal, gk::Outcome> seen;
  for (int step = 0; step < max_steps; ++step) {
    gk::Event ev = w.next_event();
    switch (ev.kind) {
    case gk::Event::Kind::run:
      for (auto &o : w.outputs(ev.goal))
        std::ofstream(o) << "x";
      w.report(ev.goal, gk::Outcome::built);
      seen[ev.goal.id] = w.result(ev.goal).outcome;
      break;
    case gk::Event::Kind::finished:
      seen[ev.goal.id] = ev.outcome;
      break;
    case gk::Event::Kind::wait: {
      pollfd pfd{ev.fd, POLLIN, 0};
      CHECK(poll(&pfd, 1, ev.poll_timeout()) >= 0, "poll");
      break;
    }
    case gk::Event::Kind::done:
      return seen;
    }
  }
  die("the worker did not reach DONE in %d steps", max_steps);
}

void test_worker_basics() {
  CHECK(std::string(gk::outcome_name(gk::Outcome::already_valid)) == "already-valid",
        "outcome name");
  CHECK(std::string(gk::outcome_name(gk::Outcome::none)) == "none", "none");
  CHECK(std::string(gk::outcome_name(static_cast<gk::Outcome>(99))) == "unknown", "unknown");
  CHECK(gk::is_success(gk::Outcome::already_valid) && !gk::is_success(gk::Outcome::cancelled),
        "is_success");

  gk::WorkerOptions opts;
  opts.max_jobs = 2;
  opts.recheck_interval = milliseconds(20);
  gk::Worker w(opts);
  int fd = w.fd();
  CHECK(fd >= 0 && fcntl(fd, F_GETFD) != -1, "fd is open");
  CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "fd is close-on-exec");

  const std::string a = sp("wa"), b = sp("wb"), b2 = sp("wb-doc"), c = sp("wc");
  gk::Goal ga = w.add_goal(gk::GoalKind::build, {a});
  gk::Goal gb = w.add_goal(gk::GoalKind::build, std::vector<std::string>{b2, b});
  gk::Goal gc = w.add_goal_packed(gk::GoalKind::build, gk::pack({c}), gk::BuildMode::normal);
  gk::Goal gp = w.add_goal_packed(gk::GoalKind::plain, "");
  gk::Goal gs = w.add_goal(gk::GoalKind::substitute, {sp("ws")});
  CHECK(ga && gb && gc && gp && gs && ga != gb, "goal ids");
  CHECK(w.add_goal(gk::GoalKind::build, {b, b2}) == gb, "the same outputs give the same goal (S9)");
  auto outs = w.outputs(gb);
  CHECK((std::set<std::string>(outs.begin(), outs.end()) == std::set<std::string>{b, b2}) &&
            outs.size() == 2,
        "outputs (sorted by lock-file name: wb-doc.lock < wb.lock)");
  CHECK(w.outputs(gp).empty(), "a plain goal has no outputs");
  w.add_dependency(gc, ga);
  w.add_dependency(gc, gb);
  w.add_dependency(gp, gc);
  w.add_dependency(gp, gc); // the same edge twice is harmless
  gk::GoalResult r = w.result(gc);
  CHECK(r.state == gk::GoalState::waiting_deps && r.outcome == gk::Outcome::none &&
            r.kind == gk::GoalKind::build && r.mode == gk::BuildMode::normal,
        "result before running");

  expect_error(gk::errc::invalid_argument, [&] { (void)w.add_goal(gk::GoalKind::build, {b}); },
               "partial overlap with another goal's outputs");
  expect_error(gk::errc::invalid_argument,
               [&] { (void)w.add_goal(gk::GoalKind::build, std::vector<std::string>{}); },
               "a build goal without outputs");
  expect_error(gk::errc::invalid_argument,
               [&] { (void)w.add_goal(gk::GoalKind::substitute, {sp("s1"), sp("s2")}); },
               "a substitute goal with two outputs");
  expect_error(gk::errc::invalid_path,
               [&] { (void)w.add_goal(gk::GoalKind::build, {"relative/out"}); },
               "a relative output");
  expect_error(gk::errc::invalid_argument,
               [&] { (void)w.add_goal(static_cast<gk::GoalKind>(9), {sp("k")}); },
               "an unknown goal kind");
  expect_error(gk::errc::invalid_argument,
               [&] { (void)w.add_goal(gk::GoalKind::build, {sp("m")}, static_cast<gk::BuildMode>(7)); },
               "an unknown build mode");
  expect_error(gk::errc::invalid_argument, [&] { w.add_dependency(ga, ga); }, "self-dependency");
  {
    gk::WorkerOptions bad;
    bad.recheck_interval = milliseconds(-1);
    expect_error(gk::errc::invalid_argument, [&] { gk::Worker x(bad); }, "negative recheck");
    bad.recheck_interval = milliseconds(0);
    bad.backend = static_cast<gk::Backend>(5);
    expect_error(gk::errc::invalid_argument, [&] { gk::Worker x(bad); }, "unknown backend");
  }
  expect_error(gk::errc::stale_handle, [&] { w.add_dependency(ga, gk::Goal{12345}); },
               "an unknown goal id");
  expect_error(gk::errc::stale_handle, [&] { (void)w.result(gk::Goal{0}); }, "goal 0");
  expect_error(gk::errc::invalid_state, [&] { w.report(ga, gk::Outcome::built); },
               "report on a goal that is not running");
  {
    gk::Worker other;
    gk::Goal foreign = other.add_goal(gk::GoalKind::build, {sp("other")});
    (void)foreign;
    expect_error(gk::errc::stale_handle, [&] { (void)w.result(gk::Goal{foreign.id + 1000}); },
                 "a goal id out of range");
    other.close();
  }

  // The substitute goal: run, then reported substituted.
  gk::Event ev = w.next_event();
  std::set<gk_goal> ran;
  std::map<gk_goal, gk::Outcome> outcomes;
  int guard = 0;
  while (ev.kind != gk::Event::Kind::done) {
    CHECK(++guard < 200, "no progress");
    if (ev.kind == gk::Event::Kind::run) {
      CHECK(ran.insert(ev.goal.id).second, "each goal runs once");
      gk::Audit au = w.audit();
      CHECK(au.slots_used <= 2, "slots within max_jobs (S6)");
      if (ev.goal == gs) {
        CHECK(ev.goal_kind == gk::GoalKind::substitute, "goal kind in the event");
        expect_error(gk::errc::invalid_argument, [&] { w.report(gs, gk::Outcome::already_valid); },
                     "already-valid is not reportable");
        std::ofstream(sp("ws")) << "s";
        w.report(gs, gk::Outcome::substituted);
      } else if (ev.goal == gp) {
        CHECK(ev.goal_kind == gk::GoalKind::plain, "plain");
        w.report(gp, gk::Outcome::built);
      } else {
        CHECK(w.result(ev.goal).state == gk::GoalState::running, "running");
        for (auto &o : w.outputs(ev.goal)) {
          CHECK(gk::is_locked_by_me(o), "RUN holds the output locks");
          std::ofstream(o) << "x";
        }
        w.report(ev.goal, gk::Outcome::built);
        for (auto &o : w.outputs(ev.goal)) {
          CHECK(!gk::is_locked_by_me(o), "released at completion (G1)");
          CHECK(!exists(o + ".lock"), "deleted: the output is valid");
        }
      }
      outcomes[ev.goal.id] = w.result(ev.goal).outcome;
    } else if (ev.kind == gk::Event::Kind::finished) {
      outcomes[ev.goal.id] = ev.outcome;
    } else if (ev.kind == gk::Event::Kind::wait) {
      CHECK(ev.fd == fd, "WAIT names the worker's fd");
      pollfd pfd{ev.fd, POLLIN, 0};
      CHECK(poll(&pfd, 1, ev.poll_timeout()) >= 0, "poll");
    }
    ev = w.next_event();
  }
  CHECK(outcomes[gs.id] == gk::Outcome::substituted && outcomes[ga.id] == gk::Outcome::built &&
            outcomes[gb.id] == gk::Outcome::built && outcomes[gc.id] == gk::Outcome::built &&
            outcomes[gp.id] == gk::Outcome::built,
        "every goal succeeded");
  gk::Audit au = w.audit();
  CHECK(au.goals == 5 && au.finished == 5 && au.succeeded == 5 && au.failed == 0 &&
            au.locks_held == 0 && au.locks_held_by_finished == 0 && au.slots_used == 0 &&
            au.max_jobs == 2 && au.violations == 0 && au.checks > 0,
        "audit after DONE");
  expect_error(gk::errc::invalid_state, [&] { w.cancel(ga); }, "cancel a finished goal");
  expect_error(gk::errc::invalid_state, [&] { w.add_dependency(ga, gb); },
               "add a dependency to a finished goal");
  gk::Goal again = w.add_goal(gk::GoalKind::build, {a});
  CHECK(again == ga && w.result(again).outcome == gk::Outcome::built,
        "results outlive execution");
  // Logs drain.
  (void)w.take_log();
  CHECK(w.take_log().empty(), "take_log drains");
  w.close();
  expect_error(gk::errc::stale_handle, [&] { w.close(); }, "double close");
  expect_error(gk::errc::stale_handle, [&] { (void)w.next_event(); }, "a closed worker");
  expect_error(gk::errc::stale_handle, [&] { (void)w.fd(); }, "fd of a closed worker");
  log("worker basics ok");
}

void test_worker_failures_and_predicates() {
  // Failure without keep-going cancels what is not running; dependents fail.
  {
    gk::Worker w;
    gk::Goal f = w.add_goal(gk::GoalKind::build, {sp("f1")});
    gk::Goal dep = w.add_goal(gk::GoalKind::build, {sp("f2")});
    gk::Goal other = w.add_goal(gk::GoalKind::build, {sp("f3")});
    w.add_dependency(dep, f);
    gk::Event ev = w.next_event();
    CHECK(ev.kind == gk::Event::Kind::run && ev.goal == f, "f runs first");
    w.report(f, gk::Outcome::failed); // no output written
    CHECK(!gk::is_locked_by_me(sp("f1")) && exists(sp("f1") + ".lock"),
          "released without deletion after a failure");
    auto seen = drive(w);
    CHECK(w.result(f).outcome == gk::Outcome::failed, "failed");
    CHECK(w.result(dep).outcome == gk::Outcome::dependency_failed, "dependency failed");
    CHECK(w.result(other).outcome == gk::Outcome::cancelled, "cancelled (no keep-going)");
    CHECK(w.audit().locks_held == 0, "nothing held");
    w.close();
  }
  // keep-going: the independent goal still builds; a builder that claims
  // success without producing its output is recorded as failed.
  {
    gk::WorkerOptions o;
    o.keep_going = true;
    gk::Worker w(o);
    gk::Goal liar = w.add_goal(gk::GoalKind::build, {sp("k1")});
    gk::Goal indep = w.add_goal(gk::GoalKind::build, {sp("k2")});
    gk::Goal timeout = w.add_goal(gk::GoalKind::build, {sp("k3")});
    for (;;) {
      gk::Event ev = w.next_event();
      if (ev.kind == gk::Event::Kind::done)
        break;
      if (ev.kind != gk::Event::Kind::run)
        continue;
      if (ev.goal == liar) {
        w.report(liar, gk::Outcome::built); // but k1 does not exist
      } else if (ev.goal == timeout) {
        w.report(timeout, gk::Outcome::timed_out);
      } else {
        std::ofstream(sp("k2")) << "x";
        w.report(ev.goal, gk::Outcome::built);
      }
    }
    CHECK(w.result(liar).outcome == gk::Outcome::failed, "invalid output: failed");
    CHECK(w.result(indep).outcome == gk::Outcome::built, "keep-going built k2");
    CHECK(w.result(timeout).outcome == gk::Outcome::timed_out, "timed out");
    bool logged = false;
    for (auto &l : w.take_log())
      logged |= l.find("not valid") != std::string::npos;
    CHECK(logged, "the log says why k1 failed");
    w.close();
  }
  // Cancel: a running goal and its dependents.
  {
    gk::Worker w;
    gk::Goal x = w.add_goal(gk::GoalKind::build, {sp("c1")});
    gk::Goal y = w.add_goal(gk::GoalKind::build, {sp("c2")});
    w.add_dependency(y, x);
    gk::Event ev = w.next_event();
    CHECK(ev.kind == gk::Event::Kind::run && ev.goal == x, "x runs");
    CHECK(gk::is_locked_by_me(sp("c1")), "x holds its lock");
    w.cancel(x); // the host stopped x's builder
    CHECK(!gk::is_locked_by_me(sp("c1")), "cancel releases (G1)");
    ev = w.next_event();
    CHECK(ev.kind == gk::Event::Kind::finished && ev.goal == y &&
              ev.outcome == gk::Outcome::dependency_failed,
          "y: dependency failed");
    CHECK(w.next_event().kind == gk::Event::Kind::done, "done");
    CHECK(w.result(x).outcome == gk::Outcome::cancelled, "x cancelled");
    w.close();
  }
  // Predicates: validity, cached failure; exceptions are "no". (keep-going,
  // so that the cached failure does not cancel the rest.)
  {
    gk::WorkerOptions ko;
    ko.keep_going = true;
    gk::Worker w(ko);
    std::vector<std::string> asked;
    w.set_valid_path([&](std::string_view p) {
      asked.emplace_back(p);
      if (p == sp("p-throws"))
        throw std::runtime_error("predicate error");
      return p == sp("p-valid");
    });
    w.set_cached_failure([&](std::string_view p) { return p == sp("p-cached"); });
    gk::Goal v = w.add_goal(gk::GoalKind::build, {sp("p-valid")});
    gk::Goal cf = w.add_goal(gk::GoalKind::build, {sp("p-cached")});
    gk::Goal th = w.add_goal(gk::GoalKind::build, {sp("p-throws")});
    std::set<gk_goal> ran;
    for (;;) {
      gk::Event ev = w.next_event();
      if (ev.kind == gk::Event::Kind::done)
        break;
      if (ev.kind == gk::Event::Kind::run) {
        ran.insert(ev.goal.id);
        w.report(ev.goal, gk::Outcome::failed);
      } else if (ev.kind == gk::Event::Kind::wait) {
        die("nothing to wait for");
      }
    }
    CHECK(w.result(v).outcome == gk::Outcome::already_valid && !ran.count(v.id),
          "the host's validity predicate is used");
    CHECK(w.result(cf).outcome == gk::Outcome::cached_failure && !ran.count(cf.id),
          "cached failure");
    CHECK(ran.count(th.id), "a throwing predicate counts as 'not valid'");
    CHECK(!asked.empty(), "the predicate was asked");
    w.set_valid_path({}); // back to the default: the path exists
    w.set_cached_failure({});
    w.close();
  }
  // A dependency cycle is reported, never a hang.
  {
    gk::Worker w;
    gk::Goal p = w.add_goal(gk::GoalKind::build, {sp("cy1")});
    gk::Goal q = w.add_goal(gk::GoalKind::build, {sp("cy2")});
    w.add_dependency(p, q);
    w.add_dependency(q, p);
    std::string what = expect_error(gk::errc::scheduler_deadlock, [&] { (void)drive(w); },
                                    "a dependency cycle");
    CHECK(what.find("cy1") != std::string::npos, "the message names the goals: %s",
          what.c_str());
    w.close();
  }
  // A raw handle, adopted; a lock-set handle is not a worker.
  {
    gk::Worker w = gk::Worker::with_defaults();
    gk::Worker back = gk::Worker::adopt(w.into_raw());
    CHECK(!w && back, "into_raw / adopt");
    back.close();
    gk::LockSet s = gk::LockSet::acquire({sp("not-a-worker")});
    gk::Worker wrong = gk::Worker::adopt(s.handle());
    expect_error(gk::errc::stale_handle, [&] { (void)wrong.audit(); },
                 "a lock-set handle used as a worker");
    (void)wrong.into_raw();
    s.release();
  }
  log("worker failures and predicates ok");
}

void test_worker_foreign_wait_and_safety_net() {
  // S3 at the API level: another process holds the lock of an output that
  // then becomes valid; the waiting goal finishes without the lock.
  const std::string X = sp("xf");
  Bus up;
  Gate let_go;
  pid_t child = fork();
  CHECK(child >= 0, "fork");
  if (child == 0) {
    up.keep_write();
    let_go.forget_write();
    gk::LockSet s = gk::LockSet::acquire({X});
    up.send("held");
    let_go.wait(milliseconds(10000), "let go");
    s.release();
    _exit(0);
  }
  up.keep_read();
  up.wait_for([](const std::string &l) { return l == "held"; }, milliseconds(10000), "held");
  gk::WorkerOptions o;
  o.recheck_interval = milliseconds(10);
  gk::Worker w(o);
  gk::Goal g = w.add_goal(gk::GoalKind::build, {X});
  gk::Event ev = w.next_event();
  CHECK(ev.kind == gk::Event::Kind::wait && ev.fd == w.fd() && ev.timeout,
        "WAIT with a re-check timeout while another process holds the lock");
  CHECK(w.result(g).state == gk::GoalState::waiting_lock, "waiting_lock");
  gk::Audit a = w.audit();
  CHECK(a.waiting_lock == 1 && a.foreign_waits == 1 && a.locks_held == 0,
        "waits in the kernel, holding nothing");
  std::ofstream(X) << "made by the other process"; // the output becomes valid
  for (int i = 0; i < 1000 && ev.kind == gk::Event::Kind::wait; ++i) {
    pollfd pfd{ev.fd, POLLIN, 0};
    CHECK(poll(&pfd, 1, ev.poll_timeout()) >= 0, "poll");
    ev = w.next_event();
  }
  CHECK(ev.kind == gk::Event::Kind::finished && ev.outcome == gk::Outcome::already_valid,
        "finished already valid while the other process still holds the lock");
  CHECK(lock_holder(X) == -1, "the other process still holds it");
  CHECK(w.audit().validity_rechecks >= 1, "through a validity re-check");
  CHECK(w.next_event().kind == gk::Event::Kind::done, "done");
  w.close();
  let_go.open();
  int st = wait_child(child, milliseconds(10000), "holder");
  CHECK(exited_ok(st), "holder: %s", describe_status(st).c_str());

  // legacy_hold reproduces #31785 on purpose (finished goals keep their
  // locks), and the ledger check of the very call that finished the goal
  // reports it (G6) instead of letting it pass silently.
  {
    gk::WorkerOptions lo;
    lo.legacy_hold = true;
    gk::Worker w2(lo);
    gk::Goal h = w2.add_goal(gk::GoalKind::build, {sp("held-after")});
    gk::Event e = w2.next_event();
    CHECK(e.kind == gk::Event::Kind::run && e.goal == h, "run");
    std::ofstream(sp("held-after")) << "x";
    std::string what = expect_error(gk::errc::invariant_violation,
                                    [&] { w2.report(h, gk::Outcome::built); },
                                    "a finished goal that keeps its lock");
    CHECK(what.find("held-after") != std::string::npos, "names the path: %s", what.c_str());
    CHECK(gk::is_locked_by_me(sp("held-after")), "legacy_hold: the lock outlives the goal");
    w2.close(); // the host abandoning the worker releases it
    CHECK(!gk::is_locked_by_me(sp("held-after")), "released by close()");
  }

  // A worker in a fork child belongs to the parent.
  {
    gk::Worker w3;
    pid_t c = fork();
    CHECK(c >= 0, "fork");
    if (c == 0) {
      expect_error(gk::errc::wrong_process, [&] { (void)w3.next_event(); },
                   "the parent's worker in a fork child");
      _exit(0);
    }
    int st3 = wait_child(c, milliseconds(10000), "fork child");
    CHECK(exited_ok(st3), "fork child: %s", describe_status(st3).c_str());
    w3.close();
  }

  // The destructor frees an abandoned worker, releases, and reports it.
  auto previous = gk::set_safety_net_handler(&count_safety_net);
  g_safety_net_calls = 0;
  {
    gk::Worker abandoned;
    gk::Goal r = abandoned.add_goal(gk::GoalKind::build, {sp("abandoned")});
    gk::Event e = abandoned.next_event();
    CHECK(e.kind == gk::Event::Kind::run && e.goal == r, "running");
    CHECK(gk::is_locked_by_me(sp("abandoned")), "held while running");
  } // no report(), no close(): the safety net
  CHECK(g_safety_net_calls == 1 && g_safety_net_what == "worker", "reported");
  CHECK(!gk::is_locked_by_me(sp("abandoned")), "released by the destructor");
  {
    gk::Worker tidy;
    (void)tidy.add_goal(gk::GoalKind::build, {sp("tidy")});
    (void)drive(tidy);
  } // every goal finished, nothing held: freeing it is ordinary cleanup
  CHECK(g_safety_net_calls == 1, "a finished worker's destructor reports nothing");
  gk::set_safety_net_handler(previous);
  log("worker foreign wait, legacy_hold, fork, safety net ok");
}

/// Structured log records: a wait on a lock set of this process names this
/// pid and the path; the hand-off says how long it waited; the records'
/// strings are copies that outlive the worker; the text log is the same log.
void test_worker_log_records() {
  const std::string p = sp("rrrr-records");
  gk::LockSet held = gk::LockSet::acquire({p});
  gk::Worker w;
  gk::Goal g = w.add_goal(gk::GoalKind::build, {p});
  gk::Event ev = w.next_event();
  CHECK(ev.kind == gk::Event::Kind::wait, "the goal waits for the lock set");
  auto before = std::chrono::steady_clock::now();
  std::vector<gk::LogRecord> recs = w.take_log_records();
  CHECK(recs.size() == 1 && recs[0].kind == gk::LogKind::waits_foreign, "one wait record");
  CHECK(std::string(gk::log_kind_name(recs[0].kind)) == "waits-foreign", "kind name");
  CHECK(recs[0].goal == g && !recs[0].holder_goal, "goal");
  CHECK(recs[0].holder_pid == static_cast<int>(getpid()), "holder: this process");
  CHECK(recs[0].path == p && !recs[0].duration, "path, no duration");
  CHECK(recs[0].message.find("lock set") != std::string::npos, "%s", recs[0].message.c_str());
  CHECK(recs[0].time <= before, "recorded before it was taken (steady_clock)");
  CHECK(w.take_log_records().empty(), "drained");
  held.release();
  for (int i = 0; ev.kind == gk::Event::Kind::wait && i < 20; i++) {
    pollfd pfd{ev.fd, POLLIN, 0};
    poll(&pfd, 1, 1000);
    ev = w.next_event();
  }
  CHECK(ev.kind == gk::Event::Kind::run && ev.goal == g, "handed over, runs");
  recs = w.take_log_records();
  CHECK(recs.size() == 1 && recs[0].kind == gk::LogKind::handed_over, "one hand-off record");
  CHECK(recs[0].duration && recs[0].duration->count() > 0, "it says how long it waited");
  std::ofstream(p) << "built\n";
  w.report(g, gk::Outcome::built);
  // The same goal again in a weaker mode: a text line, gone for the records.
  gk::Goal c = w.add_goal(gk::GoalKind::build, {sp("rrrr-check")}, gk::BuildMode::check);
  (void)w.add_goal(gk::GoalKind::build, {sp("rrrr-check")});
  CHECK(w.take_log().size() == 1 && w.take_log_records().empty(), "one log, two views");
  (void)w.add_goal(gk::GoalKind::build, {sp("rrrr-check")});
  recs = w.take_log_records();
  w.close();
  CHECK(recs.size() == 1 && recs[0].kind == gk::LogKind::mode_kept && recs[0].goal == c,
        "mode kept");
  CHECK(recs[0].message.find("keeps mode") != std::string::npos,
        "the copy outlives the worker: %s", recs[0].message.c_str());
  expect_error(gk::errc::stale_handle, [&] { (void)w.take_log_records(); }, "a closed worker");
  log("worker log records ok");
}

// A daemon's own goal object, carried in each goal's tag.
struct HostGoal {
  std::string name;
  int runs = 0;
};

void test_worker_batches_and_host_data() {
  // BasicWorker<HostGoal *>: every event hands the host its object back.
  std::array<HostGoal, 4> objs{{{"base"}, {"left"}, {"right"}, {"top"}}};
  gk::BasicWorker<HostGoal *> w(gk::WorkerOptions{4, true});
  gk::BasicWorker<HostGoal *>::GoalBatch batch;
  // top (3) depends on left and right, which depend on base (0); top is
  // added before them? No: forward references are allowed, so the order
  // is free. Here: base, top (forward refs), left, right.
  CHECK(batch.add(gk::GoalKind::build, {sp("bt-base")}, gk::BuildMode::normal, &objs[0]) == 0,
        "index 0");
  batch.add(gk::GoalKind::plain, {}, gk::BuildMode::normal, &objs[3],
            {gk::batch_goal(2), gk::batch_goal(3)});
  batch.add(gk::GoalKind::build, {sp("bt-left")}, gk::BuildMode::normal, &objs[1],
            {gk::batch_goal(0)});
  batch.add(gk::GoalKind::build, std::vector<std::string>{sp("bt-right")},
            gk::BuildMode::normal, &objs[2], std::vector<gk::Goal>{gk::batch_goal(0)});
  std::vector<gk::Goal> ids = w.add_goals(batch);
  CHECK(ids.size() == 4 && ids[0] && ids[3], "four ids");
  CHECK(w.data(ids[1]) == &objs[3], "data() gives the object");

  // A bad element in the middle: nothing changes, and batch_error says which.
  gk::Audit before = w.audit();
  gk::BasicWorker<HostGoal *>::GoalBatch bad;
  bad.add(gk::GoalKind::plain, {});
  bad.add(gk::GoalKind::build, {sp("bt-x"), sp("bt-left")});  // overlaps left
  bad.add(gk::GoalKind::plain, {}, gk::BuildMode::normal, nullptr, {gk::batch_goal(0)});
  try {
    (void)w.add_goals(bad);
    die("an overlapping batch was accepted");
  } catch (const gk::batch_error &e) {
    CHECK(e.status() == gk::errc::invalid_argument, "overlap: %s", e.what());
    CHECK(e.index() == 1 && e.sub() == 1 && e.field() == gk::BatchField::output,
          "overlap names goals[1].outputs[1]: %zu %zu (%s)", e.index(), e.sub(), e.what());
    CHECK(e.message().find("goals[1].outputs[1]") != std::string::npos, "%s", e.what());
  }
  gk::Audit after = w.audit();
  CHECK(after.goals == before.goals && after.locks_held == before.locks_held &&
            after.ready == before.ready && after.waiting_deps == before.waiting_deps,
        "a refused batch changes nothing");
  bad.clear();
  bad.add(gk::GoalKind::plain, {}, gk::BuildMode::normal, nullptr, {gk::batch_goal(5)});
  expect_error(gk::errc::invalid_argument, [&] { (void)w.add_goals(bad); },
               "a reference beyond the batch");

  // The pull loop, batched: next_events() / report_many().
  std::vector<gk::BasicWorker<HostGoal *>::Event> evs;
  std::vector<std::string> order;
  for (int step = 0; step < 20; ++step) {
    w.next_events(evs, 8);
    CHECK(!evs.empty(), "next_events gives at least one event");
    if (evs.back().kind == gk::EventKind::done)
      break;
    std::vector<gk::Report> reps;
    for (const auto &ev : evs) {
      if (ev.kind == gk::EventKind::wait) {
        CHECK(evs.size() == 1, "a wait comes alone");
        continue;
      }
      CHECK(ev.kind == gk::EventKind::run && ev.data != nullptr, "run with data");
      CHECK(ev.tag == reinterpret_cast<std::uintptr_t>(ev.data), "the raw tag");
      ev.data->runs++;
      order.push_back(ev.data->name);
      for (const auto &o : w.outputs(ev.goal))
        std::ofstream(o) << "built";
      reps.push_back({ev.goal, gk::Outcome::built});
    }
    w.report_many(reps);
    for (const auto &r : reps)
      CHECK(r.recorded == gk::Outcome::built, "recorded built");
  }
  CHECK(order.size() == 4 && order.front() == "base" && order.back() == "top",
        "dependency order through tags");
  for (const auto &o : objs)
    CHECK(o.runs == 1, "%s ran once", o.name.c_str());

  // report_many refuses a bad batch whole.
  std::vector<gk::Report> reps{{ids[0], gk::Outcome::built}};
  try {
    w.report_many(reps);
    die("reporting a finished goal was accepted");
  } catch (const gk::batch_error &e) {
    CHECK(e.status() == gk::errc::invalid_state && e.index() == 0 &&
              e.field() == gk::BatchField::goal,
          "not running: %s", e.what());
    CHECK(reps[0].recorded == gk::Outcome::none, "nothing recorded");
  }
  w.close();

  // The raw tag of a plain Worker; S9 keeps the first.
  gk::Worker raw;
  gk::Goal g = raw.add_goal(gk::GoalKind::build, {sp("bt-raw")}, gk::BuildMode::normal, 42);
  CHECK(raw.add_goal(gk::GoalKind::build, {sp("bt-raw")}, gk::BuildMode::normal, 43) == g, "S9");
  CHECK(raw.data(g) == 42, "the first tag stays");
  gk::Event ev = raw.next_event();
  CHECK(ev.kind == gk::Event::Kind::run && ev.data == 42 && ev.tag == 42, "the event's tag");
  raw.cancel(g);
  raw.close();
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
  test_lock_wait();
  test_worker_basics();
  test_worker_failures_and_predicates();
  test_worker_foreign_wait_and_safety_net();
  test_worker_log_records();
  test_worker_batches_and_host_data();
  CHECK(gk::held_count() == 0, "nothing held at the end");
  log("api_test: all passed");
  return 0;
}
