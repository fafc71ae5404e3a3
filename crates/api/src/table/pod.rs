//! The pod printer: READY, STATUS and RESTARTS as upstream's `printPod` computes them.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::object::{age, condition_status, deleting, flag, get, has, int, list, name, since, text, timestamp};
use super::{AGE, Column, NAME, Printer, docs};

pub(super) const PRINTERS: &[Printer] =
    &[Printer { conditions: Some(row_conditions), ..Printer::new("", "Pod", POD_COLUMNS, cells) }];

const POD_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Ready", "The aggregate readiness state of this pod for accepting traffic."),
    Column::string("Status", "The aggregate status of the containers in this pod."),
    Column::string(
        "Restarts",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE,
    Column::string("IP", docs::POD_STATUS_POD_IP).wide(),
    Column::string("Node", docs::POD_SPEC_NODE_NAME).wide(),
    Column::string("Nominated Node", docs::POD_STATUS_NOMINATED_NODE_NAME).wide(),
    Column::string("Readiness Gates", docs::POD_SPEC_READINESS_GATES).wide(),
];

/// Finished pods are marked so that clients can hide them (`kubectl get pods` without `-a`
/// in old versions, dashboards today).
fn row_conditions(pod: &Value) -> Vec<Value> {
    match text(pod, "/status/phase") {
        "Succeeded" => vec![completed("Succeeded", "The pod has completed successfully.")],
        "Failed" => vec![completed("Failed", "The pod failed.")],
        _ => Vec::new(),
    }
}

fn completed(reason: &str, message: &str) -> Value {
    json!({"type": "Completed", "status": "True", "reason": reason, "message": message})
}

/// The latest of two restart times; a missing `finishedAt` is Go's zero time and never later.
fn later(current: Option<Timestamp>, candidate: Option<Timestamp>) -> Option<Timestamp> {
    match (current, candidate) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// When the container last terminated, if it ever did.
fn last_termination(status: &Value) -> Option<Option<Timestamp>> {
    get(status, "/lastState/terminated").map(|t| timestamp(t, "/finishedAt"))
}

/// `Signal:9` / `ExitCode:1` for a termination without a reason.
fn exit_reason(terminated: &Value) -> String {
    let signal = int(terminated, "/signal");
    if signal != 0 { format!("Signal:{signal}") } else { format!("ExitCode:{}", int(terminated, "/exitCode")) }
}

fn cells(pod: &Value, now: Timestamp) -> Vec<Value> {
    let phase = text(pod, "/status/phase");
    let status_reason = text(pod, "/status/reason");
    let conditions = list(pod, "/status/conditions");
    let mut reason = if status_reason.is_empty() { phase.to_string() } else { status_reason.to_string() };
    if conditions.iter().any(|c| text(c, "/type") == "PodScheduled" && text(c, "/reason") == "SchedulingGated") {
        reason = "SchedulingGated".into();
    }

    let init_specs = list(pod, "/spec/initContainers");
    // A sidecar is an init container that keeps running (`restartPolicy: Always`).
    let is_sidecar = |container: &str| {
        init_specs.iter().any(|c| text(c, "/name") == container && text(c, "/restartPolicy") == "Always")
    };
    let sidecars = init_specs.iter().filter(|c| text(c, "/restartPolicy") == "Always").count();
    let total = list(pod, "/spec/containers").len() + sidecars;

    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart = None;
    let mut last_sidecar_restart = None;
    let mut initializing = false;
    for (i, status) in list(pod, "/status/initContainerStatuses").iter().enumerate() {
        let sidecar = is_sidecar(text(status, "/name"));
        restarts += int(status, "/restartCount");
        if let Some(finished) = last_termination(status) {
            last_restart = later(last_restart, finished);
        }
        if sidecar {
            sidecar_restarts += int(status, "/restartCount");
            if let Some(finished) = last_termination(status) {
                last_sidecar_restart = later(last_sidecar_restart, finished);
            }
        }
        let terminated = get(status, "/state/terminated");
        let waiting_reason = get(status, "/state/waiting").map(|w| text(w, "/reason")).unwrap_or("");
        if terminated.is_some_and(|t| int(t, "/exitCode") == 0) {
            continue;
        }
        if sidecar && flag(status, "/started") {
            if flag(status, "/ready") {
                ready += 1;
            }
            continue;
        }
        // The first init container still at work decides the status.
        reason = match terminated {
            Some(t) if text(t, "/reason").is_empty() => format!("Init:{}", exit_reason(t)),
            Some(t) => format!("Init:{}", text(t, "/reason")),
            None if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" => {
                format!("Init:{waiting_reason}")
            }
            None => format!("Init:{i}/{}", init_specs.len()),
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        // In reverse, so that the first container's state has the last word.
        for status in list(pod, "/status/containerStatuses").iter().rev() {
            restarts += int(status, "/restartCount");
            if let Some(finished) = last_termination(status) {
                last_restart = later(last_restart, finished);
            }
            let waiting_reason = get(status, "/state/waiting").map(|w| text(w, "/reason")).unwrap_or("");
            let terminated = get(status, "/state/terminated");
            if !waiting_reason.is_empty() {
                reason = waiting_reason.into();
            } else if let Some(t) = terminated {
                let terminated_reason = text(t, "/reason");
                reason = if terminated_reason.is_empty() { exit_reason(t) } else { terminated_reason.into() };
            } else if flag(status, "/ready") && has(status, "/state/running") {
                has_running = true;
                ready += 1;
            }
        }
        // A pod whose last container completed while another still runs is not done.
        if reason == "Completed" && has_running {
            let pod_ready = conditions.iter().any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }

    if deleting(pod) && status_reason == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting(pod) && phase != "Failed" && phase != "Succeeded" {
        reason = "Terminating".into();
    }

    let restarts_cell = match last_restart {
        Some(at) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(at), now)),
        _ => restarts.to_string(),
    };

    // Upstream's internal pods always list the primary IP in podIPs; v1 objects may only
    // carry podIP.
    let ip = list(pod, "/status/podIPs").first().map_or_else(|| text(pod, "/status/podIP"), |ip| text(ip, "/ip"));
    let none_if_empty = |s: &str| {
        if s.is_empty() { "<none>".to_string() } else { s.to_string() }
    };
    let gates = list(pod, "/spec/readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let passing = gates.iter().filter(|g| condition_true(conditions, text(g, "/conditionType"))).count();
        format!("{passing}/{}", gates.len())
    };

    vec![
        name(pod).into(),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_cell.into(),
        age(pod, now).into(),
        none_if_empty(ip).into(),
        none_if_empty(text(pod, "/spec/nodeName")).into(),
        none_if_empty(text(pod, "/status/nominatedNodeName")).into(),
        readiness_gates.into(),
    ]
}

