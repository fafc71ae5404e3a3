//! `exec` and `attach`: upstream's `kubelet/pkg/cri/streaming/remotecommand` over SPDY streams
//! or WebSocket channels.
//!
//! Whatever the transport, a session has up to five streams (stdin, stdout, stderr, resize and
//! error). The process's output is copied out and its stdin in; when it ends, the error stream
//! gets the result: a JSON `Status` from v4 on (with the exit code as a `NonZeroExitCode`
//! cause), the message of a failure as plain text before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status, StatusCause, StatusDetails};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tug_runtime::cri::{RuntimeError, StreamSession, TerminalSize};

use super::spdy::{self, SpdyStream};
use super::websocket::{self, CLOSE_NORMAL, Message, WsWriter};
use super::{RemoteCommandOptions, StreamingError, plain_error};

/// The SPDY stream protocols, newest first (upstream's `SupportedStreamingProtocols`).
const SPDY_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
/// The WebSocket subprotocols, newest first.
const WEBSOCKET_PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
/// How long the client has to create its SPDY streams (upstream's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long output may keep coming after the process exited (a background child can hold the
/// pipes open forever).
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

const CHANNEL_STDIN: u8 = 0;
const CHANNEL_STDOUT: u8 = 1;
const CHANNEL_STDERR: u8 = 2;
const CHANNEL_ERROR: u8 = 3;
const CHANNEL_RESIZE: u8 = 4;
/// v5: the client's `[255, channel]` closes that channel (stdin's end of file).
const CHANNEL_CLOSE: u8 = 255;

/// The protocol version negotiated, which decides how the error stream is written and which
/// streams exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    V1,
    V2,
    V3,
    V4,
    V5,
}

impl Version {
    fn from_protocol(protocol: &str) -> Version {
        match protocol {
            "v5.channel.k8s.io" => Version::V5,
            "v4.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            "v2.channel.k8s.io" => Version::V2,
            _ => Version::V1,
        }
    }
}

/// Where one output stream goes.
#[derive(Clone)]
enum Sink {
    Spdy(spdy::StreamWriter),
    WebSocket { writer: WsWriter, channel: u8 },
}

impl Sink {
    async fn write(&self, data: &[u8]) -> Result<(), StreamingError> {
        match self {
            Sink::Spdy(writer) => writer.write(data).await,
            Sink::WebSocket { writer, channel } => {
                let mut message = Vec::with_capacity(data.len() + 1);
                message.push(*channel);
                message.extend_from_slice(data);
                writer.binary(&message).await
            }
        }
    }

    /// Ends the stream: FIN on SPDY. On a WebSocket the streams end with the connection: the v5
    /// close signal goes from client to server only (client-go discards it as an unknown stream).
    async fn close(&self) {
        if let Sink::Spdy(writer) = self {
            writer.finish();
        }
    }
}

/// A byte stream fed by a channel of chunks (a WebSocket channel's messages).
struct ChunkReader {
    rx: mpsc::UnboundedReceiver<Bytes>,
    buf: Bytes,
}

impl AsyncRead for ChunkReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        while self.buf.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(data)) => self.buf = data,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

type Input = Box<dyn AsyncRead + Send + Unpin>;

/// The client's side of a session, whatever the transport.
struct Streams {
    stdin: Option<Input>,
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    resize: Option<Input>,
    error: Sink,
}

