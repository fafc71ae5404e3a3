//! An event recorder (a small version of client-go's `tools/record`): controllers say what
//! they did as core/v1 Events about the object they acted for, posted through the API in the
//! background so that a slow or failing write never holds up a sync.
//!
//! One Event object per occurrence (count 1); upstream's aggregation and spam filter are left
//! out. When the backlog is full, events are dropped, as upstream's broadcaster does.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tracing::debug;

/// How many events may wait to be written before new ones are dropped.
const BACKLOG: usize = 1000;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// Records Events from one component; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    component: &'static str,
    tx: mpsc::Sender<Event>,
}

impl Recorder {
    /// A recorder for `component` (the Event's `source.component` and `reportingComponent`),
    /// with a task writing its events until every clone is dropped.
    pub fn new(client: Client, component: &'static str) -> Self {
        let (tx, mut rx) = mpsc::channel::<Event>(BACKLOG);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let ns = event.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    debug!(error = %e, reason = ?event.reason, "could not write event");
                }
            }
        });
        Self { component, tx }
    }

    /// Records an event of `type_` (`Normal` or `Warning`) about `obj`.
    pub fn record<K>(&self, obj: &K, type_: &str, reason: &str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = self.event(obj, type_, reason, message);
        if self.tx.try_send(event).is_err() {
            debug!(reason, "event backlog full; dropping event");
        }
    }

    fn event<K>(&self, obj: &K, type_: &str, reason: &str, message: String) -> Event
    where
        K: Resource<DynamicType = ()>,
    {
        let now = k8s_openapi::jiff::Timestamp::now();
        let namespace = obj.namespace().unwrap_or_else(|| "default".into());
        Event {
            metadata: ObjectMeta {
                // Upstream names events `<object>.<unix nanoseconds in hex>`.
                name: Some(format!("{}.{:x}", obj.name_any(), now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: Some(obj.name_any()),
                namespace: Some(namespace),
                uid: obj.uid(),
                resource_version: obj.resource_version(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource { component: Some(self.component.into()), host: None }),
            reporting_component: Some(self.component.into()),
            reporting_instance: None,
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        }
    }
}
