//! The daemon ⇄ driver IPC codec (`spec/ipc.md`).
//!
//! This module owns two layers:
//!
//! * the **frame layer**: `u32 BE length || body`, with the body limited to
//!   [`MAX_BODY_LEN`] bytes. [`parse_frame`] works incrementally on a
//!   caller's receive buffer and rejects an oversized length prefix before a
//!   single body byte is read; [`encode_frame`] writes into a caller buffer.
//! * the **message layer**: [`IpcMessage`] is one typed variant per command
//!   byte of every profile (v1.8 "legacy" and "current"). It borrows its
//!   variable-length fields (data, strings, JSON) from the frame body, so
//!   decoding never allocates.
//!
//! Invariants: decoding never panics, never allocates and never accepts a
//! byte it cannot give back: for every body that decodes,
//! `encode(decode(body)) == body`. Fixed-size payloads therefore reject
//! trailing bytes ([`IpcError::TrailingBytes`]), and one-byte switches whose
//! meaning is "1 = yes, anything else = no" keep the raw byte ([`Flag`]).
//! Conversely every message that encodes decodes back to itself: the encoder
//! refuses what the decoder would refuse ([`EncodeError::EmptyField`],
//! [`EncodeError::FieldTooLong`], [`EncodeError::TooLarge`]).
//!
//! JSON payloads are **not** parsed here. They are checked to be UTF-8 and
//! handed out as `&str`; the daemon and the client parse them.
//! Strings (hostnames, URLs, justifications, error messages, tokens) run to
//! the end of the frame unless the layout gives a length, and must be UTF-8.

use core::fmt;

use thiserror::Error;

use super::WireProfile;
use crate::addr::{ADDR_LEN, Addr};

// ---------------------------------------------------------------------------
// Protocol constants
// ---------------------------------------------------------------------------

/// Size of the big-endian length prefix of every frame (`spec/ipc.md` §2).
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Largest body (command byte + payload) a frame may carry: 1 MiB
/// (`spec/ipc.md` §2). A longer length prefix is a protocol error and the
/// reader closes the connection.
pub const MAX_BODY_LEN: usize = 1_048_576;

/// Largest complete frame, prefix included (`spec/ipc.md` §2).
pub const MAX_FRAME_LEN: usize = LENGTH_PREFIX_LEN + MAX_BODY_LEN;

/// Largest data a single `Send` can carry: the body limit minus the command
/// byte and the connection id (`spec/ipc.md` §4).
pub const MAX_SEND_DATA: usize = MAX_BODY_LEN - 1 - 4;

/// The only error code any daemon version sends in an `Error` frame
/// (`spec/ipc.md` §3).
pub const ERROR_CODE_GENERIC: u16 = 1;

/// Upper bound the daemon applies to the timeout of a handshake
/// "wait for trust" request, in milliseconds (`spec/ipc.md` §5).
pub const HANDSHAKE_WAIT_MAX_MS: u32 = 30_000;

/// Most tags a `SetTags` request may carry; more are refused by the daemon
/// before the registry is asked (`spec/ipc.md` §4, `SetTags`).
pub const MAX_TAGS: usize = 3;

/// Most IPC clients a daemon serves at once; further connections are accepted
/// and closed immediately (`spec/ipc.md` §8).
pub const MAX_CLIENTS: usize = 1024;

/// Most overlay connections one IPC client may own (`spec/ipc.md` §8).
pub const MAX_CONNS_PER_CLIENT: usize = 4096;

/// Most requests of one IPC client the daemon works on at once
/// (`spec/ipc.md` §8).
pub const MAX_INFLIGHT_PER_CLIENT: usize = 1024;

/// How long the daemon waits for a stalled client to drain a write before
/// dropping it, in milliseconds (`spec/ipc.md` §8).
pub const CLIENT_WRITE_TIMEOUT_MS: u64 = 10_000;

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// The virtual address type used in IPC messages: the crate's [`Addr`],
/// carried in its 6-byte binary form (`spec/wire.md` §1.1).
pub type IpcAddr = Addr;

// ---------------------------------------------------------------------------
// Command bytes
// ---------------------------------------------------------------------------

/// Which way a frame travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by a client (driver, `pilotctl`, gateway) to the daemon.
    ToDaemon,
    /// Sent by the daemon to a client, as a reply or as a push.
    FromDaemon,
}

/// Which wire profiles define a command or sub-command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Availability {
    /// Defined by both the legacy (v1.8) and the current profile.
    Both,
    /// Only the legacy (v1.8) profile; removed later.
    LegacyOnly,
    /// Only the current profile; a v1.8 daemon answers "unknown command".
    CurrentOnly,
}

impl Availability {
    /// Whether `profile` is one of the profiles this covers.
    pub const fn includes(self, profile: WireProfile) -> bool {
        match self {
            Availability::Both => true,
            Availability::LegacyOnly => matches!(profile, WireProfile::Legacy),
            Availability::CurrentOnly => matches!(profile, WireProfile::Current),
        }
    }
}

