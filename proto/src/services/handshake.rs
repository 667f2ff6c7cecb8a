//! The trust handshake on port 444 (`spec/services.md` §4): the JSON
//! message, its signature and validation, the [`TrustStore`] state machine
//! (incoming messages, local operations, the relayed path) and the
//! `trust.json` persistence format.

use std::collections::{BTreeMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The Ed25519 identity key type the store signs with.
pub use ed25519_dalek::SigningKey;

use super::walltime::WallTime;
use super::{EncodeError, take_out};
use crate::crypto::identity::Identity;
use crate::wire::WireProfile;

/// Largest message the legacy receiver reads: one 4096-byte chunk
/// (`spec/services.md` §4.1).
pub const MAX_MESSAGE_LEGACY: usize = 4096;
/// Largest message the current receiver reads: 64 KiB (`spec/services.md` §4.1).
pub const MAX_MESSAGE_CURRENT: usize = 64 << 10;
/// How far in the past a timestamp may be, seconds (`spec/services.md` §4.2).
pub const MAX_AGE_SECS: i64 = 300;
/// How far in the future a timestamp may be, seconds (`spec/services.md` §4.2).
pub const MAX_SKEW_SECS: i64 = 30;
/// How long a message hash is remembered, seconds (`spec/services.md` §4.2).
pub const REPLAY_TTL_SECS: i64 = 600;
/// Most message hashes remembered (`spec/services.md` §4.2).
pub const REPLAY_CAP: usize = 8192;
/// Most pending requests held (`spec/services.md` §4.7).
pub const PENDING_CAP: usize = 256;
/// Most pending requests delivered by one source node (`spec/services.md` §4.7).
pub const PENDING_PER_SOURCE: usize = 16;
/// Age after which a pending request is dropped, seconds (30 days)
/// (`spec/services.md` §4.7).
pub const PENDING_TTL_SECS: i64 = 30 * 86_400;
/// Age after which an unanswered outgoing request is forgotten, seconds
/// (`spec/services.md` §4.7).
pub const OUTGOING_TTL_SECS: i64 = 600;
/// Longest justification kept, bytes (`spec/services.md` §4.7).
pub const MAX_JUSTIFICATION: usize = 1024;
/// Most outgoing requests tracked (`spec/services.md` §4.7).
pub const OUTGOING_CAP: usize = 1024;
/// Reason sent with a revoke (`spec/services.md` §4.4).
pub const REVOKE_REASON: &str = "trust revoked";
/// Revision stamps kept beyond the peers with state before the stale ones
/// are swept (bounds [`TrustStore`]'s stamp maps).
const STAMP_SLACK: usize = 64;
/// Most seconds a sent message's timestamp is raised above the clock so
/// that messages to one peer carry increasing timestamps (receivers
/// allow [`MAX_SKEW_SECS`]; `spec/services.md` §4.1).
pub const MAX_TIMESTAMP_LEAD: i64 = 10;
/// Most peers whose last timestamps (sent, and received in a request or
/// accept) are remembered for that purpose.
const TIMESTAMP_CAP: usize = 1024;

/// The largest message a receiver of `profile` reads.
pub const fn max_message(profile: WireProfile) -> usize {
    match profile {
        WireProfile::Current => MAX_MESSAGE_CURRENT,
        WireProfile::Legacy => MAX_MESSAGE_LEGACY,
    }
}

/// The four message types (`spec/services.md` §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, arbitrary::Arbitrary)]
pub enum MessageType {
    /// Ask for trust.
    #[serde(rename = "handshake_request")]
    Request,
    /// Grant trust.
    #[serde(rename = "handshake_accept")]
    Accept,
    /// Decline a request.
    #[serde(rename = "handshake_reject")]
    Reject,
    /// Withdraw trust.
    #[serde(rename = "handshake_revoke")]
    Revoke,
}

/// One handshake message. Field order is the canonical serialisation
/// order (`spec/services.md` §4.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, arbitrary::Arbitrary)]
pub struct HandshakeMessage {
    /// Message type.
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Sender's node ID.
    pub node_id: u32,
    /// Sender's Ed25519 public key, standard base64; may be empty.
    #[serde(default)]
    pub public_key: String,
    /// Free text (requests).
    #[serde(default)]
    pub justification: String,
    /// Base64 Ed25519 signature over `handshake:<sender>:<receiver>`.
    #[serde(default)]
    pub signature: String,
    /// Free text (reject/revoke).
    #[serde(default)]
    pub reason: String,
    /// Sender's Unix time, seconds.
    #[serde(default)]
    pub timestamp: i64,
}

/// Why a received message was dropped (`spec/services.md` §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Larger than the profile's read limit.
    #[error("message of {0} bytes is too large")]
    TooLarge(usize),
    /// Not a handshake JSON object.
    #[error("malformed message")]
    Malformed,
    /// Timestamp outside the accepted window.
    #[error("timestamp out of window")]
    Stale,
    /// Seen before.
    #[error("replayed message")]
    Replay,
    /// A key is present but the signature is missing or wrong.
    #[error("bad signature")]
    BadSignature,
    /// The key is not valid base64 Ed25519.
    #[error("bad public key")]
    BadKey,
    /// The key differs from the one the registry holds for the node.
    #[error("key does not match the registry")]
    KeyMismatch,
    /// A request without a key (current profile).
    #[error("request without a key")]
    MissingKey,
}

/// The challenge every message signs: `handshake:<sender>:<receiver>`.
pub fn challenge(sender: u32, receiver: u32) -> String {
    format!("handshake:{sender}:{receiver}")
}

/// Base64 signature by `key` for a message from `sender` to `receiver`.
pub fn sign(key: &SigningKey, sender: u32, receiver: u32) -> String {
    B64.encode(key.sign(challenge(sender, receiver).as_bytes()).to_bytes())
}

/// Parses a base64 Ed25519 public key.
pub fn parse_key(b64: &str) -> Option<VerifyingKey> {
    let raw: [u8; 32] = B64.decode(b64).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&raw).ok()
}

impl HandshakeMessage {
    /// The canonical compact JSON (field order as declared).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Writes the canonical JSON into `out`.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let j = self.to_json();
        take_out(out, j.len())?.copy_from_slice(j.as_bytes());
        Ok(j.len())
    }

    /// Parses one received chunk. Unknown fields are ignored and missing
    /// text fields are empty, as the reference daemon tolerates.
    pub fn decode(bytes: &[u8], profile: WireProfile) -> Result<HandshakeMessage, Invalid> {
        if bytes.len() > max_message(profile) {
            return Err(Invalid::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|_| Invalid::Malformed)
    }

    /// SHA-256 of the canonical serialisation, the replay-cache key.
    pub fn replay_hash(&self) -> [u8; 32] {
        Sha256::digest(self.to_json().as_bytes()).into()
    }

    /// Checks the signature for receiver `me`. An empty key skips the
    /// check (wire behaviour of both generations).
    pub fn verify(&self, me: u32) -> Result<(), Invalid> {
        if self.public_key.is_empty() {
            return Ok(());
        }
        let key = parse_key(&self.public_key).ok_or(Invalid::BadKey)?;
        let sig: [u8; 64] = B64
            .decode(&self.signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(Invalid::BadSignature)?;
        key.verify(
            challenge(self.node_id, me).as_bytes(),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| Invalid::BadSignature)
    }
}

/// A bounded, time-limited set of message hashes (`spec/services.md` §4.2).
#[derive(Clone, Debug, Default)]
pub struct ReplayCache {
    seen: BTreeMap<[u8; 32], i64>,
    order: VecDeque<(i64, [u8; 32])>,
}

impl ReplayCache {
    /// Records `hash` at `now`; false if it was already present.
    pub fn insert(&mut self, hash: [u8; 32], now: i64) -> bool {
        while let Some(&(t, h)) = self.order.front() {
            if now.saturating_sub(t) < REPLAY_TTL_SECS && self.order.len() < REPLAY_CAP {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&h) == Some(&t) {
                self.seen.remove(&h);
            }
        }
        if self.seen.contains_key(&hash) {
            return false;
        }
        self.seen.insert(hash, now);
        self.order.push_back((now, hash));
        true
    }

    /// Number of remembered hashes.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A registry call the daemon must make (`spec/services.md` §4.3–§4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryOp {
    /// Record the trust pair.
    ReportTrust {
        /// This node.
        me: u32,
        /// The peer.
        peer: u32,
    },
    /// Remove the trust pair.
    RevokeTrust {
        /// This node.
        me: u32,
        /// The peer.
        peer: u32,
    },
    /// Relay a request to a node we cannot dial.
    RequestHandshake {
        /// This node.
        from: u32,
        /// The peer.
        to: u32,
        /// Justification text.
        justification: String,
        /// Base64 signature over `handshake:<from>:<to>`.
        signature: String,
    },
    /// Relay an answer.
    RespondHandshake {
        /// This node.
        from: u32,
        /// The peer.
        to: u32,
        /// Accepted or rejected.
        accept: bool,
    },
    /// Fetch the peer's public key; answer with [`TrustStore::key_learned`].
    Lookup {
        /// The peer.
        node: u32,
    },
}

/// Why trust was granted without a manual approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoReason {
    /// Both sides asked.
    Mutual,
    /// Both are members of the same non-backbone network.
    SameNetwork(u16),
}

