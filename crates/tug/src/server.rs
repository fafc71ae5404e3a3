//! `tug server`: wires the datastore, certificates and API server together.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::cluster_secrets;
use crate::datastore::DatastoreArgs;
use anyhow::{Context, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tug_apiserver::authn::TokenFile;
use tug_apiserver::pki::{ClusterPki, PkiOptions};
use tug_apiserver::serviceaccount::{SigningKey, TokenIssuer};
use tug_apiserver::{ApiServer, Ipv4Cidr, ServerOptions};

/// Flags of `tug server`; names follow k3s where it has the same flag.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Directory holding the datastore, certificates, token file and kubeconfig.
    #[arg(long, short = 'd', default_value = "/var/lib/tugboat", env = "TUG_DATA_DIR")]
    pub data_dir: PathBuf,

    /// HTTPS port of the API server.
    #[arg(long, default_value_t = 6443)]
    pub https_listen_port: u16,

    /// Address the API server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Address advertised to the cluster (the `kubernetes` service's endpoint). Defaults to the
    /// bind address, or the host's primary address when binding to all addresses.
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,

    /// IPv4 range service cluster IPs are allocated from; its first address is the `kubernetes`
    /// service's.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: Ipv4Cidr,

    /// Port range NodePort services are allocated from.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: (u16, u16),

    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// A shared secret nodes present to join the cluster (added to the server's token file).
    #[arg(long, env = "TUG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    #[command(flatten)]
    pub datastore: DatastoreArgs,

    /// A server of the cluster this one joins (`https://host:6443`). The cluster's CA comes
    /// from the shared datastore (with `--token`); this checks that the server there belongs
    /// to the same cluster before serving. Optional on a shared datastore, as in k3s.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,

    /// Replace the datastore's contents with a snapshot (`--cluster-reset-restore-path`), then
    /// exit. Stop every server of the cluster first; start them again without the flag.
    #[arg(long, requires = "cluster_reset_restore_path")]
    pub cluster_reset: bool,

    /// The snapshot `--cluster-reset` restores (from `tug datastore snapshot save`).
    #[arg(long, requires = "cluster_reset")]
    pub cluster_reset_restore_path: Option<PathBuf>,

    /// Do not run a node agent beside the control plane.
    #[arg(long)]
    pub disable_agent: bool,

    /// Do not run the scheduler inside the server (run `tug scheduler` elsewhere instead).
    #[arg(long)]
    pub disable_scheduler: bool,

    /// Do not run the controller manager inside the server (run `tug controller-manager`
    /// elsewhere instead).
    #[arg(long)]
    pub disable_controller_manager: bool,

    /// Extra names (DNS or IP) for the serving certificate.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,

    /// Packaged components not to run, as k3s: `coredns` (the cluster DNS), `servicelb` (the
    /// service load balancer), `local-storage` (the local-path provisioner and its
    /// StorageClass); repeatable or comma-separated.
    #[arg(long = "disable", value_name = "COMPONENT", value_delimiter = ',')]
    pub disable: Vec<String>,

    /// Where the local-path provisioner keeps volumes on the nodes (default: `<data-dir>/storage`).
    #[arg(long = "default-local-storage-path", value_name = "PATH")]
    pub default_local_storage_path: Option<PathBuf>,

    /// UDP and TCP address the cluster DNS serves on (default: the node address, port 53).
    #[arg(long)]
    pub cluster_dns_bind: Option<SocketAddr>,

    /// Resolvers for names outside the cluster (IP or IP:port; repeatable); default: the
    /// nameservers of /etc/resolv.conf.
    #[arg(long = "cluster-dns-upstream", value_parser = parse_upstream)]
    pub cluster_dns_upstreams: Vec<SocketAddr>,

    /// Address of the cluster DNS's /metrics (default: the DNS address, port 9153).
    #[arg(long)]
    pub cluster_dns_metrics_bind: Option<SocketAddr>,

    #[command(flatten)]
    pub node_controllers: NodeControllerArgs,

    #[command(flatten)]
    pub horizontal_pod_autoscaler: HpaControllerArgs,

    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,

    #[command(flatten)]
    pub agent: crate::agent::AgentArgs,
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an address like 192.0.2.53 or 127.0.0.1:5353"))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or_else(|| format!("{s:?} is not a port range like 30000-32767"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("{lo:?} is not a port"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("{hi:?} is not a port"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?} is not a valid port range"));
    }
    Ok((lo, hi))
}

