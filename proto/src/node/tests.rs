//! Unit tests of the node: two or three nodes wired back to back.

use super::*;
use crate::crypto::provider::RustCrypto;
use rand_chacha::ChaCha8Rng;

type N = Node<RustCrypto, ChaCha8Rng>;

fn ep(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], 4000))
}

fn ident(i: u8) -> Identity {
    Identity::from_seed(&RustCrypto, [i; 32])
}

fn node(i: u8, encrypt: bool, token: &[u8]) -> N {
    let mut rng = ChaCha8Rng::from_seed([i; 32]);
    let tunnel_key = TunnelKey::generate(&RustCrypto, &mut rng);
    Node::new(
        Instant::ZERO,
        NodeConfig {
            addr: Addr::new(1, u32::from(i)),
            identity: Some(ident(i)),
            tunnel_key,
            profile: WireProfile::Current,
            provider: RustCrypto,
            rng,
            encrypt,
            admin_token: token.to_vec(),
            limits: Limits::default(),
        },
    )
}

/// Nodes 1..=n, all peers of each other.
fn mesh(n: u8, encrypt: bool) -> Vec<N> {
    let mut v: Vec<N> = (1..=n).map(|i| node(i, encrypt, b"secret")).collect();
    for a in v.iter_mut() {
        for j in 1..=n {
            a.add_peer(Addr::new(1, u32::from(j)), ep(j), Some(*ident(j).public()));
        }
    }
    v
}

/// Delivers every pending datagram (instantly) until the network is quiet;
/// returns how many moved.
fn pump(nodes: &mut [N], now: Instant) -> usize {
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    let mut moved = 0;
    loop {
        let mut batch = Vec::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            while let Some(t) = n.poll_transmit(now, &mut buf) {
                batch.push((ep(i as u8 + 1), t.dst, buf[..t.len].to_vec()));
            }
        }
        if batch.is_empty() {
            return moved;
        }
        for (from, dst, mut bytes) in batch {
            let idx = usize::from(
                dst.ip()
                    .to_string()
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .parse::<u8>()
                    .unwrap(),
            ) - 1;
            nodes[idx].handle_datagram(now, from, &mut bytes);
            moved += 1;
        }
    }
}

fn events(n: &mut N) -> Vec<Event> {
    core::iter::from_fn(|| n.poll_event()).collect()
}

#[test]
fn datagrams_reach_bound_ports_only() {
    let mut v = mesh(2, true);
    let t = Instant::from_millis(1);
    v[1].bind(7000).unwrap();
    v[0].send_datagram(t, Addr::new(1, 2), 7000, Some(9), b"hello")
        .unwrap();
    v[0].send_datagram(t, Addr::new(1, 2), 7001, None, b"nobody")
        .unwrap();
    pump(&mut v, t);
    let got: Vec<Event> = events(&mut v[1])
        .into_iter()
        .filter(|e| matches!(e, Event::Datagram { .. }))
        .collect();
    assert_eq!(
        got,
        vec![Event::Datagram {
            src: Addr::new(1, 1),
            src_port: 9,
            dst_port: 7000,
            data: b"hello".to_vec()
        }]
    );
    assert_eq!(v[1].stats().datagrams_unbound, 1);
    assert!(v[0].has_session(2) && v[1].has_session(1));
    assert_eq!(
        v[0].send_datagram(t, Addr::broadcast(1), 7000, None, b"x"),
        Err(NodeError::BroadcastAddress)
    );
}

#[test]
fn ping_gets_a_pong_and_a_duplicate_frame_is_refused() {
    let mut v = mesh(2, true);
    let t0 = Instant::from_millis(1);
    v[0].connect_tunnel(t0, 2);
    pump(&mut v, t0);
    let id = v[0].ping(t0, Addr::new(1, 2)).unwrap();
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    let tx = v[0].poll_transmit(t0, &mut buf).unwrap();
    let frame = buf[..tx.len].to_vec();
    let t1 = Instant::from_millis(7);
    v[1].handle_datagram(t1, ep(1), &mut frame.clone());
    // The same frame again (a network duplicate) is not answered twice.
    v[1].handle_datagram(t1, ep(1), &mut frame.clone());
    assert_eq!(v[1].stats().pongs_sent, 1);
    let tx = v[1].poll_transmit(t1, &mut buf).unwrap();
    assert!(v[1].poll_transmit(t1, &mut buf).is_none());
    let t2 = Instant::from_millis(15);
    v[0].handle_datagram(t2, ep(2), &mut buf[..tx.len]);
    let ev = events(&mut v[0]);
    assert!(
        ev.contains(&Event::Pong {
            id,
            from: Addr::new(1, 2),
            rtt: Duration::from_millis(14)
        }),
        "{ev:?}"
    );
}

#[test]
fn ping_without_answer_times_out_from_the_timer_table() {
    let mut v = mesh(2, true);
    let id = v[0].ping(Instant::ZERO, Addr::new(1, 2)).unwrap();
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    while v[0].poll_transmit(Instant::ZERO, &mut buf).is_some() {}
    let mut now = Instant::ZERO;
    let mut timed_out = false;
    for _ in 0..100 {
        let Some((t, _)) = v[0].poll_timeout() else {
            break;
        };
        now = t;
        v[0].handle_timeout(now);
        while v[0].poll_transmit(now, &mut buf).is_some() {}
        if events(&mut v[0]).contains(&Event::PingTimeout { id }) {
            timed_out = true;
            break;
        }
    }
    assert!(timed_out);
    assert_eq!(now, Instant::ZERO + PING_TIMEOUT);
}

