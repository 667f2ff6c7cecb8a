//! The agent skill file (`pilotctl skill`): every command it names exists,
//! every JSON block parses, every JSON example has the shape of the real
//! output of that command against real daemons, and `install` never
//! overwrites a file the user changed.

mod pilotctl_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use pilotctl_support::{Net, Node, PILOTCTL, eventually, lists};
use serde_json::Value;

fn show() -> Value {
    let out = Command::new(PILOTCTL)
        .args(["--json", "skill", "show"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["data"].clone()
}

fn help_ok(words: &[&str]) -> bool {
    Command::new(PILOTCTL)
        .args(words)
        .arg("--help")
        .output()
        .unwrap()
        .status
        .success()
}

/// The `pilotctl <cmd> [<sub>]` paths named anywhere in the markdown.
fn named_commands(md: &str) -> BTreeSet<Vec<String>> {
    const GROUPS: &[&str] = &["daemon", "gateway", "skill"];
    let mut out = BTreeSet::new();
    for (i, _) in md.match_indices("pilotctl ") {
        let rest = &md[i + "pilotctl ".len()..];
        let line = rest.lines().next().unwrap_or("");
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.trim_end_matches(['`', ',', ')', '.', ':']))
            .filter(|w| *w != "--json")
            .collect();
        let Some(first) = words.first() else { continue };
        if first.is_empty() || !first.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            continue;
        }
        let mut path = vec![first.to_string()];
        if GROUPS.contains(first) {
            if let Some(sub) = words.get(1) {
                path.push(sub.to_string());
            }
        }
        out.insert(path);
    }
    out
}

#[test]
fn every_named_command_exists_and_every_json_block_parses() {
    let v = show();
    let md = v["markdown"].as_str().unwrap();
    let named = named_commands(md);
    for must in [
        vec!["send-message"],
        vec!["handshake"],
        vec!["find"],
        vec!["subscribe"],
        vec!["gateway", "start"],
        vec!["daemon", "start"],
    ] {
        let must: Vec<String> = must.into_iter().map(String::from).collect();
        assert!(named.contains(&must), "{must:?} not found in {named:?}");
    }
    for path in &named {
        let words: Vec<&str> = path.iter().map(String::as_str).collect();
        assert!(
            help_ok(&words),
            "SKILL.md names `pilotctl {}`, which does not exist",
            path.join(" ")
        );
    }
    // The check can fail: a command that does not exist is refused.
    assert!(!help_ok(&["submit-task"]));
    assert!(!help_ok(&["gateway", "open"]));

    let mut blocks = 0;
    for (i, _) in md.match_indices("```json\n") {
        let body = &md[i + 8..];
        let end = body.find("\n```").expect("closed block");
        serde_json::from_str::<Value>(&body[..end])
            .unwrap_or_else(|e| panic!("JSON block does not parse ({e}): {}", &body[..end]));
        blocks += 1;
    }
    assert_eq!(blocks, v["examples"].as_array().unwrap().len());
    // Every catalogue entry is a real command and has a usage line in the
    // markdown.
    for c in v["commands"].as_array().unwrap() {
        let path: Vec<&str> = c["command"].as_str().unwrap().split(' ').collect();
        assert!(help_ok(&path), "{path:?}");
        assert!(md.contains(c["usage"].as_str().unwrap()));
    }
}

/// `example` has the shape of `real`: same keys (all of them, or only
/// those shown when `subset`), same JSON types, recursively (arrays by
/// their first elements).
fn same_shape(example: &Value, real: &Value, path: &str, subset: bool) -> Result<(), String> {
    use Value::*;
    match (example, real) {
        (Object(e), Object(r)) => {
            for (k, ev) in e {
                let rv = r
                    .get(k)
                    .ok_or_else(|| format!("{path}.{k}: in the example, not in the real output"))?;
                same_shape(ev, rv, &format!("{path}.{k}"), false)?;
            }
            if !subset {
                if let Some(k) = r.keys().find(|k| !e.contains_key(*k)) {
                    return Err(format!(
                        "{path}.{k}: in the real output, not in the example"
                    ));
                }
            }
            Ok(())
        }
        (Array(e), Array(r)) => match (e.first(), r.first()) {
            (Some(e0), Some(r0)) => same_shape(e0, r0, &format!("{path}[0]"), false),
            _ => Ok(()),
        },
        (Number(_), Number(_)) | (String(_), String(_)) | (Bool(_), Bool(_)) | (Null, Null) => {
            Ok(())
        }
        _ => Err(format!("{path}: example {example} vs real {real}")),
    }
}