/// The host's primary address: the source address of the default route. Connecting a UDP
/// socket sends nothing; it only picks the route.
fn primary_address() -> Option<IpAddr> {
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    sock.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    // One server per data directory: a second one would write the same datastore.
    let lock_path = args.data_dir.join("server.lock");
    let lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!("another tug server is using the data directory {}", args.data_dir.display());
    }
    let advertise = args.advertise_address.unwrap_or_else(|| {
        if args.bind_address.is_unspecified() {
            primary_address().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            args.bind_address
        }
    });
    let service_ip = IpAddr::V4(args.service_cidr.nth(1));
    let mut pki_opts = PkiOptions::new(service_ip, &args.cluster_domain).with_ip(args.bind_address).with_ip(advertise);
    if let Some(ip) = primary_address() {
        pki_opts = pki_opts.with_ip(ip);
    }
    if let Some(h) = hostname() {
        pki_opts = pki_opts.with_dns(h);
    }
    for san in &args.tls_san {
        pki_opts = match san.parse::<IpAddr>() {
            Ok(ip) => pki_opts.with_ip(ip),
            Err(_) => pki_opts.with_dns(san.clone()),
        };
    }
    if let Some(snapshot) = &args.cluster_reset_restore_path {
        return crate::datastore::restore(snapshot, &args.data_dir, &args.datastore).await;
    }
    let store = args.datastore.open(&args.data_dir).await?;
    // On a datastore other servers share, the cluster's CA and signing key live in it too.
    let shared_secrets = match (args.datastore.is_shared(), args.token.as_deref()) {
        (false, _) => None,
        (true, Some(token)) => Some(token),
        (true, None) => bail!(
            "--token is required with an etcd datastore: the cluster's CA is stored there encrypted with it, for \
             the other servers"
        ),
    };
    if let Some(token) = shared_secrets
        && cluster_secrets::restore(store.as_ref(), &args.data_dir, token).await?
    {
        info!("joined the cluster whose CA is in the datastore");
    }
    let mut pki = ClusterPki::load_or_create(&args.data_dir, &pki_opts).context("loading the cluster certificates")?;
    let sa_key = SigningKey::load_or_create(pki.tls_dir()).context("loading the service account signing key")?;
    let sa_key = match shared_secrets {
        Some(token) if !cluster_secrets::publish(store.as_ref(), &args.data_dir, token).await? => {
            // Another server stored its secrets first: use them (leaf certificates re-issued).
            pki = ClusterPki::load_or_create(&args.data_dir, &pki_opts).context("loading the cluster certificates")?;
            SigningKey::load_or_create(pki.tls_dir()).context("loading the service account signing key")?
        }
        _ => sa_key,
    };
    if let Some(url) = &args.server {
        if shared_secrets.is_none() {
            bail!("--server joins a cluster through its shared datastore: give --datastore-endpoint (etcd) and --token")
        }
        cluster_secrets::check_peer(url, &pki).await?;
        info!(server = %url, "the server to join belongs to this cluster");
    }
    let tokens = TokenFile::ensure(&args.data_dir.join("token-file.csv"), args.token.as_deref())
        .context("preparing the token file")?;

    let options = ServerOptions {
        service_cidr: args.service_cidr,
        node_port_range: args.service_node_port_range,
        advertise_address: advertise,
        port: args.https_listen_port,
    };
    let server = ApiServer::new(store, Some(tokens), options);
    server.set_token_issuer(TokenIssuer::new(sa_key));
    server.set_kubelet_client_config(
        pki.kubelet_client_config().context("building the node agent client's TLS configuration")?,
    );
    server.bootstrap().await.context("creating the cluster's built-in objects")?;
    let cluster_url = format!("https://{}", SocketAddr::new(advertise, args.https_listen_port));
    server.publish_cluster_info(&cluster_url, pki.ca_pem()).await.context("publishing kube-public/cluster-info")?;
    if let Some(token) = &args.token {
        // k3s's "secure" token: joining agents check the CA they fetch against its hash.
        let path = args.data_dir.join("node-token");
        write_private(&path, &format!("{}\n", crate::join::node_token(pki.ca_pem(), token)))?;
    }
    server.set_ready();

    let addr = SocketAddr::new(args.bind_address, args.https_listen_port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    let local_url_host =
        if args.bind_address.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { args.bind_address };
    let kubeconfig = args.data_dir.join("kubeconfig.yaml");
    pki.write_admin_kubeconfig(
        &kubeconfig,
        &format!("https://{}", SocketAddr::new(local_url_host, args.https_listen_port)),
    )
    .context("writing the admin kubeconfig")?;
    let tls = Arc::new(pki.server_config().context("building the TLS configuration")?);
    info!(%addr, kubeconfig = %kubeconfig.display(), ready_after_ms = started.elapsed().as_millis() as u64, "tug server is ready");
    println!("kubeconfig: {}", kubeconfig.display());

    let shutdown = CancellationToken::new();
    // CustomResourceDefinitions: their status, their resources' serving and their deletion.
    let crds = tokio::spawn(server.clone().run_crd_controller(shutdown.clone()));
    // The controllers, scheduler, DNS and node agent are API clients like any other, with the
    // admin kubeconfig's identity; being in this process, they connect in memory.
    let identity = pki.admin_identity().context("reading the admin client certificate")?;
    let client = crate::client::in_process(server.clone(), identity.clone(), shutdown.clone());
    // Leader elections renew their leases on a connection of their own (see [`Election`]).
    let election_client = crate::client::in_process(server.clone(), identity, shutdown.clone());
    let serving = tokio::spawn(server.serve(listener, tls, shutdown.clone()));
    let ca_key_path = pki.tls_dir().join("ca.key");
    let cluster_signing = tug_controllers::certificates::SigningCa {
        cert_pem: pki.ca_pem().to_string(),
        key_pem: std::fs::read_to_string(&ca_key_path).with_context(|| format!("reading {}", ca_key_path.display()))?,
    };
    let mut options = tug_controllers::Options {
        root_ca: Some(pki.ca_pem().to_string()),
        cluster_signing: Some(cluster_signing),
        ..Default::default()
    };
    args.node_controllers.apply(&mut options);
    args.horizontal_pod_autoscaler.apply(&mut options);
    if !args.disable.iter().any(|c| c == "local-storage") {
        options.local_storage_path =
            Some(args.default_local_storage_path.clone().unwrap_or_else(|| args.data_dir.join("storage")));
    }
    let controllers = {
        let (client, shutdown, election) = (client.clone(), shutdown.clone(), args.leader_election.clone());
        let election_client = election_client.clone();
        // A lost lease only pauses the controllers of a server: it stands for election again.
        let enabled = !args.disable_controller_manager;
        // k3s' service load balancer runs with the controllers, on the server that leads.
        let servicelb = !args.disable.iter().any(|c| c == "servicelb");
        tokio::spawn(async move {
            while enabled && !shutdown.is_cancelled() {
                let (client2, options) = (client.clone(), options.clone());
                let elected = election
                    .config("kube-controller-manager")
                    .map(|config| Election { client: election_client.clone(), config });
                let work = move |token: CancellationToken| async move {
                    let lb = servicelb
                        .then(|| tokio::spawn(tug_controllers::servicelb::run(client2.clone(), token.clone())));
                    tug_controllers::run(client2, options, token).await;
                    if let Some(lb) = lb {
                        let _ = lb.await;
                    }
                };
                if run_elected(elected, shutdown.clone(), work).await.is_ok() {
                    break;
                }
            }
        })
    };
    let dns = if args.disable.iter().any(|c| c == "coredns") {
        None
    } else {
        Some(start_dns(&args, client.clone(), advertise, shutdown.clone()).await?)
    };
    let agent = if args.disable_agent {
        None
    } else {
        let node_ip = args.agent.node_ip.unwrap_or(advertise);
        let node_name = crate::agent::node_name(&args.agent);
        let mut ips = vec![node_ip];
        if !ips.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)) {
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let (serving_cert_pem, serving_key_pem) =
            pki.issue_kubelet_serving_cert(&node_name, &ips).context("issuing the node agent's certificate")?;
        let identity = crate::agent::AgentIdentity {
            node_ip,
            serving_cert_pem,
            serving_key_pem,
            client_ca_pem: pki.ca_pem().to_string(),
        };
        let handle = crate::agent::spawn(
            client.clone(),
            &args.agent,
            &args.data_dir,
            &args.cluster_domain,
            identity,
            shutdown.clone(),
        )
        .await?;
        Some(handle)
    };
    let scheduler = {
        let shutdown = shutdown.clone();
        let enabled = !args.disable_scheduler;
        let election = args.leader_election.clone();
        tokio::spawn(async move {
            while enabled && !shutdown.is_cancelled() {
                let scheduler_client = client.clone();
                let work = move |token| tug_scheduler::run(scheduler_client, token);
                let elected = election
                    .config("kube-scheduler")
                    .map(|config| Election { client: election_client.clone(), config });
                if run_elected(elected, shutdown.clone(), work).await.is_ok() {
                    break;
                }
            }
        })
    };
    wait_for_signal().await;
    info!("shutting down");
    shutdown.cancel();
    let _ = tokio::join!(serving, crds, controllers, scheduler);
    if let Some(Some(dns)) = dns {
        let _ = dns.await;
    }
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    Ok(())
}

