//! Images: the content-addressed OCI image store, pulls from OCI distribution registries,
//! imports of OCI layouts and `docker save` archives, and garbage collection.
//!
//! # On-disk layout
//!
//! The node agent keeps its images under `DATA_DIR/agent/images/`:
//!
//! ```text
//! blobs/sha256/<hex>          every blob by digest: manifests, indexes, configs, layer blobs;
//!                             written to tmp/ while hashed, renamed here only if the digest is right
//! layers/sha256/<diffID hex>  each layer unpacked once, keyed by its diffID (the digest of the
//!                             uncompressed tar), with overlay whiteouts: an overlayfs lowerdir
//! images.json                 names -> image: {"images": {"docker.io/library/busybox:latest":
//!                             {"manifest", "repo_digest", "config", "layers": [{"digest",
//!                             "diff_id", "size"}], "size"}}}; replaced by atomic rename of
//!                             images.json.<pid>-<random> written beside it
//! images.lock                 flock taken around reads (shared) and changes (exclusive) of images.json
//! gc.lock                     flock: pulls and imports hold it shared, garbage collection exclusive
//! tmp/                        in-progress blobs and layers (same filesystem, so renames are atomic)
//! ```
//!
//! Names are normalised references (`busybox` is stored as `docker.io/library/busybox:latest`,
//! a digest-pinned pull as `REPO@sha256:...`). An image is the linux/amd64 manifest a name
//! resolved to; its image ID is its config digest, as containerd reports it.

pub mod auth;
pub mod digest;
pub mod import;
pub mod layer;
pub mod pull;
pub mod reference;
pub mod service;
pub mod store;

pub use auth::{AuthError, Credentials, DockerConfig};
pub use digest::Digest;
pub use import::{ImportError, import_path};
pub use pull::{PullError, PullOptions, PulledImage, Puller};
pub use reference::{Reference, normalized_name, parse as parse_reference};
pub use service::BuiltinImageService;
pub use store::{GcReport, ImageRecord, ImageStore, LayerRecord, StoreError};

/// Media types this crate reads and writes.
pub mod media_type {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// Whether a manifest document of this media type lists other manifests.
    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
    }
}

/// Picks the linux/amd64 entry of an image index (nodes run linux/amd64 only for now), and
/// returns its manifest digest. Entries without a platform are attestations and the like.
pub fn select_platform(index: &oci_spec::image::ImageIndex) -> Option<String> {
    use oci_spec::image::{Arch, Os};
    index
        .manifests()
        .iter()
        .find(|entry| {
            entry.platform().as_ref().is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
        })
        .map(|entry| entry.digest().to_string())
}

#[cfg(test)]
pub(crate) mod testing;
