//! Resolver tests against the real registry state machine: a few
//! [`RegistryClient`]s exchange requests with an in-memory
//! [`Registry`] in virtual time; client 0 owns the resolver under test.

use super::*;
use crate::registry::auth::Identity;
use crate::registry::client::{ClientConfig, ClientEvent};
use crate::registry::server::{Config as RegConfig, Registry};
use crate::time::UnixTime;

const T0: u64 = 1_767_225_600;

struct World {
    now: Instant,
    reg: Registry,
    clients: Vec<RegistryClient>,
    /// Node IDs, by client.
    ids: Vec<u32>,
    res: Resolver<u32>,
    /// The registry answers (else requests stay unanswered).
    answering: bool,
}

fn ep(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4000 + i as u16))
}

impl World {
    /// `public[i]`: client `i` makes itself public after registering.
    fn new(public: &[bool]) -> World {
        let now = Instant::from_nanos(T0 * 1_000_000_000);
        let reg = Registry::new(
            RegConfig {
                rate_limits: false,
                ..RegConfig::default()
            },
            // The node clock here counts from the Unix epoch.
            UnixTime::from_nanos(now.as_nanos()),
        );
        let clients = (0..public.len())
            .map(|i| {
                let cfg = ClientConfig {
                    listen_addr: ep(i).to_string(),
                    ..ClientConfig::default()
                };
                RegistryClient::new(cfg, Identity::from_seed(&[i as u8 + 1; 32]), now)
            })
            .collect();
        let mut w = World {
            now,
            reg,
            clients,
            ids: vec![0; public.len()],
            res: Resolver::new(ResolverConfig::default(), now),
            answering: true,
        };
        w.pump();
        for (i, p) in public.iter().enumerate() {
            if *p {
                w.clients[i].call(now, Call::SetVisibility(true)).unwrap();
            }
        }
        w.pump();
        assert!(w.ids.iter().all(|id| *id != 0), "everyone registered");
        w
    }

    fn addr(&self, i: usize) -> Addr {
        Addr::new(0, self.ids[i])
    }

    /// Moves requests and answers until quiet; client 0's call answers go
    /// to the resolver.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                while let Some(ev) = self.clients[i].poll_event() {
                    moved = true;
                    match ev {
                        ClientEvent::Dial => self.clients[i].connected(self.now),
                        ClientEvent::Registered { node_id, .. } => self.ids[i] = node_id,
                        ClientEvent::CallDone { id, result } if i == 0 => {
                            let mine = self.res.owns(id);
                            let took = self.res.on_call_done(
                                Some(&mut self.clients[0]),
                                self.now,
                                id,
                                result,
                            );
                            assert_eq!(mine, took);
                        }
                        _ => {}
                    }
                }
                if !self.answering {
                    continue;
                }
                while let Some(req) = self.clients[i].poll_transmit() {
                    moved = true;
                    let peer = SocketAddr::from(([127, 0, 0, 1], 6000 + i as u16));
                    let reply =
                        self.reg
                            .handle(UnixTime::from_nanos(self.now.as_nanos()), peer, req);
                    self.clients[i].handle_response(self.now, reply.response);
                }
            }
            if !moved {
                let c0 = &self.clients[0];
                self.res.check(|id| c0.holds_call(id));
                return;
            }
        }
        panic!("did not settle");
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        for c in &mut self.clients {
            c.handle_timeout(self.now);
        }
        self.res.handle_timeout(self.now);
        self.pump();
    }

    fn resolve(&mut self, peer: Addr, waiter: u32) -> Result<(), (u32, String)> {
        let r = self
            .res
            .resolve(Some(&mut self.clients[0]), self.now, peer, waiter);
        self.pump();
        r
    }

    fn events(&mut self) -> Vec<ResolveEvent<u32>> {
        core::iter::from_fn(|| self.res.poll_event()).collect()
    }
}

