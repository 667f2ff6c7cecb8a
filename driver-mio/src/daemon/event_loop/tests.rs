//! The loop against a small stand-in engine over real loopback sockets:
//! registry dialing, UDP in and out, IPC echo with back-pressure, closing
//! a client after an error, file actions, the timer and a graceful stop.

use super::*;
use crate::daemon::engine::Datagram;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream as StdUnix;
use std::sync::Mutex;

/// Observations shared with the test thread.
#[derive(Default, Debug)]
struct Seen {
    reg_disconnects: usize,
    closed_clients: usize,
    max_out: usize,
    paused_once: bool,
}

const OUT_HIGH: usize = 256 * 1024;

struct Fake {
    seen: Arc<Mutex<Seen>>,
    actions: VecDeque<Action>,
    reg_in: Vec<u8>,
    reg_out: VecDeque<Vec<u8>>,
    tx: VecDeque<(SocketAddr, Vec<u8>)>,
    out: HashMap<ClientId, Vec<u8>>,
    closing: HashMap<ClientId, bool>,
    next_id: ClientId,
    timer: Option<Instant>,
}

impl Fake {
    fn new(seen: Arc<Mutex<Seen>>) -> Fake {
        Fake {
            seen,
            actions: VecDeque::from([Action::DialRegistry]),
            reg_in: Vec::new(),
            reg_out: VecDeque::new(),
            tx: VecDeque::new(),
            out: HashMap::new(),
            closing: HashMap::new(),
            next_id: 1,
            timer: None,
        }
    }
}

impl Engine for Fake {
    fn handle_udp(&mut self, _now: Instant, from: SocketAddr, bytes: &mut [u8]) {
        bytes.reverse();
        self.tx.push_back((from, bytes.to_vec()));
    }
    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Datagram> {
        let (dst, b) = self.tx.pop_front()?;
        buf[..b.len()].copy_from_slice(&b);
        Some(Datagram { dst, len: b.len() })
    }
    fn registry_connected(&mut self, _now: Instant) {
        self.reg_out.push_back(b"HELLO\n".to_vec());
    }
    fn registry_disconnected(&mut self, _now: Instant) {
        self.seen.lock().unwrap().reg_disconnects += 1;
    }
    fn handle_registry_bytes(&mut self, _now: Instant, bytes: &[u8]) {
        self.reg_in.extend_from_slice(bytes);
        if self.reg_in.ends_with(b"OK") {
            self.actions.push_back(Action::Registered {
                node_id: 7,
                address: "0:0000.0000.0007".into(),
            });
        }
    }
    fn poll_registry_bytes(&mut self) -> Option<Vec<u8>> {
        self.reg_out.pop_front()
    }
    fn ipc_open(&mut self, _now: Instant) -> Option<ClientId> {
        let id = self.next_id;
        self.next_id += 1;
        self.out.insert(id, Vec::new());
        Some(id)
    }
    fn handle_ipc_bytes(&mut self, _now: Instant, client: ClientId, bytes: &[u8]) {
        assert!(!self.ipc_read_paused(client), "read while paused");
        if bytes == [0xFE] {
            self.actions
                .push_back(Action::SaveTrust("{\"trusted\":null}".into()));
            self.actions.push_back(Action::SaveReceivedFile {
                name: "f.bin".into(),
                data: vec![1, 2, 3],
                from: pilot_proto::addr::Addr::new(0, 5),
            });
            self.actions.push_back(Action::SaveReceivedFile {
                name: "../escape".into(),
                data: vec![9],
                from: pilot_proto::addr::Addr::new(0, 5),
            });
            self.actions.push_back(Action::SaveInbox {
                name: "TEXT-1.json".into(),
                json: "{}".into(),
            });
            self.out
                .get_mut(&client)
                .unwrap()
                .extend_from_slice(b"SAVED");
            return;
        }
        if bytes.contains(&0xFF) {
            self.out.get_mut(&client).unwrap().extend_from_slice(b"BYE");
            self.closing.insert(client, true);
            return;
        }
        let out = self.out.get_mut(&client).unwrap();
        out.extend_from_slice(bytes);
        let mut s = self.seen.lock().unwrap();
        s.max_out = s.max_out.max(out.len());
        if out.len() >= OUT_HIGH {
            s.paused_once = true;
        }
    }
    fn ipc_closed(&mut self, _now: Instant, client: ClientId) {
        self.out.remove(&client);
        self.seen.lock().unwrap().closed_clients += 1;
    }
    fn ipc_read_paused(&self, client: ClientId) -> bool {
        self.out.get(&client).is_some_and(|o| o.len() >= OUT_HIGH)
    }
    fn ipc_output(&mut self, client: ClientId) -> Option<&[u8]> {
        self.out
            .get(&client)
            .filter(|o| !o.is_empty())
            .map(|o| o.as_slice())
    }
    fn ipc_consumed(&mut self, client: ClientId, n: usize) {
        if let Some(o) = self.out.get_mut(&client) {
            o.drain(..n);
        }
    }
    fn ipc_should_close(&self, client: ClientId) -> bool {
        self.closing.get(&client).copied().unwrap_or(false)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }
    fn handle_timeout(&mut self, now: Instant) {
        if self.timer.is_some_and(|t| t <= now) {
            self.timer = None;
            self.actions.push_back(Action::Stopped);
        }
    }
    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
    fn shutdown(&mut self, now: Instant) {
        self.timer = Some(now.saturating_add(Duration::from_millis(20)));
    }
}

