//! Nameserver on port 53 (`spec/services.md` §7): the one-line request and
//! response texts, and a record store with expiry and ownership checks.

use core::fmt;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::addr::Addr;
use crate::time::Instant;

/// Largest request the server reads (one read) (`spec/services.md` §7.1).
pub const MAX_REQUEST: usize = 65_535;
/// Record lifetime after (re)registration (`spec/services.md` §7.2).
pub const RECORD_TTL: Duration = Duration::from_secs(300);
/// Longest name accepted, bytes (`spec/services.md` §7.2).
pub const MAX_NAME: usize = 253;
/// Most records of each kind the store holds (ours, `spec/services.md` §7.2).
pub const MAX_RECORDS: usize = 4096;
/// Most providers under one service key (ours, `spec/services.md` §7.2).
pub const MAX_PROVIDERS: usize = 256;

/// One request line (`spec/services.md` §7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `QUERY A <name>`.
    QueryA(String),
    /// `QUERY N <name>`.
    QueryN(String),
    /// `QUERY S <net_id> <port>`.
    QueryS {
        /// Network ID.
        network: u16,
        /// Port.
        port: u16,
    },
    /// `REGISTER A <name> <address>`.
    RegisterA {
        /// Name.
        name: String,
        /// Address.
        addr: Addr,
    },
    /// `REGISTER N <name> <net_id>`.
    RegisterN {
        /// Network name.
        name: String,
        /// Network ID.
        network: u16,
    },
    /// `REGISTER S <name> <address> <net_id> <port>`.
    RegisterS {
        /// Service name.
        name: String,
        /// Provider address.
        addr: Addr,
        /// Network ID.
        network: u16,
        /// Port.
        port: u16,
    },
}

/// Why a request line was refused; `Display` gives the text after `ERR `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Longer than [`MAX_REQUEST`].
    #[error("request too large")]
    TooLarge,
    /// Not UTF-8.
    #[error("request is not UTF-8")]
    NotUtf8,
    /// Fewer than two tokens.
    #[error("too few fields")]
    TooFewFields,
    /// A command/record combination lacks arguments.
    #[error("{0} requires {1}")]
    MissingArgs(&'static str, &'static str),
    /// Record type other than A, N, S.
    #[error("unknown record type: {0}")]
    UnknownRecordType(String),
    /// Command other than QUERY, REGISTER.
    #[error("unknown command: {0}")]
    UnknownCommand(String),
    /// A network ID that is not a decimal u16.
    #[error("invalid net_id: {0}")]
    InvalidNetId(String),
    /// A port that is not a decimal u16.
    #[error("invalid port: {0}")]
    InvalidPort(String),
    /// An address that does not parse.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// A name over [`MAX_NAME`] bytes.
    #[error("name too long: {0} bytes")]
    NameTooLong(usize),
}

