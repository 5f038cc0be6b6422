//! A FIFO of goal indices with pushes at both ends: a ring buffer of `u32`
//! whose capacity is a power of two, so that wrapping is a mask. The ready
//! queue takes a push and a pop per goal; this keeps them a few
//! instructions each.

/// A double-ended queue of `u32`.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// The slots; its length is the capacity (0 or a power of two).
    buf: Vec<u32>,
    head: usize,
    len: usize,
}

impl Ring {
    #[inline(always)]
    fn mask(&self) -> usize {
        self.buf.len().wrapping_sub(1)
    }

    /// Appends `x` at the back.
    #[inline(always)]
    pub(crate) fn push_back(&mut self, x: u32) {
        if self.len == self.buf.len() {
            self.grow();
        }
        let at = (self.head + self.len) & self.mask();
        self.buf[at] = x;
        self.len += 1;
    }

    /// Puts `x` at the front.
    #[inline]
    pub(crate) fn push_front(&mut self, x: u32) {
        if self.len == self.buf.len() {
            self.grow();
        }
        self.head = self.head.wrapping_sub(1) & self.mask();
        self.buf[self.head] = x;
        self.len += 1;
    }

    /// Takes the front element.
    #[inline(always)]
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let x = self.buf[self.head];
        self.head = (self.head + 1) & self.mask();
        self.len -= 1;
        Some(x)
    }

    /// The `k`-th element from the front.
    #[inline(always)]
    pub(crate) fn get(&self, k: usize) -> Option<u32> {
        (k < self.len).then(|| self.buf[(self.head + k) & self.mask()])
    }

    /// The front element.
    #[inline(always)]
    pub(crate) fn front(&self) -> Option<u32> {
        self.get(0)
    }

    /// Number of elements.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Makes room for at least `n` more elements.
    pub(crate) fn reserve(&mut self, n: usize) {
        while self.buf.len() - self.len < n {
            self.grow();
        }
    }

    /// Doubles the capacity (at least 16), keeping the order. (Not four
    /// times, as the arena's arrays: a queue that holds at most N entries
    /// at once then wraps around within twice N, reusing its pages.)
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let cap = (self.buf.len() * 2).max(16);
        let mut buf = Vec::with_capacity(cap);
        let (a, b) = (self.head, self.head + self.len);
        if b <= self.buf.len() {
            buf.extend_from_slice(&self.buf[a..b]);
        } else {
            buf.extend_from_slice(&self.buf[a..]);
            buf.extend_from_slice(&self.buf[..b - self.buf.len()]);
        }
        buf.resize(cap, 0);
        self.buf = buf;
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Against `VecDeque`, through growth with the contents wrapped.
    #[test]
    fn behaves_like_a_vecdeque() {
        let mut r = Ring::default();
        let mut m = VecDeque::new();
        let mut x: u32 = 1;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match x % 7 {
                0..=2 => {
                    r.push_back(step);
                    m.push_back(step);
                }
                3 => {
                    r.push_front(step);
                    m.push_front(step);
                }
                _ => assert_eq!(r.pop_front(), m.pop_front()),
            }
            assert_eq!(r.len(), m.len());
            assert_eq!(r.front(), m.front().copied());
            assert_eq!(r.get(1), m.get(1).copied());
        }
        r.reserve(1000);
        assert!(r.capacity() >= r.len() + 1000);
        while let Some(v) = m.pop_front() {
            assert_eq!(r.pop_front(), Some(v));
        }
        assert_eq!(r.pop_front(), None);
    }
}
