//! `pilotctl` commands over a trusted pair of real daemons: info, ping,
//! bench, send/recv, send-message, send-file into `received/`, and the
//! event stream with a wildcard subscriber.

mod pilotctl_support;

use std::time::Duration;

use pilotctl_support::{Net, eventually, finish, trust};

#[test]
fn streams_echo_and_data_exchange_between_trusted_daemons() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &[]);
    trust(&alpha, &beta);
    let b = beta.node_id.to_string();

    let info = alpha.ok(&["info"]);
    assert_eq!(info["node_id"], alpha.node_id);
    assert_eq!(info["hostname"], "alpha");

    // ping by hostname (resolved through the daemon).
    let p = alpha.ok(&["ping", "beta", "--count", "2", "--interval", "0"]);
    let results = p["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["seq"], i);
        assert_eq!(r["bytes"], format!("ping-{i}").len(), "{r}");
        assert!(r["rtt_ms"].as_f64().is_some());
    }
    assert_eq!(p["timeout"], false);

    // bench: every byte comes back.
    let bench = alpha.ok(&["bench", &b, "1"]);
    assert_eq!(bench["sent_bytes"], 1024 * 1024);
    assert_eq!(bench["recv_bytes"], 1024 * 1024);
    assert!(bench["total_mbps"].as_f64().expect("mbps") > 0.0);

    // traceroute needs a full address.
    let addr = format!(
        "0:0000.{:04X}.{:04X}",
        beta.node_id >> 16,
        beta.node_id & 0xFFFF
    );
    let tr = alpha.ok(&["traceroute", &addr]);
    assert_eq!(tr["rtt_samples"].as_array().expect("samples").len(), 3);

    // send / recv on port 1000.
    let recv = beta.spawn(&["recv", "1000", "--count", "1", "--timeout", "30s"]);
    // Until the receiver has bound the port the dial is refused; exactly
    // one send gets through (the receiver takes one stream).
    let mut sent = None;
    eventually("a send to reach beta's port 1000", || {
        let out = alpha.ctl(&[
            "send",
            &b,
            "1000",
            "--data",
            "hello beta",
            "--timeout",
            "5s",
        ]);
        if out.status.success() {
            sent = Some(serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON"));
        }
        out.status.success()
    });
    let sent = sent.expect("sent");
    assert_eq!(sent["data"]["sent"], "hello beta");
    assert_eq!(sent["data"]["port"], 1000);
    let got = finish(recv);
    let msgs = got["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["data"], "hello beta");
    assert_eq!(msgs[0]["bytes"], 10);
    assert_eq!(got["timeout"], false);

    // send-message lands in beta's inbox.
    let m = alpha.ok(&["send-message", &b, "--data", "hi inbox"]);
    assert_eq!(m["ack"], "ACK TEXT 8 bytes");
    eventually("an inbox file at beta", || {
        std::fs::read_dir(beta.dir.join("inbox")).is_ok_and(|mut d| d.next().is_some())
    });

    // send-file: equal bytes in beta's received/.
    let src = net.dir.path().join("payload.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&src, &content).expect("write file");
    let f = alpha.ok(&["send-file", &b, src.to_str().expect("utf8")]);
    assert_eq!(f["filename"], "payload.bin");
    assert_eq!(f["bytes"], content.len());
    assert_eq!(f["ack"], format!("ACK FILE {} bytes", content.len()));
    let received = beta.dir.join("received");
    eventually("the file in beta's received/ under its own name", || {
        std::fs::read(received.join("payload.bin")).is_ok_and(|d| d == content)
    });
    // A second file of the same name does not overwrite the first.
    alpha.ok(&["send-file", &b, src.to_str().expect("utf8")]);
    eventually("the second copy as payload-1.bin", || {
        std::fs::read(received.join("payload-1.bin")).is_ok_and(|d| d == content)
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&received.join("payload.bin")), 0o600);
    assert_eq!(mode(&received), 0o700);
}

#[test]
fn wildcard_subscriber_gets_published_events() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &[]);
    trust(&alpha, &beta);
    let b = beta.node_id.to_string();
    // A bounded subscription on beta's broker, from alpha.
    let sub = alpha.spawn(&["subscribe", &b, "*", "--count", "1", "--timeout", "30s"]);
    // No replay for late subscribers: publish until the subscriber has one.
    let mut sub = Some(sub);
    let mut data = None;
    for _ in 0..100 {
        let p = alpha.ok(&["publish", &b, "weather", "--data", "sunny"]);
        assert_eq!(p["topic"], "weather");
        assert_eq!(p["bytes"], 5);
        std::thread::sleep(Duration::from_millis(200));
        if let Some(s) = sub.as_mut() {
            if let Ok(Some(_)) = s.0.try_wait() {
                data = Some(finish(sub.take().expect("sub")));
                break;
            }
        }
    }
    let data = data.expect("the subscriber finished");
    let events = data["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["topic"], "weather");
    assert_eq!(events[0]["data"], "sunny");
    assert_eq!(events[0]["bytes"], 5);
    assert_eq!(data["timeout"], false);
}
