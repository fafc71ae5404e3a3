//! Pulls against an in-process fake registry speaking plain HTTP on 127.0.0.1, which also
//! exercises the loopback fallback from HTTPS. It asks for a bearer token the way Docker Hub
//! does (`WWW-Authenticate: Bearer realm=...`), and can serve a blob whose bytes do not match
//! its digest.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

use super::*;
use crate::image::testing::TestImage;

const TOKEN: &str = "fake-registry-token";
const REPO: &str = "tugboat.test/app";

#[derive(Default)]
struct Registry {
    /// Manifests by tag or digest: (media type, body).
    manifests: HashMap<String, (String, Vec<u8>)>,
    /// Blob bodies by digest (what is served, right or wrong).
    blobs: HashMap<String, Vec<u8>>,
    /// user:password the token endpoint accepts; None: no auth at all.
    login: Option<String>,
    token_requests: AtomicUsize,
    address: Mutex<Option<SocketAddr>>,
}

impl Registry {
    fn with_image(image: &TestImage, login: Option<&str>) -> Self {
        let mut registry = Registry { login: login.map(str::to_owned), ..Default::default() };
        let manifest = (media_type::OCI_MANIFEST.to_owned(), image.manifest.clone());
        registry.manifests.insert("1".into(), manifest.clone());
        registry.manifests.insert(image.manifest_digest().to_string(), manifest);
        for blob in [&image.layer, &image.config] {
            registry.blobs.insert(Digest::of(blob).to_string(), blob.clone());
        }
        registry
    }

    fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if path == "/token" {
            self.token_requests.fetch_add(1, Ordering::SeqCst);
            let expected = self
                .login
                .as_deref()
                .map(|login| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(login)));
            return if expected.as_deref() == Some(authorization) {
                json(StatusCode::OK, format!(r#"{{"token": "{TOKEN}", "expires_in": 300}}"#))
            } else {
                json(StatusCode::UNAUTHORIZED, r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad login"}]}"#.into())
            };
        }
        if self.login.is_some() && authorization != format!("Bearer {TOKEN}") {
            let address = self.address.lock().unwrap().unwrap();
            let mut response =
                json(StatusCode::UNAUTHORIZED, r#"{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}"#.into());
            response.headers_mut().insert(
                "www-authenticate",
                format!(r#"Bearer realm="http://{address}/token",service="fake-registry""#).parse().unwrap(),
            );
            return response;
        }
        if path == "/v2/" {
            return json(StatusCode::OK, "{}".into());
        }
        let found = path.strip_prefix(&format!("/v2/{REPO}/")).and_then(|rest| {
            if let Some(reference) = rest.strip_prefix("manifests/") {
                self.manifests.get(reference).cloned()
            } else {
                let digest = rest.strip_prefix("blobs/")?;
                self.blobs.get(digest).map(|b| ("application/octet-stream".to_owned(), b.clone()))
            }
        });
        match found {
            Some((content_type, body)) => {
                Response::builder().header("content-type", content_type).body(Full::new(Bytes::from(body))).unwrap()
            }
            None => json(
                StatusCode::NOT_FOUND,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.into(),
            ),
        }
    }

    async fn serve(self) -> (Arc<Self>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        *self.address.lock().unwrap() = Some(address);
        let registry = Arc::new(self);
        let shared = registry.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let registry = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let response = registry.handle(request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        (registry, address.to_string())
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn puller() -> (tempfile::TempDir, Puller) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    (dir, Puller::new(store, PullOptions::default()))
}

#[tokio::test]
async fn bearer_token_challenge_is_answered_with_the_credentials() {
    let image = TestImage::new(&[("bin/app", "app")], &["/bin/app"]);
    let (registry, address) = Registry::with_image(&image, Some("alice:pw")).serve().await;
    let (_dir, puller) = puller();
    let pulled = puller.pull(&format!("{address}/{REPO}:1"), Some(&Credentials::basic("alice", "pw"))).await.unwrap();
    assert_eq!(pulled.name, format!("{address}/{REPO}:1"));
    assert_eq!(pulled.record.manifest, image.manifest_digest());
    assert_eq!(pulled.repo_digest, format!("{address}/{REPO}@{}", image.manifest_digest()));
    assert!(registry.token_requests.load(Ordering::SeqCst) >= 1, "the token endpoint was asked");
    let store = ImageStore::open(_dir.path()).unwrap();
    assert_eq!(store.get(&pulled.name).unwrap(), Some(pulled.record));
}

#[tokio::test]
async fn a_wrong_password_or_none_is_unauthorized() {
    let image = TestImage::new(&[("a", "b")], &["sh"]);
    let (_registry, address) = Registry::with_image(&image, Some("alice:pw")).serve().await;
    let (dir, puller) = puller();
    let reference = format!("{address}/{REPO}:1");
    let wrong = puller.pull(&reference, Some(&Credentials::basic("alice", "nope"))).await;
    assert!(matches!(wrong, Err(PullError::Unauthorized { .. })), "{wrong:?}");
    let anonymous = puller.pull(&reference, None).await;
    assert!(matches!(anonymous, Err(PullError::Unauthorized { .. })), "{anonymous:?}");
    assert!(ImageStore::open(dir.path()).unwrap().list().unwrap().is_empty());
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused_and_not_kept() {
    let image = TestImage::new(&[("a", "b")], &["sh"]);
    let mut registry = Registry::with_image(&image, None);
    let layer_digest = Digest::of(&image.layer);
    registry.blobs.insert(layer_digest.to_string(), b"tampered layer".to_vec());
    let (_registry, address) = registry.serve().await;
    let (dir, puller) = puller();
    let result = puller.pull(&format!("{address}/{REPO}:1"), None).await;
    assert!(matches!(result, Err(PullError::DigestMismatch { .. })), "{result:?}");
    let store = ImageStore::open(dir.path()).unwrap();
    assert!(!store.has_blob(&layer_digest));
    assert!(!store.has_blob(&Digest::of(b"tampered layer")));
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test]
async fn digest_pinned_and_missing_references() {
    let image = TestImage::new(&[("a", "b")], &["sh"]);
    let (_registry, address) = Registry::with_image(&image, None).serve().await;
    let (_dir, puller) = puller();
    let pinned = format!("{address}/{REPO}@{}", image.manifest_digest());
    assert_eq!(puller.pull(&pinned, None).await.unwrap().name, pinned);
    let missing = puller.pull(&format!("{address}/{REPO}:nope"), None).await;
    assert!(matches!(missing, Err(PullError::NotFound { .. })), "{missing:?}");
}

#[test]
fn media_type_falls_back_to_the_document_shape() {
    assert_eq!(document_media_type(br#"{"manifests": []}"#).as_deref(), Some(media_type::OCI_INDEX));
    assert_eq!(document_media_type(br#"{"layers": []}"#).as_deref(), Some(media_type::OCI_MANIFEST));
    assert_eq!(
        document_media_type(br#"{"mediaType": "application/vnd.docker.distribution.manifest.v2+json"}"#).as_deref(),
        Some(media_type::DOCKER_MANIFEST)
    );
    assert_eq!(document_media_type(b"{}"), None);
}
