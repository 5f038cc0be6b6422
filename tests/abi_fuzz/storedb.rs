//! Random call sequences over the store database functions
//! (`gk_store_db_open`, `gk_store_db_is_valid`, `gk_store_db_valid_paths`,
//! `gk_store_db_free`, `gk_store_path_valid`): live, freed, forged, zero and
//! wrong-kind handles; NULL and misaligned pointers; zero and huge counts;
//! NULL, relative, empty and over-`PATH_MAX` paths; databases that are
//! missing, a directory, garbage, empty, without `ValidPaths`, and two good
//! ones (WAL and rollback journal) that are overwritten with garbage and put
//! back between calls; and fork children, which must be refused a parent's
//! handle. An independent model predicts every status and every answer;
//! `*valid` (and every `valid[i]`) must be false after any error.

use crate::args::Ptr;
use crate::common::{db, TempStore};
use crate::store::*;
use crate::*;
use goalkeeper::ffi::gk_status::{self};
use proptest::test_runner::TestCaseError;
use std::ffi::c_char;
use std::sync::atomic::Ordering;

/// Which database file a call names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DbFile {
    /// A WAL database with `o0` and `o1` registered.
    Wal,
    /// A rollback-journal database with `o1` and `o2` registered.
    Rollback,
    Missing,
    Directory,
    Garbage,
    Empty,
    NoTable,
    Relative,
    EmptyString,
    TooLong,
    Null,
}

/// A store path argument.
#[derive(Clone, Copy, Debug)]
pub(crate) enum QPath {
    /// `o0` … `o3` of the store.
    Pool(usize),
    Relative,
    Empty,
    TooLong,
    Null,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum DSpec {
    Live(usize),
    Freed(usize),
    Forged(u64),
    /// A live handle with a worker's kind byte.
    WorkerKind(usize),
    Zero,
}

#[derive(Clone, Debug)]
pub(crate) enum DOp {
    Open(DbFile, u32, Ptr),
    IsValid(DSpec, QPath, bool),
    ValidPaths {
        h: DSpec,
        paths: Vec<QPath>,
        count: Option<usize>,
        paths_ptr: Ptr,
        valid: bool,
    },
    Free(DSpec),
    OneCall(DbFile, QPath, bool),
    /// Overwrites a good database with garbage (true) or puts it back.
    Garble(bool, bool),
    Fork(DSpec),
}

fn db_file() -> impl Strategy<Value = DbFile> {
    prop_oneof![
        8 => Just(DbFile::Wal),
        6 => Just(DbFile::Rollback),
        1 => Just(DbFile::Missing),
        1 => Just(DbFile::Directory),
        1 => Just(DbFile::Garbage),
        1 => Just(DbFile::Empty),
        1 => Just(DbFile::NoTable),
        1 => Just(DbFile::Relative),
        1 => Just(DbFile::EmptyString),
        1 => Just(DbFile::TooLong),
        1 => Just(DbFile::Null),
    ]
}

fn qpath() -> impl Strategy<Value = QPath> {
    prop_oneof![
        20 => (0usize..4).prop_map(QPath::Pool),
        1 => Just(QPath::Relative),
        1 => Just(QPath::Empty),
        1 => Just(QPath::TooLong),
        1 => Just(QPath::Null),
    ]
}

fn dspec() -> impl Strategy<Value = DSpec> {
    prop_oneof![
        20 => any::<usize>().prop_map(DSpec::Live),
        2 => any::<usize>().prop_map(DSpec::Freed),
        1 => any::<u64>().prop_map(DSpec::Forged),
        1 => any::<usize>().prop_map(DSpec::WorkerKind),
        1 => Just(DSpec::Zero),
    ]
}

fn mostly<T: Clone + std::fmt::Debug + 'static>(v: T, other: T) -> impl Strategy<Value = T> {
    prop_oneof![30 => Just(v), 1 => Just(other)]
}

