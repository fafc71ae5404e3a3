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
    /// The directory of static pod manifests (`--pod-manifest-path`), if any.
    pub pod_manifest_path: Option<PathBuf>,
}

impl Config {
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
