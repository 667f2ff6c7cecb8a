//! Known-answer tests of the IPC codec (`spec/ipc.md`) against
//! `vectors/ipc.json`: decoding each frame gives the listed fields, encoding
//! the listed fields gives the frame, and errors carry the listed text.

use pilot_conformance::{field, load, name, unhex};
use pilot_proto::addr::Addr;
use pilot_proto::wire::ipc::{
    Command, Direction, Flag, HandshakeRequest, IpcError, IpcMessage, ManagedRequest,
    NetworkRequest, encode_frame, parse_frame,
};
use serde_json::{Map, Value, json};

fn addr_json(a: Addr) -> Value {
    json!({"network": a.network, "node": a.node})
}

/// The fields of a decoded message, in the vector file's vocabulary.
fn to_json(m: &IpcMessage<'_>) -> Value {
    use IpcMessage as M;
    let mut o = Map::new();
    o.insert("command".into(), m.command().name().into());
    let mut put = |k: &str, v: Value| {
        o.insert(k.into(), v);
    };
    match *m {
        M::Bind { port } | M::BindOk { port } => put("port", port.into()),
        M::Dial { addr, port } => {
            put("addr", addr_json(addr));
            put("port", port.into());
        }
        M::DialOk { conn_id } | M::Close { conn_id } | M::CloseOk { conn_id } => {
            put("conn_id", conn_id.into())
        }
        M::Accept {
            local_port,
            conn_id,
            remote,
            remote_port,
        } => {
            put("local_port", local_port.into());
            put("conn_id", conn_id.into());
            put("remote", addr_json(remote));
            put("remote_port", remote_port.into());
        }
        M::Send { conn_id, data } | M::Recv { conn_id, data } => {
            put("conn_id", conn_id.into());
            put("data", hex::encode(data).into());
        }
        M::Error { code, message } => {
            put("code", code.into());
            put("message", message.into());
        }
        M::SendTo {
            dst,
            dst_port,
            data,
        } => {
            put("dst", addr_json(dst));
            put("dst_port", dst_port.into());
            put("data", hex::encode(data).into());
        }
        M::RecvFrom {
            src,
            src_port,
            dst_port,
            data,
        } => {
            put("src", addr_json(src));
            put("src_port", src_port.into());
            put("dst_port", dst_port.into());
            put("data", hex::encode(data).into());
        }
        M::Info | M::Deregister | M::Health | M::RotateKey | M::BroadcastOk => {}
        M::ResolveHostname(t) | M::SetHostname(t) | M::SetWebhook(t) => put("text", t.into()),
        M::InfoOk(j)
        | M::HandshakeOk(j)
        | M::ResolveHostnameOk(j)
        | M::SetHostnameOk(j)
        | M::SetVisibilityOk(j)
        | M::DeregisterOk(j)
        | M::SetTags(j)
        | M::SetTagsOk(j)
        | M::SetWebhookOk(j)
        | M::SetTaskExecOk(j)
        | M::NetworkOk(j)
        | M::HealthOk(j)
        | M::ManagedOk(j)
        | M::RotateKeyOk(j)
        | M::PreferDirectOk(j)
        | M::SubmitBadge(j)
        | M::SubmitBadgeOk(j)
        | M::EnrollRecovery(j)
        | M::EnrollRecoveryOk(j)
        | M::SignEnvelope(j)
        | M::SignEnvelopeOk(j)
        | M::VerifyEnvelope(j)
        | M::VerifyEnvelopeOk(j) => put("json", j.into()),
        M::SetVisibility(f) | M::SetTaskExec(f) => put("flag", f.0.into()),
        M::Cancel(d) => put("data", hex::encode(d).into()),
        M::PreferDirect { node_id } => put("node_id", node_id.into()),
        M::Broadcast {
            network,
            port,
            token,
            data,
        } => {
            put("network", network.into());
            put("port", port.into());
            put("token", token.into());
            put("data", hex::encode(data).into());
        }
        M::Handshake(h) => {
            use HandshakeRequest as H;
            let wait = h.effective_wait_ms();
            match h {
                H::Request {
                    node_id,
                    justification,
                } => {
                    put("sub", "request".into());
                    put("node_id", node_id.into());
                    put("justification", justification.into());
                }
                H::Approve { node_id } => {
                    put("sub", "approve".into());
                    put("node_id", node_id.into());
                }
                H::Reject { node_id, reason } => {
                    put("sub", "reject".into());
                    put("node_id", node_id.into());
                    put("reason", reason.into());
                }
                H::ListPending => put("sub", "list_pending".into()),
                H::ListTrusted => put("sub", "list_trusted".into()),
                H::Revoke { node_id } => {
                    put("sub", "revoke".into());
                    put("node_id", node_id.into());
                }
                H::WaitForTrust {
                    node_id,
                    timeout_ms,
                } => {
                    put("sub", "wait_for_trust".into());
                    put("node_id", node_id.into());
                    put("timeout_ms", timeout_ms.into());
                    put("effective_wait_ms", wait.into());
                }
            }
        }
        M::Network(n) => {
            use NetworkRequest as N;
            match n {
                N::List => put("sub", "list".into()),
                N::Join { network, token } => {
                    put("sub", "join".into());
                    put("network", network.into());
                    put("token", token.into());
                }
                N::Leave { network } => {
                    put("sub", "leave".into());
                    put("network", network.into());
                }
                N::Members { network } => {
                    put("sub", "members".into());
                    put("network", network.into());
                }
                N::Invite { network, target } => {
                    put("sub", "invite".into());
                    put("network", network.into());
                    put("target", target.into());
                }
                N::PollInvites => put("sub", "poll_invites".into()),
                N::RespondInvite { network, accept } => {
                    put("sub", "respond_invite".into());
                    put("network", network.into());
                    put("accept", accept.0.into());
                }
                N::Create { rule, name, token } => {
                    put("sub", "create".into());
                    put("rule", rule.into());
                    put("name", name.into());
                    put("token", token.into());
                }
                N::Delete { network } => {
                    put("sub", "delete".into());
                    put("network", network.into());
                }
                N::Rename { network, name } => {
                    put("sub", "rename".into());
                    put("network", network.into());
                    put("name", name.into());
                }
                N::Member {
                    sub,
                    network,
                    target,
                } => {
                    put("sub", format!("{sub:?}").to_lowercase().into());
                    put("network", network.into());
                    put("target", target.into());
                }
            }
        }
        M::Managed(r) => {
            use ManagedRequest as R;
            match r {
                R::Status { network } | R::ForceCycle { network } => {
                    let sub = if matches!(r, R::Status { .. }) {
                        "status"
                    } else {
                        "force_cycle"
                    };
                    put("sub", sub.into());
                    if let Some(n) = network {
                        put("network", n.into());
                    }
                }
                R::Policy { network, set } => {
                    put("sub", "policy".into());
                    put("network", network.into());
                    if let Some(s) = set {
                        put("set", s.into());
                    }
                }
                R::MemberTags {
                    network,
                    node_id,
                    set,
                } => {
                    put("sub", "member_tags".into());
                    put("network", network.into());
                    put("node_id", node_id.into());
                    if let Some(s) = set {
                        put("set", s.into());
                    }
                }
                R::Reconcile { network } => {
                    put("sub", "reconcile".into());
                    if let Some(n) = network {
                        put("network", n.into());
                    }
                }
            }
        }
    }
    Value::Object(o)
}

