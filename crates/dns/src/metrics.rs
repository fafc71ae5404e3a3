//! The server's own figures in Prometheus' text format, under CoreDNS's metric names so that
//! dashboards made for it read ours: requests, responses by rcode, request latency, cache hits.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::server::Transport;

/// Upper bounds of the latency histogram (CoreDNS's: 0.25 ms doubling to 8 s).
const BUCKETS: [f64; 16] =
    [0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192];
/// Response codes counted by name; others count as "other".
const RCODES: [&str; 6] = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];

#[derive(Debug, Default)]
pub struct Metrics {
    requests_udp: AtomicU64,
    requests_tcp: AtomicU64,
    /// Indexed like RCODES, plus one for "other".
    responses: [AtomicU64; RCODES.len() + 1],
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_micros: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl Metrics {
    pub fn request(&self, transport: Transport) {
        match transport {
            Transport::Udp => &self.requests_udp,
            Transport::Tcp => &self.requests_tcp,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// One answered request: its response code (low four bits) and how long it took.
    pub fn response(&self, rcode: u8, took: Duration) {
        let index = usize::from(rcode).min(RCODES.len());
        self.responses[index].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.duration_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn cache(&self, hit: bool) {
        if hit { &self.cache_hits } else { &self.cache_misses }.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str("# HELP coredns_dns_requests_total Counter of DNS requests made per protocol.\n");
        out.push_str("# TYPE coredns_dns_requests_total counter\n");
        let _ = writeln!(out, "coredns_dns_requests_total{{proto=\"udp\"}} {}", get(&self.requests_udp));
        let _ = writeln!(out, "coredns_dns_requests_total{{proto=\"tcp\"}} {}", get(&self.requests_tcp));
        out.push_str("# HELP coredns_dns_responses_total Counter of response status codes.\n");
        out.push_str("# TYPE coredns_dns_responses_total counter\n");
        for (name, count) in RCODES.iter().chain(&["other"]).zip(&self.responses) {
            let _ = writeln!(out, "coredns_dns_responses_total{{rcode=\"{name}\"}} {}", get(count));
        }
        out.push_str("# HELP coredns_dns_request_duration_seconds Histogram of the time each request took.\n");
        out.push_str("# TYPE coredns_dns_request_duration_seconds histogram\n");
        for (bound, bucket) in BUCKETS.iter().zip(&self.duration_buckets) {
            let _ = writeln!(out, "coredns_dns_request_duration_seconds_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let count = get(&self.duration_count);
        let _ = writeln!(out, "coredns_dns_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ =
            writeln!(out, "coredns_dns_request_duration_seconds_sum {}", get(&self.duration_sum_micros) as f64 / 1e6);
        let _ = writeln!(out, "coredns_dns_request_duration_seconds_count {count}");
        out.push_str("# HELP coredns_cache_hits_total The count of cache hits.\n");
        out.push_str("# TYPE coredns_cache_hits_total counter\n");
        let _ = writeln!(out, "coredns_cache_hits_total {}", get(&self.cache_hits));
        out.push_str("# HELP coredns_cache_misses_total The count of cache misses.\n");
        out.push_str("# TYPE coredns_cache_misses_total counter\n");
        let _ = writeln!(out, "coredns_cache_misses_total {}", get(&self.cache_misses));
        out
    }
}

/// Serves `GET /metrics` (any other path: 404) on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "accepting a metrics connection");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let metrics = metrics.clone();
            async move {
                let response = if request.uri().path() == "/metrics" {
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(metrics.render())))
                } else {
                    Response::builder().status(404).body(Full::new(Bytes::from_static(b"404 page not found\n")))
                };
                Ok::<_, Infallible>(response.unwrap_or_default())
            }
        });
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

/// Binds `addr` and serves the metrics there in the background.
pub async fn listen(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, metrics, shutdown));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_responses_and_latency_are_counted() {
        let metrics = Metrics::default();
        metrics.request(Transport::Udp);
        metrics.request(Transport::Tcp);
        metrics.response(0, Duration::from_micros(300));
        metrics.response(3, Duration::from_millis(3));
        metrics.cache(true);
        let text = metrics.render();
        assert!(text.contains("coredns_dns_requests_total{proto=\"udp\"} 1\n"), "{text}");
        assert!(text.contains("coredns_dns_responses_total{rcode=\"NXDOMAIN\"} 1\n"), "{text}");
        assert!(text.contains("coredns_dns_request_duration_seconds_bucket{le=\"0.00025\"} 0\n"), "{text}");
        assert!(text.contains("coredns_dns_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("coredns_dns_request_duration_seconds_bucket{le=\"0.004\"} 2\n"), "{text}");
        assert!(text.contains("coredns_dns_request_duration_seconds_count 2\n"), "{text}");
        assert!(text.contains("coredns_cache_hits_total 1\n"), "{text}");
    }
}
