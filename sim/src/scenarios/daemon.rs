//! Whole-network scenarios: a rendezvous and full daemons ([`crate::net`]),
//! driven only through IPC bytes as applications would.
//!
//! - `daemon-trust`: `--nodes` private daemons (at least 2) register. Over
//!   the ring of pairs (i, i+1) (one pair for 2 nodes), every dial to the
//!   peer fails first (a private node does not resolve without trust);
//!   then even pairs trust each other by **manual** approval (i asks, j
//!   sees the request pending and approves) and odd pairs by **mutual**
//!   requests (both ask; the second is approved automatically). Both ends
//!   must list the other as trusted, and then dial and echo through the
//!   other's port 7, both ways. With 4 or more nodes, nodes 0 and 2 (no
//!   trust between them) still cannot reach each other at the end.
//!   Finally node i of the first pair revokes j: the registry drops the
//!   pair and j, told by a push, forgets i too.
//! - `daemon-echo`: `--nodes` public daemons (at least 2); the application
//!   of node i dials port 7 (echo) of node i+1, writes `--bytes` in 16-KiB
//!   `Send` frames, reads the echo back and compares SHA-256, then closes.
//! - `daemon-rotate`: key rotation mid-transfer (see
//!   [`DaemonRotateScenario`]).
//! - `registry-restart`: `--nodes` public daemons (at least 2) register;
//!   the rendezvous crashes (connections reset, store kept), stays down
//!   2 s and restarts from its stored records alone. Every daemon must
//!   register again with the same address, the restored registry must
//!   hold every node, and a first dial 0 → 1 (a fresh look-up at the
//!   restored registry) must echo.
//!
//! Each runs at least `--duration-ms` and goes on until its script is
//! done (bounded). Engine errors and every check land in the outcome.

use std::time::Duration;

use pilot_proto::addr::Addr;
use pilot_proto::wire::ipc::{HandshakeRequest, IpcMessage};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::check::CheckResult;
use crate::config::SimConfig;
use crate::daemon_host::{AppId, HostEvent};
use crate::net::{Net, NetEvent};
use crate::scenario::{Outcome, Scenario};

/// Longest one IPC request may wait for its reply (a dial may wait for a
/// resolution, a key exchange and a SYN exchange under loss).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest the daemons may take to register.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a trust decision may take to reach both ends (relayed through
/// the registry's inbox, announced by a push).
pub const TRUST_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of one `Send` frame of `daemon-echo`.
pub const SEND_CHUNK: usize = 16 * 1024;
/// Longest `daemon-echo` runs.
pub const ECHO_MAX_RUN: Duration = Duration::from_secs(1800);
/// The echo port.
const ECHO: u16 = 7;

/// Checks and figures of a script, for the outcome.
#[derive(Default)]
pub(crate) struct Script {
    pub(crate) checks: Vec<CheckResult>,
    pub(crate) figures: Vec<(String, Value)>,
}

impl Script {
    pub(crate) fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.checks.push(CheckResult::new(name, ok, detail));
        ok
    }

    pub(crate) fn finish(self, mut net: Net, cfg: &SimConfig) -> Outcome {
        // At least --duration-ms of virtual time.
        let min = Duration::from_millis(cfg.duration_ms);
        let now = Duration::from_nanos(net.sim.now().as_nanos());
        if now < min {
            net.run_for(min - now);
        }
        let result = match net.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        let mut out = Outcome::from_sim(&mut net.sim, result);
        out.checks.extend(self.checks);
        out.figures.extend(self.figures);
        let hosts: Vec<Value> = (0..net.hosts.len())
            .filter_map(|i| net.host(i))
            .map(|h| {
                json!({
                    "address": h.address().map(|a| a.to_string()),
                    "registry_dials": h.registry_dials,
                    "files": h.disk().files.len(),
                })
            })
            .collect();
        out.figures.insert("hosts".into(), Value::Array(hosts));
        if let Some(r) = net.rendezvous() {
            out.figures
                .insert("registry_requests".into(), json!(r.stats.requests));
            out.figures
                .insert("registry_pushes".into(), json!(r.stats.pushes));
            out.figures
                .insert("store_commits".into(), json!(r.disk.commits));
        }
        out
    }
}

