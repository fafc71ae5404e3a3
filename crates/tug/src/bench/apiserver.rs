//! `tug bench apiserver`: the API server's throughput, latency and memory.
//!
//! It starts a real `tug server`, reads its idle RSS, and drives it: creates, gets and lists with 1, 16
//! and 64 concurrent clients, and the events per second 100 watchers receive. The baseline is
//! the raw create rate of the same store backend (SQLite in a separate directory, or a separate
//! etcd member, same machine, same moment), so the ratio says what the API layer costs.
//!
//! With `--datastore etcd` the server runs on a local etcd (Debian's etcd-server), and a second
//! server on the same etcd measures how long a write through one takes to reach a watch on the
//! other.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::{Scratch, ServerUnderTest};
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use tokio::sync::Barrier;
use tug_store::bench::Workload;
use tug_store::etcd::local::LocalEtcd;
use tug_store::etcd::{EtcdConfig, EtcdStore};

/// Flags of `tug bench apiserver`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Objects created per client-count run.
    #[arg(long, default_value_t = 2000)]
    pub creates: usize,
    /// Requests per get and list run.
    #[arg(long, default_value_t = 2000)]
    pub reads: usize,
    /// Events created for the watch fan-out run.
    #[arg(long, default_value_t = 200)]
    pub watch_events: usize,
    /// Watchers in the fan-out run.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// The datastore under test: `sqlite` (the embedded default) or `etcd` (a local member).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "etcd"])]
    pub datastore: String,
    /// Writes timed from one server to a watch on another (etcd only).
    #[arg(long, default_value_t = 200)]
    pub cross_server_writes: usize,
}

async fn start_etcd(dir: std::path::PathBuf) -> anyhow::Result<LocalEtcd> {
    std::fs::create_dir_all(&dir)?;
    Ok(tokio::task::spawn_blocking(move || LocalEtcd::start(&dir)).await??)
}

struct Sample {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1]
    }

    fn line(&self, what: &str, clients: usize) -> String {
        format!(
            "| {what} | {clients} | {:.0}/s | {:.2} ms | {:.2} ms |",
            self.rate(),
            self.pct(0.50).as_secs_f64() * 1e3,
            self.pct(0.99).as_secs_f64() * 1e3
        )
    }
}

fn config_map(name: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(BTreeMap::from([("bench".into(), "yes".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("payload".into(), "x".repeat(1000))])),
        ..Default::default()
    }
}

/// Runs `total` operations from `clients` concurrent tasks; `op(i)` performs operation `i`.
async fn drive<F, Fut>(clients: usize, total: usize, op: F) -> anyhow::Result<Sample>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::new();
            let mut i = c;
            while i < total {
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
                i += clients;
            }
            anyhow::Ok(lat)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Sample { ops: total, elapsed: start.elapsed(), latencies })
}

async fn raw_store_baseline(
    dir: &Path,
    datastore: &str,
    clients: usize,
    total: usize,
    workload: &Workload,
) -> anyhow::Result<tug_store::bench::BenchReport> {
    if datastore == "etcd" {
        // A member of its own, so the server's traffic does not share it.
        let etcd = start_etcd(dir.join(format!("raw-etcd-{clients}"))).await?;
        let config = EtcdConfig { endpoints: vec![etcd.endpoint()], ..EtcdConfig::default() };
        let store = EtcdStore::connect(&config).await?;
        return Ok(tug_store::bench::bench_raw_creates(Arc::new(store), clients, total, workload).await);
    }
    let path = dir.join(format!("raw-{clients}.db"));
    let store = tokio::task::spawn_blocking(move || tug_store::sqlite::SqliteStore::open(&path)).await??;
    Ok(tug_store::bench::bench_raw_creates(Arc::new(store), clients, total, workload).await)
}

