//! The downwardAPI volume plugin, and the field and resource lookups it shares with
//! environment variables (upstream's `fieldpath` package and `resource.ExtractContainerResourceValue`).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, Pod, ResourceFieldSelector};

use super::atomic_writer::{FileProjection, Payload};

/// A field or resource a downward API reference cannot resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("unsupported fieldPath: {0}")]
    UnsupportedFieldPath(String),
    #[error("unsupported container resource : {0}")]
    UnsupportedResource(String),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("invalid quantity {0:?}")]
    InvalidQuantity(String),
}

/// What the node offers, used for limits a container does not set (upstream defaults them to
/// the node's allocatable resources).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeAllocatable {
    /// CPU cores.
    pub cpu: f64,
    /// Bytes.
    pub memory: f64,
    /// Bytes of the filesystem holding the agent's data.
    pub ephemeral_storage: f64,
}

impl NodeAllocatable {
    /// This machine's resources: online CPUs, `MemTotal`, and the size of the filesystem under
    /// `data_dir`.
    pub fn of_machine(data_dir: &Path) -> Self {
        let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let rest = l.strip_prefix("MemTotal:")?;
                    rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok()
                })
            })
            .map_or(0.0, |kib| kib * 1024.0);
        let mut dir = data_dir;
        // The data dir may not exist yet: measure its nearest existing ancestor.
        while !dir.exists() {
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
        let ephemeral_storage = rustix::fs::statvfs(dir).map_or(0.0, |s| s.f_blocks as f64 * s.f_frsize as f64);
        NodeAllocatable { cpu, memory, ephemeral_storage }
    }
}

/// Upstream's `FormatMap`: `key="value"` lines sorted by key, values quoted as Go's `%q`.
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}={}", go_quote(v))).collect::<Vec<_>>().join("\n")
}

/// Go's `strconv.Quote` for the characters labels and annotations carry.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `metadata.labels['k']` -> (`metadata.labels`, `k`).
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let open = path.find("['")?;
    let rest = path.strip_suffix("']")?;
    Some((&path[..open], &rest[open + 2..]))
}

/// Upstream's `fieldpath.ExtractFieldPathAsString` for a pod: the metadata fields the downward
/// API volume offers.
pub fn pod_metadata_field(pod: &Pod, field_path: &str) -> Result<String, FieldError> {
    let meta = &pod.metadata;
    if let Some((base, key)) = split_subscript(field_path) {
        let map = match base {
            "metadata.labels" => &meta.labels,
            "metadata.annotations" => &meta.annotations,
            _ => return Err(FieldError::UnsupportedFieldPath(field_path.to_owned())),
        };
        return Ok(map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default());
    }
    let empty = BTreeMap::new();
    Ok(match field_path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref().unwrap_or(&empty)),
        "metadata.annotations" => format_map(meta.annotations.as_ref().unwrap_or(&empty)),
        _ => return Err(FieldError::UnsupportedFieldPath(field_path.to_owned())),
    })
}

fn quantity(s: &str) -> Result<f64, FieldError> {
    tug_api::quantity::parse(s).ok_or_else(|| FieldError::InvalidQuantity(s.to_owned()))
}

/// Upstream's `ExtractContainerResourceValue` after `MergeContainerResourceLimits`: the
/// container's limit or request divided by the divisor, rounded up; unset cpu, memory and
/// ephemeral-storage limits read as the node's allocatable amount.
pub fn container_resource_value(
    field: &ResourceFieldSelector,
    container: &Container,
    node: &NodeAllocatable,
) -> Result<String, FieldError> {
    let divisor = match &field.divisor {
        Some(d) if !d.0.is_empty() => quantity(&d.0)?,
        _ => 1.0,
    };
    let divisor = if divisor == 0.0 { 1.0 } else { divisor };
    let resources = container.resources.as_ref();
    let (limits, name) = if let Some(name) = field.resource.strip_prefix("limits.") {
        (true, name)
    } else if let Some(name) = field.resource.strip_prefix("requests.") {
        (false, name)
    } else {
        return Err(FieldError::UnsupportedResource(field.resource.clone()));
    };
    if !matches!(name, "cpu" | "memory" | "ephemeral-storage") && !name.starts_with("hugepages-") {
        return Err(FieldError::UnsupportedResource(field.resource.clone()));
    }
    let set = resources.and_then(|r| if limits { r.limits.as_ref() } else { r.requests.as_ref() });
    let value = match set.and_then(|m| m.get(name)) {
        Some(q) => quantity(&q.0)?,
        None if limits => match name {
            "cpu" => node.cpu,
            "memory" => node.memory,
            "ephemeral-storage" => node.ephemeral_storage,
            _ => 0.0,
        },
        None => 0.0,
    };
    let result = if name == "cpu" {
        // CPU compares in millicores, each side rounded up as `MilliValue` does.
        let milli = (value * 1000.0 - 1e-6).ceil();
        let divisor_milli = (divisor * 1000.0 - 1e-6).ceil().max(1.0);
        (milli / divisor_milli).ceil()
    } else {
        (value / divisor).ceil()
    };
    Ok(format!("{}", result as i64))
}

