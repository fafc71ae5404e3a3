//! The content-addressed image store on disk. See the [module docs](super) for the layout.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageManifest};

use super::digest::{Digest, HashingWriter};
use super::layer::{self, LayerError};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store i/o on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest} is not in the image store")]
    MissingBlob { digest: Digest },
    #[error("the image index {path} is corrupt")]
    CorruptIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("blob {digest} is not a valid {what}")]
    InvalidDocument {
        digest: Digest,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("blob {digest} names an invalid digest {value:?}")]
    InvalidReference { digest: Digest, value: String },
    #[error("image config {config} lists {diff_ids} diffIDs for {layers} layers")]
    LayerCountMismatch { config: Digest, diff_ids: usize, layers: usize },
    #[error("unpacking layer {digest}")]
    Layer {
        digest: Digest,
        #[source]
        source: LayerError,
    },
    #[error("no image named {name} in the image store")]
    NotFound { name: String },
}

/// What the store knows of one image: the platform manifest it was resolved to, its config
/// (whose digest is the image ID, as containerd reports it) and its layers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// The linux/amd64 image manifest.
    pub manifest: Digest,
    /// The digest the name resolved to at the registry: an index or the manifest itself. This is
    /// what `repoDigests` and digest-pinned references use.
    pub repo_digest: Digest,
    /// The image config; its digest is the image ID.
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    /// Bytes of the config and compressed layers, as `crictl images` counts size.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    /// The (possibly compressed) blob as the registry serves it.
    pub digest: Digest,
    /// The digest of the uncompressed tar; the unpacked directory is keyed by it.
    pub diff_id: Digest,
    pub size: u64,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub bytes_freed: u64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
}

/// The image store rooted at one directory. Cheap to construct; every method is blocking
/// (file I/O): call it from `spawn_blocking` in async code. Safe to use from several threads and
/// processes at once: the index is changed under a file lock and replaced by atomic rename, and
/// garbage collection waits for pulls and imports in flight (see [`ImageStore::lease`]).
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// Keeps garbage collection away while held: content written under a lease is not yet
/// referenced by the index, and must not be collected before it is.
#[derive(Debug)]
pub struct Lease {
    _file: File,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = ImageStore { root: root.into() };
        for dir in [store.blobs_dir(), store.layers_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        Ok(store)
    }

    /// The store of a node agent whose data directory is `data_dir`.
    pub fn open_in_data_dir(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open(data_dir.join("agent").join("images"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// The unpacked layer directory for a diffID (an overlay lower directory).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }

    /// The unpacked layers of an image, bottom layer first.
    pub fn layer_paths(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record.layers.iter().map(|layer| self.layer_path(&layer.diff_id)).collect()
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A writer for a new blob. With `expected`, [`BlobWriter::commit`] refuses content of
    /// another digest and keeps nothing; without, the content's digest names it.
    pub fn blob_writer(&self, expected: Option<&Digest>) -> Result<BlobWriter, StoreError> {
        let tmp = self.tmp_path("blob");
        let file = File::create(&tmp).map_err(|source| StoreError::Io { path: tmp.clone(), source })?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            writer: Some(HashingWriter::new(BufWriter::with_capacity(256 * 1024, file))),
            expected: expected.cloned(),
        })
    }

    /// Copies `reader` into a blob, verified against `expected` when given; returns its digest
    /// and size.
    pub fn write_blob(&self, expected: Option<&Digest>, mut reader: impl Read) -> Result<(Digest, u64), StoreError> {
        let mut writer = self.blob_writer(expected)?;
        io::copy(&mut reader, &mut writer).map_err(|source| StoreError::Io { path: writer.tmp.clone(), source })?;
        writer.commit()
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        fs::read(self.blob_path(digest)).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob { digest: digest.clone() },
            _ => StoreError::Io { path: self.blob_path(digest), source },
        })
    }

