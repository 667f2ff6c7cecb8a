//! `pilotctl rotate-key` with real processes (`spec/daemon.md` §2.9): a
//! rendezvous and two daemons; while a stream moves data through the
//! peer's echo service the node rotates its identity key. The transfer
//! completes byte-exact, a new connection works, the registry and both
//! daemons show the new key, the identity file holds it, and the old key
//! can neither rotate again nor register.

mod common;
mod pilotctl_support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use pilot_proto::addr::Addr;
use pilot_proto::registry::auth::Identity as RegIdentity;
use pilot_proto::registry::messages::{Register, Request, Response, RotateKey};
use pilotctl_support::{Net, finish};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The signing identity in an identity file.
fn identity_of(path: &std::path::Path) -> (RegIdentity, String) {
    let v: Value = serde_json::from_slice(&std::fs::read(path).expect("identity file")).unwrap();
    let private = B64.decode(v["private_key"].as_str().unwrap()).unwrap();
    let seed: [u8; 32] = private[..32].try_into().unwrap();
    (
        RegIdentity::from_seed(&seed),
        v["public_key"].as_str().unwrap().to_owned(),
    )
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn rotate_key_mid_transfer_keeps_the_stream_and_retires_the_old_key() {
    const LEN: usize = 24 << 20;
    let net = Net::new();
    let a = net.node("alpha", &["--public"]);
    let b = net.node("beta", &["--public"]);
    let id_file = a.dir.join("identity.json");
    let (old, old_b64) = identity_of(&id_file);
    assert_eq!(a.ok(&["info"])["public_key"], old_b64.as_str());
    let b_addr: Addr = b.ok(&["info"])["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // A transfer through beta's echo service; the rotation starts once a
    // quarter of it came back.
    let mut c = a.client();
    c.set_timeout(Duration::from_secs(60));
    let c = Arc::new(c);
    let conn = c.dial(b_addr, 7).expect("dial echo");
    let data = Arc::new(pattern(LEN));
    let sent = Sha256::digest(&data[..]);
    let writer = {
        let (c, data) = (c.clone(), data.clone());
        std::thread::spawn(move || {
            for chunk in data.chunks(64 * 1024) {
                c.send(conn, chunk).expect("send");
            }
        })
    };
    let mut h = Sha256::new();
    let mut got = 0usize;
    let mut rotation = None;
    let mut rotated_at = 0;
    while got < LEN {
        match c.recv(conn, Duration::from_secs(60)).expect("recv") {
            Some(chunk) => {
                h.update(&chunk);
                got += chunk.len();
            }
            None => panic!("echo stream ended after {got} bytes"),
        }
        if rotation.is_none() && got >= LEN / 4 {
            rotated_at = got;
            rotation = Some(a.spawn(&["rotate-key"]));
        }
    }
    writer.join().unwrap();
    assert_eq!(got, LEN);
    assert_eq!(h.finalize(), sent, "echoed bytes differ");
    let r = finish(rotation.expect("rotation started"));
    eprintln!("rotated after {rotated_at} of {LEN} bytes: {r}");
    assert_eq!(r["type"], "rotate_key_ok");
    assert_eq!(r["node_id"], a.node_id);
    assert_eq!(r["persisted"], true);
    let new_b64 = r["public_key"].as_str().unwrap().to_owned();
    assert_ne!(new_b64, old_b64);

    // The identity file holds the new key; no `.next` is left.
    let (_, file_b64) = identity_of(&id_file);
    assert_eq!(file_b64, new_b64);
    assert!(!a.dir.join("identity.json.next").exists());

    // A new connection works (the tunnel and the trust-free public path
    // are unchanged), and everyone shows the new key.
    let conn2 = c.dial(b_addr, 7).expect("dial after rotation");
    c.send(conn2, b"after rotation").unwrap();
    let back = c
        .recv(conn2, Duration::from_secs(10))
        .unwrap()
        .expect("echo");
    assert_eq!(back, b"after rotation");
    let info = a.ok(&["info"]);
    assert_eq!(info["public_key"], new_b64.as_str());
    assert_eq!(info["key_rotations"], 1);
    let a_id = a.node_id.to_string();
    let out = std::process::Command::new(pilotctl_support::PILOTCTL)
        .args(["--json", "lookup", &a_id])
        .env("PILOT_SOCKET", &b.socket)
        .env("PILOT_REGISTRY", &net.registry)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("lookup envelope");
    assert_eq!(v["data"]["public_key"], new_b64.as_str(), "{v}");

    // The old key can no longer rotate the node, nor register.
    let mut rc = common::Client::connect(net.registry.parse().unwrap());
    let stolen = Request::RotateKey(RotateKey {
        node_id: a.node_id,
        new_public_key: RegIdentity::from_seed(&[0x42; 32]).public_key_b64(),
        signature: old.sign_b64(format!("rotate:{}", a.node_id).as_bytes()),
        sig_ts: None,
    });
    match rc.call(&stolen) {
        Response::Error { error } => assert!(error.contains("signature"), "{error}"),
        other => panic!("old key rotated the node: {other:?}"),
    }
    let reg = Request::Register(Register {
        listen_addr: "127.0.0.1:4000".into(),
        public_key: old_b64.clone(),
        ..Default::default()
    });
    match rc.call(&reg) {
        Response::Error { error } => assert!(error.contains("retired"), "{error}"),
        other => panic!("old key registered: {other:?}"),
    }
    // The human form names the new key; a rotation at once is refused by
    // the registry's cool-down with a hint.
    let e = a.err(&["rotate-key"]);
    assert_eq!(e["code"], "refused", "{e}");
    assert!(
        e["hint"].as_str().unwrap_or_default().contains("10 s"),
        "{e}"
    );
    let _ = c.close(conn);
    let _ = c.close(conn2);
}
