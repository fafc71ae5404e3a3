//! The kubelet's part for pods bound to simulated nodes.
//!
//! [`plan`] is a pure function from a pod (and the time) to the next step: post a status, wait,
//! or remove a pod marked for deletion. The status follows what the kubelet reports: containers
//! waiting, running or terminated with upstream's reasons, restarts with CrashLoopBackOff delays
//! (10 s doubling up to 5 minutes), phase from the restart policy, and the pod conditions
//! PodReadyToStartContainers, Initialized, ContainersReady and Ready (readiness gates included).
//! [`run`] drives it with kube-runtime's controller: one reconcile per pod at a time, timers as
//! requeues, every status write guarded by the resourceVersion it was computed from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{self, Action, applier};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ipam::PodNetworks;
use crate::{ANNOTATION_EXIT_CODE, ANNOTATION_READY, ANNOTATION_RUN_SECONDS};

/// Pods reconciled at once.
const CONCURRENCY: u16 = 32;
/// The kubelet's container restart back-off: 10 s, doubling, at most 5 minutes.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What a pod's annotations ask its simulated containers to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    pub ready: bool,
    pub exit_code: Option<i32>,
    pub run: Duration,
}

impl Behaviour {
    pub fn of(pod: &Pod) -> Behaviour {
        let annotations = pod.metadata.annotations.as_ref();
        let get = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
        Behaviour {
            ready: get(ANNOTATION_READY) != Some("false"),
            exit_code: get(ANNOTATION_EXIT_CODE).and_then(|v| v.parse().ok()),
            run: get(ANNOTATION_RUN_SECONDS)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or_default(),
        }
    }
}

/// The next step for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to do until the pod changes.
    Idle,
    /// Nothing to do now; look again after this long.
    WaitFor(Duration),
    /// Post this status, then look again after `recheck` if set.
    Post { status: Box<PodStatus>, recheck: Option<Duration> },
    /// The pod is marked for deletion: remove it for good, as the kubelet does once its
    /// containers are gone.
    Remove,
}

fn restart_backoff(restart_count: i32) -> Duration {
    let doublings = restart_count.saturating_sub(1).clamp(0, 16) as u32;
    BACKOFF_INITIAL.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

fn after(at: Timestamp, wait: Duration) -> Timestamp {
    at.saturating_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MAX)
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or_default()
}

