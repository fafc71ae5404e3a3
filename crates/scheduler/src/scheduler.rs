//! The scheduler's main loop (upstream's `scheduler.go` and `schedule_one.go`): informers
//! (kube-runtime reflectors) of nodes and pods feed the queue and the node cache; each cycle
//! pops one pod, brings its snapshot up to date from the cache, runs the framework of the
//! pod's profile, assumes the pod on the chosen node and binds it in the background; a pod
//! that fits nowhere gets `PodScheduled=False` and a `FailedScheduling` event, and when
//! preemption chose a node for it, `nominatedNodeName` while its victims are evicted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backend::cache::{Cache, Snapshot};
use crate::cache::InformerListers;
use crate::config::SchedulerConfig;
use crate::framework::{CycleState, Framework, Nomination, ScheduleError};
use crate::plugins::image_locality;
use crate::queue::SchedulingQueue;

/// The name pods put in `spec.schedulerName` to be scheduled by us (the default).
pub const SCHEDULER_NAME: &str = "default-scheduler";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

pub(crate) fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

pub(crate) fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The pod's `spec.schedulerName` (the default when unset).
fn scheduler_name(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).unwrap_or(SCHEDULER_NAME)
}

/// Whether the default profile should place the pod.
pub fn responsible_for(pod: &Pod) -> bool {
    scheduler_name(pod) == SCHEDULER_NAME
}

/// What of a pending pod, when it changes, may change where it fits.
fn pod_fingerprint(pod: &Pod) -> String {
    json!([pod.spec, pod.metadata.labels, pod.metadata.annotations]).to_string()
}

/// What of a node, when it changes, may let unschedulable pods fit.
fn node_fingerprint(node: &Node) -> String {
    json!([node.spec, node.metadata.labels, node.status.as_ref().map(|s| &s.allocatable)]).to_string()
}

/// The queueing hints for an assigned pod's deletion: every plugin but NodePorts may be
/// helped by any deletion; NodePorts only by one that frees a port the pod wants.
fn assigned_pod_delete_helps(pods: &Store<Pod>, key: &str, plugins: &[&'static str], deleted: &Pod) -> bool {
    if plugins.is_empty() || plugins.iter().any(|p| *p != crate::plugins::node_ports::NAME) {
        return true;
    }
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    pods.get(&ObjectRef::new(name).within(ns))
        .is_none_or(|waiting| crate::plugins::node_ports::is_schedulable_after_pod_deleted(&waiting, deleted))
}

/// Shared by the loop, the event handlers and the binding tasks.
struct Scheduler {
    client: Client,
    /// One framework per profile, by scheduler name.
    profiles: HashMap<String, Arc<Framework>>,
    queue: Arc<SchedulingQueue>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    /// The nodes with their bound and assumed pods, kept by the informers' events.
    cache: Mutex<Cache>,
    /// The last FailedScheduling event per pod uid: (event name, count, message).
    events: Mutex<HashMap<String, (String, i32, String)>>,
}

/// Runs the scheduler with the default profile until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    run_with_config(client, SchedulerConfig::default(), shutdown).await
}

/// Runs the scheduler with the profiles of `config` until `shutdown`.
pub async fn run_with_config(client: Client, config: SchedulerConfig, shutdown: CancellationToken) {
    let (listers, tasks) = InformerListers::start(&client);
    let shared: Arc<dyn crate::framework::Listers> = Arc::new(listers.clone());
    let profiles = config
        .profiles
        .iter()
        .map(|p| {
            let mut framework = crate::plugins::build(p, shared.clone(), Some(&client));
            framework.percentage_of_nodes_to_score = config.percentage_of_nodes_to_score;
            (p.scheduler_name.clone(), Arc::new(framework))
        })
        .collect();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        ready = listers.wait_until_ready() => {
            if ready {
                run_profiles(client, profiles, shutdown).await;
            } else {
                warn!("the scheduler's informers stopped before they synced");
            }
        }
    }
    for t in tasks {
        t.abort();
    }
}

