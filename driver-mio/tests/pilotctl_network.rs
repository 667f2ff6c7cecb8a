//! Networks end to end with real processes (`spec/daemon.md` §7): three
//! daemons form an invite-only network, roles and policy are managed with
//! `pilotctl network` / `managed`, a broadcast reaches the members only, and
//! a kicked member stops receiving and loses its membership.

mod pilotctl_support;

use std::process::Command;
use std::time::Duration;

use pilotctl_support::{Net, Node, PILOTCTL, Proc, finish};
use serde_json::Value;

const TOKEN: &str = "net-admin-token";

/// Starts `pilotctl listen <port> --count 1` on `node`.
fn listen(node: &Node, secs: u64) -> Proc {
    node.spawn(&[
        "listen",
        "1000",
        "--count",
        "1",
        "--timeout",
        &format!("{secs}s"),
    ])
}

fn got(v: &Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["data"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Broadcasts until `receiver` got it (the first datagrams to a new peer
/// may wait for the tunnel); returns what the listeners printed.
fn broadcast_to(a: &Node, net: &str, msg: &str, listeners: Vec<Proc>) -> Vec<Value> {
    // Give the listeners time to attach (a loaded CI machine is slow).
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        a.ok(&["broadcast", net, msg, "--admin-token", TOKEN]);
        std::thread::sleep(Duration::from_secs(1));
    }
    listeners.into_iter().map(finish).collect()
}

#[test]
fn three_daemons_form_an_invite_network_broadcast_and_kick() {
    let net = Net::new_with(&["--admin-token", TOKEN]);
    let a = net.node("alpha", &["--admin-token", TOKEN]);
    let b = net.node("beta", &[]);
    let c = net.node("gamma", &[]);
    let d = net.node("delta", &["--admin-token", TOKEN]);

    // Create: alpha owns an invite-only network.
    let created = a.ok(&["network", "create", "crew", "--rule", "invite"]);
    let id_num = created["network_id"].as_u64().expect("network_id");
    let id = id_num.to_string();
    // Without an admin token the daemon says why.
    let e = b.err(&["network", "create", "other"]);
    assert_eq!(e["code"], "auth_required", "{e}");
    // Invite-only: a direct join is refused with a clear error.
    let e = b.err(&["network", "join", &id]);
    assert!(e["message"].as_str().unwrap().contains("invite"), "{e}");
    // Invite beta and gamma; they see and accept the invitations.
    for n in [&b, &c] {
        a.ok(&["network", "invite", &id, &n.node_id.to_string()]);
        let inv = n.ok(&["network", "invites"]);
        assert!(
            inv["invites"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["network_id"].as_u64() == Some(id_num) && i["network_name"] == "crew"),
            "{inv}"
        );
        n.ok(&["network", "accept", &id]);
    }
    // A plain member may not invite; the owner promotes beta, who may.
    let e = c.err(&["network", "invite", &id, &d.node_id.to_string()]);
    assert_eq!(e["code"], "forbidden", "{e}");
    a.ok(&["network", "promote", &id, &b.node_id.to_string()]);
    assert_eq!(
        c.ok(&["network", "role", &id, &b.node_id.to_string()])["role"],
        "admin"
    );
    let m = d.ok(&["network", "members", &id]);
    assert_eq!(m["total"], 3, "{m}");
    let roles: Vec<(u64, String)> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node_id"].as_u64().unwrap(),
                n["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        roles.contains(&(u64::from(a.node_id), "owner".into())),
        "{roles:?}"
    );
    assert!(
        roles.contains(&(u64::from(c.node_id), "member".into())),
        "{roles:?}"
    );
    // Membership shows in info.
    let info = a.ok(&["info"]);
    assert!(
        info["networks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_u64() == Some(id_num)),
        "{info}"
    );

    // Policy: validated locally and by the registry; owner only.
    let e = a.err(&[
        "managed",
        "policy-set",
        &id,
        r#"{"version":1,"max_member":2}"#,
    ]);
    assert_eq!(e["code"], "invalid_argument", "{e}");
    let e = b.err(&["managed", "policy-set", &id, r#"{"version":1}"#]);
    assert_eq!(e["code"], "forbidden", "{e}");
    a.ok(&[
        "managed",
        "policy-set",
        &id,
        r#"{"version":1,"allowed_ports":[1000],"description":"crew"}"#,
    ]);
    let st = c.ok(&["managed", "status", &id]);
    assert_eq!(
        (st["managed"].clone(), st["members"].clone()),
        (true.into(), 3.into())
    );
    // Member tags, set by an admin.
    b.ok(&["managed", "tags", &id, &c.node_id.to_string(), "gpu"]);
    assert_eq!(
        a.ok(&["managed", "tags", &id, &c.node_id.to_string()])["tags"][0],
        "gpu"
    );

    // Broadcast reaches members (beta, gamma) and not the outsider delta.
    let outs = broadcast_to(
        &a,
        &id,
        "hello crew",
        vec![listen(&b, 20), listen(&c, 20), listen(&d, 8)],
    );
    assert_eq!(
        got(&outs[0]).first().map(String::as_str),
        Some("hello crew"),
        "{}",
        outs[0]
    );
    assert_eq!(
        got(&outs[1]).first().map(String::as_str),
        Some("hello crew"),
        "{}",
        outs[1]
    );
    assert!(got(&outs[2]).is_empty(), "outsider got {}", outs[2]);
    // A port outside the policy is refused; a non-member cannot broadcast;
    // a wrong token is refused.
    let e = a.err(&[
        "broadcast",
        &id,
        "x",
        "--port",
        "2000",
        "--admin-token",
        TOKEN,
    ]);
    assert!(
        e["message"].as_str().unwrap().contains("allowed_ports"),
        "{e}"
    );
    let e = d.err(&["broadcast", &id, "x", "--admin-token", TOKEN]);
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("not a member"),
        "{e}"
    );
    let e = a.err(&["broadcast", &id, "x", "--admin-token", "wrong"]);
    assert_eq!(e["code"], "auth_required", "{e}");

    // Kick gamma: it no longer receives, and has lost the membership.
    let e = b.err(&["network", "kick", &id, &a.node_id.to_string()]);
    assert_eq!(e["code"], "forbidden", "{e}");
    a.ok(&["network", "kick", &id, &c.node_id.to_string()]);
    let outs = broadcast_to(&a, &id, "after kick", vec![listen(&b, 20), listen(&c, 8)]);
    assert_eq!(
        got(&outs[0]).first().map(String::as_str),
        Some("after kick"),
        "{}",
        outs[0]
    );
    assert!(got(&outs[1]).is_empty(), "kicked member got {}", outs[1]);
    let e = c.err(&["network", "leave", &id]);
    assert!(
        e["message"].as_str().unwrap().contains("not a member"),
        "{e}"
    );
    let e = c.err(&["network", "role", &id, &c.node_id.to_string()]);
    assert_eq!(e["code"], "forbidden", "{e}");

    // Human output names the roles.
    let out = Command::new(PILOTCTL)
        .args(["network", "members", &id])
        .env("PILOT_SOCKET", &a.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("owner") && text.contains("admin"), "{text}");

    // Owner rules: the owner cannot leave; transfer, then delete by the
    // new owner removes the network for everyone.
    let e = a.err(&["network", "leave", &id]);
    assert!(
        e["message"].as_str().unwrap().contains("cannot leave"),
        "{e}"
    );
    a.ok(&["network", "transfer", &id, &b.node_id.to_string()]);
    a.ok(&["network", "leave", &id]);
    b.ok(&["network", "delete", &id]);
    let e = b.err(&["network", "members", &id]);
    assert_eq!(e["code"], "not_found", "{e}");
}
