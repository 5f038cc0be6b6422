// A model of guix-daemon's worker (nix/libstore/build.cc), written for this
// repository, in two versions: the old one (POSIX PathLocks whose locks
// live as long as the object, waitForAWhile polled every pollInterval)
// and the migrated one (goalkeeper-pathlocks.hh: GoalScope around work(),
// goalFinished() in amDone, busy outputs waited for on a lock wait's
// descriptor in the select() loop), as doc/migrating-guix-daemon.md
// describes. What it keeps of the daemon's shape:
//
//   - goals are held by shared_ptr from the top-level list and from their
//     waiters (waitees), weak pointers everywhere else, and are worked in
//     name order (CompareGoalPtrs);
//   - a derivation goal checks validity, waits for its inputs, tries its
//     output lock WITHOUT waiting (busy: waitForAWhile, or the migration's
//     waitForLocks), re-checks validity under the lock ("someone beat us to
//     it": setDeletion(true), unlock(), done), takes a build slot
//     (max-jobs 1) or gives the lock back, and runs a real builder process
//     whose log pipe's EOF is its end;
//   - Worker::waitForInput select()s on the builders' pipes, with a
//     pollInterval timeout for waitingForAWhile.
//
// The scenario is Guix's tests/store-deadlock.scm, scaled down 40 times:
// three client processes started 25 ms apart, each building [top] + 15
// inputs with max-jobs 1 (inputs 100 ms, top 75 ms, pollInterval 125 ms,
// where the daemon has 4 s, 3 s and 5 s). Four runs:
//
//   old, fixed       the has-become-valid path unlocks (Guix commit
//                    78da6951787): all finish; each contended lock costs a
//                    poll (printed, against pollInterval);
//   old, #31785      without that unlock: a finished goal keeps its lock for
//                    as long as its object lives, and the clients deadlock
//                    (detected as a wait-for cycle on valid paths, which
//                    holds for 3 poll rounds of every client; then killed);
//   migrated, #31785 the same missing unlock: goalFinished() releases the
//                    lock when the goal finishes and names the goal; all
//                    finish; no wake-up ever comes from a timer (every
//                    busy lock is waited for on its descriptor);
//   migrated, fixed  all finish, nothing reported.
//
// Every derivation is built exactly once in the runs that finish. The
// hand-off waits (from a lock's release to the waiter's acquisition) are
// printed, with the ratio old/migrated; the structural checks are what
// fails the test. Every wait is bounded.
//
// Usage: daemon_model <store-dir>
#include "harness.hh"
#include "legacy_pathlocks.hh"

#include <goalkeeper-pathlocks.hh>

#include <sys/select.h>

#include <algorithm>
#include <list>
#include <memory>
#include <set>

using namespace harness;
namespace gk = goalkeeper;

namespace {

// The scenario, scaled down 40 times from tests/store-deadlock.scm.
constexpr int kClients = 3;
constexpr int kInputs = 15;
constexpr milliseconds kStagger{25};
constexpr milliseconds kPoll{125};
const char *const kInputDelay = "0.1";
const char *const kTopDelay = "0.075";
constexpr milliseconds kLimit{30000};

long long now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             clock::now().time_since_epoch())
      .count();
}

bool exists(const std::string &p) {
  struct stat st;
  return lstat(p.c_str(), &st) == 0;
}

/// What a client process is told.
struct Config {
  bool migrated = false;
  bool forgetUnlock = false; // the has-become-valid path without unlock()
  std::string store;
  int client = 0;
  const Bus *bus = nullptr;
};

const Bus *g_bus = nullptr;
void report_to_bus(const std::string &m) { g_bus->send("report " + m); }

// ---------------------------------------------------------------------------
// The worker and its goals: one template, for the old locks and the new.

template <class Locks> struct Goal;
template <class Locks> using GoalPtr = std::shared_ptr<Goal<Locks>>;
template <class Locks> using WeakGoalPtr = std::weak_ptr<Goal<Locks>>;
template <class Locks> using WeakGoals = std::list<WeakGoalPtr<Locks>>;

template <class Locks> struct CompareGoalPtrs {
  bool operator()(const GoalPtr<Locks> &a, const GoalPtr<Locks> &b) const {
    return a->name < b->name;
  }
};
template <class Locks> using Goals = std::set<GoalPtr<Locks>, CompareGoalPtrs<Locks>>;

constexpr bool migrated_v(const legacy::PathLocks *) { return false; }
constexpr bool migrated_v(const gk::compat::PathLocks *) { return true; }

