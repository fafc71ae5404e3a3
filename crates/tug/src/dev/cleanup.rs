//! Removing what a node agent leaves behind once it is stopped: its containers keep running
//! (they survive agent restarts by design), and their shims, mounts and cgroups with them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::{UnmountFlags, unmount};
use rustix::process::{Pid, Signal, kill_process};

/// The cgroup hierarchies to look in: every mounted controller (v1) or the unified root.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut roots: Vec<PathBuf> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    if roots.is_empty() {
        roots.push(base.to_path_buf());
    }
    roots
}

/// The cgroups of everything the agent with data directory `node_dir` started: each
/// container's cgroupsPath, and each sandbox's cgroup (`<cgroup_parent>/<id>`, see the built-in
/// runtime's sandboxes).
fn container_cgroups(node_dir: &Path) -> Vec<String> {
    let runtime = node_dir.join("agent").join("runtime");
    let mut paths = Vec::new();
    let mut add = |path: &str| {
        let path = path.trim_matches('/');
        if !path.is_empty() {
            paths.push(path.to_owned());
        }
    };
    for entry in std::fs::read_dir(runtime.join("containers")).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("config.json")) else { continue };
        let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if let Some(path) = config.pointer("/linux/cgroupsPath").and_then(|p| p.as_str()) {
            add(path);
        }
    }
    for entry in std::fs::read_dir(runtime.join("sandboxes")).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("sandbox.json")) else { continue };
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if let Some(parent) = record.pointer("/config/cgroup_parent").and_then(|p| p.as_str())
            && !parent.trim_matches('/').is_empty()
        {
            add(&format!("{}/{}", parent.trim_end_matches('/'), entry.file_name().to_string_lossy()));
        }
    }
    paths
}

/// Sends SIGKILL to `pid`, ignoring processes that are gone already.
fn kill(pid: i32) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// Waits (briefly) until none of `pids` exists any more.
fn wait_gone(pids: &[i32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `haystack` contains the path `dir` itself or a path below it (so `/d/nodes/1` does
/// not match `/d/nodes/10`).
fn mentions_path(haystack: &[u8], dir: &[u8]) -> bool {
    (0..haystack.len()).any(|start| {
        haystack[start..].starts_with(dir) && matches!(haystack.get(start + dir.len()), None | Some(b'\0') | Some(b'/'))
    })
}

/// The pids of processes whose command line names `dir` or a path below it, except our own.
pub fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let own = std::process::id() as i32;
    let marker = dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| mentions_path(&cmdline, marker))
        })
        .collect()
}

/// Kills the processes of the agent that used `node_dir`: its containers (found through
/// their cgroups) and every process naming the directory (shims, pause), and removes the
/// containers' and pods' cgroups. Mounts are left to [`unmount_under`].
pub fn kill_agent_leftovers(node_dir: &Path) {
    let cgroups = container_cgroups(node_dir);
    let roots = cgroup_roots();
    let mut killed = Vec::new();
    for path in &cgroups {
        for root in &roots {
            let Ok(procs) = std::fs::read_to_string(root.join(path).join("cgroup.procs")) else { continue };
            for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                kill(pid);
                killed.push(pid);
            }
        }
    }
    for pid in processes_mentioning(node_dir) {
        kill(pid);
        killed.push(pid);
    }
    wait_gone(&killed, Duration::from_secs(3));
    // Containers' cgroups first, then their pods' (the parents, and those the agent noted it
    // made), deepest first.
    let mut pods: BTreeSet<String> =
        cgroups.iter().filter_map(|p| Path::new(p).parent()).map(|p| p.to_string_lossy().into_owned()).collect();
    for note in std::fs::read_dir(node_dir.join("agent").join("pod-cgroups")).into_iter().flatten().flatten() {
        let uid = note.file_name().to_string_lossy().into_owned();
        for qos in ["kubepods", "kubepods/burstable", "kubepods/besteffort"] {
            pods.insert(format!("{qos}/pod{uid}"));
        }
    }
    let mut all: Vec<String> = cgroups.into_iter().chain(pods).filter(|p| !p.is_empty()).collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.len()));
    all.dedup();
    for path in &all {
        for root in &roots {
            let dir = root.join(path);
            if dir.exists()
                && let Err(error) = std::fs::remove_dir(&dir)
            {
                tracing::debug!(path = %dir.display(), %error, "cannot remove a leftover cgroup");
            }
        }
    }
}

/// Kills `pids` (SIGKILL) and waits briefly for them to be gone.
pub fn kill_all(pids: &[i32]) {
    for &pid in pids {
        kill(pid);
    }
    wait_gone(pids, Duration::from_secs(3));
}

/// The mount points at or below `dir` in our mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let points = tug_kubelet::volumemanager::mount::mount_points().unwrap_or_default();
    points.into_iter().filter(|point| point.starts_with(dir)).collect()
}

/// Detaches every mount at or below `dir`, deepest first (lazily: a busy one goes once unused).
pub fn unmount_under(dir: &Path) {
    // A mount point can be stacked; repeat until nothing is left or nothing changes.
    for _ in 0..5 {
        let mut points = mounts_under(dir);
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for point in &points {
            if let Err(error) = unmount(point, UnmountFlags::DETACH) {
                tracing::debug!(path = %point.display(), %error, "cannot unmount");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_mentioned_only_as_itself_or_a_parent() {
        assert!(mentions_path(b"tug\0--data-dir\0/d/nodes/1\0", b"/d/nodes/1"));
        assert!(mentions_path(b"shim\0/d/nodes/1/agent/x", b"/d/nodes/1"));
        assert!(mentions_path(b"/d/nodes/1", b"/d/nodes/1"));
        assert!(!mentions_path(b"--data-dir\0/d/nodes/10\0", b"/d/nodes/1"));
    }
}
