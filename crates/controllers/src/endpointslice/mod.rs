//! The EndpointSlice controller (upstream's `pkg/controller/endpointslice` and the reconciler
//! of `staging/src/k8s.io/endpointslice`): keeps, for every Service with a selector, the
//! EndpointSlices (`discovery.k8s.io/v1`) listing the pods it selects, at most
//! [`reconciler::MAX_ENDPOINTS_PER_SLICE`] endpoints each, labelled with the service name and
//! `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`, owned by the
//! Service so that the garbage collector removes them with it.
//!
//! Informers over Services, Pods, Nodes (for zones) and EndpointSlices only enqueue service
//! keys; the sync reads the caches, refuses to act while the slice cache is behind its own
//! writes ([`tracker`]), asks the [`reconciler`] for a plan and writes it.
//!
//! This module writes only EndpointSlices it manages (and Events).

pub mod reconciler;
pub mod tracker;
pub mod util;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::SelectorExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use crate::endpoint::trigger_time::TriggerTimeTracker;
use crate::endpoint::workqueue::WorkQueue;
use crate::endpoint::{enqueue_for_pod_change, is_namespace_terminating};
use crate::events::{Recorder, WARNING};
use crate::informer::{Change, Informers};
use reconciler::{CONTROLLER_NAME, MAX_ENDPOINTS_PER_SLICE, Plan};
use tracker::Tracker;
use util::{ANNOTATION_TRIGGER_TIME, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, key, service_selector, split_key};

/// Services synced at once (upstream's `--concurrent-service-endpoint-syncs` default).
const CONCURRENT_SYNCS: usize = 5;
const COMPONENT: &str = "endpoint-slice-controller";

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the endpointslice cache of {key} is behind this controller's writes")]
    StaleCache { key: String },
    #[error("writing endpointslices of {key}")]
    Write {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("pods {pods:?} of {key} are on nodes that are not known yet")]
    NodeNotFound { key: String, pods: Vec<String> },
}

/// The service a slice labelled `managed_by` belongs to, as a queue key.
pub fn service_key_of(slice: &EndpointSlice, managed_by: &str) -> Option<String> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(managed_by) {
        return None;
    }
    Some(key(&slice.namespace().unwrap_or_default(), labels.get(LABEL_SERVICE_NAME)?))
}

/// Sets or clears the trigger-time annotation (upstream's `addTriggerTimeAnnotation`).
pub fn set_trigger_time(slice: &mut EndpointSlice, trigger: Option<Timestamp>) {
    let annotations = slice.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match trigger {
        Some(t) => annotations.insert(ANNOTATION_TRIGGER_TIME.into(), t.to_string()),
        None => annotations.remove(ANNOTATION_TRIGGER_TIME),
    };
}

struct Controller {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    queue: WorkQueue,
    triggers: TriggerTimeTracker,
    tracker: Tracker,
    recorder: Recorder,
}

