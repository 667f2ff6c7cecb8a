//! The agent skill file (`SKILL.md`) and `pilotctl skill show|install|status`.
//!
//! The command reference of the skill is generated from the CLI's own clap
//! definition ([`catalog`]), so a renamed command or flag changes the file
//! with it; what clap cannot know (JSON output examples, error codes,
//! recipes) lives in the small tables [`EXAMPLES`], [`ERROR_CODES`] and
//! [`RECIPES`], which `tests/pilotctl_skill.rs` checks against real daemons.
//! [`catalog_json`] is the same catalogue as data, for other generated
//! documents (e.g. a future `pilotctl context`).
//!
//! `install` writes `SKILL.md` into the skill directory of the agent tools
//! the user names, with a marker file holding the SHA-256 of what was
//! written; a `SKILL.md` that differs from its marker (or has none) was
//! changed by someone else and is never overwritten without `--force`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::util::{CliError, CliResult};

/// Name of the skill (directory name and front-matter `name`).
pub const SKILL_NAME: &str = "pilot-protocol";

/// Marker written next to an installed `SKILL.md`.
pub const MARKER: &str = ".pilot-skill.json";

/// Top-level commands left out of the agent's reference (interactive or
/// for people: shell completions, the man page, the local demo network).
const NOT_FOR_AGENTS: &[&str] = &["completions", "man", "demo", "skill"];

/// One documented JSON output: `argv` is run as `pilotctl --json <argv>`
/// (`<peer>` = hostname of a trusted peer, `<node_id>` = its node id,
/// `<file>` = a file path); `output` is the `data` of the envelope.
#[derive(Clone, Copy, Debug)]
pub struct Example {
    /// Command path (`"info"`, `"gateway list"`).
    pub command: &'static str,
    /// Arguments after `pilotctl --json`.
    pub argv: &'static [&'static str],
    /// The `data` object printed on success.
    pub output: &'static str,
}

/// JSON examples of the commands an agent uses most.
pub const EXAMPLES: &[Example] = &[
    Example {
        command: "info",
        argv: &["info"],
        output: r#"{"address":"0:0000.0000.0002","hostname":"agent-a","node_id":2,"peers":1,"connections":0,"encrypt":true,"public_key":"YdG84EroMBsnqwSdF3riuCsw7owstbHzbid53k8M2ps=","uptime_secs":42.0}"#,
    },
    Example {
        command: "find",
        argv: &["find", "<peer>"],
        output: r#"{"address":"0:0000.0000.0001","hostname":"agent-b","node_id":1,"public":false}"#,
    },
    Example {
        command: "handshake",
        argv: &["handshake", "<node_id>", "please", "trust", "me"],
        output: r#"{"node_id":1,"status":"sent"}"#,
    },
    Example {
        command: "pending",
        argv: &["pending"],
        output: r#"{"outgoing":[],"pending":[{"justification":"please trust me","node_id":2,"public_key":"","received_at":1796300040}]}"#,
    },
    Example {
        command: "approve",
        argv: &["approve", "<node_id>"],
        output: r#"{"node_id":2,"status":"approved"}"#,
    },
    Example {
        command: "trust",
        argv: &["trust"],
        output: r#"{"trusted":[{"approved_at":1796300041,"mutual":true,"network":0,"node_id":1,"public_key":"kNfU/RQjpGxk2Fp16p9z4qXzPSN3ScBmSnI05M3QbS8="}]}"#,
    },
    Example {
        command: "ping",
        argv: &["ping", "<peer>", "--count", "1"],
        output: r#"{"results":[{"bytes":6,"rtt_ms":0.61,"seq":0}],"target":"agent-b","timeout":false}"#,
    },
    Example {
        command: "send-message",
        argv: &["send-message", "<peer>", "--data", "hello"],
        output: r#"{"ack":"ACK TEXT 5 bytes","bytes":5,"target":"agent-b","type":"text"}"#,
    },
    Example {
        command: "send-file",
        argv: &["send-file", "<peer>", "<file>"],
        output: r#"{"ack":"ACK FILE 6 bytes","bytes":6,"destination":"0:0000.0000.0001","filename":"report.txt"}"#,
    },
    Example {
        command: "subscribe",
        argv: &[
            "subscribe",
            "<peer>",
            "news",
            "--count",
            "1",
            "--timeout",
            "60s",
        ],
        output: r#"{"events":[{"bytes":5,"data":"hello","topic":"news"}],"timeout":false}"#,
    },
    Example {
        command: "publish",
        argv: &["publish", "<peer>", "news", "--data", "hello"],
        output: r#"{"bytes":5,"delivered":true,"target":"agent-b","topic":"news"}"#,
    },
    Example {
        command: "peers",
        argv: &["peers"],
        output: r#"{"peers":[{"authenticated":true,"direct_confirmed":true,"encrypted":true,"endpoint":"127.0.0.1:52909","node_id":1,"path":"direct","path_changed_secs_ago":12,"path_changes":1,"srtt_ms":0.412}],"total":1}"#,
    },
    Example {
        command: "connections",
        argv: &["connections"],
        output: r#"{"connections":[{"bytes_recv":10,"bytes_sent":15,"cong_win":40975,"dup_acks":0,"fast_retx":0,"id":2147483653,"in_flight":0,"in_recovery":false,"local_port":1002,"mss_reductions":0,"ooo_buf":0,"path_mtu":1222,"peer_recv_win":589824,"recv_win":589824,"remote_addr":"0:0000.0000.0002","remote_port":49153,"retransmits":0,"rttvar_ms":0.754,"sack_recv":0,"sack_sent":0,"segment_size":1152,"segs_recv":5,"segs_sent":4,"srtt_ms":1.508,"ssthresh":524288,"state":"ESTABLISHED","unacked":0}],"total":1}"#,
    },
];

