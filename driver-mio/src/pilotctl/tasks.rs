//! `pilotctl task …`, `enable-tasks` and `disable-tasks`: task submission
//! on port 1003 (`spec/services.md` §12). `submit` and `send-results` open
//! a stream to the peer's task service through the daemon; `accept`,
//! `decline`, `execute`, `list` and `queue` work on the task files in
//! `<dir>/tasks/` (accept and decline also tell the submitter, best
//! effort). Error codes: `invalid_state` (a transition the task's status
//! does not allow), `expired` (accepting after a minute), `not_found`,
//! `refused` (the peer answered 400).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, Subcommand};
use pilot_proto::addr::Addr;
use pilot_proto::services::tasks::{
    self, FrameType, SendResults, Status, StatusUpdate, SubmitRequest, SubmitResponse, TaskDir,
    TaskFile,
};
use pilot_proto::wire::ipc::{Flag, IpcMessage};
use serde_json::{Value, json};

use super::util::{CliError, CliResult, dial_error, parse_duration, resolve_target};
use crate::daemon::task_files::{self, list_tasks, read_task, summary, write_task};
use crate::ipc_client::IpcClient;

/// Largest result file `send-results --file` sends (the frame carries it
/// base64-encoded within 16 MiB).
pub const MAX_RESULT_FILE: u64 = 12 << 20;

