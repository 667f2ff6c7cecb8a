//! Pilot across real network boundaries (issue #13): labs of Linux network
//! namespaces built by `scripts/natlab.sh` — a "public" namespace with
//! `pilot-rendezvous` (registry + beacon) and home namespaces, each behind
//! its own router doing no NAT, a port-keeping masquerade (endpoint-
//! independent mapping) or a random-port masquerade (symmetric NAT), all
//! dropping unsolicited inbound packets. Real `pilot-daemon` processes run
//! in the homes; the tests drive them through their IPC sockets and
//! `pilotctl --json`: first contact timed to the first echoed byte, ping,
//! a 16 MiB stream with SHA-256 compared, a file by data exchange and an
//! event through a peer's pub/sub broker. The path a pair used is read from
//! the network itself — nftables counters on the receiving home's router,
//! after its NAT filter, say whether the bulk bytes arrived straight from
//! the sender (direct) or from the beacon (relay) — and from `pilotctl
//! peers --json`.
//!
//! `lab_nats_behave_as_declared` checks the lab itself with plain UDP
//! sockets, so the Pilot tests cannot pass on a lab that quietly lost its
//! NAT. Needs root (network namespaces) and nftables; skips with a message
//! when namespaces cannot be made. `measure_direct_vs_relay` (ignored)
//! prints first-byte times and throughputs, direct and relayed.

mod natlab_support;
mod pilotctl_support;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use natlab_support::{
    FirstByte, Lab, Nat, Transfer, address, first_byte, peer_entry, send_file, transfer,
};
use pilotctl_support::{Node, finish, trust};

const MIB: usize = 1 << 20;
/// The bulk stream of every pair.
const BULK: usize = 16 * MIB;

/// Builds a lab or prints why it is skipped.
fn lab(test: &str, nats: &[Nat]) -> Option<Lab> {
    match Lab::up(nats) {
        Ok(l) => Some(l),
        Err(why) => {
            eprintln!("SKIP {test}: network namespaces unavailable ({why})");
            None
        }
    }
}

/// The path a pair is expected to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Direct,
    Relay,
}

/// What one pair measured.
#[derive(Clone, Copy, Debug)]
struct PairReport {
    first: FirstByte,
    bulk: Transfer,
}

/// A daemon in each home of `lab` (public, so first contact needs no
/// trust): `a` in home 1, `b` in home 2, `c` in home 3, ...
fn daemons(lab: &mut Lab) -> Vec<(usize, Node)> {
    lab.start_rendezvous();
    (1..=lab.nats.len())
        .map(|i| {
            let name = ((b'a' + (i as u8 - 1)) as char).to_string();
            (i, lab.daemon(i, &name, &["--public"]))
        })
        .collect()
}

