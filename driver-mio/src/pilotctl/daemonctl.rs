//! `pilotctl daemon start|stop|status`: the daemon's lifecycle with a PID
//! file and a log file in the state directory (`reference/daemon.md` §4.8).
//!
//! `start` re-executes this same program as `pilotctl _daemon-run <flags>`
//! in its own session (detached from the terminal), appends its output to
//! `pilot.log`, writes `pilot.pid`, and polls `Info` over the socket until
//! the daemon answers.
//!
//! When the registry address (given or the default 127.0.0.1:9000) is on
//! loopback and nothing listens there, `start` first runs a local
//! rendezvous as its **own** background process (`pilotctl
//! _rendezvous-run`, files in `<dir>/rendezvous/`), so that it outlives the
//! daemon that started it and keeps serving every other local daemon.
//! `daemon stop --rendezvous` stops it too.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::util::{CliError, CliResult};
use crate::ipc_client::IpcClient;

/// PID file name in the state directory.
pub const PID_FILE: &str = "pilot.pid";
/// Log file name in the state directory.
pub const LOG_FILE: &str = "pilot.log";
/// How long `start` waits for the daemon to answer `Info`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `stop` waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

/// The state directory: `--dir`, else `$PILOT_HOME`, else `~/.pilot`.
pub fn state_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_path_buf();
    }
    if let Some(h) = std::env::var_os("PILOT_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    home::home_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".pilot")
}

/// Whether process `pid` exists (signal 0).
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: plain kill(2) on a positive pid read from our own PID file.
    pid > 0 && unsafe { libc::kill(pid, sig) } == 0
}

/// Makes the child of `cmd` lead a new session, so it outlives this
/// terminal and this process (no SIGHUP, no shared process group).
fn detach(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Asks the daemon at `socket` for `Info` with a short timeout.
pub fn probe(socket: &Path, timeout: Duration) -> Option<Value> {
    let mut c = IpcClient::connect(socket).ok()?;
    c.set_timeout(timeout);
    c.info().ok()
}

/// The tail of a log file (for error hints).
fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s.trim().to_owned()
}

/// Options of `daemon start` that `pilotctl` itself needs; every daemon
/// flag is passed through to `_daemon-run` in `forward`.
pub struct StartOptions {
    /// IPC socket path.
    pub socket: PathBuf,
    /// State directory (PID file, log, identity, trust, received files).
    pub dir: PathBuf,
    /// Daemon flags to pass on (`--hostname …`, …; not the registry and
    /// beacon, which are below).
    pub forward: Vec<OsString>,
    /// `--registry`, if given.
    pub registry: Option<String>,
    /// `--beacon`, if given.
    pub beacon: Option<String>,
}

/// Sub-directory of the state directory for a rendezvous `start` ran.
pub const RENDEZVOUS_DIR: &str = "rendezvous";

fn resolve(what: &str, text: &str) -> CliResult<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CliError::invalid(format!("--{what}: cannot resolve {text:?}")))
}

