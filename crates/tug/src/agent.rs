//! The node agent's flags and its start beside the control plane (`tug server`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use tug_network::bridge::BridgeConfig;
use tug_network::cni::{CniConfig, CniNetwork};
use tug_network::overlay::{Backend, Overlay};
use tug_network::runtime_cni::{RuntimeCniConfig, RuntimeCniNetwork};
use tug_network::{BridgeNetwork, NetworkStatus, PodNetwork};
use tug_runtime::builtin::BuiltinRuntime;
use tug_runtime::image::{BuiltinImageService, ImageStore, PullOptions, Puller};
use tug_runtime::remote::RemoteRuntime;
use tug_runtime::shim::client::ShimBinary;

/// Flags of the node agent, shared by `tug server` and `tug agent`; names as k3s's.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// The node's name (default: the host name, lower-cased).
    #[arg(long, env = "TUG_NODE_NAME")]
    pub node_name: Option<String>,

    /// The address the node advertises (default: the host's primary address).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,

    /// A label the node registers with (`key=value`); repeatable.
    #[arg(long = "node-label", value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,

    /// A taint the node registers with (`key=value:Effect`); repeatable.
    #[arg(long = "node-taint", value_parser = parse_taint)]
    pub node_taints: Vec<k8s_openapi::api::core::v1::Taint>,

    /// The cluster DNS server written into pods' resolv.conf.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,

    /// The most pods this node runs.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,

    /// Port of the node agent's HTTPS API (logs, exec, attach, port-forward).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,

    /// Hard eviction thresholds: below them the node reports memory or disk pressure (and is
    /// tainted so no new pods land on it) and evicts pods at once. Upstream's defaults unless
    /// set; given twice, the last wins.
    #[arg(
        long,
        default_value = "memory.available<100Mi,nodefs.available<10%,imagefs.available<15%",
        overrides_with = "eviction_hard"
    )]
    pub eviction_hard: tug_kubelet::config::EvictionThresholds,

    /// Soft eviction thresholds (`signal<value`, e.g. `memory.available<1.5Gi`): pods are
    /// evicted once one has held for its --eviction-soft-grace-period.
    #[arg(long, value_name = "SIGNAL<VALUE,...")]
    pub eviction_soft: Option<tug_kubelet::config::SignalThresholds>,

    /// How long each soft threshold must hold before pods are evicted (`signal=duration`, e.g.
    /// `memory.available=1m30s`).
    #[arg(long, value_name = "SIGNAL=DURATION,...", value_parser = parse_grace_periods)]
    pub eviction_soft_grace_period: Option<SoftGracePeriods>,

    /// How much past its threshold a signal must recover before its pressure is relieved
    /// (`signal=value`, e.g. `nodefs.available=500Mi`).
    #[arg(long, value_name = "SIGNAL=VALUE,...")]
    pub eviction_minimum_reclaim: Option<tug_kubelet::config::MinimumReclaims>,

    /// The most seconds a pod evicted for a soft threshold gets to stop; negative: its own
    /// grace period.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub eviction_max_pod_grace_period: i32,

    /// How long a pressure condition stays after its thresholds stopped being met.
    #[arg(long, default_value = "5m0s", value_parser = crate::server::parse_duration)]
    pub eviction_pressure_transition_period: std::time::Duration,

    /// How often the eviction manager observes the node (upstream's fixed 10s; for tests).
    #[arg(long, default_value = "10s", value_parser = crate::server::parse_duration, hide = true)]
    pub eviction_monitoring_period: std::time::Duration,

    /// Disk usage (percent) of the image filesystem at which unused images are removed; 100
    /// turns image garbage collection off.
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: u8,

    /// Disk usage (percent) image garbage collection brings the image filesystem down to.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,

    /// Unused images younger than this are never removed (e.g. 2m).
    #[arg(long, default_value = "2m", value_parser = crate::server::parse_duration)]
    pub minimum_image_ttl_duration: std::time::Duration,

    /// A directory (or a single file) of static pod manifests: the agent runs those pods
    /// itself, even without the API server, and shows each in the API as a mirror pod.
    #[arg(long, value_name = "PATH")]
    pub pod_manifest_path: Option<std::path::PathBuf>,

    /// The pod network between nodes, as k3s names flannel's backends: `vxlan` (an overlay;
    /// pods' MTU is the node link's less 50), `host-gw` (routes, nodes on one L2 segment), or
    /// `none` (no built-in pod network: pods get a loopback only; with
    /// --container-runtime-endpoint, the runtime's CNI configuration is the operator's).
    #[arg(long, value_enum, default_value = "vxlan")]
    pub flannel_backend: FlannelBackend,

    /// Delegate the pod network to the CNI plugins configured in this directory (the first
    /// `*.conflist`/`*.conf`/`*.json`, as containerd reads `/etc/cni/net.d`) instead of the
    /// built-in bridge; no overlay runs then.
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<std::path::PathBuf>,

    /// Drive an external CRI runtime at this socket (`unix:///run/containerd/containerd.sock`)
    /// instead of the built-in one, as the kubelet's flag of that name. The runtime's own CNI
    /// plugins give pods their network: unless another configuration is there, the agent writes
    /// a bridge configuration for the node's podCIDR into --cni-conf-dir (default
    /// /etc/cni/net.d, where containerd reads), as k3s does for its flannel, and runs the
    /// --flannel-backend overlay between the nodes.
    #[arg(long, value_name = "ENDPOINT")]
    pub container_runtime_endpoint: Option<String>,

    /// Comma-separated directories holding the CNI plugin executables (with --cni-conf-dir).
    #[arg(long, value_name = "DIR", value_delimiter = ',', default_value = "/opt/cni/bin")]
    pub cni_bin_dir: Vec<std::path::PathBuf>,

    /// How often image garbage collection checks disk usage (upstream's fixed 5m; for tests).
    #[arg(long, default_value = "5m", value_parser = crate::server::parse_duration, hide = true)]
    pub image_gc_period: std::time::Duration,

    /// Do not run the built-in service proxy (kube-proxy's role), as k3s' flag of that name.
    #[arg(long)]
    pub disable_kube_proxy: bool,

    /// Where the service proxy serves `/metrics` (kube-proxy's `--metrics-bind-address`); an
    /// empty value turns it off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub proxy_metrics_bind_address: tug_proxy::BindAddress,

    /// Where the service proxy serves `/healthz` and `/livez` (kube-proxy's
    /// `--healthz-bind-address`); an empty value turns it off.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub proxy_healthz_bind_address: tug_proxy::BindAddress,

    /// Which packet filter the service proxy programs (kube-proxy's `--proxy-mode`):
    /// `nftables`, or `iptables` with upstream's chain layout.
    #[arg(long, default_value = "nftables")]
    pub proxy_mode: tug_proxy::Mode,
}

