use super::*;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use tug_runtime::cri::{
    ContainerConfig, ContainerMetadata, ContainerStatus, ExecSyncResult, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatus, RuntimeError, StreamSession,
};

/// A runtime that only lists what the test puts in it.
#[derive(Default)]
struct FakeRuntime {
    sandboxes: Mutex<Vec<PodSandbox>>,
    containers: Mutex<Vec<Container>>,
}

fn unavailable<T>() -> Result<T, RuntimeError> {
    Err(RuntimeError::Unavailable("fake runtime".into()))
}

#[async_trait::async_trait]
impl RuntimeService for FakeRuntime {
    async fn run_pod_sandbox(&self, _: &PodSandboxConfig) -> Result<String, RuntimeError> {
        unavailable()
    }
    async fn stop_pod_sandbox(&self, _: &str) -> Result<(), RuntimeError> {
        unavailable()
    }
    async fn remove_pod_sandbox(&self, _: &str) -> Result<(), RuntimeError> {
        unavailable()
    }
    async fn pod_sandbox_status(&self, _: &str) -> Result<PodSandboxStatus, RuntimeError> {
        unavailable()
    }
    async fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, RuntimeError> {
        Ok(self.sandboxes.lock().unwrap().clone())
    }
    async fn create_container(
        &self,
        _: &str,
        _: &ContainerConfig,
        _: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        unavailable()
    }
    async fn start_container(&self, _: &str) -> Result<(), RuntimeError> {
        unavailable()
    }
    async fn stop_container(&self, _: &str, _: Duration) -> Result<(), RuntimeError> {
        unavailable()
    }
    async fn remove_container(&self, _: &str) -> Result<(), RuntimeError> {
        unavailable()
    }
    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>, RuntimeError> {
        let all = self.containers.lock().unwrap().clone();
        Ok(all.into_iter().filter(|c| filter.state.is_none_or(|s| s == c.state)).collect())
    }
    async fn container_status(&self, _: &str) -> Result<ContainerStatus, RuntimeError> {
        unavailable()
    }
    async fn exec_sync(&self, _: &str, _: &[String], _: Duration) -> Result<ExecSyncResult, RuntimeError> {
        unavailable()
    }
    async fn exec(&self, _: &str, _: &ExecRequest) -> Result<StreamSession, RuntimeError> {
        unavailable()
    }
    async fn attach(&self, _: &str, _: bool, _: bool) -> Result<StreamSession, RuntimeError> {
        unavailable()
    }
    async fn port_forward(&self, _: &str, _: u16) -> Result<tokio::net::TcpStream, RuntimeError> {
        unavailable()
    }
}

fn sandbox(namespace: &str, name: &str, uid: &str) -> PodSandbox {
    PodSandbox {
        id: format!("sb-{uid}"),
        metadata: PodSandboxMetadata { name: name.into(), namespace: namespace.into(), uid: uid.into(), attempt: 0 },
        state: PodSandboxState::Ready,
        created_at: SystemTime::now(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    }
}

fn container(namespace: &str, pod: &str, uid: &str, name: &str, attempt: u32, state: ContainerState) -> Container {
    Container {
        id: format!("c-{uid}-{name}-{attempt}"),
        pod_sandbox_id: format!("sb-{uid}"),
        metadata: ContainerMetadata { name: name.into(), attempt },
        image: "busybox".into(),
        image_ref: "sha256:0".into(),
        state,
        created_at: SystemTime::now(),
        labels: BTreeMap::from([
            (LABEL_POD_NAMESPACE.to_string(), namespace.to_string()),
            (LABEL_POD_NAME.to_string(), pod.to_string()),
            (LABEL_POD_UID.to_string(), uid.to_string()),
            (LABEL_CONTAINER_NAME.to_string(), name.to_string()),
        ]),
        annotations: BTreeMap::new(),
    }
}

/// A CA, the agent's serving certificate for 127.0.0.1, and a client certificate.
struct Pki {
    ca_pem: String,
    serving: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |usage, sans: Vec<SanType>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.extended_key_usages = vec![usage];
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca_cert.pem(),
        serving: leaf(ExtendedKeyUsagePurpose::ServerAuth, vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))]),
        client: leaf(ExtendedKeyUsagePurpose::ClientAuth, vec![]),
    }
}