fn num<T: TryFrom<u64>>(m: &Value, k: &str) -> T {
    let n = m
        .get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("missing number {k} in {m}"));
    T::try_from(n).unwrap_or_else(|_| panic!("{k} out of range in {m}"))
}

fn text<'a>(m: &'a Value, k: &str) -> &'a str {
    m.get(k)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("missing string {k} in {m}"))
}

fn addr(m: &Value, k: &str) -> Addr {
    let a = m.get(k).unwrap_or_else(|| panic!("missing {k} in {m}"));
    Addr::new(num(a, "network"), num(a, "node"))
}

/// Builds the message a vector lists. `data` is the decoded `"data"` hex.
fn from_json<'a>(m: &'a Value, data: &'a [u8]) -> IpcMessage<'a> {
    use IpcMessage as M;
    let cmd = text(m, "command");
    let json = || text(m, "json");
    let sub = || text(m, "sub");
    let opt = |k: &str| m.get(k).and_then(Value::as_str);
    match cmd {
        "bind" => M::Bind {
            port: num(m, "port"),
        },
        "bind_ok" => M::BindOk {
            port: num(m, "port"),
        },
        "dial" => M::Dial {
            addr: addr(m, "addr"),
            port: num(m, "port"),
        },
        "dial_ok" => M::DialOk {
            conn_id: num(m, "conn_id"),
        },
        "accept" => M::Accept {
            local_port: num(m, "local_port"),
            conn_id: num(m, "conn_id"),
            remote: addr(m, "remote"),
            remote_port: num(m, "remote_port"),
        },
        "send" => M::Send {
            conn_id: num(m, "conn_id"),
            data,
        },
        "recv" => M::Recv {
            conn_id: num(m, "conn_id"),
            data,
        },
        "close" => M::Close {
            conn_id: num(m, "conn_id"),
        },
        "close_ok" => M::CloseOk {
            conn_id: num(m, "conn_id"),
        },
        "error" => M::Error {
            code: num(m, "code"),
            message: text(m, "message"),
        },
        "sendto" => M::SendTo {
            dst: addr(m, "dst"),
            dst_port: num(m, "dst_port"),
            data,
        },
        "recvfrom" => M::RecvFrom {
            src: addr(m, "src"),
            src_port: num(m, "src_port"),
            dst_port: num(m, "dst_port"),
            data,
        },
        "info" => M::Info,
        "info_ok" => M::InfoOk(json()),
        "handshake" => M::Handshake(match sub() {
            "request" => HandshakeRequest::Request {
                node_id: num(m, "node_id"),
                justification: text(m, "justification"),
            },
            "approve" => HandshakeRequest::Approve {
                node_id: num(m, "node_id"),
            },
            "reject" => HandshakeRequest::Reject {
                node_id: num(m, "node_id"),
                reason: text(m, "reason"),
            },
            "list_pending" => HandshakeRequest::ListPending,
            "list_trusted" => HandshakeRequest::ListTrusted,
            "revoke" => HandshakeRequest::Revoke {
                node_id: num(m, "node_id"),
            },
            "wait_for_trust" => HandshakeRequest::WaitForTrust {
                node_id: num(m, "node_id"),
                timeout_ms: num(m, "timeout_ms"),
            },
            s => panic!("unknown handshake sub {s}"),
        }),
        "handshake_ok" => M::HandshakeOk(json()),
        "resolve_hostname" => M::ResolveHostname(text(m, "text")),
        "resolve_hostname_ok" => M::ResolveHostnameOk(json()),
        "set_hostname" => M::SetHostname(text(m, "text")),
        "set_hostname_ok" => M::SetHostnameOk(json()),
        "set_visibility" => M::SetVisibility(Flag(num(m, "flag"))),
        "set_visibility_ok" => M::SetVisibilityOk(json()),
        "deregister" => M::Deregister,
        "deregister_ok" => M::DeregisterOk(json()),
        "set_tags" => M::SetTags(json()),
        "set_tags_ok" => M::SetTagsOk(json()),
        "set_webhook" => M::SetWebhook(text(m, "text")),
        "set_webhook_ok" => M::SetWebhookOk(json()),
        "set_task_exec" => M::SetTaskExec(Flag(num(m, "flag"))),
        "set_task_exec_ok" => M::SetTaskExecOk(json()),
        "network" => M::Network(match sub() {
            "list" => NetworkRequest::List,
            "join" => NetworkRequest::Join {
                network: num(m, "network"),
                token: text(m, "token"),
            },
            "leave" => NetworkRequest::Leave {
                network: num(m, "network"),
            },
            "members" => NetworkRequest::Members {
                network: num(m, "network"),
            },
            "invite" => NetworkRequest::Invite {
                network: num(m, "network"),
                target: num(m, "target"),
            },
            "poll_invites" => NetworkRequest::PollInvites,
            "respond_invite" => NetworkRequest::RespondInvite {
                network: num(m, "network"),
                accept: Flag(num(m, "accept")),
            },
            s => panic!("unknown network sub {s}"),
        }),
        "network_ok" => M::NetworkOk(json()),
        "health" => M::Health,
        "health_ok" => M::HealthOk(json()),
        "managed" => {
            let net = m.get("network").map(|_| num(m, "network"));
            M::Managed(match sub() {
                "status" => ManagedRequest::Status { network: net },
                "force_cycle" => ManagedRequest::ForceCycle { network: net },
                "policy" => ManagedRequest::Policy {
                    network: num(m, "network"),
                    set: opt("set"),
                },
                "member_tags" => ManagedRequest::MemberTags {
                    network: num(m, "network"),
                    node_id: num(m, "node_id"),
                    set: opt("set"),
                },
                "reconcile" => ManagedRequest::Reconcile { network: net },
                s => panic!("unknown managed sub {s}"),
            })
        }
        "managed_ok" => M::ManagedOk(json()),
        "rotate_key" => M::RotateKey,
        "rotate_key_ok" => M::RotateKeyOk(json()),
        "broadcast" => M::Broadcast {
            network: num(m, "network"),
            port: num(m, "port"),
            token: text(m, "token"),
            data,
        },
        "broadcast_ok" => M::BroadcastOk,
        "cancel" => M::Cancel(data),
        "prefer_direct" => M::PreferDirect {
            node_id: num(m, "node_id"),
        },
        "prefer_direct_ok" => M::PreferDirectOk(json()),
        "submit_badge" => M::SubmitBadge(json()),
        "submit_badge_ok" => M::SubmitBadgeOk(json()),
        "enroll_recovery" => M::EnrollRecovery(json()),
        "enroll_recovery_ok" => M::EnrollRecoveryOk(json()),
        "sign_envelope" => M::SignEnvelope(json()),
        "sign_envelope_ok" => M::SignEnvelopeOk(json()),
        "verify_envelope" => M::VerifyEnvelope(json()),
        "verify_envelope_ok" => M::VerifyEnvelopeOk(json()),
        c => panic!("unknown command {c}"),
    }
}

