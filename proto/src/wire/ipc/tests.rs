//! Unit and property tests of the IPC codec.

use proptest::prelude::*;

use super::*;
use crate::wire::WireProfile;

/// Raw material from which a message of any variant is built; the message
/// borrows `data` and `text`.
#[derive(Clone, Debug)]
struct Ingredients {
    variant: usize,
    sub: u8,
    a16: u16,
    b16: u16,
    c16: u16,
    a32: u32,
    b32: u32,
    flag: u8,
    opt: bool,
    data: Vec<u8>,
    text: String,
}

fn ingredients() -> impl Strategy<Value = Ingredients> {
    (
        0..Command::ALL.len(),
        any::<u8>(),
        (any::<u16>(), any::<u16>(), any::<u16>()),
        (any::<u32>(), any::<u32>()),
        any::<u8>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..48),
        any::<String>(),
    )
        .prop_map(
            |(variant, sub, (a16, b16, c16), (a32, b32), flag, opt, data, text)| Ingredients {
                variant,
                sub,
                a16,
                b16,
                c16,
                a32,
                b32,
                flag,
                opt,
                data,
                text,
            },
        )
}

fn build(i: &Ingredients) -> IpcMessage<'_> {
    use IpcMessage as M;
    let addr = Addr::new(i.b16, i.b32);
    let data = i.data.as_slice();
    let text = i.text.as_str();
    // A managed "set" carries non-empty JSON.
    let set_text = if text.is_empty() { "{}" } else { text };
    let opt_text = if i.opt { Some(set_text) } else { None };
    let opt_net = if i.opt { Some(i.a16) } else { None };
    match Command::ALL[i.variant] {
        Command::Bind => M::Bind { port: i.a16 },
        Command::BindOk => M::BindOk { port: i.a16 },
        Command::Dial => M::Dial { addr, port: i.a16 },
        Command::DialOk => M::DialOk { conn_id: i.a32 },
        Command::Accept => M::Accept {
            local_port: i.a16,
            conn_id: i.a32,
            remote: addr,
            remote_port: i.c16,
        },
        Command::Send => M::Send {
            conn_id: i.a32,
            data,
        },
        Command::Recv => M::Recv {
            conn_id: i.a32,
            data,
        },
        Command::Close => M::Close { conn_id: i.a32 },
        Command::CloseOk => M::CloseOk { conn_id: i.a32 },
        Command::Error => M::Error {
            code: i.a16,
            message: text,
        },
        Command::SendTo => M::SendTo {
            dst: addr,
            dst_port: i.a16,
            data,
        },
        Command::RecvFrom => M::RecvFrom {
            src: addr,
            src_port: i.a16,
            dst_port: i.c16,
            data,
        },
        Command::Info => M::Info,
        Command::InfoOk => M::InfoOk(text),
        Command::Handshake => M::Handshake(match i.sub % 7 {
            0 => HandshakeRequest::Request {
                node_id: i.a32,
                justification: text,
            },
            1 => HandshakeRequest::Approve { node_id: i.a32 },
            2 => HandshakeRequest::Reject {
                node_id: i.a32,
                reason: text,
            },
            3 => HandshakeRequest::ListPending,
            4 => HandshakeRequest::ListTrusted,
            5 => HandshakeRequest::Revoke { node_id: i.a32 },
            _ => HandshakeRequest::WaitForTrust {
                node_id: i.a32,
                timeout_ms: i.b32,
            },
        }),
        Command::HandshakeOk => M::HandshakeOk(text),
        Command::ResolveHostname => M::ResolveHostname(if text.is_empty() { "h" } else { text }),
        Command::ResolveHostnameOk => M::ResolveHostnameOk(text),
        Command::SetHostname => M::SetHostname(text),
        Command::SetHostnameOk => M::SetHostnameOk(text),
        Command::SetVisibility => M::SetVisibility(Flag(i.flag)),
        Command::SetVisibilityOk => M::SetVisibilityOk(text),
        Command::Deregister => M::Deregister,
        Command::DeregisterOk => M::DeregisterOk(text),
        Command::SetTags => M::SetTags(text),
        Command::SetTagsOk => M::SetTagsOk(text),
        Command::SetWebhook => M::SetWebhook(text),
        Command::SetWebhookOk => M::SetWebhookOk(text),
        Command::SetTaskExec => M::SetTaskExec(Flag(i.flag)),
        Command::SetTaskExecOk => M::SetTaskExecOk(text),
        Command::Network => M::Network(match i.sub % 7 {
            0 => NetworkRequest::List,
            1 => NetworkRequest::Join {
                network: i.a16,
                token: text,
            },
            2 => NetworkRequest::Leave { network: i.a16 },
            3 => NetworkRequest::Members { network: i.a16 },
            4 => NetworkRequest::Invite {
                network: i.a16,
                target: i.a32,
            },
            5 => NetworkRequest::PollInvites,
            _ => NetworkRequest::RespondInvite {
                network: i.a16,
                accept: Flag(i.flag),
            },
        }),
        Command::NetworkOk => M::NetworkOk(text),
        Command::Health => M::Health,
        Command::HealthOk => M::HealthOk(text),
        Command::Managed => M::Managed(match i.sub % 5 {
            0 => ManagedRequest::Status { network: opt_net },
            1 => ManagedRequest::ForceCycle { network: opt_net },
            2 => ManagedRequest::Policy {
                network: i.a16,
                set: opt_text,
            },
            3 => ManagedRequest::MemberTags {
                network: i.a16,
                node_id: i.a32,
                set: opt_text,
            },
            _ => ManagedRequest::Reconcile { network: opt_net },
        }),
        Command::ManagedOk => M::ManagedOk(text),
        Command::RotateKey => M::RotateKey,
        Command::RotateKeyOk => M::RotateKeyOk(text),
        Command::Broadcast => M::Broadcast {
            network: i.a16,
            port: i.c16,
            token: text,
            data,
        },
        Command::BroadcastOk => M::BroadcastOk,
        Command::Cancel => M::Cancel(data),
        Command::PreferDirect => M::PreferDirect { node_id: i.a32 },
        Command::PreferDirectOk => M::PreferDirectOk(text),
        Command::SubmitBadge => M::SubmitBadge(text),
        Command::SubmitBadgeOk => M::SubmitBadgeOk(text),
        Command::EnrollRecovery => M::EnrollRecovery(text),
        Command::EnrollRecoveryOk => M::EnrollRecoveryOk(text),
        Command::SignEnvelope => M::SignEnvelope(text),
        Command::SignEnvelopeOk => M::SignEnvelopeOk(text),
        Command::VerifyEnvelope => M::VerifyEnvelope(text),
        Command::VerifyEnvelopeOk => M::VerifyEnvelopeOk(text),
    }
}

