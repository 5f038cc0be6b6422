//! A first look at goalkeeper: two processes contend for one store path's
//! lock in a fresh temporary store. The child holds the lock, the parent
//! blocks in the kernel without holding anything, and the moment the child
//! releases, the parent gets the lock. The hand-off time is printed.
//!
//! Run with `cargo run --example handoff` (`make demo` runs the #31785
//! demonstration, demo/31785.scm).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use goalkeeper::lock::{self, Backend, LockSet, StorePath, WaitMode};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--child" {
        return child(&args[2]);
    }
    let store = std::env::temp_dir().join(format!("gk-demo-{}", std::process::id()));
    std::fs::create_dir_all(&store).expect("create temporary store");
    let path = store.join("0abc-hello-1.0").to_string_lossy().into_owned();
    println!("store: {}", store.display());

    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--child", &path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut to_child = child.stdin.take().expect("stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    from_child.read_line(&mut line).expect("child reports");
    print!("child  {}: {line}", child.id());

    match LockSet::try_acquire([&path], Backend::Ofd) {
        Err(e) => println!("parent {}: try-lock says: {e}", std::process::id()),
        Ok(_) => panic!("the child's lock was not seen"),
    }
    println!(
        "parent {}: blocking in the kernel, holding nothing (G2)",
        std::process::id()
    );
    let waiter = std::thread::spawn(move || {
        let set = LockSet::acquire(
            [&path],
            Backend::Ofd,
            WaitMode::Timeout(Duration::from_secs(10)),
        )
        .expect("acquire after the hand-off");
        (Instant::now(), set)
    });
    // Ask the child to release; it replies with the time it released.
    let released_at = Instant::now();
    writeln!(to_child, "release").expect("tell child");
    let (got_at, set) = waiter.join().expect("waiter");
    line.clear();
    from_child.read_line(&mut line).expect("child reports");
    print!("child  {}: {line}", child.id());
    println!(
        "parent {}: acquired {} ({} µs after asking the child to release)",
        std::process::id(),
        set.paths().next().expect("one path"),
        got_at.duration_since(released_at).as_micros()
    );
    let p = set.paths().next().expect("one path").clone();
    println!("parent: held by this process? {}", lock::is_held_by_me(&p));
    set.release().expect("release");
    println!(
        "parent: released; held by this process? {}",
        lock::is_held_by_me(&p)
    );
    child.wait().expect("child exit");
    let _ = std::fs::remove_dir_all(&store);
}

fn child(path: &str) {
    let set = LockSet::try_acquire([path], Backend::Ofd).expect("child locks");
    println!("holding {}", StorePath::new(path).expect("valid"));
    std::io::stdout().flush().ok();
    let mut cmd = String::new();
    std::io::stdin().read_line(&mut cmd).ok();
    set.release().expect("child releases");
    println!("released");
}
