//! Build slots, with Guix's semantics: builds and substitutions share
//! `max_jobs` slots; at `max_jobs = 0` one substitution may still run (a
//! build then fails: nothing may build locally).
//!
//! A slot is a [`SlotToken`]: it is neither `Clone` nor `Copy`, and only
//! [`Slots::give_back`] returns it to the pool. A token dropped any other way
//! is not silently "released": the count of used slots then disagrees with
//! the running goals that hold tokens, which the transitions count apart
//! ([`Slots::holders`]), and the ledger reports it (G6).

use std::collections::VecDeque;

use super::goal::GoalKind;

/// Proof that one slot is taken. Lives inside the running goal's state.
#[derive(Debug)]
pub(crate) struct SlotToken {
    _private: (),
}

/// The slot pool of one worker, and the goals waiting for a slot.
///
/// Invariant (checked by the ledger): `used` equals `holders`, the running
/// goals whose state holds a token, and is at most `max(1, max_jobs)`.
#[derive(Debug)]
pub(crate) struct Slots {
    max_jobs: u32,
    used: u32,
    holders: u32,
    /// Goals waiting for a slot, oldest first (entries of goals that left
    /// that state since are skipped when met).
    waiting: VecDeque<u32>,
}

impl Slots {
    pub(crate) fn new(max_jobs: u32) -> Slots {
        Slots {
            max_jobs,
            used: 0,
            holders: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Whether a goal of `kind` could take a slot now.
    pub(crate) fn free_for(&self, kind: GoalKind) -> bool {
        let limit = match kind {
            GoalKind::Build => self.max_jobs,
            GoalKind::Substitute => self.max_jobs.max(1),
            GoalKind::Plain => u32::MAX,
        };
        self.used < limit
    }

    /// The most slots that can ever be in use: `max(1, max_jobs)`.
    pub(crate) fn capacity(&self) -> u32 {
        self.max_jobs.max(1)
    }

    pub(crate) fn max_jobs(&self) -> u32 {
        self.max_jobs
    }

    pub(crate) fn used(&self) -> u32 {
        self.used
    }

    /// The running goals holding a token, as the transitions count them.
    pub(crate) fn holders(&self) -> u32 {
        self.holders
    }

    /// Takes a slot for a goal of `kind`, if one is free; the goal that
    /// runs with it is counted as a holder.
    pub(crate) fn try_take(&mut self, kind: GoalKind) -> Option<SlotToken> {
        if !self.free_for(kind) {
            return None;
        }
        self.used += 1;
        Some(SlotToken { _private: () })
    }

    /// A goal started running with its token.
    pub(crate) fn hold(&mut self) {
        self.holders += 1;
    }

    /// Returns the token of a goal that held it (`was_held`: it ran with
    /// it) to the pool. Returns `false` (and changes nothing) if the pool
    /// believes no slot is in use, which the ledger reports.
    pub(crate) fn give_back(&mut self, token: SlotToken, was_held: bool) -> bool {
        let SlotToken { _private: () } = token;
        if was_held {
            self.holders = self.holders.wrapping_sub(1);
        }
        if self.used == 0 {
            return false;
        }
        self.used -= 1;
        true
    }

    /// Goal `i` waits for a slot.
    pub(crate) fn wait(&mut self, i: u32) {
        self.waiting.push_back(i);
    }

    /// Removes and returns the first goal waiting for a slot, if a slot is
    /// free for it. `waiting` gives a goal's kind while it still waits for
    /// a slot; the entries of goals that left that state are dropped.
    pub(crate) fn next_waiter(&mut self, waiting: impl Fn(u32) -> Option<GoalKind>) -> Option<u32> {
        while let Some(&w) = self.waiting.front() {
            match waiting(w) {
                Some(kind) if !self.free_for(kind) => return None,
                Some(_) => return self.waiting.pop_front(),
                None => self.waiting.pop_front(),
            };
        }
        None
    }

    /// The test hook for the ledger's tests: a running goal would hold a
    /// slot (`+1`), or no longer (`-1`).
    #[cfg(test)]
    pub(crate) fn skew_holders(&mut self, by: i32) {
        self.holders = self.holders.wrapping_add_signed(by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guix_slot_semantics() {
        let mut s = Slots::new(0);
        assert!(s.try_take(GoalKind::Build).is_none(), "no local builds");
        let t = s.try_take(GoalKind::Substitute).expect("one substitution");
        assert!(s.try_take(GoalKind::Substitute).is_none());
        assert!(s.give_back(t, false));
        assert_eq!(s.used(), 0);

        let mut s = Slots::new(2);
        let a = s.try_take(GoalKind::Build).unwrap();
        let b = s.try_take(GoalKind::Substitute).unwrap();
        assert!(s.try_take(GoalKind::Build).is_none(), "shared pool");
        assert!(s.try_take(GoalKind::Substitute).is_none(), "shared pool");
        assert!(s.give_back(a, false) && s.give_back(b, false));
        assert_eq!(s.capacity(), 2);
    }
}
