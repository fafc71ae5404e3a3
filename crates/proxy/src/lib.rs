//! The service proxy of a node (kube-proxy's role): Services and EndpointSlices read through
//! the API become packet-filter rules that send connections to a Service's virtual IP,
//! NodePorts and external IPs to its ready endpoints. Two backends, upstream's proxy modes
//! ([`Mode`]): one nftables table, `table ip kube-proxy` ([`nftables`], the default), or
//! upstream's iptables chains (`KUBE-SERVICES`, `KUBE-SVC-...`; [`iptables`]).
//!
//! [`run`] watches both kinds with kube-runtime reflectors, and after any change (debounced, so
//! a burst makes one sync) computes the service ports ([`serviceport::service_ports`]) and
//! applies what changed since the last sync, rewriting everything at start, hourly and after a
//! failure. It owns nothing but its table or chains: it never touches the pod network's own
//! table, routes or interfaces, and never writes to the API.

pub mod conntrack;
pub mod healthcheck;
pub mod iptables;
pub mod metrics;
pub mod nftables;
pub mod serviceport;
#[cfg(test)]
mod test_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The pods' bridge of the built-in pod network (k3s' name).
pub const POD_BRIDGE: &str = "cni0";

/// The least time between two syncs: changes arriving meanwhile are folded into the next one
/// (upstream's `--nftables-min-sync-period` is 1s; shorter here so a Service is usable fast).
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// A sync runs this often even without changes (a partial one, which finds nothing to do when
/// nothing changed).
const RESYNC_PERIOD: Duration = Duration::from_secs(60);

/// The whole table is rewritten this often, repairing anything that changed it behind the
/// proxy's back (upstream's nftables mode: one hour). Rewriting 10,000 services takes minutes
/// on a small machine, so a shorter period would leave no time for partial syncs.
const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// Waits after a failed sync before trying again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What a proxy serves besides rules (kube-proxy's flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// `/metrics` (`--metrics-bind-address`, upstream's default 127.0.0.1:10249); `None`: off.
    pub metrics_bind: Option<SocketAddr>,
    /// `/healthz` and `/livez` (`--healthz-bind-address`, upstream's default 0.0.0.0:10256).
    pub healthz_bind: Option<SocketAddr>,
    /// Which packet filter the rules go to (`--proxy-mode`).
    pub mode: Mode,
}

/// The proxy's backends (upstream's `--proxy-mode` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One nftables table, `table ip kube-proxy`.
    #[default]
    Nftables,
    /// Upstream's iptables chains in the nat and filter tables.
    Iptables,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "nftables" => Ok(Mode::Nftables),
            "iptables" => Ok(Mode::Iptables),
            _ => Err(format!("{value:?} is not a proxy mode (nftables, iptables)")),
        }
    }
}

/// A backend failed to program or remove rules.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Nftables(#[from] nftables::NftError),
    #[error(transparent)]
    Iptables(#[from] iptables::IptablesError),
}

