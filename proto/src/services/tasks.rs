//! Task submission on port 1003 (`spec/services.md` §12): the frame codec
//! (`[u32 type][u32 length][JSON]`), the messages, the task file document
//! of `tasks/{submitted,received}/<id>.json`, the status transitions the
//! CLI drives, the reward formula, and the receiving side's decision for
//! one inbound frame ([`receive`]) as a reply plus file effects for the
//! daemon to carry out.
//!
//! Sans-IO: wall-clock times come in as RFC 3339 strings
//! and millisecond counts chosen by the caller; task ids are formatted from
//! caller-supplied random bytes. Differences from v1.8, on purpose: the
//! submitter recorded in a received task is the stream's authenticated
//! remote node, not the unverified `from_addr` of the request; tasks are
//! accepted only while the receiver has task execution enabled and its
//! queue has room (no registry "polo score" gate, whose updates v1.8 sent
//! unauthenticated); a `STATUS_UPDATE` or `SEND_RESULTS` changes a
//! submitted task only when it comes from the node the task was sent to.

use core::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Instant;

/// The service's port.
pub const PORT: u16 = 1003;
/// Header bytes: type and length.
pub const HEADER_LEN: usize = 8;
/// Largest JSON payload (`spec/services.md` §12.1).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Longest task description, bytes.
pub const MAX_DESCRIPTION: usize = 64 << 10;
/// Longest justification, bytes.
pub const MAX_JUSTIFICATION: usize = 4 << 10;
/// A NEW task may be accepted within this long of its creation, ms.
pub const ACCEPT_WINDOW_MS: u64 = 60_000;
/// Result-file extensions the sender allows (`spec/services.md` §12.3).
pub const RESULT_EXTENSIONS: &[&str] = &[
    "md",
    "txt",
    "rtf",
    "docx",
    "pdf",
    "pptx",
    "pth",
    "pt",
    "onnx",
    "h5",
    "pb",
    "ckpt",
    "safetensors",
    "bin",
    "csv",
    "parquet",
    "xlsx",
    "xls",
    "jpg",
    "jpeg",
    "png",
    "svg",
    "gif",
    "webp",
];

/// Frame types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum FrameType {
    /// A submission, and its answer.
    Submit = 1,
    /// Legacy result frame (never sent; ignored when received).
    Result = 2,
    /// A status change of a submitted task.
    StatusUpdate = 3,
    /// The results of a task.
    SendResults = 4,
}

impl FrameType {
    /// The type for `v`, if known.
    pub const fn from_u32(v: u32) -> Option<FrameType> {
        match v {
            1 => Some(FrameType::Submit),
            2 => Some(FrameType::Result),
            3 => Some(FrameType::StatusUpdate),
            4 => Some(FrameType::SendResults),
            _ => None,
        }
    }
}

/// Why bytes are not a task frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Unknown type number.
    #[error("unknown task frame type {0}")]
    UnknownType(u32),
    /// Length beyond [`MAX_PAYLOAD`].
    #[error("task frame of {0} bytes exceeds {MAX_PAYLOAD}")]
    TooLong(u32),
}

/// A decoded frame: its type, its payload and the bytes it used.
pub type Decoded<'a> = (FrameType, &'a [u8], usize);

/// One frame at the start of `buf`: `Ok(None)` until it is complete; then
/// its type, payload and the bytes it used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<Decoded<'_>>, FrameError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let t = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let ty = FrameType::from_u32(t).ok_or(FrameError::UnknownType(t))?;
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    let end = HEADER_LEN + len as usize;
    Ok(buf.get(HEADER_LEN..end).map(|payload| (ty, payload, end)))
}

/// A frame of type `ty` around `payload`; `None` beyond [`MAX_PAYLOAD`].
pub fn encode_frame(ty: FrameType, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&(ty as u32).to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    Some(v)
}

/// A message as a frame of its type.
pub fn frame_of<T: Serialize>(ty: FrameType, msg: &T) -> Option<Vec<u8>> {
    encode_frame(ty, &serde_json::to_vec(msg).ok()?)
}

