use std::collections::HashMap;

use k8s_openapi::api::core::v1::{PodReadinessGate, PodStatus, Probe};
use tug_runtime::cri::{ContainerState, PodSandboxState};

use super::*;
use crate::kuberuntime::tests_support::{at, container_status, pod, sandbox};

fn status(pod: &Pod, state: &PodRuntimeState, reasons: &Reasons) -> PodStatus {
    status_with_runtime(pod, state, reasons, "tug")
}

fn status_with_runtime(pod: &Pod, state: &PodRuntimeState, reasons: &Reasons, runtime_name: &str) -> PodStatus {
    let mut image_ids = HashMap::new();
    image_ids.insert("sha256:abc".to_string(), "docker.io/library/busybox@sha256:def".to_string());
    generate_pod_status(&StatusInputs {
        pod,
        state,
        reasons,
        image_ids: &image_ids,
        node_ip: "10.0.0.5",
        now: at(500),
        probes: &Default::default(),
        runtime_name,
    })
}

fn ready_state(containers: Vec<ContainerStatus>) -> PodRuntimeState {
    PodRuntimeState { sandboxes: vec![sandbox("s1", 0, PodSandboxState::Ready)], containers }
}

fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
    s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap()
}

fn state_of(s: &PodStatus, i: usize) -> &ApiState {
    s.container_statuses.as_ref().unwrap()[i].state.as_ref().unwrap()
}

#[test]
fn a_new_pod_is_pending_with_containers_creating() {
    let p = pod("Always", &["a"], &[]);
    let s = status(&p, &PodRuntimeState::default(), &Reasons::new());
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(state_of(&s, 0).waiting.as_ref().unwrap().reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
    assert_eq!(cond(&s, "Initialized").status, "True");
    assert_eq!(cond(&s, "Ready").status, "False");
    assert_eq!(cond(&s, "ContainersReady").message.as_deref(), Some("containers with unready status: [a]"));
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    assert_eq!(s.host_ip.as_deref(), Some("10.0.0.5"));
    assert!(s.start_time.is_some());
}

#[test]
fn a_running_pod_is_ready_with_ip_and_image_id() {
    let p = pod("Always", &["a"], &[]);
    let s =
        status(&p, &ready_state(vec![container_status("c1", "a", 0, ContainerState::Running, None)]), &Reasons::new());
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.7"));
    assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "10.42.0.7");
    let cs = &s.container_statuses.as_ref().unwrap()[0];
    assert!(cs.ready);
    assert_eq!(cs.started, Some(true));
    assert_eq!(cs.container_id.as_deref(), Some("tug://c1"));
    assert_eq!(cs.image, "busybox:1");
    assert_eq!(cs.image_id, "docker.io/library/busybox@sha256:def");
    assert!(state_of(&s, 0).running.as_ref().unwrap().started_at.is_some());
    for t in ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"] {
        assert_eq!(cond(&s, t).status, "True", "{t}");
    }
}

#[test]
fn a_readiness_probe_keeps_the_container_unready_until_probes_exist() {
    let mut p = pod("Always", &["a"], &[]);
    p.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe::default());
    let s =
        status(&p, &ready_state(vec![container_status("c1", "a", 0, ContainerState::Running, None)]), &Reasons::new());
    assert!(!s.container_statuses.as_ref().unwrap()[0].ready);
    assert_eq!(cond(&s, "Ready").status, "False");
}

