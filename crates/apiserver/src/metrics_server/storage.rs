//! The last two points of every node and container, and the usage computed from them, as
//! metrics-server's storage keeps them: CPU usage is the rate of the cumulative CPU time between
//! the two points, memory the last working set. A point replaces the last one only when it is
//! newer; a container whose start time moved (it restarted) starts over. A container younger
//! than one resolution but at least 10 s old gets a synthetic previous point at its start (zero
//! CPU then), so a new pod has metrics after one scrape instead of two.

use std::collections::HashMap;
use std::time::Duration;

/// metrics-server's `freshContainerMinMetricsResolution`: below this age the synthetic point at
/// the container's start would give an inaccurate rate.
const FRESH_CONTAINER_MIN_AGE: i64 = 10_000_000_000;

/// A pod's identity in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PodKey {
    pub namespace: String,
    pub name: String,
}

/// One measurement. Times are nanoseconds since the Unix epoch (0: unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Point {
    /// When the container started; its cumulative CPU was zero then.
    pub start_time: i64,
    pub timestamp: i64,
    pub cumulative_cpu_nanos: u64,
    pub memory_bytes: u64,
}

/// What one scrape round brought.
#[derive(Debug, Clone, Default)]
pub(crate) struct Batch {
    pub nodes: HashMap<String, Point>,
    pub pods: HashMap<PodKey, HashMap<String, Point>>,
}

/// Usage over a window: CPU in nanocores, memory in bytes, at `timestamp` (ns since the epoch)
/// over `window` (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
    pub timestamp: i64,
    pub window: i64,
}

/// Why two points give no usage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum UsageError {
    #[error("unexpected decrease in startTime of node/container")]
    StartTimeDecreased,
    #[error("unexpected decrease in cumulative CPU usage value")]
    CpuDecreased,
    #[error("the two points have the same timestamp")]
    EmptyWindow,
}

/// The usage between `prev` and `last`, as metrics-server's `resourceUsage`.
pub(crate) fn resource_usage(last: &Point, prev: &Point) -> Result<Usage, UsageError> {
    if last.start_time < prev.start_time {
        return Err(UsageError::StartTimeDecreased);
    }
    if last.cumulative_cpu_nanos < prev.cumulative_cpu_nanos {
        return Err(UsageError::CpuDecreased);
    }
    let window = last.timestamp - prev.timestamp;
    if window <= 0 {
        return Err(UsageError::EmptyWindow);
    }
    let rate = (last.cumulative_cpu_nanos - prev.cumulative_cpu_nanos) as f64 / (window as f64 / 1e9);
    Ok(Usage { cpu_nanocores: rate as u64, memory_bytes: last.memory_bytes, timestamp: last.timestamp, window })
}

/// The usage of one pod: each container's, at the earliest of their timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodUsage {
    pub containers: Vec<(String, Usage)>,
    pub timestamp: i64,
    pub window: i64,
}

/// The points of every node and container.
#[derive(Debug)]
pub(crate) struct Storage {
    resolution: Duration,
    last_nodes: HashMap<String, Point>,
    prev_nodes: HashMap<String, Point>,
    last_pods: HashMap<PodKey, HashMap<String, Point>>,
    prev_pods: HashMap<PodKey, HashMap<String, Point>>,
}

impl Storage {
    pub fn new(resolution: Duration) -> Self {
        Storage {
            resolution,
            last_nodes: HashMap::new(),
            prev_nodes: HashMap::new(),
            last_pods: HashMap::new(),
            prev_pods: HashMap::new(),
        }
    }

