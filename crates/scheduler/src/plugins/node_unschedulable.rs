//! NodeUnschedulable: keeps pods off cordoned nodes (`spec.unschedulable`) unless they
//! tolerate the `node.kubernetes.io/unschedulable:NoSchedule` taint.

use k8s_openapi::api::core::v1::{Pod, Taint};

use super::taint_toleration::tolerates;
use crate::framework::{Code, CycleState, FilterPlugin, NodeInfo, Plugin, Status};

pub const NAME: &str = "NodeUnschedulable";
/// Upstream's reason.
pub const REASON: &str = "node(s) were unschedulable";
pub const TAINT_KEY: &str = "node.kubernetes.io/unschedulable";

pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn filter(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        if !node.unschedulable() {
            return Status::success();
        }
        let taint = Taint { key: TAINT_KEY.into(), effect: "NoSchedule".into(), ..Default::default() };
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
        if tolerations.iter().any(|t| tolerates(t, &taint)) {
            return Status::success();
        }
        Status::new(Code::UnschedulableAndUnresolvable, REASON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn cordoned_node_rejects_pods_that_do_not_tolerate_it() {
        let n = node("n", json!({}), json!({"unschedulable": true}), json!({}));
        let s = NodeUnschedulable.filter(&CycleState::new(), &pod(json!({})), &n);
        assert_eq!(s, Status::new(Code::UnschedulableAndUnresolvable, REASON));
        let tolerant = pod(json!({"tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]}));
        assert!(NodeUnschedulable.filter(&CycleState::new(), &tolerant, &n).is_success());
        let open = node("n", json!({}), json!({}), json!({}));
        assert!(NodeUnschedulable.filter(&CycleState::new(), &pod(json!({})), &open).is_success());
    }
}
