//! The proxy against a fake node agent: a TLS server with a serving certificate from the cluster
//! PKI that requires a client certificate of the cluster CA, behind a Node whose address and
//! port point at it. Requests go through a real API server on 127.0.0.1 as a client sends them.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::pki::{ClusterPki, PkiOptions};

const TOKEN: &str = "bootstrap-token-for-tests";

type AgentBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the fake agent saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    client_cn: Option<String>,
}

struct Agent {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Releases the second line of the followed log.
    next_line: Arc<Notify>,
    /// Signalled when a connection to the agent has ended.
    closed: Arc<Notify>,
}

fn der_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn text(code: u16, body: impl Into<Bytes>) -> Response<AgentBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

/// The fake agent's routes: upstream's kubelet paths, answered with what the tests look for.
async fn agent_route(req: Request<Incoming>, next_line: Arc<Notify>) -> Response<AgentBody> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/containerLogs/default/web/app" => {
            // The second line is held back until the test has read the first through the
            // API server: only a body streamed as it arrives lets the test go on.
            let stream = futures::stream::unfold(0, move |step| {
                let next_line = next_line.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, Infallible>(Frame::data(Bytes::from("line 1\n"))), 1)),
                        1 => {
                            next_line.notified().await;
                            Some((Ok(Frame::data(Bytes::from("line 2\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
            r
        }
        "/containerLogs/default/waiting/app" => {
            text(400, "container \"app\" in pod \"waiting\" is waiting to start: ContainerCreating")
        }
        "/containerLogs/default/gone/app" => text(404, "pod not found"),
        "/exec/default/web/app" | "/portForward/default/web" => {
            let protocol = req.headers().get("x-stream-protocol-version").cloned();
            let mut req = req;
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 1024];
                loop {
                    let n = io.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    io.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
                    io.flush().await.unwrap();
                }
            });
            let mut r = text(101, "");
            r.headers_mut().insert(header::CONNECTION, "Upgrade".parse().unwrap());
            r.headers_mut().insert(header::UPGRADE, "SPDY/3.1".parse().unwrap());
            if let Some(p) = protocol {
                let chosen = p.to_str().unwrap().split(',').next().unwrap().trim().to_string();
                r.headers_mut().insert("x-stream-protocol-version", chosen.parse().unwrap());
            }
            r
        }
        "/exec/default/web2/refused" => text(404, "container not found (\"refused\")"),
        "/echo" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            text(201, body)
        }
        _ => text(200, format!("ok {}", req.uri())),
    }
}

/// Starts a fake agent serving a certificate of `serving_ca` and requiring client certificates
/// of `pki`'s CA.
async fn start_agent(pki: &ClusterPki, serving_ca: &ClusterPki) -> Agent {
    let (chain, key) = serving_ca.issue_kubelet_serving_cert("node-a", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der_certs(pki.ca_pem()).remove(0)).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(der_certs(&chain), PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let next_line = Arc::new(Notify::new());
    let closed = Arc::new(Notify::new());
    let agent = Agent { port, seen: seen.clone(), next_line: next_line.clone(), closed: closed.clone() };
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let (seen, next_line, closed) = (seen.clone(), next_line.clone(), closed.clone());
            tokio::spawn(async move {
                // A client without a certificate of the cluster CA fails here.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let client_cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::authn::identity_from_client_cert(c.as_ref()))
                    .map(|u| u.name);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    seen.lock().unwrap().push(Seen {
                        method: req.method().clone(),
                        path_and_query: req.uri().path_and_query().map(ToString::to_string).unwrap_or_default(),
                        headers: req.headers().clone(),
                        client_cn: client_cn.clone(),
                    });
                    let next_line = next_line.clone();
                    async move { Ok::<_, Infallible>(agent_route(req, next_line).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
                closed.notify_one();
            });
        }
    });
    agent
}

struct Cluster {
    _dir: tempfile::TempDir,
    srv: ApiServer,
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    agent: Agent,
    shutdown: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn pod(name: &str, node: Option<&str>, init: &[&str], containers: &[&str]) -> Value {
    let list = |names: &[&str]| names.iter().map(|n| json!({"name": n, "image": "busybox"})).collect::<Vec<_>>();
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"containers": list(containers)},
    });
    if !init.is_empty() {
        pod["spec"]["initContainers"] = json!(list(init));
    }
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    pod
}

impl Cluster {
    async fn start() -> Cluster {
        Self::start_with(true).await
    }

