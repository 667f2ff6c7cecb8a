//! Shared fixture of the NAT-lab tests: a lab of network namespaces built
//! by `scripts/natlab.sh` (a "public" namespace with the rendezvous, home
//! namespaces behind routers that NAT or not), real `pilot-rendezvous` and
//! `pilot-daemon` processes inside it, the public side's traffic counters,
//! and the bulk stream used to move and time bytes between homes. Every
//! lab has a unique name and is deleted on drop; the processes it started
//! are stopped first.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pilot_proto::addr::Addr;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::pilotctl_support::{Node, Proc, wait_registered};

/// The topology script (single definition of the lab).
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/natlab.sh");
/// The binaries under test.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_pilot-daemon");
/// The rendezvous binary.
pub const RENDEZVOUS: &str = env!("CARGO_BIN_EXE_pilot-rendezvous");
/// Registry address inside the lab (on the public namespace's loopback).
pub const REGISTRY: &str = "198.18.0.1:9000";
/// Beacon address inside the lab.
pub const BEACON: &str = "198.18.0.1:9001";
/// The beacon's observer address (discovers only; mapping detection).
pub const OBSERVER: &str = "198.18.0.1:9002";
/// UDP tunnel port every home daemon listens on (each home is its own
/// namespace, so they can all use it).
pub const TUNNEL_PORT: u16 = 4000;

/// The NAT in front of a home.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// None: the home's address is public.
    None,
    /// Masquerade keeping ports: endpoint-independent mapping.
    Stable,
    /// Masquerade with a random port per flow: a symmetric NAT.
    Symmetric,
}

impl Nat {
    fn arg(self) -> &'static str {
        match self {
            Nat::None => "none",
            Nat::Stable => "stable",
            Nat::Symmetric => "symmetric",
        }
    }
}

fn script(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run natlab.sh {args:?}: {e}"))
}

/// A lab of namespaces (deleted on drop) and the processes run in it.
pub struct Lab {
    /// Lab name: the prefix of its namespaces.
    pub name: String,
    /// The NAT of each home (home `i` is `nats[i - 1]`).
    pub nats: Vec<Nat>,
    /// Logs, stores, sockets and state directories.
    pub dir: tempfile::TempDir,
    rendezvous: Option<Proc>,
}

impl Lab {
    /// Builds a lab with one home per entry of `nats`, or says why network
    /// namespaces cannot be made here (the caller skips). Root without
    /// `ip`/`nft` is a broken setup, not a reason to skip: it panics.
    pub fn up(nats: &[Nat]) -> Result<Lab, String> {
        Self::up_with(nats, None)
    }

