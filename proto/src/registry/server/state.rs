//! The registry's durable state and the [`Change`]s that mutate it
//! (`spec/registry.md` §11). Every mutation of [`State`] goes through
//! [`State::apply`], so a driver that persists the emitted changes (or a
//! snapshot plus the changes after it) can rebuild exactly the same state.

use std::collections::{BTreeMap, BTreeSet};

use crate::registry::auth::PublicKey;
use crate::registry::limits::{BACKBONE_NAME, MAX_INBOX, MAX_RESPONSE_INBOX};
use crate::registry::policy::{NetworkPolicy, Role};
use crate::time::UnixTime;

/// Serde form of an [`UnixTime`] inside a [`Change`]: its nanosecond count,
/// so drivers can log changes (e.g. as JSON) and replay them exactly.
mod nanos {
    use crate::time::UnixTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &UnixTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.as_nanos())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UnixTime, D::Error> {
        u64::deserialize(d).map(UnixTime::from_nanos)
    }
}

/// Bound of remembered "request_handshake was sent" records per target
/// (`spec/registry.md` §6).
pub const MAX_PENDING_PER_TARGET: usize = 1024;

/// One registered (live) node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// Node ID.
    pub id: u32,
    /// Owner string (identity reclaim); empty if none.
    pub owner: String,
    /// Ed25519 public key.
    pub public_key: PublicKey,
    /// Tunnel endpoint `host:port`.
    pub real_addr: String,
    /// LAN endpoints the node registered.
    pub lan_addrs: Vec<String>,
    /// Networks, sorted, always containing 0.
    pub networks: Vec<u16>,
    /// Public visibility.
    pub public: bool,
    /// Last registration/heartbeat.
    #[serde(with = "nanos")]
    pub last_seen: UnixTime,
    /// Hostname; empty if none.
    pub hostname: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Polo score (legacy profile).
    pub polo_score: i64,
    /// Advertises task execution.
    pub task_exec: bool,
    /// Software version the node reported.
    pub version: String,
    /// When the key was last rotated, nanoseconds since the Unix epoch
    /// (0 = never; `spec/registry.md` §3.11).
    #[serde(default)]
    pub key_rotated_ns: u64,
    /// How many times the key was rotated.
    #[serde(default)]
    pub key_rot_count: u32,
    /// The key the last rotation retired (lets a retried `rotate_key`
    /// signed by it succeed again, §3.11).
    #[serde(default)]
    pub prev_key: Option<PublicKey>,
    /// Ours: the address of the beacon that last recorded this node, empty
    /// if none did (`spec/beacon.md` §3.8). Lets several beacons share one
    /// network through the registry's (shared) state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub beacon: String,
}

/// How nodes may join a network.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum JoinRule {
    /// Anyone.
    #[default]
    Open,
    /// Whoever presents the network's token.
    Token,
    /// Only invited nodes.
    Invite,
}

impl JoinRule {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRule::Open => "open",
            JoinRule::Token => "token",
            JoinRule::Invite => "invite",
        }
    }

    /// Parses a wire name (`""` means `open`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "open" => Some(JoinRule::Open),
            "token" => Some(JoinRule::Token),
            "invite" => Some(JoinRule::Invite),
            _ => None,
        }
    }
}

/// One network.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkRecord {
    /// Network ID (0 = backbone).
    pub id: u16,
    /// Name.
    pub name: String,
    /// Join rule.
    pub join_rule: JoinRule,
    /// Join token (token networks); empty otherwise.
    pub token: String,
    /// Member node IDs (may include reaped nodes in the current profile).
    pub members: BTreeSet<u32>,
    /// Creation time.
    #[serde(with = "nanos")]
    pub created: UnixTime,
    /// Roles other than [`Role::Member`] (members only; at most one owner).
    #[serde(default)]
    pub roles: BTreeMap<u32, Role>,
    /// Non-empty member tags (members only).
    #[serde(default)]
    pub member_tags: BTreeMap<u32, Vec<String>>,
    /// Managed-network policy, if one was set.
    #[serde(default)]
    pub policy: Option<NetworkPolicy>,
}

impl NetworkRecord {
    /// A network without members, roles, tags or policy.
    pub fn new(
        id: u16,
        name: String,
        join_rule: JoinRule,
        token: String,
        created: UnixTime,
    ) -> Self {
        NetworkRecord {
            id,
            name,
            join_rule,
            token,
            members: BTreeSet::new(),
            created,
            roles: BTreeMap::new(),
            member_tags: BTreeMap::new(),
            policy: None,
        }
    }