macro_rules! commands {
    ($( $(#[$doc:meta])* $name:ident = $byte:literal, $text:literal, $dir:ident, $avail:ident; )*) => {
        /// Every IPC command byte (`spec/ipc.md` §4 and §7).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Command {
            $( $(#[$doc])* $name = $byte, )*
        }

        impl Command {
            /// Every command, in byte order.
            pub const ALL: &'static [Command] = &[$(Command::$name),*];

            /// The command for a byte, if it is assigned.
            pub const fn from_byte(b: u8) -> Option<Command> {
                match b {
                    $( $byte => Some(Command::$name), )*
                    _ => None,
                }
            }

            /// The name used in error texts (`bind`, `resolve_hostname`, …).
            pub const fn name(self) -> &'static str {
                match self {
                    $( Command::$name => $text, )*
                }
            }

            /// Which way frames with this command travel.
            pub const fn direction(self) -> Direction {
                match self {
                    $( Command::$name => Direction::$dir, )*
                }
            }

            /// Which wire profiles define this command.
            pub const fn availability(self) -> Availability {
                match self {
                    $( Command::$name => Availability::$avail, )*
                }
            }
        }
    };
}

commands! {
    /// Bind a port: `[u16 port]`.
    Bind = 0x01, "bind", ToDaemon, Both;
    /// Port bound: `[u16 port]`.
    BindOk = 0x02, "bind_ok", FromDaemon, Both;
    /// Open a stream: `[6B addr][u16 port]`.
    Dial = 0x03, "dial", ToDaemon, Both;
    /// Stream open: `[u32 conn_id]`.
    DialOk = 0x04, "dial_ok", FromDaemon, Both;
    /// Push: a stream was accepted on a bound port.
    Accept = 0x05, "accept", FromDaemon, Both;
    /// Stream data to send: `[u32 conn_id][data…]`.
    Send = 0x06, "send", ToDaemon, Both;
    /// Push: stream data received: `[u32 conn_id][data…]`.
    Recv = 0x07, "recv", FromDaemon, Both;
    /// Close a stream: `[u32 conn_id]`.
    Close = 0x08, "close", ToDaemon, Both;
    /// Stream closed (reply to `Close` and push at end of stream).
    CloseOk = 0x09, "close_ok", FromDaemon, Both;
    /// Error reply: `[u16 code][message…]`.
    Error = 0x0A, "error", FromDaemon, Both;
    /// Datagram to send: `[6B addr][u16 port][data…]`.
    SendTo = 0x0B, "sendto", ToDaemon, Both;
    /// Push: datagram received: `[6B src][u16 src port][u16 dst port][data…]`.
    RecvFrom = 0x0C, "recvfrom", FromDaemon, Both;
    /// Ask for the daemon's status.
    Info = 0x0D, "info", ToDaemon, Both;
    /// Status JSON.
    InfoOk = 0x0E, "info_ok", FromDaemon, Both;
    /// Trust handshake operation: `[u8 sub][…]`.
    Handshake = 0x0F, "handshake", ToDaemon, Both;
    /// Trust handshake result JSON.
    HandshakeOk = 0x10, "handshake_ok", FromDaemon, Both;
    /// Resolve a hostname: `[hostname…]`.
    ResolveHostname = 0x11, "resolve_hostname", ToDaemon, Both;
    /// Resolution JSON.
    ResolveHostnameOk = 0x12, "resolve_hostname_ok", FromDaemon, Both;
    /// Set (or clear) the hostname: `[hostname…]`.
    SetHostname = 0x13, "set_hostname", ToDaemon, Both;
    /// Registry reply JSON.
    SetHostnameOk = 0x14, "set_hostname_ok", FromDaemon, Both;
    /// Set visibility: `[u8]` (1 = public).
    SetVisibility = 0x15, "set_visibility", ToDaemon, Both;
    /// Registry reply JSON.
    SetVisibilityOk = 0x16, "set_visibility_ok", FromDaemon, Both;
    /// Deregister from the registry.
    Deregister = 0x17, "deregister", ToDaemon, Both;
    /// Registry reply JSON.
    DeregisterOk = 0x18, "deregister_ok", FromDaemon, Both;
    /// Set tags: JSON array of strings.
    SetTags = 0x19, "set_tags", ToDaemon, Both;
    /// Registry reply JSON.
    SetTagsOk = 0x1A, "set_tags_ok", FromDaemon, Both;
    /// Set (or clear) the webhook URL: `[url…]`.
    SetWebhook = 0x1B, "set_webhook", ToDaemon, Both;
    /// Reply JSON.
    SetWebhookOk = 0x1C, "set_webhook_ok", FromDaemon, Both;
    /// Enable task execution: `[u8]` (1 = enable). The later reference
    /// dropped it with its task service; this implementation keeps both
    /// (`spec/services.md` §12).
    SetTaskExec = 0x1D, "set_task_exec", ToDaemon, Both;
    /// Reply JSON `{"task_exec":bool,"type":"set_task_exec_ok"}`.
    SetTaskExecOk = 0x1E, "set_task_exec_ok", FromDaemon, Both;
    /// Network operation: `[u8 sub][…]`.
    Network = 0x1F, "network", ToDaemon, CurrentOnly;
    /// Network reply JSON.
    NetworkOk = 0x20, "network_ok", FromDaemon, CurrentOnly;
    /// Health probe.
    Health = 0x21, "health", ToDaemon, CurrentOnly;
    /// Health JSON.
    HealthOk = 0x22, "health_ok", FromDaemon, CurrentOnly;
    /// Managed-network operation: `[u8 sub][…]`.
    Managed = 0x23, "managed", ToDaemon, CurrentOnly;
    /// Managed reply JSON.
    ManagedOk = 0x24, "managed_ok", FromDaemon, CurrentOnly;
    /// Rotate the identity key.
    RotateKey = 0x25, "rotate_key", ToDaemon, CurrentOnly;
    /// Registry reply JSON.
    RotateKeyOk = 0x26, "rotate_key_ok", FromDaemon, CurrentOnly;
    /// Network broadcast: `[u16 net][u16 port][u16 token_len][token][data…]`.
    Broadcast = 0x29, "broadcast", ToDaemon, CurrentOnly;
    /// Broadcast sent (empty payload).
    BroadcastOk = 0x2A, "broadcast_ok", FromDaemon, CurrentOnly;
    /// Legacy cancel; ignored and never answered.
    Cancel = 0x2B, "cancel", ToDaemon, CurrentOnly;
    /// Re-resolve a peer directly: `[u32 node_id]`.
    PreferDirect = 0x2D, "prefer_direct", ToDaemon, CurrentOnly;
    /// Reply (opaque, normally JSON).
    PreferDirectOk = 0x2E, "prefer_direct_ok", FromDaemon, CurrentOnly;
    /// Submit a badge: JSON.
    SubmitBadge = 0x2F, "submit_badge", ToDaemon, CurrentOnly;
    /// Reply JSON.
    SubmitBadgeOk = 0x30, "submit_badge_ok", FromDaemon, CurrentOnly;
    /// Enroll for key recovery: JSON.
    EnrollRecovery = 0x31, "enroll_recovery", ToDaemon, CurrentOnly;
    /// Reply JSON.
    EnrollRecoveryOk = 0x32, "enroll_recovery_ok", FromDaemon, CurrentOnly;
    /// Sign an envelope: JSON.
    SignEnvelope = 0x33, "sign_envelope", ToDaemon, CurrentOnly;
    /// Reply JSON.
    SignEnvelopeOk = 0x34, "sign_envelope_ok", FromDaemon, CurrentOnly;
    /// Verify an envelope: JSON.
    VerifyEnvelope = 0x35, "verify_envelope", ToDaemon, CurrentOnly;
    /// Reply JSON.
    VerifyEnvelopeOk = 0x36, "verify_envelope_ok", FromDaemon, CurrentOnly;
}

impl Command {
    /// The wire byte.
    pub const fn byte(self) -> u8 {
        self as u8
    }

    /// Whether a daemon speaking `profile` knows this command; one that does
    /// not answers `unknown command: 0xNN` (`spec/ipc.md` §10).
    pub const fn is_available_in(self, profile: WireProfile) -> bool {
        self.availability().includes(profile)
    }

    /// The success reply a client waits for after sending this request, if
    /// any. Requests without a success reply (`Send`, `SendTo`, `Cancel`,
    /// and daemon-to-client commands) give `None`. `Close` gives `CloseOk`,
    /// but see [`Command::is_push`]: our clients do not wait for it.
    pub const fn reply(self) -> Option<Command> {
        use Command::*;
        match self {
            Bind => Some(BindOk),
            Dial => Some(DialOk),
            Close => Some(CloseOk),
            Info => Some(InfoOk),
            Handshake => Some(HandshakeOk),
            ResolveHostname => Some(ResolveHostnameOk),
            SetHostname => Some(SetHostnameOk),
            SetVisibility => Some(SetVisibilityOk),
            Deregister => Some(DeregisterOk),
            SetTags => Some(SetTagsOk),
            SetWebhook => Some(SetWebhookOk),
            SetTaskExec => Some(SetTaskExecOk),
            Network => Some(NetworkOk),
            Health => Some(HealthOk),
            Managed => Some(ManagedOk),
            RotateKey => Some(RotateKeyOk),
            Broadcast => Some(BroadcastOk),
            PreferDirect => Some(PreferDirectOk),
            SubmitBadge => Some(SubmitBadgeOk),
            EnrollRecovery => Some(EnrollRecoveryOk),
            SignEnvelope => Some(SignEnvelopeOk),
            VerifyEnvelope => Some(VerifyEnvelopeOk),
            _ => None,
        }
    }

    /// Whether a frame with this command completes a pending `request`:
    /// it is the request's success reply or an `Error` (`spec/ipc.md` §2.3).
    /// Always false for requests without a reply.
    pub const fn completes(self, request: Command) -> bool {
        match request.reply() {
            Some(reply) => self as u8 == reply as u8 || matches!(self, Command::Error),
            None => false,
        }
    }

    /// Whether a client must route frames with this command as unsolicited
    /// pushes rather than as replies (`spec/ipc.md` §2.3). `CloseOk` is
    /// always a push for our clients, even though a v1.8 daemon also uses it
    /// as the reply to `Close`.
    pub const fn is_push(self) -> bool {
        matches!(
            self,
            Command::Accept | Command::Recv | Command::CloseOk | Command::RecvFrom
        )
    }
}

/// Declares a sub-command enum from one table of
/// `Variant = byte, "op name";` rows: the `#[repr(u8)]` enum, its
/// `ALL` list, `from_byte` and `op` all come from the same rows, so the
/// byte and the variant cannot disagree.
macro_rules! sub_commands {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$doc:meta])* $variant:ident = $byte:literal, $op:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$doc])* $variant = $byte, )+
        }

        impl $name {
            /// Every sub-command, in byte order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The sub-command for a byte, if assigned.
            pub const fn from_byte(b: u8) -> Option<Self> {
                match b {
                    $( $byte => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// Operation name used in error texts (`handshake request`, …).
            pub const fn op(self) -> &'static str {
                match self {
                    $( Self::$variant => $op, )+
                }
            }
        }
    };
}