    /// Like [`Lab::up`], the routers forgetting a UDP mapping after
    /// `udp_timeout_secs` without traffic (`natlab.sh up --udp-timeout`).
    pub fn up_with(nats: &[Nat], udp_timeout_secs: Option<u32>) -> Result<Lab, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (network namespaces need CAP_NET_ADMIN)".into());
        }
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "nl{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // Can this process make a namespace at all?
        let probe = format!("{name}-probe");
        let out = Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .expect("run ip (install iproute2)");
        if !out.status.success() {
            return Err(format!(
                "ip netns add failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        assert!(
            Command::new("nft").arg("--version").output().is_ok(),
            "nft is missing: install nftables (apt-get install nftables)"
        );
        let timeout = udp_timeout_secs.map(|s| s.to_string());
        let mut args = vec!["up"];
        if let Some(t) = &timeout {
            args.extend(["--udp-timeout", t.as_str()]);
        }
        args.push(name.as_str());
        args.extend(nats.iter().map(|n| n.arg()));
        let out = script(&args);
        assert!(
            out.status.success(),
            "natlab.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Lab {
            name,
            nats: nats.to_vec(),
            dir: tempfile::tempdir().expect("tempdir"),
            rendezvous: None,
        })
    }

    /// The namespace `ns` (`pub`, `rI`, `hI`) of this lab.
    pub fn ns(&self, ns: &str) -> String {
        format!("{}-{ns}", self.name)
    }

    /// A command run inside namespace `ns` of the lab.
    pub fn exec(&self, ns: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(ns), prog]);
        c
    }

    /// Starts `pilot-rendezvous` (registry + beacon) in the public
    /// namespace and waits until it listens.
    pub fn start_rendezvous(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("rv.log")).expect("log");
        let mut child = self
            .exec("pub", RENDEZVOUS)
            .args(["--registry-addr", REGISTRY, "--beacon-addr", BEACON])
            .args(["--beacon-observer-addr", OBSERVER])
            .arg("--store")
            .arg(self.dir.path().join("rv.redb"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn pilot-rendezvous");
        let stdout = child.stdout.take().expect("stdout");
        let proc = Proc(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("listening line");
        assert!(
            line.contains(&format!("registry={REGISTRY}")),
            "rendezvous: {line:?} {}",
            self.log("rv")
        );
        self.rendezvous = Some(proc);
    }

    /// Starts a `pilot-daemon` named `name` in home `home` (1-based),
    /// listening on `0.0.0.0:4000` there, and waits until it registered.
    /// Heartbeats every second unless `extra` sets `--keepalive`.
    pub fn daemon(&self, home: usize, name: &str, extra: &[&str]) -> Node {
        let keepalive: &[&str] = if extra.contains(&"--keepalive") {
            &[]
        } else {
            &["--keepalive", "1s"]
        };
        assert!((1..=self.nats.len()).contains(&home), "no home {home}");
        let dir = self.dir.path().join(name);
        let socket = self.dir.path().join(format!("{name}.sock"));
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let child = self
            .exec(&format!("h{home}"), DAEMON)
            .args(["--registry", REGISTRY, "--beacon", BEACON])
            .args(["--beacon-observer", OBSERVER])
            .args(["--listen", &format!("0.0.0.0:{TUNNEL_PORT}")])
            .args(["--hostname", name])
            .args(keepalive)
            .arg("--socket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pilot-daemon");
        let proc = Proc(child);
        let node_id = wait_registered(&socket, Duration::from_secs(60), || self.log(name));
        Node {
            name: name.to_owned(),
            socket,
            dir,
            node_id,
            proc,
        }
    }

    /// The log of process `name` (`rv` for the rendezvous).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Every traffic counter of the lab (`natlab.sh counters`), as
    /// `"ns.name"` → bytes; see [`Counters`].
    pub fn counters(&self) -> Counters {
        let out = script(&["counters", &self.name]);
        assert!(
            out.status.success(),
            "natlab.sh counters: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut bytes = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [ns, name, b] = f[..] {
                bytes.insert(format!("{ns}.{name}"), b.parse().expect("byte count"));
            }
        }
        assert!(!bytes.is_empty(), "no counters in lab {}", self.name);
        Counters(bytes)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Stop the rendezvous before its namespace goes away.
        drop(self.rendezvous.take());
        if std::thread::panicking() {
            // The logs of a failed test, before the temp dir goes.
            if let Ok(dir) = std::fs::read_dir(self.dir.path()) {
                for e in dir.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "log") {
                        let text = std::fs::read_to_string(&p).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(40).collect();
                        eprintln!("--- {} (last 40 lines)", p.display());
                        for l in tail.iter().rev() {
                            eprintln!("{l}");
                        }
                    }
                }
            }
        }
        let _ = script(&["down", &self.name]);
    }
}

/// A snapshot of the lab's traffic counters (bytes).
#[derive(Clone, Debug, Default)]
pub struct Counters(pub HashMap<String, u64>);

impl Counters {
    fn get(&self, k: &str) -> u64 {
        self.0.get(k).copied().unwrap_or(0)
    }

    /// UDP bytes delivered into home `to` straight from home `from`
    /// (counted by `to`'s router after its NAT filter: what got through).
    pub fn delivered_direct(&self, to: usize, from: usize) -> u64 {
        self.get(&format!("r{to}.from_{from}"))
    }

    /// UDP bytes delivered into home `to` from the beacon (relayed frames
    /// and beacon control traffic).
    pub fn delivered_relayed(&self, to: usize) -> u64 {
        self.get(&format!("r{to}.from_beacon"))
    }

    /// UDP bytes the public side forwarded between the routers of homes
    /// `i` and `j`, both ways, whether or not the far router let them in
    /// (direct attempts included).
    pub fn offered_direct(&self, i: usize, j: usize) -> u64 {
        self.get(&format!("pub.fwd_{i}_{j}")) + self.get(&format!("pub.fwd_{j}_{i}"))
    }

    /// UDP bytes between home `i`'s router and the beacon, both ways.
    pub fn beacon(&self, i: usize) -> u64 {
        self.get(&format!("pub.beacon_in_{i}")) + self.get(&format!("pub.beacon_out_{i}"))
    }

