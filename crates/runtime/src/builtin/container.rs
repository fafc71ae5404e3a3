//! Containers of the built-in runtime: create prepares the bundle (an overlay root filesystem
//! over the image's unpacked layers and an OCI runtime spec), start hands the bundle to a shim
//! that creates and runs the container with libcontainer and outlives the node agent, and the
//! shim's exit file says how the container ended.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::records::{self, ContainerRecord, RecordedState, SandboxRecord};
use super::sandbox::SandboxDir;
use super::{BuiltinRuntime, process};
use crate::cri::{
    Container, ContainerConfig, ContainerState, ContainerStatus, NamespaceMode, PodSandboxConfig, RuntimeError,
};
use crate::image::{ImageRecord, ImageStore};
use crate::shim::client as shim;

/// How long a killed container may take to be reaped before stop gives up waiting.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What a container's directory (its OCI bundle) holds, by name.
pub struct ContainerDir(pub PathBuf);

impl ContainerDir {
    pub fn record(&self) -> PathBuf {
        self.0.join("container.json")
    }
    pub fn exit_file(&self) -> PathBuf {
        self.0.join("exit.json")
    }
    pub fn attach_socket(&self) -> PathBuf {
        self.0.join("attach.sock")
    }
}

/// Finds the image a container config names (a reference or an image ID), as the image
/// service's status would.
pub fn find_image(store: &ImageStore, wanted: &str) -> Result<Option<(String, ImageRecord)>, RuntimeError> {
    let records = store.list().map_err(|e| RuntimeError::Unavailable(format!("reading the image store: {e}")))?;
    let matches = crate::image::service::names_image(wanted);
    let found = records.iter().find(|(name, record)| matches(name, record));
    Ok(found.cloned())
}

impl BuiltinRuntime {
    pub(super) fn container_dir(&self, id: &str) -> ContainerDir {
        ContainerDir(self.root.join("containers").join(id))
    }

    pub(super) async fn create(
        &self,
        sandbox: &SandboxRecord,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        let store = self.images.clone();
        let wanted = config.image.clone();
        let (_, image) = tokio::task::spawn_blocking(move || find_image(&store, &wanted))
            .await??
            .ok_or_else(|| RuntimeError::ImageNotPresent(config.image.clone()))?;
        let id = records::new_id();
        let dir = self.container_dir(&id);
        std::fs::create_dir_all(&dir.0).map_err(|e| RuntimeError::io("creating", &dir.0, e))?;
        let result = self.prepare_bundle(&id, &dir, sandbox, &image, config, sandbox_config).await;
        if let Err(e) = result {
            let _ = self.destroy_container_dir(&dir).await;
            return Err(e);
        }
        Ok(id)
    }

