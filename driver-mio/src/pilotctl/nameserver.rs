//! `pilotctl nameserver serve|query|register`: the Pilot nameserver
//! (port 53, `spec/services.md` §7) served on this daemon through its IPC
//! socket, and its client. The records and the request/response texts are
//! `pilot_proto::services::nameserver`; this module only moves bytes.
//!
//! `serve` answers one stream at a time: each gets one read (at most
//! 65 535 bytes, 5 s), one response, and is closed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use pilot_proto::addr::Addr;
use pilot_proto::services::nameserver::{MAX_REQUEST, RecordStore, Response, StoreFile};
use pilot_proto::time::Instant as PInstant;
use serde_json::{Value, json};

use super::util::{CliError, CliResult, parse_duration, resolve_target};
use crate::ipc_client::{IpcClient, IpcClientError};

/// The nameserver's port.
pub const PORT: u16 = pilot_proto::addr::ports::NAMESERVER;

/// How long `serve` waits for a request on an accepted stream.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// `pilotctl nameserver …`.
#[derive(Args, Debug)]
pub struct NsArgs {
    #[command(subcommand)]
    command: NsCmd,
}

#[derive(Subcommand, Debug)]
enum NsCmd {
    /// Serve the nameserver on port 53 of this daemon until SIGINT/SIGTERM
    Serve {
        /// Keep the records in this JSON file (loaded at start, written on
        /// every registration)
        #[arg(long)]
        store: Option<PathBuf>,
        /// Stop after this long (0 = run until a signal)
        #[arg(long, default_value = "0", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Ask a nameserver: A <name> | N <name> | S <net_id> <port>
    Query {
        /// Address, node id or hostname of the nameserver
        server: String,
        /// Record type and arguments
        #[arg(required = true, num_args = 1..)]
        record: Vec<String>,
        /// Deadline
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Register a record: A <name> [address] (default: this node) |
    /// N <name> <net_id> | S <name> <address> <net_id> <port>
    Register {
        /// Address, node id or hostname of the nameserver
        server: String,
        /// Record type and arguments
        #[arg(required = true, num_args = 1..)]
        record: Vec<String>,
        /// Deadline
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// What a nameserver command produced.
pub enum NsOutput {
    /// A result and its human form.
    Data(Value, Option<String>),
    /// Done; exit code.
    Done(ExitCode),
}

/// Runs `pilotctl nameserver …`.
pub fn run(args: NsArgs, socket: &std::path::Path, quiet: bool) -> CliResult<NsOutput> {
    match args.command {
        NsCmd::Serve { store, timeout } => serve(socket, store, timeout),
        NsCmd::Query {
            server,
            record,
            timeout,
        } => ask(socket, &server, "QUERY", record, timeout, quiet),
        NsCmd::Register {
            server,
            mut record,
            timeout,
        } => {
            if record.len() == 2 && record[0].eq_ignore_ascii_case("A") {
                let c = IpcClient::connect(socket).map_err(|e| CliError::ipc(e, "internal"))?;
                let info = c.info().map_err(|e| CliError::ipc(e, "internal"))?;
                record.push(info["address"].as_str().unwrap_or_default().to_owned());
            }
            ask(socket, &server, "REGISTER", record, timeout, quiet)
        }
    }
}

/// The JSON form of a response; `ERR …` becomes an error.
pub fn response_json(r: &Response) -> CliResult<Value> {
    Ok(match r {
        Response::A(name, a) => {
            json!({"type": "A", "name": name, "address": a.to_string(), "node_id": a.node})
        }
        Response::N(name, id) => json!({"type": "N", "name": name, "network_id": id}),
        Response::S(list) => json!({"type": "S", "providers": list.iter().map(|p| json!({
            "name": p.name, "address": p.addr.to_string(), "port": p.port,
        })).collect::<Vec<_>>()}),
        Response::Ok => json!({"ok": true}),
        Response::Err(m) if m.contains("not found") => {
            return Err(CliError::new("not_found", m.clone()));
        }
        Response::Err(m) if m.contains("store full") => {
            return Err(CliError::new("internal", m.clone()));
        }
        Response::Err(m) => return Err(CliError::invalid(m.clone())),
    })
}

fn ask(
    socket: &std::path::Path,
    server: &str,
    verb: &str,
    record: Vec<String>,
    timeout: Duration,
    quiet: bool,
) -> CliResult<NsOutput> {
    let mut c = IpcClient::connect(socket).map_err(|e| CliError::ipc(e, "internal"))?;
    c.set_timeout(timeout);
    let t = resolve_target(&c, server, quiet)?;
    let line = format!("{verb} {}", record.join(" "));
    let conn = c.dial(t.addr, PORT).map_err(|e| match e {
        IpcClientError::Daemon(m) => super::util::dial_error(t.addr, PORT, &m),
        other => CliError::ipc(other, "connection_failed"),
    })?;
    c.send(conn, line.as_bytes())
        .map_err(|e| CliError::ipc(e, "connection_failed"))?;
    let mut reply = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv(conn, left) {
            Ok(Some(chunk)) if reply.len() + chunk.len() <= MAX_REQUEST => {
                reply.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => {
                let _ = c.close(conn);
                return Err(CliError::new("internal", "nameserver reply too long"));
            }
            Ok(None) => break,
            Err(e) => {
                let _ = c.close(conn);
                return Err(CliError::ipc(e, "connection_failed"));
            }
        }
    }
    let _ = c.close(conn);
    let r = Response::parse(&reply).map_err(|e| {
        CliError::new(
            "internal",
            format!("{e}: {:?}", String::from_utf8_lossy(&reply)),
        )
    })?;
    let v = response_json(&r)?;
    Ok(NsOutput::Data(v, Some(r.to_string())))
}

fn serve(
    socket: &std::path::Path,
    store_path: Option<PathBuf>,
    timeout: Duration,
) -> CliResult<NsOutput> {
    let c = IpcClient::connect(socket).map_err(|e| CliError::ipc(e, "internal"))?;
    let start = Instant::now();
    let now = || PInstant::from_nanos(start.elapsed().as_nanos() as u64);
    let mut store = RecordStore::new();
    if let Some(p) = &store_path {
        if let Ok(bytes) = std::fs::read(p) {
            let file = StoreFile::from_json(&bytes)
                .map_err(|e| CliError::invalid(format!("store {}: {e}", p.display())))?;
            store.load(&file, now());
        }
    }
    c.bind(PORT).map_err(|e| {
        CliError::ipc(e, "already_exists").hint("another program serves port 53 on this daemon")
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let (mut served, mut registered) = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst) && (timeout.is_zero() || start.elapsed() < timeout) {
        let a = match c.accept(PORT, Duration::from_millis(200)) {
            Ok(a) => a,
            Err(IpcClientError::Timeout(_)) => continue,
            Err(e) => return Err(CliError::ipc(e, "internal")),
        };
        let req = match c.recv(a.conn_id, READ_TIMEOUT) {
            Ok(Some(mut b)) => {
                b.truncate(MAX_REQUEST);
                b
            }
            _ => {
                let _ = c.close(a.conn_id);
                continue;
            }
        };
        let r = store.handle_bytes(&req, a.remote, now());
        let _ = c.send(a.conn_id, r.to_string().as_bytes());
        let _ = c.close(a.conn_id);
        served += 1;
        if r == Response::Ok && req.len() >= 8 && req[..8].eq_ignore_ascii_case(b"REGISTER") {
            registered += 1;
            if let Some(p) = &store_path {
                let tmp = p.with_extension("tmp");
                let ok = std::fs::write(&tmp, store.to_file().to_json())
                    .and_then(|()| std::fs::rename(&tmp, p));
                if let Err(e) = ok {
                    tracing::warn!(error = %e, "cannot write nameserver store");
                }
            }
        }
    }
    Ok(NsOutput::Data(
        json!({"port": PORT, "served": served, "registered": registered}),
        None,
    ))
}

/// The address a name resolves to through the nameserver at `server`.
pub fn lookup(c: &IpcClient, server: Addr, name: &str, timeout: Duration) -> Result<Addr, String> {
    let conn = c
        .dial_timeout(server, PORT, timeout)
        .map_err(|e| e.to_string())?;
    c.send(conn, format!("QUERY A {name}").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    while let Ok(Some(chunk)) = c.recv(conn, timeout) {
        reply.extend_from_slice(&chunk);
        if reply.len() > MAX_REQUEST {
            break;
        }
    }
    let _ = c.close(conn);
    match Response::parse(&reply) {
        Ok(Response::A(_, a)) => Ok(a),
        Ok(other) => Err(other.to_string()),
        Err(e) => Err(e.to_string()),
    }
}
