//! The Deployment controller (upstream's `pkg/controller/deployment`): rolls a Deployment's
//! pod template out through ReplicaSets it owns, one ReplicaSet per template (named
//! `<deployment>-<pod-template-hash>`), scaling the new one up and the old ones down as the
//! strategy (RollingUpdate or Recreate) allows, and reporting the rollout in the status.
//!
//! The recipe is upstream's and the ReplicaSet controller's: informers (kube-runtime
//! watchers feeding reflector stores) only enqueue Deployment keys; kube-runtime's applier is
//! the work queue (one key never synced twice at once, failures retried with backoff); the
//! sync reads the caches, claims ReplicaSets (adopting matching orphans, releasing owned sets
//! that stopped matching), and writes through
//! the API. Pods are the ReplicaSet controller's business: this module reads only
//! ReplicaSets' status for readiness and availability.
//!
//! This module must not touch objects other than Deployments and the ReplicaSets they own.

mod claim;
pub mod deployment_util;
mod progress;
mod rolling;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::Recorder;
use crate::informer::{Change, Informers};
use crate::replicaset::{backoff, controller_of};

/// Deployments synced at once (upstream's `--concurrent-deployment-syncs` default).
const CONCURRENT_SYNCS: u16 = 5;

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} replica set {rs} of {key}")]
    ReplicaSet {
        key: String,
        rs: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("updating deployment {key}")]
    Deployment {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("re-reading deployment {key} before adopting replica sets")]
    Recheck {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("not adopting replica sets for {key}: the deployment is gone or being deleted")]
    CannotAdopt { key: String },
    #[error("hash collision for {key}; retrying with collision count {count}")]
    Collision { key: String, count: i32 },
}

/// Runs the Deployment controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (deployments, d_writer) = informers.store::<Deployment>().await;
    let (replica_sets, rs_writer) = informers.store::<ReplicaSet>().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<ObjectRef<Deployment>>();
    let manager = Arc::new(Manager {
        client: client.clone(),
        deployments: deployments.clone(),
        replica_sets,
        recorder: Recorder::new(client.clone(), "deployment-controller"),
        failures: Mutex::new(HashMap::new()),
    });

    let d_tx = tx.clone();
    let d_informer = d_writer.run(shutdown.clone(), move |change: Change<Deployment>| {
        for d in change.objects() {
            let _ = d_tx.send(ObjectRef::from_obj(&**d));
        }
    });
    let m = manager.clone();
    let rs_informer = rs_writer.run(shutdown.clone(), move |change: Change<ReplicaSet>| {
        for rs in change.objects() {
            for d in m.deployments_for(rs) {
                let _ = tx.send(d);
            }
        }
    });
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.clone().cancelled_owned());
    let workers = applier(
        |d, m| Box::pin(sync(d, m)),
        error_policy,
        manager,
        deployments,
        queue,
        Config::default().concurrency(CONCURRENT_SYNCS),
    )
    .for_each(|res| async move {
        if let Err(e) = res
            && !matches!(e, kube::runtime::controller::Error::ObjectNotFound(_))
        {
            debug!(error = %e, "deployment sync failed");
        }
    });
    info!("starting deployment controller");
    tokio::join!(d_informer, rs_informer, workers);
}

/// The controller's caches and clients.
pub struct Manager {
    client: Client,
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

fn key_of<R: Resource>(obj: &R) -> String {
    format!("{}/{}", obj.meta().namespace.as_deref().unwrap_or(""), obj.meta().name.as_deref().unwrap_or(""))
}

fn selector_of(d: &Deployment) -> Option<Selector> {
    let s = d.spec.as_ref()?.selector.clone();
    Selector::try_from(s).ok().filter(|s| !s.selects_all())
}

impl Manager {
    /// The Deployments to sync when `rs` changed: its controller, or for an orphan every
    /// Deployment whose selector matches it.
    fn deployments_for(&self, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
        let ns = rs.namespace().unwrap_or_default();
        if let Some(r) = controller_of(&rs.metadata) {
            if r.kind == "Deployment" {
                return vec![ObjectRef::new(&r.name).within(&ns)];
            }
            return Vec::new();
        }
        self.deployments
            .state_filter(|d| {
                d.namespace().as_deref() == Some(&ns) && selector_of(d).is_some_and(|s| s.matches(rs.labels()))
            })
            .iter()
            .map(|d| ObjectRef::from_obj(&**d))
            .collect()
    }

