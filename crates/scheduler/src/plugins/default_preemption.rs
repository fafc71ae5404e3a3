//! DefaultPreemption, the PostFilter: explains, per node, whether evicting lower-priority pods
//! could make room, in upstream's words ("preemption: 0/3 nodes are available: ...").
//!
//! This first step only diagnoses: it never evicts. A node whose rejection preemption could
//! resolve and that holds lower-priority pods keeps its filter reasons in the message.

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{Code, CycleState, NodeInfo, NodeToStatus, Plugin, PostFilterPlugin, Status};

pub const NAME: &str = "DefaultPreemption";
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

pub struct DefaultPreemption;

impl Plugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        NAME
    }
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

impl PostFilterPlugin for DefaultPreemption {
    fn post_filter(&self, _: &CycleState, pod: &Pod, nodes: &[NodeInfo], statuses: &NodeToStatus) -> Status {
        if pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
            return Status::new(Code::Unschedulable, "preemption: not eligible due to preemptionPolicy=Never.");
        }
        let mut diagnosis = NodeToStatus::default();
        diagnosis.set_absent(Status::new(Code::UnschedulableAndUnresolvable, NOT_HELPFUL));
        let own = priority(pod);
        for node in nodes {
            let status = statuses.get(node.name());
            if status.code != Code::Unschedulable {
                continue;
            }
            let victims = node.pods.iter().any(|p| priority(p) < own);
            let s = if victims { status.clone() } else { Status::new(Code::UnschedulableAndUnresolvable, NO_VICTIMS) };
            diagnosis.set(node.name(), s);
        }
        let msg = diagnosis.fit_error_message(nodes.len());
        Status::new(Code::Unschedulable, format!("preemption: {}", msg.trim_end_matches('.')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{plain_node, pod};
    use serde_json::json;

    #[test]
    fn explains_each_node_in_upstream_words() {
        let nodes = [plain_node("a"), plain_node("b"), plain_node("c")];
        let mut st = NodeToStatus::default();
        st.set("a", Status::new(Code::Unschedulable, "Insufficient cpu"));
        st.set("b", Status::new(Code::UnschedulableAndUnresolvable, "node(s) had untolerated taint {k: v}"));
        st.set("c", Status::new(Code::UnschedulableAndUnresolvable, "node(s) had untolerated taint {k: v}"));
        let s = DefaultPreemption.post_filter(&CycleState::new(), &pod(json!({})), &nodes, &st);
        assert_eq!(
            s.message(),
            "preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling"
        );
    }

    #[test]
    fn preemption_policy_never_is_not_eligible() {
        let s = DefaultPreemption.post_filter(
            &CycleState::new(),
            &pod(json!({"preemptionPolicy": "Never"})),
            &[plain_node("a")],
            &NodeToStatus::default(),
        );
        assert_eq!(s.message(), "preemption: not eligible due to preemptionPolicy=Never.");
    }
}
