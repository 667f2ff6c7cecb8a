//! The secure channel (port 443) between two embedded nodes: a transfer
//! whose bytes are compared, in both wire profiles, and a tampered record
//! that the receiver refuses.

use std::time::Duration;

use pilot_driver_tokio::secure::SecureStream;
use pilot_driver_tokio::{Addr, Node, NodeConfig, WireProfile};
use pilot_proto::services::secure::{Channel, Role, public_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

async fn pair(net: u16) -> (Node, Node) {
    let a = Node::start(NodeConfig::new(Addr::new(net, 1)))
        .await
        .unwrap();
    let b = Node::start(NodeConfig::new(Addr::new(net, 2)))
        .await
        .unwrap();
    a.introduce(&b).unwrap();
    (a, b)
}

#[tokio::test]
async fn transfer_over_the_secure_channel_in_both_profiles() {
    for (i, profile) in [WireProfile::Current, WireProfile::Legacy]
        .into_iter()
        .enumerate()
    {
        let (server, client) = pair(10 + i as u16).await;
        let listener = server.listen(443).unwrap();
        // The server echoes every record back, then ends.
        let srv = tokio::spawn(async move {
            let s = listener.accept().await.unwrap();
            let mut s = SecureStream::server(s, profile).await.unwrap();
            let mut total = 0usize;
            while let Some(m) = s.recv().await.unwrap() {
                total += m.len();
                s.send(&m).await.unwrap();
            }
            total
        });
        let stream = client.connect(server.addr(), 443).await.unwrap();
        let mut c = timeout(LIMIT, SecureStream::client(stream, profile))
            .await
            .unwrap()
            .unwrap();
        // 1 MiB of varied bytes in records of varied sizes.
        let data: Vec<u8> = (0..1_048_576u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut back = Vec::new();
        for chunk in data.chunks(40_000) {
            c.send(chunk).await.unwrap();
            let r = timeout(LIMIT, c.recv()).await.unwrap().unwrap().unwrap();
            back.extend_from_slice(&r);
        }
        assert_eq!(back, data, "{profile:?}");
        c.shutdown().await.unwrap();
        let total = timeout(LIMIT, srv).await.unwrap().unwrap();
        assert_eq!(total, data.len());
    }
}

#[tokio::test]
async fn a_tampered_record_is_refused() {
    let (server, client) = pair(20).await;
    let listener = server.listen(443).unwrap();
    let srv = tokio::spawn(async move {
        let s = listener.accept().await.unwrap();
        let mut s = SecureStream::server(s, WireProfile::Current).await.unwrap();
        let first = s.recv().await;
        let second = s.recv().await;
        (first.map(|m| m.unwrap()), second)
    });
    // A hand-driven client: the real handshake, then one good record and
    // one with a flipped ciphertext bit.
    let mut raw = client.connect(server.addr(), 443).await.unwrap();
    let secret = [0x33u8; 32];
    raw.write_all(&public_key(&secret)).await.unwrap();
    let mut theirs = [0u8; 32];
    raw.read_exact(&mut theirs).await.unwrap();
    let mut chan = Channel::new(WireProfile::Current, Role::Client, &secret, &theirs).unwrap();
    let mut rec = Vec::new();
    chan.seal(b"good", &mut rec).unwrap();
    let mut bad = Vec::new();
    chan.seal(b"evil", &mut bad).unwrap();
    bad[20] ^= 0x80;
    raw.write_all(&rec).await.unwrap();
    raw.write_all(&bad).await.unwrap();
    let (first, second) = timeout(LIMIT, srv).await.unwrap().unwrap();
    assert_eq!(first.unwrap(), b"good");
    let e = second.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("authentication"), "{e}");
}
