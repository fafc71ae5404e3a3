//! Resource handlers: one module per group of verbs, all sharing [`Call`], the parsed request.

mod apply;
pub(crate) mod delete;
mod read;
mod subresource;
mod watch;
mod write;

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use serde_json::Value;
use tug_api::{ApiError, ResourceType};

use crate::authn::UserInfo;
use crate::codec::{self, Accept};
use crate::request::{Query, ResourceRequest, Verb};
use crate::response::{self, Body};
use crate::server::ApiServer;

/// One resource request, parsed and authenticated.
pub(crate) struct Call<'a> {
    pub srv: &'a ApiServer,
    pub rt: &'a Arc<ResourceType>,
    pub req: &'a ResourceRequest,
    pub query: &'a Query,
    pub accept: Accept,
    pub content_type: Option<String>,
    /// The `User-Agent` header: the default field manager of writes.
    pub user_agent: Option<String>,
    pub body: Bytes,
    #[allow(dead_code)] // authorization arrives with RBAC
    pub user: &'a UserInfo,
}

impl Call<'_> {
    pub fn ns(&self) -> Option<&str> {
        if self.rt.namespaced { self.req.namespace.as_deref() } else { None }
    }

    pub fn name(&self) -> &str {
        self.req.name.as_deref().unwrap_or("")
    }

    /// An object response in the negotiated form.
    pub fn object(&self, code: u16, obj: &Value) -> Response<Body> {
        match self.accept {
            Accept::Yaml => response::yaml(code, obj),
            Accept::Table => {
                let list_meta = serde_json::json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or_default()});
                response::json(code, &read::table_of(self, std::slice::from_ref(obj), list_meta))
            }
            _ => response::json(code, obj),
        }
    }
}

/// Serves a request for a resource or one of its subresources.
pub(crate) async fn serve(call: Call<'_>) -> Result<Response<Body>, ApiError> {
    let verb = call.req.verb;
    if !call.rt.namespaced && call.req.namespace.is_some() {
        // Cluster-scoped resources have no paths under a namespace.
        return Err(ApiError::path_not_found());
    }
    if let Some(sub) = call.req.subresource.as_deref() {
        if !call.rt.has_subresource(sub) {
            return Err(ApiError::path_not_found());
        }
        return subresource::serve(&call, sub).await;
    }
    if !call.rt.supports(verb.as_str()) {
        return Err(ApiError::method_not_allowed(verb.as_str(), call.rt.subject()));
    }
    if call.rt.namespaced && call.req.namespace.is_none() && !matches!(verb, Verb::List | Verb::Watch) {
        // Writes and gets of namespaced objects need a namespace in the path.
        return Err(ApiError::path_not_found());
    }
    match verb {
        Verb::Get => read::get(&call).await,
        Verb::List => read::list(&call).await,
        Verb::Watch => watch::watch(&call).await,
        Verb::Create => write::create(&call).await,
        Verb::Update => write::update(&call, None).await,
        Verb::Patch => write::patch(&call, None).await,
        Verb::Delete => delete::delete(&call).await,
        Verb::DeleteCollection => delete::delete_collection(&call).await,
    }
}

/// Decodes the request body as an object.
pub(crate) fn body_object(call: &Call<'_>) -> Result<Value, ApiError> {
    if call.body.is_empty() {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    let v = codec::decode_body(call.content_type.as_deref(), &call.body)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    Ok(v)
}
