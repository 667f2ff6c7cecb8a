//! Whole networks: one rendezvous ([`Rendezvous`]) and N daemon hosts
//! ([`DaemonHost`]) in one [`Sim`], and [`Net`], the harness scenarios and
//! tests use to script them (open applications, send IPC messages, wait
//! for replies in virtual time, restart the rendezvous).
//!
//! Host *i* sits at [`node_addr`]`(i)`; the rendezvous at
//! [`RENDEZVOUS_ADDR`]. The configuration's fault chain covers every
//! datagram between them, the registry's TCP segments included (see
//! [`crate::tcp`] for how loss becomes delay there).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use pilot_proto::addr::Addr;
use pilot_proto::registry::server::Config as RegistryConfig;
use pilot_proto::time::Instant;
use pilot_proto::wire::ipc::IpcMessage;

use crate::config::SimConfig;
use crate::daemon_host::{AppId, DaemonHost, HostConfig, HostEvent};
use crate::engine::{Sim, SimError};
use crate::fault::{FaultChain, Group, Nat, NatFiltering, NatMapping};
use crate::node::{NodeId, SimNode, Transmit, node_addr};
use crate::pilot::wire_profile;
use crate::rendezvous::{OBSERVER_ADDR, RENDEZVOUS_ADDR, Rendezvous, RendezvousEvent};
use crate::seed::Seed;

/// A node of a whole network.
#[allow(clippy::large_enum_variant)]
pub enum NetNode {
    /// The rendezvous (registry and beacon).
    Rendezvous(Rendezvous),
    /// A daemon host.
    Host(Box<DaemonHost>),
    /// Any other node (a forger, a shim) a scenario adds with
    /// [`Net::add_other`].
    Other(Box<dyn SimNode<Event = NetEvent>>),
}

/// What a node of a whole network reports.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum NetEvent {
    /// From a daemon host.
    Host(HostEvent),
    /// From the rendezvous.
    Rendezvous(RendezvousEvent),
}

macro_rules! both {
    ($self:ident, $n:ident => $e:expr) => {
        match $self {
            NetNode::Rendezvous($n) => $e,
            NetNode::Host($n) => $e,
            NetNode::Other($n) => $e,
        }
    };
}

impl SimNode for NetNode {
    type Event = NetEvent;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        both!(self, n => n.handle_datagram(now, from, bytes))
    }

    fn handle_timeout(&mut self, now: Instant) {
        both!(self, n => n.handle_timeout(now))
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        both!(self, n => n.poll_transmit(now, buf))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        both!(self, n => n.poll_timeout())
    }

    fn poll_event(&mut self) -> Option<NetEvent> {
        match self {
            NetNode::Rendezvous(n) => n.poll_event().map(NetEvent::Rendezvous),
            NetNode::Host(n) => n.poll_event().map(NetEvent::Host),
            NetNode::Other(n) => n.poll_event(),
        }
    }
}

/// The registry configuration of simulated networks: the defaults
/// (rate limits on), nothing else.
pub fn registry_config(cfg: &SimConfig) -> RegistryConfig {
    RegistryConfig {
        profile: wire_profile(cfg),
        ..RegistryConfig::default()
    }
}

/// The admin token of [`Net::with_admin`] networks.
pub const SIM_ADMIN_TOKEN: &str = "sim-admin-token";

/// `n` hosts on the plain network (no NAT, no beacon).
fn plain_specs(n: usize, public: impl Fn(usize) -> bool) -> Vec<HostSpec> {
    (0..n)
        .map(|i| HostSpec {
            endpoint: node_addr(i),
            public: public(i),
            beacon: None,
            observer: None,
            keepalive: Some(pilot_proto::daemon::paths::KEEPALIVE),
        })
        .collect()
}

/// A rendezvous and `n` daemon hosts, and what they reported.
pub struct Net {
    /// The simulation.
    pub sim: Sim<NetNode>,
    /// The rendezvous node.
    pub rendezvous: NodeId,
    /// The hosts, by index.
    pub hosts: Vec<NodeId>,
    registry_cfg: RegistryConfig,
    /// Every event: (time, host index or `None` for the
    /// rendezvous, event).
    pub log: Vec<(Instant, Option<usize>, NetEvent)>,
    /// The first engine error; once set, nothing runs any more.
    pub error: Option<SimError>,
    seed: Seed,
    specs: Vec<HostSpec>,
    incarnations: Vec<u64>,
}