pub(crate) fn dop() -> impl Strategy<Value = DOp> {
    prop_oneof![
        6 => (db_file(), prop_oneof![3 => Just(0u32), 1 => 1u32..50], prop_oneof![30 => Just(Ptr::Valid), 1 => Just(Ptr::Null), 1 => Just(Ptr::Misaligned)])
            .prop_map(|(f, t, o)| DOp::Open(f, t, o)),
        12 => (dspec(), qpath(), mostly(true, false)).prop_map(|(h, p, v)| DOp::IsValid(h, p, v)),
        6 => (
            dspec(),
            proptest::collection::vec(qpath(), 1..6),
            prop_oneof![20 => Just(None), 1 => Just(Some(0usize)), 1 => Just(Some(usize::MAX)), 1 => Just(Some((1usize << 20) + 1))],
            prop_oneof![30 => Just(Ptr::Valid), 1 => Just(Ptr::Null), 1 => Just(Ptr::Misaligned)],
            mostly(true, false)
        )
            .prop_map(|(h, paths, count, paths_ptr, valid)| DOp::ValidPaths { h, paths, count, paths_ptr, valid }),
        3 => dspec().prop_map(DOp::Free),
        4 => (db_file(), qpath(), mostly(true, false)).prop_map(|(f, p, v)| DOp::OneCall(f, p, v)),
        3 => (any::<bool>(), any::<bool>()).prop_map(|(w, g)| DOp::Garble(w, g)),
        1 => dspec().prop_map(DOp::Fork),
    ]
}

struct DModel {
    store: TempStore,
    wal: std::path::PathBuf,
    rollback: std::path::PathBuf,
    originals: [Vec<u8>; 2],
    garbled: [bool; 2],
    live: Vec<(u64, DbFile)>,
    freed: Vec<u64>,
}

/// What the model expects of a database file: Ok(which) or the error.
fn open_status(m: &DModel, f: DbFile) -> Result<usize, gk_status> {
    match f {
        DbFile::Null => Err(GK_ERROR_NULL_POINTER),
        DbFile::TooLong | DbFile::Relative | DbFile::EmptyString => Err(GK_ERROR_INVALID_PATH),
        DbFile::Missing => Err(GK_ERROR_STORE_DB_MISSING),
        DbFile::Directory | DbFile::Garbage => Err(GK_ERROR_STORE_DB_NOT_SQLITE),
        DbFile::Empty | DbFile::NoTable => Err(GK_ERROR_STORE_DB_NO_VALID_PATHS),
        DbFile::Wal if m.garbled[0] => Err(GK_ERROR_STORE_DB_NOT_SQLITE),
        DbFile::Rollback if m.garbled[1] => Err(GK_ERROR_STORE_DB_NOT_SQLITE),
        DbFile::Wal => Ok(0),
        DbFile::Rollback => Ok(1),
    }
}

/// The registered pool entries of database `which`.
fn registered(which: usize, i: usize) -> bool {
    match which {
        0 => i == 0 || i == 1,
        _ => i == 1 || i == 2,
    }
}

impl DModel {
    fn new() -> DModel {
        let store = TempStore::new();
        let p = |i: usize| store.path(&format!("o{i}"));
        let wal_dir = store.dir().join("wal");
        let rb_dir = store.dir().join("rollback");
        std::fs::create_dir(&wal_dir).unwrap();
        std::fs::create_dir(&rb_dir).unwrap();
        let wal = db::create(&wal_dir, "wal", &[&p(0), &p(1)]);
        let rollback = db::create(&rb_dir, "delete", &[&p(1), &p(2)]);
        std::fs::write(store.dir().join("garbage.sqlite"), vec![b'g'; 4096]).unwrap();
        std::fs::write(store.dir().join("empty.sqlite"), b"").unwrap();
        rusqlite::Connection::open(store.dir().join("other.sqlite"))
            .unwrap()
            .execute_batch("create table Other (x)")
            .unwrap();
        std::fs::create_dir(store.dir().join("dir.sqlite")).unwrap();
        let originals = [
            std::fs::read(&wal).unwrap(),
            std::fs::read(&rollback).unwrap(),
        ];
        DModel {
            store,
            wal,
            rollback,
            originals,
            garbled: [false, false],
            live: Vec::new(),
            freed: Vec::new(),
        }
    }

