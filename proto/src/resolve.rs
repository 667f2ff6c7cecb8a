//! Peer resolution through the registry, sans-IO (`spec/daemon.md` §4):
//! the one [`Resolver`] used by the daemon and by `driver-tokio`'s
//! embedded node.
//!
//! It owns what the registry told us about other nodes and what we are
//! still asking it:
//! - **resolutions**: `lookup` (identity key, and the endpoint of a public
//!   node), then for a private node the privacy-gated `resolve`. Requests
//!   for a node already being resolved wait for the same answer
//!   (coalesced, at most [`RESOLVE_WAITERS`]), each resolution has a
//!   deadline, and at most [`MAX_RESOLUTIONS`] run at once;
//! - **a negative cache**: a node the registry said it cannot give us (no
//!   such node, private and not trusted, no endpoint) fails new requests
//!   at once until [`NEGATIVE_TTL`] passes or [`Resolver::clear_negative`]
//!   (trust changed); local failures (registry unreachable, queue full,
//!   timeout) are never cached;
//! - **identity keys** for held key exchanges of strangers
//!   ([`Resolver::fetch_key`]): a bounded cache ([`MAX_PEER_KEYS`]), at
//!   most [`MAX_KEY_FETCHES`] look-ups in flight, paced by a token bucket
//!   ([`KEY_LOOKUP_BURST`], [`KEY_LOOKUP_RATE`]) so a flood of signed key
//!   exchanges with random sender IDs cannot use up our registry quota.
//!
//! The caller owns the [`RegistryClient`] (bytes in and out) and lends it
//! to [`Resolver::resolve`], [`Resolver::fetch_key`] and
//! [`Resolver::on_call_done`]; it hands every
//! [`ClientEvent::CallDone`](crate::registry::client::ClientEvent::CallDone)
//! whose id [`Resolver::owns`] to the resolver. Outcomes come out of
//! [`Resolver::poll_event`] as [`ResolveEvent`]s carrying the waiters (of
//! the caller's type `W`). A reply of the wrong kind or with a malformed
//! field is counted ([`ResolverStats::bad_replies`]) and fails the
//! resolution with a clear reason.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use core::net::SocketAddr;
use core::time::Duration;

use crate::addr::Addr;
use crate::registry::client::{Call, CallId, RegistryClient, Response};
use crate::time::Instant;

/// How long a peer resolution may take before its waiters fail.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests waiting for one peer resolution.
pub const RESOLVE_WAITERS: usize = 64;
/// Most peer resolutions in progress.
pub const MAX_RESOLUTIONS: usize = 256;
/// How long a registry's "cannot give you this node" is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most nodes in the negative cache (the entry closest to expiry goes).
pub const MAX_NEGATIVE: usize = 1024;
/// Most registry keys remembered for peers.
pub const MAX_PEER_KEYS: usize = 65_536;
/// Most identity-key look-ups for key exchanges in progress.
pub const MAX_KEY_FETCHES: usize = 1024;
/// Burst of registry look-ups for the identity keys of strangers whose
/// key exchanges are held (`spec/crypto.md` §2.8).
pub const KEY_LOOKUP_BURST: f64 = 16.0;
/// Refill of that budget per second: well under the registry's query
/// limit (500 per minute per IP).
pub const KEY_LOOKUP_RATE: f64 = 4.0;
/// The reason given when the registry is known to be unreachable.
pub const REGISTRY_UNREACHABLE: &str = "registry unreachable";
/// The reason given when a resolution passed its deadline.
pub const TIMED_OUT: &str = "registry: request timed out";

/// The registry client's text for a request it gave up on (transport,
/// not an answer of the registry).
const REQUEST_FAILED: &str = "request failed";

/// An outcome of the resolver.
#[derive(Debug, PartialEq, Eq)]
pub enum ResolveEvent<W> {
    /// `node` is at `endpoint`: add it as a peer at
    /// `Addr::new(network, node)` (the network of the first request),
    /// then serve the waiters.
    Found {
        /// The node ID.
        node: u32,
        /// Network of the first request.
        network: u16,
        /// Its tunnel endpoint.
        endpoint: SocketAddr,
        /// Its registered identity key, if the registry gave a valid one.
        key: Option<[u8; 32]>,
        /// Every request that waited, in arrival order.
        waiters: Vec<W>,
    },
    /// The resolution failed; every waiter fails with `reason`.
    Failed {
        /// The node ID.
        node: u32,
        /// Why.
        reason: String,
        /// Every request that waited, in arrival order.
        waiters: Vec<W>,
    },
    /// The identity key of `node` asked for by [`Resolver::fetch_key`].
    KeyFound {
        /// The node ID.
        node: u32,
        /// Its registered Ed25519 key.
        key: [u8; 32],
    },
    /// The key of `node` could not be had.
    KeyUnknown {
        /// The node ID.
        node: u32,
    },
}