/// Keeps the sooner of two optional deadlines.
fn sooner(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The next step for `pod` at `now`, with `pod_ip` its address and `host_ip` its node's.
pub fn plan(pod: &Pod, now: Timestamp, pod_ip: &str, host_ip: &str) -> Step {
    if pod.metadata.deletion_timestamp.is_some() {
        return Step::Remove;
    }
    let Some(spec) = pod.spec.as_ref() else { return Step::Idle };
    let old = pod.status.clone().unwrap_or_default();
    if matches!(old.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Step::Idle;
    }
    let behaviour = Behaviour::of(pod);
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let mut status = old.clone();
    if old.phase.as_deref() != Some("Running") || old.pod_ip.is_none() {
        status.phase = Some("Running".into());
        status.host_ip = Some(host_ip.to_string());
        status.host_ips = Some(vec![k8s_openapi::api::core::v1::HostIP { ip: host_ip.to_string() }]);
        if !pod_ip.is_empty() {
            status.pod_ip = Some(pod_ip.to_string());
            status.pod_ips = Some(vec![PodIP { ip: pod_ip.to_string() }]);
        }
        status.start_time.get_or_insert(Time(now));
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let mut recheck = None;
    let mut statuses = Vec::with_capacity(spec.containers.len());
    for container in &spec.containers {
        let previous = old.container_statuses.iter().flatten().find(|s| s.name == container.name);
        // A container started by this step is reported running before it may terminate.
        let fresh = previous.is_none();
        let mut cs = previous.cloned().unwrap_or_else(|| ContainerStatus {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            image_id: format!("sim://{}", container.image.as_deref().unwrap_or("")),
            container_id: Some(format!("sim://{uid}/{}/0", container.name)),
            restart_count: 0,
            ready: false,
            started: Some(true),
            state: Some(running_since(now)),
            ..Default::default()
        });
        let state = cs.state.clone().unwrap_or_default();
        if let Some(running) = &state.running {
            let started_at = running.started_at.as_ref().map_or(now, |t| t.0);
            cs.ready = behaviour.ready;
            if fresh && behaviour.exit_code.is_some() {
                recheck = sooner(recheck, behaviour.run);
            } else if let Some(code) = behaviour.exit_code {
                let exit_at = after(started_at, behaviour.run);
                if now >= exit_at {
                    let terminated = ContainerStateTerminated {
                        exit_code: code,
                        reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                        started_at: Some(Time(started_at)),
                        finished_at: Some(Time(now)),
                        container_id: cs.container_id.clone(),
                        ..Default::default()
                    };
                    cs.ready = false;
                    cs.started = Some(false);
                    let restarts = match restart_policy {
                        "Never" => false,
                        "OnFailure" => code != 0,
                        _ => true,
                    };
                    if restarts {
                        cs.restart_count += 1;
                        cs.last_state = Some(ContainerState { terminated: Some(terminated), ..Default::default() });
                        let wait = restart_backoff(cs.restart_count);
                        cs.state = Some(ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some("CrashLoopBackOff".into()),
                                message: Some(format!(
                                    "back-off {}s restarting failed container={} pod={}_{}({uid})",
                                    wait.as_secs(),
                                    container.name,
                                    pod.metadata.name.as_deref().unwrap_or(""),
                                    pod.metadata.namespace.as_deref().unwrap_or(""),
                                )),
                            }),
                            ..Default::default()
                        });
                        recheck = sooner(recheck, wait);
                    } else {
                        cs.state = Some(ContainerState { terminated: Some(terminated), ..Default::default() });
                    }
                } else {
                    recheck = sooner(recheck, until(now, exit_at));
                }
            }
        } else if state.waiting.is_some() {
            let finished =
                cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.finished_at.as_ref());
            let restart_at = after(finished.map_or(now, |t| t.0), restart_backoff(cs.restart_count));
            if now >= restart_at {
                cs.state = Some(running_since(now));
                cs.started = Some(true);
                cs.ready = behaviour.ready;
                cs.container_id = Some(format!("sim://{uid}/{}/{}", container.name, cs.restart_count));
                if behaviour.exit_code.is_some() {
                    recheck = sooner(recheck, behaviour.run);
                }
            } else {
                recheck = sooner(recheck, until(now, restart_at));
            }
        }
        statuses.push(cs);
    }
    let all_terminated = statuses.iter().all(|s| s.state.as_ref().is_some_and(|st| st.terminated.is_some()));
    if all_terminated {
        let failed = statuses
            .iter()
            .any(|s| s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code != 0));
        status.phase = Some(if failed { "Failed" } else { "Succeeded" }.into());
    }
    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            let previous = old.init_container_statuses.iter().flatten().find(|s| s.name == c.name);
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            let mut cs = previous.cloned().unwrap_or_else(|| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: format!("sim://{}", c.image.as_deref().unwrap_or("")),
                container_id: Some(format!("sim://{uid}/{}/0", c.name)),
                ..Default::default()
            });
            if cs.state.is_none() {
                cs.state = Some(if sidecar {
                    running_since(now)
                } else {
                    ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 0,
                            reason: Some("Completed".into()),
                            started_at: Some(Time(now)),
                            finished_at: Some(Time(now)),
                            container_id: cs.container_id.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                });
                cs.ready = true;
                cs.started = Some(sidecar);
            }
            cs
        })
        .collect();
    status.conditions = Some(conditions(pod, &old, &statuses, status.phase.as_deref(), now));
    status.container_statuses = Some(statuses);
    if !init_statuses.is_empty() {
        status.init_container_statuses = Some(init_statuses);
    }
    if status == old {
        return recheck.map_or(Step::Idle, Step::WaitFor);
    }
    Step::Post { status: Box::new(status), recheck }
}

fn running_since(now: Timestamp) -> ContainerState {
    ContainerState { running: Some(ContainerStateRunning { started_at: Some(Time(now)) }), ..Default::default() }
}

/// The pod's conditions as the kubelet computes them; conditions owned by others (PodScheduled,
/// DisruptionTarget, readiness gates) are kept as they are.
fn conditions(
    pod: &Pod,
    old: &PodStatus,
    containers: &[ContainerStatus],
    phase: Option<&str>,
    now: Timestamp,
) -> Vec<PodCondition> {
    let existing = old.conditions.clone().unwrap_or_default();
    let unready: Vec<&str> = containers.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
    let completed = phase == Some("Succeeded");
    let containers_ready = if completed {
        ("False", Some("PodCompleted"), None)
    } else if unready.is_empty() {
        ("True", None, None)
    } else {
        ("False", Some("ContainersNotReady"), Some(format!("containers with unready status: [{}]", unready.join(" "))))
    };
    let gates: Vec<&str> = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .map(|g| g.iter().map(|g| g.condition_type.as_str()).collect())
        .unwrap_or_default();
    let unmet_gate = gates.iter().find(|g| !existing.iter().any(|c| c.type_ == **g && c.status == "True"));
    let ready = match (&containers_ready, unmet_gate) {
        (("True", ..), Some(gate)) => (
            "False",
            Some("ReadinessGatesNotReady"),
            Some(format!("corresponding condition of pod readiness gate \"{gate}\" does not exist.")),
        ),
        (c, _) => c.clone(),
    };
    let ours = [
        ("PodReadyToStartContainers", ("True", None, None)),
        ("Initialized", ("True", None, None)),
        ("Ready", ready),
        ("ContainersReady", containers_ready),
    ];
    let mut result = existing.clone();
    for (kind, (status, reason, message)) in ours {
        let condition = PodCondition {
            type_: kind.to_string(),
            status: status.to_string(),
            reason: reason.map(str::to_string),
            message,
            last_transition_time: Some(Time(now)),
            last_probe_time: None,
            observed_generation: None,
        };
        match result.iter_mut().find(|c| c.type_ == kind) {
            Some(c) => {
                let since = if c.status == condition.status { c.last_transition_time.clone() } else { Some(Time(now)) };
                *c = PodCondition {
                    last_transition_time: since,
                    observed_generation: c.observed_generation,
                    ..condition
                };
            }
            None => result.push(condition),
        }
    }
    result
}

