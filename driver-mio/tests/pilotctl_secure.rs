//! `pilotctl connect --secure` against a secure-channel server that an
//! application runs on another daemon (driver-tokio's `DaemonClient` +
//! `SecureStream`), in both profiles; a profile mismatch fails cleanly.

mod pilotctl_support;

use pilot_driver_tokio::secure::SecureStream;
use pilot_driver_tokio::{DaemonClient, WireProfile};
use pilotctl_support::{Net, trust};

#[test]
fn connect_secure_round_trip_in_both_profiles() {
    let net = Net::new();
    let a = net.node("sec-a", &[]);
    let b = net.node("sec-b", &[]);
    trust(&a, &b);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socket = a.socket.clone();
    // Accept three streams: current, legacy, current (the last one meets
    // a legacy client).
    let server = rt.spawn(async move {
        let d = DaemonClient::open(&socket).await.unwrap();
        let l = d.listen(443).await.unwrap();
        let mut results = Vec::new();
        for profile in [
            WireProfile::Current,
            WireProfile::Legacy,
            WireProfile::Current,
        ] {
            let s = l.accept().await.unwrap();
            let r = async {
                let mut s = SecureStream::server(s, profile).await?;
                let m = s.recv().await?.unwrap_or_default();
                let mut reply = b"secure echo: ".to_vec();
                reply.extend_from_slice(&m);
                s.send(&reply).await?;
                s.shutdown().await?;
                Ok::<_, std::io::Error>(())
            }
            .await;
            results.push(r.map_err(|e| e.kind()));
        }
        results
    });
    let r = b.ok(&["connect", "sec-a", "443", "--secure", "--message", "hello"]);
    assert_eq!(r["response"], "secure echo: hello");
    assert_eq!(r["secure"], true);
    let r = b.ok(&[
        "connect",
        "sec-a",
        "443",
        "--secure",
        "--secure-legacy",
        "--message",
        "old",
    ]);
    assert_eq!(r["response"], "secure echo: old");
    // A legacy client against a current server: the server refuses the
    // record, the client reports the failure.
    let e = b.err(&[
        "connect",
        "sec-a",
        "443",
        "--secure",
        "--secure-legacy",
        "--message",
        "x",
        "--timeout",
        "20s",
    ]);
    assert_eq!(e["code"], "connection_failed", "{e}");
    let results = rt.block_on(server).unwrap();
    assert_eq!(results[0], Ok(()));
    assert_eq!(results[1], Ok(()));
    assert_eq!(results[2], Err(std::io::ErrorKind::InvalidData));
}
