//! Printers of networking.k8s.io and discovery.k8s.io: ingresses and their classes, network
//! policies, endpoint slices, service CIDRs and IP addresses.

use jiff::Timestamp;
use serde_json::Value;

use super::core::load_balancer_ingress;
use super::format::{format_label_selector, list_with_more};
use super::object::{age, get, has, list, name, opt_int, opt_text, text};
use super::{AGE, Column, NAME, Printer, docs};

pub(super) const PRINTERS: &[Printer] = &[
    Printer::new("networking.k8s.io", "Ingress", INGRESS_COLUMNS, ingress_cells),
    Printer::new("networking.k8s.io", "IngressClass", INGRESS_CLASS_COLUMNS, ingress_class_cells),
    Printer::new("networking.k8s.io", "NetworkPolicy", NETWORK_POLICY_COLUMNS, network_policy_cells),
    Printer::new("discovery.k8s.io", "EndpointSlice", ENDPOINT_SLICE_COLUMNS, endpoint_slice_cells),
    Printer::new("networking.k8s.io", "ServiceCIDR", SERVICE_CIDR_COLUMNS, service_cidr_cells),
    Printer::new("networking.k8s.io", "IPAddress", IP_ADDRESS_COLUMNS, ip_address_cells),
];

const INGRESS_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Class", "The name of the IngressClass resource that should be used for additional configuration"),
    Column::string("Hosts", "Hosts that incoming requests are matched against before the ingress rule"),
    Column::string("Address", "Address is a list containing ingress points for the load-balancer"),
    Column::string("Ports", "Ports of TLS configurations that open"),
    AGE,
];

/// Upstream's `formatHosts`: the first three rule hosts, `*` when no rule names one. Any rule
/// after the third host makes the list "more", counted as every rule beyond three.
fn ingress_hosts(rules: &[Value]) -> String {
    const MAX: usize = 3;
    let mut hosts = Vec::new();
    let mut more = false;
    for rule in rules {
        if hosts.len() == MAX {
            more = true;
            break;
        }
        let host = text(rule, "/host");
        if !host.is_empty() {
            hosts.push(host);
        }
    }
    if hosts.is_empty() {
        return "*".into();
    }
    let joined = hosts.join(",");
    if more { format!("{joined} + {} more...", rules.len() - MAX) } else { joined }
}

fn ingress_cells(ing: &Value, now: Timestamp) -> Vec<Value> {
    let class = opt_text(ing, "/spec/ingressClassName").unwrap_or("<none>");
    let ports = if list(ing, "/spec/tls").is_empty() { "80" } else { "80, 443" };
    vec![
        name(ing).into(),
        class.into(),
        ingress_hosts(list(ing, "/spec/rules")).into(),
        load_balancer_ingress(ing, "/status/loadBalancer/ingress").into(),
        ports.into(),
        age(ing, now).into(),
    ]
}

const INGRESS_CLASS_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Controller", "Controller that is responsible for handling this class"),
    Column::string("Parameters", "A reference to a resource with additional parameters"),
    AGE,
];

fn ingress_class_cells(class: &Value, now: Timestamp) -> Vec<Value> {
    let parameters = match get(class, "/spec/parameters") {
        None => "<none>".to_string(),
        Some(p) => match opt_text(p, "/apiGroup") {
            Some(group) => format!("{}.{group}/{}", text(p, "/kind"), text(p, "/name")),
            None => format!("{}/{}", text(p, "/kind"), text(p, "/name")),
        },
    };
    vec![name(class).into(), text(class, "/spec/controller").into(), parameters.into(), age(class, now).into()]
}

const NETWORK_POLICY_COLUMNS: &[Column] =
    &[NAME, Column::string("Pod-Selector", docs::NETWORK_POLICY_POD_SELECTOR), AGE];

fn network_policy_cells(np: &Value, now: Timestamp) -> Vec<Value> {
    // podSelector is a struct, not a pointer, upstream: an absent one selects every pod.
    let selector = get(np, "/spec/podSelector").cloned().unwrap_or_else(|| serde_json::json!({}));
    vec![name(np).into(), format_label_selector(Some(&selector)).into(), age(np, now).into()]
}

const ENDPOINT_SLICE_COLUMNS: &[Column] = &[
    NAME,
    Column::string("AddressType", docs::ENDPOINT_SLICE_ADDRESS_TYPE),
    Column::string("Ports", docs::ENDPOINT_SLICE_PORTS),
    Column::string("Endpoints", docs::ENDPOINT_SLICE_ENDPOINTS),
    AGE,
];

fn endpoint_slice_cells(slice: &Value, now: Timestamp) -> Vec<Value> {
    let ports: Vec<String> = list(slice, "/ports")
        .iter()
        .map(|p| match (opt_int(p, "/port"), opt_text(p, "/name")) {
            (Some(port), _) => port.to_string(),
            (None, Some(port_name)) => port_name.to_string(),
            (None, None) => "*".to_string(),
        })
        .collect();
    let addresses: Vec<String> = list(slice, "/endpoints")
        .iter()
        .flat_map(|e| list(e, "/addresses"))
        .map(|a| a.as_str().unwrap_or("").to_string())
        .collect();
    vec![
        name(slice).into(),
        text(slice, "/addressType").into(),
        list_with_more(&ports, 3).into(),
        list_with_more(&addresses, 3).into(),
        age(slice, now).into(),
    ]
}

