//! The service account controller (upstream's `pkg/controller/serviceaccount`): every active
//! namespace has a `default` ServiceAccount, created again whenever it is deleted.
//!
//! Pods that name no service account run as `default`, and the API server's ServiceAccount
//! admission rejects pods whose account does not exist, so the account has to be there soon
//! after the namespace is.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The accounts every namespace gets (upstream's `ServiceAccountsControllerOptions` default).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// How often every namespace is checked again even without a change seen, in case a deletion
/// was missed while a watch was down.
const RESYNC: Duration = Duration::from_secs(300);

/// Why a namespace could not be synced this time; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading service account {namespace}/{DEFAULT_SERVICE_ACCOUNT}")]
    Read {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating service account {namespace}/{name}")]
    Create {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

struct Context {
    client: Client,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let ctx = Arc::new(Context { client: client.clone() });
    let accounts = watcher::Config::default().fields(&format!("metadata.name={DEFAULT_SERVICE_ACCOUNT}"));
    Controller::new(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        // A `default` account going away has its namespace synced again.
        .watches(Api::<ServiceAccount>::all(client), accounts, |sa: ServiceAccount| {
            (sa.name_any() == DEFAULT_SERVICE_ACCOUNT)
                .then(|| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)))
                .flatten()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "service account reconcile failed");
            }
        })
        .await;
}

fn error_policy(ns: Arc<Namespace>, err: &Error, _: Arc<Context>) -> Action {
    warn!(namespace = %ns.name_any(), error = %err, "service account sync will be retried");
    Action::requeue(Duration::from_secs(5))
}

/// Upstream syncs only namespaces whose phase is Active: a terminating one refuses new content.
fn is_active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Active")
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !is_active(&ns) {
        return Ok(Action::await_change());
    }
    let namespace = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
    // Read rather than taken from a cache: kube-runtime's controller cannot share its watch
    // of the accounts with a store (that is unstable API), and a second watch could lag
    // the one that triggered this sync and hide the deletion it reported.
    match api.get_opt(DEFAULT_SERVICE_ACCOUNT).await {
        Ok(Some(_)) => return Ok(Action::requeue(RESYNC)),
        Ok(None) => {}
        Err(source) => return Err(Error::Read { namespace, source }),
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some(DEFAULT_SERVICE_ACCOUNT.into()), ..Default::default() },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => info!(namespace = %namespace, "created the default service account"),
        // The cache lags a create of ours or someone else's: the account is there.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        // The namespace is gone or terminating: nothing to do, as upstream.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {}
        Err(source) => {
            return Err(Error::Create { namespace, name: DEFAULT_SERVICE_ACCOUNT.into(), source });
        }
    }
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceStatus;

    fn namespace(phase: Option<&str>) -> Namespace {
        Namespace {
            status: Some(NamespaceStatus { phase: phase.map(str::to_string), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn only_active_namespaces_get_accounts() {
        assert!(is_active(&namespace(Some("Active"))));
        assert!(is_active(&namespace(None)));
        assert!(!is_active(&namespace(Some("Terminating"))));
        let mut deleting = namespace(Some("Active"));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(!is_active(&deleting));
    }
}
