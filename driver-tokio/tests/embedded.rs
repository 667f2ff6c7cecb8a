//! Two embedded nodes in one runtime, talking over loopback UDP.

use std::time::Duration;

use pilot_driver_tokio::{Addr, Error, Node, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

async fn pair() -> (Node, Node) {
    let a = Node::start(NodeConfig::new(Addr::new(1, 10)))
        .await
        .unwrap();
    let b = Node::start(NodeConfig::new(Addr::new(1, 20)))
        .await
        .unwrap();
    a.introduce(&b).unwrap();
    (a, b)
}

/// Deterministic, position-dependent test data.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

#[tokio::test]
async fn several_mib_both_ways_then_close() {
    let (a, b) = pair().await;
    let listener = b.listen(80).unwrap();
    const N: usize = 3 << 20;
    let up = pattern(1, N);
    let down = pattern(2, N + 12_345);

    let server = {
        let down = down.clone();
        tokio::spawn(async move {
            let s = listener.accept().await.unwrap();
            assert_eq!(s.local_port(), 80);
            let (mut r, mut w) = tokio::io::split(s);
            let writer = tokio::spawn(async move {
                w.write_all(&down).await.unwrap();
                w
            });
            let mut got = vec![0u8; N];
            r.read_exact(&mut got).await.unwrap();
            let w = writer.await.unwrap();
            // The client shuts down only after reading everything we sent:
            // then we see end of stream and answer with our own close.
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            let mut s = r.unsplit(w);
            s.shutdown().await.unwrap();
            got
        })
    };

    let s = a.connect(b.addr(), 80).await.unwrap();
    assert_eq!(s.peer_addr(), (b.addr(), 80));
    let (mut r, mut w) = tokio::io::split(s);
    let writer = {
        let up = up.clone();
        tokio::spawn(async move {
            w.write_all(&up).await.unwrap();
            w
        })
    };
    let mut got = vec![0u8; down.len()];
    timeout(LIMIT, r.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == down, "client received corrupted data");
    let mut w = writer.await.unwrap();
    w.shutdown().await.unwrap();
    // After our FIN we still read until the server's FIN: end of stream.
    let mut rest = Vec::new();
    timeout(LIMIT, r.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    let server_got = timeout(LIMIT, server).await.unwrap().unwrap();
    assert!(server_got == up, "server received corrupted data");
}

#[tokio::test]
async fn shutdown_delivers_data_then_eof_and_peer_cannot_write() {
    let (a, b) = pair().await;
    let listener = b.listen(81).unwrap();
    let mut c = a.connect(b.addr(), 81).await.unwrap();
    let mut s = listener.accept().await.unwrap();
    c.write_all(b"request body").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"request body");
    // No half-close on the wire: after the peer's FIN, writes fail.
    let err = s.write_all(b"late").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    drop(s);
    let mut rest = Vec::new();
    let n = timeout(LIMIT, c.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn many_concurrent_streams() {
    let (a, b) = pair().await;
    let listener = b.listen(7).unwrap();
    const STREAMS: usize = 24;
    // Echo server: every accepted stream echoes until end of stream.
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let s = listener.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(s);
                let mut buf = vec![0u8; 4096];
                let mut total = 0usize;
                loop {
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    total += n;
                    w.write_all(&buf[..n]).await.unwrap();
                }
                total
            }));
        }
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        sum
    });
    let mut clients = Vec::new();
    for i in 0..STREAMS {
        let a = a.clone();
        let dst = b.addr();
        clients.push(tokio::spawn(async move {
            let mut s = a.connect(dst, 7).await.unwrap();
            let msg = pattern(i as u8, 20_000 + i * 1000);
            let (mut r, mut w) = tokio::io::split(&mut s);
            let send = async {
                w.write_all(&msg).await.unwrap();
            };
            let mut back = vec![0u8; msg.len()];
            let recv = async {
                r.read_exact(&mut back).await.unwrap();
            };
            tokio::join!(send, recv);
            assert!(back == msg, "stream {i} echoed corrupted data");
            s.shutdown().await.unwrap();
            msg.len()
        }));
    }
    let mut sent = 0;
    for c in clients {
        sent += timeout(LIMIT, c).await.unwrap().unwrap();
    }
    assert_eq!(timeout(LIMIT, server).await.unwrap().unwrap(), sent);
}

#[tokio::test]
async fn datagrams_round_trip() {
    let (a, b) = pair().await;
    let sa = a.bind_datagram(5000).unwrap();
    let sb = b.bind_datagram(6000).unwrap();
    assert!(matches!(b.bind_datagram(6000), Err(Error::PortInUse(6000))));
    for i in 0..10u8 {
        sa.send_to(b.addr(), 6000, &[i; 100]).await.unwrap();
        let d = timeout(LIMIT, sb.recv_from()).await.unwrap().unwrap();
        assert_eq!((d.src, d.src_port, d.dst_port), (a.addr(), 5000, 6000));
        assert_eq!(d.data, vec![i; 100]);
        sb.send_to(d.src, d.src_port, &d.data[..10]).await.unwrap();
        let r = timeout(LIMIT, sa.recv_from()).await.unwrap().unwrap();
        assert_eq!(r.data, vec![i; 10]);
        assert_eq!(r.src, b.addr());
    }
    // From an ephemeral port.
    a.send_datagram(b.addr(), 6000, b"eph").await.unwrap();
    let d = timeout(LIMIT, sb.recv_from()).await.unwrap().unwrap();
    assert_eq!(d.data, b"eph");
    assert!(d.src_port >= 49152);
}

