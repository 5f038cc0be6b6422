//! goalkeeper: store path locks and a goal scheduler for Nix/Guix-style build
//! daemons, whose locks are released when their goal finishes, on every path,
//! before any waiter is woken (Guix bug #31785).
//!
//! * [`inspect`]: who holds a lock file and who waits for it, from `/proc`.
//! * [`lock`]: lock files, lock sets, and the in-process registry.
//! * [`sched`]: the goal scheduler (workers, goals, slots, lock waits, ledger).
//! * [`ffi`]: the C ABI (`include/goalkeeper.h`).
//! * [`store_db`]: store validity from the store's SQLite database.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod fault;
pub mod ffi;
pub mod inspect;
mod lifecycle;
pub mod lock;
pub mod sched;
pub mod store_db;

pub use error::{Error, Result};
pub use lock::{Backend, LockSet, StorePath, WaitMode};