struct Context {
    client: Client,
    /// Our nodes' names and InternalIPs.
    nodes: Arc<HashMap<String, String>>,
    nets: Arc<PodNetworks>,
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { return Ok(Action::await_change()) };
    let Some(host_ip) = ctx.nodes.get(node) else { return Ok(Action::await_change()) };
    let uid = pod.uid().unwrap_or_default();
    if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        ctx.nets.observe(node, &uid, ip);
    }
    let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    let pod_ip = if finished || pod.metadata.deletion_timestamp.is_some() {
        String::new()
    } else {
        ctx.nets.allocate(node, &uid).unwrap_or_default()
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
    let name = pod.name_any();
    match plan(&pod, Timestamp::now(), &pod_ip, host_ip) {
        Step::Idle => Ok(Action::await_change()),
        Step::WaitFor(wait) => Ok(Action::requeue(wait)),
        Step::Post { status, recheck } => {
            let patch = json!({ "metadata": { "resourceVersion": pod.resource_version() }, "status": status });
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {}
                // Gone, or changed since we read it: the watch brings the next state.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Ok(Action::await_change()),
                Err(e) => return Err(e),
            }
            debug!(pod = %name, phase = ?status.phase, "posted simulated pod status");
            Ok(recheck.map_or_else(Action::await_change, Action::requeue))
        }
        Step::Remove => {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                ..Default::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
            ctx.nets.release(&uid);
            Ok(Action::await_change())
        }
    }
}

