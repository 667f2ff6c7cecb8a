//! The daemon's flags ([`DaemonArgs`]), its config file, and their merge
//! into one [`Settings`] value: flags win over the environment, which wins
//! over the config file, which wins over the built-in defaults. Every
//! default is a loopback address or a local path.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use pilot_proto::crypto::provider::Selected;
use serde::Deserialize;

use super::DaemonRunError;
use crate::rendezvous::cli::{LogFormat, read_config_file};

/// Registry address used when none is configured (spec/daemon.md §3):
/// a rendezvous already listening there, or one started in-process.
pub const DEFAULT_REGISTRY: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9000,
));
/// Beacon address used when none is configured.
pub const DEFAULT_BEACON: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9001,
));
/// Tunnel UDP listen address used when none is configured.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));
/// IPC socket path used when neither `--socket` nor `PILOT_SOCKET` is set.
pub const DEFAULT_SOCKET: &str = "/tmp/pilot.sock";
/// Keepalive probe and registry heartbeat period (daemon.md §3.1: 30 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
/// Peer timeout (`--idle-timeout`, spec/daemon.md §2): a tunnel peer
/// silent this long despite probes is dead and its connections fail. The
/// reference uses the flag for a 120-s close of idle healthy streams,
/// which we do not do (spec/node.md §7.1).
pub const DEFAULT_IDLE_TIMEOUT: Duration = pilot_proto::node::PEER_TIMEOUT;

/// Flags of `pilot-daemon` (also flattened into `pilotctl _daemon-run` and
/// `pilotctl daemon start`). Every value is optional so that the config
/// file can supply it; see [`DaemonArgs::resolve`] for the precedence.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DaemonArgs {
    /// Config file, JSON (`.json`) or TOML (anything else), whose keys are
    /// the long flag names in snake_case (`registry`, `socket`,
    /// `no_echo`, `keepalive = "30s"`, ...); flags take precedence
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Registry address HOST:PORT. Without it the daemon uses the
    /// rendezvous listening on 127.0.0.1:9000, or starts one in-process
    /// there (beacon on 127.0.0.1:9001, store in the state directory)
    #[arg(long, value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// Beacon address HOST:PORT [default: 127.0.0.1:9001]
    #[arg(long, value_name = "HOST:PORT")]
    pub beacon: Option<String>,
    /// A second beacon address answering discovers (the rendezvous'
    /// `--beacon-observer-addr`): the daemon discovers through both and
    /// compares the public endpoints they observe, so `info` can say
    /// whether the NAT's mapping depends on the destination
    /// (spec/beacon.md §8.1) [default: none]
    #[arg(long, value_name = "HOST:PORT")]
    pub beacon_observer: Option<String>,
    /// UDP tunnel listen address [default: 127.0.0.1:0]
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Tunnel endpoint advertised to the registry, when it differs from the
    /// listen address (NAT, port forwarding) [default: the listen address;
    /// an unspecified IP is replaced by the one routing to the registry]
    #[arg(long, value_name = "IP:PORT")]
    pub endpoint: Option<SocketAddr>,
    /// IPC socket path [default: $PILOT_SOCKET, else /tmp/pilot.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// State directory: identity.json, trust.json, received/, inbox/
    /// [default: $PILOT_HOME, else ~/.pilot]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Identity file (created on first start, mode 0600)
    /// [default: DIR/identity.json]
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Hostname to set after registering
    #[arg(long)]
    pub hostname: Option<String>,
    /// Owner string sent at registration (key recovery)
    #[arg(long)]
    pub owner: Option<String>,
    /// The registry's admin token: lets this daemon create networks and
    /// authorises `broadcast` requests [env: PILOT_ADMIN_TOKEN]
    #[arg(long, env = "PILOT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Make this node publicly visible after registering
    #[arg(long)]
    pub public: bool,
    /// Disable tunnel encryption (plaintext PILT frames; testing only)
    #[arg(long)]
    pub no_encrypt: bool,
    /// Disable the echo service (port 7)
    #[arg(long)]
    pub no_echo: bool,
    /// Disable the data-exchange service (port 1001)
    #[arg(long)]
    pub no_dataexchange: bool,
    /// Disable the event-stream service (port 1002)
    #[arg(long)]
    pub no_eventstream: bool,
    /// Keepalive and registry heartbeat period: `30s`, `2m`, `500ms` or
    /// plain seconds [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keepalive: Option<Duration>,
    /// How long a tunnel peer may stay silent, although probed, before its
    /// tunnel is closed and its connections fail with "peer unreachable"
    /// [default: 30s; at least 500ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// NAT keepalive interval towards the beacon and tunnel peers; `0`
    /// turns keepalives off (discovery then follows the heartbeat only)
    /// [default: 25s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub nat_keepalive: Option<Duration>,
    /// Stream user timeout: a dial fails, and a connection whose data is
    /// unacknowledged gives up, after the peer was silent this long; at
    /// least 1s [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub user_timeout: Option<Duration>,
    /// Peers that may have packets waiting for a tunnel key exchange at
    /// once; packets beyond it are dropped and counted (`info`:
    /// pending_dropped) [default: 256]
    #[arg(long, value_name = "N")]
    pub pending_peers: Option<usize>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// tracing directive); it wins over RUST_LOG, which is used when
    /// neither flag nor config sets it [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format on stderr [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Speak the legacy (February 2026, "v1.8") wire profile instead of
    /// the current one
    #[arg(long)]
    pub legacy: bool,
    /// Webhook URL (http:// or https://): daemon events are POSTed there as JSON
    /// (`spec/services.md` §13); `pilotctl set-webhook` changes it at run
    /// time
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Let webhooks go to loopback, private and link-local addresses
    /// (refused by default)
    #[arg(long)]
    pub webhook_allow_private: bool,
    /// Key of the `X-Pilot-Signature-256` HMAC-SHA256 header of webhook
    /// posts [env: PILOT_WEBHOOK_SECRET]
    #[arg(long, value_name = "SECRET")]
    pub webhook_secret: Option<String>,
    /// PEM file of extra root certificates an https:// webhook's server
    /// certificate may chain to (besides the system bundle), e.g. a
    /// private CA or a self-signed certificate
    #[arg(long, value_name = "FILE")]
    pub webhook_ca: Option<PathBuf>,
    /// AES-256-GCM implementation: `ring` (fastest here) or `rustcrypto`
    /// (pure Rust) [default: ring]; both speak the same frames
    #[arg(long, value_name = "PROVIDER", value_parser = parse_crypto)]
    pub crypto: Option<Selected>,
}

