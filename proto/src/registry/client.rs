//! The node-side half of the registry protocol (`spec/registry.md` §10), as
//! a sans-IO state machine.
//!
//! Inputs: [`RegistryClient::connected`], [`RegistryClient::disconnected`],
//! [`RegistryClient::handle_response`], [`RegistryClient::handle_timeout`]
//! and the commands [`RegistryClient::call`] and
//! [`RegistryClient::poll_inbox`]. Peer resolution on top of it is
//! [`crate::resolve::Resolver`]. Outputs: [`RegistryClient::poll_transmit`]
//! (the next request to frame and send), [`RegistryClient::poll_event`] and
//! [`RegistryClient::poll_timeout`]. After every input, drain
//! `poll_transmit` and `poll_event` until they return `None`, then arm a
//! timer for `poll_timeout`.
//!
//! One request is in flight at a time (the protocol has no request IDs).
//! A broken connection is re-dialled with exponential back-off and the
//! request that was in flight is sent once more; an error *reply* is final,
//! except for registration, which is retried with the same back-off.

use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use super::auth::{self, Identity};
use super::codec::{self, InboxRequest, InboxResponse, Request};
use super::limits::{
    CLIENT_BACKOFF_MAX, CLIENT_BACKOFF_MIN, CLIENT_DIAL_TIMEOUT, CLIENT_HEARTBEAT,
    CLIENT_HEARTBEAT_FAILURES, CLIENT_MAX_QUEUE, CLIENT_RESPONSE_TIMEOUT,
};
use crate::time::{Instant, UnixTime};

/// Client configuration.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The node's UDP tunnel endpoint, `host:port`.
    pub listen_addr: String,
    /// Owner string (identity reclaim); empty for none.
    pub owner: String,
    /// Hostname to request at registration; empty for none.
    pub hostname: String,
    /// LAN endpoints to advertise.
    pub lan_addrs: Vec<String>,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Period of automatic handshake-inbox polls; `None` = only on demand.
    pub inbox_poll_interval: Option<Duration>,
    /// Ask the registry to push inbox and revocation hints on the
    /// connection (`poll_handshakes` with `push: true`, ours; a reference
    /// registry ignores it and the periodic poll still applies). With it,
    /// the inbox is also polled right after registering and after every
    /// reconnection, which is what binds the connection.
    pub push: bool,
    /// How long to wait for a reply before declaring the connection broken.
    pub response_timeout: Duration,
    /// How long a dial may take before it counts as failed.
    pub dial_timeout: Duration,
    /// First reconnect / re-registration delay.
    pub backoff_min: Duration,
    /// Largest reconnect / re-registration delay.
    pub backoff_max: Duration,
    /// Sign with the strong form (`spec/registry.md` §5.2). Needs
    /// `unix_ms_at_epoch`; use `false` with a reference registry.
    pub strong_signatures: bool,
    /// Unix time in milliseconds at `Instant::ZERO` of the caller's clock.
    pub unix_ms_at_epoch: Option<u64>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            listen_addr: String::new(),
            owner: String::new(),
            hostname: String::new(),
            lan_addrs: Vec::new(),
            heartbeat_interval: CLIENT_HEARTBEAT,
            inbox_poll_interval: None,
            push: false,
            response_timeout: CLIENT_RESPONSE_TIMEOUT,
            dial_timeout: CLIENT_DIAL_TIMEOUT,
            backoff_min: CLIENT_BACKOFF_MIN,
            backoff_max: CLIENT_BACKOFF_MAX,
            strong_signatures: false,
            unix_ms_at_epoch: None,
        }
    }
}

