//! The Endpoints controller (upstream's `pkg/controller/endpoint`): keeps, for every Service with
//! a selector, an Endpoints object of the same name listing the IPs of the pods it selects,
//! ready ones under `addresses` and the others under `notReadyAddresses`, with each service
//! port resolved in each pod ([`subsets`]). The object carries the service's labels and
//! `endpoints.kubernetes.io/managed-by: endpoint-controller`.
//!
//! Informers over Services, Pods and Endpoints only enqueue service keys; a [`workqueue`] hands
//! each key to one worker at a time and retries failures with backoff. The sync reads the
//! caches, deletes the Endpoints of a service that is gone, leaves selectorless and
//! ExternalName services alone (their Endpoints belong to someone else; the API server keeps
//! the `kubernetes` service's), and writes the Endpoints only when they changed. At start it
//! looks at every Endpoints object once, so those left behind by a service deleted while the
//! controller was down are removed.
//!
//! This module must not write anything but Endpoints (and Events).

pub mod subsets;
pub mod trigger_time;
pub mod workqueue;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::SelectorExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use crate::endpointslice::util::{
    self, ANNOTATION_TRIGGER_TIME, LABEL_HEADLESS, is_external_name, is_service_ip_set, key, service_selector,
    split_key,
};
use crate::events::{Recorder, WARNING};
use crate::informer::{Change, Informers};
use subsets::{ANNOTATION_OVER_CAPACITY, capacity_annotation_set_correctly, desired_subsets, repack_subsets, truncate};
use trigger_time::TriggerTimeTracker;
use workqueue::WorkQueue;

