//! The in-tree plugins, one module per upstream plugin (`pkg/scheduler/framework/plugins/<name>`),
//! and the registry that assembles a profile from them: upstream's default plugins in their
//! order with their default score weights, changed by a configuration's per-profile plugin
//! sets and args ([`crate::config`]).

pub mod default_binder;
pub mod default_preemption;
pub mod image_locality;
pub mod interpod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod taint_toleration;
pub mod volume_binding;

use std::sync::Arc;

use kube::Client;

use crate::config::{ConfigError, PluginSet, Profile};
use crate::framework::{
    BindPlugin, FilterPlugin, Framework, Listers, PostFilterPlugin, PreBindPlugin, PreFilterPlugin, PreScorePlugin,
    ReservePlugin, ScorePlugin, StaticListers,
};

/// Upstream's default score weights (`apis/config/v1/default_plugins.go`).
pub mod weights {
    pub const TAINT_TOLERATION: i64 = 3;
    pub const NODE_AFFINITY: i64 = 2;
    pub const NODE_RESOURCES_FIT: i64 = 1;
    pub const POD_TOPOLOGY_SPREAD: i64 = 2;
    pub const INTER_POD_AFFINITY: i64 = 2;
    pub const NODE_RESOURCES_BALANCED_ALLOCATION: i64 = 1;
    pub const IMAGE_LOCALITY: i64 = 1;
}

/// Upstream's default `multiPoint` plugins, in order, with their score weights (0: no score).
const DEFAULT_PLUGINS: &[(&str, i64)] = &[
    (node_unschedulable::NAME, 0),
    (node_name::NAME, 0),
    (taint_toleration::NAME, weights::TAINT_TOLERATION),
    (node_affinity::NAME, weights::NODE_AFFINITY),
    (node_ports::NAME, 0),
    (node_resources::FIT_NAME, weights::NODE_RESOURCES_FIT),
    (volume_binding::NAME, 0),
    (pod_topology_spread::NAME, weights::POD_TOPOLOGY_SPREAD),
    (interpod_affinity::NAME, weights::INTER_POD_AFFINITY),
    (default_preemption::NAME, 0),
    (node_resources::BALANCED_NAME, weights::NODE_RESOURCES_BALANCED_ALLOCATION),
    (image_locality::NAME, weights::IMAGE_LOCALITY),
    (default_binder::NAME, 0),
];

/// One plugin instance seen through each extension point it implements.
#[derive(Default, Clone)]
struct Entry {
    pre_filter: Option<Arc<dyn PreFilterPlugin>>,
    filter: Option<Arc<dyn FilterPlugin>>,
    post_filter: Option<Arc<dyn PostFilterPlugin>>,
    pre_score: Option<Arc<dyn PreScorePlugin>>,
    score: Option<Arc<dyn ScorePlugin>>,
    reserve: Option<Arc<dyn ReservePlugin>>,
    pre_bind: Option<Arc<dyn PreBindPlugin>>,
    bind: Option<Arc<dyn BindPlugin>>,
}