/// Removes the rules of every mode but `keep`: all of them for `None` (`--cleanup`), the other
/// mode's when starting (upstream's `platformCleanup`, so switching modes leaves nothing
/// behind). Absent rules and an absent tool are fine; the first failure is returned after
/// trying every mode.
pub async fn cleanup(keep: Option<Mode>) -> Result<(), BackendError> {
    let mut failed = None;
    if keep != Some(Mode::Nftables) {
        match nftables::delete_table().await {
            Err(nftables::NftError::Spawn { source }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => failed = Some(BackendError::from(error)),
            Ok(()) => {}
        }
    }
    if keep != Some(Mode::Iptables)
        && let Err(error) = iptables::cleanup().await
    {
        failed.get_or_insert(error.into());
    }
    failed.map_or(Ok(()), Err)
}

/// Programs this node's service rules until `shutdown`, then leaves them in place (as
/// upstream does: connections keep working while the proxy restarts). An address for the
/// metrics or health endpoints that cannot be bound is logged and done without: the rules
/// matter more.
pub async fn run(client: kube::Client, config: Config, shutdown: CancellationToken) {
    let Config { node_name, node_ip, metrics_bind, healthz_bind, mode } = config;
    if let Err(error) = cleanup(Some(mode)).await {
        tracing::warn!(?mode, %error, "removing the other proxy mode's rules");
    }
    let metrics = Arc::new(metrics::ProxyMetrics::default());
    for (addr, which) in [(metrics_bind, metrics::Endpoints::Metrics), (healthz_bind, metrics::Endpoints::Health)] {
        let Some(addr) = addr else { continue };
        match metrics::listen(addr, which, metrics.clone(), shutdown.clone()).await {
            Ok(bound) => tracing::info!(%bound, endpoints = ?which, "service proxy serving"),
            Err(error) => {
                tracing::error!(%addr, endpoints = ?which, %error, "cannot serve the service proxy's endpoints")
            }
        }
    }
    let changed = Arc::new(Notify::new());
    let services = watch(Api::<Service>::all(client.clone()), true, changed.clone(), metrics.clone(), shutdown.clone());
    let slices = watch(Api::<EndpointSlice>::all(client), false, changed.clone(), metrics.clone(), shutdown.clone());

    // A full sync only once both caches hold the whole list: a partial view would reject
    // connections to services whose endpoints are not yet known.
    tokio::select! {
        _ = shutdown.cancelled() => return,
        ready = async { tokio::try_join!(services.wait_until_ready(), slices.wait_until_ready()) } => {
            if ready.is_err() {
                return;
            }
        }
    }
    tracing::info!(node = %node_name, %node_ip, ?mode, "service proxy caches synced; programming the rules");

    match mode {
        Mode::Nftables => {
            let mut syncer = RuleSyncer::<nftables::Ruleset>::new(node_name, services, slices, metrics, &shutdown);
            sync_loop(&changed, &shutdown, &mut syncer).await;
        }
        Mode::Iptables => {
            let mut syncer = RuleSyncer::<iptables::Ruleset>::new(node_name, services, slices, metrics, &shutdown);
            sync_loop(&changed, &shutdown, &mut syncer).await;
        }
    }
}

/// A bind address flag where the empty string turns the endpoint off, as upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

impl std::str::FromStr for BindAddress {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Ok(BindAddress(None));
        }
        value
            .parse()
            .map(|a| BindAddress(Some(a)))
            .map_err(|_| format!("{value:?} is not an address like 127.0.0.1:10249"))
    }
}

/// One sync of the rules; `false` when it failed and should be retried.
trait SyncRules {
    fn sync(&mut self) -> impl Future<Output = bool> + Send;
}

/// The rules of one backend, rendered from the service ports: what [`RuleSyncer`] applies and
/// remembers as the kernel's state.
trait Rules: Sized + Send + Sync {
    fn new(pod_bridge: &str, service_ports: Vec<serviceport::ServicePort>) -> Self;
    fn service_ports(&self) -> &[serviceport::ServicePort];
    fn rule_count(&self) -> usize;
    /// Replaces every rule of the backend with these.
    fn apply(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Turns the rules rendered from `kernel` into these, touching only what differs;
    /// `Ok(false)` when nothing does.
    fn update(&self, kernel: &Self) -> impl Future<Output = Result<bool, BackendError>> + Send;
}

impl Rules for nftables::Ruleset {
    fn new(pod_bridge: &str, service_ports: Vec<serviceport::ServicePort>) -> Self {
        nftables::Ruleset { pod_bridge: pod_bridge.to_string(), service_ports }
    }

    fn service_ports(&self) -> &[serviceport::ServicePort] {
        &self.service_ports
    }

    fn rule_count(&self) -> usize {
        nftables::Ruleset::rule_count(self)
    }

    async fn apply(&self) -> Result<(), BackendError> {
        Ok(nftables::apply(self, &self.render()).await?)
    }