/// Error codes of the envelope `{"code","message","hint"?,"status":"error"}`
/// and what an agent should do about each.
pub const ERROR_CODES: &[(&str, &str)] = &[
    (
        "not_running",
        "no daemon answers on the socket: run `pilotctl daemon start`",
    ),
    (
        "not_found",
        "unknown hostname, node, connection or mapping; for a hostname of a private node, establish trust first",
    ),
    (
        "not_trusted",
        "the peer is private and has not approved you: `pilotctl handshake <peer> \"reason\"`, then wait for `pilotctl trust` to list it",
    ),
    (
        "peer_offline",
        "the peer is registered but does not answer; retry later",
    ),
    (
        "registry_unreachable",
        "the daemon cannot reach its registry; check `pilotctl daemon status`",
    ),
    (
        "connection_failed",
        "the stream could not be opened or broke; the message says why",
    ),
    (
        "timeout",
        "nothing within the deadline; raise `--timeout` or retry",
    ),
    (
        "invalid_argument",
        "bad arguments (the message names which); fix the call, do not retry as is",
    ),
    (
        "already_exists",
        "the daemon (or gateway) is already running, or a file would be overwritten",
    ),
    (
        "permission_denied",
        "needs root or a capability (the gateway); the hint says how",
    ),
    (
        "refused",
        "the peer refused (a closed port, a full service, a declined request); the message says which",
    ),
    (
        "trust_pending",
        "your trust request waits for the peer's approval; poll `pilotctl trust`",
    ),
    (
        "invalid_state",
        "a task is not in the status the command needs (e.g. execute before accept); `pilotctl task list`",
    ),
    (
        "expired",
        "a task older than a minute can no longer be accepted",
    ),
    ("internal", "anything else; the message has the details"),
];

/// A recipe: a title and command lines with what each does.
pub struct Recipe {
    /// What the recipe achieves.
    pub title: &'static str,
    /// `(command line, explanation)` steps.
    pub steps: &'static [(&'static str, &'static str)],
}

