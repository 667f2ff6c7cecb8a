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

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// The `InfoOk` JSON (keys sorted, as the reference's map encoding).
    pub(super) fn info_json(&self, now: Instant) -> String {
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let mut conns = Vec::new();
        let mut active = 0u64;
        let mut peer_list = Vec::new();
        let (mut encrypted, mut authenticated) = (0u64, 0u64);
        if let Some(node) = self.node.as_ref() {
            for (cid, c) in &self.conns {
                let Some(i) = node.conn_info(*cid) else {
                    continue;
                };
                if matches!(i.state, State::SynSent | State::Established) {
                    active += 1;
                }
                let id = match c.role {
                    Role::Client { ipc_id, .. } => u64::from(ipc_id),
                    _ => cid.0,
                };
                let st = node.conn_stats(*cid).unwrap_or_default();
                let ms = |d: core::time::Duration| d.as_secs_f64() * 1000.0;
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
                }));
            }
            for p in node.peer_list() {
                encrypted += u64::from(p.encrypted);
                authenticated += u64::from(p.authenticated);
                peer_list.push(json!({
                    "node_id": p.node,
                    "endpoint": p.endpoint.to_string(),
                    "encrypted": p.encrypted,
                    "authenticated": p.authenticated,
                }));
            }
        }
        let v: Value = json!({
            "node_id": self.address.map(|a| a.node).unwrap_or(0),
            "address": self.address.map(|a| a.to_string()).unwrap_or_default(),
            "hostname": self.hostname,
            "uptime_secs": uptime as f64,
            "connections": active,
            "ports": self.ports.len(),
            "peers": peer_list.len(),
            "encrypted_peers": encrypted,
            "authenticated_peers": authenticated,
            "encrypt": self.encrypt,
            "identity": self.identity_persisted,
            "public_key": B64.encode(self.identity.public()),
            "owner": self.owner,
            "bytes_sent": self.stats.bytes_sent,
            "bytes_recv": self.stats.bytes_recv,
            "pkts_sent": self.stats.pkts_sent,
            "pkts_recv": self.stats.pkts_recv,
            "peer_list": peer_list,
            "conn_list": conns,
            "tunnel": self.tunnel_json(),
        });
        v.to_string()
    }

    /// Tunnel-layer drop and lifecycle counters (an extra Info key; the
    /// reference's clients ignore keys they do not know).
    fn tunnel_json(&self) -> Value {
        let n = self.node.as_ref().map(|n| n.stats()).unwrap_or_default();
        let d = self.stats;
        json!({
            "kx_rejected": n.kx_rejected,
            "kx_rate_limited": n.kx_rate_limited,
            "kx_unknown_identity": n.kx_unknown_identity,
            "kx_bad_auth": n.kx_bad_auth,
            "kx_key_requests": n.kx_key_requests,
            "kx_waiting_kept": n.kx_waiting_kept,
            "kx_waiting_retried": n.kx_waiting_retried,
            "kx_waiting_dropped": n.kx_waiting_dropped,
            "frames_dropped": n.open_failed,
            "frames_no_session": n.open_no_session,
            "frames_auth_failed": n.open_auth,
            "frames_replayed": n.open_replay,
            "frames_spoofed": n.spoofed,
            "plaintext_refused": n.plaintext_refused,
            "probes_sent": n.probes_sent,
            "peers_dead": n.peers_dead,
            "tunnels_closed": n.tunnels_closed,
            "tunnels_revoked": d.tunnels_revoked,
            "conns_failed_peer_restart": n.conns_failed_restart,
            "endpoint_moves": n.endpoint_moves,
            "endpoint_refreshes": d.endpoint_refreshes,
            "peer_timeout_ms": self.peer_timeout.as_millis() as u64,
        })
    }

    /// The `HealthOk` JSON (current profile).
    pub(super) fn health_json(&self, now: Instant) -> String {
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let (mut peers, mut encrypted, mut authenticated) = (0u64, 0u64, 0u64);
        if let Some(node) = self.node.as_ref() {
            for p in node.peer_list() {
                peers += 1;
                encrypted += u64::from(p.encrypted);
                authenticated += u64::from(p.authenticated);
            }
        }
        let pending = self.trust.as_ref().map_or(0, |t| t.pending().len());
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
        })
        .to_string()
    }
}
