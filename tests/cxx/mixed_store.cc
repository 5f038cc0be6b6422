// A store shared by old and new daemons during the migration: goalkeeper
// clients (OFD locks, event-driven waits, gk_client.hh) and legacy clients
// (the old daemon's POSIX PathLocks and pollInterval loop,
// legacy_pathlocks.cc) build the same derivations at the same time.
//
// What it proves:
//   1. Concurrent mixed build: N >= 3 goalkeeper and M >= 2 legacy clients
//      build one overlapping DAG at once. Everybody finishes (no deadlock),
//      every derivation's builder ran exactly once (nobody double-builds:
//      each side's locks exclude the other), every client sees every goal
//      succeed, and no lock is left held while all clients are still alive.
//   2. Visibility, both ways, made deterministic with gated builders:
//      a. a legacy client holds v1 (its builder is parked); the goalkeeper
//         clients report that they wait on another process's lock; when the
//         legacy build finishes they get v1 as already valid, never build it;
//      b. a goalkeeper client holds w1; the legacy clients find it busy
//         (F_SETLK fails on goalkeeper's OFD lock) and poll; when it is
//         built they take the lock and find it already valid.
//   3. The #31785 leak: a legacy client builds x1 but keeps its lock after
//      its goal finished (as when a finished goal object stayed alive).
//      The goalkeeper clients waiting for x1 still finish, while the leaked
//      lock is still held, because a goal waiting on a foreign lock
//      re-checks validity (S3); they then build x2 on top of it. A legacy
//      client waiting for the same lock stays stuck (the old loop retries
//      the lock, never validity) until the leak is dropped: the hang that
//      #31785 reported, shown side by side with its fix.
//
// Usage: mixed_store <store-dir>
#include "gk_client.hh"
#include "legacy_pathlocks.hh"

using namespace harness;
namespace gk = goalkeeper;

namespace {

constexpr milliseconds kLimit{20000};
constexpr milliseconds kPoll{25}; // the legacy pollInterval (5 s in the daemon)

Bus g_bus;
std::vector<Gate *> g_gates; // every gate: children drop their write ends

struct Proc {
  std::string id;
  pid_t pid;
};

Proc spawn(const std::string &id, const std::function<void()> &body) {
  std::fflush(nullptr);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    g_bus.keep_write();
    for (Gate *g : g_gates)
      g->forget_write();
    body();
    std::exit(0); // not _exit: LeakSanitizer checks the clients too
  }
  return {id, pid};
}

struct GkSpec {
  std::vector<std::string> wanted;
  std::map<std::string, int> gates;
  Gate *exit_gate;
};

Proc spawn_gk(const std::string &id, const client::Dag &dag, const std::string &runlog,
              GkSpec spec) {
  return spawn(id, [&dag, &runlog, id, spec] {
    client::Config cfg;
    cfg.id = id;
    cfg.runlog = runlog;
    cfg.delay = "0.02";
    cfg.recheck = milliseconds(40);
    cfg.gates = spec.gates;
    cfg.bus = &g_bus;
    try {
      client::Result r = client::run(dag, spec.wanted, cfg);
      g_bus.send(id + " done kind=gk ok=1 rechecks=" +
                 std::to_string(r.audit.validity_rechecks) +
                 " handoffs=" + std::to_string(r.audit.handoffs) +
                 " outcomes=" + client::outcomes_text(r.outcomes));
    } catch (const gk::error &e) {
      g_bus.send(id + " done kind=gk ok=0 error=" + std::string(e.what()).substr(0, 300));
      _exit(1);
    }
    spec.exit_gate->wait(kLimit, "exit");
  });
}

struct LegacySpec {
  std::vector<std::string> wanted;
  std::map<std::string, int> gates;
  Gate *exit_gate;
  bool leak = false;
  Gate *drop_leak = nullptr; // leak: when to drop the leaked locks
};

