//! The rendezvous's Prometheus endpoint (`--metrics-addr`) and HTML
//! dashboard (`--http-addr`) through the real binary; the dashboard is
//! loaded in Debian's headless `chromium` and its rendered DOM checked.

mod common;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use pilot_driver_mio::http_endpoint::get;
use pilot_proto::registry::messages::{
    CreateNetwork, Lookup, Register, Request, Response, SetHostname, SetTags, SetVisibility,
};

use common::{Client, Rv, STEP, ident, sign};

/// The value of the sample `name` (exact series text) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` reaches `want` (gauges and beacon counters are
/// updated once a second) and returns the last scrape.
fn scrape_until(addr: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let (status, body) = get(addr, "/metrics").expect("scrape");
        assert_eq!(status, 200);
        if sample(&body, series) == Some(want) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}; last scrape:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn register_at(c: &mut Client, seed: u32, listen: &str) -> u32 {
    match c.call(&Request::Register(Register {
        listen_addr: listen.into(),
        public_key: ident(seed).public_key_b64(),
        ..Default::default()
    })) {
        Response::RegisterOk(ok) => ok.node_id,
        other => panic!("{other:?}"),
    }
}

fn ok(r: Response) {
    assert!(!matches!(r, Response::Error { .. }), "{r:?}");
}

