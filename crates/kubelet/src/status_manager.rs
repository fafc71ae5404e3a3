//! Pod status as the kubelet reports it (upstream's `generateAPIPodStatus`, `getPhase` and
//! `pkg/kubelet/status`): generated from the pod spec and what the runtime has, written through
//! the status subresource only when it changed. Only status is ever written here; the final
//! DELETE of a terminated pod (grace 0, uid precondition) is the status manager's too, as
//! upstream's.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus as ApiContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tug_runtime::cri::{ContainerState, ContainerStatus};

use crate::kuberuntime::actions::{is_sidecar, restart_policy, should_restart};
use crate::kuberuntime::{PodRuntimeState, Reasons};
use crate::qos;

pub const CONTAINER_CREATING: &str = "ContainerCreating";
pub const POD_INITIALIZING: &str = "PodInitializing";

/// Everything a pod's status is generated from.
#[derive(Debug)]
pub struct StatusInputs<'a> {
    pub pod: &'a Pod,
    pub state: &'a PodRuntimeState,
    pub reasons: &'a Reasons,
    /// Image ID (`sha256:..`) to what `imageID` shows (`repo@sha256:..`).
    pub image_ids: &'a HashMap<String, String>,
    pub node_ip: &'a str,
    pub now: SystemTime,
    /// The containers' probe results (readiness and startup decide `ready` and `started`).
    pub probes: &'a crate::prober::ProbeResults,
    /// The runtime's name from CRI `Version` (`containerd`, `tug` for the built-in one): container
    /// IDs show as `<runtime>://<id>`, as upstream's `kubecontainer.ContainerID`.
    pub runtime_name: &'a str,
}

/// A time as the API carries it: whole seconds, so that a status read back compares equal.
pub fn api_time(t: SystemTime) -> Time {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Time(jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0)).unwrap_or_default())
}

fn container_id(runtime: &str, id: &str) -> String {
    format!("{runtime}://{id}")
}

fn terminated(runtime: &str, s: &ContainerStatus) -> ContainerStateTerminated {
    let exit_code = s.exit_code.unwrap_or(0);
    let reason = s.reason.clone().unwrap_or_else(|| if exit_code == 0 { "Completed".into() } else { "Error".into() });
    ContainerStateTerminated {
        exit_code,
        signal: None,
        reason: Some(reason),
        message: s.message.clone().filter(|m| !m.is_empty()),
        started_at: s.started_at.map(api_time),
        finished_at: s.finished_at.map(api_time),
        container_id: Some(container_id(runtime, &s.id)),
    }
}

/// Whether the runtime's container counts as terminated (exited, or created and failed to start).
fn is_terminated(s: &ContainerStatus) -> bool {
    s.state == ContainerState::Exited || (s.state == ContainerState::Created && s.exit_code.is_some())
}

fn api_state(runtime: &str, s: &ContainerStatus) -> ApiState {
    match s.state {
        ContainerState::Running => ApiState {
            running: Some(ContainerStateRunning { started_at: s.started_at.map(api_time) }),
            ..Default::default()
        },
        _ if is_terminated(s) => ApiState { terminated: Some(terminated(runtime, s)), ..Default::default() },
        _ => ApiState {
            waiting: Some(ContainerStateWaiting { reason: Some(CONTAINER_CREATING.into()), message: None }),
            ..Default::default()
        },
    }
}

fn waiting(reason: &str, message: Option<String>) -> ApiState {
    ApiState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: message.filter(|m| !m.is_empty()),
        }),
        ..Default::default()
    }
}

/// One container's status (upstream's `convertToAPIContainerStatuses`).
fn container_status(inputs: &StatusInputs<'_>, c: &Container, default_waiting: &str) -> ApiContainerStatus {
    let mut out = ApiContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        restart_count: 0,
        ready: false,
        started: Some(false),
        ..Default::default()
    };
    let reason = inputs.reasons.get(&c.name);
    let Some(latest) = inputs.state.latest(&c.name) else {
        out.state = Some(match reason {
            Some((r, m)) => waiting(r, Some(m.clone())),
            None => waiting(default_waiting, None),
        });
        return out;
    };
    out.container_id = Some(container_id(inputs.runtime_name, &latest.id));
    out.image_id = inputs.image_ids.get(&latest.image_ref).cloned().unwrap_or_else(|| latest.image_ref.clone());
    out.restart_count = i32::try_from(latest.metadata.attempt).unwrap_or(i32::MAX);
    out.state = Some(api_state(inputs.runtime_name, latest));
    if let Some(prev) = inputs.state.previous(&c.name).filter(|p| is_terminated(p)) {
        out.last_state =
            Some(ApiState { terminated: Some(terminated(inputs.runtime_name, prev)), ..Default::default() });
    }
    let running = latest.state == ContainerState::Running;
    if running {
        out.ready = inputs.probes.ready(&latest.id, c);
        out.started = Some(inputs.probes.started(&latest.id, c));
    } else if let Some((r, m)) = reason
        && should_restart(inputs.pod, Some(latest))
    {
        // A container that will be started again shows why it is waiting; what it ended with
        // becomes its last state.
        if is_terminated(latest) {
            out.last_state =
                Some(ApiState { terminated: Some(terminated(inputs.runtime_name, latest)), ..Default::default() });
        }
        out.state = Some(waiting(r, Some(m.clone())));
    }
    out
}

