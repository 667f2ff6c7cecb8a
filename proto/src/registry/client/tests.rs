//! Client tests: against a live in-memory registry, and against scripted
//! replies for the retry and back-off rules. Time is only ever a value.

use super::*;
use crate::registry::codec::{decode_request, decode_response, encode_request, encode_response};
use crate::registry::limits::MAX_CLIENT_REQUEST_LEN;
use crate::registry::server::{Config, Registry};
use std::net::SocketAddr;

const T0: u64 = 1_767_225_600;

fn t_ms(ms: u64) -> Instant {
    Instant::from_nanos(T0 * 1_000_000_000 + ms * 1_000_000)
}

/// The registry's wall clock at node time `t`: the node clock here counts
/// from the Unix epoch.
fn wall(t: Instant) -> crate::time::UnixTime {
    crate::time::UnixTime::from_nanos(t.as_nanos())
}

fn ident(seed: u8) -> Identity {
    Identity::from_seed(&[seed; 32])
}

fn cfg() -> ClientConfig {
    ClientConfig {
        listen_addr: "127.0.0.1:4000".into(),
        ..ClientConfig::default()
    }
}

fn events(c: &mut RegistryClient) -> Vec<ClientEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Connects a client to a registry through the real codec.
struct Link {
    reg: Registry,
    client: RegistryClient,
    now: Instant,
    up: bool,
    log: Vec<ClientEvent>,
}

impl Link {
    fn new(reg_cfg: Config, client_cfg: ClientConfig, seed: u8) -> Self {
        let now = t_ms(0);
        let mut l = Link {
            reg: Registry::new(reg_cfg, wall(now)),
            client: RegistryClient::new(client_cfg, ident(seed), now),
            now,
            up: false,
            log: Vec::new(),
        };
        l.settle();
        l
    }

    /// Delivers everything the client wants to send and every event.
    fn settle(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(e) = self.client.poll_event() {
                progressed = true;
                if e == ClientEvent::Dial {
                    self.up = true;
                    self.client.connected(self.now);
                }
                self.log.push(e);
            }
            if let Some(req) = self.client.poll_transmit() {
                progressed = true;
                let bytes = encode_request(&req).unwrap();
                let req = decode_request(&bytes).unwrap();
                let peer: SocketAddr = "127.0.0.1:6000".parse().unwrap();
                let reply = self.reg.handle(wall(self.now), peer, req);
                let bytes = encode_response(&reply.response).unwrap();
                self.client
                    .handle_response(self.now, decode_response(&bytes).unwrap());
            }
            if !progressed {
                return;
            }
        }
    }

    fn run_until(&mut self, end: Instant) {
        while let Some(t) = self.client.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.client.handle_timeout(self.now);
            self.reg.handle_timeout(wall(self.now));
            self.settle();
        }
        self.now = end;
        self.reg.handle_timeout(wall(end));
    }
}

#[test]
fn registers_heartbeats_and_survives_reaping() {
    let mut l = Link::new(Config::default(), cfg(), 1);
    assert!(matches!(
        l.log.as_slice(),
        [
            ClientEvent::Dial,
            ClientEvent::Registered { node_id: 1, .. }
        ]
    ));
    assert_eq!(l.client.node_id(), Some(1));
    assert_eq!(l.client.poll_timeout(), Some(t_ms(30_000)));
    // Ten minutes of heartbeats keep the node alive.
    l.run_until(t_ms(600_000));
    assert!(l.reg.state().nodes.contains_key(&1));
    assert_eq!(l.reg.state().nodes[&1].last_seen, wall(t_ms(600_000)));
    // The registry restarts empty-handed on this node (e.g. it was reaped
    // during a partition): the next heartbeat gets "not found" and the
    // client registers again, getting the same ID back.
    let dereg = crate::registry::codec::Request::Deregister(crate::registry::codec::Deregister {
        node_id: 1,
        signature: ident(1).sign_b64(b"deregister:1"),
        ..Default::default()
    });
    l.reg
        .handle(wall(l.now), "127.0.0.1:1".parse().unwrap(), dereg);
    l.log.clear();
    l.run_until(t_ms(640_000));
    assert!(l.log.contains(&ClientEvent::Reregistering), "{:?}", l.log);
    assert!(
        l.log
            .iter()
            .any(|e| matches!(e, ClientEvent::Registered { node_id: 1, .. }))
    );
    assert!(l.reg.state().nodes.contains_key(&1));
}

