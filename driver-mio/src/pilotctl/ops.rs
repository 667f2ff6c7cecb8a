//! The network operations behind `pilotctl`'s commands, written against
//! [`IpcClient`] and returning the JSON `data` objects of the reference CLI
//! (`reference/daemon.md` §4.9, `reference/services.md` §3.2, §7.3, §8).
//! The demo calls the same functions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pilot_proto::addr::{Addr, ports};
use pilot_proto::services::dataexchange::{FileBody, Frame, FrameType, max_payload};
use pilot_proto::services::eventstream::Event;
use pilot_proto::wire::WireProfile;
use serde_json::{Value, json};

use super::util::{CliError, CliResult, Progress, ms};
use crate::ipc_client::{IpcClient, IpcClientError};

/// Largest single read of a one-shot exchange (`send`, `connect`, `recv`).
const ONE_READ_MAX: usize = 65_535;

/// Chunk the bench and file transfer hand to the daemon per `Send`.
const BULK_CHUNK: usize = 64 * 1024;

/// Dials `addr:port`, giving up at `deadline` (the command's overall
/// deadline: a dial never outlives it).
fn dial(c: &IpcClient, addr: Addr, port: u16, deadline: Instant) -> CliResult<u32> {
    let left = remaining(deadline);
    if left.is_zero() {
        return Err(CliError::new(
            "timeout",
            format!("no time left to dial {addr}:{port}"),
        ));
    }
    c.dial_timeout(addr, port, left).map_err(|e| match e {
        IpcClientError::Daemon(m) => super::util::dial_error(addr, port, &m),
        IpcClientError::Timeout(_) => CliError::new(
            "timeout",
            format!(
                "dial {addr}:{port}: no connection within the deadline ({:.1}s)",
                left.as_secs_f64()
            ),
        )
        .hint("the peer may be offline or unreachable; `pilotctl peers` shows tunnels"),
        other => CliError::ipc(other, "connection_failed"),
    })
}

fn io_err(e: IpcClientError) -> CliError {
    CliError::ipc(e, "connection_failed")
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// One read of at most `max` bytes: `Ok(Some(bytes))`, or `Ok(None)` at end
/// of stream.
fn read_once(
    c: &IpcClient,
    conn: u32,
    max: usize,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, IpcClientError> {
    match c.recv(conn, timeout)? {
        None => Ok(None),
        Some(mut chunk) => {
            chunk.truncate(max);
            Ok(Some(chunk))
        }
    }
}

/// `ping`: per sequence number a new stream to port 7, `ping-<i>`, one read,
/// close; `interval` between pings; one overall deadline, dials included.
/// Returns the report and the first failure. A failure that repeating
/// cannot fix (untrusted, offline, registry unreachable) stops the pings.
pub fn ping(
    c: &IpcClient,
    addr: Addr,
    target: &str,
    count: u32,
    timeout: Duration,
    interval: Duration,
    mut on_result: impl FnMut(&Value),
) -> (Value, Option<CliError>) {
    let deadline = Instant::now() + timeout;
    let mut results = Vec::new();
    let mut timed_out = false;
    let mut first_error: Option<CliError> = None;
    let mut stop = false;
    for seq in 0..count {
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        let start = Instant::now();
        let r = (|| -> CliResult<usize> {
            let conn = dial(c, addr, ports::ECHO, deadline)?;
            let msg = format!("ping-{seq}");
            let out = c
                .send(conn, msg.as_bytes())
                .map_err(io_err)
                .and_then(|()| read_once(c, conn, 1024, remaining(deadline)).map_err(io_err));
            let _ = c.close(conn);
            match out? {
                Some(d) => Ok(d.len()),
                None => Err(CliError::new(
                    "connection_failed",
                    "connection closed before reply",
                )),
            }
        })();
        let rtt = ms(start.elapsed());
        let v = match r {
            Ok(bytes) => json!({"bytes": bytes, "rtt_ms": rtt, "seq": seq}),
            Err(e) => {
                if e.code == "timeout" {
                    timed_out = true;
                }
                stop = matches!(
                    e.code,
                    "not_trusted"
                        | "trust_pending"
                        | "peer_offline"
                        | "registry_unreachable"
                        | "timeout"
                );
                let v = json!({"code": e.code, "error": e.message, "rtt_ms": rtt, "seq": seq});
                first_error.get_or_insert(e);
                v
            }
        };
        on_result(&v);
        results.push(v);
        if stop {
            break;
        }
        if seq + 1 < count && !interval.is_zero() {
            let pause = interval.min(remaining(deadline));
            std::thread::sleep(pause);
        }
    }
    (
        json!({"results": results, "target": target, "timeout": timed_out}),
        first_error,
    )
}

/// `traceroute`: time the dial to port 7, then three `trace-<i>` round trips
/// on that stream.
pub fn traceroute(c: &IpcClient, addr: Addr, timeout: Duration) -> Value {
    let target = addr.to_string();
    let deadline = Instant::now() + timeout;
    let start = Instant::now();
    let conn = match dial(c, addr, ports::ECHO, deadline) {
        Ok(conn) => conn,
        Err(e) => {
            return json!({"error": e.message, "setup_ms": ms(start.elapsed()), "target": target});
        }
    };
    let setup = ms(start.elapsed());
    let mut samples = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let msg = format!("trace-{i}");
        let r = c
            .send(conn, msg.as_bytes())
            .and_then(|()| read_once(c, conn, 1024, remaining(deadline)));
        match r {
            Ok(Some(d)) => samples.push(json!({"bytes": d.len(), "rtt_ms": ms(t.elapsed())})),
            Ok(None) => break,
            Err(e) => {
                let _ = c.close(conn);
                return json!({"error": e.to_string(), "setup_ms": setup, "target": target,
                              "rtt_samples": samples});
            }
        }
    }
    let _ = c.close(conn);
    json!({"rtt_samples": samples, "setup_ms": setup, "target": target})
}

/// Result of a bench run: the reference's `data` object plus whether every
/// echoed byte matched the pattern.
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    /// `{"recv_bytes","send_duration_ms","send_mbps","sent_bytes","target","total_duration_ms","total_mbps"}`.
    pub data: Value,
    /// Echoed bytes equal the sent pattern (byte k = k mod 256).
    pub verified: bool,
    /// MiB/s over the whole round trip.
    pub total_mbps: f64,
}

