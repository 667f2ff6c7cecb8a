//! Fuzz-target bodies: each `run(data)` must never panic on any input except
//! through an `assert!` of a round-trip property, which means a found bug.

pub mod ipc;
