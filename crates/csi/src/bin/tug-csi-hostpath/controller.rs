//! The CSI Controller service: volumes are directories in the state dir; "attach"
//! (ControllerPublish) records the node and hands back a publish_context.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tug_csi::v1::controller_server::Controller;
use tug_csi::v1::controller_service_capability::{self, rpc};
use tug_csi::v1::validate_volume_capabilities_response::Confirmed;
use tug_csi::v1::{
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse, ControllerPublishVolumeRequest,
    ControllerPublishVolumeResponse, ControllerServiceCapability, ControllerUnpublishVolumeRequest,
    ControllerUnpublishVolumeResponse, CreateVolumeRequest, CreateVolumeResponse, DeleteVolumeRequest,
    DeleteVolumeResponse, Topology, ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse, Volume,
};

use crate::driver::{Driver, TOPOLOGY_KEY, require};
use crate::state::{VolumeMeta, VolumeStore};

/// publish_context key naming the node a volume was published to.
pub const PUBLISHED_NODE_KEY: &str = "hostpath.csi.tugboat.dev/node";

pub struct ControllerService(pub Arc<Driver>);

impl ControllerService {
    fn volume(&self, meta: &VolumeMeta) -> Volume {
        Volume {
            capacity_bytes: meta.capacity_bytes,
            volume_id: meta.id.clone(),
            volume_context: HashMap::new(),
            content_source: None,
            accessible_topology: vec![Topology {
                segments: HashMap::from([(TOPOLOGY_KEY.to_string(), self.0.node_id.clone())]),
            }],
        }
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.name, "Name")?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("Volume Capabilities missing in request"));
        }
        if req.volume_capabilities.iter().any(|cap| cap.access_type.is_none()) {
            return Err(Status::invalid_argument("volume capability access type not set"));
        }
        if req.volume_content_source.is_some() {
            return Err(Status::invalid_argument("volume content sources are not supported"));
        }
        let capacity = req.capacity_range.map(|range| range.required_bytes.max(0)).unwrap_or(0);
        let _guard = self.0.lock.lock().await;
        let id = VolumeStore::id_for_name(&req.name);
        if let Some(existing) = self.0.store.get(&id)? {
            // The spec: the same name with an incompatible size is ALREADY_EXISTS; a retry with
            // a compatible request returns the volume made the first time.
            if existing.capacity_bytes < capacity {
                return Err(Status::already_exists(format!(
                    "volume with name {} already exists with a different size",
                    req.name
                )));
            }
            return Ok(Response::new(CreateVolumeResponse { volume: Some(self.volume(&existing)) }));
        }
        let meta = VolumeMeta { id, name: req.name, capacity_bytes: capacity, published_nodes: BTreeSet::new() };
        self.0.store.put(&meta)?;
        tracing::info!(volume = %meta.id, name = %meta.name, capacity, "created volume");
        Ok(Response::new(CreateVolumeResponse { volume: Some(self.volume(&meta)) }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "Volume ID")?;
        let _guard = self.0.lock.lock().await;
        self.0.store.delete(&req.volume_id)?;
        tracing::info!(volume = %req.volume_id, "deleted volume");
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "Volume ID")?;
        require(&req.node_id, "Node ID")?;
        if req.volume_capability.is_none() {
            return Err(Status::invalid_argument("Volume Capability missing in request"));
        }
        let _guard = self.0.lock.lock().await;
        let Some(mut meta) = self.0.store.get(&req.volume_id)? else {
            return Err(Status::not_found(format!("volume id {} does not exist", req.volume_id)));
        };
        if meta.published_nodes.insert(req.node_id.clone()) {
            self.0.store.put(&meta)?;
            tracing::info!(volume = %meta.id, node = %req.node_id, "published volume to node");
        }
        Ok(Response::new(ControllerPublishVolumeResponse {
            publish_context: HashMap::from([(PUBLISHED_NODE_KEY.to_string(), req.node_id)]),
        }))
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "Volume ID")?;
        let _guard = self.0.lock.lock().await;
        // A volume or node that is gone is already unpublished: the spec asks for OK.
        if let Some(mut meta) = self.0.store.get(&req.volume_id)? {
            let changed = if req.node_id.is_empty() {
                let had = !meta.published_nodes.is_empty();
                meta.published_nodes.clear();
                had
            } else {
                meta.published_nodes.remove(&req.node_id)
            };
            if changed {
                self.0.store.put(&meta)?;
                tracing::info!(volume = %meta.id, node = %req.node_id, "unpublished volume");
            }
        }
        Ok(Response::new(ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        require(&req.volume_id, "Volume ID")?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("Volume Capabilities missing in request"));
        }
        if self.0.store.get(&req.volume_id)?.is_none() {
            return Err(Status::not_found(format!("volume id {} does not exist", req.volume_id)));
        }
        Ok(Response::new(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: req.mutable_parameters,
            }),
            message: String::new(),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let cap = |kind: rpc::Type| ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(controller_service_capability::Rpc {
                r#type: kind as i32,
            })),
        };
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![cap(rpc::Type::CreateDeleteVolume), cap(rpc::Type::PublishUnpublishVolume)],
        }))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tug_csi::v1::volume_capability::{AccessType, MountVolume};
    use tug_csi::v1::{CapacityRange, VolumeCapability};

    use super::*;
    use crate::driver::testing;

    fn create(name: &str, bytes: i64) -> Request<CreateVolumeRequest> {
        Request::new(CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
            volume_capabilities: vec![VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: None,
            }],
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn create_volume_is_idempotent_by_name_and_rejects_a_bigger_retry() {
        let dir = tempfile::tempdir().unwrap();
        let svc = ControllerService(testing::driver(dir.path()).0);
        let first = svc.create_volume(create("pvc-1", 100)).await.unwrap().into_inner().volume.unwrap();
        let again = svc.create_volume(create("pvc-1", 100)).await.unwrap().into_inner().volume.unwrap();
        assert_eq!(first.volume_id, again.volume_id);
        assert_eq!(first.accessible_topology[0].segments[TOPOLOGY_KEY], "node-a");
        let err = svc.create_volume(create("pvc-1", 1000)).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        let err = svc.create_volume(create("", 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn publish_records_the_node_and_unpublish_and_delete_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let driver = testing::driver(dir.path()).0;
        let svc = ControllerService(driver.clone());
        let vol = svc.create_volume(create("pvc-1", 1)).await.unwrap().into_inner().volume.unwrap();
        let publish = |volume_id: &str| {
            Request::new(ControllerPublishVolumeRequest {
                volume_id: volume_id.into(),
                node_id: "node-a".into(),
                volume_capability: Some(VolumeCapability::default()),
                ..Default::default()
            })
        };
        let ctx = svc.controller_publish_volume(publish(&vol.volume_id)).await.unwrap().into_inner();
        assert_eq!(ctx.publish_context[PUBLISHED_NODE_KEY], "node-a");
        svc.controller_publish_volume(publish(&vol.volume_id)).await.unwrap();
        let meta = driver.store.get(&vol.volume_id).unwrap().unwrap();
        assert_eq!(meta.published_nodes.into_iter().collect::<Vec<_>>(), vec!["node-a".to_string()]);
        let err = svc.controller_publish_volume(publish("vol-missing")).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        let unpublish = || {
            Request::new(ControllerUnpublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                node_id: "node-a".into(),
                ..Default::default()
            })
        };
        svc.controller_unpublish_volume(unpublish()).await.unwrap();
        svc.controller_unpublish_volume(unpublish()).await.unwrap();
        assert!(driver.store.get(&vol.volume_id).unwrap().unwrap().published_nodes.is_empty());
        let delete = || Request::new(DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() });
        svc.delete_volume(delete()).await.unwrap();
        svc.delete_volume(delete()).await.unwrap();
        // Unpublishing a volume that is gone is success, so the attacher can finish.
        svc.controller_unpublish_volume(unpublish()).await.unwrap();
    }
}
