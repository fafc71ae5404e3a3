//! The CSI volume plugin against an in-process fake CSI node service on a unix socket, with API
//! objects from a fake source: which calls reach the driver, with what, and in what order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::{CSIDriver, VolumeAttachment};
use tonic::{Request, Response, Status};
use tug_csi::v1::node_server::{Node, NodeServer};
use tug_csi::v1::*;

use super::*;
use crate::volumemanager::source::FakeSource;
use crate::volumemanager::{setup_pod_volumes_from, teardown_pod_volumes};

/// What the fake driver was asked, in order.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Stage(NodeStageVolumeRequest),
    Unstage(NodeUnstageVolumeRequest),
    Publish(NodePublishVolumeRequest),
    Unpublish(NodeUnpublishVolumeRequest),
}

#[derive(Clone, Default)]
struct FakeNode {
    calls: Arc<Mutex<Vec<Call>>>,
}

#[tonic::async_trait]
impl Node for FakeNode {
    async fn node_stage_volume(
        &self,
        r: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        self.calls.lock().unwrap().push(Call::Stage(r.into_inner()));
        Ok(Response::new(NodeStageVolumeResponse {}))
    }
    async fn node_unstage_volume(
        &self,
        r: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        self.calls.lock().unwrap().push(Call::Unstage(r.into_inner()));
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }
    async fn node_publish_volume(
        &self,
        r: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        self.calls.lock().unwrap().push(Call::Publish(r.into_inner()));
        Ok(Response::new(NodePublishVolumeResponse {}))
    }
    async fn node_unpublish_volume(
        &self,
        r: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        self.calls.lock().unwrap().push(Call::Unpublish(r.into_inner()));
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }
    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let stage = NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc {
                r#type: rpc::Type::StageUnstageVolume as i32,
            })),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities: vec![stage] }))
    }
    async fn node_get_info(&self, _: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse { node_id: "node-1".into(), ..Default::default() }))
    }
}

/// Serves a fake driver on a socket in `dir` and registers it as `driver`.
fn serve(dir: &Path, driver: &str) -> FakeNode {
    let fake = FakeNode::default();
    let socket = dir.join(format!("{driver}.sock"));
    let listener = tug_csi::bind_unix(&socket).unwrap();
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    let server = tonic::transport::Server::builder().add_service(NodeServer::new(fake.clone()));
    tokio::spawn(server.serve_with_incoming(incoming));
    crate::pluginmanager::register_driver_for_tests(driver, &socket.display().to_string());
    fake
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn claim_pod(uid: &str, read_only: bool) -> Pod {
    obj(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": uid},
        "spec": {"serviceAccountName": "sa", "containers": [{"name": "c"}], "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "claim", "readOnly": read_only}}
        ]},
    }))
}

/// A claim bound to a CSI volume of `driver` with secrets for stage and publish.
fn source(driver: &str, attach: Option<bool>, attached: Option<bool>) -> (FakeSource, CsiSource) {
    let claim: PersistentVolumeClaim = obj(serde_json::json!({
        "metadata": {"name": "claim", "namespace": "ns"},
        "spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"},
    }));
    let pv: PersistentVolume = obj(serde_json::json!({
        "metadata": {"name": "pv-1"},
        "spec": {"accessModes": ["ReadOnlyMany"], "mountOptions": ["noatime"], "csi": {
            "driver": driver, "volumeHandle": "h1", "fsType": "ext4", "volumeAttributes": {"a": "b"},
            "nodeStageSecretRef": {"name": "stage", "namespace": "ns"},
            "nodePublishSecretRef": {"name": "publish", "namespace": "ns"},
        }},
    }));
    let secret = |name: &str, value: &str| -> Secret {
        obj(serde_json::json!({"metadata": {"name": name, "namespace": "ns"}, "data": {"key": value}}))
    };
    let csidriver = attach.map(|required| -> CSIDriver {
        obj(serde_json::json!({"metadata": {"name": driver}, "spec": {"attachRequired": required, "podInfoOnMount": true}}))
    });
    let attachment = attached.map(|attached| -> VolumeAttachment {
        obj(serde_json::json!({
            "metadata": {"name": tug_csi::attachment_name("h1", driver, "node-1")},
            "spec": {"attacher": driver, "nodeName": "node-1", "source": {"persistentVolumeName": "pv-1"}},
            "status": {"attached": attached, "attachmentMetadata": {"dev": "/dev/x"}},
        }))
    });
    let fake = FakeSource {
        claims: vec![claim],
        volumes: vec![pv],
        // "c3RhZ2U=" is base64 of "stage", "cHVibGlzaA==" of "publish".
        secrets: vec![secret("stage", "c3RhZ2U="), secret("publish", "cHVibGlzaA==")],
        ..Default::default()
    };
    (fake, CsiSource { csidriver, attachment })
}

