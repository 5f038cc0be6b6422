// A miniature guix-daemon: the shape of its accept loop and
// processConnection, with goalkeeper doing the locking and scheduling.
//
// The daemon forks one handler per client connection (a socketpair here).
// Each handler reads a build request ("wopBuildPaths"), runs a fresh
// goalkeeper::Worker through the pull loop over an overlapping DAG of
// derivations, fork/execs real builders (/bin/sh writing $out atomically
// and appending to a run log), waits on the worker's fd and its builders'
// pidfds in one poll loop, and answers with the outcomes.
//
// What it proves (the #31785 regression, S1): several processes, each with
// its own worker and max-jobs 1, build overlapping DAGs at once; all finish;
// every derivation's builder ran exactly once (counted in the run log, by
// derivation); every goal ended successfully in every client (built by one,
// already valid for the others); and while every handler is still alive
// (before they hang up), no lock file in the store is locked by anyone,
// i.e. no finished goal kept a lock. Inside each handler, every event is
// checked: RUN only with the output locks held, no lock held by a finished
// goal, slots within max-jobs.
//
// Usage: mini_daemon <store-dir> [clients]
#include "gk_client.hh"

#include <sys/socket.h>

using namespace harness;
namespace gk = goalkeeper;

namespace {

constexpr milliseconds kLimit{30000};

std::string read_line(int fd) {
  std::string line;
  char c;
  for (;;) {
    ssize_t n = read(fd, &c, 1);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0 || c == '\n')
      return line;
    line.push_back(c);
  }
}

/// The handler of one connection, in its own process.
[[noreturn]] void process_connection(int fd, const client::Dag &dag,
                                     const std::string &runlog, int index,
                                     Gate &start) {
  std::vector<std::string> req = words(read_line(fd));
  CHECK(!req.empty() && req[0] == "wopBuildPaths", "bad request");
  std::vector<std::string> wanted(req.begin() + 1, req.end());
  start.wait(kLimit, "start");

  client::Config cfg;
  cfg.id = "client" + std::to_string(index);
  cfg.runlog = runlog;
  cfg.delay = "0.03";
  std::string answer;
  try {
    client::Result r = client::run(dag, wanted, cfg);
    answer = "ok ran=" + std::to_string(r.ran) + " waits=" + std::to_string(r.waits) +
             " foreign_waits=" + std::to_string(r.audit.foreign_waits) +
             " handoffs=" + std::to_string(r.audit.handoffs) +
             " rechecks=" + std::to_string(r.audit.validity_rechecks) +
             " outcomes=" + client::outcomes_text(r.outcomes);
  } catch (const gk::error &e) {
    answer = std::string("error ") + e.what();
  }
  write_all(fd, answer + "\n");
  // Stay alive until the client hangs up, so that the daemon can check the
  // lock files while every worker process still exists.
  (void)read_line(fd);
  close(fd);
  std::exit(0); // not _exit: let LeakSanitizer check this process
}

} // namespace

int main(int argc, char **argv) {
  CHECK(argc >= 2, "usage: mini_daemon <store-dir> [clients]");
  gk::check_abi();
  const std::string store = argv[1];
  const int nclients = argc > 2 ? std::atoi(argv[2]) : 4;
  CHECK(nclients >= 3, "at least 3 clients");
  const std::string runlog = store + "/builds.log";

  // An overlapping DAG. libB has two outputs (a multi-path lock set).
  client::Dag dag{store,
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
  const std::vector<std::vector<std::string>> requests = {
      {"app1", "app2"}, {"app2", "app3"}, {"app3", "app1", "tool"}, {"top"}};

  Gate start;
  std::vector<int> conns;
  std::vector<pid_t> handlers;
  std::set<std::string> requested;
  for (int i = 0; i < nclients; ++i) {
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    std::fflush(nullptr);
    pid_t pid = fork(); // the daemon's accept loop: one process per connection
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
      close(sv[0]);
      for (int c : conns)
        close(c);
      start.forget_write();
      process_connection(sv[1], dag, runlog, i, start);
    }
    close(sv[1]);
    const auto &req = requests[static_cast<size_t>(i) % requests.size()];
    std::string line = "wopBuildPaths";
    for (auto &r : req)
      line += " " + r;
    write_all(sv[0], line + "\n");
    for (auto &n : dag.closure(req))
      requested.insert(n);
    conns.push_back(sv[0]);
    handlers.push_back(pid);
  }
  auto t0 = clock::now();
  start.open(); // every handler starts building now

  std::vector<std::string> answers(conns.size());
  for (size_t i = 0; i < conns.size(); ++i) {
    pollfd pfd{conns[i], POLLIN, 0};
    auto left = std::chrono::duration_cast<milliseconds>(t0 + kLimit - clock::now());
    CHECK(poll(&pfd, 1, static_cast<int>(std::max<long long>(0, left.count()))) == 1,
          "client %zu did not answer within %lld ms (deadlock?)", i,
          static_cast<long long>(kLimit.count()));
    answers[i] = read_line(conns[i]);
    CHECK(starts_with(answers[i], "ok "), "client %zu answered '%s'", i, answers[i].c_str());
  }
  auto elapsed = std::chrono::duration_cast<milliseconds>(clock::now() - t0);

  // Every handler is still alive. No lock may be held by anyone.
  for (auto &d : dag.drvs)
    for (auto &o : dag.outputs(d))
      CHECK(lock_holder(o) == 0, "%s.lock is still locked (holder %d) after every goal "
            "finished", o.c_str(), static_cast<int>(lock_holder(o)));

  // Every requested derivation was built exactly once, the others never.
  auto runs = run_counts(runlog);
  int total_runs = 0;
  for (auto &d : dag.drvs) {
    int want = requested.count(d.name) ? 1 : 0;
    CHECK(runs[d.name] == want, "%s: builder ran %d times, expected %d", d.name.c_str(),
          runs[d.name], want);
    total_runs += runs[d.name];
    if (want)
      for (auto &o : dag.outputs(d)) {
        std::ifstream in(o);
        std::string content;
        std::getline(in, content);
        CHECK(content == d.name, "%s holds '%s'", o.c_str(), content.c_str());
      }
  }
  // Every goal succeeded in every client, and the RUNs add up to the builds.
  int built = 0, ran = 0;
  for (size_t i = 0; i < answers.size(); ++i) {
    ran += std::stoi(field(answers[i], "ran"));
    std::string outs = field(answers[i], "outcomes");
    std::stringstream ss(outs);
    for (std::string item; std::getline(ss, item, ',');) {
      std::string outcome = item.substr(item.find(':') + 1);
      CHECK(outcome == "built" || outcome == "already-valid", "client %zu: %s", i,
            item.c_str());
      built += outcome == "built";
    }
  }
  CHECK(built == total_runs && ran == total_runs,
        "outcomes say %d built and %d run, the run log %d", built, ran, total_runs);

  for (int c : conns)
    close(c); // hang up: the handlers exit
  for (size_t i = 0; i < handlers.size(); ++i) {
    int st = wait_child(handlers[i], kLimit, "handler");
    CHECK(exited_ok(st), "handler %zu: %s", i, describe_status(st).c_str());
  }
  log("mini_daemon: %d clients, %zu derivations requested, builder runs:", nclients,
      requested.size());
  for (auto &[n, c] : runs)
    log("  %-6s %d", n.c_str(), c);
  for (size_t i = 0; i < answers.size(); ++i)
    log("  client%zu: %s", i, answers[i].c_str());
  log("mini_daemon: all finished in %lld ms, each output built exactly once, no lock "
      "left held",
      static_cast<long long>(elapsed.count()));
  return 0;
}
