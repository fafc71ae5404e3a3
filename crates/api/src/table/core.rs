//! Printers of the core group other than pods and replication controllers: nodes, namespaces,
//! services and endpoints, configuration, events, quotas, pod templates.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::format::{containers, host_port, labels};
use super::object::{age, count, flag, get, int, list, name, opt_text, since, text, timestamp};
use super::quantity::quantity_cell;
use super::{AGE, Column, NAME, Printer, docs};

pub(super) const PRINTERS: &[Printer] = &[
    Printer::new("", "Node", NODE_COLUMNS, node_cells),
    Printer::new("", "Namespace", NAMESPACE_COLUMNS, namespace_cells),
    Printer::new("", "Service", SERVICE_COLUMNS, service_cells),
    Printer::new("", "Endpoints", ENDPOINTS_COLUMNS, endpoints_cells),
    Printer::new("", "ConfigMap", CONFIG_MAP_COLUMNS, config_map_cells),
    Printer::new("", "Secret", SECRET_COLUMNS, secret_cells),
    Printer::new("", "ServiceAccount", SERVICE_ACCOUNT_COLUMNS, service_account_cells),
    Printer::new("", "Event", EVENT_COLUMNS, event_cells),
    // events.k8s.io serves the same events; upstream prints them after converting to core.
    Printer::new("events.k8s.io", "Event", EVENT_COLUMNS, events_v1_cells),
    Printer::new("", "ResourceQuota", RESOURCE_QUOTA_COLUMNS, resource_quota_cells),
    Printer::new("", "PodTemplate", POD_TEMPLATE_COLUMNS, pod_template_cells),
    Printer::new("", "ComponentStatus", COMPONENT_STATUS_COLUMNS, component_status_cells),
];

const NODE_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Status", "The status of the node"),
    Column::string("Roles", "The roles of the node"),
    AGE,
    Column::string("Version", docs::NODE_INFO_KUBELET_VERSION),
    Column::string("Internal-IP", docs::NODE_STATUS_ADDRESSES).wide(),
    Column::string("External-IP", docs::NODE_STATUS_ADDRESSES).wide(),
    Column::string("OS-Image", docs::NODE_INFO_OS_IMAGE).wide(),
    Column::string("Kernel-Version", docs::NODE_INFO_KERNEL_VERSION).wide(),
    Column::string("Container-Runtime", docs::NODE_INFO_CONTAINER_RUNTIME_VERSION).wide(),
];

/// Labels naming a node's roles: `node-role.kubernetes.io/<role>` (any value) and the older
/// `kubernetes.io/role=<role>`.
const NODE_ROLE_PREFIX: &str = "node-role.kubernetes.io/";
const NODE_ROLE_LABEL: &str = "kubernetes.io/role";

