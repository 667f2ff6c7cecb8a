//! Wire codecs: the packet header, tunnel frames, beacon messages and the
//! IPC framing (`spec/wire.md`, `spec/ipc.md`).

pub mod ipc;
