//! goalkeeper: store path locks and a goal scheduler for Nix/Guix-style build
//! daemons, whose locks are released when their goal finishes, on every path,
//! before any waiter is woken (Guix bug #31785).
//!
//! * [`inspect`]: who holds a lock file and who waits for it, from `/proc`.
//! * [`lock`]: lock files, lock sets, and the in-process registry.
//! * [`sched`]: the goal scheduler (workers, goals, slots, lock waits, ledger).
//! * [`ffi`]: the C ABI (`include/goalkeeper.h`).
//! * [`store_db`]: store validity from the store's SQLite database.
//!
//! `doc/design.md` describes these layers (every dependency points down:
//! `tests/layers.rs`), the lock-file protocol and the worker's pull loop.
//! The item numbers cited in comments and tests (G1–G7, L1–L11, V1–V2,
//! S1–S13) name its guarantees and the entries of its failure catalogue;
//! `tests/doc_refs.rs` fails when a citation points at nothing.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod base;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
#[cfg(not(feature = "fault-injection"))]
mod fault;
pub mod ffi;
pub mod inspect;
mod lifecycle;
pub mod lock;
pub mod sched;
pub mod store_db;

pub use error::{Error, Result};
pub use lock::{Backend, LockSet, StorePath, WaitMode};