/// Something to report (webhook name in the variant docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustEvent {
    /// `handshake.received`: every request, direct or relayed, before
    /// its outcome event.
    Received {
        /// Requester.
        node: u32,
        /// The request's justification.
        justification: String,
    },
    /// `handshake.auto_approved`.
    AutoApproved {
        /// Peer.
        node: u32,
        /// Why.
        reason: AutoReason,
    },
    /// `handshake.pending`.
    Pending {
        /// Requester.
        node: u32,
        /// The request's justification.
        justification: String,
    },
    /// `handshake.approved`.
    Approved {
        /// Peer.
        node: u32,
    },
    /// `handshake.rejected`.
    Rejected {
        /// Peer.
        node: u32,
        /// Reason given.
        reason: String,
    },
    /// `trust.revoked`.
    Revoked {
        /// Peer.
        node: u32,
    },
    /// `trust.revoked_by_peer`.
    RevokedByPeer {
        /// Peer.
        node: u32,
    },
    /// `trust.revoked` (reason `network_membership_ended`): trust that
    /// only a shared network gave ended with that membership
    /// ([`TrustStore::end_network_grant`]).
    NetworkEnded {
        /// Peer.
        node: u32,
        /// The network that had granted it.
        network: u16,
    },
    /// Ours (logged only): the peer accepted our request; trust is mutual.
    AcceptedByPeer {
        /// Peer.
        node: u32,
    },
    /// Ours (logged only): the peer rejected our request.
    RejectedByPeer {
        /// Peer.
        node: u32,
    },
    /// Ours (logged only): a revoke from the peer older than a request
    /// or accept it sent later was ignored (§4.3).
    StaleRevoke {
        /// Peer.
        node: u32,
    },
}

/// What the daemon must do after a [`TrustStore`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Dial `to:444`, write `message`'s JSON, close; if the dial fails and
    /// `fallback` is set, perform it instead.
    Send {
        /// Peer node.
        to: u32,
        /// Message to write.
        message: HandshakeMessage,
        /// Registry relay to use when the peer cannot be dialled.
        fallback: Option<RegistryOp>,
    },
    /// Call the registry.
    Registry(RegistryOp),
    /// Rewrite `trust.json` from [`TrustStore::to_file`].
    Persist,
    /// Tear down the tunnel to this node.
    DropTunnel(u32),
    /// Report an event.
    Event(TrustEvent),
}

/// What the daemon knows about the sender when a message arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inbound {
    /// Node ID of the stream's actual remote end.
    pub source: u32,
    /// The registry's key for the message's `node_id`, if looked up.
    pub registry_key: Option<[u8; 32]>,
    /// A non-backbone network shared with that node, if any.
    pub shared_network: Option<u16>,
}

/// Timestamps (the sender's clock, seconds) of the newest messages a
/// peer sent us itself (`TrustStore::peer_ts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PeerStamps {
    /// Newest request or accept.
    affirmed: i64,
    /// Newest revoke.
    revoked: i64,
}

/// A trusted peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trusted {
    /// Base64 key, empty if unknown.
    pub public_key: String,
    /// When trust was granted.
    pub approved_at: WallTime,
    /// Granted by mutual request.
    pub mutual: bool,
    /// Network that granted it (0 = none).
    pub network: u16,
}

/// A request awaiting a local decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Base64 key, empty if unknown.
    pub public_key: String,
    /// Sanitised justification.
    pub justification: String,
    /// When it arrived.
    pub received_at: WallTime,
    /// Node that delivered it (None if it came via the registry or from a file).
    pub source: Option<u32>,
}

/// Why a local operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Revoke of a node that is not trusted.
    #[error("node {0} is not trusted")]
    NotTrusted(u32),
    /// Approve or reject of a node with no pending request.
    #[error("no pending request from node {0}")]
    NotPending(u32),
    /// Too many outstanding outgoing requests.
    #[error("too many outstanding requests")]
    TooManyOutgoing,
}

/// Keeps printable characters (no controls) and cuts to
/// [`MAX_JUSTIFICATION`] bytes on a character boundary.
pub fn sanitize_text(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_JUSTIFICATION {
            break;
        }
        out.push(c);
    }
    out
}

/// The trust state of one daemon (`spec/services.md` §4.3–§4.5).
#[derive(Debug)]
pub struct TrustStore {
    profile: WireProfile,
    me: u32,
    key: SigningKey,
    trusted: BTreeMap<u32, Trusted>,
    pending: BTreeMap<u32, Pending>,
    outgoing: BTreeMap<u32, i64>,
    revoked: Vec<RevokedEntry>,
    replay: ReplayCache,
    /// Counts grants and requests, so an answer can tell what is newer
    /// than the question it answers ([`TrustStore::revision`]).
    revision: u64,
    /// Revision of the latest grant (or re-affirmed trust) per peer.
    granted_rev: BTreeMap<u32, u64>,
    /// Revision of the latest request per peer, sent or received.
    asked_rev: BTreeMap<u32, u64>,
    /// Per receiver, the timestamp of the last message we sent it, while
    /// that is not in the past ([`TrustStore::message`]).
    sent_ts: BTreeMap<u32, i64>,
    /// Per sender, the newest timestamps of a request or accept, and of
    /// a revoke, it sent us, while a message older than them could still
    /// pass the age check: a revoke older than the sender's later request
    /// or accept is stale, and so is an accept older than its revoke
    /// (§4.3).
    peer_ts: BTreeMap<u32, PeerStamps>,
}

impl TrustStore {
    /// An empty store for node `me` signing with `key`.
    pub fn new(profile: WireProfile, me: u32, key: SigningKey) -> Self {
        TrustStore {
            profile,
            me,
            key,
            trusted: BTreeMap::new(),
            pending: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            revoked: Vec::new(),
            replay: ReplayCache::default(),
            revision: 0,
            granted_rev: BTreeMap::new(),
            asked_rev: BTreeMap::new(),
            sent_ts: BTreeMap::new(),
            peer_ts: BTreeMap::new(),
        }
    }

    /// The current revision: every grant, re-affirmed trust and request
    /// (sent or received) after this call gets a larger one. A daemon
    /// that asks the registry about a peer notes it, and hands it back
    /// with the answer ([`TrustStore::on_registry_revoke`]).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Stamps a grant of (or re-affirmed trust in) `node`. The sweep
    /// keeps `node`'s stamp: its trust may be inserted only after this.
    fn stamp_grant(&mut self, node: u32) {
        self.revision += 1;
        self.granted_rev.insert(node, self.revision);
        if self.granted_rev.len() > self.trusted.len() + STAMP_SLACK {
            let trusted = &self.trusted;
            self.granted_rev
                .retain(|n, _| *n == node || trusted.contains_key(n));
        }
    }

    /// Stamps a request to or from `node`; the sweep keeps `node`'s stamp
    /// (its pending entry may be inserted only after this).
    fn stamp_ask(&mut self, node: u32) {
        self.revision += 1;
        self.asked_rev.insert(node, self.revision);
        if self.asked_rev.len() > self.pending.len() + self.outgoing.len() + STAMP_SLACK {
            let (pending, outgoing) = (&self.pending, &self.outgoing);
            self.asked_rev
                .retain(|n, _| *n == node || pending.contains_key(n) || outgoing.contains_key(n));
        }
    }

    /// An empty store for node `me` signing with the node's long-term
    /// identity (the same Ed25519 key the registry knows).
    pub fn from_identity(profile: WireProfile, me: u32, identity: &Identity) -> Self {
        Self::new(profile, me, SigningKey::from_bytes(identity.seed()))
    }

    /// Signs with a new identity from now on (a key rotation); trust
    /// relations are by node ID and stay.
    pub fn set_identity(&mut self, identity: &Identity) {
        self.key = SigningKey::from_bytes(identity.seed());
    }

    /// Trusted peers.
    pub fn trusted(&self) -> &BTreeMap<u32, Trusted> {
        &self.trusted
    }

    /// Pending requests.
    pub fn pending(&self) -> &BTreeMap<u32, Pending> {
        &self.pending
    }

    /// Unanswered requests of ours: node id → Unix seconds sent.
    pub fn outgoing(&self) -> &BTreeMap<u32, i64> {
        &self.outgoing
    }

    /// Whether we have an unanswered request to `node`.
    pub fn is_outgoing(&self, node: u32) -> bool {
        self.outgoing.contains_key(&node)
    }

