//! Reading static pod manifests (upstream's `pkg/kubelet/config/file.go` and `common.go`).
//!
//! The manifest path is a directory whose regular files (names starting with a dot ignored, no
//! recursion) each hold one Pod, or a list of pods, in YAML or JSON; or it is a single such file.
//! Each pod is defaulted as the API server would, then given what makes it a static pod of this
//! node: its name suffixed with the node's name, the `default` namespace if none, a UID derived
//! from its content and source (so an unchanged file keeps its pod across agent restarts and a
//! changed one becomes a new pod, as upstream), `spec.nodeName`, the config annotations, and a
//! toleration of every NoExecute taint so that node problems do not evict it.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, Toleration};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tug_api::kinds::{Kind, NameRule, validate_object_meta};

/// The content hash of a static pod (its UID).
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// On a mirror pod: the hash of the static pod it mirrors.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
/// Where a pod came from: `file` for static pods, `api` otherwise.
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
/// When the agent first saw the pod.
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";
/// `kubernetes.io/config.source` of pods from manifest files.
pub const FILE_SOURCE: &str = "file";

/// Why a manifest file gave no pod. The agent logs it and goes on with the other files.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading static pod manifest {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("static pod manifest {path} is not valid YAML or JSON")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("static pod manifest {path} does not hold a Pod")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("static pod manifest {path} holds a {kind}, not a Pod or a list of pods")]
    Kind { path: PathBuf, kind: String },
    #[error("static pod manifest {path}: invalid pod: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Whether this pod came from a manifest file.
pub fn is_static(pod: &Pod) -> bool {
    annotation(pod, CONFIG_SOURCE) == Some(FILE_SOURCE)
}

/// Whether this API pod is the mirror of a static pod.
pub fn is_mirror(pod: &Pod) -> bool {
    annotation(pod, CONFIG_MIRROR).is_some()
}

pub(crate) fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Reads every manifest under `path`: the pods found, and the files that gave none.
pub fn read_manifests(path: &Path, node_name: &str) -> (Vec<Pod>, Vec<ManifestError>) {
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    for file in manifest_files(path) {
        let data = match std::fs::read(&file) {
            Ok(data) => data,
            // Removed between listing and reading: it simply is not there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                errors.push(ManifestError::Read { path: file, source });
                continue;
            }
        };
        match decode_manifest(&file, &data, node_name) {
            Ok(found) => pods.extend(found),
            Err(e) => errors.push(e),
        }
    }
    (pods, errors)
}

