//! The replica calculation (upstream's `replica_calculator.go` and `metrics/utilization.go`):
//! from the pods a scale target selects and their metrics, how many replicas would bring the
//! metric to its target.
//!
//! Everything here is pure: the caller fetches the metrics and lists the pods, and passes the
//! clock, so each rule (tolerance, missing pods, unready pods, CPU initialisation) is tested
//! on its own.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Container, Pod};

use super::metrics::{PodMetric, PodMetricsInfo};

/// Why no replica count could be calculated; messages are upstream's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalcError {
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoMetricsForReadyPods,
    #[error("missing request for {resource} in container {container} of Pod {pod}")]
    MissingRequest { resource: String, container: String, pod: String },
    #[error("missing pod-level request for {resource} in Pod {pod}")]
    MissingPodLevelRequest { resource: String, pod: String },
    #[error("container {container} not found in Pod {pod}")]
    ContainerNotFound { container: String, pod: String },
    #[error("no metrics returned matched known pods")]
    NoMetricsMatchedPods,
}

/// How far the usage ratio may be from 1.0 before the controller acts, below and above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    pub scale_down: f64,
    pub scale_up: f64,
}

impl Tolerances {
    /// The same tolerance both ways (`--horizontal-pod-autoscaler-tolerance`).
    pub fn both(tolerance: f64) -> Self {
        Self { scale_down: tolerance, scale_up: tolerance }
    }

    fn is_within(&self, usage_ratio: f64) -> bool {
        (1.0 - self.scale_down) <= usage_ratio && usage_ratio <= (1.0 + self.scale_up)
    }
}

/// A proposal for a utilisation target: replicas, the current utilisation (percent of request)
/// and the raw average usage (milli-units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtilizationProposal {
    pub replicas: i32,
    pub utilization: i32,
    pub raw_average: i64,
}

/// The calculation's timings (`--horizontal-pod-autoscaler-cpu-initialization-period` and
/// `--horizontal-pod-autoscaler-initial-readiness-delay`).
#[derive(Debug, Clone, Copy)]
pub struct ReplicaCalculator {
    pub cpu_initialization_period: SignedDuration,
    pub delay_of_initial_readiness_status: SignedDuration,
}

impl Default for ReplicaCalculator {
    fn default() -> Self {
        Self {
            cpu_initialization_period: SignedDuration::from_mins(5),
            delay_of_initial_readiness_status: SignedDuration::from_secs(30),
        }
    }
}

/// How the pods fall for one calculation (upstream's `groupPods`).
struct Groups {
    ready_count: usize,
    unready: HashSet<String>,
    missing: HashSet<String>,
    ignored: HashSet<String>,
}

/// A float as an int32, truncated, saturating at the bounds (Go's conversions with upstream's
/// overflow guards).
pub(super) fn saturating_i32(v: f64) -> i32 {
    // `as` saturates (and maps NaN to 0), which is what the guards want.
    v as i32
}