fn encode_vec(m: &IpcMessage<'_>) -> Vec<u8> {
    let mut out = vec![0u8; m.encoded_len()];
    let n = encode_frame(m, &mut out).unwrap();
    assert_eq!(n, out.len());
    out
}

fn sample(variant: usize, sub: u8) -> Ingredients {
    Ingredients {
        variant,
        sub,
        a16: 0x1234,
        b16: 7,
        c16: 0xbeef,
        a32: 0xdead_beef,
        b32: 42,
        flag: 1,
        opt: true,
        data: b"xy".to_vec(),
        text: "t".to_owned(),
    }
}

#[test]
fn sub_command_tables_match_the_spec() {
    // (byte, op) rows of `spec/ipc.md` §5 and §7; every other byte is unassigned.
    fn check<T: Copy + core::fmt::Debug + PartialEq>(
        all: &[T],
        from: fn(u8) -> Option<T>,
        op: fn(T) -> &'static str,
        byte: fn(T) -> u8,
        rows: &[(u8, &str)],
    ) {
        assert_eq!(all.len(), rows.len());
        for (&s, &(b, name)) in all.iter().zip(rows) {
            assert_eq!((byte(s), op(s)), (b, name));
        }
        for b in 0..=u8::MAX {
            let want = rows.iter().position(|r| r.0 == b).map(|i| all[i]);
            assert_eq!(from(b), want, "byte {b:#04x}");
        }
    }
    check(
        HandshakeSub::ALL,
        HandshakeSub::from_byte,
        HandshakeSub::op,
        |s| s as u8,
        &[
            (1, "handshake request"),
            (2, "handshake approve"),
            (3, "handshake reject"),
            (4, "handshake pending"),
            (5, "handshake trusted"),
            (6, "handshake revoke"),
            (7, "handshake wait"),
        ],
    );
    check(
        NetworkSub::ALL,
        NetworkSub::from_byte,
        NetworkSub::op,
        |s| s as u8,
        &[
            (1, "network list"),
            (2, "network join"),
            (3, "network leave"),
            (4, "network members"),
            (5, "network invite"),
            (6, "network poll-invites"),
            (7, "network respond-invite"),
            (8, "network create"),
            (9, "network delete"),
            (10, "network rename"),
            (11, "network kick"),
            (12, "network promote"),
            (13, "network demote"),
            (14, "network transfer"),
            (15, "network role"),
        ],
    );
    check(
        ManagedSub::ALL,
        ManagedSub::from_byte,
        ManagedSub::op,
        |s| s as u8,
        &[
            (2, "managed status"),
            (4, "managed cycle"),
            (5, "managed policy"),
            (6, "managed member-tags"),
            (7, "managed reconcile"),
        ],
    );
    assert_eq!(
        HandshakeSub::WaitForTrust.availability(),
        Availability::CurrentOnly
    );
    assert_eq!(HandshakeSub::Request.availability(), Availability::Both);
}

