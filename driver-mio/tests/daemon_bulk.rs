//! Bulk and concurrency through the echo service of a second daemon:
//! 64 MiB out and back with equal SHA-256, and 50 concurrent connections.

mod common;
mod daemon_common;

use std::sync::Arc;

use common::{Rv, STEP};
use daemon_common::{BULK, Daemon, PUBLIC, pattern};
use sha2::{Digest, Sha256};

#[test]
fn sixty_four_mib_each_way_through_echo() {
    const LEN: usize = 64 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let rv = Rv::start(&tmp.path().join("rv.redb"), &[]);
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let b = Daemon::start(&rv, &tmp.path().join("b"), PUBLIC);
    let mut c = a.client();
    c.set_timeout(BULK);
    let c = Arc::new(c);
    let conn = c.dial(b.address, 7).expect("dial echo");
    let data = Arc::new(pattern(LEN, 0x5eed));
    let sent_hash = Sha256::digest(&data[..]);
    let t0 = std::time::Instant::now();
    let writer = {
        let (c, data) = (c.clone(), data.clone());
        std::thread::spawn(move || {
            for chunk in data.chunks(256 * 1024) {
                c.send(conn, chunk).expect("send");
            }
        })
    };
    let mut h = Sha256::new();
    let mut got = 0usize;
    while got < LEN {
        match c.recv(conn, BULK).expect("recv") {
            Some(chunk) => {
                h.update(&chunk);
                got += chunk.len();
            }
            None => panic!("echo stream ended after {got} bytes"),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    writer.join().unwrap();
    assert_eq!(got, LEN);
    assert_eq!(h.finalize(), sent_hash, "echoed bytes differ");
    eprintln!(
        "64 MiB out and back through echo in {secs:.2} s ({:.1} MiB/s each way)",
        64.0 / secs
    );
    // Bounded buffering: neither daemon held the stream (64 MiB went
    // through each in both directions).
    for (name, d) in [("a", &a), ("b", &b)] {
        if let Some(kib) = d.peak_rss_kib() {
            eprintln!("daemon {name} peak RSS {} MiB", kib / 1024);
            assert!(kib < 64 * 1024, "daemon {name} peak RSS {kib} KiB");
        }
    }
    let _ = c.close(conn);
}

#[test]
fn fifty_concurrent_connections_through_echo() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = Rv::start(&tmp.path().join("rv.redb"), &[]);
    let a = Daemon::start(&rv, &tmp.path().join("a"), PUBLIC);
    let b = Daemon::start(&rv, &tmp.path().join("b"), PUBLIC);
    let target = b.address;
    let socket = a.socket.clone();
    // Open all 50 first (10 IPC clients x 5 streams), then move data on
    // all of them at once.
    let workers: Vec<_> = (0..10u64)
        .map(|w| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let c =
                    Arc::new(pilot_driver_mio::ipc_client::IpcClient::connect(&socket).unwrap());
                let conns: Vec<u32> = (0..5).map(|_| c.dial(target, 7).expect("dial")).collect();
                let threads: Vec<_> = conns
                    .iter()
                    .enumerate()
                    .map(|(i, &conn)| {
                        let c = c.clone();
                        std::thread::spawn(move || {
                            let msg = pattern(200_000, w * 100 + i as u64 + 1);
                            c.send(conn, &msg).expect("send");
                            let mut back = vec![0u8; msg.len()];
                            let n = c.recv_exact_or_eof(conn, &mut back, BULK).expect("recv");
                            assert_eq!(n, msg.len(), "short echo on stream {w}/{i}");
                            assert!(back == msg, "echo differs on stream {w}/{i}");
                            c.close(conn).unwrap();
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
                conns.len()
            })
        })
        .collect();
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, 50);
    let _ = STEP;
}