    /// A signed message of ours to `to`. Messages to one peer carry
    /// strictly increasing timestamps: one sent within the second of the
    /// previous gets the next second (at most [`MAX_TIMESTAMP_LEAD`] ahead
    /// of the clock). The signature covers only the two node IDs and the
    /// timestamp counts seconds, so otherwise the same message sent twice
    /// in a second (a request asked again right after a revoke, a second
    /// accept) would be identical and the receiver's replay check (§4.2)
    /// would drop it; and a receiver can tell that our revoke is older
    /// than our later request or accept (§4.3).
    fn message(
        &mut self,
        kind: MessageType,
        to: u32,
        text: &str,
        now: WallTime,
    ) -> HandshakeMessage {
        let clock = now.unix_secs;
        self.sent_ts.retain(|_, ts| *ts >= clock);
        let timestamp = match self.sent_ts.get(&to) {
            Some(ts) => (*ts + 1).min(clock + MAX_TIMESTAMP_LEAD),
            None => clock,
        };
        if self.sent_ts.len() < TIMESTAMP_CAP || self.sent_ts.contains_key(&to) {
            self.sent_ts.insert(to, timestamp);
        }
        let (justification, reason) = match kind {
            MessageType::Request => (text.to_owned(), String::new()),
            _ => (String::new(), text.to_owned()),
        };
        HandshakeMessage {
            kind,
            node_id: self.me,
            public_key: B64.encode(self.key.verifying_key().as_bytes()),
            justification,
            signature: sign(&self.key, self.me, to),
            reason,
            timestamp,
        }
    }

    fn grant(&mut self, node: u32, key: String, mutual: bool, network: u16, now: WallTime) {
        self.pending.remove(&node);
        self.outgoing.remove(&node);
        self.stamp_grant(node);
        self.trusted.insert(
            node,
            Trusted {
                public_key: key,
                approved_at: now,
                mutual,
                network,
            },
        );
    }

    /// Drops expired outgoing and pending entries; returns whether the
    /// persisted state changed.
    pub fn expire(&mut self, now: WallTime) -> bool {
        let t = now.unix_secs;
        self.outgoing
            .retain(|_, sent| t.saturating_sub(*sent) < OUTGOING_TTL_SECS);
        let before = self.pending.len();
        self.pending
            .retain(|_, p| t.saturating_sub(p.received_at.unix_secs) < PENDING_TTL_SECS);
        before != self.pending.len()
    }

    /// Validates one received chunk (`spec/services.md` §4.2); `Err` means
    /// drop it silently.
    pub fn validate(
        &mut self,
        bytes: &[u8],
        inbound: &Inbound,
        now: WallTime,
    ) -> Result<HandshakeMessage, Invalid> {
        let msg = HandshakeMessage::decode(bytes, self.profile)?;
        let age = now.unix_secs.saturating_sub(msg.timestamp);
        if !(-MAX_SKEW_SECS..=MAX_AGE_SECS).contains(&age) {
            return Err(Invalid::Stale);
        }
        if self.profile == WireProfile::Current
            && msg.kind == MessageType::Request
            && msg.public_key.is_empty()
        {
            return Err(Invalid::MissingKey);
        }
        msg.verify(self.me)?;
        if let Some(reg) = inbound.registry_key {
            if !msg.public_key.is_empty()
                && parse_key(&msg.public_key).map(|k| k.to_bytes()) != Some(reg)
            {
                return Err(Invalid::KeyMismatch);
            }
        }
        if !self.replay.insert(msg.replay_hash(), now.unix_secs) {
            return Err(Invalid::Replay);
        }
        Ok(msg)
    }

    /// Handles one received chunk on port 444 (`spec/services.md` §4.3).
    /// Invalid input yields no effects.
    pub fn on_message(&mut self, bytes: &[u8], inbound: Inbound, now: WallTime) -> Vec<Effect> {
        let Ok(msg) = self.validate(bytes, &inbound, now) else {
            return Vec::new();
        };
        let n = msg.node_id;
        let me = self.me;
        // Auto-approval needs the key to be the registry's key for `n`.
        let bound = !msg.public_key.is_empty()
            && inbound.registry_key.is_some()
            && parse_key(&msg.public_key).map(|k| k.to_bytes()) == inbound.registry_key;
        // Order of a peer's own messages: a revoke older than a request or
        // accept it sent later is stale. Only messages signed with the
        // registry's key for `n` and carried by `n`'s own tunnel count
        // (the signature does not cover the timestamp).
        let own = bound && inbound.source == n;
        let seen = self.peer_ts.get(&n).copied().unwrap_or_default();
        match msg.kind {
            MessageType::Revoke if seen.affirmed > msg.timestamp => {
                return vec![Effect::Event(TrustEvent::StaleRevoke { node: n })];
            }
            MessageType::Accept if seen.revoked > msg.timestamp => return Vec::new(),
            _ => {}
        }
        if own {
            self.note_peer_ts(n, msg.kind, msg.timestamp, now);
        }
        let mut fx = Vec::new();
        match msg.kind {
            MessageType::Request => {
                fx.push(Effect::Event(TrustEvent::Received {
                    node: n,
                    justification: msg.justification.clone(),
                }));
                let accept = |s: &mut Self| Effect::Send {
                    to: n,
                    message: s.message(MessageType::Accept, n, "", now),
                    fallback: None,
                };
                if self.trusted.contains_key(&n) {
                    // A peer we trust asks again: it lost its trust in
                    // us. Our accept restores it; a registry answer about
                    // an older revoke must not now take ours away.
                    self.stamp_grant(n);
                    fx.push(accept(self));
                } else if bound && self.outgoing.contains_key(&n) {
                    self.grant(n, msg.public_key.clone(), true, 0, now);
                    fx.extend([
                        Effect::Persist,
                        accept(self),
                        Effect::Registry(RegistryOp::ReportTrust { me, peer: n }),
                        Effect::Event(TrustEvent::AutoApproved {
                            node: n,
                            reason: AutoReason::Mutual,
                        }),
                    ]);
                } else if let (true, Some(net)) = (bound, inbound.shared_network) {
                    self.grant(n, msg.public_key.clone(), false, net, now);
                    fx.extend([
                        Effect::Persist,
                        accept(self),
                        Effect::Registry(RegistryOp::ReportTrust { me, peer: n }),
                        Effect::Event(TrustEvent::AutoApproved {
                            node: n,
                            reason: AutoReason::SameNetwork(net),
                        }),
                    ]);
                } else if self.add_pending(
                    n,
                    msg.public_key.clone(),
                    &msg.justification,
                    Some(inbound.source),
                    now,
                ) {
                    fx.extend([
                        Effect::Persist,
                        Effect::Event(TrustEvent::Pending {
                            node: n,
                            justification: msg.justification.clone(),
                        }),
                    ]);
                }
            }
            MessageType::Accept => {
                // Fix of a v1.8 flaw: only an answer to our own request counts.
                if self.outgoing.contains_key(&n) && self.trusted.contains_key(&n) {
                    fx.extend(self.reaffirmed(n));
                } else if self.outgoing.contains_key(&n) {
                    self.grant(n, msg.public_key.clone(), true, 0, now);
                    fx.extend([
                        Effect::Persist,
                        Effect::Event(TrustEvent::AcceptedByPeer { node: n }),
                        Effect::Registry(RegistryOp::ReportTrust { me, peer: n }),
                    ]);
                }
            }
            MessageType::Reject => {
                if self.outgoing.remove(&n).is_some() {
                    fx.push(Effect::Event(TrustEvent::RejectedByPeer { node: n }));
                }
            }
            MessageType::Revoke => {
                fx.push(Effect::Event(TrustEvent::RevokedByPeer { node: n }));
                let was_trusted = self.trusted.remove(&n).is_some();
                let was_pending = self.pending.remove(&n).is_some();
                if was_trusted || was_pending {
                    fx.push(Effect::Persist);
                }
                fx.push(Effect::DropTunnel(n));
                // Ours: a request of ours to `n` outstanding means we asked
                // again, and it may have crossed this revoke: `n` may take
                // it as a new request and accept. The request stays, and
                // the registry's pair is `n`'s to remove (it did): our
                // `revoke_trust` could arrive after `n` reported the trust
                // it gave again and take that away. Otherwise as v1.8:
                // forget the request and remove the pair.
                if !self.outgoing.contains_key(&n) && was_trusted {
                    fx.push(Effect::Registry(RegistryOp::RevokeTrust { me, peer: n }));
                }
            }
        }
        fx
    }

    /// Remembers the timestamp of a message `n` sent us itself. Kept
    /// while a message older than it could still pass the age check.
    fn note_peer_ts(&mut self, n: u32, kind: MessageType, ts: i64, now: WallTime) {
        let oldest_valid = now.unix_secs - MAX_AGE_SECS;
        self.peer_ts
            .retain(|_, s| s.affirmed.max(s.revoked) >= oldest_valid);
        if self.peer_ts.len() >= TIMESTAMP_CAP && !self.peer_ts.contains_key(&n) {
            return;
        }
        let e = self.peer_ts.entry(n).or_default();
        match kind {
            MessageType::Request | MessageType::Accept => e.affirmed = e.affirmed.max(ts),
            MessageType::Revoke => e.revoked = e.revoked.max(ts),
            MessageType::Reject => {}
        }
    }