#[test]
fn command_table_is_consistent() {
    assert_eq!(Command::ALL.len(), 51);
    for (idx, &c) in Command::ALL.iter().enumerate() {
        assert_eq!(Command::from_byte(c.byte()), Some(c));
        // The builder covers every command, in order.
        assert_eq!(build(&sample(idx, 0)).command(), c);
        if let Some(reply) = c.reply() {
            assert_eq!(c.direction(), Direction::ToDaemon);
            assert_eq!(reply.direction(), Direction::FromDaemon);
            assert_eq!(reply.byte(), c.byte() + 1, "{c:?}");
            assert_eq!(reply.availability(), c.availability());
        }
    }
    for b in [0x00, 0x27, 0x28, 0x2c, 0x37, 0xff] {
        assert_eq!(Command::from_byte(b), None);
    }
    assert!(Command::BindOk.completes(Command::Bind));
    assert!(Command::Error.completes(Command::Bind));
    assert!(!Command::DialOk.completes(Command::Bind));
    assert!(!Command::Error.completes(Command::Send));
    assert!(!Command::Error.completes(Command::Cancel));
    assert!(Command::CloseOk.is_push());
    assert!(!Command::BindOk.is_push());
}

#[test]
fn every_sub_command_round_trips() {
    let handshake = Command::ALL
        .iter()
        .position(|&c| c == Command::Handshake)
        .unwrap();
    let network = Command::ALL
        .iter()
        .position(|&c| c == Command::Network)
        .unwrap();
    let managed = Command::ALL
        .iter()
        .position(|&c| c == Command::Managed)
        .unwrap();
    let mut seen = Vec::new();
    for (variant, subs) in [(handshake, 7u8), (network, 7), (managed, 5)] {
        for sub in 0..subs {
            for opt in [false, true] {
                let mut i = sample(variant, sub);
                i.opt = opt;
                let m = build(&i);
                let frame = encode_vec(&m);
                seen.push((frame[4], frame[5]));
                assert_eq!(IpcMessage::decode(&frame[4..]), Ok(m));
            }
        }
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 7 + 7 + 5);
}

