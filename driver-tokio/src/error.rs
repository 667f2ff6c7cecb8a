//! The one error type of the crate.

use pilot_proto::node::{NodeError, ResetCause};

/// Why an operation of this crate failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The `proto` node refused the command.
    #[error("node: {0}")]
    Node(#[from] NodeError),
    /// The peer refused the connection (RST, or nothing listens there).
    #[error("connection refused")]
    Refused,
    /// The dial got no answer in time.
    #[error("dial timed out")]
    TimedOut,
    /// The connection ended abnormally.
    #[error("connection reset ({0:?})")]
    Reset(ResetCause),
    /// The port is already bound by this application.
    #[error("port {0} is already in use")]
    PortInUse(u16),
    /// The driver task (embedded node) or the IPC connection (daemon
    /// client) is gone.
    #[error("the node is no longer running")]
    Stopped,
    /// The registry could not resolve or register.
    #[error("registry: {0}")]
    Registry(String),
    /// The daemon answered a request with an error.
    #[error("daemon: {0}")]
    Daemon(String),
    /// The daemon sent something this client does not understand.
    #[error("daemon protocol: {0}")]
    Protocol(String),
    /// The operation is not available in this mode.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind as K;
        match e {
            Error::Io(e) => e,
            Error::Refused => std::io::Error::new(K::ConnectionRefused, e),
            Error::TimedOut => std::io::Error::new(K::TimedOut, e),
            Error::Reset(_) => std::io::Error::new(K::ConnectionReset, e),
            Error::PortInUse(_) => std::io::Error::new(K::AddrInUse, e),
            Error::Stopped => std::io::Error::new(K::NotConnected, e),
            other => std::io::Error::other(other),
        }
    }
}
