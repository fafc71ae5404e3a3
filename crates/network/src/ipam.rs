//! Host-local address management: which pod sandbox holds which address of the node's subnet.
//!
//! Behaves like the CNI `host-local` plugin's disk store, so that a restart of the node agent
//! neither forgets nor reuses an address:
//! - one directory per subnet, `root/10.42.0.0-24`;
//! - one file per held address, named by the address, holding the owner's id. It is created with
//!   `O_EXCL`, so two processes can never both get one address;
//! - `last_reserved_ip.0` remembers the last address handed out, and the next search starts
//!   after it (round robin), so an address freed by a deleted pod is not given to the next pod
//!   at once — connections to the old pod must not reach the new one.
//!
//! An exclusive `flock` on a `lock` file (as host-local holds) serialises processes; a mutex
//! serialises threads of one process, because `flock` locks belong to the open file description
//! and would not exclude a second thread opening its own.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;

/// The file remembering the last address handed out (host-local's name; `.0` is its range index).
const LAST_RESERVED_FILE: &str = "last_reserved_ip.0";
/// The file whose `flock` serialises processes sharing the store.
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{operation} {path}: {source}")]
    Io { operation: &'static str, path: PathBuf, source: std::io::Error },
    #[error("subnet {subnet} is too small for pods: it needs a gateway and at least one more host (at most /30)")]
    SubnetTooSmall { subnet: Ipv4Net },
    #[error("no free address left in {subnet}")]
    Exhausted { subnet: Ipv4Net },
    #[error("the IPAM store's lock is poisoned (a thread panicked while holding it)")]
    Poisoned,
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IpamError {
    let path = path.to_path_buf();
    move |source| IpamError::Io { operation, path, source }
}

/// The address store of one subnet (see the module docs).
#[derive(Debug)]
pub struct HostLocalIpam {
    dir: PathBuf,
    subnet: Ipv4Net,
    /// Serialises allocation and release among this process's threads.
    lock: Mutex<()>,
}

/// Holds the store's exclusive `flock` until dropped (closing the file releases it).
struct DirLock {
    _file: File,
}

impl HostLocalIpam {
    /// Opens (creating) the store for `subnet` under `root`: its directory is
    /// root/<subnet with '/' replaced by '-'>, e.g. root/10.42.0.0-24.
    pub fn open(root: &Path, subnet: Ipv4Net) -> Result<Self, IpamError> {
        // 10.42.0.7/24 means the subnet 10.42.0.0/24.
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall { subnet });
        }
        let dir = root.join(subnet.to_string().replace('/', "-"));
        std::fs::create_dir_all(&dir).map_err(io_error("creating the IPAM directory", &dir))?;
        Ok(Self { dir, subnet, lock: Mutex::new(()) })
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway: the subnet's first host address (10.42.0.1 for 10.42.0.0/24).
    pub fn gateway(&self) -> Ipv4Addr {
        offset(self.subnet.network(), 1)
    }

    /// An address for `owner` (a sandbox id). Idempotent: an owner that already holds one gets
    /// it again. Never the network, gateway or broadcast address; never one held by another
    /// owner. Round-robin like host-local: starts after the last reserved address (kept in a
    /// `last_reserved_ip.0` file) so a freed address is not reused at once.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let _guard = self.lock.lock().map_err(|_| IpamError::Poisoned)?;
        let _dir_lock = self.lock_dir()?;

        let held = self.read_allocations()?;
        if let Some((address, _)) = held.iter().find(|(_, holder)| holder == owner) {
            tracing::debug!(%address, owner, subnet = %self.subnet, "owner already holds an address");
            return Ok(*address);
        }

        // Usable: from the address after the gateway to the one before the broadcast.
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.subnet.broadcast()) - 1;
        let size = last - first + 1;
        let start = match self.last_reserved()? {
            Some(previous) if (first..=last).contains(&u32::from(previous)) => u32::from(previous) - first + 1,
            _ => 0,
        };
        for step in 0..size {
            let candidate = Ipv4Addr::from(first + (start + step) % size);
            if held.iter().any(|(address, _)| *address == candidate) {
                continue;
            }
            if self.reserve(candidate, owner)? {
                self.write_last_reserved(candidate)?;
                tracing::debug!(address = %candidate, owner, subnet = %self.subnet, "allocated an address");
                return Ok(candidate);
            }
        }
        Err(IpamError::Exhausted { subnet: self.subnet })
    }

    /// Frees `owner`'s address(es); Ok(None) when it had none.
    pub fn release(&self, owner: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let _guard = self.lock.lock().map_err(|_| IpamError::Poisoned)?;
        let _dir_lock = self.lock_dir()?;

        let mut freed = None;
        for (address, holder) in self.read_allocations()? {
            if holder != owner {
                continue;
            }
            let path = self.dir.join(address.to_string());
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                // Released meanwhile by another process: it is free either way.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error("removing the address file", &path)(error)),
            }
            tracing::debug!(%address, owner, subnet = %self.subnet, "released an address");
            freed.get_or_insert(address);
        }
        Ok(freed)
    }

    /// Every held address with its owner, sorted by address.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let _guard = self.lock.lock().map_err(|_| IpamError::Poisoned)?;
        self.read_allocations()
    }

    fn lock_dir(&self) -> Result<DirLock, IpamError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error("opening the IPAM lock file", &path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|errno| io_error("locking the IPAM lock file", &path)(errno.into()))?;
        Ok(DirLock { _file: file })
    }

    /// Every address file of the directory; other files (the lock, `last_reserved_ip.0`) are
    /// not addresses and are skipped.
    fn read_allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_error("listing the IPAM directory", &self.dir))?;
        let mut allocations = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("listing the IPAM directory", &self.dir))?;
            let Some(address) = entry.file_name().to_str().and_then(|name| name.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let content = match std::fs::read_to_string(&path) {
                Ok(content) => content,
                // Released between the listing and the read.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io_error("reading the address file", &path)(error)),
            };
            // host-local writes "<id>\r\n<ifname>": the owner is the first line.
            let owner = content.lines().next().unwrap_or_default().trim().to_string();
            allocations.push((address, owner));
        }
        allocations.sort();
        Ok(allocations)
    }

    /// Takes `address` for `owner`; false when another process holds it already.
    fn reserve(&self, address: Ipv4Addr, owner: &str) -> Result<bool, IpamError> {
        let path = self.dir.join(address.to_string());
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(error) => return Err(io_error("creating the address file", &path)(error)),
        };
        if let Err(error) = file.write_all(owner.as_bytes()).and_then(|()| file.sync_all()) {
            // An empty file would hold the address for nobody, forever.
            let _ = std::fs::remove_file(&path);
            return Err(io_error("writing the address file", &path)(error));
        }
        Ok(true)
    }

    fn last_reserved(&self) -> Result<Option<Ipv4Addr>, IpamError> {
        let path = self.dir.join(LAST_RESERVED_FILE);
        match std::fs::read_to_string(&path) {
            // A damaged file only costs the round robin its position.
            Ok(content) => Ok(content.trim().parse().ok()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error("reading the last reserved address", &path)(error)),
        }
    }

    fn write_last_reserved(&self, address: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(LAST_RESERVED_FILE);
        std::fs::write(&path, address.to_string()).map_err(io_error("writing the last reserved address", &path))
    }
}

fn offset(address: Ipv4Addr, by: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(address) + by)
}

#[cfg(test)]
#[path = "ipam_tests.rs"]
mod tests;