struct Agent {
    addr: SocketAddr,
    pki: Pki,
    runtime: Arc<FakeRuntime>,
    log_root: PathBuf,
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let mut config = crate::node_status::tests::config();
    config.agent_dir = dir.path().to_path_buf();
    config.serving_cert_pem = format!("{}{}", pki.serving.0, pki.ca_pem);
    config.serving_key_pem = pki.serving.1.clone();
    config.client_ca_pem = pki.ca_pem.clone();
    let log_root = config.log_root();
    let tls = tls_config(&config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let runtime = Arc::new(FakeRuntime::default());
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_on(listener, Arc::new(tls), Arc::new(config), runtime.clone(), shutdown.clone()));
    Agent { addr, pki, runtime, log_root, _dir: dir, shutdown }
}

fn client_tls(pki: &Pki, with_cert: bool) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    if with_cert {
        let cert = CertificateDer::from_pem_slice(pki.client.0.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.client.1.as_bytes()).unwrap();
        builder.with_client_auth_cert(vec![cert], key).unwrap()
    } else {
        builder.with_no_client_auth()
    }
}

/// Sends a GET and returns the response with its body still streaming.
async fn get(agent: &Agent, path: &str, with_cert: bool) -> Result<Response<Incoming>, String> {
    let tcp = tokio::net::TcpStream::connect(agent.addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(&agent.pki, with_cert)));
    let name = rustls_pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let req = Request::get(path).header("host", "127.0.0.1").body(Full::new(Bytes::new())).unwrap();
    sender.send_request(req).await.map_err(|e| e.to_string())
}

async fn body_text(response: Response<Incoming>) -> String {
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await.unwrap().unwrap();
    String::from_utf8(body.to_bytes().to_vec()).unwrap()
}

