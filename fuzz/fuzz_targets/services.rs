//! cargo-fuzz target `services`: the body is
//! `pilot_conformance::fuzz::services::run`, which `cargo test` also runs
//! over the seed corpus and random inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pilot_conformance::fuzz::services::run(data);
});
