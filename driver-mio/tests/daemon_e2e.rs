//! `pilot-daemon` as a real process on loopback, against a
//! `pilot-rendezvous` child: registration, echo between two daemons,
//! restart keeps identity/address/trust, garbage input, SIGTERM, a corrupt
//! identity file.

mod common;
mod daemon_common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use common::{Client, Rv, STEP};
use daemon_common::{Daemon, PUBLIC, echo_once};

fn rv(dir: &std::path::Path) -> Rv {
    Rv::start(&dir.join("rv.redb"), &[])
}

#[test]
fn registers_and_reports_info() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let d = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let info = d.client().info().expect("info");
    assert_eq!(info["node_id"], d.node_id, "{info}");
    assert_eq!(info["address"], d.address.to_string(), "{info}");
    // The registry knows us at the UDP endpoint we bound.
    let mut reg = Client::connect(rv.registry);
    let ok = reg.lookup(d.node_id).expect("registered");
    assert_eq!(ok.real_addr, Some(d.udp.to_string()));
    // State directory and socket file modes.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.dir), 0o700);
    assert_eq!(mode(&d.dir.join("identity.json")), 0o600);
    assert_eq!(mode(&d.socket), 0o600);
}

#[test]
fn echo_between_two_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let b = Daemon::start(&rv, &tmp.path().join("b"), PUBLIC);
    assert_ne!(a.node_id, b.node_id);
    let c = a.client();
    let t0 = std::time::Instant::now();
    assert_eq!(echo_once(&c, b.address, b"ping-0"), b"ping-0");
    let first = t0.elapsed();
    let t1 = std::time::Instant::now();
    assert_eq!(echo_once(&c, b.address, b"ping-1"), b"ping-1");
    eprintln!(
        "echo ping: first (lookup + tunnel setup) {first:?}, second {:?}",
        t1.elapsed()
    );
    // And the other way round.
    assert_eq!(echo_once(&b.client(), a.address, b"pong"), b"pong");
}

#[test]
fn restart_keeps_identity_address_and_trust() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let trust = r#"{
  "trusted": [
    {"node_id": 4242, "public_key": "", "approved_at": "2026-02-27T15:03:44Z", "mutual": true}
  ],
  "pending": []
}"#;
    std::fs::write(dir.join("trust.json"), trust).unwrap();
    let mut d = Daemon::start(&rv, &dir, &[]);
    let identity = std::fs::read(dir.join("identity.json")).unwrap();
    let (id, addr) = (d.node_id, d.address);
    let listed = d.client().handshake_trusted().expect("trusted");
    assert!(listed.to_string().contains("4242"), "{listed}");
    assert_eq!(d.terminate(), Some(0));

    let d2 = Daemon::start(&rv, &dir, &[]);
    assert_eq!((d2.node_id, d2.address), (id, addr));
    assert_eq!(std::fs::read(dir.join("identity.json")).unwrap(), identity);
    let listed = d2.client().handshake_trusted().expect("trusted");
    assert!(listed.to_string().contains("4242"), "{listed}");
}

