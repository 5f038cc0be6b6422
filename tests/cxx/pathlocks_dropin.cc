// goalkeeper::compat::PathLocks (include/goalkeeper-pathlocks.hh), the
// drop-in for guix-daemon's PathLocks, used the way the daemon uses it,
// against real lock files and real processes.
//
//   build      DerivationGoal::tryToBuild: pathIsLockedByMe, lock the outputs
//              without waiting, re-check validity, run a real builder while
//              holding them (another process sees them busy), then
//              setDeletion(true) + unlock(): lock files gone, paths free;
//   beaten     "someone beat us to it": another process holds the outputs
//              and builds them; our try returns false holding nothing; the
//              retry finds them valid: setDeletion(true) + explicit unlock();
//   busy       a busy path in a set: false, nothing held, no wait message,
//              the other paths free for other processes; the object is reusable;
//   wait       wait mode blocks until another process releases (with
//              deletion), prints the wait message exactly once, and holds
//              nothing while it blocks (G2: the earlier path stays free);
//   stderr     the default wait-message sink: the message and a newline on
//              stderr, once; nothing when it does not have to wait;
//   quiet      destructors release quietly (honouring setDeletion): scope
//              ends, stack unwinding, abandoned goals are not leaks;
//   goal end   a GoalScope makes a goal own the locks taken in it;
//              goalFinished() releases and reports those it still holds
//              (the has-become-valid and cached-failure paths without
//              unlock()), naming the goal; tidy goals are not reported;
//   lock wait  lockWait() after a busy no-wait lockPaths() gives a
//              descriptor that fires when the other process releases;
//   errors     relative / NUL paths, self re-locks (through PathLocks and
//              goalkeeper::LockSet; wait mode never blocks on itself),
//              lockPaths on a holding object, the error hook;
//   misc       empty sets, the deletion flag across cycles, moves, the
//              constructor, a fork child's inherited object;
//   interrupt  the interrupt check ends a blocking wait, holding nothing.
//
// Usage: pathlocks_dropin <store-dir>
#include "harness.hh"

#include <goalkeeper-pathlocks.hh>

#include <memory>

using namespace harness;
namespace gk = goalkeeper;
using gk::compat::PathLocks;
using gk::compat::PathSet;
using gk::compat::pathIsLockedByMe;

namespace {

constexpr milliseconds kLimit{20000};
std::string g_store;

std::string sp(const std::string &name) { return g_store + "/" + name; }

bool exists(const std::string &p) {
  struct stat st;
  return lstat(p.c_str(), &st) == 0;
}

bool all_exist(const PathSet &paths) {
  for (auto &p : paths)
    if (!exists(p))
      return false;
  return true;
}

bool no_lock_files(const PathSet &paths) {
  for (auto &p : paths)
    if (exists(p + ".lock"))
      return false;
  return true;
}

// The wait messages printed, through a sink the tests install.
std::vector<std::string> g_messages;
void record_message(const std::string &m) { g_messages.push_back(m); }
gk::compat::wait_message_sink g_default_sink = nullptr;

// Safety-net reports.
int g_net_calls = 0;
std::string g_net_what, g_net_detail;
void record_net(const char *what, std::uint64_t, const char *detail) noexcept {
  ++g_net_calls;
  g_net_what = what;
  g_net_detail = detail;
}

/// Runs `f`, which must throw gk::error with status `want`; returns its what().
template <class F> std::string expect_error(gk::errc want, F f, const char *what) {
  try {
    f();
  } catch (const gk::error &e) {
    CHECK(e.status() == want, "%s: expected %s, got %s (%s)", what, gk::status_name(want),
          gk::status_name(e.status()), e.what());
    return e.what();
  }
  die("%s: expected %s, nothing thrown", what, gk::status_name(want));
}

/// In a forked process: tries to lock `paths` with the drop-in without
/// waiting; true if it got them (it then releases them, deleting the lock
/// files if `del`).
bool other_process_can_lock(const PathSet &paths, bool del = false) {
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    int code = 1;
    try {
      PathLocks pl;
      code = pl.lockPaths(paths, "", false) ? 0 : 2;
      pl.setDeletion(del);
      pl.unlock();
    } catch (const std::exception &e) {
      std::fprintf(stderr, "lock probe: %s\n", e.what());
      code = 3;
    }
    _exit(code);
  }
  int st = wait_child(pid, kLimit, "lock probe");
  CHECK(WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 2), "lock probe: %s",
        describe_status(st).c_str());
  return WEXITSTATUS(st) == 0;
}

