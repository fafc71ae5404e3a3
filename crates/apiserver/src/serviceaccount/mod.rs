//! Service accounts in the API server: the identities pods run as.
//!
//! - [`jwt`]: the signing key and the tokens' claims (upstream's `pkg/serviceaccount`).
//! - TokenRequest (`serviceaccounts/<name>/token`, upstream's
//!   `pkg/registry/core/serviceaccount/storage/token.go`): issues bound tokens.
//! - The token authenticator: a bearer token this server signed is the service account it names,
//!   as long as that account, and the object the token is bound to, still exist with the uid the
//!   token recorded.
//! - ServiceAccount admission (upstream's `plugin/pkg/admission/serviceaccount`): pods run as
//!   `default` unless they name an account, the account must exist, and the token, CA bundle
//!   and namespace are mounted into every container through a projected volume.
//! - Service account issuer discovery: `/.well-known/openid-configuration` and
//!   `/openid/v1/jwks`, so that other systems can verify the tokens.

mod admission;
pub mod jwt;
mod token_request;

use std::sync::Arc;

use serde_json::{Value, json};
use tracing::debug;
use tug_api::ApiError;

use crate::authn::{AUTHENTICATED_GROUP, UserInfo};
use crate::server::ApiServer;
use jwt::{Claims, TokenError};
pub use jwt::{KeyError, SigningKey};
pub(crate) use token_request::create_token;

/// The issuer upstream and k3s use by default (`--service-account-issuer`).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const JWKS_PATH: &str = "/openid/v1/jwks";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// The prefix of service account user names.
pub const USER_PREFIX: &str = "system:serviceaccount:";
/// The group of every service account, and the prefix of each namespace's group.
pub const ALL_GROUP: &str = "system:serviceaccounts";

/// What signs and accepts service account tokens.
#[derive(Debug)]
pub struct TokenIssuer {
    pub key: SigningKey,
    /// The `iss` of tokens issued here.
    pub issuer: String,
    /// Audiences the server accepts, and gives tokens that ask for none (`--api-audiences`,
    /// upstream's default being the issuer).
    pub audiences: Vec<String>,
}

impl TokenIssuer {
    /// The default issuer, accepting its own name as audience.
    pub fn new(key: SigningKey) -> Self {
        TokenIssuer { key, issuer: DEFAULT_ISSUER.into(), audiences: vec![DEFAULT_ISSUER.into()] }
    }

    /// The OpenID discovery document of upstream's service account issuer discovery.
    pub fn discovery_document(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}{JWKS_PATH}", self.issuer.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [jwt::ALGORITHM],
        })
    }
}

/// The user a service account authenticates as.
pub fn user_info(namespace: &str, name: &str, uid: &str) -> UserInfo {
    UserInfo {
        name: format!("{USER_PREFIX}{namespace}:{name}"),
        groups: vec![ALL_GROUP.into(), format!("{ALL_GROUP}:{namespace}"), AUTHENTICATED_GROUP.into()],
        uid: Some(uid.to_string()).filter(|u| !u.is_empty()),
    }
}