    fn file_bytes(&self, f: DbFile) -> Option<Vec<u8>> {
        let d = self.store.dir();
        let s = match f {
            DbFile::Wal => self.wal.clone(),
            DbFile::Rollback => self.rollback.clone(),
            DbFile::Missing => d.join("missing.sqlite"),
            DbFile::Directory => d.join("dir.sqlite"),
            DbFile::Garbage => d.join("garbage.sqlite"),
            DbFile::Empty => d.join("empty.sqlite"),
            DbFile::NoTable => d.join("other.sqlite"),
            DbFile::Relative => "db.sqlite".into(),
            DbFile::EmptyString => "".into(),
            DbFile::TooLong => {
                let mut v = vec![b'/'];
                v.extend(std::iter::repeat_n(b'x', PATH_MAX + 5));
                return Some(cpath(&v));
            }
            DbFile::Null => return None,
        };
        Some(cpath(s.as_os_str().as_encoded_bytes()))
    }

    fn qpath_bytes(&self, q: QPath) -> Option<Vec<u8>> {
        match q {
            QPath::Pool(i) => Some(cpath(self.store.path(&format!("o{i}")).as_bytes())),
            QPath::Relative => Some(cpath(b"relative/o0")),
            QPath::Empty => Some(cpath(b"")),
            QPath::TooLong => {
                let mut v = vec![b'/'];
                v.extend(std::iter::repeat_n(b'y', PATH_MAX + 5));
                Some(cpath(&v))
            }
            QPath::Null => None,
        }
    }

    fn handle(&self, h: DSpec) -> (u64, Option<usize>) {
        let pick = |n: usize, i: usize| (n > 0).then(|| i % n);
        match h {
            DSpec::Live(i) => match pick(self.live.len(), i) {
                Some(k) => (self.live[k].0, Some(k)),
                None => (0, None),
            },
            DSpec::Freed(i) => (pick(self.freed.len(), i).map_or(0, |k| self.freed[k]), None),
            DSpec::Forged(x) => (x, self.live.iter().position(|l| l.0 == x)),
            DSpec::WorkerKind(i) => {
                let h = pick(self.live.len(), i).map_or(0, |k| self.live[k].0);
                ((h & 0x00ff_ffff_ffff_ffff) | 0x57 << 56, None)
            }
            DSpec::Zero => (0, None),
        }
    }

    fn which(&self, k: usize) -> usize {
        match self.live[k].1 {
            DbFile::Wal => 0,
            _ => 1,
        }
    }
}

fn ptr_of(v: &Option<Vec<u8>>) -> *const c_char {
    v.as_ref().map_or(std::ptr::null(), |b| b.as_ptr().cast())
}

/// The status of reading a path argument (NULL, over `PATH_MAX`), if bad.
fn arg_status(q: QPath) -> Option<gk_status> {
    match q {
        QPath::Null => Some(GK_ERROR_NULL_POINTER),
        QPath::TooLong => Some(GK_ERROR_INVALID_PATH),
        _ => None,
    }
}

/// The status of querying a path that was read fine: relative or empty.
fn query_status(q: QPath) -> Option<gk_status> {
    match q {
        QPath::Relative | QPath::Empty => Some(GK_ERROR_INVALID_PATH),
        _ => None,
    }
}

