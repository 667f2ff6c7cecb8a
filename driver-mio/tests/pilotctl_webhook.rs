//! Webhooks with real processes: a daemon allowed to post to loopback
//! delivers its events to a local HTTP server, in order, as JSON
//! documents; `set-webhook` refuses a URL that is not http(s)://; the URL
//! and `enable-tasks` survive a daemon restart (the daemon's profile).

mod pilotctl_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use pilotctl_support::{Net, eventually, lists};
use serde_json::{Value, json};

/// Records the JSON body of every POST; answers 200.
fn server() -> (String, Arc<Mutex<Vec<Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    s.lock().unwrap().push(v);
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

/// The request reaches alpha relayed or direct; either way alpha reports
/// `handshake.received` and then `handshake.pending` (a relayed request
/// used to make only the second: the cause of this test's old failure).
#[test]
fn daemon_events_reach_a_local_server_in_order() {
    let (url, seen) = server();
    let net = Net::new();
    let alpha = net.node("alpha", &["--webhook-allow-private"]);
    let beta = net.node("beta", &[]);
    let set = alpha.ok(&["set-webhook", &url, "--dir", alpha.dir.to_str().unwrap()]);
    assert_eq!(set["applied"], true, "{set}");
    // beta asks alpha for trust: alpha reports the request.
    beta.ok(&["handshake", &alpha.node_id.to_string(), "hello"]);
    let named = |name: &'static str| move |e: &&Value| e["event"] == name;
    eventually(
        "handshake.received and handshake.pending at the server",
        || {
            let seen = seen.lock().unwrap();
            seen.iter().any(|e| e["event"] == "handshake.received")
                && seen.iter().any(|e| e["event"] == "handshake.pending")
        },
    );
    alpha.ok(&["approve", &beta.node_id.to_string()]);
    eventually("the approval at the server", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "handshake.approved")
    });
    // The approval reaches beta and the registry on their own schedule:
    // dial only once beta trusts alpha and the registry lets it resolve
    // alpha (dialing earlier is refused as not_trusted, correctly).
    eventually("beta to trust and resolve alpha", || {
        lists(&beta.ok(&["trust"]), "trusted", alpha.node_id)
            && beta.ctl(&["find", "alpha"]).status.success()
    });
    // beta streams to alpha's echo port: alpha reports the stream from its
    // SYN to its end (one connection id throughout) and beta's tunnel entry.
    beta.ok(&[
        "connect",
        &alpha.node_id.to_string(),
        "7",
        "--message",
        "hi",
    ]);
    // (alpha's approval went out on a stream of its own: port 444.)
    let on_echo = |e: &Value| e["data"]["dst_port"] == 7 || e["data"]["local_port"] == 7;
    eventually("the stream's events at the server", || {
        let seen = seen.lock().unwrap();
        ["conn.syn_received", "conn.established", "conn.fin"]
            .iter()
            .all(|n| seen.iter().any(|e| e["event"] == *n && on_echo(e)))
    });
    let events = seen.lock().unwrap().clone();
    let find = |n: &str| {
        &events
            .iter()
            .find(|e| e["event"] == n && on_echo(e))
            .unwrap()["data"]
    };
    let (syn, est, fin) = (
        find("conn.syn_received"),
        find("conn.established"),
        find("conn.fin"),
    );
    let beta_addr = format!(
        "0:0000.{:04X}.{:04X}",
        beta.node_id >> 16,
        beta.node_id & 0xffff
    );
    assert_eq!(syn, est);
    assert_eq!(
        (&syn["src_addr"], &syn["dst_port"]),
        (&json!(beta_addr), &json!(7))
    );
    assert_eq!(
        fin,
        &json!({"remote_addr": beta_addr, "remote_port": syn["src_port"], "local_port": 7, "conn_id": syn["conn_id"]})
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "tunnel.peer_added" && e["data"]["peer_node_id"] == beta.node_id),
        "{events:?}"
    );
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["event_id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    let received = events.iter().find(named("handshake.received")).unwrap();
    let pending = events.iter().find(named("handshake.pending")).unwrap();
    assert!(received["event_id"].as_u64() < pending["event_id"].as_u64());
    for e in [received, pending] {
        assert_eq!(e["node_id"], alpha.node_id);
        assert_eq!(e["data"]["peer_node_id"], beta.node_id);
        assert_eq!(e["data"]["justification"], "hello");
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    let health = alpha.ok(&["health"]);
    assert_eq!(health["webhook_queue_dropped"], 0, "{health}");

    // Cleared: later events are not posted.
    let cleared = alpha.ok(&["clear-webhook", "--dir", alpha.dir.to_str().unwrap()]);
    assert_eq!(cleared["webhook"], "");
    // A URL of another scheme is refused before anything is stored.
    let e = alpha.err(&[
        "set-webhook",
        "ftp://x/",
        "--dir",
        alpha.dir.to_str().unwrap(),
    ]);
    assert_eq!(e["code"], "invalid_argument");
}

/// `set-webhook` and `enable-tasks` are kept in the daemon's own state
/// (`<dir>/profile.json`, `spec/daemon.md` §1.2), not only in pilotctl's
/// config: a restarted daemon (no `--webhook` flag, pilotctl's config in
/// another directory) posts to the URL again and takes tasks; after
/// `clear-webhook` and `disable-tasks` a restart keeps both off.
#[test]
fn the_webhook_url_and_enable_tasks_survive_a_restart() {
    let (url, seen) = server();
    let net = Net::new();
    let ctl_dir = net.dir.path().join("ctl");
    let ctl_dir = ctl_dir.to_str().unwrap();
    let alpha = net.node("alpha", &["--webhook-allow-private"]);
    let h = alpha.ok(&["health"]);
    assert_eq!(
        (&h["task_exec"], &h["webhook"]),
        (&json!(false), &json!(""))
    );
    alpha.ok(&["enable-tasks"]);
    assert_eq!(
        alpha.ok(&["set-webhook", &url, "--dir", ctl_dir])["applied"],
        true
    );
    let id = alpha.node_id;
    drop(alpha);

    let alpha = net.node("alpha", &["--webhook-allow-private"]);
    assert_eq!(alpha.node_id, id);
    let h = alpha.ok(&["health"]);
    assert_eq!(
        (&h["task_exec"], &h["webhook"]),
        (&json!(true), &json!(url))
    );
    // The restarted daemon posts its registration to the kept URL (the
    // first run set the URL only after registering).
    eventually("node.registered from the restarted daemon", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "node.registered")
    });
    alpha.ok(&["disable-tasks"]);
    alpha.ok(&["clear-webhook", "--dir", ctl_dir]);
    drop(alpha);

    let alpha = net.node("alpha", &["--webhook-allow-private"]);
    let h = alpha.ok(&["health"]);
    assert_eq!(
        (&h["task_exec"], &h["webhook"]),
        (&json!(false), &json!(""))
    );
    let profile: Value =
        serde_json::from_slice(&std::fs::read(alpha.dir.join("profile.json")).unwrap()).unwrap();
    assert_eq!(profile["task_exec"], false, "{profile}");
    assert_eq!(profile["webhook"], "", "{profile}");
    assert_eq!(profile["hostname"], "alpha", "{profile}");
}
