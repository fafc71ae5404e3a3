//! The provisioner (kubernetes-csi external-provisioner): a claim the PersistentVolume binder
//! handed to this driver (`volume.kubernetes.io/storage-provisioner`) and that is unbound gets
//! a volume from `CreateVolume` (named `pvc-<claim uid>`, once the scheduler has chosen a node
//! for WaitForFirstConsumer classes) and a PersistentVolume of that name pre-bound to it; the
//! binder completes the binding. The volume keeps [`FINALIZER`] until its storage is deleted:
//! a Released volume with reclaim policy Delete, or one deleted by hand, is `DeleteVolume`d
//! first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeSpec, SecretReference, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::{CSINode, StorageClass, VolumeAttachment};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use tug_api::pv_helpers::{
    self, ANN_BETA_STORAGE_PROVISIONER, ANN_DYNAMICALLY_PROVISIONED, ANN_SELECTED_NODE, ANN_STORAGE_PROVISIONER,
    WAIT_FOR_FIRST_CONSUMER,
};
use tug_api::quantity::Exact;

use super::{Driver, access_mode, cache, capability, read_secret, request, run_controller, status_message};
use crate::v1::{CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, Topology, TopologyRequirement};

/// Held by every volume this provisioner made until its storage is deleted (upstream's, with
/// `HonorPVReclaimPolicy`).
pub const FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// StorageClass parameters with this prefix are for the sidecar, not the driver.
const PARAMETER_PREFIX: &str = "csi.storage.k8s.io/";
const PARAMETER_FS_TYPE: &str = "csi.storage.k8s.io/fstype";
/// Where the provisioner remembers the secret `DeleteVolume` needs.
const ANN_DELETION_SECRET_NAME: &str = "volume.kubernetes.io/provisioner-deletion-secret-name";
const ANN_DELETION_SECRET_NAMESPACE: &str = "volume.kubernetes.io/provisioner-deletion-secret-namespace";

/// Why provisioning or deleting failed; the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storageclass.storage.k8s.io {0:?} not found")]
    ClassNotFound(String),
    #[error("{}", status_message(.0))]
    Driver(tonic::Status),
    #[error("persistentvolume {name} is still attached to node {node}")]
    StillAttached { name: String, node: String },
    #[error("the driver returned no volume")]
    NoVolume,
    /// Worded as upstream's, with the API's message.
    #[error("error getting secret {name} in namespace {namespace}: {}", api_message(.source))]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action} persistentvolume {name}")]
    Volume {
        action: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What the API said, as Go's errors print it (`secrets "x" not found`).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

struct Ctx {
    client: Client,
    driver: Driver,
    timeout: Duration,
    classes: Store<StorageClass>,
    csi_nodes: Store<CSINode>,
    nodes: Store<Node>,
    attachments: Store<VolumeAttachment>,
    recorder: Recorder,
}

impl Ctx {
    async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            debug!(error = %e, reason, "could not write event");
        }
    }
}

/// Runs the provisioner until `shutdown`.
pub async fn run(client: Client, driver: Driver, timeout: Duration, shutdown: CancellationToken) {
    let (classes, classes_cache) = cache(Api::<StorageClass>::all(client.clone()), shutdown.clone());
    let (csi_nodes, csi_nodes_cache) = cache(Api::<CSINode>::all(client.clone()), shutdown.clone());
    let (nodes, nodes_cache) = cache(Api::<Node>::all(client.clone()), shutdown.clone());
    let (attachments, attachments_cache) = cache(Api::<VolumeAttachment>::all(client.clone()), shutdown.clone());
    let reporter = Reporter { controller: driver.name.clone(), instance: None };
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        driver,
        timeout,
        classes,
        csi_nodes,
        nodes,
        attachments,
    });
    let claims = run_controller(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        ctx.clone(),
        "provisioning",
        shutdown.clone(),
        |claim, ctx| async move { sync_claim(&claim, &ctx).await },
    );
    let volumes = run_controller(
        Api::<PersistentVolume>::all(client),
        ctx,
        "deleting a volume",
        shutdown,
        |pv, ctx| async move { sync_volume(&pv, &ctx).await },
    );
    info!("starting csi provisioner");
    tokio::join!(classes_cache, csi_nodes_cache, nodes_cache, attachments_cache, claims, volumes);
}

