//! Trust through `pilotctl` with real daemons: private nodes are not
//! resolvable until trust exists; manual approve; mutual auto-approve.

mod pilotctl_support;

use pilotctl_support::{Net, eventually, lists};

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