/// `SUBMIT` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// Task id (8-4-4-4-12 hex).
    pub task_id: String,
    /// What to do.
    pub task_description: String,
    /// Submitter's address as it claims (not trusted by the receiver).
    #[serde(default)]
    pub from_addr: String,
    /// Receiver's address.
    #[serde(default)]
    pub to_addr: String,
}

/// `SUBMIT` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The task.
    pub task_id: String,
    /// 200 accepted, 400 refused.
    pub status: u16,
    /// Why.
    pub message: String,
}

/// `STATUS_UPDATE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// The task.
    pub task_id: String,
    /// New status name.
    pub status: String,
    /// Why.
    #[serde(default)]
    pub justification: String,
}

/// `SEND_RESULTS`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResults {
    /// The task.
    pub task_id: String,
    /// `text` or `file`.
    pub result_type: String,
    /// Text result.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result_text: String,
    /// File name of a file result.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filename: String,
    /// Base64 file content.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file_data: String,
    /// RFC 3339 completion time.
    pub completed_at: String,
    /// Time between creation and acceptance, ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub time_idle_ms: u64,
    /// Time between acceptance and execution, ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub time_staged_ms: u64,
    /// Time executing, ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub time_cpu_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Task statuses (`spec/services.md` §12.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Received, not yet accepted.
    New,
    /// Accepted by the receiver.
    Accepted,
    /// Declined by the receiver.
    Declined,
    /// Being executed.
    Executing,
    /// Results received (submitter's copy).
    Completed,
    /// Results sent (receiver's copy).
    Succeeded,
    /// Not accepted in time.
    Cancelled,
    /// Waited too long in the queue.
    Expired,
}

impl Status {
    /// The name in files and frames.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::New => "NEW",
            Status::Accepted => "ACCEPTED",
            Status::Declined => "DECLINED",
            Status::Executing => "EXECUTING",
            Status::Completed => "COMPLETED",
            Status::Succeeded => "SUCCEEDED",
            Status::Cancelled => "CANCELLED",
            Status::Expired => "EXPIRED",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Status> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    /// Whether no further transition is possible.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            Status::Declined
                | Status::Completed
                | Status::Succeeded
                | Status::Cancelled
                | Status::Expired
        )
    }
}

/// The task file (`tasks/{submitted,received}/<id>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    /// The task.
    pub task_id: String,
    /// What to do.
    pub task_description: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Current status.
    pub status: Status,
    /// Why it has that status.
    #[serde(default)]
    pub status_justification: String,
    /// Submitter's address.
    pub from: String,
    /// Receiver's address.
    pub to: String,
    /// RFC 3339 times of the transitions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub accepted_at: String,
    /// When execution was staged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub staged_at: String,
    /// When execution started.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub execute_started_at: String,
    /// When it completed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub completed_at: String,
    /// Creation → acceptance, ms.
    #[serde(default)]
    pub time_idle_ms: u64,
    /// Acceptance → execution, ms.
    #[serde(default)]
    pub time_staged_ms: u64,
    /// Execution, ms.
    #[serde(default)]
    pub time_cpu_ms: u64,
    /// `text` or `file`, once results exist.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result_type: String,
    /// Where the results were saved (submitter's copy).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub results: String,
}

impl TaskFile {
    /// A new task (status `NEW`).
    pub fn new(task_id: &str, description: &str, from: &str, to: &str, now: &str) -> TaskFile {
        TaskFile {
            task_id: task_id.to_owned(),
            task_description: description.to_owned(),
            created_at: now.to_owned(),
            status: Status::New,
            status_justification: "A new task was created".to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            accepted_at: String::new(),
            staged_at: String::new(),
            execute_started_at: String::new(),
            completed_at: String::new(),
            time_idle_ms: 0,
            time_staged_ms: 0,
            time_cpu_ms: 0,
            result_type: String::new(),
            results: String::new(),
        }
    }