pub(super) fn serve_spdy<F, Fut>(
    req: Request<Incoming>,
    options: RemoteCommandOptions,
    open: F,
) -> Response<Full<Bytes>>
where
    F: FnOnce(RemoteCommandOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<StreamSession, RuntimeError>> + Send + 'static,
{
    let (protocol, response) = match spdy::upgrade_response(req.headers(), SPDY_PROTOCOLS) {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let version = Version::from_protocol(&protocol);
    tokio::spawn(async move {
        let io = match hyper::upgrade::on(req).await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(error) => {
                tracing::warn!(error = %StreamingError::Upgrade(error), "remotecommand: spdy upgrade failed");
                return;
            }
        };
        if let Err(error) = run_spdy(io, version, options, open).await {
            tracing::info!(%error, %protocol, "remotecommand: spdy session ended with an error");
        }
    });
    response
}

async fn run_spdy<F, Fut>(
    io: TokioIo<hyper::upgrade::Upgraded>,
    version: Version,
    options: RemoteCommandOptions,
    open: F,
) -> Result<(), StreamingError>
where
    F: FnOnce(RemoteCommandOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<StreamSession, RuntimeError>> + Send + 'static,
{
    let (conn, mut incoming) = spdy::Connection::start(io, true)?;
    let mut expected = vec!["error"];
    if options.stdin {
        expected.push("stdin");
    }
    if options.stdout {
        expected.push("stdout");
    }
    if options.stderr {
        expected.push("stderr");
    }
    if options.tty && version >= Version::V3 {
        expected.push("resize");
    }
    let mut received: Vec<(String, SpdyStream)> = Vec::new();
    let collect = async {
        while received.len() < expected.len() {
            let Some(stream) = incoming.recv().await else {
                return Err(StreamingError::ConnectionClosed);
            };
            let kind = stream.header("streamtype").unwrap_or_default().to_ascii_lowercase();
            if expected.contains(&kind.as_str()) && !received.iter().any(|(k, _)| *k == kind) {
                received.push((kind, stream));
            } else {
                tracing::debug!(stream_type = %kind, "remotecommand: unexpected stream, resetting it");
                stream.writer.reset();
            }
        }
        Ok(())
    };
    match tokio::time::timeout(STREAM_CREATION_TIMEOUT, collect).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error),
        Err(_) => {
            conn.close().await;
            return Err(StreamingError::StreamTimeout);
        }
    }
    let mut take = |kind: &str| received.iter().position(|(k, _)| k == kind).map(|i| received.remove(i).1);
    let error = take("error").expect("the error stream is always expected");
    let streams = Streams {
        stdin: take("stdin").map(|s| Box::new(s.reader) as Input),
        stdout: take("stdout").map(|s| Sink::Spdy(s.writer)),
        stderr: take("stderr").map(|s| Sink::Spdy(s.writer)),
        resize: take("resize").map(|s| Box::new(s.reader) as Input),
        error: Sink::Spdy(error.writer.clone()),
    };
    let peer_closed = {
        let conn = conn.clone();
        async move { conn.peer_closed().await }
    };
    run_session(streams, version, options, open, peer_closed).await;
    conn.close().await;
    Ok(())
}

pub(super) fn serve_websocket<F, Fut>(
    req: Request<Incoming>,
    options: RemoteCommandOptions,
    open: F,
) -> Response<Full<Bytes>>
where
    F: FnOnce(RemoteCommandOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<StreamSession, RuntimeError>> + Send + 'static,
{
    let offered = websocket::offered_protocols(req.headers());
    // A client that names no protocol gets the original one (upstream's "" entry).
    let protocol = if offered.is_empty() {
        String::new()
    } else {
        match offered.iter().find(|p| WEBSOCKET_PROTOCOLS.contains(&p.as_str())) {
            Some(p) => p.clone(),
            None => {
                return plain_error(
                    StatusCode::BAD_REQUEST,
                    format!("requested protocol(s) are not supported: {offered:?}; supports {WEBSOCKET_PROTOCOLS:?}"),
                );
            }
        }
    };
    let response = match websocket::handshake_response(req.headers(), &protocol) {
        Ok(response) => response,
        Err(response) => return response,
    };
    let version = Version::from_protocol(&protocol);
    tokio::spawn(async move {
        let io = match hyper::upgrade::on(req).await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(error) => {
                tracing::warn!(error = %StreamingError::Upgrade(error), "remotecommand: websocket upgrade failed");
                return;
            }
        };
        run_websocket(io, version, options, open).await;
    });
    response
}

