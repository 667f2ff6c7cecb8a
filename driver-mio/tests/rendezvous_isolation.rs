//! Misbehaving registry connections affect only themselves.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Client, Rv, STEP};

/// Reads until EOF or error; `true` if the server closed the connection.
fn closed_by_server(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn bad_clients_only_hurt_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let rv = Rv::start(&dir.path().join("s.redb"), &[]);
    let mut good = Client::connect(rv.registry);
    let first = good.register(1);
    assert!(good.lookup(first).is_some());

    // A slow client: half a frame, then silence (held open the whole test).
    let mut slow = TcpStream::connect(rv.registry).unwrap();
    slow.write_all(&[0, 0, 0, 40, b'{', b'"']).unwrap();

    // Malformed JSON: the server closes that connection without a reply.
    let mut bad = TcpStream::connect(rv.registry).unwrap();
    bad.write_all(&[0, 0, 0, 5]).unwrap();
    bad.write_all(b"{not ").unwrap();
    assert!(
        closed_by_server(bad),
        "malformed JSON must close the connection"
    );

    // Oversized length prefix (above 1 MiB): closed as well.
    let mut big = TcpStream::connect(rv.registry).unwrap();
    big.write_all(&(2u32 << 20).to_be_bytes()).unwrap();
    big.write_all(b"{}").unwrap();
    assert!(
        closed_by_server(big),
        "oversized frame must close the connection"
    );

    // The good client keeps working, on its old and on a new connection.
    let second = good.register(2);
    assert_ne!(first, second);
    assert_eq!(good.lookup(second).unwrap().node_id, second);
    let mut fresh = Client::connect(rv.registry);
    assert_eq!(fresh.lookup(first).unwrap().node_id, first);
    let third = fresh.register(3);
    assert_eq!(good.lookup(third).unwrap().node_id, third);

    // The slow client's connection is still open (not closed for others'
    // sake): completing its frame gets an answer.
    let body = br#"{"type":"lookup","node_id":1}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let mut slow2 = TcpStream::connect(rv.registry).unwrap();
    slow2.write_all(&frame[..3]).unwrap();
    let mut c = Client::connect(rv.registry);
    assert!(c.lookup(first).is_some());
    slow2.write_all(&frame[3..]).unwrap();
    let mut c2 = Client { stream: slow2 };
    c2.stream.set_read_timeout(Some(STEP)).unwrap();
    assert!(matches!(
        c2.read_response().unwrap(),
        pilot_proto::registry::messages::Response::LookupOk(_)
    ));
    drop(slow);
}

#[test]
fn connection_cap_refuses_extra_connections_only() {
    let dir = tempfile::tempdir().unwrap();
    let rv = Rv::start(&dir.path().join("s.redb"), &["--max-connections", "2"]);
    let mut a = Client::connect(rv.registry);
    let mut b = Client::connect(rv.registry);
    a.register(1);
    b.register(2);
    let extra = TcpStream::connect(rv.registry).unwrap();
    assert!(closed_by_server(extra));
    assert!(a.lookup(1).is_some());
    drop(b);
    // A slot frees up once a connection closes.
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let mut c = Client::connect(rv.registry);
        if c.try_register(3).is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn sigterm_exits_zero_and_keeps_state() {
    for be in common::Backend::all() {
        eprintln!("store backend: {}", be.name());
        let store = be.store("s");
        let mut rv = Rv::start(&store, &[]);
        let id = Client::connect(rv.registry).register(7);
        assert_eq!(rv.terminate(), Some(0));
        let rv2 = Rv::start(&store, &[]);
        let got = Client::connect(rv2.registry).lookup(id).expect("node kept");
        assert_eq!(got.public_key, common::ident(7).public_key_b64());
    }
}

#[test]
fn pipelined_burst_with_backpressure_gets_every_reply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rv = Rv::start(&dir.path().join("s.redb"), &[]);
    let mut c = Client::connect(rv.registry);
    let a = c.register(1);
    let b = c.register(2);
    // ~9 MB of replies, far more than the socket buffers and the server's per-connection reply backlog
    // (1 MiB): whenever this reader falls behind, the server pauses reading
    // the connection and must resume it as the backlog drains.
    const N: usize = 60_000;
    let mut frames = Vec::new();
    for i in 0..N {
        let id = if i % 2 == 0 { a } else { b };
        let body = format!(r#"{{"type":"lookup","node_id":{id}}}"#);
        frames.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frames.extend_from_slice(body.as_bytes());
    }
    let mut writer = c.stream.try_clone().unwrap();
    let w = std::thread::spawn(move || writer.write_all(&frames).unwrap());
    // Meanwhile another client is served normally.
    let mut other = Client::connect(rv.registry);
    assert!(other.lookup(a).is_some());
    // Fall behind on purpose so the backlog builds up.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(other.lookup(b).is_some());
    for i in 0..N {
        let want = if i % 2 == 0 { a } else { b };
        match c.read_response().unwrap() {
            pilot_proto::registry::messages::Response::LookupOk(ok) => assert_eq!(ok.node_id, want),
            r => panic!("reply {i}: {r:?}"),
        }
    }
    w.join().unwrap();
}