sub_commands! {
    /// Sub-command bytes of `Handshake` (`spec/ipc.md` §5).
    HandshakeSub {
        /// Send a trust request.
        Request = 0x01, "handshake request";
        /// Approve a pending request.
        Approve = 0x02, "handshake approve";
        /// Reject a pending request.
        Reject = 0x03, "handshake reject";
        /// List pending requests.
        ListPending = 0x04, "handshake pending";
        /// List trusted peers.
        ListTrusted = 0x05, "handshake trusted";
        /// Revoke trust.
        Revoke = 0x06, "handshake revoke";
        /// Wait until a peer is trusted (current profile only).
        WaitForTrust = 0x07, "handshake wait";
    }
}

impl HandshakeSub {
    /// Which wire profiles define this sub-command.
    pub const fn availability(self) -> Availability {
        match self {
            Self::WaitForTrust => Availability::CurrentOnly,
            _ => Availability::Both,
        }
    }
}

sub_commands! {
    /// Sub-command bytes of `Network` (`spec/ipc.md` §7).
    NetworkSub {
        /// List networks.
        List = 0x01, "network list";
        /// Join a network.
        Join = 0x02, "network join";
        /// Leave a network.
        Leave = 0x03, "network leave";
        /// List a network's members.
        Members = 0x04, "network members";
        /// Invite a node.
        Invite = 0x05, "network invite";
        /// Poll pending invitations.
        PollInvites = 0x06, "network poll-invites";
        /// Accept or decline an invitation.
        RespondInvite = 0x07, "network respond-invite";
        /// Ours: create a network.
        Create = 0x08, "network create";
        /// Ours: delete a network (owner).
        Delete = 0x09, "network delete";
        /// Ours: rename a network (owner).
        Rename = 0x0A, "network rename";
        /// Ours: remove a member (owner, admin).
        Kick = 0x0B, "network kick";
        /// Ours: make a member an admin (owner).
        Promote = 0x0C, "network promote";
        /// Ours: make an admin a plain member (owner).
        Demote = 0x0D, "network demote";
        /// Ours: hand ownership to a member (owner).
        Transfer = 0x0E, "network transfer";
        /// Ours: a member's role.
        Role = 0x0F, "network role";
    }
}

sub_commands! {
    /// Sub-command bytes of `Managed` (`spec/ipc.md` §7).
    ManagedSub {
        /// Status of one or all managed networks.
        Status = 0x02, "managed status";
        /// Force a reconciliation cycle.
        ForceCycle = 0x04, "managed cycle";
        /// Get or set a network policy.
        Policy = 0x05, "managed policy";
        /// Get or set a member's tags.
        MemberTags = 0x06, "managed member-tags";
        /// Reconcile one network.
        Reconcile = 0x07, "managed reconcile";
    }
}

/// Action byte of the managed `Policy` and `MemberTags` sub-commands.
const ACTION_GET: u8 = 0;
/// Action byte of the managed `Policy` and `MemberTags` sub-commands.
const ACTION_SET: u8 = 1;

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// A one-byte switch where 1 means "yes" and every other value "no".
///
/// The raw byte is kept so that re-encoding gives back the received bytes.
#[derive(arbitrary::Arbitrary, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flag(pub u8);

impl Flag {
    /// The canonical "yes".
    pub const YES: Flag = Flag(1);
    /// The canonical "no".
    pub const NO: Flag = Flag(0);

    /// Whether the switch is on (the byte is exactly 1).
    pub const fn is_set(self) -> bool {
        self.0 == 1
    }

    /// The canonical encoding of a boolean.
    pub const fn from_bool(b: bool) -> Self {
        if b { Flag::YES } else { Flag::NO }
    }
}

/// A `Handshake` request (`spec/ipc.md` §5).
#[derive(arbitrary::Arbitrary, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeRequest<'a> {
    /// `0x01`: ask `node_id` to trust us.
    Request {
        /// Peer node id.
        node_id: u32,
        /// Free text shown to the peer (may be empty).
        justification: &'a str,
    },
    /// `0x02`: approve a pending request.
    Approve {
        /// Peer node id.
        node_id: u32,
    },
    /// `0x03`: reject a pending request.
    Reject {
        /// Peer node id.
        node_id: u32,
        /// Free text reason (may be empty).
        reason: &'a str,
    },
    /// `0x04`: list pending requests.
    ListPending,
    /// `0x05`: list trusted peers.
    ListTrusted,
    /// `0x06`: revoke trust.
    Revoke {
        /// Peer node id.
        node_id: u32,
    },
    /// `0x07`: wait until `node_id` is trusted or the timeout passes.
    WaitForTrust {
        /// Peer node id.
        node_id: u32,
        /// Requested wait in milliseconds, as sent; the daemon caps it at
        /// [`HANDSHAKE_WAIT_MAX_MS`] (see [`HandshakeRequest::effective_wait_ms`]).
        timeout_ms: u32,
    },
}

impl HandshakeRequest<'_> {
    /// The sub-command byte.
    pub const fn sub(&self) -> HandshakeSub {
        match self {
            Self::Request { .. } => HandshakeSub::Request,
            Self::Approve { .. } => HandshakeSub::Approve,
            Self::Reject { .. } => HandshakeSub::Reject,
            Self::ListPending => HandshakeSub::ListPending,
            Self::ListTrusted => HandshakeSub::ListTrusted,
            Self::Revoke { .. } => HandshakeSub::Revoke,
            Self::WaitForTrust { .. } => HandshakeSub::WaitForTrust,
        }
    }

    /// For `WaitForTrust`, the wait the daemon actually applies
    /// (capped at [`HANDSHAKE_WAIT_MAX_MS`]); `None` for other operations.
    pub const fn effective_wait_ms(&self) -> Option<u32> {
        match self {
            Self::WaitForTrust { timeout_ms, .. } => {
                if *timeout_ms > HANDSHAKE_WAIT_MAX_MS {
                    Some(HANDSHAKE_WAIT_MAX_MS)
                } else {
                    Some(*timeout_ms)
                }
            }
            _ => None,
        }
    }
}

/// A `Network` request (`spec/ipc.md` §7).
#[derive(arbitrary::Arbitrary, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetworkRequest<'a> {
    /// `0x01`: list networks.
    List,
    /// `0x02`: join a network.
    Join {
        /// Network id.
        network: u16,
        /// Join token (may be empty).
        token: &'a str,
    },
    /// `0x03`: leave a network.
    Leave {
        /// Network id.
        network: u16,
    },
    /// `0x04`: list members.
    Members {
        /// Network id.
        network: u16,
    },
    /// `0x05`: invite a node.
    Invite {
        /// Network id.
        network: u16,
        /// Invited node id.
        target: u32,
    },
    /// `0x06`: poll pending invitations.
    PollInvites,
    /// `0x07`: answer an invitation.
    RespondInvite {
        /// Network id.
        network: u16,
        /// 1 = accept.
        accept: Flag,
    },
    /// `0x08` (ours): create a network:
    /// `[u8 rule: 0 open, 1 token, 2 invite][u16 name_len][name][token…]`.
    Create {
        /// Join-rule byte (other values are refused by the daemon).
        rule: u8,
        /// Network name.
        name: &'a str,
        /// Join token (token networks).
        token: &'a str,
    },
    /// `0x09` (ours): delete `[u16 net]`.
    Delete {
        /// Network id.
        network: u16,
    },
    /// `0x0A` (ours): rename `[u16 net][name…]`.
    Rename {
        /// Network id.
        network: u16,
        /// New name.
        name: &'a str,
    },
    /// `0x0B`–`0x0F` (ours): `[u16 net][u32 node]` kick, promote, demote,
    /// transfer ownership, role.
    Member {
        /// Which of the five.
        sub: MemberSub,
        /// Network id.
        network: u16,
        /// The member.
        target: u32,
    },
}

/// The member operations of [`NetworkRequest::Member`].
#[derive(arbitrary::Arbitrary, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberSub {
    /// `0x0B` kick.
    Kick,
    /// `0x0C` promote.
    Promote,
    /// `0x0D` demote.
    Demote,
    /// `0x0E` transfer ownership.
    Transfer,
    /// `0x0F` get role.
    Role,
}

impl MemberSub {
    /// The sub-command byte.
    pub const fn sub(self) -> NetworkSub {
        match self {
            MemberSub::Kick => NetworkSub::Kick,
            MemberSub::Promote => NetworkSub::Promote,
            MemberSub::Demote => NetworkSub::Demote,
            MemberSub::Transfer => NetworkSub::Transfer,
            MemberSub::Role => NetworkSub::Role,
        }
    }
}

