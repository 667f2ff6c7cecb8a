//! The registry state machine (`spec/registry.md` §3–§11).
//!
//! [`Registry::handle`] takes the current time, the TCP source address of
//! the connection and one decoded request, and returns a [`Reply`]: the
//! response to frame and send, plus [`Effect`]s. Every
//! [`Effect::Persist`] change that is not lazy must be written durably by
//! the driver **before** the response is sent. [`Effect::Notify`] tells the
//! driver that a node has something waiting (it may push a hint, e.g. via
//! the beacon). Time-driven work (reaping stale nodes, expiring beacons,
//! dropping idle rate-limit buckets) happens in [`Registry::handle_timeout`];
//! [`Registry::poll_timeout`] says when to call it.
//!
//! Its time is wall-clock [`UnixTime`] (see [`crate::registry`]).

mod error;
mod state;

#[cfg(test)]
mod tests;

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

/// The requests [`Registry::handle`] takes (decoded by
/// [`super::framing::next_request`]).
pub use super::codec::{REQUEST_TYPES, Request};
pub use error::{GENERIC_ERROR, RegistryError, SAFE_KEYWORDS};
pub use state::{
    Change, Invite, JoinRule, MAX_PENDING_PER_TARGET, NetworkRecord, NodeRecord, PendingRequest,
    PendingResponse, State, pair,
};

use super::auth::{self, PublicKey, SigError};
use super::clock::unix_secs;
use super::codec::{self, Response, SigFields};
use super::format_addr;
use super::limits::*;
use super::policy::{self as netpolicy, NetworkPolicy, Role};
use super::ratelimit::RateLimiter;
use super::validate;
use crate::time::UnixTime;
use crate::wire::WireProfile;

/// Invitations expire after this (`spec/registry.md` §3.15).
pub const INVITE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// At most this many entries in one `list_nodes` or `list_networks` reply
/// (our bound, `spec/registry.md` §6).
pub const MAX_LIST_NODES: usize = 10_000;
/// Shortest time between two key rotations of one node (§3.11): longer
/// than a commit takes to reach the other frontends of a shared store, so
/// two rotations racing on two frontends cannot both pass.
pub const ROTATE_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Index in [`REQUEST_TYPES`] of the first network-management type that
/// only the current profile knows (`delete_network` onwards).
const FIRST_OURS_NETWORK_TYPE: usize = 31;

/// The member operations of [`MemberAction`](codec::MemberAction) requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberOp {
    Kick,
    Promote,
    Demote,
    Transfer,
}

impl MemberOp {
    fn name(self) -> &'static str {
        match self {
            MemberOp::Kick => "kick_member",
            MemberOp::Promote => "promote_member",
            MemberOp::Demote => "demote_member",
            MemberOp::Transfer => "transfer_ownership",
        }
    }
}

/// The network-management operations, each with its name (the first field
/// of its signed challenge, and the text of a role error) and the roles
/// allowed to perform it: one table ([`NetOp::rule`]) instead of a check
/// in every handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetOp {
    DeleteNetwork,
    RenameNetwork,
    Member(MemberOp),
    SetMemberTags,
    SetNetworkPolicy,
}

impl NetOp {
    /// The operation's name and the roles allowed.
    fn rule(self) -> (&'static str, &'static [Role]) {
        const OWNER: &[Role] = &[Role::Owner];
        const OWNER_OR_ADMIN: &[Role] = &[Role::Owner, Role::Admin];
        match self {
            NetOp::DeleteNetwork => ("delete_network", OWNER),
            NetOp::RenameNetwork => ("rename_network", OWNER),
            NetOp::Member(MemberOp::Kick) => (MemberOp::Kick.name(), OWNER_OR_ADMIN),
            NetOp::Member(m) => (m.name(), OWNER),
            NetOp::SetMemberTags => ("set_member_tags", OWNER_OR_ADMIN),
            NetOp::SetNetworkPolicy => ("set_network_policy", OWNER),
        }
    }
}

/// The fields every network-management request carries.
trait NetRequest {
    /// Acting node, network, signature fields and admin token.
    fn caller(&self) -> (u32, u16, SigFields<'_>, &str);
}

macro_rules! net_request {
    ($($t:ident),*) => {
        $(impl NetRequest for codec::$t {
            fn caller(&self) -> (u32, u16, SigFields<'_>, &str) {
                (self.node_id, self.network_id, self.sig(), &self.admin_token)
            }
        })*
    };
}

net_request!(
    DeleteNetwork,
    RenameNetwork,
    MemberAction,
    SetMemberTags,
    SetNetworkPolicy
);

/// Who performs a network-management operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Actor {
    /// The operator (valid admin token): every role rule but the ones
    /// about the owner is waived.
    Operator,
    /// A member with this role.
    Member(Role),
}

/// Registry configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Wire profile (error texts, networks, polo score, endpoint rule).
    pub profile: WireProfile,
    /// Operator secret; `None` disables admin operations.
    pub admin_token: Option<String>,
    /// Refuse the legacy (replayable) signature form.
    pub strict_signatures: bool,
    /// Accepted clock difference for strong-form signatures.
    pub sig_freshness: Duration,
    /// Nodes silent for longer than this are reaped.
    pub stale_threshold: Duration,
    /// How often reaping runs.
    pub reap_interval: Duration,
    /// Maximum live nodes.
    pub max_nodes: usize,
    /// Maximum remembered keys / owners.
    pub max_identities: usize,
    /// Maximum trust pairs.
    pub max_trust_pairs: usize,
    /// Allow the unauthenticated owner-string reclaim (`spec/registry.md` §4).
    pub owner_reclaim: bool,
    /// Enforce the per-IP rate limits.
    pub rate_limits: bool,
    /// Read-only hot standby.
    pub standby: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            profile: WireProfile::Current,
            admin_token: None,
            strict_signatures: false,
            sig_freshness: SIG_FRESHNESS,
            stale_threshold: STALE_THRESHOLD,
            reap_interval: REAP_INTERVAL,
            max_nodes: DEFAULT_MAX_NODES,
            max_identities: DEFAULT_MAX_IDENTITIES,
            max_trust_pairs: DEFAULT_MAX_TRUST_PAIRS,
            owner_reclaim: true,
            rate_limits: true,
            standby: false,
        }
    }
}

/// A hint that a node has something waiting at the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A handshake request arrived in `to`'s inbox.
    HandshakeRequest {
        /// Target.
        to: u32,
        /// Sender.
        from: u32,
    },
    /// A handshake decision arrived in `to`'s response inbox.
    HandshakeResponse {
        /// Original requester.
        to: u32,
        /// Responder.
        from: u32,
        /// Decision.
        accept: bool,
    },
    /// Ours: `from` revoked its trust pair with `to` (`spec/registry.md`
    /// §3.12).
    TrustRevoked {
        /// The other side of the removed pair.
        to: u32,
        /// The revoker.
        from: u32,
    },
    /// A network invitation arrived for `to`.
    Invite {
        /// Invited node.
        to: u32,
        /// Network.
        network_id: u16,
    },
}

/// Something the driver must do besides sending the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Persist this change (before the reply unless it is lazy).
    Persist(Change),
    /// Tell a node it has mail.
    Notify(Notification),
    /// Ours: the connection that carried this request proved (by a valid
    /// signature) that it speaks for this node and asked for pushes
    /// (`poll_handshakes` with `push: true`, `spec/registry.md` §3.13). The
    /// driver may then send [`Notification`]s for the node on it as
    /// [`codec::Response::Push`] frames, after the changes are durable.
    PushWanted(u32),
}

/// The outcome of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// What to send.
    pub response: Response,
    /// What to persist / notify, in order.
    pub effects: Vec<Effect>,
    /// The full reason of a failure, for the driver's log (the response may
    /// carry only the generic text).
    pub error: Option<RegistryError>,
}

#[derive(Clone, Debug)]
struct Beacon {
    addr: String,
    last_seen: UnixTime,
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    config: Config,
    state: State,
    beacons: BTreeMap<u32, Beacon>,
    register_rl: RateLimiter,
    resolve_rl: RateLimiter,
    query_rl: RateLimiter,
    next_tick: UnixTime,
    effects: Vec<Effect>,
    /// Ours: new node IDs come from this range `[next, end)` handed out by
    /// a store shared by several frontends, instead of `state.next_node`.
    id_lease: Option<(u32, u32)>,
    /// Whether this instance reaps stale nodes (one reaper per shared
    /// store).
    reaping: bool,
    /// Key checks ([`auth::check_public_key`]) run by `register`.
    key_checks: u64,
    /// Keys the driver checked already ([`Registry::key_checked`]), and
    /// the order they came in (the oldest are forgotten first).
    prechecked: BTreeSet<PublicKey>,
    prechecked_order: VecDeque<PublicKey>,
}

/// Ours: keys remembered by [`Registry::key_checked`] at most
/// (`spec/registry.md` §12).
pub const MAX_PRECHECKED: usize = 4096;

