//! DefaultPreemption, the PostFilter: when a pod fits nowhere, finds a node where evicting
//! pods of lower priority makes room, as upstream's preemption evaluator does. Per node it
//! removes every lower-priority pod, checks the pod would then fit (a dry run of the
//! profile's PreFilter and Filter plugins), and reprieves as many victims as it can, most
//! important first, those whose eviction would break a PodDisruptionBudget before the others.
//! Among the candidates it picks upstream's way: fewest budget violations, then the lowest
//! highest-victim priority, the lowest sum of priorities, the fewest victims, the latest start.
//! When no node qualifies it explains why per node ("preemption: 0/3 nodes are available: ...").
//! The scheduler then writes `status.nominatedNodeName` and evicts the victims.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use tug_api::selector::LabelSelector;

use crate::framework::{
    Code, CycleState, Framework, Listers, NodeInfo, NodeToStatus, Nomination, Plugin, PostFilterPlugin,
    PostFilterResult, Status, Victim,
};

pub const NAME: &str = "DefaultPreemption";
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// Upstream evaluates at least this many candidate nodes, or 10% of the nodes if more.
const MIN_CANDIDATES: usize = 100;

pub struct DefaultPreemption {
    listers: Arc<dyn Listers>,
}

impl DefaultPreemption {
    pub fn new(listers: Arc<dyn Listers>) -> Self {
        Self { listers }
    }
}

impl Plugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        NAME
    }
}

pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// When the pod started; one not started yet counts as starting now (upstream).
fn start_time(pod: &Pod) -> jiff::Timestamp {
    pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map_or_else(jiff::Timestamp::now, |t| t.0)
}

/// Upstream's `MoreImportantPod`: higher priority, then the one that started earlier.
fn more_important_first(a: &Arc<Pod>, b: &Arc<Pod>) -> Ordering {
    priority(b).cmp(&priority(a)).then_with(|| start_time(a).cmp(&start_time(b)))
}

/// Upstream's `podTerminatingByPreemption`: being deleted, with the DisruptionTarget
/// condition the scheduler sets on its victims.
fn terminating_by_preemption(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        && pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "DisruptionTarget"
                    && c.status == "True"
                    && c.reason.as_deref() == Some("PreemptionByScheduler")
            })
        })
}

/// One node where preemption works: the victims (most important first) and how many of them
/// break a disruption budget.
#[derive(Debug)]
struct Candidate {
    index: usize,
    victims: Vec<Arc<Pod>>,
    pdb_violations: usize,
}

/// Upstream's `filterPodsWithPDBViolation`: splits pods into those whose eviction would take a
/// budget below zero and the others, spending each budget's allowance in order.
fn split_by_pdb_violation(pods: &[Arc<Pod>], pdbs: &[Arc<PodDisruptionBudget>]) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let mut allowed: Vec<i32> =
        pdbs.iter().map(|p| p.status.as_ref().and_then(|s| s.disruptions_allowed).unwrap_or(0)).collect();
    let selectors: Vec<Option<LabelSelector>> = pdbs
        .iter()
        .map(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| LabelSelector::from_label_selector(s).ok())
                .filter(|s| !s.is_empty())
        })
        .collect();
    let (mut violating, mut ok) = (Vec::new(), Vec::new());
    for pod in pods {
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let mut violated = false;
        if !labels.is_empty() {
            for (i, pdb) in pdbs.iter().enumerate() {
                if pdb.metadata.namespace != pod.metadata.namespace {
                    continue;
                }
                let Some(sel) = &selectors[i] else { continue };
                if !sel.matches_map(labels) {
                    continue;
                }
                // Already counted by the disruption controller: not a new violation.
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                if pdb.status.as_ref().and_then(|s| s.disrupted_pods.as_ref()).is_some_and(|d| d.contains_key(name)) {
                    continue;
                }
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    violated = true;
                }
            }
        }
        if violated { violating.push(pod.clone()) } else { ok.push(pod.clone()) }
    }
    (violating, ok)
}

