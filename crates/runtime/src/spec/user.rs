//! The user a container runs as: `runAsUser`/`runAsGroup`, or the image's `User` (`name`, `uid`,
//! `name:group`, `uid:gid`) resolved against the container's own `/etc/passwd` and `/etc/group`,
//! as containerd's `WithUser` and `WithAdditionalGIDs` do.
//!
//! The files are read inside the container's root filesystem: a symlink in the image (even an
//! absolute one, or one full of `..`) is resolved as if the root filesystem were `/`, so an
//! image can never make the runtime read a file of the host.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::SpecError;

/// How many symlinks a path may traverse before resolution gives up (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// Who the container's process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// The primary group first, then the groups listing the user, then the pod's
    /// supplemental groups.
    pub additional_gids: Vec<u32>,
}

/// What the container asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRequest<'a> {
    pub run_as_user: Option<u32>,
    pub run_as_username: Option<&'a str>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: &'a [u32],
    /// The image's `User`, used when neither `run_as_user` nor `run_as_username` is set.
    pub image_user: Option<&'a str>,
}

#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves the user of a container whose root filesystem is `rootfs`.
pub fn resolve(rootfs: &Path, request: &UserRequest<'_>) -> Result<ResolvedUser, SpecError> {
    let (user_part, group_part) = match (request.run_as_user, request.run_as_username) {
        (Some(uid), _) => (uid.to_string(), None),
        (None, Some(name)) => (name.to_owned(), None),
        (None, None) => {
            let image_user = request.image_user.unwrap_or("");
            match image_user.split_once(':') {
                Some((user, group)) => (user.to_owned(), Some(group.to_owned())),
                None => (image_user.to_owned(), None),
            }
        }
    };

    let passwd = read_passwd(rootfs)?;
    let (uid, mut gid, username) = if user_part.is_empty() {
        let root = passwd.iter().find(|entry| entry.uid == 0);
        (0, root.map_or(0, |entry| entry.gid), root.map(|entry| entry.name.clone()))
    } else if let Ok(uid) = user_part.parse::<u32>() {
        // A uid need not exist in the image: it runs with gid 0, as Docker and containerd do.
        let entry = passwd.iter().find(|entry| entry.uid == uid);
        (uid, entry.map_or(0, |entry| entry.gid), entry.map(|entry| entry.name.clone()))
    } else {
        let entry = passwd
            .iter()
            .find(|entry| entry.name == user_part)
            .ok_or_else(|| SpecError::UserNotFound { name: user_part.clone() })?;
        (entry.uid, entry.gid, Some(entry.name.clone()))
    };

    let groups = read_group(rootfs)?;
    if let Some(run_as_group) = request.run_as_group {
        gid = run_as_group;
    } else if let Some(group) = group_part.filter(|group| !group.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups.iter().find(|entry| entry.name == group).ok_or(SpecError::GroupNotFound { name: group })?.gid
            }
        };
    }

    let mut additional_gids = vec![gid];
    if let Some(username) = &username {
        // The user's supplementary groups: those listing it as a member, not its own group.
        let member_of = groups
            .iter()
            .filter(|entry| &entry.name != username && entry.members.iter().any(|member| member == username));
        additional_gids.extend(member_of.map(|entry| entry.gid));
    }
    additional_gids.extend(request.supplemental_groups.iter().copied());
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|gid| seen.insert(*gid));
    Ok(ResolvedUser { uid, gid, additional_gids })
}

fn read_passwd(rootfs: &Path) -> Result<Vec<PasswdEntry>, SpecError> {
    let Some(text) = read_in_root(rootfs, "/etc/passwd")? else { return Ok(Vec::new()) };
    Ok(text
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?.to_owned();
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(PasswdEntry { name, uid, gid })
        })
        .collect())
}

fn read_group(rootfs: &Path) -> Result<Vec<GroupEntry>, SpecError> {
    let Some(text) = read_in_root(rootfs, "/etc/group")? else { return Ok(Vec::new()) };
    Ok(text
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?.to_owned();
            let _password = fields.next()?;
            let gid = fields.next()?.parse().ok()?;
            let members = fields
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|member| !member.is_empty())
                .map(str::to_owned)
                .collect();
            Some(GroupEntry { name, gid, members })
        })
        .collect())
}

/// Reads `path` of the container as text; `None` when it does not exist.
fn read_in_root(rootfs: &Path, path: &str) -> Result<Option<String>, SpecError> {
    let host_path = resolve_in_root(rootfs, Path::new(path))
        .map_err(|source| SpecError::ReadRootfs { path: rootfs.join(path.trim_start_matches('/')), source })?;
    match std::fs::read(&host_path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(error) if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(None),
        Err(source) => Err(SpecError::ReadRootfs { path: host_path, source }),
    }
}

