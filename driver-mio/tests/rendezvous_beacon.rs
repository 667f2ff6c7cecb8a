//! The beacon over real UDP: discover answers with the observed endpoint;
//! two beacons of one network (PostgreSQL frontends) punch and relay
//! across each other.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use pilot_proto::beacon::client::{BeaconClient, BeaconEvent, ClientConfig};
use pilot_proto::wire::beacon::BeaconMsg;

use common::{Client, Pg, Rv, STEP};

#[test]
fn discover_reports_the_observed_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let rv = Rv::start(&dir.path().join("s.redb"), &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    // The beacon client runs on a node's monotonic clock, not Unix time.
    let now = pilot_proto::time::Instant::ZERO;
    let mut client = BeaconClient::new(ClientConfig::new(rv.beacon, 42), now);
    let deadline = std::time::Instant::now() + STEP;
    let mut buf = vec![0u8; 2048];
    let endpoint = loop {
        assert!(std::time::Instant::now() < deadline, "no discover reply");
        client.discover_now(now);
        while let Some(tx) = client.poll_transmit(now, &mut buf) {
            assert_eq!(tx.dst, rv.beacon);
            sock.send_to(&buf[..tx.len], tx.dst).unwrap();
        }
        let mut rx = [0u8; 2048];
        if let Ok((n, from)) = sock.recv_from(&mut rx) {
            assert_eq!(from, rv.beacon);
            if let Some(BeaconEvent::PublicEndpoint(ep)) =
                client.handle_datagram(now, from, &rx[..n])
            {
                break ep;
            }
        }
    };
    assert_eq!(endpoint, sock.local_addr().unwrap());
    assert_eq!(client.public_endpoint(), Some(endpoint));
}

/// Sends `msg` from `sock` to `to` every 100 ms until `sock` receives a
/// datagram from `from` for which `want` says yes (bounded by [`STEP`]).
fn exchange(
    sock: &UdpSocket,
    to: SocketAddr,
    msg: &[u8],
    from: SocketAddr,
    mut want: impl FnMut(&[u8]) -> bool,
) -> Vec<u8> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + STEP;
    let mut rx = [0u8; 2048];
    loop {
        assert!(Instant::now() < deadline, "no wanted reply from {from}");
        sock.send_to(msg, to).unwrap();
        while let Ok((n, src)) = sock.recv_from(&mut rx) {
            if src == from && want(&rx[..n]) {
                return rx[..n].to_vec();
            }
        }
    }
}

/// The first datagram `sock` receives from `from` for which `want` says
/// yes, within [`STEP`].
fn receive(sock: &UdpSocket, from: SocketAddr, mut want: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + STEP;
    let mut rx = [0u8; 2048];
    loop {
        assert!(Instant::now() < deadline, "nothing wanted from {from}");
        if let Ok((n, src)) = sock.recv_from(&mut rx) {
            if src == from && want(&rx[..n]) {
                return rx[..n].to_vec();
            }
        }
    }
}

fn punch_command(to: SocketAddr) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    let msg = BeaconMsg::PunchCommand { endpoint: to };
    let n = msg.encode(&mut b).unwrap();
    b.truncate(n);
    b
}

fn msg(m: &BeaconMsg<'_>) -> Vec<u8> {
    let mut b = vec![0u8; m.encoded_len()];
    m.encode(&mut b).unwrap();
    b
}

/// Two free loopback UDP ports (bound, then released for the servers).
fn two_free_udp() -> (SocketAddr, SocketAddr) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// Two frontends on one PostgreSQL database, each with its own beacon and
/// the other as peer. Node A uses frontend 1 and beacon 1, node B frontend
/// 2 and beacon 2. A punch request from A reaches B through beacon 2 (and
/// B's endpoint reaches A through beacon 1); relays cross in both
/// directions (`spec/beacon.md` §3.8).
#[test]
fn two_beacons_share_a_network_through_the_store() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.database("beacons");
    let (b1, b2) = two_free_udp();
    let (s1, s2) = (b1.to_string(), b2.to_string());
    let f1 = Rv::start_at(url.as_ref(), &s1, &["--beacon-peers", &s2]);
    let f2 = Rv::start_at(url.as_ref(), &s2, &["--beacon-peers", &s1]);
    assert_eq!((f1.beacon, f2.beacon), (b1, b2));
    let a = Client::connect(f1.registry).register(11);
    let b = Client::connect(f2.registry).register(12);
    let sa = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sb = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (ea, eb) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    // Each node discovers at its own beacon only.
    let discover = |n: u32| {
        msg(&BeaconMsg::Discover {
            node: n,
            ed25519: None,
        })
    };
    exchange(&sa, b1, &discover(a), b1, |r| r[0] == 0x02);
    exchange(&sb, b2, &discover(b), b2, |r| r[0] == 0x02);

    // Punch A → B: A hears B's endpoint from beacon 1, B hears A's from
    // beacon 2 (the only beacon B accepts commands from).
    let punch = msg(&BeaconMsg::PunchRequest {
        requester: a,
        target: b,
        grant: None,
    });
    let to_a = punch_command(eb);
    exchange(&sa, b1, &punch, b1, |r| r == to_a.as_slice());
    let to_b = punch_command(ea);
    receive(&sb, b2, |r| r == to_b.as_slice());
    // And B → A the other way round.
    let punch = msg(&BeaconMsg::PunchRequest {
        requester: b,
        target: a,
        grant: None,
    });
    exchange(&sb, b2, &punch, b2, |r| r == to_b.as_slice());
    receive(&sa, b1, |r| r == to_a.as_slice());

    // Relays cross beacons both ways, delivered by the receiver's beacon.
    let frame = b"PILS relayed across beacons";
    let relay = |from: u32, to: u32| {
        msg(&BeaconMsg::Relay {
            sender: from,
            destination: to,
            inner: frame,
        })
    };
    let delivered = |from: u32| {
        msg(&BeaconMsg::RelayDeliver {
            source: from,
            inner: frame,
        })
    };
    let (ab, want_b) = (relay(a, b), delivered(a));
    sa.send_to(&ab, b1).unwrap();
    receive(&sb, b2, |r| r == want_b.as_slice());
    let (ba, want_a) = (relay(b, a), delivered(b));
    sb.send_to(&ba, b2).unwrap();
    receive(&sa, b1, |r| r == want_a.as_slice());
}
