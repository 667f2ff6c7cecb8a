//! The stream transport on lossy, reordering, duplicating and dying paths
//! (moved here from the private `Pipe` of `proto/src/stream/conn.rs`): two
//! connection ends in the simulator ([`pilot_sim::pair`]), faults from the
//! engine's rules. Seed counts can be raised with the environment
//! variables named in each test.

use std::time::Duration;

use pilot_proto::stream::conn::{ConnConfig, Event, ResetReason};
use pilot_proto::stream::recv_buf::RecvConfig;
use pilot_proto::time::Instant;
use pilot_sim::pair::{Pair, PathSpec, Reader};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data(total: usize) -> Vec<u8> {
    (0..total).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// Runs a bulk transfer until both ends closed (or only the dialer, when
/// the path dies); returns the pair and the end time.
fn bulk(
    seed: u64,
    path: PathSpec,
    total: usize,
    reader: Reader,
    b_cfg: ConnConfig,
) -> (Pair, Instant) {
    let dead = path.dead_after.is_some();
    let mut p = Pair::bulk(seed, path, data(total), b_cfg, reader).unwrap();
    let r = p.run(Duration::from_secs(3600), |a, b| {
        a.is_closed() && (dead || b.conn().is_none() || b.is_closed())
    });
    r.engine.unwrap();
    (p, r.end)
}

#[test]
fn bulk_transfer_survives_25_percent_loss_both_ways() {
    let from = env("LOSSY_FROM", 0);
    for seed in from..from + env("LOSSY_SEEDS", 8) {
        let total = 200_000;
        let loss = if seed % 2 == 0 { 25.0 } else { 20.0 };
        let (p, end) = bulk(
            seed,
            PathSpec::lossy(loss),
            total,
            Reader::Greedy,
            ConnConfig::default(),
        );
        let (a, b) = (p.a().unwrap(), p.b().unwrap());
        if a.events.contains(&Event::Reset(ResetReason::DialTimeout)) {
            // Every SYN or its answer lost: the reference's dial budget.
            assert!(b.received.is_empty());
            continue;
        }
        assert_eq!(
            a.events.last(),
            Some(&Event::Closed),
            "seed {seed}: {:?}",
            a.events
        );
        assert!(
            b.received == data(total),
            "seed {seed}: {} bytes",
            b.received.len()
        );
        let st = a.conn().unwrap().stats();
        assert!(st.retransmissions > 0);
        assert!(st.sack_blocks_received > 0);
        assert!(end < t(600_000), "seed {seed}: took {end:?}");
    }
}

#[test]
fn clean_transfer_is_exact_and_closes() {
    let total = 300_000;
    let (p, _) = bulk(
        7,
        PathSpec::lossy(0.0),
        total,
        Reader::Greedy,
        ConnConfig::default(),
    );
    let (a, b) = (p.a().unwrap(), p.b().unwrap());
    assert!(b.received == data(total));
    let st = a.conn().unwrap().stats();
    assert_eq!(st.retransmissions, 0);
    assert_eq!(st.bytes_sent, total as u64);
    assert!(a.is_closed() && b.is_closed());
}

#[test]
fn reordering_and_duplication_keep_the_stream_exact() {
    for seed in 0..env("CHAOS_SEEDS", 6) {
        let total = 150_000;
        let path = PathSpec {
            loss: 0.05,
            jitter: Duration::from_millis(15),
            dup: 0.10,
            ..PathSpec::default()
        };
        let (p, _) = bulk(seed, path, total, Reader::Greedy, ConnConfig::default());
        let (a, b) = (p.a().unwrap(), p.b().unwrap());
        assert!(
            b.received == data(total),
            "seed {seed}: {} bytes",
            b.received.len()
        );
        assert_eq!(
            a.events.last(),
            Some(&Event::Closed),
            "seed {seed}: {:?}",
            a.events
        );
    }
}

#[test]
fn slow_reader_with_tiny_window_and_loss_gets_everything() {
    for seed in 0..env("SLOW_SEEDS", 4) {
        let total = 60_000;
        let path = PathSpec {
            loss: 0.10,
            jitter: Duration::from_millis(5),
            dup: 0.05,
            ..PathSpec::default()
        };
        let reader = Reader::Slow {
            bite: 700,
            every: Duration::from_millis(7),
            on: Duration::from_millis(100),
            period: Duration::from_millis(300),
        };
        let tiny = ConnConfig {
            recv: RecvConfig {
                queue_segments: 8,
                ooo_segments: 8,
            },
            ..ConnConfig::default()
        };
        let (p, end) = bulk(seed, path, total, reader, tiny);
        let (a, b) = (p.a().unwrap(), p.b().unwrap());
        assert_eq!(
            a.events.last(),
            Some(&Event::Closed),
            "seed {seed}: {:?}",
            a.events
        );
        assert!(
            b.received == data(total),
            "seed {seed}: {} bytes at {end:?}",
            b.received.len()
        );
    }
}

#[test]
fn bidirectional_transfer_over_lossy_path() {
    for seed in 0..env("BIDI_SEEDS", 4) {
        let total = 120_000;
        let expect: Vec<u8> = (0..total).map(|i| (i * 13 + i / 97) as u8).collect();
        let path = PathSpec {
            latency: Duration::from_millis(15),
            ..PathSpec::lossy(15.0)
        };
        let mut p = Pair::exchange(seed, path, expect.clone()).unwrap();
        let r = p.run(Duration::from_secs(3600), |a, b| {
            a.is_closed() && b.is_closed()
        });
        r.engine.unwrap();
        let (a, b) = (p.a().unwrap(), p.b().unwrap());
        assert!(
            a.received == expect && b.received == expect,
            "seed {seed}: {} / {} bytes",
            a.received.len(),
            b.received.len()
        );
    }
}

#[test]
fn dead_peer_is_detected_promptly() {
    let path = PathSpec {
        dead_after: Some(t(500)),
        ..PathSpec::lossy(0.0)
    };
    let (p, end) = bulk(1, path, 5_000_000, Reader::Greedy, ConnConfig::default());
    let a = p.a().unwrap();
    assert!(a.is_closed());
    assert!(
        a.events.contains(&Event::Reset(ResetReason::TimedOut)),
        "{:?}",
        a.events
    );
    let secs = end.as_nanos() / 1_000_000_000;
    assert!((30..=40).contains(&secs), "detected after {secs} s");
}

#[test]
fn dead_peer_on_a_lossy_path_is_detected_promptly() {
    for seed in 0..6 {
        let path = PathSpec {
            dead_after: Some(t(3_000)),
            ..PathSpec::lossy(20.0)
        };
        let (p, end) = bulk(seed, path, 5_000_000, Reader::Greedy, ConnConfig::default());
        let a = p.a().unwrap();
        assert!(
            a.events.contains(&Event::Reset(ResetReason::TimedOut)),
            "seed {seed}: {:?}",
            a.events
        );
        let secs = end.as_nanos() / 1_000_000_000;
        assert!(
            (30..=45).contains(&secs),
            "seed {seed}: detected at {secs} s"
        );
    }
}

#[test]
fn pair_runs_are_deterministic() {
    let path = PathSpec {
        loss: 0.05,
        jitter: Duration::from_millis(5),
        dup: 0.02,
        ..PathSpec::default()
    };
    let hash = |seed| {
        let mut p = Pair::bulk(
            seed,
            path,
            data(50_000),
            ConnConfig::default(),
            Reader::Greedy,
        )
        .unwrap();
        p.run(Duration::from_secs(600), |a, b| {
            a.is_closed() && b.is_closed()
        });
        p.sim.trace_hash()
    };
    assert_eq!(hash(3), hash(3));
    assert_ne!(hash(3), hash(4));
}
