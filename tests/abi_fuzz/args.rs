//! Generated C arguments (pointers, lengths, output buffers) and the calls
//! of the list functions, shared by both fuzzers.

use crate::store::*;
use crate::*;
use goalkeeper::ffi::gk_status::{self};
use proptest::test_runner::TestCaseError;
use std::ffi::c_char;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Ptr {
    Valid,
    Null,
    Misaligned,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Len {
    Actual,
    Zero,
    Huge(usize),
    Shorter(usize),
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Buf {
    NullZero,
    Small(usize),
    Exact,
    Large(usize),
    HugeCap,
    NullWithCap,
    LenOutNull,
    LenOutMisaligned,
}

pub(crate) fn ptr() -> impl Strategy<Value = Ptr> {
    prop_oneof![30 => Just(Ptr::Valid), 1 => Just(Ptr::Null), 1 => Just(Ptr::Misaligned)]
}

pub(crate) fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        30 => Just(Len::Actual),
        1 => Just(Len::Zero),
        1 => prop_oneof![Just(MAX_SET_LEN * PATH_MAX + 1), Just(usize::MAX), Just(MAX_SET_LEN + 1)]
            .prop_map(Len::Huge),
        2 => (0usize..64).prop_map(Len::Shorter),
    ]
}

pub(crate) fn buf() -> impl Strategy<Value = Buf> {
    prop_oneof![
        2 => Just(Buf::NullZero),
        2 => (0usize..300).prop_map(Buf::Small),
        6 => Just(Buf::Exact),
        2 => (1usize..32).prop_map(Buf::Large),
        1 => Just(Buf::HugeCap),
        1 => Just(Buf::NullWithCap),
        1 => Just(Buf::LenOutNull),
        1 => Just(Buf::LenOutMisaligned),
    ]
}

/// An output buffer for the list functions, with canaries around it.
pub(crate) struct ListBuf {
    pub(crate) bytes: Vec<u8>,
    pub(crate) len_store: [u8; 24],
}

pub(crate) const CANARY: u8 = 0xa5;

pub(crate) fn call_list(
    spec: Buf,
    needed: usize,
    f: impl FnOnce(*mut c_char, usize, *mut usize) -> gk_status,
) -> (gk_status, ListBuf, usize, usize) {
    let size = match spec {
        Buf::Small(k) => k.min(needed.saturating_sub(1)),
        Buf::Exact => needed,
        Buf::Large(k) => needed + k,
        Buf::HugeCap => needed,
        _ => 0,
    };
    let mut lb = ListBuf {
        bytes: vec![CANARY; size + 16],
        len_store: [CANARY; 24],
    };
    let cap = match spec {
        Buf::NullZero | Buf::LenOutNull | Buf::LenOutMisaligned => 0,
        Buf::Small(_) | Buf::Exact => size,
        Buf::Large(k) => needed + k,
        Buf::HugeCap => usize::MAX,
        Buf::NullWithCap => needed.max(1),
    };
    let buf: *mut c_char = match spec {
        Buf::NullZero | Buf::NullWithCap => std::ptr::null_mut(),
        _ => lb.bytes.as_mut_ptr().cast(),
    };
    let base = lb.len_store.as_mut_ptr() as usize;
    let aligned = (base + 7) & !7;
    let len_out: *mut usize = match spec {
        Buf::LenOutNull => std::ptr::null_mut(),
        Buf::LenOutMisaligned => (aligned + 1) as *mut usize,
        _ => aligned as *mut usize,
    };
    let s = f(buf, cap, len_out);
    let len_val = if matches!(spec, Buf::LenOutNull | Buf::LenOutMisaligned) {
        usize::MAX
    } else {
        // SAFETY: aligned, inside len_store.
        unsafe { *(aligned as *const usize) }
    };
    (s, lb, cap, len_val)
}

/// Checks a list call against the expected items.
pub(crate) fn check_list(
    st: &mut Stats,
    what: &str,
    spec: Buf,
    items: &[Vec<u8>],
    pre_status: Option<gk_status>,
    f: impl FnOnce(*mut c_char, usize, *mut usize) -> gk_status,
) -> Result<(), TestCaseError> {
    let needed: usize = items.iter().map(|i| i.len() + 1).sum();
    let (got, lb, cap, len_val) = call_list(spec, needed, f);
    let want = if let Some(s) = pre_status {
        s
    } else {
        match spec {
            Buf::LenOutNull => GK_ERROR_NULL_POINTER,
            Buf::LenOutMisaligned => GK_ERROR_INVALID_ARGUMENT,
            _ if needed > cap => GK_ERROR_BUFFER_TOO_SMALL,
            _ if needed == 0 => GK_OK,
            Buf::NullZero | Buf::NullWithCap => GK_ERROR_NULL_POINTER,
            _ => GK_OK,
        }
    };
    expect(st, &format!("{what} {spec:?}"), got, want)?;
    let len_written =
        !matches!(spec, Buf::LenOutNull | Buf::LenOutMisaligned) && pre_status.is_none();
    if len_written {
        ensure!(
            len_val == needed,
            "{what}: *len_out {len_val}, expected {needed}"
        );
    } else if !matches!(spec, Buf::LenOutNull) {
        ensure!(
            lb.len_store.iter().all(|&b| b == CANARY),
            "{what}: len_out written on {}",
            got.name()
        );
    }
    if got == GK_OK && needed > 0 {
        let mut expect_bytes = Vec::new();
        for i in items {
            expect_bytes.extend_from_slice(i);
            expect_bytes.push(0);
        }
        ensure!(
            lb.bytes[..needed] == expect_bytes[..],
            "{what}: wrote {:?}, expected {:?}",
            String::from_utf8_lossy(&lb.bytes[..needed]),
            String::from_utf8_lossy(&expect_bytes)
        );
        ensure!(
            lb.bytes[needed..].iter().all(|&b| b == CANARY),
            "{what}: wrote past the {needed} bytes it needed"
        );
    } else {
        ensure!(
            lb.bytes.iter().all(|&b| b == CANARY),
            "{what}: buffer written on {}",
            got.name()
        );
    }
    Ok(())
}

pub(crate) fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}
