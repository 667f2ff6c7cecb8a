//! Two embedded nodes that only know a registry: each registers, and a
//! dial resolves the other through it. The registry is the project's
//! rendezvous server (`pilot_driver_mio::rendezvous`), run in-process on
//! loopback with a temp store.

use std::net::SocketAddr;
use std::time::Duration;

use pilot_driver_mio::rendezvous::server::{Server, ServerConfig};
use pilot_driver_tokio::{Addr, Error, Node, NodeConfig, RegistryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

fn start_registry(dir: &std::path::Path) -> SocketAddr {
    let mut cfg = ServerConfig::new(dir.join("registry.redb"));
    cfg.registry_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.beacon_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = Server::bind(cfg).unwrap();
    let addr = server.registry_addr().unwrap();
    std::thread::spawn(move || server.run());
    addr
}

/// A registry in `dir` and two public nodes registered with it; the
/// registry configuration is returned for more nodes.
async fn public_pair(dir: &std::path::Path) -> (RegistryConfig, Node, Node) {
    let mut rc = RegistryConfig::new(start_registry(dir));
    rc.public = true;
    let a = Node::start(NodeConfig::with_registry(rc.clone()))
        .await
        .unwrap();
    let b = Node::start(NodeConfig::with_registry(rc.clone()))
        .await
        .unwrap();
    (rc, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_and_resolve_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a, b) = public_pair(dir.path()).await;
    assert_ne!(a.addr().node, 0);
    assert_ne!(a.addr(), b.addr());
    assert_eq!(a.addr().network, 0);

    let l = b.listen(80).unwrap();
    let server = tokio::spawn(async move {
        let mut s = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    // Visibility is set right after registration; retry the dial briefly
    // until the registry lets us resolve b.
    let mut s = timeout(LIMIT, async {
        loop {
            match a.connect(b.addr(), 80).await {
                Ok(s) => break s,
                Err(Error::Registry(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{e}: a {:?} b {:?}", a.stats(), b.stats()),
            }
        }
    })
    .await
    .unwrap();
    s.write_all(b"found you through the registry")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let got = timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(got, b"found you through the registry");
    // An unregistered node cannot be resolved.
    let r = a.connect(Addr::new(0, 0x00ff_fff0), 80).await;
    assert!(matches!(r, Err(Error::Registry(_))), "{r:?}");
}

#[tokio::test]
async fn unreachable_registry_fails_the_start() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut rc = RegistryConfig::new(addr);
    rc.join_timeout = Duration::from_millis(500);
    let r = Node::start(NodeConfig::with_registry(rc)).await;
    assert!(matches!(r, Err(Error::Registry(_))), "{r:?}");
}

/// A private node resolves only for peers it trusts: the first dial fails
/// at the registry (look-up says private, the second `resolve` step is
/// refused), and after `report_trust` the same dial goes through the
/// second step and reaches it. The refusal is cached for a few seconds,
/// so the dial is retried until the negative answer expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_peer_is_reached_after_trust() {
    let dir = tempfile::tempdir().unwrap();
    let reg = start_registry(dir.path());
    let rc = RegistryConfig::new(reg);
    let a = Node::start(NodeConfig::with_registry(rc.clone()))
        .await
        .unwrap();
    let b = Node::start(NodeConfig::with_registry(rc)).await.unwrap();
    let l = b.listen(80).unwrap();
    let server = tokio::spawn(async move {
        let mut s = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });

    let before = a.connect(b.addr(), 80).await;
    match &before {
        Err(Error::Registry(e)) => assert!(e.starts_with("resolve node"), "{e}"),
        other => panic!("a private peer resolved without trust: {other:?}"),
    }
    // The refusal is remembered: asking again fails at once, the same way.
    let again = a.connect(b.addr(), 80).await;
    assert!(matches!(again, Err(Error::Registry(_))), "{again:?}");

    b.report_trust(a.addr().node).await.unwrap();
    let started = std::time::Instant::now();
    let mut s = timeout(LIMIT, async {
        loop {
            match a.connect(b.addr(), 80).await {
                Ok(s) => break s,
                Err(Error::Registry(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("reachable after trust");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the negative answer expires in seconds"
    );
    s.write_all(b"private, but trusted").await.unwrap();
    s.shutdown().await.unwrap();
    let got = timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(got, b"private, but trusted");
}

/// Key rotation of an embedded node (the daemon's `rotate-key`, through
/// the same `proto` parts): a stream open across the rotation keeps
/// echoing, the node reports and announces the new key, and the registry
/// serves the new key — a third node that resolves the rotated one only
/// after the rotation verifies its key exchange against what the registry
/// gives it, so it connects only if that is the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_keeps_the_stream_and_the_registry_serves_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let (rc, a, b) = public_pair(dir.path()).await;
    let l = b.listen(7).unwrap();
    tokio::spawn(async move {
        while let Ok(mut s) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let connect = |from: Node, to: Addr| async move {
        timeout(LIMIT, async {
            loop {
                match from.connect(to, 7).await {
                    Ok(s) => break s,
                    Err(Error::Registry(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await
        .unwrap()
    };
    let mut s = connect(a.clone(), b.addr()).await;
    echo(&mut s, b"before the rotation").await;

    let old = a.identity_key();
    let new = timeout(LIMIT, a.rotate_key()).await.unwrap().unwrap();
    assert_ne!(*new.public(), old);
    assert_eq!(a.identity_key(), *new.public());
    assert!(a.stats().identity_announcements >= 1, "{:?}", a.stats());
    echo(&mut s, b"after the rotation, same stream").await;

    // A node that meets `a` only now gets its key from the registry.
    let c = Node::start(NodeConfig::with_registry(rc)).await.unwrap();
    let lc = a.listen(7).unwrap();
    tokio::spawn(async move {
        let mut s = lc.accept().await.unwrap();
        s.write_all(b"signed with the new key").await.unwrap();
        s.shutdown().await.unwrap();
    });
    let mut sc = connect(c.clone(), a.addr()).await;
    let mut got = Vec::new();
    timeout(LIMIT, sc.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"signed with the new key");
    echo(&mut s, b"and still the same stream").await;
    // Without a registry there is nothing to rotate with.
    let lone = Node::start(NodeConfig::new(Addr::new(0, 77)))
        .await
        .unwrap();
    assert!(matches!(lone.rotate_key().await, Err(Error::Registry(_))));
}

/// Writes `msg` on `s` and reads it back from an echo server.
async fn echo(s: &mut pilot_driver_tokio::Stream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    timeout(LIMIT, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, msg);
}
