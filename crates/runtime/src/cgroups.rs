//! Pod-level and QoS-tier cgroups, written directly in the cgroup filesystem: the role of the
//! kubelet's `cgroupfs` driver (`/kubepods`, `/kubepods/burstable`, `/kubepods/burstable/pod<uid>`).
//! The containers' own cgroups below them are created by the OCI runtime from the spec's
//! `cgroupsPath`.
//!
//! On cgroup v1 every path exists once per hierarchy (`/sys/fs/cgroup/<controller>/<path>`); on v2
//! once in the unified tree, with the controllers enabled in each parent's `cgroup.subtree_control`.
//! Which one the host uses is read from the mounts: a v2 mount at `/sys/fs/cgroup` with no
//! controllers delegated to it (a hybrid host) does not count as v2.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// The v1 controllers a pod cgroup is created in.
const V1_CONTROLLERS: [&str; 7] = ["cpu", "cpuacct", "memory", "pids", "cpuset", "freezer", "blkio"];

/// The v2 controllers enabled for pod cgroups.
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// How long [`remove`] waits for killed processes to leave and for directories to empty.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The limits of a pod or QoS cgroup. `None` removes a limit (back to the kernel's default);
/// shares left `None` stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per period.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// Resource usage of a cgroup, for stats, metrics and memory-pressure eviction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// Memory in use minus inactive file pages: what the kubelet calls the working set.
    pub memory_working_set_bytes: u64,
    pub memory_usage_bytes: u64,
    /// CPU time consumed, in nanoseconds.
    pub cpu_usage_nanos: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup path {path:?}: it must be absolute, below the root, without `..`")]
    InvalidPath { path: String },
    #[error("no cgroup hierarchy is mounted for {controller}")]
    NotMounted { controller: &'static str },
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} still has processes after they were killed")]
    Busy { path: PathBuf },
    #[error("unexpected content in {path}")]
    Parse { path: PathBuf },
}

fn io_error<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { operation, path: path.to_owned(), source }
}

/// Which cgroup version this host runs containers under.
pub fn detect() -> CgroupVersion {
    let root = Path::new("/sys/fs/cgroup");
    let is_cgroup2 = rustix::fs::statfs(root).is_ok_and(|stat| stat.f_type as u64 == CGROUP2_SUPER_MAGIC);
    let has_controllers =
        std::fs::read_to_string(root.join("cgroup.controllers")).is_ok_and(|text| !text.trim().is_empty());
    if is_cgroup2 && has_controllers { CgroupVersion::V2 } else { CgroupVersion::V1 }
}

/// The mounted cgroup filesystems, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, Default)]
struct Mounts {
    /// v1 controller name -> its hierarchy's mount point.
    v1: BTreeMap<String, PathBuf>,
    /// Every v1 hierarchy (including named ones such as `name=systemd`).
    v1_hierarchies: Vec<PathBuf>,
    v2: Option<PathBuf>,
}

impl Mounts {
    fn read() -> Result<Mounts, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(io_error("reading", path))?;
        let mut mounts = Mounts::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let Some(mount_point) = left.split(' ').nth(4) else { continue };
            let mut right = right.split(' ');
            let fs_type = right.next().unwrap_or("");
            let super_options = right.nth(1).unwrap_or("");
            let mount_point = PathBuf::from(crate::rootfs::unescape_mountinfo(mount_point));
            match fs_type {
                "cgroup2" if mounts.v2.is_none() || mount_point == Path::new("/sys/fs/cgroup") => {
                    mounts.v2 = Some(mount_point);
                }
                "cgroup" => {
                    for option in super_options.split(',') {
                        if V1_CONTROLLERS.contains(&option) || option == "devices" || option == "hugetlb" {
                            mounts.v1.entry(option.to_owned()).or_insert_with(|| mount_point.clone());
                        }
                    }
                    if !mounts.v1_hierarchies.contains(&mount_point) {
                        mounts.v1_hierarchies.push(mount_point);
                    }
                }
                _ => {}
            }
        }
        Ok(mounts)
    }

    /// The v1 hierarchies of the controllers we use, each once.
    fn v1_used(&self) -> Vec<(&'static str, &Path)> {
        let mut seen: Vec<&Path> = Vec::new();
        let mut used = Vec::new();
        for controller in V1_CONTROLLERS {
            if let Some(mount) = self.v1.get(controller)
                && !seen.contains(&mount.as_path())
            {
                seen.push(mount);
                used.push((controller, mount.as_path()));
            }
        }
        used
    }

    fn v2_root(&self) -> Result<&Path, CgroupError> {
        self.v2.as_deref().ok_or(CgroupError::NotMounted { controller: "cgroup2" })
    }

    fn v1_dir(&self, controller: &'static str, relative: &Path) -> Result<PathBuf, CgroupError> {
        Ok(self.v1.get(controller).ok_or(CgroupError::NotMounted { controller })?.join(relative))
    }
}

