//! What the registry persists, as keyed records (`spec/registry.md` §11.2).
//!
//! A durable store keeps the registry's [`State`] as a flat, ordered map of
//! small records — one per node, key, owner, network, membership, trust
//! pair, inbox, invitation list and signature timestamp, plus one for the
//! ID counters — instead of a log plus periodic snapshots. After a batch of
//! [`Change`]s, [`ChangeSet::from_changes`] names every record they touched
//! and takes each one's current value from the state (or marks it deleted);
//! the store applies the set atomically. Store size therefore follows the
//! live state, and no write ever costs more than the records it touches.
//! [`Loader`] rebuilds the state from the records at start-up.
//!
//! Keys are a one-byte kind followed by big-endian fields, so records of
//! one kind sort together and networks load before their memberships.
//! Values are JSON (the serde forms of the state's records).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::auth::PublicKey;
use super::policy::{NetworkPolicy, Role};
use super::server::{
    Change, Invite, JoinRule, NetworkRecord, NodeRecord, Notification, PendingRequest,
    PendingResponse, State, pair,
};
use crate::time::UnixTime;

/// One persisted record's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKey {
    /// The node and network ID counters.
    Counters,
    /// A live node.
    Node(u32),
    /// Public key → node ID, as written before [`RecordKey::KeyOf`]:
    /// still loaded, never written (a deletion only); stores convert
    /// these records on open ([`upgrade_record`]).
    Key(PublicKey),
    /// Owner → node ID.
    Owner(String),
    /// A network's header (name, rule, token, creation time).
    Network(u16),
    /// One membership (network, node).
    Member(u16, u32),
    /// One trust pair (min, max).
    Trust(u32, u32),
    /// A target's handshake-request inbox.
    Inbox(u32),
    /// A requester's handshake-response inbox.
    Responses(u32),
    /// Unanswered handshake requests to a target.
    Pending(u32),
    /// A node's invitations.
    Invites(u32),
    /// A node's last accepted strong-signature timestamp.
    SigTs(u32),
    /// A key retired by rotation → the node that held it.
    Retired(PublicKey),
    /// An identity: a node ID and the key mapped to it (empty value).
    /// Keyed by the ID first, so a burst of new registrations appends at
    /// the end of the store's key order instead of at random places.
    KeyOf(u32, PublicKey),
}

const K_COUNTERS: u8 = 1;
const K_NODE: u8 = 2;
const K_KEY: u8 = 3;
const K_OWNER: u8 = 4;
const K_NETWORK: u8 = 5;
const K_MEMBER: u8 = 6;
const K_TRUST: u8 = 7;
const K_INBOX: u8 = 8;
const K_RESPONSES: u8 = 9;
const K_PENDING: u8 = 10;
const K_INVITES: u8 = 11;
const K_SIGTS: u8 = 12;
const K_RETIRED: u8 = 13;
const K_KEY_OF: u8 = 14;

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

impl RecordKey {
    /// The key's bytes in the store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        match self {
            RecordKey::Counters => out.push(K_COUNTERS),
            RecordKey::Node(id) => {
                out.push(K_NODE);
                out.extend_from_slice(&id.to_be_bytes());
            }
            RecordKey::Key(k) => {
                out.push(K_KEY);
                out.extend_from_slice(k);
            }
            RecordKey::Owner(o) => {
                out.push(K_OWNER);
                out.extend_from_slice(o.as_bytes());
            }
            RecordKey::Network(id) => {
                out.push(K_NETWORK);
                out.extend_from_slice(&id.to_be_bytes());
            }
            RecordKey::Member(net, node) => {
                out.push(K_MEMBER);
                out.extend_from_slice(&net.to_be_bytes());
                out.extend_from_slice(&node.to_be_bytes());
            }
            RecordKey::Trust(a, b) => {
                out.push(K_TRUST);
                out.extend_from_slice(&a.to_be_bytes());
                out.extend_from_slice(&b.to_be_bytes());
            }
            RecordKey::Inbox(id) => {
                out.push(K_INBOX);
                out.extend_from_slice(&id.to_be_bytes());
            }
            RecordKey::Responses(id) => {
                out.push(K_RESPONSES);
                out.extend_from_slice(&id.to_be_bytes());
            }
            RecordKey::Pending(id) => {
                out.push(K_PENDING);
                out.extend_from_slice(&id.to_be_bytes());
            }
            RecordKey::Invites(id) => {
                out.push(K_INVITES);
                out.extend_from_slice(&id.to_be_bytes());
            }
            RecordKey::SigTs(id) => {
                out.push(K_SIGTS);
                out.extend_from_slice(&id.to_be_bytes());
            }
            RecordKey::Retired(k) => {
                out.push(K_RETIRED);
                out.extend_from_slice(k);
            }
            RecordKey::KeyOf(id, k) => {
                out.push(K_KEY_OF);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(k);
            }
        }
        out
    }

    /// Parses stored key bytes; `None` if they are not a key this version
    /// writes.
    pub fn decode(b: &[u8]) -> Option<RecordKey> {
        let (&kind, rest) = b.split_first()?;
        Some(match kind {
            K_COUNTERS if rest.is_empty() => RecordKey::Counters,
            K_NODE => RecordKey::Node(be_u32(rest)?),
            K_KEY => RecordKey::Key(rest.try_into().ok()?),
            K_OWNER => RecordKey::Owner(String::from_utf8(rest.to_vec()).ok()?),
            K_NETWORK => RecordKey::Network(u16::from_be_bytes(rest.try_into().ok()?)),
            K_MEMBER if rest.len() == 6 => {
                RecordKey::Member(u16::from_be_bytes([rest[0], rest[1]]), be_u32(&rest[2..])?)
            }
            K_TRUST if rest.len() == 8 => {
                RecordKey::Trust(be_u32(&rest[..4])?, be_u32(&rest[4..])?)
            }
            K_INBOX => RecordKey::Inbox(be_u32(rest)?),
            K_RESPONSES => RecordKey::Responses(be_u32(rest)?),
            K_PENDING => RecordKey::Pending(be_u32(rest)?),
            K_INVITES => RecordKey::Invites(be_u32(rest)?),
            K_SIGTS => RecordKey::SigTs(be_u32(rest)?),
            K_RETIRED => RecordKey::Retired(rest.try_into().ok()?),
            K_KEY_OF if rest.len() == 36 => {
                RecordKey::KeyOf(be_u32(&rest[..4])?, rest[4..].try_into().ok()?)
            }
            _ => return None,
        })
    }
}

