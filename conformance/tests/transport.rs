//! Known-answer tests for the stream transport (`spec/transport.md`).

use pilot_conformance::{field, load, name, unhex, vectors_dir};
use pilot_proto::stream::sack::{self, SackBlock, SackDecodeError};
use serde_json::Value;

fn blocks_of(v: &Value) -> Vec<SackBlock> {
    v.get("blocks")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("vector {}: no blocks", name(v)))
        .iter()
        .map(|pair| {
            let n = |i: usize| pair[i].as_u64().expect("block edge") as u32;
            SackBlock::new(n(0), n(1))
        })
        .collect()
}

#[test]
fn sack_vectors_round_trip() {
    let vectors = load("transport_sack.json");
    assert!(!vectors.is_empty());
    for v in &vectors {
        let payload = unhex(field(v, "payload"));
        let blocks = blocks_of(v);
        let decoded = sack::decode(&payload).unwrap_or_else(|e| panic!("{}: {e}", name(v)));
        assert_eq!(decoded.as_slice(), blocks.as_slice(), "{}", name(v));
        let mut out = [0u8; 64];
        let n = sack::encode(&blocks, &mut out).expect("encode");
        assert_eq!(&out[..n], payload.as_slice(), "{}", name(v));
    }
}

#[test]
fn sack_invalid_payloads_are_not_sack() {
    let text = std::fs::read_to_string(vectors_dir().join("transport_sack.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let invalid = doc["invalid"].as_array().expect("invalid array");
    assert!(!invalid.is_empty());
    for v in invalid {
        let payload = unhex(field(v, "payload"));
        let err = sack::decode(&payload).expect_err(name(v));
        let kind = match err {
            SackDecodeError::TooShort => "TooShort",
            SackDecodeError::BadMagic => "BadMagic",
            SackDecodeError::BadCount(_) => "BadCount",
            SackDecodeError::Truncated { .. } => "Truncated",
        };
        assert_eq!(kind, field(v, "error"), "{}", name(v));
    }
}

// ----- segment-level scenarios ---------------------------------------------

mod scenarios {
    use pilot_conformance::{load, name, unhex};
    use pilot_proto::stream::conn::{ConnConfig, Connection, Flags, Segment, State};
    use pilot_proto::stream::seq::Seq;
    use pilot_proto::time::Instant;
    use serde_json::Value;

    /// Expected payload: exact bytes, or only a length.
    #[derive(Debug)]
    enum Payload {
        Exact(Vec<u8>),
        Len(usize),
    }

    fn parse_flags(s: &str) -> Flags {
        s.split('|').fold(Flags::NONE, |f, p| {
            f | match p {
                "SYN" => Flags::SYN,
                "ACK" => Flags::ACK,
                "FIN" => Flags::FIN,
                "RST" => Flags::RST,
                other => panic!("unknown flag {other}"),
            }
        })
    }

    fn parse(text: &str) -> (Flags, u32, u32, u16, Payload) {
        let mut it = text.split_whitespace();
        let mut next = || {
            it.next()
                .unwrap_or_else(|| panic!("short segment {text:?}"))
        };
        let flags = parse_flags(next());
        let seq = next().parse().expect("seq");
        let ack = next().parse().expect("ack");
        let win = next().parse().expect("window");
        let rest: Vec<&str> = it.collect();
        let payload = match rest.first() {
            Some(p) if p.starts_with('*') => Payload::Len(p[1..].parse().expect("length")),
            _ => Payload::Exact(unhex(&rest.join(""))),
        };
        (flags, seq, ack, win, payload)
    }

    fn literal(text: &str) -> Segment {
        let (flags, seq, ack, window, payload) = parse(text);
        let Payload::Exact(p) = payload else {
            panic!("literal segment needs exact payload: {text}")
        };
        Segment::with_payload(flags, seq, ack, window, &p)
    }

    fn matches(seg: &Segment, text: &str) -> bool {
        let (flags, seq, ack, window, payload) = parse(text);
        let p_ok = match payload {
            Payload::Exact(p) => seg.payload.as_ref() == p.as_slice(),
            Payload::Len(n) => seg.payload.len() == n,
        };
        seg.flags == flags
            && seg.seq == Seq(seq)
            && seg.ack == Seq(ack)
            && seg.window == window
            && p_ok
    }

    struct World {
        cfg: ConnConfig,
        a: Option<Connection>,
        b: Option<Connection>,
        /// Segments queued for a (index 0) and b (index 1).
        inbox: [Vec<Segment>; 2],
    }

    fn idx(side: &str) -> usize {
        match side {
            "a" => 0,
            "b" => 1,
            other => panic!("unknown side {other}"),
        }
    }

    impl World {
        fn conn(&mut self, side: &str) -> &mut Connection {
            let c = if side == "a" {
                &mut self.a
            } else {
                &mut self.b
            };
            c.as_mut()
                .unwrap_or_else(|| panic!("side {side} does not exist yet"))
        }

        fn deliver(&mut self, side: &str, now: Instant, count: Option<usize>) {
            let i = idx(side);
            let n = count
                .unwrap_or(self.inbox[i].len())
                .min(self.inbox[i].len());
            let segs: Vec<Segment> = self.inbox[i].drain(..n).collect();
            for s in segs {
                let slot = if i == 0 { &mut self.a } else { &mut self.b };
                match slot {
                    Some(c) => c.handle_segment(now, s),
                    None if s.flags == Flags::SYN => {
                        *slot = Some(Connection::accept(now, self.cfg, &s, 0));
                    }
                    None => {}
                }
            }
        }
    }

    fn state_name(s: State) -> &'static str {
        match s {
            State::SynSent => "SynSent",
            State::Established => "Established",
            State::FinWait => "FinWait",
            State::TimeWait => "TimeWait",
            State::Closed => "Closed",
        }
    }

    fn run(v: &Value) {
        let vname = name(v);
        let nodelay = v.get("nodelay").and_then(Value::as_bool).unwrap_or(false);
        let cfg = ConnConfig {
            nodelay,
            ..ConnConfig::default()
        };
        let mut w = World {
            cfg,
            a: None,
            b: None,
            inbox: [vec![], vec![]],
        };
        if v.get("setup").and_then(Value::as_str) == Some("established") {
            let t0 = Instant::ZERO;
            let mut a = Connection::connect(t0, cfg, 0);
            let syn = a.poll_segment(t0).expect("SYN");
            let mut b = Connection::accept(t0, cfg, &syn, 0);
            let synack = b.poll_segment(t0).expect("SYN-ACK");
            a.handle_segment(t0, synack);
            let ack = a.poll_segment(t0).expect("ACK");
            b.handle_segment(t0, ack);
            assert!(b.poll_segment(t0).is_none());
            w.a = Some(a);
            w.b = Some(b);
        }
        let steps = v["steps"].as_array().expect("steps");
        for (n, step) in steps.iter().enumerate() {
            let at = Instant::from_millis(step.get("at").and_then(Value::as_u64).unwrap_or(0));
            let ctx = format!("{vname}, step {n}: {step}");
            let s = |k: &str| step.get(k).and_then(Value::as_str);
            if let Some(side) = s("connect") {
                assert_eq!(side, "a", "{ctx}");
                w.a = Some(Connection::connect(at, cfg, 0));
            } else if let Some(side) = s("poll") {
                let c = w.conn(side);
                let got: Vec<Segment> = std::iter::from_fn(|| c.poll_segment(at))
                    .take(100)
                    .collect();
                let want: Vec<&str> = step["expect"]
                    .as_array()
                    .expect("expect")
                    .iter()
                    .map(|x| x.as_str().expect("segment text"))
                    .collect();
                assert_eq!(got.len(), want.len(), "{ctx}: got {got:?}");
                for (g, e) in got.iter().zip(&want) {
                    assert!(matches(g, e), "{ctx}: got {g:?}, want {e}");
                }
                w.inbox[1 - idx(side)].extend(got);
            } else if let Some(side) = s("deliver") {
                let count = step
                    .get("count")
                    .and_then(Value::as_u64)
                    .map(|c| c as usize);
                w.deliver(side, at, count);
            } else if let Some(side) = s("drop") {
                let mut ix: Vec<usize> = step["index"]
                    .as_array()
                    .expect("index")
                    .iter()
                    .map(|x| x.as_u64().expect("index") as usize)
                    .collect();
                ix.sort_unstable_by(|a, b| b.cmp(a));
                for i in ix {
                    w.inbox[idx(side)].remove(i);
                }
            } else if let Some(side) = s("inject") {
                let seg = literal(s("segment").expect("segment"));
                w.conn(side).handle_segment(at, seg);
            } else if let Some(side) = s("write") {
                let data = match s("data") {
                    Some(h) => unhex(h),
                    None => vec![0xa5; step["fill"].as_u64().expect("fill") as usize],
                };
                let n = w.conn(side).write(at, &data).expect("write");
                assert_eq!(n, data.len(), "{ctx}");
            } else if let Some(side) = s("close") {
                w.conn(side).close(at);
            } else if let Some(side) = s("timeout") {
                w.conn(side).handle_timeout(at);
            } else if let Some(side) = s("read") {
                let mut buf = vec![0u8; 65536];
                let n = w.conn(side).read(&mut buf).expect("read");
                assert_eq!(
                    buf[..n].to_vec(),
                    unhex(s("expect").expect("expect")),
                    "{ctx}"
                );
            } else if let Some(side) = s("state") {
                let st = state_name(w.conn(side).state());
                assert_eq!(st, s("expect").expect("expect"), "{ctx}");
            } else {
                panic!("{ctx}: unknown step");
            }
        }
    }

    #[test]
    fn transport_scenarios() {
        let vectors = load("transport_scenarios.json");
        assert!(vectors.len() >= 9);
        for v in &vectors {
            run(v);
        }
    }
}