    /// The role of `node` (plain members and non-members: [`Role::Member`]).
    pub fn role(&self, node: u32) -> Role {
        self.roles.get(&node).copied().unwrap_or_default()
    }

    /// The owner, if the network has one.
    pub fn owner(&self) -> Option<u32> {
        self.roles
            .iter()
            .find(|(_, r)| **r == Role::Owner)
            .map(|(id, _)| *id)
    }

    /// The tags of member `node` (empty if none).
    pub fn tags_of(&self, node: u32) -> &[String] {
        self.member_tags.get(&node).map_or(&[], Vec::as_slice)
    }
}

/// A pending handshake request in a target's inbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingRequest {
    /// Sender.
    pub from_node_id: u32,
    /// Its justification.
    pub justification: String,
    /// When it arrived.
    #[serde(with = "nanos")]
    pub timestamp: UnixTime,
}

/// A handshake decision waiting in the original requester's inbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingResponse {
    /// Responder.
    pub from_node_id: u32,
    /// Decision.
    pub accept: bool,
    /// When it was made.
    #[serde(with = "nanos")]
    pub timestamp: UnixTime,
}

/// A network invitation waiting for the invited node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Invite {
    /// Network.
    pub network_id: u16,
    /// Inviting member.
    pub inviter_id: u32,
    /// When it was made.
    #[serde(with = "nanos")]
    pub timestamp: UnixTime,
}

/// Everything the registry must keep across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Next node ID to allocate; 0 = the ID space is exhausted.
    pub next_node: u32,
    /// Next network ID to allocate; above 65535 = exhausted.
    pub next_net: u32,
    /// Live nodes.
    pub nodes: BTreeMap<u32, NodeRecord>,
    /// Networks, including the backbone (0).
    pub networks: BTreeMap<u16, NetworkRecord>,
    /// Unordered trust pairs stored as (min, max).
    pub trust_pairs: BTreeSet<(u32, u32)>,
    /// Permanent key → node ID index.
    pub pub_key_idx: BTreeMap<PublicKey, u32>,
    /// Owner → node ID index (kept after deregistration and reaping).
    pub owner_idx: BTreeMap<String, u32>,
    /// Hostname → node ID, derived from `nodes`.
    pub hostname_idx: BTreeMap<String, u32>,
    /// Handshake requests per target.
    pub handshake_inbox: BTreeMap<u32, Vec<PendingRequest>>,
    /// Handshake responses per original requester.
    pub handshake_responses: BTreeMap<u32, Vec<PendingResponse>>,
    /// target → senders whose `request_handshake` is not yet answered.
    pub pending_handshakes: BTreeMap<u32, Vec<u32>>,
    /// Network invitations per invited node.
    pub invites: BTreeMap<u32, Vec<Invite>>,
    /// Last strong-form signature timestamp accepted per node (ms).
    pub sig_ts: BTreeMap<u32, u64>,
    /// Keys retired by `rotate_key` → the node that held them (permanent):
    /// such a key can neither register nor become anyone's key again.
    pub retired_keys: BTreeMap<PublicKey, u32>,
}

impl State {
    /// A fresh registry: only the backbone, created at `now`.
    pub fn new(now: UnixTime) -> Self {
        let mut networks = BTreeMap::new();
        networks.insert(
            0,
            NetworkRecord::new(
                0,
                BACKBONE_NAME.to_owned(),
                JoinRule::Open,
                String::new(),
                now,
            ),
        );
        State {
            next_node: 1,
            next_net: 1,
            nodes: BTreeMap::new(),
            networks,
            trust_pairs: BTreeSet::new(),
            pub_key_idx: BTreeMap::new(),
            owner_idx: BTreeMap::new(),
            hostname_idx: BTreeMap::new(),
            handshake_inbox: BTreeMap::new(),
            handshake_responses: BTreeMap::new(),
            pending_handshakes: BTreeMap::new(),
            invites: BTreeMap::new(),
            sig_ts: BTreeMap::new(),
            retired_keys: BTreeMap::new(),
        }
    }

    /// Rebuilds the derived hostname index from `nodes`.
    pub fn rebuild_indexes(&mut self) {
        self.hostname_idx = self
            .nodes
            .values()
            .filter(|n| !n.hostname.is_empty())
            .map(|n| (n.hostname.clone(), n.id))
            .collect();
    }

    /// `true` if the unordered pair {a, b} is trusted.
    pub fn has_trust(&self, a: u32, b: u32) -> bool {
        self.trust_pairs.contains(&pair(a, b))
    }

