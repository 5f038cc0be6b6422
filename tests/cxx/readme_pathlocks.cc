// The drop-in example of README.md (keep them in step). CI builds it against
// an installed goalkeeper with `pkg-config --cflags --libs goalkeeper` and
// -std=c++17 -Wall -Wextra -Wpedantic -Werror.
#include <goalkeeper-pathlocks.hh>
#include <cstdio>
#include <fstream>

namespace nix {                                    // guix-daemon's pathlocks.hh, migrated:
typedef std::set<std::string> PathSet;             //   (already in its types.hh)
typedef goalkeeper::compat::PathLocks PathLocks;   //   instead of class PathLocks
using goalkeeper::compat::pathIsLockedByMe;        //   instead of its pathIsLockedByMe()
} // namespace nix

int main(int argc, char **argv) try {
  using namespace nix;
  std::string store = argc > 1 ? argv[1] : "/tmp/gk-store"; // must exist; see README "Store directories"
  PathSet outputs = {store + "/aaa-hello", store + "/aaa-hello-doc"};
  PathLocks outputLocks;                            // DerivationGoal::tryToBuild, reduced:
  for (auto &o : outputs)
    if (pathIsLockedByMe(o)) return 0;              //   worker.waitForAnyGoal(...)
  if (!outputLocks.lockPaths(outputs, "", false))
    return 0;                                       //   worker.waitForAWhile(...): holds nothing
  for (auto &o : outputs) std::ofstream(o) << "built\n"; // the build
  outputLocks.setDeletion(true);                    // valid now: the lock files may go
  outputLocks.unlock();                             // explicit; the destructor would report it
  PathLocks one(PathSet{store + "/bbb-source"}, "waiting for lock on bbb-source"); // blocks
  one.unlock();
  std::printf("aaa-hello: built, %zu lock(s) held\n", goalkeeper::held_count());
} catch (const std::exception &e) { // goalkeeper::error (or what set_error_hook throws)
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