/// What the raw baseline writes: values the size of the benchmark's ConfigMap as the server
/// keeps it, found by creating one and reading it back. The object read back carries its
/// resourceVersion, which the stored form does not, so the figure is a few bytes generous.
async fn api_workload(client: &kube::Client) -> anyhow::Result<Workload> {
    let ns = "bench-probe";
    super::create_namespace(client, ns).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &config_map("cm-0".into())).await?;
    let stored = api.get("cm-0").await?;
    Ok(Workload { key_prefix: "/registry/configmaps/raw-".into(), value_size: serde_json::to_vec(&stored)?.len() })
}

/// Write-to-watch latency across two servers on one etcd: each ConfigMap is created through
/// `writer` and timed until `reader`'s watch reports it.
async fn cross_server_watch(writer: &kube::Client, reader: &kube::Client, writes: usize) -> anyhow::Result<Sample> {
    let ns = "bench-cross";
    let ns_api: Api<Namespace> = Api::all(writer.clone());
    ns_api
        .create(
            &PostParams::default(),
            &Namespace { metadata: ObjectMeta { name: Some(ns.into()), ..Default::default() }, ..Default::default() },
        )
        .await?;
    let write_api: Api<ConfigMap> = Api::namespaced(writer.clone(), ns);
    let read_api: Api<ConfigMap> = Api::namespaced(reader.clone(), ns);
    let rv = read_api.list(&ListParams::default().limit(1)).await?.metadata.resource_version.unwrap_or_default();
    let mut stream = read_api.watch(&WatchParams::default(), &rv).await?.boxed();
    let mut latencies = Vec::with_capacity(writes);
    let start = Instant::now();
    for i in 0..writes {
        let name = format!("x-{i}");
        let sent = Instant::now();
        write_api.create(&PostParams::default(), &config_map(name.clone())).await?;
        loop {
            match stream.next().await {
                Some(Ok(WatchEvent::Added(cm))) if cm.metadata.name.as_deref() == Some(name.as_str()) => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("watch on the second server failed: {e}"),
                None => bail!("watch on the second server ended"),
            }
        }
        latencies.push(sent.elapsed());
    }
    Ok(Sample { ops: writes, elapsed: start.elapsed(), latencies })
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let scratch = Scratch::new("apiserver")?;
    let tmp = scratch.0.clone();
    // The server's etcd member, if any; killed when dropped, after the servers stopped.
    let mut etcd_member = None;
    let mut server_args: Vec<String> = Vec::new();
    if args.datastore == "etcd" {
        let etcd = start_etcd(tmp.join("etcd")).await?;
        server_args = vec!["--datastore-endpoint".into(), etcd.endpoint(), "--token".into(), "bench".into()];
        etcd_member = Some(etcd);
    }
    let server_flags: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let server = ServerUnderTest::start(&tmp, &server_flags).await?;
    let client = server.client.clone();
    // Let the controllers settle before reading the idle footprint.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = server.rss_mib();
    // Split, because the mapped binary's share depends on more than the code that ran: the
    // kernel maps whole page-cache folios, which are larger for a freshly written binary.
    let (idle_anon, idle_file) = (server.rss_part_mib("RssAnon:"), server.rss_part_mib("RssFile:"));
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let workload = api_workload(&client).await?;
    let mut out = Vec::new();
    out.push("| operation | clients | rate | p50 | p99 |".to_string());
    out.push("|---|---|---|---|---|".to_string());
    let mut ratios = Vec::new();
    for clients in [1usize, 16, 64] {
        let raw = raw_store_baseline(&tmp, &args.datastore, clients, args.creates, &workload).await?;
        let backend = if args.datastore == "etcd" { "etcd" } else { "SQLite" };
        out.push(format!(
            "| raw {backend} store create (baseline) | {clients} | {:.0}/s | {:.2} ms | {:.2} ms |",
            raw.ops_per_sec,
            raw.p50.as_secs_f64() * 1e3,
            raw.p99.as_secs_f64() * 1e3
        ));
        let ns = format!("bench-{clients}");
        ns_api
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta { name: Some(ns.clone()), ..Default::default() },
                    ..Default::default()
                },
            )
            .await?;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let a = api.clone();
        let create = drive(clients, args.creates, move |i| {
            let a = a.clone();
            async move {
                a.create(&PostParams::default(), &config_map(format!("cm-{i}"))).await?;
                Ok(())
            }
        })
        .await?;
        out.push(create.line("API create (ConfigMap, 1 KiB)", clients));
        ratios.push((clients, create.rate() / raw.ops_per_sec, create.pct(0.99)));
        let a = api.clone();
        let creates = args.creates;
        let get = drive(clients, args.reads, move |i| {
            let a = a.clone();
            async move {
                a.get(&format!("cm-{}", i % creates)).await?;
                Ok(())
            }
        })
        .await?;
        out.push(get.line("API get", clients));
        let a = api.clone();
        let list = drive(clients, args.reads / 10, move |_| {
            let a = a.clone();
            async move {
                a.list(&ListParams::default().limit(100)).await?;
                Ok(())
            }
        })
        .await?;
        out.push(list.line("API list (100 per page)", clients));
    }
    // Watch fan-out.
    let ns = "bench-watch".to_string();
    ns_api
        .create(
            &PostParams::default(),
            &Namespace { metadata: ObjectMeta { name: Some(ns.clone()), ..Default::default() }, ..Default::default() },
        )
        .await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let rv = api.list(&ListParams::default().limit(1)).await?.metadata.resource_version.unwrap_or_default();
    let expected = args.watch_events;
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
        watchers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < expected {
                match stream.next().await {
                    Some(Ok(WatchEvent::Added(_))) => seen += 1,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::anyhow!(e)),
                    None => bail!("watch ended after {seen} events"),
                }
            }
            Ok(Instant::now())
        }));
    }
    let start = Instant::now();
    for i in 0..expected {
        api.create(&PostParams::default(), &config_map(format!("w-{i}"))).await?;
    }
    let mut last = start;
    for w in watchers {
        last = last.max(w.await??);
    }
    let delivered = expected * args.watchers;
    let fanout = delivered as f64 / (last - start).as_secs_f64();
    let busy_rss = server.rss_mib();
    let cross = if args.datastore == "etcd" {
        let second = ServerUnderTest::start(&tmp.join("second"), &server_flags).await?;
        let sample = cross_server_watch(&client, &second.client, args.cross_server_writes).await?;
        second.stop().await;
        Some(sample)
    } else {
        None
    };
    server.stop().await;
    drop(etcd_member);

    super::header(&format!("apiserver on {}", args.datastore));
    for l in &out {
        println!("{l}");
    }
    println!();
    println!(
        "watch fan-out: {delivered} events to {} watchers in {:.2} s = {fanout:.0} events/s",
        args.watchers,
        (last - start).as_secs_f64()
    );
    println!(
        "the raw baseline writes {} B values (a created ConfigMap as the API returns it) under keys like the API's",
        workload.value_size
    );
    for (clients, ratio, p99) in ratios {
        println!(
            "API create rate / raw store create rate at {clients} clients: {:.0}%  (p99 create {:.2} ms)",
            ratio * 100.0,
            p99.as_secs_f64() * 1e3
        );
    }
    println!(
        "server RSS: idle {idle_rss:.1} MiB (anonymous {idle_anon:.1}, mapped files {idle_file:.1}), after the run {busy_rss:.1} MiB"
    );
    if let Some(cross) = cross {
        println!(
            "write through one server to a watch on another (same etcd), {} writes: p50 {:.2} ms, p99 {:.2} ms",
            cross.ops,
            cross.pct(0.5).as_secs_f64() * 1e3,
            cross.pct(0.99).as_secs_f64() * 1e3
        );
    }
    Ok(())
}
