//! The daemon's outstanding registry calls: for every [`Call`] the daemon
//! handed to its [`RegistryClient`], what the answer is for ([`Purpose`]),
//! from the moment the call is queued until its
//! [`ClientEvent::CallDone`](crate::registry::client::ClientEvent::CallDone)
//! is handled.
//!
//! Invariants ([`Calls::check`], asserted after every step of the daemon
//! tests):
//! - every entry is a call the registry client still holds (it answers
//!   each call it accepted exactly once: the reply, the registry's error,
//!   or `"request failed"` after its retry); an answer that never reaches
//!   the daemon (the client's bounded event queue overflowed) is found by
//!   [`Calls::reconcile`] and handed back as lost, so nothing waits for it
//!   forever;
//! - no entry names an IPC client that is gone: [`Calls::forget_client`]
//!   turns its calls into [`Purpose::Fire`] (the request still goes out,
//!   its answer is ignored).
//!
//! The map is bounded by the registry client's queue
//! ([`crate::registry::limits::CLIENT_MAX_QUEUE`] plus the one in flight):
//! [`Calls::start`] records a call only when the client accepted it.

use std::collections::BTreeMap;

use super::ClientId;
use crate::registry::client::{Call, CallId, ClientError, RegistryClient};
use crate::time::Instant;
use crate::wire::ipc::Command;

/// What a registry call is for: how the daemon acts on its answer.
#[derive(Debug)]
pub(crate) enum Purpose {
    /// Reply to an IPC request.
    Ipc {
        client: ClientId,
        reply: Command,
        op: &'static str,
    },
    /// The visibility call after a registration: the `Registered` event
    /// goes out when it is answered (either way).
    Announce { node_id: u32, address: String },
    /// A received trust message waits for the sender's `lookup` (its
    /// registry key and networks); `known` is a key we already had.
    TrustKey {
        bytes: Vec<u8>,
        source: u32,
        known: Option<[u8; 32]>,
    },
    /// A received trust request waits for our own `lookup`, to find a
    /// non-backbone network shared with the sender.
    TrustOwnNetworks {
        bytes: Vec<u8>,
        source: u32,
        key: Option<[u8; 32]>,
        peer_networks: Vec<u16>,
    },
    /// Back-fill the key of a peer trusted through the registry relay.
    KeyBackfill(u32),
    /// The registry pushed that this peer revoked our pair: confirm with
    /// `check_trust` before forgetting it; with the trust store's revision
    /// when first asked (only older state goes), and whether this is the
    /// second asking ([`REVOKE_RECHECK`](super::REVOKE_RECHECK)).
    RevokeCheck(u32, u64, bool),
    /// The private-node gate dropped this authenticated peer: ask
    /// `check_trust` and admit it for a while if the registry says the
    /// nodes trust each other or share a network (`spec/daemon.md` §6.1).
    Admission(u32),
    /// A trust relay used as the fallback of a failed direct send, or a
    /// plain trust bookkeeping call: nothing to do with the answer.
    Fire,
    /// The registry relay of an IPC handshake request: answer the client.
    HandshakeRelay { client: ClientId, peer: u32 },
    /// A broadcast waiting for its network's member list.
    Broadcast(Box<super::network::PendingBroadcast>),
    /// Our own lookup (after registration and every membership check):
    /// the networks we belong to.
    OwnNetworks,
    /// A membership check of a peer trusted through `network`.
    PeerMembership { peer: u32, network: u16 },
    /// The deregistration of a shutdown.
    ShutdownDeregister,
    /// The daemon's key rotation (`super::rotate`).
    Rotate,
}

impl Purpose {
    /// The received trust message a look-up was made for, if any.
    pub fn into_trust_bytes(self) -> Option<Vec<u8>> {
        match self {
            Purpose::TrustKey { bytes, .. } | Purpose::TrustOwnNetworks { bytes, .. } => {
                Some(bytes)
            }
            _ => None,
        }
    }