impl NetworkRequest<'_> {
    /// The sub-command byte.
    pub const fn sub(&self) -> NetworkSub {
        match self {
            Self::List => NetworkSub::List,
            Self::Join { .. } => NetworkSub::Join,
            Self::Leave { .. } => NetworkSub::Leave,
            Self::Members { .. } => NetworkSub::Members,
            Self::Invite { .. } => NetworkSub::Invite,
            Self::PollInvites => NetworkSub::PollInvites,
            Self::RespondInvite { .. } => NetworkSub::RespondInvite,
            Self::Create { .. } => NetworkSub::Create,
            Self::Delete { .. } => NetworkSub::Delete,
            Self::Rename { .. } => NetworkSub::Rename,
            Self::Member { sub, .. } => sub.sub(),
        }
    }
}

/// A `Managed` request (`spec/ipc.md` §7).
#[derive(arbitrary::Arbitrary, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ManagedRequest<'a> {
    /// `0x02`: status, of one network or (None) all.
    Status {
        /// Network id, if given.
        network: Option<u16>,
    },
    /// `0x04`: force a cycle, of one network or (None) all.
    ForceCycle {
        /// Network id, if given.
        network: Option<u16>,
    },
    /// `0x05`: get (`set == None`) or set a network policy (non-empty JSON).
    Policy {
        /// Network id.
        network: u16,
        /// The policy JSON for a set.
        set: Option<&'a str>,
    },
    /// `0x06`: get (`set == None`) or set one member's tags (non-empty JSON).
    MemberTags {
        /// Network id.
        network: u16,
        /// Member node id.
        node_id: u32,
        /// The tags JSON for a set.
        set: Option<&'a str>,
    },
    /// `0x07`: reconcile one network, or (None) the first one.
    Reconcile {
        /// Network id, if given.
        network: Option<u16>,
    },
}

impl ManagedRequest<'_> {
    /// The sub-command byte.
    pub const fn sub(&self) -> ManagedSub {
        match self {
            Self::Status { .. } => ManagedSub::Status,
            Self::ForceCycle { .. } => ManagedSub::ForceCycle,
            Self::Policy { .. } => ManagedSub::Policy,
            Self::MemberTags { .. } => ManagedSub::MemberTags,
            Self::Reconcile { .. } => ManagedSub::Reconcile,
        }
    }
}

