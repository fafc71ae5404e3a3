//! The node agent's eviction manager (upstream's `pkg/kubelet/eviction`): it keeps the node
//! alive when memory, disk or process ids run short.
//!
//! Every monitoring period ([`eviction_manager`]) it observes the eviction signals against the
//! hard (`--eviction-hard`) and soft (`--eviction-soft`, held for their grace period)
//! thresholds. A threshold met sets the node's MemoryPressure, DiskPressure or PIDPressure
//! condition, which stays until no threshold of it was met for the pressure transition period.
//! When a threshold is met, node-level resources are reclaimed first (dead containers, unused
//! images); if that is not enough, ONE pod is evicted per period, ranked as upstream does
//! ([`helpers`]): stopped, marked `Failed` with reason `Evicted` and upstream's message, and
//! given a `DisruptionTarget` condition. Critical pods are never evicted.
//!
//! Apart from pressure, a pod whose emptyDir volume holds more than its `sizeLimit` is evicted
//! by its pod worker ([`local_storage_violation`]), so that one pod does not fill the disk.

pub mod eviction_manager;
pub mod helpers;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::config::{Config, Signal, Threshold};

/// The pod status reason and event reason of an eviction.
pub const REASON: &str = "Evicted";
/// The condition an evicted pod gets, as upstream (reason `TerminationByKubelet`).
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";
pub const TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";

/// Why the eviction settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EvictionError {
    #[error("grace period must be specified for the soft eviction threshold {signal}")]
    MissingGracePeriod { signal: &'static str },
}

/// One threshold the manager watches (upstream's `evictionapi.Threshold`): a hard one has no
/// grace period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvictionThreshold {
    pub signal: Signal,
    pub value: Threshold,
    pub grace_period: Duration,
    /// How far past the threshold the signal must recover before its pressure is relieved.
    pub min_reclaim: Option<Threshold>,
}

impl EvictionThreshold {
    /// Upstream's `isHardEvictionThreshold`.
    pub fn is_hard(&self) -> bool {
        self.grace_period.is_zero()
    }
}

/// The thresholds of the configuration (upstream's `ParseThresholdConfig`): the hard ones, then
/// the soft ones, each with its grace period and minimum reclaim. A threshold of 0 or 100%
/// watches nothing and is left out, as upstream ignores `0%` and `100%`.
pub fn thresholds(config: &Config) -> Result<Vec<EvictionThreshold>, EvictionError> {
    let eviction = &config.eviction;
    let watches = |value: Threshold| {
        value != Threshold::Bytes(0)
            && value != Threshold::Decimal(0)
            && value != Threshold::Fraction(0.0)
            && value != Threshold::Fraction(1.0)
    };
    let min_reclaim =
        |signal: Signal| eviction.minimum_reclaim.iter().rev().find(|(s, _)| *s == signal).map(|(_, value)| *value);
    let mut thresholds: Vec<EvictionThreshold> = Signal::ALL
        .into_iter()
        .map(|signal| (signal, config.eviction_hard.get(signal)))
        .filter(|(_, value)| watches(*value))
        .map(|(signal, value)| EvictionThreshold { signal, value, grace_period: Duration::ZERO, min_reclaim: None })
        .collect();
    for &(signal, value) in &eviction.soft {
        let grace_period = eviction
            .soft_grace_periods
            .iter()
            .rev()
            .find(|(s, _)| *s == signal)
            .map(|(_, grace)| *grace)
            .ok_or(EvictionError::MissingGracePeriod { signal: signal.as_str() })?;
        if watches(value) {
            thresholds.push(EvictionThreshold { signal, value, grace_period, min_reclaim: None });
        }
    }
    for threshold in &mut thresholds {
        threshold.min_reclaim = min_reclaim(threshold.signal);
    }
    Ok(thresholds)
}

/// What the eviction manager asks a pod's worker to do: stop the pod within `grace_period`
/// and mark it evicted with `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub message: String,
    /// The `Evicted` event's annotations: the offending pod or containers and their usage.
    pub annotations: BTreeMap<String, String>,
    pub grace_period: Duration,
}

/// Why `pod` must be evicted, in upstream's words, if one of its emptyDir volumes holds more
/// than its `sizeLimit`.
pub fn local_storage_violation(config: &Config, pod: &Pod) -> Option<String> {
    let uid = pod.metadata.uid.as_deref()?;
    let volumes = pod.spec.as_ref()?.volumes.as_ref()?;
    volumes.iter().find_map(|volume| {
        let limit = volume.empty_dir.as_ref()?.size_limit.as_ref()?;
        let bytes = tug_api::quantity::parse(&limit.0).filter(|b| *b > 0.0)?;
        let used = helpers::FsUsage::of_tree(&crate::volumemanager::empty_dir_path(config, uid, &volume.name)).bytes;
        (used as f64 > bytes)
            .then(|| format!("Usage of EmptyDir volume {:?} exceeds the limit {:?}. ", volume.name, limit.0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(limit: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": [
                {"name": "scratch", "emptyDir": {"sizeLimit": limit}},
                {"name": "unlimited", "emptyDir": {}},
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn an_empty_dir_over_its_size_limit_evicts_the_pod_with_upstreams_message() {
        let root = tempfile::tempdir().unwrap();
        let config = Config::for_tests(root.path());
        let dir = crate::volumemanager::empty_dir_path(&config, "u1", "scratch");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("small"), vec![1u8; 100 * 1024]).unwrap();
        assert_eq!(local_storage_violation(&config, &pod("1Mi")), None);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub").join("big"), vec![1u8; 2 << 20]).unwrap();
        assert_eq!(
            local_storage_violation(&config, &pod("1Mi")).as_deref(),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
        );
        assert_eq!(local_storage_violation(&config, &pod("10Mi")), None);
    }

    #[test]
    fn thresholds_are_the_hard_ones_then_the_soft_ones_with_grace_periods_and_minimum_reclaims() {
        let root = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(root.path());
        config.eviction_hard = "memory.available<200Mi,imagefs.available<0%".parse().unwrap();
        config.eviction.soft = vec![(Signal::MemoryAvailable, Threshold::Bytes(1 << 30))];
        config.eviction.soft_grace_periods = vec![(Signal::MemoryAvailable, Duration::from_secs(90))];
        config.eviction.minimum_reclaim = vec![(Signal::MemoryAvailable, Threshold::Bytes(50 << 20))];
        let list = thresholds(&config).unwrap();
        let signals: Vec<_> = list.iter().map(|t| t.signal.as_str()).collect();
        assert_eq!(
            signals,
            [
                "memory.available",
                "nodefs.available",
                "nodefs.inodesFree",
                "imagefs.inodesFree",
                "pid.available",
                "memory.available"
            ],
            "imagefs.available<0% watches nothing"
        );
        assert!(list[0].is_hard() && !list[5].is_hard());
        assert_eq!(list[5].grace_period, Duration::from_secs(90));
        assert_eq!(list[0].min_reclaim, Some(Threshold::Bytes(50 << 20)));
        assert_eq!(list[5].min_reclaim, Some(Threshold::Bytes(50 << 20)));
        assert_eq!(list[1].min_reclaim, None);

        config.eviction.soft_grace_periods.clear();
        assert_eq!(
            thresholds(&config).unwrap_err().to_string(),
            "grace period must be specified for the soft eviction threshold memory.available"
        );
    }
}
