//! Where the autoscaler's metrics come from (upstream's `podautoscaler/metrics`): a small
//! [`MetricsClient`] trait, and [`RestMetricsClient`], which reads the resource metrics API
//! (`metrics.k8s.io/v1beta1` PodMetrics, as metrics-server serves it), the custom metrics API
//! (`custom.metrics.k8s.io/v1beta2`) and the external metrics API
//! (`external.metrics.k8s.io/v1beta1`) through the kube client, as upstream's REST metrics
//! client does. When an API is not served, its requests fail and the controller reports that
//! in the HPA's conditions and events.
//!
//! PodMetrics is [`tug_api::metrics`]'s; the custom and external metric value shapes are
//! declared here (serde), as k8s-openapi does not carry the metrics APIs.

use std::collections::HashMap;
use std::future::Future;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::ListParams;
use serde::Deserialize;
use serde::de::DeserializeOwned;
pub use tug_api::metrics::{ContainerMetrics, PodMetrics};
use tug_api::selector::LabelSelector;

/// The window custom metrics are assumed to cover when they do not say (upstream's
/// `metricServerDefaultMetricWindow`).
const DEFAULT_METRIC_WINDOW: SignedDuration = SignedDuration::from_mins(1);

/// One pod's metric: its value in milli-units, when it was taken and over which window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodMetric {
    pub value: i64,
    pub timestamp: Timestamp,
    pub window: SignedDuration,
}

impl Default for PodMetric {
    fn default() -> Self {
        Self { value: 0, timestamp: Timestamp::UNIX_EPOCH, window: SignedDuration::ZERO }
    }
}

/// Metrics by pod name.
pub type PodMetricsInfo = HashMap<String, PodMetric>;

/// Why metrics could not be had; messages are upstream's.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("unable to fetch metrics from {api} API: {}", api_message(.source, .resource))]
    Fetch {
        api: &'static str,
        resource: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("no metrics returned from {api} API")]
    NoMetrics { api: &'static str },
    #[error("container {container} not present in metrics for pod {namespace}/{pod}")]
    ContainerNotPresent { container: String, namespace: String, pod: String },
    #[error("no matches for kind {kind:?} in group {group:?}")]
    NoKindMatch { kind: String, group: String },
    #[error("unable to build the request for {path}")]
    Request { path: String },
}

/// The message of an API error as upstream shows it (the Status message alone).
pub(crate) fn status_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// A kube error as client-go prints it: the API's message, with the request's resource when
/// the server did not know the path.
fn api_message(e: &kube::Error, resource: &str) -> String {
    let message = status_message(e);
    match e {
        kube::Error::Api(s) if s.code == 404 && message == "the server could not find the requested resource" => {
            format!("{message} (get {resource})")
        }
        _ => message,
    }
}

/// The metrics the autoscaler reads (upstream's `MetricsClient`).
pub trait MetricsClient: Send + Sync + 'static {
    /// The named resource's usage of each pod `selector` picks in `namespace` (one container's
    /// when `container` is not empty), and when the metrics were taken.
    fn resource_metric(
        &self,
        resource: &str,
        namespace: &str,
        selector: &LabelSelector,
        container: &str,
    ) -> impl Future<Output = Result<(PodMetricsInfo, Timestamp), MetricsError>> + Send;

    /// A custom per-pod metric of the pods `selector` picks.
    fn raw_metric(
        &self,
        metric: &str,
        namespace: &str,
        selector: &LabelSelector,
        metric_selector: &LabelSelector,
    ) -> impl Future<Output = Result<(PodMetricsInfo, Timestamp), MetricsError>> + Send;

    /// A custom metric describing one object.
    fn object_metric(
        &self,
        metric: &str,
        namespace: &str,
        object: &CrossVersionObjectReference,
        metric_selector: &LabelSelector,
    ) -> impl Future<Output = Result<(i64, Timestamp), MetricsError>> + Send;

    /// The values of an external metric.
    fn external_metric(
        &self,
        metric: &str,
        namespace: &str,
        selector: &LabelSelector,
    ) -> impl Future<Output = Result<(Vec<i64>, Timestamp), MetricsError>> + Send;
}

#[derive(Debug, Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

/// custom.metrics.k8s.io/v1beta2 MetricValue.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricValue {
    described_object: CrossVersionObjectReference,
    timestamp: Option<Time>,
    window_seconds: Option<i64>,
    value: Quantity,
}

/// external.metrics.k8s.io/v1beta1 ExternalMetricValue.
#[derive(Debug, Deserialize)]
struct ExternalMetricValue {
    timestamp: Option<Time>,
    value: Quantity,
}

