//! Throughput of the real `pilot-rendezvous` binary on loopback (not a
//! test: it only prints figures). Run with
//! `cargo bench -p pilot-driver-mio --bench rendezvous`.
//!
//! Measures durable registrations/s (every reply after its change is
//! committed; commits grouped by the store's writer thread) and lookups/s
//! over `CONNS` client connections (64; `RV_BENCH_CONNS` overrides), one
//! request in flight each, and, as a yardstick in the same run, a bare
//! thread-per-connection TCP request/response echo with the same request
//! and reply sizes. Request frames are built before the clock starts.
//! Also: resident memory growth per registered node (embedded store), and
//! PostgreSQL (`spec/registry.md` §11.3) with 1, 2 and 3 frontends on one
//! database (a throwaway cluster; skipped when PostgreSQL is absent),
//! connections spread over the frontends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;

use pilot_proto::registry::auth::Identity;
use pilot_proto::registry::framing::{ResponseReader, request_frame};
use pilot_proto::registry::messages::{Lookup, Register, Request, Response};

const DEFAULT_CONNS: u32 = 64;
const REGISTRATIONS: u32 = 40_000;
const LOOKUPS: u32 = 200_000;
/// Registrations per PostgreSQL configuration.
const PG_REGISTRATIONS: u32 = 20_000;

