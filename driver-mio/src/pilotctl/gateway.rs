//! `pilotctl gateway start|stop|map|unmap|list` and the hidden runner
//! `pilotctl _gateway-run` (`spec/gateway.md`).
//!
//! `start` checks the privileges and the daemon, resolves the targets, then
//! runs the gateway in a detached child (`_gateway-run`) or, with
//! `--foreground`, in this process. `map`, `unmap`, `list` and `stop` are
//! requests on the running gateway's control socket.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use pilot_proto::addr::Addr;
use serde_json::{Value, json};

use super::util::{self, CliError, CliResult, resolve_target};
use crate::gateway::control::{self, ControlError};
use crate::gateway::server::{self, Gateway, GatewayConfig};
use crate::gateway::{DEFAULT_PORTS, DEFAULT_SUBNET, Subnet, control_path};
use crate::ipc_client::IpcClient;

/// How long `start` waits for the background gateway to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `pilotctl gateway …`.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Control socket of the gateway [default: <daemon socket>.gateway]
    #[arg(long, global = true, value_name = "PATH")]
    control: Option<PathBuf>,
    #[command(subcommand)]
    command: GatewayCmd,
}

/// The gateway's sub-commands.
#[derive(Subcommand, Debug)]
pub enum GatewayCmd {
    /// Start the IP gateway (needs root or CAP_NET_ADMIN): maps peers to
    /// local IPs so ordinary TCP clients reach them, e.g. `sudo pilotctl
    /// gateway start --ports 80 <peer>` then `curl http://10.4.0.1/`
    Start(StartArgs),
    /// Stop the running gateway (removes its addresses)
    Stop,
    /// Map a peer to a local IP on the running gateway
    Map {
        /// Address, node id or hostname of the peer
        target: String,
        /// Local IP inside the subnet [default: next free]
        ip: Option<Ipv4Addr>,
    },
    /// Remove a mapping from the running gateway
    Unmap {
        /// The local IP of the mapping
        ip: Ipv4Addr,
    },
    /// List the running gateway's mappings
    List,
}

/// Arguments of `gateway start` (also the runner's).
#[derive(Args, Debug, Clone)]
pub struct StartArgs {
    /// Subnet of local addresses
    #[arg(long, default_value = DEFAULT_SUBNET, value_parser = parse_subnet)]
    subnet: Subnet,
    /// Ports forwarded (comma list) [default: 80,443,1000,1001,1002,7,8080,8443]
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    /// Interface that carries the local addresses
    #[arg(long, default_value = "lo")]
    interface: String,
    /// Also run a DNS stub on this UDP address (e.g. 127.0.0.1:5353) that
    /// answers `<hostname>.pilot` with the peer's gateway IP, mapping the
    /// peer on first use; point your resolver's `pilot` domain at it
    #[arg(long, value_name = "IP:PORT")]
    dns: Option<std::net::SocketAddr>,
    /// Run in this process until SIGINT/SIGTERM
    #[arg(long)]
    foreground: bool,
    /// Peers to map at start: ADDRESS|NODE_ID|HOSTNAME[=IP]
    targets: Vec<String>,
}

fn parse_subnet(s: &str) -> Result<Subnet, String> {
    s.parse()
}

/// What a gateway command produced.
pub enum GwOutput {
    /// A result (`data`, human text).
    Data(Value, Option<String>),
    /// Already printed; exit with this code.
    Done(ExitCode),
}

fn ctl_err(e: ControlError) -> CliError {
    // Codes of the control protocol are the CLI's own codes.
    let code: &'static str = match e.code.as_str() {
        "not_running" => "not_running",
        "not_found" => "not_found",
        "invalid_argument" => "invalid_argument",
        "already_exists" => "already_exists",
        "permission_denied" => "permission_denied",
        "unsupported" => "unsupported",
        "timeout" => "timeout",
        _ => "internal",
    };
    let mut c = CliError::new(code, e.message);
    c.hint = e.hint;
    c
}

fn mappings_text(v: &Value) -> String {
    let rows: Vec<Value> = v["mappings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut m| {
            let ports: Vec<String> = m["ports"]
                .as_array()
                .map(|a| a.iter().map(Value::to_string).collect())
                .unwrap_or_default();
            m["ports_text"] = json!(ports.join(","));
            m
        })
        .collect();
    let dns = match v["dns"]["listen"].as_str() {
        Some(at) => format!(", DNS stub for .pilot on {at}"),
        None => String::new(),
    };
    format!(
        "gateway on subnet {} (pid {}{dns})\n{}",
        v["subnet"].as_str().unwrap_or("?"),
        v["pid"],
        util::table(
            &rows,
            &[
                ("IP", "ip"),
                ("ADDRESS", "addr"),
                ("PORTS", "ports_text"),
                ("CONNECTIONS", "connections"),
            ],
            "no mappings (add one: pilotctl gateway map <peer>)",
        )
    )
}

