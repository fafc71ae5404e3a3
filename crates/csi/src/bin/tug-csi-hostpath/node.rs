//! The CSI Node service: stage bind-mounts the volume's directory at the staging path, publish
//! bind-mounts the staging path (or, for an ephemeral inline volume, a fresh directory) at the
//! pod's target path. Every call is idempotent, as the spec demands: a repeated call after
//! success returns OK without stacking a second mount.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tug_csi::v1::node_server::Node;
use tug_csi::v1::node_service_capability::{self, rpc};
use tug_csi::v1::{
    NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, NodeUnstageVolumeRequest,
    NodeUnstageVolumeResponse, Topology,
};

use crate::driver::{Driver, EPHEMERAL_KEY, TOPOLOGY_KEY, internal_io, require};
use crate::state::remove_dir_all_if_exists;

pub struct NodeService(pub Arc<Driver>);

impl NodeService {
    fn mounted(&self, path: &Path) -> Result<bool, Status> {
        self.0.mounter.is_mount_point(path).map_err(|err| internal_io("inspect mount", path, err))
    }

    fn create_dir(path: &Path) -> Result<(), Status> {
        std::fs::create_dir_all(path).map_err(|err| internal_io("create directory", path, err))
    }

    /// Unmounts `path` if it is a mount point and removes the (then empty) directory.
    fn unmount_and_remove(&self, path: &Path) -> Result<(), Status> {
        if self.mounted(path)? {
            self.0.mounter.unmount(path).map_err(|err| internal_io("unmount", path, err))?;
        }
        match std::fs::remove_dir(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(internal_io("remove", path, err)),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "Volume ID")?;
        require(&req.staging_target_path, "Staging Target Path")?;
        if req.volume_capability.is_none() {
            return Err(Status::invalid_argument("Volume Capability missing in request"));
        }
        let _guard = self.0.lock.lock().await;
        if self.0.store.get(&req.volume_id)?.is_none() {
            return Err(Status::not_found(format!("volume id {} does not exist", req.volume_id)));
        }
        let staging = Path::new(&req.staging_target_path);
        if self.mounted(staging)? {
            return Ok(Response::new(NodeStageVolumeResponse {}));
        }
        Self::create_dir(staging)?;
        let source = self.0.store.data_dir(&req.volume_id)?;
        self.0.mounter.bind(&source, staging, false).map_err(|err| internal_io("bind mount at", staging, err))?;
        tracing::info!(volume = %req.volume_id, staging = %staging.display(), publish_context = ?req.publish_context, "staged volume");
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "Volume ID")?;
        require(&req.staging_target_path, "Staging Target Path")?;
        let _guard = self.0.lock.lock().await;
        self.unmount_and_remove(Path::new(&req.staging_target_path))?;
        tracing::info!(volume = %req.volume_id, staging = %req.staging_target_path, "unstaged volume");
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "Volume ID")?;
        require(&req.target_path, "Target Path")?;
        if req.volume_capability.is_none() {
            return Err(Status::invalid_argument("Volume Capability missing in request"));
        }
        let ephemeral = req.volume_context.get(EPHEMERAL_KEY).is_some_and(|value| value == "true");
        let _guard = self.0.lock.lock().await;
        let target = Path::new(&req.target_path);
        if self.mounted(target)? {
            return Ok(Response::new(NodePublishVolumeResponse {}));
        }
        let source = if ephemeral {
            let dir = self.0.store.ephemeral_dir(&req.volume_id)?;
            Self::create_dir(&dir)?;
            dir
        } else {
            // STAGE_UNSTAGE_VOLUME is advertised, so a CO must stage before it publishes.
            require(&req.staging_target_path, "Staging Target Path")?;
            if self.0.store.get(&req.volume_id)?.is_none() {
                return Err(Status::not_found(format!("volume id {} does not exist", req.volume_id)));
            }
            let staging = Path::new(&req.staging_target_path);
            if !self.mounted(staging)? {
                return Err(Status::failed_precondition(format!(
                    "volume {} is not staged at {}",
                    req.volume_id, req.staging_target_path
                )));
            }
            staging.to_path_buf()
        };
        Self::create_dir(target)?;
        self.0.mounter.bind(&source, target, req.readonly).map_err(|err| internal_io("bind mount at", target, err))?;
        tracing::info!(volume = %req.volume_id, target = %target.display(), readonly = req.readonly, ephemeral, "published volume");
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "Volume ID")?;
        require(&req.target_path, "Target Path")?;
        let _guard = self.0.lock.lock().await;
        self.unmount_and_remove(Path::new(&req.target_path))?;
        // An ephemeral volume lives exactly as long as its one publication.
        remove_dir_all_if_exists(&self.0.store.ephemeral_dir(&req.volume_id)?)?;
        tracing::info!(volume = %req.volume_id, target = %req.target_path, "unpublished volume");
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![NodeServiceCapability {
                r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc {
                    r#type: rpc::Type::StageUnstageVolume as i32,
                })),
            }],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.0.node_id.clone(),
            max_volumes_per_node: self.0.max_volumes_per_node,
            accessible_topology: Some(Topology {
                segments: HashMap::from([(TOPOLOGY_KEY.to_string(), self.0.node_id.clone())]),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tonic::Code;
    use tug_csi::v1::VolumeCapability;

    use super::*;
    use crate::driver::testing;
    use crate::state::VolumeMeta;

    fn stage(id: &str, staging: &Path) -> Request<NodeStageVolumeRequest> {
        Request::new(NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(VolumeCapability::default()),
            ..Default::default()
        })
    }

    fn publish(id: &str, staging: &Path, target: &Path, readonly: bool) -> Request<NodePublishVolumeRequest> {
        Request::new(NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(VolumeCapability::default()),
            readonly,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn stage_publish_unpublish_unstage_are_each_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (driver, mounts) = testing::driver(&dir.path().join("state"));
        let meta =
            VolumeMeta { id: "vol-1".into(), name: "pvc".into(), capacity_bytes: 0, published_nodes: BTreeSet::new() };
        driver.store.put(&meta).unwrap();
        let svc = NodeService(driver.clone());
        let staging = dir.path().join("globalmount");
        let target = dir.path().join("pod/mount");

        // Publishing before staging is a failed precondition.
        let err = svc.node_publish_volume(publish("vol-1", &staging, &target, false)).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);

        svc.node_stage_volume(stage("vol-1", &staging)).await.unwrap();
        svc.node_stage_volume(stage("vol-1", &staging)).await.unwrap();
        svc.node_publish_volume(publish("vol-1", &staging, &target, true)).await.unwrap();
        svc.node_publish_volume(publish("vol-1", &staging, &target, true)).await.unwrap();
        {
            let mounts = mounts.mounts.lock().unwrap();
            assert_eq!(mounts[&staging], (driver.store.data_dir("vol-1").unwrap(), false));
            assert_eq!(mounts[&target], (staging.clone(), true));
        }

        let unpublish = || {
            Request::new(NodeUnpublishVolumeRequest {
                volume_id: "vol-1".into(),
                target_path: target.display().to_string(),
            })
        };
        svc.node_unpublish_volume(unpublish()).await.unwrap();
        svc.node_unpublish_volume(unpublish()).await.unwrap();
        assert!(!target.exists());
        let unstage = || {
            Request::new(NodeUnstageVolumeRequest {
                volume_id: "vol-1".into(),
                staging_target_path: staging.display().to_string(),
            })
        };
        svc.node_unstage_volume(unstage()).await.unwrap();
        svc.node_unstage_volume(unstage()).await.unwrap();
        assert!(!staging.exists());
        assert!(mounts.mounts.lock().unwrap().is_empty());
        // The volume's data outlives its mounts.
        assert!(driver.store.data_dir("vol-1").unwrap().is_dir());
    }

    #[tokio::test]
    async fn bad_requests_get_invalid_argument_or_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let svc = NodeService(testing::driver(dir.path()).0);
        let err = svc.node_stage_volume(stage("", &dir.path().join("s"))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = svc.node_stage_volume(stage("vol-nope", &dir.path().join("s"))).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = svc.node_stage_volume(stage("../x", &dir.path().join("s"))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let mut req = publish("vol-1", Path::new("/s"), Path::new("/t"), false);
        req.get_mut().volume_capability = None;
        assert_eq!(svc.node_publish_volume(req).await.unwrap_err().code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn ephemeral_volume_gets_a_fresh_dir_that_unpublish_removes() {
        let dir = tempfile::tempdir().unwrap();
        let (driver, mounts) = testing::driver(&dir.path().join("state"));
        let svc = NodeService(driver.clone());
        let target = dir.path().join("pod/mount");
        let mut req = publish("csi-abc", Path::new(""), &target, false);
        req.get_mut().staging_target_path.clear();
        req.get_mut().volume_context.insert(EPHEMERAL_KEY.into(), "true".into());
        svc.node_publish_volume(req).await.unwrap();
        let data = driver.store.ephemeral_dir("csi-abc").unwrap();
        assert!(data.is_dir());
        assert_eq!(mounts.mounts.lock().unwrap()[&target].0, data);
        let unpublish =
            NodeUnpublishVolumeRequest { volume_id: "csi-abc".into(), target_path: target.display().to_string() };
        svc.node_unpublish_volume(Request::new(unpublish)).await.unwrap();
        assert!(!data.exists());
    }

    #[tokio::test]
    async fn node_info_reports_id_topology_and_volume_limit() {
        let dir = tempfile::tempdir().unwrap();
        let svc = NodeService(testing::driver(dir.path()).0);
        let info = svc.node_get_info(Request::new(NodeGetInfoRequest {})).await.unwrap().into_inner();
        assert_eq!(info.node_id, "node-a");
        assert_eq!(info.max_volumes_per_node, 7);
        assert_eq!(info.accessible_topology.unwrap().segments[TOPOLOGY_KEY], "node-a");
    }
}