fn run_dop(m: &mut DModel, st: &mut Stats, op: &DOp) -> Result<(), TestCaseError> {
    match op {
        DOp::Open(f, timeout, out) => {
            let path = m.file_bytes(*f);
            let mut store = [0u64; 2];
            let outp: *mut u64 = match out {
                Ptr::Valid => store.as_mut_ptr(),
                Ptr::Null => std::ptr::null_mut(),
                Ptr::Misaligned => (store.as_mut_ptr() as usize + 1) as *mut u64,
            };
            // SAFETY: pointers as generated; bad ones are refused unread.
            let got = unsafe { gk_store_db_open(ptr_of(&path), *timeout, outp) };
            let want = match out {
                Ptr::Null => Err(GK_ERROR_NULL_POINTER),
                Ptr::Misaligned => Err(GK_ERROR_INVALID_ARGUMENT),
                Ptr::Valid => open_status(m, *f),
            };
            expect(st, &format!("{op:?}"), got, want.err().unwrap_or(GK_OK))?;
            if matches!(out, Ptr::Valid) {
                if got == GK_OK {
                    ensure!(store[0] != 0, "open: handle 0");
                    m.live.push((store[0], *f));
                } else {
                    ensure!(store[0] == 0, "open: *out {} on {}", store[0], got.name());
                }
            }
        }
        DOp::IsValid(h, q, valid_ok) => {
            let (raw, k) = m.handle(*h);
            let path = m.qpath_bytes(*q);
            let mut valid = true;
            let vp: *mut bool = if *valid_ok {
                &mut valid
            } else {
                std::ptr::null_mut()
            };
            // SAFETY: pointers as generated.
            let got = unsafe { gk_store_db_is_valid(raw, ptr_of(&path), vp) };
            let want = (!valid_ok)
                .then_some(GK_ERROR_NULL_POINTER)
                .or(arg_status(*q))
                .or(k.is_none().then_some(GK_ERROR_STALE_HANDLE))
                .or(query_status(*q))
                .or(k.and_then(|k| m.garbled[m.which(k)].then_some(GK_ERROR_STORE_DB_NOT_SQLITE)))
                .unwrap_or(GK_OK);
            expect(st, &format!("{op:?}"), got, want)?;
            if *valid_ok {
                let answer = match (got, q) {
                    (GK_OK, QPath::Pool(i)) => registered(m.which(k.unwrap()), *i),
                    _ => false,
                };
                ensure!(
                    valid == answer,
                    "*valid {valid}, model {answer} ({})",
                    got.name()
                );
            }
        }
        DOp::ValidPaths {
            h,
            paths,
            count,
            paths_ptr,
            valid,
        } => {
            let (raw, k) = m.handle(*h);
            let bytes: Vec<Option<Vec<u8>>> = paths.iter().map(|q| m.qpath_bytes(*q)).collect();
            let mut ptrs: Vec<*const c_char> = bytes.iter().map(ptr_of).collect();
            ptrs.push(std::ptr::null()); // room for a misaligned view
            let n = count.unwrap_or(paths.len());
            let pp: *const *const c_char = match paths_ptr {
                Ptr::Valid => ptrs.as_ptr(),
                Ptr::Null => std::ptr::null(),
                Ptr::Misaligned => (ptrs.as_ptr() as usize + 1) as *const _,
            };
            let mut out = vec![true; paths.len() + 1];
            let vp: *mut bool = if *valid {
                out.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            };
            // SAFETY: pointers as generated; `n` is the array's length, or 0,
            // or above the library's limit (refused before any access).
            let got = unsafe { gk_store_db_valid_paths(raw, pp, n, vp) };
            let first_arg = paths.iter().find_map(|q| arg_status(*q));
            let first_query = paths.iter().find_map(|q| query_status(*q));
            let want = (!valid)
                .then_some(GK_ERROR_NULL_POINTER)
                .or((n == 0 || n > 1 << 20).then_some(GK_ERROR_INVALID_ARGUMENT))
                .or(matches!(paths_ptr, Ptr::Null).then_some(GK_ERROR_NULL_POINTER))
                .or(matches!(paths_ptr, Ptr::Misaligned).then_some(GK_ERROR_INVALID_ARGUMENT))
                .or(first_arg)
                .or(k.is_none().then_some(GK_ERROR_STALE_HANDLE))
                .or(first_query)
                .or(k.and_then(|k| m.garbled[m.which(k)].then_some(GK_ERROR_STORE_DB_NOT_SQLITE)))
                .unwrap_or(GK_OK);
            expect(st, &format!("{op:?}"), got, want)?;
            let in_range = n >= 1 && n <= paths.len();
            if *valid && in_range {
                for (i, q) in paths.iter().enumerate().take(n) {
                    let answer = match (got, q) {
                        (GK_OK, QPath::Pool(j)) => registered(m.which(k.unwrap()), *j),
                        _ => false,
                    };
                    ensure!(out[i] == answer, "valid[{i}] {}, model {answer}", out[i]);
                }
            }
            if *valid {
                ensure!(out[paths.len()], "valid[] written past n_paths");
                if !in_range {
                    ensure!(out.iter().all(|&b| b), "valid[] written on {}", got.name());
                }
            }
        }
        DOp::Free(h) => {
            let (raw, k) = m.handle(*h);
            let got = gk_store_db_free(raw);
            let want = if k.is_some() {
                GK_OK
            } else {
                GK_ERROR_STALE_HANDLE
            };
            expect(st, &format!("{op:?}"), got, want)?;
            if let Some(k) = k {
                let (h, _) = m.live.remove(k);
                m.freed.push(h);
            }
        }
        DOp::OneCall(f, q, valid_ok) => {
            let dbp = m.file_bytes(*f);
            let path = m.qpath_bytes(*q);
            let mut valid = true;
            let vp: *mut bool = if *valid_ok {
                &mut valid
            } else {
                std::ptr::null_mut()
            };
            // SAFETY: pointers as generated.
            let got = unsafe { gk_store_path_valid(ptr_of(&dbp), ptr_of(&path), vp) };
            let opened = open_status(m, *f);
            let want = (!valid_ok)
                .then_some(GK_ERROR_NULL_POINTER)
                .or(match f {
                    DbFile::Null => Some(GK_ERROR_NULL_POINTER),
                    DbFile::TooLong => Some(GK_ERROR_INVALID_PATH),
                    _ => None,
                })
                .or(arg_status(*q))
                .or(opened.err())
                .or(query_status(*q))
                .unwrap_or(GK_OK);
            expect(st, &format!("{op:?}"), got, want)?;
            if *valid_ok {
                let answer = match (got, q, opened) {
                    (GK_OK, QPath::Pool(i), Ok(w)) => registered(w, *i),
                    _ => false,
                };
                ensure!(valid == answer, "*valid {valid}, model {answer}");
            }
        }
        DOp::Garble(wal, garble) => {
            let i = usize::from(!*wal);
            let file = if *wal { &m.wal } else { &m.rollback };
            if *garble {
                db::garble(file);
            } else {
                db::restore(file, &m.originals[i]);
            }
            m.garbled[i] = *garble;
        }
        DOp::Fork(h) => {
            let (raw, k) = m.handle(*h);
            let path = m.qpath_bytes(QPath::Pool(0));
            // The child reports through its exit status only.
            // SAFETY: the child calls only the library (which is fork-safe by
            // its atfork handlers) and _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let mut valid = true;
                // SAFETY: valid pointers.
                let q = unsafe { gk_store_db_is_valid(raw, ptr_of(&path), &mut valid) };
                let f = gk_store_db_free(raw);
                let want = if k.is_some() {
                    GK_ERROR_WRONG_PROCESS
                } else {
                    GK_ERROR_STALE_HANDLE
                };
                let ok = q == want && f == want && !valid;
                // SAFETY: ends the child without running the parent's handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            ensure!(pid > 0, "fork failed");
            let mut status = 0;
            // SAFETY: our child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            st.forks += 1;
            ensure!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "a fork child was not refused its parent's store database handle ({status:#x})"
            );
        }
    }
    Ok(())
}

pub(crate) fn run_case(ops: &[DOp], st: &mut Stats) -> Result<(), TestCaseError> {
    if POISONED.load(Ordering::SeqCst) {
        return Err(fail(
            "an earlier failing case left the process dirty (see above)",
        ));
    }
    let mut m = DModel::new();
    for (i, op) in ops.iter().enumerate() {
        run_dop(&mut m, st, op).map_err(|e| fail(format!("step {i} ({op:?}): {e}")))?;
    }
    for (h, _) in std::mem::take(&mut m.live) {
        expect(st, "final free", gk_store_db_free(h), GK_OK)?;
    }
    Ok(())
}
