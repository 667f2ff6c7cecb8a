//! cargo-fuzz target `stream`: the body is
//! `pilot_conformance::fuzz::stream::run` (two connections over a scripted
//! hostile network), which `cargo test` also runs over random scripts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pilot_conformance::fuzz::stream::run(data);
});
