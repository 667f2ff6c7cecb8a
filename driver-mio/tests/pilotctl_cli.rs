//! `pilotctl` as a process, without a daemon: the `--json` envelope, exit
//! codes and error codes of the command line itself.

use std::process::{Command, Output};

use serde_json::Value;

fn pilotctl(args: &[&str], socket: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pilotctl"))
        .args(args)
        .env("PILOT_SOCKET", socket)
        .env_remove("PILOT_HOME")
        .output()
        .expect("run pilotctl")
}

fn one_json_line(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    let line = lines.next().expect("one line");
    assert!(lines.next().is_none(), "exactly one line, got {text:?}");
    serde_json::from_str(line).expect("JSON")
}

#[test]
fn no_command_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = pilotctl(&[], &dir.path().join("s.sock"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_command_exit_codes_with_and_without_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("s.sock");
    let out = pilotctl(&["frobnicate"], &sock);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());

    // --json may appear anywhere, also after the command.
    let out = pilotctl(&["frobnicate", "--json"], &sock);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let v = one_json_line(&out.stderr);
    assert_eq!(v["status"], "error");
    assert_eq!(v["code"], "invalid_argument");
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("frobnicate")
    );
}

#[test]
fn daemon_not_running_is_reported_with_a_hint() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("nobody.sock");
    for cmd in [
        &["--json", "info"][..],
        &["trust", "--json"],
        &["ping", "7", "--json"],
    ] {
        let out = pilotctl(cmd, &sock);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        assert!(out.stdout.is_empty());
        let v = one_json_line(&out.stderr);
        assert_eq!(v["status"], "error");
        assert_eq!(v["code"], "not_running");
        assert!(v["hint"].as_str().expect("hint").contains("daemon start"));
        assert!(
            v["message"]
                .as_str()
                .expect("message")
                .contains("nobody.sock")
        );
    }
    // Human form: `error: …` then `hint:  …` on stderr.
    let out = pilotctl(&["info"], &sock);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let mut lines = err.lines();
    assert!(
        lines
            .next()
            .expect("error line")
            .starts_with("error: daemon is not running")
    );
    assert!(lines.next().expect("hint line").starts_with("hint:  "));
}

#[test]
fn daemon_status_reports_not_running_as_data() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("s.sock");
    let state = dir.path().join("state");
    let state_s = state.to_str().expect("utf8");
    let out = pilotctl(&["--json", "daemon", "status", "--dir", state_s], &sock);
    assert_eq!(out.status.code(), Some(0));
    let v = one_json_line(&out.stdout);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["data"]["running"], false);
    assert_eq!(v["data"]["responsive"], false);
    assert_eq!(v["data"]["socket"], sock.to_str().expect("utf8"));

    let out = pilotctl(&["daemon", "status", "--check"], &sock);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());

    let out = pilotctl(&["--json", "daemon", "stop", "--dir", state_s], &sock);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(one_json_line(&out.stderr)["code"], "not_running");
}

#[test]
fn bad_arguments_are_invalid_argument() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("s.sock");
    let out = pilotctl(&["--json", "ping"], &sock);
    assert_eq!(out.status.code(), Some(1));
    let v = one_json_line(&out.stderr);
    assert_eq!(v["code"], "invalid_argument");
    assert!(v["message"].as_str().expect("message").contains("<TARGET>"));

    let out = pilotctl(&["--json", "traceroute", "not-an-address"], &sock);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(one_json_line(&out.stderr)["code"], "invalid_argument");

    let out = pilotctl(&["--json", "approve", "bob"], &sock);
    assert_eq!(one_json_line(&out.stderr)["code"], "invalid_argument");
}

