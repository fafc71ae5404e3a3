use super::probe::{Outcome, health_check_request, resolve_port, serving_status};
use super::*;
use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, HTTPHeader, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn container() -> Container {
    Container {
        name: "web".into(),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
        ..Default::default()
    }
}

/// Serves one HTTP/1.1 answer with `status` to every connection; returns the port and the
/// requests it saw.
async fn http_server(status: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            log.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (port, seen)
}

fn http_probe(port: IntOrString, path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            port,
            path: Some(path.into()),
            http_headers: Some(vec![HTTPHeader { name: "X-Probe".into(), value: "yes".into() }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_against(probe: &Probe, container: &Container) -> Outcome {
    probe::network(probe, container, "127.0.0.1").await
}

#[tokio::test]
async fn http_probes_succeed_below_400_and_send_upstreams_headers() {
    let (port, seen) = http_server(302).await;
    let mut c = container();
    c.ports.as_mut().unwrap()[0].container_port = i32::from(port);
    assert_eq!(run_against(&http_probe(IntOrString::String("http".into()), "healthz"), &c).await, Outcome::Success);
    let request = seen.lock().unwrap()[0].clone();
    assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
    assert!(request.to_lowercase().contains("user-agent: kube-probe/1.36"), "{request}");
    assert!(request.to_lowercase().contains("x-probe: yes"), "{request}");
}

#[tokio::test]
async fn http_probes_fail_with_the_status_code_or_the_dial_error() {
    let (port, _) = http_server(503).await;
    let outcome = run_against(&http_probe(IntOrString::Int(i32::from(port)), "/"), &container()).await;
    assert_eq!(outcome, Outcome::Failure("HTTP probe failed with statuscode: 503".into()));
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let outcome = run_against(&http_probe(IntOrString::Int(i32::from(closed)), "/x"), &container()).await;
    assert_eq!(
        outcome,
        Outcome::Failure(format!(
            "Get \"http://127.0.0.1:{closed}/x\": dial tcp 127.0.0.1:{closed}: connect: connection refused"
        ))
    );
}

#[tokio::test]
async fn tcp_probes_connect_or_fail_as_go_words_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let probe = |port: u16| Probe {
        tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(i32::from(port)), host: None }),
        ..Default::default()
    };
    assert_eq!(run_against(&probe(open), &container()).await, Outcome::Success);
    drop(listener);
    assert_eq!(
        run_against(&probe(open), &container()).await,
        Outcome::Failure(format!("dial tcp 127.0.0.1:{open}: connect: connection refused"))
    );
}

#[test]
fn named_ports_resolve_through_the_containers_ports() {
    assert_eq!(resolve_port(&IntOrString::String("http".into()), &container()), Some(8080));
    assert_eq!(resolve_port(&IntOrString::String("9090".into()), &container()), Some(9090));
    assert_eq!(resolve_port(&IntOrString::String("nope".into()), &container()), None);
    assert_eq!(resolve_port(&IntOrString::Int(0), &container()), None);
}

#[test]
fn grpc_health_messages_are_framed_protobuf() {
    assert_eq!(health_check_request(""), vec![0, 0, 0, 0, 0]);
    assert_eq!(health_check_request("db"), vec![0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
    assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), 1);
    assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), 2);
    assert_eq!(serving_status(&[0, 0, 0, 0, 0]), 0);
}

#[test]
fn readiness_needs_startup_first_and_failures_name_the_probe() {
    let mut c = container();
    c.readiness_probe = Some(Probe::default());
    c.startup_probe = Some(Probe::default());
    let mut results = ProbeResults::default();
    results.set("c1", ProbeKind::Readiness, ProbeResult::Success);
    assert!(!results.started("c1", &c) && !results.ready("c1", &c));
    results.set("c1", ProbeKind::Startup, ProbeResult::Success);
    assert!(results.started("c1", &c) && results.ready("c1", &c));
    assert_eq!(results.failed("c1"), None);
    results.set("c1", ProbeKind::Liveness, ProbeResult::Failure);
    assert_eq!(results.failed("c1"), Some(ProbeKind::Liveness));
    // A container without probes is started and ready as soon as it runs.
    assert!(ProbeResults::default().ready("c2", &container()));
}
