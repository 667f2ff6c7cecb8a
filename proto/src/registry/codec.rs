//! Registry TCP framing and typed messages (`spec/registry.md` §1–§3).
//!
//! A frame is `[u32 big-endian length][length bytes of UTF-8 JSON object]`;
//! every object has a string `"type"`. Incremental parsing is offered by
//! [`decode_frame`], which looks at a caller buffer and says how many bytes
//! one complete frame used (or that more bytes are needed).
//!
//! Request decoding is deliberately lenient, like the reference: a numeric
//! field that is missing, not a number, negative or out of range reads as 0,
//! a boolean that is not `true` reads as `false`, a string that is not a
//! string reads as empty. Responses are encoded with keys sorted, which is
//! byte-for-byte what the reference emits for its map-built replies.

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::limits::FRAME_PREFIX_LEN;

/// Framing errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the allowed maximum; the
    /// connection must be closed.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// The output buffer cannot hold the frame.
    #[error("buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Message (JSON) errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Not valid JSON or not a JSON object; the server closes the connection.
    #[error("payload is not a JSON object")]
    NotAnObject,
    /// A response object had no `"type"` key.
    #[error("response has no type")]
    MissingType,
    /// A response of a known type had fields of the wrong shape.
    #[error("malformed {0} message")]
    Malformed(String),
    /// A response with a type this crate does not know.
    #[error("unknown response type {0:?}")]
    UnknownType(String),
    /// The message could not be serialised (e.g. [`Request::Unknown`]).
    #[error("message cannot be encoded")]
    Unencodable,
}

/// Looks for one complete frame at the start of `buf`.
///
/// Returns `Ok(None)` if more bytes are needed, `Ok(Some((payload, used)))`
/// when a frame is complete (`used` = prefix + payload bytes to drop from the
/// buffer), or [`FrameError::TooLarge`] when the prefix exceeds `max_len`.
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some((prefix, rest)) = buf.split_at_checked(FRAME_PREFIX_LEN) else {
        return Ok(None);
    };
    let mut p = [0u8; FRAME_PREFIX_LEN];
    p.copy_from_slice(prefix);
    let len = u32::from_be_bytes(p) as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    Ok(rest
        .get(..len)
        .map(|payload| (payload, FRAME_PREFIX_LEN + len)))
}

/// Writes `payload` as one frame into `out`, returning the bytes written.
pub fn encode_frame(payload: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let need = FRAME_PREFIX_LEN + payload.len();
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    let have = out.len();
    let dst = out
        .get_mut(..need)
        .ok_or(FrameError::BufferTooSmall { need, have })?;
    let (head, body) = dst.split_at_mut(FRAME_PREFIX_LEN);
    head.copy_from_slice(&len.to_be_bytes());
    body.copy_from_slice(payload);
    Ok(need)
}

/// `payload` as one frame in a new vector.
pub fn frame_vec(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut v = vec![0u8; FRAME_PREFIX_LEN + payload.len()];
    encode_frame(payload, &mut v)?;
    Ok(v)
}

/// Lenient field readers mirroring the reference's JSON handling.
mod de {
    use super::*;

