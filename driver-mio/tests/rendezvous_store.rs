//! Store behaviour through the binary: restart, import/export, config
//! file, idle timeout.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;

use common::{Client, Rv, STEP, ident};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pilot-rendezvous"))
}

#[test]
fn restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let mut ids = Vec::new();
    {
        let rv = Rv::start(&store, &[]);
        let mut c = Client::connect(rv.registry);
        for seed in 0..23 {
            ids.push((seed, c.register(seed)));
        }
    }
    let rv = Rv::start(&store, &[]);
    let mut c = Client::connect(rv.registry);
    for (seed, id) in &ids {
        assert_eq!(
            c.lookup(*id).unwrap().public_key,
            ident(*seed).public_key_b64()
        );
    }
    // The ID counter survived too: a new node gets a fresh ID.
    let fresh = c.register(1000);
    assert!(ids.iter().all(|(_, id)| *id != fresh));
}

#[test]
fn export_import_round_trip_between_stores() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.redb");
    let b = dir.path().join("b.redb");
    let id = {
        let rv = Rv::start(&a, &[]);
        Client::connect(rv.registry).register(9)
    };
    let out = bin().args(["export", "--store"]).arg(&a).output().unwrap();
    assert!(out.status.success());
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(snap["nodes"][id.to_string()].is_object(), "{snap}");
    let file = dir.path().join("snap.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let st = bin()
        .args(["import", "--store"])
        .arg(&b)
        .arg(&file)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(st.success());
    let rv = Rv::start(&b, &[]);
    let got = Client::connect(rv.registry)
        .lookup(id)
        .expect("imported node");
    assert_eq!(got.public_key, ident(9).public_key_b64());
    // A broken snapshot is refused with a failing exit status.
    std::fs::write(&file, b"[not a snapshot").unwrap();
    let st = bin()
        .args(["import", "--store"])
        .arg(dir.path().join("c.redb"))
        .arg(&file)
        .status()
        .unwrap();
    assert!(!st.success());
}

#[test]
fn config_file_sets_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rv.toml");
    std::fs::write(&cfg, "idle_timeout_secs = 1\nmax_connections = 16\n").unwrap();
    let rv = Rv::start(
        &dir.path().join("s.redb"),
        &["--config", cfg.to_str().unwrap()],
    );
    let mut idle = TcpStream::connect(rv.registry).unwrap();
    idle.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = [0u8; 8];
    // The server closes the silent connection (EOF) well before STEP.
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
    // Others still work.
    assert!(Client::connect(rv.registry).register(1) > 0);
}
