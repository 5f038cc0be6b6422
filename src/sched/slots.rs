//! Build slots, with Guix's semantics: builds and substitutions share
//! `max_jobs` slots; at `max_jobs = 0` one substitution may still run (a
//! build then fails: nothing may build locally).
//!
//! A slot is a [`SlotToken`]: it is neither `Clone` nor `Copy`, and only
//! [`Slots::give_back`] returns it to the pool. A token dropped any other way
//! is not silently "released": the count of used slots then disagrees with
//! the running goals that hold tokens, and the ledger reports it (G6).

use super::goal::GoalKind;

/// Proof that one slot is taken. Lives inside the running goal's state.
#[derive(Debug)]
pub(crate) struct SlotToken {
    _private: (),
}

/// The slot pool of one worker.
#[derive(Debug)]
pub(crate) struct Slots {
    max_jobs: u32,
    used: u32,
}

impl Slots {
    pub(crate) fn new(max_jobs: u32) -> Slots {
        Slots { max_jobs, used: 0 }
    }

    /// How many goals of `kind` may hold a slot at once.
    #[inline]
    pub(crate) fn limit(&self, kind: GoalKind) -> u32 {
        match kind {
            GoalKind::Build => self.max_jobs,
            GoalKind::Substitute => self.max_jobs.max(1),
            GoalKind::Plain => u32::MAX,
        }
    }

    /// The most slots that can ever be in use: `max(1, max_jobs)`.
    #[inline]
    pub(crate) fn capacity(&self) -> u32 {
        self.max_jobs.max(1)
    }

    #[inline]
    pub(crate) fn max_jobs(&self) -> u32 {
        self.max_jobs
    }

    #[inline]
    pub(crate) fn used(&self) -> u32 {
        self.used
    }

    /// Takes a slot for a goal of `kind`, if one is free.
    #[inline]
    pub(crate) fn try_take(&mut self, kind: GoalKind) -> Option<SlotToken> {
        if self.used < self.limit(kind) {
            self.used += 1;
            Some(SlotToken { _private: () })
        } else {
            None
        }
    }

    /// Returns a slot to the pool. Returns `false` (and changes nothing) if
    /// the pool believes no slot is in use, which the ledger reports.
    #[inline]
    pub(crate) fn give_back(&mut self, token: SlotToken) -> bool {
        let SlotToken { _private: () } = token;
        if self.used == 0 {
            return false;
        }
        self.used -= 1;
        true
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
        assert!(s.give_back(t));
        assert_eq!(s.used(), 0);

        let mut s = Slots::new(2);
        let a = s.try_take(GoalKind::Build).unwrap();
        let b = s.try_take(GoalKind::Substitute).unwrap();
        assert!(s.try_take(GoalKind::Build).is_none(), "shared pool");
        assert!(s.try_take(GoalKind::Substitute).is_none(), "shared pool");
        assert!(s.give_back(a) && s.give_back(b));
        assert_eq!(s.capacity(), 2);
    }
}
