//! The scheduler's configuration file (upstream's `KubeSchedulerConfiguration`,
//! `kubescheduler.config.k8s.io/v1`): profiles, each with its `schedulerName`, plugins enabled
//! or disabled per extension point (or for all through `multiPoint`), score weights, and the
//! `pluginConfig` args of NodeResourcesFit, NodeResourcesBalancedAllocation,
//! PodTopologySpread and InterPodAffinity.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use serde::Deserialize;

use crate::plugins::{interpod_affinity, node_resources, pod_topology_spread};

pub const API_VERSION: &str = "kubescheduler.config.k8s.io/v1";
pub const KIND: &str = "KubeSchedulerConfiguration";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the scheduler configuration {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing the scheduler configuration")]
    Parse { source: serde_yaml::Error },
    #[error("unsupported scheduler configuration {api_version}/{kind}: want {API_VERSION}/{KIND}")]
    Version { api_version: String, kind: String },
    #[error("profile {profile}: unknown plugin {plugin}")]
    UnknownPlugin { profile: String, plugin: String },
    #[error("profile {profile}: invalid args for {plugin}: {reason}")]
    InvalidArgs { profile: String, plugin: &'static str, reason: String },
    #[error("duplicate profile for schedulerName {0}")]
    DuplicateProfile(String),
}

/// One plugin named in a plugin set, with an optional score weight.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct PluginRef {
    pub name: String,
    #[serde(default)]
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct PluginSet {
    #[serde(default)]
    pub enabled: Vec<PluginRef>,
    #[serde(default)]
    pub disabled: Vec<PluginRef>,
}

/// The plugin sets of a profile (only the extension points our framework has).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Plugins {
    #[serde(default)]
    pub multi_point: PluginSet,
    #[serde(default)]
    pub pre_filter: PluginSet,
    #[serde(default)]
    pub filter: PluginSet,
    #[serde(default)]
    pub post_filter: PluginSet,
    #[serde(default)]
    pub pre_score: PluginSet,
    #[serde(default)]
    pub score: PluginSet,
    #[serde(default)]
    pub reserve: PluginSet,
    #[serde(default)]
    pub pre_bind: PluginSet,
    #[serde(default)]
    pub bind: PluginSet,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PluginConfig {
    pub name: String,
    #[serde(default)]
    pub args: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProfile {
    #[serde(default)]
    scheduler_name: Option<String>,
    #[serde(default)]
    plugins: Plugins,
    #[serde(default)]
    plugin_config: Vec<PluginConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    profiles: Vec<RawProfile>,
    #[serde(default)]
    percentage_of_nodes_to_score: Option<i32>,
}

/// The args of the configurable plugins, defaults filled in.
#[derive(Debug, Clone)]
pub struct PluginArgs {
    pub fit_strategy: node_resources::ScoringStrategy,
    pub fit_resources: Vec<node_resources::ResourceSpec>,
    pub balanced_resources: Vec<node_resources::ResourceSpec>,
    pub spread: pod_topology_spread::Args,
    pub inter_pod_affinity: interpod_affinity::Args,
}

impl Default for PluginArgs {
    fn default() -> Self {
        Self {
            fit_strategy: node_resources::ScoringStrategy::LeastAllocated,
            fit_resources: node_resources::default_resources(),
            balanced_resources: node_resources::default_resources(),
            spread: pod_topology_spread::Args::default(),
            inter_pod_affinity: interpod_affinity::Args::default(),
        }
    }
}

/// One profile: the pods with `schedulerName` are scheduled with these plugins.
#[derive(Debug, Clone)]
pub struct Profile {
    pub scheduler_name: String,
    pub plugins: Plugins,
    pub args: PluginArgs,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            scheduler_name: crate::SCHEDULER_NAME.to_string(),
            plugins: Plugins::default(),
            args: PluginArgs::default(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub profiles: Vec<Profile>,
    /// Upstream's share of nodes to find feasible before scoring (`None`: the adaptive default).
    pub percentage_of_nodes_to_score: Option<i32>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { profiles: vec![Profile::default()], percentage_of_nodes_to_score: None }
    }
}

impl SchedulerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|source| ConfigError::Parse { source })?;
        if raw.api_version != API_VERSION || raw.kind != KIND {
            return Err(ConfigError::Version { api_version: raw.api_version, kind: raw.kind });
        }
        let mut profiles = Vec::new();
        for p in raw.profiles {
            let scheduler_name = p.scheduler_name.unwrap_or_else(|| crate::SCHEDULER_NAME.to_string());
            if profiles.iter().any(|q: &Profile| q.scheduler_name == scheduler_name) {
                return Err(ConfigError::DuplicateProfile(scheduler_name));
            }
            let args = plugin_args(&scheduler_name, &p.plugin_config)?;
            let profile = Profile { scheduler_name, plugins: p.plugins, args };
            crate::plugins::check_names(&profile)?;
            profiles.push(profile);
        }
        if profiles.is_empty() {
            profiles.push(Profile::default());
        }
        Ok(Self { profiles, percentage_of_nodes_to_score: raw.percentage_of_nodes_to_score })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResource {
    name: String,
    #[serde(default)]
    weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawShapePoint {
    utilization: i64,
    score: i64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawRatio {
    #[serde(default)]
    shape: Vec<RawShapePoint>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawStrategy {
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    resources: Option<Vec<RawResource>>,
    #[serde(default)]
    requested_to_capacity_ratio: Option<RawRatio>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawFitArgs {
    #[serde(default)]
    scoring_strategy: Option<RawStrategy>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawBalancedArgs {
    #[serde(default)]
    resources: Option<Vec<RawResource>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSpreadArgs {
    #[serde(default)]
    default_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default)]
    defaulting_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawAffinityArgs {
    #[serde(default)]
    hard_pod_affinity_weight: Option<i64>,
    #[serde(default)]
    ignore_preferred_terms_of_existing_pods: bool,
}

fn resources(raw: Vec<RawResource>) -> Vec<node_resources::ResourceSpec> {
    raw.into_iter()
        .map(|r| node_resources::ResourceSpec { name: r.name, weight: r.weight.filter(|w| *w > 0).unwrap_or(1) })
        .collect()
}

fn plugin_args(profile: &str, configs: &[PluginConfig]) -> Result<PluginArgs, ConfigError> {
    let mut args = PluginArgs::default();
    for c in configs {
        let invalid = |plugin: &'static str, reason: String| ConfigError::InvalidArgs {
            profile: profile.to_string(),
            plugin,
            reason,
        };
        let value = if c.args.is_null() { serde_json::json!({}) } else { c.args.clone() };
        match c.name.as_str() {
            node_resources::FIT_NAME => {
                let raw: RawFitArgs =
                    serde_json::from_value(value).map_err(|e| invalid(node_resources::FIT_NAME, e.to_string()))?;
                let strategy = raw.scoring_strategy.unwrap_or_default();
                if let Some(r) = strategy.resources {
                    args.fit_resources = resources(r);
                }
                args.fit_strategy = match strategy.type_.as_deref().unwrap_or("LeastAllocated") {
                    "LeastAllocated" => node_resources::ScoringStrategy::LeastAllocated,
                    "MostAllocated" => node_resources::ScoringStrategy::MostAllocated,
                    "RequestedToCapacityRatio" => {
                        let mut shape: Vec<node_resources::ShapePoint> = strategy
                            .requested_to_capacity_ratio
                            .unwrap_or_default()
                            .shape
                            .into_iter()
                            .map(|p| node_resources::ShapePoint { utilization: p.utilization, score: p.score })
                            .collect();
                        if shape.is_empty()
                            || shape.iter().any(|p| !(0..=100).contains(&p.utilization) || !(0..=10).contains(&p.score))
                        {
                            return Err(invalid(
                                node_resources::FIT_NAME,
                                "requestedToCapacityRatio.shape needs points with utilization 0-100 and score 0-10"
                                    .into(),
                            ));
                        }
                        shape.sort_by_key(|p| p.utilization);
                        node_resources::ScoringStrategy::RequestedToCapacityRatio(shape)
                    }
                    other => {
                        return Err(invalid(node_resources::FIT_NAME, format!("unknown scoringStrategy.type {other}")));
                    }
                };
            }
            node_resources::BALANCED_NAME => {
                let raw: RawBalancedArgs =
                    serde_json::from_value(value).map_err(|e| invalid(node_resources::BALANCED_NAME, e.to_string()))?;
                if let Some(r) = raw.resources {
                    args.balanced_resources = resources(r);
                }
            }
            pod_topology_spread::NAME => {
                let raw: RawSpreadArgs =
                    serde_json::from_value(value).map_err(|e| invalid(pod_topology_spread::NAME, e.to_string()))?;
                let defaulting_type = match raw.defaulting_type.as_deref().unwrap_or("System") {
                    "System" => pod_topology_spread::DefaultingType::System,
                    "List" => pod_topology_spread::DefaultingType::List,
                    other => return Err(invalid(pod_topology_spread::NAME, format!("unknown defaultingType {other}"))),
                };
                if defaulting_type == pod_topology_spread::DefaultingType::System && !raw.default_constraints.is_empty()
                {
                    return Err(invalid(
                        pod_topology_spread::NAME,
                        "defaultConstraints need defaultingType List".into(),
                    ));
                }
                args.spread =
                    pod_topology_spread::Args { default_constraints: raw.default_constraints, defaulting_type };
            }
            interpod_affinity::NAME => {
                let raw: RawAffinityArgs =
                    serde_json::from_value(value).map_err(|e| invalid(interpod_affinity::NAME, e.to_string()))?;
                let weight =
                    raw.hard_pod_affinity_weight.unwrap_or(interpod_affinity::DEFAULT_HARD_POD_AFFINITY_WEIGHT);
                if !(0..=100).contains(&weight) {
                    return Err(invalid(interpod_affinity::NAME, "hardPodAffinityWeight must be in 0-100".into()));
                }
                args.inter_pod_affinity = interpod_affinity::Args {
                    hard_pod_affinity_weight: weight,
                    ignore_preferred_terms_of_existing_pods: raw.ignore_preferred_terms_of_existing_pods,
                };
            }
            // Args of plugins without options here are accepted and ignored, as unknown fields.
            _ => {}
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
percentageOfNodesToScore: 50
profiles:
  - schedulerName: default-scheduler
  - schedulerName: bin-packing
    plugins:
      score:
        disabled:
          - name: NodeResourcesBalancedAllocation
        enabled:
          - name: NodeResourcesFit
            weight: 5
    pluginConfig:
      - name: NodeResourcesFit
        args:
          scoringStrategy:
            type: MostAllocated
            resources:
              - name: cpu
                weight: 2
              - name: memory
      - name: InterPodAffinity
        args:
          hardPodAffinityWeight: 7
      - name: PodTopologySpread
        args:
          defaultingType: List
          defaultConstraints:
            - maxSkew: 1
              topologyKey: topology.kubernetes.io/zone
              whenUnsatisfiable: DoNotSchedule
"#;

    #[test]
    fn parses_profiles_plugins_and_args() {
        let c = SchedulerConfig::parse(CONFIG).unwrap();
        assert_eq!(c.percentage_of_nodes_to_score, Some(50));
        let names: Vec<&str> = c.profiles.iter().map(|p| p.scheduler_name.as_str()).collect();
        assert_eq!(names, vec!["default-scheduler", "bin-packing"]);
        let packing = &c.profiles[1];
        assert_eq!(packing.args.fit_strategy, node_resources::ScoringStrategy::MostAllocated);
        assert_eq!(packing.args.fit_resources[0], node_resources::ResourceSpec { name: "cpu".into(), weight: 2 });
        assert_eq!(packing.args.inter_pod_affinity.hard_pod_affinity_weight, 7);
        assert_eq!(packing.args.spread.defaulting_type, pod_topology_spread::DefaultingType::List);
        assert_eq!(packing.args.spread.default_constraints.len(), 1);
        assert_eq!(packing.plugins.score.disabled[0].name, "NodeResourcesBalancedAllocation");
    }

    #[test]
    fn rejects_other_kinds_unknown_plugins_and_bad_args() {
        assert!(matches!(
            SchedulerConfig::parse("apiVersion: v1\nkind: ConfigMap\n"),
            Err(ConfigError::Version { .. })
        ));
        let unknown = format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nprofiles:\n- plugins:\n    filter:\n      enabled:\n      - name: Nope\n"
        );
        assert!(matches!(SchedulerConfig::parse(&unknown), Err(ConfigError::UnknownPlugin { .. })));
        let bad = format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nprofiles:\n- pluginConfig:\n  - name: NodeResourcesFit\n    args:\n      scoringStrategy:\n        type: Fancy\n"
        );
        assert!(matches!(SchedulerConfig::parse(&bad), Err(ConfigError::InvalidArgs { .. })));
        let dup =
            format!("apiVersion: {API_VERSION}\nkind: {KIND}\nprofiles:\n- schedulerName: a\n- schedulerName: a\n");
        assert!(matches!(SchedulerConfig::parse(&dup), Err(ConfigError::DuplicateProfile(_))));
    }

    #[test]
    fn no_profiles_means_the_default_one() {
        let c = SchedulerConfig::parse(&format!("apiVersion: {API_VERSION}\nkind: {KIND}\n")).unwrap();
        assert_eq!(c.profiles.len(), 1);
        assert_eq!(c.profiles[0].scheduler_name, "default-scheduler");
    }
}
