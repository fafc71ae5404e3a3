//! Image pulls for containers (upstream's `pkg/kubelet/images/image_manager.go`): the pull
//! policy, credentials from the pod's imagePullSecrets, events, and the per-image back-off that
//! turns `ErrImagePull` into `ImagePullBackOff`.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::Api;
use tug_runtime::ImageService;
use tug_runtime::image::{Credentials, DockerConfig};

use super::backoff::Backoff;
use crate::events::{self, EventRecorder, container_field_path};

/// Waiting reasons of image pulls, as upstream's `images` package names them.
pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
pub const IMAGE_PULL_BACKOFF: &str = "ImagePullBackOff";
pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
pub const INVALID_IMAGE_NAME: &str = "InvalidImageName";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The container's pull policy; when the API left it empty, the API server's default
/// (`Always` for `:latest` or no tag without a digest, else `IfNotPresent`).
pub fn pull_policy(c: &Container) -> PullPolicy {
    match c.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let image = c.image.as_deref().unwrap_or_default();
            if image.contains('@') {
                return PullPolicy::IfNotPresent;
            }
            let last = image.rsplit('/').next().unwrap_or_default();
            match last.split_once(':') {
                Some((_, tag)) if tag != "latest" => PullPolicy::IfNotPresent,
                _ => PullPolicy::Always,
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullDecision {
    Pull,
    UsePresent,
    /// `Never` and the image is missing: `ErrImageNeverPull`.
    NeverPullMissing,
}

/// Upstream's `shouldPullImage`.
pub fn decide(policy: PullPolicy, present: bool) -> PullDecision {
    match (policy, present) {
        (PullPolicy::Never, false) => PullDecision::NeverPullMissing,
        (PullPolicy::Never, true) | (PullPolicy::IfNotPresent, true) => PullDecision::UsePresent,
        _ => PullDecision::Pull,
    }
}

/// Why the image is not there to run: a waiting reason and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct PullFailure {
    pub reason: &'static str,
    pub message: String,
}

/// Pulls images for the node's pods, sharing one back-off table.
pub struct ImagePuller {
    images: Arc<dyn ImageService>,
    client: kube::Client,
    backoff: Mutex<Backoff>,
    /// The last pull error per back-off key, repeated in the `ImagePullBackOff` message.
    last_error: Mutex<std::collections::HashMap<String, String>>,
}

impl std::fmt::Debug for ImagePuller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagePuller").finish_non_exhaustive()
    }
}

/// Go's `%v` of a duration for the Pulled event, at millisecond precision (`1.234s`, `523ms`).
fn go_elapsed(d: std::time::Duration) -> String {
    if d.as_secs() == 0 { format!("{}ms", d.as_millis()) } else { format!("{:.3}s", d.as_secs_f64()) }
}

impl ImagePuller {
    pub fn new(client: kube::Client, images: Arc<dyn ImageService>) -> Self {
        ImagePuller {
            images,
            client,
            backoff: Mutex::new(Backoff::default()),
            last_error: Mutex::new(Default::default()),
        }
    }

