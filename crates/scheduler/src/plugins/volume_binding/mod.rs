//! VolumeBinding (upstream's `plugins/volumebinding`): places a pod only where its
//! PersistentVolumeClaims can be served, and binds or provisions their volumes there before the
//! pod is bound.
//!
//! - PreFilter sorts the pod's claims: bound ones, unbound ones whose class waits for the first
//!   consumer (WaitForFirstConsumer), and unbound immediate ones (the pod waits for the
//!   PersistentVolume controller to bind those).
//! - Filter: a bound claim's volume must accept the node (its node affinity); each delayed
//!   claim needs an available volume the node can use, or a class that can provision there.
//! - Reserve keeps the volumes chosen for the pod from the next pods' choices.
//! - PreBind writes the choice: a static volume gets the claim in its claimRef (the controller
//!   finishes the binding); a claim to provision gets `volume.kubernetes.io/selected-node`
//!   (its provisioner creates the volume). It then waits, bounded, until every claim is bound.

mod listers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info};
use tug_api::pv_helpers::{self, ANN_BOUND_BY_CONTROLLER, ANN_SELECTED_NODE, WAIT_FOR_FIRST_CONSUMER};

pub use listers::{InformerVolumeListers, StaticVolumeListers, VolumeListers, watch_for_requeue};

use crate::framework::{
    Code, CycleState, FilterPlugin, NodeInfo, Plugin, PreBindPlugin, PreFilterPlugin, ReservePlugin, Status,
};
use crate::plugins::node_affinity::term_matches;

pub const NAME: &str = "VolumeBinding";

pub const ERR_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
pub const ERR_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const ERR_BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const ERR_PV_NOT_EXIST: &str = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";

/// How long PreBind waits for the claims to become bound (upstream's `bindTimeout` is ten
/// minutes; a shorter wait sends the pod back to the queue sooner when a provisioner is gone).
const BIND_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);

/// The pod's claims, sorted by PreFilter.
#[derive(Default, Clone)]
struct PodClaims {
    bound: Vec<Arc<PersistentVolumeClaim>>,
    delayed: Vec<Arc<PersistentVolumeClaim>>,
}

/// What a node needs done for the pod's delayed claims: static volumes to bind (claim key,
/// volume name) and claims to provision.
#[derive(Default, Clone, Debug, PartialEq)]
struct Decisions {
    bind: Vec<(Arc<PersistentVolumeClaim>, String)>,
    provision: Vec<Arc<PersistentVolumeClaim>>,
}

/// The cycle's state: the sorted claims and, per feasible node, the decisions Filter made.
struct State {
    claims: PodClaims,
    by_node: Mutex<HashMap<String, Decisions>>,
    chosen: Mutex<Option<Decisions>>,
}

pub struct VolumeBinding {
    listers: Arc<dyn VolumeListers>,
    client: Option<Client>,
    /// Volumes chosen for pods being bound, not to be chosen again meanwhile.
    assumed: Mutex<HashMap<String, String>>,
}

impl VolumeBinding {
    pub fn new(listers: Arc<dyn VolumeListers>, client: Option<Client>) -> Self {
        Self { listers, client, assumed: Mutex::new(HashMap::new()) }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The claim names a pod's volumes use: `persistentVolumeClaim`s and the ephemeral volumes'
/// `<pod>-<volume>` claims (with whether they are ephemeral).
fn claim_names(pod: &Pod) -> Vec<(String, bool)> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    volumes
        .into_iter()
        .flatten()
        .filter_map(|v| match (&v.persistent_volume_claim, &v.ephemeral) {
            (Some(c), _) => Some((c.claim_name.clone(), false)),
            (None, Some(_)) => Some((format!("{}-{}", pod.name_any(), v.name), true)),
            _ => None,
        })
        .collect()
}

/// Whether a volume's node affinity accepts the node.
fn volume_fits_node(volume: &PersistentVolume, node: &NodeInfo) -> bool {
    let Some(required) = volume.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let labels: BTreeMap<String, String> = node.node.metadata.labels.clone().unwrap_or_default();
    required.node_selector_terms.iter().any(|t| term_matches(t, &labels, node.name()))
}

fn is_bound(claim: &PersistentVolumeClaim) -> bool {
    claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).is_some_and(|n| !n.is_empty())
}