fn node_cells(node: &Value, now: Timestamp) -> Vec<Value> {
    // Only readiness makes the status; a repeated condition type counts by its last entry.
    let ready = list(node, "/status/conditions").iter().rev().find(|c| text(c, "/type") == "Ready");
    let mut status = vec![match ready {
        Some(c) if text(c, "/status") == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if flag(node, "/spec/unschedulable") {
        status.push("SchedulingDisabled");
    }

    let mut roles = BTreeSet::new();
    if let Some(node_labels) = get(node, "/metadata/labels").and_then(Value::as_object) {
        for (key, value) in node_labels {
            let value = value.as_str().unwrap_or("");
            match key.strip_prefix(NODE_ROLE_PREFIX) {
                Some(role) if !role.is_empty() => {
                    roles.insert(role);
                }
                Some(_) => {}
                None if key == NODE_ROLE_LABEL && !value.is_empty() => {
                    roles.insert(value);
                }
                None => {}
            }
        }
    }
    let roles = if roles.is_empty() { "<none>".into() } else { roles.into_iter().collect::<Vec<_>>().join(",") };

    let address = |kind: &str| {
        list(node, "/status/addresses")
            .iter()
            .find(|a| text(a, "/type") == kind)
            .map_or("<none>", |a| text(a, "/address"))
    };
    let info = |field: &str| {
        let value = text(node, &format!("/status/nodeInfo/{field}"));
        if value.is_empty() { "<unknown>" } else { value }
    };
    vec![
        name(node).into(),
        status.join(",").into(),
        roles.into(),
        age(node, now).into(),
        text(node, "/status/nodeInfo/kubeletVersion").into(),
        address("InternalIP").into(),
        address("ExternalIP").into(),
        info("osImage").into(),
        info("kernelVersion").into(),
        info("containerRuntimeVersion").into(),
    ]
}

const NAMESPACE_COLUMNS: &[Column] = &[NAME, Column::string("Status", "The status of the namespace"), AGE];

fn namespace_cells(ns: &Value, now: Timestamp) -> Vec<Value> {
    // Upstream's defaulting makes every namespace Active until it is being deleted.
    let phase = opt_text(ns, "/status/phase").unwrap_or("Active");
    vec![name(ns).into(), phase.into(), age(ns, now).into()]
}

const SERVICE_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Type", docs::SERVICE_SPEC_TYPE),
    Column::string("Cluster-IP", docs::SERVICE_SPEC_CLUSTER_IP),
    Column::string("External-IP", docs::SERVICE_SPEC_EXTERNAL_IPS),
    Column::string("Port(s)", docs::SERVICE_SPEC_PORTS),
    AGE,
    Column::string("Selector", docs::SERVICE_SPEC_SELECTOR).wide(),
];

/// Load-balancer ingress points, sorted and without duplicates; the server prints them in
/// full (the 16-character cut is for narrow client output only).
pub(super) fn load_balancer_ingress(obj: &Value, pointer: &str) -> String {
    let points: BTreeSet<&str> = list(obj, pointer)
        .iter()
        .map(|i| if text(i, "/ip").is_empty() { text(i, "/hostname") } else { text(i, "/ip") })
        .filter(|p| !p.is_empty())
        .collect();
    points.into_iter().collect::<Vec<_>>().join(",")
}

fn service_external_ip(svc: &Value, kind: &str) -> String {
    let external: Vec<&str> = list(svc, "/spec/externalIPs").iter().filter_map(Value::as_str).collect();
    match kind {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".into(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let ingress = load_balancer_ingress(svc, "/status/loadBalancer/ingress");
            if !external.is_empty() {
                let mut all: Vec<&str> = ingress.split(',').filter(|s| !s.is_empty()).collect();
                all.extend(external);
                all.join(",")
            } else if !ingress.is_empty() {
                ingress
            } else {
                "<pending>".into()
            }
        }
        "ExternalName" => text(svc, "/spec/externalName").into(),
        _ => "<unknown>".into(),
    }
}

/// `80/TCP`, or `80:30080/TCP` with a node port, comma-separated.
fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = list(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let protocol = opt_text(p, "/protocol").unwrap_or("TCP");
            let node_port = int(p, "/nodePort");
            if node_port > 0 {
                format!("{}:{node_port}/{protocol}", int(p, "/port"))
            } else {
                format!("{}/{protocol}", int(p, "/port"))
            }
        })
        .collect();
    if ports.is_empty() { "<none>".into() } else { ports.join(",") }
}

fn service_cells(svc: &Value, now: Timestamp) -> Vec<Value> {
    // Defaulting gives every v1 service a type; internal services carry clusterIP in clusterIPs.
    let kind = opt_text(svc, "/spec/type").unwrap_or("ClusterIP");
    let cluster_ip = list(svc, "/spec/clusterIPs")
        .first()
        .and_then(Value::as_str)
        .or_else(|| opt_text(svc, "/spec/clusterIP"))
        .filter(|ip| !ip.is_empty())
        .unwrap_or("<none>");
    vec![
        name(svc).into(),
        kind.into(),
        cluster_ip.into(),
        service_external_ip(svc, kind).into(),
        service_ports(svc).into(),
        age(svc, now).into(),
        labels(get(svc, "/spec/selector")).into(),
    ]
}

const ENDPOINTS_COLUMNS: &[Column] = &[NAME, Column::string("Endpoints", docs::ENDPOINTS_SUBSETS), AGE];