/// `from` (in home `hf`) makes first contact with `to` (in home `ht`),
/// timed to the first echoed byte; then ping, the 16 MiB stream
/// from → to, trust, a file by data exchange from → to and an event
/// through `to`'s broker seen by a subscriber on `from`. Asserts that the
/// bulk bytes took `path`, on the wire and in `peers --json`.
fn exercise(
    lab: &Lab,
    (hf, from): (usize, &Node),
    (ht, to): (usize, &Node),
    path: Via,
) -> PairReport {
    let addr_to = address(to);
    let to_id = to.node_id.to_string();
    check_public_endpoint(lab, (hf, from));
    check_public_endpoint(lab, (ht, to));

    let first = first_byte(from, addr_to);

    let v = from.ok(&["ping", &to_id, "--count", "3", "--timeout", "60s"]);
    let results = v["results"].as_array().expect("ping results");
    assert_eq!(results.len(), 3, "{v}");
    for r in results {
        assert!(r["error"].is_null() && r["rtt_ms"].is_number(), "{v}");
    }

    let before = lab.counters();
    let bulk = transfer(from, to, addr_to, 5000, BULK);
    let moved = lab.counters().since(&before);
    // Into the receiving home: straight from the sender, or from the
    // beacon (the NAT filter has had its say: dropped attempts are not
    // counted here).
    let direct = moved.delivered_direct(ht, hf);
    let relayed = moved.delivered_relayed(ht);
    eprintln!(
        "{:?} -> {:?} {:?}: first byte {:?} (dial {:?}); 16 MiB in {:?} ({:.1} MiB/s); \
         during the bulk into the receiver: {direct} B direct, {relayed} B from the beacon \
         (offered router to router: {} B)",
        lab.nats[hf - 1],
        lab.nats[ht - 1],
        path,
        first.first_byte,
        first.dial,
        bulk.elapsed,
        bulk.mib_per_s(),
        moved.offered_direct(hf, ht),
    );
    match path {
        Via::Direct => {
            assert!(
                direct >= BULK as u64,
                "direct path: only {direct} B arrived straight from the sender"
            );
            assert!(
                relayed < MIB as u64,
                "direct path: {relayed} B arrived through the beacon"
            );
        }
        Via::Relay => {
            assert!(
                relayed >= BULK as u64,
                "relayed path: only {relayed} B arrived through the beacon"
            );
            assert!(
                direct < MIB as u64,
                "relayed path: {direct} B arrived straight from the sender"
            );
        }
    }
    check_peer_path(lab, (hf, from), (ht, to), path);
    check_peer_path(lab, (ht, to), (hf, from), path);

    // Data exchange and pub/sub need mutual trust.
    trust(from, to);
    let file = lab
        .dir
        .path()
        .join(format!("file-{}-{}.bin", from.name, to.name));
    std::fs::write(&file, natlab_support::pattern(3 * MIB + 17, 77)).unwrap();
    send_file(from, to, &file);
    pubsub(to, from);

    PairReport { first, bulk }
}

/// `peers --json` on `n` shows `peer` on the expected path; a public
/// peer's direct endpoint is its own address.
fn check_peer_path(lab: &Lab, (_, n): (usize, &Node), (hp, peer): (usize, &Node), path: Via) {
    let e = peer_entry(n, peer.node_id)
        .unwrap_or_else(|| panic!("{} has no peer entry for {}", n.name, peer.name));
    // A relayed peer may be in a racing window (a background probe or
    // a refresh) when asked: racing sends data via the relay only and
    // probes the direct path with small frames (spec/beacon.md 8.3), so
    // both mean "relayed"; the wire counters above prove where the bytes
    // went.
    let ok = match path {
        Via::Direct => e["path"] == "direct",
        Via::Relay => e["path"] == "relay" || e["path"] == "racing",
    };
    assert!(
        ok,
        "{}'s path to {} ({path:?} expected): {e}",
        n.name, peer.name
    );
    if path == Via::Direct && lab.nats[hp - 1] == Nat::None {
        assert_eq!(
            e["endpoint"],
            format!("10.200.{hp}.2:{}", natlab_support::TUNNEL_PORT),
            "{}'s peer entry for the public {}: {e}",
            n.name,
            peer.name
        );
    }
}

