//! cargo-fuzz target `beacon_server`: the body is
//! `pilot_conformance::fuzz::beacon_server::run`, which `cargo test` also
//! runs over seeded random scripts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pilot_conformance::fuzz::beacon_server::run(data);
});
