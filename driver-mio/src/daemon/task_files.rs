//! Task files under `<dir>/tasks/{received,submitted,results}/`
//! (`spec/services.md` §12.3): the daemon carries out the service's
//! [`TaskEffect`]s here, and `pilotctl task …` reads and changes the same
//! files. Every write is atomic (temporary file, fsync, rename); a
//! received task or a result never replaces an existing file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use pilot_proto::services::tasks::{Status, TaskDir, TaskEffect, TaskFile, valid_task_id};
use serde_json::Value;

use super::files::{create_private_dir, plain_name, write_atomic};

/// Longest task file read, bytes (a description is at most 64 KiB).
pub const TASK_FILE_MAX: u64 = 1 << 20;

/// `<tasks>/<dir>/`.
pub fn dir_of(tasks: &Path, dir: TaskDir) -> PathBuf {
    tasks.join(dir.name())
}

/// Reads the task `id` of `dir`; `Ok(None)` if there is none.
pub fn read_task(tasks: &Path, dir: TaskDir, id: &str) -> io::Result<Option<TaskFile>> {
    if !valid_task_id(id) {
        return Ok(None);
    }
    let path = dir_of(tasks, dir).join(format!("{id}.json"));
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.len() > TASK_FILE_MAX {
        return Err(io::Error::other(format!("{}: too large", path.display())));
    }
    let text = fs::read_to_string(&path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

/// Saves `t` as `<dir>/<task_id>.json` (replacing it).
pub fn write_task(tasks: &Path, dir: TaskDir, t: &TaskFile) -> io::Result<PathBuf> {
    if !valid_task_id(&t.task_id) {
        return Err(io::Error::other(format!("invalid task id {:?}", t.task_id)));
    }
    let d = dir_of(tasks, dir);
    create_private_dir(&d)?;
    let path = d.join(format!("{}.json", t.task_id));
    write_atomic(&path, t.to_json().as_bytes())?;
    Ok(path)
}

/// Every task of `dir`, oldest first (by `created_at`, then id);
/// unreadable files are skipped.
pub fn list_tasks(tasks: &Path, dir: TaskDir) -> Vec<TaskFile> {
    let Ok(rd) = fs::read_dir(dir_of(tasks, dir)) else {
        return Vec::new();
    };
    let mut out: Vec<TaskFile> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?;
            read_task(tasks, dir, id).ok().flatten()
        })
        .collect();
    out.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.task_id.cmp(&b.task_id))
    });
    out
}

fn create_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists", path.display()),
        ));
    }
    write_atomic(path, bytes)
}

/// Carries out one effect of the task service. `Ok(None)`: nothing to do
/// (an update for a task this node did not submit to that peer).
pub fn apply(tasks: &Path, effect: &TaskEffect) -> io::Result<Option<PathBuf>> {
    match effect {
        TaskEffect::Create { dir, name, bytes } => {
            if !plain_name(name) {
                return Err(io::Error::other(format!("bad task file name {name:?}")));
            }
            let d = dir_of(tasks, *dir);
            create_private_dir(&d)?;
            let path = d.join(name);
            create_new(&path, bytes)?;
            Ok(Some(path))
        }
        TaskEffect::Expire {
            task_id,
            when,
            to,
            justification,
        } => {
            let Some(mut t) = read_task(tasks, TaskDir::Received, task_id)? else {
                return Ok(None);
            };
            if t.status != *when {
                return Ok(None);
            }
            t.status = *to;
            t.status_justification.clone_from(justification);
            write_task(tasks, TaskDir::Received, &t).map(Some)
        }
        TaskEffect::UpdateSubmitted {
            task_id,
            from,
            patch,
            result,
        } => {
            let Some(t) = read_task(tasks, TaskDir::Submitted, task_id)? else {
                return Ok(None);
            };
            if t.to != *from || t.status.is_final() {
                return Ok(None);
            }
            if let Some((name, bytes)) = result {
                if !plain_name(name) {
                    return Err(io::Error::other(format!("bad result name {name:?}")));
                }
                let d = dir_of(tasks, TaskDir::Results);
                create_private_dir(&d)?;
                create_new(&d.join(name), bytes)?;
            }
            let mut v = serde_json::to_value(&t).map_err(io::Error::other)?;
            if let (Some(obj), Some(p)) = (v.as_object_mut(), patch.as_object()) {
                for (k, x) in p {
                    if k != "task_id" && k != "from" && k != "to" {
                        obj.insert(k.clone(), x.clone());
                    }
                }
            }
            let updated: TaskFile = serde_json::from_value(v).map_err(io::Error::other)?;
            write_task(tasks, TaskDir::Submitted, &updated).map(Some)
        }
    }
}

