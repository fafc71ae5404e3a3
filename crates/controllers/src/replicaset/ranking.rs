//! Which pods go first when a ReplicaSet has too many: upstream's `ActivePodsWithRanks`
//! (`pkg/controller/controller_utils.go`) and `getPodsToDelete`, with the pod predicates they use
//! (`IsPodActive`, `IsPodReady`, `IsPodAvailable`).
//!
//! Deletion prefers, in order: unscheduled over scheduled; Pending over Unknown over Running;
//! not ready over ready; a lower `controller.kubernetes.io/pod-deletion-cost`; pods doubled up on
//! a node with more related pods; for two ready pods, the one ready for less time; more
//! container restarts; then the newer pod. Times are compared on upstream's logarithmic scale
//! (`LogarithmicScaleDown`, GA), with the uid breaking ties within a bucket.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

/// The annotation that lets users say which pods to remove first.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn node_name(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("")
}

/// Upstream's `IsPodActive`: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_none()
}

/// Upstream's `IsPodTerminating`: being deleted and not finished.
pub fn is_terminating(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_some()
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// Upstream's `IsPodReady`: the Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// When a ready pod became ready (its Ready condition's last transition).
fn ready_since(pod: &Pod) -> Option<Timestamp> {
    ready_condition(pod).filter(|c| c.status == "True").and_then(|c| c.last_transition_time.as_ref()).map(|t| t.0)
}

/// Upstream's `IsPodAvailable`: ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    match ready_since(pod) {
        Some(t) => t.as_second() + i64::from(min_ready_seconds) < now.as_second(),
        None => false,
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(POD_DELETION_COST)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn phase_ordinal(pod: &Pod) -> u8 {
    match phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

/// The highest restart count of the pod's containers (regular ones and restartable init
/// containers, i.e. sidecars).
fn max_restarts(pod: &Pod) -> i32 {
    let Some(status) = pod.status.as_ref() else { return 0 };
    let sidecars: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let regular = status.container_statuses.iter().flatten().map(|c| c.restart_count);
    let init = status.init_container_statuses.iter().flatten().filter(|c| sidecars.contains(&c.name.as_str()));
    regular.chain(init.map(|c| c.restart_count)).max().unwrap_or(0)
}

/// `floor(log2(now - t))` in nanoseconds, -1 when `t` is not in the past.
fn log_bucket(t: Timestamp, now: Timestamp) -> i64 {
    let d = now.as_nanosecond() - t.as_nanosecond();
    if d > 0 { (d as f64).log2() as i64 } else { -1 }
}

/// Upstream's `afterOrZero`: a missing time first, then the later one.
fn after_or_zero(a: Option<Timestamp>, b: Option<Timestamp>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => a.is_none(),
        (Some(a), Some(b)) => a > b,
    }
}

/// Compares two distinct times the way upstream does with `LogarithmicScaleDown`.
fn newer_first(a: Option<Timestamp>, b: Option<Timestamp>, uids: (&str, &str), now: Timestamp) -> bool {
    match (a, b) {
        (Some(ta), Some(tb)) => {
            let diff = log_bucket(ta, now) - log_bucket(tb, now);
            if diff == 0 { uids.0 < uids.1 } else { diff < 0 }
        }
        _ => after_or_zero(a, b),
    }
}

/// A pod with its rank: how many related active pods share its node.
pub struct Ranked {
    pub pod: Arc<Pod>,
    pub rank: usize,
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

/// Upstream's `ActivePodsWithRanks.Less`: whether `a` should be deleted before `b`.
pub fn delete_before(a: &Ranked, b: &Ranked, now: Timestamp) -> bool {
    let (pa, pb) = (&*a.pod, &*b.pod);
    let (na, nb) = (node_name(pa), node_name(pb));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return na.is_empty();
    }
    if phase_ordinal(pa) != phase_ordinal(pb) {
        return phase_ordinal(pa) < phase_ordinal(pb);
    }
    if is_ready(pa) != is_ready(pb) {
        return !is_ready(pa);
    }
    if deletion_cost(pa) != deletion_cost(pb) {
        return deletion_cost(pa) < deletion_cost(pb);
    }
    if a.rank != b.rank {
        return a.rank > b.rank;
    }
    if is_ready(pa) && is_ready(pb) {
        let (ra, rb) = (ready_since(pa), ready_since(pb));
        if ra != rb {
            return newer_first(ra, rb, (uid(pa), uid(pb)), now);
        }
    }
    if max_restarts(pa) != max_restarts(pb) {
        return max_restarts(pa) > max_restarts(pb);
    }
    let (ca, cb) =
        (pa.metadata.creation_timestamp.as_ref().map(|t| t.0), pb.metadata.creation_timestamp.as_ref().map(|t| t.0));
    if ca != cb {
        return newer_first(ca, cb, (uid(pa), uid(pb)), now);
    }
    false
}

/// Sorts with `before` as the strict "less than", stably (a merge sort that, unlike the
/// standard library's sorts, tolerates a relation that is not a perfect total order).
fn merge_sort<T>(items: Vec<T>, before: &impl Fn(&T, &T) -> bool) -> Vec<T> {
    if items.len() <= 1 {
        return items;
    }
    let mut left = items;
    let right = left.split_off(left.len() / 2);
    let (left, right) = (merge_sort(left, before), merge_sort(right, before));
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut l, mut r) = (left.into_iter().peekable(), right.into_iter().peekable());
    while let (Some(a), Some(b)) = (l.peek(), r.peek()) {
        if before(b, a) { out.push(r.next().expect("peeked")) } else { out.push(l.next().expect("peeked")) }
    }
    out.extend(l);
    out.extend(r);
    out
}

