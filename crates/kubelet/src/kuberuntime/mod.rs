//! Drives the container runtime for pods (upstream's `pkg/kubelet/kuberuntime`): reads what the
//! runtime has for a pod, computes what must change ([`actions`]), and makes it so: the pod
//! cgroup, the sandbox, volumes, image pulls, and container creation, start and stop, with
//! CrashLoopBackOff and the waiting reasons the pod status shows.
//!
//! The runtime is the source of truth: nothing about containers is kept in memory that could
//! not be read back from it, so an agent restarted while pods run picks them up as they are.

pub mod actions;
pub mod backoff;
pub mod container;
pub mod image_pull;
mod lifecycle;
pub mod sandbox;
mod seams;

pub(crate) use seams::ensure_qos_cgroups;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};
use tug_runtime::ImageService;
use tug_runtime::cri::{
    ContainerFilter, ContainerState, ContainerStatus, Mount, MountPropagation, PodSandboxConfig, PodSandboxState,
    PodSandboxStatus, RuntimeError, RuntimeService,
};

pub(crate) use seams::expand_env;

use crate::config::Config;
use crate::events::{self, EventRecorder, container_field_path};
use crate::qos;
use actions::{ContainerToKill, compute_pod_actions};
use backoff::{Backoff, go_duration};
use container::{ContainerInputs, container_config, format_pod};
use image_pull::ImagePuller;

/// The label and annotation keys upstream's kubelet puts on sandboxes and containers, so that
/// tools (crictl, our own re-adoption) recognise them.
pub mod labels {
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
    pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
    pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
    pub const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
    pub const POD_TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
}

/// Waiting reasons set by the sync itself, as upstream names them.
pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
pub const CREATE_CONTAINER_ERROR: &str = "CreateContainerError";
pub const RUN_CONTAINER_ERROR: &str = "RunContainerError";
/// The waiting reason of a container whose postStart hook failed (upstream's `ErrPostStartHook`).
pub const POST_START_HOOK_ERROR: &str = "PostStartHookError";

/// Upstream's `minimumGracePeriodInSeconds`: a kill never gets less.
const MIN_GRACE: Duration = Duration::from_secs(2);

/// Why containers of a pod are waiting, by container name: `(reason, message)`. Kept by the
/// pod's worker between syncs (upstream's `ReasonCache`).
pub type Reasons = HashMap<String, (String, String)>;

/// What the runtime has for one pod.
#[derive(Debug, Clone, Default)]
pub struct PodRuntimeState {
    /// Newest first.
    pub sandboxes: Vec<PodSandboxStatus>,
    /// Every container of every sandbox of the pod, newest first.
    pub containers: Vec<ContainerStatus>,
}

impl PodRuntimeState {
    /// The newest instance of the container `name`.
    pub fn latest(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers.iter().find(|c| c.metadata.name == name)
    }

    /// The instance before the newest.
    pub fn previous(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers.iter().filter(|c| c.metadata.name == name).nth(1)
    }

    pub fn ready_sandbox(&self) -> Option<&PodSandboxStatus> {
        self.sandboxes.first().filter(|s| s.state == PodSandboxState::Ready)
    }

    pub fn running(&self) -> impl Iterator<Item = &ContainerStatus> {
        self.containers.iter().filter(|c| c.state == ContainerState::Running)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("failed to create pod sandbox: {source}")]
    CreateSandbox {
        #[source]
        source: RuntimeError,
    },
    #[error(transparent)]
    Volumes(#[from] seams::VolumeSetupError),
}

/// The grace period a pod's containers get when it terminates (upstream's
/// `calculateEffectiveGracePeriod`): the deletion's, else the spec's, else 30 s; at least 2 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0)).max(MIN_GRACE)
}