    /// Stores or overwrites a pending request within the bounds of
    /// `spec/services.md` §4.7; false if refused.
    fn add_pending(
        &mut self,
        node: u32,
        public_key: String,
        justification: &str,
        source: Option<u32>,
        now: WallTime,
    ) -> bool {
        self.expire(now);
        if !self.pending.contains_key(&node) {
            if self.pending.len() >= PENDING_CAP {
                return false;
            }
            if let Some(src) = source {
                let from_src = self
                    .pending
                    .values()
                    .filter(|p| p.source == Some(src))
                    .count();
                if from_src >= PENDING_PER_SOURCE {
                    return false;
                }
            }
        }
        self.stamp_ask(node);
        self.pending.insert(
            node,
            Pending {
                public_key,
                justification: sanitize_text(justification),
                received_at: now,
                source,
            },
        );
        true
    }

    /// Local operation: ask `peer` for trust (`spec/services.md` §4.4).
    pub fn send_request(
        &mut self,
        peer: u32,
        justification: &str,
        now: WallTime,
    ) -> Result<Vec<Effect>, TrustError> {
        // Asked while we still trust `peer`: the request goes out all the
        // same. The peer may have revoked us without our knowing yet (its
        // revoke message lost, the registry's push not yet here); a peer
        // that still trusts us just answers accept. The reference treats
        // this as a no-op and says "sent" (`spec/services.md` §4.4).
        self.expire(now);
        if !self.outgoing.contains_key(&peer) && self.outgoing.len() >= OUTGOING_CAP {
            return Err(TrustError::TooManyOutgoing);
        }
        self.outgoing.insert(peer, now.unix_secs);
        self.stamp_ask(peer);
        self.revoked.retain(|r| r.node_id != peer);
        let message = self.message(MessageType::Request, peer, justification, now);
        let fallback = Some(RegistryOp::RequestHandshake {
            from: self.me,
            to: peer,
            justification: justification.to_owned(),
            signature: message.signature.clone(),
        });
        Ok(vec![Effect::Send {
            to: peer,
            message,
            fallback,
        }])
    }

    /// Local operation: approve a pending request. The peer asked and we
    /// accept, so both sides hold the trust: it is recorded as mutual
    /// (ours; v1.8 records `false` here while the requester records
    /// `true`). A request that came without a key gets it looked up.
    pub fn approve(&mut self, peer: u32, now: WallTime) -> Result<Vec<Effect>, TrustError> {
        let Some(p) = self.pending.remove(&peer) else {
            return Err(TrustError::NotPending(peer));
        };
        let keyless = p.public_key.is_empty();
        self.grant(peer, p.public_key, true, 0, now);
        let me = self.me;
        let respond = RegistryOp::RespondHandshake {
            from: me,
            to: peer,
            accept: true,
        };
        let mut fx = vec![
            Effect::Persist,
            Effect::Event(TrustEvent::Approved { node: peer }),
            Effect::Registry(RegistryOp::ReportTrust { me, peer }),
            Effect::Registry(respond.clone()),
            Effect::Send {
                to: peer,
                message: self.message(MessageType::Accept, peer, "", now),
                fallback: Some(respond),
            },
        ];
        if keyless {
            fx.push(Effect::Registry(RegistryOp::Lookup { node: peer }));
        }
        Ok(fx)
    }

    /// Local operation: reject a pending request (an error if none).
    pub fn reject(
        &mut self,
        peer: u32,
        reason: &str,
        now: WallTime,
    ) -> Result<Vec<Effect>, TrustError> {
        if self.pending.remove(&peer).is_none() {
            return Err(TrustError::NotPending(peer));
        }
        let mut fx = vec![Effect::Persist];
        fx.extend([
            Effect::Event(TrustEvent::Rejected {
                node: peer,
                reason: reason.to_owned(),
            }),
            Effect::Registry(RegistryOp::RespondHandshake {
                from: self.me,
                to: peer,
                accept: false,
            }),
            Effect::Send {
                to: peer,
                message: self.message(MessageType::Reject, peer, reason, now),
                fallback: None,
            },
        ]);
        Ok(fx)
    }

    /// The registry no longer holds a trust pair with `peer` after it told
    /// us `peer` revoked it (ours, `spec/services.md` §4.5): forget `peer`
    /// as if its revoke message had arrived. `asked_at` is the
    /// [`TrustStore::revision`] when the registry was asked: only state
    /// older than the question goes. A grant, a re-affirmed trust or a
    /// request made while the question was on its way is newer than the
    /// revoke the answer confirms, and stays.
    pub fn on_registry_revoke(&mut self, peer: u32, asked_at: u64) -> Vec<Effect> {
        let older = |rev: Option<&u64>| rev.is_none_or(|r| *r <= asked_at);
        let mut was_trusted = false;
        let mut was_pending = false;
        if older(self.granted_rev.get(&peer)) {
            was_trusted = self.trusted.remove(&peer).is_some();
        }
        if older(self.asked_rev.get(&peer)) {
            was_pending = self.pending.remove(&peer).is_some();
            self.outgoing.remove(&peer);
        }
        if !was_trusted && !was_pending {
            return Vec::new();
        }
        vec![
            Effect::Event(TrustEvent::RevokedByPeer { node: peer }),
            Effect::Persist,
            Effect::DropTunnel(peer),
        ]
    }

