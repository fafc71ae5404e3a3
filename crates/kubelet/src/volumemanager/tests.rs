//! The volume manager end to end on a temp directory, with API objects from a fake source.
//! Memory-backed volumes mount a tmpfs, so those tests need root: outside CI they skip with a
//! message, under `CI=true` they fail.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::source::FakeSource;
use super::*;

fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs root to mount tmpfs (CI=true)");
    eprintln!("skipping {test}: needs root to mount tmpfs");
    false
}

/// Tears the pod's volumes down when a test ends, even by a panic, so no tmpfs is left behind.
struct PodDirGuard {
    config: Config,
    uid: String,
}

impl Drop for PodDirGuard {
    fn drop(&mut self) {
        let pod_dir = self.config.pod_dir(&self.uid);
        let _ = teardown_blocking(&pod_dir, &pod_dir.join("volumes"));
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn pod(uid: &str, spec: serde_json::Value) -> Pod {
    obj(
        serde_json::json!({"metadata": {"name": "p", "namespace": "ns", "uid": uid, "labels": {"tier": "web"}}, "spec": spec}),
    )
}

fn config_map(data: serde_json::Value) -> k8s_openapi::api::core::v1::ConfigMap {
    obj(serde_json::json!({"metadata": {"name": "cfg", "namespace": "ns"}, "data": data}))
}

fn source() -> FakeSource {
    FakeSource {
        config_maps: vec![
            config_map(serde_json::json!({"app.conf": "v1", "other": "x"})),
            obj(
                serde_json::json!({"metadata": {"name": "kube-root-ca.crt", "namespace": "ns"}, "data": {"ca.crt": "PEM"}}),
            ),
        ],
        secrets: vec![obj(
            serde_json::json!({"metadata": {"name": "creds", "namespace": "ns"}, "data": {"pw": "c2VjcmV0"}}),
        )],
        ..Default::default()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn configmap_empty_dir_and_host_path_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("agent"));
    let host = dir.path().join("host-data");
    let p = pod(
        "uid-disk",
        serde_json::json!({"containers": [{"name": "c"}], "volumes": [
            {"name": "conf", "configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "etc/app.conf", "mode": 0o600}]}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "data", "hostPath": {"path": host.to_str().unwrap(), "type": "DirectoryOrCreate"}},
            {"name": "maybe", "configMap": {"name": "absent", "optional": true}}
        ]}),
    );
    let volumes = setup_pod_volumes_from(&source(), &config, &p).await.unwrap();
    let conf = &volumes.by_name["conf"];
    assert_eq!(conf, &config.pod_dir("uid-disk").join("volumes/kubernetes.io~configmap/conf"));
    assert_eq!(read(&conf.join("etc/app.conf")), "v1");
    assert_eq!(mode(&conf.join("..data/etc/app.conf")), 0o600);
    assert!(!conf.join("other").exists(), "items select keys");
    let scratch = &volumes.by_name["scratch"];
    assert!(scratch.ends_with("volumes/kubernetes.io~empty-dir/scratch"));
    assert_eq!(mode(scratch), 0o777);
    assert_eq!(volumes.by_name["data"], host);
    assert!(host.is_dir());
    let maybe = &volumes.by_name["maybe"];
    assert_eq!(
        std::fs::read_dir(maybe)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".."))
            .count(),
        0
    );

    teardown_pod_volumes(&config, "uid-disk").await.unwrap();
    assert!(!config.pod_dir("uid-disk").join("volumes").exists());
    assert!(host.is_dir(), "hostPath data is the node's and stays");
}

#[tokio::test]
async fn configmap_change_is_published_by_swapping_data_link() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let p = pod(
        "uid-update",
        serde_json::json!({"containers": [{"name": "c"}], "volumes": [{"name": "conf", "configMap": {"name": "cfg"}}]}),
    );
    let mut src = source();
    let volumes = setup_pod_volumes_from(&src, &config, &p).await.unwrap();
    let conf = volumes.by_name["conf"].clone();
    let before = std::fs::read_link(conf.join("..data")).unwrap();
    setup_pod_volumes_from(&src, &config, &p).await.unwrap();
    assert_eq!(std::fs::read_link(conf.join("..data")).unwrap(), before, "no change, no rewrite");

    src.config_maps[0] = config_map(serde_json::json!({"app.conf": "v2"}));
    setup_pod_volumes_from(&src, &config, &p).await.unwrap();
    assert_ne!(std::fs::read_link(conf.join("..data")).unwrap(), before);
    assert_eq!(read(&conf.join("app.conf")), "v2");
    assert!(std::fs::symlink_metadata(conf.join("other")).is_err(), "a removed key disappears");
    teardown_pod_volumes(&config, "uid-update").await.unwrap();
}

