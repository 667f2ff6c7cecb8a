//! `pilotctl context` against `pilotctl --help` (both parsed: every
//! command the help lists is in the catalogue and nothing else), and every
//! catalogued command run against a real daemon: none answers "not
//! supported". Also `init`/`config`, `lookup`, `health` and `version`
//! through real processes.

mod pilotctl_support;

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pilotctl_support::{Net, Node, PILOTCTL, trust};
use serde_json::Value;

/// The command names of the `Commands:` section of a clap help text.
fn help_commands(args: &[&str]) -> Vec<String> {
    let out = Command::new(PILOTCTL)
        .args(args)
        .arg("--help")
        .output()
        .expect("run pilotctl --help");
    assert!(out.status.success(), "{args:?} --help failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut names = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim_end() == "Commands:" {
            inside = true;
            continue;
        }
        if inside {
            if line.trim().is_empty() || !line.starts_with("  ") {
                break;
            }
            // A command line is indented by two; a wrapped description
            // by more.
            let rest = &line[2..];
            if rest.starts_with(' ') {
                continue;
            }
            if let Some(name) = rest.split_whitespace().next() {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// Every leaf command path `pilotctl --help` leads to, groups expanded
/// through their own `--help`.
fn help_leaves(prefix: &mut Vec<String>, out: &mut BTreeSet<String>) {
    let args: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let subs = help_commands(&args);
    if subs.is_empty() {
        out.insert(prefix.join(" "));
        return;
    }
    for s in subs {
        prefix.push(s);
        help_leaves(prefix, out);
        prefix.pop();
    }
}

fn context(env_home: &std::path::Path) -> Value {
    let out = Command::new(PILOTCTL)
        .args(["--json", "context"])
        .env("PILOT_HOME", env_home)
        .output()
        .expect("run pilotctl context");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("envelope");
    v["data"].clone()
}

#[test]
fn context_lists_exactly_the_commands_of_help() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(tmp.path());
    let catalogued: BTreeSet<String> = ctx["commands"]
        .as_object()
        .expect("commands object")
        .keys()
        .cloned()
        .collect();
    let mut helped = BTreeSet::new();
    help_leaves(&mut Vec::new(), &mut helped);
    assert!(helped.len() > 40, "parsed too few commands: {helped:?}");
    for must in [
        "context", "health", "version", "lookup", "init", "config", "inbox",
    ] {
        assert!(helped.contains(must), "{must} not in --help: {helped:?}");
    }
    let only_help: Vec<_> = helped.difference(&catalogued).collect();
    let only_ctx: Vec<_> = catalogued.difference(&helped).collect();
    assert!(
        only_help.is_empty() && only_ctx.is_empty(),
        "--help only: {only_help:?}; context only: {only_ctx:?}"
    );
    // Each entry documents arguments, output and usage; the error codes
    // are listed once.
    for (name, c) in ctx["commands"].as_object().unwrap() {
        assert!(
            c["returns"].as_str().is_some_and(|r| !r.is_empty()),
            "{name}: no returns"
        );
        assert!(c["args"].is_array() && c["usage"].is_string(), "{name}");
    }
    for code in ["not_running", "not_found", "invalid_argument", "timeout"] {
        assert!(ctx["error_codes"][code].is_string(), "{code}");
    }
}

/// Runs `pilotctl --json <args>` with a deadline (a command still running
/// then is stopped; it answered nothing wrong so far).
fn run(node: &Node, home: &std::path::Path, registry: &str, args: &[String]) -> Output {
    let mut child = Command::new(PILOTCTL)
        .arg("--json")
        .args(args)
        .env("PILOT_SOCKET", &node.socket)
        .env("PILOT_HOME", home)
        .env("HOME", home)
        .env("PILOT_REGISTRY", registry)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pilotctl");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A well-formed task id nobody submitted.
const FAKE_TASK: &str = "00000000-0000-0000-0000-000000000000";

/// Commands not run against the daemon, and why.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "demo",
        "starts its own rendezvous and daemons (tests/demo.rs runs it)",
    ),
    (
        "gateway start",
        "adds addresses to the host's interfaces when run as root (tests/gateway_netns.rs runs it in a namespace)",
    ),
];

#[test]
fn no_command_answers_not_supported() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &[]);
    trust(&alpha, &beta);
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("report.txt");
    std::fs::write(&file, b"report").unwrap();
    let beta_id = beta.node_id.to_string();
    let beta_addr = format!(
        "0:0000.{:04X}.{:04X}",
        beta.node_id >> 16,
        beta.node_id & 0xffff
    );
    let h = home.path().display().to_string();
    let f = file.display().to_string();
    // One invocation per command, in an order that keeps the network
    // usable (untrust and deregister last).
    let samples: Vec<(&str, Vec<&str>)> = vec![
        ("info", vec!["info"]),
        ("health", vec!["health"]),
        ("version", vec!["version"]),
        ("context", vec!["context"]),
        ("init", vec!["init", "--hostname", "alpha"]),
        ("config", vec!["config"]),
        ("lookup", vec!["lookup", &beta_id]),
        ("prefer-direct", vec!["prefer-direct", &beta_id]),
        // Network commands: refusals (no admin token, no such network)
        // are fine here; "not supported" is not.
        ("network list", vec!["network", "list"]),
        ("network create", vec!["network", "create", "ctx-net"]),
        ("network delete", vec!["network", "delete", "4242"]),
        ("network rename", vec!["network", "rename", "4242", "other"]),
        ("network join", vec!["network", "join", "4242"]),
        ("network leave", vec!["network", "leave", "4242"]),
        ("network members", vec!["network", "members", "4242"]),
        (
            "network invite",
            vec!["network", "invite", "4242", &beta_id],
        ),
        ("network invites", vec!["network", "invites"]),
        ("network accept", vec!["network", "accept", "4242"]),
        ("network reject", vec!["network", "reject", "4242"]),
        ("network kick", vec!["network", "kick", "4242", &beta_id]),
        (
            "network promote",
            vec!["network", "promote", "4242", &beta_id],
        ),
        (
            "network demote",
            vec!["network", "demote", "4242", &beta_id],
        ),
        (
            "network transfer",
            vec!["network", "transfer", "4242", &beta_id],
        ),
        ("network role", vec!["network", "role", "4242", &beta_id]),
        ("managed status", vec!["managed", "status", "4242"]),
        ("managed policy-get", vec!["managed", "policy-get", "4242"]),
        (
            "managed policy-set",
            vec!["managed", "policy-set", "4242", "null"],
        ),
        (
            "managed policy-validate",
            vec!["managed", "policy-validate", "{\"version\":1}"],
        ),
        ("managed tags", vec!["managed", "tags", "4242", &beta_id]),
        ("broadcast", vec!["broadcast", "4242", "hello"]),
        ("daemon status", vec!["daemon", "status"]),
        ("daemon start", vec!["daemon", "start", "--dir", &h]),
        ("daemon stop", vec!["daemon", "stop", "--dir", &h]),
        (
            "daemon install-service",
            vec!["daemon", "install-service", "--unit-dir", &h],
        ),
        ("set-hostname", vec!["set-hostname", "alpha"]),
        ("find", vec!["find", "beta"]),
        ("set-public", vec!["set-public"]),
        ("set-private", vec!["set-private"]),
        ("set-tags", vec!["set-tags", "ci"]),
        ("clear-tags", vec!["clear-tags"]),
        ("ping", vec!["ping", "beta", "--count", "1"]),
        ("traceroute", vec!["traceroute", &beta_addr]),
        ("bench", vec!["bench", "beta", "0.01"]),
        ("connect", vec!["connect", "beta", "7", "--message", "hi"]),
        ("send", vec!["send", "beta", "7", "--data", "hi"]),
        ("recv", vec!["recv", "5555", "--timeout", "1s"]),
        ("send-message", vec!["send-message", "beta", "--data", "hi"]),
        ("send-file", vec!["send-file", "beta", &f]),
        ("publish", vec!["publish", "beta", "news", "--data", "x"]),
        (
            "subscribe",
            vec![
                "subscribe",
                "beta",
                "news",
                "--count",
                "1",
                "--timeout",
                "1s",
            ],
        ),
        (
            "listen",
            vec!["listen", "5556", "--count", "1", "--timeout", "1s"],
        ),
        ("received", vec!["received"]),
        ("inbox", vec!["inbox"]),
        ("connections", vec!["connections"]),
        ("peers", vec!["peers"]),
        ("disconnect", vec!["disconnect", "999"]),
        ("handshake", vec!["handshake", "beta", "hello"]),
        ("pending", vec!["pending"]),
        ("approve", vec!["approve", &beta_id]),
        ("reject", vec!["reject", &beta_id]),
        ("trust", vec!["trust"]),
        ("gateway stop", vec!["gateway", "stop"]),
        ("gateway map", vec!["gateway", "map", "beta"]),
        ("gateway unmap", vec!["gateway", "unmap", "10.4.0.9"]),
        ("gateway list", vec!["gateway", "list"]),
        ("skill show", vec!["skill", "show"]),
        ("skill install", vec!["skill", "install", "--dir", &h]),
        ("skill status", vec!["skill", "status"]),
        (
            "nameserver serve",
            vec!["nameserver", "serve", "--timeout", "1s"],
        ),
        (
            "nameserver query",
            vec!["nameserver", "query", "beta", "A", "x", "--timeout", "5s"],
        ),
        (
            "nameserver register",
            vec![
                "nameserver",
                "register",
                "beta",
                "A",
                "x",
                "--timeout",
                "5s",
            ],
        ),
        ("set-webhook", vec!["set-webhook", "http://192.0.2.1/hook"]),
        ("clear-webhook", vec!["clear-webhook"]),
        ("enable-tasks", vec!["enable-tasks"]),
        ("disable-tasks", vec!["disable-tasks"]),
        (
            "task submit",
            vec!["task", "submit", "beta", "--task", "add 1 and 2"],
        ),
        ("task accept", vec!["task", "accept", "--id", FAKE_TASK]),
        (
            "task decline",
            vec![
                "task",
                "decline",
                "--id",
                FAKE_TASK,
                "--justification",
                "no",
            ],
        ),
        ("task execute", vec!["task", "execute"]),
        (
            "task send-results",
            vec!["task", "send-results", "--id", FAKE_TASK, "--results", "3"],
        ),
        ("task list", vec!["task", "list"]),
        ("task queue", vec!["task", "queue"]),
        ("completions", vec!["completions", "bash"]),
        ("man", vec!["man"]),
        ("clear-hostname", vec!["clear-hostname"]),
        ("untrust", vec!["untrust", &beta_id]),
        ("rotate-key", vec!["rotate-key"]),
        ("deregister", vec!["deregister"]),
    ];
    let ctx = context(home.path());
    let catalogued: BTreeSet<&str> = ctx["commands"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let sampled: BTreeSet<&str> = samples
        .iter()
        .map(|(c, _)| *c)
        .chain(NOT_RUN.iter().map(|(c, _)| *c))
        .collect();
    assert_eq!(
        catalogued, sampled,
        "every catalogued command needs a sample invocation here (or a reason in NOT_RUN)"
    );
    let mut failures = Vec::new();
    for (name, argv) in &samples {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        let out = run(&alpha, home.path(), &net.registry, &argv);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .to_lowercase();
        let unsupported = all.contains("not supported") || all.contains("unknown command");
        if unsupported {
            failures.push(format!("{name}: {all}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn init_config_lookup_health_and_version_with_real_processes() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &["--public"]);
    let home = tempfile::tempdir().unwrap();
    let ctl = |args: &[&str]| {
        run(
            &alpha,
            home.path(),
            "",
            &args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
    };
    let ok = |args: &[&str]| -> Value {
        let out = ctl(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("envelope");
        v["data"].clone()
    };

    // init writes the registry; lookup then finds it there (no flag, no env).
    let init = ok(&["init", "--registry", &net.registry, "--hostname", "alpha"]);
    assert_eq!(init["registry"], net.registry.as_str());
    assert!(home.path().join("config.json").is_file());
    let set = ok(&["config", "--set", "team=blue"]);
    assert_eq!(set, serde_json::json!({"key": "team", "value": "blue"}));
    let cfg = ok(&["config"]);
    assert_eq!(cfg["team"], "blue");
    assert_eq!(cfg["registry"], net.registry.as_str());
    let bad = ctl(&["config", "--set", "novalue"]);
    assert_eq!(bad.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&bad.stderr).unwrap();
    assert_eq!(e["code"], "invalid_argument");

    let found = ok(&["lookup", &beta.node_id.to_string()]);
    assert_eq!(found["type"], "lookup_ok", "{found}");
    assert_eq!(found["node_id"], beta.node_id);
    assert_eq!(found["public"], true);
    let missing = ctl(&["lookup", "4000000"]);
    assert_eq!(missing.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&missing.stderr).unwrap();
    assert_eq!(e["code"], "not_found", "{e}");

    let health = ok(&["health"]);
    assert_eq!(health["status"], "ok");
    assert!(health["uptime_seconds"].is_u64());
    let version = ok(&["version"]);
    assert_eq!(version["daemon_running"], true);
    assert_eq!(version["version"], version["daemon_version"]);

    // Without a daemon: health names the problem; version still answers.
    drop(alpha);
    let gone = Command::new(PILOTCTL)
        .args(["--json", "health", "--socket"])
        .arg(home.path().join("none.sock"))
        .env("PILOT_HOME", home.path())
        .output()
        .unwrap();
    let e: Value = serde_json::from_slice(&gone.stderr).unwrap();
    assert_eq!(e["code"], "not_running", "{e}");
    let v = Command::new(PILOTCTL)
        .args(["--json", "version", "--socket"])
        .arg(home.path().join("none.sock"))
        .env("PILOT_HOME", home.path())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["data"]["daemon_running"], false);
}