/// Services synced at once (upstream's `--concurrent-endpoint-syncs` default).
const CONCURRENT_SYNCS: usize = 5;
/// Endpoints with this annotation are leader-election locks, not a service's endpoints.
pub const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";
/// The component name on this controller's Events, and the value of its managed-by label.
const COMPONENT: &str = "endpoint-controller";
/// The label marking the Endpoints this controller writes.
pub const LABEL_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("deleting the endpoints of deleted service {key}")]
    Delete {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating endpoints {key}")]
    Create {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating endpoints {key}")]
    Update {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// The namespace is going: creations cannot succeed and are not failures.
pub fn is_namespace_terminating(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
                || (s.code == 403 && s.message.contains("because it is being terminated"))
        }
        _ => false,
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The services of `pod`'s namespace whose selector matches it.
pub fn services_for_pod(services: &Store<Service>, pod: &Pod) -> Vec<Arc<Service>> {
    let ns = pod.namespace();
    services.state_filter(|s| s.namespace() == ns && service_selector(s).is_some_and(|sel| sel.matches(pod.labels())))
}

/// Enqueues the services a pod change concerns (upstream's `updatePod`/`deletePod`): those
/// selecting the pod before or after, when what the endpoints show of it may have changed.
pub fn enqueue_for_pod_change(services: &Store<Service>, change: &Change<Pod>, mut enqueue: impl FnMut(String)) {
    let pods: Vec<&Pod> = match change {
        Change::Add(p) | Change::Delete(p) => vec![p],
        Change::Update(old, cur) => {
            if old.metadata.resource_version == cur.metadata.resource_version || !util::pod_endpoints_changed(old, cur)
            {
                return;
            }
            vec![old, cur]
        }
    };
    let mut keys: Vec<String> = pods
        .into_iter()
        .flat_map(|p| services_for_pod(services, p))
        .map(|s| key(&s.namespace().unwrap_or_default(), &s.name_any()))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().for_each(&mut enqueue);
}

struct Controller {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    queue: WorkQueue,
    triggers: TriggerTimeTracker,
    recorder: Recorder,
}

/// Runs the Endpoints controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (services, service_writer) = informers.store::<Service>().await;
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (endpoints, endpoints_writer) = informers.store::<Endpoints>().await;
    let c = Arc::new(Controller {
        client: client.clone(),
        services,
        pods,
        endpoints,
        queue: WorkQueue::default(),
        triggers: TriggerTimeTracker::default(),
        recorder: Recorder::new(client.clone(), COMPONENT),
    });
    let service_informer = {
        let c = c.clone();
        service_writer.run(shutdown.clone(), move |change| {
            for s in change.objects() {
                c.queue.add(key(&s.namespace().unwrap_or_default(), &s.name_any()));
            }
        })
    };
    let pod_informer = {
        let c = c.clone();
        pod_writer.run(shutdown.clone(), move |change| enqueue_for_pod_change(&c.services, &change, |k| c.queue.add(k)))
    };
    let endpoints_informer = {
        let c = c.clone();
        endpoints_writer.run(shutdown.clone(), move |change| {
            // A deleted Endpoints object of a service with a selector is made again.
            if let Change::Delete(ep) = change {
                c.queue.add(key(&ep.namespace().unwrap_or_default(), &ep.name_any()));
            }
        })
    };
    let workers = {
        let c = c.clone();
        async move {
            let _ =
                tokio::join!(c.services.wait_until_ready(), c.pods.wait_until_ready(), c.endpoints.wait_until_ready());
            info!("starting endpoints controller");
            c.check_leftover_endpoints();
            let sync_c = c.clone();
            c.queue
                .run_workers(CONCURRENT_SYNCS, shutdown, move |key| {
                    let c = sync_c.clone();
                    async move {
                        let span = info_span!("sync_endpoints", %key);
                        c.sync(&key).instrument(span).await
                    }
                })
                .await
        }
    };
    tokio::join!(service_informer, pod_informer, endpoints_informer, workers);
}

/// The labels of a service or of its Endpoints, absent ones as empty.
fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

impl Controller {
    /// Upstream's `checkLeftoverEndpoints`: every Endpoints object's key is synced once, which
    /// deletes those whose service is gone.
    fn check_leftover_endpoints(&self) {
        for ep in self.endpoints.state() {
            if ep.annotations().contains_key(ANNOTATION_LEADER) {
                continue;
            }
            self.queue.add(key(&ep.namespace().unwrap_or_default(), &ep.name_any()));
        }
    }

    /// Upstream's `syncService`.
    async fn sync(&self, svc_key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(svc_key);
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            // The service is gone: so are its endpoints.
            self.triggers.delete(svc_key);
            return match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    debug!("deleted the endpoints of a deleted service");
                    Ok(())
                }
                Err(e) if is_not_found(&e) => Ok(()),
                Err(source) => Err(Error::Delete { key: svc_key.into(), source }),
            };
        };
        if is_external_name(&svc) {
            return Ok(());
        }
        let Some(selector) = service_selector(&svc) else { return Ok(()) };
        let mut pods = self.pods.state_filter(|p| p.namespace().as_deref() == Some(ns) && selector.matches(p.labels()));
        pods.sort_by_key(|p| p.name_any());
        let pods: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
        let trigger = self.triggers.compute(svc_key, &svc, &pods);
        let subsets = repack_subsets(&desired_subsets(&svc, &pods));

        let current = self.endpoints.get(&ObjectRef::new(name).within(ns));
        let mut svc_labels = labels_of(&svc.metadata);
        svc_labels.remove(LABEL_MANAGED_BY);
        if let Some(cur) = &current {
            let mut compare_labels = labels_of(&cur.metadata);
            compare_labels.remove(LABEL_HEADLESS);
            compare_labels.remove(LABEL_MANAGED_BY);
            let cur_subsets = cur.subsets.as_deref().unwrap_or_default();
            if cur_subsets == subsets.as_slice()
                && cur.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(COMPONENT)
                && compare_labels == svc_labels
                && capacity_annotation_set_correctly(cur.metadata.annotations.as_ref(), cur_subsets)
            {
                return Ok(());
            }
        }
        let mut new = match &current {
            Some(cur) => (**cur).clone(),
            None => Endpoints {
                metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
                subsets: None,
            },
        };
        let mut subsets = subsets;
        let annotations = new.metadata.annotations.get_or_insert_with(BTreeMap::new);
        match trigger {
            Some(t) => annotations.insert(ANNOTATION_TRIGGER_TIME.into(), t.to_string()),
            // Nothing new to report: the annotation would be stale.
            None => annotations.remove(ANNOTATION_TRIGGER_TIME),
        };
        if truncate(&mut subsets) {
            annotations.insert(ANNOTATION_OVER_CAPACITY.into(), "truncated".into());
        } else {
            annotations.remove(ANNOTATION_OVER_CAPACITY);
        }
        let mut labels = svc_labels;
        labels.insert(LABEL_MANAGED_BY.into(), COMPONENT.into());
        if !is_service_ip_set(&svc) {
            labels.insert(LABEL_HEADLESS.into(), String::new());
        }
        new.metadata.labels = Some(labels);
        new.subsets = (!subsets.is_empty()).then_some(subsets);
        let addresses: usize = new.subsets.iter().flatten().map(|s| s.addresses.as_ref().map_or(0, Vec::len)).sum();
        if current.is_none() {
            match api.create(&PostParams::default(), &new).await {
                Ok(_) => debug!(addresses, "created endpoints"),
                Err(e) if is_namespace_terminating(&e) => {}
                Err(source) => {
                    self.recorder.record(
                        &*svc,
                        WARNING,
                        "FailedToCreateEndpoint",
                        format!("Failed to create endpoint for service {svc_key}: {source}"),
                    );
                    return Err(Error::Create { key: svc_key.into(), source });
                }
            }
        } else {
            match api.replace(name, &PostParams::default(), &new).await {
                Ok(_) => debug!(addresses, "updated endpoints"),
                Err(source) => {
                    if !matches!(&source, kube::Error::Api(s) if s.code == 409) {
                        self.recorder.record(
                            &*svc,
                            WARNING,
                            "FailedToUpdateEndpoint",
                            format!("Failed to update endpoint {svc_key}: {source}"),
                        );
                    }
                    return Err(Error::Update { key: svc_key.into(), source });
                }
            }
        }
        Ok(())
    }
}
