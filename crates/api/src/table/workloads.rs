//! Printers of the pod controllers and what steers them: deployments, replica sets, stateful
//! and daemon sets, replication controllers, controller revisions, jobs, cron jobs,
//! horizontal pod autoscalers and disruption budgets.

use jiff::Timestamp;
use serde_json::Value;

use super::duration::human_duration;
use super::format::{bool_ptr, container_cells, format_label_selector, int_or_string, label_selector, labels};
use super::object::{age, condition_status, deleting, get, int, list, name, opt_int, opt_text, since, text, timestamp};
use super::quantity::{quantity_cell, quantity_ptr_cell};
use super::{AGE, CONTAINERS, Column, IMAGES, NAME, Printer, docs};

pub(super) const PRINTERS: &[Printer] = &[
    Printer::new("apps", "Deployment", DEPLOYMENT_COLUMNS, deployment_cells),
    Printer::new("apps", "ReplicaSet", REPLICA_SET_COLUMNS, replica_set_cells),
    Printer::new("apps", "StatefulSet", STATEFUL_SET_COLUMNS, stateful_set_cells),
    Printer::new("apps", "DaemonSet", DAEMON_SET_COLUMNS, daemon_set_cells),
    Printer::new("apps", "ControllerRevision", CONTROLLER_REVISION_COLUMNS, controller_revision_cells),
    Printer::new("", "ReplicationController", REPLICATION_CONTROLLER_COLUMNS, replication_controller_cells),
    Printer::new("batch", "Job", JOB_COLUMNS, job_cells),
    Printer::new("batch", "CronJob", CRON_JOB_COLUMNS, cron_job_cells),
    Printer::new("autoscaling", "HorizontalPodAutoscaler", HPA_COLUMNS, hpa_cells),
    Printer::new("policy", "PodDisruptionBudget", PDB_COLUMNS, pdb_cells),
];

/// `spec.replicas`, which defaulting sets to 1 for every workload kind.
fn desired_replicas(obj: &Value) -> i64 {
    opt_int(obj, "/spec/replicas").unwrap_or(1)
}

const DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Ready", "Number of the pod with ready state"),
    Column::string("Up-to-date", docs::DEPLOYMENT_STATUS_UPDATED),
    Column::string("Available", docs::DEPLOYMENT_STATUS_AVAILABLE),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::string("Selector", docs::DEPLOYMENT_SPEC_SELECTOR).wide(),
];

fn deployment_cells(d: &Value, now: Timestamp) -> Vec<Value> {
    // Unlike the other workloads, deployments print an empty selector as "" (not <none>).
    let selector = label_selector(get(d, "/spec/selector")).unwrap_or_else(|| "<invalid>".into());
    let [names, images] = container_cells(d, "/spec/template/spec/containers");
    vec![
        name(d).into(),
        format!("{}/{}", int(d, "/status/readyReplicas"), desired_replicas(d)).into(),
        int(d, "/status/updatedReplicas").into(),
        int(d, "/status/availableReplicas").into(),
        age(d, now).into(),
        names,
        images,
        selector.into(),
    ]
}

const REPLICA_SET_COLUMNS: &[Column] = &[
    NAME,
    Column::integer("Desired", docs::RS_SPEC_REPLICAS),
    Column::integer("Current", docs::RS_STATUS_REPLICAS),
    Column::integer("Ready", docs::RS_STATUS_READY_REPLICAS),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::string("Selector", docs::RS_SPEC_SELECTOR).wide(),
];

fn replica_set_cells(rs: &Value, now: Timestamp) -> Vec<Value> {
    let [names, images] = container_cells(rs, "/spec/template/spec/containers");
    vec![
        name(rs).into(),
        desired_replicas(rs).into(),
        int(rs, "/status/replicas").into(),
        int(rs, "/status/readyReplicas").into(),
        age(rs, now).into(),
        names,
        images,
        format_label_selector(get(rs, "/spec/selector")).into(),
    ]
}

