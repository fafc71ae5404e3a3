//! Services and EndpointSlices to service ports: which services, ports and endpoints.

use super::*;
use k8s_openapi::api::core::v1::{ServicePort as SpecPort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn service(name: &str, cluster_ip: &str, ports: &[(&str, &str, i32)]) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(port_name, proto, port)| SpecPort {
                        name: (!port_name.is_empty()).then(|| port_name.to_string()),
                        protocol: Some(proto.to_string()),
                        port: *port,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

fn conditions(ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> EndpointConditions {
    EndpointConditions { ready, serving, terminating }
}

fn slice(service: &str, ports: &[(&str, &str, i32)], endpoints: &[(&str, EndpointConditions)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-abc")),
            namespace: Some("ns".into()),
            labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(ip, c)| SliceEndpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(c.clone()),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(
            ports
                .iter()
                .map(|(name, proto, port)| EndpointPort {
                    name: Some(name.to_string()),
                    protocol: Some(proto.to_string()),
                    port: Some(*port),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

fn ready() -> EndpointConditions {
    conditions(Some(true), Some(true), Some(false))
}

fn ep(ip: &str, port: u16) -> Endpoint {
    Endpoint { ip: ip.parse().unwrap(), port }
}

#[test]
fn named_ports_take_their_target_port_from_the_slice_port_of_the_same_name() {
    let svc = service("web", "10.43.0.5", &[("http", "TCP", 80), ("dns", "UDP", 53)]);
    let sl = slice("web", &[("http", "TCP", 8080), ("dns", "UDP", 5353)], &[("10.42.0.5", ready())]);
    let ports = service_ports("node-a", [&svc], [&sl]);
    assert_eq!(ports.len(), 2);
    let http = ports.iter().find(|p| p.port_name == "http").unwrap();
    assert_eq!((http.protocol, http.port), (Protocol::Tcp, 80));
    assert_eq!(http.endpoints, vec![ep("10.42.0.5", 8080)]);
    let dns = ports.iter().find(|p| p.port_name == "dns").unwrap();
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!(dns.endpoints, vec![ep("10.42.0.5", 5353)]);
    assert_eq!(http.id(), "ns/web/tcp/http");
}

#[test]
fn only_ready_endpoints_are_used_and_unset_conditions_mean_ready() {
    let svc = service("web", "10.43.0.5", &[("", "TCP", 80)]);
    let sl = slice(
        "web",
        &[("", "TCP", 8080)],
        &[
            ("10.42.0.5", ready()),
            ("10.42.0.6", conditions(Some(false), Some(false), Some(false))),
            ("10.42.0.7", conditions(None, None, None)),
            ("10.42.0.8", conditions(Some(false), Some(true), Some(true))),
        ],
    );
    let ports = service_ports("node-a", [&svc], [&sl]);
    assert_eq!(ports[0].endpoints, vec![ep("10.42.0.5", 8080), ep("10.42.0.7", 8080)]);
    assert_eq!(ports[0].id(), "ns/web/tcp/80");
}

#[test]
fn serving_terminating_endpoints_are_a_fallback_when_none_is_ready() {
    let svc = service("web", "10.43.0.5", &[("", "TCP", 80)]);
    let sl = slice(
        "web",
        &[("", "TCP", 8080)],
        &[
            ("10.42.0.6", conditions(Some(false), Some(false), Some(true))),
            ("10.42.0.8", conditions(Some(false), Some(true), Some(true))),
        ],
    );
    assert_eq!(service_ports("node-a", [&svc], [&sl])[0].endpoints, vec![ep("10.42.0.8", 8080)]);
}

#[test]
fn a_service_without_slices_has_no_endpoints_and_slices_of_other_services_do_not_count() {
    let svc = service("web", "10.43.0.5", &[("", "TCP", 80)]);
    let other = slice("other", &[("", "TCP", 8080)], &[("10.42.0.5", ready())]);
    let ports = service_ports("node-a", [&svc], [&other]);
    assert_eq!(ports.len(), 1);
    assert!(ports[0].endpoints.is_empty());
}

#[test]
fn headless_external_name_and_ipv6_services_are_skipped() {
    let headless = service("headless", "None", &[("", "TCP", 80)]);
    let v6 = service("v6", "fd00::5", &[("", "TCP", 80)]);
    let mut external = service("ext", "", &[("", "TCP", 80)]);
    external.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    assert!(service_ports("node-a", [&headless, &v6, &external], []).is_empty());
}

#[test]
fn node_ports_external_ips_and_client_ip_affinity_are_carried() {
    let mut svc = service("web", "10.43.0.5", &[("", "TCP", 80)]);
    let spec = svc.spec.as_mut().unwrap();
    spec.type_ = Some("NodePort".into());
    spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
    spec.external_ips = Some(vec!["192.0.2.7".into()]);
    spec.session_affinity = Some("ClientIP".into());
    let port = &service_ports("node-a", [&svc], [])[0];
    assert_eq!(port.node_port, Some(30080));
    assert_eq!(port.external_ips, vec!["192.0.2.7".parse::<Ipv4Addr>().unwrap()]);
    assert_eq!(port.affinity_timeout_seconds, Some(10_800));
}

#[test]
fn traffic_policies_local_keep_the_endpoints_on_this_node() {
    let mut svc = service("web", "10.43.0.5", &[("", "TCP", 80)]);
    let spec = svc.spec.as_mut().unwrap();
    spec.type_ = Some("NodePort".into());
    spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
    spec.external_traffic_policy = Some("Local".into());
    spec.internal_traffic_policy = Some("Local".into());
    let mut sl = slice("web", &[("", "TCP", 8080)], &[("10.42.0.5", ready()), ("10.42.1.5", ready())]);
    let endpoints = sl.endpoints.as_mut().unwrap();
    endpoints[0].node_name = Some("node-a".into());
    endpoints[1].node_name = Some("node-b".into());
    let port = &service_ports("node-a", [&svc], [&sl])[0];
    assert!(port.external_local && port.internal_local);
    assert_eq!(port.endpoints.len(), 2);
    assert_eq!(port.local_endpoints, vec![ep("10.42.0.5", 8080)]);
    // externalTrafficPolicy means nothing without a NodePort or an external IP.
    let mut cluster_ip_only = service("plain", "10.43.0.6", &[("", "TCP", 80)]);
    cluster_ip_only.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    assert!(!service_ports("node-a", [&cluster_ip_only], [])[0].external_local);
}
