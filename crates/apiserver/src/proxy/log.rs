//! `GET pods/<name>/log`: upstream's `LogREST`. The options are validated as upstream's
//! `ValidatePodLogOptions`, the container chosen as `validateContainer`, and the node agent's
//! `/containerLogs/<ns>/<pod>/<container>` answer streamed back as `text/plain`, each chunk as it
//! arrives, so `follow` streams.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use tug_api::field::{FieldError, FieldPath};
use tug_api::status::Details;
use tug_api::{ApiError, ResourceType};

use super::kubelet::{self, KubeletClient};
use super::{choose_container, unknown_error};
use crate::request::Query;
use crate::response::Body;
use crate::server::ApiServer;

/// How much of a node agent's error answer becomes the message, as upstream's response checker.
const MAX_ERROR_BODY: usize = 50_000;
/// The log streams a client may select (`stream=`), upstream's `validLogStreams`.
const LOG_STREAMS: [&str; 3] = ["Stdout", "Stderr", "All"];

/// `PodLogOptions`, read from the query.
#[derive(Debug, Default, PartialEq)]
pub(super) struct LogOptions {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub since_seconds: Option<i64>,
    /// RFC 3339, to the second, as upstream passes it on.
    pub since_time: Option<jiff::Timestamp>,
    pub tail_lines: Option<i64>,
    pub limit_bytes: Option<i64>,
    pub stream: Option<String>,
    pub insecure_skip_tls_verify_backend: bool,
}

/// A boolean query parameter as upstream's query conversion reads it: absent, empty, `0` or
/// `false` is false; any other value is true.
fn query_bool(query: &Query, key: &str) -> bool {
    match query.get(key) {
        None => false,
        Some(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
    }
}

impl LogOptions {
    pub fn parse(query: &Query) -> Result<Self, ApiError> {
        let since_time = match query.get("sinceTime").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(v.parse::<jiff::Timestamp>().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid value {v:?} for query parameter sinceTime: must be an RFC 3339 time"
                ))
            })?),
        };
        Ok(LogOptions {
            container: query.get("container").filter(|c| !c.is_empty()).map(str::to_string),
            follow: query_bool(query, "follow"),
            previous: query_bool(query, "previous"),
            timestamps: query_bool(query, "timestamps"),
            since_seconds: query.int("sinceSeconds")?,
            since_time,
            tail_lines: query.int("tailLines")?,
            limit_bytes: query.int("limitBytes")?,
            stream: query.get("stream").filter(|s| !s.is_empty()).map(str::to_string),
            insecure_skip_tls_verify_backend: query_bool(query, "insecureSkipTLSVerifyBackend"),
        })
    }

    /// Upstream's `ValidatePodLogOptions`: a 422 `PodLogOptions "<pod>" is invalid`.
    pub fn validate(&self, pod: &str) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        if let Some(n) = self.tail_lines.filter(|n| *n < 0) {
            errors.push(FieldError::invalid(
                &FieldPath::new("tailLines"),
                json!(n),
                "must be greater than or equal to 0",
            ));
        }
        if let Some(n) = self.limit_bytes.filter(|n| *n < 1) {
            errors.push(FieldError::invalid(&FieldPath::new("limitBytes"), json!(n), "must be greater than 0"));
        }
        match (self.since_seconds, self.since_time) {
            (Some(_), Some(_)) => errors.push(FieldError::forbidden(
                &FieldPath::new(""),
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            )),
            (Some(n), None) if n < 1 => {
                errors.push(FieldError::invalid(&FieldPath::new("sinceSeconds"), json!(n), "must be greater than 0"))
            }
            _ => {}
        }
        if let Some(stream) = &self.stream {
            if !LOG_STREAMS.contains(&stream.as_str()) {
                errors.push(FieldError::not_supported(&FieldPath::new("stream"), json!(stream), &LOG_STREAMS));
            }
            if stream != "All" && self.tail_lines.is_some() {
                errors.push(FieldError::forbidden(
                    &FieldPath::new(""),
                    "`tailLines` and specific `stream` are mutually exclusive for now",
                ));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid("", "PodLogOptions", pod, &errors)) }
    }

    /// The query the node agent gets, keys sorted as Go's `url.Values.Encode` sorts them.
    pub fn agent_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if self.follow {
            q.append_pair("follow", "true");
        }
        if let Some(n) = self.limit_bytes {
            q.append_pair("limitBytes", &n.to_string());
        }
        if self.previous {
            q.append_pair("previous", "true");
        }
        if let Some(n) = self.since_seconds {
            q.append_pair("sinceSeconds", &n.to_string());
        }
        if let Some(t) = self.since_time {
            // Whole seconds, as Go's `time.RFC3339` layout writes them.
            let t = jiff::Timestamp::from_second(t.as_second()).unwrap_or(t);
            q.append_pair("sinceTime", &t.to_string());
        }
        if let Some(s) = &self.stream {
            q.append_pair("stream", s);
        }
        if let Some(n) = self.tail_lines {
            q.append_pair("tailLines", &n.to_string());
        }
        if self.timestamps {
            q.append_pair("timestamps", "true");
        }
        q.finish()
    }
}

