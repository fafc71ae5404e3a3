//! Upstream's AtomicWriter: publishes a set of files into a volume directory so that a reader
//! sees either the old set or the new one, never a mix.
//!
//! Layout (as upstream's `pkg/volume/util/atomic_writer.go`):
//! ```text
//! <dir>/..2026_11_26_20_02_20.123456789/   the payload of one version
//! <dir>/..data -> ..2026_11_26_20_02_20.123456789
//! <dir>/<key>  -> ..data/<key>               one link per top-level entry of the payload
//! ```
//! An update writes a new timestamped directory, swaps `..data` with an atomic rename of a
//! fresh symlink, adds links for new entries, removes links of vanished ones, and deletes the
//! old directory. A container bind-mounting the volume directory sees the swap at once; a subPath
//! mount (bound to the resolved file) keeps the old content, as upstream.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// One file of a payload: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Files to publish, by path relative to the volume directory.
pub type Payload = BTreeMap<String, FileProjection>;

#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AtomicWriteError {
    let path = path.to_path_buf();
    move |source| AtomicWriteError::Io { operation, path, source }
}

/// Rejects what upstream's `validatePath` rejects: absolute paths, `..` elements, a leading
/// `..` (reserved for the writer's own entries) and empty paths.
fn validate_path(path: &str) -> Result<(), AtomicWriteError> {
    let invalid = |reason| Err(AtomicWriteError::InvalidPath { path: path.to_owned(), reason });
    if path.is_empty() {
        return invalid("must not be empty");
    }
    if Path::new(path).is_absolute() {
        return invalid("must be relative");
    }
    if path.starts_with("..") {
        return invalid("must not start with '..'");
    }
    if Path::new(path).components().any(|c| c == Component::ParentDir) {
        return invalid("must not contain '..'");
    }
    Ok(())
}

fn top_level(path: &str) -> &str {
    path.split('/').find(|s| !s.is_empty() && *s != ".").unwrap_or(path)
}

/// The payload's paths as found in the directory `..data` points at now.
fn current_paths(data_dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(data_dir, data_dir, &mut out);
    out
}

/// Whether the published files already equal `payload` (same paths, bytes and modes).
fn up_to_date(dir: &Path, payload: &Payload) -> bool {
    let data_dir = dir.join(DATA_DIR);
    if std::fs::read_link(&data_dir).is_err() {
        return false;
    }
    let wanted: BTreeSet<String> = payload.keys().map(|p| p.trim_start_matches("./").to_owned()).collect();
    if current_paths(&data_dir) != wanted {
        return false;
    }
    payload.iter().all(|(path, file)| {
        let target = data_dir.join(path);
        let same_mode = std::fs::metadata(&target).is_ok_and(|m| m.permissions().mode() & 0o7777 == file.mode & 0o7777);
        same_mode && std::fs::read(&target).is_ok_and(|bytes| bytes == file.data)
    })
}

fn timestamped_dir_name() -> String {
    let now = jiff::Timestamp::now();
    format!("..{}.{:09}", now.strftime("%Y_%m_%d_%H_%M_%S"), fastrand::u32(..1_000_000_000))
}

