//! Pure helpers of the Deployment controller (upstream's
//! `pkg/controller/deployment/util/deployment_util.go`): the pod-template hash and the names
//! it gives, the surge/unavailable fenceposts, revisions and the annotations a Deployment puts
//! on its ReplicaSets, and the completeness/progress predicates of the rollout status.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label a Deployment adds to its ReplicaSets' selectors, templates and pods.
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";

/// Upstream's alphabet for names made from numbers (no vowels, no look-alikes).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Maps every character of `s` into the safe alphabet (upstream's `rand.SafeEncodeString`).
pub fn safe_encode(s: &str) -> String {
    s.bytes().map(|b| SAFE_ALPHABET[b as usize % SAFE_ALPHABET.len()] as char).collect()
}

/// 32-bit FNV-1a.
fn fnv32a(data: &[u8], mut hash: u32) -> u32 {
    for b in data {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The `pod-template-hash` of a template and collision count: an FNV-1a hash of the template's
/// canonical JSON and the count, rendered safely (upstream's `ComputeHash`).
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let mut hash = fnv32a(&json, 0x811c_9dc5);
    if let Some(c) = collision_count {
        hash = fnv32a(c.to_string().as_bytes(), hash);
    }
    safe_encode(&hash.to_string())
}

/// The name of a Deployment's ReplicaSet for a hash.
pub fn replica_set_name(deployment: &str, hash: &str) -> String {
    format!("{deployment}-{hash}")
}

/// Whether two templates are equal once the `pod-template-hash` label is ignored.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(HASH_LABEL);
        }
        serde_json::to_value(t).unwrap_or_default()
    };
    strip(a) == strip(b)
}

/// An absolute or percent value scaled against `total` (upstream's
/// `GetScaledValueFromIntOrPercent`); `None` for a malformed percent.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match v {
        IntOrString::Int(i) => Some(*i),
        IntOrString::String(s) => {
            let p: i64 = s.strip_suffix('%')?.parse().ok()?;
            let product = p * i64::from(total);
            let v = if round_up { (product + 99).div_euclid(100) } else { product.div_euclid(100) };
            i32::try_from(v).ok()
        }
    }
}

/// `(maxSurge, maxUnavailable)` of a rolling update against `replicas`: surge rounded up,
/// unavailable rounded down, and never both zero (upstream's `ResolveFenceposts`).
pub fn resolve_fenceposts(surge: Option<&IntOrString>, unavailable: Option<&IntOrString>, replicas: i32) -> (i32, i32) {
    let quarter = IntOrString::String("25%".into());
    let surge = scaled_value(surge.unwrap_or(&quarter), replicas, true).unwrap_or(0);
    let unavailable = scaled_value(unavailable.unwrap_or(&quarter), replicas, false).unwrap_or(0);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
}

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub fn is_recreate(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

/// `(maxSurge, maxUnavailable)` of `d`; a Recreate deployment has neither surge nor
/// unavailability budget (upstream's `MaxSurge`/`MaxUnavailable`).
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    if is_recreate(d) {
        return (0, 0);
    }
    let ru = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let (s, u) = resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas(d),
    );
    (s, u.min(replicas(d)))
}

pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

pub fn rs_status<F: Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>>(rs: &ReplicaSet, f: F) -> i32 {
    rs.status.as_ref().and_then(f).unwrap_or(0)
}

