//! The secret volume plugin (upstream's `pkg/volume/secret`): the Secret's keys as files on a
//! tmpfs, or only the listed `items`, published through the atomic writer.

use k8s_openapi::api::core::v1::{KeyToPath, Secret};

use super::SetUpError;
use super::atomic_writer::{FileProjection, Payload};
use super::source::ObjectSource;

/// The mode of files when neither the item nor the volume says (API default 0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// Looks the Secret up; a missing one is an error unless `optional` (then it reads as empty).
pub async fn fetch(
    source: &dyn ObjectSource,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Option<Secret>, SetUpError> {
    match source.secret(namespace, name).await? {
        Some(secret) => Ok(Some(secret)),
        None if optional => Ok(None),
        None => Err(SetUpError::SecretNotFound { name: name.to_owned() }),
    }
}

/// Upstream's `MakePayload` for secrets: every key without `items`, else each item's key at its
/// path; a missing item key fails unless `optional`.
pub fn payload(
    secret: Option<&Secret>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, SetUpError> {
    let data = secret.and_then(|s| s.data.as_ref());
    let mut payload = Payload::new();
    match items {
        None | Some([]) => {
            for (key, value) in data.into_iter().flatten() {
                payload.insert(key.clone(), FileProjection { data: value.0.clone(), mode: default_mode as u32 });
            }
        }
        Some(items) => {
            for item in items {
                match data.and_then(|d| d.get(&item.key)) {
                    Some(value) => {
                        let mode = item.mode.unwrap_or(default_mode) as u32;
                        payload.insert(item.path.clone(), FileProjection { data: value.0.clone(), mode });
                    }
                    None if optional => {}
                    None => return Err(SetUpError::MissingSecretKey { key: item.key.clone() }),
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

    fn secret() -> Secret {
        Secret { data: Some([("user".to_owned(), ByteString(b"admin".to_vec()))].into()), ..Default::default() }
    }

    #[test]
    fn all_keys_decoded_with_default_mode() {
        let p = payload(Some(&secret()), None, DEFAULT_MODE, false).unwrap();
        assert_eq!(p["user"].data, b"admin");
        assert_eq!(p["user"].mode, 0o644);
    }

    #[test]
    fn items_and_missing_keys() {
        let items = [KeyToPath { key: "user".into(), path: "u".into(), mode: Some(0o400) }];
        let p = payload(Some(&secret()), Some(&items), 0o644, false).unwrap();
        assert_eq!((p["u"].data.as_slice(), p["u"].mode), (b"admin".as_slice(), 0o400));
        let missing = [KeyToPath { key: "pw".into(), path: "pw".into(), mode: None }];
        let err = payload(Some(&secret()), Some(&missing), 0o644, false).unwrap_err();
        assert_eq!(err.to_string(), "references non-existent secret key: pw");
        assert!(payload(Some(&secret()), Some(&missing), 0o644, true).unwrap().is_empty());
    }
}