    async fn start_with(kubelet_client: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let opts = PkiOptions::new(IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)), "cluster.local");
        let pki = ClusterPki::load_or_create(dir.path(), &opts).unwrap();
        let agent = start_agent(&pki, &pki).await;
        // A bearer token of the cluster, which must authenticate the client but not reach the agent.
        let tokens = crate::authn::TokenFile::ensure(&dir.path().join("tokens.csv"), Some(TOKEN)).unwrap();
        let srv = ApiServer::new(
            Arc::new(tug_store::memory::MemoryStore::new()),
            Some(tokens),
            crate::ServerOptions::default(),
        );
        if kubelet_client {
            srv.set_kubelet_client_config(pki.kubelet_client_config().unwrap());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(srv.clone().serve(listener, Arc::new(pki.server_config().unwrap()), shutdown.clone()));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(der_certs(pki.ca_pem()).remove(0)).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                der_certs(pki.admin_cert_pem()),
                PrivateKeyDer::from_pem_slice(pki.admin_key_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cluster = Cluster {
            _dir: dir,
            srv,
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            agent,
            shutdown,
        };
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a", "uid": "uid-node-a"},
            "status": {
                "addresses": [{"type": "Hostname", "address": "node-a.invalid"}, {"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": cluster.agent.port}},
            },
        });
        cluster.put("nodes", None, node).await;
        for p in [
            pod("web", Some("node-a"), &[], &["app"]),
            pod("multi", Some("node-a"), &["init"], &["a", "b"]),
            pod("pending", None, &[], &["app"]),
            pod("waiting", Some("node-a"), &[], &["app"]),
            pod("gone", Some("node-a"), &[], &["app"]),
            pod("lost", Some("node-b"), &[], &["app"]),
        ] {
            cluster.put("pods", Some("default"), p).await;
        }
        cluster
    }

    async fn put(&self, plural: &str, ns: Option<&str>, obj: Value) {
        let registry = self.srv.registry();
        let rt = registry.lookup("", "v1", plural).unwrap();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        self.srv.store.create(&rt.key(ns, &name), crate::codec::encode_for_storage(&obj).unwrap()).await.unwrap();
    }

    /// Sends one request on a new connection to the API server.
    async fn request(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let tls = self.connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        sender.send_request(req).await.unwrap()
    }

    async fn get(&self, path: &str) -> Response<Incoming> {
        self.request(Request::get(path).header(header::HOST, "localhost").body(Full::default()).unwrap()).await
    }

    fn seen(&self) -> Vec<Seen> {
        self.agent.seen.lock().unwrap().clone()
    }
}

async fn body_text(resp: Response<Incoming>) -> String {
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

async fn status_of(resp: Response<Incoming>) -> (u16, Value) {
    let code = resp.status().as_u16();
    let body = body_text(resp).await;
    (code, serde_json::from_str(&body).unwrap_or_else(|_| panic!("not a status: {body}")))
}

#[tokio::test]
async fn log_streams_the_agents_body_as_it_arrives_with_the_query_options() {
    let cluster = Cluster::start().await;
    let resp = cluster
        .get("/api/v1/namespaces/default/pods/web/log?follow=true&tailLines=5&timestamps=true&sinceSeconds=10&limitBytes=100&previous=false")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "line 1\n");
    // The agent writes its second line only now: the first arrived while the stream was open.
    cluster.agent.next_line.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "line 2\n");

    let seen = cluster.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].path_and_query,
        "/containerLogs/default/web/app?follow=true&limitBytes=100&sinceSeconds=10&tailLines=5&timestamps=true"
    );
    assert_eq!(seen[0].client_cn.as_deref(), Some(crate::pki::KUBELET_CLIENT_USER));
    assert!(seen[0].headers.get(header::AUTHORIZATION).is_none());
}

#[tokio::test]
async fn log_of_a_named_container_passes_since_time_in_whole_seconds() {
    let cluster = Cluster::start().await;
    let resp = cluster
        .get("/api/v1/namespaces/default/pods/multi/log?container=init&sinceTime=2026-01-02T03:04:05.678Z")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_text(resp).await, "ok /containerLogs/default/multi/init?sinceTime=2026-01-02T03%3A04%3A05Z");
}

