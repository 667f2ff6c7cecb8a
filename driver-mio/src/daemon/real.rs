//! The real engine: [`Engine`] for `pilot_proto::daemon::Daemon`, and the
//! construction of its configuration from the resolved [`Startup`].

use std::net::SocketAddr;

use pilot_proto::crypto::identity::TunnelKey;
use pilot_proto::crypto::provider::Selected;
use pilot_proto::daemon::{self as pd, ClientId as CoreClient, Daemon, DaemonConfig, Services};
use pilot_proto::services::handshake::{AutoReason, TrustEvent};
use pilot_proto::time::Instant;
use pilot_proto::wire::WireProfile;
use rand_chacha::ChaCha20Rng;

use super::Startup;
use super::engine::{Action, ClientId, Datagram, Engine};

/// The daemon the driver runs.
pub type RealDaemon = Daemon<Selected, ChaCha20Rng>;

/// Builds the sans-IO daemon from what the driver prepared.
pub fn build(mut s: Startup) -> RealDaemon {
    let set = &s.settings;
    let provider = set.crypto;
    let tunnel_key = TunnelKey::generate(&provider, &mut s.rng);
    let mut cfg = DaemonConfig::new(s.identity, tunnel_key, provider, s.rng);
    cfg.profile = if set.legacy {
        WireProfile::Legacy
    } else {
        WireProfile::Current
    };
    cfg.encrypt = set.encrypt;
    cfg.registry = true;
    cfg.listen_addr = s.endpoint.to_string();
    cfg.hostname = set.hostname.clone().unwrap_or_default();
    cfg.public = set.public;
    cfg.tags = set.tags.clone();
    cfg.owner = set.owner.clone().unwrap_or_default();
    cfg.services = Services {
        echo: set.echo,
        dataexchange: set.dataexchange,
        eventstream: set.eventstream,
    };
    cfg.trust = s.trust;
    cfg.identity_persisted = true;
    cfg.unix_ms_at_epoch = s.unix_ms_at_epoch;
    // Local time, as spec/services.md §5.4 asks (trust.json, inbox names).
    cfg.utc_offset_secs = jiff::Zoned::now().offset().seconds();
    cfg.heartbeat = set.keepalive;
    cfg.node_limits.user_timeout = set.user_timeout;
    cfg.node_limits.pending_peers = set.pending_peers;
    // A tunnel peer silent this long is dead: its session is dropped and
    // its connections fail (`spec/crypto.md` §13).
    cfg.peer_timeout = set.idle_timeout;
    Daemon::new(Instant::ZERO, cfg)
}

fn action(a: pd::Action) -> Action {
    match a {
        pd::Action::DialRegistry => Action::DialRegistry,
        pd::Action::CloseRegistry => Action::CloseRegistry,
        pd::Action::SaveTrust(t) => Action::SaveTrust(t),
        pd::Action::SaveReceivedFile { name, data, from } => {
            Action::SaveReceivedFile { name, data, from }
        }
        pd::Action::SaveInbox { name, json } => Action::SaveInbox { name, json },
        pd::Action::SaveProfile(text) => Action::SaveProfile(text),
        pd::Action::Registered { node_id, address } => Action::Registered { node_id, address },
        pd::Action::Stopped => Action::Stopped,
        pd::Action::Trust(ev) => trust_event(ev),
    }
}

