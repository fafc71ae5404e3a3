//! SPDY/3.1 sessions, as upstream's `httpstream/spdy` (moby/spdystream) speaks them: the client
//! opens streams with SYN_STREAM, the server answers each with SYN_REPLY, data flows in DATA
//! frames, FIN half-closes a direction and RST_STREAM aborts a stream.
//!
//! Flow control: we send WINDOW_UPDATE as the reader consumes data. spdystream neither sends
//! WINDOW_UPDATE nor honours it, so a send window is only enforced once the peer shows it does
//! flow control (a WINDOW_UPDATE or an initial window in SETTINGS); otherwise a peer like kubectl
//! 1.27 would stall after the first 64 KiB of output.

mod dictionary;
pub(crate) mod frame;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub(crate) use frame::Headers;
use frame::{Frame, FrameReader, FrameWriter, RST_CANCEL, SETTINGS_INITIAL_WINDOW_SIZE};

use super::StreamingError;

/// The initial stream window of SPDY/3.1.
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// Data frames are cut to this size.
const MAX_DATA_FRAME: usize = 16 * 1024;
/// Bytes of data frames queued for the socket before senders wait.
const QUEUED_DATA_LIMIT: usize = 256 * 1024;
/// WINDOW_UPDATE is sent once this much was consumed.
const WINDOW_UPDATE_THRESHOLD: usize = 16 * 1024;
/// How long the reader keeps draining after we closed, waiting for the peer to hang up.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

enum Outgoing {
    Frame(Frame),
    /// A data frame, holding its share of the queue limit until it is written.
    Data(Frame, OwnedSemaphorePermit),
    /// Flush and shut the write side down.
    Shutdown,
}

struct StreamState {
    /// Where the peer's data goes; `None` once the peer half-closed or reset the stream.
    data_tx: Option<mpsc::UnboundedSender<Bytes>>,
    send_window: i64,
    reset: bool,
    local_closed: bool,
    /// For streams we opened: resolved by the peer's SYN_REPLY.
    #[cfg_attr(not(test), allow(dead_code))]
    reply_tx: Option<tokio::sync::oneshot::Sender<Headers>>,
}

struct State {
    streams: HashMap<u32, StreamState>,
    /// Whether the peer takes part in flow control (see the module docs).
    flow_control: bool,
    initial_window: i64,
    connection_window: i64,
    last_peer_stream: u32,
    #[cfg_attr(not(test), allow(dead_code))]
    next_stream_id: u32,
}

struct Shared {
    out: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<Semaphore>,
    state: Mutex<State>,
    window_changed: Notify,
    /// Cancelled when the reading side ended (the peer hung up or the connection failed).
    peer_closed: CancellationToken,
    /// Cancelled when the writer task finished (everything queued is on the wire, or failed).
    writer_done: CancellationToken,
    /// Cancelled by [`Connection::close`].
    closing: CancellationToken,
    server: bool,
}