/// `ceil(value)` as an int32.
fn ceil_replicas(value: f64) -> i32 {
    saturating_i32(value.ceil())
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

impl ReplicaCalculator {
    fn group_pods(&self, pods: &[&Pod], metrics: &PodMetricsInfo, resource: &str, now: Timestamp) -> Groups {
        let mut g =
            Groups { ready_count: 0, unready: HashSet::new(), missing: HashSet::new(), ignored: HashSet::new() };
        for pod in pods {
            let name = pod_name(pod);
            if pod.metadata.deletion_timestamp.is_some() || phase(pod) == "Failed" {
                g.ignored.insert(name);
                continue;
            }
            if phase(pod) == "Pending" {
                g.unready.insert(name);
                continue;
            }
            let Some(metric) = metrics.get(&name) else {
                g.missing.insert(name);
                continue;
            };
            if resource == "cpu" && self.cpu_sample_unready(pod, metric, now) {
                g.unready.insert(name);
                continue;
            }
            g.ready_count += 1;
        }
        g
    }

    /// Whether a pod's CPU sample must be left out: the pod is not ready, or it is still
    /// starting and the sample may cover its (CPU-hungry) initialisation.
    fn cpu_sample_unready(&self, pod: &Pod, metric: &PodMetric, now: Timestamp) -> bool {
        let status = pod.status.as_ref();
        let condition = status.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let start = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
        let (Some(condition), Some(start)) = (condition, start) else {
            return true;
        };
        let transition = condition.last_transition_time.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0);
        if start.saturating_add(self.cpu_initialization_period).unwrap_or(Timestamp::MAX) > now {
            condition.status == "False"
                || metric.timestamp < transition.saturating_add(metric.window).unwrap_or(Timestamp::MAX)
        } else {
            condition.status == "False"
                && start.saturating_add(self.delay_of_initial_readiness_status).unwrap_or(Timestamp::MAX) > transition
        }
    }

    /// Groups the pods and drops the samples of ignored and unready pods; fails when no pod or
    /// no sample is left.
    fn ready_metrics(
        &self,
        pods: &[&Pod],
        metrics: &mut PodMetricsInfo,
        resource: &str,
        now: Timestamp,
    ) -> Result<Groups, CalcError> {
        if pods.is_empty() {
            return Err(CalcError::NoPods);
        }
        let g = self.group_pods(pods, metrics, resource, now);
        for name in g.ignored.iter().chain(&g.unready) {
            metrics.remove(name);
        }
        if metrics.is_empty() {
            return Err(CalcError::NoMetricsForReadyPods);
        }
        Ok(g)
    }

    /// Replicas for a utilisation target (percent of the pods' requests), upstream's
    /// `GetResourceReplicas` after the metrics were fetched.
    #[allow(clippy::too_many_arguments)]
    pub fn resource_replicas(
        &self,
        current_replicas: i32,
        target_utilization: i32,
        resource: &str,
        tolerances: Tolerances,
        pods: &[&Pod],
        mut metrics: PodMetricsInfo,
        container: &str,
        now: Timestamp,
    ) -> Result<UtilizationProposal, CalcError> {
        let g = self.ready_metrics(pods, &mut metrics, resource, now)?;
        let requests = calculate_requests(pods, container, resource)?;
        let (usage_ratio, utilization, raw_average) = utilization_ratio(&metrics, &requests, target_utilization)?;
        let proposal = |replicas| UtilizationProposal { replicas, utilization, raw_average };

        let scale_up_with_unready = !g.unready.is_empty() && usage_ratio > 1.0;
        if !scale_up_with_unready && g.missing.is_empty() {
            if tolerances.is_within(usage_ratio) {
                return Ok(proposal(current_replicas));
            }
            return Ok(proposal(ceil_replicas(usage_ratio * g.ready_count as f64)));
        }
        if !g.missing.is_empty() {
            if usage_ratio < 1.0 {
                // On a scale-down, pods without metrics count as using their whole request
                // (or the target, when it is above 100%), so they never push the count down.
                let fallback = i64::from(target_utilization.max(100));
                for name in &g.missing {
                    let value = requests.get(name).copied().unwrap_or(0) * fallback / 100;
                    metrics.insert(name.clone(), PodMetric { value, ..PodMetric::default() });
                }
            } else if usage_ratio > 1.0 {
                // On a scale-up, they count as idle, so they never push it up.
                set_all(&mut metrics, &g.missing, 0);
            }
        }
        if scale_up_with_unready {
            set_all(&mut metrics, &g.unready, 0);
        }
        let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target_utilization)?;
        Ok(proposal(settle(current_replicas, usage_ratio, new_ratio, metrics.len(), tolerances)))
    }

    /// Replicas for an average-value target (resource `AverageValue`, or a pods metric),
    /// upstream's `calcPlainMetricReplicas`; returns the replicas and the average usage.
    #[allow(clippy::too_many_arguments)]
    pub fn plain_metric_replicas(
        &self,
        mut metrics: PodMetricsInfo,
        current_replicas: i32,
        target_usage: i64,
        tolerances: Tolerances,
        pods: &[&Pod],
        resource: &str,
        now: Timestamp,
    ) -> Result<(i32, i64), CalcError> {
        let g = self.ready_metrics(pods, &mut metrics, resource, now)?;
        let (usage_ratio, usage) = metric_usage_ratio(&metrics, target_usage);
        let scale_up_with_unready = !g.unready.is_empty() && usage_ratio > 1.0;
        if !scale_up_with_unready && g.missing.is_empty() {
            if tolerances.is_within(usage_ratio) {
                return Ok((current_replicas, usage));
            }
            return Ok((ceil_replicas(usage_ratio * g.ready_count as f64), usage));
        }
        if !g.missing.is_empty() {
            // Missing pods count as exactly on target when scaling down, idle when scaling up.
            let value = if usage_ratio < 1.0 { Some(target_usage) } else { (usage_ratio > 1.0).then_some(0) };
            if let Some(value) = value {
                set_all(&mut metrics, &g.missing, value);
            }
        }
        if scale_up_with_unready {
            set_all(&mut metrics, &g.unready, 0);
        }
        let (new_ratio, _) = metric_usage_ratio(&metrics, target_usage);
        Ok((settle(current_replicas, usage_ratio, new_ratio, metrics.len(), tolerances), usage))
    }

    /// Replicas from a ratio for the whole target (object and external value targets),
    /// upstream's `getUsageRatioReplicaCount`; a target at zero replicas scales by the ratio
    /// alone.
    pub fn usage_ratio_replica_count(
        current_replicas: i32,
        usage_ratio: f64,
        tolerances: Tolerances,
        pods: &[&Pod],
    ) -> Result<i32, CalcError> {
        if current_replicas == 0 {
            return Ok(ceil_replicas(usage_ratio));
        }
        if tolerances.is_within(usage_ratio) {
            return Ok(current_replicas);
        }
        if pods.is_empty() {
            return Err(CalcError::NoPods);
        }
        let ready = pods.iter().filter(|p| phase(p) == "Running" && crate::replicaset::ranking::is_ready(p)).count();
        Ok(ceil_replicas(usage_ratio * ready as f64))
    }

    /// Replicas for a per-pod average of a whole-target value (object and external
    /// `AverageValue` targets), upstream's `Get{Object,External}PerPodMetricReplicas`;
    /// returns the replicas and the per-pod usage.
    pub fn per_pod_replicas(
        status_replicas: i32,
        usage: i64,
        target_average: i64,
        tolerances: Tolerances,
    ) -> (i32, i64) {
        let mut replicas = status_replicas;
        let ratio = usage as f64 / (target_average as f64 * f64::from(replicas));
        if !tolerances.is_within(ratio) {
            replicas = ceil_replicas(usage as f64 / target_average as f64);
        }
        let per_pod =
            if status_replicas == 0 { i64::MAX } else { (usage as f64 / f64::from(status_replicas)).ceil() as i64 };
        (replicas, per_pod)
    }
}

