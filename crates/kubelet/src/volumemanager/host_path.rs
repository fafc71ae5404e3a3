//! The hostPath volume plugin (upstream's `pkg/volume/hostpath`): a path of the node, checked
//! (or created) according to the volume's `type`.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::HostPathVolumeSource;

use super::SetUpError;

/// Checks the path as upstream's `checkType` does and returns it; `DirectoryOrCreate` and
/// `FileOrCreate` create what is missing (0755 directory, 0644 empty file).
pub fn setup(source: &HostPathVolumeSource) -> Result<PathBuf, SetUpError> {
    let path = PathBuf::from(&source.path);
    let kind = source.type_.as_deref().unwrap_or_default();
    check_type(&path, kind)?;
    Ok(path)
}

/// The type names upstream's `GetFileType` reports.
fn file_type_name(t: std::fs::FileType) -> Option<&'static str> {
    Some(if t.is_dir() {
        "Directory"
    } else if t.is_file() {
        "File"
    } else if t.is_socket() {
        "Socket"
    } else if t.is_char_device() {
        "CharDevice"
    } else if t.is_block_device() {
        "BlockDevice"
    } else {
        return None;
    })
}

/// Upstream's `typeMatchedOrError`: the path must exist and be of the expected type.
fn matched_or_error(path: &Path, expected: &'static str, description: &'static str) -> Result<(), SetUpError> {
    let meta = std::fs::metadata(path).map_err(|_| SetUpError::HostPathMissing { path: path.to_path_buf() })?;
    match file_type_name(meta.file_type()) {
        Some(actual) if actual == expected => Ok(()),
        Some(actual) => Err(SetUpError::HostPathType { path: path.to_path_buf(), expected: description, actual }),
        None => Err(SetUpError::HostPathUnknownType { path: path.to_path_buf(), expected: description }),
    }
}

fn check_type(path: &Path, kind: &str) -> Result<(), SetUpError> {
    let exists = std::fs::metadata(path).is_ok();
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" if !exists => {
            std::fs::create_dir_all(path).map_err(SetUpError::io("create directory", path))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(SetUpError::io("chmod", path))
        }
        "DirectoryOrCreate" | "Directory" => matched_or_error(path, "Directory", "directory"),
        "FileOrCreate" if !exists => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(SetUpError::io("create file", path)),
        "FileOrCreate" | "File" => matched_or_error(path, "File", "file"),
        "Socket" => matched_or_error(path, "Socket", "socket file"),
        "CharDevice" => matched_or_error(path, "CharDevice", "character device"),
        "BlockDevice" => matched_or_error(path, "BlockDevice", "block device"),
        other => Err(SetUpError::InvalidHostPathType { kind: other.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &Path, kind: &str) -> HostPathVolumeSource {
        HostPathVolumeSource { path: path.to_string_lossy().into_owned(), type_: Some(kind.to_owned()) }
    }

    #[test]
    fn or_create_types_create_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        assert_eq!(setup(&source(&d, "DirectoryOrCreate")).unwrap(), d);
        assert!(d.is_dir());
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o755);
        let f = dir.path().join("f");
        setup(&source(&f, "FileOrCreate")).unwrap();
        assert!(f.is_file());
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
    }

    #[test]
    fn type_mismatches_use_upstream_messages() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let msg = |p: &Path, k| setup(&source(p, k)).unwrap_err().to_string();
        let (f_, d) = (f.display(), dir.path().display());
        let absent = dir.path().join("absent");
        let cases = [
            (msg(&f, "Directory"), format!("hostPath type check failed: {f_} is not a directory, it's a File")),
            (msg(&f, "DirectoryOrCreate"), format!("hostPath type check failed: {f_} is not a directory, it's a File")),
            (msg(dir.path(), "File"), format!("hostPath type check failed: {d} is not a file, it's a Directory")),
            (msg(&absent, "Directory"), format!("hostPath {} doesn't exist", absent.display())),
            (msg(&f, "Socket"), format!("hostPath type check failed: {f_} is not a socket file, it's a File")),
            (msg(&f, "CharDevice"), format!("hostPath type check failed: {f_} is not a character device, it's a File")),
            (msg(&f, "BlockDevice"), format!("hostPath type check failed: {f_} is not a block device, it's a File")),
            (msg(&f, "Weird"), "Weird is an invalid volume type".to_owned()),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        assert!(setup(&source(Path::new("/dev/null"), "CharDevice")).is_ok());
        assert!(setup(&source(&absent, "")).is_ok(), "no type: no check");
    }
}