#[test]
fn decode_errors_name_operation_and_field() {
    let cases: &[(&[u8], &str)] = &[
        (&[0x27], "unknown command: 0x27"),
        (&[0x00, 1, 2], "unknown command: 0x00"),
        (&[0x0f, 0x01], "handshake request: missing node_id"),
        (&[0x0f, 0x02, 0, 0, 9], "handshake approve: missing node_id"),
        (
            &[0x0f, 0x07, 0, 0, 0, 9],
            "handshake wait: missing timeout_ms",
        ),
        (&[0x0f, 0x08], "handshake: unknown sub-command 0x08"),
        (&[0x0f], "handshake: missing sub-command"),
        (&[0x1f, 0x00], "network: unknown sub-command 0x00"),
        (&[0x23, 0x01], "managed: unknown sub-command 0x01"),
        (
            &[0x23, 0x05, 0x02, 0, 1],
            "managed policy: unknown action 0x02",
        ),
        (&[0x23, 0x02, 0x01], "managed status: missing network_id"),
        (
            &[0x23, 0x05, 0x01, 0, 1],
            "managed policy set: missing policy JSON",
        ),
        (
            &[0x23, 0x06, 0x01, 0, 1, 0, 0, 0, 9],
            "managed member-tags set: missing tags JSON",
        ),
        (
            &[0x23, 0x06, 0x00, 0, 1, 0, 0, 0],
            "managed member-tags: missing node_id",
        ),
        (
            &[0x1f, 0x07, 0, 1],
            "network respond-invite: missing accept flag",
        ),
        (&[0xab], "unknown command: 0xAB"),
        (&[0x03, 0, 0, 0, 0, 0, 2, 0], "dial: missing address/port"),
        (&[0x29, 0, 1, 0, 2], "broadcast: missing header"),
        (&[0x01, 0x03], "bind: missing port"),
        (
            &[0x01, 0x03, 0xe8, 0x00],
            "bind: 1 unexpected trailing bytes",
        ),
        (&[0x0d, 0x00], "info: 1 unexpected trailing bytes"),
        (&[0x11], "resolve_hostname: missing hostname"),
        (&[0x15], "set_visibility: missing value"),
        (&[0x0a, 0x00], "error: missing code"),
        (
            &[0x0a, 0x00, 0x01, 0xff],
            "error: message is not valid UTF-8",
        ),
        (&[0x19, 0xc3], "set_tags: json is not valid UTF-8"),
        (&[0x29, 0, 1, 0, 2, 0, 5, b'a'], "broadcast: missing token"),
    ];
    for (body, text) in cases {
        let err = IpcMessage::decode(body).unwrap_err();
        assert_eq!(err.to_string(), *text, "body {body:02x?}");
        assert!(err.needs_reply());
        assert!(!err.is_fatal());
    }
    assert_eq!(IpcMessage::decode(&[]), Err(IpcError::EmptyBody));
    assert!(!IpcError::EmptyBody.needs_reply());
}

#[test]
fn parse_frame_reports_need_more_empty_and_oversize() {
    assert_eq!(parse_frame(&[]), Ok(None));
    assert_eq!(parse_frame(&[0, 0, 0]), Ok(None));
    assert_eq!(parse_frame(&[0, 0, 0, 3, 1, 3]), Ok(None));
    assert_eq!(
        parse_frame(&[0, 0, 0, 3, 1, 3, 0xe8, 9]),
        Ok(Some((&[1u8, 3, 0xe8][..], 7)))
    );
    // Zero-length body: an empty body, 4 bytes consumed.
    assert_eq!(parse_frame(&[0, 0, 0, 0, 1]), Ok(Some((&[][..], 4))));
    // Exactly 1 MiB is allowed (needs more bytes), one more is not.
    assert_eq!(parse_frame(&[0, 0x10, 0, 0]), Ok(None));
    let err = parse_frame(&[0, 0x10, 0, 1]).unwrap_err();
    assert_eq!(err, IpcError::TooLarge { len: 0x10_0001 });
    assert!(err.is_fatal());
    assert!(!err.needs_reply());
}