fn milli(q: &Quantity) -> Option<i64> {
    tug_api::quantity::Exact::parse(&q.0).map(|e| i64::try_from(e.milli_value()).unwrap_or(i64::MAX))
}

fn time_of(t: Option<&Time>) -> Timestamp {
    t.map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

/// A Go `time.Duration` string (`1m0.5s`, `15s`, `300ms`); zero when it is not one.
pub fn parse_go_duration(s: &str) -> SignedDuration {
    let mut total = 0f64;
    let mut rest = s.trim();
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let Ok(number) = rest[..end].parse::<f64>() else { return SignedDuration::ZERO };
        rest = &rest[end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return SignedDuration::ZERO,
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    SignedDuration::try_from_secs_f64(total).unwrap_or(SignedDuration::ZERO)
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Upstream's `getPodMetrics`: each pod's sum over its containers; a pod with no containers
/// or a container without the resource is left out (then treated as missing).
pub fn pod_metrics_info(items: &[PodMetrics], resource: &str) -> PodMetricsInfo {
    let mut out = PodMetricsInfo::with_capacity(items.len());
    for m in items {
        let sum = m.containers.iter().try_fold(0i64, |acc, c| c.usage.get(resource).and_then(milli).map(|v| acc + v));
        if let Some(value) = sum.filter(|_| !m.containers.is_empty()) {
            out.insert(m.metadata.name.clone().unwrap_or_default(), pod_metric(m, value));
        }
    }
    out
}

/// Upstream's `getContainerMetrics`: one container's usage per pod; every pod must report the
/// container.
pub fn container_metrics_info(
    items: &[PodMetrics],
    resource: &str,
    container: &str,
) -> Result<PodMetricsInfo, MetricsError> {
    let mut out = PodMetricsInfo::with_capacity(items.len());
    for m in items {
        let Some(c) = m.containers.iter().find(|c| c.name == container) else {
            return Err(MetricsError::ContainerNotPresent {
                container: container.into(),
                namespace: m.metadata.namespace.clone().unwrap_or_default(),
                pod: m.metadata.name.clone().unwrap_or_default(),
            });
        };
        if let Some(value) = c.usage.get(resource).and_then(milli) {
            out.insert(m.metadata.name.clone().unwrap_or_default(), pod_metric(m, value));
        }
    }
    Ok(out)
}

fn pod_metric(m: &PodMetrics, value: i64) -> PodMetric {
    PodMetric { value, timestamp: time_of(Some(&m.timestamp)), window: parse_go_duration(&m.window) }
}

/// Reads the metrics APIs through the cluster's API server.
#[derive(Clone)]
pub struct RestMetricsClient {
    client: Client,
}

impl RestMetricsClient {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    async fn get_list<T: DeserializeOwned>(
        &self,
        api: &'static str,
        resource: String,
        path: String,
        selector: Option<&LabelSelector>,
        metric_selector: Option<&LabelSelector>,
    ) -> Result<Vec<T>, MetricsError> {
        let mut lp = ListParams::default();
        if let Some(s) = selector {
            lp = lp.labels(&s.to_string());
        }
        let bad = || MetricsError::Request { path: path.clone() };
        let mut req = kube::core::Request::new(&path).list(&lp).map_err(|_| bad())?;
        if let Some(ms) = metric_selector.filter(|s| !s.is_empty()) {
            let uri = format!("{}&metricLabelSelector={}", req.uri(), encode(&ms.to_string()));
            *req.uri_mut() = uri.parse().map_err(|_| bad())?;
        }
        let list: List<T> =
            self.client.request(req).await.map_err(|e| MetricsError::Fetch { api, resource, source: Box::new(e) })?;
        Ok(list.items)
    }
}

impl MetricsClient for RestMetricsClient {
    async fn resource_metric(
        &self,
        resource: &str,
        namespace: &str,
        selector: &LabelSelector,
        container: &str,
    ) -> Result<(PodMetricsInfo, Timestamp), MetricsError> {
        let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods");
        let items: Vec<PodMetrics> =
            self.get_list("resource metrics", "pods.metrics.k8s.io".into(), path, Some(selector), None).await?;
        let Some(first) = items.first() else {
            return Err(MetricsError::NoMetrics { api: "resource metrics" });
        };
        let timestamp = time_of(Some(&first.timestamp));
        let info = if container.is_empty() {
            pod_metrics_info(&items, resource)
        } else {
            container_metrics_info(&items, resource, container)?
        };
        Ok((info, timestamp))
    }

    async fn raw_metric(
        &self,
        metric: &str,
        namespace: &str,
        selector: &LabelSelector,
        metric_selector: &LabelSelector,
    ) -> Result<(PodMetricsInfo, Timestamp), MetricsError> {
        let path = format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/*/{metric}");
        let items: Vec<MetricValue> = self
            .get_list(
                "custom metrics",
                "pods.custom.metrics.k8s.io".into(),
                path,
                Some(selector),
                Some(metric_selector),
            )
            .await?;
        let Some(first) = items.first() else {
            return Err(MetricsError::NoMetrics { api: "custom metrics" });
        };
        let timestamp = time_of(first.timestamp.as_ref());
        let info = items
            .iter()
            .filter_map(|m| {
                let window = m.window_seconds.map_or(DEFAULT_METRIC_WINDOW, SignedDuration::from_secs);
                let metric = PodMetric { value: milli(&m.value)?, timestamp: time_of(m.timestamp.as_ref()), window };
                Some((m.described_object.name.clone(), metric))
            })
            .collect();
        Ok((info, timestamp))
    }

    async fn object_metric(
        &self,
        metric: &str,
        namespace: &str,
        object: &CrossVersionObjectReference,
        metric_selector: &LabelSelector,
    ) -> Result<(i64, Timestamp), MetricsError> {
        let group = object.api_version.as_deref().unwrap_or("").split_once('/').map_or("", |(g, _)| g);
        let path = if object.kind == "Namespace" && group.is_empty() {
            format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{}/metrics/{metric}", object.name)
        } else {
            let resource = kube::discovery::oneshot::group(&self.client, group)
                .await
                .ok()
                .and_then(|g| g.recommended_kind(&object.kind))
                .map(|(ar, _)| ar.plural)
                .ok_or_else(|| MetricsError::NoKindMatch { kind: object.kind.clone(), group: group.into() })?;
            let resource = if group.is_empty() { resource } else { format!("{resource}.{group}") };
            format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/{resource}/{}/{metric}", object.name)
        };
        let items: Vec<MetricValue> = self
            .get_list(
                "custom metrics",
                format!("{}.custom.metrics.k8s.io", object.kind),
                path,
                None,
                Some(metric_selector),
            )
            .await?;
        let first = items.first().ok_or(MetricsError::NoMetrics { api: "custom metrics" })?;
        Ok((milli(&first.value).unwrap_or(0), time_of(first.timestamp.as_ref())))
    }

    async fn external_metric(
        &self,
        metric: &str,
        namespace: &str,
        selector: &LabelSelector,
    ) -> Result<(Vec<i64>, Timestamp), MetricsError> {
        let path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}");
        let items: Vec<ExternalMetricValue> = self
            .get_list("external metrics", format!("{metric}.external.metrics.k8s.io"), path, Some(selector), None)
            .await?;
        let first = items.first().ok_or(MetricsError::NoMetrics { api: "external metrics" })?;
        let timestamp = time_of(first.timestamp.as_ref());
        Ok((items.iter().filter_map(|m| milli(&m.value)).collect(), timestamp))
    }
}

/// A metrics client with canned answers, for tests of the controller's logic.
#[cfg(test)]
pub mod fake {
    use super::*;

    /// Answers every resource query with `pods` (None: the resource metrics API is not served)
    /// and fails every custom and external query as an unserved API would.
    #[derive(Default, Clone)]
    pub struct FakeMetricsClient {
        pub pods: Option<PodMetricsInfo>,
    }

    fn not_served(api: &'static str, resource: &str) -> MetricsError {
        MetricsError::Fetch {
            api,
            resource: resource.into(),
            source: Box::new(kube::Error::Api(
                kube::core::Status::failure("the server could not find the requested resource", "NotFound")
                    .with_code(404)
                    .boxed(),
            )),
        }
    }

    impl MetricsClient for FakeMetricsClient {
        async fn resource_metric(
            &self,
            _resource: &str,
            _namespace: &str,
            _selector: &LabelSelector,
            _container: &str,
        ) -> Result<(PodMetricsInfo, Timestamp), MetricsError> {
            match &self.pods {
                None => Err(not_served("resource metrics", "pods.metrics.k8s.io")),
                Some(p) if p.is_empty() => Err(MetricsError::NoMetrics { api: "resource metrics" }),
                Some(p) => Ok((p.clone(), p.values().next().map_or(Timestamp::UNIX_EPOCH, |m| m.timestamp))),
            }
        }

        async fn raw_metric(
            &self,
            _metric: &str,
            _namespace: &str,
            _selector: &LabelSelector,
            _metric_selector: &LabelSelector,
        ) -> Result<(PodMetricsInfo, Timestamp), MetricsError> {
            Err(not_served("custom metrics", "pods.custom.metrics.k8s.io"))
        }

        async fn object_metric(
            &self,
            _metric: &str,
            _namespace: &str,
            object: &CrossVersionObjectReference,
            _metric_selector: &LabelSelector,
        ) -> Result<(i64, Timestamp), MetricsError> {
            Err(not_served("custom metrics", &format!("{}.custom.metrics.k8s.io", object.kind)))
        }

        async fn external_metric(
            &self,
            metric: &str,
            _namespace: &str,
            _selector: &LabelSelector,
        ) -> Result<(Vec<i64>, Timestamp), MetricsError> {
            Err(not_served("external metrics", &format!("{metric}.external.metrics.k8s.io")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(name: &str, containers: &[(&str, &[(&str, &str)])]) -> PodMetrics {
        PodMetrics {
            kind: None,
            api_version: None,
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            timestamp: Time(Timestamp::UNIX_EPOCH),
            window: "15s".into(),
            containers: containers
                .iter()
                .map(|(n, usage)| ContainerMetrics {
                    name: (*n).into(),
                    usage: usage.iter().map(|(k, v)| ((*k).into(), Quantity((*v).into()))).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn pod_metrics_sum_containers_and_skip_pods_missing_the_resource() {
        let items = [
            pm("a", &[("c1", &[("cpu", "100m")]), ("c2", &[("cpu", "0.2")])]),
            pm("b", &[("c1", &[("memory", "1Mi")])]),
            pm("c", &[]),
        ];
        let info = pod_metrics_info(&items, "cpu");
        assert_eq!(info.len(), 1);
        assert_eq!(info["a"].value, 300);
        assert_eq!(info["a"].window, SignedDuration::from_secs(15));
    }

    #[test]
    fn container_metrics_require_the_container_in_every_pod() {
        let items = [pm("a", &[("app", &[("cpu", "50m")])]), pm("b", &[("side", &[("cpu", "1m")])])];
        let err = container_metrics_info(&items, "cpu", "app").unwrap_err();
        assert_eq!(err.to_string(), "container app not present in metrics for pod ns/b");
        let info = container_metrics_info(&items[..1], "cpu", "app").unwrap();
        assert_eq!(info["a"].value, 50);
    }

    #[test]
    fn metrics_server_pod_metrics_lists_parse() {
        let list: List<PodMetrics> = serde_json::from_value(serde_json::json!({
            "kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {},
            "items": [{
                "metadata": {"name": "burn", "namespace": "default", "creationTimestamp": "2026-11-27T05:42:26Z"},
                "timestamp": "2026-11-27T05:42:25Z", "window": "12.474865088s",
                "containers": [{"name": "main", "usage": {"cpu": "384490269n", "memory": "244Ki"}}]
            }]
        }))
        .unwrap();
        let info = pod_metrics_info(&list.items, "cpu");
        assert_eq!(info["burn"].value, 385, "nano-cores round up to milli-cores as MilliValue does");
        assert_eq!(info["burn"].timestamp, "2026-11-27T05:42:25Z".parse::<Timestamp>().unwrap());
        assert_eq!(info["burn"].window, SignedDuration::from_nanos(12_474_865_088));
        assert_eq!(pod_metrics_info(&list.items, "memory")["burn"].value, 244 * 1024 * 1000);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("app in (a,b),tier!=x"), "app%20in%20%28a%2Cb%29%2Ctier%21%3Dx");
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("1m0s"), SignedDuration::from_mins(1));
        assert_eq!(parse_go_duration("10.5s"), SignedDuration::from_millis(10_500));
        assert_eq!(parse_go_duration("300ms"), SignedDuration::from_millis(300));
        assert_eq!(parse_go_duration("bogus"), SignedDuration::ZERO);
    }

    #[test]
    fn an_unserved_api_reads_as_client_go_prints_it() {
        let e = MetricsError::Fetch {
            api: "resource metrics",
            resource: "pods.metrics.k8s.io".into(),
            source: Box::new(kube::Error::Api(
                kube::core::Status::failure("the server could not find the requested resource", "NotFound")
                    .with_code(404)
                    .boxed(),
            )),
        };
        assert_eq!(
            e.to_string(),
            "unable to fetch metrics from resource metrics API: the server could not find the requested resource (get pods.metrics.k8s.io)"
        );
    }
}
