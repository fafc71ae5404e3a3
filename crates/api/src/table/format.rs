//! Cell formats shared by several printers: label maps and selectors, container lists,
//! access modes, int-or-string values, truncated lists.

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;

use super::object::{list, text};
use crate::selector::LabelSelector;

/// Upstream's `labels.FormatLabels`: `k=v` pairs sorted by key, `<none>` when empty.
pub(super) fn labels(map: Option<&Value>) -> String {
    let Some(map) = map.and_then(Value::as_object).filter(|m| !m.is_empty()) else {
        return "<none>".into();
    };
    let mut pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap_or(""))).collect();
    pairs.sort_unstable();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A `metav1.LabelSelector` in upstream's selector syntax (`LabelSelectorAsSelector(s).String()`):
/// an absent selector selects nothing and an empty one everything, both printing as `""`.
/// `None` when the selector is invalid.
pub(super) fn label_selector(selector: Option<&Value>) -> Option<String> {
    let Some(selector) = selector.filter(|s| !s.is_null()) else {
        return Some(String::new());
    };
    let typed: metav1::LabelSelector = serde_json::from_value(selector.clone()).ok()?;
    LabelSelector::from_label_selector(&typed).ok().map(|s| s.to_string())
}

/// Upstream's `metav1.FormatLabelSelector`: `<none>` for a selector that prints empty,
/// `<error>` for an invalid one.
pub(super) fn format_label_selector(selector: Option<&Value>) -> String {
    match label_selector(selector) {
        Some(s) if s.is_empty() => "<none>".into(),
        Some(s) => s,
        None => "<error>".into(),
    }
}

/// Upstream's `layoutContainerCells`: the containers' names and images, comma-separated.
pub(super) fn containers(containers: &[Value]) -> (String, String) {
    let names: Vec<&str> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// The wide CONTAINERS and IMAGES cells of a pod template's containers.
pub(super) fn container_cells(template: &Value, pointer: &str) -> [Value; 2] {
    let (names, images) = containers(list(template, pointer));
    [names.into(), images.into()]
}

/// Upstream's `GetAccessModesAsString`: the short names in a fixed order, duplicates dropped.
pub(super) fn access_modes(modes: &[Value]) -> String {
    let has = |mode: &str| modes.iter().any(|m| m.as_str() == Some(mode));
    [("ReadWriteOnce", "RWO"), ("ReadOnlyMany", "ROX"), ("ReadWriteMany", "RWX"), ("ReadWriteOncePod", "RWOP")]
        .iter()
        .filter(|(mode, _)| has(mode))
        .map(|(_, short)| *short)
        .collect::<Vec<_>>()
        .join(",")
}

/// An `intstr.IntOrString` as its `String()` prints it.
pub(super) fn int_or_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "0".into(),
    }
}

/// Upstream's `printBoolPtr`: `True`, `False` or `<unset>`.
pub(super) fn bool_ptr(value: Option<bool>) -> String {
    match value {
        Some(true) => "True".into(),
        Some(false) => "False".into(),
        None => "<unset>".into(),
    }
}

/// Upstream's `listWithMoreString`: at most `max` entries, then `+ N more...`; `<unset>` when
/// there are none.
pub(super) fn list_with_more(all: &[String], max: usize) -> String {
    let shown = all.iter().take(max).cloned().collect::<Vec<_>>().join(",");
    if all.len() > max {
        return format!("{shown} + {} more...", all.len() - max);
    }
    if shown.is_empty() { "<unset>".into() } else { shown }
}

/// Go's `net.JoinHostPort`: IPv6 hosts get brackets.
pub(super) fn host_port(host: &str, port: i64) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_maps_print_sorted_or_none() {
        assert_eq!(labels(Some(&json!({"tier": "web", "app": "shop"}))), "app=shop,tier=web");
        assert_eq!(labels(Some(&json!({}))), "<none>");
        assert_eq!(labels(None), "<none>");
    }

    #[test]
    fn label_selectors_print_in_selector_syntax() {
        let sel = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}, {"key": "canary", "operator": "DoesNotExist"}],
        });
        assert_eq!(format_label_selector(Some(&sel)), "app=web,!canary,env in (dev,prod)");
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
        assert_eq!(format_label_selector(None), "<none>");
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "Near"}]});
        assert_eq!(format_label_selector(Some(&bad)), "<error>");
        assert_eq!(label_selector(Some(&bad)), None);
    }

    #[test]
    fn access_modes_use_short_names_in_upstream_order() {
        let modes = [json!("ReadWriteMany"), json!("ReadWriteOnce"), json!("ReadWriteOnce")];
        assert_eq!(access_modes(&modes), "RWO,RWX");
        assert_eq!(access_modes(&[]), "");
    }

    #[test]
    fn long_lists_are_cut_after_the_maximum() {
        let all: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        assert_eq!(list_with_more(&all, 3), "a,b,c + 2 more...");
        assert_eq!(list_with_more(&all[..2], 3), "a,b");
        assert_eq!(list_with_more(&[], 3), "<unset>");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(host_port("fd00::1", 443), "[fd00::1]:443");
    }
}
