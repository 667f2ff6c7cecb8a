//! Why a registry request failed (`spec/registry.md` §2). The `Display`
//! texts are the reference's reason strings; [`RegistryError::wire_text`]
//! decides what actually goes to the client.

use std::net::IpAddr;

use crate::registry::auth::{KeyError, SigError};
use crate::registry::validate::NameError;
use crate::wire::WireProfile;

/// The generic reply text (`spec/registry.md` §2).
pub const GENERIC_ERROR: &str = "request failed";

/// Substrings that mark a reason as safe to pass through to the client in
/// the current profile (`spec/registry.md` §2). `denied` is our addition so
/// that resolve denials reach the client, as the reference's example shows.
pub const SAFE_KEYWORDS: [&str; 13] = [
    "denied",
    "rate limited",
    "enterprise feature",
    "expired",
    "already",
    "not a member",
    "cannot",
    "too many",
    "too long",
    "not found",
    "invalid",
    "require",
    "signature",
];

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// `register` without a key.
    #[error("registration requires public_key")]
    PublicKeyRequired,
    /// Undecodable key.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(KeyError),
    /// Registration bucket empty.
    #[error("rate limited: too many registrations from {0}")]
    RegisterRateLimited(IpAddr),
    /// Query/resolve bucket empty.
    #[error("rate limited: too many queries from {0}")]
    QueryRateLimited(IpAddr),
    /// Node or identity capacity reached.
    #[error("registry full")]
    RegistryFull,
    /// The node-ID counter wrapped.
    #[error("node ID space exhausted")]
    NodeIdsExhausted,
    /// Unknown or reaped node.
    #[error("node {0}: node not found")]
    NodeNotFound(u32),
    /// Polo-score handlers' wording.
    #[error("node {0} not found")]
    PoloNodeNotFound(u32),
    /// Resolve requester not live.
    #[error("resolve denied: requester node {0} is not registered")]
    RequesterNotRegistered(u32),
    /// Private target without trust or shared network.
    #[error("resolve denied: node {0} is private (establish mutual trust first)")]
    Private(u32),
    /// Signature problems.
    #[error(transparent)]
    Signature(#[from] SigError),
    /// Bad hostname.
    #[error("invalid hostname: {0}")]
    InvalidHostname(NameError),
    /// Hostname held by another node.
    #[error("hostname \"{hostname}\" already in use by node {node_id}")]
    HostnameTaken {
        /// The name.
        hostname: String,
        /// Holder.
        node_id: u32,
    },
    /// `resolve_hostname` without a name.
    #[error("hostname required")]
    HostnameRequired,
    /// Unknown (or hidden) hostname.
    #[error("hostname \"{0}\" not found")]
    HostnameNotFound(String),
    /// Bad tags.
    #[error(transparent)]
    Tags(NameError),
    /// `rotate_key` without a signature.
    #[error("rotate_key requires a valid signature")]
    RotateNeedsSignature,
    /// `rotate_key` without a new key.
    #[error("rotate_key requires new_public_key")]
    RotateNeedsKey,
    /// Bad new key.
    #[error("invalid new_public_key: {0}")]
    InvalidNewKey(KeyError),
    /// New key belongs to another node.
    #[error("invalid new_public_key: key already registered to node {0}")]
    NewKeyInUse(u32),
    /// New key was retired by an earlier rotation (or equals the current
    /// key).
    #[error("invalid new_public_key: key was already used by node {0}")]
    NewKeyUsed(u32),
    /// A second rotation too soon after the last one.
    #[error("rotate_key denied: node {0} rotated its key {1} s ago (wait {2} s)")]
    RotateTooSoon(u32, u64, u64),
    /// `register` with a key that a rotation retired.
    #[error("register denied: public key was retired by a key rotation of node {0}")]
    KeyRetired(u32),
    /// Owner reclaim of a node that rotated its key.
    #[error("register denied: node {0} rotated its key; owner reclaim needs its current key")]
    ReclaimRotated(u32),
    /// `revoke_trust` of an absent pair.
    #[error("no trust pair between {0} and {1}")]
    NoTrustPair(u32, u32),
    /// Trust-pair capacity reached.
    #[error("too many trust pairs")]
    TooManyTrustPairs,
    /// Target inbox full.
    #[error("handshake inbox full for node {0}")]
    InboxFull(u32),
    /// Justification over 1024 bytes.
    #[error("justification too long (max 1024 bytes)")]
    JustificationTooLong,
    /// `respond_handshake accept=true` without a request.
    #[error("no pending handshake request from node {0}")]
    NoPendingHandshake(u32),
    /// Punch by a non-participant.
    #[error("punch denied: requester must be participant")]
    PunchNotParticipant,
    /// Networks switched off (legacy profile).
    #[error("custom networks are WIP — only backbone (network 0) is available")]
    NetworksDisabled,
    /// Backbone member listing without admin token.
    #[error("listing backbone nodes is not permitted (use lookup with a specific node_id)")]
    BackboneListing,
    /// Unknown network.
    #[error("network {0}: network not found")]
    NetworkNotFound(u16),
    /// No admin token configured.
    #[error("network creation is disabled")]
    AdminDisabled,
    /// Wrong admin token.
    #[error("invalid admin token")]
    InvalidAdminToken,
    /// Bad network name.
    #[error(transparent)]
    NetworkName(NameError),
    /// Name taken.
    #[error("network \"{0}\" already exists")]
    NetworkExists(String),
    /// Network-ID counter exhausted.
    #[error("network ID space exhausted (max 65535 networks)")]
    NetworkIdsExhausted,
    /// Unknown join rule.
    #[error("invalid join_rule \"{0}\"")]
    InvalidJoinRule(String),
    /// Token network without a usable token.
    #[error("token networks require a token (max 256 bytes)")]
    TokenRequired,
    /// Wrong join token.
    #[error("invalid network token")]
    InvalidNetworkToken,
    /// Join of network 0.
    #[error("cannot join the backbone network")]
    CannotJoinBackbone,
    /// Leave of network 0.
    #[error("cannot leave the backbone network")]
    CannotLeaveBackbone,
    /// Direct join of an invite network.
    #[error("invite-only networks require invite_to_network + respond_invite flow")]
    InviteOnly,
    /// Already a member.
    #[error("node {node_id} already in network {network_id}")]
    AlreadyMember {
        /// Node.
        node_id: u32,
        /// Network.
        network_id: u16,
    },
    /// Not a member.
    #[error("node {node_id} is not a member of network {network_id}")]
    NotMember {
        /// Node.
        node_id: u32,
        /// Network.
        network_id: u16,
    },
    /// Per-node network bound reached.
    #[error("too many networks for node {0}")]
    TooManyNetworks(u32),
    /// Invite inbox full.
    #[error("too many pending invites for node {0}")]
    InviteInboxFull(u32),
    /// No such invitation.
    #[error("invite to network {0} not found")]
    InviteNotFound(u16),
    /// `update_polo_score` without `delta`.
    #[error("update_polo_score requires delta field")]
    PoloDeltaRequired,
    /// `set_polo_score` without `polo_score`.
    #[error("set_polo_score requires polo_score field")]
    PoloScoreRequired,
    /// `beacon_register` with ID 0.
    #[error("beacon_id required")]
    BeaconIdRequired,
    /// `beacon_register` without an address.
    #[error("addr required")]
    BeaconAddrRequired,
    /// Read-only standby.
    #[error("standby mode: write operations not accepted (use primary)")]
    Standby,
    /// Unknown request type.
    #[error("unknown message type: \"{0}\"")]
    UnknownType(String),
    /// The acting node's role does not allow the operation.
    #[error(
        "permission denied: {op} requires role {need} in network {network_id} (node {node_id} is {has})"
    )]
    RoleDenied {
        /// Operation.
        op: &'static str,
        /// Required role(s), e.g. `owner` or `owner or admin`.
        need: &'static str,
        /// Network.
        network_id: u16,
        /// Acting node.
        node_id: u32,
        /// Its role (`member`, `admin`, `owner`, or `not a member`).
        has: &'static str,
    },
    /// An operation the role rules forbid whoever asks.
    #[error("cannot {0}")]
    RoleRule(&'static str),
    /// `max_members` of the network's policy reached.
    #[error("network membership limit reached (max_members {0}): cannot join")]
    MembershipLimit(u32),
    /// Policy document refused.
    #[error(transparent)]
    Policy(crate::registry::policy::PolicyError),
    /// A field exceeds one of our size bounds.
    #[error("{0} too long")]
    FieldTooLong(&'static str),
}

impl RegistryError {
    /// `true` if the reason may be shown to the client (current profile).
    pub fn is_safe(&self) -> bool {
        let text = self.to_string();
        SAFE_KEYWORDS.iter().any(|k| text.contains(k))
    }

    /// The `"error"` text sent to the client: always the generic text in
    /// the legacy profile; the reason when it is safe in the current one.
    pub fn wire_text(&self, profile: WireProfile) -> String {
        match profile {
            WireProfile::Legacy => GENERIC_ERROR.to_owned(),
            WireProfile::Current if self.is_safe() => self.to_string(),
            WireProfile::Current => GENERIC_ERROR.to_owned(),
        }
    }
}
