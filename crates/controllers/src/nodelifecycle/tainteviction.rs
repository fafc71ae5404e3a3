//! The taint eviction controller (upstream's `pkg/controller/tainteviction`): pods on a node
//! with NoExecute taints they do not tolerate are deleted at once; pods tolerating them for
//! `tolerationSeconds` are deleted when the shortest of those runs out, counted from when the
//! controller first saw the pod so tainted. Before deleting, the pod gets the `DisruptionTarget`
//! condition, as upstream. Eviction timers are cancelled (with an event) when the taints go or
//! the pod changes so that it tolerates them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::health::NO_EXECUTE;
use crate::events::{NORMAL, Recorder};
use crate::informer::Change;

/// Attempts at deleting one pod before giving up (upstream's `retries`).
const RETRIES: u32 = 5;

pub use tug_api::taints::tolerates;

/// What to do about a pod on a node with some NoExecute taints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No taints, or all tolerated forever: nothing scheduled.
    Keep,
    /// Some taint is not tolerated, or a toleration's time is zero or less.
    EvictNow,
    /// All tolerated; the shortest tolerationSeconds.
    EvictAfter(Duration),
}

/// Upstream's `GetMatchingTolerations` + `getMinTolerationTime` over the NoExecute `taints`.
pub fn verdict(taints: &[Taint], tolerations: &[Toleration]) -> Verdict {
    if taints.is_empty() {
        return Verdict::Keep;
    }
    let mut min: Option<i64> = None;
    for taint in taints {
        let Some(t) = tolerations.iter().find(|t| tolerates(t, taint)) else { return Verdict::EvictNow };
        if let Some(secs) = t.toleration_seconds {
            if secs <= 0 {
                return Verdict::EvictNow;
            }
            min = Some(min.map_or(secs, |m| m.min(secs)));
        }
    }
    match min {
        None => Verdict::Keep,
        Some(s) => Verdict::EvictAfter(Duration::from_secs(s as u64)),
    }
}

/// A node's NoExecute taints.
pub fn no_execute_taints(node: Option<&Node>) -> Vec<Taint> {
    node.and_then(|n| n.spec.as_ref()?.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == NO_EXECUTE)
        .collect()
}

struct Scheduled {
    created: Instant,
    fire_at: Instant,
    task: AbortHandle,
}

/// The taint eviction controller's state; handlers are called by the node lifecycle
/// controller's informers.
pub struct TaintEviction {
    client: Client,
    nodes: Store<Node>,
    recorder: Recorder,
    work: Mutex<HashMap<String, Scheduled>>,
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

impl TaintEviction {
    pub fn new(client: Client, nodes: Store<Node>) -> Arc<Self> {
        let recorder = Recorder::new(client.clone(), "taint-eviction-controller");
        Arc::new(Self { client, nodes, recorder, work: Mutex::new(HashMap::new()) })
    }

    fn work(&self) -> std::sync::MutexGuard<'_, HashMap<String, Scheduled>> {
        self.work.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cancels a pending eviction, saying so on the pod when `event` (upstream's
    /// `cancelWorkWithEvent`).
    fn cancel(&self, pod: &Pod, event: bool) {
        if let Some(s) = self.work().remove(&pod_key(pod)) {
            s.task.abort();
            if event {
                let msg = format!("Cancelling deletion of Pod {}", pod_key(pod));
                self.recorder.record(pod, NORMAL, "TaintManagerEviction", msg);
            }
        }
    }

    /// Upstream's `processPodOnNode`.
    fn process(self: &Arc<Self>, pod: &Arc<Pod>, taints: &[Taint]) {
        if pod.metadata.deletion_timestamp.is_some() {
            // Already going; deleting again would change nothing.
            return self.cancel(pod, false);
        }
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
        let now = Instant::now();
        let (created, fire_at) = match verdict(taints, &tolerations) {
            Verdict::Keep => return self.cancel(pod, true),
            Verdict::EvictNow => (now, now),
            Verdict::EvictAfter(d) => {
                let work = self.work();
                let created = work.get(&pod_key(pod)).map_or(now, |s| s.created);
                if let Some(s) = work.get(&pod_key(pod))
                    && s.fire_at <= created + d
                {
                    // Already due no later than this would make it.
                    return;
                }
                drop(work);
                (created, created + d)
            }
        };
        if let Some(s) = self.work().get(&pod_key(pod))
            && s.fire_at <= fire_at
        {
            return;
        }
        self.cancel(pod, false);
        let me = self.clone();
        let target = pod.clone();
        let key = pod_key(pod);
        debug!(pod = %key, in_secs = fire_at.saturating_duration_since(now).as_secs(), "scheduling taint eviction");
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(fire_at.into()).await;
            me.evict(&target).await;
            me.work().remove(&pod_key(&target));
        });
        self.work().insert(key, Scheduled { created, fire_at, task: task.abort_handle() });
    }