#[tokio::test]
async fn log_requests_are_checked_as_upstream_checks_them() {
    let cluster = Cluster::start().await;
    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/multi/log").await).await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
    assert_eq!(status["message"], "a container name must be specified for pod multi, choose one of: [init a b]");

    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/multi/log?container=x").await).await;
    assert_eq!((code, status["message"].as_str()), (400, Some("container x is not valid for pod multi")));

    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/web/log?tailLines=-1").await).await;
    assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        status["message"],
        "PodLogOptions \"web\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
    );
    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/web/log?limitBytes=0").await).await;
    assert_eq!(code, 422);
    assert_eq!(status["details"]["causes"][0]["field"], "limitBytes");

    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/nope/log").await).await;
    assert_eq!((code, status["message"].as_str()), (404, Some("pods \"nope\" not found")));

    // A pod not yet on a node has no log to stream.
    let resp = cluster.get("/api/v1/namespaces/default/pods/pending/log").await;
    assert_eq!(resp.status(), 204);

    // A pod on a node that does not exist: the node's NotFound.
    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/lost/log").await).await;
    assert_eq!((code, status["message"].as_str()), (404, Some("nodes \"node-b\" not found")));
    assert!(cluster.seen().is_empty(), "nothing reached the agent: {:?}", cluster.seen());
}

#[tokio::test]
async fn agent_errors_reach_the_client_worded_as_upstream() {
    let cluster = Cluster::start().await;
    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/waiting/log").await).await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
    assert_eq!(status["message"], "container \"app\" in pod \"waiting\" is waiting to start: ContainerCreating");

    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/gone/log").await).await;
    assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(status["message"], "the server could not find the requested resource ( pods/log gone)");
}

#[tokio::test]
async fn an_unreachable_agent_is_a_server_error_naming_the_address() {
    let cluster = Cluster::start().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let node = json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b", "uid": "uid-node-b"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}},
    });
    cluster.put("nodes", None, node).await;
    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/lost/log").await).await;
    assert_eq!(code, 500);
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("Get \"https://127.0.0.1:{port}/containerLogs/default/lost/app\": dial tcp")),
        "{message}"
    );
    let (code, status) = status_of(cluster.get("/api/v1/nodes/node-b/proxy/healthz").await).await;
    assert_eq!((code, status["reason"].as_str()), (503, Some("ServiceUnavailable")));
    assert!(status["message"].as_str().unwrap().starts_with("error trying to reach service: dial tcp"), "{status}");
}

fn upgrade_request(method: Method, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "v4.channel.k8s.io, v3.channel.k8s.io")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn exec_upgrade_is_proxied_and_bytes_flow_both_ways_after_101() {
    let cluster = Cluster::start().await;
    let resp = cluster
        .request(upgrade_request(
            Method::POST,
            "/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=echo%20hi&stdin=true&stdout=true&tty=true",
        ))
        .await;
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-stream-protocol-version"], "v4.channel.k8s.io");
    assert_eq!(resp.headers()[header::UPGRADE], "SPDY/3.1");
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"hello agent").await.unwrap();
    let mut buf = [0u8; 11];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HELLO AGENT");
    io.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"AGAIN");

    let seen = cluster.seen();
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(
        seen[0].path_and_query,
        "/exec/default/web/app?command=sh&command=-c&command=echo+hi&error=1&input=1&output=1&tty=1"
    );
    assert_eq!(seen[0].headers[header::UPGRADE], "SPDY/3.1");
    assert_eq!(seen[0].headers["x-stream-protocol-version"], "v4.channel.k8s.io, v3.channel.k8s.io");
    assert!(seen[0].headers.get(header::AUTHORIZATION).is_none());
}

#[tokio::test]
async fn port_forward_upgrade_reaches_the_agents_port_forward_path() {
    let cluster = Cluster::start().await;
    let resp = cluster
        .request(upgrade_request(Method::GET, "/api/v1/namespaces/default/pods/web/portforward?ports=8080"))
        .await;
    assert_eq!(resp.status(), 101);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 1];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"X");
    assert_eq!(cluster.seen()[0].path_and_query, "/portForward/default/web?port=8080");
}

#[tokio::test]
async fn streaming_requests_are_refused_before_the_agent_when_they_cannot_work() {
    let cluster = Cluster::start().await;
    let (code, status) = status_of(
        cluster.request(upgrade_request(Method::POST, "/api/v1/namespaces/default/pods/pending/exec?command=sh")).await,
    )
    .await;
    assert_eq!((code, status["message"].as_str()), (400, Some("pod pending does not have a host assigned")));

    let (code, status) = status_of(
        cluster.request(upgrade_request(Method::POST, "/api/v1/namespaces/default/pods/web/attach?container=x")).await,
    )
    .await;
    assert_eq!((code, status["message"].as_str()), (400, Some("container x is not valid for pod web")));

    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/web/exec?command=sh").await).await;
    assert_eq!((code, status["message"].as_str()), (400, Some("Upgrade request required")));
    assert!(cluster.seen().is_empty());
}

