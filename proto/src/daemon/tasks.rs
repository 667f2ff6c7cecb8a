//! The daemon's side of task submission (port 1003, `spec/services.md`
//! §10): whether task execution is enabled (`SetTaskExec`, off at start),
//! the bound on tasks taken in per rolling hour, turning each frame
//! the service host hands over into its reply and task-file disk work,
//! and the deadlines of the tasks taken in.

use std::collections::VecDeque;

use core::time::Duration;

use rand_core::{CryptoRng, RngCore, SeedableRng};

use crate::addr::Addr;
use crate::crypto::provider::CryptoProvider;
use crate::node::ConnId;
use crate::services::tasks::{self, FrameType, Receiver};
use crate::services::walltime::WallTime;
use crate::time::Instant;
use crate::wire::ipc::IpcMessage;

use super::output::DiskWrite;
use super::{Daemon, NodeIo};

/// Tasks taken in per rolling hour, at most (further SUBMITs get 400).
pub const TASKS_PER_HOUR: usize = 256;
const HOUR: Duration = Duration::from_secs(3600);

/// Task service state.
#[derive(Debug, Default)]
pub(super) struct TaskState {
    /// Task execution enabled (`pilotctl enable-tasks`).
    pub(super) enabled: bool,
    /// When the tasks of the last hour were taken in (≤ [`TASKS_PER_HOUR`]).
    recent: VecDeque<Instant>,
    /// Tasks taken in since start.
    pub(super) received: u64,
    /// SUBMITs refused since start.
    pub(super) refused: u64,
    /// The accept, execute and result deadlines of the tasks taken in.
    pub(super) timers: tasks::TaskTimers,
}

impl TaskState {
    fn prune(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
        {
            self.recent.pop_front();
        }
    }
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// One complete frame from a port-1003 connection.
    pub(super) fn on_task_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: Addr,
        frame_type: FrameType,
        payload: &[u8],
    ) {
        self.tasks.prune(now);
        let wall = self.wall(now);
        let utc = WallTime {
            offset_secs: 0,
            ..wall
        };
        let stamp = utc.rfc3339().to_string();
        let own = self.address().map(|a| a.to_string()).unwrap_or_default();
        let from_text = from.to_string();
        let rx = Receiver {
            enabled: self.tasks.enabled,
            queued: self.tasks.recent.len(),
            queue_limit: TASKS_PER_HOUR,
            own: &own,
            from: &from_text,
            now: &stamp,
        };
        let outcome = tasks::receive(&rx, frame_type, payload);
        if let Some(id) = &outcome.queued {
            self.tasks.recent.push_back(now);
            self.tasks.received += 1;
            self.tasks.timers.add(now, id);
            let data = serde_json::json!({"task_id": id, "from": from_text});
            self.webhook_event(now, "task.received", data);
        } else if frame_type == FrameType::Submit {
            self.tasks.refused += 1;
        }
        for e in outcome.effects {
            self.disk(DiskWrite::Task(e));
        }
        if let Some(node) = self.life.node_mut() {
            let mut io = NodeIo { node, now };
            self.host
                .task_reply(&mut io, conn, now, wall, outcome.reply);
        }
    }

    /// Carries out the task deadlines due at `now` (`spec/services.md`
    /// §12.6): each is a conditional change of the received task's file.
    pub(super) fn task_deadlines(&mut self, now: Instant) {
        for e in self.tasks.timers.due(now) {
            self.disk(DiskWrite::Task(e));
        }
    }

    /// Switches task execution on or off (at start: what the profile
    /// kept); the profile is saved again.
    pub fn set_task_exec(&mut self, enable: bool) {
        self.tasks.enabled = enable;
        self.save_profile();
    }

    /// `SetTaskExec`: switches task execution on or off, kept across
    /// restarts in the profile.
    pub(super) fn ipc_set_task_exec(&mut self, client: super::ClientId, enable: bool) {
        self.set_task_exec(enable);
        let json = serde_json::json!({"task_exec": enable, "type": "set_task_exec_ok"}).to_string();
        self.push(client, &IpcMessage::SetTaskExecOk(&json));
    }
}
