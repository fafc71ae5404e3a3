//! What the node agent reports about the machine it runs on: CPUs, memory, the filesystems of
//! the agent's data, process ids, and the identity of the host (machine ID, boot ID, kernel,
//! OS image), read from `/proc`, `/sys` and `/etc` as upstream's cAdvisor does.
//!
//! Parsing is kept apart from reading so that the parsers are tested on fixed inputs.

use std::path::{Path, PathBuf};

/// Bytes per KiB, the unit of `/proc/meminfo`.
const KIB: u64 = 1024;

/// The machine's fixed facts and current memory figures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MachineInfo {
    /// Online CPUs.
    pub num_cpus: u32,
    /// `MemTotal` in bytes.
    pub memory_capacity: u64,
    /// `MemAvailable` in bytes: what the memory pressure signal is measured against.
    pub memory_available: u64,
    /// `SwapTotal` in bytes.
    pub swap_capacity: u64,
    /// Huge pages preallocated per page size: (page size in bytes, total bytes).
    pub hugepages: Vec<(u64, u64)>,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
}

/// A filesystem's size and free space (from `statvfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStats {
    pub capacity: u64,
    /// Bytes available to unprivileged users (`f_bavail`), as cAdvisor reports `Available`.
    pub available: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// Process ids: the most the kernel hands out and how many tasks exist now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PidStats {
    pub max: u64,
    pub running: u64,
}

impl PidStats {
    pub fn available(&self) -> u64 {
        self.max.saturating_sub(self.running)
    }
}

/// Errors reading the machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("statvfs of {path}: {source}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {field} line")]
    MissingField { path: PathBuf, field: &'static str },
}

fn read(path: &str) -> Result<String, MachineError> {
    std::fs::read_to_string(path).map_err(|source| MachineError::Read { path: path.into(), source })
}

/// Reads the machine's facts and memory. The host identity files that may be missing in a
/// container or VM (DMI product UUID, os-release) fall back as upstream does.
pub fn machine_info() -> Result<MachineInfo, MachineError> {
    let meminfo = parse_meminfo(&read("/proc/meminfo")?);
    let field = |name: &'static str| {
        meminfo.get(name).copied().ok_or(MachineError::MissingField { path: "/proc/meminfo".into(), field: name })
    };
    let machine_id = read("/etc/machine-id").or_else(|_| read("/var/lib/dbus/machine-id")).unwrap_or_default();
    let machine_id = machine_id.trim().to_string();
    // cAdvisor reads the DMI product UUID, which only root may read and VMs may lack; upstream
    // then reports an empty systemUUID. The machine ID is a stable stand-in.
    let system_uuid = read("/sys/class/dmi/id/product_uuid")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| machine_id.clone());
    Ok(MachineInfo {
        num_cpus: read("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|s| parse_cpu_list(&s))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
        memory_capacity: field("MemTotal")?,
        memory_available: meminfo.get("MemAvailable").or(meminfo.get("MemFree")).copied().unwrap_or(0),
        swap_capacity: meminfo.get("SwapTotal").copied().unwrap_or(0),
        hugepages: hugepages(Path::new("/sys/kernel/mm/hugepages")),
        machine_id,
        system_uuid,
        boot_id: read("/proc/sys/kernel/random/boot_id")?.trim().to_string(),
        // What `uname -r` prints: the kernel exposes the same string here.
        kernel_version: read("/proc/sys/kernel/osrelease")?.trim().to_string(),
        os_image: read("/etc/os-release")
            .or_else(|_| read("/usr/lib/os-release"))
            .ok()
            .and_then(|s| parse_os_release_pretty_name(&s))
            .unwrap_or_else(|| "Linux".to_string()),
    })
}

/// The fields of `/proc/meminfo` in bytes (`MemTotal:  24519812 kB` -> `24519812 * 1024`).
pub fn parse_meminfo(text: &str) -> std::collections::HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let mut words = rest.split_whitespace();
            let value: u64 = words.next()?.parse().ok()?;
            let bytes = match words.next() {
                Some("kB") => value * KIB,
                // Counts such as HugePages_Total carry no unit.
                _ => value,
            };
            Some((name.trim().to_string(), bytes))
        })
        .collect()
}

/// `PRETTY_NAME` of an os-release file, unquoted (`Debian GNU/Linux 12 (bookworm)`).
pub fn parse_os_release_pretty_name(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("PRETTY_NAME=")?;
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        let value = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// How many CPUs a kernel CPU list names (`0-3,8-11` -> 8).
pub fn parse_cpu_list(text: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                count += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<u32>().ok()?;
                count += 1;
            }
        }
    }
    (count > 0).then_some(count)
}

/// Preallocated huge pages per page size, from `hugepages-<size>kB/nr_hugepages`.
fn hugepages(dir: &Path) -> Vec<(u64, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut sizes: Vec<(u64, u64)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let kib: u64 = name.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()?;
            let pages: u64 = std::fs::read_to_string(e.path().join("nr_hugepages")).ok()?.trim().parse().ok()?;
            Some((kib * KIB, kib * KIB * pages))
        })
        .collect();
    sizes.sort_unstable();
    sizes
}

