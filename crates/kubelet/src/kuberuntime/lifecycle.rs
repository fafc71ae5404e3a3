//! Lifecycle hooks (upstream's `lifecycle.handlerRunner`): postStart runs right after a
//! container starts and the container is not reported Running until it returns; preStop runs
//! before the stop signal, inside the termination grace period. Handlers are exec, httpGet and
//! sleep; failures are worded as upstream's FailedPostStartHook / FailedPreStopHook events.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Probe};

use crate::prober::probe::{self, Outcome};
use tug_runtime::cri::RuntimeService;

/// Runs `handler` for `container` (running as `container_id`) within `timeout`. The error is
/// the event message upstream records.
pub(crate) async fn run_handler(
    runtime: &dyn RuntimeService,
    pod: &Pod,
    container: &Container,
    container_id: &str,
    pod_ip: &str,
    handler: &LifecycleHandler,
    timeout: Duration,
) -> Result<(), String> {
    let pod_name = format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    );
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX).max(1);
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        // Go's %v of a string slice.
        let shown = format!("[{}]", command.join(" "));
        let (error, output) = match runtime.exec_sync(container_id, &command, timeout).await {
            Ok(result) if result.exit_code == 0 => return Ok(()),
            Ok(result) => {
                let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
                let mut output = String::from_utf8_lossy(&result.stdout).into_owned();
                output.push_str(&stderr);
                (format!("command '{}' exited with {}: {stderr}", command.join(" "), result.exit_code), output)
            }
            Err(error) => (error.to_string(), String::new()),
        };
        return Err(format!(
            "Exec lifecycle hook ({shown}) for Container {:?} in Pod {pod_name:?} failed - error: {error}, message: {output:?}",
            container.name
        ));
    }
    if let Some(http) = &handler.http_get {
        let probe = Probe { http_get: Some(http.clone()), timeout_seconds: Some(seconds), ..Default::default() };
        let path = http.path.clone().unwrap_or_default();
        return match probe::network(&probe, container, pod_ip).await {
            Outcome::Success => Ok(()),
            Outcome::Failure(error) => Err(format!(
                "Http lifecycle hook ({path}) for Container {:?} in Pod {pod_name:?} failed - error: {error}",
                container.name
            )),
        };
    }
    Err(format!("Cannot run handler: invalid handler: {handler:?}"))
}
