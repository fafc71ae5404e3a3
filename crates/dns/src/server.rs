//! The DNS wire side: UDP and TCP listeners on tokio, each query answered from the current
//! [`View`] or by the [`Forwarder`].

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::view::{Lookup, View};

/// Largest UDP response we send to an EDNS client (the DNS flag day's safe size).
const EDNS_PAYLOAD: u16 = 1232;
/// Without EDNS a UDP response has at most 512 bytes (RFC 1035).
const CLASSIC_PAYLOAD: usize = 512;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The view being served; replaced whole when the cluster changes, so a query sees one
/// consistent snapshot.
#[derive(Debug)]
pub struct SharedView(RwLock<Arc<View>>);

impl SharedView {
    pub fn new(view: View) -> Self {
        Self(RwLock::new(Arc::new(view)))
    }

    pub fn get(&self) -> Arc<View> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, view: View) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
    }
}

/// Answers queries: the cluster's names from the view, everything else through the forwarder.
#[derive(Debug)]
pub struct Handler {
    view: Arc<SharedView>,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Handler {
    pub fn new(view: Arc<SharedView>, forwarder: Forwarder) -> Self {
        Self { view, forwarder, metrics: Arc::default() }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The response to one wire-format request, or None when it is not worth one (too short
    /// to carry an id, or itself a response).
    pub async fn handle(&self, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let started = std::time::Instant::now();
        self.metrics.request(transport);
        let request = match Message::from_vec(request) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "undecodable query");
                let id = u16::from_be_bytes([*request.first()?, *request.get(1)?]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok();
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let response = self.respond(&request).await;
        self.metrics.response(response.metadata.response_code.low(), started.elapsed());
        let bytes = response.to_vec().ok()?;
        let limit = match (&transport, &request.edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, Some(edns)) => usize::from(edns.max_payload().min(EDNS_PAYLOAD)),
            (Transport::Udp, None) => CLASSIC_PAYLOAD,
        };
        if bytes.len() <= limit {
            return Some(bytes);
        }
        // Too big for this datagram: the client retries over TCP.
        response.truncate().to_vec().ok()
    }

    async fn respond(&self, request: &Message) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.add_queries(request.queries.iter().cloned());
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response;
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        let view = self.view.get();
        let lookup = if query.query_class == DNSClass::IN || query.query_class == DNSClass::ANY {
            view.lookup(&query.name, query.query_type)
        } else {
            Lookup::NotOurs
        };
        match lookup {
            // Before the cluster's objects are read, names of the cluster domain are neither
            // known nor known to be missing: a client should retry, not cache a negative
            // answer (CoreDNS answers SERVFAIL until its informers have synced, too).
            Lookup::Answer(_) | Lookup::NxDomain if !view.synced() => {
                response.metadata.response_code = ResponseCode::ServFail;
            }
            Lookup::Answer(answers) => {
                response.metadata.authoritative = true;
                if answers.is_empty() {
                    response.add_authority(view.soa());
                } else {
                    if query.query_type == RecordType::SRV {
                        response.add_additionals(view.additionals(&answers));
                    }
                    response.add_answers(answers);
                }
            }
            Lookup::NxDomain => {
                response.metadata.authoritative = true;
                response.metadata.response_code = ResponseCode::NXDomain;
                response.add_authority(view.soa());
            }
            Lookup::NotOurs => match self.forwarder.resolve(query).await {
                Ok(forwarded) => {
                    self.metrics.cache(forwarded.from_cache);
                    response.metadata.response_code = forwarded.response_code;
                    response.add_answers(forwarded.answers);
                    response.add_authorities(forwarded.authorities);
                    response.add_additionals(forwarded.additionals);
                }
                Err(e) => {
                    debug!(name = %query.name, error = %e, "forwarding failed");
                    response.metadata.response_code = ResponseCode::ServFail;
                }
            },
        }
        response
    }
}

/// Serves DNS over UDP on `socket` until `shutdown`.
pub async fn serve_udp(socket: UdpSocket, handler: Arc<Handler>, shutdown: CancellationToken) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here: keep serving.
                    debug!(error = %e, "receiving a DNS datagram");
                    continue;
                }
            },
        };
        let request = buf[..n].to_vec();
        let (socket, handler) = (socket.clone(), handler.clone());
        // Each query on its own task: a slow upstream must not hold up cluster names.
        tokio::spawn(async move {
            if let Some(response) = handler.handle(&request, Transport::Udp).await
                && let Err(e) = socket.send_to(&response, peer).await
            {
                debug!(%peer, error = %e, "sending a DNS response");
            }
        });
    }
}

/// Serves DNS over TCP (RFC 7766 length-prefixed messages) on `listener` until `shutdown`.
pub async fn serve_tcp(listener: TcpListener, handler: Arc<Handler>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "accepting a DNS connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = serve_connection(stream, &handler) => if let Err(e) = r {
                    debug!(%peer, error = %e, "DNS connection ended");
                },
            }
        });
    }
}

async fn serve_connection(mut stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut request).await?;
        let Some(response) = handler.handle(&request, Transport::Tcp).await else { continue };
        let len = u16::try_from(response.len()).unwrap_or(u16::MAX);
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&response).await?;
    }
}

/// Binds UDP and TCP on `addr` (port 0 picks one free port for both) and serves until
/// `shutdown`; returns the address bound.
pub async fn listen(
    addr: SocketAddr,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (udp, tcp, bound) = bind_both(addr).await?;
    let task = tokio::spawn(async move {
        tokio::join!(serve_udp(udp, handler.clone(), shutdown.clone()), serve_tcp(tcp, handler, shutdown));
    });
    Ok((bound, task))
}

/// UDP and TCP sockets on one address. With port 0, the port UDP got may be taken for TCP by
/// someone else; then another port is tried.
async fn bind_both(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    const ATTEMPTS: usize = 16;
    let mut attempt = 1;
    loop {
        let udp = UdpSocket::bind(addr).await?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempt < ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
