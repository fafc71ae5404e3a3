//! Unpacking one layer (a tar stream, plain, gzip or zstd) into its own directory, in the form
//! overlayfs expects of a lower directory: OCI whiteouts become overlay whiteouts (`.wh.NAME` is a
//! character device 0/0 named NAME; `.wh..wh..opq` makes its directory opaque through the
//! `trusted.overlay.opaque` xattr). Ownership, modes, times, xattrs, symlinks, hard links and
//! device nodes are kept, so this needs root, as the kubelet does.
//!
//! A layer is untrusted input: no entry may land or link outside the layer directory. Paths with
//! `..` are refused, leading `/` is dropped (tar paths are relative to the image root), an entry
//! is never written through a symlink that an earlier entry created (the symlink would be
//! followed on the host), and a hard link's target must be a file already in this layer.
//! The uncompressed stream is hashed while it unpacks and checked against the layer's diffID.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::digest::{Digest, HashingReader};

/// Prefix of an OCI whiteout file; `.wh.NAME` deletes NAME from the layers below.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Marks its directory opaque: nothing of that directory in the layers below shows through.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// Prefix of AUFS metadata entries (`.wh..wh.plnk`, `.wh..wh.aufs`), which carry no content.
const AUFS_META_PREFIX: &str = ".wh..wh.";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("reading the layer archive")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("unpacking {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?} leaves the layer directory")]
    PathTraversal { entry: String },
    #[error("layer entry {entry:?} goes through the symlink {symlink:?}")]
    ThroughSymlink { entry: String, symlink: PathBuf },
    #[error("layer entry {entry:?} is below {parent:?}, which is not a directory")]
    ParentNotDirectory { entry: String, parent: PathBuf },
    #[error("hard link {entry:?} points at {target:?}, which is not a file of this layer")]
    HardLinkTarget { entry: String, target: String },
    #[error("layer content has diffID {actual}, the image config says {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

/// How a layer blob is compressed, told by its first bytes rather than its media type (Docker
/// archives and some registries label layers loosely).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Opens a blob as its uncompressed tar stream.
pub fn decompress<'a>(blob: impl Read + 'a) -> Result<Box<dyn Read + 'a>, LayerError> {
    let mut blob = BufReader::with_capacity(256 * 1024, blob);
    let head = blob.fill_buf().map_err(|source| LayerError::Read { source })?;
    Ok(match Compression::detect(head) {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(blob)
                .map_err(|e| LayerError::Read { source: io::Error::new(io::ErrorKind::InvalidData, e) })?,
        ),
    })
}

/// Unpacks the layer `blob` into the existing empty directory `dest` and checks its diffID
/// (the digest of the uncompressed tar) when `expected_diff_id` is given. Returns the diffID.
pub fn unpack(blob: impl Read, dest: &Path, expected_diff_id: Option<&Digest>) -> Result<Digest, LayerError> {
    let tar_stream = HashingReader::new(decompress(blob)?);
    let mut archive = tar::Archive::new(tar_stream);
    let as_root = rustix::process::geteuid().is_root();
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(as_root);
    archive.set_unpack_xattrs(as_root);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(|source| LayerError::Read { source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| LayerError::Read { source })?;
        unpack_entry(&mut entry, dest, as_root)?;
    }
    let (diff_id, _) = archive.into_inner().finish().map_err(|source| LayerError::Read { source })?;
    if let Some(expected) = expected_diff_id
        && *expected != diff_id
    {
        return Err(LayerError::DiffIdMismatch { expected: expected.clone(), actual: diff_id });
    }
    Ok(diff_id)
}

