//! What a request asks for, read from its method, path and query as upstream's
//! `RequestInfoFactory` reads them.

use std::collections::HashMap;

use http::Method;
use tug_api::ApiError;

/// The subresources of a namespace, which upstream parses as `namespaces/<name>/<sub>` rather
/// than as a resource inside the namespace.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// The verb of a resource request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A request for a resource (as opposed to discovery, health or OpenAPI paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRequest {
    pub verb: Verb,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Every kind of path the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`
    ResourceList {
        group: String,
        version: String,
    },
    Resource(ResourceRequest),
    Version,
    Health(String),
    Metrics,
    OpenApiV2,
    OpenApiV3Root,
    OpenApiV3 {
        group: String,
        version: String,
    },
    NotFound,
}

/// Classifies a request path.
pub fn route(method: &Method, path: &str, query: &Query) -> Result<Route, ApiError> {
    let trimmed = path.trim_end_matches('/');
    let parts: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
    Ok(match parts.as_slice() {
        ["version"] => Route::Version,
        [p @ ("healthz" | "livez" | "readyz"), ..] => Route::Health(p.to_string()),
        ["metrics"] => Route::Metrics,
        ["openapi", "v2"] | ["swagger.json"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3Root,
        ["openapi", "v3", "api", v] => Route::OpenApiV3 { group: String::new(), version: v.to_string() },
        ["openapi", "v3", "apis", g, v] => Route::OpenApiV3 { group: g.to_string(), version: v.to_string() },
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", g] => Route::Group(g.to_string()),
        ["api", v] => Route::ResourceList { group: String::new(), version: v.to_string() },
        ["apis", g, v] => Route::ResourceList { group: g.to_string(), version: v.to_string() },
        ["api", v, rest @ ..] => resource_route(method, "", v, rest, query)?,
        ["apis", g, v, rest @ ..] => resource_route(method, g, v, rest, query)?,
        _ => Route::NotFound,
    })
}

fn resource_route(
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &Query,
) -> Result<Route, ApiError> {
    let mut parts = rest;
    let mut watch = false;
    if parts.first() == Some(&"watch") {
        watch = true;
        parts = &parts[1..];
    }
    let mut namespace = None;
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        namespace = Some(parts[1].to_string());
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts = &parts[2..];
        }
    }
    let (resource, name, subresource) = match parts {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        // `<resource>/<name>/proxy/<path...>`: the rest of the path is the proxied backend's.
        [r, n, "proxy", ..] => (*r, Some(n.to_string()), Some("proxy".to_string())),
        _ => return Ok(Route::NotFound),
    };
    if resource == "namespaces" {
        // `namespaces/<name>` names the namespace object itself, not a namespace scope.
        namespace = None;
    }
    let verb = match *method {
        Method::GET | Method::HEAD => {
            if watch || query.flag("watch") {
                Verb::Watch
            } else if name.is_some() {
                Verb::Get
            } else {
                Verb::List
            }
        }
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH => Verb::Patch,
        Method::DELETE if name.is_some() => Verb::Delete,
        Method::DELETE => Verb::DeleteCollection,
        _ => {
            return Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: format!("the server does not allow this method on the requested resource ({method})"),
                details: None,
            });
        }
    };
    Ok(Route::Resource(ResourceRequest {
        verb,
        group: group.to_string(),
        version: version.to_string(),
        resource: resource.to_string(),
        namespace,
        name,
        subresource,
    }))
}

/// Decoded query parameters (last value wins, as Go's `url.Values.Get` picks the first; kubectl
/// never repeats them).
#[derive(Debug, Clone, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let mut map = HashMap::new();
        if let Some(q) = raw {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        Query(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A boolean parameter: present and `true` / `1`.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    /// An integer parameter; a malformed one is a `BadRequest` naming it.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value {v:?} for query parameter {key}: must be an integer"))
            }),
        }
    }

    /// `dryRun=All` (the only value upstream accepts).
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => {
                Err(ApiError::bad_request(format!("Invalid dry run value: {other:?}: supported values: \"All\"")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str, q: &str) -> ResourceRequest {
        match route(&method, path, &Query::parse(Some(q))).unwrap() {
            Route::Resource(r) => r,
            other => panic!("not a resource route: {other:?}"),
        }
    }

    #[test]
    fn namespaced_object_paths() {
        let r = req(Method::GET, "/apis/apps/v1/namespaces/default/deployments/web/scale", "");
        assert_eq!(r.verb, Verb::Get);
        assert_eq!((r.group.as_str(), r.resource.as_str()), ("apps", "deployments"));
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("scale"));
    }

    #[test]
    fn namespace_object_and_its_subresources() {
        let r = req(Method::GET, "/api/v1/namespaces/kube-system", "");
        assert_eq!((r.resource.as_str(), r.name.as_deref(), r.namespace), ("namespaces", Some("kube-system"), None));
        let r = req(Method::PUT, "/api/v1/namespaces/x/finalize", "");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.subresource.as_deref()),
            ("namespaces", Some("x"), Some("finalize"))
        );
        assert_eq!(r.verb, Verb::Update);
    }

    #[test]
    fn watch_by_parameter_and_by_legacy_prefix() {
        assert_eq!(req(Method::GET, "/api/v1/pods", "watch=true").verb, Verb::Watch);
        let r = req(Method::GET, "/api/v1/watch/namespaces/a/pods", "");
        assert_eq!((r.verb, r.namespace.as_deref()), (Verb::Watch, Some("a")));
    }

    #[test]
    fn delete_without_name_is_deletecollection() {
        assert_eq!(req(Method::DELETE, "/api/v1/namespaces/a/pods", "").verb, Verb::DeleteCollection);
        assert_eq!(req(Method::DELETE, "/api/v1/namespaces/a/pods/p", "").verb, Verb::Delete);
    }

    #[test]
    fn non_resource_paths() {
        let q = Query::default();
        assert_eq!(route(&Method::GET, "/apis/apps", &q).unwrap(), Route::Group("apps".into()));
        assert_eq!(route(&Method::GET, "/readyz", &q).unwrap(), Route::Health("readyz".into()));
        assert_eq!(
            route(&Method::GET, "/openapi/v3/apis/apps/v1", &q).unwrap(),
            Route::OpenApiV3 { group: "apps".into(), version: "v1".into() }
        );
    }
}
