//! Daemon tests.
