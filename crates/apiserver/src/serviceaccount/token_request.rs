//! `POST .../serviceaccounts/<name>/token`: an `authentication.k8s.io/v1 TokenRequest` for a
//! bound service account token, as upstream's `TokenREST`.

use http::Response;
use serde_json::{Value, json};
use tug_api::ApiError;
use tug_api::field::{FieldError, FieldPath};

use super::jwt::{Claims, KubernetesClaims, Ref};
use super::{TokenIssuer, USER_PREFIX};
use crate::handlers::{Call, body_object};
use crate::response::{self, Body};

const GROUP: &str = "authentication.k8s.io";
const KIND: &str = "TokenRequest";
/// `spec.expirationSeconds` when the request leaves it out (upstream's defaulting).
const DEFAULT_EXPIRATION_SECONDS: i64 = 60 * 60;
const MIN_EXPIRATION_SECONDS: i64 = 10 * 60;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// The lifetime the kubelet asks for in projected volumes; such pod-bound tokens really last a
/// year and carry `warnafter`, so that clients that do not reload tokens keep working while
/// their use is noticed (upstream's `--service-account-extend-token-expiration`, on by default).
pub(crate) const KUBELET_EXPIRATION_SECONDS: i64 = 3607;
const EXTENDED_EXPIRATION_SECONDS: i64 = 365 * 24 * 60 * 60;

fn invalid(name: &str, path: FieldPath, value: Value, detail: &str) -> ApiError {
    ApiError::invalid(GROUP, KIND, name, &[FieldError::invalid(&path, value, detail)])
}

/// The object a token is bound to, found and checked.
struct Bound {
    pod: Option<Ref>,
    secret: Option<Ref>,
    node: Option<Ref>,
}

pub(crate) async fn create_token(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let Some(issuer) = call.srv.token_issuer().cloned() else {
        return Err(ApiError::path_not_found());
    };
    let name = call.name().to_string();
    let namespace = call.req.namespace.clone().unwrap_or_default();
    let mut req = body_object(call)?;
    match req.get("apiVersion").and_then(Value::as_str) {
        None | Some("") | Some("authentication.k8s.io/v1") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({other}) does not match the expected API version (authentication.k8s.io/v1)"
            )));
        }
    }
    let body_name = req.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    if !body_name.is_empty() && body_name != name {
        let path = FieldPath::new("metadata").key("name");
        return Err(invalid(&name, path, json!(body_name), "must match the service account name if specified"));
    }
    let body_ns = req.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
    if !body_ns.is_empty() && body_ns != namespace {
        let path = FieldPath::new("metadata").key("namespace");
        return Err(invalid(&name, path, json!(body_ns), "must match the service account namespace if specified"));
    }
    let (account, _) = call.srv.read(call.rt, Some(&namespace), &name).await?;

    let mut audiences: Vec<String> = match req.pointer("/spec/audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| ApiError::bad_request("spec.audiences must be a list of strings"))?,
    };
    if audiences.is_empty() {
        audiences = issuer.audiences.clone();
    }
    let expiration = match req.pointer("/spec/expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    let path = FieldPath::new("spec").key("expirationSeconds");
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(invalid("", path, json!(expiration), "may not specify a duration less than 10 minutes"));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(invalid("", path, json!(expiration), "may not specify a duration larger than 2^32 seconds"));
    }
    let bound_ref = req.pointer("/spec/boundObjectRef").filter(|v| !v.is_null()).cloned();
    let bound = match &bound_ref {
        Some(r) => bound_object(call, &namespace, &name, r).await?,
        None => Bound { pod: None, secret: None, node: None },
    };

    let now = jiff::Timestamp::now().as_second();
    let kube_audiences = audiences.iter().all(|a| issuer.audiences.contains(a));
    let (lifetime, warn_after) = if bound.pod.is_some() && expiration == KUBELET_EXPIRATION_SECONDS && kube_audiences {
        (EXTENDED_EXPIRATION_SECONDS, Some(now + expiration))
    } else {
        (expiration, None)
    };
    let claims = Claims {
        aud: audiences.clone(),
        exp: now + lifetime,
        iat: now,
        iss: issuer.issuer.clone(),
        jti: Some(uuid::Uuid::new_v4().to_string()),
        kubernetes: KubernetesClaims {
            namespace: namespace.clone(),
            node: bound.node,
            pod: bound.pod,
            secret: bound.secret,
            serviceaccount: Ref {
                name: name.clone(),
                uid: account.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string(),
            },
            warnafter: warn_after,
        },
        nbf: now,
        sub: format!("{USER_PREFIX}{namespace}:{name}"),
    };
    let token = sign(&issuer, &claims)?;
    let created = rfc3339(now);
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!(KIND);
    req["metadata"] = json!({"name": name, "namespace": namespace, "creationTimestamp": created});
    req["spec"]["audiences"] = json!(audiences);
    req["spec"]["expirationSeconds"] = json!(expiration);
    if bound_ref.is_none()
        && let Some(spec) = req["spec"].as_object_mut()
    {
        spec.remove("boundObjectRef");
    }
    // Upstream reports the requested lifetime, not the extended one.
    req["status"] = json!({"token": token, "expirationTimestamp": rfc3339(now + expiration)});
    Ok(response::json(201, &req))
}

