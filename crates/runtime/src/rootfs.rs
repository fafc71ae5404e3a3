//! Container root filesystems: an overlayfs of the image's unpacked layers (read-only, shared by
//! every container of the image) with a fresh upper and work directory per container, mounted
//! at `<container_dir>/rootfs`; and the tmpfs a sandbox shares as `/dev/shm`.
//!
//! `mount(2)` takes its options in one page, so an image with many layers (or layers under a
//! long data directory) cannot always name them all in `lowerdir=`. Then the layers are given
//! one by one through the new mount API (`fsconfig(lowerdir+)`, Linux 6.8), or, on older
//! kernels, through short symlinks `<container_dir>/l/<n>` as containerd's overlay snapshotter
//! shortens its paths.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

/// The largest options string `mount(2)` accepts (one page, with its terminating NUL).
const MOUNT_DATA_MAX: usize = 4095;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("an image needs at least one layer")]
    NoLayers,
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting {fs_type} at {path}: {source}")]
    Mount {
        fs_type: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a path contains a character overlayfs options cannot carry: {path}")]
    UnsupportedPath { path: PathBuf },
}

fn io_error<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io { operation, path: path.to_owned(), source }
}

fn errno(error: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(error.raw_os_error())
}

/// Mounts an overlay of `layers` (bottom-most first, as `ImageStore::layer_paths` returns them)
/// with a fresh upper and work directory under `container_dir`, at `container_dir/rootfs`.
/// Returns the mount point; mounting an already mounted root filesystem returns it unchanged.
pub fn mount(layers: &[PathBuf], container_dir: &Path) -> Result<PathBuf, RootfsError> {
    if layers.is_empty() {
        return Err(RootfsError::NoLayers);
    }
    let target = container_dir.join("rootfs");
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for dir in [&target, &upper, &work] {
        std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
    }
    if is_mounted(&target)? {
        return Ok(target);
    }
    for path in layers.iter().chain([&upper, &work]) {
        // overlayfs splits its options at `,` and `:`; a path holding them cannot be named.
        if path.to_string_lossy().contains([',', ':', '\n']) {
            return Err(RootfsError::UnsupportedPath { path: path.clone() });
        }
    }
    // overlayfs lists the top-most lower layer first.
    let lowers: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    let extra = extra_options();
    let data = options(&lowers, &upper, &work, &extra);
    if data.len() <= MOUNT_DATA_MAX {
        mount_overlay(&data, &target)?;
    } else {
        match mount_overlay_fsconfig(&lowers, &upper, &work, &extra, &target) {
            Ok(()) => {}
            // Kernels before 6.8 know neither the new mount API's `lowerdir+` nor, before 5.2,
            // the API itself: name the layers through short links instead.
            Err(RootfsError::Mount { source, .. })
                if matches!(source.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSYS.raw_os_error()
                    || code == rustix::io::Errno::INVAL.raw_os_error()) =>
            {
                let links = short_links(&lowers, container_dir)?;
                mount_overlay(&options(&links, &upper, &work, &extra), &target)?;
            }
            Err(error) => return Err(error),
        }
    }
    tracing::debug!(rootfs = %target.display(), layers = layers.len(), "mounted container root filesystem");
    Ok(target)
}

/// Options overlayfs is given besides the directories: `index=off` where the kernel has the
/// feature (as containerd does), so that layers shared by many overlays never conflict.
fn extra_options() -> Vec<&'static str> {
    if Path::new("/sys/module/overlay/parameters/index").exists() { vec!["index=off"] } else { Vec::new() }
}

fn options(lowers: &[PathBuf], upper: &Path, work: &Path, extra: &[&str]) -> String {
    let lowerdir: Vec<String> = lowers.iter().map(|path| path.to_string_lossy().into_owned()).collect();
    let mut options = vec![
        format!("lowerdir={}", lowerdir.join(":")),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ];
    options.extend(extra.iter().map(|option| (*option).to_owned()));
    options.join(",")
}

fn mount_overlay(data: &str, target: &Path) -> Result<(), RootfsError> {
    let data = CString::new(data).map_err(|_| RootfsError::UnsupportedPath { path: target.to_owned() })?;
    rustix::mount::mount("overlay", target, "overlay", MountFlags::empty(), Some(data.as_c_str()))
        .map_err(|error| RootfsError::Mount { fs_type: "overlay", path: target.to_owned(), source: errno(error) })
}

