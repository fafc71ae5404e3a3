//! Running one probe: exec, httpGet, tcpSocket or grpc, each bounded by `timeoutSeconds`,
//! with upstream's rules for success and its wording for failures (what `kubectl describe`
//! shows in the Unhealthy events).

use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;
use tug_runtime::cri::RuntimeService;

/// The User-Agent of HTTP probes (upstream's `kube-probe/<major>.<minor>`).
const USER_AGENT: &str = "kube-probe/1.36";
/// How much of an HTTP body a failure message quotes (upstream reads at most 10 KiB).
const MAX_BODY: usize = 10 * 1024;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Failed, with the output or error upstream reports.
    Failure(String),
}

/// Where a probe runs: the container it checks and the pod's address.
pub struct Target<'a> {
    pub container: &'a Container,
    pub container_id: &'a str,
    pub pod_ip: &'a str,
    pub runtime: &'a dyn RuntimeService,
}

fn timeout_of(probe: &Probe) -> Duration {
    Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64)
}

/// Runs `probe` once.
pub async fn run(probe: &Probe, target: &Target<'_>) -> Outcome {
    match &probe.exec {
        Some(exec) => exec_probe(exec.command.as_deref().unwrap_or_default(), timeout_of(probe), target).await,
        None => network(probe, target.container, target.pod_ip).await,
    }
}

/// Runs a probe that reaches the pod over the network (httpGet, tcpSocket, grpc) once.
pub async fn network(probe: &Probe, container: &Container, pod_ip: &str) -> Outcome {
    let timeout = timeout_of(probe);
    if let Some(http) = &probe.http_get {
        let Some(port) = resolve_port(&http.port, container) else {
            return Outcome::Failure(format!("unable to find port {:?} in container {}", http.port, container.name));
        };
        let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_owned());
        let https = http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        let path = if path.starts_with('/') { path } else { format!("/{path}") };
        let headers: Vec<(String, String)> =
            http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        return http_probe(https, &host, port, &path, &headers, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = resolve_port(&tcp.port, container) else {
            return Outcome::Failure(format!("unable to find port {:?} in container {}", tcp.port, container.name));
        };
        let host = tcp.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_owned());
        return tcp_probe(&host, port, timeout).await;
    }
    if let Some(grpc) = &probe.grpc {
        let Ok(port) = u16::try_from(grpc.port) else {
            return Outcome::Failure(format!("invalid port {}", grpc.port));
        };
        return grpc_probe(pod_ip, port, grpc.service.as_deref().unwrap_or_default(), timeout).await;
    }
    Outcome::Failure("missing probe handler".into())
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p > 0),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        },
    }
}

async fn exec_probe(command: &[String], timeout: Duration, target: &Target<'_>) -> Outcome {
    match target.runtime.exec_sync(target.container_id, command, timeout).await {
        Ok(result) if result.exit_code == 0 => Outcome::Success,
        Ok(result) => {
            let mut output = String::from_utf8_lossy(&result.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&result.stderr));
            Outcome::Failure(output)
        }
        Err(tug_runtime::cri::RuntimeError::Unavailable(m)) if m.contains("timed out") => {
            Outcome::Failure(format!("command {command:?} timed out"))
        }
        Err(error) => Outcome::Failure(error.to_string()),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let address = host_port(host, port);
    match tokio::time::timeout(timeout, TcpStream::connect(&address)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("dial tcp {address}: connect: {}", errno_text(&e))),
        Err(_) => Err(format!("dial tcp {address}: i/o timeout")),
    }
}

/// An I/O error as Go words it ("connection refused", not "Connection refused (os error 111)").
fn errno_text(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::HostUnreachable => "no route to host".into(),
        std::io::ErrorKind::NetworkUnreachable => "network is unreachable".into(),
        _ => error.to_string(),
    }
}

async fn tcp_probe(host: &str, port: u16, timeout: Duration) -> Outcome {
    match connect(host, port, timeout).await {
        Ok(_) => Outcome::Success,
        Err(message) => Outcome::Failure(message),
    }
}

