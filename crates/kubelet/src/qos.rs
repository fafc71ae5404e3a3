//! Quality-of-service classes and what follows from them: the pod's cgroup parent, pod-level
//! cgroup limits and containers' OOM score adjustments (upstream's `pkg/apis/core/v1/helper/qos`,
//! `pkg/kubelet/cm/qos_container_manager` and `pkg/kubelet/qos/policy.go`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The cgroup every pod cgroup lives under.
pub const KUBEPODS: &str = "/kubepods";
pub const BURSTABLE: &str = "/kubepods/burstable";
pub const BESTEFFORT: &str = "/kubepods/besteffort";

/// Upstream's `guaranteedOOMScoreAdj`.
const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
/// Upstream's `besteffortOOMScoreAdj`.
const BESTEFFORT_OOM_SCORE_ADJ: i32 = 1000;
/// The least cpu.shares the kernel accepts (upstream's `MinShares`).
const MIN_SHARES: u64 = 2;
const SHARES_PER_CPU: i64 = 1024;
/// The CFS period upstream uses (100 ms, in microseconds).
pub const QUOTA_PERIOD: u64 = 100_000;
/// The smallest quota upstream writes (`MinQuotaPeriod`, 1 ms).
const MIN_QUOTA: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// The resources QoS looks at (upstream's `supportedQoSComputeResources`).
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

fn nonzero(q: &Quantity) -> bool {
    tug_api::quantity::parse(&q.0).is_some_and(|v| v != 0.0)
}

/// The pod's QoS class as upstream's `GetPodQOS` computes it (`status.qosClass` wins when the
/// API already set it, as upstream's `PodQOSClass`).
pub fn pod_qos(pod: &Pod) -> QosClass {
    if let Some(class) = pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        match class {
            "Guaranteed" => return QosClass::Guaranteed,
            "Burstable" => return QosClass::Burstable,
            "BestEffort" => return QosClass::BestEffort,
            _ => {}
        }
    }
    compute_qos(pod)
}

/// `GetPodQOS` from the spec alone.
pub fn compute_qos(pod: &Pod) -> QosClass {
    let Some(spec) = pod.spec.as_ref() else { return QosClass::BestEffort };
    let mut requests: BTreeMap<&str, f64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, f64> = BTreeMap::new();
    let mut guaranteed = true;
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let res = c.resources.as_ref();
        let reqs = res.and_then(|r| r.requests.as_ref());
        let lims = res.and_then(|r| r.limits.as_ref());
        for name in QOS_RESOURCES {
            if let Some(q) = reqs.and_then(|r| r.get(name)).filter(|q| nonzero(q)) {
                *requests.entry(name).or_default() += tug_api::quantity::parse(&q.0).unwrap_or(0.0);
            }
        }
        let mut has_both = [false; 2];
        for (i, name) in QOS_RESOURCES.iter().enumerate() {
            if let Some(q) = lims.and_then(|l| l.get(*name)).filter(|q| nonzero(q)) {
                has_both[i] = true;
                *limits.entry(name).or_default() += tug_api::quantity::parse(&q.0).unwrap_or(0.0);
            }
        }
        if !has_both.iter().all(|b| *b) {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed && requests.iter().all(|(k, v)| limits.get(k).is_some_and(|l| (l - v).abs() < 1e-9)) {
        return QosClass::Guaranteed;
    }
    QosClass::Burstable
}

/// The pod's cgroup, relative to the cgroup root.
pub fn cgroup_parent(class: QosClass, uid: &str) -> String {
    match class {
        QosClass::Guaranteed => format!("{KUBEPODS}/pod{uid}"),
        QosClass::Burstable => format!("{BURSTABLE}/pod{uid}"),
        QosClass::BestEffort => format!("{BESTEFFORT}/pod{uid}"),
    }
}

fn quantity_of(c: &Container, limits: bool, name: &str) -> Option<f64> {
    let res = c.resources.as_ref()?;
    let list = if limits { res.limits.as_ref()? } else { res.requests.as_ref()? };
    tug_api::quantity::parse(&list.get(name)?.0)
}

/// A container's request of `name`: the request, else the limit (as the API's defaulting does).
fn request_of(c: &Container, name: &str) -> Option<f64> {
    quantity_of(c, false, name).or_else(|| quantity_of(c, true, name))
}

/// A container's cpu request in millicores.
pub fn cpu_request_millis(c: &Container) -> i64 {
    request_of(c, "cpu").map(|v| (v * 1000.0).ceil() as i64).unwrap_or(0)
}

pub fn cpu_limit_millis(c: &Container) -> Option<i64> {
    quantity_of(c, true, "cpu").map(|v| (v * 1000.0).ceil() as i64)
}

pub fn memory_request(c: &Container) -> i64 {
    request_of(c, "memory").map(|v| v.ceil() as i64).unwrap_or(0)
}

pub fn memory_limit(c: &Container) -> Option<i64> {
    quantity_of(c, true, "memory").map(|v| v.ceil() as i64)
}

/// Upstream's `MilliCPUToShares`.
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    let shares = (milli * SHARES_PER_CPU / 1000) as u64;
    shares.max(MIN_SHARES)
}

