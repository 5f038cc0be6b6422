// The store database through goalkeeper.hpp: goalkeeper::StoreDb (the
// owner of a gk_store_db), store_path_valid() (one call), and
// Worker::set_store_database(), with real SQLite files written here through
// the system libsqlite3 (the library goalkeeper uses too). Every error is a
// goalkeeper::error whose status names the case and whose message names
// the file; a database that cannot answer never makes a goal valid.
//
// Usage: store_db_test <store-dir>
#include "harness.hh"

#include <goalkeeper.hpp>

#include <sqlite3.h>

using namespace harness;
namespace gk = goalkeeper;

namespace {

std::string g_store;
std::string sp(const std::string &name) { return g_store + "/" + name; }

void sql(sqlite3 *db, const std::string &text) {
  char *err = nullptr;
  if (sqlite3_exec(db, text.c_str(), nullptr, nullptr, &err) != SQLITE_OK)
    die("sqlite: %s: %s", text.c_str(), err ? err : "?");
}

/// A database with Guix's ValidPaths in `journal` mode, with `paths`.
std::string create_db(const std::string &name, const char *journal,
                      std::initializer_list<std::string> paths) {
  std::string file = sp(name);
  sqlite3 *db = nullptr;
  CHECK(sqlite3_open(file.c_str(), &db) == SQLITE_OK, "open %s", file.c_str());
  sql(db, std::string("pragma journal_mode = ") + journal);
  sql(db, "create table ValidPaths (id integer primary key autoincrement not null, "
          "path text unique not null, hash text not null, registrationTime integer "
          "not null, deriver text, narSize integer)");
  for (const auto &p : paths)
    sql(db, "insert into ValidPaths (path, hash, registrationTime) values ('" + p +
                "', 'sha256:0', 1)");
  CHECK(sqlite3_close(db) == SQLITE_OK, "close");
  return file;
}

void register_path(const std::string &file, const std::string &path) {
  sqlite3 *db = nullptr;
  CHECK(sqlite3_open(file.c_str(), &db) == SQLITE_OK, "open");
  sql(db, "insert into ValidPaths (path, hash, registrationTime) values ('" + path +
              "', 'sha256:0', 1)");
  CHECK(sqlite3_close(db) == SQLITE_OK, "close");
}

/// A connection of this process holding an exclusive transaction, as the
/// daemon's own connection would while it commits.
struct Exclusive {
  sqlite3 *db = nullptr;
  explicit Exclusive(const std::string &file) {
    CHECK(sqlite3_open(file.c_str(), &db) == SQLITE_OK, "open");
    sql(db, "begin exclusive");
  }
  ~Exclusive() {
    sql(db, "rollback");
    sqlite3_close(db);
  }
};

void write_file(const std::string &file, const std::string &bytes) {
  std::ofstream(file, std::ios::binary) << bytes;
}

/// Runs `f`, which must throw gk::error with status `want` and a message
/// naming `names`; returns the message.
template <class F>
std::string expect_error(gk::errc want, const std::string &names, F f, const char *what) {
  try {
    f();
  } catch (const gk::error &e) {
    CHECK(e.status() == want, "%s: expected %s, got %s (%s)", what, gk::status_name(want),
          gk::status_name(e.status()), e.what());
    CHECK(e.message().find(names) != std::string::npos, "%s: message does not name %s: %s",
          what, names.c_str(), e.what());
    return e.message();
  }
  die("%s: expected %s, nothing thrown", what, gk::status_name(want));
}

std::string g_good, g_rollback, g_garbage, g_empty, g_no_table, g_valid, g_unregistered;

void make_databases() {
  g_valid = sp("aaa-valid");
  g_unregistered = sp("bbb-unregistered");
  g_good = create_db("db.sqlite", "wal", {g_valid});
  g_rollback = create_db("rollback.sqlite", "delete", {g_valid});
  g_garbage = sp("garbage.sqlite");
  write_file(g_garbage, std::string(4096, 'g'));
  g_empty = sp("empty.sqlite");
  write_file(g_empty, "");
  g_no_table = sp("other.sqlite");
  sqlite3 *db = nullptr;
  CHECK(sqlite3_open(g_no_table.c_str(), &db) == SQLITE_OK, "open");
  sql(db, "create table Other (x)");
  sqlite3_close(db);
}

void test_statuses() {
  CHECK(std::string(gk::status_name(gk::errc::store_db_missing)) ==
            "GK_ERROR_STORE_DB_MISSING",
        "name");
  CHECK(std::string(gk::status_name(gk::errc::store_db_locked)) == "GK_ERROR_STORE_DB_LOCKED",
        "name");
  CHECK(std::error_code(gk::errc::store_db) == gk::make_error_code(gk::errc::store_db),
        "error code");
}

void test_open_errors() {
  using gk::errc;
  expect_error(errc::invalid_path, "var/guix/db/db.sqlite",
               [] { gk::StoreDb db("var/guix/db/db.sqlite"); }, "relative");
  expect_error(errc::store_db_missing, sp("missing.sqlite"),
               [] { gk::StoreDb db(sp("missing.sqlite")); }, "missing");
  expect_error(errc::store_db_not_sqlite, g_store, [] { gk::StoreDb db(g_store); },
               "a directory");
  expect_error(errc::store_db_not_sqlite, g_garbage, [] { gk::StoreDb db(g_garbage); },
               "garbage");
  expect_error(errc::store_db_no_valid_paths, g_empty, [] { gk::StoreDb db(g_empty); },
               "empty");
  expect_error(errc::store_db_no_valid_paths, g_no_table, [] { gk::StoreDb db(g_no_table); },
               "no ValidPaths");
  {
    Exclusive x(g_rollback);
    expect_error(errc::store_db_locked, g_rollback,
                 [] { gk::StoreDb db(g_rollback, std::chrono::milliseconds(50)); }, "locked");
  }
  expect_error(errc::invalid_path, "NUL",
               [] { gk::StoreDb db(std::string_view("/a\0b", 4)); }, "NUL inside");
  expect_error(errc::invalid_argument, "busy_timeout",
               [] { gk::StoreDb db(g_good, std::chrono::milliseconds(-1)); }, "timeout");
  log("open errors ok");
}

void test_queries() {
  gk::StoreDb db(g_good);
  CHECK(db && db.handle() != 0, "open");
  CHECK(db.is_valid(g_valid), "registered");
  CHECK(!db.is_valid(g_unregistered), "not registered");
  auto v = db.valid_paths({g_unregistered, g_valid, g_valid});
  CHECK(v.size() == 3 && !v[0] && v[1] && v[2], "batch in order");
  CHECK(db.valid_paths(std::vector<std::string>{}).empty(), "empty batch");
  expect_error(gk::errc::invalid_path, g_good, [&] { (void)db.is_valid("relative/x"); },
               "relative store path");
  expect_error(gk::errc::invalid_path, "NUL",
               [&] { (void)db.is_valid(std::string_view("/a\0b", 4)); }, "NUL");
  // Move-only ownership.
  gk::StoreDb moved(std::move(db));
  CHECK(!db && moved.is_valid(g_valid), "moved");
  gk::StoreDb other(g_rollback);
  other = std::move(moved);
  CHECK(other.is_valid(g_valid), "move-assigned");
  other.close();
  expect_error(gk::errc::stale_handle, "", [&] { other.close(); }, "double close");
  expect_error(gk::errc::stale_handle, "", [&] { (void)other.is_valid(g_valid); },
               "use after close");
  // One call.
  CHECK(gk::store_path_valid(g_good, g_valid), "one call: valid");
  CHECK(!gk::store_path_valid(g_good, g_unregistered), "one call: not valid");
  expect_error(gk::errc::store_db_missing, sp("nope.sqlite"),
               [] { (void)gk::store_path_valid(sp("nope.sqlite"), g_valid); }, "one call");
  expect_error(gk::errc::invalid_path, g_good,
               [] { (void)gk::store_path_valid(g_good, "rel"); }, "one call, relative");
  log("queries ok");
}

/// A database that turns bad under a StoreDb: locked, then back.
void test_turning_bad() {
  gk::StoreDb db(g_rollback, std::chrono::milliseconds(50));
  CHECK(db.is_valid(g_valid), "valid");
  {
    Exclusive x(g_rollback);
    expect_error(gk::errc::store_db_locked, g_rollback, [&] { (void)db.is_valid(g_valid); },
                 "locked");
    expect_error(gk::errc::store_db_locked, "50 ms", [&] { (void)db.valid_paths({g_valid}); },
                 "locked batch");
  }
  CHECK(db.is_valid(g_valid), "answers again");
  log("turning bad ok");
}

gk::Event next_non_wait(gk::Worker &w) {
  for (int i = 0; i < 1000; i++) {
    gk::Event ev = w.next_event();
    if (ev.kind != gk::Event::Kind::wait)
      return ev;
    pollfd p{ev.fd, POLLIN, 0};
    poll(&p, 1, ev.poll_timeout() < 0 || ev.poll_timeout() > 100 ? 100 : ev.poll_timeout());
  }
  die("no event");
}

void test_worker() {
  gk::WorkerOptions o;
  o.keep_going = true;
  gk::Worker w(o);
  int calls = 0;
  w.set_valid_path([&calls](std::string_view) {
    ++calls;
    return false;
  });
  // Bad databases throw, and the worker keeps its predicate.
  expect_error(gk::errc::store_db_missing, sp("missing.sqlite"),
               [&] { w.set_store_database(sp("missing.sqlite")); }, "worker: missing");
  expect_error(gk::errc::store_db_not_sqlite, g_garbage,
               [&] { w.set_store_database(g_garbage); }, "worker: garbage");
  expect_error(gk::errc::invalid_path, "db.sqlite",
               [&] { w.set_store_database("db.sqlite"); }, "worker: relative");
  auto g0 = w.add_goal(gk::GoalKind::build, {sp("p0")});
  gk::Event ev = next_non_wait(w);
  CHECK(ev.kind == gk::Event::Kind::run && ev.goal == g0 && calls > 0, "the predicate ran");
  w.cancel(g0);
  // The database replaces the predicate: registered means valid, an
  // existing but unregistered output is built.
  w.set_store_database(g_good);
  calls = 0;
  auto gv = w.add_goal(gk::GoalKind::build, {g_valid});
  ev = next_non_wait(w);
  CHECK(ev.kind == gk::Event::Kind::finished && ev.goal == gv &&
            ev.outcome == gk::Outcome::already_valid,
        "registered: already valid");
  std::string written = sp("ccc-written");
  write_file(written, "half-built");
  auto gw = w.add_goal(gk::GoalKind::build, {written});
  ev = next_non_wait(w);
  CHECK(ev.kind == gk::Event::Kind::run && ev.goal == gw, "exists, unregistered: run");
  CHECK(calls == 0, "the predicate is gone");
  // The success reported while the output is unregistered is a failure.
  w.report(gw, gk::Outcome::built);
  CHECK(w.result(gw).outcome == gk::Outcome::failed, "unregistered success fails");
  bool logged = false;
  for (const auto &l : w.take_log())
    logged |= l.find(written) != std::string::npos && l.find("not valid") != std::string::npos;
  CHECK(logged, "the log says why");
  // Back to existence: the half-built output now counts as valid, which is
  // exactly why a real store needs the database.
  w.reset_validity();
  gk::Worker w2(o);
  auto gy = w2.add_goal(gk::GoalKind::build, {written});
  ev = next_non_wait(w2);
  CHECK(ev.kind == gk::Event::Kind::finished && ev.goal == gy &&
            ev.outcome == gk::Outcome::already_valid,
        "existence default: already valid");
  w2.close();
  w.close();
  log("worker ok");
}

/// A worker whose database is overwritten with garbage (in place) while
/// the builder runs: the reported success is recorded as a failure.
void test_worker_garbage_at_report() {
  std::string db = create_db("worker.sqlite", "delete", {});
  gk::Worker w;
  w.set_store_database(db);
  std::string out = sp("ddd-out");
  auto g = w.add_goal(gk::GoalKind::build, {out});
  gk::Event ev = next_non_wait(w);
  CHECK(ev.kind == gk::Event::Kind::run && ev.goal == g, "run");
  write_file(out, "built");
  register_path(db, out);
  struct stat st;
  CHECK(stat(db.c_str(), &st) == 0, "stat");
  {
    std::fstream f(db, std::ios::in | std::ios::out | std::ios::binary);
    std::string junk(static_cast<size_t>(st.st_size), 'j');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
    CHECK(f.good(), "overwrite");
  }
  w.report(g, gk::Outcome::built);
  CHECK(w.result(g).outcome == gk::Outcome::failed, "a database that cannot answer");
  bool logged = false;
  for (const auto &l : w.take_log())
    logged |= l.find(db) != std::string::npos &&
              l.find("not an SQLite database") != std::string::npos &&
              l.find("recorded as failed") != std::string::npos;
  CHECK(logged, "the log names the file and the error");
  CHECK(!gk::is_locked_by_me(out), "released");
  w.close();
  log("worker garbage at report ok");
}

} // namespace

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: store_db_test <store-dir>");
  g_store = argv[1];
  make_databases();
  test_statuses();
  test_open_errors();
  test_queries();
  test_turning_bad();
  test_worker();
  test_worker_garbage_at_report();
  CHECK(gk::held_count() == 0, "nothing held at the end");
  log("store_db_test: all passed");
  return 0;
}