#[test]
fn help_version_completions_man_and_one_duration_syntax() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("s.sock");
    let help = pilotctl(&["--help"], &sock);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--json") && text.contains("--socket"),
        "{text}"
    );
    for bin in [
        env!("CARGO_BIN_EXE_pilotctl"),
        env!("CARGO_BIN_EXE_pilot-daemon"),
        env!("CARGO_BIN_EXE_pilot-rendezvous"),
    ] {
        let out = Command::new(bin).arg("--version").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{bin} --version");
        assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
    let out = pilotctl(&["completions", "bash"], &sock);
    assert_eq!(out.status.code(), Some(0));
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("pilotctl") && script.contains("send-file"));
    let out = pilotctl(&["man"], &sock);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH pilotctl"));
    // The same duration syntax as the daemon, checked before any call.
    let out = pilotctl(&["--json", "ping", "1", "--timeout", "1m30s"], &sock);
    assert_eq!(one_json_line(&out.stderr)["code"], "not_running");
    let out = pilotctl(&["--json", "ping", "1", "--timeout", "ten"], &sock);
    let e = one_json_line(&out.stderr);
    assert_eq!(e["code"], "invalid_argument");
    assert!(e["message"].as_str().unwrap().contains("30s"), "{e}");
}

#[test]
fn install_service_writes_the_unit_and_keeps_a_changed_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("s.sock");
    let units = dir.path().join("units");
    let units_s = units.to_str().unwrap();
    let unit = units.join("pilot-daemon.service");
    let daemon = std::path::Path::new(env!("CARGO_BIN_EXE_pilotctl"))
        .with_file_name("pilot-daemon")
        .display()
        .to_string();

    // A user unit running the pilot-daemon next to this pilotctl.
    let out = pilotctl(
        &["--json", "daemon", "install-service", "--unit-dir", units_s],
        &sock,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = one_json_line(&out.stdout);
    assert_eq!(v["data"]["status"], "written", "{v}");
    assert_eq!(v["data"]["scope"], "user");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains(&format!("ExecStart={daemon} --dir %h/.pilot")),
        "{text}"
    );
    assert!(text.contains("WantedBy=default.target"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&unit).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // Again: nothing to do.
    let out = pilotctl(
        &[
            "--json",
            "daemon",
            "install-service",
            "--user",
            "--unit-dir",
            units_s,
        ],
        &sock,
    );
    assert_eq!(one_json_line(&out.stdout)["data"]["status"], "unchanged");

    // Edited by hand: kept, unless --force.
    std::fs::write(&unit, format!("{text}\n# my edit\n")).unwrap();
    let out = pilotctl(
        &[
            "--json",
            "daemon",
            "install-service",
            "--system",
            "--unit-dir",
            units_s,
        ],
        &sock,
    );
    assert_eq!(out.status.code(), Some(1));
    let e = one_json_line(&out.stderr);
    assert_eq!(e["code"], "already_exists", "{e}");
    assert!(e["hint"].as_str().unwrap().contains("--force"), "{e}");
    assert!(
        std::fs::read_to_string(&unit)
            .unwrap()
            .contains("# my edit")
    );
    let out = pilotctl(
        &[
            "--json",
            "daemon",
            "install-service",
            "--system",
            "--force",
            "--daemon-bin",
            "/opt/pilot/pilot-daemon",
            "--unit-dir",
            units_s,
        ],
        &sock,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(one_json_line(&out.stdout)["data"]["status"], "replaced");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains("ExecStart=/opt/pilot/pilot-daemon --dir /var/lib/pilot"),
        "{text}"
    );
    assert!(text.contains("User=pilot") && !text.contains("# my edit"));

    // systemd needs absolute paths; --user and --system exclude each other.
    let out = pilotctl(
        &[
            "--json",
            "daemon",
            "install-service",
            "--daemon-bin",
            "pilot-daemon",
            "--unit-dir",
            units_s,
        ],
        &sock,
    );
    assert_eq!(one_json_line(&out.stderr)["code"], "invalid_argument");
    let out = pilotctl(
        &[
            "daemon",
            "install-service",
            "--user",
            "--system",
            "--unit-dir",
            units_s,
        ],
        &sock,
    );
    assert_eq!(out.status.code(), Some(1));
}