/// Upstream's `MilliCPUToQuota` with the default period.
pub fn milli_cpu_to_quota(milli: i64) -> i64 {
    if milli <= 0 {
        return 0;
    }
    (milli * QUOTA_PERIOD as i64 / 1000).max(MIN_QUOTA)
}

/// Upstream's `GetContainerOOMScoreAdjust`.
pub fn oom_score_adj(class: QosClass, container: &Container, memory_capacity: i64) -> i32 {
    match class {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BESTEFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let request = memory_request(container);
            if memory_capacity <= 0 {
                return BESTEFFORT_OOM_SCORE_ADJ - 1;
            }
            let adj = 1000 - (1000 * i128::from(request) / i128::from(memory_capacity)) as i32;
            // Burstable stays above any guaranteed container and below best-effort ones.
            if adj < 1000 + GUARANTEED_OOM_SCORE_ADJ {
                1000 + GUARANTEED_OOM_SCORE_ADJ
            } else if adj >= BESTEFFORT_OOM_SCORE_ADJ {
                BESTEFFORT_OOM_SCORE_ADJ - 1
            } else {
                adj
            }
        }
    }
}

/// The pod cgroup's limits (upstream's `ResourceConfigForPod`): cpu shares from the summed
/// requests; quota and memory limit only when every container sets that limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodLimits {
    pub cpu_shares: u64,
    pub cpu_quota: Option<i64>,
    pub memory_limit: Option<i64>,
}