/// Starts the cluster DNS (crates/dns). A bind failure is fatal only for an explicit
/// `--cluster-dns-bind`: on the default port 53 another server may hold it.
async fn start_dns(
    args: &ServerArgs,
    client: kube::Client,
    advertise: IpAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let node_ip = args.agent.node_ip.unwrap_or(advertise);
    let listen = args.cluster_dns_bind.unwrap_or(SocketAddr::new(node_ip, 53));
    let upstreams = if args.cluster_dns_upstreams.is_empty() {
        tug_dns::forward::upstreams_from_resolv_conf(std::path::Path::new("/etc/resolv.conf")).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading /etc/resolv.conf: names outside the cluster will not resolve");
            Vec::new()
        })
    } else {
        args.cluster_dns_upstreams.clone()
    };
    let options = tug_dns::Options {
        domain: args.cluster_domain.clone(),
        listen,
        upstreams,
        metrics: Some(args.cluster_dns_metrics_bind.unwrap_or(SocketAddr::new(listen.ip(), 9153))),
        publish: Some(tug_dns::Publish {
            cluster_ip: args.agent.cluster_dns,
            advertise: node_ip,
            node_name: (!args.disable_agent).then(|| crate::agent::node_name(&args.agent)),
        }),
    };
    match tug_dns::start(client, options, shutdown).await {
        Ok((_, task)) => Ok(Some(task)),
        Err(e) if args.cluster_dns_bind.is_none() => {
            tracing::warn!(error = %e, "the cluster DNS is not running");
            Ok(None)
        }
        Err(e) => Err(e).context("starting the cluster DNS"),
    }
}

