//! DefaultStorageClass admission (upstream's `plugin/pkg/admission/storage/storageclass/setdefault`):
//! a new PersistentVolumeClaim that names no class gets the default StorageClass, the one
//! annotated `storageclass.kubernetes.io/is-default-class: "true"` (the newest if several are).
//! An explicit `storageClassName: ""` asks for no class and is left alone.

use serde_json::{Value, json};
use tug_api::ApiError;
use tug_api::pv_helpers::{ANN_BETA_IS_DEFAULT_CLASS, ANN_BETA_STORAGE_CLASS, ANN_IS_DEFAULT_CLASS};

use crate::server::ApiServer;

fn is_default(class: &Value) -> bool {
    let ann = |k: &str| class.pointer("/metadata/annotations").and_then(|a| a.get(k)).and_then(Value::as_str);
    ann(ANN_IS_DEFAULT_CLASS) == Some("true") || ann(ANN_BETA_IS_DEFAULT_CLASS) == Some("true")
}

/// The default class among `classes`: upstream picks the newest, then the name first in order.
fn name(c: &Value) -> &str {
    c.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn default_class(classes: &[Value]) -> Option<&str> {
    let created =
        |c: &Value| c.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("").to_string();
    classes
        .iter()
        .filter(|c| is_default(c))
        .max_by(|a, b| created(a).cmp(&created(b)).then_with(|| name(b).cmp(name(a))))
        .map(name)
}

impl ApiServer {
    /// Sets a new claim's class to the default one when it names none.
    pub(crate) async fn admit_claim_storage_class(&self, claim: &mut Value) -> Result<(), ApiError> {
        let has_class = claim.pointer("/spec/storageClassName").is_some_and(|v| !v.is_null())
            || claim.pointer("/metadata/annotations").and_then(|a| a.get(ANN_BETA_STORAGE_CLASS)).is_some();
        if has_class {
            return Ok(());
        }
        let registry = self.registry();
        let rt = registry.lookup("storage.k8s.io", "v1", "storageclasses").expect("storage classes are served");
        let listed = self
            .store
            .list(&rt.prefix(None), tug_store::ListOptions::default())
            .await
            .map_err(|e| crate::objects::store_error(rt, "", e))?;
        let classes: Vec<Value> = listed.items.iter().map(crate::codec::decode_stored).collect::<Result<_, _>>()?;
        if let Some(name) = default_class(&classes)
            && let Some(spec) = claim.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert("storageClassName".into(), json!(name));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, created: &str, default: bool) -> Value {
        json!({"metadata": {"name": name, "creationTimestamp": created,
            "annotations": {ANN_IS_DEFAULT_CLASS: if default { "true" } else { "false" }}}})
    }

    #[test]
    fn the_newest_default_class_wins() {
        let classes = [
            class("old", "2024-01-01T00:00:00Z", true),
            class("new", "2024-02-01T00:00:00Z", true),
            class("newest-not-default", "2024-03-01T00:00:00Z", false),
        ];
        assert_eq!(default_class(&classes), Some("new"));
        assert_eq!(default_class(&classes[2..]), None);
    }
}
