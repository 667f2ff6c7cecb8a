//! The data-path benchmark (issue #14): one table, every row measured in
//! the same run, each Pilot row also as a ratio to kernel TCP over
//! loopback. The three Pilot throughput rows run in rounds (3 in the full
//! run), each round a kernel TCP transfer followed at once by the Pilot
//! transfer: the ratio of a round compares the two under the same state
//! of the machine (this VM's speed drifts by up to 1.7× within a run),
//! and the row shows the median round (its throughput, CPU and ratio),
//! with every round's ratio and the ratio to the run's best kernel TCP
//! (start, end and all rounds) in its note. Other throughput rows are
//! taken against that best kernel TCP.
//!
//! `cargo bench -p pilot-driver-mio --bench datapath` (full), or
//! `cargo bench -p pilot-driver-mio --bench datapath -- --short` for a
//! quick smoke run (small sizes, fewer samples; `PILOT_BENCH_SHORT=1`
//! does the same), `-- --rss` for the memory rows alone (idle daemon RSS
//! and RSS per idle connection; `PILOT_BENCH_RSS=1` does the same),
//! `-- --loss` for the lossy rows alone and `-- --embedded` for the
//! embedded row alone (for profiling the node and the tokio driver).
//!
//! Rows: kernel TCP (one stream, 1 MiB writes), raw UDP (one datagram per
//! `send_to`, the size of a full Pilot data packet, as the daemon sends
//! today), one core of AES-256-GCM (ring and RustCrypto) sealing 1152 and
//! 4096 B, envelope seal+open vs the bare ring AEAD on the same buffers,
//! embedded node → embedded node one way (driver-tokio), daemon → daemon
//! one way through IPC, `pilotctl bench` (echo), dial to first byte on a
//! warm tunnel, 1 000 concurrent dials, idle RSS and RSS per idle
//! connection, and goodput under 1 % random UDP loss in a private network
//! namespace (iptables `statistic`), skipped with a message where
//! namespaces or iptables are unavailable.
//!
//! CPU seconds per GiB add up every process involved (this one via
//! `getrusage`, the daemons via `/proc/PID/stat`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pilot_driver_mio::ipc_client::IpcClient;
use pilot_proto::WireProfile;
use pilot_proto::addr::Addr;
use pilot_proto::crypto::envelope::Envelope;
use pilot_proto::crypto::provider::{CryptoProvider, Ring, RustCrypto};
use pilot_proto::wire::ipc::{IpcMessage, LENGTH_PREFIX_LEN, encode_frame};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

/// Sizes and sample counts of one run.
struct Plan {
    tcp_bytes: usize,
    /// Rounds of each paired Pilot throughput row.
    rounds: usize,
    udp_datagrams: usize,
    aead_secs: f64,
    embedded_bytes: usize,
    daemon_bytes: usize,
    echo_mib: f64,
    dial_samples: usize,
    concurrent_dials: usize,
    lossy_bytes: usize,
}

impl Plan {
    fn new(short: bool) -> Plan {
        if short {
            Plan {
                tcp_bytes: 256 << 20,
                rounds: 1,
                udp_datagrams: 50_000,
                aead_secs: 0.2,
                embedded_bytes: 16 << 20,
                daemon_bytes: 16 << 20,
                echo_mib: 8.0,
                dial_samples: 30,
                concurrent_dials: 1000,
                lossy_bytes: 4 << 20,
            }
        } else {
            Plan {
                tcp_bytes: 2 << 30,
                rounds: 3,
                udp_datagrams: 400_000,
                aead_secs: 1.0,
                // Pilot transfers long enough that start-up (process,
                // dial, slow start, window growth) is a small part, like
                // the 2 GiB kernel transfer they are compared with.
                embedded_bytes: 1 << 30,
                daemon_bytes: 512 << 20,
                echo_mib: 512.0,
                dial_samples: 300,
                concurrent_dials: 1000,
                lossy_bytes: 32 << 20,
            }
        }
    }
}

// ---------------------------------------------------------------- output

struct Row {
    name: String,
    value: String,
    cpu_per_gib: Option<f64>,
    /// Throughput of a rate row (its ratio is taken when printing, against
    /// the best kernel TCP measurement of the run) ...
    mib_s: Option<f64>,
    /// ... unless it is a paired row: the median round's ratio to the
    /// kernel TCP transfer just before it.
    paired: Option<f64>,
    note: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    tcp_mib_s: f64,
}

impl Table {
    fn add(&mut self, name: &str, value: String, cpu: Option<f64>, note: &str) {
        eprintln!("  {name}: {value} {note}");
        self.rows.push(Row {
            name: name.into(),
            value,
            cpu_per_gib: cpu,
            mib_s: None,
            paired: None,
            note: note.into(),
        });
    }