/// [`FakeSource`] plus the storage objects it does not hold.
struct CsiSource {
    csidriver: Option<CSIDriver>,
    attachment: Option<VolumeAttachment>,
}

struct WithCsi(FakeSource, CsiSource);

#[async_trait::async_trait]
impl ObjectSource for WithCsi {
    async fn config_map(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<k8s_openapi::api::core::v1::ConfigMap>, SourceError> {
        self.0.config_map(ns, name).await
    }
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, SourceError> {
        self.0.secret(ns, name).await
    }
    async fn services(&self, ns: &str) -> Result<Vec<k8s_openapi::api::core::v1::Service>, SourceError> {
        self.0.services(ns).await
    }
    async fn service_account_token(
        &self,
        ns: &str,
        sa: &str,
        request: &k8s_openapi::api::authentication::v1::TokenRequest,
    ) -> Result<k8s_openapi::api::authentication::v1::TokenRequest, SourceError> {
        self.0.service_account_token(ns, sa, request).await
    }
    async fn persistent_volume_claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, SourceError> {
        self.0.persistent_volume_claim(ns, name).await
    }
    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, SourceError> {
        self.0.persistent_volume(name).await
    }
    async fn csi_driver(&self, _name: &str) -> Result<Option<CSIDriver>, SourceError> {
        Ok(self.1.csidriver.clone())
    }
    async fn volume_attachment(&self, name: &str) -> Result<Option<VolumeAttachment>, SourceError> {
        Ok(self.1.attachment.clone().filter(|a| a.metadata.name.as_deref() == Some(name)))
    }
}

#[tokio::test]
async fn an_attached_volume_is_staged_then_published_with_its_metadata_secrets_and_pod_info() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_tests(&dir.path().join("agent"));
    let fake = serve(dir.path(), "attached.csi");
    let (objects, csi) = source("attached.csi", Some(true), Some(true));
    let source = WithCsi(objects, csi);
    let pod = claim_pod("uid-1", true);

    let volumes = setup_pod_volumes_from(&source, &config, &pod).await.unwrap();
    let target = config.pod_dir("uid-1").join("volumes/kubernetes.io~csi/pv-1/mount");
    assert_eq!(volumes.by_name["data"], target);
    let globalmount = staging_dir(&config, "attached.csi", "h1").join("globalmount");
    let calls = fake.calls.lock().unwrap().clone();
    let [Call::Stage(stage), Call::Publish(publish)] = &calls[..] else { panic!("{calls:?}") };
    assert_eq!(stage.volume_id, "h1");
    assert_eq!(stage.staging_target_path, globalmount.display().to_string());
    assert_eq!(stage.publish_context, HashMap::from([("dev".to_string(), "/dev/x".to_string())]));
    assert_eq!(stage.secrets, HashMap::from([("key".to_string(), "stage".to_string())]));
    assert_eq!(stage.volume_context, HashMap::from([("a".to_string(), "b".to_string())]));
    let capability = stage.volume_capability.clone().unwrap();
    assert_eq!(capability.access_mode.unwrap().mode, access_mode::Mode::MultiNodeReaderOnly as i32);
    let Some(AccessType::Mount(mount)) = capability.access_type else { panic!("not a mount capability") };
    assert_eq!((mount.fs_type.as_str(), mount.mount_flags), ("ext4", vec!["noatime".to_string()]));

