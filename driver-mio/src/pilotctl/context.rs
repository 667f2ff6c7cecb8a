//! `pilotctl context`: the machine-readable catalogue of every command
//! (reference `daemon.md` §4.9 "context"), generated from the same clap
//! definition the CLI parses ([`super::skill::catalog_all`]): names,
//! arguments, defaults and descriptions cannot drift from `--help`. What
//! clap cannot know — what each command returns — is the [`RETURNS`]
//! table; a unit test fails when a command has no entry there or an entry
//! names no command. Error codes come from [`super::skill::ERROR_CODES`].

use serde_json::{Map, Value, json};

use super::skill::{self, CommandDoc};

/// Version of the catalogue's layout.
pub const CONTEXT_VERSION: &str = "2.0";

/// What each command prints as `data` with `--json` (keys of the object),
/// by command path.
pub const RETURNS: &[(&str, &str)] = &[
    (
        "daemon start",
        "{address, hostname, log_file, node_id, pid, socket}",
    ),
    ("daemon stop", "{pid, forced}"),
    (
        "daemon install-service",
        "{daemon_bin, next[], scope, status, unit}",
    ),
    (
        "daemon status",
        "{pid, pid_file, responsive, running, socket[, node_id, address, hostname, uptime_secs, peers, connections]}",
    ),
    (
        "info",
        "the daemon's Info object {node_id, address, hostname, peers, connections, peer_list[], conn_list[], …}",
    ),
    ("set-hostname", "{hostname, node_id}"),
    ("clear-hostname", "{hostname: \"\"}"),
    ("find", "{address, hostname, node_id, public}"),
    ("set-public", "the registry's set_visibility_ok object"),
    ("set-private", "the registry's set_visibility_ok object"),
    ("set-tags", "{node_id, tags[]}"),
    ("clear-tags", "{tags: []}"),
    ("deregister", "{type: \"deregister_ok\"}"),
    (
        "rotate-key",
        "{address, node_id, persisted, public_key, type: \"rotate_key_ok\"[, warning]}",
    ),
    (
        "ping",
        "{results[{bytes, rtt_ms, seq} | {error, seq}], target, timeout}",
    ),
    (
        "traceroute",
        "{rtt_samples[{bytes, rtt_ms}], setup_ms, target} or {error, setup_ms, target}",
    ),
    (
        "bench",
        "{recv_bytes, send_duration_ms, send_mbps, sent_bytes, target, total_duration_ms, total_mbps}",
    ),
    ("connect", "{port, response, sent, target[, secure]}"),
    ("send", "{port, response, sent, target}"),
    (
        "recv",
        "{messages[{bytes, data, port, seq} | {error, port, seq}], timeout}",
    ),
    ("send-message", "{ack, bytes, target, type}"),
    ("send-file", "{ack, bytes, destination, filename}"),
    ("publish", "{bytes, delivered, target, topic}"),
    (
        "subscribe",
        "{events[{bytes, data, topic}], timeout}; with --count 0 NDJSON lines {bytes, data, topic}",
    ),
    (
        "listen",
        "{messages[{bytes, data, src_addr, src_port}], timeout}; with --count 0 NDJSON lines",
    ),
    (
        "received",
        "{dir, files[{bytes, from, modified, name, path, received_at}], total} or {cleared}",
    ),
    (
        "inbox",
        "{dir, messages[{type, from, bytes, data|data_b64, received_at, path}], skipped, total} or {cleared}",
    ),
    ("connections", "{connections[…], total}"),
    (
        "peers",
        "{peers[{authenticated, encrypted, endpoint, node_id}], total}",
    ),
    (
        "disconnect",
        "{conn_id, remote_addr, remote_port, status: \"closed\"}",
    ),
    ("handshake", "{node_id, status: \"sent\"}"),
    (
        "pending",
        "{pending[{justification, node_id, public_key, received_at}], outgoing[]}",
    ),
    ("approve", "{node_id, status: \"approved\"}"),
    ("reject", "{node_id, status: \"rejected\"}"),
    (
        "trust",
        "{trusted[{approved_at, mutual, network, node_id, public_key}]}",
    ),
    ("untrust", "{node_id}"),
    ("init", "{beacon, config_path, hostname, registry, socket}"),
    (
        "config",
        "config.json's keys plus {config_path, pid_file, log_file, registry, socket}; with --set {key, value}",
    ),
    (
        "context",
        "this catalogue {version, commands{name: {args[], description, returns, usage}}, error_codes{}, global_flags{}, environment{}, config_file}",
    ),
    (
        "lookup",
        "the registry's lookup_ok object {address, networks[], node_id, public, public_key, …}",
    ),
    (
        "health",
        "{status, uptime_seconds, connections, peers, bytes_sent, bytes_recv, encrypted_peers, authenticated_peers, handshake_pending_count, version, webhook, webhook_queue_dropped, webhook_circuit_skips, task_exec}",
    ),
    (
        "version",
        "{version, daemon_running, daemon_version, wire_profiles[]}",
    ),
    (
        "network list",
        "the registry's list_networks_ok object without `type` {networks[]}",
    ),
    (
        "network create",
        "the registry's create_network_ok object without `type` (the new network's id and name)",
    ),
    (
        "network delete",
        "the registry's delete_network_ok object without `type`",
    ),
    (
        "network rename",
        "the registry's rename_network_ok object without `type`",
    ),
    (
        "network join",
        "the registry's join_network_ok object without `type`",
    ),
    (
        "network leave",
        "the registry's leave_network_ok object without `type`",
    ),
    ("network members", "{network_id, members[], total, policy}"),
    (
        "network invite",
        "the registry's invite_to_network_ok object without `type`",
    ),
    (
        "network invites",
        "the registry's poll_invites_ok object without `type` {invites[]}",
    ),
    (
        "network accept",
        "the registry's respond_invite_ok object without `type`",
    ),
    (
        "network reject",
        "the registry's respond_invite_ok object without `type`",
    ),
    (
        "network kick",
        "the registry's kick_member_ok object without `type`",
    ),
    (
        "network promote",
        "the registry's promote_member_ok object without `type`",
    ),
    (
        "network demote",
        "the registry's demote_member_ok object without `type`",
    ),
    (
        "network transfer",
        "the registry's transfer_ownership_ok object without `type`",
    ),
    (
        "network role",
        "the registry's get_member_role_ok object without `type` (the member's role)",
    ),
    ("managed status", "{network_id, managed, members, policy}"),
    (
        "managed policy-get",
        "the network's policy document (null when none)",
    ),
    (
        "managed policy-set",
        "the registry's set_network_policy_ok object without `type`",
    ),
    (
        "managed policy-validate",
        "the normalised policy document (checked locally, nothing sent)",
    ),
    (
        "managed tags",
        "the member's tags (get_member_tags_ok / set_member_tags_ok without `type`)",
    ),
    ("broadcast", "{network_id, port, bytes}"),
    (
        "prefer-direct",
        "the daemon's prefer_direct_ok object, with node_id",
    ),
    (
        "task submit",
        "{accepted, message, status, target, task, task_id}; a refusal is the error `refused`",
    ),
    ("task accept", "{notified, status, task_id}"),
    ("task decline", "{notified, status, task_id}"),
    (
        "task execute",
        "the task {task_id, status: EXECUTING, from, to, created_at, description, task_description, …}",
    ),
    (
        "task send-results",
        "{result_type, reward, status: SUCCEEDED, task_id, to}",
    ),
    (
        "task list",
        "{tasks[{task_id, status, status_justification, from, to, created_at, description, results, type}]}",
    ),
    ("task queue", "{count, queue[…]}"),
    ("set-webhook", "{applied, webhook}"),
    ("clear-webhook", "{applied, webhook: \"\"}"),
    (
        "enable-tasks",
        "{task_exec: true, type: \"set_task_exec_ok\"}",
    ),
    (
        "disable-tasks",
        "{task_exec: false, type: \"set_task_exec_ok\"}",
    ),
    ("demo", "a report of the local demo network's steps"),
    (
        "gateway start",
        "{mappings[{local_ip, pilot_addr}], pid, subnet} (then runs until stopped)",
    ),
    ("gateway stop", "{pid, stopped}"),
    ("gateway map", "the running gateway's reply {ip, addr, …}"),
    ("gateway unmap", "the running gateway's reply"),
    ("gateway list", "the running gateway's mappings"),
    (
        "skill show",
        "SKILL.md (with --json: the file plus the command catalogue)",
    ),
    ("skill install", "{installed[], sha256}"),
    ("skill status", "{locations[{target, path, state}], sha256}"),
    ("nameserver serve", "runs the nameserver until stopped"),
    (
        "nameserver query",
        "{type: A, name, address, node_id} | {type: N, name, network_id} | {type: S, providers[]}",
    ),
    ("nameserver register", "{ok: true}"),
    ("completions", "a shell completion script (text)"),
    ("man", "the pilotctl(1) man page (roff)"),
];

