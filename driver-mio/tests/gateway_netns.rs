//! The IP gateway end to end, in two network namespaces the test creates
//! (`spec/gateway.md`): node A (an embedded node serving HTTP on Pilot
//! port 80, plus the rendezvous) lives in namespace A; daemon B and its
//! gateway live in namespace B, joined to A by a veth pair. An unmodified
//! `curl http://10.4.0.1/` inside B fetches A's page through the gateway;
//! `gateway list` shows the mapping; `unmap` removes it and curl fails;
//! `stop` removes everything. The gateway's DNS stub runs on port 53 of
//! B's loopback and B's resolv.conf points at it (`ip netns exec` mounts
//! `/etc/netns/<B>/resolv.conf`), so `curl http://web-a.pilot/` resolves
//! through the ordinary system resolver; a Rust client (hickory-proto)
//! and `dig`, when installed, check the answers. Needs root (network
//! namespaces); skips with a message otherwise.

mod pilotctl_support;

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use pilot_driver_mio::ipc_client::IpcClient;
use pilot_driver_mio::rendezvous::server::{Server, ServerConfig};
use pilot_driver_tokio::{Addr, Node, NodeConfig, RegistryConfig};
use pilotctl_support::{PILOTCTL, Proc, eventually};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: &str = "hello from node A over Pilot\n";
const A_IP: &str = "10.231.0.1";
const B_IP: &str = "10.231.0.2";

fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn must(cmd: &[&str]) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; deleted on drop.
struct Netns {
    a: String,
    b: String,
}

impl Netns {
    /// `None` (with the reason) when namespaces cannot be created here.
    fn create() -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let id = std::process::id();
        let a = format!("pgwA{id}");
        let b = format!("pgwB{id}");
        let out = run(&["ip", "netns", "add", &a]);
        if !out.status.success() {
            return Err(format!(
                "ip netns add failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ns = Netns { a, b };
        must(&["ip", "netns", "add", &ns.b]);
        let va = format!("pgwa{id}");
        let vb = format!("pgwb{id}");
        must(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        must(&["ip", "link", "set", &va, "netns", &ns.a]);
        must(&["ip", "link", "set", &vb, "netns", &ns.b]);
        for (n, v, ip) in [(&ns.a, &va, A_IP), (&ns.b, &vb, B_IP)] {
            must(&["ip", "-n", n, "link", "set", "lo", "up"]);
            must(&["ip", "-n", n, "addr", "add", &format!("{ip}/24"), "dev", v]);
            must(&["ip", "-n", n, "link", "set", v, "up"]);
        }
        Ok(ns)
    }

    /// A command run inside namespace B.
    fn in_b(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.b, prog]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.b));
        // Deleting a namespace removes its veth end (and so the pair).
        let _ = run(&["ip", "netns", "del", &self.a]);
        let _ = run(&["ip", "netns", "del", &self.b]);
    }
}

/// Moves the calling thread into namespace `name`.
fn enter(name: &str) {
    let f = File::open(Path::new("/var/run/netns").join(name)).expect("open netns");
    // SAFETY: a valid namespace fd; only this thread changes namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Namespace A: the rendezvous and an embedded node serving `PAGE` as HTTP
/// on Pilot port 80. Sends (registry, beacon, node address), then runs
/// until `stop` fires.
fn side_a(ns: String, ready: mpsc::Sender<(String, String, Addr)>, stop: mpsc::Receiver<()>) {
    enter(&ns);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("rv.redb"));
    cfg.registry_addr = format!("{A_IP}:0").parse().unwrap();
    cfg.beacon_addr = format!("{A_IP}:0").parse().unwrap();
    let server = Server::bind(cfg).unwrap();
    let registry = server.registry_addr().unwrap();
    let beacon = server.beacon_addr().unwrap();
    let stop_rv = server.stop_handle();
    // Spawned from this thread, so it lives in namespace A too.
    let rv = std::thread::spawn(move || server.run());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut reg = RegistryConfig::new(registry);
        reg.public = true;
        reg.hostname = "web-a".into();
        let mut nc = NodeConfig::with_registry(reg);
        nc.bind = format!("{A_IP}:0").parse().unwrap();
        let node = Node::start(nc).await.expect("node A joins");
        let listener = node.listen(80).unwrap();
        ready
            .send((registry.to_string(), beacon.to_string(), node.addr()))
            .unwrap();
        let serve = async move {
            loop {
                let Ok(mut s) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        };
        tokio::select! {
            _ = serve => {}
            _ = tokio::task::spawn_blocking(move || { let _ = stop.recv(); }) => {}
        }
        drop(node);
    });
    stop_rv.stop();
    let _ = rv.join();
}

fn pilotctl_json(mut c: Command) -> (bool, Value) {
    let out = c.output().expect("run pilotctl");
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    let v: Value = serde_json::from_slice(&text).unwrap_or_else(|_| {
        panic!("not JSON: {}", String::from_utf8_lossy(&text));
    });
    (out.status.success(), v)
}

