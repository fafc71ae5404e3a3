//! The driver's volumes on disk: `<state>/volumes/<id>/` holds a volume's data,
//! `<state>/meta/<id>.json` its name, size and the nodes it is published to, and
//! `<state>/ephemeral/<id>/` the data of an inline (ephemeral) volume while a pod uses it.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("volume id {id:?} is not a plain name")]
    InvalidId { id: String },
    #[error("read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("decode {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What the driver remembers about a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub id: String,
    pub name: String,
    pub capacity_bytes: i64,
    #[serde(default)]
    pub published_nodes: BTreeSet<String>,
}

pub struct VolumeStore {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Volume ids become path components: only a plain file name is acceptable.
fn check_id(id: &str) -> Result<(), StateError> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') || id.contains('\0') {
        return Err(StateError::InvalidId { id: id.to_string() });
    }
    Ok(())
}

impl VolumeStore {
    pub fn open(root: &Path) -> Result<Self, StateError> {
        for dir in ["volumes", "meta", "ephemeral"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        Ok(VolumeStore { root: root.to_path_buf() })
    }

    /// The volume id for a CreateVolume name: derived from the name, so that a retried
    /// CreateVolume finds the volume it already made.
    pub fn id_for_name(name: &str) -> String {
        let digest = Sha256::digest(name.as_bytes());
        format!("vol-{}", &hex::encode(digest)[..24])
    }

    pub fn data_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        check_id(id)?;
        Ok(self.root.join("volumes").join(id))
    }

    pub fn ephemeral_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        check_id(id)?;
        Ok(self.root.join("ephemeral").join(id))
    }

    fn meta_path(&self, id: &str) -> Result<PathBuf, StateError> {
        check_id(id)?;
        Ok(self.root.join("meta").join(format!("{id}.json")))
    }

    pub fn get(&self, id: &str) -> Result<Option<VolumeMeta>, StateError> {
        let path = self.meta_path(id)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| StateError::Decode { path, source })
    }

    /// Writes the metadata (atomically: a crash leaves the old or the new file) and makes sure
    /// the data directory exists.
    pub fn put(&self, meta: &VolumeMeta) -> Result<(), StateError> {
        let data = self.data_dir(&meta.id)?;
        std::fs::create_dir_all(&data).map_err(io_err(&data))?;
        let path = self.meta_path(&meta.id)?;
        let tmp = path.with_extension("json.tmp");
        let bytes =
            serde_json::to_vec_pretty(meta).map_err(|source| StateError::Decode { path: path.clone(), source })?;
        std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(())
    }

    /// Removes a volume's data and metadata; a volume already gone is not an error.
    pub fn delete(&self, id: &str) -> Result<(), StateError> {
        let data = self.data_dir(id)?;
        remove_dir_all_if_exists(&data)?;
        let path = self.meta_path(id)?;
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(StateError::Io { path, source: err }),
            _ => Ok(()),
        }
    }
}

pub fn remove_dir_all_if_exists(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(StateError::Io { path: path.to_path_buf(), source: err })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_round_trip_and_delete_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        let id = VolumeStore::id_for_name("pvc-1");
        assert_eq!(id, VolumeStore::id_for_name("pvc-1"));
        assert_ne!(id, VolumeStore::id_for_name("pvc-2"));
        let meta =
            VolumeMeta { id: id.clone(), name: "pvc-1".into(), capacity_bytes: 5, published_nodes: BTreeSet::new() };
        store.put(&meta).unwrap();
        assert_eq!(store.get(&id).unwrap(), Some(meta));
        assert!(store.data_dir(&id).unwrap().is_dir());
        store.delete(&id).unwrap();
        store.delete(&id).unwrap();
        assert_eq!(store.get(&id).unwrap(), None);
    }

    #[test]
    fn ids_that_are_not_plain_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        for bad in ["", "..", "a/b", "../x"] {
            assert!(matches!(store.data_dir(bad), Err(StateError::InvalidId { .. })), "{bad}");
        }
    }
}