/// Names and describes a trust event for the log.
fn trust_event(ev: TrustEvent) -> Action {
    let (event, node, message) = match ev {
        TrustEvent::Received { node } => (
            "handshake.received",
            node,
            format!("trust request from node {node}"),
        ),
        TrustEvent::Pending { node } => (
            "handshake.pending",
            node,
            format!("trust request from node {node} is pending (pilotctl approve {node})"),
        ),
        TrustEvent::AutoApproved { node, reason } => {
            let why = match reason {
                AutoReason::Mutual => "both sides asked".to_owned(),
                AutoReason::SameNetwork(n) => format!("shared network {n}"),
            };
            (
                "handshake.auto_approved",
                node,
                format!("node {node} trusted automatically: {why}"),
            )
        }
        TrustEvent::Approved { node } => {
            ("handshake.approved", node, format!("approved node {node}"))
        }
        TrustEvent::Rejected { node, reason } => (
            "handshake.rejected",
            node,
            format!("rejected node {node}: {reason}"),
        ),
        TrustEvent::Revoked { node } => (
            "trust.revoked",
            node,
            format!("revoked trust in node {node}"),
        ),
        TrustEvent::RevokedByPeer { node } => (
            "trust.revoked_by_peer",
            node,
            format!("node {node} revoked its trust"),
        ),
        TrustEvent::AcceptedByPeer { node } => (
            "handshake.accepted",
            node,
            format!("node {node} accepted our trust request"),
        ),
        TrustEvent::RejectedByPeer { node } => (
            "handshake.rejected_by_peer",
            node,
            format!("node {node} rejected our trust request"),
        ),
    };
    Action::Trust {
        event,
        node,
        message,
    }
}

impl Engine for RealDaemon {
    fn handle_udp(&mut self, now: Instant, from: SocketAddr, bytes: &mut [u8]) {
        Daemon::handle_udp(self, now, from, bytes);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Datagram> {
        Daemon::poll_transmit(self, now, buf).map(|t| Datagram {
            dst: t.dst,
            len: t.len,
        })
    }
    fn poll_transmit_batch(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        max_segments: usize,
    ) -> Option<(SocketAddr, usize, usize)> {
        Daemon::poll_transmit_batch(self, now, buf, max_segments)
            .map(|b| (b.dst, b.len, b.segment_size))
    }
    fn registry_connected(&mut self, now: Instant) {
        Daemon::registry_connected(self, now);
    }
    fn registry_disconnected(&mut self, now: Instant) {
        Daemon::registry_disconnected(self, now);
    }
    fn handle_registry_bytes(&mut self, now: Instant, bytes: &[u8]) {
        Daemon::handle_registry_bytes(self, now, bytes);
    }
    fn poll_registry_bytes(&mut self) -> Option<Vec<u8>> {
        Daemon::poll_registry_bytes(self)
    }
    fn ipc_open(&mut self, now: Instant) -> Option<ClientId> {
        match Daemon::ipc_open(self, now) {
            Ok(id) => Some(id.0),
            Err(e) => {
                tracing::warn!(error = %e, "IPC client refused");
                None
            }
        }
    }
    fn handle_ipc_bytes(&mut self, now: Instant, client: ClientId, bytes: &[u8]) {
        Daemon::handle_ipc_bytes(self, now, CoreClient(client), bytes);
    }
    fn ipc_closed(&mut self, now: Instant, client: ClientId) {
        Daemon::ipc_closed(self, now, CoreClient(client));
    }
    fn ipc_read_paused(&self, client: ClientId) -> bool {
        Daemon::ipc_read_paused(self, CoreClient(client))
    }
    fn ipc_output(&mut self, client: ClientId) -> Option<&[u8]> {
        Daemon::ipc_output(self, CoreClient(client))
    }
    fn ipc_consumed(&mut self, client: ClientId, n: usize) {
        Daemon::ipc_consumed(self, CoreClient(client), n);
    }
    fn ipc_should_close(&self, client: ClientId) -> bool {
        Daemon::ipc_should_close(self, CoreClient(client))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Daemon::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Daemon::handle_timeout(self, now);
    }
    fn poll_action(&mut self) -> Option<Action> {
        // Tunnel-layer drops and lifecycle changes go to the debug log
        // (the core keeps them bounded and counts them in Info `tunnel`).
        while let Some(line) = Daemon::poll_diagnostic(self) {
            tracing::debug!(target: "pilot::tunnel", "{line}");
        }
        Daemon::poll_action(self).map(action)
    }
    fn shutdown(&mut self, now: Instant) {
        Daemon::shutdown(self, now);
    }
    fn auth_drops(&self) -> Vec<(&'static str, u64)> {
        self.node().map_or_else(Vec::new, |n| {
            n.auth_drops().iter().map(|(r, c)| (r.name(), c)).collect()
        })
    }
}
