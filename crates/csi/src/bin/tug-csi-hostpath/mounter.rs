//! Bind mounts behind a small trait, so the driver's idempotency logic is testable without root.

use std::io;
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};

/// The mount operations the node service needs.
pub trait Mounter: Send + Sync {
    /// Whether `path` is a mount point (a repeated Stage/Publish must be a no-op).
    fn is_mount_point(&self, path: &Path) -> io::Result<bool>;
    /// Bind-mounts `source` at `target`, read-only when asked.
    fn bind(&self, source: &Path, target: &Path, readonly: bool) -> io::Result<()>;
    fn unmount(&self, target: &Path) -> io::Result<()>;
}

/// The real mounter: mount(2)/umount(2) through rustix; needs CAP_SYS_ADMIN.
pub struct SysMounter;

impl Mounter for SysMounter {
    /// statx's MOUNT_ROOT attribute (Linux 5.8): unlike comparing st_dev with the parent's, it
    /// sees bind mounts within one file system.
    fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
        use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags};
        let flags = AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW;
        match rustix::fs::statx(CWD, path, flags, StatxFlags::empty()) {
            Ok(stat) if stat.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
                Ok(stat.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
            }
            Ok(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "statx does not report mount roots")),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    fn bind(&self, source: &Path, target: &Path, readonly: bool) -> io::Result<()> {
        rustix::mount::mount_bind(source, target)?;
        if readonly {
            // A bind mount ignores MS_RDONLY on creation; it takes a remount of the bind.
            let flags = MountFlags::BIND | MountFlags::RDONLY;
            if let Err(err) = rustix::mount::mount_remount(target, flags, "") {
                let _ = rustix::mount::unmount(target, UnmountFlags::empty());
                return Err(err.into());
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        rustix::mount::unmount(target, UnmountFlags::empty())?;
        Ok(())
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory mounter for unit tests.

    use std::collections::BTreeMap;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeMounter {
        /// target -> (source, readonly)
        pub mounts: Mutex<BTreeMap<PathBuf, (PathBuf, bool)>>,
    }

    impl super::Mounter for FakeMounter {
        fn is_mount_point(&self, path: &Path) -> io::Result<bool> {
            Ok(self.mounts.lock().unwrap().contains_key(path))
        }

        fn bind(&self, source: &Path, target: &Path, readonly: bool) -> io::Result<()> {
            let mut mounts = self.mounts.lock().unwrap();
            if mounts.contains_key(target) {
                // A second bind would stack a mount: the driver must never do it.
                return Err(io::Error::other("already mounted"));
            }
            mounts.insert(target.to_path_buf(), (source.to_path_buf(), readonly));
            Ok(())
        }

        fn unmount(&self, target: &Path) -> io::Result<()> {
            match self.mounts.lock().unwrap().remove(target) {
                Some(_) => Ok(()),
                None => Err(io::Error::from_raw_os_error(22)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_or_missing_directory_is_not_a_mount_point_and_proc_is() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!SysMounter.is_mount_point(dir.path()).unwrap());
        assert!(!SysMounter.is_mount_point(&dir.path().join("missing")).unwrap());
        assert!(SysMounter.is_mount_point(Path::new("/proc")).unwrap());
    }
}