fn unpack_entry<R: Read>(entry: &mut tar::Entry<'_, R>, dest: &Path, as_root: bool) -> Result<(), LayerError> {
    let raw_path = entry.path().map_err(|source| LayerError::Read { source })?.into_owned();
    let shown = raw_path.display().to_string();
    let rel = sanitize(&raw_path).ok_or_else(|| LayerError::PathTraversal { entry: shown.clone() })?;
    let kind = entry.header().entry_type();

    let Some(name) = rel.file_name().map(OsStr::to_owned) else {
        // The archive's root ("./"): its mode and owner are the layer root's.
        if kind.is_dir() {
            apply_metadata(entry.header(), dest, as_root)?;
        }
        return Ok(());
    };
    let parent_rel = rel.parent().unwrap_or(Path::new(""));
    let parent = ensure_parents(dest, parent_rel, &shown)?;
    let name_bytes = name.as_bytes();

    if name_bytes == OPAQUE_WHITEOUT.as_bytes() {
        rustix::fs::lsetxattr(&parent, OVERLAY_OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
            .map_err(|e| write_error(&parent, e.into()))?;
        return Ok(());
    }
    if name_bytes.starts_with(AUFS_META_PREFIX.as_bytes()) {
        tracing::trace!(entry = %shown, "skipping aufs metadata entry");
        return Ok(());
    }
    if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if hidden.is_empty() {
            return Err(LayerError::PathTraversal { entry: shown });
        }
        let target = parent.join(OsStr::from_bytes(hidden));
        remove_existing(&target)?;
        mknod(&target, rustix::fs::FileType::CharacterDevice, 0, 0)?;
        return Ok(());
    }

    let target = parent.join(&name);
    if kind.is_dir() {
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                remove_existing(&target)?;
                fs::create_dir(&target).map_err(|e| write_error(&target, e))?;
            }
            Err(_) => fs::create_dir(&target).map_err(|e| write_error(&target, e))?,
        }
        apply_metadata(entry.header(), &target, as_root)?;
    } else if kind.is_hard_link() {
        let link_name = entry
            .link_name()
            .map_err(|source| LayerError::Read { source })?
            .ok_or_else(|| LayerError::HardLinkTarget { entry: shown.clone(), target: String::new() })?;
        let link_display = link_name.display().to_string();
        let bad_target = || LayerError::HardLinkTarget { entry: shown.clone(), target: link_display.clone() };
        let source_rel = sanitize(&link_name).ok_or_else(bad_target)?;
        if source_rel.as_os_str().is_empty() {
            return Err(bad_target());
        }
        check_no_symlinks(dest, source_rel.parent().unwrap_or(Path::new("")), &shown)?;
        let source = dest.join(&source_rel);
        match fs::symlink_metadata(&source) {
            Ok(meta) if !meta.is_dir() => {}
            _ => return Err(bad_target()),
        }
        remove_existing(&target)?;
        fs::hard_link(&source, &target).map_err(|e| write_error(&target, e))?;
    } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
        let file_type = if kind.is_character_special() {
            rustix::fs::FileType::CharacterDevice
        } else if kind.is_block_special() {
            rustix::fs::FileType::BlockDevice
        } else {
            rustix::fs::FileType::Fifo
        };
        let header = entry.header();
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        remove_existing(&target)?;
        mknod(&target, file_type, major, minor)?;
        apply_metadata(header, &target, as_root)?;
    } else if kind.is_file() || kind.is_symlink() || kind == tar::EntryType::Continuous {
        remove_existing(&target)?;
        entry.unpack(&target).map_err(|e| write_error(&target, e))?;
    } else {
        tracing::debug!(entry = %shown, kind = ?kind, "skipping unsupported layer entry type");
    }
    Ok(())
}

/// The entry's path as plain components below the layer root, or None when it climbs out
/// (`..`). Leading `/` and `.` components are dropped as tar extractors do.
fn sanitize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates the missing directories of `parent_rel` below `dest` (mode 0755, as tar does for
/// implied parents) and refuses to go through a symlink or a non-directory.
fn ensure_parents(dest: &Path, parent_rel: &Path, entry: &str) -> Result<PathBuf, LayerError> {
    let mut dir = dest.to_path_buf();
    for part in parent_rel.components() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(LayerError::ThroughSymlink { entry: entry.to_owned(), symlink: dir });
            }
            Ok(_) => return Err(LayerError::ParentNotDirectory { entry: entry.to_owned(), parent: dir }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(|e| write_error(&dir, e))?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|e| write_error(&dir, e))?;
            }
            Err(e) => return Err(write_error(&dir, e)),
        }
    }
    Ok(dir)
}

/// Like [`ensure_parents`] but creates nothing: a hard link's source must already exist.
fn check_no_symlinks(dest: &Path, parent_rel: &Path, entry: &str) -> Result<(), LayerError> {
    let mut dir = dest.to_path_buf();
    for part in parent_rel.components() {
        dir.push(part);
        if let Ok(meta) = fs::symlink_metadata(&dir)
            && meta.file_type().is_symlink()
        {
            return Err(LayerError::ThroughSymlink { entry: entry.to_owned(), symlink: dir });
        }
    }
    Ok(())
}

/// Removes what an earlier entry of the same layer put at `path` (a later entry wins, as in tar).
fn remove_existing(path: &Path) -> Result<(), LayerError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(|e| write_error(path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| write_error(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(write_error(path, e)),
    }
}

fn mknod(path: &Path, file_type: rustix::fs::FileType, major: u32, minor: u32) -> Result<(), LayerError> {
    rustix::fs::mknodat(rustix::fs::CWD, path, file_type, rustix::fs::Mode::empty(), rustix::fs::makedev(major, minor))
        .map_err(|e| write_error(path, e.into()))
}

/// Owner (as root only) then mode: chown clears set-uid bits, so the mode goes last.
fn apply_metadata(header: &tar::Header, path: &Path, as_root: bool) -> Result<(), LayerError> {
    if as_root {
        let uid = header.uid().map_err(|source| LayerError::Read { source })?;
        let gid = header.gid().map_err(|source| LayerError::Read { source })?;
        std::os::unix::fs::lchown(path, Some(uid as u32), Some(gid as u32)).map_err(|e| write_error(path, e))?;
    }
    let mode = header.mode().map_err(|source| LayerError::Read { source })?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| write_error(path, e))
}

fn write_error(path: &Path, source: io::Error) -> LayerError {
    LayerError::Write { path: path.to_path_buf(), source }
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
