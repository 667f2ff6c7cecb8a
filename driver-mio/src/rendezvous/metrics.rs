//! Observability of the rendezvous: the Prometheus metrics it keeps
//! (`--metrics-addr`, text format through `prometheus-client`) and the
//! HTML dashboard (`--http-addr`) with its JSON snapshot.
//!
//! The event loop owns the registry state; these types only receive
//! numbers from it (counters on the request path, gauges and beacon deltas
//! once per loop tick) and a dashboard snapshot built by the loop when a
//! browser asks for one. The HTTP thread ([`crate::http_endpoint`]) reads
//! them without touching the loop. The dashboard never shows a private
//! node's endpoint (`spec/registry.md` §14).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pilot_proto::beacon::server::ServerStats;
use pilot_proto::registry::server::REQUEST_TYPES;
use pilot_proto::registry::server::State;
use pilot_proto::time::UnixTime;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::http_endpoint::Page;

/// A node heard from within this long counts as online.
pub const ONLINE_WINDOW: Duration = Duration::from_secs(90);

/// Most nodes listed on the dashboard (the most recently seen ones).
pub const DASHBOARD_NODES: usize = 200;

/// Most tags listed on the dashboard (the most used ones).
pub const DASHBOARD_TAGS: usize = 50;

/// Most entries of the dashboard's recent-activity list.
pub const ACTIVITY_LEN: usize = 50;

/// How a request ended, the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with its `…_ok` reply.
    Ok = 0,
    /// Refused with an error reply (bad signature, rate limit, …).
    Refused = 1,
    /// Refused because the store is unavailable, or its change was not
    /// stored.
    Unavailable = 2,
}

const OUTCOMES: [&str; 3] = ["ok", "refused", "unavailable"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    request: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Connection-limit totals the loop keeps (`spec/registry.md` §1.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// Refused: the source had too many connections.
    pub per_ip_refused: u64,
    /// Refused: the server was full.
    pub full_refused: u64,
    /// Closed to make room for a lighter source.
    pub evicted: u64,
    /// Closed: a request frame did not arrive in time.
    pub frame_timeouts: u64,
    /// Closed: idle.
    pub idle_closed: u64,
    /// Closed: an undecodable frame or request.
    pub bad_frames: u64,
}

/// Gauges the loop sets once per tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct Levels {
    /// Nodes in the registry.
    pub registered: usize,
    /// Of those, heard from within [`ONLINE_WINDOW`].
    pub online: usize,
    /// Networks, the backbone included.
    pub networks: usize,
    /// Open registry connections.
    pub connections: usize,
    /// Connections subscribed to pushes.
    pub push_subscribers: usize,
    /// Endpoints the beacon tracks.
    pub beacon_nodes: usize,
    /// Peer beacons in use.
    pub beacon_peers: usize,
}

/// Every rendezvous metric, registered in one `prometheus-client`
/// registry. Cheap to update from the loop: counters are atomics picked by
/// index, never looked up by label on the request path.
#[derive(Debug)]
pub struct RendezvousMetrics {
    registry: Registry,
    /// `[type][outcome]`; the last type row is `unknown`.
    requests: Vec<[Counter; 3]>,
    /// Per type: from the complete request frame to its reply being
    /// handed to the socket (durability wait included).
    latency: Vec<Histogram>,
    commit_seconds: Histogram,
    commit_records: Histogram,
    commits_failed: Counter,
    levels: [Gauge; 7],
    relayed_bytes: Counter,
    relays: Family<ReasonLabel, Counter>,
    beacon_received: Counter,
    beacon_drops: Family<ReasonLabel, Counter>,
    conn_closed: Family<ReasonLabel, Counter>,
    /// New registrations' key checks: `[parallel, inline]`.
    key_checks: [Counter; 2],
    last_beacon: Mutex<(ServerStats, ConnStats)>,
}

fn type_label(i: usize) -> &'static str {
    REQUEST_TYPES.get(i).copied().unwrap_or("unknown")
}