    fn num<'de, D: Deserializer<'de>>(d: D, max: f64) -> Result<u64, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(match v {
            Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
                (Some(u), _) if (u as f64) <= max => u,
                (None, Some(f)) if f >= 0.0 && f <= max => f as u64,
                _ => 0,
            },
            _ => 0,
        })
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        Ok(u32::try_from(num(d, f64::from(u32::MAX))?).unwrap_or(0))
    }

    pub fn u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        Ok(u16::try_from(num(d, f64::from(u16::MAX))?).unwrap_or(0))
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(match v {
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        })
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(match v {
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
            _ => None,
        })
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(matches!(
            Option::<Value>::deserialize(d)?,
            Some(Value::Bool(true))
        ))
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(match Option::<Value>::deserialize(d)? {
            Some(Value::String(s)) => s,
            _ => String::new(),
        })
    }

    pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match Option::<Value>::deserialize(d)? {
            Some(Value::Array(a)) => a
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// Declares a request struct. Each field is `name: kind,` where the kind
/// picks the Rust type, the lenient reader and when the field is omitted on
/// encode: `u32`/`u16`/`bool`/`str`/`strs` are always written, `id` (u32)
/// is omitted when 0, `ostr` when empty, `obool` when false, `ts` and `i64`
/// when absent.
macro_rules! req {
    (@acc [$(#[$m:meta])*] $name:ident [$($out:tt)*]) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name { $($out)* }
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : u32, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::u32")] pub $f: u32,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : id, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::u32", skip_serializing_if = "is_zero_u32")] pub $f: u32,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : u16, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::u16")] pub $f: u16,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : bool, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::bool")] pub $f: bool,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : obool, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::bool", skip_serializing_if = "is_false")] pub $f: bool,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : str, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::string")] pub $f: String,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : ostr, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::string", skip_serializing_if = "String::is_empty")] pub $f: String,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : strs, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::strings")] pub $f: Vec<String>,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : ostrs, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::strings", skip_serializing_if = "Vec::is_empty")] pub $f: Vec<String>,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : ts, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::opt_u64", skip_serializing_if = "Option::is_none")] pub $f: Option<u64>,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : i64, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, deserialize_with = "de::i64", skip_serializing_if = "Option::is_none")] pub $f: Option<i64>,] $($rest)*);
    };
    (@acc $m:tt $name:ident [$($out:tt)*] #[doc = $d:literal] $f:ident : json, $($rest:tt)*) => {
        req!(@acc $m $name [$($out)* #[doc = $d] #[serde(default, skip_serializing_if = "Option::is_none")] pub $f: Option<Value>,] $($rest)*);
    };
    ($(#[$m:meta])* $name:ident { $($body:tt)* }) => {
        req!(@acc [$(#[$m])*] $name [] $($body)*);
    };
}

/// Declares the signature fields every signed request carries.
macro_rules! signed {
    ($(#[$m:meta])* $name:ident { $($body:tt)* }) => {
        req!($(#[$m])* $name {
            $($body)*
            /// Base64 Ed25519 signature (empty = absent).
            signature: ostr,
            /// Strong-form timestamp, Unix milliseconds (absent = legacy form).
            sig_ts: ts,
        });
        impl $name {
            /// The signature fields of this request.
            pub fn sig(&self) -> SigFields<'_> {
                SigFields { signature: &self.signature, sig_ts: self.sig_ts }
            }
        }
    };
}

/// Fields shared by signed requests: the base64 signature and, for the
/// strong form, the signed timestamp (`spec/registry.md` §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigFields<'a> {
    /// Base64 signature (empty = absent).
    pub signature: &'a str,
    /// Strong-form timestamp in Unix milliseconds, if present.
    pub sig_ts: Option<u64>,
}

signed!(
    /// `register` (`spec/registry.md` §3.1). The optional signature is by
    /// the key being registered over `register:<listen_addr>:<public_key>`.
    Register {
        /// The node's UDP tunnel endpoint `host:port` (may be empty).
        listen_addr: str,
        /// Base64 Ed25519 public key (required).
        public_key: str,
        /// Owner string for identity reclaim (optional).
        owner: ostr,
        /// Hostname to apply (optional).
        hostname: ostr,
        /// LAN addresses for same-LAN paths (optional).
        lan_addrs: ostrs,
        /// Software version (optional).
        version: ostr,
    }
);

req!(
    /// `lookup` (`spec/registry.md` §3.2).
    Lookup {
        /// Target node.
        node_id: u32,
    }
);

signed!(
    /// `resolve` (`spec/registry.md` §3.3), signed by the requester.
    Resolve {
        /// Target node.
        node_id: u32,
        /// Requesting node.
        requester_id: u32,
    }
);

signed!(
    /// `heartbeat` (`spec/registry.md` §3.4).
    Heartbeat {
        /// The node.
        node_id: u32,
    }
);

signed!(
    /// `deregister` (`spec/registry.md` §3.5).
    Deregister {
        /// The node.
        node_id: u32,
        /// Operator override instead of a signature.
        admin_token: ostr,
    }
);

signed!(
    /// `set_visibility` (`spec/registry.md` §3.6).
    SetVisibility {
        /// The node.
        node_id: u32,
        /// `true` = public.
        public: bool,
        /// Operator override instead of a signature.
        admin_token: ostr,
    }
);

signed!(
    /// `set_hostname` (`spec/registry.md` §3.7); empty clears.
    SetHostname {
        /// The node.
        node_id: u32,
        /// New hostname.
        hostname: str,
        /// Operator override instead of a signature.
        admin_token: ostr,
    }
);

req!(
    /// `resolve_hostname` (`spec/registry.md` §3.8).
    ResolveHostname {
        /// Name to resolve.
        hostname: str,
        /// Requesting node (needed for private targets; 0 = absent).
        requester_id: id,
    }
);

signed!(
    /// `set_tags` (`spec/registry.md` §3.9).
    SetTags {
        /// The node.
        node_id: u32,
        /// New tag list (replaces the old one).
        tags: strs,
        /// Operator override instead of a signature.
        admin_token: ostr,
    }
);

signed!(
    /// `set_task_exec` (`spec/registry.md` §3.10).
    SetTaskExec {
        /// The node.
        node_id: u32,
        /// Advertise task execution.
        enabled: bool,
    }
);

signed!(
    /// `rotate_key` (`spec/registry.md` §3.11), signed with the current key.
    RotateKey {
        /// The node.
        node_id: u32,
        /// Base64 of the new public key.
        new_public_key: str,
    }
);

signed!(
    /// `report_trust` / `revoke_trust` (`spec/registry.md` §3.12).
    TrustPair {
        /// The signing node.
        node_id: u32,
        /// The other side of the pair.
        peer_id: u32,
    }
);

req!(
    /// `check_trust` (`spec/registry.md` §3.12).
    CheckTrust {
        /// One side.
        node_id: u32,
        /// Other side.
        peer_id: u32,
    }
);

signed!(
    /// `request_handshake` (`spec/registry.md` §3.13).
    RequestHandshake {
        /// Sender.
        from_node_id: u32,
        /// Target.
        to_node_id: u32,
        /// Free text shown to the target.
        justification: str,
    }
);

signed!(
    /// `poll_handshakes` (`spec/registry.md` §3.13).
    PollHandshakes {
        /// The polling node.
        node_id: u32,
        /// Ours (`spec/registry.md` §3.13): push [`Response::Push`] hints on this connection.
        push: obool,
    }
);

signed!(
    /// `respond_handshake` (`spec/registry.md` §3.13).
    RespondHandshake {
        /// The responder.
        node_id: u32,
        /// The original requester.
        peer_id: u32,
        /// Accept (creates the trust pair) or reject.
        accept: bool,
    }
);

signed!(
    /// `punch` (`spec/registry.md` §3.14).
    Punch {
        /// The requesting node (one of a/b).
        requester_id: u32,
        /// First participant.
        node_a: u32,
        /// Second participant.
        node_b: u32,
    }
);

req!(
    /// `list_networks` (`spec/registry.md` §3.15).
    ListNetworks {
        /// Optional admin token (reveals member counts).
        admin_token: ostr,
    }
);

req!(
    /// `list_nodes` (`spec/registry.md` §3.15).
    ListNodes {
        /// Network to list.
        network_id: u16,
        /// Admin token (required for the backbone).
        admin_token: ostr,
    }
);

req!(
    /// `create_network` (`spec/registry.md` §3.15).
    CreateNetwork {
        /// Creator (must be live).
        node_id: u32,
        /// Network name.
        name: str,
        /// `open` (default), `token` or `invite`.
        join_rule: ostr,
        /// Join token for `token` networks.
        token: ostr,
        /// Admin token (required).
        admin_token: ostr,
    }
);

signed!(
    /// `join_network` (`spec/registry.md` §3.15).
    JoinNetwork {
        /// Joining node.
        node_id: u32,
        /// Network.
        network_id: u16,
        /// Join token for `token` networks.
        token: ostr,
        /// Inviter (legacy invite form).
        inviter_id: id,
        /// Operator override instead of a signature.
        admin_token: ostr,
    }
);

signed!(
    /// `leave_network` (`spec/registry.md` §3.15).
    LeaveNetwork {
        /// Leaving node.
        node_id: u32,
        /// Network.
        network_id: u16,
        /// Operator override instead of a signature.
        admin_token: ostr,
    }
);

signed!(
    /// `invite_to_network` (`spec/registry.md` §3.15).
    InviteToNetwork {
        /// Network.
        network_id: u16,
        /// Inviting member (signer).
        inviter_id: u32,
        /// Invited node.
        target_node_id: u32,
    }
);

signed!(
    /// `poll_invites` (`spec/registry.md` §3.15).
    PollInvites {
        /// The polling node.
        node_id: u32,
    }
);

signed!(
    /// `respond_invite` (`spec/registry.md` §3.15).
    RespondInvite {
        /// The invited node.
        node_id: u32,
        /// Network of the invitation.
        network_id: u16,
        /// Accept (joins) or decline.
        accept: bool,
    }
);

signed!(
    /// `delete_network` (`spec/registry.md` §3.15.1): owner, signed
    /// `delete_network:<node>:<net>`, or admin token.
    DeleteNetwork {
        /// Acting node.
        node_id: u32,
        /// Network.
        network_id: u16,
        /// Operator override instead of a signature and role.
        admin_token: ostr,
    }
);

signed!(
    /// `rename_network` (`spec/registry.md` §3.15.1): owner, signed
    /// `rename_network:<node>:<net>:<name>`, or admin token.
    RenameNetwork {
        /// Acting node.
        node_id: u32,
        /// Network.
        network_id: u16,
        /// New name.
        name: str,
        /// Operator override instead of a signature and role.
        admin_token: ostr,
    }
);

signed!(
    /// `kick_member`, `promote_member`, `demote_member`,
    /// `transfer_ownership` (`spec/registry.md` §3.15.1): signed
    /// `<type>:<node>:<net>:<target>`, or admin token.
    MemberAction {
        /// Acting node.
        node_id: u32,
        /// Network.
        network_id: u16,
        /// The member acted on.
        target_node_id: u32,
        /// Operator override instead of a signature and role.
        admin_token: ostr,
    }
);

req!(
    /// `get_member_role` and `get_member_tags` (no auth).
    MemberQuery {
        /// Network.
        network_id: u16,
        /// The member.
        target_node_id: u32,
    }
);

signed!(
    /// `set_member_tags` (`spec/registry.md` §3.15.2): owner or admin,
    /// signed `set_member_tags:<node>:<net>:<target>`, or admin token.
    SetMemberTags {
        /// Acting node.
        node_id: u32,
        /// Network.
        network_id: u16,
        /// The member whose tags change.
        target_node_id: u32,
        /// New tags (empty clears).
        tags: strs,
        /// Operator override instead of a signature and role.
        admin_token: ostr,
    }
);

req!(
    /// `get_network_policy` (no auth).
    GetNetworkPolicy {
        /// Network.
        network_id: u16,
    }
);

signed!(
    /// `set_network_policy` (`spec/registry.md` §3.15.3): owner, signed
    /// `set_network_policy:<node>:<net>`, or admin token. A `null` or
    /// absent policy clears it.
    SetNetworkPolicy {
        /// Acting node.
        node_id: u32,
        /// Network.
        network_id: u16,
        /// The policy document (`registry::policy`).
        policy: json,
        /// Operator override instead of a signature and role.
        admin_token: ostr,
    }
);

req!(
    /// `update_polo_score` (legacy profile only, `spec/registry.md` §3.16).
    UpdatePoloScore {
        /// The node.
        node_id: u32,
        /// Amount to add (required).
        delta: i64,
    }
);

req!(
    /// `set_polo_score` (legacy profile only, `spec/registry.md` §3.16).
    SetPoloScore {
        /// The node.
        node_id: u32,
        /// New score (required).
        polo_score: i64,
    }
);

req!(
    /// `get_polo_score` (legacy profile only, `spec/registry.md` §3.16).
    GetPoloScore {
        /// The node.
        node_id: u32,
    }
);

req!(
    /// `beacon_register` (`spec/registry.md` §3.17).
    BeaconRegister {
        /// Beacon ID (non-zero).
        beacon_id: u32,
        /// The beacon's UDP `host:port`.
        addr: str,
        /// Admin token (required in the current profile).
        admin_token: ostr,
    }
);

req!(
    /// `beacon_list` (`spec/registry.md` §3.17).
    BeaconList {}
);

/// Every request the registry understands (`spec/registry.md` §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// `register`.
    Register(Register),
    /// `lookup`.
    Lookup(Lookup),
    /// `resolve`.
    Resolve(Resolve),
    /// `heartbeat`.
    Heartbeat(Heartbeat),
    /// `deregister`.
    Deregister(Deregister),
    /// `set_visibility`.
    SetVisibility(SetVisibility),
    /// `set_hostname`.
    SetHostname(SetHostname),
    /// `resolve_hostname`.
    ResolveHostname(ResolveHostname),
    /// `set_tags`.
    SetTags(SetTags),
    /// `set_task_exec`.
    SetTaskExec(SetTaskExec),
    /// `rotate_key`.
    RotateKey(RotateKey),
    /// `report_trust`.
    ReportTrust(TrustPair),
    /// `revoke_trust`.
    RevokeTrust(TrustPair),
    /// `check_trust`.
    CheckTrust(CheckTrust),
    /// `request_handshake`.
    RequestHandshake(RequestHandshake),
    /// `poll_handshakes`.
    PollHandshakes(PollHandshakes),
    /// `respond_handshake`.
    RespondHandshake(RespondHandshake),
    /// `punch`.
    Punch(Punch),
    /// `list_networks`.
    ListNetworks(ListNetworks),
    /// `list_nodes`.
    ListNodes(ListNodes),
    /// `create_network`.
    CreateNetwork(CreateNetwork),
    /// `join_network`.
    JoinNetwork(JoinNetwork),
    /// `leave_network`.
    LeaveNetwork(LeaveNetwork),
    /// `invite_to_network`.
    InviteToNetwork(InviteToNetwork),
    /// `poll_invites`.
    PollInvites(PollInvites),
    /// `respond_invite`.
    RespondInvite(RespondInvite),
    /// `update_polo_score`.
    UpdatePoloScore(UpdatePoloScore),
    /// `set_polo_score`.
    SetPoloScore(SetPoloScore),
    /// `get_polo_score`.
    GetPoloScore(GetPoloScore),
    /// `beacon_register`.
    BeaconRegister(BeaconRegister),
    /// `beacon_list`.
    BeaconList(BeaconList),
    /// `delete_network`.
    DeleteNetwork(DeleteNetwork),
    /// `rename_network`.
    RenameNetwork(RenameNetwork),
    /// `kick_member`.
    KickMember(MemberAction),
    /// `promote_member`.
    PromoteMember(MemberAction),
    /// `demote_member`.
    DemoteMember(MemberAction),
    /// `transfer_ownership`.
    TransferOwnership(MemberAction),
    /// `get_member_role`.
    GetMemberRole(MemberQuery),
    /// `set_member_tags`.
    SetMemberTags(SetMemberTags),
    /// `get_member_tags`.
    GetMemberTags(MemberQuery),
    /// `set_network_policy`.
    SetNetworkPolicy(SetNetworkPolicy),
    /// `get_network_policy`.
    GetNetworkPolicy(GetNetworkPolicy),
    /// Any other `"type"` (answered with `unknown message type`); holds the
    /// type string (empty if missing or not a string). Never encoded.
    #[serde(skip)]
    Unknown(String),
}

/// The `"type"` strings of every known request, in [`Request`] order.
pub const REQUEST_TYPES: [&str; 42] = [
    "register",
    "lookup",
    "resolve",
    "heartbeat",
    "deregister",
    "set_visibility",
    "set_hostname",
    "resolve_hostname",
    "set_tags",
    "set_task_exec",
    "rotate_key",
    "report_trust",
    "revoke_trust",
    "check_trust",
    "request_handshake",
    "poll_handshakes",
    "respond_handshake",
    "punch",
    "list_networks",
    "list_nodes",
    "create_network",
    "join_network",
    "leave_network",
    "invite_to_network",
    "poll_invites",
    "respond_invite",
    "update_polo_score",
    "set_polo_score",
    "get_polo_score",
    "beacon_register",
    "beacon_list",
    "delete_network",
    "rename_network",
    "kick_member",
    "promote_member",
    "demote_member",
    "transfer_ownership",
    "get_member_role",
    "set_member_tags",
    "get_member_tags",
    "set_network_policy",
    "get_network_policy",
];

impl Request {
    /// Index of this request's type in [`REQUEST_TYPES`]; `None` for
    /// [`Request::Unknown`]. Metrics label requests with it.
    pub fn type_index(&self) -> Option<usize> {
        Some(match self {
            Request::Register(_) => 0,
            Request::Lookup(_) => 1,
            Request::Resolve(_) => 2,
            Request::Heartbeat(_) => 3,
            Request::Deregister(_) => 4,
            Request::SetVisibility(_) => 5,
            Request::SetHostname(_) => 6,
            Request::ResolveHostname(_) => 7,
            Request::SetTags(_) => 8,
            Request::SetTaskExec(_) => 9,
            Request::RotateKey(_) => 10,
            Request::ReportTrust(_) => 11,
            Request::RevokeTrust(_) => 12,
            Request::CheckTrust(_) => 13,
            Request::RequestHandshake(_) => 14,
            Request::PollHandshakes(_) => 15,
            Request::RespondHandshake(_) => 16,
            Request::Punch(_) => 17,
            Request::ListNetworks(_) => 18,
            Request::ListNodes(_) => 19,
            Request::CreateNetwork(_) => 20,
            Request::JoinNetwork(_) => 21,
            Request::LeaveNetwork(_) => 22,
            Request::InviteToNetwork(_) => 23,
            Request::PollInvites(_) => 24,
            Request::RespondInvite(_) => 25,
            Request::UpdatePoloScore(_) => 26,
            Request::SetPoloScore(_) => 27,
            Request::GetPoloScore(_) => 28,
            Request::BeaconRegister(_) => 29,
            Request::BeaconList(_) => 30,
            Request::DeleteNetwork(_) => 31,
            Request::RenameNetwork(_) => 32,
            Request::KickMember(_) => 33,
            Request::PromoteMember(_) => 34,
            Request::DemoteMember(_) => 35,
            Request::TransferOwnership(_) => 36,
            Request::GetMemberRole(_) => 37,
            Request::SetMemberTags(_) => 38,
            Request::GetMemberTags(_) => 39,
            Request::SetNetworkPolicy(_) => 40,
            Request::GetNetworkPolicy(_) => 41,
            Request::Unknown(_) => return None,
        })
    }

    /// The `"type"` string of this request (`"unknown"` for an unknown one).
    pub fn type_name(&self) -> &'static str {
        self.type_index()
            .and_then(|i| REQUEST_TYPES.get(i).copied())
            .unwrap_or("unknown")
    }
}

/// Decodes one request payload (the JSON of one frame).
///
/// Invalid JSON or a non-object is an error (the server closes the
/// connection without a reply); an unknown or missing `"type"` decodes to
/// [`Request::Unknown`].
pub fn decode_request(payload: &[u8]) -> Result<Request, CodecError> {
    let v: Value = serde_json::from_slice(payload).map_err(|_| CodecError::NotAnObject)?;
    let Value::Object(map) = &v else {
        return Err(CodecError::NotAnObject);
    };
    let ty = match map.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    if !REQUEST_TYPES.contains(&ty.as_str()) {
        return Ok(Request::Unknown(ty));
    }
    // The lenient readers accept any field shape, so this cannot fail for a
    // known type; map a failure to Unknown rather than trusting that.
    Ok(serde_json::from_value(v).unwrap_or(Request::Unknown(ty)))
}

/// Encodes a request as compact JSON with sorted keys (no frame).
pub fn encode_request(req: &Request) -> Result<Vec<u8>, CodecError> {
    let v = serde_json::to_value(req).map_err(|_| CodecError::Unencodable)?;
    serde_json::to_vec(&v).map_err(|_| CodecError::Unencodable)
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `register_ok`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterOk {
    /// Text address on the backbone.
    pub address: String,
    /// Always 0.
    #[serde(default)]
    pub network_id: u16,
    /// The node's ID.
    pub node_id: u32,
    /// The registered key (base64).
    pub public_key: String,
    /// The hostname applied, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Why the requested hostname was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_error: Option<String>,
    /// The endpoint the registry stored (current profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_addr: Option<String>,
    /// Registry protocol version (current profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
}

/// `lookup_ok`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupOk {
    /// Text address on the node's first network.
    pub address: String,
    /// Networks the node belongs to.
    #[serde(default)]
    pub networks: Vec<u16>,
    /// The node.
    pub node_id: u32,
    /// Polo score (legacy profile only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polo_score: Option<i64>,
    /// Visibility.
    #[serde(default)]
    pub public: bool,
    /// Base64 key.
    pub public_key: String,
    /// Hostname, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Tags, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Present (true) only when set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub task_exec: bool,
    /// Endpoint, public nodes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_addr: Option<String>,
    /// Same as `real_addr` (current profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// `resolve_ok`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveOk {
    /// Target.
    pub node_id: u32,
    /// Target's tunnel endpoint.
    pub real_addr: String,
    /// Target's LAN addresses, if it registered any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan_addrs: Option<Vec<String>>,
}

/// One entry of a `poll_handshakes_ok` request list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRequest {
    /// Requesting node.
    pub from_node_id: u32,
    /// Its justification.
    #[serde(default)]
    pub justification: String,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: u64,
}

/// One entry of a `poll_handshakes_ok` response list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxResponse {
    /// Whether the peer accepted.
    #[serde(default)]
    pub accept: bool,
    /// Responding node.
    pub from_node_id: u32,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: u64,
}