/// Builds the plugin called `name` for `profile`; `None` if there is no such plugin. The
/// binder needs a client: without one it is left out.
fn instantiate(name: &str, profile: &Profile, listers: &Arc<dyn Listers>, client: Option<&Client>) -> Option<Entry> {
    let args = &profile.args;
    let e = match name {
        node_unschedulable::NAME => {
            let p = Arc::new(node_unschedulable::NodeUnschedulable);
            Entry { filter: Some(p), ..Default::default() }
        }
        node_name::NAME => Entry { filter: Some(Arc::new(node_name::NodeName)), ..Default::default() },
        taint_toleration::NAME => {
            let p = Arc::new(taint_toleration::TaintToleration);
            Entry { filter: Some(p.clone()), pre_score: Some(p.clone()), score: Some(p), ..Default::default() }
        }
        node_affinity::NAME => {
            let p = Arc::new(node_affinity::NodeAffinity);
            Entry {
                pre_filter: Some(p.clone()),
                filter: Some(p.clone()),
                pre_score: Some(p.clone()),
                score: Some(p),
                ..Default::default()
            }
        }
        node_ports::NAME => {
            let p = Arc::new(node_ports::NodePorts);
            Entry { pre_filter: Some(p.clone()), filter: Some(p), ..Default::default() }
        }
        node_resources::FIT_NAME => {
            let p = Arc::new(node_resources::Fit::new(args.fit_strategy.clone(), args.fit_resources.clone()));
            Entry {
                pre_filter: Some(p.clone()),
                filter: Some(p.clone()),
                pre_score: Some(p.clone()),
                score: Some(p),
                ..Default::default()
            }
        }
        pod_topology_spread::NAME => {
            let p = Arc::new(pod_topology_spread::PodTopologySpread::new(args.spread.clone(), listers.clone()));
            Entry {
                pre_filter: Some(p.clone()),
                filter: Some(p.clone()),
                pre_score: Some(p.clone()),
                score: Some(p),
                ..Default::default()
            }
        }
        interpod_affinity::NAME => {
            let p =
                Arc::new(interpod_affinity::InterPodAffinity::new(args.inter_pod_affinity.clone(), listers.clone()));
            Entry {
                pre_filter: Some(p.clone()),
                filter: Some(p.clone()),
                pre_score: Some(p.clone()),
                score: Some(p),
                ..Default::default()
            }
        }
        volume_binding::NAME => {
            // With a client the plugin reads claims, volumes and classes through informers.
            let listers: Arc<dyn volume_binding::VolumeListers> = match client {
                Some(c) => Arc::new(volume_binding::InformerVolumeListers::start(c)),
                None => Arc::new(volume_binding::StaticVolumeListers::default()),
            };
            let p = Arc::new(volume_binding::VolumeBinding::new(listers, client.cloned()));
            Entry {
                pre_filter: Some(p.clone()),
                filter: Some(p.clone()),
                reserve: Some(p.clone()),
                pre_bind: Some(p),
                ..Default::default()
            }
        }
        default_preemption::NAME => Entry {
            post_filter: Some(Arc::new(default_preemption::DefaultPreemption::new(listers.clone()))),
            ..Default::default()
        },
        node_resources::BALANCED_NAME => {
            let p = Arc::new(node_resources::BalancedAllocation::new(args.balanced_resources.clone()));
            Entry { pre_score: Some(p.clone()), score: Some(p), ..Default::default() }
        }
        image_locality::NAME => {
            let p = Arc::new(image_locality::ImageLocality);
            Entry { pre_score: Some(p.clone()), score: Some(p), ..Default::default() }
        }
        default_binder::NAME => Entry {
            bind: client.map(|c| Arc::new(default_binder::DefaultBinder::new(c.clone())) as Arc<dyn BindPlugin>),
            ..Default::default()
        },
        _ => return None,
    };
    Some(e)
}

