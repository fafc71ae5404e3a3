//! The namespace controller (upstream's `pkg/controller/namespace`): empties a namespace that is
//! being deleted, then removes its `kubernetes` finalizer so the API server can let it go.
//!
//! A namespace delete only marks it Terminating (the API server keeps it while
//! `spec.finalizers` holds `kubernetes`). This controller deletes every namespaced object in it,
//! through discovery so that every served resource is covered, waits until none is left (pods
//! may take their grace period), then calls `namespaces/<name>/finalize` and deletes the
//! namespace for good.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The finalizer the API server puts in every namespace's `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";

/// Why a namespace could not be finished this time; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("discovering the served resources")]
    Discovery(#[source] kube::Error),
    #[error("deleting {resource} in namespace {namespace}")]
    DeleteContent {
        namespace: String,
        resource: String,
        #[source]
        source: kube::Error,
    },
    #[error("finalizing namespace {namespace}")]
    Finalize {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

struct Context {
    client: Client,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "namespace reconcile failed");
            }
        })
        .await;
}

fn error_policy(ns: Arc<Namespace>, err: &Error, _: Arc<Context>) -> Action {
    warn!(namespace = %ns.name_any(), error = %err, "namespace deletion will be retried");
    Action::requeue(Duration::from_secs(5))
}

fn has_finalizer(ns: &Namespace) -> bool {
    ns.spec.as_ref().and_then(|s| s.finalizers.as_ref()).is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    if !has_finalizer(&ns) {
        delete_namespace(&api, &name).await?;
        return Ok(Action::await_change());
    }
    let remaining = delete_content(&ctx.client, &name).await?;
    set_deletion_conditions(&api, &ns, &remaining).await?;
    if remaining.objects > 0 {
        debug!(namespace = %name, remaining = remaining.objects, "waiting for namespace content to go");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut finalized = (*ns).clone();
    if let Some(f) = finalized.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
        f.retain(|x| x != FINALIZER);
    }
    ignore_not_found(api.replace_subresource("finalize", &name, &PostParams::default(), &finalized).await)
        .map_err(|source| Error::Finalize { namespace: name.clone(), source })?;
    delete_namespace(&api, &name).await?;
    info!(namespace = %name, "namespace deleted");
    Ok(Action::await_change())
}

async fn delete_namespace(api: &Api<Namespace>, name: &str) -> Result<(), Error> {
    ignore_not_found(api.delete(name, &DeleteParams::default()).await)
        .map_err(|source| Error::Finalize { namespace: name.to_string(), source })
}

/// What is left in a namespace after a deletion pass.
#[derive(Debug, Default)]
struct Remaining {
    objects: usize,
    /// "<resource>.<group>" -> count
    by_resource: BTreeMap<String, usize>,
    /// finalizer -> count of objects holding it
    by_finalizer: BTreeMap<String, usize>,
}

/// Upstream's deletion conditions on the namespace's status, so users see why it is still
/// Terminating.
async fn set_deletion_conditions(api: &Api<Namespace>, ns: &Namespace, left: &Remaining) -> Result<(), Error> {
    let content = if left.by_resource.is_empty() {
        ("False", "ContentRemoved", "All content successfully removed".to_string())
    } else {
        let list: Vec<String> =
            left.by_resource.iter().map(|(r, n)| format!("{r} has {n} resource instances")).collect();
        ("True", "SomeResourcesRemain", format!("Some resources are remaining: {}", list.join(", ")))
    };
    let finalizers = if left.by_finalizer.is_empty() {
        ("False", "ContentHasNoFinalizers", "All content-preserving finalizers finished".to_string())
    } else {
        let list: Vec<String> =
            left.by_finalizer.iter().map(|(f, n)| format!("{f} in {n} resource instances")).collect();
        (
            "True",
            "SomeFinalizersRemain",
            format!("Some content in the namespace has finalizers remaining: {}", list.join(", ")),
        )
    };
    let wanted = [
        (
            "NamespaceDeletionDiscoveryFailure",
            ("False", "ResourcesDiscovered", "All resources successfully discovered".to_string()),
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            ("False", "ParsedGroupVersions", "All legacy kube types successfully parsed".to_string()),
        ),
        (
            "NamespaceDeletionContentFailure",
            ("False", "ContentDeleted", "All content successfully deleted, may be waiting on finalization".to_string()),
        ),
        ("NamespaceContentRemaining", content),
        ("NamespaceFinalizersRemaining", finalizers),
    ];
    let existing = ns.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let mut conditions = Vec::new();
    let mut changed = false;
    for (kind, (status, reason, message)) in wanted {
        let old = existing.iter().find(|c| c.type_ == kind);
        let same = old.is_some_and(|c| {
            c.status == status && c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(&message)
        });
        changed |= !same;
        let transition = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        conditions.push(NamespaceCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: transition,
        });
    }
    if !changed {
        return Ok(());
    }
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    let name = ns.name_any();
    ignore_not_found(api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await)
        .map_err(|source| Error::Finalize { namespace: name, source })
}

/// Deletes everything in the namespace; reports what is still there.
async fn delete_content(client: &Client, ns: &str) -> Result<Remaining, Error> {
    let discovery = Discovery::new(client.clone()).run().await.map_err(Error::Discovery)?;
    let mut remaining = Remaining::default();
    for group in discovery.groups() {
        // One version per group: other versions are views of the same objects.
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let failed =
                |source| Error::DeleteContent { namespace: ns.to_string(), resource: ar.plural.clone(), source };
            if caps.supports_operation(verbs::DELETE_COLLECTION) {
                ignore_not_found(api.delete_collection(&DeleteParams::background(), &ListParams::default()).await)
                    .map_err(failed)?;
            } else {
                let list = api.list(&ListParams::default()).await.map_err(failed)?;
                for obj in list.items {
                    ignore_not_found(api.delete(&obj.name_any(), &DeleteParams::background()).await).map_err(failed)?;
                }
            }
            let left = match api.list(&ListParams::default()).await {
                Ok(left) => left,
                // No longer served (a custom resource whose definition just went): nothing left.
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => return Err(failed(e)),
            };
            if !left.items.is_empty() {
                remaining.objects += left.items.len();
                remaining.by_resource.insert(format!("{}.{}", ar.plural, ar.group), left.items.len());
                for obj in &left.items {
                    for f in obj.metadata.finalizers.iter().flatten() {
                        *remaining.by_finalizer.entry(f.clone()).or_default() += 1;
                    }
                }
            }
        }
    }
    Ok(remaining)
}

/// A call's result with "not found" counted as success: what was to be removed is gone.
fn ignore_not_found<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