impl Net {
    /// Builds the network of `cfg` with `n` hosts; `public(i)` says whether
    /// host `i` is public.
    pub fn new(cfg: &SimConfig, seed: u64, n: usize, public: impl Fn(usize) -> bool) -> Net {
        Net::build(cfg, seed, &plain_specs(n, public), FaultChain::new(), None)
    }

    /// Like [`Net::new`], with [`SIM_ADMIN_TOKEN`] as the registry's admin
    /// token and every daemon's (so daemons may create networks).
    pub fn with_admin(cfg: &SimConfig, seed: u64, n: usize, public: impl Fn(usize) -> bool) -> Net {
        let specs = plain_specs(n, public);
        Net::build(cfg, seed, &specs, FaultChain::new(), Some(SIM_ADMIN_TOKEN))
    }

    /// Builds a network whose hosts sit behind the NAT boxes of `setup`
    /// (host *i* behind `setup.kinds[i]`), every daemon public and using
    /// the rendezvous' beacon. `extra` rules go right behind the NATs.
    pub fn with_nats(cfg: &SimConfig, seed: u64, setup: &NatSetup, extra: FaultChain) -> Net {
        let mut chain = FaultChain::new();
        let mut specs = Vec::new();
        for (i, kind) in setup.kinds.iter().enumerate() {
            let endpoint = nat_private_addr(i, *kind);
            if let Some((mapping, filtering)) = kind.behaviour() {
                let mut nat = Nat::new(
                    nat_public_ip(i, *kind),
                    Group::of([endpoint]),
                    mapping,
                    filtering,
                    40_000,
                    setup.binding_timeout,
                );
                let rebinds: Vec<Instant> = setup
                    .rebinds
                    .iter()
                    .filter(|(h, _)| *h == i)
                    .map(|(_, t)| *t)
                    .collect();
                if !rebinds.is_empty() {
                    nat = nat.with_rebinds(rebinds);
                }
                if let Some(c) = setup.triggers.get(i).cloned().flatten() {
                    nat = nat.with_trigger(c);
                }
                chain.push(nat);
            }
            specs.push(HostSpec {
                endpoint,
                public: true,
                beacon: Some(RENDEZVOUS_ADDR),
                observer: Some(OBSERVER_ADDR),
                keepalive: if setup.keepalive_off.contains(&i) {
                    None
                } else {
                    setup.keepalive
                },
            });
        }
        chain.append(extra);
        Net::build(cfg, seed, &specs, chain, None)
    }