    /// Peers whose trust came only from a shared network (auto-approval,
    /// `spec/services.md` §4.3), with that network.
    pub fn network_grants(&self) -> impl Iterator<Item = (u32, u16)> + '_ {
        self.trusted
            .iter()
            .filter(|(_, t)| t.network != 0 && !t.mutual)
            .map(|(n, t)| (*n, t.network))
    }

    /// The membership in `network` that granted trust in `peer` ended
    /// (ours or the peer's: a kick, a leave or the network's deletion):
    /// that trust goes, like a local revoke but without a message to the
    /// peer (`spec/services.md` §4.8). Trust given explicitly (a mutual
    /// request, an approval) or by another network stays; then nothing
    /// happens.
    pub fn end_network_grant(&mut self, peer: u32, network: u16) -> Vec<Effect> {
        let granted_by_it = self
            .trusted
            .get(&peer)
            .is_some_and(|t| network != 0 && t.network == network && !t.mutual);
        if !granted_by_it {
            return Vec::new();
        }
        self.trusted.remove(&peer);
        let me = self.me;
        vec![
            Effect::Persist,
            Effect::Event(TrustEvent::NetworkEnded {
                node: peer,
                network,
            }),
            Effect::DropTunnel(peer),
            Effect::Registry(RegistryOp::RevokeTrust { me, peer }),
        ]
    }

    /// Local operation: revoke trust in `peer`.
    pub fn revoke(&mut self, peer: u32, now: WallTime) -> Result<Vec<Effect>, TrustError> {
        if self.trusted.remove(&peer).is_none() {
            return Err(TrustError::NotTrusted(peer));
        }
        self.pending.remove(&peer);
        self.outgoing.remove(&peer);
        let me = self.me;
        Ok(vec![
            Effect::Persist,
            Effect::Event(TrustEvent::Revoked { node: peer }),
            Effect::DropTunnel(peer),
            Effect::Registry(RegistryOp::RevokeTrust { me, peer }),
            Effect::Send {
                to: peer,
                message: self.message(MessageType::Revoke, peer, REVOKE_REASON, now),
                fallback: None,
            },
        ])
    }

    /// A request relayed by the registry (`spec/services.md` §4.5).
    pub fn on_relayed_request(
        &mut self,
        from: u32,
        justification: &str,
        now: WallTime,
    ) -> Vec<Effect> {
        let me = self.me;
        let accept = Effect::Registry(RegistryOp::RespondHandshake {
            from: me,
            to: from,
            accept: true,
        });
        // As for a direct request, `handshake.received` comes first.
        let received = Effect::Event(TrustEvent::Received {
            node: from,
            justification: justification.to_owned(),
        });
        if self.trusted.contains_key(&from) {
            // As for a direct request: the peer lost its trust in us, our
            // accept restores it, and an older revoke must not now take
            // ours away.
            self.stamp_grant(from);
            return vec![received, accept];
        }
        if self.outgoing.contains_key(&from) {
            self.grant(from, String::new(), true, 0, now);
            return vec![
                received,
                Effect::Persist,
                accept,
                Effect::Registry(RegistryOp::ReportTrust { me, peer: from }),
                Effect::Event(TrustEvent::AutoApproved {
                    node: from,
                    reason: AutoReason::Mutual,
                }),
                Effect::Registry(RegistryOp::Lookup { node: from }),
            ];
        }
        if self.add_pending(from, String::new(), justification, None, now) {
            return vec![
                received,
                Effect::Persist,
                Effect::Event(TrustEvent::Pending {
                    node: from,
                    justification: justification.to_owned(),
                }),
            ];
        }
        Vec::new()
    }

    /// A response relayed by the registry (`spec/services.md` §4.5). An
    /// accept only counts for a request we sent.
    pub fn on_relayed_response(&mut self, from: u32, accept: bool, now: WallTime) -> Vec<Effect> {
        if !accept {
            if self.outgoing.remove(&from).is_some() {
                return vec![Effect::Event(TrustEvent::RejectedByPeer { node: from })];
            }
            return Vec::new();
        }
        if !self.outgoing.contains_key(&from) {
            return Vec::new();
        }
        if self.trusted.contains_key(&from) {
            return self.reaffirmed(from);
        }
        self.grant(from, String::new(), true, 0, now);
        vec![
            Effect::Persist,
            Effect::Event(TrustEvent::AcceptedByPeer { node: from }),
            Effect::Registry(RegistryOp::ReportTrust {
                me: self.me,
                peer: from,
            }),
            Effect::Registry(RegistryOp::Lookup { node: from }),
        ]
    }

    /// The peer accepted a request we sent while we still trusted it:
    /// the request is answered, and the trust it confirms is newer than
    /// any revoke the registry may still report (stamped like a grant).
    fn reaffirmed(&mut self, peer: u32) -> Vec<Effect> {
        self.outgoing.remove(&peer);
        self.stamp_grant(peer);
        vec![Effect::Registry(RegistryOp::ReportTrust {
            me: self.me,
            peer,
        })]
    }

    /// Answer to [`RegistryOp::Lookup`]: back-fills the key of a trusted
    /// peer whose key is unknown.
    pub fn key_learned(&mut self, node: u32, key: &[u8; 32]) -> Vec<Effect> {
        match self.trusted.get_mut(&node) {
            Some(t) if t.public_key.is_empty() => {
                t.public_key = B64.encode(key);
                vec![Effect::Persist]
            }
            _ => Vec::new(),
        }
    }

    /// The persistent state as a `trust.json` document.
    pub fn to_file(&self) -> TrustFile {
        let trusted: Vec<TrustedEntry> = self
            .trusted
            .iter()
            .map(|(&node_id, t)| TrustedEntry {
                node_id,
                public_key: t.public_key.clone(),
                approved_at: t.approved_at.rfc3339().to_string(),
                mutual: t.mutual,
                network: t.network,
            })
            .collect();
        TrustFile {
            trusted: (!trusted.is_empty()).then_some(trusted),
            pending: Some(
                self.pending
                    .iter()
                    .map(|(&node_id, p)| PendingEntry {
                        node_id,
                        public_key: p.public_key.clone(),
                        justification: p.justification.clone(),
                        received_at: p.received_at.rfc3339().to_string(),
                        source: p.source,
                    })
                    .collect(),
            ),
            revoked: (!self.revoked.is_empty()).then(|| self.revoked.clone()),
        }
    }

    /// Loads a `trust.json` document. Entries with unparsable times are
    /// skipped; the pending bounds apply.
    pub fn load(&mut self, file: &TrustFile, now: WallTime) {
        for t in file.trusted.iter().flatten() {
            if let Ok(at) = WallTime::parse_rfc3339(&t.approved_at) {
                self.trusted.insert(
                    t.node_id,
                    Trusted {
                        public_key: t.public_key.clone(),
                        approved_at: at,
                        mutual: t.mutual,
                        network: t.network,
                    },
                );
            }
        }
        for p in file.pending.iter().flatten() {
            if let Ok(at) = WallTime::parse_rfc3339(&p.received_at) {
                self.add_pending(
                    p.node_id,
                    p.public_key.clone(),
                    &p.justification,
                    p.source,
                    at,
                );
            }
        }
        self.expire(now);
        self.revoked = file.revoked.clone().unwrap_or_default();
    }
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// A trusted entry of `trust.json` (`spec/services.md` §4.6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, arbitrary::Arbitrary)]
pub struct TrustedEntry {
    /// Peer node ID.
    pub node_id: u32,
    /// Base64 key (may be empty).
    #[serde(default)]
    pub public_key: String,
    /// RFC 3339 grant time.
    pub approved_at: String,
    /// Granted by mutual request.
    #[serde(default)]
    pub mutual: bool,
    /// Network that granted it; omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub network: u16,
}

/// A pending entry of `trust.json` (`spec/services.md` §4.6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, arbitrary::Arbitrary)]
pub struct PendingEntry {
    /// Requester node ID.
    pub node_id: u32,
    /// Base64 key; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// Justification; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub justification: String,
    /// RFC 3339 arrival time.
    pub received_at: String,
    /// Delivering node; omitted when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<u32>,
}

/// A revoked entry of `trust.json` (current generation; kept as read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, arbitrary::Arbitrary)]
pub struct RevokedEntry {
    /// Revoked node ID.
    pub node_id: u32,
    /// RFC 3339 end of the cooldown.
    pub until: String,
}

/// The whole `trust.json` document (`spec/services.md` §4.6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, arbitrary::Arbitrary)]
pub struct TrustFile {
    /// Trusted peers; `null` when empty.
    pub trusted: Option<Vec<TrustedEntry>>,
    /// Pending requests.
    #[serde(default)]
    pub pending: Option<Vec<PendingEntry>>,
    /// Revoke cooldowns; omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Vec<RevokedEntry>>,
}

/// Why `trust.json` did not decode.
#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    /// Not a valid document.
    #[error("bad trust.json: {0}")]
    Json(#[from] serde_json::Error),
}

