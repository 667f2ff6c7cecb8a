//! Small helpers of `pilotctl`: the error type with its envelope code,
//! duration parsing, address arguments (`spec/daemon.md` §4.7 of the
//! reference), plain tables and the progress bar.

use std::io::IsTerminal;
use std::str::FromStr;
use std::time::Duration;

use pilot_proto::addr::Addr;
use serde_json::Value;

use crate::ipc_client::{IpcClient, IpcClientError};

/// A command failure: the envelope's `code`, `message` and optional `hint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// Machine-readable code (`not_found`, `timeout`, …).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Next step for the user, if any.
    pub hint: Option<String>,
    /// The peer a `not_trusted` failure is about (lets the caller look
    /// for a pending request, [`trust_pending`]).
    pub peer: Option<u32>,
}

impl CliError {
    /// An error with a code and a message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
            hint: None,
            peer: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_argument", message)
    }

    /// Maps an IPC failure, using `code` for errors reported by the daemon.
    pub fn ipc(e: IpcClientError, daemon_code: &'static str) -> Self {
        match e {
            IpcClientError::Connect { path, .. } => CliError::new(
                "not_running",
                format!("daemon is not running (no daemon at {})", path.display()),
            )
            .hint("start it with: pilotctl daemon start"),
            IpcClientError::Timeout(what) => {
                CliError::new("timeout", format!("timed out waiting for {what}"))
            }
            IpcClientError::Disconnected => {
                CliError::new("connection_failed", "daemon closed the connection")
            }
            IpcClientError::Daemon(m) => CliError::new(daemon_code, m),
            other => CliError::new("internal", other.to_string()),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Names the cause of a daemon error about reaching a peer (`what` is the
/// operation, `m` the daemon's text): registry unreachable, peer private
/// and untrusted, peer offline — each with its code and the next command.
pub fn cause(what: &str, node: u32, m: &str) -> CliError {
    let lower = m.to_ascii_lowercase();
    if lower.contains("registry unreachable") {
        CliError::new("registry_unreachable", format!("{what}: the registry cannot be reached ({m})"))
            .hint("start the rendezvous (`pilotctl daemon start` runs one on 127.0.0.1:9000) or check the daemon's --registry; `pilotctl daemon status` shows it")
    } else if lower.contains("private")
        || lower.contains("denied")
        || lower.contains("mutual trust")
    {
        let mut e = CliError::new("not_trusted", format!("{what}: node {node} is private and does not trust this node yet ({m})"))
            .hint(format!("ask for trust: pilotctl handshake {node} \"reason\"; once asked, the peer must run: pilotctl approve <this node id>"));
        e.peer = Some(node);
        e
    } else if lower.contains("not found")
        || lower.contains("dial timeout")
        || lower.contains("gave up")
        || lower.contains("unreachable")
    {
        CliError::new("peer_offline", format!("{what}: node {node} is offline or not answering ({m})"))
            .hint(format!("check that node {node} is registered and its daemon runs: pilotctl find <hostname>, pilotctl peers"))
    } else {
        CliError::new("connection_failed", format!("{what}: {m}"))
    }
}

/// Turns a `not_trusted` failure into `trust_pending` when a trust request
/// between this node and the peer is already waiting: ours to the peer
/// (`outgoing` in the daemon's pending list — the peer must approve) or
/// the peer's to us (`pending` — we must approve). Any other error, or a
/// daemon that cannot say, is returned unchanged.
pub fn trust_pending(e: CliError, client: &IpcClient) -> CliError {
    let Some(node) = e.peer.filter(|_| e.code == "not_trusted") else {
        return e;
    };
    let Ok(v) = client.handshake_pending() else {
        return e;
    };
    let listed = |key: &str| {
        v[key]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["node_id"] == node))
    };
    let me = client
        .info()
        .ok()
        .and_then(|i| i["node_id"].as_u64())
        .map_or_else(|| "<this node id>".to_owned(), |n| n.to_string());
    let mut out = if listed("pending") {
        CliError::new(
            "trust_pending",
            format!(
                "{} — node {node} has asked to trust this node and waits for your approval",
                e.message
            ),
        )
        .hint(format!(
            "approve it: pilotctl approve {node} (or pilotctl reject {node})"
        ))
    } else if listed("outgoing") {
        CliError::new(
            "trust_pending",
            format!(
                "{} — this node's trust request to node {node} is not approved yet",
                e.message
            ),
        )
        .hint(format!(
            "node {node} must run: pilotctl approve {me}; then retry"
        ))
    } else {
        return e;
    };
    out.peer = Some(node);
    out
}

/// The error of a failed dial to `addr:port` reported by the daemon.
pub fn dial_error(addr: Addr, port: u16, m: &str) -> CliError {
    cause(&format!("dial {addr}:{port}"), addr.node, m)
}

/// A plain-text table (no colour, no box drawing: it reads the same on a
/// terminal, in a pipe and in a file) of `rows`, one column per
/// `(header, key)`; `empty` when there are no rows.
pub fn table(rows: &[Value], columns: &[(&str, &str)], empty: &str) -> String {
    if rows.is_empty() {
        return empty.to_owned();
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(columns.iter().map(|(h, _)| *h));
    for r in rows {
        t.add_row(columns.iter().map(|(_, k)| match &r[*k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_owned(),
            Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or(0.0)),
            other => other.to_string(),
        }));
    }
    // Rows start at the left margin.
    t.to_string()
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replaces the Unix-seconds field `key` of each row by its local time,
/// RFC 3339 (`2026-01-02T03:04:05+01:00`), for a table; rows without a
/// number there are left alone.
pub fn local_times(rows: &mut [Value], key: &str) {
    for r in rows {
        let Some(secs) = r[key].as_i64() else {
            continue;
        };
        if let Ok(ts) = jiff::Timestamp::from_second(secs) {
            let local = ts.to_zoned(jiff::tz::TimeZone::system());
            r[key] = Value::String(local.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string());
        }
    }
}

/// Result alias of the command implementations.
pub type CliResult<T> = Result<T, CliError>;

/// Parses a `--timeout`-style duration ([`crate::duration::parse`], the
/// syntax every binary here shares).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse(text)
}

/// Milliseconds with microsecond resolution, as the reference reports
/// `rtt_ms` (microseconds / 1000).
pub fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// How an address argument was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The resolved address.
    pub addr: Addr,
    /// Hostname, if the argument was one.
    pub hostname: Option<String>,
}