/// `info`'s `nat.public_endpoint` of the daemon in home `h` is what the
/// beacon really saw through that home's router: its own address without
/// NAT, the router's address and the same port through a stable NAT, the
/// router's address through a symmetric one.
fn check_public_endpoint(lab: &Lab, (h, n): (usize, &Node)) {
    let port = natlab_support::TUNNEL_PORT;
    let mut seen = String::new();
    let ok = pilotctl_support::within(Duration::from_secs(30), || {
        let info = n.client().info().expect("info");
        seen = info["nat"]["public_endpoint"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        !seen.is_empty()
    });
    assert!(
        ok.is_some(),
        "{} never observed its public endpoint",
        n.name
    );
    match lab.nats[h - 1] {
        Nat::None => assert_eq!(seen, format!("10.200.{h}.2:{port}")),
        Nat::Stable => assert_eq!(seen, format!("198.18.{h}.2:{port}")),
        Nat::Symmetric => assert!(seen.starts_with(&format!("198.18.{h}.2:")), "{seen}"),
    }
    // Mapping detection: the beacon and its observer address (another
    // port) see the same endpoint unless the NAT picks a port per flow.
    let want = match lab.nats[h - 1] {
        Nat::None | Nat::Stable => "endpoint-independent",
        Nat::Symmetric => "destination-dependent",
    };
    let mut nat = serde_json::Value::Null;
    let ok = pilotctl_support::within(Duration::from_secs(30), || {
        nat = n.client().info().expect("info")["nat"].clone();
        nat["mapping_behaviour"] == want
    });
    assert!(ok.is_some(), "{}: mapping {nat}, expected {want}", n.name);
}

/// `sub` subscribes to topic `natlab` at `broker`'s event stream from its
/// own home, and an event published there (from `sub`'s home too, so it
/// crosses the boundary twice) reaches it.
fn pubsub(broker: &Node, sub: &Node) {
    let target = broker.node_id.to_string();
    let watcher = sub.spawn(&[
        "subscribe",
        &target,
        "natlab",
        "--count",
        "1",
        "--timeout",
        "90s",
    ]);
    // The subscription may not be in place yet: publish until it has seen
    // one (each publish returns once the broker passed the event on).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut watcher = Some(watcher);
    loop {
        sub.ok(&["publish", &target, "natlab", "--data", "over the NAT"]);
        let done = watcher
            .as_mut()
            .is_some_and(|w| matches!(w.0.try_wait(), Ok(Some(_))));
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let got = finish(watcher.take().unwrap());
    assert_eq!(got["events"][0]["topic"], "natlab", "{got}");
    assert_eq!(got["events"][0]["data"], "over the NAT", "{got}");
}

/// Builds `nats`, starts a daemon per home and runs [`exercise`] from home
/// 2 to home 1 expecting `path`.
fn pair(test: &str, nats: [Nat; 2], path: Via) -> Option<PairReport> {
    let mut lab = lab(test, &nats)?;
    let d = daemons(&mut lab);
    Some(exercise(&lab, (2, &d[1].1), (1, &d[0].1), path))
}

#[test]
fn public_homes_talk_direct() {
    pair(
        "public_homes_talk_direct",
        [Nat::None, Nat::None],
        Via::Direct,
    );
}

/// Homes behind either NAT reach a public node (home 1) directly: their
/// own packets open the mapping the replies come back through.
#[test]
fn natted_homes_reach_a_public_node_directly() {
    let Some(mut lab) = lab(
        "natted_homes_reach_a_public_node_directly",
        &[Nat::None, Nat::Stable, Nat::Symmetric],
    ) else {
        return;
    };
    let d = daemons(&mut lab);
    let public = (1, &d[0].1);
    exercise(&lab, (2, &d[1].1), public, Via::Direct);
    exercise(&lab, (3, &d[2].1), public, Via::Direct);
}

#[test]
fn stable_nat_pair_goes_direct() {
    pair(
        "stable_nat_pair_goes_direct",
        [Nat::Stable, Nat::Stable],
        Via::Direct,
    );
}

#[test]
fn symmetric_nat_pair_goes_relay() {
    pair(
        "symmetric_nat_pair_goes_relay",
        [Nat::Symmetric, Nat::Symmetric],
        Via::Relay,
    );
}

/// A stable NAT facing a symmetric one: the symmetric side's packets to
/// the stable side come from a port nobody announced, and both routers
/// filter by address and port, so no punch can work: relay.
#[test]
fn stable_and_symmetric_pair_goes_relay() {
    pair(
        "stable_and_symmetric_pair_goes_relay",
        [Nat::Stable, Nat::Symmetric],
        Via::Relay,
    );
}

/// Keepalives hold NAT bindings open: the routers forget a UDP mapping
/// after 4 idle seconds (`lab_nats_behave_as_declared` shows an idle one
/// dies), the daemons send NAT keepalives every second, heartbeats only
/// every 30 s. A direct pair left idle for 12 s still talks directly and
/// its path never changed (a lost binding would have sent it back to
/// racing through the beacon).
#[test]
fn keepalives_hold_nat_bindings() {
    let mut lab = match Lab::up_with(&[Nat::Stable, Nat::Stable], Some(4)) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIP keepalives_hold_nat_bindings: network namespaces unavailable ({why})");
            return;
        }
    };
    lab.start_rendezvous();
    let args = ["--public", "--keepalive", "30s", "--nat-keepalive", "1s"];
    let a = lab.daemon(1, "a", &args);
    let b = lab.daemon(2, "b", &args);
    let addr_a = address(&a);
    first_byte(&b, addr_a);
    transfer(&b, &a, addr_a, 5000, MIB);
    let direct_now =
        |n: &Node, peer: &Node| peer_entry(n, peer.node_id).is_some_and(|e| e["path"] == "direct");
    pilotctl_support::eventually("a direct path both ways", || {
        direct_now(&b, &a) && direct_now(&a, &b)
    });
    let changes =
        |n: &Node, peer: &Node| peer_entry(n, peer.node_id).unwrap()["path_changes"].clone();
    let before = (changes(&b, &a), changes(&a, &b));
    assert!(
        before.0.is_u64(),
        "path_changes in peers --json: {:?}",
        peer_entry(&b, a.node_id)
    );
    let counted = lab.counters();
    std::thread::sleep(Duration::from_secs(12));
    let t = transfer(&b, &a, addr_a, 5001, MIB);
    let moved = lab.counters().since(&counted);
    eprintln!(
        "after 12 s idle: 1 MiB in {:?}; into a: {} B direct, {} B from the beacon",
        t.elapsed,
        moved.delivered_direct(1, 2),
        moved.delivered_relayed(1)
    );
    assert!(moved.delivered_direct(1, 2) >= MIB as u64);
    assert_eq!(
        (changes(&b, &a), changes(&a, &b)),
        before,
        "the path changed while idle"
    );
    assert!(direct_now(&b, &a) && direct_now(&a, &b));
}