fn pod_uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// The node's memory in bytes (MemTotal), for OOM score adjustments.
pub fn memory_capacity() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Every running container of `state`, to stop (pod deletion, a sandbox replaced).
fn stops(state: &PodRuntimeState) -> Vec<ContainerToKill> {
    state
        .running()
        .map(|c| ContainerToKill {
            id: c.id.clone(),
            name: c.metadata.name.clone(),
            reason: format!("Stopping container {}", c.metadata.name),
        })
        .collect()
}

/// Runs pods' sandboxes and containers through a [`RuntimeService`].
pub struct KubeRuntimeManager {
    pub(crate) runtime: Arc<dyn RuntimeService>,
    images: Arc<dyn ImageService>,
    puller: ImagePuller,
    pub(crate) recorder: Arc<EventRecorder>,
    client: kube::Client,
    pub(crate) config: Arc<Config>,
    memory_capacity: i64,
    crash_backoff: Mutex<Backoff>,
    /// Image ID (`sha256:<config>`) to the `repo@sha256:<manifest>` the status shows.
    image_ids: Mutex<HashMap<String, String>>,
    /// The containers' startup, liveness and readiness probes.
    pub(crate) probes: Arc<crate::prober::ProbeManager>,
}

impl std::fmt::Debug for KubeRuntimeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRuntimeManager").field("node", &self.config.node_name).finish_non_exhaustive()
    }
}

/// One container to start: its spec and where it sits.
struct StartTarget<'a> {
    container: &'a Container,
    sandbox_id: &'a str,
    sandbox_config: &'a PodSandboxConfig,
    volumes: &'a seams::Volumes,
    pod_ips: &'a [String],
    etc_hosts: Option<&'a PathBuf>,
}

impl KubeRuntimeManager {
    pub fn new(
        client: kube::Client,
        config: Arc<Config>,
        runtime: Arc<dyn RuntimeService>,
        images: Arc<dyn ImageService>,
        recorder: Arc<EventRecorder>,
    ) -> Self {
        KubeRuntimeManager {
            puller: ImagePuller::new(client.clone(), images.clone()),
            probes: Arc::new(crate::prober::ProbeManager::new(runtime.clone(), recorder.clone())),
            runtime,
            images,
            recorder,
            client,
            config,
            memory_capacity: memory_capacity(),
            crash_backoff: Mutex::new(Backoff::default()),
            image_ids: Mutex::new(HashMap::new()),
        }
    }

