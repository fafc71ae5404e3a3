//! The streaming protocols end to end against a real hyper server on 127.0.0.1, with clients
//! written here (WebSocket and SPDY framing from this module, driven from the client side) and a
//! fake process behind the session: it greets on stdout, echoes stdin and resizes to stdout,
//! says goodbye on stderr and exits with the code its command names.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tug_runtime::cri::{RuntimeError, StreamSession, TerminalSize};

use super::spdy::{self, Headers, SpdyStream};
use super::websocket::{self, Message, WsReader, WsWriter};
use super::{RemoteCommandOptions, parse_remote_command_query, port_forward, remote_command};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A session whose process behaves as the module docs say.
pub(super) fn fake_session(options: RemoteCommandOptions) -> StreamSession {
    let code: i32 = options.command.iter().find_map(|c| c.strip_prefix("exit=")).map_or(0, |c| c.parse().unwrap());
    let (stdin_client, mut stdin_process) = tokio::io::duplex(1024);
    let (mut stdout_process, stdout_client) = tokio::io::duplex(1024);
    let (mut stderr_process, stderr_client) = tokio::io::duplex(1024);
    let (resize_tx, mut resize_rx) = mpsc::channel::<TerminalSize>(8);
    let (exit_tx, exit_rx) = oneshot::channel();
    let (mut stdin, tty) = (options.stdin, options.tty);
    tokio::spawn(async move {
        stdout_process.write_all(b"hello\n").await.unwrap();
        let mut buf = [0u8; 1024];
        // Echo stdin (and resizes) until the client closes stdin.
        while stdin {
            tokio::select! {
                n = stdin_process.read(&mut buf) => match n.unwrap() {
                    0 => stdin = false,
                    n => stdout_process.write_all(&buf[..n]).await.unwrap(),
                },
                Some(size) = resize_rx.recv() => {
                    let line = format!("resize {}x{}\n", size.width, size.height);
                    stdout_process.write_all(line.as_bytes()).await.unwrap();
                }
            }
        }
        if !tty {
            stderr_process.write_all(b"bye\n").await.unwrap();
        }
        drop((stdout_process, stderr_process));
        let _ = exit_tx.send(Some(code));
    });
    StreamSession {
        stdin: Some(Box::new(stdin_client)),
        stdout: Some(Box::new(stdout_client)),
        stderr: (!tty).then(|| Box::new(stderr_client) as Box<dyn AsyncRead + Send + Unpin>),
        resize: tty.then_some(resize_tx),
        exit: exit_rx,
    }
}

/// Starts a server answering `/exec` with the fake session and `/portforward` by connecting
/// to the port on `target`'s address (failing when `None`).
async fn start_server(target: Option<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service =
                service_fn(move |req: Request<Incoming>| async move { Ok::<_, Infallible>(route(req, target).await) });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn route(req: Request<Incoming>, target: Option<SocketAddr>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/portforward" {
        return port_forward(req, move |port| async move {
            let Some(target) = target else {
                return Err(RuntimeError::Unavailable(format!("nothing listens on {port}")));
            };
            TcpStream::connect((target.ip(), port)).await.map_err(|e| RuntimeError::io("connect", "port", e))
        })
        .await;
    }
    let options = parse_remote_command_query(req.uri().query()).unwrap();
    remote_command(req, options, |options| async move {
        if options.command == ["nope"] {
            return Err(RuntimeError::StartFailed(r#"exec: "nope": executable file not found in $PATH"#.to_string()));
        }
        Ok(fake_session(options))
    })
    .await
}

/// Sends a GET with `headers` and reads the response head byte by byte (so that nothing of
/// the upgraded stream is consumed). Returns the status, the head and the connection.
async fn request(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        response.push(stream.read_u8().await.unwrap());
    }
    let response = String::from_utf8(response).unwrap();
    let status = response[9..12].parse().unwrap();
    (status, response.to_ascii_lowercase(), stream)
}

async fn websocket_client(addr: SocketAddr, target: &str, protocols: &str) -> (String, WsReader, WsWriter) {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let (status, head, stream) = request(
        addr,
        target,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Protocol", protocols),
        ],
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    let protocol =
        head.lines().find_map(|l| l.strip_prefix("sec-websocket-protocol: ")).unwrap_or_default().trim().to_string();
    let (reader, writer) = websocket::split(stream, true);
    (protocol, reader, writer)
}

/// Reads messages until the server closes; returns them as (channel, payload).
async fn read_all_messages(reader: &mut WsReader) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    while let Some(Message::Binary(data)) = tokio::time::timeout(TIMEOUT, reader.next()).await.unwrap().unwrap() {
        messages.push((data[0], data[1..].to_vec()));
    }
    messages
}