/// Resolves `TARGET[=IP]` through the daemon.
fn resolve_mapping(c: &IpcClient, arg: &str, quiet: bool) -> CliResult<(Addr, Option<Ipv4Addr>)> {
    let (t, ip) = match arg.rsplit_once('=') {
        Some((t, ip)) => {
            let ip: Ipv4Addr = ip.parse().map_err(|_| {
                CliError::invalid(format!("invalid IPv4 address {ip:?} in {arg:?}"))
            })?;
            (t, Some(ip))
        }
        None => (arg, None),
    };
    Ok((resolve_target(c, t, quiet)?.addr, ip))
}

/// Runs `pilotctl gateway …` against the daemon at `socket`.
pub fn run(args: GatewayArgs, socket: &Path, json_mode: bool) -> CliResult<GwOutput> {
    let control = args.control.unwrap_or_else(|| control_path(socket));
    match args.command {
        GatewayCmd::Start(a) => start(a, socket, &control, json_mode),
        GatewayCmd::Stop => {
            let v = control::request(&control, &json!({"cmd": "stop"})).map_err(ctl_err)?;
            // Wait until it has removed its addresses and socket.
            let deadline = Instant::now() + Duration::from_secs(15);
            while control.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(GwOutput::Data(
                json!({"stopped": !control.exists(), "pid": v["pid"]}),
                Some("gateway stopped".into()),
            ))
        }
        GatewayCmd::List => {
            let v = control::request(&control, &json!({"cmd": "list"})).map_err(ctl_err)?;
            let text = mappings_text(&v);
            Ok(GwOutput::Data(v, Some(text)))
        }
        GatewayCmd::Map { target, ip } => {
            let c = IpcClient::connect(socket).map_err(|e| CliError::ipc(e, "internal"))?;
            let addr = resolve_target(&c, &target, json_mode)?.addr;
            let mut req = json!({"cmd": "map", "addr": addr.to_string()});
            if let Some(ip) = ip {
                req["ip"] = json!(ip.to_string());
            }
            let v = control::request(&control, &req).map_err(ctl_err)?;
            let text = format!("mapped {} → {}", v["ip"].as_str().unwrap_or("?"), addr);
            Ok(GwOutput::Data(v, Some(text)))
        }
        GatewayCmd::Unmap { ip } => {
            let v = control::request(&control, &json!({"cmd": "unmap", "ip": ip.to_string()}))
                .map_err(ctl_err)?;
            Ok(GwOutput::Data(v, Some(format!("unmapped {ip}"))))
        }
    }
}

fn config(a: &StartArgs, socket: &Path, control: &Path) -> GatewayConfig {
    GatewayConfig {
        daemon_socket: socket.to_path_buf(),
        control: control.to_path_buf(),
        subnet: a.subnet,
        ports: if a.ports.is_empty() {
            DEFAULT_PORTS.to_vec()
        } else {
            a.ports.clone()
        },
        interface: a.interface.clone(),
        dns: a.dns,
    }
}