/// The revision annotation of an object, 0 when missing or malformed.
pub fn revision(annotations: Option<&BTreeMap<String, String>>) -> i64 {
    annotations.and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The annotations a Deployment's ReplicaSet carries: the Deployment's own (but those about
/// one object only), the revision, and for a set about to be created the replica annotations.
pub fn replica_set_annotations(
    d: &Deployment,
    existing: Option<&BTreeMap<String, String>>,
    new_revision: i64,
) -> BTreeMap<String, String> {
    let mut a = existing.cloned().unwrap_or_default();
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if ![LAST_APPLIED, REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS, ROLLBACK_TO]
            .contains(&k.as_str())
        {
            a.insert(k.clone(), v.clone());
        }
    }
    if revision(Some(&a)) < new_revision {
        a.insert(REVISION.into(), new_revision.to_string());
    }
    // An existing set's replica annotations change only when it is scaled (a proportional
    // scale reads them as the size it was last given).
    if existing.is_none() {
        set_replica_annotations(&mut a, d);
    }
    a
}

/// Sets `desired-replicas` and `max-replicas` for `d`.
pub fn set_replica_annotations(a: &mut BTreeMap<String, String>, d: &Deployment) {
    a.insert(DESIRED_REPLICAS.into(), replicas(d).to_string());
    a.insert(MAX_REPLICAS.into(), (replicas(d) + fenceposts(d).0).to_string());
}

/// Upstream's `DeploymentComplete`: every replica updated and available, generation observed.
pub fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let r = replicas(d);
    s.updated_replicas.unwrap_or(0) == r
        && s.replicas.unwrap_or(0) == r
        && s.available_replicas.unwrap_or(0) == r
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Upstream's `DeploymentProgressing`: `new` moved forward since the stored status.
pub fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let g = |v: Option<i32>| v.unwrap_or(0);
    let old_old = g(old.replicas) - g(old.updated_replicas);
    let new_old = g(new.replicas) - g(new.updated_replicas);
    g(new.updated_replicas) > g(old.updated_replicas)
        || new_old < old_old
        || g(new.ready_replicas) > g(old.ready_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn percent_surge_rounds_up_and_unavailable_rounds_down() {
        assert_eq!(resolve_fenceposts(None, None, 10), (3, 2));
        assert_eq!(resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 3), (1, 0));
        assert_eq!(resolve_fenceposts(Some(&pct("50%")), Some(&pct("50%")), 5), (3, 2));
        assert_eq!(resolve_fenceposts(Some(&pct("100%")), Some(&pct("0%")), 7), (7, 0));
    }

    #[test]
    fn absolute_fenceposts_are_taken_as_they_are_and_never_both_zero() {
        assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&IntOrString::Int(1)), 10), (2, 1));
        assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 10), (0, 1));
        assert_eq!(resolve_fenceposts(Some(&pct("10%")), Some(&pct("10%")), 1), (1, 0));
        assert_eq!(resolve_fenceposts(Some(&pct("1%")), Some(&pct("1%")), 0), (0, 1));
    }

    #[test]
    fn malformed_percent_is_rejected() {
        assert_eq!(scaled_value(&pct("abc"), 10, true), None);
        assert_eq!(scaled_value(&pct("10"), 10, true), None);
    }

    #[test]
    fn hash_is_stable_safe_and_changes_with_template_and_collisions() {
        let mut t = PodTemplateSpec::default();
        let h = compute_hash(&t, None);
        assert_eq!(h, compute_hash(&t, None));
        assert!(h.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{h}");
        assert_ne!(h, compute_hash(&t, Some(1)));
        assert_ne!(compute_hash(&t, Some(1)), compute_hash(&t, Some(2)));
        t.metadata = Some(Default::default());
        t.metadata.as_mut().unwrap().labels = Some([("app".to_string(), "web".to_string())].into());
        assert_ne!(h, compute_hash(&t, None));
        assert_eq!(replica_set_name("web", &h), format!("web-{h}"));
    }

    #[test]
    fn safe_encoding_maps_digits_as_upstream() {
        // '0' is byte 48: 48 % 27 = 21 -> '4'.
        assert_eq!(safe_encode("0"), "4");
        assert_eq!(safe_encode("123"), "567");
    }

    #[test]
    fn templates_differing_only_in_hash_are_equal() {
        let mk = |hash: Option<&str>| {
            let mut labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
            if let Some(h) = hash {
                labels.insert(HASH_LABEL.into(), h.into());
            }
            PodTemplateSpec {
                metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: None,
            }
        };
        assert!(equal_ignore_hash(&mk(None), &mk(Some("abc"))));
        assert!(!equal_ignore_hash(&mk(None), &PodTemplateSpec::default()));
    }
}
