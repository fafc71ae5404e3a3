//! Pod failure policies (upstream's `pkg/controller/job/pod_failure_policy.go`): the first rule
//! that matches a failed pod, by its containers' exit codes or its conditions, decides what the
//! failure means for the Job.

use k8s_openapi::api::batch::v1::{PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// What a matching rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail the whole Job at once (reason `PodFailurePolicy`).
    FailJob,
    /// Fail the pod's index (with `backoffLimitPerIndex`).
    FailIndex,
    /// Do not count the failure towards `backoffLimit`; replace the pod.
    Ignore,
    /// Count the failure as usual.
    Count,
}

/// A rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub action: Action,
    /// Upstream's message, naming the container or condition and the rule's index.
    pub message: String,
}

/// The first rule of `policy` matching `pod` (a failed pod); `None` when no rule matches.
pub fn match_pod(policy: &PodFailurePolicy, pod: &Pod) -> Option<Match> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    for (index, rule) in policy.rules.iter().enumerate() {
        let action = match rule.action.as_str() {
            "FailJob" => Action::FailJob,
            "FailIndex" => Action::FailIndex,
            "Ignore" => Action::Ignore,
            "Count" => Action::Count,
            // An action this version does not know: upstream skips the rule.
            _ => continue,
        };
        if let Some(req) = &rule.on_exit_codes {
            let containers = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
            let inits = status.and_then(|s| s.init_container_statuses.as_deref()).unwrap_or_default();
            let found = matching_container(containers, req).or_else(|| matching_container(inits, req));
            if let Some((container, code)) = found {
                let message = format!(
                    "Container {container} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {index}",
                    rule.action
                );
                return Some(Match { action, message });
            }
        }
        for pattern in rule.on_pod_conditions.iter().flatten() {
            let want = pattern.status.as_deref().unwrap_or("True");
            let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
            if conditions.iter().any(|c| c.type_ == pattern.type_ && c.status == want) {
                let message = format!(
                    "Pod {ns}/{name} has condition {} matching {} rule at index {index}",
                    pattern.type_, rule.action
                );
                return Some(Match { action, message });
            }
        }
    }
    None
}

/// The first terminated container with a non-zero exit code that the requirement matches
/// (containers that succeeded are never considered).
fn matching_container(
    statuses: &[ContainerStatus],
    req: &PodFailurePolicyOnExitCodesRequirement,
) -> Option<(String, i32)> {
    statuses.iter().find_map(|s| {
        let code = s.state.as_ref()?.terminated.as_ref()?.exit_code;
        let named = req.container_name.as_ref().is_none_or(|n| *n == s.name);
        (named && code != 0 && operator_matches(code, req)).then(|| (s.name.clone(), code))
    })
}

fn operator_matches(code: i32, req: &PodFailurePolicyOnExitCodesRequirement) -> bool {
    match req.operator.as_str() {
        "In" => req.values.contains(&code),
        "NotIn" => !req.values.contains(&code),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule};
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(codes: &[(&str, i32)], conditions: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some("p".into()), namespace: Some("ns".into()), ..Default::default() },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Failed".into()),
                container_statuses: Some(
                    codes
                        .iter()
                        .map(|(name, code)| ContainerStatus {
                            name: name.to_string(),
                            state: Some(ContainerState {
                                terminated: Some(ContainerStateTerminated { exit_code: *code, ..Default::default() }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, s)| PodCondition {
                            type_: t.to_string(),
                            status: s.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    fn exit_rule(action: &str, container: Option<&str>, op: &str, values: &[i32]) -> PodFailurePolicyRule {
        PodFailurePolicyRule {
            action: action.into(),
            on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                container_name: container.map(Into::into),
                operator: op.into(),
                values: values.to_vec(),
            }),
            on_pod_conditions: None,
        }
    }

    fn condition_rule(action: &str, type_: &str) -> PodFailurePolicyRule {
        PodFailurePolicyRule {
            action: action.into(),
            on_exit_codes: None,
            on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern { type_: type_.into(), status: None }]),
        }
    }

    #[test]
    fn an_exit_code_in_the_list_fails_the_job() {
        let policy = PodFailurePolicy { rules: vec![exit_rule("FailJob", None, "In", &[42])] };
        let m = match_pod(&policy, &pod(&[("main", 42)], &[])).unwrap();
        assert_eq!(m.action, Action::FailJob);
        assert_eq!(m.message, "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 0");
        assert_eq!(match_pod(&policy, &pod(&[("main", 1)], &[])), None);
    }

    #[test]
    fn not_in_matches_other_codes_but_never_success() {
        let policy = PodFailurePolicy { rules: vec![exit_rule("Count", None, "NotIn", &[1])] };
        assert_eq!(match_pod(&policy, &pod(&[("a", 0), ("b", 1)], &[])), None);
        assert_eq!(match_pod(&policy, &pod(&[("a", 0), ("b", 3)], &[])).unwrap().action, Action::Count);
    }

    #[test]
    fn a_container_name_restricts_the_rule() {
        let policy = PodFailurePolicy { rules: vec![exit_rule("FailJob", Some("side"), "In", &[2])] };
        assert_eq!(match_pod(&policy, &pod(&[("main", 2)], &[])), None);
        assert!(match_pod(&policy, &pod(&[("main", 1), ("side", 2)], &[])).is_some());
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let policy = PodFailurePolicy {
            rules: vec![condition_rule("Ignore", "DisruptionTarget"), exit_rule("FailJob", None, "In", &[137])],
        };
        let disrupted = pod(&[("main", 137)], &[("DisruptionTarget", "True")]);
        let m = match_pod(&policy, &disrupted).unwrap();
        assert_eq!(m.action, Action::Ignore);
        assert_eq!(m.message, "Pod ns/p has condition DisruptionTarget matching Ignore rule at index 0");
        assert_eq!(match_pod(&policy, &pod(&[("main", 137)], &[])).unwrap().action, Action::FailJob);
        // A condition with another status does not match the default `True`.
        let not_true = pod(&[("main", 1)], &[("DisruptionTarget", "False")]);
        assert_eq!(match_pod(&policy, &not_true), None);
    }
}