Proc spawn_legacy(const std::string &id, const client::Dag &dag,
                  const std::string &runlog, LegacySpec spec) {
  return spawn(id, [&dag, &runlog, id, spec] {
    std::vector<legacy::Derivation> drvs;
    for (auto &d : dag.drvs)
      drvs.push_back({d.name, dag.outputs(d), d.deps});
    std::set<std::string> told_busy;
    legacy::Options o;
    o.pollInterval = kPoll;
    o.leakLocks = spec.leak;
    o.spawn = [&](const legacy::Derivation &d, int logFd) {
      BuilderSpec b = dag.builder(dag.get(d.name), runlog, id, "0.02");
      b.log_fd = logFd;
      auto g = spec.gates.find(d.name);
      if (g != spec.gates.end())
        b.gate_fd = g->second;
      return spawn_builder(b);
    };
    o.onBusy = [&](const legacy::Derivation &d) {
      if (told_busy.insert(d.name).second)
        g_bus.send(id + " busy " + d.name);
    };
    std::map<std::string, legacy::Result> results;
    o.onDone = [&](const legacy::Derivation &d, legacy::Result r) {
      results[d.name] = r;
      g_bus.send(id + " finished " + d.name + " " + legacy::resultName(r));
    };
    legacy::Worker w(drvs, o);
    bool ok = false;
    try {
      ok = w.run(spec.wanted);
    } catch (const legacy::Error &e) {
      g_bus.send(id + " done kind=legacy ok=0 error=" + std::string(e.what()));
      _exit(1);
    }
    std::string outs;
    for (auto &[n, r] : results)
      outs += (outs.empty() ? "" : ",") + n + ":" + legacy::resultName(r);
    const legacy::Stats &s = w.stats();
    g_bus.send(id + " done kind=legacy ok=" + (ok ? "1" : "0") +
               " busy=" + std::to_string(s.busy) + " wakeups=" + std::to_string(s.wakeups) +
               " stale=" + std::to_string(s.staleRetries) +
               " leaked=" + std::to_string(s.leaked) + " outcomes=" + outs);
    if (spec.drop_leak) {
      spec.drop_leak->wait(kLimit, "drop the leak");
      w.releaseLeaked(); // unlock with deletion, as the dead goal's destructor would
      g_bus.send(id + " leak-dropped");
    }
    spec.exit_gate->wait(kLimit, "exit");
  });
}

/// Everything the clients said, and helpers to wait for it. A line is
/// matched at most once; lines that arrive while waiting for another one
/// are kept for later.
struct Driver {
  std::vector<std::string> lines;
  std::vector<bool> used;

  std::string expect(const std::function<bool(const std::string &)> &pred, const char *what) {
    for (size_t i = 0; i < lines.size(); ++i)
      if (!used[i] && pred(lines[i])) {
        used[i] = true;
        return lines[i];
      }
    auto deadline = clock::now() + kLimit;
    for (;;) {
      auto l = g_bus.next(deadline);
      if (!l)
        die("timed out after %lld ms waiting for %s", static_cast<long long>(kLimit.count()),
            what);
      lines.push_back(*l);
      used.push_back(false);
      if (pred(*l)) {
        used.back() = true;
        return *l;
      }
    }
  }
  std::string expect_line(const std::string &prefix) {
    return expect([&](const std::string &l) { return starts_with(l, prefix); },
                  prefix.c_str());
  }
  /// Waits for the "<id> done" line of every id; returns id -> line.
  std::map<std::string, std::string> expect_done(const std::vector<std::string> &ids) {
    std::map<std::string, std::string> out;
    while (out.size() < ids.size()) {
      std::string l = expect(
          [&](const std::string &l) {
            for (auto &id : ids)
              if (starts_with(l, id + " done ") && !out.count(id))
                return true;
            return false;
          },
          "clients to finish");
      out[words(l)[0]] = l;
    }
    for (auto &[id, l] : out)
      CHECK(field(l, "ok") == "1", "%s failed: %s", id.c_str(), l.c_str());
    return out;
  }
  /// Whether any line so far starts with `prefix` (reads what is pending first).
  bool said(const std::string &prefix) {
    while (auto l = g_bus.next(clock::now())) {
      lines.push_back(*l);
      used.push_back(false);
    }
    for (auto &l : lines)
      if (starts_with(l, prefix))
        return true;
    return false;
  }
};

