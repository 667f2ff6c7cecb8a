//! Webhook delivery (`spec/services.md` §13): JSON events POSTed to one
//! configured URL by a worker thread through hyper's HTTP/1.1 client.
//!
//! * Bounded queue ([`WebhookConfig::queue`] events); a full queue drops
//!   the event and counts it (`dropped`).
//! * Up to [`WebhookConfig::attempts`] attempts per event for connection
//!   errors, timeouts and 5xx answers, waiting [`WebhookConfig::backoff`]
//!   and doubling; a 4xx answer is final.
//! * Circuit breaker: after [`WebhookConfig::breaker_failures`]
//!   consecutive failed events, events are skipped (`circuit_skips`) for
//!   [`WebhookConfig::breaker_open`].
//! * Optional HMAC: `X-Pilot-Signature-256: <hex HMAC-SHA256(secret,
//!   body)>`.
//! * SSRF guard: the host is resolved for every attempt and every address
//!   must be public (no loopback, private, link-local, CGNAT, multicast,
//!   unspecified or documentation ranges) unless
//!   [`WebhookConfig::allow_private`]; the connection goes to the address
//!   that was checked, so a second DNS answer cannot swap it.
//!
//! * `https://` through rustls (tokio-rustls under hyper): the server's
//!   certificate must chain to a root of [`WebhookConfig::roots`], which
//!   are the system's bundle (`SSL_CERT_FILE`, else
//!   `/etc/ssl/certs/ca-certificates.crt`) plus the PEM certificates of
//!   `--webhook-ca FILE` ([`load_roots`]); the name checked is the URL's
//!   host. There is no option to skip verification.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not an absolute `http(s)://host[:port]/path` URL.
    #[error("webhook URL {0:?}: expected http://HOST[:PORT][/PATH] or https://…")]
    Syntax(String),
    /// The trusted roots could not be read (`--webhook-ca`).
    #[error("webhook roots: {0}")]
    Roots(String),
    /// Resolves to an address the SSRF guard refuses.
    #[error(
        "webhook target {0} is a loopback, private, link-local or otherwise internal address (allow it explicitly)"
    )]
    Private(IpAddr),
    /// The host does not resolve.
    #[error("webhook host {0:?} does not resolve")]
    Resolve(String),
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://`: TLS to the host.
    pub tls: bool,
    /// Host name or IP literal (no brackets).
    pub host: String,
    /// Port (80, or 443 for https, by default).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Parses a webhook URL.
pub fn parse_url(url: &str) -> Result<Target, WebhookError> {
    let syntax = || WebhookError::Syntax(url.to_owned());
    if url.len() > 2048 || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(syntax());
    }
    let lower = url.to_ascii_lowercase();
    let (tls, rest, default_port) = if lower.starts_with("https://") {
        (true, &url[8..], 443)
    } else if lower.starts_with("http://") {
        (false, &url[7..], 80)
    } else {
        return Err(syntax());
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(syntax());
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or_else(syntax)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| syntax())?,
            None if after.is_empty() => default_port,
            None => return Err(syntax()),
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse::<u16>().map_err(|_| syntax())?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(syntax());
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok(Target {
        tls,
        host,
        port,
        path,
    })
}

/// Whether the SSRF guard lets `ip` through without `allow_private`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// Resolves `t` and checks every address; the first one to connect to.
pub fn resolve_checked(t: &Target, allow_private: bool) -> Result<SocketAddr, WebhookError> {
    let addrs: Vec<SocketAddr> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|_| WebhookError::Resolve(t.host.clone()))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| WebhookError::Resolve(t.host.clone()))?;
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(WebhookError::Private(bad.ip()));
        }
    }
    Ok(first)
}

