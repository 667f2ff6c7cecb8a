//! Against real `pilot-daemon` processes on loopback: an embedded node
//! talking to a daemon, and two applications talking through two daemons.
//!
//! Finding the binary: `PILOT_DAEMON_BIN` if set; else `pilot-daemon` next
//! to this test's own `deps/` directory (present after `cargo test
//! --workspace` or any build of `pilot-driver-mio`'s binaries); else the
//! test runs `cargo build -p pilot-driver-mio --bin pilot-daemon
//! --message-format=json` (same toolchain and target dir as this test) and
//! takes the executable path cargo reports. The registry and beacon are the
//! project's rendezvous server, run in-process on ephemeral ports; every
//! daemon gets its own temp dir and socket.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use pilot_driver_mio::rendezvous::server::{Server, ServerConfig};
use pilot_driver_tokio::{Addr, DaemonClient, Node, NodeConfig, Pilot, RegistryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(120);

fn daemon_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("PILOT_DAEMON_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().unwrap();
        if let Some(dir) = exe.parent().and_then(Path::parent) {
            let p = dir.join("pilot-daemon");
            if p.is_file() {
                return p;
            }
        }
        // Built in this test's own profile, so a `--release` test run
        // (the README's) reuses its artifacts instead of a debug build.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut args = vec![
            "build",
            "-p",
            "pilot-driver-mio",
            "--bin",
            "pilot-daemon",
            "--message-format=json",
        ];
        if !cfg!(debug_assertions) {
            args.push("--release");
        }
        let out = Command::new(cargo)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(out.status.success(), "building pilot-daemon failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"]["name"] == "pilot-daemon")
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no pilot-daemon executable")
    })
    .clone()
}

/// Registry and beacon in-process on ephemeral loopback ports.
fn start_rendezvous(dir: &Path) -> (SocketAddr, SocketAddr) {
    let mut cfg = ServerConfig::new(dir.join("registry.redb"));
    cfg.registry_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.beacon_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = Server::bind(cfg).unwrap();
    let addrs = (
        server.registry_addr().unwrap(),
        server.beacon_addr().unwrap(),
    );
    std::thread::spawn(move || server.run());
    addrs
}

/// A `pilot-daemon` child process, killed on drop.
struct Daemon {
    child: Child,
    address: Addr,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, k: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(k))
        .unwrap_or_else(|| panic!("no {k} in {line:?}"))
}

/// Starts a public daemon with state in `dir` and waits for its
/// `ready …` line.
fn start_daemon(rv: (SocketAddr, SocketAddr), dir: &Path) -> Daemon {
    std::fs::create_dir_all(dir).unwrap();
    let socket = dir.join("pilot.sock");
    let mut child = Command::new(daemon_bin())
        .arg("--registry")
        .arg(rv.0.to_string())
        .arg("--beacon")
        .arg(rv.1.to_string())
        .arg("--dir")
        .arg(dir)
        .arg("--socket")
        .arg(&socket)
        .args(["--listen", "127.0.0.1:0", "--public"])
        .env("RUST_LOG", "warn")
        .env_remove("PILOT_SOCKET")
        .env_remove("PILOT_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pilot-daemon");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(l) if l.starts_with("ready ") => l,
        other => {
            let _ = child.kill();
            panic!("daemon did not become ready: {other:?}");
        }
    };
    Daemon {
        address: field(&line, "address=").parse().unwrap(),
        socket: PathBuf::from(field(&line, "socket=")),
        child,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 131 + i / 4099) as u8) ^ seed)
        .collect()
}

/// Sends `data` on a fresh stream from `from` to `to:port`, where an echo
/// service answers; returns what came back.
async fn echo_via(from: &Pilot, to: Addr, port: u16, data: &[u8]) -> Vec<u8> {
    let s = from.connect(to, port).await.unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let up = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&up).await.unwrap();
        w.flush().await.unwrap();
        w
    });
    let mut back = vec![0u8; data.len()];
    r.read_exact(&mut back).await.unwrap();
    drop(writer.await.unwrap());
    back
}

/// Serves an echo on `port` of `p` until the listener fails.
async fn serve_echo(p: &Pilot, port: u16) {
    let l = p.listen(port).await.unwrap();
    tokio::spawn(async move {
        while let Ok(s) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(s);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let _ = w.flush().await;
                        }
                    }
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_node_and_real_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start_rendezvous(dir.path());
    let d = start_daemon(rv, &dir.path().join("d"));

    let mut rc = RegistryConfig::new(rv.0);
    rc.public = true;
    let node: Pilot = Node::start(NodeConfig::with_registry(rc))
        .await
        .unwrap()
        .into();

    // Embedded node → the daemon's built-in echo service (port 7).
    let data = pattern(3, 256 * 1024);
    let back = timeout(LIMIT, echo_via(&node, d.address, 7, &data))
        .await
        .unwrap();
    assert!(back == data, "daemon echo corrupted the data");

    // An application on the daemon (IPC client) ↔ the embedded node, both
    // directions.
    let app: Pilot = DaemonClient::open(&d.socket).await.unwrap().into();
    assert_eq!(app.addr().await.unwrap(), d.address);
    serve_echo(&node, 2000).await;
    serve_echo(&app, 2001).await;
    let naddr = node.addr().await.unwrap();
    let back = timeout(LIMIT, echo_via(&app, naddr, 2000, &data))
        .await
        .unwrap();
    assert!(back == data, "app → embedded echo corrupted");
    let back = timeout(LIMIT, echo_via(&node, d.address, 2001, &data))
        .await
        .unwrap();
    assert!(back == data, "embedded → app echo corrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applications_through_two_daemons() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start_rendezvous(dir.path());
    let da = start_daemon(rv, &dir.path().join("a"));
    let db = start_daemon(rv, &dir.path().join("b"));
    let app_a: Pilot = DaemonClient::open(&da.socket).await.unwrap().into();
    let app_b: Pilot = DaemonClient::open(&db.socket).await.unwrap().into();

    // Streams: b's application serves, a's dials through both daemons.
    serve_echo(&app_b, 3000).await;
    let data = pattern(7, 1 << 20);
    let back = timeout(LIMIT, echo_via(&app_a, db.address, 3000, &data))
        .await
        .unwrap();
    assert!(back == data, "echo through two daemons corrupted");

    // Datagrams between the two applications.
    let sock_b = app_b.bind_datagram(4000).await.unwrap();
    let got = timeout(LIMIT, async {
        loop {
            app_a
                .send_datagram(db.address, 4000, b"through two daemons")
                .await
                .unwrap();
            if let Ok(Ok(g)) = timeout(Duration::from_millis(500), sock_b.recv_from()).await {
                break g;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got.data, b"through two daemons");
    assert_eq!(got.src, da.address);
    assert_eq!(got.dst_port, 4000);
}
