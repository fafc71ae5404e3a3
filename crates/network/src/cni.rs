//! Delegation of the pod network to standard CNI plugins (CNI spec 1.0.0 / 0.4.0), the way
//! containerd's CRI plugin drives them through go-cni and libcni.
//!
//! The network configuration is the lexically first valid `*.conf`, `*.conflist` or `*.json`
//! file in the configuration directory, re-read on every attach (containerd watches the
//! directory for changes). A sandbox joining the network first gets its loopback interface up
//! through the `loopback` plugin (containerd always adds that network), then each plugin of
//! the list runs in order, each seeing the previous one's result as `prevResult`.
//!
//! # On-disk state (`state_dir`)
//!
//! ```text
//! results/<sandbox>.json   the configuration, netns path, hostPorts and final result of the
//!                          sandbox's ADD (libcni's result cache), used by DEL and CHECK
//! ```

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::{AttachRequest, Attachment, HostPort, NetworkError, NetworkStatus, PodNetwork};

/// The interface name pods see (containerd's default).
const POD_INTERFACE: &str = "eth0";
/// How long one plugin invocation may take before it is killed.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The extensions libcni's `ConfFiles` accepts, as containerd asks for them.
const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("cni plugin not initialized: no network config found in {}", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("invalid CNI network config {}: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("failed to find plugin {plugin:?} in path {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("plugin type={plugin:?} failed (code {code}): {msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
    Plugin { plugin: String, code: u32, msg: String, details: String },
    #[error("running CNI plugin {plugin:?}: {source}")]
    Exec { plugin: String, source: std::io::Error },
    #[error("CNI plugin {plugin:?} returned an invalid result: {reason}")]
    InvalidResult { plugin: String, reason: String },
    #[error("{operation} {}: {source}", path.display())]
    Io { operation: &'static str, path: PathBuf, source: std::io::Error },
}

/// Where the CNI configuration, plugins and state are.
#[derive(Debug, Clone)]
pub struct CniConfig {
    /// The network configuration directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Where plugin executables are looked up, first match wins (`/opt/cni/bin`).
    pub bin_dirs: Vec<PathBuf>,
    /// Where the result cache is kept.
    pub state_dir: PathBuf,
}

/// A network configuration list, as read from the configuration directory.
#[derive(Debug, Clone, PartialEq)]
struct NetworkList {
    name: String,
    cni_version: Option<String>,
    /// The plugin configuration objects, as written (only `name`, `cniVersion`, `prevResult`
    /// and `runtimeConfig` are added when invoking).
    plugins: Vec<Map<String, Value>>,
    /// The whole list as written, which is what the cache keeps.
    raw: Value,
}

impl NetworkList {
    /// Parses a `.conflist` (`list == true`) or a single-plugin `.conf`, which is wrapped into a
    /// list of one (libcni's `ConfListFromConf`).
    fn parse(path: &Path, text: &[u8], list: bool) -> Result<Self, CniError> {
        let invalid = |reason: String| CniError::InvalidConfig { path: path.to_path_buf(), reason };
        let value: Value = serde_json::from_slice(text).map_err(|e| invalid(e.to_string()))?;
        let raw = if list {
            value
        } else {
            let Value::Object(plugin) = &value else {
                return Err(invalid("not a JSON object".into()));
            };
            let mut wrapped = Map::new();
            for key in ["cniVersion", "name"] {
                if let Some(v) = plugin.get(key) {
                    wrapped.insert(key.into(), v.clone());
                }
            }
            wrapped.insert("plugins".into(), json!([value]));
            Value::Object(wrapped)
        };
        Self::from_value(raw).map_err(invalid)
    }

    fn from_value(raw: Value) -> Result<Self, String> {
        let object = raw.as_object().ok_or("not a JSON object")?;
        let name = match object.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err("no 'name' field".into()),
        };
        let cni_version = match object.get("cniVersion") {
            None => None,
            Some(Value::String(version)) => Some(version.clone()),
            Some(_) => return Err("'cniVersion' is not a string".into()),
        };
        let Some(Value::Array(plugins)) = object.get("plugins") else {
            return Err("no 'plugins' list".into());
        };
        if plugins.is_empty() {
            return Err("no plugins in the list".into());
        }
        let plugins = plugins
            .iter()
            .map(|plugin| {
                let plugin = plugin.as_object().ok_or("a plugin is not a JSON object")?;
                match plugin.get("type") {
                    Some(Value::String(kind)) if !kind.is_empty() => Ok(plugin.clone()),
                    _ => Err("a plugin has no 'type'".to_string()),
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(NetworkList { name, cni_version, plugins, raw })
    }

    /// The loopback network containerd adds before the pod's own.
    fn loopback(&self) -> Map<String, Value> {
        let mut plugin = Map::new();
        if let Some(version) = &self.cni_version {
            plugin.insert("cniVersion".into(), json!(version));
        }
        plugin.insert("name".into(), json!("cni-loopback"));
        plugin.insert("type".into(), json!("loopback"));
        plugin
    }
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or_default()
}

/// What an ADD leaves for DEL and CHECK (libcni's `cniCacheV1` entry).
#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    kind: String,
    #[serde(rename = "containerId")]
    container_id: String,
    netns: PathBuf,
    #[serde(rename = "ifName")]
    if_name: String,
    pod_namespace: String,
    pod_name: String,
    host_ports: Vec<HostPort>,
    /// The network configuration list used for the ADD.
    config: Value,
    /// The last plugin's result.
    result: Value,
}

const CACHE_KIND: &str = "tugCniCacheV1";

/// One plugin invocation's environment (the CNI_* variables).
struct Invocation<'a> {
    command: &'static str,
    sandbox_id: &'a str,
    netns: &'a Path,
    if_name: &'a str,
    pod_namespace: &'a str,
    pod_name: &'a str,
}

/// A [`PodNetwork`] delegating to CNI plugins.
pub struct CniNetwork {
    config: CniConfig,
}

impl CniNetwork {
    pub fn new(config: CniConfig) -> Self {
        CniNetwork { config }
    }

    /// The network configuration in use now: the first valid file of the directory.
    fn load_config(&self) -> Result<NetworkList, CniError> {
        let dir = &self.config.conf_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CniError::NoConfig { dir: dir.clone() });
            }
            Err(source) => return Err(CniError::Io { operation: "reading", path: dir.clone(), source }),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension().and_then(|e| e.to_str()).is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
                    && path.is_file()
            })
            .collect();
        files.sort();
        for path in files {
            let list = path.extension().is_some_and(|e| e == "conflist");
            let loaded = std::fs::read(&path)
                .map_err(|source| CniError::Io { operation: "reading", path: path.clone(), source })
                .and_then(|text| NetworkList::parse(&path, &text, list));
            match loaded {
                Ok(network) => return Ok(network),
                // As containerd: an invalid file is skipped, the next one may do.
                Err(error) => tracing::warn!(path = %path.display(), %error, "skipping CNI network config"),
            }
        }
        Err(CniError::NoConfig { dir: dir.clone() })
    }

    fn cache_dir(&self) -> PathBuf {
        self.config.state_dir.join("results")
    }

    fn cache_path(&self, sandbox_id: &str) -> PathBuf {
        self.cache_dir().join(format!("{sandbox_id}.json"))
    }

    fn read_cache(&self, sandbox_id: &str) -> Result<Option<CacheEntry>, CniError> {
        let path = self.cache_path(sandbox_id);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CniError::Io { operation: "reading", path, source }),
        };
        match serde_json::from_slice::<CacheEntry>(&text) {
            Ok(entry) if entry.kind == CACHE_KIND => Ok(Some(entry)),
            // A damaged cache is as good as none: DEL then falls back to the current config.
            Ok(_) | Err(_) => {
                tracing::warn!(path = %path.display(), "ignoring an unreadable CNI result cache entry");
                Ok(None)
            }
        }
    }

    fn write_cache(&self, entry: &CacheEntry) -> Result<(), CniError> {
        let dir = self.cache_dir();
        std::fs::create_dir_all(&dir).map_err(|source| CniError::Io {
            operation: "creating",
            path: dir.clone(),
            source,
        })?;
        let path = self.cache_path(&entry.container_id);
        let temporary = dir.join(format!(".{}.tmp", entry.container_id));
        let text = serde_json::to_vec_pretty(entry).expect("a cache entry serializes");
        // Written aside and renamed, so a crash never leaves half an entry.
        std::fs::write(&temporary, text).map_err(|source| CniError::Io {
            operation: "writing",
            path: temporary.clone(),
            source,
        })?;
        std::fs::rename(&temporary, &path).map_err(|source| CniError::Io { operation: "renaming", path, source })
    }

    fn remove_cache(&self, sandbox_id: &str) -> Result<(), CniError> {
        let path = self.cache_path(sandbox_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Io { operation: "removing", path, source }),
        }
    }

    /// libcni's `FindInPath`: the first bin dir holding the plugin.
    fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniError> {
        let not_found = || CniError::PluginNotFound { plugin: plugin.to_string(), dirs: self.config.bin_dirs.clone() };
        if plugin.contains('/') {
            return Err(not_found());
        }
        self.config.bin_dirs.iter().map(|dir| dir.join(plugin)).find(|path| path.is_file()).ok_or_else(not_found)
    }

    /// The object a plugin reads on stdin: its own configuration with the list's name and
    /// version, the previous result and the runtime configuration it asked for.
    fn plugin_stdin(
        list: &NetworkList,
        plugin: &Map<String, Value>,
        prev_result: Option<&Value>,
        host_ports: &[HostPort],
    ) -> Value {
        let mut config = plugin.clone();
        config.insert("name".into(), json!(list.name));
        match &list.cni_version {
            Some(version) => config.insert("cniVersion".into(), json!(version)),
            None => config.remove("cniVersion"),
        };
        if let Some(prev) = prev_result {
            config.insert("prevResult".into(), prev.clone());
        }
        let wants_ports =
            plugin.get("capabilities").and_then(|c| c.get("portMappings")).and_then(Value::as_bool).unwrap_or(false);
        if wants_ports {
            let mappings: Vec<Value> = host_ports
                .iter()
                .map(|port| {
                    let mut mapping = json!({
                        "hostPort": port.host_port,
                        "containerPort": port.container_port,
                        "protocol": port.protocol.nft_name(),
                    });
                    if let Some(ip) = port.host_ip {
                        mapping["hostIP"] = json!(ip.to_string());
                    }
                    mapping
                })
                .collect();
            let mut runtime = config.get("runtimeConfig").and_then(Value::as_object).cloned().unwrap_or_default();
            runtime.insert("portMappings".into(), Value::Array(mappings));
            config.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        Value::Object(config)
    }

    /// Runs one plugin and returns what it printed (a result for ADD, nothing for DEL/CHECK).
    async fn invoke(&self, plugin: &str, invocation: &Invocation<'_>, stdin: &Value) -> Result<Vec<u8>, CniError> {
        let path = self.find_plugin(plugin)?;
        let exec_failed = |source: std::io::Error| CniError::Exec { plugin: plugin.to_string(), source };
        let cni_path = std::env::join_paths(&self.config.bin_dirs).unwrap_or_else(|_| OsString::new());
        let cni_args = format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};IgnoreUnknown=1",
            invocation.pod_namespace, invocation.pod_name, invocation.sandbox_id
        );
        let mut command = tokio::process::Command::new(&path);
        command
            .env("CNI_COMMAND", invocation.command)
            .env("CNI_CONTAINERID", invocation.sandbox_id)
            .env("CNI_NETNS", invocation.netns)
            .env("CNI_IFNAME", invocation.if_name)
            .env("CNI_PATH", cni_path)
            .env("CNI_ARGS", cni_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tracing::debug!(plugin, command = invocation.command, sandbox = invocation.sandbox_id, "invoking CNI plugin");
        let mut child = command.spawn().map_err(exec_failed)?;
        let input = serde_json::to_vec(stdin).expect("a plugin config serializes");
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let run = async move {
            // A plugin may exit without reading all of its input; that is its answer to judge.
            let _ = pipe.write_all(&input).await;
            drop(pipe);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(PLUGIN_TIMEOUT, run).await {
            Ok(output) => output.map_err(exec_failed)?,
            Err(_) => {
                return Err(exec_failed(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {PLUGIN_TIMEOUT:?}"),
                )));
            }
        };
        if output.status.success() {
            return Ok(output.stdout);
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        #[derive(Deserialize)]
        struct PluginError {
            #[serde(default)]
            code: u32,
            #[serde(default)]
            msg: String,
            #[serde(default)]
            details: String,
        }
        let error = match serde_json::from_slice::<PluginError>(&output.stdout) {
            Ok(error) => CniError::Plugin {
                plugin: plugin.to_string(),
                code: error.code,
                msg: error.msg,
                details: if error.details.is_empty() { stderr } else { error.details },
            },
            Err(_) => CniError::Plugin {
                plugin: plugin.to_string(),
                code: 0,
                msg: format!("{} with unparseable output {:?}", output.status, String::from_utf8_lossy(&output.stdout)),
                details: stderr,
            },
        };
        Err(error)
    }

    /// ADD of the loopback network then of each plugin of `list`; the list's final result.
    async fn add(&self, list: &NetworkList, request: &AttachRequest) -> Result<Value, CniError> {
        let mut invocation = Invocation {
            command: "ADD",
            sandbox_id: &request.sandbox_id,
            netns: &request.netns,
            if_name: "lo",
            pod_namespace: &request.pod_namespace,
            pod_name: &request.pod_name,
        };
        let loopback = list.loopback();
        self.invoke("loopback", &invocation, &Value::Object(loopback)).await?;
        invocation.if_name = POD_INTERFACE;
        let mut result: Option<Value> = None;
        for plugin in &list.plugins {
            let kind = plugin_type(plugin);
            let stdin = Self::plugin_stdin(list, plugin, result.as_ref(), &request.host_ports);
            let stdout = self.invoke(kind, &invocation, &stdin).await?;
            let parsed: Value = serde_json::from_slice(&stdout)
                .map_err(|e| CniError::InvalidResult { plugin: kind.to_string(), reason: e.to_string() })?;
            if !parsed.is_object() {
                return Err(CniError::InvalidResult { plugin: kind.to_string(), reason: "not a JSON object".into() });
            }
            result = Some(parsed);
        }
        Ok(result.unwrap_or(Value::Null))
    }

    /// DEL of each plugin of `list` in reverse order, then of the loopback network.
    async fn delete(&self, list: &NetworkList, entry: &DelTarget<'_>) -> Result<(), CniError> {
        let netns = if is_netns(entry.netns) { entry.netns } else { Path::new("") };
        let mut invocation = Invocation {
            command: "DEL",
            sandbox_id: entry.sandbox_id,
            netns,
            if_name: POD_INTERFACE,
            pod_namespace: entry.pod_namespace,
            pod_name: entry.pod_name,
        };
        for plugin in list.plugins.iter().rev() {
            let stdin = Self::plugin_stdin(list, plugin, entry.prev_result, entry.host_ports);
            self.invoke(plugin_type(plugin), &invocation, &stdin).await?;
        }
        invocation.if_name = "lo";
        self.invoke("loopback", &invocation, &Value::Object(list.loopback())).await?;
        Ok(())
    }

    /// CNI's CHECK against the cached result of the sandbox's ADD.
    pub async fn check(&self, request: &AttachRequest) -> Result<(), NetworkError> {
        let Some(entry) = self.read_cache(&request.sandbox_id)? else {
            return Err(NetworkError::NotReady(format!("sandbox {} has no cached CNI result", request.sandbox_id)));
        };
        let list = NetworkList::from_value(entry.config.clone())
            .map_err(|reason| CniError::InvalidConfig { path: self.cache_path(&request.sandbox_id), reason })?;
        let invocation = Invocation {
            command: "CHECK",
            sandbox_id: &request.sandbox_id,
            netns: &request.netns,
            if_name: POD_INTERFACE,
            pod_namespace: &request.pod_namespace,
            pod_name: &request.pod_name,
        };
        for plugin in &list.plugins {
            let stdin = Self::plugin_stdin(&list, plugin, Some(&entry.result), &request.host_ports);
            self.invoke(plugin_type(plugin), &invocation, &stdin).await?;
        }
        Ok(())
    }
}

