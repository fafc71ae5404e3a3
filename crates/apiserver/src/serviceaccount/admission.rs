//! ServiceAccount admission for new pods (upstream's `plugin/pkg/admission/serviceaccount`).

use std::time::Duration;

use serde_json::{Value, json};
use tug_api::ApiError;
use tug_api::status::Subject;

use super::token_request::KUBELET_EXPIRATION_SECONDS;
use crate::server::ApiServer;

pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// The prefix of the projected volume's name; five random characters follow.
pub const VOLUME_NAME_PREFIX: &str = "kube-api-access-";
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Pods mirrored from a node's static manifests are left as they are.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The `default` account is created by a controller moments after its namespace, so a pod
/// created right after the namespace may come first. Upstream looks it up this many times,
/// 100 to 200 ms apart, before refusing the pod.
const DEFAULT_ACCOUNT_ATTEMPTS: usize = 10;

/// The characters of upstream's generated name suffixes (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    let u = uuid::Uuid::new_v4();
    u.as_bytes()[..5].iter().map(|b| NAME_ALPHABET[*b as usize % NAME_ALPHABET.len()] as char).collect()
}

impl ApiServer {
    /// Admits a new pod: it runs as `default` unless it names an account, the account must
    /// exist, and unless automounting is turned off the account's token, the cluster CA and the
    /// namespace are mounted into every container.
    pub(crate) async fn admit_pod_service_account(&self, pod: &mut Value) -> Result<(), ApiError> {
        if pod.pointer(&format!("/metadata/annotations/{}", MIRROR_ANNOTATION.replace('/', "~1"))).is_some() {
            // A node creates mirror pods; they must not reach what the node could not.
            let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            return match mirror_pod_violation(pod) {
                Some(why) => {
                    Err(ApiError::forbidden(Subject { group: "", resource: "pods", kind: "Pod" }, pod_name, why))
                }
                None => Ok(()),
            };
        }
        let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let account_name = requested_account(pod);
        let Some(account) = self.find_service_account(&ns, &account_name).await? else {
            return Err(ApiError::forbidden(
                Subject { group: "", resource: "pods", kind: "Pod" },
                &pod_name,
                format_args!(
                    "error looking up service account {ns}/{account_name}: serviceaccount \"{account_name}\" not found"
                ),
            ));
        };
        mutate_pod(pod, &account_name, &account, random_suffix);
        Ok(())
    }

    /// The account, looked up again for a while if it is `default` and not there yet.
    async fn find_service_account(&self, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
        let registry = self.registry();
        let rt = registry.lookup("", "v1", "serviceaccounts").expect("service accounts are served");
        let attempts = if name == DEFAULT_SERVICE_ACCOUNT { DEFAULT_ACCOUNT_ATTEMPTS } else { 1 };
        let pause = Duration::from_millis(100 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100);
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(pause).await;
            }
            match self.admission_caches.service_accounts.get(&rt.key(Some(ns), name)).await {
                Some(Some(cached)) => return Ok(Some(cached.value.clone())),
                Some(None) => {}
                None => match self.read(rt, Some(ns), name).await {
                    Ok((sa, _)) => return Ok(Some(sa)),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(None)
    }
}

/// What a mirror pod may not reference, as upstream's admission words it.
fn mirror_pod_violation(pod: &Value) -> Option<&'static str> {
    if pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
        return Some("a mirror pod may not reference service accounts");
    }
    if references_secrets(pod) {
        return Some("a mirror pod may not reference secrets");
    }
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let projects_token = volumes.iter().any(|v| {
        v.pointer("/projected/sources")
            .and_then(Value::as_array)
            .is_some_and(|sources| sources.iter().any(|s| s.get("serviceAccountToken").is_some()))
    });
    projects_token.then_some("a mirror pod may not use ServiceAccountToken volume projections")
}

/// Upstream's `VisitPodSecretNames`: pull secrets, secret volumes and projections, volume
/// plugins' secret references, and every container's env and envFrom.
fn references_secrets(pod: &Value) -> bool {
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if non_empty(pod.pointer("/spec/imagePullSecrets")) {
        return true;
    }
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let volume_secret = |v: &Value| {
        v.get("secret").is_some()
            || v.pointer("/projected/sources")
                .and_then(Value::as_array)
                .is_some_and(|sources| sources.iter().any(|s| s.get("secret").is_some()))
            // azureFile names a secret directly; flexVolume, cephfs, rbd, iscsi, cinder, scaleIO,
            // storageos and csi carry a secretRef / nodePublishSecretRef.
            || v.as_object().is_some_and(|o| {
                o.values().any(|source| {
                    source.get("secretRef").is_some()
                        || source.get("nodePublishSecretRef").is_some()
                        || source.get("secretName").is_some()
                })
            })
    };
    if volumes.iter().any(volume_secret) {
        return true;
    }
    ["/spec/containers", "/spec/initContainers", "/spec/ephemeralContainers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .any(|c| {
            let env = c.get("env").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let env_from = c.get("envFrom").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            env.iter().any(|e| e.pointer("/valueFrom/secretKeyRef").is_some())
                || env_from.iter().any(|e| e.get("secretRef").is_some())
        })
}