    /// The 2-space indented document.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Why a CLI transition is refused (code `invalid_state` or `expired`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The task is not in a status that allows it.
    #[error("task {id} is {status}, not {wanted}")]
    State {
        /// The task.
        id: String,
        /// Its status.
        status: &'static str,
        /// The status the transition needs.
        wanted: &'static str,
    },
    /// A NEW task older than [`ACCEPT_WINDOW_MS`].
    #[error("task {0} was created more than a minute ago and can no longer be accepted")]
    Expired(String),
}

impl TransitionError {
    /// The CLI's error code.
    pub const fn code(&self) -> &'static str {
        match self {
            TransitionError::State { .. } => "invalid_state",
            TransitionError::Expired(_) => "expired",
        }
    }
}

fn need(t: &TaskFile, wanted: Status) -> Result<(), TransitionError> {
    if t.status == wanted {
        Ok(())
    } else {
        Err(TransitionError::State {
            id: t.task_id.clone(),
            status: t.status.as_str(),
            wanted: wanted.as_str(),
        })
    }
}

/// `task accept`: NEW → ACCEPTED within a minute of creation;
/// `age_ms` = now − created_at.
pub fn accept(t: &mut TaskFile, now: &str, age_ms: u64) -> Result<(), TransitionError> {
    need(t, Status::New)?;
    if age_ms > ACCEPT_WINDOW_MS {
        return Err(TransitionError::Expired(t.task_id.clone()));
    }
    t.status = Status::Accepted;
    t.status_justification = "The task was accepted".to_owned();
    t.accepted_at = now.to_owned();
    t.time_idle_ms = age_ms;
    Ok(())
}

/// `task decline`: NEW → DECLINED.
pub fn decline(t: &mut TaskFile, justification: &str) -> Result<(), TransitionError> {
    need(t, Status::New)?;
    t.status = Status::Declined;
    t.status_justification = justification.chars().take(MAX_JUSTIFICATION).collect();
    Ok(())
}

/// `task execute`: ACCEPTED → EXECUTING; `staged_ms` = now − accepted_at.
pub fn execute(t: &mut TaskFile, now: &str, staged_ms: u64) -> Result<(), TransitionError> {
    need(t, Status::Accepted)?;
    t.status = Status::Executing;
    t.status_justification = "The task is being executed".to_owned();
    t.staged_at = now.to_owned();
    t.execute_started_at = now.to_owned();
    t.time_staged_ms = staged_ms;
    Ok(())
}

/// `task send-results`: EXECUTING → SUCCEEDED; `cpu_ms` = now −
/// execute_started_at. Returns the `SEND_RESULTS` message (without the
/// result itself, which the caller fills in).
pub fn succeed(t: &mut TaskFile, now: &str, cpu_ms: u64) -> Result<SendResults, TransitionError> {
    need(t, Status::Executing)?;
    t.status = Status::Succeeded;
    t.status_justification = "Results were sent".to_owned();
    t.completed_at = now.to_owned();
    t.time_cpu_ms = cpu_ms;
    Ok(SendResults {
        task_id: t.task_id.clone(),
        completed_at: now.to_owned(),
        time_idle_ms: t.time_idle_ms,
        time_staged_ms: t.time_staged_ms,
        time_cpu_ms: cpu_ms,
        ..SendResults::default()
    })
}

/// The receiver's reward for a task (`spec/services.md` §12.4).
pub fn reward(time_idle_ms: u64, time_staged_ms: u64, time_cpu_ms: u64) -> u32 {
    let cpu_min = time_cpu_ms as f64 / 60_000.0;
    let idle_f = (time_idle_ms as f64 / 1000.0 / 60.0 * 0.3).clamp(0.0, 0.3);
    let staged_f = (time_staged_ms as f64 / 1000.0 / 600.0 * 0.3).clamp(0.0, 0.3);
    let mult = (1.0 - idle_f - staged_f).max(0.4);
    let r = ((1.0 + (1.0 + cpu_min).log2()) * mult + 0.5).floor();
    if r.is_finite() && r >= 1.0 {
        r.min(f64::from(u32::MAX)) as u32
    } else {
        1
    }
}