fn channel_bytes(messages: &[(u8, Vec<u8>)], channel: u8) -> Vec<u8> {
    messages.iter().filter(|(c, _)| *c == channel).flat_map(|(_, d)| d.clone()).collect()
}

fn status_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("status {:?}: {e}", String::from_utf8_lossy(bytes)))
}

fn assert_exit_code(status: &serde_json::Value, code: i32) {
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], code.to_string(), "{status}");
    assert!(status["message"].as_str().unwrap().starts_with("command terminated with non-zero exit code"));
}

#[test]
fn query_accepts_kubectl_and_kubelet_parameter_names() {
    let options =
        parse_remote_command_query(Some("command=sh&command=-c&command=echo%20hi&stdin=true&stdout=1&error=1"))
            .unwrap();
    assert_eq!(options.command, ["sh", "-c", "echo hi"]);
    assert!(options.stdin && options.stdout && options.stderr && !options.tty);
    // A TTY carries both output streams: stderr is bypassed, as upstream does.
    let tty = parse_remote_command_query(Some("command=sh&stdout=true&stderr=true&tty=true")).unwrap();
    assert!(tty.tty && !tty.stderr);
    assert!(parse_remote_command_query(Some("command=sh")).is_err());
    assert!(parse_remote_command_query(Some("command=sh&stdout=maybe")).is_err());
}

#[tokio::test]
async fn websocket_v5_exec_streams_output_and_reports_the_exit_code() {
    let addr = start_server(None).await;
    let (protocol, mut reader, _writer) =
        websocket_client(addr, "/exec?command=exit=3&stdout=true&stderr=true", "v5.channel.k8s.io, v4.channel.k8s.io")
            .await;
    assert_eq!(protocol, "v5.channel.k8s.io");
    let messages = read_all_messages(&mut reader).await;
    assert_eq!(channel_bytes(&messages, 1), b"hello\n");
    assert_eq!(channel_bytes(&messages, 2), b"bye\n");
    assert_exit_code(&status_json(&channel_bytes(&messages, 3)), 3);
    // The close signal is the client's only: client-go logs it as an unknown stream.
    assert!(messages.iter().all(|(c, _)| *c != 255));
}

#[tokio::test]
async fn websocket_exec_that_cannot_start_reports_an_internal_error() {
    let addr = start_server(None).await;
    let (_, mut reader, _writer) = websocket_client(addr, "/exec?command=nope&stdout=true", "v5.channel.k8s.io").await;
    let messages = read_all_messages(&mut reader).await;
    let status = status_json(&channel_bytes(&messages, 3));
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "InternalError", "{status}");
    assert_eq!(status["code"], 500, "{status}");
    assert_eq!(
        status["message"],
        r#"Internal error occurred: error executing command in container: exec: "nope": executable file not found in $PATH"#
    );
}

#[tokio::test]
async fn websocket_v5_stdin_half_close_ends_the_input() {
    let addr = start_server(None).await;
    let (_, mut reader, writer) =
        websocket_client(addr, "/exec?command=cat&stdin=true&stdout=true", "v5.channel.k8s.io").await;
    writer.binary(b"\x00from stdin\n").await.unwrap();
    writer.binary(&[255, 0]).await.unwrap();
    let messages = read_all_messages(&mut reader).await;
    assert_eq!(channel_bytes(&messages, 1), b"hello\nfrom stdin\n");
    let status = status_json(&channel_bytes(&messages, 3));
    assert_eq!(status["status"], "Success", "{status}");
}

