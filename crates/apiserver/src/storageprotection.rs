//! Upstream's `StorageObjectInUseProtection` admission plugin: every new PersistentVolumeClaim
//! gets the `kubernetes.io/pvc-protection` finalizer and every new PersistentVolume the
//! `kubernetes.io/pv-protection` one, so that deleting a claim a pod still uses (or a volume
//! still bound) only marks it; the protection controllers remove the finalizer once it is free.

use serde_json::Value;

pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION_FINALIZER: &str = "kubernetes.io/pv-protection";

/// Adds the protection finalizer to a new claim or volume (`kind` is the core/v1 kind), once.
pub fn admit(kind: &str, obj: &mut Value) {
    let finalizer = match kind {
        "PersistentVolumeClaim" => PVC_PROTECTION_FINALIZER,
        "PersistentVolume" => PV_PROTECTION_FINALIZER,
        _ => return,
    };
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let finalizers = meta.entry("finalizers").or_insert_with(|| Value::Array(Vec::new()));
    if finalizers.is_null() {
        *finalizers = Value::Array(Vec::new());
    }
    let Some(list) = finalizers.as_array_mut() else { return };
    if !list.iter().any(|f| f.as_str() == Some(finalizer)) {
        list.push(Value::String(finalizer.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_new_claim_gets_the_pvc_finalizer_once_beside_its_own() {
        let mut claim = json!({"metadata": {"name": "c", "finalizers": ["example.com/keep"]}});
        admit("PersistentVolumeClaim", &mut claim);
        admit("PersistentVolumeClaim", &mut claim);
        assert_eq!(claim["metadata"]["finalizers"], json!(["example.com/keep", "kubernetes.io/pvc-protection"]));
    }

    #[test]
    fn a_new_volume_gets_the_pv_finalizer_and_other_kinds_nothing() {
        let mut volume = json!({"metadata": {"name": "v"}});
        admit("PersistentVolume", &mut volume);
        assert_eq!(volume["metadata"]["finalizers"], json!(["kubernetes.io/pv-protection"]));
        let mut pod = json!({"metadata": {"name": "p"}});
        admit("Pod", &mut pod);
        assert_eq!(pod, json!({"metadata": {"name": "p"}}));
    }
}
