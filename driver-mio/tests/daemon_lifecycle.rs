//! Real `pilot-daemon` processes through the tunnel lifecycle (issue 18,
//! `spec/crypto.md` §13), in both wire profiles (the rendezvous runs the
//! same profile):
//! * a daemon killed with SIGKILL and restarted on a new UDP port (same
//!   identity) is reached again, whichever side dials first;
//! * trust revoked and granted again: dial + echo work afterwards;
//! * the sender killed mid-transfer: the receiver's stream ends and its
//!   connection is gone from `info` within the `--idle-timeout` bound.
//!
//! Deadlines are generous (debug binaries on a loaded machine); the
//! timing claims themselves are checked in the simulator.

mod common;
mod daemon_common;

use std::time::{Duration, Instant};

use common::Rv;
use daemon_common::{Daemon, pattern};
use serde_json::Value;

/// How long a sequence may take to recover on a loaded machine.
const RECOVER: Duration = Duration::from_secs(120);
/// The peer timeout the tests give their daemons.
const IDLE: &str = "5s";

fn rv(dir: &std::path::Path, legacy: bool) -> Rv {
    let extra: &[&str] = if legacy {
        &["--profile", "legacy"]
    } else {
        &[]
    };
    Rv::start(&dir.join("rv.redb"), extra)
}

fn flags(legacy: bool, extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = extra.to_vec();
    if legacy {
        v.push("--legacy");
    }
    v
}

fn info(d: &Daemon) -> Value {
    d.client().info().expect("info")
}

fn try_echo(from: &Daemon, to: &Daemon, msg: &[u8]) -> Result<(), String> {
    let c = from.client();
    let conn = c
        .dial_timeout(to.address, 7, Duration::from_secs(20))
        .map_err(|e| format!("dial: {e}"))?;
    c.send(conn, msg).map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; msg.len()];
    let n = c
        .recv_exact_or_eof(conn, &mut buf, Duration::from_secs(20))
        .map_err(|e| format!("recv: {e}"))?;
    let _ = c.close(conn);
    if &buf[..n] == msg {
        Ok(())
    } else {
        Err(format!("echo returned {n} of {} bytes", msg.len()))
    }
}