/// Why a token's claims no longer hold against the cluster's objects.
#[derive(Debug, thiserror::Error)]
enum StaleToken {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{kind} {namespace}/{name} has been deleted")]
    Deleted { kind: &'static str, namespace: String, name: String },
    #[error("{kind} {name} uid ({actual}) does not match the token's ({claimed})")]
    UidMismatch { kind: &'static str, name: String, actual: String, claimed: String },
    #[error("looking up {kind} {name}")]
    Lookup {
        kind: &'static str,
        name: String,
        #[source]
        source: ApiError,
    },
}

/// An object deleted longer ago than this no longer backs a token: the grace lets a pod being
/// deleted finish with its credentials, as upstream.
const DELETION_GRACE_SECONDS: i64 = 60;

impl ApiServer {
    /// Sets the service account token issuer; without one, TokenRequest is not served and no
    /// token is accepted. Only the first call has an effect.
    pub fn set_token_issuer(&self, issuer: TokenIssuer) {
        let _ = self.token_issuer.set(Arc::new(issuer));
    }

    pub(crate) fn token_issuer(&self) -> Option<&Arc<TokenIssuer>> {
        self.token_issuer.get()
    }

    /// Serves issuer discovery: the OpenID configuration and the key set.
    pub(crate) fn service_account_discovery(&self, path: &str) -> Option<Result<Value, ApiError>> {
        if path != DISCOVERY_PATH && path != JWKS_PATH {
            return None;
        }
        let Some(issuer) = self.token_issuer() else { return Some(Err(ApiError::path_not_found())) };
        Some(Ok(if path == JWKS_PATH { issuer.key.jwks() } else { issuer.discovery_document() }))
    }

    /// The service account a bearer token of ours names, or `None` when it is not a token of
    /// ours or no longer valid (the request then fails with 401).
    pub(crate) async fn authenticate_service_account_token(&self, token: &str) -> Option<UserInfo> {
        let issuer = self.token_issuer()?;
        // Tokens of other issuers are for other authenticators; upstream's checks the issuer
        // before anything else too.
        if jwt::unverified_issuer(token).as_deref() != Some(issuer.issuer.as_str()) {
            return None;
        }
        match self.check_service_account_token(issuer, token).await {
            Ok(user) => Some(user),
            Err(e) => {
                debug!(error = %e, "service account token rejected");
                None
            }
        }
    }

    async fn check_service_account_token(&self, issuer: &TokenIssuer, token: &str) -> Result<UserInfo, StaleToken> {
        let claims = issuer.key.verify(token)?;
        if claims.iss != issuer.issuer {
            return Err(TokenError::Issuer(claims.iss).into());
        }
        let now = jiff::Timestamp::now().as_second();
        claims.check(now, &issuer.audiences)?;
        self.check_bound_objects(&claims, now).await?;
        let k = &claims.kubernetes;
        Ok(user_info(&k.namespace, &k.serviceaccount.name, &k.serviceaccount.uid))
    }

    /// Upstream's validator: the account and every object the token is bound to exist, are not
    /// long deleted, and have the uid the token recorded.
    async fn check_bound_objects(&self, claims: &Claims, now: i64) -> Result<(), StaleToken> {
        let k = &claims.kubernetes;
        let ns = k.namespace.as_str();
        self.check_bound("serviceaccounts", "ServiceAccount", Some(ns), &k.serviceaccount, now).await?;
        if let Some(secret) = &k.secret {
            self.check_bound("secrets", "Secret", Some(ns), secret, now).await?;
        }
        if let Some(pod) = &k.pod {
            self.check_bound("pods", "Pod", Some(ns), pod, now).await?;
        } else if let Some(node) = &k.node {
            // A pod-bound token names its pod's node for information only.
            self.check_bound("nodes", "Node", None, node, now).await?;
        }
        Ok(())
    }

    async fn check_bound(
        &self,
        plural: &str,
        kind: &'static str,
        ns: Option<&str>,
        bound: &jwt::Ref,
        now: i64,
    ) -> Result<(), StaleToken> {
        let registry = self.registry();
        let rt = registry.lookup("", "v1", plural).expect("core resources are served");
        let deleted =
            || StaleToken::Deleted { kind, namespace: ns.unwrap_or_default().to_string(), name: bound.name.clone() };
        let obj = match self.read(rt, ns, &bound.name).await {
            Ok((obj, _)) => obj,
            Err(e) if e.code == 404 => return Err(deleted()),
            Err(source) => return Err(StaleToken::Lookup { kind, name: bound.name.clone(), source }),
        };
        let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
        if uid != bound.uid {
            return Err(StaleToken::UidMismatch {
                kind,
                name: bound.name.clone(),
                actual: uid.to_string(),
                claimed: bound.uid.clone(),
            });
        }
        let deleted_at = obj
            .pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if deleted_at.is_some_and(|t| t.as_second() < now - DELETION_GRACE_SECONDS) {
            return Err(deleted());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_user_has_upstream_name_and_groups() {
        let user = user_info("team-a", "builder", "u-1");
        assert_eq!(user.name, "system:serviceaccount:team-a:builder");
        assert_eq!(
            user.groups,
            vec!["system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"]
        );
        assert_eq!(user.uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn discovery_document_points_at_the_key_set() {
        let issuer = TokenIssuer::new(SigningKey::generate().unwrap());
        let doc = issuer.discovery_document();
        assert_eq!(doc["issuer"], DEFAULT_ISSUER);
        assert_eq!(doc["jwks_uri"], format!("{DEFAULT_ISSUER}/openid/v1/jwks"));
        assert_eq!(doc["id_token_signing_alg_values_supported"], json!(["ES256"]));
    }
}
