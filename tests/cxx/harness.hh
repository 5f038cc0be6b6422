// Small helpers shared by the C++ test programs: checks that exit with a
// message, pipes, a message bus from child processes to the test driver,
// one-shot gates, real builder processes, run-count logs, and lock probes.
// Header-only; every wait is bounded.
#ifndef GK_TEST_HARNESS_HH
#define GK_TEST_HARNESS_HH

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace harness {

using clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// Prints a message prefixed with the pid and exits 1 (from any process).
[[noreturn]] inline void die(const char *fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "[pid %d] FAILED: %s\n", static_cast<int>(getpid()), buf);
  std::fflush(stderr);
  _exit(1);
}

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "[pid %d] %s:%d: check failed: %s\n  ",             \
                   static_cast<int>(getpid()), __FILE__, __LINE__, #cond);     \
      ::harness::die(__VA_ARGS__);                                             \
    }                                                                          \
  } while (0)

inline void log(const char *fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stdout, "%s\n", buf);
  std::fflush(stdout);
}

inline void write_all(int fd, const std::string &s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = write(fd, s.data() + off, s.size() - off);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0)
      die("write to fd %d: %s", fd, std::strerror(errno));
    off += static_cast<size_t>(n);
  }
}

struct Pipe {
  int r = -1, w = -1;
  static Pipe make() {
    int p[2];
    if (pipe2(p, O_CLOEXEC) == -1)
      die("pipe2: %s", std::strerror(errno));
    return {p[0], p[1]};
  }
  void close_r() {
    if (r >= 0)
      close(r);
    r = -1;
  }
  void close_w() {
    if (w >= 0)
      close(w);
    w = -1;
  }
};

/// A one-shot broadcast barrier: every process holding the read end waits
/// for EOF, which comes when the last write end is closed. Children must
/// call forget_write() right after fork.
struct Gate {
  Pipe p = Pipe::make();
  Gate() = default;
  Gate(const Gate &) = delete;
  Gate &operator=(const Gate &) = delete;
  ~Gate() {
    p.close_r();
    p.close_w();
  }
  void open() { p.close_w(); }
  void forget_write() { p.close_w(); }
  int read_fd() const { return p.r; }
  /// Blocks until the gate opens (at most `limit`).
  void wait(milliseconds limit, const char *what) {
    pollfd pfd{p.r, POLLIN, 0};
    auto deadline = clock::now() + limit;
    for (;;) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - clock::now());
      if (left.count() <= 0)
        die("gate '%s' did not open within %lld ms", what,
            static_cast<long long>(limit.count()));
      int n = poll(&pfd, 1, static_cast<int>(left.count()));
      if (n == -1 && errno == EINTR)
        continue;
      if (n == 1) {
        char c;
        ssize_t rd = read(p.r, &c, 1);
        if (rd == 0)
          return;
        if (rd == -1 && errno == EINTR)
          continue;
        die("gate '%s': unexpected data or error", what);
      }
    }
  }
};

/// Lines from many processes to the driver over one pipe. Lines shorter
/// than PIPE_BUF are written atomically, so they never interleave.
class Bus {
public:
  Bus() : p_(Pipe::make()) {}
  /// In a writer (e.g. a child after fork): keep only the write end.
  void keep_write() { p_.close_r(); }
  /// In the reader (e.g. the driver, after forking every child).
  void keep_read() { p_.close_w(); }
  void send(const std::string &line) const {
    if (line.size() + 1 >= PIPE_BUF)
      die("bus line too long");
    write_all(p_.w, line + "\n");
  }
  /// The next line, or nullopt at the deadline (or EOF).
  std::optional<std::string> next(clock::time_point deadline) {
    for (;;) {
      auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<milliseconds>(deadline - clock::now());
      if (left.count() <= 0)
        return std::nullopt;
      pollfd pfd{p_.r, POLLIN, 0};
      int n = poll(&pfd, 1, static_cast<int>(left.count()));
      if (n == -1 && errno == EINTR)
        continue;
      if (n != 1)
        continue;
      char tmp[4096];
      ssize_t rd = read(p_.r, tmp, sizeof tmp);
      if (rd == -1 && errno == EINTR)
        continue;
      if (rd <= 0)
        return std::nullopt;
      buf_.append(tmp, static_cast<size_t>(rd));
    }
  }
  /// Reads lines until `pred` accepts one; every line is also passed to
  /// `seen` (for bookkeeping). Dies at the deadline.
  std::string wait_for(const std::function<bool(const std::string &)> &pred,
                       milliseconds limit, const char *what,
                       const std::function<void(const std::string &)> &seen = {}) {
    auto deadline = clock::now() + limit;
    for (;;) {
      auto line = next(deadline);
      if (!line)
        die("timed out after %lld ms waiting for %s",
            static_cast<long long>(limit.count()), what);
      if (seen)
        seen(*line);
      if (pred(*line))
        return *line;
    }
  }

private:
  Pipe p_;
  std::string buf_;
};

