//! The metric half of upstream's `horizontal.go`: from an HPA's metric specs, the scale
//! target's pods and their metrics to a replica proposal, the `currentMetrics` statuses and the
//! ScalingActive condition, with upstream's event reasons and messages.
//!
//! Pure over its inputs (the metrics client is a parameter), so the unit tests drive it with
//! a fake client.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, ExternalMetricStatus, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    MetricIdentifier, MetricSpec, MetricStatus, MetricTarget, MetricValueStatus, ObjectMetricStatus, PodsMetricStatus,
    ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tug_api::selector::{LabelSelector, SelectorError};

use super::metrics::{MetricsClient, MetricsError};
use super::replica_calculator::{CalcError, ReplicaCalculator, Tolerances};

/// Where a metric's value could not be had, as the event and condition say it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unable to get metrics for resource {resource}: {source}")]
    ResourceMetrics {
        resource: String,
        #[source]
        source: MetricsError,
    },
    #[error("unable to get metric {metric}: {source}")]
    CustomMetric {
        metric: String,
        #[source]
        source: MetricsError,
    },
    #[error("unable to get external metric {namespace}/{metric}: {source}")]
    ExternalMetric {
        namespace: String,
        metric: String,
        #[source]
        source: MetricsError,
    },
    #[error(transparent)]
    Calc(#[from] CalcError),
}

/// Why one metric gave no proposal: the text of its Warning event and of the ScalingActive
/// condition.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("failed to get {resource} usage: {source}")]
    Usage {
        resource: String,
        #[source]
        source: FetchError,
    },
    #[error("failed to get {resource} utilization: {source}")]
    Utilization {
        resource: String,
        #[source]
        source: FetchError,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(
        "invalid resource metric source: neither an average utilization target nor an average value (usage) target was set"
    )]
    NoResourceTarget,
    #[error("invalid {source_kind} metric source: neither a value target nor an average value target was set")]
    NoValueTarget { source_kind: &'static str },
    #[error("invalid metric selector: {source}")]
    MetricSelector {
        #[source]
        source: SelectorError,
    },
    #[error("unknown metric source type {0:?}")]
    UnknownType(String),
}

/// One metric's failure, as it is returned upwards (upstream's `computeReplicasForMetric`).
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("failed to get {resource} resource metric value: {source}")]
    Resource {
        resource: String,
        #[source]
        source: SourceError,
    },
    #[error("failed to get {container} container metric value: {source}")]
    ContainerResource {
        container: String,
        #[source]
        source: SourceError,
    },
    #[error("failed to get pods metric value: {source}")]
    Pods {
        #[source]
        source: SourceError,
    },
    #[error("failed to get object metric value: {source}")]
    Object {
        #[source]
        source: SourceError,
    },
    #[error("failed to get {metric} external metric value: {source}")]
    External {
        metric: String,
        #[source]
        source: SourceError,
    },
    #[error("{source}")]
    InvalidType {
        #[source]
        source: SourceError,
    },
}

impl MetricError {
    /// The event and condition reason (`FailedGetResourceMetric`, ...).
    fn reason(&self) -> &'static str {
        match self {
            MetricError::Resource { .. } => "FailedGetResourceMetric",
            MetricError::ContainerResource { .. } => "FailedGetContainerResourceMetric",
            MetricError::Pods { .. } => "FailedGetPodsMetric",
            MetricError::Object { .. } => "FailedGetObjectMetric",
            MetricError::External { .. } => "FailedGetExternalMetric",
            MetricError::InvalidType { .. } => "InvalidMetricSourceType",
        }
    }

    fn source_error(&self) -> &SourceError {
        match self {
            MetricError::Resource { source, .. }
            | MetricError::ContainerResource { source, .. }
            | MetricError::Pods { source }
            | MetricError::Object { source }
            | MetricError::External { source, .. }
            | MetricError::InvalidType { source } => source,
        }
    }
}

/// Why the metrics gave no usable proposal at all.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("selector is required")]
    SelectorRequired,
    #[error("couldn't convert selector into a corresponding internal selector object: {source}")]
    InvalidSelector {
        #[source]
        source: SelectorError,
    },
    #[error("pods by selector {selector} are controlled by multiple HPAs: [{}]", .hpas.join(" "))]
    AmbiguousSelector { selector: String, hpas: Vec<String> },
    #[error("invalid metrics ({invalid} invalid out of {total}), first error is: {first}")]
    InvalidMetrics {
        invalid: usize,
        total: usize,
        #[source]
        first: Box<MetricError>,
    },
}