impl Default for RendezvousMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RendezvousMetrics {
    /// Registers every metric under the `pilot_rendezvous` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pilot_rendezvous");
        let req_family = Family::<RequestLabels, Counter>::default();
        let lat_family = Family::<TypeLabel, Histogram>::new_with_constructor(|| {
            // 50 µs … ~1.6 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for i in 0..=REQUEST_TYPES.len() {
            let request = type_label(i);
            requests.push(OUTCOMES.map(|outcome| {
                req_family
                    .get_or_create(&RequestLabels { request, outcome })
                    .clone()
            }));
            latency.push(lat_family.get_or_create(&TypeLabel { request }).clone());
        }
        registry.register(
            "requests",
            "Registry requests by type and outcome",
            req_family,
        );
        registry.register(
            "request_duration_seconds",
            "Time from a complete request frame to its reply being written, durability wait included",
            lat_family,
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 14));
        registry.register(
            "store_commit_duration_seconds",
            "Duration of one store commit (a group of change sets)",
            commit_seconds.clone(),
        );
        let commit_records = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "store_commit_records",
            "Record writes per store commit",
            commit_records.clone(),
        );
        let commits_failed = Counter::default();
        registry.register(
            "store_commits_failed",
            "Store commits that failed (their requests were refused)",
            commits_failed.clone(),
        );
        let levels: [Gauge; 7] = Default::default();
        for (g, (name, help)) in levels.iter().zip([
            ("nodes_registered", "Nodes in the registry"),
            (
                "nodes_online",
                "Registered nodes heard from within the last 90 seconds",
            ),
            ("networks", "Networks, the backbone included"),
            ("connections", "Open registry TCP connections"),
            ("push_subscribers", "Connections subscribed to push hints"),
            ("beacon_nodes", "Node endpoints the beacon tracks"),
            ("beacon_peers", "Peer beacons this beacon gossips with"),
        ]) {
            registry.register(name, help, g.clone());
        }
        let relayed_bytes = Counter::default();
        registry.register(
            "beacon_relayed_bytes",
            "Inner-frame bytes the beacon relayed (delivered or forwarded)",
            relayed_bytes.clone(),
        );
        let relays = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "beacon_relays",
            "Relays by how they left: delivered to a node, forwarded to a peer beacon",
            relays.clone(),
        );
        let beacon_received = Counter::default();
        registry.register(
            "beacon_datagrams_received",
            "Datagrams the beacon received",
            beacon_received.clone(),
        );
        let beacon_drops = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "beacon_drops",
            "Beacon datagrams dropped or not served, by reason",
            beacon_drops.clone(),
        );
        let conn_closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_dropped",
            "Registry connections refused or closed by the limits, by reason",
            conn_closed.clone(),
        );
        let key_family = Family::<ReasonLabel, Counter>::default();
        let key_checks = ["parallel", "inline"]
            .map(|reason| key_family.get_or_create(&ReasonLabel { reason }).clone());
        registry.register(
            "key_checks",
            "Keys of new registrations checked: in parallel before a loop turn's requests, or inline by the registry",
            key_family,
        );
        RendezvousMetrics {
            registry,
            requests,
            latency,
            commit_seconds,
            commit_records,
            commits_failed,
            levels,
            relayed_bytes,
            relays,
            beacon_received,
            beacon_drops,
            conn_closed,
            key_checks,
            last_beacon: Mutex::default(),
        }
    }

    /// Counts one request of type index `ty` (`None`: unknown type).
    pub fn request(&self, ty: Option<usize>, outcome: Outcome) {
        let i = ty.unwrap_or(REQUEST_TYPES.len()).min(REQUEST_TYPES.len());
        if let Some(row) = self.requests.get(i) {
            row[outcome as usize].inc();
        }
    }

    /// Records the latency of one request of type index `ty`.
    pub fn latency(&self, ty: Option<usize>, took: Duration) {
        let i = ty.unwrap_or(REQUEST_TYPES.len()).min(REQUEST_TYPES.len());
        if let Some(h) = self.latency.get(i) {
            h.observe(took.as_secs_f64());
        }
    }

    /// Counts key checks of new registrations: `parallel` ones before a
    /// loop turn's requests, `inline` ones by the registry.
    pub fn key_checks(&self, parallel: u64, inline: u64) {
        self.key_checks[0].inc_by(parallel);
        self.key_checks[1].inc_by(inline);
    }

    /// Records one store commit of `records` writes.
    pub fn commit(&self, took: Duration, records: u64, ok: bool) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.commit_records.observe(records as f64);
        if !ok {
            self.commits_failed.inc();
        }
    }

    /// Sets the gauges and adds what the beacon and the connection limits
    /// counted since the last call.
    pub fn tick(&self, levels: Levels, beacon: ServerStats, conns: ConnStats) {
        let l = levels;
        for (g, v) in self.levels.iter().zip([
            l.registered,
            l.online,
            l.networks,
            l.connections,
            l.push_subscribers,
            l.beacon_nodes,
            l.beacon_peers,
        ]) {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        let Ok(mut last) = self.last_beacon.lock() else {
            return;
        };
        let (b0, c0) = *last;
        let d = |now: u64, before: u64| now.saturating_sub(before);
        self.relayed_bytes
            .inc_by(d(beacon.relayed_bytes, b0.relayed_bytes));
        self.beacon_received.inc_by(d(beacon.received, b0.received));
        for (reason, now, before) in [
            ("delivered", beacon.delivered, b0.delivered),
            ("forwarded", beacon.forwarded, b0.forwarded),
        ] {
            self.relays
                .get_or_create(&ReasonLabel { reason })
                .inc_by(d(now, before));
        }
        for (reason, now, before) in [
            ("malformed", beacon.malformed, b0.malformed),
            ("ignored", beacon.ignored, b0.ignored),
            ("rate_limited", beacon.rate_limited, b0.rate_limited),
            ("table_full", beacon.table_full, b0.table_full),
            ("grant_refused", beacon.grant_refused, b0.grant_refused),
            (
                "unknown_destination",
                beacon.unknown_destination,
                b0.unknown_destination,
            ),
            ("oversized", beacon.oversized, b0.oversized),
            ("nested", beacon.nested, b0.nested),
            ("queue_full", beacon.queue_full, b0.queue_full),
            (
                "buffer_too_small",
                beacon.buffer_too_small,
                b0.buffer_too_small,
            ),
        ] {
            self.beacon_drops
                .get_or_create(&ReasonLabel { reason })
                .inc_by(d(now, before));
        }
        for (reason, now, before) in [
            ("per_source_limit", conns.per_ip_refused, c0.per_ip_refused),
            ("server_full", conns.full_refused, c0.full_refused),
            ("evicted", conns.evicted, c0.evicted),
            ("frame_timeout", conns.frame_timeouts, c0.frame_timeouts),
            ("idle", conns.idle_closed, c0.idle_closed),
            ("bad_frame", conns.bad_frames, c0.bad_frames),
        ] {
            self.conn_closed
                .get_or_create(&ReasonLabel { reason })
                .inc_by(d(now, before));
        }
        *last = (beacon, conns);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The `/metrics` page.
    pub fn page(&self) -> Page {
        Page::ok(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            self.encode(),
        )
    }
}

/// One line of the dashboard's recent activity.
#[derive(Debug, Clone)]
pub struct Activity {
    /// Unix seconds.
    pub at: u64,
    /// Request type.
    pub request: &'static str,
    /// Outcome label.
    pub outcome: &'static str,
}

/// The recent-activity ring the loop appends to.
#[derive(Debug, Default)]
pub struct ActivityLog {
    items: VecDeque<Activity>,
}

impl ActivityLog {
    /// Appends one entry, forgetting the oldest beyond [`ACTIVITY_LEN`].
    pub fn push(&mut self, a: Activity) {
        if self.items.len() >= ACTIVITY_LEN {
            self.items.pop_front();
        }
        self.items.push_back(a);
    }
}

/// The dashboard's JSON snapshot of `state`. Private nodes are listed
/// without their endpoints; no network token, key or LAN address is ever
/// included.
pub fn dashboard_json(
    state: &State,
    now: UnixTime,
    levels: Levels,
    activity: &ActivityLog,
) -> serde_json::Value {
    let mut tags: BTreeMap<&str, u64> = BTreeMap::new();
    let mut recent: Vec<(UnixTime, u32)> = Vec::with_capacity(state.nodes.len());
    for n in state.nodes.values() {
        for t in &n.tags {
            *tags.entry(t.as_str()).or_default() += 1;
        }
        recent.push((n.last_seen, n.id));
    }
    // The most recently seen nodes, newest first.
    if recent.len() > DASHBOARD_NODES {
        recent.select_nth_unstable_by(DASHBOARD_NODES, |a, b| b.cmp(a));
        recent.truncate(DASHBOARD_NODES);
    }
    recent.sort_unstable_by(|a, b| b.cmp(a));
    let nodes: Vec<_> = recent
        .iter()
        .filter_map(|(_, id)| state.nodes.get(id))
        .map(|n| {
            let ago = now.saturating_duration_since(n.last_seen);
            json!({
                "id": n.id,
                "hostname": n.hostname,
                "public": n.public,
                "online": ago <= ONLINE_WINDOW,
                "seen_secs_ago": ago.as_secs(),
                "networks": n.networks,
                "tags": n.tags,
                "version": n.version,
                "endpoint": if n.public { Some(n.real_addr.as_str()) } else { None },
            })
        })
        .collect();
    let mut tag_list: Vec<(&str, u64)> = tags.into_iter().collect();
    tag_list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    tag_list.truncate(DASHBOARD_TAGS);
    let networks: Vec<_> = state
        .networks
        .values()
        .map(|n| {
            json!({
                "id": n.id,
                "name": n.name,
                "join_rule": n.join_rule.as_str(),
                "members": n.members.len(),
            })
        })
        .collect();
    let activity: Vec<_> = activity
        .items
        .iter()
        .rev()
        .map(|a| json!({"at": a.at, "request": a.request, "outcome": a.outcome}))
        .collect();
    json!({
        "generated_unix": now.as_nanos() / 1_000_000_000,
        "nodes_registered": levels.registered,
        "nodes_online": levels.online,
        "connections": levels.connections,
        "beacon_nodes": levels.beacon_nodes,
        "networks": networks,
        "tags": tag_list.iter().map(|(t, c)| json!({"tag": t, "nodes": c})).collect::<Vec<_>>(),
        "nodes": nodes,
        "nodes_listed": nodes.len(),
        "activity": activity,
    })
}

/// Counts the registered nodes heard from within [`ONLINE_WINDOW`].
pub fn online_count(state: &State, now: UnixTime) -> usize {
    state
        .nodes
        .values()
        .filter(|n| now.saturating_duration_since(n.last_seen) <= ONLINE_WINDOW)
        .count()
}

/// How long the HTTP thread waits for the loop to build a snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3);

/// Between the loop and the dashboard's HTTP thread: the thread asks for
/// a fresh snapshot (and wakes the loop); the loop builds it at its next
/// turn and hands it over.
#[derive(Debug)]
pub struct DashboardShared {
    wanted: AtomicBool,
    waker: Arc<mio::Waker>,
    snap: Mutex<(u64, String)>,
    ready: Condvar,
}

impl DashboardShared {
    /// A shared slot whose requests wake the loop through `waker`.
    pub fn new(waker: Arc<mio::Waker>) -> Self {
        DashboardShared {
            wanted: AtomicBool::new(false),
            waker,
            snap: Mutex::new((0, String::from("{}"))),
            ready: Condvar::new(),
        }
    }

    /// The loop: whether a snapshot is wanted (clears the request).
    pub fn take_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::SeqCst)
    }

    /// The loop: hands over a fresh snapshot.
    pub fn publish(&self, json: String) {
        if let Ok(mut s) = self.snap.lock() {
            s.0 += 1;
            s.1 = json;
        }
        self.ready.notify_all();
    }

    /// The HTTP thread: asks the loop for a snapshot and waits for it (or
    /// returns the previous one after a few seconds).
    pub fn fetch(&self) -> String {
        let Ok(guard) = self.snap.lock() else {
            return String::from("{}");
        };
        let generation = guard.0;
        self.wanted.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        match self
            .ready
            .wait_timeout_while(guard, SNAPSHOT_WAIT, |s| s.0 == generation)
        {
            Ok((s, _)) => s.1.clone(),
            Err(_) => String::from("{}"),
        }
    }

    /// The dashboard pages: `/` (HTML) and `/dashboard.json`.
    pub fn page(&self, path: &str) -> Option<Page> {
        match path {
            "/" | "/index.html" => {
                // The data goes inside the page as well, so it renders on
                // first load without a second request; `<` is escaped so
                // no value can close the script element.
                let data = self.fetch().replace('<', "\\u003c");
                Some(Page::ok(
                    "text/html; charset=utf-8",
                    DASHBOARD_HTML.replace("__DATA__", &data),
                ))
            }
            "/dashboard.json" => Some(Page::ok("application/json", self.fetch())),
            _ => None,
        }
    }
}