inline bool starts_with(const std::string &s, const std::string &prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

inline std::vector<std::string> words(const std::string &s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;)
    out.push_back(w);
  return out;
}

/// The value of "key=value" in a line of words, or "".
inline std::string field(const std::string &line, const std::string &key) {
  for (auto &w : words(line))
    if (starts_with(w, key + "="))
      return w.substr(key.size() + 1);
  return "";
}

// ---------------------------------------------------------------------------
// Builders

/// The builder: a real /bin/sh process. It checks that its inputs exist
/// (they must have been built first), appends one line to the run log
/// (O_APPEND through >>, so concurrent builders never lose a line), waits
/// at its gate if it has one, takes a little time, and writes each of its
/// outputs atomically (a temporary file renamed into place), so an output
/// exists only once complete: existence is validity here.
inline const char *builder_script() {
  return "set -e\n"
         "for i in $inputs; do\n"
         "  [ -e \"$i\" ] || { echo \"builder $name: missing input $i\" >&2; exit 3; }\n"
         "done\n"
         "printf '%s %s %s\\n' \"$name\" \"$client\" \"$$\" >> \"$runlog\"\n"
         "if [ -n \"$gate\" ]; then\n"
         "  st=0; read -r _ <&9 || st=$?\n"  // 1: EOF, the gate opened
         "  [ \"$st\" -le 1 ] || { echo \"builder $name: no gate on fd 9\" >&2; exit 4; }\n"
         "fi\n"
         "if [ -n \"$delay\" ]; then sleep \"$delay\"; fi\n"
         "for o in $outs; do\n"
         "  tmp=\"$o.tmp.$$\"\n"
         "  printf '%s\\n' \"$name\" > \"$tmp\"\n"
         "  mv \"$tmp\" \"$o\"\n"
         "done\n";
}

struct BuilderSpec {
  std::string name;
  std::vector<std::string> outs;   // output paths
  std::vector<std::string> inputs; // paths that must exist
  std::string runlog;
  std::string client; // who ran it (for the run log)
  std::string delay;  // seconds, for sleep(1); "" for none
  int gate_fd = -1;   // read end of a Gate, or -1
  int log_fd = -1;    // stdout/stderr of the builder, or -1 to inherit
};

/// fork + execve of /bin/sh -c <builder_script>. Everything the child needs
/// is prepared before fork: the child only calls async-signal-safe
/// functions (the parent may have threads).
inline pid_t spawn_builder(const BuilderSpec &b) {
  auto join = [](const std::vector<std::string> &v) {
    std::string s;
    for (auto &i : v)
      s += (s.empty() ? "" : " ") + i;
    return s;
  };
  std::string inputs = join(b.inputs);
  std::vector<std::string> env = {
      "PATH=/usr/bin:/bin",    "outs=" + join(b.outs), "name=" + b.name,
      "inputs=" + inputs,      "runlog=" + b.runlog, "client=" + b.client,
      "delay=" + b.delay,      std::string("gate=") + (b.gate_fd >= 0 ? "1" : ""),
  };
  std::vector<char *> envp;
  for (auto &e : env)
    envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string sh = "/bin/sh", dash_c = "-c", script = builder_script();
  char *argv[] = {sh.data(), dash_c.data(), script.data(), nullptr};
  pid_t pid = fork();
  if (pid == -1)
    die("fork: %s", std::strerror(errno));
  if (pid == 0) {
    // dup2(fd, fd) would keep FD_CLOEXEC: clear it by hand in that case.
    auto place = [](int from, int to) {
      return from == to ? fcntl(to, F_SETFD, 0) : dup2(from, to);
    };
    if (b.gate_fd >= 0 && place(b.gate_fd, 9) == -1)
      _exit(126);
    if (b.log_fd >= 0 && (place(b.log_fd, STDOUT_FILENO) == -1 ||
                          place(b.log_fd, STDERR_FILENO) == -1))
      _exit(126);
    execve(argv[0], argv, envp.data());
    _exit(127);
  }
  return pid;
}

