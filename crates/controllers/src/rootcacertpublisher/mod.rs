//! The root CA publisher (upstream's `pkg/controller/certificates/rootcacertpublisher`): every
//! namespace has a ConfigMap `kube-root-ca.crt` whose `ca.crt` is the cluster CA bundle, so that
//! pods can verify the API server they reach at `kubernetes.default.svc`. The ConfigMap is put
//! back when it is deleted or edited.
//!
//! The bundle is what the controller manager was given (`--root-ca-file`, by default the CA of
//! its kubeconfig), as upstream's controller manager publishes its `--root-ca-file`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The ConfigMap's name in every namespace.
pub const CONFIG_MAP_NAME: &str = "kube-root-ca.crt";
/// The key holding the CA bundle.
pub const CA_KEY: &str = "ca.crt";
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
/// Upstream's wording, which clients may show.
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal \
     endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across \
     distributions of Kubernetes clusters.";

/// How often every namespace is checked again even without a change seen.
const RESYNC: Duration = Duration::from_secs(300);

/// Why a namespace could not be synced this time; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading or writing config map {namespace}/{CONFIG_MAP_NAME}")]
    Write {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

struct Context {
    client: Client,
    root_ca: String,
}

/// Runs the publisher of `root_ca` (PEM) until `shutdown`.
pub async fn run(client: Client, root_ca: String, shutdown: CancellationToken) {
    // Only the published ConfigMaps matter; the field selector keeps the watch small.
    let selector = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP_NAME}"));
    let ctx = Arc::new(Context { client: client.clone(), root_ca });
    Controller::new(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .watches(Api::<ConfigMap>::all(client), selector, |cm: ConfigMap| {
            (cm.name_any() == CONFIG_MAP_NAME)
                .then(|| cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)))
                .flatten()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "root ca publisher reconcile failed");
            }
        })
        .await;
}

fn error_policy(ns: Arc<Namespace>, err: &Error, _: Arc<Context>) -> Action {
    warn!(namespace = %ns.name_any(), error = %err, "root ca config map sync will be retried");
    Action::requeue(Duration::from_secs(5))
}

fn wanted_data(root_ca: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CA_KEY.to_string(), root_ca.to_string())])
}

/// The ConfigMap as it should be, from the current one (`None` when it needs no change), as
/// upstream: the data is exactly the bundle and the description annotation is present.
fn desired(current: &ConfigMap, root_ca: &str) -> Option<ConfigMap> {
    let data = wanted_data(root_ca);
    let described = current.annotations().get(DESCRIPTION_ANNOTATION).is_some_and(|d| !d.is_empty());
    if current.data.as_ref() == Some(&data) && described {
        return None;
    }
    let mut next = current.clone();
    next.data = Some(data);
    next.binary_data = None;
    next.annotations_mut().insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
    Some(next)
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = ns.name_any();
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    // Read rather than taken from a cache, for the reason the service account controller gives.
    let current = match api.get_opt(CONFIG_MAP_NAME).await {
        Ok(c) => c,
        Err(source) => return Err(Error::Write { namespace, source }),
    };
    let result = match current {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP_NAME.into()),
                    annotations: Some(BTreeMap::from([(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into())])),
                    ..Default::default()
                },
                data: Some(wanted_data(&ctx.root_ca)),
                ..Default::default()
            };
            let created = api.create(&PostParams::default(), &cm).await;
            if created.is_ok() {
                info!(namespace = %namespace, "published the root ca config map");
            }
            created.map(|_| ())
        }
        Some(current) => match desired(&current, &ctx.root_ca) {
            None => Ok(()),
            Some(next) => {
                let replaced = api.replace(CONFIG_MAP_NAME, &PostParams::default(), &next).await;
                if replaced.is_ok() {
                    info!(namespace = %namespace, "restored the root ca config map");
                }
                replaced.map(|_| ())
            }
        },
    };
    match result {
        Ok(()) => Ok(Action::requeue(RESYNC)),
        // The namespace is gone or terminating, or the cache lags a create: nothing to retry.
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404 | 409) => Ok(Action::requeue(RESYNC)),
        Err(source) => Err(Error::Write { namespace, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";

    fn published() -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIG_MAP_NAME.into()),
                annotations: Some(BTreeMap::from([(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into())])),
                ..Default::default()
            },
            data: Some(wanted_data(CA)),
            ..Default::default()
        }
    }

    #[test]
    fn published_config_map_needs_no_change() {
        assert!(desired(&published(), CA).is_none());
    }

    #[test]
    fn edited_data_is_restored_and_other_annotations_kept() {
        let mut cm = published();
        cm.data.as_mut().unwrap().insert("extra".into(), "x".into());
        cm.annotations_mut().insert("team".into(), "a".into());
        let next = desired(&cm, CA).unwrap();
        assert_eq!(next.data, Some(wanted_data(CA)));
        assert_eq!(next.annotations().get("team").map(String::as_str), Some("a"));
    }

    #[test]
    fn missing_description_is_put_back() {
        let mut cm = published();
        cm.metadata.annotations = None;
        let next = desired(&cm, CA).unwrap();
        assert_eq!(next.annotations().get(DESCRIPTION_ANNOTATION).map(String::as_str), Some(DESCRIPTION));
    }

    #[test]
    fn a_new_ca_is_published() {
        let next = desired(&published(), "other").unwrap();
        assert_eq!(next.data.unwrap()[CA_KEY], "other");
    }
}