// ---------------------------------------------------------------------------
// A goal shaped like guix-daemon's DerivationGoal, reduced to its locks.

enum class Step { WaitForAnyGoal, WaitForAWhile, AlreadyValid, Built, Failed };

const char *step_name(Step s) {
  switch (s) {
  case Step::WaitForAnyGoal: return "wait-for-any-goal";
  case Step::WaitForAWhile: return "wait-for-a-while";
  case Step::AlreadyValid: return "already-valid";
  case Step::Built: return "built";
  case Step::Failed: return "failed";
  }
  return "?";
}

struct DerivationGoal {
  std::string name;
  PathSet outputs;
  PathLocks outputLocks; // a member, as in build.cc
  std::function<void()> whileBuilding;
  int gateFd = -1;

  Step tryToBuild() {
    // Another goal of this process may hold an output: wait for it.
    for (auto &o : outputs)
      if (pathIsLockedByMe(o))
        return Step::WaitForAnyGoal;
    // Lock the outputs without waiting; the worker retries later.
    if (!outputLocks.lockPaths(outputs, "", false))
      return Step::WaitForAWhile;
    // Under the locks, check validity again: someone may have beaten us to it.
    if (all_exist(outputs)) {
      outputLocks.setDeletion(true);
      outputLocks.unlock();
      return Step::AlreadyValid;
    }
    // Build: a real builder process writes the outputs.
    BuilderSpec b;
    b.name = name;
    b.outs.assign(outputs.begin(), outputs.end());
    b.runlog = sp("runlog");
    b.client = "dropin";
    b.gate_fd = gateFd;
    pid_t pid = spawn_builder(b);
    if (whileBuilding)
      whileBuilding();
    int st = wait_child(pid, kLimit, "builder");
    if (!exited_ok(st) || !all_exist(outputs)) {
      outputLocks.unlock();
      return Step::Failed;
    }
    // The outputs are valid: future lockers see that, so the lock files may go.
    outputLocks.setDeletion(true);
    outputLocks.unlock();
    return Step::Built;
  }
};

void test_build() {
  Gate gate;
  DerivationGoal g;
  g.name = "hello";
  g.outputs = {sp("aaaa-hello"), sp("aaaa-hello-doc")};
  g.gateFd = gate.read_fd();
  bool checked = false;
  g.whileBuilding = [&] {
    // The builder is parked at its gate: the outputs are locked by us.
    for (auto &o : g.outputs) {
      CHECK(pathIsLockedByMe(o), "%s locked by me during the build", o.c_str());
      CHECK(exists(o + ".lock"), "lock file of %s", o.c_str());
      CHECK(lock_holder(o) == -1, "an OFD lock on %s (F_GETLK pid -1)", o.c_str());
      CHECK(!other_process_can_lock({o}), "%s busy for another process", o.c_str());
    }
    CHECK(g.outputLocks.paths() == g.outputs, "paths() names the outputs");
    CHECK(gk::held_count() == 2, "two paths held");
    gate.open();
    checked = true;
  };
  Step s = g.tryToBuild();
  CHECK(s == Step::Built, "built, not %s", step_name(s));
  CHECK(checked, "the checks during the build ran");
  CHECK(g.outputLocks.empty() && gk::held_count() == 0, "nothing held after unlock()");
  CHECK(no_lock_files(g.outputs), "setDeletion(true) + unlock() deleted the lock files");
  for (auto &o : g.outputs)
    CHECK(!pathIsLockedByMe(o), "%s released", o.c_str());
  CHECK(other_process_can_lock(g.outputs, true), "the outputs are free for another process");
  CHECK(no_lock_files(g.outputs), "the probe deleted its lock files too");
  // A second goal for the same outputs: valid now, no build.
  DerivationGoal again;
  again.name = "hello";
  again.outputs = g.outputs;
  s = again.tryToBuild();
  CHECK(s == Step::AlreadyValid, "already valid, not %s", step_name(s));
  CHECK(run_counts(sp("runlog"))["hello"] == 1, "built exactly once");
  log("build ok: outputs locked during the build, lock files deleted, paths free");
}

