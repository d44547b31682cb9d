//! Adoption: an agent that restarts finds the sandbox and containers its predecessor left
//! and carries on with them instead of starting the pod again.

use super::{AdoptedContainer, Now, Observation, PodMachine, ProbeKind, Run, Stage};

impl PodMachine {
    /// The sandbox and containers found for this pod at start-up.
    pub(super) fn adopt(
        &mut self,
        sandbox_id: String,
        containers: Vec<AdoptedContainer>,
        now: Now,
    ) {
        self.sandbox = Stage::Done(sandbox_id);
        self.adopted = true;
        for c in containers {
            let Some(i) = self.slots.iter().position(|s| s.name == c.name) else {
                continue;
            };
            let container = self.container(i).cloned().unwrap_or_default();
            let s = &mut self.slots[i];
            s.restart_count = s.restart_count.max(c.restart_count);
            s.image_id = c.image_id.clone();
            s.run = Some(Run {
                id: c.id.clone(),
                started_wall: c.started.unwrap_or(now.wall),
                started_at: now.at,
                stopping: false,
                exit: None,
            });
            match c.exit {
                None => {
                    let was_started = self
                        .pod
                        .status
                        .as_ref()
                        .into_iter()
                        .flat_map(|st| {
                            st.init_container_statuses
                                .iter()
                                .flatten()
                                .chain(st.container_statuses.iter().flatten())
                        })
                        .any(|cs| cs.name == c.name && cs.started == Some(true));
                    let s = &mut self.slots[i];
                    Self::arm_probes(s, &container, now);
                    if was_started {
                        s.started = true;
                        s.probes.retain(|p| p.kind != ProbeKind::Startup);
                        s.ready = !s.probes.iter().any(|p| p.kind == ProbeKind::Readiness);
                    }
                }
                Some(exit) => {
                    self.observe(
                        Observation::Exited {
                            container_id: c.id,
                            exit_code: exit.exit_code,
                            oom: exit.reason == "OOMKilled",
                            reason: Some(exit.reason),
                            message: exit.message,
                            finished: exit.finished,
                        },
                        now,
                    );
                }
            }
        }
    }
}
