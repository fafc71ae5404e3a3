//! `port-forward`: upstream's `kubelet/pkg/cri/streaming/portforward`.
//!
//! Three transports reach the same forwarding:
//! - SPDY (`portforward.k8s.io`, kubectl before 1.31 and the fallback of newer ones): for every
//!   local connection the client opens an error stream and a data stream carrying the same
//!   `port` and `requestID` headers; the pair is forwarded to one new connection to the port.
//! - SPDY tunnelled in a WebSocket (`SPDY/3.1+portforward.k8s.io`, KEP-4006, kubectl 1.31+): the
//!   same SPDY session, its bytes carried in binary WebSocket messages.
//! - The WebSocket channel protocol (`v4.channel.k8s.io` or none, with the ports in the `ports`
//!   query; the Python client's): channel 2n carries port n's data, 2n+1 its errors, and the
//!   server's first message on each channel is the port (u16, little endian). One connection per
//!   port.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tug_runtime::cri::RuntimeError;

use super::spdy::{self, SpdyStream};
use super::websocket::{self, CLOSE_NORMAL, Message};
use super::{StreamingError, form_pairs, plain_error};

/// The SPDY port-forward protocol.
const PROTOCOL: &str = "portforward.k8s.io";
/// KEP-4006's WebSocket subprotocol for SPDY tunnelled in a WebSocket.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The WebSocket channel protocol (upstream's kubelet also accepts no protocol at all).
const WEBSOCKET_PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];

pub(super) fn serve<C, Fut>(req: Request<Incoming>, connect: C) -> Response<Full<Bytes>>
where
    C: Fn(u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tokio::net::TcpStream, RuntimeError>> + Send + 'static,
{
    let connect = Arc::new(connect);
    if !websocket::is_websocket_request(req.headers()) {
        let response = match spdy::upgrade_response(req.headers(), &[PROTOCOL]) {
            Ok((_, response)) => response,
            Err(response) => return response,
        };
        tokio::spawn(async move {
            if let Some(io) = upgrade(req).await {
                run_spdy(io, connect).await;
            }
        });
        return response;
    }
    let offered = websocket::offered_protocols(req.headers());
    if offered.iter().any(|p| p == TUNNEL_PROTOCOL) {
        let response = match websocket::handshake_response(req.headers(), TUNNEL_PROTOCOL) {
            Ok(response) => response,
            Err(response) => return response,
        };
        tokio::spawn(async move {
            if let Some(io) = upgrade(req).await {
                let (reader, writer) = websocket::split(io, false);
                run_spdy(websocket::into_byte_stream(reader, writer), connect).await;
            }
        });
        return response;
    }
    let protocol = if offered.is_empty() {
        ""
    } else {
        match WEBSOCKET_PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) {
            Some(p) => p,
            None => {
                return plain_error(
                    StatusCode::BAD_REQUEST,
                    format!("requested protocol(s) are not supported: {offered:?}; supports {WEBSOCKET_PROTOCOLS:?}"),
                );
            }
        }
    };
    let ports = match parse_ports(req.uri().query()) {
        Ok(ports) => ports,
        Err(message) => return plain_error(StatusCode::BAD_REQUEST, message),
    };
    let response = match websocket::handshake_response(req.headers(), protocol) {
        Ok(response) => response,
        Err(response) => return response,
    };
    tokio::spawn(async move {
        if let Some(io) = upgrade(req).await {
            run_websocket(io, ports, connect).await;
        }
    });
    response
}

async fn upgrade(req: Request<Incoming>) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match hyper::upgrade::on(req).await {
        Ok(upgraded) => Some(TokioIo::new(upgraded)),
        Err(error) => {
            tracing::warn!(error = %StreamingError::Upgrade(error), "portforward: upgrade failed");
            None
        }
    }
}

/// The `ports` query of the WebSocket protocol: repeated or comma-separated port numbers.
fn parse_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (name, value) in form_pairs(query.unwrap_or("")) {
        if name != "ports" {
            continue;
        }
        for port in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match port.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return Err(format!("unable to parse {port:?} as a port: invalid port")),
            }
        }
    }
    if ports.is_empty() {
        return Err("at least 1 port must be specified".to_string());
    }
    Ok(ports)
}

/// The error and data streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
}

