//! Container log rotation for runtimes that do not rotate their own logs (upstream's
//! `pkg/kubelet/logs/container_log_manager.go`): a CRI runtime such as containerd appends to the
//! container's log file forever, so the kubelet watches the files' sizes and rotates them.
//!
//! Every [`MONITOR_INTERVAL`], for each running container whose log file has reached
//! `max_size`: older rotated files beyond what `max_files` allows are removed, rotated files but
//! the newest are gzip-compressed (`<file>.<YYYYMMDD-HHMMSS>.gz`), the file is renamed to
//! `<file>.<YYYYMMDD-HHMMSS>` and the runtime is asked to reopen it (CRI `ReopenContainerLog`).
//! The newest rotated file stays uncompressed, as upstream, so that a reader following the log
//! (`kubectl logs -f`) can finish it before it moves to the new file.
//!
//! The limits and naming are those the built-in runtime's shim rotates with
//! (`tug_runtime::shim::log_writer`): 10 MiB and 5 files in all.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tug_runtime::cri::{ContainerFilter, ContainerState, RuntimeError, RuntimeService};
use tug_runtime::shim::protocol::{DEFAULT_LOG_MAX_FILES, DEFAULT_LOG_MAX_SIZE};

/// How often log sizes are checked (upstream's `logMonitorPeriod`).
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(10);

/// The rotated files' time stamp (Go's `20060102-150405`).
const TIMESTAMP_FORMAT: &str = "%Y%m%d-%H%M%S";
const COMPRESS_SUFFIX: &str = ".gz";
/// A compression in progress: removed when found, as it was interrupted.
const TMP_SUFFIX: &str = ".tmp";

/// When to rotate and how many files to keep (upstream's `LogRotatePolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotatePolicy {
    /// A log file at or above this size is rotated (`--container-log-max-size`).
    pub max_size: u64,
    /// Files kept per container, the current one included (`--container-log-max-files`).
    pub max_files: u32,
}

impl Default for LogRotatePolicy {
    fn default() -> Self {
        LogRotatePolicy { max_size: DEFAULT_LOG_MAX_SIZE, max_files: DEFAULT_LOG_MAX_FILES }
    }
}

/// Errors of one container's rotation.
#[derive(Debug, thiserror::Error)]
pub enum LogRotateError {
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reopening the log of container {id}: {source}")]
    Reopen {
        id: String,
        #[source]
        source: Box<RuntimeError>,
    },
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LogRotateError {
    let path = path.to_path_buf();
    move |source| LogRotateError::Io { operation, path, source }
}

/// Rotates the logs of `runtime`'s running containers every [`MONITOR_INTERVAL`] until
/// `shutdown`; does nothing for a runtime that rotates its logs itself.
pub async fn run(runtime: Arc<dyn RuntimeService>, policy: LogRotatePolicy, shutdown: CancellationToken) {
    if runtime.rotates_container_logs() {
        return;
    }
    let mut tick = tokio::time::interval(MONITOR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => rotate_logs(runtime.as_ref(), policy).await,
        }
    }
}

/// One pass over the running containers (upstream's `rotateLogs`).
async fn rotate_logs(runtime: &dyn RuntimeService, policy: LogRotatePolicy) {
    let filter = ContainerFilter { state: Some(ContainerState::Running), ..Default::default() };
    let containers = match runtime.list_containers(&filter).await {
        Ok(list) => list,
        Err(error) => {
            warn!(%error, "listing containers for log rotation failed");
            return;
        }
    };
    for container in containers {
        // The log path is the status's: the runtime knows it as `log_directory/log_path`.
        let status = match runtime.container_status(&container.id).await {
            Ok(status) => status,
            Err(error) => {
                debug!(container = %container.id, %error, "no status for log rotation");
                continue;
            }
        };
        if status.state != ContainerState::Running || status.log_path.as_os_str().is_empty() {
            continue;
        }
        if let Err(error) = rotate_log(runtime, &container.id, &status.log_path, policy).await {
            warn!(container = %container.id, path = %status.log_path.display(), %error, "rotating the container log failed");
        }
    }
}

