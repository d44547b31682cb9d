//! The pod state machine on its own: observations in, actions out, no backends. These pin
//! orderings that the worker cannot force deterministically (which of two ready outcomes it
//! sees first).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use tokio::time::Instant;
use wharf_core::backend::image::ImageInfo;
use wharf_core::clock::to_k8s_time;
use wharf_core::node::machine::{Action, Now, Observation, PodMachine};
use wharf_core::object::{Resource, Typed};

fn typed(pod: Pod) -> Typed<Pod> {
    Typed::new(Arc::new(pod.into_object())).expect("a pod")
}

fn web_pod() -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some("web".into());
    pod.metadata.namespace = Some("default".into());
    pod.metadata.uid = Some("uid-1".into());
    pod.metadata.resource_version = Some("1".into());
    pod.spec = Some(PodSpec {
        node_name: Some("n1".into()),
        containers: vec![Container {
            name: "app".into(),
            image: Some("img:1".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    pod
}

fn deleted(mut pod: Pod, rv: u64) -> Pod {
    pod.metadata.deletion_timestamp = Some(to_k8s_time(SystemTime::UNIX_EPOCH));
    pod.metadata.deletion_grace_period_seconds = Some(30);
    pod.metadata.resource_version = Some(rv.to_string());
    pod
}

struct Clock {
    t0: Instant,
}

impl Clock {
    fn at(&self, millis: u64) -> Now {
        Now {
            at: self.t0 + Duration::from_millis(millis),
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
        }
    }
}

/// Runs the machine until its container runs: returns the machine, the container id and the
/// next instant.
fn running(clock: &Clock) -> (PodMachine, String, u64) {
    let mut m = PodMachine::new(typed(web_pod()));
    let mut t = 0;
    let container_id = "c-1".to_string();
    for _ in 0..10 {
        let now = clock.at(t);
        for action in m.decide(now) {
            let o = match action {
                Action::CreateSandbox => Observation::SandboxReady("sb-1".into()),
                Action::AttachNetwork { .. } => {
                    Observation::NetworkReady(vec!["10.0.0.2".parse().unwrap()])
                }
                Action::MountVolumes => Observation::VolumesReady(Default::default()),
                Action::EnsureImage { slot } => Observation::ImageReady(
                    slot,
                    Arc::new(ImageInfo {
                        id: "sha256:img".into(),
                        repo_tags: vec!["img:1".into()],
                        repo_digests: vec![],
                        size: 0,
                        config: Default::default(),
                        rootfs: wharf_core::backend::runtime::RootFs::None,
                    }),
                ),
                Action::StartContainer { slot, .. } => Observation::Started {
                    slot,
                    container_id: container_id.clone(),
                    started: now.wall,
                },
                other => panic!("unexpected while starting: {other:?}"),
            };
            m.observe(o, now);
        }
        t += 1;
        if m.slots[0].is_running() {
            return (m, container_id, t);
        }
    }
    panic!("the container never started: {m:#?}");
}

/// The worker may see any observation (here: its own status write coming back as a pod
/// update) between sending the final delete and seeing it done. The machine must keep
/// waiting for `Deleted`, not call the pod finished with the delete still in flight: a worker
/// that ends then drops the delete and leaves the pod Terminating forever.
#[test]
fn pod_is_finished_only_once_the_final_delete_is_done() {
    let clock = Clock { t0: Instant::now() };
    let (mut m, id, mut t) = running(&clock);
    m.observe(
        Observation::PodUpdated(typed(deleted(web_pod(), 5))),
        clock.at(t),
    );
    let stop = m.decide(clock.at(t));
    assert!(
        matches!(stop.as_slice(), [Action::StopContainer { container_id, .. }] if *container_id == id),
        "{stop:?}"
    );
    t += 1;
    m.observe(
        Observation::Exited {
            container_id: id,
            exit_code: 143,
            oom: false,
            reason: None,
            message: None,
            finished: clock.at(t).wall,
        },
        clock.at(t),
    );
    m.observe(Observation::Stopped(0), clock.at(t));
    let teardown = m.decide(clock.at(t));
    assert!(
        matches!(
            teardown.as_slice(),
            [Action::TearDown {
                sandbox_id: Some(_),
                volumes: true,
            }]
        ),
        "{teardown:?}"
    );
    m.observe(Observation::TornDown, clock.at(t));
    let delete = m.decide(clock.at(t));
    assert!(
        matches!(delete.as_slice(), [Action::DeletePod]),
        "{delete:?}"
    );

    // Anything else first: a pod update, a wakeup. Still waiting, and no second delete.
    t += 1;
    m.observe(
        Observation::PodUpdated(typed(deleted(web_pod(), 6))),
        clock.at(t),
    );
    assert!(m.decide(clock.at(t)).is_empty());
    assert!(!m.is_finished(), "finished before the delete was done");
    assert!(m.decide(clock.at(t + 1000)).is_empty());
    assert!(!m.is_finished());

    m.observe(Observation::Deleted, clock.at(t));
    assert!(m.is_finished());
}

/// When the object vanished from the store (deleted by someone else) the machine tears down
/// and finishes without a delete of its own.
#[test]
fn vanished_pod_is_torn_down_without_a_delete() {
    let clock = Clock { t0: Instant::now() };
    let (mut m, _, t) = running(&clock);
    m.observe(Observation::PodGone, clock.at(t));
    let stop = m.decide(clock.at(t));
    assert!(
        matches!(stop.as_slice(), [Action::StopContainer { force: true, .. }]),
        "{stop:?}"
    );
    m.observe(Observation::Stopped(0), clock.at(t));
    m.observe(
        Observation::Exited {
            container_id: "c-1".into(),
            exit_code: 137,
            oom: false,
            reason: None,
            message: None,
            finished: clock.at(t).wall,
        },
        clock.at(t),
    );
    let teardown = m.decide(clock.at(t));
    assert!(
        matches!(teardown.as_slice(), [Action::TearDown { .. }]),
        "{teardown:?}"
    );
    m.observe(Observation::TornDown, clock.at(t));
    assert!(m.decide(clock.at(t)).is_empty());
    assert!(m.is_finished());
}
