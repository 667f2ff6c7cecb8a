//! The reference registry's JSON snapshot (`spec/registry.md` §11.1), for
//! migrating state between a reference registry and ours in either
//! direction. [`Snapshot::from_state`] exports, [`Snapshot::into_state`]
//! imports. Members the reference does not know (`owner_idx`,
//! `pending_handshakes`, `invites`, `sig_ts`, node `lan_addrs`/`version`)
//! are extensions it ignores.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::auth;
use super::clock::{parse_rfc3339, to_rfc3339};
use super::server::{
    Invite, JoinRule, NetworkRecord, NodeRecord, PendingRequest, PendingResponse, State, pair,
};
use crate::registry::policy::Role;
use crate::time::UnixTime;

/// Snapshot (de)serialisation failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Not valid snapshot JSON.
    #[error("snapshot is not valid JSON of the expected shape")]
    Json,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// One node as the reference stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapNode {
    /// Node ID.
    #[serde(default)]
    pub id: u32,
    /// Owner.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Base64 key.
    #[serde(default)]
    pub public_key: String,
    /// Endpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub real_addr: String,
    /// Networks (`null` allowed).
    #[serde(default)]
    pub networks: Option<Vec<u16>>,
    /// Visibility.
    #[serde(default, skip_serializing_if = "is_false")]
    pub public: bool,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Hostname.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Polo score.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub polo_score: i64,
    /// Task execution flag.
    #[serde(default, skip_serializing_if = "is_false")]
    pub task_exec: bool,
    /// Extension: LAN endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lan_addrs: Vec<String>,
    /// Extension (also in later reference snapshots): software version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Key rotations so far (later reference snapshots name it too).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub key_rot_count: u32,
    /// Last key rotation, RFC 3339 (later reference snapshots too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotated: Option<String>,
    /// Extension: the key the last rotation retired (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_key: Option<String>,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// One network as the reference stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapNetwork {
    /// Network ID.
    #[serde(default)]
    pub id: u16,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// `open`, `token`, `invite`.
    #[serde(default)]
    pub join_rule: String,
    /// Join token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Members (`null` allowed).
    #[serde(default)]
    pub members: Option<Vec<u32>>,
    /// RFC 3339.
    #[serde(default)]
    pub created: String,
    /// Ours: roles other than `member` (`spec/registry.md` §3.15.2).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub member_roles: BTreeMap<u32, crate::registry::policy::Role>,
    /// Ours: non-empty member tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub member_tags: BTreeMap<u32, Vec<String>>,
    /// Ours: the managed-network policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::registry::policy::NetworkPolicy>,
}

/// A handshake request in the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRequest {
    /// Sender.
    #[serde(default)]
    pub from_node_id: u32,
    /// Justification.
    #[serde(default)]
    pub justification: String,
    /// RFC 3339.
    #[serde(default)]
    pub timestamp: String,
}

/// A handshake response in the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapResponse {
    /// Responder.
    #[serde(default)]
    pub from_node_id: u32,
    /// Decision.
    #[serde(default)]
    pub accept: bool,
    /// RFC 3339.
    #[serde(default)]
    pub timestamp: String,
}

/// Extension: an invitation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapInvite {
    /// Network.
    #[serde(default)]
    pub network_id: u16,
    /// Inviter.
    #[serde(default)]
    pub inviter_id: u32,
    /// RFC 3339.
    #[serde(default)]
    pub timestamp: String,
}

/// The whole snapshot, members in the reference's order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Next node ID.
    #[serde(default)]
    pub next_node: u32,
    /// Next network ID.
    #[serde(default)]
    pub next_net: u32,
    /// Live nodes by decimal ID.
    #[serde(default)]
    pub nodes: BTreeMap<String, SnapNode>,
    /// Networks by decimal ID.
    #[serde(default)]
    pub networks: BTreeMap<String, SnapNetwork>,
    /// `"<min>:<max>"` pairs.
    #[serde(default)]
    pub trust_pairs: Vec<String>,
    /// Base64 key → node ID (permanent).
    #[serde(default)]
    pub pub_key_idx: BTreeMap<String, u32>,
    /// Handshake inboxes by decimal target ID.
    #[serde(default)]
    pub handshake_inbox: BTreeMap<String, Vec<SnapRequest>>,
    /// Response inboxes by decimal requester ID.
    #[serde(default)]
    pub handshake_responses: BTreeMap<String, Vec<SnapResponse>>,
    /// Extension: owner → node ID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub owner_idx: BTreeMap<String, u32>,
    /// Extension: target → senders with an unanswered request. Always
    /// written by us (even when empty); absent in a reference snapshot,
    /// where it is derived from the inboxes on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_handshakes: Option<BTreeMap<String, Vec<u32>>>,
    /// Extension: invitations by decimal node ID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub invites: BTreeMap<String, Vec<SnapInvite>>,
    /// Extension: last strong-signature timestamp per node (ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sig_ts: BTreeMap<String, u64>,
    /// Extension: keys retired by rotation (base64) → the node that held
    /// them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired_keys: BTreeMap<String, u32>,
}