/// `pilotctl task …`.
#[derive(Args, Debug)]
pub struct TaskArgs {
    #[command(subcommand)]
    command: TaskCmd,
    /// State directory [env: PILOT_HOME; default: ~/.pilot]
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum TaskCmd {
    /// Submit a task to a peer (it must have run `pilotctl enable-tasks`)
    Submit {
        /// Address, node id or hostname
        target: String,
        /// What to do
        #[arg(long)]
        task: String,
        /// Deadline
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Accept a received task (NEW, within a minute of its arrival)
    Accept {
        /// Task id
        #[arg(long)]
        id: String,
    },
    /// Decline a received task (NEW)
    Decline {
        /// Task id
        #[arg(long)]
        id: String,
        /// Why (sent to the submitter)
        #[arg(long)]
        justification: String,
    },
    /// Start the oldest ACCEPTED task: it becomes EXECUTING
    Execute,
    /// Send the results of an EXECUTING task to its submitter
    SendResults {
        /// Task id
        #[arg(long)]
        id: String,
        /// Text result
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        results: Option<String>,
        /// Result file (.txt .md .csv .pdf .png … ; at most 12 MiB)
        #[arg(long)]
        file: Option<PathBuf>,
        /// Deadline
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// List tasks (received, submitted, or both)
    List {
        /// received or submitted
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
    },
    /// Received tasks still to be done (NEW, ACCEPTED, EXECUTING), oldest
    /// first
    Queue,
}

/// Now as RFC 3339 UTC with second precision.
fn now_text() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Milliseconds from `since` (RFC 3339) to now; 0 if unparsable or ahead.
fn ms_since(since: &str) -> u64 {
    since
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| {
            let d = jiff::Timestamp::now().as_millisecond() - t.as_millisecond();
            u64::try_from(d).ok()
        })
        .unwrap_or(0)
}

fn io_err(e: std::io::Error) -> CliError {
    CliError::new("internal", e.to_string())
}

fn state_err(e: tasks::TransitionError) -> CliError {
    CliError::new(e.code(), e.to_string())
}

fn received(dir: &Path, id: &str) -> CliResult<TaskFile> {
    if !tasks::valid_task_id(id) {
        return Err(CliError::invalid(format!(
            "invalid task id {id:?} (8-4-4-4-12 hex digits)"
        )));
    }
    read_task(dir, TaskDir::Received, id)
        .map_err(io_err)?
        .ok_or_else(|| {
            CliError::new("not_found", format!("no received task {id}"))
                .hint("`pilotctl task list --type received` lists them")
        })
}

/// Opens a stream to `addr`'s task service and sends `frame`.
fn open_send(c: &IpcClient, addr: Addr, frame: &[u8], timeout: Duration) -> CliResult<u32> {
    let conn = c
        .dial_timeout(addr, tasks::PORT, timeout)
        .map_err(|e| match e {
            crate::ipc_client::IpcClientError::Daemon(m) => dial_error(addr, tasks::PORT, &m),
            other => CliError::ipc(other, "connection_failed"),
        })?;
    c.send(conn, frame)
        .map_err(|e| CliError::ipc(e, "connection_failed"))?;
    Ok(conn)
}

/// Reads one task frame (or end of stream: `None`).
fn read_frame(
    c: &IpcClient,
    conn: u32,
    timeout: Duration,
) -> CliResult<Option<(FrameType, Vec<u8>)>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = Vec::new();
    loop {
        match tasks::decode_frame(&buf) {
            Ok(Some((ty, p, _))) => return Ok(Some((ty, p.to_vec()))),
            Ok(None) => {}
            Err(e) => return Err(CliError::new("connection_failed", e.to_string())),
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match c.recv(conn, left) {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) => return Ok(None),
            Err(e) => return Err(CliError::ipc(e, "connection_failed")),
        }
    }
}

/// Waits for the peer to close the stream (its service handled the frame).
fn wait_closed(c: &IpcClient, conn: u32, timeout: Duration) -> CliResult<()> {
    match read_frame(c, conn, timeout)? {
        None => Ok(()),
        Some(_) => Ok(()),
    }
}

/// Tells the submitter of `t` about its new status (best effort).
fn notify(c: &IpcClient, t: &TaskFile) -> bool {
    let Ok(addr) = t.from.parse::<Addr>() else {
        return false;
    };
    let upd = StatusUpdate {
        task_id: t.task_id.clone(),
        status: t.status.as_str().to_owned(),
        justification: t.status_justification.clone(),
    };
    let Some(frame) = tasks::frame_of(FrameType::StatusUpdate, &upd) else {
        return false;
    };
    let timeout = Duration::from_secs(10);
    match open_send(c, addr, &frame, timeout) {
        Ok(conn) => {
            let ok = wait_closed(c, conn, timeout).is_ok();
            let _ = c.close(conn);
            ok
        }
        Err(_) => false,
    }
}

fn task_row(t: &TaskFile) -> Value {
    summary(t)
}

fn table(list: &[Value], empty: &str) -> String {
    super::util::table(
        list,
        &[
            ("TASK", "task_id"),
            ("STATUS", "status"),
            ("FROM", "from"),
            ("TO", "to"),
            ("CREATED", "created_at"),
            ("DESCRIPTION", "description"),
        ],
        empty,
    )
}

/// Runs a `task` sub-command.
pub fn run(args: TaskArgs, socket: &Path, quiet: bool) -> CliResult<(Value, Option<String>)> {
    let state = super::daemonctl::state_dir(args.dir.as_deref());
    let tdir = state.join("tasks");
    match args.command {
        TaskCmd::Submit {
            target,
            task,
            timeout,
        } => {
            if task.is_empty() || task.len() > tasks::MAX_DESCRIPTION {
                return Err(CliError::invalid(format!(
                    "--task: 1 to {} bytes",
                    tasks::MAX_DESCRIPTION
                )));
            }
            let mut c = IpcClient::connect(socket).map_err(|e| CliError::ipc(e, "internal"))?;
            c.set_timeout(timeout);
            let t = resolve_target(&c, &target, quiet)?;
            let own = c
                .info()
                .ok()
                .and_then(|i| i["address"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut rnd = [0u8; 16];
            getrandom::getrandom(&mut rnd)
                .map_err(|e| CliError::new("internal", format!("random task id: {e}")))?;
            let id = tasks::format_task_id(rnd);
            let req = SubmitRequest {
                task_id: id.clone(),
                task_description: task.clone(),
                from_addr: own.clone(),
                to_addr: t.addr.to_string(),
            };
            let frame = tasks::frame_of(FrameType::Submit, &req)
                .ok_or_else(|| CliError::invalid("task too large"))?;
            let conn = open_send(&c, t.addr, &frame, timeout)?;
            let reply = read_frame(&c, conn, timeout);
            let _ = c.close(conn);
            let resp: SubmitResponse = match reply? {
                Some((FrameType::Submit, p)) => serde_json::from_slice(&p).map_err(|e| {
                    CliError::new("connection_failed", format!("bad SUBMIT reply: {e}"))
                })?,
                _ => {
                    return Err(CliError::new(
                        "connection_failed",
                        format!("{} closed the task stream without an answer", t.addr),
                    ));
                }
            };
            let accepted = resp.status == 200;
            if accepted {
                let file = TaskFile::new(&id, &task, &own, &t.addr.to_string(), &now_text());
                write_task(&tdir, TaskDir::Submitted, &file).map_err(io_err)?;
            } else {
                return Err(CliError::new(
                    "refused",
                    format!("{} refused the task: {}", t.addr, resp.message),
                )
                .hint("the peer must run `pilotctl enable-tasks`"));
            }
            let v = json!({
                "accepted": accepted,
                "message": resp.message,
                "status": resp.status,
                "target": target,
                "task": task,
                "task_id": id,
            });
            let text = format!("task {id} accepted by {}", t.addr);
            Ok((v, Some(text)))
        }
        TaskCmd::Accept { id } => {
            let mut t = received(&tdir, &id)?;
            let age = ms_since(&t.created_at);
            tasks::accept(&mut t, &now_text(), age).map_err(state_err)?;
            write_task(&tdir, TaskDir::Received, &t).map_err(io_err)?;
            let notified = IpcClient::connect(socket).is_ok_and(|c| notify(&c, &t));
            Ok((
                json!({"notified": notified, "status": t.status, "task_id": id}),
                Some(format!("task {id} accepted")),
            ))
        }
        TaskCmd::Decline { id, justification } => {
            let mut t = received(&tdir, &id)?;
            tasks::decline(&mut t, &justification).map_err(state_err)?;
            write_task(&tdir, TaskDir::Received, &t).map_err(io_err)?;
            let notified = IpcClient::connect(socket).is_ok_and(|c| notify(&c, &t));
            Ok((
                json!({"notified": notified, "status": t.status, "task_id": id}),
                Some(format!("task {id} declined")),
            ))
        }
        TaskCmd::Execute => {
            let Some(mut t) = list_tasks(&tdir, TaskDir::Received)
                .into_iter()
                .find(|t| t.status == Status::Accepted)
            else {
                return Err(
                    CliError::new("not_found", "no ACCEPTED task to execute").hint(
                        "`pilotctl task accept --id <id>` first; `pilotctl task queue` lists them",
                    ),
                );
            };
            let staged = ms_since(&t.accepted_at);
            tasks::execute(&mut t, &now_text(), staged).map_err(state_err)?;
            write_task(&tdir, TaskDir::Received, &t).map_err(io_err)?;
            let mut v = task_row(&t);
            v["task_description"] = json!(t.task_description);
            Ok((
                v,
                Some(format!("executing {}: {}", t.task_id, t.task_description)),
            ))
        }
        TaskCmd::SendResults {
            id,
            results,
            file,
            timeout,
        } => {
            let mut t = received(&tdir, &id)?;
            let cpu = ms_since(&t.execute_started_at);
            let addr: Addr = t.from.parse().map_err(|_| {
                CliError::new("internal", format!("task {id}: bad from {:?}", t.from))
            })?;
            let mut done = t.clone();
            let mut msg: SendResults =
                tasks::succeed(&mut done, &now_text(), cpu).map_err(state_err)?;
            match (&results, &file) {
                (Some(text), _) => {
                    msg.result_type = "text".into();
                    msg.result_text = text.clone();
                }
                (None, Some(path)) => {
                    let name = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                        .to_owned();
                    if !tasks::valid_result_name(&name) {
                        return Err(CliError::invalid(format!(
                            "result file {name:?}: allowed extensions are {}",
                            tasks::RESULT_EXTENSIONS.join(" ")
                        )));
                    }
                    let meta = std::fs::metadata(path)
                        .map_err(|e| CliError::invalid(format!("{}: {e}", path.display())))?;
                    if meta.len() > MAX_RESULT_FILE {
                        return Err(CliError::invalid(format!(
                            "{}: larger than {MAX_RESULT_FILE} bytes",
                            path.display()
                        )));
                    }
                    let data = std::fs::read(path)
                        .map_err(|e| CliError::invalid(format!("{}: {e}", path.display())))?;
                    msg.result_type = "file".into();
                    msg.filename = name;
                    msg.file_data = base64::engine::general_purpose::STANDARD.encode(data);
                }
                (None, None) => return Err(CliError::invalid("--results or --file is required")),
            }
            let frame = tasks::frame_of(FrameType::SendResults, &msg)
                .ok_or_else(|| CliError::invalid("results too large"))?;
            let mut c = IpcClient::connect(socket).map_err(|e| CliError::ipc(e, "internal"))?;
            c.set_timeout(timeout);
            let conn = open_send(&c, addr, &frame, timeout)?;
            let closed = wait_closed(&c, conn, timeout);
            let _ = c.close(conn);
            closed?;
            t = done;
            write_task(&tdir, TaskDir::Received, &t).map_err(io_err)?;
            Ok((
                json!({
                    "result_type": msg.result_type,
                    "reward": tasks::reward(t.time_idle_ms, t.time_staged_ms, t.time_cpu_ms),
                    "status": t.status,
                    "task_id": id,
                    "to": t.from,
                }),
                Some(format!("results of {id} sent to {}", t.from)),
            ))
        }
        TaskCmd::List { kind } => {
            let dirs: Vec<TaskDir> = match kind.as_deref() {
                None => vec![TaskDir::Received, TaskDir::Submitted],
                Some("received") => vec![TaskDir::Received],
                Some("submitted") => vec![TaskDir::Submitted],
                Some(other) => {
                    return Err(CliError::invalid(format!(
                        "--type {other:?}: received or submitted"
                    )));
                }
            };
            let list: Vec<Value> = dirs
                .into_iter()
                .flat_map(|d| {
                    list_tasks(&tdir, d).into_iter().map(move |t| {
                        let mut v = task_row(&t);
                        v["type"] = json!(d.name());
                        v
                    })
                })
                .collect();
            let text = table(&list, "no tasks");
            Ok((json!({"tasks": list}), Some(text)))
        }
        TaskCmd::Queue => {
            let list: Vec<Value> = list_tasks(&tdir, TaskDir::Received)
                .iter()
                .filter(|t| task_files::queued(t.status))
                .map(task_row)
                .collect();
            let text = table(&list, "the queue is empty");
            Ok((json!({"count": list.len(), "queue": list}), Some(text)))
        }
    }
}

/// `enable-tasks` / `disable-tasks`: the daemon's `SetTaskExec`.
pub fn set_exec(socket: &Path, enable: bool) -> CliResult<Value> {
    let c = IpcClient::connect(socket).map_err(|e| CliError::ipc(e, "internal"))?;
    let body = c
        .request_raw(
            &IpcMessage::SetTaskExec(Flag(u8::from(enable))),
            c.timeout(),
        )
        .map_err(|e| CliError::ipc(e, "internal"))?;
    match IpcMessage::decode(&body) {
        Ok(IpcMessage::SetTaskExecOk(j)) => serde_json::from_str(j)
            .map_err(|e| CliError::new("internal", format!("set_task_exec reply: {e}"))),
        _ => Err(CliError::new(
            "internal",
            "unexpected reply to set_task_exec",
        )),
    }
}