fn dec_u16(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn name(s: &str) -> Result<String, RequestError> {
    if s.len() > MAX_NAME {
        return Err(RequestError::NameTooLong(s.len()));
    }
    Ok(s.to_owned())
}

impl Request {
    /// Parses one request (whitespace-separated tokens; command and record
    /// type case-insensitive; extra tokens ignored).
    pub fn parse(bytes: &[u8]) -> Result<Request, RequestError> {
        if bytes.len() > MAX_REQUEST {
            return Err(RequestError::TooLarge);
        }
        let text = core::str::from_utf8(bytes).map_err(|_| RequestError::NotUtf8)?;
        let t: Vec<&str> = text.split_whitespace().take(6).collect();
        let (Some(cmd), Some(rt)) = (t.first(), t.get(1)) else {
            return Err(RequestError::TooFewFields);
        };
        let args = t.get(2..).unwrap_or_default();
        let net = |s: &str| dec_u16(s).ok_or_else(|| RequestError::InvalidNetId(s.to_owned()));
        let port = |s: &str| dec_u16(s).ok_or_else(|| RequestError::InvalidPort(s.to_owned()));
        let addr = |s: &str| {
            s.parse::<Addr>()
                .map_err(|_| RequestError::InvalidAddress(s.to_owned()))
        };
        let upper_cmd = cmd.to_ascii_uppercase();
        let upper_rt = rt.to_ascii_uppercase();
        match (upper_cmd.as_str(), upper_rt.as_str()) {
            ("QUERY", "A") => match args {
                [n, ..] => Ok(Request::QueryA(name(n)?)),
                _ => Err(RequestError::MissingArgs("QUERY A", "<name>")),
            },
            ("QUERY", "N") => match args {
                [n, ..] => Ok(Request::QueryN(name(n)?)),
                _ => Err(RequestError::MissingArgs("QUERY N", "<name>")),
            },
            ("QUERY", "S") => match args {
                [n, p, ..] => Ok(Request::QueryS {
                    network: net(n)?,
                    port: port(p)?,
                }),
                _ => Err(RequestError::MissingArgs("QUERY S", "<net_id> <port>")),
            },
            ("REGISTER", "A") => match args {
                [n, a, ..] => Ok(Request::RegisterA {
                    name: name(n)?,
                    addr: addr(a)?,
                }),
                _ => Err(RequestError::MissingArgs("REGISTER A", "<name> <address>")),
            },
            ("REGISTER", "N") => match args {
                [n, id, ..] => Ok(Request::RegisterN {
                    name: name(n)?,
                    network: net(id)?,
                }),
                _ => Err(RequestError::MissingArgs("REGISTER N", "<name> <net_id>")),
            },
            ("REGISTER", "S") => match args {
                [n, a, id, p, ..] => Ok(Request::RegisterS {
                    name: name(n)?,
                    addr: addr(a)?,
                    network: net(id)?,
                    port: port(p)?,
                }),
                _ => Err(RequestError::MissingArgs(
                    "REGISTER S",
                    "<name> <address> <net_id> <port>",
                )),
            },
            ("QUERY" | "REGISTER", _) => Err(RequestError::UnknownRecordType((*rt).to_owned())),
            _ => Err(RequestError::UnknownCommand((*cmd).to_owned())),
        }
    }
}

impl fmt::Display for Request {
    /// The canonical request line (upper-case keywords, single spaces).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::QueryA(n) => write!(f, "QUERY A {n}"),
            Request::QueryN(n) => write!(f, "QUERY N {n}"),
            Request::QueryS { network, port } => write!(f, "QUERY S {network} {port}"),
            Request::RegisterA { name, addr } => write!(f, "REGISTER A {name} {addr}"),
            Request::RegisterN { name, network } => write!(f, "REGISTER N {name} {network}"),
            Request::RegisterS {
                name,
                addr,
                network,
                port,
            } => write!(f, "REGISTER S {name} {addr} {network} {port}"),
        }
    }
}

/// One provider in an S answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// Service name.
    pub name: String,
    /// Provider address.
    pub addr: Addr,
    /// Port.
    pub port: u16,
}

/// One response (`spec/services.md` §7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `A <name> <address>`.
    A(String, Addr),
    /// `N <name> <net_id>`.
    N(String, u16),
    /// Lines `S <name> <address> <port>` joined by `\n`; `S` alone if none.
    S(Vec<Provider>),
    /// `OK`.
    Ok,
    /// `ERR <reason>`.
    Err(String),
}

/// Why a response text did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Not UTF-8.
    #[error("response is not UTF-8")]
    NotUtf8,
    /// Not one of the response shapes.
    #[error("malformed response")]
    Malformed,
}

