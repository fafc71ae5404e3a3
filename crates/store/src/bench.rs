//! Raw store throughput: the baseline that API server benchmarks are compared against.
//!
//! It measures what the store alone can do with no HTTP, encoding or admission in the way, so
//! a benchmark of the whole API can report how much of the store's rate it keeps.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::Store;

/// The size of each value written by default, close to a small Kubernetes object.
pub const VALUE_SIZE: usize = 1024;

/// What a run writes: where its keys go and how big its values are.
///
/// A baseline for an API benchmark should write what the API writes: its objects as stored
/// (with server-set metadata such as managedFields, so larger than what clients send) under
/// keys shaped like the API's, whose creation order is not their key order.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Keys are `{key_prefix}{run}/cm-{i}`, with `run` unique to each run.
    pub key_prefix: String,
    pub value_size: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Workload { key_prefix: "/bench/raw-creates/".into(), value_size: VALUE_SIZE }
    }
}

/// What a run measured. Latencies are of successful writes only.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub clients: usize,
    /// Writes attempted.
    pub total: usize,
    /// Writes that failed (counted, not timed).
    pub failed: usize,
    pub elapsed: Duration,
    /// Successful writes per second of wall time.
    pub ops_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "clients={} writes={} failed={} elapsed={:.2?} rate={:.0}/s p50={:.2?} p99={:.2?}",
            self.clients, self.total, self.failed, self.elapsed, self.ops_per_sec, self.p50, self.p99
        )
    }
}

/// Creates `total` new keys as `workload` describes from `clients` concurrent tasks, each
/// waiting for its write to be acknowledged before starting the next, and reports the rate and
/// per-write latency.
pub async fn bench_raw_creates(
    store: Arc<dyn Store>,
    clients: usize,
    total: usize,
    workload: &Workload,
) -> BenchReport {
    let clients = clients.max(1);
    // Keys unique to this run, so runs can repeat on one store.
    let run = store.current_revision().await.unwrap_or_default();
    let prefix: Arc<str> = format!("{}{run}/cm-", workload.key_prefix).into();
    let value = Bytes::from(sample_value(workload.value_size));
    let next = Arc::new(AtomicUsize::new(0));

    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (store, value, next, prefix) =
                (Arc::clone(&store), value.clone(), Arc::clone(&next), Arc::clone(&prefix));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let key = format!("{prefix}{i}");
                    let began = Instant::now();
                    match store.create(&key, value.clone()).await {
                        Ok(_) => latencies.push(began.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
                (latencies, failed)
            })
        })
        .collect();

    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok((done, failures)) => {
                latencies.extend(done);
                failed += failures;
            }
            // A panicked client is a harness fault, not a store result: count its share lost.
            Err(_) => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    BenchReport {
        clients,
        total,
        failed,
        elapsed,
        ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
    }
}

/// The nearest-rank percentile of sorted samples (zero for none).
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A JSON-looking value of `size` bytes, varied so it is not trivially compressible.
fn sample_value(size: usize) -> Vec<u8> {
    let mut value = br#"{"kind":"ConfigMap","data":{"payload":""#.to_vec();
    let mut state: u32 = 0x9E37_79B9;
    while value.len() < size.saturating_sub(3) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        value.push(b'a' + (state % 26) as u8);
    }
    value.extend_from_slice(br#""}}"#);
    value.truncate(size);
    value
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{VALUE_SIZE, Workload, bench_raw_creates, percentile, sample_value};
    use crate::Store;
    use crate::memory::MemoryStore;

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99), Duration::from_millis(99));
        assert_eq!(percentile(&samples[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn sample_value_has_the_size_asked_for() {
        assert_eq!(sample_value(VALUE_SIZE).len(), VALUE_SIZE);
        assert_eq!(sample_value(1448).len(), 1448);
        assert_eq!(sample_value(2).len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_create_bench_writes_every_key_once() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let report = bench_raw_creates(Arc::clone(&store), 4, 200, &Workload::default()).await;
        assert_eq!((report.total, report.failed), (200, 0));
        assert!(report.ops_per_sec > 0.0 && report.p50 <= report.p99);
        assert_eq!(store.count("/bench/raw-creates/").await.unwrap(), 200);
        // A second run on the same store writes new keys instead of colliding.
        let again = bench_raw_creates(Arc::clone(&store), 4, 50, &Workload::default()).await;
        assert_eq!(again.failed, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_create_bench_writes_the_workload_it_is_given() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let workload = Workload { key_prefix: "/registry/configmaps/raw-".into(), value_size: 1448 };
        let report = bench_raw_creates(Arc::clone(&store), 2, 20, &workload).await;
        assert_eq!(report.failed, 0);
        let written = store.list("/registry/configmaps/raw-", crate::ListOptions::default()).await.unwrap();
        assert_eq!(written.items.len(), 20);
        assert!(written.items.iter().all(|kv| kv.value.len() == 1448 && kv.key.contains("/cm-")));
    }
}
