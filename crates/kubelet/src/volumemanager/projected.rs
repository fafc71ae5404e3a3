//! The projected volume plugin (upstream's `pkg/volume/projected`): configMap, secret,
//! downwardAPI and serviceAccountToken sources merged into one directory on a tmpfs.
//!
//! Service account tokens come from the TokenRequest API, bound to the pod, and are kept in a
//! process-wide cache (upstream's kubelet token manager) so that a pod sync reuses a token until
//! it reaches 80% of its lifetime (or 24 hours), then asks for a new one.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource};
use kube::api::ObjectMeta;

use super::atomic_writer::{FileProjection, Payload};
use super::downward_api::NodeAllocatable;
use super::source::ObjectSource;
use super::{SetUpError, configmap, downward_api, secret};

/// The default mode of a projected volume's files (API default 0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// Tokens older than this are refreshed whatever their expiry (upstream's `maxTTL`).
const MAX_TTL_SECONDS: i64 = 24 * 60 * 60;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    pod_uid: String,
    namespace: String,
    service_account: String,
    audience: String,
    expiration_seconds: i64,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    issued_at: jiff::Timestamp,
    expires_at: jiff::Timestamp,
}

impl CachedToken {
    /// Upstream's `requiresRefresh`: past 80% of the lifetime, or older than 24 hours.
    fn needs_refresh(&self, now: jiff::Timestamp) -> bool {
        let lifetime = self.expires_at.as_second() - self.issued_at.as_second();
        let refresh_at = self.issued_at.as_second() + lifetime * 8 / 10;
        now.as_second() >= refresh_at || now.as_second() >= self.issued_at.as_second() + MAX_TTL_SECONDS
    }
}

fn token_cache() -> &'static Mutex<HashMap<TokenKey, CachedToken>> {
    static CACHE: OnceLock<Mutex<HashMap<TokenKey, CachedToken>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Forgets the tokens of a pod that is gone.
pub fn forget_pod_tokens(pod_uid: &str) {
    token_cache().lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| k.pod_uid != pod_uid);
}

async fn service_account_token(
    source: &dyn ObjectSource,
    pod: &Pod,
    audience: &str,
    expiration_seconds: i64,
) -> Result<String, SetUpError> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
        .unwrap_or_else(|| "default".to_owned());
    let key = TokenKey {
        pod_uid: meta.uid.clone().unwrap_or_default(),
        namespace: namespace.clone(),
        service_account: service_account.clone(),
        audience: audience.to_owned(),
        expiration_seconds,
    };
    let now = jiff::Timestamp::now();
    if let Some(cached) = token_cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key)
        && !cached.needs_refresh(now)
    {
        return Ok(cached.token.clone());
    }
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: Some(TokenRequestSpec {
            // An empty audience means the API server's own audiences.
            audiences: if audience.is_empty() { None } else { Some(vec![audience.to_owned()]) },
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
            }),
        }),
        status: None,
    };
    let answered = source.service_account_token(&namespace, &service_account, &request).await?;
    let status = answered.status.ok_or(SetUpError::TokenWithoutStatus)?;
    let token = status.token.filter(|t| !t.is_empty()).ok_or(SetUpError::TokenWithoutStatus)?;
    let expires_at = match status.expiration_timestamp {
        Some(time) => time.0,
        None => jiff::Timestamp::now() + jiff::SignedDuration::from_secs(expiration_seconds),
    };
    // The API server may shorten or lengthen the lifetime: count it from the answer.
    let seconds = answered.spec.and_then(|s| s.expiration_seconds).unwrap_or(expiration_seconds);
    let issued_at = expires_at - jiff::SignedDuration::from_secs(seconds);
    tracing::debug!(namespace, service_account, audience, %expires_at, "got service account token");
    let cached = CachedToken { token: token.clone(), issued_at, expires_at };
    token_cache().lock().unwrap_or_else(|e| e.into_inner()).insert(key, cached);
    Ok(token)
}