#[test]
fn readiness_gates_hold_the_pod_unready() {
    let mut p = pod("Always", &["a"], &[]);
    p.spec.as_mut().unwrap().readiness_gates = Some(vec![PodReadinessGate { condition_type: "example.com/ok".into() }]);
    let st = ready_state(vec![container_status("c1", "a", 0, ContainerState::Running, None)]);
    let s = status(&p, &st, &Reasons::new());
    assert_eq!(cond(&s, "ContainersReady").status, "True");
    assert_eq!(cond(&s, "Ready").status, "False");
    assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("ReadinessGatesNotReady"));
    p.status = Some(PodStatus {
        conditions: Some(vec![PodCondition {
            type_: "example.com/ok".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let s = status(&p, &st, &Reasons::new());
    assert_eq!(cond(&s, "Ready").status, "True");
    // The gate's own condition is kept.
    assert_eq!(cond(&s, "example.com/ok").status, "True");
}

#[test]
fn phase_follows_exit_codes_and_restart_policy() {
    let exited = |code| ready_state(vec![container_status("c1", "a", 0, ContainerState::Exited, Some(code))]);
    for (policy, code, phase) in [
        ("Never", 0, "Succeeded"),
        ("Never", 1, "Failed"),
        ("OnFailure", 0, "Succeeded"),
        ("OnFailure", 1, "Running"),
        ("Always", 0, "Running"),
        ("Always", 1, "Running"),
    ] {
        let s = status(&pod(policy, &["a"], &[]), &exited(code), &Reasons::new());
        assert_eq!(s.phase.as_deref(), Some(phase), "{policy} exit {code}");
    }
    let s = status(&pod("Never", &["a"], &[]), &exited(0), &Reasons::new());
    assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
    let t = state_of(&s, 0).terminated.as_ref().unwrap();
    assert_eq!(t.reason.as_deref(), Some("Completed"));
    assert_eq!(t.container_id.as_deref(), Some("tug://c1"));
    let s = status(&pod("Never", &["a"], &[]), &exited(3), &Reasons::new());
    let t = state_of(&s, 0).terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
}

#[test]
fn a_terminal_phase_is_final() {
    let mut p = pod("Always", &["a"], &[]);
    p.status = Some(PodStatus { phase: Some("Failed".into()), ..Default::default() });
    let s =
        status(&p, &ready_state(vec![container_status("c1", "a", 0, ContainerState::Running, None)]), &Reasons::new());
    assert_eq!(s.phase.as_deref(), Some("Failed"));
}

#[test]
fn oom_killed_is_reported_from_the_runtime() {
    let mut c = container_status("c1", "a", 0, ContainerState::Exited, Some(137));
    c.reason = Some("OOMKilled".into());
    let s = status(&pod("Never", &["a"], &[]), &ready_state(vec![c]), &Reasons::new());
    let t = state_of(&s, 0).terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
    assert_eq!(s.phase.as_deref(), Some("Failed"));
}

#[test]
fn crash_loop_shows_waiting_with_last_state_and_restart_count() {
    let p = pod("Always", &["a"], &[]);
    let st = ready_state(vec![
        container_status("c2", "a", 1, ContainerState::Exited, Some(1)),
        container_status("c1", "a", 0, ContainerState::Exited, Some(1)),
    ]);
    let mut reasons = Reasons::new();
    reasons.insert(
        "a".into(),
        ("CrashLoopBackOff".into(), "back-off 10s restarting failed container=a pod=p_ns(u)".into()),
    );
    let s = status(&p, &st, &reasons);
    let cs = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(cs.restart_count, 1);
    let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().container_id.as_deref(), Some("tug://c2"));
    assert_eq!(s.phase.as_deref(), Some("Running"));
}

#[test]
fn a_restarted_container_keeps_the_previous_as_last_state() {
    let p = pod("Always", &["a"], &[]);
    let st = ready_state(vec![
        container_status("c2", "a", 1, ContainerState::Running, None),
        container_status("c1", "a", 0, ContainerState::Exited, Some(2)),
    ]);
    let s = status(&p, &st, &Reasons::new());
    let cs = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(cs.restart_count, 1);
    assert!(cs.state.as_ref().unwrap().running.is_some());
    assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 2);
}

#[test]
fn image_pull_errors_show_as_waiting_reasons() {
    let p = pod("Always", &["a"], &[]);
    let mut reasons = Reasons::new();
    reasons.insert("a".into(), ("ImagePullBackOff".into(), "Back-off pulling image \"busybox:1\"".into()));
    let s = status(&p, &ready_state(vec![]), &reasons);
    let w = state_of(&s, 0).waiting.as_ref().unwrap();
    assert_eq!(w.reason.as_deref(), Some("ImagePullBackOff"));
    assert_eq!(s.phase.as_deref(), Some("Pending"));
}

#[test]
fn init_containers_gate_the_pod() {
    let p = pod("Always", &["app"], &["init"]);
    let s = status(
        &p,
        &ready_state(vec![container_status("c1", "init", 0, ContainerState::Running, None)]),
        &Reasons::new(),
    );
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(cond(&s, "Initialized").status, "False");
    assert_eq!(cond(&s, "Initialized").message.as_deref(), Some("containers with incomplete status: [init]"));
    assert_eq!(state_of(&s, 0).waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));
    let done = ready_state(vec![
        container_status("c2", "app", 0, ContainerState::Running, None),
        container_status("c1", "init", 0, ContainerState::Exited, Some(0)),
    ]);
    let s = status(&p, &done, &Reasons::new());
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&s, "Initialized").status, "True");
    let init = &s.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(init.state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Completed"));
    // A failing init container fails a Never pod.
    let p = pod("Never", &["app"], &["init"]);
    let failed = ready_state(vec![container_status("c1", "init", 0, ContainerState::Exited, Some(1))]);
    assert_eq!(status(&p, &failed, &Reasons::new()).phase.as_deref(), Some("Failed"));
}

#[test]
fn transition_times_stay_while_conditions_hold() {
    let p0 = pod("Always", &["a"], &[]);
    let st = ready_state(vec![container_status("c1", "a", 0, ContainerState::Running, None)]);
    let first = status(&p0, &st, &Reasons::new());
    let mut p1 = p0.clone();
    p1.status = Some(first.clone());
    let mut image_ids = HashMap::new();
    image_ids.insert("sha256:abc".to_string(), "docker.io/library/busybox@sha256:def".to_string());
    let later = generate_pod_status(&StatusInputs {
        pod: &p1,
        state: &st,
        reasons: &Reasons::new(),
        image_ids: &image_ids,
        node_ip: "10.0.0.5",
        now: at(900),
        probes: &Default::default(),
        runtime_name: "tug",
    });
    assert_eq!(first, later, "nothing changed, so nothing to write");
}

#[test]
fn container_ids_carry_the_runtime_name() {
    // Upstream: `<runtime name>://<id>` from CRI Version, `containerd://...` under containerd.
    let p = pod("Always", &["a"], &[]);
    let prev = container_status("c1", "a", 0, ContainerState::Exited, Some(1));
    let st = ready_state(vec![container_status("c2", "a", 1, ContainerState::Running, None), prev]);
    let s = status_with_runtime(&p, &st, &Reasons::new(), "containerd");
    let cs = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(cs.container_id.as_deref(), Some("containerd://c2"));
    let last = cs.last_state.as_ref().and_then(|l| l.terminated.as_ref()).map(|t| t.container_id.as_deref());
    assert_eq!(last, Some(Some("containerd://c1")));
}
