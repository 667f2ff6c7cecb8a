//! `pilotctl network …`, `pilotctl managed …` and `pilotctl broadcast`
//! (`spec/daemon.md` §7): networks, roles, member tags and policies through
//! the daemon's `Network`, `Managed` and `Broadcast` IPC commands.
//!
//! Error codes (besides the common ones): `not_found` (unknown network,
//! member or invitation), `already_exists` (name taken, already a member),
//! `forbidden` (role too low, not a member, owner rules), `auth_required`
//! (admin token missing or wrong), `invalid_argument` (bad name, tags or
//! policy), `unavailable` (registry unreachable).

use clap::{Args, Subcommand};
use pilot_proto::registry::policy;
use pilot_proto::wire::ipc::{Flag, IpcMessage, ManagedRequest, MemberSub, NetworkRequest};
use serde_json::{Value, json};

use super::util::{CliError, CliResult, parse_node_id, table};
use crate::ipc_client::{IpcClient, IpcClientError};

/// `pilotctl network …`.
#[derive(Args, Debug)]
pub struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCmd,
}

/// The network sub-commands.
#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// List the registry's networks
    List,
    /// Create a network; you become its owner (the daemon needs an admin
    /// token: `daemon start --admin-token`)
    Create {
        /// Name (hostname rules)
        name: String,
        /// Join rule: open, token or invite
        #[arg(long, default_value = "open")]
        rule: String,
        /// Join token (token networks)
        #[arg(long, default_value = "")]
        token: String,
    },
    /// Delete a network (owner)
    Delete {
        /// Network id
        network: u16,
    },
    /// Rename a network (owner)
    Rename {
        /// Network id
        network: u16,
        /// New name
        name: String,
    },
    /// Join an open network, or a token network with --token
    Join {
        /// Network id
        network: u16,
        /// Join token
        #[arg(long, default_value = "")]
        token: String,
    },
    /// Leave a network (the owner must transfer or delete instead)
    Leave {
        /// Network id
        network: u16,
    },
    /// List a network's members with their roles and member tags
    Members {
        /// Network id
        network: u16,
    },
    /// Invite a node (owner or admin; members too if the policy allows)
    Invite {
        /// Network id
        network: u16,
        /// Node id of the invited node
        node: String,
    },
    /// List the invitations waiting for this node
    Invites,
    /// Accept an invitation (joins the network)
    Accept {
        /// Network id
        network: u16,
    },
    /// Decline an invitation
    Reject {
        /// Network id
        network: u16,
    },
    /// Remove a member (owner; admins may remove plain members)
    Kick {
        /// Network id
        network: u16,
        /// Node id
        node: String,
    },
    /// Make a member an admin (owner)
    Promote {
        /// Network id
        network: u16,
        /// Node id
        node: String,
    },
    /// Make an admin a plain member (owner)
    Demote {
        /// Network id
        network: u16,
        /// Node id
        node: String,
    },
    /// Hand ownership to a member; you become an admin (owner)
    Transfer {
        /// Network id
        network: u16,
        /// Node id
        node: String,
    },
    /// Show a member's role
    Role {
        /// Network id
        network: u16,
        /// Node id
        node: String,
    },
}

/// `pilotctl managed …`.
#[derive(Args, Debug)]
pub struct ManagedArgs {
    #[command(subcommand)]
    command: ManagedCmd,
}

/// The managed-network sub-commands.
#[derive(Subcommand, Debug)]
pub enum ManagedCmd {
    /// A network's policy and member count
    Status {
        /// Network id
        network: u16,
    },
    /// Show a network's policy
    PolicyGet {
        /// Network id
        network: u16,
    },
    /// Set a network's policy (owner): JSON, version 1, keys max_members,
    /// allowed_ports, description, member_invites; "null" clears it
    PolicySet {
        /// Network id
        network: u16,
        /// The policy JSON
        policy: String,
    },
    /// Check a policy document locally without setting it
    PolicyValidate {
        /// The policy JSON
        policy: String,
    },
    /// Show a member's tags, or set them (owner or admin) when tags are given
    Tags {
        /// Network id
        network: u16,
        /// Node id
        node: String,
        /// New tags (none = show; --clear to remove all)
        tags: Vec<String>,
        /// Remove all tags
        #[arg(long)]
        clear: bool,
    },
}