template <class Locks> class Worker {
public:
  static constexpr bool migrated = migrated_v(static_cast<const Locks *>(nullptr));
  explicit Worker(const Config &c) : cfg(c) {}

  GoalPtr<Locks> makeGoal(const std::string &name) {
    GoalPtr<Locks> g = goalsByName[name].lock();
    if (!g) {
      g = std::make_shared<Goal<Locks>>(*this, name);
      goalsByName[name] = g;
      wakeUp(g);
    }
    return g;
  }

  void wakeUp(const GoalPtr<Locks> &g) { addTo(awake, g); }
  void waitForAnyGoal(const GoalPtr<Locks> &g) { addTo(waitingForAnyGoal, g); }
  void waitForBuildSlot(const GoalPtr<Locks> &g) {
    if (nrLocalBuilds < 1)
      wakeUp(g);
    else
      addTo(wantingToBuild, g);
  }
  void waitForAWhile(const GoalPtr<Locks> &g) { addTo(waitingForAWhile, g); }

  /// The migration's Worker::waitForLocks.
  void waitForLocks(const GoalPtr<Locks> &g, const Locks &locks) {
    if constexpr (migrated) {
      gk::LockWait w = locks.lockWait();
      if (!w)
        return waitForAWhile(g);
      waitingForLocks.emplace_back(g, std::move(w));
    } else {
      (void)locks;
      waitForAWhile(g);
    }
  }

  void removeGoal(const GoalPtr<Locks> &g) {
    goalsByName.erase(g->name);
    topGoals.erase(g);
    for (auto &w : waitingForAnyGoal)
      if (auto x = w.lock())
        wakeUp(x);
    waitingForAnyGoal.clear();
  }

  void childStarted(const GoalPtr<Locks> &g, pid_t pid, int fd) {
    children[fd] = {g, pid};
    ++nrLocalBuilds;
  }

  void childTerminated(int fd) {
    auto it = children.find(fd);
    waitpid(it->second.pid, nullptr, 0);
    close(fd);
    children.erase(it);
    --nrLocalBuilds;
    for (auto &w : wantingToBuild)
      if (auto x = w.lock())
        wakeUp(x);
    wantingToBuild.clear();
  }

  void run(const Goals<Locks> &top) {
    topGoals = top;
    for (;;) {
      while (!awake.empty() && !topGoals.empty()) {
        Goals<Locks> awake2;
        for (auto &w : awake)
          if (auto g = w.lock())
            awake2.insert(g);
        awake.clear();
        for (auto &g : awake2) {
          if constexpr (migrated) {
            gk::compat::GoalScope scope(g.get());
            g->work();
          } else {
            g->work();
          }
          if (topGoals.empty())
            break;
        }
      }
      if (topGoals.empty())
        break;
      if (!children.empty() || !waitingForAWhile.empty() || !waitingForLocks.empty())
        waitForInput();
      else if (awake.empty())
        die("client %d: goals remain but nothing can run", cfg.client);
    }
  }

  void waitForInput() {
    auto before = clock::now();
    bool useTimeout = false;
    timeval timeout{};
    if (!waitingForAWhile.empty()) {
      useTimeout = true;
      if (lastWokenUp == clock::time_point{} || lastWokenUp > before)
        lastWokenUp = before;
      auto left = std::chrono::duration_cast<std::chrono::microseconds>(lastWokenUp + kPoll - before);
      if (left.count() < 0)
        left = {};
      timeout.tv_sec = static_cast<time_t>(left.count() / 1000000);
      timeout.tv_usec = static_cast<suseconds_t>(left.count() % 1000000);
    } else {
      lastWokenUp = {};
    }
    fd_set fds;
    FD_ZERO(&fds);
    int fdMax = 0;
    for (auto &c : children) {
      FD_SET(c.first, &fds);
      fdMax = std::max(fdMax, c.first + 1);
    }
    for (auto i = waitingForLocks.begin(); i != waitingForLocks.end();)
      if (i->first.expired())
        i = waitingForLocks.erase(i);
      else {
        FD_SET(i->second.fd(), &fds);
        fdMax = std::max(fdMax, i->second.fd() + 1);
        ++i;
      }
    int n = select(fdMax, &fds, nullptr, nullptr, useTimeout ? &timeout : nullptr);
    if (n == -1) {
      if (errno == EINTR)
        return;
      die("select: %s", std::strerror(errno));
    }
    if (n == 0)
      ++timerWakeups;
    auto after = clock::now();
    std::vector<int> ready;
    for (auto &c : children)
      if (FD_ISSET(c.first, &fds))
        ready.push_back(c.first);
    for (int fd : ready) {
      char buf[4096];
      ssize_t rd = read(fd, buf, sizeof buf);
      if (rd == -1 && errno == EINTR)
        continue;
      if (rd == -1)
        die("read builder log: %s", std::strerror(errno));
      if (rd == 0) {
        GoalPtr<Locks> g = children[fd].goal.lock();
        childTerminated(fd);
        if (g)
          wakeUp(g);
      }
    }
    for (auto i = waitingForLocks.begin(); i != waitingForLocks.end();)
      if (FD_ISSET(i->second.fd(), &fds)) {
        if (auto g = i->first.lock())
          wakeUp(g);
        i = waitingForLocks.erase(i);
      } else
        ++i;
    if (!waitingForAWhile.empty() && lastWokenUp + kPoll <= after) {
      lastWokenUp = after;
      if constexpr (!migrated)
        reportRound();
      for (auto &w : waitingForAWhile)
        if (auto g = w.lock())
          wakeUp(g);
      waitingForAWhile.clear();
    }
  }

  /// For the driver's deadlock check: the outputs this client holds for
  /// finished goals, and those its goals have waited a whole poll for.
  void reportRound() {
    std::string holds, waits;
    for (auto &w : finished)
      if (auto g = w.lock(); g && !g->outputLocks.empty())
        holds += (holds.empty() ? "" : ",") + g->output;
    for (auto &w : waitingForAWhile)
      if (auto g = w.lock())
        waits += (waits.empty() ? "" : ",") + g->output;
    cfg.bus->send("round " + std::to_string(cfg.client) + " holds=" + holds + " waits=" + waits);
  }

  static void addTo(WeakGoals<Locks> &list, const GoalPtr<Locks> &g) {
    for (auto &w : list)
      if (w.lock() == g)
        return;
    list.push_back(g);
  }

  struct Child {
    WeakGoalPtr<Locks> goal;
    pid_t pid;
  };

  Config cfg;
  Goals<Locks> topGoals;
  WeakGoals<Locks> awake, wantingToBuild, waitingForAnyGoal, waitingForAWhile;
  std::list<std::pair<WeakGoalPtr<Locks>, gk::LockWait>> waitingForLocks;
  std::map<std::string, WeakGoalPtr<Locks>> goalsByName;
  std::map<int, Child> children;
  unsigned nrLocalBuilds = 0;
  clock::time_point lastWokenUp{};
  unsigned timerWakeups = 0;
  /// Finished goals (kept alive, as in the daemon, by the caller's list of
  /// top-level goals: LocalStore::buildPaths holds it until run() returns).
  std::vector<WeakGoalPtr<Locks>> finished;
};

