//! `metadata.managedFields` on the write paths: which field manager a write is recorded as, and
//! the [`FieldManager`] of a resource endpoint (the machinery is `tug_api::apply`).

use serde_json::Value;
use tug_api::apply::managed::{FIELD_MANAGER_MAX_LENGTH, validate_field_manager, validate_managed_fields};
use tug_api::apply::{FieldManager, Reset};
use tug_api::field::FieldPath;
use tug_api::{ApiError, ResourceType};

use crate::objects::now_rfc3339;
use crate::server::ApiServer;

impl ApiServer {
    /// Runs `f` with the field manager of `rt` (through `subresource`, if any).
    pub(crate) fn with_field_manager<R>(
        &self,
        rt: &ResourceType,
        subresource: Option<&str>,
        f: impl FnOnce(&FieldManager<'_>) -> R,
    ) -> R {
        let definition = rt.ops.schema_name();
        let api_version = rt.api_version();
        // What the resource's strategy resets is never owned through this endpoint.
        let reset = match subresource {
            Some("status") => Reset::AllButStatus,
            None if rt.has_subresource("status") => Reset::Status,
            _ => Reset::Nothing,
        };
        f(&FieldManager::new(self.schemas(), &definition, &api_version, subresource.unwrap_or(""), reset))
    }

    /// Records in `new`'s managedFields that `manager` wrote it over `live` (`None` on create).
    /// `new` is the admitted object without managedFields; `requested` the managedFields the
    /// request carried, which the result is validated with.
    pub(crate) fn track_write(
        &self,
        rt: &ResourceType,
        subresource: Option<&str>,
        live: Option<&Value>,
        requested: Option<&Value>,
        new: &mut Value,
        manager: &str,
    ) -> Result<(), ApiError> {
        let now = now_rfc3339();
        self.with_field_manager(rt, subresource, |fm| fm.update(live, requested, new, manager, &now));
        if let Some(entries) = new.pointer("/metadata/managedFields") {
            let errs = validate_managed_fields(entries);
            if !errs.is_empty() {
                let name = new.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                return Err(ApiError::invalid(&rt.group, &rt.kind, name, &errs));
            }
        }
        Ok(())
    }
}

/// The manager a non-apply write is recorded as: `?fieldManager=`, else the product name of the
/// User-Agent (`kubectl/v1.36.0 (linux/amd64) ...` → `kubectl`), as upstream's
/// `prefixFromUserAgent` takes it: up to the first `/`, printable characters only, at most 128
/// bytes.
pub(crate) fn write_manager(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_owned();
    }
    let product = user_agent.unwrap_or("").split('/').next().unwrap_or("");
    let mut out = String::new();
    for c in product.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > FIELD_MANAGER_MAX_LENGTH {
            break;
        }
        out.push(c);
    }
    out
}

/// Upstream's validation of `?fieldManager=` (and, for patches, `?force=`): an `Invalid` error
/// about the options kind, e.g. `PatchOptions.meta.k8s.io "" is invalid: ...`.
pub(crate) fn validate_options(
    options_kind: &str,
    field_manager: Option<&str>,
    apply: Option<bool>,
    force: bool,
) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    match apply {
        Some(false) if force => errs.push(tug_api::field::FieldError::forbidden(
            &FieldPath::new("force"),
            "may not be specified for non-apply patch",
        )),
        Some(true) if field_manager.is_none_or(str::is_empty) => {
            errs.push(tug_api::field::FieldError::required(
                &FieldPath::new("fieldManager"),
                "is required for apply patch",
            ));
        }
        _ => {}
    }
    errs.extend(validate_field_manager(field_manager.unwrap_or(""), &FieldPath::new("fieldManager")));
    if errs.is_empty() { Ok(()) } else { Err(ApiError::invalid("meta.k8s.io", options_kind, "", &errs)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_defaults_to_the_user_agent_product() {
        assert_eq!(write_manager(None, Some("kubectl/v1.36.0 (linux/amd64) kubernetes/abcdef")), "kubectl");
        assert_eq!(write_manager(Some("kubectl-edit"), Some("kubectl/v1.36.0")), "kubectl-edit");
        assert_eq!(write_manager(Some(""), Some("OpenAPI-Generator/31.0.0/python")), "OpenAPI-Generator");
        assert_eq!(write_manager(None, None), "");
        assert_eq!(write_manager(None, Some(&"x".repeat(300))).len(), 128);
    }

    #[test]
    fn apply_needs_a_field_manager_and_other_patches_no_force() {
        let e = validate_options("PatchOptions", None, Some(true), false).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                422,
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
            )
        );
        let e = validate_options("PatchOptions", Some("m"), Some(false), true).unwrap_err();
        assert_eq!(
            e.message,
            "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch"
        );
        let e = validate_options("CreateOptions", Some(&"m".repeat(129)), None, false).unwrap_err();
        assert_eq!(
            e.message,
            "CreateOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes"
        );
        assert!(validate_options("UpdateOptions", Some("kubectl-edit"), None, false).is_ok());
    }
}
