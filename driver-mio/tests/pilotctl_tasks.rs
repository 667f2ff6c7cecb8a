//! Tasks on port 1003 with real processes (`spec/services.md` §12): a
//! task submitted, accepted, executed and answered; refused while the
//! receiver has not enabled tasks; the CLI's status rules.

mod pilotctl_support;

use std::process::Command;

use pilotctl_support::{Net, Node, PILOTCTL, eventually, trust};
use serde_json::Value;

/// `pilotctl --json <args>` on `node` with its own state directory.
fn ctl(node: &Node, args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(PILOTCTL)
        .arg("--json")
        .args(args)
        .env("PILOT_SOCKET", &node.socket)
        .env("PILOT_HOME", &node.dir)
        .output()
        .expect("run pilotctl");
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    let v: Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&text)));
    (out.status.code(), v)
}

fn ok(node: &Node, args: &[&str]) -> Value {
    let (code, v) = ctl(node, args);
    assert_eq!(code, Some(0), "{args:?}: {v}");
    v["data"].clone()
}

fn err(node: &Node, args: &[&str]) -> Value {
    let (code, v) = ctl(node, args);
    assert_eq!(code, Some(1), "{args:?} should fail: {v}");
    v
}

fn submitted(node: &Node, id: &str) -> Value {
    let p = node.dir.join("tasks/submitted").join(format!("{id}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_default()).unwrap_or(Value::Null)
}

#[test]
fn a_task_is_submitted_accepted_executed_and_answered() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &[]);
    trust(&alpha, &beta);

    // Tasks are off by default: the submission is refused, nothing kept.
    let e = err(&alpha, &["task", "submit", "beta", "--task", "add 2 and 3"]);
    assert_eq!(e["code"], "refused", "{e}");
    assert!(e["message"].as_str().unwrap().contains("disabled"), "{e}");
    assert!(
        ok(&alpha, &["task", "list"])["tasks"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    assert_eq!(ok(&beta, &["enable-tasks"])["task_exec"], true);
    let sub = ok(&alpha, &["task", "submit", "beta", "--task", "add 2 and 3"]);
    assert_eq!(sub["status"], 200, "{sub}");
    let id = sub["task_id"].as_str().unwrap().to_owned();
    assert_eq!(submitted(&alpha, &id)["status"], "NEW");

    // The receiver has it, from alpha's real address.
    let q = ok(&beta, &["task", "queue"]);
    assert_eq!(q["count"], 1, "{q}");
    let t = &q["queue"][0];
    assert_eq!(t["task_id"], id.as_str());
    assert_eq!(t["status"], "NEW");
    assert_eq!(
        t["from"],
        format!(
            "0:0000.{:04X}.{:04X}",
            alpha.node_id >> 16,
            alpha.node_id & 0xffff
        )
    );

    // Out of order: refused with the status rules' codes.
    assert_eq!(err(&beta, &["task", "execute"])["code"], "not_found");
    assert_eq!(
        err(
            &beta,
            &["task", "send-results", "--id", &id, "--results", "5"]
        )["code"],
        "invalid_state"
    );

    let acc = ok(&beta, &["task", "accept", "--id", &id]);
    assert_eq!(acc["status"], "ACCEPTED");
    assert_eq!(acc["notified"], true, "{acc}");
    eventually("the submitter sees ACCEPTED", || {
        submitted(&alpha, &id)["status"] == "ACCEPTED"
    });
    assert_eq!(
        err(&beta, &["task", "accept", "--id", &id])["code"],
        "invalid_state"
    );
    let ex = ok(&beta, &["task", "execute"]);
    assert_eq!(ex["task_id"], id.as_str());
    assert_eq!(ex["status"], "EXECUTING");
    let sent = ok(
        &beta,
        &["task", "send-results", "--id", &id, "--results", "5"],
    );
    assert_eq!(sent["status"], "SUCCEEDED", "{sent}");
    assert!(sent["reward"].as_u64().unwrap() >= 1);

    // The submitter has the result and a completed task.
    eventually("the submitter sees COMPLETED", || {
        submitted(&alpha, &id)["status"] == "COMPLETED"
    });
    let result = alpha
        .dir
        .join("tasks/results")
        .join(format!("{id}_result.txt"));
    assert_eq!(std::fs::read_to_string(result).unwrap(), "5");
    let list = ok(&alpha, &["task", "list", "--type", "submitted"]);
    assert_eq!(list["tasks"][0]["status"], "COMPLETED", "{list}");
    assert_eq!(ok(&beta, &["task", "queue"])["count"], 0);

    // Disabled again: refused.
    assert_eq!(ok(&beta, &["disable-tasks"])["task_exec"], false);
    assert_eq!(
        err(&alpha, &["task", "submit", "beta", "--task", "again"])["code"],
        "refused"
    );
}