/// Decodes a frame body.
pub(crate) fn decode(body: &[u8]) -> Option<IpcMessage<'_>> {
    IpcMessage::decode(body).ok()
}

/// A short text of a reply for check details.
pub(crate) fn describe(body: Option<&Vec<u8>>) -> String {
    match body.map(|b| IpcMessage::decode(b)) {
        None => "no reply".into(),
        Some(Ok(IpcMessage::Error { message, .. })) => format!("error: {message}"),
        Some(Ok(m)) => format!("{:?}", m.command()),
        Some(Err(e)) => format!("undecodable reply: {e}"),
    }
}

/// A handshake call; the reply JSON, or the reply's description.
pub(crate) fn handshake(
    net: &mut Net,
    i: usize,
    app: AppId,
    h: HandshakeRequest<'_>,
) -> Result<Value, String> {
    let r = net.call(i, app, &IpcMessage::Handshake(h), CALL_TIMEOUT);
    match r.as_deref().and_then(decode) {
        Some(IpcMessage::HandshakeOk(j)) => serde_json::from_str(j).map_err(|e| e.to_string()),
        _ => Err(describe(r.as_ref())),
    }
}

/// Whether the JSON list `key` of `v` has an entry with `node_id` `node`.
pub(crate) fn lists(v: &Value, key: &str, node: u32) -> bool {
    v[key]
        .as_array()
        .is_some_and(|l| l.iter().any(|e| e["node_id"] == node))
}

/// Polls `ListTrusted` (or `ListPending`) on host `i` until `node` is in
/// it or `timeout` passes.
pub(crate) fn wait_listed(net: &mut Net, i: usize, app: AppId, pending: bool, node: u32) -> bool {
    let key = if pending { "pending" } else { "trusted" };
    let req = if pending {
        HandshakeRequest::ListPending
    } else {
        HandshakeRequest::ListTrusted
    };
    net.run_until(TRUST_TIMEOUT, Duration::from_millis(500), |net| {
        handshake(net, i, app, req).is_ok_and(|v| lists(&v, key, node))
    })
}

/// Dials `to` port 7 from `app` of host `i`: the connection id, or the
/// reply's description.
pub(crate) fn dial(net: &mut Net, i: usize, app: AppId, to: Addr) -> Result<u32, String> {
    let r = net.call(
        i,
        app,
        &IpcMessage::Dial {
            addr: to,
            port: ECHO,
        },
        CALL_TIMEOUT,
    );
    match r.as_deref().and_then(decode) {
        Some(IpcMessage::DialOk { conn_id }) => Ok(conn_id),
        _ => Err(describe(r.as_ref())),
    }
}

/// Takes what stream `conn` of `app` on host `i` receives while virtual
/// time runs in 10 ms steps, until `n` bytes arrived, the stream ended or
/// `timeout` passed. Every scenario that waits for echoed bytes uses it.
pub(crate) fn recv_until(
    net: &mut Net,
    i: usize,
    app: AppId,
    conn: u32,
    n: usize,
    timeout: Duration,
) -> Vec<u8> {
    let mut got = Vec::new();
    net.run_until(timeout, Duration::from_millis(10), |net| {
        let (data, ended) = net.read(i, app, conn);
        got.extend_from_slice(&data);
        ended || got.len() >= n
    });
    got
}

/// Dials `to`'s echo port, sends `data`, reads it back and closes.
pub(crate) fn echo_once(
    net: &mut Net,
    i: usize,
    app: AppId,
    to: Addr,
    data: &[u8],
) -> Result<(), String> {
    let conn = dial(net, i, app, to)?;
    net.send(
        i,
        app,
        &IpcMessage::Send {
            conn_id: conn,
            data,
        },
    );
    let got = recv_until(net, i, app, conn, data.len(), CALL_TIMEOUT);
    let closed = net.close_conn(i, app, conn, CALL_TIMEOUT);
    if got != data {
        return Err(format!(
            "echo returned {} of {} bytes",
            got.len(),
            data.len()
        ));
    }
    if closed {
        Ok(())
    } else {
        Err("close: no CloseOk".into())
    }
}

