//! Build script: how the `pilot-daemon` executable is laid out, so an idle
//! daemon keeps few pages of it resident (issue #14, README "Session 9:
//! idle memory"). Nothing here changes what the code does.
//!
//! On x86_64 Linux with glibc and rustc's default linker (rust-lld, rustc
//! 1.90 and later; checked):
//! - `--symbol-ordering-file=pilot-daemon.order`: the functions an idle
//!   daemon has run (start, registration, a stream, timers) go first in
//!   the text, together. The kernel maps text in 64 KiB blocks around each
//!   touched page, so the same code spread over the whole binary kept
//!   5.5 MiB resident, packed it keeps ~1.5 MiB. Names the list has but
//!   the build lacks (after a code or toolchain change) are skipped
//!   silently; `scripts/daemon-symbol-order.sh` regenerates the list.
//! - `-z pack-relative-relocs` (DT_RELR) when the build machine's glibc
//!   is 2.36 or newer and builds for itself: the 24k relative relocations
//!   of the position-independent executable take 8 KB instead of 570 KB,
//!   which the loader reads at every start. The binary then needs glibc
//!   ≥ 2.36 to run.
//!
//! `PILOT_PLAIN_LINK=1` turns both off (e.g. with another linker).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=pilot-daemon.order");
    println!("cargo:rerun-if-env-changed=PILOT_PLAIN_LINK");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let target = env("TARGET");
    let custom_linker =
        !env("RUSTC_LINKER").is_empty() || env("CARGO_ENCODED_RUSTFLAGS").contains("linker");
    if target != "x86_64-unknown-linux-gnu"
        || custom_linker
        || env("PILOT_PLAIN_LINK") == "1"
        || !rustc_links_with_lld(&env("RUSTC"))
    {
        return;
    }
    let order = Path::new(&env("CARGO_MANIFEST_DIR")).join("pilot-daemon.order");
    if order.exists() {
        let arg = format!("-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bin=pilot-daemon={arg}");
        println!("cargo:rustc-link-arg-bin=pilot-daemon=-Wl,--no-warn-symbol-ordering");
    }
    if env("HOST") == target && host_glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bin=pilot-daemon=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether `rustc` links x86_64 Linux with rust-lld by default (1.90 and
/// later): the symbol ordering flag is lld's; GNU ld would refuse it.
fn rustc_links_with_lld(rustc: &str) -> bool {
    let rustc = if rustc.is_empty() { "rustc" } else { rustc };
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let v = String::from_utf8_lossy(&out.stdout);
    major_minor(v.split_whitespace().nth(1).unwrap_or("")).is_some_and(|have| have >= (1, 90))
}

/// The leading `major.minor` of a version string such as "1.95.0" or
/// "2.36".
fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Whether the glibc this build script runs on is at least `major.minor`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn host_glibc_at_least(major: u32, minor: u32) -> bool {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: glibc returns a pointer to a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
    major_minor(v.to_str().unwrap_or("")).is_some_and(|have| have >= (major, minor))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn host_glibc_at_least(_major: u32, _minor: u32) -> bool {
    false
}