/// Whether the first condition of the type is true (upstream's `isPodInitializedConditionTrue`;
/// readiness gates are looked up the same way).
fn condition_true(conditions: &[Value], kind: &str) -> bool {
    condition_status(conditions, kind) == Some("True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    fn pod(spec: Value, status: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "default", "creationTimestamp": "2024-04-29T07:00:00Z"},
            "spec": spec,
            "status": status,
        })
    }

    fn two_containers() -> Value {
        json!({"containers": [{"name": "app", "image": "nginx"}, {"name": "log", "image": "busybox"}], "nodeName": "node-1"})
    }

    fn running(name: &str, ready: bool, restarts: i64) -> Value {
        json!({"name": name, "ready": ready, "restartCount": restarts, "state": {"running": {"startedAt": "2024-05-01T11:00:00Z"}}})
    }

    fn row(p: &Value) -> Vec<String> {
        cells(p, now()).iter().map(|c| c.as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn one_of_two_ready_with_recent_restarts_shows_ready_count_and_restart_age() {
        let mut app = running("app", true, 3);
        app["lastState"] =
            json!({"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2024-05-01T11:58:00Z"}});
        let p = pod(
            two_containers(),
            json!({"phase": "Running", "podIP": "10.42.0.7", "podIPs": [{"ip": "10.42.0.7"}], "containerStatuses": [app, running("log", false, 0)]}),
        );
        assert_eq!(
            row(&p),
            ["web-0", "1/2", "Running", "3 (2m ago)", "2d5h", "10.42.0.7", "node-1", "<none>", "<none>"]
        );
    }

    #[test]
    fn restarts_without_a_known_time_print_the_bare_count() {
        let p = pod(
            two_containers(),
            json!({"phase": "Running", "containerStatuses": [running("app", true, 2), running("log", true, 0)]}),
        );
        assert_eq!(row(&p)[3], "2");
        assert_eq!(row(&p)[1], "2/2");
    }

    #[test]
    fn pending_pod_without_statuses_shows_its_phase_and_no_ip() {
        let p = pod(json!({"containers": [{"name": "app"}]}), json!({"phase": "Pending"}));
        let r = row(&p);
        assert_eq!(&r[1..4], ["0/1", "Pending", "0"]);
        assert_eq!(&r[5..], ["<none>", "<none>", "<none>", "<none>"]);
    }

    #[test]
    fn waiting_reason_of_a_container_becomes_the_status() {
        let creating = json!({"name": "app", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}});
        let p =
            pod(json!({"containers": [{"name": "app"}]}), json!({"phase": "Pending", "containerStatuses": [creating]}));
        assert_eq!(row(&p)[2], "ContainerCreating");

        let crashing = json!({
            "name": "app", "ready": false, "restartCount": 5,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:59:30Z"}},
        });
        let p =
            pod(json!({"containers": [{"name": "app"}]}), json!({"phase": "Running", "containerStatuses": [crashing]}));
        assert_eq!(&row(&p)[1..4], ["0/1", "CrashLoopBackOff", "5 (30s ago)"]);
    }

    #[test]
    fn terminated_containers_show_reason_or_exit_code() {
        let done = json!({"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        let p =
            pod(json!({"containers": [{"name": "app"}]}), json!({"phase": "Succeeded", "containerStatuses": [done]}));
        assert_eq!(row(&p)[2], "Completed");
        assert_eq!(row_conditions(&p)[0]["reason"], "Succeeded");

        let killed = json!({"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 137, "signal": 9}}});
        let p =
            pod(json!({"containers": [{"name": "app"}]}), json!({"phase": "Failed", "containerStatuses": [killed]}));
        assert_eq!(row(&p)[2], "Signal:9");
    }

    #[test]
    fn completed_container_next_to_a_running_one_shows_running_or_not_ready() {
        let done = json!({"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        let status = |ready: &str| json!({"phase": "Running", "conditions": [{"type": "Ready", "status": ready}], "containerStatuses": [done.clone(), running("log", true, 0)]});
        assert_eq!(row(&pod(two_containers(), status("True")))[2], "Running");
        assert_eq!(row(&pod(two_containers(), status("False")))[2], "NotReady");
    }

    #[test]
    fn init_containers_show_progress_and_failures() {
        let spec = json!({"initContainers": [{"name": "migrate"}, {"name": "seed"}], "containers": [{"name": "app"}]});
        let done = json!({"name": "migrate", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        let running_init = json!({"name": "seed", "restartCount": 0, "state": {"running": {}}});
        let p = pod(spec.clone(), json!({"phase": "Pending", "initContainerStatuses": [done.clone(), running_init]}));
        assert_eq!(&row(&p)[1..3], ["0/1", "Init:1/2"]);

        let failing = json!({"name": "seed", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:55:00Z"}}});
        let p = pod(spec.clone(), json!({"phase": "Pending", "initContainerStatuses": [done.clone(), failing]}));
        assert_eq!(&row(&p)[2..4], ["Init:CrashLoopBackOff", "4 (5m ago)"]);

        let error = json!({"name": "seed", "restartCount": 0, "state": {"terminated": {"exitCode": 2}}});
        let p = pod(spec, json!({"phase": "Pending", "initContainerStatuses": [done, error]}));
        assert_eq!(row(&p)[2], "Init:ExitCode:2");
    }

    #[test]
    fn started_sidecars_count_as_ready_containers() {
        let spec =
            json!({"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "app"}]});
        let proxy = json!({"name": "proxy", "ready": true, "started": true, "restartCount": 1, "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:50:00Z"}}});
        let status = json!({
            "phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True"}],
            "initContainerStatuses": [proxy],
            "containerStatuses": [running("app", true, 0)],
        });
        assert_eq!(&row(&pod(spec, status))[1..4], ["2/2", "Running", "1 (10m ago)"]);
    }

    #[test]
    fn deleted_pods_show_terminating_or_unknown_when_the_node_is_lost() {
        let mut p = pod(
            two_containers(),
            json!({"phase": "Running", "containerStatuses": [running("app", true, 0), running("log", true, 0)]}),
        );
        p["metadata"]["deletionTimestamp"] = json!("2024-05-01T11:59:00Z");
        assert_eq!(row(&p)[2], "Terminating");
        p["status"]["reason"] = json!("NodeLost");
        assert_eq!(row(&p)[2], "Unknown");
        p["status"] = json!({"phase": "Succeeded"});
        assert_eq!(row(&p)[2], "Succeeded");
    }

    #[test]
    fn scheduling_gated_pods_say_so() {
        let status = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]});
        assert_eq!(row(&pod(json!({"containers": [{"name": "app"}]}), status))[2], "SchedulingGated");
    }

    #[test]
    fn wide_cells_show_nominated_node_and_readiness_gates() {
        let spec = json!({"containers": [{"name": "app"}], "readinessGates": [{"conditionType": "lb/ready"}, {"conditionType": "dns/ready"}]});
        let status = json!({
            "phase": "Running", "nominatedNodeName": "node-2", "podIPs": [{"ip": "fd00::7"}, {"ip": "10.0.0.7"}],
            "conditions": [{"type": "lb/ready", "status": "True"}, {"type": "dns/ready", "status": "False"}],
        });
        assert_eq!(&row(&pod(spec, status))[5..], ["fd00::7", "<none>", "node-2", "1/2"]);
    }
}
