//! Reading a node agent's `/metrics/resource` answer (the Prometheus text format) into a batch
//! of points, as metrics-server's `decodeBatch` does: the node's cumulative CPU and working set,
//! and each container's, with the sample timestamps (the time the agent measured them) and the
//! containers' start times. Incomplete points are dropped: a node missing CPU or memory, and a
//! pod with any container missing either.

use std::collections::HashMap;

use super::storage::{Batch, PodKey, Point};

const NODE_CPU: &str = "node_cpu_usage_seconds_total";
const NODE_MEMORY: &str = "node_memory_working_set_bytes";
const CONTAINER_CPU: &str = "container_cpu_usage_seconds_total";
const CONTAINER_MEMORY: &str = "container_memory_working_set_bytes";
const CONTAINER_START: &str = "container_start_time_seconds";

/// Errors of the text format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: &'static str },
}

/// One sample line: the metric name, its labels, its value and its timestamp in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default()
    }
}

/// Parses the sample lines of a text exposition (comments and blank lines skipped).
pub(crate) fn parse(text: &str) -> Result<Vec<Sample>, DecodeError> {
    let mut samples = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(line).map_err(|reason| DecodeError::Syntax { line: index + 1, reason })?);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("missing metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut key = String::new();
        let end;
        loop {
            let Some((i, c)) = chars.next() else { return Err("unterminated label set") };
            match c {
                '}' if key.trim().is_empty() => {
                    end = i + 1;
                    break;
                }
                ',' | ' ' if key.trim().is_empty() => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("label value must be quoted");
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            None => return Err("unterminated label value"),
                            Some((_, '"')) => break,
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c)) => value.push(c),
                                None => return Err("unterminated label value"),
                            },
                            Some((_, c)) => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key).trim().to_string(), value));
                }
                c => key.push(c),
            }
        }
        rest = &after[end..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("missing value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| "invalid value")?,
    };
    let timestamp_ms = fields.next().map(|t| t.parse::<i64>().map_err(|_| "invalid timestamp")).transpose()?;
    Ok(Sample { name: name.to_string(), labels, value, timestamp_ms })
}

/// The batch one node's answer holds; samples without a timestamp are taken at `default_ms`.
pub(crate) fn decode_batch(text: &str, default_ms: i64, node_name: &str) -> Result<Batch, DecodeError> {
    let mut node = Point::default();
    let mut pods: HashMap<PodKey, HashMap<String, Point>> = HashMap::new();
    for sample in parse(text)? {
        let at = sample.timestamp_ms.unwrap_or(default_ms).saturating_mul(1_000_000);
        match sample.name.as_str() {
            NODE_CPU => (node.cumulative_cpu_nanos, node.timestamp) = (seconds_to_nanos(sample.value), at),
            NODE_MEMORY => (node.memory_bytes, node.timestamp) = (sample.value as u64, at),
            CONTAINER_CPU | CONTAINER_MEMORY | CONTAINER_START => {
                let point = entry(&mut pods, &sample);
                match sample.name.as_str() {
                    CONTAINER_CPU => {
                        (point.cumulative_cpu_nanos, point.timestamp) = (seconds_to_nanos(sample.value), at)
                    }
                    CONTAINER_MEMORY => (point.memory_bytes, point.timestamp) = (sample.value as u64, at),
                    _ => point.start_time = seconds_to_nanos(sample.value) as i64,
                }
            }
            _ => {}
        }
    }
    let mut batch = Batch::default();
    if node.timestamp != 0 && node.cumulative_cpu_nanos != 0 && node.memory_bytes != 0 {
        batch.nodes.insert(node_name.to_string(), node);
    } else {
        tracing::debug!(node = node_name, "incomplete node metrics");
    }
    for (key, containers) in pods {
        let complete = containers.values().all(|p| p.cumulative_cpu_nanos != 0 && p.memory_bytes != 0);
        if complete && !containers.is_empty() {
            batch.pods.insert(key, containers);
        } else {
            tracing::debug!(namespace = %key.namespace, pod = %key.name, "incomplete pod metrics");
        }
    }
    Ok(batch)
}

fn entry<'a>(pods: &'a mut HashMap<PodKey, HashMap<String, Point>>, sample: &Sample) -> &'a mut Point {
    let key = PodKey { namespace: sample.label("namespace").to_string(), name: sample.label("pod").to_string() };
    pods.entry(key).or_default().entry(sample.label("container").to_string()).or_default()
}

fn seconds_to_nanos(seconds: f64) -> u64 {
    (seconds * 1e9) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT_ANSWER: &str = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="app",namespace="default",pod="web"} 4.414006528 1700000000123
container_cpu_usage_seconds_total{container="idle",namespace="default",pod="half"} 1 1700000000123
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="app",namespace="default",pod="web"} 1.6187392e+07 1700000000123
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="app",namespace="default",pod="web"} 1.7e+09 1700000000000
node_cpu_usage_seconds_total 12345.6 1700000000456
node_memory_working_set_bytes 1.073741824e+09 1700000000456
pod_cpu_usage_seconds_total{namespace="default",pod="web"} 5 1700000000123
resource_scrape_error 0
"#;

    #[test]
    fn samples_are_parsed_with_labels_values_and_timestamps() {
        let samples = parse("a{x=\"1\",y=\"q\\\"uo\\\\te\"} 1e+06 12\nb 2\n# c 3\n").unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].name, "a");
        assert_eq!(samples[0].labels, vec![("x".into(), "1".into()), ("y".into(), "q\"uo\\te".into())]);
        assert_eq!(samples[0].value, 1e6);
        assert_eq!(samples[0].timestamp_ms, Some(12));
        assert_eq!(samples[1].timestamp_ms, None);
        assert!(matches!(parse("a{x=1} 2"), Err(DecodeError::Syntax { line: 1, .. })));
        assert!(matches!(parse("ok 1\na two"), Err(DecodeError::Syntax { line: 2, .. })));
    }

    #[test]
    fn a_batch_holds_the_node_and_complete_pods_only() {
        let batch = decode_batch(AGENT_ANSWER, 1, "n1").unwrap();
        let node = batch.nodes["n1"];
        assert_eq!(node.cumulative_cpu_nanos, 12_345_600_000_000);
        assert_eq!(node.memory_bytes, 1 << 30);
        assert_eq!(node.timestamp, 1_700_000_000_456_000_000);
        let web = &batch.pods[&PodKey { namespace: "default".into(), name: "web".into() }];
        let app = web["app"];
        assert_eq!(app.cumulative_cpu_nanos, 4_414_006_528);
        assert_eq!(app.memory_bytes, 16_187_392);
        assert_eq!(app.timestamp, 1_700_000_000_123_000_000);
        assert_eq!(app.start_time, 1_700_000_000_000_000_000);
        // `half` has CPU but no memory: dropped, as metrics-server drops incomplete pods.
        assert_eq!(batch.pods.len(), 1);
    }

    #[test]
    fn a_node_without_memory_is_left_out() {
        let batch = decode_batch("node_cpu_usage_seconds_total 1 5\n", 1, "n1").unwrap();
        assert!(batch.nodes.is_empty());
    }
}