    /// The growth of every counter since `before`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(before.get(k))))
                .collect(),
        )
    }
}

/// The virtual address of a daemon (from `info`).
pub fn address(n: &Node) -> Addr {
    let info = n.client().info().expect("info");
    info["address"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {info}"))
}

/// `peers --json` entry of `n` for `peer`, if any.
pub fn peer_entry(n: &Node, peer: u32) -> Option<Value> {
    let v = n.ok(&["peers"]);
    v["peers"]
        .as_array()?
        .iter()
        .find(|p| p["node_id"].as_u64() == Some(u64::from(peer)))
        .cloned()
}

/// Deterministic test bytes (xorshift64*), so a mismatch is reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// What the first contact between two daemons took.
#[derive(Clone, Copy, Debug)]
pub struct FirstByte {
    /// Dial of the peer's echo port until the stream was open.
    pub dial: Duration,
    /// Dial start until the first echoed byte was back.
    pub first_byte: Duration,
}

/// Opens the first stream from `from` to `to`'s echo service (port 7) and
/// times it until one echoed byte is back.
pub fn first_byte(from: &Node, to: Addr) -> FirstByte {
    let mut c = from.client();
    c.set_timeout(Duration::from_secs(90));
    let t0 = Instant::now();
    let conn = c.dial(to, 7).expect("first dial to the peer's echo port");
    let dial = t0.elapsed();
    c.send(conn, b"!").expect("send");
    let got = c.recv(conn, Duration::from_secs(90)).expect("recv");
    let first_byte = t0.elapsed();
    assert_eq!(got.as_deref(), Some(&b"!"[..]), "echo of the first byte");
    let _ = c.close(conn);
    FirstByte { dial, first_byte }
}

/// One bulk transfer: bytes, time and equal hashes.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// Bytes delivered.
    pub bytes: usize,
    /// First write until the receiver saw the end of the stream.
    pub elapsed: Duration,
}

impl Transfer {
    /// MiB per second.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / 1048576.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `len` pattern bytes on a stream from `from` to `to`'s `port`,
/// where `to_node` accepts and hashes them; asserts equal SHA-256.
pub fn transfer(from: &Node, to_node: &Node, to: Addr, port: u16, len: usize) -> Transfer {
    let data = pattern(len, u64::from(port) << 32 | len as u64);
    let want = Sha256::digest(&data);
    let mut rx = to_node.client();
    rx.set_timeout(Duration::from_secs(30));
    rx.bind(port).expect("bind the sink port");
    let rx = Arc::new(rx);
    let sink = {
        let rx = rx.clone();
        std::thread::spawn(move || {
            let a = rx
                .accept(port, Duration::from_secs(120))
                .expect("accept the bulk stream");
            let mut h = Sha256::new();
            let mut got = 0usize;
            while let Some(chunk) = rx
                .recv(a.conn_id, Duration::from_secs(120))
                .expect("bulk data within 120 s")
            {
                h.update(&chunk);
                got += chunk.len();
            }
            (got, h.finalize(), Instant::now())
        })
    };
    let mut tx = from.client();
    tx.set_timeout(Duration::from_secs(90));
    let conn = tx.dial(to, port).expect("dial the sink");
    let t0 = Instant::now();
    for chunk in data.chunks(256 * 1024) {
        tx.send(conn, chunk).expect("send");
    }
    tx.close(conn).expect("close");
    let (got, hash, end) = sink.join().expect("sink thread");
    assert_eq!(got, len, "bytes delivered");
    assert_eq!(hash, want, "SHA-256 of the delivered bytes");
    Transfer {
        bytes: got,
        elapsed: end.duration_since(t0),
    }
}

/// Sends file `path` from `from` to `to` by data exchange and checks the
/// copy in `to`'s `received/` directory has the same SHA-256.
pub fn send_file(from: &Node, to: &Node, path: &Path) {
    let target = to.node_id.to_string();
    let d = from.ok(&["send-file", &target, path.to_str().unwrap()]);
    assert!(d["ack"].is_string(), "no acknowledgement: {d}");
    assert_eq!(
        d["bytes"].as_u64(),
        Some(std::fs::metadata(path).unwrap().len())
    );
    let name = path.file_name().unwrap();
    let copy: PathBuf = to.dir.join("received").join(name);
    let got = std::fs::read(&copy).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
    let want = std::fs::read(path).unwrap();
    assert_eq!(got.len(), want.len(), "received file length");
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&want),
        "received file SHA-256"
    );
}
