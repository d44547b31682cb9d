//! A container's runs: a start replaces the previous run (kept as the last state), an
//! exit is recorded and, per restartPolicy, schedules the next start after the crash-loop
//! back-off (0, 10 s, 20 s ... 300 s, reset after 10 minutes of running).

use std::time::{Duration, SystemTime};

use super::{
    ContainerKind, ImageStage, Now, Observation, PodMachine, RestartPolicy, Run, Terminated,
};

/// Crash-loop back-off: 10 s doubling to 5 minutes.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The back-off cap.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting restarts without delay.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

impl PodMachine {
    fn should_restart(&self, kind: ContainerKind, exit_code: i32) -> bool {
        match kind {
            ContainerKind::Sidecar => true,
            ContainerKind::Init => exit_code != 0 && self.restart_policy != RestartPolicy::Never,
            ContainerKind::App => match self.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => exit_code != 0,
                RestartPolicy::Never => false,
            },
        }
    }

    /// A container of `slot` started as `container_id`.
    pub(super) fn container_started(
        &mut self,
        slot: usize,
        container_id: String,
        started: SystemTime,
        now: Now,
    ) {
        let container = self.container(slot).cloned().unwrap_or_default();
        let s = &mut self.slots[slot];
        s.busy = false;
        if let Some(prev) = s.run.take() {
            s.last_state = prev.exit;
            s.restart_count += 1;
        }
        s.run = Some(Run {
            id: container_id.clone(),
            started_wall: started,
            started_at: now.at,
            stopping: false,
            exit: None,
        });
        s.restart_at = None;
        s.waiting = None;
        s.kill = None;
        Self::arm_probes(s, &container, now);
        let early: Vec<Observation> = std::mem::take(&mut self.early_exits);
        for e in early {
            self.observe(e, now);
        }
    }

    /// A container exited (an [`Observation::Exited`]).
    pub(super) fn container_exited(&mut self, exit: Observation, now: Now) {
        let Observation::Exited {
            container_id,
            exit_code,
            oom,
            reason,
            message,
            finished,
        } = exit
        else {
            return;
        };
        let Some(i) = self.slot_of(&container_id) else {
            // Exit before the start was reported: keep it for then.
            if self.early_exits.len() < 64 {
                self.early_exits.push(Observation::Exited {
                    container_id,
                    exit_code,
                    oom,
                    reason,
                    message,
                    finished,
                });
            }
            return;
        };
        let terminating = self.termination.is_some() || self.completed;
        let restart = !terminating && self.should_restart(self.slots[i].kind, exit_code);
        let s = &mut self.slots[i];
        let run = s.run.as_mut().expect("slot_of found a run");
        if run.exit.is_some() {
            return;
        }
        let reason = reason.unwrap_or_else(|| {
            if oom {
                "OOMKilled"
            } else if exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string()
        });
        run.exit = Some(Terminated {
            exit_code,
            reason,
            message,
            started: Some(run.started_wall),
            finished,
            container_id,
        });
        let ran = now.at.saturating_duration_since(run.started_at);
        s.started = false;
        s.ready = false;
        s.kill = None;
        s.probes.clear();
        if s.pull_policy == "Always" {
            s.image = ImageStage::Unknown;
        }
        if restart {
            if ran >= BACKOFF_RESET {
                s.backoff = None;
            }
            let delay = match s.backoff {
                None => Duration::ZERO,
                Some(d) if d.is_zero() => BACKOFF_INITIAL,
                Some(d) => (d * 2).min(BACKOFF_MAX),
            };
            s.backoff = Some(delay);
            s.restart_at = Some(now.at + delay);
        } else {
            s.finished = true;
        }
    }
}