/// Gives each of `pods` the sample `value`.
fn set_all(metrics: &mut PodMetricsInfo, pods: &HashSet<String>, value: i64) {
    for name in pods {
        metrics.insert(name.clone(), PodMetric { value, ..PodMetric::default() });
    }
}

/// The second pass's answer: keep the current count when the filled-in ratio is within
/// tolerance or would reverse the direction of the first pass, else scale by it.
fn settle(current: i32, usage_ratio: f64, new_ratio: f64, counted: usize, tolerances: Tolerances) -> i32 {
    if tolerances.is_within(new_ratio)
        || (usage_ratio < 1.0 && new_ratio > 1.0)
        || (usage_ratio > 1.0 && new_ratio < 1.0)
    {
        return current;
    }
    let replicas = ceil_replicas(new_ratio * counted as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return current;
    }
    replicas
}

/// Upstream's `GetResourceUtilizationRatio`: the ratio of utilisation to target, the
/// utilisation in whole percent (truncated, as upstream) and the average raw usage.
pub fn utilization_ratio(
    metrics: &PodMetricsInfo,
    requests: &HashMap<String, i64>,
    target_utilization: i32,
) -> Result<(f64, i32, i64), CalcError> {
    let (mut metrics_total, mut requests_total, mut entries) = (0i64, 0i64, 0i64);
    for (name, metric) in metrics {
        // Metrics of pods without a known request are extraneous: missing requests are
        // reported elsewhere.
        let Some(request) = requests.get(name) else { continue };
        metrics_total = metrics_total.saturating_add(metric.value);
        requests_total = requests_total.saturating_add(*request);
        entries += 1;
    }
    if requests_total == 0 {
        return Err(CalcError::NoMetricsMatchedPods);
    }
    let utilization = i32::try_from(metrics_total.saturating_mul(100) / requests_total).unwrap_or(i32::MAX);
    Ok((f64::from(utilization) / f64::from(target_utilization), utilization, metrics_total / entries))
}