    /// The credentials of the pod's pull secrets that apply to `image`, most specific first.
    /// A secret that is missing or unreadable is skipped, as upstream's keyring does.
    async fn credentials(&self, pod: &Pod, image: &str) -> Vec<Credentials> {
        let Some(names) = pod.spec.as_ref().and_then(|s| s.image_pull_secrets.as_ref()) else { return Vec::new() };
        let Ok(reference) = tug_runtime::image::parse_reference(image) else { return Vec::new() };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let mut out = Vec::new();
        for name in names.iter().map(|r| r.name.as_str()).filter(|n| !n.is_empty()) {
            let secret = match api.get_opt(name).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    tracing::warn!(secret = name, namespace, "image pull secret not found");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, secret = name, namespace, "reading image pull secret");
                    continue;
                }
            };
            let data = secret.data.unwrap_or_default();
            let Some(json) = data.get(".dockerconfigjson").or_else(|| data.get(".dockercfg")) else { continue };
            match DockerConfig::parse(&json.0) {
                Ok(cfg) => out.extend(cfg.lookup(&reference)),
                Err(error) => tracing::warn!(%error, secret = name, namespace, "parsing image pull secret"),
            }
        }
        out
    }

    /// Makes sure the container's image is present per its pull policy (upstream's
    /// `EnsureImageExists`); returns the image to create the container from.
    pub async fn ensure_image(
        &self,
        pod: &Pod,
        container: &Container,
        recorder: &EventRecorder,
    ) -> Result<String, PullFailure> {
        let image = container.image.clone().unwrap_or_default();
        let field = Some(container_field_path(pod, &container.name));
        if let Err(error) = tug_runtime::image::parse_reference(&image) {
            let message = format!("Failed to apply default image tag {image:?}: {error}");
            recorder.record(pod, field, events::WARNING, INVALID_IMAGE_NAME, &message).await;
            return Err(PullFailure { reason: INVALID_IMAGE_NAME, message });
        }
        let present = matches!(self.images.image_status(&image).await, Ok(Some(_)));
        match decide(pull_policy(container), present) {
            PullDecision::UsePresent => {
                let message = format!("Container image {image:?} already present on machine");
                recorder.record(pod, field, events::NORMAL, "Pulled", &message).await;
                return Ok(image);
            }
            PullDecision::NeverPullMissing => {
                let message = format!("Container image {image:?} is not present with pull policy of Never");
                recorder.record(pod, field, events::WARNING, ERR_IMAGE_NEVER_PULL, &message).await;
                return Err(PullFailure { reason: ERR_IMAGE_NEVER_PULL, message });
            }
            PullDecision::Pull => {}
        }
        let key = format!("{}_{image}", pod.metadata.uid.as_deref().unwrap_or_default());
        let in_backoff =
            self.backoff.lock().unwrap_or_else(|e| e.into_inner()).is_in_backoff_since_update(&key, SystemTime::now());
        if in_backoff {
            let last = self.last_error.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
            let mut message = format!("Back-off pulling image {image:?}");
            recorder.record(pod, field, events::NORMAL, "BackOff", &message).await;
            if let Some(last) = last {
                message = format!("{message}: {ERR_IMAGE_PULL}: {last}");
            }
            return Err(PullFailure { reason: IMAGE_PULL_BACKOFF, message });
        }
        recorder.record(pod, field.clone(), events::NORMAL, "Pulling", &format!("Pulling image {image:?}")).await;
        let credentials = self.credentials(pod, &image).await;
        let started = Instant::now();
        match self.images.pull_image(&image, &credentials).await {
            Ok(pulled) => {
                let took = go_elapsed(started.elapsed());
                let message = format!(
                    "Successfully pulled image {image:?} in {took} ({took} including waiting). Image size: {} bytes.",
                    pulled.size
                );
                recorder.record(pod, field, events::NORMAL, "Pulled", &message).await;
                self.last_error.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                Ok(image)
            }
            Err(error) => {
                let message =
                    format!("failed to pull and unpack image {image:?}: {}", tug_runtime::error_chain(&error));
                self.backoff.lock().unwrap_or_else(|e| e.into_inner()).next(&key, SystemTime::now());
                self.last_error.lock().unwrap_or_else(|e| e.into_inner()).insert(key, message.clone());
                recorder
                    .record(
                        pod,
                        field.clone(),
                        events::WARNING,
                        "Failed",
                        &format!("Failed to pull image {image:?}: {message}"),
                    )
                    .await;
                recorder.record(pod, field, events::WARNING, "Failed", &format!("Error: {ERR_IMAGE_PULL}")).await;
                Err(PullFailure { reason: ERR_IMAGE_PULL, message })
            }
        }
    }

    /// Forgets a pod's back-off state once the pod is gone.
    pub fn forget_pod(&self, uid: &str) {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner()).forget_prefix(&format!("{uid}_"));
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| !k.starts_with(&format!("{uid}_")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(image: &str, policy: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            image: Some(image.into()),
            image_pull_policy: policy.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn default_policy_follows_the_tag() {
        assert_eq!(pull_policy(&c("busybox", None)), PullPolicy::Always);
        assert_eq!(pull_policy(&c("busybox:latest", None)), PullPolicy::Always);
        assert_eq!(pull_policy(&c("busybox:1.36", None)), PullPolicy::IfNotPresent);
        assert_eq!(pull_policy(&c("127.0.0.1:5000/busybox", None)), PullPolicy::Always);
        assert_eq!(pull_policy(&c("127.0.0.1:5000/busybox:v1", None)), PullPolicy::IfNotPresent);
        assert_eq!(pull_policy(&c("busybox@sha256:abcd", None)), PullPolicy::IfNotPresent);
        assert_eq!(pull_policy(&c("busybox:1", Some("Always"))), PullPolicy::Always);
        assert_eq!(pull_policy(&c("busybox", Some("Never"))), PullPolicy::Never);
    }

    #[test]
    fn decisions_per_policy_and_presence() {
        assert_eq!(decide(PullPolicy::Always, true), PullDecision::Pull);
        assert_eq!(decide(PullPolicy::Always, false), PullDecision::Pull);
        assert_eq!(decide(PullPolicy::IfNotPresent, true), PullDecision::UsePresent);
        assert_eq!(decide(PullPolicy::IfNotPresent, false), PullDecision::Pull);
        assert_eq!(decide(PullPolicy::Never, true), PullDecision::UsePresent);
        assert_eq!(decide(PullPolicy::Never, false), PullDecision::NeverPullMissing);
    }
}