#[test]
fn encode_checks_buffer_and_size() {
    let m = IpcMessage::Bind { port: 1000 };
    let mut small = [0u8; 6];
    assert_eq!(
        encode_frame(&m, &mut small),
        Err(EncodeError::BufferTooSmall {
            needed: 7,
            available: 6
        })
    );
    let mut exact = [0u8; 7];
    assert_eq!(encode_frame(&m, &mut exact), Ok(7));
    assert_eq!(exact, [0, 0, 0, 3, 1, 3, 0xe8]);

    let max = vec![0xaa; MAX_SEND_DATA];
    let m = IpcMessage::Send {
        conn_id: 1,
        data: &max,
    };
    assert_eq!(m.body_len(), MAX_BODY_LEN);
    let mut out = vec![0u8; MAX_FRAME_LEN];
    assert_eq!(encode_frame(&m, &mut out), Ok(MAX_FRAME_LEN));
    let (body, used) = parse_frame(&out).unwrap().unwrap();
    assert_eq!(used, MAX_FRAME_LEN);
    assert_eq!(IpcMessage::decode(body), Ok(m));

    let over = vec![0xaa; MAX_SEND_DATA + 1];
    let m = IpcMessage::Send {
        conn_id: 1,
        data: &over,
    };
    assert_eq!(
        encode_frame(&m, &mut out),
        Err(EncodeError::TooLarge {
            len: MAX_BODY_LEN + 1
        })
    );

    assert_eq!(
        encode_frame(&IpcMessage::ResolveHostname(""), &mut out),
        Err(EncodeError::EmptyField { field: "hostname" })
    );
    let empty_policy = IpcMessage::Managed(ManagedRequest::Policy {
        network: 1,
        set: Some(""),
    });
    assert_eq!(
        encode_frame(&empty_policy, &mut out),
        Err(EncodeError::EmptyField {
            field: "policy JSON"
        })
    );

    let long = "x".repeat(usize::from(u16::MAX) + 1);
    let m = IpcMessage::Broadcast {
        network: 1,
        port: 2,
        token: &long,
        data: &[],
    };
    assert_eq!(
        encode_frame(&m, &mut out),
        Err(EncodeError::FieldTooLong {
            field: "token",
            len: long.len()
        })
    );
}

#[test]
fn error_frame_carries_display_text() {
    let err = IpcMessage::decode(&[0x27]).unwrap_err();
    let mut out = [0u8; 64];
    let n = encode_error_frame(&err, &mut out).unwrap();
    let expected = encode_vec(&IpcMessage::Error {
        code: ERROR_CODE_GENERIC,
        message: "unknown command: 0x27",
    });
    assert_eq!(&out[..n], expected.as_slice());
    let mut tiny = [0u8; 10];
    assert_eq!(
        encode_error_frame(&err, &mut tiny),
        Err(EncodeError::BufferTooSmall {
            needed: expected.len(),
            available: 10
        })
    );
}

#[test]
fn wait_for_trust_is_capped_and_flags_mean_exactly_one() {
    let h = HandshakeRequest::WaitForTrust {
        node_id: 1,
        timeout_ms: 90_000,
    };
    assert_eq!(h.effective_wait_ms(), Some(HANDSHAKE_WAIT_MAX_MS));
    let h = HandshakeRequest::WaitForTrust {
        node_id: 1,
        timeout_ms: 500,
    };
    assert_eq!(h.effective_wait_ms(), Some(500));
    assert_eq!(HandshakeRequest::ListPending.effective_wait_ms(), None);
    assert!(Flag(1).is_set());
    assert!(!Flag(2).is_set());
    assert!(!Flag(0).is_set());
    assert_eq!(Flag::from_bool(true), Flag::YES);
}

