//! Unit tests of the registry state machine.

use super::*;
use crate::registry::auth::Identity;
use crate::registry::codec::*;

const T0_SECS: u64 = 1_767_225_600;

fn t(secs: u64) -> UnixTime {
    UnixTime::from_nanos((T0_SECS + secs) * 1_000_000_000)
}

fn peer() -> SocketAddr {
    "127.0.0.1:5555".parse().unwrap()
}

fn ident(seed: u8) -> Identity {
    Identity::from_seed(&[seed; 32])
}

struct H {
    reg: Registry,
    now: UnixTime,
    log: Vec<Change>,
    start: UnixTime,
}

impl H {
    fn new(config: Config) -> Self {
        H {
            reg: Registry::new(config, t(0)),
            now: t(0),
            log: Vec::new(),
            start: t(0),
        }
    }

    fn current() -> Self {
        Self::new(Config {
            admin_token: Some("adm".into()),
            ..Config::default()
        })
    }

    fn legacy() -> Self {
        Self::new(Config {
            profile: WireProfile::Legacy,
            ..Config::default()
        })
    }

    fn send(&mut self, req: Request) -> Reply {
        let reply = self.reg.handle(self.now, peer(), req);
        for e in &reply.effects {
            if let Effect::Persist(c) = e {
                self.log.push(c.clone());
            }
        }
        reply
    }

    fn ok(&mut self, req: Request) -> Response {
        let r = self.send(req);
        assert!(r.error.is_none(), "unexpected error {:?}", r.error);
        r.response
    }

    fn err(&mut self, req: Request) -> RegistryError {
        let r = self.send(req);
        match r.error {
            Some(e) => e,
            None => panic!("expected an error, got {:?}", r.response),
        }
    }

    fn register(&mut self, seed: u8) -> u32 {
        self.register_with(seed, "", "")
    }

    fn register_with(&mut self, seed: u8, owner: &str, hostname: &str) -> u32 {
        match self.ok(Request::Register(Register {
            listen_addr: "0.0.0.0:4000".into(),
            public_key: ident(seed).public_key_b64(),
            owner: owner.into(),
            hostname: hostname.into(),
            ..Default::default()
        })) {
            Response::RegisterOk(r) => r.node_id,
            other => panic!("{other:?}"),
        }
    }

    fn advance(&mut self, secs: u64) -> Vec<Effect> {
        self.now = self.now + Duration::from_secs(secs);
        let eff = self.reg.handle_timeout(self.now);
        for e in &eff {
            if let Effect::Persist(c) = e {
                self.log.push(c.clone());
            }
        }
        eff
    }

    /// Replaying every persisted change on a fresh state gives the same state.
    fn check_replay(&self) {
        let mut s = State::new(self.start);
        for c in &self.log {
            s.apply(c);
        }
        assert_eq!(&s, self.reg.state());
        // The same log survives a JSON round trip (drivers store it so).
        let mut j = State::new(self.start);
        for c in &self.log {
            let text = serde_json::to_vec(c).unwrap();
            let back: Change = serde_json::from_slice(&text).unwrap();
            assert_eq!(&back, c);
            j.apply(&back);
        }
        assert_eq!(&j, self.reg.state());
        // Change by change, the touched records written to a store load
        // back as the same state.
        let mut s = State::new(self.start);
        let mut store = std::collections::BTreeMap::new();
        let full = crate::registry::records::ChangeSet::full(&s).unwrap();
        crate::registry::records::mem::apply(&mut store, &full);
        for c in &self.log {
            s.apply(c);
            let set =
                crate::registry::records::ChangeSet::from_changes(&s, std::slice::from_ref(c))
                    .unwrap();
            crate::registry::records::mem::apply(&mut store, &set);
        }
        assert_eq!(
            &crate::registry::records::mem::load(&store, self.start),
            self.reg.state()
        );
    }
}

fn sig(seed: u8, challenge: &str) -> String {
    ident(seed).sign_b64(challenge.as_bytes())
}

fn hb(id: u32, seed: u8) -> Request {
    Request::Heartbeat(Heartbeat {
        node_id: id,
        signature: sig(seed, &format!("heartbeat:{id}")),
        sig_ts: None,
    })
}

fn resolve(req: u32, seed: u8, target: u32) -> Request {
    Request::Resolve(Resolve {
        node_id: target,
        requester_id: req,
        signature: sig(seed, &format!("resolve:{req}:{target}")),
        sig_ts: None,
    })
}

fn set_public(id: u32, seed: u8, public: bool) -> Request {
    Request::SetVisibility(SetVisibility {
        node_id: id,
        public,
        signature: sig(seed, &format!("set_visibility:{id}")),
        ..Default::default()
    })
}

fn trust(id: u32, seed: u8, peer: u32) -> Request {
    Request::ReportTrust(TrustPair {
        node_id: id,
        peer_id: peer,
        signature: sig(seed, &format!("report_trust:{id}:{peer}")),
        sig_ts: None,
    })
}

fn join(id: u32, seed: u8, net: u16, token: &str) -> Request {
    Request::JoinNetwork(JoinNetwork {
        node_id: id,
        network_id: net,
        token: token.into(),
        signature: sig(seed, &format!("join_network:{id}:{net}")),
        ..Default::default()
    })
}

