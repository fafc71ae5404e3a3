//! The arithmetic of a PodDisruptionBudget's status (upstream's `getExpectedPodCount`,
//! `countHealthyPods`, `buildDisruptedPodMap` and `updatePdbStatus`), free of I/O so that it
//! can be tested on its own.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// How long an eviction's entry in `status.disruptedPods` waits for the pod to be deleted.
pub const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);

pub const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";
pub const SUFFICIENT_PODS: &str = "SufficientPods";
pub const INSUFFICIENT_PODS: &str = "InsufficientPods";
pub const SYNC_FAILED: &str = "SyncFailed";

/// An int-or-percent scaled against `total` (upstream's `GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let Some(p) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return Err(format!("invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"));
            };
            let product = p * i64::from(total);
            let value = if round_up { (product + 99).div_euclid(100) } else { product.div_euclid(100) };
            Ok(i32::try_from(value).unwrap_or(i32::MAX))
        }
    }
}

/// Whether the budget needs the pods' controllers' scale: maxUnavailable, or a percentage
/// minAvailable.
pub fn needs_scale(pdb: &PodDisruptionBudget) -> bool {
    let spec = pdb.spec.as_ref();
    spec.and_then(|s| s.max_unavailable.as_ref()).is_some()
        || matches!(spec.and_then(|s| s.min_available.as_ref()), Some(IntOrString::String(_)))
}

/// `(expectedPods, desiredHealthy)` given the matching pods' count and, when
/// [`needs_scale`], their controllers' total scale.
pub fn expected_and_desired(pdb: &PodDisruptionBudget, pods: i32, scale: i32) -> Result<(i32, i32), String> {
    let spec = pdb.spec.as_ref();
    if let Some(max_unavailable) = spec.and_then(|s| s.max_unavailable.as_ref()) {
        let unavailable = scaled_value(max_unavailable, scale, true)?;
        return Ok((scale, (scale - unavailable).max(0)));
    }
    match spec.and_then(|s| s.min_available.as_ref()) {
        Some(IntOrString::Int(i)) => Ok((pods, *i)),
        Some(pct @ IntOrString::String(_)) => Ok((scale, scaled_value(pct, scale, true)?)),
        None => Ok((pods, 0)),
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pods being deleted, or evicted less than [`DELETION_TIMEOUT`] ago, are not healthy.
pub fn count_healthy(pods: &[&Pod], disrupted: &BTreeMap<String, Time>, now: Timestamp) -> i32 {
    let n = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            !disrupted.get(name).is_some_and(|t| t.0.checked_add(DELETION_TIMEOUT).is_ok_and(|end| end > now))
        })
        .filter(|p| is_ready(p))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The evictions still awaiting their pod's deletion, the pods whose eviction timed out, and
/// when the earliest remaining one times out.
pub fn disrupted_pods(
    pdb: &PodDisruptionBudget,
    pods: &[&Pod],
    now: Timestamp,
) -> (BTreeMap<String, Time>, Vec<String>, Option<Timestamp>) {
    let mut kept = BTreeMap::new();
    let mut timed_out = Vec::new();
    let mut recheck: Option<Timestamp> = None;
    let Some(recorded) = pdb.status.as_ref().and_then(|s| s.disrupted_pods.as_ref()) else {
        return (kept, timed_out, recheck);
    };
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(at) = recorded.get(&name) else { continue };
        let Ok(expected) = at.0.checked_add(DELETION_TIMEOUT) else { continue };
        if expected < now {
            timed_out.push(name);
        } else {
            recheck = Some(recheck.map_or(expected, |r| r.min(expected)));
            kept.insert(name, at.clone());
        }
    }
    (kept, timed_out, recheck)
}

/// Sets a condition as apimachinery's `SetStatusCondition`: the transition time changes only
/// with the status.
pub fn set_condition(conditions: &mut Vec<Condition>, mut c: Condition, now: Timestamp) {
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(existing) => {
            if existing.status != c.status {
                existing.status = c.status;
                existing.last_transition_time = Time(now);
            }
            existing.reason = c.reason;
            existing.message = c.message;
            existing.observed_generation = c.observed_generation;
        }
        None => {
            c.last_transition_time = Time(now);
            conditions.push(c);
        }
    }
}

/// The status a budget should have (upstream's `updatePdbStatus`).
pub fn status(
    pdb: &PodDisruptionBudget,
    current_healthy: i32,
    desired_healthy: i32,
    expected: i32,
    disrupted: BTreeMap<String, Time>,
    now: Timestamp,
) -> PodDisruptionBudgetStatus {
    // A budget matching no pods yet stays safe until its first pods are counted.
    let allowed = if expected <= 0 { 0 } else { (current_healthy - desired_healthy).max(0) };
    let generation = pdb.metadata.generation;
    let mut conditions = pdb.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let (status, reason) = if allowed > 0 { ("True", SUFFICIENT_PODS) } else { ("False", INSUFFICIENT_PODS) };
    set_condition(
        &mut conditions,
        Condition {
            type_: DISRUPTION_ALLOWED.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: generation,
            last_transition_time: Time(now),
        },
        now,
    );
    PodDisruptionBudgetStatus {
        current_healthy: Some(current_healthy),
        desired_healthy: Some(desired_healthy),
        expected_pods: Some(expected),
        disruptions_allowed: Some(allowed),
        disrupted_pods: Some(disrupted),
        observed_generation: generation,
        conditions: Some(conditions),
    }
}