/// `pilotctl broadcast`.
#[derive(Args, Debug)]
pub struct BroadcastArgs {
    /// Network id
    network: u16,
    /// Message (one datagram to every other member)
    message: String,
    /// Destination port (receivers: `pilotctl listen <port>`)
    #[arg(long, default_value_t = 1000)]
    port: u16,
    /// Admin token the daemon was started with [env: PILOT_ADMIN_TOKEN]
    #[arg(long)]
    admin_token: Option<String>,
}

/// Maps a daemon/registry error text to a code and hint.
fn net_err(e: IpcClientError) -> CliError {
    let IpcClientError::Daemon(m) = e else {
        return CliError::ipc(e, "internal");
    };
    let lower = m.to_ascii_lowercase();
    let (code, hint) = if lower.contains("registry unreachable") {
        ("unavailable", Some("check the registry: pilotctl info"))
    } else if lower.contains("admin token") {
        (
            "auth_required",
            Some("start the daemon with --admin-token (the registry's admin token)"),
        )
    } else if lower.contains("permission denied") {
        (
            "forbidden",
            Some("ask the network owner: pilotctl network members <id> shows roles"),
        )
    } else if lower.contains("not a member") {
        ("forbidden", Some("join first: pilotctl network join <id>"))
    } else if lower.contains("cannot") {
        ("forbidden", None)
    } else if lower.contains("not found") {
        ("not_found", Some("list networks: pilotctl network list"))
    } else if lower.contains("already") {
        ("already_exists", None)
    } else if lower.contains("invalid") || lower.contains("too long") || lower.contains("missing") {
        ("invalid_argument", None)
    } else {
        ("internal", None)
    };
    let err = CliError::new(code, m);
    match hint {
        Some(h) => err.hint(h),
        None => err,
    }
}

fn net(c: &IpcClient, req: NetworkRequest<'_>) -> CliResult<Value> {
    c.request_value(&IpcMessage::Network(req)).map_err(net_err)
}

fn managed(c: &IpcClient, req: ManagedRequest<'_>) -> CliResult<Value> {
    c.request_value(&IpcMessage::Managed(req)).map_err(net_err)
}

fn member(c: &IpcClient, sub: MemberSub, network: u16, node: &str) -> CliResult<Value> {
    let target = parse_node_id(node)?;
    net(
        c,
        NetworkRequest::Member {
            sub,
            network,
            target,
        },
    )
}

fn strip_type(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("type");
    }
    v
}