struct Ctx<'a> {
    examples: &'a [Value],
    done: BTreeSet<String>,
    file: String,
}

impl Ctx<'_> {
    fn argv(&self, cmd: &str, peer: &Node) -> Vec<String> {
        let e = self
            .examples
            .iter()
            .find(|e| e["command"] == cmd)
            .unwrap_or_else(|| panic!("no example for {cmd}"));
        e["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| match a.as_str().unwrap() {
                "<peer>" => peer.name.clone(),
                "<node_id>" => peer.node_id.to_string(),
                "<file>" => self.file.clone(),
                other => other.to_owned(),
            })
            .collect()
    }

    fn check(&mut self, cmd: &str, real: &Value) {
        let e = self.examples.iter().find(|e| e["command"] == cmd).unwrap();
        // `info` shows a selection of its many counters.
        let subset = cmd == "info";
        if let Err(m) = same_shape(&e["output"], real, cmd, subset) {
            panic!("SKILL.md example of `{cmd}` does not match the real output: {m}\nreal: {real}");
        }
        self.done.insert(cmd.to_owned());
    }

    /// Runs the example of `cmd` on `on` against `peer` and checks it.
    fn run(&mut self, cmd: &str, on: &Node, peer: &Node) -> Value {
        let argv = self.argv(cmd, peer);
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let real = on.ok(&args);
        self.check(cmd, &real);
        real
    }
}

#[test]
fn examples_match_real_output_shapes() {
    let v = show();
    let examples = v["examples"].as_array().unwrap().clone();
    let net = Net::new();
    let a = net.node("skill-a", &[]);
    let b = net.node("skill-b", &[]);
    let file = net.dir.path().join("report.txt");
    std::fs::write(&file, b"report").unwrap();
    let mut cx = Ctx {
        examples: &examples,
        done: BTreeSet::new(),
        file: file.display().to_string(),
    };

    cx.run("info", &a, &b);
    cx.run("handshake", &a, &b);
    eventually("the request at b", || {
        lists(&b.ok(&["pending"]), "pending", a.node_id)
    });
    cx.run("pending", &b, &a);
    cx.run("approve", &b, &a);
    eventually("mutual trust", || {
        lists(&a.ok(&["trust"]), "trusted", b.node_id)
            && lists(&b.ok(&["trust"]), "trusted", a.node_id)
    });
    cx.run("trust", &a, &b);
    cx.run("find", &a, &b);
    cx.run("ping", &a, &b);
    cx.run("send-message", &a, &b);
    cx.run("send-file", &a, &b);

    // b subscribes to a's broker; b publishes there until the event
    // arrives.
    let sub_argv = cx.argv("subscribe", &a);
    let sub_args: Vec<&str> = sub_argv.iter().map(String::as_str).collect();
    let mut sub = b.spawn(&sub_args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = None;
    while sub.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "subscriber got nothing");
        let argv = cx.argv("publish", &a);
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = b.ctl(&args);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            published = Some(v["data"].clone());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    cx.check("publish", &published.expect("a publish succeeded"));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut sub.0.stdout.take().unwrap(), &mut out).unwrap();
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    cx.check("subscribe", &v["data"]);

    let peers = cx.run("peers", &a, &b);
    assert!(peers["total"].as_u64().unwrap() >= 1);
    // A connection that stays open while `connections` looks.
    let c = a.client();
    let conn = c
        .dial(pilot_proto_addr(b.node_id), 7)
        .expect("open a stream to b's echo port");
    let real = a.ok(&["connections"]);
    assert!(real["total"].as_u64().unwrap() >= 1);
    cx.check("connections", &real);
    let _ = c.close(conn);

    let all: BTreeSet<String> = examples
        .iter()
        .map(|e| e["command"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cx.done, all, "every example is checked against a real run");
}

fn pilot_proto_addr(node: u32) -> pilot_proto::addr::Addr {
    pilot_proto::addr::Addr::new(0, node)
}

