//! Several `pilot-rendezvous` frontends on one PostgreSQL database serve
//! one network (`spec/registry.md` §11.3). Each test starts a throwaway
//! cluster of its own and skips (saying so) only when PostgreSQL is not
//! installed.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Pg, Rv, STEP, ident, sign};
use pilot_proto::registry::messages::{
    PUSH_HANDSHAKE, PollHandshakes, Request, RequestHandshake, Response,
};

/// Waits (bounded by [`STEP`]) until `c` can look up `id`.
fn await_lookup(c: &mut Client, id: u32) -> pilot_proto::registry::messages::LookupOk {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(ok) = c.lookup(id) {
            return ok;
        }
        assert!(Instant::now() < deadline, "node {id} never became visible");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn three_frontends_serve_one_network() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.database("net3");
    let mut fronts: Vec<Rv> = (0..3).map(|_| Rv::start(url.as_ref(), &[])).collect();
    let mut clients: Vec<Client> = fronts.iter().map(|f| Client::connect(f.registry)).collect();
    // Registered through each frontend, resolvable through every other.
    let mut ids = Vec::new();
    for seed in 0..30u32 {
        let via = (seed % 3) as usize;
        ids.push((seed, clients[via].register(seed)));
    }
    let mut unique: Vec<u32> = ids.iter().map(|(_, id)| *id).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "node IDs collide across frontends: {ids:?}"
    );
    for (seed, id) in &ids {
        for c in clients.iter_mut() {
            let ok = await_lookup(c, *id);
            assert_eq!(ok.public_key, ident(*seed).public_key_b64());
        }
    }
    // Re-registering a key through another frontend gets its ID back.
    let (seed, id) = ids[4];
    assert_eq!(clients[(seed as usize + 1) % 3].register(seed), id);
    // Two frontends alone, the third stopped: still one network.
    drop(fronts.pop());
    let (seed, id) = (500, clients[1].register(500));
    assert_eq!(
        await_lookup(&mut clients[0], id).public_key,
        ident(seed).public_key_b64()
    );
    let (seed, id) = ids[2];
    assert_eq!(
        await_lookup(&mut clients[0], id).public_key,
        ident(seed).public_key_b64()
    );
}