/// What [`Resolver::fetch_key`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFetch {
    /// The key is known already.
    Known([u8; 32]),
    /// A look-up is running (started now or before); a
    /// [`ResolveEvent::KeyFound`] or [`ResolveEvent::KeyUnknown`] follows.
    Started,
    /// Refused: not registered, too many look-ups, or the budget is spent.
    Refused,
}

/// Counters of the resolver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Resolutions started (registry `lookup`s sent for a resolution).
    pub lookups: u64,
    /// Second steps (`resolve`) for private nodes.
    pub resolves: u64,
    /// Requests that joined a resolution in progress.
    pub coalesced: u64,
    /// Requests failed at once from the negative cache.
    pub negative_hits: u64,
    /// Resolutions that passed their deadline.
    pub timeouts: u64,
    /// Registry replies of the wrong kind or with a malformed field.
    pub bad_replies: u64,
    /// Identity-key look-ups started.
    pub key_fetches: u64,
    /// Identity-key look-ups refused (limit or budget).
    pub key_fetches_refused: u64,
}

/// Configuration of a [`Resolver`].
#[derive(Clone, Copy, Debug)]
pub struct ResolverConfig {
    /// Deadline of one resolution.
    pub timeout: Duration,
    /// Lifetime of a negative cache entry.
    pub negative_ttl: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            timeout: RESOLVE_TIMEOUT,
            negative_ttl: NEGATIVE_TTL,
        }
    }
}

/// Which registry call a resolver call id is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// First step of a resolution.
    Lookup(u32),
    /// Second step (private node).
    Resolve(u32),
    /// An identity-key look-up.
    Key(u32),
}

/// One resolution in progress.
#[derive(Debug)]
struct Pending<W> {
    deadline: Instant,
    network: u16,
    key: Option<[u8; 32]>,
    waiters: Vec<W>,
}

/// A failure the registry answered (cached), or a local one (not).
enum Failure {
    Answer(String),
    Local(String),
}

/// The peer resolver (module docs).
#[derive(Debug)]
pub struct Resolver<W> {
    cfg: ResolverConfig,
    pending: BTreeMap<u32, Pending<W>>,
    calls: BTreeMap<CallId, Step>,
    /// node → (expiry, reason).
    negative: BTreeMap<u32, (Instant, String)>,
    keys: BTreeMap<u32, [u8; 32]>,
    key_fetch: BTreeSet<u32>,
    /// Look-up budget for strangers' keys: (tokens, last refill).
    budget: (f64, Instant),
    events: VecDeque<ResolveEvent<W>>,
    stats: ResolverStats,
}