async fn run_spdy<T, C, Fut>(io: T, connect: Arc<C>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
    C: Fn(u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tokio::net::TcpStream, RuntimeError>> + Send + 'static,
{
    let (conn, mut incoming) = match spdy::Connection::start(io, true) {
        Ok(started) => started,
        Err(error) => {
            tracing::warn!(%error, "portforward: starting the spdy session failed");
            return;
        }
    };
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = incoming.recv().await {
        let kind = stream.header("streamtype").unwrap_or_default().to_ascii_lowercase();
        // Clients before requestID paired the streams by id: the data stream follows its error
        // stream (upstream's `requestID`).
        let request_id = match stream.header("requestid") {
            Some(id) => id.to_string(),
            None if kind == "data" => stream.id.saturating_sub(2).to_string(),
            None => stream.id.to_string(),
        };
        let pair = pairs.entry(request_id.clone()).or_default();
        let slot = match kind.as_str() {
            "error" => &mut pair.error,
            "data" => &mut pair.data,
            _ => {
                tracing::debug!(stream_type = %kind, "portforward: unexpected stream type, resetting it");
                stream.writer.reset();
                continue;
            }
        };
        if slot.is_some() {
            tracing::debug!(%request_id, stream_type = %kind, "portforward: duplicate stream, resetting it");
            stream.writer.reset();
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some() && pair.data.is_some() {
            let pair = pairs.remove(&request_id).expect("the pair was just filled");
            let (Some(error), Some(data)) = (pair.error, pair.data) else { continue };
            tokio::spawn(forward_spdy_pair(error, data, connect.clone()));
        }
    }
    conn.close().await;
}

async fn forward_spdy_pair<C, Fut>(error: SpdyStream, data: SpdyStream, connect: Arc<C>)
where
    C: Fn(u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tokio::net::TcpStream, RuntimeError>> + Send + 'static,
{
    let port_header = data.header("port").unwrap_or_default().to_string();
    let port = match port_header.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => {
            let message = format!("error parsing port {port_header:?}: invalid port");
            let _ = error.writer.write(message.as_bytes()).await;
            error.writer.finish();
            data.writer.reset();
            return;
        }
    };
    let target = match connect(port).await {
        Ok(target) => target,
        Err(e) => {
            tracing::info!(port, error = %e, "portforward: connecting to the port failed");
            let message = format!("error forwarding port {port} to pod: {e}");
            let _ = error.writer.write(message.as_bytes()).await;
            error.writer.finish();
            data.writer.finish();
            return;
        }
    };
    let (mut from_target, mut to_target) = target.into_split();
    let SpdyStream { reader: mut from_client, writer: to_client, .. } = data;
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut to_target).await;
        // The client half-closed: so does the connection to the port.
        let _ = to_target.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = tokio::select! {
            read = from_target.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = to_client.gone() => break,
        };
        if to_client.write(&buf[..n]).await.is_err() {
            break;
        }
    }
    // kubectl waits for the error stream to end once the remote side is done.
    to_client.finish();
    error.writer.finish();
}

async fn run_websocket<C, Fut>(io: TokioIo<hyper::upgrade::Upgraded>, ports: Vec<u16>, connect: Arc<C>)
where
    C: Fn(u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tokio::net::TcpStream, RuntimeError>> + Send + 'static,
{
    let (mut reader, writer) = websocket::split(io, false);
    let mut inputs = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_channel, error_channel) = ((2 * i) as u8, (2 * i + 1) as u8);
        let port_bytes = port.to_le_bytes();
        for channel in [data_channel, error_channel] {
            let _ = writer.binary(&[channel, port_bytes[0], port_bytes[1]]).await;
        }
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        inputs.push(Some(tx));
        let writer = writer.clone();
        let connect = connect.clone();
        tasks.push(tokio::spawn(async move {
            forward_websocket_port(port, data_channel, error_channel, rx, writer, connect).await;
        }));
    }
    while let Ok(Some(Message::Binary(mut data) | Message::Text(mut data))) = reader.next().await {
        if data.is_empty() {
            continue;
        }
        let channel = usize::from(data[0]);
        data.advance(1);
        if channel % 2 != 0 || channel / 2 >= inputs.len() {
            continue;
        }
        let index = channel / 2;
        if let Some(tx) = &inputs[index]
            && !data.is_empty()
            && tx.send(data).is_err()
        {
            inputs[index] = None;
        }
    }
    drop(inputs);
    for task in tasks {
        task.abort();
    }
    writer.close(CLOSE_NORMAL).await;
}

async fn forward_websocket_port<C, Fut>(
    port: u16,
    data_channel: u8,
    error_channel: u8,
    mut from_client: mpsc::UnboundedReceiver<Bytes>,
    writer: websocket::WsWriter,
    connect: Arc<C>,
) where
    C: Fn(u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tokio::net::TcpStream, RuntimeError>> + Send + 'static,
{
    let target = match connect(port).await {
        Ok(target) => target,
        Err(e) => {
            let message = format!("error forwarding port {port} to pod: {e}");
            let _ = writer.binary(&[&[error_channel][..], message.as_bytes()].concat()).await;
            return;
        }
    };
    let (mut from_target, mut to_target) = target.into_split();
    tokio::spawn(async move {
        while let Some(data) = from_client.recv().await {
            if to_target.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to_target.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    buf[0] = data_channel;
    loop {
        match from_target.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.binary(&buf[..=n]).await.is_err() {
                    break;
                }
            }
        }
    }
}
