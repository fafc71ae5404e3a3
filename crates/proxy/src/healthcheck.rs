//! Health check node ports. A LoadBalancer service with `externalTrafficPolicy: Local` sends
//! outside traffic only to endpoints on the node it arrives at, so a load balancer must know
//! which nodes have one: the API server gives the service a `healthCheckNodePort`, and every
//! node's proxy answers HTTP there with 200 when the node has local endpoints for the service
//! and 503 when it has none, in upstream's JSON shape.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::serviceport::ServicePort;

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// The health check ports the services want: per port, the service and its local endpoints
/// (the most any of its ports has, as upstream counts per service).
pub fn wanted(ports: &[ServicePort]) -> BTreeMap<u16, Target> {
    let mut wanted: BTreeMap<u16, Target> = BTreeMap::new();
    for port in ports {
        let Some(hc) = port.health_check_node_port else { continue };
        let target = wanted.entry(hc).or_insert_with(|| Target {
            namespace: port.namespace.clone(),
            name: port.name.clone(),
            local_endpoints: 0,
        });
        target.local_endpoints = target.local_endpoints.max(port.local_endpoints.len());
    }
    wanted
}

/// The answer for `target`: status, body, and the endpoint-weight header upstream adds.
pub fn answer(target: &Target) -> (u16, String) {
    let body = format!(
        "{{\"service\":{{\"namespace\":\"{}\",\"name\":\"{}\"}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}",
        target.namespace, target.name, target.local_endpoints
    );
    (if target.local_endpoints > 0 { 200 } else { 503 }, body)
}

/// The listeners this proxy runs, one per health check port.
#[derive(Default)]
pub struct HealthCheckServers {
    servers: HashMap<u16, (Arc<Mutex<Target>>, CancellationToken)>,
}

impl HealthCheckServers {
    /// Makes the listeners match `wanted`: new ports bound, counts updated, unwanted ports
    /// closed. A port that cannot be bound is logged and tried again at the next sync.
    pub async fn sync(&mut self, wanted: BTreeMap<u16, Target>, shutdown: &CancellationToken) {
        self.servers.retain(|port, (_, stop)| {
            let keep = wanted.contains_key(port);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (port, target) in wanted {
            if let Some((current, _)) = self.servers.get(&port) {
                if let Ok(mut current) = current.lock() {
                    *current = target;
                }
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let shared = Arc::new(Mutex::new(target));
                    let stop = shutdown.child_token();
                    tokio::spawn(serve(listener, shared.clone(), stop.clone()));
                    tracing::debug!(port, "serving a health check node port");
                    self.servers.insert(port, (shared, stop));
                }
                Err(error) => tracing::warn!(port, %error, "cannot serve a health check node port"),
            }
        }
    }
}

async fn serve(listener: TcpListener, target: Arc<Mutex<Target>>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let target = target.clone();
        let service = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
            let target = target.lock().map(|t| t.clone()).ok();
            async move {
                let Some(target) = target else {
                    return Ok::<_, Infallible>(
                        Response::builder().status(500).body(Full::default()).unwrap_or_default(),
                    );
                };
                let (status, body) = answer(&target);
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("x-content-type-options", "nosniff")
                    .header("x-load-balancing-endpoint-weight", target.local_endpoints.to_string())
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default();
                Ok(response)
            }
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = builder.serve_connection(TokioIo::new(stream), service) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_local_endpoints_answers_503() {
        let target = Target { namespace: "ns".into(), name: "web".into(), local_endpoints: 0 };
        let (status, body) = answer(&target);
        assert_eq!(status, 503);
        assert_eq!(
            body,
            r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":0,"serviceProxyHealthy":true}"#
        );
        assert_eq!(answer(&Target { local_endpoints: 2, ..target }).0, 200);
    }

    #[tokio::test]
    async fn listeners_follow_the_wanted_ports() {
        let shutdown = CancellationToken::new();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut servers = HealthCheckServers::default();
        let target = Target { namespace: "ns".into(), name: "web".into(), local_endpoints: 1 };
        servers.sync(BTreeMap::from([(port, target)]), &shutdown).await;
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok());
        servers.sync(BTreeMap::new(), &shutdown).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "closed when unwanted");
        shutdown.cancel();
    }
}