#[test]
fn resolves_and_polls_inbox() {
    let mut l = Link::new(
        Config::default(),
        ClientConfig {
            inbox_poll_interval: Some(Duration::from_secs(10)),
            ..cfg()
        },
        1,
    );
    // A second node, registered directly, asks node 1 for a handshake.
    let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let other = ident(2);
    let r = l.reg.handle(
        wall(l.now),
        peer,
        Request::Register(codec::Register {
            listen_addr: "127.0.0.1:4001".into(),
            public_key: other.public_key_b64(),
            ..Default::default()
        }),
    );
    assert!(r.error.is_none());
    let id = l.client.call(l.now, Call::Resolve(2)).unwrap();
    l.settle();
    assert!(l.log.contains(&ClientEvent::CallDone {
        id,
        result: Err("resolve denied: node 2 is private (establish mutual trust first)".into())
    }));
    let hs = Request::RequestHandshake(codec::RequestHandshake {
        from_node_id: 2,
        to_node_id: 1,
        justification: "let me in".into(),
        signature: other.sign_b64(b"handshake:2:1"),
        sig_ts: None,
    });
    assert!(l.reg.handle(wall(l.now), peer, hs).error.is_none());
    l.run_until(t_ms(10_000));
    let inbox = l.log.iter().find_map(|e| match e {
        ClientEvent::HandshakeInbox { requests, .. } => Some(requests.clone()),
        _ => None,
    });
    let requests = inbox.expect("inbox polled");
    assert_eq!(requests[0].from_node_id, 2);
    assert_eq!(requests[0].justification, "let me in");
    // Node 2 trusts node 1's view: make node 2 public, resolve succeeds.
    let vis = Request::SetVisibility(codec::SetVisibility {
        node_id: 2,
        public: true,
        signature: other.sign_b64(b"set_visibility:2"),
        ..Default::default()
    });
    assert!(l.reg.handle(wall(l.now), peer, vis).error.is_none());
    let id = l.client.call(l.now, Call::Resolve(2)).unwrap();
    l.settle();
    assert!(l.log.contains(&ClientEvent::CallDone {
        id,
        result: Ok(Response::ResolveOk(codec::ResolveOk {
            node_id: 2,
            real_addr: "127.0.0.1:4001".into(),
            lan_addrs: None,
        }))
    }));
}

