//! `pilotctl demo`: a complete Pilot network on loopback, exercised end to
//! end and measured against kernel TCP.
//!
//! In a fresh temporary directory it starts a rendezvous server and two
//! daemons as child processes of this same executable (`_rendezvous-run`,
//! `_daemon-run`), makes the daemons trust each other (request + approve),
//! then runs ping, a bulk echo bench, a stream send/receive, a file through
//! data exchange (content checked on disk), a publish/subscribe through the
//! event stream with a wildcard subscriber, and the same echo bench over
//! kernel TCP as a yardstick. Every child is stopped and the directory
//! removed at the end, on failure, and on Ctrl-C / SIGTERM.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pilot_proto::addr::Addr;
use serde_json::{Value, json};

use super::ops;
use super::util::{CliError, CliResult};
use crate::ipc_client::IpcClient;

/// Flags of `pilotctl demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// MiB to push through the echo bench (and through kernel TCP)
    #[arg(long, default_value_t = 64)]
    pub bench_mb: u64,
    /// Keep the temporary directory (for inspection)
    #[arg(long)]
    pub keep: bool,
}

/// How long a child may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a child may take to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Child processes plus the temp dir, shared with the signal thread.
struct Cleanup {
    children: Vec<(String, Child)>,
    dir: Option<PathBuf>,
    keep: bool,
}

impl Cleanup {
    fn stop_all(&mut self) {
        // Stop in reverse start order, each before the next: the daemons
        // deregister while the rendezvous still runs, then the rendezvous.
        for (_, child) in self.children.iter_mut().rev() {
            if let Ok(None) = child.try_wait() {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + STOP_GRACE;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.children.clear();
        if let Some(d) = self.dir.take() {
            if !self.keep {
                let _ = fs::remove_dir_all(&d);
            }
        }
    }
}

struct Guard(Arc<Mutex<Cleanup>>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).stop_all();
    }
}