async fn run_websocket<F, Fut>(
    io: TokioIo<hyper::upgrade::Upgraded>,
    version: Version,
    options: RemoteCommandOptions,
    open: F,
) where
    F: FnOnce(RemoteCommandOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<StreamSession, RuntimeError>> + Send + 'static,
{
    let (mut reader, writer) = websocket::split(io, false);
    let sink = |channel| Sink::WebSocket { writer: writer.clone(), channel };
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    let (resize_tx, resize_rx) = mpsc::unbounded_channel();
    let peer_closed = CancellationToken::new();
    let demux = {
        let peer_closed = peer_closed.clone();
        tokio::spawn(async move {
            let mut stdin_tx = Some(stdin_tx);
            let mut resize_tx = Some(resize_tx);
            while let Ok(Some(Message::Binary(mut data) | Message::Text(mut data))) = reader.next().await {
                if data.is_empty() {
                    continue;
                }
                let channel = data[0];
                data.advance(1);
                match channel {
                    CHANNEL_STDIN => {
                        if let Some(tx) = &stdin_tx {
                            let _ = tx.send(data);
                        }
                    }
                    CHANNEL_RESIZE => {
                        if let Some(tx) = &resize_tx {
                            let _ = tx.send(data);
                        }
                    }
                    CHANNEL_CLOSE if version >= Version::V5 => match data.first() {
                        Some(&CHANNEL_STDIN) => stdin_tx = None,
                        Some(&CHANNEL_RESIZE) => resize_tx = None,
                        _ => {}
                    },
                    _ => tracing::debug!(channel, "remotecommand: data on a channel the client cannot write"),
                }
            }
            peer_closed.cancel();
        })
    };
    // Upstream writes an empty message to the lowest writable channel so that the client knows
    // the streams are ready.
    let first = if options.stdout {
        CHANNEL_STDOUT
    } else if options.stderr {
        CHANNEL_STDERR
    } else {
        CHANNEL_ERROR
    };
    let _ = writer.binary(&[first]).await;
    let streams = Streams {
        stdin: options.stdin.then(|| Box::new(ChunkReader { rx: stdin_rx, buf: Bytes::new() }) as Input),
        stdout: options.stdout.then(|| sink(CHANNEL_STDOUT)),
        stderr: options.stderr.then(|| sink(CHANNEL_STDERR)),
        resize: options.tty.then(|| Box::new(ChunkReader { rx: resize_rx, buf: Bytes::new() }) as Input),
        error: sink(CHANNEL_ERROR),
    };
    let closed = peer_closed.clone();
    run_session(streams, version, options, open, async move { closed.cancelled().await }).await;
    writer.close(CLOSE_NORMAL).await;
    // The peer answers our close; if it does not, stop reading anyway.
    if tokio::time::timeout(Duration::from_secs(5), peer_closed.cancelled()).await.is_err() {
        demux.abort();
    }
}

/// Opens the session, pumps it until the process ends (or the client goes away) and writes the
/// result to the error stream.
async fn run_session<F, Fut>(
    streams: Streams,
    version: Version,
    options: RemoteCommandOptions,
    open: F,
    peer_closed: impl Future<Output = ()>,
) where
    F: FnOnce(RemoteCommandOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<StreamSession, RuntimeError>> + Send + 'static,
{
    // Upstream's attach reports success whatever the container's exit code; only exec passes
    // exit codes on. Attach requests carry no command.
    let attach = options.command.is_empty();
    let error_sink = streams.error.clone();
    let status = match open(options).await {
        Err(error) => Some(open_failure(&error, attach)),
        Ok(session) => {
            tokio::pin!(peer_closed);
            pump(session, streams, &mut peer_closed).await.map(|code| exit_status(code, attach))
        }
    };
    if let Some(status) = status {
        write_status(&error_sink, version, &status).await;
    }
    error_sink.close().await;
}

/// Returns the exit code, or `None` when the client went away first.
async fn pump(
    session: StreamSession,
    streams: Streams,
    peer_closed: &mut Pin<&mut impl Future<Output = ()>>,
) -> Option<Option<i32>> {
    let StreamSession { stdin, stdout, stderr, resize, exit } = session;
    let mut tasks = Vec::new();
    if let (Some(mut from), Some(mut to)) = (streams.stdin, stdin) {
        tasks.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            // The client half-closed stdin: the process sees end of file.
            let _ = to.shutdown().await;
        }));
    }
    if let (Some(from), Some(to)) = (streams.resize, resize) {
        tasks.push(tokio::spawn(forward_resizes(from, to)));
    }
    let mut outputs =
        [(stdout, streams.stdout), (stderr, streams.stderr)].map(|(from, to)| tokio::spawn(copy_output(from, to)));
    let code = tokio::select! {
        code = exit => code.ok().flatten(),
        _ = peer_closed.as_mut() => {
            for task in tasks.iter().chain(outputs.iter()) {
                task.abort();
            }
            return None;
        }
    };
    let drain = futures::future::join_all(outputs.iter_mut());
    if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::debug!("remotecommand: output still open after the process exited");
        for task in &outputs {
            task.abort();
        }
    }
    for task in tasks {
        task.abort();
    }
    Some(code)
}