#[test]
fn garbage_on_ipc_and_udp_leaves_the_daemon_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let mut a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let b = Daemon::start(&rv, &tmp.path().join("b"), PUBLIC);
    let c = a.client();
    assert_eq!(echo_once(&c, b.address, b"before"), b"before");

    // IPC: an oversized length, an unknown command, random bytes, a
    // truncated frame left hanging — each on its own connection.
    let junk: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        vec![0, 0, 0, 1, 0xee],
        daemon_common::pattern(100_000, 7),
        vec![0, 0, 0, 50, 0x06, 0, 0],
    ];
    let mut held = Vec::new();
    for j in &junk {
        let mut s = UnixStream::connect(&a.socket).unwrap();
        let _ = s.write_all(j);
        held.push(s);
    }
    // UDP: random datagrams of many sizes, and ones that start like the
    // tunnel's frames, from a stranger's socket.
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500u64 {
        let mut p = daemon_common::pattern((i as usize * 37) % 1500 + 1, i);
        if i % 3 == 0 && p.len() >= 4 {
            p[..4].copy_from_slice(if i % 2 == 0 { b"PILS" } else { b"PILT" });
        }
        let _ = u.send_to(&p, a.udp);
    }
    drop(held);
    assert!(a.alive());
    let info = a.client().info().expect("info after garbage");
    assert_eq!(info["node_id"], a.node_id);
    assert_eq!(echo_once(&c, b.address, b"after"), b"after");
    assert_eq!(echo_once(&b.client(), a.address, b"back"), b"back");
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let mut d = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let c = d.client();
    assert!(d.socket.exists());
    assert_eq!(d.terminate(), Some(0), "exit code");
    assert!(!d.socket.exists(), "socket file left behind");
    // The graceful stop deregistered the node.
    let mut reg = Client::connect(rv.registry);
    assert!(
        reg.lookup(d.node_id).is_none(),
        "still registered after SIGTERM"
    );
    drop(c);
    // Identity stays for the next start.
    assert!(d.dir.join("identity.json").exists());
}

#[test]
fn corrupt_identity_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    let id = dir.join("identity.json");
    std::fs::write(&id, b"{\"private_key\":\"AAAA\",\"public_key\":\"AAAA\"}").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pilot-daemon"))
        .arg("--registry")
        .arg(rv.registry.to_string())
        .arg("--dir")
        .arg(&dir)
        .arg("--socket")
        .arg(tmp.path().join("a.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("identity file") && err.contains("refusing"),
        "{err}"
    );
    // Untouched, and no socket was left.
    assert!(std::fs::read_to_string(&id).unwrap().contains("AAAA"));
    assert!(!tmp.path().join("a.sock").exists());
    let _ = STEP;
}

#[test]
fn disabled_echo_refuses_the_dial() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let n = Daemon::start(&rv, &tmp.path().join("n"), &["--public", "--no-echo"]);
    let err = a.client().dial(n.address, 7).expect_err("echo is disabled");
    assert!(err.to_string().contains("refused"), "{err}");
}

/// Two daemons on the legacy wire profile talk to each other.
#[test]
fn legacy_profile_daemons_talk() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let a = Daemon::start(&rv, &tmp.path().join("a"), &["--public", "--legacy"]);
    let b = Daemon::start(&rv, &tmp.path().join("b"), &["--public", "--legacy"]);
    assert_eq!(echo_once(&a.client(), b.address, b"old wire"), b"old wire");
}

#[test]
fn registry_down_at_start_then_up_registers_later() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    // A loopback port with nothing listening (bound, noted, released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let registry = format!("127.0.0.1:{port}");
    let socket = tmp.path().join("a.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pilot-daemon"))
        .args(["--registry", &registry, "--beacon", ""])
        .arg("--dir")
        .arg(tmp.path().join("a"))
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    // The IPC socket comes up even without a registry.
    let deadline = std::time::Instant::now() + STEP;
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "daemon died without a registry"
    );
    // Now the registry appears on that port; the daemon's retries find it.
    let rv_child = std::process::Command::new(env!("CARGO_BIN_EXE_pilot-rendezvous"))
        .args(["--registry-addr", &registry, "--beacon-addr", "127.0.0.1:0"])
        .arg("--store")
        .arg(tmp.path().join("rv.redb"))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed on drop.
    let _rv = Rv {
        child: rv_child,
        registry: registry.parse().unwrap(),
        beacon: "127.0.0.1:9".parse().unwrap(),
        metrics: None,
        http: None,
    };
    let line = rx.recv_timeout(STEP * 3).expect("no readiness line");
    assert!(line.starts_with("ready node_id="), "{line:?}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + STEP;
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    assert!(!socket.exists());
}