fn start(a: StartArgs, socket: &Path, control: &Path, json_mode: bool) -> CliResult<GwOutput> {
    server::preflight().map_err(|e| ctl_err(e.to_control()))?;
    server::check_daemon(socket).map_err(|e| ctl_err(e.to_control()))?;
    if std::os::unix::net::UnixStream::connect(control).is_ok() {
        return Err(ctl_err(
            server::GatewayError::AlreadyRunning(control.to_path_buf()).to_control(),
        ));
    }
    let c = IpcClient::connect(socket).map_err(|e| CliError::ipc(e, "internal"))?;
    let mut maps = Vec::new();
    for t in &a.targets {
        maps.push(resolve_mapping(&c, t, json_mode)?);
    }
    drop(c);
    let cfg = config(&a, socket, control);
    if a.foreground {
        let code = match run_gateway(cfg, &maps, |v| {
            if json_mode {
                println!("{}", json!({"data": v, "status": "ok"}));
            } else {
                println!("{}", mappings_text(v));
            }
        }) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => return Err(ctl_err(e)),
        };
        return Ok(GwOutput::Done(code));
    }
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new("internal", format!("cannot find own executable: {e}")))?;
    let mut log_path = control.as_os_str().to_owned();
    log_path.push(".log");
    let log_path = PathBuf::from(log_path);
    let log = std::fs::File::create(&log_path)
        .map_err(|e| CliError::new("internal", format!("create {}: {e}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| CliError::new("internal", e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("_gateway-run")
        .arg("--socket")
        .arg(socket)
        .arg("--control")
        .arg(control)
        .arg("--subnet")
        .arg(a.subnet.to_string())
        .arg("--interface")
        .arg(&a.interface);
    if !a.ports.is_empty() {
        let p: Vec<String> = a.ports.iter().map(u16::to_string).collect();
        cmd.arg("--ports").arg(p.join(","));
    }
    if let Some(d) = a.dns {
        cmd.arg("--dns").arg(d.to_string());
    }
    for (addr, ip) in &maps {
        cmd.arg(match ip {
            Some(ip) => format!("{addr}={ip}"),
            None => addr.to_string(),
        });
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::new("internal", format!("cannot start gateway: {e}")))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // The runner's last line is its JSON error.
            let e = log
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["code"].is_string());
            return Err(match e {
                Some(v) => {
                    let mut c = ControlError::new(
                        v["code"].as_str().unwrap_or("internal"),
                        v["message"].as_str().unwrap_or("gateway failed"),
                    );
                    c.hint = v["hint"].as_str().map(str::to_owned);
                    ctl_err(c)
                }
                None => CliError::new("internal", format!("gateway exited: {}", log.trim())),
            });
        }
        if let Ok(v) = control::request(control, &json!({"cmd": "list"})) {
            let text = mappings_text(&v);
            let mut v = v;
            v["log"] = json!(log_path.display().to_string());
            return Ok(GwOutput::Data(v, Some(text)));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(CliError::new(
                "timeout",
                format!("gateway did not answer within {}s", READY_TIMEOUT.as_secs()),
            )
            .hint(format!("see its log: {}", log_path.display())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a gateway until SIGINT/SIGTERM or a `stop` request: binds the
/// control socket, applies `maps` (all or nothing), calls `ready` with the
/// `list` answer, serves, and removes everything at the end.
pub fn run_gateway(
    cfg: GatewayConfig,
    maps: &[(Addr, Option<Ipv4Addr>)],
    ready: impl FnOnce(&Value),
) -> Result<Vec<Value>, ControlError> {
    server::preflight().map_err(|e| e.to_control())?;
    let gw = Gateway::new(cfg);
    let listener = gw.bind_control().map_err(|e| e.to_control())?;
    let stop: Arc<AtomicBool> = gw.stop_flag();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    for (addr, ip) in maps {
        if let Err(e) = gw.map(*addr, *ip) {
            gw.unmap_all();
            drop(listener);
            let _ = std::fs::remove_file(gw.control());
            return Err(e);
        }
    }
    if let Err(e) = gw.start_dns() {
        gw.unmap_all();
        drop(listener);
        let _ = std::fs::remove_file(gw.control());
        return Err(e);
    }
    ready(&gw.list());
    Ok(gw.serve(listener))
}

#[derive(Parser, Debug)]
#[command(name = "pilotctl _gateway-run")]
struct RunnerCli {
    /// Daemon IPC socket
    #[arg(long)]
    socket: PathBuf,
    /// Control socket
    #[arg(long)]
    control: PathBuf,
    #[command(flatten)]
    start: StartArgs,
}

/// The hidden runner `pilotctl _gateway-run`: targets are already resolved
/// addresses (`ADDR[=IP]`). Errors go to stderr as one JSON line.
pub fn gateway_run(args: &[OsString]) -> ExitCode {
    let argv = std::iter::once(OsString::from("pilotctl _gateway-run")).chain(args.iter().cloned());
    let cli = match RunnerCli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let mut maps = Vec::new();
    for t in &cli.start.targets {
        let (a, ip) = t
            .split_once('=')
            .map_or((t.as_str(), None), |(a, i)| (a, Some(i)));
        let addr: Option<Addr> = a.parse().ok();
        let ip: Option<Option<Ipv4Addr>> = match ip {
            None => Some(None),
            Some(i) => i.parse().ok().map(Some),
        };
        match (addr, ip) {
            (Some(a), Some(ip)) => maps.push((a, ip)),
            _ => {
                eprintln!(
                    "{}",
                    ControlError::new("invalid_argument", format!("invalid mapping {t:?}"))
                        .to_reply()
                );
                return ExitCode::from(1);
            }
        }
    }
    let cfg = config(&cli.start, &cli.socket, &cli.control);
    match run_gateway(cfg, &maps, |v| {
        tracing::info!(mappings = %v["mappings"], "gateway ready");
    }) {
        Ok(removed) => {
            tracing::info!(removed = removed.len(), "gateway stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", e.to_reply());
            ExitCode::from(1)
        }
    }
}