/// Upstream's `formatEndpoints`: the first three `ip:port` pairs (bare IPs for port-less
/// headless services), then `+ N more...`.
fn format_endpoints(endpoints: &Value) -> String {
    let subsets = list(endpoints, "/subsets");
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let mut shown = Vec::new();
    let mut total = 0;
    for subset in subsets {
        let addresses = list(subset, "/addresses");
        let ports = list(subset, "/ports");
        if ports.is_empty() {
            total += addresses.len();
            shown.extend(addresses.iter().map(|a| text(a, "/ip").to_string()));
            continue;
        }
        for port in ports {
            total += addresses.len();
            shown.extend(addresses.iter().map(|a| host_port(text(a, "/ip"), int(port, "/port"))));
        }
    }
    let more = shown.len() > MAX;
    shown.truncate(MAX);
    let joined = shown.join(",");
    if more { format!("{joined} + {} more...", total - MAX) } else { joined }
}

fn endpoints_cells(endpoints: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(endpoints).into(), format_endpoints(endpoints).into(), age(endpoints, now).into()]
}

const CONFIG_MAP_COLUMNS: &[Column] = &[NAME, Column::string("Data", docs::CONFIG_MAP_DATA), AGE];

fn config_map_cells(cm: &Value, now: Timestamp) -> Vec<Value> {
    let entries = count(cm, "/data") + count(cm, "/binaryData");
    vec![name(cm).into(), entries.into(), age(cm, now).into()]
}

const SECRET_COLUMNS: &[Column] =
    &[NAME, Column::string("Type", docs::SECRET_TYPE), Column::string("Data", docs::SECRET_DATA), AGE];

fn secret_cells(secret: &Value, now: Timestamp) -> Vec<Value> {
    // Upstream counts its internal data, into which stringData has been merged.
    let mut keys = BTreeSet::new();
    for pointer in ["/data", "/stringData"] {
        if let Some(map) = get(secret, pointer).and_then(Value::as_object) {
            keys.extend(map.keys());
        }
    }
    let kind = opt_text(secret, "/type").unwrap_or("Opaque");
    vec![name(secret).into(), kind.into(), keys.len().into(), age(secret, now).into()]
}

const SERVICE_ACCOUNT_COLUMNS: &[Column] = &[NAME, Column::string("Secrets", docs::SERVICE_ACCOUNT_SECRETS), AGE];

fn service_account_cells(sa: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(sa).into(), count(sa, "/secrets").into(), age(sa, now).into()]
}

const EVENT_COLUMNS: &[Column] = &[
    Column::string("Last Seen", docs::EVENT_LAST_TIMESTAMP),
    Column::string("Type", docs::EVENT_TYPE),
    Column::string("Reason", docs::EVENT_REASON),
    Column::string("Object", docs::EVENT_INVOLVED_OBJECT),
    Column::string("Subobject", docs::OBJECT_REFERENCE_FIELD_PATH).wide(),
    Column::string("Source", docs::EVENT_SOURCE).wide(),
    Column::string("Message", docs::EVENT_MESSAGE),
    Column::string("First Seen", docs::EVENT_FIRST_TIMESTAMP).wide(),
    Column::string("Count", docs::EVENT_COUNT).wide(),
    NAME.wide(),
];

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() { b } else { a }
}

fn event_cells(ev: &Value, now: Timestamp) -> Vec<Value> {
    // Events of the new API have an eventTime and no firstTimestamp.
    let first_seen = match timestamp(ev, "/firstTimestamp") {
        Some(first) => since(Some(first), now),
        None => since(timestamp(ev, "/eventTime"), now),
    };
    let mut last_seen = match timestamp(ev, "/lastTimestamp") {
        Some(last) => since(Some(last), now),
        None => first_seen.clone(),
    };
    let mut times = int(ev, "/count");
    if let Some(series) = get(ev, "/series") {
        last_seen = since(timestamp(series, "/lastObservedTime"), now);
        times = int(series, "/count");
    } else if times == 0 {
        // Singleton events of the new API carry no count.
        times = 1;
    }
    let kind = text(ev, "/involvedObject/kind").to_lowercase();
    let target = match text(ev, "/involvedObject/name") {
        "" => kind,
        object => format!("{kind}/{object}"),
    };
    let component = first_non_empty(text(ev, "/source/component"), text(ev, "/reportingComponent"));
    let instance = first_non_empty(text(ev, "/source/host"), text(ev, "/reportingInstance"));
    let source = if instance.is_empty() { component.to_string() } else { format!("{component}, {instance}") };
    vec![
        last_seen.into(),
        text(ev, "/type").into(),
        text(ev, "/reason").into(),
        target.into(),
        text(ev, "/involvedObject/fieldPath").into(),
        source.into(),
        text(ev, "/message").trim().into(),
        first_seen.into(),
        times.into(),
        name(ev).into(),
    ]
}

