//! Known-answer exchanges for the beacon server and client state machines
//! (`conformance/vectors/beacon_exchanges.json`, `spec/beacon.md`): each
//! step feeds one input and checks every datagram that comes out, in order.

use std::net::SocketAddr;

use pilot_conformance::{field, load, name, unhex};
use pilot_proto::beacon::client::{BeaconClient, BeaconEvent, ClientConfig};
use pilot_proto::beacon::server::{BeaconServer, ServerConfig};
use pilot_proto::time::Instant;
use serde_json::Value;

/// Vectors the file must hold, so none silently disappear.
const COUNT: usize = 16;

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// The expected outputs of a step.
fn expected(step: &Value, n: &str) -> Vec<(SocketAddr, Vec<u8>)> {
    step.get("out")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{n}: step without \"out\""))
        .iter()
        .map(|o| (addr(field(o, "to")), unhex(field(o, "bytes"))))
        .collect()
}

/// Everything a `poll_transmit` yields.
fn drain(
    mut poll: impl FnMut(&mut [u8]) -> Option<(SocketAddr, usize)>,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0u8; 70_000];
    let mut out = Vec::new();
    while let Some((dst, len)) = poll(&mut buf) {
        out.push((dst, buf[..len].to_vec()));
    }
    out
}

fn run_server(v: &Value) {
    let n = name(v);
    let config = v.get("config");
    let cfg = ServerConfig {
        beacon_id: config.and_then(|c| num(c, "beacon_id")).unwrap_or(0) as u32,
        ..ServerConfig::default()
    };
    let mut server = BeaconServer::new(cfg, Instant::ZERO);
    let peers: Vec<SocketAddr> = config
        .and_then(|c| c.get("peers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|p| addr(p.as_str().unwrap())).collect())
        .unwrap_or_default();
    server.set_peers(&peers);
    for (i, step) in v["steps"].as_array().unwrap().iter().enumerate() {
        let now = Instant::from_millis(num(step, "at_ms").unwrap_or(0));
        if step.get("tick").is_some() {
            server.handle_timeout(now);
        } else if let Some(node) = num(step, "notify") {
            assert!(server.notify_handshake(now, node as u32), "{n} step {i}");
        } else {
            let from = addr(field(step, "from"));
            server.handle_datagram(now, from, &unhex(field(step, "in")));
        }
        let got = drain(|b| server.poll_transmit(now, b).map(|t| (t.dst, t.len)));
        assert_eq!(got, expected(step, n), "{n} step {i}");
    }
}

fn run_client(v: &Value) {
    let n = name(v);
    let config = &v["config"];
    let cfg = ClientConfig::new(
        addr(field(config, "beacon")),
        num(config, "node_id").unwrap() as u32,
    );
    let mut client = BeaconClient::new(cfg, Instant::ZERO);
    for (i, step) in v["steps"].as_array().unwrap().iter().enumerate() {
        let now = Instant::from_millis(num(step, "at_ms").unwrap_or(0));
        if step.get("tick").is_some() {
            client.handle_timeout(now);
        } else if let Some(target) = num(step, "punch") {
            client.request_punch(target as u32);
        } else {
            let from = addr(field(step, "from"));
            let input = unhex(field(step, "in"));
            let event = client.handle_datagram(now, from, &input);
            if let Some(inner) = step.get("relayed").and_then(Value::as_str) {
                let want = unhex(inner);
                let Some(BeaconEvent::Relayed { frame, .. }) = event else {
                    panic!("{n} step {i}: expected a relayed frame, got {event:?}");
                };
                assert_eq!(frame, want.as_slice(), "{n} step {i}");
            }
        }
        let got = drain(|b| client.poll_transmit(now, b).map(|t| (t.dst, t.len)));
        assert_eq!(got, expected(step, n), "{n} step {i}");
    }
}

#[test]
fn beacon_exchanges() {
    let vectors = load("beacon_exchanges.json");
    assert_eq!(vectors.len(), COUNT);
    for v in &vectors {
        match field(v, "role") {
            "server" => run_server(v),
            "client" => run_client(v),
            r => panic!("{}: unknown role {r}", name(v)),
        }
    }
}
