//! The writes of the StatefulSet controller (upstream's
//! `pkg/controller/statefulset/stateful_pod_control.go`): pods and their claims created,
//! updated and deleted through the API, each with the Event upstream records
//! ("create Pod web-0 in StatefulSet web successful").

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tracing::debug;

use super::stateful_set_utils::{self as utils};
use crate::events::{NORMAL, Recorder, WARNING};

/// Why a pod or claim write failed.
#[derive(Debug, thiserror::Error)]
pub enum PodControlError {
    #[error("{verb} Pod {pod} in StatefulSet {set} failed")]
    Pod {
        verb: &'static str,
        pod: String,
        set: String,
        #[source]
        source: kube::Error,
    },
    #[error("{verb} Claim {claim} for Pod {pod} in StatefulSet {set} failed")]
    Claim {
        verb: &'static str,
        claim: String,
        pod: String,
        set: String,
        #[source]
        source: kube::Error,
    },
    #[error("pod {pod} has no ordinal in its name")]
    NoOrdinal { pod: String },
}

/// The Status message of an API error, as upstream puts it in Events.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Pod and claim writes with Events.
#[derive(Clone)]
pub struct StatefulPodControl {
    pub client: Client,
    pub recorder: Recorder,
    pub claims: Store<PersistentVolumeClaim>,
}

impl StatefulPodControl {
    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn claims_api(&self, ns: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn cached_claim(&self, ns: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(ns))
    }

    fn pod_event(&self, verb: &'static str, set: &StatefulSet, pod: &str, err: Option<&kube::Error>) {
        let set_name = set.name_any();
        match err {
            None => {
                let reason = format!("Successful{}", capitalized(verb));
                self.recorder.record(
                    set,
                    NORMAL,
                    &reason,
                    format!("{verb} Pod {pod} in StatefulSet {set_name} successful"),
                );
            }
            Some(e) => {
                let reason = format!("Failed{}", capitalized(verb));
                let msg = format!("{verb} Pod {pod} in StatefulSet {set_name} failed error: {}", api_message(e));
                self.recorder.record(set, WARNING, &reason, msg);
            }
        }
    }

    fn claim_event(&self, verb: &'static str, set: &StatefulSet, pod: &str, claim: &str, err: Option<&kube::Error>) {
        let set_name = set.name_any();
        match err {
            None => {
                let reason = format!("Successful{}", capitalized(verb));
                let msg = format!("{verb} Claim {claim} Pod {pod} in StatefulSet {set_name} success");
                self.recorder.record(set, NORMAL, &reason, msg);
            }
            Some(e) => {
                let reason = format!("Failed{}", capitalized(verb));
                let msg = format!(
                    "{verb} Claim {claim} for Pod {pod} in StatefulSet {set_name} failed error: {}",
                    api_message(e)
                );
                self.recorder.record(set, WARNING, &reason, msg);
            }
        }
    }

