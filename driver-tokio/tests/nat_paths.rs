//! The embedded node's paths (`spec/beacon.md` §8): two embedded nodes,
//! each behind a userspace NAT shim, with the project's rendezvous
//! (registry and beacon) in-process on loopback. While the shims drop
//! every datagram that does not come from the beacon, the nodes can only
//! meet through the beacon's relay; a stream starts there. When the shims
//! open, the background probe moves the stream to the direct path without
//! a break, and both nodes report it.
//!
//! A shim is a small NAT: the node's beacon is one of the shim's sockets,
//! so the beacon observes (and the node advertises) the shim's public
//! socket; datagrams arriving there from anyone but the beacon reach the
//! node through one inner socket per outside source (so the node sees each
//! source at its own address), and only while the shim is open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pilot_driver_mio::rendezvous::server::{Server, ServerConfig};
use pilot_driver_tokio::{Error, Node, NodeConfig, PathKind, RegistryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep, timeout};

const LIMIT: Duration = Duration::from_secs(60);

fn start_rendezvous(dir: &std::path::Path) -> (SocketAddr, SocketAddr) {
    let mut cfg = ServerConfig::new(dir.join("registry.redb"));
    cfg.registry_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.beacon_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = Server::bind(cfg).unwrap();
    let reg = server.registry_addr().unwrap();
    let beacon = server.beacon_addr().unwrap();
    std::thread::spawn(move || server.run());
    (reg, beacon)
}

/// A userspace NAT in front of one node (see the module docs).
struct Shim {
    /// What the node is configured with as its beacon.
    beacon_alias: SocketAddr,
    /// The public socket (what the beacon observes).
    public: SocketAddr,
    open: Arc<AtomicBool>,
    /// Datagrams from outside dropped while closed.
    dropped: Arc<AtomicU64>,
    /// Datagrams from outside passed to the node.
    passed: Arc<AtomicU64>,
}

async fn shim(beacon: SocketAddr) -> Shim {
    let public = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let alias = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let s = Shim {
        beacon_alias: alias.local_addr().unwrap(),
        public: public.local_addr().unwrap(),
        open: Arc::new(AtomicBool::new(false)),
        dropped: Arc::new(AtomicU64::new(0)),
        passed: Arc::new(AtomicU64::new(0)),
    };
    // The node's real endpoint, learnt from its first datagram.
    let inner: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    // Node -> beacon.
    {
        let (public, alias, inner) = (public.clone(), alias.clone(), inner.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = alias.recv_from(&mut buf).await {
                *inner.lock().await = Some(from);
                let _ = public.send_to(&buf[..n], beacon).await;
            }
        });
    }
    // Outside -> node.
    {
        let (open, dropped, passed) = (s.open.clone(), s.dropped.clone(), s.passed.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            let mut faces: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            while let Ok((n, from)) = public.recv_from(&mut buf).await {
                let Some(node) = *inner.lock().await else {
                    continue;
                };
                if from == beacon {
                    let _ = alias.send_to(&buf[..n], node).await;
                    continue;
                }
                if !open.load(Ordering::Relaxed) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                passed.fetch_add(1, Ordering::Relaxed);
                let face = match faces.get(&from) {
                    Some(f) => f.clone(),
                    None => {
                        // One inner socket per outside source; what the
                        // node sends to it leaves by the public socket.
                        let f = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        let (f2, public) = (f.clone(), public.clone());
                        tokio::spawn(async move {
                            let mut b = vec![0u8; 65_536];
                            while let Ok((n, _)) = f2.recv_from(&mut b).await {
                                let _ = public.send_to(&b[..n], from).await;
                            }
                        });
                        faces.insert(from, f.clone());
                        f
                    }
                };
                let _ = face.send_to(&buf[..n], node).await;
            }
        });
    }
    s
}

async fn node(reg: SocketAddr, beacon: SocketAddr) -> Node {
    let mut rc = RegistryConfig::new(reg);
    rc.public = true;
    let mut cfg = NodeConfig::with_registry(rc);
    cfg.beacon = Some(beacon);
    Node::start(cfg).await.unwrap()
}