/// Task-oriented sequences of commands.
pub const RECIPES: &[Recipe] = &[
    Recipe {
        title: "Check that Pilot is up",
        steps: &[
            (
                "pilotctl --json daemon status",
                "is the daemon running and registered?",
            ),
            (
                "pilotctl --json daemon start --hostname <name>",
                "start it if not (once per machine)",
            ),
            ("pilotctl --json info", "your own address and node id"),
        ],
    },
    Recipe {
        title: "Find a peer",
        steps: &[
            (
                "pilotctl --json find <hostname>",
                "hostname → address and node id (private peers: only after mutual trust)",
            ),
            (
                "pilotctl --json ping <hostname> --count 1",
                "is it reachable? `rtt_ms` per reply",
            ),
        ],
    },
    Recipe {
        title: "Establish trust with a private peer",
        steps: &[
            (
                "pilotctl --json handshake <node_id> \"why you want to talk\"",
                "ask; the peer sees the justification",
            ),
            (
                "pilotctl --json pending",
                "(on the peer) requests waiting for approval",
            ),
            ("pilotctl --json approve <node_id>", "(on the peer) approve"),
            (
                "pilotctl --json trust",
                "poll until the peer is listed with \"mutual\": true",
            ),
        ],
    },
    Recipe {
        title: "Send a message",
        steps: &[(
            "pilotctl --json send-message <peer> --data \"text\" --type text",
            "delivered to the peer's inbox once `ack` is present (type text, json or binary)",
        )],
    },
    Recipe {
        title: "Send a file",
        steps: &[(
            "pilotctl --json send-file <peer> ./report.pdf",
            "succeeds only when the receiver acknowledged the whole file (≤ 64 MiB)",
        )],
    },
    Recipe {
        title: "Subscribe and publish",
        steps: &[
            (
                "pilotctl --json subscribe <peer> <topic> --count 1 --timeout 60s",
                "wait for one event on the peer's broker (`*` = all topics; --count 0 streams NDJSON lines)",
            ),
            (
                "pilotctl --json publish <peer> <topic> --data \"payload\"",
                "publish on the peer's broker (needs mutual trust)",
            ),
        ],
    },
    Recipe {
        title: "Hand a peer a task, or do one",
        steps: &[
            (
                "pilotctl --json task submit <peer> --task \"what to do\"",
                "the peer must have run `pilotctl enable-tasks`; keep `task_id`",
            ),
            (
                "pilotctl --json task queue",
                "(receiver) tasks waiting; then `task accept --id <task_id>` within a minute",
            ),
            (
                "pilotctl --json task execute",
                "(receiver) start the oldest accepted task; do the work",
            ),
            (
                "pilotctl --json task send-results --id <task_id> --results \"…\"",
                "(receiver) or --file <path>; the submitter's copy becomes COMPLETED",
            ),
            (
                "pilotctl --json task list --type submitted",
                "(submitter) poll for status COMPLETED; results are in <dir>/tasks/results/",
            ),
        ],
    },
    Recipe {
        title: "Reach a peer's web service with ordinary tools",
        steps: &[
            (
                "sudo pilotctl --json gateway start --ports 80 <peer>",
                "maps the peer to a local IP (10.4.0.1 first); needs root or CAP_NET_ADMIN",
            ),
            (
                "pilotctl --json gateway list",
                "the mappings; then e.g. curl http://10.4.0.1/",
            ),
            ("pilotctl --json gateway stop", "remove everything"),
        ],
    },
];

/// One argument of a command, as clap defines it.
#[derive(Clone, Debug)]
pub struct ArgDoc {
    /// `<NAME>`, `[NAME]…` or `--flag <VALUE>`.
    pub syntax: String,
    /// Help text.
    pub help: String,
    /// Default value(s), if any.
    pub default: Option<String>,
    /// Whether it must be given.
    pub required: bool,
}

/// One leaf command.
#[derive(Clone, Debug)]
pub struct CommandDoc {
    /// Sub-command path (`["gateway","map"]`).
    pub path: Vec<String>,
    /// One-paragraph description.
    pub about: String,
    /// Its arguments (global flags excluded).
    pub args: Vec<ArgDoc>,
}

impl CommandDoc {
    /// `pilotctl --json <path> <positionals>`.
    pub fn usage(&self) -> String {
        let mut s = format!("pilotctl --json {}", self.path.join(" "));
        for a in self.args.iter().filter(|a| !a.syntax.starts_with('-')) {
            s.push(' ');
            s.push_str(&a.syntax);
        }
        if self.args.iter().any(|a| a.syntax.starts_with('-')) {
            s.push_str(" [OPTIONS]");
        }
        s
    }
}

