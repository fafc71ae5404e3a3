//! API errors as Kubernetes `Status` objects.
//!
//! Every failure the API server reports is one [`ApiError`]: an HTTP code, upstream's `reason`
//! (the `StatusReason` clients switch on: kubectl prints `Error from server (NotFound): ...`) and
//! a message worded as upstream words it, optionally with details naming the object and the
//! field causes of an `Invalid` error.

use serde_json::{Value, json};

use crate::field::FieldError;

/// A Kubernetes API error, ready to be sent as a `Status` body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// Boxed: errors travel in every `Result` of the API layer, and most have no details.
    pub details: Option<Box<Details>>,
}

/// `StatusDetails`: which object the error is about and, for `Invalid`, the field causes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Details {
    pub name: Option<String>,
    pub group: String,
    pub kind: String,
    pub causes: Vec<Cause>,
    pub retry_after_seconds: Option<u32>,
}

/// One `StatusCause`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: Option<String>,
}

/// Which object an error talks about: upstream names it by group and resource (`pods`,
/// `deployments.apps`) in messages and by group and kind in details.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub group: &'a str,
    /// The plural resource name, e.g. `configmaps`.
    pub resource: &'a str,
    pub kind: &'a str,
}

impl Subject<'_> {
    /// `pods` for the core group, `deployments.apps` otherwise, as upstream's messages read.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() { self.resource.to_string() } else { format!("{}.{}", self.resource, self.group) }
    }

    fn details(&self, name: &str) -> Details {
        Details {
            name: Some(name.to_string()),
            group: self.group.to_string(),
            kind: self.resource.to_string(),
            ..Details::default()
        }
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    pub fn not_found(subject: Subject<'_>, name: &str) -> Self {
        ApiError {
            details: Some(Box::new(subject.details(name))),
            ..Self::new(404, "NotFound", format!("{} \"{name}\" not found", subject.qualified_resource()))
        }
    }

    /// A 404 for a path that names no resource at all.
    pub fn path_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn already_exists(subject: Subject<'_>, name: &str) -> Self {
        ApiError {
            details: Some(Box::new(subject.details(name))),
            ..Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", subject.qualified_resource()))
        }
    }

    /// An update raced another writer (or carried a stale resourceVersion).
    pub fn conflict(subject: Subject<'_>, name: &str, why: &str) -> Self {
        ApiError {
            details: Some(Box::new(subject.details(name))),
            ..Self::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {} \"{name}\": {why}", subject.qualified_resource()),
            )
        }
    }

    /// The standard optimistic-concurrency conflict message.
    pub fn modified_conflict(subject: Subject<'_>, name: &str) -> Self {
        Self::conflict(
            subject,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 Invalid with one cause per field error, worded as upstream's `NewInvalid`.
    pub fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let list = match errors {
            [one] => one.to_string(),
            many => format!("[{}]", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        };
        let kind_name = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        ApiError {
            details: Some(Box::new(Details {
                name: Some(name.to_string()),
                group: group.to_string(),
                kind: kind.to_string(),
                causes: errors.iter().map(FieldError::cause).collect(),
                retry_after_seconds: None,
            })),
            ..Self::new(422, "Invalid", format!("{kind_name} \"{name}\" is invalid: {list}"))
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(subject: Subject<'_>, name: &str, why: impl std::fmt::Display) -> Self {
        let object = if name.is_empty() {
            subject.qualified_resource()
        } else {
            format!("{} \"{name}\"", subject.qualified_resource())
        };
        ApiError {
            details: Some(Box::new(subject.details(name))),
            ..Self::new(403, "Forbidden", format!("{object} is forbidden: {why}"))
        }
    }

    pub fn method_not_allowed(verb: &str, subject: Subject<'_>) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({verb} {})",
                subject.qualified_resource()
            ),
        )
    }

    /// A watch or list from a compacted resourceVersion.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 410 with reason `Gone`, the form the watch cache sends for a too-old resourceVersion.
    pub fn too_old_resource_version(requested: i64, oldest: i64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }

    pub fn request_entity_too_large(limit: usize) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("Request entity too large: limit is {limit}"))
    }

    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml, application/json;stream=watch (got {accept:?})"
            ),
        )
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {message}"))
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// The `Status` object clients decode.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = serde_json::Map::new();
            if let Some(name) = &d.name {
                details.insert("name".into(), json!(name));
            }
            if !d.group.is_empty() {
                details.insert("group".into(), json!(d.group));
            }
            if !d.kind.is_empty() {
                details.insert("kind".into(), json!(d.kind));
            }
            if !d.causes.is_empty() {
                let causes: Vec<Value> = d
                    .causes
                    .iter()
                    .map(|c| {
                        let mut v = json!({"reason": c.reason, "message": c.message});
                        if let Some(f) = &c.field {
                            v["field"] = json!(f);
                        }
                        v
                    })
                    .collect();
                details.insert("causes".into(), Value::Array(causes));
            }
            if let Some(s) = d.retry_after_seconds {
                details.insert("retryAfterSeconds".into(), json!(s));
            }
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// The `Status` a successful delete of a resource without a body returns.
pub fn success_status(subject: Subject<'_>, name: &str, uid: Option<&str>) -> Value {
    let mut details = json!({"name": name, "kind": subject.resource});
    if !subject.group.is_empty() {
        details["group"] = json!(subject.group);
    }
    if let Some(uid) = uid {
        details["uid"] = json!(uid);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{FieldError, FieldPath};

    const PODS: Subject<'static> = Subject { group: "", resource: "pods", kind: "Pod" };
    const DEPLOYMENTS: Subject<'static> = Subject { group: "apps", resource: "deployments", kind: "Deployment" };

    #[test]
    fn not_found_names_group_qualified_resource() {
        let e = ApiError::not_found(DEPLOYMENTS, "web");
        assert_eq!(e.message, "deployments.apps \"web\" not found");
        let s = e.to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["details"]["group"], "apps");
        assert_eq!(s["details"]["kind"], "deployments");
    }

    #[test]
    fn invalid_lists_every_cause_like_upstream() {
        let errs = vec![
            FieldError::required(&FieldPath::new("spec").key("containers").index(0).key("image"), ""),
            FieldError::invalid(&FieldPath::new("metadata").key("name"), json!("Bad"), "must be lowercase"),
        ];
        let e = ApiError::invalid("", "Pod", "Bad", &errs);
        assert_eq!(
            e.message,
            "Pod \"Bad\" is invalid: [spec.containers[0].image: Required value, metadata.name: Invalid value: \"Bad\": must be lowercase]"
        );
        let s = e.to_status();
        assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueRequired");
        assert_eq!(s["details"]["causes"][0]["field"], "spec.containers[0].image");
        assert_eq!(s["details"]["causes"][1]["reason"], "FieldValueInvalid");
    }

    #[test]
    fn core_group_messages_have_no_group_suffix() {
        assert_eq!(ApiError::already_exists(PODS, "a").message, "pods \"a\" already exists");
    }
}