    async fn update(&self, kernel: &Self) -> Result<bool, BackendError> {
        let Some(update) = self.render_update(kernel) else { return Ok(false) };
        nftables::apply_update(&update).await?;
        Ok(true)
    }
}

impl Rules for iptables::Ruleset {
    fn new(pod_bridge: &str, service_ports: Vec<serviceport::ServicePort>) -> Self {
        let drop_invalid = !iptables::conntrack_tcp_liberal();
        iptables::Ruleset { pod_bridge: pod_bridge.to_string(), service_ports, drop_invalid }
    }

    fn service_ports(&self) -> &[serviceport::ServicePort] {
        &self.service_ports
    }

    fn rule_count(&self) -> usize {
        iptables::Ruleset::rule_count(self)
    }

    async fn apply(&self) -> Result<(), BackendError> {
        Ok(iptables::apply(self).await?)
    }

    async fn update(&self, kernel: &Self) -> Result<bool, BackendError> {
        let Some(update) = self.render_update(kernel) else { return Ok(false) };
        iptables::apply_update(&update).await?;
        Ok(true)
    }
}

/// Renders the rules from the caches and applies them when they changed.
struct RuleSyncer<R> {
    node_name: String,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    metrics: Arc<metrics::ProxyMetrics>,
    /// What the rules in the kernel were rendered from, which partial syncs start from and
    /// stale UDP flows are found against; `None` until a sync succeeded (or after one failed).
    kernel: Option<R>,
    health_checks: healthcheck::HealthCheckServers,
    shutdown: CancellationToken,
    last_full: tokio::time::Instant,
}

impl<R: Rules> RuleSyncer<R> {
    fn new(
        node_name: String,
        services: Store<Service>,
        slices: Store<EndpointSlice>,
        metrics: Arc<metrics::ProxyMetrics>,
        shutdown: &CancellationToken,
    ) -> Self {
        RuleSyncer {
            node_name,
            services,
            slices,
            metrics,
            kernel: None,
            health_checks: healthcheck::HealthCheckServers::default(),
            shutdown: shutdown.clone(),
            last_full: tokio::time::Instant::now(),
        }
    }
}

impl<R: Rules> SyncRules for RuleSyncer<R> {
    async fn sync(&mut self) -> bool {
        let started = tokio::time::Instant::now();
        let started_at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let ruleset = R::new(
            POD_BRIDGE,
            serviceport::service_ports(
                &self.node_name,
                self.services.state().iter().map(|s| &**s).collect::<Vec<_>>(),
                self.slices.state().iter().map(|s| &**s).collect::<Vec<_>>(),
            ),
        );
        // Everything now and then, to repair outside damage; in between, only changes.
        let full = self.last_full.elapsed() >= FULL_SYNC_PERIOD;
        let result = match self.kernel.as_ref().filter(|_| !full) {
            None => ruleset.apply().await.map(|()| SyncKind::Full),
            Some(kernel) => match ruleset.update(kernel).await {
                Ok(false) => Ok(SyncKind::Unchanged),
                Ok(true) => Ok(SyncKind::Partial),
                Err(error) => {
                    tracing::warn!(node = %self.node_name, %error, "a partial rule sync failed; replacing the rules");
                    ruleset.apply().await.map(|()| SyncKind::Full)
                }
            },
        };
        match result {
            Ok(sync) => {
                let service_ports = ruleset.service_ports().len();
                self.metrics.synced(started_at, started.elapsed(), ruleset.rule_count(), service_ports);
                if sync == SyncKind::Unchanged {
                    return true;
                }
                tracing::debug!(
                    node = %self.node_name,
                    ?sync,
                    service_ports,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "synced the service rules"
                );
                if sync == SyncKind::Full {
                    self.last_full = tokio::time::Instant::now();
                }
                // Only once the new rules are in: a flow deleted earlier could be re-created
                // through the old ones.
                let before = self.kernel.as_ref().map_or(&[][..], |k| k.service_ports());
                conntrack::delete(&conntrack::stale(before, ruleset.service_ports())).await;
                self.health_checks.sync(healthcheck::wanted(ruleset.service_ports()), &self.shutdown).await;
                self.kernel = Some(ruleset);
                true
            }
            Err(error) => {
                tracing::warn!(node = %self.node_name, %error, "programming the service rules");
                self.metrics.failed(started.elapsed());
                self.kernel = None;
                false
            }
        }
    }
}

/// What a sync did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncKind {
    Unchanged,
    Partial,
    Full,
}

