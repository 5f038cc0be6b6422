//! Single-process behaviour of lock sets: acquisition, release, deletion,
//! the in-process registry (G5), and all-or-nothing (L8).

use goalkeeper::lock::{self, Backend, LockSet, StorePath, WaitMode};
use goalkeeper::Error;
use std::time::Duration;

fn store() -> tempdir::TempStore {
    tempdir::TempStore::new()
}

mod tempdir {
    /// A private temporary store directory, removed on drop.
    pub struct TempStore(pub std::path::PathBuf);
    impl TempStore {
        pub fn new() -> Self {
            let base = std::env::temp_dir().join(format!(
                "gk-test-{}-{}",
                std::process::id(),
                std::sync::atomic::AtomicU64::new(0)
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + rand_suffix()
            ));
            std::fs::create_dir_all(&base).unwrap();
            TempStore(base)
        }
        pub fn path(&self, name: &str) -> String {
            self.0.join(name).to_str().unwrap().to_string()
        }
    }
    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        h.finish()
    }
    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn acquire_release_and_reacquire() {
    let s = store();
    let p = s.path("aaa-x");
    let set = LockSet::try_acquire([&p], Backend::Ofd).unwrap();
    assert!(lock::is_held_by_me(&StorePath::new(&p).unwrap()));
    set.check().unwrap();
    let e = LockSet::try_acquire([&p], Backend::Ofd).unwrap_err();
    assert!(matches!(e, Error::HeldByThisProcess { .. }), "{e}");
    set.release().unwrap();
    assert!(!lock::is_held_by_me(&StorePath::new(&p).unwrap()));
    assert!(std::path::Path::new(&format!("{p}.lock")).exists());
    let mut again = LockSet::acquire(
        [&p],
        Backend::Ofd,
        WaitMode::Timeout(Duration::from_millis(100)),
    )
    .unwrap();
    again.set_deletion(true);
    again.release().unwrap();
    assert!(
        !std::path::Path::new(&format!("{p}.lock")).exists(),
        "deleted on release"
    );
}
