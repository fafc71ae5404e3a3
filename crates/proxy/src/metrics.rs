//! The proxy's own endpoints, as upstream's kube-proxy serves them: `/metrics` (Prometheus
//! text, on `--metrics-bind-address`, 127.0.0.1:10249 by default) with the rule syncs' duration,
//! time, failures and size under kube-proxy's metric names, and `/healthz` and `/livez` (on
//! `--healthz-bind-address`, 0.0.0.0:10256), which load balancers and probes poll.
//!
//! Health follows upstream's rule: the proxy is healthy while its rules are up to date, that
//! is when no change has waited for a sync longer than [`HEALTH_TIMEOUT`] (upstream: twice the
//! sync period), so a proxy that stopped programming rules fails its health check.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a change may wait for a sync before the proxy reports itself unhealthy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Upstream's buckets for `kubeproxy_sync_proxy_rules_duration_seconds`: 1 ms doubling, 15 of them.
const BUCKETS: [f64; 15] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384];

/// What the proxy has done, shared between its sync loop and the HTTP endpoints.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_micros: AtomicU64,
    sync_failures: AtomicU64,
    service_changes: AtomicU64,
    endpoint_changes: AtomicU64,
    /// Rules and service ports of the table last applied.
    rules: AtomicU64,
    service_ports: AtomicU64,
    times: Mutex<Times>,
}

/// Wall-clock times (seconds since the epoch) of the last sync and of the oldest change not yet
/// synced.
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    last_synced: Option<f64>,
    oldest_pending: Option<f64>,
    last_queued: Option<f64>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl ProxyMetrics {
    /// A Service (`service: true`) or EndpointSlice changed: a sync is due.
    pub fn queued(&self, service: bool) {
        let counter = if service { &self.service_changes } else { &self.endpoint_changes };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = now();
        if let Ok(mut times) = self.times.lock() {
            times.oldest_pending.get_or_insert(now);
            times.last_queued = Some(now);
        }
    }

    /// A sync started at `started` (wall clock) finished after `took`, having applied
    /// `rules` rules for `service_ports` service ports.
    pub fn synced(&self, started: f64, took: Duration, rules: usize, service_ports: usize) {
        self.observe(took);
        self.rules.store(rules as u64, Ordering::Relaxed);
        self.service_ports.store(service_ports as u64, Ordering::Relaxed);
        if let Ok(mut times) = self.times.lock() {
            times.last_synced = Some(now());
            // Changes queued after the sync started are still pending.
            if times.oldest_pending.is_some_and(|t| t <= started) {
                times.oldest_pending = times.last_queued.filter(|t| *t > started);
            }
        }
    }

    /// A sync failed after `took`.
    pub fn failed(&self, took: Duration) {
        self.observe(took);
        self.sync_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.duration_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn times(&self) -> Times {
        self.times.lock().map(|t| *t).unwrap_or_default()
    }

    /// Upstream's health rule at `now`: healthy unless a change has waited longer than
    /// [`HEALTH_TIMEOUT`] for a sync.
    fn healthy_at(&self, now: f64) -> bool {
        self.times().oldest_pending.is_none_or(|t| now - t <= HEALTH_TIMEOUT.as_secs_f64())
    }

    /// The `/healthz` answer: status code and upstream's JSON body.
    pub fn health(&self) -> (u16, String) {
        let now = now();
        let healthy = self.healthy_at(now);
        let last = self.times().last_synced.unwrap_or(0.0);
        let body = format!(
            "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\", \"nodeEligible\": true}}",
            rfc3339(last),
            rfc3339(now)
        );
        (if healthy { 200 } else { 503 }, body)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let name = "kubeproxy_sync_proxy_rules_duration_seconds";
        let _ = writeln!(out, "# HELP {name} SyncProxyRules latency in seconds");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, bucket) in BUCKETS.iter().zip(&self.duration_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", get(&self.duration_count));
        let _ = writeln!(out, "{name}_sum {}", get(&self.duration_sum_micros) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {}", get(&self.duration_count));
        let times = self.times();
        let gauges = [
            (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                times.last_synced.unwrap_or(0.0),
            ),
            (
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                times.last_queued.unwrap_or(0.0),
            ),
            (
                "kubeproxy_sync_proxy_rules_nftables_rules",
                "Rules in the kube-proxy nftables table",
                get(&self.rules) as f64,
            ),
            (
                "kubeproxy_sync_proxy_rules_service_ports",
                "Service ports programmed in the last sync",
                get(&self.service_ports) as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let counters = [
            (
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "Failed nftables transactions",
                &self.sync_failures,
            ),
            ("kubeproxy_sync_proxy_rules_service_changes_total", "Cumulative service changes", &self.service_changes),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative endpoint slice changes",
                &self.endpoint_changes,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", get(value));
        }
        out
    }
}

/// RFC 3339 with milliseconds, as Go's time.Time marshals in upstream's health answer.
fn rfc3339(seconds: f64) -> String {
    let whole = seconds.floor() as i64;
    let nanos = ((seconds - seconds.floor()) * 1e9) as i32;
    jiff::Timestamp::new(whole, nanos).map_or_else(|_| "1970-01-01T00:00:00Z".into(), |t| t.to_string())
}

/// Which of the endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `/metrics`.
    Metrics,
    /// `/healthz` and `/livez`.
    Health,
}

/// Binds `addr` and serves `which` endpoints there until `shutdown`; returns the bound address.
pub async fn listen(
    addr: SocketAddr,
    which: Endpoints,
    metrics: Arc<ProxyMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, which, metrics, shutdown));
    Ok(bound)
}

async fn serve(listener: TcpListener, which: Endpoints, metrics: Arc<ProxyMetrics>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "accepting a proxy metrics/health connection");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(answer(which, request.uri().path(), &metrics)) }
        });
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "proxy metrics/health connection ended");
            }
        });
    }
}