void test_someone_beat_us() {
  const PathSet outs = {sp("bbbb-lib"), sp("bbbb-lib-dev")};
  Bus up, down;
  pid_t other = fork();
  CHECK(other >= 0, "fork");
  if (other == 0) {
    // Another daemon building the same derivation.
    up.keep_write();
    down.keep_read();
    PathLocks locks;
    CHECK(locks.lockPaths(outs, "", false), "the other daemon locks the outputs");
    up.send("locked");
    auto go = down.next(clock::now() + kLimit);
    CHECK(go && *go == "go", "no go");
    for (auto &o : outs) {
      std::ofstream(o + ".tmp") << "built by the other daemon\n";
      CHECK(rename((o + ".tmp").c_str(), o.c_str()) == 0, "rename");
    }
    locks.setDeletion(true);
    locks.unlock();
    up.send("released");
    _exit(0);
  }
  up.keep_read();
  down.keep_write();
  up.wait_for([](const std::string &l) { return l == "locked"; }, kLimit, "locked");

  DerivationGoal g;
  g.name = "lib";
  g.outputs = outs;
  Step s = g.tryToBuild();
  CHECK(s == Step::WaitForAWhile, "busy: %s", step_name(s));
  CHECK(g.outputLocks.empty() && gk::held_count() == 0, "a busy try holds nothing");
  down.send("go");
  up.wait_for([](const std::string &l) { return l == "released"; }, kLimit, "released");
  CHECK(exited_ok(wait_child(other, kLimit, "other daemon")), "other daemon");
  CHECK(no_lock_files(outs), "the other daemon deleted its lock files");

  s = g.tryToBuild(); // retried by the worker
  CHECK(s == Step::AlreadyValid, "someone beat us to it, not %s", step_name(s));
  CHECK(g.outputLocks.empty() && gk::held_count() == 0, "unlocked explicitly");
  CHECK(no_lock_files(outs), "setDeletion(true) + unlock() deleted the re-created lock files");
  CHECK(run_counts(sp("runlog"))["lib"] == 0, "we never built it");
  CHECK(other_process_can_lock(outs, true), "free for everyone");
  log("beaten ok: busy try held nothing; the retry found the outputs valid and deleted "
      "the lock files");
}

void test_busy_holds_nothing() {
  const std::string a = sp("cccc-a"), b = sp("cccc-b"), c = sp("cccc-c");
  // Another process holds b, the middle path of the set.
  Bus up, down;
  pid_t other = fork();
  CHECK(other >= 0, "fork");
  if (other == 0) {
    up.keep_write();
    down.keep_read();
    PathLocks held;
    CHECK(held.lockPaths({b}, "", false), "child locks b");
    up.send("holding");
    auto cmd = down.next(clock::now() + kLimit);
    CHECK(cmd && *cmd == "release", "no release");
    held.unlock();
    up.send("released");
    _exit(0);
  }
  up.keep_read();
  down.keep_write();
  up.wait_for([](const std::string &l) { return l == "holding"; }, kLimit, "holding");

  g_messages.clear();
  PathLocks pl;
  CHECK(!pl.lockPaths({a, b, c}, "waiting for cccc-b", false), "busy without waiting");
  CHECK(g_messages.empty(), "no wait message when it does not wait");
  CHECK(pl.empty() && pl.paths().empty() && gk::held_count() == 0, "nothing held");
  CHECK(!pathIsLockedByMe(a) && !pathIsLockedByMe(c), "a and c not held");
  CHECK(other_process_can_lock({a, c}), "a and c free for another process");
  pl.unlock(); // nothing held: a no-op
  down.send("release");
  up.wait_for([](const std::string &l) { return l == "released"; }, kLimit, "released");
  CHECK(exited_ok(wait_child(other, kLimit, "holder")), "holder");
  CHECK(pl.lockPaths({a, b, c}, "", false), "the same object locks once b is free");
  CHECK(gk::held_count() == 3, "all three");
  pl.setDeletion(true);
  pl.unlock();
  CHECK(no_lock_files({a, b, c}), "deleted");
  log("busy ok: false, nothing held, no message, the other paths free");
}