#[test]
fn pushes_fetch_the_inbox_at_once_and_never_count_as_replies() {
    let mut l = Link::new(
        Config::default(),
        ClientConfig {
            inbox_poll_interval: Some(Duration::from_secs(30)),
            push: true,
            ..cfg()
        },
        1,
    );
    let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let other = ident(2);
    let r = l.reg.handle(
        wall(l.now),
        peer,
        Request::Register(codec::Register {
            listen_addr: "127.0.0.1:4001".into(),
            public_key: other.public_key_b64(),
            ..Default::default()
        }),
    );
    assert!(r.error.is_none());
    let hs = Request::RequestHandshake(codec::RequestHandshake {
        from_node_id: 2,
        to_node_id: 1,
        justification: "now".into(),
        signature: other.sign_b64(b"handshake:2:1"),
        sig_ts: None,
    });
    assert!(l.reg.handle(wall(l.now), peer, hs).error.is_none());
    // A request is in flight when the push arrives: the push must not be
    // taken for its reply.
    let id = l.client.call(l.now, Call::Resolve(2)).unwrap();
    let req = l.client.poll_transmit().expect("resolve sent");
    let push = |kind: &str| {
        let bytes = format!(r#"{{"type":"push","kind":"{kind}","from":2}}"#);
        decode_response(bytes.as_bytes()).unwrap()
    };
    l.client.handle_response(l.now, push(codec::PUSH_HANDSHAKE));
    l.client
        .handle_response(l.now, push(codec::PUSH_TRUST_REVOKED));
    let reply = l.reg.handle(wall(l.now), peer, req);
    l.client.handle_response(l.now, reply.response);
    l.settle();
    assert!(
        !l.log.contains(&ClientEvent::CloseConnection),
        "{:?}",
        l.log
    );
    assert!(
        l.log.iter().any(
            |e| matches!(e, ClientEvent::CallDone { id: done, result: Err(_) } if *done == id)
        )
    );
    assert!(l.log.contains(&ClientEvent::TrustRevoked { by: 2 }));
    // No time passed, yet the inbox was fetched.
    let inbox = l.log.iter().find_map(|e| match e {
        ClientEvent::HandshakeInbox { requests, .. } => Some(requests.clone()),
        _ => None,
    });
    assert_eq!(
        inbox.expect("inbox fetched on push")[0].justification,
        "now"
    );
}

#[test]
fn push_opt_in_is_sent_after_registering() {
    let mut c = RegistryClient::new(
        ClientConfig {
            push: true,
            ..cfg()
        },
        ident(1),
        t_ms(0),
    );
    let mut reg = Registry::new(Config::default(), wall(t_ms(0)));
    let peer: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    let mut wanted = false;
    for _ in 0..10 {
        while let Some(e) = c.poll_event() {
            if e == ClientEvent::Dial {
                c.connected(t_ms(0));
            }
        }
        let Some(req) = c.poll_transmit() else { break };
        let reply = reg.handle(wall(t_ms(0)), peer, req);
        wanted |= reply
            .effects
            .contains(&crate::registry::server::Effect::PushWanted(1));
        c.handle_response(t_ms(0), reply.response);
    }
    assert!(
        wanted,
        "the client asked for pushes right after registering"
    );
}

#[test]
fn strong_signatures_pass_a_strict_registry() {
    let mut l = Link::new(
        Config {
            strict_signatures: true,
            ..Config::default()
        },
        ClientConfig {
            strong_signatures: true,
            unix_ms_at_epoch: Some(0),
            ..cfg()
        },
        1,
    );
    assert_eq!(l.client.node_id(), Some(1));
    l.run_until(t_ms(300_000));
    assert!(
        !l.log
            .iter()
            .any(|e| matches!(e, ClientEvent::Reregistering)),
        "{:?}",
        l.log
    );
    assert!(l.reg.state().sig_ts[&1] >= T0 * 1000 + 270_000);
    // The legacy-form client is refused by the strict registry.
    let mut legacy = Link::new(
        Config {
            strict_signatures: true,
            ..Config::default()
        },
        cfg(),
        1,
    );
    assert_eq!(legacy.client.node_id(), None);
    assert!(legacy.log.iter().any(|e| matches!(
        e,
        ClientEvent::RegistrationFailed { reason } if reason.contains("strict mode")
    )));
    legacy.run_until(t_ms(1000));
}

#[test]
fn reconnect_backoff_doubles_to_the_cap() {
    let mut c = RegistryClient::new(cfg(), ident(1), t_ms(0));
    assert_eq!(events(&mut c), vec![ClientEvent::Dial]);
    let mut now = t_ms(0);
    let mut gaps = Vec::new();
    for _ in 0..7 {
        c.disconnected(now);
        let next = c.poll_timeout().unwrap();
        gaps.push(next.saturating_duration_since(now).as_millis());
        // Nothing happens before the deadline...
        c.handle_timeout(next.saturating_sub(Duration::from_millis(1)));
        assert!(events(&mut c).is_empty());
        // ...and a dial at it.
        now = next;
        c.handle_timeout(now);
        assert_eq!(events(&mut c), vec![ClientEvent::Dial]);
    }
    assert_eq!(gaps, vec![500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    // A successful exchange resets the back-off.
    c.connected(now);
    assert!(matches!(c.poll_transmit(), Some(Request::Register(_))));
    c.handle_response(
        now,
        Response::RegisterOk(codec::RegisterOk {
            address: "0:0000.0000.0007".into(),
            node_id: 7,
            public_key: ident(1).public_key_b64(),
            ..Default::default()
        }),
    );
    c.disconnected(now);
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_millis(500)));
}

#[test]
fn in_flight_request_is_retried_once_then_dropped() {
    let mut c = RegistryClient::new(cfg(), ident(1), t_ms(0));
    events(&mut c);
    let now = t_ms(0);
    c.connected(now);
    c.poll_transmit();
    c.handle_response(
        now,
        Response::RegisterOk(codec::RegisterOk {
            address: "0:0000.0000.0001".into(),
            node_id: 1,
            public_key: ident(1).public_key_b64(),
            ..Default::default()
        }),
    );
    events(&mut c);
    let id = c.call(now, Call::Resolve(9)).unwrap();
    assert!(matches!(c.poll_transmit(), Some(Request::Resolve(r)) if r.node_id == 9));
    // Connection breaks: after reconnecting the same resolve goes again.
    c.disconnected(now);
    let t1 = c.poll_timeout().unwrap();
    c.handle_timeout(t1);
    assert_eq!(events(&mut c), vec![ClientEvent::Dial]);
    c.connected(t1);
    assert!(matches!(c.poll_transmit(), Some(Request::Resolve(r)) if r.node_id == 9));
    // Breaks again: dropped, not retried a second time.
    c.disconnected(t1);
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::CallDone {
            id,
            result: Err("request failed".into())
        }]
    );
    let t2 = c.poll_timeout().unwrap();
    c.handle_timeout(t2);
    c.connected(t2);
    assert_eq!(c.poll_transmit(), None);
}

