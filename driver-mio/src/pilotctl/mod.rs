//! `pilotctl`: the command-line client of the daemon.
//!
//! The observable behaviour follows the reference CLI
//! (`reference/daemon.md` §4): `--json` may appear anywhere on the line and
//! switches to the envelope `{"data":…,"status":"ok"}` on stdout or
//! `{"code","message"[,"hint"],"status":"error"}` on stderr; exit code 0 on
//! success, 1 on any error, 2 for a missing or unknown command without
//! `--json`. Address arguments accept a full virtual address, a decimal node
//! id or a hostname. `--socket` (or `PILOT_SOCKET`) chooses the daemon.
//!
//! The daemon and the rendezvous server run inside this same executable
//! (hidden sub-commands `_daemon-run` and `_rendezvous-run`), so
//! `daemon start` and `demo` need no other binary.

pub mod bootstrap;
pub mod context;
pub mod daemonctl;
pub mod demo;
pub mod gateway;
pub mod mailbox;
pub mod nameserver;
pub mod network;
pub mod ops;
pub mod runners;
pub mod secure;
pub mod service;
pub mod skill;
pub mod tasks;
pub mod util;
pub mod webhook;

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::ipc_client::{IpcClient, IpcClientError, socket_path};
use util::{CliError, CliResult, parse_duration, parse_node_id, resolve_target};