    /// A throughput row with its ratio to kernel TCP.
    fn rate(&mut self, name: &str, mib_s: f64, cpu: Option<f64>, note: &str) {
        self.add(name, format!("{mib_s:.1} MiB/s"), cpu, note);
        if let Some(r) = self.rows.last_mut() {
            r.mib_s = Some(mib_s);
        }
    }

    /// A Pilot throughput row measured in rounds, each a kernel TCP
    /// transfer of `tcp_bytes` and then `run` (MiB/s, CPU s/GiB): the
    /// median round by ratio is shown.
    fn paired(
        &mut self,
        name: &str,
        note: &str,
        rounds: usize,
        tcp_bytes: usize,
        mut run: impl FnMut() -> (f64, f64),
    ) {
        let mut got: Vec<(f64, f64, f64)> = Vec::new();
        for i in 0..rounds.max(1) {
            let (tcp, _) = kernel_tcp_run(tcp_bytes);
            self.tcp_mib_s = self.tcp_mib_s.max(tcp);
            let (mib_s, cpu) = run();
            eprintln!(
                "  {name}, round {}: {mib_s:.1} MiB/s after kernel TCP {tcp:.1} MiB/s ({:.1} %)",
                i + 1,
                mib_s / tcp * 100.0
            );
            got.push((mib_s / tcp, mib_s, cpu));
        }
        let all: Vec<String> = got.iter().map(|g| format!("{:.1}", g.0 * 100.0)).collect();
        got.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, mib_s, cpu) = got[got.len() / 2];
        self.rate(name, mib_s, Some(cpu), note);
        if let Some(r) = self.rows.last_mut() {
            r.paired = Some(ratio);
            r.note = format!(
                "{note}; rounds {} % of the kernel TCP just before",
                all.join(" / ")
            );
        }
    }

    fn print(&self) {
        println!("| row | result | CPU s/GiB | vs kernel TCP | note |");
        println!("|---|---|---|---|---|");
        for r in &self.rows {
            let cpu = r.cpu_per_gib.map_or("".into(), |c| format!("{c:.2}"));
            let best = r
                .mib_s
                .filter(|_| self.tcp_mib_s > 0.0)
                .map(|x| x / self.tcp_mib_s);
            let (ratio, note) = match (r.paired, best) {
                (Some(p), Some(b)) => (
                    format!("{:.1} % (median round)", p * 100.0),
                    format!("{}; {:.1} % of the best kernel TCP", r.note, b * 100.0),
                ),
                (_, Some(b)) => (format!("{:.1} %", b * 100.0), r.note.clone()),
                _ => (String::new(), r.note.clone()),
            };
            println!("| {} | {} | {cpu} | {ratio} | {note} |", r.name, r.value);
        }
    }
}

// ---------------------------------------------------------------- CPU

fn self_cpu() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn children_cpu() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, u.as_mut_ptr());
        u.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds used so far by the calling thread. The crypto rows are
/// timed with it, so other processes competing for the cores do not
/// lower them.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU seconds used so far by process `pid` (user + system).
fn pid_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / tick
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// One `kB` field of `/proc/PID/status` (as the kernel reports it).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU meter over this process and some daemons.
struct Cpu {
    pids: Vec<u32>,
    start: f64,
}

impl Cpu {
    fn start(pids: &[u32]) -> Cpu {
        Cpu {
            pids: pids.to_vec(),
            start: Self::total(pids),
        }
    }
    fn total(pids: &[u32]) -> f64 {
        self_cpu() + children_cpu() + pids.iter().map(|&p| pid_cpu(p)).sum::<f64>()
    }
    fn per_gib(&self, bytes: usize) -> f64 {
        (Self::total(&self.pids) - self.start) / (bytes as f64 / GIB)
    }
}

// ---------------------------------------------------------------- ceilings

/// One kernel TCP transfer of `bytes` over loopback: MiB/s and CPU
/// seconds per GiB.
fn kernel_tcp_run(bytes: usize) -> (f64, f64) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let cpu = Cpu::start(&[]);
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("tcp read: {e}"),
            }
        }
        got
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    drop(s);
    let got = reader.join().expect("reader");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, bytes);
    (bytes as f64 / MIB / secs, cpu.per_gib(bytes))
}

/// The kernel TCP yardstick, measured at the start and again at the end
/// of the run: every ratio is taken against the better of the two, so a
/// moment of contention during one of them cannot flatter the Pilot rows.
fn kernel_tcp(t: &mut Table, bytes: usize, again: bool) {
    let (mib_s, cpu) = kernel_tcp_run(bytes);
    t.tcp_mib_s = t.tcp_mib_s.max(mib_s);
    t.rate(
        if again {
            "kernel TCP again, end of the run"
        } else {
            "kernel TCP, loopback, 1 stream, 1 MiB writes"
        },
        mib_s,
        Some(cpu),
        "ceiling; unpaired ratios use the run's best kernel TCP",
    );
}

