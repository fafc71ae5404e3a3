//! Scenarios after upstream's `horizontal_test.go` normalisation and behavior tests.

use super::*;

fn t0() -> Timestamp {
    "2026-01-01T12:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

fn rules(window: Option<i32>, select: Option<&str>, policies: &[(&str, i32, i32)]) -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: window,
        select_policy: select.map(Into::into),
        policies: (!policies.is_empty()).then(|| policies.iter().map(|&(t, v, p)| policy(t, v, p)).collect()),
        tolerance: None,
    }
}

fn args(up: HPAScalingRules, down: HPAScalingRules, current: i32, desired: i32) -> NormalizationArg {
    NormalizationArg {
        scale_up: up,
        scale_down: down,
        min_replicas: 1,
        max_replicas: 100,
        current_replicas: current,
        desired_replicas: desired,
    }
}

#[test]
fn default_rules_are_upstreams() {
    let up = scale_up_rules(None);
    assert_eq!(up.stabilization_window_seconds, Some(0));
    assert_eq!(up.select_policy.as_deref(), Some("Max"));
    assert_eq!(up.policies, Some(vec![policy("Pods", 4, 15), policy("Percent", 100, 15)]));
    let down = scale_down_rules(None, SignedDuration::from_mins(5));
    assert_eq!(down.stabilization_window_seconds, Some(300));
    assert_eq!(down.policies, Some(vec![policy("Percent", 100, 15)]));
    // What is set is kept; only what is missing is filled in.
    let down = scale_down_rules(Some(&rules(Some(0), Some("Min"), &[])), SignedDuration::from_mins(5));
    assert_eq!(down.stabilization_window_seconds, Some(0));
    assert_eq!(down.select_policy.as_deref(), Some("Min"));
    assert_eq!(down.policies, Some(vec![policy("Percent", 100, 15)]));
}

#[test]
fn without_behavior_bounds_and_the_doubling_limit_apply() {
    assert_eq!(convert_desired_replicas_with_rules(3, 5, 1, 10), (5, "DesiredWithinRange", WITHIN_RANGE.2));
    assert_eq!(convert_desired_replicas_with_rules(3, 9, 1, 10).0, 6);
    assert_eq!(convert_desired_replicas_with_rules(3, 9, 1, 10).1, "ScaleUpLimit");
    // Small counts may always reach four.
    assert_eq!(convert_desired_replicas_with_rules(1, 9, 1, 10).0, 4);
    assert_eq!(convert_desired_replicas_with_rules(8, 20, 1, 10), (10, TOO_MANY.0, TOO_MANY.1));
    assert_eq!(convert_desired_replicas_with_rules(3, 1, 2, 10), (2, TOO_FEW.0, TOO_FEW.1));
}

#[test]
fn without_behavior_scale_down_waits_out_the_window() {
    let mut h = History::default();
    let window = SignedDuration::from_mins(5);
    h.record_initial(5, at(0));
    assert_eq!(h.stabilize(2, window, at(15)), 5, "the initial size is remembered");
    assert_eq!(h.stabilize(3, window, at(30)), 5);
    // Once the first recommendations leave the window, the highest remaining one wins.
    assert_eq!(h.stabilize(2, window, at(301)), 3);
    assert_eq!(h.stabilize(2, window, at(331)), 2);
    // Scale-ups are never held back.
    assert_eq!(h.stabilize(9, window, at(340)), 9);
}

#[test]
fn behaviors_stabilize_within_both_windows() {
    let up = rules(Some(60), None, &[]);
    let down = rules(Some(120), None, &[]);
    let (up, down) = (scale_up_rules(Some(&up)), scale_down_rules(Some(&down), SignedDuration::ZERO));
    let mut h = History::default();
    h.record_initial(4, at(0));
    // A rise is held to the lowest recommendation of the last minute.
    let (r, reason, _) = h.stabilize_with_behaviors(&args(up.clone(), down.clone(), 4, 8), at(10));
    assert_eq!((r, reason), (4, "ScaleUpStabilized"));
    let (r, _, _) = h.stabilize_with_behaviors(&args(up.clone(), down.clone(), 4, 8), at(70));
    assert_eq!(r, 8, "after a minute of higher recommendations");
    // A fall is held to the highest of the last two minutes.
    let (r, reason, _) = h.stabilize_with_behaviors(&args(up.clone(), down.clone(), 8, 2), at(80));
    assert_eq!((r, reason), (8, "ScaleDownStabilized"));
    let (r, _, _) = h.stabilize_with_behaviors(&args(up, down, 8, 2), at(200));
    assert_eq!(r, 2);
}

#[test]
fn zero_windows_follow_the_recommendation_at_once() {
    let (up, down) = (scale_up_rules(None), scale_down_rules(Some(&rules(Some(0), None, &[])), SignedDuration::ZERO));
    let mut h = History::default();
    h.record_initial(5, at(0));
    assert_eq!(h.stabilize_with_behaviors(&args(up.clone(), down.clone(), 5, 1), at(1)).0, 1);
    assert_eq!(h.stabilize_with_behaviors(&args(up, down, 1, 7), at(2)).0, 7);
}