#[test]
fn response_timeout_closes_and_redials() {
    let mut c = RegistryClient::new(cfg(), ident(1), t_ms(0));
    events(&mut c);
    c.connected(t_ms(0));
    assert!(c.poll_transmit().is_some());
    assert_eq!(c.poll_timeout(), Some(t_ms(30_000)));
    c.handle_timeout(t_ms(29_999));
    assert!(events(&mut c).is_empty());
    c.handle_timeout(t_ms(30_000));
    assert_eq!(events(&mut c), vec![ClientEvent::CloseConnection]);
    c.handle_timeout(t_ms(30_500));
    assert_eq!(events(&mut c), vec![ClientEvent::Dial]);
    c.connected(t_ms(30_500));
    // Registration is sent again on the new connection.
    assert!(matches!(c.poll_transmit(), Some(Request::Register(_))));
}

#[test]
fn registration_errors_retry_with_backoff_and_errors_are_not_resent() {
    let mut c = RegistryClient::new(cfg(), ident(1), t_ms(0));
    events(&mut c);
    let mut now = t_ms(0);
    c.connected(now);
    let mut gaps = Vec::new();
    for _ in 0..4 {
        assert!(matches!(c.poll_transmit(), Some(Request::Register(_))));
        c.handle_response(
            now,
            Response::error("rate limited: too many registrations from 127.0.0.1"),
        );
        assert!(matches!(
            events(&mut c).as_slice(),
            [ClientEvent::RegistrationFailed { .. }]
        ));
        assert_eq!(c.poll_transmit(), None);
        let next = c.poll_timeout().unwrap();
        gaps.push(next.saturating_duration_since(now).as_millis());
        now = next;
        c.handle_timeout(now);
    }
    assert_eq!(gaps, vec![500, 1000, 2000, 4000]);
}

#[test]
fn three_heartbeat_failures_trigger_reregistration() {
    let mut c = RegistryClient::new(cfg(), ident(1), t_ms(0));
    events(&mut c);
    let mut now = t_ms(0);
    c.connected(now);
    c.poll_transmit();
    c.handle_response(
        now,
        Response::RegisterOk(codec::RegisterOk {
            address: "0:0000.0000.0001".into(),
            node_id: 1,
            public_key: ident(1).public_key_b64(),
            ..Default::default()
        }),
    );
    events(&mut c);
    for i in 0..3 {
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
        assert!(matches!(c.poll_transmit(), Some(Request::Heartbeat(h)) if h.node_id == 1));
        c.handle_response(now, Response::error("request failed"));
        let ev = events(&mut c);
        if i < 2 {
            assert!(ev.is_empty(), "{ev:?}");
        } else {
            assert_eq!(ev, vec![ClientEvent::Reregistering]);
        }
    }
    assert_eq!(c.node_id(), None);
    assert!(matches!(c.poll_transmit(), Some(Request::Register(_))));
}

