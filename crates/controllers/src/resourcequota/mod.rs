//! The resource quota controller (upstream's `pkg/controller/resourcequota`): keeps each
//! ResourceQuota's `status.hard` equal to its `spec.hard` and `status.used` equal to what the
//! namespace's objects use, counted by the evaluators shared with quota admission
//! ([`tug_api::quota`]).
//!
//! A quota is synced when its `spec.hard` changes, when objects it counts are deleted or stop
//! counting (a pod reaching a terminal phase, a service changing type, a claim resized), and
//! every `resync` (upstream's `--resource-quota-sync-period`, 5 minutes) to repair drift such
//! as usage charged by admission for a create that then failed. Usage is computed from fresh
//! lists through the API, so that a slow cache never lowers `used` below what admission has
//! already granted.
//!
//! This module writes only ResourceQuota status.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, ResourceQuotaStatus, Service,
};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tug_api::quota::evaluator::{Evaluator, pod_counts};
use tug_api::quota::{self, ResourceList};

use crate::deletions::Deleted;
use crate::informer::{Change, Informers};
use crate::replicaset::backoff as retry_backoff;

/// Quotas synced at once (upstream's `--concurrent-resource-quota-syncs`).
const CONCURRENT_SYNCS: u16 = 5;
/// Upstream's `--resource-quota-sync-period` default.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);

/// Why a sync failed; the quota is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("discovering {group}/{resource} to count it for quota {key}")]
    Discover {
        key: String,
        group: String,
        resource: String,
        #[source]
        source: kube::Error,
    },
    #[error("{group}/{resource} counted by quota {key} is not served")]
    NotServed { key: String, group: String, resource: String },
    #[error("listing {resource} for quota {key}")]
    List {
        key: String,
        resource: String,
        #[source]
        source: kube::Error,
    },
    #[error("evaluating usage for quota {key}")]
    Evaluate {
        key: String,
        #[source]
        source: tug_api::quota::evaluator::EvaluatorError,
    },
    #[error("updating the status of quota {key}")]
    Status {
        key: String,
        #[source]
        source: kube::Error,
    },
}

struct Ctx {
    client: Client,
    /// API resources of `count/<resource>.<group>` kinds, found by discovery.
    resources: Mutex<HashMap<(String, String), ApiResource>>,
    failures: Mutex<HashMap<String, u32>>,
}

fn key_of(q: &ResourceQuota) -> String {
    format!("{}/{}", q.namespace().unwrap_or_default(), q.name_any())
}

/// Sends every quota of `ns` to the queue.
fn enqueue_namespace(quotas: &Store<ResourceQuota>, tx: &mpsc::UnboundedSender<ObjectRef<ResourceQuota>>, ns: &str) {
    for q in quotas.state() {
        if q.namespace().as_deref() == Some(ns) {
            let _ = tx.send(ObjectRef::from_obj(&*q));
        }
    }
}

/// Watches one kind and requeues its namespace's quotas when `replenish` says a change may
/// have lowered usage (upstream's replenishment controllers).
async fn replenishment<K>(
    informers: Informers,
    quotas: Store<ResourceQuota>,
    tx: mpsc::UnboundedSender<ObjectRef<ResourceQuota>>,
    shutdown: CancellationToken,
    replenish: fn(&K, &K) -> bool,
) where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (_, writer) = informers.store::<K>().await;
    writer
        .run(shutdown, move |c: Change<K>| {
            let ns = match &c {
                Change::Delete(o) => o.meta().namespace.clone(),
                Change::Update(old, new) if replenish(old, new) => new.meta().namespace.clone(),
                _ => None,
            };
            if let Some(ns) = ns {
                enqueue_namespace(&quotas, &tx, &ns);
            }
        })
        .await;
}

/// Kinds whose deletions their own replenishment informer in [`run`] reports.
const WITH_INFORMER: [&str; 4] = ["pods", "services", "persistentvolumeclaims", "replicationcontrollers"];

/// Requeues the quotas that count a deleted object's resource in its namespace (upstream's
/// `replenishQuota`): ConfigMaps, Secrets and whatever `count/<resource>` names. The garbage
/// collector's watches report the deletions ([`crate::deletions`]); only they matter for these
/// kinds, so no cache of every ConfigMap's and Secret's data is kept for it.
async fn replenish_deletions(
    mut deletions: mpsc::UnboundedReceiver<Deleted>,
    quotas: Store<ResourceQuota>,
    tx: mpsc::UnboundedSender<ObjectRef<ResourceQuota>>,
    shutdown: CancellationToken,
) {
    loop {
        let deleted = tokio::select! {
            _ = shutdown.cancelled() => return,
            deleted = deletions.recv() => match deleted { Some(d) => d, None => return },
        };
        if deleted.namespace.is_empty()
            || (deleted.group.is_empty() && WITH_INFORMER.contains(&deleted.resource.as_str()))
        {
            continue;
        }
        let evaluator = Evaluator::for_resource(&deleted.group, &deleted.resource);
        let counts =
            |q: &ResourceQuota| hard(q).is_some_and(|hard| !evaluator.matching_resources(hard.keys()).is_empty());
        for q in quotas.state() {
            if q.namespace().as_deref() == Some(deleted.namespace.as_str()) && counts(&q) {
                let _ = tx.send(ObjectRef::from_obj(&*q));
            }
        }
    }
}

