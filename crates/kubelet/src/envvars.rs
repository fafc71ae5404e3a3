//! A container's environment as upstream's kubelet builds it (`makeEnvironmentVariables`):
//! service link variables, `envFrom`, then `env` with `$(VAR)` expansion and `valueFrom`
//! sources, plus upstream's `$(VAR)` expansion itself (the `expansion` package), which the pod
//! worker also applies to command and args.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};

use crate::volumemanager::downward_api::{self, FieldError, NodeAllocatable};
use crate::volumemanager::source::{KubeSource, ObjectSource, SourceError};

/// What a container's environment is computed from besides the pod spec.
pub struct EnvContext<'a> {
    pub pod: &'a Pod,
    pub node_name: &'a str,
    pub host_ip: &'a str,
    pub pod_ips: &'a [String],
}

/// Why a container's environment cannot be built; the Display is the message upstream puts in
/// the `CreateContainerConfigError` waiting state.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound { name: String },
    #[error("secret \"{name}\" not found")]
    SecretNotFound { name: String },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    MissingConfigMapKey { key: String, namespace: String, name: String },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    MissingSecretKey { key: String, namespace: String, name: String },
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The container's environment in upstream's order: service link variables (when
/// enableServiceLinks, from the Services of the namespace plus the master service
/// `kubernetes` in default), envFrom (prefix, optional), env (value with $(VAR) expansion over
/// what came before, valueFrom fieldRef/resourceFieldRef/configMapKeyRef/secretKeyRef).
pub async fn container_env(
    client: &kube::Client,
    ctx: &EnvContext<'_>,
    container: &Container,
) -> Result<Vec<(String, String)>, EnvError> {
    let node = NodeAllocatable::of_machine(std::path::Path::new("/"));
    container_env_from(&KubeSource(client.clone()), ctx, container, &node).await
}

/// An ordered map: a later value for a name replaces the earlier one in place.
#[derive(Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, name: String, value: String) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// [`container_env`] with the API objects from any [`ObjectSource`] and the node's resources
/// (for resourceFieldRef limits the container leaves unset).
pub async fn container_env_from(
    source: &dyn ObjectSource,
    ctx: &EnvContext<'_>,
    container: &Container,
    node: &NodeAllocatable,
) -> Result<Vec<(String, String)>, EnvError> {
    let pod = ctx.pod;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let service_env = service_env(source, pod).await?;

    let mut config_maps: BTreeMap<String, Option<ConfigMap>> = BTreeMap::new();
    let mut secrets: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    let mut env = EnvList::default();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let cm = config_map(source, &mut config_maps, namespace, &r.name).await?;
            match cm {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        env.set(format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapNotFound { name: r.name.clone() }),
            }
        } else if let Some(r) = &from.secret_ref {
            match secret(source, &mut secrets, namespace, &r.name).await? {
                Some(secret) => {
                    for (k, v) in secret.data.iter().flatten() {
                        env.set(format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::SecretNotFound { name: r.name.clone() }),
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) if !value.is_empty() => expand_with(value, |name| {
                env.get(name)
                    .or_else(|| service_env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()))
                    .map(str::to_owned)
            }),
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    pod_field_value(ctx, &field.field_path)?
                } else if let Some(resource) = &from.resource_field_ref {
                    let target = match resource.container_name.as_deref().filter(|n| !n.is_empty()) {
                        Some(name) => downward_api::find_container(pod, name)
                            .ok_or_else(|| FieldError::ContainerNotFound(name.to_owned()))?,
                        None => container,
                    };
                    downward_api::container_resource_value(resource, target, node)?
                } else if let Some(key_ref) = &from.config_map_key_ref {
                    let optional = key_ref.optional == Some(true);
                    let cm = config_map(source, &mut config_maps, namespace, &key_ref.name).await?;
                    let Some(cm) = cm else {
                        if optional {
                            continue;
                        }
                        return Err(EnvError::ConfigMapNotFound { name: key_ref.name.clone() });
                    };
                    match cm.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => {
                            return Err(EnvError::MissingConfigMapKey {
                                key: key_ref.key.clone(),
                                namespace: namespace.to_owned(),
                                name: key_ref.name.clone(),
                            });
                        }
                    }
                } else if let Some(key_ref) = &from.secret_key_ref {
                    let optional = key_ref.optional == Some(true);
                    let Some(s) = secret(source, &mut secrets, namespace, &key_ref.name).await? else {
                        if optional {
                            continue;
                        }
                        return Err(EnvError::SecretNotFound { name: key_ref.name.clone() });
                    };
                    match s.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(EnvError::MissingSecretKey {
                                key: key_ref.key.clone(),
                                namespace: namespace.to_owned(),
                                name: key_ref.name.clone(),
                            });
                        }
                    }
                } else {
                    String::new()
                }
            }
            _ => String::new(),
        };
        env.set(var.name.clone(), value);
    }

    // Service variables come first; the container's own variables win a name clash.
    let mut result: Vec<(String, String)> = service_env.into_iter().filter(|(k, _)| env.get(k).is_none()).collect();
    result.extend(env.0);
    Ok(result)
}

