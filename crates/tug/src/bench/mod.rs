//! `tug bench ...`: each component's throughput, latency and memory, measured against a
//! baseline taken in the same run (machines are noisy; ratios travel better than absolutes).
//!
//! Every benchmark starts a real `tug server` (this binary, re-executed) on a fresh data
//! directory and drives it over HTTPS with a kube-rs client, as users' tools do.

pub mod apiserver;
pub mod controllers;
pub mod dns;
pub mod network;
pub mod network_join;
pub mod pods;
pub mod proxy;
pub mod scheduler;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};

/// A `tug server` started for a benchmark; killed when dropped.
pub struct ServerUnderTest {
    child: tokio::process::Child,
    pub pid: u32,
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
}

impl ServerUnderTest {
    /// Starts `tug server --disable-agent` on a free loopback port with its data in `dir`, plus
    /// `extra_args`, and waits until it answers.
    pub async fn start(dir: &Path, extra_args: &[&str]) -> anyhow::Result<ServerUnderTest> {
        Self::launch(dir, &[&["--disable-agent"], extra_args].concat()).await
    }

    /// Starts `tug server` with its node agent (give it `--node-name`, `--kubelet-port`...).
    pub async fn start_with_agent(dir: &Path, extra_args: &[&str]) -> anyhow::Result<ServerUnderTest> {
        Self::launch(dir, extra_args).await
    }

    async fn launch(dir: &Path, extra_args: &[&str]) -> anyhow::Result<ServerUnderTest> {
        let data = dir.join("server");
        let port = free_port()?;
        let exe = std::env::current_exe().context("finding the tug binary")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["server", "--bind-address", "127.0.0.1", "--https-listen-port", &port.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting tug server")?;
        let pid = child.id().context("server pid")?;
        let kubeconfig = data.join("kubeconfig.yaml");
        let started = Instant::now();
        let client = loop {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill().await;
                bail!("tug server did not become ready within 30 s");
            }
            if kubeconfig.exists()
                && let Ok(c) = crate::client_from_kubeconfig(&kubeconfig).await
                && c.apiserver_version().await.is_ok()
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(ServerUnderTest { child, pid, client, kubeconfig })
    }

    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.pid, "VmRSS:")
    }

    /// One part of the resident memory (`RssAnon:`, `RssFile:`) in MiB.
    pub fn rss_part_mib(&self, field: &str) -> f64 {
        rss_mib(self.pid, field)
    }

    /// The most memory the server has held so far.
    pub fn peak_rss_mib(&self) -> f64 {
        rss_mib(self.pid, "VmHWM:")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A figure from /proc/PID/status (`VmRSS:`, `VmHWM:`, `RssAnon:`, ...) in MiB; 0 when unreadable.
pub fn rss_mib(pid: u32, field: &str) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0.0 };
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A scratch directory for one benchmark run, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("tug-bench-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() }, ..Default::default() };
    api.create(&PostParams::default(), &ns).await.with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// The header every benchmark prints: what ran, on how many cores, when.
pub fn header(what: &str) {
    println!(
        "tug bench {what}: {} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        jiff::Timestamp::now()
    );
    println!();
}