/// The outcome of `name` in a "done" line.
std::string outcome(const std::string &done_line, const std::string &name) {
  std::stringstream ss(field(done_line, "outcomes"));
  for (std::string item; std::getline(ss, item, ',');)
    if (item.substr(0, item.find(':')) == name)
      return item.substr(item.find(':') + 1);
  return "";
}

void wait_holder(const std::string &path, pid_t want, const char *what) {
  auto deadline = clock::now() + kLimit;
  while (lock_holder(path) != want) {
    CHECK(clock::now() < deadline, "%s: %s.lock holder is %d, expected %d", what,
          path.c_str(), static_cast<int>(lock_holder(path)), static_cast<int>(want));
    std::this_thread::sleep_for(milliseconds(1)); // re-read the kernel's lock table
  }
}

void reap(const std::vector<Proc> &procs) {
  for (auto &p : procs) {
    int st = wait_child(p.pid, kLimit, p.id.c_str());
    CHECK(exited_ok(st), "%s: %s", p.id.c_str(), describe_status(st).c_str());
  }
}

void check_no_locks(const client::Dag &dag, const char *when) {
  for (auto &d : dag.drvs)
    for (auto &o : dag.outputs(d))
      CHECK(lock_holder(o) == 0, "%s: %s.lock still held by %d", when, o.c_str(),
            static_cast<int>(lock_holder(o)));
}

std::string subdir(const std::string &store, const std::string &name) {
  std::string d = store + "/" + name;
  CHECK(mkdir(d.c_str(), 0700) == 0, "mkdir %s", d.c_str());
  return d;
}

void print_runs(const std::string &runlog) {
  std::ifstream in(runlog);
  std::map<std::string, std::vector<std::string>> by;
  for (std::string line; std::getline(in, line);) {
    auto w = words(line);
    if (w.size() >= 2)
      by[w[0]].push_back(w[1]);
  }
  for (auto &[n, who] : by) {
    std::string s;
    for (auto &c : who)
      s += " " + c;
    log("    %-6s ran %zu time(s), by%s", n.c_str(), who.size(), s.c_str());
  }
}

// ---------------------------------------------------------------------------

void phase1_concurrent(const std::string &store) {
  g_gates.clear(); // gates of earlier phases are gone
  client::Dag dag{subdir(store, "p1"),
                  {
                      {"base", {}, {}},
                      {"libA", {"base"}, {}},
                      {"libB", {"base"}, {"libB-doc"}},
                      {"app1", {"libA", "libB"}, {}},
                      {"app2", {"libA"}, {}},
                      {"app3", {"libB"}, {}},
                      {"tool", {}, {}},
                      {"top", {"app1", "app2", "app3", "tool"}, {}},
                  }};
  std::string runlog = dag.store + "/builds.log";
  Gate exit_gate;
  g_gates.push_back(&exit_gate);
  std::vector<Proc> procs;
  const std::vector<std::vector<std::string>> gk_wants = {
      {"top"}, {"app3", "app1"}, {"app2", "tool", "app1"}};
  const std::vector<std::vector<std::string>> legacy_wants = {{"top"}, {"app1", "app3"}};
  for (size_t i = 0; i < gk_wants.size(); ++i)
    procs.push_back(spawn_gk("gk" + std::to_string(i), dag, runlog,
                             {gk_wants[i], {}, &exit_gate}));
  for (size_t i = 0; i < legacy_wants.size(); ++i)
    procs.push_back(spawn_legacy("legacy" + std::to_string(i), dag, runlog,
                                 {legacy_wants[i], {}, &exit_gate}));
  Driver d;
  std::vector<std::string> ids;
  for (auto &p : procs)
    ids.push_back(p.id);
  auto t0 = clock::now();
  auto done = d.expect_done(ids);
  auto ms = std::chrono::duration_cast<milliseconds>(clock::now() - t0).count();
  check_no_locks(dag, "phase 1, all clients alive");
  auto runs = run_counts(runlog);
  for (auto &drv : dag.drvs)
    CHECK(runs[drv.name] == 1, "phase 1: %s built %d times", drv.name.c_str(),
          runs[drv.name]);
  for (auto &[id, l] : done) {
    std::stringstream ss(field(l, "outcomes"));
    for (std::string item; std::getline(ss, item, ',');) {
      std::string o = item.substr(item.find(':') + 1);
      CHECK(o == "built" || o == "already-valid", "%s: %s", id.c_str(), item.c_str());
    }
  }
  exit_gate.open();
  reap(procs);
  log("phase 1 ok (%lld ms): 3 goalkeeper + 2 legacy clients, one DAG, every builder ran "
      "once:", static_cast<long long>(ms));
  print_runs(runlog);
  for (auto &[id, l] : done)
    log("    %s", l.c_str());
}

