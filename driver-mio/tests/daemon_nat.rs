//! `pilot-daemon` processes on loopback with a real `pilot-rendezvous`
//! (registry and beacon): endpoint discovery through the beacon, the race
//! of direct and relay on first contact, a wrong advertised endpoint
//! corrected by the beacon's punch, and the IPC "prefer direct" command
//! (`spec/beacon.md` §8). Paths across real NATs are the network-namespace
//! harness's job; here every direct path works, so what is checked is the
//! machinery: discovery, punch, relay copies and the switch to direct.

mod common;
mod daemon_common;

use std::time::{Duration, Instant};

use common::{Rv, STEP};
use daemon_common::{Daemon, PUBLIC, echo_once, pattern};
use pilot_driver_mio::ipc_client::IpcClient;
use pilot_proto::wire::ipc::IpcMessage;
use serde_json::Value;

fn rv(dir: &std::path::Path) -> Rv {
    Rv::start(&dir.join("rv.redb"), &[])
}

/// Polls Info until `pick` finds what it wants (or panics after STEP).
fn wait_info<T>(c: &IpcClient, what: &str, mut pick: impl FnMut(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + STEP;
    loop {
        let info = c.info().expect("info");
        if let Some(v) = pick(&info) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn peer(info: &Value, node: u32) -> Option<Value> {
    info["peer_list"]
        .as_array()?
        .iter()
        .find(|p| p["node_id"] == node)
        .cloned()
}

#[test]
fn beacon_discovery_and_direct_path_between_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let b = Daemon::start(&rv, &tmp.path().join("b"), PUBLIC);
    let ca = a.client();
    // Discovery: the beacon saw our tunnel socket.
    let public = wait_info(&ca, "public endpoint", |i| {
        i["nat"]["public_endpoint"].as_str().map(str::to_owned)
    });
    assert_eq!(public, a.udp.to_string());
    let data = pattern(256 * 1024, 7);
    let t0 = Instant::now();
    assert_eq!(echo_once(&ca, b.address, &data), data);
    eprintln!(
        "first echo of 256 KiB (lookup, race, key exchange): {:?}",
        t0.elapsed()
    );
    // The race ends on the direct path, at b's real socket, proven by an
    // authenticated frame.
    let p = wait_info(&ca, "direct path to b", |i| {
        peer(i, b.node_id).filter(|p| p["path"] == "direct")
    });
    assert_eq!(p["endpoint"], b.udp.to_string(), "{p}");
    assert_eq!(p["direct_confirmed"], true, "{p}");
    assert!(p["srtt_ms"].as_f64().is_some(), "{p}");
    let info = ca.info().unwrap();
    assert!(info["nat"]["punches"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["nat"]["to_direct"].as_u64().unwrap() >= 1, "{info}");
}

#[test]
fn wrong_advertised_endpoint_is_corrected_by_the_punch_and_relay_carries_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    // b advertises an endpoint nobody listens on (a stale port mapping):
    // a's direct copies go nowhere at first, its relay copies through the
    // beacon arrive, and the beacon's punch command names b's real socket.
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let b = Daemon::start(
        &rv,
        &tmp.path().join("b"),
        &["--public", "--endpoint", "127.0.0.1:9"],
    );
    let cb = b.client();
    let nat = cb.info().unwrap()["nat"].clone();
    assert_eq!(
        nat["advertised"], "127.0.0.1:9",
        "--endpoint pins it: {nat}"
    );
    let ca = a.client();
    let t0 = Instant::now();
    assert_eq!(
        echo_once(&ca, b.address, b"through the beacon"),
        b"through the beacon"
    );
    eprintln!(
        "first echo with a wrong advertised endpoint: {:?}",
        t0.elapsed()
    );
    let info = ca.info().unwrap();
    assert!(info["nat"]["relay_out"].as_u64().unwrap() > 0, "{info}");
    let p = wait_info(&ca, "direct path to b's real socket", |i| {
        peer(i, b.node_id).filter(|p| p["path"] == "direct" && p["endpoint"] == b.udp.to_string())
    });
    assert_eq!(p["direct_confirmed"], true, "{p}");
    // The stream keeps working on the direct path.
    let data = pattern(64 * 1024, 3);
    assert_eq!(echo_once(&ca, b.address, &data), data);
}

#[test]
fn prefer_direct_races_again_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let b = Daemon::start(&rv, &tmp.path().join("b"), PUBLIC);
    let ca = a.client();
    assert_eq!(echo_once(&ca, b.address, b"x"), b"x");
    let body = ca
        .request_raw(&IpcMessage::PreferDirect { node_id: b.node_id }, STEP)
        .expect("prefer direct");
    let Ok(IpcMessage::PreferDirectOk(json)) = IpcMessage::decode(&body) else {
        panic!("unexpected reply {body:?}");
    };
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["node_id"], b.node_id, "{v}");
    assert_eq!(v["probing"], true, "{v}");
    // The probe (a ping on both paths) confirms direct again.
    wait_info(&ca, "direct after prefer-direct", |i| {
        peer(i, b.node_id).filter(|p| p["path"] == "direct")
    });
    assert_eq!(echo_once(&ca, b.address, b"y"), b"y");
}