/// The account a pod asks for: `serviceAccountName`, else the deprecated `serviceAccount` (as
/// upstream's v1 conversion reads it), else `default`.
fn requested_account(pod: &Value) -> String {
    ["/spec/serviceAccountName", "/spec/serviceAccount"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_str))
        .find(|n| !n.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_string()
}

/// Upstream's `shouldAutomount`: the pod's choice, else the account's, else yes.
fn should_automount(pod: &Value, account: &Value) -> bool {
    pod.pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| account.get("automountServiceAccountToken").and_then(Value::as_bool))
        .unwrap_or(true)
}

/// The projected volume upstream mounts (`TokenVolumeSource`), with its explicit default mode.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": KUBELET_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [
                    {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                ]}},
            ],
        },
    })
}

/// The admission's changes to a pod running as `account_name`.
fn mutate_pod(pod: &mut Value, account_name: &str, account: &Value, suffix: impl Fn() -> String) {
    pod["spec"]["serviceAccountName"] = json!(account_name);
    // The deprecated alias, which upstream's v1 conversion always fills in.
    pod["spec"]["serviceAccount"] = json!(account_name);
    if should_automount(pod, account) {
        mount_token(pod, suffix);
    }
    let has_pull_secrets =
        pod.pointer("/spec/imagePullSecrets").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
    if !has_pull_secrets
        && let Some(secrets) = account.get("imagePullSecrets").and_then(Value::as_array).filter(|s| !s.is_empty())
    {
        pod["spec"]["imagePullSecrets"] = Value::Array(secrets.clone());
    }
}