bool pathLockedHere(const legacy::PathLocks *, const std::string &p) {
  return legacy::pathIsLockedByMe(p);
}
bool pathLockedHere(const gk::compat::PathLocks *, const std::string &p) {
  return gk::compat::pathIsLockedByMe(p);
}

template <class Locks> struct Goal : std::enable_shared_from_this<Goal<Locks>> {
  enum class State { Init, InputsRealised, TryToBuild, BuildDone };

  Goal(Worker<Locks> &w, std::string n) : worker(w), name(std::move(n)) {
    output = worker.cfg.store + "/" + name;
    if (name == "top-drv")
      for (int k = 0; k < kInputs; ++k)
        inputNames.push_back("drv" + std::to_string(k));
  }

  void work() {
    switch (state) {
    case State::Init: return init();
    case State::InputsRealised: return inputsRealised();
    case State::TryToBuild: return tryToBuild();
    case State::BuildDone: return buildDone();
    }
  }

  void init() {
    if (exists(output))
      return amDone(true);
    for (auto &n : inputNames) {
      GoalPtr<Locks> w = worker.makeGoal(n);
      waitees.insert(w);
      Worker<Locks>::addTo(w->waiters, this->shared_from_this());
    }
    state = State::InputsRealised;
    if (waitees.empty())
      worker.wakeUp(this->shared_from_this());
  }

  void inputsRealised() {
    state = State::TryToBuild;
    tryToBuild();
  }

  void tryToBuild() {
    auto self = this->shared_from_this();
    if (pathLockedHere(static_cast<const Locks *>(nullptr), output))
      return worker.waitForAnyGoal(self);
    if (!outputLocks.lockPaths({output}, "", false)) {
      wasBusy = true;
      return worker.waitForLocks(self, outputLocks);
    }
    if (wasBusy)
      worker.cfg.bus->send("acquired " + name + " " + std::to_string(now_us()));
    wasBusy = false;
    if (exists(output)) { // someone beat us to it
      outputLocks.setDeletion(true);
      if (worker.cfg.forgetUnlock)
        worker.cfg.bus->send("beaten " + std::to_string(worker.cfg.client) + " " + name);
      else
        release();
      return amDone(true);
    }
    if (worker.nrLocalBuilds >= 1) {
      outputLocks.unlock();
      return worker.waitForBuildSlot(self);
    }
    std::vector<std::string> inputs;
    for (auto &n : inputNames)
      inputs.push_back(worker.cfg.store + "/" + n);
    Pipe log = Pipe::make();
    BuilderSpec b{name, {output}, inputs, worker.cfg.store + "/runlog",
                  std::to_string(worker.cfg.client), name == "top-drv" ? kTopDelay : kInputDelay,
                  -1, log.w};
    pid_t pid = spawn_builder(b);
    log.close_w();
    worker.childStarted(self, pid, log.r);
    state = State::BuildDone;
  }

  void buildDone() {
    bool ok = exists(output);
    if (ok)
      outputLocks.setDeletion(true);
    release();
    amDone(ok);
  }

  /// unlock(), noting when, for the hand-off waits.
  void release() {
    bool held = !outputLocks.empty();
    outputLocks.unlock();
    if (held)
      worker.cfg.bus->send("released " + name + " " + std::to_string(now_us()));
  }

  void amDone(bool ok) {
    if (done)
      die("client %d: %s finished twice", worker.cfg.client, name.c_str());
    done = true;
    if constexpr (Worker<Locks>::migrated) {
      if (gk::compat::goalFinished(this, "building of `" + name + "'") > 0)
        worker.cfg.bus->send("released " + name + " " + std::to_string(now_us()));
    }
    auto self = this->shared_from_this();
    worker.finished.push_back(self);
    for (auto &w : waiters)
      if (auto g = w.lock()) {
        g->waitees.erase(self);
        if (!ok)
          ++g->nrFailed;
        if (g->waitees.empty())
          worker.wakeUp(g);
      }
    waiters.clear();
    worker.removeGoal(self);
  }

  Worker<Locks> &worker;
  std::string name, output;
  std::vector<std::string> inputNames;
  Goals<Locks> waitees;   // strong: a goal keeps its inputs' goals alive
  WeakGoals<Locks> waiters;
  State state = State::Init;
  Locks outputLocks;
  bool wasBusy = false, done = false;
  int nrFailed = 0;
};