/// Upstream's `GetMetricUsageRatio`: the average usage and its ratio to the target.
fn metric_usage_ratio(metrics: &PodMetricsInfo, target_usage: i64) -> (f64, i64) {
    let total: i64 = metrics.values().fold(0i64, |acc, m| acc.saturating_add(m.value));
    let current = total / i64::try_from(metrics.len()).unwrap_or(i64::MAX).max(1);
    (current as f64 / target_usage as f64, current)
}

fn request_milli(c: &Container, resource: &str) -> Option<i64> {
    let q = c.resources.as_ref()?.requests.as_ref()?.get(resource)?;
    let exact = tug_api::quantity::Exact::parse(&q.0)?;
    Some(i64::try_from(exact.milli_value()).unwrap_or(i64::MAX))
}

/// Each pod's request of `resource` in milli-units (upstream's `calculateRequests`): the named
/// container's, else the pod-level request when the pod sets one, else the sum over its
/// containers and restartable init containers (sidecars).
pub fn calculate_requests(pods: &[&Pod], container: &str, resource: &str) -> Result<HashMap<String, i64>, CalcError> {
    let mut requests = HashMap::with_capacity(pods.len());
    for pod in pods {
        let name = pod_name(pod);
        let Some(spec) = pod.spec.as_ref() else {
            requests.insert(name, 0);
            continue;
        };
        let pod_level = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).filter(|r| !r.is_empty());
        if container.is_empty()
            && let Some(pod_requests) = pod_level
        {
            let value = pod_requests
                .get(resource)
                .and_then(|q| tug_api::quantity::Exact::parse(&q.0))
                .map(|e| i64::try_from(e.milli_value()).unwrap_or(i64::MAX))
                .ok_or_else(|| CalcError::MissingPodLevelRequest { resource: resource.into(), pod: name.clone() })?;
            requests.insert(name, value);
            continue;
        }
        let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let mut total = 0i64;
        let mut found = false;
        for c in spec.containers.iter().chain(sidecars) {
            if container.is_empty() || container == c.name {
                let value = request_milli(c, resource).ok_or_else(|| CalcError::MissingRequest {
                    resource: resource.into(),
                    container: c.name.clone(),
                    pod: name.clone(),
                })?;
                total = total.saturating_add(value);
            }
            if container == c.name {
                found = true;
                break;
            }
        }
        if !container.is_empty() && !found {
            return Err(CalcError::ContainerNotFound { container: container.into(), pod: name });
        }
        requests.insert(name, total);
    }
    Ok(requests)
}

#[cfg(test)]
#[path = "replica_calculator_tests.rs"]
mod tests;