    /// The IPC client waiting for this call's answer, if any.
    fn client(&self) -> Option<ClientId> {
        match self {
            Purpose::Ipc { client, .. } | Purpose::HandshakeRelay { client, .. } => Some(*client),
            Purpose::Broadcast(b) => Some(b.client),
            _ => None,
        }
    }
}

/// The outstanding registry calls (module docs).
#[derive(Debug, Default)]
pub(crate) struct Calls {
    map: BTreeMap<CallId, Purpose>,
}

/// A call the registry client refused, with what it was for.
#[derive(Debug)]
pub(crate) struct Refused {
    /// Why.
    pub error: ClientError,
    /// The purpose, handed back.
    pub purpose: Purpose,
}

/// The error text handed with a call whose answer was lost.
pub(crate) const ANSWER_LOST: &str = "registry: answer lost";

impl Calls {
    /// Queues `call` at `reg` and records what it is for. When the client
    /// refuses it (queue full) nothing is recorded and the purpose comes
    /// back with the error.
    pub fn start(
        &mut self,
        reg: &mut RegistryClient,
        now: Instant,
        call: Call,
        purpose: Purpose,
    ) -> Result<CallId, Refused> {
        match reg.call(now, call) {
            Ok(id) => {
                self.map.insert(id, purpose);
                Ok(id)
            }
            Err(error) => Err(Refused { error, purpose }),
        }
    }

    /// Records a call the registry client already accepted (a rotation,
    /// started through [`RegistryClient::rotate_key`]).
    pub fn record(&mut self, id: CallId, purpose: Purpose) {
        self.map.insert(id, purpose);
    }

    /// The answer of `id` arrived: what it was for (`None`: not ours, or
    /// already handed back by [`Calls::reconcile`]).
    pub fn finish(&mut self, id: CallId) -> Option<Purpose> {
        self.map.remove(&id)
    }

    /// IPC client `client` went away: its calls still complete at the
    /// registry, but nobody is answered.
    pub fn forget_client(&mut self, client: ClientId) {
        for p in self.map.values_mut() {
            if p.client() == Some(client) {
                *p = Purpose::Fire;
            }
        }
    }

    /// Hands back, oldest first, the calls the registry client no longer
    /// holds (`held` says whether it does) although their answer never
    /// came: the daemon fails each with [`ANSWER_LOST`]. Call it after
    /// every answer the client reported has been handled.
    pub fn reconcile(&mut self, held: impl Fn(CallId) -> bool) -> Vec<(CallId, Purpose)> {
        let lost: Vec<CallId> = self.map.keys().copied().filter(|id| !held(*id)).collect();
        lost.into_iter()
            .filter_map(|id| self.finish(id).map(|p| (id, p)))
            .collect()
    }

