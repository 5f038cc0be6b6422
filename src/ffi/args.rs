//! Checked conversion of C arguments: pointers, strings, path arrays and
//! output buffers. Nothing here trusts a pointer it has not checked for NULL,
//! and no string is read past `PATH_MAX` bytes.

use std::ffi::{c_char, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::lock::{normalize_paths, StorePath, PATH_MAX};

/// The largest number of paths accepted in one set.
pub const MAX_SET_LEN: usize = 1 << 20;

/// Reads a NUL-terminated string of at most `PATH_MAX` bytes. It reads
/// byte by byte and never past the NUL or the first `PATH_MAX` bytes (Miri
/// checks every byte read).
///
/// # Safety
/// `p` must be NULL or point to readable memory that holds a NUL within
/// `PATH_MAX` bytes or extends for at least `PATH_MAX` bytes.
pub(crate) unsafe fn c_bytes<'a>(p: *const c_char, what: &'static str) -> Result<&'a [u8]> {
    if p.is_null() {
        return Err(Error::NullPointer(what));
    }
    let mut n = 0;
    // SAFETY: non-null; the scan stops at the first NUL, within PATH_MAX
    // bytes, which the caller guarantees readable.
    while n < PATH_MAX && unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    if n >= PATH_MAX {
        return Err(Error::InvalidPath {
            path: format!("{what} (no NUL within PATH_MAX bytes)"),
            reason: "longer than PATH_MAX",
        });
    }
    // SAFETY: `n` bytes before the NUL are readable, as just measured.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) })
}

/// `s` up to its first NUL byte (a C string cannot carry one).
pub(crate) fn until_nul(s: &[u8]) -> &[u8] {
    &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
}

/// Reads a file name (any bytes but NUL, at most `PATH_MAX`).
///
/// # Safety
/// As [`c_bytes`].
pub(crate) unsafe fn path<'a>(p: *const c_char, what: &'static str) -> Result<&'a Path> {
    // SAFETY: forwarded.
    Ok(Path::new(OsStr::from_bytes(unsafe { c_bytes(p, what) }?)))
}

/// Reads one store path.
///
/// # Safety
/// As [`c_bytes`].
pub(crate) unsafe fn store_path(p: *const c_char, what: &'static str) -> Result<StorePath> {
    // SAFETY: forwarded.
    StorePath::from_bytes(unsafe { c_bytes(p, what) }?)
}

/// Reads an array of `n` C strings into a sorted, deduplicated set.
///
/// # Safety
/// `paths` must be NULL or point to `n` readable pointers, each as in [`c_bytes`].
pub(crate) unsafe fn path_array(paths: *const *const c_char, n: usize) -> Result<Vec<StorePath>> {
    if n == 0 {
        return Err(Error::InvalidArgument(
            "empty set of paths (n_paths is 0)".into(),
        ));
    }
    if paths.is_null() {
        return Err(Error::NullPointer("paths"));
    }
    if n > MAX_SET_LEN {
        return Err(Error::InvalidArgument(format!(
            "n_paths is {n}; at most {MAX_SET_LEN} paths fit in one set"
        )));
    }
    // SAFETY: the caller guarantees `n` readable pointers (alignment is
    // checked there).
    let ptrs = unsafe { array(paths, n, "paths") }?;
    let mut v = Vec::with_capacity(n);
    for &p in ptrs {
        // SAFETY: each element is guaranteed by the caller.
        v.push(unsafe { store_path(p, "an element of paths") }?);
    }
    normalize_paths(v)
}