/// Resolves an `<address|node_id|hostname>` argument: a full virtual
/// address, a decimal node id (network 0), or a hostname resolved through
/// the daemon. `quiet` suppresses the `resolved "h" → addr` note on stderr.
pub fn resolve_target(client: &IpcClient, arg: &str, quiet: bool) -> CliResult<Target> {
    if let Ok(addr) = Addr::from_str(arg) {
        return Ok(Target {
            addr,
            hostname: None,
        });
    }
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(node) = arg.parse::<u32>() {
            return Ok(Target {
                addr: Addr::new(0, node),
                hostname: None,
            });
        }
    }
    let not_found = || {
        CliError::new(
            "not_found",
            format!(
                "cannot resolve {arg:?} — is the hostname correct and is there mutual trust? (see: pilotctl handshake)"
            ),
        )
    };
    let v = match client.resolve_hostname(arg) {
        Ok(v) => v,
        Err(IpcClientError::Daemon(m)) if m.contains("registry unreachable") => {
            return Err(cause(&format!("resolve {arg:?}"), 0, &m));
        }
        Err(IpcClientError::Daemon(_)) => {
            return Err(not_found().hint(format!(
                "check the name, or ask for trust first: pilotctl handshake {arg} \"reason\""
            )));
        }
        Err(IpcClientError::Timeout(_)) => {
            return Err(CliError::new(
                "timeout",
                format!("resolving {arg:?} took longer than the deadline"),
            )
            .hint("the registry may be slow or unreachable: pilotctl daemon status"));
        }
        Err(e) => return Err(CliError::ipc(e, "not_found")),
    };
    let addr = crate::ipc_client::resolved_addr(&v).ok_or_else(not_found)?;
    if !quiet {
        eprintln!("resolved {arg:?} → {addr}");
    }
    Ok(Target {
        addr,
        hostname: Some(arg.to_owned()),
    })
}