void test_wait_mode() {
  // a sorts before b: guix-daemon would hold a while blocking on b.
  const std::string a = sp("dddd-a"), b = sp("dddd-b");
  Bus up, down;
  pid_t other = fork();
  CHECK(other >= 0, "fork");
  if (other == 0) {
    up.keep_write();
    down.keep_read();
    PathLocks held;
    CHECK(held.lockPaths({b}, "", false), "child locks b");
    up.send("holding");
    // Release only once the kernel shows the parent blocked on b.
    wait_blocked(b, 1, kLimit);
    // While it blocks, the parent holds nothing: a is free.
    PathLocks probe;
    bool a_free = probe.lockPaths({a}, "", false);
    probe.unlock();
    held.setDeletion(true); // the waiter wakes on a deleted lock file
    held.unlock();
    up.send(std::string("released a_free=") + (a_free ? "yes" : "no"));
    _exit(0);
  }
  up.keep_read();
  down.keep_write();
  up.wait_for([](const std::string &l) { return l == "holding"; }, kLimit, "holding");

  g_messages.clear();
  PathLocks pl;
  CHECK(pl.lockPaths({a, b}, "waiting for lock on dddd-b", true), "wait mode returns true");
  CHECK(g_messages.size() == 1 && g_messages[0] == "waiting for lock on dddd-b",
        "the wait message exactly once (%zu)", g_messages.size());
  CHECK(pathIsLockedByMe(a) && pathIsLockedByMe(b) && gk::held_count() == 2, "both held");
  std::string l = up.wait_for([](const std::string &x) { return starts_with(x, "released"); },
                              kLimit, "released");
  CHECK(field(l, "a_free") == "yes", "a was free while the waiter blocked on b (G2): %s",
        l.c_str());
  CHECK(exited_ok(wait_child(other, kLimit, "holder")), "holder");
  CHECK(exists(b + ".lock"), "the waiter re-created b's deleted lock file");
  CHECK(!other_process_can_lock({b}), "b is held on the live lock file");
  pl.setDeletion(true);
  pl.unlock();
  CHECK(no_lock_files({a, b}), "deleted");
  log("wait ok: blocked until the release, message once, held nothing while blocked");
}

void test_default_sink() {
  const std::string p = sp("eeee-p"), q = sp("eeee-q");
  // The sink the header installs by default (main() replaced it).
  CHECK(g_default_sink != nullptr, "a default sink");
  gk::compat::set_wait_message_sink(g_default_sink);
  PathLocks holder;
  CHECK(holder.lockPaths({p}, "", false), "parent locks p");
  Pipe err = Pipe::make();
  pid_t w = fork();
  CHECK(w >= 0, "fork");
  if (w == 0) {
    err.close_r();
    if (dup2(err.w, STDERR_FILENO) == -1)
      _exit(10);
    PathLocks free_one;
    if (!free_one.lockPaths({q}, "never printed: q is free", true))
      _exit(11);
    free_one.unlock();
    PathLocks waiter;
    if (!waiter.lockPaths({p}, "waiting for lock on eeee-p", true))
      _exit(12);
    waiter.setDeletion(true);
    waiter.unlock();
    _exit(0);
  }
  err.close_w();
  wait_blocked(p, 1, kLimit);
  holder.unlock();
  int st = wait_child(w, kLimit, "waiter");
  CHECK(exited_ok(st), "waiter: %s", describe_status(st).c_str());
  std::string out;
  char buf[512];
  for (ssize_t n; (n = read(err.r, buf, sizeof buf)) != 0;) {
    if (n == -1 && errno == EINTR)
      continue;
    CHECK(n > 0, "read stderr");
    out.append(buf, static_cast<size_t>(n));
  }
  err.close_r();
  CHECK(out == "waiting for lock on eeee-p\n", "stderr was '%s'", out.c_str());
  gk::compat::set_wait_message_sink(&record_message);
  log("stderr ok: the default sink printed the message once, with a newline");
}

// Goal-end reports (set_goal_report_sink).
std::vector<std::string> g_reports;
void record_report(const std::string &m) { g_reports.push_back(m); }