fn never<K>(_: &K, _: &K) -> bool {
    false
}

fn pod_stopped_counting(old: &Pod, new: &Pod) -> bool {
    let now = jiff::Timestamp::now();
    pod_counts(old, now) && !pod_counts(new, now)
}

fn service_type_changed(old: &Service, new: &Service) -> bool {
    let t = |s: &Service| s.spec.as_ref().and_then(|s| s.type_.clone());
    t(old) != t(new)
}

fn claim_resized(old: &PersistentVolumeClaim, new: &PersistentVolumeClaim) -> bool {
    let storage = |c: &PersistentVolumeClaim| {
        c.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .cloned()
    };
    storage(old) != storage(new)
}

/// Runs the controller until `shutdown`, resyncing every quota each `resync`; `deletions` are
/// those the garbage collector sees.
pub async fn run(
    informers: Informers,
    deletions: mpsc::UnboundedReceiver<Deleted>,
    resync: Duration,
    shutdown: CancellationToken,
) {
    let client = informers.client();
    let (quotas, writer) = informers.store::<ResourceQuota>().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<ObjectRef<ResourceQuota>>();
    let quota_informer = {
        let tx = tx.clone();
        writer.run(shutdown.clone(), move |c| match c {
            Change::Add(q) => {
                let _ = tx.send(ObjectRef::from_obj(&*q));
            }
            // Only a new intent matters: status writes (ours and admission's) are not news.
            Change::Update(old, new) if hard(&old) != hard(&new) || hard(&new) != status_hard(&new) => {
                let _ = tx.send(ObjectRef::from_obj(&*new));
            }
            _ => {}
        })
    };
    let deletion_replenisher = replenish_deletions(deletions, quotas.clone(), tx.clone(), shutdown.clone());
    let replenishers = futures::future::join_all([
        Box::pin(replenishment::<Pod>(
            informers.clone(),
            quotas.clone(),
            tx.clone(),
            shutdown.clone(),
            pod_stopped_counting,
        )) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        Box::pin(replenishment::<Service>(
            informers.clone(),
            quotas.clone(),
            tx.clone(),
            shutdown.clone(),
            service_type_changed,
        )),
        Box::pin(replenishment::<PersistentVolumeClaim>(
            informers.clone(),
            quotas.clone(),
            tx.clone(),
            shutdown.clone(),
            claim_resized,
        )),
        Box::pin(replenishment::<ReplicationController>(
            informers.clone(),
            quotas.clone(),
            tx.clone(),
            shutdown.clone(),
            never,
        )),
    ]);
    let resyncer = {
        let (quotas, tx, shutdown) = (quotas.clone(), tx.clone(), shutdown.clone());
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(resync) => {}
                }
                for q in quotas.state() {
                    let _ = tx.send(ObjectRef::from_obj(&*q));
                }
            }
        }
    };
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.clone().cancelled_owned());
    let ctx = Arc::new(Ctx { client, resources: Mutex::new(HashMap::new()), failures: Mutex::new(HashMap::new()) });
    let workers = applier(
        |q, ctx| Box::pin(sync(q, ctx)),
        error_policy,
        ctx,
        quotas,
        queue,
        Config::default().concurrency(CONCURRENT_SYNCS),
    )
    .for_each(|res| async move {
        match res {
            Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
            Err(e) => debug!(error = %e, "resource quota sync failed"),
        }
    });
    info!("starting resource quota controller");
    tokio::join!(quota_informer, replenishers, deletion_replenisher, resyncer, workers);
}

fn hard(q: &ResourceQuota) -> Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>> {
    q.spec.as_ref().and_then(|s| s.hard.clone())
}

fn status_hard(q: &ResourceQuota) -> Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>> {
    q.status.as_ref().and_then(|s| s.hard.clone())
}

fn error_policy(q: Arc<ResourceQuota>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = key_of(&q);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    warn!(%key, error = %err, "resource quota sync failed; retrying");
    Action::requeue(retry_backoff(n))
}