#[test]
fn a_public_peer_resolves_and_waiters_are_coalesced() {
    let mut w = World::new(&[false, true]);
    let b = w.addr(1);
    w.answering = false;
    for k in 0..3 {
        w.resolve(Addr::new(7, b.node), k).unwrap();
    }
    assert_eq!(w.res.stats().lookups, 1, "one look-up for three requests");
    assert_eq!(w.res.stats().coalesced, 2);
    w.answering = true;
    w.pump();
    let ev = w.events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    let ResolveEvent::Found {
        node,
        network,
        endpoint,
        key,
        waiters,
    } = &ev[0]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(*node, b.node);
    assert_eq!(*network, 7, "the network of the first request, not 0");
    assert_eq!(*endpoint, ep(1));
    assert_eq!(*waiters, vec![0, 1, 2], "every waiter, in order");
    let expect = Identity::from_seed(&[2; 32]).public_key();
    assert_eq!(*key, Some(expect));
    assert_eq!(w.res.key(b.node), Some(expect), "the key is remembered");
    assert_eq!(
        w.res.stats().resolves,
        0,
        "a public node needs no second step"
    );
}

#[test]
fn a_private_peer_takes_the_second_step_and_needs_trust() {
    let mut w = World::new(&[false, false]);
    let b = w.addr(1);
    // Before trust: lookup says private, resolve is refused.
    w.resolve(b, 1).unwrap();
    let ev = w.events();
    assert!(
        matches!(&ev[..], [ResolveEvent::Failed { waiters, .. }] if *waiters == vec![1]),
        "{ev:?}"
    );
    assert_eq!(w.res.stats().resolves, 1, "the second step ran");
    // The registry's refusal is cached: the next request fails at once.
    let lookups = w.res.stats().lookups;
    let (back, reason) = w.resolve(b, 2).unwrap_err();
    assert_eq!(back, 2);
    assert!(!reason.is_empty());
    assert_eq!(w.res.stats().negative_hits, 1);
    assert_eq!(w.res.stats().lookups, lookups, "no registry call");
    // b trusts a at the registry; trust changed, so the cache is cleared.
    let a = w.addr(0);
    w.clients[1].call(w.now, Call::ReportTrust(a.node)).unwrap();
    w.pump();
    w.res.clear_negative();
    w.resolve(b, 3).unwrap();
    let ev = w.events();
    assert!(
        matches!(&ev[..], [ResolveEvent::Found { endpoint, waiters, .. }] if *endpoint == ep(1) && *waiters == vec![3]),
        "{ev:?}"
    );
    assert_eq!(w.res.stats().resolves, 2);
}

#[test]
fn a_negative_answer_expires() {
    let mut w = World::new(&[false]);
    let ghost = Addr::new(0, 0x00ff_fff0);
    w.resolve(ghost, 1).unwrap();
    assert!(matches!(&w.events()[..], [ResolveEvent::Failed { .. }]));
    assert!(w.resolve(ghost, 2).is_err(), "cached");
    w.advance(NEGATIVE_TTL - Duration::from_millis(1));
    assert!(
        w.resolve(ghost, 3).is_err(),
        "still cached just before expiry"
    );
    w.advance(Duration::from_millis(1));
    let lookups = w.res.stats().lookups;
    w.resolve(ghost, 4).unwrap();
    assert_eq!(
        w.res.stats().lookups,
        lookups + 1,
        "asked again after expiry"
    );
    assert!(
        matches!(&w.events()[..], [ResolveEvent::Failed { waiters, .. }] if *waiters == vec![4])
    );
}

#[test]
fn a_resolution_times_out_and_is_not_cached() {
    let mut w = World::new(&[false, true]);
    let b = w.addr(1);
    w.answering = false;
    w.resolve(b, 1).unwrap();
    assert_eq!(w.res.poll_timeout(), Some(w.now + RESOLVE_TIMEOUT));
    w.advance(RESOLVE_TIMEOUT - Duration::from_millis(1));
    assert!(w.events().is_empty());
    w.advance(Duration::from_millis(1));
    let ev = w.events();
    assert!(
        matches!(&ev[..], [ResolveEvent::Failed { reason, waiters, .. }] if reason == TIMED_OUT && *waiters == vec![1]),
        "{ev:?}"
    );
    assert_eq!(w.res.stats().timeouts, 1);
    // A timeout is local: once the registry answers again (the silent
    // connection was dropped and is re-dialled), the next request asks it
    // again, and the late answer of the first call is ignored.
    w.answering = true;
    w.advance(Duration::from_secs(120));
    assert!(
        w.events().is_empty(),
        "the late answer is not the resolver's"
    );
    w.resolve(b, 2).unwrap();
    let ev = w.events();
    assert!(
        matches!(&ev[..], [ResolveEvent::Found { waiters, .. }] if *waiters == vec![2]),
        "{ev:?}"
    );
}