fn sign(issuer: &TokenIssuer, claims: &Claims) -> Result<String, ApiError> {
    issuer.key.sign(claims).map_err(|e| ApiError::internal(format!("failed to generate token: {e}")))
}

fn rfc3339(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds).map(|t| t.to_string()).unwrap_or_default()
}

/// Finds the object a token is to be bound to (a Pod, Secret or Node) and checks it as upstream.
async fn bound_object(call: &Call<'_>, namespace: &str, account: &str, r: &Value) -> Result<Bound, ApiError> {
    let text = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let (kind, api_version, obj_name, uid) = (text("kind"), text("apiVersion"), text("name"), text("uid"));
    if api_version != "v1" || !matches!(kind.as_str(), "Pod" | "Secret" | "Node") {
        let gvk = match api_version.split_once('/') {
            Some((group, version)) => format!("{group}/{version}, Kind={kind}"),
            None => format!("/{api_version}, Kind={kind}"),
        };
        return Err(ApiError::bad_request(format!("cannot bind token to object of type {gvk}")));
    }
    let registry = call.srv.registry();
    let read = |plural: &'static str, ns: Option<String>, name: String| {
        let rt = registry.lookup("", "v1", plural).expect("core resources are served").clone();
        async move { call.srv.read(&rt, ns.as_deref(), &name).await.map(|(obj, _)| obj) }
    };
    let uid_of = |obj: &Value| obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut bound = Bound { pod: None, secret: None, node: None };
    let actual_uid = match kind.as_str() {
        "Pod" => {
            let pod = read("pods", Some(namespace.to_string()), obj_name.clone()).await?;
            let runs_as = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or_default();
            if runs_as != account {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {account:?} to pod running with different serviceaccount name."
                )));
            }
            // The pod's node goes into the token for information; a node not found still
            // leaves its name.
            if let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                let node_uid = match read("nodes", None, node.to_string()).await {
                    Ok(n) => uid_of(&n),
                    Err(e) if e.code == 404 => String::new(),
                    Err(e) => return Err(e),
                };
                bound.node = Some(Ref { name: node.to_string(), uid: node_uid });
            }
            let uid = uid_of(&pod);
            bound.pod = Some(Ref { name: obj_name.clone(), uid: uid.clone() });
            uid
        }
        "Secret" => {
            let secret = read("secrets", Some(namespace.to_string()), obj_name.clone()).await?;
            let uid = uid_of(&secret);
            bound.secret = Some(Ref { name: obj_name.clone(), uid: uid.clone() });
            uid
        }
        _ => {
            let node = read("nodes", None, obj_name.clone()).await?;
            let uid = uid_of(&node);
            bound.node = Some(Ref { name: obj_name.clone(), uid: uid.clone() });
            uid
        }
    };
    if !uid.is_empty() && uid != actual_uid {
        return Err(ApiError::conflict(
            tug_api::status::Subject { group: "", resource: &kind, kind: &kind },
            &obj_name,
            &format!(
                "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    Ok(bound)
}