/// Waits until `f` holds (polling), or panics with `what`.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + LIMIT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pair_relays_then_upgrades_to_direct() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, beacon) = start_rendezvous(dir.path());
    let (sa, sb) = (shim(beacon).await, shim(beacon).await);
    let a = node(reg, sa.beacon_alias).await;
    let b = node(reg, sb.beacon_alias).await;
    // Each discovers its public endpoint (the shim's) and advertises it.
    until("observed endpoints", || {
        a.public_endpoint() == Some(sa.public) && b.public_endpoint() == Some(sb.public)
    })
    .await;
    // Let the re-registration with the observed endpoint land.
    sleep(Duration::from_millis(500)).await;

    let l = b.listen(7).unwrap();
    tokio::spawn(async move {
        while let Ok(mut s) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    let started = Instant::now();
    let s = timeout(LIMIT, async {
        loop {
            match a.connect(b.addr(), 7).await {
                Ok(s) => break s,
                Err(Error::Registry(_)) => sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    let first_byte = started.elapsed();
    let (mut rd, mut wr) = tokio::io::split(s);
    let peer_b = b.addr().node;
    let peer_a = a.addr().node;
    // A writer that keeps the stream busy, and a reader that checks every
    // byte, across the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        let mut chunk = vec![0u8; 4096];
        while !stop2.load(Ordering::Relaxed) {
            for (i, c) in chunk.iter_mut().enumerate() {
                *c = ((sent + i as u64) % 251) as u8;
            }
            wr.write_all(&chunk).await.unwrap();
            sent += chunk.len() as u64;
            sleep(Duration::from_millis(20)).await;
        }
        wr.shutdown().await.unwrap();
        sent
    });
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break got;
            }
            for (i, &c) in buf[..n].iter().enumerate() {
                assert_eq!(c, ((got + i as u64) % 251) as u8, "byte {}", got + i as u64);
            }
            got += n as u64;
        }
    });

    // Blocked direct path: the race ends on the relay.
    until("relay path", || {
        a.path(peer_b).is_some_and(|p| p.kind == PathKind::Relay)
            && b.path(peer_a).is_some_and(|p| p.kind == PathKind::Relay)
    })
    .await;
    let relay_out = a.path_stats().unwrap().relay_out;
    assert!(relay_out > 0, "a relayed nothing");
    assert!(sa.dropped.load(Ordering::Relaxed) + sb.dropped.load(Ordering::Relaxed) > 0);
    sleep(Duration::from_secs(1)).await;
    assert!(
        a.path_stats().unwrap().relay_out > relay_out,
        "the stream keeps going over the relay"
    );

    // The shims open: the background probe finds the direct path.
    sa.open.store(true, Ordering::Relaxed);
    sb.open.store(true, Ordering::Relaxed);
    let opened = Instant::now();
    until("direct path", || {
        a.path(peer_b)
            .is_some_and(|p| p.kind == PathKind::Direct && p.confirmed)
            && b.path(peer_a).is_some_and(|p| p.kind == PathKind::Direct)
    })
    .await;
    let upgrade = opened.elapsed();
    let pa = a.path(peer_b).unwrap();
    // b's public socket, or (the shims do not translate what the nodes
    // send) the shim face b's own direct frames arrived through.
    assert!(
        pa.endpoint
            .is_some_and(|e| e != beacon && e != sa.beacon_alias)
    );
    assert!(pa.changes >= 2, "relay, then direct: {pa:?}");
    // Traffic now flows directly: the relay counter stands still.
    sleep(Duration::from_millis(300)).await;
    let relayed = a.path_stats().unwrap().relay_out;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(a.path_stats().unwrap().relay_out, relayed, "still relaying");
    assert!(sb.passed.load(Ordering::Relaxed) > 0);

    stop.store(true, Ordering::Relaxed);
    let sent = timeout(LIMIT, writer).await.unwrap().unwrap();
    let got = timeout(LIMIT, reader).await.unwrap().unwrap();
    assert_eq!(got, sent, "every byte back, in order, across the switch");
    eprintln!(
        "dial {first_byte:?}; relayed until opened; direct {upgrade:?} after opening; {sent} bytes echoed; a: {:?}",
        a.path_stats().unwrap()
    );
}