#[tokio::test]
async fn missing_objects_fail_with_failed_mount_messages() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let cases = [
        (
            serde_json::json!({"name": "v", "configMap": {"name": "x"}}),
            "MountVolume.SetUp failed for volume \"v\" : configmap \"x\" not found",
        ),
        (
            serde_json::json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "nope", "path": "n"}]}}),
            "MountVolume.SetUp failed for volume \"v\" : configmap references non-existent config key: nope",
        ),
        (
            serde_json::json!({"name": "v", "hostPath": {"path": "/proc/version", "type": "Directory"}}),
            "MountVolume.SetUp failed for volume \"v\" : hostPath type check failed: /proc/version is not a directory, it's a File",
        ),
        (
            serde_json::json!({"name": "v", "persistentVolumeClaim": {"claimName": "claim"}}),
            "MountVolume.SetUp failed for volume \"v\" : persistentvolumeclaim \"claim\" not found",
        ),
    ];
    for (volume, message) in cases {
        let p = pod("uid-missing", serde_json::json!({"containers": [{"name": "c"}], "volumes": [volume]}));
        let err = setup_pod_volumes_from(&source(), &config, &p).await.unwrap_err();
        assert_eq!(err.to_string(), message);
    }
    teardown_pod_volumes(&config, "uid-missing").await.unwrap();
}

#[tokio::test]
async fn claim_bound_to_host_path_volume() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("agent"));
    let data = dir.path().join("pv-data");
    let mut src = source();
    src.claims.push(obj(serde_json::json!({"metadata": {"name": "claim", "namespace": "ns"},
        "spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"}})));
    src.volumes.push(obj(serde_json::json!({"metadata": {"name": "pv-1"},
        "spec": {"hostPath": {"path": data.to_str().unwrap(), "type": "DirectoryOrCreate"}}})));
    let p = pod(
        "uid-pvc",
        serde_json::json!({"containers": [{"name": "c"}], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "claim"}}]}),
    );
    let volumes = setup_pod_volumes_from(&src, &config, &p).await.unwrap();
    assert_eq!(volumes.by_name["v"], data);
    src.claims[0].status = None;
    let err = setup_pod_volumes_from(&src, &config, &p).await.unwrap_err();
    assert_eq!(err.to_string(), "MountVolume.SetUp failed for volume \"v\" : PVC ns/claim is not bound");
}

#[tokio::test]
async fn memory_backed_volumes_are_on_tmpfs_and_torn_down() {
    if !require_root("memory_backed_volumes_are_on_tmpfs_and_torn_down") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let _guard = PodDirGuard { config: config.clone(), uid: "uid-mem".into() };
    let p = pod(
        "uid-mem",
        serde_json::json!({"serviceAccountName": "default", "containers": [{"name": "c"}], "volumes": [
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}},
            {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
        ]}),
    );
    let volumes = setup_pod_volumes_from(&source(), &config, &p).await.unwrap();
    for name in ["creds", "info", "kube-api-access-abcde", "ram"] {
        assert!(mount::is_mounted(&volumes.by_name[name]).unwrap(), "{name} is a tmpfs");
    }
    let creds = &volumes.by_name["creds"];
    assert!(creds.ends_with("volumes/kubernetes.io~secret/creds"));
    assert_eq!(read(&creds.join("pw")), "secret");
    assert_eq!(mode(&creds.join("..data/pw")), 0o400);
    assert_eq!(read(&volumes.by_name["info"].join("labels")), "tier=\"web\"");
    let sa = &volumes.by_name["kube-api-access-abcde"];
    assert!(sa.ends_with("volumes/kubernetes.io~projected/kube-api-access-abcde"));
    assert_eq!(read(&sa.join("ca.crt")), "PEM");
    assert_eq!(read(&sa.join("namespace")), "ns");
    assert!(read(&sa.join("token")).starts_with("token-"));
    let statfs = rustix::fs::statvfs(&volumes.by_name["ram"]).unwrap();
    assert_eq!(statfs.f_blocks * statfs.f_frsize, 1024 * 1024, "sizeLimit sizes the tmpfs");

    // A second sync mounts nothing twice.
    setup_pod_volumes_from(&source(), &config, &p).await.unwrap();
    let pod_dir = config.pod_dir("uid-mem");
    assert_eq!(mount::mounts_under(&pod_dir).unwrap().len(), 4);

    teardown_pod_volumes(&config, "uid-mem").await.unwrap();
    assert!(mount::mounts_under(&pod_dir).unwrap().is_empty());
    assert!(!pod_dir.join("volumes").exists());
}