    assert_eq!(publish.target_path, target.display().to_string());
    assert_eq!(publish.staging_target_path, stage.staging_target_path);
    assert!(publish.readonly, "the claim is mounted read-only");
    assert_eq!(publish.publish_context, stage.publish_context);
    assert_eq!(publish.secrets, HashMap::from([("key".to_string(), "publish".to_string())]));
    assert_eq!(publish.volume_context["a"], "b");
    assert_eq!(publish.volume_context["csi.storage.k8s.io/pod.name"], "p");
    assert_eq!(publish.volume_context["csi.storage.k8s.io/serviceAccount.name"], "sa");
    assert_eq!(publish.volume_context["csi.storage.k8s.io/ephemeral"], "false");
    assert_eq!(volumes_in_use(&config, None), Some(vec!["kubernetes.io/csi/attached.csi^h1".to_string()]));

    teardown_pod_volumes(&config, "uid-1").await.unwrap();
    let calls = fake.calls.lock().unwrap().clone();
    let [_, _, Call::Unpublish(unpublish), Call::Unstage(unstage)] = &calls[..] else { panic!("{calls:?}") };
    assert_eq!((unpublish.volume_id.as_str(), unpublish.target_path.clone()), ("h1", target.display().to_string()));
    assert_eq!(unstage.staging_target_path, globalmount.display().to_string());
    assert_eq!(volumes_in_use(&config, None), None);
    assert!(!staging_dir(&config, "attached.csi", "h1").exists());
}

#[tokio::test]
async fn a_volume_another_pod_uses_is_not_unstaged() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_tests(&dir.path().join("agent"));
    let fake = serve(dir.path(), "shared.csi");
    let (objects, csi) = source("shared.csi", Some(false), None);
    let source = WithCsi(objects, csi);
    setup_pod_volumes_from(&source, &config, &claim_pod("uid-a", false)).await.unwrap();
    setup_pod_volumes_from(&source, &config, &claim_pod("uid-b", false)).await.unwrap();
    // Not attachable: nothing to report in use.
    assert_eq!(volumes_in_use(&config, None), None);
    teardown_pod_volumes(&config, "uid-a").await.unwrap();
    let unstaged =
        |fake: &FakeNode| fake.calls.lock().unwrap().iter().filter(|c| matches!(c, Call::Unstage(_))).count();
    assert_eq!(unstaged(&fake), 0);
    teardown_pod_volumes(&config, "uid-b").await.unwrap();
    assert_eq!(unstaged(&fake), 1);
}

#[tokio::test]
async fn setup_errors_are_worded_as_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_tests(&dir.path().join("agent"));
    serve(dir.path(), "unattached.csi");

    let (objects, csi) = source("unattached.csi", None, None);
    let err = setup_pod_volumes_from(&WithCsi(objects, csi), &config, &claim_pod("uid-1", false)).await.unwrap_err();
    let attachment = tug_csi::attachment_name("h1", "unattached.csi", "node-1");
    assert_eq!(
        err.to_string(),
        format!(
            "MountVolume.SetUp failed for volume \"data\" : volumeattachments.storage.k8s.io \"{attachment}\" not found"
        )
    );

    let (objects, csi) = source("unregistered.csi", Some(false), None);
    let err = setup_pod_volumes_from(&WithCsi(objects, csi), &config, &claim_pod("uid-1", false)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"data\" : driver name unregistered.csi not found in the list of registered CSI drivers"
    );

    let inline: Pod = obj(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "uid-2"},
        "spec": {"containers": [{"name": "c"}], "volumes": [{"name": "scratch", "csi": {"driver": "unattached.csi"}}]},
    }));
    let (objects, _) = source("unattached.csi", None, None);
    let none = CsiSource { csidriver: None, attachment: None };
    let err = setup_pod_volumes_from(&WithCsi(objects, none), &config, &inline).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"scratch\" : volume mode \"Ephemeral\" not supported by driver unattached.csi (no CSIDriver object)"
    );
}