#[tokio::test]
async fn websocket_v4_exec_streams_output_and_reports_the_exit_code() {
    let addr = start_server(None).await;
    let (protocol, mut reader, _writer) =
        websocket_client(addr, "/exec?command=exit=7&stdout=true", "v4.channel.k8s.io, channel.k8s.io").await;
    assert_eq!(protocol, "v4.channel.k8s.io");
    let messages = read_all_messages(&mut reader).await;
    assert_eq!(channel_bytes(&messages, 1), b"hello\n");
    assert_exit_code(&status_json(&channel_bytes(&messages, 3)), 7);
}

#[tokio::test]
async fn websocket_resize_reaches_the_terminal() {
    let addr = start_server(None).await;
    let (_, mut reader, writer) =
        websocket_client(addr, "/exec?command=sh&stdin=true&stdout=true&tty=true", "v5.channel.k8s.io").await;
    writer.binary(b"\x04{\"Width\":120,\"Height\":40}").await.unwrap();
    // Wait for the resize to show before closing stdin, which ends the process.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("resize 120x40") {
        let Some(Message::Binary(data)) = tokio::time::timeout(TIMEOUT, reader.next()).await.unwrap().unwrap() else {
            panic!("closed before the resize showed: {:?}", String::from_utf8_lossy(&seen));
        };
        if data[0] == 1 {
            seen.extend_from_slice(&data[1..]);
        }
    }
    writer.binary(&[255, 0]).await.unwrap();
    let messages = read_all_messages(&mut reader).await;
    assert_eq!(status_json(&channel_bytes(&messages, 3))["status"], "Success");
}

#[tokio::test]
async fn websocket_without_a_supported_protocol_is_refused() {
    let addr = start_server(None).await;
    let (status, _, _) = request(
        addr,
        "/exec?command=sh&stdout=true",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "v9.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(status, 400);
}

async fn spdy_client(addr: SocketAddr, target: &str, protocols: &[&str]) -> (u16, String, Option<spdy::Connection>) {
    let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    headers.extend(protocols.iter().map(|p| ("X-Stream-Protocol-Version", *p)));
    let (status, head, stream) = request(addr, target, &headers).await;
    if status != 101 {
        return (status, head, None);
    }
    let (conn, _incoming) = spdy::Connection::start(stream, false).unwrap();
    (status, head, Some(conn))
}

async fn open(conn: &spdy::Connection, headers: &[(&str, &str)]) -> SpdyStream {
    let headers: Headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    tokio::time::timeout(TIMEOUT, conn.open_stream(headers)).await.unwrap().unwrap()
}

async fn read_to_end(stream: &mut SpdyStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.reader.read_to_end(&mut out)).await.unwrap().unwrap();
    out
}

