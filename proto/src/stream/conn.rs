//! The per-connection state machine (`spec/transport.md` §4–§9).
