//! Bootstrap and diagnostics commands of `pilotctl`: `init`, `config`
//! (`--set`), `lookup`, `health`, `version` and `prefer-direct`
//! (reference `daemon.md` §4.6, §4.9, §2.7).
//!
//! `config.json` lives in the state directory (`--dir`, `PILOT_HOME`,
//! `~/.pilot`). It is pilotctl's own file: `socket` and `registry` set
//! there are used when neither a flag nor the environment names one; any
//! other key is stored as a string for the user. It is written atomically
//! (temporary file, fsync, rename) with mode 0600 in a 0700 directory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::util::{CliError, CliResult};
use crate::daemon::args::{DEFAULT_BEACON, DEFAULT_REGISTRY};
use crate::ipc_client::IpcClient;

/// Name of the configuration file in the state directory.
pub const CONFIG_FILE: &str = "config.json";

/// Default IPC socket written by `init`.
pub const DEFAULT_SOCKET: &str = "/tmp/pilot.sock";

/// Longest `config.json` read (it holds a handful of short strings).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `<dir>/config.json`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join(CONFIG_FILE)
}

/// The object in `config.json`; a missing file is an empty object.
pub fn read_config(path: &Path) -> CliResult<Map<String, Value>> {
    let bad = |why: String| {
        CliError::new("invalid_argument", format!("{}: {why}", path.display()))
            .hint("fix or remove the file, then `pilotctl init`")
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(bad(e.to_string())),
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(bad(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("not a JSON object".into())),
        Err(e) => Err(bad(format!("invalid JSON: {e}"))),
    }
}

/// Writes `config.json` atomically (2-space indented, mode 0600, the
/// directory created with 0700).
pub fn write_config(path: &Path, map: &Map<String, Value>) -> CliResult<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |e: std::io::Error| {
        CliError::new("internal", format!("cannot write {}: {e}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail)?;
    let mut text = serde_json::to_string_pretty(map).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    let tmp = dir.join(format!(".{CONFIG_FILE}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Options of `init`.
#[derive(Debug, Default)]
pub struct InitOptions {
    /// Registry `host:port`.
    pub registry: Option<String>,
    /// Beacon `host:port`.
    pub beacon: Option<String>,
    /// Hostname applied by `daemon start`.
    pub hostname: Option<String>,
    /// IPC socket (the global `--socket`, when given).
    pub socket: Option<PathBuf>,
}

/// `init`: merges the given values (and defaults for the unset ones) into
/// `config.json`: `{"beacon","config_path","hostname","registry","socket"}`.
pub fn init(dir: &Path, o: &InitOptions) -> CliResult<(Value, String)> {
    for (what, v) in [("registry", &o.registry), ("beacon", &o.beacon)] {
        if let Some(v) = v {
            check_host_port(what, v)?;
        }
    }
    if let Some(h) = &o.hostname {
        if h.is_empty() || h.len() > 63 || h.chars().any(|c| c.is_whitespace()) {
            return Err(CliError::invalid(format!(
                "hostname {h:?}: 1 to 63 characters, no spaces"
            )));
        }
    }
    let path = config_path(dir);
    let mut map = read_config(&path)?;
    let mut put = |k: &str, given: Option<String>, default: Option<String>| {
        match given {
            Some(v) => {
                map.insert(k.to_owned(), json!(v));
            }
            None => {
                if let Some(d) = default {
                    map.entry(k.to_owned()).or_insert(json!(d));
                }
            }
        };
    };
    put(
        "registry",
        o.registry.clone(),
        Some(DEFAULT_REGISTRY.to_string()),
    );
    put("beacon", o.beacon.clone(), Some(DEFAULT_BEACON.to_string()));
    put(
        "socket",
        o.socket.as_ref().map(|p| p.display().to_string()),
        Some(DEFAULT_SOCKET.to_owned()),
    );
    put("hostname", o.hostname.clone(), None);
    write_config(&path, &map)?;
    let v = json!({
        "beacon": map.get("beacon"),
        "config_path": path.display().to_string(),
        "hostname": map.get("hostname").cloned().unwrap_or(json!("")),
        "registry": map.get("registry"),
        "socket": map.get("socket"),
    });
    let text = format!(
        "wrote {}\n  registry  {}\n  beacon    {}\n  socket    {}\n  hostname  {}",
        path.display(),
        v["registry"].as_str().unwrap_or_default(),
        v["beacon"].as_str().unwrap_or_default(),
        v["socket"].as_str().unwrap_or_default(),
        v["hostname"].as_str().unwrap_or_default(),
    );
    Ok((v, text))
}

fn check_host_port(what: &str, v: &str) -> CliResult<()> {
    let ok = v
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(CliError::invalid(format!(
            "{what} {v:?}: expected HOST:PORT (e.g. 127.0.0.1:9000)"
        )))
    }
}

/// `config`: the file's keys plus `config_path`, `pid_file`, `log_file`
/// and the effective `registry` and `socket`.
pub fn show(dir: &Path, socket: &Path) -> CliResult<Value> {
    let path = config_path(dir);
    let mut map = read_config(&path)?;
    map.insert("config_path".into(), json!(path.display().to_string()));
    map.insert(
        "pid_file".into(),
        json!(dir.join(super::daemonctl::PID_FILE).display().to_string()),
    );
    map.insert(
        "log_file".into(),
        json!(dir.join(super::daemonctl::LOG_FILE).display().to_string()),
    );
    map.entry("registry")
        .or_insert(json!(DEFAULT_REGISTRY.to_string()));
    map.entry("socket")
        .or_insert(json!(socket.display().to_string()));
    Ok(Value::Object(map))
}

/// Keys `config --set` refuses: they are computed, not stored.
const DERIVED_KEYS: &[&str] = &["config_path", "pid_file", "log_file"];

/// `config --set KEY=VALUE`: stores a string; `{"key","value"}`.
pub fn set(dir: &Path, kv: &str) -> CliResult<Value> {
    let Some((k, v)) = kv.split_once('=') else {
        return Err(CliError::invalid(format!(
            "--set {kv:?}: expected KEY=VALUE"
        )));
    };
    let key_ok = !k.is_empty()
        && k.len() <= 64
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !key_ok || DERIVED_KEYS.contains(&k) {
        return Err(CliError::invalid(format!(
            "--set: bad key {k:?} (letters, digits, '_', '-', '.'; at most 64; not {})",
            DERIVED_KEYS.join(", ")
        )));
    }
    if v.len() > 4096 {
        return Err(CliError::invalid("--set: value longer than 4096 bytes"));
    }
    if matches!(k, "registry" | "beacon") {
        check_host_port(k, v)?;
    }
    let path = config_path(dir);
    let mut map = read_config(&path)?;
    map.insert(k.to_owned(), json!(v));
    write_config(&path, &map)?;
    Ok(json!({"key": k, "value": v}))
}

/// The configured string `key` of `config.json` in the default state
/// directory, if the file has one (unreadable files count as none).
pub fn configured(dir: &Path, key: &str) -> Option<String> {
    read_config(&config_path(dir))
        .ok()?
        .get(key)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The registry for direct commands: `--registry`, else `PILOT_REGISTRY`,
/// else `config.json`, else the built-in default.
pub fn registry_addr(flag: Option<&str>, dir: &Path) -> CliResult<SocketAddr> {
    let text = flag
        .map(str::to_owned)
        .or_else(|| {
            std::env::var("PILOT_REGISTRY")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .or_else(|| configured(dir, "registry"))
        .unwrap_or_else(|| DEFAULT_REGISTRY.to_string());
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CliError::invalid(format!("registry {text:?}: cannot resolve")))
}

/// `lookup <node_id>`: one `lookup` straight to the registry; the
/// registry's `lookup_ok` object as it came.
pub fn lookup(registry: SocketAddr, node_id: u32, timeout: Duration) -> CliResult<Value> {
    use pilot_proto::registry::framing::{ResponseReader, lookup_frame, response_value};
    let unreachable = |e: std::io::Error| {
        CliError::new("registry_unreachable", format!("registry {registry}: {e}"))
            .hint("check the address: pilotctl config (key registry), PILOT_REGISTRY or --registry")
    };
    let mut s = TcpStream::connect_timeout(&registry, timeout).map_err(unreachable)?;
    let deadline = Instant::now() + timeout;
    let frame = lookup_frame(node_id)
        .ok_or_else(|| CliError::new("internal", "cannot encode the lookup request"))?;
    s.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    s.write_all(&frame).map_err(unreachable)?;
    let mut reader = ResponseReader::default();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match reader.next_response() {
            Ok(Some(resp)) => {
                let v = response_value(&resp);
                if let Some(err) = v.get("error").and_then(Value::as_str) {
                    let code = if err.contains("not found") {
                        "not_found"
                    } else {
                        "internal"
                    };
                    return Err(CliError::new(code, format!("lookup {node_id}: {err}")));
                }
                return Ok(v);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(CliError::new(
                    "internal",
                    format!("registry {registry} sent an unreadable reply: {e}"),
                ));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CliError::new(
                "timeout",
                format!("no reply from the registry {registry} within {timeout:?}"),
            ));
        }
        s.set_read_timeout(Some(left)).map_err(unreachable)?;
        match s.read(&mut buf) {
            Ok(0) => {
                return Err(CliError::new(
                    "connection_failed",
                    format!("registry {registry} closed the connection"),
                ));
            }
            Ok(n) => reader.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreachable(e)),
        }
    }
}

/// Human form of `lookup`.
pub fn lookup_text(v: &Value) -> String {
    let mut s = format!(
        "node {}  {}\n  public      {}\n  public key  {}",
        v["node_id"],
        v["address"].as_str().unwrap_or_default(),
        v["public"],
        v["public_key"].as_str().unwrap_or_default()
    );
    for k in ["hostname", "real_addr"] {
        if let Some(x) = v.get(k).and_then(Value::as_str).filter(|x| !x.is_empty()) {
            s.push_str(&format!("\n  {k:<11} {x}"));
        }
    }
    s
}

/// `health`: the daemon's health object; human form one line per value.
pub fn health(c: &IpcClient) -> CliResult<(Value, String)> {
    let v = c.health().map_err(|e| CliError::ipc(e, "internal"))?;
    let mut text = String::new();
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            let x = match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text.push_str(&format!("{k:<28} {x}\n"));
        }
    }
    Ok((v, text.trim_end().to_owned()))
}

/// `version`: pilotctl's version, and the daemon's when one answers.
pub fn version(socket: &Path) -> (Value, String) {
    let daemon = IpcClient::connect(socket).ok().and_then(|mut c| {
        c.set_timeout(Duration::from_secs(3));
        c.health().ok()
    });
    let daemon_version = daemon
        .as_ref()
        .and_then(|h| h.get("version").cloned())
        .unwrap_or(Value::Null);
    let v = json!({
        "daemon_running": daemon.is_some(),
        "daemon_version": daemon_version,
        "version": env!("CARGO_PKG_VERSION"),
        "wire_profiles": ["current", "legacy"],
    });
    let text = match daemon_version.as_str() {
        Some(d) => format!("pilotctl {} (daemon {d})", env!("CARGO_PKG_VERSION")),
        None => format!(
            "pilotctl {} (no daemon at {})",
            env!("CARGO_PKG_VERSION"),
            socket.display()
        ),
    };
    (v, text)
}

/// `prefer-direct <node>`: asks the daemon to forget the peer's cached
/// endpoint and relay and resolve it again (IPC `PreferDirect`).
pub fn prefer_direct(c: &IpcClient, node_id: u32) -> CliResult<Value> {
    use pilot_proto::wire::ipc::IpcMessage;
    let body = c
        .request_raw(&IpcMessage::PreferDirect { node_id }, c.timeout())
        .map_err(|e| CliError::ipc(e, "internal"))?;
    // The body is the reply message: its command byte, then the JSON.
    let payload = body.get(1..).unwrap_or_default();
    let mut v = if payload.is_empty() {
        json!({})
    } else {
        serde_json::from_slice::<Value>(payload)
            .unwrap_or_else(|_| json!({"reply": String::from_utf8_lossy(payload).into_owned()}))
    };
    if v.is_object() && v.get("node_id").is_none() {
        v["node_id"] = json!(node_id);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_merges_and_config_set_stores_strings() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let (v, text) = init(
            &dir,
            &InitOptions {
                hostname: Some("agent-a".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(v["registry"], DEFAULT_REGISTRY.to_string());
        assert_eq!(v["hostname"], "agent-a");
        assert_eq!(v["socket"], DEFAULT_SOCKET);
        assert!(text.contains("agent-a"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(config_path(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        assert_eq!(
            set(&dir, "team=blue").unwrap(),
            json!({"key": "team", "value": "blue"})
        );
        // A second init keeps what is there and changes only what it is given.
        let (v, _) = init(
            &dir,
            &InitOptions {
                registry: Some("10.0.0.1:9000".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(v["registry"], "10.0.0.1:9000");
        assert_eq!(v["hostname"], "agent-a");
        let shown = show(&dir, Path::new("/tmp/x.sock")).unwrap();
        assert_eq!(shown["team"], "blue");
        assert_eq!(shown["socket"], DEFAULT_SOCKET);
        assert!(shown["pid_file"].as_str().unwrap().ends_with("pilot.pid"));
        assert_eq!(
            configured(&dir, "registry").as_deref(),
            Some("10.0.0.1:9000")
        );

        for bad in ["novalue", "=x", "a b=c", "config_path=x", "registry=nope"] {
            assert_eq!(
                set(&dir, bad).unwrap_err().code,
                "invalid_argument",
                "{bad}"
            );
        }
        assert_eq!(
            init(
                &dir,
                &InitOptions {
                    beacon: Some("9001".into()),
                    ..Default::default()
                }
            )
            .unwrap_err()
            .code,
            "invalid_argument"
        );
    }

    #[test]
    fn a_broken_config_file_is_named_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(config_path(d.path()), "[1,2]").unwrap();
        let e = set(d.path(), "a=b").unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        assert!(e.message.contains("not a JSON object"), "{}", e.message);
        assert_eq!(
            std::fs::read_to_string(config_path(d.path())).unwrap(),
            "[1,2]"
        );
        std::fs::write(config_path(d.path()), "{oops").unwrap();
        assert!(
            show(d.path(), Path::new("/s"))
                .unwrap_err()
                .message
                .contains("invalid JSON")
        );
    }

    #[test]
    fn lookup_of_a_silent_or_absent_registry_is_a_named_error() {
        // Nothing listens on a port we just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = lookup(port, 1, Duration::from_secs(2)).unwrap_err();
        assert_eq!(e.code, "registry_unreachable");
        // A listener that never answers: a timeout, not a hang.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t0 = Instant::now();
        let e = lookup(l.local_addr().unwrap(), 1, Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.code, "timeout");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
}
