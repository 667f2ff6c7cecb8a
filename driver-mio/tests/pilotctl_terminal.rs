//! Human output on a real pseudo-terminal (through util-linux `script`)
//! and on pipes: commands print readable text on a terminal, and no escape
//! code ever reaches piped output or a log file. Skipped, with a message,
//! where `script` is missing.

mod pilotctl_support;

use std::path::Path;
use std::process::Command;

use pilotctl_support::{Net, Node, PILOTCTL, log_of, trust};

/// Runs `pilotctl <args>` against `node` on a pseudo-terminal; returns its
/// exit code and everything it wrote, or `None` without `script`.
fn on_terminal(node: &Node, args: &[&str]) -> Option<(i32, String)> {
    let mut all = vec!["--socket", node.socket.to_str().unwrap()];
    all.extend_from_slice(args);
    pty(&all, &[])
}

/// Runs `pilotctl <args>` on a pseudo-terminal (util-linux `script`) with
/// extra environment `env`; `None` (and a message) without `script`.
fn pty(args: &[&str], env: &[(&str, &Path)]) -> Option<(i32, String)> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` is not installed (no pseudo-terminal)");
        return None;
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = quote(PILOTCTL);
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run script");
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Runs `pilotctl <args>` (human output) with stdout and stderr piped.
fn piped(node: &Node, args: &[&str]) -> (i32, String) {
    let out = Command::new(PILOTCTL)
        .arg("--socket")
        .arg(&node.socket)
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("run pilotctl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn assert_plain(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b'),
        "{what}: escape code in output: {text:?}"
    );
}

#[test]
fn human_output_on_a_terminal_and_none_of_its_escapes_in_pipes_or_logs() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &[]);
    trust(&alpha, &beta);
    let b = beta.node_id.to_string();
    // A tunnel exists once they have talked.
    alpha.ok(&["ping", &b, "--count", "1"]);

    let src = net.dir.path().join("notes.txt");
    std::fs::write(&src, "hello over pilot\n".repeat(20_000)).unwrap();
    let src = src.to_str().unwrap();

    if let Some((code, text)) = on_terminal(&alpha, &["peers"]) {
        assert_eq!(code, 0, "{text}");
        assert!(text.contains(&b), "peers on a terminal: {text}");
        let (code, text) = on_terminal(&alpha, &["send-file", &b, src]).unwrap();
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("ACK FILE"), "send-file on a terminal: {text}");
    }

    let (code, text) = piped(&alpha, &["peers"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&b));
    assert_plain("piped peers", &text);
    let (code, text) = piped(&alpha, &["send-file", &b, src]);
    assert_eq!(code, 0, "{text}");
    assert_plain("piped send-file", &text);
    let (code, text) = piped(&alpha, &["ping", "no-such-host", "--timeout", "5s"]);
    assert_eq!(code, 1);
    assert!(text.contains("hint:"), "{text}");
    assert_plain("piped error", &text);

    for name in ["alpha", "beta"] {
        let log = log_of(&net, name);
        assert!(!log.is_empty());
        assert_plain(&format!("{name}'s log file"), &log);
    }
    assert!(Path::new(&beta.dir.join("received/notes.txt")).exists());

    // The receiver lists what arrived: a table for people, sender included.
    let beta_dir = beta.dir.to_str().unwrap();
    let alpha_addr = pilot_proto::addr::Addr::new(0, alpha.node_id).to_string();
    let (code, text) = piped(&beta, &["received", "--dir", beta_dir]);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains("notes.txt") && text.contains(&alpha_addr),
        "{text}"
    );
    assert_plain("piped received", &text);
    if let Some((code, text)) = on_terminal(&beta, &["received", "--dir", beta_dir]) {
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("notes.txt"), "{text}");
    }
}

#[test]
fn demo_reads_well_on_a_terminal_and_leaves_no_escape_codes_in_pipes_or_logs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let args = ["demo", "--bench-mb", "2"];
    if let Some((code, text)) = pty(&args, &[("TMPDIR", tmp.path())]) {
        assert_eq!(code, 0, "{text}");
        for want in ["pilot demo in", "ok    trust", "ok    send-file", "demo ok"] {
            assert!(
                text.contains(want),
                "demo on a terminal lacks {want:?}: {text}"
            );
        }
    }
    // Piped, with the directory kept so its log files can be read.
    let out = Command::new(PILOTCTL)
        .args(["demo", "--bench-mb", "2", "--keep"])
        .env("TMPDIR", tmp.path())
        .env_remove("NO_COLOR")
        .output()
        .expect("run demo");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("demo ok"), "{text}");
    assert_plain("piped demo", &text);
    let mut logs = 0;
    for entry in walk(tmp.path()) {
        if entry.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&entry).unwrap_or_default();
            assert_plain(&entry.display().to_string(), &log);
            logs += 1;
        }
    }
    assert!(logs >= 3, "the kept demo directory has its logs ({logs})");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