fn answer(which: Endpoints, path: &str, metrics: &ProxyMetrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (which, path) {
        (Endpoints::Metrics, "/metrics") => (200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        (Endpoints::Health, "/healthz" | "/livez") => {
            let (status, body) = metrics.health();
            (status, "application/json", body)
        }
        _ => (404, "text/plain; charset=utf-8", "404 page not found\n".to_string()),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_are_timed_counted_and_sized() {
        let metrics = ProxyMetrics::default();
        metrics.synced(now(), Duration::from_millis(3), 42, 7);
        metrics.failed(Duration::from_millis(300));
        let text = metrics.render();
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1"), "{text}");
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.512\"} 2"), "{text}");
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 2"), "{text}");
        assert!(text.contains("kubeproxy_sync_proxy_rules_nftables_rules 42"), "{text}");
        assert!(text.contains("kubeproxy_sync_proxy_rules_service_ports 7"), "{text}");
        assert!(text.contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1"), "{text}");
    }

    #[test]
    fn a_change_left_unsynced_past_the_timeout_makes_the_proxy_unhealthy() {
        let metrics = ProxyMetrics::default();
        assert!(metrics.healthy_at(now()), "nothing pending");
        metrics.queued(false);
        let queued = metrics.times().oldest_pending.unwrap();
        assert!(metrics.healthy_at(queued + 59.0));
        assert!(!metrics.healthy_at(queued + 61.0));
        // A sync that started after the change clears it.
        metrics.synced(queued + 0.001, Duration::from_millis(1), 1, 1);
        assert!(metrics.healthy_at(queued + 61.0));
        assert_eq!(metrics.health().0, 200);
    }

    #[test]
    fn a_change_queued_during_a_sync_stays_pending() {
        let metrics = ProxyMetrics::default();
        let started = now() - 1.0;
        metrics.queued(true);
        metrics.synced(started, Duration::from_millis(1), 1, 1);
        assert!(metrics.times().oldest_pending.is_some());
    }
}