/// Size of a full Pilot data datagram: PILS overhead + packet header +
/// one 1152-byte segment.
const PILOT_DATAGRAM: usize = 36 + 34 + 1152;

fn raw_udp(t: &mut Table, count: usize) {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    set_rcvbuf(&rx, 4 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let dst = rx.local_addr().expect("addr");
    let cpu = Cpu::start(&[]);
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut got = 0usize;
        let mut first = None;
        let mut last = Instant::now();
        while let Ok(n) = rx.recv(&mut buf) {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            got += n;
        }
        (got, first.map(|f| last.duration_since(f)))
    });
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let d = vec![0xa5u8; PILOT_DATAGRAM];
    for _ in 0..count {
        // Loopback never blocks a blocking UDP send for long; a full
        // receive buffer drops, which the goodput shows.
        let _ = tx.send_to(&d, dst);
    }
    let (got, span) = reader.join().expect("reader");
    let secs = span.map_or(f64::INFINITY, |d| d.as_secs_f64().max(1e-6));
    let mib_s = got as f64 / MIB / secs;
    let sent = count * PILOT_DATAGRAM;
    t.rate(
        &format!("raw UDP, loopback, {PILOT_DATAGRAM} B datagrams, one per send_to"),
        mib_s,
        Some(cpu.per_gib(got.max(1))),
        &format!(
            "ceiling; received {:.1} % of sent",
            got as f64 * 100.0 / sent as f64
        ),
    );
}

