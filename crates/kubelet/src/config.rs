//! The node agent's settings, shared by all its parts.

use std::net::IpAddr;
use std::path::PathBuf;

/// How the node agent runs. Built by the binary from its flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Node's name (the host name, lower-cased, unless `--node-name`).
    pub node_name: String,
    /// The address other hosts and the API server reach this node at (`--node-ip`).
    pub node_ip: IpAddr,
    /// The machine's host name, reported as the `Hostname` address.
    pub hostname: String,
    /// The agent's data directory: `DATA_DIR/agent`. Layout below it:
    /// `images/` (the image store), `runtime/` (sandboxes, containers), `pods/` (container logs:
    /// `pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`), `kubelet/pods/<uid>/` (pod
    /// volumes and the managed `/etc/hosts`).
    pub agent_dir: PathBuf,
    /// The cluster DNS server(s) written into pods' resolv.conf (`--cluster-dns`).
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (`--cluster-domain`, `cluster.local`).
    pub cluster_domain: String,
    /// The most pods this node runs (`--max-pods`, 110).
    pub max_pods: u32,
    /// The port of the agent's HTTPS API (10250).
    pub port: u16,
    /// PEM of the agent's serving certificate chain and key (issued by the cluster CA).
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// PEM of the CA whose client certificates the agent's HTTPS API accepts (the cluster CA:
    /// the API server presents its kubelet-client certificate).
    pub client_ca_pem: String,
    /// Labels the node registers with (`--node-label`), beside the well-known ones.
    pub node_labels: Vec<(String, String)>,
    /// Taints the node registers with (`--node-taint`, `key=value:Effect`).
    pub node_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// The hard eviction thresholds (`--eviction-hard`): below them the node reports memory or
    /// disk pressure.
    pub eviction_hard: EvictionThresholds,
    /// The eviction manager's soft thresholds, grace periods and pacing (`--eviction-soft` and
    /// friends).
    pub eviction: EvictionConfig,
    /// When unused images are removed (`--image-gc-high-threshold` and friends).
    pub image_gc: crate::image_gc_manager::ImageGcPolicy,
    /// A directory (or one file) of static pod manifests (`--pod-manifest-path`).
    pub pod_manifest_path: Option<PathBuf>,
}

/// Hard eviction thresholds, as upstream's `--eviction-hard` signals (`memory.available`,
/// `nodefs.available`, `imagefs.available`, `nodefs.inodesFree`, `imagefs.inodesFree`,
/// `pid.available`), each an absolute quantity or a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvictionThresholds {
    pub memory_available: Threshold,
    pub nodefs_available: Threshold,
    pub imagefs_available: Threshold,
    pub nodefs_inodes_free: Threshold,
    pub imagefs_inodes_free: Threshold,
    pub pid_available: Threshold,
}

/// An eviction signal (upstream's `evictionapi.Signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    MemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
    ImageFsInodesFree,
    PidAvailable,
}

impl Signal {
    pub const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::PidAvailable,
    ];

    /// The signal's name in flags (`memory.available`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }
}

impl std::str::FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Signal::ALL
            .into_iter()
            .find(|signal| signal.as_str() == s)
            .ok_or_else(|| format!("unsupported eviction signal {s}"))
    }
}

/// The eviction manager's settings beside the hard thresholds, from upstream's kubelet flags.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// `--eviction-soft`: thresholds that must hold for their grace period before pods are evicted.
    pub soft: Vec<(Signal, Threshold)>,
    /// `--eviction-soft-grace-period`: how long each soft threshold must hold.
    pub soft_grace_periods: Vec<(Signal, std::time::Duration)>,
    /// `--eviction-minimum-reclaim`: how far past its threshold a signal must recover before
    /// the pressure counts as relieved.
    pub minimum_reclaim: Vec<(Signal, Threshold)>,
    /// `--eviction-max-pod-grace-period`: the most a pod evicted for a soft threshold gets to
    /// stop, in seconds (negative: the pod's own grace period).
    pub max_pod_grace_period_seconds: i64,
    /// `--eviction-pressure-transition-period`: how long a pressure condition stays after its
    /// last threshold stopped being met (5 minutes).
    pub pressure_transition_period: std::time::Duration,
    /// How often signals are observed (upstream's fixed `evictionMonitoringPeriod`, 10 s).
    pub monitoring_period: std::time::Duration,
}

impl Default for EvictionConfig {
    fn default() -> Self {
        EvictionConfig {
            soft: Vec::new(),
            soft_grace_periods: Vec::new(),
            minimum_reclaim: Vec::new(),
            max_pod_grace_period_seconds: 0,
            pressure_transition_period: std::time::Duration::from_secs(5 * 60),
            monitoring_period: std::time::Duration::from_secs(10),
        }
    }
}