void test_quiet_destructor() {
  auto previous = gk::set_safety_net_handler(&record_net);
  auto previous_sink = gk::compat::set_goal_report_sink(&record_report);
  const std::string p = sp("ffff-net"), q = sp("ffff-net-del");
  {
    PathLocks scoped({p}); // local-store.cc's shape: lock, work, end of scope
    CHECK(pathIsLockedByMe(p), "held");
  }
  CHECK(!pathIsLockedByMe(p) && exists(p + ".lock"), "released, lock file kept");
  CHECK(other_process_can_lock({p}, true), "free for another process");
  {
    PathLocks scoped({q});
    scoped.setDeletion(true);
  }
  CHECK(!pathIsLockedByMe(q) && !exists(q + ".lock"), "released and deleted, as guix-daemon");
  bool caught = false;
  try {
    PathLocks unwound({p});
    throw std::runtime_error("a build error");
  } catch (const std::runtime_error &) {
    caught = true;
  }
  CHECK(caught && !pathIsLockedByMe(p), "stack unwinding released it");
  {
    gk::compat::GoalScope scope(&caught); // a goal abandoned, never finished
    PathLocks of_abandoned_goal({p});
  }
  CHECK(!pathIsLockedByMe(p), "an abandoned goal's lock is released by its destructor");
  CHECK(g_net_calls == 0 && g_reports.empty(),
        "none of these is a leak: nothing reported (%d, %zu)", g_net_calls, g_reports.size());
  gk::set_safety_net_handler(previous);
  gk::compat::set_goal_report_sink(previous_sink);
  log("quiet ok: scope ends, deletion on destruction, unwinding, abandoned goals: no report");
}

// A goal as in build.cc: an object whose output locks are a member, run
// inside a GoalScope, ending with goalFinished() (Goal::amDone).
struct Goal {
  std::string name;
  PathLocks outputLocks;
  void finish() { gk::compat::goalFinished(this, name); }
};

void test_goal_end() {
  auto previous_sink = gk::compat::set_goal_report_sink(&record_report);
  g_reports.clear();
  const std::string p = sp("gggg-beaten"), q = sp("gggg-cached"), r = sp("gggg-scoped");

  // "Someone beat us to it" without unlock() (Guix commit 78da6951787 reverted).
  auto beaten = std::make_shared<Goal>();
  beaten->name = "building of `gggg-beaten.drv'";
  {
    gk::compat::GoalScope scope(beaten.get());
    CHECK(beaten->outputLocks.lockPaths({p}, "", false), "locks its output");
    beaten->outputLocks.setDeletion(true);
    PathLocks inner({r}); // a scoped lock inside the goal's work: released at its end
  }
  CHECK(pathIsLockedByMe(p) && !pathIsLockedByMe(r), "the goal holds its output lock");
  beaten->finish();
  CHECK(!pathIsLockedByMe(p) && !exists(p + ".lock"),
        "goalFinished released it with deletion, while the goal object lives on");
  CHECK(g_reports.size() == 1, "reported once (%zu)", g_reports.size());
  CHECK(g_reports[0].find(beaten->name) != std::string::npos &&
            g_reports[0].find(p) != std::string::npos &&
            g_reports[0].find("deleted") != std::string::npos,
        "the report names the goal, the path and the deletion: %s", g_reports[0].c_str());
  CHECK(beaten->outputLocks.empty(), "the PathLocks holds nothing now");
  beaten->outputLocks.unlock(); // quiet, no error
  beaten.reset();
  CHECK(g_reports.size() == 1, "its later unlock() and destructor are quiet");

  // --cache-failures: the output failed before; the goal returns without unlock().
  Goal cached{"building of `gggg-cached.drv'", {}};
  {
    gk::compat::GoalScope scope(&cached);
    CHECK(cached.outputLocks.lockPaths({q}, "", false), "locks its output");
  }
  PathLocks moved(std::move(cached.outputLocks)); // ownership follows a move
  cached.finish();
  CHECK(!pathIsLockedByMe(q) && exists(q + ".lock") && other_process_can_lock({q}),
        "released (lock file kept: no setDeletion) and free for another process");
  CHECK(g_reports.size() == 2 && g_reports[1].find("gggg-cached") != std::string::npos &&
            g_reports[1].find("kept") != std::string::npos,
        "reported: %s", g_reports.back().c_str());
  CHECK(moved.empty(), "the moved-to object holds nothing");

  // A goal that unlocks itself: nothing to do, nothing reported.
  Goal tidy{"building of `gggg-tidy.drv'", {}};
  PathLocks outside({r}); // no scope: nobody's
  {
    gk::compat::GoalScope scope(&tidy);
    CHECK(tidy.outputLocks.lockPaths({p}, "", false), "locks");
    {
      gk::compat::GoalScope nested(&cached);
    }
    tidy.outputLocks.setDeletion(true);
    tidy.outputLocks.unlock();
    CHECK(tidy.outputLocks.lockPaths({q}, "", false), "locks again (nested scope restored)");
    tidy.outputLocks.unlock();
  }
  CHECK(gk::compat::goalFinished(&tidy, tidy.name) == 0, "nothing left to release");
  CHECK(gk::compat::goalFinished(&cached, cached.name) == 0, "a goal finished twice: nothing");
  CHECK(pathIsLockedByMe(r), "a lock taken outside any goal belongs to no goal");
  outside.unlock();
  CHECK(g_reports.size() == 2, "no report for goals that released their locks");
  gk::compat::set_goal_report_sink(previous_sink);
  log("goal end ok: a finished goal's forgotten locks are released at once, reported by "
      "name; tidy goals are not reported");
}