/// Runs `network …`: the result object and its human text.
pub fn run_network(args: NetworkArgs, c: &IpcClient) -> CliResult<(Value, String)> {
    use NetworkCmd as N;
    Ok(match args.command {
        N::List => {
            let v = strip_type(net(c, NetworkRequest::List)?);
            let rows: Vec<Value> = v["networks"].as_array().cloned().unwrap_or_default();
            let text = table(
                &rows,
                &[("ID", "id"), ("NAME", "name"), ("JOIN", "join_rule")],
                "no networks",
            );
            (v, text)
        }
        N::Create { name, rule, token } => {
            let rule_byte = match rule.as_str() {
                "open" => 0,
                "token" => 1,
                "invite" => 2,
                other => {
                    return Err(CliError::invalid(format!(
                        "unknown join rule {other:?} (open, token or invite)"
                    )));
                }
            };
            if rule_byte == 1 && token.is_empty() {
                return Err(CliError::invalid("token networks need --token"));
            }
            let v = strip_type(net(
                c,
                NetworkRequest::Create {
                    rule: rule_byte,
                    name: &name,
                    token: &token,
                },
            )?);
            let text = format!(
                "created network {} ({name}, {rule}); you are its owner",
                v["network_id"]
            );
            (v, text)
        }
        N::Delete { network } => {
            let v = strip_type(net(c, NetworkRequest::Delete { network })?);
            (v, format!("deleted network {network}"))
        }
        N::Rename { network, name } => {
            let v = strip_type(net(
                c,
                NetworkRequest::Rename {
                    network,
                    name: &name,
                },
            )?);
            (v, format!("network {network} is now {name:?}"))
        }
        N::Join { network, token } => {
            let v = strip_type(net(
                c,
                NetworkRequest::Join {
                    network,
                    token: &token,
                },
            )?);
            let text = format!("joined network {network} as {}", v["address"]);
            (v, text)
        }
        N::Leave { network } => {
            let v = strip_type(net(c, NetworkRequest::Leave { network })?);
            (v, format!("left network {network}"))
        }
        N::Members { network } => {
            let v = net(c, NetworkRequest::Members { network })?;
            let mut rows: Vec<Value> = v["nodes"].as_array().cloned().unwrap_or_default();
            for r in &mut rows {
                let tags = r["member_tags"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                r["tags_text"] = json!(tags);
                if r["offline"] == json!(true) {
                    r["hostname"] = json!("(offline)");
                }
            }
            let text = table(
                &rows,
                &[
                    ("NODE", "node_id"),
                    ("ADDRESS", "address"),
                    ("ROLE", "role"),
                    ("HOSTNAME", "hostname"),
                    ("TAGS", "tags_text"),
                ],
                "no members",
            );
            let out = json!({
                "network_id": network,
                "members": v["nodes"].clone(),
                "total": rows.len(),
                "policy": v.get("policy").cloned().unwrap_or(Value::Null),
            });
            (out, text)
        }
        N::Invite { network, node } => {
            let target = parse_node_id(&node)?;
            let v = strip_type(net(c, NetworkRequest::Invite { network, target })?);
            (v, format!("invited node {target} to network {network}"))
        }
        N::Invites => {
            let v = strip_type(net(c, NetworkRequest::PollInvites)?);
            let rows: Vec<Value> = v["invites"].as_array().cloned().unwrap_or_default();
            let text = table(
                &rows,
                &[
                    ("NETWORK", "network_id"),
                    ("NAME", "network_name"),
                    ("FROM", "inviter_id"),
                ],
                "no invitations",
            );
            (v, text)
        }
        N::Accept { network } | N::Reject { network } => {
            let accept = matches!(args.command, N::Accept { .. });
            let v = strip_type(net(
                c,
                NetworkRequest::RespondInvite {
                    network,
                    accept: Flag::from_bool(accept),
                },
            )?);
            let text = if accept {
                format!("joined network {network}")
            } else {
                format!("declined the invitation to network {network}")
            };
            (v, text)
        }
        N::Kick { network, node } => {
            let v = strip_type(member(c, MemberSub::Kick, network, &node)?);
            (v, format!("removed node {node} from network {network}"))
        }
        N::Promote { network, node } => {
            let v = strip_type(member(c, MemberSub::Promote, network, &node)?);
            (
                v,
                format!("node {node} is now an admin of network {network}"),
            )
        }
        N::Demote { network, node } => {
            let v = strip_type(member(c, MemberSub::Demote, network, &node)?);
            (
                v,
                format!("node {node} is now a member of network {network}"),
            )
        }
        N::Transfer { network, node } => {
            let v = strip_type(member(c, MemberSub::Transfer, network, &node)?);
            (v, format!("node {node} now owns network {network}"))
        }
        N::Role { network, node } => {
            let v = strip_type(member(c, MemberSub::Role, network, &node)?);
            let text = format!("node {node}: {} of network {network}", v["role"]);
            (v, text)
        }
    })
}

/// Runs `managed …` (`policy-validate` needs no daemon).
pub fn run_managed(
    args: ManagedArgs,
    c: impl FnOnce() -> CliResult<IpcClient>,
) -> CliResult<(Value, String)> {
    use ManagedCmd as M;
    Ok(match args.command {
        M::PolicyValidate { policy: text } => {
            let p =
                policy::parse_policy_text(&text).map_err(|e| CliError::invalid(e.to_string()))?;
            (
                json!({"valid": true, "policy": p.to_value()}),
                format!("valid policy: {}", p.to_value()),
            )
        }
        M::Status { network } => {
            let v = managed(
                &c()?,
                ManagedRequest::Status {
                    network: Some(network),
                },
            )?;
            let members = v["nodes"].as_array().map_or(0, Vec::len);
            let policy = v.get("policy").cloned().unwrap_or(Value::Null);
            let managed = !policy.is_null();
            let text = if managed {
                format!("network {network}: managed, {members} members, policy {policy}")
            } else {
                format!("network {network}: not managed (no policy), {members} members")
            };
            (
                json!({"network_id": network, "managed": managed, "members": members, "policy": policy}),
                text,
            )
        }
        M::PolicyGet { network } => {
            let v = strip_type(managed(
                &c()?,
                ManagedRequest::Policy { network, set: None },
            )?);
            let text = format!("network {network} policy: {}", v["policy"]);
            (v, text)
        }
        M::PolicySet {
            network,
            policy: text,
        } => {
            if text.trim() != "null" {
                policy::parse_policy_text(&text).map_err(|e| CliError::invalid(e.to_string()))?;
            }
            let v = strip_type(managed(
                &c()?,
                ManagedRequest::Policy {
                    network,
                    set: Some(&text),
                },
            )?);
            let out = format!("network {network} policy: {}", v["policy"]);
            (v, out)
        }
        M::Tags {
            network,
            node,
            tags,
            clear,
        } => {
            let node_id = parse_node_id(&node)?;
            let client = c()?;
            let v = if tags.is_empty() && !clear {
                managed(
                    &client,
                    ManagedRequest::MemberTags {
                        network,
                        node_id,
                        set: None,
                    },
                )?
            } else {
                let json = serde_json::to_string(&tags).unwrap_or_else(|_| "[]".into());
                managed(
                    &client,
                    ManagedRequest::MemberTags {
                        network,
                        node_id,
                        set: Some(&json),
                    },
                )?
            };
            let v = strip_type(v);
            let text = format!("node {node_id} in network {network}: tags {}", v["tags"]);
            (v, text)
        }
    })
}

/// Runs `broadcast`.
pub fn run_broadcast(args: BroadcastArgs, c: &IpcClient) -> CliResult<(Value, String)> {
    let token = args
        .admin_token
        .or_else(|| std::env::var("PILOT_ADMIN_TOKEN").ok())
        .unwrap_or_default();
    if token.is_empty() {
        return Err(
            CliError::new("auth_required", "broadcast needs the daemon's admin token")
                .hint("pass --admin-token or set PILOT_ADMIN_TOKEN"),
        );
    }
    if token.len() > usize::from(u16::MAX) {
        return Err(CliError::invalid("admin token too long"));
    }
    c.request_raw(
        &IpcMessage::Broadcast {
            network: args.network,
            port: args.port,
            token: &token,
            data: args.message.as_bytes(),
        },
        c.timeout(),
    )
    .map_err(net_err)?;
    let v = json!({
        "network_id": args.network,
        "port": args.port,
        "bytes": args.message.len(),
    });
    let text = format!(
        "broadcast {} bytes to the members of network {} on port {}",
        args.message.len(),
        args.network,
        args.port
    );
    Ok((v, text))
}
