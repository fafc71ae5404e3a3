//! The server: shared state, the HTTPS listener, authentication and routing.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, warn};
use tug_api::schema::SchemaSet;
use tug_api::{ApiError, Registry, ResourceType};
use tug_store::Store;

use crate::admission::Ipv4Cidr;
use crate::authn::{self, TokenFile, UserInfo};
use crate::codec::{self, Accept, MAX_BODY_BYTES};
use crate::handlers::{self, Call};
use crate::metrics::Metrics;
use crate::request::{self, Query, Route};
use crate::response::{self, Body};
use crate::{discovery, openapi};

/// How many streams one HTTP/2 connection may carry at once (kube-apiserver's default).
const HTTP2_MAX_STREAMS: u32 = 1000;

/// What the server is configured with.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub service_cidr: Ipv4Cidr,
    pub node_port_range: (u16, u16),
    /// The address other cluster members and the `kubernetes` service reach this server at.
    pub advertise_address: IpAddr,
    pub port: u16,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            service_cidr: "10.43.0.0/16".parse().expect("valid default"),
            node_port_range: (30000, 32767),
            advertise_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 6443,
        }
    }
}

/// The state every request shares.
pub struct Inner {
    /// The built-in resources, which never change.
    builtin: Registry,
    /// The served resources: the built-in ones plus those of established
    /// CustomResourceDefinitions. Requests take a snapshot ([`ApiServer::registry`]); the CRD
    /// controller swaps in a new registry when definitions change.
    registry: RwLock<Arc<Registry>>,
    pub store: Arc<dyn Store>,
    pub tokens: Option<TokenFile>,
    pub metrics: Metrics,
    pub options: ServerOptions,
    pub(crate) namespace_cache: crate::admission::NamespaceCache,
    /// What admission reads for every new object; see [`crate::admission_cache`].
    pub(crate) admission_caches: Arc<crate::admission_cache::AdmissionCaches>,
    ready: AtomicBool,
    schemas: OnceLock<SchemaSet>,
    pub(crate) openapi_v2: openapi::v2::Cache,
    pub(crate) crd_state: crate::crd::State,
    /// Signs and accepts service account tokens; see [`ApiServer::set_token_issuer`].
    pub(crate) token_issuer: OnceLock<Arc<crate::serviceaccount::TokenIssuer>>,
    /// Connects to node agents for logs, exec and the like; see
    /// [`ApiServer::set_kubelet_client_config`].
    pub(crate) kubelet_client: OnceLock<Arc<crate::proxy::KubeletClient>>,
    /// The built-in metrics-server's points; see [`crate::metrics_server`].
    pub(crate) metrics_server: crate::metrics_server::MetricsServer,
}

/// The API server; cheap to clone.
#[derive(Clone)]
pub struct ApiServer(Arc<Inner>);

impl Deref for ApiServer {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl ApiServer {
    pub fn new(store: Arc<dyn Store>, tokens: Option<TokenFile>, options: ServerOptions) -> ApiServer {
        let builtin = Registry::builtin();
        let registry = RwLock::new(Arc::new(builtin.extended(Vec::new(), 0)));
        let admission_caches = Arc::new(crate::admission_cache::AdmissionCaches::new(&builtin));
        let store = Arc::new(crate::admission_cache::TrackingStore { inner: store, caches: admission_caches.clone() });
        ApiServer(Arc::new(Inner {
            builtin,
            registry,
            store,
            admission_caches,
            tokens,
            metrics: Metrics::default(),
            options,
            namespace_cache: Default::default(),
            ready: AtomicBool::new(false),
            schemas: OnceLock::new(),
            openapi_v2: Default::default(),
            crd_state: Default::default(),
            token_issuer: OnceLock::new(),
            kubelet_client: OnceLock::new(),
            metrics_server: Default::default(),
        }))
    }

    /// The served resources, as of now. Cheap: a lock held for an `Arc` clone.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves the built-in resources plus `custom` (the resources of established
    /// CustomResourceDefinitions), replacing the previous custom ones.
    pub(crate) fn set_custom_resources(&self, custom: Vec<Arc<ResourceType>>) {
        let mut current = self.registry.write().unwrap_or_else(|e| e.into_inner());
        let generation = current.generation() + 1;
        *current = Arc::new(self.builtin.extended(custom, generation));
    }

    /// The OpenAPI schemas of every built-in type, built on first use. Custom resources
    /// publish their own definitions ([`tug_api::kinds::KindOps::own_definitions`]).
    pub fn schemas(&self) -> &SchemaSet {
        self.schemas.get_or_init(|| {
            use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
            let mut set = SchemaSet::new();
            set.add_type::<meta::Patch>();
            set.add_type::<meta::DeleteOptions>();
            set.add_type::<meta::Status>();
            set.add_type::<k8s_openapi::api::autoscaling::v1::Scale>();
            for rt in self.builtin.all() {
                rt.ops.add_schema(&mut set);
            }
            set
        })
    }