/// Upstream's `getPodsToDelete`: the `count` pods of `pods` to delete first, ranking each by the
/// active pods of `related` (all pods of the ReplicaSets sharing this one's owner) on its node.
pub fn pods_to_delete(pods: &[Arc<Pod>], related: &[Arc<Pod>], count: usize, now: Timestamp) -> Vec<Arc<Pod>> {
    if count >= pods.len() {
        return pods.to_vec();
    }
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for p in related.iter().filter(|p| is_active(p)) {
        *on_node.entry(node_name(p)).or_default() += 1;
    }
    let ranked: Vec<Ranked> =
        pods.iter().map(|p| Ranked { pod: p.clone(), rank: on_node.get(node_name(p)).copied().unwrap_or(0) }).collect();
    let sorted = merge_sort(ranked, &|a: &Ranked, b: &Ranked| delete_before(a, b, now));
    sorted.into_iter().take(count).map(|r| r.pod).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn ago(secs: i64) -> Time {
        Time(Timestamp::from_second(now().as_second() - secs).unwrap())
    }

    struct P(Pod);

    impl P {
        fn new(name: &str, created_secs_ago: i64) -> Self {
            P(Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    uid: Some(format!("uid-{name}")),
                    creation_timestamp: Some(ago(created_secs_ago)),
                    ..Default::default()
                },
                spec: Some(PodSpec::default()),
                status: Some(PodStatus { phase: Some("Pending".into()), ..Default::default() }),
            })
        }
        fn node(mut self, n: &str) -> Self {
            self.0.spec.as_mut().unwrap().node_name = Some(n.into());
            self
        }
        fn phase(mut self, p: &str) -> Self {
            self.0.status.as_mut().unwrap().phase = Some(p.into());
            self
        }
        fn ready_for(mut self, secs: i64) -> Self {
            self.0.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(ago(secs)),
                ..Default::default()
            }]);
            self
        }
        fn restarts(mut self, n: i32) -> Self {
            self.0.status.as_mut().unwrap().container_statuses =
                Some(vec![ContainerStatus { name: "c".into(), restart_count: n, ..Default::default() }]);
            self
        }
        fn cost(mut self, c: &str) -> Self {
            self.0.metadata.annotations = Some(BTreeMap::from([(POD_DELETION_COST.to_string(), c.to_string())]));
            self
        }
        fn arc(self) -> Arc<Pod> {
            Arc::new(self.0)
        }
    }

    fn order(pods: Vec<Arc<Pod>>, related: &[Arc<Pod>]) -> Vec<String> {
        // Asking for all but one forces the ranking.
        let n = pods.len() - 1;
        let mut names: Vec<String> =
            pods_to_delete(&pods, related, n, now()).iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        let chosen: Vec<&String> = names.iter().collect();
        let last = pods.iter().map(|p| p.metadata.name.clone().unwrap()).find(|n| !chosen.contains(&n)).unwrap();
        names.push(last);
        names
    }

    #[test]
    fn unscheduled_pods_go_before_scheduled_ones() {
        let pods = vec![P::new("scheduled", 10).node("n1").arc(), P::new("unscheduled", 100).arc()];
        assert_eq!(order(pods, &[]), ["unscheduled", "scheduled"]);
    }

    #[test]
    fn pending_goes_before_unknown_before_running() {
        let pods = vec![
            P::new("running", 10).node("n").phase("Running").arc(),
            P::new("unknown", 10).node("n").phase("Unknown").arc(),
            P::new("pending", 10).node("n").phase("Pending").arc(),
        ];
        assert_eq!(order(pods, &[]), ["pending", "unknown", "running"]);
    }

    #[test]
    fn not_ready_goes_before_ready() {
        let pods = vec![
            P::new("ready", 10).node("n").phase("Running").ready_for(5).arc(),
            P::new("not-ready", 1000).node("n").phase("Running").arc(),
        ];
        assert_eq!(order(pods, &[]), ["not-ready", "ready"]);
    }

    #[test]
    fn lower_deletion_cost_goes_first() {
        let pods =
            vec![P::new("costly", 1000).node("n").cost("100").arc(), P::new("cheap", 1000).node("n").cost("-5").arc()];
        assert_eq!(order(pods, &[]), ["cheap", "costly"]);
    }

    #[test]
    fn pods_doubled_up_on_a_node_go_first() {
        let crowded = P::new("crowded", 10).node("n1").arc();
        let alone = P::new("alone", 5).node("n2").arc();
        let neighbour = P::new("neighbour", 10).node("n1").arc();
        let related = vec![crowded.clone(), alone.clone(), neighbour];
        assert_eq!(order(vec![alone, crowded], &related), ["crowded", "alone"]);
    }

    #[test]
    fn the_pod_ready_for_less_time_goes_first() {
        let pods = vec![
            P::new("old-ready", 10_000).node("n").phase("Running").ready_for(5000).arc(),
            P::new("just-ready", 10_000).node("n").phase("Running").ready_for(3).arc(),
        ];
        assert_eq!(order(pods, &[]), ["just-ready", "old-ready"]);
    }

    #[test]
    fn more_restarts_go_first() {
        let pods =
            vec![P::new("steady", 10).node("n").restarts(0).arc(), P::new("crashy", 1000).node("n").restarts(7).arc()];
        assert_eq!(order(pods, &[]), ["crashy", "steady"]);
    }

    #[test]
    fn newer_pods_go_before_older_ones() {
        let pods = vec![P::new("old", 100_000).arc(), P::new("new", 10).arc(), P::new("middle", 1000).arc()];
        assert_eq!(order(pods, &[]), ["new", "middle", "old"]);
    }

    #[test]
    fn creation_times_in_one_logarithmic_bucket_tie_break_on_uid() {
        // 100 and 101 seconds ago fall in the same power-of-two bucket of nanoseconds.
        let pods = vec![P::new("b", 100).arc(), P::new("a", 101).arc()];
        assert_eq!(order(pods, &[]), ["a", "b"]);
    }

    #[test]
    fn deleting_everything_needs_no_ranking() {
        let pods = vec![P::new("x", 1).arc(), P::new("y", 2).arc()];
        assert_eq!(pods_to_delete(&pods, &[], 5, now()).len(), 2);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let pod = P::new("p", 100).phase("Running").ready_for(10).0;
        assert!(is_available(&pod, 0, now()));
        assert!(is_available(&pod, 5, now()));
        assert!(!is_available(&pod, 30, now()));
        assert!(!is_available(&P::new("q", 100).0, 0, now()));
    }

    #[test]
    fn finished_and_deleting_pods_are_not_active() {
        assert!(is_active(&P::new("p", 1).0));
        assert!(!is_active(&P::new("p", 1).phase("Succeeded").0));
        assert!(!is_active(&P::new("p", 1).phase("Failed").0));
        let mut deleting = P::new("p", 1).0;
        deleting.metadata.deletion_timestamp = Some(ago(0));
        assert!(!is_active(&deleting));
        assert!(is_terminating(&deleting));
    }
}