/// Runs the scheduler with `framework` as the default profile until `shutdown`.
pub async fn run_with(client: Client, framework: Arc<Framework>, shutdown: CancellationToken) {
    run_profiles(client, HashMap::from([(SCHEDULER_NAME.to_string(), framework)]), shutdown).await
}

async fn run_profiles(client: Client, profiles: HashMap<String, Arc<Framework>>, shutdown: CancellationToken) {
    let (nodes, node_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let sched = Arc::new(Scheduler {
        client: client.clone(),
        profiles,
        queue: Arc::new(SchedulingQueue::new()),
        nodes,
        pods,
        cache: Mutex::new(Cache::new()),
        events: Mutex::default(),
    });
    let node_task = tokio::spawn(watch_nodes(sched.clone(), Api::all(client.clone()), node_writer));
    let pod_task = tokio::spawn(watch_pods(sched.clone(), Api::all(client), pod_writer));
    let tick_task = tokio::spawn(flush_periodically(sched.queue.clone()));
    // Claims, volumes and classes changing may make pods VolumeBinding rejected fit.
    let volume_task =
        tokio::spawn(crate::plugins::volume_binding::watch_for_requeue(sched.client.clone(), sched.queue.clone()));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = scheduling_loop(sched.clone()) => {}
    }
    node_task.abort();
    pod_task.abort();
    tick_task.abort();
    volume_task.abort();
}

async fn flush_periodically(queue: Arc<SchedulingQueue>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        queue.flush_backoff_completed();
        n += 1;
        if n.is_multiple_of(30) {
            queue.flush_unschedulable_left_over();
        }
    }
}

async fn watch_nodes(sched: Arc<Scheduler>, api: Api<Node>, writer: reflector::store::Writer<Node>) {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff()).boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                lock(&sched.cache).add_or_update_node(Arc::new(node.clone()));
                let print = node_fingerprint(&node);
                match seen.insert(node.name_any(), print.clone()) {
                    None => sched.queue.move_all_to_active_or_backoff("NodeAdd"),
                    Some(old) if old != print => sched.queue.move_all_to_active_or_backoff("NodeUpdate"),
                    Some(_) => {}
                }
            }
            Ok(watcher::Event::Delete(node)) => {
                seen.remove(&node.name_any());
                lock(&sched.cache).remove_node(&node.name_any());
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "node watch failed; retrying"),
        }
    }
}

async fn watch_pods(sched: Arc<Scheduler>, api: Api<Pod>, writer: reflector::store::Writer<Pod>) {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut bound: std::collections::HashSet<String> = std::collections::HashSet::new();
    // The pods of a (re)list, to drop from the cache those whose deletion the watch missed.
    let mut listed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff()).boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitDone) => lock(&sched.cache).retain_pods(&std::mem::take(&mut listed)),
            Ok(ev @ (watcher::Event::Apply(_) | watcher::Event::InitApply(_))) => {
                let initial = matches!(ev, watcher::Event::InitApply(_));
                let (watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = ev else { continue };
                let key = pod_key(&pod);
                if initial {
                    listed.insert(key.clone());
                }
                lock(&sched.cache).update_pod(Arc::new(pod.clone()));
                if node_name(&pod).is_some() || is_terminal(&pod) || pod.metadata.deletion_timestamp.is_some() {
                    pending.remove(&key);
                    sched.queue.delete(&key);
                    if node_name(&pod).is_some() {
                        let waiting = sched.queue.lens().2 > 0;
                        if !is_terminal(&pod) {
                            // A pod newly on a node may satisfy pending pods' pod affinity or
                            // spread (upstream's AssignedPodAdd event).
                            if bound.insert(key) && waiting {
                                sched.queue.move_all_to_active_or_backoff("AssignedPodAdd");
                            }
                        } else if bound.remove(&key) && waiting {
                            // A finished pod no longer holds its node's resources.
                            sched.queue.move_all_to_active_or_backoff("AssignedPodTerminal");
                        }
                    }
                    continue;
                }
                if !sched.profiles.contains_key(scheduler_name(&pod)) {
                    continue;
                }
                let print = pod_fingerprint(&pod);
                let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                match pending.insert(key.clone(), print.clone()) {
                    None => sched.queue.add(&key, priority),
                    Some(old) if old != print => sched.queue.update(&key, priority),
                    Some(_) => {}
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                let key = pod_key(&pod);
                pending.remove(&key);
                bound.remove(&key);
                sched.queue.delete(&key);
                lock(&sched.cache).remove_pod(&key);
                if let Some(uid) = pod.uid() {
                    lock(&sched.events).remove(&uid);
                }
                if node_name(&pod).is_some() {
                    let pods = &sched.pods;
                    sched.queue.move_if("AssignedPodDelete", |key, plugins| {
                        assigned_pod_delete_helps(pods, key, plugins, &pod)
                    });
                }
            }
            Err(e) => debug!(error = %e, "pod watch failed; retrying"),
        }
    }
}