    fn build(
        cfg: &SimConfig,
        seed: u64,
        specs: &[HostSpec],
        prefix: FaultChain,
        admin: Option<&str>,
    ) -> Net {
        let seed = Seed::new(seed);
        let mut addrs: Vec<SocketAddr> = specs.iter().map(|s| s.endpoint).collect();
        addrs.push(RENDEZVOUS_ADDR);
        let mut sim = Sim::new(seed, cfg.faults_after(prefix, seed, &addrs));
        let mut registry_cfg = registry_config(cfg);
        registry_cfg.admin_token = admin.map(str::to_owned);
        let mut error = None;
        let rendezvous = match sim.add_node(
            RENDEZVOUS_ADDR,
            NetNode::Rendezvous(Rendezvous::new(registry_cfg.clone(), Instant::ZERO)),
        ) {
            Ok(id) => id,
            Err(e) => {
                error = Some(e);
                NodeId(0)
            }
        };
        let mut hosts = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let hc = HostConfig {
                index: i,
                incarnation: 0,
                endpoint: spec.endpoint,
                public: spec.public,
                profile: wire_profile(cfg),
                beacon: spec.beacon,
                keepalive: spec.keepalive,
                observer: spec.observer,
                admin_token: admin.unwrap_or_default().as_bytes().to_vec(),
            };
            let host = DaemonHost::new(seed, &hc, Instant::ZERO);
            match sim.add_node(spec.endpoint, NetNode::Host(Box::new(host))) {
                Ok(id) => hosts.push(id),
                Err(e) => error = error.or(Some(e)),
            }
        }
        if specs.iter().any(|s| s.observer.is_some()) {
            if let Err(e) =
                sim.add_node(OBSERVER_ADDR, NetNode::Other(Box::new(Observer::default())))
            {
                error = error.or(Some(e));
            }
        }
        let mut net = Net {
            sim,
            rendezvous,
            hosts,
            registry_cfg,
            log: Vec::new(),
            error,
            seed,
            specs: specs.to_vec(),
            incarnations: vec![0; specs.len()],
        };
        net.collect();
        net
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.hosts.iter().position(|h| *h == id)
    }

    /// Files the events queued so far (outside of a run).
    fn collect(&mut self) {
        while let Some((id, ev)) = self.sim.take_event() {
            self.file(id, ev);
        }
    }

    fn file(&mut self, id: NodeId, ev: NetEvent) {
        let who = self.index_of(id);
        self.log.push((self.sim.now(), who, ev));
    }

    /// Whether the run is still healthy (no engine error).
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        if self.error.is_some() {
            return;
        }
        let mut got = Vec::new();
        let r = self.sim.run_for(d, |_, id, ev| {
            got.push((id, ev));
            Ok(())
        });
        // Events are filed after the run: run_for's callback cannot
        // borrow `self`, and nothing here reacts within the run.
        for (id, ev) in got {
            self.file(id, ev);
        }
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    /// Runs in steps of `step` until `done(self)` holds or `timeout`
    /// passes; returns whether it held.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        step: Duration,
        mut done: impl FnMut(&mut Net) -> bool,
    ) -> bool {
        let end = self.sim.now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if self.error.is_some() || self.sim.now() >= end {
                return false;
            }
            let left = end.saturating_duration_since(self.sim.now());
            self.run_for(step.min(left));
        }
    }

    /// Gives `f` host `i` (for application calls), then drains it.
    pub fn with_host<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut DaemonHost, Instant) -> R,
    ) -> Option<R> {
        let id = *self.hosts.get(i)?;
        let r = self.sim.with_node(id, |n, now| match n {
            NetNode::Host(h) => Some(f(h, now)),
            _ => None,
        });
        self.collect();
        match r {
            Ok(r) => r,
            Err(e) => {
                self.error = self.error.take().or(Some(e));
                None
            }
        }
    }

    /// Read access to host `i`.
    pub fn host(&self, i: usize) -> Option<&DaemonHost> {
        match self.sim.node(*self.hosts.get(i)?)? {
            NetNode::Host(h) => Some(h),
            _ => None,
        }
    }

    /// Read access to the rendezvous.
    pub fn rendezvous(&self) -> Option<&Rendezvous> {
        match self.sim.node(self.rendezvous)? {
            NetNode::Rendezvous(r) => Some(r),
            _ => None,
        }
    }

    /// Crashes host `i` and starts it again at once: the same identity
    /// and endpoint, a new tunnel key, an empty disk (it registers again
    /// and knows no peers).
    pub fn restart_host(&mut self, i: usize) {
        let (Some(&id), Some(spec)) = (self.hosts.get(i), self.specs.get(i).copied()) else {
            return;
        };
        let Some(inc) = self.incarnations.get_mut(i) else {
            return;
        };
        *inc += 1;
        let hc = HostConfig {
            index: i,
            incarnation: *inc,
            endpoint: spec.endpoint,
            public: spec.public,
            profile: self.registry_cfg.profile,
            beacon: spec.beacon,
            keepalive: spec.keepalive,
            observer: spec.observer,
            admin_token: self
                .registry_cfg
                .admin_token
                .clone()
                .unwrap_or_default()
                .into_bytes(),
        };
        let host = DaemonHost::new(self.seed, &hc, self.sim.now());
        if let Err(e) = self.sim.replace_node(id, NetNode::Host(Box::new(host))) {
            self.error = self.error.take().or(Some(e));
        }
        self.collect();
    }

    /// Adds `node` at `addr` (not a host: [`Net::hosts`] does not list
    /// it). The fault chain covers its datagrams like any other's.
    pub fn add_other(&mut self, addr: SocketAddr, node: Box<dyn SimNode<Event = NetEvent>>) {
        if let Err(e) = self.sim.add_node(addr, NetNode::Other(node)) {
            self.error = self.error.take().or(Some(e));
        }
        self.collect();
    }

    /// Host `i`'s virtual address, once registered.
    pub fn addr(&self, i: usize) -> Option<Addr> {
        self.host(i)?.address()
    }

    /// Runs until every host is registered (or `timeout`).
    pub fn wait_registered(&mut self, timeout: Duration) -> bool {
        let n = self.hosts.len();
        self.run_until(timeout, Duration::from_millis(50), |net| {
            (0..n).all(|i| net.addr(i).is_some())
        })
    }

    /// Opens an application on host `i`.
    pub fn open_app(&mut self, i: usize) -> Option<AppId> {
        self.with_host(i, |h, now| h.app_open(now)).flatten()
    }

    /// Application `app` of host `i` sends `msg`, a message that expects
    /// no reply (`Send`, `SendTo`).
    pub fn send(&mut self, i: usize, app: AppId, msg: &IpcMessage<'_>) -> bool {
        self.with_host(i, |h, now| h.app_send(now, app, msg))
            .unwrap_or(false)
    }

    /// Sends the request `msg` from `app` of host `i` through its client
    /// session and waits up to `timeout` for the reply; returns its body.
    /// A request that times out is abandoned (a late reply is dropped, a
    /// late dial closed), as the drivers' clients do.
    pub fn call(
        &mut self,
        i: usize,
        app: AppId,
        msg: &IpcMessage<'_>,
        timeout: Duration,
    ) -> Option<Vec<u8>> {
        if !self
            .with_host(i, |h, now| h.app_request(now, app, msg).is_ok())
            .unwrap_or(false)
        {
            return None;
        }
        let mut reply = None;
        self.run_until(timeout, Duration::from_millis(10), |net| {
            reply = net
                .with_host(i, |h, _| h.session(app).and_then(|s| s.take_reply()))
                .flatten();
            reply.is_some()
        });
        if reply.is_none() {
            self.with_host(i, |h, _| {
                if let Some(s) = h.session(app) {
                    s.abandon_request();
                }
            });
        }
        reply.map(|r| r.into_body())
    }

    /// Takes what stream `conn` of `app` on host `i` received so far;
    /// `true` with it once the stream ended.
    pub fn read(&mut self, i: usize, app: AppId, conn: u32) -> (Vec<u8>, bool) {
        self.with_host(i, |h, now| h.app_read(now, app, conn))
            .unwrap_or((Vec::new(), true))
    }

    /// Closes stream `conn` of `app` on host `i` and waits up to `timeout`
    /// for the daemon's `CloseOk` (the session's end of stream); whether it
    /// came. Data still arriving meanwhile is discarded.
    pub fn close_conn(&mut self, i: usize, app: AppId, conn: u32, timeout: Duration) -> bool {
        if !self
            .with_host(i, |h, now| h.app_close_conn(now, app, conn))
            .unwrap_or(false)
        {
            return false;
        }
        let ok = self.run_until(timeout, Duration::from_millis(10), |net| {
            net.read(i, app, conn).1
        });
        self.with_host(i, |h, _| {
            if let Some(s) = h.session(app) {
                s.forget(conn);
            }
        });
        ok
    }

    /// Crashes the rendezvous (its store survives), leaves it down for
    /// `down`, then restarts it from its store alone.
    pub fn restart_rendezvous(&mut self, down: Duration) {
        let id = self.rendezvous;
        let r = self.sim.with_node(id, |n, _| {
            if let NetNode::Rendezvous(r) = n {
                r.crash();
            }
        });
        self.collect();
        if let Err(e) = r {
            self.error = self.error.take().or(Some(e));
            return;
        }
        self.run_for(down);
        let disk = self
            .rendezvous()
            .map(|r| r.disk.clone())
            .unwrap_or_default();
        let fresh = Rendezvous::restore(self.registry_cfg.clone(), disk, self.sim.now());
        if let Err(e) = self.sim.replace_node(id, NetNode::Rendezvous(fresh)) {
            self.error = self.error.take().or(Some(e));
        }
        self.collect();
    }
}