fn arg_doc(a: &clap::Arg) -> ArgDoc {
    let name = a.get_id().as_str().to_uppercase().replace('-', "_");
    let value = a
        .get_value_names()
        .and_then(|v| v.first().map(|s| s.to_string()))
        .unwrap_or(name.clone());
    let takes_value = a.get_action().takes_values();
    let multiple = matches!(a.get_action(), clap::ArgAction::Append)
        || a.get_num_args().is_some_and(|n| n.max_values() > 1);
    let syntax = match a.get_long() {
        Some(l) if takes_value => format!("--{l} <{value}>"),
        Some(l) => format!("--{l}"),
        None => {
            let dots = if multiple { "…" } else { "" };
            if a.is_required_set() {
                format!("<{name}>{dots}")
            } else {
                format!("[{name}]{dots}")
            }
        }
    };
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    ArgDoc {
        syntax,
        help: a
            .get_long_help()
            .or(a.get_help())
            .map(|h| h.to_string().replace('\n', " "))
            .unwrap_or_default(),
        default: (!defaults.is_empty()).then(|| defaults.join(",")),
        required: a.is_required_set(),
    }
}

fn walk(cmd: &clap::Command, path: &mut Vec<String>, out: &mut Vec<CommandDoc>) {
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    if subs.is_empty() {
        out.push(CommandDoc {
            path: path.clone(),
            about: cmd
                .get_long_about()
                .or(cmd.get_about())
                .map(|h| h.to_string().replace('\n', " "))
                .unwrap_or_default(),
            args: cmd
                .get_arguments()
                .filter(|a| !a.is_global_set() && !a.is_hide_set())
                .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
                .map(arg_doc)
                .collect(),
        });
        return;
    }
    for s in subs {
        path.push(s.get_name().to_owned());
        walk(s, path, out);
        path.pop();
    }
}

/// Every visible leaf command of `root` meant for agents, in definition
/// order.
pub fn catalog(root: &clap::Command) -> Vec<CommandDoc> {
    catalog_filtered(root, NOT_FOR_AGENTS)
}

/// Every visible leaf command of `root`, the ones for people included
/// (`pilotctl context`).
pub fn catalog_all(root: &clap::Command) -> Vec<CommandDoc> {
    catalog_filtered(root, &[])
}

fn catalog_filtered(root: &clap::Command, skip: &[&str]) -> Vec<CommandDoc> {
    let mut out = Vec::new();
    for s in root.get_subcommands().filter(|c| !c.is_hide_set()) {
        if skip.contains(&s.get_name()) {
            continue;
        }
        let mut path = vec![s.get_name().to_owned()];
        walk(s, &mut path, &mut out);
    }
    out
}