impl TrustFile {
    /// The 2-space-indented document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a document.
    pub fn from_json(text: &[u8]) -> Result<TrustFile, TrustFileError> {
        Ok(serde_json::from_slice(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = r#"{"type":"handshake_request","node_id":1,"public_key":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=","justification":"hi","signature":"BAGl08PXCNSQpCCtg1qxlDoILmzWX/p7IqG5uOBb4PkVDUTKTKPc574gKaUyovoGugXzHxKyQiPEsETMqTsLBQ==","reason":"","timestamp":1767225600}"#;
    const T0: i64 = 1_767_225_600;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }
    fn at(secs: i64) -> WallTime {
        WallTime::new(secs, 0)
    }
    fn raw(seed: u8) -> [u8; 32] {
        key(seed).verifying_key().to_bytes()
    }
    fn bound(seed: u8, source: u32) -> Inbound {
        Inbound {
            source,
            registry_key: Some(raw(seed)),
            shared_network: None,
        }
    }
    fn store(me: u32, seed: u8) -> TrustStore {
        TrustStore::new(WireProfile::Current, me, key(seed))
    }
    fn sent(fx: &[Effect]) -> Vec<&HandshakeMessage> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn reference_example_is_reproduced_and_verifies() {
        assert_eq!(EXAMPLE.len(), 259);
        let mut s = store(1, 1);
        let m = s.message(MessageType::Request, 2, "hi", at(T0));
        assert_eq!(m.to_json(), EXAMPLE);
        let d = HandshakeMessage::decode(EXAMPLE.as_bytes(), WireProfile::Legacy).unwrap();
        assert_eq!(d, m);
        assert_eq!(d.verify(2), Ok(()));
        assert_eq!(d.verify(3), Err(Invalid::BadSignature));
    }

    #[test]
    fn identity_signs_like_its_seed() {
        use crate::crypto::provider::RustCrypto;
        let id = Identity::from_seed(&RustCrypto, [1; 32]);
        let mut s = TrustStore::from_identity(WireProfile::Current, 1, &id);
        assert_eq!(
            s.message(MessageType::Request, 2, "hi", at(T0)).to_json(),
            EXAMPLE
        );
    }

    #[test]
    fn validation_window_replay_and_binding() {
        let mut b = store(2, 2);
        let inb = bound(1, 1);
        assert_eq!(
            b.validate(EXAMPLE.as_bytes(), &inb, at(T0 + 301)),
            Err(Invalid::Stale)
        );
        assert_eq!(
            b.validate(EXAMPLE.as_bytes(), &inb, at(T0 - 31)),
            Err(Invalid::Stale)
        );
        assert!(b.validate(EXAMPLE.as_bytes(), &inb, at(T0 + 300)).is_ok());
        assert_eq!(
            b.validate(EXAMPLE.as_bytes(), &inb, at(T0 + 10)),
            Err(Invalid::Replay)
        );
        let mut c = store(2, 2);
        assert_eq!(
            c.validate(EXAMPLE.as_bytes(), &bound(9, 1), at(T0)),
            Err(Invalid::KeyMismatch)
        );
        let mut m = HandshakeMessage::decode(EXAMPLE.as_bytes(), WireProfile::Current).unwrap();
        m.public_key.clear();
        assert_eq!(
            c.validate(m.to_json().as_bytes(), &inb, at(T0)),
            Err(Invalid::MissingKey)
        );
        let mut legacy = TrustStore::new(WireProfile::Legacy, 2, key(2));
        assert!(
            legacy
                .validate(m.to_json().as_bytes(), &inb, at(T0))
                .is_ok()
        );
        let big = vec![b' '; MAX_MESSAGE_LEGACY + 1];
        assert_eq!(
            legacy.validate(&big, &inb, at(T0)),
            Err(Invalid::TooLarge(4097))
        );
    }

    #[test]
    fn request_goes_pending_then_manual_approve() {
        let mut b = store(2, 2);
        let fx = b.on_message(EXAMPLE.as_bytes(), bound(1, 1), at(T0));
        assert!(fx.contains(&Effect::Event(TrustEvent::Pending {
            node: 1,
            justification: "hi".into()
        })));
        assert!(fx.contains(&Effect::Persist));
        assert!(sent(&fx).is_empty());
        assert_eq!(b.pending()[&1].justification, "hi");
        let fx = b.approve(1, at(T0 + 5)).unwrap();
        assert!(b.trusted().contains_key(&1) && b.pending().is_empty());
        // Approving a request makes trust mutual, as the requester sees it.
        assert!(b.trusted()[&1].mutual);
        assert!(!b.trusted()[&1].public_key.is_empty());
        // The request carried its key: no lookup needed.
        assert!(!fx.contains(&Effect::Registry(RegistryOp::Lookup { node: 1 })));
        assert_eq!(sent(&fx)[0].kind, MessageType::Accept);
        assert!(fx.contains(&Effect::Registry(RegistryOp::ReportTrust {
            me: 2,
            peer: 1
        })));
        assert_eq!(b.approve(1, at(T0 + 6)), Err(TrustError::NotPending(1)));
        assert_eq!(
            b.reject(1, "no", at(T0 + 6)),
            Err(TrustError::NotPending(1))
        );
    }

    #[test]
    fn mutual_requests_auto_approve_only_with_confirmed_key() {
        let mut a = store(1, 1);
        let mut b = store(2, 2);
        let fx = b.send_request(1, "hello", at(T0)).unwrap();
        let req_b = sent(&fx)[0].to_json();
        assert!(b.is_outgoing(1));
        // Without a registry binding: pending, not trust.
        let mut b2 = store(2, 2);
        b2.send_request(1, "x", at(T0)).unwrap();
        b2.on_message(
            EXAMPLE.as_bytes(),
            Inbound {
                source: 1,
                ..Inbound::default()
            },
            at(T0),
        );
        assert!(b2.trusted().is_empty() && b2.pending().contains_key(&1));
        // With it: trust, accept, report.
        let fx = b.on_message(EXAMPLE.as_bytes(), bound(1, 1), at(T0));
        assert!(b.trusted()[&1].mutual);
        assert!(fx.contains(&Effect::Event(TrustEvent::AutoApproved {
            node: 1,
            reason: AutoReason::Mutual
        })));
        let accept = sent(&fx)[0].to_json();
        // A receives B's request (pending), then B's accept: A never asked, so ignored.
        a.on_message(req_b.as_bytes(), bound(2, 2), at(T0));
        assert!(a.pending().contains_key(&2));
        assert!(
            a.on_message(accept.as_bytes(), bound(2, 2), at(T0))
                .is_empty()
        );
        assert!(a.trusted().is_empty());
    }

    #[test]
    fn accept_after_own_request_grants_trust() {
        let mut a = store(1, 1);
        let mut b = store(2, 2);
        let fx = a.send_request(2, "hi", at(T0)).unwrap();
        assert!(matches!(
            &fx[0],
            Effect::Send {
                fallback: Some(RegistryOp::RequestHandshake { .. }),
                ..
            }
        ));
        b.on_message(sent(&fx)[0].to_json().as_bytes(), bound(1, 1), at(T0));
        let fx = b.approve(1, at(T0 + 1)).unwrap();
        let fx = a.on_message(sent(&fx)[0].to_json().as_bytes(), bound(2, 2), at(T0 + 1));
        assert!(a.trusted().contains_key(&2) && !a.is_outgoing(2));
        assert!(fx.contains(&Effect::Event(TrustEvent::AcceptedByPeer { node: 2 })));
        // Both sides list the relationship the same way.
        assert!(a.trusted()[&2].mutual && b.trusted()[&1].mutual);
        assert!(fx.contains(&Effect::Registry(RegistryOp::ReportTrust {
            me: 1,
            peer: 2
        })));
        // Already trusted: the request goes out all the same (B may have
        // revoked us unbeknown to A). B, still trusting A, accepts, and
        // that answers it: no second grant, the pair reported again.
        let fx = a.send_request(2, "again", at(T0 + 2)).unwrap();
        assert_eq!(sent(&fx).len(), 1);
        assert!(a.is_outgoing(2));
        let fx = b.on_message(sent(&fx)[0].to_json().as_bytes(), bound(1, 1), at(T0 + 2));
        let fx = a.on_message(sent(&fx)[0].to_json().as_bytes(), bound(2, 2), at(T0 + 2));
        assert!(a.trusted().contains_key(&2) && !a.is_outgoing(2));
        assert_eq!(
            fx,
            vec![Effect::Registry(RegistryOp::ReportTrust { me: 1, peer: 2 })]
        );
        // Revoke from B removes trust on A.
        let fx = b.revoke(1, at(T0 + 3)).unwrap();
        assert_eq!(sent(&fx)[0].reason, REVOKE_REASON);
        let fx = a.on_message(sent(&fx)[0].to_json().as_bytes(), bound(2, 2), at(T0 + 3));
        assert!(a.trusted().is_empty());
        assert!(fx.contains(&Effect::DropTunnel(2)));
        assert!(fx.contains(&Effect::Registry(RegistryOp::RevokeTrust {
            me: 1,
            peer: 2
        })));
        assert_eq!(b.revoke(1, at(T0 + 4)), Err(TrustError::NotTrusted(1)));
    }

    #[test]
    fn keyless_approval_looks_the_key_up_and_registry_revoke_forgets() {
        let mut b = store(2, 2);
        b.on_relayed_request(7, "via registry", at(T0));
        let fx = b.approve(7, at(T0 + 1)).unwrap();
        assert!(b.trusted()[&7].mutual);
        assert!(fx.contains(&Effect::Registry(RegistryOp::Lookup { node: 7 })));
        let fx = b.on_registry_revoke(7, b.revision());
        assert!(b.trusted().is_empty());
        assert!(fx.contains(&Effect::Event(TrustEvent::RevokedByPeer { node: 7 })));
        assert!(fx.contains(&Effect::Persist));
        // Nothing to forget: nothing happens.
        assert!(b.on_registry_revoke(7, b.revision()).is_empty());
    }

    /// B revoked A, but B's revoke message never reached A (B dropped the
    /// tunnel), so A learns of it from the registry: a push, then a
    /// `check_trust` whose answer comes back later. Meanwhile B asked for
    /// trust again and A, still trusting B, accepted. The answer (the
    /// registry had no pair when it looked) confirms the old revoke, and
    /// must not take away the trust A just re-affirmed: before, it did,
    /// and B ended up trusting A while A trusted nobody, for good.
    #[test]
    fn a_registry_answer_does_not_undo_what_happened_after_the_question() {
        let (mut a, mut b) = (store(1, 1), store(2, 2));
        let fx = a.send_request(2, "first", at(T0)).unwrap();
        b.on_message(sent(&fx)[0].to_json().as_bytes(), bound(1, 1), at(T0));
        let fx = b.approve(1, at(T0 + 1)).unwrap();
        a.on_message(sent(&fx)[0].to_json().as_bytes(), bound(2, 2), at(T0 + 1));
        assert!(a.trusted().contains_key(&2) && b.trusted().contains_key(&1));
        b.revoke(1, at(T0 + 2)).unwrap(); // its message is lost
        // The registry's push arrives at A: A asks, noting its revision.
        let asked_at = a.revision();
        // B asks again before the answer; A still trusts B and accepts.
        let fx = b.send_request(1, "again", at(T0 + 2)).unwrap();
        let fx = a.on_message(sent(&fx)[0].to_json().as_bytes(), bound(2, 2), at(T0 + 2));
        b.on_message(sent(&fx)[0].to_json().as_bytes(), bound(1, 1), at(T0 + 2));
        assert!(b.trusted().contains_key(&1));
        // The answer: no pair (as the registry saw it). A keeps B.
        assert!(a.on_registry_revoke(2, asked_at).is_empty());
        assert!(a.trusted().contains_key(&2));
        // Without anything newer the same answer forgets B, and a request
        // A makes after the question survives it.
        let asked_at = a.revision();
        let fx = a.on_registry_revoke(2, asked_at);
        assert!(fx.contains(&Effect::DropTunnel(2)));
        assert!(a.trusted().is_empty());
        let asked_at = a.revision();
        a.send_request(2, "third", at(T0 + 3)).unwrap();
        a.on_registry_revoke(2, asked_at);
        assert!(a.is_outgoing(2));
    }

    /// Both ends trust each other (crossing requests at `T0`).
    fn trusting_pair() -> (TrustStore, TrustStore) {
        let (mut a, mut b) = (store(1, 1), store(2, 2));
        let ra = a.send_request(2, "hi", at(T0)).unwrap();
        let rb = b.send_request(1, "hi", at(T0)).unwrap();
        b.on_message(sent(&ra)[0].to_json().as_bytes(), bound(1, 1), at(T0));
        a.on_message(sent(&rb)[0].to_json().as_bytes(), bound(2, 2), at(T0));
        assert!(a.trusted().contains_key(&2) && b.trusted().contains_key(&1));
        (a, b)
    }

    #[test]
    fn a_message_repeated_within_a_second_is_not_a_replay() {
        let (mut a, mut b) = (store(1, 1), store(2, 2));
        let first = a.send_request(2, "hi", at(T0)).unwrap();
        let again = a.send_request(2, "hi", at(T0)).unwrap();
        let (m1, m2) = (sent(&first)[0], sent(&again)[0]);
        assert_eq!((m1.timestamp, m2.timestamp), (T0, T0 + 1));
        b.on_message(m1.to_json().as_bytes(), bound(1, 1), at(T0));
        b.reject(1, "not yet", at(T0)).unwrap();
        // The second request arrives: not dropped as a replay of the first.
        b.on_message(m2.to_json().as_bytes(), bound(1, 1), at(T0));
        assert!(b.pending().contains_key(&1));
        // Messages to one peer keep increasing, whatever their kind, up to
        // MAX_TIMESTAMP_LEAD ahead of the clock; another peer starts at the
        // clock; a later second starts from the clock again.
        let mut last = m2.timestamp;
        for _ in 0..20 {
            let fx = a.send_request(2, "hi", at(T0)).unwrap();
            let ts = sent(&fx)[0].timestamp;
            assert!(
                ts > last || ts == T0 + MAX_TIMESTAMP_LEAD,
                "{ts} after {last}"
            );
            last = ts;
        }
        assert_eq!(last, T0 + MAX_TIMESTAMP_LEAD);
        let fx = a.send_request(3, "hi", at(T0)).unwrap();
        assert_eq!(sent(&fx)[0].timestamp, T0);
        let fx = a.send_request(3, "hi", at(T0 + 60)).unwrap();
        assert_eq!(sent(&fx)[0].timestamp, T0 + 60);
    }

    #[test]
    fn a_revoke_older_than_the_peers_later_request_is_stale() {
        let (mut a, mut b) = trusting_pair();
        // B revokes and at once asks again; the revoke is overtaken.
        let revoke = b.revoke(1, at(T0 + 5)).unwrap();
        let request = b.send_request(1, "sorry", at(T0 + 5)).unwrap();
        let (rv, rq) = (sent(&revoke)[0], sent(&request)[0]);
        assert!(rq.timestamp > rv.timestamp);
        // A, still trusting B, accepts the request ...
        let fx = a.on_message(rq.to_json().as_bytes(), bound(2, 2), at(T0 + 6));
        let fx = b.on_message(sent(&fx)[0].to_json().as_bytes(), bound(1, 1), at(T0 + 6));
        assert!(b.trusted().contains_key(&1));
        assert!(fx.contains(&Effect::Registry(RegistryOp::ReportTrust {
            me: 2,
            peer: 1
        })));
        // ... and the late revoke changes nothing.
        let fx = a.on_message(rv.to_json().as_bytes(), bound(2, 2), at(T0 + 7));
        assert_eq!(fx, vec![Effect::Event(TrustEvent::StaleRevoke { node: 2 })]);
        assert!(a.trusted().contains_key(&2));
        // A revoke that B sends after its request counts.
        let fx = b.revoke(1, at(T0 + 8)).unwrap();
        let fx = a.on_message(sent(&fx)[0].to_json().as_bytes(), bound(2, 2), at(T0 + 8));
        assert!(fx.contains(&Effect::DropTunnel(2)));
        assert!(a.trusted().is_empty());
    }

    #[test]
    fn a_request_only_a_third_node_carried_does_not_order_revokes() {
        let (mut a, mut b) = trusting_pair();
        let revoke = b.revoke(1, at(T0 + 5)).unwrap();
        let request = b.send_request(1, "sorry", at(T0 + 5)).unwrap();
        // The request arrives through node 9's tunnel, not B's own.
        a.on_message(
            sent(&request)[0].to_json().as_bytes(),
            bound(2, 9),
            at(T0 + 6),
        );
        let fx = a.on_message(
            sent(&revoke)[0].to_json().as_bytes(),
            bound(2, 2),
            at(T0 + 6),
        );
        assert!(fx.contains(&Effect::DropTunnel(2)));
        assert!(a.trusted().is_empty());
    }

    #[test]
    fn a_revoke_crossing_our_new_request_keeps_it_and_an_older_accept_is_stale() {
        let (mut a, mut b) = trusting_pair();
        // B accepts A's next request (trusting A, at T0 + 1) ...
        let request = a.send_request(2, "again", at(T0 + 1)).unwrap();
        let accept = b.on_message(
            sent(&request)[0].to_json().as_bytes(),
            bound(1, 1),
            at(T0 + 1),
        );
        // ... then revokes (T0 + 2). The revoke reaches A first.
        let revoke = b.revoke(1, at(T0 + 2)).unwrap();
        let a2 = a.send_request(2, "once more", at(T0 + 2)).unwrap();
        let fx = a.on_message(
            sent(&revoke)[0].to_json().as_bytes(),
            bound(2, 2),
            at(T0 + 2),
        );
        assert!(fx.contains(&Effect::DropTunnel(2)));
        assert!(a.trusted().is_empty());
        // A's request stays (B may take it as new), and A leaves the pair
        // at the registry to B, which removed it.
        assert!(a.is_outgoing(2));
        assert!(
            !fx.iter()
                .any(|e| matches!(e, Effect::Registry(RegistryOp::RevokeTrust { .. })))
        );
        // The accept B sent before its revoke is stale.
        let fx = a.on_message(
            sent(&accept)[0].to_json().as_bytes(),
            bound(2, 2),
            at(T0 + 3),
        );
        assert!(fx.is_empty());
        assert!(a.trusted().is_empty() && a.is_outgoing(2));
        // B takes A's newer request as new: pending there, approved, and
        // that accept grants.
        b.on_message(sent(&a2)[0].to_json().as_bytes(), bound(1, 1), at(T0 + 3));
        let fx = b.approve(1, at(T0 + 3)).unwrap();
        a.on_message(sent(&fx)[0].to_json().as_bytes(), bound(2, 2), at(T0 + 3));
        assert!(a.trusted().contains_key(&2) && b.trusted().contains_key(&1));
    }

    #[test]
    fn a_relayed_request_while_trusted_outlives_an_older_registry_revoke() {
        let (mut a, _b) = trusting_pair();
        let asked_at = a.revision();
        let fx = a.on_relayed_request(2, "again", at(T0 + 1));
        assert!(fx.contains(&Effect::Registry(RegistryOp::RespondHandshake {
            from: 1,
            to: 2,
            accept: true
        })));
        assert!(a.on_registry_revoke(2, asked_at).is_empty());
        assert!(a.trusted().contains_key(&2));
    }

    /// The stamp maps are swept when they outgrow the peers with state;
    /// the sweep must keep the stamp it is writing (its peer's state is
    /// inserted just after), or a late answer takes the fresh grant away.
    #[test]
    fn the_stamp_sweep_keeps_the_stamp_being_written() {
        let mut b = store(2, 2);
        // STAMP_SLACK stale grant stamps: granted, then revoked.
        for peer in 100..100 + STAMP_SLACK as u32 {
            b.on_relayed_request(peer, "x", at(T0));
            b.approve(peer, at(T0)).unwrap();
            b.revoke(peer, at(T0)).unwrap();
        }
        let asked_at = b.revision();
        // This grant's stamp triggers the sweep.
        b.on_relayed_request(7, "x", at(T0 + 1));
        b.approve(7, at(T0 + 1)).unwrap();
        assert!(b.on_registry_revoke(7, asked_at).is_empty());
        assert!(b.trusted().contains_key(&7));
        // The same for request stamps: stale ones (requests rejected),
        // then a request whose stamp triggers the sweep.
        for peer in 300..300 + STAMP_SLACK as u32 {
            b.on_relayed_request(peer, "x", at(T0 + 2));
            b.reject(peer, "no", at(T0 + 2)).unwrap();
        }
        let asked_at = b.revision();
        b.on_relayed_request(8, "x", at(T0 + 3));
        assert!(b.on_registry_revoke(8, asked_at).is_empty());
        assert!(b.pending().contains_key(&8));
    }

    #[test]
    fn a_network_grant_ends_with_its_membership_explicit_trust_stays() {
        let mut b = store(2, 2);
        b.on_message(
            EXAMPLE.as_bytes(),
            Inbound {
                shared_network: Some(5),
                ..bound(1, 1)
            },
            at(T0),
        );
        assert_eq!(b.network_grants().collect::<Vec<_>>(), [(1, 5)]);
        // Another network's end, or a peer not granted by it: nothing.
        assert!(b.end_network_grant(1, 6).is_empty());
        assert!(b.end_network_grant(9, 5).is_empty());
        let fx = b.end_network_grant(1, 5);
        assert!(!b.trusted().contains_key(&1));
        assert_eq!(
            fx,
            [
                Effect::Persist,
                Effect::Event(TrustEvent::NetworkEnded {
                    node: 1,
                    network: 5
                }),
                Effect::DropTunnel(1),
                Effect::Registry(RegistryOp::RevokeTrust { me: 2, peer: 1 }),
            ]
        );
        // Explicit (relayed request, then approved): not a network grant.
        b.on_relayed_request(7, "via registry", at(T0));
        b.approve(7, at(T0 + 1)).unwrap();
        assert_eq!(b.network_grants().count(), 0);
        assert!(b.end_network_grant(7, 5).is_empty());
        assert!(b.trusted().contains_key(&7));
    }

    #[test]
    fn same_network_auto_approves() {
        let mut b = store(2, 2);
        let fx = b.on_message(
            EXAMPLE.as_bytes(),
            Inbound {
                shared_network: Some(5),
                ..bound(1, 1)
            },
            at(T0),
        );
        assert_eq!(b.trusted()[&1].network, 5);
        assert!(fx.contains(&Effect::Event(TrustEvent::AutoApproved {
            node: 1,
            reason: AutoReason::SameNetwork(5)
        })));
    }

    /// A relayed request reports `handshake.received` before its outcome,
    /// as a direct one does (the daemon's webhook relies on it).
    #[test]
    fn a_relayed_request_is_reported_received_then_pending() {
        let mut b = store(2, 2);
        let fx = b.on_relayed_request(7, "via registry", at(T0));
        let events: Vec<&TrustEvent> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Event(ev) => Some(ev),
                _ => None,
            })
            .collect();
        let j = || "via registry".to_owned();
        assert_eq!(
            events,
            [
                &TrustEvent::Received {
                    node: 7,
                    justification: j()
                },
                &TrustEvent::Pending {
                    node: 7,
                    justification: j()
                }
            ]
        );
    }