#[test]
fn scale_up_policies_limit_the_rate() {
    let h = History::default();
    let up = scale_up_rules(None);
    let down = scale_down_rules(None, SignedDuration::ZERO);
    // Max of +4 pods and +100%: from 2, at most 6.
    let (r, reason, _) = h.convert_with_behavior_rate(&args(up.clone(), down.clone(), 2, 20), at(0));
    assert_eq!((r, reason), (6, "ScaleUpLimit"));
    // From 10, +100% wins: 20.
    assert_eq!(h.convert_with_behavior_rate(&args(up.clone(), down.clone(), 10, 50), at(0)).0, 20);
    let mut a = args(up, down, 10, 50);
    a.max_replicas = 15;
    assert_eq!(h.convert_with_behavior_rate(&a, at(0)), (15, TOO_MANY.0, TOO_MANY.1));
}

#[test]
fn select_policy_min_and_disabled() {
    let h = History::default();
    let down = scale_down_rules(None, SignedDuration::ZERO);
    let up = scale_up_rules(Some(&rules(None, Some("Min"), &[("Pods", 4, 60), ("Percent", 100, 60)])));
    assert_eq!(h.convert_with_behavior_rate(&args(up, down.clone(), 10, 50), at(0)).0, 14);
    let up = scale_up_rules(Some(&rules(None, Some("Disabled"), &[])));
    assert_eq!(h.convert_with_behavior_rate(&args(up, down, 10, 50), at(0)).0, 10);
    let up = scale_up_rules(None);
    let down = scale_down_rules(Some(&rules(None, Some("Disabled"), &[])), SignedDuration::ZERO);
    let (r, reason, _) = h.convert_with_behavior_rate(&args(up, down, 10, 1), at(0));
    assert_eq!((r, reason), (10, "ScaleDownLimit"));
}

#[test]
fn scale_down_percent_policy_rounds_down_the_kept_replicas() {
    let h = History::default();
    let up = scale_up_rules(None);
    let down = scale_down_rules(Some(&rules(None, None, &[("Percent", 50, 60)])), SignedDuration::ZERO);
    // 50% of 5 may go: int(5 * 0.5) = 2 kept.
    assert_eq!(
        h.convert_with_behavior_rate(&args(up.clone(), down.clone(), 5, 1), at(0)),
        (2, DOWN_LIMIT.0, DOWN_LIMIT.1)
    );
    let mut a = args(up, down, 5, 1);
    a.min_replicas = 3;
    assert_eq!(h.convert_with_behavior_rate(&a, at(0)), (3, TOO_FEW.0, TOO_FEW.1));
}

#[test]
fn past_scale_events_count_against_the_period() {
    let behavior = HorizontalPodAutoscalerBehavior {
        scale_up: Some(rules(None, None, &[("Pods", 2, 60)])),
        scale_down: Some(rules(None, None, &[("Pods", 1, 60)])),
    };
    let up = scale_up_rules(behavior.scale_up.as_ref());
    let down = scale_down_rules(behavior.scale_down.as_ref(), SignedDuration::ZERO);
    let mut h = History::default();
    h.store_scale_event(Some(&behavior), SignedDuration::ZERO, 2, 4, at(0));
    // Two pods were added 30 s ago: the period started at 2, so 4 is the limit now.
    let (r, reason, _) = h.convert_with_behavior_rate(&args(up.clone(), down.clone(), 4, 10), at(30));
    assert_eq!((r, reason), (4, "ScaleUpLimit"));
    // Once the period has passed, two more may come.
    assert_eq!(h.convert_with_behavior_rate(&args(up.clone(), down.clone(), 4, 10), at(61)).0, 6);
    h.store_scale_event(Some(&behavior), SignedDuration::ZERO, 4, 3, at(70));
    assert_eq!(h.convert_with_behavior_rate(&args(up.clone(), down.clone(), 3, 1), at(80)).0, 3);
    assert_eq!(h.convert_with_behavior_rate(&args(up, down, 3, 1), at(131)).0, 2);
}

#[test]
fn outdated_scale_events_are_reused() {
    let behavior =
        HorizontalPodAutoscalerBehavior { scale_up: Some(rules(None, None, &[("Pods", 2, 60)])), scale_down: None };
    let mut h = History::default();
    h.store_scale_event(Some(&behavior), SignedDuration::ZERO, 1, 3, at(0));
    h.store_scale_event(Some(&behavior), SignedDuration::ZERO, 3, 5, at(100));
    h.store_scale_event(Some(&behavior), SignedDuration::ZERO, 5, 7, at(110));
    assert_eq!(h.scale_up_events.len(), 2);
    // Without behavior nothing is kept.
    h.store_scale_event(None, SignedDuration::ZERO, 7, 9, at(120));
    assert_eq!(h.scale_up_events.len(), 2);
}
