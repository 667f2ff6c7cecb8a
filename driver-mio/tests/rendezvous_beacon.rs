//! The beacon answers a discover over real UDP with the observed endpoint.

mod common;

use std::net::UdpSocket;

use pilot_proto::beacon::client::{BeaconClient, BeaconEvent, ClientConfig};

use common::{Rv, STEP};

#[test]
fn discover_reports_the_observed_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let rv = Rv::start(&dir.path().join("s.redb"), &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    // The beacon client runs on a node's monotonic clock, not Unix time.
    let now = pilot_proto::time::Instant::ZERO;
    let mut client = BeaconClient::new(ClientConfig::new(rv.beacon, 42), now);
    let deadline = std::time::Instant::now() + STEP;
    let mut buf = vec![0u8; 2048];
    let endpoint = loop {
        assert!(std::time::Instant::now() < deadline, "no discover reply");
        client.discover_now(now);
        while let Some(tx) = client.poll_transmit(now, &mut buf) {
            assert_eq!(tx.dst, rv.beacon);
            sock.send_to(&buf[..tx.len], tx.dst).unwrap();
        }
        let mut rx = [0u8; 2048];
        if let Ok((n, from)) = sock.recv_from(&mut rx) {
            assert_eq!(from, rv.beacon);
            if let Some(BeaconEvent::PublicEndpoint(ep)) =
                client.handle_datagram(now, from, &rx[..n])
            {
                break ep;
            }
        }
    };
    assert_eq!(endpoint, sock.local_addr().unwrap());
    assert_eq!(client.public_endpoint(), Some(endpoint));
}
