//! The daemon's webhook events (`spec/services.md` §13): the configured
//! URL (`SetWebhook`, checked for its form here; its addresses are checked
//! by the driver at every delivery), the event documents
//! `{"event_id","event","node_id","timestamp","data"}` handed to the
//! driver as [`DaemonEvent::Webhook`], the driver's delivery counters
//! shown by `Health`, and the report budget of the `security.*` events
//! ([`Alarm`]: one event per kind per second at most, with a `suppressed`
//! count; `spec/services.md` §13.4).

use rand_core::{CryptoRng, RngCore, SeedableRng};
use serde_json::{Value, json};

use crate::addr::Addr;
use crate::crypto::provider::CryptoProvider;
use crate::node::{ConnEnd, ConnId, ResetCause, SecurityNotes};
use crate::services::handshake::TrustEvent;
use crate::services::host::ServiceEvent;
use crate::services::walltime::WallTime;
use crate::time::Instant;
use crate::wire::ipc::IpcMessage;
use core::time::Duration;

use super::output::{DaemonEvent, Output, WebhookOutput};
use super::{ClientId, Daemon};

/// Longest webhook URL.
pub const MAX_URL: usize = 2048;

/// Shortest time between two `security.*` events of one kind.
pub const ALARM_INTERVAL: Duration = Duration::from_secs(1);

/// The report budget of one `security.*` event kind: the node counts the
/// occurrences and keeps the latest one; an event reports the latest
/// occurrence plus, as `suppressed`, how many others happened since the
/// previous event of the kind — so the events of a flood account for every
/// occurrence exactly (the sum of `1 + suppressed`) while at most one per
/// [`ALARM_INTERVAL`] is made. One budget per daemon, never per sender.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Alarm {
    /// The node's count already accounted for (reported or pending).
    seen: u64,
    /// Occurrences not reported yet.
    pending: u64,
    /// When the last event of this kind was made.
    last: Option<Instant>,
}

impl Alarm {
    /// Takes the node's running `count`. `Some(suppressed)`: make an event
    /// now for the latest occurrence, `suppressed` others not reported.
    /// With `wanted` false (no URL) occurrences are only accounted for.
    fn update(&mut self, now: Instant, count: u64, wanted: bool) -> Option<u64> {
        // A new node (the daemon's node was replaced) counts from zero.
        let delta = count.checked_sub(self.seen).unwrap_or(count);
        self.seen = count;
        if !wanted {
            self.pending = 0;
            return None;
        }
        self.pending = self.pending.saturating_add(delta);
        if self.pending == 0 || self.due().is_some_and(|t| now < t) {
            return None;
        }
        let suppressed = self.pending - 1;
        self.pending = 0;
        self.last = Some(now);
        Some(suppressed)
    }

    /// When the next event of this kind may be made.
    fn due(&self) -> Option<Instant> {
        self.last.map(|t| t + ALARM_INTERVAL)
    }

    /// When pending occurrences must be reported (`None`: none pending).
    fn flush_at(&self) -> Option<Instant> {
        (self.pending > 0).then(|| self.due()).flatten()
    }
}

/// The budgets of the two `security.*` kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Alarms {
    syn: Alarm,
    replay: Alarm,
}

/// Webhook state.
#[derive(Debug, Default)]
pub(super) struct WebhookState {
    /// The URL events go to; `None`: no events are made.
    pub(super) url: Option<String>,
    /// Last `event_id` given.
    seq: u64,
    /// Registrations reported: the first is `node.registered`, later
    /// ones `node.reregistered`.
    registrations: u64,
    /// Driver counters: events dropped (queue full), skipped (breaker).
    pub(super) dropped: u64,
    pub(super) circuit_skips: u64,
    /// Budgets of the `security.*` events.
    alarms: Alarms,
}

/// An event made before its outcome is known (a file or inbox record
/// waiting for its disk write): its name and `data`.
pub(super) type Pending = (&'static str, Value);

impl WebhookState {
    /// Whether events are made (a URL is set): callers skip building the
    /// `data` of an event otherwise.
    pub(super) fn wanted(&self) -> bool {
        self.url.is_some()
    }

    /// When pending `security.*` occurrences must be reported.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        [self.alarms.syn.flush_at(), self.alarms.replay.flush_at()]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The event name of a connection's end (`spec/services.md` §13.2).
fn conn_end_event(end: ConnEnd) -> &'static str {
    match end {
        ConnEnd::Fin => "conn.fin",
        // The peer stayed silent: our keepalive gave up, or nothing
        // authenticated came for the peer timeout (`--idle-timeout`).
        ConnEnd::KeepaliveGaveUp | ConnEnd::Reset(ResetCause::PeerUnreachable) => {
            "conn.idle_timeout"
        }
        ConnEnd::Reset(_) => "conn.rst",
    }
}

/// Checks the form of a webhook URL: `http://` or `https://`, a host, no
/// user part, no spaces or control characters, at most [`MAX_URL`].
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("set_webhook: invalid URL {url:?}"));
    }
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .ok_or_else(|| format!("set_webhook: {url:?} must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("set_webhook: {url:?} has no host (or a user part)"));
    }
    Ok(())
}

