//! The daemon's Prometheus endpoint (`pilot-daemon --metrics-addr`).
//!
//! It sits beside the daemon, not inside its event loop: each scrape asks
//! the daemon's own IPC socket for `Info` (`spec/ipc.md`) and turns the
//! numbers the protocol core already counts into Prometheus text through
//! `prometheus-client`: traffic, peers and tunnels, open streams and their
//! retransmissions, and drops by reason. When the daemon does not answer,
//! the scrape still succeeds with `pilot_daemon_up 0`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::http_endpoint::{Handler, HttpEndpoint, Page};
use crate::ipc_client::IpcClient;

/// How long a scrape waits for the daemon's `Info` reply.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Starts serving `/metrics` on `addr` for the daemon whose IPC socket is
/// `socket`.
pub fn start(addr: SocketAddr, socket: &Path) -> std::io::Result<HttpEndpoint> {
    let socket: PathBuf = socket.to_path_buf();
    let handler: Arc<Handler> = Arc::new(move |path: &str| {
        (path == "/metrics").then(|| {
            Page::ok(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                scrape(&socket),
            )
        })
    });
    HttpEndpoint::start(addr, "daemon-metrics", handler)
}

/// One scrape: `Info` from the daemon at `socket`, as Prometheus text.
pub fn scrape(socket: &Path) -> String {
    let info = IpcClient::connect(socket).and_then(|mut c| {
        c.set_timeout(INFO_TIMEOUT);
        c.info()
    });
    match info {
        Ok(v) => encode(Some(&v)),
        Err(e) => {
            tracing::debug!(error = %e, "metrics scrape: daemon did not answer Info");
            encode(None)
        }
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Encodes an `Info` reply (`None`: the daemon did not answer).
pub fn encode(info: Option<&Value>) -> String {
    let mut r = Registry::with_prefix("pilot_daemon");
    let up = Gauge::<i64>::default();
    up.set(i64::from(info.is_some()));
    r.register("up", "1 when the daemon answered the Info request", up);
    let Some(v) = info else {
        return text(&r);
    };
    let gauge = |r: &mut Registry, name: &str, help: &str, x: u64| {
        r.register(
            name,
            help,
            ConstGauge::new(i64::try_from(x).unwrap_or(i64::MAX)),
        );
    };
    let counter = |r: &mut Registry, name: &str, help: &str, x: u64| {
        r.register(name, help, ConstCounter::new(x));
    };
    gauge(&mut r, "node_id", "This node's ID", num(v, "node_id"));
    gauge(
        &mut r,
        "uptime_seconds",
        "Seconds since the daemon started",
        v.get("uptime_secs")
            .and_then(Value::as_f64)
            .map_or(0, |s| s as u64),
    );
    counter(
        &mut r,
        "bytes_sent",
        "Tunnel bytes sent",
        num(v, "bytes_sent"),
    );
    counter(
        &mut r,
        "bytes_received",
        "Tunnel bytes received",
        num(v, "bytes_recv"),
    );
    counter(
        &mut r,
        "packets_sent",
        "Tunnel packets sent",
        num(v, "pkts_sent"),
    );
    counter(
        &mut r,
        "packets_received",
        "Tunnel packets received",
        num(v, "pkts_recv"),
    );
    gauge(&mut r, "peers", "Peers with a tunnel", num(v, "peers"));
    gauge(
        &mut r,
        "encrypted_peers",
        "Peers whose tunnel is encrypted",
        num(v, "encrypted_peers"),
    );
    gauge(
        &mut r,
        "authenticated_peers",
        "Peers whose tunnel is authenticated",
        num(v, "authenticated_peers"),
    );
    gauge(
        &mut r,
        "streams",
        "Open streams (connecting or established)",
        num(v, "connections"),
    );
    gauge(&mut r, "ports", "Bound ports", num(v, "ports"));
    gauge(
        &mut r,
        "half_open_streams",
        "Inbound streams not yet established",
        num(v, "half_open"),
    );
    // Per-stream numbers of the streams open now (a closed stream's
    // counts leave with it, so these are gauges).
    let conns = v
        .get("conn_list")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sum = |k: &str| conns.iter().map(|c| num(c, k)).sum::<u64>();
    gauge(
        &mut r,
        "open_stream_retransmissions",
        "Retransmitted segments of the streams open now",
        sum("retransmits"),
    );
    gauge(
        &mut r,
        "open_stream_fast_retransmissions",
        "Fast retransmissions of the streams open now",
        sum("fast_retx"),
    );
    gauge(
        &mut r,
        "open_stream_bytes_in_flight",
        "Unacknowledged bytes of the streams open now",
        sum("in_flight"),
    );
    let tunnel = v.get("tunnel").cloned().unwrap_or(Value::Null);
    for (key, name, help) in [
        ("tunnels_closed", "tunnels_closed", "Tunnels closed"),
        (
            "tunnels_revoked",
            "tunnels_revoked",
            "Tunnels closed by trust revocation",
        ),
        ("peers_dead", "peers_dead", "Peers declared dead by probes"),
        ("probes_sent", "probes_sent", "Dead-peer probes sent"),
        (
            "endpoint_moves",
            "endpoint_moves",
            "Peers that moved endpoint",
        ),
        (
            "early_frames_replayed",
            "early_frames_replayed",
            "Frames kept until a key arrived, then delivered",
        ),
        (
            "gate_syn_dropped",
            "gate_syn_dropped",
            "SYNs from untrusted peers a private node dropped silently",
        ),
        (
            "gate_datagrams_dropped",
            "gate_datagrams_dropped",
            "Datagrams from untrusted peers a private node dropped",
        ),
    ] {
        counter(&mut r, name, help, num(&tunnel, key));
    }
    // A fresh family per scrape: each total is the daemon's own count.
    let drops = Family::<ReasonLabel, Counter>::default();
    let add = |reason: &str, x: u64| {
        drops
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc_by(x);
    };
    if let Some(Value::Object(m)) = v.get("auth_drops") {
        for (reason, n) in m {
            add(reason, n.as_u64().unwrap_or(0));
        }
    }
    add("kx_rejected", num(&tunnel, "kx_rejected"));
    add("frame_open_failed", num(&tunnel, "frames_dropped"));
    add("diagnostics", num(&tunnel, "diagnostics_dropped"));
    add("pending_overflow", num(v, "pending_dropped"));
    r.register("drops", "Frames and requests dropped, by reason", drops);
    text(&r)
}

fn text(r: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, r).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn info_numbers_become_samples() {
        let info = json!({
            "node_id": 7, "uptime_secs": 12.0, "bytes_sent": 1000, "bytes_recv": 2000,
            "pkts_sent": 10, "pkts_recv": 20, "peers": 2, "encrypted_peers": 2,
            "authenticated_peers": 1, "connections": 3, "ports": 4, "half_open": 0,
            "pending_dropped": 5,
            "conn_list": [{"retransmits": 4, "fast_retx": 1, "in_flight": 100},
                          {"retransmits": 6, "fast_retx": 0, "in_flight": 0}],
            "tunnel": {"tunnels_closed": 1, "kx_rejected": 2, "frames_dropped": 3},
            "auth_drops": {"replay": 9},
        });
        let t = encode(Some(&info));
        for line in [
            "pilot_daemon_up 1",
            "pilot_daemon_node_id 7",
            "pilot_daemon_uptime_seconds 12",
            "pilot_daemon_bytes_sent_total 1000",
            "pilot_daemon_packets_received_total 20",
            "pilot_daemon_peers 2",
            "pilot_daemon_streams 3",
            "pilot_daemon_open_stream_retransmissions 10",
            "pilot_daemon_tunnels_closed_total 1",
            "pilot_daemon_drops_total{reason=\"replay\"} 9",
            "pilot_daemon_drops_total{reason=\"kx_rejected\"} 2",
            "pilot_daemon_drops_total{reason=\"frame_open_failed\"} 3",
            "pilot_daemon_drops_total{reason=\"pending_overflow\"} 5",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing in\n{t}");
        }
        let down = encode(None);
        assert!(down.lines().any(|l| l == "pilot_daemon_up 0"), "{down}");
        assert!(!down.contains("pilot_daemon_peers"));
    }
}