fn is_terminated_state(s: &ApiContainerStatus) -> Option<&ContainerStateTerminated> {
    s.state.as_ref().and_then(|st| st.terminated.as_ref())
}

/// The pod phase (upstream's `getPhase`).
pub fn phase(pod: &Pod, init: &[ApiContainerStatus], app: &[ApiContainerStatus]) -> &'static str {
    let policy = restart_policy(pod);
    let mut pending_init = 0;
    let mut failed_init = 0;
    let init_specs = pod.spec.as_ref().and_then(|s| s.init_containers.as_deref()).unwrap_or_default();
    for (s, c) in init.iter().zip(init_specs) {
        if is_sidecar(c) {
            // A sidecar only holds the pod back until it first runs.
            if s.state.as_ref().is_some_and(|st| st.running.is_some()) || s.restart_count > 0 {
                continue;
            }
            pending_init += 1;
            continue;
        }
        match is_terminated_state(s) {
            Some(t) if t.exit_code == 0 => {}
            Some(_) => failed_init += 1,
            None => {
                let last_failed =
                    s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).is_some_and(|t| t.exit_code != 0);
                if last_failed { failed_init += 1 } else { pending_init += 1 }
            }
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || failed_init > 0 {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in app {
        let st = s.state.as_ref();
        if st.is_some_and(|st| st.running.is_some()) {
            running += 1;
        } else if let Some(t) = st.and_then(|st| st.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s.last_state.as_ref().is_some_and(|l| l.terminated.is_some()) {
            // Waiting to restart (CrashLoopBackOff): it ran and stopped.
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

fn condition(type_: &str, ok: bool, reason: Option<String>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: if ok { None } else { reason },
        message: if ok { None } else { message },
        ..Default::default()
    }
}

fn names(list: &[String]) -> String {
    format!("[{}]", list.join(" "))
}

/// The pod's whole status.
pub fn generate_pod_status(inputs: &StatusInputs<'_>) -> PodStatus {
    let pod = inputs.pod;
    let old = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let init_specs = spec.and_then(|s| s.init_containers.as_deref()).unwrap_or_default();
    let app_specs = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let init: Vec<_> = init_specs.iter().map(|c| container_status(inputs, c, POD_INITIALIZING)).collect();
    let init_ok = |(s, c): (&ApiContainerStatus, &Container)| {
        is_terminated_state(s).is_some_and(|t| t.exit_code == 0)
            || (is_sidecar(c) && s.state.as_ref().is_some_and(|st| st.running.is_some()))
    };
    let initialized = init.iter().zip(init_specs).all(init_ok);
    let app_waiting = if initialized { CONTAINER_CREATING } else { POD_INITIALIZING };
    let app: Vec<_> = app_specs.iter().map(|c| container_status(inputs, c, app_waiting)).collect();

    let mut phase = phase(pod, &init, &app).to_string();
    let terminal = matches!(old.phase.as_deref(), Some("Succeeded" | "Failed"));
    if terminal {
        // A terminal phase is final, with the reason it was reached for (e.g. `Evicted`).
        phase = old.phase.clone().unwrap_or_default();
    }

    let completed = phase == "Succeeded";
    let unready: Vec<String> = app.iter().filter(|s| !s.ready).map(|s| s.name.clone()).collect();
    let incomplete: Vec<String> =
        init.iter().zip(init_specs).filter(|p| !init_ok(*p)).map(|(s, _)| s.name.clone()).collect();
    let (cr_reason, cr_message) = if completed {
        (Some("PodCompleted".to_string()), None)
    } else {
        (Some("ContainersNotReady".to_string()), Some(format!("containers with unready status: {}", names(&unready))))
    };
    let containers_ready = unready.is_empty() && !completed;
    let mut ready = containers_ready;
    let (mut ready_reason, mut ready_message) = (cr_reason.clone(), cr_message.clone());
    if containers_ready {
        let old_conditions = old.conditions.as_deref().unwrap_or_default();
        let missing: Vec<String> = spec
            .and_then(|s| s.readiness_gates.as_ref())
            .into_iter()
            .flatten()
            .filter(|g| !old_conditions.iter().any(|c| c.type_ == g.condition_type && c.status == "True"))
            .map(|g| g.condition_type.clone())
            .collect();
        if !missing.is_empty() {
            ready = false;
            ready_reason = Some("ReadinessGatesNotReady".into());
            ready_message = Some(
                missing
                    .iter()
                    .map(|g| format!("corresponding condition of pod readiness gate {g:?} does not exist."))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
    }
    let sandbox_ready = inputs.state.ready_sandbox().is_some();
    let (init_reason, init_message) = if completed {
        (Some("PodCompleted".to_string()), None)
    } else {
        (
            Some("ContainersNotInitialized".to_string()),
            Some(format!("containers with incomplete status: {}", names(&incomplete))),
        )
    };
    let mine = vec![
        condition("PodReadyToStartContainers", sandbox_ready, None, None),
        condition("Initialized", initialized || completed, init_reason, init_message),
        condition("Ready", ready, ready_reason, ready_message),
        condition("ContainersReady", containers_ready, cr_reason, cr_message),
    ];
    let now = api_time(inputs.now);
    let old_conditions = old.conditions.clone().unwrap_or_default();
    let mut conditions: Vec<PodCondition> = mine
        .into_iter()
        .map(|mut c| {
            let before = old_conditions.iter().find(|o| o.type_ == c.type_);
            c.last_transition_time = match before {
                Some(o) if o.status == c.status => o.last_transition_time.clone().or_else(|| Some(now.clone())),
                _ => Some(now.clone()),
            };
            c.observed_generation = pod.metadata.generation;
            c
        })
        .collect();
    let ours: BTreeSet<&str> = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"].into();
    conditions.extend(old_conditions.iter().filter(|c| !ours.contains(c.type_.as_str())).cloned());

    let pod_ips: Vec<String> = if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
        vec![inputs.node_ip.to_string()]
    } else {
        inputs.state.sandboxes.first().map(|s| s.ips.clone()).unwrap_or_default()
    };
    let (pod_ip, pod_ips) = if pod_ips.is_empty() {
        // A stopped sandbox reports no address; a finished pod keeps the one it had.
        (old.pod_ip.clone(), old.pod_ips.clone())
    } else {
        (pod_ips.first().cloned(), Some(pod_ips.into_iter().map(|ip| PodIP { ip }).collect()))
    };
    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        host_ip: Some(inputs.node_ip.to_string()),
        host_ips: Some(vec![HostIP { ip: inputs.node_ip.to_string() }]),
        pod_ip,
        pod_ips,
        start_time: old.start_time.clone().or(Some(now)),
        qos_class: Some(qos::pod_qos(pod).as_str().into()),
        container_statuses: Some(app),
        init_container_statuses: (!init_specs.is_empty()).then_some(init),
        observed_generation: pod.metadata.generation,
        nominated_node_name: old.nominated_node_name.clone(),
        reason: if terminal { old.reason.clone() } else { None },
        message: if terminal { old.message.clone() } else { None },
        ..Default::default()
    }
}

/// Errors writing status or deleting a finished pod.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("patching the status of pod {namespace}/{name}: {source}")]
    Patch {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {namespace}/{name}: {source}")]
    Delete {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Writes pod statuses, skipping writes that would change nothing.
pub struct StatusManager {
    client: kube::Client,
    last: Mutex<HashMap<String, PodStatus>>,
}

impl std::fmt::Debug for StatusManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusManager").finish_non_exhaustive()
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl StatusManager {
    pub fn new(client: kube::Client) -> Self {
        StatusManager { client, last: Mutex::new(HashMap::new()) }
    }

    /// Writes `status` unless it is what the pod already has (or what was last written).
    pub async fn set_status(&self, pod: &Pod, status: PodStatus) -> Result<(), StatusError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let unchanged = {
            let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            last.get(&uid).or(pod.status.as_ref()).is_some_and(|s| *s == status)
        };
        if unchanged {
            return Ok(());
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let patch = serde_json::json!({ "status": status });
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {
                tracing::debug!(pod = %name, phase = ?status.phase, "pod status written");
                self.last.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, status);
                Ok(())
            }
            // The pod is gone: nothing to report to.
            Err(e) if not_found(&e) => Ok(()),
            Err(source) => Err(StatusError::Patch { namespace, name, source }),
        }
    }

    /// Deletes a pod whose containers are all gone (grace 0, only this very pod).
    pub async fn delete_pod(&self, pod: &Pod) -> Result<(), StatusError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) || matches!(&e, kube::Error::Api(s) if s.code == 409) => Ok(()),
            Err(source) => Err(StatusError::Delete { namespace, name, source }),
        }
    }

    pub fn forget(&self, uid: &str) {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

#[cfg(test)]
#[path = "status_manager_tests.rs"]
mod tests;
