//! Built-in admission: what upstream's admission plugins and registry hooks do to an object
//! between validation and storage.
//!
//! - NamespaceLifecycle: objects go only into namespaces that exist and are not terminating.
//! - Service IP and NodePort allocation: a ClusterIP from `--service-cidr` recorded as an
//!   `IPAddress` object (as upstream since 1.33), NodePorts from 30000-32767 recorded under
//!   `/registry/ranges/servicenodeports/`. Creating the record is the allocation (create-if-absent
//!   makes it safe across servers sharing one store); deleting it is the release.

use std::net::Ipv4Addr;

use serde_json::{Value, json};
use tug_api::field::{FieldError, FieldPath};
use tug_api::{ApiError, ResourceType};
use tug_store::StoreError;

use crate::codec;
use crate::objects::{is_deleting, now_rfc3339, store_error};
use crate::server::ApiServer;

const NODE_PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// An IPv4 range such as `10.43.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (want a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("{len:?} is not a prefix length between 0 and 30"))?;
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Ok(Ipv4Cidr { base: Ipv4Addr::from(u32::from(ip) & mask), prefix })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Ipv4Cidr {
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The `n`th address of the range.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.base));
        offset < self.size()
    }

    /// Usable service addresses: not the network or broadcast address, and not the first one,
    /// which belongs to the `kubernetes` service.
    fn allocatable(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.base));
        offset >= 2 && offset < self.size() - 1
    }
}

fn random_u32() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn owner_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(""),
        obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
    )
}

/// What NamespaceLifecycle needs to know of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NamespaceState {
    Active,
    Terminating,
}

/// The namespaces as of the latest store change, so that admitting an object does not read the
/// store (upstream's NamespaceLifecycle uses an informer cache the same way). A namespace not in
/// the cache is looked up in the store: it may have been created a moment ago.
#[derive(Default)]
pub struct NamespaceCache {
    namespaces: std::sync::RwLock<std::collections::HashMap<String, NamespaceState>>,
}

impl NamespaceCache {
    fn get(&self, name: &str) -> Option<NamespaceState> {
        self.namespaces.read().ok()?.get(name).copied()
    }

    fn set(&self, name: &str, state: Option<NamespaceState>) {
        if let Ok(mut m) = self.namespaces.write() {
            match state {
                Some(s) => m.insert(name.to_string(), s),
                None => m.remove(name),
            };
        }
    }
}

fn namespace_state(ns: &Value) -> NamespaceState {
    if is_deleting(ns) || ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
        NamespaceState::Terminating
    } else {
        NamespaceState::Active
    }
}