/// `signal<value` statements separated by commas (`--eviction-soft`), in the order given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SignalThresholds(pub Vec<(Signal, Threshold)>);

impl std::str::FromStr for SignalThresholds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        statements(s, '<').map(SignalThresholds)
    }
}

/// `signal=value` statements separated by commas (`--eviction-minimum-reclaim`); a percentage
/// must be above 0%.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MinimumReclaims(pub Vec<(Signal, Threshold)>);

impl std::str::FromStr for MinimumReclaims {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let list = statements(s, '=')?;
        if let Some((signal, _)) = list.iter().find(|(_, t)| *t == Threshold::Fraction(0.0)) {
            return Err(format!("eviction percentage minimum reclaim {} must be positive", signal.as_str()));
        }
        Ok(MinimumReclaims(list))
    }
}

/// Parses `signal<sep>value` pairs separated by commas.
fn statements(s: &str, separator: char) -> Result<Vec<(Signal, Threshold)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (signal, value) = pair.split_once(separator).ok_or_else(|| {
                format!("{pair:?} is not signal{separator}value (e.g. memory.available{separator}100Mi)")
            })?;
            Ok((signal.parse()?, threshold_value(value)?))
        })
        .collect()
}

/// A threshold's value: a quantity, or a percentage of capacity.
fn threshold_value(value: &str) -> Result<Threshold, String> {
    if let Some(percent) = value.strip_suffix('%') {
        let p: f64 = percent.parse().map_err(|_| format!("{value:?} is not a percentage"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("{value:?} is not between 0% and 100%"));
        }
        return Ok(Threshold::Fraction(p / 100.0));
    }
    let bytes = tug_api::quantity::parse(value).ok_or_else(|| format!("{value:?} is not a quantity"))?;
    if bytes < 0.0 {
        return Err(format!("{value:?} is negative"));
    }
    // A binary suffix (`Mi`) keeps the quantity binary; a decimal one (`M`) or none keeps it
    // decimal, as upstream's Quantity does when it prints the threshold in an eviction message.
    if value.trim_end().ends_with('i') {
        Ok(Threshold::Bytes(bytes as u64))
    } else {
        Ok(Threshold::Decimal(bytes as u64))
    }
}

/// One eviction threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// An amount written with a binary suffix (`100Mi`).
    Bytes(u64),
    /// An amount written with a decimal suffix or none (`100M`, `1000`).
    Decimal(u64),
    /// A fraction of capacity, 0.0 to 1.0.
    Fraction(f64),
}

impl Threshold {
    /// The threshold in bytes for a resource of `capacity` bytes.
    pub fn bytes_of(self, capacity: u64) -> u64 {
        match self {
            Threshold::Bytes(b) | Threshold::Decimal(b) => b,
            Threshold::Fraction(f) => (capacity as f64 * f) as u64,
        }
    }
}

impl Default for EvictionThresholds {
    /// Upstream's defaults: `memory.available<100Mi,nodefs.available<10%,imagefs.available<15%`,
    /// `nodefs.inodesFree<5%,imagefs.inodesFree<5%`. Upstream sets no `pid.available`, which
    /// leaves PIDPressure unable to ever show; here it is 5% of the kernel's pids.
    fn default() -> Self {
        EvictionThresholds {
            memory_available: Threshold::Bytes(100 * 1024 * 1024),
            nodefs_available: Threshold::Fraction(0.10),
            imagefs_available: Threshold::Fraction(0.15),
            nodefs_inodes_free: Threshold::Fraction(0.05),
            imagefs_inodes_free: Threshold::Fraction(0.05),
            pid_available: Threshold::Fraction(0.05),
        }
    }
}

impl EvictionThresholds {
    /// The threshold of `signal`.
    pub fn get(&self, signal: Signal) -> Threshold {
        let mut copy = *self;
        *copy.get_mut(signal)
    }

    fn get_mut(&mut self, signal: Signal) -> &mut Threshold {
        match signal {
            Signal::MemoryAvailable => &mut self.memory_available,
            Signal::NodeFsAvailable => &mut self.nodefs_available,
            Signal::NodeFsInodesFree => &mut self.nodefs_inodes_free,
            Signal::ImageFsAvailable => &mut self.imagefs_available,
            Signal::ImageFsInodesFree => &mut self.imagefs_inodes_free,
            Signal::PidAvailable => &mut self.pid_available,
        }
    }
}

impl std::str::FromStr for EvictionThresholds {
    type Err = String;

