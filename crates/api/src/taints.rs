//! Taints and tolerations: the one matching rule the scheduler, the controllers and the node
//! agent share (upstream's `Toleration.ToleratesTaint` in `k8s.io/api/core/v1`).

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// Whether `t` tolerates `taint`: a toleration's empty effect or key matches any; `Exists`
/// ignores the value, `Equal` (the default) compares it.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = t.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint` (upstream's `TolerationsTolerateTaint`).
pub fn tolerated_by(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint { key: key.into(), value: Some(value.into()), effect: effect.into(), time_added: None }
    }

    fn toleration(key: &str, operator: &str, value: &str, effect: &str) -> Toleration {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Toleration {
            key: opt(key),
            operator: opt(operator),
            value: opt(value),
            effect: opt(effect),
            ..Default::default()
        }
    }

    #[test]
    fn matching_follows_upstream() {
        let t = taint("dedicated", "gpu", "NoSchedule");
        assert!(tolerates(&toleration("dedicated", "Equal", "gpu", "NoSchedule"), &t));
        assert!(tolerates(&toleration("dedicated", "", "gpu", ""), &t), "empty operator is Equal, empty effect any");
        assert!(!tolerates(&toleration("dedicated", "Equal", "cpu", "NoSchedule"), &t));
        assert!(tolerates(&toleration("dedicated", "Exists", "", ""), &t));
        assert!(tolerates(&toleration("", "Exists", "", ""), &t), "an empty key with Exists tolerates all");
        assert!(!tolerates(&toleration("", "Exists", "", "NoExecute"), &t), "but only its effect");
        assert!(!tolerates(&toleration("other", "Exists", "", ""), &t));
        assert!(!tolerates(&toleration("dedicated", "Gt", "1", ""), &t), "unknown operators tolerate nothing");
        assert!(tolerated_by(&[toleration("x", "Exists", "", ""), toleration("dedicated", "Exists", "", "")], &t));
    }
}
