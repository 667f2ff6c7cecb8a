//! `pilotctl received` and `pilotctl inbox`: what the data-exchange
//! service saved in the state directory (`spec/services.md` §5.4). Local
//! files only: no daemon is needed, and `--clear` empties them.
//!
//! `received/` holds the files under their own names (a name already
//! there gets `-1`, `-2`, … before the extension); `received.jsonl` next
//! to it records who sent each one. `inbox/` holds one JSON document per
//! message.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

use super::util::{CliError, CliResult};
use crate::daemon::files::RECEIVED_INDEX;

/// Longest message text shown in the `inbox` table (the JSON has it all).
const PREVIEW_CHARS: usize = 60;

/// A file's modification time as RFC 3339 in the local time zone.
fn rfc3339(t: SystemTime) -> Option<String> {
    let ts = jiff::Timestamp::try_from(t).ok()?;
    Some(
        ts.to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    )
}

/// The regular, non-hidden files of `dir` with their metadata, oldest
/// first (then by name). A missing directory has none.
fn entries(dir: &Path) -> CliResult<Vec<(String, PathBuf, fs::Metadata)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CliError::new(
                "internal",
                format!("cannot read {}: {e}", dir.display()),
            ));
        }
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if name.starts_with('.') || !meta.is_file() {
            continue;
        }
        out.push((name, entry.path(), meta));
    }
    out.sort_by(|a, b| {
        let ta = a.2.modified().ok();
        let tb = b.2.modified().ok();
        ta.cmp(&tb).then_with(|| a.0.cmp(&b.0))
    });
    Ok(out)
}

/// Senders of received files from `received.jsonl` (and its rotated
/// `.1`): name → `(from, received_at)`; the newest record of a name wins.
fn received_index(state: &Path) -> std::collections::HashMap<String, (Value, Value)> {
    let mut map = std::collections::HashMap::new();
    for file in [format!("{RECEIVED_INDEX}.1"), RECEIVED_INDEX.to_owned()] {
        let Ok(text) = fs::read_to_string(state.join(file)) else {
            continue;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(name) = v["name"].as_str() {
                map.insert(
                    name.to_owned(),
                    (v["from"].clone(), v["received_at"].clone()),
                );
            }
        }
    }
    map
}

/// Removes the listed files; returns how many went.
fn clear(files: &[(String, PathBuf, fs::Metadata)]) -> CliResult<usize> {
    let mut n = 0;
    for (_, path, _) in files {
        match fs::remove_file(path) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::new(
                    "internal",
                    format!("cannot remove {}: {e} ({n} removed)", path.display()),
                ));
            }
        }
    }
    Ok(n)
}

fn missing(dir: &Path) -> CliError {
    CliError::new("not_found", format!("{} does not exist", dir.display()))
        .hint("nothing was received yet, or --dir / PILOT_HOME names another state directory")
}

/// `received [--clear]` on state directory `state`: `{"dir","files":[{
/// "bytes","from","modified","name","path","received_at"}],"total"}` and
/// a table, or `{"cleared":n}`.
pub fn received(state: &Path, clear_all: bool) -> CliResult<(Value, String)> {
    let dir = state.join("received");
    let files = entries(&dir)?;
    if clear_all {
        if !dir.is_dir() {
            return Err(missing(&dir));
        }
        let n = clear(&files)?;
        for f in [format!("{RECEIVED_INDEX}.1"), RECEIVED_INDEX.to_owned()] {
            let _ = fs::remove_file(state.join(f));
        }
        return Ok((
            json!({"cleared": n}),
            format!("removed {n} file(s) from {}", dir.display()),
        ));
    }
    let index = received_index(state);
    let mut list = Vec::new();
    let mut rows = Vec::new();
    for (name, path, meta) in &files {
        let modified = meta.modified().ok().and_then(rfc3339);
        let (from, received_at) = index
            .get(name)
            .cloned()
            .unwrap_or((Value::Null, Value::Null));
        rows.push(json!({
            "name": name,
            "size": indicatif::HumanBytes(meta.len()).to_string(),
            "from": from,
            "time": received_at.as_str().map(str::to_owned).or(modified.clone()),
            "path": path.display().to_string(),
        }));
        list.push(json!({
            "bytes": meta.len(),
            "from": from,
            "modified": modified,
            "name": name,
            "path": path.display().to_string(),
            "received_at": received_at,
        }));
    }
    let text = super::util::table(
        &rows,
        &[
            ("NAME", "name"),
            ("SIZE", "size"),
            ("FROM", "from"),
            ("RECEIVED", "time"),
            ("PATH", "path"),
        ],
        &format!("no received files in {}", dir.display()),
    );
    let total = list.len();
    Ok((
        json!({"dir": dir.display().to_string(), "files": list, "total": total}),
        text,
    ))
}

