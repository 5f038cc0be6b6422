//! Gives the shared library a versioned soname, `libgoalkeeper.so.<major>`,
//! so that `make install` can ship `libgoalkeeper.so.X.Y.Z` with the usual
//! symlinks and programs keep working across compatible upgrades.

fn main() {
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libgoalkeeper.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