/// Raw UDP with the drivers' batching (`udp_io`: GSO sends of up to 64
/// equal datagrams, recvmmsg/GRO receives): the ceiling for the batched
/// data path.
fn raw_udp_batched(t: &mut Table, count: usize) {
    use pilot_driver_mio::udp_io::UdpIo;
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    set_rcvbuf(&rx, 4 << 20);
    let dst = rx.local_addr().expect("addr");
    let cpu = Cpu::start(&[]);
    let reader = std::thread::spawn(move || {
        let mut io = UdpIo::new(&rx).expect("udp io");
        let mut got = 0usize;
        let mut first = None;
        let mut last = Instant::now();
        loop {
            match io.recv(&rx, |_, d| got += d.len()) {
                Ok(_) => {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                }
                Err(_) => {
                    if last.elapsed() > Duration::from_millis(300) {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        (got, first.map(|f| last.duration_since(f)))
    });
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut io = UdpIo::new(&tx).expect("udp io");
    let per = io.max_segments().clamp(1, 60_000 / PILOT_DATAGRAM);
    io.tx_buf()[..per * PILOT_DATAGRAM].fill(0xa5);
    let mut sent = 0;
    while sent < count {
        let n = per.min(count - sent);
        io.queue(dst, n * PILOT_DATAGRAM, PILOT_DATAGRAM);
        loop {
            match io.flush(&tx) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(20));
                }
                _ => break,
            }
        }
        sent += n;
    }
    let (got, span) = reader.join().expect("reader");
    let secs = span.map_or(f64::INFINITY, |d| d.as_secs_f64().max(1e-6));
    t.rate(
        &format!("raw UDP, loopback, {PILOT_DATAGRAM} B datagrams, batched ({per} per GSO send)"),
        got as f64 / MIB / secs,
        Some(cpu.per_gib(got.max(1))),
        &format!(
            "ceiling; received {:.1} % of sent",
            got as f64 * 100.0 / (count * PILOT_DATAGRAM) as f64
        ),
    );
}

fn set_rcvbuf(s: &UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a valid fd and an int option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const bytes).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Seals `size`-byte buffers for `secs` on one core; returns GB/s.
fn aead_rate<P: CryptoProvider>(p: &P, size: usize, secs: f64) -> f64 {
    let key = p.aead_key(&[7u8; 32]);
    let mut buf = vec![0x11u8; size];
    let mut nonce = [0u8; 12];
    let start = thread_cpu();
    let mut n = 0u64;
    while thread_cpu() - start < secs {
        for _ in 0..64 {
            n += 1;
            nonce[4..].copy_from_slice(&n.to_be_bytes());
            let tag = p.aead_seal_in_place(&key, &nonce, &[1, 2, 3, 4], &mut buf);
            std::hint::black_box(tag.ok());
        }
    }
    (n as f64 * size as f64) / (thread_cpu() - start) / 1e9
}

fn aead_rows(t: &mut Table, secs: f64) {
    for size in [1152usize, 4096] {
        let ring = aead_rate(&Ring, size, secs);
        let rc = aead_rate(&RustCrypto, size, secs);
        t.add(
            &format!("AES-256-GCM seal, one core, {size} B"),
            format!("ring {ring:.2} GB/s, RustCrypto {rc:.2} GB/s"),
            None,
            "ceiling, per CPU second of one thread (ring is the drivers' default)",
        );
    }
}

/// Seal+open through `Envelope` vs the bare ring AEAD on the same buffers
/// (1152-byte plaintexts), per CPU second of this thread. The bare AEAD
/// runs twice: on the very bytes the envelope seals (the frame's body,
/// behind the 20-byte PILS header, so 4 bytes past a 16-byte boundary) —
/// the ratio's baseline — and, for information, on a separate buffer that
/// starts on a 64-byte boundary. The three alternate in ten short slices
/// and each keeps its best slice.
fn envelope_row(t: &mut Table, secs: f64) {
    use pilot_proto::crypto::envelope::PILS_HEADER_LEN;
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    const LEN: usize = 1152;
    const SLICES: u32 = 10;
    let key = [9u8; 32];
    let slice = secs / f64::from(SLICES);
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("key"));
    let mut bare_n = 0u64;
    // Seal then open `buf` in place with the bare AEAD until the slice ends;
    // returns operations per CPU second.
    let mut bare_on = |buf: &mut [u8]| -> f64 {
        let start = thread_cpu();
        let mut n = 0u64;
        while thread_cpu() - start < slice {
            for _ in 0..64 {
                n += 1;
                bare_n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&bare_n.to_be_bytes());
                let aad = 5u32.to_be_bytes();
                let tag = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut *buf,
                    )
                    .expect("seal");
                k.open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    tag,
                    &mut *buf,
                    0..,
                )
                .expect("open");
            }
        }
        n as f64 / (thread_cpu() - start)
    };
    let mut aligned_store = vec![0x22u8; LEN + 64];
    let off = aligned_store.as_ptr().align_offset(64);
    let mut tx = Envelope::new(&Ring, WireProfile::Current, &key, [1, 2, 3, 4]);
    let mut rx = Envelope::new(&Ring, WireProfile::Current, &key, [0; 4]);
    let mut frame = vec![0x22u8; LEN + 36];
    let (mut same, mut aligned, mut env) = (0.0f64, 0.0f64, 0.0f64);
    for _ in 0..SLICES {
        same = same.max(bare_on(&mut frame[PILS_HEADER_LEN..PILS_HEADER_LEN + LEN]));
        aligned = aligned.max(bare_on(&mut aligned_store[off..off + LEN]));
        // Envelope: header, nonce, replay window, sender AAD included.
        let start = thread_cpu();
        let mut n = 0u64;
        while thread_cpu() - start < slice {
            for _ in 0..64 {
                n += 1;
                let len = tx.seal_in_place(&Ring, 5, &mut frame, LEN).expect("seal");
                let (_, r) = rx.open_in_place(&Ring, &mut frame[..len]).expect("open");
                std::hint::black_box(r);
            }
        }
        env = env.max(n as f64 / (thread_cpu() - start));
    }
    let gb = |ops: f64| ops * LEN as f64 / 1e9;
    t.add(
        "envelope seal+open vs bare ring AEAD, 1152 B, same buffer",
        format!(
            "{:.2} vs {:.2} GB/s = {:.2}",
            gb(env),
            gb(same),
            env / same
        ),
        None,
        &format!(
            "target ≥ 0.9 (best of 10 alternating slices each); bare AEAD on a 64-byte-aligned buffer {:.2} GB/s (envelope = {:.2} of it)",
            gb(aligned),
            env / aligned
        ),
    );
}

// ---------------------------------------------------------------- embedded

async fn embedded_transfer(total: usize) -> (f64, usize) {
    use pilot_driver_tokio::{Addr as TAddr, Node, NodeConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Node::start(NodeConfig::new(TAddr::new(1, 1)))
        .await
        .expect("node a");
    let b = Node::start(NodeConfig::new(TAddr::new(1, 2)))
        .await
        .expect("node b");
    a.add_peer(b.addr(), b.local_udp_addr(), Some(b.identity_key()))
        .expect("peer");
    b.add_peer(a.addr(), a.local_udp_addr(), Some(a.identity_key()))
        .expect("peer");
    let listener = b.listen(1000).expect("listen");
    let (client, server) = tokio::join!(a.connect(b.addr(), 1000), listener.accept());
    let (mut w, mut r) = (client.expect("connect"), server.expect("accept"));
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    });
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        w.write_all(&chunk[..n]).await.expect("write");
        left -= n;
    }
    w.shutdown().await.expect("shutdown");
    let got = tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .map(|r| r.expect("reader"))
        .unwrap_or(0);
    (start.elapsed().as_secs_f64(), got)
}