/// One line of message text for the table.
fn preview(m: &Value) -> String {
    let text = match m["data"].as_str() {
        Some(t) => t.replace(['\n', '\r', '\t'], " "),
        None => format!("<{} bytes, base64>", m["bytes"]),
    };
    // Control characters (escape codes included) never reach the terminal.
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    if text.chars().count() > PREVIEW_CHARS {
        let cut: String = text.chars().take(PREVIEW_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// `inbox [--clear]` on state directory `state`: `{"dir","messages":[<the
/// saved documents, plus "path">],"total"}` and a table, or
/// `{"cleared":n}`. Files that are not inbox documents are skipped and
/// counted (`skipped`).
pub fn inbox(state: &Path, clear_all: bool) -> CliResult<(Value, String)> {
    let dir = state.join("inbox");
    let files: Vec<_> = entries(&dir)?
        .into_iter()
        .filter(|(n, _, _)| n.ends_with(".json"))
        .collect();
    if clear_all {
        if !dir.is_dir() {
            return Err(missing(&dir));
        }
        let n = clear(&files)?;
        return Ok((
            json!({"cleared": n}),
            format!("removed {n} message(s) from {}", dir.display()),
        ));
    }
    let mut messages = Vec::new();
    let mut rows = Vec::new();
    let mut skipped = 0usize;
    for (_, path, meta) in &files {
        // Inbox documents are small; anything huge is not one of ours.
        let doc = (meta.len() <= 96 << 20)
            .then(|| fs::read_to_string(path).ok())
            .flatten()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(Value::is_object);
        let Some(mut m) = doc else {
            skipped += 1;
            continue;
        };
        rows.push(json!({
            "type": m["type"],
            "from": m["from"],
            "bytes": m["bytes"],
            "received_at": m["received_at"],
            "data": preview(&m),
        }));
        m["path"] = json!(path.display().to_string());
        messages.push(m);
    }
    let mut text = super::util::table(
        &rows,
        &[
            ("TYPE", "type"),
            ("FROM", "from"),
            ("BYTES", "bytes"),
            ("RECEIVED", "received_at"),
            ("DATA", "data"),
        ],
        &format!("no messages in {}", dir.display()),
    );
    if skipped > 0 {
        text.push_str(&format!("\n({skipped} unreadable file(s) skipped)"));
    }
    let total = messages.len();
    Ok((
        json!({"dir": dir.display().to_string(), "messages": messages, "skipped": skipped, "total": total}),
        text,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_lists_files_with_their_sender_and_clears() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("received");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("a.txt"), b"hello").unwrap();
        fs::write(dir.join("a-1.txt"), b"hi").unwrap();
        fs::write(dir.join(".tmp"), b"x").unwrap();
        fs::write(
            state.path().join(RECEIVED_INDEX),
            "{\"bytes\":5,\"from\":\"0:0000.0000.0007\",\"name\":\"a.txt\",\"received_at\":\"2026-01-02T03:04:05+00:00\"}\nnot json\n",
        )
        .unwrap();
        let (v, text) = received(state.path(), false).unwrap();
        assert_eq!(v["total"], 2, "{v}");
        let a = v["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "a.txt")
            .unwrap();
        assert_eq!(a["bytes"], 5);
        assert_eq!(a["from"], "0:0000.0000.0007");
        assert_eq!(a["received_at"], "2026-01-02T03:04:05+00:00");
        assert!(a["modified"].as_str().unwrap().contains('T'));
        let b = v["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "a-1.txt")
            .unwrap();
        assert_eq!(b["from"], Value::Null);
        assert!(text.starts_with("NAME"), "{text}");
        assert!(
            text.contains("0:0000.0000.0007") && text.contains("5 B"),
            "{text}"
        );

        let (c, _) = received(state.path(), true).unwrap();
        assert_eq!(c["cleared"], 2);
        assert!(!state.path().join(RECEIVED_INDEX).exists());
        assert_eq!(received(state.path(), false).unwrap().0["total"], 0);
        // Clearing a directory that was never created names the problem.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(received(empty.path(), true).unwrap_err().code, "not_found");
        assert_eq!(received(empty.path(), false).unwrap().0["total"], 0);
    }

    #[test]
    fn inbox_lists_documents_skips_junk_and_clears() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("inbox");
        fs::create_dir(&dir).unwrap();
        fs::write(
            dir.join("TEXT-20260102-030405.000.json"),
            r#"{"bytes":14,"data":"hello\u001b[31m red","from":"0:0000.0000.0002","received_at":"2026-01-02T03:04:05+00:00","type":"TEXT"}"#,
        )
        .unwrap();
        fs::write(
            dir.join("BINARY-20260102-030406.000.json"),
            r#"{"bytes":3,"data_b64":"AQID","data_encoding":"base64","from":"0:0000.0000.0002","received_at":"2026-01-02T03:04:06+00:00","type":"BINARY"}"#,
        )
        .unwrap();
        fs::write(dir.join("junk.json"), b"[1,2").unwrap();
        let (v, text) = inbox(state.path(), false).unwrap();
        assert_eq!(v["total"], 2, "{v}");
        assert_eq!(v["skipped"], 1);
        let text_msg = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["type"] == "TEXT")
            .unwrap();
        assert_eq!(text_msg["data"], "hello\u{1b}[31m red");
        assert!(text_msg["path"].as_str().unwrap().ends_with(".json"));
        assert!(text.contains("hello[31m red"), "{text}");
        assert!(!text.contains('\x1b'), "no escape codes from peers: {text}");
        assert!(text.contains("<3 bytes, base64>"), "{text}");
        assert!(text.contains("1 unreadable"), "{text}");
        assert_eq!(inbox(state.path(), true).unwrap().0["cleared"], 3);
        assert_eq!(inbox(state.path(), false).unwrap().0["total"], 0);
    }
}
