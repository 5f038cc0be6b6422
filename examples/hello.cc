// c++ -std=c++17 -o hello examples/hello.cc $(pkg-config --cflags --libs goalkeeper)
#include <goalkeeper.hpp>
#include <poll.h>
#include <cstdio>
#include <fstream>
namespace gk = goalkeeper;

int main(int argc, char **argv) try {
  std::string out = std::string(argc > 1 ? argv[1] : "/tmp/gk-store") + "/ccc-hello";
  gk::Worker w;                                             // one per client request
  gk::Goal hello = w.add_goal(gk::GoalKind::build, {out});
  for (gk::Event ev = w.next_event(); ev.kind != gk::Event::Kind::done; ev = w.next_event()) {
    if (ev.kind == gk::Event::Kind::run) {                  // inputs built, output locks held
      std::ofstream(out) << "hello\n";                      // your builder
      w.report(ev.goal, gk::Outcome::built);                // the locks are released here
    } else if (ev.kind == gk::Event::Kind::wait) {          // another process holds a lock:
      pollfd p{ev.fd, POLLIN, 0};                           // poll this with your builders' fds
      poll(&p, 1, ev.poll_timeout());
    }
  }
  std::printf("ccc-hello: %s\n", gk::outcome_name(w.result(hello).outcome));
  w.close();
} catch (const gk::error &e) {                              // every failure, with its message
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