/// The statistics of the filesystem holding `path` (or its nearest existing ancestor, as the
/// agent's directories may not exist yet at registration).
pub fn fs_stats(path: &Path) -> Result<FsStats, MachineError> {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(existing)
        .map_err(|e| MachineError::Statvfs { path: existing.to_path_buf(), source: e.into() })?;
    Ok(FsStats {
        capacity: st.f_blocks * st.f_frsize,
        available: st.f_bavail * st.f_frsize,
        inodes: st.f_files,
        inodes_free: st.f_ffree,
    })
}

/// The kernel's pid limit (the smaller of `pid_max` and `threads-max`, as upstream) and the
/// number of tasks now (from `/proc/loadavg`, which unlike sysinfo(2) does not truncate).
pub fn pid_stats() -> Result<PidStats, MachineError> {
    let pid_max: u64 = read("/proc/sys/kernel/pid_max")?.trim().parse().unwrap_or(u64::MAX);
    let threads_max: u64 =
        read("/proc/sys/kernel/threads-max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(pid_max);
    let running = parse_loadavg_tasks(&read("/proc/loadavg")?)
        .ok_or(MachineError::MissingField { path: "/proc/loadavg".into(), field: "tasks" })?;
    Ok(PidStats { max: pid_max.min(threads_max), running })
}

/// The task count of `/proc/loadavg` (`0.81 0.59 1.10 5/121 24857` -> 121).
pub fn parse_loadavg_tasks(text: &str) -> Option<u64> {
    text.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok()
}

/// A byte count as upstream's `resource.Quantity` prints a BinarySI value: the largest binary
/// suffix that divides it exactly (`24519812Ki`, `100Mi`), plain digits otherwise or below 1024.
pub fn binary_si(bytes: u64) -> String {
    const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes < KIB {
        return bytes.to_string();
    }
    let mut value = bytes;
    let mut suffix = None;
    for s in SUFFIXES {
        if !value.is_multiple_of(KIB) {
            break;
        }
        value /= KIB;
        suffix = Some(s);
    }
    match suffix {
        Some(s) => format!("{value}{s}"),
        None => bytes.to_string(),
    }
}

/// The resource name of a huge page size (`hugepages-2Mi`, `hugepages-1Gi`).
pub fn hugepages_resource(page_size: u64) -> String {
    format!("hugepages-{}", binary_si(page_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24519812 kB\nMemFree:         1234567 kB\nMemAvailable:   20000000 kB\n\
                           SwapTotal:             0 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";

    #[test]
    fn meminfo_values_are_bytes() {
        let m = parse_meminfo(MEMINFO);
        assert_eq!(m["MemTotal"], 24519812 * 1024);
        assert_eq!(m["MemAvailable"], 20000000 * 1024);
        assert_eq!(m["SwapTotal"], 0);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(m["Hugepagesize"], 2048 * 1024);
    }

    #[test]
    fn os_release_pretty_name_is_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(parse_os_release_pretty_name(text).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(parse_os_release_pretty_name("PRETTY_NAME=Alpine\n").as_deref(), Some("Alpine"));
        assert_eq!(parse_os_release_pretty_name("ID=x\n"), None);
    }

    #[test]
    fn cpu_lists_count_ranges_and_singles() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(8));
        assert_eq!(parse_cpu_list("0,2,4"), Some(3));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn loadavg_gives_the_task_count() {
        assert_eq!(parse_loadavg_tasks("0.81 0.59 1.10 5/121 24857\n"), Some(121));
        assert_eq!(parse_loadavg_tasks("garbage"), None);
    }

    #[test]
    fn bytes_print_as_upstream_binary_quantities() {
        assert_eq!(binary_si(24519812 * 1024), "24519812Ki");
        assert_eq!(binary_si(100 * 1024 * 1024), "100Mi");
        assert_eq!(binary_si(1 << 30), "1Gi");
        assert_eq!(binary_si(0), "0");
        assert_eq!(binary_si(1000), "1000");
        assert_eq!(binary_si(1536), "1536");
        assert_eq!(binary_si(93478772582), "93478772582");
        assert_eq!(hugepages_resource(2 * 1024 * 1024), "hugepages-2Mi");
        assert_eq!(hugepages_resource(1 << 30), "hugepages-1Gi");
    }

    #[test]
    fn this_machine_is_readable() {
        let info = machine_info().unwrap();
        assert!(info.num_cpus >= 1);
        assert!(info.memory_capacity > 0);
        assert!(!info.boot_id.is_empty());
        assert!(!info.kernel_version.is_empty());
        let fs = fs_stats(Path::new("/nonexistent/agent/dir")).unwrap();
        assert!(fs.capacity > 0 && fs.available <= fs.capacity);
        let pids = pid_stats().unwrap();
        assert!(pids.max > pids.running && pids.running > 0);
    }
}
