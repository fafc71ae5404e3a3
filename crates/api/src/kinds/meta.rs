//! Validation of `ObjectMeta`, common to every kind (upstream's `ValidateObjectMeta`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use crate::field::{FieldError, FieldPath};
use crate::selector::syntax;

/// How a kind's names are checked (upstream's `ValidateNameFunc` per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain, at most 253 characters: most kinds.
    Subdomain,
    /// RFC 1123 label, at most 63 characters: namespaces.
    Label,
    /// RFC 1035 label: services.
    Dns1035Label,
    /// Anything usable as a URL path segment: RBAC objects.
    PathSegment,
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.iter().all(|&c| is_label_char(c)) && is_alnum_lower(b[0]) && is_alnum_lower(b[b.len() - 1])
}

/// Problems with `s` as an RFC 1123 label, worded as upstream.
pub fn validate_dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_dns1123_label(s) {
        errs.push(DNS1123_LABEL_MSG.to_string());
    }
    errs
}

/// Problems with `s` as an RFC 1123 subdomain, worded as upstream.
pub fn validate_dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if s.is_empty() || !s.split('.').all(is_dns1123_label) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    errs
}

fn validate_dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    let b = s.as_bytes();
    if !(is_dns1123_label(s) && b[0].is_ascii_lowercase()) {
        errs.push(DNS1035_LABEL_MSG.to_string());
    }
    errs
}

fn validate_path_segment(s: &str) -> Vec<String> {
    if s == "." || s == ".." {
        return vec![format!("may not be '{s}'")];
    }
    ["/", "%"].iter().filter(|bad| s.contains(*bad)).map(|bad| format!("may not contain '{bad}'")).collect()
}

impl NameRule {
    /// Problems with `name` under this rule; `prefix` is true for `generateName`, which may end
    /// with a '-' that the generated suffix will follow.
    pub fn check(self, name: &str, prefix: bool) -> Vec<String> {
        let name = if prefix && self != NameRule::PathSegment { name.strip_suffix('-').unwrap_or(name) } else { name };
        match self {
            NameRule::Subdomain => validate_dns1123_subdomain(name),
            NameRule::Label => validate_dns1123_label(name),
            NameRule::Dns1035Label => validate_dns1035_label(name),
            NameRule::PathSegment => validate_path_segment(name),
        }
    }
}

/// Upstream's limit on the total size of all annotations of one object.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// Validates the metadata every object has.
pub fn validate_object_meta(meta: &ObjectMeta, rule: NameRule, namespaced: bool, errs: &mut Vec<FieldError>) {
    let path = FieldPath::new("metadata");
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) if !name.is_empty() => {
            for msg in rule.check(name, false) {
                errs.push(FieldError::invalid(&path.key("name"), json!(name), &msg));
            }
        }
        (_, Some(prefix)) if !prefix.is_empty() => {
            for msg in rule.check(prefix, true) {
                errs.push(FieldError::invalid(&path.key("generateName"), json!(prefix), &msg));
            }
        }
        _ => errs.push(FieldError::required(&path.key("name"), "name or generateName is required")),
    }
    match (&meta.namespace, namespaced) {
        (Some(ns), true) if !ns.is_empty() => {
            for msg in validate_dns1123_label(ns) {
                errs.push(FieldError::invalid(&path.key("namespace"), json!(ns), &msg));
            }
        }
        (_, true) => errs.push(FieldError::required(&path.key("namespace"), "")),
        (Some(ns), false) if !ns.is_empty() => {
            errs.push(FieldError::forbidden(&path.key("namespace"), "not allowed on this type"))
        }
        _ => {}
    }
    if let Some(labels) = &meta.labels {
        for (k, v) in labels {
            for msg in syntax::validate_label_key(k) {
                errs.push(FieldError::invalid(&path.key("labels"), json!(k), &msg));
            }
            for msg in syntax::validate_label_value(v) {
                errs.push(FieldError::invalid(&path.key("labels"), json!(v), &msg));
            }
        }
    }
    if let Some(annotations) = &meta.annotations {
        let mut total = 0;
        for (k, v) in annotations {
            total += k.len() + v.len();
            for msg in syntax::validate_qualified_name(&k.to_lowercase()) {
                errs.push(FieldError::invalid(&path.key("annotations"), json!(k), &msg));
            }
        }
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            errs.push(FieldError::too_long(&path.key("annotations"), TOTAL_ANNOTATION_SIZE_LIMIT));
        }
    }
    if let Some(finalizers) = &meta.finalizers {
        for (i, f) in finalizers.iter().enumerate() {
            for msg in syntax::validate_qualified_name(f) {
                errs.push(FieldError::invalid(&path.key("finalizers").index(i), json!(f), &msg));
            }
        }
    }
    if let Some(owners) = &meta.owner_references {
        let p = path.key("ownerReferences");
        let mut controllers = Vec::new();
        for (i, o) in owners.iter().enumerate() {
            let pi = p.index(i);
            if o.api_version.is_empty() {
                errs.push(FieldError::invalid(
                    &pi.key("apiVersion"),
                    json!(o.api_version),
                    "version must not be empty",
                ));
            }
            if o.kind.is_empty() {
                errs.push(FieldError::invalid(&pi.key("kind"), json!(o.kind), "kind must not be empty"));
            }
            if o.name.is_empty() {
                errs.push(FieldError::invalid(&pi.key("name"), json!(o.name), "name must not be empty"));
            }
            if o.uid.is_empty() {
                errs.push(FieldError::invalid(&pi.key("uid"), json!(o.uid), "uid must not be empty"));
            }
            if o.controller == Some(true) {
                controllers.push(format!("{}/{}", o.kind, o.name));
            }
        }
        if controllers.len() > 1 {
            errs.push(FieldError::invalid(
                &p,
                serde_json::to_value(owners).unwrap_or_default(),
                &format!(
                    "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                    controllers.join(" and ")
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_rejects_uppercase_and_accepts_dots() {
        assert!(validate_dns1123_subdomain("web.example").is_empty());
        assert_eq!(validate_dns1123_subdomain("Web").len(), 1);
        assert_eq!(validate_dns1123_subdomain(&"a".repeat(254)).len(), 1);
    }

    #[test]
    fn generate_name_may_end_with_dash() {
        assert!(NameRule::Subdomain.check("web-", true).is_empty());
        assert!(!NameRule::Subdomain.check("web-", false).is_empty());
    }

    #[test]
    fn missing_name_is_required_with_upstream_detail() {
        let mut errs = Vec::new();
        validate_object_meta(&ObjectMeta::default(), NameRule::Subdomain, false, &mut errs);
        assert_eq!(errs[0].to_string(), "metadata.name: Required value: name or generateName is required");
    }

    #[test]
    fn service_names_must_start_with_a_letter() {
        assert!(!NameRule::Dns1035Label.check("1web", false).is_empty());
        assert!(NameRule::Dns1035Label.check("web1", false).is_empty());
    }
}