impl Shared {
    fn send(&self, frame: Frame) {
        // A send error means the writer is gone; the connection is over and callers learn it
        // through `peer_closed`/`writer_done`.
        let _ = self.out.send(Outgoing::Frame(frame));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One SPDY session over an upgraded connection.
#[derive(Clone)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

/// A stream the peer opened (or, in tests, we opened).
pub(crate) struct SpdyStream {
    pub(crate) id: u32,
    pub(crate) headers: Headers,
    pub(crate) reader: StreamReader,
    pub(crate) writer: StreamWriter,
}

impl SpdyStream {
    /// A header's value (names compare case-insensitively, as Go's `http.Header` does).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Connection {
    /// Starts the session's reader and writer tasks. Streams the peer opens arrive on the
    /// returned channel, already answered with SYN_REPLY when `server` is set.
    pub(crate) fn start<T>(
        io: T,
        server: bool,
    ) -> Result<(Connection, mpsc::UnboundedReceiver<SpdyStream>), StreamingError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out: out_tx,
            queued: Arc::new(Semaphore::new(QUEUED_DATA_LIMIT)),
            state: Mutex::new(State {
                streams: HashMap::new(),
                flow_control: false,
                initial_window: DEFAULT_WINDOW,
                connection_window: DEFAULT_WINDOW,
                last_peer_stream: 0,
                next_stream_id: if server { 2 } else { 1 },
            }),
            window_changed: Notify::new(),
            peer_closed: CancellationToken::new(),
            writer_done: CancellationToken::new(),
            closing: CancellationToken::new(),
            server,
        });
        let writer = FrameWriter::new()?;
        tokio::spawn(write_loop(write, writer, out_rx, shared.clone()));
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(FrameReader::new(read), shared.clone(), incoming_tx));
        Ok((Connection { shared }, incoming_rx))
    }

    /// Resolves once the peer hung up (or the connection failed).
    pub(crate) async fn peer_closed(&self) {
        self.shared.peer_closed.cancelled().await;
    }

    /// Sends GOAWAY, writes out everything queued and shuts the write side down.
    pub(crate) async fn close(&self) {
        let last = self.shared.state().last_peer_stream;
        self.shared.send(Frame::GoAway { last_good_stream_id: last, status: 0 });
        let _ = self.shared.out.send(Outgoing::Shutdown);
        self.shared.closing.cancel();
        self.shared.writer_done.cancelled().await;
    }

    /// Opens a stream with `headers` and waits for the peer's SYN_REPLY.
    #[cfg(test)]
    pub(crate) async fn open_stream(&self, headers: Headers) -> Result<SpdyStream, StreamingError> {
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let id = {
            let mut state = self.shared.state();
            let id = state.next_stream_id;
            state.next_stream_id += 2;
            let send_window = state.initial_window;
            state.streams.insert(
                id,
                StreamState {
                    data_tx: Some(data_tx),
                    send_window,
                    reset: false,
                    local_closed: false,
                    reply_tx: Some(reply_tx),
                },
            );
            id
        };
        self.shared.send(Frame::SynStream {
            stream_id: id,
            fin: false,
            unidirectional: false,
            headers: headers.clone(),
        });
        reply_rx.await.map_err(|_| StreamingError::ConnectionClosed)?;
        Ok(new_stream(id, headers, data_rx, &self.shared))
    }
}

fn new_stream(id: u32, headers: Headers, data_rx: mpsc::UnboundedReceiver<Bytes>, shared: &Arc<Shared>) -> SpdyStream {
    SpdyStream {
        id,
        headers,
        reader: StreamReader { id, rx: data_rx, buf: Bytes::new(), unacked: 0, shared: shared.clone() },
        writer: StreamWriter { id, shared: shared.clone() },
    }
}

async fn write_loop(
    mut io: impl AsyncWrite + Unpin,
    mut writer: FrameWriter,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut buf = Vec::with_capacity(MAX_DATA_FRAME + 64);
    'outer: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Write every frame already queued, then flush once.
        while let Some(item) = next.take() {
            buf.clear();
            let (frame, permit) = match item {
                Outgoing::Frame(frame) => (frame, None),
                Outgoing::Data(frame, permit) => (frame, Some(permit)),
                Outgoing::Shutdown => {
                    let _ = io.flush().await;
                    let _ = io.shutdown().await;
                    break 'outer;
                }
            };
            if let Err(error) = writer.encode(&frame, &mut buf) {
                tracing::debug!(%error, "spdy: encoding a frame failed");
                break 'outer;
            }
            if let Err(error) = io.write_all(&buf).await {
                tracing::debug!(%error, "spdy: writing to the connection failed");
                break 'outer;
            }
            drop(permit);
            next = rx.try_recv().ok();
        }
        if io.flush().await.is_err() {
            break;
        }
    }
    shared.writer_done.cancel();
    // Writers waiting for a window must learn the connection is gone.
    shared.queued.close();
    shared.window_changed.notify_waiters();
}

async fn read_loop(
    mut reader: FrameReader<impl AsyncRead + Unpin>,
    shared: Arc<Shared>,
    incoming: mpsc::UnboundedSender<SpdyStream>,
) {
    let grace = async {
        shared.closing.cancelled().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        let frame = tokio::select! {
            frame = reader.read() => frame,
            _ = &mut grace => break,
        };
        match frame {
            Ok(Some(frame)) => handle_frame(frame, &shared, &incoming),
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(%error, "spdy: reading from the connection failed");
                break;
            }
        }
    }
    {
        let mut state = shared.state();
        for stream in state.streams.values_mut() {
            stream.data_tx = None;
            stream.reset = true;
        }
    }
    shared.peer_closed.cancel();
    shared.window_changed.notify_waiters();
}