/// One `list_networks_ok` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSummary {
    /// Network ID.
    pub id: u16,
    /// `open`, `token` or `invite`.
    pub join_rule: String,
    /// Member count (legacy: always; current: with admin token only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u64>,
    /// Name.
    pub name: String,
    /// Creation time, Unix seconds (current profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
}

/// One `list_nodes_ok` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Address on the listed network.
    pub address: String,
    /// Node ID.
    pub node_id: u32,
    /// Hostname, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Present (true) only when set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub task_exec: bool,
    /// Endpoint, public nodes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_addr: Option<String>,
    /// Member whose node record is gone (current profile).
    #[serde(default, skip_serializing_if = "is_false")]
    pub offline: bool,
    /// Role in the listed network (current profile, non-backbone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Member tags in the listed network, when any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_tags: Vec<String>,
}

/// One `poll_invites_ok` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteEntry {
    /// Inviting member.
    pub inviter_id: u32,
    /// Network.
    pub network_id: u16,
    /// Network name.
    #[serde(default)]
    pub network_name: String,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: u64,
}

/// One `beacon_list_ok` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeaconEntry {
    /// Beacon UDP `host:port`.
    pub addr: String,
    /// Beacon ID.
    pub id: u32,
}

/// Replies naming one member's role (`kick_member_ok` reports the role
/// the member had).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRoleOk {
    /// Network.
    pub network_id: u16,
    /// The member.
    pub node_id: u32,
    /// `owner`, `admin` or `member`.
    pub role: String,
}