    /// Takes a scrape round's points; nodes and pods absent from it are forgotten.
    pub fn store(&mut self, batch: Batch) {
        let mut prev_nodes = HashMap::new();
        for (name, point) in &batch.nodes {
            if let Some(last) = self.last_nodes.get(name) {
                if point.timestamp > last.timestamp {
                    prev_nodes.insert(name.clone(), *last);
                } else if let Some(prev) = self.prev_nodes.get(name).filter(|p| p.timestamp < point.timestamp) {
                    prev_nodes.insert(name.clone(), *prev);
                }
            }
        }
        self.last_nodes = batch.nodes;
        self.prev_nodes = prev_nodes;

        let resolution = self.resolution.as_nanos() as i64;
        let mut prev_pods = HashMap::new();
        for (key, containers) in &batch.pods {
            let mut prev_containers = HashMap::new();
            for (name, point) in containers {
                let age = point.timestamp - point.start_time;
                if point.start_time != 0 && age > 0 && age < resolution && age >= FRESH_CONTAINER_MIN_AGE {
                    let at_start = Point { timestamp: point.start_time, cumulative_cpu_nanos: 0, ..*point };
                    prev_containers.insert(name.clone(), at_start);
                    continue;
                }
                let Some(last) = self.last_pods.get(key).and_then(|c| c.get(name)) else { continue };
                // A start time after the stored point means a restart: start over.
                if point.start_time >= last.timestamp {
                    continue;
                }
                if point.timestamp > last.timestamp {
                    prev_containers.insert(name.clone(), *last);
                } else if let Some(prev) =
                    self.prev_pods.get(key).and_then(|c| c.get(name)).filter(|p| p.timestamp < point.timestamp)
                {
                    prev_containers.insert(name.clone(), *prev);
                }
            }
            if !prev_containers.is_empty() {
                prev_pods.insert(key.clone(), prev_containers);
            }
        }
        self.last_pods = batch.pods;
        self.prev_pods = prev_pods;
    }

    /// The node's usage, once it has two points.
    pub fn node(&self, name: &str) -> Option<Usage> {
        let (last, prev) = (self.last_nodes.get(name)?, self.prev_nodes.get(name)?);
        resource_usage(last, prev)
            .inspect_err(|error| tracing::warn!(node = name, %error, "skipping node usage metric"))
            .ok()
    }

    /// The pod's usage, once every container has two points. Containers come sorted by name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodUsage> {
        let key = PodKey { namespace: namespace.to_string(), name: name.to_string() };
        let (last, prev) = (self.last_pods.get(&key)?, self.prev_pods.get(&key)?);
        let mut containers = Vec::new();
        let mut earliest: Option<Usage> = None;
        for (container, last_point) in last {
            let prev_point = prev.get(container)?;
            match resource_usage(last_point, prev_point) {
                Ok(usage) => {
                    if earliest.is_none_or(|e| e.timestamp > usage.timestamp) {
                        earliest = Some(usage);
                    }
                    containers.push((container.clone(), usage));
                }
                Err(error) => {
                    tracing::warn!(namespace, pod = name, container, %error, "skipping container usage metric");
                }
            }
        }
        containers.sort_by(|a, b| a.0.cmp(&b.0));
        let (timestamp, window) = earliest.map(|e| (e.timestamp, e.window)).unwrap_or_default();
        Some(PodUsage { containers, timestamp, window })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * S;

    fn point(start: i64, at: i64, cpu_seconds: f64, memory: u64) -> Point {
        Point {
            start_time: start,
            timestamp: at,
            cumulative_cpu_nanos: (cpu_seconds * 1e9) as u64,
            memory_bytes: memory,
        }
    }

    fn batch(node: Option<Point>, containers: &[(&str, Point)]) -> Batch {
        let mut b = Batch::default();
        if let Some(n) = node {
            b.nodes.insert("n1".into(), n);
        }
        if !containers.is_empty() {
            let key = PodKey { namespace: "default".into(), name: "web".into() };
            b.pods.insert(key, containers.iter().map(|(n, p)| (n.to_string(), *p)).collect());
        }
        b
    }