/// `"/kubepods/burstable/pod1"` as a relative path, refusing the root itself and `..`.
fn relative(path: &str) -> Result<PathBuf, CgroupError> {
    let invalid = || CgroupError::InvalidPath { path: path.to_owned() };
    if !path.starts_with('/') {
        return Err(invalid());
    }
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => relative.push(part),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return Err(invalid()),
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(invalid());
    }
    Ok(relative)
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io_error("writing", &path))
}

fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(io_error("reading", &path))
}

fn create_dir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Io { operation: "creating", path: path.to_owned(), source }),
    }
}

/// Creates (or updates) the cgroup `path` (absolute from the cgroup root, e.g.
/// `/kubepods/burstable/pod<uid>`) in every controller used and writes `limits`.
pub fn ensure(path: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
    let relative = relative(path)?;
    let mounts = Mounts::read()?;
    match detect() {
        CgroupVersion::V1 => ensure_v1(&mounts, &relative, limits),
        CgroupVersion::V2 => ensure_v2(mounts.v2_root()?, &relative, limits),
    }
}

fn ensure_v1(mounts: &Mounts, relative: &Path, limits: &CgroupLimits) -> Result<(), CgroupError> {
    for (controller, mount) in mounts.v1_used() {
        let mut dir = mount.to_owned();
        for part in relative.iter() {
            let parent = dir.clone();
            dir.push(part);
            let created = create_dir(&dir)?;
            // A new cpuset cgroup has no cpus and no memory nodes: tasks could not join it.
            if controller == "cpuset" || mounts.v1.get("cpuset").is_some_and(|cpuset| cpuset == mount) {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    if created || read(&dir, file)?.trim().is_empty() {
                        write(&dir, file, read(&parent, file)?.trim())?;
                    }
                }
            }
        }
    }

    let cpu = mounts.v1_dir("cpu", relative)?;
    if let Some(shares) = limits.cpu_shares {
        write(&cpu, "cpu.shares", &shares.to_string())?;
    }
    // The period first: a quota is validated against the period in force.
    if let Some(period) = limits.cpu_period {
        write(&cpu, "cpu.cfs_period_us", &period.to_string())?;
    }
    write(&cpu, "cpu.cfs_quota_us", &limits.cpu_quota.filter(|quota| *quota > 0).unwrap_or(-1).to_string())?;
    let memory = mounts.v1_dir("memory", relative)?;
    write(&memory, "memory.limit_in_bytes", &limits.memory_limit.filter(|limit| *limit > 0).unwrap_or(-1).to_string())?;
    let pids = mounts.v1_dir("pids", relative)?;
    write(
        &pids,
        "pids.max",
        &limits.pids_limit.filter(|limit| *limit > 0).map_or("max".to_owned(), |l| l.to_string()),
    )?;
    Ok(())
}