/// An event to record about the HPA: type, reason, message.
pub type PendingEvent = (&'static str, &'static str, String);

/// What the metrics propose (upstream's `computeReplicasForMetrics` results).
#[derive(Debug, Default)]
pub struct Proposal {
    /// The largest proposal of the metrics that worked.
    pub replicas: i32,
    /// The metric that gave it, as the SuccessfulRescale reason names it.
    pub metric: String,
    pub statuses: Vec<MetricStatus>,
    /// The first error when some metrics failed but the proposal may still be used.
    pub partial_error: Option<ComputeError>,
}

/// A proposal's failure: the statuses gathered so far (for `currentMetrics`) and the error.
#[derive(Debug)]
pub struct Failure {
    pub statuses: Vec<MetricStatus>,
    pub error: ComputeError,
}

/// Sets (or adds) a condition; its transition time changes only when its status does
/// (upstream's `setCondition`).
pub fn set_condition(
    hpa: &mut HorizontalPodAutoscaler,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    let conditions = hpa.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new);
    let i = match conditions.iter().position(|c| c.type_ == type_) {
        Some(i) => i,
        None => {
            conditions.push(HorizontalPodAutoscalerCondition { type_: type_.into(), ..Default::default() });
            conditions.len() - 1
        }
    };
    let c = &mut conditions[i];
    if c.status != status {
        c.last_transition_time = Some(Time(now));
    }
    c.status = status.into();
    c.reason = Some(reason.into());
    c.message = Some(message);
}

/// A milli-value as upstream's `resource.NewMilliQuantity(v, DecimalSI).String()` prints it.
pub fn milli_quantity(v: i64) -> Quantity {
    if v % 1000 != 0 {
        return Quantity(format!("{v}m"));
    }
    let mut n = v / 1000;
    let mut suffix = 0;
    const SUFFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    while n != 0 && n % 1000 == 0 && suffix < SUFFIXES.len() - 1 {
        n /= 1000;
        suffix += 1;
    }
    Quantity(format!("{n}{}", SUFFIXES[suffix]))
}

fn quantity_milli(q: &Quantity) -> i64 {
    tug_api::quantity::Exact::parse(&q.0).map_or(0, |e| i64::try_from(e.milli_value()).unwrap_or(i64::MAX))
}

/// The target of a metric about something other than the pods (Object, External), in
/// milli-units: for the whole target, or per pod.
#[derive(Debug, Clone, Copy)]
enum WholeTarget {
    Value(i64),
    AverageValue(i64),
}

/// One evaluation of an HPA's metrics against its target's pods.
pub struct Evaluation<'a, M> {
    pub metrics: &'a M,
    pub calc: &'a ReplicaCalculator,
    pub tolerances: Tolerances,
    /// The pods of the HPA's namespace.
    pub namespace_pods: &'a [&'a Pod],
    /// The selectors of the other HPAs in the namespace, by name.
    pub other_selectors: &'a BTreeMap<String, LabelSelector>,
    pub now: Timestamp,
    /// Events to record about the HPA.
    pub events: Vec<PendingEvent>,
}