impl Response {
    /// Parses a response text as the server writes it.
    pub fn parse(bytes: &[u8]) -> Result<Response, ResponseError> {
        let text = core::str::from_utf8(bytes).map_err(|_| ResponseError::NotUtf8)?;
        if let Some(rest) = text.strip_prefix("ERR") {
            if rest.is_empty() || rest.starts_with(char::is_whitespace) {
                return Ok(Response::Err(
                    rest.strip_prefix(' ').unwrap_or(rest).to_owned(),
                ));
            }
        }
        let m = ResponseError::Malformed;
        let t: Vec<&str> = text.split_whitespace().take(5).collect();
        match t.as_slice() {
            ["OK"] => Ok(Response::Ok),
            ["A", n, a] => Ok(Response::A((*n).to_owned(), a.parse().map_err(|_| m)?)),
            ["N", n, id] => Ok(Response::N((*n).to_owned(), dec_u16(id).ok_or(m)?)),
            ["S"] if text.trim() == "S" => Ok(Response::S(Vec::new())),
            ["S", ..] => text
                .split('\n')
                .map(
                    |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                        ["S", n, a, p] => Ok(Provider {
                            name: n.to_owned(),
                            addr: a.parse().map_err(|_| m)?,
                            port: dec_u16(p).ok_or(m)?,
                        }),
                        _ => Err(m),
                    },
                )
                .collect::<Result<Vec<_>, _>>()
                .map(Response::S),
            _ => Err(m),
        }
    }
}

impl fmt::Display for Response {
    /// The response text (no trailing newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::A(n, a) => write!(f, "A {n} {a}"),
            Response::N(n, id) => write!(f, "N {n} {id}"),
            Response::S(list) if list.is_empty() => f.write_str("S"),
            Response::S(list) => {
                for (i, p) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "S {} {} {}", p.name, p.addr, p.port)?;
                }
                Ok(())
            }
            Response::Ok => f.write_str("OK"),
            Response::Err(r) => write!(f, "ERR {r}"),
        }
    }
}

#[derive(Clone, Debug)]
struct SRec {
    provider: Provider,
    expires: Instant,
}

/// The nameserver's records (`spec/services.md` §7.2).
#[derive(Clone, Debug, Default)]
pub struct RecordStore {
    a: BTreeMap<String, (Addr, Instant)>,
    n: BTreeMap<String, (u16, Instant)>,
    s: BTreeMap<(u16, u16), Vec<SRec>>,
}

impl RecordStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops expired records.
    pub fn expire(&mut self, now: Instant) {
        self.a.retain(|_, (_, e)| *e > now);
        self.n.retain(|_, (_, e)| *e > now);
        for list in self.s.values_mut() {
            list.retain(|r| r.expires > now);
        }
        self.s.retain(|_, l| !l.is_empty());
    }

    fn s_count(&self) -> usize {
        self.s.values().map(Vec::len).sum()
    }

    /// Answers one request from the node `caller` (the stream's remote
    /// address). A and S registrations must name the caller's own node.
    pub fn handle(&mut self, req: &Request, caller: Addr, now: Instant) -> Response {
        self.expire(now);
        let expires = now + RECORD_TTL;
        let full = || Response::Err("record store full".to_owned());
        let not_yours = |a: &Addr| Response::Err(format!("address {a} is not the caller's"));
        match req {
            Request::QueryA(name) => match self.a.get(name) {
                Some((a, _)) => Response::A(name.clone(), *a),
                None => Response::Err(format!("name \"{name}\" not found")),
            },
            Request::QueryN(name) => match self.n.get(name) {
                Some((id, _)) => Response::N(name.clone(), *id),
                None => Response::Err(format!("network \"{name}\" not found")),
            },
            Request::QueryS { network, port } => Response::S(
                self.s
                    .get(&(*network, *port))
                    .map(|l| l.iter().map(|r| r.provider.clone()).collect())
                    .unwrap_or_default(),
            ),
            Request::RegisterA { name, addr } => {
                if addr.node != caller.node {
                    return not_yours(addr);
                }
                if !self.a.contains_key(name) && self.a.len() >= MAX_RECORDS {
                    return full();
                }
                self.a.insert(name.clone(), (*addr, expires));
                Response::Ok
            }
            Request::RegisterN { name, network } => {
                if !self.n.contains_key(name) && self.n.len() >= MAX_RECORDS {
                    return full();
                }
                self.n.insert(name.clone(), (*network, expires));
                Response::Ok
            }
            Request::RegisterS {
                name,
                addr,
                network,
                port,
            } => {
                if addr.node != caller.node {
                    return not_yours(addr);
                }
                let total = self.s_count();
                let list = self.s.entry((*network, *port)).or_default();
                if let Some(r) = list
                    .iter_mut()
                    .find(|r| r.provider.addr == *addr && r.provider.port == *port)
                {
                    r.expires = expires;
                    r.provider.name = name.clone();
                    return Response::Ok;
                }
                if total >= MAX_RECORDS || list.len() >= MAX_PROVIDERS {
                    if list.is_empty() {
                        self.s.remove(&(*network, *port));
                    }
                    return full();
                }
                list.push(SRec {
                    provider: Provider {
                        name: name.clone(),
                        addr: *addr,
                        port: *port,
                    },
                    expires,
                });
                Response::Ok
            }
        }
    }

    /// Parses and answers one raw request read from a stream.
    pub fn handle_bytes(&mut self, bytes: &[u8], caller: Addr, now: Instant) -> Response {
        match Request::parse(bytes) {
            Ok(r) => self.handle(&r, caller, now),
            Err(e) => Response::Err(e.to_string()),
        }
    }
}

