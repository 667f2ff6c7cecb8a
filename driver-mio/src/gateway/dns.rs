//! The gateway's DNS stub (`spec/gateway.md` §6): answers `A` queries for
//! `<hostname>.pilot` with the gateway address of that peer, so ordinary
//! programs reach `http://<hostname>.pilot/` without a prior `map`.
//!
//! [`answer`] is the whole decision, pure and unit-tested: it parses one
//! query with `hickory-proto`, asks a lookup callback for the hostname and
//! encodes the reply. [`serve`] is the UDP loop around it. Names outside
//! `.pilot` are refused (the stub is not a recursive resolver), so a system
//! resolver should send only the `pilot` domain here.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use serde_json::{Value, json};

/// The domain the stub serves.
pub const DOMAIN: &str = "pilot";

/// TTL of an answer, seconds. Short: a mapping can be removed.
pub const TTL: u32 = 30;

/// Largest query read; longer datagrams are truncated by the kernel and
/// then fail to parse (counted as malformed).
pub const MAX_QUERY: usize = 1232;

/// What the lookup of one hostname found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The peer exists and is mapped to this gateway address.
    Found(Ipv4Addr),
    /// No such hostname (or not visible to us: private without trust).
    NotFound,
    /// The daemon, registry or gateway could not answer now.
    Failed,
}

/// How one datagram was handled (the stub counts each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An `A` record was returned.
    Answered,
    /// The name exists but has no record of the asked type (`AAAA`, …).
    NoData,
    /// No such name under `.pilot`.
    NxDomain,
    /// A name outside `.pilot`, or a class other than `IN`.
    Refused,
    /// The lookup failed; the client may retry.
    ServFail,
    /// Not a query we understand (opcode, question count, bad bytes with
    /// a readable header).
    FormErr,
    /// No reply at all: a response, or too short to carry an id.
    Dropped,
}

/// Whether `h` has the shape of a Pilot hostname (lowercase letters,
/// digits, inner hyphens, at most 63), checked before asking the daemon.
pub fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

/// A reply header for `id` with `code` and nothing else (used when the
/// query cannot be parsed but its id can be read).
fn bare_reply(id: u16, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Response)
        .set_response_code(code);
    m.to_vec().ok()
}

/// Decides the reply to one query datagram. `lookup` is called at most
/// once, only for a well-formed `IN` question `<hostname>.pilot.`.
pub fn answer(query: &[u8], lookup: impl FnOnce(&str) -> Lookup) -> (Outcome, Option<Vec<u8>>) {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            // A readable header of a query gets FORMERR; anything else is
            // dropped (never answer a response: no reflection loops).
            if query.len() >= 12 && query[2] & 0x80 == 0 {
                let id = u16::from_be_bytes([query[0], query[1]]);
                return (Outcome::FormErr, bare_reply(id, ResponseCode::FormErr));
            }
            return (Outcome::Dropped, None);
        }
    };
    if msg.message_type() != MessageType::Query {
        return (Outcome::Dropped, None);
    }
    let mut reply = Message::new();
    reply
        .set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(msg.op_code())
        .set_authoritative(true)
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(false);
    let finish = |mut reply: Message, outcome: Outcome, code: ResponseCode| {
        reply.set_response_code(code);
        (outcome, reply.to_vec().ok())
    };
    if msg.op_code() != OpCode::Query {
        return finish(reply, Outcome::FormErr, ResponseCode::NotImp);
    }
    let [q] = msg.queries() else {
        return finish(reply, Outcome::FormErr, ResponseCode::FormErr);
    };
    reply.add_query(q.clone());
    let name = q.name().to_lowercase();
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    if q.query_class() != DNSClass::IN || labels.last().map(String::as_str) != Some(DOMAIN) {
        return finish(reply, Outcome::Refused, ResponseCode::Refused);
    }
    // The zone apex exists but carries no address.
    if labels.len() == 1 {
        return finish(reply, Outcome::NoData, ResponseCode::NoError);
    }
    if labels.len() != 2 || !is_hostname(&labels[0]) {
        return finish(reply, Outcome::NxDomain, ResponseCode::NXDomain);
    }
    match lookup(&labels[0]) {
        Lookup::Found(ip) => {
            if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                let owner: Name = q.name().clone();
                reply.add_answer(Record::from_rdata(owner, TTL, RData::A(A(ip))));
                finish(reply, Outcome::Answered, ResponseCode::NoError)
            } else {
                finish(reply, Outcome::NoData, ResponseCode::NoError)
            }
        }
        Lookup::NotFound => finish(reply, Outcome::NxDomain, ResponseCode::NXDomain),
        Lookup::Failed => finish(reply, Outcome::ServFail, ResponseCode::ServFail),
    }
}

/// Counters of the stub, one per [`Outcome`].
#[derive(Default, Debug)]
pub struct DnsCounters {
    answered: AtomicU64,
    nodata: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    servfail: AtomicU64,
    formerr: AtomicU64,
    dropped: AtomicU64,
}

impl DnsCounters {
    /// Counts one handled datagram.
    pub fn count(&self, o: Outcome) {
        let c = match o {
            Outcome::Answered => &self.answered,
            Outcome::NoData => &self.nodata,
            Outcome::NxDomain => &self.nxdomain,
            Outcome::Refused => &self.refused,
            Outcome::ServFail => &self.servfail,
            Outcome::FormErr => &self.formerr,
            Outcome::Dropped => &self.dropped,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as JSON (part of `gateway list`).
    pub fn to_json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "answered": g(&self.answered),
            "nodata": g(&self.nodata),
            "nxdomain": g(&self.nxdomain),
            "refused": g(&self.refused),
            "servfail": g(&self.servfail),
            "formerr": g(&self.formerr),
            "dropped": g(&self.dropped),
        })
    }
}

