//! The daemon side of the trust handshake (`spec/daemon.md` §6): carrying
//! out [`Effect`]s of the [`TrustStore`], the port-444 intake, outgoing
//! trust messages and the IPC handshake sub-commands.
//!
//! [`TrustStore`]: crate::services::handshake::TrustStore

use rand_core::{CryptoRng, RngCore, SeedableRng};
use serde_json::json;

use super::{ClientId, Daemon, Purpose, Role, TrustOutbound, TrustWaiter, Waiter};
use crate::addr::{Addr, ports};
use crate::crypto::provider::CryptoProvider;
use crate::registry::client::Call;
use crate::services::handshake::{
    Effect, HandshakeMessage, Inbound, MessageType, RegistryOp, TrustError,
};
use crate::time::Instant;
use crate::wire::ipc::{HandshakeRequest, IpcMessage};

use core::time::Duration;

/// The registry call for a trust-store operation, and what its answer is
/// for.
fn registry_call(op: RegistryOp) -> (Call, Purpose) {
    match op {
        RegistryOp::ReportTrust { peer, .. } => (Call::ReportTrust(peer), Purpose::Fire),
        RegistryOp::RevokeTrust { peer, .. } => (Call::RevokeTrust(peer), Purpose::Fire),
        RegistryOp::RequestHandshake {
            to, justification, ..
        } => (Call::RequestHandshake { to, justification }, Purpose::Fire),
        RegistryOp::RespondHandshake { to, accept, .. } => {
            (Call::RespondHandshake { peer: to, accept }, Purpose::Fire)
        }
        RegistryOp::Lookup { node } => (Call::Lookup(node), Purpose::KeyBackfill(node)),
    }
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// Carries out what the trust store asked for.
    pub(super) fn apply_trust(&mut self, now: Instant, fx: Vec<Effect>) {
        self.apply_trust_for(now, fx, None);
    }

    /// Like [`Daemon::apply_trust`]; the outcome of a request message is
    /// reported to `notify` (client, peer).
    fn apply_trust_for(&mut self, now: Instant, fx: Vec<Effect>, notify: Option<(ClientId, u32)>) {
        let mut persist = false;
        for e in fx {
            match e {
                Effect::Send {
                    to,
                    message,
                    fallback,
                } => {
                    // Only our own request reports back to the IPC client.
                    let notify = notify.filter(|_| message.kind == MessageType::Request);
                    let out = TrustOutbound {
                        msg: message.to_json().into_bytes(),
                        fallback,
                        notify,
                        to,
                        revoke: message.kind == MessageType::Revoke,
                    };
                    self.trust_send(now, to, out);
                }
                Effect::Registry(op) => self.trust_registry(now, op),
                Effect::Persist => {
                    persist = true;
                    // Trust changed: the registry may now give us nodes it
                    // refused before.
                    self.resolver.clear_negative();
                }
                // Trust revoked: close our side of the tunnel at once, as
                // the peer does (`spec/daemon.md` §6, `spec/crypto.md`
                // §13). A later grant runs a fresh key exchange.
                Effect::DropTunnel(peer) => {
                    // Whatever the registry said about it before is stale.
                    if let Some(n) = self.life.node_mut() {
                        n.gate_mut().forget(peer);
                    }
                    let closed = self
                        .life
                        .node_mut()
                        .is_some_and(|n| n.close_tunnel(now, peer));
                    if closed {
                        self.stats.tunnels_revoked += 1;
                        self.diagnostics_push(format!(
                            "trust with node {peer} revoked: tunnel closed, its connections failed"
                        ));
                    }
                }
                Effect::Event(ev) => {
                    self.webhook_trust(now, &ev);
                    self.outputs
                        .push_back(super::Output::Event(super::DaemonEvent::Trust(ev)));
                }
            }
        }
        if persist {
            if let Some(text) = self.life.trust().map(|t| t.to_file().to_json()) {
                self.disk(super::DiskWrite::Trust(text));
            }
        }
        self.sync_gate();
        self.check_trust_waiters(now);
    }

    /// Brings the node's private-node gate in step with the daemon
    /// (`spec/daemon.md` §6.1): on for a registry-backed node that is not
    /// public, admitting the trust store's peers, each bound to the key
    /// it was trusted with (if known).
    pub(super) fn sync_gate(&mut self) {
        let enabled = self.registry.is_some() && !self.public;
        let trusted: Vec<(u32, Option<[u8; 32]>)> = self
            .life
            .trust()
            .map(|t| {
                t.trusted()
                    .iter()
                    .map(|(n, t)| {
                        let key = crate::registry::auth::decode_public_key(&t.public_key).ok();
                        (*n, key)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(n) = self.life.node_mut() {
            let gate = n.gate_mut();
            gate.set_enabled(enabled);
            gate.set_trusted(trusted);
        }
    }

    /// Performs a registry operation of the trust store.
    pub(super) fn trust_registry(&mut self, now: Instant, op: RegistryOp) {
        let (call, purpose) = registry_call(op);
        let _ = self.call(now, call, purpose);
    }

    /// Delivers a trust message to `to:444`, resolving the peer first if
    /// needed; its fallback runs if that fails.
    fn trust_send(&mut self, now: Instant, to: u32, out: TrustOutbound) {
        if self.peers.contains_key(&to) {
            self.open_trust_out(now, to, out);
        } else {
            self.resolve_then(now, to, 0, Waiter::TrustSend(out));
        }
    }

    /// Direct delivery failed: run the registry fallback, or report the
    /// failure to a waiting IPC request.
    pub(super) fn trust_failed(&mut self, now: Instant, out: TrustOutbound, reason: &str) {
        match (out.fallback, out.notify) {
            (Some(op), Some((client, peer))) => {
                let call = registry_call(op).0;
                let started = self.call(now, call, Purpose::HandshakeRelay { client, peer });
                match started {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => self.reply_error(
                        now,
                        client,
                        &format!("handshake request: registry: {}", e.error),
                    ),
                    None => self.reply_error(
                        now,
                        client,
                        &format!("handshake request: {reason}; no registry configured"),
                    ),
                }
            }
            (Some(op), None) => self.trust_registry(now, op),
            (None, Some((client, _))) => {
                self.reply_error(now, client, &format!("handshake request: {reason}"))
            }
            (None, None) => {}
        }
    }

    /// A handshake request was delivered (directly or by the relay).
    pub(super) fn handshake_sent(&mut self, now: Instant, client: ClientId, peer: u32) {
        let j = json!({"node_id": peer, "status": "sent"}).to_string();
        self.reply_msg(now, client, &IpcMessage::HandshakeOk(&j));
    }

    /// Whether `out` is a revoke that a later decision made obsolete: we
    /// trust its peer again, or ask it to trust us. Sent that late, it
    /// would arrive after the newer request or accept (they travel on
    /// other streams or through the registry) and take the trust away
    /// again; unsent, the peer's trust in us stays, as the newer message
    /// asks.
    pub(super) fn revoke_obsolete(&self, out: &TrustOutbound) -> bool {
        out.revoke
            && self
                .life
                .trust()
                .is_some_and(|t| t.trusted().contains_key(&out.to) || t.is_outgoing(out.to))
    }

    /// Dials `to:444` for an outgoing trust message.
    pub(super) fn open_trust_out(&mut self, now: Instant, to: u32, out: TrustOutbound) {
        if self.revoke_obsolete(&out) {
            self.stats.revokes_unsent += 1;
            return;
        }
        let network = self.peers.get(&to).copied().unwrap_or(0);
        let addr = Addr::new(network, to);
        let res = self
            .life
            .node_mut()
            .map(|n| n.connect(now, addr, ports::HANDSHAKE));
        match res {
            Some(Ok(cid)) => {
                self.conns.attach(
                    cid,
                    Role::TrustOut {
                        out,
                        written: 0,
                        connected: false,
                    },
                );
            }
            _ => self.trust_failed(now, out, "dial failed"),
        }
    }

    /// A complete message from the port-444 intake of the service host,
    /// sent by the stream's real remote node `source`.
    ///
    /// With a registry, a request always waits for a `lookup` of its sender
    /// (key and networks) and then of ourselves, so that the store can tell
    /// a shared non-backbone network (`spec/daemon.md` §6.2); other messages
    /// only wait for the sender's key when it is not known yet.
    pub(super) fn on_trust_bytes(&mut self, now: Instant, buf: Vec<u8>, source: u32) {
        let Ok(msg) = HandshakeMessage::decode(&buf, self.profile) else {
            return;
        };
        let known = self.resolver.key(msg.node_id);
        let wants_networks = msg.kind == MessageType::Request;
        if known.is_none() || wants_networks {
            let registered = self.registry.as_ref().is_some_and(|r| r.is_registered());
            if registered {
                let purpose = Purpose::TrustKey {
                    bytes: buf,
                    source,
                    known,
                };
                // Refused (queue full): process it with what we know.
                if let Some(Err(refused)) = self.call(now, Call::Lookup(msg.node_id), purpose) {
                    if let Some(bytes) = refused.purpose.into_trust_bytes() {
                        self.process_trust_message(now, &bytes, source, known, None);
                    }
                }
                return;
            }
        }
        self.process_trust_message(now, &buf, source, known, None);
    }

    /// The sender's `lookup` of a received trust message answered: for a
    /// request naming networks, look ourselves up next; otherwise process.
    pub(super) fn on_trust_sender_lookup(
        &mut self,
        now: Instant,
        bytes: Vec<u8>,
        source: u32,
        key: Option<[u8; 32]>,
        peer_networks: Vec<u16>,
    ) {
        let is_request = HandshakeMessage::decode(&bytes, self.profile)
            .is_ok_and(|m| m.kind == MessageType::Request);
        let peer_networks: Vec<u16> = peer_networks.into_iter().filter(|n| *n != 0).collect();
        if is_request && !peer_networks.is_empty() {
            if let Some(me) = self.registry.as_ref().and_then(|r| r.node_id()) {
                let purpose = Purpose::TrustOwnNetworks {
                    bytes,
                    source,
                    key,
                    peer_networks,
                };
                // Refused (queue full): process it without a shared network.
                if let Some(Err(refused)) = self.call(now, Call::Lookup(me), purpose) {
                    if let Some(bytes) = refused.purpose.into_trust_bytes() {
                        self.process_trust_message(now, &bytes, source, key, None);
                    }
                }
                return;
            }
        }
        self.process_trust_message(now, &bytes, source, key, None);
    }

    /// Hands a received trust message to the store; `shared_network` is a
    /// non-backbone network we share with the sender, if any.
    pub(super) fn process_trust_message(
        &mut self,
        now: Instant,
        bytes: &[u8],
        source: u32,
        registry_key: Option<[u8; 32]>,
        shared_network: Option<u16>,
    ) {
        let wall = self.wall(now);
        let inbound = Inbound {
            source,
            registry_key,
            shared_network,
        };
        let fx = self
            .life
            .trust_mut()
            .map(|t| t.on_message(bytes, inbound, wall))
            .unwrap_or_default();
        self.apply_trust(now, fx);
    }

    /// The IPC handshake sub-commands (`spec/daemon.md` §6.3).
    pub(super) fn ipc_handshake(
        &mut self,
        now: Instant,
        client: ClientId,
        h: HandshakeRequest<'_>,
    ) {
        let wall = self.wall(now);
        let Some(store) = self.life.trust_mut() else {
            self.push_error(client, &"handshake: daemon not registered yet");
            return;
        };
        let status = |node: u32, s: &str| json!({"node_id": node, "status": s}).to_string();
        match h {
            HandshakeRequest::Request {
                node_id,
                justification,
            } => match store.send_request(node_id, justification, wall) {
                Ok(fx) if fx.is_empty() => {
                    // Already trusted: nothing to send.
                    let j = status(node_id, "sent");
                    self.push(client, &IpcMessage::HandshakeOk(&j));
                }
                Ok(fx) => {
                    // Answered once delivered directly or by the relay.
                    if let Some(c) = self.clients.get_mut(&client) {
                        c.inflight += 1;
                    }
                    self.apply_trust_for(now, fx, Some((client, node_id)));
                }
                Err(e) => self.push_error(client, &format!("handshake request: {e}")),
            },
            HandshakeRequest::Approve { node_id } => match store.approve(node_id, wall) {
                Ok(fx) => {
                    self.apply_trust(now, fx);
                    let j = status(node_id, "approved");
                    self.push(client, &IpcMessage::HandshakeOk(&j));
                }
                Err(e) => self.push_error(client, &format!("handshake approve: {e}")),
            },
            HandshakeRequest::Reject { node_id, reason } => {
                match store.reject(node_id, reason, wall) {
                    Ok(fx) => {
                        self.apply_trust(now, fx);
                        let j = status(node_id, "rejected");
                        self.push(client, &IpcMessage::HandshakeOk(&j));
                    }
                    Err(e) => self.push_error(client, &format!("handshake reject: {e}")),
                }
            }
            HandshakeRequest::ListPending => {
                let list: Vec<_> = store
                    .pending()
                    .iter()
                    .map(|(n, p)| {
                        json!({
                            "node_id": n,
                            "public_key": p.public_key,
                            "justification": p.justification,
                            "received_at": p.received_at.unix_secs,
                        })
                    })
                    .collect();
                let outgoing: Vec<_> = store
                    .outgoing()
                    .iter()
                    .map(|(n, sent)| json!({"node_id": n, "sent_at": sent}))
                    .collect();
                let j = json!({ "pending": list, "outgoing": outgoing }).to_string();
                self.push(client, &IpcMessage::HandshakeOk(&j));
            }
            HandshakeRequest::ListTrusted => {
                let list: Vec<_> = store
                    .trusted()
                    .iter()
                    .map(|(n, t)| {
                        json!({
                            "node_id": n,
                            "public_key": t.public_key,
                            "approved_at": t.approved_at.unix_secs,
                            "mutual": t.mutual,
                            "network": t.network,
                        })
                    })
                    .collect();
                let j = json!({ "trusted": list }).to_string();
                self.push(client, &IpcMessage::HandshakeOk(&j));
            }
            HandshakeRequest::Revoke { node_id } => match store.revoke(node_id, wall) {
                Ok(fx) => {
                    self.apply_trust(now, fx);
                    let j = status(node_id, "revoked");
                    self.push(client, &IpcMessage::HandshakeOk(&j));
                }
                Err(TrustError::NotTrusted(n)) => {
                    self.push_error(
                        client,
                        &format!("handshake revoke: node {n} was not trusted"),
                    );
                }
                Err(e) => self.push_error(client, &format!("handshake revoke: {e}")),
            },
            HandshakeRequest::WaitForTrust { node_id, .. } => {
                let ms = h.effective_wait_ms().unwrap_or(0);
                if store.trusted().contains_key(&node_id) || ms == 0 {
                    let trusted = store.trusted().contains_key(&node_id);
                    let j = json!({"node_id": node_id, "trusted": trusted}).to_string();
                    self.push(client, &IpcMessage::HandshakeOk(&j));
                } else {
                    if let Some(c) = self.clients.get_mut(&client) {
                        c.inflight += 1;
                    }
                    self.trust_waiters.push(TrustWaiter {
                        client,
                        node: node_id,
                        deadline: now + Duration::from_millis(u64::from(ms)),
                    });
                }
            }
        }
    }

    /// Answers "wait for trust" requests whose peer became trusted.
    pub(super) fn check_trust_waiters(&mut self, now: Instant) {
        let Some(store) = self.life.trust() else {
            return;
        };
        let (done, keep): (Vec<_>, Vec<_>) = core::mem::take(&mut self.trust_waiters)
            .into_iter()
            .partition(|w| store.trusted().contains_key(&w.node));
        self.trust_waiters = keep;
        for w in done {
            let j = json!({"node_id": w.node, "trusted": true}).to_string();
            self.reply_msg(now, w.client, &IpcMessage::HandshakeOk(&j));
        }
    }

    /// Answers "wait for trust" requests whose time ran out.
    pub(super) fn expire_trust_waiters(&mut self, now: Instant) {
        let (done, keep): (Vec<_>, Vec<_>) = core::mem::take(&mut self.trust_waiters)
            .into_iter()
            .partition(|w| w.deadline <= now);
        self.trust_waiters = keep;
        for w in done {
            let j = json!({"node_id": w.node, "trusted": false}).to_string();
            self.reply_msg(now, w.client, &IpcMessage::HandshakeOk(&j));
        }
    }
}

/// The smallest non-backbone network in both lists (`spec/daemon.md` §6.2).
pub(super) fn smallest_shared_network(ours: &[u16], theirs: &[u16]) -> Option<u16> {
    ours.iter()
        .copied()
        .filter(|n| *n != 0 && theirs.contains(n))
        .min()
}
