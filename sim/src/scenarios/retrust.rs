//! `daemon-retrust`: trust revoked and asked for again at once, by both
//! ends, while the revocation is still on its way.
//!
//! Two private daemons trust each other (crossing requests) and echo both
//! ways. Then, for each of four rounds, one end revokes the other and,
//! after a delay drawn from the seed (0 to 1.5 s of virtual time, so the
//! registry's revoke push and the revoked end's check of it land before,
//! between or after the new requests), both ends ask for trust again, in
//! an order that alternates. A request that waits as pending is approved
//! (as an operator would). Each round must end with both ends trusting
//! each other within [`TRUST_TIMEOUT`] and an echo both ways; no end may
//! keep an unanswered request of its own once trust is back.
//!
//! The class it keeps found: the revoked end, not yet told, treated its own
//! request as a no-op ("already trusted") and answered the revoker's
//! request with an accept that an older revocation then took away, so
//! one end ended with nothing and the other with a request nobody would
//! answer.

use std::time::Duration;

use pilot_proto::addr::Addr;
use pilot_proto::wire::ipc::HandshakeRequest;
use serde_json::json;

use crate::config::SimConfig;
use crate::daemon_host::AppId;
use crate::net::Net;
use crate::scenario::{Outcome, Scenario};
use crate::scenarios::daemon::{Script, TRUST_TIMEOUT, echo_once, handshake, lists, setup};
use crate::seed::Seed;

/// Rounds of revoke and re-trust.
pub const ROUNDS: usize = 4;
/// Longest delay between a revoke and the new requests.
pub const MAX_DELAY_MS: u64 = 1500;

/// See the module docs.
pub struct DaemonRetrustScenario;

impl Scenario for DaemonRetrustScenario {
    fn name(&self) -> &'static str {
        "daemon-retrust"
    }

    fn about(&self) -> &'static str {
        "two daemons: revoke, then both ask again before the revocation settled; trust and echo come back"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let mut net = Net::new(cfg, seed, 2, |_| false);
        let mut s = Script::default();
        if let Some((addrs, apps)) = setup(&mut net, &mut s) {
            script(&mut net, &mut s, seed, &addrs, &apps);
        }
        s.finish(net, cfg)
    }
}

fn request(net: &mut Net, i: usize, app: AppId, to: u32) -> Result<serde_json::Value, String> {
    handshake(
        net,
        i,
        app,
        HandshakeRequest::Request {
            node_id: to,
            justification: "retrust",
        },
    )
}

/// One side's view: (trusts the other, has the other pending, has an
/// unanswered request to the other).
fn view(net: &mut Net, i: usize, app: AppId, other: u32) -> (bool, bool, bool) {
    let t = handshake(net, i, app, HandshakeRequest::ListTrusted)
        .is_ok_and(|v| lists(&v, "trusted", other));
    let p = handshake(net, i, app, HandshakeRequest::ListPending)
        .is_ok_and(|v| lists(&v, "pending", other));
    let o = net
        .host(i)
        .and_then(|h| h.daemon().trust())
        .is_some_and(|t| t.is_outgoing(other));
    (t, p, o)
}

/// Both ends' views, for a check's detail.
fn views(net: &mut Net, ids: [u32; 2], apps: &[AppId]) -> String {
    let a = view(net, 0, apps[0], ids[1]);
    let b = view(net, 1, apps[1], ids[0]);
    format!("0 (trusted, pending, outgoing) {a:?}; 1 {b:?}")
}

/// Waits until both ends trust each other, approving what waits as
/// pending; the final views.
fn settle(net: &mut Net, addrs: &[Addr], apps: &[AppId]) -> (bool, String) {
    let ids = [addrs[0].node, addrs[1].node];
    let ok = net.run_until(TRUST_TIMEOUT, Duration::from_millis(250), |net| {
        let mut both = true;
        for i in 0..2 {
            let other = ids[1 - i];
            let (t, p, _) = view(net, i, apps[i], other);
            if p {
                let _ = handshake(
                    net,
                    i,
                    apps[i],
                    HandshakeRequest::Approve { node_id: other },
                );
            }
            both &= t;
        }
        both
    });
    (ok, views(net, ids, apps))
}

fn script(net: &mut Net, s: &mut Script, seed: u64, addrs: &[Addr], apps: &[AppId]) {
    let ids = [addrs[0].node, addrs[1].node];
    let a = request(net, 0, apps[0], ids[1]);
    let b = request(net, 1, apps[1], ids[0]);
    if !s.check(
        "first-requests",
        a.is_ok() && b.is_ok(),
        format!("{a:?}; {b:?}"),
    ) {
        return;
    }
    let (ok, detail) = settle(net, addrs, apps);
    if !s.check("first-trust", ok, detail) {
        return;
    }
    let mut rng = Seed::new(seed).fork("retrust-delays", 0);
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        let revoker = round % 2;
        let other = 1 - revoker;
        let r = handshake(
            net,
            revoker,
            apps[revoker],
            HandshakeRequest::Revoke {
                node_id: ids[other],
            },
        );
        let revoked = r.as_ref().is_ok_and(|v| v["status"] == "revoked");
        if !s.check(
            &format!("round-{round}-revoke"),
            revoked,
            format!("{revoker} revokes {other}: {r:?}"),
        ) {
            return;
        }
        let delay = Duration::from_millis(rng.below(MAX_DELAY_MS + 1));
        delays.push(delay.as_millis() as u64);
        net.run_for(delay);
        // Alternate who asks first: the revoked end first in even rounds.
        let order = if round % 4 < 2 {
            [other, revoker]
        } else {
            [revoker, other]
        };
        let mut asked = Vec::new();
        for i in order {
            asked.push(request(net, i, apps[i], ids[1 - i]));
        }
        if !s.check(
            &format!("round-{round}-requests"),
            asked.iter().all(|r| r.is_ok()),
            format!("{asked:?}"),
        ) {
            return;
        }
        let (ok, detail) = settle(net, addrs, apps);
        if !s.check(&format!("round-{round}-trust-back"), ok, detail) {
            return;
        }
        // Nothing left waiting once trust is back (an accept may still be
        // on its way: give it a moment).
        let clean = net.run_until(TRUST_TIMEOUT, Duration::from_millis(250), |net| {
            (0..2).all(|i| {
                let (t, _, o) = view(net, i, apps[i], ids[1 - i]);
                t && !o
            })
        });
        let detail = views(net, ids, apps);
        if !s.check(&format!("round-{round}-no-dangling-request"), clean, detail) {
            return;
        }
        let x = echo_once(
            net,
            0,
            apps[0],
            addrs[1],
            format!("r{round} 0->1").as_bytes(),
        );
        let y = echo_once(
            net,
            1,
            apps[1],
            addrs[0],
            format!("r{round} 1->0").as_bytes(),
        );
        if !s.check(
            &format!("round-{round}-echo"),
            x.is_ok() && y.is_ok(),
            format!("0->1: {x:?}; 1->0: {y:?}"),
        ) {
            return;
        }
    }
    s.figures.push(("revoke_delays_ms".into(), json!(delays)));
}