    #[test]
    fn reject_and_relayed_path() {
        let mut b = store(2, 2);
        b.on_relayed_request(7, "via registry", at(T0));
        assert!(b.pending()[&7].public_key.is_empty());
        let fx = b.reject(7, "no", at(T0)).unwrap();
        assert!(b.pending().is_empty());
        assert!(fx.contains(&Effect::Registry(RegistryOp::RespondHandshake {
            from: 2,
            to: 7,
            accept: false
        })));
        // Unsolicited relayed accept: ignored.
        assert!(b.on_relayed_response(8, true, at(T0)).is_empty());
        b.send_request(8, "x", at(T0)).unwrap();
        let fx = b.on_relayed_response(8, true, at(T0));
        assert!(fx.contains(&Effect::Registry(RegistryOp::Lookup { node: 8 })));
        assert_eq!(b.key_learned(8, &raw(8)), vec![Effect::Persist]);
        assert!(!b.trusted()[&8].public_key.is_empty());
        // Relayed request from a node we asked → mutual trust.
        b.send_request(9, "x", at(T0)).unwrap();
        b.on_relayed_request(9, "", at(T0));
        assert!(b.trusted()[&9].mutual);
        // Relayed reject clears outgoing.
        b.send_request(10, "x", at(T0)).unwrap();
        b.on_relayed_response(10, false, at(T0));
        assert!(!b.is_outgoing(10));
    }