    /// The parsed image config (Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts,
    /// StopSignal, ...) of an image.
    pub fn image_config(&self, record: &ImageRecord) -> Result<ImageConfiguration, StoreError> {
        let bytes = self.read_blob(&record.config)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::InvalidDocument {
            digest: record.config.clone(),
            what: "image config",
            source,
        })
    }

    /// Takes a lease that keeps garbage collection out until dropped.
    pub fn lease(&self) -> Result<Lease, StoreError> {
        let file = self.lock_file("gc.lock")?;
        file.lock_shared().map_err(|source| StoreError::Io { path: self.root.join("gc.lock"), source })?;
        Ok(Lease { _file: file })
    }

    /// Records `name` for the image whose manifest (already in the store, as are its config and
    /// layer blobs) is `manifest`, unpacking each layer not yet unpacked. `repo_digest` is what the
    /// name resolved to (an index, or `manifest` itself).
    pub fn register(&self, name: &str, manifest: &Digest, repo_digest: &Digest) -> Result<ImageRecord, StoreError> {
        let record = self.record_for(manifest, repo_digest)?;
        for layer in &record.layers {
            self.unpack_layer(layer)?;
        }
        self.update_index(|index| {
            index.images.insert(name.to_owned(), record.clone());
        })?;
        tracing::info!(image = name, manifest = %manifest, "image stored");
        Ok(record)
    }

    /// Builds the record of a stored manifest, checking its config and layer blobs are there.
    pub fn record_for(&self, manifest: &Digest, repo_digest: &Digest) -> Result<ImageRecord, StoreError> {
        let parsed: ImageManifest = serde_json::from_slice(&self.read_blob(manifest)?).map_err(|source| {
            StoreError::InvalidDocument { digest: manifest.clone(), what: "image manifest", source }
        })?;
        let to_digest = |value: String| -> Result<Digest, StoreError> {
            value.parse().map_err(|_| StoreError::InvalidReference { digest: manifest.clone(), value })
        };
        let config = to_digest(parsed.config().digest().to_string())?;
        let config_doc: ImageConfiguration = serde_json::from_slice(&self.read_blob(&config)?)
            .map_err(|source| StoreError::InvalidDocument { digest: config.clone(), what: "image config", source })?;
        let diff_ids = config_doc.rootfs().diff_ids();
        if diff_ids.len() != parsed.layers().len() {
            return Err(StoreError::LayerCountMismatch {
                config,
                diff_ids: diff_ids.len(),
                layers: parsed.layers().len(),
            });
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        let mut size = parsed.config().size();
        for (descriptor, diff_id) in parsed.layers().iter().zip(diff_ids) {
            let digest = to_digest(descriptor.digest().to_string())?;
            if !self.has_blob(&digest) {
                return Err(StoreError::MissingBlob { digest });
            }
            size += descriptor.size();
            layers.push(LayerRecord { digest, diff_id: to_digest(diff_id.clone())?, size: descriptor.size() });
        }
        Ok(ImageRecord { manifest: manifest.clone(), repo_digest: repo_digest.clone(), config, layers, size })
    }

    /// Unpacks a layer blob into its diffID directory unless that is already there. Unpacking
    /// goes to a temporary directory renamed into place, so a directory that exists is complete.
    pub fn unpack_layer(&self, layer: &LayerRecord) -> Result<PathBuf, StoreError> {
        let dest = self.layer_path(&layer.diff_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = self.tmp_path("layer");
        fs::create_dir(&tmp).map_err(|source| StoreError::Io { path: tmp.clone(), source })?;
        let result = (|| {
            let blob = File::open(self.blob_path(&layer.digest))
                .map_err(|source| StoreError::Io { path: self.blob_path(&layer.digest), source })?;
            layer::unpack(blob, &tmp, Some(&layer.diff_id))
                .map_err(|source| StoreError::Layer { digest: layer.digest.clone(), source })?;
            match fs::rename(&tmp, &dest) {
                Ok(()) => Ok(()),
                // Another pull of the same layer won the race; its copy is as good.
                Err(_) if dest.is_dir() => remove_path(&tmp),
                Err(source) => Err(StoreError::Io { path: dest.clone(), source }),
            }
        })();
        if result.is_err() {
            let _ = remove_path(&tmp);
        }
        result.map(|()| {
            tracing::debug!(diff_id = %layer.diff_id, "layer unpacked");
            dest
        })
    }

    /// The image recorded under `name` (a normalised reference).
    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        Ok(self.read_index()?.images.remove(name))
    }

    /// All names with their images, sorted by name.
    pub fn list(&self) -> Result<Vec<(String, ImageRecord)>, StoreError> {
        Ok(self.read_index()?.images.into_iter().collect())
    }

    /// Forgets `name`. Content stays until [`ImageStore::gc`].
    pub fn remove(&self, name: &str) -> Result<ImageRecord, StoreError> {
        let mut removed = None;
        self.update_index(|index| removed = index.images.remove(name))?;
        removed.ok_or_else(|| StoreError::NotFound { name: name.to_owned() })
    }

    /// Removes every blob and unpacked layer no recorded image references, and leftovers of
    /// interrupted writes. Waits for leases (pulls, imports) in flight.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let gc_lock = self.lock_file("gc.lock")?;
        gc_lock.lock().map_err(|source| StoreError::Io { path: self.root.join("gc.lock"), source })?;
        let index = self.read_index()?;
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for record in index.images.values() {
            blobs.extend([record.manifest.hex().to_owned(), record.repo_digest.hex().to_owned()]);
            blobs.insert(record.config.hex().to_owned());
            for layer in &record.layers {
                blobs.insert(layer.digest.hex().to_owned());
                layers.insert(layer.diff_id.hex().to_owned());
            }
        }
        let mut report = GcReport::default();
        for (dir, keep, is_layer) in [(self.blobs_dir(), &blobs, false), (self.layers_dir(), &layers, true)] {
            for entry in read_dir(&dir)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let path = entry.path();
                report.bytes_freed += disk_usage(&path);
                remove_path(&path)?;
                if is_layer {
                    report.layers_removed += 1;
                } else {
                    report.blobs_removed += 1;
                }
            }
        }
        // Nobody writes without a lease, and we hold them all off: whatever is here is dead.
        for entry in read_dir(&self.tmp_dir())? {
            remove_path(&entry.path())?;
        }
        tracing::info!(
            blobs = report.blobs_removed,
            layers = report.layers_removed,
            bytes = report.bytes_freed,
            "image garbage collection done"
        );
        Ok(report)
    }

    fn read_index(&self) -> Result<Index, StoreError> {
        let lock = self.lock_file("images.lock")?;
        lock.lock_shared().map_err(|source| StoreError::Io { path: self.root.join("images.lock"), source })?;
        self.read_index_unlocked()
    }

    fn read_index_unlocked(&self) -> Result<Index, StoreError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptIndex { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Read-modify-write of the index under an exclusive lock, replaced by an atomic rename so
    /// that readers never see half a file.
    fn update_index(&self, change: impl FnOnce(&mut Index)) -> Result<(), StoreError> {
        let lock = self.lock_file("images.lock")?;
        lock.lock().map_err(|source| StoreError::Io { path: self.root.join("images.lock"), source })?;
        let mut index = self.read_index_unlocked()?;
        change(&mut index);
        // Beside the index, not in tmp/: index writes take no lease, so gc must not see them.
        let tmp = self.root.join(format!("images.json.{}-{:016x}", std::process::id(), fastrand::u64(..)));
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            serde_json::to_writer_pretty(&mut file, &index)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&tmp, self.index_path())
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            StoreError::Io { path: self.index_path(), source }
        })
    }

    fn lock_file(&self, name: &str) -> Result<File, StoreError> {
        let path = self.root.join(name);
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io { path, source })
    }

    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        self.tmp_dir().join(format!("{what}-{}-{:016x}", std::process::id(), fastrand::u64(..)))
    }
}