/// Parses a vector's frame, which must be exactly one complete frame.
fn single_body(v: &Value, frame: &[u8]) -> Vec<u8> {
    let (body, used) = parse_frame(frame)
        .unwrap_or_else(|e| panic!("{}: frame error {e}", name(v)))
        .unwrap_or_else(|| panic!("{}: incomplete frame", name(v)));
    assert_eq!(used, frame.len(), "{}: frame length", name(v));
    // Every proper prefix is "need more bytes".
    for cut in 0..frame.len() {
        assert_eq!(
            parse_frame(&frame[..cut]),
            Ok(None),
            "{}: cut {cut}",
            name(v)
        );
    }
    body.to_vec()
}

#[test]
fn ipc_vectors() {
    let vectors = load("ipc.json");
    let (mut messages, mut errors, mut frames, mut from_28) = (0, 0, 0, 0);
    let mut commands_seen = Vec::new();
    for v in &vectors {
        let frame = unhex(field(v, "frame"));
        if field(v, "source").contains("§2.8") {
            from_28 += 1;
        }
        if let Some(expected) = v.get("message") {
            let body = single_body(v, &frame);
            // Decode gives the fields.
            let msg = IpcMessage::decode(&body)
                .unwrap_or_else(|e| panic!("{}: decode error {e}", name(v)));
            assert_eq!(&to_json(&msg), expected, "{}: decoded fields", name(v));
            let dir = match field(v, "direction") {
                "to_daemon" => Direction::ToDaemon,
                "from_daemon" => Direction::FromDaemon,
                d => panic!("{}: bad direction {d}", name(v)),
            };
            assert_eq!(msg.command().direction(), dir, "{}: direction", name(v));
            // Encode from the listed fields gives the bytes.
            let data = expected
                .get("data")
                .and_then(Value::as_str)
                .map(unhex)
                .unwrap_or_default();
            let built = from_json(expected, &data);
            assert_eq!(built, msg, "{}: built message", name(v));
            let mut out = vec![0u8; built.encoded_len()];
            assert_eq!(
                encode_frame(&built, &mut out),
                Ok(frame.len()),
                "{}",
                name(v)
            );
            assert_eq!(out, frame, "{}: encoded bytes", name(v));
            commands_seen.push(msg.command());
            messages += 1;
        } else if v.get("error").is_some() {
            let body = single_body(v, &frame);
            let err = IpcMessage::decode(&body).expect_err(name(v));
            assert_eq!(err.to_string(), field(v, "error"), "{}", name(v));
            assert!(err.needs_reply(), "{}", name(v));
            errors += 1;
        } else if v.get("frame_error").is_some() {
            let len: u32 = num(v, "len");
            assert_eq!(
                parse_frame(&frame),
                Err(IpcError::TooLarge { len }),
                "{}",
                name(v)
            );
            frames += 1;
        } else if v.get("empty") == Some(&Value::Bool(true)) {
            assert_eq!(parse_frame(&frame), Ok(Some((&[][..], 4))), "{}", name(v));
            assert_eq!(IpcMessage::decode(&[]), Err(IpcError::EmptyBody));
            frames += 1;
        } else {
            panic!("{}: unknown vector kind", name(v));
        }
    }
    assert_eq!(from_28, 15, "every example of daemon.md §2.8");
    assert_eq!((messages, errors, frames), (75, 15, 2));
    assert_eq!(vectors.len(), 92);
    commands_seen.sort_unstable();
    commands_seen.dedup();
    assert_eq!(
        commands_seen,
        Command::ALL.to_vec(),
        "a vector for every command"
    );
}