impl ApiServer {
    /// Keeps the namespace cache current from a watch of the store, until the store closes.
    pub(crate) fn start_namespace_cache(&self) {
        let srv = self.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let prefix = "/registry/namespaces/";
            loop {
                let Ok(list) = srv.store.list(prefix, Default::default()).await else { return };
                for kv in &list.items {
                    if let Ok(ns) = codec::decode_stored(kv) {
                        srv.namespace_cache.set(kv.key.trim_start_matches(prefix), Some(namespace_state(&ns)));
                    }
                }
                let Ok(mut events) = srv.store.watch(prefix, list.revision).await else { return };
                while let Some(ev) = events.next().await {
                    let Ok(ev) = ev else { break };
                    let name = ev.kv.key.trim_start_matches(prefix).to_string();
                    match ev.kind {
                        tug_store::EventKind::Delete => srv.namespace_cache.set(&name, None),
                        tug_store::EventKind::Put => {
                            if let Ok(ns) = codec::decode_stored(&ev.kv) {
                                srv.namespace_cache.set(&name, Some(namespace_state(&ns)));
                            }
                        }
                    }
                }
                // The watch fell behind or broke: list again.
            }
        });
    }

    /// Admission of a new object.
    pub(crate) async fn admission_create(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        if rt.namespaced {
            self.check_namespace_open(rt, obj).await?;
            self.admit_limit_ranges(rt, obj).await?;
        }
        if rt.group.is_empty() && rt.kind == "LimitRange" {
            crate::limitranger::admit_limit_range(obj)?;
        }
        if rt.group.is_empty() && rt.kind == "Pod" {
            self.admit_pod_service_account(obj).await?;
        }
        if rt.group.is_empty() && rt.kind == "Pod" {
            default_toleration_seconds(obj);
            self.admit_pod_priority(obj).await?;
        }
        if rt.group == "scheduling.k8s.io" && rt.kind == "PriorityClass" {
            self.admit_priority_class(obj).await?;
        }
        if rt.group.is_empty() && rt.kind == "PersistentVolumeClaim" {
            self.admit_claim_storage_class(obj).await?;
        }
        if rt.group.is_empty() {
            crate::storageprotection::admit(&rt.kind, obj);
        }
        // Quota comes last, as upstream's validating plugin, but before the service's
        // allocations so that a refused service holds no addresses.
        self.admit_resource_quota(rt, None, obj, dry_run).await?;
        if rt.group.is_empty() && rt.kind == "Service" {
            self.allocate_service(obj, None, dry_run).await?;
        }
        Ok(())
    }

    /// Admission of an update.
    pub(crate) async fn admission_update(
        &self,
        rt: &ResourceType,
        old: &Value,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        if rt.group.is_empty() && rt.kind == "Service" {
            self.admit_resource_quota(rt, Some(old), obj, false).await?;
            self.allocate_service(obj, Some(old), false).await?;
        }
        if rt.group.is_empty() && rt.kind == "LimitRange" {
            crate::limitranger::admit_limit_range(obj)?;
        }
        if rt.group == "scheduling.k8s.io" && rt.kind == "PriorityClass" {
            self.admit_priority_class(obj).await?;
        }
        Ok(())
    }

    /// What happens after an object is gone: its allocations are released.
    pub(crate) async fn after_delete(&self, rt: &ResourceType, obj: &Value) {
        self.release_allocations(rt, obj, false).await;
    }

    async fn check_namespace_open(&self, rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
        let registry = self.registry();
        let namespaces = registry.lookup("", "v1", "namespaces").expect("namespaces are served");
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let state = match self.namespace_cache.get(ns) {
            Some(s) => Some(s),
            None => {
                match self.store.get(&namespaces.key(None, ns)).await.map_err(|e| store_error(namespaces, ns, e))? {
                    Some(kv) => Some(namespace_state(&codec::decode_stored(&kv)?)),
                    None => None,
                }
            }
        };
        match state {
            None => Err(ApiError::not_found(namespaces.subject(), ns)),
            Some(state) => {
                if state == NamespaceState::Terminating {
                    let mut e = ApiError::forbidden(
                        rt.subject(),
                        name,
                        format_args!("unable to create new content in namespace {ns} because it is being terminated"),
                    );
                    if let Some(d) = e.details.as_mut() {
                        d.causes.push(tug_api::status::Cause {
                            reason: "NamespaceTerminating".into(),
                            message: format!("namespace {ns} is being terminated"),
                            field: Some("metadata.namespace".into()),
                        });
                    }
                    return Err(e);
                }
                Ok(())
            }
        }
    }

    /// Gives a Service its cluster IP and node ports (keeping those it already has on update).
    async fn allocate_service(&self, svc: &mut Value, old: Option<&Value>, dry_run: bool) -> Result<(), ApiError> {
        let mut claimed = Claims::default();
        let result = self.allocate_service_inner(svc, old, dry_run, &mut claimed).await;
        if result.is_err() {
            // Give back what this call took before it failed.
            let owner = owner_of(svc);
            if let Some(ip) = claimed.ip {
                self.release_ip(ip, &owner).await;
            }
            for port in claimed.ports {
                self.release_node_port(port, &owner).await;
            }
        }
        result
    }

    async fn allocate_service_inner(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        dry_run: bool,
        claimed: &mut Claims,
    ) -> Result<(), ApiError> {
        if let Some(old) = old {
            keep_allocated_values(svc, old);
        }
        let name = svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let kind = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let owner = owner_of(svc);
        let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).and_then(Value::as_str).map(str::to_string);
        if kind == "ExternalName" {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                svc["spec"].as_object_mut().map(|m| m.remove(f));
            }
        } else {
            let requested = svc.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
            let ip = if requested == "None" {
                "None".to_string()
            } else if !requested.is_empty() && Some(&requested) == old_ip.as_ref() {
                requested
            } else if !requested.is_empty() {
                let ip: Ipv4Addr = requested.parse().map_err(|_| {
                    invalid_service(
                        &name,
                        "clusterIPs",
                        &requested,
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )
                })?;
                if !self.options.service_cidr.contains(ip) {
                    return Err(invalid_service(
                        &name,
                        "clusterIPs",
                        &requested,
                        &format!(
                            "failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}",
                            self.options.service_cidr
                        ),
                    ));
                }
                if !dry_run && !self.claim_ip(ip, &owner).await? {
                    return Err(invalid_service(
                        &name,
                        "clusterIPs",
                        &requested,
                        &format!("failed to allocate IP {requested}: provided IP is already allocated"),
                    ));
                }
                if !dry_run {
                    claimed.ip = Some(ip);
                }
                requested
            } else if dry_run {
                // A dry run shows the shape of the result without taking an address.
                self.options.service_cidr.nth(2).to_string()
            } else {
                let ip = self.allocate_ip(&owner).await?;
                claimed.ip = Some(ip);
                ip.to_string()
            };
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
            if ip != "None" || svc.pointer("/spec/ipFamilies").is_none() {
                svc["spec"]["ipFamilies"] = json!(["IPv4"]);
            }
            if svc.pointer("/spec/ipFamilyPolicy").is_none_or(Value::is_null) {
                svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            }
        }
        if old_ip.as_deref().is_some_and(|o| svc.pointer("/spec/clusterIP").and_then(Value::as_str) != Some(o))
            && let Some(o) = old_ip.as_deref().and_then(|o| o.parse().ok())
        {
            self.release_ip(o, &owner).await;
        }
        // Node ports, for NodePort and LoadBalancer services.
        let wants_node_ports = kind == "NodePort"
            || (kind == "LoadBalancer"
                && svc.pointer("/spec/allocateLoadBalancerNodePorts").and_then(Value::as_bool) != Some(false));
        let old_ports: Vec<u16> = old.map(node_ports_of).unwrap_or_default();
        let mut kept = Vec::new();
        if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for (i, p) in ports.iter_mut().enumerate() {
                if !wants_node_ports {
                    p.as_object_mut().map(|m| m.remove("nodePort"));
                    continue;
                }
                let requested = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
                let port = if requested != 0 {
                    let (lo, hi) = self.options.node_port_range;
                    if !(lo as i64..=hi as i64).contains(&requested) {
                        return Err(invalid_node_port(
                            &name,
                            i,
                            requested,
                            &format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                        ));
                    }
                    let port = requested as u16;
                    if !old_ports.contains(&port) && !dry_run {
                        if !self.claim_node_port(port, &owner).await? {
                            return Err(invalid_node_port(&name, i, requested, "provided port is already allocated"));
                        }
                        claimed.ports.push(port);
                    }
                    port
                } else if dry_run {
                    self.options.node_port_range.0
                } else {
                    let port = self.allocate_node_port(&owner).await?;
                    claimed.ports.push(port);
                    port
                };
                p["nodePort"] = json!(port);
                kept.push(port);
            }
        }
        for port in old_ports {
            if !kept.contains(&port) {
                self.release_node_port(port, &owner).await;
            }
        }
        self.allocate_health_check_node_port(svc, old, dry_run, claimed, &name, &owner).await
    }

    /// `spec.healthCheckNodePort`, which a LoadBalancer service with externalTrafficPolicy
    /// Local needs (each node's proxy answers on it whether the node has a local endpoint, for
    /// the load balancer's health checks): allocated from the NodePort range unless given, kept
    /// on update, released when no longer needed; refused on other services, as upstream.
    async fn allocate_health_check_node_port(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        dry_run: bool,
        claimed: &mut Claims,
        name: &str,
        owner: &str,
    ) -> Result<(), ApiError> {
        let requested = svc.pointer("/spec/healthCheckNodePort").and_then(Value::as_i64).unwrap_or(0);
        let invalid = |detail: &str| {
            let path = FieldPath::new("spec").key("healthCheckNodePort");
            ApiError::invalid("", "Service", name, &[FieldError::invalid(&path, json!(requested), detail)])
        };
        let old_port = old.map(health_check_node_port_of).unwrap_or(0);
        if !needs_health_check_node_port(svc) {
            if requested != 0 && requested != old_port as i64 {
                return Err(invalid(
                    "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
                ));
            }
            svc["spec"].as_object_mut().map(|m| m.remove("healthCheckNodePort"));
            if old_port != 0 {
                self.release_node_port(old_port, owner).await;
            }
            return Ok(());
        }
        let port = if requested != 0 && requested == old_port as i64 {
            old_port
        } else if requested != 0 {
            let (lo, hi) = self.options.node_port_range;
            if !(lo as i64..=hi as i64).contains(&requested) {
                return Err(invalid(&format!(
                    "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                )));
            }
            let port = requested as u16;
            if !dry_run {
                if !self.claim_node_port(port, owner).await? {
                    return Err(invalid("provided port is already allocated"));
                }
                claimed.ports.push(port);
            }
            port
        } else if old_port != 0 {
            old_port
        } else if dry_run {
            self.options.node_port_range.0
        } else {
            let port = self.allocate_node_port(owner).await?;
            claimed.ports.push(port);
            port
        };
        if old_port != 0 && old_port != port {
            self.release_node_port(old_port, owner).await;
        }
        svc["spec"]["healthCheckNodePort"] = json!(port);
        Ok(())
    }

    async fn claim_ip(&self, ip: Ipv4Addr, owner: &str) -> Result<bool, ApiError> {
        let (ns, name) = owner.split_once('/').unwrap_or(("", owner));
        let record = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IPAddress",
            "metadata": {
                "name": ip.to_string(),
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": now_rfc3339(),
                "labels": {
                    "ipaddress.kubernetes.io/ip-family": "IPv4",
                    "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io",
                },
            },
            "spec": {"parentRef": {"group": "", "resource": "services", "namespace": ns, "name": name}},
        });
        let key = format!("/registry/ipaddresses/{ip}");
        match self.store.create(&key, codec::encode_for_storage(&record)?).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    async fn allocate_ip(&self, owner: &str) -> Result<Ipv4Addr, ApiError> {
        let cidr = self.options.service_cidr;
        let size = cidr.size();
        let start = random_u32() % size;
        // Random probes first (cheap when the range is sparse), then a full scan.
        for i in 0..size {
            let offset = if i < 32 { random_u32() % size } else { (start + i) % size };
            let ip = cidr.nth(offset);
            if cidr.allocatable(ip) && self.claim_ip(ip, owner).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!("failed to allocate a serviceIP: range {cidr} is full")))
    }

    async fn release_ip(&self, ip: Ipv4Addr, owner: &str) {
        let key = format!("/registry/ipaddresses/{ip}");
        if let Ok(Some(kv)) = self.store.get(&key).await
            && let Ok(rec) = codec::decode_stored(&kv)
        {
            let parent = &rec["spec"]["parentRef"];
            let rec_owner =
                format!("{}/{}", parent["namespace"].as_str().unwrap_or(""), parent["name"].as_str().unwrap_or(""));
            if rec_owner == owner {
                let _ = self.store.delete(&key, Some(kv.mod_revision)).await;
            }
        }
    }

    async fn claim_node_port(&self, port: u16, owner: &str) -> Result<bool, ApiError> {
        let key = format!("{NODE_PORT_PREFIX}{port}");
        match self.store.create(&key, bytes::Bytes::from(owner.to_string())).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    async fn allocate_node_port(&self, owner: &str) -> Result<u16, ApiError> {
        let (lo, hi) = self.options.node_port_range;
        let size = (hi - lo) as u32 + 1;
        let start = random_u32() % size;
        for i in 0..size {
            let port = lo + ((start + i) % size) as u16;
            if self.claim_node_port(port, owner).await? {
                return Ok(port);
            }
        }
        Err(ApiError::internal(format!("failed to allocate a nodePort: range {lo}-{hi} is full")))
    }

    async fn release_node_port(&self, port: u16, owner: &str) {
        let key = format!("{NODE_PORT_PREFIX}{port}");
        if let Ok(Some(kv)) = self.store.get(&key).await
            && kv.value.as_ref() == owner.as_bytes()
        {
            let _ = self.store.delete(&key, Some(kv.mod_revision)).await;
        }
    }

    /// Releases what admission allocated for an object that will not be (or is no longer)
    /// stored. A dry run allocated nothing.
    pub(crate) async fn release_allocations(&self, rt: &ResourceType, obj: &Value, dry_run: bool) {
        if dry_run || !(rt.group.is_empty() && rt.kind == "Service") {
            return;
        }
        let owner = owner_of(obj);
        if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
            self.release_ip(ip, &owner).await;
        }
        for port in node_ports_of(obj) {
            self.release_node_port(port, &owner).await;
        }
        let health_check = health_check_node_port_of(obj);
        if health_check != 0 {
            self.release_node_port(health_check, &owner).await;
        }
    }
}