#[test]
fn metrics_count_requests_latency_levels_beacon_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let rv = Rv::start(
        &dir.path().join("m.redb"),
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let m = rv.metrics.expect("metrics address printed");
    let mut c = Client::connect(rv.registry);
    let a = c.register(1);
    c.register(2);
    c.register(3);
    assert!(c.lookup(a).is_some());
    // A lookup of a node nobody registered is refused.
    assert!(matches!(
        c.call(&Request::Lookup(Lookup { node_id: 999_999 })),
        Response::Error { .. }
    ));
    // A frame that is not JSON closes its connection: a counted drop.
    let mut bad = std::net::TcpStream::connect(rv.registry).unwrap();
    bad.write_all(&[0, 0, 0, 3, b'x', b'y', b'z']).unwrap();
    // The beacon: node 9 announces itself, node 5 relays 7 bytes to it,
    // and one datagram is garbage.
    let nine = UdpSocket::bind("127.0.0.1:0").unwrap();
    nine.set_read_timeout(Some(STEP)).unwrap();
    nine.send_to(&[0x01, 0, 0, 0, 9], rv.beacon).unwrap();
    let mut buf = [0u8; 64];
    nine.recv_from(&mut buf).expect("discover reply");
    let five = UdpSocket::bind("127.0.0.1:0").unwrap();
    five.send_to(b"\x05\x00\x00\x00\x05\x00\x00\x00\x09PILSxyz", rv.beacon)
        .unwrap();
    let (n, _) = nine.recv_from(&mut buf).expect("relayed");
    assert_eq!(&buf[..n], b"\x06\x00\x00\x00\x05PILSxyz");
    five.send_to(&[0xee, 1, 2], rv.beacon).unwrap();

    let body = scrape_until(m, "pilot_rendezvous_beacon_relayed_bytes_total", 7.0);
    let body = if sample(
        &body,
        r#"pilot_rendezvous_connections_dropped_total{reason="bad_frame"}"#,
    ) == Some(1.0)
        && sample(
            &body,
            r#"pilot_rendezvous_beacon_drops_total{reason="malformed"}"#,
        ) == Some(1.0)
    {
        body
    } else {
        std::thread::sleep(Duration::from_millis(1500));
        get(m, "/metrics").unwrap().1
    };
    for (series, want) in [
        (
            r#"pilot_rendezvous_requests_total{request="register",outcome="ok"}"#,
            3.0,
        ),
        (
            r#"pilot_rendezvous_requests_total{request="lookup",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"pilot_rendezvous_requests_total{request="lookup",outcome="refused"}"#,
            1.0,
        ),
        (
            r#"pilot_rendezvous_request_duration_seconds_count{request="register"}"#,
            3.0,
        ),
        ("pilot_rendezvous_nodes_registered", 3.0),
        ("pilot_rendezvous_nodes_online", 3.0),
        ("pilot_rendezvous_networks", 1.0),
        ("pilot_rendezvous_beacon_nodes", 1.0),
        (
            r#"pilot_rendezvous_beacon_relays_total{reason="delivered"}"#,
            1.0,
        ),
        (
            r#"pilot_rendezvous_beacon_drops_total{reason="malformed"}"#,
            1.0,
        ),
        (
            r#"pilot_rendezvous_connections_dropped_total{reason="bad_frame"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&body, series), Some(want), "{series} in\n{body}");
    }
    // Every registration was committed before its reply: at least one
    // commit, holding the three node records among others.
    let commits = sample(
        &body,
        "pilot_rendezvous_store_commit_duration_seconds_count",
    )
    .unwrap();
    assert!(commits >= 1.0, "{body}");
    let records = sample(&body, "pilot_rendezvous_store_commit_records_sum").unwrap();
    assert!(records >= 3.0, "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics terminator");
    assert_eq!(get(m, "/nope").unwrap().0, 404);
}

/// Headless chromium, if installed (`.ci/run` installs Debian's).
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn dashboard_renders_nodes_networks_tags_and_activity_in_chromium() {
    let Some(browser) = chromium() else {
        eprintln!(
            "SKIPPED dashboard_renders_nodes_networks_tags_and_activity_in_chromium: \
             no chromium on PATH (.ci/run installs Debian's chromium)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rv = Rv::start(
        &dir.path().join("d.redb"),
        &["--http-addr", "127.0.0.1:0", "--admin-token", "sesame"],
    );
    let http = rv.http.expect("http address printed");
    let mut c = Client::connect(rv.registry);
    let public = register_at(&mut c, 1, "127.0.0.1:41111");
    let private = register_at(&mut c, 2, "127.0.0.1:47999");
    ok(c.call(&Request::SetVisibility(SetVisibility {
        node_id: public,
        public: true,
        signature: sign(1, &format!("set_visibility:{public}")),
        ..Default::default()
    })));
    for (node, seed, name, tags) in [
        (public, 1, "alpha-web", vec!["web", "prod"]),
        (private, 2, "secret-box", vec!["prod", "db"]),
    ] {
        ok(c.call(&Request::SetHostname(SetHostname {
            node_id: node,
            hostname: name.into(),
            signature: sign(seed, &format!("set_hostname:{node}")),
            ..Default::default()
        })));
        ok(c.call(&Request::SetTags(SetTags {
            node_id: node,
            tags: tags.into_iter().map(String::from).collect(),
            signature: sign(seed, &format!("set_tags:{node}")),
            ..Default::default()
        })));
    }
    ok(c.call(&Request::CreateNetwork(CreateNetwork {
        node_id: public,
        name: "ops-net".into(),
        admin_token: "sesame".into(),
        ..Default::default()
    })));

    let url = format!("http://{http}/");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &url])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("<html"),
        "chromium failed: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The script ran: these rows exist only in the rendered DOM.
    let node_row = |id: u32| format!(r#"<tr class="node" data-id="{id}">"#);
    assert!(dom.contains(&node_row(public)), "{dom}");
    assert!(dom.contains(&node_row(private)), "{dom}");
    assert!(dom.contains(r#"<b id="online">2</b>"#), "{dom}");
    assert!(dom.contains(r#"<b id="registered">2</b>"#), "{dom}");
    assert!(dom.contains("<td>alpha-web</td>"), "{dom}");
    assert!(dom.contains("<td>secret-box</td>"), "{dom}");
    assert!(
        dom.contains("<td>ops-net</td><td>open</td><td>1</td>"),
        "network row: {dom}"
    );
    assert!(
        dom.contains(r#"<tr class="tag"><td>prod</td><td>2</td></tr>"#),
        "tag counts: {dom}"
    );
    assert!(
        dom.contains(r#"<tr class="activity">"#) && dom.contains("<td>create_network</td>"),
        "recent activity: {dom}"
    );
    // The public node's endpoint is shown; the private one's never is,
    // neither rendered nor in the embedded data or the JSON.
    assert!(dom.contains("<td>127.0.0.1:41111</td>"), "{dom}");
    assert!(!dom.contains("47999"), "private endpoint leaked: {dom}");
    let (status, json) = get(http, "/dashboard.json").unwrap();
    assert_eq!(status, 200);
    assert!(json.contains("41111") && !json.contains("47999"), "{json}");
    assert!(
        !json.contains(&ident(2).public_key_b64()),
        "no keys: {json}"
    );
}