impl Plugin for VolumeBinding {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl PreFilterPlugin for VolumeBinding {
    fn pre_filter(&self, state: &mut CycleState, pod: &Pod, _nodes: &[NodeInfo]) -> Status {
        let names = claim_names(pod);
        if names.is_empty() {
            return Status::skip();
        }
        let ns = pod.namespace().unwrap_or_default();
        let mut claims = PodClaims::default();
        let mut unbound_immediate = false;
        for (name, ephemeral) in names {
            let Some(claim) = self.listers.claim(&ns, &name) else {
                // Right after a pod with ephemeral volumes is created this is normal.
                let reason = if ephemeral {
                    format!("waiting for ephemeral volume controller to create the persistentvolumeclaim \"{name}\"")
                } else {
                    format!("persistentvolumeclaim \"{name}\" not found")
                };
                return Status::new(Code::UnschedulableAndUnresolvable, reason);
            };
            if claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost") {
                let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
                return Status::new(
                    Code::UnschedulableAndUnresolvable,
                    format!("persistentvolumeclaim \"{name}\" bound to non-existent persistentvolume \"{volume}\""),
                );
            }
            if claim.metadata.deletion_timestamp.is_some() {
                return Status::new(
                    Code::UnschedulableAndUnresolvable,
                    format!("persistentvolumeclaim \"{name}\" is being deleted"),
                );
            }
            if ephemeral
                && !claim
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && Some(&o.uid) == pod.uid().as_ref())
            {
                return Status::new(
                    Code::UnschedulableAndUnresolvable,
                    format!("PVC {ns}/{name} was not created for pod {} (pod is not owner)", pod_key(pod)),
                );
            }
            if is_bound(&claim) {
                claims.bound.push(claim);
                continue;
            }
            let class = pv_helpers::claim_class(&claim);
            let delayed = !class.is_empty()
                && self
                    .listers
                    .class(&class)
                    .is_some_and(|c| c.volume_binding_mode.as_deref() == Some(WAIT_FOR_FIRST_CONSUMER));
            if delayed {
                claims.delayed.push(claim);
            } else {
                unbound_immediate = true;
            }
        }
        if unbound_immediate {
            return Status::new(Code::UnschedulableAndUnresolvable, ERR_UNBOUND_IMMEDIATE);
        }
        state.write(NAME, State { claims, by_node: Mutex::new(HashMap::new()), chosen: Mutex::new(None) });
        Status::success()
    }
}

impl VolumeBinding {
    /// Upstream's `FindPodVolumes` for one node.
    fn find_pod_volumes(&self, claims: &PodClaims, node: &NodeInfo) -> Result<Decisions, &'static str> {
        for claim in &claims.bound {
            let name = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
            let Some(volume) = self.listers.volume(&name) else { return Err(ERR_PV_NOT_EXIST) };
            if !volume_fits_node(&volume, node) {
                return Err(ERR_NODE_CONFLICT);
            }
        }
        let volumes = self.listers.volumes();
        let assumed: HashSet<String> = lock(&self.assumed).keys().cloned().collect();
        let mut decisions = Decisions::default();
        let fits: &dyn Fn(&PersistentVolume) -> bool = &|v| volume_fits_node(v, node);
        for claim in &claims.delayed {
            // A claim already given a node waits for its provisioner there.
            if let Some(selected) = claim.annotations().get(ANN_SELECTED_NODE) {
                if selected != node.name() {
                    return Err(ERR_BIND_CONFLICT);
                }
                decisions.provision.push(claim.clone());
                continue;
            }
            let taken: HashSet<&str> = decisions.bind.iter().map(|(_, v)| v.as_str()).collect();
            let excluded = |v: &PersistentVolume| {
                let n = v.name_any();
                assumed.contains(&n) || taken.contains(n.as_str())
            };
            let found =
                pv_helpers::find_matching_volume(claim, volumes.iter().map(|v| &**v), Some(fits), &excluded, true);
            if let Some(volume) = found {
                decisions.bind.push((claim.clone(), volume.name_any()));
                continue;
            }
            // Upstream checks the class's allowedTopologies and, for CSI drivers, capacity;
            // a class with a provisioner and no topology limit can provision anywhere.
            let class = self.listers.class(&pv_helpers::claim_class(claim));
            let provisionable = class.is_some_and(|c| {
                c.provisioner != "kubernetes.io/no-provisioner" && allowed_on(&c.allowed_topologies, node)
            });
            if !provisionable {
                return Err(ERR_BIND_CONFLICT);
            }
            decisions.provision.push(claim.clone());
        }
        Ok(decisions)
    }
}