const SERVICE_CIDR_COLUMNS: &[Column] = &[NAME, Column::string("CIDRs", docs::SERVICE_CIDR_CIDRS), AGE];

fn service_cidr_cells(cidr: &Value, now: Timestamp) -> Vec<Value> {
    let cidrs: Vec<&str> = list(cidr, "/spec/cidrs").iter().filter_map(Value::as_str).collect();
    vec![name(cidr).into(), cidrs.join(",").into(), age(cidr, now).into()]
}

const IP_ADDRESS_COLUMNS: &[Column] = &[NAME, Column::string("ParentRef", docs::IP_ADDRESS_PARENT_REF)];

fn ip_address_cells(ip: &Value, now: Timestamp) -> Vec<Value> {
    let parent = if has(ip, "/spec/parentRef") {
        let (group, resource) = (text(ip, "/spec/parentRef/group"), text(ip, "/spec/parentRef/resource"));
        let mut parent =
            if group.is_empty() { resource.to_lowercase() } else { format!("{resource}.{group}").to_lowercase() };
        let namespace = text(ip, "/spec/parentRef/namespace");
        if !namespace.is_empty() {
            parent = format!("{parent}/{namespace}");
        }
        format!("{parent}/{}", text(ip, "/spec/parentRef/name"))
    } else {
        "<none>".to_string()
    };
    // Upstream prints an age cell although the table declares no AGE column; kubectl shows
    // only as many cells as there are columns.
    vec![name(ip).into(), parent.into(), age(ip, now).into()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn ingress_shows_class_hosts_address_and_tls_ports() {
        let ing = json!({
            "metadata": {"name": "shop", "creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"ingressClassName": "tug", "tls": [{"hosts": ["shop.example.com"]}],
                "rules": [{"host": "shop.example.com"}, {"host": "api.example.com"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.10"}, {"ip": "192.168.1.11"}]}},
        });
        assert_eq!(
            ingress_cells(&ing, now()),
            [
                json!("shop"),
                json!("tug"),
                json!("shop.example.com,api.example.com"),
                json!("192.168.1.10,192.168.1.11"),
                json!("80, 443"),
                json!("60m")
            ]
        );
        let bare = json!({"metadata": {"name": "x"}, "spec": {"defaultBackend": {}}});
        assert_eq!(ingress_cells(&bare, now())[1..5], [json!("<none>"), json!("*"), json!(""), json!("80")]);
    }

    #[test]
    fn ingress_hosts_are_cut_after_three() {
        let rules: Vec<Value> = ["a", "b", "", "c", "d"].iter().map(|h| json!({"host": h})).collect();
        assert_eq!(ingress_hosts(&rules), "a,b,c + 2 more...");
        assert_eq!(ingress_hosts(&rules[..3]), "a,b");
        assert_eq!(ingress_hosts(&rules[..4]), "a,b,c");
    }

    #[test]
    fn ingress_class_names_its_parameters() {
        let class = json!({"metadata": {"name": "tug"}, "spec": {"controller": "tugboat.dev/ingress",
            "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "external-lb"}}});
        assert_eq!(
            ingress_class_cells(&class, now())[1..3],
            [json!("tugboat.dev/ingress"), json!("IngressParameters.k8s.example.com/external-lb")]
        );
    }

    #[test]
    fn network_policy_prints_its_pod_selector() {
        let np = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
        assert_eq!(network_policy_cells(&np, now())[1], "<none>");
        let np = json!({"metadata": {"name": "web"}, "spec": {"podSelector": {"matchLabels": {"role": "db"}}}});
        assert_eq!(network_policy_cells(&np, now())[1], "role=db");
    }

    #[test]
    fn endpoint_slice_lists_ports_and_addresses() {
        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}, {"name": "metrics"}, {}],
            "endpoints": [{"addresses": ["10.42.0.5"]}, {"addresses": ["10.42.0.6", "10.42.0.7", "10.42.0.8"]}]});
        assert_eq!(
            endpoint_slice_cells(&slice, now())[1..4],
            [json!("IPv4"), json!("80,metrics,*"), json!("10.42.0.5,10.42.0.6,10.42.0.7 + 1 more...")]
        );
        let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv6"});
        assert_eq!(endpoint_slice_cells(&empty, now())[2..4], [json!("<unset>"), json!("<unset>")]);
    }

    #[test]
    fn ip_address_names_its_parent() {
        let ip = json!({"metadata": {"name": "10.43.0.10"}, "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "kube-system", "name": "kube-dns"}}});
        assert_eq!(
            ip_address_cells(&ip, now()),
            [json!("10.43.0.10"), json!("services/kube-system/kube-dns"), json!("<unknown>")]
        );
    }
}