/// Parses the `--crypto` value.
pub fn parse_crypto(text: &str) -> Result<Selected, String> {
    Selected::parse(text)
        .ok_or_else(|| format!("unknown crypto provider {text:?} (ring, rustcrypto)"))
}

/// The config file: the same keys as the flags, every one optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    registry: Option<String>,
    beacon: Option<String>,
    beacon_observer: Option<String>,
    listen: Option<SocketAddr>,
    endpoint: Option<SocketAddr>,
    socket: Option<PathBuf>,
    dir: Option<PathBuf>,
    identity: Option<PathBuf>,
    hostname: Option<String>,
    owner: Option<String>,
    admin_token: Option<String>,
    public: Option<bool>,
    no_encrypt: Option<bool>,
    no_echo: Option<bool>,
    no_dataexchange: Option<bool>,
    no_eventstream: Option<bool>,
    keepalive: Option<DurationValue>,
    idle_timeout: Option<DurationValue>,
    nat_keepalive: Option<DurationValue>,
    user_timeout: Option<DurationValue>,
    pending_peers: Option<usize>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    legacy: Option<bool>,
    crypto: Option<String>,
    webhook: Option<String>,
    webhook_allow_private: Option<bool>,
    webhook_secret: Option<String>,
    webhook_ca: Option<PathBuf>,
}

/// A duration in a config file: a string (`"30s"`) or a number of seconds.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum DurationValue {
    Secs(f64),
    Text(String),
}

impl DurationValue {
    fn get(&self) -> Result<Duration, String> {
        match self {
            DurationValue::Secs(s) => secs_f64(*s),
            DurationValue::Text(t) => parse_duration(t),
        }
    }
}

fn secs_f64(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("invalid duration {s}"))
}

/// Parses a duration flag or config value ([`crate::duration::parse`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse(text)
}

