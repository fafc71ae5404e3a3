//! The writes the controller makes to pods (upstream's `RealPodControl` and the patches of
//! `controller_ref_manager.go`), each with its Event, and upstream's slow-start batching.

use std::future::Future;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::workload::Workload;
use crate::events::{NORMAL, Recorder, WARNING};

/// The first batch of a slow start (upstream's `SlowStartInitialBatchSize`).
pub const SLOW_START_INITIAL_BATCH: usize = 1;

/// The status cause the API server gives when a namespace is terminating.
const NAMESPACE_TERMINATING_CAUSE: &str = "NamespaceTerminating";

/// Why a pod write failed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("unable to create pods, no labels")]
    NoLabels,
    #[error("unable to create pods, no template")]
    NoTemplate,
    #[error("{}", api_message(.0))]
    Api(#[source] kube::Error),
}

/// The message of an API error as upstream shows it (the Status message alone).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

impl PodError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, PodError::Api(kube::Error::Api(s)) if s.code == 404)
    }
    pub fn is_invalid(&self) -> bool {
        matches!(self, PodError::Api(kube::Error::Api(s)) if s.code == 422)
    }
    /// The namespace is going: creations cannot succeed and are not failures.
    pub fn is_namespace_terminating(&self) -> bool {
        match self {
            PodError::Api(kube::Error::Api(s)) => {
                s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == NAMESPACE_TERMINATING_CAUSE))
                    || (s.code == 403 && s.message.contains("because it is being terminated"))
            }
            _ => false,
        }
    }
}

/// The controller reference a workload puts on its pods (upstream's `NewControllerRef`).
pub fn controller_ref<K: Workload>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod a workload's template describes (upstream's `GetPodFromTemplate`).
pub fn pod_from_template<K: Workload>(owner: &K) -> Result<Pod, PodError> {
    let template = owner.template().ok_or(PodError::NoTemplate)?;
    let meta = template.metadata.clone().unwrap_or_default();
    if meta.labels.as_ref().is_none_or(|l| l.is_empty()) {
        return Err(PodError::NoLabels);
    }
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", owner.name_any())),
            namespace: owner.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref(owner)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

/// Creates, deletes, adopts and releases pods for one kind of workload, with Events.
#[derive(Clone)]
pub struct PodControl {
    pub client: Client,
    pub recorder: Recorder,
}

impl PodControl {
    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Creates one pod from `owner`'s template.
    pub async fn create<K: Workload>(&self, owner: &K) -> Result<(), PodError> {
        let pod = pod_from_template(owner)?;
        let ns = owner.namespace().unwrap_or_default();
        match self.pods(&ns).create(&PostParams::default(), &pod).await {
            Ok(created) => {
                self.recorder.record(owner, NORMAL, "SuccessfulCreate", format!("Created pod: {}", created.name_any()));
                Ok(())
            }
            Err(e) => {
                let err = PodError::Api(e);
                if !err.is_namespace_terminating() {
                    self.recorder.record(owner, WARNING, "FailedCreate", format!("Error creating: {err}"));
                }
                Err(err)
            }
        }
    }

    /// Deletes the pod `name` of `owner`.
    pub async fn delete<K: Workload>(&self, owner: &K, name: &str) -> Result<(), PodError> {
        let ns = owner.namespace().unwrap_or_default();
        match self.pods(&ns).delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                self.recorder.record(owner, NORMAL, "SuccessfulDelete", format!("Deleted pod: {name}"));
                Ok(())
            }
            Err(e) => {
                let err = PodError::Api(e);
                if !err.is_not_found() {
                    self.recorder.record(owner, WARNING, "FailedDelete", format!("Error deleting: {err}"));
                }
                Err(err)
            }
        }
    }

    /// Puts `owner`'s controller reference on an orphan, if it is still the same pod.
    pub async fn adopt<K: Workload>(&self, owner: &K, pod: &Pod) -> Result<(), PodError> {
        let patch = json!({"metadata": {
            "ownerReferences": [controller_ref(owner)],
            "uid": pod.metadata.uid,
        }});
        self.patch(pod, patch).await
    }

    /// Removes `owner`'s reference from a pod that no longer matches it.
    pub async fn release<K: Workload>(&self, owner: &K, pod: &Pod) -> Result<(), PodError> {
        let patch = json!({"metadata": {
            "ownerReferences": [{"$patch": "delete", "uid": owner.uid()}],
            "uid": pod.metadata.uid,
        }});
        self.patch(pod, patch).await
    }

    async fn patch(&self, pod: &Pod, patch: serde_json::Value) -> Result<(), PodError> {
        let ns = pod.namespace().unwrap_or_default();
        self.pods(&ns)
            .patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map(|_| ())
            .map_err(PodError::Api)
    }
}