#[tokio::test]
async fn fs_group_owns_volume_files_group_readable() {
    if !require_root("fs_group_owns_volume_files_group_readable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let _guard = PodDirGuard { config: config.clone(), uid: "uid-fsgroup".into() };
    let p = pod(
        "uid-fsgroup",
        serde_json::json!({"securityContext": {"fsGroup": 2345}, "containers": [{"name": "c"}], "volumes": [
            {"name": "conf", "configMap": {"name": "cfg", "defaultMode": 0o600}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "sa", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
        ]}),
    );
    let volumes = setup_pod_volumes_from(&source(), &config, &p).await.unwrap();
    let conf = &volumes.by_name["conf"];
    let file = conf.join("..data/app.conf");
    assert_eq!(std::fs::metadata(&file).unwrap().gid(), 2345);
    assert_eq!(mode(&file), 0o640);
    let data_dir = std::fs::canonicalize(conf.join("..data")).unwrap();
    assert_eq!(mode(&data_dir) & 0o2000, 0o2000, "directories are setgid");
    assert_eq!(std::fs::metadata(&volumes.by_name["scratch"]).unwrap().gid(), 2345);
    assert_eq!(mode(&volumes.by_name["scratch"]), 0o2777);
    assert_eq!(mode(&volumes.by_name["sa"].join("..data/token")), 0o640, "token 0600 plus group read");

    let before = std::fs::read_link(conf.join("..data")).unwrap();
    setup_pod_volumes_from(&source(), &config, &p).await.unwrap();
    assert_eq!(std::fs::read_link(conf.join("..data")).unwrap(), before, "ownership does not force rewrites");
    teardown_pod_volumes(&config, "uid-fsgroup").await.unwrap();
    projected::forget_pod_tokens("uid-fsgroup");
}

fn mounts_pod(volume_mounts: serde_json::Value) -> (Pod, Container, PodVolumes, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = pod(
        "uid-mounts",
        serde_json::json!({"containers": [{"name": "c", "volumeMounts": volume_mounts}], "volumes": [
            {"name": "scratch", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "cfg"}}
        ]}),
    );
    let container = p.spec.as_ref().unwrap().containers[0].clone();
    let scratch = dir.path().join("scratch");
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let volumes = PodVolumes { by_name: [("scratch".to_owned(), scratch), ("conf".to_owned(), conf)].into() };
    (p, container, volumes, dir)
}

#[test]
fn container_mounts_carry_read_only_and_propagation() {
    let (p, c, volumes, _dir) = mounts_pod(serde_json::json!([
        {"name": "scratch", "mountPath": "/data", "mountPropagation": "HostToContainer"},
        {"name": "scratch", "mountPath": "/ro", "readOnly": true},
        {"name": "conf", "mountPath": "/etc/conf"}
    ]));
    let mounts = container_mounts(&p, &c, &volumes, &[]).unwrap();
    assert_eq!(mounts.len(), 3);
    assert_eq!(mounts[0].container_path, "/data");
    assert_eq!(mounts[0].host_path, volumes.by_name["scratch"]);
    assert_eq!((mounts[0].readonly, mounts[0].propagation), (false, MountPropagation::HostToContainer));
    assert!(mounts[1].readonly);
    assert!(mounts[2].readonly, "configMap volumes are always read-only");
    assert_eq!(mounts[2].propagation, MountPropagation::Private);
}

#[test]
fn sub_path_and_sub_path_expr_are_created_inside_the_volume() {
    let (p, c, volumes, _dir) = mounts_pod(serde_json::json!([
        {"name": "scratch", "mountPath": "/a", "subPath": "one/two"},
        {"name": "scratch", "mountPath": "/b", "subPathExpr": "logs/$(POD_NAME)"}
    ]));
    let env = [("POD_NAME".to_owned(), "web-0".to_owned())];
    let mounts = container_mounts(&p, &c, &volumes, &env).unwrap();
    let scratch = volumes.by_name["scratch"].canonicalize().unwrap();
    assert_eq!(mounts[0].host_path, scratch.join("one/two"));
    assert!(mounts[0].host_path.is_dir());
    assert_eq!(mode(&mounts[0].host_path), 0o755);
    assert_eq!(mounts[1].host_path, scratch.join("logs/web-0"));
}

#[test]
fn bad_sub_paths_and_unknown_volumes_are_errors() {
    let message = |mounts: serde_json::Value| {
        let (p, c, volumes, _dir) = mounts_pod(mounts);
        container_mounts(&p, &c, &volumes, &[]).unwrap_err().to_string()
    };
    assert_eq!(
        message(serde_json::json!([{"name": "nope", "mountPath": "/x"}])),
        "cannot find volume \"nope\" to mount into container \"c\""
    );
    assert_eq!(
        message(serde_json::json!([{"name": "scratch", "mountPath": "/x", "subPath": "/abs"}])),
        "error SubPath `/abs` must not be an absolute path"
    );
    assert_eq!(
        message(serde_json::json!([{"name": "scratch", "mountPath": "/x", "subPath": "a/../../b"}])),
        "unable to provision SubPath `a/../../b`: must not contain '..'"
    );
    assert_eq!(
        message(serde_json::json!([{"name": "scratch", "mountPath": "/x", "subPathExpr": "$(NOPE)/x"}])),
        "missing value for NOPE"
    );
    let (p, c, volumes, dir) =
        mounts_pod(serde_json::json!([{"name": "scratch", "mountPath": "/x", "subPath": "link"}]));
    std::os::unix::fs::symlink(dir.path(), volumes.by_name["scratch"].join("link")).unwrap();
    let err = container_mounts(&p, &c, &volumes, &[]).unwrap_err();
    assert!(matches!(err, VolumeError::SubPathEscapes { .. }), "{err}");
}