/// What the client reports to its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Open a connection to the registry, then call `connected` (or
    /// `disconnected` if it fails).
    Dial,
    /// Close the connection or abandon the dial (no reply or no connection
    /// in time); the client already counts it as disconnected.
    CloseConnection,
    /// The registry accepted the node.
    Registered {
        /// Assigned node ID.
        node_id: u32,
        /// Backbone text address.
        address: String,
        /// Endpoint the registry stored, if it said.
        observed_addr: Option<String>,
        /// Why a requested hostname was not applied, if it said.
        hostname_error: Option<String>,
    },
    /// Registration was refused; it is retried after a back-off.
    RegistrationFailed {
        /// The registry's reason text.
        reason: String,
    },
    /// The handshake inbox had something.
    HandshakeInbox {
        /// Trust requests for this node.
        requests: Vec<InboxRequest>,
        /// Answers to this node's requests.
        responses: Vec<InboxResponse>,
    },
    /// The registry pushed that `by` revoked its trust pair with this node
    /// (a hint: check it with [`Call::CheckTrust`] before acting).
    TrustRevoked {
        /// The revoker.
        by: u32,
    },
    /// The registry forgot this node (or heartbeats kept failing); the
    /// client registers again with the same key.
    Reregistering,
    /// A request was given up after its one retry.
    RequestDropped {
        /// Which request (`"resolve"`, `"heartbeat"`, ...).
        kind: &'static str,
    },
    /// Registration with the current key was refused because a rotation
    /// retired it; the client switched to the fallback identity given to
    /// [`RegistryClient::set_fallback_identity`] and registers with it now
    /// (`spec/daemon.md` §2.9: the rotation's reply was lost before the
    /// new key reached disk).
    IdentityAdopted {
        /// The adopted public key (base64).
        public_key: String,
    },
    /// A [`Call`] finished: the registry's reply, or its error text (also
    /// `"request failed"` when the request was given up after its retry).
    CallDone {
        /// The id [`RegistryClient::call`] returned.
        id: CallId,
        /// The reply (never [`Response::Error`]) or the failure reason.
        result: Result<Response, String>,
    },
}

/// Identifier of a pass-through [`Call`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// A pass-through request the daemon makes for an IPC client or for the
/// trust handshake (`spec/daemon.md` §5). The client fills in the node ID
/// and signs it when it goes out, so calls may be queued before
/// registration completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `lookup` of a node (public key, visibility, endpoint if public).
    Lookup(u32),
    /// `resolve` of a node's endpoint (privacy-gated).
    Resolve(u32),
    /// `resolve_hostname`.
    ResolveHostname(String),
    /// `set_hostname` (empty clears).
    SetHostname(String),
    /// `set_visibility`.
    SetVisibility(bool),
    /// `set_tags`.
    SetTags(Vec<String>),
    /// `deregister`.
    Deregister,
    /// `report_trust` with a peer.
    ReportTrust(u32),
    /// `revoke_trust` with a peer.
    RevokeTrust(u32),
    /// `check_trust` between this node and a peer.
    CheckTrust(u32),
    /// `request_handshake` relayed to `to`.
    RequestHandshake {
        /// Target node.
        to: u32,
        /// Free text.
        justification: String,
    },
    /// `respond_handshake` to `peer`'s request.
    RespondHandshake {
        /// The original requester.
        peer: u32,
        /// Accept or reject.
        accept: bool,
    },
    /// A network operation (`spec/registry.md` §3.15), signed as this node.
    Net(NetCall),
    /// `rotate_key` to this new public key (base64), signed by the current
    /// key. Only through [`RegistryClient::rotate_key`], which also swaps
    /// the client's key when the registry accepts.
    RotateKey(String),
}

/// The network operations a daemon makes for its IPC clients
/// (`spec/daemon.md` §2.7). Mutations are signed by this node; `Create`
/// carries the daemon's configured admin token (the registry requires one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetCall {
    /// `list_networks`.
    List,
    /// `list_nodes`.
    Members(u16),
    /// `create_network`.
    Create {
        /// Name.
        name: String,
        /// `open`, `token` or `invite`.
        join_rule: String,
        /// Join token.
        token: String,
        /// The daemon's admin token.
        admin_token: String,
    },
    /// `join_network`.
    Join {
        /// Network.
        network: u16,
        /// Join token.
        token: String,
    },
    /// `leave_network`.
    Leave(u16),
    /// `invite_to_network`.
    Invite {
        /// Network.
        network: u16,
        /// Invited node.
        target: u32,
    },
    /// `poll_invites`.
    PollInvites,
    /// `respond_invite`.
    RespondInvite {
        /// Network.
        network: u16,
        /// Accept or decline.
        accept: bool,
    },
    /// `delete_network`.
    Delete(u16),
    /// `rename_network`.
    Rename {
        /// Network.
        network: u16,
        /// New name.
        name: String,
    },
    /// `kick_member`, `promote_member`, `demote_member`,
    /// `transfer_ownership` (the request type).
    Member {
        /// One of the four type names.
        op: &'static str,
        /// Network.
        network: u16,
        /// The member.
        target: u32,
    },
    /// `get_member_role`.
    Role {
        /// Network.
        network: u16,
        /// The member.
        target: u32,
    },
    /// `get_member_tags` (`tags: None`) or `set_member_tags`.
    MemberTags {
        /// Network.
        network: u16,
        /// The member.
        target: u32,
        /// New tags for a set.
        tags: Option<Vec<String>>,
    },
    /// `get_network_policy` (`policy: None`) or `set_network_policy`.
    Policy {
        /// Network.
        network: u16,
        /// The policy for a set (`Value::Null` clears).
        policy: Option<serde_json::Value>,
    },
}

