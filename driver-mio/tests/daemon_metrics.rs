//! `pilot-daemon --metrics-addr`: the Prometheus endpoint of a real daemon
//! reports the tunnel, traffic and stream numbers its core counts.

mod common;
mod daemon_common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use pilot_driver_mio::http_endpoint::get;

use common::{Rv, STEP};
use daemon_common::{Daemon, PUBLIC, echo_once};

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A loopback port free right now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn daemon_metrics_follow_its_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let rv = Rv::start(&tmp.path().join("rv.redb"), &[]);
    let addr = free_port();
    let a_flags = ["--public", "--metrics-addr", &addr.to_string()];
    let a = Daemon::start(&rv, &tmp.path().join("a"), &a_flags);
    let b = Daemon::start(&rv, &tmp.path().join("b"), PUBLIC);

    let (status, before) = get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{before}");
    assert_eq!(sample(&before, "pilot_daemon_up"), Some(1.0), "{before}");
    assert_eq!(
        sample(&before, "pilot_daemon_node_id"),
        Some(f64::from(a.node_id)),
        "{before}"
    );
    assert_eq!(sample(&before, "pilot_daemon_peers"), Some(0.0), "{before}");

    let msg = b"metrics see this";
    assert_eq!(echo_once(&a.client(), b.address, msg), msg);
    let deadline = Instant::now() + STEP;
    let after = loop {
        let body = get(addr, "/metrics").expect("scrape").1;
        if sample(&body, "pilot_daemon_peers") == Some(1.0) {
            break body;
        }
        assert!(Instant::now() < deadline, "no peer in\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let sent = sample(&after, "pilot_daemon_bytes_sent_total").unwrap();
    let recv = sample(&after, "pilot_daemon_bytes_received_total").unwrap();
    assert!(
        sent >= msg.len() as f64 && recv >= msg.len() as f64,
        "{after}"
    );
    assert!(
        sample(&after, "pilot_daemon_packets_sent_total").unwrap()
            > sample(&before, "pilot_daemon_packets_sent_total").unwrap(),
        "{after}"
    );
    assert!(after.contains("pilot_daemon_drops_total{"), "{after}");
    assert!(after.trim_end().ends_with("# EOF"));

    // The daemon gone, the endpoint (part of the same process) goes too.
    drop(a);
    assert!(get(addr, "/metrics").is_err());
}
