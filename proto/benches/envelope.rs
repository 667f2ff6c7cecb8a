//! Throughput of the PILS envelope: seal + open in place of 1152-byte and
//! 64 KiB packets through `pilot_proto::crypto::envelope`, next to bare
//! `aes-gcm` seal + open of the same buffers in the same run.
//!
//! Run with `cargo bench -p pilot-proto --bench envelope`. Prints MB/s
//! (plaintext bytes per second of seal+open pairs) and the ratio ours/bare.
//!
//! A benchmark measures wall time, so it may read the clock that
//! `proto/clippy.toml` forbids in the sans-IO core.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::{AeadInPlace, Aes256Gcm, KeyInit};
use pilot_proto::WireProfile;
use pilot_proto::crypto::envelope::{Envelope, PILS_HEADER_LEN, PILS_OVERHEAD};
use pilot_proto::crypto::provider::RustCrypto;

const KEY: [u8; 32] = [0x42; 32];
const ROUNDS: usize = 15;

fn ours(size: usize, iters: usize) -> Duration {
    let p = RustCrypto;
    let mut tx = Envelope::new(&p, WireProfile::Current, &KEY, [1, 2, 3, 4]);
    let mut rx = Envelope::new(&p, WireProfile::Current, &KEY, [5, 6, 7, 8]);
    let mut frame = vec![0u8; size + PILS_OVERHEAD];
    frame[PILS_HEADER_LEN..PILS_HEADER_LEN + size].fill(0xab);
    let start = Instant::now();
    for _ in 0..iters {
        let n = tx
            .seal_in_place(&p, 1, black_box(&mut frame), size)
            .unwrap();
        let (_, r) = rx.open_in_place(&p, black_box(&mut frame[..n])).unwrap();
        black_box(r);
    }
    let t = start.elapsed();
    assert!(
        frame[PILS_HEADER_LEN..PILS_HEADER_LEN + size]
            .iter()
            .all(|&b| b == 0xab)
    );
    t
}

fn bare(size: usize, iters: usize) -> Duration {
    let cipher = Aes256Gcm::new(&KEY.into());
    let mut buf = vec![0xabu8; size];
    let aad = 1u32.to_be_bytes();
    let mut nonce = [0u8; 12];
    let start = Instant::now();
    for i in 1..=iters as u64 {
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let tag = cipher
            .encrypt_in_place_detached((&nonce).into(), &aad, black_box(&mut buf))
            .unwrap();
        cipher
            .decrypt_in_place_detached((&nonce).into(), &aad, black_box(&mut buf), &tag)
            .unwrap();
    }
    let t = start.elapsed();
    assert!(buf.iter().all(|&b| b == 0xab));
    t
}

fn mbps(size: usize, iters: usize, t: Duration) -> f64 {
    (size * iters) as f64 / t.as_secs_f64() / 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    for (size, iters) in [(1152usize, 40_000usize), (64 * 1024, 800)] {
        // Warm up both paths, then keep the best of interleaved rounds so
        // that noise from other processes affects both sides alike.
        ours(size, iters / 10);
        bare(size, iters / 10);
        let mut best_ours = Duration::MAX;
        let mut best_bare = Duration::MAX;
        for _ in 0..ROUNDS {
            best_ours = best_ours.min(ours(size, iters));
            best_bare = best_bare.min(bare(size, iters));
        }
        let o = mbps(size, iters, best_ours);
        let b = mbps(size, iters, best_bare);
        println!(
            "seal+open {size:>6} B: ours {o:8.1} MB/s  bare aes-gcm {b:8.1} MB/s  ratio ours/bare {:.3}",
            o / b
        );
    }
}
