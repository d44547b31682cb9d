//! Golden tests of the node agent's pod rules, on the simulated backends under tokio's paused
//! clock: exact restart times, back-off reset, sidecar order, termination with preStop,
//! probe gating and readiness, phases per restartPolicy, image pulls.

mod node_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ExecAction, Lifecycle, LifecycleHandler, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use node_support::*;
use wharf_core::sim::{Behavior, SimImage};

fn exec_probe(cmd: &str, period: i32, failure: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![cmd.to_string()]),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure),
        ..Default::default()
    }
}

const MIN: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn crash_loop_restart_times_double_to_five_minutes() {
    let h = Harness::new().await;
    h.runtime
        .set_behavior("app", Behavior::exit(Duration::ZERO, 1));
    h.create(pod("crash", vec![container("app")])).await;
    h.at(1500).await;
    let starts = h.starts("app");
    // First restart at once, then 10 s doubling, capped at 300 s.
    assert_eq!(&starts[..9], &[0, 0, 10, 30, 70, 150, 310, 610, 910]);
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(&gaps[..8], &[0, 10, 20, 40, 80, 160, 300, 300]);

    // Between restarts: waiting in CrashLoopBackOff, lastState terminated with the exit.
    h.at(1510).await;
    let st = h.status("crash").await;
    let cs = cstatus(&st, "app");
    let waiting = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    assert!(waiting
        .message
        .as_deref()
        .unwrap()
        .starts_with("back-off 5m0s restarting failed container=app pod=crash_default("));
    let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    assert_eq!(cs.restart_count as usize, h.starts("app").len() - 1);
    assert_eq!(phase(&st), "Running");
    assert_eq!(condition(&st, "Ready"), Some("False"));
    assert!(!cs.ready);
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_ten_minutes_of_clean_running() {
    let h = Harness::new().await;
    h.runtime
        .set_behavior("app", Behavior::exit(Duration::ZERO, 1));
    h.create(pod("flaky", vec![container("app")])).await;
    h.at(25).await;
    assert_eq!(h.starts("app"), vec![0, 0, 10]);
    // The run starting at 30 s lasts 10 minutes and 1 second.
    h.runtime
        .set_behavior("app", Behavior::exit(Duration::from_secs(601), 1));
    h.at(35).await;
    h.runtime
        .set_behavior("app", Behavior::exit(Duration::ZERO, 1));
    h.at(700).await;
    // It exits at 631 s and restarts at once (back-off reset); the next crashes wait 10 s, 20 s.
    assert_eq!(h.starts("app"), vec![0, 0, 10, 30, 631, 641, 661]);
}

#[tokio::test(start_paused = true)]
async fn sidecars_start_in_order_and_stop_after_app_in_reverse() {
    let h = Harness::new().await;
    h.runtime
        .set_behavior("init-a", Behavior::exit(Duration::from_secs(5), 0));
    h.runtime
        .set_behavior("init-b", Behavior::exit(Duration::from_secs(5), 0));
    let sidecar = |name: &str| {
        let mut c = container(name);
        c.restart_policy = Some("Always".into());
        c
    };
    let mut p = pod("side", vec![container("app")]);
    p.spec.as_mut().unwrap().init_containers = Some(vec![
        container("init-a"),
        sidecar("proxy"),
        sidecar("logger"),
        container("init-b"),
    ]);
    h.create(p).await;
    let st = h.wait("side", MIN, |s| phase(s) == "Running").await;
    assert_eq!(condition(&st, "Initialized"), Some("True"));
    assert_eq!(h.starts("init-a"), vec![0]);
    assert_eq!(h.starts("proxy"), vec![5]);
    assert_eq!(h.starts("logger"), vec![5]);
    assert_eq!(h.starts("init-b"), vec![5]);
    assert_eq!(h.starts("app"), vec![10]);
    assert!(cstatus(&st, "proxy").ready && cstatus(&st, "init-b").ready);

    // A sidecar that exits is restarted, whatever the pod's policy.
    h.at(20).await;
    h.delete("side").await;
    h.wait_gone("side", MIN).await;
    let exits: Vec<String> = h
        .log()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Ev::Exited(n, _) if n != "init-a" && n != "init-b" => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(exits, ["app", "logger", "proxy"]);
    assert_eq!(h.runtime.counts(), (0, 0));
    assert_eq!(h.network.allocated(), 0);
}

#[tokio::test(start_paused = true)]
async fn prestop_overrun_gets_two_second_extension() {
    let h = Harness::new().await;
    h.runtime.set_behavior(
        "app",
        Behavior::run_forever().ignoring_sigterm().with_exec(
            &["drain"],
            0,
            Duration::from_secs(40),
        ),
    );
    h.runtime.set_behavior(
        "quick",
        Behavior::run_forever().with_exec(&["drain-quick"], 0, Duration::from_secs(5)),
    );
    let with_prestop = |name: &str, cmd: &str| {
        let mut c = container(name);
        c.lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![cmd.into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let mut p = pod(
        "term",
        vec![
            with_prestop("app", "drain"),
            with_prestop("quick", "drain-quick"),
        ],
    );
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(30);
    h.create(p).await;
    h.wait("term", MIN, |s| phase(s) == "Running").await;
    h.at(100).await;
    h.delete("term").await;
    h.wait_gone("term", 5 * MIN).await;
    let log = h.log();
    // preStop ran 30 s (cut at the grace), then 2 s more for SIGTERM, then SIGKILL.
    assert!(
        log.contains(&(132, Ev::Exited("app".into(), 137))),
        "{log:?}"
    );
    // A preStop within the grace: SIGTERM right after it, honoured.
    assert!(
        log.contains(&(105, Ev::Exited("quick".into(), 143))),
        "{log:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn startup_probe_gates_liveness_and_readiness() {
    let h = Harness::new().await;
    let mut c = container("app");
    c.startup_probe = Some(exec_probe("startup", 10, 3));
    c.liveness_probe = Some(exec_probe("live", 10, 3));
    c.readiness_probe = Some(exec_probe("ready", 10, 3));
    h.prober
        .fail_between("exec:startup", Duration::ZERO, Duration::from_secs(15));
    h.create(pod("gated", vec![c])).await;
    h.at(15).await;
    let st = h.status("gated").await;
    assert_eq!(cstatus(&st, "app").started, Some(false));
    assert_eq!(h.prober.calls("exec:startup"), 2);
    assert_eq!(h.prober.calls("exec:live"), 0);
    assert_eq!(h.prober.calls("exec:ready"), 0);
    h.at(21).await;
    let st = h.status("gated").await;
    assert_eq!(cstatus(&st, "app").started, Some(true));
    assert!(cstatus(&st, "app").ready);
    assert_eq!(condition(&st, "Ready"), Some("True"));
    assert_eq!(h.prober.calls("exec:startup"), 3);
    assert_eq!(h.prober.calls("exec:live"), 1);
    h.at(45).await;
    // Startup stops once passed; the others keep their period.
    assert_eq!(h.prober.calls("exec:startup"), 3);
    assert_eq!(h.prober.calls("exec:live"), 3);
    assert_eq!(h.starts("app"), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn startup_failure_restarts_with_probe_grace() {
    let h = Harness::new().await;
    h.runtime
        .set_behavior("app", Behavior::run_forever().ignoring_sigterm());
    let mut c = container("app");
    let mut probe = exec_probe("startup", 10, 3);
    probe.termination_grace_period_seconds = Some(5);
    c.startup_probe = Some(probe);
    h.prober.fail_from("exec:startup", Duration::ZERO);
    h.create(pod("never-starts", vec![c])).await;
    h.at(40).await;
    // Failures at 0, 10, 20 → killed with the probe's 5 s grace → restarted at once.
    assert_eq!(h.starts("app"), vec![0, 25]);
    assert!(h.log().contains(&(25, Ev::Exited("app".into(), 137))));
    let st = h.status("never-starts").await;
    assert_eq!(cstatus(&st, "app").restart_count, 1);
}

#[tokio::test(start_paused = true)]
async fn liveness_failure_restarts_container() {
    let h = Harness::new().await;
    let mut c = container("app");
    c.liveness_probe = Some(exec_probe("live", 10, 3));
    h.prober.fail_between(
        "exec:live",
        Duration::from_secs(25),
        Duration::from_secs(55),
    );
    h.create(pod("live", vec![c])).await;
    h.at(60).await;
    // Probes at 0,10,20 ok; 30,40,50 fail → SIGTERM at 50 (exit 143) → restart at once.
    assert_eq!(h.starts("app"), vec![0, 50]);
    let st = h.status("live").await;
    let cs = cstatus(&st, "app");
    assert_eq!(cs.restart_count, 1);
    let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(last.exit_code, 143);
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_ready_and_containers_ready() {
    let h = Harness::new().await;
    let mut c = container("web");
    c.readiness_probe = Some(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("http".into()),
            host: None,
        }),
        period_seconds: Some(5),
        failure_threshold: Some(2),
        success_threshold: Some(2),
        ..Default::default()
    });
    c.ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
        name: Some("http".into()),
        container_port: 8080,
        ..Default::default()
    }]);
    h.prober
        .fail_between("tcp:8080", Duration::from_secs(28), Duration::from_secs(48));
    h.create(pod("ready", vec![c])).await;
    fn ready(st: &k8s_openapi::api::core::v1::PodStatus) -> (Option<&str>, Option<&str>) {
        (condition(st, "Ready"), condition(st, "ContainersReady"))
    }
    h.at(1).await;
    assert_eq!(
        ready(&h.status("ready").await),
        (Some("False"), Some("False"))
    );
    h.at(6).await; // second success
    assert_eq!(
        ready(&h.status("ready").await),
        (Some("True"), Some("True"))
    );
    h.at(31).await; // one failure (30)
    assert_eq!(
        ready(&h.status("ready").await),
        (Some("True"), Some("True"))
    );
    h.at(36).await; // two failures (30, 35)
    let st = h.status("ready").await;
    assert_eq!(ready(&st), (Some("False"), Some("False")));
    let c = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(c.reason.as_deref(), Some("ContainersNotReady"));
    assert_eq!(
        c.message.as_deref(),
        Some("containers with unready status: [web]")
    );
    assert_eq!(phase(&st), "Running");
    h.at(51).await; // one success (50)
    assert_eq!(ready(&h.status("ready").await).0, Some("False"));
    h.at(56).await; // two successes (50, 55)
    assert_eq!(
        ready(&h.status("ready").await),
        (Some("True"), Some("True"))
    );
    assert_eq!(h.starts("web"), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn phases_under_never_and_on_failure() {
    let h = Harness::new().await;
    h.runtime
        .set_behavior("ok", Behavior::exit(Duration::from_secs(3), 0));
    h.runtime
        .set_behavior("bad", Behavior::exit(Duration::from_secs(3), 2));
    let with_policy = |name: &str, policy: &str, c: &str| {
        let mut p = pod(name, vec![container(c)]);
        p.spec.as_mut().unwrap().restart_policy = Some(policy.into());
        p
    };
    h.create(with_policy("never-ok", "Never", "ok")).await;
    h.create(with_policy("never-bad", "Never", "bad")).await;
    h.create(with_policy("onfail-bad", "OnFailure", "bad"))
        .await;
    let st = h.wait("never-ok", MIN, |s| phase(s) == "Succeeded").await;
    let t = cstatus(&st, "ok")
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert_eq!(condition(&st, "Ready"), Some("False"));
    let st = h.wait("never-bad", MIN, |s| phase(s) == "Failed").await;
    let t = cstatus(&st, "bad")
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (2, Some("Error")));
    assert_eq!(cstatus(&st, "bad").restart_count, 0);
    // OnFailure restarts a failed container: the pod stays Running.
    h.at(20).await;
    let st = h.status("onfail-bad").await;
    assert_eq!(phase(&st), "Running");
    assert!(cstatus(&st, "bad").restart_count >= 2);
    // Once it exits 0, the pod succeeds.
    h.runtime
        .set_behavior("bad", Behavior::exit(Duration::from_secs(3), 0));
    h.wait("onfail-bad", 5 * MIN, |s| phase(s) == "Succeeded")
        .await;
    // Completed pods have their sandboxes torn down.
    h.at(400).await;
    assert_eq!(h.runtime.counts().1, 0);
}

#[tokio::test(start_paused = true)]
async fn failed_init_container_fails_pod_under_never() {
    let h = Harness::new().await;
    h.runtime
        .set_behavior("setup", Behavior::exit(Duration::from_secs(1), 3));
    let mut p = pod("init-fail", vec![container("app")]);
    p.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    p.spec.as_mut().unwrap().init_containers = Some(vec![container("setup")]);
    h.create(p).await;
    let st = h.wait("init-fail", MIN, |s| phase(s) == "Failed").await;
    assert_eq!(condition(&st, "Initialized"), Some("False"));
    assert!(h.starts("app").is_empty());
    let init = cstatus(&st, "setup");
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        3
    );
    assert_eq!(
        waiting_reason(&st, "app").as_deref(),
        Some("PodInitializing")
    );
}

#[tokio::test(start_paused = true)]
async fn pending_while_initializing_then_running() {
    let h = Harness::new().await;
    h.runtime
        .set_behavior("setup", Behavior::exit(Duration::from_secs(10), 0));
    let mut p = pod("init", vec![container("app")]);
    p.spec.as_mut().unwrap().init_containers = Some(vec![container("setup")]);
    h.create(p).await;
    h.at(5).await;
    let st = h.status("init").await;
    assert_eq!(phase(&st), "Pending");
    assert_eq!(
        waiting_reason(&st, "app").as_deref(),
        Some("PodInitializing")
    );
    let init = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Initialized")
        .unwrap();
    assert_eq!(init.reason.as_deref(), Some("ContainersNotInitialized"));
    assert_eq!(
        init.message.as_deref(),
        Some("containers with incomplete status: [setup]")
    );
    assert_eq!(condition(&st, "PodReadyToStartContainers"), Some("True"));
    h.at(11).await;
    let st = h.status("init").await;
    assert_eq!(phase(&st), "Running");
    assert_eq!(condition(&st, "Initialized"), Some("True"));
    assert_eq!(condition(&st, "Ready"), Some("True"));
    assert!(cstatus(&st, "setup").ready);
    assert_eq!(st.pod_ip.as_deref(), Some("10.244.1.2"));
    assert_eq!(st.host_ip.as_deref(), Some("192.168.0.10"));
    assert!(st.start_time.is_some());
}

#[tokio::test(start_paused = true)]
async fn image_pull_errors_back_off() {
    let h = Harness::new().await;
    h.images.add(
        "flaky:1",
        SimImage {
            fail_pulls: 2,
            ..Default::default()
        },
    );
    let mut c = container("app");
    c.image = Some("flaky:1".into());
    h.create(pod("pull", vec![c])).await;
    h.at(0).await;
    let st = h.status("pull").await;
    assert_eq!(waiting_reason(&st, "app").as_deref(), Some("ErrImagePull"));
    assert_eq!(phase(&st), "Pending");
    h.at(2).await;
    assert_eq!(
        waiting_reason(&h.status("pull").await, "app").as_deref(),
        Some("ImagePullBackOff")
    );
    // Retries at 10 s (fails) and 30 s (succeeds).
    h.at(31).await;
    assert_eq!(h.images.pull_count("flaky:1"), 3);
    assert_eq!(h.starts("app"), vec![30]);

    // Never + absent image.
    let mut c = container("app");
    c.image = Some("absent:1".into());
    c.image_pull_policy = Some("Never".into());
    h.create(pod("never", vec![c])).await;
    h.at(33).await;
    let st = h.status("never").await;
    assert_eq!(
        waiting_reason(&st, "app").as_deref(),
        Some("ErrImageNeverPull")
    );
    assert_eq!(h.images.pull_count("absent:1"), 0);

    // IfNotPresent with the image present does not pull; `:latest` defaults to Always.
    h.images.add(
        "local:2",
        SimImage {
            present: true,
            ..Default::default()
        },
    );
    let mut c = container("a");
    c.image = Some("local:2".into());
    let mut l = container("b");
    l.image = Some("img:latest".into());
    h.create(pod("present", vec![c, l])).await;
    h.wait("present", MIN, |s| phase(s) == "Running").await;
    assert_eq!(h.images.pull_count("local:2"), 0);
    assert_eq!(h.images.pull_count("img:latest"), 1);
}

#[tokio::test(start_paused = true)]
async fn oom_killed_is_reported() {
    let h = Harness::new().await;
    h.runtime
        .set_behavior("hog", Behavior::oom(Duration::from_secs(5)));
    let mut p = pod("oom", vec![container("hog")]);
    p.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    h.create(p).await;
    let st = h.wait("oom", MIN, |s| phase(s) == "Failed").await;
    let t = cstatus(&st, "hog")
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
}

/// While containers are being created the kubelet reports `ContainerCreating`, unless the pod
/// has init containers: then every container not yet run waits with `PodInitializing`.
#[tokio::test(start_paused = true)]
async fn waiting_reason_while_creating_depends_on_init_containers() {
    let h = Harness::new().await;
    for image in ["slow:1", "slow:2", "slow:3"] {
        h.images.add(
            image,
            SimImage {
                pull_latency: Duration::from_secs(20),
                ..Default::default()
            },
        );
    }
    let slow = |name: &str, image: &str| {
        let mut c = container(name);
        c.image = Some(image.into());
        c
    };
    h.create(pod("plain", vec![slow("app", "slow:1")])).await;
    let mut p = pod("with-init", vec![slow("main", "slow:3")]);
    p.spec.as_mut().unwrap().init_containers = Some(vec![slow("setup", "slow:2")]);
    h.runtime
        .set_behavior("setup", Behavior::exit(Duration::from_secs(5), 0));
    h.create(p).await;

    h.at(10).await;
    let plain = h.status("plain").await;
    assert_eq!(phase(&plain), "Pending");
    assert_eq!(
        waiting_reason(&plain, "app").as_deref(),
        Some("ContainerCreating")
    );
    let init = h.status("with-init").await;
    assert_eq!(
        waiting_reason(&init, "setup").as_deref(),
        Some("PodInitializing")
    );
    assert_eq!(
        waiting_reason(&init, "main").as_deref(),
        Some("PodInitializing")
    );

    // setup runs 20..25 s; main's image is pulled from 25 s to 45 s.
    h.at(30).await;
    let init = h.status("with-init").await;
    assert_eq!(condition(&init, "Initialized"), Some("True"));
    assert_eq!(
        waiting_reason(&init, "main").as_deref(),
        Some("PodInitializing")
    );
    let plain = h.status("plain").await;
    assert_eq!(phase(&plain), "Running");
    h.at(46).await;
    assert_eq!(phase(&h.status("with-init").await), "Running");
}
