//! Fuzz-target bodies: each `run(data)` must never panic on any input
//! (a panic is a found bug). They run under cargo-fuzz and, over seeds and
//! random inputs, as ordinary tests.

pub mod session;
