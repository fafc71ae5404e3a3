//! [`RuntimeService`] over CRI v1's `runtime.v1.RuntimeService`.

use std::time::Duration;

use async_trait::async_trait;
use tonic::Code;

use super::{RemoteRuntime, convert, request, request_with_timeout, rpc_error, v1};
use crate::cri::{
    Container, ContainerConfig, ContainerFilter, ContainerStatus, ExecRequest, ExecSyncResult, FsUsage, ImageFsInfo,
    PodSandbox, PodSandboxConfig, PodSandboxStats, PodSandboxStatus, RuntimeError, RuntimeService, RuntimeStatus,
    RuntimeVersion, StreamSession, StreamingRequest,
};

/// The CRI's condition types in `StatusResponse`.
const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";

/// Whole seconds for the CRI's timeouts, rounded up so that a sub-second grace is not zero
/// (which the CRI reads as "kill now" for stop and "no timeout" for exec).
fn seconds(timeout: Duration) -> i64 {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// `NotFound` from a call on a sandbox.
fn sandbox_error(operation: &'static str, id: &str, status: tonic::Status) -> RuntimeError {
    if status.code() == Code::NotFound {
        RuntimeError::SandboxNotFound(id.to_owned())
    } else {
        rpc_error(operation, status)
    }
}

/// `NotFound` from a call on a container.
fn container_error(operation: &'static str, id: &str, status: tonic::Status) -> RuntimeError {
    if status.code() == Code::NotFound {
        RuntimeError::ContainerNotFound(id.to_owned())
    } else {
        rpc_error(operation, status)
    }
}

#[async_trait]
impl RuntimeService for RemoteRuntime {
    fn runtime_version(&self) -> RuntimeVersion {
        RuntimeVersion { name: self.name.clone(), version: self.version.clone() }
    }

    async fn status(&self) -> RuntimeStatus {
        let response = self.runtime.clone().status(request(v1::StatusRequest { verbose: false })).await;
        let conditions = match response {
            Ok(r) => r.into_inner().status.map(|s| s.conditions).unwrap_or_default(),
            Err(status) => {
                return RuntimeStatus {
                    network_ready: false,
                    network_message: format!("container runtime is down: {}", status.message()),
                };
            }
        };
        // The kubelet's Node Ready condition needs both; the first one false says why.
        for wanted in [RUNTIME_READY, NETWORK_READY] {
            match conditions.iter().find(|c| c.r#type == wanted) {
                Some(c) if c.status => {}
                // The kubelet words it "...message:Network plugin returns error: <why>", as
                // upstream; containerd's message already starts with those words.
                Some(c) if wanted == NETWORK_READY => {
                    let why = c.message.strip_prefix("Network plugin returns error: ").unwrap_or(&c.message);
                    return RuntimeStatus { network_ready: false, network_message: why.to_owned() };
                }
                Some(c) => {
                    return RuntimeStatus {
                        network_ready: false,
                        network_message: format!(
                            "container runtime not ready: reason:{} message:{}",
                            c.reason, c.message
                        ),
                    };
                }
                None => {
                    return RuntimeStatus {
                        network_ready: false,
                        network_message: format!("container runtime reports no {wanted} condition"),
                    };
                }
            }
        }
        RuntimeStatus { network_ready: true, network_message: String::new() }
    }

    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError> {
        let message =
            v1::RunPodSandboxRequest { config: Some(convert::sandbox_config(config)), runtime_handler: String::new() };
        let response = self.runtime.clone().run_pod_sandbox(request(message)).await;
        Ok(response.map_err(|s| rpc_error("RunPodSandbox", s))?.into_inner().pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let message = v1::StopPodSandboxRequest { pod_sandbox_id: id.to_owned() };
        match self.runtime.clone().stop_pod_sandbox(request(message)).await {
            // Stopping an absent sandbox is done, as the CRI asks of runtimes.
            Err(s) if s.code() != Code::NotFound => Err(rpc_error("StopPodSandbox", s)),
            _ => Ok(()),
        }
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let message = v1::RemovePodSandboxRequest { pod_sandbox_id: id.to_owned() };
        match self.runtime.clone().remove_pod_sandbox(request(message)).await {
            Err(s) if s.code() != Code::NotFound => Err(rpc_error("RemovePodSandbox", s)),
            _ => Ok(()),
        }
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        let message = v1::PodSandboxStatusRequest { pod_sandbox_id: id.to_owned(), verbose: false };
        let response = self.runtime.clone().pod_sandbox_status(request(message)).await;
        let status = response.map_err(|s| sandbox_error("PodSandboxStatus", id, s))?.into_inner().status;
        status.map(convert::sandbox_status_from).ok_or_else(|| RuntimeError::SandboxNotFound(id.to_owned()))
    }

    async fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, RuntimeError> {
        let response = self.runtime.clone().list_pod_sandbox(request(v1::ListPodSandboxRequest { filter: None })).await;
        let items = response.map_err(|s| rpc_error("ListPodSandbox", s))?.into_inner().items;
        Ok(items.into_iter().map(convert::sandbox_from).collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        let message = v1::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(convert::container_config(config)),
            sandbox_config: Some(convert::sandbox_config(sandbox_config)),
        };
        let response = self.runtime.clone().create_container(request(message)).await;
        match response {
            Ok(r) => Ok(r.into_inner().container_id),
            // containerd answers NotFound for both a missing sandbox and a missing image; its
            // message names which.
            Err(s) if s.code() == Code::NotFound && s.message().contains("sandbox") => {
                Err(RuntimeError::SandboxNotFound(sandbox_id.to_owned()))
            }
            Err(s) if s.code() == Code::NotFound => Err(RuntimeError::ImageNotPresent(config.image.clone())),
            Err(s) if s.code() == Code::InvalidArgument => Err(RuntimeError::InvalidConfig(s.message().to_owned())),
            Err(s) => Err(rpc_error("CreateContainer", s)),
        }
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let message = v1::StartContainerRequest { container_id: id.to_owned() };
        match self.runtime.clone().start_container(request(message)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Err(RuntimeError::ContainerNotFound(id.to_owned())),
            Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                Err(rpc_error("StartContainer", s))
            }
            // The runtime's words (`... exec: "nope": executable file not found in $PATH`) are
            // what the kubelet shows in the container's StartError/RunContainerError.
            Err(s) => Err(RuntimeError::StartFailed(s.message().to_owned())),
        }
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let message = v1::StopContainerRequest { container_id: id.to_owned(), timeout: seconds(timeout) };
        let deadline = timeout + super::REQUEST_TIMEOUT;
        match self.runtime.clone().stop_container(request_with_timeout(message, deadline)).await {
            Err(s) if s.code() != Code::NotFound => Err(rpc_error("StopContainer", s)),
            _ => Ok(()),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let message = v1::RemoveContainerRequest { container_id: id.to_owned() };
        match self.runtime.clone().remove_container(request(message)).await {
            Err(s) if s.code() != Code::NotFound => Err(rpc_error("RemoveContainer", s)),
            _ => Ok(()),
        }
    }

    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>, RuntimeError> {
        let message = v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                pod_sandbox_id: filter.pod_sandbox_id.clone().unwrap_or_default(),
                state: filter.state.map(|s| v1::ContainerStateValue { state: convert::container_state(s) }),
                ..Default::default()
            }),
        };
        let response = self.runtime.clone().list_containers(request(message)).await;
        let containers = response.map_err(|s| rpc_error("ListContainers", s))?.into_inner().containers;
        Ok(containers.into_iter().map(convert::container_from).collect())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let message = v1::ContainerStatusRequest { container_id: id.to_owned(), verbose: false };
        let response = self.runtime.clone().container_status(request(message)).await;
        let status = response.map_err(|s| container_error("ContainerStatus", id, s))?.into_inner().status;
        let mut status =
            status.map(convert::container_status_from).ok_or_else(|| RuntimeError::ContainerNotFound(id.to_owned()))?;
        // Runtimes before CRI 1.36's `image_id` (containerd 1.6) put the image's repo digest in
        // the status's `image_ref`, where listings and our type carry the image ID.
        if !status.image_ref.starts_with("sha256:") && !status.image_ref.is_empty() {
            let message =
                v1::ImageStatusRequest { image: Some(convert::image_spec(&status.image_ref)), verbose: false };
            if let Ok(r) = self.images.clone().image_status(request(message)).await
                && let Some(image) = r.into_inner().image
            {
                status.image_ref = image.id;
            }
        }
        Ok(status)
    }

    async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecSyncResult, RuntimeError> {
        let message = v1::ExecSyncRequest { container_id: id.to_owned(), cmd: cmd.to_vec(), timeout: seconds(timeout) };
        let deadline = timeout + super::REQUEST_TIMEOUT;
        let response = self.runtime.clone().exec_sync(request_with_timeout(message, deadline)).await;
        let r = response.map_err(|s| container_error("ExecSync", id, s))?.into_inner();
        Ok(ExecSyncResult { stdout: r.stdout, stderr: r.stderr, exit_code: r.exit_code })
    }

    // The kubelet never calls these three: `streaming_url` sends its sessions to the runtime's
    // own streaming server.
    async fn exec(&self, _id: &str, _request: &ExecRequest) -> Result<StreamSession, RuntimeError> {
        Err(RuntimeError::Unavailable("a CRI runtime serves exec on its streaming server (streaming_url)".into()))
    }

    async fn attach(&self, _id: &str, _stdin: bool, _tty: bool) -> Result<StreamSession, RuntimeError> {
        Err(RuntimeError::Unavailable("a CRI runtime serves attach on its streaming server (streaming_url)".into()))
    }

    async fn port_forward(&self, _sandbox_id: &str, _port: u16) -> Result<tokio::net::TcpStream, RuntimeError> {
        Err(RuntimeError::Unavailable(
            "a CRI runtime serves port-forward on its streaming server (streaming_url)".into(),
        ))
    }

    async fn streaming_url(&self, streaming: &StreamingRequest) -> Result<Option<String>, RuntimeError> {
        let mut client = self.runtime.clone();
        let url = match streaming {
            StreamingRequest::Exec { container_id, request: exec } => {
                let message = v1::ExecRequest {
                    container_id: container_id.clone(),
                    cmd: exec.cmd.clone(),
                    tty: exec.tty,
                    stdin: exec.stdin,
                    stdout: exec.stdout,
                    stderr: exec.stderr,
                };
                let response = client.exec(request(message)).await;
                response.map_err(|s| container_error("Exec", container_id, s))?.into_inner().url
            }
            StreamingRequest::Attach { container_id, stdin, tty, stdout, stderr } => {
                let message = v1::AttachRequest {
                    container_id: container_id.clone(),
                    stdin: *stdin,
                    tty: *tty,
                    stdout: *stdout,
                    stderr: *stderr,
                };
                let response = client.attach(request(message)).await;
                response.map_err(|s| container_error("Attach", container_id, s))?.into_inner().url
            }
            StreamingRequest::PortForward { sandbox_id } => {
                // The ports travel in the client's streams, as with upstream's SPDY clients.
                let message = v1::PortForwardRequest { pod_sandbox_id: sandbox_id.clone(), port: Vec::new() };
                let response = client.port_forward(request(message)).await;
                response.map_err(|s| sandbox_error("PortForward", sandbox_id, s))?.into_inner().url
            }
        };
        Ok(Some(url))
    }

    async fn image_fs_info(&self) -> Result<Option<ImageFsInfo>, RuntimeError> {
        let response = self.images.clone().image_fs_info(request(v1::ImageFsInfoRequest {})).await;
        let filesystems = response.map_err(|s| rpc_error("ImageFsInfo", s))?.into_inner().image_filesystems;
        Ok(convert::image_fs_from(filesystems))
    }

    fn rotates_container_logs(&self) -> bool {
        // CRI runtimes append to the log file forever; the kubelet rotates it.
        false
    }

    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        let message = v1::ReopenContainerLogRequest { container_id: id.to_owned() };
        let response = self.runtime.clone().reopen_container_log(request(message)).await;
        response.map_err(|s| container_error("ReopenContainerLog", id, s))?;
        Ok(())
    }

    async fn list_pod_sandbox_stats(&self) -> Result<Vec<PodSandboxStats>, RuntimeError> {
        let response =
            self.runtime.clone().list_pod_sandbox_stats(request(v1::ListPodSandboxStatsRequest { filter: None })).await;
        let stats = response.map_err(|s| rpc_error("ListPodSandboxStats", s))?.into_inner().stats;
        Ok(stats.into_iter().map(convert::sandbox_stats_from).collect())
    }

    async fn container_writable_layers(&self) -> Result<Vec<(String, FsUsage)>, RuntimeError> {
        let response = self.runtime.clone().list_container_stats(request(v1::ListContainerStatsRequest {})).await;
        let stats = response.map_err(|s| rpc_error("ListContainerStats", s))?.into_inner().stats;
        Ok(stats.into_iter().filter_map(convert::writable_layer_from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_secs(30)), 30);
        assert_eq!(seconds(Duration::from_millis(30_500)), 31);
    }
}