/// Replies carrying one member's tags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTagsOk {
    /// Network.
    pub network_id: u16,
    /// The member.
    pub node_id: u32,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Replies carrying a network's policy (`null` = none set).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOk {
    /// Network.
    pub network_id: u16,
    /// The policy, or `null`.
    #[serde(default)]
    pub policy: Option<Value>,
}

/// Polo-score replies (`update_/set_/get_polo_score_ok`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoloScoreOk {
    /// Backbone address.
    pub address: String,
    /// Node.
    pub node_id: u32,
    /// Score.
    pub polo_score: i64,
}

/// Every reply the registry sends (`spec/registry.md` §3). Encoded with
/// sorted keys; decoded by [`decode_response`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Response {
    /// Failure; see [`super::server::RegistryError`] for the reasons.
    #[serde(rename = "error")]
    Error {
        /// The (possibly generic) reason.
        error: String,
    },
    /// `register_ok`.
    #[serde(rename = "register_ok")]
    RegisterOk(RegisterOk),
    /// `lookup_ok`.
    #[serde(rename = "lookup_ok")]
    LookupOk(LookupOk),
    /// `resolve_ok`.
    #[serde(rename = "resolve_ok")]
    ResolveOk(ResolveOk),
    /// `heartbeat_ok`.
    #[serde(rename = "heartbeat_ok")]
    HeartbeatOk {
        /// Registry time, Unix seconds.
        time: u64,
    },
    /// `deregister_ok`.
    #[serde(rename = "deregister_ok")]
    DeregisterOk {},
    /// `set_visibility_ok`.
    #[serde(rename = "set_visibility_ok")]
    SetVisibilityOk {
        /// Node.
        node_id: u32,
        /// `public` or `private`.
        visibility: String,
    },
    /// `set_hostname_ok`.
    #[serde(rename = "set_hostname_ok")]
    SetHostnameOk {
        /// New hostname (empty = cleared).
        hostname: String,
        /// Node.
        node_id: u32,
    },
    /// `resolve_hostname_ok`.
    #[serde(rename = "resolve_hostname_ok")]
    ResolveHostnameOk {
        /// Backbone address.
        address: String,
        /// The name.
        hostname: String,
        /// Node.
        node_id: u32,
        /// Visibility.
        public: bool,
    },
    /// `set_tags_ok` (`tags` is `null` when cleared).
    #[serde(rename = "set_tags_ok")]
    SetTagsOk {
        /// Node.
        node_id: u32,
        /// New tags, `None` when cleared.
        tags: Option<Vec<String>>,
    },
    /// `set_task_exec_ok`.
    #[serde(rename = "set_task_exec_ok")]
    SetTaskExecOk {
        /// Node.
        node_id: u32,
        /// New value.
        task_exec: bool,
    },
    /// `rotate_key_ok`.
    #[serde(rename = "rotate_key_ok")]
    RotateKeyOk {
        /// Backbone address.
        address: String,
        /// Node.
        node_id: u32,
        /// New key (base64).
        public_key: String,
    },
    /// `report_trust_ok`.
    #[serde(rename = "report_trust_ok")]
    ReportTrustOk {},
    /// `revoke_trust_ok`.
    #[serde(rename = "revoke_trust_ok")]
    RevokeTrustOk {},
    /// `check_trust_ok`.
    #[serde(rename = "check_trust_ok")]
    CheckTrustOk {
        /// Trust pair or shared non-backbone network.
        trusted: bool,
    },
    /// `request_handshake_ok`.
    #[serde(rename = "request_handshake_ok")]
    RequestHandshakeOk {
        /// Always `delivered`.
        status: String,
    },
    /// `poll_handshakes_ok`.
    #[serde(rename = "poll_handshakes_ok")]
    PollHandshakesOk {
        /// Pending requests (cleared by the poll).
        requests: Vec<InboxRequest>,
        /// Responses to this node's requests (cleared by the poll).
        responses: Vec<InboxResponse>,
    },
    /// `respond_handshake_ok`.
    #[serde(rename = "respond_handshake_ok")]
    RespondHandshakeOk {
        /// The decision.
        accept: bool,
        /// The original requester.
        peer_id: u32,
    },
    /// `punch_ok`.
    #[serde(rename = "punch_ok")]
    PunchOk {
        /// First node.
        node_a: u32,
        /// Its endpoint.
        node_a_addr: String,
        /// Second node.
        node_b: u32,
        /// Its endpoint.
        node_b_addr: String,
    },
    /// `list_networks_ok`.
    #[serde(rename = "list_networks_ok")]
    ListNetworksOk {
        /// Networks.
        networks: Vec<NetworkSummary>,
    },
    /// `list_nodes_ok`.
    #[serde(rename = "list_nodes_ok")]
    ListNodesOk {
        /// Members.
        nodes: Vec<NodeEntry>,
        /// Ours: the network's policy, when one is set
        /// (`spec/registry.md` §3.15.3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<Value>,
    },
    /// `create_network_ok`.
    #[serde(rename = "create_network_ok")]
    CreateNetworkOk {
        /// Name.
        name: String,
        /// Allocated ID.
        network_id: u16,
    },
    /// `join_network_ok`.
    #[serde(rename = "join_network_ok")]
    JoinNetworkOk {
        /// The node's address on the network.
        address: String,
        /// Network.
        network_id: u16,
    },
    /// `leave_network_ok`.
    #[serde(rename = "leave_network_ok")]
    LeaveNetworkOk {
        /// Network.
        network_id: u16,
    },
    /// `invite_to_network_ok`.
    #[serde(rename = "invite_to_network_ok")]
    InviteToNetworkOk {
        /// Network.
        network_id: u16,
        /// Invited node.
        target_node_id: u32,
    },
    /// `poll_invites_ok`.
    #[serde(rename = "poll_invites_ok")]
    PollInvitesOk {
        /// Pending invitations (cleared by the poll).
        invites: Vec<InviteEntry>,
    },
    /// `respond_invite_ok`.
    #[serde(rename = "respond_invite_ok")]
    RespondInviteOk {
        /// The decision.
        accept: bool,
        /// Network.
        network_id: u16,
    },
    /// `update_polo_score_ok`.
    #[serde(rename = "update_polo_score_ok")]
    UpdatePoloScoreOk(PoloScoreOk),
    /// `set_polo_score_ok`.
    #[serde(rename = "set_polo_score_ok")]
    SetPoloScoreOk(PoloScoreOk),
    /// `get_polo_score_ok`.
    #[serde(rename = "get_polo_score_ok")]
    GetPoloScoreOk(PoloScoreOk),
    /// `beacon_register_ok`.
    #[serde(rename = "beacon_register_ok")]
    BeaconRegisterOk {
        /// The beacon.
        beacon_id: u32,
    },
    /// `delete_network_ok`.
    #[serde(rename = "delete_network_ok")]
    DeleteNetworkOk {
        /// Network.
        network_id: u16,
    },
    /// `rename_network_ok`.
    #[serde(rename = "rename_network_ok")]
    RenameNetworkOk {
        /// New name.
        name: String,
        /// Network.
        network_id: u16,
    },
    /// `kick_member_ok`.
    #[serde(rename = "kick_member_ok")]
    KickMemberOk(MemberRoleOk),
    /// `promote_member_ok`.
    #[serde(rename = "promote_member_ok")]
    PromoteMemberOk(MemberRoleOk),
    /// `demote_member_ok`.
    #[serde(rename = "demote_member_ok")]
    DemoteMemberOk(MemberRoleOk),
    /// `transfer_ownership_ok` (`node_id` = the new owner).
    #[serde(rename = "transfer_ownership_ok")]
    TransferOwnershipOk(MemberRoleOk),
    /// `get_member_role_ok`.
    #[serde(rename = "get_member_role_ok")]
    GetMemberRoleOk(MemberRoleOk),
    /// `set_member_tags_ok`.
    #[serde(rename = "set_member_tags_ok")]
    SetMemberTagsOk(MemberTagsOk),
    /// `get_member_tags_ok`.
    #[serde(rename = "get_member_tags_ok")]
    GetMemberTagsOk(MemberTagsOk),
    /// `set_network_policy_ok` / `get_network_policy_ok`.
    #[serde(rename = "set_network_policy_ok")]
    SetNetworkPolicyOk(PolicyOk),
    /// `get_network_policy_ok`.
    #[serde(rename = "get_network_policy_ok")]
    GetNetworkPolicyOk(PolicyOk),
    /// `beacon_list_ok`.
    #[serde(rename = "beacon_list_ok")]
    BeaconListOk {
        /// Live beacons.
        beacons: Vec<BeaconEntry>,
    },
    /// Ours: an unsolicited hint pushed to a connection that asked for it
    /// with `poll_handshakes` `push: true` (`spec/registry.md` §3.13). It
    /// answers no request.
    #[serde(rename = "push")]
    Push {
        /// [`PUSH_HANDSHAKE`] or [`PUSH_TRUST_REVOKED`].
        kind: String,
        /// The node the hint is about (the requester, responder or revoker).
        #[serde(default, deserialize_with = "de::u32")]
        from: u32,
    },
}