/// Writes `contents` to `path` readable only by its owner.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // An existing file keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("securing {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Flags of the node controllers (IPAM, lifecycle, pod GC), shared by `tug server` and
/// `tug controller-manager`; names as upstream's kube-controller-manager (and k3s's).
#[derive(Args, Debug, Clone)]
pub struct NodeControllerArgs {
    /// IPv4 range the nodes' pod CIDRs are allocated from.
    #[arg(long, default_value = tug_controllers::nodeipam::DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: tug_controllers::nodeipam::Ipv4Net,

    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = tug_controllers::nodeipam::DEFAULT_NODE_CIDR_MASK_SIZE)]
    pub node_cidr_mask_size: u8,

    /// How long a node may go without a heartbeat (Lease or status) before it is marked
    /// unhealthy (e.g. 40s, 1m).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,

    /// Terminated pods kept before the oldest are deleted; 0 keeps them all.
    #[arg(long, default_value_t = tug_controllers::podgc::TERMINATED_POD_GC_THRESHOLD)]
    pub terminated_pod_gc_threshold: usize,

    /// How often the pod garbage collector runs (upstream's fixed 20s; for tests).
    #[arg(long, default_value = "20s", value_parser = parse_duration, hide = true)]
    pub pod_gc_period: std::time::Duration,

    /// How long a node must be gone before its pods are orphans (upstream's fixed 40s; for tests).
    #[arg(long, default_value = "40s", value_parser = parse_duration, hide = true)]
    pub pod_gc_orphan_quarantine: std::time::Duration,
}

impl NodeControllerArgs {
    /// Sets the node controllers' part of the controller options.
    pub fn apply(&self, options: &mut tug_controllers::Options) {
        options.node_ipam = Some((self.cluster_cidr, self.node_cidr_mask_size));
        options.node_lifecycle.node_monitor_grace_period = self.node_monitor_grace_period;
        options.pod_gc.terminated_pod_gc_threshold = self.terminated_pod_gc_threshold;
        options.pod_gc.gc_period = self.pod_gc_period;
        options.pod_gc.quarantine = self.pod_gc_orphan_quarantine;
    }
}