fn curl(ns: &Netns, url: &str) -> Output {
    ns.in_b("curl")
        .args(["-sS", "--max-time", "60", url])
        .output()
        .expect("run curl (install curl)")
}

/// One DNS query to the stub on B's `127.0.0.1:53`, from a thread inside
/// namespace B: the answer's A addresses, or the error rcode.
fn dns_query(ns: &Netns, name: &str, t: RecordType) -> Result<Vec<Ipv4Addr>, ResponseCode> {
    let b = ns.b.clone();
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter(&b);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut q = Message::new();
        q.set_id(0x5150)
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(&name).unwrap(), t));
        sock.send_to(&q.to_vec().unwrap(), "127.0.0.1:53").unwrap();
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).expect("a DNS reply within 20 s");
        let r = Message::from_vec(&buf[..n]).expect("a valid DNS reply");
        assert_eq!(r.id(), 0x5150);
        if r.response_code() != ResponseCode::NoError {
            return Err(r.response_code());
        }
        Ok(r.answers()
            .iter()
            .filter_map(|rec| match rec.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    })
    .join()
    .unwrap()
}

fn lo_has(ns: &Netns, ip: &str) -> bool {
    let out = run(&["ip", "-n", &ns.b, "-4", "addr", "show", "dev", "lo"]);
    String::from_utf8_lossy(&out.stdout).contains(&format!("{ip}/32"))
}