    /// Reads what the runtime has for the pod `uid`.
    pub async fn pod_state(&self, uid: &str) -> Result<PodRuntimeState, RuntimeError> {
        let mut state = PodRuntimeState::default();
        let mut sandboxes: Vec<_> = self
            .runtime
            .list_pod_sandboxes()
            .await?
            .into_iter()
            .filter(|s| s.labels.get(labels::POD_UID).map(String::as_str) == Some(uid))
            .collect();
        sandboxes.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.metadata.attempt)));
        for sandbox in sandboxes {
            match self.runtime.pod_sandbox_status(&sandbox.id).await {
                Ok(status) => state.sandboxes.push(status),
                Err(RuntimeError::SandboxNotFound(_)) => continue,
                Err(e) => return Err(e),
            }
            let filter = ContainerFilter { pod_sandbox_id: Some(sandbox.id.clone()), state: None };
            for c in self.runtime.list_containers(&filter).await? {
                match self.runtime.container_status(&c.id).await {
                    Ok(status) => state.containers.push(status),
                    Err(RuntimeError::ContainerNotFound(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        state.containers.sort_by_key(|c| std::cmp::Reverse((c.created_at, c.metadata.attempt)));
        Ok(state)
    }

    /// `repo@sha256:..` of the images the pod's containers run, by image ID.
    pub async fn image_ids(&self, state: &PodRuntimeState) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for c in &state.containers {
            if c.image_ref.is_empty() || out.contains_key(&c.image_ref) {
                continue;
            }
            let cached = self.image_ids.lock().unwrap_or_else(|e| e.into_inner()).get(&c.image_ref).cloned();
            let id = match cached {
                Some(id) => id,
                None => {
                    let found = self.images.image_status(&c.image_ref).await.ok().flatten();
                    let id = found.and_then(|i| i.repo_digests.first().cloned()).unwrap_or_else(|| c.image_ref.clone());
                    self.image_ids.lock().unwrap_or_else(|e| e.into_inner()).insert(c.image_ref.clone(), id.clone());
                    id
                }
            };
            out.insert(c.image_ref.clone(), id);
        }
        out
    }

    /// One sync of a pod that should run (upstream's `SyncPod`). Returns the runtime state
    /// after the changes.
    ///
    /// With `refresh_volumes`, volume contents are brought up to date even when no container
    /// starts (configMap and secret updates reach running pods); the worker asks for it on its
    /// periodic resync rather than on every status poll.
    pub async fn sync_pod(
        &self,
        pod: &Pod,
        reasons: &mut Reasons,
        refresh_volumes: bool,
    ) -> Result<PodRuntimeState, SyncError> {
        let uid = pod_uid(pod);
        let state = self.pod_state(uid).await?;
        let mut actions = compute_pod_actions(pod, &state);
        let probe_kills = self.probe_failures(pod, &state, &actions);
        tracing::debug!(?actions, "pod actions");
        if actions.kill_pod {
            self.kill_containers(pod, stops(&state), grace_period(pod)).await;
            for s in state.sandboxes.iter().filter(|s| s.state == PodSandboxState::Ready) {
                self.runtime.stop_pod_sandbox(&s.id).await?;
            }
        }
        let class = qos::pod_qos(pod);
        let cgroup_parent = qos::cgroup_parent(class, uid);
        let dns = seams::dns_config(pod, &self.config);
        let (sandbox_id, sandbox_config) = if actions.create_sandbox {
            let limits = qos::pod_limits(pod);
            seams::note_pod_cgroup(&self.config, uid);
            seams::ensure_cgroup(&cgroup_parent, &limits).await;
            let config = sandbox::sandbox_config(pod, &self.config, actions.attempt, cgroup_parent, dns);
            match self.runtime.run_pod_sandbox(&config).await {
                Ok(id) => (id, config),
                Err(source) => {
                    let message = format!("Failed to create pod sandbox: {source}");
                    self.recorder.record(pod, None, events::WARNING, "FailedCreatePodSandBox", &message).await;
                    return Err(SyncError::CreateSandbox { source });
                }
            }
        } else if let Some(id) = actions.sandbox_id.clone() {
            let attempt = state.sandboxes.first().map_or(0, |s| s.metadata.attempt);
            (id, sandbox::sandbox_config(pod, &self.config, attempt, cgroup_parent, dns))
        } else {
            return Ok(state);
        };
        let spec = pod.spec.as_ref();
        let init = actions
            .next_init_container
            .and_then(|i| spec.and_then(|s| s.init_containers.as_ref()).and_then(|l| l.get(i)));
        let init = match init {
            Some(c) if self.may_start(pod, &state, &c.name, reasons).await => Some(c),
            _ => None,
        };
        let mut to_start = Vec::new();
        for c in actions.containers_to_start.iter().filter_map(|i| spec.and_then(|s| s.containers.get(*i))) {
            if self.may_start(pod, &state, &c.name, reasons).await {
                to_start.push(c);
            }
        }
        for (kill, grace) in probe_kills {
            self.kill_containers(pod, vec![kill], grace).await;
        }
        if init.is_none() && to_start.is_empty() && actions.containers_to_kill.is_empty() {
            if refresh_volumes {
                self.setup_volumes(pod).await?;
            }
            return Ok(if actions.create_sandbox { self.pod_state(uid).await? } else { state });
        }
        let pod_ips = if host_network(pod) {
            vec![self.config.node_ip.to_string()]
        } else {
            self.runtime.pod_sandbox_status(&sandbox_id).await?.ips
        };
        let volumes = self.setup_volumes(pod).await?;
        let etc_hosts = if host_network(pod) {
            None
        } else {
            match seams::write_etc_hosts(&self.config, pod, &pod_ips) {
                Ok(path) => path,
                Err(error) => {
                    tracing::warn!(%error, "writing the pod's /etc/hosts");
                    None
                }
            }
        };
        let target = |container| StartTarget {
            container,
            sandbox_id: &sandbox_id,
            sandbox_config: &sandbox_config,
            volumes: &volumes,
            pod_ips: &pod_ips,
            etc_hosts: etc_hosts.as_ref(),
        };
        if let Some(c) = init {
            self.start_container(pod, &state, &target(c), reasons).await;
        }
        let kills = std::mem::take(&mut actions.containers_to_kill);
        self.kill_containers(pod, kills, grace_period(pod)).await;
        for c in to_start {
            self.start_container(pod, &state, &target(c), reasons).await;
        }
        self.prune_containers(&state).await;
        Ok(self.pod_state(uid).await?)
    }

    async fn setup_volumes(&self, pod: &Pod) -> Result<seams::Volumes, SyncError> {
        match seams::setup_pod_volumes(&self.client, &self.config, pod).await {
            Ok(v) => Ok(v),
            Err(error) => {
                self.recorder.record(pod, None, events::WARNING, "FailedMount", &error.to_string()).await;
                Err(error.into())
            }
        }
    }

    /// Upstream's `doBackOff`: whether the container may be started again now. A container
    /// whose last instance exited waits out its CrashLoopBackOff delay (the waiting reason and
    /// a BackOff event say so); starting it counts towards the next, longer delay.
    async fn may_start(&self, pod: &Pod, state: &PodRuntimeState, name: &str, reasons: &mut Reasons) -> bool {
        let Some(prev) = state.latest(name).filter(|s| s.state != ContainerState::Running) else { return true };
        let key = format!("{}_{name}", pod_uid(pod));
        let now = SystemTime::now();
        let exited_at = prev.finished_at.unwrap_or(prev.created_at);
        let waiting = {
            let mut backoff = self.crash_backoff.lock().unwrap_or_else(|e| e.into_inner());
            if backoff.is_in_backoff_since(&key, exited_at, now) {
                Some(backoff.get(&key))
            } else {
                backoff.next(&key, now);
                None
            }
        };
        let Some(delay) = waiting else { return true };
        let message =
            format!("back-off {} restarting failed container={name} pod={}", go_duration(delay), format_pod(pod));
        reasons.insert(name.into(), (CRASH_LOOP_BACK_OFF.into(), message));
        let event = format!("Back-off restarting failed container {name} in pod {}", format_pod(pod));
        let field = Some(container_field_path(pod, name));
        self.recorder.record(pod, field, events::WARNING, "BackOff", &event).await;
        false
    }

    /// Starts one container (upstream's `startContainer`); failures become the container's
    /// waiting reason.
    async fn start_container(&self, pod: &Pod, state: &PodRuntimeState, t: &StartTarget<'_>, reasons: &mut Reasons) {
        let c = t.container;
        let name = c.name.as_str();
        let field = Some(container_field_path(pod, name));
        let restart_count = state.latest(name).map_or(0, |s| s.metadata.attempt + 1);
        let fail = |reason: &str, message: String, reasons: &mut Reasons| {
            reasons.insert(name.into(), (reason.into(), message));
        };
        let image = match self.puller.ensure_image(pod, c, &self.recorder).await {
            Ok(image) => image,
            Err(failure) => return fail(failure.reason, failure.message, reasons),
        };
        let host_ip = self.config.node_ip.to_string();
        let env = match seams::container_env(&self.client, pod, &self.config.node_name, &host_ip, t.pod_ips, c).await {
            Ok(env) => env,
            Err(message) => {
                self.recorder.record(pod, field, events::WARNING, "Failed", &format!("Error: {message}")).await;
                return fail(CREATE_CONTAINER_CONFIG_ERROR, message, reasons);
            }
        };
        let mut mounts = match seams::container_mounts(pod, c, t.volumes, &env) {
            Ok(m) => m,
            Err(message) => {
                self.recorder.record(pod, field, events::WARNING, "Failed", &format!("Error: {message}")).await;
                return fail(CREATE_CONTAINER_CONFIG_ERROR, message, reasons);
            }
        };
        // The kubelet-managed /etc/hosts, unless the container mounts its own there.
        if let Some(hosts) = t.etc_hosts
            && !mounts.iter().any(|m| m.container_path == "/etc/hosts")
        {
            mounts.push(Mount {
                container_path: "/etc/hosts".into(),
                host_path: hosts.clone(),
                readonly: false,
                propagation: MountPropagation::Private,
            });
        }
        match crate::termination_message::prepare(&self.config, pod, c, restart_count) {
            Ok(Some(mount)) if !mounts.iter().any(|m| m.container_path == mount.container_path) => mounts.push(mount),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, container = %name, "preparing the termination message file"),
        }
        // The image's own user decides `runAsNonRoot` when the pod names no uid.
        let image_user = self.images.image_status(&image).await.ok().flatten().and_then(|i| i.user);
        let inputs = ContainerInputs {
            pod,
            container: c,
            qos: qos::pod_qos(pod),
            memory_capacity: self.memory_capacity,
            restart_count,
            image,
            image_user,
            env,
            mounts,
        };
        let config = match container_config(&inputs) {
            Ok(config) => config,
            Err(error) => {
                let message = error.to_string();
                self.recorder.record(pod, field, events::WARNING, "Failed", &format!("Error: {message}")).await;
                return fail(CREATE_CONTAINER_CONFIG_ERROR, message, reasons);
            }
        };
        let id = match self.runtime.create_container(t.sandbox_id, &config, t.sandbox_config).await {
            Ok(id) => id,
            Err(error) => {
                let message = error.to_string();
                self.recorder.record(pod, field, events::WARNING, "Failed", &format!("Error: {message}")).await;
                return fail(CREATE_CONTAINER_ERROR, message, reasons);
            }
        };
        self.recorder
            .record(pod, field.clone(), events::NORMAL, "Created", &format!("Created container: {name}"))
            .await;
        if let Err(error) = self.runtime.start_container(&id).await {
            let message = error.to_string();
            self.recorder.record(pod, field, events::WARNING, "Failed", &format!("Error: {message}")).await;
            return fail(RUN_CONTAINER_ERROR, message, reasons);
        }
        self.recorder.record(pod, field.clone(), events::NORMAL, "Started", &format!("Started container {name}")).await;
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let pod_ip = t.pod_ips.first().map_or("", String::as_str);
            let runtime = self.runtime.as_ref();
            // The hook has no deadline of its own upstream; the pod's grace period bounds it here.
            let limit = grace_period(pod).max(Duration::from_secs(30));
            if let Err(message) = lifecycle::run_handler(runtime, pod, c, &id, pod_ip, hook, limit).await {
                tracing::info!(container = %name, %message, "postStart hook failed");
                self.recorder.record(pod, field, events::WARNING, "FailedPostStartHook", &message).await;
                let kill =
                    ContainerToKill { id: id.clone(), name: name.to_owned(), reason: "FailedPostStartHook".into() };
                self.kill_containers(pod, vec![kill], grace_period(pod)).await;
                return fail(POST_START_HOOK_ERROR, message, reasons);
            }
        }
        reasons.remove(name);
    }

    /// Stops containers in parallel, each with the Killing event saying why.
    pub async fn kill_containers(&self, pod: &Pod, containers: Vec<ContainerToKill>, grace: Duration) {
        let stops = containers.into_iter().map(|kill| async move {
            let field = Some(container_field_path(pod, &kill.name));
            self.recorder.record(pod, field.clone(), events::NORMAL, "Killing", &kill.reason).await;
            let mut remaining = grace;
            // preStop runs first, inside the grace period; the stop signal gets what is left.
            let spec = pod.spec.as_ref().map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
            let container = spec.into_iter().flatten().find(|c| c.name == kill.name);
            if let Some((c, hook)) = container.and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)))
                && kill.reason != "FailedPostStartHook"
            {
                let pod_ip = self.pod_ip(pod).await;
                let runtime = self.runtime.as_ref();
                let started = std::time::Instant::now();
                let run = lifecycle::run_handler(runtime, pod, c, &kill.id, &pod_ip, hook, grace);
                match tokio::time::timeout(grace, run).await {
                    Ok(Ok(())) => {}
                    Ok(Err(message)) => {
                        self.recorder.record(pod, field, events::WARNING, "FailedPreStopHook", &message).await;
                    }
                    Err(_) => {
                        tracing::info!(container = %kill.name, "preStop hook did not finish within the grace period")
                    }
                }
                remaining = grace.saturating_sub(started.elapsed());
            }
            if let Err(error) = self.runtime.stop_container(&kill.id, remaining).await {
                tracing::warn!(%error, container = %kill.name, "stopping container");
            }
        });
        futures::future::join_all(stops).await;
    }

    /// The pod's IP as its sandbox has it (the node's for host-network pods).
    async fn pod_ip(&self, pod: &Pod) -> String {
        if host_network(pod) {
            return self.config.node_ip.to_string();
        }
        let state = self.pod_state(pod_uid(pod)).await.unwrap_or_default();
        state.ready_sandbox().and_then(|s| s.ips.first().cloned()).unwrap_or_default()
    }

    /// Running containers whose liveness or startup probe failed: each to kill with the
    /// probe's `terminationGracePeriodSeconds` (else the pod's), as upstream's
    /// `computePodActions` does. Those are dropped from `actions`' own kills.
    fn probe_failures(
        &self,
        pod: &Pod,
        state: &PodRuntimeState,
        actions: &actions::PodActions,
    ) -> Vec<(ContainerToKill, Duration)> {
        let results = self.probes.results();
        let spec = pod.spec.as_ref();
        let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
        let sidecars =
            spec.and_then(|s| s.init_containers.as_ref()).into_iter().flatten().filter(|c| actions::is_sidecar(c));
        let mut kills = Vec::new();
        for c in containers.chain(sidecars) {
            let Some(running) = state.latest(&c.name).filter(|s| s.state == ContainerState::Running) else { continue };
            let Some(kind) = results.failed(&running.id) else { continue };
            if actions.containers_to_kill.iter().any(|k| k.id == running.id) {
                continue;
            }
            let probe = match kind {
                crate::prober::ProbeKind::Startup => c.startup_probe.as_ref(),
                _ => c.liveness_probe.as_ref(),
            };
            let grace = probe
                .and_then(|p| p.termination_grace_period_seconds)
                .map_or_else(|| grace_period(pod), |s| Duration::from_secs(s.max(0) as u64));
            let reason =
                format!("Container {} failed {} probe, will be restarted", c.name, kind.label().to_lowercase());
            kills.push((ContainerToKill { id: running.id.clone(), name: c.name.clone(), reason }, grace));
        }
        kills
    }

    /// Removes exited instances beyond the newest two of each container (the current one and
    /// the one `lastState` and `kubectl logs --previous` show), as upstream's container GC keeps
    /// one dead container per name.
    async fn prune_containers(&self, state: &PodRuntimeState) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for c in &state.containers {
            let n = seen.entry(c.metadata.name.as_str()).or_default();
            *n += 1;
            if *n > 2
                && c.state != ContainerState::Running
                && let Err(error) = self.runtime.remove_container(&c.id).await
            {
                tracing::warn!(%error, container = %c.id, "removing an old container");
            }
        }
    }

    /// A pod that finished (Succeeded or Failed): stop its sandbox, keeping the exited
    /// containers so their logs and statuses stay readable until the pod is deleted.
    /// Stops every container of an evicted pod at once (upstream evicts for local storage with
    /// a zero grace period); the sandbox goes when the pod is seen finished.
    pub async fn kill_evicted_pod(&self, pod: &Pod) -> Result<PodRuntimeState, RuntimeError> {
        let state = self.pod_state(pod_uid(pod)).await?;
        self.kill_containers(pod, stops(&state), Duration::ZERO).await;
        self.pod_state(pod_uid(pod)).await
    }

    pub async fn stop_finished_pod(&self, state: &PodRuntimeState) -> Result<(), RuntimeError> {
        for s in state.sandboxes.iter().filter(|s| s.state == PodSandboxState::Ready) {
            self.runtime.stop_pod_sandbox(&s.id).await?;
        }
        Ok(())
    }

    /// Ends a pod's life on this node: stops its containers within the grace period, then
    /// removes its sandboxes, volumes and cgroup.
    pub async fn terminate_pod(&self, pod: &Pod) -> Result<(), RuntimeError> {
        let uid = pod_uid(pod);
        let state = self.pod_state(uid).await?;
        self.kill_containers(pod, stops(&state), grace_period(pod)).await;
        self.remove_sandboxes(uid, state.sandboxes.iter().map(|s| s.id.clone()).collect()).await?;
        self.crash_backoff.lock().unwrap_or_else(|e| e.into_inner()).forget_prefix(&format!("{uid}_"));
        self.puller.forget_pod(uid);
        Ok(())
    }

    /// Stops and removes sandboxes, then the pod's volumes and cgroup.
    pub async fn remove_sandboxes(&self, uid: &str, sandboxes: Vec<String>) -> Result<(), RuntimeError> {
        for id in &sandboxes {
            self.runtime.stop_pod_sandbox(id).await?;
            self.runtime.remove_pod_sandbox(id).await?;
        }
        if let Err(error) = seams::teardown_pod_volumes(&self.config, uid).await {
            tracing::warn!(%error, pod_uid = uid, "tearing down pod volumes");
        }
        self.remove_pod_cgroups(uid).await;
        Ok(())
    }

    /// Removes the pod's cgroup (whichever QoS class it was made under); its note goes only
    /// once it is gone, so that a failure is retried at the next start.
    async fn remove_pod_cgroups(&self, uid: &str) {
        let mut removed = true;
        for class in [qos::QosClass::Guaranteed, qos::QosClass::Burstable, qos::QosClass::BestEffort] {
            removed &= seams::remove_cgroup(&qos::cgroup_parent(class, uid)).await;
        }
        if removed {
            seams::forget_pod_cgroup(&self.config, uid);
        }
    }

    /// Sandboxes and cgroups of pods that are not in `known` (pod UIDs): orphans left from an
    /// earlier run whose pods were deleted while the agent was away, or whose cleanup it did not
    /// finish. Stopped and removed.
    pub async fn remove_orphans(&self, known: &std::collections::HashSet<String>) -> Result<(), RuntimeError> {
        let mut by_uid: HashMap<String, Vec<String>> = HashMap::new();
        for s in self.runtime.list_pod_sandboxes().await? {
            let uid = s.labels.get(labels::POD_UID).cloned().unwrap_or_else(|| s.metadata.uid.clone());
            if !known.contains(&uid) {
                by_uid.entry(uid).or_default().push(s.id);
            }
        }
        for (uid, ids) in by_uid {
            tracing::info!(pod_uid = %uid, sandboxes = ids.len(), "removing sandboxes of a pod that no longer exists");
            self.remove_sandboxes(&uid, ids).await?;
        }
        for uid in seams::noted_pod_cgroups(&self.config).into_iter().filter(|uid| !known.contains(uid)) {
            tracing::info!(pod_uid = %uid, "removing the cgroup of a pod that no longer exists");
            self.remove_pod_cgroups(&uid).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod sync_tests;
#[cfg(test)]
pub(crate) mod tests_support;