async fn config_map(
    source: &dyn ObjectSource,
    cache: &mut BTreeMap<String, Option<ConfigMap>>,
    namespace: &str,
    name: &str,
) -> Result<Option<ConfigMap>, EnvError> {
    if let Some(found) = cache.get(name) {
        return Ok(found.clone());
    }
    let found = source.config_map(namespace, name).await?;
    cache.insert(name.to_owned(), found.clone());
    Ok(found)
}

async fn secret(
    source: &dyn ObjectSource,
    cache: &mut BTreeMap<String, Option<Secret>>,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, EnvError> {
    if let Some(found) = cache.get(name) {
        return Ok(found.clone());
    }
    let found = source.secret(namespace, name).await?;
    cache.insert(name.to_owned(), found.clone());
    Ok(found)
}

/// Upstream's `podFieldSelectorRuntimeValue`: the node and status fields, then the metadata
/// fields the downward API volume also offers.
fn pod_field_value(ctx: &EnvContext<'_>, field_path: &str) -> Result<String, FieldError> {
    let spec = ctx.pod.spec.as_ref();
    Ok(match field_path {
        "spec.nodeName" => ctx.node_name.to_owned(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" => ctx.host_ip.to_owned(),
        "status.hostIPs" => {
            let ips: Vec<String> = ctx
                .pod
                .status
                .as_ref()
                .and_then(|s| s.host_ips.as_ref())
                .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
                .filter(|ips: &Vec<String>| !ips.is_empty())
                .unwrap_or_else(|| vec![ctx.host_ip.to_owned()]);
            ips.join(",")
        }
        "status.podIP" => ctx.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => ctx.pod_ips.join(","),
        other => downward_api::pod_metadata_field(ctx.pod, other)?,
    })
}

/// Upstream's `makeEnvVariableName`: upper case, `-` as `_`.
fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

fn service_ip_set(service: &Service) -> bool {
    let ip = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).unwrap_or_default();
    !ip.is_empty() && ip != "None"
}

/// The Services whose variables the container gets (upstream's `getServiceEnvVarMap`): the
/// master service `kubernetes` of `default` always, the namespace's Services with
/// `enableServiceLinks` (default true); by name, a namespace's Service winning over the master.
async fn service_env(source: &dyn ObjectSource, pod: &Pod) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
    let mut by_name: BTreeMap<String, Service> = BTreeMap::new();
    if links {
        for service in source.services(namespace).await? {
            if service_ip_set(&service) {
                by_name.insert(service.metadata.name.clone().unwrap_or_default(), service);
            }
        }
    }
    if !(links && namespace == "default") {
        let master =
            source.services("default").await?.into_iter().find(|s| s.metadata.name.as_deref() == Some("kubernetes"));
        if let Some(master) = master.filter(service_ip_set) {
            by_name.entry("kubernetes".to_owned()).or_insert(master);
        }
    }
    Ok(by_name.values().flat_map(service_variables).collect())
}

/// Upstream's `envvars.FromServices` for one Service: `_SERVICE_HOST`, `_SERVICE_PORT`, named
/// ports, and the docker link variables.
fn service_variables(service: &Service) -> Vec<(String, String)> {
    let Some(spec) = &service.spec else { return Vec::new() };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else { return Vec::new() };
    let ip = spec.cluster_ip.clone().unwrap_or_default();
    let prefix = env_name(service.metadata.name.as_deref().unwrap_or_default());
    let mut vars = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.clone()),
        (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for port in ports {
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            vars.push((format!("{prefix}_SERVICE_PORT_{}", env_name(name)), port.port.to_string()));
        }
    }
    let host = |port: i32| if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
    for (i, port) in ports.iter().enumerate() {
        let protocol = port.protocol.as_deref().filter(|p| !p.is_empty()).unwrap_or("TCP");
        let lower = protocol.to_lowercase();
        let url = format!("{lower}://{}", host(port.port));
        if i == 0 {
            vars.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
        vars.push((port_prefix.clone(), url));
        vars.push((format!("{port_prefix}_PROTO"), lower));
        vars.push((format!("{port_prefix}_PORT"), port.port.to_string()));
        vars.push((format!("{port_prefix}_ADDR"), ip.clone()));
    }
    vars
}

/// `$(VAR)` expansion as upstream's expansion package (`$$` escapes, unknown stays literal).
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    expand_with(input, |name| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

/// [`expand`] over any lookup; `None` leaves the reference as written.
pub fn expand_with(input: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match after.chars().next() {
            // A trailing `$` is kept as is.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                // An unclosed reference stays literal.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[path = "envvars_tests.rs"]
mod tests;
