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
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` is not installed (no pseudo-terminal)");
        return None;
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = format!(
        "{} --socket {}",
        quote(PILOTCTL),
        quote(node.socket.to_str().unwrap())
    );
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .output()
        .expect("run script");
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
}