impl Ctx {
    /// The API resource for `resource` in `group`, found once by discovery.
    async fn api_resource(&self, key: &str, group: &str, resource: &str) -> Result<ApiResource, Error> {
        let id = (group.to_string(), resource.to_string());
        if let Some(ar) = self.resources.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(ar.clone());
        }
        let found = match (group, resource) {
            ("", "pods") => Some(ApiResource::erase::<Pod>(&())),
            ("", "services") => Some(ApiResource::erase::<Service>(&())),
            ("", "persistentvolumeclaims") => Some(ApiResource::erase::<PersistentVolumeClaim>(&())),
            _ => {
                let g = kube::discovery::group(&self.client, group).await.map_err(|source| Error::Discover {
                    key: key.into(),
                    group: group.into(),
                    resource: resource.into(),
                    source,
                })?;
                g.recommended_resources().into_iter().map(|(ar, _)| ar).find(|ar| ar.plural == resource)
            }
        };
        let ar = found.ok_or_else(|| Error::NotServed {
            key: key.into(),
            group: group.into(),
            resource: resource.into(),
        })?;
        self.resources.lock().unwrap_or_else(|e| e.into_inner()).insert(id, ar.clone());
        Ok(ar)
    }
}

/// What the namespace's objects use of `hard`, per upstream's `CalculateUsage`: each evaluator
/// whose resources the quota limits counts the objects in the quota's scopes.
async fn calculate_usage(ctx: &Ctx, q: &ResourceQuota, hard: &ResourceList) -> Result<ResourceList, Error> {
    let key = key_of(q);
    let ns = q.namespace().unwrap_or_default();
    let selectors = quota::scope_selectors(q);
    let mut owners: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for name in hard.keys() {
        if let Some(owner) = Evaluator::owner_of(name) {
            owners.entry(owner).or_default().push(name.clone());
        }
    }
    let now = jiff::Timestamp::now();
    let mut used = ResourceList::new();
    for ((group, resource), names) in owners {
        for n in &names {
            used.insert(n.clone(), tug_api::quantity::Exact::ZERO);
        }
        let evaluator = Evaluator::for_resource(&group, &resource);
        // A scoped quota counts only pods; listing anything else would find nothing in scope.
        if !selectors.is_empty() && evaluator != Evaluator::Pods {
            continue;
        }
        let ar = ctx.api_resource(&key, &group, &resource).await?;
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
        let list = api.list(&ListParams::default()).await.map_err(|source| Error::List {
            key: key.clone(),
            resource: resource.clone(),
            source,
        })?;
        for item in list.items {
            let Ok(obj) = serde_json::to_value(&item) else { continue };
            let matches = evaluator
                .matches_scopes(&selectors, &obj)
                .map_err(|source| Error::Evaluate { key: key.clone(), source })?;
            if matches {
                let usage =
                    evaluator.usage(&obj, now).map_err(|source| Error::Evaluate { key: key.clone(), source })?;
                used = quota::add(&used, &quota::mask(&usage, &quota::names(hard)));
            }
        }
    }
    Ok(quota::mask(&used, &quota::names(hard)))
}

async fn sync(q: Arc<ResourceQuota>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&q);
    let hard = hard(&q).as_ref().map(quota::from_api).unwrap_or_default();
    let used = calculate_usage(&ctx, &q, &hard).await?;
    let status = ResourceQuotaStatus { hard: Some(quota::to_api(&hard)), used: Some(quota::to_api(&used)) };
    let old = q.status.as_ref();
    let unchanged = old.and_then(|s| s.hard.as_ref()).map(quota::from_api) == Some(hard.clone())
        && old.and_then(|s| s.used.as_ref()).map(quota::from_api) == Some(used.clone());
    if !unchanged {
        let mut next = (*q).clone();
        next.status = Some(status);
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &q.namespace().unwrap_or_default());
        match api.replace_status(&q.name_any(), &PostParams::default(), &next).await {
            Ok(_) => debug!(%key, used = %quota::pretty_print(&used), "updated quota usage"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(Error::Status { key, source }),
        }
    }
    ctx.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_pods_leaving_the_count_replenish_quota() {
        let pod = |phase: &str| -> Pod { serde_json::from_value(json!({"status": {"phase": phase}})).unwrap() };
        assert!(pod_stopped_counting(&pod("Running"), &pod("Succeeded")));
        assert!(pod_stopped_counting(&pod("Running"), &pod("Failed")));
        assert!(!pod_stopped_counting(&pod("Pending"), &pod("Running")));
        assert!(!pod_stopped_counting(&pod("Failed"), &pod("Failed")));
    }

    #[test]
    fn service_type_changes_replenish_quota() {
        let svc = |t: &str| -> Service { serde_json::from_value(json!({"spec": {"type": t}})).unwrap() };
        assert!(service_type_changed(&svc("NodePort"), &svc("ClusterIP")));
        assert!(!service_type_changed(&svc("ClusterIP"), &svc("ClusterIP")));
    }
}