/// Upstream's `slowStartBatch`: calls `call` `count` times in batches of 1, 2, 4, ... run
/// concurrently, stopping after the first batch with a failure. Returns how many calls
/// succeeded, and the first error.
pub async fn slow_start_batch<F, Fut, E>(count: usize, initial: usize, call: F) -> (usize, Option<E>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut remaining = count;
    let mut successes = 0;
    let mut batch = remaining.min(initial);
    while batch > 0 {
        let results = futures::future::join_all((0..batch).map(|_| call())).await;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(()) => successes += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if first_error.is_some() {
            return (successes, first_error);
        }
        remaining -= batch;
        batch = remaining.min(2 * batch);
    }
    (successes, None)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Runs a slow start of `count` calls where call number `fail_at` (1-based) fails;
    /// returns the batch sizes seen, the successes and whether it failed.
    async fn run(count: usize, fail_at: Option<usize>) -> (Vec<usize>, usize, bool) {
        let calls = AtomicUsize::new(0);
        // Calls made since the last batch started running: a batch's calls are all made
        // before any of its futures is polled.
        let unpolled = AtomicUsize::new(0);
        let batches = Mutex::new(Vec::<usize>::new());
        let (ok, err) = slow_start_batch(count, SLOW_START_INITIAL_BATCH, || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            unpolled.fetch_add(1, Ordering::SeqCst);
            let (batches, unpolled) = (&batches, &unpolled);
            async move {
                let made = unpolled.swap(0, Ordering::SeqCst);
                if made > 0 {
                    batches.lock().unwrap().push(made);
                }
                if Some(n) == fail_at { Err("boom") } else { Ok(()) }
            }
        })
        .await;
        (batches.into_inner().unwrap(), ok, err.is_some())
    }

    fn rs(labels: Option<&[(&str, &str)]>) -> k8s_openapi::api::apps::v1::ReplicaSet {
        use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
        use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
        let labels = labels.map(|l| l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("rs-uid".into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels, ..Default::default() }),
                    spec: Some(PodSpec::default()),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn pods_come_from_the_template_with_a_controller_reference() {
        let pod = pod_from_template(&rs(Some(&[("app", "web")]))).unwrap();
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(pod.metadata.name, None);
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(pod.metadata.labels.unwrap().get("app").map(String::as_str), Some("web"));
        let refs = pod.metadata.owner_references.unwrap();
        assert_eq!(
            refs,
            [OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        );
        assert!(pod.spec.is_some());
    }

    #[test]
    fn a_template_without_labels_makes_no_pod() {
        assert!(matches!(pod_from_template(&rs(None)), Err(PodError::NoLabels)));
        assert!(matches!(pod_from_template(&rs(Some(&[]))), Err(PodError::NoLabels)));
    }

    #[tokio::test]
    async fn batches_double_from_one() {
        let (batches, ok, failed) = run(10, None).await;
        assert_eq!(batches, [1, 2, 4, 3]);
        assert_eq!(ok, 10);
        assert!(!failed);
    }

    #[tokio::test]
    async fn a_failure_stops_the_following_batches() {
        // Call 3 is in the second batch (calls 2 and 3): the batch finishes, nothing after.
        let (batches, ok, failed) = run(10, Some(3)).await;
        assert_eq!(batches, [1, 2]);
        assert_eq!(ok, 2);
        assert!(failed);
    }

    #[tokio::test]
    async fn a_first_failure_makes_one_call_only() {
        let (batches, ok, failed) = run(500, Some(1)).await;
        assert_eq!(batches, [1]);
        assert_eq!(ok, 0);
        assert!(failed);
    }

    #[tokio::test]
    async fn nothing_to_do_makes_no_call() {
        let (batches, ok, failed) = run(0, None).await;
        assert!(batches.is_empty());
        assert_eq!(ok, 0);
        assert!(!failed);
    }
}