/// The roots an `https://` target's certificate must chain to: the
/// system bundle (`SSL_CERT_FILE`, else
/// `/etc/ssl/certs/ca-certificates.crt`; absent is no error) and every
/// certificate of the PEM file `extra` (`--webhook-ca`; unreadable or
/// without a certificate is an error).
pub fn load_roots(extra: Option<&std::path::Path>) -> Result<rustls::RootCertStore, WebhookError> {
    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    if let Ok(pem) = std::fs::read(&system) {
        let mut reader = pem.as_slice();
        let certs = rustls_pemfile::certs(&mut reader).flatten();
        let (ok, bad) = roots.add_parsable_certificates(certs);
        tracing::debug!(ok, bad, path = %system.display(), "webhook: system roots");
    }
    if let Some(path) = extra {
        let err = |m: String| WebhookError::Roots(format!("{}: {m}", path.display()));
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let mut n = 0;
        let mut reader = pem.as_slice();
        for cert in rustls_pemfile::certs(&mut reader) {
            let cert = cert.map_err(|e| err(e.to_string()))?;
            roots.add(cert).map_err(|e| err(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(err("no PEM certificate in it".into()));
        }
    }
    Ok(roots)
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The URL (`http://…` or `https://…`).
    pub url: String,
    /// Roots for `https://` ([`load_roots`]); empty: no https target
    /// verifies.
    pub roots: Arc<rustls::RootCertStore>,
    /// HMAC-SHA256 key for `X-Pilot-Signature-256`, if any.
    pub secret: Option<Vec<u8>>,
    /// Let loopback, private and link-local targets through.
    pub allow_private: bool,
    /// Events queued at most.
    pub queue: usize,
    /// Per-attempt deadline (connect + answer).
    pub timeout: Duration,
    /// Attempts per event.
    pub attempts: u32,
    /// Wait before the second attempt (doubling after).
    pub backoff: Duration,
    /// Consecutive failed events that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open.
    pub breaker_open: Duration,
}

impl WebhookConfig {
    /// The defaults for `url`: 1024 events, 5 s, 3 attempts from 1 s, the
    /// breaker after 5 failures for 30 s, no secret, public targets only.
    pub fn new(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            roots: Arc::new(rustls::RootCertStore::empty()),
            secret: None,
            allow_private: false,
            queue: 1024,
            timeout: Duration::from_secs(5),
            attempts: 3,
            backoff: Duration::from_secs(1),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
        }
    }
}

/// Delivery counters.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events delivered (2xx/3xx).
    pub delivered: AtomicU64,
    /// Events given up (all attempts failed, a 4xx, or a refused target).
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Events skipped while the breaker was open.
    pub circuit_skips: AtomicU64,
    /// Attempts refused by the SSRF guard.
    pub refused: AtomicU64,
}

/// A running deliverer; dropping it lets the worker finish the queue
/// and exit.
#[derive(Debug)]
pub struct Webhook {
    tx: SyncSender<Vec<u8>>,
    stats: Arc<WebhookStats>,
    url: String,
}

impl Webhook {
    /// Starts the worker for `cfg` (the URL's syntax is checked here; its
    /// addresses at every attempt).
    pub fn start(cfg: WebhookConfig) -> Result<Webhook, WebhookError> {
        let target = parse_url(&cfg.url)?;
        let (tx, rx) = sync_channel(cfg.queue.max(1));
        let stats = Arc::new(WebhookStats::default());
        let s = Arc::clone(&stats);
        let url = cfg.url.clone();
        std::thread::Builder::new()
            .name("pilot-webhook".into())
            .spawn(move || worker(cfg, target, rx, &s))
            .map_err(|_| WebhookError::Syntax(url.clone()))?;
        Ok(Webhook { tx, stats, url })
    }

    /// Queues one event body; `false` (and counted) when the queue is full.
    pub fn push(&self, body: Vec<u8>) -> bool {
        match self.tx.try_send(body) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.stats
    }

