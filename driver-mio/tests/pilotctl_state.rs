//! `pilotctl daemon start` by hand, as a user would: two state
//! directories, a local rendezvous that outlives the daemon that started
//! it, trust visible at once, private files, and a profile (hostname)
//! that survives a restart.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const PILOTCTL: &str = env!("CARGO_BIN_EXE_pilotctl");

/// A free loopback port (TCP and UDP are probed separately by the caller).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon {
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(PILOTCTL)
            .arg("--json")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("PILOT_SOCKET")
            .env_remove("PILOT_HOME")
            .output()
            .expect("run pilotctl")
    }

    fn ok(&self, args: &[&str]) -> Value {
        let out = self.ctl(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["data"].clone()
    }

    fn start(&self, registry: &str, beacon: &str, extra: &[&str]) -> Value {
        let dir = self.dir.to_str().unwrap();
        let mut args = vec![
            "daemon",
            "start",
            "--dir",
            dir,
            "--registry",
            registry,
            "--beacon",
            beacon,
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    fn stop(&self) {
        let _ = self.ctl(&["daemon", "stop", "--dir", self.dir.to_str().unwrap()]);
    }
}

/// Stops every daemon and the rendezvous, also when the test fails.
struct Cleanup(Vec<PathBuf>, PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = Command::new(PILOTCTL)
                .args(["daemon", "stop", "--dir"])
                .arg(dir)
                .output();
        }
        let _ = Command::new(PILOTCTL)
            .args(["daemon", "stop", "--rendezvous", "--dir"])
            .arg(&self.1)
            .output();
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn lists(v: &Value, key: &str, node: &Value) -> bool {
    v[key]
        .as_array()
        .is_some_and(|l| l.iter().any(|e| &e["node_id"] == node))
}

fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn daemons_started_by_hand_share_a_rendezvous_that_outlives_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = format!("127.0.0.1:{}", free_tcp_port());
    let beacon = format!("127.0.0.1:{}", free_udp_port());
    let node = |name: &str| Daemon {
        // Nested: `daemon start` creates the missing parents privately.
        dir: tmp.path().join("state").join(name),
        socket: tmp.path().join(format!("{name}.sock")),
    };
    let (a, b, c) = (node("a"), node("b"), node("c"));
    let _cleanup = Cleanup(
        vec![a.dir.clone(), b.dir.clone(), c.dir.clone()],
        a.dir.clone(),
    );

    // First start: no registry listens, so a local rendezvous is started
    // as its own process; the second start uses it.
    let sa = a.start(&registry, &beacon, &["--hostname", "alpha"]);
    assert!(sa["rendezvous"]["pid"].as_u64().is_some(), "{sa}");
    let sb = b.start(&registry, &beacon, &["--hostname", "beta"]);
    assert!(sb["rendezvous"].is_null(), "{sb}");
    let (a_id, b_id) = (sa["node_id"].clone(), sb["node_id"].clone());

    // Files are private.
    assert_eq!(mode(&a.dir), 0o700);
    assert_eq!(mode(&a.dir.join("identity.json")), 0o600);
    assert_eq!(mode(&a.dir.join("pilot.log")), 0o600);
    assert_eq!(mode(&a.dir.join("pilot.pid")), 0o600);
    assert_eq!(mode(&a.dir.join("rendezvous")), 0o700);
    assert_eq!(mode(&a.dir.join("rendezvous/rendezvous.redb")), 0o600);

    // Trust in seconds, with default settings.
    a.ok(&["handshake", &b_id.to_string(), "hello"]);
    assert!(
        within(Duration::from_secs(1), || lists(
            &b.ok(&["pending"]),
            "pending",
            &a_id
        )),
        "the request did not show up at b within 1 s"
    );
    b.ok(&["approve", &a_id.to_string()]);
    assert!(within(Duration::from_secs(5), || lists(
        &a.ok(&["trust"]),
        "trusted",
        &b_id
    )));
    let p = a.ok(&["ping", "beta", "--count", "1", "--timeout", "10s"]);
    assert!(p["results"][0]["rtt_ms"].is_number(), "{p}");
    assert_eq!(mode(&a.dir.join("trust.json")), 0o600);

    // A hostname set now survives a restart.
    a.ok(&["set-hostname", "alpha-renamed"]);
    assert_eq!(mode(&a.dir.join("profile.json")), 0o600);

    // Stop the first daemon: its rendezvous keeps serving the others.
    a.stop();
    let sc = c.start(&registry, &beacon, &["--hostname", "gamma"]);
    let c_id = sc["node_id"].clone();
    b.ok(&["handshake", &c_id.to_string(), "hi"]);
    assert!(within(Duration::from_secs(1), || lists(
        &c.ok(&["pending"]),
        "pending",
        &b_id
    )));
    c.ok(&["approve", &b_id.to_string()]);
    assert!(within(Duration::from_secs(5), || {
        b.ctl(&["find", "gamma"]).status.success()
    }));
    let found = b.ok(&["find", "gamma"]);
    assert_eq!(found["node_id"], c_id);
    let p = b.ok(&["ping", "gamma", "--count", "1", "--timeout", "10s"]);
    assert!(p["results"][0]["rtt_ms"].is_number(), "{p}");

    // Restart the first daemon without --hostname: the profile applies.
    let sa2 = a.start(&registry, &beacon, &[]);
    assert_eq!(sa2["node_id"], a_id, "same identity, same node id");
    assert!(within(
        Duration::from_secs(5),
        || a.ok(&["info"])["hostname"] == "alpha-renamed"
    ));
}