/// Everything the daemon needs, resolved from flags, environment, config
/// file and defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Explicit registry address; `None` = the embedded default.
    pub registry: Option<SocketAddr>,
    /// Beacon address; `None` = disabled (only when configured as "").
    pub beacon: Option<SocketAddr>,
    /// Second beacon address (observer) for mapping detection.
    pub beacon_observer: Option<SocketAddr>,
    /// Tunnel UDP listen address.
    pub listen: SocketAddr,
    /// Advertised endpoint override.
    pub endpoint: Option<SocketAddr>,
    /// IPC socket path.
    pub socket: PathBuf,
    /// State directory.
    pub dir: PathBuf,
    /// Identity file.
    pub identity: PathBuf,
    /// Hostname to set after registering.
    pub hostname: Option<String>,
    /// Owner string.
    pub owner: Option<String>,
    /// The registry's admin token (network creation, broadcast).
    pub admin_token: Option<String>,
    /// Public visibility.
    pub public: bool,
    /// Tags to set after registering (from `profile.json`).
    pub tags: Vec<String>,
    /// Tunnel encryption.
    pub encrypt: bool,
    /// Echo service (port 7).
    pub echo: bool,
    /// Data-exchange service (port 1001).
    pub dataexchange: bool,
    /// Event-stream service (port 1002).
    pub eventstream: bool,
    /// Keepalive / heartbeat period.
    pub keepalive: Duration,
    /// Stream idle timeout.
    pub idle_timeout: Duration,
    /// NAT keepalive interval (`None`: off).
    pub nat_keepalive: Option<Duration>,
    /// Stream user timeout (dial deadline, give-up silence).
    pub user_timeout: Duration,
    /// Pending-queue peer limit of the node.
    pub pending_peers: usize,
    /// Log filter; `None` = RUST_LOG or `info`.
    pub log_level: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Legacy wire profile.
    pub legacy: bool,
    /// The AEAD implementation.
    pub crypto: Selected,
    /// Webhook URL at start.
    pub webhook: Option<String>,
    /// Webhooks may target internal addresses.
    pub webhook_allow_private: bool,
    /// HMAC key of webhook posts.
    pub webhook_secret: Option<String>,
    /// Extra roots for https:// webhooks.
    pub webhook_ca: Option<PathBuf>,
}

fn resolve_addr(what: &str, text: &str) -> Result<SocketAddr, DaemonRunError> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| DaemonRunError::Config(format!("{what}: cannot resolve {text:?}")))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl DaemonArgs {
    /// Merges flags, environment (`PILOT_SOCKET`, `PILOT_HOME`), the config
    /// file and the defaults.
    pub fn resolve(&self) -> Result<Settings, DaemonRunError> {
        let file: FileConfig = match &self.config {
            Some(p) => read_config_file(p)
                .map_err(|e| DaemonRunError::Config(format!("{}: {e}", p.display())))?,
            None => FileConfig::default(),
        };
        let registry = match self.registry.as_ref().or(file.registry.as_ref()) {
            Some(r) => Some(resolve_addr("registry", r)?),
            None => None,
        };
        let beacon = match self.beacon.as_ref().or(file.beacon.as_ref()) {
            Some(b) if b.is_empty() => None,
            Some(b) => Some(resolve_addr("beacon", b)?),
            None => Some(DEFAULT_BEACON),
        };
        let beacon_observer = match self
            .beacon_observer
            .as_ref()
            .or(file.beacon_observer.as_ref())
        {
            Some(b) if !b.is_empty() => Some(resolve_addr("beacon-observer", b)?),
            _ => None,
        };
        let dir = self
            .dir
            .clone()
            .or_else(|| env_path("PILOT_HOME"))
            .or(file.dir)
            .or_else(|| home::home_dir().map(|h| h.join(".pilot")))
            .ok_or_else(|| {
                DaemonRunError::Config("no state directory: set --dir, PILOT_HOME or HOME".into())
            })?;
        let identity = self
            .identity
            .clone()
            .or(file.identity)
            .unwrap_or_else(|| dir.join("identity.json"));
        let socket = self
            .socket
            .clone()
            .or_else(|| env_path("PILOT_SOCKET"))
            .or(file.socket)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let dur =
            |flag: Option<Duration>, f: &Option<DurationValue>, d: Duration, name: &str| match flag
            {
                Some(v) => Ok(v),
                None => match f {
                    Some(v) => v
                        .get()
                        .map_err(|e| DaemonRunError::Config(format!("{name}: {e}"))),
                    None => Ok(d),
                },
            };
        let keepalive = dur(
            self.keepalive,
            &file.keepalive,
            DEFAULT_KEEPALIVE,
            "keepalive",
        )?;
        let idle_timeout = dur(
            self.idle_timeout,
            &file.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
            "idle_timeout",
        )?;
        let nat_keepalive = dur(
            self.nat_keepalive,
            &file.nat_keepalive,
            pilot_proto::daemon::paths::KEEPALIVE,
            "nat_keepalive",
        )?;
        let nat_keepalive = (!nat_keepalive.is_zero()).then_some(nat_keepalive);
        let user_timeout = dur(
            self.user_timeout,
            &file.user_timeout,
            pilot_proto::stream::consts::USER_TIMEOUT,
            "user_timeout",
        )?;
        if user_timeout < pilot_proto::stream::consts::MIN_USER_TIMEOUT {
            return Err(DaemonRunError::Config(format!(
                "user timeout {user_timeout:?} is below the 1s minimum"
            )));
        }
        let pending_peers = self
            .pending_peers
            .or(file.pending_peers)
            .unwrap_or(pilot_proto::crypto::params::PENDING_PEERS);
        if pending_peers == 0 {
            return Err(DaemonRunError::Config(
                "pending peers must be at least 1".into(),
            ));
        }
        if keepalive.is_zero() || idle_timeout.is_zero() {
            return Err(DaemonRunError::Config(
                "keepalive and idle timeout must be positive".into(),
            ));
        }
        if idle_timeout < pilot_proto::node::MIN_PEER_TIMEOUT {
            return Err(DaemonRunError::Config(format!(
                "idle timeout {idle_timeout:?} is too short: a peer needs at least {:?} to answer a probe (try --idle-timeout 5s)",
                pilot_proto::node::MIN_PEER_TIMEOUT
            )));
        }
        let on = |flag: bool, f: Option<bool>| flag || f.unwrap_or(false);
        let crypto = match (self.crypto, file.crypto.as_deref()) {
            (Some(c), _) => c,
            (None, Some(name)) => {
                parse_crypto(name).map_err(|e| DaemonRunError::Config(format!("crypto: {e}")))?
            }
            (None, None) => Selected::default(),
        };
        Ok(Settings {
            crypto,
            registry,
            beacon,
            beacon_observer,
            listen: self.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN),
            endpoint: self.endpoint.or(file.endpoint),
            socket,
            identity,
            hostname: self.hostname.clone().or(file.hostname),
            owner: self.owner.clone().or(file.owner),
            admin_token: self.admin_token.clone().or(file.admin_token),
            public: on(self.public, file.public),
            tags: Vec::new(),
            encrypt: !on(self.no_encrypt, file.no_encrypt),
            echo: !on(self.no_echo, file.no_echo),
            dataexchange: !on(self.no_dataexchange, file.no_dataexchange),
            eventstream: !on(self.no_eventstream, file.no_eventstream),
            keepalive,
            idle_timeout,
            nat_keepalive,
            user_timeout,
            pending_peers,
            log_level: self.log_level.clone().or(file.log_level),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            legacy: on(self.legacy, file.legacy),
            dir,
            webhook: self
                .webhook
                .clone()
                .or(file.webhook)
                .filter(|u| !u.is_empty()),
            webhook_allow_private: on(self.webhook_allow_private, file.webhook_allow_private),
            webhook_secret: self
                .webhook_secret
                .clone()
                .or_else(|| std::env::var("PILOT_WEBHOOK_SECRET").ok())
                .or(file.webhook_secret)
                .filter(|s| !s.is_empty()),
            webhook_ca: self.webhook_ca.clone().or(file.webhook_ca),
        })
    }
}