/// Reads `len` bytes holding paths, each terminated by NUL.
///
/// # Safety
/// `buf` must be NULL or point to `len` readable bytes.
pub(crate) unsafe fn packed_paths(buf: *const u8, len: usize) -> Result<Vec<StorePath>> {
    if len == 0 {
        return Err(Error::InvalidArgument(
            "empty set of paths (len is 0)".into(),
        ));
    }
    if buf.is_null() {
        return Err(Error::NullPointer("buf"));
    }
    if len > MAX_SET_LEN * PATH_MAX {
        return Err(Error::InvalidArgument(format!(
            "len {len} is implausibly large"
        )));
    }
    // SAFETY: non-null, and the caller guarantees `len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf, len) };
    if bytes[len - 1] != 0 {
        return Err(Error::InvalidArgument(
            "the packed path list must end with a NUL byte".into(),
        ));
    }
    let set = bytes[..len - 1]
        .split(|&b| b == 0)
        .map(StorePath::from_bytes)
        .collect::<Result<Vec<_>>>()?;
    normalize_paths(set)
}

/// Checks `n` elements at `p` before they become a slice: `p` must not be
/// NULL, must be aligned for `T`, and `n` elements must fit in memory.
/// `n` 0 passes without a look at `p` (`Ok(false)`: nothing to read).
pub(crate) fn check_array<T>(p: *const T, n: usize, what: &'static str) -> Result<bool> {
    if n == 0 {
        return Ok(false);
    }
    if p.is_null() {
        return Err(Error::NullPointer(what));
    }
    if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::InvalidArgument(format!("{what} is not aligned")));
    }
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Error::InvalidArgument(format!(
            "{what}: {n} elements do not fit in memory"
        )));
    }
    Ok(true)
}

/// `n` elements at `p`, checked by [`check_array`].
///
/// # Safety
/// Unless `n` is 0, `p` must be NULL or valid for `n` reads of `T`.
pub(crate) unsafe fn array<'a, T>(p: *const T, n: usize, what: &'static str) -> Result<&'a [T]> {
    Ok(if check_array(p, n, what)? {
        // SAFETY: non-null, aligned, and readable per the contract.
        unsafe { std::slice::from_raw_parts(p, n) }
    } else {
        &[]
    })
}

/// [`array`] for writing.
///
/// # Safety
/// Unless `n` is 0, `p` must be NULL or valid for `n` reads and writes of `T`.
pub(crate) unsafe fn array_mut<'a, T>(
    p: *mut T,
    n: usize,
    what: &'static str,
) -> Result<&'a mut [T]> {
    Ok(if check_array(p, n, what)? {
        // SAFETY: non-null, aligned, and writable per the contract.
        unsafe { std::slice::from_raw_parts_mut(p, n) }
    } else {
        &mut []
    })
}

/// Checks an output pointer (as [`check_array`] checks one element).
///
/// # Safety
/// `p` must be NULL or valid for writing one `T`.
pub(crate) unsafe fn out<'a, T>(p: *mut T, what: &'static str) -> Result<&'a mut T> {
    check_array(p, 1, what)?;
    // SAFETY: non-null and aligned; validity for writes is the caller's guarantee.
    Ok(unsafe { &mut *p })
}