type Res = Result<Response, RegistryError>;

impl Registry {
    /// A fresh registry (backbone only) at `now`.
    pub fn new(config: Config, now: UnixTime) -> Self {
        Self::from_state(config, State::new(now), now)
    }

    /// A registry restored from `state` (snapshot + replayed changes).
    pub fn from_state(config: Config, mut state: State, now: UnixTime) -> Self {
        state.rebuild_indexes();
        let next_tick = now + config.reap_interval;
        Registry {
            register_rl: RateLimiter::new(REGISTER_RATE, RATE_WINDOW, MAX_RATE_BUCKETS),
            resolve_rl: RateLimiter::new(RESOLVE_RATE, RATE_WINDOW, MAX_RATE_BUCKETS),
            query_rl: RateLimiter::new(QUERY_RATE, RATE_WINDOW, MAX_RATE_BUCKETS),
            config,
            state,
            beacons: BTreeMap::new(),
            next_tick,
            effects: Vec::new(),
            id_lease: None,
            reaping: true,
            key_checks: 0,
            prechecked: BTreeSet::new(),
            prechecked_order: VecDeque::new(),
        }
    }

    /// Ours: how many keys `register` has checked ([`auth::check_public_key`],
    /// a scalar multiplication, half of a new registration's CPU). A key
    /// already registered is not checked again: it passed when it was
    /// first registered, so a re-registration (every daemon after a
    /// restart of the rendezvous) skips it.
    pub fn key_checks(&self) -> u64 {
        self.key_checks
    }

    /// Ours: `key` passed [`auth::check_public_key`] outside the registry
    /// (a driver checks the keys of a batch of `register` requests on
    /// several threads before handling them), so the `register` that
    /// brings it skips the check. Only a key that passed that very check
    /// may be given here. The last [`MAX_PRECHECKED`] keys are kept; a
    /// key is used once.
    pub fn key_checked(&mut self, key: PublicKey) {
        if self.prechecked_order.len() >= MAX_PRECHECKED {
            if let Some(old) = self.prechecked_order.pop_front() {
                self.prechecked.remove(&old);
            }
        }
        if self.prechecked.insert(key) {
            self.prechecked_order.push_back(key);
        }
    }

    /// Ours: takes new node IDs from `[start, end)` from now on (a block
    /// leased from a store shared by several frontends, so that IDs stay
    /// unique across them; `spec/registry.md` §11.3). Replaces any earlier
    /// lease. `state.next_node` is then neither used nor written.
    pub fn lease_node_ids(&mut self, start: u32, end: u32) {
        self.id_lease = Some((start.max(1), end));
    }

    /// The current lease `[next, end)`; `None` without one.
    pub fn node_id_lease(&self) -> Option<(u32, u32)> {
        self.id_lease
    }

    /// Node IDs left in the current lease; `None` without a lease.
    pub fn leased_node_ids_left(&self) -> Option<u32> {
        self.id_lease.map(|(next, end)| end.saturating_sub(next))
    }

    /// Ours: turns reaping of stale nodes on or off (with a shared store,
    /// only the frontend holding the reaper lock reaps). On by default.
    pub fn set_reaping(&mut self, on: bool) {
        self.reaping = on;
    }

    /// Ours: applies a record another frontend committed to the shared
    /// store (`value` `None` = deleted) and returns the hint the change
    /// implies for a node connected here (a handshake request or response
    /// that arrived, a revoked trust pair).
    pub fn apply_remote_record(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<Notification>, crate::registry::records::RecordError> {
        crate::registry::records::apply_record(&mut self.state, key, value)
    }

    /// Ours: records that the beacon at `beacon` (its address as peer
    /// beacons know it) now serves `node` (`spec/beacon.md` §3.8). Persists
    /// a change only if the node is registered and the beacon differs; the
    /// returned effects are committed like a request's. A standby records
    /// nothing.
    pub fn note_beacon(&mut self, node: u32, beacon: &str) -> Vec<Effect> {
        self.effects.clear();
        if self.config.standby {
            return Vec::new();
        }
        let Some(n) = self.state.nodes.get(&node) else {
            return Vec::new();
        };
        if n.beacon != beacon {
            let mut n = n.clone();
            n.beacon = beacon.to_owned();
            self.commit(Change::PutNode(Box::new(n)));
        }
        core::mem::take(&mut self.effects)
    }

    /// The current durable state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// When [`Registry::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<UnixTime> {
        Some(self.next_tick)
    }