#[test]
fn plaintext_and_garbage_are_counted_and_dropped() {
    let mut v = mesh(2, true);
    let mut pilt = b"PILT".to_vec();
    pilt.extend_from_slice(&[0u8; 40]);
    v[1].handle_datagram(Instant::ZERO, ep(1), &mut pilt);
    v[1].handle_datagram(Instant::ZERO, ep(1), &mut b"PILSxx".to_vec());
    v[1].handle_datagram(Instant::ZERO, ep(1), &mut b"\xff\xff".to_vec());
    let s = v[1].stats();
    assert_eq!(s.plaintext_refused, 1);
    assert_eq!(s.open_failed + s.malformed, 2);
    assert!(events(&mut v[1]).is_empty());
}

#[test]
fn without_encryption_pilt_carries_datagrams() {
    let mut v = mesh(2, false);
    v[1].bind(5).unwrap();
    v[0].send_datagram(Instant::ZERO, Addr::new(1, 2), 5, None, b"clear")
        .unwrap();
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    let t = v[0].poll_transmit(Instant::ZERO, &mut buf).unwrap();
    assert_eq!(&buf[..4], b"PILT");
    v[1].handle_datagram(Instant::ZERO, ep(1), &mut buf[..t.len]);
    assert!(matches!(events(&mut v[1])[..], [Event::Datagram { .. }]));
}

#[test]
fn segment_to_unknown_connection_gets_rst_but_rst_does_not() {
    let mut v = mesh(2, false);
    let mk = |flags: Flags| {
        let mut h = Header {
            version: VERSION,
            flags,
            protocol: Protocol::STREAM,
            payload_len: 0,
            src: Addr::new(1, 1),
            dst: Addr::new(1, 2),
            src_port: 50000,
            dst_port: 80,
            seq: 41,
            ack: 0,
            window: 8,
        };
        h.payload_len = 0;
        let p = Packet::new(h, &[]).unwrap();
        let mut b = b"PILT".to_vec();
        b.resize(4 + p.encoded_len(), 0);
        p.encode(&mut b[4..]).unwrap();
        b
    };
    v[1].handle_datagram(Instant::ZERO, ep(1), &mut mk(Flags::ACK));
    v[1].handle_datagram(Instant::ZERO, ep(1), &mut mk(Flags::RST));
    // A SYN to a port nobody listens on is refused too.
    v[1].handle_datagram(Instant::ZERO, ep(1), &mut mk(Flags::SYN));
    assert_eq!(v[1].stats().rst_sent, 2);
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    let t = v[1].poll_transmit(Instant::ZERO, &mut buf).unwrap();
    let p = Packet::decode(&buf[4..t.len]).unwrap();
    assert!(p.header.flags.contains(Flags::RST));
    assert_eq!((p.header.dst_port, p.header.ack), (50000, 42));
}

#[test]
fn broadcast_needs_the_token_and_expands_to_members() {
    let mut v = mesh(3, true);
    for n in v.iter_mut().skip(1) {
        n.bind(9).unwrap();
    }
    let t = Instant::ZERO;
    assert_eq!(
        v[0].broadcast(t, 1, 9, b"all", b"wrong"),
        Err(NodeError::BroadcastRefused)
    );
    assert_eq!(
        v[0].broadcast(t, 0, 9, b"all", b"secret"),
        Err(NodeError::BroadcastRefused)
    );
    assert_eq!(v[0].broadcast(t, 1, 9, b"all", b"secret"), Ok(2));
    pump(&mut v, t);
    for n in v.iter_mut().skip(1) {
        let dg: Vec<_> = events(n)
            .into_iter()
            .filter_map(|e| match e {
                Event::Datagram { src, data, .. } => Some((src, data)),
                _ => None,
            })
            .collect();
        assert_eq!(dg, vec![(Addr::new(1, 1), b"all".to_vec())]);
    }
}

