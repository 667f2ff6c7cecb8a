//! The loop around a real sans-IO daemon over loopback sockets, with an
//! in-process rendezvous: registry dialing and registration, IPC request
//! and reply, closing a client after a protocol error, the registry
//! going away, and a graceful stop. Disk work and bulk transfers are
//! covered by the real-process tests (`tests/pilotctl_services.rs`,
//! `tests/daemon_bulk.rs`).

use super::*;
use crate::daemon::embedded::start_embedded;
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::provider::Selected;
use pilot_proto::daemon::DaemonConfig;
use pilot_proto::wire::ipc::{IpcMessage, encode_frame, parse_frame};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnix;

const STEP: Duration = Duration::from_secs(20);

fn frame(msg: &IpcMessage<'_>) -> Vec<u8> {
    let mut v = vec![0u8; msg.encoded_len()];
    encode_frame(msg, &mut v).unwrap();
    v
}

/// Reads one complete frame body from `c`.
fn read_body(c: &mut StdUnix) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((body, _)) = parse_frame(&buf).unwrap() {
            return body.to_vec();
        }
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "EOF before a complete frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn info(c: &mut StdUnix) -> serde_json::Value {
    c.write_all(&frame(&IpcMessage::Info)).unwrap();
    let body = read_body(c);
    let Ok(IpcMessage::InfoOk(json)) = IpcMessage::decode(&body) else {
        panic!("not an InfoOk: {body:?}")
    };
    serde_json::from_str(json).unwrap()
}

#[test]
fn loop_drives_a_real_daemon_through_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let rv = start_embedded(any, any, &dir.path().join("rv.redb")).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let sock = dir.path().join("d.sock");
    let ipc = IpcSocket::bind(&sock).unwrap();
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let provider = Selected::default();
    let identity = Identity::generate(&provider, &mut rng);
    let tunnel_key = TunnelKey::generate(&provider, &mut rng);
    let mut cfg = DaemonConfig::new(identity, tunnel_key, provider, rng);
    cfg.listen_addr = udp_addr.to_string();
    let daemon = Daemon::new(Instant::ZERO, cfg);
    let parts = LoopParts {
        udp: UdpSocket::from_std(udp),
        ipc,
        registry: rv.registry,
        trust_path: dir.path().join("trust.json"),
        identity_path: dir.path().join("identity.json"),
        profile_path: dir.path().join("profile.json"),
        received: SaveDir::open(dir.path().join("received"), 1 << 20).unwrap(),
        inbox: SaveDir::open(dir.path().join("inbox"), 1 << 20).unwrap(),
        tasks_dir: dir.path().join("tasks"),
        webhook: Default::default(),
        handle_signals: false,
        print_ready: false,
        shutdown_grace: STEP,
    };
    let lp = EventLoop::new(daemon, parts, std::time::Instant::now()).unwrap();
    let stop = lp.stop_handle();
    let thread = std::thread::spawn(move || lp.run());

    // Registration went through the loop's registry connection.
    let mut c = StdUnix::connect(&sock).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    let deadline = std::time::Instant::now() + STEP;
    let node_id = loop {
        let v = info(&mut c);
        if v["node_id"].as_u64().is_some_and(|n| n != 0) {
            break v["node_id"].as_u64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "never registered");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(node_id > 0);

    // A protocol error: the daemon's error frame arrives, then EOF.
    let mut c2 = StdUnix::connect(&sock).unwrap();
    c2.set_read_timeout(Some(STEP)).unwrap();
    c2.write_all(&[0x00, 0x10, 0x00, 0x01, 0x06]).unwrap();
    let body = read_body(&mut c2);
    let Ok(IpcMessage::Error { message, .. }) = IpcMessage::decode(&body) else {
        panic!("not an error frame: {body:?}")
    };
    assert!(message.starts_with("frame too large"), "{message}");
    let mut rest = Vec::new();
    c2.read_to_end(&mut rest).unwrap();
    // The first client is unaffected.
    assert_eq!(info(&mut c)["node_id"].as_u64(), Some(node_id));

    // The registry going away: the daemon keeps serving its clients.
    drop(rv);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(info(&mut c)["node_id"].as_u64(), Some(node_id));

    // Graceful stop: the daemon reports Stopped.
    stop.stop();
    let exit = thread.join().unwrap().unwrap();
    assert_eq!(exit, Exit::Stopped);
    // The loop (and its socket) are gone: the path was unlinked.
    assert!(!sock.exists());
}

/// Partial vectored writes to an IPC client: written buffers leave the
/// queue, a partly written one keeps its offset, nothing is skipped.
#[test]
fn partial_vectored_writes_keep_the_queue_in_order() {
    let mut q: VecDeque<Vec<u8>> = [vec![1u8; 3], vec![2u8; 4], vec![3u8; 5]].into();
    let mut pos = 0;
    advance_written(&mut q, &mut pos, 2);
    assert_eq!((q.len(), pos), (3, 2));
    advance_written(&mut q, &mut pos, 1);
    assert_eq!((q.len(), pos), (2, 0), "the first buffer is done");
    advance_written(&mut q, &mut pos, 6);
    assert_eq!((q.len(), pos), (1, 2));
    assert_eq!(q.front().map(|b| b[pos]), Some(3));
    advance_written(&mut q, &mut pos, 3);
    assert!(q.is_empty());
    assert_eq!(pos, 0);
}