fn write_log(root: &Path, dir: &str, container: &str, attempt: u32, text: &str) -> PathBuf {
    let path = root.join(dir).join(container).join(format!("{attempt}.log"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let agent = start().await;
    let refused = get(&agent, "/healthz", false).await;
    assert!(refused.is_err(), "a request without a client certificate was answered: {refused:?}");
    let ok = get(&agent, "/healthz", true).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(body_text(ok).await, "ok");
}

#[tokio::test]
async fn container_logs_return_the_log_text_with_options() {
    let agent = start().await;
    agent.runtime.sandboxes.lock().unwrap().push(sandbox("ns", "web", "u1"));
    agent.runtime.containers.lock().unwrap().push(container("ns", "web", "u1", "c", 1, ContainerState::Running));
    write_log(&agent.log_root, "ns_web_u1", "c", 0, "2026-01-01T00:00:00Z stdout F crashed once\n");
    write_log(
        &agent.log_root,
        "ns_web_u1",
        "c",
        1,
        "2026-01-01T00:00:01Z stdout F hello\n2026-01-01T00:00:02Z stderr F world\n",
    );

    let response = get(&agent, "/containerLogs/ns/web/c", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "hello\nworld\n");

    let response = get(&agent, "/containerLogs/ns/web/c?tailLines=1&timestamps=true", true).await.unwrap();
    assert_eq!(body_text(response).await, "2026-01-01T00:00:02Z world\n");

    let response = get(&agent, "/containerLogs/ns/web/c?previous=true", true).await.unwrap();
    assert_eq!(body_text(response).await, "crashed once\n");
}

#[tokio::test]
async fn log_errors_are_answered_as_upstream_words_them() {
    let agent = start().await;
    agent.runtime.sandboxes.lock().unwrap().push(sandbox("ns", "web", "u1"));
    write_log(&agent.log_root, "ns_web_u1", "c", 0, "2026-01-01T00:00:01Z stdout F hello\n");

    let response = get(&agent, "/containerLogs/ns/web/c?previous=true", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_text(response).await, "previous terminated container \"c\" in pod \"web\" not found\n");

    let response = get(&agent, "/containerLogs/ns/web/sidecar", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        body_text(response).await,
        "container \"sidecar\" in pod \"web\" is waiting to start: ContainerCreating\n"
    );

    let response = get(&agent, "/containerLogs/ns/nope/c", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // A pod recreated under the same name does not show its predecessor's log.
    agent.runtime.sandboxes.lock().unwrap().push(sandbox("ns", "db", "new"));
    write_log(&agent.log_root, "ns_db_old", "c", 0, "2026-01-01T00:00:01Z stdout F old pod\n");
    let response = get(&agent, "/containerLogs/ns/db/c", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let response = get(&agent, "/containerLogs/ns/web/c?tailLines=-1", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = get(&agent, "/containerLogs/ns/web/c?follow=perhaps", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let response = get(&agent, "/exec/ns/web/c?command=ls&stdout=true", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body_text(response).await, "container not found (\"c\")\n");
    let response = get(&agent, "/portForward/ns/nope", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = get(&agent, "/nothing/here", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn following_a_log_streams_appended_lines_until_the_container_exits() {
    let agent = start().await;
    agent.runtime.sandboxes.lock().unwrap().push(sandbox("ns", "web", "u1"));
    agent.runtime.containers.lock().unwrap().push(container("ns", "web", "u1", "c", 0, ContainerState::Running));
    let path = write_log(&agent.log_root, "ns_web_u1", "c", 0, "2026-01-01T00:00:01Z stdout F first\n");

    let response = get(&agent, "/containerLogs/ns/web/c?follow=true", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut next = async || -> Option<String> {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("no data in time")?;
        Some(String::from_utf8(frame.unwrap().into_data().unwrap().to_vec()).unwrap())
    };
    assert_eq!(next().await.as_deref(), Some("first\n"));
    write_log(&agent.log_root, "ns_web_u1", "c", 0, "2026-01-01T00:00:02Z stdout F appended\n");
    assert_eq!(next().await.as_deref(), Some("appended\n"));

    agent.runtime.containers.lock().unwrap()[0].state = ContainerState::Exited;
    let mut rest = String::new();
    while let Some(text) = next().await {
        rest.push_str(&text);
    }
    assert_eq!(rest, "", "the stream ends once the container has exited");
    assert!(path.exists());
}

#[tokio::test]
async fn exec_to_a_running_container_reaches_the_streaming_protocols() {
    let agent = start().await;
    agent.runtime.sandboxes.lock().unwrap().push(sandbox("ns", "web", "u1"));
    agent.runtime.containers.lock().unwrap().push(container("ns", "web", "u1", "c", 0, ContainerState::Exited));
    let response = get(&agent, "/exec/ns/web/c?command=ls&stdout=true", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR, "an exited container is not exec'd into");

    agent.runtime.containers.lock().unwrap().push(container("ns", "web", "u1", "c", 1, ContainerState::Running));
    // Without an upgrade the protocol layer refuses the request; the container was found.
    let response = get(&agent, "/exec/ns/web/c?command=ls&stdout=true", true).await.unwrap();
    assert!(response.status().is_client_error(), "{:?}", response.status());
    let response = get(&agent, "/exec/ns/web/c?command=ls", true).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "no stream asked for");
}

#[test]
fn routes_follow_upstream_paths() {
    assert_eq!(route(&Method::GET, "/healthz"), Route::Healthz);
    assert_eq!(
        route(&Method::GET, "/containerLogs/ns/p/c"),
        Route::ContainerLogs { namespace: "ns", pod: "p", container: "c" }
    );
    assert_eq!(route(&Method::POST, "/containerLogs/ns/p/c"), Route::MethodNotAllowed);
    assert_eq!(
        route(&Method::POST, "/exec/ns/p/uid/c"),
        Route::RemoteCommand {
            kind: RemoteCommandKind::Exec,
            namespace: "ns",
            pod: "p",
            uid: Some("uid"),
            container: "c"
        }
    );
    assert_eq!(
        route(&Method::GET, "/attach/ns/p/c"),
        Route::RemoteCommand { kind: RemoteCommandKind::Attach, namespace: "ns", pod: "p", uid: None, container: "c" }
    );
    assert_eq!(route(&Method::GET, "/portForward/ns/p"), Route::PortForward { namespace: "ns", pod: "p", uid: None });
    assert_eq!(route(&Method::GET, "/exec/ns/p"), Route::NotFound);
}
