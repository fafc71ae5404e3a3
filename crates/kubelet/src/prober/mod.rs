//! Container probes (upstream's `prober` package): one worker per running container and probe
//! (startup, liveness, readiness) that runs the probe every `periodSeconds` after
//! `initialDelaySeconds` and turns runs into a result once `successThreshold` or
//! `failureThreshold` consecutive runs agree.
//!
//! The results feed the rest of the agent: readiness (and startup) decide a container's
//! `ready` and `started` flags and so the pod's Ready condition; a liveness or startup failure
//! makes the next sync kill the container, which is then restarted per the pod's restart
//! policy. Liveness and readiness wait until the startup probe has succeeded. Every failed run
//! is announced with an `Unhealthy` event, as upstream does.

pub mod probe;
mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio_util::sync::CancellationToken;
use tug_runtime::cri::{ContainerState, RuntimeService};

use crate::events::{self, EventRecorder, container_field_path};
use crate::kuberuntime::PodRuntimeState;
use probe::{Outcome, Target};

/// The three kinds of probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// The name events use ("Liveness probe failed: ...").
    pub fn label(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => container.startup_probe.as_ref(),
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
        }
    }

    /// What a container is taken to be before its first result: not ready, alive, not started.
    fn initial(self) -> ProbeResult {
        match self {
            ProbeKind::Readiness => ProbeResult::Failure,
            ProbeKind::Liveness => ProbeResult::Success,
            ProbeKind::Startup => ProbeResult::Unknown,
        }
    }
}

/// A probe's settled result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Failure,
    Unknown,
}

/// Probe results by container ID, as a sync or a status computation reads them at one moment.
#[derive(Debug, Clone, Default)]
pub struct ProbeResults {
    results: HashMap<(String, ProbeKind), ProbeResult>,
}

impl ProbeResults {
    pub fn get(&self, container_id: &str, kind: ProbeKind) -> Option<ProbeResult> {
        self.results.get(&(container_id.to_owned(), kind)).copied()
    }

    /// Whether the running container `container_id` passed its startup probe (or has none).
    pub fn started(&self, container_id: &str, container: &Container) -> bool {
        container.startup_probe.is_none() || self.get(container_id, ProbeKind::Startup) == Some(ProbeResult::Success)
    }

    /// Whether the running container is ready: started, and its readiness probe (if any) passes.
    pub fn ready(&self, container_id: &str, container: &Container) -> bool {
        self.started(container_id, container)
            && (container.readiness_probe.is_none()
                || self.get(container_id, ProbeKind::Readiness) == Some(ProbeResult::Success))
    }

    /// The probe that says the container must be restarted: a failed startup or liveness probe.
    pub fn failed(&self, container_id: &str) -> Option<ProbeKind> {
        [ProbeKind::Startup, ProbeKind::Liveness]
            .into_iter()
            .find(|k| self.get(container_id, *k) == Some(ProbeResult::Failure))
    }

    #[cfg(test)]
    pub fn set(&mut self, container_id: &str, kind: ProbeKind, result: ProbeResult) {
        self.results.insert((container_id.to_owned(), kind), result);
    }
}

type WorkerKey = (String, String, ProbeKind);