/// Publishes `payload` into `dir` (which must exist). Returns whether anything changed.
/// `after_write` runs on the new timestamped directory before it becomes visible (upstream's
/// `setPerms`: fsGroup ownership).
pub fn write(
    dir: &Path,
    payload: &Payload,
    after_write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<bool, AtomicWriteError> {
    for path in payload.keys() {
        validate_path(path)?;
    }
    if up_to_date(dir, payload) {
        return Ok(false);
    }
    let data_link = dir.join(DATA_DIR);
    let old_ts = std::fs::read_link(&data_link).ok();
    let old_top: BTreeSet<String> = match &old_ts {
        Some(_) => current_paths(&data_link).iter().map(|p| top_level(p).to_owned()).collect(),
        None => BTreeSet::new(),
    };

    let ts_name = timestamped_dir_name();
    let ts_dir = dir.join(&ts_name);
    std::fs::create_dir(&ts_dir).map_err(io("create directory", &ts_dir))?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod", &ts_dir))?;
    for (path, file) in payload {
        let target = ts_dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        std::fs::write(&target, &file.data).map_err(io("write", &target))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode)).map_err(io("chmod", &target))?;
    }
    after_write(&ts_dir).map_err(io("set ownership of", &ts_dir))?;

    // The swap: a new link under a temporary name renamed over `..data` (rename is atomic).
    let tmp_link = dir.join(DATA_DIR_TMP);
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&ts_name, &tmp_link).map_err(io("symlink", &tmp_link))?;
    std::fs::rename(&tmp_link, &data_link).map_err(io("rename", &tmp_link))?;

    let new_top: BTreeSet<String> = payload.keys().map(|p| top_level(p).to_owned()).collect();
    for name in &new_top {
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(Path::new(DATA_DIR).join(name), &visible).map_err(io("symlink", &visible))?;
        }
    }
    for name in old_top.difference(&new_top) {
        let visible = dir.join(name);
        std::fs::remove_file(&visible).map_err(io("remove", &visible))?;
    }
    if let Some(old) = old_ts {
        let old_dir = dir.join(old);
        if old_dir != ts_dir {
            std::fs::remove_dir_all(&old_dir).map_err(io("remove", &old_dir))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection { data: data.as_bytes().to_vec(), mode }
    }

    fn payload(entries: &[(&str, &str)]) -> Payload {
        entries.iter().map(|(p, d)| (p.to_string(), file(d, 0o644))).collect()
    }

    #[test]
    fn first_write_creates_data_link_and_visible_links() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), &payload(&[("a", "1"), ("sub/b", "2")]), |_| Ok(())).unwrap());
        let data = std::fs::read_link(dir.path().join("..data")).unwrap();
        assert!(data.to_string_lossy().starts_with("..20"), "{data:?}");
        assert_eq!(std::fs::read_link(dir.path().join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(std::fs::read_link(dir.path().join("sub")).unwrap(), Path::new("..data/sub"));
        assert_eq!(std::fs::read_to_string(dir.path().join("sub/b")).unwrap(), "2");
    }

    #[test]
    fn unchanged_payload_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = payload(&[("a", "1")]);
        write(dir.path(), &p, |_| Ok(())).unwrap();
        let before = std::fs::read_link(dir.path().join("..data")).unwrap();
        assert!(!write(dir.path(), &p, |_| Ok(())).unwrap());
        assert_eq!(std::fs::read_link(dir.path().join("..data")).unwrap(), before);
    }

    #[test]
    fn update_swaps_data_link_and_removes_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &payload(&[("a", "1"), ("b", "2")]), |_| Ok(())).unwrap();
        let before = std::fs::read_link(dir.path().join("..data")).unwrap();
        assert!(write(dir.path(), &payload(&[("a", "changed"), ("c", "3")]), |_| Ok(())).unwrap());
        let after = std::fs::read_link(dir.path().join("..data")).unwrap();
        assert_ne!(before, after);
        assert!(!dir.path().join(&before).exists(), "old timestamped dir removed");
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "changed");
        assert_eq!(std::fs::read_to_string(dir.path().join("c")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(dir.path().join("b")).is_err());
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("..2"))
            .collect();
        names.sort();
        assert_eq!(names, ["..data", "a", "c"]);
    }

    #[test]
    fn mode_change_alone_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &payload(&[("a", "1")]), |_| Ok(())).unwrap();
        let p: Payload = [("a".to_owned(), file("1", 0o400))].into();
        assert!(write(dir.path(), &p, |_| Ok(())).unwrap());
        let mode = std::fs::metadata(dir.path().join("a")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o400);
    }

    #[test]
    fn rejects_escaping_and_reserved_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["/etc/passwd", "../x", "a/../../x", "..data"] {
            let err = write(dir.path(), &payload(&[(bad, "x")]), |_| Ok(())).unwrap_err();
            assert!(matches!(err, AtomicWriteError::InvalidPath { .. }), "{bad}: {err}");
        }
    }
}
