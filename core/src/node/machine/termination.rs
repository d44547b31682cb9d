//! Termination, on deletion or once every app container is done: app containers (and a
//! running regular init container) stop first, then sidecars one at a time in reverse
//! order, then the sandbox, network and volumes are torn down (once no setup step is in
//! flight any more), and a deleted pod's object is finally deleted with grace 0.

use std::time::Duration;

use tokio::time::Instant;

use super::{Action, ContainerKind, Now, PodMachine, Slot, Stage};

/// Kubernetes' minimum stop window after a preStop hook.
pub const MIN_GRACE: Duration = Duration::from_secs(2);
/// Default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The pod's termination: deletion or completion.
#[derive(Clone, Copy, Debug)]
pub struct Termination {
    /// When every container must be gone.
    pub deadline: Instant,
    /// The pod is being deleted (delete the object at the end).
    pub deleting: bool,
    /// Forced: no minimum stop window.
    pub force: bool,
}

impl PodMachine {
    pub(super) fn begin_termination(
        &mut self,
        now: Now,
        grace: Duration,
        deleting: bool,
        force: bool,
    ) {
        match &mut self.termination {
            Some(t) => {
                // A second delete may shorten the grace period, never extend it.
                t.deadline = t.deadline.min(now.at + grace);
                t.deleting |= deleting;
                t.force |= force;
            }
            None => {
                self.termination = Some(Termination {
                    deadline: now.at + grace,
                    deleting,
                    force,
                })
            }
        }
    }

    pub(super) fn decide_termination(&mut self, now: Now, out: &mut Vec<Action>) {
        let term = match self.termination {
            Some(t) => t,
            None => {
                // Completion: sidecars get the pod's grace period.
                let t = Termination {
                    deadline: now.at + self.pod_grace(),
                    deleting: false,
                    force: false,
                };
                self.termination = Some(t);
                t
            }
        };
        let remaining = term.deadline.saturating_duration_since(now.at);
        // Nothing starts any more.
        for s in self.slots.iter_mut() {
            if !s.is_running() && !s.busy {
                s.finished = true;
                s.restart_at = None;
            }
        }
        let stop = |s: &mut Slot, i: usize, out: &mut Vec<Action>| {
            let run = s.run.as_mut().expect("running");
            run.stopping = true;
            s.busy = true;
            s.probes.clear();
            out.push(Action::StopContainer {
                slot: i,
                container_id: run.id.clone(),
                grace: remaining,
                force: term.force,
            });
        };
        let mut active = false;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.kind == ContainerKind::Sidecar {
                continue;
            }
            if s.is_running() && !s.busy && !s.run.as_ref().is_some_and(|r| r.stopping) {
                stop(s, i, out);
            }
            active |= s.is_running() || s.busy;
        }
        if active {
            return;
        }
        for i in (0..self.n_init).rev() {
            let s = &mut self.slots[i];
            if s.kind != ContainerKind::Sidecar || !(s.is_running() || s.busy) {
                continue;
            }
            if !s.busy && !s.run.as_ref().is_some_and(|r| r.stopping) {
                stop(s, i, out);
            }
            return;
        }
        // A setup step still under way makes something (a sandbox, an attachment, a
        // publication) the teardown must know about: wait for its outcome, or it would be
        // left behind.
        let setting_up = [
            self.sandbox == Stage::InFlight,
            self.network == Stage::InFlight,
            self.volumes == Stage::InFlight,
        ];
        if setting_up.contains(&true) {
            return;
        }
        match self.teardown {
            Stage::Todo => {
                self.teardown = Stage::InFlight;
                out.push(Action::TearDown {
                    sandbox_id: self.sandbox.done().cloned(),
                    // A failed setup cleaned up after itself; an adopted pod's volumes were
                    // set up by the previous agent.
                    volumes: self.volumes.done().is_some() || self.adopted,
                });
            }
            Stage::Done(()) if term.deleting => {
                if self.object_gone {
                    self.gone = true;
                } else if !self.delete_sent {
                    // Finished only once the delete is seen to be done (`Deleted`): other
                    // observations may come first, and must not end the worker with the
                    // delete still pending.
                    self.delete_sent = true;
                    out.push(Action::DeletePod);
                }
            }
            _ => {}
        }
    }
}