/// A task as the JSON `task list` shows.
pub fn summary(t: &TaskFile) -> Value {
    serde_json::json!({
        "category": "",
        "created_at": t.created_at,
        "description": t.task_description,
        "from": t.from,
        "status": t.status,
        "status_justification": t.status_justification,
        "task_id": t.task_id,
        "to": t.to,
        "results": t.results,
    })
}

/// Whether a status is one a queued task can have.
pub fn queued(s: Status) -> bool {
    matches!(s, Status::New | Status::Accepted | Status::Executing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pilot_proto::services::tasks::format_task_id;

    /// A deadline's expiry changes the received task only while it still
    /// has the status the deadline is about.
    #[test]
    fn an_expiry_applies_only_to_a_task_still_in_its_status() {
        let d = tempfile::tempdir().unwrap();
        let id = format_task_id([7; 16]);
        let mut t = TaskFile::new(
            &id,
            "x",
            "0:0000.0000.0001",
            "0:0000.0000.0002",
            "2026-01-01T00:00:00Z",
        );
        t.status = Status::Accepted;
        write_task(d.path(), TaskDir::Received, &t).unwrap();
        let expire = |when, to| TaskEffect::Expire {
            task_id: id.clone(),
            when,
            to,
            justification: "late".into(),
        };
        // The accept deadline passed, but the task was accepted in time.
        assert_eq!(
            apply(d.path(), &expire(Status::New, Status::Cancelled)).unwrap(),
            None
        );
        let back = read_task(d.path(), TaskDir::Received, &id)
            .unwrap()
            .unwrap();
        assert_eq!(back.status, Status::Accepted);
        // The execute deadline: still ACCEPTED, so EXPIRED.
        apply(d.path(), &expire(Status::Accepted, Status::Expired))
            .unwrap()
            .unwrap();
        let back = read_task(d.path(), TaskDir::Received, &id)
            .unwrap()
            .unwrap();
        assert_eq!(
            (back.status, back.status_justification.as_str()),
            (Status::Expired, "late")
        );
        // No such task: nothing.
        let other = TaskEffect::Expire {
            task_id: format_task_id([8; 16]),
            when: Status::New,
            to: Status::Cancelled,
            justification: String::new(),
        };
        assert_eq!(apply(d.path(), &other).unwrap(), None);
    }

    #[test]
    fn updates_touch_only_tasks_sent_to_that_peer_and_results_never_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let id = format_task_id([9; 16]);
        let t = TaskFile::new(
            &id,
            "x",
            "0:0000.0000.0001",
            "0:0000.0000.0002",
            "2026-01-01T00:00:00Z",
        );
        write_task(d.path(), TaskDir::Submitted, &t).unwrap();
        let upd = |from: &str, name: &str| TaskEffect::UpdateSubmitted {
            task_id: id.clone(),
            from: from.into(),
            patch: serde_json::json!({"status": "COMPLETED", "to": "evil"}),
            result: Some((name.into(), b"r".to_vec())),
        };
        // Someone else: nothing written.
        assert_eq!(
            apply(d.path(), &upd("0:0000.0000.0003", "a.txt")).unwrap(),
            None
        );
        assert!(!d.path().join("results/a.txt").exists());
        apply(d.path(), &upd("0:0000.0000.0002", "a.txt"))
            .unwrap()
            .unwrap();
        let back = read_task(d.path(), TaskDir::Submitted, &id)
            .unwrap()
            .unwrap();
        assert_eq!(back.status, Status::Completed);
        assert_eq!(back.to, "0:0000.0000.0002");
        assert_eq!(fs::read(d.path().join("results/a.txt")).unwrap(), b"r");
        // Final now: a second result is refused without writing.
        assert_eq!(
            apply(d.path(), &upd("0:0000.0000.0002", "b.txt")).unwrap(),
            None
        );
        assert!(!d.path().join("results/b.txt").exists());

        let create = TaskEffect::Create {
            dir: TaskDir::Received,
            name: format!("{id}.json"),
            bytes: t.to_json().into_bytes(),
        };
        apply(d.path(), &create).unwrap();
        assert!(apply(d.path(), &create).is_err(), "never overwritten");
        assert_eq!(list_tasks(d.path(), TaskDir::Received).len(), 1);
    }
}
