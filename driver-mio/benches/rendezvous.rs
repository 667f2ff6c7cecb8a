//! Throughput of the real `pilot-rendezvous` binary on loopback (not a
//! test: it only prints figures). Run with
//! `cargo bench -p pilot-driver-mio --bench rendezvous` (short mode:
//! 40,000 registered nodes) or `… -- --long` (1,000,000 registered nodes).
//!
//! Measures durable registrations/s (every reply after its change is
//! durable) and lookups/s over `CONNS` client connections (64;
//! `RV_BENCH_CONNS` overrides), one request in flight each, and, as a
//! yardstick in the same run, a bare TCP request/response echo with the
//! same request and reply sizes, served by one event-driven thread like the
//! registry's. One event-driven client thread drives all the connections
//! (of the registry and of the echo alike). Request frames are built
//! before the clock starts. The registry answers a connection's requests
//! in order, so a client may pipeline
//! (`spec/registry.md` §1.1): the "pipelined" rows keep [`PIPELINE`]
//! requests in flight per connection (written together, then the replies
//! read), against an echo driven the same way — the echo server, like the
//! registry, answers every complete frame it has read with one write.
//! Rows:
//! * the embedded store: the population registered (the rate over all of
//!   it; in long mode 900,000 one in flight and 100,000 pipelined), then
//!   lookups spread over it; resident memory per node;
//! * PostgreSQL (`spec/registry.md` §11.3, a throwaway cluster; skipped
//!   when PostgreSQL is absent or `RV_BENCH_NO_PG` is set) on one
//!   database: 1, then 2, then 3 frontends, each registering a third of
//!   the population (so the last row runs against the full population)
//!   and then looking up nodes, connections spread over the frontends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;

use pilot_proto::registry::auth::Identity;
use pilot_proto::registry::codec::decode_frame;
use pilot_proto::registry::framing::{ResponseReader, request_frame};
use pilot_proto::registry::limits::MAX_FRAME_LEN;
use pilot_proto::registry::messages::{Lookup, Register, Request, Response};

const DEFAULT_CONNS: u32 = 64;
/// Registered nodes: short mode, `--long`.
const POPULATION: u32 = 40_000;
const LONG_POPULATION: u32 = 1_000_000;
/// Lookups per row.
const LOOKUPS: u32 = 200_000;
/// Requests per echo yardstick.
const ECHOES: u32 = 200_000;
/// Requests in flight per connection in the pipelined rows.
const PIPELINE: usize = 16;
/// Further nodes registered by the pipelined registration row.
const PIPELINED_REGS: u32 = 100_000;

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

fn read_frame(s: &mut impl Read) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

/// Runs `per_conn` request/responses on each of `conns` connections,
/// connection `c` to `addrs[c % addrs.len()]`, one request in flight;
/// frames (`frame(conn, i)`) are built before the clock starts. Returns
/// requests per second and the last reply size; an error reply panics.
fn drive(
    addrs: &[SocketAddr],
    conns: u32,
    per_conn: u32,
    frame: impl Fn(u32, u32) -> Vec<u8>,
) -> (f64, usize) {
    drive_depth(addrs, conns, per_conn, 1, frame)
}

/// One client connection of [`drive_depth`].
struct Client {
    stream: mio::net::TcpStream,
    /// Rounds of requests: the bytes of `depth` frames, and how many.
    rounds: Vec<(Vec<u8>, usize)>,
    /// The round in flight, how much of it is written, replies awaited.
    round: usize,
    written: usize,
    awaited: usize,
    /// Bytes read and not yet parsed.
    inbuf: Vec<u8>,
}