fn handle_frame(frame: Frame, shared: &Arc<Shared>, incoming: &mpsc::UnboundedSender<SpdyStream>) {
    match frame {
        Frame::Data { stream_id, fin, data } => {
            let mut state = shared.state();
            let Some(stream) = state.streams.get_mut(&stream_id) else {
                return;
            };
            if let Some(tx) = &stream.data_tx
                && !data.is_empty()
            {
                let _ = tx.send(data);
            }
            if fin {
                stream.data_tx = None;
                if stream.local_closed {
                    state.streams.remove(&stream_id);
                }
            }
        }
        Frame::SynStream { stream_id, fin, unidirectional, headers } => {
            let (data_tx, data_rx) = mpsc::unbounded_channel();
            {
                let mut state = shared.state();
                state.last_peer_stream = state.last_peer_stream.max(stream_id);
                let send_window = state.initial_window;
                state.streams.insert(
                    stream_id,
                    StreamState {
                        data_tx: (!fin).then_some(data_tx),
                        send_window,
                        reset: false,
                        local_closed: unidirectional,
                        reply_tx: None,
                    },
                );
            }
            if shared.server {
                shared.send(Frame::SynReply { stream_id, fin: false, headers: Vec::new() });
            }
            let _ = incoming.send(new_stream(stream_id, headers, data_rx, shared));
        }
        Frame::SynReply { stream_id, .. } => {
            let mut state = shared.state();
            if let Some(tx) = state.streams.get_mut(&stream_id).and_then(|s| s.reply_tx.take()) {
                let _ = tx.send(Vec::new());
            }
        }
        Frame::RstStream { stream_id, .. } => {
            let mut state = shared.state();
            if let Some(mut stream) = state.streams.remove(&stream_id) {
                stream.data_tx = None;
                stream.reset = true;
            }
            drop(state);
            shared.window_changed.notify_waiters();
        }
        Frame::Settings { entries } => {
            let mut state = shared.state();
            for (_, id, value) in entries {
                if id == SETTINGS_INITIAL_WINDOW_SIZE {
                    let delta = i64::from(value) - state.initial_window;
                    state.initial_window = i64::from(value);
                    state.flow_control = true;
                    for stream in state.streams.values_mut() {
                        stream.send_window += delta;
                    }
                }
            }
            drop(state);
            shared.window_changed.notify_waiters();
        }
        Frame::Ping { id } => {
            // Answer the peer's pings (odd ids from a client, even from a server); ours come
            // back as answers and need nothing.
            let from_peer = if shared.server { id % 2 == 1 } else { id % 2 == 0 };
            if from_peer {
                shared.send(Frame::Ping { id });
            }
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut state = shared.state();
            state.flow_control = true;
            if stream_id == 0 {
                state.connection_window += i64::from(delta);
            } else if let Some(stream) = state.streams.get_mut(&stream_id) {
                stream.send_window += i64::from(delta);
            }
            drop(state);
            shared.window_changed.notify_waiters();
        }
        // GOAWAY: the peer opens no more streams; the ones open finish normally.
        Frame::GoAway { .. } | Frame::Headers { .. } | Frame::Ignored => {}
    }
}

/// The receiving half of a stream: the peer's data, ending at its FIN or RST.
pub(crate) struct StreamReader {
    id: u32,
    rx: mpsc::UnboundedReceiver<Bytes>,
    buf: Bytes,
    unacked: usize,
    shared: Arc<Shared>,
}

impl AsyncRead for StreamReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.buf.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(data)) => self.buf = data,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        self.unacked += n;
        if self.unacked >= WINDOW_UPDATE_THRESHOLD {
            let delta = self.unacked as u32;
            self.unacked = 0;
            self.shared.send(Frame::WindowUpdate { stream_id: self.id, delta });
            self.shared.send(Frame::WindowUpdate { stream_id: 0, delta });
        }
        Poll::Ready(Ok(()))
    }
}

/// The sending half of a stream.
#[derive(Clone)]
pub(crate) struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
}

