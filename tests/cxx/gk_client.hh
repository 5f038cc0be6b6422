// A goalkeeper client, shaped like the build half of guix-daemon's
// processConnection: one goalkeeper::Worker per request, driven by the pull
// loop, running real builder processes (fork + exec of /bin/sh) and waiting
// for the worker's fd and its children (one pidfd per builder) in one
// poll(2) loop. Used by mini_daemon.cc and mixed_store.cc. With
// GK_TEST_DEBUG set in the environment, every event is traced on stderr.
#ifndef GK_TEST_GK_CLIENT_HH
#define GK_TEST_GK_CLIENT_HH

#include "harness.hh"

#include <goalkeeper.hpp>

#include <sys/syscall.h>

#include <algorithm>
#include <set>

namespace client {

using namespace harness;
namespace gk = goalkeeper;

/// One derivation of a test DAG: its name (its first output is
/// <store>/<name>), extra output names, and the derivations it depends on.
struct Drv {
  std::string name;
  std::vector<std::string> deps;
  std::vector<std::string> extra_outputs;
};

struct Dag {
  std::string store;
  std::vector<Drv> drvs;

  const Drv &get(const std::string &name) const {
    for (auto &d : drvs)
      if (d.name == name)
        return d;
    die("no derivation %s", name.c_str());
  }
  std::vector<std::string> outputs(const Drv &d) const {
    std::vector<std::string> o = {store + "/" + d.name};
    for (auto &e : d.extra_outputs)
      o.push_back(store + "/" + e);
    return o;
  }
  /// `wanted` and everything it depends on, dependencies first.
  std::vector<std::string> closure(const std::vector<std::string> &wanted) const {
    std::vector<std::string> order;
    std::set<std::string> seen;
    std::function<void(const std::string &)> visit = [&](const std::string &n) {
      if (!seen.insert(n).second)
        return;
      for (auto &d : get(n).deps)
        visit(d);
      order.push_back(n);
    };
    for (auto &w : wanted)
      visit(w);
    return order;
  }
  /// The builder of `d`: writes all its outputs, needs its deps' outputs.
  BuilderSpec builder(const Drv &d, const std::string &runlog,
                      const std::string &client, const std::string &delay) const {
    BuilderSpec b;
    b.name = d.name;
    b.outs = outputs(d);
    for (auto &dep : d.deps)
      for (auto &o : outputs(get(dep)))
        b.inputs.push_back(o);
    b.runlog = runlog;
    b.client = client;
    b.delay = delay;
    return b;
  }
};

struct Config {
  std::string id;         // names the client in messages and the run log
  std::string runlog;     // builder run log
  std::string delay;      // builder duration (seconds, for sleep)
  unsigned max_jobs = 1;
  milliseconds recheck{50}; // validity re-check while waiting (S3)
  std::map<std::string, int> gates; // derivation -> gate read fd
  const Bus *bus = nullptr; // "<id> waiting-lock" once, when a goal waits on another process
};

struct Result {
  std::map<std::string, gk::Outcome> outcomes;
  unsigned ran = 0, waits = 0;
  gk::Audit audit{};
  std::vector<std::string> log;
};

inline int pidfd_open(pid_t pid) {
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
}

/// Runs one request: builds `wanted` (and what it needs) with a fresh
/// worker. Checks on every event that no finished goal holds a lock (G1)
/// and that a goal is run only with its output locks held.
inline Result run(const Dag &dag, const std::vector<std::string> &wanted,
                  const Config &cfg) {
  gk::WorkerOptions opts;
  opts.max_jobs = cfg.max_jobs;
  opts.recheck_interval = cfg.recheck;
  gk::Worker w(opts);

  std::map<std::string, gk::Goal> goal_of;
  std::map<gk::Goal, std::string> name_of;
  for (auto &n : dag.closure(wanted)) {
    gk::Goal g = w.add_goal(gk::GoalKind::build, dag.outputs(dag.get(n)));
    goal_of[n] = g;
    name_of[g] = n;
  }
  for (auto &[n, g] : goal_of)
    for (auto &dep : dag.get(n).deps)
      w.add_dependency(g, goal_of.at(dep));

  struct Running {
    pid_t pid;
    gk::Goal goal;
  };
  std::map<int, Running> running; // pidfd -> builder
  Result res;
  bool told_waiting = false;

  auto holds_none = [&](const std::string &n, const char *when) {
    for (auto &o : dag.outputs(dag.get(n)))
      CHECK(!gk::is_locked_by_me(o), "%s: %s still locked after %s (G1)", cfg.id.c_str(),
            o.c_str(), when);
  };

  const bool debug = std::getenv("GK_TEST_DEBUG") != nullptr;
  for (;;) {
    gk::Event ev = w.next_event();
    gk::Audit a = w.audit();
    if (debug)
      std::fprintf(stderr, "%s: event %u goal %llu outcome %s fd %d timeout %d | "
                   "waiting_lock %llu foreign_waits %llu running %llu finished %llu\n",
                   cfg.id.c_str(), static_cast<unsigned>(ev.kind),
                   static_cast<unsigned long long>(ev.goal.id), gk::outcome_name(ev.outcome),
                   ev.fd, ev.poll_timeout(), static_cast<unsigned long long>(a.waiting_lock),
                   static_cast<unsigned long long>(a.foreign_waits),
                   static_cast<unsigned long long>(a.running),
                   static_cast<unsigned long long>(a.finished));
    CHECK(a.locks_held_by_finished == 0 && a.violations == 0,
          "%s: ledger: %llu locks held by finished goals, %llu violations", cfg.id.c_str(),
          static_cast<unsigned long long>(a.locks_held_by_finished),
          static_cast<unsigned long long>(a.violations));
    CHECK(a.slots_used <= a.max_jobs, "slots %llu > max_jobs (S6)",
          static_cast<unsigned long long>(a.slots_used));

    if (ev.kind == gk::Event::Kind::done)
      break;

    if (ev.kind == gk::Event::Kind::run) {
      const std::string &n = name_of.at(ev.goal);
      const Drv &d = dag.get(n);
      for (auto &o : dag.outputs(d))
        CHECK(gk::is_locked_by_me(o), "%s: RUN %s without the lock on %s", cfg.id.c_str(),
              n.c_str(), o.c_str());
      BuilderSpec b = dag.builder(d, cfg.runlog, cfg.id, cfg.delay);
      auto gate = cfg.gates.find(n);
      if (gate != cfg.gates.end())
        b.gate_fd = gate->second;
      pid_t pid = spawn_builder(b);
      int pfd = pidfd_open(pid);
      CHECK(pfd >= 0, "pidfd_open: %s", std::strerror(errno));
      running[pfd] = {pid, ev.goal};
      ++res.ran;
      continue;
    }

    if (ev.kind == gk::Event::Kind::finished) {
      const std::string &n = name_of.at(ev.goal);
      res.outcomes[n] = ev.outcome;
      holds_none(n, "FINISHED");
      continue;
    }

    // WAIT: the worker's fd and every builder's pidfd in one poll.
    ++res.waits;
    if (cfg.bus && !told_waiting && a.foreign_waits > 0) {
      cfg.bus->send(cfg.id + " waiting-lock");
      told_waiting = true;
    }
    std::vector<pollfd> pfds = {{ev.fd, POLLIN, 0}};
    for (auto &[pfd, r] : running)
      pfds.push_back({pfd, POLLIN, 0});
    int n = poll(pfds.data(), pfds.size(), ev.poll_timeout());
    if (n == -1 && errno == EINTR)
      continue;
    CHECK(n >= 0, "poll: %s", std::strerror(errno));
    for (size_t i = 1; i < pfds.size(); ++i) {
      if (!(pfds[i].revents & POLLIN))
        continue;
      Running r = running.at(pfds[i].fd);
      int st = 0;
      CHECK(waitpid(r.pid, &st, 0) == r.pid, "waitpid: %s", std::strerror(errno));
      close(pfds[i].fd);
      running.erase(pfds[i].fd);
      const std::string &name = name_of.at(r.goal);
      w.report(r.goal, exited_ok(st) ? gk::Outcome::built : gk::Outcome::failed);
      gk::GoalResult gr = w.result(r.goal);
      CHECK(gr.state == gk::GoalState::finished, "reported goal finished");
      res.outcomes[name] = gr.outcome;
      holds_none(name, "report");
    }
  }
  CHECK(running.empty(), "%s: DONE with builders running", cfg.id.c_str());
  res.audit = w.audit();
  CHECK(res.audit.locks_held == 0 && gk::held_count() == 0,
        "%s: locks held after DONE", cfg.id.c_str());
  for (auto &[n, g] : goal_of) {
    gk::GoalResult r = w.result(g);
    CHECK(r.state == gk::GoalState::finished && r.outcome == res.outcomes[n],
          "%s: result of %s", cfg.id.c_str(), n.c_str());
  }
  res.log = w.take_log();
  w.close();
  return res;
}

/// "name:outcome,..." for messages.
inline std::string outcomes_text(const std::map<std::string, gk::Outcome> &o) {
  std::string s;
  for (auto &[n, out] : o)
    s += (s.empty() ? "" : ",") + n + ":" + gk::outcome_name(out);
  return s;
}

} // namespace client

#endif