/// All sources' files merged, in the order the sources are listed (a later source's file wins
/// a path conflict, as upstream). Errors of several sources are reported together.
pub async fn payload(
    source: &dyn ObjectSource,
    pod: &Pod,
    projected: &ProjectedVolumeSource,
    fs_group: Option<i64>,
    node: &NodeAllocatable,
) -> Result<Payload, SetUpError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let default_mode = projected.default_mode.unwrap_or(DEFAULT_MODE);
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for projection in projected.sources.iter().flatten() {
        let part: Result<Payload, SetUpError> = async {
            if let Some(cm) = &projection.config_map {
                let optional = cm.optional.unwrap_or(false);
                let object = configmap::fetch(source, namespace, &cm.name, optional).await?;
                configmap::payload(object.as_ref(), cm.items.as_deref(), default_mode, optional)
            } else if let Some(s) = &projection.secret {
                let optional = s.optional.unwrap_or(false);
                let object = secret::fetch(source, namespace, &s.name, optional).await?;
                secret::payload(object.as_ref(), s.items.as_deref(), default_mode, optional)
            } else if let Some(d) = &projection.downward_api {
                Ok(downward_api::payload(pod, d.items.as_deref().unwrap_or_default(), default_mode, node)?)
            } else if let Some(t) = &projection.service_account_token {
                let expiration = t.expiration_seconds.unwrap_or(3600);
                let token =
                    service_account_token(source, pod, t.audience.as_deref().unwrap_or_default(), expiration).await?;
                // With an fsGroup the token starts at 0600 and the ownership pass makes it 0640.
                let mode = if fs_group.is_some() { 0o600 } else { default_mode as u32 };
                Ok([(t.path.clone(), FileProjection { data: token.into_bytes(), mode })].into())
            } else if projection.cluster_trust_bundle.is_some() {
                Err(SetUpError::Unsupported { what: "clusterTrustBundle projections" })
            } else if projection.pod_certificate.is_some() {
                Err(SetUpError::Unsupported { what: "podCertificate projections" })
            } else {
                Ok(Payload::new())
            }
        }
        .await;
        match part {
            Ok(files) => payload.extend(files),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(payload),
        1 => Err(errors.remove(0)),
        _ => Err(SetUpError::Aggregate(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumemanager::source::FakeSource;

    fn pod(uid: &str, volume: serde_json::Value) -> (Pod, ProjectedVolumeSource) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": uid},
            "spec": {"serviceAccountName": "sa", "containers": [{"name": "c"}]}
        }))
        .unwrap();
        (pod, serde_json::from_value(volume).unwrap())
    }

    const NODE: NodeAllocatable = NodeAllocatable { cpu: 1.0, memory: 1e9, ephemeral_storage: 1e9 };

    fn kube_api_access() -> serde_json::Value {
        serde_json::json!({"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token", "audience": "vault"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]})
    }

    fn fake() -> FakeSource {
        FakeSource {
            config_maps: vec![
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "kube-root-ca.crt", "namespace": "ns"}, "data": {"ca.crt": "PEM"}
                }))
                .unwrap(),
            ],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn service_account_volume_has_token_ca_and_namespace() {
        let (pod, volume) = pod("uid-proj-1", kube_api_access());
        let source = fake();
        let p = payload(&source, &pod, &volume, None, &NODE).await.unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["ca.crt", "namespace", "token"]);
        assert_eq!(p["ca.crt"].data, b"PEM");
        assert_eq!(p["namespace"].data, b"ns");
        assert_eq!(p["token"].data, b"token-1-sa");
        assert_eq!(p["token"].mode, 0o644);
        let requests = source.token_requests.lock().unwrap();
        let (ns, sa, request) = &requests[0];
        assert_eq!((ns.as_str(), sa.as_str()), ("ns", "sa"));
        let spec = request.spec.as_ref().unwrap();
        assert_eq!(spec.audiences.as_deref(), Some(["vault".to_owned()].as_slice()));
        assert_eq!(spec.expiration_seconds, Some(3607));
        let bound = spec.bound_object_ref.as_ref().unwrap();
        assert_eq!((bound.kind.as_deref(), bound.uid.as_deref()), (Some("Pod"), Some("uid-proj-1")));
        drop(requests);
        forget_pod_tokens("uid-proj-1");
    }

    #[tokio::test]
    async fn token_is_reused_until_refresh_is_due() {
        let (pod, volume) = pod("uid-proj-2", kube_api_access());
        let source = fake();
        payload(&source, &pod, &volume, None, &NODE).await.unwrap();
        payload(&source, &pod, &volume, None, &NODE).await.unwrap();
        assert_eq!(source.token_requests.lock().unwrap().len(), 1);
        forget_pod_tokens("uid-proj-2");
        payload(&source, &pod, &volume, None, &NODE).await.unwrap();
        assert_eq!(source.token_requests.lock().unwrap().len(), 2);
        forget_pod_tokens("uid-proj-2");
    }

    #[test]
    fn refresh_at_eighty_percent_of_lifetime() {
        let issued_at = jiff::Timestamp::from_second(1_000_000).unwrap();
        let token = CachedToken {
            token: String::new(),
            issued_at,
            expires_at: issued_at + jiff::SignedDuration::from_secs(1000),
        };
        assert!(!token.needs_refresh(issued_at + jiff::SignedDuration::from_secs(799)));
        assert!(token.needs_refresh(issued_at + jiff::SignedDuration::from_secs(800)));
    }

    #[tokio::test]
    async fn missing_sources_report_each_error_and_fs_group_token_mode() {
        let (pod, volume) = pod(
            "uid-proj-3",
            serde_json::json!({"sources": [
                {"configMap": {"name": "absent"}},
                {"secret": {"name": "gone"}},
                {"secret": {"name": "maybe", "optional": true}}
            ]}),
        );
        let err = payload(&fake(), &pod, &volume, None, &NODE).await.unwrap_err();
        assert_eq!(err.to_string(), "[configmap \"absent\" not found, secret \"gone\" not found]");
        let (pod, volume) = pod_with_token();
        let p = payload(&fake(), &pod, &volume, Some(2000), &NODE).await.unwrap();
        assert_eq!(p["token"].mode, 0o600);
        forget_pod_tokens("uid-proj-4");
    }

    fn pod_with_token() -> (Pod, ProjectedVolumeSource) {
        pod("uid-proj-4", serde_json::json!({"sources": [{"serviceAccountToken": {"path": "token"}}]}))
    }
}