/// An A record in the store file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ARecord {
    /// Address text.
    pub address: String,
    /// Name.
    pub name: String,
}

/// An N record in the store file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NRecord {
    /// Network name.
    pub name: String,
    /// Network ID.
    pub network_id: u16,
}

/// An S record in the store file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SRecord {
    /// Provider address text.
    pub address: String,
    /// Service name.
    pub name: String,
    /// Network ID.
    pub network_id: u16,
    /// Port.
    pub port: u16,
}

/// The optional persistence file (`spec/services.md` §7.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreFile {
    /// A records.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub a_records: Vec<ARecord>,
    /// N records.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub n_records: Vec<NRecord>,
    /// S records.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub s_records: Vec<SRecord>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Why a store file did not decode.
#[derive(Debug, thiserror::Error)]
pub enum StoreFileError {
    /// Not a valid document.
    #[error("bad nameserver store: {0}")]
    Json(#[from] serde_json::Error),
}

impl StoreFile {
    /// The 2-space-indented document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a document.
    pub fn from_json(bytes: &[u8]) -> Result<StoreFile, StoreFileError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

impl RecordStore {
    /// The records as a store file (A and N by name, S by key then
    /// registration order).
    pub fn to_file(&self) -> StoreFile {
        StoreFile {
            a_records: self
                .a
                .iter()
                .map(|(name, (a, _))| ARecord {
                    address: a.to_string(),
                    name: name.clone(),
                })
                .collect(),
            n_records: self
                .n
                .iter()
                .map(|(name, (id, _))| NRecord {
                    name: name.clone(),
                    network_id: *id,
                })
                .collect(),
            s_records: self
                .s
                .iter()
                .flat_map(|(&(net, _), l)| {
                    l.iter().map(move |r| SRecord {
                        address: r.provider.addr.to_string(),
                        name: r.provider.name.clone(),
                        network_id: net,
                        port: r.provider.port,
                    })
                })
                .collect(),
        }
    }