fn create(h: &mut H, creator: u32, name: &str, rule: &str, token: &str) -> u16 {
    match h.ok(Request::CreateNetwork(CreateNetwork {
        node_id: creator,
        name: name.into(),
        join_rule: rule.into(),
        token: token.into(),
        admin_token: "adm".into(),
    })) {
        Response::CreateNetworkOk { network_id, .. } => network_id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn register_first_node_matches_reference_bytes() {
    let mut h = H::legacy();
    let r = h.ok(Request::Register(Register {
        listen_addr: "0.0.0.0:4000".into(),
        public_key: "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=".into(),
        ..Default::default()
    }));
    assert_eq!(
        encode_response(&r).unwrap(),
        br#"{"address":"0:0000.0000.0001","network_id":0,"node_id":1,"public_key":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=","type":"register_ok"}"#
    );
    assert_eq!(h.reg.state().nodes[&1].real_addr, "127.0.0.1:4000");
    h.check_replay();
}

#[test]
fn register_current_reports_observed_addr_and_ids_increase() {
    let mut h = H::current();
    let r = h.ok(Request::Register(Register {
        listen_addr: "198.51.100.7:4000".into(),
        public_key: ident(1).public_key_b64(),
        ..Default::default()
    }));
    let Response::RegisterOk(r) = r else { panic!() };
    assert_eq!(r.observed_addr.as_deref(), Some("198.51.100.7:4000"));
    assert_eq!(r.protocol_version, Some(1));
    assert_eq!(h.register(2), 2);
    assert_eq!(h.register(3), 3);
    // Private listen address → TCP source IP with the listen port.
    assert_eq!(h.reg.state().nodes[&2].real_addr, "127.0.0.1:4000");
    for (listen, stored) in [
        ("[2001:db8::7]:4100", "[2001:db8::7]:4100"),
        ("[fe80::1]:4101", "127.0.0.1:4101"),
        ("10.1.2.3:4102", "127.0.0.1:4102"),
        (":4103", "127.0.0.1:4103"),
        ("some.host.example:4104", "127.0.0.1:4104"),
        ("garbage", "127.0.0.1:5555"),
    ] {
        let Response::RegisterOk(r) = h.ok(Request::Register(Register {
            listen_addr: listen.into(),
            public_key: ident(9).public_key_b64(),
            ..Default::default()
        })) else {
            panic!()
        };
        assert_eq!(r.observed_addr.as_deref(), Some(stored), "{listen}");
    }
    h.check_replay();
}

#[test]
fn register_errors() {
    let mut h = H::current();
    let e = h.err(Request::Register(Register::default()));
    assert_eq!(e, RegistryError::PublicKeyRequired);
    let e = h.err(Request::Register(Register {
        public_key: "AAAA".into(),
        ..Default::default()
    }));
    assert_eq!(
        e,
        RegistryError::InvalidPublicKey(auth::KeyError::Length(3))
    );
    // The all-zero key is a curve point of order 4: refused, with a reason.
    let e = h.err(Request::Register(Register {
        listen_addr: "0.0.0.0:4000".into(),
        public_key: auth::encode_public_key(&[0; 32]),
        ..Default::default()
    }));
    assert_eq!(
        e,
        RegistryError::InvalidPublicKey(auth::KeyError::SmallOrder)
    );
    assert_eq!(e.to_string(), "invalid public key: small-order Ed25519 key");
    assert!(h.reg.state().nodes.is_empty());
    assert!(h.log.is_empty(), "a refused key leaves no trace");
}

#[test]
fn registration_rate_limit_exempts_known_keys() {
    let mut h = H::current();
    for seed in 1..=10 {
        h.register(seed);
    }
    let e = h.err(Request::Register(Register {
        listen_addr: "0.0.0.0:4000".into(),
        public_key: ident(11).public_key_b64(),
        ..Default::default()
    }));
    assert_eq!(e, RegistryError::RegisterRateLimited(peer().ip()));
    assert_eq!(
        h.send(Request::Register(Register {
            public_key: ident(11).public_key_b64(),
            ..Default::default()
        }))
        .response,
        Response::error("rate limited: too many registrations from 127.0.0.1")
    );
    // A known key re-registers even with the bucket empty.
    assert_eq!(h.register(3), 3);
    // Six seconds later one token is back.
    h.now = h.now + Duration::from_secs(6);
    assert_eq!(h.register(11), 11);
}

#[test]
fn register_hostname_handling() {
    let mut h = H::current();
    let a = h.register_with(1, "", "alice");
    assert_eq!(h.reg.state().nodes[&a].hostname, "alice");
    let r = h.ok(Request::Register(Register {
        public_key: ident(2).public_key_b64(),
        hostname: "alice".into(),
        ..Default::default()
    }));
    let Response::RegisterOk(r) = r else { panic!() };
    assert_eq!(r.hostname, None);
    assert_eq!(
        r.hostname_error.as_deref(),
        Some("hostname \"alice\" already in use")
    );
    let r = h.ok(Request::Register(Register {
        public_key: ident(3).public_key_b64(),
        hostname: "Bad_Name".into(),
        ..Default::default()
    }));
    let Response::RegisterOk(r) = r else { panic!() };
    assert!(r.hostname_error.unwrap().starts_with("hostname must be"));
    // Legacy: a taken name is silently not applied.
    let mut l = H::legacy();
    l.register_with(1, "", "alice");
    let Response::RegisterOk(r) = l.ok(Request::Register(Register {
        public_key: ident(2).public_key_b64(),
        hostname: "alice".into(),
        ..Default::default()
    })) else {
        panic!()
    };
    assert_eq!((r.hostname, r.hostname_error), (None, None));
}

#[test]
fn reregistration_deregistration_and_reaping_keep_the_id() {
    let mut h = H::current();
    let a = h.register_with(1, "", "alice");
    let b = h.register(2);
    assert_eq!(h.register(1), a);
    // Deregister: node gone, hostname freed, key remembered.
    let dereg = Request::Deregister(Deregister {
        node_id: a,
        signature: sig(1, &format!("deregister:{a}")),
        ..Default::default()
    });
    assert_eq!(h.ok(dereg.clone()), Response::DeregisterOk {});
    assert!(!h.reg.state().nodes.contains_key(&a));
    assert!(!h.reg.state().hostname_idx.contains_key("alice"));
    assert!(!h.reg.state().networks[&0].members.contains(&a));
    // Unknown node: success, idempotent.
    assert_eq!(h.ok(dereg), Response::DeregisterOk {});
    assert_eq!(h.register(1), a);
    assert_eq!(h.reg.state().nodes[&a].hostname, "");
    // Reaping: b stays silent, a heartbeats.
    h.advance(100);
    h.ok(hb(a, 1));
    h.advance(70);
    assert!(
        h.reg.state().nodes.contains_key(&b),
        "b silent 170 s <= 180 s"
    );
    h.advance(60);
    assert!(
        !h.reg.state().nodes.contains_key(&b),
        "b silent 230 s > 180 s"
    );
    assert!(h.reg.state().nodes.contains_key(&a));
    assert_eq!(h.register(2), b);
    h.check_replay();
}

#[test]
fn deregister_requires_signature_or_admin_token() {
    let mut h = H::current();
    let a = h.register(1);
    let e = h.err(Request::Deregister(Deregister {
        node_id: a,
        signature: sig(2, &format!("deregister:{a}")),
        ..Default::default()
    }));
    assert_eq!(e, RegistryError::Signature(SigError::Failed));
    h.ok(Request::Deregister(Deregister {
        node_id: a,
        admin_token: "adm".into(),
        ..Default::default()
    }));
    assert!(h.reg.state().nodes.is_empty());
}

#[test]
fn owner_reclaim() {
    let mut h = H::current();
    let a = h.register_with(1, "a@example.com", "");
    // New key, same owner, node live: the key is replaced.
    assert_eq!(h.register_with(2, "a@example.com", ""), a);
    let s = h.reg.state();
    assert_eq!(s.nodes[&a].public_key, ident(2).public_key());
    assert!(!s.pub_key_idx.contains_key(&ident(1).public_key()));
    // Reaped owner node comes back under the owner's ID with a third key.
    h.advance(400);
    assert!(h.reg.state().nodes.is_empty());
    assert_eq!(h.register_with(3, "a@example.com", ""), a);
    h.check_replay();
    // Switched off: a new ID.
    let mut off = H::new(Config {
        owner_reclaim: false,
        ..Config::default()
    });
    let x = off.register_with(1, "o", "");
    assert_ne!(off.register_with(2, "o", ""), x);
}

#[test]
fn lookup_public_and_private() {
    let mut h = H::current();
    let a = h.register(1);
    let Response::LookupOk(l) = h.ok(Request::Lookup(Lookup { node_id: a })) else {
        panic!()
    };
    assert_eq!((l.public, l.real_addr, l.endpoint), (false, None, None));
    assert_eq!(l.networks, vec![0]);
    assert_eq!(l.polo_score, None);
    h.ok(set_public(a, 1, true));
    let Response::LookupOk(l) = h.ok(Request::Lookup(Lookup { node_id: a })) else {
        panic!()
    };
    assert_eq!(l.real_addr.as_deref(), Some("127.0.0.1:4000"));
    assert_eq!(l.endpoint.as_deref(), Some("127.0.0.1:4000"));
    assert_eq!(
        h.err(Request::Lookup(Lookup { node_id: 9 })),
        RegistryError::NodeNotFound(9)
    );
    let mut l = H::legacy();
    let a = l.register(1);
    let Response::LookupOk(x) = l.ok(Request::Lookup(Lookup { node_id: a })) else {
        panic!()
    };
    assert_eq!(x.polo_score, Some(0));
}

/// The privacy rules of `resolve` as a table.
#[test]
fn resolve_privacy_table() {
    #[derive(Debug, Clone, Copy)]
    enum Situation {
        PublicTarget,
        PrivateNoTrust,
        PrivateTrustPair,
        PrivateTrustReportedByTarget,
        SharedNetwork,
        SharedBackboneOnly,
        SharedNetworkThenLeft,
        RequesterUnknown,
        TargetUnknown,
        TargetReaped,
        SelfResolve,
        BadSignature,
    }
    use Situation::*;
    let table: [(Situation, Result<(), RegistryError>); 12] = [
        (PublicTarget, Ok(())),
        (PrivateNoTrust, Err(RegistryError::Private(2))),
        (PrivateTrustPair, Ok(())),
        (PrivateTrustReportedByTarget, Ok(())),
        (SharedNetwork, Ok(())),
        (SharedBackboneOnly, Err(RegistryError::Private(2))),
        (SharedNetworkThenLeft, Err(RegistryError::Private(2))),
        (
            RequesterUnknown,
            Err(RegistryError::RequesterNotRegistered(7)),
        ),
        (TargetUnknown, Err(RegistryError::NodeNotFound(9))),
        (TargetReaped, Err(RegistryError::NodeNotFound(2))),
        (SelfResolve, Ok(())),
        (
            BadSignature,
            Err(RegistryError::Signature(SigError::Failed)),
        ),
    ];
    for (situation, expected) in table {
        let mut h = H::current();
        let a = h.register(1);
        let b = h.register(2);
        assert_eq!((a, b), (1, 2));
        let mut req = resolve(a, 1, b);
        match situation {
            PublicTarget => {
                h.ok(set_public(b, 2, true));
            }
            PrivateNoTrust | SharedBackboneOnly => {}
            PrivateTrustPair => {
                h.ok(trust(a, 1, b));
            }
            PrivateTrustReportedByTarget => {
                h.ok(trust(b, 2, a));
            }
            SharedNetwork | SharedNetworkThenLeft => {
                let n = create(&mut h, a, "lab", "open", "");
                h.ok(join(b, 2, n, ""));
                if matches!(situation, SharedNetworkThenLeft) {
                    h.ok(Request::LeaveNetwork(LeaveNetwork {
                        node_id: b,
                        network_id: n,
                        signature: sig(2, &format!("leave_network:{b}:{n}")),
                        ..Default::default()
                    }));
                }
            }
            RequesterUnknown => req = resolve(7, 1, b),
            TargetUnknown => req = resolve(a, 1, 9),
            TargetReaped => {
                h.advance(120);
                h.ok(hb(a, 1));
                h.advance(120);
            }
            SelfResolve => req = resolve(a, 1, a),
            BadSignature => req = resolve(a, 3, b),
        }
        let reply = h.send(req);
        match (&expected, &reply.error) {
            (Ok(()), None) => {
                let Response::ResolveOk(r) = reply.response else {
                    panic!()
                };
                assert_eq!(r.real_addr, "127.0.0.1:4000", "{situation:?}");
            }
            (Err(e), Some(got)) => assert_eq!(e, got, "{situation:?}"),
            _ => panic!("{situation:?}: expected {expected:?}, got {reply:?}"),
        }
    }
}

#[test]
fn resolve_hostname_gating() {
    let mut h = H::current();
    let a = h.register_with(1, "", "alice");
    let b = h.register(2);
    let q = |req: u32| {
        Request::ResolveHostname(ResolveHostname {
            hostname: "alice".into(),
            requester_id: req,
        })
    };
    assert_eq!(h.err(q(0)), RegistryError::HostnameNotFound("alice".into()));
    assert_eq!(h.err(q(b)), RegistryError::HostnameNotFound("alice".into()));
    let Response::ResolveHostnameOk { node_id, .. } = h.ok(q(a)) else {
        panic!()
    };
    assert_eq!(node_id, a);
    h.ok(trust(a, 1, b));
    h.ok(q(b));
    h.ok(set_public(a, 1, true));
    h.ok(q(0));
    assert_eq!(
        h.err(Request::ResolveHostname(ResolveHostname::default())),
        RegistryError::HostnameRequired
    );
    // Legacy: no gating.
    let mut l = H::legacy();
    l.register_with(1, "", "alice");
    l.ok(q(0));
}

#[test]
fn heartbeat_paths() {
    let mut h = H::current();
    let a = h.register(1);
    h.now = t(10);
    let r = h.send(hb(a, 1));
    assert_eq!(r.response, Response::HeartbeatOk { time: T0_SECS + 10 });
    assert!(matches!(&r.effects[..], [Effect::Persist(c @ Change::Touch { .. })] if c.is_lazy()));
    assert_eq!(h.err(hb(5, 1)), RegistryError::NodeNotFound(5));
    assert_eq!(h.err(hb(a, 2)), RegistryError::Signature(SigError::Failed));
    let no_sig = Request::Heartbeat(Heartbeat {
        node_id: a,
        ..Default::default()
    });
    assert_eq!(h.err(no_sig), RegistryError::Signature(SigError::Missing));
    h.check_replay();
}

#[test]
fn hostname_visibility_tags_task_exec() {
    let mut h = H::current();
    let a = h.register(1);
    let b = h.register(2);
    let set_host = |id: u32, seed: u8, name: &str| {
        Request::SetHostname(SetHostname {
            node_id: id,
            hostname: name.into(),
            signature: sig(seed, &format!("set_hostname:{id}")),
            ..Default::default()
        })
    };
    assert_eq!(
        h.ok(set_host(a, 1, "alice")),
        Response::SetHostnameOk {
            hostname: "alice".into(),
            node_id: a
        }
    );
    assert_eq!(
        h.err(set_host(b, 2, "alice")),
        RegistryError::HostnameTaken {
            hostname: "alice".into(),
            node_id: a
        }
    );
    assert!(matches!(
        h.err(set_host(b, 2, "localhost")),
        RegistryError::InvalidHostname(_)
    ));
    assert_eq!(
        h.err(set_host(b, 2, "Alice")).to_string(),
        "invalid hostname: hostname must be lowercase alphanumeric with hyphens, start/end with alphanumeric"
    );
    h.ok(set_host(a, 1, "alice2"));
    h.ok(set_host(b, 2, "alice"));
    h.ok(set_host(a, 1, ""));
    assert_eq!(h.reg.state().hostname_idx.len(), 1);
    assert_eq!(
        h.ok(set_public(a, 1, true)),
        Response::SetVisibilityOk {
            node_id: a,
            visibility: "public".into()
        }
    );
    let tags = |v: &[&str]| {
        Request::SetTags(SetTags {
            node_id: a,
            tags: v.iter().map(|s| s.to_string()).collect(),
            signature: sig(1, &format!("set_tags:{a}")),
            ..Default::default()
        })
    };
    assert_eq!(
        h.ok(tags(&["#gpu", "eu"])),
        Response::SetTagsOk {
            node_id: a,
            tags: Some(vec!["gpu".into(), "eu".into()])
        }
    );
    assert_eq!(
        h.err(tags(&["x"; 11])),
        RegistryError::Tags(crate::registry::validate::NameError::TooManyTags)
    );
    assert_eq!(
        h.ok(tags(&[])),
        Response::SetTagsOk {
            node_id: a,
            tags: None
        }
    );
    let te = Request::SetTaskExec(SetTaskExec {
        node_id: a,
        enabled: true,
        signature: sig(1, &format!("set_task_exec:{a}")),
        sig_ts: None,
    });
    assert_eq!(
        h.ok(te),
        Response::SetTaskExecOk {
            node_id: a,
            task_exec: true
        }
    );
    assert!(h.reg.state().nodes[&a].task_exec);
    // Admin token overrides a missing signature for set_hostname.
    h.ok(Request::SetHostname(SetHostname {
        node_id: a,
        hostname: "ops".into(),
        admin_token: "adm".into(),
        ..Default::default()
    }));
    h.check_replay();
}

#[test]
fn rotate_key_paths() {
    let mut h = H::current();
    let a = h.register(1);
    let rot = |seed: u8, new: String| {
        Request::RotateKey(RotateKey {
            node_id: a,
            new_public_key: new,
            signature: sig(seed, &format!("rotate:{a}")),
            sig_ts: None,
        })
    };
    assert_eq!(
        h.err(Request::RotateKey(RotateKey {
            node_id: a,
            new_public_key: ident(2).public_key_b64(),
            ..Default::default()
        })),
        RegistryError::RotateNeedsSignature
    );
    assert_eq!(h.err(rot(1, String::new())), RegistryError::RotateNeedsKey);
    assert!(matches!(
        h.err(rot(1, "xx".into())),
        RegistryError::InvalidNewKey(_)
    ));
    assert_eq!(
        h.err(rot(3, ident(2).public_key_b64())),
        RegistryError::Signature(SigError::Failed)
    );
    let b = h.register(5);
    assert_eq!(
        h.err(rot(1, ident(5).public_key_b64())),
        RegistryError::NewKeyInUse(b)
    );
    let r = h.ok(rot(1, ident(2).public_key_b64()));
    assert_eq!(
        r,
        Response::RotateKeyOk {
            address: "0:0000.0000.0001".into(),
            node_id: a,
            public_key: ident(2).public_key_b64()
        }
    );
    // The new key signs now; the old one does not.
    h.ok(hb(a, 2));
    assert_eq!(h.err(hb(a, 1)), RegistryError::Signature(SigError::Failed));
    assert_eq!(h.register(2), a);
    h.check_replay();
}

/// Key rotation end to end in the state machine (`spec/registry.md`
/// §3.11): every refusal a node that lost its key (or an attacker holding
/// only the node ID, the owner string or the retired key) meets, the retry
/// of a rotation whose reply was lost, the cool-down, and persistence.
#[test]
fn rotate_key_retires_the_old_key_and_refuses_hijacks() {
    let mut h = H::current();
    let a = h.register_with(1, "alice@x", "");
    let rot = |signer: u8, new: u8| {
        Request::RotateKey(RotateKey {
            node_id: a,
            new_public_key: ident(new).public_key_b64(),
            signature: sig(signer, &format!("rotate:{a}")),
            sig_ts: None,
        })
    };
    let ok = |new: u8| Response::RotateKeyOk {
        address: "0:0000.0000.0001".into(),
        node_id: a,
        public_key: ident(new).public_key_b64(),
    };
    assert_eq!(h.ok(rot(1, 2)), ok(2));
    let n = h.reg.state().nodes[&a].clone();
    assert_eq!((n.key_rot_count, n.key_rotated_ns), (1, h.now.as_nanos()));
    assert_eq!(
        h.reg.state().retired_keys.get(&ident(1).public_key()),
        Some(&a)
    );
    assert!(
        !h.reg
            .state()
            .pub_key_idx
            .contains_key(&ident(1).public_key())
    );

    // (what, request, expected refusal); state must not change.
    let rows: Vec<(&str, Request, RegistryError)> = vec![
        (
            "old key signs another rotation",
            rot(1, 3),
            RegistryError::Signature(SigError::Failed),
        ),
        (
            "someone with only the node ID and an own key",
            rot(9, 9),
            RegistryError::Signature(SigError::Failed),
        ),
        (
            "admin token does not stand in for the signature",
            Request::RotateKey(RotateKey {
                node_id: a,
                new_public_key: ident(3).public_key_b64(),
                signature: sig(9, &format!("rotate:{a}")),
                sig_ts: None,
            }),
            RegistryError::Signature(SigError::Failed),
        ),
        (
            "retired key heartbeats",
            hb(a, 1),
            RegistryError::Signature(SigError::Failed),
        ),
        (
            "retired key registers",
            Request::Register(Register {
                listen_addr: "0.0.0.0:4000".into(),
                public_key: ident(1).public_key_b64(),
                ..Default::default()
            }),
            RegistryError::KeyRetired(a),
        ),
        (
            "a new key claims the owner string",
            Request::Register(Register {
                listen_addr: "0.0.0.0:4000".into(),
                public_key: ident(7).public_key_b64(),
                owner: "alice@x".into(),
                ..Default::default()
            }),
            RegistryError::ReclaimRotated(a),
        ),
        (
            "new key rotates again at once",
            rot(2, 3),
            RegistryError::RotateTooSoon(a, 0, 10),
        ),
    ];
    for (what, req, want) in rows {
        let before = h.reg.state().clone();
        assert_eq!(h.err(req), want, "{what}");
        assert_eq!(h.reg.state(), &before, "{what} changed the state");
    }
    // The rotation's reply was lost and the node retries it, still signed
    // by the old key: the same answer, nothing changes.
    let before = h.reg.state().clone();
    assert_eq!(h.ok(rot(1, 2)), ok(2));
    assert_eq!(h.reg.state(), &before);
    h.ok(hb(a, 2));
    assert_eq!(h.register(2), a);

    h.advance(10);
    h.ok(hb(a, 2));
    // A retired key never comes back, for this node or another.
    assert_eq!(h.err(rot(2, 1)), RegistryError::NewKeyUsed(a));
    assert_eq!(h.ok(rot(2, 3)), ok(3));
    assert_eq!(h.reg.state().nodes[&a].key_rot_count, 2);
    // The retry of the first rotation no longer matches anything.
    assert_eq!(h.err(rot(1, 2)), RegistryError::Signature(SigError::Failed));

    // Reaped and back: only the current key recreates the node; the
    // retired ones and the owner string stay refused.
    h.advance(3600);
    assert!(!h.reg.state().nodes.contains_key(&a));
    assert_eq!(
        h.err(Request::Register(Register {
            listen_addr: "0.0.0.0:4000".into(),
            public_key: ident(2).public_key_b64(),
            ..Default::default()
        })),
        RegistryError::KeyRetired(a)
    );
    assert_eq!(
        h.err(Request::Register(Register {
            listen_addr: "0.0.0.0:4000".into(),
            public_key: ident(7).public_key_b64(),
            owner: "alice@x".into(),
            ..Default::default()
        })),
        RegistryError::ReclaimRotated(a)
    );
    assert_eq!(h.register(3), a);
    h.check_replay();
    // The snapshot export carries the retired keys and the counters.
    let snap = crate::registry::snapshot::Snapshot::from_state(h.reg.state());
    assert_eq!(snap.retired_keys.len(), 2);
    let (back, _) = snap.into_state(h.now);
    assert_eq!(back.retired_keys, h.reg.state().retired_keys);
}

#[test]
fn trust_pairs() {
    let mut h = H::current();
    let a = h.register(1);
    let b = h.register(2);
    assert_eq!(h.err(trust(a, 1, 9)), RegistryError::NodeNotFound(9));
    h.ok(trust(a, 1, b));
    h.ok(trust(a, 1, b));
    assert!(h.reg.state().trust_pairs.contains(&(1, 2)));
    assert_eq!(
        h.ok(Request::CheckTrust(CheckTrust {
            node_id: b,
            peer_id: a
        })),
        Response::CheckTrustOk { trusted: true }
    );
    let revoke = Request::RevokeTrust(TrustPair {
        node_id: b,
        peer_id: a,
        signature: sig(2, &format!("revoke_trust:{b}:{a}")),
        sig_ts: None,
    });
    assert_eq!(h.ok(revoke.clone()), Response::RevokeTrustOk {});
    assert_eq!(h.err(revoke), RegistryError::NoTrustPair(b, a));
    // Trust pairs survive reaping.
    h.ok(trust(a, 1, b));
    h.advance(400);
    assert!(h.reg.state().nodes.is_empty());
    assert!(h.reg.state().has_trust(a, b));
    h.check_replay();
}

fn hs_request(from: u32, seed: u8, to: u32, why: &str) -> Request {
    Request::RequestHandshake(RequestHandshake {
        from_node_id: from,
        to_node_id: to,
        justification: why.into(),
        signature: sig(seed, &format!("handshake:{from}:{to}")),
        sig_ts: None,
    })
}

fn poll(id: u32, seed: u8) -> Request {
    Request::PollHandshakes(PollHandshakes {
        node_id: id,
        signature: sig(seed, &format!("poll_handshakes:{id}")),
        sig_ts: None,
        push: false,
    })
}

fn respond(id: u32, seed: u8, peer: u32, accept: bool) -> Request {
    Request::RespondHandshake(RespondHandshake {
        node_id: id,
        peer_id: peer,
        accept,
        signature: sig(seed, &format!("respond:{id}:{peer}")),
        sig_ts: None,
    })
}

#[test]
fn push_opt_in_needs_a_valid_poll_and_revocation_notifies() {
    let mut h = H::current();
    let a = h.register(1);
    let b = h.register(2);
    let with_push = |id: u32, seed: u8| {
        Request::PollHandshakes(PollHandshakes {
            node_id: id,
            signature: sig(seed, &format!("poll_handshakes:{id}")),
            sig_ts: None,
            push: true,
        })
    };
    // A plain poll asks for nothing; a bad signature binds nothing.
    assert!(!h.send(poll(a, 1)).effects.contains(&Effect::PushWanted(a)));
    let forged = h.send(with_push(a, 9));
    assert!(forged.error.is_some());
    assert!(!forged.effects.contains(&Effect::PushWanted(a)));
    assert!(
        h.send(with_push(a, 1))
            .effects
            .contains(&Effect::PushWanted(a))
    );
    // Revoking a pair tells the other side.
    h.ok(Request::ReportTrust(TrustPair {
        node_id: a,
        peer_id: b,
        signature: sig(1, &format!("report_trust:{a}:{b}")),
        sig_ts: None,
    }));
    let r = h.send(Request::RevokeTrust(TrustPair {
        node_id: b,
        peer_id: a,
        signature: sig(2, &format!("revoke_trust:{b}:{a}")),
        sig_ts: None,
    }));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(
        r.effects
            .contains(&Effect::Notify(Notification::TrustRevoked {
                to: a,
                from: b
            }))
    );
}

#[test]
fn handshake_relay() {
    let mut h = H::current();
    let a = h.register(1);
    let b = h.register(2);
    // Accepting a request that never existed is refused.
    assert_eq!(
        h.err(respond(b, 2, a, true)),
        RegistryError::NoPendingHandshake(a)
    );
    h.now = t(5);
    let r = h.send(hs_request(a, 1, b, "hi"));
    assert_eq!(
        r.response,
        Response::RequestHandshakeOk {
            status: "delivered".into()
        }
    );
    assert!(
        r.effects
            .contains(&Effect::Notify(Notification::HandshakeRequest {
                to: b,
                from: a
            }))
    );
    // Asked again while the first waits: delivered, and the inbox keeps
    // the one entry (checked by the poll below).
    let again = h.send(hs_request(a, 1, b, "again"));
    assert_eq!(
        again.response,
        Response::RequestHandshakeOk {
            status: "delivered".into()
        }
    );
    assert_eq!(
        h.err(hs_request(a, 1, b, &"x".repeat(1025))),
        RegistryError::JustificationTooLong
    );
    assert_eq!(
        h.err(hs_request(a, 1, 77, "")),
        RegistryError::NodeNotFound(77)
    );
    let polled = h.ok(poll(b, 2));
    assert_eq!(
        encode_response(&polled).unwrap(),
        format!(
            r#"{{"requests":[{{"from_node_id":1,"justification":"hi","timestamp":{}}}],"responses":[],"type":"poll_handshakes_ok"}}"#,
            T0_SECS + 5
        )
        .into_bytes()
    );
    // The poll cleared the inbox.
    assert_eq!(
        h.ok(poll(b, 2)),
        Response::PollHandshakesOk {
            requests: vec![],
            responses: vec![]
        }
    );
    // The record survives polling, so b can still accept.
    h.now = t(6);
    assert_eq!(
        h.ok(respond(b, 2, a, true)),
        Response::RespondHandshakeOk {
            accept: true,
            peer_id: a
        }
    );
    assert!(h.reg.state().has_trust(a, b));
    let Response::PollHandshakesOk { responses, .. } = h.ok(poll(a, 1)) else {
        panic!()
    };
    assert_eq!(
        responses,
        vec![InboxResponse {
            accept: true,
            from_node_id: b,
            timestamp: T0_SECS + 6
        }]
    );
    // A rejection needs no pending request and creates no pair.
    let c = h.register(3);
    h.ok(respond(c, 3, a, false));
    assert!(!h.reg.state().has_trust(a, c));
    h.check_replay();
}

#[test]
fn handshake_inbox_is_bounded() {
    let mut h = H::new(Config {
        rate_limits: false,
        ..Config::default()
    });
    let target = h.register(1);
    for seed in 2..=102u8 {
        let id = h.register(seed);
        let reply = h.send(hs_request(id, seed, target, ""));
        if seed <= 101 {
            assert!(reply.error.is_none(), "sender {seed}");
        } else {
            assert_eq!(reply.error, Some(RegistryError::InboxFull(target)));
        }
    }
    assert_eq!(h.reg.state().handshake_inbox[&target].len(), MAX_INBOX);
}

#[test]
fn punch_rules() {
    let mut h = H::current();
    let a = h.register(1);
    let b = h.register(2);
    let c = h.register(3);
    let punch = |req: u32, seed: u8, x: u32, y: u32| {
        Request::Punch(Punch {
            requester_id: req,
            node_a: x,
            node_b: y,
            signature: sig(seed, &format!("punch:{x}:{y}")),
            sig_ts: None,
        })
    };
    assert_eq!(h.err(punch(c, 3, a, b)), RegistryError::PunchNotParticipant);
    assert_eq!(h.err(punch(a, 1, a, b)), RegistryError::Private(b));
    h.ok(trust(b, 2, a));
    let r = h.ok(punch(a, 1, a, b));
    assert_eq!(
        r,
        Response::PunchOk {
            node_a: a,
            node_a_addr: "127.0.0.1:4000".into(),
            node_b: b,
            node_b_addr: "127.0.0.1:4000".into()
        }
    );
}

#[test]
fn networks_disabled_in_legacy() {
    let mut h = H::legacy();
    let a = h.register(1);
    assert_eq!(
        h.err(Request::CreateNetwork(CreateNetwork {
            node_id: a,
            name: "x".into(),
            ..Default::default()
        })),
        RegistryError::NetworksDisabled
    );
    assert_eq!(h.err(join(a, 1, 1, "")), RegistryError::NetworksDisabled);
    assert_eq!(
        h.ok(Request::ListNetworks(ListNetworks::default())),
        Response::ListNetworksOk {
            networks: vec![NetworkSummary {
                id: 0,
                join_rule: "open".into(),
                members: Some(1),
                name: "backbone".into(),
                created: None
            }]
        }
    );
    assert_eq!(
        h.err(Request::ListNodes(ListNodes {
            network_id: 0,
            admin_token: String::new()
        })),
        RegistryError::BackboneListing
    );
}

#[test]
fn networks_current() {
    let mut h = H::current();
    let a = h.register(1);
    let b = h.register(2);
    let c = h.register(3);
    // Admin token rules.
    let mut no_admin = H::new(Config::default());
    no_admin.register(1);
    assert_eq!(
        no_admin.err(Request::CreateNetwork(CreateNetwork {
            node_id: 1,
            name: "x".into(),
            ..Default::default()
        })),
        RegistryError::AdminDisabled
    );
    assert_eq!(
        h.err(Request::CreateNetwork(CreateNetwork {
            node_id: a,
            name: "x".into(),
            admin_token: "no".into(),
            ..Default::default()
        })),
        RegistryError::InvalidAdminToken
    );
    let open = create(&mut h, a, "lab", "", "");
    assert_eq!(open, 1);
    assert_eq!(
        h.err(Request::CreateNetwork(CreateNetwork {
            node_id: a,
            name: "lab".into(),
            admin_token: "adm".into(),
            ..Default::default()
        })),
        RegistryError::NetworkExists("lab".into())
    );
    assert!(matches!(
        h.err(Request::CreateNetwork(CreateNetwork {
            node_id: a,
            name: "backbone".into(),
            admin_token: "adm".into(),
            ..Default::default()
        })),
        RegistryError::NetworkName(_)
    ));
    assert_eq!(
        h.err(Request::CreateNetwork(CreateNetwork {
            node_id: a,
            name: "t".into(),
            join_rule: "token".into(),
            admin_token: "adm".into(),
            ..Default::default()
        })),
        RegistryError::TokenRequired
    );
    let tok = create(&mut h, a, "secret", "token", "pw");
    let inv = create(&mut h, a, "club", "invite", "");
    // Joins.
    assert_eq!(
        h.ok(join(b, 2, open, "")),
        Response::JoinNetworkOk {
            address: "1:0001.0000.0002".into(),
            network_id: open
        }
    );
    assert_eq!(
        h.err(join(b, 2, open, "")),
        RegistryError::AlreadyMember {
            node_id: b,
            network_id: open
        }
    );
    assert_eq!(h.err(join(b, 2, 0, "")), RegistryError::CannotJoinBackbone);
    assert_eq!(
        h.err(join(b, 2, 99, "")),
        RegistryError::NetworkNotFound(99)
    );
    assert_eq!(
        h.err(join(b, 2, tok, "nope")),
        RegistryError::InvalidNetworkToken
    );
    h.ok(join(b, 2, tok, "pw"));
    assert_eq!(h.err(join(b, 2, inv, "")), RegistryError::InviteOnly);
    assert_eq!(
        h.err(join(b, 1, inv, "")),
        RegistryError::Signature(SigError::Failed)
    );
    // Invitations.
    let invite = |from: u32, seed: u8, net: u16, to: u32| {
        Request::InviteToNetwork(InviteToNetwork {
            network_id: net,
            inviter_id: from,
            target_node_id: to,
            signature: sig(seed, &format!("invite:{from}:{net}:{to}")),
            sig_ts: None,
        })
    };
    assert_eq!(
        h.err(invite(b, 2, inv, c)),
        RegistryError::NotMember {
            node_id: b,
            network_id: inv
        }
    );
    let r = h.send(invite(a, 1, inv, c));
    assert!(r.effects.contains(&Effect::Notify(Notification::Invite {
        to: c,
        network_id: inv
    })));
    let Response::PollInvitesOk { invites } = h.ok(Request::PollInvites(PollInvites {
        node_id: c,
        signature: sig(3, &format!("poll_invites:{c}")),
        sig_ts: None,
    })) else {
        panic!()
    };
    assert_eq!(invites.len(), 1);
    assert_eq!(
        (invites[0].inviter_id, invites[0].network_name.as_str()),
        (a, "club")
    );
    let respond_inv = |net: u16, accept: bool| {
        Request::RespondInvite(RespondInvite {
            node_id: c,
            network_id: net,
            accept,
            signature: sig(3, &format!("respond_invite:{c}:{net}")),
            sig_ts: None,
        })
    };
    assert_eq!(
        h.err(respond_inv(open, true)),
        RegistryError::InviteNotFound(open)
    );
    h.ok(respond_inv(inv, true));
    assert!(h.reg.state().networks[&inv].members.contains(&c));
    assert_eq!(h.reg.state().nodes[&c].networks, vec![0, inv]);
    // Listing.
    assert_eq!(
        h.err(Request::ListNodes(ListNodes {
            network_id: 0,
            admin_token: String::new()
        })),
        RegistryError::BackboneListing
    );
    let Response::ListNodesOk { nodes, .. } = h.ok(Request::ListNodes(ListNodes {
        network_id: 0,
        admin_token: "adm".into(),
    })) else {
        panic!()
    };
    assert_eq!(nodes.len(), 3);
    let Response::ListNodesOk { nodes, .. } = h.ok(Request::ListNodes(ListNodes {
        network_id: open,
        admin_token: String::new(),
    })) else {
        panic!()
    };
    assert_eq!(
        nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
        vec![a, b]
    );
    assert_eq!(nodes[1].address, "1:0001.0000.0002");
    let Response::ListNetworksOk { networks } =
        h.ok(Request::ListNetworks(ListNetworks::default()))
    else {
        panic!()
    };
    assert_eq!(networks.len(), 4);
    assert!(networks.iter().all(|n| n.members.is_none()));
    let Response::ListNetworksOk { networks } = h.ok(Request::ListNetworks(ListNetworks {
        admin_token: "adm".into(),
    })) else {
        panic!()
    };
    assert_eq!(networks[1].members, Some(2));
    // Leave.
    let leave = |net: u16| {
        Request::LeaveNetwork(LeaveNetwork {
            node_id: b,
            network_id: net,
            signature: sig(2, &format!("leave_network:{b}:{net}")),
            ..Default::default()
        })
    };
    assert_eq!(h.err(leave(0)), RegistryError::CannotLeaveBackbone);
    assert_eq!(
        h.ok(leave(open)),
        Response::LeaveNetworkOk { network_id: open }
    );
    assert_eq!(
        h.err(leave(open)),
        RegistryError::NotMember {
            node_id: b,
            network_id: open
        }
    );
    // Reaped members keep non-backbone memberships and get them back.
    h.advance(400);
    let Response::ListNodesOk { nodes, .. } = h.ok(Request::ListNodes(ListNodes {
        network_id: tok,
        admin_token: String::new(),
    })) else {
        panic!()
    };
    assert!(nodes.iter().all(|n| n.offline));
    assert_eq!(h.register(2), b);
    assert_eq!(h.reg.state().nodes[&b].networks, vec![0, tok]);
    h.check_replay();
}

#[test]
fn polo_score_legacy_only() {
    let mut h = H::legacy();
    let a = h.register(1);
    let r = h.ok(Request::UpdatePoloScore(UpdatePoloScore {
        node_id: a,
        delta: Some(5),
    }));
    assert_eq!(
        r,
        Response::UpdatePoloScoreOk(PoloScoreOk {
            address: "0:0000.0000.0001".into(),
            node_id: a,
            polo_score: 5
        })
    );
    assert_eq!(
        h.err(Request::UpdatePoloScore(UpdatePoloScore {
            node_id: a,
            delta: None
        })),
        RegistryError::PoloDeltaRequired
    );
    h.ok(Request::SetPoloScore(SetPoloScore {
        node_id: a,
        polo_score: Some(-2),
    }));
    let Response::GetPoloScoreOk(p) = h.ok(Request::GetPoloScore(GetPoloScore { node_id: a }))
    else {
        panic!()
    };
    assert_eq!(p.polo_score, -2);
    assert_eq!(
        h.err(Request::GetPoloScore(GetPoloScore { node_id: 8 })),
        RegistryError::PoloNodeNotFound(8)
    );
    let mut c = H::current();
    assert_eq!(
        c.err(Request::GetPoloScore(GetPoloScore { node_id: 1 })),
        RegistryError::UnknownType("get_polo_score".into())
    );
}

#[test]
fn beacons_register_list_expire() {
    let mut h = H::current();
    let reg = |id: u32, tok: &str| {
        Request::BeaconRegister(BeaconRegister {
            beacon_id: id,
            addr: "127.0.0.1:9001".into(),
            admin_token: tok.into(),
        })
    };
    assert_eq!(h.err(reg(3, "")), RegistryError::InvalidAdminToken);
    assert_eq!(h.err(reg(0, "adm")), RegistryError::BeaconIdRequired);
    assert_eq!(
        h.ok(reg(3, "adm")),
        Response::BeaconRegisterOk { beacon_id: 3 }
    );
    assert_eq!(
        h.ok(Request::BeaconList(BeaconList {})),
        Response::BeaconListOk {
            beacons: vec![BeaconEntry {
                addr: "127.0.0.1:9001".into(),
                id: 3
            }]
        }
    );
    h.now = h.now + Duration::from_secs(61);
    assert_eq!(
        h.ok(Request::BeaconList(BeaconList {})),
        Response::BeaconListOk { beacons: vec![] }
    );
    // Legacy: no admin token needed.
    let mut l = H::legacy();
    l.ok(reg(4, ""));
}

#[test]
fn unknown_type_and_standby() {
    let mut h = H::current();
    assert_eq!(
        h.send(Request::Unknown("teleport".into())).response,
        Response::error("request failed")
    );
    assert_eq!(
        h.err(Request::Unknown("x".into())).to_string(),
        "unknown message type: \"x\""
    );
    let mut s = H::new(Config {
        standby: true,
        ..Config::default()
    });
    assert_eq!(
        s.err(Request::Register(Register::default())),
        RegistryError::Standby
    );
    s.ok(Request::BeaconList(BeaconList {}));
}

#[test]
fn error_text_per_profile() {
    let e = RegistryError::Private(2);
    assert_eq!(e.wire_text(WireProfile::Legacy), "request failed");
    assert_eq!(
        e.wire_text(WireProfile::Current),
        "resolve denied: node 2 is private (establish mutual trust first)"
    );
    assert_eq!(
        RegistryError::RegistryFull.wire_text(WireProfile::Current),
        "request failed"
    );
    assert_eq!(
        RegistryError::NodeNotFound(3).wire_text(WireProfile::Current),
        "node 3: node not found"
    );
}

#[test]
fn reaping_timer_and_bounded_work() {
    let mut h = H::current();
    assert_eq!(h.reg.poll_timeout(), Some(t(60)));
    // A spurious early call does nothing.
    assert!(h.reg.handle_timeout(t(10)).is_empty());
    let a = h.register(1);
    h.now = t(60);
    assert!(h.reg.handle_timeout(t(60)).is_empty());
    assert_eq!(h.reg.poll_timeout(), Some(t(120)));
    let eff = h.advance(180);
    assert!(eff.contains(&Effect::Persist(Change::RemoveNode(a))));
    assert!(h.reg.state().nodes.is_empty());
}

#[test]
fn strong_signatures() {
    let mut h = H::current();
    let a = h.register(1);
    let strong_hb = |seed: u8, ts: u64| {
        let msg = auth::strong_message(&format!("heartbeat:{a}"), ts);
        Request::Heartbeat(Heartbeat {
            node_id: a,
            signature: sig(seed, &msg),
            sig_ts: Some(ts),
        })
    };
    let now_ms = T0_SECS * 1000;
    h.ok(strong_hb(1, now_ms));
    // Replaying exactly the same request is refused.
    assert_eq!(
        h.err(strong_hb(1, now_ms)),
        RegistryError::Signature(SigError::Replayed)
    );
    h.ok(strong_hb(1, now_ms + 1));
    // Older than the last accepted timestamp: refused.
    assert_eq!(
        h.err(strong_hb(1, now_ms)),
        RegistryError::Signature(SigError::Replayed)
    );
    // Outside the freshness window.
    assert_eq!(
        h.err(strong_hb(1, now_ms + 301_000)),
        RegistryError::Signature(SigError::Stale)
    );
    assert_eq!(
        h.err(strong_hb(1, now_ms - 301_000)),
        RegistryError::Signature(SigError::Stale)
    );
    // Wrong key; and a legacy signature presented as strong.
    assert_eq!(
        h.err(strong_hb(2, now_ms + 5)),
        RegistryError::Signature(SigError::Failed)
    );
    let legacy_as_strong = Request::Heartbeat(Heartbeat {
        node_id: a,
        signature: sig(1, &format!("heartbeat:{a}")),
        sig_ts: Some(now_ms + 6),
    });
    assert_eq!(
        h.err(legacy_as_strong),
        RegistryError::Signature(SigError::Failed)
    );
    // Legacy form still accepted when not strict.
    h.ok(hb(a, 1));
    h.check_replay();

    let mut s = H::new(Config {
        strict_signatures: true,
        ..Config::default()
    });
    // Strict: registration itself needs a strong signature by the new key.
    let key = ident(1).public_key_b64();
    let reg_msg = auth::strong_message(&format!("register:0.0.0.0:4000:{key}"), now_ms);
    assert_eq!(
        s.err(Request::Register(Register {
            listen_addr: "0.0.0.0:4000".into(),
            public_key: key.clone(),
            ..Default::default()
        })),
        RegistryError::Signature(SigError::StrongRequired)
    );
    s.ok(Request::Register(Register {
        listen_addr: "0.0.0.0:4000".into(),
        public_key: key,
        signature: sig(1, &reg_msg),
        sig_ts: Some(now_ms),
        ..Default::default()
    }));
    assert_eq!(
        s.err(hb(1, 1)),
        RegistryError::Signature(SigError::StrongRequired)
    );
    s.ok(Request::Heartbeat(Heartbeat {
        node_id: 1,
        signature: sig(1, &auth::strong_message("heartbeat:1", now_ms + 1)),
        sig_ts: Some(now_ms + 1),
    }));
}

#[test]
fn registry_full() {
    let mut h = H::new(Config {
        max_nodes: 2,
        ..Config::default()
    });
    h.register(1);
    h.register(2);
    assert_eq!(
        h.err(Request::Register(Register {
            public_key: ident(3).public_key_b64(),
            ..Default::default()
        })),
        RegistryError::RegistryFull
    );
}

#[test]
fn query_and_resolve_rate_limits_current_only() {
    let mut h = H::current();
    let a = h.register(1);
    let b = h.register(2);
    h.ok(set_public(b, 2, true));
    for i in 0..100 {
        assert!(h.send(resolve(a, 1, b)).error.is_none(), "resolve {i}");
    }
    assert_eq!(
        h.err(resolve(a, 1, b)),
        RegistryError::QueryRateLimited(peer().ip())
    );
    for i in 0..500 {
        assert!(
            h.send(Request::Lookup(Lookup { node_id: a }))
                .error
                .is_none(),
            "lookup {i}"
        );
    }
    assert_eq!(
        h.send(Request::Lookup(Lookup { node_id: a })).response,
        Response::error("rate limited: too many queries from 127.0.0.1")
    );
    // resolve_hostname and list_nodes share the query bucket.
    assert_eq!(
        h.err(Request::ResolveHostname(ResolveHostname {
            hostname: "x".into(),
            requester_id: 0
        })),
        RegistryError::QueryRateLimited(peer().ip())
    );
    // A minute later the buckets are full again.
    h.now = h.now + Duration::from_secs(60);
    h.ok(resolve(a, 1, b));
    h.ok(Request::Lookup(Lookup { node_id: a }));
    // Legacy has no query limits.
    let mut l = H::legacy();
    let x = l.register(1);
    for _ in 0..600 {
        assert!(
            l.send(Request::Lookup(Lookup { node_id: x }))
                .error
                .is_none()
        );
    }
    // Switched off entirely.
    let mut off = H::new(Config {
        rate_limits: false,
        ..Config::default()
    });
    for seed in 1..=20 {
        off.register(seed);
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Node ID of `seed`'s key, if it has one.
    fn id_of(h: &H, seed: u8) -> u32 {
        h.reg
            .state()
            .pub_key_idx
            .get(&ident(seed).public_key())
            .copied()
            .unwrap_or(u32::from(seed) + 100)
    }

    fn step(h: &mut H, op: u8, x: u8, y: u8, flag: bool, dt: u16) {
        let (sx, sy) = (x % 6 + 1, y % 6 + 1);
        let (a, b) = (id_of(h, sx), id_of(h, sy));
        let net = u16::from(y % 4);
        let names = ["alpha", "beta", "gamma"];
        let req = match op % 16 {
            0 | 1 => Request::Register(Register {
                listen_addr: "0.0.0.0:4000".into(),
                public_key: ident(sx).public_key_b64(),
                owner: if flag {
                    format!("o{}", y % 3)
                } else {
                    String::new()
                },
                hostname: names[usize::from(y) % 3].into(),
                ..Default::default()
            }),
            2 => hb(a, sx),
            3 if !flag || x % 3 != 0 => hb(a, sx),
            3 => Request::Deregister(Deregister {
                node_id: a,
                signature: sig(sx, &format!("deregister:{a}")),
                ..Default::default()
            }),
            4 => set_public(a, sx, flag),
            5 => Request::SetHostname(SetHostname {
                node_id: a,
                hostname: if flag {
                    String::new()
                } else {
                    names[usize::from(y) % 3].into()
                },
                signature: sig(sx, &format!("set_hostname:{a}")),
                ..Default::default()
            }),
            6 => trust(a, sx, b),
            7 => Request::RevokeTrust(TrustPair {
                node_id: a,
                peer_id: b,
                signature: sig(sx, &format!("revoke_trust:{a}:{b}")),
                sig_ts: None,
            }),
            8 => hs_request(a, sx, b, "j"),
            9 => poll(a, sx),
            10 => respond(a, sx, b, flag),
            11 => Request::CreateNetwork(CreateNetwork {
                node_id: a,
                name: names[usize::from(y) % 3].into(),
                join_rule: if flag { "invite".into() } else { String::new() },
                token: String::new(),
                admin_token: "adm".into(),
            }),
            12 => join(a, sx, net, ""),
            13 => Request::LeaveNetwork(LeaveNetwork {
                node_id: a,
                network_id: net,
                signature: sig(sx, &format!("leave_network:{a}:{net}")),
                ..Default::default()
            }),
            14 => {
                // Invitations come from the creator of the networks.
                let c = id_of(h, 1);
                Request::InviteToNetwork(InviteToNetwork {
                    network_id: net,
                    inviter_id: c,
                    target_node_id: a,
                    signature: sig(1, &format!("invite:{c}:{net}:{a}")),
                    sig_ts: None,
                })
            }
            _ => Request::RespondInvite(RespondInvite {
                node_id: a,
                network_id: net,
                accept: flag,
                signature: sig(sx, &format!("respond_invite:{a}:{net}")),
                sig_ts: None,
            }),
        };
        let reply = h.send(req);
        assert!(encode_response(&reply.response).is_ok());
        if dt > 0 {
            h.advance(u64::from(dt));
        }
    }

    fn check_invariants(h: &H) {
        let s = h.reg.state();
        for n in s.nodes.values() {
            assert!(n.networks.windows(2).all(|w| w[0] < w[1]), "{n:?}");
            assert_eq!(n.networks.first(), Some(&0));
            for net in &n.networks {
                assert!(s.networks[net].members.contains(&n.id));
            }
            assert_eq!(s.pub_key_idx.get(&n.public_key), Some(&n.id));
        }
        for net in s.networks.values() {
            for m in &net.members {
                if let Some(n) = s.nodes.get(m) {
                    assert!(n.networks.contains(&net.id));
                }
            }
        }
        let mut derived = s.clone();
        derived.rebuild_indexes();
        assert_eq!(derived.hostname_idx, s.hostname_idx);
        for q in s.handshake_inbox.values() {
            assert!(q.len() <= MAX_INBOX);
        }
        for (a, b) in &s.trust_pairs {
            assert!(a <= b);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_operation_sequences_keep_invariants(
            ops in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<bool>(), prop_oneof![6 => Just(0u16), 3 => 0u16..60, 1 => 0u16..400]), 1..80),
            legacy in any::<bool>(),
        ) {
            let mut h = H::new(Config {
                profile: if legacy { WireProfile::Legacy } else { WireProfile::Current },
                admin_token: Some("adm".into()),
                rate_limits: false,
                ..Config::default()
            });
            // Start from a populated registry so that most operations can
            // succeed: six nodes, three networks (current profile).
            for seed in 1..=6 {
                step(&mut h, 0, seed - 1, seed, false, 0);
            }
            if !legacy {
                for (i, rule) in [false, false, true].into_iter().enumerate() {
                    step(&mut h, 11, 0, i as u8, rule, 0);
                }
            }
            for (op, x, y, flag, dt) in ops {
                step(&mut h, op, x, y, flag, dt);
                check_invariants(&h);
            }
            h.check_replay();
            let snap = crate::registry::snapshot::Snapshot::from_state(h.reg.state());
            let (back, _) = crate::registry::snapshot::Snapshot::from_json(&snap.to_json().unwrap())
                .unwrap()
                .into_state(UnixTime::ZERO);
            prop_assert_eq!(&back, h.reg.state());
        }
    }
}

/// Every signed request: unknown signer → not found; wrong key → refused;
/// missing signature → refused; the right key → accepted.
#[test]
fn every_signed_request_checks_its_signer() {
    type Build = fn(u32, u32, &dyn Fn(&str) -> String) -> Request;
    let table: Vec<(&str, Build)> = vec![
        ("heartbeat", |a, _, s| {
            Request::Heartbeat(Heartbeat {
                node_id: a,
                signature: s(&format!("heartbeat:{a}")),
                sig_ts: None,
            })
        }),
        ("deregister", |a, _, s| {
            Request::Deregister(Deregister {
                node_id: a,
                signature: s(&format!("deregister:{a}")),
                ..Default::default()
            })
        }),
        ("set_visibility", |a, _, s| {
            Request::SetVisibility(SetVisibility {
                node_id: a,
                public: true,
                signature: s(&format!("set_visibility:{a}")),
                ..Default::default()
            })
        }),
        ("set_hostname", |a, _, s| {
            Request::SetHostname(SetHostname {
                node_id: a,
                hostname: "n1".into(),
                signature: s(&format!("set_hostname:{a}")),
                ..Default::default()
            })
        }),
        ("set_tags", |a, _, s| {
            Request::SetTags(SetTags {
                node_id: a,
                tags: vec!["t".into()],
                signature: s(&format!("set_tags:{a}")),
                ..Default::default()
            })
        }),
        ("set_task_exec", |a, _, s| {
            Request::SetTaskExec(SetTaskExec {
                node_id: a,
                enabled: true,
                signature: s(&format!("set_task_exec:{a}")),
                sig_ts: None,
            })
        }),
        ("resolve", |a, b, s| {
            Request::Resolve(Resolve {
                node_id: b,
                requester_id: a,
                signature: s(&format!("resolve:{a}:{b}")),
                sig_ts: None,
            })
        }),
        ("report_trust", |a, b, s| {
            Request::ReportTrust(TrustPair {
                node_id: a,
                peer_id: b,
                signature: s(&format!("report_trust:{a}:{b}")),
                sig_ts: None,
            })
        }),
        ("poll_handshakes", |a, _, s| {
            Request::PollHandshakes(PollHandshakes {
                node_id: a,
                signature: s(&format!("poll_handshakes:{a}")),
                sig_ts: None,
                push: false,
            })
        }),
        ("request_handshake", |a, b, s| {
            Request::RequestHandshake(RequestHandshake {
                from_node_id: a,
                to_node_id: b,
                justification: String::new(),
                signature: s(&format!("handshake:{a}:{b}")),
                sig_ts: None,
            })
        }),
        ("respond_handshake", |a, b, s| {
            Request::RespondHandshake(RespondHandshake {
                node_id: a,
                peer_id: b,
                accept: false,
                signature: s(&format!("respond:{a}:{b}")),
                sig_ts: None,
            })
        }),
        ("rotate_key", |a, _, s| {
            Request::RotateKey(RotateKey {
                node_id: a,
                new_public_key: ident(7).public_key_b64(),
                signature: s(&format!("rotate:{a}")),
                sig_ts: None,
            })
        }),
        ("join_network", |a, _, s| {
            Request::JoinNetwork(JoinNetwork {
                node_id: a,
                network_id: 1,
                signature: s(&format!("join_network:{a}:1")),
                ..Default::default()
            })
        }),
        ("poll_invites", |a, _, s| {
            Request::PollInvites(PollInvites {
                node_id: a,
                signature: s(&format!("poll_invites:{a}")),
                sig_ts: None,
            })
        }),
    ];
    for (what, build) in table {
        let mut h = H::current();
        let a = h.register(1);
        let b = h.register(2);
        h.ok(set_public(b, 2, true));
        create(&mut h, b, "lab", "", "");
        let right = |c: &str| sig(1, c);
        let wrong = |c: &str| sig(3, c);
        let none = |_: &str| String::new();
        if what != "deregister" {
            let e = h.err(build(9, b, &right));
            assert!(
                matches!(
                    e,
                    RegistryError::NodeNotFound(9) | RegistryError::RequesterNotRegistered(9)
                ),
                "{what}: {e:?}"
            );
        }
        let e = h.err(build(a, b, &wrong));
        assert_eq!(e, RegistryError::Signature(SigError::Failed), "{what}");
        let e = h.err(build(a, b, &none));
        let missing = if what == "rotate_key" {
            RegistryError::RotateNeedsSignature
        } else {
            RegistryError::Signature(SigError::Missing)
        };
        assert_eq!(e, missing, "{what}");
        let reply = h.send(build(a, b, &right));
        assert_eq!(reply.error, None, "{what}");
        h.check_replay();
    }
}

mod networks;

/// A key is checked (`auth::check_public_key`) when it first registers,
/// not when it registers again — also after a restart from the stored
/// state — while a new bad key is still checked and refused.
#[test]
fn a_known_key_is_not_checked_again() {
    let mut h = H::current();
    let a = h.register(1);
    assert_eq!(h.reg.key_checks(), 1);
    assert_eq!(h.register(1), a);
    assert_eq!(h.reg.key_checks(), 1);
    h.register(2);
    assert_eq!(h.reg.key_checks(), 2);
    // The all-zero key: a point of small order.
    let e = h.err(Request::Register(Register {
        listen_addr: "0.0.0.0:4000".into(),
        public_key: crate::registry::auth::encode_public_key(&[0u8; 32]),
        ..Default::default()
    }));
    assert!(matches!(e, RegistryError::InvalidPublicKey(_)), "{e:?}");
    assert_eq!(h.reg.key_checks(), 3);
    // Restarted from the state: the registered key is known without a check.
    let state = h.reg.state().clone();
    let mut h2 = H::new(Config::default());
    h2.reg = Registry::from_state(Config::default(), state, h.now);
    h2.now = h.now;
    assert_eq!(h2.register(1), a);
    assert_eq!(h2.reg.key_checks(), 0);
}

/// A key the driver checked (`Registry::key_checked`) is not checked again
/// by the `register` that brings it, once; other keys still are, and the
/// remembered keys are bounded.
#[test]
fn a_prechecked_key_is_not_checked_again() {
    let mut h = H::current();
    for seed in 1..=3u8 {
        let key = ident(seed).public_key();
        crate::registry::auth::check_public_key(&key).unwrap();
        h.reg.key_checked(key);
    }
    h.register(1);
    h.register(2);
    assert_eq!(h.reg.key_checks(), 0);
    h.register(4);
    assert_eq!(h.reg.key_checks(), 1);
    for i in 0..(MAX_PRECHECKED as u32 + 10) {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        h.reg.key_checked(k);
    }
    assert!(h.reg.prechecked.len() <= MAX_PRECHECKED);
    assert!(h.reg.prechecked_order.len() <= MAX_PRECHECKED);
    // Key 3 was pushed out by the flood: checked when it comes.
    h.register(3);
    assert_eq!(h.reg.key_checks(), 2);
}