impl DefaultPreemption {
    /// Upstream's `SelectVictimsOnNode`, on a copy of the snapshot.
    fn select_victims(&self, fw: &Framework, pod: &Pod, nodes: &[NodeInfo], index: usize) -> Result<Candidate, Status> {
        let own = priority(pod);
        let mut potential: Vec<Arc<Pod>> = nodes[index].pods.iter().filter(|p| priority(p) < own).cloned().collect();
        if potential.is_empty() {
            return Err(Status::new(Code::UnschedulableAndUnresolvable, NO_VICTIMS));
        }
        let mut trial = nodes.to_vec();
        for p in &potential {
            trial[index].remove_pod(p.metadata.uid.as_deref().unwrap_or_default());
        }
        let fits = fw.fits(pod, &trial, index);
        if !fits.is_success() {
            return Err(fits);
        }
        potential.sort_by(more_important_first);
        let mut namespaces: Vec<&str> = potential.iter().filter_map(|p| p.metadata.namespace.as_deref()).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let pdbs: Vec<Arc<PodDisruptionBudget>> =
            namespaces.into_iter().flat_map(|ns| self.listers.pod_disruption_budgets(ns)).collect();
        let (violating, non_violating) = split_by_pdb_violation(&potential, &pdbs);
        let mut victims = Vec::new();
        let mut pdb_violations = 0;
        // Try to keep each pod, budget-protected ones first; those that must go are victims.
        for (group, counts) in [(violating, true), (non_violating, false)] {
            for p in group {
                trial[index].add_pod(p.clone());
                if !fw.fits(pod, &trial, index).is_success() {
                    trial[index].remove_pod(p.metadata.uid.as_deref().unwrap_or_default());
                    if counts {
                        pdb_violations += 1;
                    }
                    victims.push(p);
                }
            }
        }
        victims.sort_by(more_important_first);
        Ok(Candidate { index, victims, pdb_violations })
    }
}

/// Upstream's `pickOneNodeForPreemption` order.
fn pick(candidates: &[Candidate]) -> &Candidate {
    let key = |c: &Candidate| {
        let highest = c.victims.first().map_or(i32::MIN, |p| priority(p));
        // Shifted so that negative priorities still add up to more victims being worse.
        let sum: i64 = c.victims.iter().map(|p| i64::from(priority(p)) + i64::from(i32::MAX) + 1).sum();
        let earliest = c.victims.iter().map(|p| start_time(p)).min().unwrap_or_else(jiff::Timestamp::now);
        (c.pdb_violations, highest, sum, c.victims.len(), std::cmp::Reverse(earliest))
    };
    candidates.iter().min_by_key(|c| key(c)).expect("at least one candidate")
}

fn victim(p: &Pod) -> Victim {
    Victim {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
    }
}

impl PostFilterPlugin for DefaultPreemption {
    fn post_filter(
        &self,
        _: &CycleState,
        pod: &Pod,
        nodes: &[NodeInfo],
        statuses: &NodeToStatus,
        fw: &Framework,
    ) -> PostFilterResult {
        if pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
            return Status::new(Code::Unschedulable, "preemption: not eligible due to preemptionPolicy=Never").into();
        }
        // A pod that already preempted waits for its victims to go instead of preempting again.
        let own = priority(pod);
        if let Some(nominated) = pod.status.as_ref().and_then(|s| s.nominated_node_name.as_deref())
            && let Some(n) = nodes.iter().find(|n| n.name() == nominated)
            && n.pods.iter().any(|p| priority(p) < own && terminating_by_preemption(p))
        {
            return Status::new(
                Code::Unschedulable,
                "preemption: not eligible due to a terminating pod on the nominated node",
            )
            .into();
        }
        let mut diagnosis = NodeToStatus::default();
        diagnosis.set_absent(Status::new(Code::UnschedulableAndUnresolvable, NOT_HELPFUL));
        let wanted = (nodes.len() / 10).max(MIN_CANDIDATES);
        let mut candidates = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if statuses.get(node.name()).code != Code::Unschedulable {
                continue;
            }
            match self.select_victims(fw, pod, nodes, i) {
                Ok(c) => candidates.push(c),
                Err(s) => diagnosis.set(node.name(), s),
            }
            if candidates.len() >= wanted {
                break;
            }
        }
        if candidates.is_empty() {
            let msg = diagnosis.fit_error_message(nodes.len());
            return Status::new(Code::Unschedulable, format!("preemption: {}", msg.trim_end_matches('.'))).into();
        }
        let best = pick(&candidates);
        let nomination = Nomination {
            node: nodes[best.index].name().to_string(),
            victims: best.victims.iter().map(|p| victim(p)).collect(),
        };
        PostFilterResult { status: Status::success(), nomination: Some(nomination) }
    }
}

#[cfg(test)]
#[path = "default_preemption_tests.rs"]
mod tests;