/// Why records could not be encoded or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A stored key is not one this version writes.
    #[error("unknown record key {0}")]
    UnknownKey(String),
    /// A stored value does not decode as its key's record.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// The key, hex.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("encode record: {0}")]
    Encode(String),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Serialize, Deserialize)]
struct Counters {
    next_node: u32,
    next_net: u32,
}

/// A network without its members (they are [`RecordKey::Member`] records).
#[derive(Serialize, Deserialize)]
struct NetworkHeader {
    id: u16,
    name: String,
    join_rule: JoinRule,
    token: String,
    created: u64,
    /// Managed-network policy (absent in records written before policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<NetworkPolicy>,
}

/// A membership record's value: empty for a plain member without tags
/// (the only form written before roles), else this JSON.
#[derive(Serialize, Deserialize, Default)]
struct MemberValue {
    #[serde(default)]
    role: Role,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
}

fn member_value(net: &NetworkRecord, node: u32) -> Result<Vec<u8>, RecordError> {
    let v = MemberValue {
        role: net.role(node),
        tags: net.tags_of(node).to_vec(),
    };
    if v.role == Role::Member && v.tags.is_empty() {
        Ok(Vec::new())
    } else {
        json(&v)
    }
}

fn parse_member_value(value: &[u8]) -> Result<MemberValue, String> {
    if value.is_empty() {
        return Ok(MemberValue::default());
    }
    serde_json::from_slice(value).map_err(|e| e.to_string())
}

fn set_member_meta(net: &mut NetworkRecord, node: u32, v: MemberValue) {
    if v.role == Role::Member {
        net.roles.remove(&node);
    } else {
        net.roles.insert(node, v.role);
    }
    if v.tags.is_empty() {
        net.member_tags.remove(&node);
    } else {
        net.member_tags.insert(node, v.tags);
    }
}

fn json<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, RecordError> {
    serde_json::to_vec(v).map_err(|e| RecordError::Encode(e.to_string()))
}

/// The current value of `key` in `state`, `None` if the record does not
/// exist (any more).
pub fn record_value(state: &State, key: &RecordKey) -> Result<Option<Vec<u8>>, RecordError> {
    let empty = || Ok(Some(Vec::new()));
    match key {
        RecordKey::Counters => json(&Counters {
            next_node: state.next_node,
            next_net: state.next_net,
        })
        .map(Some),
        RecordKey::Node(id) => state.nodes.get(id).map(json).transpose(),
        RecordKey::Key(_) => Ok(None),
        RecordKey::KeyOf(id, k) => Ok((state.pub_key_idx.get(k) == Some(id)).then(Vec::new)),
        RecordKey::Owner(o) => state.owner_idx.get(o).map(json).transpose(),
        RecordKey::Network(id) => state
            .networks
            .get(id)
            .map(|n| {
                json(&NetworkHeader {
                    id: n.id,
                    name: n.name.clone(),
                    join_rule: n.join_rule,
                    token: n.token.clone(),
                    created: n.created.as_nanos(),
                    policy: n.policy.clone(),
                })
            })
            .transpose(),
        RecordKey::Member(net, node) => match state.networks.get(net) {
            Some(n) if n.members.contains(node) => member_value(n, *node).map(Some),
            _ => Ok(None),
        },
        RecordKey::Trust(a, b) => {
            if state.trust_pairs.contains(&(*a, *b)) {
                empty()
            } else {
                Ok(None)
            }
        }
        RecordKey::Inbox(id) => state.handshake_inbox.get(id).map(json).transpose(),
        RecordKey::Responses(id) => state.handshake_responses.get(id).map(json).transpose(),
        RecordKey::Pending(id) => state.pending_handshakes.get(id).map(json).transpose(),
        RecordKey::Invites(id) => state.invites.get(id).map(json).transpose(),
        RecordKey::SigTs(id) => state.sig_ts.get(id).map(json).transpose(),
        RecordKey::Retired(k) => state.retired_keys.get(k).map(json).transpose(),
    }
}

