use super::*;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn fixtures() -> (Vec<Service>, Vec<EndpointSlice>, Vec<Pod>) {
    let services = vec![
        service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]},
        })),
        service(json!({
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
        })),
        service(json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.org"},
        })),
        service(json!({
            "metadata": {"name": "alias", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local."},
        })),
    ];
    let slices = vec![
        serde_json::from_value(json!({
            "metadata": {"name": "db-x", "namespace": "prod", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.42.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.2.6"], "conditions": {"ready": true}},
                {"addresses": ["10.42.2.7"], "hostname": "db-2", "conditions": {"ready": false}},
            ],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        }))
        .unwrap(),
        serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.1.9"]}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }))
        .unwrap(),
    ];
    let pods = vec![
        serde_json::from_value(json!({
            "metadata": {"name": "lonely", "namespace": "apps"},
            "spec": {"containers": []},
            "status": {"podIP": "10.42.3.3", "podIPs": [{"ip": "10.42.3.3"}]},
        }))
        .unwrap(),
    ];
    (services, slices, pods)
}

fn view() -> View {
    let (services, slices, pods) = fixtures();
    View::build(
        "cluster.local",
        &services.iter().collect::<Vec<_>>(),
        &slices.iter().collect::<Vec<_>>(),
        &pods.iter().collect::<Vec<_>>(),
        7,
    )
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn data(lookup: Lookup) -> Vec<String> {
    match lookup {
        Lookup::Answer(records) => {
            assert!(records.iter().all(|r| r.ttl == TTL), "cluster records carry the 5s TTL");
            let mut out: Vec<String> = records.iter().map(|r| r.data.to_string()).collect();
            out.sort();
            out
        }
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[test]
fn a_cluster_ip_service_answers_its_cluster_ip_case_insensitively() {
    let view = view();
    assert_eq!(data(view.lookup(&name("web.default.svc.cluster.local."), RecordType::A)), ["10.43.0.20"]);
    assert_eq!(data(view.lookup(&name("WEB.Default.svc.cluster.local"), RecordType::A)), ["10.43.0.20"]);
}

#[test]
fn an_ipv4_only_name_has_no_aaaa_but_exists() {
    assert_eq!(view().lookup(&name("web.default.svc.cluster.local."), RecordType::AAAA), Lookup::Answer(vec![]));
}

#[test]
fn a_headless_service_answers_every_ready_endpoint() {
    let view = view();
    assert_eq!(data(view.lookup(&name("db.prod.svc.cluster.local."), RecordType::A)), ["10.42.1.5", "10.42.2.6"]);
    assert_eq!(data(view.lookup(&name("db-0.db.prod.svc.cluster.local."), RecordType::A)), ["10.42.1.5"]);
    assert_eq!(data(view.lookup(&name("10-42-2-6.db.prod.svc.cluster.local."), RecordType::A)), ["10.42.2.6"]);
    assert_eq!(view.lookup(&name("db-2.db.prod.svc.cluster.local."), RecordType::A), Lookup::NxDomain);
}

#[test]
fn named_ports_have_srv_records_pointing_at_the_service_or_its_endpoints() {
    let view = view();
    assert_eq!(
        data(view.lookup(&name("_http._tcp.web.default.svc.cluster.local."), RecordType::SRV)),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        data(view.lookup(&name("_pg._tcp.db.prod.svc.cluster.local."), RecordType::SRV)),
        ["0 50 5432 10-42-2-6.db.prod.svc.cluster.local.", "0 50 5432 db-0.db.prod.svc.cluster.local."]
    );
    let Lookup::Answer(answers) = view.lookup(&name("_pg._tcp.db.prod.svc.cluster.local."), RecordType::SRV) else {
        panic!()
    };
    let extra: Vec<String> = view.additionals(&answers).iter().map(|r| format!("{} {}", r.name, r.data)).collect();
    assert!(extra.contains(&"db-0.db.prod.svc.cluster.local. 10.42.1.5".to_string()), "{extra:?}");
    assert_eq!(view.lookup(&name("_nope._tcp.web.default.svc.cluster.local."), RecordType::SRV), Lookup::NxDomain);
}

#[test]
fn external_name_services_are_cnames_and_cluster_targets_are_followed() {
    let view = view();
    assert_eq!(data(view.lookup(&name("ext.default.svc.cluster.local."), RecordType::A)), ["example.org."]);
    assert_eq!(
        data(view.lookup(&name("alias.default.svc.cluster.local."), RecordType::A)),
        ["10.43.0.20", "web.default.svc.cluster.local."]
    );
}

#[test]
fn pod_names_answer_the_address_they_spell() {
    let view = view();
    assert_eq!(data(view.lookup(&name("10-42-3-3.apps.pod.cluster.local."), RecordType::A)), ["10.42.3.3"]);
    assert_eq!(view.lookup(&name("10-42-3.apps.pod.cluster.local."), RecordType::A), Lookup::NxDomain);
}

#[test]
fn reverse_names_of_services_endpoints_and_pods() {
    let view = view();
    assert_eq!(
        data(view.lookup(&name("20.0.43.10.in-addr.arpa."), RecordType::PTR)),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        data(view.lookup(&name("5.1.42.10.in-addr.arpa."), RecordType::PTR)),
        ["db-0.db.prod.svc.cluster.local."]
    );
    assert_eq!(
        data(view.lookup(&name("3.3.42.10.in-addr.arpa."), RecordType::PTR)),
        ["10-42-3-3.apps.pod.cluster.local."]
    );
    assert_eq!(view.lookup(&name("1.2.0.192.in-addr.arpa."), RecordType::PTR), Lookup::NotOurs);
}

#[test]
fn unknown_names_in_the_domain_are_nxdomain_and_parents_exist() {
    let view = view();
    assert_eq!(view.lookup(&name("nope.default.svc.cluster.local."), RecordType::A), Lookup::NxDomain);
    assert_eq!(view.lookup(&name("default.svc.cluster.local."), RecordType::A), Lookup::Answer(vec![]));
    assert_eq!(view.lookup(&name("svc.cluster.local."), RecordType::A), Lookup::Answer(vec![]));
    assert_eq!(data(view.lookup(&name("cluster.local."), RecordType::SOA)), [view.soa().data.to_string()]);
    assert!(view.soa().data.to_string().contains(" 7 "), "the serial is the view's: {}", view.soa().data);
}

#[test]
fn names_outside_the_domain_are_not_ours() {
    assert_eq!(view().lookup(&name("example.org."), RecordType::A), Lookup::NotOurs);
    assert_eq!(view().lookup(&name("notcluster.local."), RecordType::A), Lookup::NotOurs);
}

#[test]
fn another_cluster_domain_is_honoured() {
    let (services, slices, pods) = fixtures();
    let view = View::build(
        "corp.example",
        &services.iter().collect::<Vec<_>>(),
        &slices.iter().collect::<Vec<_>>(),
        &pods.iter().collect::<Vec<_>>(),
        1,
    );
    assert_eq!(data(view.lookup(&name("web.default.svc.corp.example."), RecordType::A)), ["10.43.0.20"]);
    assert_eq!(view.lookup(&name("web.default.svc.cluster.local."), RecordType::A), Lookup::NotOurs);
}

#[test]
fn ipv6_reverse_names_parse() {
    assert_eq!(
        parse_reverse("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"),
        Some("2001:db8::1".parse().unwrap())
    );
    assert_eq!(parse_reverse("4.3.2.1.in-addr.arpa"), Some("1.2.3.4".parse().unwrap()));
    assert_eq!(parse_reverse("3.2.1.in-addr.arpa"), None);
}
