//! # pilot-driver-tokio
//!
//! Runs a `pilot_proto` node inside a tokio runtime, and (later) offers an
//! async client of a running `pilot-daemon` over its IPC socket.