/// Spawns `pilotctl <args>` with stdout and stderr appended to `log`.
fn spawn(cleanup: &Arc<Mutex<Cleanup>>, name: &str, args: &[String], log: &Path) -> CliResult<()> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new("internal", format!("cannot find own executable: {e}")))?;
    let out = fs::File::create(log).map_err(|e| CliError::new("internal", e.to_string()))?;
    let err = out
        .try_clone()
        .map_err(|e| CliError::new("internal", e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("RUST_LOG", "info");
    // SAFETY: prctl only sets a flag of the new process: it gets SIGTERM if
    // the demo dies, so no child outlives it even after SIGKILL.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| CliError::new("internal", format!("cannot start {name}: {e}")))?;
    cleanup
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .children
        .push((name.to_owned(), child));
    Ok(())
}

fn child_exited(cleanup: &Arc<Mutex<Cleanup>>, name: &str) -> Option<String> {
    let mut c = cleanup.lock().unwrap_or_else(|p| p.into_inner());
    let (_, child) = c.children.iter_mut().find(|(n, _)| n == name)?;
    match child.try_wait() {
        Ok(Some(st)) => Some(st.to_string()),
        _ => None,
    }
}

fn log_tail(path: &Path) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Waits for the rendezvous's `listening registry=A beacon=B` line.
fn wait_rendezvous(
    cleanup: &Arc<Mutex<Cleanup>>,
    log: &Path,
) -> CliResult<(SocketAddr, SocketAddr)> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(f) = fs::File::open(log) {
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening ") {
                    let mut reg = None;
                    let mut bea = None;
                    for kv in rest.split_whitespace() {
                        if let Some(v) = kv.strip_prefix("registry=") {
                            reg = v.parse().ok();
                        } else if let Some(v) = kv.strip_prefix("beacon=") {
                            bea = v.parse().ok();
                        }
                    }
                    if let (Some(r), Some(b)) = (reg, bea) {
                        return Ok((r, b));
                    }
                }
            }
        }
        if let Some(st) = child_exited(cleanup, "rendezvous") {
            return Err(CliError::new(
                "internal",
                format!("rendezvous exited ({st}): {}", log_tail(log)),
            ));
        }
        if Instant::now() >= deadline {
            return Err(CliError::new("timeout", "rendezvous did not start"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the daemon answers `Info` with a node id; returns a client.
fn wait_daemon(
    cleanup: &Arc<Mutex<Cleanup>>,
    name: &str,
    socket: &Path,
    log: &Path,
) -> CliResult<(IpcClient, u32)> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut c) = IpcClient::connect(socket) {
            c.set_timeout(Duration::from_secs(5));
            if let Ok(info) = c.info() {
                if let Some(id) = info["node_id"].as_u64().filter(|&n| n != 0) {
                    c.set_timeout(crate::ipc_client::DEFAULT_REQUEST_TIMEOUT);
                    return Ok((c, id as u32));
                }
            }
        }
        if let Some(st) = child_exited(cleanup, name) {
            return Err(CliError::new(
                "internal",
                format!("{name} exited ({st}): {}", log_tail(log)),
            ));
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(
                "timeout",
                format!(
                    "{name} did not register within {}s: {}",
                    START_TIMEOUT.as_secs(),
                    log_tail(log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One step of the report.
struct Report {
    steps: Vec<Value>,
    json: bool,
    failed: bool,
}

impl Report {
    fn step(
        &mut self,
        name: &str,
        f: impl FnOnce() -> CliResult<(Value, String)>,
    ) -> Option<Value> {
        let start = Instant::now();
        let r = f();
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok((v, text)) => {
                if !self.json {
                    println!("  ok    {name:<12} {text}  ({ms:.0} ms)");
                }
                let mut entry = json!({"name": name, "ok": true, "ms": ms});
                if let (Some(e), Some(o)) = (entry.as_object_mut(), v.as_object()) {
                    for (k, val) in o {
                        e.insert(k.clone(), val.clone());
                    }
                }
                self.steps.push(entry);
                Some(v)
            }
            Err(e) => {
                if !self.json {
                    println!("  FAIL  {name:<12} {}  ({ms:.0} ms)", e.message);
                }
                self.failed = true;
                self.steps
                    .push(json!({"name": name, "ok": false, "ms": ms, "error": e.message}));
                None
            }
        }
    }
}

/// Runs the demo; prints the report and returns the exit code.
pub fn run(args: &DemoArgs, json_mode: bool) -> ExitCode {
    let cleanup = Arc::new(Mutex::new(Cleanup {
        children: Vec::new(),
        dir: None,
        keep: args.keep,
    }));
    // Ctrl-C / SIGTERM: stop the children, remove the directory, exit 130.
    {
        let c = Arc::clone(&cleanup);
        if let Ok(mut signals) =
            signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    c.lock().unwrap_or_else(|p| p.into_inner()).stop_all();
                    eprintln!("demo interrupted (signal {sig}); everything stopped");
                    std::process::exit(130);
                }
            });
        }
    }
    let guard = Guard(Arc::clone(&cleanup));
    let mut report = Report {
        steps: Vec::new(),
        json: json_mode,
        failed: false,
    };
    let bench = run_steps(args, &cleanup, &mut report);
    let dir = cleanup
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .dir
        .clone();
    drop(guard); // stops every child and removes the directory
    let mut out = json!({
        "steps": report.steps,
        "bench_mb": args.bench_mb,
        "ok": !report.failed,
    });
    if let Some((pilot, kernel)) = bench {
        out["bench_mbps"] = json!(pilot);
        out["kernel_tcp_mbps"] = json!(kernel);
        out["ratio_to_kernel_tcp"] = json!(if kernel > 0.0 { pilot / kernel } else { 0.0 });
    }
    if args.keep {
        out["dir"] = json!(dir.map(|d| d.display().to_string()));
    }
    super::round_floats(&mut out);
    if json_mode {
        if report.failed {
            eprintln!(
                "{}",
                json!({"code": "internal", "message": "demo: a step failed", "status": "error", "data": out})
            );
        } else {
            println!("{}", json!({"data": out, "status": "ok"}));
        }
    } else {
        if let Some((pilot, kernel)) = bench {
            println!(
                "\nbench: pilot {pilot:.1} MiB/s, kernel TCP {kernel:.1} MiB/s (ratio {:.2})",
                if kernel > 0.0 { pilot / kernel } else { 0.0 }
            );
        }
        println!(
            "{}",
            if report.failed {
                "demo FAILED; every process stopped"
            } else {
                "demo ok; every process stopped"
            }
        );
    }
    if report.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The steps; returns (pilot bench MiB/s, kernel TCP MiB/s) when both ran.
fn run_steps(
    args: &DemoArgs,
    cleanup: &Arc<Mutex<Cleanup>>,
    report: &mut Report,
) -> Option<(f64, f64)> {
    // A fresh private (0700) directory; `Cleanup` removes it, also on a
    // signal, so tempfile's own drop is not relied upon.
    let dir = match tempfile::Builder::new()
        .prefix("pilot-demo-")
        .tempdir()
        .map(tempfile::TempDir::keep)
    {
        Ok(d) => d,
        Err(e) => {
            report.step("setup", || Err(CliError::new("internal", e.to_string())));
            return None;
        }
    };
    cleanup.lock().unwrap_or_else(|p| p.into_inner()).dir = Some(dir.clone());
    if !report.json {
        println!("pilot demo in {}", dir.display());
    }
    // 1. Rendezvous.
    let rv = report.step("rendezvous", || {
        let log = dir.join("rendezvous.log");
        spawn(
            cleanup,
            "rendezvous",
            &[
                "_rendezvous-run".into(),
                "--registry-addr".into(),
                "127.0.0.1:0".into(),
                "--beacon-addr".into(),
                "127.0.0.1:0".into(),
                "--store".into(),
                dir.join("rendezvous.redb").display().to_string(),
            ],
            &log,
        )?;
        let (reg, bea) = wait_rendezvous(cleanup, &log)?;
        Ok((
            json!({"registry": reg.to_string(), "beacon": bea.to_string()}),
            format!("registry {reg}, beacon {bea}"),
        ))
    })?;
    let registry = rv["registry"].as_str().unwrap_or_default().to_owned();
    let beacon = rv["beacon"].as_str().unwrap_or_default().to_owned();
    // 2. Two daemons.
    let mut nodes: Vec<(IpcClient, u32, PathBuf)> = Vec::new();
    for name in ["alpha", "beta"] {
        let node_dir = dir.join(name);
        let socket = dir.join(format!("{name}.sock"));
        let mut got = None;
        report.step(&format!("daemon-{name}"), || {
            let log = dir.join(format!("{name}.log"));
            let daemon_name = format!("daemon-{name}");
            spawn(
                cleanup,
                &daemon_name,
                &[
                    "_daemon-run".into(),
                    "--registry".into(),
                    registry.clone(),
                    "--beacon".into(),
                    beacon.clone(),
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                    "--socket".into(),
                    socket.display().to_string(),
                    "--dir".into(),
                    node_dir.display().to_string(),
                    "--hostname".into(),
                    format!("demo-{name}"),
                    // Private nodes exchange trust requests through the
                    // registry, polled once per heartbeat: keep it short.
                    "--keepalive".into(),
                    "1s".into(),
                ],
                &log,
            )?;
            let (c, id) = wait_daemon(cleanup, &daemon_name, &socket, &log)?;
            let addr = Addr::new(0, id);
            got = Some((c, id));
            Ok((
                json!({"node_id": id, "address": addr.to_string()}),
                format!("node {id} ({addr})"),
            ))
        });
        let (c, id) = got?;
        nodes.push((c, id, node_dir));
    }
    let (a, a_id, _) = &nodes[0];
    let (b, b_id, b_dir) = &nodes[1];
    let (a_id, b_id) = (*a_id, *b_id);
    let b_addr = Addr::new(0, b_id);
    // 3. Trust: alpha asks, beta approves; both end up trusting each other.
    let trusted = report.step("trust", || {
        a.handshake_request(b_id, "pilotctl demo")
            .map_err(|e| CliError::ipc(e, "connection_failed"))?;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let p = b
                .handshake_pending()
                .map_err(|e| CliError::ipc(e, "internal"))?;
            if list_has(&p["pending"], a_id) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CliError::new("timeout", "the request never reached beta"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        b.handshake_approve(a_id)
            .map_err(|e| CliError::ipc(e, "internal"))?;
        loop {
            let ta = a
                .handshake_trusted()
                .map_err(|e| CliError::ipc(e, "internal"))?;
            let tb = b
                .handshake_trusted()
                .map_err(|e| CliError::ipc(e, "internal"))?;
            if list_has(&ta["trusted"], b_id) && list_has(&tb["trusted"], a_id) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CliError::new("timeout", "trust did not become mutual"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let found = a
            .resolve_hostname("demo-beta")
            .map_err(|e| CliError::ipc(e, "not_found"))?;
        Ok((
            json!({"resolved": found["address"]}),
            format!(
                "mutual; alpha resolves demo-beta → {}",
                found["address"].as_str().unwrap_or("?")
            ),
        ))
    });
    trusted.as_ref()?;
    // 4. Ping.
    report.step("ping", || {
        let (v, _) = ops::ping(
            a,
            b_addr,
            "demo-beta",
            3,
            Duration::from_secs(30),
            Duration::from_millis(100),
            |_| {},
        );
        let rtts: Vec<f64> = v["results"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|x| x.get("error").is_none())
                    .filter_map(|x| x["rtt_ms"].as_f64())
                    .collect()
            })
            .unwrap_or_default();
        if rtts.len() != 3 {
            return Err(CliError::new(
                "connection_failed",
                format!("{} of 3 replies: {v}", rtts.len()),
            ));
        }
        let avg = rtts.iter().sum::<f64>() / 3.0;
        Ok((
            json!({"rtt_ms": rtts, "avg_rtt_ms": avg}),
            format!("3/3 replies, avg {avg:.2} ms (incl. stream setup)"),
        ))
    });
    // 5. Bench over Pilot.
    let size = args.bench_mb.max(1) * 1024 * 1024;
    let show_progress = !report.json;
    let pilot_mbps = report.step("bench", || {
        let r = ops::bench(
            a,
            b_addr,
            "demo-beta",
            size,
            Duration::from_secs(600),
            show_progress,
        )?;
        if !r.verified {
            return Err(CliError::new(
                "internal",
                "echoed bytes differ from the sent ones",
            ));
        }
        let mbps = r.total_mbps;
        Ok((
            json!({"mbps": mbps, "bytes": size, "result": r.data}),
            format!("{} MiB echoed, {mbps:.1} MiB/s", args.bench_mb),
        ))
    });
    // 6. Stream send / recv on port 1000.
    report.step("send-recv", || {
        b.bind(1000)
            .map_err(|e| CliError::ipc(e, "already_exists"))?;
        std::thread::scope(|s| {
            let receiver = s.spawn(|| -> CliResult<String> {
                let acc = b
                    .accept(1000, Duration::from_secs(30))
                    .map_err(|e| CliError::ipc(e, "timeout"))?;
                let got = b
                    .recv(acc.conn_id, Duration::from_secs(30))
                    .map_err(|e| CliError::ipc(e, "timeout"))?
                    .unwrap_or_default();
                b.send(acc.conn_id, b"hello back from beta")
                    .map_err(|e| CliError::ipc(e, "connection_failed"))?;
                // Let the reply leave before closing.
                let _ = b.recv(acc.conn_id, Duration::from_secs(5));
                let _ = b.close(acc.conn_id);
                Ok(String::from_utf8_lossy(&got).into_owned())
            });
            let resp = ops::exchange(
                a,
                b_addr,
                1000,
                b"hello from alpha",
                Duration::from_secs(30),
            );
            let got = receiver
                .join()
                .map_err(|_| CliError::new("internal", "receiver panicked"))??;
            let resp = resp?;
            if got != "hello from alpha" || resp != "hello back from beta" {
                return Err(CliError::new("internal", format!("got {got:?} / {resp:?}")));
            }
            Ok((
                json!({"sent": got, "response": resp}),
                format!("beta got {got:?}, alpha got {resp:?}"),
            ))
        })
    });
    // 7. File through data exchange.
    report.step("send-file", || {
        let src = dir.join("demo-file.bin");
        let content: Vec<u8> = (0..(1024 * 1024 + 123u32))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(&src, &content).map_err(|e| CliError::new("internal", e.to_string()))?;
        let v = ops::send_file(a, b_addr, &src, false, Duration::from_secs(60))?;
        let received = b_dir.join("received");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(rd) = fs::read_dir(&received) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("demo-file")
                        && fs::read(e.path()).is_ok_and(|d| d == content)
                    {
                        return Ok((
                            json!({"bytes": content.len(), "ack": v["ack"], "saved_as": name}),
                            format!(
                                "{} bytes, ack {:?}, identical in beta/received/{name}",
                                content.len(),
                                v["ack"].as_str().unwrap_or("")
                            ),
                        ));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(CliError::new(
                    "not_found",
                    "the file did not appear in beta's received/",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // 8. Event stream: a wildcard subscriber and a publisher on beta's broker.
    report.step("pubsub", || {
        let mut sub = ops::Subscription::open(a, b_addr, "*")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut published = 0;
        loop {
            // The broker has no replay: publish until the subscription is in
            // place and an event arrives.
            ops::publish(
                a,
                b_addr,
                "demo-beta",
                "demo.news",
                "hello subscribers",
                Duration::from_secs(10),
            )?;
            published += 1;
            match sub.next(Duration::from_millis(500)) {
                Ok(Some(ev)) => {
                    if ev["topic"] != "demo.news" || ev["data"] != "hello subscribers" {
                        return Err(CliError::new("internal", format!("unexpected event {ev}")));
                    }
                    return Ok((
                        json!({"event": ev, "published": published}),
                        "wildcard subscriber got topic demo.news".to_string(),
                    ));
                }
                Ok(None) => {
                    return Err(CliError::new(
                        "connection_failed",
                        "broker closed the subscription",
                    ));
                }
                Err(e) if e.code == "timeout" && Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        }
    });
    // 9. Kernel TCP yardstick: the same echo bench over a loopback socket.
    let kernel = report.step("kernel-tcp", || {
        let mbps = kernel_tcp_bench(size).map_err(|e| CliError::new("internal", e.to_string()))?;
        Ok((
            json!({"mbps": mbps, "bytes": size}),
            format!("{} MiB echoed, {mbps:.1} MiB/s", args.bench_mb),
        ))
    });
    drop(nodes);
    match (pilot_mbps, kernel) {
        (Some(p), Some(k)) => Some((p["mbps"].as_f64()?, k["mbps"].as_f64()?)),
        _ => None,
    }
}

fn list_has(list: &Value, node: u32) -> bool {
    list.as_array().is_some_and(|l| {
        l.iter()
            .any(|e| e["node_id"].as_u64() == Some(u64::from(node)))
    })
}

/// Echo bench over kernel TCP on loopback: one thread echoes, one writes
/// `size` bytes in 64 KiB chunks, the caller reads them back. MiB/s.
fn kernel_tcp_bench(size: u64) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    });
    let client = TcpStream::connect(addr)?;
    let mut writer = client.try_clone()?;
    let mut reader = client;
    let start = Instant::now();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < size {
            let n = (size - sent).min(chunk.len() as u64) as usize;
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = ((sent + i as u64) % 256) as u8;
            }
            writer.write_all(&chunk[..n])?;
            sent += n as u64;
        }
        Ok(())
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while got < size {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = sender.join();
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = echo.join();
    if got < size {
        return Err(std::io::Error::other("kernel TCP echo ended early"));
    }
    Ok(if secs > 0.0 {
        got as f64 / 1048576.0 / secs
    } else {
        0.0
    })
}