const STEP: Duration = Duration::from_secs(20);

#[test]
fn loop_drives_sockets_files_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let reg_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let registry = reg_listener.local_addr().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let sock = dir.path().join("d.sock");
    let ipc = IpcSocket::bind(&sock).unwrap();
    let parts = LoopParts {
        udp: UdpSocket::from_std(udp),
        ipc,
        registry,
        trust_path: dir.path().join("trust.json"),
        profile_path: dir.path().join("profile.json"),
        received: SaveDir::open(dir.path().join("received"), 1 << 20).unwrap(),
        inbox: SaveDir::open(dir.path().join("inbox"), 1 << 20).unwrap(),
        handle_signals: false,
        print_ready: false,
        shutdown_grace: STEP,
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let lp = EventLoop::new(Fake::new(seen.clone()), parts, std::time::Instant::now()).unwrap();
    let stop = lp.stop_handle();
    let thread = std::thread::spawn(move || lp.run());

    // Registry: the loop dials, the engine greets, our reply registers it.
    reg_listener.set_nonblocking(false).unwrap();
    let (mut reg, _) = reg_listener.accept().unwrap();
    reg.set_read_timeout(Some(STEP)).unwrap();
    let mut hello = [0u8; 6];
    reg.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"HELLO\n");
    reg.write_all(b"OK").unwrap();

    // UDP: datagrams reach the engine and its replies go out.
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(STEP)).unwrap();
    peer.send_to(b"abc", udp_addr).unwrap();
    let mut b = [0u8; 16];
    let (n, from) = peer.recv_from(&mut b).unwrap();
    assert_eq!((&b[..n], from), (&b"cba"[..], udp_addr));

    // IPC: 8 MiB echoed while the client writes everything before reading
    // much; the engine pauses reading at its bound and the loop resumes.
    let mut c = StdUnix::connect(&sock).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i * 7 % 251) as u8 & 0x7f)
        .collect();
    let mut w = c.try_clone().unwrap();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&to_send).unwrap());
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == data, "echo mismatch");
    {
        let s = seen.lock().unwrap();
        assert!(s.paused_once, "back-pressure never engaged");
        assert!(
            s.max_out < OUT_HIGH + IPC_CHUNK + 1,
            "output grew to {}",
            s.max_out
        );
    }

    // File actions.
    c.write_all(&[0xFE]).unwrap();
    let mut saved = [0u8; 5];
    c.read_exact(&mut saved).unwrap();
    assert_eq!(&saved, b"SAVED");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("trust.json")).unwrap(),
        "{\"trusted\":null}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("received/f.bin")).unwrap(),
        [1, 2, 3]
    );
    assert!(!dir.path().join("escape").exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("received"))
            .unwrap()
            .count(),
        1
    );
    assert!(dir.path().join("inbox/TEXT-1.json").exists());
    // The saved file is indexed with its sender; the refused one is not.
    let index = std::fs::read_to_string(dir.path().join("received.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = index
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{index}");
    assert_eq!(lines[0]["name"], "f.bin");
    assert_eq!(lines[0]["bytes"], 3);
    assert_eq!(lines[0]["from"], "0:0000.0000.0005");

    // A protocol error: the engine's last words arrive, then EOF.
    let mut c2 = StdUnix::connect(&sock).unwrap();
    c2.set_read_timeout(Some(STEP)).unwrap();
    c2.write_all(&[0xFF]).unwrap();
    let mut rest = Vec::new();
    c2.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"BYE");
    // The first client is unaffected.
    c.write_all(b"still").unwrap();
    let mut s5 = [0u8; 5];
    c.read_exact(&mut s5).unwrap();
    assert_eq!(&s5, b"still");

    // The registry going away is reported.
    drop(reg);
    let deadline = std::time::Instant::now() + STEP;
    while seen.lock().unwrap().reg_disconnects == 0 {
        assert!(std::time::Instant::now() < deadline, "disconnect not seen");
        std::thread::sleep(Duration::from_millis(5));
    }

    // Graceful stop: the engine's timer fires, it reports Stopped.
    stop.stop();
    let exit = thread.join().unwrap().unwrap();
    assert_eq!(exit, Exit::Stopped);
    // The loop (and its socket) are gone: the path was unlinked.
    assert!(!sock.exists());
    assert!(seen.lock().unwrap().closed_clients >= 1);
}