/// One embedded transfer: MiB/s and CPU s/GiB.
fn embedded_run(bytes: usize) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cpu = Cpu::start(&[]);
    let (secs, got) = rt.block_on(embedded_transfer(bytes));
    assert_eq!(got, bytes, "embedded transfer short");
    (bytes as f64 / MIB / secs, cpu.per_gib(bytes))
}

fn embedded_row(t: &mut Table, plan: &Plan) {
    t.paired(
        "Pilot embedded → embedded, one way (driver-tokio)",
        "target ≥ 30 %",
        plan.rounds,
        plan.tcp_bytes,
        || embedded_run(plan.embedded_bytes),
    );
}

// ---------------------------------------------------------------- daemons

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `bin args` and returns it with its first stdout line starting
/// with `prefix`.
fn spawn_ready(bin: &str, args: &[String], prefix: &str) -> (Proc, String) {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("PILOT_SOCKET")
        .env_remove("PILOT_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with(&prefix) {
                let _ = tx.send(line);
            }
        }
    });
    let p = Proc { child };
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{bin} did not become ready"));
    (p, line)
}

fn field<'a>(line: &'a str, k: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(k))
        .unwrap_or_else(|| panic!("no {k} in {line:?}"))
}

struct Net {
    _rv: Proc,
    a: Proc,
    b: Proc,
    a_sock: PathBuf,
    b_sock: PathBuf,
    b_addr: Addr,
    _dir: PathBuf,
}

impl Net {
    fn pids(&self) -> [u32; 2] {
        [self.a.child.id(), self.b.child.id()]
    }
}

fn start_net(dir: &Path) -> Net {
    let (rv, line) = spawn_ready(
        env!("CARGO_BIN_EXE_pilot-rendezvous"),
        &[
            "--registry-addr".into(),
            "127.0.0.1:0".into(),
            "--beacon-addr".into(),
            "127.0.0.1:0".into(),
            "--store".into(),
            dir.join("rv.redb").display().to_string(),
        ],
        "listening ",
    );
    let registry = field(&line, "registry=").to_owned();
    let beacon = field(&line, "beacon=").to_owned();
    let daemon = |name: &str| {
        let sock = dir.join(format!("{name}.sock"));
        let (p, line) = spawn_ready(
            env!("CARGO_BIN_EXE_pilot-daemon"),
            &[
                "--registry".into(),
                registry.clone(),
                "--beacon".into(),
                beacon.clone(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--dir".into(),
                dir.join(name).display().to_string(),
                "--socket".into(),
                sock.display().to_string(),
                "--public".into(),
                "--log-level".into(),
                "warn".into(),
            ],
            "ready ",
        );
        let addr: Addr = field(&line, "address=").parse().expect("address");
        (p, sock, addr)
    };
    let (a, a_sock, _) = daemon("a");
    let (b, b_sock, b_addr) = daemon("b");
    // Public visibility is applied just after registration: wait until a
    // dial to b's echo port works.
    let c = IpcClient::connect(&a_sock).expect("ipc");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(conn) = c.dial(b_addr, 7) {
            let _ = c.close(conn);
            break;
        }
        assert!(Instant::now() < deadline, "daemon b never reachable");
        std::thread::sleep(Duration::from_millis(50));
    }
    Net {
        _rv: rv,
        a,
        b,
        a_sock,
        b_sock,
        b_addr,
        _dir: dir.to_path_buf(),
    }
}

/// One transfer between the daemons through IPC: MiB/s and CPU s/GiB.
fn daemon_one_way_run(net: &Net, bytes: usize) -> (f64, f64) {
    let rx = Arc::new(IpcClient::connect(&net.b_sock).expect("ipc b"));
    rx.bind(1000).expect("bind");
    let tx = Arc::new(IpcClient::connect(&net.a_sock).expect("ipc a"));
    let cpu = Cpu::start(&net.pids());
    let conn = tx.dial(net.b_addr, 1000).expect("dial");
    let acc = rx.accept(1000, Duration::from_secs(30)).expect("accept");
    let start = Instant::now();
    let reader = {
        let rx = rx.clone();
        std::thread::spawn(move || {
            let mut got = 0usize;
            while got < bytes {
                match rx.recv(acc.conn_id, Duration::from_secs(120)) {
                    Ok(Some(d)) => got += d.len(),
                    _ => break,
                }
            }
            got
        })
    };
    let chunk = vec![0x77u8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        tx.send(conn, &chunk[..n]).expect("send");
        left -= n;
    }
    let got = reader.join().expect("reader");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, bytes, "daemon transfer short");
    let _ = tx.close(conn);
    (bytes as f64 / MIB / secs, cpu.per_gib(bytes))
}

