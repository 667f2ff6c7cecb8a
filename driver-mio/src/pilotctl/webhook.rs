//! `pilotctl set-webhook` and `clear-webhook` (reference `daemon.md`
//! §4.9): the URL is kept in `config.json` (key `webhook`, what `daemon
//! start` passes on) and applied to the running daemon through IPC
//! `SetWebhook`; `applied` says whether a daemon took it.

use std::path::Path;

use serde_json::{Value, json};

use super::bootstrap::{config_path, read_config, write_config};
use super::util::{CliError, CliResult};
use crate::ipc_client::{IpcClient, IpcClientError};

/// `set-webhook <url>` (`""` clears, as `clear-webhook`).
pub fn set(dir: &Path, socket: &Path, url: &str) -> CliResult<Value> {
    if !url.is_empty() {
        crate::webhook::parse_url(url).map_err(|e| {
            CliError::invalid(e.to_string())
                .hint("e.g. pilotctl set-webhook http://hooks.example.com/pilot")
        })?;
    }
    let path = config_path(dir);
    let mut map = read_config(&path)?;
    if url.is_empty() {
        map.remove("webhook");
    } else {
        map.insert("webhook".into(), json!(url));
    }
    write_config(&path, &map)?;
    let applied = match IpcClient::connect(socket) {
        Err(_) => false,
        Ok(c) => match c.set_webhook(url) {
            Ok(_) => true,
            Err(IpcClientError::Daemon(m)) => return Err(CliError::invalid(m)),
            Err(e) => return Err(CliError::ipc(e, "internal")),
        },
    };
    Ok(json!({"applied": applied, "webhook": url}))
}