/// What an import dropped (input the reference would also have dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Nodes skipped because their key does not decode.
    pub bad_nodes: usize,
    /// Other entries skipped (bad IDs, keys, pairs).
    pub bad_entries: usize,
}

fn parse_id(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|v| *v != 0)
}

fn time_or_zero(s: &str, report: &mut ImportReport) -> UnixTime {
    if s.is_empty() {
        return UnixTime::ZERO;
    }
    parse_rfc3339(s).unwrap_or_else(|_| {
        report.bad_entries += 1;
        UnixTime::ZERO
    })
}

impl Snapshot {
    /// Exports a registry state.
    pub fn from_state(s: &State) -> Snapshot {
        let nodes = s
            .nodes
            .values()
            .map(|n| {
                (
                    n.id.to_string(),
                    SnapNode {
                        id: n.id,
                        owner: n.owner.clone(),
                        public_key: auth::encode_public_key(&n.public_key),
                        real_addr: n.real_addr.clone(),
                        networks: Some(n.networks.clone()),
                        public: n.public,
                        last_seen: Some(to_rfc3339(n.last_seen)),
                        hostname: n.hostname.clone(),
                        tags: n.tags.clone(),
                        polo_score: n.polo_score,
                        task_exec: n.task_exec,
                        lan_addrs: n.lan_addrs.clone(),
                        version: n.version.clone(),
                        key_rot_count: n.key_rot_count,
                        key_rotated: (n.key_rotated_ns != 0)
                            .then(|| to_rfc3339(UnixTime::from_nanos(n.key_rotated_ns))),
                        prev_key: n.prev_key.as_ref().map(auth::encode_public_key),
                    },
                )
            })
            .collect();
        let networks = s
            .networks
            .values()
            .map(|n| {
                (
                    n.id.to_string(),
                    SnapNetwork {
                        id: n.id,
                        name: n.name.clone(),
                        join_rule: n.join_rule.as_str().to_owned(),
                        token: n.token.clone(),
                        members: Some(n.members.iter().copied().collect()),
                        created: to_rfc3339(n.created),
                        member_roles: n.roles.clone(),
                        member_tags: n.member_tags.clone(),
                        policy: n.policy.clone(),
                    },
                )
            })
            .collect();
        Snapshot {
            next_node: s.next_node,
            next_net: s.next_net,
            nodes,
            networks,
            trust_pairs: s
                .trust_pairs
                .iter()
                .map(|(a, b)| format!("{a}:{b}"))
                .collect(),
            pub_key_idx: s
                .pub_key_idx
                .iter()
                .map(|(k, v)| (auth::encode_public_key(k), *v))
                .collect(),
            handshake_inbox: s
                .handshake_inbox
                .iter()
                .map(|(k, q)| {
                    let v = q
                        .iter()
                        .map(|r| SnapRequest {
                            from_node_id: r.from_node_id,
                            justification: r.justification.clone(),
                            timestamp: to_rfc3339(r.timestamp),
                        })
                        .collect();
                    (k.to_string(), v)
                })
                .collect(),
            handshake_responses: s
                .handshake_responses
                .iter()
                .map(|(k, q)| {
                    let v = q
                        .iter()
                        .map(|r| SnapResponse {
                            from_node_id: r.from_node_id,
                            accept: r.accept,
                            timestamp: to_rfc3339(r.timestamp),
                        })
                        .collect();
                    (k.to_string(), v)
                })
                .collect(),
            owner_idx: s.owner_idx.clone(),
            pending_handshakes: Some(
                s.pending_handshakes
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            ),
            invites: s
                .invites
                .iter()
                .map(|(k, q)| {
                    let v = q
                        .iter()
                        .map(|i| SnapInvite {
                            network_id: i.network_id,
                            inviter_id: i.inviter_id,
                            timestamp: to_rfc3339(i.timestamp),
                        })
                        .collect();
                    (k.to_string(), v)
                })
                .collect(),
            sig_ts: s.sig_ts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            retired_keys: s
                .retired_keys
                .iter()
                .map(|(k, v)| (auth::encode_public_key(k), *v))
                .collect(),
        }
    }