#[test]
fn a_bad_reply_is_counted_and_fails_the_resolution() {
    let mut w = World::new(&[false, true]);
    let b = w.addr(1);
    w.answering = false;
    w.resolve(b, 1).unwrap();
    let id = *w.res.calls.keys().next().unwrap();
    let wrong = Response::ResolveOk(crate::registry::codec::ResolveOk {
        node_id: b.node,
        real_addr: "127.0.0.1:1".into(),
        lan_addrs: None,
    });
    assert!(w.res.on_call_done(None, w.now, id, Ok(wrong)));
    assert_eq!(w.res.stats().bad_replies, 1);
    let ev = w.events();
    assert!(
        matches!(&ev[..], [ResolveEvent::Failed { reason, .. }] if reason.contains("unexpected reply")),
        "{ev:?}"
    );
    // Not cached: a bad reply says nothing about the node.
    w.answering = true;
    w.resolve(b, 2).unwrap();
    assert!(matches!(&w.events()[..], [ResolveEvent::Found { .. }]));
    // A second answer for the same id is not the resolver's any more.
    assert!(!w.res.on_call_done(None, w.now, id, Err("late".into())));
}

#[test]
fn immediate_failures_hand_the_waiter_back() {
    let mut w = World::new(&[false, true]);
    let b = w.addr(1);
    let r = w.res.resolve(None, w.now, b, 9);
    assert_eq!(r, Err((9, "no registry configured".to_owned())));
    // Too many waiters on one resolution.
    w.answering = false;
    for k in 0..RESOLVE_WAITERS as u32 {
        w.resolve(b, k).unwrap();
    }
    let (back, reason) = w.resolve(b, 999).unwrap_err();
    assert_eq!((back, reason.as_str()), (999, "too many requests waiting"));
    // The connection fails: every resolution fails at once.
    w.res.fail_all(REGISTRY_UNREACHABLE);
    let ev = w.events();
    assert!(
        matches!(&ev[..], [ResolveEvent::Failed { reason, waiters, .. }] if reason == REGISTRY_UNREACHABLE && waiters.len() == RESOLVE_WAITERS),
        "{ev:?}"
    );
    w.res.check(|_| true);
}

#[test]
fn key_fetches_are_cached_coalesced_and_paced() {
    let mut w = World::new(&[false, false]);
    let b = w.addr(1);
    assert_eq!(
        w.res.fetch_key(None, w.now, b.node),
        KeyFetch::Refused,
        "no registry"
    );
    w.answering = false;
    let now = w.now;
    assert_eq!(
        w.res.fetch_key(Some(&mut w.clients[0]), now, b.node),
        KeyFetch::Started
    );
    assert_eq!(
        w.res.fetch_key(Some(&mut w.clients[0]), now, b.node),
        KeyFetch::Started
    );
    assert_eq!(w.res.stats().key_fetches, 1, "one look-up");
    w.answering = true;
    w.pump();
    let expect = Identity::from_seed(&[2; 32]).public_key();
    assert_eq!(
        w.events(),
        vec![ResolveEvent::KeyFound {
            node: b.node,
            key: expect
        }]
    );
    assert_eq!(
        w.res.fetch_key(Some(&mut w.clients[0]), now, b.node),
        KeyFetch::Known(expect)
    );
    // Strangers: the burst, then refusals until the bucket refills.
    w.answering = false;
    let burst = KEY_LOOKUP_BURST as u32;
    for k in 0..burst - 1 {
        assert_eq!(
            w.res
                .fetch_key(Some(&mut w.clients[0]), now, 0x0100_0000 + k),
            KeyFetch::Started
        );
    }
    assert_eq!(
        w.res.fetch_key(Some(&mut w.clients[0]), now, 0x0200_0000),
        KeyFetch::Refused
    );
    assert_eq!(w.res.stats().key_fetches_refused, 2);
    let later = now + Duration::from_millis(250);
    assert_eq!(
        w.res.fetch_key(Some(&mut w.clients[0]), later, 0x0200_0000),
        KeyFetch::Started
    );
    // Unknown nodes end as KeyUnknown.
    w.answering = true;
    w.pump();
    let unknown = w
        .events()
        .iter()
        .filter(|e| matches!(e, ResolveEvent::KeyUnknown { .. }))
        .count();
    assert_eq!(unknown, burst as usize);
}
