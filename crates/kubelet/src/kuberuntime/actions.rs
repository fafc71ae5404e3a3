//! What a sync must do to converge a pod (upstream's `computePodActions`), computed from the
//! pod spec and what the runtime has, without side effects.

use k8s_openapi::api::core::v1::{Container, Pod};
use tug_runtime::cri::{ContainerState, ContainerStatus};

use super::PodRuntimeState;
use super::container::container_hash;
use super::labels;

/// A container to stop, and why (for the Killing event and the logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerToKill {
    pub id: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodActions {
    /// Stop every container and the sandbox before anything else (the sandbox is gone or
    /// not ready and a new one will be made).
    pub kill_pod: bool,
    pub create_sandbox: bool,
    /// The sandbox attempt number for a new sandbox.
    pub attempt: u32,
    /// The ready sandbox, when one is kept.
    pub sandbox_id: Option<String>,
    /// Index into `spec.initContainers` of the init container to start next.
    pub next_init_container: Option<usize>,
    /// An init container failed and the pod's restartPolicy is Never: the pod has failed.
    pub init_failed: bool,
    /// Indexes into `spec.containers` to start.
    pub containers_to_start: Vec<usize>,
    pub containers_to_kill: Vec<ContainerToKill>,
}

pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
}

fn exited(s: &ContainerStatus) -> bool {
    // A container that was created but failed to start counts as exited (StartError).
    matches!(s.state, ContainerState::Exited | ContainerState::Created | ContainerState::Unknown)
}

fn succeeded(s: &ContainerStatus) -> bool {
    s.state == ContainerState::Exited && s.exit_code == Some(0)
}

/// Upstream's `ShouldContainerBeRestarted` for a container whose latest instance is not running.
pub fn should_restart(pod: &Pod, latest: Option<&ContainerStatus>) -> bool {
    let Some(latest) = latest else { return true };
    if !exited(latest) {
        return false;
    }
    match restart_policy(pod) {
        "Never" => false,
        "OnFailure" => !succeeded(latest),
        _ => true,
    }
}

/// Whether every init container has run to success (or there are none).
/// A sidecar counts once it runs.
pub fn init_done(pod: &Pod, state: &PodRuntimeState) -> bool {
    init_containers(pod).iter().all(|c| {
        state.latest(&c.name).is_some_and(|s| succeeded(s) || (is_sidecar(c) && s.state == ContainerState::Running))
    })
}

/// An init container with `restartPolicy: Always`: a sidecar that keeps running beside the app
/// containers (Kubernetes 1.29+).
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().and_then(|s| s.init_containers.as_deref()).unwrap_or_default()
}

fn app_containers(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default()
}

