//! Real kubectl binaries (1.27: SPDY; 1.36: WebSocket v5 and the SPDY-in-WebSocket tunnel)
//! against the streaming handlers behind a minimal fake API server on 127.0.0.1 that serves
//! discovery, one Running pod and its exec, attach and portforward subresources.
//!
//! Ignored by default because it needs the kubectl binaries the e2e setup installs under
//! `.tools/bin` (`cargo test -p tug-kubelet streaming::kubectl -- --ignored`); the e2e suite
//! covers the same through the real API server once the node agent runs pods.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tug_runtime::cri::RuntimeError;

use super::tests::{echo_server, fake_session};
use super::{parse_remote_command_query, port_forward, remote_command};

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default","uid":"u1"},
"spec":{"containers":[{"name":"c","image":"busybox"}]},
"status":{"phase":"Running","containerStatuses":[{"name":"c","ready":true,"restartCount":0,"image":"busybox","imageID":"","state":{"running":{}}}]}}"#;
const API_VERSIONS: &str = r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}"#;
const API_GROUPS: &str = r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#;
const CORE_RESOURCES: &str = r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[
{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},
{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},
{"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}"#;

fn kubectl(version: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin");
    let path = root.join(format!("kubectl-{version}"));
    assert!(path.exists(), "{} is missing: run the e2e setup first", path.display());
    path
}

/// The transport of each streaming request: `upgrade header (subprotocols)`.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

async fn fake_apiserver(echo: SocketAddr, seen: Seen) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move { Ok::<_, Infallible>(route(req, echo, seen).await) }
            });
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

async fn route(req: Request<Incoming>, echo: SocketAddr, seen: Seen) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if let Some(upgrade) = req.headers().get("upgrade") {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let line = format!(
            "{} {} ({}{})",
            path.rsplit('/').next().unwrap_or_default(),
            upgrade.to_str().unwrap_or_default(),
            header("sec-websocket-protocol"),
            header("x-stream-protocol-version"),
        );
        seen.lock().unwrap().push(line);
    }
    let json = |body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        response.headers_mut().insert("content-type", "application/json".parse().unwrap());
        response
    };
    match path.as_str() {
        "/api" => json(API_VERSIONS),
        "/apis" => json(API_GROUPS),
        "/api/v1" => json(CORE_RESOURCES),
        "/api/v1/namespaces/default/pods/p" => json(POD),
        "/api/v1/namespaces/default/pods/p/exec" | "/api/v1/namespaces/default/pods/p/attach" => {
            let options = parse_remote_command_query(req.uri().query()).unwrap();
            remote_command(req, options, |options| async move { Ok(fake_session(options)) }).await
        }
        "/api/v1/namespaces/default/pods/p/portforward" => {
            port_forward(req, move |port| async move {
                TcpStream::connect((echo.ip(), port)).await.map_err(|e| RuntimeError::io("connect", "port", e))
            })
            .await
        }
        _ => {
            let mut response =
                json(r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#);
            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
            response
        }
    }
}

fn kubeconfig(dir: &tempfile::TempDir, server: SocketAddr) -> PathBuf {
    let path = dir.path().join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{server}\n\
         users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n    namespace: default\n\
         current-context: c\n"
    );
    std::fs::write(&path, config).unwrap();
    path
}

async fn run(version: &str, config: &PathBuf, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(kubectl(version))
        .arg("--kubeconfig")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn exec_attach_and_port_forward(version: &str) -> Vec<String> {
    let echo = echo_server().await;
    let seen = Seen::default();
    let server = fake_apiserver(echo, seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(&dir, server);

    let (code, stdout, stderr) = run(version, &config, &["exec", "p", "-c", "c", "--", "exit=3"], b"").await;
    assert_eq!(code, 3, "stdout {stdout:?} stderr {stderr:?}");
    assert_eq!(stdout, "hello\n");
    assert!(stderr.starts_with("bye\n"), "{stderr:?}");
    assert!(stderr.contains("command terminated with exit code 3"), "{stderr:?}");

    let (code, stdout, stderr) = run(version, &config, &["exec", "-i", "p", "--", "cat"], b"from stdin\n").await;
    assert_eq!(code, 0, "stderr {stderr:?}");
    assert_eq!(stdout, "hello\nfrom stdin\n");

    let (code, stdout, stderr) = run(version, &config, &["attach", "p", "-c", "c"], b"").await;
    assert_eq!(code, 0, "stderr {stderr:?}");
    assert_eq!(stdout, "hello\n");

    // Port-forward: kubectl listens locally; a connection through it reaches the echo server.
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let mapping = format!("{local}:{}", echo.port());
    let mut child = tokio::process::Command::new(kubectl(version))
        .arg("--kubeconfig")
        .arg(&config)
        .args(["port-forward", "--address", "127.0.0.1", "pod/p", &mapping])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap();
    assert!(line.as_deref().is_some_and(|l| l.starts_with("Forwarding from")), "{line:?}");
    for round in 0..2 {
        let mut conn = TcpStream::connect(("127.0.0.1", local)).await.unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8 + round).collect();
        conn.write_all(&payload).await.unwrap();
        let mut echoed = vec![0u8; payload.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert!(echoed == payload, "round {round}: echo differs");
    }
    child.kill().await.unwrap();
    seen.lock().unwrap().clone()
}

#[tokio::test]
#[ignore = "needs the kubectl binaries under .tools/bin"]
async fn kubectl_1_27_exec_attach_and_port_forward_over_spdy() {
    let seen = exec_attach_and_port_forward("1.27").await;
    assert!(seen.iter().all(|s| s.contains("SPDY/3.1 (")), "{seen:?}");
}

#[tokio::test]
#[ignore = "needs the kubectl binaries under .tools/bin"]
async fn kubectl_1_36_exec_attach_and_port_forward_over_websocket() {
    let seen = exec_attach_and_port_forward("1.36").await;
    // No fallback to SPDY: exec and attach speak v5, port-forward tunnels SPDY in the WebSocket.
    assert!(seen.iter().all(|s| s.contains("websocket")), "{seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("exec") && s.contains("v5.channel.k8s.io")), "{seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("portforward") && s.contains("SPDY/3.1+portforward.k8s.io")), "{seen:?}");
}