#[test]
fn unsolicited_reply_closes_connection_and_queue_is_bounded() {
    let mut c = RegistryClient::new(cfg(), ident(1), t_ms(0));
    events(&mut c);
    c.handle_response(t_ms(0), Response::HeartbeatOk { time: 1 });
    assert_eq!(events(&mut c), vec![ClientEvent::CloseConnection]);
    for n in 0..CLIENT_MAX_QUEUE as u32 - 1 {
        c.call(t_ms(0), Call::Resolve(n + 100)).unwrap();
    }
    assert_eq!(
        c.call(t_ms(0), Call::Resolve(5)),
        Err(ClientError::QueueFull)
    );
}

#[test]
fn huge_backoff_cap_does_not_overflow() {
    let mut c = RegistryClient::new(
        ClientConfig {
            backoff_max: Duration::MAX,
            ..cfg()
        },
        ident(1),
        t_ms(0),
    );
    for _ in 0..200 {
        c.disconnected(t_ms(0));
    }
    // The deadline saturates at the far future instead of panicking.
    assert!(c.poll_timeout().is_some());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn reply(kind: u8, n: u32) -> Response {
        match kind % 7 {
            0 => Response::RegisterOk(codec::RegisterOk {
                address: "0:0000.0000.0001".into(),
                node_id: n,
                public_key: String::new(),
                ..Default::default()
            }),
            1 => Response::HeartbeatOk { time: u64::from(n) },
            2 => Response::error("node 1: node not found"),
            3 => Response::error("request failed"),
            4 => Response::ResolveOk(codec::ResolveOk {
                node_id: n,
                real_addr: "127.0.0.1:1".into(),
                lan_addrs: None,
            }),
            5 => Response::PollHandshakesOk {
                requests: vec![],
                responses: vec![],
            },
            _ => Response::DeregisterOk {},
        }
    }

    proptest! {
        /// Any interleaving of connection changes, replies (expected or
        /// not), commands and time keeps the client's bounds and rules.
        #[test]
        fn arbitrary_inputs_keep_bounds(ops in proptest::collection::vec((0u8..6, any::<u8>(), any::<u16>()), 0..200)) {
            let mut now = t_ms(0);
            let mut c = RegistryClient::new(
                ClientConfig { inbox_poll_interval: Some(Duration::from_secs(5)), ..cfg() },
                ident(1),
                now,
            );
            for (op, x, y) in ops {
                match op {
                    0 => c.connected(now),
                    1 => c.disconnected(now),
                    2 => c.handle_response(now, reply(x, u32::from(y))),
                    3 => { let _ = c.call(now, Call::Resolve(u32::from(y))); }
                    4 => { let _ = c.poll_inbox(now); }
                    _ => {
                        now = now + Duration::from_millis(u64::from(y) * 10);
                        c.handle_timeout(now);
                    }
                }
                while let Some(req) = c.poll_transmit() {
                    // Until registered only registration goes out.
                    if c.node_id.is_none() {
                        prop_assert!(matches!(req, Request::Register(_)), "{req:?}");
                    }
                    prop_assert!(encode_request(&req).unwrap().len() < MAX_CLIENT_REQUEST_LEN);
                }
                while c.poll_event().is_some() {}
                prop_assert!(c.queue.len() <= CLIENT_MAX_QUEUE);
                prop_assert!(c.events.len() <= MAX_EVENTS);
                prop_assert!(c.conn_backoff <= c.cfg.backoff_max);
                if c.in_flight.is_some() {
                    prop_assert_eq!(c.conn, Conn::Up);
                }
                // There is always something to wait for.
                prop_assert!(c.poll_timeout().is_some());
            }
        }
    }
}

#[test]
fn unanswered_dial_times_out_and_backs_off() {
    let mut c = RegistryClient::new(cfg(), ident(1), t_ms(0));
    assert_eq!(events(&mut c), vec![ClientEvent::Dial]);
    assert_eq!(c.poll_timeout(), Some(t_ms(5_000)));
    c.handle_timeout(t_ms(4_999));
    assert!(events(&mut c).is_empty());
    c.handle_timeout(t_ms(5_000));
    assert_eq!(events(&mut c), vec![ClientEvent::CloseConnection]);
    assert_eq!(c.poll_timeout(), Some(t_ms(5_500)));
    c.handle_timeout(t_ms(5_500));
    assert_eq!(events(&mut c), vec![ClientEvent::Dial]);
}