/// Dials `to`'s echo port from `from` until an echo comes back intact;
/// returns how long that took. Fails after [`RECOVER`].
fn echo_within(from: &Daemon, to: &Daemon, what: &str) -> Duration {
    let t0 = Instant::now();
    let msg = format!("lifecycle {what}");
    let mut last = String::new();
    while t0.elapsed() < RECOVER {
        match try_echo(from, to, msg.as_bytes()) {
            Ok(()) => {
                eprintln!("{what}: echo after {:?}", t0.elapsed());
                return t0.elapsed();
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: no echo within {RECOVER:?}; last error: {last}");
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < RECOVER, "{what}: not within {RECOVER:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn trusts(d: &Daemon, node: u32) -> bool {
    let t = d.client().handshake_trusted().expect("trusted");
    t["trusted"]
        .as_array()
        .is_some_and(|l| l.iter().any(|e| e["node_id"] == node))
}

fn pending(d: &Daemon, node: u32) -> bool {
    let t = d.client().handshake_pending().expect("pending");
    t["pending"]
        .as_array()
        .is_some_and(|l| l.iter().any(|e| e["node_id"] == node))
}

fn kill_and_restart(rv: &Rv, d: Daemon, flags: &[&str]) -> Daemon {
    let dir = d.dir.clone();
    let (node, udp) = (d.node_id, d.udp);
    drop(d); // SIGKILL and reap
    let fresh = Daemon::start(rv, &dir, flags);
    assert_eq!(fresh.node_id, node, "same identity, same node");
    eprintln!("node {node} restarted: {udp} -> {}", fresh.udp);
    fresh
}

fn restart_then_either_side_dials(legacy: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path(), legacy);
    let fl = flags(legacy, &["--public", "--idle-timeout", IDLE]);
    let mut a = Daemon::start(&rv, &tmp.path().join("a"), &fl);
    let b = Daemon::start(&rv, &tmp.path().join("b"), &fl);
    echo_within(&a, &b, "warm-up a->b");
    echo_within(&b, &a, "warm-up b->a");
    // B dies and comes back on a new port; the restarted side dials first.
    let b = kill_and_restart(&rv, b, &fl);
    echo_within(&b, &a, "b restarted, b dials");
    echo_within(&a, &b, "b restarted, then a dials");
    // A dies and comes back; the survivor dials first (it still holds
    // the old session and endpoint: the dial re-resolves, and the dead
    // session ends within the idle timeout at worst).
    a = kill_and_restart(&rv, a, &fl);
    echo_within(&b, &a, "a restarted, b dials");
    echo_within(&a, &b, "a restarted, then a dials");
    let (mut a, mut b) = (a, b);
    assert!(a.alive() && b.alive());
}

#[test]
fn killed_daemon_restarted_on_a_new_port_is_reached_current() {
    restart_then_either_side_dials(false);
}

#[test]
fn killed_daemon_restarted_on_a_new_port_is_reached_legacy() {
    restart_then_either_side_dials(true);
}

fn revoke_then_trust_again(legacy: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path(), legacy);
    let fl = flags(legacy, &["--idle-timeout", IDLE]);
    let a = Daemon::start(&rv, &tmp.path().join("a"), &fl);
    let b = Daemon::start(&rv, &tmp.path().join("b"), &fl);
    let mutual = |why: &str| {
        a.client()
            .handshake_request(b.node_id, why)
            .expect("request a->b");
        b.client()
            .handshake_request(a.node_id, why)
            .expect("request b->a");
        // Crossing requests approve each other; a request that arrives
        // while the other side still trusts us (or after a revoke) may
        // wait as pending instead: approve it.
        let t0 = Instant::now();
        while !(trusts(&a, b.node_id) && trusts(&b, a.node_id)) {
            for (d, other) in [(&a, b.node_id), (&b, a.node_id)] {
                if pending(d, other) {
                    let _ = d.client().handshake_approve(other);
                }
            }
            if t0.elapsed() > RECOVER {
                panic!(
                    "mutual trust ({why}) not within {RECOVER:?}: a {} {}; b {} {}",
                    a.client().handshake_trusted().unwrap(),
                    a.client().handshake_pending().unwrap(),
                    b.client().handshake_trusted().unwrap(),
                    b.client().handshake_pending().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    mutual("first");
    echo_within(&a, &b, "trusted a->b");
    echo_within(&b, &a, "trusted b->a");
    b.client().handshake_revoke(a.node_id).expect("revoke");
    eventually("b no longer trusts a", || !trusts(&b, a.node_id));
    let t = info(&b)["tunnel"].clone();
    assert!(t["tunnels_revoked"].as_u64() >= Some(1), "{t}");
    mutual("again");
    echo_within(&a, &b, "re-trusted a->b");
    echo_within(&b, &a, "re-trusted b->a");
}

#[test]
fn revoke_then_trust_again_current() {
    revoke_then_trust_again(false);
}

#[test]
fn revoke_then_trust_again_legacy() {
    revoke_then_trust_again(true);
}

fn sender_killed_mid_transfer(legacy: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path(), legacy);
    let fl = flags(legacy, &["--public", "--idle-timeout", IDLE]);
    let a = Daemon::start(&rv, &tmp.path().join("a"), &fl);
    let b = Daemon::start(&rv, &tmp.path().join("b"), &fl);
    let rx = b.client();
    rx.bind(1000).expect("bind");
    let tx = a.client();
    let conn = tx.dial_timeout(b.address, 1000, RECOVER).expect("dial");
    let acc = rx.accept(1000, RECOVER).expect("accept");
    // Start a transfer bigger than any window and read a little of it.
    let data = pattern(256 * 1024, 18);
    for chunk in data.chunks(16 * 1024) {
        tx.send(conn, chunk).expect("send");
    }
    let first = rx
        .recv(acc.conn_id, RECOVER)
        .expect("recv")
        .expect("data before the kill");
    assert!(!first.is_empty());
    assert_eq!(info(&b)["conn_list"].as_array().map(|l| l.len()), Some(1));
    // The sender dies without a word.
    let killed = Instant::now();
    drop(a); // SIGKILL first: a closing IPC client would end the stream cleanly
    drop(tx);
    // The receiver's stream ends (after what had arrived) ...
    loop {
        match rx.recv(acc.conn_id, RECOVER) {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => panic!("stream did not end: {e}"),
        }
    }
    let ended = killed.elapsed();
    // ... and the connection and its buffers are gone from the daemon.
    eventually("connection released", || {
        info(&b)["conn_list"]
            .as_array()
            .is_some_and(|l| l.is_empty())
    });
    let i = info(&b);
    eprintln!(
        "receiver's stream ended {ended:?} after the kill; tunnel {}",
        i["tunnel"]
    );
    assert!(
        i["tunnel"]["peers_dead"].as_u64() >= Some(1),
        "{}",
        i["tunnel"]
    );
    assert_eq!(
        i["tunnel"]["peer_timeout_ms"], 5000,
        "--idle-timeout applied"
    );
    // Within the idle timeout plus probing and a loaded machine's slack.
    assert!(ended < Duration::from_secs(60), "{ended:?}");
}

#[test]
fn sender_killed_mid_transfer_frees_the_receiver_current() {
    sender_killed_mid_transfer(false);
}

#[test]
fn sender_killed_mid_transfer_frees_the_receiver_legacy() {
    sender_killed_mid_transfer(true);
}