pub fn compute_pod_actions(pod: &Pod, state: &PodRuntimeState) -> PodActions {
    let mut actions = PodActions::default();
    let newest = state.sandboxes.first();
    let ready = newest.filter(|s| s.state == tug_runtime::cri::PodSandboxState::Ready);
    if ready.is_none() {
        actions.create_sandbox = true;
        actions.attempt = newest.map_or(0, |s| s.metadata.attempt + 1);
        // Whatever runs in the old sandbox goes with it.
        actions.kill_pod = newest.is_some() || state.containers.iter().any(|c| c.state == ContainerState::Running);
        // A pod that must not restart does not get a second sandbox once its containers ran.
        if restart_policy(pod) == "Never" && actions.attempt != 0 && !state.containers.is_empty() {
            actions.create_sandbox = false;
            return actions;
        }
        let to_start: Vec<usize> = app_containers(pod)
            .iter()
            .enumerate()
            .filter(|(_, c)| !(restart_policy(pod) == "OnFailure" && state.latest(&c.name).is_some_and(succeeded)))
            .map(|(i, _)| i)
            .collect();
        if to_start.is_empty() && init_done(pod, state) && newest.is_some() {
            actions.create_sandbox = false;
            return actions;
        }
        if !init_containers(pod).is_empty() && !init_done(pod, state) {
            actions.next_init_container = Some(0);
            return actions;
        }
        actions.containers_to_start = to_start;
        return actions;
    }
    actions.sandbox_id = ready.map(|s| s.id.clone());

    // Init containers, one at a time in order, each to success.
    for (i, c) in init_containers(pod).iter().enumerate() {
        if is_sidecar(c) {
            // Started in order like any init container, then kept running: the next one may
            // start as soon as it runs; restarted whenever it exits.
            match state.latest(&c.name) {
                Some(s) if s.state == ContainerState::Running => continue,
                _ => {
                    actions.next_init_container = Some(i);
                    return actions;
                }
            }
        }
        match state.latest(&c.name) {
            None => {
                actions.next_init_container = Some(i);
                return actions;
            }
            Some(s) if s.state == ContainerState::Running => return actions,
            Some(s) if succeeded(s) => continue,
            Some(_) => {
                if restart_policy(pod) == "Never" {
                    actions.init_failed = true;
                } else {
                    actions.next_init_container = Some(i);
                }
                return actions;
            }
        }
    }

    for (i, c) in app_containers(pod).iter().enumerate() {
        let latest = state.latest(&c.name);
        match latest {
            Some(s) if s.state == ContainerState::Running => {
                let hash = s.annotations.get(labels::CONTAINER_HASH);
                if hash.is_some_and(|h| *h != container_hash(c)) {
                    actions.containers_to_kill.push(ContainerToKill {
                        id: s.id.clone(),
                        name: c.name.clone(),
                        reason: format!("Container {} definition changed, will be restarted", c.name),
                    });
                    actions.containers_to_start.push(i);
                }
            }
            _ if should_restart(pod, latest) => actions.containers_to_start.push(i),
            _ => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kuberuntime::tests_support::{container_status, pod, sandbox};
    use tug_runtime::cri::PodSandboxState;

    fn state(sandboxes: Vec<tug_runtime::cri::PodSandboxStatus>, containers: Vec<ContainerStatus>) -> PodRuntimeState {
        PodRuntimeState { sandboxes, containers }
    }

    #[test]
    fn a_new_pod_gets_a_sandbox_and_all_containers() {
        let p = pod("Always", &["a", "b"], &[]);
        let a = compute_pod_actions(&p, &state(vec![], vec![]));
        assert!(a.create_sandbox);
        assert!(!a.kill_pod);
        assert_eq!(a.attempt, 0);
        assert_eq!(a.containers_to_start, vec![0, 1]);
    }

    #[test]
    fn a_dead_sandbox_is_replaced_and_everything_killed() {
        let p = pod("Always", &["a"], &[]);
        let s = state(
            vec![sandbox("s1", 0, PodSandboxState::NotReady)],
            vec![container_status("c1", "a", 0, ContainerState::Running, None)],
        );
        let a = compute_pod_actions(&p, &s);
        assert!(a.create_sandbox && a.kill_pod);
        assert_eq!(a.attempt, 1);
        assert_eq!(a.containers_to_start, vec![0]);
    }

    #[test]
    fn never_pods_do_not_get_a_second_sandbox() {
        let p = pod("Never", &["a"], &[]);
        let s = state(
            vec![sandbox("s1", 0, PodSandboxState::NotReady)],
            vec![container_status("c1", "a", 0, ContainerState::Exited, Some(1))],
        );
        let a = compute_pod_actions(&p, &s);
        assert!(!a.create_sandbox);
        assert!(a.containers_to_start.is_empty());
    }

    #[test]
    fn restart_policy_decides_which_exited_containers_start_again() {
        let ready = || vec![sandbox("s1", 0, PodSandboxState::Ready)];
        let exited = |code| vec![container_status("c1", "a", 0, ContainerState::Exited, Some(code))];
        for (policy, code, restart) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 0, false),
            ("Never", 1, false),
        ] {
            let a = compute_pod_actions(&pod(policy, &["a"], &[]), &state(ready(), exited(code)));
            assert_eq!(!a.containers_to_start.is_empty(), restart, "{policy} exit {code}");
            assert!(!a.create_sandbox);
        }
        // A running container is left alone.
        let running = vec![container_status("c1", "a", 0, ContainerState::Running, None)];
        let a = compute_pod_actions(&pod("Always", &["a"], &[]), &state(ready(), running));
        assert!(a.containers_to_start.is_empty() && a.containers_to_kill.is_empty());
    }

    #[test]
    fn init_containers_run_in_order_before_app_containers() {
        let p = pod("Always", &["app"], &["i1", "i2"]);
        let ready = || vec![sandbox("s1", 0, PodSandboxState::Ready)];
        let a = compute_pod_actions(&p, &state(ready(), vec![]));
        assert_eq!(a.next_init_container, Some(0));
        assert!(a.containers_to_start.is_empty());
        let i1_running = vec![container_status("c1", "i1", 0, ContainerState::Running, None)];
        let a = compute_pod_actions(&p, &state(ready(), i1_running));
        assert_eq!(a.next_init_container, None);
        assert!(a.containers_to_start.is_empty());
        let i1_done = vec![container_status("c1", "i1", 0, ContainerState::Exited, Some(0))];
        assert_eq!(compute_pod_actions(&p, &state(ready(), i1_done)).next_init_container, Some(1));
        let both_done = vec![
            container_status("c2", "i2", 0, ContainerState::Exited, Some(0)),
            container_status("c1", "i1", 0, ContainerState::Exited, Some(0)),
        ];
        let a = compute_pod_actions(&p, &state(ready(), both_done));
        assert_eq!(a.next_init_container, None);
        assert_eq!(a.containers_to_start, vec![0]);
        // A failed init container restarts, or fails the pod under Never.
        let failed = vec![container_status("c1", "i1", 0, ContainerState::Exited, Some(3))];
        assert_eq!(compute_pod_actions(&p, &state(ready(), failed.clone())).next_init_container, Some(0));
        let a = compute_pod_actions(&pod("Never", &["app"], &["i1"]), &state(ready(), failed));
        assert!(a.init_failed);
        assert_eq!(a.next_init_container, None);
    }

    #[test]
    fn sidecars_start_first_keep_running_and_restart() {
        let mut p = pod("Never", &["app"], &["side"]);
        p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].restart_policy = Some("Always".into());
        let ready = || vec![sandbox("s1", 0, PodSandboxState::Ready)];
        assert_eq!(compute_pod_actions(&p, &state(ready(), vec![])).next_init_container, Some(0));
        let running = vec![container_status("c1", "side", 0, ContainerState::Running, None)];
        let a = compute_pod_actions(&p, &state(ready(), running));
        assert_eq!(a.next_init_container, None);
        assert_eq!(a.containers_to_start, vec![0]);
        let exited = vec![
            container_status("c2", "app", 0, ContainerState::Running, None),
            container_status("c1", "side", 0, ContainerState::Exited, Some(1)),
        ];
        let a = compute_pod_actions(&p, &state(ready(), exited));
        assert_eq!(a.next_init_container, Some(0), "a sidecar restarts even under Never");
    }

    #[test]
    fn a_changed_image_restarts_the_container() {
        let p = pod("Always", &["a"], &[]);
        let mut running = container_status("c1", "a", 0, ContainerState::Running, None);
        running.annotations.insert(labels::CONTAINER_HASH.into(), "0".into());
        let a = compute_pod_actions(&p, &state(vec![sandbox("s1", 0, PodSandboxState::Ready)], vec![running]));
        assert_eq!(a.containers_to_kill.len(), 1);
        assert_eq!(a.containers_to_start, vec![0]);
    }
}
