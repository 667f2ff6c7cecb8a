//! `pilotctl daemon start|status|stop` with a PID file and a log file in a
//! temp state dir, against a test rendezvous.

mod pilotctl_support;

use std::process::Command;

use pilotctl_support::{Net, PILOTCTL};
use serde_json::Value;

fn ctl(socket: &std::path::Path, args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(PILOTCTL)
        .arg("--json")
        .args(args)
        .env("PILOT_SOCKET", socket)
        .output()
        .expect("run pilotctl");
    let text = if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    };
    let v = serde_json::from_slice(text).unwrap_or_else(|_| {
        panic!(
            "{args:?}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

#[test]
fn start_status_stop_lifecycle() {
    let net = Net::new();
    let state = net.dir.path().join("state");
    let st = state.to_str().expect("utf8");
    let socket = net.dir.path().join("d.sock");
    let (code, v) = ctl(
        &socket,
        &[
            "daemon",
            "start",
            "--dir",
            st,
            "--registry",
            &net.registry,
            "--beacon",
            &net.beacon,
            "--hostname",
            "lifecycle",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    let d = &v["data"];
    let pid = d["pid"].as_i64().expect("pid");
    assert!(d["node_id"].as_u64().expect("node id") > 0);
    assert_eq!(d["socket"], socket.to_str().expect("utf8"));
    assert!(d["log_file"].as_str().expect("log").ends_with("pilot.log"));
    let pid_file = std::fs::read_to_string(state.join("pilot.pid")).expect("pid file");
    assert_eq!(pid_file.trim(), pid.to_string());

    // A second start is refused.
    let (code, v) = ctl(&socket, &["daemon", "start", "--dir", st]);
    assert_eq!(code, Some(1));
    assert_eq!(v["code"], "already_exists");

    let (code, v) = ctl(&socket, &["daemon", "status", "--dir", st]);
    assert_eq!(code, Some(0));
    assert_eq!(v["data"]["running"], true);
    assert_eq!(v["data"]["responsive"], true);
    assert_eq!(v["data"]["pid"], pid);
    assert_eq!(v["data"]["hostname"], "lifecycle");

    let (code, v) = ctl(&socket, &["daemon", "stop", "--dir", st]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["data"]["pid"], pid);
    assert_eq!(v["data"]["forced"], false);
    assert!(!state.join("pilot.pid").exists());

    let (code, v) = ctl(&socket, &["daemon", "status", "--dir", st]);
    assert_eq!(code, Some(0));
    assert_eq!(v["data"]["running"], false);
    let (code, v) = ctl(&socket, &["info"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["code"], "not_running");
}