/// Command refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Too many requests are queued.
    #[error("registry client queue full")]
    QueueFull,
    /// A key rotation is already under way.
    #[error("a key rotation is already in progress")]
    RotationInProgress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Register,
    Heartbeat,
    PollInbox,
    Call(CallId),
}

impl Op {
    fn kind(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::Heartbeat => "heartbeat",
            Op::PollInbox => "poll_handshakes",
            Op::Call(_) => "call",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    op: Op,
    /// How many times it was sent on a connection that then broke.
    retries: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    /// No connection; dial at the instant (if any).
    Down(Option<Instant>),
    /// `Dial` was emitted at the instant; waiting for `connected` or
    /// `disconnected` (or the dial timeout).
    Dialing(Instant),
    /// Connected.
    Up,
}

/// The registry's answers as [`ClientEvent::CallDone`] carries them.
pub use super::codec::Response;

/// The node-side registry client.
#[derive(Debug)]
pub struct RegistryClient {
    cfg: ClientConfig,
    identity: Identity,
    conn: Conn,
    conn_backoff: Duration,
    reg_backoff: Duration,
    queue: VecDeque<Pending>,
    in_flight: Option<(Pending, Instant)>,
    outbox: Option<Request>,
    events: VecDeque<ClientEvent>,
    node_id: Option<u32>,
    next_heartbeat: Option<Instant>,
    next_poll: Option<Instant>,
    register_at: Option<Instant>,
    hb_failures: u32,
    last_sig_ts: u64,
    calls: BTreeMap<CallId, Call>,
    next_call: u64,
    /// Reassembly of the connection's bytes ([`RegistryClient::handle_bytes`]).
    reader: super::framing::ResponseReader,
    /// The `listen_addr` of the last register request built.
    sent_listen: Option<String>,
    /// The rotation in progress: its call and the key it installs.
    rotation: Option<(CallId, Identity)>,
    /// A key to adopt if the registry says the current one was retired.
    fallback: Option<Identity>,
}

/// Bound of undelivered events.
const MAX_EVENTS: usize = 256;

impl RegistryClient {
    /// A client for `identity`; it asks to dial at once and registers when
    /// connected.
    pub fn new(cfg: ClientConfig, identity: Identity, now: Instant) -> Self {
        let mut c = RegistryClient {
            conn_backoff: cfg.backoff_min,
            reg_backoff: cfg.backoff_min,
            cfg,
            identity,
            conn: Conn::Down(Some(now)),
            queue: VecDeque::new(),
            in_flight: None,
            outbox: None,
            events: VecDeque::new(),
            node_id: None,
            next_heartbeat: None,
            next_poll: None,
            register_at: Some(now),
            hb_failures: 0,
            last_sig_ts: 0,
            calls: BTreeMap::new(),
            next_call: 1,
            reader: super::framing::ResponseReader::default(),
            sent_listen: None,
            rotation: None,
            fallback: None,
        };
        c.handle_timeout(now);
        c
    }

    /// The advertised tunnel endpoint.
    pub fn listen_addr(&self) -> &str {
        &self.cfg.listen_addr
    }

    /// Changes the advertised tunnel endpoint (an observed public endpoint
    /// changed, `spec/beacon.md` §6.1). A registered client registers again
    /// at once with the same key; a registration under way with the old
    /// value is repeated when it succeeds.
    pub fn set_listen_addr(&mut self, now: Instant, listen_addr: String) {
        if self.cfg.listen_addr == listen_addr {
            return;
        }
        self.cfg.listen_addr = listen_addr;
        if self.node_id.is_some() {
            self.reregister(now);
        }
    }

    /// The node ID, once registered.
    pub fn node_id(&self) -> Option<u32> {
        self.node_id
    }

    /// The public key requests are signed with now (base64).
    pub fn public_key_b64(&self) -> String {
        self.identity.public_key_b64()
    }

    /// Starts a key rotation to `new` (`spec/registry.md` §3.11): a
    /// `rotate_key` call signed by the current key. When the registry
    /// accepts it, the client signs everything after it with `new`; the
    /// outcome arrives as [`ClientEvent::CallDone`] like any call.
    pub fn rotate_key(&mut self, now: Instant, new: Identity) -> Result<CallId, ClientError> {
        if self.rotation.is_some() {
            return Err(ClientError::RotationInProgress);
        }
        let id = self.call(now, Call::RotateKey(new.public_key_b64()))?;
        self.rotation = Some((id, new));
        Ok(id)
    }

