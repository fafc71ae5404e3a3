//! The few mount operations volumes need: tmpfs for memory-backed volumes, unmounting at
//! teardown, and reading `/proc/self/mountinfo` to know what is mounted.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4]).ok().and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount point of this mount namespace, in mount order.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(|l| l.split(' ').nth(4)).map(|f| PathBuf::from(unescape(f))).collect())
}

/// Whether `path` (made absolute and resolved) is a mount point.
pub fn is_mounted(path: &Path) -> io::Result<bool> {
    let Ok(path) = path.canonicalize() else { return Ok(false) };
    Ok(mount_points()?.contains(&path))
}

/// The mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let Ok(dir) = dir.canonicalize() else { return Ok(Vec::new()) };
    let mut found: Vec<PathBuf> = mount_points()?.into_iter().filter(|m| m.starts_with(&dir)).collect();
    found.reverse();
    Ok(found)
}

/// Mounts a tmpfs on `dir` (nosuid, nodev as runtimes do for memory volumes), with a size cap.
pub fn mount_tmpfs(dir: &Path, size_bytes: Option<u64>) -> io::Result<()> {
    let data = size_bytes.map(|s| CString::new(format!("size={s}")).expect("no NUL in a number"));
    rustix::mount::mount("tmpfs", dir, "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, data.as_deref())?;
    Ok(())
}

/// Unmounts `path`, detaching it lazily when it is still busy (a container shutting down).
pub fn unmount(path: &Path) -> io::Result<()> {
    match rustix::mount::unmount(path, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => Ok(rustix::mount::unmount(path, UnmountFlags::DETACH)?),
        Err(rustix::io::Errno::INVAL) if !is_mounted(path)? => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b/c"), "/tmp/a b/c");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\\"), r"/end\\");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\"), "/trailing\\");
    }

    #[test]
    fn root_is_mounted_and_a_temp_dir_is_not() {
        assert!(is_mounted(Path::new("/")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()).unwrap());
    }
}