    /// `true` if both nodes are live and share a non-backbone network.
    pub fn share_network(&self, a: u32, b: u32) -> bool {
        match (self.nodes.get(&a), self.nodes.get(&b)) {
            (Some(x), Some(y)) => x.networks.iter().any(|n| *n != 0 && y.networks.contains(n)),
            _ => false,
        }
    }

    /// Applies one change. This is the only way state is mutated.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PutNode(n) => {
                if let Some(old) = self.nodes.get(&n.id) {
                    if !old.hostname.is_empty() && old.hostname != n.hostname {
                        self.hostname_idx.remove(&old.hostname);
                    }
                }
                if !n.hostname.is_empty() {
                    self.hostname_idx.insert(n.hostname.clone(), n.id);
                }
                self.nodes.insert(n.id, (**n).clone());
            }
            Change::Touch { node_id, last_seen } => {
                if let Some(n) = self.nodes.get_mut(node_id) {
                    n.last_seen = *last_seen;
                }
            }
            Change::RemoveNode(id) => {
                if let Some(old) = self.nodes.remove(id) {
                    if self.hostname_idx.get(&old.hostname) == Some(id) {
                        self.hostname_idx.remove(&old.hostname);
                    }
                }
            }
            Change::PutKey { key, node_id } => {
                self.pub_key_idx.insert(*key, *node_id);
            }
            Change::RemoveKey(key) | Change::DropKey { key, .. } => {
                self.pub_key_idx.remove(key);
            }
            Change::RetireKey { key, node_id } => {
                self.pub_key_idx.remove(key);
                self.retired_keys.insert(*key, *node_id);
            }
            Change::PutOwner { owner, node_id } => {
                self.owner_idx.insert(owner.clone(), *node_id);
            }
            Change::NextNode(v) => self.next_node = *v,
            Change::NextNet(v) => self.next_net = *v,
            Change::PutNetwork(net) => {
                self.networks.insert(net.id, (**net).clone());
            }
            Change::Membership {
                network_id,
                node_id,
                member,
            } => {
                if let Some(net) = self.networks.get_mut(network_id) {
                    if *member {
                        net.members.insert(*node_id);
                    } else {
                        net.members.remove(node_id);
                        net.roles.remove(node_id);
                        net.member_tags.remove(node_id);
                    }
                }
                if let Some(node) = self.nodes.get_mut(node_id) {
                    match (node.networks.binary_search(network_id), member) {
                        (Err(pos), true) => node.networks.insert(pos, *network_id),
                        (Ok(pos), false) => {
                            node.networks.remove(pos);
                        }
                        _ => {}
                    }
                }
            }
            Change::TrustAdd(a, b) => {
                self.trust_pairs.insert(pair(*a, *b));
            }
            Change::TrustRemove(a, b) => {
                self.trust_pairs.remove(&pair(*a, *b));
            }
            Change::InboxPush { to, request } => {
                let q = self.handshake_inbox.entry(*to).or_default();
                q.push(request.clone());
                let excess = q.len().saturating_sub(MAX_INBOX);
                q.drain(..excess);
            }
            Change::ResponsePush { to, response } => {
                let q = self.handshake_responses.entry(*to).or_default();
                q.push(response.clone());
                let excess = q.len().saturating_sub(MAX_RESPONSE_INBOX);
                q.drain(..excess);
            }
            Change::InboxClear(id) => {
                self.handshake_inbox.remove(id);
                self.handshake_responses.remove(id);
            }
            Change::PendingAdd { from, to } => {
                let q = self.pending_handshakes.entry(*to).or_default();
                if !q.contains(from) {
                    q.push(*from);
                }
                let excess = q.len().saturating_sub(MAX_PENDING_PER_TARGET);
                q.drain(..excess);
            }
            Change::PendingRemove { from, to } => {
                if let Some(q) = self.pending_handshakes.get_mut(to) {
                    q.retain(|f| f != from);
                    if q.is_empty() {
                        self.pending_handshakes.remove(to);
                    }
                }
            }
            Change::InvitePush { to, invite } => {
                let q = self.invites.entry(*to).or_default();
                q.retain(|i| i.network_id != invite.network_id);
                q.push(invite.clone());
                let excess = q.len().saturating_sub(MAX_INBOX);
                q.drain(..excess);
            }
            Change::InvitesSet { to, invites } => {
                if invites.is_empty() {
                    self.invites.remove(to);
                } else {
                    self.invites.insert(*to, invites.clone());
                }
            }
            Change::SigTs { node_id, ts } => {
                self.sig_ts.insert(*node_id, *ts);
            }
            Change::MemberMeta {
                network_id,
                node_id,
                role,
                tags,
            } => {
                if let Some(net) = self.networks.get_mut(network_id) {
                    if net.members.contains(node_id) {
                        if *role == Role::Member {
                            net.roles.remove(node_id);
                        } else {
                            net.roles.insert(*node_id, *role);
                        }
                        if tags.is_empty() {
                            net.member_tags.remove(node_id);
                        } else {
                            net.member_tags.insert(*node_id, tags.clone());
                        }
                    }
                }
            }
            Change::RemoveNetwork {
                network_id,
                members,
            } => {
                if *network_id != 0 {
                    self.networks.remove(network_id);
                    for m in members {
                        if let Some(node) = self.nodes.get_mut(m) {
                            node.networks.retain(|n| n != network_id);
                        }
                    }
                }
            }
        }
    }
}