async fn copy_output(from: Option<Box<dyn AsyncRead + Send + Unpin>>, to: Option<Sink>) {
    let Some(mut from) = from else {
        if let Some(to) = to {
            to.close().await;
        }
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            // Output nobody asked for is still read, so the process never blocks on a full pipe.
            Ok(n) => {
                if let Some(to) = &to
                    && to.write(&buf[..n]).await.is_err()
                {
                    return;
                }
            }
        }
    }
    if let Some(to) = to {
        to.close().await;
    }
}

/// The resize stream carries JSON `{"Width":..,"Height":..}` objects back to back.
#[derive(serde::Deserialize)]
struct WireSize {
    #[serde(rename = "Width", alias = "width")]
    width: u16,
    #[serde(rename = "Height", alias = "height")]
    height: u16,
}

async fn forward_resizes(mut from: Input, to: mpsc::Sender<TerminalSize>) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
        let mut sizes = serde_json::Deserializer::from_slice(&pending).into_iter::<WireSize>();
        let mut consumed = 0;
        loop {
            match sizes.next() {
                Some(Ok(size)) => {
                    consumed = sizes.byte_offset();
                    if to.send(TerminalSize { width: size.width, height: size.height }).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(error)) => {
                    tracing::debug!(%error, "remotecommand: bad resize message");
                    consumed = pending.len();
                    break;
                }
                None => {
                    consumed = pending.len();
                    break;
                }
            }
        }
        pending.drain(..consumed);
    }
}

fn status(status: &str) -> Status {
    Status { metadata: ListMeta::default(), status: Some(status.to_string()), ..Default::default() }
}

fn exit_status(code: Option<i32>, attach: bool) -> Status {
    match code {
        Some(code) if code != 0 && !attach => Status {
            message: Some(format!("command terminated with non-zero exit code: exit status {code}")),
            reason: Some("NonZeroExitCode".to_string()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".to_string()),
                    message: Some(code.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..status("Failure")
        },
        _ => status("Success"),
    }
}

/// Upstream's `apierrors.NewInternalError` for a session that could not start.
fn open_failure(error: &RuntimeError, attach: bool) -> Status {
    let message = if attach {
        format!("error attaching to container: {error}")
    } else {
        format!("error executing command in container: {error}")
    };
    Status {
        code: Some(500),
        message: Some(format!("Internal error occurred: {message}")),
        reason: Some("InternalError".to_string()),
        details: Some(StatusDetails {
            causes: Some(vec![StatusCause { message: Some(message), ..Default::default() }]),
            ..Default::default()
        }),
        ..status("Failure")
    }
}

async fn write_status(sink: &Sink, version: Version, status: &Status) {
    let payload = if version >= Version::V4 {
        serde_json::to_vec(status).expect("a Status serializes")
    } else if status.status.as_deref() == Some("Success") {
        return;
    } else {
        status.message.clone().unwrap_or_default().into_bytes()
    };
    if let Err(error) = sink.write(&payload).await {
        tracing::debug!(%error, "remotecommand: writing the status failed");
    }
}
