//! `/metrics` in the Prometheus text format: request counts and latency histograms by verb,
//! resource and code, named as upstream's `apiserver_request_total` and
//! `apiserver_request_duration_seconds`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upstream's bucket bounds for request latency, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    total: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, String, u16), u64>,
    latency: BTreeMap<(String, String, String), Histogram>,
}

/// Request metrics of the API server.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Records one finished request. Long-running watches are counted but not timed, as
    /// upstream excludes them from the latency histogram.
    pub fn record(&self, verb: &str, group: &str, resource: &str, code: u16, elapsed: Duration) {
        let Ok(mut inner) = self.inner.lock() else { return };
        *inner.requests.entry((verb.to_string(), group.to_string(), resource.to_string(), code)).or_default() += 1;
        if verb == "WATCH" {
            return;
        }
        let h = inner.latency.entry((verb.to_string(), group.to_string(), resource.to_string())).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.total += 1;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else { return out };
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, resource and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for ((verb, group, resource, code), n) in &inner.requests {
            let _ = writeln!(
                out,
                "apiserver_request_total{{code=\"{code}\",group=\"{group}\",resource=\"{resource}\",verb=\"{verb}\"}} {n}"
            );
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group and resource.\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, group, resource), h) in &inner.latency {
            let labels = format!("group=\"{group}\",resource=\"{resource}\",verb=\"{verb}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ =
                    writeln!(out, "apiserver_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.total);
            let _ = writeln!(out, "apiserver_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "apiserver_request_duration_seconds_count{{{labels}}} {}", h.total);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record("GET", "", "pods", 200, Duration::from_millis(3));
        m.record("GET", "", "pods", 200, Duration::from_millis(30));
        m.record("GET", "", "pods", 404, Duration::from_millis(1));
        let text = m.render();
        assert!(text.contains("apiserver_request_total{code=\"200\",group=\"\",resource=\"pods\",verb=\"GET\"} 2"));
        assert!(text.contains(
            "apiserver_request_duration_seconds_bucket{group=\"\",resource=\"pods\",verb=\"GET\",le=\"0.005\"} 2"
        ));
        assert!(text.contains("apiserver_request_duration_seconds_count{group=\"\",resource=\"pods\",verb=\"GET\"} 3"));
    }
}