/// [`Response::Push`] kind: the handshake inbox has something new.
pub const PUSH_HANDSHAKE: &str = "handshake";
/// [`Response::Push`] kind: `from` revoked its trust pair with the node.
pub const PUSH_TRUST_REVOKED: &str = "trust_revoked";

impl Response {
    /// An error reply with this text.
    pub fn error(text: impl Into<String>) -> Self {
        Response::Error { error: text.into() }
    }
}

/// Encodes a response as compact JSON with sorted keys (no frame).
pub fn encode_response(resp: &Response) -> Result<Vec<u8>, CodecError> {
    let v = serde_json::to_value(resp).map_err(|_| CodecError::Unencodable)?;
    serde_json::to_vec(&v).map_err(|_| CodecError::Unencodable)
}

/// Decodes a response payload. Like the reference client, any object with
/// an `"error"` key is a failure ([`Response::Error`]) whatever its type;
/// an object without `"type"` is refused.
pub fn decode_response(payload: &[u8]) -> Result<Response, CodecError> {
    let v: Value = serde_json::from_slice(payload).map_err(|_| CodecError::NotAnObject)?;
    let Value::Object(map) = &v else {
        return Err(CodecError::NotAnObject);
    };
    if let Some(e) = map.get("error") {
        let text = match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Ok(Response::Error { error: text });
    }
    let ty = match map.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(CodecError::MissingType),
    };
    serde_json::from_value(v).map_err(|e| {
        if e.to_string().starts_with("unknown variant") {
            CodecError::UnknownType(ty)
        } else {
            CodecError::Malformed(ty)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_incremental() {
        let payload = br#"{"type":"beacon_list"}"#;
        let mut buf = [0u8; 64];
        let n = encode_frame(payload, &mut buf).unwrap();
        assert_eq!(n, 4 + payload.len());
        assert_eq!(buf[..4], (payload.len() as u32).to_be_bytes());
        for cut in 0..n {
            assert_eq!(decode_frame(&buf[..cut], 1024), Ok(None), "cut {cut}");
        }
        let (p, used) = decode_frame(&buf[..n + 3], 1024).unwrap().unwrap();
        assert_eq!((p, used), (&payload[..], n));
        assert_eq!(
            encode_frame(payload, &mut [0u8; 10]),
            Err(FrameError::BufferTooSmall { need: n, have: 10 })
        );
        assert_eq!(frame_vec(payload).unwrap(), buf[..n].to_vec());
    }

    #[test]
    fn oversize_prefix_refused() {
        let max = super::super::limits::MAX_FRAME_LEN;
        let big = ((max + 1) as u32).to_be_bytes();
        assert_eq!(
            decode_frame(&big, max),
            Err(FrameError::TooLarge { len: max + 1, max })
        );
        let ok = (max as u32).to_be_bytes();
        assert_eq!(decode_frame(&ok, max), Ok(None));
    }

    #[test]
    fn lenient_numbers_bools_strings() {
        let r = decode_request(
            br#"{"type":"set_visibility","node_id":-3,"public":"yes","signature":7}"#,
        )
        .unwrap();
        let Request::SetVisibility(s) = r else {
            panic!("{r:?}")
        };
        assert_eq!((s.node_id, s.public, s.signature.as_str()), (0, false, ""));
        let r = decode_request(br#"{"type":"lookup","node_id":4294967296}"#).unwrap();
        assert_eq!(r, Request::Lookup(Lookup { node_id: 0 }));
        let r = decode_request(br#"{"type":"lookup","node_id":7.0}"#).unwrap();
        assert_eq!(r, Request::Lookup(Lookup { node_id: 7 }));
        let r = decode_request(br#"{"type":"lookup"}"#).unwrap();
        assert_eq!(r, Request::Lookup(Lookup { node_id: 0 }));
        let r =
            decode_request(br#"{"type":"set_tags","node_id":1,"tags":["a",1,"b",null]}"#).unwrap();
        let Request::SetTags(t) = r else { panic!() };
        assert_eq!(t.tags, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn unknown_and_malformed() {
        assert_eq!(
            decode_request(br#"{"type":"teleport"}"#),
            Ok(Request::Unknown("teleport".into()))
        );
        assert_eq!(
            decode_request(br#"{"x":1}"#),
            Ok(Request::Unknown(String::new()))
        );
        assert_eq!(
            decode_request(br#"{"type":5}"#),
            Ok(Request::Unknown(String::new()))
        );
        assert_eq!(decode_request(b"[1]"), Err(CodecError::NotAnObject));
        assert_eq!(decode_request(b"{"), Err(CodecError::NotAnObject));
        assert_eq!(
            encode_request(&Request::Unknown("x".into())),
            Err(CodecError::Unencodable)
        );
    }

    fn sample_requests() -> Vec<Request> {
        vec![
            Request::Register(Register {
                listen_addr: "127.0.0.1:4000".into(),
                public_key: "k".into(),
                owner: "o".into(),
                hostname: "h".into(),
                lan_addrs: vec!["10.0.0.1:4000".into()],
                version: "v".into(),
                signature: "s".into(),
                sig_ts: Some(5),
            }),
            Request::Lookup(Lookup { node_id: 1 }),
            Request::Resolve(Resolve {
                node_id: 2,
                requester_id: 1,
                signature: "s".into(),
                sig_ts: None,
            }),
            Request::Heartbeat(Heartbeat {
                node_id: 1,
                signature: "s".into(),
                sig_ts: Some(9),
            }),
            Request::Deregister(Deregister {
                node_id: 1,
                ..Default::default()
            }),
            Request::SetVisibility(SetVisibility {
                node_id: 1,
                public: true,
                ..Default::default()
            }),
            Request::SetHostname(SetHostname {
                node_id: 1,
                hostname: "a".into(),
                ..Default::default()
            }),
            Request::ResolveHostname(ResolveHostname {
                hostname: "a".into(),
                requester_id: 3,
            }),
            Request::SetTags(SetTags {
                node_id: 1,
                tags: vec!["x".into()],
                ..Default::default()
            }),
            Request::SetTaskExec(SetTaskExec {
                node_id: 1,
                enabled: true,
                ..Default::default()
            }),
            Request::RotateKey(RotateKey {
                node_id: 1,
                new_public_key: "n".into(),
                ..Default::default()
            }),
            Request::ReportTrust(TrustPair {
                node_id: 1,
                peer_id: 2,
                ..Default::default()
            }),
            Request::RevokeTrust(TrustPair {
                node_id: 1,
                peer_id: 2,
                ..Default::default()
            }),
            Request::CheckTrust(CheckTrust {
                node_id: 1,
                peer_id: 2,
            }),
            Request::RequestHandshake(RequestHandshake {
                from_node_id: 1,
                to_node_id: 2,
                justification: "hi".into(),
                ..Default::default()
            }),
            Request::PollHandshakes(PollHandshakes {
                node_id: 1,
                ..Default::default()
            }),
            Request::RespondHandshake(RespondHandshake {
                node_id: 2,
                peer_id: 1,
                accept: true,
                ..Default::default()
            }),
            Request::Punch(Punch {
                requester_id: 1,
                node_a: 1,
                node_b: 2,
                ..Default::default()
            }),
            Request::ListNetworks(ListNetworks {
                admin_token: "t".into(),
            }),
            Request::ListNodes(ListNodes {
                network_id: 1,
                admin_token: String::new(),
            }),
            Request::CreateNetwork(CreateNetwork {
                node_id: 1,
                name: "lab".into(),
                join_rule: "token".into(),
                token: "x".into(),
                admin_token: "t".into(),
            }),
            Request::JoinNetwork(JoinNetwork {
                node_id: 1,
                network_id: 1,
                token: "x".into(),
                inviter_id: 2,
                ..Default::default()
            }),
            Request::LeaveNetwork(LeaveNetwork {
                node_id: 1,
                network_id: 1,
                ..Default::default()
            }),
            Request::InviteToNetwork(InviteToNetwork {
                network_id: 1,
                inviter_id: 1,
                target_node_id: 2,
                ..Default::default()
            }),
            Request::PollInvites(PollInvites {
                node_id: 2,
                ..Default::default()
            }),
            Request::RespondInvite(RespondInvite {
                node_id: 2,
                network_id: 1,
                accept: true,
                ..Default::default()
            }),
            Request::UpdatePoloScore(UpdatePoloScore {
                node_id: 1,
                delta: Some(-2),
            }),
            Request::SetPoloScore(SetPoloScore {
                node_id: 1,
                polo_score: Some(5),
            }),
            Request::GetPoloScore(GetPoloScore { node_id: 1 }),
            Request::BeaconRegister(BeaconRegister {
                beacon_id: 3,
                addr: "127.0.0.1:9001".into(),
                admin_token: String::new(),
            }),
            Request::BeaconList(BeaconList {}),
            Request::DeleteNetwork(DeleteNetwork {
                node_id: 1,
                network_id: 2,
                signature: "c2ln".into(),
                ..Default::default()
            }),
            Request::RenameNetwork(RenameNetwork {
                node_id: 1,
                network_id: 2,
                name: "lab".into(),
                ..Default::default()
            }),
            Request::KickMember(member_action()),
            Request::PromoteMember(member_action()),
            Request::DemoteMember(member_action()),
            Request::TransferOwnership(member_action()),
            Request::GetMemberRole(MemberQuery {
                network_id: 2,
                target_node_id: 3,
            }),
            Request::SetMemberTags(SetMemberTags {
                node_id: 1,
                network_id: 2,
                target_node_id: 3,
                tags: vec!["gpu".into()],
                ..Default::default()
            }),
            Request::GetMemberTags(MemberQuery {
                network_id: 2,
                target_node_id: 3,
            }),
            Request::SetNetworkPolicy(SetNetworkPolicy {
                node_id: 1,
                network_id: 2,
                policy: Some(serde_json::json!({"version":1,"max_members":3})),
                admin_token: "adm".into(),
                ..Default::default()
            }),
            Request::GetNetworkPolicy(GetNetworkPolicy { network_id: 2 }),
        ]
    }

    fn member_action() -> MemberAction {
        MemberAction {
            node_id: 1,
            network_id: 2,
            target_node_id: 3,
            sig_ts: Some(5),
            ..Default::default()
        }
    }

    #[test]
    fn every_request_round_trips_and_type_names_match() {
        let reqs = sample_requests();
        assert_eq!(reqs.len(), REQUEST_TYPES.len());
        for (req, ty) in reqs.iter().zip(REQUEST_TYPES) {
            let bytes = encode_request(req).unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["type"], *ty);
            assert_eq!(req.type_name(), ty);
            assert_eq!(&decode_request(&bytes).unwrap(), req, "{ty}");
        }
    }

    #[test]
    fn responses_sorted_and_round_trip() {
        let r = Response::HeartbeatOk {
            time: 1_767_225_600,
        };
        let b = encode_response(&r).unwrap();
        assert_eq!(b, br#"{"time":1767225600,"type":"heartbeat_ok"}"#);
        assert_eq!(decode_response(&b), Ok(r));
        let e = Response::error("request failed");
        let b = encode_response(&e).unwrap();
        assert_eq!(b, br#"{"error":"request failed","type":"error"}"#);
        let t = Response::SetTagsOk {
            node_id: 1,
            tags: None,
        };
        assert_eq!(
            encode_response(&t).unwrap(),
            br#"{"node_id":1,"tags":null,"type":"set_tags_ok"}"#
        );
        assert_eq!(
            decode_response(br#"{"type":"dunno"}"#),
            Err(CodecError::UnknownType("dunno".into()))
        );
        assert_eq!(
            decode_response(br#"{"node_id":1}"#),
            Err(CodecError::MissingType)
        );
        // An error key wins regardless of type.
        assert_eq!(
            decode_response(br#"{"error":"x","type":"heartbeat_ok"}"#),
            Ok(Response::error("x"))
        );
        assert_eq!(
            decode_response(br#"{"time":"soon","type":"heartbeat_ok"}"#),
            Err(CodecError::Malformed("heartbeat_ok".into()))
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn frames_round_trip_at_every_split(payload in proptest::collection::vec(any::<u8>(), 0..600), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
                let mut bytes = frame_vec(&payload).unwrap();
                let n = bytes.len();
                bytes.extend_from_slice(&extra);
                for cut in 0..n {
                    prop_assert_eq!(decode_frame(&bytes[..cut], 4096), Ok(None));
                }
                prop_assert_eq!(decode_frame(&bytes, 4096), Ok(Some((&payload[..], n))));
            }

            #[test]
            fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = decode_frame(&data, 1024);
                if let Ok(req) = decode_request(&data) {
                    if !matches!(req, Request::Unknown(_)) {
                        let again = decode_request(&encode_request(&req).unwrap()).unwrap();
                        prop_assert_eq!(again, req);
                    }
                }
                if let Ok(resp) = decode_response(&data) {
                    let again = decode_response(&encode_response(&resp).unwrap()).unwrap();
                    prop_assert_eq!(again, resp);
                }
            }

            #[test]
            fn signed_requests_round_trip(node in any::<u32>(), peer in any::<u32>(), accept in any::<bool>(), sig in ".{0,90}", ts in proptest::option::of(any::<u64>()), why in ".{0,40}") {
                let reqs = [
                    Request::Heartbeat(Heartbeat { node_id: node, signature: sig.clone(), sig_ts: ts }),
                    Request::RespondHandshake(RespondHandshake { node_id: node, peer_id: peer, accept, signature: sig.clone(), sig_ts: ts }),
                    Request::RequestHandshake(RequestHandshake { from_node_id: node, to_node_id: peer, justification: why.clone(), signature: sig.clone(), sig_ts: ts }),
                    Request::SetHostname(SetHostname { node_id: node, hostname: why.clone(), signature: sig.clone(), sig_ts: ts, admin_token: sig.clone() }),
                ];
                for r in reqs {
                    prop_assert_eq!(decode_request(&encode_request(&r).unwrap()).unwrap(), r);
                }
            }
        }
    }
}