/// An `events.k8s.io/v1` event in core's field names, as upstream's conversion maps them.
fn events_v1_cells(ev: &Value, now: Timestamp) -> Vec<Value> {
    let field = |pointer: &str| get(ev, pointer).cloned().unwrap_or(Value::Null);
    let core = json!({
        "metadata": field("/metadata"),
        "involvedObject": field("/regarding"),
        "reason": field("/reason"),
        "message": field("/note"),
        "type": field("/type"),
        "source": field("/deprecatedSource"),
        "firstTimestamp": field("/deprecatedFirstTimestamp"),
        "lastTimestamp": field("/deprecatedLastTimestamp"),
        "count": field("/deprecatedCount"),
        "eventTime": field("/eventTime"),
        "series": field("/series"),
        "reportingComponent": field("/reportingController"),
        "reportingInstance": field("/reportingInstance"),
    });
    event_cells(&core, now)
}

const RESOURCE_QUOTA_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Request", "Request represents a minimum amount of cpu/memory that a container may consume."),
    Column::string(
        "Limit",
        "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
    ),
    AGE,
];

fn resource_quota_cells(quota: &Value, now: Timestamp) -> Vec<Value> {
    let mut requests = Vec::new();
    let mut limits = Vec::new();
    if let Some(hard) = get(quota, "/status/hard").and_then(Value::as_object) {
        let mut resources: Vec<&String> = hard.keys().collect();
        resources.sort();
        for resource in resources {
            let used = quantity_cell(get(quota, "/status/used").and_then(|u| u.get(resource.as_str())));
            let entry = format!("{resource}: {used}/{}", quantity_cell(hard.get(resource.as_str())));
            let mut pieces = resource.split('.');
            let is_limit = pieces.next() == Some("limits") && pieces.next().is_some();
            if is_limit { limits.push(entry) } else { requests.push(entry) }
        }
    }
    vec![name(quota).into(), requests.join(", ").into(), limits.join(", ").into(), age(quota, now).into()]
}

const POD_TEMPLATE_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Containers", "Names of each container in the template."),
    Column::string("Images", "Images referenced by each container in the template."),
    Column::string("Pod Labels", "The labels for the pod template."),
];

fn pod_template_cells(template: &Value, _now: Timestamp) -> Vec<Value> {
    let (names, images) = containers(list(template, "/template/spec/containers"));
    vec![name(template).into(), names.into(), images.into(), labels(get(template, "/template/metadata/labels")).into()]
}

const COMPONENT_STATUS_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Status", "Status of the component conditions"),
    Column::string("Message", "Message of the component conditions"),
    Column::string("Error", "Error of the component conditions"),
];