/// Makes sure a registry answers at `registry`: if it is a loopback
/// address with nothing listening, runs a rendezvous there (beacon on
/// `beacon`) as a detached process storing into `<dir>/rendezvous/`.
/// Returns what was started, if anything.
fn ensure_rendezvous(
    dir: &Path,
    registry: std::net::SocketAddr,
    beacon: std::net::SocketAddr,
) -> CliResult<Option<Value>> {
    use crate::daemon::embedded::accepts;
    if !registry.ip().is_loopback() || accepts(registry) {
        return Ok(None);
    }
    let rdir = dir.join(RENDEZVOUS_DIR);
    crate::daemon::files::create_private_dir(&rdir)
        .map_err(|e| CliError::new("internal", format!("create {}: {e}", rdir.display())))?;
    let log_file = rdir.join("rendezvous.log");
    let pid_file = rdir.join("rendezvous.pid");
    let store = rdir.join("rendezvous.redb");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_file)
        .map_err(|e| CliError::new("internal", format!("open {}: {e}", log_file.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| CliError::new("internal", e.to_string()))?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new("internal", format!("cannot find own executable: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("_rendezvous-run")
        .arg("--registry-addr")
        .arg(registry.to_string())
        .arg("--beacon-addr")
        .arg(beacon.to_string())
        .arg("--store")
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::new("internal", format!("cannot start the rendezvous: {e}")))?;
    let pid = child.id() as i32;
    write_pid(&pid_file, pid);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if accepts(registry) {
            return Ok(Some(json!({
                "log_file": log_file.display().to_string(),
                "pid": pid,
                "registry": registry.to_string(),
                "beacon": beacon.to_string(),
                "store": store.display().to_string(),
            })));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(&pid_file);
            // Another process may have bound it meanwhile.
            if accepts(registry) {
                return Ok(None);
            }
            return Err(CliError::new(
                "internal",
                format!(
                    "the local rendezvous exited during start ({status}): {}",
                    log_tail(&log_file, 2000)
                ),
            )
            .hint(format!("check logs: tail {}", log_file.display())));
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(
                "timeout",
                format!("the local rendezvous (pid {pid}) did not listen on {registry} within 15s"),
            )
            .hint(format!("check logs: tail {}", log_file.display())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_pid(path: &Path, pid: i32) {
    let _ = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{pid}\n").as_bytes()));
}

/// Stops the rendezvous `start` ran from `dir`, if it still runs.
/// Returns its PID.
pub fn stop_rendezvous(dir: &Path) -> Option<i32> {
    let pid_file = dir.join(RENDEZVOUS_DIR).join("rendezvous.pid");
    let pid = read_pid(&pid_file)?;
    let _ = fs::remove_file(&pid_file);
    if !alive(pid) {
        return None;
    }
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && alive(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal(pid, libc::SIGKILL);
    }
    Some(pid)
}

/// `daemon start` (detached). Returns the reference's object
/// `{"address","hostname","log_file","node_id","pid","socket"}`, plus
/// `rendezvous` (the one it started, or null) and `registered` (false
/// only when the daemon runs but had no node id by the deadline).
pub fn start(opts: &StartOptions) -> CliResult<Value> {
    // Private from the start: the daemon keeps its identity here.
    crate::daemon::files::create_private_dir(&opts.dir)
        .map_err(|e| CliError::new("internal", format!("create {}: {e}", opts.dir.display())))?;
    let pid_file = opts.dir.join(PID_FILE);
    let log_file = opts.dir.join(LOG_FILE);
    if let Some(pid) = read_pid(&pid_file) {
        if alive(pid) {
            return Err(CliError::new(
                "already_exists",
                format!("daemon is already running (pid {pid})"),
            )
            .hint("stop it first with: pilotctl daemon stop"));
        }
        let _ = fs::remove_file(&pid_file);
    }
    if opts.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&opts.socket).is_ok() {
            return Err(CliError::new(
                "already_exists",
                format!("socket {} is active", opts.socket.display()),
            )
            .hint("another daemon uses it; stop it or pick another --socket"));
        }
        let _ = fs::remove_file(&opts.socket);
    }
    let registry = resolve(
        "registry",
        opts.registry.as_deref().unwrap_or("127.0.0.1:9000"),
    )?;
    let beacon = resolve("beacon", opts.beacon.as_deref().unwrap_or("127.0.0.1:9001"))?;
    let rendezvous = ensure_rendezvous(&opts.dir, registry, beacon)?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new("internal", format!("cannot find own executable: {e}")))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_file)
        .map_err(|e| CliError::new("internal", format!("open {}: {e}", log_file.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| CliError::new("internal", e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("_daemon-run")
        .arg("--socket")
        .arg(&opts.socket)
        .arg("--dir")
        .arg(&opts.dir)
        .arg("--registry")
        .arg(registry.to_string())
        .arg("--beacon")
        .arg(beacon.to_string())
        .args(&opts.forward)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::new("internal", format!("cannot start daemon: {e}")))?;
    let pid = child.id() as i32;
    let _ = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&pid_file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{pid}\n").as_bytes()));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(&pid_file);
            let tail = log_tail(&log_file, 2000);
            return Err(CliError::new(
                "internal",
                format!("daemon exited during start ({status}): {tail}"),
            )
            .hint(format!("check logs: tail -f {}", log_file.display())));
        }
        let info = probe(&opts.socket, Duration::from_secs(2));
        // Ready once registered (a node id): a daemon answers on its socket
        // before the registry has assigned one, and a restart answered with
        // node id 0. Past the deadline a running but unregistered daemon
        // is reported as such.
        let registered = info
            .as_ref()
            .is_some_and(|i| i["node_id"].as_u64().is_some_and(|n| n != 0));
        if let Some(info) = info.filter(|_| registered || Instant::now() >= deadline) {
            return Ok(json!({
                "registered": registered,
                "rendezvous": rendezvous.clone().unwrap_or(Value::Null),
                "address": info.get("address").cloned().unwrap_or(Value::Null),
                "hostname": info.get("hostname").cloned().unwrap_or(json!("")),
                "log_file": log_file.display().to_string(),
                "node_id": info.get("node_id").cloned().unwrap_or(Value::Null),
                "pid": pid,
                "socket": opts.socket.display().to_string(),
            }));
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(
                "timeout",
                format!("daemon started (pid {pid}) but did not become ready within 15s"),
            )
            .hint(format!("check logs: tail -f {}", log_file.display())));
        }
        std::thread::sleep(POLL);
    }
}

/// `daemon stop`: SIGTERM the PID from the PID file, wait up to 10 s, then
/// SIGKILL. Returns `{"forced":bool,"pid":P}`.
pub fn stop(dir: &Path, socket: &Path) -> CliResult<Value> {
    let pid_file = dir.join(PID_FILE);
    let Some(pid) = read_pid(&pid_file) else {
        let mut e = CliError::new("not_running", "daemon is not running");
        if probe(socket, Duration::from_secs(2)).is_some() {
            e = e.hint(format!(
                "a daemon answers on {} but has no PID file in {}; stop that process directly",
                socket.display(),
                dir.display()
            ));
        }
        return Err(e);
    };
    if !alive(pid) {
        let _ = fs::remove_file(&pid_file);
        return Err(CliError::new(
            "not_running",
            format!("daemon is not running (pid {pid} is gone; cleaned up stale state)"),
        ));
    }
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !alive(pid) {
            let _ = fs::remove_file(&pid_file);
            return Ok(json!({"forced": false, "pid": pid}));
        }
        std::thread::sleep(POLL);
    }
    signal(pid, libc::SIGKILL);
    let _ = fs::remove_file(&pid_file);
    Ok(json!({"forced": true, "pid": pid}))
}

/// `daemon status`: `{"pid","pid_file","responsive","running","socket"}`
/// plus a few Info fields when the daemon answers.
pub fn status(dir: &Path, socket: &Path) -> Value {
    let pid_file = dir.join(PID_FILE);
    let pid = read_pid(&pid_file);
    let running = pid.is_some_and(alive);
    let info = probe(socket, Duration::from_secs(2));
    let mut out = json!({
        "pid": pid.unwrap_or(0),
        "pid_file": pid_file.display().to_string(),
        "responsive": info.is_some(),
        "running": running || info.is_some(),
        "socket": socket.display().to_string(),
    });
    match info {
        Some(info) => {
            for k in [
                "node_id",
                "address",
                "hostname",
                "uptime_secs",
                "peers",
                "connections",
            ] {
                if let Some(v) = info.get(k) {
                    out[k] = v.clone();
                }
            }
        }
        None if !running && pid.is_some() => {
            let _ = fs::remove_file(&pid_file);
        }
        None => {}
    }
    out
}