fn trust_event(ev: &TrustEvent) -> Option<(&'static str, Value)> {
    Some(match ev {
        TrustEvent::Received {
            node,
            justification,
        } => (
            "handshake.received",
            json!({"peer_node_id": node, "justification": justification}),
        ),
        TrustEvent::Pending {
            node,
            justification,
        } => (
            "handshake.pending",
            json!({"peer_node_id": node, "justification": justification}),
        ),
        TrustEvent::AutoApproved { node, reason } => (
            "handshake.auto_approved",
            json!({"peer_node_id": node, "reason": format!("{reason:?}").to_lowercase()}),
        ),
        TrustEvent::Approved { node } => ("handshake.approved", json!({"peer_node_id": node})),
        TrustEvent::Rejected { node, reason } => (
            "handshake.rejected",
            json!({"peer_node_id": node, "reason": reason}),
        ),
        TrustEvent::Revoked { node } => ("trust.revoked", json!({"peer_node_id": node})),
        TrustEvent::RevokedByPeer { node } => {
            ("trust.revoked_by_peer", json!({"peer_node_id": node}))
        }
        TrustEvent::NetworkEnded { node, network } => (
            "trust.revoked",
            json!({"peer_node_id": node, "reason": "network_membership_ended", "network_id": network}),
        ),
        TrustEvent::AcceptedByPeer { .. }
        | TrustEvent::RejectedByPeer { .. }
        | TrustEvent::StaleRevoke { .. } => return None,
    })
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// Sets (or, with `""`, clears) the webhook URL, kept across restarts
    /// in the profile. `Err` names the problem.
    pub fn set_webhook(&mut self, url: &str) -> Result<(), String> {
        if url.is_empty() {
            self.webhook.url = None;
        } else {
            check_url(url)?;
            self.webhook.url = Some(url.to_owned());
        }
        self.save_profile();
        self.outputs
            .push_back(Output::Event(DaemonEvent::Webhook(WebhookOutput::Url(
                self.webhook.url.clone(),
            ))));
        Ok(())
    }

    /// The driver's delivery counters, for `Health`.
    pub fn set_webhook_counters(&mut self, dropped: u64, circuit_skips: u64) {
        self.webhook.dropped = dropped;
        self.webhook.circuit_skips = circuit_skips;
    }

    /// `SetWebhook` from an IPC client.
    pub(super) fn ipc_set_webhook(&mut self, client: ClientId, url: &str) {
        match self.set_webhook(url) {
            Ok(()) => {
                let reply = json!({"webhook": url}).to_string();
                self.push(client, &IpcMessage::SetWebhookOk(&reply));
            }
            Err(e) => self.push_error(client, &e),
        }
    }

    /// Makes event `name` with `data` (if a URL is set).
    pub(super) fn webhook_event(&mut self, now: Instant, name: &'static str, data: Value) {
        if self.webhook.url.is_none() {
            return;
        }
        self.webhook.seq += 1;
        let wall = self.wall(now);
        let utc = WallTime {
            offset_secs: 0,
            ..wall
        };
        let mut doc = serde_json::Map::new();
        doc.insert("event_id".into(), json!(self.webhook.seq));
        doc.insert("event".into(), json!(name));
        doc.insert(
            "node_id".into(),
            json!(self.address().map_or(0, |a| a.node)),
        );
        doc.insert("timestamp".into(), json!(utc.rfc3339().to_string()));
        if !data.is_null() {
            doc.insert("data".into(), data);
        }
        let body = Value::Object(doc).to_string();
        self.outputs
            .push_back(Output::Event(DaemonEvent::Webhook(WebhookOutput::Event(
                body,
            ))));
    }

    /// `conn.fin`, `conn.rst` or `conn.idle_timeout` for a connection
    /// that ended.
    pub(super) fn webhook_conn_end(
        &mut self,
        now: Instant,
        id: ConnId,
        local_port: u16,
        remote: Addr,
        remote_port: u16,
        end: ConnEnd,
    ) {
        if !self.webhook.wanted() {
            return;
        }
        let data = json!({
            "remote_addr": remote.to_string(),
            "remote_port": remote_port,
            "local_port": local_port,
            "conn_id": id.0,
        });
        self.webhook_event(now, conn_end_event(end), data);
    }

    /// `tunnel.peer_added`: the node's peer table got an entry for `peer`
    /// (`endpoint`: where it is reached, or `relay` when its first frame
    /// came through the beacon).
    pub(super) fn webhook_peer_added(&mut self, now: Instant, peer: u32, endpoint: String) {
        self.webhook_event(
            now,
            "tunnel.peer_added",
            json!({"peer_node_id": peer, "endpoint": endpoint}),
        );
    }

    /// The `security.*` events the node's notes call for now, within their
    /// budgets ([`Alarm`]).
    pub(super) fn webhook_security(&mut self, now: Instant, notes: SecurityNotes) {
        let wanted = self.webhook.wanted();
        let mut alarms = self.webhook.alarms;
        let syn = alarms.syn.update(now, notes.syn_rate_limited, wanted);
        let replay = alarms.replay.update(now, notes.replays, wanted);
        self.webhook.alarms = alarms;
        if let (Some(suppressed), Some((addr, port))) = (syn, notes.last_syn_limited) {
            self.webhook_event(
                now,
                "security.syn_rate_limited",
                json!({"src_addr": addr.to_string(), "src_port": port, "suppressed": suppressed}),
            );
        }
        if let (Some(suppressed), Some((peer, counter))) = (replay, notes.last_replay) {
            self.webhook_event(
                now,
                "security.nonce_replay",
                json!({"peer_node_id": peer, "counter": counter, "suppressed": suppressed}),
            );
        }
    }

    /// `node.registered` the first time, `node.reregistered` after.
    pub(super) fn webhook_registered(&mut self, now: Instant, address: &str) {
        self.webhook.registrations += 1;
        let name = if self.webhook.registrations == 1 {
            "node.registered"
        } else {
            "node.reregistered"
        };
        self.webhook_event(now, name, json!({"address": address}));
    }

    /// The webhook event of a trust event, if it has one.
    pub(super) fn webhook_trust(&mut self, now: Instant, ev: &TrustEvent) {
        if let Some((name, data)) = trust_event(ev) {
            self.webhook_event(now, name, data);
        }
    }
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// The webhook event of an event-stream notification.
    pub(super) fn webhook_pubsub(&mut self, now: Instant, e: ServiceEvent) {
        let text = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
        let (name, data) = match e {
            ServiceEvent::Subscribed { remote, topic, .. } => (
                "pubsub.subscribed",
                json!({"topic": text(&topic), "remote": remote.to_string()}),
            ),
            ServiceEvent::Published {
                remote,
                topic,
                size,
                ..
            } => (
                "pubsub.published",
                json!({"topic": text(&topic), "size": size, "from": remote.to_string()}),
            ),
            ServiceEvent::Unsubscribed { remote, topic, .. } => (
                "pubsub.unsubscribed",
                json!({"topic": topic.as_deref().map(text), "remote": remote.to_string()}),
            ),
        };
        self.webhook_event(now, name, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alarm_reports_at_once_then_once_a_second_and_accounts_for_all() {
        let t = |ms: u64| Instant::from_millis(ms);
        let mut a = Alarm::default();
        assert_eq!(a.update(t(0), 0, true), None, "nothing happened");
        assert_eq!(a.update(t(10), 1, true), Some(0), "the first at once");
        assert_eq!(a.update(t(20), 5, true), None);
        assert_eq!(a.flush_at(), Some(t(1_010)));
        assert_eq!(a.update(t(1_009), 7, true), None);
        assert_eq!(a.update(t(1_010), 7, true), Some(5), "6 since, 5 others");
        assert_eq!(a.flush_at(), None);
        // Without a URL occurrences are only counted, never reported later.
        assert_eq!(a.update(t(5_000), 50, false), None);
        assert_eq!(a.flush_at(), None);
        assert_eq!(a.update(t(6_000), 50, true), None);
        // A new node counts from zero again.
        assert_eq!(a.update(t(7_000), 2, true), Some(1));
    }

    #[test]
    fn urls_need_a_scheme_and_a_host() {
        assert!(check_url("http://example.com/hook").is_ok());
        assert!(check_url("https://h:8443").is_ok());
        for bad in [
            "ftp://x",
            "http://",
            "http://u@h/",
            "http://h /",
            "example.com",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
