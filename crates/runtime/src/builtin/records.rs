//! What the built-in runtime keeps on disk about each sandbox and container.
//!
//! The records are the runtime's only memory: a node agent that restarts reads them back and
//! finds its running containers (their shims kept running). Each record is one JSON file
//! replaced by atomic rename, so a crash leaves either the old or the new version.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cri::{ContainerConfig, PodSandboxConfig, RuntimeError};

/// `sandboxes/<id>/sandbox.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: PodSandboxConfig,
    pub created_at: SystemTime,
    /// False once stopped: a stopped sandbox never becomes ready again (the kubelet makes a new one).
    pub ready: bool,
    /// The sandbox shim and the process holding the namespaces (the pause process).
    pub shim_pid: Option<u32>,
    pub pid: Option<u32>,
    /// The pod's addresses, primary first; empty for host-network pods.
    pub ips: Vec<String>,
}

/// Where a container stands, as the runtime last recorded it. `Running` containers are checked
/// against their exit file and shim on every status read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RecordedState {
    Created,
    Running,
    Exited,
}

/// `containers/<id>/container.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    /// The image reference as the kubelet gave it, and the image ID it resolved to.
    pub image: String,
    pub image_ref: String,
    /// The absolute path of the container's log file.
    pub log_path: PathBuf,
    /// The signal that stops the container: the pod's, else the image's STOPSIGNAL, else SIGTERM.
    pub stop_signal: i32,
    pub state: RecordedState,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub shim_pid: Option<u32>,
    pub pid: Option<u32>,
    /// Why the container could not be started (its process never ran).
    pub start_error: Option<String>,
    /// Set when the shim vanished without writing an exit file.
    pub lost: bool,
}

pub fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RuntimeError::io("parsing", path, std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io("reading", path, e)),
    }
}

/// Writes `value` beside `path` and renames it into place.
pub fn write<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| RuntimeError::io("encoding", path, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| RuntimeError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RuntimeError::io("renaming", path, e))
}

/// A new 64-hex-digit ID, as containerd's.
pub fn new_id() -> String {
    let mut id = String::with_capacity(64);
    for _ in 0..4 {
        id.push_str(&format!("{:016x}", fastrand::u64(..)));
    }
    id
}

/// The directories named by ID under `dir` (sandboxes or containers), skipping anything else.
pub fn ids_in(dir: &Path) -> Result<Vec<String>, RuntimeError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RuntimeError::io("listing", dir, e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| RuntimeError::io("listing", dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && name.len() == 64
            && name.bytes().all(|b| b.is_ascii_hexdigit())
        {
            ids.push(name.to_owned());
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_digits_and_listed_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        std::fs::create_dir(dir.path().join(&a)).unwrap();
        std::fs::create_dir(dir.path().join(&b)).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(ids_in(dir.path()).unwrap(), expected);
        assert!(ids_in(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn records_round_trip_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        assert!(read::<Vec<u32>>(&path).unwrap().is_none());
        write(&path, &vec![1u32, 2]).unwrap();
        assert_eq!(read::<Vec<u32>>(&path).unwrap(), Some(vec![1, 2]));
    }
}
