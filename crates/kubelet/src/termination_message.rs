//! Termination messages (upstream's `terminationMessagePath` and `terminationMessagePolicy`):
//! every container gets a file of its own bind-mounted at its `terminationMessagePath`
//! (`/dev/termination-log` by default); when the container ends, what it wrote there becomes
//! the terminated state's `message`. With `FallbackToLogsOnError`, a container that failed and
//! wrote nothing gets the tail of its log instead.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use tug_runtime::cri::{ContainerState, Mount, MountPropagation};

use crate::config::Config;
use crate::kuberuntime::PodRuntimeState;

/// Upstream's cap on one container's message.
const MAX_MESSAGE_BYTES: u64 = 4096;
/// What `FallbackToLogsOnError` takes from the log: the last 80 lines, at most 2 KiB.
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;
/// Default `terminationMessagePath`.
const DEFAULT_PATH: &str = "/dev/termination-log";

/// The host file backing attempt `attempt` of `container` in pod `uid`.
pub fn host_file(config: &Config, uid: &str, container: &str, attempt: u32) -> PathBuf {
    config.pod_dir(uid).join("containers").join(container).join(format!("{attempt}-termination-log"))
}

/// Creates the (empty, world-writable: the container may run as any user) file for a new
/// container instance and returns its mount, or `None` when the container sets no path.
pub fn prepare(config: &Config, pod: &Pod, container: &Container, attempt: u32) -> std::io::Result<Option<Mount>> {
    let path = container.termination_message_path.as_deref().unwrap_or(DEFAULT_PATH);
    if path.is_empty() {
        return Ok(None);
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let file = host_file(config, uid, &container.name, attempt);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&file, b"")?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
    Ok(Some(Mount {
        container_path: path.to_owned(),
        host_path: file,
        readonly: false,
        propagation: MountPropagation::Private,
    }))
}

/// Fills in the message of every exited container of `state` that has none yet.
pub fn fill(config: &Config, pod: &Pod, state: &mut PodRuntimeState) {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let containers: Vec<&Container> =
        spec.map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()).collect()).unwrap_or_default();
    for status in state.containers.iter_mut() {
        if status.state != ContainerState::Exited || status.message.as_deref().is_some_and(|m| !m.is_empty()) {
            continue;
        }
        let Some(container) = containers.iter().find(|c| c.name == status.metadata.name) else { continue };
        let written = read_capped(&host_file(config, uid, &container.name, status.metadata.attempt));
        let fallback = container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        let message = match written {
            Some(m) if !m.is_empty() => Some(m),
            _ if fallback && status.exit_code.is_some_and(|c| c != 0) => log_tail(&status.log_path),
            _ => None,
        };
        if let Some(message) = message.filter(|m| !m.is_empty()) {
            status.message = Some(message);
        }
    }
}

fn read_capped(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = Vec::new();
    file.take(MAX_MESSAGE_BYTES).read_to_end(&mut text).ok()?;
    Some(String::from_utf8_lossy(&text).into_owned())
}

/// The last lines of a CRI-format log, partial records joined.
fn log_tail(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    // Enough of the end of the file for 80 lines of a few dozen bytes each.
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw).ok()?;
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut open = false;
    for line in raw.split(|b| *b == b'\n').skip(usize::from(start > 0)) {
        let Ok(record) = crate::logs::parse_record(line) else { continue };
        match (open, lines.last_mut()) {
            (true, Some(last)) => last.extend_from_slice(&record.content),
            _ => lines.push(record.content),
        }
        open = record.partial;
    }
    // Each line with its newline, as `kubectl logs` would print it.
    let tail: Vec<u8> = lines[lines.len().saturating_sub(FALLBACK_LINES)..]
        .iter()
        .flat_map(|l| l.iter().chain(b"\n"))
        .copied()
        .collect();
    let tail = &tail[tail.len().saturating_sub(FALLBACK_BYTES)..];
    Some(String::from_utf8_lossy(tail).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tail_joins_partial_records_and_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("2026-01-01T00:00:00.000000000Z stdout F line {i}\n"));
        }
        text.push_str("2026-01-01T00:00:00.000000000Z stderr P half \n");
        text.push_str("2026-01-01T00:00:00.000000000Z stderr F and half\n");
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log).unwrap();
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), 80);
        assert_eq!(lines[0], "line 21");
        assert_eq!(*lines.last().unwrap(), "half and half");
    }

    #[test]
    fn a_message_is_capped_at_four_kibibytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m");
        std::fs::write(&file, "x".repeat(10_000)).unwrap();
        assert_eq!(read_capped(&file).unwrap().len(), 4096);
    }
}
