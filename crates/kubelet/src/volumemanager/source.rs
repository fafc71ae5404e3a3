//! Where volumes and environment variables get the API objects they are built from.
//!
//! Upstream's kubelet reads ConfigMaps, Secrets and Services through its managers and asks
//! for service account tokens through the TokenRequest API. Here one small trait covers those
//! lookups so that volume and env code is tested with a fake, and runs against the API through
//! [`KubeSource`].

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::storage::v1::{CSIDriver, VolumeAttachment};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

/// An API call that failed for another reason than the object not existing.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("failed to get {kind} {namespace}/{name}: {source}")]
    Get {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("failed to list services in namespace {namespace}: {source}")]
    ListServices {
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("failed to fetch token: {source}")]
    Token {
        #[source]
        source: Box<kube::Error>,
    },
}

/// The objects pod volumes and container environments are made from. `Ok(None)` means the
/// object does not exist (upstream's NotFound), which callers turn into their own messages.
#[async_trait::async_trait]
pub trait ObjectSource: Send + Sync {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, SourceError>;
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError>;
    async fn services(&self, namespace: &str) -> Result<Vec<Service>, SourceError>;
    /// `POST .../serviceaccounts/{name}/token`; returns the answered request (token and expiry).
    async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        request: &TokenRequest,
    ) -> Result<TokenRequest, SourceError>;
    async fn persistent_volume_claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, SourceError>;
    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, SourceError>;
    /// The CSIDriver object of a CSI driver (none: upstream's defaults apply).
    async fn csi_driver(&self, _name: &str) -> Result<Option<CSIDriver>, SourceError> {
        Ok(None)
    }
    async fn volume_attachment(&self, _name: &str) -> Result<Option<VolumeAttachment>, SourceError> {
        Ok(None)
    }
}

/// [`ObjectSource`] over the API server.
#[derive(Clone)]
pub struct KubeSource(pub Client);

fn get_error(kind: &'static str, namespace: &str, name: &str, source: kube::Error) -> SourceError {
    SourceError::Get { kind, namespace: namespace.to_owned(), name: name.to_owned(), source: Box::new(source) }
}

#[async_trait::async_trait]
impl ObjectSource for KubeSource {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, SourceError> {
        Api::<ConfigMap>::namespaced(self.0.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| get_error("configmap", namespace, name, e))
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError> {
        Api::<Secret>::namespaced(self.0.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| get_error("secret", namespace, name, e))
    }

    async fn services(&self, namespace: &str) -> Result<Vec<Service>, SourceError> {
        Api::<Service>::namespaced(self.0.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map(|list| list.items)
            .map_err(|e| SourceError::ListServices { namespace: namespace.to_owned(), source: Box::new(e) })
    }

    async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        request: &TokenRequest,
    ) -> Result<TokenRequest, SourceError> {
        Api::<ServiceAccount>::namespaced(self.0.clone(), namespace)
            .create_token_request(service_account, &PostParams::default(), request)
            .await
            .map_err(|e| SourceError::Token { source: Box::new(e) })
    }

    async fn persistent_volume_claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, SourceError> {
        Api::<PersistentVolumeClaim>::namespaced(self.0.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| get_error("persistentvolumeclaim", namespace, name, e))
    }

    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, SourceError> {
        Api::<PersistentVolume>::all(self.0.clone())
            .get_opt(name)
            .await
            .map_err(|e| get_error("persistentvolume", "", name, e))
    }

    async fn csi_driver(&self, name: &str) -> Result<Option<CSIDriver>, SourceError> {
        Api::<CSIDriver>::all(self.0.clone()).get_opt(name).await.map_err(|e| get_error("csidriver", "", name, e))
    }

    async fn volume_attachment(&self, name: &str) -> Result<Option<VolumeAttachment>, SourceError> {
        Api::<VolumeAttachment>::all(self.0.clone())
            .get_opt(name)
            .await
            .map_err(|e| get_error("volumeattachment", "", name, e))
    }
}

/// An in-memory [`ObjectSource`] for tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct FakeSource {
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
    pub services: Vec<Service>,
    pub claims: Vec<PersistentVolumeClaim>,
    pub volumes: Vec<PersistentVolume>,
    /// Every token request received, in order.
    pub token_requests: std::sync::Mutex<Vec<(String, String, TokenRequest)>>,
}

#[cfg(test)]
fn in_ns<'a, T: kube::Resource>(items: &'a [T], namespace: &str, name: &str) -> Option<&'a T> {
    items.iter().find(|o| o.meta().namespace.as_deref() == Some(namespace) && o.meta().name.as_deref() == Some(name))
}

#[cfg(test)]
#[async_trait::async_trait]
impl ObjectSource for FakeSource {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, SourceError> {
        Ok(in_ns(&self.config_maps, namespace, name).cloned())
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError> {
        Ok(in_ns(&self.secrets, namespace, name).cloned())
    }

    async fn services(&self, namespace: &str) -> Result<Vec<Service>, SourceError> {
        Ok(self.services.iter().filter(|s| s.metadata.namespace.as_deref() == Some(namespace)).cloned().collect())
    }

    async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        request: &TokenRequest,
    ) -> Result<TokenRequest, SourceError> {
        let mut requests = self.token_requests.lock().unwrap();
        requests.push((namespace.to_owned(), service_account.to_owned(), request.clone()));
        let seconds = request.spec.as_ref().and_then(|s| s.expiration_seconds).unwrap_or(3600);
        let mut answered = request.clone();
        answered.status = Some(k8s_openapi::api::authentication::v1::TokenRequestStatus {
            token: Some(format!("token-{}-{service_account}", requests.len())),
            expiration_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds),
            )),
        });
        Ok(answered)
    }

    async fn persistent_volume_claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, SourceError> {
        Ok(in_ns(&self.claims, namespace, name).cloned())
    }

    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, SourceError> {
        Ok(self.volumes.iter().find(|v| v.metadata.name.as_deref() == Some(name)).cloned())
    }
}