/// Adds the records `change` touches to `keys`. `state` is the state after
/// the change (for [`Change::PutNetwork`], whose members are records too).
fn touched(change: &Change, state: &State, keys: &mut BTreeSet<RecordKey>) {
    match change {
        Change::PutNode(n) => {
            keys.insert(RecordKey::Node(n.id));
        }
        Change::Touch { node_id, .. } | Change::RemoveNode(node_id) => {
            keys.insert(RecordKey::Node(*node_id));
        }
        Change::PutKey { key, node_id } | Change::DropKey { key, node_id } => {
            keys.insert(RecordKey::KeyOf(*node_id, *key));
        }
        Change::RemoveKey(key) => {
            keys.insert(RecordKey::Key(*key));
        }
        Change::RetireKey { key, node_id } => {
            keys.insert(RecordKey::KeyOf(*node_id, *key));
            keys.insert(RecordKey::Retired(*key));
        }
        Change::PutOwner { owner, .. } => {
            keys.insert(RecordKey::Owner(owner.clone()));
        }
        Change::NextNode(_) | Change::NextNet(_) => {
            keys.insert(RecordKey::Counters);
        }
        Change::PutNetwork(net) => {
            keys.insert(RecordKey::Network(net.id));
            for m in &net.members {
                keys.insert(RecordKey::Member(net.id, *m));
            }
            if let Some(cur) = state.networks.get(&net.id) {
                for m in &cur.members {
                    keys.insert(RecordKey::Member(net.id, *m));
                }
            }
        }
        Change::Membership {
            network_id,
            node_id,
            ..
        } => {
            keys.insert(RecordKey::Member(*network_id, *node_id));
            keys.insert(RecordKey::Node(*node_id));
        }
        Change::TrustAdd(a, b) | Change::TrustRemove(a, b) => {
            let (x, y) = pair(*a, *b);
            keys.insert(RecordKey::Trust(x, y));
        }
        Change::InboxPush { to, .. } => {
            keys.insert(RecordKey::Inbox(*to));
        }
        Change::ResponsePush { to, .. } => {
            keys.insert(RecordKey::Responses(*to));
        }
        Change::InboxClear(id) => {
            keys.insert(RecordKey::Inbox(*id));
            keys.insert(RecordKey::Responses(*id));
        }
        Change::PendingAdd { to, .. } | Change::PendingRemove { to, .. } => {
            keys.insert(RecordKey::Pending(*to));
        }
        Change::InvitePush { to, .. } | Change::InvitesSet { to, .. } => {
            keys.insert(RecordKey::Invites(*to));
        }
        Change::SigTs { node_id, .. } => {
            keys.insert(RecordKey::SigTs(*node_id));
        }
        Change::MemberMeta {
            network_id,
            node_id,
            ..
        } => {
            keys.insert(RecordKey::Member(*network_id, *node_id));
        }
        Change::RemoveNetwork {
            network_id,
            members,
        } => {
            keys.insert(RecordKey::Network(*network_id));
            for m in members {
                keys.insert(RecordKey::Member(*network_id, *m));
                keys.insert(RecordKey::Node(*m));
            }
        }
    }
}

/// Every record key of `state`.
fn all_keys(state: &State) -> BTreeSet<RecordKey> {
    let mut keys = BTreeSet::new();
    keys.insert(RecordKey::Counters);
    keys.extend(state.nodes.keys().map(|id| RecordKey::Node(*id)));
    keys.extend(
        state
            .pub_key_idx
            .iter()
            .map(|(k, id)| RecordKey::KeyOf(*id, *k)),
    );
    keys.extend(state.owner_idx.keys().map(|o| RecordKey::Owner(o.clone())));
    for net in state.networks.values() {
        keys.insert(RecordKey::Network(net.id));
        keys.extend(net.members.iter().map(|m| RecordKey::Member(net.id, *m)));
    }
    keys.extend(
        state
            .trust_pairs
            .iter()
            .map(|(a, b)| RecordKey::Trust(*a, *b)),
    );
    keys.extend(state.handshake_inbox.keys().map(|id| RecordKey::Inbox(*id)));
    keys.extend(
        state
            .handshake_responses
            .keys()
            .map(|id| RecordKey::Responses(*id)),
    );
    keys.extend(
        state
            .pending_handshakes
            .keys()
            .map(|id| RecordKey::Pending(*id)),
    );
    keys.extend(state.invites.keys().map(|id| RecordKey::Invites(*id)));
    keys.extend(state.sig_ts.keys().map(|id| RecordKey::SigTs(*id)));
    keys.extend(state.retired_keys.keys().map(|k| RecordKey::Retired(*k)));
    keys
}