/// One app per host, after registration; `None` (with a failed check) if
/// that did not work.
pub(crate) fn setup(net: &mut Net, s: &mut Script) -> Option<(Vec<Addr>, Vec<AppId>)> {
    let n = net.hosts.len();
    let reg = net.wait_registered(REGISTER_TIMEOUT);
    let addrs: Vec<Addr> = (0..n).filter_map(|i| net.addr(i)).collect();
    if !s.check(
        "registered",
        reg && addrs.len() == n,
        format!("{} of {n} daemons registered", addrs.len()),
    ) {
        return None;
    }
    // A public daemon reports its address when the registration is
    // accepted; its visibility is a second request (`register` has no
    // such field), so for a moment it is still private to look-ups.
    // Applications in these scripts start once the registry has applied
    // the visibility each daemon asked for.
    let want: Vec<(u32, bool)> = (0..n)
        .filter_map(|i| Some((net.addr(i)?.node, net.host(i)?.public())))
        .collect();
    let visible = net.run_until(REGISTER_TIMEOUT, Duration::from_millis(50), |net| {
        net.rendezvous()
            .and_then(|r| r.registry())
            .is_some_and(|r| {
                want.iter()
                    .all(|(id, p)| r.state().nodes.get(id).is_some_and(|rec| rec.public == *p))
            })
    });
    if !s.check(
        "visibility-applied",
        visible,
        "the registry shows each daemon with the visibility it asked for",
    ) {
        return None;
    }
    let apps: Vec<AppId> = (0..n).filter_map(|i| net.open_app(i)).collect();
    if !s.check(
        "ipc-open",
        apps.len() == n,
        format!("{} of {n} applications connected", apps.len()),
    ) {
        return None;
    }
    Some((addrs, apps))
}

/// See the module docs.
pub struct DaemonTrustScenario;

impl Scenario for DaemonTrustScenario {
    fn name(&self) -> &'static str {
        "daemon-trust"
    }

    fn about(&self) -> &'static str {
        "private daemons via a rendezvous: unreachable before trust, manual and mutual approval, reachable after"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let n = cfg.nodes.max(2);
        let mut net = Net::new(cfg, seed, n, |_| false);
        let mut s = Script::default();
        if let Some((addrs, apps)) = setup(&mut net, &mut s) {
            trust_script(&mut net, &mut s, &addrs, &apps);
        }
        s.finish(net, cfg)
    }
}