/// The host path of `path` inside `root`, resolving symlinks as if `root` were `/`: absolute
/// targets restart at `root` and `..` never climbs above it.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(path).collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        resolved.push(part);
        let host: PathBuf = std::iter::once(root.as_os_str().to_owned()).chain(resolved.iter().cloned()).collect();
        let metadata = match std::fs::symlink_metadata(&host) {
            Ok(metadata) => metadata,
            // The rest cannot be symlinks: it does not exist.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        if !metadata.file_type().is_symlink() {
            continue;
        }
        hops += 1;
        if hops > MAX_SYMLINKS {
            return Err(io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error()));
        }
        let target = std::fs::read_link(&host)?;
        resolved.pop();
        if target.is_absolute() {
            resolved.clear();
        }
        for part in components(&target).rev() {
            pending.push_front(part);
        }
    }
    Ok(std::iter::once(root.as_os_str().to_owned()).chain(resolved).collect())
}

fn components(path: &Path) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    path.components().filter_map(|component| match component {
        Component::Normal(name) => Some(name.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\n# comment\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:root,www\nwww:x:33:www\nvideo:x:44:www\nnogroup:x:65534:\n",
        )
        .unwrap();
        dir
    }

    fn image(user: &str) -> UserRequest<'_> {
        UserRequest { image_user: Some(user), ..UserRequest::default() }
    }

    #[test]
    fn nothing_said_means_root_with_its_groups() {
        let dir = rootfs();
        let user = resolve(dir.path(), &UserRequest::default()).unwrap();
        assert_eq!(user, ResolvedUser { uid: 0, gid: 0, additional_gids: vec![0, 10] });
    }

    #[test]
    fn image_user_name_resolves_uid_gid_and_member_groups() {
        let dir = rootfs();
        let user = resolve(dir.path(), &image("www")).unwrap();
        assert_eq!(user, ResolvedUser { uid: 33, gid: 33, additional_gids: vec![33, 10, 44] });
    }

    #[test]
    fn image_user_forms_with_groups() {
        let dir = rootfs();
        assert_eq!(resolve(dir.path(), &image("www:nogroup")).unwrap().gid, 65534);
        let numeric = resolve(dir.path(), &image("1234:5678")).unwrap();
        assert_eq!((numeric.uid, numeric.gid, numeric.additional_gids), (1234, 5678, vec![5678]));
        let unknown_uid = resolve(dir.path(), &image("4242")).unwrap();
        assert_eq!((unknown_uid.uid, unknown_uid.gid), (4242, 0));
        assert_eq!(resolve(dir.path(), &image("65534")).unwrap().gid, 65534);
    }

    #[test]
    fn unknown_names_are_errors_as_runtimes_word_them() {
        let dir = rootfs();
        let error = resolve(dir.path(), &image("nope")).unwrap_err();
        assert_eq!(error.to_string(), "unable to find user nope: no matching entries in passwd file");
        let error = resolve(dir.path(), &image("www:nope")).unwrap_err();
        assert_eq!(error.to_string(), "unable to find group nope: no matching entries in group file");
    }

    #[test]
    fn run_as_user_and_group_win_over_the_image_and_supplemental_groups_append() {
        let dir = rootfs();
        let request = UserRequest {
            run_as_user: Some(33),
            run_as_group: Some(2000),
            supplemental_groups: &[3000, 10],
            image_user: Some("nobody"),
            ..UserRequest::default()
        };
        let user = resolve(dir.path(), &request).unwrap();
        assert_eq!(user, ResolvedUser { uid: 33, gid: 2000, additional_gids: vec![2000, 10, 44, 3000] });
    }

    #[test]
    fn no_passwd_file_still_runs_numeric_users() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve(dir.path(), &image("1000")).unwrap().uid, 1000);
        assert!(matches!(resolve(dir.path(), &image("www")), Err(SpecError::UserNotFound { .. })));
    }

    #[test]
    fn symlinks_never_leave_the_root_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/passwd"), "app:x:77:77::/:/bin/sh\n").unwrap();
        // An absolute link and a `..` link both stay inside the root.
        std::os::unix::fs::symlink("/../../../real/passwd", root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/shadow-of-host", root.join("etc/group")).unwrap();
        std::fs::write(dir.path().join("shadow-of-host"), "evil:x:1:1:\n").unwrap();
        assert_eq!(resolve(&root, &image("app")).unwrap().uid, 77);
        assert_eq!(resolve_in_root(&root, Path::new("/etc/group")).unwrap(), root.join("etc/shadow-of-host"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(&root, Path::new("/loop/x")).is_err());
    }
}
