//! Registry credentials, and the `.dockerconfigjson` / `.dockercfg` documents of
//! `kubernetes.io/dockerconfigjson` Secrets (imagePullSecrets) they come from, matched to an image
//! as the kubelet's credential keyring matches them.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

use super::reference::Reference;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid docker config JSON")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid \"auth\" field for registry {registry}: expected base64 of user:password")]
    InvalidAuthField { registry: String },
}

/// Credentials for one registry. The debug form never shows secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password: sent as HTTP basic auth, or exchanged for a bearer token when the
    /// registry's `WWW-Authenticate` challenge asks for one.
    Basic { username: String, password: String },
    /// A registry token used as the bearer token directly.
    Bearer { token: String },
}

impl Credentials {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials::Basic { username: username.into(), password: password.into() }
    }

    pub(crate) fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
            Credentials::Bearer { token } => RegistryAuth::Bearer(token.clone()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Bearer { .. } => f.write_str("Bearer(<redacted>)"),
        }
    }
}

#[derive(serde::Deserialize)]
struct ConfigEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// Parsed docker config: registry keys (`host[:port][/path]`, possibly a URL or a `*.` glob)
/// with their credentials.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    entries: Vec<(Key, Credentials)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    host: String,
    port: Option<String>,
    path: String,
}

impl DockerConfig {
    /// Parses `.dockerconfigjson` (`{"auths": {...}}`) or the legacy `.dockercfg` (the map alone).
    pub fn parse(json: &[u8]) -> Result<Self, AuthError> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|source| AuthError::Json { source })?;
        let auths = match value.get("auths") {
            Some(auths) => auths.clone(),
            None => value,
        };
        let map: BTreeMap<String, ConfigEntry> =
            serde_json::from_value(auths).map_err(|source| AuthError::Json { source })?;
        let mut entries = Vec::new();
        for (registry, entry) in map {
            let credentials = if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
                Credentials::Bearer { token }
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let invalid = || AuthError::InvalidAuthField { registry: registry.clone() };
                let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| invalid())?;
                let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
                let (username, password) = decoded.split_once(':').ok_or_else(invalid)?;
                Credentials::basic(username, password)
            } else {
                Credentials::basic(entry.username.unwrap_or_default(), entry.password.unwrap_or_default())
            };
            entries.push((Key::parse(&registry), credentials));
        }
        // Most specific first, as the kubelet's keyring orders them: longer paths, then hosts.
        entries.sort_by_key(|(key, _)| std::cmp::Reverse((key.path.len(), key.host.len())));
        Ok(DockerConfig { entries })
    }

    /// The credentials that apply to `reference`, most specific first (the kubelet tries each in
    /// turn, then an anonymous pull).
    pub fn lookup(&self, reference: &Reference) -> Vec<Credentials> {
        let image = Key::parse(&format!("{}/{}", reference.registry(), reference.repository()));
        self.entries.iter().filter(|(key, _)| key.matches(&image)).map(|(_, c)| c.clone()).collect()
    }
}

impl Key {
    fn parse(raw: &str) -> Self {
        let raw = raw.trim();
        let without_scheme = raw.split_once("://").map_or(raw, |(_, rest)| rest);
        let (host_port, path) = without_scheme.split_once('/').unwrap_or((without_scheme, ""));
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                (host, Some(port.to_owned()))
            }
            _ => (host_port, None),
        };
        let mut host = host.to_ascii_lowercase();
        let mut path = path.trim_end_matches('/').to_owned();
        // Docker Hub goes by several names; "https://index.docker.io/v1/" is its classic key.
        if matches!(host.as_str(), "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com") {
            host = "docker.io".to_owned();
        }
        if host == "docker.io" && matches!(path.as_str(), "v1" | "v2") {
            path.clear();
        }
        Key { host, port, path }
    }

    /// Whether this config key covers `image` (a key parsed from `registry/repository`): hosts
    /// match label by label with `*` matching one label, ports must be equal, and the key's path
    /// must be a prefix of the repository path, segment by segment.
    fn matches(&self, image: &Key) -> bool {
        let key_labels: Vec<&str> = self.host.split('.').collect();
        let image_labels: Vec<&str> = image.host.split('.').collect();
        if key_labels.len() != image_labels.len()
            || !key_labels.iter().zip(&image_labels).all(|(k, i)| *k == "*" || k == i)
        {
            return false;
        }
        if self.port != image.port {
            return false;
        }
        self.path.is_empty()
            || image.path == self.path
            || image.path.strip_prefix(&self.path).is_some_and(|rest| rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::reference::parse;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn dockerconfigjson_auth_field_and_plain_fields_parse() {
        let json = format!(
            r#"{{"auths": {{
                "127.0.0.1:5001": {{"auth": "{}"}},
                "registry.example.com": {{"username": "u", "password": "p", "email": "e@x"}}
            }}}}"#,
            b64("alice:s3cr:et")
        );
        let config = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(
            config.lookup(&parse("127.0.0.1:5001/tugboat.test/busybox:1").unwrap()),
            vec![Credentials::basic("alice", "s3cr:et")]
        );
        assert_eq!(config.lookup(&parse("registry.example.com/app").unwrap()), vec![Credentials::basic("u", "p")]);
        assert!(config.lookup(&parse("127.0.0.1:5000/busybox").unwrap()).is_empty(), "the port must match");
        assert!(config.lookup(&parse("busybox").unwrap()).is_empty());
    }

    #[test]
    fn legacy_dockercfg_and_docker_hub_keys() {
        let json = format!(r#"{{"https://index.docker.io/v1/": {{"auth": "{}"}}}}"#, b64("hub:pw"));
        let config = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(config.lookup(&parse("busybox").unwrap()), vec![Credentials::basic("hub", "pw")]);
        assert_eq!(config.lookup(&parse("docker.io/user/app:1").unwrap()).len(), 1);
    }

    #[test]
    fn globs_and_paths_narrow_the_match_and_specific_keys_come_first() {
        let json = r#"{"auths": {
            "*.example.com": {"username": "glob", "password": "1"},
            "registry.example.com/team": {"username": "team", "password": "2"},
            "registry.example.com/team/app": {"registrytoken": "tok"}
        }}"#;
        let config = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(
            config.lookup(&parse("registry.example.com/team/app:1").unwrap()),
            vec![
                Credentials::Bearer { token: "tok".into() },
                Credentials::basic("team", "2"),
                Credentials::basic("glob", "1")
            ]
        );
        assert_eq!(
            config.lookup(&parse("registry.example.com/teamx/app").unwrap()),
            vec![Credentials::basic("glob", "1")],
            "a path matches whole segments only"
        );
        assert!(config.lookup(&parse("a.b.example.com/x").unwrap()).is_empty(), "* is one label");
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(matches!(DockerConfig::parse(b"not json"), Err(AuthError::Json { .. })));
        let bad_auth = format!(r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#, b64("no-colon"));
        assert!(matches!(DockerConfig::parse(bad_auth.as_bytes()), Err(AuthError::InvalidAuthField { .. })));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let shown =
            format!("{:?}", [Credentials::basic("alice", "hunter2"), Credentials::Bearer { token: "t0k".into() }]);
        assert!(shown.contains("alice"));
        assert!(!shown.contains("hunter2") && !shown.contains("t0k"));
    }
}