fn trust_script(net: &mut Net, s: &mut Script, addrs: &[Addr], apps: &[AppId]) {
    let n = addrs.len();
    let pairs: Vec<(usize, usize)> = if n == 2 {
        vec![(0, 1)]
    } else {
        (0..n).map(|i| (i, (i + 1) % n)).collect()
    };
    // Before trust: no pair resolves.
    let mut before = Vec::new();
    for &(i, j) in &pairs {
        match dial(net, i, apps[i], addrs[j]) {
            Err(e) if e.contains("resolve node") => {}
            other => before.push(format!("{i}->{j}: {other:?}")),
        }
    }
    s.check(
        "unreachable-before-trust",
        before.is_empty(),
        if before.is_empty() {
            format!(
                "{} dials to private peers refused at resolution",
                pairs.len()
            )
        } else {
            before.join("; ")
        },
    );
    // Trust, pair by pair.
    for (k, &(i, j)) in pairs.iter().enumerate() {
        let manual = k % 2 == 0;
        let (ai, aj) = (addrs[i].node, addrs[j].node);
        let name = format!("trust-{i}-{j}-{}", if manual { "manual" } else { "mutual" });
        let ask = handshake(
            net,
            i,
            apps[i],
            HandshakeRequest::Request {
                node_id: aj,
                justification: "sim",
            },
        );
        if !s.check(&format!("{name}-request"), ask.is_ok(), format!("{ask:?}")) {
            continue;
        }
        if manual {
            if !s.check(
                &format!("{name}-pending"),
                wait_listed(net, j, apps[j], true, ai),
                format!("node {aj} lists the request of {ai} as pending"),
            ) {
                continue;
            }
            let r = handshake(net, j, apps[j], HandshakeRequest::Approve { node_id: ai });
            let ok = r.as_ref().is_ok_and(|v| v["status"] == "approved");
            if !s.check(&format!("{name}-approve"), ok, format!("{r:?}")) {
                continue;
            }
        } else {
            let back = handshake(
                net,
                j,
                apps[j],
                HandshakeRequest::Request {
                    node_id: ai,
                    justification: "sim",
                },
            );
            if !s.check(
                &format!("{name}-request-back"),
                back.is_ok(),
                format!("{back:?}"),
            ) {
                continue;
            }
        }
        let ti = wait_listed(net, i, apps[i], false, aj);
        let tj = wait_listed(net, j, apps[j], false, ai);
        if !s.check(
            &format!("{name}-trusted"),
            ti && tj,
            format!("{i} trusts {j}: {ti}; {j} trusts {i}: {tj}"),
        ) {
            continue;
        }
        // After trust: both ways.
        let a = echo_once(net, i, apps[i], addrs[j], format!("{i}->{j}").as_bytes());
        let b = echo_once(net, j, apps[j], addrs[i], format!("{j}->{i}").as_bytes());
        s.check(
            &format!("{name}-reachable"),
            a.is_ok() && b.is_ok(),
            format!("{i}->{j}: {a:?}; {j}->{i}: {b:?}"),
        );
    }
    // Revoke: node 0 revokes its first pair; the registry forgets the
    // pair and, told by the push, the peer forgets node 0 as well.
    let (i, j) = pairs[0];
    let (ai, aj) = (addrs[i].node, addrs[j].node);
    let r = handshake(net, i, apps[i], HandshakeRequest::Revoke { node_id: aj });
    let ok = r.as_ref().is_ok_and(|v| v["status"] == "revoked");
    if s.check("revoke", ok, format!("{i} revokes {j}: {r:?}")) {
        let gone = |net: &mut Net, k: usize, node: u32| {
            handshake(net, k, apps[k], HandshakeRequest::ListTrusted)
                .is_ok_and(|v| !lists(&v, "trusted", node))
        };
        let here = gone(net, i, aj);
        let there = net.run_until(TRUST_TIMEOUT, Duration::from_millis(500), |net| {
            gone(net, j, ai)
        });
        let registry = net
            .rendezvous()
            .and_then(|r| r.registry())
            .is_some_and(|r| !r.state().has_trust(ai, aj));
        s.check(
            "revoke-reaches-both-ends",
            here && there && registry,
            format!(
                "{i} forgot {j}: {here}; {j} forgot {i}: {there}; registry pair gone: {registry}"
            ),
        );
    }
    if n >= 4 {
        let r = dial(net, 0, apps[0], addrs[2]);
        s.check(
            "untrusted-stays-unreachable",
            r.as_ref().is_err_and(|e| e.contains("resolve node")),
            format!("0->2: {r:?}"),
        );
    }
    let saved = (0..n)
        .filter(|i| {
            net.host(*i)
                .is_some_and(|h| h.disk().files.contains_key("trust.json"))
        })
        .count();
    s.check(
        "trust-saved",
        saved == n,
        format!("{saved} of {n} daemons wrote trust.json"),
    );
}

/// See the module docs.
pub struct DaemonEchoScenario;

impl Scenario for DaemonEchoScenario {
    fn name(&self) -> &'static str {
        "daemon-echo"
    }

    fn about(&self) -> &'static str {
        "public daemons via a rendezvous: IPC dial to the next node's echo port, --bytes each, SHA-256 compared"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let n = cfg.nodes.max(2);
        let mut net = Net::new(cfg, seed, n, |_| true);
        let mut s = Script::default();
        if let Some((addrs, apps)) = setup(&mut net, &mut s) {
            echo_script(&mut net, &mut s, cfg, &addrs, &apps);
        }
        s.finish(net, cfg)
    }
}