fn error_policy(pod: Arc<Pod>, error: &kube::Error, _ctx: Arc<Context>) -> Action {
    warn!(pod = %pod.name_any(), error = %error, "simulating the pod failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Plays every pod bound to one of `nodes` until `shutdown`.
pub async fn run(
    client: Client,
    nodes: Arc<HashMap<String, String>>,
    nets: Arc<PodNetworks>,
    shutdown: CancellationToken,
) {
    let (reader, writer) = reflector::store();
    let released = nets.clone();
    let stream = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map_ok(move |event| {
            if let watcher::Event::Delete(pod) = &event
                && let Some(uid) = pod.metadata.uid.as_deref()
            {
                released.release(uid);
            }
            event
        })
        .reflect(writer)
        .applied_objects()
        .map_ok(|pod| ObjectRef::from_obj(&pod))
        .take_until(shutdown.cancelled_owned());
    let context = Arc::new(Context { client, nodes, nets });
    applier(
        |pod, ctx| Box::pin(reconcile(pod, ctx)),
        error_policy,
        context,
        reader,
        stream,
        controller::Config::default().concurrency(CONCURRENCY),
    )
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodReadinessGate, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn pod(annotations: &[(&str, &str)], restart_policy: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                annotations: Some(
                    annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("sim-0".into()),
                restart_policy: Some(restart_policy.into()),
                containers: vec![Container { name: "c".into(), image: Some("busybox".into()), ..Default::default() }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    /// Applies steps until the pod settles, as the controller would, returning the last wait.
    fn post(pod: &mut Pod, now: Timestamp) -> Option<Duration> {
        match plan(pod, now, "10.42.0.5", "172.16.0.1") {
            Step::Post { status, recheck } => {
                pod.status = Some(*status);
                recheck
            }
            other => panic!("expected a status to post, got {other:?}"),
        }
    }

    fn condition(pod: &Pod, kind: &str) -> String {
        let conditions = pod.status.as_ref().unwrap().conditions.as_ref().unwrap();
        conditions.iter().find(|c| c.type_ == kind).map(|c| c.status.clone()).unwrap_or_default()
    }

    #[test]
    fn a_new_pod_becomes_running_and_ready_and_keeps_its_scheduled_condition() {
        let mut p = pod(&[], "Always");
        assert_eq!(post(&mut p, at(0)), None);
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.42.0.5"));
        assert_eq!(status.host_ip.as_deref(), Some("172.16.0.1"));
        assert!(status.container_statuses.as_ref().unwrap()[0].ready);
        for kind in ["PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(condition(&p, kind), "True", "{kind}");
        }
        assert_eq!(plan(&p, at(5), "10.42.0.5", "172.16.0.1"), Step::Idle);
    }

    #[test]
    fn the_ready_annotation_keeps_containers_unready() {
        let mut p = pod(&[(ANNOTATION_READY, "false")], "Always");
        post(&mut p, at(0));
        assert_eq!(condition(&p, "Ready"), "False");
        assert_eq!(condition(&p, "ContainersReady"), "False");
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    }

    #[test]
    fn a_never_restarting_pod_succeeds_or_fails_after_its_run_time() {
        for (code, phase, reason) in [("0", "Succeeded", "Completed"), ("3", "Failed", "Error")] {
            let mut p = pod(&[(ANNOTATION_EXIT_CODE, code), (ANNOTATION_RUN_SECONDS, "2")], "Never");
            assert_eq!(post(&mut p, at(0)), Some(Duration::from_secs(2)));
            assert_eq!(plan(&p, at(1), "10.42.0.5", "172.16.0.1"), Step::WaitFor(Duration::from_secs(1)));
            post(&mut p, at(2));
            let status = p.status.as_ref().unwrap();
            assert_eq!(status.phase.as_deref(), Some(phase));
            let terminated =
                status.container_statuses.as_ref().unwrap()[0].state.as_ref().unwrap().terminated.clone().unwrap();
            assert_eq!(terminated.exit_code, code.parse::<i32>().unwrap());
            assert_eq!(terminated.reason.as_deref(), Some(reason));
            assert_eq!(condition(&p, "Ready"), "False");
            assert_eq!(plan(&p, at(10), "10.42.0.5", "172.16.0.1"), Step::Idle);
        }
    }

    #[test]
    fn a_failing_container_that_restarts_backs_off_then_runs_again() {
        let mut p = pod(&[(ANNOTATION_EXIT_CODE, "1")], "OnFailure");
        assert_eq!(post(&mut p, at(0)), Some(Duration::ZERO));
        assert_eq!(post(&mut p, at(0)), Some(Duration::from_secs(10)));
        let cs = p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].clone();
        assert_eq!(cs.restart_count, 1);
        assert_eq!(cs.state.unwrap().waiting.unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(cs.last_state.unwrap().terminated.unwrap().exit_code, 1);
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        assert_eq!(plan(&p, at(4), "10.42.0.5", "172.16.0.1"), Step::WaitFor(Duration::from_secs(6)));
        post(&mut p, at(10));
        let cs = p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].clone();
        assert!(cs.state.unwrap().running.is_some());
        // The second failure waits twice as long.
        assert_eq!(post(&mut p, at(10)), Some(Duration::from_secs(20)));
    }

    #[test]
    fn on_failure_pods_exiting_zero_succeed() {
        let mut p = pod(&[(ANNOTATION_EXIT_CODE, "0")], "OnFailure");
        post(&mut p, at(0));
        post(&mut p, at(0));
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Succeeded"));
        assert_eq!(condition(&p, "Ready"), "False");
    }

    #[test]
    fn readiness_gates_hold_ready_until_their_condition_is_true() {
        let mut p = pod(&[], "Always");
        p.spec.as_mut().unwrap().readiness_gates =
            Some(vec![PodReadinessGate { condition_type: "example.com/lb".into() }]);
        post(&mut p, at(0));
        assert_eq!(condition(&p, "ContainersReady"), "True");
        assert_eq!(condition(&p, "Ready"), "False");
        p.status.as_mut().unwrap().conditions.as_mut().unwrap().push(PodCondition {
            type_: "example.com/lb".into(),
            status: "True".into(),
            ..Default::default()
        });
        post(&mut p, at(1));
        assert_eq!(condition(&p, "Ready"), "True");
    }

    #[test]
    fn a_pod_marked_for_deletion_is_removed() {
        let mut p = pod(&[], "Always");
        p.metadata.deletion_timestamp = Some(Time(at(0)));
        assert_eq!(plan(&p, at(0), "", "172.16.0.1"), Step::Remove);
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(restart_backoff(1), Duration::from_secs(10));
        assert_eq!(restart_backoff(2), Duration::from_secs(20));
        assert_eq!(restart_backoff(6), Duration::from_secs(300));
        assert_eq!(restart_backoff(100), Duration::from_secs(300));
    }
}