/// Every plugin name a profile mentions must exist.
pub(crate) fn check_names(profile: &Profile) -> Result<(), ConfigError> {
    let p = &profile.plugins;
    let sets =
        [&p.multi_point, &p.pre_filter, &p.filter, &p.post_filter, &p.pre_score, &p.score, &p.reserve, &p.pre_bind];
    for set in sets.into_iter().chain([&p.bind]) {
        for r in &set.enabled {
            if !DEFAULT_PLUGINS.iter().any(|(n, _)| *n == r.name) {
                return Err(ConfigError::UnknownPlugin {
                    profile: profile.scheduler_name.clone(),
                    plugin: r.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Upstream's `mergePluginSet`: defaults minus the disabled (`*` disables all), a re-enabled
/// default keeps its place with the new weight, other enabled plugins come after.
fn merge(defaults: &[(String, i64)], custom: &PluginSet) -> Vec<(String, i64)> {
    let disabled = |n: &str| custom.disabled.iter().any(|d| d.name == n || d.name == "*");
    let mut out: Vec<(String, i64)> = Vec::new();
    for (name, weight) in defaults {
        if disabled(name) {
            continue;
        }
        let w = custom.enabled.iter().find(|e| e.name == *name).and_then(|e| e.weight).unwrap_or(*weight);
        out.push((name.clone(), w));
    }
    for e in &custom.enabled {
        if !out.iter().any(|(n, _)| *n == e.name) {
            let default_weight = DEFAULT_PLUGINS.iter().find(|(n, _)| *n == e.name).map_or(0, |(_, w)| *w);
            out.push((e.name.clone(), e.weight.unwrap_or(default_weight)));
        }
    }
    out
}

/// The plugins (with weights) at one extension point: those enabled there explicitly that are
/// also multi-point ones first, then the other multi-point ones not disabled there, then the
/// rest enabled there (upstream's order when expanding `multiPoint`).
fn at_point(multi: &[(String, i64)], point: &PluginSet) -> Vec<(String, i64)> {
    let disabled = |n: &str| point.disabled.iter().any(|d| d.name == n || d.name == "*");
    let weight_of = |name: &str, explicit: Option<i64>| {
        explicit.or_else(|| multi.iter().find(|(n, _)| n == name).map(|(_, w)| *w)).unwrap_or(0)
    };
    let mut out: Vec<(String, i64)> = Vec::new();
    for e in point.enabled.iter().filter(|e| multi.iter().any(|(n, _)| *n == e.name)) {
        out.push((e.name.clone(), weight_of(&e.name, e.weight)));
    }
    for (name, weight) in multi {
        if !disabled(name) && !out.iter().any(|(n, _)| n == name) {
            out.push((name.clone(), *weight));
        }
    }
    for e in &point.enabled {
        if !out.iter().any(|(n, _)| *n == e.name) {
            out.push((e.name.clone(), weight_of(&e.name, e.weight)));
        }
    }
    out
}

/// Builds a profile's framework; `client` is for the binder (tests pass none).
pub fn build(profile: &Profile, listers: Arc<dyn Listers>, client: Option<&Client>) -> Framework {
    let defaults: Vec<(String, i64)> = DEFAULT_PLUGINS.iter().map(|(n, w)| (n.to_string(), *w)).collect();
    let multi = merge(&defaults, &profile.plugins.multi_point);
    let mut entries: std::collections::HashMap<String, Entry> = std::collections::HashMap::new();
    let mut entry = |name: &str| -> Option<Entry> {
        if !entries.contains_key(name) {
            let e = instantiate(name, profile, &listers, client)?;
            entries.insert(name.to_string(), e);
        }
        entries.get(name).cloned()
    };
    let p = &profile.plugins;
    let mut fw = Framework::default();
    for (name, _) in at_point(&multi, &p.pre_filter) {
        if let Some(x) = entry(&name).and_then(|e| e.pre_filter) {
            fw.pre_filter.push(x);
        }
    }
    for (name, _) in at_point(&multi, &p.filter) {
        if let Some(x) = entry(&name).and_then(|e| e.filter) {
            fw.filter.push(x);
        }
    }
    for (name, _) in at_point(&multi, &p.post_filter) {
        if let Some(x) = entry(&name).and_then(|e| e.post_filter) {
            fw.post_filter.push(x);
        }
    }
    for (name, _) in at_point(&multi, &p.pre_score) {
        if let Some(x) = entry(&name).and_then(|e| e.pre_score) {
            fw.pre_score.push(x);
        }
    }
    for (name, weight) in at_point(&multi, &p.score) {
        if let Some(x) = entry(&name).and_then(|e| e.score) {
            // Upstream gives a score plugin without a weight the weight 1.
            fw.score.push((x, if weight <= 0 { 1 } else { weight }));
        }
    }
    for (name, _) in at_point(&multi, &p.reserve) {
        if let Some(x) = entry(&name).and_then(|e| e.reserve) {
            fw.reserve.push(x);
        }
    }
    for (name, _) in at_point(&multi, &p.pre_bind) {
        if let Some(x) = entry(&name).and_then(|e| e.pre_bind) {
            fw.pre_bind.push(x);
        }
    }
    for (name, _) in at_point(&multi, &p.bind) {
        if let Some(x) = entry(&name).and_then(|e| e.bind) {
            fw.bind.push(x);
        }
    }
    fw
}

/// The default profile without its binder and with empty listers; tests use it as is.
pub fn default_plugins() -> Framework {
    default_plugins_with(Arc::new(StaticListers::default()))
}

/// The default profile without its binder, reading cluster objects through `listers`.
pub fn default_plugins_with(listers: Arc<dyn Listers>) -> Framework {
    build(&Profile::default(), listers, None)
}

/// The default profile, binding through the API with `client`.
pub fn default_framework(client: Client) -> Framework {
    build(&Profile::default(), Arc::new(StaticListers::default()), Some(&client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SchedulerConfig;

    fn names<T: ?Sized + crate::framework::Plugin>(v: &[Arc<T>]) -> Vec<&'static str> {
        v.iter().map(|p| p.name()).collect()
    }

    #[test]
    fn the_default_profile_has_upstreams_plugins_order_and_weights() {
        let fw = default_plugins();
        assert_eq!(
            names(&fw.filter),
            vec![
                "NodeUnschedulable",
                "NodeName",
                "TaintToleration",
                "NodeAffinity",
                "NodePorts",
                "NodeResourcesFit",
                "VolumeBinding",
                "PodTopologySpread",
                "InterPodAffinity"
            ]
        );
        assert_eq!(
            names(&fw.pre_filter),
            vec![
                "NodeAffinity",
                "NodePorts",
                "NodeResourcesFit",
                "VolumeBinding",
                "PodTopologySpread",
                "InterPodAffinity"
            ]
        );
        let scores: Vec<(&str, i64)> = fw.score.iter().map(|(p, w)| (p.name(), *w)).collect();
        assert_eq!(
            scores,
            vec![
                ("TaintToleration", 3),
                ("NodeAffinity", 2),
                ("NodeResourcesFit", 1),
                ("PodTopologySpread", 2),
                ("InterPodAffinity", 2),
                ("NodeResourcesBalancedAllocation", 1),
                ("ImageLocality", 1)
            ]
        );
        assert_eq!(names(&fw.post_filter), vec!["DefaultPreemption"]);
        assert!(fw.bind.is_empty());
    }

    #[test]
    fn a_profile_disables_and_reweights_plugins_per_extension_point() {
        let c = SchedulerConfig::parse(
            r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
  - schedulerName: packer
    plugins:
      multiPoint:
        disabled:
          - name: ImageLocality
      filter:
        disabled:
          - name: NodePorts
      score:
        disabled:
          - name: "*"
        enabled:
          - name: NodeResourcesFit
            weight: 10
"#,
        )
        .unwrap();
        let fw = build(&c.profiles[0], Arc::new(StaticListers::default()), None);
        assert!(!names(&fw.filter).contains(&"NodePorts"));
        assert!(names(&fw.pre_filter).contains(&"NodePorts"));
        let scores: Vec<(&str, i64)> = fw.score.iter().map(|(p, w)| (p.name(), *w)).collect();
        assert_eq!(scores, vec![("NodeResourcesFit", 10)]);
        assert!(!names(&fw.pre_score).contains(&"ImageLocality"));
    }
}
#[cfg(test)]
pub(crate) mod testing {
    //! Builders shared by the plugins' tests.
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{Value, json};

    use crate::framework::NodeInfo;

    pub fn pod(spec: Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "i"}]);
        }
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "uid": "u1"}, "spec": spec}))
            .unwrap()
    }

    /// A pod whose one container requests `requests`.
    pub fn pod_requesting(requests: Value) -> Pod {
        pod(json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": requests}}]}))
    }

    pub fn node(name: &str, labels: Value, spec: Value, allocatable: Value) -> NodeInfo {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
            "status": {"allocatable": allocatable, "capacity": allocatable},
        }))
        .unwrap();
        NodeInfo::new(Arc::new(n))
    }

    pub fn plain_node(name: &str) -> NodeInfo {
        node(name, json!({}), json!({}), json!({"cpu": "4", "memory": "8Gi", "pods": "110"}))
    }
}