    /// Loads a store file; every record gets a fresh lifetime from `now`.
    /// Records with unparsable addresses or over-long names are skipped;
    /// the bounds apply. No ownership check (the file is local).
    pub fn load(&mut self, file: &StoreFile, now: Instant) {
        let expires = now + RECORD_TTL;
        for r in &file.a_records {
            if let (Ok(a), true) = (r.address.parse::<Addr>(), r.name.len() <= MAX_NAME) {
                if self.a.len() < MAX_RECORDS || self.a.contains_key(&r.name) {
                    self.a.insert(r.name.clone(), (a, expires));
                }
            }
        }
        for r in &file.n_records {
            if r.name.len() <= MAX_NAME
                && (self.n.len() < MAX_RECORDS || self.n.contains_key(&r.name))
            {
                self.n.insert(r.name.clone(), (r.network_id, expires));
            }
        }
        for r in &file.s_records {
            if let (Ok(a), true) = (r.address.parse::<Addr>(), r.name.len() <= MAX_NAME) {
                let req = Request::RegisterS {
                    name: r.name.clone(),
                    addr: a,
                    network: r.network_id,
                    port: r.port,
                };
                self.handle(&req, a, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(n: u32) -> Addr {
        Addr::new(0, n)
    }

    #[test]
    fn reference_example() {
        let mut s = RecordStore::new();
        let t = Instant::ZERO;
        assert_eq!(
            s.handle_bytes(b"REGISTER A alice 0:0000.0000.0005", a(5), t),
            Response::Ok
        );
        assert_eq!(
            s.handle_bytes(b"QUERY A alice", a(9), t).to_string(),
            "A alice 0:0000.0000.0005"
        );
        s.handle_bytes(b"register s web 0:0000.0000.0005 0 80", a(5), t);
        s.handle_bytes(b"REGISTER S web2 0:0000.0000.0009 0 80", a(9), t);
        assert_eq!(
            s.handle_bytes(b"QUERY S 0 80", a(1), t).to_string(),
            "S web 0:0000.0000.0005 80\nS web2 0:0000.0000.0009 80"
        );
        assert_eq!(s.handle_bytes(b"QUERY S 0 81", a(1), t).to_string(), "S");
    }

    #[test]
    fn errors() {
        let mut s = RecordStore::new();
        let t = Instant::ZERO;
        let cases: &[(&[u8], &str)] = &[
            (b"QUERY", "ERR too few fields"),
            (b"QUERY A", "ERR QUERY A requires <name>"),
            (b"QUERY X y", "ERR unknown record type: X"),
            (b"FETCH A y", "ERR unknown command: FETCH"),
            (b"QUERY S x 80", "ERR invalid net_id: x"),
            (b"QUERY A bob", "ERR name \"bob\" not found"),
            (b"QUERY N lan", "ERR network \"lan\" not found"),
            (
                b"REGISTER A bob 0:0000.0000.0007",
                "ERR address 0:0000.0000.0007 is not the caller's",
            ),
        ];
        for (req, want) in cases {
            assert_eq!(s.handle_bytes(req, a(1), t).to_string(), *want);
        }
        let long = format!("QUERY A {}", "x".repeat(254));
        assert_eq!(
            s.handle_bytes(long.as_bytes(), a(1), t).to_string(),
            "ERR name too long: 254 bytes"
        );
    }

    #[test]
    fn records_expire_and_refresh() {
        let mut s = RecordStore::new();
        s.handle_bytes(b"REGISTER N lan 7", a(1), Instant::ZERO);
        s.handle_bytes(b"REGISTER S web 0:0000.0000.0001 7 80", a(1), Instant::ZERO);
        let t1 = Instant::from_millis(200_000);
        // Re-registering the same provider refreshes, not duplicates.
        s.handle_bytes(b"REGISTER S web 0:0000.0000.0001 7 80", a(1), t1);
        let later = Instant::from_millis(301_000);
        assert_eq!(
            s.handle_bytes(b"QUERY N lan", a(1), later),
            Response::Err("network \"lan\" not found".into())
        );
        match s.handle_bytes(b"QUERY S 7 80", a(1), later) {
            Response::S(l) => assert_eq!(l.len(), 1),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn store_is_bounded() {
        let mut s = RecordStore::new();
        for i in 0..MAX_RECORDS + 3 {
            s.handle(
                &Request::RegisterN {
                    name: format!("n{i}"),
                    network: 1,
                },
                a(1),
                Instant::ZERO,
            );
        }
        assert_eq!(s.n.len(), MAX_RECORDS);
    }

    #[test]
    fn store_file_round_trip() {
        let mut s = RecordStore::new();
        let t = Instant::ZERO;
        s.handle_bytes(b"REGISTER A alice 0:0000.0000.0005", a(5), t);
        s.handle_bytes(b"REGISTER N lan 7", a(5), t);
        s.handle_bytes(b"REGISTER S web 0:0000.0000.0005 7 80", a(5), t);
        let f = s.to_file();
        let text = f.to_json();
        assert!(
            text.starts_with(
                "{\n  \"a_records\": [\n    {\n      \"address\": \"0:0000.0000.0005\","
            )
        );
        let back = StoreFile::from_json(text.as_bytes()).unwrap();
        assert_eq!(back, f);
        let mut r = RecordStore::new();
        r.load(&back, Instant::from_millis(1_000_000));
        assert_eq!(r.to_file(), f);
        // Loaded records live a fresh TTL from the load time.
        let q = r.handle_bytes(b"QUERY N lan", a(1), Instant::from_millis(1_200_000));
        assert_eq!(q, Response::N("lan".into(), 7));
        let empty = StoreFile::from_json(br#"{"a_records":null}"#).unwrap();
        assert_eq!(empty, StoreFile::default());
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,20}"
    }

    proptest! {
        #[test]
        fn request_round_trip(n in arb_name(), node in any::<u32>(), net in any::<u16>(), port in any::<u16>(), k in 0u8..6) {
            let addr = Addr::new(net, node);
            let r = match k {
                0 => Request::QueryA(n),
                1 => Request::QueryN(n),
                2 => Request::QueryS { network: net, port },
                3 => Request::RegisterA { name: n, addr },
                4 => Request::RegisterN { name: n, network: net },
                _ => Request::RegisterS { name: n, addr, network: net, port },
            };
            prop_assert_eq!(Request::parse(r.to_string().as_bytes()), Ok(r));
        }

        #[test]
        fn response_round_trip(names in proptest::collection::vec((arb_name(), any::<u32>(), any::<u16>()), 0..4), reason in ".{0,20}") {
            let list: Vec<Provider> = names.iter().map(|(n, node, p)| Provider { name: n.clone(), addr: Addr::new(0, *node), port: *p }).collect();
            for r in [Response::S(list), Response::Err(reason), Response::Ok,
                      Response::A("x".into(), Addr::new(1, 2)), Response::N("lan".into(), 9)] {
                prop_assert_eq!(Response::parse(r.to_string().as_bytes()), Ok(r));
            }
        }

        #[test]
        fn store_file_round_trips(recs in proptest::collection::vec((arb_name(), any::<u32>(), any::<u16>(), any::<u16>()), 0..5)) {
            let f = StoreFile {
                a_records: recs.iter().map(|(n, node, net, _)| ARecord { address: Addr::new(*net, *node).to_string(), name: n.clone() }).collect(),
                n_records: recs.iter().map(|(n, _, net, _)| NRecord { name: n.clone(), network_id: *net }).collect(),
                s_records: recs.iter().map(|(n, node, net, p)| SRecord { address: Addr::new(*net, *node).to_string(), name: n.clone(), network_id: *net, port: *p }).collect(),
            };
            prop_assert_eq!(StoreFile::from_json(f.to_json().as_bytes()).unwrap(), f);
        }

        #[test]
        fn parsed_text_reaches_canonical_fixpoint(s in "[A-Za-z0-9 :.\n]{0,40}") {
            if let Ok(r) = Request::parse(s.as_bytes()) {
                prop_assert_eq!(Request::parse(r.to_string().as_bytes()), Ok(r));
            }
            if let Ok(r) = Response::parse(s.as_bytes()) {
                prop_assert_eq!(Response::parse(r.to_string().as_bytes()), Ok(r));
            }
        }
    }
}
