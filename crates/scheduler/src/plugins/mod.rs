//! The in-tree plugins of the default profile, one module per upstream plugin
//! (`pkg/scheduler/framework/plugins/<name>`), and the registry that assembles them with
//! upstream's default score weights.

pub mod default_binder;
pub mod default_preemption;
pub mod node_affinity;
pub mod node_name;
pub mod node_resources;
pub mod node_unschedulable;
pub mod taint_toleration;

use std::sync::Arc;

use kube::Client;

use crate::framework::Framework;

/// Upstream's default score weights (`apis/config/v1/default_plugins.go`).
pub mod weights {
    pub const TAINT_TOLERATION: i64 = 3;
    pub const NODE_AFFINITY: i64 = 2;
    pub const NODE_RESOURCES_FIT: i64 = 1;
    pub const NODE_RESOURCES_BALANCED_ALLOCATION: i64 = 1;
}

/// The default profile (`default-scheduler`) without its binder: the filters and scorers,
/// in upstream's order. Tests use it as is; [`default_framework`] adds the binder.
pub fn default_plugins() -> Framework {
    let unschedulable = Arc::new(node_unschedulable::NodeUnschedulable);
    let node_name = Arc::new(node_name::NodeName);
    let taints = Arc::new(taint_toleration::TaintToleration);
    let affinity = Arc::new(node_affinity::NodeAffinity);
    let fit = Arc::new(node_resources::Fit::default());
    let balanced = Arc::new(node_resources::BalancedAllocation::default());
    Framework {
        pre_filter: vec![fit.clone(), affinity.clone()],
        filter: vec![unschedulable, node_name, taints.clone(), affinity.clone(), fit.clone()],
        post_filter: vec![Arc::new(default_preemption::DefaultPreemption)],
        pre_score: vec![taints.clone(), affinity.clone(), fit.clone(), balanced.clone()],
        score: vec![
            (taints, weights::TAINT_TOLERATION),
            (affinity, weights::NODE_AFFINITY),
            (fit, weights::NODE_RESOURCES_FIT),
            (balanced, weights::NODE_RESOURCES_BALANCED_ALLOCATION),
        ],
        reserve: Vec::new(),
        bind: Vec::new(),
    }
}

/// The default profile, binding through the API with `client`.
pub fn default_framework(client: Client) -> Framework {
    let mut fw = default_plugins();
    fw.bind.push(Arc::new(default_binder::DefaultBinder::new(client)));
    fw
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders shared by the plugins' tests.
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{Value, json};

    use crate::framework::NodeInfo;

    pub fn pod(spec: Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "i"}]);
        }
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "uid": "u1"}, "spec": spec}))
            .unwrap()
    }

    /// A pod whose one container requests `requests`.
    pub fn pod_requesting(requests: Value) -> Pod {
        pod(json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": requests}}]}))
    }

    pub fn node(name: &str, labels: Value, spec: Value, allocatable: Value) -> NodeInfo {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
            "status": {"allocatable": allocatable, "capacity": allocatable},
        }))
        .unwrap();
        NodeInfo::new(Arc::new(n))
    }

    pub fn plain_node(name: &str) -> NodeInfo {
        node(name, json!({}), json!({}), json!({"cpu": "4", "memory": "8Gi", "pods": "110"}))
    }
}