impl<W> Resolver<W> {
    /// An empty resolver at `now`.
    pub fn new(cfg: ResolverConfig, now: Instant) -> Self {
        Resolver {
            cfg,
            pending: BTreeMap::new(),
            calls: BTreeMap::new(),
            negative: BTreeMap::new(),
            keys: BTreeMap::new(),
            key_fetch: BTreeSet::new(),
            budget: (KEY_LOOKUP_BURST, now),
            events: VecDeque::new(),
            stats: ResolverStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ResolverStats {
        self.stats
    }

    /// Whether `node` is being resolved.
    pub fn is_resolving(&self, node: u32) -> bool {
        self.pending.contains_key(&node)
    }

    /// Resolves `peer.node` (the network of `peer` is where the caller
    /// will add it) and serves `waiter` when done. An immediate failure
    /// hands the waiter back with the reason: no registry, registry
    /// unreachable, a cached negative answer, or a limit.
    pub fn resolve(
        &mut self,
        reg: Option<&mut RegistryClient>,
        now: Instant,
        peer: Addr,
        waiter: W,
    ) -> Result<(), (W, String)> {
        let node = peer.node;
        if let Some(p) = self.pending.get_mut(&node) {
            if p.waiters.len() >= RESOLVE_WAITERS {
                return Err((waiter, "too many requests waiting".to_owned()));
            }
            p.waiters.push(waiter);
            self.stats.coalesced += 1;
            return Ok(());
        }
        if let Some((expiry, reason)) = self.negative.get(&node) {
            if now < *expiry {
                self.stats.negative_hits += 1;
                return Err((waiter, reason.clone()));
            }
            self.negative.remove(&node);
        }
        if self.pending.len() >= MAX_RESOLUTIONS {
            return Err((waiter, "too many resolutions in progress".to_owned()));
        }
        let Some(reg) = reg else {
            return Err((waiter, "no registry configured".to_owned()));
        };
        if reg.is_unreachable() {
            return Err((waiter, REGISTRY_UNREACHABLE.to_owned()));
        }
        match reg.call(now, Call::Lookup(node)) {
            Ok(id) => {
                self.calls.insert(id, Step::Lookup(node));
                self.stats.lookups += 1;
                self.pending.insert(
                    node,
                    Pending {
                        deadline: now + self.cfg.timeout,
                        network: peer.network,
                        key: None,
                        waiters: vec![waiter],
                    },
                );
                Ok(())
            }
            Err(_) => Err((waiter, "registry: queue full".to_owned())),
        }
    }

    /// The identity key of `node` for a held key exchange: the cached one,
    /// or a look-up (paced; refused when `reg` is not registered).
    pub fn fetch_key(
        &mut self,
        reg: Option<&mut RegistryClient>,
        now: Instant,
        node: u32,
    ) -> KeyFetch {
        if let Some(k) = self.keys.get(&node) {
            return KeyFetch::Known(*k);
        }
        if self.key_fetch.contains(&node) {
            return KeyFetch::Started;
        }
        let Some(reg) = reg.filter(|r| r.is_registered()) else {
            self.stats.key_fetches_refused += 1;
            return KeyFetch::Refused;
        };
        if self.key_fetch.len() >= MAX_KEY_FETCHES || !self.take_key_token(now) {
            self.stats.key_fetches_refused += 1;
            return KeyFetch::Refused;
        }
        match reg.call(now, Call::Lookup(node)) {
            Ok(id) => {
                self.calls.insert(id, Step::Key(node));
                self.key_fetch.insert(node);
                self.stats.key_fetches += 1;
                KeyFetch::Started
            }
            Err(_) => {
                self.stats.key_fetches_refused += 1;
                KeyFetch::Refused
            }
        }
    }

    /// Takes one token of the key look-up budget.
    fn take_key_token(&mut self, now: Instant) -> bool {
        let (tokens, at) = self.budget;
        let dt = now.saturating_duration_since(at).as_secs_f64();
        let tokens = (tokens + dt * KEY_LOOKUP_RATE).min(KEY_LOOKUP_BURST);
        let ok = tokens >= 1.0;
        self.budget = (if ok { tokens - 1.0 } else { tokens }, now.max(at));
        ok
    }

    /// The identity key we know for `node`.
    pub fn key(&self, node: u32) -> Option<[u8; 32]> {
        self.keys.get(&node).copied()
    }

    /// Remembers `node`'s registered key (from any source the caller
    /// trusts as much as the registry). Bounded: a new node beyond
    /// [`MAX_PEER_KEYS`] is not remembered.
    pub fn remember_key(&mut self, node: u32, key: [u8; 32]) {
        if self.keys.contains_key(&node) || self.keys.len() < MAX_PEER_KEYS {
            self.keys.insert(node, key);
        }
    }

    /// Forgets the key remembered for `node` (its key exchange carried
    /// another one: it may have rotated its key), so the next
    /// [`Resolver::fetch_key`] asks the registry.
    pub fn forget_key(&mut self, node: u32) {
        self.keys.remove(&node);
    }

    /// Forgets every negative answer (trust changed, so the registry may
    /// answer differently now).
    pub fn clear_negative(&mut self) {
        self.negative.clear();
    }

    /// Whether call `id` is one of the resolver's.
    pub fn owns(&self, id: CallId) -> bool {
        self.calls.contains_key(&id)
    }

    /// The answer of call `id` (a [`ClientEvent::CallDone`] the caller
    /// got). Returns `false` when the call is not the resolver's.
    ///
    /// [`ClientEvent::CallDone`]: crate::registry::client::ClientEvent::CallDone
    pub fn on_call_done(
        &mut self,
        reg: Option<&mut RegistryClient>,
        now: Instant,
        id: CallId,
        result: Result<Response, String>,
    ) -> bool {
        let Some(step) = self.calls.remove(&id) else {
            return false;
        };
        match step {
            Step::Key(node) => self.key_answer(node, result),
            Step::Lookup(node) => self.lookup_answer(reg, now, node, result),
            Step::Resolve(node) => self.resolve_answer(now, node, result),
        }
        true
    }

    fn key_answer(&mut self, node: u32, result: Result<Response, String>) {
        self.key_fetch.remove(&node);
        let key = match result {
            Ok(Response::LookupOk(ok)) => {
                let k = crate::registry::auth::decode_public_key(&ok.public_key).ok();
                if k.is_none() {
                    self.stats.bad_replies += 1;
                }
                k
            }
            Ok(_) => {
                self.stats.bad_replies += 1;
                None
            }
            Err(_) => None,
        };
        match key {
            Some(key) => {
                self.remember_key(node, key);
                self.events.push_back(ResolveEvent::KeyFound { node, key });
            }
            None => self.events.push_back(ResolveEvent::KeyUnknown { node }),
        }
    }

    fn lookup_answer(
        &mut self,
        reg: Option<&mut RegistryClient>,
        now: Instant,
        node: u32,
        result: Result<Response, String>,
    ) {
        let ok = match result {
            Ok(Response::LookupOk(ok)) => ok,
            Ok(_) => {
                self.stats.bad_replies += 1;
                let reason = "registry: unexpected reply to lookup".to_owned();
                return self.fail(now, node, Failure::Local(reason));
            }
            Err(e) => return self.fail(now, node, failure(e)),
        };
        let key = match crate::registry::auth::decode_public_key(&ok.public_key) {
            Ok(k) => Some(k),
            Err(_) => {
                self.stats.bad_replies += 1;
                None
            }
        };
        if let Some(k) = key {
            self.remember_key(node, k);
        }
        if let Some(p) = self.pending.get_mut(&node) {
            p.key = key;
        }
        let endpoint = ok.real_addr.as_deref().or(ok.endpoint.as_deref());
        match endpoint.map(|s| s.parse::<SocketAddr>()) {
            Some(Ok(ep)) => self.found(node, ep),
            Some(Err(_)) => {
                self.stats.bad_replies += 1;
                let reason = format!("registry: bad endpoint for node {node}");
                self.fail(now, node, Failure::Local(reason));
            }
            None => {
                // Private: ask for the endpoint (privacy-gated).
                let started = reg.map(|r| r.call(now, Call::Resolve(node)));
                match started {
                    Some(Ok(id)) => {
                        self.calls.insert(id, Step::Resolve(node));
                        self.stats.resolves += 1;
                    }
                    _ => self.fail(now, node, Failure::Local("registry: queue full".into())),
                }
            }
        }
    }

    fn resolve_answer(&mut self, now: Instant, node: u32, result: Result<Response, String>) {
        match result {
            Ok(Response::ResolveOk(ok)) => match ok.real_addr.parse::<SocketAddr>() {
                Ok(ep) => self.found(node, ep),
                Err(_) if ok.real_addr.is_empty() => {
                    let reason = format!("node {node} has no real address");
                    self.fail(now, node, Failure::Answer(reason));
                }
                Err(_) => {
                    self.stats.bad_replies += 1;
                    let reason = format!("registry: bad endpoint for node {node}");
                    self.fail(now, node, Failure::Local(reason));
                }
            },
            Ok(_) => {
                self.stats.bad_replies += 1;
                let reason = "registry: unexpected reply to resolve".to_owned();
                self.fail(now, node, Failure::Local(reason));
            }
            Err(e) => self.fail(now, node, failure(e)),
        }
    }

    fn found(&mut self, node: u32, endpoint: SocketAddr) {
        if let Some(p) = self.pending.remove(&node) {
            self.events.push_back(ResolveEvent::Found {
                node,
                network: p.network,
                endpoint,
                key: p.key,
                waiters: p.waiters,
            });
        }
    }

    fn fail(&mut self, now: Instant, node: u32, why: Failure) {
        let reason = match why {
            Failure::Answer(r) => {
                if self.negative.len() >= MAX_NEGATIVE && !self.negative.contains_key(&node) {
                    let soonest = self
                        .negative
                        .iter()
                        .min_by_key(|(_, (t, _))| *t)
                        .map(|(n, _)| *n);
                    if let Some(n) = soonest {
                        self.negative.remove(&n);
                    }
                }
                self.negative
                    .insert(node, (now + self.cfg.negative_ttl, r.clone()));
                r
            }
            Failure::Local(r) => r,
        };
        if let Some(p) = self.pending.remove(&node) {
            self.events.push_back(ResolveEvent::Failed {
                node,
                reason,
                waiters: p.waiters,
            });
        }
    }

    /// The registry connection failed: every resolution fails at once with
    /// `reason` (their calls still complete at the client; the answers
    /// are then ignored).
    pub fn fail_all(&mut self, reason: &str) {
        let nodes: Vec<u32> = self.pending.keys().copied().collect();
        for node in nodes {
            if let Some(p) = self.pending.remove(&node) {
                self.events.push_back(ResolveEvent::Failed {
                    node,
                    reason: reason.to_owned(),
                    waiters: p.waiters,
                });
            }
        }
        self.calls
            .retain(|_, s| matches!(s, Step::Key(_)) || self.pending.contains_key(&s.node()));
    }

    /// The registry client no longer holds the calls for which `held` is
    /// false although their answer never came: fail them as lost.
    pub fn reconcile(&mut self, now: Instant, held: impl Fn(CallId) -> bool) {
        let lost: Vec<CallId> = self.calls.keys().copied().filter(|id| !held(*id)).collect();
        for id in lost {
            self.on_call_done(None, now, id, Err("registry: answer lost".to_owned()));
        }
    }

    /// When to call [`Resolver::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Fails the resolutions past their deadline and expires negative
    /// answers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(n, _)| *n)
            .collect();
        for node in late {
            self.stats.timeouts += 1;
            self.fail(now, node, Failure::Local(TIMED_OUT.to_owned()));
        }
        self.negative.retain(|_, (t, _)| *t > now);
        // Calls of resolutions that ended keep their ids until answered;
        // drop the ones nobody waits for any more.
        let pending = &self.pending;
        self.calls
            .retain(|_, s| matches!(s, Step::Key(_)) || pending.contains_key(&s.node()));
    }

    /// The next outcome.
    pub fn poll_event(&mut self) -> Option<ResolveEvent<W>> {
        self.events.pop_front()
    }

    /// Whether an outcome waits in [`Resolver::poll_event`].
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Keeps only the waiters for which `keep` holds (a client went away);
    /// a resolution left without waiters still completes (its answer
    /// updates the caches).
    pub fn retain_waiters(&mut self, mut keep: impl FnMut(&W) -> bool) {
        for p in self.pending.values_mut() {
            p.waiters.retain(&mut keep);
        }
    }

    /// Asserts the invariants (tests): every call belongs to a running
    /// resolution or key fetch and is still held by the registry client;
    /// every running resolution has exactly one call; the bounds hold.
    #[cfg(test)]
    pub(crate) fn check(&self, held: impl Fn(CallId) -> bool) {
        for (id, s) in &self.calls {
            assert!(
                held(*id),
                "resolver call {id:?} not held by the registry client"
            );
            match s {
                Step::Key(n) => assert!(self.key_fetch.contains(n), "key call without fetch"),
                Step::Lookup(n) | Step::Resolve(n) => {
                    assert!(
                        self.pending.contains_key(n),
                        "call for a finished resolution"
                    )
                }
            }
        }
        for n in self.pending.keys() {
            let c = self
                .calls
                .values()
                .filter(|s| !matches!(s, Step::Key(_)) && s.node() == *n);
            assert_eq!(c.count(), 1, "resolution of {n} has one call");
            assert!(self.pending[n].waiters.len() <= RESOLVE_WAITERS);
        }
        for n in &self.key_fetch {
            assert!(
                self.calls.values().any(|s| *s == Step::Key(*n)),
                "fetch without call"
            );
        }
        assert!(self.pending.len() <= MAX_RESOLUTIONS);
        assert!(self.key_fetch.len() <= MAX_KEY_FETCHES);
        assert!(self.keys.len() <= MAX_PEER_KEYS);
        assert!(self.negative.len() <= MAX_NEGATIVE);
    }
}

impl Step {
    fn node(self) -> u32 {
        match self {
            Step::Lookup(n) | Step::Resolve(n) | Step::Key(n) => n,
        }
    }
}

/// Classifies an error result: the registry's own answer is cached; the
/// client giving up (transport) is not.
fn failure(e: String) -> Failure {
    if e == REQUEST_FAILED {
        Failure::Local(format!("registry: {e}"))
    } else {
        Failure::Answer(e)
    }
}

#[cfg(test)]
mod tests;