/// Runs the EndpointSlice controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (services, service_writer) = informers.store::<Service>().await;
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (nodes, node_writer) = informers.store::<Node>().await;
    let (slices, slice_writer) = informers.store::<EndpointSlice>().await;
    let c = Arc::new(Controller {
        client: client.clone(),
        services,
        pods,
        nodes,
        slices,
        queue: WorkQueue::default(),
        triggers: TriggerTimeTracker::default(),
        tracker: Tracker::default(),
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
    // Zones are read when a service syncs; a pod on a node not seen yet is retried.
    let node_informer = node_writer.run(shutdown.clone(), |_| {});
    let slice_informer = {
        let c = c.clone();
        slice_writer.run(shutdown.clone(), move |change| {
            if let Change::Delete(s) = &change
                && let Some(k) = service_key_of(s, CONTROLLER_NAME)
            {
                c.tracker.deleted(&k, s);
            }
            // Someone else's change to one of our slices is undone by a sync; our own writes
            // need none.
            let (Change::Add(s) | Change::Update(_, s) | Change::Delete(s)) = &change;
            if let Some(k) = service_key_of(s, CONTROLLER_NAME)
                && (matches!(change, Change::Delete(_)) || c.tracker.should_sync(&k, s))
            {
                c.queue.add(k);
            }
        })
    };
    let workers = {
        let c = c.clone();
        async move {
            let _ = tokio::join!(
                c.services.wait_until_ready(),
                c.pods.wait_until_ready(),
                c.nodes.wait_until_ready(),
                c.slices.wait_until_ready()
            );
            info!("starting endpointslice controller");
            let sync_c = c.clone();
            c.queue
                .run_workers(CONCURRENT_SYNCS, shutdown, move |key| {
                    let c = sync_c.clone();
                    async move { c.sync(&key).instrument(info_span!("sync_endpointslices", %key)).await }
                })
                .await
        }
    };
    tokio::join!(service_informer, pod_informer, node_informer, slice_informer, workers);
}

impl Controller {
    /// Upstream's `syncService`.
    async fn sync(&self, svc_key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(svc_key);
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            // The garbage collector deletes the slices of a deleted service: they are owned.
            self.triggers.delete(svc_key);
            self.tracker.delete_service(svc_key);
            return Ok(());
        };
        if util::is_external_name(&svc) {
            return Ok(());
        }
        let Some(selector) = service_selector(&svc) else { return Ok(()) };
        let mut pods = self.pods.state_filter(|p| p.namespace().as_deref() == Some(ns) && selector.matches(p.labels()));
        pods.sort_by_key(|p| p.name_any());
        let pods: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
        let slices = self.slices.state_filter(|s| {
            s.namespace().as_deref() == Some(ns)
                && s.metadata.deletion_timestamp.is_none()
                && service_key_of(s, CONTROLLER_NAME).as_deref() == Some(svc_key)
        });
        let slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
        if self.tracker.stale(svc_key, &slices) {
            return Err(Error::StaleCache { key: svc_key.into() });
        }
        // Computed on every sync so that the tracker's state moves on even when nothing is written.
        let trigger = self.triggers.compute(svc_key, &svc, &pods);
        let nodes = &self.nodes;
        let node = |n: &str| nodes.get(&ObjectRef::new(n)).map(|n| (*n).clone());
        let plan = reconciler::reconcile(&svc, &pods, &node, &slices, MAX_ENDPOINTS_PER_SLICE);
        let missing = plan.missing_nodes.clone();
        if let Err(source) = self.apply(&svc, svc_key, plan, trigger).await {
            self.recorder.record(
                &*svc,
                WARNING,
                "FailedToUpdateEndpointSlices",
                format!("Error updating Endpoint Slices for Service {svc_key}: {source}"),
            );
            return Err(Error::Write { key: svc_key.into(), source });
        }
        if !missing.is_empty() {
            return Err(Error::NodeNotFound { key: svc_key.into(), pods: missing });
        }
        Ok(())
    }

    /// Upstream's `finalize`: creates (unless the service is going), updates, deletes.
    async fn apply(
        &self,
        svc: &Service,
        svc_key: &str,
        plan: Plan,
        trigger: Option<Timestamp>,
    ) -> Result<(), kube::Error> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &svc.namespace().unwrap_or_default());
        let pp = PostParams::default();
        let (created, updated, deleted) = (plan.create.len(), plan.update.len(), plan.delete.len());
        // New slices would race the garbage collector deleting the service's slices.
        if svc.metadata.deletion_timestamp.is_none() {
            for mut slice in plan.create {
                set_trigger_time(&mut slice, trigger);
                match api.create(&pp, &slice).await {
                    Ok(s) => self.tracker.update(svc_key, &s),
                    Err(e) if is_namespace_terminating(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        for mut slice in plan.update {
            set_trigger_time(&mut slice, trigger);
            let s = api.replace(&slice.name_any(), &pp, &slice).await?;
            self.tracker.update(svc_key, &s);
        }
        for slice in plan.delete {
            match api.delete(&slice.name_any(), &DeleteParams::default()).await {
                Ok(_) => self.tracker.expect_deletion(svc_key, &slice),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        if created + updated + deleted > 0 {
            debug!(created, updated, deleted, "wrote endpointslices");
        }
        Ok(())
    }
}
