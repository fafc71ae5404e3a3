//! From a metric's recommendation to the replica count actually set (the normalisation half of
//! upstream's `horizontal.go`): stabilisation windows over recent recommendations, the
//! scaling policies of `spec.behavior` over recent scale events, and the min/max bounds.
//!
//! The controller keeps one [`History`] per HPA in memory, as upstream does, so a restart of
//! the controller manager forgets it. Every function takes the clock as an argument.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::{HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior};

use super::replica_calculator::saturating_i32;

/// Without `behavior`, one step may at most double the replicas, or reach 4 (upstream's
/// `scaleUpLimitFactor` and `scaleUpLimitMinimum`).
const SCALE_UP_LIMIT_FACTOR: f64 = 2.0;
const SCALE_UP_LIMIT_MINIMUM: f64 = 4.0;

/// The normalisation's verdict: replicas, and the ScalingLimited reason and message.
pub type Limited = (i32, &'static str, &'static str);

const WITHIN_RANGE: Limited = (0, "DesiredWithinRange", "the desired count is within the acceptable range");
const TOO_MANY: (&str, &str) = ("TooManyReplicas", "the desired replica count is more than the maximum replica count");
const TOO_FEW: (&str, &str) = ("TooFewReplicas", "the desired replica count is less than the minimum replica count");
const UP_LIMIT: (&str, &str) =
    ("ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate");
const DOWN_LIMIT: (&str, &str) =
    ("ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate");

#[derive(Debug, Clone, Copy)]
struct Recommendation {
    replicas: i32,
    timestamp: Timestamp,
}

#[derive(Debug, Clone, Copy)]
struct ScaleEvent {
    /// The size of the change, never negative.
    change: i32,
    timestamp: Timestamp,
    /// Older than every policy's period: its slot may be reused.
    outdated: bool,
}

/// What the controller remembers about one HPA between syncs.
#[derive(Debug, Default, Clone)]
pub struct History {
    recommendations: Option<Vec<Recommendation>>,
    scale_up_events: Vec<ScaleEvent>,
    scale_down_events: Vec<ScaleEvent>,
}

/// What the behaviour-aware normalisation works with; the rules have their defaults filled in.
#[derive(Debug, Clone)]
pub struct NormalizationArg {
    pub scale_up: HPAScalingRules,
    pub scale_down: HPAScalingRules,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub current_replicas: i32,
    pub desired_replicas: i32,
}

fn policy(type_: &str, value: i32, period_seconds: i32) -> HPAScalingPolicy {
    HPAScalingPolicy { type_: type_.into(), value, period_seconds }
}

/// `spec.behavior.scaleUp` with upstream's defaults for what is unset (`GenerateHPAScaleUpRules`):
/// no stabilisation, the larger of +4 pods or +100% per 15 s.
pub fn scale_up_rules(rules: Option<&HPAScalingRules>) -> HPAScalingRules {
    let mut r = rules.cloned().unwrap_or_default();
    r.stabilization_window_seconds.get_or_insert(0);
    r.select_policy.get_or_insert_with(|| "Max".into());
    if r.policies.as_ref().is_none_or(Vec::is_empty) {
        r.policies = Some(vec![policy("Pods", 4, 15), policy("Percent", 100, 15)]);
    }
    r
}

/// `spec.behavior.scaleDown` with upstream's defaults (`GenerateHPAScaleDownRules`, then the
/// controller's `--horizontal-pod-autoscaler-downscale-stabilization` for the window): -100%
/// per 15 s.
pub fn scale_down_rules(rules: Option<&HPAScalingRules>, default_window: SignedDuration) -> HPAScalingRules {
    let mut r = rules.cloned().unwrap_or_default();
    r.stabilization_window_seconds.get_or_insert(i32::try_from(default_window.as_secs()).unwrap_or(i32::MAX));
    r.select_policy.get_or_insert_with(|| "Max".into());
    if r.policies.as_ref().is_none_or(Vec::is_empty) {
        r.policies = Some(vec![policy("Percent", 100, 15)]);
    }
    r
}