/// The advertised tunnel endpoint: `--endpoint`, else the bound address,
/// with an unspecified IP replaced by the local address that routes to
/// `registry` (no packet is sent to find it).
pub fn advertised_endpoint(
    endpoint: Option<SocketAddr>,
    bound: SocketAddr,
    registry: SocketAddr,
) -> SocketAddr {
    if let Some(e) = endpoint {
        return e;
    }
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let probe_bind: SocketAddr = if registry.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let ip = std::net::UdpSocket::bind(probe_bind)
        .and_then(|s| s.connect(registry).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(registry.ip());
    SocketAddr::new(ip, bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: DaemonArgs,
    }

    fn parse(args: &[&str]) -> DaemonArgs {
        Cli::try_parse_from(std::iter::once("pilot-daemon").chain(args.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn defaults_are_loopback_and_local() {
        let s = parse(&["--dir", "/tmp/x", "--socket", "/tmp/x.sock"])
            .resolve()
            .unwrap();
        assert_eq!(s.registry, None);
        assert_eq!(s.beacon, Some(DEFAULT_BEACON));
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.identity, PathBuf::from("/tmp/x/identity.json"));
        assert!(s.encrypt && s.echo && s.dataexchange && s.eventstream);
        assert_eq!(s.keepalive, DEFAULT_KEEPALIVE);
        assert!(!s.legacy && !s.public);
        assert_eq!(
            s.idle_timeout,
            Duration::from_secs(30),
            "well under a minute"
        );
    }

    #[test]
    fn idle_timeout_is_the_peer_timeout_and_refuses_tiny_values() {
        let base = ["--dir", "/tmp/x", "--socket", "/tmp/x.sock"];
        let with = |v: &str| {
            let mut a = base.to_vec();
            a.extend(["--idle-timeout", v]);
            parse(&a).resolve()
        };
        assert_eq!(with("3s").unwrap().idle_timeout, Duration::from_secs(3));
        let e = with("100ms").unwrap_err().to_string();
        assert!(
            e.contains("too short") && e.contains("--idle-timeout"),
            "{e}"
        );
    }

    #[test]
    fn flags_beat_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("d.toml");
        std::fs::write(
            &toml,
            "registry = \"127.0.0.1:7000\"\nhostname = \"file\"\nno_echo = true\nkeepalive = \"5s\"\nidle_timeout = 9\n",
        )
        .unwrap();
        let s = parse(&[
            "--config",
            toml.to_str().unwrap(),
            "--hostname",
            "flag",
            "--dir",
            "/tmp/y",
            "--socket",
            "/tmp/y.sock",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.registry, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(s.hostname.as_deref(), Some("flag"));
        assert!(!s.echo);
        assert_eq!(s.keepalive, Duration::from_secs(5));
        assert_eq!(s.idle_timeout, Duration::from_secs(9));

        let json = dir.path().join("d.json");
        std::fs::write(&json, r#"{"beacon":"", "legacy": true, "bogus": 1}"#).unwrap();
        let err = parse(&["--config", json.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        std::fs::write(&json, r#"{"beacon":"", "legacy": true}"#).unwrap();
        let s = parse(&["--config", json.to_str().unwrap(), "--dir", "/tmp/z"])
            .resolve()
            .unwrap();
        assert_eq!(s.beacon, None);
        assert!(s.legacy);
    }

    #[test]
    fn user_timeout_and_pending_peers_from_flags_and_file() {
        let base = ["--dir", "/tmp/u", "--socket", "/tmp/u.sock"];
        let s = parse(&base).resolve().unwrap();
        assert_eq!(s.user_timeout, pilot_proto::stream::consts::USER_TIMEOUT);
        assert_eq!(s.pending_peers, pilot_proto::crypto::params::PENDING_PEERS);
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("d.toml");
        std::fs::write(&toml, "user_timeout = \"12s\"\npending_peers = 1024\n").unwrap();
        let mut args = base.to_vec();
        args.extend(["--config", toml.to_str().unwrap()]);
        let s = parse(&args).resolve().unwrap();
        assert_eq!(s.user_timeout, Duration::from_secs(12));
        assert_eq!(s.pending_peers, 1024);
        args.extend(["--user-timeout", "2m"]);
        assert_eq!(
            parse(&args).resolve().unwrap().user_timeout,
            Duration::from_secs(120)
        );
        let mut short = base.to_vec();
        short.extend(["--user-timeout", "500ms"]);
        let err = parse(&short).resolve().unwrap_err();
        assert!(err.to_string().contains("1s minimum"), "{err}");
        let mut zero = base.to_vec();
        zero.extend(["--pending-peers", "0"]);
        assert!(parse(&zero).resolve().is_err());
    }

    #[test]
    fn crypto_provider_from_flag_or_file() {
        let base = ["--dir", "/tmp/c", "--socket", "/tmp/c.sock"];
        let s = parse(&base).resolve().unwrap();
        assert_eq!(s.crypto, Selected::Ring, "ring is the default");
        let mut args = base.to_vec();
        args.extend(["--crypto", "rustcrypto"]);
        assert_eq!(parse(&args).resolve().unwrap().crypto, Selected::RustCrypto);
        assert!(parse_crypto("aes").is_err());

        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("c.toml");
        std::fs::write(&toml, "crypto = \"rustcrypto\"\n").unwrap();
        let mut args = base.to_vec();
        args.extend(["--config", toml.to_str().unwrap()]);
        assert_eq!(parse(&args).resolve().unwrap().crypto, Selected::RustCrypto);
        args.extend(["--crypto", "ring"]);
        assert_eq!(parse(&args).resolve().unwrap().crypto, Selected::Ring);
        std::fs::write(&toml, "crypto = \"fast\"\n").unwrap();
        let err = parse(&["--config", toml.to_str().unwrap(), "--dir", "/tmp/c"])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("crypto"), "{err}");
    }

    #[test]
    fn endpoint_fills_unspecified_ip() {
        let reg: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let bound: SocketAddr = "0.0.0.0:4242".parse().unwrap();
        assert_eq!(
            advertised_endpoint(None, bound, reg),
            "127.0.0.1:4242".parse().unwrap()
        );
        let fixed: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert_eq!(advertised_endpoint(Some(fixed), bound, reg), fixed);
    }
}