template <class Locks> void client_main(const Config &cfg) {
  Worker<Locks> worker(cfg);
  Goals<Locks> top;
  top.insert(worker.makeGoal("top-drv"));
  for (int k = 0; k < kInputs; ++k)
    top.insert(worker.makeGoal("drv" + std::to_string(k)));
  worker.run(top);
  cfg.bus->send("finished " + std::to_string(cfg.client) +
                " timer_wakeups=" + std::to_string(worker.timerWakeups));
}

// ---------------------------------------------------------------------------
// The driver

struct Outcome {
  bool finished = false, deadlocked = false;
  long long ms = 0;
  std::vector<double> handoffs; // ms from a release to a waiter's acquisition
  std::map<int, unsigned> timerWakeups;
  std::vector<std::string> reports, beaten, cycle;
  std::map<std::string, int> runs;
};

std::vector<std::string> split(const std::string &s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      if (!cur.empty())
        out.push_back(cur);
      cur.clear();
    } else
      cur += c;
  }
  if (!cur.empty())
    out.push_back(cur);
  return out;
}

Outcome scenario(const std::string &root, const char *tag, bool migrated, bool forgetUnlock) {
  const std::string store = root + "/" + tag;
  CHECK(mkdir(store.c_str(), 0700) == 0, "mkdir %s", store.c_str());
  Bus bus;
  Gate start;
  std::vector<pid_t> pids;
  for (int i = 0; i < kClients; ++i) {
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
      bus.keep_write();
      start.forget_write();
      start.wait(kLimit, "start");
      // The clients arrive 25 ms apart, as the Guix test's threads (1 s).
      std::this_thread::sleep_for(kStagger * i);
      Config cfg{migrated, forgetUnlock, store, i, &bus};
      g_bus = &bus;
      gk::compat::set_goal_report_sink(&report_to_bus);
      try {
        if (migrated)
          client_main<gk::compat::PathLocks>(cfg);
        else
          client_main<legacy::PathLocks>(cfg);
      } catch (const std::exception &e) {
        die("client %d: %s", i, e.what());
      }
      _exit(0);
    }
    pids.push_back(pid);
  }
  bus.keep_read();
  auto t0 = clock::now();
  start.open();
  Outcome out;
  std::map<std::string, long long> lastRelease; // goal -> us
  std::map<int, std::pair<std::set<std::string>, std::set<std::string>>> state;
  std::map<int, int> cycleRounds;
  std::set<int> done;
  auto deadline = t0 + kLimit;
  while (static_cast<int>(done.size()) < kClients && !out.deadlocked) {
    auto line = bus.next(deadline);
    if (!line)
      break;
    auto w = words(*line);
    if (w[0] == "released") {
      lastRelease[w[1]] = std::stoll(w[2]);
    } else if (w[0] == "acquired") {
      auto r = lastRelease.find(w[1]);
      if (r != lastRelease.end())
        out.handoffs.push_back((std::stoll(w[2]) - r->second) / 1000.0);
    } else if (w[0] == "beaten") {
      out.beaten.push_back("building of `" + w[2] + "'");
    } else if (w[0] == "report") {
      out.reports.push_back(line->substr(7));
    } else if (w[0] == "finished") {
      int c = std::stoi(w[1]);
      done.insert(c);
      out.timerWakeups[c] = static_cast<unsigned>(std::stoul(field(*line, "timer_wakeups")));
      state.erase(c);
    } else if (w[0] == "round") {
      int c = std::stoi(w[1]);
      auto holds = split(field(*line, "holds"), ','), waits = split(field(*line, "waits"), ',');
      state[c] = {std::set<std::string>(holds.begin(), holds.end()),
                  std::set<std::string>(waits.begin(), waits.end())};
      // A wait-for cycle on valid paths: every client still running waits
      // only for valid outputs that the other running clients hold for
      // goals that have finished. It can only end when a client exits.
      bool cycle = static_cast<int>(state.size() + done.size()) == kClients &&
                   state.size() >= 2;
      for (auto &[client, hw] : state) {
        if (hw.second.empty())
          cycle = false;
        for (auto &p : hw.second) {
          bool heldElsewhere = false;
          for (auto &[other, ohw] : state)
            heldElsewhere |= other != client && ohw.first.count(p);
          cycle &= heldElsewhere && exists(p);
        }
      }
      cycleRounds[c] = cycle ? cycleRounds[c] + 1 : 0;
      bool stable = cycle;
      for (auto &[client, hw] : state)
        stable &= cycleRounds[client] >= 3;
      if (stable) {
        out.deadlocked = true;
        for (auto &[client, hw] : state) {
          std::string s = "client " + std::to_string(client) + " holds";
          for (auto &p : hw.first)
            s += " " + p.substr(store.size() + 1);
          s += ", waits for";
          for (auto &p : hw.second)
            s += " " + p.substr(store.size() + 1);
          out.cycle.push_back(s);
        }
      }
    }
  }
  out.ms = std::chrono::duration_cast<milliseconds>(clock::now() - t0).count();
  out.finished = static_cast<int>(done.size()) == kClients;
  for (pid_t pid : pids) {
    if (!out.finished)
      kill(pid, SIGKILL);
    int st = wait_child(pid, kLimit, "client");
    if (out.finished)
      CHECK(exited_ok(st), "%s: a client failed: %s", tag, describe_status(st).c_str());
  }
  out.runs = run_counts(store + "/runlog");
  return out;
}