/// Byte `k` of the stream of node `i`.
pub(crate) fn byte(i: usize, k: u64) -> u8 {
    let x = k
        .wrapping_add((i as u64) << 40)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

fn echo_script(net: &mut Net, s: &mut Script, cfg: &SimConfig, addrs: &[Addr], apps: &[AppId]) {
    let n = addrs.len();
    let total = cfg.bytes;
    let start = net.sim.now();
    let mut conns = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let j = (i + 1) % n;
        match dial(net, i, *app, addrs[j]) {
            Ok(c) => conns.push(Some(c)),
            Err(e) => {
                s.check(&format!("dial-{i}-{j}"), false, e);
                conns.push(None);
            }
        }
    }
    let mut sent_hash = Vec::new();
    for i in 0..n {
        let mut h = Sha256::new();
        let Some(conn) = conns[i] else {
            sent_hash.push(h.finalize());
            continue;
        };
        let mut k = 0u64;
        while k < total {
            let len = (SEND_CHUNK as u64).min(total - k);
            let data: Vec<u8> = (k..k + len).map(|x| byte(i, x)).collect();
            h.update(&data);
            net.send(
                i,
                apps[i],
                &IpcMessage::Send {
                    conn_id: conn,
                    data: &data,
                },
            );
            k += len;
        }
        sent_hash.push(h.finalize());
    }
    let mut got = vec![0u64; n];
    let mut hashes: Vec<Sha256> = (0..n).map(|_| Sha256::new()).collect();
    let mut done_at = vec![None; n];
    net.run_until(ECHO_MAX_RUN, Duration::from_millis(50), |net| {
        for i in 0..n {
            let Some(conn) = conns[i] else { continue };
            let (data, _) = net.read(i, apps[i], conn);
            got[i] += data.len() as u64;
            hashes[i].update(&data);
            if got[i] >= total && done_at[i].is_none() {
                done_at[i] = Some(net.sim.now());
            }
        }
        (0..n).all(|i| conns[i].is_none() || got[i] >= total)
    });
    let mut times = Vec::new();
    for i in 0..n {
        let Some(conn) = conns[i] else { continue };
        let j = (i + 1) % n;
        let h = core::mem::take(&mut hashes[i]).finalize();
        s.check(
            &format!("echo-{i}-{j}"),
            got[i] == total && h == sent_hash[i],
            format!(
                "{} of {total} bytes back, sha256 {}",
                got[i],
                if h == sent_hash[i] {
                    "equal"
                } else {
                    "differs"
                }
            ),
        );
        let closed = net.close_conn(i, apps[i], conn, CALL_TIMEOUT);
        s.check(
            &format!("close-{i}-{j}"),
            closed,
            if closed { "CloseOk" } else { "no CloseOk" },
        );
        if let Some(t) = done_at[i] {
            times.push(t.saturating_duration_since(start).as_secs_f64() * 1e3);
        }
    }
    s.checks.push(CheckResult::new(
        "echo-complete",
        times.len() == n,
        format!("{} of {n} echo streams complete", times.len()),
    ));
    if let Some(max) = times.iter().copied().reduce(f64::max) {
        s.figures.push(("echo_ms_max".into(), json!(max)));
    }
    s.figures.push(("echo_bytes".into(), json!(total)));
}

/// See the module docs.
pub struct RegistryRestartScenario;

impl Scenario for RegistryRestartScenario {
    fn name(&self) -> &'static str {
        "registry-restart"
    }

    fn about(&self) -> &'static str {
        "the rendezvous crashes and restarts from its store; daemons re-register with the same addresses"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let n = cfg.nodes.max(2);
        let mut net = Net::new(cfg, seed, n, |_| true);
        let mut s = Script::default();
        if let Some((addrs, apps)) = setup(&mut net, &mut s) {
            restart_script(&mut net, &mut s, &addrs, &apps);
        }
        s.finish(net, cfg)
    }
}

fn restart_script(net: &mut Net, s: &mut Script, addrs: &[Addr], apps: &[AppId]) {
    net.run_for(Duration::from_secs(2));
    // A short outage, then one longer than the stale threshold (the
    // restored registry may reap the nodes before they are heard again,
    // and they must then register anew under the same addresses).
    let mut reregistered = 0;
    for (phase, down) in [("short", SHORT_OUTAGE), ("long", LONG_OUTAGE)] {
        reregistered += restart_phase(net, s, addrs, phase, down);
    }
    s.figures
        .push(("registrations_after_restarts".into(), json!(reregistered)));
    let r = echo_once(net, 0, apps[0], addrs[1], b"after-restart");
    s.check("dial-after-restart", r.is_ok(), format!("{r:?}"));
}

/// Outage of the first restart of `registry-restart`.
pub const SHORT_OUTAGE: Duration = Duration::from_secs(2);
/// Outage of the second restart: longer than the registry's stale
/// threshold (180 s).
pub const LONG_OUTAGE: Duration = Duration::from_secs(200);