pub(super) async fn serve(
    srv: &ApiServer,
    client: &KubeletClient,
    pods: &ResourceType,
    ns: &str,
    name: &str,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let opts = LogOptions::parse(query)?;
    opts.validate(name)?;
    let (pod, _) = srv.read(pods, Some(ns), name).await?;
    let container = choose_container(&pod, opts.container.as_deref())?;
    let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        // Upstream streams nothing for a pod not yet on a node: its empty location is a 204.
        let mut resp = Response::new(crate::response::full(bytes::Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        return Ok(resp);
    };
    let loc = kubelet::locate(srv, node).await?;
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    let agent_query = opts.agent_query();
    if !agent_query.is_empty() {
        path = format!("{path}?{agent_query}");
    }
    tracing::debug!(pod = name, namespace = ns, %container, node, agent = %loc, "proxying a log request");
    let resp = client
        .send(&loc, opts.insecure_skip_tls_verify_backend, Method::GET, &path, HeaderMap::new(), kubelet::empty())
        .await
        .map_err(|e| unknown_error(format!("Get \"https://{loc}{path}\": {e}")))?;
    let code = resp.status().as_u16();
    if !(200..=206).contains(&code) {
        let text = kubelet::read_error_body(resp.into_body(), MAX_ERROR_BODY).await;
        return Err(agent_error(code, name, &text));
    }
    let mut out = kubelet::relay_response(resp);
    *out.status_mut() = StatusCode::OK;
    *out.headers_mut() = HeaderMap::new();
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(out)
}

/// A node agent's failure as upstream's `GenericHttpResponseChecker` reports it: its 400 and 500
/// answers carry the agent's text as the message (so `container "c" in pod "p" is waiting to
/// start: ContainerCreating` reaches `kubectl logs` as a BadRequest), other codes are worded by
/// `NewGenericServerResponse` for `pods/log`.
pub(super) fn agent_error(code: u16, pod: &str, text: &str) -> ApiError {
    match code {
        500 => return ApiError::internal(text),
        400 => return ApiError::bad_request(text),
        _ => {}
    }
    let (reason, message) = match code {
        409 => ("Conflict", "the server reported a conflict".to_string()),
        404 => ("NotFound", "the server could not find the requested resource".to_string()),
        401 => ("Unauthorized", "the server has asked for the client to provide credentials".to_string()),
        403 => ("Forbidden", text.to_string()),
        405 => ("MethodNotAllowed", "the server does not allow this method on the requested resource".to_string()),
        422 => ("Invalid", "the server rejected our request due to an error in our request".to_string()),
        429 => (
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later".to_string(),
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request"
                .to_string(),
        ),
        c if c >= 500 => {
            ("InternalError", format!("an error on the server ({text:?}) has prevented the request from succeeding"))
        }
        c => ("", format!("the server responded with the status code {c} but did not return more information")),
    };
    // Upstream passes an empty verb, hence the leading space in the parenthesis.
    ApiError {
        code,
        reason,
        message: format!("{message} ( pods/log {pod})"),
        details: Some(Box::new(Details { name: Some(pod.to_string()), kind: "pods/log".into(), ..Details::default() })),
    }
}