/// The backends of `--flannel-backend`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlannelBackend {
    Vxlan,
    #[value(name = "host-gw")]
    HostGw,
    None,
}

/// The node's IPv4 address for the pod network, which is IPv4 only.
fn ipv4_or_unspecified(ip: IpAddr) -> std::net::Ipv4Addr {
    match ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
    }
}

fn overlay_backend(backend: FlannelBackend) -> Option<Backend> {
    match backend {
        FlannelBackend::Vxlan => Some(Backend::Vxlan),
        FlannelBackend::HostGw => Some(Backend::HostGw),
        FlannelBackend::None => None,
    }
}

/// The bridge pods attach to (k3s' name for it).
const POD_BRIDGE: &str = "cni0";

/// The value of `--eviction-soft-grace-period`: a grace period per signal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SoftGracePeriods(pub Vec<(tug_kubelet::config::Signal, std::time::Duration)>);

fn parse_grace_periods(s: &str) -> Result<SoftGracePeriods, String> {
    let pairs = s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|pair| {
        let (signal, duration) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not signal=duration (e.g. memory.available=1m30s)"))?;
        Ok((signal.parse()?, crate::server::parse_duration(duration)?))
    });
    pairs.collect::<Result<_, String>>().map(SoftGracePeriods)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_taint(s: &str) -> Result<k8s_openapi::api::core::v1::Taint, String> {
    let (kv, effect) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not key=value:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(format!("{effect:?} is not a taint effect (NoSchedule, PreferNoSchedule, NoExecute)"));
    }
    let (key, value) = kv.split_once('=').map_or((kv, None), |(k, v)| (k, Some(v.to_owned())));
    Ok(k8s_openapi::api::core::v1::Taint { key: key.to_owned(), value, effect: effect.to_owned(), time_added: None })
}