/// A container of the pod by name (app, init or ephemeral), for `resourceFieldRef.containerName`.
pub fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name)
}

/// The files of a downwardAPI volume (or a projected volume's downwardAPI source).
pub fn payload(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    node: &NodeAllocatable,
) -> Result<Payload, FieldError> {
    let mut payload = Payload::new();
    for item in items {
        let data = if let Some(field) = &item.field_ref {
            pod_metadata_field(pod, &field.field_path)?
        } else if let Some(resource) = &item.resource_field_ref {
            let name = resource.container_name.as_deref().unwrap_or_default();
            let container = find_container(pod, name).ok_or_else(|| FieldError::ContainerNotFound(name.to_owned()))?;
            container_resource_value(resource, container, node)?
        } else {
            continue;
        };
        let mode = item.mode.unwrap_or(default_mode) as u32;
        payload.insert(item.path.clone(), FileProjection { data: data.into_bytes(), mode });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ObjectFieldSelector, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                "labels": {"b": "2", "a": "x\"y"}, "annotations": {"note": "line1\nline2"}},
            "spec": {"containers": [{"name": "c", "resources": {
                "limits": {"memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "32Mi"}}}]}
        }))
        .unwrap()
    }

    const NODE: NodeAllocatable = NodeAllocatable { cpu: 2.0, memory: 4096.0 * 1048576.0, ephemeral_storage: 1e9 };

    fn field_item(path: &str, field: &str) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector { field_path: field.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn resource_item(path: &str, resource: &str, divisor: Option<&str>) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some("c".into()),
                resource: resource.into(),
                divisor: divisor.map(|d| Quantity(d.into())),
            }),
            ..Default::default()
        }
    }

    fn text(payload: &Payload, path: &str) -> String {
        String::from_utf8(payload[path].data.clone()).unwrap()
    }

    #[test]
    fn metadata_fields_and_sorted_quoted_maps() {
        let items = [
            field_item("name", "metadata.name"),
            field_item("ns", "metadata.namespace"),
            field_item("uid", "metadata.uid"),
            field_item("labels", "metadata.labels"),
            field_item("annotations", "metadata.annotations"),
            field_item("one", "metadata.labels['b']"),
        ];
        let p = payload(&pod(), &items, 0o644, &NODE).unwrap();
        assert_eq!(text(&p, "name"), "p");
        assert_eq!(text(&p, "ns"), "ns");
        assert_eq!(text(&p, "uid"), "u-1");
        assert_eq!(text(&p, "labels"), "a=\"x\\\"y\"\nb=\"2\"");
        assert_eq!(text(&p, "annotations"), "note=\"line1\\nline2\"");
        assert_eq!(text(&p, "one"), "2");
        assert_eq!(p["name"].mode, 0o644);
    }

    #[test]
    fn resource_fields_with_divisors_and_node_defaults() {
        let items = [
            resource_item("mem_limit", "limits.memory", Some("1Mi")),
            resource_item("mem_request", "requests.memory", None),
            resource_item("cpu_request", "requests.cpu", None),
            resource_item("cpu_request_m", "requests.cpu", Some("1m")),
            resource_item("cpu_limit", "limits.cpu", None),
        ];
        let p = payload(&pod(), &items, 0o644, &NODE).unwrap();
        assert_eq!(text(&p, "mem_limit"), "64");
        assert_eq!(text(&p, "mem_request"), (32 * 1048576).to_string());
        assert_eq!(text(&p, "cpu_request"), "1", "250m rounds up to one core");
        assert_eq!(text(&p, "cpu_request_m"), "250");
        assert_eq!(text(&p, "cpu_limit"), "2", "unset limit is the node's allocatable");
    }

    #[test]
    fn unknown_field_and_container_are_errors() {
        let err = payload(&pod(), &[field_item("x", "spec.nodeName")], 0o644, &NODE).unwrap_err();
        assert_eq!(err.to_string(), "unsupported fieldPath: spec.nodeName");
        let mut item = resource_item("x", "limits.cpu", None);
        item.resource_field_ref.as_mut().unwrap().container_name = Some("nope".into());
        assert_eq!(payload(&pod(), &[item], 0o644, &NODE).unwrap_err().to_string(), "container nope not found");
        let c = Container { resources: Some(ResourceRequirements::default()), ..Default::default() };
        let bad = ResourceFieldSelector { resource: "limits.gpu".into(), ..Default::default() };
        assert!(container_resource_value(&bad, &c, &NODE).is_err());
    }

    #[test]
    fn item_mode_overrides_default_mode() {
        let mut item = field_item("name", "metadata.name");
        item.mode = Some(0o400);
        let p = payload(&pod(), &[item], 0o644, &NODE).unwrap();
        assert_eq!(p["name"].mode, 0o400);
    }
}
