//! The node agent's HTTPS API (upstream's kubelet server on port 10250): `/healthz`, `/pods`,
//! `/metrics/resource`, `/containerLogs`, and the streaming endpoints `/exec`, `/attach` and
//! `/portForward` that the API server proxies `kubectl logs`, `exec`, `attach` and
//! `port-forward` to.
//!
//! TLS with the agent's serving certificate; every client must present a certificate issued by
//! the cluster CA (the API server's kubelet-client certificate). HTTP/1.1 with upgrades, since the
//! streaming endpoints switch protocols. Errors are plain text, as upstream's kubelet answers; the
//! API server wraps them into a Status.
//!
//! Containers are found through the runtime by the labels the pod workers give them
//! (`io.kubernetes.pod.namespace`, `io.kubernetes.pod.name`, `io.kubernetes.container.name`),
//! and logs through the on-disk layout of [`crate::logs`].

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::Timestamp;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use tug_runtime::cri::{
    Container, ContainerFilter, ContainerState, ExecRequest, PodSandbox, PodSandboxState, RuntimeService,
    StreamingRequest,
};

use crate::Config;
use crate::logs::{self, LogOptions, LogOptionsError, RunningCheck};
use crate::streaming::{self, RemoteCommandKind};

/// Labels the pod workers put on sandboxes and containers (as upstream's kubelet does).
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of every answer: whole or streamed.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("reading the {what} pem: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the {what} pem holds no certificate")]
    NoCertificate { what: &'static str },
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("building the tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The TLS configuration: the serving chain and key, client certificates required and
/// verified against the client CA, HTTP/1.1 only.
pub fn tls_config(config: &Config) -> Result<rustls::ServerConfig, ServerError> {
    let certs = |what, pem: &str| {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|source| ServerError::Pem { what, source })?;
        if certs.is_empty() {
            return Err(ServerError::NoCertificate { what });
        }
        Ok(certs)
    };
    let chain = certs("serving certificate", &config.serving_cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(config.serving_key_pem.as_bytes())
        .map_err(|source| ServerError::Pem { what: "serving key", source })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs("client ca", &config.client_ca_pem)? {
        roots.add(ca)?;
    }
    // Named explicitly rather than the process default, which may be unset (tests) or ambiguous.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Serves the node agent's HTTPS API on `config.port` (all addresses of the node IP's family)
/// until `shutdown`.
pub async fn serve(
    config: Arc<Config>,
    runtime: Arc<dyn RuntimeService>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let tls = tls_config(&config)?;
    let unspecified = match config.node_ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let addr = SocketAddr::new(unspecified, config.port);
    let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
    info!(%addr, "node agent api listening");
    serve_on(listener, Arc::new(tls), config, runtime, shutdown).await;
    Ok(())
}

/// Accepts connections on `listener` until `shutdown`; each is served in its own task.
pub async fn serve_on(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: Arc<Config>,
    runtime: Arc<dyn RuntimeService>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let state = Arc::new(State { config, runtime });
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, state, shutdown) = (acceptor.clone(), state.clone(), shutdown.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "tls handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.handle(req).await) }
            });
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).with_upgrades();
            tokio::select! {
                result = connection => if let Err(e) = result {
                    debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A plain-text answer with a trailing newline, as Go's `http.Error` writes.
fn text(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

fn streamed(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

struct State {
    config: Arc<Config>,
    runtime: Arc<dyn RuntimeService>,
}

/// A route of the API, from the method and path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Pods,
    /// `/metrics/resource`: the node's, pods' and containers' usage ([`crate::stats`]).
    MetricsResource,
    ContainerLogs {
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
    },
    RemoteCommand {
        kind: RemoteCommandKind,
        namespace: &'a str,
        pod: &'a str,
        uid: Option<&'a str>,
        container: &'a str,
    },
    PortForward {
        namespace: &'a str,
        pod: &'a str,
        uid: Option<&'a str>,
    },
    MethodNotAllowed,
    NotFound,
}

fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let segments: Vec<&str> = path.trim_start_matches('/').trim_end_matches('/').split('/').collect();
    let get = method == Method::GET || method == Method::HEAD;
    let get_or_post = get || method == Method::POST;
    let allowed = |ok: bool, r: Route<'a>| if ok { r } else { Route::MethodNotAllowed };
    match segments.as_slice() {
        ["healthz"] => allowed(get, Route::Healthz),
        ["pods"] => allowed(get, Route::Pods),
        ["metrics", "resource"] => allowed(get, Route::MetricsResource),
        ["containerLogs", namespace, pod, container] => {
            allowed(get, Route::ContainerLogs { namespace, pod, container })
        }
        [verb @ ("exec" | "attach"), namespace, pod, rest @ ..] if matches!(rest.len(), 1 | 2) => {
            let kind = if *verb == "exec" { RemoteCommandKind::Exec } else { RemoteCommandKind::Attach };
            let (uid, container) = match rest {
                [container] => (None, *container),
                [uid, container] => (Some(*uid), *container),
                _ => unreachable!("guarded by the length check"),
            };
            allowed(get_or_post, Route::RemoteCommand { kind, namespace, pod, uid, container })
        }
        ["portForward", namespace, pod] => allowed(get_or_post, Route::PortForward { namespace, pod, uid: None }),
        ["portForward", namespace, pod, uid] => {
            allowed(get_or_post, Route::PortForward { namespace, pod, uid: Some(uid) })
        }
        _ => Route::NotFound,
    }
}

impl State {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let span = info_span!("kubelet_request", method = %req.method(), path = %path);
        async move {
            let response = match route(req.method(), &path) {
                Route::Healthz => full(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
                Route::Pods => self.pods().await,
                Route::MetricsResource => {
                    let snapshot = crate::stats::snapshot(self.runtime.as_ref(), std::path::Path::new("/proc")).await;
                    full(
                        StatusCode::OK,
                        crate::stats::resource_metrics::CONTENT_TYPE,
                        crate::stats::resource_metrics::render(&snapshot),
                    )
                }
                Route::ContainerLogs { namespace, pod, container } => {
                    self.container_logs(namespace, pod, container, req.uri().query()).await
                }
                Route::RemoteCommand { kind, namespace, pod, uid, container } => {
                    let (namespace, pod, uid, container) =
                        (namespace.to_string(), pod.to_string(), uid.map(str::to_string), container.to_string());
                    self.remote_command(req, kind, &namespace, &pod, uid.as_deref(), &container).await
                }
                Route::PortForward { namespace, pod, uid } => {
                    let (namespace, pod, uid) = (namespace.to_string(), pod.to_string(), uid.map(str::to_string));
                    self.port_forward(req, &namespace, &pod, uid.as_deref()).await
                }
                Route::MethodNotAllowed => {
                    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                    r
                }
                Route::NotFound => text(StatusCode::NOT_FOUND, "404 page not found"),
            };
            debug!(status = response.status().as_u16(), "answered");
            response
        }
        .instrument(span)
        .await
    }

    /// The pods the runtime runs, as a PodList of their identities (upstream answers with the
    /// pods bound to the node; the agent's server knows the runtime's view only).
    async fn pods(&self) -> Response<Body> {
        let sandboxes = match self.runtime.list_pod_sandboxes().await {
            Ok(list) => list,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        let items: Vec<_> = sandboxes
            .iter()
            .filter(|s| s.state == PodSandboxState::Ready)
            .map(|s| {
                json!({ "metadata": {
                    "name": s.metadata.name, "namespace": s.metadata.namespace, "uid": s.metadata.uid,
                }})
            })
            .collect();
        let list = json!({ "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items });
        full(StatusCode::OK, "application/json", list.to_string())
    }

    /// The pod's newest sandbox (ready ones first), if the runtime has one.
    async fn sandbox(
        &self,
        namespace: &str,
        pod: &str,
        uid: Option<&str>,
    ) -> Result<Option<PodSandbox>, Response<Body>> {
        let sandboxes =
            self.runtime.list_pod_sandboxes().await.map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        Ok(sandboxes
            .into_iter()
            .filter(|s| s.metadata.namespace == namespace && s.metadata.name == pod)
            .filter(|s| uid.is_none_or(|u| s.metadata.uid == u))
            .max_by_key(|s| (s.state == PodSandboxState::Ready, s.created_at)))
    }

    /// The pod's containers of that name, newest first.
    async fn containers(
        &self,
        namespace: &str,
        pod: &str,
        uid: Option<&str>,
        container: &str,
    ) -> Result<Vec<Container>, Response<Body>> {
        let all = self
            .runtime
            .list_containers(&ContainerFilter::default())
            .await
            .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let mut found: Vec<Container> =
            all.into_iter().filter(|c| container_matches(c, namespace, pod, uid, container)).collect();
        found.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(found)
    }

    async fn container_logs(&self, namespace: &str, pod: &str, container: &str, query: Option<&str>) -> Response<Body> {
        let options = match LogOptions::from_query(query, Timestamp::now()) {
            Ok(options) => options,
            Err(e @ LogOptionsError::Decode { .. }) => return text(StatusCode::BAD_REQUEST, e),
            Err(e @ LogOptionsError::Invalid(_)) => return text(StatusCode::UNPROCESSABLE_ENTITY, e),
        };
        let sandbox = match self.sandbox(namespace, pod, None).await {
            Ok(sandbox) => sandbox,
            Err(response) => return response,
        };
        let root = self.config.log_root();
        let uid = sandbox.as_ref().map(|s| s.metadata.uid.clone());
        // The pod the runtime has is the one asked about; a directory left by an earlier pod of
        // the same name (a StatefulSet's) is read only when the runtime has none.
        let found = logs::find_container_logs(&root, namespace, pod, container, uid.as_deref());
        let Some(found) = found else {
            if sandbox.is_none() {
                return text(StatusCode::NOT_FOUND, format!("pod {pod:?} does not exist"));
            }
            return waiting(pod, container);
        };
        let picked = if options.previous { found.previous(container) } else { found.current(container) };
        let Some((attempt, path)) = picked else {
            if options.previous {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("previous terminated container {container:?} in pod {pod:?} not found"),
                );
            }
            return waiting(pod, container);
        };
        let running = self.running_check(namespace, pod, &found.pod_uid, container, attempt);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let span = info_span!("container_logs", namespace, pod, container, attempt, follow = options.follow);
        tokio::spawn(
            async move {
                if let Err(e) = logs::stream_log(path, options, running, tx).await {
                    warn!(error = %e, "reading the container log failed");
                }
            }
            .instrument(span),
        );
        streamed(rx)
    }

    /// Whether instance `attempt` of the container is running, for following its log.
    fn running_check(&self, namespace: &str, pod: &str, uid: &str, container: &str, attempt: u32) -> RunningCheck {
        let runtime = self.runtime.clone();
        let (namespace, pod, uid, container) =
            (namespace.to_string(), pod.to_string(), uid.to_string(), container.to_string());
        Arc::new(move || {
            let runtime = runtime.clone();
            let (namespace, pod, uid, container) = (namespace.clone(), pod.clone(), uid.clone(), container.clone());
            Box::pin(async move {
                let filter = ContainerFilter { state: Some(ContainerState::Running), ..Default::default() };
                match runtime.list_containers(&filter).await {
                    Ok(list) => list.iter().any(|c| {
                        c.state == ContainerState::Running
                            && c.metadata.attempt == attempt
                            && container_matches(c, &namespace, &pod, Some(&uid), &container)
                    }),
                    // A runtime that cannot answer right now: keep following, ask again later.
                    Err(e) => {
                        warn!(error = %e, "asking the runtime whether a container runs failed");
                        true
                    }
                }
            })
        })
    }

    /// The running container of that name, or upstream's answer when there is none.
    async fn running_container(
        &self,
        namespace: &str,
        pod: &str,
        uid: Option<&str>,
        container: &str,
    ) -> Result<Container, Response<Body>> {
        if self.sandbox(namespace, pod, uid).await?.is_none() {
            return Err(text(StatusCode::NOT_FOUND, "pod does not exist"));
        }
        let containers = self.containers(namespace, pod, uid, container).await?;
        containers
            .into_iter()
            .find(|c| c.state == ContainerState::Running)
            .ok_or_else(|| text(StatusCode::INTERNAL_SERVER_ERROR, format!("container not found ({container:?})")))
    }

    async fn remote_command(
        &self,
        req: Request<Incoming>,
        kind: RemoteCommandKind,
        namespace: &str,
        pod: &str,
        uid: Option<&str>,
        container: &str,
    ) -> Response<Body> {
        let options = match streaming::parse_remote_command_query(req.uri().query()) {
            Ok(options) => options,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let target = match self.running_container(namespace, pod, uid, container).await {
            Ok(c) => c,
            Err(response) => return response,
        };
        // A CRI runtime serves the session on its own streaming server: proxy the client there.
        let session = match kind {
            RemoteCommandKind::Exec => StreamingRequest::Exec {
                container_id: target.id.clone(),
                request: ExecRequest {
                    cmd: options.command.clone(),
                    tty: options.tty,
                    stdin: options.stdin,
                    stdout: options.stdout,
                    stderr: options.stderr,
                },
            },
            RemoteCommandKind::Attach => StreamingRequest::Attach {
                container_id: target.id.clone(),
                stdin: options.stdin,
                tty: options.tty,
                stdout: options.stdout,
                stderr: options.stderr,
            },
        };
        match self.runtime.streaming_url(&session).await {
            Ok(Some(url)) => return streaming::proxy(req, &url).await.map(|b| b.boxed_unsync()),
            Ok(None) => {}
            Err(e) => {
                return text(StatusCode::INTERNAL_SERVER_ERROR, format!("error executing command in container: {e}"));
            }
        }
        let runtime = self.runtime.clone();
        let id = target.id;
        let response = streaming::remote_command(req, options, move |options| async move {
            match kind {
                RemoteCommandKind::Exec => {
                    let request = ExecRequest {
                        cmd: options.command,
                        tty: options.tty,
                        stdin: options.stdin,
                        stdout: options.stdout,
                        stderr: options.stderr,
                    };
                    runtime.exec(&id, &request).await
                }
                RemoteCommandKind::Attach => runtime.attach(&id, options.stdin, options.tty).await,
            }
        })
        .await;
        response.map(|b| b.boxed_unsync())
    }

    async fn port_forward(
        &self,
        req: Request<Incoming>,
        namespace: &str,
        pod: &str,
        uid: Option<&str>,
    ) -> Response<Body> {
        let sandbox = match self.sandbox(namespace, pod, uid).await {
            Ok(Some(s)) if s.state == PodSandboxState::Ready => s,
            Ok(_) => return text(StatusCode::NOT_FOUND, "pod does not exist"),
            Err(response) => return response,
        };
        match self.runtime.streaming_url(&StreamingRequest::PortForward { sandbox_id: sandbox.id.clone() }).await {
            Ok(Some(url)) => return streaming::proxy(req, &url).await.map(|b| b.boxed_unsync()),
            Ok(None) => {}
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("error forwarding port: {e}")),
        }
        let runtime = self.runtime.clone();
        let sandbox_id = Arc::new(sandbox.id);
        let response = streaming::port_forward(req, move |port| {
            let (runtime, sandbox_id) = (runtime.clone(), sandbox_id.clone());
            async move { runtime.port_forward(&sandbox_id, port).await }
        })
        .await;
        response.map(|b| b.boxed_unsync())
    }
}

/// Upstream's answer for a container with no log yet.
fn waiting(pod: &str, container: &str) -> Response<Body> {
    text(
        StatusCode::BAD_REQUEST,
        format!("container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"),
    )
}

fn container_matches(c: &Container, namespace: &str, pod: &str, uid: Option<&str>, container: &str) -> bool {
    let label = |k: &str| c.labels.get(k).map(String::as_str);
    label(LABEL_POD_NAMESPACE) == Some(namespace)
        && label(LABEL_POD_NAME) == Some(pod)
        && label(LABEL_CONTAINER_NAME) == Some(container)
        && uid.is_none_or(|u| label(LABEL_POD_UID) == Some(u))
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