/// Parses a node id argument: decimal id or full address.
pub fn parse_node_id(arg: &str) -> CliResult<u32> {
    if let Ok(n) = arg.parse::<u32>() {
        return Ok(n);
    }
    Addr::from_str(arg)
        .map(|a| a.node)
        .map_err(|_| CliError::invalid(format!("invalid node id {arg:?}")))
}

/// A byte-count progress bar on stderr (`indicatif`), drawn only when
/// stderr is a terminal and cleared when done, so no trace of it is left
/// on the screen, in a pipe or in a log file.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// A bar for `total` bytes; hidden unless `show` and stderr is a TTY.
    pub fn new(label: &str, total: u64, show: bool) -> Self {
        Self::with_target(label, total, show && std::io::stderr().is_terminal())
    }

    fn with_target(label: &str, total: u64, visible: bool) -> Self {
        let target = if visible {
            // At most ten redraws a second.
            indicatif::ProgressDrawTarget::stderr_with_hz(10)
        } else {
            indicatif::ProgressDrawTarget::hidden()
        };
        let bar = indicatif::ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {percent:>3}%  {bytes}/{total_bytes}  {binary_bytes_per_sec}  {eta}",
        ) {
            bar.set_style(style.progress_chars("#>-"));
        }
        bar.set_prefix(label.to_owned());
        Progress { bar }
    }

    /// Records `n` more bytes done.
    pub fn add(&mut self, n: u64) {
        self.bar.inc(n);
    }

    /// Bytes recorded so far.
    pub fn done(&self) -> u64 {
        self.bar.position()
    }

    /// Ends the bar and clears it from the terminal.
    pub fn finish(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_plain_and_aligned() {
        let rows = vec![
            serde_json::json!({"node_id": 7, "endpoint": "127.0.0.1:4000", "ok": true}),
            serde_json::json!({"node_id": 12345, "endpoint": null, "ok": false}),
        ];
        let t = table(
            &rows,
            &[("NODE", "node_id"), ("ENDPOINT", "endpoint")],
            "none",
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].starts_with("NODE") && lines[0].contains("ENDPOINT"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("12345") && lines[2].ends_with('-'),
            "{t}"
        );
        let col = lines[0].find("ENDPOINT").unwrap();
        assert_eq!(lines[1].find("127.0.0.1:4000"), Some(col), "aligned: {t}");
        assert!(!t.contains('\x1b'));
        assert_eq!(table(&[], &[("NODE", "node_id")], "none"), "none");
    }

    #[test]
    fn durations_in_go_syntax_and_plain_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn unix_seconds_become_local_rfc3339_in_tables() {
        let mut rows = vec![
            serde_json::json!({"at": 1_767_323_045}),
            serde_json::json!({"at": "x"}),
        ];
        local_times(&mut rows, "at");
        let s = rows[0]["at"].as_str().unwrap();
        let back: jiff::Timestamp = s.parse().unwrap();
        assert_eq!(back.as_second(), 1_767_323_045, "{s}");
        assert_eq!(rows[1]["at"], "x");
    }

    #[test]
    fn hidden_progress_counts_and_finishes() {
        let mut p = Progress::with_target("x", 100, false);
        p.add(40);
        p.add(70);
        assert_eq!(p.done(), 110);
        p.finish();
        assert!(p.bar.is_finished());
        assert!(p.bar.is_hidden());
    }

    #[test]
    fn node_ids_from_numbers_and_addresses() {
        assert_eq!(parse_node_id("11"), Ok(11));
        assert_eq!(parse_node_id("0:0000.0000.000B"), Ok(11));
        assert_eq!(
            parse_node_id("x").map_err(|e| e.code),
            Err("invalid_argument")
        );
    }
}