/// The new mount API: each lower layer its own `lowerdir+` option, so no page limit applies.
fn mount_overlay_fsconfig(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    extra: &[&str],
    target: &Path,
) -> Result<(), RootfsError> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
    let fail = |error: rustix::io::Errno| RootfsError::Mount {
        fs_type: "overlay",
        path: target.to_owned(),
        source: errno(error),
    };
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(fail)?;
    for lower in lowers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower.as_path()).map_err(fail)?;
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", upper).map_err(fail)?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", work).map_err(fail)?;
    for option in extra {
        if let Some((key, value)) = option.split_once('=') {
            rustix::mount::fsconfig_set_string(&fs, key, value).map_err(fail)?;
        } else {
            rustix::mount::fsconfig_set_flag(&fs, *option).map_err(fail)?;
        }
    }
    rustix::mount::fsconfig_create(&fs).map_err(fail)?;
    let mounted = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty()).map_err(fail)?;
    rustix::mount::move_mount(&mounted, "", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .map_err(fail)
}

/// Links `<container_dir>/l/<n>` to each layer; returns the links in the layers' order.
fn short_links(lowers: &[PathBuf], container_dir: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    let dir = container_dir.join("l");
    std::fs::create_dir_all(&dir).map_err(io_error("creating", &dir))?;
    lowers
        .iter()
        .enumerate()
        .map(|(index, layer)| {
            let link = dir.join(index.to_string());
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(RootfsError::Io { operation: "removing", path: link, source }),
            }
            std::os::unix::fs::symlink(layer, &link).map_err(io_error("linking", &link))?;
            Ok(link)
        })
        .collect()
}

/// Unmounts the root filesystem of `container_dir`; lazily when it is still busy. Succeeds
/// when nothing is mounted.
pub fn unmount(container_dir: &Path) -> Result<(), RootfsError> {
    unmount_all(&container_dir.join("rootfs"))
}

/// Mounts the tmpfs a sandbox's containers share as `/dev/shm` at `path` (created if needed).
pub fn mount_shm(path: &Path, size_bytes: u64) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(io_error("creating", path))?;
    if is_mounted(path)? {
        return Ok(());
    }
    let data = CString::new(format!("mode=1777,size={size_bytes}")).unwrap_or_default();
    rustix::mount::mount(
        "shm",
        path,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(data.as_c_str()),
    )
    .map_err(|error| RootfsError::Mount { fs_type: "tmpfs", path: path.to_owned(), source: errno(error) })
}

/// Unmounts a sandbox's `/dev/shm`; succeeds when nothing is mounted.
pub fn unmount_shm(path: &Path) -> Result<(), RootfsError> {
    unmount_all(path)
}

/// Unmounts every mount stacked at `path`, detaching lazily those still in use.
fn unmount_all(path: &Path) -> Result<(), RootfsError> {
    while is_mounted(path)? {
        match rustix::mount::unmount(path, UnmountFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::BUSY) => {
                tracing::debug!(path = %path.display(), "mount busy, detaching lazily");
                rustix::mount::unmount(path, UnmountFlags::DETACH)
                    .map_err(|error| RootfsError::Unmount { path: path.to_owned(), source: errno(error) })?;
            }
            // Raced with another unmount: nothing left there.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) if !is_mounted(path)? => {}
            Err(error) => return Err(RootfsError::Unmount { path: path.to_owned(), source: errno(error) }),
        }
    }
    Ok(())
}

