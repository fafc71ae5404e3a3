//! The EndpointSlice mirroring controller (upstream's
//! `pkg/controller/endpointslicemirroring`): mirrors the Endpoints of Services without a
//! selector, written by users or other controllers, into EndpointSlices labelled
//! `endpointslice.kubernetes.io/managed-by: endpointslicemirroring-controller.k8s.io`, so
//! that consumers of slices see them too.
//!
//! Endpoints are not mirrored when labelled `endpointslice.kubernetes.io/skip-mirror: "true"`
//! (the API server's own `kubernetes` Endpoints are, as it writes that slice itself), when
//! they are a leader-election lock, or when their Service is missing or has a selector (then
//! the EndpointSlice controller owns the slices); mirrored slices of such Endpoints are deleted.
//!
//! Informers over Endpoints, Services and EndpointSlices only enqueue `namespace/name` keys;
//! the sync reads the caches and writes the [`reconciler`]'s plan.

pub mod reconciler;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use crate::endpoint::workqueue::WorkQueue;
use crate::endpoint::{ANNOTATION_LEADER, is_namespace_terminating};
use crate::endpointslice::service_key_of;
use crate::endpointslice::tracker::Tracker;
use crate::endpointslice::util::{LABEL_SKIP_MIRROR, key, service_selector, split_key};
use crate::events::{Recorder, WARNING};
use crate::informer::{Change, Informers};
use reconciler::{CONTROLLER_NAME, MAX_ENDPOINTS_PER_SUBSET, Plan};

/// Endpoints synced at once (upstream's `--mirroring-concurrent-service-endpoint-syncs`).
const CONCURRENT_SYNCS: usize = 5;
const COMPONENT: &str = "endpoint-slice-mirroring-controller";

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the endpointslice cache of {key} is behind this controller's writes")]
    StaleCache { key: String },
    #[error("writing mirrored endpointslices of {key}")]
    Write {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// Upstream's `shouldMirror`.
pub fn should_mirror(endpoints: &Endpoints) -> bool {
    endpoints.labels().get(LABEL_SKIP_MIRROR).map(String::as_str) != Some("true")
        && !endpoints.annotations().contains_key(ANNOTATION_LEADER)
}

struct Controller {
    client: Client,
    endpoints: Store<Endpoints>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    queue: WorkQueue,
    tracker: Tracker,
    recorder: Recorder,
}

/// Runs the mirroring controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (endpoints, endpoints_writer) = informers.store::<Endpoints>().await;
    let (services, service_writer) = informers.store::<Service>().await;
    let (slices, slice_writer) = informers.store::<EndpointSlice>().await;
    let c = Arc::new(Controller {
        client: client.clone(),
        endpoints,
        services,
        slices,
        queue: WorkQueue::default(),
        tracker: Tracker::default(),
        recorder: Recorder::new(client.clone(), COMPONENT),
    });
    let endpoints_informer = {
        let c = c.clone();
        endpoints_writer.run(shutdown.clone(), move |change| {
            if change.objects().iter().any(|e| should_mirror(e)) {
                let (Change::Add(e) | Change::Update(_, e) | Change::Delete(e)) = &change;
                c.queue.add(key(&e.namespace().unwrap_or_default(), &e.name_any()));
            }
        })
    };
    let service_informer = {
        let c = c.clone();
        service_writer.run(shutdown.clone(), move |change| {
            // Only services with mirrored endpoints, or with endpoints to mirror, matter.
            let (Change::Add(s) | Change::Update(_, s) | Change::Delete(s)) = &change;
            let ns = s.namespace().unwrap_or_default();
            if c.endpoints.get(&ObjectRef::new(&s.name_any()).within(&ns)).is_some() {
                c.queue.add(key(&ns, &s.name_any()));
            }
        })
    };
    let slice_informer = {
        let c = c.clone();
        slice_writer.run(shutdown.clone(), move |change| {
            let (Change::Add(s) | Change::Update(_, s) | Change::Delete(s)) = &change;
            let Some(k) = service_key_of(s, CONTROLLER_NAME) else { return };
            if let Change::Delete(_) = change {
                c.tracker.deleted(&k, s);
                c.queue.add(k);
            } else if c.tracker.should_sync(&k, s) {
                c.queue.add(k);
            }
        })
    };
    let workers = {
        let c = c.clone();
        async move {
            let _ = tokio::join!(
                c.endpoints.wait_until_ready(),
                c.services.wait_until_ready(),
                c.slices.wait_until_ready()
            );
            info!("starting endpointslice mirroring controller");
            // Mirrored slices whose Endpoints went while the controller was down.
            for s in c.slices.state() {
                if let Some(k) = service_key_of(&s, CONTROLLER_NAME) {
                    c.queue.add(k);
                }
            }
            let sync_c = c.clone();
            c.queue
                .run_workers(CONCURRENT_SYNCS, shutdown, move |key| {
                    let c = sync_c.clone();
                    async move { c.sync(&key).instrument(info_span!("mirror_endpoints", %key)).await }
                })
                .await
        }
    };
    tokio::join!(endpoints_informer, service_informer, slice_informer, workers);
}