/// `bench`: one stream to port 7; writes `size` bytes whose byte k is
/// `k mod 256` while a second thread counts (and checks) the echo.
pub fn bench(
    c: &IpcClient,
    addr: Addr,
    target: &str,
    size: u64,
    timeout: Duration,
    progress: bool,
) -> CliResult<BenchOutcome> {
    let deadline = Instant::now() + timeout;
    let conn = dial(c, addr, ports::ECHO, deadline)?;
    let start = Instant::now();
    let received = AtomicU64::new(0);
    // Byte k of the stream is k mod 256: every chunk sent, and every piece
    // of the echo compared (with one memcmp), is a window of this buffer.
    let pattern: Vec<u8> = (0..BULK_CHUNK + 256).map(|i| i as u8).collect();
    let (send_res, recv_res) = std::thread::scope(|s| {
        let reader = s.spawn(|| -> Result<bool, IpcClientError> {
            let mut bar = Progress::new("bench", size, progress);
            let mut got: u64 = 0;
            let mut ok = true;
            while got < size {
                match c.recv(conn, remaining(deadline))? {
                    None => break,
                    Some(chunk) => {
                        ok &= chunk.chunks(BULK_CHUNK).enumerate().all(|(i, piece)| {
                            piece
                                == pattern_at(&pattern, got + (i * BULK_CHUNK) as u64, piece.len())
                        });
                        got += chunk.len() as u64;
                        received.store(got, Ordering::Relaxed);
                        bar.add(chunk.len() as u64);
                    }
                }
            }
            bar.finish();
            Ok(ok)
        });
        let mut sent: u64 = 0;
        let send_res = (|| -> Result<Duration, IpcClientError> {
            while sent < size {
                let n = (size - sent).min(BULK_CHUNK as u64) as usize;
                c.send(conn, pattern_at(&pattern, sent, n))?;
                sent += n as u64;
                if Instant::now() >= deadline {
                    return Err(IpcClientError::Timeout("bench to finish".into()));
                }
            }
            Ok(start.elapsed())
        })();
        let recv_res = reader.join();
        (send_res.map(|d| (d, sent)), recv_res)
    });
    let total = start.elapsed();
    let _ = c.close(conn);
    let (send_dur, sent) = send_res.map_err(io_err)?;
    let verified = match recv_res {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(io_err(e)),
        Err(_) => return Err(CliError::new("internal", "bench reader panicked")),
    };
    let recv_bytes = received.load(Ordering::Relaxed);
    let mib = |bytes: u64, d: Duration| {
        let s = d.as_secs_f64();
        if s > 0.0 {
            bytes as f64 / 1048576.0 / s
        } else {
            0.0
        }
    };
    let total_mbps = mib(recv_bytes, total);
    if recv_bytes < size {
        return Err(CliError::new(
            "connection_failed",
            format!("echo ended after {recv_bytes} of {size} bytes"),
        ));
    }
    Ok(BenchOutcome {
        data: json!({
            "recv_bytes": recv_bytes,
            "send_duration_ms": ms(send_dur),
            "send_mbps": mib(sent, send_dur),
            "sent_bytes": sent,
            "target": target,
            "total_duration_ms": ms(total),
            "total_mbps": total_mbps,
        }),
        verified,
        total_mbps,
    })
}

