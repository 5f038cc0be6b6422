// Lock-level interoperability between the old daemon's PathLocks (POSIX
// fcntl locks, legacy_pathlocks.cc) and goalkeeper's lock sets (OFD locks),
// in two processes sharing one store (L1, L2, L4, L8 across the old/new
// boundary).
//
// What it proves, step by step:
//   A. a goalkeeper lock excludes a legacy F_SETLK try, and a legacy waiter
//      blocked in F_SETLKW on it survives goalkeeper's deletion: it sees the
//      "d" token (st_size != 0), retries, and ends up holding the fresh lock
//      file, which goalkeeper then sees as busy;
//   B. a legacy lock excludes goalkeeper's try and bounded wait (on R); a goalkeeper
//      waiter blocked on it survives the legacy deletion (unlink, then "d")
//      and ends up holding the fresh file, which the legacy side sees as busy;
//   C. all-or-nothing across the boundary: a multi-path try that meets a
//      legacy lock on its second path leaves the first path free;
//   D. self-locks: the legacy code throws on re-locking its own path; the
//      wrapper reports errc::held_by_this_process (never a silent re-grant,
//      never a self-block);
//   E. closing an unrelated descriptor of a lock file drops a POSIX lock
//      (the trap the old code lives with) but not goalkeeper's OFD lock.
//
// Usage: legacy_interop <store-dir>
#include "harness.hh"
#include "legacy_pathlocks.hh"

#include <goalkeeper.hpp>

using namespace harness;
namespace gk = goalkeeper;