#[test]
fn curl_reaches_a_peer_through_the_gateway() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIP gateway_netns: network namespaces unavailable ({why})");
            return;
        }
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let ns_a = ns.a.clone();
    let a = std::thread::spawn(move || side_a(ns_a, ready_tx, stop_rx));
    let (registry, beacon, addr_a) = ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("side A ready");

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("b.sock");
    let control = dir.path().join("b.gw");
    let log = File::create(dir.path().join("b.log")).unwrap();
    let _daemon = Proc(
        ns.in_b(PILOTCTL)
            .args(["_daemon-run", "--registry", &registry, "--beacon", &beacon])
            .args(["--listen", &format!("{B_IP}:0"), "--hostname", "gw-b"])
            .arg("--socket")
            .arg(&sock)
            .arg("--dir")
            .arg(dir.path().join("b"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon B"),
    );
    eventually("daemon B registered", || {
        IpcClient::connect(&sock)
            .ok()
            .and_then(|c| c.info().ok())
            .is_some_and(|i| i["node_id"].as_u64().unwrap_or(0) != 0)
    });

    let ctl = |args: &[&str]| {
        let mut c = ns.in_b(PILOTCTL);
        c.arg("--json")
            .args(args)
            .arg("--control")
            .arg(&control)
            .env("PILOT_SOCKET", &sock);
        pilotctl_json(c)
    };
    // Stops the gateway even when an assertion fails below.
    struct StopGw<'a>(&'a dyn Fn(&[&str]) -> (bool, Value));
    impl Drop for StopGw<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["gateway", "stop"]);
        }
    }

    // B's system resolver asks the gateway's DNS stub.
    let etc = Path::new("/etc/netns").join(&ns.b);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();

    // A hostname target is resolved through daemon B.
    let (ok, v) = ctl(&[
        "gateway",
        "start",
        "--ports",
        "80",
        "--dns",
        "127.0.0.1:53",
        "web-a",
    ]);
    assert!(ok, "gateway start: {v}");
    let _stop = StopGw(&ctl);
    let data = &v["data"];
    assert_eq!(data["mappings"][0]["ip"], "10.4.0.1", "{v}");
    assert_eq!(data["mappings"][0]["addr"], addr_a.to_string());
    assert!(lo_has(&ns, "10.4.0.1"));

    let out = curl(&ns, "http://10.4.0.1/");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), PAGE);

    let (ok, v) = ctl(&["gateway", "list"]);
    assert!(ok, "{v}");
    let m = &v["data"]["mappings"];
    assert_eq!(v["data"]["total"], 1);
    assert_eq!(m[0]["ip"], "10.4.0.1");
    assert_eq!(m[0]["addr"], addr_a.to_string());
    assert_eq!(m[0]["node_id"], addr_a.node);
    assert_eq!(m[0]["ports"], serde_json::json!([80]));
    assert_eq!(m[0]["connections"], 1);

    // Mapping the same peer again keeps its IP; a second IP is refused.
    let (ok, v) = ctl(&["gateway", "map", &addr_a.to_string(), "10.4.0.9"]);
    assert!(ok, "{v}");
    assert_eq!(v["data"]["ip"], "10.4.0.1");
    assert_eq!(v["data"]["existing"], true);

    let (ok, v) = ctl(&["gateway", "unmap", "10.4.0.1"]);
    assert!(ok, "{v}");
    assert!(!lo_has(&ns, "10.4.0.1"));
    let out = curl(&ns, "http://10.4.0.1/");
    assert!(!out.status.success(), "curl after unmap must fail");
    let (ok, v) = ctl(&["gateway", "list"]);
    assert!(ok);
    assert_eq!(v["data"]["total"], 0);
    let (ok, v) = ctl(&["gateway", "unmap", "10.4.0.1"]);
    assert!(!ok);
    assert_eq!(v["code"], "not_found");
    assert_eq!(v["message"], "no mapping for 10.4.0.1");

    // Map again at an explicit IP on the running gateway: reachable there.
    let (ok, v) = ctl(&["gateway", "map", &addr_a.node.to_string(), "10.4.3.7"]);
    assert!(ok, "{v}");
    let out = curl(&ns, "http://10.4.3.7/");
    assert_eq!(String::from_utf8_lossy(&out.stdout), PAGE);
    let (ok, v) = ctl(&["gateway", "map", "7", "10.9.0.1"]);
    assert!(!ok);
    assert_eq!(v["message"], "IP 10.9.0.1 not in subnet 10.4.0.0/16");

    // The DNS stub answers with the peer's current mapping, refuses other
    // domains and says NXDOMAIN for unknown hosts.
    assert_eq!(
        dns_query(&ns, "web-a.pilot.", RecordType::A),
        Ok(vec!["10.4.3.7".parse().unwrap()])
    );
    assert_eq!(
        dns_query(&ns, "WEB-A.pilot.", RecordType::A),
        Ok(vec!["10.4.3.7".parse().unwrap()])
    );
    assert_eq!(dns_query(&ns, "web-a.pilot.", RecordType::AAAA), Ok(vec![]));
    assert_eq!(
        dns_query(&ns, "nobody-here.pilot.", RecordType::A),
        Err(ResponseCode::NXDomain)
    );
    assert_eq!(
        dns_query(&ns, "example.com.", RecordType::A),
        Err(ResponseCode::Refused)
    );
    // Unmapped, the name maps the peer again on first use: an ordinary
    // curl by name goes resolver → stub → new mapping → Pilot stream.
    let (ok, v) = ctl(&["gateway", "unmap", "10.4.3.7"]);
    assert!(ok, "{v}");
    let out = curl(&ns, "http://web-a.pilot/");
    assert!(
        out.status.success(),
        "curl by name failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), PAGE);
    let (ok, v) = ctl(&["gateway", "list"]);
    assert!(ok, "{v}");
    assert_eq!(v["data"]["mappings"][0]["ip"], "10.4.0.1", "{v}");
    assert_eq!(v["data"]["mappings"][0]["addr"], addr_a.to_string());
    assert_eq!(v["data"]["dns"]["listen"], "127.0.0.1:53");
    let q = &v["data"]["dns"]["queries"];
    assert!(q["answered"].as_u64().unwrap() >= 3, "{q}");
    assert_eq!(q["nxdomain"], 1, "{q}");
    assert_eq!(q["refused"], 1, "{q}");
    match ns
        .in_b("dig")
        .args(["+short", "+time=10", "@127.0.0.1", "web-a.pilot"])
        .output()
    {
        Ok(out) => assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "10.4.0.1",
            "dig: {out:?}"
        ),
        Err(e) => eprintln!("dig not installed ({e}); the Rust client checked the stub"),
    }

    // Stop removes the addresses and the control socket.
    let (ok, v) = ctl(&["gateway", "stop"]);
    assert!(ok, "{v}");
    assert_eq!(v["data"]["stopped"], true);
    assert!(!lo_has(&ns, "10.4.0.1"));
    assert!(!control.exists());
    let (ok, v) = ctl(&["gateway", "list"]);
    assert!(!ok);
    assert_eq!(v["code"], "not_running");

    let _ = stop_tx.send(());
    let _ = a.join();
}

/// Without CAP_NET_ADMIN, `gateway start` fails at once with a clear
/// error and a hint (no half-started gateway).
#[test]
fn start_without_privileges_says_so() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Already unprivileged: run it directly.
        let out = Command::new(PILOTCTL)
            .args(["--json", "gateway", "start", "--control", "/nonexistent/gw"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stderr).unwrap();
        assert_eq!(v["code"], "permission_denied", "{v}");
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(PILOTCTL)
        .args(["--json", "gateway", "start", "--control", "/nonexistent/gw"])
        .output();
    let Ok(out) = out else {
        eprintln!("SKIP: setpriv (util-linux) is not installed");
        return;
    };
    if out.stderr.starts_with(b"setpriv:") {
        eprintln!(
            "SKIP: setpriv cannot drop privileges here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["code"], "permission_denied", "{v}");
    assert!(v["message"].as_str().unwrap().contains("CAP_NET_ADMIN"));
    assert!(v["hint"].as_str().unwrap().contains("sudo"));
}
