//! An empty export, the baseline for measuring the cost of crossing the C
//! boundary (`boundary_call_ns` in `make bench`). Compiled only with the
//! `noop` cargo feature, which the benchmarks' library enables: production
//! builds do not export it, and the header does not declare it.

use super::status::gk_status;

/// Does nothing and returns `GK_OK`: no argument, no check, no panic
/// boundary. It exists so that benchmarks can measure the bare cost of a
/// call into the shared library, as the baseline for the checked calls.
#[no_mangle]
pub extern "C" fn gk_noop() -> gk_status {
    gk_status::GK_OK
}
