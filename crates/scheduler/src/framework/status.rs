//! What a plugin answers: a code and the reasons behind it.

use std::collections::{BTreeMap, HashMap};

/// Upstream's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success,
    /// Something went wrong that is not about the pod's fit.
    Error,
    /// The pod does not fit, but might once other pods go (preemption may help).
    Unschedulable,
    /// The pod does not fit and removing pods would not change that.
    UnschedulableAndUnresolvable,
    /// The plugin has nothing to do for this pod in this cycle.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub reasons: Vec<String>,
    /// The plugin that answered, for failures.
    pub plugin: &'static str,
}

impl Status {
    pub fn success() -> Self {
        Self { code: Code::Success, reasons: Vec::new(), plugin: "" }
    }

    pub fn skip() -> Self {
        Self { code: Code::Skip, reasons: Vec::new(), plugin: "" }
    }

    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Self { code, reasons: vec![reason.into()], plugin: "" }
    }

    pub fn with_reasons(code: Code, reasons: Vec<String>) -> Self {
        Self { code, reasons, plugin: "" }
    }

    pub fn error(reason: impl Into<String>) -> Self {
        Self::new(Code::Error, reason)
    }

    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }

    pub fn is_rejected(&self) -> bool {
        matches!(self.code, Code::Unschedulable | Code::UnschedulableAndUnresolvable)
    }

    pub fn message(&self) -> String {
        self.reasons.join(", ")
    }

    pub fn by(mut self, plugin: &'static str) -> Self {
        self.plugin = plugin;
        self
    }
}

/// Why each node was rejected in a cycle; nodes absent from the map get `absent`.
#[derive(Debug, Clone)]
pub struct NodeToStatus {
    statuses: HashMap<String, Status>,
    absent: Status,
}

impl Default for NodeToStatus {
    fn default() -> Self {
        // Upstream's default for nodes a cycle never looked at.
        Self { statuses: HashMap::new(), absent: Status::new(Code::UnschedulableAndUnresolvable, "") }
    }
}

impl NodeToStatus {
    pub fn set(&mut self, node: &str, status: Status) {
        self.statuses.insert(node.to_string(), status);
    }

    pub fn set_absent(&mut self, status: Status) {
        self.absent = status;
    }

    pub fn get(&self, node: &str) -> &Status {
        self.statuses.get(node).unwrap_or(&self.absent)
    }

    pub fn len(&self) -> usize {
        self.statuses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty()
    }

    /// The plugins that rejected some node.
    pub fn plugins(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.statuses.values().map(|s| s.plugin).filter(|p| !p.is_empty())
    }

    /// Upstream's `FitError` message: "0/3 nodes are available: 1 Insufficient cpu, 2 ...".
    pub fn fit_error_message(&self, all_nodes: usize) -> String {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for status in self.statuses.values() {
            for r in &status.reasons {
                *reasons.entry(r).or_default() += 1;
            }
        }
        if self.statuses.len() < all_nodes {
            for r in &self.absent.reasons {
                if !r.is_empty() {
                    *reasons.entry(r).or_default() += all_nodes - self.statuses.len();
                }
            }
        }
        // Upstream sorts the "<count> <reason>" strings themselves.
        let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        let mut msg = format!("0/{all_nodes} nodes are available:");
        if !parts.is_empty() {
            msg.push_str(&format!(" {}.", parts.join(", ")));
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_error_message_counts_and_sorts_reasons() {
        let mut m = NodeToStatus::default();
        m.set("a", Status::new(Code::Unschedulable, "Insufficient cpu"));
        m.set("b", Status::new(Code::UnschedulableAndUnresolvable, "node(s) had untolerated taint {dedicated: gpu}"));
        m.set("c", Status::new(Code::UnschedulableAndUnresolvable, "node(s) had untolerated taint {dedicated: gpu}"));
        assert_eq!(
            m.fit_error_message(3),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}."
        );
    }

    #[test]
    fn fit_error_message_gives_absent_nodes_the_default_reason() {
        let mut m = NodeToStatus::default();
        m.set_absent(Status::new(Code::UnschedulableAndUnresolvable, "Preemption is not helpful for scheduling"));
        m.set("a", Status::new(Code::Unschedulable, "No preemption victims found for incoming pod"));
        assert_eq!(
            m.fit_error_message(3),
            "0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn a_status_with_several_reasons_counts_each() {
        let mut m = NodeToStatus::default();
        m.set(
            "a",
            Status::with_reasons(Code::Unschedulable, vec!["Insufficient cpu".into(), "Insufficient memory".into()]),
        );
        assert_eq!(m.fit_error_message(1), "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.");
    }
}
