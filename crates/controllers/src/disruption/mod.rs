//! The disruption controller (upstream's `pkg/controller/disruption`): keeps each
//! PodDisruptionBudget's status (currentHealthy, desiredHealthy, expectedPods,
//! disruptionsAllowed, disruptedPods, observedGeneration and the `DisruptionAllowed`
//! condition) true to its matching pods, so that the API server's eviction subresource can
//! decide from it. Expected pods come from the pods' controllers' scale when the budget needs
//! it ([`budget::needs_scale`]), found as upstream's finders do (ReplicaSet or its Deployment,
//! ReplicationController, StatefulSet).
//!
//! This module writes only PodDisruptionBudget status and Events.

pub mod budget;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller_ref::controller_of;
use crate::events::{Recorder, WARNING};
use crate::informer::{Change, Informers};
use crate::replicaset::backoff as retry_backoff;

const CONCURRENT_SYNCS: u16 = 5;

/// Why a sync failed; the budget is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading controller {kind}/{name} of pods selected by {key}")]
    Controller {
        key: String,
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status of {key}")]
    Status {
        key: String,
        #[source]
        source: kube::Error,
    },
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

fn key_of(pdb: &PodDisruptionBudget) -> String {
    format!("{}/{}", pdb.namespace().unwrap_or_default(), pdb.name_any())
}

/// The budget's selector: none selects nothing; an empty one selects every pod (policy/v1).
fn selector(pdb: &PodDisruptionBudget) -> Option<Selector> {
    pdb.spec.as_ref()?.selector.clone()?.try_into().ok()
}

fn selects(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    pdb.namespace() == pod.namespace() && selector(pdb).is_some_and(|s| s.matches(pod.labels()))
}

/// Runs the controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (pdbs, pdb_writer) = informers.store::<PodDisruptionBudget>().await;
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<ObjectRef<PodDisruptionBudget>>();
    let pdb_informer = {
        let tx = tx.clone();
        pdb_writer.run(shutdown.clone(), move |c| {
            if let Change::Add(p) | Change::Update(_, p) = c {
                let _ = tx.send(ObjectRef::from_obj(&*p));
            }
        })
    };
    let pod_informer = {
        let (tx, pdbs) = (tx.clone(), pdbs.clone());
        pod_writer.run(shutdown.clone(), move |c: Change<Pod>| {
            for pod in c.objects() {
                for pdb in pdbs.state() {
                    if selects(&pdb, pod) {
                        let _ = tx.send(ObjectRef::from_obj(&*pdb));
                    }
                }
            }
        })
    };
    drop(tx);
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    let recorder = Recorder::new(client.clone(), "controllermanager");
    let ctx = Arc::new(Ctx { client, pods, recorder, failures: Mutex::new(HashMap::new()) });
    let workers = applier(
        |pdb, ctx| Box::pin(sync(pdb, ctx)),
        error_policy,
        ctx,
        pdbs,
        queue,
        Config::default().concurrency(CONCURRENT_SYNCS),
    )
    .for_each(|res| async move {
        match res {
            Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
            Err(e) => debug!(error = %e, "disruption sync failed"),
        }
    });
    info!("starting disruption controller");
    tokio::join!(pdb_informer, pod_informer, workers);
}

fn error_policy(pdb: Arc<PodDisruptionBudget>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = key_of(&pdb);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    warn!(%key, error = %err, "disruption sync failed; retrying");
    Action::requeue(retry_backoff(n))
}

/// Why the expected count could not be found: a budget that needs scale over a pod whose
/// controller cannot be read, reported in the `SyncFailed` condition.
enum ScaleError {
    Message(String),
    Api(Error),
}

/// The scale of the controller `r` if it is one a finder knows and still has that UID:
/// a ReplicaSet owned by a Deployment counts as the Deployment.
async fn controller_scale(
    client: &Client,
    key: &str,
    ns: &str,
    r: &OwnerReference,
) -> Result<Option<(String, i32)>, Error> {
    let group = r.api_version.split_once('/').map_or("", |(g, _)| g);
    let err = |source| Error::Controller { key: key.into(), kind: r.kind.clone(), name: r.name.clone(), source };
    let same_uid = |uid: Option<&String>| uid == Some(&r.uid);
    match (group, r.kind.as_str()) {
        ("apps", "ReplicaSet") => {
            let Some(rs) = Api::<ReplicaSet>::namespaced(client.clone(), ns).get_opt(&r.name).await.map_err(err)?
            else {
                return Ok(None);
            };
            if !same_uid(rs.metadata.uid.as_ref()) {
                return Ok(None);
            }
            if let Some(owner) = controller_of(&rs.metadata).filter(|o| o.kind == "Deployment")
                && let Some(d) =
                    Api::<Deployment>::namespaced(client.clone(), ns).get_opt(&owner.name).await.map_err(err)?
                && d.metadata.uid.as_ref() == Some(&owner.uid)
            {
                return Ok(Some((owner.uid.clone(), d.spec.and_then(|s| s.replicas).unwrap_or(1))));
            }
            Ok(Some((r.uid.clone(), rs.spec.and_then(|s| s.replicas).unwrap_or(1))))
        }
        ("", "ReplicationController") => {
            let api = Api::<ReplicationController>::namespaced(client.clone(), ns);
            Ok(api
                .get_opt(&r.name)
                .await
                .map_err(err)?
                .filter(|rc| same_uid(rc.metadata.uid.as_ref()))
                .map(|rc| (r.uid.clone(), rc.spec.and_then(|s| s.replicas).unwrap_or(1))))
        }
        ("apps", "StatefulSet") => {
            let api = Api::<StatefulSet>::namespaced(client.clone(), ns);
            Ok(api
                .get_opt(&r.name)
                .await
                .map_err(err)?
                .filter(|s| same_uid(s.metadata.uid.as_ref()))
                .map(|s| (r.uid.clone(), s.spec.and_then(|s| s.replicas).unwrap_or(1))))
        }
        _ => Ok(None),
    }
}

