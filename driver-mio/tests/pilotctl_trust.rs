//! Trust through `pilotctl` with real daemons: private nodes are not
//! resolvable until trust exists; manual approve; mutual auto-approve.

mod pilotctl_support;

use std::time::Duration;

use pilotctl_support::{Net, eventually, lists, log_of, within};

#[test]
fn private_node_is_found_only_after_manual_approve() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &[]);

    // Private by default: alpha cannot resolve beta yet.
    let e = alpha.err(&["find", "beta"]);
    assert_eq!(e["code"], "not_found");
    assert!(
        e["hint"]
            .as_str()
            .expect("hint")
            .contains("pilotctl handshake beta")
    );

    let sent = alpha.ok(&["handshake", &beta.node_id.to_string(), "let me in"]);
    assert_eq!(sent["status"], "sent");
    assert_eq!(sent["node_id"], beta.node_id);
    eventually("the request to show up at beta", || {
        lists(&beta.ok(&["pending"]), "pending", alpha.node_id)
    });
    let pending = beta.ok(&["pending"]);
    let req = pending["pending"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["node_id"] == alpha.node_id))
        .expect("alpha pending")
        .clone();
    assert_eq!(req["justification"], "let me in");
    // Still not trusted (and not resolvable) before the approval.
    assert!(!lists(&beta.ok(&["trust"]), "trusted", alpha.node_id));
    assert_eq!(alpha.err(&["find", "beta"])["code"], "not_found");

    let ap = beta.ok(&["approve", &alpha.node_id.to_string()]);
    assert_eq!(ap["status"], "approved");
    eventually("alpha to trust beta", || {
        lists(&alpha.ok(&["trust"]), "trusted", beta.node_id)
    });
    assert!(lists(&beta.ok(&["trust"]), "trusted", alpha.node_id));
    assert!(!lists(&beta.ok(&["pending"]), "pending", alpha.node_id));

    eventually("alpha to resolve beta", || {
        alpha.ctl(&["find", "beta"]).status.success()
    });
    let found = alpha.ok(&["find", "beta"]);
    assert_eq!(found["hostname"], "beta");
    assert_eq!(found["node_id"], beta.node_id);
    assert_eq!(
        found["address"],
        format!(
            "0:0000.{:04X}.{:04X}",
            beta.node_id >> 16,
            beta.node_id & 0xFFFF
        )
    );

    // Revoking trust makes beta private to alpha again.
    let un = beta.ok(&["untrust", &alpha.node_id.to_string()]);
    assert_eq!(un["node_id"], alpha.node_id);
    assert!(!lists(&beta.ok(&["trust"]), "trusted", alpha.node_id));
    let e = beta.err(&["untrust", &alpha.node_id.to_string()]);
    assert_eq!(e["code"], "not_found");
}

#[test]
fn crossing_requests_are_approved_automatically() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &[]);
    alpha.ok(&["handshake", &beta.node_id.to_string(), "hi"]);
    beta.ok(&["handshake", &alpha.node_id.to_string(), "hi too"]);
    eventually("mutual trust without approve", || {
        lists(&alpha.ok(&["trust"]), "trusted", beta.node_id)
            && lists(&beta.ok(&["trust"]), "trusted", alpha.node_id)
    });
    assert!(!lists(&alpha.ok(&["pending"]), "pending", beta.node_id));
    assert!(!lists(&beta.ok(&["pending"]), "pending", alpha.node_id));
    eventually("beta to resolve alpha", || {
        beta.ctl(&["find", "alpha"]).status.success()
    });
}

#[test]
fn rejected_request_leaves_no_trust() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &[]);
    alpha.ok(&["handshake", &beta.node_id.to_string()]);
    eventually("the request at beta", || {
        lists(&beta.ok(&["pending"]), "pending", alpha.node_id)
    });
    let r = beta.ok(&["reject", &alpha.node_id.to_string(), "no", "thanks"]);
    assert_eq!(r["status"], "rejected");
    assert!(!lists(&beta.ok(&["pending"]), "pending", alpha.node_id));
    assert!(!lists(&beta.ok(&["trust"]), "trusted", alpha.node_id));
    assert_eq!(alpha.err(&["find", "beta"])["code"], "not_found");
}

/// With default settings (30 s heartbeat), a relayed request, its approval
/// and a revocation reach the other daemon within a second: the registry
/// pushes them on the daemon's registry connection.
#[test]
fn relayed_trust_arrives_within_a_second_with_defaults() {
    let net = Net::new();
    let alpha = net.node_with("alpha", &[]);
    let beta = net.node_with("beta", &[]);
    let (a_id, b_id) = (alpha.node_id.to_string(), beta.node_id.to_string());

    // Nothing pending yet: approve and reject are errors with a hint.
    let e = beta.err(&["approve", &a_id]);
    assert_eq!(e["code"], "not_found");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no pending request")
    );
    assert!(e["hint"].as_str().unwrap().contains("pilotctl pending"));
    assert_eq!(beta.err(&["reject", &a_id])["code"], "not_found");

    alpha.ok(&["handshake", &b_id, "let me in"]);
    let took = within(Duration::from_secs(1), || {
        lists(&beta.ok(&["pending"]), "pending", alpha.node_id)
    });
    assert!(took.is_some(), "request not pending at beta within 1 s");

    beta.ok(&["approve", &a_id]);
    let took = within(Duration::from_secs(1), || {
        lists(&alpha.ok(&["trust"]), "trusted", beta.node_id)
    });
    assert!(took.is_some(), "approval not seen by alpha within 1 s");

    // Both sides list the relationship the same way: mutual, with the key.
    eventually("keys on both sides", || {
        let a = alpha.ok(&["trust"]);
        let b = beta.ok(&["trust"]);
        let entry = |v: &serde_json::Value, n: u32| {
            v["trusted"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["node_id"] == n).cloned())
                .unwrap_or_default()
        };
        let (ea, eb) = (entry(&a, beta.node_id), entry(&b, alpha.node_id));
        ea["mutual"] == true
            && eb["mutual"] == true
            && ea["public_key"].as_str().is_some_and(|k| !k.is_empty())
            && eb["public_key"].as_str().is_some_and(|k| !k.is_empty())
    });

    // Trust events are logged at INFO, in plain text (no colour codes in
    // a log file).
    let log = log_of(&net, "beta");
    assert!(
        !log.contains('\x1b'),
        "escape codes in the log file: {log:?}"
    );
    assert!(log.contains("handshake.pending"), "{log}");
    assert!(log.contains("handshake.approved"), "{log}");
    assert!(log_of(&net, "alpha").contains("handshake.accepted"));

    beta.ok(&["untrust", &a_id]);
    let took = within(Duration::from_secs(1), || {
        !lists(&alpha.ok(&["trust"]), "trusted", beta.node_id)
    });
    assert!(took.is_some(), "revocation not seen by alpha within 1 s");
    eventually("the revocation in alpha's log", || {
        log_of(&net, "alpha").contains("trust.revoked_by_peer")
    });
}