std::string stats(std::vector<double> v) {
  if (v.empty())
    return "no contended hand-offs";
  std::sort(v.begin(), v.end());
  char buf[160];
  std::snprintf(buf, sizeof buf, "%zu contended hand-offs, waited median %.1f ms, max %.1f ms",
                v.size(), v[v.size() / 2], v.back());
  return buf;
}

double median(std::vector<double> v) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void check_built_once(const Outcome &o, const char *tag) {
  CHECK(static_cast<int>(o.runs.size()) == kInputs + 1, "%s: %zu derivations built", tag,
        o.runs.size());
  for (auto &[name, n] : o.runs)
    CHECK(n == 1, "%s: %s built %d times", tag, name.c_str(), n);
}

unsigned timer_wakeups(const Outcome &o) {
  unsigned n = 0;
  for (auto &[c, k] : o.timerWakeups)
    n += k;
  return n;
}

} // namespace

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: daemon_model <store-dir>");
  const std::string root = argv[1];
  log("the store-deadlock scenario scaled down 40 times: %d clients %lld ms apart, %d inputs "
      "(builders %s s) and a top derivation, max-jobs 1, pollInterval %lld ms",
      kClients, static_cast<long long>(kStagger.count()), kInputs, kInputDelay,
      static_cast<long long>(kPoll.count()));

  Outcome oldFixed = scenario(root, "old-fixed", false, false);
  CHECK(oldFixed.finished, "old loop with the unlock: not finished in %lld ms", oldFixed.ms);
  check_built_once(oldFixed, "old-fixed");
  log("old loop, with 78da6951787's unlock: finished in %lld ms; %s (pollInterval %lld ms); "
      "%u timer wake-ups",
      oldFixed.ms, stats(oldFixed.handoffs).c_str(), static_cast<long long>(kPoll.count()),
      timer_wakeups(oldFixed));
  CHECK(!oldFixed.handoffs.empty() && timer_wakeups(oldFixed) > 0,
        "the old loop polls for contended locks");

  Outcome oldBug = scenario(root, "old-31785", false, true);
  CHECK(oldBug.deadlocked && !oldBug.finished,
        "old loop without the unlock: expected the #31785 deadlock (finished %d after %lld ms)",
        oldBug.finished, oldBug.ms);
  log("old loop, without the unlock (#31785): deadlocked, found after %lld ms (3 poll rounds "
      "of every client on a wait-for cycle of finished goals' locks on valid paths):",
      oldBug.ms);
  for (auto &c : oldBug.cycle)
    log("  %s", c.c_str());

  Outcome newBug = scenario(root, "migrated-31785", true, true);
  CHECK(newBug.finished, "migrated loop without the unlock: not finished in %lld ms", newBug.ms);
  check_built_once(newBug, "migrated-31785");
  CHECK(timer_wakeups(newBug) == 0, "the migrated loop woke %u times on a timer",
        timer_wakeups(newBug));
  CHECK(!newBug.beaten.empty(), "no goal took the has-become-valid path; the scenario lost its point");
  std::vector<std::string> named;
  for (auto &r : newBug.reports) {
    auto b = r.find("building of `"), e = r.find("' finished holding the lock on");
    CHECK(b != std::string::npos && e != std::string::npos, "a report without a goal: %s",
          r.c_str());
    named.push_back(r.substr(b, e + 1 - b));
  }
  auto a = newBug.beaten, n = named;
  std::sort(a.begin(), a.end());
  std::sort(n.begin(), n.end());
  CHECK(a == n, "the reports name exactly the goals that forgot their lock (%zu beaten, %zu "
        "reports)", a.size(), n.size());
  log("migrated loop, without the unlock: finished in %lld ms; %s; 0 timer wake-ups; %zu "
      "goal(s) that finished holding a lock, each named, e.g.:",
      newBug.ms, stats(newBug.handoffs).c_str(), newBug.reports.size());
  log("  %s", newBug.reports.front().c_str());

  Outcome newFixed = scenario(root, "migrated-fixed", true, false);
  CHECK(newFixed.finished, "migrated loop: not finished in %lld ms", newFixed.ms);
  check_built_once(newFixed, "migrated-fixed");
  CHECK(timer_wakeups(newFixed) == 0 && newFixed.reports.empty(),
        "migrated loop with the unlock: %u timer wake-ups, %zu reports", timer_wakeups(newFixed),
        newFixed.reports.size());
  log("migrated loop, with the unlock: finished in %lld ms; %s; 0 timer wake-ups; nothing "
      "reported",
      newFixed.ms, stats(newFixed.handoffs).c_str());

  std::vector<double> mig = newFixed.handoffs;
  mig.insert(mig.end(), newBug.handoffs.begin(), newBug.handoffs.end());
  double m = median(mig);
  log("hand-off wait, median: old %.1f ms, migrated %.2f ms (ratio %.0f); wall time: old %lld "
      "ms, migrated %lld ms",
      median(oldFixed.handoffs), m, m > 0 ? median(oldFixed.handoffs) / m : 0.0, oldFixed.ms,
      newFixed.ms);
  log("daemon_model: all passed");
  return 0;
}