fn component_status_cells(cs: &Value, _now: Timestamp) -> Vec<Value> {
    let healthy = list(cs, "/conditions").iter().find(|c| text(c, "/type") == "Healthy");
    let (status, message, error) = match healthy {
        Some(c) => {
            let status = if text(c, "/status") == "True" { "Healthy" } else { "Unhealthy" };
            (status, text(c, "/message"), text(c, "/error"))
        }
        None => ("Unknown", "", ""),
    };
    vec![name(cs).into(), status.into(), message.into(), error.into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    fn strings(cells: Vec<Value>) -> Vec<String> {
        cells.iter().map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string)).collect()
    }

    #[test]
    fn node_shows_readiness_roles_version_and_wide_system_info() {
        let node = json!({
            "metadata": {"name": "cp-1", "creationTimestamp": "2024-04-01T12:00:00Z", "labels": {
                "node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/etcd": "true",
                "kubernetes.io/role": "master", "kubernetes.io/hostname": "cp-1"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "cp-1"}, {"type": "InternalIP", "address": "192.168.1.10"}],
                "nodeInfo": {"kubeletVersion": "v1.36.0", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0-18-amd64",
                    "containerRuntimeVersion": "containerd://1.7.13"},
            },
        });
        assert_eq!(
            strings(node_cells(&node, now())),
            [
                "cp-1",
                "Ready,SchedulingDisabled",
                "control-plane,etcd,master",
                "30d",
                "v1.36.0",
                "192.168.1.10",
                "<none>",
                "Debian GNU/Linux 12 (bookworm)",
                "6.1.0-18-amd64",
                "containerd://1.7.13"
            ]
        );
    }

    #[test]
    fn node_without_ready_condition_is_unknown_and_without_roles_none() {
        let node = json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "Unknown"}]}});
        let cells = strings(node_cells(&node, now()));
        assert_eq!(&cells[1..3], ["NotReady", "<none>"]);
        assert_eq!(&cells[7..], ["<unknown>", "<unknown>", "<unknown>"]);
        let bare = json!({"metadata": {"name": "n"}});
        assert_eq!(strings(node_cells(&bare, now()))[1], "Unknown");
    }

    #[test]
    fn node_port_service_shows_node_ports_and_no_external_ip() {
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-05-01T11:55:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.15", "clusterIPs": ["10.43.0.15"], "selector": {"app": "web"},
                "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 443, "protocol": "TCP", "nodePort": 30443}]},
        });
        assert_eq!(
            strings(service_cells(&svc, now())),
            ["web", "NodePort", "10.43.0.15", "<none>", "80:30080/TCP,443:30443/TCP", "5m", "app=web"]
        );
    }

    #[test]
    fn cluster_ip_service_defaults_and_headless_services() {
        let svc = json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}});
        assert_eq!(strings(service_cells(&svc, now()))[1..5], ["ClusterIP", "None", "<none>", "5432/TCP"]);
        let no_ports = json!({"metadata": {"name": "x"}, "spec": {"type": "ClusterIP", "externalIPs": ["1.2.3.4"]}});
        assert_eq!(
            strings(service_cells(&no_ports, now()))[2..],
            ["<none>", "1.2.3.4", "<none>", "<unknown>", "<none>"]
        );
    }

    #[test]
    fn load_balancer_service_is_pending_until_it_has_an_ingress() {
        let mut svc = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIPs": ["10.43.0.9"], "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]}});
        assert_eq!(service_cells(&svc, now())[3], "<pending>");
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "lb.example.com"}, {"ip": "203.0.113.9"}]}});
        assert_eq!(service_cells(&svc, now())[3], "203.0.113.9,lb.example.com");
        svc["spec"]["externalIPs"] = json!(["198.51.100.1"]);
        assert_eq!(service_cells(&svc, now())[3], "203.0.113.9,lb.example.com,198.51.100.1");
        let ext =
            json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(service_cells(&ext, now())[3], "db.example.com");
    }

    #[test]
    fn endpoints_list_three_addresses_then_count_the_rest() {
        let ep = json!({"metadata": {"name": "web"}, "subsets": [{
            "addresses": [{"ip": "10.42.0.1"}, {"ip": "10.42.0.2"}, {"ip": "fd00::3"}],
            "ports": [{"port": 8080}, {"port": 8443}],
        }]});
        assert_eq!(endpoints_cells(&ep, now())[1], "10.42.0.1:8080,10.42.0.2:8080,[fd00::3]:8080 + 3 more...");
        let headless = json!({"metadata": {"name": "h"}, "subsets": [{"addresses": [{"ip": "10.42.0.1"}]}]});
        assert_eq!(endpoints_cells(&headless, now())[1], "10.42.0.1");
        assert_eq!(endpoints_cells(&json!({"metadata": {"name": "e"}}), now())[1], "<none>");
        let not_ready = json!({"metadata": {"name": "n"}, "subsets": [{"notReadyAddresses": [{"ip": "10.42.0.1"}], "ports": [{"port": 80}]}]});
        assert_eq!(endpoints_cells(&not_ready, now())[1], "");
    }

    #[test]
    fn config_maps_and_secrets_count_their_keys() {
        let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(config_map_cells(&cm, now())[1], 3);
        let secret = json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}, "stringData": {"tls.key": "x", "ca.crt": "y"}});
        assert_eq!(secret_cells(&secret, now())[1..3], [json!("kubernetes.io/tls"), json!(3)]);
        let opaque = json!({"metadata": {"name": "s"}});
        assert_eq!(secret_cells(&opaque, now())[1..3], [json!("Opaque"), json!(0)]);
        let sa = json!({"metadata": {"name": "default"}, "secrets": [{"name": "t"}]});
        assert_eq!(service_account_cells(&sa, now())[1], 1);
    }

    #[test]
    fn namespace_shows_its_phase() {
        let ns = json!({"metadata": {"name": "dev", "creationTimestamp": "2024-05-01T10:00:00Z"}, "status": {"phase": "Terminating"}});
        assert_eq!(strings(namespace_cells(&ns, now())), ["dev", "Terminating", "120m"]);
        assert_eq!(namespace_cells(&json!({"metadata": {"name": "x"}}), now())[1], "Active");
    }

    #[test]
    fn core_event_shows_last_seen_type_reason_object_and_message() {
        let ev = json!({
            "metadata": {"name": "web-0.17c", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web-0", "fieldPath": "spec.containers{app}"},
            "reason": "BackOff", "message": "Back-off restarting failed container\n", "type": "Warning",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2024-05-01T11:00:00Z", "lastTimestamp": "2024-05-01T11:58:00Z", "count": 12,
        });
        assert_eq!(
            strings(event_cells(&ev, now())),
            [
                "2m",
                "Warning",
                "BackOff",
                "pod/web-0",
                "spec.containers{app}",
                "kubelet, node-1",
                "Back-off restarting failed container",
                "60m",
                "12",
                "web-0.17c"
            ]
        );
    }

    #[test]
    fn new_style_events_use_event_time_series_and_reporting_controller() {
        let ev = json!({
            "metadata": {"name": "e1"},
            "regarding": {"kind": "Deployment", "name": "web"},
            "reason": "ScalingReplicaSet", "note": "Scaled up", "type": "Normal",
            "eventTime": "2024-05-01T11:50:00.000000Z", "reportingController": "deployment-controller",
            "reportingInstance": "", "series": {"count": 4, "lastObservedTime": "2024-05-01T11:59:00.000000Z"},
        });
        assert_eq!(
            strings(events_v1_cells(&ev, now())),
            [
                "60s",
                "Normal",
                "ScalingReplicaSet",
                "deployment/web",
                "",
                "deployment-controller",
                "Scaled up",
                "10m",
                "4",
                "e1"
            ]
        );
        let single = json!({"metadata": {"name": "e2"}, "regarding": {"kind": "Node"}, "eventTime": "2024-05-01T11:59:30.000000Z"});
        assert_eq!(strings(events_v1_cells(&single, now()))[..4], ["30s", "", "", "node"]);
        assert_eq!(events_v1_cells(&single, now())[8], 1);
    }

    #[test]
    fn resource_quota_splits_requests_and_limits() {
        let quota = json!({"metadata": {"name": "compute"}, "status": {
            "hard": {"requests.cpu": "1", "limits.memory": "2048Mi", "pods": "10", "limits.cpu": "2"},
            "used": {"requests.cpu": "500m", "limits.memory": "1Gi", "pods": "3"},
        }});
        assert_eq!(
            strings(resource_quota_cells(&quota, now()))[1..3],
            ["pods: 3/10, requests.cpu: 500m/1", "limits.cpu: 0/2, limits.memory: 1Gi/2Gi"]
        );
    }

    #[test]
    fn pod_template_lists_containers_and_labels() {
        let t = json!({"metadata": {"name": "tpl"}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}, {"name": "side", "image": "busybox"}]}}});
        assert_eq!(strings(pod_template_cells(&t, now())), ["tpl", "app,side", "nginx:1.25,busybox", "app=web"]);
    }

    #[test]
    fn component_status_reads_the_healthy_condition() {
        let cs = json!({"metadata": {"name": "etcd-0"}, "conditions": [{"type": "Healthy", "status": "True", "message": "ok"}]});
        assert_eq!(strings(component_status_cells(&cs, now())), ["etcd-0", "Healthy", "ok", ""]);
    }
}