/// The `len` bytes of the bench stream starting at stream offset `at`
/// (`len` ≤ [`BULK_CHUNK`]), from a pattern buffer of `BULK_CHUNK + 256`
/// bytes whose byte i is i mod 256.
fn pattern_at(pattern: &[u8], at: u64, len: usize) -> &[u8] {
    let off = (at % 256) as usize;
    &pattern[off..off + len]
}

/// `send` / `connect`: dial, write `data`, one read (≤ 65 535 bytes) with
/// `timeout`, close. Returns the response text ("" if the peer closed).
pub fn exchange(
    c: &IpcClient,
    addr: Addr,
    port: u16,
    data: &[u8],
    timeout: Duration,
) -> CliResult<String> {
    let deadline = Instant::now() + timeout;
    let conn = dial(c, addr, port, deadline)?;
    let r = c
        .send(conn, data)
        .and_then(|()| read_once(c, conn, ONE_READ_MAX, remaining(deadline)));
    let _ = c.close(conn);
    match r {
        Ok(Some(d)) => Ok(String::from_utf8_lossy(&d).into_owned()),
        Ok(None) => Ok(String::new()),
        Err(IpcClientError::Timeout(_)) => Err(CliError::new(
            "timeout",
            format!(
                "no response from {addr}:{port} within {}s",
                timeout.as_secs_f64()
            ),
        )),
        Err(e) => Err(io_err(e)),
    }
}

/// `recv`: bind `port`, accept up to `count` streams, one read from each,
/// close it.
pub fn recv(
    c: &IpcClient,
    port: u16,
    count: u32,
    timeout: Duration,
    mut each: impl FnMut(&Value),
) -> CliResult<Value> {
    c.bind(port).map_err(|e| match e {
        IpcClientError::Daemon(m) => CliError::new("already_exists", m),
        other => io_err(other),
    })?;
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let mut timed_out = false;
    for seq in 0..count {
        let a = match c.accept(port, remaining(deadline)) {
            Ok(a) => a,
            Err(IpcClientError::Timeout(_)) => {
                timed_out = true;
                break;
            }
            Err(e) => return Err(io_err(e)),
        };
        let v = match read_once(c, a.conn_id, ONE_READ_MAX, remaining(deadline)) {
            Ok(Some(d)) => json!({"bytes": d.len(), "data": String::from_utf8_lossy(&d),
                                  "port": port, "seq": seq}),
            Ok(None) => json!({"bytes": 0, "data": "", "port": port, "seq": seq}),
            Err(e) => json!({"error": e.to_string(), "port": port, "seq": seq}),
        };
        let _ = c.close(a.conn_id);
        each(&v);
        messages.push(v);
    }
    Ok(json!({"messages": messages, "timeout": timed_out}))
}