const REPLICATION_CONTROLLER_COLUMNS: &[Column] = &[
    NAME,
    Column::integer("Desired", docs::RC_SPEC_REPLICAS),
    Column::integer("Current", docs::RC_STATUS_REPLICAS),
    Column::integer("Ready", docs::RC_STATUS_READY_REPLICAS),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::string("Selector", docs::RC_SPEC_SELECTOR).wide(),
];

fn replication_controller_cells(rc: &Value, now: Timestamp) -> Vec<Value> {
    let [names, images] = container_cells(rc, "/spec/template/spec/containers");
    vec![
        name(rc).into(),
        desired_replicas(rc).into(),
        int(rc, "/status/replicas").into(),
        int(rc, "/status/readyReplicas").into(),
        age(rc, now).into(),
        names,
        images,
        labels(get(rc, "/spec/selector")).into(),
    ]
}

const STATEFUL_SET_COLUMNS: &[Column] =
    &[NAME, Column::string("Ready", "Number of the pod with ready state"), AGE, CONTAINERS, IMAGES];

fn stateful_set_cells(ss: &Value, now: Timestamp) -> Vec<Value> {
    let [names, images] = container_cells(ss, "/spec/template/spec/containers");
    vec![
        name(ss).into(),
        format!("{}/{}", int(ss, "/status/readyReplicas"), desired_replicas(ss)).into(),
        age(ss, now).into(),
        names,
        images,
    ]
}

const DAEMON_SET_COLUMNS: &[Column] = &[
    NAME,
    Column::integer("Desired", docs::DS_STATUS_DESIRED),
    Column::integer("Current", docs::DS_STATUS_CURRENT),
    Column::integer("Ready", docs::DS_STATUS_READY),
    Column::integer("Up-to-date", docs::DS_STATUS_UPDATED),
    Column::integer("Available", docs::DS_STATUS_AVAILABLE),
    Column::string("Node Selector", docs::POD_SPEC_NODE_SELECTOR),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::string("Selector", docs::DS_SPEC_SELECTOR).wide(),
];

fn daemon_set_cells(ds: &Value, now: Timestamp) -> Vec<Value> {
    let [names, images] = container_cells(ds, "/spec/template/spec/containers");
    vec![
        name(ds).into(),
        int(ds, "/status/desiredNumberScheduled").into(),
        int(ds, "/status/currentNumberScheduled").into(),
        int(ds, "/status/numberReady").into(),
        int(ds, "/status/updatedNumberScheduled").into(),
        int(ds, "/status/numberAvailable").into(),
        labels(get(ds, "/spec/template/spec/nodeSelector")).into(),
        age(ds, now).into(),
        names,
        images,
        format_label_selector(get(ds, "/spec/selector")).into(),
    ]
}

const CONTROLLER_REVISION_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Controller", "Controller of the object"),
    Column::string("Revision", docs::CONTROLLER_REVISION_REVISION),
    AGE,
];

fn controller_revision_cells(rev: &Value, now: Timestamp) -> Vec<Value> {
    let controller = list(rev, "/metadata/ownerReferences")
        .iter()
        .find(|r| get(r, "/controller").and_then(Value::as_bool) == Some(true))
        .map_or_else(
            || "<none>".to_string(),
            |owner| {
                // `daemonset.apps/name`: the lower-cased group kind, as upstream's
                // formatResourceName prints it; the bare name when there is no kind.
                let group = text(owner, "/apiVersion").rsplit_once('/').map_or("", |(group, _)| group);
                let kind = text(owner, "/kind");
                let group_kind = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
                if group_kind.is_empty() {
                    text(owner, "/name").to_string()
                } else {
                    format!("{}/{}", group_kind.to_lowercase(), text(owner, "/name"))
                }
            },
        );
    vec![name(rev).into(), controller.into(), int(rev, "/revision").into(), age(rev, now).into()]
}