void test_lock_wait() {
  const std::string p = sp("jjjj-wait"), q = sp("jjjj-free");
  Bus up, down;
  pid_t other = fork();
  CHECK(other >= 0, "fork");
  if (other == 0) {
    up.keep_write();
    down.keep_read();
    PathLocks held;
    CHECK(held.lockPaths({p}, "", false), "child locks p");
    up.send("holding");
    auto cmd = down.next(clock::now() + kLimit);
    CHECK(cmd && *cmd == "release", "no release");
    held.setDeletion(true);
    held.unlock();
    _exit(0);
  }
  up.keep_read();
  down.keep_write();
  up.wait_for([](const std::string &l) { return l == "holding"; }, kLimit, "holding");
  PathLocks pl;
  CHECK(!pl.lockWait(), "no wait before a failed lockPaths");
  CHECK(!pl.lockPaths({p, q}, "", false), "busy");
  gk::LockWait w = pl.lockWait();
  CHECK(w && w.fd() >= 0, "a wait for the busy set");
  pollfd pfd{w.fd(), POLLIN, 0};
  CHECK(poll(&pfd, 1, 100) == 0, "not readable while the other process holds p");
  CHECK(other_process_can_lock({q}), "the wait holds nothing");
  down.send("release");
  CHECK(poll(&pfd, 1, static_cast<int>(kLimit.count())) == 1, "readable after the release");
  CHECK(exited_ok(wait_child(other, kLimit, "holder")), "holder");
  CHECK(pl.lockPaths({p, q}, "", false), "the retry locks both");
  CHECK(!pl.lockWait(), "no wait after a successful lockPaths");
  pl.setDeletion(true);
  pl.unlock();
  log("lock wait ok: lockWait()'s descriptor fires when the other process releases");
}

struct DaemonError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] void to_daemon_error(const gk::error &e) { throw DaemonError(e.what()); }

