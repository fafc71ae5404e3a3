//! The records of every sandbox and container, held in memory once read.
//!
//! The kubelet lists sandboxes and containers for every pod about once a second; reading every
//! record file each time made that cost grow with the square of the pods on the node. The
//! runtime is the only writer of the records (shims write only exit files), so one copy in
//! memory, loaded from disk at the first use and written through on every change, stays
//! true. Exit files are still read on each status, as they change behind the runtime's back.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::BuiltinRuntime;
use super::records::{self, ContainerRecord, SandboxRecord};
use crate::cri::RuntimeError;

/// The runtime's records; `None` until first loaded from disk.
#[derive(Default)]
pub struct RecordCache(Mutex<Option<Records>>);

#[derive(Default)]
struct Records {
    sandboxes: BTreeMap<String, SandboxRecord>,
    containers: BTreeMap<String, ContainerRecord>,
}

impl BuiltinRuntime {
    /// Runs `f` on the records, loading them first if needed. Never held across an await.
    fn records<R>(&self, f: impl FnOnce(&mut Records) -> R) -> Result<R, RuntimeError> {
        let mut guard: MutexGuard<'_, Option<Records>> = self.cache.0.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(self.read_all_records()?);
        }
        Ok(f(guard.as_mut().expect("loaded above")))
    }

    fn read_all_records(&self) -> Result<Records, RuntimeError> {
        let mut loaded = Records::default();
        for id in records::ids_in(&self.root.join("sandboxes"))? {
            // A sandbox or container being created has its directory before its record.
            if let Some(record) = records::read::<SandboxRecord>(&self.sandbox_dir(&id).record())? {
                loaded.sandboxes.insert(id, record);
            }
        }
        for id in records::ids_in(&self.root.join("containers"))? {
            if let Some(record) = records::read::<ContainerRecord>(&self.container_dir(&id).record())? {
                loaded.containers.insert(id, record);
            }
        }
        Ok(loaded)
    }

    pub(super) fn load_container(&self, id: &str) -> Result<ContainerRecord, RuntimeError> {
        self.records(|r| r.containers.get(id).cloned())?.ok_or_else(|| RuntimeError::ContainerNotFound(id.to_owned()))
    }

    pub(super) fn load_sandbox(&self, id: &str) -> Result<SandboxRecord, RuntimeError> {
        self.records(|r| r.sandboxes.get(id).cloned())?.ok_or_else(|| RuntimeError::SandboxNotFound(id.to_owned()))
    }

    /// Every container record, by ID.
    pub(super) fn container_records(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        self.records(|r| r.containers.values().cloned().collect())
    }

    /// Every sandbox record, by ID.
    pub(super) fn sandbox_records(&self) -> Result<Vec<SandboxRecord>, RuntimeError> {
        self.records(|r| r.sandboxes.values().cloned().collect())
    }

    /// Writes a container's record to disk, then to memory.
    pub(super) fn save_container(&self, record: &ContainerRecord) -> Result<(), RuntimeError> {
        records::write(&self.container_dir(&record.id).record(), record)?;
        self.records(|r| r.containers.insert(record.id.clone(), record.clone()))?;
        Ok(())
    }

    pub(super) fn save_sandbox(&self, record: &SandboxRecord) -> Result<(), RuntimeError> {
        records::write(&self.sandbox_dir(&record.id).record(), record)?;
        self.records(|r| r.sandboxes.insert(record.id.clone(), record.clone()))?;
        Ok(())
    }

    pub(super) fn forget_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.records(|r| r.containers.remove(id))?;
        Ok(())
    }

    pub(super) fn forget_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.records(|r| r.sandboxes.remove(id))?;
        Ok(())
    }
}