/// The canonical (min, max) form of an unordered pair.
pub fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

/// One durable mutation. The driver must write every change whose
/// [`Change::is_lazy`] is `false` durably **before** it sends the reply that
/// produced it; lazy changes (heartbeat times) may be coalesced and written
/// later, as the reference does.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// Insert or replace a live node record.
    PutNode(Box<NodeRecord>),
    /// Refresh a node's `last_seen` (lazy).
    Touch {
        /// Node.
        node_id: u32,
        /// New time.
        #[serde(with = "nanos")]
        last_seen: UnixTime,
    },
    /// Delete a live node record (keys, owners, trust and inboxes stay).
    RemoveNode(u32),
    /// Map a key to a node ID (permanent).
    PutKey {
        /// Key.
        key: PublicKey,
        /// Node.
        node_id: u32,
    },
    /// Forget a key (written by earlier versions; [`Change::DropKey`] now).
    RemoveKey(PublicKey),
    /// Forget a node's key (after owner reclaim).
    DropKey {
        /// Key.
        key: PublicKey,
        /// The node it mapped to.
        node_id: u32,
    },
    /// A key rotated away from `node_id`: it leaves the key index and is
    /// remembered as retired (`spec/registry.md` §3.11).
    RetireKey {
        /// The old key.
        key: PublicKey,
        /// The node that held it.
        node_id: u32,
    },
    /// Map an owner to a node ID.
    PutOwner {
        /// Owner string.
        owner: String,
        /// Node.
        node_id: u32,
    },
    /// New value of the node-ID counter.
    NextNode(u32),
    /// New value of the network-ID counter.
    NextNet(u32),
    /// Insert or replace a network (with its members).
    PutNetwork(Box<NetworkRecord>),
    /// Add or remove one network membership.
    Membership {
        /// Network.
        network_id: u16,
        /// Node.
        node_id: u32,
        /// `true` = add.
        member: bool,
    },
    /// Record a trust pair.
    TrustAdd(u32, u32),
    /// Remove a trust pair.
    TrustRemove(u32, u32),
    /// Append to a target's handshake inbox.
    InboxPush {
        /// Target.
        to: u32,
        /// Entry.
        request: PendingRequest,
    },
    /// Append to a requester's response inbox.
    ResponsePush {
        /// Original requester.
        to: u32,
        /// Entry.
        response: PendingResponse,
    },
    /// Empty both inboxes of a node (after a poll).
    InboxClear(u32),
    /// Remember that `from` asked `to` for a handshake.
    PendingAdd {
        /// Requester.
        from: u32,
        /// Target.
        to: u32,
    },
    /// Forget that record (answered).
    PendingRemove {
        /// Requester.
        from: u32,
        /// Target.
        to: u32,
    },
    /// Add (or refresh) an invitation.
    InvitePush {
        /// Invited node.
        to: u32,
        /// Invitation.
        invite: Invite,
    },
    /// Replace a node's invitation list.
    InvitesSet {
        /// Invited node.
        to: u32,
        /// Remaining invitations.
        invites: Vec<Invite>,
    },
    /// Record the last accepted strong-form signature timestamp.
    SigTs {
        /// Node.
        node_id: u32,
        /// Unix milliseconds.
        ts: u64,
    },
    /// Set one member's role and tags (ignored for non-members).
    MemberMeta {
        /// Network.
        network_id: u16,
        /// Member.
        node_id: u32,
        /// New role.
        role: Role,
        /// New tags (empty = none).
        tags: Vec<String>,
    },
    /// Delete a network (never the backbone) and every membership in it.
    RemoveNetwork {
        /// Network.
        network_id: u16,
        /// Its members at deletion (their node records change too).
        members: Vec<u32>,
    },
}

impl Change {
    /// `true` for changes that need not be durable before the reply.
    pub fn is_lazy(&self) -> bool {
        matches!(self, Change::Touch { .. })
    }
}