/// Calls `syncer` at once, then after each wake of `changed` (and at least every
/// [`RESYNC_PERIOD`]), never twice within [`MIN_SYNC_INTERVAL`], so a burst of changes makes
/// one sync; a failed sync (`false`) is retried after [`RETRY_DELAY`]. Returns at `shutdown`.
async fn sync_loop(changed: &Notify, shutdown: &CancellationToken, syncer: &mut impl SyncRules) {
    loop {
        let started = tokio::time::Instant::now();
        if !syncer.sync().await {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY_DELAY) => {}
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(started + MIN_SYNC_INTERVAL) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(RESYNC_PERIOD) => {}
        }
    }
}

/// A reflector over `api`, driven on its own task until `shutdown`, waking `changed` on every
/// event (counted as a service change when `services`, else an endpoint change).
fn watch<K>(
    api: Api<K>,
    services: bool,
    changed: Arc<Notify>,
    metrics: Arc<metrics::ProxyMetrics>,
    shutdown: CancellationToken,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                None => return,
                Some(Ok(_)) => {
                    metrics.queued(services);
                    changed.notify_one();
                }
                Some(Err(error)) => {
                    tracing::warn!(kind = K::kind(&()).as_ref(), %error, "watching for the service proxy")
                }
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its calls; answers from `results`, then `true`.
    struct Counting {
        count: usize,
        results: std::vec::IntoIter<bool>,
    }

    impl SyncRules for Counting {
        async fn sync(&mut self) -> bool {
            self.count += 1;
            self.results.next().unwrap_or(true)
        }
    }

    /// Runs `sync_loop` with a counting sync while `drive` makes changes, then stops it.
    async fn syncs_during(results: Vec<bool>, drive: impl AsyncFnOnce(&Notify)) -> usize {
        let changed = Notify::new();
        let shutdown = CancellationToken::new();
        let mut counting = Counting { count: 0, results: results.into_iter() };
        let stop = async {
            drive(&changed).await;
            shutdown.cancel();
        };
        tokio::join!(sync_loop(&changed, &shutdown, &mut counting), stop);
        counting.count
    }

    #[test]
    fn proxy_modes_are_upstreams_flag_values() {
        assert_eq!("nftables".parse(), Ok(Mode::Nftables));
        assert_eq!("iptables".parse(), Ok(Mode::Iptables));
        assert_eq!(Mode::default(), Mode::Nftables);
        assert!("ipvs".parse::<Mode>().unwrap_err().contains("not a proxy mode"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_makes_one_sync_after_the_first() {
        let count = syncs_during(Vec::new(), async |changed: &Notify| {
            for _ in 0..50 {
                changed.notify_one();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        })
        .await;
        // The start, then the burst (within 100 ms of it) folded into one.
        assert_eq!(count, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_spaced_beyond_the_interval_each_sync() {
        let count = syncs_during(Vec::new(), async |changed: &Notify| {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                changed.notify_one();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        })
        .await;
        assert_eq!(count, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_sync_is_retried_and_an_idle_proxy_resyncs_periodically() {
        let count = syncs_during(vec![false, true], async |_: &Notify| {
            tokio::time::sleep(RETRY_DELAY + Duration::from_millis(10)).await;
        })
        .await;
        assert_eq!(count, 2, "the failure, then the retry");
        let count = syncs_during(Vec::new(), async |_: &Notify| {
            tokio::time::sleep(RESYNC_PERIOD * 2 + Duration::from_secs(1)).await;
        })
        .await;
        assert_eq!(count, 3, "the start and two periodic resyncs");
    }
}
