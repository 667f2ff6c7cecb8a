//! Throughput of one Pilot stream between two embedded nodes on loopback,
//! next to kernel TCP on loopback measured in the same run.
//!
//! `cargo bench -p pilot-driver-tokio --bench throughput` (size in MiB via
//! `PILOT_BENCH_MIB`, default 64; rounds via `PILOT_BENCH_ROUNDS`, default 3).

use std::time::{Duration, Instant};

use pilot_driver_tokio::{Addr, Node, NodeConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CHUNK: usize = 64 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `total` bytes on `w`, shuts down, and waits for the reader's count.
async fn transfer<W, R>(mut w: W, mut r: R, total: usize) -> Duration
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    });
    let chunk = vec![0x5au8; CHUNK];
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK);
        w.write_all(&chunk[..n]).await.expect("write");
        left -= n;
    }
    w.shutdown().await.expect("shutdown");
    let got = reader.await.expect("reader");
    let elapsed = start.elapsed();
    assert_eq!(got, total, "short transfer");
    drop(w);
    elapsed
}

async fn pilot_once(total: usize) -> Duration {
    let a = Node::start(NodeConfig::new(Addr::new(1, 1)))
        .await
        .expect("node a");
    let b = Node::start(NodeConfig::new(Addr::new(1, 2)))
        .await
        .expect("node b");
    a.add_peer(b.addr(), b.local_udp_addr(), Some(b.identity_key()))
        .expect("peer");
    b.add_peer(a.addr(), a.local_udp_addr(), Some(a.identity_key()))
        .expect("peer");
    let listener = b.listen(1000).expect("listen");
    let (client, server) = tokio::join!(a.connect(b.addr(), 1000), listener.accept());
    transfer(client.expect("connect"), server.expect("accept"), total).await
}

async fn tcp_once(total: usize) -> Duration {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
    transfer(client.expect("connect"), server.expect("accept").0, total).await
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn main() {
    let mib = env_usize("PILOT_BENCH_MIB", 64);
    let rounds = env_usize("PILOT_BENCH_ROUNDS", 3).max(1);
    let total = mib << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut best_pilot = Duration::MAX;
        let mut best_tcp = Duration::MAX;
        for round in 1..=rounds {
            let p = pilot_once(total).await;
            let t = tcp_once(total).await;
            println!(
                "round {round}: pilot {:8.1} MiB/s   kernel tcp {:8.1} MiB/s",
                mib_s(total, p),
                mib_s(total, t)
            );
            best_pilot = best_pilot.min(p);
            best_tcp = best_tcp.min(t);
        }
        let (p, t) = (mib_s(total, best_pilot), mib_s(total, best_tcp));
        println!("{mib} MiB over one stream on loopback, best of {rounds}:");
        println!("  pilot (embedded nodes, encrypted) {p:8.1} MiB/s");
        println!("  kernel tcp                        {t:8.1} MiB/s");
        println!("  ratio pilot/tcp                   {:8.3}", p / t);
    });
}