/// Whether something is mounted at `path`, from `/proc/self/mountinfo`.
pub fn is_mounted(path: &Path) -> Result<bool, RootfsError> {
    let path = match std::fs::canonicalize(path) {
        Ok(path) => path,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(RootfsError::Io { operation: "resolving", path: path.to_owned(), source }),
    };
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(mountinfo).map_err(io_error("reading", mountinfo))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| Path::new(&unescape_mountinfo(mount_point)) == path))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && bytes[index + 1..index + 4].iter().all(|byte| (b'0'..=b'7').contains(byte))
        {
            let value = bytes[index + 1..index + 4].iter().fold(0u32, |acc, byte| acc * 8 + u32::from(byte - b'0'));
            out.push(value as u8);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root tests skip outside CI when not root, and fail under `CI=true`.
    fn require_root() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert!(std::env::var("CI").as_deref() != Ok("true"), "this test needs root (CI=true)");
        eprintln!("skipping: this test needs root");
        false
    }

    fn whiteout(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .unwrap();
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn options_list_the_top_layer_first() {
        let lowers = vec![PathBuf::from("/l/top"), PathBuf::from("/l/bottom")];
        assert_eq!(
            options(&lowers, Path::new("/c/upper"), Path::new("/c/work"), &["index=off"]),
            "lowerdir=/l/top:/l/bottom,upperdir=/c/upper,workdir=/c/work,index=off"
        );
    }

    #[test]
    fn an_image_without_layers_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(mount(&[], dir.path()), Err(RootfsError::NoLayers)));
        assert!(!is_mounted(&dir.path().join("rootfs")).unwrap());
    }

    #[test]
    fn overlay_merges_layers_honours_whiteouts_and_unmounts_cleanly() {
        if !require_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bottom = dir.path().join("layers/bottom");
        let top = dir.path().join("layers/top");
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/kept"), "bottom").unwrap();
        std::fs::write(bottom.join("etc/deleted"), "bottom").unwrap();
        std::fs::write(bottom.join("etc/replaced"), "bottom").unwrap();
        std::fs::write(top.join("etc/replaced"), "top").unwrap();
        whiteout(&top.join("etc/deleted"));
        let container = dir.path().join("containers/c1");

        let rootfs = mount(&[bottom.clone(), top.clone()], &container).unwrap();
        assert!(is_mounted(&rootfs).unwrap());
        assert_eq!(std::fs::read_to_string(rootfs.join("etc/kept")).unwrap(), "bottom");
        assert_eq!(std::fs::read_to_string(rootfs.join("etc/replaced")).unwrap(), "top");
        assert!(!rootfs.join("etc/deleted").exists());
        // Mounting again is a no-op.
        assert_eq!(mount(&[bottom.clone(), top.clone()], &container).unwrap(), rootfs);

        std::fs::write(rootfs.join("etc/new"), "written").unwrap();
        assert_eq!(std::fs::read_to_string(container.join("upper/etc/new")).unwrap(), "written");
        assert!(!bottom.join("etc/new").exists() && !top.join("etc/new").exists());

        unmount(&container).unwrap();
        assert!(!is_mounted(&rootfs).unwrap());
        unmount(&container).unwrap();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(&*dir.path().to_string_lossy()));
    }

    #[test]
    fn sixty_layers_exceeding_a_page_still_mount() {
        if !require_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("a-long-data-directory-name-that-makes-the-layer-paths-long");
        let layers: Vec<PathBuf> = (0..60)
            .map(|index| {
                let layer = long.join(format!("{index:064x}"));
                std::fs::create_dir_all(&layer).unwrap();
                std::fs::write(layer.join(format!("file{index}")), index.to_string()).unwrap();
                std::fs::write(layer.join("top"), index.to_string()).unwrap();
                layer
            })
            .collect();
        let container = dir.path().join("c");
        let lowers: Vec<PathBuf> = layers.iter().rev().cloned().collect();
        assert!(options(&lowers, &container.join("upper"), &container.join("work"), &[]).len() > MOUNT_DATA_MAX);

        let rootfs = mount(&layers, &container).unwrap();
        assert_eq!(std::fs::read_to_string(rootfs.join("file0")).unwrap(), "0");
        assert_eq!(std::fs::read_to_string(rootfs.join("file59")).unwrap(), "59");
        assert_eq!(std::fs::read_to_string(rootfs.join("top")).unwrap(), "59");
        unmount(&container).unwrap();
        assert!(!is_mounted(&rootfs).unwrap());
    }

    #[test]
    fn short_links_name_many_layers_within_a_page() {
        if !require_root() {
            return;
        }
        // The fallback for kernels without `lowerdir+`, exercised directly.
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<PathBuf> = (0..60)
            .map(|index| {
                let layer = dir.path().join("layers").join(format!("{index:0128x}"));
                std::fs::create_dir_all(&layer).unwrap();
                std::fs::write(layer.join("top"), index.to_string()).unwrap();
                layer
            })
            .collect();
        let container = dir.path().join("c");
        for sub in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(container.join(sub)).unwrap();
        }
        let lowers: Vec<PathBuf> = layers.iter().rev().cloned().collect();
        let links = short_links(&lowers, &container).unwrap();
        let data = options(&links, &container.join("upper"), &container.join("work"), &[]);
        assert!(data.len() <= MOUNT_DATA_MAX, "{} bytes", data.len());
        mount_overlay(&data, &container.join("rootfs")).unwrap();
        assert_eq!(std::fs::read_to_string(container.join("rootfs/top")).unwrap(), "59");
        unmount(&container).unwrap();
        assert!(!is_mounted(&container.join("rootfs")).unwrap());
    }

    #[test]
    fn shm_is_a_sized_tmpfs_and_unmounts() {
        if !require_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let shm = dir.path().join("shm");
        mount_shm(&shm, 8 * 1024 * 1024).unwrap();
        mount_shm(&shm, 8 * 1024 * 1024).unwrap();
        assert!(is_mounted(&shm).unwrap());
        let stat = rustix::fs::statvfs(&shm).unwrap();
        assert_eq!(stat.f_blocks * stat.f_frsize, 8 * 1024 * 1024);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&shm).unwrap().permissions().mode() & 0o7777, 0o1777);
        unmount_shm(&shm).unwrap();
        unmount_shm(&shm).unwrap();
        assert!(!is_mounted(&shm).unwrap());
    }
}