/// The total scale of the pods' controllers and the pods without one (upstream's
/// `getExpectedScale`).
async fn expected_scale(ctx: &Ctx, key: &str, ns: &str, pods: &[&Pod]) -> Result<(i32, Vec<String>), ScaleError> {
    let mut scales: HashMap<String, i32> = HashMap::new();
    let mut unmanaged = Vec::new();
    for pod in pods {
        let Some(r) = controller_of(&pod.metadata) else {
            unmanaged.push(pod.name_any());
            continue;
        };
        if scales.contains_key(&r.uid) {
            continue;
        }
        match controller_scale(&ctx.client, key, ns, r).await.map_err(ScaleError::Api)? {
            Some((uid, scale)) => {
                scales.insert(uid, scale);
            }
            None => return Err(ScaleError::Message(format!("found no controllers for pod {:?}", pod.name_any()))),
        }
    }
    Ok((scales.values().sum(), unmanaged))
}

async fn sync(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&pdb);
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pdb.namespace().unwrap_or_default();
    let now = Timestamp::now();
    let all = ctx.pods.state();
    let pods: Vec<&Pod> = all.iter().map(|p| &**p).filter(|p| selects(&pdb, p)).collect();
    if pods.is_empty() {
        ctx.recorder.record(&*pdb, WARNING, "NoPods", "No matching pods found".into());
    }
    let scale = if budget::needs_scale(&pdb) {
        match expected_scale(&ctx, &key, &ns, &pods).await {
            Ok((scale, unmanaged)) => {
                if !unmanaged.is_empty() {
                    ctx.recorder.record(
                        &*pdb,
                        WARNING,
                        "UnmanagedPods",
                        format!(
                            "Pods selected by this PodDisruptionBudget (selector: {}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value.",
                            selector(&pdb).map(|s| s.to_string()).unwrap_or_default()
                        ),
                    );
                }
                Ok(scale)
            }
            Err(ScaleError::Api(e)) => return Err(e),
            Err(ScaleError::Message(m)) => Err(m),
        }
    } else {
        Ok(0)
    };
    let pod_count = i32::try_from(pods.len()).unwrap_or(i32::MAX);
    let computed = scale.and_then(|scale| budget::expected_and_desired(&pdb, pod_count, scale));
    let (status, recheck) = match computed {
        Ok((expected, desired)) => {
            let (disrupted, timed_out, recheck) = budget::disrupted_pods(&pdb, &pods, now);
            for name in timed_out {
                if let Some(pod) = pods.iter().find(|p| p.name_any() == name) {
                    ctx.recorder.record(
                        *pod,
                        WARNING,
                        "NotDeleted",
                        format!("Pod was expected by PDB {ns}/{} to be deleted but it wasn't", pdb.name_any()),
                    );
                }
            }
            let healthy = budget::count_healthy(&pods, &disrupted, now);
            (budget::status(&pdb, healthy, desired, expected, disrupted, now), recheck)
        }
        Err(message) => {
            ctx.recorder.record(
                &*pdb,
                WARNING,
                "CalculateExpectedPodCountFailed",
                format!("Failed to calculate the number of expected pods: {message}"),
            );
            (budget::fail_safe(&pdb, message, now), None)
        }
    };
    if pdb.status.as_ref() != Some(&status) {
        let mut next = (*pdb).clone();
        next.status = Some(status);
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
        match api.replace_status(&pdb.name_any(), &PostParams::default(), &next).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(Error::Status { key, source }),
        }
    }
    ctx.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    Ok(match recheck.and_then(|t| Duration::try_from(t.duration_since(now)).ok()) {
        Some(d) => Action::requeue(d + Duration::from_secs(1)),
        None => Action::await_change(),
    })
}