pub fn pod_limits(pod: &Pod) -> PodLimits {
    let Some(spec) = pod.spec.as_ref() else { return PodLimits::default() };
    let mut req_cpu = 0i64;
    let mut lim_cpu = Some(0i64);
    let mut lim_mem = Some(0i64);
    for c in &spec.containers {
        req_cpu += cpu_request_millis(c);
        lim_cpu = lim_cpu.zip(cpu_limit_millis(c)).map(|(a, b)| a + b);
        lim_mem = lim_mem.zip(memory_limit(c)).map(|(a, b)| a + b);
    }
    // Init containers run one at a time: the pod needs the most any of them needs.
    for c in spec.init_containers.iter().flatten() {
        req_cpu = req_cpu.max(cpu_request_millis(c));
        lim_cpu = lim_cpu.zip(cpu_limit_millis(c)).map(|(a, b)| a.max(b));
        lim_mem = lim_mem.zip(memory_limit(c)).map(|(a, b)| a.max(b));
    }
    match compute_qos(pod) {
        QosClass::BestEffort => PodLimits { cpu_shares: MIN_SHARES, cpu_quota: None, memory_limit: None },
        _ => PodLimits {
            cpu_shares: milli_cpu_to_shares(req_cpu),
            cpu_quota: lim_cpu.filter(|m| *m > 0).map(milli_cpu_to_quota),
            memory_limit: lim_mem.filter(|m| *m > 0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    fn container(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Container {
        let list = |l: &[(&str, &str)]| {
            (!l.is_empty()).then(|| l.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect())
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements { requests: list(req), limits: list(lim), ..Default::default() }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>) -> Pod {
        Pod { spec: Some(PodSpec { containers, ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        assert_eq!(compute_qos(&pod(vec![container(&[], &[])])), QosClass::BestEffort);
        let g = container(&[("cpu", "100m"), ("memory", "64Mi")], &[("cpu", "100m"), ("memory", "64Mi")]);
        assert_eq!(compute_qos(&pod(vec![g.clone()])), QosClass::Guaranteed);
        // Limits only: requests default to them, so still guaranteed.
        let lim_only = container(&[], &[("cpu", "1"), ("memory", "1Gi")]);
        assert_eq!(compute_qos(&pod(vec![lim_only])), QosClass::Guaranteed);
        let b = container(&[("cpu", "100m")], &[]);
        assert_eq!(compute_qos(&pod(vec![g, b])), QosClass::Burstable);
        let unequal = container(&[("cpu", "100m"), ("memory", "64Mi")], &[("cpu", "200m"), ("memory", "64Mi")]);
        assert_eq!(compute_qos(&pod(vec![unequal])), QosClass::Burstable);
    }

    #[test]
    fn cgroup_parent_depends_on_class() {
        assert_eq!(cgroup_parent(QosClass::Guaranteed, "u1"), "/kubepods/podu1");
        assert_eq!(cgroup_parent(QosClass::Burstable, "u1"), "/kubepods/burstable/podu1");
        assert_eq!(cgroup_parent(QosClass::BestEffort, "u1"), "/kubepods/besteffort/podu1");
    }

    #[test]
    fn oom_score_adj_by_class() {
        let c = container(&[("memory", "1Gi")], &[]);
        let gib = 1 << 30;
        assert_eq!(oom_score_adj(QosClass::Guaranteed, &c, 4 * gib), -997);
        assert_eq!(oom_score_adj(QosClass::BestEffort, &c, 4 * gib), 1000);
        assert_eq!(oom_score_adj(QosClass::Burstable, &c, 4 * gib), 750);
        // Requesting the whole machine still stays above guaranteed containers.
        assert_eq!(oom_score_adj(QosClass::Burstable, &c, gib), 3);
        // A tiny request stays below best-effort.
        let tiny = container(&[("memory", "1")], &[]);
        assert_eq!(oom_score_adj(QosClass::Burstable, &tiny, 4 * gib), 999);
    }

    #[test]
    fn cpu_shares_and_quota() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_quota(250), 25_000);
        assert_eq!(milli_cpu_to_quota(5), 1000);
    }

    #[test]
    fn pod_limits_sum_containers_when_all_limited() {
        let a = container(&[("cpu", "100m")], &[("cpu", "200m"), ("memory", "64Mi")]);
        let b = container(&[("cpu", "300m")], &[("cpu", "100m"), ("memory", "64Mi")]);
        let l = pod_limits(&pod(vec![a.clone(), b]));
        assert_eq!(l.cpu_shares, milli_cpu_to_shares(400));
        assert_eq!(l.cpu_quota, Some(30_000));
        assert_eq!(l.memory_limit, Some(128 << 20));
        let unlimited = container(&[("cpu", "100m")], &[]);
        let l = pod_limits(&pod(vec![a, unlimited]));
        assert_eq!(l.cpu_quota, None);
        assert_eq!(l.memory_limit, None);
        assert_eq!(pod_limits(&pod(vec![container(&[], &[])])).cpu_shares, 2);
    }
}
