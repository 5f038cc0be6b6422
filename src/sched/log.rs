//! The worker's diagnostics log: who waits for what, held by whom; why a
//! goal failed without running; predicate errors. Bounded; drained by
//! `take_log`.

use std::collections::VecDeque;

/// At most this many lines are kept; older ones are dropped and counted.
pub(crate) const LOG_CAP: usize = 10_000;

#[derive(Default)]
pub(crate) struct Log {
    lines: VecDeque<String>,
    dropped: u64,
}

impl Log {
    pub(crate) fn push(&mut self, line: String) {
        if self.lines.len() >= LOG_CAP {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(line);
    }

    /// The lines so far, oldest first; the log is emptied.
    pub(crate) fn take(&mut self) -> Vec<String> {
        let mut v: Vec<String> = Vec::with_capacity(self.lines.len() + 1);
        if self.dropped > 0 {
            v.push(format!("({} older log lines were dropped)", self.dropped));
            self.dropped = 0;
        }
        v.extend(self.lines.drain(..));
        v
    }

    /// The lines, without draining.
    pub(crate) fn peek(&self) -> impl Iterator<Item = &String> {
        self.lines.iter()
    }
}
