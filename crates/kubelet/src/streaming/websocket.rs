//! RFC 6455 WebSocket: the server handshake and the message framing the channel protocols
//! (`v5.channel.k8s.io` and older) and the port-forward tunnel ride on.
//!
//! Small on purpose: binary and text messages, fragmentation, ping/pong and close. No
//! extensions (permessage-deflate is never offered by upstream's clients for these protocols).

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use sha1::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{StreamingError, connection_upgrade, header_tokens, plain_error};

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Larger messages are refused: clients send at most 32 KiB of stdin or tunnelled SPDY at once.
const MAX_MESSAGE: usize = 16 << 20;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The close code for a normal end of the session.
pub(super) const CLOSE_NORMAL: u16 = 1000;

/// Whether a request asks for a WebSocket upgrade (upstream's `wsstream.IsWebSocketRequest`).
pub(super) fn is_websocket_request(headers: &HeaderMap) -> bool {
    connection_upgrade(headers)
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// The subprotocols the client offers, in its order of preference.
pub(super) fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    header_tokens(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str())
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(super) fn accept_key(key: &str) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(key.trim().as_bytes());
    hasher.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

/// The 101 answer selecting `protocol`, or a 400 when the request is not a valid version 13
/// handshake.
#[allow(clippy::result_large_err)]
pub(super) fn handshake_response(
    headers: &HeaderMap,
    protocol: &str,
) -> Result<Response<Full<Bytes>>, Response<Full<Bytes>>> {
    let version = headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok());
    if version.map(str::trim) != Some("13") {
        return Err(plain_error(
            StatusCode::BAD_REQUEST,
            "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()) else {
        return Err(plain_error(
            StatusCode::BAD_REQUEST,
            "websocket: not a websocket handshake: 'Sec-WebSocket-Key' header is missing or blank",
        ));
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key(key)).expect("base64 is a valid header value"),
    );
    if !protocol.is_empty() {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(protocol).expect("protocol names are tokens"));
    }
    Ok(response)
}

/// A complete data message, or the peer's close.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Message {
    Binary(Bytes),
    Text(Bytes),
}

/// The reading half: reassembles messages and answers pings and closes itself.
pub(super) struct WsReader {
    io: Box<dyn AsyncRead + Send + Unpin>,
    writer: WsWriter,
}

impl WsReader {
    /// The next data message; `None` once the peer closed the connection.
    pub(super) async fn next(&mut self) -> Result<Option<Message>, StreamingError> {
        let mut message: Option<(u8, Vec<u8>)> = None;
        loop {
            let Some((fin, opcode, payload)) = self.read_frame().await? else {
                return Ok(None);
            };
            match opcode {
                OP_PING => self.writer.send(OP_PONG, &payload).await?,
                OP_PONG => {}
                OP_CLOSE => {
                    // Echo the status code, as RFC 6455 section 5.5.1 asks.
                    let code = payload.get(..2).map_or(CLOSE_NORMAL, |c| u16::from_be_bytes([c[0], c[1]]));
                    self.writer.close(code).await;
                    return Ok(None);
                }
                OP_TEXT | OP_BINARY => {
                    if message.is_some() {
                        return Err(StreamingError::WebSocket("new message inside a fragmented one"));
                    }
                    if fin {
                        return Ok(Some(to_message(opcode, payload)));
                    }
                    message = Some((opcode, payload));
                }
                OP_CONTINUATION => {
                    let Some((first, mut data)) = message.take() else {
                        return Err(StreamingError::WebSocket("continuation frame without a message"));
                    };
                    data.extend_from_slice(&payload);
                    if data.len() > MAX_MESSAGE {
                        return Err(StreamingError::WebSocket("message too large"));
                    }
                    if fin {
                        return Ok(Some(to_message(first, data)));
                    }
                    message = Some((first, data));
                }
                _ => return Err(StreamingError::WebSocket("unknown opcode")),
            }
        }
    }

    /// One frame, unmasked; `None` at a clean end of stream between frames.
    async fn read_frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, StreamingError> {
        let mut head = [0u8; 2];
        match self.io.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => u64::from(self.io.read_u16().await?),
            127 => self.io.read_u64().await?,
            n => u64::from(n),
        };
        if len > MAX_MESSAGE as u64 {
            return Err(StreamingError::WebSocket("frame too large"));
        }
        let mut mask = [0u8; 4];
        if masked {
            self.io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        self.io.read_exact(&mut payload).await?;
        if masked {
            apply_mask(&mut payload, mask);
        }
        Ok(Some((fin, opcode, payload)))
    }
}

fn to_message(opcode: u8, payload: Vec<u8>) -> Message {
    if opcode == OP_TEXT { Message::Text(payload.into()) } else { Message::Binary(payload.into()) }
}

fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

struct WriterState {
    io: Box<dyn AsyncWrite + Send + Unpin>,
    closed: bool,
}

/// The writing half, shared by every task that sends (output pumps, pong replies, the close).
#[derive(Clone)]
pub(super) struct WsWriter {
    state: Arc<tokio::sync::Mutex<WriterState>>,
    /// Clients mask their frames (RFC 6455 section 5.3); servers must not.
    client: bool,
}

impl WsWriter {
    pub(super) async fn binary(&self, payload: &[u8]) -> Result<(), StreamingError> {
        self.send(OP_BINARY, payload).await
    }

    async fn send(&self, opcode: u8, payload: &[u8]) -> Result<(), StreamingError> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        let mask_bit = if self.client { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let start = frame.len();
        if self.client {
            let mask = fastrand::u32(..).to_be_bytes();
            frame.extend_from_slice(&mask);
            frame.extend_from_slice(payload);
            apply_mask(&mut frame[start + 4..], mask);
        } else {
            frame.extend_from_slice(payload);
        }
        let mut state = self.state.lock().await;
        if state.closed {
            return Err(StreamingError::ConnectionClosed);
        }
        state.io.write_all(&frame).await?;
        state.io.flush().await?;
        Ok(())
    }

    /// Sends a close frame (once) and shuts the connection's write side down.
    pub(super) async fn close(&self, code: u16) {
        let _ = self.send(OP_CLOSE, &code.to_be_bytes()).await;
        let mut state = self.state.lock().await;
        if !state.closed {
            state.closed = true;
            let _ = state.io.shutdown().await;
        }
    }
}

/// Splits an upgraded connection into its reading and writing halves.
pub(super) fn split<T>(io: T, client: bool) -> (WsReader, WsWriter)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let writer = WsWriter {
        state: Arc::new(tokio::sync::Mutex::new(WriterState { io: Box::new(write), closed: false })),
        client,
    };
    (WsReader { io: Box::new(read), writer: writer.clone() }, writer)
}

/// Turns a WebSocket into a byte stream: binary messages in either direction carry the bytes
/// (the port-forward tunnel of KEP-4006, which runs SPDY over it).
pub(super) fn into_byte_stream(mut reader: WsReader, writer: WsWriter) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut from_spdy, mut to_spdy) = tokio::io::split(ours);
    tokio::spawn(async move {
        while let Ok(Some(Message::Binary(data) | Message::Text(data))) = reader.next().await {
            if to_spdy.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_spdy.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.binary(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        writer.close(CLOSE_NORMAL).await;
    });
    theirs
}