fn allowed_on(topologies: &Option<Vec<k8s_openapi::api::core::v1::TopologySelectorTerm>>, node: &NodeInfo) -> bool {
    let Some(terms) = topologies.as_ref().filter(|t| !t.is_empty()) else { return true };
    let labels = node.node.metadata.labels.clone().unwrap_or_default();
    terms.iter().any(|t| {
        t.match_label_expressions.iter().flatten().all(|e| labels.get(&e.key).is_some_and(|v| e.values.contains(v)))
    })
}

impl FilterPlugin for VolumeBinding {
    fn filter(&self, state: &CycleState, _pod: &Pod, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<State>(NAME) else { return Status::success() };
        match self.find_pod_volumes(&s.claims, node) {
            Ok(d) => {
                lock(&s.by_node).insert(node.name().to_string(), d);
                Status::success()
            }
            Err(reason) => Status::new(Code::UnschedulableAndUnresolvable, reason),
        }
    }
}

impl ReservePlugin for VolumeBinding {
    fn reserve(&self, state: &mut CycleState, pod: &Pod, node: &str) -> Status {
        let Some(s) = state.read::<State>(NAME) else { return Status::success() };
        let decisions = lock(&s.by_node).get(node).cloned().unwrap_or_default();
        let key = pod_key(pod);
        let mut assumed = lock(&self.assumed);
        for (_, v) in &decisions.bind {
            assumed.insert(v.clone(), key.clone());
        }
        *lock(&s.chosen) = Some(decisions);
        Status::success()
    }

    fn unreserve(&self, state: &mut CycleState, pod: &Pod, _node: &str) {
        let key = pod_key(pod);
        lock(&self.assumed).retain(|_, p| *p != key);
        if let Some(s) = state.read::<State>(NAME) {
            *lock(&s.chosen) = None;
        }
    }
}

#[async_trait::async_trait]
impl PreBindPlugin for VolumeBinding {
    async fn pre_bind(&self, state: &CycleState, pod: &Pod, node: &str) -> Status {
        let Some(s) = state.read::<State>(NAME) else { return Status::skip() };
        let Some(client) = &self.client else { return Status::skip() };
        let decisions = lock(&s.chosen).clone().unwrap_or_default();
        let all: Vec<Arc<PersistentVolumeClaim>> = s.claims.delayed.clone();
        let result = self.bind_and_wait(client, &decisions, &all, node).await;
        let key = pod_key(pod);
        lock(&self.assumed).retain(|_, p| *p != key);
        match result {
            Ok(()) => Status::success(),
            Err(e) => Status::error(e),
        }
    }
}

impl VolumeBinding {
    /// Upstream's `BindPodVolumes`: the API writes, then the wait for every claim to be bound.
    async fn bind_and_wait(
        &self,
        client: &Client,
        decisions: &Decisions,
        claims: &[Arc<PersistentVolumeClaim>],
        node: &str,
    ) -> Result<(), String> {
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        for (claim, volume_name) in &decisions.bind {
            let mut volume =
                volumes.get(volume_name).await.map_err(|e| format!("reading volume {volume_name}: {e}"))?;
            if volume.spec.as_ref().is_some_and(|s| s.claim_ref.is_some()) {
                return Err(format!("volume {volume_name} was claimed meanwhile"));
            }
            volume.metadata.annotations.get_or_insert_default().insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
            volume.spec.get_or_insert_default().claim_ref = Some(pv_helpers::claim_reference(claim));
            volumes
                .replace(volume_name, &PostParams::default(), &volume)
                .await
                .map_err(|e| format!("binding volume {volume_name}: {e}"))?;
            debug!(volume = %volume_name, claim = %claim.name_any(), "volume assumed for claim");
        }
        for claim in &decisions.provision {
            if claim.annotations().get(ANN_SELECTED_NODE).map(String::as_str) == Some(node) {
                continue;
            }
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &claim.namespace().unwrap_or_default());
            let patch = json!({"metadata": {"annotations": {ANN_SELECTED_NODE: node}}});
            api.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| format!("selecting node for claim {}: {e}", claim.name_any()))?;
            info!(claim = %claim.name_any(), node, "claim waits for provisioning on the node");
        }
        let deadline = tokio::time::Instant::now() + BIND_TIMEOUT;
        for claim in claims {
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &claim.namespace().unwrap_or_default());
            loop {
                let current = api.get_opt(&claim.name_any()).await.map_err(|e| format!("reading claim: {e}"))?;
                let Some(current) = current else {
                    return Err(format!("persistentvolumeclaim \"{}\" not found", claim.name_any()));
                };
                if current.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") && is_bound(&current) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("binding volumes: context deadline exceeded (claim {})", claim.name_any()));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
