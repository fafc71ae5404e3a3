//! Pulls from OCI distribution registries (Docker Hub, a local `docker-registry`, ...) into the
//! [`ImageStore`]. The HTTP side (the `WWW-Authenticate` challenge flow for basic and bearer-token
//! auth, token caching, redirects to blob storage) is `oci-client`'s; this module resolves
//! indexes to linux/amd64, verifies every blob against its digest while storing it, unpacks the
//! layers and records the name.
//!
//! Transport: HTTPS with the platform's roots plus any extra CA given; plain HTTP only for
//! registries on loopback addresses, tried after HTTPS fails to connect, as Docker treats
//! `localhost` registries.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::Client;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_spec::image::ImageIndex;
use tokio::sync::mpsc;

use super::auth::Credentials;
use super::digest::Digest;
use super::media_type;
use super::reference::{self, Reference, ReferenceError};
use super::store::{ImageRecord, ImageStore, StoreError};

/// Errors of a pull, told apart as the kubelet needs them to word `ErrImagePull`.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{reference}: not found")]
    NotFound {
        reference: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("{reference}: unauthorized: the registry refused the credentials (or their absence)")]
    Unauthorized {
        reference: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("{reference}: cannot reach registry {registry}")]
    Network {
        reference: String,
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("{reference}: content does not match its digest")]
    DigestMismatch {
        reference: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{reference}: unsupported digest {digest:?}: only sha256 is supported")]
    UnsupportedDigest { reference: String, digest: String },
    #[error("{reference}: no linux/amd64 image in the index")]
    NoMatchingPlatform { reference: String },
    #[error("{reference}: unsupported manifest (media type {media_type:?})")]
    UnsupportedManifest { reference: String, media_type: String },
    #[error("{reference}: registry error")]
    Registry {
        reference: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("{reference}: invalid CA certificate")]
    InvalidCa { reference: String },
    #[error("{reference}: storing the image")]
    Store {
        reference: String,
        #[source]
        source: StoreError,
    },
    #[error("{reference}: storage task failed")]
    Task {
        reference: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Transport settings of a [`Puller`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Extra CA certificates (PEM) trusted besides the platform's roots.
    pub extra_ca_pem: Vec<Vec<u8>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            extra_ca_pem: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// The result of a pull.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The normalised name the image is stored under.
    pub name: String,
    /// `registry/repository@digest` of what the name resolved to.
    pub repo_digest: String,
    pub record: ImageRecord,
}

/// Pulls images into a store.
#[derive(Debug, Clone)]
pub struct Puller {
    store: ImageStore,
    options: PullOptions,
}

/// Blobs of one image downloaded at once.
const PARALLEL_DOWNLOADS: usize = 3;

const MANIFEST_MEDIA_TYPES: &[&str] =
    &[media_type::OCI_INDEX, media_type::DOCKER_MANIFEST_LIST, media_type::OCI_MANIFEST, media_type::DOCKER_MANIFEST];

impl Puller {
    pub fn new(store: ImageStore, options: PullOptions) -> Self {
        // reqwest is built without a crypto provider so that only ring (kube's) is linked; make
        // sure it is the process default. Failing means one is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Puller { store, options }
    }

    /// Pulls `reference` with `credentials` (None: anonymous) and records it in the store.
    #[tracing::instrument(skip_all, fields(image = reference))]
    pub async fn pull(&self, reference: &str, credentials: Option<&Credentials>) -> Result<PulledImage, PullError> {
        let parsed = reference::parse(reference)?;
        let name = reference::normalized_name(&parsed);
        // Only sha256 is stored (and only sha256 is what registries serve in practice).
        let pinned: Option<Digest> = match parsed.digest() {
            Some(digest) => Some(
                digest
                    .parse()
                    .map_err(|_| PullError::UnsupportedDigest { reference: name.clone(), digest: digest.into() })?,
            ),
            None => None,
        };
        let auth = credentials.map_or(RegistryAuth::Anonymous, Credentials::to_registry_auth);
        let store = self.store.clone();
        let _lease = self.blocking(&name, move || store.lease()).await?;

        let (client, top_bytes) = self.fetch_top_manifest(&parsed, &auth, &name).await?;
        let top_digest = Digest::of(&top_bytes);
        if let Some(pinned) = &pinned
            && *pinned != top_digest
        {
            let source = StoreError::DigestMismatch { expected: pinned.clone(), actual: top_digest };
            return Err(PullError::DigestMismatch { reference: name, source: Box::new(source) });
        }
        self.store_bytes(&name, &top_digest, top_bytes.clone()).await?;

        let manifest_digest = match document_media_type(&top_bytes).as_deref() {
            Some(mt) if media_type::is_index(mt) => {
                let index: ImageIndex = serde_json::from_slice(&top_bytes)
                    .map_err(|_| PullError::UnsupportedManifest { reference: name.clone(), media_type: mt.into() })?;
                let chosen = super::select_platform(&index)
                    .ok_or_else(|| PullError::NoMatchingPlatform { reference: name.clone() })?;
                let chosen: Digest = chosen
                    .parse()
                    .map_err(|_| PullError::UnsupportedManifest { reference: name.clone(), media_type: mt.into() })?;
                let by_digest = parsed.clone_with_digest(chosen.to_string());
                let (bytes, _) = client
                    .pull_manifest_raw(&by_digest, &auth, MANIFEST_MEDIA_TYPES)
                    .await
                    .map_err(|e| classify(&name, &parsed, e))?;
                self.store_bytes(&name, &chosen, bytes.clone()).await?;
                match document_media_type(&bytes).as_deref() {
                    Some(media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST) => {}
                    other => {
                        return Err(PullError::UnsupportedManifest {
                            reference: name,
                            media_type: other.unwrap_or_default().into(),
                        });
                    }
                }
                chosen
            }
            Some(media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST) => top_digest.clone(),
            other => {
                return Err(PullError::UnsupportedManifest {
                    reference: name,
                    media_type: other.unwrap_or_default().into(),
                });
            }
        };

        // Config and layers: fetch what the store lacks, each verified against its digest.
        let manifest: oci_spec::image::ImageManifest =
            serde_json::from_slice(&self.read_blob(&name, &manifest_digest).await?).map_err(|_| {
                PullError::UnsupportedManifest { reference: name.clone(), media_type: "unparseable".into() }
            })?;
        let mut wanted = vec![manifest.config().digest().to_string()];
        wanted.extend(manifest.layers().iter().map(|layer| layer.digest().to_string()));
        let mut missing = Vec::new();
        for digest in wanted {
            let digest: Digest = digest.parse().map_err(|_| PullError::UnsupportedManifest {
                reference: name.clone(),
                media_type: "bad digest".into(),
            })?;
            if !self.store.has_blob(&digest) && !missing.contains(&digest) {
                missing.push(digest);
            }
        }
        // A few blobs at a time, as Docker and containerd download layers.
        let (client, parsed_ref, name_ref) = (&client, &parsed, &name);
        // Owned digests: a closure over borrowed ones trips the Send check of async-trait callers.
        futures::stream::iter(
            missing
                .into_iter()
                .map(|digest| async move { self.fetch_blob(client, parsed_ref, name_ref, &digest).await }),
        )
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect::<Vec<()>>()
        .await?;

        let store = self.store.clone();
        let (record_name, manifest, repo) = (name.clone(), manifest_digest.clone(), top_digest.clone());
        let record = self.blocking(&name, move || store.register(&record_name, &manifest, &repo)).await?;
        Ok(PulledImage { repo_digest: reference::repo_digest(&parsed, top_digest.as_str()), name, record })
    }

    /// Fetches the manifest or index a reference names, over HTTPS, or over plain HTTP when the
    /// registry is on a loopback address and HTTPS could not connect.
    async fn fetch_top_manifest(
        &self,
        parsed: &Reference,
        auth: &RegistryAuth,
        name: &str,
    ) -> Result<(Client, bytes::Bytes), PullError> {
        let https = self.client(name, ClientProtocol::Https)?;
        match https.pull_manifest_raw(parsed, auth, MANIFEST_MEDIA_TYPES).await {
            Ok((bytes, _)) => Ok((https, bytes)),
            Err(https_error @ OciDistributionError::RequestError(_))
                if reference::is_loopback_registry(parsed.registry()) =>
            {
                tracing::debug!(registry = parsed.registry(), error = %https_error, "HTTPS failed; trying plain HTTP on loopback");
                let http = self.client(name, ClientProtocol::Http)?;
                match http.pull_manifest_raw(parsed, auth, MANIFEST_MEDIA_TYPES).await {
                    Ok((bytes, _)) => Ok((http, bytes)),
                    // Not an HTTP registry either (nothing listening, or one that speaks only
                    // TLS): the HTTPS failure, a refused connection or an untrusted certificate,
                    // is the one that explains it.
                    Err(http_error) => match classify(name, parsed, http_error) {
                        PullError::Network { .. } | PullError::Registry { .. } => {
                            Err(classify(name, parsed, https_error))
                        }
                        answered => Err(answered),
                    },
                }
            }
            Err(e) => Err(classify(name, parsed, e)),
        }
    }

    fn client(&self, name: &str, protocol: ClientProtocol) -> Result<Client, PullError> {
        let mut extra = Vec::new();
        for pem in &self.options.extra_ca_pem {
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(PullError::InvalidCa { reference: name.to_owned() });
            }
            extra.push(Certificate { encoding: CertificateEncoding::Pem, data: pem.clone() });
        }
        Ok(Client::new(ClientConfig {
            protocol,
            extra_root_certificates: extra,
            // Index resolution is ours (select_platform), on raw manifests.
            platform_resolver: None,
            connect_timeout: Some(self.options.connect_timeout),
            read_timeout: Some(self.options.read_timeout),
            user_agent: concat!("tugboat/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        }))
    }

    /// Streams one blob into the store; the store's writer checks the digest before keeping it.
    async fn fetch_blob(
        &self,
        client: &Client,
        parsed: &Reference,
        name: &str,
        digest: &Digest,
    ) -> Result<(), PullError> {
        let mut stream =
            client.pull_blob_stream(parsed, digest.as_str()).await.map_err(|e| classify(name, parsed, e))?;
        let writer = self.store.blob_writer(Some(digest)).map_err(|source| store_error(name, source))?;
        // File writes happen on a blocking thread, fed chunk by chunk.
        let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(16);
        let write_task = tokio::task::spawn_blocking(move || -> Result<(Digest, u64), StoreError> {
            use std::io::Write as _;
            let mut writer = writer;
            while let Some(chunk) = rx.blocking_recv() {
                writer.write_all(&chunk).map_err(|source| StoreError::Io { path: "blob".into(), source })?;
            }
            writer.commit()
        });
        let mut network_error = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    network_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        if let Some(e) = network_error {
            write_task.abort();
            // oci-client checks the digest too, and reports a mismatch as the stream's last error.
            if e.get_ref().is_some_and(|inner| inner.is::<oci_client::errors::DigestError>()) {
                return Err(PullError::DigestMismatch { reference: name.to_owned(), source: Box::new(e) });
            }
            return Err(PullError::Network {
                reference: name.to_owned(),
                registry: parsed.registry().to_owned(),
                source: Box::new(OciDistributionError::IoError(e)),
            });
        }
        let result = write_task.await.map_err(|source| PullError::Task { reference: name.to_owned(), source })?;
        result.map(|(_, size)| tracing::debug!(digest = %digest, size, "blob stored")).map_err(|e| store_error(name, e))
    }

    async fn store_bytes(&self, name: &str, digest: &Digest, bytes: bytes::Bytes) -> Result<(), PullError> {
        let store = self.store.clone();
        let digest = digest.clone();
        self.blocking(name, move || store.write_blob(Some(&digest), &bytes[..]).map(|_| ())).await
    }

    async fn read_blob(&self, name: &str, digest: &Digest) -> Result<Vec<u8>, PullError> {
        let store = self.store.clone();
        let digest = digest.clone();
        self.blocking(name, move || store.read_blob(&digest)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, PullError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|source| PullError::Task { reference: name.to_owned(), source })?
            .map_err(|source| store_error(name, source))
    }
}

fn store_error(name: &str, source: StoreError) -> PullError {
    match source {
        StoreError::DigestMismatch { .. } => {
            PullError::DigestMismatch { reference: name.to_owned(), source: Box::new(source) }
        }
        source => PullError::Store { reference: name.to_owned(), source },
    }
}

/// The `mediaType` of a manifest or index; older documents may omit it, then the shape tells.
fn document_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = value.get("mediaType").and_then(|v| v.as_str()) {
        return Some(mt.to_owned());
    }
    if value.get("manifests").is_some() {
        Some(media_type::OCI_INDEX.to_owned())
    } else if value.get("layers").is_some() {
        Some(media_type::OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

/// Sorts a client error into the kinds the kubelet reports differently.
fn classify(name: &str, parsed: &Reference, error: OciDistributionError) -> PullError {
    let reference = name.to_owned();
    let source = Box::new(error);
    match source.as_ref() {
        OciDistributionError::ImageManifestNotFoundError(_) => PullError::NotFound { reference, source },
        OciDistributionError::AuthenticationFailure(_) | OciDistributionError::UnauthorizedError { .. } => {
            PullError::Unauthorized { reference, source }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                PullError::Unauthorized { reference, source }
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                PullError::NotFound { reference, source }
            } else {
                PullError::Registry { reference, source }
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => PullError::NotFound { reference, source },
        OciDistributionError::ServerError { code: 401 | 403, .. } => PullError::Unauthorized { reference, source },
        OciDistributionError::DigestError(_) => PullError::DigestMismatch { reference, source },
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
            PullError::Network { reference, registry: parsed.registry().to_owned(), source }
        }
        _ => PullError::Registry { reference, source },
    }
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
