//! The namespace controller (upstream's `pkg/controller/namespace`): empties a namespace that is
//! being deleted, then removes its `kubernetes` finalizer so the API server can let it go.
//!
//! A namespace delete only marks it Terminating (the API server keeps it while
//! `spec.finalizers` holds `kubernetes`). This controller deletes every namespaced object in it,
//! through discovery so that every served resource is covered, waits until none is left (pods
//! may take their grace period), then calls `namespaces/<name>/finalize` and deletes the
//! namespace for good.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
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
    DeleteContent { namespace: String, resource: String, #[source] source: kube::Error },
    #[error("finalizing namespace {namespace}")]
    Finalize { namespace: String, #[source] source: kube::Error },
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
    if remaining > 0 {
        debug!(namespace = %name, remaining, "waiting for namespace content to go");
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

/// Deletes everything in the namespace; returns how many objects are still there.
async fn delete_content(client: &Client, ns: &str) -> Result<usize, Error> {
    let discovery = Discovery::new(client.clone()).run().await.map_err(Error::Discovery)?;
    let mut remaining = 0;
    for group in discovery.groups() {
        // One version per group: other versions are views of the same objects.
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced || !caps.supports_operation(verbs::LIST) || !caps.supports_operation(verbs::DELETE) {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let failed = |source| Error::DeleteContent { namespace: ns.to_string(), resource: ar.plural.clone(), source };
            if caps.supports_operation(verbs::DELETE_COLLECTION) {
                ignore_not_found(api.delete_collection(&DeleteParams::background(), &ListParams::default()).await)
                    .map_err(failed)?;
            } else {
                let list = api.list(&ListParams::default()).await.map_err(failed)?;
                for obj in list.items {
                    ignore_not_found(api.delete(&obj.name_any(), &DeleteParams::background()).await).map_err(failed)?;
                }
            }
            let left = api.list(&ListParams::default().limit(1)).await.map_err(failed)?;
            remaining += left.items.len();
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