/// A task id from 16 random bytes: 32 hex digits as 8-4-4-4-12.
pub fn format_task_id(b: [u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether `id` is a task id (8-4-4-4-12 hex digits): safe as a file name.
pub fn valid_task_id(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// A result file name that is safe to create: no directory part, no
/// control characters, at most 128 bytes, an allowed extension.
pub fn valid_result_name(name: &str) -> bool {
    let ext_ok = name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty() && RESULT_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
    });
    ext_ok
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

/// Which task directory an effect is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskDir {
    /// `tasks/received/`.
    Received,
    /// `tasks/submitted/`.
    Submitted,
    /// `tasks/results/`.
    Results,
}

impl TaskDir {
    /// The directory name under `tasks/`.
    pub const fn name(self) -> &'static str {
        match self {
            TaskDir::Received => "received",
            TaskDir::Submitted => "submitted",
            TaskDir::Results => "results",
        }
    }
}

/// File work for the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEffect {
    /// Create `tasks/<dir>/<name>` with `bytes` (never overwriting).
    Create {
        /// Directory.
        dir: TaskDir,
        /// File name (validated).
        name: String,
        /// Content.
        bytes: Vec<u8>,
    },
    /// In `tasks/submitted/<task_id>.json`, if it exists, is not final
    /// and its `to` is `from`: first create `tasks/results/<name>` from
    /// `result` (if any), then set these fields (a JSON object) and save
    /// it. Otherwise nothing is written.
    UpdateSubmitted {
        /// The task.
        task_id: String,
        /// Who must be its receiver.
        from: String,
        /// Fields to set.
        patch: serde_json::Value,
        /// Result file `(name, bytes)` to create first.
        result: Option<(String, Vec<u8>)>,
    },
    /// A deadline of a received task passed ([`TaskTimers`]): in
    /// `tasks/received/<task_id>.json`, if it exists and its status is
    /// still `when`, set `status` to `to` and `status_justification` to
    /// `justification`, and save it. Otherwise nothing is written (the
    /// task moved on in time).
    Expire {
        /// The task.
        task_id: String,
        /// The status it must still have.
        when: Status,
        /// The status it gets.
        to: Status,
        /// Why.
        justification: String,
    },
}

/// A received task not accepted this long after its receipt is
/// `CANCELLED` (v1.8: one minute).
pub const ACCEPT_DEADLINE: Duration = Duration::from_millis(ACCEPT_WINDOW_MS);
/// A received task accepted but not executed this long after its receipt
/// is `EXPIRED` (v1.8: an hour at the head of the queue).
pub const EXECUTE_DEADLINE: Duration = Duration::from_secs(3600);
/// A received task executing but without results this long after its
/// receipt is `EXPIRED` (ours; v1.8 waits for ever).
pub const RESULT_DEADLINE: Duration = Duration::from_secs(24 * 3600);
/// Received tasks whose deadlines are kept at most; beyond, the one with
/// the nearest deadline is dropped (and counted).
pub const MAX_TIMED_TASKS: usize = 8192;

/// The deadline stages of a received task, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Accept,
    Execute,
    Result,
}

impl Stage {
    const fn after(self) -> Duration {
        match self {
            Stage::Accept => ACCEPT_DEADLINE,
            Stage::Execute => EXECUTE_DEADLINE,
            Stage::Result => RESULT_DEADLINE,
        }
    }

    const fn next(self) -> Option<Stage> {
        match self {
            Stage::Accept => Some(Stage::Execute),
            Stage::Execute => Some(Stage::Result),
            Stage::Result => None,
        }
    }

    /// The expiry this stage's deadline makes.
    fn effect(self, task_id: &str) -> TaskEffect {
        let (when, to, why) = match self {
            Stage::Accept => (
                Status::New,
                Status::Cancelled,
                "Task was not accepted within 1 minute of its receipt",
            ),
            Stage::Execute => (
                Status::Accepted,
                Status::Expired,
                "Task was not executed within 1 hour of its receipt",
            ),
            Stage::Result => (
                Status::Executing,
                Status::Expired,
                "Task sent no results within 24 hours of its receipt",
            ),
        };
        TaskEffect::Expire {
            task_id: task_id.to_owned(),
            when,
            to,
            justification: why.to_owned(),
        }
    }
}