    /// Parses `signal<value` pairs separated by commas, as the kubelet's flag; signals not
    /// named keep upstream's default, as the kubelet does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut thresholds = EvictionThresholds::default();
        for (signal, threshold) in statements(s, '<')? {
            *thresholds.get_mut(signal) = threshold;
        }
        Ok(thresholds)
    }
}

impl Config {
    /// A configuration for tests: node `node-1` at 192.168.5.10 with its data under `agent_dir`,
    /// upstream's defaults elsewhere and no certificates.
    #[cfg(test)]
    pub(crate) fn for_tests(agent_dir: &std::path::Path) -> Config {
        Config {
            node_name: "node-1".into(),
            node_ip: "192.168.5.10".parse().expect("an IP address"),
            hostname: "host-1".into(),
            agent_dir: agent_dir.to_path_buf(),
            cluster_dns: vec!["10.43.0.10".parse().expect("an IP address")],
            cluster_domain: "cluster.local".into(),
            max_pods: 110,
            port: 10250,
            serving_cert_pem: String::new(),
            serving_key_pem: String::new(),
            client_ca_pem: String::new(),
            node_labels: Vec::new(),
            node_taints: Vec::new(),
            eviction_hard: Default::default(),
            eviction: Default::default(),
            image_gc: Default::default(),
            pod_manifest_path: None,
        }
    }

    /// The directory holding every container log, one subdirectory per pod.
    pub fn log_root(&self) -> PathBuf {
        self.agent_dir.join("pods")
    }

    /// A pod's log directory: `pods/<namespace>_<name>_<uid>`, as upstream's `/var/log/pods`.
    pub fn pod_log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.log_root().join(format!("{namespace}_{name}_{uid}"))
    }

    /// A pod's working directory (volumes, the managed `/etc/hosts`).
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.agent_dir.join("kubelet").join("pods").join(uid)
    }

    /// Where the built-in runtime keeps sandboxes and containers.
    pub fn runtime_dir(&self) -> PathBuf {
        self.agent_dir.join("runtime")
    }

    /// Where the image store lives.
    pub fn image_dir(&self) -> PathBuf {
        self.agent_dir.join("images")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_thresholds_parse_like_the_kubelet_flag() {
        let parsed: EvictionThresholds = "memory.available<200Mi, nodefs.available<1%".parse().unwrap();
        assert_eq!(parsed.memory_available, Threshold::Bytes(200 * 1024 * 1024));
        assert_eq!(parsed.nodefs_available, Threshold::Fraction(0.01));
        assert_eq!(parsed.imagefs_available, Threshold::Fraction(0.15));
        assert_eq!(Threshold::Fraction(0.1).bytes_of(1000), 100);
        assert!("disk<1%".parse::<EvictionThresholds>().is_err());
        assert!("memory.available=1Gi".parse::<EvictionThresholds>().is_err());
        assert!("nodefs.available<120%".parse::<EvictionThresholds>().is_err());
        let inodes: EvictionThresholds = "nodefs.inodesFree<10%,pid.available<1000".parse().unwrap();
        assert_eq!(inodes.get(Signal::NodeFsInodesFree), Threshold::Fraction(0.1));
        assert_eq!(inodes.get(Signal::PidAvailable), Threshold::Decimal(1000));
        let decimal: EvictionThresholds = "memory.available<100M".parse().unwrap();
        assert_eq!(decimal.memory_available, Threshold::Decimal(100_000_000));
        assert_eq!(inodes.get(Signal::ImageFsInodesFree), Threshold::Fraction(0.05));
    }

    #[test]
    fn soft_thresholds_and_minimum_reclaims_parse_like_the_kubelet_flags() {
        let soft: SignalThresholds = "memory.available<1.5Gi,nodefs.available<20%".parse().unwrap();
        assert_eq!(
            soft.0,
            [
                (Signal::MemoryAvailable, Threshold::Bytes(1536 * 1024 * 1024)),
                (Signal::NodeFsAvailable, Threshold::Fraction(0.2))
            ]
        );
        let reclaim: MinimumReclaims = "memory.available=0Mi,nodefs.available=500Mi".parse().unwrap();
        assert_eq!(reclaim.0[1], (Signal::NodeFsAvailable, Threshold::Bytes(500 * 1024 * 1024)));
        assert_eq!(
            "memory.available=0%".parse::<MinimumReclaims>().unwrap_err(),
            "eviction percentage minimum reclaim memory.available must be positive"
        );
        assert_eq!("disk<1%".parse::<SignalThresholds>().unwrap_err(), "unsupported eviction signal disk");
    }
}