impl Controller {
    fn mirrored_slices(&self, ep_key: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices.state_filter(|s| service_key_of(s, CONTROLLER_NAME).as_deref() == Some(ep_key))
    }

    /// Upstream's `syncEndpoints`.
    async fn sync(&self, ep_key: &str) -> Result<(), Error> {
        let (ns, name) = split_key(ep_key);
        let endpoints = self.endpoints.get(&ObjectRef::new(name).within(ns)).filter(|e| should_mirror(e));
        let service = self.services.get(&ObjectRef::new(name).within(ns));
        // Nothing to mirror: no Endpoints, Endpoints not to mirror, no Service, or a Service
        // whose slices the EndpointSlice controller keeps.
        let (Some(endpoints), Some(_)) = (endpoints, service.filter(|s| service_selector(s).is_none())) else {
            self.tracker.delete_service(ep_key);
            return self.delete_mirrored_slices(ep_key).await;
        };
        let slices = self.mirrored_slices(ep_key);
        let slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
        if self.tracker.stale(ep_key, &slices) {
            return Err(Error::StaleCache { key: ep_key.into() });
        }
        let plan = reconciler::reconcile(&endpoints, &slices, MAX_ENDPOINTS_PER_SUBSET);
        if plan.invalid > 0 {
            self.recorder.record(
                &*endpoints,
                WARNING,
                "InvalidIPAddress",
                format!("Skipped {} invalid IP addresses when mirroring to EndpointSlices", plan.invalid),
            );
        }
        if plan.skipped > plan.invalid {
            self.recorder.record(
                &*endpoints,
                WARNING,
                "TooManyAddressesToMirror",
                format!(
                    "A max of {MAX_ENDPOINTS_PER_SUBSET} addresses can be mirrored to EndpointSlices per Endpoints subset. {} addresses were skipped",
                    plan.skipped
                ),
            );
        }
        self.apply(&endpoints, ep_key, plan).await.map_err(|source| Error::Write { key: ep_key.into(), source })
    }

    /// Upstream's `finalize`.
    async fn apply(&self, endpoints: &Endpoints, ep_key: &str, plan: Plan) -> Result<(), kube::Error> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), split_key(ep_key).0);
        let pp = PostParams::default();
        let (created, updated, deleted) = (plan.create.len(), plan.update.len(), plan.delete.len());
        // No new slices for Endpoints that are going.
        if endpoints.metadata.deletion_timestamp.is_none() {
            for slice in plan.create {
                match api.create(&pp, &slice).await {
                    Ok(s) => self.tracker.update(ep_key, &s),
                    Err(e) if is_namespace_terminating(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        for slice in plan.update {
            let s = api.replace(&slice.name_any(), &pp, &slice).await?;
            self.tracker.update(ep_key, &s);
        }
        for slice in plan.delete {
            self.delete_slice(&api, ep_key, &slice).await?;
        }
        if created + updated + deleted > 0 {
            debug!(created, updated, deleted, "mirrored endpoints");
        }
        Ok(())
    }

    async fn delete_slice(
        &self,
        api: &Api<EndpointSlice>,
        ep_key: &str,
        slice: &EndpointSlice,
    ) -> Result<(), kube::Error> {
        match api.delete(&slice.name_any(), &DeleteParams::default()).await {
            Ok(_) => {
                self.tracker.expect_deletion(ep_key, slice);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Upstream's `deleteMirroredSlices`.
    async fn delete_mirrored_slices(&self, ep_key: &str) -> Result<(), Error> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), split_key(ep_key).0);
        for slice in self.mirrored_slices(ep_key) {
            self.delete_slice(&api, ep_key, &slice)
                .await
                .map_err(|source| Error::Write { key: ep_key.into(), source })?;
        }
        Ok(())
    }
}