namespace {

constexpr milliseconds kLimit{10000};

/// The legacy process: runs the steps the driver asks for, one line each.
[[noreturn]] void legacy_child(const std::string &P, const std::string &Q,
                               const std::string &R, Bus &up, Bus &down) {
  up.keep_write();
  down.keep_read();
  auto deadline = [] { return clock::now() + kLimit; };
  legacy::PathLocks held;
  for (;;) {
    auto cmd = down.next(deadline());
    if (!cmd)
      die("legacy: no command from the driver");
    if (*cmd == "A-try") {
      legacy::PathLocks pl;
      bool got = pl.lockPaths({P}, "", false);
      up.send(got ? "A-try got" : "A-try busy");
    } else if (*cmd == "A-wait") {
      up.send("A-waiting");
      held.lockPaths({P}, "", true); // blocks until goalkeeper releases
      up.send("A-locked stale_retries=" + std::to_string(held.staleRetries));
    } else if (*cmd == "B-release-when-blocked") {
      // The driver is about to block in goalkeeper's acquire(); release
      // (with deletion) only once the kernel shows it blocked on our inode.
      wait_blocked(P, 1, kLimit);
      held.setDeletion(true);
      held.unlock();
      held.setDeletion(false);
      up.send("B-released");
    } else if (*cmd == "B-hold-R") {
      static legacy::PathLocks r; // held until exit
      CHECK(r.lockPaths({R}, "", false), "legacy takes R");
      up.send("B-holding-R");
    } else if (*cmd == "B-try") {
      legacy::PathLocks pl;
      bool got = pl.lockPaths({P}, "", false);
      up.send(got ? "B-try got" : "B-try busy");
    } else if (*cmd == "C-hold-Q") {
      held.lockPaths({Q}, "", false) ? up.send("C-holding") : up.send("C-busy");
    } else if (*cmd == "C-try-P") {
      legacy::PathLocks pl;
      bool got = pl.lockPaths({P}, "", false);
      up.send(got ? "C-try-P got" : "C-try-P busy");
    } else if (*cmd == "C-release") {
      held.unlock();
      up.send("C-released");
    } else if (*cmd == "D-self") {
      legacy::PathLocks a, b;
      if (!a.lockPaths({P}, "", false)) {
        up.send("D-self busy");
        continue;
      }
      std::string what = "no-throw";
      try {
        b.lockPaths({P}, "", false);
      } catch (legacy::Error &e) {
        what = e.what();
      }
      up.send("D-self " + std::string(what.find("deadlock") != std::string::npos
                                          ? "threw-deadlock"
                                          : "did-not-throw"));
    } else if (*cmd == "E-hold-then-close-other-fd") {
      if (!held.lockPaths({P}, "", false)) {
        up.send("E-busy");
        continue;
      }
      // Some unrelated code opens and closes the same file: with POSIX
      // locks this silently drops the lock this process holds.
      int fd = open((P + ".lock").c_str(), O_RDONLY | O_CLOEXEC);
      CHECK(fd >= 0, "open %s.lock", P.c_str());
      close(fd);
      up.send("E-closed");
    } else if (*cmd == "E-try") {
      held.unlock(); // bookkeeping only: the kernel already dropped it
      legacy::PathLocks pl;
      bool got = pl.lockPaths({P}, "", false);
      up.send(got ? "E-try got" : "E-try busy");
    } else if (*cmd == "exit") {
      _exit(0);
    } else {
      die("legacy: unknown command '%s'", cmd->c_str());
    }
  }
}

std::string expect(Bus &up, const std::string &prefix) {
  return up.wait_for([&](const std::string &l) { return starts_with(l, prefix); },
                     kLimit, prefix.c_str());
}

} // namespace

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: legacy_interop <store-dir>");
  gk::check_abi();
  const std::string store = argv[1];
  const std::string P = store + "/aaaa-interop-p", Q = store + "/bbbb-interop-q",
                    R = store + "/rrrr-interop-r";

  Bus up, down;
  pid_t child = fork();
  CHECK(child >= 0, "fork");
  if (child == 0)
    legacy_child(P, Q, R, up, down);
  up.keep_read();
  down.keep_write();

  // A. goalkeeper holds P.
  {
    gk::LockSet s = gk::LockSet::acquire({P});
    down.send("A-try");
    CHECK(expect(up, "A-try") == "A-try busy",
          "a legacy F_SETLK must see goalkeeper's OFD lock as busy");
    CHECK(lock_holder(P) == -1, "F_GETLK must report an OFD lock (pid -1)");
    down.send("A-wait");
    expect(up, "A-waiting");
    wait_blocked(P, 1, kLimit); // the legacy F_SETLKW is parked on our inode
    s.set_deletion(true);
    s.release(); // "d", unlink, unlock: the waiter wakes on a dead inode
    std::string l = expect(up, "A-locked");
    CHECK(std::stoi(field(l, "stale_retries")) >= 1,
          "the legacy waiter must notice the deleted lock file: %s", l.c_str());
    CHECK(lock_holder(P) == child,
          "the legacy client must hold the live lock file (holder %d)",
          static_cast<int>(lock_holder(P)));
    CHECK(!gk::LockSet::try_acquire({P}), "goalkeeper must see the legacy lock");
    log("A ok: gk lock excludes legacy; legacy waiter survived gk deletion (%s)",
        l.c_str());
  }

  // B. the legacy client holds P (from A), and R.
  {
    CHECK(!gk::LockSet::try_acquire({P}), "busy while legacy holds P");
    // The bounded wait uses R, which nothing uses afterwards: a timed-out
    // wait leaves its helper thread blocked on R until R is free, and that
    // thread then takes and drops the lock once (see wait.rs).
    down.send("B-hold-R");
    expect(up, "B-holding-R");
    auto t0 = clock::now();
    CHECK(!gk::LockSet::acquire_for({R}, milliseconds(40)), "timed out");
    CHECK(clock::now() - t0 >= milliseconds(40), "the timeout must be honoured");
    CHECK(gk::held_count() == 0, "a timed-out acquisition holds nothing");
    down.send("B-release-when-blocked");
    gk::LockSet s = gk::LockSet::acquire({P}); // blocks until the legacy release
    expect(up, "B-released");
    CHECK(lock_inode(P) != 0, "goalkeeper re-created the deleted lock file");
    down.send("B-try");
    CHECK(expect(up, "B-try") == "B-try busy",
          "the legacy side must see goalkeeper's lock on the fresh lock file");
    CHECK(gk::is_locked_by_me(P), "registered as held");
    s.set_deletion(true);
    s.release();
    CHECK(lock_inode(P) == 0, "deleted on release");
    CHECK(lock_holder(R) == child, "the legacy client still holds R");
    log("B ok: legacy lock excludes gk (try, 40 ms timeout); gk waiter survived "
        "legacy deletion");
  }

  // C. all-or-nothing across the boundary.
  {
    down.send("C-hold-Q");
    CHECK(expect(up, "C-") == "C-holding", "legacy takes Q");
    CHECK(!gk::LockSet::try_acquire({P, Q}), "Q is busy, so the set is refused");
    CHECK(gk::held_count() == 0 && !gk::is_locked_by_me(P), "P was given back");
    down.send("C-try-P");
    CHECK(expect(up, "C-try-P") == "C-try-P got", "P is free for the legacy side");
    down.send("C-release");
    expect(up, "C-released");
    log("C ok: a refused multi-path set leaves nothing locked");
  }

  // D. self-locks.
  {
    down.send("D-self");
    CHECK(expect(up, "D-self") == "D-self threw-deadlock",
          "the legacy code throws on a self-held lock");
    gk::LockSet s = gk::LockSet::acquire({P});
    bool threw = false;
    try {
      auto again = gk::LockSet::try_acquire({P});
      (void)again;
    } catch (gk::error &e) {
      threw = e.status() == gk::errc::held_by_this_process &&
              e.code() == gk::errc::held_by_this_process;
    }
    CHECK(threw, "goalkeeper reports held_by_this_process");
    s.release();
    log("D ok: self-locks reported on both sides");
  }

  // E. closing another descriptor of the lock file.
  {
    gk::LockSet s = gk::LockSet::acquire({P});
    int fd = open((P + ".lock").c_str(), O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0, "open");
    close(fd); // an unrelated descriptor of the same file
    down.send("A-try");
    CHECK(expect(up, "A-try") == "A-try busy", "the OFD lock survives the close");
    s.release();
    down.send("E-hold-then-close-other-fd");
    CHECK(expect(up, "E-") == "E-closed", "legacy took P");
    // The old protocol lost its lock without noticing:
    auto stolen = gk::LockSet::try_acquire({P});
    CHECK(stolen.has_value(), "POSIX lock dropped by the unrelated close (the old trap)");
    stolen->release();
    down.send("E-try");
    CHECK(expect(up, "E-try") == "E-try got", "free again");
    log("E ok: OFD lock survives closing another fd; the POSIX lock does not");
  }

  down.send("exit");
  int st = wait_child(child, kLimit, "legacy client");
  CHECK(exited_ok(st), "legacy client: %s", describe_status(st).c_str());
  CHECK(gk::held_count() == 0, "nothing held at the end");
  log("legacy_interop: all steps passed");
  return 0;
}