    /// Marks the server ready (`/readyz`) once bootstrap is done.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Accepts TLS connections on `listener` until `shutdown` is cancelled.
    pub async fn serve(self, listener: TcpListener, tls: Arc<rustls::ServerConfig>, shutdown: CancellationToken) {
        let acceptor = TlsAcceptor::from(tls);
        // metrics.k8s.io is served from this server's own scrapes of the node agents.
        tokio::spawn(self.clone().run_metrics_server(shutdown.clone()));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let srv = self.clone();
            let acceptor = acceptor.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let cert_user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| authn::identity_from_client_cert(c.as_ref()));
                srv.serve_connection(tls, cert_user, &peer.to_string(), shutdown).await;
            });
        }
    }

    /// Serves one connection of the server's own components, made in memory rather than over
    /// TCP: `io` is one end of a [`tokio::io::duplex`] pipe, the component's client the other.
    ///
    /// The controllers, scheduler, cluster DNS and node agent of a `tug server` run in the
    /// server's process. Each of their requests and watch events went through TLS and the
    /// loopback TCP stack twice, once on each side, and under load that cost the server more
    /// than the requests' own handling: a created ConfigMap reaches the garbage collector and
    /// the quota controller as two watch events, sent as more TCP segments than the response
    /// to its creator. Requests on this connection take the same path through the server as any
    /// other, authentication (as `user`) included; only the transport differs. Nothing outside
    /// the process can reach it, so it needs no TLS.
    pub async fn serve_in_process(self, io: tokio::io::DuplexStream, user: UserInfo, shutdown: CancellationToken) {
        self.serve_connection(io, Some(user), "in-process", shutdown).await;
    }

    /// Serves HTTP/1.1 or HTTP/2 requests from one connection until it ends or `shutdown`.
    async fn serve_connection<I>(self, io: I, cert_user: Option<UserInfo>, peer: &str, shutdown: CancellationToken)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let srv = self.clone();
            let user = cert_user.clone();
            async move { Ok::<_, std::convert::Infallible>(srv.handle(req, user).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // kube-apiserver's `--http2-max-streams-per-connection` default: a client's
        // watches are streams of one connection, and a component keeps many open.
        builder.http2().max_concurrent_streams(HTTP2_MAX_STREAMS);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::select! {
            r = conn => if let Err(e) = r { debug!(%peer, error = %e, "connection ended with an error") },
            _ = shutdown.cancelled() => {}
        }
    }

    async fn authenticate(&self, headers: &HeaderMap, cert_user: Option<UserInfo>) -> Option<UserInfo> {
        if let Some(token) =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(authn::bearer_token)
        {
            if let Some(user) = self.tokens.as_ref().and_then(|t| t.authenticate_bearer(token)) {
                return Some(user);
            }
            return self.authenticate_service_account_token(token).await;
        }
        cert_user
    }

    /// Serves one request.
    pub async fn handle(&self, req: Request<Incoming>, cert_user: Option<UserInfo>) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let span = debug_span!("request", %method, %path);
        let (resp, labels) = async {
            let Some(user) = self.authenticate(req.headers(), cert_user).await else {
                return (response::error(&ApiError::unauthorized()), None);
            };
            match self.route(req, &user).await {
                (Ok(r), l) => (r, l),
                (Err(e), l) => (response::error(&e), l),
            }
        }
        .instrument(span)
        .await;
        let code = resp.status().as_u16();
        if let Some((verb, group, resource)) = labels {
            self.metrics.record(&verb, &group, &resource, code, started.elapsed());
        }
        debug!(%method, %path, code, elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "served");
        resp
    }

    async fn read_body(&self, req: Request<Incoming>) -> Result<(http::request::Parts, Bytes), ApiError> {
        // The body is read up to the limit even when Content-Length already says it is too
        // large, so that the client, still sending, gets to read the 413 rather than a reset.
        let (parts, body) = req.into_parts();
        let collected = Limited::new(body, MAX_BODY_BYTES).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ApiError::request_entity_too_large(MAX_BODY_BYTES)
            } else {
                ApiError::bad_request(format!("error reading the request body: {e}"))
            }
        })?;
        Ok((parts, collected.to_bytes()))
    }

    #[allow(clippy::type_complexity)]
    async fn route(
        &self,
        req: Request<Incoming>,
        user: &UserInfo,
    ) -> (Result<Response<Body>, ApiError>, Option<(String, String, String)>) {
        let query = Query::parse(req.uri().query());
        let method = req.method().clone();
        if method == Method::GET
            && let Some(doc) = self.service_account_discovery(req.uri().path())
        {
            return (doc.map(|d| response::json(200, &d)), None);
        }
        let route = match request::route(&method, req.uri().path(), &query) {
            Ok(r) => r,
            Err(e) => return (Err(e), None),
        };
        let accept_header = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_string);
        let registry = self.registry();
        if !matches!(route, Route::Resource(_)) && method != Method::GET && method != Method::HEAD {
            return (
                Err(ApiError::method_not_allowed(
                    method.as_str(),
                    tug_api::status::Subject { group: "", resource: "", kind: "" },
                )),
                None,
            );
        }
        let r = match route {
            Route::Version => Ok(response::json(200, &discovery::version_info())),
            Route::Health(which) => Ok(self.health(&which)),
            Route::Metrics => {
                let mut r = Response::new(response::full(self.metrics.render()));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
                Ok(r)
            }
            Route::CoreVersions | Route::Groups => {
                let core = route == Route::CoreVersions;
                match codec::negotiate(accept_header.as_deref()) {
                    Ok(Accept::AggregatedDiscovery) => {
                        let mut r = response::json(200, &discovery::aggregated(&registry, core));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            http::HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
                        );
                        Ok(r)
                    }
                    Ok(_) if core => Ok(response::json(
                        200,
                        &discovery::core_versions(&format!("{}:{}", self.options.advertise_address, self.options.port)),
                    )),
                    Ok(_) => Ok(response::json(200, &discovery::group_list(&registry))),
                    Err(e) => Err(e),
                }
            }
            Route::Group(g) => {
                discovery::group(&registry, &g).map(|d| response::json(200, &d)).ok_or_else(ApiError::path_not_found)
            }
            Route::ResourceList { group, version } => discovery::resource_list(&registry, &group, &version)
                .map(|d| response::json(200, &d))
                .ok_or_else(ApiError::path_not_found),
            Route::OpenApiV2 => {
                let if_none_match = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
                openapi::v2::serve(self, accept_header.as_deref(), if_none_match).await
            }
            Route::OpenApiV3Root => Ok(response::json(200, &openapi::root(&registry))),
            Route::OpenApiV3 { group, version } => {
                openapi::group_version(self, &registry, &group, &version).map(|d| response::json(200, &d))
            }
            Route::NotFound => Err(ApiError::path_not_found()),
            Route::Resource(rr) if rr.group == crate::metrics_server::GROUP => {
                crate::metrics_server::serve(self, &rr, &query).await
            }
            Route::Resource(rr) => {
                let labels = Some((
                    if rr.verb == request::Verb::Watch { "WATCH".to_string() } else { rr.verb.as_str().to_uppercase() },
                    rr.group.clone(),
                    rr.resource.clone(),
                ));
                let Some(rt) = registry.lookup(&rr.group, &rr.version, &rr.resource) else {
                    return (Err(ApiError::path_not_found()), labels);
                };
                if crate::proxy::handles(rt, &rr) {
                    // Proxied to the node agent with the body unread: upgrades need the request.
                    return (crate::proxy::serve(self, rt, &rr, &query, req).await, labels);
                }
                let accept = match codec::negotiate(accept_header.as_deref()) {
                    Ok(a) => a,
                    Err(e) => return (Err(e), labels),
                };
                let content_type =
                    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
                let user_agent =
                    req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
                let body = match self.read_body(req).await {
                    Ok((_, b)) => b,
                    Err(e) => return (Err(e), labels),
                };
                let call =
                    Call { srv: self, rt, req: &rr, query: &query, accept, content_type, user_agent, body, user };
                return (handlers::serve(call).await, labels);
            }
        };
        (r, None)
    }

    fn health(&self, which: &str) -> Response<Body> {
        if which == "readyz" && !self.ready.load(Ordering::SeqCst) {
            return response::text(500, "[-]bootstrap not finished\nreadyz check failed\n");
        }
        response::text(200, "ok")
    }

    /// Creates an object as a client would; if one of that name exists, replaces its contents
    /// (other than metadata and status) when `reconcile` is set, else leaves it alone.
    pub(crate) async fn ensure_object(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        obj: Value,
        reconcile: bool,
    ) -> Result<(), ApiError> {
        let registry = self.registry();
        let rt = registry.lookup(group, version, plural).expect("served resource");
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
        match self.read(rt, ns.as_deref(), &name).await {
            Ok(_) if !reconcile => Ok(()),
            Ok(_) => {
                self.update_object(rt, ns.as_deref(), &name, None, false, |current| {
                    let mut next = current.clone();
                    for (k, v) in obj.as_object().into_iter().flatten() {
                        if !matches!(k.as_str(), "metadata" | "status") {
                            next[k] = v.clone();
                        }
                    }
                    next["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
                    Ok(crate::objects::Mutation::Write(next))
                })
                .await?;
                Ok(())
            }
            Err(e) if e.code == 404 => {
                let admitted = self.admit_new(rt, obj)?;
                match self.store_new(rt, admitted.object, false).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.reason == "AlreadyExists" => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}