fn daemon_one_way(t: &mut Table, net: &Net, plan: &Plan) {
    t.paired(
        "Pilot daemon → daemon, one way through IPC",
        "target ≥ 15 %",
        plan.rounds,
        plan.tcp_bytes,
        || daemon_one_way_run(net, plan.daemon_bytes),
    );
}

/// One `pilotctl bench` run: MiB/s echoed and CPU s/GiB.
fn echo_run(net: &Net, mib: f64) -> (f64, f64) {
    let cpu = Cpu::start(&net.pids());
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pilotctl"))
        .arg("--socket")
        .arg(&net.a_sock)
        .arg("--json")
        .arg("bench")
        .arg(net.b_addr.to_string())
        .arg(format!("{mib}"))
        .stderr(Stdio::null())
        .output()
        .expect("pilotctl bench");
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "pilotctl bench failed: {out:?}");
    let bytes = (mib * MIB) as usize;
    (bytes as f64 / MIB / secs, cpu.per_gib(bytes))
}

fn echo_bench(t: &mut Table, net: &Net, plan: &Plan) {
    t.paired(
        "`pilotctl bench` echo (bytes echoed / wall time)",
        "target ≥ 10 %",
        plan.rounds,
        plan.tcp_bytes,
        || echo_run(net, plan.echo_mib),
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn dial_first_byte(t: &mut Table, net: &Net, samples: usize) {
    let c = IpcClient::connect(&net.a_sock).expect("ipc");
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let conn = c.dial(net.b_addr, 7).expect("dial");
        c.send(conn, b"x").expect("send");
        let got = c.recv(conn, Duration::from_secs(10)).expect("recv");
        lat.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(got.is_some_and(|d| !d.is_empty()), "no echo");
        let _ = c.close(conn);
    }
    lat.sort_by(f64::total_cmp);
    t.add(
        "dial to first byte, warm tunnel (dial echo, send 1 B, echo back)",
        format!(
            "median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0)
        ),
        None,
        &format!("{samples} samples via IPC; target p99 ≤ 1 ms"),
    );
}

/// Writes `count` Dial requests on one raw IPC connection at once and
/// times each reply; keeps the connections open, measures RSS, closes.
fn concurrent_dials(t: &mut Table, net: &Net, count: usize) {
    let mut s = UnixStream::connect(&net.a_sock).expect("ipc");
    let mut frame = vec![0u8; 64];
    let mut out = Vec::new();
    for _ in 0..count {
        let msg = IpcMessage::Dial {
            addr: net.b_addr,
            port: 7,
        };
        let n = encode_frame(&msg, &mut frame).expect("encode");
        out.extend_from_slice(&frame[..n]);
    }
    let rss_before = net.pids().map(rss_kib);
    let start = Instant::now();
    s.write_all(&out).expect("write dials");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut ok = 0usize;
    let mut errors = 0usize;
    let mut first_error: Option<String> = None;
    let mut lat = Vec::with_capacity(count);
    let mut hdr = [0u8; LENGTH_PREFIX_LEN];
    let mut body = Vec::new();
    while ok + errors < count {
        if s.read_exact(&mut hdr).is_err() {
            break;
        }
        let len = u32::from_be_bytes(hdr) as usize;
        body.resize(len, 0);
        if s.read_exact(&mut body).is_err() {
            break;
        }
        match IpcMessage::decode(&body) {
            Ok(IpcMessage::DialOk { .. }) => {
                ok += 1;
                lat.push(start.elapsed().as_secs_f64() * 1e3);
            }
            Ok(IpcMessage::Error { message, .. }) => {
                errors += 1;
                if first_error.is_none() {
                    first_error = Some(message.to_owned());
                }
            }
            _ => {}
        }
    }
    let total = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    t.add(
        &format!("{count} concurrent dials (one IPC client, all requests at once)"),
        format!(
            "{ok}/{count} complete in {:.3} s, p99 {:.1} ms",
            total,
            percentile(&lat, 0.99)
        ),
        None,
        &format!(
            "{errors} errors{}; target all in < 1 s",
            first_error.map_or(String::new(), |e| format!(" (first: {e})"))
        ),
    );
    // The connections stay open (idle) until the socket closes.
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = net.pids().map(rss_kib);
    let per_conn: Vec<String> = rss_before
        .iter()
        .zip(&rss_after)
        .zip(["dialer", "listener"])
        .filter_map(|((b, a), who)| {
            Some(format!(
                "{who} {:.1} KiB",
                ((*a)?.saturating_sub((*b)?)) as f64 / ok.max(1) as f64
            ))
        })
        .collect();
    t.add(
        "RSS per idle connection",
        per_conn.join(", "),
        None,
        &format!("{ok} open connections (each daemon holds one end); target ≤ 16 KB"),
    );
    drop(s);
}

fn idle_rss(t: &mut Table, net: &Net) {
    // Quiet for longer than the batch buffers' idle release (2 s).
    std::thread::sleep(pilot_driver_mio::udp_io::IDLE_RELEASE + Duration::from_secs(1));
    let v: Vec<String> = net
        .pids()
        .iter()
        .zip(["a", "b"])
        .filter_map(|(&p, n)| Some(format!("{n} {:.1} MiB", rss_kib(p)? as f64 / 1024.0)))
        .collect();
    // What the resident pages are (VmRSS = RssAnon + RssFile + RssShmem).
    let parts: Vec<String> = net
        .pids()
        .iter()
        .zip(["a", "b"])
        .filter_map(|(&p, n)| {
            Some(format!(
                "{n}: anon {:.1}, file {:.1}",
                status_kib(p, "RssAnon:")? as f64 / 1024.0,
                status_kib(p, "RssFile:")? as f64 / 1024.0
            ))
        })
        .collect();
    t.add(
        "idle daemon RSS (registered, one warm tunnel)",
        v.join(", "),
        None,
        &format!("target ≤ 6 MB; MiB {}", parts.join("; ")),
    );
}

// ---------------------------------------------------------------- loss

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("{cmd} not found (the lossy rows need root, iproute2, iptables and ethtool, e.g. `apt-get install iptables ethtool`)")
            }
            _ => format!("{cmd}: {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Goodputs (MiB/s) of the lossy measurement: lossless with loopback's
/// segmentation offload on; 1 % of send batches dropped whole (offload
/// on); then with the offload off, lossless and 1 % of datagrams dropped
/// one by one.
struct Lossy {
    clean: f64,
    per_batch: Result<f64, String>,
    /// (lossless, lossy) on the per-datagram path.
    per_datagram: Result<(f64, f64), String>,
}

/// Adds (or with `-D`, removes) the iptables rule dropping 1 % of the UDP
/// packets that loopback delivers.
fn drop_rule(op: &str) -> Result<(), String> {
    run(
        "iptables",
        &[
            op,
            "INPUT",
            "-i",
            "lo",
            "-p",
            "udp",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.01",
            "-j",
            "DROP",
        ],
    )
}

/// In a private network namespace (this thread only; it vanishes with the
/// thread), measures the embedded transfer without loss, then with 1 %
/// of UDP packets on loopback dropped at random by iptables, twice (each
/// figure the median of [`LOSSY_RUNS`] transfers):
///
/// - per datagram: loopback's UDP segmentation offload is turned off
///   (`ethtool -K lo tx-udp-segmentation off`), so the kernel cuts each
///   GSO send into its datagrams before they reach the rule, as a NIC
///   does before the wire: every datagram has its own 1 % chance. Its
///   lossless figure is measured on that same path (offload off);
/// - per batch: with the offload on, loopback carries a GSO send of up
///   to 64 datagrams as one packet and the rule drops it whole: 1 % of
///   sends lose a burst of up to 64 datagrams (a tail-drop pattern).
fn lossy_in_namespace(bytes: usize) -> Result<Lossy, String> {
    // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    // Children forked from this thread inherit its namespace.
    run("ip", &["link", "set", "lo", "up"])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let rate = |secs: f64| bytes as f64 / MIB / secs;
    // Each figure is the median of LOSSY_RUNS transfers (one 32 MiB
    // transfer lasts well under a second, and single ones scatter).
    let median = |what: &str, drop: bool| -> Result<f64, String> {
        let mut v = Vec::with_capacity(LOSSY_RUNS);
        for _ in 0..LOSSY_RUNS {
            if drop {
                drop_rule("-A")?;
            }
            let (s, got) = rt.block_on(embedded_transfer(bytes));
            if drop {
                drop_rule("-D")?;
            }
            if got != bytes {
                return Err(format!(
                    "{what}: transfer incomplete: {got} of {bytes} bytes in {s:.1} s"
                ));
            }
            v.push(rate(s));
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    };
    let clean = median("lossless", false)?;
    let per_batch = median("per batch", true);
    let per_datagram = run("ethtool", &["-K", "lo", "tx-udp-segmentation", "off"]).and_then(|()| {
        // The same path without loss: the offload off costs the
        // sender's kernel some throughput of its own.
        Ok((
            median("lossless, offload off", false)?,
            median("per datagram", true)?,
        ))
    });
    Ok(Lossy {
        clean,
        per_datagram,
        per_batch,
    })
}

/// Transfers behind each figure of the lossy rows (the median is shown).
const LOSSY_RUNS: usize = 3;

fn lossy_row(t: &mut Table, bytes: usize) {
    let r = std::thread::spawn(move || lossy_in_namespace(bytes))
        .join()
        .unwrap_or_else(|_| Err("namespace thread panicked".into()));
    let name = "1 % random UDP loss (netns, iptables statistic), embedded one way";
    let l = match r {
        Ok(l) => l,
        Err(e) => return t.add(name, "skipped".into(), None, &e),
    };
    let pct = |v: f64, of: f64| v / of * 100.0;
    let name_dg = format!("{name}, per datagram (GSO cut before the drop)");
    match l.per_datagram {
        Ok((clean, v)) => t.add(
            &name_dg,
            format!(
                "{v:.1} MiB/s vs {clean:.1} MiB/s lossless = {:.1} %",
                pct(v, clean)
            ),
            None,
            &format!(
                "target ≥ 50 % of the same path without loss (offload off); {:.1} % of the lossless figure with offload on ({:.1} MiB/s)",
                pct(v, l.clean),
                l.clean
            ),
        ),
        Err(e) => t.add(&name_dg, "skipped".into(), None, &e),
    }
    let name_b = format!("{name}, per batch (a GSO send of ≤ 64 datagrams dropped whole)");
    match l.per_batch {
        Ok(v) => t.add(
            &name_b,
            format!(
                "{v:.1} MiB/s vs {:.1} MiB/s lossless = {:.1} %",
                l.clean,
                pct(v, l.clean)
            ),
            None,
            "burst losses; no target",
        ),
        Err(e) => t.add(&name_b, "skipped".into(), None, &e),
    }
}

// ---------------------------------------------------------------- main

/// Whether `flag` is among the arguments or the variable `env` is `1`
/// (every mode of the bench can be chosen either way).
fn mode(flag: &str, env: &str) -> bool {
    std::env::args().any(|a| a == flag) || std::env::var(env).is_ok_and(|v| v == "1")
}

fn main() {
    let short = mode("--short", "PILOT_BENCH_SHORT");
    // `--rss` (or PILOT_BENCH_RSS=1): only the two memory rows, in a few
    // seconds, for work on the daemon's footprint.
    let rss_only = mode("--rss", "PILOT_BENCH_RSS");
    let plan = Plan::new(short);
    let mut t = Table::default();
    // `--loss` (or PILOT_BENCH_LOSS=1): only the lossy rows.
    if mode("--loss", "PILOT_BENCH_LOSS") {
        eprintln!("datapath bench (loss rows only)");
        lossy_row(&mut t, plan.lossy_bytes);
        t.print();
        return;
    }
    // `--embedded` (or PILOT_BENCH_EMBEDDED=1): only the embedded row, for
    // profiling the node and the tokio driver without the daemons.
    if mode("--embedded", "PILOT_BENCH_EMBEDDED") {
        eprintln!("datapath bench (embedded row only)");
        embedded_row(&mut t, &plan);
        t.print();
        return;
    }
    if rss_only {
        eprintln!("datapath bench (memory rows only)");
        let dir = std::env::temp_dir().join(format!("pilot-datapath-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        {
            let net = start_net(&dir);
            idle_rss(&mut t, &net);
            concurrent_dials(&mut t, &net, plan.concurrent_dials);
        }
        let _ = std::fs::remove_dir_all(&dir);
        t.print();
        return;
    }
    eprintln!("datapath bench ({})", if short { "short" } else { "full" });
    kernel_tcp(&mut t, plan.tcp_bytes, false);
    raw_udp(&mut t, plan.udp_datagrams);
    raw_udp_batched(&mut t, plan.udp_datagrams);
    aead_rows(&mut t, plan.aead_secs);
    envelope_row(&mut t, plan.aead_secs);
    embedded_row(&mut t, &plan);
    let dir = std::env::temp_dir().join(format!("pilot-datapath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    {
        let net = start_net(&dir);
        idle_rss(&mut t, &net);
        // The concurrent dials come first: closed connections linger in
        // TIME_WAIT for 10 s and count against the 1024 per-port limit
        // of the echo port until then.
        concurrent_dials(&mut t, &net, plan.concurrent_dials);
        let closed = Instant::now();
        daemon_one_way(&mut t, &net, &plan);
        echo_bench(&mut t, &net, &plan);
        std::thread::sleep(Duration::from_secs(11).saturating_sub(closed.elapsed()));
        dial_first_byte(&mut t, &net, plan.dial_samples);
    }
    let _ = std::fs::remove_dir_all(&dir);
    lossy_row(&mut t, plan.lossy_bytes);
    kernel_tcp(&mut t, plan.tcp_bytes, true);
    t.print();
}