/// The files a manifest path names, sorted so that results do not depend on directory order.
fn manifest_files(path: &Path) -> Vec<PathBuf> {
    let Ok(meta) = std::fs::metadata(path) else { return Vec::new() };
    if meta.is_file() {
        return vec![path.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(path) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Decodes one manifest: a Pod, or a PodList / List of pods.
pub fn decode_manifest(path: &Path, data: &[u8], node_name: &str) -> Result<Vec<Pod>, ManifestError> {
    let value: Value =
        serde_yaml::from_slice(data).map_err(|source| ManifestError::Parse { path: path.to_path_buf(), source })?;
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let items = match kind.as_str() {
        "Pod" => vec![value],
        "PodList" | "List" => value.get("items").and_then(Value::as_array).cloned().unwrap_or_default(),
        _ => return Err(ManifestError::Kind { path: path.to_path_buf(), kind }),
    };
    items
        .into_iter()
        .map(|item| {
            if item.get("kind").and_then(Value::as_str).is_some_and(|k| k != "Pod") {
                let kind = item["kind"].as_str().unwrap_or_default().to_string();
                return Err(ManifestError::Kind { path: path.to_path_buf(), kind });
            }
            let pod: Pod = serde_json::from_value(item)
                .map_err(|source| ManifestError::Decode { path: path.to_path_buf(), source })?;
            static_pod(pod, path, node_name)
        })
        .collect()
}

/// Defaults and validates a decoded pod and makes it this node's static pod.
fn static_pod(mut pod: Pod, source: &Path, node_name: &str) -> Result<Pod, ManifestError> {
    pod.set_defaults();
    // The UID hashes the pod as written (defaulted) with where it comes from: the same file on
    // the same node gives the same pod after an agent restart.
    if pod.metadata.uid.as_deref().unwrap_or_default().is_empty() {
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(&pod).unwrap_or_default());
        hasher.update(format!("host:{node_name}"));
        hasher.update(format!("file:{}", source.display()));
        let digest = hasher.finalize();
        pod.metadata.uid = Some(digest[..16].iter().map(|b| format!("{b:02x}")).collect());
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    pod.metadata.name = Some(format!("{name}-{}", node_name.to_lowercase()));
    if pod.metadata.namespace.as_deref().unwrap_or_default().is_empty() {
        pod.metadata.namespace = Some("default".into());
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.get_or_insert_with(Default::default);
    annotations.insert(CONFIG_HASH.into(), uid);
    annotations.insert(CONFIG_SOURCE.into(), FILE_SOURCE.into());
    if let Some(spec) = &mut pod.spec {
        spec.node_name = Some(node_name.to_string());
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        let tolerate_all =
            Toleration { operator: Some("Exists".into()), effect: Some("NoExecute".into()), ..Default::default() };
        if !tolerations.contains(&tolerate_all) {
            tolerations.push(tolerate_all);
        }
    }
    pod.prepare_for_create();
    let mut errs = Vec::new();
    if name.is_empty() {
        errs.push("metadata.name: Required value: name or generateName is required".to_string());
    } else {
        let mut field_errs = Vec::new();
        validate_object_meta(&pod.metadata, NameRule::Subdomain, true, &mut field_errs);
        if pod.spec.is_none() {
            errs.push("spec: Required value".to_string());
        } else {
            pod.validate(&mut field_errs);
        }
        errs.extend(field_errs.iter().map(ToString::to_string));
    }
    if !errs.is_empty() {
        return Err(ManifestError::Invalid { path: source.to_path_buf(), message: errs.join(", ") });
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, '3600']\n";

    fn decode(text: &str) -> Result<Vec<Pod>, ManifestError> {
        decode_manifest(Path::new("/etc/manifests/web.yaml"), text.as_bytes(), "Node-1")
    }

    #[test]
    fn a_manifest_becomes_a_static_pod_of_this_node() {
        let pods = decode(MANIFEST).expect("decoded");
        assert_eq!(pods.len(), 1);
        let pod = &pods[0];
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let uid = pod.metadata.uid.clone().expect("uid");
        assert_eq!(uid.len(), 32);
        assert_eq!(annotation(pod, CONFIG_HASH), Some(uid.as_str()));
        assert!(is_static(pod));
        assert!(!is_mirror(pod));
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"), "defaulted as the API server does");
        let tolerations = spec.tolerations.as_ref().expect("tolerations");
        assert!(tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists")
            && t.effect.as_deref() == Some("NoExecute")
            && t.key.is_none()));
        assert_eq!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Pending"));
    }

    #[test]
    fn the_uid_is_stable_for_the_same_content_and_changes_with_it() {
        let a = decode(MANIFEST).expect("decoded");
        let b = decode(MANIFEST).expect("decoded");
        assert_eq!(a[0].metadata.uid, b[0].metadata.uid);
        let changed = decode(&MANIFEST.replace("3600", "3601")).expect("decoded");
        assert_ne!(a[0].metadata.uid, changed[0].metadata.uid);
        let elsewhere = decode_manifest(Path::new("/other/web.yaml"), MANIFEST.as_bytes(), "Node-1").expect("decoded");
        assert_ne!(a[0].metadata.uid, elsewhere[0].metadata.uid, "the source is part of the hash");
    }

    #[test]
    fn json_and_pod_lists_are_read() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"kube-system"},
            "spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
        let pods = decode(json).expect("decoded");
        assert_eq!(pods[0].metadata.namespace.as_deref(), Some("kube-system"));
        let list = format!(
            "apiVersion: v1\nkind: PodList\nitems:\n- {}\n- {}\n",
            r#"{"metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#,
            r#"{"metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#
        );
        let pods = decode(&list).expect("decoded");
        let names: Vec<_> = pods.iter().map(|p| p.metadata.name.clone().unwrap_or_default()).collect();
        assert_eq!(names, ["a-node-1", "b-node-1"]);
    }

    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        assert!(matches!(decode("kind: Pod\nmetadata: [unclosed"), Err(ManifestError::Parse { .. })));
        assert!(matches!(
            decode("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"),
            Err(ManifestError::Kind { .. })
        ));
        let no_containers = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n";
        let err = decode(no_containers).expect_err("invalid");
        assert!(matches!(err, ManifestError::Invalid { .. }));
        assert!(err.to_string().contains("spec.containers"), "{err}");
        let bad_name = MANIFEST.replace("name: web", "name: Web_1");
        assert!(matches!(decode(&bad_name), Err(ManifestError::Invalid { .. })));
    }

    #[test]
    fn a_directory_is_read_without_hidden_files_or_subdirectories() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("web.yaml"), MANIFEST).expect("write");
        std::fs::write(dir.path().join(".web.yaml.swp"), MANIFEST).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/other.yaml"), MANIFEST).expect("write");
        std::fs::write(dir.path().join("broken.yaml"), "kind: Pod\nmetadata: [").expect("write");
        let (pods, errors) = read_manifests(dir.path(), "n");
        assert_eq!(pods.len(), 1);
        assert_eq!(errors.len(), 1);
        let (single, _) = read_manifests(&dir.path().join("web.yaml"), "n");
        assert_eq!(single.len(), 1, "a file path names one manifest");
        let (none, errors) = read_manifests(&dir.path().join("missing"), "n");
        assert!(none.is_empty() && errors.is_empty());
    }
}