    /// Upstream's `deletePodHandler`: event, DisruptionTarget condition, delete.
    async fn evict(&self, pod: &Pod) {
        let key = pod_key(pod);
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        info!(pod = %key, "deleting pod for a NoExecute taint");
        self.recorder.record(pod, NORMAL, "TaintManagerEviction", format!("Marking for deletion Pod {key}"));
        for attempt in 1..=RETRIES {
            match self.add_condition_and_delete(&api, pod).await {
                Ok(()) => return,
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) if attempt == RETRIES => warn!(pod = %key, error = %e, "giving up deleting pod"),
                Err(e) => {
                    debug!(pod = %key, error = %e, "deleting pod failed; retrying");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn add_condition_and_delete(&self, api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
        let name = pod.name_any();
        let mut current = api.get(&name).await?;
        if current.metadata.uid != pod.metadata.uid {
            return Ok(());
        }
        let status = current.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != "DisruptionTarget");
        conditions.push(PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("DeletionByTaintManager".into()),
            message: Some("Taint manager: deleting due to NoExecute taint".into()),
            last_transition_time: Some(Time(Timestamp::now())),
            ..Default::default()
        });
        api.replace_status(&name, &PostParams::default(), &current).await?;
        api.delete(&name, &DeleteParams::default()).await?;
        Ok(())
    }

    /// A pod changed: re-decide its eviction against its node's taints.
    pub fn pod_changed(self: &Arc<Self>, change: &Change<Pod>) {
        match change {
            Change::Delete(p) => self.cancel(p, false),
            Change::Add(p) | Change::Update(_, p) => {
                let Some(node_name) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    return self.cancel(p, false);
                };
                let node = self.nodes.get(&ObjectRef::new(&node_name));
                let taints = no_execute_taints(node.as_deref());
                self.process(p, &taints);
            }
        }
    }

    /// A node's NoExecute taints changed: re-decide the eviction of every pod on it.
    pub fn node_changed(self: &Arc<Self>, change: &Change<Node>, pods_on: impl Fn(&str) -> Vec<Arc<Pod>>) {
        let (node, taints) = match change {
            Change::Delete(n) => (n, Vec::new()),
            Change::Add(n) => (n, no_execute_taints(Some(n))),
            Change::Update(old, n) => {
                let taints = no_execute_taints(Some(n));
                if taints == no_execute_taints(Some(old)) {
                    return;
                }
                (n, taints)
            }
        };
        for pod in pods_on(&node.name_any()) {
            self.process(&pod, &taints);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>) -> Taint {
        Taint { key: key.into(), value: value.map(Into::into), effect: NO_EXECUTE.into(), time_added: None }
    }

    fn tol(key: &str, op: &str, value: Option<&str>, effect: Option<&str>, secs: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()).filter(|k: &String| !k.is_empty()),
            operator: Some(op.into()),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: secs,
        }
    }

    #[test]
    fn toleration_matching_follows_upstream() {
        let t = taint("node.kubernetes.io/unreachable", None);
        assert!(tolerates(&tol("node.kubernetes.io/unreachable", "Exists", None, Some("NoExecute"), None), &t));
        assert!(tolerates(&tol("node.kubernetes.io/unreachable", "Exists", None, None, None), &t));
        assert!(!tolerates(&tol("node.kubernetes.io/unreachable", "Exists", None, Some("NoSchedule"), None), &t));
        assert!(tolerates(&tol("", "Exists", None, None, None), &t));
        let v = taint("dedicated", Some("gpu"));
        assert!(tolerates(&tol("dedicated", "Equal", Some("gpu"), None, None), &v));
        assert!(!tolerates(&tol("dedicated", "Equal", Some("cpu"), None, None), &v));
    }

    #[test]
    fn untolerated_taint_means_eviction_now() {
        let taints = [taint("a", None), taint("b", None)];
        let tols = [tol("a", "Exists", None, None, Some(30))];
        assert_eq!(verdict(&taints, &tols), Verdict::EvictNow);
    }

    #[test]
    fn shortest_toleration_seconds_wins_and_unbounded_keeps() {
        let taints = [taint("a", None), taint("b", None)];
        let tols = [tol("a", "Exists", None, None, Some(300)), tol("b", "Exists", None, None, Some(5))];
        assert_eq!(verdict(&taints, &tols), Verdict::EvictAfter(Duration::from_secs(5)));
        let forever = [tol("", "Exists", None, None, None)];
        assert_eq!(verdict(&taints, &forever), Verdict::Keep);
        let zero = [tol("", "Exists", None, None, Some(0))];
        assert_eq!(verdict(&taints, &zero), Verdict::EvictNow);
        assert_eq!(verdict(&[], &[]), Verdict::Keep);
    }

    #[test]
    fn only_no_execute_taints_count() {
        let node = Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                taints: Some(vec![
                    taint("x", None),
                    Taint { key: "y".into(), effect: "NoSchedule".into(), value: None, time_added: None },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(no_execute_taints(Some(&node)).len(), 1);
    }
}