fn conns() -> u32 {
    std::env::var("RV_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_CONNS)
}

fn register_frame(seed: u32) -> Vec<u8> {
    let mut s = [7u8; 32];
    s[..4].copy_from_slice(&seed.to_be_bytes());
    let req = Request::Register(Register {
        listen_addr: "127.0.0.1:4000".into(),
        public_key: Identity::from_seed(&s).public_key_b64(),
        ..Default::default()
    });
    request_frame(&req).unwrap()
}

fn lookup_frame(node_id: u32) -> Vec<u8> {
    request_frame(&Request::Lookup(Lookup { node_id })).unwrap()
}

/// Decodes one response body (as [`read_frame`] returns it).
fn decode(body: &[u8]) -> Response {
    let mut r = ResponseReader::default();
    r.push(&(body.len() as u32).to_be_bytes());
    r.push(body);
    r.next_response().unwrap().unwrap()
}

fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

/// Runs `per_conn` request/responses on each of `conns` connections in
/// parallel, the frames built beforehand by `frame(conn, i)`; returns
/// requests per second and the last reply size.
fn drive(
    addr: SocketAddr,
    conns: u32,
    per_conn: u32,
    frame: impl Fn(u32, u32) -> Vec<u8>,
) -> (f64, usize) {
    let frames: Vec<Vec<Vec<u8>>> = (0..conns)
        .map(|c| (0..per_conn).map(|i| frame(c, i)).collect())
        .collect();
    let streams: Vec<TcpStream> = (0..conns)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let threads: Vec<_> = streams
        .into_iter()
        .zip(frames)
        .map(|(mut s, frames)| {
            std::thread::spawn(move || {
                let mut size = 0;
                for f in &frames {
                    s.write_all(f).unwrap();
                    size = read_frame(&mut s).len();
                }
                size
            })
        })
        .collect();
    let mut size = 0;
    for t in threads {
        size = t.join().unwrap();
    }
    let n = f64::from(conns * per_conn);
    (n / start.elapsed().as_secs_f64(), size)
}

/// A bare echo-style server: reads a frame, answers `reply_len` bytes.
fn echo_server(reply_len: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                s.set_nodelay(true).unwrap();
                let mut reply = (reply_len as u32).to_be_bytes().to_vec();
                reply.resize(4 + reply_len, b'x');
                let mut len = [0u8; 4];
                while s.read_exact(&mut len).is_ok() {
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    if s.read_exact(&mut body).is_err() || s.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A running `pilot-rendezvous` on `store` (a file or a PostgreSQL URL).
struct Front {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_front(store: &std::path::Path) -> Front {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pilot-rendezvous"))
        .args([
            "--registry-addr",
            "127.0.0.1:0",
            "--beacon-addr",
            "127.0.0.1:0",
        ])
        .arg("--store")
        .arg(store)
        // Every client connects from 127.0.0.1.
        .args(["--no-rate-limits", "--max-conns-per-ip", "100000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("registry="))
        .expect("address line")
        .parse()
        .unwrap();
    Front { child, addr }
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Like [`drive`], connection `c` going to `addrs[c % addrs.len()]`.
fn drive_many(
    addrs: &[SocketAddr],
    conns: u32,
    per_conn: u32,
    frame: impl Fn(u32, u32) -> Vec<u8>,
) -> f64 {
    let frames: Vec<Vec<Vec<u8>>> = (0..conns)
        .map(|c| (0..per_conn).map(|i| frame(c, i)).collect())
        .collect();
    let streams: Vec<TcpStream> = (0..conns)
        .map(|c| {
            let s = TcpStream::connect(addrs[c as usize % addrs.len()]).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let threads: Vec<_> = streams
        .into_iter()
        .zip(frames)
        .map(|(mut s, frames)| {
            std::thread::spawn(move || {
                for f in &frames {
                    s.write_all(f).unwrap();
                    let reply = read_frame(&mut s);
                    assert!(
                        !reply.starts_with(br#"{"error""#),
                        "{}",
                        String::from_utf8_lossy(&reply)
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    f64::from(conns * per_conn) / start.elapsed().as_secs_f64()
}

/// PostgreSQL with 1, 2 and 3 frontends on one fresh database each;
/// skipped (saying why) when PostgreSQL is not installed.
fn postgres_rows(conns: u32) {
    let Some(pg) = common::Pg::start() else {
        println!("postgresql: skipped (not installed)");
        return;
    };
    let regs_per_conn = PG_REGISTRATIONS / conns;
    let lookups_per_conn = LOOKUPS / conns;
    let registered = conns * regs_per_conn;
    for n in 1..=3u32 {
        let url = pg.database(&format!("bench{n}"));
        let fronts: Vec<Front> = (0..n).map(|_| start_front(url.as_ref())).collect();
        let addrs: Vec<SocketAddr> = fronts.iter().map(|f| f.addr).collect();
        let regs = drive_many(&addrs, conns, regs_per_conn, |c, i| {
            register_frame(c * 1_000_000 + i)
        });
        // Node IDs come in leased blocks (not 1..=n): learn a sample.
        let ids: Vec<u32> = {
            let mut s = TcpStream::connect(addrs[0]).unwrap();
            // Re-register a sample to learn IDs (same key, same ID back).
            (0..conns)
                .flat_map(|c| (0..8).map(move |i| (c, i)))
                .map(|(c, i)| {
                    s.write_all(&register_frame(c * 1_000_000 + i)).unwrap();
                    let reply = read_frame(&mut s);
                    match decode(&reply) {
                        Response::RegisterOk(ok) => ok.node_id,
                        other => panic!("{other:?}"),
                    }
                })
                .collect()
        };
        let lookups = drive_many(&addrs, conns, lookups_per_conn, |c, i| {
            lookup_frame(ids[((c * 7919 + i) as usize) % ids.len()])
        });
        println!(
            "  postgresql, {n} frontend(s): register {regs:>8.0} req/s ({registered} nodes)   lookup {lookups:>8.0} req/s"
        );
        drop(fronts);
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("pilot-rv-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let front = start_front(&dir.join("bench.redb"));
    let addr = front.addr;
    let pid = front.child.id();
    let rss_before = rss(pid);
    let conns = conns();
    let regs_per_conn = REGISTRATIONS / conns;
    let lookups_per_conn = LOOKUPS / conns;
    let registered = conns * regs_per_conn;
    let reg_frame = |c: u32, i: u32| register_frame(c * 1_000_000 + i);
    let (regs, reg_reply) = drive(addr, conns, regs_per_conn, reg_frame);
    // Sanity: one lookup succeeds.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&lookup_frame(1)).unwrap();
    assert!(matches!(decode(&read_frame(&mut s)), Response::LookupOk(_)));
    let lk_frame = move |c: u32, i: u32| lookup_frame(1 + (c * 7919 + i) % registered);
    let (lookups, lookup_reply) = drive(addr, conns, lookups_per_conn, lk_frame);
    let rss_after = rss(pid);
    drop(front);
    let store_bytes = std::fs::metadata(dir.join("bench.redb")).map_or(0, |m| m.len());
    let _ = std::fs::remove_dir_all(&dir);

    let reg_req = register_frame(1).len() - 4;
    let lk_req = lookup_frame(1).len() - 4;
    let echo_reg = echo_server(reg_reply);
    let (echo_regs, _) = drive(echo_reg, conns, regs_per_conn, reg_frame);
    let echo_lk = echo_server(lookup_reply);
    let (echo_lookups, _) = drive(echo_lk, conns, lookups_per_conn, lk_frame);

    println!("pilot-rendezvous on loopback, {conns} connections, one request in flight each");
    println!(
        "  register: {regs:>10.0} req/s   ({registered} nodes; request {reg_req} B, reply {reg_reply} B; durable, group commit)"
    );
    println!(
        "  lookup:   {lookups:>10.0} req/s   ({} lookups; request {lk_req} B, reply {lookup_reply} B)",
        conns * lookups_per_conn
    );
    println!(
        "  store:    {store_bytes} B after {registered} registrations ({} B/node)",
        store_bytes / u64::from(registered.max(1))
    );
    println!(
        "  memory:   {} B resident growth for {registered} nodes ({} B/node)",
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) / u64::from(registered.max(1))
    );
    postgres_rows(conns);
    println!("bare TCP echo yardstick (thread per connection, same sizes, same run)");
    println!("  register-sized: {echo_regs:>10.0} req/s");
    println!("  lookup-sized:   {echo_lookups:>10.0} req/s");
}