    #[test]
    fn cpu_usage_is_the_rate_between_the_two_points() {
        let usage = resource_usage(&point(0, T0 + 15 * S, 20.0, 10), &point(0, T0, 5.0, 99)).unwrap();
        assert_eq!(usage.cpu_nanocores, 1_000_000_000);
        assert_eq!(usage.memory_bytes, 10);
        assert_eq!(usage.window, 15 * S);
        assert_eq!(usage.timestamp, T0 + 15 * S);
        assert_eq!(resource_usage(&point(0, T0 + S, 1.0, 1), &point(0, T0, 2.0, 1)), Err(UsageError::CpuDecreased));
        assert_eq!(
            resource_usage(&point(1, T0 + S, 2.0, 1), &point(5, T0, 1.0, 1)),
            Err(UsageError::StartTimeDecreased)
        );
    }

    #[test]
    fn a_node_has_usage_after_its_second_newer_point() {
        let mut storage = Storage::new(Duration::from_secs(15));
        storage.store(batch(Some(point(0, T0, 100.0, 1 << 30)), &[]));
        assert_eq!(storage.node("n1"), None);
        // The same point again (the agent answered from the same measurement) is not a window.
        storage.store(batch(Some(point(0, T0, 100.0, 1 << 30)), &[]));
        assert_eq!(storage.node("n1"), None);
        storage.store(batch(Some(point(0, T0 + 15 * S, 107.5, 2 << 30)), &[]));
        let usage = storage.node("n1").unwrap();
        assert_eq!(usage.cpu_nanocores, 500_000_000);
        assert_eq!(usage.memory_bytes, 2 << 30);
        // A node missing from a round is forgotten.
        storage.store(Batch::default());
        assert_eq!(storage.node("n1"), None);
    }

    #[test]
    fn a_pod_needs_two_points_for_every_container_and_a_restart_starts_over() {
        let mut storage = Storage::new(Duration::from_secs(15));
        let start = T0 - 3600 * S;
        storage.store(batch(None, &[("a", point(start, T0, 1.0, 100)), ("b", point(start, T0, 1.0, 100))]));
        assert_eq!(storage.pod("default", "web"), None);
        storage.store(batch(
            None,
            &[("a", point(start, T0 + 15 * S, 16.0, 200)), ("b", point(start, T0 + 14 * S, 1.14, 300))],
        ));
        let pod = storage.pod("default", "web").unwrap();
        assert_eq!(
            pod.containers[0],
            (
                "a".to_string(),
                resource_usage(&point(start, T0 + 15 * S, 16.0, 200), &point(start, T0, 1.0, 100)).unwrap()
            )
        );
        assert_eq!(pod.containers[0].1.cpu_nanocores, 1_000_000_000);
        assert_eq!(pod.containers[1].1.cpu_nanocores, 10_000_000);
        // The earliest container timestamp stands for the pod.
        assert_eq!((pod.timestamp, pod.window), (T0 + 14 * S, 14 * S));

        // Container b restarted 5 s ago: no previous point for it, so no pod metrics this round.
        storage.store(batch(
            None,
            &[("a", point(start, T0 + 30 * S, 31.0, 200)), ("b", point(T0 + 25 * S, T0 + 30 * S, 0.5, 300))],
        ));
        assert_eq!(storage.pod("default", "web"), None);
        assert_eq!(storage.pod("default", "other"), None);
    }

    #[test]
    fn a_fresh_container_gets_a_point_at_its_start() {
        let mut storage = Storage::new(Duration::from_secs(15));
        // 12 s old: usage since its start, after one scrape.
        storage.store(batch(None, &[("a", point(T0, T0 + 12 * S, 6.0, 100))]));
        let pod = storage.pod("default", "web").unwrap();
        assert_eq!(pod.containers[0].1.cpu_nanocores, 500_000_000);
        assert_eq!(pod.window, 12 * S);
        // 5 s old: too young for an accurate rate.
        let mut storage = Storage::new(Duration::from_secs(15));
        storage.store(batch(None, &[("a", point(T0, T0 + 5 * S, 1.0, 100))]));
        assert_eq!(storage.pod("default", "web"), None);
    }
}