#[test]
fn handshake_relayed_across_frontends_is_pushed_promptly() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.database("relay");
    let a = Rv::start(url.as_ref(), &[]);
    let b = Rv::start(url.as_ref(), &[]);
    let mut ca = Client::connect(a.registry);
    let mut cb = Client::connect(b.registry);
    let requester = ca.register(1);
    let target = cb.register(2);
    await_lookup(&mut ca, target);
    // The target listens for pushes on its connection to frontend b.
    let poll = |node: u32, seed: u32, push: bool| {
        Request::PollHandshakes(PollHandshakes {
            node_id: node,
            push,
            signature: sign(seed, &format!("poll_handshakes:{node}")),
            ..Default::default()
        })
    };
    if let Response::Error { error } = cb.call(&poll(target, 2, true)) {
        panic!("poll: {error}");
    }
    // The requester asks through frontend a.
    let started = Instant::now();
    let r = ca.call(&Request::RequestHandshake(RequestHandshake {
        from_node_id: requester,
        to_node_id: target,
        justification: "hello across".into(),
        signature: sign(1, &format!("handshake:{requester}:{target}")),
        ..Default::default()
    }));
    assert!(!matches!(r, Response::Error { .. }), "{r:?}");
    // The push arrives on b's connection well before any 30 s poll.
    cb.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match cb.read_response().expect("push from frontend b") {
        Response::Push { kind, from } => {
            assert_eq!(kind, PUSH_HANDSHAKE);
            assert_eq!(from, requester);
        }
        other => panic!("expected a push, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "push took {took:?}");
    // And the request is in the target's inbox at b.
    match cb.call(&poll(target, 2, false)) {
        Response::PollHandshakesOk { requests, .. } => {
            let from: Vec<u32> = requests.iter().map(|r| r.from_node_id).collect();
            assert!(from.contains(&requester), "{requests:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// Registers from `workers` threads through `addr` until `stop`, recording
/// every acknowledged (seed, id).
fn burst(
    addr: std::net::SocketAddr,
    workers: u32,
    base: u32,
    acked: &Arc<Mutex<Vec<(u32, u32)>>>,
    refused: &Arc<Mutex<Vec<String>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let acked = acked.clone();
            let refused = refused.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let seed = base + w * 100_000 + i;
                    match c.try_call(&common::register_req(seed)) {
                        Ok(Response::RegisterOk(ok)) => {
                            acked.lock().unwrap().push((seed, ok.node_id))
                        }
                        Ok(Response::Error { error }) => {
                            refused.lock().unwrap().push(error);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Ok(other) => panic!("{other:?}"),
                        Err(_) => break, // the frontend died mid-request
                    }
                }
            })
        })
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP * 3;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_9_of_a_frontend_loses_no_acknowledged_registration() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.database("kill");
    let mut a = Rv::start(url.as_ref(), &[]);
    let b = Rv::start(url.as_ref(), &[]);
    let acked: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = burst(a.registry, 4, 0, &acked, &refused, &stop);
    wait_for("300 acknowledged registrations", || {
        acked.lock().unwrap().len() >= 300
    });
    a.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // Every acknowledged node is known to the surviving frontend and to a
    // fresh one started after the kill.
    let c = Rv::start(url.as_ref(), &[]);
    for rv in [&b, &c] {
        let mut cl = Client::connect(rv.registry);
        for (seed, id) in &acked {
            let got = await_lookup(&mut cl, *id);
            assert_eq!(got.public_key, ident(*seed).public_key_b64(), "node {id}");
        }
    }
}

#[test]
fn postgres_restart_under_load_fails_clearly_and_loses_nothing() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.database("restart");
    let a = Rv::start(url.as_ref(), &[]);
    let acked: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = burst(a.registry, 4, 0, &acked, &refused, &stop);
    wait_for("100 acknowledged registrations", || {
        acked.lock().unwrap().len() >= 100
    });
    pg.ctl_stop();
    // While it is down, requests fail with a clear error (not a hang).
    wait_for("refusals while the database is down", || {
        refused.lock().unwrap().len() >= 8
    });
    let before = acked.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(500));
    pg.ctl_start();
    // Back: registrations are acknowledged again.
    wait_for("registrations after the restart", || {
        acked.lock().unwrap().len() >= before + 100
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let errors = refused.lock().unwrap().clone();
    assert!(
        errors.iter().all(|e| e.contains("store unavailable")),
        "unexpected refusals: {:?}",
        &errors[..errors.len().min(5)]
    );
    let acked = acked.lock().unwrap().clone();
    let fresh = Rv::start(url.as_ref(), &[]);
    for rv in [&a, &fresh] {
        let mut cl = Client::connect(rv.registry);
        for (seed, id) in &acked {
            let got = await_lookup(&mut cl, *id);
            assert_eq!(got.public_key, ident(*seed).public_key_b64(), "node {id}");
        }
    }
}

/// In-process frontends with a short stale threshold: heartbeats sent to
/// one frontend keep a node alive whichever frontend reaps, and once they
/// stop the node is reaped on every frontend (one reaper, seen by all).
#[test]
fn heartbeats_and_reaping_across_frontends() {
    use pilot_driver_mio::rendezvous::server::{Server, ServerConfig};
    use pilot_proto::registry::messages::Heartbeat;
    let Some(pg) = Pg::start() else { return };
    let url = pg.database("reap");
    let start = || {
        let mut cfg = ServerConfig::new(url.clone().into());
        cfg.registry_addr = "127.0.0.1:0".parse().unwrap();
        cfg.beacon_addr = "127.0.0.1:0".parse().unwrap();
        cfg.handle_signals = false;
        cfg.registry.rate_limits = false;
        cfg.registry.stale_threshold = Duration::from_secs(4);
        cfg.registry.reap_interval = Duration::from_millis(200);
        let server = Server::bind(cfg).expect("bind");
        let addr = server.registry_addr().unwrap();
        let stop = server.stop_handle();
        let t = std::thread::spawn(move || server.run());
        (addr, stop, t)
    };
    let (a, stop_a, ta) = start();
    let (b, stop_b, tb) = start();
    let mut ca = Client::connect(a);
    let mut cb = Client::connect(b);
    let id = ca.register(77);
    await_lookup(&mut cb, id);
    // Heartbeats through b only, for longer than the stale threshold.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let r = cb.call(&Request::Heartbeat(Heartbeat {
            node_id: id,
            signature: sign(77, &format!("heartbeat:{id}")),
            ..Default::default()
        }));
        assert!(!matches!(r, Response::Error { .. }), "{r:?}");
        assert!(ca.lookup(id).is_some(), "reaped on a despite heartbeats");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Silence: reaped, and every frontend learns it.
    let deadline = Instant::now() + STEP;
    while ca.lookup(id).is_some() || cb.lookup(id).is_some() {
        assert!(
            Instant::now() < deadline,
            "node {id} never reaped everywhere"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_a.stop();
    stop_b.stop();
    ta.join().unwrap().unwrap();
    tb.join().unwrap().unwrap();
}

/// Admin operations need the admin token on every frontend of a shared
/// database: a frontend never honours an admin request without its own
/// configured token, and one started without a token refuses them all.
#[test]
fn admin_token_is_required_on_every_frontend() {
    use pilot_proto::registry::messages::{BeaconRegister, CreateNetwork, ListNetworks};
    let Some(pg) = Pg::start() else { return };
    let url = pg.database("admin");
    let with_a = Rv::start(url.as_ref(), &["--admin-token", "alpha"]);
    let with_b = Rv::start(url.as_ref(), &["--admin-token", "alpha"]);
    let without = Rv::start(url.as_ref(), &[]);
    let mut a = Client::connect(with_a.registry);
    let mut b = Client::connect(with_b.registry);
    let mut n = Client::connect(without.registry);
    let creator = a.register(1);
    await_lookup(&mut b, creator);
    await_lookup(&mut n, creator);
    let create = |token: &str, name: &str| {
        Request::CreateNetwork(CreateNetwork {
            node_id: creator,
            name: name.into(),
            admin_token: token.into(),
            ..Default::default()
        })
    };
    let refused = |r: Response| matches!(r, Response::Error { .. });
    for c in [&mut a, &mut b] {
        assert!(refused(c.call(&create("", "nope"))), "no token");
        assert!(refused(c.call(&create("beta", "nope"))), "wrong token");
        let r = c.call(&Request::BeaconRegister(BeaconRegister {
            beacon_id: 7,
            addr: "127.0.0.1:9".into(),
            admin_token: "wrong".into(),
        }));
        assert!(refused(r), "beacon_register with a wrong token");
    }
    // The right token works on the second frontend too…
    match b.call(&create("alpha", "ops")) {
        Response::CreateNetworkOk { name, .. } => assert_eq!(name, "ops"),
        other => panic!("{other:?}"),
    }
    // …but not on a frontend that has no token configured, even though
    // the others accept it and the network is visible there.
    assert!(refused(n.call(&create("alpha", "ops2"))));
    let listed = |c: &mut Client| match c.call(&Request::ListNetworks(ListNetworks {
        admin_token: String::new(),
    })) {
        Response::ListNetworksOk { networks } => networks.iter().any(|x| x.name == "ops"),
        other => panic!("{other:?}"),
    };
    wait_for("network visible without a token", || listed(&mut n));
    wait_for("network visible on the first frontend", || listed(&mut a));
}

/// A database written before identity records (key → node ID rows, schema
/// version 2) is converted when a frontend of this version starts: no live
/// key rows remain, and every node keeps its ID by its key.
#[test]
fn key_rows_of_an_older_schema_are_converted() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.database("upgrade");
    let (id1, id2) = {
        let a = Rv::start(url.as_ref(), &[]);
        let mut c = Client::connect(a.registry);
        (c.register(1), c.register(2))
    };
    // Back to the earlier form: `03 key` → the ID as JSON.
    let live_key_rows = "SELECT count(*) FROM pilot_records \
         WHERE substr(key, 1, 1) = '\\x03'::bytea AND value IS NOT NULL";
    pg.sql(
        "upgrade",
        "UPDATE pilot_records \
         SET key = '\\x03'::bytea || substr(key, 6), \
             value = convert_to(((('x' || encode(substr(key, 2, 4), 'hex'))::bit(32))::int)::text, 'UTF8') \
         WHERE substr(key, 1, 1) = '\\x0e'::bytea AND value IS NOT NULL; \
         UPDATE pilot_schema SET version = 2;",
    );
    assert_eq!(pg.sql("upgrade", live_key_rows), "2");
    let b = Rv::start(url.as_ref(), &[]);
    assert_eq!(pg.sql("upgrade", live_key_rows), "0");
    assert_eq!(pg.sql("upgrade", "SELECT version FROM pilot_schema"), "3");
    let mut c = Client::connect(b.registry);
    assert_eq!(c.register(1), id1);
    let id3 = c.register(3);
    assert!(id3 != id1 && id3 != id2);
    // A frontend started afterwards loads the converted identities.
    let fresh = Rv::start(url.as_ref(), &[]);
    assert_eq!(Client::connect(fresh.registry).register(2), id2);
}
