//! Helpers for the daemon's real-process tests: start `pilot-daemon`
//! against a `pilot-rendezvous` child on ephemeral loopback ports, wait
//! for its readiness line, talk to it over the IPC client, stop it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pilot_driver_mio::ipc_client::IpcClient;
use pilot_proto::addr::Addr;

use crate::common::{Client, Rv, STEP};

/// Generous bound for bulk transfers (debug builds on a loaded machine).
pub const BULK: Duration = Duration::from_secs(600);

/// Extra flags of a daemon others may dial without trust (nodes are
/// private by default).
pub const PUBLIC: &[&str] = &["--public"];

/// A running daemon process, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub node_id: u32,
    pub address: Addr,
    pub socket: PathBuf,
    pub udp: SocketAddr,
    pub dir: PathBuf,
}

/// The `ready …` line's fields.
fn field<'a>(line: &'a str, k: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(k))
        .unwrap_or_else(|| panic!("no {k} in {line:?}"))
}

impl Daemon {
    /// Starts a daemon with state in `dir` (socket `dir.sock` next to
    /// it) against `rv`, and waits for its readiness line.
    pub fn start(rv: &Rv, dir: &Path, extra: &[&str]) -> Daemon {
        let socket = dir.with_extension("sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pilot-daemon"))
            .arg("--registry")
            .arg(rv.registry.to_string())
            .arg("--beacon")
            .arg(rv.beacon.to_string())
            .arg("--dir")
            .arg(dir)
            .arg("--socket")
            .arg(&socket)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("PILOT_SOCKET")
            .env_remove("PILOT_HOME")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pilot-daemon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(STEP) {
            Ok(l) if l.starts_with("ready ") => l,
            other => {
                let _ = child.kill();
                panic!("daemon did not become ready: {other:?}");
            }
        };
        let node_id: u32 = field(&line, "node_id=").parse().unwrap();
        if extra.contains(&"--public") {
            // Visibility is applied right after registration; wait until
            // the registry shows it so peers can dial without trust.
            let mut reg = Client::connect(rv.registry);
            let deadline = std::time::Instant::now() + STEP;
            while !reg.lookup(node_id).is_some_and(|ok| ok.public) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node {node_id} never became public"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Daemon {
            node_id,
            address: field(&line, "address=").parse().unwrap(),
            socket: PathBuf::from(field(&line, "socket=")),
            udp: field(&line, "udp=").parse().unwrap(),
            dir: dir.to_path_buf(),
            child,
        }
    }

    /// A fresh IPC client.
    pub fn client(&self) -> IpcClient {
        IpcClient::connect(&self.socket).expect("connect IPC")
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + STEP;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident memory of the process in KiB (`VmHWM`), if readable.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deterministic pseudo-random byte stream (xorshift).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Dials `to`'s echo port from `c`, sends `msg`, and returns what comes back.
pub fn echo_once(c: &IpcClient, to: Addr, msg: &[u8]) -> Vec<u8> {
    let conn = c.dial(to, 7).expect("dial echo");
    c.send(conn, msg).expect("send");
    let mut buf = vec![0u8; msg.len()];
    let n = c.recv_exact_or_eof(conn, &mut buf, STEP).expect("recv");
    let _ = c.close(conn);
    buf.truncate(n);
    buf
}