/// One decoded IPC frame body: a command and its typed payload
/// (`spec/ipc.md` §4–§7). Variable-length fields borrow from the body.
///
/// Variants holding a single `&str` are JSON documents (checked to be UTF-8,
/// not parsed) unless documented otherwise.
#[derive(arbitrary::Arbitrary, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpcMessage<'a> {
    /// `0x01` bind a port.
    Bind {
        /// Port to bind (0 is bound literally).
        port: u16,
    },
    /// `0x02` port bound.
    BindOk {
        /// Bound port.
        port: u16,
    },
    /// `0x03` open a stream.
    Dial {
        /// Remote address.
        addr: IpcAddr,
        /// Remote port.
        port: u16,
    },
    /// `0x04` stream established.
    DialOk {
        /// Connection id.
        conn_id: u32,
    },
    /// `0x05` push: a stream was accepted on a port this client bound.
    Accept {
        /// The bound local port the stream arrived on.
        local_port: u16,
        /// Connection id.
        conn_id: u32,
        /// Remote address.
        remote: IpcAddr,
        /// Remote port.
        remote_port: u16,
    },
    /// `0x06` stream data to send.
    Send {
        /// Connection id.
        conn_id: u32,
        /// Data (may be empty).
        data: &'a [u8],
    },
    /// `0x07` push: stream data received.
    Recv {
        /// Connection id.
        conn_id: u32,
        /// Data (may be empty).
        data: &'a [u8],
    },
    /// `0x08` close a stream.
    Close {
        /// Connection id.
        conn_id: u32,
    },
    /// `0x09` stream closed (reply to `Close` or end-of-stream push).
    CloseOk {
        /// Connection id.
        conn_id: u32,
    },
    /// `0x0A` error reply.
    Error {
        /// Error code ([`ERROR_CODE_GENERIC`] in practice).
        code: u16,
        /// Human-readable reason (UTF-8 text, not JSON).
        message: &'a str,
    },
    /// `0x0B` datagram to send.
    SendTo {
        /// Destination address.
        dst: IpcAddr,
        /// Destination port.
        dst_port: u16,
        /// Data (may be empty).
        data: &'a [u8],
    },
    /// `0x0C` push: datagram received.
    RecvFrom {
        /// Source address.
        src: IpcAddr,
        /// Source port.
        src_port: u16,
        /// Destination port (clients filter on it).
        dst_port: u16,
        /// Data (may be empty).
        data: &'a [u8],
    },
    /// `0x0D` status request.
    Info,
    /// `0x0E` status JSON.
    InfoOk(&'a str),
    /// `0x0F` trust handshake operation.
    Handshake(HandshakeRequest<'a>),
    /// `0x10` handshake result JSON.
    HandshakeOk(&'a str),
    /// `0x11` resolve a hostname (non-empty UTF-8 text).
    ResolveHostname(&'a str),
    /// `0x12` resolution JSON.
    ResolveHostnameOk(&'a str),
    /// `0x13` set the hostname (UTF-8 text; empty clears it).
    SetHostname(&'a str),
    /// `0x14` registry reply JSON.
    SetHostnameOk(&'a str),
    /// `0x15` set visibility (1 = public).
    SetVisibility(Flag),
    /// `0x16` registry reply JSON.
    SetVisibilityOk(&'a str),
    /// `0x17` deregister.
    Deregister,
    /// `0x18` registry reply JSON.
    DeregisterOk(&'a str),
    /// `0x19` set tags (JSON array of strings).
    SetTags(&'a str),
    /// `0x1A` registry reply JSON.
    SetTagsOk(&'a str),
    /// `0x1B` set the webhook URL (UTF-8 text; empty disables).
    SetWebhook(&'a str),
    /// `0x1C` reply JSON.
    SetWebhookOk(&'a str),
    /// `0x1D` enable (1) or disable task execution. Legacy only.
    SetTaskExec(Flag),
    /// `0x1E` registry reply JSON. Legacy only.
    SetTaskExecOk(&'a str),
    /// `0x1F` network operation.
    Network(NetworkRequest<'a>),
    /// `0x20` network reply JSON.
    NetworkOk(&'a str),
    /// `0x21` health probe.
    Health,
    /// `0x22` health JSON.
    HealthOk(&'a str),
    /// `0x23` managed-network operation.
    Managed(ManagedRequest<'a>),
    /// `0x24` managed reply JSON.
    ManagedOk(&'a str),
    /// `0x25` rotate the identity key.
    RotateKey,
    /// `0x26` registry reply JSON.
    RotateKeyOk(&'a str),
    /// `0x29` broadcast a datagram to a network.
    Broadcast {
        /// Network id.
        network: u16,
        /// Destination port.
        port: u16,
        /// Admin token (UTF-8, at most `u16::MAX` bytes).
        token: &'a str,
        /// Data (may be empty).
        data: &'a [u8],
    },
    /// `0x2A` broadcast sent (empty payload).
    BroadcastOk,
    /// `0x2B` legacy cancel; payload kept opaque, never answered.
    Cancel(&'a [u8]),
    /// `0x2D` drop cached paths to a peer and re-resolve it.
    PreferDirect {
        /// Peer node id.
        node_id: u32,
    },
    /// `0x2E` reply (UTF-8, normally JSON, may be empty).
    PreferDirectOk(&'a str),
    /// `0x2F` submit a badge (JSON).
    SubmitBadge(&'a str),
    /// `0x30` reply JSON.
    SubmitBadgeOk(&'a str),
    /// `0x31` enroll for recovery (JSON).
    EnrollRecovery(&'a str),
    /// `0x32` reply JSON.
    EnrollRecoveryOk(&'a str),
    /// `0x33` sign an envelope (JSON).
    SignEnvelope(&'a str),
    /// `0x34` reply JSON.
    SignEnvelopeOk(&'a str),
    /// `0x35` verify an envelope (JSON).
    VerifyEnvelope(&'a str),
    /// `0x36` reply JSON.
    VerifyEnvelopeOk(&'a str),
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a frame or a body could not be decoded.
///
/// The `Display` text of every variant except [`IpcError::TooLarge`] and
/// [`IpcError::EmptyBody`] is the message our daemon puts in the `Error`
/// reply (see [`encode_error_frame`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum IpcError {
    /// The length prefix exceeds [`MAX_BODY_LEN`]; the connection must be
    /// closed (there is no way to resynchronise).
    #[error("frame too large: {len} bytes (max {MAX_BODY_LEN})")]
    TooLarge {
        /// The announced body length.
        len: u32,
    },
    /// A zero-length body. Not an error on the wire: readers skip it.
    #[error("empty frame")]
    EmptyBody,
    /// The command byte is not assigned.
    #[error("unknown command: 0x{0:02X}")]
    UnknownCommand(u8),
    /// The sub-command byte of `Handshake`, `Network` or `Managed` is not
    /// assigned.
    #[error("{}: unknown sub-command 0x{sub:02X}", command.name())]
    UnknownSubCommand {
        /// The command carrying the sub-command.
        command: Command,
        /// The offending byte.
        sub: u8,
    },
    /// The payload ended before `field`.
    #[error("{op}: missing {field}")]
    MissingField {
        /// Operation (`bind`, `handshake request`, …).
        op: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A fixed-size payload was followed by extra bytes.
    #[error("{op}: {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Operation.
        op: &'static str,
        /// Number of extra bytes.
        extra: usize,
    },
    /// A text or JSON field is not UTF-8.
    #[error("{op}: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Operation.
        op: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A one-byte field holds a value with no meaning.
    #[error("{op}: unknown {field} 0x{value:02X}")]
    InvalidValue {
        /// Operation.
        op: &'static str,
        /// Field name.
        field: &'static str,
        /// The offending byte.
        value: u8,
    },
}

impl IpcError {
    /// Whether the connection must be closed (the stream cannot be
    /// resynchronised). Only [`IpcError::TooLarge`] is fatal; for the others
    /// the frame has been consumed and the reader continues.
    pub const fn is_fatal(&self) -> bool {
        matches!(self, IpcError::TooLarge { .. })
    }

    /// Whether the daemon answers this decode error with an `Error` frame.
    /// Fatal errors close the connection and empty bodies are skipped
    /// silently; everything else is answered.
    pub const fn needs_reply(&self) -> bool {
        !matches!(self, IpcError::TooLarge { .. } | IpcError::EmptyBody)
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum EncodeError {
    /// The output buffer is smaller than the frame.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The body would exceed [`MAX_BODY_LEN`].
    #[error("frame body of {len} bytes exceeds the {MAX_BODY_LEN}-byte limit")]
    TooLarge {
        /// The body length the message needs.
        len: usize,
    },
    /// A field that must not be empty is empty (the decoder would refuse it).
    #[error("{field} must not be empty")]
    EmptyField {
        /// Field name.
        field: &'static str,
    },
    /// A length-prefixed field is longer than its prefix can express.
    #[error("{field} is {len} bytes, longer than its u16 length prefix allows")]
    FieldTooLong {
        /// Field name.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

// ---------------------------------------------------------------------------
// Frame layer
// ---------------------------------------------------------------------------

/// Extracts the first complete frame from `buf`.
///
/// * `Ok(None)`: more bytes are needed (fewer than 4 prefix bytes, or the
///   body is incomplete).
/// * `Ok(Some((body, consumed)))`: `body` is the frame body (command byte and
///   payload) and `consumed` the number of bytes of `buf` the frame used
///   (prefix included); drop them before the next call. **A zero-length body
///   is reported as an empty `body`**: callers skip it (the protocol says it
///   is ignored); [`IpcMessage::decode`] on it returns
///   [`IpcError::EmptyBody`].
/// * `Err(IpcError::TooLarge)`: the prefix announces more than
///   [`MAX_BODY_LEN`] bytes. This is reported as soon as the 4 prefix bytes
///   are present, before any body byte; the caller must close the
///   connection.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, IpcError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    if len as usize > MAX_BODY_LEN {
        return Err(IpcError::TooLarge { len });
    }
    let len = len as usize;
    match rest.get(..len) {
        Some(body) => Ok(Some((body, LENGTH_PREFIX_LEN + len))),
        None => Ok(None),
    }
}

/// Encodes `msg` as a complete frame (prefix included) into `out` and
/// returns the number of bytes written ([`IpcMessage::encoded_len`]).
pub fn encode_frame(msg: &IpcMessage<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    let body_len = msg.body_len();
    if body_len > MAX_BODY_LEN {
        return Err(EncodeError::TooLarge { len: body_len });
    }
    let needed = LENGTH_PREFIX_LEN + body_len;
    let available = out.len();
    let Some((prefix, body)) = out
        .get_mut(..needed)
        .and_then(|o| o.split_first_chunk_mut::<LENGTH_PREFIX_LEN>())
    else {
        return Err(EncodeError::BufferTooSmall { needed, available });
    };
    // body_len <= MAX_BODY_LEN < u32::MAX.
    *prefix = (body_len as u32).to_be_bytes();
    let mut w = SliceWriter { buf: body, pos: 0 };
    msg.write_body(&mut w)?;
    Ok(needed)
}

/// Encodes an `Error` frame with code [`ERROR_CODE_GENERIC`] whose message is
/// the `Display` text of `reason` (typically an [`IpcError`]), without
/// allocating. Returns the number of bytes written.
pub fn encode_error_frame(reason: &dyn fmt::Display, out: &mut [u8]) -> Result<usize, EncodeError> {
    use fmt::Write as _;
    let mut counter = FmtCounter(0);
    // Writing into a counter cannot fail unless `reason` itself fails.
    let _ = write!(counter, "{reason}");
    let body_len = 1 + 2 + counter.0;
    if body_len > MAX_BODY_LEN {
        return Err(EncodeError::TooLarge { len: body_len });
    }
    let needed = LENGTH_PREFIX_LEN + body_len;
    let available = out.len();
    let Some(frame) = out.get_mut(..needed) else {
        return Err(EncodeError::BufferTooSmall { needed, available });
    };
    let mut w = SliceWriter { buf: frame, pos: 0 };
    w.put(&(body_len as u32).to_be_bytes())?;
    w.put(&[Command::Error.byte()])?;
    w.put(&ERROR_CODE_GENERIC.to_be_bytes())?;
    let mut fw = FmtSlice {
        w: &mut w,
        failed: false,
    };
    if write!(fw, "{reason}").is_err() || fw.failed || w.pos != needed {
        // `reason` produced different text on the second pass.
        return Err(EncodeError::BufferTooSmall { needed, available });
    }
    Ok(needed)
}

struct FmtCounter(usize);

impl fmt::Write for FmtCounter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 = self.0.saturating_add(s.len());
        Ok(())
    }
}

struct FmtSlice<'w, 'b> {
    w: &'w mut SliceWriter<'b>,
    failed: bool,
}

impl fmt::Write for FmtSlice<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.w.put(s.as_bytes()).map_err(|_| {
            self.failed = true;
            fmt::Error
        })
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Destination of body bytes: a length counter or a slice writer, so that
/// length and encoding share one description of the layout.
trait Sink {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError>;
}

struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0 = self.0.saturating_add(bytes.len());
        Ok(())
    }
}

struct SliceWriter<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Sink for SliceWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos.saturating_add(bytes.len());
        let available = self.buf.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall {
                needed: end,
                available,
            })?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
}

fn put_u8<S: Sink>(s: &mut S, v: u8) -> Result<(), EncodeError> {
    s.put(&[v])
}

fn put_u16<S: Sink>(s: &mut S, v: u16) -> Result<(), EncodeError> {
    s.put(&v.to_be_bytes())
}

fn put_u32<S: Sink>(s: &mut S, v: u32) -> Result<(), EncodeError> {
    s.put(&v.to_be_bytes())
}

/// The JSON of a managed "set" action; it must not be empty (the decoder
/// refuses an empty one, as the reference daemon does).
fn put_set_json<S: Sink>(
    s: &mut S,
    set: Option<&str>,
    field: &'static str,
) -> Result<(), EncodeError> {
    match set {
        None => Ok(()),
        Some("") => Err(EncodeError::EmptyField { field }),
        Some(json) => s.put(json.as_bytes()),
    }
}

fn put_addr<S: Sink>(s: &mut S, a: IpcAddr) -> Result<(), EncodeError> {
    s.put(&a.to_bytes())
}

impl<'a> IpcMessage<'a> {
    /// Whether a daemon or client speaking `profile` knows this message:
    /// its command, and for `Handshake` its sub-command, exist in that
    /// profile (`spec/ipc.md` §10).
    pub const fn is_available_in(&self, profile: WireProfile) -> bool {
        let sub_ok = match self {
            IpcMessage::Handshake(h) => h.sub().availability().includes(profile),
            _ => true,
        };
        sub_ok && self.command().is_available_in(profile)
    }

    /// The command byte of this message.
    pub const fn command(&self) -> Command {
        use IpcMessage as M;
        match self {
            M::Bind { .. } => Command::Bind,
            M::BindOk { .. } => Command::BindOk,
            M::Dial { .. } => Command::Dial,
            M::DialOk { .. } => Command::DialOk,
            M::Accept { .. } => Command::Accept,
            M::Send { .. } => Command::Send,
            M::Recv { .. } => Command::Recv,
            M::Close { .. } => Command::Close,
            M::CloseOk { .. } => Command::CloseOk,
            M::Error { .. } => Command::Error,
            M::SendTo { .. } => Command::SendTo,
            M::RecvFrom { .. } => Command::RecvFrom,
            M::Info => Command::Info,
            M::InfoOk(_) => Command::InfoOk,
            M::Handshake(_) => Command::Handshake,
            M::HandshakeOk(_) => Command::HandshakeOk,
            M::ResolveHostname(_) => Command::ResolveHostname,
            M::ResolveHostnameOk(_) => Command::ResolveHostnameOk,
            M::SetHostname(_) => Command::SetHostname,
            M::SetHostnameOk(_) => Command::SetHostnameOk,
            M::SetVisibility(_) => Command::SetVisibility,
            M::SetVisibilityOk(_) => Command::SetVisibilityOk,
            M::Deregister => Command::Deregister,
            M::DeregisterOk(_) => Command::DeregisterOk,
            M::SetTags(_) => Command::SetTags,
            M::SetTagsOk(_) => Command::SetTagsOk,
            M::SetWebhook(_) => Command::SetWebhook,
            M::SetWebhookOk(_) => Command::SetWebhookOk,
            M::SetTaskExec(_) => Command::SetTaskExec,
            M::SetTaskExecOk(_) => Command::SetTaskExecOk,
            M::Network(_) => Command::Network,
            M::NetworkOk(_) => Command::NetworkOk,
            M::Health => Command::Health,
            M::HealthOk(_) => Command::HealthOk,
            M::Managed(_) => Command::Managed,
            M::ManagedOk(_) => Command::ManagedOk,
            M::RotateKey => Command::RotateKey,
            M::RotateKeyOk(_) => Command::RotateKeyOk,
            M::Broadcast { .. } => Command::Broadcast,
            M::BroadcastOk => Command::BroadcastOk,
            M::Cancel(_) => Command::Cancel,
            M::PreferDirect { .. } => Command::PreferDirect,
            M::PreferDirectOk(_) => Command::PreferDirectOk,
            M::SubmitBadge(_) => Command::SubmitBadge,
            M::SubmitBadgeOk(_) => Command::SubmitBadgeOk,
            M::EnrollRecovery(_) => Command::EnrollRecovery,
            M::EnrollRecoveryOk(_) => Command::EnrollRecoveryOk,
            M::SignEnvelope(_) => Command::SignEnvelope,
            M::SignEnvelopeOk(_) => Command::SignEnvelopeOk,
            M::VerifyEnvelope(_) => Command::VerifyEnvelope,
            M::VerifyEnvelopeOk(_) => Command::VerifyEnvelopeOk,
        }
    }

    /// Length of the body (command byte + payload) this message encodes to.
    ///
    /// Meaningful only for messages that encode (see [`encode_frame`]).
    pub fn body_len(&self) -> usize {
        let mut c = Counter(0);
        // The counter never fails; an unencodable message (token too long)
        // is reported by `encode_frame`.
        let _ = self.write_body(&mut c);
        c.0
    }

    /// Length of the complete frame (prefix + body).
    pub fn encoded_len(&self) -> usize {
        LENGTH_PREFIX_LEN + self.body_len()
    }

    /// Encodes only the body (command byte + payload) into `out` and returns
    /// its length. Unlike [`encode_frame`] this does not check the 1 MiB
    /// limit.
    pub fn encode_body(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let needed = self.body_len();
        let available = out.len();
        let Some(buf) = out.get_mut(..needed) else {
            return Err(EncodeError::BufferTooSmall { needed, available });
        };
        let mut w = SliceWriter { buf, pos: 0 };
        self.write_body(&mut w)?;
        Ok(needed)
    }

    fn write_body<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        use IpcMessage as M;
        put_u8(s, self.command().byte())?;
        match *self {
            M::Bind { port } | M::BindOk { port } => put_u16(s, port),
            M::Dial { addr, port } => {
                put_addr(s, addr)?;
                put_u16(s, port)
            }
            M::DialOk { conn_id } | M::Close { conn_id } | M::CloseOk { conn_id } => {
                put_u32(s, conn_id)
            }
            M::Accept {
                local_port,
                conn_id,
                remote,
                remote_port,
            } => {
                put_u16(s, local_port)?;
                put_u32(s, conn_id)?;
                put_addr(s, remote)?;
                put_u16(s, remote_port)
            }
            M::Send { conn_id, data } | M::Recv { conn_id, data } => {
                put_u32(s, conn_id)?;
                s.put(data)
            }
            M::Error { code, message } => {
                put_u16(s, code)?;
                s.put(message.as_bytes())
            }
            M::SendTo {
                dst,
                dst_port,
                data,
            } => {
                put_addr(s, dst)?;
                put_u16(s, dst_port)?;
                s.put(data)
            }
            M::RecvFrom {
                src,
                src_port,
                dst_port,
                data,
            } => {
                put_addr(s, src)?;
                put_u16(s, src_port)?;
                put_u16(s, dst_port)?;
                s.put(data)
            }
            M::Info | M::Deregister | M::Health | M::RotateKey | M::BroadcastOk => Ok(()),
            M::InfoOk(t)
            | M::HandshakeOk(t)
            | M::ResolveHostnameOk(t)
            | M::SetHostname(t)
            | M::SetHostnameOk(t)
            | M::SetVisibilityOk(t)
            | M::DeregisterOk(t)
            | M::SetTags(t)
            | M::SetTagsOk(t)
            | M::SetWebhook(t)
            | M::SetWebhookOk(t)
            | M::SetTaskExecOk(t)
            | M::NetworkOk(t)
            | M::HealthOk(t)
            | M::ManagedOk(t)
            | M::RotateKeyOk(t)
            | M::PreferDirectOk(t)
            | M::SubmitBadge(t)
            | M::SubmitBadgeOk(t)
            | M::EnrollRecovery(t)
            | M::EnrollRecoveryOk(t)
            | M::SignEnvelope(t)
            | M::SignEnvelopeOk(t)
            | M::VerifyEnvelope(t)
            | M::VerifyEnvelopeOk(t) => s.put(t.as_bytes()),
            M::ResolveHostname(t) => {
                if t.is_empty() {
                    return Err(EncodeError::EmptyField { field: "hostname" });
                }
                s.put(t.as_bytes())
            }
            M::SetVisibility(f) | M::SetTaskExec(f) => put_u8(s, f.0),
            M::Cancel(b) => s.put(b),
            M::PreferDirect { node_id } => put_u32(s, node_id),
            M::Broadcast {
                network,
                port,
                token,
                data,
            } => {
                let len = u16::try_from(token.len()).map_err(|_| EncodeError::FieldTooLong {
                    field: "token",
                    len: token.len(),
                })?;
                put_u16(s, network)?;
                put_u16(s, port)?;
                put_u16(s, len)?;
                s.put(token.as_bytes())?;
                s.put(data)
            }
            M::Handshake(h) => {
                put_u8(s, h.sub() as u8)?;
                match h {
                    HandshakeRequest::Request {
                        node_id,
                        justification: text,
                    }
                    | HandshakeRequest::Reject {
                        node_id,
                        reason: text,
                    } => {
                        put_u32(s, node_id)?;
                        s.put(text.as_bytes())
                    }
                    HandshakeRequest::Approve { node_id }
                    | HandshakeRequest::Revoke { node_id } => put_u32(s, node_id),
                    HandshakeRequest::ListPending | HandshakeRequest::ListTrusted => Ok(()),
                    HandshakeRequest::WaitForTrust {
                        node_id,
                        timeout_ms,
                    } => {
                        put_u32(s, node_id)?;
                        put_u32(s, timeout_ms)
                    }
                }
            }
            M::Network(n) => {
                put_u8(s, n.sub() as u8)?;
                match n {
                    NetworkRequest::List | NetworkRequest::PollInvites => Ok(()),
                    NetworkRequest::Join { network, token } => {
                        put_u16(s, network)?;
                        s.put(token.as_bytes())
                    }
                    NetworkRequest::Leave { network } | NetworkRequest::Members { network } => {
                        put_u16(s, network)
                    }
                    NetworkRequest::Invite { network, target } => {
                        put_u16(s, network)?;
                        put_u32(s, target)
                    }
                    NetworkRequest::RespondInvite { network, accept } => {
                        put_u16(s, network)?;
                        put_u8(s, accept.0)
                    }
                    NetworkRequest::Create { rule, name, token } => {
                        put_u8(s, rule)?;
                        let len =
                            u16::try_from(name.len()).map_err(|_| EncodeError::FieldTooLong {
                                field: "network name",
                                len: name.len(),
                            })?;
                        put_u16(s, len)?;
                        s.put(name.as_bytes())?;
                        s.put(token.as_bytes())
                    }
                    NetworkRequest::Delete { network } => put_u16(s, network),
                    NetworkRequest::Rename { network, name } => {
                        put_u16(s, network)?;
                        s.put(name.as_bytes())
                    }
                    NetworkRequest::Member {
                        network, target, ..
                    } => {
                        put_u16(s, network)?;
                        put_u32(s, target)
                    }
                }
            }
            M::Managed(m) => {
                put_u8(s, m.sub() as u8)?;
                match m {
                    ManagedRequest::Status { network }
                    | ManagedRequest::ForceCycle { network }
                    | ManagedRequest::Reconcile { network } => match network {
                        Some(n) => put_u16(s, n),
                        None => Ok(()),
                    },
                    ManagedRequest::Policy { network, set } => {
                        put_u8(
                            s,
                            if set.is_some() {
                                ACTION_SET
                            } else {
                                ACTION_GET
                            },
                        )?;
                        put_u16(s, network)?;
                        put_set_json(s, set, "policy JSON")
                    }
                    ManagedRequest::MemberTags {
                        network,
                        node_id,
                        set,
                    } => {
                        put_u8(
                            s,
                            if set.is_some() {
                                ACTION_SET
                            } else {
                                ACTION_GET
                            },
                        )?;
                        put_u16(s, network)?;
                        put_u32(s, node_id)?;
                        put_set_json(s, set, "tags JSON")
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Cursor over a payload that names the operation in its errors.
struct Reader<'a> {
    op: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], IpcError> {
        let Some((head, tail)) = self.rest.split_first_chunk::<N>() else {
            return Err(IpcError::MissingField { op: self.op, field });
        };
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, IpcError> {
        self.take::<1>(field).map(|[b]| b)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, IpcError> {
        self.take(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, IpcError> {
        self.take(field).map(u32::from_be_bytes)
    }

    fn addr(&mut self, field: &'static str) -> Result<IpcAddr, IpcError> {
        let op = self.op;
        let bytes = self.take::<ADDR_LEN>(field)?;
        Addr::from_bytes(&bytes).map_err(|_| IpcError::MissingField { op, field })
    }

    /// All remaining bytes.
    fn bytes_rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }

    /// All remaining bytes as UTF-8 text.
    fn str_rest(&mut self, field: &'static str) -> Result<&'a str, IpcError> {
        let op = self.op;
        core::str::from_utf8(self.bytes_rest()).map_err(|_| IpcError::InvalidUtf8 { op, field })
    }

    /// The next `len` bytes as UTF-8 text.
    fn str_len(&mut self, len: usize, field: &'static str) -> Result<&'a str, IpcError> {
        let Some((head, tail)) = self.rest.split_at_checked(len) else {
            return Err(IpcError::MissingField { op: self.op, field });
        };
        self.rest = tail;
        core::str::from_utf8(head).map_err(|_| IpcError::InvalidUtf8 { op: self.op, field })
    }

    /// An optional trailing `u16`: absent, or exactly two bytes.
    fn opt_u16(&mut self, field: &'static str) -> Result<Option<u16>, IpcError> {
        if self.rest.is_empty() {
            Ok(None)
        } else {
            self.u16(field).map(Some)
        }
    }

    /// Fails if bytes remain.
    fn finish(&self) -> Result<(), IpcError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(IpcError::TrailingBytes {
                op: self.op,
                extra: self.rest.len(),
            })
        }
    }
}

impl<'a> IpcMessage<'a> {
    /// Decodes a frame body (command byte + payload), as returned by
    /// [`parse_frame`].
    ///
    /// Errors name the operation and the field that is missing or wrong;
    /// their `Display` text is the daemon's error reply.
    pub fn decode(body: &'a [u8]) -> Result<Self, IpcError> {
        use IpcMessage as M;
        let Some((&byte, payload)) = body.split_first() else {
            return Err(IpcError::EmptyBody);
        };
        let command = Command::from_byte(byte).ok_or(IpcError::UnknownCommand(byte))?;
        let mut r = Reader {
            op: command.name(),
            rest: payload,
        };
        let r = &mut r;
        let msg = match command {
            Command::Bind => M::Bind {
                port: r.u16("port")?,
            },
            Command::BindOk => M::BindOk {
                port: r.u16("port")?,
            },
            Command::Dial => M::Dial {
                addr: r.addr("address/port")?,
                port: r.u16("address/port")?,
            },
            Command::DialOk => M::DialOk {
                conn_id: r.u32("conn_id")?,
            },
            Command::Accept => M::Accept {
                local_port: r.u16("local_port")?,
                conn_id: r.u32("conn_id")?,
                remote: r.addr("remote address")?,
                remote_port: r.u16("remote port")?,
            },
            Command::Send => M::Send {
                conn_id: r.u32("conn_id")?,
                data: r.bytes_rest(),
            },
            Command::Recv => M::Recv {
                conn_id: r.u32("conn_id")?,
                data: r.bytes_rest(),
            },
            Command::Close => M::Close {
                conn_id: r.u32("conn_id")?,
            },
            Command::CloseOk => M::CloseOk {
                conn_id: r.u32("conn_id")?,
            },
            Command::Error => M::Error {
                code: r.u16("code")?,
                message: r.str_rest("message")?,
            },
            Command::SendTo => M::SendTo {
                dst: r.addr("address")?,
                dst_port: r.u16("port")?,
                data: r.bytes_rest(),
            },
            Command::RecvFrom => M::RecvFrom {
                src: r.addr("source address")?,
                src_port: r.u16("source port")?,
                dst_port: r.u16("destination port")?,
                data: r.bytes_rest(),
            },
            Command::Info => M::Info,
            Command::InfoOk => M::InfoOk(r.str_rest("json")?),
            Command::Handshake => M::Handshake(decode_handshake(r)?),
            Command::HandshakeOk => M::HandshakeOk(r.str_rest("json")?),
            Command::ResolveHostname => {
                if r.rest.is_empty() {
                    return Err(IpcError::MissingField {
                        op: r.op,
                        field: "hostname",
                    });
                }
                M::ResolveHostname(r.str_rest("hostname")?)
            }
            Command::ResolveHostnameOk => M::ResolveHostnameOk(r.str_rest("json")?),
            Command::SetHostname => M::SetHostname(r.str_rest("hostname")?),
            Command::SetHostnameOk => M::SetHostnameOk(r.str_rest("json")?),
            Command::SetVisibility => M::SetVisibility(Flag(r.u8("value")?)),
            Command::SetVisibilityOk => M::SetVisibilityOk(r.str_rest("json")?),
            Command::Deregister => M::Deregister,
            Command::DeregisterOk => M::DeregisterOk(r.str_rest("json")?),
            Command::SetTags => M::SetTags(r.str_rest("json")?),
            Command::SetTagsOk => M::SetTagsOk(r.str_rest("json")?),
            Command::SetWebhook => M::SetWebhook(r.str_rest("url")?),
            Command::SetWebhookOk => M::SetWebhookOk(r.str_rest("json")?),
            Command::SetTaskExec => M::SetTaskExec(Flag(r.u8("value")?)),
            Command::SetTaskExecOk => M::SetTaskExecOk(r.str_rest("json")?),
            Command::Network => M::Network(decode_network(r)?),
            Command::NetworkOk => M::NetworkOk(r.str_rest("json")?),
            Command::Health => M::Health,
            Command::HealthOk => M::HealthOk(r.str_rest("json")?),
            Command::Managed => M::Managed(decode_managed(r)?),
            Command::ManagedOk => M::ManagedOk(r.str_rest("json")?),
            Command::RotateKey => M::RotateKey,
            Command::RotateKeyOk => M::RotateKeyOk(r.str_rest("json")?),
            Command::Broadcast => {
                let network = r.u16("header")?;
                let port = r.u16("header")?;
                let token_len = r.u16("header")?;
                let token = r.str_len(usize::from(token_len), "token")?;
                M::Broadcast {
                    network,
                    port,
                    token,
                    data: r.bytes_rest(),
                }
            }
            Command::BroadcastOk => M::BroadcastOk,
            Command::Cancel => M::Cancel(r.bytes_rest()),
            Command::PreferDirect => M::PreferDirect {
                node_id: r.u32("node_id")?,
            },
            Command::PreferDirectOk => M::PreferDirectOk(r.str_rest("json")?),
            Command::SubmitBadge => M::SubmitBadge(r.str_rest("json")?),
            Command::SubmitBadgeOk => M::SubmitBadgeOk(r.str_rest("json")?),
            Command::EnrollRecovery => M::EnrollRecovery(r.str_rest("json")?),
            Command::EnrollRecoveryOk => M::EnrollRecoveryOk(r.str_rest("json")?),
            Command::SignEnvelope => M::SignEnvelope(r.str_rest("json")?),
            Command::SignEnvelopeOk => M::SignEnvelopeOk(r.str_rest("json")?),
            Command::VerifyEnvelope => M::VerifyEnvelope(r.str_rest("json")?),
            Command::VerifyEnvelopeOk => M::VerifyEnvelopeOk(r.str_rest("json")?),
        };
        r.finish()?;
        Ok(msg)
    }
}

fn decode_handshake<'a>(r: &mut Reader<'a>) -> Result<HandshakeRequest<'a>, IpcError> {
    let byte = r.u8("sub-command")?;
    let sub = HandshakeSub::from_byte(byte).ok_or(IpcError::UnknownSubCommand {
        command: Command::Handshake,
        sub: byte,
    })?;
    r.op = sub.op();
    Ok(match sub {
        HandshakeSub::Request => HandshakeRequest::Request {
            node_id: r.u32("node_id")?,
            justification: r.str_rest("justification")?,
        },
        HandshakeSub::Approve => HandshakeRequest::Approve {
            node_id: r.u32("node_id")?,
        },
        HandshakeSub::Reject => HandshakeRequest::Reject {
            node_id: r.u32("node_id")?,
            reason: r.str_rest("reason")?,
        },
        HandshakeSub::ListPending => HandshakeRequest::ListPending,
        HandshakeSub::ListTrusted => HandshakeRequest::ListTrusted,
        HandshakeSub::Revoke => HandshakeRequest::Revoke {
            node_id: r.u32("node_id")?,
        },
        HandshakeSub::WaitForTrust => HandshakeRequest::WaitForTrust {
            node_id: r.u32("node_id")?,
            timeout_ms: r.u32("timeout_ms")?,
        },
    })
}

fn decode_network<'a>(r: &mut Reader<'a>) -> Result<NetworkRequest<'a>, IpcError> {
    let byte = r.u8("sub-command")?;
    let sub = NetworkSub::from_byte(byte).ok_or(IpcError::UnknownSubCommand {
        command: Command::Network,
        sub: byte,
    })?;
    r.op = sub.op();
    Ok(match sub {
        NetworkSub::List => NetworkRequest::List,
        NetworkSub::Join => NetworkRequest::Join {
            network: r.u16("network_id")?,
            token: r.str_rest("token")?,
        },
        NetworkSub::Leave => NetworkRequest::Leave {
            network: r.u16("network_id")?,
        },
        NetworkSub::Members => NetworkRequest::Members {
            network: r.u16("network_id")?,
        },
        NetworkSub::Invite => NetworkRequest::Invite {
            network: r.u16("network_id")?,
            target: r.u32("target_node_id")?,
        },
        NetworkSub::PollInvites => NetworkRequest::PollInvites,
        NetworkSub::RespondInvite => NetworkRequest::RespondInvite {
            network: r.u16("network_id")?,
            accept: Flag(r.u8("accept flag")?),
        },
        NetworkSub::Create => {
            let rule = r.u8("join rule")?;
            let len = r.u16("name length")?;
            NetworkRequest::Create {
                rule,
                name: r.str_len(usize::from(len), "name")?,
                token: r.str_rest("token")?,
            }
        }
        NetworkSub::Delete => NetworkRequest::Delete {
            network: r.u16("network_id")?,
        },
        NetworkSub::Rename => NetworkRequest::Rename {
            network: r.u16("network_id")?,
            name: r.str_rest("name")?,
        },
        NetworkSub::Kick
        | NetworkSub::Promote
        | NetworkSub::Demote
        | NetworkSub::Transfer
        | NetworkSub::Role => NetworkRequest::Member {
            sub: match sub {
                NetworkSub::Kick => MemberSub::Kick,
                NetworkSub::Promote => MemberSub::Promote,
                NetworkSub::Demote => MemberSub::Demote,
                NetworkSub::Transfer => MemberSub::Transfer,
                _ => MemberSub::Role,
            },
            network: r.u16("network_id")?,
            target: r.u32("target_node_id")?,
        },
    })
}

fn decode_managed<'a>(r: &mut Reader<'a>) -> Result<ManagedRequest<'a>, IpcError> {
    let byte = r.u8("sub-command")?;
    let sub = ManagedSub::from_byte(byte).ok_or(IpcError::UnknownSubCommand {
        command: Command::Managed,
        sub: byte,
    })?;
    r.op = sub.op();
    Ok(match sub {
        ManagedSub::Status => ManagedRequest::Status {
            network: r.opt_u16("network_id")?,
        },
        ManagedSub::ForceCycle => ManagedRequest::ForceCycle {
            network: r.opt_u16("network_id")?,
        },
        ManagedSub::Policy => {
            let set = read_action(r)?;
            let network = r.u16("network_id")?;
            let set = if set {
                Some(read_set_json(r, "managed policy set", "policy JSON")?)
            } else {
                None
            };
            ManagedRequest::Policy { network, set }
        }
        ManagedSub::MemberTags => {
            let set = read_action(r)?;
            let network = r.u16("network_id")?;
            let node_id = r.u32("node_id")?;
            let set = if set {
                Some(read_set_json(r, "managed member-tags set", "tags JSON")?)
            } else {
                None
            };
            ManagedRequest::MemberTags {
                network,
                node_id,
                set,
            }
        }
        ManagedSub::Reconcile => ManagedRequest::Reconcile {
            network: r.opt_u16("network_id")?,
        },
    })
}

/// The non-empty JSON of a managed "set" action, to the end of the frame.
fn read_set_json<'a>(
    r: &mut Reader<'a>,
    op: &'static str,
    field: &'static str,
) -> Result<&'a str, IpcError> {
    r.op = op;
    if r.rest.is_empty() {
        return Err(IpcError::MissingField { op, field });
    }
    r.str_rest(field)
}

/// Reads the get/set action byte; `true` means set.
fn read_action(r: &mut Reader<'_>) -> Result<bool, IpcError> {
    match r.u8("action")? {
        ACTION_GET => Ok(false),
        ACTION_SET => Ok(true),
        value => Err(IpcError::InvalidValue {
            op: r.op,
            field: "action",
            value,
        }),
    }
}

pub mod client;

#[cfg(test)]
mod tests;