#[test]
fn stream_round_trip_and_reap() {
    let mut v = mesh(2, true);
    let t = Instant::ZERO;
    v[1].listen(80).unwrap();
    let c = v[0].connect(t, Addr::new(1, 2), 80).unwrap();
    pump(&mut v, t);
    assert!(events(&mut v[0]).contains(&Event::Connected(c)));
    assert!(events(&mut v[1]).contains(&Event::Incoming { port: 80 }));
    let s = v[1].accept(80).unwrap();
    assert_eq!(v[0].write(t, c, b"abc").unwrap(), 3);
    v[0].shutdown(t, c).unwrap();
    pump(&mut v, t);
    let mut buf = [0u8; 16];
    assert_eq!(v[1].read(s, &mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"abc");
    assert_eq!(v[1].read(s, &mut buf).unwrap(), 0);
    v[1].close(t, s).unwrap();
    pump(&mut v, t);
    // Run the timers until both sides have dropped the connection.
    let mut now = t;
    for _ in 0..1000 {
        if v[0].conn_count() == 0 && v[1].conn_count() == 0 {
            break;
        }
        let next = v
            .iter()
            .filter_map(|n| n.poll_timeout())
            .map(|(t, _)| t)
            .min()
            .unwrap();
        now = next.max(now);
        for n in v.iter_mut() {
            n.handle_timeout(now);
        }
        pump(&mut v, now);
    }
    assert_eq!((v[0].conn_count(), v[1].conn_count()), (0, 0));
}

// ----- tunnel lifecycle (spec/crypto.md §13), one row per transition -----

/// Runs both nodes' timers and delivers everything (instantly) until `to`,
/// in 100-ms steps; `deaf[i]` drops what node i sends and receives.
fn advance(v: &mut [N], from: Instant, to: Instant, deaf: [bool; 2]) -> Vec<(usize, Event)> {
    let mut evs = Vec::new();
    let mut now = from;
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    while now <= to {
        for n in v.iter_mut() {
            while n.poll_timeout().is_some_and(|(t, _)| t <= now) {
                n.handle_timeout(now);
            }
        }
        if deaf.iter().any(|d| *d) {
            // Cut off: whatever a deaf node sends or is sent is lost.
            loop {
                let mut moved = false;
                for i in 0..v.len() {
                    while let Some(t) = v[i].poll_transmit(now, &mut buf) {
                        moved = true;
                        let j = usize::from(t.dst.ip().to_string().ends_with(".2"));
                        if !deaf[i] && !deaf[j] && j != i {
                            let mut bytes = buf[..t.len].to_vec();
                            v[j].handle_datagram(now, ep(i as u8 + 1), &mut bytes);
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
        } else {
            pump(v, now);
        }
        for (i, n) in v.iter_mut().enumerate() {
            evs.extend(events(n).into_iter().map(|e| (i, e)));
        }
        now = now + Duration::from_millis(100);
    }
    evs
}

fn got_datagram(evs: &[(usize, Event)], at: usize, data: &[u8]) -> bool {
    evs.iter()
        .any(|(i, e)| *i == at && matches!(e, Event::Datagram { data: d, .. } if d == data))
}

/// A restarted node 1: new tunnel key, same identity, peer 2's endpoint
/// known but not its identity key (it must be looked up).
fn restarted(i: u8, seed: u8) -> N {
    let mut rng = ChaCha8Rng::from_seed([seed; 32]);
    let tunnel_key = TunnelKey::generate(&RustCrypto, &mut rng);
    let mut n = Node::new(
        Instant::ZERO,
        NodeConfig {
            addr: Addr::new(1, u32::from(i)),
            identity: Some(ident(i)),
            tunnel_key,
            profile: WireProfile::Current,
            provider: RustCrypto,
            rng,
            encrypt: true,
            admin_token: Vec::new(),
            limits: Limits::default(),
        },
    );
    let other = 3 - i;
    n.add_peer(Addr::new(1, u32::from(other)), ep(other), None);
    n
}

/// Row 16 of `spec/crypto.md` §13: node 1 restarted and knows nothing of
/// node 2 (a daemon without trust), so node 2's frames under its old
/// session are dropped there without an answer. When the registry tells
/// node 2 that node 1 moved, node 2's unchanged key exchange goes out; the
/// restarted node verifies it once the registry vouches, replies with its
/// new key, and node 2 replaces the stale session.
#[test]
fn lifecycle_endpoint_change_from_the_registry_rekeys_a_stale_session() {
    let mut v = mesh(2, true);
    v[0].bind(7).unwrap();
    v[1].bind(7).unwrap();
    let t0 = Instant::from_millis(1);
    v[0].send_datagram(t0, Addr::new(1, 2), 7, Some(7), b"before")
        .unwrap();
    let evs = advance(&mut v, t0, Instant::from_millis(500), [false; 2]);
    assert!(got_datagram(&evs, 1, b"before"));
    // Node 1 restarts knowing nobody.
    let mut rng = ChaCha8Rng::from_seed([77; 32]);
    let tunnel_key = TunnelKey::generate(&RustCrypto, &mut rng);
    v[0] = Node::new(
        Instant::from_millis(600),
        NodeConfig {
            addr: Addr::new(1, 1),
            identity: Some(ident(1)),
            tunnel_key,
            profile: WireProfile::Current,
            provider: RustCrypto,
            rng,
            encrypt: true,
            admin_token: Vec::new(),
            limits: Limits::default(),
        },
    );
    v[0].bind(7).unwrap();
    let t1 = Instant::from_millis(3000);
    // Without news from the registry node 2's frames go nowhere.
    v[1].send_datagram(t1, Addr::new(1, 1), 7, Some(7), b"lost")
        .unwrap();
    let evs = advance(&mut v, t1, Instant::from_millis(3500), [false; 2]);
    assert!(!got_datagram(&evs, 0, b"lost"));
    assert!(v[1].has_session(1), "a failed frame changes nothing");
    // The registry look-up finds node 1 (here: at the same address).
    let t2 = Instant::from_millis(3600);
    v[1].endpoint_changed(t2, 1);
    let mut now = t2;
    let mut evs = Vec::new();
    while now < Instant::from_millis(5000) {
        let step = advance(&mut v, now, now, [false; 2]);
        for (i, e) in &step {
            if let Event::IdentityNeeded { peer } = e {
                let p = *peer as u8;
                v[*i].identity_resolved(now, *peer, 1, *ident(p).public());
            }
        }
        evs.extend(step);
        now = now + Duration::from_millis(100);
    }
    assert!(v[0].has_session(2), "{evs:?}");
    v[1].send_datagram(now, Addr::new(1, 1), 7, Some(7), b"after")
        .unwrap();
    let evs = advance(&mut v, now, now + Duration::from_millis(300), [false; 2]);
    assert!(got_datagram(&evs, 0, b"after"), "{evs:?}");
    // Rate-limited: a second notice within 3 s sends nothing.
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    let t3 = now + Duration::from_millis(400);
    v[1].endpoint_changed(t3, 1);
    v[1].endpoint_changed(t3 + Duration::from_millis(10), 1);
    let mut kx = 0;
    while v[1]
        .poll_transmit(t3 + Duration::from_millis(10), &mut buf)
        .is_some()
    {
        kx += usize::from(buf[..4] == *b"PILA");
    }
    assert_eq!(kx, 1);
}

#[test]
fn lifecycle_table() {
    type Setup = fn(&mut Vec<N>, Instant);
    // (row, what happens, who sends first)
    let rows: [(&str, Setup, usize); 5] = [
        (
            "revoked-here-we-send",
            |v, t| {
                v[0].close_tunnel(t, 2);
            },
            0,
        ),
        (
            "revoked-here-peer-sends",
            |v, t| {
                v[0].close_tunnel(t, 2);
            },
            1,
        ),
        (
            "revoked-both-peer-sends",
            |v, t| {
                v[0].close_tunnel(t, 2);
                v[1].close_tunnel(t, 1);
            },
            1,
        ),
        (
            "we-restarted-peer-sends",
            |v, _| {
                v[0] = restarted(1, 99);
            },
            1,
        ),
        (
            "we-restarted-we-send",
            |v, _| {
                v[0] = restarted(1, 98);
            },
            0,
        ),
    ];
    for (name, setup, first) in rows {
        let mut v = mesh(2, true);
        let t0 = Instant::from_millis(1);
        v[0].bind(7).unwrap();
        v[1].bind(7).unwrap();
        v[0].send_datagram(t0, Addr::new(1, 2), 7, Some(7), b"before")
            .unwrap();
        let evs = advance(&mut v, t0, Instant::from_millis(500), [false; 2]);
        assert!(got_datagram(&evs, 1, b"before"), "{name}: warm-up");
        let t1 = Instant::from_millis(600);
        setup(&mut v, t1);
        let _ = v[0].bind(7);
        let other = 1 - first;
        let dst = Addr::new(1, other as u32 + 1);
        v[first]
            .send_datagram(t1, dst, 7, Some(7), b"after")
            .unwrap();
        // The registry of this test: identity look-ups are answered. A
        // restarted peer's new key is accepted once the old session has
        // been quiet for 2 s, and rekey requests answer the sender's
        // frames at most every 3 s, arming no timer (spec/crypto.md §2.2,
        // §2.4): the application repeats its datagram every second, as
        // any traffic with retransmissions does; delivery within 7 s.
        let mut evs = Vec::new();
        let mut now = t1;
        while now < Instant::from_millis(7600) {
            let since = now.saturating_duration_since(t1).as_millis();
            if since > 0 && since % 1000 == 0 && !got_datagram(&evs, other, b"after") {
                let _ = v[first].send_datagram(now, dst, 7, Some(7), b"after");
            }
            let step = advance(&mut v, now, now, [false; 2]);
            for (i, e) in &step {
                if let Event::IdentityNeeded { peer } = e {
                    let p = *peer as u8;
                    v[*i].identity_resolved(now, *peer, 1, *ident(p).public());
                }
            }
            evs.extend(step);
            now = now + Duration::from_millis(100);
        }
        assert!(
            got_datagram(&evs, other, b"after"),
            "{name}: no delivery within 7 s: {evs:?}"
        );
        // And back the other way.
        v[other]
            .send_datagram(now, Addr::new(1, first as u32 + 1), 7, Some(7), b"back")
            .unwrap();
        let evs = advance(&mut v, now, now + Duration::from_millis(300), [false; 2]);
        assert!(got_datagram(&evs, first, b"back"), "{name}: no reply");
    }
}

#[test]
fn lifecycle_dead_peer_fails_connections_and_idle_peers_stay_alive() {
    let mut v = mesh(2, true);
    for n in v.iter_mut() {
        n.set_peer_timeout(Instant::ZERO, Duration::from_secs(4));
    }
    v[1].listen(9).unwrap();
    let t0 = Instant::from_millis(1);
    let c = v[0].connect(t0, Addr::new(1, 2), 9).unwrap();
    let evs = advance(&mut v, t0, Instant::from_millis(500), [false; 2]);
    assert!(evs.contains(&(0, Event::Connected(c))), "{evs:?}");
    // Idle for a minute: probes keep the tunnel and the connection.
    let evs = advance(
        &mut v,
        Instant::from_millis(600),
        Instant::from_millis(60_000),
        [false; 2],
    );
    assert!(
        !evs.iter()
            .any(|(_, e)| matches!(e, Event::PeerUnreachable { .. } | Event::Reset(..))),
        "{evs:?}"
    );
    assert!(v[0].stats().probes_sent + v[1].stats().probes_sent > 0);
    assert!(v[0].has_session(2));
    // Node 2 goes silent: within the timeout plus one sweep the
    // connection fails with a clear cause and the session is gone.
    v[0].write(Instant::from_millis(60_000), c, b"into the void")
        .unwrap();
    let t_cut = Instant::from_millis(60_000);
    let evs = advance(&mut v, t_cut, Instant::from_millis(66_000), [false, true]);
    let reset = evs
        .iter()
        .find(|(i, e)| *i == 0 && matches!(e, Event::Reset(id, _) if *id == c));
    assert_eq!(
        reset.map(|(_, e)| e.clone()),
        Some(Event::Reset(c, ResetCause::PeerUnreachable)),
        "{evs:?}"
    );
    assert!(evs.iter().any(|(i, e)| *i == 0
        && matches!(e, Event::PeerUnreachable { peer: 2, silent } if *silent <= Duration::from_millis(4600))));
    assert!(!v[0].has_session(2));
    assert_eq!(v[0].conn_count(), 0, "buffers released");
}

#[test]
fn lifecycle_peer_proving_identity_from_a_new_address_is_used_there() {
    let mut v = mesh(2, true);
    v[0].bind(7).unwrap();
    v[1].bind(7).unwrap();
    let t0 = Instant::from_millis(1);
    v[0].connect_tunnel(t0, 2);
    pump(&mut v, t0);
    assert!(v[0].has_session(2));
    // Node 2 sends from a new address (rebound socket, NAT change). While
    // its old address was heard from within ROAM_QUIET, an authentic
    // frame from elsewhere moves nothing: it may be a replayed copy of a
    // frame still on its way.
    let moved = SocketAddr::from(([127, 0, 0, 9], 5000));
    let old = v[0].peer_endpoint(2);
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    v[1].send_datagram(t0, Addr::new(1, 1), 7, Some(7), b"early")
        .unwrap();
    let tx = v[1].poll_transmit(t0, &mut buf).unwrap();
    v[0].handle_datagram(t0, moved, &mut buf[..tx.len]);
    assert_eq!(v[0].peer_endpoint(2), old);
    assert_eq!(v[0].stats().endpoint_moves, 0);
    // The old address stays silent: the next (newest) frame from the new
    // one moves the endpoint there.
    let t1 = t0 + crate::node::ROAM_QUIET;
    v[1].send_datagram(t1, Addr::new(1, 1), 7, Some(7), b"moved")
        .unwrap();
    let tx = v[1].poll_transmit(t1, &mut buf).unwrap();
    let newer = buf[..tx.len].to_vec();
    v[1].send_datagram(t1, Addr::new(1, 1), 7, Some(7), b"newest")
        .unwrap();
    let tx = v[1].poll_transmit(t1, &mut buf).unwrap();
    // An older authentic frame (delivered after a newer one) moves nothing.
    v[0].handle_datagram(t1, moved, &mut buf[..tx.len]);
    let mut late = newer;
    v[0].handle_datagram(t1, ep(8), &mut late);
    assert_eq!(v[0].peer_endpoint(2), Some(moved));
    assert_eq!(v[0].stats().endpoint_moves, 1);
    // An unauthenticated or forged frame from yet another address moves
    // nothing.
    let mut junk = buf[..tx.len].to_vec();
    let last = junk.len() - 1;
    junk[last] ^= 1;
    v[0].handle_datagram(t0, ep(7), &mut junk);
    assert_eq!(v[0].peer_endpoint(2), Some(moved));
    let d: Vec<_> = core::iter::from_fn(|| v[0].poll_diagnostic()).collect();
    assert!(
        d.iter()
            .any(|x| matches!(x, Diagnostic::EndpointMoved { peer: 2, .. })),
        "{d:?}"
    );
    assert!(
        d.iter().any(|x| matches!(
            x,
            Diagnostic::Dropped {
                peer: 2,
                reason: AuthDrop::PilsBadTag,
                ..
            }
        )),
        "{d:?}"
    );
}

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// A signed PILA of node `sender` under identity `id` with a fresh tunnel
/// key drawn from `seed`.
fn pila(sender: u32, id: &Identity, seed: u8) -> Vec<u8> {
    let tk = TunnelKey::from_secret(&RustCrypto, [seed; 32]);
    let mut f = vec![0u8; crate::crypto::kx::PILA_LEN];
    crate::crypto::kx::build_pila(&RustCrypto, sender, &tk, id, &mut f).unwrap();
    f
}

/// Garbage, forged PILS, PILKs and signed PILAs from strangers with
/// random sender IDs create no peer entry and no session; every drop is
/// counted by reason; only bounded shared state (the half-open table)
/// grows.
#[test]
fn strangers_create_no_peers_and_every_drop_is_counted() {
    let mut v = mesh(2, true);
    let attacker = SocketAddr::from(([10, 9, 9, 9], 5555));
    let evil = Identity::from_seed(&RustCrypto, [99; 32]);
    for i in 0..2000u32 {
        let now = ms(u64::from(i));
        let mut garbage = vec![(i % 251) as u8; 8 + (i % 30) as usize];
        garbage[..4].copy_from_slice(b"PILK");
        v[0].handle_datagram(now, attacker, &mut garbage);
        let mut pilk = vec![0u8; crate::crypto::kx::PILK_LEN];
        let tk = TunnelKey::from_secret(&RustCrypto, [(i % 200) as u8 + 1; 32]);
        crate::crypto::kx::build_pilk(1000 + i, &tk, &mut pilk).unwrap();
        v[0].handle_datagram(now, attacker, &mut pilk);
        let mut forged = vec![0u8; 80];
        forged[..4].copy_from_slice(b"PILS");
        forged[4..8].copy_from_slice(&(5000 + i).to_be_bytes());
        forged[19] = 1;
        v[0].handle_datagram(now, attacker, &mut forged);
        let mut p = pila(70_000 + i, &evil, (i % 200) as u8 + 1);
        v[0].handle_datagram(
            now,
            SocketAddr::from(([10, 9, (i >> 8) as u8, i as u8], 1)),
            &mut p,
        );
    }
    assert_eq!(v[0].peer_count(), 1, "only the configured peer");
    assert!(v[0].sessions().is_empty());
    assert!(v[0].half_open_len() <= Limits::default().half_open);
    let d = v[0].auth_drops();
    assert!(d.get(AuthDrop::Malformed) > 0);
    assert_eq!(d.get(AuthDrop::PilsNoSession), 2000);
    assert!(d.get(AuthDrop::KxUnauthenticated) + d.get(AuthDrop::KxRateLimited) >= 2000);
    assert!(
        d.get(AuthDrop::KxStrangerBudget) > 0,
        "the global budget capped signature checks"
    );
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    assert!(
        v[0].poll_transmit(ms(2000), &mut buf).is_none(),
        "nothing sent to strangers"
    );
}

/// A stranger's signed PILA is held (no peer entry) until the registry
/// vouches for its key; then the peer is added at the frame's source and
/// the session installed. A key the registry does not vouch for is
/// dropped and counted.
#[test]
fn held_key_exchange_is_accepted_only_with_the_vouched_key() {
    let mut a = node(1, true, b"");
    let mut c = node(3, true, b"");
    c.add_peer(Addr::new(1, 1), ep(1), Some(*ident(1).public()));
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    c.connect_tunnel(ms(0), 1);
    let t = c.poll_transmit(ms(0), &mut buf).unwrap();
    a.handle_datagram(ms(1), ep(3), &mut buf[..t.len]);
    assert_eq!(events(&mut a), vec![Event::IdentityNeeded { peer: 3 }]);
    assert_eq!(a.peer_count(), 0);
    assert_eq!(a.half_open_len(), 1);
    // The registry vouches for another key: dropped.
    assert!(!a.identity_resolved(ms(2), 3, 1, *ident(9).public()));
    assert_eq!(a.auth_drops().get(AuthDrop::KxUnvouched), 1);
    assert_eq!(a.peer_count(), 0);
    // The retransmission is held again; the right key installs it.
    a.handle_datagram(ms(5000), ep(3), &mut buf[..t.len]);
    assert!(a.identity_resolved(ms(5001), 3, 1, *ident(3).public()));
    assert!(a.has_session(3));
    assert_eq!(a.peer_endpoint(3), Some(ep(3)));
    assert_eq!(a.half_open_len(), 0);
}

/// Forged PILS frames claiming a live peer, and replays of its real
/// frames, do not drop, re-key or delay the pair: pings keep working.
#[test]
fn forged_and_replayed_frames_leave_a_live_pair_alone() {
    let mut v = mesh(2, true);
    v[0].ping(ms(0), Addr::new(1, 2)).unwrap();
    pump(&mut v, ms(0));
    events(&mut v[0]);
    events(&mut v[1]);
    // Capture one real frame from node 1 to node 2.
    v[0].send_datagram(ms(1), Addr::new(1, 2), 9, Some(9), b"x")
        .unwrap();
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    let t = v[0].poll_transmit(ms(1), &mut buf).unwrap();
    let real = buf[..t.len].to_vec();
    for i in 0..5000u64 {
        let now = ms(10 + i * 20);
        let mut forged = real.clone();
        let k = 20 + (i as usize % (forged.len() - 20));
        forged[k] ^= 0x5a;
        v[1].handle_datagram(now, SocketAddr::from(([10, 0, 0, 66], 7)), &mut forged);
        let mut replay = real.clone();
        v[1].handle_datagram(now, ep(1), &mut replay);
        if i % 50 == 0 {
            v[0].ping(now, Addr::new(1, 2)).unwrap();
            pump(&mut v, now);
            let ev = events(&mut v[0]);
            assert!(
                ev.iter()
                    .any(|e| matches!(e, Event::Pong { rtt, .. } if rtt.is_zero())),
                "{i}: {ev:?}"
            );
        }
    }
    assert!(
        events(&mut v[1])
            .iter()
            .all(|e| !matches!(e, Event::SessionDown { .. }))
    );
    let d = v[1].auth_drops();
    assert_eq!(d.get(AuthDrop::PilsBadTag), 5000);
    assert_eq!(d.get(AuthDrop::PilsReplay), 4999);
}

/// Node `i` with or without an identity (PILA vs PILK) and a large accept
/// queue, so only the SYN rate limits can refuse a dial.
fn node_for_dials(i: u8, with_identity: bool) -> N {
    let mut rng = ChaCha8Rng::from_seed([i; 32]);
    let tunnel_key = TunnelKey::generate(&RustCrypto, &mut rng);
    let limits = Limits {
        accept_queue: 2048,
        max_conns_per_port: 2048,
        ..Limits::default()
    };
    Node::new(
        Instant::ZERO,
        NodeConfig {
            addr: Addr::new(1, u32::from(i)),
            identity: with_identity.then(|| ident(i)),
            tunnel_key,
            profile: WireProfile::Current,
            provider: RustCrypto,
            rng,
            encrypt: true,
            admin_token: Vec::new(),
            limits,
        },
    )
}

/// Dials `count` streams from node 1 to node 2 port 80 at one instant
/// (no bucket refills) and returns how many node 2 accepted.
fn burst_of_dials(v: &mut [N], count: usize) -> usize {
    let t = Instant::from_millis(1);
    v[0].connect_tunnel(t, 2);
    pump(v, t);
    v[1].listen(80).unwrap();
    let mut accepted = 0;
    for _ in 0..count {
        v[0].connect(t, Addr::new(1, 2), 80).unwrap();
    }
    pump(v, t);
    while v[1].accept(80).is_some() {
        accepted += 1;
    }
    accepted
}

#[test]
fn authenticated_peer_dials_are_not_syn_rate_limited() {
    // Both identities pinned: the session comes from a verified PILA.
    let mut v = vec![node_for_dials(1, true), node_for_dials(2, true)];
    v[0].add_peer(Addr::new(1, 2), ep(2), Some(*ident(2).public()));
    v[1].add_peer(Addr::new(1, 1), ep(1), Some(*ident(1).public()));
    assert_eq!(burst_of_dials(&mut v, 1000), 1000);
    assert_eq!(v[1].stats().syn_rate_limited, 0);
    assert_eq!(v[1].stats().syn_authenticated, 1000);
}

#[test]
fn unauthenticated_peer_dials_stay_syn_rate_limited() {
    // PILK sessions: the sender's identity is not proven, so the
    // per-source bucket (burst 64) applies.
    let mut v = vec![node_for_dials(1, false), node_for_dials(2, false)];
    v[0].add_peer(Addr::new(1, 2), ep(2), None);
    v[1].add_peer(Addr::new(1, 1), ep(1), None);
    let accepted = burst_of_dials(&mut v, 200);
    assert_eq!(accepted, 64);
    assert!(v[1].stats().syn_rate_limited >= 136);
    assert_eq!(v[1].stats().syn_authenticated, 0);
}

#[test]
fn plaintext_syn_claiming_an_authenticated_sender_is_rate_limited() {
    // Node 2 has an authenticated session with node 1, but a PILT frame
    // naming node 1 as sender proves nothing: an encrypting node refuses
    // it outright, so it cannot ride on the session's exemption.
    let mut v = vec![node_for_dials(1, true), node_for_dials(2, true)];
    v[0].add_peer(Addr::new(1, 2), ep(2), Some(*ident(2).public()));
    v[1].add_peer(Addr::new(1, 1), ep(1), Some(*ident(1).public()));
    assert_eq!(burst_of_dials(&mut v, 1), 1);
    let t = Instant::from_millis(1);
    let mut pilt_node = node(1, false, b"");
    pilt_node.add_peer(Addr::new(1, 2), ep(2), None);
    pilt_node.listen(1).unwrap();
    let before = v[1].stats();
    for _ in 0..200 {
        pilt_node.connect(t, Addr::new(1, 2), 80).unwrap();
    }
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    let mut frames = 0;
    while let Some(tx) = pilt_node.poll_transmit(t, &mut buf) {
        frames += 1;
        v[1].handle_datagram(t, ep(1), &mut buf[..tx.len]);
    }
    assert_eq!(frames, 200);
    let after = v[1].stats();
    assert_eq!(after.syn_authenticated, before.syn_authenticated);
    assert_eq!(after.plaintext_refused - before.plaintext_refused, 200);
    assert!(v[1].accept(80).is_none());
}

/// Runs a dial from node 1 to node 2 over a path that drops every
/// datagram larger than `mtu` bytes, writing `total` bytes; returns what
/// node 2 read, node 1's connection info once everything was read (if it
/// was), node 1's events and the virtual time at the end.
fn transfer_over_mtu(mtu: usize, total: usize) -> (usize, Option<ConnInfo>, Vec<Event>, Instant) {
    let mut v = mesh(2, true);
    v[1].listen(80).unwrap();
    let mut now = Instant::from_millis(1);
    let id = v[0].connect(now, Addr::new(1, 2), 80).unwrap();
    let (mut written, mut read, mut info) = (0usize, 0usize, None);
    let mut evs = Vec::new();
    let mut accepted = None;
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
    let data = vec![7u8; 4096];
    while now < Instant::from_millis(60_000) && read < total {
        // Deliver (instantly) what fits the path.
        loop {
            let mut batch = Vec::new();
            for (i, n) in v.iter_mut().enumerate() {
                while let Some(t) = n.poll_transmit(now, &mut buf) {
                    if t.len <= mtu {
                        batch.push((i, buf[..t.len].to_vec()));
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            for (from, mut bytes) in batch {
                v[1 - from].handle_datagram(now, ep(from as u8 + 1), &mut bytes);
            }
            evs.extend(events(&mut v[0]));
            events(&mut v[1]);
            if accepted.is_none() {
                accepted = v[1].accept(80);
            }
            if let Some(a) = accepted {
                let mut rb = [0u8; 8192];
                while let Ok(n) = v[1].read(a, &mut rb) {
                    if n == 0 {
                        break;
                    }
                    read += n;
                }
            }
            while written < total {
                match v[0].write(now, id, &data[..(total - written).min(data.len())]) {
                    Ok(n) if n > 0 => written += n,
                    _ => break,
                }
            }
        }
        if read >= total {
            info = v[0].conn_info(id);
            break;
        }
        if evs.iter().any(|e| matches!(e, Event::Reset(..))) {
            break;
        }
        let next = [v[0].poll_timeout(), v[1].poll_timeout()]
            .into_iter()
            .flatten()
            .map(|(t, _)| t)
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        now = next.max(now + Duration::from_millis(1));
        v[0].handle_timeout(now);
        v[1].handle_timeout(now);
    }
    (read, info, evs, now)
}

#[test]
fn path_mtu_black_hole_shrinks_segments_and_conn_info_reports_it() {
    let (read, info, _, _) = transfer_over_mtu(600, 20_000);
    assert_eq!(read, 20_000);
    let info = info.expect("connection still open");
    assert_eq!(info.segment_size, crate::stream::consts::SEGMENT_FLOOR);
    assert!(info.path_mtu <= 600, "{info:?}");
    // A path that carries full segments keeps them.
    let (read, info, _, _) = transfer_over_mtu(1500, 20_000);
    assert_eq!(read, 20_000);
    assert_eq!(info.expect("open").segment_size, 1152);
}

#[test]
fn path_mtu_below_the_floor_fails_fast_with_its_own_cause() {
    let (read, _, evs, now) = transfer_over_mtu(500, 20_000);
    assert_eq!(read, 0);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Reset(_, ResetCause::PathMtu))),
        "{evs:?}"
    );
    assert!(now < Instant::from_millis(20_000), "gave up at {now:?}");
}

#[test]
fn queued_packet_buffers_are_reused_and_bounded() {
    let mut v = mesh(2, true);
    let t = Instant::from_millis(1);
    v[1].bind(7000).unwrap();
    v[0].send_datagram(t, Addr::new(1, 2), 7000, Some(9), b"warm")
        .unwrap();
    pump(&mut v, t);
    assert_eq!(v[0].spare.len(), 1, "the sent datagram's buffer is kept");
    let kept = v[0].spare[0].as_ptr();
    v[0].send_datagram(t, Addr::new(1, 2), 7000, Some(9), b"again")
        .unwrap();
    assert!(v[0].spare.is_empty(), "the next datagram took it");
    assert_eq!(v[0].out.back().map(|(_, b)| b.as_ptr()), Some(kept));
    pump(&mut v, t);
    assert_eq!(v[0].spare.len(), 1);
    // A big datagram's buffer is not hoarded.
    v[0].send_datagram(t, Addr::new(1, 2), 7000, Some(9), &[0u8; 4000])
        .unwrap();
    pump(&mut v, t);
    assert!(v[0].spare.is_empty());
    // A burst larger than the pool leaves at most SPARE_BUFFERS behind.
    for _ in 0..(SPARE_BUFFERS + 10) {
        v[0].send_datagram(t, Addr::new(1, 2), 7000, Some(9), b"burst")
            .unwrap();
    }
    pump(&mut v, t);
    assert_eq!(v[0].spare.len(), SPARE_BUFFERS);
}

/// Issue #14: `poll_transmit_batch` packs stream segments for one peer back
/// to back in equal sizes (the GSO layout), keeps a datagram for another
/// peer for the next poll, and the segments, split at `segment_size`,
/// deliver the stream intact and in order.
#[test]
fn transmit_batches_are_equal_segments_for_one_destination() {
    let mut v = mesh(3, true);
    let t = Instant::from_millis(1);
    v[1].listen(80).unwrap();
    v[2].bind(7).unwrap();
    let c = v[0].connect(t, Addr::new(1, 2), 80).unwrap();
    v[0].connect_tunnel(t, 3);
    pump(&mut v, t);
    let s = v[1].accept(80).unwrap();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(v[0].write(t, c, &data).unwrap(), data.len());
    v[0].send_datagram(t, Addr::new(1, 3), 7, None, b"to three")
        .unwrap();
    let mut buf = vec![0u8; 8 * 1300 + MIN_TRANSMIT_BUFFER];
    let mut multi = 0;
    let mut to_three = 0;
    while let Some(b) = v[0].poll_transmit_batch(t, &mut buf, 8) {
        assert!(b.segments >= 1 && b.segments <= 8);
        assert!(b.len <= b.segment_size * b.segments);
        assert!(b.len > b.segment_size * (b.segments - 1));
        if b.segments > 1 {
            multi += 1;
        }
        let to = if b.dst == ep(3) { 2 } else { 1 };
        for chunk in buf[..b.len].chunks(b.segment_size) {
            if to == 2 {
                to_three += 1;
            }
            v[to].handle_datagram(t, ep(1), &mut chunk.to_vec());
        }
    }
    assert!(multi > 0, "no batch held more than one segment");
    assert_eq!(to_three, 1);
    pump(&mut v, t);
    let mut got = vec![0u8; data.len() + 1];
    let mut n = 0;
    while let Ok(k) = v[1].read(s, &mut got[n..]) {
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(&got[..n], &data[..]);
}