/// Records to write (`Some`) or delete (`None`), applied atomically by a
/// store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Delete every stored record first (an import replacing the state).
    pub replace_all: bool,
    /// Encoded key and new value, in key order, each key once.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl ChangeSet {
    /// The records `changes` touched, valued from `state`, which must be
    /// the state with every one of them applied (and nothing later).
    pub fn from_changes(state: &State, changes: &[Change]) -> Result<ChangeSet, RecordError> {
        let mut keys = BTreeSet::new();
        for c in changes {
            touched(c, state, &mut keys);
        }
        Self::of_keys(state, keys, false)
    }

    /// Every record of `state`, replacing whatever the store held.
    pub fn full(state: &State) -> Result<ChangeSet, RecordError> {
        Self::of_keys(state, all_keys(state), true)
    }

    fn of_keys(
        state: &State,
        keys: BTreeSet<RecordKey>,
        replace_all: bool,
    ) -> Result<ChangeSet, RecordError> {
        let mut writes = Vec::with_capacity(keys.len());
        for k in keys {
            let v = record_value(state, &k)?;
            writes.push((k.encode(), v));
        }
        Ok(ChangeSet {
            replace_all,
            writes,
        })
    }

    /// `true` when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && !self.replace_all
    }

    /// Appends `later`, whose writes win over this set's for the same key.
    pub fn merge(&mut self, later: ChangeSet) {
        if later.replace_all {
            *self = later;
            return;
        }
        self.writes.extend(later.writes);
    }
}

/// Rebuilds a [`State`] from stored records, fed in key order.
#[derive(Debug)]
pub struct Loader {
    state: State,
    records: u64,
}

impl Loader {
    /// Starts from a fresh state at `now` (its backbone is replaced if a
    /// stored one comes).
    pub fn new(now: UnixTime) -> Self {
        Loader {
            state: State::new(now),
            records: 0,
        }
    }

    /// Adds one record.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), RecordError> {
        let rk = RecordKey::decode(key).ok_or_else(|| RecordError::UnknownKey(hex(key)))?;
        let bad = |reason: String| RecordError::Corrupt {
            key: hex(key),
            reason,
        };
        fn de<'a, T: Deserialize<'a>>(v: &'a [u8]) -> Result<T, String> {
            serde_json::from_slice(v).map_err(|e| e.to_string())
        }
        let s = &mut self.state;
        match rk {
            RecordKey::Counters => {
                let c: Counters = de(value).map_err(bad)?;
                s.next_node = c.next_node;
                s.next_net = c.next_net;
            }
            RecordKey::Node(id) => {
                let n: NodeRecord = de(value).map_err(bad)?;
                if n.id != id {
                    return Err(bad(format!("holds node {}", n.id)));
                }
                s.nodes.insert(id, n);
            }
            RecordKey::Key(k) => {
                s.pub_key_idx.insert(k, de(value).map_err(bad)?);
            }
            RecordKey::KeyOf(id, k) => {
                if !value.is_empty() {
                    return Err(bad("identity record with a value".into()));
                }
                s.pub_key_idx.insert(k, id);
            }
            RecordKey::Owner(o) => {
                s.owner_idx.insert(o, de(value).map_err(bad)?);
            }
            RecordKey::Network(id) => {
                let h: NetworkHeader = de(value).map_err(bad)?;
                if h.id != id {
                    return Err(bad(format!("holds network {}", h.id)));
                }
                let mut rec = NetworkRecord::new(
                    id,
                    h.name,
                    h.join_rule,
                    h.token,
                    UnixTime::from_nanos(h.created),
                );
                rec.policy = h.policy;
                s.networks.insert(id, rec);
            }
            RecordKey::Member(net, node) => match s.networks.get_mut(&net) {
                Some(n) => {
                    let meta = parse_member_value(value).map_err(bad)?;
                    n.members.insert(node);
                    set_member_meta(n, node, meta);
                }
                None => return Err(bad(format!("member of unknown network {net}"))),
            },
            RecordKey::Trust(a, b) => {
                s.trust_pairs.insert(pair(a, b));
            }
            RecordKey::Inbox(id) => {
                let v: Vec<PendingRequest> = de(value).map_err(bad)?;
                s.handshake_inbox.insert(id, v);
            }
            RecordKey::Responses(id) => {
                let v: Vec<PendingResponse> = de(value).map_err(bad)?;
                s.handshake_responses.insert(id, v);
            }
            RecordKey::Pending(id) => {
                s.pending_handshakes.insert(id, de(value).map_err(bad)?);
            }
            RecordKey::Invites(id) => {
                let v: Vec<Invite> = de(value).map_err(bad)?;
                s.invites.insert(id, v);
            }
            RecordKey::SigTs(id) => {
                s.sig_ts.insert(id, de(value).map_err(bad)?);
            }
            RecordKey::Retired(k) => {
                s.retired_keys.insert(k, de(value).map_err(bad)?);
            }
        }
        self.records += 1;
        Ok(())
    }

    /// Records added so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The rebuilt state (derived indexes included).
    pub fn finish(mut self) -> State {
        self.state.rebuild_indexes();
        self.state
    }
}