/// First contact and throughput, direct (two stable NATs) against relayed
/// (two symmetric NATs), one after the other; and what the reference's
/// documented timers would give (`registry.md` §2.3: the SYN goes direct
/// at 0, 1 and 3 s and to the relay when the third timer fires, 7 s after
/// the first SYN).
#[test]
#[ignore = "measurement: cargo test --release -p pilot-driver-mio --test nat_netns -- --ignored measure --nocapture"]
fn measure_direct_vs_relay() {
    let Some(direct) = pair("measure", [Nat::Stable, Nat::Stable], Via::Direct) else {
        return;
    };
    let relay = pair("measure", [Nat::Symmetric, Nat::Symmetric], Via::Relay).unwrap();
    // The reference (registry.md §2.3) sends the first SYN direct and
    // retransmits it at 1 and 3 s; when the third timer fires, 7 s after
    // the first SYN, it marks the peer relay and starts over through the
    // beacon: its first relayed byte comes 7 s plus the relayed exchanges
    // (key exchange, SYN, data) after the first attempt. Our relayed first
    // byte is those same exchanges, raced from the start.
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let reference_relay = Duration::from_secs(7) + relay.first.first_byte;
    eprintln!("== NAT lab measurement (real daemons in namespaces, 16 MiB stream)");
    eprintln!(
        "first byte: direct {:.1} ms, relay {:.1} ms; the reference's relay ≈ {:.0} ms \
         (7 s of direct SYNs first, then the same relayed exchanges)",
        ms(direct.first.first_byte),
        ms(relay.first.first_byte),
        ms(reference_relay)
    );
    eprintln!(
        "throughput: direct {:.1} MiB/s, relay {:.1} MiB/s (relay/direct = {:.3})",
        direct.bulk.mib_per_s(),
        relay.bulk.mib_per_s(),
        relay.bulk.mib_per_s() / direct.bulk.mib_per_s()
    );
}

// ---------------------------------------------------------------------
// The lab itself, with plain UDP sockets
// ---------------------------------------------------------------------

/// A UDP socket bound to `addr` inside namespace `ns` (a socket stays in
/// the namespace it was made in, so the calling thread never moves).
fn socket_in(ns: &str, addr: &str) -> UdpSocket {
    let ns = ns.to_owned();
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        let f = File::open(Path::new("/var/run/netns").join(&ns)).expect("open netns");
        // SAFETY: a valid namespace fd; only this short-lived thread moves.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        let s = UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    })
    .join()
    .unwrap()
}

/// Everything `s` receives within `wait`, with its source.
fn drain(s: &UdpSocket, wait: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
    }
    got
}

/// The endpoint `probe` (a socket in the public namespace) sees for `s`.
fn observed(s: &UdpSocket, probe: &UdpSocket) -> SocketAddr {
    let to = probe.local_addr().unwrap();
    for _ in 0..10 {
        s.send_to(b"where am I", to).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((_, from)) = probe.recv_from(&mut buf) {
            return from;
        }
    }
    panic!("probe {to} got nothing");
}