void test_errors() {
  const std::string p = sp("gggg-p"), q = sp("gggg-q"), r = sp("gggg-r");
  PathLocks pl;
  expect_error(
      gk::errc::invalid_path, [&] { pl.lockPaths({"relative/path"}, "", false); },
      "relative path");
  std::string w = expect_error(
      gk::errc::invalid_path, [&] { pl.lockPaths({p, "relative/x"}); }, "relative in a set");
  CHECK(w.find("relative/x") != std::string::npos, "names the path: %s", w.c_str());
  expect_error(
      gk::errc::invalid_path, [&] { pl.lockPaths({p + std::string(1, '\0') + "x"}); },
      "NUL in a path");
  CHECK(pl.empty() && gk::held_count() == 0 && !exists(p + ".lock"), "nothing held or created");
  CHECK(!pathIsLockedByMe("relative/path"), "pathIsLockedByMe: false for a relative path");

  // Self re-locks: never granted twice, never waited for.
  PathLocks first({p});
  PathLocks second;
  w = expect_error(
      gk::errc::held_by_this_process, [&] { second.lockPaths({p}, "", false); },
      "self re-lock, no wait");
  CHECK(w.find("deadlock: trying to re-acquire self-held lock") != std::string::npos,
        "guix-daemon's words: %s", w.c_str());
  CHECK(w.find(p) != std::string::npos, "names the path: %s", w.c_str());
  g_messages.clear();
  expect_error(
      gk::errc::held_by_this_process,
      [&] { second.lockPaths({p}, "would wait for myself", true); }, "self re-lock, wait");
  CHECK(g_messages.empty(), "no wait message: it never waits for itself");
  expect_error(
      gk::errc::held_by_this_process, [&] { second.lockPaths({q, p}, "", true); },
      "a self-held path later in the set");
  CHECK(second.empty() && !pathIsLockedByMe(q), "q not held after the refusal");
  // The registry is the process's: a goalkeeper::LockSet's path too.
  gk::LockSet ls = gk::LockSet::acquire({r});
  CHECK(pathIsLockedByMe(r), "a LockSet's path is locked by me");
  expect_error(
      gk::errc::held_by_this_process, [&] { second.lockPaths({r}, "", false); },
      "a LockSet's path");
  ls.set_deletion(true);
  ls.release();

  // lockPaths on an object that holds locks: defined, and it keeps them.
  w = expect_error(
      gk::errc::invalid_state, [&] { first.lockPaths({q}, "", false); },
      "lockPaths while holding");
  CHECK(w.find(p) != std::string::npos && w.find(q) != std::string::npos, "names both: %s",
        w.c_str());
  CHECK(pathIsLockedByMe(p) && !pathIsLockedByMe(q) && first.paths() == PathSet{p},
        "still holds p only");
  first.setDeletion(true);
  first.unlock();

  // The error hook turns goalkeeper::error into the daemon's own exception.
  auto prev = gk::compat::set_error_hook(&to_daemon_error);
  CHECK(prev == nullptr, "no hook by default");
  bool translated = false;
  try {
    pl.lockPaths({"relative/again"});
  } catch (const DaemonError &e) {
    translated = std::string(e.what()).find("GK_ERROR_INVALID_PATH") != std::string::npos;
  }
  CHECK(translated, "the hook's exception was thrown");
  gk::compat::set_error_hook(nullptr);
  CHECK(gk::held_count() == 0 && no_lock_files({p, q, r}), "clean");
  log("errors ok: invalid paths, self re-locks (no block, guix-daemon's words), lockPaths "
      "while holding, the error hook");
}

void test_misc() {
  const std::string p = sp("hhhh-p"), q = sp("hhhh-q");
  auto previous = gk::set_safety_net_handler(&record_net);
  int calls = g_net_calls;
  // An empty set: true, nothing held.
  PathLocks e;
  CHECK(e.lockPaths({}, "", false) && e.empty(), "empty set");
  e.unlock();
  e.unlock();

  // The deletion flag belongs to the object and survives cycles (as in guix-daemon).
  PathLocks d;
  d.setDeletion(true);
  for (int i = 0; i < 2; ++i) {
    CHECK(d.lockPaths({p}, "", false) && exists(p + ".lock"), "cycle %d locks", i);
    d.unlock();
    CHECK(!exists(p + ".lock"), "cycle %d deleted", i);
  }
  d.setDeletion(false);
  CHECK(d.lockPaths({p}, "", false), "locks");
  d.unlock();
  CHECK(exists(p + ".lock"), "kept without deletion");

  // The constructor blocks until held; moves carry the locks and the flag.
  PathLocks c(PathSet{p, q}, "never printed");
  c.setDeletion(true);
  PathLocks moved(std::move(c));
  CHECK(c.empty() && c.paths().empty() && moved.paths() == (PathSet{p, q}), "moved");
  PathLocks target;
  target = std::move(moved);
  CHECK(moved.empty() && !target.empty(), "move-assigned");
  CHECK(g_net_calls == calls, "moves are not releases");
  target.unlock();
  CHECK(!exists(p + ".lock") && !exists(q + ".lock"), "the deletion flag moved too");

  // A fork child that inherited holding objects: unlock() and the destructor
  // only forget the parent's locks, silently.
  const std::string r = sp("hhhh-r");
  auto inherited = std::make_unique<PathLocks>(PathSet{p});
  auto inherited2 = std::make_unique<PathLocks>(PathSet{r});
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    int before = g_net_calls;
    try {
      inherited->unlock();
      inherited2.reset();
      PathLocks again({q}); // the child locks other paths as usual
      again.unlock();
    } catch (const std::exception &ex) {
      std::fprintf(stderr, "child: %s\n", ex.what());
      _exit(2);
    }
    PathLocks probe;
    bool got = probe.lockPaths({p}, "", false) || probe.lockPaths({r}, "", false);
    _exit(got ? 3 : g_net_calls != before ? 4 : 0);
  }
  int st = wait_child(pid, kLimit, "fork child");
  CHECK(exited_ok(st), "fork child: %s (3: the parent lost a lock, 4: reported)",
        describe_status(st).c_str());
  CHECK(pathIsLockedByMe(p) && pathIsLockedByMe(r) && !other_process_can_lock({p}) &&
            !other_process_can_lock({r}),
        "the parent still holds p and r");
  inherited->setDeletion(true);
  inherited->unlock();
  inherited2->setDeletion(true);
  inherited2->unlock();
  CHECK(g_net_calls == calls, "nothing reported");
  gk::set_safety_net_handler(previous);
  log("misc ok: empty set, deletion flag across cycles, constructor, moves, fork child");
}