#[tokio::test]
async fn spdy_v4_exec_streams_stdin_stdout_stderr_and_the_exit_code() {
    let addr = start_server(None).await;
    let (status, head, conn) = spdy_client(
        addr,
        "/exec?command=exit=3&stdin=true&stdout=true&stderr=true",
        &["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"],
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert!(head.contains("x-stream-protocol-version: v4.channel.k8s.io"), "{head}");
    let conn = conn.unwrap();
    // kubectl's order: error first, then stdin, stdout, stderr.
    let mut error = open(&conn, &[("streamType", "error")]).await;
    let stdin = open(&conn, &[("streamType", "stdin")]).await;
    let mut stdout = open(&conn, &[("streamType", "stdout")]).await;
    let mut stderr = open(&conn, &[("streamType", "stderr")]).await;
    stdin.writer.write(b"ping\n").await.unwrap();
    stdin.writer.finish();
    assert_eq!(read_to_end(&mut stdout).await, b"hello\nping\n");
    assert_eq!(read_to_end(&mut stderr).await, b"bye\n");
    assert_exit_code(&status_json(&read_to_end(&mut error).await), 3);
}

#[tokio::test]
async fn spdy_v3_writes_failures_as_text() {
    let addr = start_server(None).await;
    let (_, head, conn) = spdy_client(addr, "/exec?command=exit=2&stdout=true", &["v3.channel.k8s.io"]).await;
    assert!(head.contains("x-stream-protocol-version: v3.channel.k8s.io"), "{head}");
    let conn = conn.unwrap();
    let mut error = open(&conn, &[("streamType", "error")]).await;
    let mut stdout = open(&conn, &[("streamType", "stdout")]).await;
    assert_eq!(read_to_end(&mut stdout).await, b"hello\n");
    let message = String::from_utf8(read_to_end(&mut error).await).unwrap();
    assert_eq!(message, "command terminated with non-zero exit code: exit status 2");
}

#[tokio::test]
async fn spdy_resize_reaches_the_terminal() {
    let addr = start_server(None).await;
    let (_, _, conn) =
        spdy_client(addr, "/exec?command=sh&stdin=true&stdout=true&tty=true", &["v4.channel.k8s.io"]).await;
    let conn = conn.unwrap();
    let mut error = open(&conn, &[("streamType", "error")]).await;
    let stdin = open(&conn, &[("streamType", "stdin")]).await;
    let mut stdout = open(&conn, &[("streamType", "stdout")]).await;
    let resize = open(&conn, &[("streamType", "resize")]).await;
    resize.writer.write(br#"{"Width":80,"Height":24}"#).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("resize 80x24") {
        let n = tokio::time::timeout(TIMEOUT, stdout.reader.read(&mut buf)).await.unwrap().unwrap();
        assert_ne!(n, 0, "stdout ended before the resize showed");
        seen.extend_from_slice(&buf[..n]);
    }
    stdin.writer.finish();
    read_to_end(&mut stdout).await;
    assert_eq!(status_json(&read_to_end(&mut error).await)["status"], "Success");
}

#[tokio::test]
async fn spdy_upgrade_refusals() {
    let addr = start_server(None).await;
    let (status, head, _) = spdy_client(addr, "/exec?command=sh&stdout=true", &["v9.channel.k8s.io"]).await;
    assert_eq!(status, 403);
    assert!(head.contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"), "{head}");
    let (status, _, _) = request(addr, "/exec?command=sh&stdout=true", &[]).await;
    assert_eq!(status, 400);
}

/// An echo server on 127.0.0.1; returns its address.
pub(super) async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Forwards one connection over `conn` and checks 200 KiB come back echoed (more than the
/// 64 KiB initial window, so flow control has to work both ways).
async fn forward_and_echo(conn: &spdy::Connection, port: u16, request_id: &str) {
    let port = port.to_string();
    let mut error = open(conn, &[("streamType", "error"), ("port", &port), ("requestID", request_id)]).await;
    let mut data = open(conn, &[("streamType", "data"), ("port", &port), ("requestID", request_id)]).await;
    let payload: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let writer = data.writer.clone();
    let sent = payload.clone();
    tokio::spawn(async move {
        writer.write(&sent).await.unwrap();
        writer.finish();
    });
    assert_eq!(read_to_end(&mut data).await, payload);
    assert_eq!(read_to_end(&mut error).await, b"");
}

#[tokio::test]
async fn spdy_port_forward_copies_both_ways() {
    let echo = echo_server().await;
    let addr = start_server(Some(echo)).await;
    let (status, head, conn) = spdy_client(addr, "/portforward", &["portforward.k8s.io"]).await;
    assert_eq!(status, 101, "{head}");
    let conn = conn.unwrap();
    forward_and_echo(&conn, echo.port(), "0").await;
    // A second connection on the same session.
    forward_and_echo(&conn, echo.port(), "1").await;
}

#[tokio::test]
async fn spdy_port_forward_reports_a_refused_port_on_the_error_stream() {
    let addr = start_server(None).await;
    let (_, _, conn) = spdy_client(addr, "/portforward", &["portforward.k8s.io"]).await;
    let conn = conn.unwrap();
    let port = "8080";
    let mut error = open(&conn, &[("streamType", "error"), ("port", port), ("requestID", "0")]).await;
    let _data = open(&conn, &[("streamType", "data"), ("port", port), ("requestID", "0")]).await;
    let message = String::from_utf8(read_to_end(&mut error).await).unwrap();
    assert_eq!(message, "error forwarding port 8080 to pod: the runtime is not available: nothing listens on 8080");
}

#[tokio::test]
async fn websocket_tunnelled_spdy_port_forward_copies_both_ways() {
    let echo = echo_server().await;
    let addr = start_server(Some(echo)).await;
    let (protocol, reader, writer) = websocket_client(addr, "/portforward", "SPDY/3.1+portforward.k8s.io").await;
    assert_eq!(protocol, "spdy/3.1+portforward.k8s.io");
    let (conn, _incoming) = spdy::Connection::start(websocket::into_byte_stream(reader, writer), false).unwrap();
    forward_and_echo(&conn, echo.port(), "0").await;
}

#[tokio::test]
async fn websocket_channel_port_forward_copies_both_ways() {
    let echo = echo_server().await;
    let addr = start_server(Some(echo)).await;
    let target = format!("/portforward?ports={}", echo.port());
    let (protocol, mut reader, writer) = websocket_client(addr, &target, "v4.channel.k8s.io").await;
    assert_eq!(protocol, "v4.channel.k8s.io");
    let port = echo.port().to_le_bytes();
    // The server announces the port on the data and the error channel first.
    for channel in [0u8, 1] {
        let Some(Message::Binary(data)) = reader.next().await.unwrap() else { panic!("closed") };
        assert_eq!(&data[..], &[channel, port[0], port[1]]);
    }
    writer.binary(b"\x00echo me").await.unwrap();
    let mut echoed = Vec::new();
    while echoed != b"echo me" {
        let Some(Message::Binary(data)) = tokio::time::timeout(TIMEOUT, reader.next()).await.unwrap().unwrap() else {
            panic!("closed after {echoed:?}");
        };
        assert_eq!(data[0], 0);
        echoed.extend_from_slice(&data[1..]);
    }
}

/// A peer like moby/spdystream (kubectl's SPDY library): it never sends WINDOW_UPDATE, so the
/// server must not hold output back once the initial 64 KiB window is spent. It pings too.
#[tokio::test]
async fn spdy_peer_without_flow_control_is_not_stalled_and_pings_are_answered() {
    use super::spdy::frame::{Frame, FrameReader, FrameWriter};
    let echo = echo_server().await;
    let addr = start_server(Some(echo)).await;
    let headers =
        [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "portforward.k8s.io")];
    let (status, _, stream) = request(addr, "/portforward", &headers).await;
    assert_eq!(status, 101);
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    let mut writer = FrameWriter::new().unwrap();
    let port = echo.port().to_string();
    let open = |id: u32, kind: &str| Frame::SynStream {
        stream_id: id,
        fin: false,
        unidirectional: false,
        headers: vec![
            ("streamtype".into(), kind.into()),
            ("port".into(), port.clone()),
            ("requestid".into(), "0".into()),
        ],
    };
    let payload: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let mut frames = vec![open(1, "error"), open(3, "data"), Frame::Ping { id: 1 }];
    frames.extend(payload.chunks(16 * 1024).map(|c| Frame::Data {
        stream_id: 3,
        fin: false,
        data: Bytes::copy_from_slice(c),
    }));
    frames.push(Frame::Data { stream_id: 3, fin: true, data: Bytes::new() });
    let mut wire = Vec::new();
    for frame in &frames {
        writer.encode(frame, &mut wire).unwrap();
    }
    // The write half is handed back, not dropped: dropping it would half-close the socket,
    // which the server takes for the peer hanging up.
    let _write = tokio::spawn(async move {
        write.write_all(&wire).await.unwrap();
        write
    });
    let (mut echoed, mut pinged, mut replies, mut error_done) = (Vec::new(), false, 0, false);
    while !(error_done && pinged && replies == 2) {
        let frame = tokio::time::timeout(TIMEOUT, reader.read()).await.expect("stalled").unwrap().unwrap();
        match frame {
            Frame::SynReply { .. } => replies += 1,
            Frame::Ping { id: 1 } => pinged = true,
            Frame::Data { stream_id: 3, data, .. } => echoed.extend_from_slice(&data),
            Frame::Data { stream_id: 1, fin: true, .. } => error_done = true,
            _ => {}
        }
    }
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload);
}