impl<M: MetricsClient> Evaluation<'_, M> {
    /// The replicas the metrics propose (the largest of them), or why there is none; sets
    /// ScalingActive as upstream does.
    pub async fn compute_replicas_for_metrics(
        &mut self,
        hpa: &mut HorizontalPodAutoscaler,
        selector: Option<&str>,
        spec_replicas: i32,
        status_replicas: i32,
    ) -> Result<Proposal, Failure> {
        let fail = |error| Failure { statuses: Vec::new(), error };
        let selector = self.validate_selector(hpa, selector).map_err(fail)?;
        let specs = hpa.spec.metrics.clone().unwrap_or_default();
        let mut proposal = Proposal { statuses: vec![MetricStatus::default(); specs.len()], ..Default::default() };
        let mut invalid = 0;
        let mut first: Option<MetricError> = None;
        let mut first_condition: Option<(&'static str, String)> = None;
        for (i, spec) in specs.iter().enumerate() {
            let ns = hpa.metadata.namespace.clone().unwrap_or_default();
            match self.compute_replicas_for_metric(&ns, spec, &selector, spec_replicas, status_replicas).await {
                Ok((replicas, metric, status)) => {
                    proposal.statuses[i] = status;
                    if proposal.replicas == 0 || replicas > proposal.replicas {
                        proposal.replicas = replicas;
                        proposal.metric = metric;
                    }
                }
                Err(e) => {
                    let inner = e.source_error().to_string();
                    self.events.push((crate::events::WARNING, e.reason(), inner.clone()));
                    if first.is_none() {
                        first_condition = Some((e.reason(), inner));
                        first = Some(e);
                    }
                    invalid += 1;
                }
            }
        }
        let mut error =
            first.map(|first| ComputeError::InvalidMetrics { invalid, total: specs.len(), first: Box::new(first) });
        // All metrics failed, or some failed and the rest would scale down: do nothing, as a
        // scale-down on partial information could be wrong.
        if invalid > 0
            && (invalid >= specs.len() || proposal.replicas < spec_replicas)
            && let (Some(error), Some((reason, inner))) = (error.take(), first_condition.take())
        {
            let message = format!("the HPA was unable to compute the replica count: {inner}");
            set_condition(hpa, "ScalingActive", "False", reason, message, self.now);
            return Err(Failure { statuses: proposal.statuses, error });
        }
        set_condition(
            hpa,
            "ScalingActive",
            "True",
            "ValidMetricFound",
            format!("the HPA was able to successfully calculate a replica count from {}", proposal.metric),
            self.now,
        );
        proposal.partial_error = error;
        Ok(proposal)
    }

    /// The target's selector, checked as upstream's `validateAndParseSelector`: present,
    /// parseable, and not selecting pods another HPA also selects.
    fn validate_selector(
        &mut self,
        hpa: &mut HorizontalPodAutoscaler,
        selector: Option<&str>,
    ) -> Result<LabelSelector, ComputeError> {
        let raw = selector.unwrap_or("");
        if raw.is_empty() {
            self.events.push((crate::events::WARNING, "SelectorRequired", "selector is required".into()));
            set_condition(
                hpa,
                "ScalingActive",
                "False",
                "InvalidSelector",
                "the HPA target's scale is missing a selector".into(),
                self.now,
            );
            return Err(ComputeError::SelectorRequired);
        }
        let parsed = LabelSelector::parse(raw).map_err(|source| {
            let e = ComputeError::InvalidSelector { source };
            self.events.push((crate::events::WARNING, "InvalidSelector", e.to_string()));
            e
        });
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                set_condition(hpa, "ScalingActive", "False", "InvalidSelector", e.to_string(), self.now);
                return Err(e);
            }
        };
        let name = hpa.metadata.name.clone().unwrap_or_default();
        let ns = hpa.metadata.namespace.clone().unwrap_or_default();
        let mut hpas: Vec<String> = Vec::new();
        for pod in self
            .namespace_pods
            .iter()
            .filter(|p| parsed.matches_map(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            for (other, sel) in self.other_selectors {
                if other != &name && sel.matches_map(&labels) && !hpas.contains(other) {
                    hpas.push(other.clone());
                }
            }
        }
        if !hpas.is_empty() {
            hpas.push(name);
            hpas.sort();
            // Upstream prints its keys as Go structs: `{name namespace}`.
            let hpas = hpas.into_iter().map(|h| format!("{{{h} {ns}}}")).collect();
            let e = ComputeError::AmbiguousSelector { selector: raw.into(), hpas };
            self.events.push((crate::events::WARNING, "AmbiguousSelector", e.to_string()));
            set_condition(hpa, "ScalingActive", "False", "AmbiguousSelector", e.to_string(), self.now);
            return Err(e);
        }
        Ok(parsed)
    }

    fn target_pods(&self, selector: &LabelSelector) -> Vec<&'_ Pod> {
        let empty = BTreeMap::new();
        self.namespace_pods
            .iter()
            .copied()
            .filter(|p| selector.matches_map(p.metadata.labels.as_ref().unwrap_or(&empty)))
            .collect()
    }

    /// One metric's proposal: replicas, the metric's name for events, and its status.
    async fn compute_replicas_for_metric(
        &self,
        ns: &str,
        spec: &MetricSpec,
        selector: &LabelSelector,
        spec_replicas: i32,
        status_replicas: i32,
    ) -> Result<(i32, String, MetricStatus), MetricError> {
        match (spec.type_.as_str(), spec) {
            ("Resource", MetricSpec { resource: Some(r), .. }) => {
                let (replicas, name, current) = self
                    .resource_metric(ns, spec_replicas, &r.target, &r.name, "", selector)
                    .await
                    .map_err(|source| MetricError::Resource { resource: r.name.clone(), source })?;
                let status = MetricStatus {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricStatus { name: r.name.clone(), current }),
                    ..Default::default()
                };
                Ok((replicas, name, status))
            }
            ("ContainerResource", MetricSpec { container_resource: Some(r), .. }) => {
                let (replicas, name, current) = self
                    .resource_metric(ns, spec_replicas, &r.target, &r.name, &r.container, selector)
                    .await
                    .map_err(|source| MetricError::ContainerResource { container: r.container.clone(), source })?;
                let status = MetricStatus {
                    type_: "ContainerResource".into(),
                    container_resource: Some(ContainerResourceMetricStatus {
                        name: r.name.clone(),
                        container: r.container.clone(),
                        current,
                    }),
                    ..Default::default()
                };
                Ok((replicas, name, status))
            }
            ("Pods", MetricSpec { pods: Some(p), .. }) => {
                let err = |source| MetricError::Pods { source };
                let metric_selector = metric_selector(p.metric.selector.as_ref())
                    .map_err(|source| err(SourceError::MetricSelector { source }))?;
                let target = p.target.average_value.as_ref().map_or(0, quantity_milli);
                let (metrics, _) =
                    self.metrics.raw_metric(&p.metric.name, ns, selector, &metric_selector).await.map_err(
                        |source| err(FetchError::CustomMetric { metric: p.metric.name.clone(), source }.into()),
                    )?;
                let pods = self.target_pods(selector);
                let (replicas, usage) = self
                    .calc
                    .plain_metric_replicas(metrics, spec_replicas, target, self.tolerances, &pods, "", self.now)
                    .map_err(|e| err(FetchError::from(e).into()))?;
                let status = MetricStatus {
                    type_: "Pods".into(),
                    pods: Some(PodsMetricStatus {
                        metric: p.metric.clone(),
                        current: MetricValueStatus { average_value: Some(milli_quantity(usage)), ..Default::default() },
                    }),
                    ..Default::default()
                };
                Ok((replicas, format!("pods metric {}", p.metric.name), status))
            }
            ("Object", MetricSpec { object: Some(o), .. }) => {
                let err = |source| MetricError::Object { source };
                let metric_selector = metric_selector(o.metric.selector.as_ref())
                    .map_err(|source| err(SourceError::MetricSelector { source }))?;
                let target = match (o.target.type_.as_str(), o.target.value.as_ref(), o.target.average_value.as_ref()) {
                    ("Value", Some(v), _) => WholeTarget::Value(quantity_milli(v)),
                    ("AverageValue", _, Some(a)) => WholeTarget::AverageValue(quantity_milli(a)),
                    _ => return Err(err(SourceError::NoValueTarget { source_kind: "object" })),
                };
                let (usage, _) = self
                    .metrics
                    .object_metric(&o.metric.name, ns, &o.described_object, &metric_selector)
                    .await
                    .map_err(|source| err(FetchError::CustomMetric { metric: o.metric.name.clone(), source }.into()))?;
                let (replicas, current) = self
                    .whole_target_replicas(usage, target, selector, spec_replicas, status_replicas)
                    .map_err(|e| err(FetchError::from(e).into()))?;
                // Upstream names an average-value object metric as an external one.
                let name = match target {
                    WholeTarget::Value(_) => format!("{} metric {}", o.described_object.kind, o.metric.name),
                    WholeTarget::AverageValue(_) => format!("external metric {}", o.metric.name),
                };
                let status = MetricStatus {
                    type_: "Object".into(),
                    object: Some(ObjectMetricStatus {
                        described_object: o.described_object.clone(),
                        metric: MetricIdentifier { name: o.metric.name.clone(), selector: o.metric.selector.clone() },
                        current,
                    }),
                    ..Default::default()
                };
                Ok((replicas, name, status))
            }
            ("External", MetricSpec { external: Some(x), .. }) => {
                let metric = x.metric.name.clone();
                let err = |source| MetricError::External { metric: metric.clone(), source };
                let metric_selector = metric_selector(x.metric.selector.as_ref())
                    .map_err(|source| err(SourceError::MetricSelector { source }))?;
                let target = match (x.target.average_value.as_ref(), x.target.value.as_ref()) {
                    (Some(a), _) => WholeTarget::AverageValue(quantity_milli(a)),
                    (None, Some(v)) => WholeTarget::Value(quantity_milli(v)),
                    (None, None) => return Err(err(SourceError::NoValueTarget { source_kind: "external" })),
                };
                let (values, _) =
                    self.metrics.external_metric(&metric, ns, &metric_selector).await.map_err(|source| {
                        err(FetchError::ExternalMetric { namespace: ns.into(), metric: metric.clone(), source }.into())
                    })?;
                let usage = values.iter().fold(0i64, |acc, v| acc.saturating_add(*v));
                let (replicas, current) = self
                    .whole_target_replicas(usage, target, selector, spec_replicas, status_replicas)
                    .map_err(|e| err(FetchError::from(e).into()))?;
                let status = MetricStatus {
                    type_: "External".into(),
                    external: Some(ExternalMetricStatus {
                        metric: MetricIdentifier { name: metric.clone(), selector: x.metric.selector.clone() },
                        current,
                    }),
                    ..Default::default()
                };
                Ok((replicas, format!("external metric {metric}"), status))
            }
            (other, _) => Err(MetricError::InvalidType { source: SourceError::UnknownType(other.into()) }),
        }
    }

    /// Replicas and current value for a whole-target metric (upstream's
    /// `Get{Object,External}MetricReplicas` and their per-pod variants).
    fn whole_target_replicas(
        &self,
        usage: i64,
        target: WholeTarget,
        selector: &LabelSelector,
        spec_replicas: i32,
        status_replicas: i32,
    ) -> Result<(i32, MetricValueStatus), CalcError> {
        match target {
            WholeTarget::Value(target) => {
                let pods = self.target_pods(selector);
                let ratio = usage as f64 / target as f64;
                let replicas =
                    ReplicaCalculator::usage_ratio_replica_count(spec_replicas, ratio, self.tolerances, &pods)?;
                Ok((replicas, MetricValueStatus { value: Some(milli_quantity(usage)), ..Default::default() }))
            }
            WholeTarget::AverageValue(target) => {
                let (replicas, per_pod) =
                    ReplicaCalculator::per_pod_replicas(status_replicas, usage, target, self.tolerances);
                Ok((replicas, MetricValueStatus { average_value: Some(milli_quantity(per_pod)), ..Default::default() }))
            }
        }
    }

    /// A Resource or ContainerResource metric (upstream's `computeStatusForResourceMetricGeneric`).
    async fn resource_metric(
        &self,
        ns: &str,
        current_replicas: i32,
        target: &MetricTarget,
        resource: &str,
        container: &str,
        selector: &LabelSelector,
    ) -> Result<(i32, String, MetricValueStatus), SourceError> {
        let fetched = self
            .metrics
            .resource_metric(resource, ns, selector, container)
            .await
            .map_err(|source| FetchError::ResourceMetrics { resource: resource.into(), source });
        let pods = self.target_pods(selector);
        if let Some(average) = &target.average_value {
            let usage_err = |source| SourceError::Usage { resource: resource.into(), source };
            let (metrics, _) = fetched.map_err(usage_err)?;
            let (replicas, usage) = self
                .calc
                .plain_metric_replicas(
                    metrics,
                    current_replicas,
                    quantity_milli(average),
                    self.tolerances,
                    &pods,
                    resource,
                    self.now,
                )
                .map_err(|e| usage_err(e.into()))?;
            let status = MetricValueStatus { average_value: Some(milli_quantity(usage)), ..Default::default() };
            return Ok((replicas, format!("{resource} resource"), status));
        }
        let Some(utilization) = target.average_utilization else {
            return Err(SourceError::NoResourceTarget);
        };
        let util_err = |source| SourceError::Utilization { resource: resource.into(), source };
        let (metrics, _) = fetched.map_err(util_err)?;
        let p = self
            .calc
            .resource_replicas(
                current_replicas,
                utilization,
                resource,
                self.tolerances,
                &pods,
                metrics,
                container,
                self.now,
            )
            .map_err(|e| util_err(e.into()))?;
        let name = if container.is_empty() {
            format!("{resource} resource utilization (percentage of request)")
        } else {
            format!("{resource} container resource utilization (percentage of request)")
        };
        let status = MetricValueStatus {
            average_utilization: Some(p.utilization),
            average_value: Some(milli_quantity(p.raw_average)),
            ..Default::default()
        };
        Ok((p.replicas, name, status))
    }
}

fn metric_selector(
    s: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<LabelSelector, SelectorError> {
    s.map_or_else(|| Ok(LabelSelector::everything()), LabelSelector::from_label_selector)
}

#[cfg(test)]
#[path = "horizontal_tests.rs"]
mod tests;
