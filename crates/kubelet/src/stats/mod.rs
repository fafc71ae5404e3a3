//! Resource usage of the node, its pods and their containers: the kubelet's stats provider,
//! which upstream's `/metrics/resource` endpoint ([`resource_metrics`]) and the summary API read.
//!
//! Pods and containers come from the runtime's CRI `ListPodSandboxStats` (the built-in runtime
//! reads their cgroups); the node's totals from the kernel's own accounting in `/proc`
//! (`/proc/stat` for CPU time, `/proc/meminfo` for the working set, computed as cadvisor does
//! for the root cgroup: used memory minus inactive file pages).

pub mod resource_metrics;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tug_runtime::cri::{ContainerFilter, ContainerState, PodSandboxStats, RuntimeService};

/// `/proc/stat` counts CPU time in USER_HZ ticks, which the kernel ABI fixes at 100 per second.
const NANOS_PER_TICK: u64 = 10_000_000;

/// Errors reading the node's usage.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected content in {path}")]
    Parse { path: PathBuf },
}

/// The node's usage at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeUsage {
    pub timestamp: SystemTime,
    /// CPU time spent by all CPUs outside idle and iowait since boot, in nanoseconds.
    pub cpu_usage_nanos: u64,
    pub memory_working_set_bytes: u64,
}

/// What `/metrics/resource` reports: the node, every pod the runtime runs with its running
/// containers, when each container was created, and whether part of it could not be read.
#[derive(Debug, Clone, Default)]
pub struct ResourceSnapshot {
    pub node: Option<NodeUsage>,
    pub pods: Vec<PodSandboxStats>,
    /// Container ID -> creation time (CRI's `CreatedAt`, which upstream reports as the start time).
    pub container_start: HashMap<String, SystemTime>,
    /// The runtime could not list its pods' usage.
    pub scrape_error: bool,
}

/// Reads the node's usage from the `/proc` mounted at `proc_root`.
pub fn node_usage(proc_root: &Path) -> Result<NodeUsage, StatsError> {
    let read = |name: &str| {
        let path = proc_root.join(name);
        std::fs::read_to_string(&path)
            .map(|text| (text, path.clone()))
            .map_err(|source| StatsError::Read { path, source })
    };
    let (stat, stat_path) = read("stat")?;
    let cpu_usage_nanos = cpu_ticks(&stat).ok_or(StatsError::Parse { path: stat_path })? * NANOS_PER_TICK;
    let (meminfo, meminfo_path) = read("meminfo")?;
    let memory_working_set_bytes = working_set(&meminfo).ok_or(StatsError::Parse { path: meminfo_path })?;
    Ok(NodeUsage { timestamp: SystemTime::now(), cpu_usage_nanos, memory_working_set_bytes })
}

/// The busy ticks of the `cpu` line: user, nice, system, irq, softirq and steal (guest time is
/// already inside user and nice).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    (fields.len() >= 4).then(|| field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// `MemTotal - MemFree - Inactive(file)`, in bytes.
fn working_set(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| {
        meminfo.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?;
            value.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
    };
    let used = kib("MemTotal")?.saturating_sub(kib("MemFree")?);
    Some(used.saturating_sub(kib("Inactive(file)").unwrap_or(0)) * 1024)
}

/// Gathers a snapshot: the node from `proc_root`, the pods from the runtime. Failures are
/// logged and leave their part out, as upstream's collector reports what it has.
pub async fn snapshot(runtime: &dyn RuntimeService, proc_root: &Path) -> ResourceSnapshot {
    let proc_root = proc_root.to_owned();
    let node = match tokio::task::spawn_blocking(move || node_usage(&proc_root)).await {
        Ok(Ok(node)) => Some(node),
        Ok(Err(error)) => {
            tracing::warn!(%error, "reading the node's resource usage failed");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "reading the node's resource usage failed");
            None
        }
    };
    let mut snapshot = ResourceSnapshot { node, ..Default::default() };
    match runtime.list_pod_sandbox_stats().await {
        Ok(pods) => snapshot.pods = pods,
        Err(error) => {
            tracing::warn!(%error, "listing the pods' resource usage failed");
            snapshot.scrape_error = true;
        }
    }
    let running = ContainerFilter { state: Some(ContainerState::Running), ..Default::default() };
    match runtime.list_containers(&running).await {
        Ok(containers) => snapshot.container_start = containers.into_iter().map(|c| (c.id, c.created_at)).collect(),
        Err(error) => {
            tracing::warn!(%error, "listing the running containers failed");
            snapshot.scrape_error = true;
        }
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_usage_counts_busy_cpu_ticks_and_memory_without_inactive_file_pages() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("stat"),
            "cpu  100 20 30 5000 40 6 7 8 9 10\ncpu0 50 10 15 2500 20 3 3 4 0 0\nintr 1 2 3\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            "MemTotal:        8000000 kB\nMemFree:         2000000 kB\nMemAvailable:    5000000 kB\nInactive(file):  1000000 kB\n",
        )
        .unwrap();
        let usage = node_usage(dir.path()).unwrap();
        // user + nice + system + irq + softirq + steal = 171 ticks of 10 ms.
        assert_eq!(usage.cpu_usage_nanos, 171 * 10_000_000);
        assert_eq!(usage.memory_working_set_bytes, 5_000_000 * 1024);
    }

    #[test]
    fn unreadable_or_malformed_proc_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(node_usage(dir.path()), Err(StatsError::Read { .. })));
        std::fs::write(dir.path().join("stat"), "intr 1 2 3\n").unwrap();
        std::fs::write(dir.path().join("meminfo"), "MemTotal: 1 kB\nMemFree: 1 kB\n").unwrap();
        assert!(matches!(node_usage(dir.path()), Err(StatsError::Parse { .. })));
    }

    #[test]
    fn this_machines_proc_is_readable() {
        let usage = node_usage(Path::new("/proc")).unwrap();
        assert!(usage.cpu_usage_nanos > 0 && usage.memory_working_set_bytes > 0);
    }
}