#[tokio::test]
async fn an_agents_refusal_to_upgrade_passes_through() {
    let cluster = Cluster::start().await;
    // The pod names a container the agent does not run.
    cluster.put("pods", Some("default"), pod("web2", Some("node-a"), &[], &["refused"])).await;
    let resp =
        cluster.request(upgrade_request(Method::POST, "/api/v1/namespaces/default/pods/web2/exec?command=sh")).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(body_text(resp).await, "container not found (\"refused\")");
}

#[tokio::test]
async fn node_proxy_forwards_path_query_method_and_body() {
    let cluster = Cluster::start().await;
    let resp = cluster.get("/api/v1/nodes/node-a/proxy/healthz?verbose=1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_text(resp).await, "ok /healthz?verbose=1");
    let resp = cluster.get(&format!("/api/v1/nodes/node-a:{}/proxy/metrics/", cluster.agent.port)).await;
    assert_eq!(body_text(resp).await, "ok /metrics/");

    let req = Request::post("/api/v1/nodes/node-a/proxy/echo")
        .header(header::HOST, "localhost")
        .body(Full::new(Bytes::from("payload")))
        .unwrap();
    let resp = cluster.request(req).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(body_text(resp).await, "payload");
    let seen = cluster.seen();
    assert_eq!(seen[2].method, Method::POST);
    assert_eq!(seen[0].client_cn.as_deref(), Some(crate::pki::KUBELET_CLIENT_USER));

    let (code, _) = status_of(cluster.get("/api/v1/nodes/node-z/proxy/healthz").await).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn without_a_kubelet_client_the_subresources_are_unavailable() {
    let cluster = Cluster::start_with(false).await;
    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/web/log").await).await;
    assert_eq!((code, status["reason"].as_str()), (503, Some("ServiceUnavailable")));
    assert!(cluster.seen().is_empty());
}

#[test]
fn container_choice_follows_upstream() {
    let p = pod("p", None, &["i"], &["only"]);
    assert_eq!(choose_container(&p, None).unwrap(), "only");
    assert_eq!(choose_container(&p, Some("i")).unwrap(), "i");
    assert_eq!(choose_container(&p, Some("")).unwrap(), "only");
}

#[tokio::test]
async fn an_agent_certificate_of_another_ca_is_refused_unless_the_client_skips_verification() {
    let cluster = Cluster::start().await;
    let other_dir = tempfile::tempdir().unwrap();
    let opts = PkiOptions::new(IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)), "cluster.local");
    let other = ClusterPki::load_or_create(other_dir.path(), &opts).unwrap();
    let cluster_pki = ClusterPki::load_or_create(cluster._dir.path(), &opts).unwrap();
    let impostor = start_agent(&cluster_pki, &other).await;
    let node = json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b", "uid": "uid-node-b"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": impostor.port}}},
    });
    cluster.put("nodes", None, node).await;

    let (code, status) = status_of(cluster.get("/api/v1/namespaces/default/pods/lost/log").await).await;
    assert_eq!(code, 500);
    assert!(status["message"].as_str().unwrap().contains("tls"), "{status}");
    assert!(impostor.seen.lock().unwrap().is_empty());

    let resp = cluster.get("/api/v1/namespaces/default/pods/lost/log?insecureSkipTLSVerifyBackend=true").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_text(resp).await, "ok /containerLogs/default/lost/app");
}

#[test]
fn discovery_lists_the_node_agent_subresources_with_upstreams_verbs() {
    let registry = tug_api::Registry::builtin();
    let list = crate::discovery::resource_list(&registry, "", "v1").unwrap();
    let verbs = |name: &str| {
        let r = list["resources"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap();
        (r["kind"].as_str().unwrap().to_string(), r["verbs"].clone())
    };
    assert_eq!(verbs("pods/log"), ("Pod".into(), json!(["get"])));
    assert_eq!(verbs("pods/exec"), ("PodExecOptions".into(), json!(["create", "get"])));
    assert_eq!(verbs("pods/attach"), ("PodAttachOptions".into(), json!(["create", "get"])));
    assert_eq!(verbs("pods/portforward"), ("PodPortForwardOptions".into(), json!(["create", "get"])));
    assert_eq!(
        verbs("nodes/proxy"),
        ("NodeProxyOptions".into(), json!(["create", "delete", "get", "patch", "update"]))
    );
}

#[tokio::test]
async fn a_client_leaving_a_followed_log_closes_the_agent_connection() {
    let cluster = Cluster::start().await;
    let resp = cluster.get("/api/v1/namespaces/default/pods/web/log?follow=true").await;
    let mut body = resp.into_body();
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "line 1\n");
    drop(body);
    // The agent would follow for ever; the API server must hang up on it.
    tokio::time::timeout(std::time::Duration::from_secs(10), cluster.agent.closed.notified())
        .await
        .expect("the agent connection closed");
}
