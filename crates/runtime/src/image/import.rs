//! `tug images import`: images from an OCI image layout (a directory, or a tar of one, as
//! `skopeo copy ... oci-archive:` writes) or a `docker save` archive, into the [`ImageStore`].
//! Every blob is verified against the digest the layout names; docker archives name none, so
//! their blobs are named by their content and a manifest is written for them.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest};

use super::digest::Digest;
use super::layer::Compression;
use super::media_type;
use super::reference::{self, ReferenceError};
use super::store::{ImageRecord, ImageStore, StoreError};

/// Annotation containerd and `docker save` put on index entries: the full image name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI layout's own name annotation: a tag, or (from some tools) a full reference.
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is neither an OCI image layout nor a docker-archive (no index.json or manifest.json)")]
    UnknownFormat { path: PathBuf },
    #[error("{path} is not a valid {what}")]
    InvalidDocument {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} names the file {member:?}, which is outside the archive")]
    UnsafeMember { path: PathBuf, member: String },
    #[error("an image in {path} has no name: pass one with --name")]
    NoName { path: PathBuf },
    #[error("an index in {path} has no linux/amd64 image")]
    NoMatchingPlatform { path: PathBuf },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Imports every image in the layout or archive at `path`. `name` overrides the names the
/// archive carries (and is required when it carries none). Returns the names recorded.
pub fn import_path(
    store: &ImageStore,
    path: &Path,
    name: Option<&str>,
) -> Result<Vec<(String, ImageRecord)>, ImportError> {
    let _lease = store.lease()?;
    let meta = fs::metadata(path).map_err(|source| ImportError::Io { path: path.to_path_buf(), source })?;
    if meta.is_dir() {
        return import_dir(store, path, name);
    }
    let scratch = store.tmp_path("import");
    let result = extract(path, &scratch).and_then(|()| import_dir(store, &scratch, name));
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Unpacks a (possibly gzip-compressed) tar. The tar crate's `unpack` keeps every entry inside
/// `dest`; these archives hold only plain files, so nothing else matters here.
fn extract(archive: &Path, dest: &Path) -> Result<(), ImportError> {
    let io_error = |source| ImportError::Io { path: archive.to_path_buf(), source };
    let file = File::open(archive).map_err(io_error)?;
    let mut reader = BufReader::new(file);
    let compressed = Compression::detect(reader.fill_buf().map_err(io_error)?) == Compression::Gzip;
    let stream: Box<dyn io::Read> =
        if compressed { Box::new(flate2::read::MultiGzDecoder::new(reader)) } else { Box::new(reader) };
    fs::create_dir_all(dest).map_err(|source| ImportError::Io { path: dest.to_path_buf(), source })?;
    tar::Archive::new(stream).unpack(dest).map_err(io_error)
}

fn import_dir(store: &ImageStore, dir: &Path, name: Option<&str>) -> Result<Vec<(String, ImageRecord)>, ImportError> {
    if dir.join("oci-layout").is_file() && dir.join("index.json").is_file() {
        import_oci_layout(store, dir, name)
    } else if dir.join("manifest.json").is_file() {
        import_docker_archive(store, dir, name)
    } else {
        Err(ImportError::UnknownFormat { path: dir.to_path_buf() })
    }
}

fn import_oci_layout(
    store: &ImageStore,
    dir: &Path,
    name_override: Option<&str>,
) -> Result<Vec<(String, ImageRecord)>, ImportError> {
    let index_path = dir.join("index.json");
    let index: ImageIndex = read_json(&index_path, "OCI image index")?;
    let mut imported = Vec::new();
    for entry in index.manifests() {
        let annotations = entry.annotations().clone().unwrap_or_default();
        let name = match (name_override, annotations.get(CONTAINERD_NAME), annotations.get(OCI_REF_NAME)) {
            (Some(name), _, _) => reference::normalized_name(&reference::parse(name)?),
            (None, Some(full), _) => reference::normalized_name(&reference::parse(full)?),
            // A ref.name with a slash is a full reference; a bare tag says nothing of the repository.
            (None, None, Some(ref_name)) if ref_name.contains('/') => {
                reference::normalized_name(&reference::parse(ref_name)?)
            }
            _ => return Err(ImportError::NoName { path: dir.to_path_buf() }),
        };
        let top = parse_digest(dir, entry.digest().as_ref())?;
        copy_blob(store, dir, &top)?;
        let manifest = if media_type::is_index(entry.media_type().as_ref()) {
            let nested: ImageIndex = read_json(&blob_file(dir, &top), "OCI image index")?;
            let chosen = super::select_platform(&nested)
                .ok_or_else(|| ImportError::NoMatchingPlatform { path: dir.to_path_buf() })?;
            let chosen = parse_digest(dir, &chosen)?;
            copy_blob(store, dir, &chosen)?;
            chosen
        } else {
            top.clone()
        };
        let parsed: ImageManifest = read_json(&blob_file(dir, &manifest), "OCI image manifest")?;
        copy_blob(store, dir, &parse_digest(dir, parsed.config().digest().as_ref())?)?;
        for layer in parsed.layers() {
            copy_blob(store, dir, &parse_digest(dir, layer.digest().as_ref())?)?;
        }
        let record = store.register(&name, &manifest, &top)?;
        imported.push((name, record));
    }
    Ok(imported)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn import_docker_archive(
    store: &ImageStore,
    dir: &Path,
    name_override: Option<&str>,
) -> Result<Vec<(String, ImageRecord)>, ImportError> {
    let entries: Vec<DockerArchiveEntry> = read_json(&dir.join("manifest.json"), "docker-archive manifest.json")?;
    let mut imported = Vec::new();
    for entry in entries {
        let names: Vec<String> = match name_override {
            Some(name) => vec![name.to_owned()],
            None => entry.repo_tags.clone().unwrap_or_default(),
        };
        if names.is_empty() {
            return Err(ImportError::NoName { path: dir.to_path_buf() });
        }
        let config_path = member(dir, &entry.config)?;
        let (config, config_size) = store.write_blob(None, open(&config_path)?)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let layer_path = member(dir, layer)?;
            let mut reader = BufReader::new(open(&layer_path)?);
            let head = reader.fill_buf().map_err(|source| ImportError::Io { path: layer_path.clone(), source })?;
            let media_type = match Compression::detect(head) {
                Compression::Gzip => media_type::DOCKER_LAYER_GZIP,
                _ => media_type::DOCKER_LAYER_TAR,
            };
            let (digest, size) = store.write_blob(None, reader)?;
            layers.push(serde_json::json!({"mediaType": media_type, "size": size, "digest": digest}));
        }
        // docker save carries no manifest; write the Docker v2 schema 2 one a registry would serve.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::DOCKER_MANIFEST,
            "config": {"mediaType": media_type::DOCKER_CONFIG, "size": config_size, "digest": config},
            "layers": layers,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        let (manifest, _) = store.write_blob(None, &manifest_bytes[..])?;
        for name in names {
            let name = reference::normalized_name(&reference::parse(&name)?);
            let record = store.register(&name, &manifest, &manifest)?;
            imported.push((name, record));
        }
    }
    Ok(imported)
}

fn parse_digest(dir: &Path, value: &str) -> Result<Digest, ImportError> {
    value.parse().map_err(|_| ImportError::UnsafeMember { path: dir.to_path_buf(), member: value.to_owned() })
}

fn blob_file(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

/// Copies a blob of the layout into the store, which checks it has the digest it is filed under.
fn copy_blob(store: &ImageStore, dir: &Path, digest: &Digest) -> Result<(), ImportError> {
    if !store.has_blob(digest) {
        store.write_blob(Some(digest), open(&blob_file(dir, digest))?)?;
    }
    Ok(())
}

/// A file named inside a docker archive's manifest.json: relative, no `..`.
fn member(dir: &Path, name: &str) -> Result<PathBuf, ImportError> {
    let relative = Path::new(name);
    if name.is_empty() || !relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(ImportError::UnsafeMember { path: dir.to_path_buf(), member: name.to_owned() });
    }
    Ok(dir.join(relative))
}

fn open(path: &Path) -> Result<File, ImportError> {
    File::open(path).map_err(|source| ImportError::Io { path: path.to_path_buf(), source })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, ImportError> {
    let bytes = fs::read(path).map_err(|source| ImportError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| ImportError::InvalidDocument {
        path: path.to_path_buf(),
        what,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testing::TestImage;

    fn oci_layout(image: &TestImage, annotations: serde_json::Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        for blob in image.blobs() {
            fs::write(blobs.join(Digest::of(blob).hex()), blob).unwrap();
        }
        fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": media_type::OCI_MANIFEST, "digest": image.manifest_digest(),
            "size": image.manifest.len(), "annotations": annotations}]});
        fs::write(dir.path().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        dir
    }

    fn store() -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn oci_layout_with_a_full_name_imports_under_it() {
        let image = TestImage::new(&[("etc/os-release", "tug")], &["sh"]);
        let layout = oci_layout(&image, serde_json::json!({CONTAINERD_NAME: "example.test/os:1", OCI_REF_NAME: "1"}));
        let (_d, store) = store();
        let imported = import_path(&store, layout.path(), None).unwrap();
        assert_eq!(imported[0].0, "example.test/os:1");
        let layers = store.layer_paths(&imported[0].1);
        assert_eq!(fs::read_to_string(layers[0].join("etc/os-release")).unwrap(), "tug");
    }

    #[test]
    fn a_bare_tag_needs_a_name_and_a_name_overrides() {
        let image = TestImage::new(&[("a", "b")], &["sh"]);
        let layout = oci_layout(&image, serde_json::json!({OCI_REF_NAME: "1"}));
        let (_d, store) = store();
        assert!(matches!(import_path(&store, layout.path(), None), Err(ImportError::NoName { .. })));
        let imported = import_path(&store, layout.path(), Some("mine")).unwrap();
        assert_eq!(imported[0].0, "docker.io/library/mine:latest");
    }

    #[test]
    fn a_tampered_blob_in_a_layout_is_refused() {
        let image = TestImage::new(&[("a", "b")], &["sh"]);
        let layout = oci_layout(&image, serde_json::json!({CONTAINERD_NAME: "example.test/t:1"}));
        fs::write(layout.path().join("blobs/sha256").join(Digest::of(&image.layer).hex()), b"evil").unwrap();
        let (_d, store) = store();
        let result = import_path(&store, layout.path(), None);
        assert!(matches!(result, Err(ImportError::Store(StoreError::DigestMismatch { .. }))), "{result:?}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn docker_archive_tar_imports_with_its_repo_tags() {
        let image = TestImage::new(&[("bin/true", "x")], &["true"]);
        let mut gz = flate2::read::GzDecoder::new(&image.layer[..]);
        let mut layer_tar = Vec::new();
        io::Read::read_to_end(&mut gz, &mut layer_tar).unwrap();
        let manifest = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["busybox:1", "example.test/bb:1"],
                                           "Layers": ["abc/layer.tar"]}]);
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in [
            ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
            ("cfg.json", image.config.clone()),
            ("abc/layer.tar", layer_tar),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, &data[..]).unwrap();
        }
        let archive = tempfile::NamedTempFile::new().unwrap();
        fs::write(archive.path(), builder.into_inner().unwrap()).unwrap();
        let (_d, store) = store();
        let imported = import_path(&store, archive.path(), None).unwrap();
        let names: Vec<&str> = imported.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["docker.io/library/busybox:1", "example.test/bb:1"]);
        assert_eq!(imported[0].1.config, Digest::of(&image.config));
        assert_eq!(
            store.image_config(&imported[0].1).unwrap().config().as_ref().unwrap().cmd().as_deref(),
            Some(&["true".to_owned()][..])
        );
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn docker_archive_members_outside_the_archive_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!([{"Config": "../../etc/passwd", "RepoTags": ["x:1"], "Layers": []}]);
        fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
        let (_d, store) = store();
        assert!(matches!(import_path(&store, dir.path(), None), Err(ImportError::UnsafeMember { .. })));
    }
}
