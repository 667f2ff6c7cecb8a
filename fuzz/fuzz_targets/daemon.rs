//! cargo-fuzz target `daemon`: the body is
//! `pilot_conformance::fuzz::daemon::run` (one whole daemon fed IPC, UDP and
//! registry bytes and timeouts), which `cargo test` also runs over seeded
//! scripts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pilot_conformance::fuzz::daemon::run(data);
});
