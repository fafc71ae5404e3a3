//! A small event recorder: core/v1 Events about pods with `source.component: kubelet` and
//! `source.host: <node>`, as upstream's kubelet records them. Repeats of the same event are
//! folded into one object whose `count` and `lastTimestamp` grow, as client-go's event
//! correlator does, so a pod in a back-off loop does not flood the namespace.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// How long a repeated event keeps folding into the first one (client-go uses 10 minutes).
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// Repeats closer together than this are not written at all: pod workers poll every second,
/// and a back-off loop would otherwise patch its event as often.
const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Recorded {
    name: String,
    namespace: String,
    count: i32,
    at: Instant,
    last_written: Instant,
}

/// Writes Events for the node's pods. Cheap to share; failures are logged, never returned:
/// an event that cannot be written must not stop a pod's sync.
pub struct EventRecorder {
    client: kube::Client,
    node: String,
    seen: Mutex<HashMap<(String, String, String, String), Recorded>>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder").field("node", &self.node).finish()
    }
}

/// The `fieldPath` upstream puts in an event about one container.
pub fn container_field_path(pod: &Pod, container: &str) -> String {
    let spec = pod.spec.as_ref();
    let init = spec.and_then(|s| s.init_containers.as_ref()).is_some_and(|l| l.iter().any(|c| c.name == container));
    if init { format!("spec.initContainers{{{container}}}") } else { format!("spec.containers{{{container}}}") }
}

impl EventRecorder {
    pub fn new(client: kube::Client, node: impl Into<String>) -> Self {
        EventRecorder { client, node: node.into(), seen: Mutex::new(HashMap::new()) }
    }

    /// Records an event about the pod (`field_path` names a container, or is `None` for the pod).
    pub async fn record(&self, pod: &Pod, field_path: Option<String>, type_: &str, reason: &str, message: &str) {
        self.record_annotated(pod, field_path, type_, reason, message, BTreeMap::new()).await;
    }

    /// Records an event with annotations (upstream's `AnnotatedEventf`: the eviction manager's
    /// `Evicted` event names the offending containers and their usage in them).
    pub async fn record_annotated(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        type_: &str,
        reason: &str,
        message: &str,
        annotations: BTreeMap<String, String>,
    ) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = (uid.clone(), field_path.clone().unwrap_or_default(), reason.to_string(), message.to_string());
        let now = jiff::Timestamp::now();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let previous = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|_, r| r.at.elapsed() < AGGREGATE_WINDOW);
            match seen.get_mut(&key) {
                Some(r) if r.last_written.elapsed() < REPEAT_INTERVAL => {
                    // Counted now, written with the next repeat after the interval.
                    r.count += 1;
                    return;
                }
                Some(r) => {
                    r.count += 1;
                    r.last_written = Instant::now();
                    Some(r.clone())
                }
                None => None,
            }
        };
        if let Some(prev) = previous {
            let patch = serde_json::json!({ "count": prev.count, "lastTimestamp": Time(now) });
            match Api::<Event>::namespaced(self.client.clone(), &prev.namespace)
                .patch(&prev.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(%error, event = %prev.name, "updating a repeated event; creating a new one")
                }
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{pod_name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod_name.clone()),
                namespace: Some(namespace.clone()),
                uid: Some(uid),
                resource_version: pod.metadata.resource_version.clone(),
                field_path,
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            source: Some(EventSource { component: Some("kubelet".into()), host: Some(self.node.clone()) }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                let name = created.metadata.name.unwrap_or_default();
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.insert(
                    key,
                    Recorded { name, namespace, count: 1, at: Instant::now(), last_written: Instant::now() },
                );
            }
            Err(error) => tracing::warn!(%error, pod = %pod_name, reason, "recording event"),
        }
    }
}