/// One crash and restart; returns how many registrations followed it.
fn restart_phase(
    net: &mut Net,
    s: &mut Script,
    addrs: &[Addr],
    phase: &str,
    down: Duration,
) -> usize {
    let n = addrs.len();
    net.restart_rendezvous(down);
    let restored_at = net.sim.now();
    let load_failed: Vec<String> = net
        .log
        .iter()
        .filter_map(|(_, _, ev)| match ev {
            NetEvent::Rendezvous(crate::rendezvous::RendezvousEvent::LoadFailed(e)) => {
                Some(e.clone())
            }
            _ => None,
        })
        .collect();
    let held = net.rendezvous().and_then(|r| r.registry()).map_or(0, |r| {
        addrs
            .iter()
            .filter(|a| r.state().nodes.contains_key(&a.node))
            .count()
    });
    s.check(
        &format!("{phase}-restored-state"),
        load_failed.is_empty() && held == n,
        format!("restored registry holds {held} of {n} nodes; load errors: {load_failed:?}"),
    );
    // Every daemon reconnects and is heard by the restored registry.
    let t0 = crate::rendezvous::registry_time(restored_at);
    let live = |net: &mut Net| {
        net.rendezvous()
            .and_then(|r| r.registry())
            .is_some_and(|r| {
                addrs.iter().all(|a| {
                    r.state()
                        .nodes
                        .get(&a.node)
                        .is_some_and(|rec| rec.last_seen > t0)
                })
            })
    };
    let all = net.run_until(REGISTER_TIMEOUT, Duration::from_millis(100), live);
    let ups = (0..n)
        .filter(|i| {
            net.log.iter().any(|(t, who, ev)| {
                *t >= restored_at
                    && *who == Some(*i)
                    && matches!(ev, NetEvent::Host(HostEvent::RegistryUp))
            })
        })
        .count();
    s.check(
        &format!("{phase}-reconnected"),
        all && ups == n,
        format!("{ups} of {n} daemons reconnected; all heard by the restored registry: {all}"),
    );
    let regs: Vec<(usize, String)> = net
        .log
        .iter()
        .filter(|(t, _, _)| *t >= restored_at)
        .filter_map(|(_, who, ev)| match (who, ev) {
            (Some(i), NetEvent::Host(HostEvent::Registered { address, .. })) => {
                Some((*i, address.clone()))
            }
            _ => None,
        })
        .collect();
    let moved: Vec<String> = regs
        .iter()
        .filter(|(i, a)| addrs.get(*i).is_none_or(|x| x.to_string() != *a))
        .map(|(i, a)| format!("{i} -> {a}"))
        .chain(
            (0..n)
                .filter(|i| net.addr(*i) != addrs.get(*i).copied())
                .map(|i| format!("{i} now {:?}", net.addr(i))),
        )
        .collect();
    s.check(
        &format!("{phase}-same-addresses"),
        moved.is_empty(),
        format!(
            "{} registrations after the restart, address changes: {moved:?}",
            regs.len()
        ),
    );
    regs.len()
}

/// `daemon-rotate`: two public daemons; node 0's application streams
/// `--bytes` through node 1's echo port while a second application on
/// node 0 rotates the node's identity key once a quarter came back
/// (`spec/daemon.md` §2.9). The stream must complete byte-exact (SHA-256),
/// the registry must hold the new key, node 1 must have verified node 0's
/// key exchange under the new key (its peer table holds it), a new dial
/// must echo, and the node must still be registered (heartbeats signed
/// with the new key).
pub struct DaemonRotateScenario;

impl Scenario for DaemonRotateScenario {
    fn name(&self) -> &'static str {
        "daemon-rotate"
    }

    fn about(&self) -> &'static str {
        "key rotation mid-transfer: the stream completes byte-exact and the peer verifies the new key"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let mut net = Net::new(cfg, seed, 2, |_| true);
        let mut s = Script::default();
        if let Some((addrs, apps)) = setup(&mut net, &mut s) {
            rotate_script(&mut net, &mut s, cfg, &addrs, &apps);
        }
        s.finish(net, cfg)
    }
}