void phase2_visibility(const std::string &store) {
  g_gates.clear(); // gates of earlier phases are gone
  client::Dag dag{subdir(store, "p2"),
                  {{"v1", {}, {}}, {"v1c", {"v1"}, {}}, {"w1", {}, {}}}};
  std::string runlog = dag.store + "/builds.log";
  const std::string v1 = dag.store + "/v1", w1 = dag.store + "/w1";
  Gate exit_gate, g1, g2;
  g_gates.insert(g_gates.end(), {&exit_gate, &g1, &g2});
  Driver d;

  // a. legacy holds v1; goalkeeper clients wait for it.
  std::vector<Proc> procs;
  procs.push_back(spawn_legacy("L", dag, runlog, {{"v1"}, {{"v1", g1.read_fd()}}, &exit_gate}));
  wait_holder(v1, procs[0].pid, "the legacy client locks v1");
  for (int i = 0; i < 3; ++i)
    procs.push_back(spawn_gk("gk" + std::to_string(i), dag, runlog, {{"v1c"}, {}, &exit_gate}));
  for (int i = 0; i < 3; ++i)
    d.expect_line("gk" + std::to_string(i) + " waiting-lock");
  CHECK(lock_holder(v1) == procs[0].pid, "v1 still held by the legacy client");
  g1.open();
  auto done = d.expect_done({"L", "gk0", "gk1", "gk2"});
  CHECK(outcome(done["L"], "v1") == "built", "L built v1: %s", done["L"].c_str());
  int v1c_built = 0;
  for (auto id : {"gk0", "gk1", "gk2"}) {
    CHECK(outcome(done[id], "v1") == "already-valid", "%s: %s", id, done[id].c_str());
    v1c_built += outcome(done[id], "v1c") == "built";
  }
  CHECK(v1c_built == 1, "v1c built by exactly one goalkeeper client");
  log("phase 2a ok: 3 goalkeeper clients waited on the legacy lock of v1 and got it as "
      "already valid");

  // b. goalkeeper holds w1; legacy clients find it busy.
  std::vector<Proc> procs2;
  procs2.push_back(spawn_gk("K", dag, runlog, {{"w1"}, {{"w1", g2.read_fd()}}, &exit_gate}));
  wait_holder(w1, -1, "the goalkeeper client locks w1 (an OFD lock)");
  procs2.push_back(spawn_legacy("LA", dag, runlog, {{"w1"}, {}, &exit_gate}));
  procs2.push_back(spawn_legacy("LB", dag, runlog, {{"w1"}, {}, &exit_gate}));
  d.expect_line("LA busy w1");
  d.expect_line("LB busy w1");
  g2.open();
  auto done2 = d.expect_done({"K", "LA", "LB"});
  CHECK(outcome(done2["K"], "w1") == "built", "%s", done2["K"].c_str());
  for (auto id : {"LA", "LB"})
    CHECK(outcome(done2[id], "w1") == "already-valid", "%s: %s", id, done2[id].c_str());
  check_no_locks(dag, "phase 2, all clients alive");
  auto runs = run_counts(runlog);
  for (auto n : {"v1", "v1c", "w1"})
    CHECK(runs[n] == 1, "phase 2: %s built %d times", n, runs[n]);
  exit_gate.open();
  reap(procs);
  reap(procs2);
  log("phase 2b ok: 2 legacy clients found goalkeeper's lock on w1 busy, then w1 valid");
  print_runs(runlog);
  for (auto &[id, l] : done2)
    log("    %s", l.c_str());
}