#[test]
fn lab_nats_behave_as_declared() {
    let nats = [Nat::Stable, Nat::Symmetric, Nat::Stable, Nat::Symmetric];
    let lab = match Lab::up_with(&nats, Some(UDP_TIMEOUT)) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIP lab_nats_behave_as_declared: network namespaces unavailable ({why})");
            return;
        }
    };
    let pub_ns = lab.ns("pub");
    let p1 = socket_in(&pub_ns, "198.18.0.1:9101");
    let p2 = socket_in(&pub_ns, "198.18.0.1:9102");
    let homes: Vec<UdpSocket> = (1..=4)
        .map(|i| socket_in(&lab.ns(&format!("h{i}")), "0.0.0.0:4000"))
        .collect();
    let seen: Vec<(SocketAddr, SocketAddr)> = homes
        .iter()
        .map(|h| (observed(h, &p1), observed(h, &p2)))
        .collect();
    for (i, (nat, (o1, o2))) in nats.iter().zip(&seen).enumerate() {
        let wan = format!("198.18.{}.2", i + 1);
        assert_eq!(o1.ip().to_string(), wan, "home {} is masqueraded", i + 1);
        assert_eq!(o2.ip().to_string(), wan);
        match nat {
            Nat::Stable => {
                assert_eq!(o1.port(), 4000, "stable NAT keeps the port");
                assert_eq!(o1, o2, "stable NAT: one mapping for all destinations");
            }
            Nat::Symmetric => {
                assert_ne!(o1, o2, "symmetric NAT: a mapping per destination")
            }
            Nat::None => unreachable!(),
        }
    }
    // Filtering: a packet from an endpoint the home never sent to is
    // dropped, even on a live mapping.
    let stranger = socket_in(&pub_ns, "198.18.0.1:9103");
    for (i, (o1, _)) in seen.iter().enumerate() {
        stranger.send_to(b"unsolicited", o1).unwrap();
        let got = drain(&homes[i], Duration::from_millis(400));
        assert!(
            !got.iter().any(|(d, _)| d == b"unsolicited"),
            "home {} accepted an unsolicited packet",
            i + 1
        );
    }
    // Hole punching with endpoints learned from the probe: both sides send
    // to each other's observed endpoint; through two stable NATs this
    // opens a path, through two symmetric NATs it cannot.
    let punch = |x: usize, y: usize| -> (bool, bool) {
        for _ in 0..5 {
            homes[x].send_to(b"punch", seen[y].0).unwrap();
            homes[y].send_to(b"punch", seen[x].0).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        let hx = drain(&homes[x], Duration::from_millis(600));
        let hy = drain(&homes[y], Duration::from_millis(600));
        (
            hx.iter().any(|(d, _)| d == b"punch"),
            hy.iter().any(|(d, _)| d == b"punch"),
        )
    };
    assert_eq!(punch(0, 2), (true, true), "stable + stable: punched");
    assert_eq!(
        punch(1, 3),
        (false, false),
        "symmetric + symmetric: no path"
    );

    // Binding timeout: a mapping kept busy (a packet every second) still
    // lets replies in after the timeout; one left idle does not.
    let idle_for = Duration::from_secs(u64::from(UDP_TIMEOUT) + 2);
    let start = Instant::now();
    while start.elapsed() < idle_for {
        homes[0]
            .send_to(b"keepalive", p1.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    drain(&p1, Duration::from_millis(300));
    p1.send_to(b"late reply", seen[0].0).unwrap();
    p1.send_to(b"late reply", seen[2].0).unwrap();
    let kept = drain(&homes[0], Duration::from_millis(500));
    let idle = drain(&homes[2], Duration::from_millis(500));
    assert!(
        kept.iter().any(|(d, _)| d == b"late reply"),
        "kept-alive mapping lost"
    );
    assert!(
        !idle.iter().any(|(d, _)| d == b"late reply"),
        "idle mapping outlived the timeout"
    );
}

/// UDP mapping timeout of the self-test's routers (seconds).
const UDP_TIMEOUT: u32 = 3;