#[test]
fn addresses_use_the_six_byte_wire_form() {
    let m = IpcMessage::Dial {
        addr: Addr::new(0x0102, 0x0304_0506),
        port: 7,
    };
    assert_eq!(encode_vec(&m), [0, 0, 0, 9, 3, 1, 2, 3, 4, 5, 6, 0, 7]);
}

#[test]
fn profiles_select_commands() {
    use WireProfile::{Current, Legacy};
    assert!(Command::SetTaskExec.is_available_in(Legacy));
    assert!(Command::SetTaskExec.is_available_in(Current));
    assert!(!Command::Network.is_available_in(Legacy));
    assert!(Command::Health.is_available_in(Current));
    assert!(!Command::Health.is_available_in(Legacy));
    assert!(Command::Bind.is_available_in(Legacy) && Command::Bind.is_available_in(Current));
    let wait = IpcMessage::Handshake(HandshakeRequest::WaitForTrust {
        node_id: 1,
        timeout_ms: 5,
    });
    assert!(wait.is_available_in(Current));
    assert!(!wait.is_available_in(Legacy));
    assert!(IpcMessage::Handshake(HandshakeRequest::ListPending).is_available_in(Legacy));
}

/// A body: a command byte from the table (or any byte) and a payload that is
/// either random bytes or short ASCII, so that many bodies decode.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let cmd = prop_oneof![
        4 => proptest::sample::select(Command::ALL.iter().map(|c| c.byte()).collect::<Vec<_>>()),
        1 => any::<u8>(),
    ];
    let payload = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        (0u8..8, "[ -~]{0,12}").prop_map(|(sub, s)| {
            let mut v = vec![sub];
            v.extend_from_slice(s.as_bytes());
            v
        }),
    ];
    (cmd, payload).prop_map(|(c, p)| {
        let mut v = vec![c];
        v.extend(p);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn decode_inverts_encode(i in ingredients()) {
        let m = build(&i);
        let frame = encode_vec(&m);
        prop_assert_eq!(frame.len(), m.encoded_len());
        let (body, used) = parse_frame(&frame).unwrap().unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(IpcMessage::decode(body), Ok(m));
        let mut body_only = vec![0u8; m.body_len()];
        prop_assert_eq!(m.encode_body(&mut body_only), Ok(body.len()));
        prop_assert_eq!(body_only.as_slice(), body);
    }

    #[test]
    fn encode_inverts_decode(body in bodies()) {
        if let Ok(m) = IpcMessage::decode(&body) {
            let mut out = vec![0u8; body.len()];
            prop_assert_eq!(m.encode_body(&mut out), Ok(body.len()));
            prop_assert_eq!(out, body);
        }
    }

    #[test]
    fn any_split_of_a_stream_gives_the_same_messages(
        msgs in proptest::collection::vec(ingredients(), 1..8),
        empties in proptest::collection::vec(any::<bool>(), 8),
        cuts in proptest::collection::vec(1usize..40, 0..64),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (k, i) in msgs.iter().enumerate() {
            if empties[k] {
                stream.extend_from_slice(&[0, 0, 0, 0]);
            }
            let f = encode_vec(&build(i));
            stream.extend_from_slice(&f);
            expected.push(f);
        }
        let mut got = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().copied().cycle();
        while pos < stream.len() {
            let step = cut.next().unwrap_or(stream.len());
            let end = (pos + step).min(stream.len());
            buf.extend_from_slice(&stream[pos..end]);
            pos = end;
            while let Some((body, used)) = parse_frame(&buf).unwrap() {
                if !body.is_empty() {
                    let m = IpcMessage::decode(body).unwrap();
                    got.push(encode_vec(&m));
                }
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn oversized_prefix_fails_before_the_body(
        len in (MAX_BODY_LEN as u32 + 1)..=u32::MAX,
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut buf = len.to_be_bytes().to_vec();
        buf.extend(tail);
        prop_assert_eq!(parse_frame(&buf), Err(IpcError::TooLarge { len }));
    }

    #[test]
    fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = IpcMessage::decode(&body);
        let _ = parse_frame(&body);
    }
}
