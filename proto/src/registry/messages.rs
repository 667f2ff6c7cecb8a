//! The typed registry messages, for code that builds requests and reads
//! responses as values: tests, benchmarks and tools outside the registry.
//!
//! Owns nothing itself: it names the request and response types of the
//! wire format so that callers never depend on [`super::codec`], the JSON
//! encoding. Bytes go through [`super::framing`]: a request becomes a frame
//! with [`super::framing::request_frame`], responses come out of a
//! [`super::framing::ResponseReader`].

pub use super::codec::{
    BeaconEntry, BeaconList, BeaconRegister, CheckTrust, CreateNetwork, DeleteNetwork, Deregister,
    GetNetworkPolicy, GetPoloScore, Heartbeat, InboxRequest, InboxResponse, InviteEntry,
    InviteToNetwork, JoinNetwork, LeaveNetwork, ListNetworks, ListNodes, Lookup, LookupOk,
    MemberAction, MemberQuery, MemberRoleOk, MemberTagsOk, NetworkSummary, NodeEntry,
    PUSH_HANDSHAKE, PUSH_TRUST_REVOKED, PolicyOk, PollHandshakes, PollInvites, PoloScoreOk, Punch,
    Register, RegisterOk, RenameNetwork, Request, RequestHandshake, Resolve, ResolveHostname,
    ResolveOk, RespondHandshake, RespondInvite, Response, RotateKey, SetHostname, SetMemberTags,
    SetNetworkPolicy, SetPoloScore, SetTags, SetTaskExec, SetVisibility, TrustPair,
    UpdatePoloScore,
};