const JOB_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Status", "Status of the job."),
    Column::string("Completions", docs::JOB_STATUS_SUCCEEDED),
    Column::string("Duration", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::string("Selector", docs::JOB_SPEC_SELECTOR).wide(),
];

fn job_status(job: &Value) -> &'static str {
    let conditions = list(job, "/status/conditions");
    let holds = |kind: &str| condition_status(conditions, kind) == Some("True");
    if holds("Complete") {
        "Complete"
    } else if holds("Failed") {
        "Failed"
    } else if deleting(job) {
        "Terminating"
    } else if holds("Suspended") {
        "Suspended"
    } else if holds("FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    }
}

fn job_cells(job: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = int(job, "/status/succeeded");
    let completions = match opt_int(job, "/spec/completions") {
        Some(completions) => format!("{succeeded}/{completions}"),
        None => match opt_int(job, "/spec/parallelism").unwrap_or(0) {
            parallelism if parallelism > 1 => format!("{succeeded}/1 of {parallelism}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration = match (timestamp(job, "/status/startTime"), timestamp(job, "/status/completionTime")) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now.duration_since(start)),
        (Some(start), Some(end)) => human_duration(end.duration_since(start)),
    };
    let [names, images] = container_cells(job, "/spec/template/spec/containers");
    vec![
        name(job).into(),
        job_status(job).into(),
        completions.into(),
        duration.into(),
        age(job, now).into(),
        names,
        images,
        format_label_selector(get(job, "/spec/selector")).into(),
    ]
}

const CRON_JOB_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Schedule", docs::CRONJOB_SPEC_SCHEDULE),
    Column::string("Timezone", docs::CRONJOB_SPEC_TIME_ZONE),
    Column::boolean("Suspend", docs::CRONJOB_SPEC_SUSPEND),
    Column::integer("Active", docs::CRONJOB_STATUS_ACTIVE),
    Column::string("Last Schedule", docs::CRONJOB_STATUS_LAST_SCHEDULE),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::string("Selector", docs::JOB_SPEC_SELECTOR).wide(),
];

fn cron_job_cells(cj: &Value, now: Timestamp) -> Vec<Value> {
    let last_schedule = match timestamp(cj, "/status/lastScheduleTime") {
        Some(at) => since(Some(at), now),
        None => "<none>".into(),
    };
    let [names, images] = container_cells(cj, "/spec/jobTemplate/spec/template/spec/containers");
    vec![
        name(cj).into(),
        text(cj, "/spec/schedule").into(),
        opt_text(cj, "/spec/timeZone").unwrap_or("<none>").into(),
        // The column says boolean, but upstream prints the pointer as text.
        bool_ptr(get(cj, "/spec/suspend").and_then(Value::as_bool)).into(),
        list(cj, "/status/active").len().into(),
        last_schedule.into(),
        age(cj, now).into(),
        names,
        images,
        format_label_selector(get(cj, "/spec/jobTemplate/spec/selector")).into(),
    ]
}

const HPA_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Reference", docs::HPA_SPEC_SCALE_TARGET_REF),
    Column::string("Targets", docs::HPA_SPEC_METRICS),
    Column::string("MinPods", docs::HPA_SPEC_MIN_REPLICAS),
    Column::string("MaxPods", docs::HPA_SPEC_MAX_REPLICAS),
    Column::string("Replicas", docs::HPA_STATUS_CURRENT_REPLICAS),
    AGE,
];

/// The metric specs and statuses of an HPA in autoscaling/v2 form; an autoscaling/v1 object's
/// CPU target becomes a resource metric, as upstream's conversion makes it.
fn hpa_metrics(hpa: &Value) -> (Vec<Value>, Vec<Value>) {
    let specs = list(hpa, "/spec/metrics");
    if !specs.is_empty() || get(hpa, "/spec/targetCPUUtilizationPercentage").is_none() {
        return (specs.to_vec(), list(hpa, "/status/currentMetrics").to_vec());
    }
    let target = get(hpa, "/spec/targetCPUUtilizationPercentage").cloned();
    let spec = serde_json::json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}});
    let statuses = match get(hpa, "/status/currentCPUUtilizationPercentage") {
        Some(current) => vec![
            serde_json::json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": current}}}),
        ],
        None => Vec::new(),
    };
    (vec![spec], statuses)
}