/// What one allocation call took, to give back if it fails.
#[derive(Default)]
struct Claims {
    ip: Option<Ipv4Addr>,
    ports: Vec<u16>,
}

/// Upstream's `patchAllocatedValues`: an update that leaves out the cluster IP or a port's node
/// port keeps the ones already allocated (ports matched by number and protocol).
fn keep_allocated_values(svc: &mut Value, old: &Value) {
    let new_type = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
    if new_type != "ExternalName" && svc.pointer("/spec/clusterIP").and_then(Value::as_str).is_none_or(str::is_empty) {
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if let Some(v) = old.pointer(&format!("/spec/{f}")) {
                svc["spec"][f] = v.clone();
            }
        }
    }
    let old_ports = old.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in ports {
            if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                continue;
            }
            let same =
                old_ports.iter().find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"));
            if let Some(np) = same.and_then(|o| o.get("nodePort")).filter(|v| v.as_i64().unwrap_or(0) != 0) {
                p["nodePort"] = np.clone();
            }
        }
    }
}

/// Upstream's `needsHCNodePort`: a LoadBalancer service routing external traffic to local
/// endpoints only.
fn needs_health_check_node_port(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
        && svc.pointer("/spec/externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
}

fn health_check_node_port_of(svc: &Value) -> u16 {
    svc.pointer("/spec/healthCheckNodePort").and_then(Value::as_u64).map_or(0, |p| p as u16)
}

fn node_ports_of(svc: &Value) -> Vec<u16> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| ports.iter().filter_map(|p| p.get("nodePort").and_then(Value::as_u64)).map(|p| p as u16).collect())
        .unwrap_or_default()
}