/// Builder runs per derivation name, from the run log.
inline std::map<std::string, int> run_counts(const std::string &runlog) {
  std::map<std::string, int> out;
  std::ifstream in(runlog);
  for (std::string line; std::getline(in, line);) {
    auto w = words(line);
    if (!w.empty())
      ++out[w[0]];
  }
  return out;
}

// ---------------------------------------------------------------------------
// Lock probes (from another process than the holders)

/// Who holds a lock on `path`.lock: 0 if nobody (or no lock file), the
/// holder's pid for a POSIX lock, -1 for an OFD lock (which has no pid).
/// F_GETLK sees both kinds. Uses a descriptor of its own, closed at once;
/// call it only from a process that holds no POSIX lock on the file.
inline pid_t lock_holder(const std::string &path) {
  std::string lp = path + ".lock";
  int fd = open(lp.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd == -1)
    return 0;
  struct flock fl;
  std::memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl(fd, F_GETLK, &fl) == -1)
    die("F_GETLK %s: %s", lp.c_str(), std::strerror(errno));
  close(fd);
  if (fl.l_type == F_UNLCK)
    return 0;
  return fl.l_pid == 0 ? -1 : fl.l_pid;
}

/// The inode of `path`.lock, or 0.
inline unsigned long long lock_inode(const std::string &path) {
  struct stat st;
  if (stat((path + ".lock").c_str(), &st) == -1)
    return 0;
  return static_cast<unsigned long long>(st.st_ino);
}

/// Number of blocked lock requests ("->" entries of /proc/locks) on inode
/// `ino`: a process blocked in F_SETLKW / F_OFD_SETLKW shows up there.
inline int blocked_waiters(unsigned long long ino) {
  std::ifstream in("/proc/locks");
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find("->") == std::string::npos)
      continue;
    // Field: MAJ:MIN:INODE
    for (auto &w : words(line)) {
      auto c1 = w.find(':');
      auto c2 = w.rfind(':');
      if (c1 != std::string::npos && c2 != c1 && w.substr(c2 + 1) == std::to_string(ino))
        ++n;
    }
  }
  return n;
}

/// Waits (bounded) until `n` requests are blocked on the lock file of `path`.
/// This observes the kernel's lock table; it is not a timed guess.
inline void wait_blocked(const std::string &path, int n, milliseconds limit) {
  auto deadline = clock::now() + limit;
  for (;;) {
    unsigned long long ino = lock_inode(path);
    if (ino && blocked_waiters(ino) >= n)
      return;
    if (clock::now() > deadline)
      die("no %d blocked waiter(s) on %s.lock within %lld ms", n, path.c_str(),
          static_cast<long long>(limit.count()));
    std::this_thread::sleep_for(milliseconds(1)); // re-read the lock table
  }
}

/// Waits for a child (bounded); returns its wait status.
inline int wait_child(pid_t pid, milliseconds limit, const char *what) {
  auto deadline = clock::now() + limit;
  for (;;) {
    int st = 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid)
      return st;
    if (r == -1 && errno != EINTR)
      die("waitpid(%s): %s", what, std::strerror(errno));
    if (clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      die("%s (pid %d) did not exit within %lld ms", what, static_cast<int>(pid),
          static_cast<long long>(limit.count()));
    }
    std::this_thread::sleep_for(milliseconds(2)); // reap poll, not synchronisation
  }
}

inline bool exited_ok(int st) { return WIFEXITED(st) && WEXITSTATUS(st) == 0; }

inline std::string describe_status(int st) {
  if (WIFEXITED(st))
    return "exit " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st))
    return "signal " + std::to_string(WTERMSIG(st));
  return "status " + std::to_string(st);
}

} // namespace harness

#endif