/// Upstream's `mountServiceAccountToken`: every init container and container without something
/// mounted at the token path gets the volume; the volume is added once, reusing one the pod
/// already has.
fn mount_token(pod: &mut Value, suffix: impl Fn() -> String) {
    let existing = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .and_then(|vols| {
            vols.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .find(|n| n.starts_with(VOLUME_NAME_PREFIX))
        })
        .map(str::to_string);
    let volume_name = existing.clone().unwrap_or_else(|| format!("{VOLUME_NAME_PREFIX}{}", suffix()));
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": MOUNT_PATH});
    let mut needs_volume = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod["spec"].get_mut(list).and_then(Value::as_array_mut) else { continue };
        for container in containers {
            let mounted = container
                .get("volumeMounts")
                .and_then(Value::as_array)
                .is_some_and(|ms| ms.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH)));
            if mounted {
                continue;
            }
            match container.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(ms) => ms.push(mount.clone()),
                None => container["volumeMounts"] = json!([mount.clone()]),
            }
            needs_volume = true;
        }
    }
    if existing.is_none() && needs_volume {
        match pod["spec"].get_mut("volumes").and_then(Value::as_array_mut) {
            Some(vols) => vols.push(token_volume(&volume_name)),
            None => pod["spec"]["volumes"] = json!([token_volume(&volume_name)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
    }

    fn fixed() -> String {
        "abcde".into()
    }

    #[test]
    fn mirror_pods_may_not_reach_accounts_secrets_or_tokens() {
        let plain = pod(json!({"containers": [{"name": "c", "image": "i"}]}));
        assert_eq!(mirror_pod_violation(&plain), None);
        let account = pod(json!({"serviceAccountName": "builder", "containers": [{"name": "c", "image": "i"}]}));
        assert_eq!(mirror_pod_violation(&account), Some("a mirror pod may not reference service accounts"));
        let secret_cases = [
            json!({"imagePullSecrets": [{"name": "s"}], "containers": [{"name": "c", "image": "i"}]}),
            json!({"volumes": [{"name": "v", "secret": {"secretName": "s"}}], "containers": [{"name": "c", "image": "i"}]}),
            json!({"volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "s"}}]}}],
                   "containers": [{"name": "c", "image": "i"}]}),
            json!({"containers": [{"name": "c", "image": "i",
                   "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}),
            json!({"initContainers": [{"name": "c", "image": "i", "envFrom": [{"secretRef": {"name": "s"}}]}],
                   "containers": [{"name": "c", "image": "i"}]}),
            json!({"volumes": [{"name": "v", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "s"}}}],
                   "containers": [{"name": "c", "image": "i"}]}),
        ];
        for spec in secret_cases {
            assert_eq!(
                mirror_pod_violation(&pod(spec.clone())),
                Some("a mirror pod may not reference secrets"),
                "{spec}"
            );
        }
        let token =
            pod(json!({"volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}],
                               "containers": [{"name": "c", "image": "i"}]}));
        assert_eq!(
            mirror_pod_violation(&token),
            Some("a mirror pod may not use ServiceAccountToken volume projections")
        );
        let config_map = pod(json!({"volumes": [{"name": "v", "configMap": {"name": "cm"}}],
                                    "containers": [{"name": "c", "image": "i"}]}));
        assert_eq!(mirror_pod_violation(&config_map), None, "config maps are allowed");
    }

    #[test]
    fn pod_gets_default_account_and_token_volume_in_every_container() {
        let mut p = pod(json!({
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [
                {"name": "a", "image": "busybox", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "image": "busybox"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }));
        mutate_pod(&mut p, "default", &json!({}), fixed);
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["serviceAccount"], "default");
        let mount = json!({"name": "kube-api-access-abcde", "readOnly": true, "mountPath": MOUNT_PATH});
        assert_eq!(p["spec"]["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][1], mount);
        assert_eq!(p["spec"]["containers"][1]["volumeMounts"], json!([mount]));
        let vols = p["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!(vols[1], token_volume("kube-api-access-abcde"));
        let sources = &vols[1]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"], "metadata.namespace");
    }

    #[test]
    fn automount_is_decided_by_the_pod_then_the_account() {
        let spec = json!({"containers": [{"name": "a", "image": "x"}]});
        let mut p = pod(spec.clone());
        mutate_pod(&mut p, "default", &json!({"automountServiceAccountToken": false}), fixed);
        assert!(p["spec"].get("volumes").is_none());
        assert!(p["spec"]["containers"][0].get("volumeMounts").is_none());

        let mut spec_on = spec.clone();
        spec_on["automountServiceAccountToken"] = json!(true);
        let mut p = pod(spec_on);
        mutate_pod(&mut p, "default", &json!({"automountServiceAccountToken": false}), fixed);
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);

        let mut spec_off = spec;
        spec_off["automountServiceAccountToken"] = json!(false);
        let mut p = pod(spec_off);
        mutate_pod(&mut p, "default", &json!({}), fixed);
        assert!(p["spec"].get("volumes").is_none());
    }

    #[test]
    fn container_with_its_own_mount_at_the_token_path_is_left_alone() {
        let mut p = pod(json!({
            "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}],
            "volumes": [{"name": "mine", "emptyDir": {}}],
        }));
        mutate_pod(&mut p, "builder", &json!({}), fixed);
        assert_eq!(p["spec"]["serviceAccountName"], "builder");
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"].as_array().unwrap().len(), 1);
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn existing_token_volume_is_reused() {
        let mut p = pod(json!({
            "containers": [{"name": "a", "image": "x"}],
            "volumes": [token_volume("kube-api-access-zzzzz")],
        }));
        mutate_pod(&mut p, "default", &json!({}), fixed);
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["name"], "kube-api-access-zzzzz");
    }

    #[test]
    fn account_pull_secrets_fill_in_only_when_the_pod_has_none() {
        let account = json!({"imagePullSecrets": [{"name": "registry"}]});
        let mut p = pod(json!({"containers": [{"name": "a", "image": "x"}]}));
        mutate_pod(&mut p, "default", &account, fixed);
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "registry"}]));

        let mut p = pod(json!({"containers": [{"name": "a", "image": "x"}], "imagePullSecrets": [{"name": "own"}]}));
        mutate_pod(&mut p, "default", &account, fixed);
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "own"}]));
    }

    #[test]
    fn requested_account_falls_back_to_the_deprecated_field_then_default() {
        assert_eq!(requested_account(&pod(json!({"serviceAccountName": "a", "serviceAccount": "b"}))), "a");
        assert_eq!(requested_account(&pod(json!({"serviceAccountName": "", "serviceAccount": "b"}))), "b");
        assert_eq!(requested_account(&pod(json!({}))), "default");
    }

    #[test]
    fn generated_volume_suffix_uses_upstream_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| NAME_ALPHABET.contains(&b)));
    }
}