#[tokio::test]
async fn dropping_a_stream_closes_the_peer() {
    let (a, b) = pair().await;
    let listener = b.listen(90).unwrap();
    let mut c = a.connect(b.addr(), 90).await.unwrap();
    let mut s = listener.accept().await.unwrap();
    c.write_all(b"bye").await.unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await.unwrap();
    drop(c);
    let mut rest = Vec::new();
    let r = timeout(LIMIT, s.read_to_end(&mut rest)).await.unwrap();
    // End of stream (FIN) or a reset: either way the peer sees the close.
    match r {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    drop(s);
    // Both sides eventually drop the connection state.
    timeout(LIMIT, async {
        while a.conn_count() + b.conn_count() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("connections left: {} {}", a.conn_count(), b.conn_count()));
}

#[tokio::test]
async fn connect_to_closed_port_is_refused_and_unknown_peer_fails() {
    let (a, b) = pair().await;
    let r = timeout(LIMIT, a.connect(b.addr(), 4444)).await.unwrap();
    assert!(matches!(r, Err(Error::Refused)), "{r:?}");
    let r = a.connect(Addr::new(1, 99), 80).await;
    assert!(matches!(r, Err(Error::Node(_))), "{r:?}");
}

#[tokio::test]
async fn cancelled_connect_and_accept_lose_nothing() {
    let (a, b) = pair().await;
    let listener = b.listen(95).unwrap();
    // A cancelled accept does not consume a connection.
    assert!(
        timeout(Duration::from_millis(20), listener.accept())
            .await
            .is_err()
    );
    // A dial abandoned at once leaves no connection behind on the dialer.
    {
        let fut = a.connect(b.addr(), 95);
        tokio::pin!(fut);
        let _ = futures_poll_once(fut.as_mut()).await;
    }
    let mut c = a.connect(b.addr(), 95).await.unwrap();
    c.write_all(b"x").await.unwrap();
    // The accepted streams: possibly the abandoned dial (closed at once)
    // and ours; ours delivers its byte.
    let mut found = false;
    for _ in 0..2 {
        let mut s = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        let mut buf = Vec::new();
        c.shutdown().await.unwrap();
        let _ = timeout(LIMIT, s.read_to_end(&mut buf)).await.unwrap();
        if buf == b"x" {
            found = true;
            break;
        }
    }
    assert!(found);
}

/// Polls a future exactly once.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_driver() {
    let (a, b) = pair().await;
    let listener = b.listen(99).unwrap();
    drop(b);
    // The listener keeps the node alive.
    let c = timeout(LIMIT, a.connect(Addr::new(1, 20), 99))
        .await
        .unwrap();
    assert!(c.is_ok());
    drop(listener);
}

/// A ring node and a RustCrypto node, under both wire profiles, move a
/// stream both ways: the providers interoperate on real sockets.
#[tokio::test]
async fn ring_and_rustcrypto_nodes_interoperate() {
    use pilot_driver_tokio::CryptoChoice;
    use pilot_proto::wire::WireProfile;
    for profile in [WireProfile::Current, WireProfile::Legacy] {
        let mut ca = NodeConfig::new(Addr::new(1, 30));
        ca.crypto = CryptoChoice::Ring;
        ca.profile = profile;
        let mut cb = NodeConfig::new(Addr::new(1, 40));
        cb.crypto = CryptoChoice::RustCrypto;
        cb.profile = profile;
        let a = Node::start(ca).await.unwrap();
        let b = Node::start(cb).await.unwrap();
        a.introduce(&b).unwrap();
        let listener = b.listen(90).unwrap();
        let data = pattern(7, 300_000);
        let server = tokio::spawn(async move {
            let mut s = listener.accept().await.unwrap();
            let mut got = vec![0u8; 300_000];
            s.read_exact(&mut got).await.unwrap();
            // Echo it back: the other direction seals with RustCrypto.
            s.write_all(&got).await.unwrap();
            s.shutdown().await.unwrap();
            got
        });
        let mut s = timeout(LIMIT, a.connect(b.addr(), 90))
            .await
            .unwrap()
            .unwrap();
        s.write_all(&data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        timeout(LIMIT, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert!(back == data, "{profile:?}: echoed data differs");
        assert!(
            server.await.unwrap() == data,
            "{profile:?}: server got other bytes"
        );
    }
}
