//! The configMap volume plugin (upstream's `pkg/volume/configmap`): the ConfigMap's keys as
//! files, or only the listed `items`, published through the atomic writer.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath};

use super::SetUpError;
use super::atomic_writer::{FileProjection, Payload};
use super::source::ObjectSource;

/// The mode of files when neither the item nor the volume says (API default 0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// Looks the ConfigMap up; a missing one is an error unless `optional` (then it reads as empty).
pub async fn fetch(
    source: &dyn ObjectSource,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Option<ConfigMap>, SetUpError> {
    match source.config_map(namespace, name).await? {
        Some(cm) => Ok(Some(cm)),
        None if optional => Ok(None),
        None => Err(SetUpError::ConfigMapNotFound { name: name.to_owned() }),
    }
}

/// Upstream's `MakePayload`: every key (data and binaryData) without `items`, else each item's
/// key at its path; a missing item key fails unless `optional`.
pub fn payload(
    config_map: Option<&ConfigMap>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, SetUpError> {
    let empty = BTreeMap::new();
    let data = config_map.and_then(|c| c.data.as_ref()).unwrap_or(&empty);
    let binary_empty = BTreeMap::new();
    let binary = config_map.and_then(|c| c.binary_data.as_ref()).unwrap_or(&binary_empty);
    let lookup = |key: &str| -> Option<Vec<u8>> {
        data.get(key).map(|s| s.as_bytes().to_vec()).or_else(|| binary.get(key).map(|b| b.0.clone()))
    };
    let mut payload = Payload::new();
    match items {
        None | Some([]) => {
            for key in data.keys().chain(binary.keys()) {
                if let Some(bytes) = lookup(key) {
                    payload.insert(key.clone(), FileProjection { data: bytes, mode: default_mode as u32 });
                }
            }
        }
        Some(items) => {
            for item in items {
                match lookup(&item.key) {
                    Some(bytes) => {
                        let mode = item.mode.unwrap_or(default_mode) as u32;
                        payload.insert(item.path.clone(), FileProjection { data: bytes, mode });
                    }
                    None if optional => {}
                    None => return Err(SetUpError::MissingConfigMapKey { key: item.key.clone() }),
                }
            }
        }
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn cm() -> ConfigMap {
        ConfigMap {
            data: Some([("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())].into()),
            binary_data: Some([("bin".to_owned(), ByteString(vec![0, 1, 2]))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn all_keys_with_default_mode() {
        let p = payload(Some(&cm()), None, 0o600, false).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["a", "b", "bin"]);
        assert_eq!(p["a"].data, b"1");
        assert_eq!(p["bin"].data, [0, 1, 2]);
        assert!(p.values().all(|f| f.mode == 0o600));
    }

    #[test]
    fn items_select_and_rename_keys_with_their_modes() {
        let items = [KeyToPath { key: "a".into(), path: "dir/renamed".into(), mode: Some(0o400) }];
        let p = payload(Some(&cm()), Some(&items), 0o644, false).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["dir/renamed"]);
        assert_eq!(p["dir/renamed"].mode, 0o400);
    }

    #[test]
    fn missing_item_key_fails_unless_optional() {
        let items = [KeyToPath { key: "zz".into(), path: "z".into(), mode: None }];
        let err = payload(Some(&cm()), Some(&items), 0o644, false).unwrap_err();
        assert_eq!(err.to_string(), "configmap references non-existent config key: zz");
        assert!(payload(Some(&cm()), Some(&items), 0o644, true).unwrap().is_empty());
        assert!(payload(None, None, 0o644, true).unwrap().is_empty());
    }
}