fn skill(home: &std::path::Path, args: &[&str]) -> (bool, Value) {
    let out = Command::new(PILOTCTL)
        .arg("--json")
        .arg("skill")
        .args(args)
        .env("HOME", home)
        .output()
        .unwrap();
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    (out.status.success(), serde_json::from_slice(&text).unwrap())
}

#[test]
fn install_writes_only_where_asked_and_never_over_a_changed_file() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let md = show()["markdown"].as_str().unwrap().to_owned();
    let claude = h.join(".claude/skills/pilot-protocol/SKILL.md");

    let (ok, v) = skill(h, &["install"]);
    assert!(!ok);
    assert_eq!(v["code"], "invalid_argument");
    let (ok, v) = skill(h, &["install", "--target", "vim"]);
    assert!(!ok, "{v}");

    let (ok, v) = skill(h, &["install", "--target", "claude"]);
    assert!(ok, "{v}");
    assert_eq!(std::fs::read_to_string(&claude).unwrap(), md);
    // Only where asked.
    assert!(!h.join(".codex").exists());
    let (_, v) = skill(h, &["status"]);
    let state = |v: &Value, t: &str| {
        v["data"]["locations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["target"] == t)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(&v, "claude"), "current");
    assert_eq!(state(&v, "codex"), "absent");

    // Re-installing a current file writes nothing.
    let (ok, v) = skill(h, &["install", "--target", "claude"]);
    assert!(ok);
    assert_eq!(v["data"]["installed"][0]["written"], false);

    // A file changed by the user is kept.
    std::fs::write(&claude, format!("{md}\nmy own notes\n")).unwrap();
    let (_, v) = skill(h, &["status"]);
    assert_eq!(state(&v, "claude"), "modified");
    let (ok, v) = skill(h, &["install", "--target", "claude", "--target", "codex"]);
    assert!(!ok);
    assert_eq!(v["code"], "already_exists");
    assert!(v["hint"].as_str().unwrap().contains("--force"));
    assert!(
        std::fs::read_to_string(&claude)
            .unwrap()
            .ends_with("my own notes\n")
    );
    // All or nothing: codex was not written either.
    assert!(!h.join(".codex").exists());

    // A file pilotctl wrote earlier (an older version) is updated.
    let old = "old skill\n";
    std::fs::write(&claude, old).unwrap();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(old.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    std::fs::write(
        claude.with_file_name(".pilot-skill.json"),
        format!("{{\"sha256\":\"{sha}\"}}"),
    )
    .unwrap();
    let (_, v) = skill(h, &["status"]);
    assert_eq!(state(&v, "claude"), "outdated");
    let (ok, v) = skill(h, &["install", "--target", "claude"]);
    assert!(ok, "{v}");
    assert_eq!(v["data"]["installed"][0]["previous"], "outdated");
    assert_eq!(std::fs::read_to_string(&claude).unwrap(), md);

    // --force overwrites a changed file; --dir installs anywhere.
    std::fs::write(&claude, "mine").unwrap();
    let custom = h.join("custom");
    let (ok, v) = skill(
        h,
        &[
            "install",
            "--target",
            "claude",
            "--dir",
            custom.to_str().unwrap(),
            "--force",
        ],
    );
    assert!(ok, "{v}");
    assert_eq!(std::fs::read_to_string(&claude).unwrap(), md);
    assert_eq!(
        std::fs::read_to_string(custom.join("pilot-protocol/SKILL.md")).unwrap(),
        md
    );
}

/// The repository's `SKILL.md` is exactly what `pilotctl skill show` prints.
#[test]
fn committed_skill_file_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../SKILL.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let out = Command::new(PILOTCTL)
        .args(["skill", "show"])
        .output()
        .unwrap();
    assert!(
        committed == String::from_utf8_lossy(&out.stdout),
        "SKILL.md is stale; regenerate it: cargo run -p pilot-driver-mio --bin pilotctl -- skill show > SKILL.md"
    );
}

/// `pilotctl skill show | head -1`: a reader that is gone before the
/// output is written is no panic; pilotctl exits 0 (it used to die with
/// "failed printing to stdout: Broken pipe"). The pipe's read end is
/// closed before pilotctl starts, so the write always meets EPIPE.
#[test]
fn a_reader_that_leaves_early_is_no_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(PILOTCTL)
        .args(["skill", "show"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?} {stderr}", out.status);
}
