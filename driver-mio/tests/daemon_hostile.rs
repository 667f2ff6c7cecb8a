//! Real `pilot-daemon` processes on loopback under attack from a forger in
//! the test process that knows only their UDP endpoints and node IDs
//! (issue 20, `spec/crypto.md` §12):
//! * forged PILS claiming the trusted peer, at 200/s, leave echo pings
//!   between two daemons fast, the session in place, and are counted;
//! * 200 000 forged key exchanges (random sender IDs, PILK and signed
//!   PILA under a key nobody vouches for) and 20 000 garbage datagrams
//!   leave the peer table with the authenticated peer only and the
//!   resident memory under [`RSS_BOUND_KIB`];
//! * during a flood, the first ping of a trusted peer the daemon chose
//!   to contact succeeds well inside its deadline.

mod common;
mod daemon_common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Rv;
use daemon_common::{Daemon, PUBLIC, echo_once};
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::kx::{PILA_LEN, PILK_LEN, build_pila, build_pilk};
use pilot_proto::crypto::provider::RustCrypto;
use serde_json::Value;

/// Peak resident memory a daemon may reach through these floods. An idle
/// daemon sits near 10 MiB; before the fix 200 000 forged key exchanges
/// took one to 121 MiB.
pub const RSS_BOUND_KIB: u64 = 48 * 1024;

fn rv(dir: &std::path::Path) -> Rv {
    Rv::start(&dir.join("rv.redb"), &[])
}

/// A tiny deterministic generator (the forger needs no real randomness).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A PILS frame with valid framing and a random (bad) tag, claiming `sender`.
fn forged_pils(rng: &mut XorShift, sender: u32) -> Vec<u8> {
    let mut f = vec![0u8; 36 + (rng.next() % 200) as usize];
    rng.fill(&mut f);
    f[..4].copy_from_slice(b"PILS");
    f[4..8].copy_from_slice(&sender.to_be_bytes());
    f
}

/// Signed PILAs under the forger's own identity with random sender IDs.
fn forged_pilas(rng: &mut XorShift, n: usize) -> Vec<Vec<u8>> {
    let mut seed = [0u8; 32];
    rng.fill(&mut seed);
    let id = Identity::from_seed(&RustCrypto, seed);
    rng.fill(&mut seed);
    let tk = TunnelKey::from_secret(&RustCrypto, seed);
    (0..n)
        .map(|_| {
            let mut f = vec![0u8; PILA_LEN];
            build_pila(&RustCrypto, rng.next() as u32 | 1, &tk, &id, &mut f).unwrap();
            f
        })
        .collect()
}

fn forged_pilk(rng: &mut XorShift) -> Vec<u8> {
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    let mut f = vec![0u8; PILK_LEN];
    build_pilk(
        rng.next() as u32,
        &TunnelKey::from_secret(&RustCrypto, secret),
        &mut f,
    )
    .unwrap();
    f
}

fn garbage(rng: &mut XorShift) -> Vec<u8> {
    let mut f = vec![0u8; 1 + (rng.next() % 300) as usize];
    rng.fill(&mut f);
    // Half of it wears a real magic, so it reaches the frame decoders.
    let magics: [&[u8; 4]; 4] = [b"PILK", b"PILA", b"PILS", b"PILT"];
    if f.len() >= 4 && rng.next() % 2 == 0 {
        f[..4].copy_from_slice(magics[(rng.next() % 4) as usize]);
    }
    f
}

fn info(d: &Daemon) -> Value {
    d.client().info().expect("info")
}

fn drops(info: &Value, reason: &str) -> u64 {
    info["auth_drops"][reason].as_u64().unwrap_or(0)
}

/// Times `n` echo pings from `from` to `to`, `gap` apart.
fn pings(from: &Daemon, to: &Daemon, n: usize, gap: Duration) -> Vec<Duration> {
    let c = from.client();
    (0..n)
        .map(|i| {
            let msg = format!("ping-{i}");
            let t = Instant::now();
            assert_eq!(echo_once(&c, to.address, msg.as_bytes()), msg.as_bytes());
            let d = t.elapsed();
            std::thread::sleep(gap);
            d
        })
        .collect()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// Runs `f` in a thread, repeatedly, until the returned flag is set.
fn spawn_forger(
    mut f: impl FnMut(&UdpSocket) + Send + 'static,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("forger socket");
        while !s.load(Ordering::Relaxed) {
            f(&sock);
        }
    });
    (stop, h)
}

