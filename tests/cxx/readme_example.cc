// The C++ example of README.md (keep them in step). CI builds it against an
// installed goalkeeper with `pkg-config --cflags --libs goalkeeper`.
#include <goalkeeper.hpp>
#include <poll.h>
#include <cstdio>
#include <fstream>
namespace gk = goalkeeper;

int main(int argc, char **argv) try {
  std::string store = argc > 1 ? argv[1] : "/tmp/gk-store"; // must exist, mode 0700 or 1777
  // Path locks: all or nothing; release explicitly (delete once the paths are valid).
  gk::LockSet locks = gk::LockSet::acquire({store + "/aaa-hello", store + "/bbb-hello-doc"});
  locks.release();
  // The scheduler: one worker per request, driven by a pull loop.
  gk::Worker w;
  gk::Goal hello = w.add_goal(gk::GoalKind::build, {store + "/ccc-hello"});
  for (gk::Event ev = w.next_event(); ev.kind != gk::Event::Kind::done; ev = w.next_event()) {
    if (ev.kind == gk::Event::Kind::run) { // inputs done, slot taken, output locks held
      std::ofstream(store + "/ccc-hello") << "hello\n"; // the "builder"
      w.report(ev.goal, gk::Outcome::built);           // its locks are released right here
    } else if (ev.kind == gk::Event::Kind::wait) {     // add your builders' fds to this poll
      pollfd p{ev.fd, POLLIN, 0};
      poll(&p, 1, ev.poll_timeout());
    }
  }
  std::printf("ccc-hello: %s\n", gk::outcome_name(w.result(hello).outcome));
  w.close();
} catch (const gk::error &e) { // e.code() is in gk::error_category(); e.what() has the message
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
