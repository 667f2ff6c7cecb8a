//! The daemon's network, managed-network and broadcast IPC commands
//! (`spec/daemon.md` §2.7, `spec/ipc.md` §7): each becomes one registry
//! call (signed as this node); broadcast lists the network's members and
//! sends one datagram to each. This part also keeps the set of networks
//! the daemon knows it belongs to (shown by `Info` as `networks`).

use rand_core::{CryptoRng, RngCore, SeedableRng};

use super::{ClientId, Daemon, Purpose};
use crate::addr::Addr;
use crate::crypto::provider::CryptoProvider;
use crate::registry::client::{Call, NetCall};
use crate::registry::codec::Response;
use crate::registry::policy;
use crate::time::Instant;
use crate::wire::ipc::{Command, IpcMessage, ManagedRequest, MemberSub, NetworkRequest};

/// Most members one broadcast sends to (bounded work per request).
pub(super) const MAX_BROADCAST_MEMBERS: usize = 1024;
/// Peers whose network membership one check looks up, at most (the rest
/// wait for the next check, in node-ID order).
pub(super) const MEMBERSHIP_CHECKS_PER_ROUND: usize = 16;

/// A broadcast waiting for the member list.
#[derive(Debug)]
pub(super) struct PendingBroadcast {
    pub(super) client: ClientId,
    pub(super) network: u16,
    pub(super) port: u16,
    pub(super) data: Vec<u8>,
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// `Network` (0x1F).
    pub(super) fn ipc_network(&mut self, now: Instant, client: ClientId, req: NetworkRequest<'_>) {
        let op = req.sub().op();
        let call = match req {
            NetworkRequest::List => NetCall::List,
            NetworkRequest::Join { network, token } => NetCall::Join {
                network,
                token: token.to_owned(),
            },
            NetworkRequest::Leave { network } => NetCall::Leave(network),
            NetworkRequest::Members { network } => NetCall::Members(network),
            NetworkRequest::Invite { network, target } => NetCall::Invite { network, target },
            NetworkRequest::PollInvites => NetCall::PollInvites,
            NetworkRequest::RespondInvite { network, accept } => NetCall::RespondInvite {
                network,
                accept: accept.is_set(),
            },
            NetworkRequest::Create { rule, name, token } => {
                let join_rule = match rule {
                    0 => "open",
                    1 => "token",
                    2 => "invite",
                    _ => {
                        self.push_error(client, &format!("{op}: unknown join rule {rule}"));
                        return;
                    }
                };
                if self.admin_token.is_empty() {
                    self.push_error(
                        client,
                        &format!(
                            "{op}: this daemon has no admin token configured \
                             (the registry requires one to create networks)"
                        ),
                    );
                    return;
                }
                NetCall::Create {
                    name: name.to_owned(),
                    join_rule: join_rule.to_owned(),
                    token: token.to_owned(),
                    admin_token: String::from_utf8_lossy(&self.admin_token).into_owned(),
                }
            }
            NetworkRequest::Delete { network } => NetCall::Delete(network),
            NetworkRequest::Rename { network, name } => NetCall::Rename {
                network,
                name: name.to_owned(),
            },
            NetworkRequest::Member {
                sub,
                network,
                target,
            } => match sub {
                MemberSub::Role => NetCall::Role { network, target },
                MemberSub::Kick => member("kick_member", network, target),
                MemberSub::Promote => member("promote_member", network, target),
                MemberSub::Demote => member("demote_member", network, target),
                MemberSub::Transfer => member("transfer_ownership", network, target),
            },
        };
        self.ipc_call(now, client, Command::NetworkOk, op, Call::Net(call));
    }