/// How one host of a [`Net`] is set up.
#[derive(Clone, Copy, Debug)]
struct HostSpec {
    endpoint: SocketAddr,
    public: bool,
    beacon: Option<SocketAddr>,
    observer: Option<SocketAddr>,
    keepalive: Option<Duration>,
}

/// The beacon's observer address: answers discovers with the endpoint it
/// saw ([`pilot_proto::beacon::observe`]), nothing else.
#[derive(Default)]
struct Observer {
    out: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl SimNode for Observer {
    type Event = NetEvent;

    fn handle_datagram(&mut self, _: Instant, from: SocketAddr, bytes: &[u8]) {
        let mut out = [0u8; 64];
        if let Some(n) = pilot_proto::beacon::observe(from, bytes, &mut out) {
            if self.out.len() < 1024 {
                self.out.push_back((from, out[..n].to_vec()));
            }
        }
    }

    fn handle_timeout(&mut self, _: Instant) {}

    fn poll_transmit(&mut self, _: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (dst, b) = self.out.pop_front()?;
        buf.get_mut(..b.len())?.copy_from_slice(&b);
        Some(Transmit { dst, len: b.len() })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn poll_event(&mut self) -> Option<NetEvent> {
        None
    }
}

/// The NAT in front of a host (RFC 4787 behaviours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatKind {
    /// No NAT: the host has a public address.
    None,
    /// Endpoint-independent mapping and filtering ("full cone").
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    Restricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering ("symmetric").
    Symmetric,
}

impl NatKind {
    /// Every kind, in matrix order.
    pub const ALL: [NatKind; 5] = [
        NatKind::None,
        NatKind::FullCone,
        NatKind::Restricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::FullCone => "ei-eif",
            NatKind::Restricted => "ei-adf",
            NatKind::PortRestricted => "ei-apdf",
            NatKind::Symmetric => "symmetric",
        }
    }

