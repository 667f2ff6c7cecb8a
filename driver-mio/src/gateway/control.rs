//! The gateway's control protocol (`spec/gateway.md` §4): one JSON object
//! per line over a Unix socket, one request and one reply per connection.
//!
//! Requests: `{"cmd":"list"}`, `{"cmd":"map","addr":"N:…","ip":"a.b.c.d"?}`,
//! `{"cmd":"unmap","ip":"a.b.c.d"}`, `{"cmd":"stop"}`. Replies:
//! `{"ok":true,"data":…}` or `{"ok":false,"code":…,"message":…,"hint":…?}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// Longest request or reply line accepted.
pub const MAX_LINE: u64 = 64 * 1024;

/// How long one control exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A refused request: envelope code, message, optional hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError {
    /// Machine-readable code (`not_running`, `not_found`, …).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Next step, if any.
    pub hint: Option<String>,
}

impl ControlError {
    /// An error without hint.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ControlError {
            code: code.to_owned(),
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The reply line of this error.
    pub fn to_reply(&self) -> Value {
        let mut v = json!({"ok": false, "code": self.code, "message": self.message});
        if let Some(h) = &self.hint {
            v["hint"] = json!(h);
        }
        v
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes and parses it as JSON.
pub fn read_json(stream: impl Read) -> Result<Value, String> {
    let mut line = String::new();
    BufReader::new(stream.take(MAX_LINE))
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if !line.ends_with('\n') {
        return Err("line missing or too long".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("invalid JSON: {e}"))
}

/// Sends `request` to the gateway at `path` and returns its `data`.
pub fn request(path: &Path, request: &Value) -> Result<Value, ControlError> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        ControlError::new(
            "not_running",
            format!(
                "no gateway is running (control socket {}: {e})",
                path.display()
            ),
        )
        .hint("start one with: sudo pilotctl gateway start [TARGET…]")
    })?;
    let io = |e: std::io::Error| ControlError::new("internal", format!("gateway control: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line = request.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let reply =
        read_json(&s).map_err(|e| ControlError::new("internal", format!("gateway reply: {e}")))?;
    if reply["ok"] == json!(true) {
        return Ok(reply.get("data").cloned().unwrap_or(Value::Null));
    }
    let mut e = ControlError::new(
        reply["code"].as_str().unwrap_or("internal"),
        reply["message"]
            .as_str()
            .unwrap_or("gateway refused the request"),
    );
    if let Some(h) = reply["hint"].as_str() {
        e = e.hint(h);
    }
    Err(e)
}
