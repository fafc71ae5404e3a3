//! Resource usage of the built-in runtime's sandboxes and containers (CRI's
//! `ListPodSandboxStats`), read from the cgroups they run in: the pod's cgroup is the sandbox's
//! `cgroup_parent`, each container's the directory named by its ID below it (the `cgroupsPath`
//! its spec was built with). And the disk each container's writable layer (the overlay's
//! `upper` directory) takes, kept until the container is removed (CRI's `ListContainerStats`).

use std::time::SystemTime;

use super::BuiltinRuntime;
use crate::cgroups::{self, CgroupUsage};
use crate::cri::{
    ContainerState, ContainerStats, CpuUsage, FsUsage, MemoryUsage, PodSandboxState, PodSandboxStats, RuntimeError,
};

/// A cgroup to read, and who it belongs to.
struct Wanted {
    sandbox: usize,
    container: Option<ContainerStats>,
    path: String,
}

impl BuiltinRuntime {
    /// Every container's writable layer, running or exited.
    pub(super) async fn writable_layers(&self) -> Result<Vec<(String, FsUsage)>, RuntimeError> {
        let uppers: Vec<(String, std::path::PathBuf)> = self
            .container_records()?
            .into_iter()
            .map(|record| {
                let upper = self.container_dir(&record.id).0.join("upper");
                (record.id, upper)
            })
            .collect();
        // Walking the trees is blocking I/O; one task walks them all.
        let usage = tokio::task::spawn_blocking(move || {
            uppers.into_iter().map(|(id, upper)| (id, FsUsage::of_tree(&upper))).collect()
        })
        .await?;
        Ok(usage)
    }

    pub(super) async fn pod_sandbox_stats(&self) -> Result<Vec<PodSandboxStats>, RuntimeError> {
        let zero = usage_at(SystemTime::UNIX_EPOCH, CgroupUsage::default());
        let mut sandboxes = Vec::new();
        let mut wanted = Vec::new();
        let records = self.sandbox_records()?;
        let mut containers = self.container_records()?;
        for record in records {
            let parent = record.config.cgroup_parent.trim_end_matches('/').to_owned();
            if parent.is_empty() || self.sandbox_state(&record) != PodSandboxState::Ready {
                continue;
            }
            let index = sandboxes.len();
            wanted.push(Wanted { sandbox: index, container: None, path: parent.clone() });
            for container in containers.iter_mut().filter(|c| c.sandbox_id == record.id) {
                // A container whose state cannot be read now (being created or removed) is
                // left out of this round rather than failing every pod's stats.
                let entry = match self.list_entry(container) {
                    Ok(entry) => entry,
                    Err(error) => {
                        tracing::debug!(container = %container.id, %error, "reading a container's state failed");
                        continue;
                    }
                };
                if entry.state != ContainerState::Running {
                    continue;
                }
                let stats = ContainerStats {
                    id: entry.id.clone(),
                    metadata: entry.metadata,
                    labels: entry.labels,
                    cpu: zero.0,
                    memory: zero.1,
                };
                wanted.push(Wanted { sandbox: index, container: Some(stats), path: format!("{parent}/{}", entry.id) });
            }
            sandboxes.push(PodSandboxStats {
                id: record.id.clone(),
                metadata: record.config.metadata.clone(),
                labels: record.config.labels.clone(),
                cpu: zero.0,
                memory: zero.1,
                containers: Vec::new(),
            });
        }
        // Reading cgroup files is blocking I/O; one task reads them all.
        let read = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .filter_map(|w| match cgroups::usage(&w.path) {
                    Ok(usage) => Some((w, usage_at(SystemTime::now(), usage))),
                    // A container that exited between the listing and the read has no cgroup left.
                    Err(error) => {
                        tracing::debug!(path = %w.path, %error, "reading a cgroup's usage failed");
                        None
                    }
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut found = vec![false; sandboxes.len()];
        for (w, (cpu, memory)) in read {
            let sandbox = &mut sandboxes[w.sandbox];
            match w.container {
                Some(container) => sandbox.containers.push(ContainerStats { cpu, memory, ..container }),
                None => {
                    (sandbox.cpu, sandbox.memory) = (cpu, memory);
                    found[w.sandbox] = true;
                }
            }
        }
        // A sandbox whose pod cgroup could not be read is left out, as if it were gone.
        Ok(sandboxes.into_iter().zip(found).filter(|(_, found)| *found).map(|(s, _)| s).collect())
    }
}

fn usage_at(timestamp: SystemTime, usage: CgroupUsage) -> (CpuUsage, MemoryUsage) {
    (
        CpuUsage { timestamp, usage_core_nano_seconds: usage.cpu_usage_nanos },
        MemoryUsage {
            timestamp,
            working_set_bytes: usage.memory_working_set_bytes,
            usage_bytes: usage.memory_usage_bytes,
        },
    )
}