/// The dashboard page. Its script renders everything with `textContent`
/// (never `innerHTML` of data) and refreshes every 5 s.
const DASHBOARD_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>Pilot rendezvous</title>
<style>
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
.summary span{margin-right:2em;font-size:1.2em}
.offline{color:#999}
</style>
</head>
<body>
<h1>Pilot rendezvous</h1>
<div class="summary">
<span>Nodes online: <b id="online">?</b></span>
<span>Registered: <b id="registered">?</b></span>
<span>Connections: <b id="connections">?</b></span>
<span>Beacon endpoints: <b id="beacon">?</b></span>
</div>
<h2>Networks</h2>
<table><thead><tr><th>ID</th><th>Name</th><th>Join rule</th><th>Members</th></tr></thead><tbody id="networks"></tbody></table>
<h2>Tags</h2>
<table><thead><tr><th>Tag</th><th>Nodes</th></tr></thead><tbody id="tags"></tbody></table>
<h2>Nodes (most recently seen)</h2>
<table><thead><tr><th>ID</th><th>Hostname</th><th>Visibility</th><th>Status</th><th>Endpoint</th><th>Networks</th><th>Tags</th></tr></thead><tbody id="nodes"></tbody></table>
<h2>Recent activity</h2>
<table><thead><tr><th>Time (UTC)</th><th>Request</th><th>Outcome</th></tr></thead><tbody id="activity"></tbody></table>
<p id="status"></p>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
function row(cells, cls, attrs) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = String(c);
    tr.appendChild(td);
  }
  return tr;
}
function fill(id, rows) {
  const body = document.getElementById(id);
  body.replaceChildren(...rows);
}
function render(d) {
  document.getElementById("online").textContent = d.nodes_online;
  document.getElementById("registered").textContent = d.nodes_registered;
  document.getElementById("connections").textContent = d.connections;
  document.getElementById("beacon").textContent = d.beacon_nodes;
  fill("networks", (d.networks || []).map(n =>
    row([n.id, n.name, n.join_rule, n.members], "network", {"data-id": n.id})));
  fill("tags", (d.tags || []).map(t => row([t.tag, t.nodes], "tag")));
  fill("nodes", (d.nodes || []).map(n => row([
      n.id, n.hostname || "-", n.public ? "public" : "private",
      n.online ? "online" : "offline (" + n.seen_secs_ago + " s)",
      n.endpoint || "hidden", n.networks.join(", "), n.tags.join(", ")],
    "node" + (n.online ? "" : " offline"), {"data-id": n.id})));
  fill("activity", (d.activity || []).map(a => row([
      new Date(a.at * 1000).toISOString().replace("T", " ").slice(0, 19),
      a.request, a.outcome], "activity")));
  document.getElementById("status").textContent =
    "Rendered " + (d.nodes_listed || 0) + " nodes at " + new Date().toISOString();
}
render(JSON.parse(document.getElementById("data").textContent));
setInterval(() => {
  fetch("/dashboard.json").then(r => r.json()).then(render).catch(() => {});
}, 5000);
</script>
</body>
</html>
"#;