/// Sends one data-exchange frame (`payload` already laid out for its type)
/// to port 1001 and reads the one-frame ACK, all within `timeout`. Returns
/// the ACK text. Without an ACK it is an error: the bytes left this daemon,
/// but nothing says the receiver has them.
fn dataexchange_send(
    c: &IpcClient,
    addr: Addr,
    frame_type: FrameType,
    payload: &[u8],
    progress: Option<&mut Progress>,
    timeout: Duration,
) -> CliResult<String> {
    let max = max_payload(WireProfile::Current) as usize;
    if payload.len() > max {
        return Err(CliError::invalid(format!(
            "payload of {} bytes exceeds the data exchange limit of {max} bytes",
            payload.len()
        )));
    }
    let frame = Frame {
        frame_type,
        payload,
    };
    let mut buf = vec![0u8; frame.encoded_len()];
    let n = frame
        .encode(&mut buf)
        .map_err(|e| CliError::new("internal", e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let conn = dial(c, addr, ports::DATA_EXCHANGE, deadline)?;
    let mut bar = progress;
    let total = n;
    let r = (|| -> Result<Option<String>, IpcClientError> {
        for piece in buf[..n].chunks(4 * BULK_CHUNK) {
            c.send(conn, piece)?;
            if let Some(b) = bar.as_deref_mut() {
                b.add(piece.len() as u64);
            }
        }
        if let Some(b) = bar.as_deref_mut() {
            b.finish();
        }
        // Read exactly one frame back: the ACK.
        let mut acc = Vec::new();
        loop {
            if let Ok(Some((f, _))) = Frame::parse(&acc, max as u32) {
                return Ok(Some(String::from_utf8_lossy(f.payload).into_owned()));
            }
            match c.recv(conn, remaining(deadline))? {
                Some(d) => acc.extend_from_slice(&d),
                None => return Ok(None),
            }
        }
    })();
    let _ = c.close(conn);
    let unknown = format!(
        "{total} bytes were handed to the local daemon for {addr}; whether they arrived is unknown"
    );
    match r {
        // The receiver answered but did not store the data (`spec/services.md`
        // §5.3: a refused name, a failed disk write).
        Ok(Some(reply)) if reply.starts_with("ERR ") => Err(CliError::new(
            "refused",
            format!("the receiver did not store the data: {reply}"),
        )
        .hint(
            "the receiver's disk or quota is the likely cause; ask its operator, then send again",
        )),
        Ok(Some(ack)) => Ok(ack),
        Ok(None) => Err(CliError::new(
            "connection_failed",
            format!("the receiver closed the stream without acknowledging: {unknown}"),
        )
        .hint("check that the peer is running (`pilotctl ping <peer>`), then send again")),
        Err(IpcClientError::Timeout(_)) => Err(CliError::new(
            "timeout",
            format!(
                "no acknowledgement within {:.1}s: {unknown}",
                timeout.as_secs_f64()
            ),
        )
        .hint("a slow or large transfer may need a longer --timeout")),
        Err(IpcClientError::Disconnected) => Err(CliError::new(
            "connection_failed",
            format!("the local daemon closed the connection: {unknown}"),
        )),
        Err(other) => Err(io_err(other)),
    }
}

/// `send-message`: one TEXT / JSON / BINARY frame, read the ACK.
pub fn send_message(
    c: &IpcClient,
    addr: Addr,
    target: &str,
    kind: &str,
    data: &str,
    timeout: Duration,
) -> CliResult<Value> {
    let ft = match kind.to_ascii_lowercase().as_str() {
        "text" => FrameType::Text,
        "json" => FrameType::Json,
        "binary" => FrameType::Binary,
        other => {
            return Err(CliError::invalid(format!(
                "unknown message type {other:?} (use text, json or binary)"
            )));
        }
    };
    let ack = dataexchange_send(c, addr, ft, data.as_bytes(), None, timeout)?;
    Ok(
        json!({"ack": ack, "bytes": data.len(), "target": target, "type": kind.to_ascii_lowercase()}),
    )
}

/// Largest file `send-file` sends: one data-exchange frame (the name and
/// its length prefix count too).
pub fn max_file_bytes() -> u64 {
    u64::from(max_payload(WireProfile::Current))
}

/// Checks a file for `send-file` before any network call: it exists, is a
/// regular file and fits in one frame.
pub fn check_file(path: &std::path::Path) -> CliResult<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| CliError::new("not_found", format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(CliError::invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let max = max_file_bytes();
    if meta.len() + 8 + 255 > max {
        return Err(CliError::invalid(format!(
            "{} is {} bytes; send-file sends at most {} bytes (one data-exchange frame)",
            path.display(),
            meta.len(),
            max - 8 - 255
        ))
        .hint("split it (e.g. `split -b 60M`) and send the parts"));
    }
    Ok(())
}

/// `send-file`: one FILE frame with the file's basename; read the ACK.
pub fn send_file(
    c: &IpcClient,
    addr: Addr,
    path: &std::path::Path,
    progress: bool,
    timeout: Duration,
) -> CliResult<Value> {
    let data = std::fs::read(path)
        .map_err(|e| CliError::new("not_found", format!("cannot read {}: {e}", path.display())))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::invalid(format!("no file name in {}", path.display())))?;
    let body = FileBody::Named {
        name: name.as_bytes(),
        data: &data,
    };
    let mut payload = vec![0u8; body.encoded_len()];
    body.encode(&mut payload)
        .map_err(|e| CliError::invalid(e.to_string()))?;
    let mut bar = Progress::new("send-file", payload.len() as u64 + 8, progress);
    let ack = dataexchange_send(c, addr, FrameType::File, &payload, Some(&mut bar), timeout)?;
    Ok(json!({"ack": ack, "bytes": data.len(), "destination": addr.to_string(), "filename": name}))
}

fn event_bytes(topic: &str, payload: &[u8]) -> CliResult<Vec<u8>> {
    let ev = Event {
        topic: topic.as_bytes(),
        payload,
    };
    let mut buf = vec![0u8; ev.encoded_len()];
    ev.encode(&mut buf)
        .map_err(|e| CliError::invalid(format!("event: {e}")))?;
    Ok(buf)
}

/// The error of a broker that closed a fresh subscription: it serves only
/// peers it trusts (current profile).
fn refused(addr: Addr, what: &str) -> CliError {
    CliError::new(
        "refused",
        format!("the event stream of {addr} refused the {what}: it serves only peers that trust each other"),
    )
    .hint(format!(
        "ask for trust with `pilotctl handshake {} \"reason\"`, wait for the approval (`pilotctl trust`), then retry",
        addr.node
    ))
}

/// `publish`: connect to 1002, subscribe to `topic`, publish one event,
/// close. Delivery is confirmed by a second subscription to the same topic
/// that must see the event come back from the broker within `timeout`; a
/// broker that refuses us (untrusted) is an error.
pub fn publish(
    c: &IpcClient,
    addr: Addr,
    target: &str,
    topic: &str,
    data: &str,
    timeout: Duration,
) -> CliResult<Value> {
    let deadline = Instant::now() + timeout;
    let sub = event_bytes(topic, b"")?;
    let publ = event_bytes(topic, data.as_bytes())?;
    let mut watch = Subscription::open_by(c, addr, topic, deadline)?;
    let conn = dial(c, addr, ports::EVENT_STREAM, deadline)?;
    let r = c.send(conn, &sub).and_then(|()| c.send(conn, &publ));
    let outcome = r.map_err(io_err).and_then(|()| loop {
        match watch.next(remaining(deadline)) {
            Ok(Some(v)) if v["topic"] == topic && v["data"] == data => break Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => break Err(refused(addr, "subscription")),
            Err(e) if e.code == "timeout" => {
                break Err(CliError::new(
                    "timeout",
                    format!(
                        "the broker at {addr} did not pass the event on within {:.1}s; it may not have been published",
                        timeout.as_secs_f64()
                    ),
                ));
            }
            Err(e) => break Err(e),
        }
    });
    let _ = c.close(conn);
    outcome?;
    Ok(json!({"bytes": data.len(), "delivered": true, "target": target, "topic": topic}))
}

/// A live subscription to a broker's topic.
pub struct Subscription<'a> {
    c: &'a IpcClient,
    conn: u32,
    buf: Vec<u8>,
}

impl<'a> Subscription<'a> {
    /// Connects to 1002 on `addr` and subscribes to `topic` (`*` = all).
    pub fn open(c: &'a IpcClient, addr: Addr, topic: &str) -> CliResult<Self> {
        Self::open_by(c, addr, topic, Instant::now() + c.timeout())
    }

    /// Like [`Subscription::open`], the dial ending at `deadline`.
    pub fn open_by(
        c: &'a IpcClient,
        addr: Addr,
        topic: &str,
        deadline: Instant,
    ) -> CliResult<Self> {
        let sub = event_bytes(topic, b"")?;
        let conn = dial(c, addr, ports::EVENT_STREAM, deadline)?;
        c.send(conn, &sub).map_err(io_err)?;
        Ok(Subscription {
            c,
            conn,
            buf: Vec::new(),
        })
    }

    /// The next event as `{"bytes","data","topic"}`; `Ok(None)` when the
    /// broker closed the stream; a `timeout` error after `timeout`.
    pub fn next(&mut self, timeout: Duration) -> CliResult<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            match Event::parse(&self.buf, WireProfile::Current) {
                Ok(Some((ev, used))) => {
                    let v = json!({
                        "bytes": ev.payload.len(),
                        "data": String::from_utf8_lossy(ev.payload),
                        "topic": String::from_utf8_lossy(ev.topic),
                    });
                    self.buf.drain(..used);
                    return Ok(Some(v));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(CliError::new(
                        "connection_failed",
                        format!("bad event: {e}"),
                    ));
                }
            }
            match self.c.recv(self.conn, remaining(deadline)) {
                Ok(Some(d)) => self.buf.extend_from_slice(&d),
                Ok(None) => return Ok(None),
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let _ = self.c.close(self.conn);
    }
}

/// `subscribe`: `count` events (0 = unbounded, each passed to `each`) or
/// until `timeout` (zero = none).
pub fn subscribe(
    c: &IpcClient,
    addr: Addr,
    topic: &str,
    count: u32,
    timeout: Duration,
    mut each: impl FnMut(&Value),
) -> CliResult<Value> {
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let mut sub = Subscription::open_by(
        c,
        addr,
        topic,
        deadline.unwrap_or_else(|| Instant::now() + c.timeout()),
    )?;
    let mut events = Vec::new();
    let mut seen = 0u64;
    let mut timed_out = false;
    while count == 0 || (events.len() as u32) < count {
        let wait = deadline.map_or(Duration::from_secs(3600), remaining);
        match sub.next(wait) {
            Ok(Some(v)) => {
                seen += 1;
                each(&v);
                if count != 0 {
                    events.push(v);
                }
            }
            Ok(None) if seen == 0 => return Err(refused(addr, "subscription")),
            Ok(None) => {
                return Err(CliError::new(
                    "connection_failed",
                    format!("the broker at {addr} closed the subscription after {seen} events"),
                ));
            }
            Err(e) if e.code == "timeout" => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    timed_out = true;
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(json!({"events": events, "timeout": timed_out}))
}

/// `listen`: datagrams whose destination port is `port`.
pub fn listen(
    c: &IpcClient,
    port: u16,
    count: u32,
    timeout: Duration,
    mut each: impl FnMut(&Value),
) -> CliResult<Value> {
    // Binding makes the node deliver datagrams to the port; an application
    // that already bound it keeps it (every client sees every datagram).
    let _ = c.bind(port);
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let mut messages = Vec::new();
    let mut timed_out = false;
    while count == 0 || (messages.len() as u32) < count {
        let wait = deadline.map_or(Duration::from_secs(3600), remaining);
        match c.recv_from(port, wait) {
            Ok(d) => {
                let v = json!({"bytes": d.data.len(), "data": String::from_utf8_lossy(&d.data),
                               "src_addr": d.src.to_string(), "src_port": d.src_port});
                each(&v);
                if count != 0 {
                    messages.push(v);
                }
            }
            Err(IpcClientError::Timeout(_)) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    timed_out = true;
                    break;
                }
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(json!({"messages": messages, "timeout": timed_out}))
}

/// The error of `rotate-key`, with a code and a hint that say what to do.
pub fn rotate_key_error(e: IpcClientError) -> CliError {
    match e {
        IpcClientError::Daemon(m) if m.contains("not registered") => {
            CliError::new("registry_unreachable", m)
                .hint("wait until `pilotctl info` shows a node_id, then retry")
        }
        IpcClientError::Daemon(m) if m.contains("in progress") => {
            CliError::new("already_exists", m).hint("wait for the running rotation to finish")
        }
        IpcClientError::Daemon(m) if m.contains("too soon") || m.contains("rotated its key") => {
            CliError::new("refused", m).hint("the registry allows one rotation per node every 10 s; retry later")
        }
        IpcClientError::Daemon(m)
            if m.contains("request failed") || m.contains("answer lost") || m.contains("registry: registry") =>
        {
            CliError::new("registry_unreachable", m).hint(
                "the outcome is unknown; the daemon keeps the new key and adopts it if the registry took it. Check with `pilotctl info`",
            )
        }
        IpcClientError::Daemon(m) if m.contains("could not save") => CliError::new("internal", m)
            .hint("the daemon could not write beside its identity file; free space or fix permissions, then retry"),
        IpcClientError::Daemon(m) => CliError::new("refused", m),
        other => CliError::ipc(other, "internal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_pattern_is_byte_k_equals_k_mod_256_at_any_offset() {
        let pattern: Vec<u8> = (0..BULK_CHUNK + 256).map(|i| i as u8).collect();
        for at in [0u64, 1, 255, 256, 300, 65_537, (1 << 40) + 3] {
            for len in [0, 1, 7, 256, BULK_CHUNK - 1, BULK_CHUNK] {
                let w = pattern_at(&pattern, at, len);
                assert_eq!(w.len(), len);
                assert!(
                    w.iter()
                        .enumerate()
                        .all(|(j, b)| *b == ((at + j as u64) % 256) as u8),
                    "at {at} len {len}"
                );
            }
        }
    }
}