    /// Periodic work: reap nodes silent for longer than the stale threshold
    /// (at most [`MAX_REAP_PER_TICK`] per call), expire beacons and drop idle
    /// rate-limit buckets. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: UnixTime) -> Vec<Effect> {
        if now < self.next_tick {
            return Vec::new();
        }
        let threshold = self.config.stale_threshold;
        let stale: Vec<u32> = if !self.reaping {
            Vec::new()
        } else {
            self.state
                .nodes
                .values()
                .filter(|n| now.saturating_duration_since(n.last_seen) > threshold)
                .map(|n| n.id)
                .take(MAX_REAP_PER_TICK + 1)
                .collect()
        };
        let more = stale.len() > MAX_REAP_PER_TICK;
        for id in stale.into_iter().take(MAX_REAP_PER_TICK) {
            self.reap(id);
        }
        self.beacons
            .retain(|_, b| now.saturating_duration_since(b.last_seen) <= BEACON_TTL);
        self.register_rl.sweep(now);
        self.resolve_rl.sweep(now);
        self.query_rl.sweep(now);
        self.next_tick = if more {
            now
        } else {
            now + self.config.reap_interval
        };
        core::mem::take(&mut self.effects)
    }

    fn reap(&mut self, id: u32) {
        let Some(node) = self.state.nodes.get(&id) else {
            return;
        };
        let nets: Vec<u16> = match self.config.profile {
            // Current: only the backbone membership goes; the rest is kept
            // so that the node gets its networks back when it returns.
            WireProfile::Current => vec![0],
            WireProfile::Legacy => node.networks.clone(),
        };
        for network_id in nets {
            self.commit(Change::Membership {
                network_id,
                node_id: id,
                member: false,
            });
        }
        self.commit(Change::RemoveNode(id));
    }

    fn commit(&mut self, change: Change) {
        self.state.apply(&change);
        self.effects.push(Effect::Persist(change));
    }

    fn notify(&mut self, n: Notification) {
        self.effects.push(Effect::Notify(n));
    }

    /// Handles one request from the connection whose TCP source is `peer`.
    pub fn handle(&mut self, now: UnixTime, peer: SocketAddr, req: Request) -> Reply {
        self.effects.clear();
        let result = if self.config.standby && !allowed_on_standby(&req) {
            Err(RegistryError::Standby)
        } else {
            self.dispatch(now, peer, req)
        };
        let effects = core::mem::take(&mut self.effects);
        match result {
            Ok(response) => Reply {
                response,
                effects,
                error: None,
            },
            Err(e) => Reply {
                response: Response::error(e.wire_text(self.config.profile)),
                effects,
                error: Some(e),
            },
        }
    }

    fn dispatch(&mut self, now: UnixTime, peer: SocketAddr, req: Request) -> Res {
        let legacy = self.config.profile == WireProfile::Legacy;
        match req {
            Request::Register(r) => self.register(now, peer, r),
            Request::Lookup(r) => {
                self.query_limit(now, peer.ip())?;
                self.lookup(r.node_id)
            }
            Request::Resolve(r) => self.resolve(now, peer.ip(), r),
            Request::Heartbeat(r) => self.heartbeat(now, r),
            Request::Deregister(r) => self.deregister(now, r),
            Request::SetVisibility(r) => self.set_visibility(now, r),
            Request::SetHostname(r) => self.set_hostname(now, r),
            Request::ResolveHostname(r) => {
                self.query_limit(now, peer.ip())?;
                self.resolve_hostname(r)
            }
            Request::SetTags(r) => self.set_tags(now, r),
            Request::SetTaskExec(r) => self.set_task_exec(now, r),
            Request::RotateKey(r) => self.rotate_key(now, r),
            Request::ReportTrust(r) => self.report_trust(now, r),
            Request::RevokeTrust(r) => self.revoke_trust(now, r),
            Request::CheckTrust(r) => Ok(Response::CheckTrustOk {
                trusted: self.state.has_trust(r.node_id, r.peer_id)
                    || self.state.share_network(r.node_id, r.peer_id),
            }),
            Request::RequestHandshake(r) => self.request_handshake(now, r),
            Request::PollHandshakes(r) => self.poll_handshakes(now, r),
            Request::RespondHandshake(r) => self.respond_handshake(now, r),
            Request::Punch(r) => self.punch(now, r),
            Request::ListNetworks(r) => Ok(self.list_networks(&r.admin_token)),
            Request::ListNodes(r) => {
                self.query_limit(now, peer.ip())?;
                self.list_nodes(r)
            }
            Request::CreateNetwork(_) | Request::JoinNetwork(_) | Request::LeaveNetwork(_)
                if legacy =>
            {
                Err(RegistryError::NetworksDisabled)
            }
            Request::CreateNetwork(r) => self.create_network(now, r),
            Request::JoinNetwork(r) => self.join_network(now, r),
            Request::LeaveNetwork(r) => self.leave_network(now, r),
            Request::InviteToNetwork(_) if legacy => Err(unknown("invite_to_network")),
            Request::PollInvites(_) if legacy => Err(unknown("poll_invites")),
            Request::RespondInvite(_) if legacy => Err(unknown("respond_invite")),
            Request::InviteToNetwork(r) => self.invite(now, r),
            Request::PollInvites(r) => self.poll_invites(now, r),
            Request::RespondInvite(r) => self.respond_invite(now, r),
            Request::UpdatePoloScore(_) if !legacy => Err(unknown("update_polo_score")),
            Request::SetPoloScore(_) if !legacy => Err(unknown("set_polo_score")),
            Request::GetPoloScore(_) if !legacy => Err(unknown("get_polo_score")),
            Request::UpdatePoloScore(r) => {
                let delta = r.delta.ok_or(RegistryError::PoloDeltaRequired)?;
                self.polo(r.node_id, |s| s.saturating_add(delta))
                    .map(Response::UpdatePoloScoreOk)
            }
            Request::SetPoloScore(r) => {
                let v = r.polo_score.ok_or(RegistryError::PoloScoreRequired)?;
                self.polo(r.node_id, |_| v).map(Response::SetPoloScoreOk)
            }
            Request::GetPoloScore(r) => self.polo(r.node_id, |s| s).map(Response::GetPoloScoreOk),
            Request::BeaconRegister(r) => self.beacon_register(now, r),
            Request::BeaconList(_) => Ok(self.beacon_list(now)),
            r if legacy && r.type_index().is_some_and(|i| i >= FIRST_OURS_NETWORK_TYPE) => {
                Err(unknown(r.type_name()))
            }
            Request::DeleteNetwork(r) => self.delete_network(now, r),
            Request::RenameNetwork(r) => self.rename_network(now, r),
            Request::KickMember(r) => self.member_action(now, MemberOp::Kick, r),
            Request::PromoteMember(r) => self.member_action(now, MemberOp::Promote, r),
            Request::DemoteMember(r) => self.member_action(now, MemberOp::Demote, r),
            Request::TransferOwnership(r) => self.member_action(now, MemberOp::Transfer, r),
            Request::GetMemberRole(r) => {
                let net = self.network(r.network_id)?;
                Self::must_be_member(net, r.target_node_id)?;
                Ok(Response::GetMemberRoleOk(codec::MemberRoleOk {
                    network_id: r.network_id,
                    node_id: r.target_node_id,
                    role: net.role(r.target_node_id).as_str().to_owned(),
                }))
            }
            Request::SetMemberTags(r) => self.set_member_tags(now, r),
            Request::GetMemberTags(r) => {
                let net = self.network(r.network_id)?;
                Self::must_be_member(net, r.target_node_id)?;
                Ok(Response::GetMemberTagsOk(codec::MemberTagsOk {
                    network_id: r.network_id,
                    node_id: r.target_node_id,
                    tags: net.tags_of(r.target_node_id).to_vec(),
                }))
            }
            Request::SetNetworkPolicy(r) => self.set_network_policy(now, r),
            Request::GetNetworkPolicy(r) => {
                let net = self.network(r.network_id)?;
                Ok(Response::GetNetworkPolicyOk(codec::PolicyOk {
                    network_id: r.network_id,
                    policy: net.policy.as_ref().map(NetworkPolicy::to_value),
                }))
            }
            Request::Unknown(t) => Err(RegistryError::UnknownType(t)),
        }
    }

    // ----- helpers -----------------------------------------------------

    fn query_limit(&mut self, now: UnixTime, ip: IpAddr) -> Result<(), RegistryError> {
        if self.config.rate_limits
            && self.config.profile == WireProfile::Current
            && !self.query_rl.allow(ip, now)
        {
            return Err(RegistryError::QueryRateLimited(ip));
        }
        Ok(())
    }

    fn node(&self, id: u32) -> Result<&NodeRecord, RegistryError> {
        self.state
            .nodes
            .get(&id)
            .ok_or(RegistryError::NodeNotFound(id))
    }

    fn admin_ok(&self, given: &str) -> bool {
        match &self.config.admin_token {
            Some(t) if !t.is_empty() && !given.is_empty() => auth::token_matches(t, given),
            _ => false,
        }
    }

    fn require_admin(&self, given: &str) -> Result<(), RegistryError> {
        match &self.config.admin_token {
            None => Err(RegistryError::AdminDisabled),
            Some(t) if t.is_empty() => Err(RegistryError::AdminDisabled),
            Some(t) if auth::token_matches(t, given) => Ok(()),
            Some(_) => Err(RegistryError::InvalidAdminToken),
        }
    }

    /// Verifies a signed request for `node_id` (legacy challenge or strong
    /// form); in the current profile a valid `admin_token` may stand in.
    fn authenticate(
        &mut self,
        now: UnixTime,
        node_id: u32,
        challenge: &str,
        sig: SigFields<'_>,
        admin_token: Option<&str>,
    ) -> Result<(), RegistryError> {
        if self.config.profile == WireProfile::Current
            && admin_token.is_some_and(|t| self.admin_ok(t))
        {
            return Ok(());
        }
        let key = self.node(node_id)?.public_key;
        self.check_sig(now, Some(node_id), &key, challenge, sig)
    }

    /// Checks a signature by `key`. For the strong form, `replay_id` names
    /// the node whose last timestamp must be exceeded (and is updated).
    fn check_sig(
        &mut self,
        now: UnixTime,
        replay_id: Option<u32>,
        key: &PublicKey,
        challenge: &str,
        sig: SigFields<'_>,
    ) -> Result<(), RegistryError> {
        match sig.sig_ts {
            None => {
                if self.config.strict_signatures {
                    return Err(SigError::StrongRequired.into());
                }
                auth::verify(key, challenge.as_bytes(), sig.signature)?;
            }
            Some(ts) => {
                let msg = auth::strong_message(challenge, ts);
                auth::verify(key, msg.as_bytes(), sig.signature)?;
                let now_ms = now.as_millis();
                let window =
                    u64::try_from(self.config.sig_freshness.as_millis()).unwrap_or(u64::MAX);
                if ts.abs_diff(now_ms) > window {
                    return Err(SigError::Stale.into());
                }
                if let Some(id) = replay_id {
                    if self.state.sig_ts.get(&id).is_some_and(|last| ts <= *last) {
                        return Err(SigError::Replayed.into());
                    }
                    self.commit(Change::SigTs { node_id: id, ts });
                }
            }
        }
        Ok(())
    }

    /// `requester` may learn `target`'s endpoint (`spec/registry.md` §4.2).
    pub fn may_resolve(&self, requester: u32, target: u32) -> bool {
        let Some(t) = self.state.nodes.get(&target) else {
            return false;
        };
        self.state.nodes.contains_key(&requester)
            && (t.public
                || requester == target
                || self.state.has_trust(requester, target)
                || self.state.share_network(requester, target))
    }

    fn endpoint(&self, listen_addr: &str, peer: SocketAddr) -> String {
        let parsed = split_host_port(listen_addr);
        match (self.config.profile, parsed) {
            (WireProfile::Legacy, Some((_, port))) => SocketAddr::new(peer.ip(), port).to_string(),
            (WireProfile::Current, Some((host, port))) => {
                // Only a globally routable IP literal is kept; names are not
                // (peers need an address, spec/registry.md §12).
                let replace = host
                    .parse::<IpAddr>()
                    .map_or(true, |ip| !is_globally_routable(ip));
                if replace || listen_addr.len() > MAX_ADDR_LEN {
                    SocketAddr::new(peer.ip(), port).to_string()
                } else {
                    listen_addr.to_owned()
                }
            }
            (_, None) => peer.to_string(),
        }
    }

    fn backbone_addr(id: u32) -> String {
        format_addr(0, id)
    }

    // ----- register ----------------------------------------------------

    fn register(&mut self, now: UnixTime, peer: SocketAddr, r: codec::Register) -> Res {
        if r.public_key.is_empty() {
            return Err(RegistryError::PublicKeyRequired);
        }
        let key = auth::decode_key_bytes(&r.public_key).map_err(RegistryError::InvalidPublicKey)?;
        if let Some(id) = self.state.retired_keys.get(&key) {
            return Err(RegistryError::KeyRetired(*id));
        }
        let known = self.state.pub_key_idx.get(&key).copied();
        // A registered (or retired) key passed this check when it came in.
        if known.is_none() && !self.prechecked.remove(&key) {
            self.key_checks += 1;
            auth::check_public_key(&key).map_err(RegistryError::InvalidPublicKey)?;
        }
        if self.config.rate_limits && !self.register_rl.allow(peer.ip(), now) && known.is_none() {
            return Err(RegistryError::RegisterRateLimited(peer.ip()));
        }
        if r.owner.len() > MAX_OWNER_LEN {
            return Err(RegistryError::FieldTooLong("owner"));
        }
        let challenge = format!("register:{}:{}", r.listen_addr, r.public_key);
        if !r.signature.is_empty() || self.config.strict_signatures {
            // The replay record is keyed by the ID the key already has.
            self.check_sig(now, known, &key, &challenge, r.sig())?;
        }
        let real_addr = self.endpoint(&r.listen_addr, peer);
        let lan_addrs: Vec<String> = r
            .lan_addrs
            .iter()
            .filter(|a| a.len() <= MAX_ADDR_LEN)
            .take(MAX_LAN_ADDRS)
            .cloned()
            .collect();
        let version: String = r.version.chars().take(64).collect();

        // Resolution order of spec/registry.md §4.
        let owner_id = if self.config.owner_reclaim && !r.owner.is_empty() {
            self.state.owner_idx.get(&r.owner).copied()
        } else {
            None
        };
        let mut node = if let Some(id) = known {
            match self.state.nodes.get(&id) {
                Some(live) => {
                    let mut n = live.clone();
                    if n.owner.is_empty() {
                        n.owner = r.owner.clone();
                    }
                    n
                }
                None => self.recreate(id, key, &r.owner, now)?,
            }
        } else if let Some(id) = owner_id {
            if self.rotated_ever(id) {
                return Err(RegistryError::ReclaimRotated(id));
            }
            if self.state.pub_key_idx.len() >= self.config.max_identities {
                return Err(RegistryError::RegistryFull);
            }
            let n = match self.state.nodes.get(&id) {
                Some(live) => {
                    let mut n = live.clone();
                    n.public_key = key;
                    n
                }
                None => self.recreate(id, key, &r.owner, now)?,
            };
            // The owner's old key no longer maps to this node.
            let old: Vec<PublicKey> = self
                .state
                .pub_key_idx
                .iter()
                .filter(|(_, v)| **v == id)
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                self.commit(Change::DropKey {
                    key: k,
                    node_id: id,
                });
            }
            self.commit(Change::PutKey { key, node_id: id });
            n
        } else {
            if self.state.nodes.len() >= self.config.max_nodes
                || self.state.pub_key_idx.len() >= self.config.max_identities
            {
                return Err(RegistryError::RegistryFull);
            }
            let id = match self.id_lease {
                Some((next, end)) => {
                    // A leased ID a node already holds (a store imported
                    // without advancing its ID sequence) is skipped.
                    let mut id = next;
                    while id < end && self.state.nodes.contains_key(&id) {
                        id += 1;
                    }
                    if id >= end {
                        self.id_lease = Some((end, end));
                        return Err(RegistryError::NodeIdsExhausted);
                    }
                    self.id_lease = Some((id + 1, end));
                    id
                }
                None => {
                    let id = self.state.next_node;
                    if id == 0 {
                        return Err(RegistryError::NodeIdsExhausted);
                    }
                    self.commit(Change::NextNode(id.checked_add(1).unwrap_or(0)));
                    id
                }
            };
            self.commit(Change::PutKey { key, node_id: id });
            new_node(id, key, &r.owner, now)
        };
        let id = node.id;
        node.real_addr = real_addr;
        node.last_seen = now;
        if !r.lan_addrs.is_empty() {
            node.lan_addrs = lan_addrs;
        }
        if !version.is_empty() {
            node.version = version;
        }
        let mut hostname_error = None;
        if !r.hostname.is_empty() {
            match validate::hostname(&r.hostname) {
                Err(e) => hostname_error = Some(e.to_string()),
                Ok(()) => match self.state.hostname_idx.get(&r.hostname) {
                    Some(holder) if *holder != id && self.state.nodes.contains_key(holder) => {
                        if self.config.profile == WireProfile::Current {
                            hostname_error =
                                Some(format!("hostname \"{}\" already in use", r.hostname));
                        }
                    }
                    _ => node.hostname = r.hostname.clone(),
                },
            }
        }
        if !node.owner.is_empty()
            && self.state.owner_idx.get(&node.owner) != Some(&id)
            && self.state.owner_idx.len() < self.config.max_identities
        {
            self.commit(Change::PutOwner {
                owner: node.owner.clone(),
                node_id: id,
            });
        }
        let hostname = (!node.hostname.is_empty()).then(|| node.hostname.clone());
        let observed = node.real_addr.clone();
        let was_member = self
            .state
            .networks
            .get(&0)
            .is_some_and(|n| n.members.contains(&id));
        let networks = node.networks.clone();
        self.commit(Change::PutNode(Box::new(node)));
        if !was_member {
            self.commit(Change::Membership {
                network_id: 0,
                node_id: id,
                member: true,
            });
        }
        // Restore the non-backbone memberships of a returning node.
        for network_id in networks.into_iter().filter(|n| *n != 0) {
            if self
                .state
                .networks
                .get(&network_id)
                .is_some_and(|n| !n.members.contains(&id))
            {
                self.commit(Change::Membership {
                    network_id,
                    node_id: id,
                    member: true,
                });
            }
        }
        let current = self.config.profile == WireProfile::Current;
        Ok(Response::RegisterOk(codec::RegisterOk {
            address: Self::backbone_addr(id),
            network_id: 0,
            node_id: id,
            public_key: auth::encode_public_key(&key),
            hostname,
            hostname_error,
            observed_addr: current.then_some(observed),
            protocol_version: current.then_some(1),
        }))
    }

    /// A node record for a returning identity. In the current profile the
    /// non-backbone networks whose member lists still name it come back.
    fn recreate(
        &self,
        id: u32,
        key: PublicKey,
        owner: &str,
        now: UnixTime,
    ) -> Result<NodeRecord, RegistryError> {
        if self.state.nodes.len() >= self.config.max_nodes {
            return Err(RegistryError::RegistryFull);
        }
        let mut n = new_node(id, key, owner, now);
        if self.config.profile == WireProfile::Current {
            n.networks.extend(
                self.state
                    .networks
                    .values()
                    .filter(|net| net.id != 0 && net.members.contains(&id))
                    .map(|net| net.id)
                    .take(MAX_NETWORKS_PER_NODE),
            );
        }
        Ok(n)
    }

    // ----- queries -----------------------------------------------------

    fn lookup(&self, id: u32) -> Res {
        let n = self.node(id)?;
        let current = self.config.profile == WireProfile::Current;
        let first = n.networks.first().copied().unwrap_or(0);
        let real = n.public.then(|| n.real_addr.clone());
        Ok(Response::LookupOk(codec::LookupOk {
            address: format_addr(first, id),
            networks: n.networks.clone(),
            node_id: id,
            polo_score: (!current).then_some(n.polo_score),
            public: n.public,
            public_key: auth::encode_public_key(&n.public_key),
            hostname: (!n.hostname.is_empty()).then(|| n.hostname.clone()),
            tags: (!n.tags.is_empty()).then(|| n.tags.clone()),
            task_exec: n.task_exec,
            endpoint: if current { real.clone() } else { None },
            real_addr: real,
        }))
    }

    fn resolve(&mut self, now: UnixTime, ip: IpAddr, r: codec::Resolve) -> Res {
        if self.config.rate_limits
            && self.config.profile == WireProfile::Current
            && !self.resolve_rl.allow(ip, now)
        {
            return Err(RegistryError::QueryRateLimited(ip));
        }
        if !self.state.nodes.contains_key(&r.requester_id) {
            return Err(RegistryError::RequesterNotRegistered(r.requester_id));
        }
        let challenge = format!("resolve:{}:{}", r.requester_id, r.node_id);
        self.authenticate(now, r.requester_id, &challenge, r.sig(), None)?;
        let t = self.node(r.node_id)?;
        if !self.may_resolve(r.requester_id, r.node_id) {
            return Err(RegistryError::Private(r.node_id));
        }
        let lan = (self.config.profile == WireProfile::Current && !t.lan_addrs.is_empty())
            .then(|| t.lan_addrs.clone());
        Ok(Response::ResolveOk(codec::ResolveOk {
            node_id: r.node_id,
            real_addr: t.real_addr.clone(),
            lan_addrs: lan,
        }))
    }

    fn resolve_hostname(&self, r: codec::ResolveHostname) -> Res {
        if r.hostname.is_empty() {
            return Err(RegistryError::HostnameRequired);
        }
        let not_found = || RegistryError::HostnameNotFound(r.hostname.clone());
        let id = *self
            .state
            .hostname_idx
            .get(&r.hostname)
            .ok_or_else(not_found)?;
        let n = self.state.nodes.get(&id).ok_or_else(not_found)?;
        if self.config.profile == WireProfile::Current
            && !n.public
            && !(r.requester_id != 0 && self.may_resolve(r.requester_id, id))
        {
            return Err(not_found());
        }
        Ok(Response::ResolveHostnameOk {
            address: Self::backbone_addr(id),
            hostname: r.hostname,
            node_id: id,
            public: n.public,
        })
    }

    // ----- node updates ------------------------------------------------

    fn heartbeat(&mut self, now: UnixTime, r: codec::Heartbeat) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("heartbeat:{}", r.node_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), None)?;
        self.commit(Change::Touch {
            node_id: r.node_id,
            last_seen: now,
        });
        Ok(Response::HeartbeatOk {
            time: unix_secs(now),
        })
    }

    fn deregister(&mut self, now: UnixTime, r: codec::Deregister) -> Res {
        let Some(node) = self.state.nodes.get(&r.node_id) else {
            return Ok(Response::DeregisterOk {});
        };
        let nets = node.networks.clone();
        let challenge = format!("deregister:{}", r.node_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), Some(&r.admin_token))?;
        // Every membership goes, including ones a reaped record left behind.
        let mut all: Vec<u16> = self
            .state
            .networks
            .values()
            .filter(|n| n.members.contains(&r.node_id))
            .map(|n| n.id)
            .collect();
        all.extend(nets);
        all.sort_unstable();
        all.dedup();
        for network_id in all {
            self.commit(Change::Membership {
                network_id,
                node_id: r.node_id,
                member: false,
            });
        }
        self.commit(Change::RemoveNode(r.node_id));
        Ok(Response::DeregisterOk {})
    }

    /// Whether node `id` ever rotated its key (live record, or a retired
    /// key naming it once the node is gone).
    fn rotated_ever(&self, id: u32) -> bool {
        match self.state.nodes.get(&id) {
            Some(n) => n.key_rot_count > 0,
            None => self.state.retired_keys.values().any(|v| *v == id),
        }
    }

    fn update_node(
        &mut self,
        id: u32,
        f: impl FnOnce(&mut NodeRecord),
    ) -> Result<(), RegistryError> {
        let mut n = self.node(id)?.clone();
        f(&mut n);
        self.commit(Change::PutNode(Box::new(n)));
        Ok(())
    }

    fn set_visibility(&mut self, now: UnixTime, r: codec::SetVisibility) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("set_visibility:{}", r.node_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), Some(&r.admin_token))?;
        self.update_node(r.node_id, |n| n.public = r.public)?;
        Ok(Response::SetVisibilityOk {
            node_id: r.node_id,
            visibility: if r.public { "public" } else { "private" }.to_owned(),
        })
    }

    fn set_hostname(&mut self, now: UnixTime, r: codec::SetHostname) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("set_hostname:{}", r.node_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), Some(&r.admin_token))?;
        validate::hostname(&r.hostname).map_err(RegistryError::InvalidHostname)?;
        if let Some(holder) = self.state.hostname_idx.get(&r.hostname) {
            if *holder != r.node_id {
                return Err(RegistryError::HostnameTaken {
                    hostname: r.hostname,
                    node_id: *holder,
                });
            }
        }
        let h = r.hostname.clone();
        self.update_node(r.node_id, |n| n.hostname = h)?;
        Ok(Response::SetHostnameOk {
            hostname: r.hostname,
            node_id: r.node_id,
        })
    }

    fn set_tags(&mut self, now: UnixTime, r: codec::SetTags) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("set_tags:{}", r.node_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), Some(&r.admin_token))?;
        let tags = validate::tags(&r.tags).map_err(RegistryError::Tags)?;
        let out = (!tags.is_empty()).then(|| tags.clone());
        self.update_node(r.node_id, |n| n.tags = tags)?;
        Ok(Response::SetTagsOk {
            node_id: r.node_id,
            tags: out,
        })
    }

    fn set_task_exec(&mut self, now: UnixTime, r: codec::SetTaskExec) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("set_task_exec:{}", r.node_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), None)?;
        self.update_node(r.node_id, |n| n.task_exec = r.enabled)?;
        Ok(Response::SetTaskExecOk {
            node_id: r.node_id,
            task_exec: r.enabled,
        })
    }

    /// `rotate_key` (`spec/registry.md` §3.11): the current key signs
    /// `rotate:<id>`; the old key is retired for good (it can neither
    /// register nor sign for the node again). A retry of the rotation that
    /// already succeeded (same new key, signed by the key it retired) is
    /// answered `rotate_key_ok` again, so a reply lost on the way cannot
    /// leave the node holding a key the registry no longer accepts.
    fn rotate_key(&mut self, now: UnixTime, r: codec::RotateKey) -> Res {
        if r.signature.is_empty() {
            return Err(RegistryError::RotateNeedsSignature);
        }
        if r.new_public_key.is_empty() {
            return Err(RegistryError::RotateNeedsKey);
        }
        let new_key =
            auth::decode_public_key(&r.new_public_key).map_err(RegistryError::InvalidNewKey)?;
        let node = self.node(r.node_id)?;
        let (old_key, prev_key, rotated_ns) = (node.public_key, node.prev_key, node.key_rotated_ns);
        let challenge = format!("rotate:{}", r.node_id);
        if old_key == new_key {
            // A retry of the rotation that already happened: signed by
            // the key it retired, nothing else is accepted.
            let prev = prev_key.ok_or(RegistryError::NewKeyUsed(r.node_id))?;
            self.check_sig(now, Some(r.node_id), &prev, &challenge, r.sig())?;
            return Ok(Self::rotated(r.node_id, r.new_public_key));
        }
        self.authenticate(now, r.node_id, &challenge, r.sig(), None)?;
        if rotated_ns != 0 {
            let since = now.as_nanos().saturating_sub(rotated_ns) / 1_000_000_000;
            let min = ROTATE_MIN_INTERVAL.as_secs();
            if since < min {
                return Err(RegistryError::RotateTooSoon(r.node_id, since, min - since));
            }
        }
        if let Some(other) = self.state.pub_key_idx.get(&new_key) {
            return Err(RegistryError::NewKeyInUse(*other));
        }
        if let Some(other) = self.state.retired_keys.get(&new_key) {
            return Err(RegistryError::NewKeyUsed(*other));
        }
        if self.state.retired_keys.len() >= self.config.max_identities {
            return Err(RegistryError::RegistryFull);
        }
        self.commit(Change::RetireKey {
            key: old_key,
            node_id: r.node_id,
        });
        self.commit(Change::PutKey {
            key: new_key,
            node_id: r.node_id,
        });
        self.update_node(r.node_id, |n| {
            n.public_key = new_key;
            n.prev_key = Some(old_key);
            n.last_seen = now;
            n.key_rotated_ns = now.as_nanos().max(1);
            n.key_rot_count = n.key_rot_count.saturating_add(1);
        })?;
        Ok(Self::rotated(r.node_id, r.new_public_key))
    }

    fn rotated(node_id: u32, public_key: String) -> Response {
        Response::RotateKeyOk {
            address: Self::backbone_addr(node_id),
            node_id,
            public_key,
        }
    }

    fn polo(
        &mut self,
        id: u32,
        f: impl FnOnce(i64) -> i64,
    ) -> Result<codec::PoloScoreOk, RegistryError> {
        let n = self
            .state
            .nodes
            .get(&id)
            .ok_or(RegistryError::PoloNodeNotFound(id))?;
        let score = f(n.polo_score);
        if score != n.polo_score {
            self.update_node(id, |n| n.polo_score = score)?;
        }
        Ok(codec::PoloScoreOk {
            address: Self::backbone_addr(id),
            node_id: id,
            polo_score: score,
        })
    }

    // ----- trust and handshakes ----------------------------------------

    fn report_trust(&mut self, now: UnixTime, r: codec::TrustPair) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("report_trust:{}:{}", r.node_id, r.peer_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), None)?;
        self.node(r.peer_id)?;
        if !self.state.has_trust(r.node_id, r.peer_id) {
            if self.state.trust_pairs.len() >= self.config.max_trust_pairs {
                return Err(RegistryError::TooManyTrustPairs);
            }
            self.commit(Change::TrustAdd(r.node_id, r.peer_id));
        }
        Ok(Response::ReportTrustOk {})
    }

    fn revoke_trust(&mut self, now: UnixTime, r: codec::TrustPair) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("revoke_trust:{}:{}", r.node_id, r.peer_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), None)?;
        if !self.state.has_trust(r.node_id, r.peer_id) {
            return Err(RegistryError::NoTrustPair(r.node_id, r.peer_id));
        }
        self.commit(Change::TrustRemove(r.node_id, r.peer_id));
        self.notify(Notification::TrustRevoked {
            to: r.peer_id,
            from: r.node_id,
        });
        Ok(Response::RevokeTrustOk {})
    }

    fn request_handshake(&mut self, now: UnixTime, r: codec::RequestHandshake) -> Res {
        let (from, to) = (r.from_node_id, r.to_node_id);
        self.node(from)?;
        let challenge = format!("handshake:{from}:{to}");
        self.authenticate(now, from, &challenge, r.sig(), None)?;
        self.node(to)?;
        if r.justification.len() > MAX_JUSTIFICATION {
            return Err(RegistryError::JustificationTooLong);
        }
        let inbox = self.state.handshake_inbox.get(&to);
        if inbox.is_some_and(|q| q.iter().any(|p| p.from_node_id == from)) {
            // Ours: the sender's request already waits there, so this one
            // is delivered as far as the sender can tell (a call retried
            // after its answer was lost, a request asked again). The
            // reference answers `handshake request already pending from
            // node <id>`, which a v1.8 client only sees as "request
            // failed". Nothing changes; the target is told again.
            self.notify(Notification::HandshakeRequest { to, from });
            return Ok(Response::RequestHandshakeOk {
                status: "delivered".to_owned(),
            });
        }
        if inbox.is_some_and(|q| q.len() >= MAX_INBOX) {
            return Err(RegistryError::InboxFull(to));
        }
        self.commit(Change::InboxPush {
            to,
            request: PendingRequest {
                from_node_id: from,
                justification: r.justification,
                timestamp: now,
            },
        });
        self.commit(Change::PendingAdd { from, to });
        self.notify(Notification::HandshakeRequest { to, from });
        Ok(Response::RequestHandshakeOk {
            status: "delivered".to_owned(),
        })
    }

    fn poll_handshakes(&mut self, now: UnixTime, r: codec::PollHandshakes) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("poll_handshakes:{}", r.node_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), None)?;
        let requests: Vec<codec::InboxRequest> = self
            .state
            .handshake_inbox
            .get(&r.node_id)
            .map(|q| {
                q.iter()
                    .map(|p| codec::InboxRequest {
                        from_node_id: p.from_node_id,
                        justification: p.justification.clone(),
                        timestamp: unix_secs(p.timestamp),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let responses: Vec<codec::InboxResponse> = self
            .state
            .handshake_responses
            .get(&r.node_id)
            .map(|q| {
                q.iter()
                    .map(|p| codec::InboxResponse {
                        accept: p.accept,
                        from_node_id: p.from_node_id,
                        timestamp: unix_secs(p.timestamp),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !requests.is_empty() || !responses.is_empty() {
            self.commit(Change::InboxClear(r.node_id));
        }
        if r.push {
            self.effects.push(Effect::PushWanted(r.node_id));
        }
        Ok(Response::PollHandshakesOk {
            requests,
            responses,
        })
    }

    fn respond_handshake(&mut self, now: UnixTime, r: codec::RespondHandshake) -> Res {
        let (me, peer) = (r.node_id, r.peer_id);
        self.node(me)?;
        let challenge = format!("respond:{me}:{peer}");
        self.authenticate(now, me, &challenge, r.sig(), None)?;
        self.node(peer)?;
        let pending = self
            .state
            .pending_handshakes
            .get(&me)
            .is_some_and(|q| q.contains(&peer));
        // Accepting needs a real request (we fix the v1.8 hole in both
        // profiles, spec/registry.md §12).
        if r.accept && !pending {
            return Err(RegistryError::NoPendingHandshake(peer));
        }
        if r.accept && !self.state.has_trust(me, peer) {
            if self.state.trust_pairs.len() >= self.config.max_trust_pairs {
                return Err(RegistryError::TooManyTrustPairs);
            }
            self.commit(Change::TrustAdd(me, peer));
        }
        if pending {
            self.commit(Change::PendingRemove { from: peer, to: me });
        }
        self.commit(Change::ResponsePush {
            to: peer,
            response: PendingResponse {
                from_node_id: me,
                accept: r.accept,
                timestamp: now,
            },
        });
        self.notify(Notification::HandshakeResponse {
            to: peer,
            from: me,
            accept: r.accept,
        });
        Ok(Response::RespondHandshakeOk {
            accept: r.accept,
            peer_id: peer,
        })
    }

    fn punch(&mut self, now: UnixTime, r: codec::Punch) -> Res {
        self.node(r.requester_id)?;
        let challenge = format!("punch:{}:{}", r.node_a, r.node_b);
        self.authenticate(now, r.requester_id, &challenge, r.sig(), None)?;
        if r.requester_id != r.node_a && r.requester_id != r.node_b {
            return Err(RegistryError::PunchNotParticipant);
        }
        let a = self.node(r.node_a)?.real_addr.clone();
        let b = self.node(r.node_b)?.real_addr.clone();
        // Unlike the reference, the other side's endpoint is only given out
        // under the resolve privacy rule (spec/registry.md §12).
        let other = if r.requester_id == r.node_a {
            r.node_b
        } else {
            r.node_a
        };
        if !self.may_resolve(r.requester_id, other) {
            return Err(RegistryError::Private(other));
        }
        Ok(Response::PunchOk {
            node_a: r.node_a,
            node_a_addr: a,
            node_b: r.node_b,
            node_b_addr: b,
        })
    }

    // ----- networks ----------------------------------------------------

    fn list_networks(&self, admin_token: &str) -> Response {
        let current = self.config.profile == WireProfile::Current;
        let show_members = !current || self.admin_ok(admin_token);
        Response::ListNetworksOk {
            networks: self
                .state
                .networks
                .values()
                .map(|n| codec::NetworkSummary {
                    id: n.id,
                    join_rule: n.join_rule.as_str().to_owned(),
                    members: show_members.then_some(n.members.len() as u64),
                    name: n.name.clone(),
                    created: current.then(|| unix_secs(n.created)),
                })
                .take(MAX_LIST_NODES)
                .collect(),
        }
    }

    fn list_nodes(&self, r: codec::ListNodes) -> Res {
        if r.network_id == 0
            && !(self.config.profile == WireProfile::Current && self.admin_ok(&r.admin_token))
        {
            return Err(RegistryError::BackboneListing);
        }
        let net = self
            .state
            .networks
            .get(&r.network_id)
            .ok_or(RegistryError::NetworkNotFound(r.network_id))?;
        let current = self.config.profile == WireProfile::Current;
        let with_roles = current && r.network_id != 0;
        let nodes = net
            .members
            .iter()
            .filter_map(|id| match self.state.nodes.get(id) {
                Some(n) => Some(codec::NodeEntry {
                    address: format_addr(r.network_id, *id),
                    node_id: *id,
                    hostname: (!n.hostname.is_empty()).then(|| n.hostname.clone()),
                    task_exec: n.task_exec,
                    real_addr: n.public.then(|| n.real_addr.clone()),
                    offline: false,
                    role: with_roles.then(|| net.role(*id).as_str().to_owned()),
                    member_tags: if with_roles {
                        net.tags_of(*id).to_vec()
                    } else {
                        Vec::new()
                    },
                }),
                None if current => Some(codec::NodeEntry {
                    address: format_addr(r.network_id, *id),
                    node_id: *id,
                    offline: true,
                    role: with_roles.then(|| net.role(*id).as_str().to_owned()),
                    ..Default::default()
                }),
                None => None,
            })
            .take(MAX_LIST_NODES)
            .collect();
        Ok(Response::ListNodesOk {
            nodes,
            policy: net
                .policy
                .as_ref()
                .filter(|_| current)
                .map(NetworkPolicy::to_value),
        })
    }

    fn create_network(&mut self, now: UnixTime, r: codec::CreateNetwork) -> Res {
        self.require_admin(&r.admin_token)?;
        self.node(r.node_id)?;
        validate::network_name(&r.name).map_err(RegistryError::NetworkName)?;
        if self.state.networks.values().any(|n| n.name == r.name) {
            return Err(RegistryError::NetworkExists(r.name));
        }
        let rule = JoinRule::parse(&r.join_rule)
            .ok_or(RegistryError::InvalidJoinRule(r.join_rule.clone()))?;
        if rule == JoinRule::Token && (r.token.is_empty() || r.token.len() > MAX_TOKEN_LEN) {
            return Err(RegistryError::TokenRequired);
        }
        if self
            .state
            .nodes
            .get(&r.node_id)
            .is_some_and(|n| n.networks.len() > MAX_NETWORKS_PER_NODE)
        {
            return Err(RegistryError::TooManyNetworks(r.node_id));
        }
        let id = u16::try_from(self.state.next_net)
            .ok()
            .filter(|id| *id != 0)
            .ok_or(RegistryError::NetworkIdsExhausted)?;
        self.commit(Change::NextNet(self.state.next_net + 1));
        let token = if rule == JoinRule::Token {
            r.token
        } else {
            String::new()
        };
        self.commit(Change::PutNetwork(Box::new(NetworkRecord::new(
            id,
            r.name.clone(),
            rule,
            token,
            now,
        ))));
        self.commit(Change::Membership {
            network_id: id,
            node_id: r.node_id,
            member: true,
        });
        if self.config.profile == WireProfile::Current {
            self.commit(Change::MemberMeta {
                network_id: id,
                node_id: r.node_id,
                role: Role::Owner,
                tags: Vec::new(),
            });
        }
        Ok(Response::CreateNetworkOk {
            name: r.name,
            network_id: id,
        })
    }

    fn check_can_join(
        &self,
        node_id: u32,
        network_id: u16,
    ) -> Result<&NetworkRecord, RegistryError> {
        if network_id == 0 {
            return Err(RegistryError::CannotJoinBackbone);
        }
        let net = self
            .state
            .networks
            .get(&network_id)
            .ok_or(RegistryError::NetworkNotFound(network_id))?;
        if net.members.contains(&node_id) {
            return Err(RegistryError::AlreadyMember {
                node_id,
                network_id,
            });
        }
        if self
            .state
            .nodes
            .get(&node_id)
            .is_some_and(|n| n.networks.len() > MAX_NETWORKS_PER_NODE)
        {
            return Err(RegistryError::TooManyNetworks(node_id));
        }
        if let Some(p) = &net.policy {
            if !p.has_room(net.members.len()) {
                return Err(RegistryError::MembershipLimit(p.max_members));
            }
        }
        Ok(net)
    }

    fn join_network(&mut self, now: UnixTime, r: codec::JoinNetwork) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("join_network:{}:{}", r.node_id, r.network_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), Some(&r.admin_token))?;
        let net = self.check_can_join(r.node_id, r.network_id)?;
        match net.join_rule {
            JoinRule::Open => {}
            JoinRule::Token => {
                if r.token.is_empty() || !auth::token_matches(&net.token, &r.token) {
                    return Err(RegistryError::InvalidNetworkToken);
                }
            }
            JoinRule::Invite => return Err(RegistryError::InviteOnly),
        }
        self.commit(Change::Membership {
            network_id: r.network_id,
            node_id: r.node_id,
            member: true,
        });
        Ok(Response::JoinNetworkOk {
            address: format_addr(r.network_id, r.node_id),
            network_id: r.network_id,
        })
    }

    fn leave_network(&mut self, now: UnixTime, r: codec::LeaveNetwork) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("leave_network:{}:{}", r.node_id, r.network_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), Some(&r.admin_token))?;
        if r.network_id == 0 {
            return Err(RegistryError::CannotLeaveBackbone);
        }
        let net = self
            .state
            .networks
            .get(&r.network_id)
            .ok_or(RegistryError::NetworkNotFound(r.network_id))?;
        if !net.members.contains(&r.node_id) {
            return Err(RegistryError::NotMember {
                node_id: r.node_id,
                network_id: r.network_id,
            });
        }
        if net.role(r.node_id) == Role::Owner {
            return Err(RegistryError::RoleRule(
                "leave a network you own (transfer ownership or delete it first)",
            ));
        }
        self.commit(Change::Membership {
            network_id: r.network_id,
            node_id: r.node_id,
            member: false,
        });
        Ok(Response::LeaveNetworkOk {
            network_id: r.network_id,
        })
    }

    fn invite(&mut self, now: UnixTime, r: codec::InviteToNetwork) -> Res {
        self.node(r.inviter_id)?;
        let challenge = format!(
            "invite:{}:{}:{}",
            r.inviter_id, r.network_id, r.target_node_id
        );
        self.authenticate(now, r.inviter_id, &challenge, r.sig(), None)?;
        self.node(r.target_node_id)?;
        let net = self.check_can_join(r.target_node_id, r.network_id)?;
        if !net.members.contains(&r.inviter_id) {
            return Err(RegistryError::NotMember {
                node_id: r.inviter_id,
                network_id: r.network_id,
            });
        }
        let role = net.role(r.inviter_id);
        let members_may = net.policy.as_ref().is_some_and(|p| p.member_invites)
            // Networks from before roles have no owner: keep the old rule.
            || net.owner().is_none();
        if role == Role::Member && !members_may {
            return Err(RegistryError::RoleDenied {
                op: "invite_to_network",
                need: "owner or admin",
                network_id: r.network_id,
                node_id: r.inviter_id,
                has: role.as_str(),
            });
        }
        let q = self.live_invites(r.target_node_id, now);
        if q.len() >= MAX_INBOX && !q.iter().any(|i| i.network_id == r.network_id) {
            return Err(RegistryError::InviteInboxFull(r.target_node_id));
        }
        self.commit(Change::InvitePush {
            to: r.target_node_id,
            invite: Invite {
                network_id: r.network_id,
                inviter_id: r.inviter_id,
                timestamp: now,
            },
        });
        self.notify(Notification::Invite {
            to: r.target_node_id,
            network_id: r.network_id,
        });
        Ok(Response::InviteToNetworkOk {
            network_id: r.network_id,
            target_node_id: r.target_node_id,
        })
    }

    fn live_invites(&self, id: u32, now: UnixTime) -> Vec<Invite> {
        self.state
            .invites
            .get(&id)
            .map(|q| {
                q.iter()
                    .filter(|i| now.saturating_duration_since(i.timestamp) <= INVITE_TTL)
                    // Invitations to deleted networks lapse with them.
                    .filter(|i| self.state.networks.contains_key(&i.network_id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn poll_invites(&mut self, now: UnixTime, r: codec::PollInvites) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("poll_invites:{}", r.node_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), None)?;
        let live = self.live_invites(r.node_id, now);
        let invites = live
            .iter()
            .map(|i| codec::InviteEntry {
                inviter_id: i.inviter_id,
                network_id: i.network_id,
                network_name: self
                    .state
                    .networks
                    .get(&i.network_id)
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                timestamp: unix_secs(i.timestamp),
            })
            .collect();
        // Invitations stay until answered; expired ones are dropped now.
        let before = self.state.invites.get(&r.node_id).map_or(0, Vec::len);
        if before != live.len() {
            self.commit(Change::InvitesSet {
                to: r.node_id,
                invites: live,
            });
        }
        Ok(Response::PollInvitesOk { invites })
    }

    fn respond_invite(&mut self, now: UnixTime, r: codec::RespondInvite) -> Res {
        self.node(r.node_id)?;
        let challenge = format!("respond_invite:{}:{}", r.node_id, r.network_id);
        self.authenticate(now, r.node_id, &challenge, r.sig(), None)?;
        let live = self.live_invites(r.node_id, now);
        if !live.iter().any(|i| i.network_id == r.network_id) {
            return Err(RegistryError::InviteNotFound(r.network_id));
        }
        if r.accept {
            // The invitation replaces the join rule; the other checks stay.
            self.check_can_join(r.node_id, r.network_id)?;
        }
        let rest: Vec<Invite> = live
            .into_iter()
            .filter(|i| i.network_id != r.network_id)
            .collect();
        self.commit(Change::InvitesSet {
            to: r.node_id,
            invites: rest,
        });
        if r.accept {
            self.commit(Change::Membership {
                network_id: r.network_id,
                node_id: r.node_id,
                member: true,
            });
        }
        Ok(Response::RespondInviteOk {
            accept: r.accept,
            network_id: r.network_id,
        })
    }

    // ----- network management (ours; `spec/registry.md` §3.15.1) -------

    fn network(&self, id: u16) -> Result<&NetworkRecord, RegistryError> {
        self.state
            .networks
            .get(&id)
            .ok_or(RegistryError::NetworkNotFound(id))
    }

    fn must_be_member(net: &NetworkRecord, node_id: u32) -> Result<(), RegistryError> {
        if net.members.contains(&node_id) {
            Ok(())
        } else {
            Err(RegistryError::NotMember {
                node_id,
                network_id: net.id,
            })
        }
    }

    /// Authenticates the actor of management operation `op` asked by `r`
    /// and checks its role against the operation's rule ([`NetOp::rule`]).
    /// The signed challenge is `name:node:network`, then `:extra` when
    /// given. A valid admin token makes the operator the actor.
    fn actor(
        &mut self,
        now: UnixTime,
        op: NetOp,
        r: &impl NetRequest,
        extra: Option<&dyn core::fmt::Display>,
    ) -> Result<Actor, RegistryError> {
        let (name, need) = op.rule();
        let (node_id, network_id, sig, admin_token) = r.caller();
        let challenge = match extra {
            Some(x) => format!("{name}:{node_id}:{network_id}:{x}"),
            None => format!("{name}:{node_id}:{network_id}"),
        };
        if network_id == 0 {
            return Err(RegistryError::RoleRule("manage the backbone network"));
        }
        if self.admin_ok(admin_token) {
            self.network(network_id)?;
            return Ok(Actor::Operator);
        }
        self.node(node_id)?;
        self.authenticate(now, node_id, &challenge, sig, None)?;
        let net = self.network(network_id)?;
        let has = if net.members.contains(&node_id) {
            net.role(node_id)
        } else {
            return Err(RegistryError::NotMember {
                node_id,
                network_id,
            });
        };
        if !need.contains(&has) {
            return Err(RegistryError::RoleDenied {
                op: name,
                need: if need.len() == 1 {
                    "owner"
                } else {
                    "owner or admin"
                },
                network_id,
                node_id,
                has: has.as_str(),
            });
        }
        Ok(Actor::Member(has))
    }

    fn delete_network(&mut self, now: UnixTime, r: codec::DeleteNetwork) -> Res {
        self.actor(now, NetOp::DeleteNetwork, &r, None)?;
        let members = self
            .network(r.network_id)?
            .members
            .iter()
            .copied()
            .collect();
        self.commit(Change::RemoveNetwork {
            network_id: r.network_id,
            members,
        });
        Ok(Response::DeleteNetworkOk {
            network_id: r.network_id,
        })
    }

    fn rename_network(&mut self, now: UnixTime, r: codec::RenameNetwork) -> Res {
        self.actor(now, NetOp::RenameNetwork, &r, Some(&r.name))?;
        validate::network_name(&r.name).map_err(RegistryError::NetworkName)?;
        if self
            .state
            .networks
            .values()
            .any(|n| n.name == r.name && n.id != r.network_id)
        {
            return Err(RegistryError::NetworkExists(r.name));
        }
        let mut net = self.network(r.network_id)?.clone();
        net.name = r.name.clone();
        self.commit(Change::PutNetwork(Box::new(net)));
        Ok(Response::RenameNetworkOk {
            name: r.name,
            network_id: r.network_id,
        })
    }

    fn member_action(&mut self, now: UnixTime, op: MemberOp, r: codec::MemberAction) -> Res {
        let actor = self.actor(now, NetOp::Member(op), &r, Some(&r.target_node_id))?;
        let net = self.network(r.network_id)?;
        Self::must_be_member(net, r.target_node_id)?;
        let target_role = net.role(r.target_node_id);
        let tags = net.tags_of(r.target_node_id).to_vec();
        let old_owner = net.owner();
        let (net_id, target) = (r.network_id, r.target_node_id);
        let meta = |node_id: u32, role: Role, tags: Vec<String>| Change::MemberMeta {
            network_id: net_id,
            node_id,
            role,
            tags,
        };
        let role_ok = |role: Role| codec::MemberRoleOk {
            network_id: net_id,
            node_id: target,
            role: role.as_str().to_owned(),
        };
        match op {
            MemberOp::Kick => {
                if actor != Actor::Operator && target == r.node_id {
                    return Err(RegistryError::RoleRule("kick yourself (use leave)"));
                }
                if target_role == Role::Owner {
                    return Err(RegistryError::RoleRule(
                        "kick the network owner (transfer ownership first)",
                    ));
                }
                if actor == Actor::Member(Role::Admin) && target_role == Role::Admin {
                    return Err(RegistryError::RoleRule(
                        "kick an admin unless you are the owner",
                    ));
                }
                self.commit(Change::Membership {
                    network_id: net_id,
                    node_id: target,
                    member: false,
                });
                Ok(Response::KickMemberOk(role_ok(target_role)))
            }
            MemberOp::Promote => match target_role {
                Role::Member => {
                    self.commit(meta(target, Role::Admin, tags));
                    Ok(Response::PromoteMemberOk(role_ok(Role::Admin)))
                }
                Role::Admin => Err(RegistryError::RoleRule(
                    "promote a member who is already an admin",
                )),
                Role::Owner => Err(RegistryError::RoleRule("promote the network owner")),
            },
            MemberOp::Demote => match target_role {
                Role::Admin => {
                    self.commit(meta(target, Role::Member, tags));
                    Ok(Response::DemoteMemberOk(role_ok(Role::Member)))
                }
                Role::Member => Err(RegistryError::RoleRule(
                    "demote a member who is not an admin",
                )),
                Role::Owner => Err(RegistryError::RoleRule(
                    "demote the network owner (transfer ownership instead)",
                )),
            },
            MemberOp::Transfer => {
                if target_role == Role::Owner {
                    return Err(RegistryError::RoleRule(
                        "transfer ownership to the current owner",
                    ));
                }
                if let Some(old) = old_owner {
                    let old_tags = self.network(net_id)?.tags_of(old).to_vec();
                    self.commit(meta(old, Role::Admin, old_tags));
                }
                self.commit(meta(target, Role::Owner, tags));
                Ok(Response::TransferOwnershipOk(role_ok(Role::Owner)))
            }
        }
    }

    fn set_member_tags(&mut self, now: UnixTime, r: codec::SetMemberTags) -> Res {
        self.actor(now, NetOp::SetMemberTags, &r, Some(&r.target_node_id))?;
        let tags = validate::tags(&r.tags).map_err(RegistryError::Tags)?;
        let net = self.network(r.network_id)?;
        Self::must_be_member(net, r.target_node_id)?;
        let role = net.role(r.target_node_id);
        self.commit(Change::MemberMeta {
            network_id: r.network_id,
            node_id: r.target_node_id,
            role,
            tags: tags.clone(),
        });
        Ok(Response::SetMemberTagsOk(codec::MemberTagsOk {
            network_id: r.network_id,
            node_id: r.target_node_id,
            tags,
        }))
    }

    fn set_network_policy(&mut self, now: UnixTime, r: codec::SetNetworkPolicy) -> Res {
        self.actor(now, NetOp::SetNetworkPolicy, &r, None)?;
        let policy = match &r.policy {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(netpolicy::parse_policy(v).map_err(RegistryError::Policy)?),
        };
        let mut net = self.network(r.network_id)?.clone();
        net.policy = policy;
        let value = net.policy.as_ref().map(NetworkPolicy::to_value);
        self.commit(Change::PutNetwork(Box::new(net)));
        Ok(Response::SetNetworkPolicyOk(codec::PolicyOk {
            network_id: r.network_id,
            policy: value,
        }))
    }

    // ----- beacons -----------------------------------------------------

    fn beacon_register(&mut self, now: UnixTime, r: codec::BeaconRegister) -> Res {
        if self.config.profile == WireProfile::Current {
            self.require_admin(&r.admin_token)?;
        }
        if r.beacon_id == 0 {
            return Err(RegistryError::BeaconIdRequired);
        }
        if r.addr.is_empty() {
            return Err(RegistryError::BeaconAddrRequired);
        }
        if r.addr.len() > MAX_ADDR_LEN {
            return Err(RegistryError::FieldTooLong("addr"));
        }
        if !self.beacons.contains_key(&r.beacon_id) && self.beacons.len() >= MAX_BEACONS {
            if let Some(oldest) = self
                .beacons
                .iter()
                .min_by_key(|(_, b)| b.last_seen)
                .map(|(k, _)| *k)
            {
                self.beacons.remove(&oldest);
            }
        }
        self.beacons.insert(
            r.beacon_id,
            Beacon {
                addr: r.addr,
                last_seen: now,
            },
        );
        Ok(Response::BeaconRegisterOk {
            beacon_id: r.beacon_id,
        })
    }

    fn beacon_list(&self, now: UnixTime) -> Response {
        Response::BeaconListOk {
            beacons: self
                .beacons
                .iter()
                .filter(|(_, b)| now.saturating_duration_since(b.last_seen) <= BEACON_TTL)
                .map(|(id, b)| codec::BeaconEntry {
                    addr: b.addr.clone(),
                    id: *id,
                })
                .collect(),
        }
    }
}

fn unknown(t: &str) -> RegistryError {
    RegistryError::UnknownType(t.to_owned())
}

fn new_node(id: u32, key: PublicKey, owner: &str, now: UnixTime) -> NodeRecord {
    NodeRecord {
        id,
        owner: owner.to_owned(),
        public_key: key,
        real_addr: String::new(),
        lan_addrs: Vec::new(),
        networks: vec![0],
        public: false,
        last_seen: now,
        hostname: String::new(),
        tags: Vec::new(),
        polo_score: 0,
        task_exec: false,
        version: String::new(),
        key_rotated_ns: 0,
        key_rot_count: 0,
        prev_key: None,
        beacon: String::new(),
    }
}

/// The request types a read-only standby answers (`spec/registry.md` §7).
fn allowed_on_standby(req: &Request) -> bool {
    matches!(
        req,
        Request::Lookup(_)
            | Request::Resolve(_)
            | Request::ListNetworks(_)
            | Request::ListNodes(_)
            | Request::Heartbeat(_)
            | Request::PollHandshakes(_)
            | Request::ResolveHostname(_)
            | Request::BeaconList(_)
            | Request::CheckTrust(_)
            | Request::PollInvites(_)
            | Request::GetMemberRole(_)
            | Request::GetMemberTags(_)
            | Request::GetNetworkPolicy(_)
    )
}

/// Splits `host:port` (IPv6 hosts in brackets). `None` if there is no
/// valid port.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port))
}

/// `false` for unspecified, loopback, private (RFC 1918 / ULA) and
/// link-local addresses: hosts a node cannot usefully advertise.
fn is_globally_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_loopback() || v4.is_private() || v4.is_link_local())
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || (seg0 & 0xfe00) == 0xfc00
                || (seg0 & 0xffc0) == 0xfe80)
        }
    }
}
