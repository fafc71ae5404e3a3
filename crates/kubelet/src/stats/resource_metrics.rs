//! `/metrics/resource` in the Prometheus text format, as upstream's kubelet writes it
//! (`pkg/kubelet/metrics/collectors/resource_metrics.go`): the node's, each pod's and each running
//! container's cumulative CPU seconds and memory working set, each container's start time, and
//! whether reading failed. Samples carry the time they were measured at, which metrics-server
//! uses to compute CPU rates. Families come sorted by name and series by labels, as the Go
//! registry gathers them.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::ResourceSnapshot;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One series: its label pairs (sorted by name), its value and when it was measured.
type Sample = (Vec<(&'static str, String)>, f64, Option<SystemTime>);

/// A metric family as upstream describes it: name, help (with its stability level) and type.
type Desc = (&'static str, &'static str, &'static str);

const CONTAINER_CPU: Desc = (
    "container_cpu_usage_seconds_total",
    "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    "counter",
);
const CONTAINER_MEMORY: Desc =
    ("container_memory_working_set_bytes", "[STABLE] Current working set of the container in bytes", "gauge");
const CONTAINER_START: Desc =
    ("container_start_time_seconds", "[STABLE] Start time of the container since unix epoch in seconds", "gauge");
const NODE_CPU: Desc =
    ("node_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the node in core-seconds", "counter");
const NODE_MEMORY: Desc =
    ("node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes", "gauge");
const POD_CPU: Desc =
    ("pod_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds", "counter");
const POD_MEMORY: Desc = ("pod_memory_working_set_bytes", "[STABLE] Current working set of the pod in bytes", "gauge");
const RESOURCE_SCRAPE_ERROR: Desc =
    ("resource_scrape_error", "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise", "gauge");
const SCRAPE_ERROR: Desc =
    ("scrape_error", "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise", "gauge");

/// Every family, in name order (the order the Go registry writes them in).
const FAMILIES: [Desc; 9] = [
    CONTAINER_CPU,
    CONTAINER_MEMORY,
    CONTAINER_START,
    NODE_CPU,
    NODE_MEMORY,
    POD_CPU,
    POD_MEMORY,
    RESOURCE_SCRAPE_ERROR,
    SCRAPE_ERROR,
];

/// Renders `snapshot` as upstream's resource metrics.
pub fn render(snapshot: &ResourceSnapshot) -> String {
    let mut samples: HashMap<&'static str, Vec<Sample>> = HashMap::new();
    let mut add = |desc: Desc, sample: Sample| samples.entry(desc.0).or_default().push(sample);
    if let Some(node) = &snapshot.node {
        add(NODE_CPU, (Vec::new(), node.cpu_usage_nanos as f64 / 1e9, Some(node.timestamp)));
        add(NODE_MEMORY, (Vec::new(), node.memory_working_set_bytes as f64, Some(node.timestamp)));
    }
    for pod in &snapshot.pods {
        let (name, namespace) = (&pod.metadata.name, &pod.metadata.namespace);
        let pod_labels = vec![("namespace", namespace.clone()), ("pod", name.clone())];
        let cpu_seconds = pod.cpu.usage_core_nano_seconds as f64 / 1e9;
        add(POD_CPU, (pod_labels.clone(), cpu_seconds, Some(pod.cpu.timestamp)));
        add(POD_MEMORY, (pod_labels, pod.memory.working_set_bytes as f64, Some(pod.memory.timestamp)));
        for container in &pod.containers {
            let labels = vec![
                ("container", container.metadata.name.clone()),
                ("namespace", namespace.clone()),
                ("pod", name.clone()),
            ];
            let cpu_seconds = container.cpu.usage_core_nano_seconds as f64 / 1e9;
            add(CONTAINER_CPU, (labels.clone(), cpu_seconds, Some(container.cpu.timestamp)));
            let working_set = container.memory.working_set_bytes as f64;
            add(CONTAINER_MEMORY, (labels.clone(), working_set, Some(container.memory.timestamp)));
            if let Some(start) = snapshot.container_start.get(&container.id) {
                add(CONTAINER_START, (labels, unix_seconds(*start), Some(*start)));
            }
        }
    }
    let error = if snapshot.scrape_error { 1.0 } else { 0.0 };
    add(RESOURCE_SCRAPE_ERROR, (Vec::new(), error, None));
    add(SCRAPE_ERROR, (Vec::new(), error, None));

    let mut out = String::new();
    for (name, help, kind) in FAMILIES {
        let Some(family) = samples.get_mut(name) else { continue };
        family.sort_by(|a, b| a.0.cmp(&b.0));
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value, timestamp) in family.iter() {
            out.push_str(name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                let _ = write!(out, "{{{}}}", pairs.join(","));
            }
            let _ = write!(out, " {}", go_float(*value));
            if let Some(timestamp) = timestamp {
                let millis = timestamp.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
                let _ = write!(out, " {millis}");
            }
            out.push('\n');
        }
    }
    out
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A label value escaped as the text format wants: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A float as Go's `strconv.FormatFloat(f, 'g', -1, 64)` writes it (what the Prometheus text
/// encoder uses): the shortest digits that round-trip, in exponent form when the decimal
/// exponent is below -4 or at least 6 (Go's precision for that choice in the shortest form).
pub fn go_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if value == 0.0 {
        return "0".into();
    }
    // Rust's `{:e}` gives the shortest round-tripping digits: `1.6187392e7`.
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("`{:e}` always has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponents are integers");
    let eprec = 6;
    if exponent < -4 || exponent >= eprec {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use tug_runtime::cri::{
        ContainerMetadata, ContainerStats, CpuUsage, MemoryUsage, PodSandboxMetadata, PodSandboxStats,
    };

    use super::*;
    use crate::stats::NodeUsage;

    #[test]
    fn floats_are_written_as_go_writes_them() {
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(4.414006528), "4.414006528");
        assert_eq!(go_float(16187392.0), "1.6187392e+07");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(1764220123.456), "1.764220123456e+09");
        assert_eq!(go_float(f64::NAN), "NaN");
    }

    #[test]
    fn snapshot_renders_node_pod_and_container_series_with_timestamps() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cpu = |nanos| CpuUsage { timestamp: at, usage_core_nano_seconds: nanos };
        let memory = |bytes| MemoryUsage { timestamp: at, working_set_bytes: bytes, usage_bytes: bytes };
        let container = |id: &str, name: &str| ContainerStats {
            id: id.into(),
            metadata: ContainerMetadata { name: name.into(), attempt: 0 },
            labels: Default::default(),
            cpu: cpu(1_500_000_000),
            memory: memory(4096),
        };
        let snapshot = ResourceSnapshot {
            node: Some(NodeUsage {
                timestamp: at,
                cpu_usage_nanos: 12_345_600_000_000,
                memory_working_set_bytes: 1 << 30,
            }),
            pods: vec![PodSandboxStats {
                id: "s1".into(),
                metadata: PodSandboxMetadata {
                    name: "web".into(),
                    namespace: "default".into(),
                    uid: "u".into(),
                    attempt: 0,
                },
                labels: Default::default(),
                cpu: cpu(2_000_000_000),
                memory: memory(16187392),
                containers: vec![container("c2", "b\"x"), container("c1", "a")],
            }],
            container_start: HashMap::from([("c1".to_string(), started)]),
            scrape_error: false,
        };
        let text = render(&snapshot);
        let expected = [
            "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds",
            "# TYPE container_cpu_usage_seconds_total counter",
            "container_cpu_usage_seconds_total{container=\"a\",namespace=\"default\",pod=\"web\"} 1.5 1700000000123",
            "container_cpu_usage_seconds_total{container=\"b\\\"x\",namespace=\"default\",pod=\"web\"} 1.5 1700000000123",
            "container_memory_working_set_bytes{container=\"a\",namespace=\"default\",pod=\"web\"} 4096 1700000000123",
            "# TYPE container_start_time_seconds gauge",
            "container_start_time_seconds{container=\"a\",namespace=\"default\",pod=\"web\"} 1.7e+09 1700000000000",
            "node_cpu_usage_seconds_total 12345.6 1700000000123",
            "node_memory_working_set_bytes 1.073741824e+09 1700000000123",
            "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 2 1700000000123",
            "pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 1.6187392e+07 1700000000123",
            "resource_scrape_error 0",
            "scrape_error 0",
        ];
        for line in expected {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // Families in name order, and no start time for a container the runtime did not list.
        let order: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        assert!(!text.contains("container_start_time_seconds{container=\"b"));
    }

    #[test]
    fn a_failed_runtime_read_is_a_scrape_error_and_an_empty_snapshot_has_no_samples() {
        let snapshot = ResourceSnapshot { scrape_error: true, ..Default::default() };
        let text = render(&snapshot);
        assert!(text.lines().any(|l| l == "resource_scrape_error 1"));
        assert!(text.lines().any(|l| l == "scrape_error 1"));
        assert!(!text.contains("node_cpu"));
    }
}
