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
use pilot_proto::registry::codec::{
    Lookup, Register, Request, Response, decode_response, encode_request, frame_vec,
};

/// Bound on every wait in these tests.
pub const STEP: Duration = Duration::from_secs(20);

/// A running server process, killed on drop.
pub struct Rv {
    pub child: Child,
    pub registry: SocketAddr,
    pub beacon: SocketAddr,
}

impl Rv {
    /// Starts the binary on `store` with port 0 and waits for its
    /// `listening registry=… beacon=…` line.
    pub fn start(store: &Path, extra: &[&str]) -> Rv {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pilot-rendezvous"))
            .args([
                "--registry-addr",
                "127.0.0.1:0",
                "--beacon-addr",
                "127.0.0.1:0",
            ])
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
        Rv {
            registry: field("registry="),
            beacon: field("beacon="),
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
        let frame = frame_vec(&encode_request(req).unwrap()).unwrap();
        self.stream.write_all(&frame)?;
        self.read_response()
    }

    pub fn read_response(&mut self) -> std::io::Result<Response> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body)?;
        decode_response(&body).map_err(|e| std::io::Error::other(e.to_string()))
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
    pub fn lookup(&mut self, node_id: u32) -> Option<pilot_proto::registry::codec::LookupOk> {
        match self.call(&Request::Lookup(Lookup { node_id })) {
            Response::LookupOk(ok) => Some(ok),
            _ => None,
        }
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