    /// Parses snapshot JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        serde_json::from_slice(bytes).map_err(|_| SnapshotError::Json)
    }

    /// Serialises the snapshot as JSON (members in the reference's order).
    pub fn to_json(&self) -> Result<Vec<u8>, SnapshotError> {
        serde_json::to_vec(self).map_err(|_| SnapshotError::Json)
    }

    /// Imports into a registry state. `now` dates a backbone that the
    /// snapshot lacks.
    pub fn into_state(self, now: UnixTime) -> (State, ImportReport) {
        let mut rep = ImportReport::default();
        let mut st = State::new(now);
        st.networks.clear();
        st.next_node = self.next_node;
        st.next_net = self.next_net.max(1);

        for (k, n) in &self.networks {
            let Ok(id) = k.parse::<u16>() else {
                rep.bad_entries += 1;
                continue;
            };
            let rec = NetworkRecord {
                id,
                name: n.name.clone(),
                join_rule: JoinRule::parse(&n.join_rule).unwrap_or_default(),
                token: n.token.clone(),
                members: n
                    .members
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|m| *m != 0)
                    .collect(),
                created: time_or_zero(&n.created, &mut rep),
                // Absent from the reference's snapshots; ours carry them.
                roles: Default::default(),
                member_tags: Default::default(),
                policy: n.policy.clone(),
            };
            let mut rec = rec;
            rec.roles = n
                .member_roles
                .iter()
                .filter(|(m, r)| rec.members.contains(m) && **r != Role::Member)
                .map(|(m, r)| (*m, *r))
                .collect();
            rec.member_tags = n
                .member_tags
                .iter()
                .filter(|(m, t)| rec.members.contains(m) && !t.is_empty())
                .map(|(m, t)| (*m, t.clone()))
                .collect();
            st.networks.insert(id, rec);
        }
        if !st.networks.contains_key(&0) {
            let fresh = State::new(now);
            st.networks.extend(fresh.networks);
        }

        for (k, n) in &self.nodes {
            let id = if n.id != 0 { Some(n.id) } else { parse_id(k) };
            let key = auth::decode_public_key(&n.public_key).ok();
            let (Some(id), Some(key)) = (id, key) else {
                rep.bad_nodes += 1;
                continue;
            };
            let mut nets: BTreeSet<u16> = n.networks.iter().flatten().copied().collect();
            nets.insert(0);
            nets.extend(
                st.networks
                    .values()
                    .filter(|net| net.members.contains(&id))
                    .map(|net| net.id),
            );
            nets.retain(|net| st.networks.contains_key(net));
            for net in &nets {
                if let Some(rec) = st.networks.get_mut(net) {
                    rec.members.insert(id);
                }
            }
            let last_seen = match &n.last_seen {
                Some(t) => time_or_zero(t, &mut rep),
                None => UnixTime::ZERO,
            };
            st.nodes.insert(
                id,
                NodeRecord {
                    id,
                    owner: n.owner.clone(),
                    public_key: key,
                    real_addr: n.real_addr.clone(),
                    lan_addrs: n.lan_addrs.clone(),
                    networks: nets.into_iter().collect(),
                    public: n.public,
                    last_seen,
                    hostname: n.hostname.clone(),
                    tags: n.tags.clone(),
                    polo_score: n.polo_score,
                    task_exec: n.task_exec,
                    version: n.version.clone(),
                    key_rot_count: n.key_rot_count,
                    key_rotated_ns: n
                        .key_rotated
                        .as_deref()
                        .map_or(0, |t| time_or_zero(t, &mut rep).as_nanos()),
                    prev_key: n
                        .prev_key
                        .as_deref()
                        .and_then(|k| auth::decode_public_key(k).ok()),
                    beacon: String::new(),
                },
            );
            st.pub_key_idx.insert(key, id);
        }

        for p in &self.trust_pairs {
            match p
                .split_once(':')
                .and_then(|(a, b)| Some((parse_id(a)?, parse_id(b)?)))
            {
                Some((a, b)) => {
                    st.trust_pairs.insert(pair(a, b));
                }
                None => rep.bad_entries += 1,
            }
        }
        for (k, id) in &self.pub_key_idx {
            match auth::decode_public_key(k) {
                Ok(key) if *id != 0 => {
                    st.pub_key_idx.entry(key).or_insert(*id);
                }
                _ => rep.bad_entries += 1,
            }
        }
        for (k, q) in &self.handshake_inbox {
            let Some(id) = parse_id(k) else {
                rep.bad_entries += 1;
                continue;
            };
            let v: Vec<PendingRequest> = q
                .iter()
                .map(|r| PendingRequest {
                    from_node_id: r.from_node_id,
                    justification: r.justification.clone(),
                    timestamp: time_or_zero(&r.timestamp, &mut rep),
                })
                .collect();
            if !v.is_empty() {
                st.handshake_inbox.insert(id, v);
            }
        }
        for (k, q) in &self.handshake_responses {
            let Some(id) = parse_id(k) else {
                rep.bad_entries += 1;
                continue;
            };
            let v: Vec<PendingResponse> = q
                .iter()
                .map(|r| PendingResponse {
                    from_node_id: r.from_node_id,
                    accept: r.accept,
                    timestamp: time_or_zero(&r.timestamp, &mut rep),
                })
                .collect();
            if !v.is_empty() {
                st.handshake_responses.insert(id, v);
            }
        }
        // The reference rebuilds owners from live nodes only; our extension
        // keeps the owners of nodes that are gone.
        st.owner_idx = self.owner_idx.clone();
        for n in st.nodes.values() {
            if !n.owner.is_empty() {
                st.owner_idx.entry(n.owner.clone()).or_insert(n.id);
            }
        }
        // A reference snapshot has no pending records: every request still
        // in an inbox is, by definition, unanswered.
        let Some(pending) = &self.pending_handshakes else {
            for (to, q) in &st.handshake_inbox {
                st.pending_handshakes
                    .insert(*to, q.iter().map(|r| r.from_node_id).collect());
            }
            return self.finish_import(st, rep);
        };
        for (k, v) in pending {
            match parse_id(k) {
                Some(id) if !v.is_empty() => {
                    st.pending_handshakes.insert(id, v.clone());
                }
                _ => rep.bad_entries += 1,
            }
        }
        self.finish_import(st, rep)
    }

    /// The members imported after the pending-handshake records.
    fn finish_import(&self, mut st: State, mut rep: ImportReport) -> (State, ImportReport) {
        for (k, q) in &self.invites {
            let Some(id) = parse_id(k) else {
                rep.bad_entries += 1;
                continue;
            };
            let v: Vec<Invite> = q
                .iter()
                .map(|i| Invite {
                    network_id: i.network_id,
                    inviter_id: i.inviter_id,
                    timestamp: time_or_zero(&i.timestamp, &mut rep),
                })
                .collect();
            if !v.is_empty() {
                st.invites.insert(id, v);
            }
        }
        for (k, v) in &self.sig_ts {
            match parse_id(k) {
                Some(id) => {
                    st.sig_ts.insert(id, *v);
                }
                None => rep.bad_entries += 1,
            }
        }
        for (k, id) in &self.retired_keys {
            match auth::decode_public_key(k) {
                Ok(key) => {
                    st.pub_key_idx.remove(&key);
                    st.retired_keys.insert(key, *id);
                }
                Err(_) => rep.bad_entries += 1,
            }
        }
        st.rebuild_indexes();
        (st, rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::auth::Identity;
    use crate::registry::codec::*;
    use crate::registry::server::{Config, Registry};
    use crate::wire::WireProfile;
    use core::time::Duration;
    use std::net::SocketAddr;

    const T0: u64 = 1_767_225_600;

    fn id(seed: u8) -> Identity {
        Identity::from_seed(&[seed; 32])
    }

    fn sig(seed: u8, c: &str) -> String {
        id(seed).sign_b64(c.as_bytes())
    }

    /// A registry with every kind of state in it.
    fn rich_registry(profile: WireProfile) -> Registry {
        let now = UnixTime::from_nanos(T0 * 1_000_000_000 + 123_456_789);
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut r = Registry::new(
            Config {
                profile,
                admin_token: Some("adm".into()),
                rate_limits: false,
                ..Config::default()
            },
            now,
        );
        let ok = |r: &mut Registry, req: Request| {
            let reply = r.handle(now, peer, req);
            assert!(reply.error.is_none(), "{:?}", reply.error);
        };
        for seed in 1..=5u8 {
            ok(
                &mut r,
                Request::Register(Register {
                    listen_addr: "0.0.0.0:4000".into(),
                    public_key: id(seed).public_key_b64(),
                    owner: if seed == 2 {
                        "bob@example.com".into()
                    } else {
                        String::new()
                    },
                    hostname: format!("node-{seed}"),
                    lan_addrs: vec!["192.168.1.5:4000".into()],
                    version: "1.0".into(),
                    ..Default::default()
                }),
            );
        }
        ok(
            &mut r,
            Request::SetVisibility(SetVisibility {
                node_id: 1,
                public: true,
                signature: sig(1, "set_visibility:1"),
                ..Default::default()
            }),
        );
        ok(
            &mut r,
            Request::SetTags(SetTags {
                node_id: 1,
                tags: vec!["gpu".into()],
                signature: sig(1, "set_tags:1"),
                ..Default::default()
            }),
        );
        ok(
            &mut r,
            Request::SetTaskExec(SetTaskExec {
                node_id: 1,
                enabled: true,
                signature: sig(1, "set_task_exec:1"),
                sig_ts: None,
            }),
        );
        ok(
            &mut r,
            Request::ReportTrust(TrustPair {
                node_id: 1,
                peer_id: 2,
                signature: sig(1, "report_trust:1:2"),
                sig_ts: None,
            }),
        );
        ok(
            &mut r,
            Request::RequestHandshake(RequestHandshake {
                from_node_id: 3,
                to_node_id: 4,
                justification: "hi".into(),
                signature: sig(3, "handshake:3:4"),
                sig_ts: None,
            }),
        );
        ok(
            &mut r,
            Request::RequestHandshake(RequestHandshake {
                from_node_id: 5,
                to_node_id: 4,
                justification: "yo".into(),
                signature: sig(5, "handshake:5:4"),
                sig_ts: None,
            }),
        );
        ok(
            &mut r,
            Request::RespondHandshake(RespondHandshake {
                node_id: 4,
                peer_id: 5,
                accept: true,
                signature: sig(4, "respond:4:5"),
                sig_ts: None,
            }),
        );
        let ts = T0 * 1000;
        ok(
            &mut r,
            Request::Heartbeat(Heartbeat {
                node_id: 2,
                signature: sig(2, &auth::strong_message("heartbeat:2", ts)),
                sig_ts: Some(ts),
            }),
        );
        if profile == WireProfile::Current {
            ok(
                &mut r,
                Request::CreateNetwork(CreateNetwork {
                    node_id: 1,
                    name: "lab".into(),
                    join_rule: "token".into(),
                    token: "pw".into(),
                    admin_token: "adm".into(),
                }),
            );
            ok(
                &mut r,
                Request::CreateNetwork(CreateNetwork {
                    node_id: 1,
                    name: "club".into(),
                    join_rule: "invite".into(),
                    token: String::new(),
                    admin_token: "adm".into(),
                }),
            );
            ok(
                &mut r,
                Request::JoinNetwork(JoinNetwork {
                    node_id: 3,
                    network_id: 1,
                    token: "pw".into(),
                    signature: sig(3, "join_network:3:1"),
                    ..Default::default()
                }),
            );
            ok(
                &mut r,
                Request::InviteToNetwork(InviteToNetwork {
                    network_id: 2,
                    inviter_id: 1,
                    target_node_id: 4,
                    signature: sig(1, "invite:1:2:4"),
                    sig_ts: None,
                }),
            );
        } else {
            ok(
                &mut r,
                Request::UpdatePoloScore(UpdatePoloScore {
                    node_id: 3,
                    delta: Some(7),
                }),
            );
        }
        // Node 2 leaves: its key, owner and trust pair stay.
        ok(
            &mut r,
            Request::Deregister(Deregister {
                node_id: 2,
                signature: sig(2, "deregister:2"),
                ..Default::default()
            }),
        );
        r
    }

    #[test]
    fn export_import_round_trip_preserves_everything() {
        for profile in [WireProfile::Current, WireProfile::Legacy] {
            let reg = rich_registry(profile);
            let snap = Snapshot::from_state(reg.state());
            let bytes = snap.to_json().unwrap();
            let back = Snapshot::from_json(&bytes).unwrap();
            assert_eq!(back, snap);
            let (state, report) = back.into_state(UnixTime::ZERO);
            assert_eq!(report, ImportReport::default());
            assert_eq!(&state, reg.state(), "{profile:?}");
            // Sanity: the state really holds what we claim to preserve.
            assert_eq!(state.nodes.len(), 4);
            assert!(state.pub_key_idx.contains_key(&id(2).public_key()));
            assert_eq!(state.owner_idx.get("bob@example.com"), Some(&2));
            assert_eq!(state.pending_handshakes.get(&4), Some(&vec![3]));
            assert_eq!(state.sig_ts.get(&2), Some(&(T0 * 1000)));
        }
    }

    #[test]
    fn restored_registry_keeps_working() {
        let reg = rich_registry(WireProfile::Current);
        let (state, _) = Snapshot::from_state(reg.state()).into_state(UnixTime::ZERO);
        let now = UnixTime::from_nanos((T0 + 5) * 1_000_000_000);
        let mut r2 = Registry::from_state(Config::default(), state, now);
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // Node 2's key gets its ID back; node 4 can still accept node 3.
        let reply = r2.handle(
            now,
            peer,
            Request::Register(Register {
                public_key: id(2).public_key_b64(),
                ..Default::default()
            }),
        );
        let Response::RegisterOk(ok) = reply.response else {
            panic!("{reply:?}")
        };
        assert_eq!(ok.node_id, 2);
        let reply = r2.handle(
            now,
            peer,
            Request::RespondHandshake(RespondHandshake {
                node_id: 4,
                peer_id: 3,
                accept: true,
                signature: sig(4, "respond:4:3"),
                sig_ts: None,
            }),
        );
        assert!(reply.error.is_none());
        // The strong-signature record survived: replaying the timestamp fails.
        let ts = T0 * 1000;
        let reply = r2.handle(
            now,
            peer,
            Request::Heartbeat(Heartbeat {
                node_id: 2,
                signature: sig(2, &auth::strong_message("heartbeat:2", ts)),
                sig_ts: Some(ts),
            }),
        );
        assert!(reply.error.is_some());
        // Stale nodes are reaped on the first tick after a long outage.
        let later = now + Duration::from_secs(3600);
        r2.handle_timeout(later);
        assert!(r2.state().nodes.is_empty());
    }

    #[test]
    fn imports_a_reference_shaped_snapshot() {
        let key = id(1).public_key_b64();
        let key2 = id(2).public_key_b64();
        let json = format!(
            r#"{{"next_node":4,"next_net":1,
            "nodes":{{"1":{{"id":1,"owner":"a@example.com","public_key":"{key}","real_addr":"203.0.113.7:4000",
              "networks":[0],"public":true,"last_seen":"2026-02-27T15:03:44+02:00",
              "hostname":"alice","tags":["gpu"],"polo_score":2,"task_exec":true}},
              "2":{{"id":2,"public_key":"{key2}","networks":null}},
              "3":{{"id":3,"public_key":"broken"}}}},
            "networks":{{"0":{{"id":0,"name":"backbone","join_rule":"open","members":[1,2],"created":"2026-02-27T15:00:00+02:00"}}}},
            "trust_pairs":["1:2","x"],
            "pub_key_idx":{{"{key}":1,"{key2}":2}},
            "handshake_inbox":{{"2":[{{"from_node_id":1,"justification":"hi","timestamp":"2026-02-27T15:03:44.123456789+02:00"}}],"-1":[]}},
            "handshake_responses":{{"1":[{{"from_node_id":2,"accept":true,"timestamp":"2026-02-27T15:03:45+02:00"}}]}}}}"#
        );
        let (s, rep) = Snapshot::from_json(json.as_bytes())
            .unwrap()
            .into_state(UnixTime::ZERO);
        assert_eq!(
            rep,
            ImportReport {
                bad_nodes: 1,
                bad_entries: 2
            }
        );
        let n = &s.nodes[&1];
        assert_eq!((n.public, n.task_exec, n.polo_score), (true, true, 2));
        assert_eq!(n.last_seen, parse_rfc3339("2026-02-27T13:03:44Z").unwrap());
        assert_eq!(s.nodes[&2].networks, vec![0]);
        assert_eq!(s.hostname_idx.get("alice"), Some(&1));
        assert_eq!(s.owner_idx.get("a@example.com"), Some(&1));
        assert!(s.has_trust(2, 1));
        assert_eq!(
            s.handshake_inbox[&2][0].timestamp.as_nanos() % 1_000_000_000,
            123_456_789
        );
        assert_eq!(s.pending_handshakes.get(&2), Some(&vec![1]));
        assert_eq!(s.next_node, 4);
        // Missing backbone → recreated.
        let (s, _) = Snapshot::from_json(b"{}")
            .unwrap()
            .into_state(UnixTime::ZERO);
        assert_eq!(s.networks[&0].name, "backbone");
        assert_eq!(Snapshot::from_json(b"\"x\""), Err(SnapshotError::Json));
    }
}