/// Flags of the horizontal pod autoscaler controller, shared by `tug server` and
/// `tug controller-manager`; names and defaults as upstream's kube-controller-manager.
#[derive(Args, Debug, Clone)]
pub struct HpaControllerArgs {
    /// How often each HorizontalPodAutoscaler is evaluated.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_sync_period: std::time::Duration,

    /// How far a metric may be from its target (as a ratio) before the autoscaler acts.
    #[arg(long, default_value_t = 0.1)]
    pub horizontal_pod_autoscaler_tolerance: f64,

    /// The scale-down stabilization window of autoscalers that do not set one.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_downscale_stabilization: std::time::Duration,

    /// How long after a pod starts its CPU samples may reflect its initialization.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_cpu_initialization_period: std::time::Duration,

    /// How long after a pod starts an unready pod counts as never having been ready.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_initial_readiness_delay: std::time::Duration,
}

impl HpaControllerArgs {
    /// Sets the autoscaler's part of the controller options.
    pub fn apply(&self, options: &mut tug_controllers::Options) {
        options.horizontal_pod_autoscaler = tug_controllers::podautoscaler::Options {
            sync_period: self.horizontal_pod_autoscaler_sync_period,
            tolerance: self.horizontal_pod_autoscaler_tolerance,
            downscale_stabilization: self.horizontal_pod_autoscaler_downscale_stabilization,
            cpu_initialization_period: self.horizontal_pod_autoscaler_cpu_initialization_period,
            initial_readiness_delay: self.horizontal_pod_autoscaler_initial_readiness_delay,
        };
    }
}

/// Leader election flags, as upstream's components name them.
///
/// The defaults are shorter than upstream's 15 s lease and 10 s renew deadline: a standby
/// takes over at most lease + retry period after the leader's last renewal, and Tugboat
/// promises a takeover within 15 s of a server's death. The 2 s retry period (how often the
/// leader renews) is upstream's, so the API sees no more lease writes than upstream.
#[derive(Args, Debug, Clone)]
pub struct LeaderElectionArgs {
    /// Take a Lease in kube-system before working, so that only one copy works at a time.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// How long a non-leader waits after the last observed renewal before taking over.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: std::time::Duration,

    /// How long the leader keeps trying to renew before it stops leading.
    #[arg(long, default_value = "7s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: std::time::Duration,

    /// How long candidates wait between attempts to acquire or renew.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: std::time::Duration,
}

impl LeaderElectionArgs {
    /// The election on lease `kube-system/<lease>`, unless `--leader-elect=false`.
    pub fn config(&self, lease: &str) -> Option<tug_controllers::leaderelection::Config> {
        self.leader_elect.then(|| tug_controllers::leaderelection::Config {
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
            ..tug_controllers::leaderelection::Config::new(lease)
        })
    }
}

/// A leader election to run a component under: the lease, and the client that renews it. That
/// client has a connection of its own, so that a renewal never waits behind the component's own
/// requests (a scheduler binding thousands of pods queues them on its connection, and renewals
/// stuck behind them lost the lease in a benchmark run). Upstream's components likewise build
/// a separate leader-election client.
pub struct Election {
    pub client: kube::Client,
    pub config: tug_controllers::leaderelection::Config,
}

/// Runs `work` while leading `election` (or at once without one); see
/// [`tug_controllers::leaderelection::run`].
pub async fn run_elected<F, Fut>(
    election: Option<Election>,
    shutdown: CancellationToken,
    work: F,
) -> Result<(), tug_controllers::leaderelection::Error>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match election {
        Some(Election { client, config }) => tug_controllers::leaderelection::run(client, config, shutdown, work).await,
        None => {
            work(shutdown).await;
            Ok(())
        }
    }
}

/// A duration as Go writes them: `40s`, `1m30s`, `500ms`, `2h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().map_err(|_| format!("{s:?} is not a duration like 40s"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{s:?} is not a duration like 40s (units ms, s, m, h)")),
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_are_parsed_as_go_writes_them() {
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("40").is_err());
        assert!(parse_duration("").is_err());
    }
}