    #[test]
    fn pending_is_bounded_per_source_and_total() {
        let mut b = store(2, 2);
        for n in 100..100 + PENDING_PER_SOURCE as u32 + 3 {
            b.add_pending(n, String::new(), "j", Some(1), at(T0));
        }
        assert_eq!(b.pending().len(), PENDING_PER_SOURCE);
        for n in 1000..2000u32 {
            b.add_pending(n, String::new(), "j", Some(n), at(T0));
        }
        assert_eq!(b.pending().len(), PENDING_CAP);
        // Overwriting an existing entry is still allowed.
        assert!(b.add_pending(1000, String::new(), "new", Some(1000), at(T0)));
        assert_eq!(b.pending()[&1000].justification, "new");
        // Entries expire after 30 days, making room again.
        assert!(b.add_pending(5, String::new(), "late", Some(5), at(T0 + PENDING_TTL_SECS)));
        assert_eq!(b.pending().len(), 1);
    }

    #[test]
    fn justification_is_sanitised_and_cut() {
        assert_eq!(sanitize_text("a\nb\u{7}c"), "abc");
        let long = "é".repeat(600);
        let s = sanitize_text(&long);
        assert_eq!(s.len(), 1024);
    }

    #[test]
    fn replay_cache_is_bounded_and_expires() {
        let mut r = ReplayCache::default();
        for i in 0..(REPLAY_CAP as u32 + 10) {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_be_bytes());
            assert!(r.insert(h, 0));
        }
        assert!(r.len() <= REPLAY_CAP);
        assert!(r.insert([0xff; 32], 0));
        assert!(!r.insert([0xff; 32], REPLAY_TTL_SECS - 1));
        assert!(r.insert([0xff; 32], REPLAY_TTL_SECS + 1));
    }

    #[test]
    fn trust_file_format() {
        let mut b = store(2, 2);
        assert_eq!(
            b.to_file().to_json(),
            "{\n  \"trusted\": null,\n  \"pending\": []\n}"
        );
        b.on_message(EXAMPLE.as_bytes(), bound(1, 1), at(T0));
        b.on_relayed_request(9, "", at(T0));
        b.approve(1, at(T0 + 60)).unwrap();
        let j = b.to_file().to_json();
        assert!(
            j.contains("\"approved_at\": \"2026-01-01T00:01:00Z\""),
            "{j}"
        );
        assert!(!j.contains("network"));
        assert!(!j.contains("justification"));
        let f = TrustFile::from_json(j.as_bytes()).unwrap();
        let mut c = store(2, 2);
        c.load(&f, at(T0 + 60));
        assert_eq!(c.to_file(), b.to_file());
        // The reference example document parses.
        let doc = br#"{"trusted":[{"node_id":7,"public_key":"k","approved_at":"2026-02-27T15:03:44+02:00","mutual":true}],
            "pending":[{"node_id":9,"public_key":"k","justification":"hi","received_at":"2026-02-27T15:04:00+02:00"}]}"#;
        let f = TrustFile::from_json(doc).unwrap();
        assert_eq!(f.trusted.as_ref().unwrap()[0].node_id, 7);
        assert_eq!(TrustFile::from_json(&f.to_json().into_bytes()).unwrap(), f);
    }

    proptest! {
        #[test]
        fn message_round_trip(kind in 0u8..4, node in any::<u32>(), text in ".{0,20}", ts in any::<i64>()) {
            let kind = [MessageType::Request, MessageType::Accept, MessageType::Reject, MessageType::Revoke][kind as usize];
            let m = HandshakeMessage { kind, node_id: node, public_key: text.clone(), justification: text.clone(),
                signature: String::new(), reason: text, timestamp: ts };
            let mut out = vec![0u8; 512];
            let n = m.encode(&mut out).unwrap();
            prop_assert_eq!(HandshakeMessage::decode(&out[..n], WireProfile::Current), Ok(m));
        }

        #[test]
        fn decoded_messages_reach_a_canonical_fixpoint(bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
            if let Ok(m) = HandshakeMessage::decode(&bytes, WireProfile::Current) {
                let again = HandshakeMessage::decode(m.to_json().as_bytes(), WireProfile::Current);
                prop_assert_eq!(again, Ok(m));
            }
        }

        #[test]
        fn trust_file_round_trip(nodes in proptest::collection::vec((any::<u32>(), any::<bool>(), any::<u16>(), ".{0,8}", any::<Option<u32>>()), 0..5),
                                 revoked in any::<Option<u32>>()) {
            let trusted: Vec<TrustedEntry> = nodes.iter().map(|(n, m, net, _, _)| TrustedEntry {
                node_id: *n, public_key: "k".into(), approved_at: "2026-01-01T00:00:00Z".into(), mutual: *m, network: *net }).collect();
            let pending: Vec<PendingEntry> = nodes.iter().map(|(n, _, _, text, src)| PendingEntry {
                node_id: *n, public_key: text.clone(), justification: text.clone(), received_at: "2026-01-01T00:00:00Z".into(), source: *src }).collect();
            let revoked = revoked.map(|n| vec![RevokedEntry { node_id: n, until: "2026-01-01T00:00:00Z".into() }]);
            let f = TrustFile { trusted: Some(trusted), pending: Some(pending), revoked };
            prop_assert_eq!(TrustFile::from_json(f.to_json().as_bytes()).unwrap(), f);
        }
    }
}