/// Whether the claim is this driver's to provision now (upstream's `shouldProvision`, minus
/// the class checks).
fn wants_provisioning(claim: &PersistentVolumeClaim, driver: &str) -> bool {
    if claim.metadata.deletion_timestamp.is_some()
        || claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).is_some_and(|v| !v.is_empty())
    {
        return false;
    }
    let annotations = claim.annotations();
    [ANN_STORAGE_PROVISIONER, ANN_BETA_STORAGE_PROVISIONER]
        .iter()
        .any(|a| annotations.get(*a).map(String::as_str) == Some(driver))
}

async fn sync_claim(claim: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, Error> {
    if !wants_provisioning(claim, &ctx.driver.name) {
        return Ok(Action::await_change());
    }
    let _ = ctx.classes.wait_until_ready().await;
    let class_name = pv_helpers::claim_class(claim);
    let Some(class) = ctx.classes.get(&ObjectRef::new(&class_name)) else {
        let e = Error::ClassNotFound(class_name);
        ctx.event(claim, EventType::Warning, "ProvisioningFailed", e.to_string()).await;
        return Err(e);
    };
    if class.provisioner != ctx.driver.name {
        return Ok(Action::await_change());
    }
    let selected = claim.annotations().get(ANN_SELECTED_NODE).cloned();
    if class.volume_binding_mode.as_deref() == Some(WAIT_FOR_FIRST_CONSUMER) && selected.is_none() {
        return Ok(Action::await_change());
    }
    let pv_name = format!("pvc-{}", claim.uid().unwrap_or_default());
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match volumes.get_opt(&pv_name).await {
        Ok(Some(_)) => return Ok(Action::await_change()),
        Ok(None) => {}
        Err(source) => return Err(Error::Volume { action: "reading", name: pv_name, source }),
    }
    let key = format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any());
    ctx.event(
        claim,
        EventType::Normal,
        "Provisioning",
        format!("External provisioner is provisioning volume for claim {key:?}"),
    )
    .await;
    match provision(claim, &class, &pv_name, selected.as_deref(), ctx).await {
        Ok(pv) => {
            match volumes.create(&PostParams::default(), &pv).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(source) => return Err(Error::Volume { action: "creating", name: pv_name, source }),
            }
            info!(claim = %key, volume = %pv_name, "provisioned volume");
            ctx.event(
                claim,
                EventType::Normal,
                "ProvisioningSucceeded",
                format!("Successfully provisioned volume {pv_name}"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => {
            let message = format!("failed to provision volume with StorageClass {:?}: {e}", class.name_any());
            ctx.event(claim, EventType::Warning, "ProvisioningFailed", message).await;
            Err(e)
        }
    }
}

/// Calls `CreateVolume` for the claim and returns the PersistentVolume to create.
async fn provision(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    pv_name: &str,
    selected: Option<&str>,
    ctx: &Ctx,
) -> Result<PersistentVolume, Error> {
    let params = class.parameters.clone().unwrap_or_default();
    let secret_ref = secret_reference(&params, "provisioner", claim, pv_name);
    let secrets = match &secret_ref {
        Some(r) => {
            let (ns, name) = (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default());
            read_secret(&ctx.client, &ns, &name).await.map_err(|source| Error::Secret {
                namespace: ns,
                name,
                source,
            })?
        }
        None => HashMap::new(),
    };
    let requirements = match (selected, ctx.driver.topology) {
        (Some(node), true) => {
            let _ = tokio::join!(ctx.csi_nodes.wait_until_ready(), ctx.nodes.wait_until_ready());
            let nodes: HashMap<String, Arc<Node>> = ctx.nodes.state().into_iter().map(|n| (n.name_any(), n)).collect();
            accessibility_requirements(&ctx.driver.name, node, &ctx.csi_nodes.state(), &nodes)
        }
        _ => None,
    };
    let mut req = create_request(claim, class, pv_name, requirements);
    req.secrets = secrets;
    let response =
        ctx.driver.controller().create_volume(request(req, ctx.timeout)).await.map_err(Error::Driver)?.into_inner();
    let volume = response.volume.ok_or(Error::NoVolume)?;
    let mut pv = volume_for(claim, class, &ctx.driver.name, pv_name, &volume);
    if let Some(r) = secret_ref {
        let annotations = pv.metadata.annotations.get_or_insert_default();
        annotations.insert(ANN_DELETION_SECRET_NAME.into(), r.name.unwrap_or_default());
        annotations.insert(ANN_DELETION_SECRET_NAMESPACE.into(), r.namespace.unwrap_or_default());
    }
    Ok(pv)
}

/// Replaces upstream's template variables in a secret parameter.
fn resolve_template(template: &str, claim: &PersistentVolumeClaim, pv_name: &str) -> String {
    template
        .replace("${pvc.namespace}", &claim.namespace().unwrap_or_default())
        .replace("${pvc.name}", &claim.name_any())
        .replace("${pv.name}", pv_name)
}

/// The secret named by the class parameters `csi.storage.k8s.io/<kind>-secret-name` and
/// `-namespace`, templates resolved.
fn secret_reference(
    params: &BTreeMap<String, String>,
    kind: &str,
    claim: &PersistentVolumeClaim,
    pv_name: &str,
) -> Option<SecretReference> {
    let name = params.get(&format!("{PARAMETER_PREFIX}{kind}-secret-name"))?;
    let namespace = params.get(&format!("{PARAMETER_PREFIX}{kind}-secret-namespace"))?;
    Some(SecretReference {
        name: Some(resolve_template(name, claim, pv_name)),
        namespace: Some(resolve_template(namespace, claim, pv_name)),
    })
}

/// The `CreateVolume` request for a claim (secrets aside).
fn create_request(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    pv_name: &str,
    accessibility_requirements: Option<TopologyRequirement>,
) -> CreateVolumeRequest {
    let spec = claim.spec.clone().unwrap_or_default();
    let params = class.parameters.clone().unwrap_or_default();
    let fs_type = params.get(PARAMETER_FS_TYPE).cloned().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let mount_flags = class.mount_options.clone().unwrap_or_default();
    let volume_capabilities =
        spec.access_modes.iter().flatten().map(|m| capability(access_mode(m), block, &fs_type, &mount_flags)).collect();
    CreateVolumeRequest {
        name: pv_name.to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: pv_helpers::requested_bytes(claim).ceil() as i64,
            limit_bytes: 0,
        }),
        volume_capabilities,
        parameters: params.into_iter().filter(|(k, _)| !k.starts_with(PARAMETER_PREFIX)).collect(),
        accessibility_requirements,
        ..Default::default()
    }
}