/// The deadlines of received tasks (`spec/services.md` §12.6), in
/// virtual time: every task taken in gets the accept, execute and result
/// deadlines, counted from its receipt; each makes one conditional
/// [`TaskEffect::Expire`] (the task files are changed by `pilotctl`, so
/// only the file says whether the task moved on). Bounded by
/// [`MAX_TIMED_TASKS`].
#[derive(Debug, Default)]
pub struct TaskTimers {
    /// (deadline, order of receipt) → (task id, stage, receipt).
    due: std::collections::BTreeMap<(Instant, u64), (String, Stage, Instant)>,
    seq: u64,
    /// Tasks whose deadlines were dropped because the table was full.
    pub dropped: u64,
}

impl TaskTimers {
    /// Starts the deadlines of task `id`, received at `now`.
    pub fn add(&mut self, now: Instant, id: &str) {
        if self.due.len() >= MAX_TIMED_TASKS {
            self.due.pop_first();
            self.dropped += 1;
        }
        self.insert(now, id.to_owned(), Stage::Accept);
    }

    fn insert(&mut self, received: Instant, id: String, stage: Stage) {
        self.seq += 1;
        self.due.insert(
            (received.saturating_add(stage.after()), self.seq),
            (id, stage, received),
        );
    }

    /// The nearest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.keys().next().map(|(t, _)| *t)
    }

    /// Tasks whose deadlines are kept.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether no deadline is kept.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    /// The expiries due at `now`, in deadline order; each task moves on to
    /// its next deadline.
    pub fn due(&mut self, now: Instant) -> Vec<TaskEffect> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (id, stage, received) = entry.remove();
            out.push(stage.effect(&id));
            if let Some(next) = stage.next() {
                self.insert(received, id, next);
            }
        }
        out
    }
}

/// What the receiving side does with one inbound frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Frame to write back before closing, if any.
    pub reply: Option<Vec<u8>>,
    /// Files to write.
    pub effects: Vec<TaskEffect>,
    /// A task accepted into the queue (its id).
    pub queued: Option<String>,
}

/// The receiver's state for [`receive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receiver<'a> {
    /// Whether task execution is enabled.
    pub enabled: bool,
    /// Tasks waiting in the queue now.
    pub queued: usize,
    /// Most tasks kept waiting.
    pub queue_limit: usize,
    /// Own address text.
    pub own: &'a str,
    /// The stream's authenticated remote address text.
    pub from: &'a str,
    /// Now, RFC 3339.
    pub now: &'a str,
}

fn refuse(task_id: &str, message: &str) -> Outcome {
    let resp = SubmitResponse {
        task_id: task_id.to_owned(),
        status: 400,
        message: message.to_owned(),
    };
    Outcome {
        reply: frame_of(FrameType::Submit, &resp),
        ..Outcome::default()
    }
}