    /// The configured URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The `X-Pilot-Signature-256` value for `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one attempt gave.
enum Attempt {
    Ok,
    /// Worth another attempt (network error, timeout, 5xx).
    Retry,
    /// Final (4xx, refused target).
    GiveUp,
}

fn worker(cfg: WebhookConfig, target: Target, rx: Receiver<Vec<u8>>, stats: &WebhookStats) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!("webhook: cannot start the HTTP client runtime");
        return;
    };
    let tls = target.tls.then(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(Arc::clone(&cfg.roots))
                    .with_no_client_auth()
            });
        config.map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)))
    });
    let tls = match tls {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            tracing::error!(error = %e, "webhook: cannot build the TLS client");
            return;
        }
    };
    let mut consecutive = 0u32;
    let mut open_until: Option<Instant> = None;
    while let Ok(body) = rx.recv() {
        if open_until.is_some_and(|t| Instant::now() < t) {
            stats.circuit_skips.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        open_until = None;
        let mut wait = cfg.backoff;
        let mut delivered = false;
        for attempt in 0..cfg.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(wait);
                wait = wait.saturating_mul(2);
            }
            match rt.block_on(post(&cfg, &target, tls.as_ref(), &body, stats)) {
                Attempt::Ok => {
                    delivered = true;
                    break;
                }
                Attempt::Retry => {}
                Attempt::GiveUp => break,
            }
        }
        if delivered {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            consecutive = 0;
        } else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            consecutive += 1;
            if consecutive >= cfg.breaker_failures.max(1) {
                tracing::warn!(url = %cfg.url, "webhook: {consecutive} events failed in a row; pausing deliveries");
                open_until = Some(Instant::now() + cfg.breaker_open);
                consecutive = 0;
            }
        }
    }
}

/// Sends one request on `io` (plain TCP or TLS); the answer's status.
async fn exchange<S>(io: S, cfg: &WebhookConfig, t: &Target, body: &[u8]) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::body::Bytes;

    let io = hyper_util::rt::TokioIo::new(io);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(conn);
    let default_port = if t.tls { 443 } else { 80 };
    let name = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let host = if t.port == default_port {
        name
    } else {
        format!("{name}:{}", t.port)
    };
    let mut req = hyper::Request::post(t.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("pilot-daemon/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(secret) = &cfg.secret {
        req = req.header("X-Pilot-Signature-256", signature(secret, body));
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).ok()?;
    let resp = sender.send_request(req).await.ok()?;
    Some(resp.status().as_u16())
}