void phase3_leak(const std::string &store) {
  g_gates.clear(); // gates of earlier phases are gone
  client::Dag dag{subdir(store, "p3"), {{"x1", {}, {}}, {"x2", {"x1"}, {}}}};
  std::string runlog = dag.store + "/builds.log";
  const std::string x1 = dag.store + "/x1";
  Gate exit_gate, g3, drop;
  g_gates.insert(g_gates.end(), {&exit_gate, &g3, &drop});
  Driver d;
  std::vector<Proc> procs;
  LegacySpec leaker{{"x1"}, {{"x1", g3.read_fd()}}, &exit_gate, true, &drop};
  procs.push_back(spawn_legacy("L", dag, runlog, leaker));
  wait_holder(x1, procs[0].pid, "the leaking client locks x1");
  for (int i = 0; i < 3; ++i)
    procs.push_back(spawn_gk("gk" + std::to_string(i), dag, runlog, {{"x2"}, {}, &exit_gate}));
  procs.push_back(spawn_legacy("B", dag, runlog, {{"x1"}, {}, &exit_gate}));
  for (int i = 0; i < 3; ++i)
    d.expect_line("gk" + std::to_string(i) + " waiting-lock");
  d.expect_line("B busy x1");
  g3.open(); // L's builder finishes x1; L's goal ends, its lock stays held
  d.expect_line("L finished x1 built");
  auto done = d.expect_done({"L", "gk0", "gk1", "gk2"});
  CHECK(field(done["L"], "leaked") == "1", "L leaked its lock: %s", done["L"].c_str());
  // The goalkeeper clients are done, and the leak is still in place.
  CHECK(lock_holder(x1) == procs[0].pid, "x1.lock still held by the leaking client (%d)",
        static_cast<int>(lock_holder(x1)));
  int x2_built = 0;
  for (auto id : {"gk0", "gk1", "gk2"}) {
    CHECK(outcome(done[id], "x1") == "already-valid", "%s: %s", id, done[id].c_str());
    CHECK(std::stoi(field(done[id], "rechecks")) >= 1,
          "%s saw x1 through a validity re-check: %s", id, done[id].c_str());
    x2_built += outcome(done[id], "x2") == "built";
  }
  CHECK(x2_built == 1, "x2 built by exactly one goalkeeper client");
  // The old loop never re-checks validity while it waits: B is stuck.
  CHECK(!d.said("B done") && !d.said("B finished"), "the legacy waiter cannot finish "
        "while the leaked lock is held");
  log("phase 3: goalkeeper clients finished while x1.lock is still leaked by pid %d; the "
      "legacy client B is still waiting",
      static_cast<int>(procs[0].pid));
  drop.open(); // the leaked goal object finally dies
  d.expect_line("L leak-dropped");
  auto doneB = d.expect_done({"B"});
  CHECK(outcome(doneB["B"], "x1") == "already-valid", "%s", doneB["B"].c_str());
  CHECK(std::stoi(field(doneB["B"], "busy")) >= 2, "B kept polling: %s",
        doneB["B"].c_str());
  check_no_locks(dag, "phase 3, all clients alive");
  auto runs = run_counts(runlog);
  CHECK(runs["x1"] == 1 && runs["x2"] == 1, "phase 3: x1 %d, x2 %d builds", runs["x1"],
        runs["x2"]);
  exit_gate.open();
  reap(procs);
  log("phase 3 ok: the leaked lock (#31785) did not hang goalkeeper clients (S3); the "
      "legacy client finished only after the leak was dropped");
  print_runs(runlog);
  for (auto &[id, l] : done)
    log("    %s", l.c_str());
  log("    %s", doneB["B"].c_str());
}

} // namespace

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: mixed_store <store-dir>");
  gk::check_abi();
  const std::string store = argv[1];
  // The driver keeps both ends of the bus (children drop the read end); it
  // never waits for EOF, only for lines, with deadlines.
  phase1_concurrent(store);
  phase2_visibility(store);
  phase3_leak(store);
  log("mixed_store: all phases passed");
  return 0;
}