/// `NSFS_MAGIC`: the filesystem type of a pinned network namespace.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// Whether `path` still pins a namespace. At DEL the sandbox's namespace may be gone, or its
/// bind mount undone with the file left behind; plugins then get an empty CNI_NETNS and only
/// release what they hold outside it (a plain file would make them fail on every retry).
fn is_netns(path: &Path) -> bool {
    !path.as_os_str().is_empty() && rustix::fs::statfs(path).is_ok_and(|stat| stat.f_type as u64 == NSFS_MAGIC)
}

/// What DEL needs to know about a sandbox.
struct DelTarget<'a> {
    sandbox_id: &'a str,
    netns: &'a Path,
    pod_namespace: &'a str,
    pod_name: &'a str,
    host_ports: &'a [HostPort],
    prev_result: Option<&'a Value>,
}

/// The pod's addresses in a CNI result: those of the container's interfaces (or of no
/// particular interface), IPv4 first as containerd orders pod IPs.
fn result_ips(plugin: &str, result: &Value) -> Result<Vec<IpAddr>, CniError> {
    let invalid = |reason: String| CniError::InvalidResult { plugin: plugin.to_string(), reason };
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let mut addresses: Vec<&str> = Vec::new();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for ip in ips {
            let in_container = match (ip.get("interface").and_then(Value::as_u64), interfaces) {
                (Some(index), Some(interfaces)) => interfaces
                    .get(index as usize)
                    .and_then(|i| i.get("sandbox"))
                    .and_then(Value::as_str)
                    .is_some_and(|sandbox| !sandbox.is_empty()),
                _ => true,
            };
            if in_container {
                addresses.push(
                    ip.get("address").and_then(Value::as_str).ok_or_else(|| invalid("an ip has no address".into()))?,
                );
            }
        }
    }
    // CNI 0.2.0 results.
    for key in ["ip4", "ip6"] {
        if let Some(ip) = result.get(key).and_then(|v| v.get("ip")).and_then(Value::as_str) {
            addresses.push(ip);
        }
    }
    let mut ips = addresses
        .into_iter()
        .map(|address| {
            let ip = address.split_once('/').map_or(address, |(ip, _)| ip);
            ip.parse::<IpAddr>().map_err(|e| invalid(format!("address {address:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    ips.sort_by_key(|ip| !ip.is_ipv4());
    if ips.is_empty() {
        return Err(invalid("no IP address for the pod".into()));
    }
    Ok(ips)
}

#[async_trait::async_trait]
impl PodNetwork for CniNetwork {
    fn status(&self) -> NetworkStatus {
        match self.load_config() {
            Ok(_) => NetworkStatus::Ready,
            Err(error) => NetworkStatus::NotReady(error.to_string()),
        }
    }

    async fn attach(&self, request: &AttachRequest) -> Result<Attachment, NetworkError> {
        // Attaching again answers with what the first ADD gave: the plugins would refuse a
        // second ADD (host-local's duplicate allocation, bridge's existing eth0).
        if let Some(entry) = self.read_cache(&request.sandbox_id)?
            && entry.netns == request.netns
        {
            let ips = result_ips("cache", &entry.result)?;
            return Ok(Attachment { ips });
        }
        let list = self.load_config()?;
        let outcome = match self.add(&list, request).await {
            Ok(result) => {
                let last = list.plugins.last().map(plugin_type).unwrap_or_default().to_string();
                result_ips(&last, &result).map(|ips| (ips, result))
            }
            Err(error) => Err(error),
        };
        let (ips, result) = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                // As containerd's sandbox setup does on failure: undo what the plugins that did
                // succeed set up (their addresses above all), then report the ADD's error.
                let target = DelTarget {
                    sandbox_id: &request.sandbox_id,
                    netns: &request.netns,
                    pod_namespace: &request.pod_namespace,
                    pod_name: &request.pod_name,
                    host_ports: &request.host_ports,
                    prev_result: None,
                };
                if let Err(undo) = self.delete(&list, &target).await {
                    tracing::warn!(sandbox = %request.sandbox_id, error = %undo, "undoing a failed CNI ADD");
                }
                return Err(error.into());
            }
        };
        self.write_cache(&CacheEntry {
            kind: CACHE_KIND.to_string(),
            container_id: request.sandbox_id.clone(),
            netns: request.netns.clone(),
            if_name: POD_INTERFACE.to_string(),
            pod_namespace: request.pod_namespace.clone(),
            pod_name: request.pod_name.clone(),
            host_ports: request.host_ports.clone(),
            config: list.raw.clone(),
            result,
        })?;
        tracing::info!(sandbox = %request.sandbox_id, network = %list.name, ?ips, "sandbox attached through CNI");
        Ok(Attachment { ips })
    }

    async fn detach(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        let cached = self.read_cache(sandbox_id)?;
        let (list, entry) = match cached {
            Some(entry) => match NetworkList::from_value(entry.config.clone()) {
                Ok(list) => (list, Some(entry)),
                Err(reason) => {
                    tracing::warn!(sandbox = sandbox_id, reason, "cached CNI config unusable, using the current one");
                    match self.load_config() {
                        Ok(list) => (list, None),
                        Err(CniError::NoConfig { .. }) => return Ok(self.remove_cache(sandbox_id)?),
                        Err(error) => return Err(error.into()),
                    }
                }
            },
            // No cache: libcni runs DEL with the current config and no prevResult; without any
            // config there is nothing anyone could undo.
            None => match self.load_config() {
                Ok(list) => (list, None),
                Err(CniError::NoConfig { .. }) => return Ok(()),
                Err(error) => return Err(error.into()),
            },
        };
        let no_ports = Vec::new();
        let target = DelTarget {
            sandbox_id,
            netns: entry.as_ref().map_or(Path::new(""), |e| e.netns.as_path()),
            pod_namespace: entry.as_ref().map_or("", |e| e.pod_namespace.as_str()),
            pod_name: entry.as_ref().map_or("", |e| e.pod_name.as_str()),
            host_ports: entry.as_ref().map_or(&no_ports, |e| &e.host_ports),
            prev_result: entry.as_ref().map(|e| &e.result),
        };
        self.delete(&list, &target).await?;
        self.remove_cache(sandbox_id)?;
        tracing::info!(sandbox = sandbox_id, network = %list.name, "sandbox detached through CNI");
        Ok(())
    }

    async fn retain(&self, live: &[String]) -> Result<(), NetworkError> {
        let dir = self.cache_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(CniError::Io { operation: "reading", path: dir, source }.into()),
        };
        let cached: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
            .filter(|id| !id.starts_with('.'))
            .collect();
        // One sandbox failing to detach does not keep the others' addresses held.
        let mut first_error = None;
        for sandbox_id in cached {
            if !live.contains(&sandbox_id) {
                tracing::info!(sandbox = %sandbox_id, "detaching an orphaned sandbox");
                if let Err(error) = self.detach(&sandbox_id).await {
                    tracing::warn!(sandbox = %sandbox_id, %error, "detaching an orphaned sandbox");
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
#[path = "cni_tests.rs"]
mod tests;
