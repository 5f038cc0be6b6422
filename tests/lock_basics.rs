//! Single-process behaviour of lock sets: acquisition, release, deletion,
//! and the in-process registry (G5).

mod common;

use common::TempStore;
use goalkeeper::lock::{self, Backend, LockSet, StorePath, WaitMode};
use goalkeeper::Error;
use std::time::Duration;

#[test]
fn acquire_release_and_reacquire() {
    let s = TempStore::new();
    let p = s.path("aaa-x");
    let set = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    assert!(lock::is_held_by_me(&StorePath::new(&p).unwrap()));
    set.check().unwrap();
    let e = LockSet::try_acquire([&p], Backend::Ofd).unwrap_err();
    assert!(matches!(e, Error::HeldByThisProcess { .. }), "{e}");
    set.release().unwrap();
    assert!(!lock::is_held_by_me(&StorePath::new(&p).unwrap()));
    assert!(s.lock_file("aaa-x").exists());
    let mut again = LockSet::acquire(
        [&p],
        Backend::Ofd,
        WaitMode::Timeout(Duration::from_millis(100)),
    )
    .unwrap();
    again.set_deletion(true);
    again.release().unwrap();
    assert!(!s.lock_file("aaa-x").exists(), "deleted on release");
}