async fn post(
    cfg: &WebhookConfig,
    t: &Target,
    tls: Option<&tokio_rustls::TlsConnector>,
    body: &[u8],
    stats: &WebhookStats,
) -> Attempt {
    let addr = match resolve_checked(t, cfg.allow_private) {
        Ok(a) => a,
        Err(e) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "webhook: not delivered");
            return Attempt::GiveUp;
        }
    };
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        match tls {
            None => exchange(stream, cfg, t, body).await,
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(t.host.clone()).ok()?;
                match connector.connect(name, stream).await {
                    Ok(s) => exchange(s, cfg, t, body).await,
                    Err(e) => {
                        tracing::warn!(error = %e, host = %t.host, "webhook: TLS handshake failed");
                        None
                    }
                }
            }
        }
    };
    match tokio::time::timeout(cfg.timeout, work).await {
        Ok(Some(s)) if s < 400 => Attempt::Ok,
        Ok(Some(s)) if s < 500 => {
            tracing::warn!(status = s, "webhook: refused by the receiver");
            Attempt::GiveUp
        }
        _ => Attempt::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;

    #[test]
    fn urls_are_parsed_and_internal_targets_named() {
        assert_eq!(
            parse_url("http://example.com/hook?x=1").unwrap(),
            Target {
                tls: false,
                host: "example.com".into(),
                port: 80,
                path: "/hook?x=1".into()
            }
        );
        assert_eq!(parse_url("http://[::1]:8080").unwrap().port, 8080);
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@h/",
            "http://h:0/",
            "http://h:x/",
            "x",
        ] {
            assert!(
                matches!(parse_url(bad), Err(WebhookError::Syntax(_))),
                "{bad}"
            );
        }
        let https = parse_url("HTTPS://x/").unwrap();
        assert!(https.tls && https.port == 443 && https.host == "x");
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(internal.parse().unwrap()), "{internal}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let t = parse_url("http://127.0.0.1:9/").unwrap();
        assert!(matches!(
            resolve_checked(&t, false),
            Err(WebhookError::Private(_))
        ));
        assert!(resolve_checked(&t, true).is_ok());
    }

    /// A one-thread HTTP server on loopback: records each request's body
    /// and signature header, answers with the next status of `script`
    /// (then 200).
    struct TestServer {
        addr: SocketAddr,
        seen: Seen,
    }

    /// Bodies and signature headers received, in order.
    type Seen = Arc<Mutex<Vec<(Vec<u8>, Option<String>)>>>;

    fn serve(listener: TcpListener, script: Vec<u16>) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut script = script.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                let mut sig = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let lower = l.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if lower.starts_with("x-pilot-signature-256:") {
                        sig = Some(l.split_once(':').unwrap().1.trim().to_owned());
                    }
                }
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                let status = script.next().unwrap_or(200);
                s.lock().unwrap().push((body, sig));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        TestServer { addr, seen }
    }

    fn fast(url: &str) -> WebhookConfig {
        WebhookConfig {
            allow_private: true,
            backoff: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            ..WebhookConfig::new(url)
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn events_arrive_in_order_signed_and_5xx_is_retried_4xx_not() {
        let srv = serve(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            vec![200, 503, 200, 404],
        );
        let mut cfg = fast(&format!("http://{}/hook", srv.addr));
        cfg.secret = Some(b"k".to_vec());
        let w = Webhook::start(cfg).unwrap();
        for i in 0..3 {
            assert!(w.push(format!("{{\"n\":{i}}}").into_bytes()));
        }
        // 0 → 200; 1 → 503 then 200 (retried); 2 → 404 (given up).
        wait_for("three events settled", || {
            w.stats().delivered.load(Ordering::Relaxed) + w.stats().failed.load(Ordering::Relaxed)
                == 3
        });
        let seen = srv.seen.lock().unwrap().clone();
        let bodies: Vec<String> = seen
            .iter()
            .map(|(b, _)| String::from_utf8(b.clone()).unwrap())
            .collect();
        assert_eq!(
            bodies,
            [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":1}"#, r#"{"n":2}"#]
        );
        assert_eq!(
            seen[0].1.as_deref(),
            Some(signature(b"k", br#"{"n":0}"#).as_str())
        );
        assert_eq!(w.stats().delivered.load(Ordering::Relaxed), 2);
        assert_eq!(w.stats().failed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_receiver_that_was_down_gets_the_event_on_a_retry() {
        // Reserve a port, close it: the first attempt is refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut cfg = fast(&format!("http://{port}/"));
        cfg.backoff = Duration::from_millis(400);
        let w = Webhook::start(cfg).unwrap();
        assert!(w.push(b"{\"up\":1}".to_vec()));
        std::thread::sleep(Duration::from_millis(100));
        let srv = serve(TcpListener::bind(port).unwrap(), vec![]);
        wait_for("delivery after the receiver came up", || {
            w.stats().delivered.load(Ordering::Relaxed) == 1
        });
        assert_eq!(srv.seen.lock().unwrap()[0].0, b"{\"up\":1}");
    }

    #[test]
    fn private_targets_are_refused_unless_allowed_and_the_breaker_opens() {
        let srv = serve(TcpListener::bind("127.0.0.1:0").unwrap(), vec![]);
        let mut cfg = fast(&format!("http://{}/", srv.addr));
        cfg.allow_private = false;
        cfg.breaker_failures = 2;
        cfg.breaker_open = Duration::from_secs(60);
        let w = Webhook::start(cfg).unwrap();
        for _ in 0..4 {
            w.push(b"{}".to_vec());
        }
        wait_for("all four settled", || {
            let s = w.stats();
            s.failed.load(Ordering::Relaxed) + s.circuit_skips.load(Ordering::Relaxed) == 4
        });
        assert_eq!(w.stats().refused.load(Ordering::Relaxed), 2);
        assert_eq!(w.stats().circuit_skips.load(Ordering::Relaxed), 2);
        assert!(
            srv.seen.lock().unwrap().is_empty(),
            "nothing reached loopback"
        );
        // Allowed explicitly: delivered.
        let w = Webhook::start(fast(&format!("http://{}/", srv.addr))).unwrap();
        w.push(b"{}".to_vec());
        wait_for("delivered", || {
            w.stats().delivered.load(Ordering::Relaxed) == 1
        });
    }

    /// Reads one HTTP request's body from `r` (headers up to the blank
    /// line, then `content-length` bytes).
    fn read_body(r: &mut impl BufRead) -> Vec<u8> {
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        body
    }

    /// An `https://127.0.0.1` server whose self-signed certificate is
    /// trusted only through `--webhook-ca`'s file (`load_roots`); without
    /// it the handshake fails and nothing is posted.
    #[test]
    fn https_targets_verify_against_the_configured_root() {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
        let server = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![ck.cert.der().clone()], key)
                .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicU64::new(0));
        let s = Arc::clone(&seen);
        let c = Arc::clone(&conns);
        std::thread::spawn(move || {
            for tcp in l.incoming() {
                let Ok(tcp) = tcp else { return };
                c.fetch_add(1, Ordering::Relaxed);
                let conn = rustls::ServerConnection::new(Arc::clone(&server)).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut r = BufReader::new(&mut tls);
                // A client that refused our certificate ends here.
                if r.fill_buf().map(|b| b.is_empty()).unwrap_or(true) {
                    continue;
                }
                let body = read_body(&mut r);
                s.lock().unwrap().push(body);
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                let _ = tls.flush();
            }
        });
        let url = format!("https://127.0.0.1:{port}/hook");

        // Only the system roots: the certificate does not verify.
        let mut cfg = fast(&url);
        cfg.attempts = 1;
        cfg.roots = Arc::new(load_roots(None).unwrap());
        let w = Webhook::start(cfg).unwrap();
        w.push(b"{\"n\":0}".to_vec());
        wait_for("the untrusted post failed", || {
            w.stats().failed.load(Ordering::Relaxed) == 1
        });
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(
            conns.load(Ordering::Relaxed),
            1,
            "it failed at TLS, not TCP"
        );

        // With the certificate as a configured root: delivered over TLS.
        let mut cfg = fast(&url);
        cfg.roots = Arc::new(load_roots(Some(&ca)).unwrap());
        let w = Webhook::start(cfg).unwrap();
        w.push(b"{\"n\":1}".to_vec());
        wait_for("delivered over TLS", || {
            w.stats().delivered.load(Ordering::Relaxed) == 1
        });
        assert_eq!(seen.lock().unwrap().as_slice(), [b"{\"n\":1}".to_vec()]);

        // A roots file without a certificate is refused up front.
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            load_roots(Some(&empty)),
            Err(WebhookError::Roots(_))
        ));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // A receiver that never answers holds the worker on the first event.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = fast(&format!("http://{}/", l.local_addr().unwrap()));
        cfg.queue = 2;
        cfg.attempts = 1;
        cfg.timeout = Duration::from_secs(30);
        let w = Webhook::start(cfg).unwrap();
        let mut accepted = 0;
        for _ in 0..10 {
            accepted += usize::from(w.push(b"{}".to_vec()));
        }
        assert!(accepted <= 3, "{accepted}");
        assert_eq!(
            w.stats().dropped.load(Ordering::Relaxed),
            10 - accepted as u64
        );
        drop(l);
    }
}
