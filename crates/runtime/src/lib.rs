//! The container runtime of the node agent: it owns images, container root filesystems, the
//! per-container shim and cgroups, behind a CRI-shaped `Runtime` trait so that the kubelet can
//! drive either this built-in runtime or an external CRI runtime (containerd) the same way.
//!
//! Today it holds the image side only ([`image`]): a content-addressed OCI image store under the
//! agent's data directory, pulls from OCI distribution registries, and imports of OCI layouts
//! and `docker save` archives. Root filesystems (overlayfs over the unpacked layers), the shim
//! (the `tug` binary re-executed per container, never a fork of the async process) and cgroups
//! come next, as modules beside `image`.
//!
//! [`remote`] is the other implementation of the same traits: a CRI v1 gRPC client driving an
//! external runtime (containerd) on its unix socket.
//!
//! This crate must not talk to the Kubernetes API or know about Pods: it is driven by the
//! kubelet through plain Rust types, as a CRI runtime is driven through the CRI.

pub mod builtin;
pub mod cgroups;
pub mod cri;
pub mod image;
pub mod remote;
pub mod rootfs;
pub mod shim;
pub mod spec;

use image::{Credentials, PullError, StoreError};

/// CRI's image service (`PullImage`, `ListImages`, `ImageStatus`, `RemoveImage`) in Rust types:
/// what the kubelet needs of a runtime's images, whichever runtime it drives. The container
/// half of the CRI (`Runtime`: sandboxes and containers) joins it with the built-in runtime.
#[async_trait::async_trait]
pub trait ImageService: Send + Sync {
    /// Pulls `image`, trying each of `credentials` in turn (as the kubelet does with a pod's
    /// pull secrets), anonymously when there are none. Returns the image pulled.
    async fn pull_image(&self, image: &str, credentials: &[Credentials]) -> Result<Image, ImageServiceError>;
    async fn list_images(&self) -> Result<Vec<Image>, ImageServiceError>;
    /// The image a reference or image ID names, if present.
    async fn image_status(&self, image: &str) -> Result<Option<Image>, ImageServiceError>;
    /// Removes the image a reference or image ID names, with all its names, and its content
    /// where no other image shares it. Removing an absent image is not an error (as in the CRI).
    async fn remove_image(&self, image: &str) -> Result<(), ImageServiceError>;
}

/// An image as the CRI describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image ID: the config digest (`sha256:...`).
    pub id: String,
    /// Normalised `repo:tag` names.
    pub repo_tags: Vec<String>,
    /// `repo@sha256:...` of what each name resolved to at its registry.
    pub repo_digests: Vec<String>,
    pub size: u64,
    /// The image config's `User` (`name`, `uid`, `uid:gid`...), as CRI's image status reports
    /// it for `runAsNonRoot` checks. Filled by `image_status` only (listing leaves it `None`).
    pub user: Option<String>,
}

/// Errors of an [`ImageService`].
#[derive(Debug, thiserror::Error)]
pub enum ImageServiceError {
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image store task failed")]
    Task(#[from] tokio::task::JoinError),
    /// A call to an external CRI runtime's image service failed ([`remote`]).
    #[error("{operation}: {}", source.message())]
    Rpc {
        operation: &'static str,
        #[source]
        source: Box<tonic::Status>,
    },
}

/// An error and its sources joined as one message, as Go's wrapped errors read (libcontainer
/// nests why a start failed several levels down; a pull failure's cause is in its sources).
/// A source already quoted by the message before it is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = e.source();
    }
    message
}
