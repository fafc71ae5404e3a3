//! InterPodAffinity: places a pod relative to the pods already running, per topology domain
//! (a node label's value). Its Filter enforces required affinity and anti-affinity, and the
//! symmetric rule that a pod may not go where an existing pod's required anti-affinity
//! forbids it; its Score adds the weights of preferred terms, of the pod's and (symmetrically)
//! of existing pods', with existing pods' required affinity counting `hardPodAffinityWeight`.

mod filtering;
mod scoring;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use tug_api::selector::LabelSelector;

use crate::framework::{Listers, Plugin, has_pod_affinity, has_required_anti_affinity};

pub const NAME: &str = "InterPodAffinity";
/// Upstream's default `hardPodAffinityWeight`.
pub const DEFAULT_HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Upstream's `InterPodAffinityArgs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub hard_pod_affinity_weight: i64,
    pub ignore_preferred_terms_of_existing_pods: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            hard_pod_affinity_weight: DEFAULT_HARD_POD_AFFINITY_WEIGHT,
            ignore_preferred_terms_of_existing_pods: false,
        }
    }
}

pub struct InterPodAffinity {
    args: Args,
    listers: Arc<dyn Listers>,
}

impl InterPodAffinity {
    pub fn new(args: Args, listers: Arc<dyn Listers>) -> Self {
        Self { args, listers }
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// One pod (anti-)affinity term, parsed (upstream's `framework.AffinityTerm`).
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    namespaces: HashSet<String>,
    namespace_selector: LabelSelector,
    selector: LabelSelector,
    pub topology_key: String,
    pub weight: i64,
}

impl AffinityTerm {
    /// Parses `term` of a pod in `namespace`: with neither namespaces nor a namespace selector
    /// it means the pod's own namespace; an absent label selector selects nothing.
    pub fn new(term: &PodAffinityTerm, namespace: &str, weight: i64) -> Self {
        let mut namespaces: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.insert(namespace.to_string());
        }
        let parse = |s: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
            s.map_or_else(LabelSelector::nothing, |s| {
                LabelSelector::from_label_selector(s).unwrap_or_else(|_| LabelSelector::nothing())
            })
        };
        Self {
            namespaces,
            namespace_selector: parse(term.namespace_selector.as_ref()),
            selector: parse(term.label_selector.as_ref()),
            topology_key: term.topology_key.clone(),
            weight,
        }
    }

    /// Whether `pod` (whose namespace has `ns_labels`) is one the term is about.
    pub fn matches(&self, pod: &Pod, ns_labels: &BTreeMap<String, String>) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let in_namespace = self.namespaces.contains(ns) || self.namespace_selector.matches_map(ns_labels);
        in_namespace && self.selector.matches_map(pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
    }
}

/// A pod's terms, parsed once.
#[derive(Debug, Clone, Default)]
pub struct PodTerms {
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<AffinityTerm>,
    pub preferred_anti_affinity: Vec<AffinityTerm>,
}

impl PodTerms {
    pub fn of(pod: &Pod) -> Self {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms.into_iter().flatten().map(|t| AffinityTerm::new(t, ns, 1)).collect()
        };
        let preferred = |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            terms
                .into_iter()
                .flatten()
                .filter(|w| w.weight != 0)
                .map(|w| AffinityTerm::new(&w.pod_affinity_term, ns, i64::from(w.weight)))
                .collect::<Vec<_>>()
        };
        Self {
            required_affinity: required(
                pa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
            ),
            required_anti_affinity: required(
                paa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
            ),
            preferred_affinity: preferred(
                pa.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
            ),
            preferred_anti_affinity: preferred(
                paa.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
            ),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty()
    }
}

/// Whether the pod has any pod affinity or anti-affinity at all (upstream's
/// `PodsWithAffinity` / `PodsWithRequiredAntiAffinity` lists in `NodeInfo`).
/// Namespace labels looked up once per cycle.
struct NamespaceLabels<'a> {
    listers: &'a dyn Listers,
    cache: HashMap<String, BTreeMap<String, String>>,
}

impl<'a> NamespaceLabels<'a> {
    fn new(listers: &'a dyn Listers) -> Self {
        Self { listers, cache: HashMap::new() }
    }

    fn of(&mut self, pod: &Pod) -> &BTreeMap<String, String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let listers = self.listers;
        self.cache.entry(ns).or_insert_with_key(|ns| listers.namespace_labels(ns).unwrap_or_default())
    }
}

/// A topology domain: a label key and its value on a node.
type TopologyPair = (String, String);

#[cfg(test)]
mod tests;
