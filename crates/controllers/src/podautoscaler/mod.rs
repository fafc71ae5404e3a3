//! The horizontal pod autoscaler controller (upstream's `pkg/controller/podautoscaler`,
//! `horizontalpodautoscaling` in the controller manager): every sync period, and when an HPA's
//! spec changes, it reads the target's `scale` subresource (any kind that has one: Deployment,
//! ReplicaSet, StatefulSet, ReplicationController, custom resources), the metrics of the pods
//! the scale's selector picks ([`metrics::MetricsClient`]), computes the replicas the metrics
//! want ([`horizontal`], [`replica_calculator`]), bounds them by the stabilisation windows,
//! the scaling policies and min/max ([`stabilization`]), writes the scale when it changes, and
//! reports in the HPA's status (autoscaling/v2: replicas, currentMetrics, lastScaleTime,
//! conditions AbleToScale / ScalingActive / ScalingLimited) and in Events.
//!
//! This module writes only the targets' scale subresource, HPA status and Events.

pub mod horizontal;
pub mod metrics;
pub mod replica_calculator;
pub mod stabilization;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{CrossVersionObjectReference, HorizontalPodAutoscaler, MetricStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tug_api::selector::LabelSelector;

use crate::events::{NORMAL, Recorder, WARNING};
use crate::informer::{Change, Informers};
use horizontal::{ComputeError, Evaluation, set_condition};
use metrics::{MetricsClient, RestMetricsClient, status_message};
use replica_calculator::{ReplicaCalculator, Tolerances};
use stabilization::{History, NormalizationArg, convert_desired_replicas_with_rules, scale_down_rules, scale_up_rules};

/// Upstream's `--concurrent-horizontal-pod-autoscaler-syncs` default.
const CONCURRENT_SYNCS: u16 = 5;

/// The controller's flags, named and defaulted as upstream's kube-controller-manager.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `--horizontal-pod-autoscaler-sync-period`: how often each HPA is evaluated.
    pub sync_period: Duration,
    /// `--horizontal-pod-autoscaler-tolerance`: how far from target a metric may be before
    /// the controller acts, unless the HPA sets its own.
    pub tolerance: f64,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`: the scale-down window when the
    /// HPA sets none.
    pub downscale_stabilization: Duration,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`: how long after a pod starts its
    /// CPU samples may reflect initialisation.
    pub cpu_initialization_period: Duration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay`: how long after start an unready
    /// pod is taken as never having been ready.
    pub initial_readiness_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sync_period: Duration::from_secs(15),
            tolerance: 0.1,
            downscale_stabilization: Duration::from_secs(300),
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// Why a sync failed; the HPA is evaluated again after the sync period, as upstream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid API version in scale target reference: {source}")]
    TargetVersion {
        #[source]
        source: ScaleTargetError,
    },
    #[error("failed to query scale subresource for {reference}: {source}")]
    GetScale {
        reference: String,
        #[source]
        source: ScaleTargetError,
    },
    #[error("failed to compute desired number of replicas based on listed metrics for {reference}: {source}")]
    ComputeMetrics {
        reference: String,
        #[source]
        source: ComputeError,
    },
    #[error("some metrics of {reference} failed: {source}")]
    PartialMetrics {
        reference: String,
        #[source]
        source: ComputeError,
    },
    #[error("failed to rescale {reference}: {source}")]
    Rescale {
        reference: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to update status for {name}: {source}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Why the target's scale could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScaleTargetError {
    #[error("unexpected GroupVersion string: {0}")]
    GroupVersion(String),
    #[error("no matches for kind {kind:?} in group {group:?}")]
    NoKindMatch { kind: String, group: String },
    #[error("{}", status_message(.0))]
    Api(#[source] kube::Error),
}

struct Ctx<M> {
    client: Client,
    pods: Store<Pod>,
    metrics: M,
    recorder: Recorder,
    options: Options,
    calc: ReplicaCalculator,
    /// Per HPA key: recent recommendations and scale events.
    histories: Mutex<HashMap<String, History>>,
    /// Per HPA key: its target's last known selector, to find pods two HPAs both select.
    selectors: Mutex<HashMap<String, LabelSelector>>,
}

fn key_of(hpa: &HorizontalPodAutoscaler) -> String {
    format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any())
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// Runs the controller, reading metrics through the API server, until `shutdown`.
pub async fn run(informers: Informers, options: Options, shutdown: CancellationToken) {
    let metrics = RestMetricsClient::new(informers.client());
    run_with_metrics(informers, metrics, options, shutdown).await;
}

/// Runs the controller with `metrics` as its metrics source until `shutdown`.
pub async fn run_with_metrics<M: MetricsClient>(
    informers: Informers,
    metrics: M,
    options: Options,
    shutdown: CancellationToken,
) {
    let client = informers.client();
    let (hpas, hpa_writer) = informers.store::<HorizontalPodAutoscaler>().await;
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<ObjectRef<HorizontalPodAutoscaler>>();
    let calc = ReplicaCalculator {
        cpu_initialization_period: signed(options.cpu_initialization_period),
        delay_of_initial_readiness_status: signed(options.initial_readiness_delay),
    };
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods,
        metrics,
        recorder: Recorder::new(client.clone(), "horizontal-pod-autoscaler"),
        options,
        calc,
        histories: Mutex::new(HashMap::new()),
        selectors: Mutex::new(HashMap::new()),
    });
    let hpa_informer = {
        let ctx = ctx.clone();
        hpa_writer.run(shutdown.clone(), move |c| {
            match c {
                Change::Add(h) => {
                    let _ = tx.send(ObjectRef::from_obj(&*h));
                }
                // Status updates (ours included) wait for the next period; a new spec is
                // evaluated at once.
                Change::Update(old, h) => {
                    if old.metadata.generation != h.metadata.generation {
                        let _ = tx.send(ObjectRef::from_obj(&*h));
                    }
                }
                Change::Delete(h) => {
                    let key = key_of(&h);
                    ctx.histories.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    ctx.selectors.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                }
            }
        })
    };
    let pod_informer = pod_writer.run(shutdown.clone(), |_| {});
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    let workers = applier(
        |hpa, ctx| Box::pin(reconcile(hpa, ctx)),
        |hpa, err: &Error, ctx: Arc<Ctx<M>>| {
            warn!(key = %key_of(&hpa), error = %err, "horizontal pod autoscaler sync failed");
            // Upstream evaluates every HPA once per period whatever happened.
            Action::requeue(ctx.options.sync_period)
        },
        ctx,
        hpas,
        queue,
        Config::default().concurrency(CONCURRENT_SYNCS),
    )
    .for_each(|res| async move {
        match res {
            Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
            Err(e) => debug!(error = %e, "horizontal pod autoscaler sync failed"),
        }
    });
    info!("starting horizontal pod autoscaler controller");
    tokio::join!(hpa_informer, pod_informer, workers);
}

/// Parses an apiVersion as Go's `schema.ParseGroupVersion`: (group, version).
fn parse_group_version(api_version: &str) -> Result<(&str, &str), ScaleTargetError> {
    match api_version.split('/').collect::<Vec<_>>()[..] {
        [""] => Ok(("", "")),
        [version] => Ok(("", version)),
        [group, version] => Ok((group, version)),
        _ => Err(ScaleTargetError::GroupVersion(api_version.into())),
    }
}

/// The target's scale through the first of its kind's resources that serves one, and the API
/// to write it back (upstream's `scaleForResourceMappings`).
async fn get_scale(
    client: &Client,
    ns: &str,
    group: &str,
    target: &CrossVersionObjectReference,
) -> Result<(Api<DynamicObject>, Scale), ScaleTargetError> {
    let no_match = || ScaleTargetError::NoKindMatch { kind: target.kind.clone(), group: group.into() };
    let found = kube::discovery::oneshot::group(client, group).await.map_err(|_| no_match())?;
    let mappings: Vec<_> =
        found.resources_by_stability().into_iter().filter(|(ar, _)| ar.kind == target.kind).collect();
    let mut first_err = None;
    for (ar, _) in mappings {
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
        match api.get_scale(&target.name).await {
            Ok(scale) => return Ok((api, scale)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.map_or_else(no_match, ScaleTargetError::Api))
}

/// The tolerances for an HPA: the controller's, unless its behavior sets its own
/// (`HPAConfigurableTolerance`, on by default since 1.35).
fn tolerances_for(hpa: &HorizontalPodAutoscaler, tolerance: f64) -> Tolerances {
    let mut t = Tolerances::both(tolerance);
    let Some(b) = hpa.spec.behavior.as_ref() else { return t };
    let parse = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| tug_api::quantity::parse(&q.0);
    if let Some(v) = b.scale_down.as_ref().and_then(|r| r.tolerance.as_ref()).and_then(parse) {
        t.scale_down = v;
    }
    if let Some(v) = b.scale_up.as_ref().and_then(|r| r.tolerance.as_ref()).and_then(parse) {
        t.scale_up = v;
    }
    t
}

impl<M: MetricsClient> Ctx<M> {
    fn record(&self, hpa: &HorizontalPodAutoscaler, type_: &str, reason: &str, message: String) {
        self.recorder.record(hpa, type_, reason, message);
    }

    /// Writes the status if it changed (upstream's `updateStatusIfNeeded`).
    async fn update_status_if_needed(
        &self,
        original: &Option<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerStatus>,
        hpa: &HorizontalPodAutoscaler,
    ) -> Result<(), Error> {
        if original == &hpa.status {
            return Ok(());
        }
        let api: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.client.clone(), &hpa.namespace().unwrap_or_default());
        match api.replace_status(&hpa.name_any(), &PostParams::default(), hpa).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => {
                self.record(hpa, WARNING, "FailedUpdateStatus", status_message(&source));
                Err(Error::Status { name: hpa.name_any(), source })
            }
        }
    }

    /// Bounds the metrics' recommendation (upstream's `normalizeDesiredReplicas` and
    /// `normalizeDesiredReplicasWithBehaviors`), setting AbleToScale and ScalingLimited.
    fn normalize(
        &self,
        hpa: &mut HorizontalPodAutoscaler,
        key: &str,
        current: i32,
        desired: i32,
        min: i32,
        now: Timestamp,
    ) -> i32 {
        let window = signed(self.options.downscale_stabilization);
        let max = hpa.spec.max_replicas;
        let mut histories = self.histories.lock().unwrap_or_else(|e| e.into_inner());
        let history = histories.entry(key.to_string()).or_default();
        let (stabilized, limited) = match hpa.spec.behavior.as_ref() {
            None => {
                let stabilized = history.stabilize(desired, window, now);
                let reasons = (
                    "ScaleDownStabilized",
                    "recent recommendations were higher than current one, applying the highest recent recommendation",
                );
                ((stabilized, reasons.0, reasons.1), convert_desired_replicas_with_rules(current, stabilized, min, max))
            }
            Some(b) => {
                let mut args = NormalizationArg {
                    scale_up: scale_up_rules(b.scale_up.as_ref()),
                    scale_down: scale_down_rules(b.scale_down.as_ref(), window),
                    min_replicas: min,
                    max_replicas: max,
                    current_replicas: current,
                    desired_replicas: desired,
                };
                let stabilized = history.stabilize_with_behaviors(&args, now);
                args.desired_replicas = stabilized.0;
                (stabilized, history.convert_with_behavior_rate(&args, now))
            }
        };
        drop(histories);
        let (stabilized, reason, message) = stabilized;
        if stabilized != desired {
            set_condition(hpa, "AbleToScale", "True", reason, message.into(), now);
        } else {
            let message = "recommended size matches current size".to_string();
            set_condition(hpa, "AbleToScale", "True", "ReadyForNewScale", message, now);
        }
        let (replicas, reason, message) = limited;
        let status = if replicas == stabilized { "False" } else { "True" };
        set_condition(hpa, "ScalingLimited", status, reason, message.into(), now);
        replicas
    }

    /// The other HPAs' selectors in `ns`, by name.
    fn other_selectors(&self, ns: &str, own: &str) -> BTreeMap<String, LabelSelector> {
        let prefix = format!("{ns}/");
        let selectors = self.selectors.lock().unwrap_or_else(|e| e.into_inner());
        selectors
            .iter()
            .filter(|(k, _)| k.as_str() != own)
            .filter_map(|(k, s)| k.strip_prefix(&prefix).map(|name| (name.to_string(), s.clone())))
            .collect()
    }
}

/// Sets the target's replicas through its scale subresource. The write is conditional on the
/// scale read; when only something else changed since (the target's controller wrote its
/// status, as it does right after a create or a rescale), it is retried on a fresh read rather
/// than failed, so a rescale is not put off a whole sync period for nothing.
async fn write_scale(
    api: &Api<DynamicObject>,
    name: &str,
    scale: &mut Scale,
    current: i32,
    desired: i32,
) -> Result<(), kube::Error> {
    scale.spec.get_or_insert_with(Default::default).replicas = Some(desired);
    match api.replace_scale(name, &PostParams::default(), scale).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let mut fresh = api.get_scale(name).await?;
            if fresh.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) != current {
                return Err(kube::Error::Api(s));
            }
            fresh.spec.get_or_insert_with(Default::default).replicas = Some(desired);
            api.replace_scale(name, &PostParams::default(), &fresh).await.map(drop)
        }
        other => other.map(drop),
    }
}

/// Replaces the status's numbers, keeping its conditions (upstream's `setStatus`).
fn set_status(
    hpa: &mut HorizontalPodAutoscaler,
    current: i32,
    desired: i32,
    metrics: Vec<MetricStatus>,
    rescale: bool,
    now: Timestamp,
) {
    let generation = hpa.metadata.generation;
    let status = hpa.status.get_or_insert_with(Default::default);
    status.current_replicas = Some(current);
    status.desired_replicas = desired;
    status.current_metrics = (!metrics.is_empty()).then_some(metrics);
    status.observed_generation = generation;
    if rescale {
        status.last_scale_time = Some(Time(now));
    }
}

async fn reconcile<M: MetricsClient>(shared: Arc<HorizontalPodAutoscaler>, ctx: Arc<Ctx<M>>) -> Result<Action, Error> {
    let requeue = Action::requeue(ctx.options.sync_period);
    if shared.metadata.deletion_timestamp.is_some() {
        return Ok(requeue);
    }
    // The first evaluation must see every pod, as upstream waits for its caches.
    let _ = ctx.pods.wait_until_ready().await;
    let key = key_of(&shared);
    let mut hpa = (*shared).clone();
    let original = hpa.status.clone();
    let now = Timestamp::now();
    let result = reconcile_autoscaler(&ctx, &mut hpa, &key, &original, now).await;
    debug!(%key, ok = result.is_ok(), "horizontal pod autoscaler synced");
    result.map(|()| requeue)
}

async fn reconcile_autoscaler<M: MetricsClient>(
    ctx: &Ctx<M>,
    hpa: &mut HorizontalPodAutoscaler,
    key: &str,
    original: &Option<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerStatus>,
    now: Timestamp,
) -> Result<(), Error> {
    let ns = hpa.namespace().unwrap_or_default();
    let target = hpa.spec.scale_target_ref.clone();
    let reference = format!("{}/{}/{}", target.kind, ns, target.name);

    let scale_failed = |hpa: &mut HorizontalPodAutoscaler, e: &ScaleTargetError| {
        ctx.record(hpa, WARNING, "FailedGetScale", e.to_string());
        let message = format!("the HPA controller was unable to get the target's current scale: {e}");
        set_condition(hpa, "AbleToScale", "False", "FailedGetScale", message, now);
    };
    let api_version = target.api_version.clone().unwrap_or_default();
    let group = match parse_group_version(&api_version) {
        Ok((group, _)) => group.to_string(),
        Err(source) => {
            scale_failed(hpa, &source);
            ctx.update_status_if_needed(original, hpa).await?;
            return Err(Error::TargetVersion { source });
        }
    };
    let (scale_api, mut scale) = match get_scale(&ctx.client, &ns, &group, &target).await {
        Ok(found) => found,
        Err(source) => {
            scale_failed(hpa, &source);
            ctx.update_status_if_needed(original, hpa).await?;
            return Err(Error::GetScale { reference, source });
        }
    };
    let message = "the HPA controller was able to get the target's current scale".to_string();
    set_condition(hpa, "AbleToScale", "True", "SucceededGetScale", message, now);
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let status_replicas = scale.status.as_ref().map_or(0, |s| s.replicas);
    ctx.histories.lock().unwrap_or_else(|e| e.into_inner()).entry(key.into()).or_default().record_initial(current, now);

    let min = hpa.spec.min_replicas.unwrap_or(1);
    let max = hpa.spec.max_replicas;
    let mut statuses = Vec::new();
    let mut partial = None;
    let (desired, reason, rescale) = if current == 0 && min != 0 {
        let message = "scaling is disabled since the replica count of the target is zero".to_string();
        set_condition(hpa, "ScalingActive", "False", "ScalingDisabled", message, now);
        (0, String::new(), false)
    } else if current > max {
        (max, "Current number of replicas above Spec.MaxReplicas".to_string(), true)
    } else if current < min {
        (min, "Current number of replicas below Spec.MinReplicas".to_string(), true)
    } else {
        let all_pods = ctx.pods.state();
        let namespace_pods: Vec<&Pod> =
            all_pods.iter().map(|p| &**p).filter(|p| p.metadata.namespace.as_deref() == Some(&ns)).collect();
        let others = ctx.other_selectors(&ns, key);
        let mut eval = Evaluation {
            metrics: &ctx.metrics,
            calc: &ctx.calc,
            tolerances: tolerances_for(hpa, ctx.options.tolerance),
            namespace_pods: &namespace_pods,
            other_selectors: &others,
            now,
            events: Vec::new(),
        };
        let selector = scale.status.as_ref().and_then(|s| s.selector.clone());
        // Registered before the metrics are read, so that a conflict is seen from both sides
        // even while this HPA's metrics fail.
        if let Some(parsed) = selector.as_deref().and_then(|s| LabelSelector::parse(s).ok()) {
            ctx.selectors.lock().unwrap_or_else(|e| e.into_inner()).insert(key.into(), parsed);
        }
        let computed = eval.compute_replicas_for_metrics(hpa, selector.as_deref(), current, status_replicas).await;
        for (type_, reason, message) in std::mem::take(&mut eval.events) {
            ctx.record(hpa, type_, reason, message);
        }
        let proposal = match computed {
            Ok(found) => found,
            Err(failure) => {
                let desired = hpa.status.as_ref().map_or(0, |s| s.desired_replicas);
                set_status(hpa, current, desired, failure.statuses, false, now);
                ctx.update_status_if_needed(original, hpa).await?;
                ctx.record(hpa, WARNING, "FailedComputeMetricsReplicas", failure.error.to_string());
                return Err(Error::ComputeMetrics { reference, source: failure.error });
            }
        };
        statuses = proposal.statuses;
        partial = proposal.partial_error;
        let mut desired = 0;
        let mut metric = String::new();
        if proposal.replicas > desired {
            desired = proposal.replicas;
            metric = proposal.metric;
        }
        let reason = if desired > current {
            format!("{metric} above target")
        } else if desired < current {
            "All metrics below target".to_string()
        } else {
            String::new()
        };
        let desired = ctx.normalize(hpa, key, current, desired, min, now);
        (desired, reason, desired != current)
    };

    let desired = if rescale {
        if let Err(source) = write_scale(&scale_api, &target.name, &mut scale, current, desired).await {
            let e = status_message(&source);
            ctx.record(hpa, WARNING, "FailedRescale", format!("New size: {desired}; reason: {reason}; error: {e}"));
            let message = format!("the HPA controller was unable to update the target scale: {e}");
            set_condition(hpa, "AbleToScale", "False", "FailedUpdateScale", message, now);
            let previous = hpa.status.as_ref().map_or(0, |s| s.desired_replicas);
            set_status(hpa, current, previous, statuses, false, now);
            ctx.update_status_if_needed(original, hpa).await?;
            return Err(Error::Rescale { reference, source });
        }
        let message = format!("the HPA controller was able to update the target scale to {desired}");
        set_condition(hpa, "AbleToScale", "True", "SucceededRescale", message, now);
        ctx.record(hpa, NORMAL, "SuccessfulRescale", format!("New size: {desired}; reason: {reason}"));
        let window = signed(ctx.options.downscale_stabilization);
        let mut histories = ctx.histories.lock().unwrap_or_else(|e| e.into_inner());
        let history = histories.entry(key.into()).or_default();
        history.store_scale_event(hpa.spec.behavior.as_ref(), window, current, desired, now);
        info!(%key, current, desired, %reason, "rescaled");
        desired
    } else {
        debug!(%key, desired, "decided not to scale");
        current
    };
    set_status(hpa, current, desired, statuses, rescale, now);
    ctx.update_status_if_needed(original, hpa).await?;
    match partial {
        Some(source) => Err(Error::PartialMetrics { reference, source }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_versions_parse_as_go_does() {
        assert_eq!(parse_group_version("apps/v1").unwrap(), ("apps", "v1"));
        assert_eq!(parse_group_version("v1").unwrap(), ("", "v1"));
        assert_eq!(parse_group_version("").unwrap(), ("", ""));
        let e = parse_group_version("a/b/c").unwrap_err();
        assert_eq!(e.to_string(), "unexpected GroupVersion string: a/b/c");
    }

    #[test]
    fn an_hpa_may_set_its_own_tolerances() {
        let mut hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "maxReplicas": 3}
        }))
        .unwrap();
        assert_eq!(tolerances_for(&hpa, 0.1), Tolerances::both(0.1));
        hpa.spec.behavior = Some(
            serde_json::from_value(
                serde_json::json!({"scaleUp": {"tolerance": "50m"}, "scaleDown": {"tolerance": "0"}}),
            )
            .unwrap(),
        );
        assert_eq!(tolerances_for(&hpa, 0.1), Tolerances { scale_down: 0.0, scale_up: 0.05 });
    }

    #[test]
    fn status_keeps_conditions_and_sets_the_scale_time_only_on_rescale() {
        let mut hpa = HorizontalPodAutoscaler::default();
        hpa.metadata.generation = Some(4);
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        set_condition(&mut hpa, "AbleToScale", "True", "SucceededGetScale", "m".into(), now);
        set_status(&mut hpa, 2, 2, Vec::new(), false, now);
        let status = hpa.status.as_ref().unwrap();
        assert_eq!(
            (status.current_replicas, status.desired_replicas, status.observed_generation),
            (Some(2), 2, Some(4))
        );
        assert!(status.last_scale_time.is_none() && status.current_metrics.is_none());
        assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
        set_status(&mut hpa, 2, 3, Vec::new(), true, now);
        assert_eq!(hpa.status.unwrap().last_scale_time, Some(Time(now)));
    }
}