async fn http_probe(
    https: bool,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Outcome {
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{}{path}", host_port(host, port));
    let fail = |why: String| Outcome::Failure(format!("Get \"{url}\": {why}"));
    let attempt = async {
        let stream = connect(host, port, timeout).await?;
        let mut request = http::Request::get(path)
            .header(http::header::HOST, host_port(host, port))
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::ACCEPT, "*/*");
        for (name, value) in headers {
            // A probe's own Host or User-Agent header replaces ours, as upstream.
            if let Some(existing) = request.headers_mut() {
                existing.remove(name.as_str());
            }
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let response = if https {
            let tls = crate::prober::tls::insecure_connector();
            let name = rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
            let stream = tls.connect(name, stream).await.map_err(|e| e.to_string())?;
            send_http1(stream, request).await?
        } else {
            send_http1(stream, request).await?
        };
        Ok::<_, String>(response)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => fail("context deadline exceeded (Client.Timeout exceeded while awaiting headers)".into()),
        Ok(Err(why)) => fail(why),
        Ok(Ok((status, body))) if (200..400).contains(&status) => {
            let _ = body;
            Outcome::Success
        }
        Ok(Ok((status, _))) => Outcome::Failure(format!("HTTP probe failed with statuscode: {status}")),
    }
}

async fn send_http1<S>(stream: S, request: http::Request<Full<Bytes>>) -> Result<(u16, Vec<u8>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| e.to_string());
    let result = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let mut body = Vec::new();
            let mut incoming = response.into_body();
            while body.len() < MAX_BODY {
                match incoming.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(mut data) = frame.into_data() {
                            let take = data.remaining().min(MAX_BODY - body.len());
                            body.extend_from_slice(&data.copy_to_bytes(take));
                        }
                    }
                    _ => break,
                }
            }
            Ok((status, body))
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// The gRPC health checking protocol (`grpc.health.v1.Health/Check`) over cleartext HTTP/2.
async fn grpc_probe(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let address = host_port(host, port);
    let attempt = async {
        let stream = connect(host, port, timeout)
            .await
            .map_err(|_| format!("timeout: failed to connect service \"{address}\" within {}s", timeout.as_secs()))?;
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| format!("failed to connect service \"{address}\": {e}"))?;
        let driver = tokio::spawn(connection);
        let request = http::Request::post(format!("http://{address}/grpc.health.v1.Health/Check"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::from(health_check_request(service))))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("rpc error: {e}"));
        let result = match response {
            Ok(response) => {
                let header_status = grpc_status(response.headers());
                let collected = response.into_body().collect().await.map_err(|e| format!("rpc error: {e}"))?;
                let trailer_status = collected.trailers().and_then(grpc_status);
                let body = collected.to_bytes();
                match trailer_status.or(header_status) {
                    Some(0) | None => Ok(serving_status(&body)),
                    Some(code) => Err(format!("rpc error: code = {code}")),
                }
            }
            Err(e) => Err(e),
        };
        driver.abort();
        result
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Outcome::Failure(format!("timeout: health rpc did not complete within {}s", timeout.as_secs())),
        Ok(Err(why)) => Outcome::Failure(why),
        Ok(Ok(1)) => Outcome::Success,
        Ok(Ok(status)) => {
            let name = match status {
                0 => "UNKNOWN",
                2 => "NOT_SERVING",
                3 => "SERVICE_UNKNOWN",
                _ => "UNKNOWN",
            };
            Outcome::Failure(format!("service unhealthy (responded with \"{name}\")"))
        }
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// A length-prefixed `HealthCheckRequest { service = 1 }` message.
pub fn health_check_request(service: &str) -> Vec<u8> {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        push_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The `status` (field 1) of a length-prefixed `HealthCheckResponse`; 0 (UNKNOWN) when absent.
pub fn serving_status(framed: &[u8]) -> u64 {
    let Some(message) = framed.get(5..) else { return 0 };
    let mut i = 0;
    while i < message.len() {
        let key = message[i];
        i += 1;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let mut value = 0u64;
                let mut shift = 0;
                while i < message.len() {
                    let b = message[i];
                    i += 1;
                    value |= u64::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                if field == 1 {
                    return value;
                }
            }
            2 => {
                let len = message.get(i).copied().unwrap_or(0) as usize;
                i += 1 + len;
            }
            _ => return 0,
        }
    }
    0
}