/// The status after a failed sync: no disruptions, and why (upstream's `failSafe`).
pub fn fail_safe(pdb: &PodDisruptionBudget, message: String, now: Timestamp) -> PodDisruptionBudgetStatus {
    let mut status = pdb.status.clone().unwrap_or_default();
    status.disruptions_allowed = Some(0);
    let mut conditions = status.conditions.take().unwrap_or_default();
    set_condition(
        &mut conditions,
        Condition {
            type_: DISRUPTION_ALLOWED.into(),
            status: "False".into(),
            reason: SYNC_FAILED.into(),
            message,
            observed_generation: status.observed_generation,
            last_transition_time: Time(now),
        },
        now,
    );
    status.conditions = Some(conditions);
    status
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "b", "generation": 3}, "spec": spec})).unwrap()
    }

    fn pod(name: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .unwrap()
    }

    #[test]
    fn percentages_round_up_and_ints_pass_through() {
        assert_eq!(scaled_value(&IntOrString::String("50%".into()), 5, true), Ok(3));
        assert_eq!(scaled_value(&IntOrString::String("50%".into()), 5, false), Ok(2));
        assert_eq!(scaled_value(&IntOrString::Int(2), 5, true), Ok(2));
        assert!(scaled_value(&IntOrString::String("x".into()), 5, true).is_err());
    }

    #[test]
    fn expected_and_desired_follow_min_available_or_max_unavailable() {
        assert_eq!(expected_and_desired(&pdb(json!({"minAvailable": 2})), 3, 0), Ok((3, 2)));
        assert_eq!(expected_and_desired(&pdb(json!({"minAvailable": "50%"})), 3, 4), Ok((4, 2)));
        assert_eq!(expected_and_desired(&pdb(json!({"maxUnavailable": 1})), 3, 4), Ok((4, 3)));
        assert_eq!(expected_and_desired(&pdb(json!({"maxUnavailable": "30%"})), 3, 4), Ok((4, 2)));
        assert_eq!(expected_and_desired(&pdb(json!({"maxUnavailable": 9})), 3, 4), Ok((4, 0)));
        assert!(needs_scale(&pdb(json!({"maxUnavailable": 1}))));
        assert!(!needs_scale(&pdb(json!({"minAvailable": 1}))));
    }

    #[test]
    fn healthy_pods_are_ready_not_deleting_and_not_just_evicted() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let (a, b, c) = (pod("a", true), pod("b", true), pod("c", false));
        let mut d = pod("d", true);
        d.metadata.deletion_timestamp = Some(Time(now));
        let pods = [&a, &b, &c, &d];
        let mut disrupted = BTreeMap::new();
        disrupted.insert("b".to_string(), Time("2026-01-01T00:09:00Z".parse().unwrap()));
        assert_eq!(count_healthy(&pods, &disrupted, now), 1);
        assert_eq!(count_healthy(&pods, &BTreeMap::new(), now), 2);
    }

    #[test]
    fn evictions_are_forgotten_after_the_deletion_timeout() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let mut b = pdb(json!({"minAvailable": 1}));
        b.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some(BTreeMap::from([
                ("a".to_string(), Time("2026-01-01T00:09:00Z".parse().unwrap())),
                ("old".to_string(), Time("2026-01-01T00:01:00Z".parse().unwrap())),
                ("gone".to_string(), Time("2026-01-01T00:09:00Z".parse().unwrap())),
            ])),
            ..Default::default()
        });
        let (a, old) = (pod("a", true), pod("old", true));
        let (kept, timed_out, recheck) = disrupted_pods(&b, &[&a, &old], now);
        assert_eq!(kept.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(timed_out, vec!["old".to_string()]);
        assert_eq!(recheck, Some("2026-01-01T00:11:00Z".parse().unwrap()));
    }

    #[test]
    fn status_allows_the_surplus_and_says_why() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let b = pdb(json!({"minAvailable": 2}));
        let s = status(&b, 3, 2, 3, BTreeMap::new(), now);
        assert_eq!((s.disruptions_allowed, s.observed_generation), (Some(1), Some(3)));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("DisruptionAllowed", "True", "SufficientPods")
        );
        let s = status(&b, 2, 2, 0, BTreeMap::new(), now);
        assert_eq!(s.disruptions_allowed, Some(0));
        assert_eq!(s.conditions.as_ref().unwrap()[0].reason, "InsufficientPods");
        let failed = fail_safe(&b, "found no controllers for pod \"x\"".into(), now);
        assert_eq!(failed.conditions.as_ref().unwrap()[0].reason, "SyncFailed");
    }
}
