//! The status JSON of IPC `Info` and `Health` (`spec/daemon.md` §2.6).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use serde_json::{Value, json};

use super::{Daemon, Role};
use crate::crypto::provider::CryptoProvider;
use crate::stream::conn::State;
use crate::time::Instant;

/// The state names of `conn_list` (`spec/daemon.md` §2.6).
fn state_name(s: State) -> &'static str {
    match s {
        State::SynSent => "SYN_SENT",
        State::Established => "ESTABLISHED",
        State::FinWait => "FIN_WAIT",
        State::TimeWait => "TIME_WAIT",
        State::Closed => "CLOSED",
    }
}

/// The text of an `Info` JSON object that fits `budget` bytes: when the
/// whole object is longer (thousands of peers or connections), entries are
/// dropped from the end of `conn_list`, then of `peer_list`, and
/// `conn_list_omitted` / `peer_list_omitted` say how many
/// (`spec/daemon.md` §2.6). The counters (`connections`, `peers`) stay
/// totals.
fn fit_info(mut v: Value, budget: usize) -> String {
    let text = v.to_string();
    if text.len() <= budget {
        return text;
    }
    // Room for the two `*_omitted` members.
    let mut over = text.len() - budget + 64;
    for (list, omitted) in [
        ("conn_list", "conn_list_omitted"),
        ("peer_list", "peer_list_omitted"),
    ] {
        let mut dropped = 0u64;
        if let Some(Value::Array(items)) = v.get_mut(list) {
            while over > 0 {
                let Some(item) = items.pop() else { break };
                // The entry and its separating comma.
                over = over.saturating_sub(item.to_string().len() + 1);
                dropped += 1;
            }
        }
        if dropped > 0 {
            v[omitted] = json!(dropped);
        }
    }
    v.to_string()
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// The `InfoOk` JSON (keys sorted, as the reference's map encoding).
    pub(super) fn info_json(&self, now: Instant) -> String {
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let mut conns = Vec::new();
        let mut active = 0u64;
        let mut peer_list = Vec::new();
        let (mut encrypted, mut authenticated) = (0u64, 0u64);
        let mut drops = serde_json::Map::new();
        let mut half_open = 0usize;
        let mut peer_srtt: std::collections::BTreeMap<u32, f64> = Default::default();
        if let Some(node) = self.life.node() {
            for (reason, n) in node.auth_drops().iter() {
                drops.insert(reason.name().to_owned(), json!(n));
            }
            half_open = node.half_open_len();
            for (cid, role) in self.conns.iter() {
                let Some(i) = node.conn_info(cid) else {
                    continue;
                };
                if matches!(i.state, State::SynSent | State::Established) {
                    active += 1;
                }
                let id = match role {
                    Role::Client { ipc_id, .. } => u64::from(*ipc_id),
                    _ => u64::from(super::service_conn_id(cid)),
                };
                let st = node.conn_stats(cid).unwrap_or_default();
                let ms = |d: core::time::Duration| d.as_secs_f64() * 1000.0;
                if let Some(rtt) = st.srtt.map(ms) {
                    let e = peer_srtt.entry(i.remote.node).or_insert(rtt);
                    *e = e.min(rtt);
                }
                conns.push(json!({
                    "id": id,
                    "local_port": i.local_port,
                    "remote_addr": i.remote.to_string(),
                    "remote_port": i.remote_port,
                    "state": state_name(i.state),
                    "cong_win": st.cwnd,
                    "ssthresh": st.ssthresh,
                    "in_flight": st.in_flight,
                    "unacked": st.in_flight,
                    "ooo_buf": i.ooo_segments,
                    "peer_recv_win": i.peer_window,
                    "recv_win": i.recv_window,
                    "srtt_ms": st.srtt.map(ms).unwrap_or(0.0),
                    "rttvar_ms": ms(st.rttvar),
                    "in_recovery": st.recovery.is_some(),
                    "bytes_sent": st.bytes_sent,
                    "bytes_recv": st.bytes_received,
                    "segs_sent": st.segments_sent,
                    "segs_recv": st.segments_received,
                    "retransmits": st.retransmissions,
                    "fast_retx": st.fast_retransmits,
                    "sack_recv": st.sack_blocks_received,
                    "sack_sent": st.sack_blocks_sent,
                    "dup_acks": st.dup_acks,
                    "segment_size": i.segment_size,
                    "path_mtu": i.path_mtu,
                    "mss_reductions": st.mss_reductions,
                }));
            }
            for p in node.peer_list() {
                encrypted += u64::from(p.encrypted);
                authenticated += u64::from(p.authenticated);
                let mut entry = json!({
                    "node_id": p.node,
                    "endpoint": p.endpoint.to_string(),
                    "encrypted": p.encrypted,
                    "authenticated": p.authenticated,
                    "srtt_ms": peer_srtt.get(&p.node).copied().unwrap_or(0.0),
                    "path": "direct",
                });
                // With a beacon the node holds path labels: show the path
                // part's view (`spec/beacon.md` §6.6).
                if let (Some(paths), Some(o)) = (self.paths.as_ref(), entry.as_object_mut()) {
                    let v = paths.view(p.node);
                    let kind = v.map_or("relay", |v| v.kind.name());
                    let ep = v.and_then(|v| v.endpoint);
                    o.insert("path".into(), json!(kind));
                    o.insert(
                        "endpoint".into(),
                        json!(ep.map(|e| e.to_string()).unwrap_or_default()),
                    );
                    o.insert(
                        "direct_confirmed".into(),
                        json!(v.is_some_and(|v| v.confirmed)),
                    );
                    if let Some(v) = v {
                        let ago = now.saturating_duration_since(v.changed).as_secs();
                        o.insert("path_changed_secs_ago".into(), json!(ago));
                        o.insert("path_changes".into(), json!(v.changes));
                    }
                }
                peer_list.push(entry);
            }
        }
        let v: Value = json!({
            "node_id": self.life.address().map(|a| a.node).unwrap_or(0),
            "address": self.life.address().map(|a| a.to_string()).unwrap_or_default(),
            "hostname": self.hostname,
            "networks": self.networks,
            "uptime_secs": uptime as f64,
            "connections": active,
            "ports": self.ports.len(),
            "peers": peer_list.len(),
            "encrypted_peers": encrypted,
            "authenticated_peers": authenticated,
            "encrypt": self.encrypt,
            "identity": self.identity_persisted,
            "public_key": B64.encode(self.identity.public()),
            "key_rotations": self.keys.rotations,
            "owner": self.owner,
            "bytes_sent": self.stats.bytes_sent,
            "bytes_recv": self.stats.bytes_recv,
            "pkts_sent": self.stats.pkts_sent,
            "pkts_recv": self.stats.pkts_recv,
            "peer_list": peer_list,
            "conn_list": conns,
            "tunnel": self.tunnel_json(),
            "auth_drops": Value::Object(drops),
            "half_open": half_open,
            "pending_dropped": self.life.node().map_or(0, |n| n.stats().pending_dropped),
            "nat": self.nat_json(),
        });
        fit_info(v, crate::wire::ipc::MAX_BODY_LEN - 1)
    }

    /// Endpoint discovery and path counters (`spec/beacon.md` §6.6): the
    /// public endpoint the beacon observed, what is advertised, whether the
    /// socket is translated and whether its mapping has stayed stable.
    fn nat_json(&self) -> Value {
        let Some(p) = self.paths.as_ref() else {
            return json!({"beacon": null});
        };
        let s = p.stats();
        let public = p.public_endpoint();
        let registry = self.registry.as_ref().map(|r| r.listen_addr().to_owned());
        json!({
            "beacon": p.config().beacon.to_string(),
            "public_endpoint": public.map(|e| e.to_string()),
            "advertised": registry,
            "endpoint_override": p.config().endpoint_override.map(|e| e.to_string()),
            "endpoint_changes": s.endpoint_changes,
            "mapping": match (public, s.endpoint_changes) {
                (None, _) => "unknown",
                (Some(_), 0) => "stable",
                _ => "changed (rebinding)",
            },
            "observer": p.config().observer.map(|e| e.to_string()),
            "observer_endpoint": p.observed_by_observer().map(|e| e.to_string()),
            "mapping_behaviour": p.mapping().name(),
            "mapping_reason": p.mapping().reason(),
            "keepalive_secs": self.keepalive.map(|k| k.as_secs_f64()),
            "direct_out": s.direct_out,
            "relay_out": s.relay_out,
            "relay_in": s.relay_in,
            "to_direct": s.to_direct,
            "to_relay": s.to_relay,
            "direct_lost": s.direct_lost,
            "punches": s.punches,
            "dropped": s.dropped,
        })
    }

    /// Tunnel lifecycle counters (an extra Info key; the reference's
    /// clients ignore keys they do not know). Dropped frames and key
    /// exchanges, per reason, are in `auth_drops`.
    fn tunnel_json(&self) -> Value {
        let n = self.life.node().map(|n| n.stats()).unwrap_or_default();
        let d = self.stats;
        json!({
            "kx_rejected": n.kx_rejected,
            "frames_dropped": n.open_failed,
            "early_frames_replayed": n.early_frames_replayed,
            "probes_sent": n.probes_sent,
            "peers_dead": n.peers_dead,
            "tunnels_closed": n.tunnels_closed,
            "tunnels_revoked": d.tunnels_revoked,
            "revokes_unsent": d.revokes_unsent,
            "network_grants_ended": d.network_grants_ended,
            "gate_private": self.life.node().is_some_and(|n| n.gate().enabled()),
            "gate_syn_dropped": n.gate_syn_dropped,
            "gate_datagrams_dropped": n.gate_datagrams_dropped,
            "gate_checks": d.gate_checks,
            "gate_vouched": d.gate_vouched,
            "conns_failed_peer_restart": n.conns_failed_restart,
            "endpoint_moves": n.endpoint_moves,
            "endpoint_refreshes": d.endpoint_refreshes,
            "diagnostics_dropped": n.diagnostics_dropped + d.diagnostics_dropped,
            "peer_timeout_ms": self.peer_timeout.as_millis() as u64,
        })
    }

    /// The `HealthOk` JSON (current profile).
    pub(super) fn health_json(&self, now: Instant) -> String {
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let (mut peers, mut encrypted, mut authenticated) = (0u64, 0u64, 0u64);
        if let Some(node) = self.life.node() {
            for p in node.peer_list() {
                peers += 1;
                encrypted += u64::from(p.encrypted);
                authenticated += u64::from(p.authenticated);
            }
        }
        let pending = self.life.trust().map_or(0, |t| t.pending().len());
        json!({
            "status": "ok",
            "uptime_seconds": uptime,
            "connections": self.conns.len(),
            "peers": peers,
            "bytes_sent": self.stats.bytes_sent,
            "bytes_recv": self.stats.bytes_recv,
            "encrypted_peers": encrypted,
            "authenticated_peers": authenticated,
            "handshake_pending_count": pending,
            "version": env!("CARGO_PKG_VERSION"),
            "webhook": self.webhook.url.as_deref().unwrap_or_default(),
            "webhook_queue_dropped": self.webhook.dropped,
            "webhook_circuit_skips": self.webhook.circuit_skips,
            "task_exec": self.tasks.enabled,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_info_too_large_for_one_frame_is_trimmed_and_says_so() {
        let conns: Vec<Value> = (0..5000)
            .map(|i| json!({"id": i, "pad": "c".repeat(200)}))
            .collect();
        let peers: Vec<Value> = (0..5000)
            .map(|i| json!({"node_id": i, "pad": "p".repeat(100)}))
            .collect();
        let v = json!({"connections": 5000, "peers": 5000, "conn_list": conns, "peer_list": peers});
        let whole = v.to_string().len();
        let budget = 1_000_000;
        assert!(whole > budget);
        let text = fit_info(v.clone(), budget);
        assert!(text.len() <= budget, "{} > {budget}", text.len());
        let got: Value = serde_json::from_str(&text).unwrap();
        let kept_c = got["conn_list"].as_array().unwrap().len() as u64;
        let kept_p = got["peer_list"].as_array().unwrap().len() as u64;
        // Connections go first; the peers all fit here.
        assert_eq!(kept_c + got["conn_list_omitted"].as_u64().unwrap(), 5000);
        assert_eq!(kept_p, 5000);
        assert!(got.get("peer_list_omitted").is_none());
        assert_eq!(got["connections"], 5000);
        // Little is dropped beyond what was needed.
        assert!(text.len() > budget - 1000, "{}", text.len());
        // Under a budget only peers beyond it: both lists trimmed.
        let text = fit_info(v.clone(), 100_000);
        let got: Value = serde_json::from_str(&text).unwrap();
        assert!(text.len() <= 100_000);
        assert_eq!(got["conn_list_omitted"], 5000);
        assert!(got["peer_list_omitted"].as_u64().unwrap() > 0);
        // A small object is untouched.
        let small = json!({"conn_list": [], "peer_list": []});
        assert_eq!(fit_info(small.clone(), 1000), small.to_string());
    }
}