/// A blob being written; see [`ImageStore::blob_writer`]. Dropped without `commit`, it leaves
/// nothing behind.
pub struct BlobWriter {
    store: ImageStore,
    tmp: PathBuf,
    writer: Option<HashingWriter<BufWriter<File>>>,
    expected: Option<Digest>,
}

impl BlobWriter {
    /// Verifies the digest and moves the blob into place; returns its digest and size.
    pub fn commit(mut self) -> Result<(Digest, u64), StoreError> {
        let Some(writer) = self.writer.take() else {
            unreachable!("the writer is only taken by commit, which consumes self")
        };
        let (buffered, actual, size) = writer.finish();
        let file =
            buffered.into_inner().map_err(|e| StoreError::Io { path: self.tmp.clone(), source: e.into_error() })?;
        file.sync_all().map_err(|source| StoreError::Io { path: self.tmp.clone(), source })?;
        drop(file);
        if let Some(expected) = &self.expected
            && *expected != actual
        {
            return Err(StoreError::DigestMismatch { expected: expected.clone(), actual });
        }
        let dest = self.store.blob_path(&actual);
        fs::rename(&self.tmp, &dest).map_err(|source| StoreError::Io { path: dest, source })?;
        Ok((actual, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().map_or(Ok(0), |w| w.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().map_or(Ok(()), |w| w.flush())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful commit the file has been renamed away and this finds nothing.
        let _ = fs::remove_file(&self.tmp);
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    let entries = fs::read_dir(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
    entries.collect::<Result<Vec<_>, _>>().map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })
}

fn remove_path(path: &Path) -> Result<(), StoreError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|source| StoreError::Io { path: path.to_path_buf(), source })
}

/// Bytes under `path` (apparent sizes of regular files; hard links counted once per name).
fn disk_usage(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            fs::read_dir(path).map(|entries| entries.flatten().map(|e| disk_usage(&e.path())).sum()).unwrap_or(0)
        }
        Ok(meta) if meta.is_file() => meta.len(),
        _ => 0,
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
