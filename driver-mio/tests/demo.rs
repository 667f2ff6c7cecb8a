//! `pilotctl demo` runs to completion with every step ok and leaves no
//! process or temp dir behind.

use std::process::Command;

use serde_json::Value;

#[test]
fn demo_runs_every_step() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_pilotctl"))
        .args(["demo", "--json", "--bench-mb", "2"])
        // The demo's own temp dir goes under this one, so we can check it
        // is removed.
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout}\nstderr {stderr}"
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["status"], "ok");
    let d = &v["data"];
    assert_eq!(d["ok"], true);
    let names: Vec<&str> = d["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], true, "{s}");
            s["name"].as_str().expect("name")
        })
        .collect();
    for want in [
        "rendezvous",
        "daemon-alpha",
        "daemon-beta",
        "trust",
        "ping",
        "bench",
        "send-recv",
        "send-file",
        "pubsub",
        "kernel-tcp",
    ] {
        assert!(names.contains(&want), "missing step {want} in {names:?}");
    }
    assert!(d["bench_mbps"].as_f64().expect("bench") > 0.0);
    assert!(d["kernel_tcp_mbps"].as_f64().expect("kernel") > 0.0);
    assert!(d["ratio_to_kernel_tcp"].as_f64().is_some());
    // Everything under the demo's temp dir is gone.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