/// Applies one record committed elsewhere (another frontend on a shared
/// store) to `state`: `value` `None` means the record was deleted. Derived
/// indexes are kept up to date. Returns the hint the change implies for a
/// node connected to this frontend: a handshake request or response that
/// arrived in its inbox, or a trust pair removed.
///
/// The ID counters are merged by maximum (with a shared store new node
/// IDs come from leased blocks, not from the counter).
pub fn apply_record(
    state: &mut State,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<Notification>, RecordError> {
    let rk = RecordKey::decode(key).ok_or_else(|| RecordError::UnknownKey(hex(key)))?;
    let bad = |reason: String| RecordError::Corrupt {
        key: hex(key),
        reason,
    };
    fn de<'a, T: Deserialize<'a>>(v: &'a [u8]) -> Result<T, String> {
        serde_json::from_slice(v).map_err(|e| e.to_string())
    }
    let s = state;
    let Some(value) = value else {
        match rk {
            RecordKey::Counters => {}
            RecordKey::Node(id) => s.apply(&Change::RemoveNode(id)),
            RecordKey::Key(k) => {
                s.pub_key_idx.remove(&k);
            }
            RecordKey::KeyOf(id, k) => {
                // Rows come in key order: the key may already map to
                // another node whose record sorts before this one.
                if s.pub_key_idx.get(&k) == Some(&id) {
                    s.pub_key_idx.remove(&k);
                }
            }
            RecordKey::Owner(o) => {
                s.owner_idx.remove(&o);
            }
            RecordKey::Network(id) => {
                s.networks.remove(&id);
            }
            RecordKey::Member(network_id, node_id) => s.apply(&Change::Membership {
                network_id,
                node_id,
                member: false,
            }),
            RecordKey::Trust(a, b) => {
                if s.trust_pairs.remove(&pair(a, b)) {
                    return Ok(Some(Notification::TrustRevoked { to: a, from: b }));
                }
            }
            RecordKey::Inbox(id) => {
                s.handshake_inbox.remove(&id);
            }
            RecordKey::Responses(id) => {
                s.handshake_responses.remove(&id);
            }
            RecordKey::Pending(id) => {
                s.pending_handshakes.remove(&id);
            }
            RecordKey::Invites(id) => {
                s.invites.remove(&id);
            }
            RecordKey::SigTs(id) => {
                s.sig_ts.remove(&id);
            }
            RecordKey::Retired(k) => {
                s.retired_keys.remove(&k);
            }
        }
        return Ok(None);
    };
    match rk {
        RecordKey::Counters => {
            let c: Counters = de(value).map_err(bad)?;
            if s.next_node != 0 && (c.next_node == 0 || c.next_node > s.next_node) {
                s.next_node = c.next_node;
            }
            s.next_net = s.next_net.max(c.next_net);
        }
        RecordKey::Node(id) => {
            let n: NodeRecord = de(value).map_err(bad)?;
            if n.id != id {
                return Err(bad(format!("holds node {}", n.id)));
            }
            s.apply(&Change::PutNode(Box::new(n)));
        }
        RecordKey::Key(k) => {
            s.pub_key_idx.insert(k, de(value).map_err(bad)?);
        }
        RecordKey::KeyOf(id, k) => {
            s.pub_key_idx.insert(k, id);
        }
        RecordKey::Owner(o) => {
            s.owner_idx.insert(o, de(value).map_err(bad)?);
        }
        RecordKey::Network(id) => {
            let h: NetworkHeader = de(value).map_err(bad)?;
            if h.id != id {
                return Err(bad(format!("holds network {}", h.id)));
            }
            let net = s.networks.entry(id).or_insert_with(|| {
                NetworkRecord::new(
                    id,
                    String::new(),
                    JoinRule::Open,
                    String::new(),
                    UnixTime::from_nanos(h.created),
                )
            });
            net.name = h.name;
            net.join_rule = h.join_rule;
            net.token = h.token;
            net.created = UnixTime::from_nanos(h.created);
            net.policy = h.policy;
        }
        RecordKey::Member(network_id, node_id) => {
            let meta = parse_member_value(value).map_err(bad)?;
            s.apply(&Change::Membership {
                network_id,
                node_id,
                member: true,
            });
            if let Some(n) = s.networks.get_mut(&network_id) {
                set_member_meta(n, node_id, meta);
            }
        }
        RecordKey::Trust(a, b) => {
            s.trust_pairs.insert(pair(a, b));
        }
        RecordKey::Inbox(id) => {
            let v: Vec<PendingRequest> = de(value).map_err(bad)?;
            let old = s.handshake_inbox.get(&id);
            let new = v
                .iter()
                .rev()
                .find(|r| !old.is_some_and(|o| o.contains(r)))
                .map(|r| Notification::HandshakeRequest {
                    to: id,
                    from: r.from_node_id,
                });
            s.handshake_inbox.insert(id, v);
            return Ok(new);
        }
        RecordKey::Responses(id) => {
            let v: Vec<PendingResponse> = de(value).map_err(bad)?;
            let old = s.handshake_responses.get(&id);
            let new = v
                .iter()
                .rev()
                .find(|r| !old.is_some_and(|o| o.contains(r)))
                .map(|r| Notification::HandshakeResponse {
                    to: id,
                    from: r.from_node_id,
                    accept: r.accept,
                });
            s.handshake_responses.insert(id, v);
            return Ok(new);
        }
        RecordKey::Pending(id) => {
            s.pending_handshakes.insert(id, de(value).map_err(bad)?);
        }
        RecordKey::Invites(id) => {
            let v: Vec<Invite> = de(value).map_err(bad)?;
            s.invites.insert(id, v);
        }
        RecordKey::SigTs(id) => {
            s.sig_ts.insert(id, de(value).map_err(bad)?);
        }
        RecordKey::Retired(k) => {
            s.retired_keys.insert(k, de(value).map_err(bad)?);
        }
    }
    Ok(None)
}

/// The record that replaces a stored record of an earlier form, or `None`
/// when `key` is in its current form: a key → node ID record (`03 key`,
/// value the ID) becomes the identity record `0E id key` with an empty
/// value. Stores convert on open, before loading.
pub fn upgrade_record(key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, RecordError> {
    match RecordKey::decode(key) {
        Some(RecordKey::Key(k)) => {
            let id: u32 = serde_json::from_slice(value).map_err(|e| RecordError::Corrupt {
                key: hex(key),
                reason: e.to_string(),
            })?;
            Ok(Some(RecordKey::KeyOf(id, k).encode()))
        }
        _ => Ok(None),
    }
}

/// Test support: an in-memory store.
#[cfg(test)]
pub(crate) mod mem {
    use super::*;
    use std::collections::BTreeMap;

    /// Applies a change set to a map the way a store does.
    pub(crate) fn apply(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, set: &ChangeSet) {
        if set.replace_all {
            store.clear();
        }
        for (k, v) in &set.writes {
            match v {
                Some(v) => store.insert(k.clone(), v.clone()),
                None => store.remove(k),
            };
        }
    }

    /// Loads a map's records.
    pub(crate) fn load(store: &BTreeMap<Vec<u8>, Vec<u8>>, now: UnixTime) -> State {
        let mut l = Loader::new(now);
        for (k, v) in store {
            l.add(k, v).unwrap();
        }
        l.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::mem::{apply, load};
    use super::*;
    use crate::registry::server::{Config, Effect, Registry};
    use std::collections::BTreeMap;

    fn t(s: u64) -> UnixTime {
        UnixTime::from_nanos(1_767_225_600_000_000_000 + s * 1_000_000_000)
    }

    fn changes(effects: Vec<Effect>) -> Vec<Change> {
        effects
            .into_iter()
            .filter_map(|e| match e {
                Effect::Persist(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn keys_round_trip_and_sort_by_kind() {
        let keys = [
            RecordKey::Counters,
            RecordKey::Node(7),
            RecordKey::Key([9; 32]),
            RecordKey::Owner("o@x".into()),
            RecordKey::Network(3),
            RecordKey::Member(3, 7),
            RecordKey::Trust(1, 2),
            RecordKey::Inbox(1),
            RecordKey::Responses(1),
            RecordKey::Pending(1),
            RecordKey::Invites(1),
            RecordKey::SigTs(1),
            RecordKey::Retired([4; 32]),
            RecordKey::KeyOf(7, [9; 32]),
        ];
        for k in &keys {
            assert_eq!(RecordKey::decode(&k.encode()).as_ref(), Some(k));
        }
        let enc: Vec<_> = keys.iter().map(RecordKey::encode).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(RecordKey::decode(&[0xff, 1]), None);
        assert_eq!(RecordKey::decode(&[K_NODE, 1, 2]), None);
        assert_eq!(RecordKey::decode(&[]), None);
    }

    #[test]
    fn corrupt_records_are_errors() {
        let mut l = Loader::new(t(0));
        assert!(matches!(
            l.add(&[0xee], b"{}"),
            Err(RecordError::UnknownKey(_))
        ));
        assert!(matches!(
            l.add(&RecordKey::Node(1).encode(), b"not json"),
            Err(RecordError::Corrupt { .. })
        ));
        assert!(matches!(
            l.add(&RecordKey::Member(9, 1).encode(), b""),
            Err(RecordError::Corrupt { .. })
        ));
    }

    /// A node's identity is stored under its ID (new registrations append
    /// in key order); key → ID records of earlier versions still load, are
    /// converted by `upgrade_record`, and are only ever deleted.
    #[test]
    fn identities_are_keyed_by_node_id() {
        use crate::registry::auth::Identity;
        use crate::registry::codec::{Register, Request};
        let peer: std::net::SocketAddr = "10.0.0.1:1".parse().unwrap();
        let cfg = Config {
            rate_limits: false,
            ..Config::default()
        };
        let mut reg = Registry::new(cfg, t(0));
        let register = |reg: &mut Registry, seed: u8, s: u64| {
            let id = Identity::from_seed(&[seed; 32]);
            let reply = reg.handle(
                t(s),
                peer,
                Request::Register(Register {
                    listen_addr: "1.2.3.4:5".into(),
                    public_key: id.public_key_b64(),
                    owner: "o@x".into(),
                    ..Default::default()
                }),
            );
            let set = ChangeSet::from_changes(reg.state(), &changes(reply.effects)).unwrap();
            (
                set,
                *reg.state()
                    .pub_key_idx
                    .iter()
                    .find(|(k, _)| **k == id.public_key())
                    .unwrap()
                    .1,
                id.public_key(),
            )
        };
        let (set, id, key) = register(&mut reg, 1, 1);
        let mut ident = vec![K_KEY_OF];
        ident.extend_from_slice(&id.to_be_bytes());
        ident.extend_from_slice(&key);
        assert!(
            set.writes.contains(&(ident.clone(), Some(Vec::new()))),
            "{set:?}"
        );
        assert!(!set.writes.iter().any(|(k, _)| k[0] == K_KEY), "{set:?}");
        // The owner comes back with a new key: the old identity record is
        // deleted, the new one written under the same ID.
        let (set2, id2, key2) = register(&mut reg, 2, 2);
        assert_eq!(id2, id);
        assert!(set2.writes.contains(&(ident.clone(), None)), "{set2:?}");
        assert!(
            set2.writes
                .contains(&(RecordKey::KeyOf(id, key2).encode(), Some(Vec::new())))
        );
        // A record of the earlier form loads, and converts.
        let old_key = RecordKey::Key(key).encode();
        let mut l = Loader::new(t(0));
        l.add(&old_key, b"7").unwrap();
        assert_eq!(l.finish().pub_key_idx.get(&key), Some(&7));
        assert_eq!(
            upgrade_record(&old_key, b"7").unwrap(),
            Some(RecordKey::KeyOf(7, key).encode())
        );
        assert_eq!(upgrade_record(&ident, b"").unwrap(), None);
        assert!(upgrade_record(&old_key, b"x").is_err());
        assert!(matches!(
            Loader::new(t(0)).add(&ident, b"7"),
            Err(RecordError::Corrupt { .. })
        ));
        // A follower drops an identity only if the key still maps to that
        // node (rows arrive in key order: a later node's record may come
        // after the earlier one's deletion, or before it).
        let mut f = reg.state().clone();
        apply_record(&mut f, &RecordKey::KeyOf(99, key2).encode(), None).unwrap();
        assert_eq!(f.pub_key_idx.get(&key2), Some(&id));
        apply_record(&mut f, &RecordKey::KeyOf(id, key2).encode(), None).unwrap();
        assert_eq!(f.pub_key_idx.get(&key2), None);
        apply_record(&mut f, &RecordKey::KeyOf(5, key2).encode(), Some(b"")).unwrap();
        assert_eq!(f.pub_key_idx.get(&key2), Some(&5));
    }

    /// A registry's change sets, applied to a map and loaded back, give the
    /// live state after every request.
    #[test]
    fn change_sets_track_the_live_state() {
        use crate::registry::auth::Identity;
        use crate::registry::codec::{
            CreateNetwork, Deregister, Register, Request, SetHostname, SetTags,
        };
        let peer: std::net::SocketAddr = "10.0.0.1:1".parse().unwrap();
        let admin = "secret".to_string();
        let cfg = Config {
            admin_token: Some(admin.clone()),
            rate_limits: false,
            ..Config::default()
        };
        let mut reg = Registry::new(cfg, t(0));
        let mut store = BTreeMap::new();
        apply(&mut store, &ChangeSet::full(reg.state()).unwrap());
        let ids: Vec<Identity> = (0..6u8).map(|i| Identity::from_seed(&[i; 32])).collect();
        let mut node_ids = Vec::new();
        // A second frontend following the change sets record by record.
        let follower = std::cell::RefCell::new(reg.state().clone());
        let step = |reg: &mut Registry, store: &mut BTreeMap<_, _>, req: Request, s: u64| {
            let reply = reg.handle(t(s), peer, req);
            let set = ChangeSet::from_changes(reg.state(), &changes(reply.effects)).unwrap();
            apply(store, &set);
            assert_eq!(&load(store, t(999)), reg.state());
            let mut f = follower.borrow_mut();
            for (k, v) in &set.writes {
                apply_record(&mut f, k, v.as_deref()).unwrap();
            }
            assert_eq!(&*f, reg.state());
            reply.response
        };
        for (i, id) in ids.iter().enumerate() {
            let r = step(
                &mut reg,
                &mut store,
                Request::Register(Register {
                    listen_addr: "1.2.3.4:5".into(),
                    public_key: id.public_key_b64(),
                    owner: format!("o{i}"),
                    ..Default::default()
                }),
                i as u64,
            );
            let crate::registry::codec::Response::RegisterOk(ok) = r else {
                panic!("{r:?}")
            };
            node_ids.push(ok.node_id);
        }
        let sig = |i: usize, what: &str| ids[i].sign_b64(what.as_bytes());
        step(
            &mut reg,
            &mut store,
            Request::SetHostname(SetHostname {
                node_id: node_ids[0],
                hostname: "alpha".into(),
                signature: sig(0, &format!("set_hostname:{}", node_ids[0])),
                ..Default::default()
            }),
            10,
        );
        step(
            &mut reg,
            &mut store,
            Request::SetTags(SetTags {
                node_id: node_ids[1],
                tags: vec!["gpu".into()],
                signature: sig(1, &format!("set_tags:{}", node_ids[1])),
                ..Default::default()
            }),
            11,
        );
        step(
            &mut reg,
            &mut store,
            Request::CreateNetwork(CreateNetwork {
                node_id: node_ids[2],
                name: "lab".into(),
                join_rule: "open".into(),
                token: String::new(),
                admin_token: admin.clone(),
            }),
            12,
        );
        step(
            &mut reg,
            &mut store,
            Request::Deregister(Deregister {
                node_id: node_ids[3],
                signature: sig(3, &format!("deregister:{}", node_ids[3])),
                ..Default::default()
            }),
            13,
        );
        // Reaping, then the full set of the final state equals the store.
        let effects = reg.handle_timeout(t(100_000));
        let set = ChangeSet::from_changes(reg.state(), &changes(effects)).unwrap();
        apply(&mut store, &set);
        assert_eq!(&load(&store, t(999)), reg.state());
        assert!(reg.state().nodes.is_empty());
        let mut f = follower.into_inner();
        for (k, v) in &set.writes {
            apply_record(&mut f, k, v.as_deref()).unwrap();
        }
        assert_eq!(&f, reg.state());
        let mut fresh = BTreeMap::new();
        apply(&mut fresh, &ChangeSet::full(reg.state()).unwrap());
        assert_eq!(fresh, store);
    }

    /// Frontends with leased ID blocks hand out disjoint IDs, write no ID
    /// counter, and refuse a registration once the lease is used up; a
    /// handshake request committed by one is a hint for the other.
    #[test]
    fn leased_ids_and_remote_hints() {
        use crate::registry::auth::Identity;
        use crate::registry::codec::{Register, Request, RequestHandshake, Response};
        let peer: std::net::SocketAddr = "10.0.0.1:1".parse().unwrap();
        let cfg = Config {
            rate_limits: false,
            ..Config::default()
        };
        let mut a = Registry::new(cfg.clone(), t(0));
        let mut b = Registry::new(cfg, t(0));
        a.lease_node_ids(1, 3);
        b.lease_node_ids(1000, 2000);
        let reg = |r: &mut Registry, seed: u8| {
            let id = Identity::from_seed(&[seed; 32]);
            let reply = r.handle(
                t(1),
                peer,
                Request::Register(Register {
                    listen_addr: "1.2.3.4:5".into(),
                    public_key: id.public_key_b64(),
                    ..Default::default()
                }),
            );
            let ch = changes(reply.effects);
            assert!(
                !ch.iter().any(|c| matches!(c, Change::NextNode(_))),
                "{ch:?}"
            );
            let set = ChangeSet::from_changes(r.state(), &ch).unwrap();
            (reply.response, set, id)
        };
        let sync = |to: &mut Registry, set: &ChangeSet| {
            let mut hints = Vec::new();
            for (k, v) in &set.writes {
                hints.extend(to.apply_remote_record(k, v.as_deref()).unwrap());
            }
            hints
        };
        let (r1, s1, id1) = reg(&mut a, 1);
        let (r2, s2, _) = reg(&mut b, 2);
        let (r3, s3, _) = reg(&mut a, 3);
        let (r4, _, _) = reg(&mut a, 4);
        let ids: Vec<u32> = [r1, r2, r3]
            .into_iter()
            .map(|r| match r {
                Response::RegisterOk(ok) => ok.node_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![1, 1000, 2]);
        assert!(matches!(r4, Response::Error { .. }), "{r4:?}");
        assert_eq!(a.leased_node_ids_left(), Some(0));
        sync(&mut b, &s1);
        sync(&mut b, &s3);
        sync(&mut a, &s2);
        assert_eq!(a.state().nodes.len(), 3);
        assert_eq!(b.state().nodes.len(), 3);
        // Node 1 (on a) asks node 1000 (on b): b learns it from the record.
        let reply = a.handle(
            t(2),
            peer,
            Request::RequestHandshake(RequestHandshake {
                from_node_id: 1,
                to_node_id: 1000,
                justification: "hi".into(),
                signature: id1.sign_b64(b"handshake:1:1000"),
                ..Default::default()
            }),
        );
        let set = ChangeSet::from_changes(a.state(), &changes(reply.effects)).unwrap();
        assert_eq!(
            sync(&mut b, &set),
            vec![Notification::HandshakeRequest { to: 1000, from: 1 }]
        );
        assert_eq!(a.state().handshake_inbox, b.state().handshake_inbox);
    }
}