    /// A key to switch to if registering with the current one is refused
    /// as retired by a rotation (a restart after a rotation whose new key
    /// did not reach the identity file, `spec/daemon.md` §2.9).
    pub fn set_fallback_identity(&mut self, fallback: Option<Identity>) {
        self.fallback = fallback;
    }

    /// The registry answered call `id`: a rotation it accepted swaps the
    /// signing key now, before any later request is built.
    fn settle_rotation(&mut self, id: CallId, result: &Result<Response, String>) {
        if self.rotation.as_ref().is_some_and(|(c, _)| *c == id) {
            if let Some((_, new)) = self.rotation.take() {
                if let Ok(Response::RotateKeyOk { public_key, .. }) = result {
                    if *public_key == new.public_key_b64() {
                        self.identity = new;
                    }
                }
            }
        }
    }

    fn event(&mut self, e: ClientEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    fn enqueue(&mut self, op: Op) -> Result<(), ClientError> {
        let queued = self.queue.iter().any(|p| p.op == op)
            || self.in_flight.is_some_and(|(p, _)| p.op == op);
        if queued {
            return Ok(());
        }
        if self.queue.len() >= CLIENT_MAX_QUEUE {
            return Err(ClientError::QueueFull);
        }
        if op == Op::Register {
            self.queue.push_front(Pending { op, retries: 0 });
        } else {
            self.queue.push_back(Pending { op, retries: 0 });
        }
        Ok(())
    }

    /// Queues a pass-through request; its outcome arrives as
    /// [`ClientEvent::CallDone`] with the returned id. Calls wait for the
    /// registration like every other request.
    pub fn call(&mut self, now: Instant, call: Call) -> Result<CallId, ClientError> {
        if self.queue.len() >= CLIENT_MAX_QUEUE {
            return Err(ClientError::QueueFull);
        }
        let id = CallId(self.next_call);
        self.next_call = self.next_call.wrapping_add(1);
        self.calls.insert(id, call);
        self.queue.push_back(Pending {
            op: Op::Call(id),
            retries: 0,
        });
        self.pump(now);
        Ok(id)
    }

    /// Whether call `id` is still undecided here (queued or in flight). A
    /// call leaves when its [`ClientEvent::CallDone`] is queued.
    pub fn holds_call(&self, id: CallId) -> bool {
        self.calls.contains_key(&id)
    }

    /// Whether the registry is known to be unreachable: the last dial or
    /// connection failed and no connection is up (requests queued now wait
    /// for the next successful dial).
    pub fn is_unreachable(&self) -> bool {
        self.conn != Conn::Up && self.conn_backoff > self.cfg.backoff_min
    }

    /// Whether the client is connected and registered.
    pub fn is_registered(&self) -> bool {
        self.node_id.is_some()
    }

    /// Polls the handshake inbox now.
    pub fn poll_inbox(&mut self, now: Instant) -> Result<(), ClientError> {
        self.enqueue(Op::PollInbox)?;
        self.pump(now);
        Ok(())
    }

    /// The connection the client asked for is up.
    pub fn connected(&mut self, now: Instant) {
        self.conn = Conn::Up;
        self.reader.clear();
        if self.cfg.push && self.node_id.is_some() {
            // A new connection: ask for pushes on it (and catch up).
            let _ = self.enqueue(Op::PollInbox);
        }
        self.pump(now);
    }

    /// The connection failed or closed.
    pub fn disconnected(&mut self, now: Instant) {
        self.outbox = None;
        self.reader.clear();
        if let Some((mut p, _)) = self.in_flight.take() {
            if p.retries == 0 || p.op == Op::Register {
                p.retries = p.retries.saturating_add(1);
                self.queue.push_front(p);
            } else if let Op::Call(id) = p.op {
                self.calls.remove(&id);
                let result = Err("request failed".to_owned());
                self.settle_rotation(id, &result);
                self.event(ClientEvent::CallDone { id, result });
            } else {
                self.event(ClientEvent::RequestDropped { kind: p.op.kind() });
            }
        }
        self.conn = Conn::Down(Some(now + self.conn_backoff));
        self.conn_backoff = self
            .conn_backoff
            .saturating_mul(2)
            .min(self.cfg.backoff_max);
    }

    /// The next request to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Request> {
        self.outbox.take()
    }