fn rotate_script(net: &mut Net, s: &mut Script, cfg: &SimConfig, addrs: &[Addr], apps: &[AppId]) {
    let total = cfg.bytes.max(4 * SEND_CHUNK as u64);
    let Some(ctl) = net.open_app(0) else {
        s.check("ipc-open-ctl", false, "second application on node 0");
        return;
    };
    let conn = match dial(net, 0, apps[0], addrs[1]) {
        Ok(c) => c,
        Err(e) => {
            s.check("dial-0-1", false, e);
            return;
        }
    };
    let old = net
        .rendezvous()
        .and_then(|r| r.registry())
        .and_then(|r| r.state().nodes.get(&addrs[0].node).map(|n| n.public_key));
    let mut h = Sha256::new();
    let mut k = 0u64;
    while k < total {
        let len = (SEND_CHUNK as u64).min(total - k);
        let data: Vec<u8> = (k..k + len).map(|x| byte(0, x)).collect();
        h.update(&data);
        net.send(
            0,
            apps[0],
            &IpcMessage::Send {
                conn_id: conn,
                data: &data,
            },
        );
        k += len;
    }
    let sent = h.finalize();
    let mut got = 0u64;
    let mut back = Sha256::new();
    let mut asked_at = None;
    let mut reply: Option<Vec<u8>> = None;
    net.run_until(ECHO_MAX_RUN, Duration::from_millis(20), |net| {
        let (data, _) = net.read(0, apps[0], conn);
        got += data.len() as u64;
        back.update(&data);
        if asked_at.is_none() && got >= total / 4 {
            asked_at = Some(got);
            net.with_host(0, |h, now| {
                h.app_request(now, ctl, &IpcMessage::RotateKey).is_ok()
            });
        }
        if reply.is_none() && asked_at.is_some() {
            reply = net
                .with_host(0, |h, _| h.session(ctl).and_then(|s| s.take_reply()))
                .flatten()
                .map(|r| r.into_body());
        }
        got >= total && reply.is_some()
    });
    let back = back.finalize();
    s.check(
        "stream-intact",
        got == total && back == sent,
        format!(
            "{got} of {total} bytes back, sha256 {}; rotation asked after {asked_at:?} bytes",
            if back == sent { "equal" } else { "differs" }
        ),
    );
    let new_key = match reply.as_deref().and_then(decode) {
        Some(IpcMessage::RotateKeyOk(j)) => serde_json::from_str::<Value>(j)
            .ok()
            .and_then(|v| v["public_key"].as_str().map(str::to_owned))
            .and_then(|k| pilot_proto::registry::auth::decode_public_key(&k).ok()),
        _ => None,
    };
    if !s.check("rotate-ok", new_key.is_some(), describe(reply.as_ref())) {
        return;
    }
    let new_key = new_key.unwrap_or_default();
    let registry = net
        .rendezvous()
        .and_then(|r| r.registry())
        .and_then(|r| r.state().nodes.get(&addrs[0].node).map(|n| n.public_key));
    s.check(
        "registry-has-new-key",
        registry == Some(new_key) && old != Some(new_key),
        format!("registry key changed: {}", registry == Some(new_key)),
    );
    // The peer takes the new key from the registry after our announced
    // key exchange (repeated at keepalive sweeps, so loss is repaired).
    let learned = net.run_until(Duration::from_secs(30), Duration::from_millis(100), |net| {
        net.host(1)
            .and_then(|h| h.daemon().node())
            .and_then(|n| n.peer_identity(addrs[0].node))
            == Some(new_key)
    });
    let refetches = net
        .host(1)
        .and_then(|h| h.daemon().node())
        .map_or(0, |n| n.stats().identity_refetches);
    s.check(
        "peer-verified-new-key",
        learned && refetches >= 1,
        format!("node 1 holds the new key: {learned}; registry re-fetches {refetches}"),
    );
    let again = echo_once(net, 0, apps[0], addrs[1], b"after rotation");
    s.check("new-dial-echoes", again.is_ok(), format!("{again:?}"));
    // Heartbeats are signed with the new key: still registered a while on.
    net.run_for(Duration::from_secs(65));
    let live = net
        .rendezvous()
        .and_then(|r| r.registry())
        .is_some_and(|r| r.state().nodes.contains_key(&addrs[0].node));
    s.check(
        "still-registered",
        live,
        "node 0 is live at the registry 65 s later",
    );
    let closed = net.close_conn(0, apps[0], conn, CALL_TIMEOUT);
    s.check("close", closed, "the daemon answered the close");
}
