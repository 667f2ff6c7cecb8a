//! Helpers for the real-process tests: spawn `pilot-rendezvous` on ephemeral
//! loopback ports, talk to it over real sockets, kill it on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pilot_proto::registry::auth::Identity;
use pilot_proto::registry::framing::{ResponseReader, request_frame};
use pilot_proto::registry::messages::{Lookup, LookupOk, Register, Request, Response};

/// Bound on every wait in these tests.
pub const STEP: Duration = Duration::from_secs(20);

/// A running server process, killed on drop.
pub struct Rv {
    pub child: Child,
    pub registry: SocketAddr,
    pub beacon: SocketAddr,
    /// `--metrics-addr`, when given.
    pub metrics: Option<SocketAddr>,
    /// `--http-addr`, when given.
    pub http: Option<SocketAddr>,
}

impl Rv {
    /// Starts the binary on `store` with port 0 and waits for its
    /// `listening registry=… beacon=…` line.
    pub fn start(store: &Path, extra: &[&str]) -> Rv {
        Rv::start_at(store, "127.0.0.1:0", extra)
    }

    /// [`Rv::start`] with the beacon on `beacon` (`host:port`).
    pub fn start_at(store: &Path, beacon: &str, extra: &[&str]) -> Rv {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pilot-rendezvous"))
            .args(["--registry-addr", "127.0.0.1:0", "--beacon-addr", beacon])
            .arg("--store")
            .arg(store)
            .args(["--no-rate-limits", "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pilot-rendezvous");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(STEP) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not report its addresses");
            }
        };
        let field = |k: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .parse()
                .unwrap()
        };
        let optional = |k: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(|a| a.parse().unwrap())
        };
        Rv {
            registry: field("registry="),
            beacon: field("beacon="),
            metrics: optional("metrics="),
            http: optional("http="),
            child,
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + STEP;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Rv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry client over one TCP connection.
pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, STEP).expect("connect");
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream.set_write_timeout(Some(STEP)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream }
    }

    /// One request/response; `Err` if the connection failed or closed.
    pub fn try_call(&mut self, req: &Request) -> std::io::Result<Response> {
        self.stream.write_all(&frame(req))?;
        self.read_response()
    }

    pub fn read_response(&mut self) -> std::io::Result<Response> {
        read_response(&mut self.stream)
    }

    pub fn call(&mut self, req: &Request) -> Response {
        self.try_call(req).expect("request failed")
    }

    /// Registers the identity of `seed`, returning the node ID.
    pub fn try_register(&mut self, seed: u32) -> std::io::Result<u32> {
        match self.try_call(&register_req(seed))? {
            Response::RegisterOk(ok) => Ok(ok.node_id),
            other => Err(std::io::Error::other(format!("{other:?}"))),
        }
    }

    pub fn register(&mut self, seed: u32) -> u32 {
        self.try_register(seed).expect("register")
    }

    /// Looks up a node; `None` if the registry does not know it.
    pub fn lookup(&mut self, node_id: u32) -> Option<LookupOk> {
        match self.call(&Request::Lookup(Lookup { node_id })) {
            Response::LookupOk(ok) => Some(ok),
            _ => None,
        }
    }
}

/// `req` as one frame.
pub fn frame(req: &Request) -> Vec<u8> {
    request_frame(req).expect("encodable request")
}

/// Reads exactly one response frame from `r`.
pub fn read_response(r: &mut impl Read) -> std::io::Result<Response> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body)?;
    let mut reader = ResponseReader::default();
    reader.push(&len);
    reader.push(&body);
    match reader.next_response() {
        Ok(Some(resp)) => Ok(resp),
        Ok(None) => Err(std::io::Error::other("incomplete response")),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// The identity of a test node.
pub fn ident(seed: u32) -> Identity {
    let mut s = [0x5au8; 32];
    s[..4].copy_from_slice(&seed.to_be_bytes());
    Identity::from_seed(&s)
}

pub fn register_req(seed: u32) -> Request {
    Request::Register(Register {
        listen_addr: "127.0.0.1:4000".into(),
        public_key: ident(seed).public_key_b64(),
        ..Default::default()
    })
}

/// Signature of `challenge` by the identity of `seed` (the legacy form).
pub fn sign(seed: u32, challenge: &str) -> String {
    ident(seed).sign_b64(challenge.as_bytes())
}

/// A throwaway PostgreSQL cluster in a temporary directory (`initdb` +
/// `pg_ctl`, as the `postgres` user when run as root), listening on a
/// free loopback port; stopped and deleted on drop, also after a failed
/// assertion.
pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: std::path::PathBuf,
    as_postgres: bool,
}

/// The directory of PostgreSQL's server binaries, if installed.
fn pg_bin() -> Option<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Pg {
    /// Starts a cluster; `None` (after saying so on stderr) only when
    /// PostgreSQL is not installed. Any other failure panics.
    pub fn start() -> Option<Pg> {
        let Some(bin) = pg_bin() else {
            eprintln!("SKIP: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)");
            return None;
        };
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("pilot-pg")
            .tempdir()
            .expect("temp dir");
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown of the cluster directory failed");
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pg = Pg {
            dir,
            port,
            bin,
            as_postgres,
        };
        let data = pg.data();
        let out = pg
            .cmd("initdb")
            .args(["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.ctl_start();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// (Re)starts the server and waits until it accepts connections.
    pub fn ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let out = self
            .cmd("pg_ctl")
            .args([
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Stops the server at once (`-m immediate`: like a crash).
    pub fn ctl_stop(&self) {
        let _ = self
            .cmd("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Runs `sql` in database `name` with `psql` and returns its output
    /// (unaligned, tuples only).
    #[allow(dead_code)]
    pub fn sql(&self, name: &str, sql: &str) -> String {
        let out = self
            .psql(name)
            .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `psql` connected to database `db` of this cluster as `postgres`.
    fn psql(&self, db: &str) -> Command {
        let mut c = self.cmd("psql");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db]);
        c
    }

    /// Creates database `name` (if absent) and returns its URL.
    pub fn database(&self, name: &str) -> String {
        let out = self
            .psql("postgres")
            .arg("-tAc")
            .arg(format!("CREATE DATABASE \"{name}\""))
            .output()
            .expect("psql");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("already exists"),
            "create database: {err}"
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.ctl_stop();
    }
}

/// Where a test keeps its registry: a redb file or a PostgreSQL database.
pub enum Backend {
    Redb(tempfile::TempDir),
    Postgres(Pg),
}

impl Backend {
    /// Every backend available here: redb always, PostgreSQL when
    /// installed (a skip message otherwise).
    pub fn all() -> Vec<Backend> {
        let mut v = vec![Backend::Redb(tempfile::tempdir().unwrap())];
        if let Some(pg) = Pg::start() {
            v.push(Backend::Postgres(pg));
        }
        v
    }

    /// The `--store` value for store `name` (a file, or a database).
    pub fn store(&self, name: &str) -> std::path::PathBuf {
        match self {
            Backend::Redb(dir) => dir.path().join(format!("{name}.redb")),
            Backend::Postgres(pg) => pg.database(name).into(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Redb(_) => "redb",
            Backend::Postgres(_) => "postgres",
        }
    }
}
