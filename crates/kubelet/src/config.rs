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
    /// When unused images are removed (`--image-gc-high-threshold` and friends).
    pub image_gc: crate::image_gc_manager::ImageGcPolicy,
    /// A directory (or one file) of static pod manifests (`--pod-manifest-path`).
    pub pod_manifest_path: Option<PathBuf>,
}

/// Hard eviction thresholds, as upstream's `--eviction-hard` signals (`memory.available`,
/// `nodefs.available`, `imagefs.available`), each an absolute quantity or a percentage of
/// capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvictionThresholds {
    pub memory_available: Threshold,
    pub nodefs_available: Threshold,
    pub imagefs_available: Threshold,
}

/// One eviction threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    /// A fraction of capacity, 0.0 to 1.0.
    Fraction(f64),
}

impl Threshold {
    /// The threshold in bytes for a resource of `capacity` bytes.
    pub fn bytes_of(self, capacity: u64) -> u64 {
        match self {
            Threshold::Bytes(b) => b,
            Threshold::Fraction(f) => (capacity as f64 * f) as u64,
        }
    }
}

impl Default for EvictionThresholds {
    /// Upstream's defaults: `memory.available<100Mi,nodefs.available<10%,imagefs.available<15%`.
    fn default() -> Self {
        EvictionThresholds {
            memory_available: Threshold::Bytes(100 * 1024 * 1024),
            nodefs_available: Threshold::Fraction(0.10),
            imagefs_available: Threshold::Fraction(0.15),
        }
    }
}

impl std::str::FromStr for EvictionThresholds {
    type Err = String;

    /// Parses `signal<value` pairs separated by commas, as the kubelet's flag; signals not
    /// named keep upstream's default, as the kubelet does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut thresholds = EvictionThresholds::default();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = pair
                .split_once('<')
                .ok_or_else(|| format!("{pair:?} is not signal<value (e.g. memory.available<100Mi)"))?;
            let threshold = if let Some(percent) = value.strip_suffix('%') {
                let p: f64 = percent.parse().map_err(|_| format!("{value:?} is not a percentage"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!("{value:?} is not between 0% and 100%"));
                }
                Threshold::Fraction(p / 100.0)
            } else {
                let bytes = tug_api::quantity::parse(value).ok_or_else(|| format!("{value:?} is not a quantity"))?;
                if bytes < 0.0 {
                    return Err(format!("{value:?} is negative"));
                }
                Threshold::Bytes(bytes as u64)
            };
            match signal {
                "memory.available" => thresholds.memory_available = threshold,
                "nodefs.available" => thresholds.nodefs_available = threshold,
                "imagefs.available" => thresholds.imagefs_available = threshold,
                other => return Err(format!("unsupported eviction signal {other:?}")),
            }
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
    }
}