/// Serves queries on `socket` until `stop` is set; each reply goes back to
/// the query's source. `lookup` resolves and maps one hostname.
pub fn serve(
    socket: UdpSocket,
    stop: &AtomicBool,
    counters: &DnsCounters,
    poll: Duration,
    mut lookup: impl FnMut(&str) -> Lookup,
) {
    let _ = socket.set_read_timeout(Some(poll));
    let mut buf = vec![0u8; MAX_QUERY];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let (outcome, reply) = answer(&buf[..n], &mut lookup);
        counters.count(outcome);
        tracing::debug!(%from, ?outcome, "dns query");
        if let Some(r) = reply {
            let _ = socket.send_to(&r, from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    /// A query for `name`, built label by label so that names no
    /// hostname parser accepts (`-x.pilot.`) can be sent too.
    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let labels: Vec<&[u8]> = name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(str::as_bytes)
            .collect();
        let mut m = Message::new();
        m.set_id(0x1234)
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_labels(labels).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn parse(r: Option<Vec<u8>>) -> Message {
        Message::from_vec(&r.expect("a reply")).expect("a valid reply")
    }

    const IP: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 7);

    #[test]
    fn a_query_for_a_known_host_gets_its_gateway_address() {
        let mut asked = None;
        let (o, r) = answer(&query("Alice.Pilot.", RecordType::A), |h| {
            asked = Some(h.to_owned());
            Lookup::Found(IP)
        });
        assert_eq!(o, Outcome::Answered);
        assert_eq!(asked.as_deref(), Some("alice"), "lower-cased label");
        let m = parse(r);
        assert_eq!(m.id(), 0x1234);
        assert_eq!(m.message_type(), MessageType::Response);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative() && m.recursion_desired());
        assert_eq!(m.queries().len(), 1);
        let [rec] = m.answers() else {
            panic!("one answer: {:?}", m.answers())
        };
        assert_eq!(rec.ttl(), TTL);
        assert_eq!(rec.data(), &RData::A(A(IP)));
    }

    #[test]
    fn unknown_host_is_nxdomain_and_failure_is_servfail() {
        let (o, r) = answer(&query("bob.pilot.", RecordType::A), |_| Lookup::NotFound);
        assert_eq!(o, Outcome::NxDomain);
        assert_eq!(parse(r).response_code(), ResponseCode::NXDomain);
        let (o, r) = answer(&query("bob.pilot.", RecordType::A), |_| Lookup::Failed);
        assert_eq!(o, Outcome::ServFail);
        assert_eq!(parse(r).response_code(), ResponseCode::ServFail);
    }

    #[test]
    fn aaaa_for_a_known_host_is_nodata() {
        let (o, r) = answer(&query("alice.pilot.", RecordType::AAAA), |_| {
            Lookup::Found(IP)
        });
        assert_eq!(o, Outcome::NoData);
        let m = parse(r);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn names_outside_pilot_are_refused_without_a_lookup() {
        for n in ["example.com.", "pilot.example.", "alice.pilot.example."] {
            let (o, r) = answer(&query(n, RecordType::A), |_| panic!("no lookup for {n}"));
            assert_eq!(o, Outcome::Refused, "{n}");
            assert_eq!(parse(r).response_code(), ResponseCode::Refused);
        }
    }

    #[test]
    fn malformed_names_are_nxdomain_without_a_lookup() {
        for n in ["a.b.pilot.", "-x.pilot.", "x-.pilot.", "under_score.pilot."] {
            let (o, _) = answer(&query(n, RecordType::A), |h| {
                assert!(is_hostname(h), "{n}");
                Lookup::NotFound
            });
            assert_eq!(o, Outcome::NxDomain, "{n}");
        }
        let (o, _) = answer(&query("pilot.", RecordType::A), |_| panic!("apex"));
        assert_eq!(o, Outcome::NoData);
    }

    #[test]
    fn garbage_is_formerr_with_an_id_or_dropped() {
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x05];
        junk.extend_from_slice(&[0xff; 20]);
        let (o, r) = answer(&junk, |_| panic!("no lookup"));
        assert_eq!(o, Outcome::FormErr);
        let m = parse(r);
        assert_eq!((m.id(), m.response_code()), (0xabcd, ResponseCode::FormErr));
        assert_eq!(answer(&[1, 2, 3], |_| panic!()).0, Outcome::Dropped);
        // A response (QR set) is never answered.
        let mut resp = query("alice.pilot.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(answer(&resp, |_| panic!()).0, Outcome::Dropped);
        junk[2] |= 0x80;
        assert_eq!(answer(&junk, |_| panic!()), (Outcome::Dropped, None));
    }

    #[test]
    fn two_questions_are_formerr() {
        let mut m = Message::new();
        m.set_id(7).set_message_type(MessageType::Query);
        for n in ["a.pilot.", "b.pilot."] {
            m.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
        }
        let (o, r) = answer(&m.to_vec().unwrap(), |_| panic!());
        assert_eq!(o, Outcome::FormErr);
        assert_eq!(parse(r).response_code(), ResponseCode::FormErr);
    }
}
