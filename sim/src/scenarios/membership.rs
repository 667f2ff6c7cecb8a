//! `network-membership`: trust that a shared network gave follows the
//! membership (`spec/services.md` §4.8), with private daemons driven
//! through IPC only, under the configuration's faults.
//!
//! `--nodes` private daemons (at least 3) register; node 0 (which has the
//! registry's admin token) creates an invite-only network and invites
//! every other node, each of which accepts.
//!
//! 1. **Trust through the network.** Node 1 asks node 0 for trust and
//!    node 0 approves it by itself (same network: node 0's entry is the
//!    network's grant); node 0 asks every node k ≥ 2, which approves by
//!    itself (node k's entry is the grant). Both ends list the other, and
//!    an echo goes through each pair both ways.
//! 2. **Kick.** Node 0 kicks node 1. Node 0's membership check finds
//!    node 1 gone and ends its grant; the registry's pair goes, and
//!    node 1, told by the push, forgets node 0 as well. The registry no
//!    longer resolves node 0 for node 1, and node 0's private-node gate
//!    drops node 1's direct dial (it still knows the endpoint).
//! 3. **Leave.** Node 2 leaves the network: its own grant of node 0 ends
//!    at once, and node 0 (told by the registry's push) forgets node 2.
//! 4. **Members keep it.** Nodes k ≥ 3 still trust node 0 and are trusted
//!    by it after several membership checks, and still echo.
//! 5. **Rejoin.** Node 0 invites node 1 again, node 1 accepts and asks
//!    node 0 again: approved by the network again, and reachable.
//!
//! Each step is a check of the outcome; figures count the grants ended.

use std::time::Duration;

use pilot_proto::addr::Addr;
use pilot_proto::wire::ipc::{Flag, HandshakeRequest, IpcMessage, MemberSub, NetworkRequest};
use serde_json::{Value, json};

use super::daemon::{
    CALL_TIMEOUT, Script, TRUST_TIMEOUT, decode, describe, echo_once, handshake, lists, setup,
};
use crate::config::SimConfig;
use crate::daemon_host::AppId;
use crate::net::Net;
use crate::scenario::{Outcome, Scenario};

/// See the module docs.
pub struct NetworkMembershipScenario;

impl Scenario for NetworkMembershipScenario {
    fn name(&self) -> &'static str {
        "network-membership"
    }

    fn about(&self) -> &'static str {
        "private daemons in an invite network: auto-approved trust, lost on kick and leave, regained on rejoin"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let n = cfg.nodes.max(3);
        let mut net = Net::with_admin(cfg, seed, n, |_| false);
        let mut s = Script::default();
        if let Some((addrs, apps)) = setup(&mut net, &mut s) {
            membership_script(&mut net, &mut s, &addrs, &apps);
        }
        s.finish(net, cfg)
    }
}

/// A `Network` call; the reply JSON, or the reply's description.
fn network(net: &mut Net, i: usize, app: AppId, req: NetworkRequest<'_>) -> Result<Value, String> {
    let r = net.call(i, app, &IpcMessage::Network(req), CALL_TIMEOUT);
    match r.as_deref().and_then(decode) {
        Some(IpcMessage::NetworkOk(j)) => serde_json::from_str(j).map_err(|e| e.to_string()),
        _ => Err(describe(r.as_ref())),
    }
}

/// Host `i`'s trusted entry for `node`, if any.
fn trusted_entry(net: &mut Net, i: usize, app: AppId, node: u32) -> Option<Value> {
    let v = handshake(net, i, app, HandshakeRequest::ListTrusted).ok()?;
    v["trusted"]
        .as_array()?
        .iter()
        .find(|e| e["node_id"] == node)
        .cloned()
}

/// Polls until host `i` lists `node` as trusted (`want`) or not.
fn wait_trust(net: &mut Net, i: usize, app: AppId, node: u32, want: bool) -> bool {
    net.run_until(TRUST_TIMEOUT, Duration::from_millis(500), |net| {
        handshake(net, i, app, HandshakeRequest::ListTrusted)
            .is_ok_and(|v| lists(&v, "trusted", node) == want)
    })
}

/// Node 0 invites `k` into `nid`; `k` accepts.
fn invite(net: &mut Net, s: &mut Script, apps: &[AppId], nid: u16, k: usize, target: u32) -> bool {
    let inv = network(
        net,
        0,
        apps[0],
        NetworkRequest::Invite {
            network: nid,
            target,
        },
    );
    let acc = inv.as_ref().ok().map(|_| {
        network(
            net,
            k,
            apps[k],
            NetworkRequest::RespondInvite {
                network: nid,
                accept: Flag(1),
            },
        )
    });
    s.check(
        &format!("join-{k}"),
        matches!(acc, Some(Ok(_))),
        format!("invite: {inv:?}; accept: {acc:?}"),
    )
}

/// Host `i` asks `to` for trust; both must then list each other, `holder`
/// with an entry granted by network `nid`; then an echo both ways.
#[allow(clippy::too_many_arguments)]
fn trust_through(
    net: &mut Net,
    s: &mut Script,
    addrs: &[Addr],
    apps: &[AppId],
    nid: u16,
    (i, j): (usize, usize),
    holder: usize,
    name: &str,
) -> bool {
    let ask = handshake(
        net,
        i,
        apps[i],
        HandshakeRequest::Request {
            node_id: addrs[j].node,
            justification: "sim network",
        },
    );
    if !s.check(&format!("{name}-request"), ask.is_ok(), format!("{ask:?}")) {
        return false;
    }
    let ti = wait_trust(net, i, apps[i], addrs[j].node, true);
    let tj = wait_trust(net, j, apps[j], addrs[i].node, true);
    let other = if holder == i { j } else { i };
    let grant = trusted_entry(net, holder, apps[holder], addrs[other].node);
    let by_network = grant
        .as_ref()
        .is_some_and(|e| e["network"] == nid && e["mutual"] == false);
    if !s.check(
        &format!("{name}-trusted"),
        ti && tj && by_network,
        format!("{i} trusts {j}: {ti}; {j} trusts {i}: {tj}; grant at {holder}: {grant:?}"),
    ) {
        return false;
    }
    let a = echo_once(net, i, apps[i], addrs[j], format!("{i}->{j}").as_bytes());
    let b = echo_once(net, j, apps[j], addrs[i], format!("{j}->{i}").as_bytes());
    s.check(
        &format!("{name}-reachable"),
        a.is_ok() && b.is_ok(),
        format!("{i}->{j}: {a:?}; {j}->{i}: {b:?}"),
    )
}

