//! Indexed Jobs (upstream's `pkg/controller/job/indexed_job_utils.go`): each pod runs one
//! completion index, carried in an annotation and a label; the status lists the completed and
//! failed indexes as compressed intervals (`"1,3-5,7"`).

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::SuccessPolicy;
use k8s_openapi::api::core::v1::Pod;

/// The annotation (and label) holding a pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The failures of earlier pods of the same index (with `backoffLimitPerIndex`).
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// The failures of earlier pods of the same index that a pod failure policy ignored.
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// The environment variable through which containers see their index.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// The completion index of `pod`: the annotation, else the label; `None` if missing or bad.
pub fn index_of(pod: &Pod) -> Option<i32> {
    let from = |m: Option<&std::collections::BTreeMap<String, String>>| {
        m.and_then(|m| m.get(COMPLETION_INDEX)).and_then(|v| v.parse::<i32>().ok()).filter(|i| *i >= 0)
    };
    from(pod.metadata.annotations.as_ref()).or_else(|| from(pod.metadata.labels.as_ref()))
}

/// A pod's annotation holding a count, 0 when missing or bad.
pub fn count_annotation(pod: &Pod, key: &str) -> i32 {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(key)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Parses an interval list (`"1,3-5"`), keeping indexes below `completions`; bad parts are
/// skipped, as upstream does when reading its own status back.
pub fn parse(s: Option<&str>, completions: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse::<i32>(), part.parse::<i32>()),
        };
        let (Ok(first), Ok(last)) = (first, last) else { continue };
        out.extend((first.max(0)..=last.min(completions - 1)).filter(|i| *i >= first));
    }
    out
}

/// Formats indexes as upstream's compressed intervals: `"0-2,4"`; `None` when empty.
pub fn format(set: &BTreeSet<i32>) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(match last - first {
            0 => first.to_string(),
            _ => format!("{first}-{last}"),
        });
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

/// The first `count` indexes below `completions` that are in none of `taken`.
pub fn first_pending(completions: i32, count: usize, taken: &[&BTreeSet<i32>]) -> Vec<i32> {
    (0..completions).filter(|i| !taken.iter().any(|s| s.contains(i))).take(count).collect()
}

/// The index of the first success-policy rule that `succeeded` satisfies (upstream's
/// `matchSuccessPolicy`): all its `succeededIndexes` succeeded, or at least `succeededCount` of
/// them (of all indexes when the rule names none).
pub fn success_rule_met(policy: &SuccessPolicy, succeeded: &BTreeSet<i32>, completions: i32) -> Option<usize> {
    if succeeded.is_empty() {
        return None;
    }
    policy.rules.iter().position(|rule| match (&rule.succeeded_indexes, rule.succeeded_count) {
        (Some(ixs), count) => {
            // A rule whose indexes do not parse never matches.
            let wanted = parse(Some(ixs), completions);
            let done = wanted.intersection(succeeded).count();
            !wanted.is_empty() && (done == wanted.len() || count.is_some_and(|c| done as i64 >= i64::from(c)))
        }
        (None, Some(c)) => succeeded.len() as i64 >= i64::from(c),
        (None, None) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_round_trip() {
        let set = parse(Some("0-2,4,6-7"), 10);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 4, 6, 7]);
        assert_eq!(format(&set).as_deref(), Some("0-2,4,6-7"));
        assert_eq!(format(&BTreeSet::new()), None);
    }

    #[test]
    fn parsing_drops_indexes_beyond_completions_and_bad_parts() {
        let set = parse(Some("1,x,3-9"), 5);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [1, 3, 4]);
        assert!(parse(None, 3).is_empty());
    }

    #[test]
    fn pending_indexes_skip_taken_ones() {
        let done = BTreeSet::from([0, 2]);
        let running = BTreeSet::from([1]);
        assert_eq!(first_pending(6, 2, &[&done, &running]), [3, 4]);
        assert_eq!(first_pending(3, 5, &[&done, &running]), Vec::<i32>::new());
    }

    #[test]
    fn success_rules_by_indexes_and_count() {
        use k8s_openapi::api::batch::v1::SuccessPolicyRule;
        let rule = |ixs: Option<&str>, count: Option<i32>| SuccessPolicyRule {
            succeeded_indexes: ixs.map(Into::into),
            succeeded_count: count,
        };
        let policy =
            SuccessPolicy { rules: vec![rule(Some("0-2"), None), rule(None, Some(4)), rule(Some("5-9"), Some(2))] };
        assert_eq!(success_rule_met(&policy, &BTreeSet::from([0, 1]), 10), None);
        assert_eq!(success_rule_met(&policy, &BTreeSet::from([0, 1, 2]), 10), Some(0));
        assert_eq!(success_rule_met(&policy, &BTreeSet::from([0, 1, 3, 4]), 10), Some(1));
        assert_eq!(success_rule_met(&policy, &BTreeSet::from([6, 9]), 10), Some(2));
        // All of a rule's indexes succeeding is enough even when the count is higher.
        let all = SuccessPolicy { rules: vec![rule(Some("0-1"), Some(5))] };
        assert_eq!(success_rule_met(&all, &BTreeSet::from([0, 1]), 10), Some(0));
        assert_eq!(success_rule_met(&all, &BTreeSet::new(), 10), None);
    }

    #[test]
    fn the_index_comes_from_the_annotation_then_the_label() {
        let mut pod = Pod::default();
        assert_eq!(index_of(&pod), None);
        pod.metadata.labels = Some([(COMPLETION_INDEX.to_string(), "3".to_string())].into());
        assert_eq!(index_of(&pod), Some(3));
        pod.metadata.annotations = Some([(COMPLETION_INDEX.to_string(), "5".to_string())].into());
        assert_eq!(index_of(&pod), Some(5));
    }
}