/// Environment variables pilotctl reads.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "PILOT_SOCKET",
        "IPC socket of the daemon (default /tmp/pilot.sock; config key socket)",
    ),
    (
        "PILOT_HOME",
        "state directory (default ~/.pilot): config.json, identity, inbox/, received/",
    ),
    (
        "PILOT_REGISTRY",
        "registry HOST:PORT for direct commands (lookup; config key registry)",
    ),
];

fn arg_json(a: &skill::ArgDoc) -> Value {
    json!({
        "syntax": a.syntax,
        "help": a.help,
        "default": a.default,
        "required": a.required,
    })
}

fn command_json(c: &CommandDoc) -> Value {
    let name = c.path.join(" ");
    let returns = RETURNS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
        .unwrap_or("");
    json!({
        "args": c.args.iter().map(arg_json).collect::<Vec<_>>(),
        "description": c.about,
        "returns": returns,
        "usage": c.usage(),
    })
}

/// The whole catalogue for `root` (the CLI's clap command).
pub fn context(root: &clap::Command) -> Value {
    let mut commands = Map::new();
    for c in skill::catalog_all(root) {
        commands.insert(c.path.join(" "), command_json(&c));
    }
    let errors: Map<String, Value> = skill::ERROR_CODES
        .iter()
        .map(|(c, m)| ((*c).to_owned(), json!(m)))
        .collect();
    let globals: Map<String, Value> = root
        .get_arguments()
        .filter(|a| a.is_global_set() && !a.is_hide_set())
        .filter_map(|a| {
            let long = a.get_long()?;
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            Some((format!("--{long}"), json!(help.replace('\n', " "))))
        })
        .collect();
    let env: Map<String, Value> = ENVIRONMENT
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "version": CONTEXT_VERSION,
        "pilotctl_version": env!("CARGO_PKG_VERSION"),
        "commands": commands,
        "error_codes": errors,
        "global_flags": globals,
        "environment": env,
        "config_file": "$PILOT_HOME/config.json (default ~/.pilot/config.json)",
        "envelope": {
            "ok": "stdout: {\"data\":{…},\"status\":\"ok\"}, exit 0",
            "error": "stderr: {\"code\",\"message\"[,\"hint\"],\"status\":\"error\"}, exit 1",
        },
    })
}