    async fn prepare_bundle(
        &self,
        id: &str,
        dir: &ContainerDir,
        sandbox: &SandboxRecord,
        image: &ImageRecord,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<(), RuntimeError> {
        let store = self.images.clone();
        let image_for_config = image.clone();
        let image_config = tokio::task::spawn_blocking(move || store.image_config(&image_for_config))
            .await?
            .map_err(|e| RuntimeError::Unavailable(format!("reading the image config: {e}")))?;
        let layers = self.images.layer_paths(image);
        let bundle = dir.0.clone();
        let rootfs = tokio::task::spawn_blocking(move || crate::rootfs::mount(&layers, &bundle))
            .await?
            .map_err(|e| RuntimeError::Unavailable(format!("mounting the container's root filesystem: {e}")))?;

        let sandbox_dir = self.sandbox_dir(&sandbox.id);
        let options = sandbox.config.namespace_options;
        let pinned = |kind: &str, own: bool| own.then(|| sandbox_dir.ns(kind));
        let namespaces = crate::spec::SandboxNamespaces {
            net: pinned("net", options.network != NamespaceMode::Node),
            ipc: pinned("ipc", options.ipc != NamespaceMode::Node),
            uts: pinned("uts", options.network != NamespaceMode::Node),
            pid: pinned("pid", options.pid == NamespaceMode::Pod),
            host_pid: options.pid == NamespaceMode::Node,
        };
        let files = sandbox_files(&sandbox_dir, options.ipc == NamespaceMode::Node);
        let cgroups_path = format!("{}/{}", sandbox_config.cgroup_parent.trim_end_matches('/'), id);
        let spec = crate::spec::build(config, &image_config, &rootfs, &cgroups_path, &namespaces, &files)
            .map_err(|e| RuntimeError::InvalidConfig(e.to_string()))?;
        let spec_path = dir.0.join("config.json");
        spec.save(&spec_path)
            .map_err(|e| RuntimeError::io("writing", &spec_path, std::io::Error::other(e.to_string())))?;

        let log_path = sandbox.config.log_directory.join(&config.log_path);
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io("creating", parent, e))?;
        }
        let image_stop_signal = image_config
            .config()
            .as_ref()
            .and_then(|c| c.stop_signal().clone())
            .and_then(|s| process::parse_signal(&s));
        let stop_signal =
            config.stop_signal.as_deref().and_then(process::parse_signal).or(image_stop_signal).unwrap_or(15);
        let record = ContainerRecord {
            id: id.to_owned(),
            sandbox_id: sandbox.id.clone(),
            config: config.clone(),
            image: config.image.clone(),
            image_ref: image.config.to_string(),
            log_path,
            stop_signal,
            state: RecordedState::Created,
            created_at: SystemTime::now(),
            started_at: None,
            finished_at: None,
            shim_pid: None,
            pid: None,
            start_error: None,
            lost: false,
        };
        self.save_container(&record)
    }

    pub(super) async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        let mut record = self.load_container(id)?;
        if record.state != RecordedState::Created {
            return Err(RuntimeError::StartFailed(format!("container {id} is not in the created state")));
        }
        let args = shim::RunArgs {
            id: id.to_owned(),
            bundle: dir.0.clone(),
            root: self.libcontainer_root(),
            log: record.log_path.clone(),
            exit_file: dir.exit_file(),
            stdin: record.config.stdin,
            stdin_once: record.config.stdin_once,
            tty: record.config.tty,
            log_max_size: super::CONTAINER_LOG_MAX_SIZE,
            log_max_files: super::CONTAINER_LOG_MAX_FILES,
        };
        match shim::run_container(&self.shim, &args).await {
            Ok(started) => {
                record.state = RecordedState::Running;
                record.started_at = Some(SystemTime::now());
                record.shim_pid = Some(started.shim_pid);
                record.pid = Some(started.pid);
                self.save_container(&record)?;
                tracing::debug!(container = %id, pid = started.pid, "container started");
                Ok(())
            }
            Err(e) => {
                let message = match e {
                    shim::ShimError::Report(message) => message,
                    other => other.to_string(),
                };
                record.state = RecordedState::Exited;
                record.finished_at = Some(SystemTime::now());
                record.start_error = Some(message.clone());
                self.save_container(&record)?;
                Err(RuntimeError::StartFailed(message))
            }
        }
    }

    /// The container's status, reading the shim's exit file for a running one. A running
    /// container whose shim vanished without an exit file is recorded as lost (exited, 255).
    pub(super) fn status_of(&self, record: &mut ContainerRecord) -> Result<ContainerStatus, RuntimeError> {
        let dir = self.container_dir(&record.id);
        let mut exit = None;
        if record.state == RecordedState::Running {
            exit = shim::read_exit_file(&dir.exit_file()).map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
            if exit.is_some() {
                record.state = RecordedState::Exited;
            } else if !record.shim_pid.is_some_and(process::alive) {
                // Read once more: the shim writes the exit file just before it exits.
                exit = shim::read_exit_file(&dir.exit_file()).map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
                record.state = RecordedState::Exited;
                if exit.is_none() {
                    record.lost = true;
                    record.finished_at = Some(SystemTime::now());
                    self.save_container(record)?;
                }
            }
        } else if record.state == RecordedState::Exited && record.start_error.is_none() && !record.lost {
            exit = shim::read_exit_file(&dir.exit_file()).map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        }
        let mut status = ContainerStatus {
            id: record.id.clone(),
            metadata: record.config.metadata.clone(),
            state: match record.state {
                RecordedState::Created => ContainerState::Created,
                RecordedState::Running => ContainerState::Running,
                RecordedState::Exited => ContainerState::Exited,
            },
            created_at: record.created_at,
            started_at: record.started_at,
            finished_at: record.finished_at,
            exit_code: None,
            image: record.image.clone(),
            image_ref: record.image_ref.clone(),
            reason: None,
            message: None,
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
            log_path: record.log_path.clone(),
            pid: (record.state == RecordedState::Running).then_some(record.pid).flatten(),
        };
        if let Some(error) = &record.start_error {
            status.exit_code = Some(128);
            status.reason = Some("StartError".to_owned());
            status.message = Some(error.clone());
            status.started_at = None;
        } else if let Some(exit) = exit {
            status.exit_code = Some(exit.exit_code);
            status.started_at = Some(exit.started_at.into());
            status.finished_at = Some(exit.finished_at.into());
            status.reason = Some(
                if exit.oom_killed {
                    "OOMKilled"
                } else if exit.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_owned(),
            );
        } else if record.lost {
            status.exit_code = Some(255);
            status.reason = Some("Error".to_owned());
            status.message = Some("the container's shim exited without recording how the container ended".to_owned());
        }
        Ok(status)
    }

    pub(super) fn list_entry(&self, record: &mut ContainerRecord) -> Result<Container, RuntimeError> {
        let status = self.status_of(record)?;
        Ok(Container {
            id: record.id.clone(),
            pod_sandbox_id: record.sandbox_id.clone(),
            metadata: record.config.metadata.clone(),
            image: record.image.clone(),
            image_ref: record.image_ref.clone(),
            state: status.state,
            created_at: record.created_at,
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
        })
    }

    /// Sends the stop signal, waits up to `timeout` for the exit, then SIGKILL. Idempotent.
    pub(super) async fn stop(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let mut record = self.load_container(id)?;
        let status = self.status_of(&mut record)?;
        if status.state != ContainerState::Running {
            if record.state == RecordedState::Created {
                // Never started: nothing runs; it simply becomes exited.
                record.state = RecordedState::Exited;
                record.finished_at = Some(SystemTime::now());
                self.save_container(&record)?;
            }
            return Ok(());
        }
        let exit_file = self.container_dir(id).exit_file();
        let Some(pid) = record.pid else { return Ok(()) };
        if !timeout.is_zero() && process::signal_unless_exited(pid, record.stop_signal, Some(&exit_file)) {
            tracing::debug!(container = %id, signal = record.stop_signal, grace = ?timeout, "stopping container");
            if self.wait_exit(&record, timeout).await {
                return Ok(());
            }
        }
        process::signal_unless_exited(pid, 9, Some(&exit_file));
        if !self.wait_exit(&record, KILL_WAIT).await {
            tracing::warn!(container = %id, pid, "container did not exit after SIGKILL");
        }
        Ok(())
    }

    /// Waits until the container's exit is recorded (or its shim is gone), up to `timeout`.
    async fn wait_exit(&self, record: &ContainerRecord, timeout: Duration) -> bool {
        let exit_file = self.container_dir(&record.id).exit_file();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if exit_file.exists() || !record.shim_pid.is_some_and(process::alive) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    pub(super) async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        if !dir.0.exists() {
            return Ok(());
        }
        if let Ok(record) = self.load_container(id)
            && record.state == RecordedState::Running
        {
            self.stop(id, Duration::ZERO).await?;
        }
        // A shim that died abnormally leaves libcontainer's state behind; the cgroup goes with
        // the pod's.
        let state = self.libcontainer_root().join(id);
        if state.exists() {
            let _ = std::fs::remove_dir_all(&state);
        }
        self.destroy_container_dir(&dir).await
    }

    /// Unmounts the root filesystem and deletes the bundle directory (not the log).
    pub(super) async fn destroy_container_dir(&self, dir: &ContainerDir) -> Result<(), RuntimeError> {
        let path = dir.0.clone();
        if let Some(id) = path.file_name().and_then(|n| n.to_str()) {
            self.forget_container(id)?;
        }
        tokio::task::spawn_blocking(move || {
            crate::rootfs::unmount(&path)
                .map_err(|e| RuntimeError::Unavailable(format!("unmounting {}: {e}", path.display())))?;
            match std::fs::remove_dir_all(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(RuntimeError::io("removing", &path, e)),
            }
        })
        .await?
    }
}

fn sandbox_files(dir: &SandboxDir, host_ipc: bool) -> crate::spec::SandboxFiles {
    crate::spec::SandboxFiles {
        hostname: Some(dir.hostname()),
        resolv_conf: Some(dir.resolv_conf()),
        shm: (!host_ipc).then(|| dir.shm()),
    }
}