    /// The next request to send as bytes for the connection (framed).
    pub fn poll_bytes(&mut self) -> Option<Vec<u8>> {
        while let Some(req) = self.outbox.take() {
            if let Some(b) = super::framing::request_frame(&req) {
                return Some(b);
            }
        }
        None
    }

    /// Bytes read from the connection, in any split. Every complete
    /// response is handled. A stream that is not the registry's (a frame
    /// over the limit, a payload that is not a response) is an error: the
    /// client counts the connection as lost and asks to close it
    /// ([`ClientEvent::CloseConnection`]); the caller does not report a
    /// disconnect for it.
    pub fn handle_bytes(
        &mut self,
        now: Instant,
        bytes: &[u8],
    ) -> Result<(), super::framing::StreamError> {
        self.reader.push(bytes);
        loop {
            match self.reader.next_response() {
                Ok(Some(r)) => self.handle_response(now, r),
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.disconnected(now);
                    self.event(ClientEvent::CloseConnection);
                    return Err(e);
                }
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When to call [`RegistryClient::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        match self.conn {
            Conn::Down(at) => take(at),
            Conn::Dialing(since) => take(Some(since + self.cfg.dial_timeout)),
            Conn::Up => {}
        }
        take(
            self.in_flight
                .map(|(_, sent)| sent + self.cfg.response_timeout),
        );
        take(self.register_at);
        take(self.next_heartbeat);
        take(self.next_poll);
        t
    }

    /// Time-driven work: response timeout, re-dial, registration retry,
    /// heartbeats and periodic inbox polls. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, sent)) = self.in_flight {
            if self.conn == Conn::Up && now >= sent + self.cfg.response_timeout {
                self.event(ClientEvent::CloseConnection);
                self.disconnected(now);
            }
        }
        if let Conn::Dialing(since) = self.conn {
            if now >= since + self.cfg.dial_timeout {
                // The driver never reported back: give up on this dial.
                self.event(ClientEvent::CloseConnection);
                self.disconnected(now);
            }
        }
        if let Conn::Down(Some(at)) = self.conn {
            if now >= at {
                self.conn = Conn::Dialing(now);
                self.event(ClientEvent::Dial);
            }
        }
        if self.register_at.is_some_and(|at| now >= at) {
            self.register_at = None;
            // Register always fits: it replaces nothing and goes first.
            let _ = self.enqueue(Op::Register);
        }
        if self.node_id.is_some() {
            if self.next_heartbeat.is_some_and(|at| now >= at) {
                self.next_heartbeat = Some(now + self.cfg.heartbeat_interval);
                if self.enqueue(Op::Heartbeat).is_err() {
                    self.heartbeat_failed(now);
                }
            }
            if let (Some(at), Some(every)) = (self.next_poll, self.cfg.inbox_poll_interval) {
                if now >= at {
                    self.next_poll = Some(now + every);
                    let _ = self.enqueue(Op::PollInbox);
                }
            }
        }
        self.pump(now);
    }

    fn pump(&mut self, now: Instant) {
        if self.conn != Conn::Up || self.in_flight.is_some() || self.outbox.is_some() {
            return;
        }
        // Until registered, only registration may go out.
        let pos = if self.node_id.is_some() {
            (!self.queue.is_empty()).then_some(0)
        } else {
            self.queue.iter().position(|p| p.op == Op::Register)
        };
        let Some(p) = pos.and_then(|i| self.queue.remove(i)) else {
            return;
        };
        let req = self.build(now, p.op);
        self.in_flight = Some((p, now));
        self.outbox = Some(req);
    }

    /// Signature fields for `challenge`: the strong form when configured
    /// and the wall clock is known, else the legacy form.
    fn sign(&mut self, now: Instant, challenge: &str) -> (String, Option<u64>) {
        match (self.cfg.strong_signatures, self.cfg.unix_ms_at_epoch) {
            (true, Some(base)) => {
                let ms = UnixTime::of_instant(UnixTime::from_millis(base), now).as_millis();
                let ts = ms.max(self.last_sig_ts.saturating_add(1));
                self.last_sig_ts = ts;
                let msg = auth::strong_message(challenge, ts);
                (self.identity.sign_b64(msg.as_bytes()), Some(ts))
            }
            _ => (self.identity.sign_b64(challenge.as_bytes()), None),
        }
    }

    fn build(&mut self, now: Instant, op: Op) -> Request {
        let id = self.node_id.unwrap_or(0);
        match op {
            Op::Register => {
                self.sent_listen = Some(self.cfg.listen_addr.clone());
                let key = self.identity.public_key_b64();
                let (signature, sig_ts) = if self.cfg.strong_signatures {
                    let c = format!("register:{}:{}", self.cfg.listen_addr, key);
                    self.sign(now, &c)
                } else {
                    (String::new(), None)
                };
                Request::Register(codec::Register {
                    listen_addr: self.cfg.listen_addr.clone(),
                    public_key: key,
                    owner: self.cfg.owner.clone(),
                    hostname: self.cfg.hostname.clone(),
                    lan_addrs: self.cfg.lan_addrs.clone(),
                    version: String::new(),
                    signature,
                    sig_ts,
                })
            }
            Op::Heartbeat => {
                let (signature, sig_ts) = self.sign(now, &format!("heartbeat:{id}"));
                Request::Heartbeat(codec::Heartbeat {
                    node_id: id,
                    signature,
                    sig_ts,
                })
            }
            Op::PollInbox => {
                let (signature, sig_ts) = self.sign(now, &format!("poll_handshakes:{id}"));
                Request::PollHandshakes(codec::PollHandshakes {
                    node_id: id,
                    signature,
                    sig_ts,
                    push: self.cfg.push,
                })
            }
            Op::Call(cid) => match self.calls.get(&cid).cloned() {
                Some(call) => self.build_call(now, id, call),
                // Unreachable in practice (calls leave the map only when
                // answered); a harmless unsigned request keeps the stream
                // in step.
                None => Request::Lookup(codec::Lookup { node_id: id }),
            },
        }
    }

    fn build_call(&mut self, now: Instant, id: u32, call: Call) -> Request {
        match call {
            Call::Lookup(node_id) => Request::Lookup(codec::Lookup { node_id }),
            Call::RotateKey(new_public_key) => {
                let (signature, sig_ts) = self.sign(now, &format!("rotate:{id}"));
                Request::RotateKey(codec::RotateKey {
                    node_id: id,
                    new_public_key,
                    signature,
                    sig_ts,
                })
            }
            Call::Resolve(target) => {
                let (signature, sig_ts) = self.sign(now, &format!("resolve:{id}:{target}"));
                Request::Resolve(codec::Resolve {
                    node_id: target,
                    requester_id: id,
                    signature,
                    sig_ts,
                })
            }
            Call::ResolveHostname(hostname) => Request::ResolveHostname(codec::ResolveHostname {
                hostname,
                requester_id: id,
            }),
            Call::SetHostname(hostname) => {
                let (signature, sig_ts) = self.sign(now, &format!("set_hostname:{id}"));
                Request::SetHostname(codec::SetHostname {
                    node_id: id,
                    hostname,
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                })
            }
            Call::SetVisibility(public) => {
                let (signature, sig_ts) = self.sign(now, &format!("set_visibility:{id}"));
                Request::SetVisibility(codec::SetVisibility {
                    node_id: id,
                    public,
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                })
            }
            Call::SetTags(tags) => {
                let (signature, sig_ts) = self.sign(now, &format!("set_tags:{id}"));
                Request::SetTags(codec::SetTags {
                    node_id: id,
                    tags,
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                })
            }
            Call::Deregister => {
                let (signature, sig_ts) = self.sign(now, &format!("deregister:{id}"));
                Request::Deregister(codec::Deregister {
                    node_id: id,
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                })
            }
            Call::ReportTrust(peer_id) => {
                let (signature, sig_ts) = self.sign(now, &format!("report_trust:{id}:{peer_id}"));
                Request::ReportTrust(codec::TrustPair {
                    node_id: id,
                    peer_id,
                    signature,
                    sig_ts,
                })
            }
            Call::CheckTrust(peer_id) => Request::CheckTrust(codec::CheckTrust {
                node_id: id,
                peer_id,
            }),
            Call::RevokeTrust(peer_id) => {
                let (signature, sig_ts) = self.sign(now, &format!("revoke_trust:{id}:{peer_id}"));
                Request::RevokeTrust(codec::TrustPair {
                    node_id: id,
                    peer_id,
                    signature,
                    sig_ts,
                })
            }
            Call::RequestHandshake { to, justification } => {
                let (signature, sig_ts) = self.sign(now, &format!("handshake:{id}:{to}"));
                Request::RequestHandshake(codec::RequestHandshake {
                    from_node_id: id,
                    to_node_id: to,
                    justification,
                    signature,
                    sig_ts,
                })
            }
            Call::RespondHandshake { peer, accept } => {
                let (signature, sig_ts) = self.sign(now, &format!("respond:{id}:{peer}"));
                Request::RespondHandshake(codec::RespondHandshake {
                    node_id: id,
                    peer_id: peer,
                    accept,
                    signature,
                    sig_ts,
                })
            }
            Call::Net(n) => self.build_net(now, id, n),
        }
    }

    fn build_net(&mut self, now: Instant, id: u32, call: NetCall) -> Request {
        match call {
            NetCall::List => Request::ListNetworks(codec::ListNetworks::default()),
            NetCall::Members(network_id) => Request::ListNodes(codec::ListNodes {
                network_id,
                admin_token: String::new(),
            }),
            NetCall::Create {
                name,
                join_rule,
                token,
                admin_token,
            } => Request::CreateNetwork(codec::CreateNetwork {
                node_id: id,
                name,
                join_rule,
                token,
                admin_token,
            }),
            NetCall::Join { network, token } => {
                let (signature, sig_ts) = self.sign(now, &format!("join_network:{id}:{network}"));
                Request::JoinNetwork(codec::JoinNetwork {
                    node_id: id,
                    network_id: network,
                    token,
                    signature,
                    sig_ts,
                    ..Default::default()
                })
            }
            NetCall::Leave(network) => {
                let (signature, sig_ts) = self.sign(now, &format!("leave_network:{id}:{network}"));
                Request::LeaveNetwork(codec::LeaveNetwork {
                    node_id: id,
                    network_id: network,
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                })
            }
            NetCall::Invite { network, target } => {
                let (signature, sig_ts) =
                    self.sign(now, &format!("invite:{id}:{network}:{target}"));
                Request::InviteToNetwork(codec::InviteToNetwork {
                    network_id: network,
                    inviter_id: id,
                    target_node_id: target,
                    signature,
                    sig_ts,
                })
            }
            NetCall::PollInvites => {
                let (signature, sig_ts) = self.sign(now, &format!("poll_invites:{id}"));
                Request::PollInvites(codec::PollInvites {
                    node_id: id,
                    signature,
                    sig_ts,
                })
            }
            NetCall::RespondInvite { network, accept } => {
                let (signature, sig_ts) = self.sign(now, &format!("respond_invite:{id}:{network}"));
                Request::RespondInvite(codec::RespondInvite {
                    node_id: id,
                    network_id: network,
                    accept,
                    signature,
                    sig_ts,
                })
            }
            NetCall::Delete(network) => {
                let (signature, sig_ts) = self.sign(now, &format!("delete_network:{id}:{network}"));
                Request::DeleteNetwork(codec::DeleteNetwork {
                    node_id: id,
                    network_id: network,
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                })
            }
            NetCall::Rename { network, name } => {
                let (signature, sig_ts) =
                    self.sign(now, &format!("rename_network:{id}:{network}:{name}"));
                Request::RenameNetwork(codec::RenameNetwork {
                    node_id: id,
                    network_id: network,
                    name,
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                })
            }
            NetCall::Member {
                op,
                network,
                target,
            } => {
                let (signature, sig_ts) = self.sign(now, &format!("{op}:{id}:{network}:{target}"));
                let a = codec::MemberAction {
                    node_id: id,
                    network_id: network,
                    target_node_id: target,
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                };
                match op {
                    "kick_member" => Request::KickMember(a),
                    "promote_member" => Request::PromoteMember(a),
                    "demote_member" => Request::DemoteMember(a),
                    _ => Request::TransferOwnership(a),
                }
            }
            NetCall::Role { network, target } => Request::GetMemberRole(codec::MemberQuery {
                network_id: network,
                target_node_id: target,
            }),
            NetCall::MemberTags {
                network,
                target,
                tags: None,
            } => Request::GetMemberTags(codec::MemberQuery {
                network_id: network,
                target_node_id: target,
            }),
            NetCall::MemberTags {
                network,
                target,
                tags: Some(tags),
            } => {
                let (signature, sig_ts) =
                    self.sign(now, &format!("set_member_tags:{id}:{network}:{target}"));
                Request::SetMemberTags(codec::SetMemberTags {
                    node_id: id,
                    network_id: network,
                    target_node_id: target,
                    tags,
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                })
            }
            NetCall::Policy {
                network,
                policy: None,
            } => Request::GetNetworkPolicy(codec::GetNetworkPolicy {
                network_id: network,
            }),
            NetCall::Policy {
                network,
                policy: Some(p),
            } => {
                let (signature, sig_ts) =
                    self.sign(now, &format!("set_network_policy:{id}:{network}"));
                Request::SetNetworkPolicy(codec::SetNetworkPolicy {
                    node_id: id,
                    network_id: network,
                    policy: (!p.is_null()).then_some(p),
                    admin_token: String::new(),
                    signature,
                    sig_ts,
                })
            }
        }
    }

    fn reregister(&mut self, now: Instant) {
        self.node_id = None;
        self.next_heartbeat = None;
        self.next_poll = None;
        self.hb_failures = 0;
        self.event(ClientEvent::Reregistering);
        self.register_at = Some(now);
    }

    fn heartbeat_failed(&mut self, now: Instant) {
        self.hb_failures += 1;
        if self.hb_failures >= CLIENT_HEARTBEAT_FAILURES {
            self.reregister(now);
        }
    }

    /// A reply arrived on the connection.
    pub fn handle_response(&mut self, now: Instant, resp: Response) {
        if let Response::Push { kind, from } = &resp {
            // A hint that answers no request (ours, `spec/registry.md`
            // §3.13): the inbox is authoritative, so fetch it now.
            match kind.as_str() {
                codec::PUSH_HANDSHAKE if self.node_id.is_some() => {
                    let _ = self.enqueue(Op::PollInbox);
                }
                codec::PUSH_TRUST_REVOKED => self.event(ClientEvent::TrustRevoked { by: *from }),
                _ => {}
            }
            self.pump(now);
            return;
        }
        let Some((p, _)) = self.in_flight.take() else {
            // A reply nobody asked for: the stream is out of step.
            self.event(ClientEvent::CloseConnection);
            self.disconnected(now);
            return;
        };
        // Any reply proves the connection works.
        self.conn_backoff = self.cfg.backoff_min;
        let error = match &resp {
            Response::Error { error } => Some(error.clone()),
            _ => None,
        };
        match (p.op, resp) {
            (Op::Register, Response::RegisterOk(ok)) => {
                // The current key is accepted: no rotation to recover.
                self.fallback = None;
                self.node_id = Some(ok.node_id);
                self.reg_backoff = self.cfg.backoff_min;
                self.hb_failures = 0;
                self.next_heartbeat = Some(now + self.cfg.heartbeat_interval);
                self.next_poll = self.cfg.inbox_poll_interval.map(|d| now + d);
                if self.cfg.push {
                    // Bind this connection for pushes, and fetch what came
                    // while we were away.
                    let _ = self.enqueue(Op::PollInbox);
                }
                self.event(ClientEvent::Registered {
                    node_id: ok.node_id,
                    address: ok.address,
                    observed_addr: ok.observed_addr,
                    hostname_error: ok.hostname_error,
                });
                if self.sent_listen.as_deref() != Some(self.cfg.listen_addr.as_str()) {
                    // The endpoint changed while this registration was
                    // under way: register again with the new one.
                    self.reregister(now);
                }
            }
            (Op::Register, _)
                if self.fallback.is_some()
                    && error.as_deref().is_some_and(|e| e.contains("retired")) =>
            {
                if let Some(next) = self.fallback.take() {
                    let public_key = next.public_key_b64();
                    self.identity = next;
                    self.event(ClientEvent::IdentityAdopted { public_key });
                    self.register_at = Some(now);
                }
            }
            (Op::Register, _) => {
                let reason = error.unwrap_or_else(|| "unexpected reply".to_owned());
                self.event(ClientEvent::RegistrationFailed { reason });
                self.register_at = Some(now + self.reg_backoff);
                self.reg_backoff = self.reg_backoff.saturating_mul(2).min(self.cfg.backoff_max);
            }
            (Op::Heartbeat, Response::HeartbeatOk { .. }) => self.hb_failures = 0,
            (Op::Heartbeat, _) => {
                if error.as_deref().is_some_and(|e| e.contains("not found")) {
                    self.reregister(now);
                } else {
                    self.heartbeat_failed(now);
                }
            }
            (
                Op::PollInbox,
                Response::PollHandshakesOk {
                    requests,
                    responses,
                },
            ) => {
                if !requests.is_empty() || !responses.is_empty() {
                    self.event(ClientEvent::HandshakeInbox {
                        requests,
                        responses,
                    });
                }
            }
            (Op::PollInbox, _) => {
                if error.as_deref().is_some_and(|e| e.contains("not found")) {
                    self.reregister(now);
                }
            }
            (Op::Call(id), resp) => {
                if self.calls.remove(&id).is_some() {
                    let result = match resp {
                        Response::Error { error } => Err(error),
                        r => Ok(r),
                    };
                    self.settle_rotation(id, &result);
                    self.event(ClientEvent::CallDone { id, result });
                }
            }
        }
        self.handle_timeout(now);
    }
}

#[cfg(test)]
mod tests;