/// Runs the probes of this node's containers.
pub struct ProbeManager {
    runtime: Arc<dyn RuntimeService>,
    recorder: Arc<EventRecorder>,
    results: Arc<Mutex<ProbeResults>>,
    /// (pod UID, container ID, kind) to the worker's stop token.
    workers: Mutex<HashMap<WorkerKey, CancellationToken>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProbeManager {
    pub fn new(runtime: Arc<dyn RuntimeService>, recorder: Arc<EventRecorder>) -> Self {
        ProbeManager {
            runtime,
            recorder,
            results: Arc::new(Mutex::new(ProbeResults::default())),
            workers: Mutex::new(HashMap::new()),
        }
    }

    /// The results now.
    pub fn results(&self) -> ProbeResults {
        lock(&self.results).clone()
    }

    /// Starts a worker for every probe of the pod's running containers that has none, and stops
    /// the workers of containers that no longer run. `node_ip` is the address of host-network
    /// pods.
    pub fn sync_pod(&self, pod: &Arc<Pod>, state: &PodRuntimeState, node_ip: &str) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
        // Sidecars (restartable init containers) are probed like app containers.
        let sidecars = spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| crate::kuberuntime::actions::is_sidecar(c));
        let pod_ip = state.ready_sandbox().and_then(|s| s.ips.first().cloned()).unwrap_or_else(|| node_ip.to_owned());
        let mut wanted: Vec<WorkerKey> = Vec::new();
        for container in containers.chain(sidecars) {
            let Some(running) = state.latest(&container.name).filter(|s| s.state == ContainerState::Running) else {
                continue;
            };
            for kind in [ProbeKind::Startup, ProbeKind::Liveness, ProbeKind::Readiness] {
                let Some(probe) = kind.of(container) else { continue };
                let key = (uid.clone(), running.id.clone(), kind);
                wanted.push(key.clone());
                let mut workers = lock(&self.workers);
                if workers.contains_key(&key) {
                    continue;
                }
                let stop = CancellationToken::new();
                workers.insert(key, stop.clone());
                lock(&self.results).results.insert((running.id.clone(), kind), kind.initial());
                let worker = Worker {
                    runtime: self.runtime.clone(),
                    recorder: self.recorder.clone(),
                    results: self.results.clone(),
                    pod: pod.clone(),
                    container: container.clone(),
                    container_id: running.id.clone(),
                    started_at: running.started_at.unwrap_or_else(SystemTime::now),
                    pod_ip: pod_ip.clone(),
                    kind,
                    probe: probe.clone(),
                };
                tokio::spawn(worker.run(stop));
            }
        }
        self.stop_workers(|key| key.0 == uid && !wanted.contains(key));
    }

    /// Stops every worker of pod `uid` and forgets its results.
    pub fn remove_pod(&self, uid: &str) {
        self.stop_workers(|key| key.0 == uid);
    }

    fn stop_workers(&self, which: impl Fn(&WorkerKey) -> bool) {
        let mut workers = lock(&self.workers);
        let stopped: Vec<WorkerKey> = workers.keys().filter(|k| which(k)).cloned().collect();
        let mut results = lock(&self.results);
        for key in stopped {
            if let Some(stop) = workers.remove(&key) {
                stop.cancel();
            }
            results.results.remove(&(key.1.clone(), key.2));
        }
    }
}

/// One probe of one container instance.
struct Worker {
    runtime: Arc<dyn RuntimeService>,
    recorder: Arc<EventRecorder>,
    results: Arc<Mutex<ProbeResults>>,
    pod: Arc<Pod>,
    container: Container,
    container_id: String,
    started_at: SystemTime,
    pod_ip: String,
    kind: ProbeKind,
    probe: Probe,
}

impl Worker {
    async fn run(self, stop: CancellationToken) {
        let period = Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64);
        let initial_delay = Duration::from_secs(self.probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let success_threshold = self.probe.success_threshold.unwrap_or(1).max(1) as u32;
        let failure_threshold = self.probe.failure_threshold.unwrap_or(3).max(1) as u32;
        let mut last: Option<ProbeResult> = None;
        let mut run_length = 0u32;
        loop {
            if self.due(initial_delay) {
                let outcome = self.probe_once().await;
                let result = match &outcome {
                    Outcome::Success => ProbeResult::Success,
                    Outcome::Failure(output) => {
                        self.announce_failure(output).await;
                        ProbeResult::Failure
                    }
                };
                run_length = if last == Some(result) { run_length + 1 } else { 1 };
                last = Some(result);
                let settled = match result {
                    ProbeResult::Success => run_length >= success_threshold,
                    _ => run_length >= failure_threshold,
                };
                if settled && !stop.is_cancelled() {
                    lock(&self.results).results.insert((self.container_id.clone(), self.kind), result);
                    // A failed liveness or startup probe gets the container killed: nothing more
                    // to probe in this instance. A passed startup probe is done for good.
                    let done = matches!(
                        (self.kind, result),
                        (ProbeKind::Startup, ProbeResult::Success)
                            | (ProbeKind::Liveness | ProbeKind::Startup, ProbeResult::Failure)
                    );
                    if done {
                        return;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    /// Whether this run counts: past the initial delay, and for liveness and readiness, after
    /// the startup probe has succeeded.
    fn due(&self, initial_delay: Duration) -> bool {
        if self.kind != ProbeKind::Startup && self.container.startup_probe.is_some() {
            let started = lock(&self.results).get(&self.container_id, ProbeKind::Startup) == Some(ProbeResult::Success);
            if !started {
                return false;
            }
        }
        self.started_at.elapsed().unwrap_or_default() >= initial_delay
    }

    async fn probe_once(&self) -> Outcome {
        let target = Target {
            container: &self.container,
            container_id: &self.container_id,
            pod_ip: &self.pod_ip,
            runtime: self.runtime.as_ref(),
        };
        probe::run(&self.probe, &target).await
    }

    async fn announce_failure(&self, output: &str) {
        let message = format!("{} probe failed: {}", self.kind.label(), output.trim_end());
        let field = Some(container_field_path(&self.pod, &self.container.name));
        self.recorder.record(&self.pod, field, events::WARNING, "Unhealthy", &message).await;
    }
}

#[cfg(test)]
mod tests;