    /// Number of outstanding calls.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Asserts the invariants (module docs): `held` is the registry
    /// client's view, `open` whether an IPC client exists.
    #[cfg(test)]
    pub fn check(&self, held: impl Fn(CallId) -> bool, open: impl Fn(ClientId) -> bool) {
        for (id, p) in &self.map {
            assert!(held(*id), "call {id:?} not held by the registry client");
            if let Some(c) = p.client() {
                assert!(open(c), "call {id:?} answers closed client {c:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::auth::Identity;
    use crate::registry::client::ClientConfig;
    use crate::registry::limits::CLIENT_MAX_QUEUE;

    fn reg() -> RegistryClient {
        RegistryClient::new(
            ClientConfig::default(),
            Identity::from_seed(&[7; 32]),
            Instant::ZERO,
        )
    }

    fn ipc(client: u64) -> Purpose {
        Purpose::Ipc {
            client: ClientId(client),
            reply: Command::SetTagsOk,
            op: "set_tags",
        }
    }

    #[test]
    fn a_call_is_recorded_only_when_the_registry_client_takes_it() {
        let mut r = reg();
        let mut calls = Calls::default();
        // Registration is not done: everything waits in the client's queue
        // (behind the registration itself) until it is full.
        let mut accepted = 0;
        let refused = loop {
            let i = accepted as u32;
            match calls.start(
                &mut r,
                Instant::ZERO,
                Call::Lookup(i),
                Purpose::KeyBackfill(i),
            ) {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
            assert!(
                accepted <= CLIENT_MAX_QUEUE,
                "the client's queue is bounded"
            );
        };
        assert_eq!(accepted, CLIENT_MAX_QUEUE - 1);
        assert_eq!(refused.error, ClientError::QueueFull);
        let last = accepted as u32;
        assert!(
            matches!(refused.purpose, Purpose::KeyBackfill(n) if n == last),
            "the purpose is handed back"
        );
        assert_eq!(calls.len(), accepted, "a refused call is not kept");
        calls.check(|id| r.holds_call(id), |_| true);
    }

    #[test]
    fn finish_hands_back_each_purpose_once() {
        let mut r = reg();
        let mut calls = Calls::default();
        let a = calls
            .start(
                &mut r,
                Instant::ZERO,
                Call::Lookup(5),
                Purpose::KeyBackfill(5),
            )
            .unwrap();
        let b = calls
            .start(
                &mut r,
                Instant::ZERO,
                Call::Resolve(5),
                Purpose::RevokeCheck(5, 0, false),
            )
            .unwrap();
        assert_ne!(a, b);
        assert!(matches!(
            calls.finish(b),
            Some(Purpose::RevokeCheck(5, 0, false))
        ));
        assert!(calls.finish(b).is_none(), "a second answer finds nothing");
        assert!(matches!(calls.finish(a), Some(Purpose::KeyBackfill(5))));
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn a_gone_client_is_never_answered() {
        let mut r = reg();
        let mut calls = Calls::default();
        let a = calls
            .start(&mut r, Instant::ZERO, Call::SetTags(vec![]), ipc(1))
            .unwrap();
        let relay = Purpose::HandshakeRelay {
            client: ClientId(1),
            peer: 9,
        };
        let b = calls
            .start(&mut r, Instant::ZERO, Call::CheckTrust(9), relay)
            .unwrap();
        let c = calls
            .start(&mut r, Instant::ZERO, Call::SetTags(vec![]), ipc(2))
            .unwrap();
        calls.forget_client(ClientId(1));
        calls.check(|_| true, |c| c != ClientId(1));
        assert!(matches!(calls.finish(a), Some(Purpose::Fire)));
        assert!(matches!(calls.finish(b), Some(Purpose::Fire)));
        assert!(
            matches!(calls.finish(c), Some(Purpose::Ipc { client, .. }) if client == ClientId(2)),
            "another client's call is untouched"
        );
    }

    #[test]
    #[should_panic(expected = "answers closed client")]
    fn check_catches_a_call_for_a_closed_client() {
        let mut r = reg();
        let mut calls = Calls::default();
        calls
            .start(&mut r, Instant::ZERO, Call::SetTags(vec![]), ipc(3))
            .unwrap();
        calls.check(|_| true, |_| false);
    }

    #[test]
    fn reconcile_hands_back_calls_whose_answer_was_lost() {
        let mut r = reg();
        let mut calls = Calls::default();
        let a = calls
            .start(
                &mut r,
                Instant::ZERO,
                Call::Lookup(1),
                Purpose::KeyBackfill(1),
            )
            .unwrap();
        let b = calls
            .start(
                &mut r,
                Instant::ZERO,
                Call::Lookup(2),
                Purpose::KeyBackfill(2),
            )
            .unwrap();
        // Everything held: nothing is lost.
        assert!(calls.reconcile(|id| r.holds_call(id)).is_empty());
        assert_eq!(calls.len(), 2);
        // The client answered `a` but the event never arrived.
        let lost = calls.reconcile(|id| id != a);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0, a);
        assert!(matches!(lost[0].1, Purpose::KeyBackfill(1)));
        assert_eq!(calls.len(), 1);
        assert!(matches!(calls.finish(b), Some(Purpose::KeyBackfill(2))));
    }
}