#[test]
fn forged_frames_at_200_per_second_leave_pings_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let b = Daemon::start(&rv, &tmp.path().join("b"), PUBLIC);
    // Warm up: lookup, key exchange, first stream.
    pings(&a, &b, 3, Duration::ZERO);
    // Each ping opens a stream: stay under the peer's per-source SYN
    // limit (10/s, transport.md §11), which is not what is tested here.
    let gap = Duration::from_millis(110);
    let quiet = pings(&a, &b, 20, gap);
    let target: SocketAddr = a.udp;
    let b_node = b.node_id;
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let (stop, h) = spawn_forger(move |sock| {
        // 200 frames/s claiming to come from B, each with a bad tag; paced
        // by the clock, so an oversleeping thread catches up.
        let due = (started.elapsed().as_millis() / 5) as u64 + 1;
        while sent2.load(Ordering::Relaxed) < due {
            let f = forged_pils(&mut rng, b_node);
            let _ = sock.send_to(&f, target);
            sent2.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(5));
    });
    // Longer than every age threshold the reference reacts to (3 s).
    let t0 = Instant::now();
    let mut attacked = Vec::new();
    while t0.elapsed() < Duration::from_secs(6) {
        attacked.extend(pings(&a, &b, 10, gap));
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    let i = info(&a);
    eprintln!(
        "pings: quiet median {:?} max {:?}; under 200 forged/s median {:?} max {:?} ({} pings, {sent} forged frames); drops {}",
        median(&quiet),
        quiet.iter().max().unwrap(),
        median(&attacked),
        attacked.iter().max().unwrap(),
        attacked.len(),
        i["auth_drops"]
    );
    assert!(sent >= 1000, "the forger ran at 200/s ({sent} frames)");
    assert!(
        median(&attacked) < Duration::from_millis(10),
        "median ping under attack {:?}",
        median(&attacked)
    );
    // Before the fix pings took seconds (session dropped and re-keyed);
    // allow a scheduling hiccup on a loaded machine, not a rekey.
    let slow = attacked
        .iter()
        .filter(|d| **d >= Duration::from_millis(10))
        .count();
    assert!(
        *attacked.iter().max().unwrap() < Duration::from_millis(500) && slow * 10 <= attacked.len(),
        "{slow} of {} pings took 10 ms or more, slowest {:?}",
        attacked.len(),
        attacked.iter().max().unwrap()
    );
    // Every forged frame was counted as a bad tag, none changed anything.
    assert!(
        drops(&i, "pils_bad_tag") * 10 >= sent * 9,
        "{} of {sent} forged frames counted",
        drops(&i, "pils_bad_tag")
    );
    let peers = i["peer_list"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{i}");
    assert_eq!(peers[0]["node_id"], b.node_id);
    assert_eq!(peers[0]["encrypted"], true);
}

#[test]
fn forged_key_exchanges_and_garbage_create_no_peers_and_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let b = Daemon::start(&rv, &tmp.path().join("b"), PUBLIC);
    pings(&a, &b, 2, Duration::ZERO);
    let rss_before = a.peak_rss_kib();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let pilas = forged_pilas(&mut rng, 512);
    let t0 = Instant::now();
    let mut sent = 0u64;
    for i in 0..200_000usize {
        let f = match i % 4 {
            0 | 1 => forged_pilk(&mut rng),
            2 => pilas[i / 4 % pilas.len()].clone(),
            _ => {
                // PILA-shaped with a bad signature and a random ID.
                let mut f = vec![0u8; PILA_LEN];
                rng.fill(&mut f);
                f[..4].copy_from_slice(b"PILA");
                f
            }
        };
        if sock.send_to(&f, a.udp).is_ok() {
            sent += 1;
        }
        if i % 2000 == 1999 {
            // Let the daemon drain its socket now and then (a flood that
            // only overflows the kernel buffer tests the kernel).
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for _ in 0..20_000 {
        if sock.send_to(&garbage(&mut rng), a.udp).is_ok() {
            sent += 1;
        }
    }
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let i = info(&a);
    let rss = a.peak_rss_kib();
    let total: u64 = i["auth_drops"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    eprintln!(
        "{sent} forged datagrams in {took:?}; peak RSS before {rss_before:?} KiB, after {rss:?} KiB; peers {}; half-open {}; counted drops {total}: {}",
        i["peers"], i["half_open"], i["auth_drops"]
    );
    let peers = i["peer_list"].as_array().unwrap();
    assert_eq!(
        peers.len(),
        1,
        "only the authenticated peer: {}",
        i["peer_list"]
    );
    assert_eq!(peers[0]["node_id"], b.node_id);
    assert_eq!(peers[0]["authenticated"], true);
    assert!(i["half_open"].as_u64().unwrap() <= 256);
    assert!(
        total >= 100_000,
        "most forged frames reached the daemon and were counted ({total})"
    );
    if let Some(kib) = rss {
        assert!(
            kib < RSS_BOUND_KIB,
            "peak RSS {kib} KiB over the bound {RSS_BOUND_KIB}"
        );
    }
    // And the pair still works.
    pings(&a, &b, 2, Duration::ZERO);
}

#[test]
fn first_ping_of_a_trusted_peer_during_a_flood_is_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = rv(tmp.path());
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let c = Daemon::start(&rv, &tmp.path().join("c"), PUBLIC);
    let target = a.udp;
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    let mut rng = XorShift(0x0bad_cafe_f00d_1234);
    let pilas = forged_pilas(&mut rng, 256);
    let c_node = c.node_id;
    let mut k = 0usize;
    let (stop, h) = spawn_forger(move |sock| {
        // As fast as one thread can: every kind of forged frame.
        for _ in 0..64 {
            k += 1;
            let f = match k % 5 {
                0 => forged_pils(&mut rng, c_node),
                1 => {
                    let who = rng.next() as u32;
                    forged_pils(&mut rng, who)
                }
                2 => forged_pilk(&mut rng),
                3 => pilas[k % pilas.len()].clone(),
                _ => garbage(&mut rng),
            };
            let _ = sock.send_to(&f, target);
        }
        sent2.fetch_add(64, Ordering::Relaxed);
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let first = echo_once(&a.client(), c.address, b"first");
    let first_rtt = t.elapsed();
    let rest = pings(&a, &c, 10, Duration::from_millis(110));
    let flood_for = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    let i = info(&a);
    eprintln!(
        "flood of {sent} datagrams (~{:.0}/s): first ping of a new trusted peer {first_rtt:?}, then median {:?}; drops {}",
        sent as f64 / (flood_for.as_secs_f64() + 0.5),
        median(&rest),
        i["auth_drops"]
    );
    assert_eq!(first, b"first");
    // The reference's ping deadline is 10 s; before the fix this took
    // 7.2 s. A lookup, a key exchange and a stream open must fit in 2 s
    // even on a loaded machine.
    assert!(
        first_rtt < Duration::from_secs(2),
        "first ping took {first_rtt:?}"
    );
    assert!(median(&rest) < Duration::from_millis(50), "{rest:?}");
}