struct Interrupted {};
int g_checks = 0;
void interrupt_on_third_call() {
  if (++g_checks >= 3)
    throw Interrupted{};
}

void test_interrupt() {
  // A path used by nothing afterwards: the interrupted wait leaves a helper
  // thread blocked on it until the holder exits (goalkeeper's wait.rs).
  const std::string p = sp("zzzz-interrupt");
  Bus up, down;
  pid_t other = fork();
  CHECK(other >= 0, "fork");
  if (other == 0) {
    up.keep_write();
    down.keep_read();
    PathLocks held;
    CHECK(held.lockPaths({p}, "", false), "child locks p");
    up.send("holding");
    auto cmd = down.next(clock::now() + kLimit);
    CHECK(cmd && *cmd == "exit", "no exit");
    held.unlock();
    _exit(0);
  }
  up.keep_read();
  down.keep_write();
  up.wait_for([](const std::string &l) { return l == "holding"; }, kLimit, "holding");
  gk::compat::set_interrupt_check(&interrupt_on_third_call, milliseconds(5));
  g_messages.clear();
  PathLocks pl;
  bool interrupted = false;
  try {
    pl.lockPaths({p}, "waiting for lock on zzzz-interrupt", true);
  } catch (const Interrupted &) {
    interrupted = true;
  }
  CHECK(interrupted && g_checks == 3, "interrupted at the third check (%d)", g_checks);
  CHECK(g_messages.size() == 1, "the wait message once (%zu)", g_messages.size());
  CHECK(pl.empty() && gk::held_count() == 0, "nothing held after the interruption");
  // Without waiting, the check is not called.
  CHECK(!pl.lockPaths({p}, "", false) && g_checks == 3, "try: busy, no check");
  gk::compat::set_interrupt_check(nullptr);
  down.send("exit");
  CHECK(exited_ok(wait_child(other, kLimit, "holder")), "holder");
  log("interrupt ok: the check ended a blocking wait, holding nothing");
}

} // namespace

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: pathlocks_dropin <store-dir>");
  gk::check_abi();
  g_store = argv[1];
  g_default_sink = gk::compat::set_wait_message_sink(&record_message);
  try {
    test_build();
    test_someone_beat_us();
    test_busy_holds_nothing();
    test_wait_mode();
    test_default_sink();
    test_quiet_destructor();
    test_goal_end();
    test_lock_wait();
    test_errors();
    test_misc();
    test_interrupt(); // last: it leaves a helper thread behind
  } catch (const std::exception &e) {
    die("unexpected exception: %s", e.what());
  }
  CHECK(gk::held_count() == 0, "nothing held at the end");
  log("pathlocks_dropin: all passed");
  return 0;
}
