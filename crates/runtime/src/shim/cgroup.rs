//! The little the shim needs of cgroups directly (libcontainer manages the containers' own):
//! whether the OOM killer struck in a container's cgroup, and joining a sandbox's pod cgroup.

use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Whether the host uses the unified (v2) hierarchy at `/sys/fs/cgroup`, or v1 controllers
/// (possibly beside a controller-less v2 mount, the hybrid layout).
pub fn is_unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// How many times the OOM killer killed a process in the cgroup at `path` (relative to the
/// hierarchy root, as `linux.cgroupsPath` says it); 0 when unknown.
pub fn oom_kills(path: &str) -> u64 {
    let (file, key) = if is_unified() {
        (Path::new(ROOT).join(relative(path)).join("memory.events"), "oom_kill")
    } else {
        (Path::new(ROOT).join("memory").join(relative(path)).join("memory.oom_control"), "oom_kill")
    };
    std::fs::read_to_string(file).map(|text| counter(&text, key)).unwrap_or(0)
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Moves process `pid` into the cgroup at `path` (relative to the hierarchy root) of every
/// mounted hierarchy, creating it: on v1 each controller's hierarchy, on v2 the unified one.
pub fn join(path: &str, pid: u32) -> io::Result<()> {
    let unified = is_unified();
    let dirs: Vec<PathBuf> = if unified { vec![PathBuf::from(ROOT)] } else { v1_hierarchies()? };
    for hierarchy in dirs {
        let target = hierarchy.join(relative(path));
        create(&hierarchy, relative(path), !unified)?;
        std::fs::write(target.join("cgroup.procs"), pid.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("join {}: {e}", target.display())))?;
    }
    Ok(())
}

/// The v1 controller hierarchies under `/sys/fs/cgroup` (mount points, not the symlinks to
/// co-mounted ones such as `cpu -> cpu,cpuacct`; not the controller-less `unified` and
/// `systemd` ones).
fn v1_hierarchies() -> io::Result<Vec<PathBuf>> {
    let mut out = vec![];
    for entry in std::fs::read_dir(ROOT)? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_symlink() || name == "unified" || name == "systemd" {
            continue;
        }
        if entry.path().join("cgroup.procs").exists() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Creates each missing directory of `path` under `hierarchy`. In v1's cpuset hierarchy a new
/// cgroup starts with no cpus and mems, so with `copy_cpuset` they are copied from its parent
/// (as runc does); v2's empty cpuset means the parent's, and its files exist only where the
/// parent enabled the controller.
fn create(hierarchy: &Path, path: &str, copy_cpuset: bool) -> io::Result<()> {
    let mut dir = hierarchy.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let parent = dir.clone();
        dir.push(part);
        if dir.exists() {
            continue;
        }
        std::fs::create_dir(&dir)?;
        if !copy_cpuset {
            continue;
        }
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(parent.join(file)) {
                std::fs::write(dir.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counter_is_read_from_flat_keyed_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(v1, "oom_kill"), 2);
        let v2 = "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(counter(v2, "oom_kill"), 1);
        assert_eq!(counter("", "oom_kill"), 0);
    }
}
