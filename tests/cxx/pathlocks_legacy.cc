// The drop-in PathLocks (goalkeeper-pathlocks.hh, OFD locks) against the
// old daemon's PathLocks (legacy_pathlocks.cc: POSIX fcntl locks, the
// st_size stale check, unlink + "d"), in separate processes sharing a store:
// a daemon migrated with the typedef and an old one, side by side.
//
//   A. drop-in holds P: a legacy try is busy; a legacy waiter blocked on P
//      survives the drop-in's deletion (stale retry) and holds the fresh
//      lock file, which the drop-in then sees busy;
//   B. legacy holds P: the drop-in's try is false (nothing held); its wait
//      prints the message once, survives the legacy deletion, and holds
//      the fresh lock file, which the legacy side then sees busy; the
//      drop-in's deletion leaves P free for the legacy side;
//   C. all or nothing across the boundary: a drop-in set that meets a
//      legacy lock leaves its other path free for the legacy side;
//   D. waiting for two paths, the difference (G2): a legacy waiter holds
//      the first path while it blocks on the second; a drop-in waiter
//      holds nothing while it blocks, so the first path stays usable.
//
// Usage: pathlocks_legacy <store-dir>
#include "harness.hh"
#include "legacy_pathlocks.hh"

#include <goalkeeper-pathlocks.hh>

using namespace harness;
namespace gk = goalkeeper;
using gk::compat::PathLocks;
using gk::compat::PathSet;