/// Handles one inbound frame (the service reads one per stream).
pub fn receive(rx: &Receiver<'_>, ty: FrameType, payload: &[u8]) -> Outcome {
    match ty {
        FrameType::Submit => {
            let Ok(req) = serde_json::from_slice::<SubmitRequest>(payload) else {
                return refuse("", "malformed SUBMIT");
            };
            if !valid_task_id(&req.task_id) {
                return refuse(&req.task_id, "invalid task id");
            }
            if req.task_description.is_empty() || req.task_description.len() > MAX_DESCRIPTION {
                return refuse(&req.task_id, "task description empty or too long");
            }
            if !rx.enabled {
                return refuse(&req.task_id, "task execution is disabled on this node");
            }
            if rx.queued >= rx.queue_limit {
                return refuse(&req.task_id, "task queue is full");
            }
            let file = TaskFile::new(&req.task_id, &req.task_description, rx.from, rx.own, rx.now);
            let resp = SubmitResponse {
                task_id: req.task_id.clone(),
                status: 200,
                message: "Task received with status NEW".to_owned(),
            };
            Outcome {
                reply: frame_of(FrameType::Submit, &resp),
                effects: vec![TaskEffect::Create {
                    dir: TaskDir::Received,
                    name: format!("{}.json", req.task_id),
                    bytes: file.to_json().into_bytes(),
                }],
                queued: Some(req.task_id),
            }
        }
        FrameType::StatusUpdate => {
            let Ok(u) = serde_json::from_slice::<StatusUpdate>(payload) else {
                return Outcome::default();
            };
            let Some(status) = Status::parse(&u.status) else {
                return Outcome::default();
            };
            if !valid_task_id(&u.task_id) {
                return Outcome::default();
            }
            let just: String = u.justification.chars().take(MAX_JUSTIFICATION).collect();
            Outcome {
                effects: vec![TaskEffect::UpdateSubmitted {
                    task_id: u.task_id,
                    from: rx.from.to_owned(),
                    patch: serde_json::json!({"status": status, "status_justification": just}),
                    result: None,
                }],
                ..Outcome::default()
            }
        }
        FrameType::SendResults => {
            let Ok(r) = serde_json::from_slice::<SendResults>(payload) else {
                return Outcome::default();
            };
            if !valid_task_id(&r.task_id) {
                return Outcome::default();
            }
            let (name, bytes) = match r.result_type.as_str() {
                "file" => {
                    if !valid_result_name(&r.filename) {
                        return Outcome::default();
                    }
                    use base64::Engine as _;
                    let Ok(data) = base64::engine::general_purpose::STANDARD.decode(&r.file_data)
                    else {
                        return Outcome::default();
                    };
                    (format!("{}_{}", r.task_id, r.filename), data)
                }
                "text" => (
                    format!("{}_result.txt", r.task_id),
                    r.result_text.into_bytes(),
                ),
                _ => return Outcome::default(),
            };
            Outcome {
                effects: vec![TaskEffect::UpdateSubmitted {
                    task_id: r.task_id,
                    from: rx.from.to_owned(),
                    patch: serde_json::json!({
                        "status": Status::Completed,
                        "status_justification": "Results received",
                        "completed_at": r.completed_at,
                        "time_idle_ms": r.time_idle_ms,
                        "time_staged_ms": r.time_staged_ms,
                        "time_cpu_ms": r.time_cpu_ms,
                        "result_type": r.result_type,
                        "results": name,
                    }),
                    result: Some((name, bytes)),
                }],
                ..Outcome::default()
            }
        }
        FrameType::Result => Outcome::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deadlines in virtual time: a task still NEW after a minute is
    /// cancelled, one still ACCEPTED after an hour or EXECUTING after a day
    /// expires; each expiry is conditional on the status, so one file
    /// effect per stage, in order, and nothing after the last.
    #[test]
    fn received_tasks_expire_at_their_deadlines() {
        let t0 = Instant::ZERO + Duration::from_secs(5);
        let mut timers = TaskTimers::default();
        timers.add(t0, "a");
        timers.add(t0 + Duration::from_secs(30), "b");
        assert_eq!(timers.poll_timeout(), Some(t0 + ACCEPT_DEADLINE));
        assert!(
            timers
                .due((t0 + ACCEPT_DEADLINE).saturating_sub(Duration::from_millis(1)))
                .is_empty()
        );
        let stage = |e: &TaskEffect| match e {
            TaskEffect::Expire {
                task_id, when, to, ..
            } => (task_id.clone(), *when, *to),
            other => panic!("{other:?}"),
        };
        let fx: Vec<_> = timers.due(t0 + ACCEPT_DEADLINE).iter().map(stage).collect();
        assert_eq!(fx, [("a".to_owned(), Status::New, Status::Cancelled)]);
        let fx: Vec<_> = timers
            .due(t0 + Duration::from_secs(90))
            .iter()
            .map(stage)
            .collect();
        assert_eq!(fx, [("b".to_owned(), Status::New, Status::Cancelled)]);
        assert_eq!(timers.poll_timeout(), Some(t0 + EXECUTE_DEADLINE));
        let fx: Vec<_> = timers
            .due(t0 + EXECUTE_DEADLINE)
            .iter()
            .map(stage)
            .collect();
        assert_eq!(fx, [("a".to_owned(), Status::Accepted, Status::Expired)]);
        // A late call makes every missed deadline, in order.
        let fx: Vec<_> = timers
            .due(t0 + RESULT_DEADLINE + Duration::from_secs(60))
            .iter()
            .map(stage)
            .collect();
        assert_eq!(
            fx,
            [
                ("b".to_owned(), Status::Accepted, Status::Expired),
                ("a".to_owned(), Status::Executing, Status::Expired),
                ("b".to_owned(), Status::Executing, Status::Expired),
            ]
        );
        assert!(timers.is_empty() && timers.poll_timeout().is_none());
    }

    #[test]
    fn the_deadline_table_is_bounded() {
        let mut timers = TaskTimers::default();
        for i in 0..MAX_TIMED_TASKS + 3 {
            timers.add(
                Instant::ZERO + Duration::from_secs(i as u64),
                &i.to_string(),
            );
        }
        assert_eq!(timers.len(), MAX_TIMED_TASKS);
        assert_eq!(timers.dropped, 3);
    }

    #[test]
    fn reward_test_vectors() {
        // spec/services.md §10.4 (the third is 3 by the formula; the
        // reference's source comment claims 2).
        assert_eq!(reward(0, 0, 60_000), 2);
        assert_eq!(reward(0, 0, 600_000), 4);
        assert_eq!(reward(30_000, 300_000, 600_000), 3);
        assert_eq!(reward(0, 0, 1_800_000), 6);
        assert_eq!(reward(0, 0, 0), 1);
        // Long waits floor the multiplier at 0.4, never below 1 overall.
        assert_eq!(reward(u64::MAX, u64::MAX, 0), 1);
        assert!(reward(0, 0, u64::MAX) > 6);
    }

    #[test]
    fn frames_round_trip_split_anywhere_and_refuse_bad_headers() {
        let f = frame_of(
            FrameType::Submit,
            &SubmitRequest {
                task_id: format_task_id([0xab; 16]),
                task_description: "sum".into(),
                from_addr: "0:0000.0000.0001".into(),
                to_addr: "0:0000.0000.0002".into(),
            },
        )
        .unwrap();
        for cut in 0..f.len() {
            assert_eq!(decode_frame(&f[..cut]).unwrap(), None);
        }
        let (ty, payload, used) = decode_frame(&f).unwrap().unwrap();
        assert_eq!((ty, used), (FrameType::Submit, f.len()));
        let req: SubmitRequest = serde_json::from_slice(payload).unwrap();
        assert_eq!(req.task_id, "abababab-abab-abab-abab-abababababab");
        assert!(valid_task_id(&req.task_id));
        let mut bad = f.clone();
        bad[3] = 9;
        assert_eq!(decode_frame(&bad), Err(FrameError::UnknownType(9)));
        let mut big = f;
        big[4..8].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(matches!(decode_frame(&big), Err(FrameError::TooLong(_))));
    }

    fn rx<'a>(enabled: bool, queued: usize) -> Receiver<'a> {
        Receiver {
            enabled,
            queued,
            queue_limit: 2,
            own: "0:0000.0000.0002",
            from: "0:0000.0000.0001",
            now: "2026-01-01T00:00:00Z",
        }
    }

    fn reply(o: &Outcome) -> SubmitResponse {
        let f = o.reply.as_ref().expect("a reply");
        let (ty, p, _) = decode_frame(f).unwrap().unwrap();
        assert_eq!(ty, FrameType::Submit);
        serde_json::from_slice(p).unwrap()
    }

    #[test]
    fn submit_is_accepted_only_when_enabled_with_room_and_records_the_real_sender() {
        let id = format_task_id([1; 16]);
        let req = serde_json::to_vec(&SubmitRequest {
            task_id: id.clone(),
            task_description: "do it".into(),
            from_addr: "0:0000.0000.0099".into(), // a lie
            to_addr: String::new(),
        })
        .unwrap();
        let o = receive(&rx(true, 0), FrameType::Submit, &req);
        assert_eq!(reply(&o).status, 200);
        assert_eq!(o.queued.as_deref(), Some(id.as_str()));
        let TaskEffect::Create { dir, name, bytes } = &o.effects[0] else {
            panic!("{o:?}")
        };
        assert_eq!(
            (*dir, name.as_str()),
            (TaskDir::Received, format!("{id}.json").as_str())
        );
        let t: TaskFile = serde_json::from_slice(bytes).unwrap();
        assert_eq!(t.from, "0:0000.0000.0001");
        assert_eq!(t.status, Status::New);

        let off = receive(&rx(false, 0), FrameType::Submit, &req);
        assert_eq!(reply(&off).status, 400);
        assert!(off.effects.is_empty());
        assert_eq!(
            reply(&receive(&rx(true, 2), FrameType::Submit, &req)).status,
            400
        );
        let bad_id = br#"{"task_id":"../../etc","task_description":"x"}"#;
        assert_eq!(
            reply(&receive(&rx(true, 0), FrameType::Submit, bad_id)).status,
            400
        );
        assert_eq!(
            reply(&receive(&rx(true, 0), FrameType::Submit, b"[")).status,
            400
        );
    }

    #[test]
    fn results_land_in_results_and_complete_only_the_senders_task() {
        use base64::Engine as _;
        let id = format_task_id([2; 16]);
        let msg = SendResults {
            task_id: id.clone(),
            result_type: "file".into(),
            filename: "out.csv".into(),
            file_data: base64::engine::general_purpose::STANDARD.encode(b"a,b"),
            completed_at: "2026-01-01T00:01:00Z".into(),
            time_cpu_ms: 5,
            ..SendResults::default()
        };
        let o = receive(
            &rx(true, 0),
            FrameType::SendResults,
            &serde_json::to_vec(&msg).unwrap(),
        );
        assert_eq!(o.reply, None);
        let TaskEffect::UpdateSubmitted {
            from,
            patch,
            result,
            ..
        } = &o.effects[0]
        else {
            panic!()
        };
        assert_eq!(result, &Some((format!("{id}_out.csv"), b"a,b".to_vec())));
        assert_eq!(from, "0:0000.0000.0001");
        assert_eq!(patch["status"], "COMPLETED");
        // A path in the file name or a forbidden extension: nothing written.
        for name in ["../x.csv", "x.sh", ".csv"] {
            let m = SendResults {
                filename: name.into(),
                ..msg.clone()
            };
            let o = receive(
                &rx(true, 0),
                FrameType::SendResults,
                &serde_json::to_vec(&m).unwrap(),
            );
            assert!(o.effects.is_empty(), "{name}");
        }
    }

    #[test]
    fn cli_transitions_follow_the_status_machine() {
        let id = format_task_id([3; 16]);
        let mut t = TaskFile::new(&id, "x", "a", "b", "2026-01-01T00:00:00Z");
        assert_eq!(
            accept(&mut t.clone(), "later", ACCEPT_WINDOW_MS + 1)
                .unwrap_err()
                .code(),
            "expired"
        );
        assert_eq!(
            execute(&mut t.clone(), "now", 0).unwrap_err().code(),
            "invalid_state"
        );
        accept(&mut t, "2026-01-01T00:00:10Z", 10_000).unwrap();
        assert_eq!(t.time_idle_ms, 10_000);
        assert_eq!(
            decline(&mut t.clone(), "no").unwrap_err().code(),
            "invalid_state"
        );
        execute(&mut t, "2026-01-01T00:00:20Z", 10_000).unwrap();
        let msg = succeed(&mut t, "2026-01-01T00:01:20Z", 60_000).unwrap();
        assert_eq!(t.status, Status::Succeeded);
        assert_eq!(msg.time_cpu_ms, 60_000);
        assert!(t.status.is_final());
        let doc = t.to_json();
        assert!(doc.contains("\n  \"task_id\""), "{doc}");
        let back: TaskFile = serde_json::from_str(&doc).unwrap();
        assert_eq!(back, t);
    }
}