async fn scheduling_loop(sched: Arc<Scheduler>) {
    if sched.nodes.wait_until_ready().await.is_err() || sched.pods.wait_until_ready().await.is_err() {
        warn!("the scheduler's informers stopped before they synced");
        return;
    }
    info!("scheduler started");
    // Kept across cycles: each cycle copies in only the nodes changed since the last one.
    let mut snapshot = Snapshot::default();
    loop {
        let (key, cycle) = sched.queue.pop().await;
        let span = info_span!("schedule_one", pod = %key, cycle);
        schedule_one(&sched, &mut snapshot, &key, cycle).instrument(span).await;
    }
}

async fn schedule_one(sched: &Arc<Scheduler>, snapshot: &mut Snapshot, key: &str, cycle: u64) {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(pod) = sched.pods.get(&ObjectRef::new(name).within(ns)) else {
        sched.queue.done(key);
        return;
    };
    let Some(framework) = sched.profiles.get(scheduler_name(&pod)).cloned() else {
        sched.queue.done(key);
        return;
    };
    if node_name(&pod).is_some() || pod.metadata.deletion_timestamp.is_some() {
        sched.queue.done(key);
        return;
    }
    {
        let mut cache = lock(&sched.cache);
        cache.update_snapshot(snapshot);
        cache.add_nominated_pods(snapshot, &pod);
    }
    let mut state = CycleState::new();
    state.write(image_locality::SNAPSHOT_IMAGES, image_locality::SnapshotImages(snapshot.images()));
    let result = framework.schedule_pod(&mut state, &pod, snapshot.nodes());
    // Only scoring reads the image counts. The state goes on to the binding task, and a count
    // shared with it would have to be copied whole when a node changes (`Arc::make_mut`).
    state.remove(image_locality::SNAPSHOT_IMAGES);
    let node = match result {
        Ok(r) => r.node,
        // No nodes at all counts as unschedulable too, as upstream: a node event retries it.
        Err(e @ (ScheduleError::Unschedulable { .. } | ScheduleError::NoNodes)) => {
            debug!(message = %e, "pod is unschedulable");
            if let ScheduleError::Unschedulable { nomination: Some(n), .. } = &e {
                info!(node = %n.node, victims = n.victims.len(), "preempting");
                tokio::spawn(preempt(sched.clone(), pod.clone(), n.clone()).in_current_span());
            }
            let plugins = match &e {
                ScheduleError::Unschedulable { plugins, .. } => plugins.clone(),
                _ => Vec::new(),
            };
            sched.queue.add_unschedulable_by(key, cycle, plugins);
            record_failure(sched.clone(), pod, "Unschedulable", e.to_string());
            return;
        }
        Err(e) => {
            debug!(error = %e, "scheduling failed");
            sched.queue.add_backoff(key);
            record_failure(sched.clone(), pod, "SchedulerError", e.to_string());
            return;
        }
    };
    // Assume: the next cycles count the pod on its node before the binding is seen.
    let mut placed = (*pod).clone();
    placed.spec.get_or_insert_default().node_name = Some(node.clone());
    lock(&sched.cache).assume_pod(key, Arc::new(placed), &node);
    let reserved = framework.run_reserve(&mut state, &pod, &node);
    if !reserved.is_success() {
        lock(&sched.cache).forget_pod(key);
        sched.queue.add_backoff(key);
        record_failure(
            sched.clone(),
            pod,
            "SchedulerError",
            format!("running Reserve plugin {}: {}", reserved.plugin, reserved.message()),
        );
        return;
    }
    // The binding cycle runs beside the next scheduling cycles.
    let sched = sched.clone();
    let key = key.to_string();
    tokio::spawn(
        async move {
            let status = framework.run_bind(&state, &pod, &node).await;
            if status.is_success() {
                info!(node = %node, "pod bound");
                sched.queue.done(&key);
                let message = format!("Successfully assigned {key} to {node}");
                if let Err(e) =
                    post_event(&sched.client, &pod, scheduler_name(&pod), "Normal", "Scheduled", &message).await
                {
                    debug!(error = %e, "recording the Scheduled event failed");
                }
                return;
            }
            warn!(node = %node, error = %status.message(), "binding failed");
            framework.run_unreserve(&mut state, &pod, &node);
            lock(&sched.cache).forget_pod(&key);
            sched.queue.add_backoff(&key);
            record_failure(sched.clone(), pod, "SchedulerError", status.message());
        }
        .in_current_span(),
    );
}