fn cutoff(now: Timestamp, seconds: i32) -> Timestamp {
    now.checked_sub(SignedDuration::from_secs(i64::from(seconds))).unwrap_or(Timestamp::MIN)
}

/// The replicas added (or removed) by `events` within the last `period_seconds`.
fn change_in_period(period_seconds: i32, events: &[ScaleEvent], now: Timestamp) -> i32 {
    let cut = cutoff(now, period_seconds);
    events.iter().filter(|e| e.timestamp > cut).map(|e| e.change).fold(0i32, i32::saturating_add)
}

fn longest_period(rules: &HPAScalingRules) -> i32 {
    rules.policies.iter().flatten().map(|p| p.period_seconds).max().unwrap_or(0).max(0)
}

/// The limit the policies of one direction put on the replicas now: for scale-up the most
/// (`calculateScaleUpLimitWithScalingRules`), for scale-down the fewest
/// (`calculateScaleDownLimitWithBehaviors`). `Max` picks the policy allowing the largest
/// change, `Min` the smallest; `Disabled` allows none.
fn policy_limit(
    scaling_up: bool,
    current: i32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    rules: &HPAScalingRules,
    now: Timestamp,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    // Going up, the largest change is the highest limit; going down, the lowest.
    let highest = (select == "Min") != scaling_up;
    let mut result = if highest { i32::MIN } else { i32::MAX };
    for p in rules.policies.iter().flatten() {
        let start =
            current - change_in_period(p.period_seconds, up, now) + change_in_period(p.period_seconds, down, now);
        let proposed = match (p.type_.as_str(), scaling_up) {
            ("Pods", true) => start.saturating_add(p.value),
            ("Pods", false) => start.saturating_sub(p.value),
            // Rounded up, or a small percentage of a small count would never add a pod.
            ("Percent", true) => saturating_i32((f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil()),
            ("Percent", false) => saturating_i32(f64::from(start) * (1.0 - f64::from(p.value) / 100.0)),
            _ => continue,
        };
        result = if highest { result.max(proposed) } else { result.min(proposed) };
    }
    result
}

/// Without `behavior`: at least `min`, at most `max` and the default scale-up limit
/// (`convertDesiredReplicasWithRules`).
pub fn convert_desired_replicas_with_rules(current: i32, desired: i32, min: i32, max: i32) -> Limited {
    let up_limit = saturating_i32((SCALE_UP_LIMIT_FACTOR * f64::from(current)).max(SCALE_UP_LIMIT_MINIMUM));
    let (maximum, (reason, message)) = if max > up_limit { (up_limit, UP_LIMIT) } else { (max, TOO_MANY) };
    if desired < min {
        return (min, TOO_FEW.0, TOO_FEW.1);
    }
    if desired > maximum {
        return (maximum, reason, message);
    }
    (desired, WITHIN_RANGE.1, WITHIN_RANGE.2)
}

impl History {
    /// Remembers the target's size as the first recommendation, so a fresh controller does not
    /// scale down at once (`recordInitialRecommendation`).
    pub fn record_initial(&mut self, current: i32, now: Timestamp) {
        self.recommendations.get_or_insert_with(|| vec![Recommendation { replicas: current, timestamp: now }]);
    }

    fn remember(&mut self, old_index: Option<usize>, replicas: i32, now: Timestamp) {
        let recs = self.recommendations.get_or_insert_with(Vec::new);
        let rec = Recommendation { replicas, timestamp: now };
        match old_index {
            Some(i) => recs[i] = rec,
            None => recs.push(rec),
        }
    }

    /// Without `behavior`: the highest recommendation within the downscale window, this one
    /// included (`stabilizeRecommendation`).
    pub fn stabilize(&mut self, desired: i32, window: SignedDuration, now: Timestamp) -> i32 {
        let cut = now.checked_sub(window).unwrap_or(Timestamp::MIN);
        let mut highest = desired;
        let mut old = None;
        for (i, r) in self.recommendations.iter().flatten().enumerate() {
            if r.timestamp < cut {
                old = Some(i);
            } else if r.replicas > highest {
                highest = r.replicas;
            }
        }
        self.remember(old, desired, now);
        highest
    }

    /// With `behavior`: the current count moved towards the recommendation, but no lower than
    /// the lowest recommendation in the scale-up window and no higher than the highest in the
    /// scale-down window (`stabilizeRecommendationWithBehaviors`). Returns the AbleToScale
    /// reason and message for when it differs from the recommendation.
    pub fn stabilize_with_behaviors(&mut self, args: &NormalizationArg, now: Timestamp) -> Limited {
        let up_cut = cutoff(now, args.scale_up.stabilization_window_seconds.unwrap_or(0));
        let down_cut = cutoff(now, args.scale_down.stabilization_window_seconds.unwrap_or(0));
        let (mut up, mut down) = (args.desired_replicas, args.desired_replicas);
        let mut old = None;
        for (i, r) in self.recommendations.iter().flatten().enumerate() {
            if r.timestamp > up_cut {
                up = up.min(r.replicas);
            }
            if r.timestamp > down_cut {
                down = down.max(r.replicas);
            }
            if r.timestamp < up_cut && r.timestamp < down_cut {
                old = Some(i);
            }
        }
        let recommendation = args.current_replicas.max(up).min(down);
        self.remember(old, args.desired_replicas, now);
        if args.desired_replicas >= args.current_replicas {
            (
                recommendation,
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            (
                recommendation,
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        }
    }

    /// With `behavior`: the recommendation bounded by min/max and by what the policies allow
    /// given the recent scale events (`convertDesiredReplicasWithBehaviorRate`).
    pub fn convert_with_behavior_rate(&self, args: &NormalizationArg, now: Timestamp) -> Limited {
        let current = args.current_replicas;
        if args.desired_replicas > current {
            let limit =
                policy_limit(true, current, &self.scale_up_events, &self.scale_down_events, &args.scale_up, now)
                    .max(current);
            let (maximum, (reason, message)) =
                if args.max_replicas > limit { (limit, UP_LIMIT) } else { (args.max_replicas, TOO_MANY) };
            if args.desired_replicas > maximum {
                return (maximum, reason, message);
            }
        } else if args.desired_replicas < current {
            let limit =
                policy_limit(false, current, &self.scale_up_events, &self.scale_down_events, &args.scale_down, now)
                    .min(current);
            let (minimum, (reason, message)) =
                if args.min_replicas < limit { (limit, DOWN_LIMIT) } else { (args.min_replicas, TOO_FEW) };
            if args.desired_replicas < minimum {
                return (minimum, reason, message);
            }
        }
        (args.desired_replicas, WITHIN_RANGE.1, WITHIN_RANGE.2)
    }

    /// Remembers a rescale for the policies' periods, reusing an outdated slot
    /// (`storeScaleEvent`); only HPAs with `behavior` keep events.
    pub fn store_scale_event(
        &mut self,
        behavior: Option<&HorizontalPodAutoscalerBehavior>,
        down_window: SignedDuration,
        previous: i32,
        new: i32,
        now: Timestamp,
    ) {
        let Some(behavior) = behavior else { return };
        let (events, rules, change) = if new > previous {
            (&mut self.scale_up_events, scale_up_rules(behavior.scale_up.as_ref()), new - previous)
        } else {
            (&mut self.scale_down_events, scale_down_rules(behavior.scale_down.as_ref(), down_window), previous - new)
        };
        let cut = cutoff(now, longest_period(&rules));
        for e in events.iter_mut() {
            if e.timestamp < cut {
                e.outdated = true;
            }
        }
        let event = ScaleEvent { change, timestamp: now, outdated: false };
        match events.iter().rposition(|e| e.outdated) {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

#[cfg(test)]
#[path = "stabilization_tests.rs"]
mod tests;