/// A byte count as upstream's `resource.NewQuantity(n, BinarySI)` prints it (`1Gi`, `1536Mi`).
fn binary_quantity(bytes: i64) -> Quantity {
    // Parsed from a binary suffix, the quantity prints in binary form, canonicalized; a count
    // that is no multiple of 1024 is the plain number.
    if bytes % 1024 != 0 || bytes == 0 {
        return Quantity(bytes.to_string());
    }
    let text = format!("{}Ki", bytes / 1024);
    Quantity(Exact::parse(&text).map_or(text, |q| q.to_string()))
}

/// The PersistentVolume for a volume the driver created for `claim`.
fn volume_for(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    driver: &str,
    pv_name: &str,
    volume: &crate::v1::Volume,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let params = class.parameters.clone().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let fs_type = params.get(PARAMETER_FS_TYPE).filter(|f| !block && !f.is_empty()).cloned();
    let bytes = if volume.capacity_bytes > 0 {
        volume.capacity_bytes
    } else {
        pv_helpers::requested_bytes(claim).ceil() as i64
    };
    let context: BTreeMap<String, String> = volume.volume_context.clone().into_iter().collect();
    let secret = |kind: &str| secret_reference(&params, kind, claim, pv_name);
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.to_string()),
            annotations: Some(BTreeMap::from([(ANN_DYNAMICALLY_PROVISIONED.to_string(), driver.to_string())])),
            finalizers: Some(vec![FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some(BTreeMap::from([("storage".to_string(), binary_quantity(bytes))])),
            claim_ref: Some(pv_helpers::claim_reference(claim)),
            storage_class_name: Some(class.name_any()),
            persistent_volume_reclaim_policy: Some(class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
            mount_options: class.mount_options.clone(),
            volume_mode: spec.volume_mode.clone(),
            node_affinity: node_affinity(&volume.accessible_topology),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.to_string(),
                volume_handle: volume.volume_id.clone(),
                fs_type,
                volume_attributes: (!context.is_empty()).then_some(context),
                controller_publish_secret_ref: secret("controller-publish"),
                node_stage_secret_ref: secret("node-stage"),
                node_publish_secret_ref: secret("node-publish"),
                controller_expand_secret_ref: secret("controller-expand"),
                node_expand_secret_ref: secret("node-expand"),
                read_only: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The node affinity for a volume's accessible topology (upstream's
/// `GenerateVolumeNodeAffinity`): one term per topology, each segment an `In` requirement.
fn node_affinity(topologies: &[Topology]) -> Option<VolumeNodeAffinity> {
    if topologies.is_empty() {
        return None;
    }
    let terms = topologies
        .iter()
        .map(|t| {
            let segments: BTreeMap<&String, &String> = t.segments.iter().collect();
            NodeSelectorTerm {
                match_expressions: Some(
                    segments
                        .into_iter()
                        .map(|(k, v)| NodeSelectorRequirement {
                            key: k.clone(),
                            operator: "In".into(),
                            values: Some(vec![v.clone()]),
                        })
                        .collect(),
                ),
                match_fields: None,
            }
        })
        .collect();
    Some(VolumeNodeAffinity { required: Some(NodeSelector { node_selector_terms: terms }) })
}

/// The topology segment of `node` for the driver's topology keys, if it has every key.
fn segment(node: &Node, keys: &[String]) -> Option<Topology> {
    let labels = node.labels();
    let segments = keys.iter().map(|k| Some((k.clone(), labels.get(k)?.clone()))).collect::<Option<_>>()?;
    Some(Topology { segments })
}

/// The driver's topology keys on a CSINode.
fn topology_keys<'a>(csi_node: &'a CSINode, driver: &str) -> Option<&'a Vec<String>> {
    csi_node.spec.drivers.iter().find(|d| d.name == driver)?.topology_keys.as_ref().filter(|k| !k.is_empty())
}

/// The accessibility requirements for a volume whose consumer was scheduled to `selected`
/// (upstream's `GenerateAccessibilityRequirements` without strict topology): every segment of
/// the nodes with the driver is requisite, the selected node's preferred first.
fn accessibility_requirements(
    driver: &str,
    selected: &str,
    csi_nodes: &[Arc<CSINode>],
    nodes: &HashMap<String, Arc<Node>>,
) -> Option<TopologyRequirement> {
    let selected_csi = csi_nodes.iter().find(|c| c.name_any() == selected)?;
    let keys = topology_keys(selected_csi, driver)?;
    let first = segment(nodes.get(selected)?, keys)?;
    let mut requisite = vec![first.clone()];
    for csi_node in csi_nodes {
        if topology_keys(csi_node, driver) != Some(keys) {
            continue;
        }
        if let Some(s) = nodes.get(&csi_node.name_any()).and_then(|n| segment(n, keys))
            && !requisite.contains(&s)
        {
            requisite.push(s);
        }
    }
    Some(TopologyRequirement { preferred: requisite.clone(), requisite })
}

/// Deletes the storage of a volume of ours that is to go, then lets the object go.
async fn sync_volume(pv: &PersistentVolume, ctx: &Ctx) -> Result<Action, Error> {
    if pv.annotations().get(ANN_DYNAMICALLY_PROVISIONED) != Some(&ctx.driver.name) {
        return Ok(Action::await_change());
    }
    let spec = pv.spec.clone().unwrap_or_default();
    let delete_policy = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    let has_finalizer = pv.finalizers().iter().any(|f| f == FINALIZER);
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let name = pv.name_any();
    if pv.metadata.deletion_timestamp.is_some() {
        // Deleted by hand: the storage goes too once no claim uses the volume.
        if !has_finalizer || phase == "Bound" {
            return Ok(Action::await_change());
        }
        if delete_policy {
            delete_storage(pv, &spec, ctx).await?;
        }
        remove_finalizer(&api, pv).await?;
        return Ok(Action::await_change());
    }
    if phase != "Released" || !delete_policy {
        return Ok(Action::await_change());
    }
    delete_storage(pv, &spec, ctx).await?;
    if has_finalizer {
        remove_finalizer(&api, pv).await?;
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: pv.uid(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => info!(volume = %name, "deleted volume"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(source) => return Err(Error::Volume { action: "deleting", name, source }),
    }
    Ok(Action::await_change())
}

/// `DeleteVolume` with the secret the volume was provisioned with; `VolumeFailedDelete` on
/// failure, as upstream.
async fn delete_storage(pv: &PersistentVolume, spec: &PersistentVolumeSpec, ctx: &Ctx) -> Result<(), Error> {
    let Some(csi) = &spec.csi else { return Ok(()) };
    // Storage still published to a node is not deleted under it: the detach comes first.
    let _ = ctx.attachments.wait_until_ready().await;
    let name = pv.name_any();
    if let Some(va) =
        ctx.attachments.state().into_iter().find(|va| va.spec.source.persistent_volume_name.as_ref() == Some(&name))
    {
        return Err(Error::StillAttached { name, node: va.spec.node_name.clone() });
    }
    let annotations = pv.annotations();
    let secrets = match (annotations.get(ANN_DELETION_SECRET_NAME), annotations.get(ANN_DELETION_SECRET_NAMESPACE)) {
        (Some(name), Some(ns)) => read_secret(&ctx.client, ns, name).await.map_err(|source| Error::Secret {
            namespace: ns.clone(),
            name: name.clone(),
            source,
        })?,
        _ => HashMap::new(),
    };
    let req = DeleteVolumeRequest { volume_id: csi.volume_handle.clone(), secrets };
    if let Err(status) = ctx.driver.controller().delete_volume(request(req, ctx.timeout)).await {
        let e = Error::Driver(status);
        ctx.event(pv, EventType::Warning, "VolumeFailedDelete", e.to_string()).await;
        return Err(e);
    }
    Ok(())
}

async fn remove_finalizer(api: &Api<PersistentVolume>, pv: &PersistentVolume) -> Result<(), Error> {
    let rest: Vec<&String> = pv.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    // Pinned to the version read, so that a finalizer added meanwhile is not lost.
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": pv.resource_version()}});
    match api.patch(&pv.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Volume { action: "removing the finalizer of", name: pv.name_any(), source }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::v1::volume_capability::{AccessType, access_mode::Mode};

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn claim() -> PersistentVolumeClaim {
        from(json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "u1",
                "annotations": {ANN_STORAGE_PROVISIONER: "d.example", ANN_SELECTED_NODE: "n1"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "resources": {"requests": {"storage": "1Gi"}}}
        }))
    }

    fn class() -> StorageClass {
        from(json!({
            "metadata": {"name": "fast"}, "provisioner": "d.example", "reclaimPolicy": "Retain",
            "mountOptions": ["noatime"],
            "parameters": {"csi.storage.k8s.io/fstype": "xfs", "type": "ssd",
                "csi.storage.k8s.io/provisioner-secret-name": "${pvc.name}-key",
                "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}"}
        }))
    }

    #[test]
    fn only_unbound_claims_handed_to_this_driver_are_provisioned() {
        assert!(wants_provisioning(&claim(), "d.example"));
        assert!(!wants_provisioning(&claim(), "other.example"));
        let mut bound = claim();
        bound.spec.as_mut().unwrap().volume_name = Some("pv".into());
        assert!(!wants_provisioning(&bound, "d.example"));
    }

    #[test]
    fn the_request_carries_size_capabilities_and_the_drivers_parameters_only() {
        let req = create_request(&claim(), &class(), "pvc-u1", None);
        assert_eq!(req.name, "pvc-u1");
        assert_eq!(req.capacity_range.unwrap().required_bytes, 1 << 30);
        assert_eq!(req.parameters, HashMap::from([("type".to_string(), "ssd".to_string())]));
        let cap = &req.volume_capabilities[0];
        assert_eq!(cap.access_mode.unwrap().mode, Mode::SingleNodeWriter as i32);
        let Some(AccessType::Mount(m)) = &cap.access_type else { panic!("a mount capability") };
        assert_eq!((m.fs_type.as_str(), m.mount_flags.clone()), ("xfs", vec!["noatime".to_string()]));
        let secret = secret_reference(&class().parameters.unwrap(), "provisioner", &claim(), "pvc-u1").unwrap();
        assert_eq!((secret.namespace.as_deref(), secret.name.as_deref()), (Some("ns"), Some("data-key")));
    }

    #[test]
    fn the_volume_object_is_prebound_pinned_to_its_topology_and_provisioned_by_the_driver() {
        let volume = crate::v1::Volume {
            capacity_bytes: 1610612736,
            volume_id: "vol-1".into(),
            volume_context: HashMap::from([("k".to_string(), "v".to_string())]),
            content_source: None,
            accessible_topology: vec![Topology { segments: HashMap::from([("zone".to_string(), "a".to_string())]) }],
        };
        let pv = volume_for(&claim(), &class(), "d.example", "pvc-u1", &volume);
        assert_eq!(pv.annotations()[ANN_DYNAMICALLY_PROVISIONED], "d.example");
        assert_eq!(pv.finalizers(), [FINALIZER]);
        let spec = pv.spec.unwrap();
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1536Mi");
        assert_eq!((binary_quantity(1 << 30).0, binary_quantity(1500).0), ("1Gi".to_string(), "1500".to_string()));
        let claim_ref = spec.claim_ref.unwrap();
        assert_eq!((claim_ref.name.as_deref(), claim_ref.uid.as_deref()), (Some("data"), Some("u1")));
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Retain"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.mount_options, Some(vec!["noatime".to_string()]));
        let csi = spec.csi.unwrap();
        assert_eq!(
            (csi.driver.as_str(), csi.volume_handle.as_str(), csi.fs_type.as_deref()),
            ("d.example", "vol-1", Some("xfs"))
        );
        assert_eq!(csi.volume_attributes.unwrap()["k"], "v");
        let term = &spec.node_affinity.unwrap().required.unwrap().node_selector_terms[0];
        let req = &term.match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (req.key.as_str(), req.operator.as_str(), req.values.clone()),
            ("zone", "In", Some(vec!["a".into()]))
        );
    }

    #[test]
    fn the_selected_node_is_the_preferred_topology_and_every_node_of_the_driver_is_requisite() {
        let csi_node = |name: &str| -> Arc<CSINode> {
            Arc::new(from(json!({"metadata": {"name": name},
                "spec": {"drivers": [{"name": "d.example", "nodeID": name, "topologyKeys": ["zone"]}]}})))
        };
        let node = |name: &str, zone: &str| -> (String, Arc<Node>) {
            (name.into(), Arc::new(from(json!({"metadata": {"name": name, "labels": {"zone": zone}}}))))
        };
        let nodes = HashMap::from([node("n1", "a"), node("n2", "b")]);
        let req = accessibility_requirements("d.example", "n2", &[csi_node("n1"), csi_node("n2")], &nodes).unwrap();
        let zones = |t: &[Topology]| t.iter().map(|t| t.segments["zone"].clone()).collect::<Vec<_>>();
        assert_eq!(zones(&req.preferred), ["b", "a"]);
        assert_eq!(zones(&req.requisite), ["b", "a"]);
        assert!(accessibility_requirements("other", "n2", &[csi_node("n2")], &nodes).is_none());
    }
}