    fn rs_api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Scales `rs` to `to` and stamps the replica annotations of `d` (upstream's
    /// `scaleReplicaSetAndRecordEvent`); returns the updated set.
    async fn scale(&self, d: &Deployment, rs: &ReplicaSet, to: i32) -> Result<ReplicaSet, Error> {
        let from = deployment_util::rs_replicas(rs);
        let mut new = rs.clone();
        let annotations = new.metadata.annotations.get_or_insert_with(Default::default);
        let before = annotations.clone();
        deployment_util::set_replica_annotations(annotations, d);
        if from == to && before == *annotations {
            return Ok(rs.clone());
        }
        new.spec.get_or_insert_with(Default::default).replicas = Some(to);
        let ns = rs.namespace().unwrap_or_default();
        let updated = self
            .rs_api(&ns)
            .replace(&rs.name_any(), &Default::default(), &new)
            .await
            .map_err(|source| Error::ReplicaSet { key: key_of(d), rs: rs.name_any(), action: "scaling", source })?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            self.recorder.record(
                d,
                "Normal",
                "ScalingReplicaSet",
                format!("Scaled {dir} replica set {} from {from} to {to}", rs.name_any()),
            );
        }
        Ok(updated)
    }

    /// Sets the Deployment's revision annotation to `revision` when it differs.
    async fn sync_deployment_revision(&self, d: &Deployment, revision: i64) -> Result<(), Error> {
        if deployment_util::revision(d.metadata.annotations.as_ref()) == revision
            && d.annotations().contains_key(deployment_util::REVISION)
        {
            return Ok(());
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        let patch = serde_json::json!({"metadata": {"annotations": {deployment_util::REVISION: revision.to_string()}}});
        api.patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
            .map_err(|source| Error::Deployment { key: key_of(d), source })
    }

    /// Deletes the oldest old ReplicaSets beyond `revisionHistoryLimit` that have nothing
    /// left running (upstream's `cleanupDeployment`).
    async fn cleanup(&self, d: &Deployment, old: &[ReplicaSet]) -> Result<(), Error> {
        let limit = d.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
        let mut cleanable: Vec<&ReplicaSet> =
            old.iter().filter(|rs| rs.metadata.deletion_timestamp.is_none()).collect();
        if cleanable.len() <= limit {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| {
            (
                deployment_util::revision(rs.metadata.annotations.as_ref()),
                rs.metadata.creation_timestamp.clone().map(|t| t.0),
                rs.name_any(),
            )
        });
        let excess = cleanable.len() - limit;
        for rs in cleanable.into_iter().take(excess) {
            let observed = rs.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0);
            if deployment_util::rs_status(rs, |s| Some(s.replicas)) != 0
                || deployment_util::rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            debug!(rs = %rs.name_any(), "deleting old replica set beyond the history limit");
            match self.rs_api(&rs.namespace().unwrap_or_default()).delete(&rs.name_any(), &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(Error::ReplicaSet { key: key_of(d), rs: rs.name_any(), action: "deleting", source });
                }
            }
        }
        Ok(())
    }
}

fn error_policy(d: Arc<Deployment>, err: &Error, m: Arc<Manager>) -> Action {
    let key = key_of(&*d);
    let failures = {
        let mut f = m.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    let conflict = matches!(err, Error::Deployment { source: kube::Error::Api(s), .. } | Error::ReplicaSet { source: kube::Error::Api(s), .. } if s.code == 409);
    if conflict || matches!(err, Error::Collision { .. }) {
        debug!(%key, error = %err, "retrying");
    } else {
        warn!(%key, error = %err, source = ?std::error::Error::source(err).map(|s| s.to_string()), "deployment sync failed; retrying");
    }
    Action::requeue(backoff(failures))
}

/// Upstream's `syncDeployment`, for the Deployment the queue handed over.
async fn sync(d: Arc<Deployment>, m: Arc<Manager>) -> Result<Action, Error> {
    let _ = m.replica_sets.wait_until_ready().await;
    let key = key_of(&*d);
    let Some(selector) = selector_of(&d) else {
        warn!(%key, "deployment has an empty or invalid selector; not syncing");
        return Ok(Action::await_change());
    };
    let replica_sets = m.claim_replica_sets(&d, &selector).await?;
    let action = if d.metadata.deletion_timestamp.is_some() {
        rolling::sync_status_only(&m, &d, replica_sets).await?
    } else if d.spec.as_ref().and_then(|s| s.paused) == Some(true) || rolling::is_scaling_event(&d, &replica_sets) {
        rolling::sync_scaled(&m, &d, replica_sets).await?
    } else if deployment_util::is_recreate(&d) {
        rolling::rollout_recreate(&m, &d, replica_sets).await?
    } else {
        rolling::rollout_rolling(&m, &d, replica_sets).await?
    };
    m.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    Ok(action)
}
