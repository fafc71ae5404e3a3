//! The pods of a Job: building them from the template (with the tracking finalizer and, for
//! Indexed Jobs, the completion index), creating and deleting them with Events, and removing
//! the tracking finalizer once a finished pod has been counted.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::indexed::{COMPLETION_INDEX, INDEX_ENV, INDEX_FAILURE_COUNT};
use crate::events::{NORMAL, Recorder, WARNING};

/// The finalizer that keeps a Job's pods until the controller has counted them.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// Whether `e` says the namespace is being deleted: nothing can be created in it, and that
/// is no failure of the controller (the namespace controller deletes the owner too).
pub fn namespace_terminating(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
                || (s.code == 403 && s.message.contains("because it is being terminated"))
        }
        _ => false,
    }
}

/// Whether the pod still carries the tracking finalizer.
pub fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata.finalizers.iter().flatten().any(|f| f == TRACKING_FINALIZER)
}

/// The controller reference a Job puts on its pods.
pub fn controller_ref(job: &Job) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod for `job`, for completion `index` of an Indexed Job, whose index already failed
/// `index_failures` times (with `backoffLimitPerIndex`).
pub fn new_pod(job: &Job, index: Option<i32>, index_failures: Option<i32>) -> Pod {
    let spec = job.spec.as_ref();
    let template = spec.map(|s| s.template.clone()).unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut pod_spec = template.spec;
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut finalizers = meta.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.into());
    let name = job.name_any();
    let mut generate_name = format!("{name}-");
    if let Some(ix) = index {
        annotations.insert(COMPLETION_INDEX.into(), ix.to_string());
        labels.insert(COMPLETION_INDEX.into(), ix.to_string());
        generate_name = format!("{name}-{ix}-");
        if let Some(s) = &mut pod_spec {
            if s.hostname.is_none() {
                s.hostname = Some(format!("{name}-{ix}"));
            }
            // Containers see their index through the downward API, as upstream sets it.
            let env = EnvVar {
                name: INDEX_ENV.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..Default::default()
                }),
            };
            let init = s.init_containers.iter_mut().flatten();
            for c in s.containers.iter_mut().chain(init) {
                let vars = c.env.get_or_insert_with(Vec::new);
                if !vars.iter().any(|v| v.name == INDEX_ENV) {
                    vars.push(env.clone());
                }
            }
        }
    }
    if let Some(n) = index_failures {
        annotations.insert(INDEX_FAILURE_COUNT.into(), n.to_string());
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![controller_ref(job)]),
            ..Default::default()
        },
        spec: pod_spec,
        status: None,
    }
}

/// Writes a Job's pods, with Events.
#[derive(Clone)]
pub struct PodControl {
    pub client: Client,
    pub recorder: Recorder,
}

impl PodControl {
    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Creates `pod` for `job`.
    pub async fn create(&self, job: &Job, pod: &Pod) -> Result<(), kube::Error> {
        let ns = job.namespace().unwrap_or_default();
        match self.pods(&ns).create(&PostParams::default(), pod).await {
            Ok(created) => {
                self.recorder.record(job, NORMAL, "SuccessfulCreate", format!("Created pod: {}", created.name_any()));
                Ok(())
            }
            Err(e) if namespace_terminating(&e) => Ok(()),
            Err(e) => {
                let message = match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    e => e.to_string(),
                };
                self.recorder.record(job, WARNING, "FailedCreate", format!("Error creating: {message}"));
                Err(e)
            }
        }
    }

    /// Deletes `pod` of `job` (a pod already gone is no failure).
    pub async fn delete(&self, job: &Job, pod: &Pod) -> Result<(), kube::Error> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        match self.pods(&ns).delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                self.recorder.record(job, NORMAL, "SuccessfulDelete", format!("Deleted pod: {name}"));
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => {
                self.recorder.record(job, WARNING, "FailedDelete", format!("Error deleting: {e}"));
                Err(e)
            }
        }
    }

    /// Removes the tracking finalizer from `pod` (upstream's strategic merge patch deleting it
    /// from the list, which leaves other finalizers alone). A pod that is gone needs nothing.
    pub async fn remove_finalizer(&self, pod: &Pod) -> Result<(), kube::Error> {
        if !has_finalizer(pod) {
            return Ok(());
        }
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}});
        let ns = pod.namespace().unwrap_or_default();
        match self.pods(&ns).patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

    use super::*;

    fn job() -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "pi".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container { name: "main".into(), ..Default::default() }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn pods_carry_the_tracking_finalizer_and_a_controller_reference() {
        let pod = new_pod(&job(), None, None);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-"));
        assert!(has_finalizer(&pod));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Job", "u1", Some(true)));
        assert!(pod.metadata.annotations.is_none());
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let pod = new_pod(&job(), Some(2), Some(1));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-2-"));
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        assert_eq!(annotations.get(INDEX_FAILURE_COUNT).map(String::as_str), Some("1"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap().get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert_eq!(env[0].name, INDEX_ENV);
        assert_eq!(
            env[0].value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
    }
}