/// Human form: one line per command.
pub fn context_text(v: &Value) -> String {
    let mut s = String::new();
    if let Some(cmds) = v["commands"].as_object() {
        let w = cmds.keys().map(String::len).max().unwrap_or(0);
        for (name, c) in cmds {
            s.push_str(&format!(
                "{name:<w$}  {}\n",
                c["description"]
                    .as_str()
                    .unwrap_or_default()
                    .split(". ")
                    .next()
                    .unwrap_or_default()
            ));
        }
    }
    s.push_str("\n(pilotctl --json context for arguments, outputs and error codes)");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_returns_entry_and_every_entry_a_command() {
        let root = super::super::cli_command();
        let names: Vec<String> = skill::catalog_all(&root)
            .iter()
            .map(|c| c.path.join(" "))
            .collect();
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !RETURNS.iter().any(|(r, _)| r == n))
            .collect();
        assert!(missing.is_empty(), "add RETURNS entries for {missing:?}");
        let stale: Vec<&str> = RETURNS
            .iter()
            .map(|(r, _)| *r)
            .filter(|r| !names.iter().any(|n| n == r))
            .collect();
        assert!(stale.is_empty(), "RETURNS names no command: {stale:?}");
        let v = context(&root);
        assert_eq!(v["commands"].as_object().unwrap().len(), names.len());
        assert!(v["error_codes"]["not_running"].is_string());
        assert!(v["global_flags"]["--json"].is_string());
        assert!(
            v["commands"]["send-message"]["args"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["syntax"] == "--data <DATA>"),
            "{}",
            v["commands"]["send-message"]
        );
    }
}
