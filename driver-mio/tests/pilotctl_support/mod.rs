//! Shared fixture of the `pilotctl_*` tests: a rendezvous and daemons as
//! real child processes of the `pilotctl` binary on loopback, in a temp dir.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pilot_driver_mio::ipc_client::IpcClient;
use serde_json::Value;

/// The binary under test.
pub const PILOTCTL: &str = env!("CARGO_BIN_EXE_pilotctl");

/// A child process that is stopped (SIGTERM, then SIGKILL) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.0.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One daemon of the test network.
pub struct Node {
    pub name: String,
    pub socket: PathBuf,
    pub dir: PathBuf,
    pub node_id: u32,
    pub proc: Proc,
}

impl Node {
    /// Runs `pilotctl --json <args>` against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(PILOTCTL)
            .arg("--json")
            .args(args)
            .env("PILOT_SOCKET", &self.socket)
            .output()
            .expect("run pilotctl")
    }

    /// Runs a command that must succeed; returns its `data`.
    pub fn ok(&self, args: &[&str]) -> Value {
        let out = self.ctl(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON envelope");
        assert_eq!(v["status"], "ok");
        v["data"].clone()
    }

    /// Runs a command that must fail; returns the error envelope.
    pub fn err(&self, args: &[&str]) -> Value {
        let out = self.ctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
        assert!(out.stdout.is_empty());
        let v: Value = serde_json::from_slice(&out.stderr).expect("JSON error envelope");
        assert_eq!(v["status"], "error");
        v
    }

    /// An IPC client on this daemon.
    pub fn client(&self) -> IpcClient {
        IpcClient::connect(&self.socket).expect("connect daemon")
    }

    /// Spawns `pilotctl --json <args>` in the background (stdout piped).
    pub fn spawn(&self, args: &[&str]) -> Proc {
        Proc(
            Command::new(PILOTCTL)
                .arg("--json")
                .args(args)
                .env("PILOT_SOCKET", &self.socket)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn pilotctl"),
        )
    }
}

/// A rendezvous plus daemons in a temp dir.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub registry: String,
    pub beacon: String,
    pub rendezvous: Proc,
}

impl Net {
    /// Starts the rendezvous on free loopback ports.
    pub fn new() -> Net {
        Self::new_with(&[])
    }

    /// Like [`Net::new`], with extra rendezvous flags.
    pub fn new_with(extra: &[&str]) -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(PILOTCTL)
            .args([
                "_rendezvous-run",
                "--registry-addr",
                "127.0.0.1:0",
                "--beacon-addr",
                "127.0.0.1:0",
                "--store",
            ])
            .arg(dir.path().join("rv.redb"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rendezvous");
        let stdout = child.stdout.take().expect("stdout");
        let rendezvous = Proc(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("listening line");
        let mut registry = String::new();
        let mut beacon = String::new();
        for kv in line.split_whitespace() {
            if let Some(v) = kv.strip_prefix("registry=") {
                registry = v.to_owned();
            } else if let Some(v) = kv.strip_prefix("beacon=") {
                beacon = v.to_owned();
            }
        }
        assert!(!registry.is_empty() && !beacon.is_empty(), "got {line:?}");
        Net {
            dir,
            registry,
            beacon,
            rendezvous,
        }
    }

    /// Starts a daemon named `name` (hostname = name) and waits until it is
    /// registered.
    pub fn node(&self, name: &str, extra: &[&str]) -> Node {
        // Fast heartbeats keep registry-side recovery quick in tests.
        let mut args = vec!["--keepalive", "1s"];
        args.extend_from_slice(extra);
        self.node_with(name, &args)
    }

    /// Like [`Net::node`], with the daemon's default keepalive.
    pub fn node_with(&self, name: &str, extra: &[&str]) -> Node {
        let dir = self.dir.path().join(name);
        let socket = self.dir.path().join(format!("{name}.sock"));
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let child = Command::new(PILOTCTL)
            .arg("_daemon-run")
            .args(["--registry", &self.registry, "--beacon", &self.beacon])
            .args(["--listen", "127.0.0.1:0", "--hostname", name])
            .arg("--socket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        let proc = Proc(child);
        let log = self.dir.path().join(format!("{name}.log"));
        let node_id = wait_registered(&socket, Duration::from_secs(30), || {
            std::fs::read_to_string(&log).unwrap_or_default()
        });
        Node {
            name: name.to_owned(),
            socket,
            dir,
            node_id,
            proc,
        }
    }
}

/// Waits up to `limit` until the daemon at `socket` answers `info` with a
/// node ID (it registered) and returns it; panics with `log()` (the
/// daemon's log) otherwise. Shared by the pilotctl and NAT-lab suites.
pub fn wait_registered(socket: &Path, limit: Duration, log: impl Fn() -> String) -> u32 {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(mut c) = IpcClient::connect(socket) {
            c.set_timeout(Duration::from_secs(5));
            if let Ok(info) = c.info() {
                if let Some(id) = info["node_id"].as_u64().filter(|&n| n != 0) {
                    return id as u32;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("daemon did not register: {}", log());
}

/// Whether a `{"trusted":[…]}` / `{"pending":[…]}` list names `node`.
pub fn lists(v: &Value, key: &str, node: u32) -> bool {
    v[key].as_array().is_some_and(|l| {
        l.iter()
            .any(|e| e["node_id"].as_u64() == Some(u64::from(node)))
    })
}

/// Polls `f` every 20 ms until it holds; returns how long that took, or
/// `None` after `limit`.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The log of the daemon `name` of `net`.
pub fn log_of(net: &Net, name: &str) -> String {
    std::fs::read_to_string(net.dir.path().join(format!("{name}.log"))).unwrap_or_default()
}

/// Polls `f` every 100 ms for up to 30 s.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// Makes `a` and `b` trust each other: `a` asks, `b` approves.
pub fn trust(a: &Node, b: &Node) {
    let b_id = b.node_id.to_string();
    let a_id = a.node_id.to_string();
    a.ok(&["handshake", &b_id, "test"]);
    eventually("the request at b", || {
        lists(&b.ok(&["pending"]), "pending", a.node_id)
    });
    b.ok(&["approve", &a_id]);
    eventually("mutual trust", || {
        lists(&a.ok(&["trust"]), "trusted", b.node_id)
            && lists(&b.ok(&["trust"]), "trusted", a.node_id)
    });
}

/// Waits for a background `pilotctl` and returns its parsed stdout `data`.
pub fn finish(mut p: Proc) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = p.0.try_wait() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background pilotctl did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = p.0.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
    }
    if let Some(mut s) = p.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut err);
    }
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|_| panic!("stdout {out:?}, stderr {err:?}"));
    assert_eq!(v["status"], "ok");
    v["data"].clone()
}