/// What the agent needs from whoever starts it: its identity and certificates.
pub struct AgentIdentity {
    pub node_ip: IpAddr,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub client_ca_pem: String,
}

/// The node name the agent registers under.
pub fn node_name(args: &AgentArgs) -> String {
    args.node_name.clone().unwrap_or_else(default_node_name)
}

/// The node name when none is given: the host name, lower-cased.
pub fn default_node_name() -> String {
    host_name().to_lowercase()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Starts the node agent under `data_dir/agent`, with the built-in runtime or the CRI runtime
/// of `--container-runtime-endpoint`; it runs until `shutdown`, leaving its containers running
/// when it stops.
pub async fn spawn(
    client: kube::Client,
    args: &AgentArgs,
    data_dir: &Path,
    cluster_domain: &str,
    identity: AgentIdentity,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let agent_dir = data_dir.join("agent");
    let config = tug_kubelet::Config {
        node_name: node_name(args),
        node_ip: identity.node_ip,
        hostname: host_name(),
        agent_dir: agent_dir.clone(),
        cluster_dns: vec![args.cluster_dns],
        cluster_domain: cluster_domain.to_owned(),
        max_pods: args.max_pods,
        port: args.kubelet_port,
        serving_cert_pem: identity.serving_cert_pem,
        serving_key_pem: identity.serving_key_pem,
        client_ca_pem: identity.client_ca_pem,
        node_labels: args.node_labels.clone(),
        node_taints: args.node_taints.clone(),
        eviction_hard: args.eviction_hard,
        eviction: tug_kubelet::config::EvictionConfig {
            soft: args.eviction_soft.clone().map(|s| s.0).unwrap_or_default(),
            soft_grace_periods: args.eviction_soft_grace_period.clone().map(|s| s.0).unwrap_or_default(),
            minimum_reclaim: args.eviction_minimum_reclaim.clone().map(|s| s.0).unwrap_or_default(),
            max_pod_grace_period_seconds: i64::from(args.eviction_max_pod_grace_period),
            pressure_transition_period: args.eviction_pressure_transition_period,
            monitoring_period: args.eviction_monitoring_period,
        },
        image_gc: tug_kubelet::image_gc_manager::ImageGcPolicy {
            high_threshold_percent: args.image_gc_high_threshold,
            low_threshold_percent: args.image_gc_low_threshold.min(args.image_gc_high_threshold),
            minimum_age: args.minimum_image_ttl_duration,
            period: args.image_gc_period,
        },
        pod_manifest_path: args.pod_manifest_path.clone(),
    };
    tug_kubelet::eviction::thresholds(&config).context("checking the eviction flags")?;
    if let Some(endpoint) = &args.container_runtime_endpoint {
        return spawn_with_cri_runtime(client, args, config, endpoint, shutdown).await;
    }
    let store = ImageStore::open(config.image_dir()).context("opening the image store")?;
    let images = Arc::new(BuiltinImageService::new(store.clone(), Puller::new(store.clone(), PullOptions::default())));
    let shim = ShimBinary(std::env::current_exe().context("finding the tug executable for the shims")?);
    let mut runtime = BuiltinRuntime::new(config.runtime_dir(), store, shim).context("opening the runtime")?;
    let cni = args.cni_conf_dir.as_ref().map(|conf_dir| {
        Arc::new(CniNetwork::new(CniConfig {
            conf_dir: conf_dir.clone(),
            bin_dirs: args.cni_bin_dir.clone(),
            state_dir: agent_dir.join("cni"),
        }))
    });
    let network = match args.flannel_backend {
        _ if cni.is_some() => None,
        FlannelBackend::None => None,
        backend => {
            let node_ip = ipv4_or_unspecified(identity.node_ip);
            let overlay_overhead = overlay_backend(backend).map_or(0, |b| b.overhead());
            let network = BridgeNetwork::new(BridgeConfig {
                bridge: POD_BRIDGE.into(),
                state_dir: agent_dir.join("network"),
                node_ip,
                overlay_overhead,
            })
            .context("opening the pod network")?;
            Some(Arc::new(network))
        }
    };
    if let Some(network) = &network {
        runtime = runtime.with_network(network.clone());
    }
    if let Some(cni) = &cni {
        runtime = runtime.with_network(cni.clone());
    }
    let runtime = Arc::new(runtime);
    if let Some(network) = network {
        let node_ip = ipv4_or_unspecified(identity.node_ip);
        let overlay = overlay_backend(args.flannel_backend).map(|b| Overlay::new(b, node_ip, network.netlink()));
        let node_name = config.node_name.clone();
        tokio::spawn(tug_network::subnet::run(client.clone(), node_name, network.clone(), overlay, shutdown.clone()));
        tokio::spawn(release_orphaned_addresses(network, runtime.clone(), shutdown.clone()));
    }
    if let Some(cni) = cni {
        tokio::spawn(release_orphaned_addresses(cni, runtime.clone(), shutdown.clone()));
    }
    spawn_proxy(&client, args, &config, &shutdown);
    Ok(tokio::spawn(async move {
        if let Err(e) = tug_kubelet::run(client, config, runtime, images, shutdown).await {
            tracing::error!(error = %e, "the node agent stopped");
        }
    }))
}

fn spawn_proxy(client: &kube::Client, args: &AgentArgs, config: &tug_kubelet::Config, shutdown: &CancellationToken) {
    if !args.disable_kube_proxy {
        let proxy_config = tug_proxy::Config {
            node_name: config.node_name.clone(),
            node_ip: config.node_ip,
            metrics_bind: args.proxy_metrics_bind_address.0,
            healthz_bind: args.proxy_healthz_bind_address.0,
            mode: args.proxy_mode,
        };
        tokio::spawn(tug_proxy::run(client.clone(), proxy_config, shutdown.clone()));
    }
}

/// The node agent driving an external CRI runtime: images, sandboxes (with their network, from
/// the runtime's CNI configuration) and containers are the runtime's.
async fn spawn_with_cri_runtime(
    client: kube::Client,
    args: &AgentArgs,
    config: tug_kubelet::Config,
    endpoint: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let runtime = Arc::new(RemoteRuntime::connect(endpoint).await.context("connecting to the container runtime")?);
    // With `--flannel-backend none` the runtime's own CNI configuration is left to the operator.
    if args.flannel_backend != FlannelBackend::None {
        let node_ip = ipv4_or_unspecified(config.node_ip);
        let backend = overlay_backend(args.flannel_backend);
        let network = RuntimeCniNetwork::new(RuntimeCniConfig {
            conf_dir: args.cni_conf_dir.clone().unwrap_or_else(|| "/etc/cni/net.d".into()),
            ipam_dir: config.agent_dir.join("cni-ipam"),
            node_ip,
            overlay_overhead: backend.map_or(0, Backend::overhead),
        })
        .context("opening the pod network")?;
        let overlay = backend.map(|b| Overlay::new(b, node_ip, network.netlink()));
        let node_name = config.node_name.clone();
        tokio::spawn(tug_network::subnet::run(client.clone(), node_name, Arc::new(network), overlay, shutdown.clone()));
    }
    spawn_proxy(&client, args, &config, &shutdown);
    Ok(tokio::spawn(async move {
        if let Err(e) = tug_kubelet::run(client, config, runtime.clone(), runtime, shutdown).await {
            tracing::error!(error = %e, "the node agent stopped");
        }
    }))
}

/// Once the pod network is ready, frees what sandboxes gone while the agent was down held.
async fn release_orphaned_addresses(
    network: Arc<dyn PodNetwork>,
    runtime: Arc<BuiltinRuntime>,
    shutdown: CancellationToken,
) {
    while network.status() != NetworkStatus::Ready {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
    }
    if let Err(error) = runtime.reconcile_network().await {
        tracing::warn!(%error, "releasing the network of removed sandboxes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tug_kubelet::config::Signal;

    #[test]
    fn soft_grace_periods_parse_like_the_kubelet_flag() {
        let parsed = parse_grace_periods("memory.available=1m30s, nodefs.available=2m").unwrap();
        assert_eq!(
            parsed.0,
            [(Signal::MemoryAvailable, Duration::from_secs(90)), (Signal::NodeFsAvailable, Duration::from_secs(120))]
        );
        assert_eq!(parse_grace_periods("disk=1m").unwrap_err(), "unsupported eviction signal disk");
        assert!(parse_grace_periods("memory.available<1m").is_err());
    }
}