fn invalid_service(name: &str, field: &str, value: &str, detail: &str) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        name,
        &[FieldError::invalid(&FieldPath::new("spec").key(field), json!([value]), detail)],
    )
}

fn invalid_node_port(name: &str, index: usize, value: i64, detail: &str) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        name,
        &[FieldError::invalid(&FieldPath::new("spec").key("ports").index(index).key("nodePort"), json!(value), detail)],
    )
}

/// Upstream's DefaultTolerationSeconds plugin: a pod that does not tolerate the
/// `not-ready`/`unreachable` NoExecute taints gets tolerations for them lasting 300 seconds, so
/// that it is evicted from a failed node after five minutes. (Upstream also runs it on updates,
/// where it cannot change anything since tolerations cannot be removed.)
pub(crate) fn default_toleration_seconds(pod: &mut Value) {
    const SECONDS: i64 = 300;
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else { return };
    let tolerates = |key: &str| {
        list.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let e = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty())
        })
    };
    let missing: Vec<&str> = ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"]
        .into_iter()
        .filter(|k| !tolerates(k))
        .collect();
    for key in missing {
        list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": SECONDS}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_default_not_ready_and_unreachable_tolerations() {
        let mut pod = json!({"spec": {"containers": []}});
        default_toleration_seconds(&mut pod);
        let t = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["key"], "node.kubernetes.io/not-ready");
        assert_eq!(t[1]["key"], "node.kubernetes.io/unreachable");
        assert_eq!(t[1]["tolerationSeconds"], 300);
        assert_eq!(t[1]["effect"], "NoExecute");
    }

    #[test]
    fn existing_tolerations_of_those_taints_are_kept_as_they_are() {
        let mut pod = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
        ]}});
        default_toleration_seconds(&mut pod);
        let t = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 5);
        assert_eq!(t[1]["key"], "node.kubernetes.io/not-ready");
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_toleration_seconds(&mut all);
        assert_eq!(all["spec"]["tolerations"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn cidr_parses_and_masks() {
        let c: Ipv4Cidr = "10.43.7.9/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.43.0.0/16");
        assert_eq!(c.nth(1), Ipv4Addr::new(10, 43, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 43, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 0)));
        assert!(!c.allocatable(c.nth(1)));
        assert!(c.allocatable(c.nth(2)));
        assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
    }
}