    /// Mapping and filtering of the box (`None`: no box).
    pub fn behaviour(self) -> Option<(NatMapping, NatFiltering)> {
        use NatFiltering as F;
        use NatMapping as M;
        match self {
            NatKind::None => None,
            NatKind::FullCone => Some((M::EndpointIndependent, F::EndpointIndependent)),
            NatKind::Restricted => Some((M::EndpointIndependent, F::AddressDependent)),
            NatKind::PortRestricted => Some((M::EndpointIndependent, F::AddressAndPortDependent)),
            NatKind::Symmetric => Some((M::AddressAndPortDependent, F::AddressAndPortDependent)),
        }
    }

    fn symmetric(self) -> bool {
        self == NatKind::Symmetric
    }

    /// Whether a host behind `self` admits a peer whose source port it
    /// has never sent to (it sent to the peer's IP only).
    fn admits_new_port(self) -> bool {
        matches!(
            self,
            NatKind::None | NatKind::FullCone | NatKind::Restricted
        )
    }

    /// Whether hosts behind `a` and `b` can reach each other directly
    /// after a punch: both mappings endpoint-independent (each side's
    /// punch opens its own filter for the other's stable endpoint), or one
    /// symmetric side facing a filter that admits its unpredictable port.
    pub fn direct_expected(a: NatKind, b: NatKind) -> bool {
        match (a.symmetric(), b.symmetric()) {
            (false, false) => true,
            (true, true) => false,
            (true, false) => b.admits_new_port(),
            (false, true) => a.admits_new_port(),
        }
    }
}

/// NAT boxes of a [`Net::with_nats`] network.
#[derive(Clone, Debug)]
pub struct NatSetup {
    /// The NAT in front of each host.
    pub kinds: Vec<NatKind>,
    /// The daemons' keepalive interval (`None`: off).
    pub keepalive: Option<Duration>,
    /// Idle time after which a NAT binding expires.
    pub binding_timeout: Duration,
    /// (host, instant): that host's NAT forgets its bindings then.
    pub rebinds: Vec<(usize, Instant)>,
    /// Per host: a counter whose every increment makes its NAT rebind.
    pub triggers: Vec<Option<std::sync::Arc<std::sync::atomic::AtomicU64>>>,
    /// Hosts whose daemons run without keepalives.
    pub keepalive_off: Vec<usize>,
}

impl NatSetup {
    /// Hosts behind `kinds`, keepalives on, 30 s bindings, no rebinding.
    pub fn new(kinds: Vec<NatKind>) -> Self {
        NatSetup {
            kinds,
            keepalive: Some(pilot_proto::daemon::paths::KEEPALIVE),
            binding_timeout: Duration::from_secs(30),
            rebinds: Vec::new(),
            triggers: Vec::new(),
            keepalive_off: Vec::new(),
        }
    }
}

/// The endpoint of host `i` behind `kind`: a private address behind a
/// box, else its public [`node_addr`].
pub fn nat_private_addr(i: usize, kind: NatKind) -> SocketAddr {
    match kind {
        NatKind::None => node_addr(i),
        _ => SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 168, (i + 1) as u8, 2)),
            crate::node::SIM_PORT,
        ),
    }
}

/// The public IP of host `i` behind `kind`.
pub fn nat_public_ip(i: usize, kind: NatKind) -> IpAddr {
    match kind {
        NatKind::None => node_addr(i).ip(),
        _ => IpAddr::V4(Ipv4Addr::new(10, 201, 0, (i + 1) as u8)),
    }
}