/// Upstream's `formatHPAMetrics`: `current/target` per metric, two at most.
fn hpa_targets(specs: &[Value], statuses: &[Value]) -> String {
    if specs.is_empty() {
        return "<none>".into();
    }
    let entries: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let status = statuses.get(i);
            // The status of the same index, if it has the source of this metric type.
            let current = |source: &str| status.and_then(|s| get(s, source));
            let utilization = |v: Option<&Value>| v.and_then(Value::as_i64).map(|u| format!("{u}%"));
            match text(spec, "/type") {
                source @ ("External" | "Object") => {
                    let key = if source == "External" { "/external" } else { "/object" };
                    let target = get(spec, key).unwrap_or(&Value::Null);
                    if let Some(average) = get(target, "/target/averageValue") {
                        let now = current(key)
                            .and_then(|c| get(c, "/current/averageValue"))
                            .map_or_else(|| "<unknown>".into(), |v| quantity_cell(Some(v)));
                        format!("{now}/{} (avg)", quantity_cell(Some(average)))
                    } else {
                        let now = current(key)
                            .map_or_else(|| "<unknown>".into(), |c| quantity_ptr_cell(get(c, "/current/value")));
                        format!("{now}/{}", quantity_ptr_cell(get(target, "/target/value")))
                    }
                }
                "Pods" => {
                    let now = current("/pods")
                        .map_or_else(|| "<unknown>".into(), |c| quantity_ptr_cell(get(c, "/current/averageValue")));
                    format!("{now}/{}", quantity_ptr_cell(get(spec, "/pods/target/averageValue")))
                }
                source @ ("Resource" | "ContainerResource") => {
                    let key = if source == "Resource" { "/resource" } else { "/containerResource" };
                    let target = get(spec, key).unwrap_or(&Value::Null);
                    let resource = text(target, "/name");
                    if let Some(average) = get(target, "/target/averageValue") {
                        let now = current(key)
                            .map_or_else(|| "<unknown>".into(), |c| quantity_ptr_cell(get(c, "/current/averageValue")));
                        format!("{resource}: {now}/{}", quantity_cell(Some(average)))
                    } else {
                        let now = utilization(current(key).and_then(|c| get(c, "/current/averageUtilization")))
                            .unwrap_or_else(|| "<unknown>".into());
                        let goal =
                            utilization(get(target, "/target/averageUtilization")).unwrap_or_else(|| "<auto>".into());
                        format!("{resource}: {now}/{goal}")
                    }
                }
                _ => "<unknown type>".into(),
            }
        })
        .collect();
    const MAX: usize = 2;
    if entries.len() > MAX {
        return format!("{} + {} more...", entries[..MAX].join(", "), entries.len() - MAX);
    }
    entries.join(", ")
}

fn hpa_cells(hpa: &Value, now: Timestamp) -> Vec<Value> {
    let target_ref = format!("{}/{}", text(hpa, "/spec/scaleTargetRef/kind"), text(hpa, "/spec/scaleTargetRef/name"));
    let (specs, statuses) = hpa_metrics(hpa);
    let min_pods = opt_int(hpa, "/spec/minReplicas").map_or_else(|| "<unset>".into(), |m| m.to_string());
    vec![
        name(hpa).into(),
        target_ref.into(),
        hpa_targets(&specs, &statuses).into(),
        min_pods.into(),
        int(hpa, "/spec/maxReplicas").into(),
        int(hpa, "/status/currentReplicas").into(),
        age(hpa, now).into(),
    ]
}

const PDB_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Min Available", "The minimum number of pods that must be available."),
    Column::string("Max Unavailable", "The maximum number of pods that may be unavailable."),
    Column::integer("Allowed Disruptions", "Calculated number of pods that may be disrupted at this time."),
    AGE,
];