    /// Creates the pod's claims that do not exist yet (upstream's
    /// `createPersistentVolumeClaims`); claims are never deleted here.
    pub async fn create_missing_claims(&self, set: &StatefulSet, pod: &Pod) -> Result<(), PodControlError> {
        let pod_name = pod.name_any();
        let ord = utils::ordinal(pod).ok_or_else(|| PodControlError::NoOrdinal { pod: pod_name.clone() })?;
        let ns = set.namespace().unwrap_or_default();
        for (_, mut claim) in utils::claims_for(set, ord) {
            let name = claim.name_any();
            if self.cached_claim(&ns, &name).is_some() {
                continue;
            }
            // A claim made for a set whose claims go with it is owned by the set from birth.
            utils::update_claim_owner_refs(&mut claim, set, pod);
            match self.claims_api(&ns).create(&PostParams::default(), &claim).await {
                Ok(_) => self.claim_event("create", set, &pod_name, &name, None),
                // Made since the cache was filled: it is there, which is all we need.
                Err(e) if is_code(&e, 409) => {}
                Err(source) => {
                    self.claim_event("create", set, &pod_name, &name, Some(&source));
                    return Err(PodControlError::Claim {
                        verb: "create",
                        claim: name,
                        pod: pod_name,
                        set: set.name_any(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether a claim of the pod still belongs to an earlier pod of its name, to be deleted
    /// with it (upstream's `PodClaimIsStale`); the pod must wait for it to go.
    pub fn claim_is_stale(&self, set: &StatefulSet, pod: &Pod) -> bool {
        if utils::retention_policy(set).1 == utils::RETAIN {
            return false;
        }
        let Some(ord) = utils::ordinal(pod) else { return false };
        let ns = set.namespace().unwrap_or_default();
        utils::claims_for(set, ord)
            .iter()
            .filter_map(|(_, c)| self.cached_claim(&ns, &c.name_any()))
            .any(|c| utils::claim_is_stale(&c, pod))
    }

    /// Creates the pod, its claims first (upstream's `CreateStatefulPod`). A pod that exists
    /// already (a cache behind the API) counts as created.
    pub async fn create_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), PodControlError> {
        self.create_missing_claims(set, pod).await?;
        let ns = set.namespace().unwrap_or_default();
        let name = pod.name_any();
        match self.pods(&ns).create(&PostParams::default(), pod).await {
            Ok(_) => {
                self.pod_event("create", set, &name, None);
                Ok(())
            }
            Err(e) if is_code(&e, 409) => {
                debug!(pod = %name, "pod exists already");
                Ok(())
            }
            Err(source) => {
                self.pod_event("create", set, &name, Some(&source));
                Err(PodControlError::Pod { verb: "create", pod: name, set: set.name_any(), source })
            }
        }
    }

    /// Deletes the pod (upstream's `DeleteStatefulPod`); one already gone is no error.
    pub async fn delete_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), PodControlError> {
        let ns = set.namespace().unwrap_or_default();
        let name = pod.name_any();
        let params = DeleteParams { preconditions: None, ..Default::default() };
        match self.pods(&ns).delete(&name, &params).await {
            Ok(_) => {
                self.pod_event("delete", set, &name, None);
                Ok(())
            }
            Err(e) if is_code(&e, 404) => Ok(()),
            Err(source) => {
                self.pod_event("delete", set, &name, Some(&source));
                Err(PodControlError::Pod { verb: "delete", pod: name, set: set.name_any(), source })
            }
        }
    }

    /// Restores the pod's identity and storage and its claims' owner references (upstream's
    /// `UpdateStatefulPod`), re-reading the pod once on a conflict.
    pub async fn update_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), PodControlError> {
        let ns = set.namespace().unwrap_or_default();
        let name = pod.name_any();
        let ord = utils::ordinal(pod).ok_or_else(|| PodControlError::NoOrdinal { pod: name.clone() })?;
        let api = self.pods(&ns);
        let mut current = pod.clone();
        for attempt in 0..2 {
            let mut changed = false;
            if !utils::identity_matches(set, &current) {
                utils::update_identity(set, &mut current, ord);
                changed = true;
            }
            if !utils::storage_matches(set, &current) {
                self.create_missing_claims(set, &current).await?;
                utils::update_storage(set, &mut current, ord);
                changed = true;
            }
            self.update_claims_for_retention(set, &current).await?;
            if !changed {
                return Ok(());
            }
            match api.replace(&name, &PostParams::default(), &current).await {
                Ok(_) => {
                    self.pod_event("update", set, &name, None);
                    return Ok(());
                }
                Err(e) if is_code(&e, 409) && attempt == 0 => {
                    current = match api.get_opt(&name).await {
                        Ok(Some(p)) => p,
                        Ok(None) => return Ok(()),
                        Err(source) => {
                            return Err(PodControlError::Pod {
                                verb: "update",
                                pod: name,
                                set: set.name_any(),
                                source,
                            });
                        }
                    };
                }
                Err(source) => {
                    self.pod_event("update", set, &name, Some(&source));
                    return Err(PodControlError::Pod { verb: "update", pod: name, set: set.name_any(), source });
                }
            }
        }
        Ok(())
    }

    /// Whether the pod's claims carry the owner references the retention policy calls for
    /// (upstream's `ClaimsMatchRetentionPolicy`).
    pub fn claims_match_retention_policy(&self, set: &StatefulSet, pod: &Pod) -> bool {
        let Some(ord) = utils::ordinal(pod) else { return true };
        let ns = set.namespace().unwrap_or_default();
        utils::claims_for(set, ord).iter().all(|(_, c)| match self.cached_claim(&ns, &c.name_any()) {
            Some(claim) => !utils::update_claim_owner_refs(&mut (*claim).clone(), set, pod),
            None => true,
        })
    }

    /// Rewrites the owner references of the pod's existing claims to match the retention
    /// policy (upstream's `UpdatePodClaimForRetentionPolicy`).
    pub async fn update_claims_for_retention(&self, set: &StatefulSet, pod: &Pod) -> Result<(), PodControlError> {
        let Some(ord) = utils::ordinal(pod) else { return Ok(()) };
        let ns = set.namespace().unwrap_or_default();
        for (_, c) in utils::claims_for(set, ord) {
            let Some(cached) = self.cached_claim(&ns, &c.name_any()) else { continue };
            let mut claim = (*cached).clone();
            if !utils::update_claim_owner_refs(&mut claim, set, pod) {
                continue;
            }
            let name = claim.name_any();
            match self.claims_api(&ns).replace(&name, &PostParams::default(), &claim).await {
                Ok(_) => {}
                // Gone, or changed meanwhile: the next sync looks again.
                Err(e) if is_code(&e, 404) => {}
                Err(source) => {
                    self.claim_event("update", set, &pod.name_any(), &name, Some(&source));
                    return Err(PodControlError::Claim {
                        verb: "update",
                        claim: name,
                        pod: pod.name_any(),
                        set: set.name_any(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

fn capitalized(verb: &str) -> String {
    let mut c = verb.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_reasons_are_capitalized_verbs() {
        assert_eq!(super::capitalized("create"), "Create");
        assert_eq!(super::capitalized("delete"), "Delete");
    }
}
