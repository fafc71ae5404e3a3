//! A real server on 127.0.0.1:0 over a fixed view, queried with hickory-built packets; the
//! upstream is a tiny responder on loopback that counts what reaches it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::forward::Forwarder;
use crate::view::View;

fn cluster_view(endpoints: usize) -> View {
    let services: Vec<Service> = vec![
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80}]}}))
        .unwrap(),
        serde_json::from_value(json!({"metadata": {"name": "big", "namespace": "default"},
            "spec": {"clusterIP": "None"}}))
        .unwrap(),
    ];
    let eps: Vec<_> =
        (0..endpoints).map(|i| json!({"addresses": [format!("10.42.{}.{}", i / 250, i % 250 + 1)]})).collect();
    let slices: Vec<EndpointSlice> = vec![
        serde_json::from_value(json!({"metadata": {"name": "big-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "big"}}, "addressType": "IPv4", "endpoints": eps}))
        .unwrap(),
    ];
    View::build("cluster.local", &services.iter().collect::<Vec<_>>(), &slices.iter().collect::<Vec<_>>(), &[], 3)
}

/// An upstream resolver: `example.org` A 192.0.2.7 (TTL 60), anything else NXDOMAIN.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>, CancellationToken) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (count, token) = (seen.clone(), stop.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let (n, peer) =
                tokio::select! { _ = token.cancelled() => return, r = socket.recv_from(&mut buf) => r.unwrap() };
            count.fetch_add(1, Ordering::SeqCst);
            let request = Message::from_vec(&buf[..n]).unwrap();
            let mut response = Message::response(request.metadata.id, request.metadata.op_code);
            response.add_queries(request.queries.clone());
            let q = &request.queries[0];
            if q.name.to_ascii() == "example.org." {
                response.add_answer(Record::from_rdata(q.name.clone(), 60, RData::A(A(Ipv4Addr::new(192, 0, 2, 7)))));
            } else {
                response.metadata.response_code = ResponseCode::NXDomain;
                let soa = SOA::new(Name::root(), Name::root(), 1, 1, 1, 1, 30);
                response.add_authority(Record::from_rdata(Name::from_ascii("org.").unwrap(), 30, RData::SOA(soa)));
            }
            socket.send_to(&response.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    (addr, seen, stop)
}

async fn start(view: View, upstreams: Vec<SocketAddr>) -> (SocketAddr, CancellationToken) {
    let handler = Arc::new(Handler::new(Arc::new(SharedView::new(view)), Forwarder::new(upstreams)));
    let shutdown = CancellationToken::new();
    let (addr, _task) = listen("127.0.0.1:0".parse().unwrap(), handler, shutdown.clone()).await.unwrap();
    (addr, shutdown)
}

fn query(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

async fn udp(server: SocketAddr, request: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&request.to_vec().unwrap(), server).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(&mut buf)).await.unwrap().unwrap();
    let response = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(response.metadata.id, request.metadata.id);
    response
}

async fn tcp(server: SocketAddr, request: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let bytes = request.to_vec().unwrap();
    stream.write_all(&(bytes.len() as u16).to_be_bytes()).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.unwrap();
    Message::from_vec(&body).unwrap()
}

fn answers(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

#[tokio::test]
async fn cluster_names_are_answered_authoritatively_over_udp_and_tcp() {
    let (server, shutdown) = start(cluster_view(2), vec![]).await;
    for response in [
        udp(server, &query("web.default.svc.cluster.local.", RecordType::A, false)).await,
        tcp(server, &query("web.default.svc.cluster.local.", RecordType::A, true)).await,
    ] {
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative);
        assert_eq!(answers(&response), ["10.43.0.20"]);
    }
    shutdown.cancel();
}

#[tokio::test]
async fn before_the_cluster_is_read_cluster_names_fail_and_others_are_forwarded() {
    let (upstream, seen, stop) = upstream().await;
    let (server, shutdown) = start(View::new("cluster.local"), vec![upstream]).await;
    for name in ["web.default.svc.cluster.local.", "cluster.local.", "nope.cluster.local."] {
        let response = udp(server, &query(name, RecordType::A, false)).await;
        assert_eq!(response.metadata.response_code, ResponseCode::ServFail, "{name}");
        assert!(response.answers.is_empty(), "{name}");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0, "cluster names were forwarded");
    let outside = udp(server, &query("example.org.", RecordType::A, false)).await;
    assert_eq!(outside.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&outside), ["192.0.2.7"]);
    shutdown.cancel();
    stop.cancel();
}

#[tokio::test]
async fn unknown_cluster_names_are_nxdomain_with_the_zone_soa() {
    let (server, shutdown) = start(cluster_view(1), vec![]).await;
    let response = udp(server, &query("nope.default.svc.cluster.local.", RecordType::A, true)).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert!(response.answers.is_empty());
    assert!(matches!(response.authorities[0].data, RData::SOA(_)));
    assert!(response.edns.is_some(), "an EDNS query gets an EDNS answer");
    let nodata = udp(server, &query("web.default.svc.cluster.local.", RecordType::AAAA, false)).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities.len(), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn srv_answers_carry_the_target_addresses() {
    let (server, shutdown) = start(cluster_view(1), vec![]).await;
    let response = udp(server, &query("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV, false)).await;
    assert_eq!(answers(&response), ["0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(response.additionals.iter().map(|r| r.data.to_string()).collect::<Vec<_>>(), ["10.43.0.20"]);
    shutdown.cancel();
}

#[tokio::test]
async fn a_udp_answer_too_big_is_truncated_and_tcp_carries_it_whole() {
    let (server, shutdown) = start(cluster_view(100), vec![]).await;
    let small = udp(server, &query("big.default.svc.cluster.local.", RecordType::A, false)).await;
    assert!(small.metadata.truncation);
    assert!(small.answers.is_empty());
    let whole = tcp(server, &query("big.default.svc.cluster.local.", RecordType::A, false)).await;
    assert!(!whole.metadata.truncation);
    assert_eq!(whole.answers.len(), 100);
    shutdown.cancel();
}

#[tokio::test]
async fn other_names_are_forwarded_and_cached_answers_and_denials_alike() {
    let (up, seen, stop) = upstream().await;
    let (server, shutdown) = start(cluster_view(1), vec![up]).await;
    for _ in 0..3 {
        let response = udp(server, &query("example.org.", RecordType::A, false)).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(!response.metadata.authoritative);
        assert_eq!(answers(&response), ["192.0.2.7"]);
    }
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the answer came from the cache after the first query");
    for _ in 0..2 {
        let response = udp(server, &query("missing.example.org.", RecordType::A, false)).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(seen.load(Ordering::SeqCst), 2, "the denial was cached too");
    // Unknown reverse names are not ours either.
    let reverse = udp(server, &query("9.9.9.10.in-addr.arpa.", RecordType::PTR, false)).await;
    assert_eq!(reverse.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    stop.cancel();
    shutdown.cancel();
}

#[tokio::test]
async fn no_upstream_answering_is_a_server_failure() {
    // A bound socket that never answers: the forwarder times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (server, shutdown) = start(cluster_view(1), vec![silent.local_addr().unwrap()]).await;
    let response = udp(server, &query("example.org.", RecordType::A, false)).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    // Cluster names do not wait on the upstream.
    let cluster = udp(server, &query("web.default.svc.cluster.local.", RecordType::A, false)).await;
    assert_eq!(answers(&cluster), ["10.43.0.20"]);
    shutdown.cancel();
}

#[tokio::test]
async fn garbage_gets_a_format_error() {
    let (server, shutdown) = start(cluster_view(1), vec![]).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&[0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff], server).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(&mut buf)).await.unwrap().unwrap();
    let response = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(response.metadata.id, 0x1234);
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    shutdown.cancel();
}