fn ensure_v2(root: &Path, relative: &Path, limits: &CgroupLimits) -> Result<(), CgroupError> {
    let mut dir = root.to_owned();
    for part in relative.iter() {
        enable_controllers(&dir)?;
        dir.push(part);
        create_dir(&dir)?;
    }
    if let Some(shares) = limits.cpu_shares {
        write(&dir, "cpu.weight", &shares_to_weight(shares).to_string())?;
    }
    let quota = limits.cpu_quota.filter(|quota| *quota > 0).map_or("max".to_owned(), |quota| quota.to_string());
    write(&dir, "cpu.max", &format!("{quota} {}", limits.cpu_period.unwrap_or(100_000)))?;
    write(
        &dir,
        "memory.max",
        &limits.memory_limit.filter(|limit| *limit > 0).map_or("max".to_owned(), |l| l.to_string()),
    )?;
    write(&dir, "pids.max", &limits.pids_limit.filter(|limit| *limit > 0).map_or("max".to_owned(), |l| l.to_string()))?;
    Ok(())
}

/// Enables our controllers for the children of `dir`, those that `dir` itself has.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = read(dir, "cgroup.controllers")?;
    let enabled = read(dir, "cgroup.subtree_control")?;
    let missing: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|controller| available.split_whitespace().any(|c| c == **controller))
        .filter(|controller| !enabled.split_whitespace().any(|c| c == **controller))
        .map(|controller| format!("+{controller}"))
        .collect();
    if missing.is_empty() { Ok(()) } else { write(dir, "cgroup.subtree_control", &missing.join(" ")) }
}

/// cgroup v1 `cpu.shares` ([2, 262144]) as v2 `cpu.weight` ([1, 10000]): the quadratic fit of
/// opencontainers/cgroups, which maps the default 1024 shares to the default weight 100.
pub fn shares_to_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        262_144.. => 10_000,
        _ => {
            let log = (shares as f64).log2();
            let exponent = (log * log + 125.0 * log) / 612.0 - 7.0 / 34.0;
            10f64.powf(exponent).ceil() as u64
        }
    }
}

/// The directories of `path` in every hierarchy where it exists.
fn existing_dirs(mounts: &Mounts, relative: &Path, version: CgroupVersion) -> Result<Vec<PathBuf>, CgroupError> {
    let roots: Vec<PathBuf> = match version {
        CgroupVersion::V1 => mounts.v1_hierarchies.clone(),
        CgroupVersion::V2 => vec![mounts.v2_root()?.to_owned()],
    };
    Ok(roots.into_iter().map(|root| root.join(relative)).filter(|dir| dir.is_dir()).collect())
}