namespace {

constexpr milliseconds kLimit{20000};

std::vector<std::string> g_messages;
void record_message(const std::string &m) { g_messages.push_back(m); }

// legacy::PathLocks::lockPaths is (paths, wait) on main and becomes
// guix-daemon's (paths, waitMsg, wait) in the branch that makes the peer
// exactly like the daemon; this calls whichever the peer has.
template <class PL>
auto legacy_lock(PL &pl, const std::set<std::string> &paths, bool wait, int)
    -> decltype(pl.lockPaths(paths, std::string(), wait)) {
  return pl.lockPaths(paths, std::string(), wait);
}
template <class PL>
bool legacy_lock(PL &pl, const std::set<std::string> &paths, bool wait, long) {
  return pl.lockPaths(paths, wait);
}
bool legacy_lock(legacy::PathLocks &pl, const std::set<std::string> &paths, bool wait) {
  return legacy_lock(pl, paths, wait, 0);
}

/// The legacy daemon: runs the driver's commands, one reply line each.
[[noreturn]] void legacy_child(const std::string &P, const std::string &Q,
                               const std::string &A, const std::string &Z, Bus &up,
                               Bus &down) {
  up.keep_write();
  down.keep_read();
  legacy::PathLocks held;
  auto try_lock = [](const std::set<std::string> &paths) {
    legacy::PathLocks pl;
    bool got = legacy_lock(pl, paths, false);
    pl.unlock();
    return got;
  };
  for (;;) {
    auto cmd = down.next(clock::now() + kLimit);
    if (!cmd)
      die("legacy: no command from the driver");
    if (*cmd == "try-P") {
      up.send(try_lock({P}) ? "try-P got" : "try-P busy");
    } else if (*cmd == "try-P-delete") {
      legacy::PathLocks pl;
      bool got = legacy_lock(pl, {P}, false);
      pl.setDeletion(true);
      pl.unlock();
      up.send(got ? "try-P-delete got" : "try-P-delete busy");
    } else if (*cmd == "wait-P") {
      up.send("waiting-P");
      legacy_lock(held, {P}, true); // blocks until the drop-in releases
      up.send("locked-P stale_retries=" + std::to_string(held.staleRetries));
    } else if (*cmd == "release-P-when-blocked") {
      wait_blocked(P, 1, kLimit); // the drop-in is parked on our inode
      held.setDeletion(true);
      held.unlock();
      held.setDeletion(false);
      up.send("released-P");
    } else if (*cmd == "hold-Q") {
      up.send(legacy_lock(held, {Q}, false) ? "hold-Q holding" : "hold-Q busy");
    } else if (*cmd == "release") {
      held.unlock();
      up.send("released");
    } else if (*cmd == "wait-AZ") {
      // Blocks on Z while holding A: the old per-path loop.
      up.send("waiting-AZ");
      legacy_lock(held, {A, Z}, true);
      up.send("locked-AZ");
    } else if (*cmd == "hold-Z") {
      up.send(legacy_lock(held, {Z}, false) ? "hold-Z holding" : "hold-Z busy");
    } else if (*cmd == "release-Z-when-blocked") {
      wait_blocked(Z, 1, kLimit);
      held.unlock();
      up.send("released-Z");
    } else if (*cmd == "exit") {
      _exit(0);
    } else {
      die("legacy: unknown command '%s'", cmd->c_str());
    }
  }
}

std::string expect(Bus &up, const std::string &prefix) {
  return up.wait_for([&](const std::string &l) { return starts_with(l, prefix); }, kLimit,
                     prefix.c_str());
}

} // namespace

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: pathlocks_legacy <store-dir>");
  gk::check_abi();
  gk::compat::set_wait_message_sink(&record_message);
  const std::string store = argv[1];
  const std::string P = store + "/pppp-shared", Q = store + "/qqqq-shared",
                    A = store + "/aaaa-first", Z = store + "/zzzz-second";

  Bus up, down;
  pid_t child = fork();
  CHECK(child >= 0, "fork");
  if (child == 0)
    legacy_child(P, Q, A, Z, up, down);
  up.keep_read();
  down.keep_write();

  try {
    // A. the drop-in holds P; the legacy side waits and survives its deletion.
    {
      PathLocks pl;
      CHECK(pl.lockPaths({P}, "", false), "drop-in locks P");
      down.send("try-P");
      CHECK(expect(up, "try-P") == "try-P busy", "legacy F_SETLK must see the drop-in's lock");
      down.send("wait-P");
      expect(up, "waiting-P");
      wait_blocked(P, 1, kLimit); // the legacy F_SETLKW is parked on our inode
      pl.setDeletion(true);
      pl.unlock();
      std::string l = expect(up, "locked-P");
      CHECK(std::stoi(field(l, "stale_retries")) >= 1,
            "the legacy waiter must notice the deleted lock file: %s", l.c_str());
      CHECK(lock_holder(P) == child, "the legacy client holds the live lock file (holder %d)",
            static_cast<int>(lock_holder(P)));
      CHECK(!pl.lockPaths({P}, "", false), "the drop-in sees the legacy lock");
      CHECK(pl.empty() && gk::held_count() == 0, "and holds nothing");
      log("A ok: drop-in excludes legacy; the legacy waiter survived the drop-in's deletion "
          "(%s)",
          l.c_str());
    }

    // B. the legacy side holds P (from A); the drop-in waits and survives its deletion.
    {
      PathLocks pl;
      CHECK(!pl.lockPaths({P}, "", false) && pl.empty(), "busy while legacy holds P");
      down.send("release-P-when-blocked");
      g_messages.clear();
      CHECK(pl.lockPaths({P}, "waiting for lock on pppp-shared", true), "the drop-in waits");
      expect(up, "released-P");
      CHECK(g_messages.size() == 1, "the wait message once (%zu)", g_messages.size());
      CHECK(lock_inode(P) != 0, "the drop-in re-created the deleted lock file");
      CHECK(lock_holder(P) == -1, "an OFD lock holds it");
      down.send("try-P");
      CHECK(expect(up, "try-P") == "try-P busy",
            "the legacy side must see the drop-in's lock on the fresh file");
      pl.setDeletion(true);
      pl.unlock();
      CHECK(lock_inode(P) == 0, "deleted on unlock()");
      down.send("try-P-delete");
      CHECK(expect(up, "try-P-delete") == "try-P-delete got", "free for the legacy side");
      CHECK(lock_inode(P) == 0, "and the legacy side deleted it in turn");
      log("B ok: legacy excludes the drop-in; the drop-in waiter survived the legacy "
          "deletion, message printed once");
    }

    // C. all or nothing across the boundary.
    {
      down.send("hold-Q");
      CHECK(expect(up, "hold-Q") == "hold-Q holding", "legacy takes Q");
      PathLocks pl;
      CHECK(!pl.lockPaths({P, Q}, "", false), "Q is busy, so the set is refused");
      CHECK(pl.empty() && gk::held_count() == 0, "nothing held");
      down.send("try-P");
      CHECK(expect(up, "try-P") == "try-P got", "P is free for the legacy side");
      down.send("release");
      expect(up, "released");
      log("C ok: a refused set leaves its other path free for the legacy side");
    }

    // D. waiting for {A, Z} while Z is busy: what each waiter holds meanwhile.
    {
      // The legacy waiter, while the drop-in holds Z.
      PathLocks z;
      CHECK(z.lockPaths({Z}, "", false), "drop-in takes Z");
      down.send("wait-AZ");
      expect(up, "waiting-AZ");
      wait_blocked(Z, 1, kLimit);
      PathLocks probe;
      bool a_free_legacy = probe.lockPaths({A}, "", false);
      probe.unlock();
      CHECK(!a_free_legacy && lock_holder(A) == child,
            "the legacy waiter holds A while it blocks on Z (guix-daemon's loop)");
      z.unlock();
      expect(up, "locked-AZ");
      down.send("release");
      expect(up, "released");

      // The drop-in waiter (another process), while the legacy side holds Z.
      down.send("hold-Z");
      CHECK(expect(up, "hold-Z") == "hold-Z holding", "legacy takes Z");
      Bus wup;
      pid_t w = fork();
      CHECK(w >= 0, "fork");
      if (w == 0) {
        wup.keep_write();
        PathLocks both;
        bool ok = both.lockPaths({A, Z}, "", true);
        wup.send(ok ? "W locked-AZ" : "W false");
        both.unlock();
        _exit(0);
      }
      wup.keep_read();
      wait_blocked(Z, 1, kLimit); // the drop-in waiter is parked on Z
      bool a_free_dropin = probe.lockPaths({A}, "", false);
      probe.unlock();
      CHECK(a_free_dropin, "A is free while the drop-in waiter blocks on Z (G2)");
      down.send("release-Z-when-blocked");
      expect(up, "released-Z");
      CHECK(expect(wup, "W") == "W locked-AZ", "the drop-in waiter got both");
      CHECK(exited_ok(wait_child(w, kLimit, "drop-in waiter")), "drop-in waiter");
      log("D ok: a legacy waiter holds A while blocked on Z; a drop-in waiter holds nothing");
    }
  } catch (const std::exception &e) {
    die("unexpected exception: %s", e.what());
  }

  down.send("exit");
  int st = wait_child(child, kLimit, "legacy client");
  CHECK(exited_ok(st), "legacy client: %s", describe_status(st).c_str());
  CHECK(gk::held_count() == 0, "nothing held at the end");
  log("pathlocks_legacy: all steps passed");
  return 0;
}