fn pdb_cells(pdb: &Value, now: Timestamp) -> Vec<Value> {
    let bound = |pointer: &str| get(pdb, pointer).map_or_else(|| "N/A".into(), int_or_string);
    vec![
        name(pdb).into(),
        bound("/spec/minAvailable").into(),
        bound("/spec/maxUnavailable").into(),
        int(pdb, "/status/disruptionsAllowed").into(),
        age(pdb, now).into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}, {"name": "exporter", "image": "prom/nginx-exporter"}]}})
    }

    #[test]
    fn deployment_shows_ready_of_desired_and_wide_containers() {
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-05-01T09:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template()},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
        });
        assert_eq!(
            deployment_cells(&d, now()),
            [
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("3h"),
                json!("nginx,exporter"),
                json!("nginx:1.25,prom/nginx-exporter"),
                json!("app=web")
            ]
        );
        let fresh = json!({"metadata": {"name": "new"}, "spec": {"selector": {}}});
        assert_eq!(deployment_cells(&fresh, now())[1], "0/1");
        assert_eq!(deployment_cells(&fresh, now())[7], "");
    }

    #[test]
    fn replica_sets_and_controllers_print_counts_and_selectors() {
        let rs = json!({"metadata": {"name": "web-5d9c"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d9c"}}, "template": template()},
            "status": {"replicas": 3, "readyReplicas": 1}});
        let cells = replica_set_cells(&rs, now());
        assert_eq!(cells[1..4], [json!(3), json!(3), json!(1)]);
        assert_eq!(cells[7], "app=web,pod-template-hash=5d9c");
        let rc = json!({"metadata": {"name": "old"}, "spec": {"selector": {"app": "old"}}});
        assert_eq!(replication_controller_cells(&rc, now())[1..4], [json!(1), json!(0), json!(0)]);
        assert_eq!(replication_controller_cells(&rc, now())[5..], [json!(""), json!(""), json!("app=old")]);
    }

    #[test]
    fn stateful_and_daemon_sets_print_their_status() {
        let ss = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3, "template": template()}, "status": {"readyReplicas": 3}});
        assert_eq!(stateful_set_cells(&ss, now())[1], "3/3");
        let ds = json!({"metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "a", "image": "agent:1"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}});
        let cells = daemon_set_cells(&ds, now());
        assert_eq!(cells[1..7], [json!(3), json!(3), json!(2), json!(3), json!(2), json!("kubernetes.io/os=linux")]);
        assert_eq!(cells[10], "app=agent");
    }

    #[test]
    fn controller_revision_names_its_controller_by_group_kind() {
        let rev = json!({"metadata": {"name": "agent-7f", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Pod", "name": "x"},
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "controller": true}]}, "revision": 4});
        assert_eq!(controller_revision_cells(&rev, now())[1..3], [json!("daemonset.apps/agent"), json!(4)]);
        let orphan = json!({"metadata": {"name": "o"}, "revision": 1});
        assert_eq!(controller_revision_cells(&orphan, now())[1], "<none>");
    }

    #[test]
    fn job_status_completions_and_duration() {
        let job = json!({
            "metadata": {"name": "pi", "creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"completions": 1, "parallelism": 1, "template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}},
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "abc"}}},
            "status": {"succeeded": 1, "startTime": "2024-05-01T11:00:00Z", "completionTime": "2024-05-01T11:00:42Z",
                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]},
        });
        assert_eq!(
            job_cells(&job, now()),
            [
                json!("pi"),
                json!("Complete"),
                json!("1/1"),
                json!("42s"),
                json!("60m"),
                json!("pi"),
                json!("perl"),
                json!("batch.kubernetes.io/controller-uid=abc")
            ]
        );
        let running = json!({"metadata": {"name": "w"}, "spec": {"parallelism": 3}, "status": {"startTime": "2024-05-01T11:57:00Z"}});
        assert_eq!(job_cells(&running, now())[1..4], [json!("Running"), json!("0/1 of 3"), json!("3m")]);
        let failed =
            json!({"metadata": {"name": "f"}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        assert_eq!(job_cells(&failed, now())[1..4], [json!("Failed"), json!("0/1"), json!("")]);
        let suspended =
            json!({"metadata": {"name": "s"}, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
        assert_eq!(job_cells(&suspended, now())[1], "Suspended");
        let deleting = json!({"metadata": {"name": "d", "deletionTimestamp": "2024-05-01T11:59:00Z"}, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
        assert_eq!(job_cells(&deleting, now())[1], "Terminating");
    }

    #[test]
    fn cron_job_shows_schedule_suspension_and_last_run() {
        let cj = json!({
            "metadata": {"name": "backup"},
            "spec": {"schedule": "0 3 * * *", "suspend": false, "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "backup:2"}]}}}}},
            "status": {"active": [{"name": "backup-1"}], "lastScheduleTime": "2024-05-01T03:00:00Z"},
        });
        assert_eq!(
            cron_job_cells(&cj, now())[1..7],
            [json!("0 3 * * *"), json!("<none>"), json!("False"), json!(1), json!("9h"), json!("<unknown>")]
        );
        let never = json!({"metadata": {"name": "n"}, "spec": {"timeZone": "Etc/UTC"}});
        assert_eq!(
            cron_job_cells(&never, now())[2..6],
            [json!("Etc/UTC"), json!("<unset>"), json!(0), json!("<none>")]
        );
    }

    #[test]
    fn hpa_shows_reference_targets_and_bounds() {
        let hpa = json!({
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 10, "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "1024Mi"}}},
                {"type": "Pods", "pods": {"target": {"averageValue": "1k"}}}]},
            "status": {"currentReplicas": 3, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 34, "averageValue": "170m"}}}]},
        });
        assert_eq!(
            hpa_cells(&hpa, now())[1..6],
            [
                json!("Deployment/web"),
                json!("cpu: 34%/50%, memory: <unknown>/1Gi + 1 more..."),
                json!("2"),
                json!(10),
                json!(3)
            ]
        );
    }

    #[test]
    fn autoscaling_v1_hpa_prints_its_cpu_target() {
        let hpa = json!({"metadata": {"name": "web"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5, "targetCPUUtilizationPercentage": 80},
            "status": {"currentReplicas": 1}});
        assert_eq!(hpa_cells(&hpa, now())[2..4], [json!("cpu: <unknown>/80%"), json!("<unset>")]);
        let none = json!({"metadata": {"name": "x"}, "spec": {"maxReplicas": 5}});
        assert_eq!(hpa_cells(&none, now())[2], "<none>");
    }

    #[test]
    fn hpa_object_external_and_pod_metrics() {
        let specs = [
            json!({"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "AverageValue", "averageValue": "30"}}}),
            json!({"type": "Object", "object": {"target": {"type": "Value", "value": "2k"}}}),
        ];
        let statuses = [json!({"type": "External", "external": {"current": {"averageValue": "12"}}})];
        assert_eq!(hpa_targets(&specs, &statuses), "12/30 (avg), <unknown>/2k");
        let pods = [json!({"type": "Pods", "pods": {"target": {"averageValue": "100m"}}})];
        let current = [json!({"type": "Pods", "pods": {"current": {"averageValue": "50m"}}})];
        assert_eq!(hpa_targets(&pods, &current), "50m/100m");
    }

    #[test]
    fn pdb_prints_bounds_or_na() {
        let pdb =
            json!({"metadata": {"name": "web"}, "spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}});
        assert_eq!(pdb_cells(&pdb, now())[1..4], [json!("50%"), json!("N/A"), json!(1)]);
        let max = json!({"metadata": {"name": "db"}, "spec": {"maxUnavailable": 1}});
        assert_eq!(pdb_cells(&max, now())[1..4], [json!("N/A"), json!("1"), json!(0)]);
    }
}