/// Rotates one container's log when it has grown to the limit (upstream's `rotateLog`).
async fn rotate_log(
    runtime: &dyn RuntimeService,
    id: &str,
    log: &Path,
    policy: LogRotatePolicy,
) -> Result<(), LogRotateError> {
    let size = match tokio::fs::metadata(log).await {
        Ok(meta) => meta.len(),
        // Not written yet (or being reopened): nothing to rotate.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", log)(e)),
    };
    if size < policy.max_size {
        return Ok(());
    }
    let (log_owned, max_files) = (log.to_path_buf(), policy.max_files);
    tokio::task::spawn_blocking(move || prune_and_compress(&log_owned, max_files))
        .await
        .map_err(|e| io_err("prune rotated logs of", log)(io::Error::other(e)))??;
    // UTC, as the built-in runtime's shim names its rotated files.
    let stamp = jiff::Timestamp::now().strftime(TIMESTAMP_FORMAT).to_string();
    let rotated = PathBuf::from(format!("{}.{stamp}", log.display()));
    tokio::fs::rename(log, &rotated).await.map_err(io_err("rename", log))?;
    if let Err(source) = runtime.reopen_container_log(id).await {
        // The runtime still writes to the renamed file: put it back, as upstream, so that the
        // log stays where the kubelet and `kubectl logs` look for it.
        if let Err(e) = tokio::fs::rename(&rotated, log).await {
            warn!(container = %id, error = %e, "renaming the rotated log back failed");
        }
        return Err(LogRotateError::Reopen { id: id.to_owned(), source: Box::new(source) });
    }
    info!(container = %id, path = %rotated.display(), size, "rotated the container log");
    Ok(())
}

/// Before a rotation: removes leftovers and the oldest rotated files so that, with the file about
/// to be rotated and the new current one, `max_files` remain; compresses the rotated files but
/// the newest (upstream's `cleanupUnusedLogs`, `removeExcessLogs` and `compressLog`).
fn prune_and_compress(log: &Path, max_files: u32) -> Result<(), LogRotateError> {
    let mut rotated = rotated_files(log)?;
    // Interrupted compressions, and uncompressed files whose compressed copy is complete.
    rotated.retain(|path| {
        let name = path.to_string_lossy();
        let compressed = PathBuf::from(format!("{name}{COMPRESS_SUFFIX}"));
        if name.ends_with(TMP_SUFFIX) || (!name.ends_with(COMPRESS_SUFFIX) && compressed.exists()) {
            remove(path);
            return false;
        }
        true
    });
    // Stamps sort as times; a compressed file sorts with its stamp.
    rotated.sort();
    let keep = max_files.saturating_sub(2) as usize;
    let excess = rotated.len().saturating_sub(keep);
    for old in rotated.drain(..excess) {
        remove(&old);
    }
    // The file rotated in this pass is not in the list yet: it stays uncompressed until the next
    // rotation.
    for path in &rotated {
        if !path.to_string_lossy().ends_with(COMPRESS_SUFFIX) {
            compress(path)?;
        }
    }
    Ok(())
}

fn remove(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), %error, "removing an old container log failed");
    }
}

/// `<file>` to `<file>.gz` through `<file>.gz.tmp`, then removes `<file>`.
fn compress(path: &Path) -> Result<(), LogRotateError> {
    let target = PathBuf::from(format!("{}{COMPRESS_SUFFIX}", path.display()));
    let tmp = PathBuf::from(format!("{}{TMP_SUFFIX}", target.display()));
    let mut input = std::fs::File::open(path).map_err(io_err("open", path))?;
    let output = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    io::copy(&mut input, &mut encoder).map_err(io_err("compress", path))?;
    encoder.finish().and_then(|mut f| f.flush()).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, &target).map_err(io_err("rename", &tmp))?;
    std::fs::remove_file(path).map_err(io_err("remove", path))
}

/// The rotated siblings of `log`: `<name>.<stamp>`, maybe with `.gz` or `.gz.tmp`.
fn rotated_files(log: &Path) -> Result<Vec<PathBuf>, LogRotateError> {
    let dir = log.parent().unwrap_or(Path::new("."));
    let prefix = format!("{}.", log.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(suffix) = name.strip_prefix(&prefix) else { continue };
        let stamp = suffix.split('.').next().unwrap_or_default();
        if jiff::civil::DateTime::strptime(TIMESTAMP_FORMAT, stamp).is_ok() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "container_log_manager_tests.rs"]
mod tests;