    /// `Managed` (0x23).
    pub(super) fn ipc_managed(&mut self, now: Instant, client: ClientId, req: ManagedRequest<'_>) {
        let op = req.sub().op();
        let call = match req {
            ManagedRequest::Status { network: Some(n) } => NetCall::Members(n),
            ManagedRequest::Status { network: None } => {
                self.push_error(client, &format!("{op}: missing network_id"));
                return;
            }
            ManagedRequest::ForceCycle { .. } | ManagedRequest::Reconcile { .. } => {
                // Policies are enforced by the registry (membership) and by
                // this daemon at each broadcast; there is no cycle to run.
                self.push_error(
                    client,
                    &format!(
                        "{op}: nothing to reconcile: policies apply at every join and \
                         broadcast (spec/daemon.md §2.7)"
                    ),
                );
                return;
            }
            ManagedRequest::Policy { network, set } => {
                let policy = match set {
                    None => None,
                    Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                        Ok(serde_json::Value::Null) => Some(serde_json::Value::Null),
                        Ok(v) => match policy::parse_policy(&v) {
                            Ok(p) => Some(p.to_value()),
                            Err(e) => {
                                self.push_error(client, &format!("{op}: {e}"));
                                return;
                            }
                        },
                        Err(e) => {
                            self.push_error(client, &format!("{op}: invalid JSON: {e}"));
                            return;
                        }
                    },
                };
                NetCall::Policy { network, policy }
            }
            ManagedRequest::MemberTags {
                network,
                node_id,
                set,
            } => {
                let tags = match set {
                    None => None,
                    Some(text) => match serde_json::from_str::<Vec<String>>(text) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            self.push_error(client, &format!("{op}: invalid JSON: {e}"));
                            return;
                        }
                    },
                };
                NetCall::MemberTags {
                    network,
                    target: node_id,
                    tags,
                }
            }
        };
        self.ipc_call(now, client, Command::ManagedOk, op, Call::Net(call));
    }

    /// `Broadcast` (0x29): the admin token must match ours; the member
    /// list comes from the registry.
    pub(super) fn ipc_broadcast(
        &mut self,
        now: Instant,
        client: ClientId,
        network: u16,
        port: u16,
        token: &[u8],
        data: &[u8],
    ) {
        let ours = String::from_utf8_lossy(&self.admin_token);
        let given = String::from_utf8_lossy(token);
        if self.admin_token.is_empty() || !crate::registry::auth::token_matches(&ours, &given) {
            self.push_error(client, &"broadcast: invalid admin token");
            return;
        }
        if network == 0 {
            self.push_error(
                client,
                &"broadcast: cannot broadcast on the backbone network",
            );
            return;
        }
        let Some(reg) = self.registry.as_mut() else {
            self.push_error(client, &"broadcast: no registry configured");
            return;
        };
        let purpose = Purpose::Broadcast(Box::new(PendingBroadcast {
            client,
            network,
            port,
            data: data.to_vec(),
        }));
        match self
            .calls
            .start(reg, now, Call::Net(NetCall::Members(network)), purpose)
        {
            Ok(_) => {
                if let Some(c) = self.clients.get_mut(&client) {
                    c.inflight += 1;
                }
            }
            Err(e) => self.push_error(client, &format!("broadcast: registry: {}", e.error)),
        }
    }

    /// The member list of a broadcast arrived.
    pub(super) fn broadcast_members(
        &mut self,
        now: Instant,
        b: PendingBroadcast,
        result: Result<Response, String>,
    ) {
        let me = self.address().map(|a| a.node);
        let (nodes, policy) = match result {
            Ok(Response::ListNodesOk { nodes, policy }) => (nodes, policy),
            Ok(_) => {
                self.reply_error(now, b.client, "broadcast: bad registry reply");
                return;
            }
            Err(e) => {
                self.reply_error(now, b.client, &format!("broadcast: registry: {e}"));
                return;
            }
        };
        let Some(me) = me.filter(|m| nodes.iter().any(|n| n.node_id == *m)) else {
            self.networks.remove(&b.network);
            let who = me.map_or_else(|| "this node".to_owned(), |m| format!("node {m}"));
            self.reply_error(
                now,
                b.client,
                &format!("broadcast: {who} is not a member of network {}", b.network),
            );
            return;
        };
        self.networks.insert(b.network);
        if let Some(p) = policy.as_ref().and_then(|v| policy::parse_policy(v).ok()) {
            if !p.port_allowed(b.port) {
                self.reply_error(
                    now,
                    b.client,
                    &format!(
                        "broadcast: port {} is not in the allowed_ports of network {}",
                        b.port, b.network
                    ),
                );
                return;
            }
        }
        for n in nodes
            .iter()
            .filter(|n| n.node_id != me && !n.offline)
            .take(MAX_BROADCAST_MEMBERS)
        {
            self.ipc_send_to(now, Addr::new(b.network, n.node_id), b.port, &b.data);
        }
        self.reply_msg(now, b.client, &IpcMessage::BroadcastOk);
    }

    /// Keeps [`Self::networks`] in step with what a network reply says
    /// about this node; a membership of ours that ended takes the trust
    /// it granted with it.
    pub(super) fn note_network_reply(&mut self, now: Instant, resp: &Response) {
        let me = self.address().map(|a| a.node);
        let ended = match resp {
            Response::LeaveNetworkOk { network_id } | Response::DeleteNetworkOk { network_id } => {
                Some(*network_id)
            }
            Response::KickMemberOk(r) if Some(r.node_id) == me => Some(r.network_id),
            _ => None,
        };
        if let Some(network) = ended {
            self.end_grants_of(now, |n| n == network);
        }
        match resp {
            Response::CreateNetworkOk { network_id, .. }
            | Response::JoinNetworkOk { network_id, .. } => {
                self.networks.insert(*network_id);
            }
            Response::RespondInviteOk {
                accept: true,
                network_id,
            } => {
                self.networks.insert(*network_id);
            }
            Response::LeaveNetworkOk { network_id } | Response::DeleteNetworkOk { network_id } => {
                self.networks.remove(network_id);
            }
            Response::KickMemberOk(r) if Some(r.node_id) == me => {
                self.networks.remove(&r.network_id);
            }
            Response::LookupOk(ok) if me == Some(ok.node_id) => {
                self.networks = ok.networks.iter().copied().filter(|n| *n != 0).collect();
            }
            _ => {}
        }
    }

    /// Trust granted by a network we are not in (any more, by our last
    /// own lookup) ends.
    pub(super) fn end_grants_outside(&mut self, now: Instant) {
        let ours = self.networks.clone();
        self.end_grants_of(now, |n| !ours.contains(&n));
    }

    /// Ends the network grants whose network satisfies `ended`.
    fn end_grants_of(&mut self, now: Instant, ended: impl Fn(u16) -> bool) {
        let grants: Vec<(u32, u16)> = self
            .life
            .trust()
            .map(|t| t.network_grants().filter(|(_, n)| ended(*n)).collect())
            .unwrap_or_default();
        for (peer, network) in grants {
            self.end_network_grant(now, peer, network);
        }
    }

    /// Ends the trust in `peer` that `network` granted (if it still is
    /// that: explicit trust stays).
    pub(super) fn end_network_grant(&mut self, now: Instant, peer: u32, network: u16) {
        let fx = self
            .life
            .trust_mut()
            .map(|t| t.end_network_grant(peer, network))
            .unwrap_or_default();
        if !fx.is_empty() {
            self.stats.network_grants_ended += 1;
            self.diagnostics_push(format!(
                "trust in node {peer} ended: it came from network {network}, a membership that ended"
            ));
        }
        self.apply_trust(now, fx);
    }

    /// The periodic membership check (every heartbeat period while
    /// registered, `spec/services.md` §4.8): our own lookup (our
    /// networks), and a lookup of up to [`MEMBERSHIP_CHECKS_PER_ROUND`]
    /// peers trusted through a network (theirs). Answers end the grants
    /// whose membership is gone.
    pub(super) fn membership_check(&mut self, now: Instant) {
        self.membership_due = Some(now + self.membership_period);
        let Some(me) = self.address().map(|a| a.node) else {
            return;
        };
        let registered = self.registry.as_ref().is_some_and(|r| r.is_registered());
        if !registered {
            return;
        }
        let grants: Vec<(u32, u16)> = self
            .life
            .trust()
            .map(|t| t.network_grants().collect())
            .unwrap_or_default();
        if grants.is_empty() {
            return;
        }
        self.refresh_own_networks(now, me);
        let cursor = self.membership_cursor;
        let round: Vec<(u32, u16)> = grants
            .iter()
            .filter(|(p, _)| *p > cursor)
            .chain(grants.iter().filter(|(p, _)| *p <= cursor))
            .take(MEMBERSHIP_CHECKS_PER_ROUND)
            .copied()
            .collect();
        for (peer, network) in round {
            self.membership_cursor = peer;
            if let Some(reg) = self.registry.as_mut() {
                let _ = self.calls.start(
                    reg,
                    now,
                    Call::Lookup(peer),
                    Purpose::PeerMembership { peer, network },
                );
            }
        }
    }

    /// After (re-)registration: learn our networks from our own lookup.
    pub(super) fn refresh_own_networks(&mut self, now: Instant, node_id: u32) {
        if let Some(reg) = self.registry.as_mut() {
            // Best effort: a refused call only leaves `networks` as it was.
            let _ = self
                .calls
                .start(reg, now, Call::Lookup(node_id), Purpose::OwnNetworks);
        }
    }
}

fn member(op: &'static str, network: u16, target: u32) -> NetCall {
    NetCall::Member {
        op,
        network,
        target,
    }
}