impl StreamWriter {
    /// Sends `data` in DATA frames, within the peer's window when it does flow control.
    pub(crate) async fn write(&self, mut data: &[u8]) -> Result<(), StreamingError> {
        while !data.is_empty() {
            let n = self.reserve(data.len().min(MAX_DATA_FRAME)).await?;
            let permit = self
                .shared
                .queued
                .clone()
                .acquire_many_owned(n as u32)
                .await
                .map_err(|_| StreamingError::ConnectionClosed)?;
            let frame = Frame::Data { stream_id: self.id, fin: false, data: Bytes::copy_from_slice(&data[..n]) };
            self.shared.out.send(Outgoing::Data(frame, permit)).map_err(|_| StreamingError::ConnectionClosed)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Waits until up to `want` bytes may be sent; returns how many.
    async fn reserve(&self, want: usize) -> Result<usize, StreamingError> {
        loop {
            let notified = self.shared.window_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                if self.shared.writer_done.is_cancelled() {
                    return Err(StreamingError::ConnectionClosed);
                }
                let mut state = self.shared.state();
                let State { streams, flow_control, connection_window, .. } = &mut *state;
                let Some(stream) = streams.get_mut(&self.id) else {
                    return Err(StreamingError::Spdy("stream was reset"));
                };
                if stream.reset {
                    return Err(StreamingError::Spdy("stream was reset"));
                }
                let available =
                    if *flow_control { stream.send_window.min(*connection_window).max(0) as usize } else { want };
                if available > 0 {
                    let n = want.min(available);
                    stream.send_window -= n as i64;
                    *connection_window -= n as i64;
                    return Ok(n);
                }
            }
            notified.await;
        }
    }

    /// Half-closes the stream: an empty DATA frame with FIN.
    pub(crate) fn finish(&self) {
        let mut state = self.shared.state();
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return;
        };
        if stream.local_closed {
            return;
        }
        stream.local_closed = true;
        if stream.data_tx.is_none() {
            state.streams.remove(&self.id);
        }
        drop(state);
        self.shared.send(Frame::Data { stream_id: self.id, fin: true, data: Bytes::new() });
    }

    /// Aborts the stream in both directions (RST_STREAM with CANCEL).
    pub(crate) fn reset(&self) {
        if self.shared.state().streams.remove(&self.id).is_some() {
            self.shared.send(Frame::RstStream { stream_id: self.id, status: RST_CANCEL });
            self.shared.window_changed.notify_waiters();
        }
    }
}

/// Whether a request asks for a SPDY/3.1 upgrade.
pub(crate) fn is_spdy_request(headers: &http::HeaderMap) -> bool {
    super::connection_upgrade(headers)
        && headers
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("SPDY/3.1"))
}

/// Upstream's `httpstream.Handshake` plus the SPDY upgrade answer: picks the first protocol in
/// the client's `X-Stream-Protocol-Version` list that the server supports and answers 101, or
/// answers 400 (no SPDY upgrade asked, no protocol offered) or 403 (nothing in common).
#[allow(clippy::result_large_err)]
pub(crate) fn upgrade_response(
    headers: &http::HeaderMap,
    supported: &[&'static str],
) -> Result<(String, Reply), Reply> {
    use http::{HeaderValue, StatusCode, header};
    if !is_spdy_request(headers) {
        return Err(super::plain_error(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        ));
    }
    let offered = super::header_tokens(headers, PROTOCOL_HEADER);
    if offered.is_empty() {
        return Err(super::plain_error(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: {PROTOCOL_HEADER} is required"),
        ));
    }
    let Some(protocol) = offered.iter().find(|p| supported.contains(&p.as_str())) else {
        let mut response = super::plain_error(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
            ),
        );
        for p in supported {
            response.headers_mut().append("x-accepted-stream-protocol-versions", HeaderValue::from_static(p));
        }
        return Err(response);
    };
    let mut response = http::Response::new(http_body_util::Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(PROTOCOL_HEADER, HeaderValue::from_str(protocol).expect("a supported protocol name"));
    Ok((protocol.clone(), response))
}

/// An HTTP answer of the streaming server.
pub(crate) type Reply = http::Response<http_body_util::Full<Bytes>>;

/// The header carrying the stream protocol negotiation.
pub(crate) const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

impl StreamWriter {
    /// Resolves once the stream can carry no more data: reset by either side, fully closed, or
    /// the connection gone.
    pub(crate) async fn gone(&self) {
        loop {
            let notified = self.shared.window_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let present = self.shared.state().streams.get(&self.id).is_some_and(|s| !s.reset);
            if !present || self.shared.writer_done.is_cancelled() || self.shared.peer_closed.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}
