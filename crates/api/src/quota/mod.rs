//! Resource quota accounting shared by quota admission (in the API server) and the quota
//! controller: upstream's `pkg/quota/v1` (resource lists and their arithmetic) and
//! `pkg/quota/v1/evaluator/core` (what a pod, service or claim uses, and which quotas and scopes
//! match it). Both sides must count the same way, so the counting lives here, once.

pub mod evaluator;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::Exact;

/// An amount per resource name (upstream's `v1.ResourceList` with exact values).
pub type ResourceList = BTreeMap<String, Exact>;

/// Reads a `v1.ResourceList`; values that are not quantities count as zero.
pub fn from_api(list: &BTreeMap<String, Quantity>) -> ResourceList {
    list.iter().map(|(k, v)| (k.clone(), Exact::parse(&v.0).unwrap_or(Exact::ZERO))).collect()
}

/// Writes a `v1.ResourceList` with each amount in canonical form.
pub fn to_api(list: &ResourceList) -> BTreeMap<String, Quantity> {
    list.iter().map(|(k, v)| (k.clone(), Quantity(v.to_string()))).collect()
}

/// The sum of two lists (upstream's `quota.Add`).
pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        let sum = out.get(k).map_or(*v, |cur| *cur + *v);
        out.insert(k.clone(), sum);
    }
    out
}

/// `a - b` for every resource of either list (upstream's `quota.Subtract`).
pub fn subtract(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        let diff = out.get(k).copied().unwrap_or(Exact::ZERO) - *v;
        out.insert(k.clone(), diff);
    }
    out
}

/// `a - b` for `a`'s resources, floored at zero (upstream's `SubtractWithNonNegativeResult`).
pub fn subtract_non_negative(a: &ResourceList, b: &ResourceList) -> ResourceList {
    a.iter()
        .map(|(k, v)| {
            let diff = *v - b.get(k).copied().unwrap_or(Exact::ZERO);
            (k.clone(), if diff.is_negative() { Exact::ZERO } else { diff })
        })
        .collect()
}

/// Only the resources in `names` (upstream's `quota.Mask`).
pub fn mask(list: &ResourceList, names: &BTreeSet<String>) -> ResourceList {
    list.iter().filter(|(k, _)| names.contains(*k)).map(|(k, v)| (k.clone(), *v)).collect()
}

/// Whether every amount in `a` is within `b`'s, and the resources that are not (upstream's
/// `quota.LessThanOrEqual`; a resource absent from `b` is unlimited).
pub fn less_than_or_equal(a: &ResourceList, b: &ResourceList) -> (bool, BTreeSet<String>) {
    let exceeded: BTreeSet<String> =
        a.iter().filter(|(k, v)| b.get(*k).is_some_and(|limit| *v > limit)).map(|(k, _)| k.clone()).collect();
    (exceeded.is_empty(), exceeded)
}

/// Drops zero amounts (upstream's `quota.RemoveZeros`).
pub fn remove_zeros(list: &ResourceList) -> ResourceList {
    list.iter().filter(|(_, v)| !v.is_zero()).map(|(k, v)| (k.clone(), *v)).collect()
}

/// `a=1,b=2` in name order, as upstream's admission messages print lists.
pub fn pretty_print(list: &ResourceList) -> String {
    list.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The names of a list.
pub fn names(list: &ResourceList) -> BTreeSet<String> {
    list.keys().cloned().collect()
}

/// One scope a quota is restricted to: `spec.scopes` entries read as `Exists` selectors, then
/// `spec.scopeSelector.matchExpressions` (upstream's `getScopeSelectorsFromQuota`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeSelector {
    pub scope_name: String,
    pub operator: String,
    pub values: Vec<String>,
}

/// The scope selectors of a quota.
pub fn scope_selectors(q: &ResourceQuota) -> Vec<ScopeSelector> {
    let Some(spec) = q.spec.as_ref() else { return Vec::new() };
    let mut out: Vec<ScopeSelector> = spec
        .scopes
        .iter()
        .flatten()
        .map(|s| ScopeSelector { scope_name: s.clone(), operator: "Exists".into(), values: Vec::new() })
        .collect();
    if let Some(sel) = spec.scope_selector.as_ref() {
        out.extend(sel.match_expressions.iter().flatten().map(|r| ScopeSelector {
            scope_name: r.scope_name.clone(),
            operator: r.operator.clone(),
            values: r.values.clone().unwrap_or_default(),
        }));
    }
    out
}

/// The quota's `status.hard` and `status.used`, read.
pub fn status_lists(q: &ResourceQuota) -> (ResourceList, ResourceList) {
    let status = q.status.as_ref();
    (
        status.and_then(|s| s.hard.as_ref()).map(from_api).unwrap_or_default(),
        status.and_then(|s| s.used.as_ref()).map(from_api).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[(&str, &str)]) -> ResourceList {
        items.iter().map(|(k, v)| (k.to_string(), Exact::parse(v).unwrap())).collect()
    }

    #[test]
    fn lists_add_mask_and_compare_as_upstream() {
        let used = list(&[("pods", "2"), ("requests.cpu", "500m")]);
        let delta = list(&[("pods", "1"), ("requests.cpu", "250m"), ("count/pods", "1")]);
        let hard = list(&[("pods", "2"), ("requests.cpu", "1")]);
        let requested = mask(&delta, &names(&hard));
        assert_eq!(pretty_print(&requested), "pods=1,requests.cpu=250m");
        let new = add(&used, &requested);
        let (ok, exceeded) = less_than_or_equal(&mask(&new, &names(&requested)), &hard);
        assert!(!ok);
        assert_eq!(exceeded.into_iter().collect::<Vec<_>>(), vec!["pods".to_string()]);
        assert_eq!(pretty_print(&subtract(&new, &list(&[("pods", "3")]))), "pods=0,requests.cpu=750m");
        assert_eq!(pretty_print(&remove_zeros(&list(&[("pods", "0"), ("cpu", "1")]))), "cpu=1");
        let update = subtract_non_negative(
            &list(&[("services", "1"), ("services.nodeports", "1")]),
            &list(&[("services", "1"), ("services.nodeports", "2")]),
        );
        assert_eq!(pretty_print(&update), "services=0,services.nodeports=0");
    }
}