/// Every directory at or below `dir`, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    let mut index = 0;
    while index < all.len() {
        if let Ok(entries) = std::fs::read_dir(&all[index]) {
            all.extend(entries.flatten().filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
        index += 1;
    }
    all.reverse();
    all
}

fn procs_of(dirs: &[PathBuf]) -> Vec<u32> {
    let mut pids: Vec<u32> = dirs
        .iter()
        .flat_map(|dir| subtree(dir))
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| text.lines().filter_map(|line| line.trim().parse().ok()).collect::<Vec<u32>>())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The processes in `path` and in the cgroups below it.
pub fn pids(path: &str) -> Result<Vec<u32>, CgroupError> {
    let relative = relative(path)?;
    let mounts = Mounts::read()?;
    Ok(procs_of(&existing_dirs(&mounts, &relative, detect())?))
}

/// Kills every process left in `path` and below it (freezing them first so none can fork
/// away), then removes the directories bottom-up in every hierarchy. Removing an absent
/// cgroup succeeds.
pub fn remove(path: &str) -> Result<(), CgroupError> {
    let relative = relative(path)?;
    let mounts = Mounts::read()?;
    let version = detect();
    let dirs = existing_dirs(&mounts, &relative, version)?;
    if dirs.is_empty() {
        return Ok(());
    }
    kill_all(&mounts, &relative, version, &dirs)?;
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    for dir in &dirs {
        for cgroup in subtree(dir) {
            remove_dir(&cgroup, deadline)?;
        }
    }
    tracing::debug!(path, "removed cgroup");
    Ok(())
}

fn kill_all(mounts: &Mounts, relative: &Path, version: CgroupVersion, dirs: &[PathBuf]) -> Result<(), CgroupError> {
    if procs_of(dirs).is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    if version == CgroupVersion::V2 {
        let dir = mounts.v2_root()?.join(relative);
        // cgroup.kill (Linux 5.14) kills the whole subtree atomically.
        if dir.join("cgroup.kill").exists() {
            write(&dir, "cgroup.kill", "1")?;
            return wait_empty(dirs, deadline);
        }
    }
    let frozen = freeze(mounts, relative, version, true);
    loop {
        let pids = procs_of(dirs);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                // A process that is gone already is what we want.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        // Frozen processes die only once thawed.
        if frozen {
            freeze(mounts, relative, version, false);
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Busy { path: dirs[0].clone() });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn wait_empty(dirs: &[PathBuf], deadline: Instant) -> Result<(), CgroupError> {
    while !procs_of(dirs).is_empty() {
        if Instant::now() >= deadline {
            return Err(CgroupError::Busy { path: dirs[0].clone() });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Freezes (or thaws) the subtree; returns whether it is frozen. Best effort: without a
/// freezer the processes are killed unfrozen.
fn freeze(mounts: &Mounts, relative: &Path, version: CgroupVersion, frozen: bool) -> bool {
    let (dir, file, value, done) = match version {
        CgroupVersion::V1 => {
            let Ok(dir) = mounts.v1_dir("freezer", relative) else { return false };
            (dir, "freezer.state", if frozen { "FROZEN" } else { "THAWED" }, if frozen { "FROZEN" } else { "THAWED" })
        }
        CgroupVersion::V2 => {
            let dir = match mounts.v2_root() {
                Ok(root) => root.join(relative),
                Err(_) => return false,
            };
            (dir, "cgroup.freeze", if frozen { "1" } else { "0" }, if frozen { "frozen 1" } else { "frozen 0" })
        }
    };
    if write(&dir, file, value).is_err() {
        return false;
    }
    if !frozen {
        return false;
    }
    // Freezing is asynchronous: wait briefly until the state says so.
    let state_file = if version == CgroupVersion::V1 { "freezer.state" } else { "cgroup.events" };
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match read(&dir, state_file) {
            Ok(state) if state.lines().any(|line| line.trim() == done) => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return false,
        }
    }
    true
}

fn remove_dir(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Killed processes leave the cgroup asynchronously.
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                if Instant::now() >= deadline {
                    return Err(CgroupError::Busy { path: dir.to_owned() });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => return Err(CgroupError::Io { operation: "removing", path: dir.to_owned(), source }),
        }
    }
}

/// Memory and CPU usage of `path` (including everything below it).
pub fn usage(path: &str) -> Result<CgroupUsage, CgroupError> {
    let relative = relative(path)?;
    let mounts = Mounts::read()?;
    match detect() {
        CgroupVersion::V1 => usage_v1(&mounts.v1_dir("memory", &relative)?, &mounts.v1_dir("cpuacct", &relative)?),
        CgroupVersion::V2 => usage_v2(&mounts.v2_root()?.join(&relative)),
    }
}

/// Usage from a v1 cgroup's `memory` and `cpuacct` directories: the working set is
/// `memory.usage_in_bytes` minus `total_inactive_file`, as cadvisor computes it.
fn usage_v1(memory: &Path, cpuacct: &Path) -> Result<CgroupUsage, CgroupError> {
    let usage = parse_u64(memory, "memory.usage_in_bytes")?;
    let inactive = stat_field(&read(memory, "memory.stat")?, "total_inactive_file").unwrap_or(0);
    Ok(CgroupUsage {
        memory_working_set_bytes: usage.saturating_sub(inactive),
        memory_usage_bytes: usage,
        cpu_usage_nanos: parse_u64(cpuacct, "cpuacct.usage")?,
    })
}

/// Usage from a v2 cgroup directory: `memory.current` minus `inactive_file`, and `cpu.stat`'s
/// `usage_usec`.
fn usage_v2(dir: &Path) -> Result<CgroupUsage, CgroupError> {
    let usage = parse_u64(dir, "memory.current")?;
    let inactive = stat_field(&read(dir, "memory.stat")?, "inactive_file").unwrap_or(0);
    let cpu_usec = stat_field(&read(dir, "cpu.stat")?, "usage_usec").unwrap_or(0);
    Ok(CgroupUsage {
        memory_working_set_bytes: usage.saturating_sub(inactive),
        memory_usage_bytes: usage,
        cpu_usage_nanos: cpu_usec.saturating_mul(1000),
    })
}

fn parse_u64(dir: &Path, file: &str) -> Result<u64, CgroupError> {
    read(dir, file)?.trim().parse().map_err(|_| CgroupError::Parse { path: dir.join(file) })
}

/// The value of `key` in a flat-keyed file such as `memory.stat` (`key value` lines).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root tests skip outside CI when not root, and fail under `CI=true`.
    fn require_root() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert!(std::env::var("CI").as_deref() != Ok("true"), "this test needs root (CI=true)");
        eprintln!("skipping: this test needs root");
        false
    }

    /// Removes the test's cgroups even when an assertion fails.
    struct Cleanup(String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = remove(&self.0);
        }
    }

    #[test]
    fn shares_convert_to_weights_as_opencontainers_cgroups() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(102), 17);
        assert!(shares_to_weight(512) < 100 && shares_to_weight(2048) > 100);
    }

    #[test]
    fn paths_must_be_absolute_and_below_the_root() {
        assert_eq!(relative("/kubepods/burstable/pod1").unwrap(), PathBuf::from("kubepods/burstable/pod1"));
        for bad in ["", "/", "/.", "kubepods", "/kubepods/../etc"] {
            assert!(matches!(relative(bad), Err(CgroupError::InvalidPath { .. })), "{bad:?}");
        }
    }

    #[test]
    fn stat_files_are_read_by_key() {
        let text = "cache 10\ninactive_file 4096\ntotal_inactive_file 8192\n";
        assert_eq!(stat_field(text, "inactive_file"), Some(4096));
        assert_eq!(stat_field(text, "total_inactive_file"), Some(8192));
        assert_eq!(stat_field(text, "missing"), None);
    }

    #[test]
    fn usage_is_read_from_v1_and_v2_files_with_the_inactive_file_pages_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let (memory, cpuacct, unified) = (dir.path().join("memory"), dir.path().join("cpuacct"), dir.path().join("v2"));
        for d in [&memory, &cpuacct, &unified] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(memory.join("memory.usage_in_bytes"), "10485760\n").unwrap();
        std::fs::write(memory.join("memory.stat"), "inactive_file 1\ntotal_inactive_file 2097152\n").unwrap();
        std::fs::write(cpuacct.join("cpuacct.usage"), "123456789\n").unwrap();
        let v1 = usage_v1(&memory, &cpuacct).unwrap();
        assert_eq!(
            v1,
            CgroupUsage { memory_working_set_bytes: 8388608, memory_usage_bytes: 10485760, cpu_usage_nanos: 123456789 }
        );

        std::fs::write(unified.join("memory.current"), "4096000\n").unwrap();
        std::fs::write(unified.join("memory.stat"), "anon 1\ninactive_file 96000\n").unwrap();
        std::fs::write(unified.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n").unwrap();
        let v2 = usage_v2(&unified).unwrap();
        assert_eq!(
            v2,
            CgroupUsage { memory_working_set_bytes: 4000000, memory_usage_bytes: 4096000, cpu_usage_nanos: 2_500_000 }
        );

        // More inactive pages than usage (a racy read) is no working set rather than an underflow.
        std::fs::write(memory.join("memory.stat"), "total_inactive_file 99999999\n").unwrap();
        assert_eq!(usage_v1(&memory, &cpuacct).unwrap().memory_working_set_bytes, 0);
        std::fs::remove_file(cpuacct.join("cpuacct.usage")).unwrap();
        assert!(matches!(usage_v1(&memory, &cpuacct), Err(CgroupError::Io { .. })));
    }

    #[test]
    fn this_hybrid_host_is_detected_as_v1() {
        // On a cgroup v2 host /sys/fs/cgroup is a cgroup2 mount with controllers; a hybrid host
        // (a tmpfs of v1 hierarchies) is v1 even though a v2 mount exists.
        let is_cgroup2 = rustix::fs::statfs("/sys/fs/cgroup").is_ok_and(|s| s.f_type as u64 == CGROUP2_SUPER_MAGIC);
        if !is_cgroup2 {
            assert_eq!(detect(), CgroupVersion::V1);
        }
    }

    #[test]
    fn pod_cgroup_is_created_with_limits_and_removed_with_its_processes() {
        if !require_root() {
            return;
        }
        let top = format!("/tugboat-test-{:016x}", fastrand::u64(..));
        let _cleanup = Cleanup(top.clone());
        let pod = format!("{top}/burstable/pod1");
        let limits = CgroupLimits {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
            pids_limit: Some(100),
        };
        ensure(&pod, &limits).unwrap();
        ensure(&pod, &limits).unwrap();
        let mounts = Mounts::read().unwrap();
        let relative = relative(&pod).unwrap();
        match detect() {
            CgroupVersion::V1 => {
                let cpu = mounts.v1_dir("cpu", &relative).unwrap();
                assert_eq!(read(&cpu, "cpu.shares").unwrap().trim(), "512");
                assert_eq!(read(&cpu, "cpu.cfs_quota_us").unwrap().trim(), "50000");
                assert_eq!(read(&cpu, "cpu.cfs_period_us").unwrap().trim(), "100000");
                let memory = mounts.v1_dir("memory", &relative).unwrap();
                assert_eq!(read(&memory, "memory.limit_in_bytes").unwrap().trim(), (64u64 << 20).to_string());
                let pids = mounts.v1_dir("pids", &relative).unwrap();
                assert_eq!(read(&pids, "pids.max").unwrap().trim(), "100");
                if let Ok(cpuset) = mounts.v1_dir("cpuset", &relative) {
                    assert!(!read(&cpuset, "cpuset.cpus").unwrap().trim().is_empty());
                    assert!(!read(&cpuset, "cpuset.mems").unwrap().trim().is_empty());
                }
            }
            CgroupVersion::V2 => {
                let dir = mounts.v2_root().unwrap().join(&relative);
                assert_eq!(read(&dir, "cpu.weight").unwrap().trim(), shares_to_weight(512).to_string());
                assert_eq!(read(&dir, "cpu.max").unwrap().trim(), "50000 100000");
                assert_eq!(read(&dir, "memory.max").unwrap().trim(), (64u64 << 20).to_string());
                assert_eq!(read(&dir, "pids.max").unwrap().trim(), "100");
            }
        }

        // Updating removes limits no longer asked for.
        ensure(&pod, &CgroupLimits { cpu_shares: Some(2), ..CgroupLimits::default() }).unwrap();
        if detect() == CgroupVersion::V1 {
            let memory = mounts.v1_dir("memory", &relative).unwrap();
            assert_ne!(read(&memory, "memory.limit_in_bytes").unwrap().trim(), (64u64 << 20).to_string());
            assert_eq!(read(&mounts.v1_dir("pids", &relative).unwrap(), "pids.max").unwrap().trim(), "max");
        }

        // A process moved into a child cgroup is killed by removing the top.
        let child_path = format!("{pod}/container");
        ensure(&child_path, &CgroupLimits::default()).unwrap();
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let child_relative = super::relative(&child_path).unwrap();
        let dirs: Vec<PathBuf> = match detect() {
            CgroupVersion::V1 => mounts.v1_used().iter().map(|(_, mount)| mount.join(&child_relative)).collect(),
            CgroupVersion::V2 => vec![mounts.v2_root().unwrap().join(&child_relative)],
        };
        for dir in &dirs {
            write(dir, "cgroup.procs", &child.id().to_string()).unwrap();
        }
        assert_eq!(pids(&top).unwrap(), vec![child.id()]);
        let usage = usage(&pod).unwrap();
        assert!(usage.memory_usage_bytes >= usage.memory_working_set_bytes);

        remove(&top).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        for dir in &dirs {
            assert!(!dir.exists(), "{} removed", dir.display());
        }
        for hierarchy in &mounts.v1_hierarchies {
            assert!(!hierarchy.join(top.trim_start_matches('/')).exists());
        }
        remove(&top).unwrap();
        assert!(pids(&top).unwrap().is_empty());
    }
}
