//! cargo-fuzz target `node`: the body is `pilot_conformance::fuzz::node::run`
//! (two whole nodes, datagrams, timeouts and application calls
//! interleaved), which `cargo test` also runs over seeded scripts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pilot_conformance::fuzz::node::run(data);
});