/// Carries out a preemption (upstream's `prepareCandidate`): the preemptor is nominated to
/// the node, and each victim gets the `DisruptionTarget` condition, a `Preempted` event and is
/// deleted (gracefully; its kubelet finishes the deletion).
async fn preempt(sched: Arc<Scheduler>, pod: Arc<Pod>, nomination: Nomination) {
    let ns = pod.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(sched.client.clone(), &ns);
    let patch = Patch::Merge(json!({"status": {"nominatedNodeName": nomination.node}}));
    if let Err(e) = pods.patch_status(&pod.name_any(), &PatchParams::default(), &patch).await {
        warn!(error = %e, "writing nominatedNodeName failed");
    }
    for v in &nomination.victims {
        let api: Api<Pod> = Api::namespaced(sched.client.clone(), &v.namespace);
        let cached = sched.pods.get(&ObjectRef::new(&v.name).within(&v.namespace));
        if let Some(victim) = &cached {
            let message = format!("{}: preempting to accommodate a higher priority pod", scheduler_name(&pod));
            let mut conditions: Vec<Value> = victim
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter(|c| c.type_ != "DisruptionTarget")
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                .collect();
            conditions.push(json!({
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": message, "lastTransitionTime": now(),
            }));
            let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
            if let Err(e) = api.patch_status(&v.name, &PatchParams::default(), &patch).await {
                debug!(victim = %v.name, error = %e, "writing the DisruptionTarget condition failed");
            }
            let message = format!("Preempted by pod {} on node {}", pod.uid().unwrap_or_default(), nomination.node);
            if let Err(e) =
                post_event(&sched.client, victim, scheduler_name(&pod), "Normal", "Preempted", &message).await
            {
                debug!(error = %e, "recording the Preempted event failed");
            }
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(v.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&v.name, &params).await {
            Ok(_) => {
                info!(victim = %format!("{}/{}", v.namespace, v.name), node = %nomination.node, "victim preempted")
            }
            Err(e) => warn!(victim = %v.name, error = %e, "deleting a preemption victim failed"),
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

/// The pod's conditions with `PodScheduled=False` set, or `None` if it already says so.
pub fn unschedulable_conditions(pod: &Pod, reason: &str, message: &str) -> Option<Value> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let mut out = Vec::with_capacity(conditions.len() + 1);
    let mut transition = now();
    for c in conditions {
        if c.type_ == "PodScheduled" {
            if c.status == "False" && c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(message) {
                return None;
            }
            if c.status == "False"
                && let Some(t) = c.last_transition_time
            {
                transition = t.0.to_string();
            }
            continue;
        }
        out.push(serde_json::to_value(c).unwrap_or(Value::Null));
    }
    out.push(json!({
        "type": "PodScheduled", "status": "False", "reason": reason, "message": message,
        "lastProbeTime": null, "lastTransitionTime": transition,
    }));
    Some(Value::Array(out))
}

/// Writes `PodScheduled=False` and a `FailedScheduling` event, in the background.
fn record_failure(sched: Arc<Scheduler>, pod: Arc<Pod>, reason: &'static str, message: String) {
    tokio::spawn(
        async move {
            let ns = pod.namespace().unwrap_or_default();
            if let Err(e) = emit_event(&sched, &pod, &ns, &message).await {
                debug!(error = %e, "recording the FailedScheduling event failed");
            }
            if let Some(conditions) = unschedulable_conditions(&pod, reason, &message) {
                let api: Api<Pod> = Api::namespaced(sched.client.clone(), &ns);
                let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
                if let Err(e) = api.patch_status(&pod.name_any(), &PatchParams::default(), &patch).await {
                    debug!(error = %e, "writing the PodScheduled condition failed");
                }
            }
        }
        .in_current_span(),
    );
}

/// A `FailedScheduling` Warning event; repeats of the same message bump the event's count.
async fn emit_event(sched: &Scheduler, pod: &Pod, ns: &str, message: &str) -> Result<(), kube::Error> {
    let api: Api<Event> = Api::namespaced(sched.client.clone(), ns);
    let uid = pod.uid().unwrap_or_default();
    let previous = lock(&sched.events).get(&uid).cloned();
    if let Some((name, count, last)) = previous
        && last == message
    {
        let patch = Patch::Merge(json!({"count": count + 1, "lastTimestamp": now()}));
        if api.patch(&name, &PatchParams::default(), &patch).await.is_ok() {
            lock(&sched.events).insert(uid, (name, count + 1, last));
            return Ok(());
        }
    }
    let name = post_event(&sched.client, pod, scheduler_name(pod), "Warning", "FailedScheduling", message).await?;
    lock(&sched.events).insert(uid, (name, 1, message.to_string()));
    Ok(())
}

/// Posts a core/v1 event about `pod` from the scheduler; returns its name.
/// Events are reported by the profile (its scheduler name), as upstream's per-profile recorders.
async fn post_event(
    client: &Client,
    pod: &Pod,
    component: &str,
    type_: &str,
    reason: &str,
    message: &str,
) -> Result<String, kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let now = now();
    let name = format!("{}.{:x}", pod.name_any(), jiff::Timestamp::now().as_nanosecond());
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod.name_any(), "uid": pod.uid(),
            "resourceVersion": pod.resource_version(),
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }))
    .map_err(kube::Error::SerdeError)?;
    api.create(&PostParams::default(), &event).await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::pod;

    #[test]
    fn only_pods_for_the_default_scheduler_are_ours() {
        assert!(responsible_for(&pod(json!({}))));
        assert!(responsible_for(&pod(json!({"schedulerName": "default-scheduler"}))));
        assert!(!responsible_for(&pod(json!({"schedulerName": "other"}))));
    }

    #[test]
    fn the_condition_is_written_once_per_message() {
        let p = pod(json!({}));
        let c = unschedulable_conditions(&p, "Unschedulable", "0/1 nodes are available").unwrap();
        assert_eq!(c[0]["type"], "PodScheduled");
        assert_eq!(c[0]["status"], "False");
        let mut with: Pod = p.clone();
        with.status = Some(serde_json::from_value(json!({"conditions": c})).unwrap());
        assert!(unschedulable_conditions(&with, "Unschedulable", "0/1 nodes are available").is_none());
        assert!(unschedulable_conditions(&with, "Unschedulable", "0/2 nodes are available").is_some());
    }
}