/// Pilot Protocol control tool: talks to the local daemon over its IPC
/// socket. Add --json anywhere for machine-readable output.
#[derive(Parser, Debug)]
#[command(name = "pilotctl", version, disable_help_subcommand = true)]
struct Cli {
    /// IPC socket of the daemon [env: PILOT_SOCKET; default: /tmp/pilot.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Machine-readable output: {"data":…,"status":"ok"} on stdout, or
    /// {"code","message","hint","status":"error"} on stderr (anywhere on
    /// the line)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start, stop or inspect the background daemon
    Daemon {
        #[command(subcommand)]
        command: DaemonCmd,
    },
    /// Show the daemon's status (address, peers, connections, …)
    Info,
    /// Claim a hostname other nodes can resolve
    SetHostname {
        /// The hostname
        hostname: String,
    },
    /// Remove the hostname
    ClearHostname,
    /// Resolve a hostname (needs mutual trust for private nodes)
    Find {
        /// The hostname
        hostname: String,
    },
    /// Make this node resolvable by everyone
    SetPublic,
    /// Make this node resolvable only by trusted peers (default)
    SetPrivate,
    /// Set up to 3 tags
    SetTags {
        /// Tags
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Remove all tags
    ClearTags,
    /// Remove this node from the registry (the daemon keeps running)
    Deregister,
    /// Replace this node's identity key with a new one, signed by the old
    /// (same node ID, address, trust and open streams)
    RotateKey,
    /// Round trips through the peer's echo service (port 7)
    Ping {
        /// Address, node id or hostname
        target: String,
        /// Number of pings
        #[arg(long, default_value_t = 4)]
        count: u32,
        /// Overall deadline
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Pause between pings
        #[arg(long, default_value = "1s", value_parser = parse_duration, hide = true)]
        interval: Duration,
    },
    /// Time the stream setup and three round trips to port 7
    Traceroute {
        /// Full virtual address
        address: String,
        /// Deadline
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Throughput through the peer's echo service
    Bench {
        /// Address, node id or hostname
        target: String,
        /// Megabytes (MiB) to send
        #[arg(default_value_t = 1.0)]
        size_mb: f64,
        /// Deadline
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Open a stream, send a message (or stdin), print one reply
    Connect {
        /// Address, node id or hostname
        target: String,
        /// Port
        #[arg(default_value_t = 1000)]
        port: u16,
        /// Message to send (default: stdin)
        #[arg(long)]
        message: Option<String>,
        /// How long to wait for the reply
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Use the secure channel (X25519 + AES-256-GCM records, usually
        /// port 443) inside the stream
        #[arg(long)]
        secure: bool,
        /// With --secure: the v1.8 ("legacy") key derivation
        #[arg(long, requires = "secure")]
        secure_legacy: bool,
    },
    /// Send data on a stream port and print one reply
    Send {
        /// Address, node id or hostname
        target: String,
        /// Port
        port: u16,
        /// Data to send
        #[arg(long)]
        data: String,
        /// How long to wait for the reply
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Bind a port and receive one read from each of COUNT streams
    Recv {
        /// Port
        port: u16,
        /// Streams to accept
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Deadline
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Send a message to the peer's inbox (data exchange, port 1001)
    SendMessage {
        /// Address, node id or hostname
        target: String,
        /// Message
        #[arg(long)]
        data: String,
        /// text, json or binary
        #[arg(long = "type", default_value = "text")]
        kind: String,
        /// How long to wait for the acknowledgement
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Send a file to the peer's received/ directory (data exchange, port
    /// 1001). One frame: at most 64 MiB less 263 bytes. Succeeds only once
    /// the receiver acknowledges it.
    SendFile {
        /// Address, node id or hostname
        target: String,
        /// File to send
        path: PathBuf,
        /// How long to wait for the acknowledgement
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Publish one event on the peer's event stream (port 1002); succeeds
    /// once the broker passes it on (needs mutual trust)
    Publish {
        /// Address, node id or hostname
        target: String,
        /// Topic
        topic: String,
        /// Payload
        #[arg(long)]
        data: String,
        /// Overall deadline
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Subscribe to a topic (`*` = all) on the peer's event stream
    Subscribe {
        /// Address, node id or hostname
        target: String,
        /// Topic
        topic: String,
        /// Events to collect (0 = stream them forever as NDJSON)
        #[arg(long, default_value_t = 0)]
        count: u32,
        /// Deadline (0 = none)
        #[arg(long, default_value = "0", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print datagrams arriving on a port
    Listen {
        /// Port
        port: u16,
        /// Datagrams to collect (0 = stream them forever as NDJSON)
        #[arg(long, default_value_t = 0)]
        count: u32,
        /// Deadline (0 = none)
        #[arg(long, default_value = "0", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// List the files received by data exchange (local files, no daemon
    /// needed). Each is kept under the sender's file name in
    /// <dir>/received/; when that name is taken, `-1`, `-2`, … go before
    /// the extension (`a.tar.gz` → `a.tar-1.gz`), nothing is overwritten.
    /// The sender is recorded in <dir>/received.jsonl. Quota 2 GiB.
    Received {
        /// Remove every received file (and the sender records)
        #[arg(long)]
        clear: bool,
        /// State directory [env: PILOT_HOME; default: ~/.pilot]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the messages received by data exchange (send-message), one
    /// JSON file each in <dir>/inbox/ named <TYPE>-<YYYYMMDD-HHMMSS.mmm>.json
    /// (local files, no daemon needed). Quota 256 MiB.
    Inbox {
        /// Remove every message
        #[arg(long)]
        clear: bool,
        /// State directory [env: PILOT_HOME; default: ~/.pilot]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the daemon's streams
    Connections,
    /// List tunnel peers
    Peers {
        /// Substring of node id or endpoint
        #[arg(long)]
        search: Option<String>,
    },
    /// Close a stream by id
    Disconnect {
        /// Connection id
        conn_id: u32,
    },
    /// Ask a node to trust this one
    Handshake {
        /// Node id, address or hostname
        target: String,
        /// Justification shown to the peer
        justification: Vec<String>,
    },
    /// List trust requests waiting for approval
    Pending,
    /// Approve a pending trust request
    Approve {
        /// Node id
        node_id: String,
    },
    /// Reject a pending trust request
    Reject {
        /// Node id
        node_id: String,
        /// Reason shown to the peer
        reason: Vec<String>,
    },
    /// List trusted peers
    Trust,
    /// Revoke trust in a node
    Untrust {
        /// Node id
        node_id: String,
    },
    /// Write config.json in the state directory (registry, beacon, socket,
    /// hostname); keeps the keys already there that are not given
    Init {
        /// Registry HOST:PORT [default: 127.0.0.1:9000]
        #[arg(long)]
        registry: Option<String>,
        /// Beacon HOST:PORT [default: 127.0.0.1:9001]
        #[arg(long)]
        beacon: Option<String>,
        /// Hostname `daemon start` claims
        #[arg(long)]
        hostname: Option<String>,
        /// State directory [env: PILOT_HOME; default: ~/.pilot]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show config.json (with the effective registry and socket), or store
    /// one string with --set KEY=VALUE
    Config {
        /// KEY=VALUE to store
        #[arg(long, value_name = "KEY=VALUE")]
        set: Option<String>,
        /// State directory [env: PILOT_HOME; default: ~/.pilot]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Machine-readable catalogue of every command: arguments, outputs,
    /// error codes (generated from this CLI's own definition)
    Context,
    /// Ask the registry directly for a node's record (key, visibility,
    /// address)
    Lookup {
        /// Node id (or full address)
        node_id: String,
        /// Registry HOST:PORT [env: PILOT_REGISTRY; config key registry;
        /// default: 127.0.0.1:9000]
        #[arg(long)]
        registry: Option<String>,
        /// Deadline
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// The daemon's health counters (answered even when it is busy)
    Health,
    /// pilotctl's version, and the running daemon's
    Version,
    /// Forget a peer's cached endpoint and relay and resolve it again,
    /// preferring a direct path
    PreferDirect {
        /// Address, node id or hostname
        target: String,
    },
    /// Tasks on port 1003: submit, accept, decline, execute, send-results,
    /// list, queue (files in <dir>/tasks/; --dir or PILOT_HOME)
    Task(tasks::TaskArgs),
    /// POST the daemon's events as JSON to URL (http:// or https://; kept
    /// in config.json, applied to the running daemon)
    SetWebhook {
        /// The URL
        url: String,
        /// State directory [env: PILOT_HOME; default: ~/.pilot]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Stop posting events (removes the URL from config.json too)
    ClearWebhook {
        /// State directory [env: PILOT_HOME; default: ~/.pilot]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Let peers submit tasks to this node (kept across daemon restarts)
    EnableTasks,
    /// Refuse task submissions (the default; kept across daemon restarts)
    DisableTasks,
    /// Run a complete local network (rendezvous + two daemons) and exercise it
    Demo(demo::DemoArgs),
    /// IP gateway: reach peers' services from ordinary TCP clients through
    /// local IPs (start|stop|map|unmap|list)
    Gateway(gateway::GatewayArgs),
    /// Networks: list|create|delete|rename|join|leave|members|invite|
    /// invites|accept|reject|kick|promote|demote|transfer|role
    Network(network::NetworkArgs),
    /// Managed networks: status, policy-get|policy-set|policy-validate,
    /// member tags
    Managed(network::ManagedArgs),
    /// Send one datagram to every other member of a network (needs the
    /// daemon's admin token)
    Broadcast(network::BroadcastArgs),
    /// The agent skill file (SKILL.md) teaching an LLM agent to use
    /// pilotctl --json: show, install, status
    Skill(skill::SkillArgs),
    /// The Pilot nameserver (port 53): serve it on this daemon, query or
    /// register records
    Nameserver(nameserver::NsArgs),
    /// Print a shell completion script (e.g. `pilotctl completions bash >
    /// ~/.local/share/bash-completion/completions/pilotctl`)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print the pilotctl(1) man page (roff; `pilotctl man | man -l -`)
    Man,
    #[command(name = "_daemon-run", hide = true)]
    DaemonRun {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    #[command(name = "_rendezvous-run", hide = true)]
    RendezvousRun {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Subcommand, Debug)]
enum DaemonCmd {
    /// Start the daemon in the background
    Start(Box<StartArgs>),
    /// Stop the daemon started with `daemon start`
    Stop {
        /// State directory [env: PILOT_HOME; default: ~/.pilot]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also stop the local rendezvous this directory's `daemon start`
        /// ran (other local daemons lose their registry)
        #[arg(long)]
        rendezvous: bool,
    },
    /// Write a systemd unit for the daemon (user or system; prints the
    /// systemctl commands to enable it). A unit that differs is kept
    /// unless --force.
    InstallService(service::InstallArgs),
    /// Is the daemon running and answering?
    Status {
        /// Print nothing; exit 0 if the daemon answers, else 1
        #[arg(long)]
        check: bool,
        /// State directory [env: PILOT_HOME; default: ~/.pilot]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct StartArgs {
    /// State directory [env: PILOT_HOME; default: ~/.pilot]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run in this process until SIGINT/SIGTERM (no PID file)
    #[arg(long)]
    foreground: bool,
    /// Registry HOST:PORT [default: 127.0.0.1:9000]
    #[arg(long)]
    registry: Option<String>,
    /// Beacon HOST:PORT [default: 127.0.0.1:9001]
    #[arg(long)]
    beacon: Option<String>,
    /// Tunnel UDP IP:PORT [default: 127.0.0.1:0]
    #[arg(long)]
    listen: Option<String>,
    /// Identity file
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Owner (e-mail) string
    #[arg(long, alias = "email")]
    owner: Option<String>,
    /// Hostname to claim at start
    #[arg(long)]
    hostname: Option<String>,
    /// Log level
    #[arg(long)]
    log_level: Option<String>,
    /// Log format (text or json)
    #[arg(long)]
    log_format: Option<String>,
    /// Daemon config file
    #[arg(long)]
    config: Option<PathBuf>,
    /// Make the node public
    #[arg(long)]
    public: bool,
    /// Disable tunnel encryption
    #[arg(long)]
    no_encrypt: bool,
    /// Keepalive and registry heartbeat period (e.g. 30s, 1s, 500ms)
    #[arg(long, value_name = "DURATION")]
    keepalive: Option<String>,
    /// Speak the legacy ("v1.8") wire profile
    #[arg(long)]
    legacy: bool,
}

impl StartArgs {
    fn forward(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        let mut opt = |k: &str, val: Option<OsString>| {
            if let Some(val) = val {
                v.push(format!("--{k}").into());
                v.push(val);
            }
        };
        opt("listen", self.listen.clone().map(Into::into));
        opt("identity", self.identity.clone().map(Into::into));
        opt("owner", self.owner.clone().map(Into::into));
        opt("hostname", self.hostname.clone().map(Into::into));
        opt("log-level", self.log_level.clone().map(Into::into));
        opt("log-format", self.log_format.clone().map(Into::into));
        opt("config", self.config.clone().map(Into::into));
        opt("keepalive", self.keepalive.clone().map(Into::into));
        if self.legacy {
            v.push("--legacy".into());
        }
        if self.public {
            v.push("--public".into());
        }
        if self.no_encrypt {
            v.push("--no-encrypt".into());
        }
        v
    }
}

/// The CLI's clap definition (for generated documents: `skill`, man
/// page, completions).
pub fn cli_command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// How the result of a command is shown.
enum Output {
    /// A result object; `text` is the friendly human form, if any.
    Data { data: Value, text: Option<String> },
    /// Already printed (streaming commands, `daemon status --check`).
    Done(ExitCode),
}

/// A list: JSON as is, a table for people.
fn listing(v: Value, text: String) -> CliResult<Output> {
    Ok(Output::Data {
        data: v,
        text: Some(text),
    })
}

fn data(v: Value) -> CliResult<Output> {
    Ok(Output::Data {
        data: v,
        text: None,
    })
}

/// Runs `pilotctl` with `args` (program name first) and returns the exit
/// code.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    // Hidden runners take their arguments verbatim.
    if let Some(first) = args.get(1).and_then(|a| a.to_str()) {
        match first {
            "_daemon-run" => return runners::daemon_run(&args[2..]),
            "_rendezvous-run" => return runners::rendezvous_run(&args[2..]),
            "_gateway-run" => return gateway::gateway_run(&args[2..]),
            _ => {}
        }
    }
    let json_mode = args.iter().skip(1).any(|a| a == "--json");
    let args: Vec<OsString> = args
        .into_iter()
        .enumerate()
        .filter(|(i, a)| *i == 0 || a != "--json")
        .map(|(_, a)| a)
        .collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, json_mode),
    };
    let Some(command) = cli.command else {
        if json_mode {
            print_error(
                &CliError::invalid("no command given (see pilotctl --help)"),
                true,
            );
            return ExitCode::from(1);
        }
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let _ = cmd.write_help(&mut std::io::stderr());
        return ExitCode::from(2);
    };
    let json_mode = json_mode || cli.json;
    // Flag, then PILOT_SOCKET, then config.json's `socket`, then the default.
    let env_socket = std::env::var_os("PILOT_SOCKET").filter(|v| !v.is_empty());
    let socket = match (&cli.socket, env_socket) {
        (None, None) => bootstrap::configured(&daemonctl::state_dir(None), "socket")
            .map(PathBuf::from)
            .unwrap_or_else(|| socket_path(None)),
        (given, _) => socket_path(given.as_deref()),
    };
    let explicit = cli.socket.clone();
    match run_command(command, &socket, explicit.as_deref(), json_mode) {
        Ok(Output::Done(code)) => code,
        Ok(Output::Data { mut data, text }) => {
            round_floats(&mut data);
            let out = if json_mode {
                json!({"data": data, "status": "ok"}).to_string()
            } else if let Some(t) = text {
                t
            } else {
                serde_json::to_string_pretty(&data).unwrap_or_default()
            };
            write_stdout(&out)
        }
        Err(e) => {
            // A trust request already waiting turns "not trusted" into
            // "trust pending", with the next step.
            let e = match e.code {
                "not_trusted" => match connect_within(&socket, Duration::from_secs(3)) {
                    Ok(c) => util::trust_pending(e, &c),
                    Err(_) => e,
                },
                _ => e,
            };
            print_error(&e, json_mode);
            ExitCode::from(1)
        }
    }
}

/// Writes a command's result and a newline to stdout. A reader that went
/// away early (`pilotctl skill show | head`) is not an error of ours: the
/// command ran, so it exits 0 quietly instead of panicking as `println!`
/// does on a broken pipe; any other write error exits 1 with a message.
fn write_stdout(text: &str) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the result to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage_error(e: clap::Error, json_mode: bool) -> ExitCode {
    use clap::error::ErrorKind as K;
    match e.kind() {
        K::DisplayHelp | K::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    if json_mode {
        let rendered = e.render().to_string();
        let msg = rendered
            .lines()
            .take_while(|l| !l.starts_with("Usage:"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
            .trim_start_matches("error: ")
            .to_owned();
        print_error(&CliError::invalid(msg), true);
        return ExitCode::from(1);
    }
    let _ = e.print();
    match e.kind() {
        K::InvalidSubcommand
        | K::MissingSubcommand
        | K::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

fn print_error(e: &CliError, json_mode: bool) {
    if json_mode {
        let mut v = json!({"code": e.code, "message": e.message, "status": "error"});
        if let Some(h) = &e.hint {
            v["hint"] = json!(h);
        }
        eprintln!("{v}");
    } else {
        eprintln!("error: {}", e.message);
        if let Some(h) = &e.hint {
            eprintln!("hint:  {h}");
        }
    }
}

/// Rounds every non-integer number to 3 decimals (milliseconds to the
/// microsecond, MiB/s to the KiB/s): `2205.3938749999998` → `2205.394`.
pub(crate) fn round_floats(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                let r = (f * 1000.0).round() / 1000.0;
                if let Some(x) = serde_json::Number::from_f64(r) {
                    *n = x;
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(round_floats),
        Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// Prints one NDJSON line (streaming commands) and flushes.
fn ndjson(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn connect(socket: &std::path::Path) -> CliResult<IpcClient> {
    IpcClient::connect(socket).map_err(|e| CliError::ipc(e, "internal"))
}

/// Connects for a command with an overall deadline of `timeout`: its
/// requests to the daemon (hostname resolution included) end by then.
fn connect_within(socket: &std::path::Path, timeout: Duration) -> CliResult<IpcClient> {
    let mut c = connect(socket)?;
    if !timeout.is_zero() {
        c.set_timeout(timeout);
    }
    Ok(c)
}

fn run_command(
    cmd: Cmd,
    socket: &std::path::Path,
    explicit_socket: Option<&std::path::Path>,
    json_mode: bool,
) -> CliResult<Output> {
    let quiet = json_mode;
    match cmd {
        Cmd::DaemonRun { .. } | Cmd::RendezvousRun { .. } => {
            Err(CliError::invalid("internal command"))
        }
        Cmd::Demo(args) => Ok(Output::Done(demo::run(&args, json_mode))),
        Cmd::Gateway(args) => Ok(match gateway::run(args, socket, json_mode)? {
            gateway::GwOutput::Data(data, text) => Output::Data { data, text },
            gateway::GwOutput::Done(code) => Output::Done(code),
        }),
        Cmd::Nameserver(args) => Ok(match nameserver::run(args, socket, quiet)? {
            nameserver::NsOutput::Data(data, text) => Output::Data { data, text },
            nameserver::NsOutput::Done(code) => Output::Done(code),
        }),
        Cmd::Skill(args) => {
            let (data, text) = skill::run(args, &cli_command())?;
            Ok(Output::Data { data, text })
        }
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "pilotctl", &mut std::io::stdout());
            Ok(Output::Done(ExitCode::SUCCESS))
        }
        Cmd::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(|e| CliError::new("internal", format!("man page: {e}")))?;
            Ok(Output::Done(ExitCode::SUCCESS))
        }
        Cmd::Daemon { command } => daemon_cmd(command, socket),
        Cmd::Network(args) => {
            let (data, text) = network::run_network(args, &connect(socket)?)?;
            Ok(Output::Data {
                data,
                text: Some(text),
            })
        }
        Cmd::Managed(args) => {
            let (data, text) = network::run_managed(args, || connect(socket))?;
            Ok(Output::Data {
                data,
                text: Some(text),
            })
        }
        Cmd::Broadcast(args) => {
            let (data, text) = network::run_broadcast(args, &connect(socket)?)?;
            Ok(Output::Data {
                data,
                text: Some(text),
            })
        }
        Cmd::Init {
            registry,
            beacon,
            hostname,
            dir,
        } => {
            let opts = bootstrap::InitOptions {
                registry,
                beacon,
                hostname,
                socket: explicit_socket.map(std::path::Path::to_path_buf),
            };
            let (v, text) = bootstrap::init(&daemonctl::state_dir(dir.as_deref()), &opts)?;
            listing(v, text)
        }
        Cmd::Config { set, dir } => {
            let dir = daemonctl::state_dir(dir.as_deref());
            match set {
                Some(kv) => data(bootstrap::set(&dir, &kv)?),
                None => data(bootstrap::show(&dir, socket)?),
            }
        }
        Cmd::Context => {
            let v = context::context(&cli_command());
            let text = context::context_text(&v);
            listing(v, text)
        }
        Cmd::Lookup {
            node_id,
            registry,
            timeout,
        } => {
            let node = parse_node_id(&node_id)?;
            let addr = bootstrap::registry_addr(registry.as_deref(), &daemonctl::state_dir(None))?;
            let v = bootstrap::lookup(addr, node, timeout)?;
            let text = bootstrap::lookup_text(&v);
            listing(v, text)
        }
        Cmd::Task(args) => {
            let (data, text) = tasks::run(args, socket, quiet)?;
            Ok(Output::Data { data, text })
        }
        Cmd::SetWebhook { url, dir } => {
            if url.is_empty() {
                return Err(CliError::invalid("empty URL (use clear-webhook)"));
            }
            data(webhook::set(
                &daemonctl::state_dir(dir.as_deref()),
                socket,
                &url,
            )?)
        }
        Cmd::ClearWebhook { dir } => data(webhook::set(
            &daemonctl::state_dir(dir.as_deref()),
            socket,
            "",
        )?),
        Cmd::EnableTasks => data(tasks::set_exec(socket, true)?),
        Cmd::DisableTasks => data(tasks::set_exec(socket, false)?),
        Cmd::Health => {
            let c = connect(socket)?;
            let (v, text) = bootstrap::health(&c)?;
            listing(v, text)
        }
        Cmd::Version => {
            let (v, text) = bootstrap::version(socket);
            listing(v, text)
        }
        Cmd::PreferDirect { target } => {
            let c = connect(socket)?;
            let node = match parse_node_id(&target) {
                Ok(n) => n,
                Err(_) => resolve_target(&c, &target, quiet)?.addr.node,
            };
            data(bootstrap::prefer_direct(&c, node)?)
        }
        Cmd::Info => {
            let c = connect(socket)?;
            let info = c.info().map_err(|e| CliError::ipc(e, "internal"))?;
            data(info)
        }
        Cmd::SetHostname { hostname } => {
            let c = connect(socket)?;
            let r = c
                .set_hostname(&hostname)
                .map_err(|e| CliError::ipc(e, "internal"))?;
            let node_id = match r.get("node_id") {
                Some(n) => n.clone(),
                None => c
                    .info()
                    .ok()
                    .and_then(|i| i.get("node_id").cloned())
                    .unwrap_or(Value::Null),
            };
            data(json!({"hostname": hostname, "node_id": node_id}))
        }
        Cmd::ClearHostname => {
            let c = connect(socket)?;
            c.set_hostname("")
                .map_err(|e| CliError::ipc(e, "internal"))?;
            data(json!({"hostname": ""}))
        }
        Cmd::Find { hostname } => {
            let c = connect(socket)?;
            let not_found = || {
                CliError::new(
                    "not_found",
                    format!("cannot find {hostname:?} — hostname not found or no mutual trust"),
                )
                .hint(format!(
                    "establish trust first: pilotctl handshake {hostname} \"reason\""
                ))
            };
            let r = match c.resolve_hostname(&hostname) {
                Ok(r) => r,
                Err(IpcClientError::Daemon(m)) if m.contains("registry unreachable") => {
                    return Err(util::cause(&format!("find {hostname:?}"), 0, &m));
                }
                Err(IpcClientError::Daemon(_)) => return Err(not_found()),
                Err(e) => return Err(CliError::ipc(e, "not_found")),
            };
            if r.get("address").is_none() {
                return Err(not_found());
            }
            let mut out = json!({});
            for k in ["address", "hostname", "node_id", "public"] {
                if let Some(v) = r.get(k) {
                    out[k] = v.clone();
                }
            }
            data(out)
        }
        Cmd::SetPublic | Cmd::SetPrivate => {
            let public = matches!(cmd, Cmd::SetPublic);
            let c = connect(socket)?;
            data(
                c.set_visibility(public)
                    .map_err(|e| CliError::ipc(e, "internal"))?,
            )
        }
        Cmd::SetTags { tags } => {
            if tags.len() > pilot_proto::wire::ipc::MAX_TAGS {
                return Err(CliError::invalid("at most 3 tags are allowed"));
            }
            let c = connect(socket)?;
            let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
            let r = c
                .set_tags(&refs)
                .map_err(|e| CliError::ipc(e, "internal"))?;
            let node_id = r.get("node_id").cloned().unwrap_or(Value::Null);
            data(json!({"node_id": node_id, "tags": tags}))
        }
        Cmd::ClearTags => {
            let c = connect(socket)?;
            c.set_tags(&[]).map_err(|e| CliError::ipc(e, "internal"))?;
            data(json!({"tags": []}))
        }
        Cmd::Deregister => {
            let c = connect(socket)?;
            data(c.deregister().map_err(|e| CliError::ipc(e, "internal"))?)
        }
        Cmd::RotateKey => {
            let c = connect(socket)?;
            let v = c.rotate_key().map_err(ops::rotate_key_error)?;
            let mut text = format!(
                "identity key rotated\n  node:        {}\n  address:     {}\n  public key:  {}",
                v["node_id"],
                v["address"].as_str().unwrap_or_default(),
                v["public_key"].as_str().unwrap_or_default()
            );
            if let Some(w) = v["warning"].as_str() {
                text.push_str(&format!("\n  warning:     {w}"));
            }
            Ok(Output::Data {
                data: v,
                text: Some(text),
            })
        }
        Cmd::Ping {
            target,
            count,
            timeout,
            interval,
        } => {
            if count == 0 {
                return Err(CliError::invalid("--count must be at least 1"));
            }
            let start = std::time::Instant::now();
            let c = connect_within(socket, timeout)?;
            let t = resolve_target(&c, &target, quiet)?;
            let left = timeout.saturating_sub(start.elapsed());
            let mut last_error = String::new();
            let (v, first_error) = ops::ping(&c, t.addr, &target, count, left, interval, |r| {
                if !json_mode {
                    match (r.get("error"), r.get("rtt_ms")) {
                        (Some(e), _) => {
                            // Identical failures are printed once.
                            let e = e.as_str().unwrap_or("");
                            if e != last_error {
                                println!("seq={} error: {e}", r["seq"]);
                                last_error = e.to_owned();
                            }
                        }
                        (None, Some(rtt)) => println!(
                            "{} bytes from {}: seq={} time={:.3} ms",
                            r["bytes"],
                            t.addr,
                            r["seq"],
                            rtt.as_f64().unwrap_or(0.0)
                        ),
                        _ => {}
                    }
                }
            });
            let results = v["results"].as_array().cloned().unwrap_or_default();
            let ok: Vec<f64> = results
                .iter()
                .filter(|r| r.get("error").is_none())
                .filter_map(|r| r["rtt_ms"].as_f64())
                .collect();
            let text = format!(
                "--- {target} ping statistics ---\n{} sent, {} received{}",
                results.len(),
                ok.len(),
                if ok.is_empty() {
                    String::new()
                } else {
                    format!(", avg {:.3} ms", ok.iter().sum::<f64>() / ok.len() as f64)
                }
            );
            if ok.is_empty() {
                return Err(first_error.unwrap_or_else(|| {
                    CliError::new(
                        "timeout",
                        format!(
                            "no reply from {target} within {:.1}s",
                            timeout.as_secs_f64()
                        ),
                    )
                }));
            }
            Ok(Output::Data {
                data: v,
                text: Some(text),
            })
        }
        Cmd::Traceroute { address, timeout } => {
            let addr: pilot_proto::addr::Addr = address.parse().map_err(|_| {
                CliError::invalid(format!(
                    "invalid address {address:?} (use N:NNNN.HHHH.LLLL)"
                ))
            })?;
            let c = connect_within(socket, timeout)?;
            data(ops::traceroute(&c, addr, timeout))
        }
        Cmd::Bench {
            target,
            size_mb,
            timeout,
        } => {
            if !(size_mb > 0.0 && size_mb.is_finite()) {
                return Err(CliError::invalid("size_mb must be positive"));
            }
            let c = connect_within(socket, timeout)?;
            let t = resolve_target(&c, &target, quiet)?;
            let size = (size_mb * 1048576.0) as u64;
            let r = ops::bench(&c, t.addr, &target, size, timeout, !json_mode)?;
            let d = &r.data;
            let text = format!(
                "{} MiB to {target} and back: send {:.1} MiB/s, round trip {:.1} MiB/s ({:.0} ms){}",
                size_mb,
                d["send_mbps"].as_f64().unwrap_or(0.0),
                r.total_mbps,
                d["total_duration_ms"].as_f64().unwrap_or(0.0),
                if r.verified { "" } else { " — ECHO MISMATCH" }
            );
            Ok(Output::Data {
                data: r.data,
                text: Some(text),
            })
        }
        Cmd::Connect {
            target,
            port,
            message,
            timeout,
            secure,
            secure_legacy,
        } => {
            let msg = match message {
                Some(m) => m,
                None => {
                    if std::io::stdin().is_terminal() {
                        return Err(CliError::invalid(
                            "no --message given and stdin is a terminal",
                        ));
                    }
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(|e| CliError::invalid(format!("read stdin: {e}")))?;
                    s.lines().collect::<Vec<_>>().join("\n")
                }
            };
            let c = connect_within(socket, timeout)?;
            let t = resolve_target(&c, &target, quiet)?;
            if secure {
                let profile = if secure_legacy {
                    pilot_proto::wire::WireProfile::Legacy
                } else {
                    pilot_proto::wire::WireProfile::Current
                };
                let r = secure::exchange(&c, t.addr, port, msg.as_bytes(), timeout, profile)?;
                let resp = String::from_utf8_lossy(&r).into_owned();
                return data(
                    json!({"port": port, "response": resp, "secure": true, "sent": msg, "target": target}),
                );
            }
            let resp = ops::exchange(&c, t.addr, port, msg.as_bytes(), timeout)?;
            data(json!({"port": port, "response": resp, "sent": msg, "target": target}))
        }
        Cmd::Send {
            target,
            port,
            data: msg,
            timeout,
        } => {
            let c = connect_within(socket, timeout)?;
            let t = resolve_target(&c, &target, quiet)?;
            let resp = ops::exchange(&c, t.addr, port, msg.as_bytes(), timeout)?;
            data(json!({"port": port, "response": resp, "sent": msg, "target": target}))
        }
        Cmd::Recv {
            port,
            count,
            timeout,
        } => {
            let c = connect(socket)?;
            data(ops::recv(&c, port, count, timeout, |_| {})?)
        }
        Cmd::SendMessage {
            target,
            data: msg,
            kind,
            timeout,
        } => {
            // Local arguments first: no network call for a bad --type.
            if !["text", "json", "binary"].contains(&kind.to_ascii_lowercase().as_str()) {
                return Err(CliError::invalid(format!(
                    "unknown message type {kind:?} (use text, json or binary)"
                )));
            }
            let c = connect_within(socket, timeout)?;
            let t = resolve_target(&c, &target, quiet)?;
            data(ops::send_message(
                &c, t.addr, &target, &kind, &msg, timeout,
            )?)
        }
        Cmd::SendFile {
            target,
            path,
            timeout,
        } => {
            // Local arguments first: the file must be readable and fit.
            ops::check_file(&path)?;
            let c = connect_within(socket, timeout)?;
            let t = resolve_target(&c, &target, quiet)?;
            data(ops::send_file(&c, t.addr, &path, !json_mode, timeout)?)
        }
        Cmd::Publish {
            target,
            topic,
            data: payload,
            timeout,
        } => {
            let c = connect_within(socket, timeout)?;
            let t = resolve_target(&c, &target, quiet)?;
            data(ops::publish(
                &c, t.addr, &target, &topic, &payload, timeout,
            )?)
        }
        Cmd::Subscribe {
            target,
            topic,
            count,
            timeout,
        } => {
            let c = connect_within(socket, timeout)?;
            let t = resolve_target(&c, &target, quiet)?;
            let streaming = count == 0;
            let v = ops::subscribe(&c, t.addr, &topic, count, timeout, |ev| {
                if streaming {
                    ndjson(ev);
                }
            })?;
            if streaming {
                return Ok(Output::Done(ExitCode::SUCCESS));
            }
            data(v)
        }
        Cmd::Listen {
            port,
            count,
            timeout,
        } => {
            let c = connect(socket)?;
            let streaming = count == 0;
            let v = ops::listen(&c, port, count, timeout, |m| {
                if streaming {
                    ndjson(m);
                }
            })?;
            if streaming {
                return Ok(Output::Done(ExitCode::SUCCESS));
            }
            data(v)
        }
        Cmd::Received { clear, dir } => {
            let (v, text) = mailbox::received(&daemonctl::state_dir(dir.as_deref()), clear)?;
            listing(v, text)
        }
        Cmd::Inbox { clear, dir } => {
            let (v, text) = mailbox::inbox(&daemonctl::state_dir(dir.as_deref()), clear)?;
            listing(v, text)
        }
        Cmd::Connections => {
            let c = connect(socket)?;
            let info = c.info().map_err(|e| CliError::ipc(e, "internal"))?;
            let list = info
                .get("conn_list")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let text = util::table(
                &list,
                &[
                    ("ID", "id"),
                    ("LOCAL", "local_port"),
                    ("REMOTE", "remote_addr"),
                    ("PORT", "remote_port"),
                    ("STATE", "state"),
                    ("SENT", "bytes_sent"),
                    ("RECV", "bytes_recv"),
                    ("RTT MS", "srtt_ms"),
                    ("PMTU", "path_mtu"),
                ],
                "no connections",
            );
            listing(json!({"connections": list, "total": list.len()}), text)
        }
        Cmd::Peers { search } => {
            let c = connect(socket)?;
            let info = c.info().map_err(|e| CliError::ipc(e, "internal"))?;
            let needle = search.map(|s| s.to_lowercase());
            let list: Vec<Value> = info
                .get("peer_list")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| match &needle {
                    None => true,
                    Some(n) => {
                        p["node_id"].to_string().contains(n.as_str())
                            || p["endpoint"]
                                .as_str()
                                .is_some_and(|e| e.to_lowercase().contains(n.as_str()))
                    }
                })
                .collect();
            let text = util::table(
                &list,
                &[
                    ("NODE", "node_id"),
                    ("PATH", "path"),
                    ("ENDPOINT", "endpoint"),
                    ("RTT MS", "srtt_ms"),
                    ("CHANGED S AGO", "path_changed_secs_ago"),
                    ("ENCRYPTED", "encrypted"),
                    ("AUTHENTICATED", "authenticated"),
                ],
                "no peers (a tunnel appears once you talk to a node: pilotctl ping <node>)",
            );
            listing(json!({"peers": list, "total": list.len()}), text)
        }
        Cmd::Disconnect { conn_id } => {
            let c = connect(socket)?;
            let listed = |c: &IpcClient| -> CliResult<Option<Value>> {
                let info = c.info().map_err(|e| CliError::ipc(e, "internal"))?;
                Ok(info
                    .get("conn_list")
                    .and_then(Value::as_array)
                    .and_then(|l| l.iter().find(|x| x["id"] == conn_id).cloned()))
            };
            let Some(before) = listed(&c)? else {
                return Err(CliError::new(
                    "not_found",
                    format!("no connection {conn_id} on this daemon"),
                )
                .hint("`pilotctl connections` lists the open connections and their ids"));
            };
            c.close(conn_id).map_err(|e| CliError::ipc(e, "internal"))?;
            // The daemon answers every close; make sure it took effect.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            loop {
                match listed(&c)? {
                    None => break,
                    Some(now) if now["state"] != before["state"] => break,
                    Some(_) if std::time::Instant::now() >= deadline => {
                        return Err(CliError::new(
                            "internal",
                            format!("connection {conn_id} is still open after the close request"),
                        ));
                    }
                    Some(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            data(json!({
                "conn_id": conn_id,
                "remote_addr": before["remote_addr"],
                "remote_port": before["remote_port"],
                "status": "closed",
            }))
        }
        Cmd::Handshake {
            target,
            justification,
        } => {
            let c = connect(socket)?;
            let node = match parse_node_id(&target) {
                Ok(n) => n,
                Err(_) => resolve_target(&c, &target, quiet)?.addr.node,
            };
            data(
                c.handshake_request(node, &justification.join(" "))
                    .map_err(|e| CliError::ipc(e, "connection_failed"))?,
            )
        }
        Cmd::Pending => {
            let c = connect(socket)?;
            let v = c
                .handshake_pending()
                .map_err(|e| CliError::ipc(e, "internal"))?;
            let mut list = v["pending"].as_array().cloned().unwrap_or_default();
            util::local_times(&mut list, "received_at");
            let text = util::table(
                &list,
                &[
                    ("NODE", "node_id"),
                    ("JUSTIFICATION", "justification"),
                    ("RECEIVED", "received_at"),
                ],
                "no pending requests",
            );
            listing(v, text)
        }
        Cmd::Trust => {
            let c = connect(socket)?;
            let v = c
                .handshake_trusted()
                .map_err(|e| CliError::ipc(e, "internal"))?;
            let mut list = v["trusted"].as_array().cloned().unwrap_or_default();
            util::local_times(&mut list, "approved_at");
            let text = util::table(
                &list,
                &[
                    ("NODE", "node_id"),
                    ("MUTUAL", "mutual"),
                    ("NETWORK", "network"),
                    ("APPROVED", "approved_at"),
                    ("PUBLIC KEY", "public_key"),
                ],
                "no trusted peers",
            );
            listing(v, text)
        }
        Cmd::Approve { node_id } => {
            let node = parse_node_id(&node_id)?;
            let c = connect(socket)?;
            data(
                c.handshake_approve(node)
                    .map_err(|e| not_pending(e, node))?,
            )
        }
        Cmd::Reject { node_id, reason } => {
            let node = parse_node_id(&node_id)?;
            let c = connect(socket)?;
            data(
                c.handshake_reject(node, &reason.join(" "))
                    .map_err(|e| not_pending(e, node))?,
            )
        }
        Cmd::Untrust { node_id } => {
            let node = parse_node_id(&node_id)?;
            let c = connect(socket)?;
            c.handshake_revoke(node).map_err(|e| match e {
                IpcClientError::Daemon(m) => CliError::new("not_found", m),
                other => CliError::ipc(other, "internal"),
            })?;
            data(json!({"node_id": node}))
        }
    }
}

/// The error of `approve`/`reject` when nothing is pending from `node`.
fn not_pending(e: IpcClientError, node: u32) -> CliError {
    match e {
        IpcClientError::Daemon(m) if m.contains("no pending request") => {
            CliError::new("not_found", m).hint(format!(
                "`pilotctl pending` lists the requests waiting; node {node} must ask first: pilotctl handshake <this node>"
            ))
        }
        other => CliError::ipc(other, "internal"),
    }
}

fn daemon_cmd(cmd: DaemonCmd, socket: &std::path::Path) -> CliResult<Output> {
    match cmd {
        DaemonCmd::Start(a) => {
            let dir = daemonctl::state_dir(a.dir.as_deref());
            if a.foreground {
                let mut args: Vec<OsString> = vec![
                    "--socket".into(),
                    socket.as_os_str().to_owned(),
                    "--dir".into(),
                    dir.into_os_string(),
                ];
                for (k, v) in [("--registry", &a.registry), ("--beacon", &a.beacon)] {
                    if let Some(v) = v {
                        args.push(k.into());
                        args.push(v.into());
                    }
                }
                args.extend(a.forward());
                return Ok(Output::Done(runners::daemon_run(&args)));
            }
            let opts = daemonctl::StartOptions {
                socket: socket.to_path_buf(),
                dir,
                forward: a.forward(),
                registry: a.registry.clone(),
                beacon: a.beacon.clone(),
            };
            data(daemonctl::start(&opts)?)
        }
        DaemonCmd::Stop { dir, rendezvous } => {
            let dir = daemonctl::state_dir(dir.as_deref());
            let stopped = daemonctl::stop(&dir, socket);
            if rendezvous {
                let rv = daemonctl::stop_rendezvous(&dir);
                let mut v = stopped.unwrap_or_else(|_| json!({}));
                v["rendezvous_pid"] = json!(rv);
                return data(v);
            }
            data(stopped?)
        }
        DaemonCmd::InstallService(a) => {
            let (v, text) = service::install(&a)?;
            listing(v, text)
        }
        DaemonCmd::Status { check, dir } => {
            let dir = daemonctl::state_dir(dir.as_deref());
            if check {
                let ok = daemonctl::probe(socket, Duration::from_secs(3)).is_some();
                return Ok(Output::Done(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }));
            }
            data(daemonctl::status(&dir, socket))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_rounded_and_integers_kept() {
        let mut v = json!({"mbps": 2205.3938749999998, "n": [1, 0.1 + 0.2], "id": 7});
        round_floats(&mut v);
        assert_eq!(v.to_string(), r#"{"id":7,"mbps":2205.394,"n":[1,0.3]}"#);
    }
}