/// The catalogue, examples and error codes as JSON (for `skill show
/// --json` and other generated documents).
pub fn catalog_json(root: &clap::Command) -> Value {
    let commands: Vec<Value> = catalog(root)
        .iter()
        .map(|c| {
            json!({
                "command": c.path.join(" "),
                "about": c.about,
                "usage": c.usage(),
                "args": c.args.iter().map(|a| json!({
                    "syntax": a.syntax, "help": a.help, "default": a.default, "required": a.required,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let examples: Vec<Value> = EXAMPLES
        .iter()
        .map(|e| {
            json!({
                "command": e.command,
                "argv": e.argv,
                "output": serde_json::from_str::<Value>(e.output).unwrap_or(Value::Null),
            })
        })
        .collect();
    let errors: Vec<Value> = ERROR_CODES
        .iter()
        .map(|(c, m)| json!({"code": c, "meaning": m}))
        .collect();
    json!({"commands": commands, "examples": examples, "error_codes": errors})
}

fn pretty(s: &str) -> String {
    serde_json::from_str::<Value>(s)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| s.to_owned())
}

/// The whole `SKILL.md`.
pub fn render(root: &clap::Command) -> String {
    let mut m = String::new();
    m.push_str(&format!(
        "---\nname: {SKILL_NAME}\ndescription: Talk to other AI agents and machines over Pilot Protocol with `pilotctl --json`: find peers by hostname, establish trust, send messages and files, publish/subscribe to events, reach a peer's web service through the IP gateway. Use when a task mentions Pilot, pilotctl, a Pilot address (N:XXXX.XXXX.XXXX) or another agent to contact.\n---\n\n"
    ));
    m.push_str(&format!(
        "# Pilot Protocol through pilotctl\n\n\
Generated by `pilotctl skill show` (pilotctl {}) from the CLI's own definition; \
do not edit (re-run `pilotctl skill install` after upgrading).\n\n\
Pilot gives every node a virtual address (`N:XXXX.XXXX.XXXX`, e.g. `0:0000.0000.0007`), \
a node id (the last 32 bits, e.g. `7`) and optionally a hostname. A local daemon holds \
the identity and the encrypted tunnels; `pilotctl` talks to it. Wherever a command takes \
a `<TARGET>` you may give an address, a node id or a hostname.\n\n",
        env!("CARGO_PKG_VERSION")
    ));
    m.push_str(
        "## Always use `--json`\n\n\
* Success: exit code 0, one line on stdout: `{\"data\": {…}, \"status\": \"ok\"}`.\n\
* Failure: exit code 1, one line on stderr: `{\"code\": \"…\", \"message\": \"…\", \"hint\": \"…\", \"status\": \"error\"}` \
(`hint`, when present, is the next command to run).\n\
* Streaming commands (`subscribe`/`listen` with `--count 0`) print one JSON object per line instead; \
prefer a `--count` and a `--timeout`.\n\n\
### Error codes\n\n| code | meaning and what to do |\n|---|---|\n",
    );
    for (c, d) in ERROR_CODES {
        m.push_str(&format!("| `{c}` | {d} |\n"));
    }
    m.push_str("\n## Recipes\n\n");
    for r in RECIPES {
        m.push_str(&format!("### {}\n\n", r.title));
        for (cmd, what) in r.steps {
            m.push_str(&format!("* `{cmd}` — {what}\n"));
        }
        m.push('\n');
    }
    m.push_str("## Commands\n\n");
    for c in catalog(root) {
        let path = c.path.join(" ");
        m.push_str(&format!("### {path}\n\n{}\n\n`{}`\n\n", c.about, c.usage()));
        if !c.args.is_empty() {
            for a in &c.args {
                let req = if a.required { " (required)" } else { "" };
                let def = a
                    .default
                    .as_ref()
                    .map(|d| format!(" [default: {d}]"))
                    .unwrap_or_default();
                m.push_str(&format!("* `{}`{req} — {}{def}\n", a.syntax, a.help));
            }
            m.push('\n');
        }
        for e in EXAMPLES.iter().filter(|e| e.command == path) {
            m.push_str(&format!(
                "Example: `pilotctl --json {}` → `data`:\n\n```json\n{}\n```\n\n",
                e.argv.join(" "),
                pretty(e.output)
            ));
        }
    }
    m
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Agent tools whose skill directory `install` knows, relative to `$HOME`.
pub const TARGETS: &[(&str, &str)] = &[
    ("claude", ".claude/skills"),
    ("codex", ".codex/skills"),
    ("agents", ".agents/skills"),
];

/// `pilotctl skill …`.
#[derive(Args, Debug)]
pub struct SkillArgs {
    #[command(subcommand)]
    command: SkillCmd,
}

#[derive(Subcommand, Debug)]
enum SkillCmd {
    /// Print SKILL.md (with --json: the file plus the command catalogue)
    Show,
    /// Write SKILL.md into agent skill directories (only those named)
    Install {
        /// Agent tools: claude (~/.claude/skills), codex (~/.codex/skills),
        /// agents (~/.agents/skills)
        #[arg(long = "target", value_name = "TOOL")]
        targets: Vec<String>,
        /// A skills directory of your own (the skill goes into
        /// DIR/pilot-protocol/SKILL.md)
        #[arg(long = "dir", value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Overwrite a SKILL.md that was changed since pilotctl wrote it
        #[arg(long)]
        force: bool,
    },
    /// Show where the skill is installed and whether it is current
    Status {
        /// Also check this skills directory
        #[arg(long = "dir", value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from)
}

/// State of one install location.
fn state(file: &Path, current: &str) -> &'static str {
    let Ok(bytes) = std::fs::read(file) else {
        return "absent";
    };
    let have = sha256_hex(&bytes);
    let marker = file.with_file_name(MARKER);
    let written = std::fs::read(&marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["sha256"].as_str().map(str::to_owned));
    match written {
        Some(w) if w == have && have == current => "current",
        Some(w) if w == have => "outdated",
        _ => "modified",
    }
}

fn location(dir: &Path) -> PathBuf {
    dir.join(SKILL_NAME).join("SKILL.md")
}

/// Runs `pilotctl skill …`; `root` is the CLI definition.
pub fn run(args: SkillArgs, root: &clap::Command) -> CliResult<(Value, Option<String>)> {
    let md = render(root);
    let current = sha256_hex(md.as_bytes());
    match args.command {
        SkillCmd::Show => {
            let mut v = catalog_json(root);
            v["markdown"] = json!(md);
            v["sha256"] = json!(current);
            Ok((v, Some(md.trim_end().to_owned())))
        }
        SkillCmd::Status { dirs } => {
            let mut rows = Vec::new();
            for (tool, rel) in TARGETS {
                let f = location(&home().join(rel));
                rows.push(json!({"target": tool, "path": f.display().to_string(), "state": state(&f, &current)}));
            }
            for d in dirs {
                let f = location(&d);
                rows.push(json!({"target": "dir", "path": f.display().to_string(), "state": state(&f, &current)}));
            }
            let text = rows
                .iter()
                .map(|r| {
                    format!(
                        "{:<8} {:<9} {}",
                        r["target"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or(""),
                        r["path"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Ok((json!({"locations": rows, "sha256": current}), Some(text)))
        }
        SkillCmd::Install {
            targets,
            dirs,
            force,
        } => {
            if targets.is_empty() && dirs.is_empty() {
                return Err(CliError::invalid(
                    "say where to install: --target claude|codex|agents and/or --dir DIR",
                ));
            }
            let mut places = Vec::new();
            for t in &targets {
                let Some((_, rel)) = TARGETS.iter().find(|(n, _)| n == t) else {
                    return Err(CliError::invalid(format!(
                        "unknown target {t:?} (use claude, codex or agents, or --dir DIR)"
                    )));
                };
                places.push((t.clone(), home().join(rel)));
            }
            places.extend(dirs.into_iter().map(|d| ("dir".to_owned(), d)));
            // Check every place first: all or nothing.
            for (_, dir) in &places {
                let f = location(dir);
                if state(&f, &current) == "modified" && !force {
                    return Err(CliError::new(
                        "already_exists",
                        format!("{} was changed since pilotctl wrote it (or was not written by pilotctl)", f.display()),
                    )
                    .hint("keep it, or overwrite it with: pilotctl skill install --force …"));
                }
            }
            let mut done = Vec::new();
            for (tool, dir) in places {
                let f = location(&dir);
                let before = state(&f, &current);
                let io = |e: std::io::Error| {
                    CliError::new("internal", format!("write {}: {e}", f.display()))
                };
                if before != "current" {
                    if let Some(parent) = f.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    let tmp = f.with_extension("md.tmp");
                    std::fs::write(&tmp, md.as_bytes()).map_err(io)?;
                    std::fs::rename(&tmp, &f).map_err(io)?;
                    std::fs::write(
                        f.with_file_name(MARKER),
                        json!({"sha256": current, "version": env!("CARGO_PKG_VERSION")})
                            .to_string(),
                    )
                    .map_err(io)?;
                }
                done.push(json!({
                    "target": tool,
                    "path": f.display().to_string(),
                    "previous": before,
                    "written": before != "current",
                }));
            }
            let text = done
                .iter()
                .map(|d| {
                    format!(
                        "{} ({})",
                        d["path"].as_str().unwrap_or(""),
                        if d["written"] == true {
                            "written"
                        } else {
                            "already current"
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Ok((json!({"installed": done, "sha256": current}), Some(text)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_parse_and_name_catalogued_commands() {
        let root = crate::pilotctl::cli_command();
        let names: Vec<String> = catalog(&root).iter().map(|c| c.path.join(" ")).collect();
        for e in EXAMPLES {
            assert!(names.iter().any(|n| n == e.command), "{}", e.command);
            assert_eq!(e.argv[0], e.command.split(' ').next().unwrap());
            let v: Value = serde_json::from_str(e.output).expect(e.command);
            assert!(v.is_object());
        }
        // Hidden runners and people-only commands stay out.
        assert!(!names.iter().any(|n| n.starts_with('_') || n == "man"));
        assert!(names.iter().any(|n| n == "gateway map"));
    }

    #[test]
    fn rendering_is_deterministic_and_names_every_command() {
        let root = crate::pilotctl::cli_command();
        let md = render(&root);
        assert_eq!(md, render(&root));
        for c in catalog(&root) {
            assert!(md.contains(&format!("### {}\n", c.path.join(" "))));
        }
    }
}