impl Client {
    /// Writes what the kernel takes of the round in flight.
    fn flush(&mut self) {
        let Some((bytes, _)) = self.rounds.get(self.round) else {
            return;
        };
        while self.written < bytes.len() {
            match self.stream.write(&bytes[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("write: {e}"),
            }
        }
    }

    /// Reads what has arrived; counts complete replies, moving to the next
    /// round when the last one arrives; the last reply's size goes to
    /// `size`.
    fn receive(&mut self, chunk: &mut [u8], size: &mut usize) {
        loop {
            match self.stream.read(chunk) {
                Ok(0) => panic!("the server closed a connection"),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        let mut at = 0;
        while let Some((body, used)) = decode_frame(&self.inbuf[at..], MAX_FRAME_LEN).unwrap() {
            assert!(
                !body.starts_with(br#"{"error""#),
                "{}",
                String::from_utf8_lossy(body)
            );
            *size = body.len();
            at += used;
            self.awaited -= 1;
            if self.awaited == 0 {
                self.round += 1;
                self.written = 0;
                self.awaited = self.rounds.get(self.round).map_or(0, |r| r.1);
                self.flush();
            }
        }
        self.inbuf.drain(..at);
    }

    fn done(&self) -> bool {
        self.round >= self.rounds.len()
    }
}

/// [`drive`] with `depth` requests in flight per connection: each round
/// writes `depth` frames at once, then reads their `depth` replies. All
/// connections run on one event-driven client thread (epoll through mio),
/// so the load generator spends its CPU on the requests, not on switching
/// between 64 blocked threads; the echo yardstick is driven the same way.
fn drive_depth(
    addrs: &[SocketAddr],
    conns: u32,
    per_conn: u32,
    depth: usize,
    frame: impl Fn(u32, u32) -> Vec<u8>,
) -> (f64, usize) {
    let mut poll = mio::Poll::new().unwrap();
    let mut clients: Vec<Client> = (0..conns)
        .map(|c| {
            let frames: Vec<Vec<u8>> = (0..per_conn).map(|i| frame(c, i)).collect();
            let rounds: Vec<(Vec<u8>, usize)> = frames
                .chunks(depth)
                .map(|ch| (ch.concat(), ch.len()))
                .collect();
            let s = TcpStream::connect(addrs[c as usize % addrs.len()]).unwrap();
            s.set_nodelay(true).unwrap();
            s.set_nonblocking(true).unwrap();
            let mut stream = mio::net::TcpStream::from_std(s);
            poll.registry()
                .register(
                    &mut stream,
                    mio::Token(c as usize),
                    mio::Interest::READABLE | mio::Interest::WRITABLE,
                )
                .unwrap();
            let awaited = rounds.first().map_or(0, |r| r.1);
            Client {
                stream,
                rounds,
                round: 0,
                written: 0,
                awaited,
                inbuf: Vec::with_capacity(64 * 1024),
            }
        })
        .collect();
    let mut events = mio::Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut size = 0;
    let start = Instant::now();
    for c in &mut clients {
        c.flush();
    }
    let mut left = clients.iter().filter(|c| !c.done()).count();
    while left > 0 {
        poll.poll(&mut events, Some(std::time::Duration::from_secs(30)))
            .unwrap();
        assert!(!events.is_empty(), "no reply within 30 s");
        for ev in &events {
            let c = &mut clients[ev.token().0];
            if c.done() {
                continue;
            }
            if ev.is_writable() {
                c.flush();
            }
            if ev.is_readable() {
                c.receive(&mut chunk, &mut size);
                if c.done() {
                    left -= 1;
                }
            }
        }
    }
    let n = f64::from(conns * per_conn);
    (n / start.elapsed().as_secs_f64(), size)
}

/// A bare echo-style server on one event-driven thread (epoll through mio,
/// like the registry's event loop): answers every complete request frame
/// it has read with `reply_len` bytes, all of one read's replies in one
/// write.
fn echo_server(reply_len: usize) -> SocketAddr {
    let std_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_l.local_addr().unwrap();
    std_l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        const LISTENER: mio::Token = mio::Token(usize::MAX);
        let mut l = mio::net::TcpListener::from_std(std_l);
        let mut poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(&mut l, LISTENER, mio::Interest::READABLE)
            .unwrap();
        let mut reply = (reply_len as u32).to_be_bytes().to_vec();
        reply.resize(4 + reply_len, b'x');
        // Per connection: the stream, unparsed bytes, unwritten replies.
        type EchoConn = (mio::net::TcpStream, Vec<u8>, Vec<u8>);
        let mut conns: Vec<Option<EchoConn>> = Vec::new();
        let mut events = mio::Events::with_capacity(1024);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if poll.poll(&mut events, None).is_err() {
                return;
            }
            for ev in &events {
                if ev.token() == LISTENER {
                    while let Ok((mut s, _)) = l.accept() {
                        s.set_nodelay(true).unwrap();
                        let t = mio::Token(conns.len());
                        poll.registry()
                            .register(&mut s, t, mio::Interest::READABLE | mio::Interest::WRITABLE)
                            .unwrap();
                        conns.push(Some((s, Vec::with_capacity(64 * 1024), Vec::new())));
                    }
                    continue;
                }
                let slot = &mut conns[ev.token().0];
                let Some((s, buf, out)) = slot.as_mut() else {
                    continue;
                };
                let mut closed = false;
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let mut at = 0;
                while let Ok(Some((_, used))) = decode_frame(&buf[at..], MAX_FRAME_LEN) {
                    at += used;
                    out.extend_from_slice(&reply);
                }
                buf.drain(..at);
                while !out.is_empty() && !closed {
                    match s.write(out) {
                        Ok(n) => {
                            out.drain(..n);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => closed = true,
                    }
                }
                if closed {
                    *slot = None;
                }
            }
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

/// Seconds of the clock-tick fields 11..=`last` of `/proc/PID/stat`
/// (counted after the parenthesised command name): 11 user, 12 system,
/// 13 and 14 the same of children that ended and were waited for.
fn stat_secs(pid: u32, last: usize) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = (11..=last)
                .map(|i| f.get(i)?.parse::<u64>().ok())
                .sum::<Option<u64>>()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// CPU time (user + system) a process has used, seconds.
fn cpu_secs(pid: u32) -> f64 {
    stat_secs(pid, 12)
}

/// CPU seconds of `pid` plus those of its children that ended (and were
/// waited for).
fn cpu_secs_with_ended_children(pid: u32) -> f64 {
    stat_secs(pid, 14)
}

/// CPU seconds used so far by the PostgreSQL cluster in `data` (the
/// postmaster and every process it started: backends, WAL writer, …,
/// and, through the postmaster's children times, those that ended, such
/// as autovacuum workers).
fn pg_cpu_secs(data: &std::path::Path) -> f64 {
    let Some(master) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
    else {
        return 0.0;
    };
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(master)
        })
        .map(cpu_secs)
        .sum();
    cpu_secs_with_ended_children(master) + children
}

/// Seed of connection `c`'s `i`-th registration.
fn seed(c: u32, i: u32) -> u32 {
    c * 100_000 + i
}

/// Every how many registrations of a connection one is sampled, for
/// about 2,000 samples out of `registered`.
fn sample_step(registered: u32) -> usize {
    (registered / 2_000).max(1) as usize
}

/// Node IDs of a sample of the registered identities (re-registering an
/// identity answers its ID).
fn sample_ids(addr: SocketAddr, seeds: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut s = TcpStream::connect(addr).unwrap();
    seeds
        .map(|sd| {
            s.write_all(&register_frame(sd)).unwrap();
            match decode(&read_frame(&mut s)) {
                Response::RegisterOk(ok) => ok.node_id,
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

/// PostgreSQL on one database: 1, then 2, then 3 frontends, each
/// registering a third of `population`; skipped (saying why) when
/// PostgreSQL is not installed.
fn postgres_rows(conns: u32, population: u32) {
    let Some(pg) = common::Pg::start() else {
        println!("  postgresql: skipped (not installed)");
        return;
    };
    let url = pg.database("bench");
    let per_conn = population / 3 / conns;
    let lookups_per_conn = LOOKUPS / conns;
    let mut registered = 0;
    let mut fronts: Vec<Front> = Vec::new();
    for n in 1..=3u32 {
        fronts.push(start_front(url.as_ref()));
        let addrs: Vec<SocketAddr> = fronts.iter().map(|f| f.addr).collect();
        let base = (n - 1) * per_conn;
        let rss0: u64 = fronts.iter().map(|f| rss(f.child.id())).sum();
        let data = pg.dir.path().join("data");
        let (db0, fe0) = (
            pg_cpu_secs(&data),
            fronts.iter().map(|f| cpu_secs(f.child.id())).sum::<f64>(),
        );
        let (regs, _) = drive(&addrs, conns, per_conn, move |c, i| {
            register_frame(seed(c, base + i))
        });
        let (db1, fe1) = (
            pg_cpu_secs(&data),
            fronts.iter().map(|f| cpu_secs(f.child.id())).sum::<f64>(),
        );
        let k = f64::from(conns * per_conn) / 1000.0;
        registered += conns * per_conn;
        let rss1: u64 = fronts.iter().map(|f| rss(f.child.id())).sum();
        // Node IDs come in leased blocks (not 1..=n): learn a sample.
        let ids = Arc::new(sample_ids(
            addrs[0],
            (0..conns).flat_map(|c| {
                (0..(base + per_conn))
                    .step_by(sample_step(conns * (base + per_conn)))
                    .map(move |i| seed(c, i))
            }),
        ));
        let (lookups, _) = drive(&addrs, conns, lookups_per_conn, move |c, i| {
            lookup_frame(ids[((c * 7919 + i) as usize) % ids.len()])
        });
        println!(
            "  postgresql, {n} frontend(s): register {regs:>8.0} req/s (+{} nodes, {registered} registered)   lookup {lookups:>8.0} req/s   frontends' resident growth {} B",
            conns * per_conn,
            rss1.saturating_sub(rss0)
        );
        println!(
            "    CPU per 1,000 registrations: database {:.3} s, frontends {:.3} s",
            (db1 - db0) / k,
            (fe1 - fe0) / k
        );
    }
}

/// The echo yardstick for requests like `frame` answered with
/// `reply_len` bytes.
fn echo(conns: u32, reply_len: usize, depth: usize, frame: impl Fn(u32, u32) -> Vec<u8>) -> f64 {
    let addr = echo_server(reply_len);
    drive_depth(&[addr], conns, ECHOES / conns, depth, frame).0
}

fn main() {
    let long = std::env::args().any(|a| a == "--long");
    let population = if long { LONG_POPULATION } else { POPULATION };
    let dir = std::env::temp_dir().join(format!("pilot-rv-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let front = start_front(&dir.join("bench.redb"));
    let addr = front.addr;
    let pid = front.child.id();
    let rss_before = rss(pid);
    let conns = conns();
    // The pipelined row adds PIPELINED_REGS nodes; in long mode they are
    // part of the million (the registry holds at most 1,000,000 nodes by
    // default and refuses more).
    let plain_population = if long {
        population - PIPELINED_REGS
    } else {
        population
    };
    let regs_per_conn = plain_population / conns;
    let lookups_per_conn = LOOKUPS / conns;
    let registered = conns * regs_per_conn;
    println!(
        "pilot-rendezvous on loopback, {conns} connections, one request in flight each, {} mode",
        if long { "long" } else { "short" }
    );
    let started = Instant::now();
    let (regs, reg_reply) = drive(&[addr], conns, regs_per_conn, |c, i| {
        register_frame(seed(c, i))
    });
    let reg_secs = started.elapsed().as_secs_f64();
    let ids = Arc::new(sample_ids(
        addr,
        (0..conns).flat_map(|c| {
            (0..regs_per_conn)
                .step_by(sample_step(registered))
                .map(move |i| seed(c, i))
        }),
    ));
    let lk_ids = ids.clone();
    let (lookups, lookup_reply) = drive(&[addr], conns, lookups_per_conn, move |c, i| {
        lookup_frame(lk_ids[((c * 7919 + i) as usize) % lk_ids.len()])
    });
    let rss_after = rss(pid);
    // Pipelined: further new nodes, then lookups, PIPELINE in flight.
    let pipe_regs_per_conn = PIPELINED_REGS / conns;
    let (pipe_regs, _) = drive_depth(&[addr], conns, pipe_regs_per_conn, PIPELINE, move |c, i| {
        register_frame(seed(c, regs_per_conn + i))
    });
    let lk_ids = ids.clone();
    let (pipe_lookups, _) = drive_depth(&[addr], conns, lookups_per_conn, PIPELINE, move |c, i| {
        lookup_frame(lk_ids[((c * 7919 + i) as usize) % lk_ids.len()])
    });
    drop(front);
    let store_bytes = std::fs::metadata(dir.join("bench.redb")).map_or(0, |m| m.len());
    let _ = std::fs::remove_dir_all(&dir);

    let reg_req = register_frame(1).len() - 4;
    let lk_req = lookup_frame(1).len() - 4;
    let echo_regs = echo(conns, reg_reply, 1, |c, i| register_frame(seed(c, i)));
    let lk_ids = ids.clone();
    let echo_lookups = echo(conns, lookup_reply, 1, move |c, i| {
        lookup_frame(lk_ids[((c * 7919 + i) as usize) % lk_ids.len()])
    });
    let echo_pipe_regs = echo(conns, reg_reply, PIPELINE, |c, i| {
        register_frame(seed(c, i))
    });
    let echo_pipe_lookups = echo(conns, lookup_reply, PIPELINE, move |c, i| {
        lookup_frame(ids[((c * 7919 + i) as usize) % ids.len()])
    });
    println!(
        "  embedded register: {regs:>10.0} req/s   ({registered} nodes in {reg_secs:.1} s; request {reg_req} B, reply {reg_reply} B; durable)"
    );
    println!(
        "  embedded lookup:   {lookups:>10.0} req/s   ({} lookups over {registered} nodes; request {lk_req} B, reply {lookup_reply} B)",
        conns * lookups_per_conn
    );
    let stored = registered + conns * pipe_regs_per_conn;
    println!(
        "  embedded store:    {store_bytes} B after {stored} registrations ({} B/node)",
        store_bytes / u64::from(stored.max(1))
    );
    println!(
        "  embedded memory:   {} B resident growth for {registered} nodes ({} B/node)",
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) / u64::from(registered.max(1))
    );
    println!(
        "  pipelined ({PIPELINE} in flight per connection): register {pipe_regs:>10.0} req/s (+{} nodes; durable)   lookup {pipe_lookups:>10.0} req/s",
        conns * pipe_regs_per_conn
    );
    println!("bare TCP echo yardstick (one event-loop thread, same sizes, same run)");
    println!("  register-sized:    {echo_regs:>10.0} req/s");
    println!("  lookup-sized:      {echo_lookups:>10.0} req/s");
    println!(
        "  pipelined ({PIPELINE} in flight): register-sized {echo_pipe_regs:>10.0} req/s   lookup-sized {echo_pipe_lookups:>10.0} req/s"
    );
    println!(
        "ratios: register {:.2} of echo ({:.2} pipelined), lookup {:.2} of echo ({:.2} pipelined)",
        regs / echo_regs,
        pipe_regs / echo_pipe_regs,
        lookups / echo_lookups,
        pipe_lookups / echo_pipe_lookups
    );
    if std::env::var_os("RV_BENCH_NO_PG").is_none() {
        postgres_rows(conns, population);
        let echo_regs = echo(conns, reg_reply, 1, |c, i| register_frame(seed(c, i)));
        println!("  register-sized echo after the PostgreSQL rows: {echo_regs:>10.0} req/s");
    }
}