/// Both ends forgot each other, and the registry neither holds their
/// pair nor lets `from` resolve `to` any more (a private node is reached
/// only through the registry's resolve).
fn lost(
    net: &mut Net,
    s: &mut Script,
    addrs: &[Addr],
    apps: &[AppId],
    (from, to): (usize, usize),
    name: &str,
) {
    let (af, at) = (addrs[from].node, addrs[to].node);
    let gone_to = wait_trust(net, to, apps[to], af, false);
    let gone_from = wait_trust(net, from, apps[from], at, false);
    let (pair, resolvable) = net
        .rendezvous()
        .and_then(|r| r.registry())
        .map_or((true, true), |r| {
            (r.state().has_trust(af, at), r.may_resolve(af, at))
        });
    s.check(
        &format!("{name}-trust-gone"),
        gone_to && gone_from && !pair,
        format!(
            "{to} forgot {from}: {gone_to}; {from} forgot {to}: {gone_from}; registry pair kept: {pair}"
        ),
    );
    s.check(
        &format!("{name}-unresolvable"),
        !resolvable,
        format!("the registry resolves {to} for {from}: {resolvable}"),
    );
}

fn membership_script(net: &mut Net, s: &mut Script, addrs: &[Addr], apps: &[AppId]) {
    let n = addrs.len();
    let created = network(
        net,
        0,
        apps[0],
        NetworkRequest::Create {
            rule: 2,
            name: "sim-members",
            token: "",
        },
    );
    let nid = created
        .as_ref()
        .ok()
        .and_then(|v| v["network_id"].as_u64())
        .and_then(|n| u16::try_from(n).ok());
    let Some(nid) = nid else {
        s.check("create", false, format!("{created:?}"));
        return;
    };
    s.check("create", true, format!("network {nid}"));
    for (k, a) in addrs.iter().enumerate().skip(1) {
        if !invite(net, s, apps, nid, k, a.node) {
            return;
        }
    }
    // 1. Trust through the network.
    let mut ok = trust_through(net, s, addrs, apps, nid, (1, 0), 0, "trust-1-0");
    for k in 2..n {
        ok &= trust_through(net, s, addrs, apps, nid, (0, k), k, &format!("trust-0-{k}"));
    }
    if !ok {
        return;
    }
    // 2. Kick node 1: node 0's check ends its grant.
    let kick = network(
        net,
        0,
        apps[0],
        NetworkRequest::Member {
            sub: MemberSub::Kick,
            network: nid,
            target: addrs[1].node,
        },
    );
    if s.check("kick", kick.is_ok(), format!("{kick:?}")) {
        lost(net, s, addrs, apps, (1, 0), "kicked");
        // Node 1 still knows node 0's endpoint, so its dial goes out
        // directly: node 0's private-node gate must drop it silently
        // (`spec/daemon.md` §6.4), and the dial times out.
        let e = echo_once(net, 1, apps[1], addrs[0], b"kicked");
        s.check(
            "kicked-cannot-dial",
            e.as_ref().is_err_and(|t| t.contains("timeout")),
            format!("echo 1->0 after the kick: {e:?}"),
        );
    }
    // 3. Node 2 leaves: its own grant ends at once.
    let leave = network(net, 2, apps[2], NetworkRequest::Leave { network: nid });
    if s.check("leave", leave.is_ok(), format!("{leave:?}")) {
        let at_once = trusted_entry(net, 2, apps[2], addrs[0].node).is_none();
        s.check(
            "leave-ends-own-grant",
            at_once,
            "node 2 forgot node 0 with the leave reply",
        );
        lost(net, s, addrs, apps, (2, 0), "left");
    }
    // 4. Members keep their trust through further membership checks.
    net.run_for(Duration::from_secs(70));
    for (k, app) in apps.iter().copied().enumerate().skip(3) {
        let a = trusted_entry(net, k, app, addrs[0].node).is_some();
        let b = trusted_entry(net, 0, apps[0], addrs[k].node).is_some();
        let e = echo_once(net, k, app, addrs[0], b"still a member");
        s.check(
            &format!("member-{k}-kept"),
            a && b && e.is_ok(),
            format!("{k} trusts 0: {a}; 0 trusts {k}: {b}; echo: {e:?}"),
        );
    }
    // 5. Rejoin: trusted again through the network.
    if invite(net, s, apps, nid, 1, addrs[1].node) {
        trust_through(net, s, addrs, apps, nid, (1, 0), 0, "rejoin-1-0");
    }
    let ended: u64 = (0..n)
        .filter_map(|i| net.host(i))
        .map(|h| h.daemon_stats().network_grants_ended)
        .sum();
    s.figures
        .push(("network_grants_ended".into(), json!(ended)));
    s.check(
        "grants-ended",
        ended >= 2,
        format!("{ended} network grants ended (kick and leave: at least 2)"),
    );
}