/// Writes `items` into `buf` as NUL-terminated strings, one after another,
/// and the total size into `*len_out`. When `cap` is too small nothing is
/// written to `buf` and [`Error::BufferTooSmall`] is returned, with the size
/// needed in `*len_out`, so callers can size a buffer with `cap = 0`.
///
/// # Safety
/// `buf` must be NULL (only with `cap == 0`) or valid for `cap` bytes of
/// writes; `len_out` as in [`out`].
pub(crate) unsafe fn write_list<'i>(
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
    items: impl Iterator<Item = &'i [u8]> + Clone,
) -> Result<()> {
    // SAFETY: forwarded.
    let len_out = unsafe { out(len_out, "len_out") }?;
    let needed: usize = items.clone().map(|i| i.len() + 1).sum();
    *len_out = needed;
    if needed > cap {
        return Err(Error::BufferTooSmall { needed });
    }
    if needed == 0 {
        return Ok(());
    }
    if buf.is_null() {
        return Err(Error::NullPointer("buf"));
    }
    // SAFETY: non-null and the caller guarantees `cap >= needed` writable bytes.
    let dst = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), needed) };
    let mut at = 0;
    for i in items {
        dst[at..at + i.len()].copy_from_slice(i);
        dst[at + i.len()] = 0;
        at += i.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn path_arrays_are_checked() {
        let a = CString::new("/s/b").unwrap();
        let b = CString::new("/s/a").unwrap();
        let ptrs = [a.as_ptr(), b.as_ptr(), a.as_ptr()];
        // SAFETY: live buffers of the stated lengths, or NULL on purpose.
        let v = unsafe { path_array(ptrs.as_ptr(), 3) }.unwrap();
        assert_eq!(v.len(), 2);
        assert!(matches!(
            // SAFETY: live buffers of the stated lengths, or NULL on purpose.
            unsafe { path_array(std::ptr::null(), 1) },
            Err(Error::NullPointer(_))
        ));
        assert!(matches!(
            // SAFETY: live buffers of the stated lengths, or NULL on purpose.
            unsafe { path_array(ptrs.as_ptr(), 0) },
            Err(Error::InvalidArgument(_))
        ));
        let with_null = [a.as_ptr(), std::ptr::null()];
        assert!(matches!(
            // SAFETY: live buffers of the stated lengths, or NULL on purpose.
            unsafe { path_array(with_null.as_ptr(), 2) },
            Err(Error::NullPointer(_))
        ));
        let rel = CString::new("rel").unwrap();
        assert!(matches!(
            // SAFETY: live buffers of the stated lengths, or NULL on purpose.
            unsafe { path_array([rel.as_ptr()].as_ptr(), 1) },
            Err(Error::InvalidPath { .. })
        ));
        let long = vec![b'a'; PATH_MAX + 10];
        assert!(matches!(
            // SAFETY: live buffers of the stated lengths, or NULL on purpose.
            unsafe { path_array([long.as_ptr().cast()].as_ptr(), 1) },
            Err(Error::InvalidPath { .. })
        ));
    }

    #[test]
    fn packed_lists_are_checked() {
        let ok = b"/s/a\0/s/b\0";
        assert_eq!(
            // SAFETY: live buffers of the stated lengths, or NULL on purpose.
            unsafe { packed_paths(ok.as_ptr(), ok.len()) }
                .unwrap()
                .len(),
            2
        );
        let unterminated = b"/s/a";
        // SAFETY: live buffers of the stated lengths, or NULL on purpose.
        assert!(unsafe { packed_paths(unterminated.as_ptr(), 4) }.is_err());
        let empty_item = b"/s/a\0\0";
        assert!(matches!(
            // SAFETY: live buffers of the stated lengths, or NULL on purpose.
            unsafe { packed_paths(empty_item.as_ptr(), 6) },
            Err(Error::InvalidPath { .. })
        ));
        assert!(matches!(
            // SAFETY: live buffers of the stated lengths, or NULL on purpose.
            unsafe { packed_paths(std::ptr::null(), 3) },
            Err(Error::NullPointer(_))
        ));
    }

    #[test]
    fn lists_report_the_size_needed() {
        let items = [&b"/a"[..], &b"/bc"[..]];
        let mut len = 0usize;
        // SAFETY: live buffers of the stated lengths, or NULL on purpose.
        let r = unsafe { write_list(std::ptr::null_mut(), 0, &mut len, items.iter().copied()) };
        assert!(matches!(r, Err(Error::BufferTooSmall { needed: 7 })));
        assert_eq!(len, 7);
        let mut buf = [1 as c_char; 7];
        // SAFETY: live buffers of the stated lengths, or NULL on purpose.
        unsafe { write_list(buf.as_mut_ptr(), 7, &mut len, items.iter().copied()) }.unwrap();
        assert_eq!(buf.map(|c| c as u8), *b"/a\0/bc\0");
    }
}
