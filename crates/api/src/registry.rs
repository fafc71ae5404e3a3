//! The registry of served resources, built from the k8s-openapi types.
//!
//! k8s-openapi knows each type's group, version, kind, plural and scope; it does not know the
//! facts discovery publishes beside them (short names, categories, verbs, subresources) nor where
//! upstream stores them. Those are kept here as one table, [`Registry::builtin`], whose entries a
//! test counts.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::{
    admissionregistration::v1 as admissionregistration, apps::v1 as apps, autoscaling, batch::v1 as batch,
    certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
    events::v1 as events, flowcontrol::v1 as flowcontrol, networking::v1 as networking, node::v1 as node,
    policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;

use crate::kinds::{Kind, KindOps, Typed};

/// The verbs of an ordinary resource.
pub const STANDARD_VERBS: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// A name in the registry: borrowed from k8s-openapi for built-in resources, owned for those
/// derived from CustomResourceDefinitions.
pub type Name = Cow<'static, str>;

/// One served resource of one group version.
pub struct ResourceType {
    pub group: Name,
    pub version: Name,
    pub kind: Name,
    pub list_kind: Name,
    /// The plural resource name used in URLs, e.g. `deployments`.
    pub plural: Name,
    /// The lower-case singular name, e.g. `deployment`.
    pub singular: Name,
    pub namespaced: bool,
    pub short_names: Vec<Name>,
    pub categories: Vec<Name>,
    pub verbs: &'static [&'static str],
    /// Subresources served for this resource, e.g. `status`, `scale`.
    pub subresources: &'static [&'static str],
    /// The path segment under `/registry/` upstream stores it at (`minions` for nodes). Two
    /// resources sharing it are two views of one stored object.
    pub storage_key: Name,
    /// Whether this version is the one objects are stored as; other views convert.
    pub storage_version: bool,
    /// Whether a CustomResourceDefinition defines this resource (rather than k8s-openapi).
    pub custom: bool,
    pub ops: Box<dyn KindOps>,
}

impl ResourceType {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.contains(&name)
    }

    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// What errors about this resource call it.
    pub fn subject(&self) -> crate::status::Subject<'_> {
        crate::status::Subject { group: &self.group, resource: &self.plural, kind: &self.kind }
    }

    /// The store key of an object: `/registry/<storage key>/<namespace>/<name>`, or without the
    /// namespace for cluster-scoped resources.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("/registry/{}/{ns}/{name}", self.storage_key),
            None => format!("/registry/{}/{name}", self.storage_key),
        }
    }

    /// The key prefix of a list: one namespace, or all of them.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("/registry/{}/{ns}/", self.storage_key),
            None => format!("/registry/{}/", self.storage_key),
        }
    }
}

/// Table options of one entry; see [`Registry::builtin`].
#[derive(Clone, Copy)]
struct Facts {
    short: &'static [&'static str],
    categories: &'static [&'static str],
    sub: &'static [&'static str],
    verbs: &'static [&'static str],
    storage_key: Option<&'static str>,
    storage_version: bool,
}

const DEFAULT: Facts =
    Facts { short: &[], categories: &[], sub: &[], verbs: STANDARD_VERBS, storage_key: None, storage_version: true };

const ALL: &[&str] = &["all"];
const API_EXTENSIONS: &[&str] = &["api-extensions"];
const STATUS: &[&str] = &["status"];
const STATUS_SCALE: &[&str] = &["scale", "status"];

fn entry<T: Kind>(f: Facts) -> ResourceType {
    let borrowed = |names: &'static [&'static str]| names.iter().map(|n| Cow::Borrowed(*n)).collect();
    ResourceType {
        group: Cow::Borrowed(T::GROUP),
        version: Cow::Borrowed(T::VERSION),
        kind: Cow::Borrowed(T::KIND),
        list_kind: Cow::Borrowed(T::LIST_KIND),
        plural: Cow::Borrowed(T::URL_PATH_SEGMENT),
        singular: Cow::Owned(T::KIND.to_lowercase()),
        namespaced: std::any::type_name::<T::Scope>().ends_with("NamespaceResourceScope"),
        short_names: borrowed(f.short),
        categories: borrowed(f.categories),
        verbs: f.verbs,
        subresources: f.sub,
        storage_key: Cow::Borrowed(f.storage_key.unwrap_or(T::URL_PATH_SEGMENT)),
        storage_version: f.storage_version,
        custom: false,
        ops: Box::new(Typed::<T>::default()),
    }
}

/// All served resources, with lookups by URL and by kind.
///
/// A registry is immutable. The API server holds the built-in one and, whenever the set of
/// CustomResourceDefinitions changes, builds a new one from it with [`Registry::extended`];
/// entries are shared (`Arc`) between the two, so that costs a few allocations per resource.
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
    /// Indices into `types` by plural and by kind, in table order; lookups pick the first
    /// entry of the right group and version, so they need not build a key per request.
    by_plural: HashMap<String, Vec<usize>>,
    by_kind: HashMap<String, Vec<usize>>,
    generation: u64,
}

/// A group and its versions, preferred first, as discovery lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupVersions<'a> {
    pub group: &'a str,
    pub versions: Vec<&'a str>,
}

impl Registry {
    /// Every built-in resource Tugboat serves.
    pub fn builtin() -> Registry {
        let f = DEFAULT;
        let types = vec![
            // core/v1, in upstream's discovery order.
            entry::<core::ComponentStatus>(Facts { short: &["cs"], verbs: &["get", "list"], ..f }),
            entry::<core::ConfigMap>(Facts { short: &["cm"], ..f }),
            entry::<core::Endpoints>(Facts { short: &["ep"], storage_key: Some("services/endpoints"), ..f }),
            entry::<core::Event>(Facts { short: &["ev"], ..f }),
            entry::<core::LimitRange>(Facts { short: &["limits"], ..f }),
            entry::<core::Namespace>(Facts {
                short: &["ns"],
                sub: &["finalize", "status"],
                verbs: &["create", "delete", "get", "list", "patch", "update", "watch"],
                ..f
            }),
            entry::<core::Node>(Facts { short: &["no"], sub: &["proxy", "status"], storage_key: Some("minions"), ..f }),
            entry::<core::PersistentVolumeClaim>(Facts { short: &["pvc"], sub: STATUS, ..f }),
            entry::<core::PersistentVolume>(Facts { short: &["pv"], sub: STATUS, ..f }),
            entry::<core::Pod>(Facts {
                short: &["po"],
                categories: ALL,
                sub: &[
                    "attach",
                    "binding",
                    "ephemeralcontainers",
                    "eviction",
                    "exec",
                    "log",
                    "portforward",
                    "proxy",
                    "resize",
                    "status",
                ],
                ..f
            }),
            entry::<core::PodTemplate>(f),
            entry::<core::ReplicationController>(Facts {
                short: &["rc"],
                categories: ALL,
                sub: STATUS_SCALE,
                storage_key: Some("controllers"),
                ..f
            }),
            entry::<core::ResourceQuota>(Facts { short: &["quota"], sub: STATUS, ..f }),
            entry::<core::Secret>(f),
            entry::<core::ServiceAccount>(Facts { short: &["sa"], sub: &["token"], ..f }),
            entry::<core::Service>(Facts {
                short: &["svc"],
                categories: ALL,
                sub: &["proxy", "status"],
                verbs: &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                storage_key: Some("services/specs"),
                ..f
            }),
            // apps/v1
            entry::<apps::ControllerRevision>(f),
            entry::<apps::DaemonSet>(Facts { short: &["ds"], categories: ALL, sub: STATUS, ..f }),
            entry::<apps::Deployment>(Facts { short: &["deploy"], categories: ALL, sub: STATUS_SCALE, ..f }),
            entry::<apps::ReplicaSet>(Facts { short: &["rs"], categories: ALL, sub: STATUS_SCALE, ..f }),
            entry::<apps::StatefulSet>(Facts { short: &["sts"], categories: ALL, sub: STATUS_SCALE, ..f }),
            // events.k8s.io/v1 is its own resource upstream too, stored under the same key.
            entry::<events::Event>(Facts { short: &["ev"], storage_key: Some("events"), storage_version: false, ..f }),
            // autoscaling: v2 is the stored version; v1 is a view of the same objects.
            entry::<autoscaling::v2::HorizontalPodAutoscaler>(Facts {
                short: &["hpa"],
                categories: ALL,
                sub: STATUS,
                ..f
            }),
            entry::<autoscaling::v1::HorizontalPodAutoscaler>(Facts {
                short: &["hpa"],
                categories: ALL,
                sub: STATUS,
                storage_version: false,
                ..f
            }),
            // batch/v1
            entry::<batch::CronJob>(Facts { short: &["cj"], categories: ALL, sub: STATUS, ..f }),
            entry::<batch::Job>(Facts { categories: ALL, sub: STATUS, ..f }),
            entry::<certificates::CertificateSigningRequest>(Facts {
                short: &["csr"],
                sub: &["approval", "status"],
                ..f
            }),
            // networking.k8s.io/v1
            entry::<networking::IngressClass>(f),
            entry::<networking::Ingress>(Facts { short: &["ing"], sub: STATUS, storage_key: Some("ingress"), ..f }),
            entry::<networking::IPAddress>(Facts { short: &["ip"], ..f }),
            entry::<networking::NetworkPolicy>(Facts { short: &["netpol"], ..f }),
            entry::<networking::ServiceCIDR>(Facts { sub: STATUS, ..f }),
            entry::<policy::PodDisruptionBudget>(Facts { short: &["pdb"], sub: STATUS, ..f }),
            // rbac.authorization.k8s.io/v1
            entry::<rbac::ClusterRoleBinding>(f),
            entry::<rbac::ClusterRole>(f),
            entry::<rbac::RoleBinding>(f),
            entry::<rbac::Role>(f),
            // storage.k8s.io/v1
            entry::<storage::CSIDriver>(f),
            entry::<storage::CSINode>(f),
            entry::<storage::CSIStorageCapacity>(f),
            entry::<storage::StorageClass>(Facts { short: &["sc"], ..f }),
            entry::<storage::VolumeAttachment>(Facts { sub: STATUS, ..f }),
            entry::<storage::VolumeAttributesClass>(Facts { short: &["vac"], ..f }),
            // admissionregistration.k8s.io/v1
            entry::<admissionregistration::MutatingAdmissionPolicy>(Facts { categories: API_EXTENSIONS, ..f }),
            entry::<admissionregistration::MutatingAdmissionPolicyBinding>(Facts { categories: API_EXTENSIONS, ..f }),
            entry::<admissionregistration::MutatingWebhookConfiguration>(Facts { categories: API_EXTENSIONS, ..f }),
            entry::<admissionregistration::ValidatingAdmissionPolicy>(Facts {
                categories: API_EXTENSIONS,
                sub: STATUS,
                ..f
            }),
            entry::<admissionregistration::ValidatingAdmissionPolicyBinding>(Facts { categories: API_EXTENSIONS, ..f }),
            entry::<admissionregistration::ValidatingWebhookConfiguration>(Facts { categories: API_EXTENSIONS, ..f }),
            entry::<scheduling::PriorityClass>(Facts { short: &["pc"], ..f }),
            entry::<coordination::Lease>(f),
            entry::<node::RuntimeClass>(f),
            entry::<discovery::EndpointSlice>(f),
            entry::<flowcontrol::FlowSchema>(Facts { sub: STATUS, ..f }),
            entry::<flowcontrol::PriorityLevelConfiguration>(Facts { sub: STATUS, ..f }),
            entry::<apiextensions::CustomResourceDefinition>(Facts {
                short: &["crd", "crds"],
                categories: API_EXTENSIONS,
                sub: STATUS,
                storage_key: Some("apiextensions.k8s.io/customresourcedefinitions"),
                ..f
            }),
        ];
        Registry::from_owned(types)
    }

    fn from_types(types: Vec<Arc<ResourceType>>, generation: u64) -> Registry {
        let mut by_plural: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_kind: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, t) in types.iter().enumerate() {
            // Kept in table order, so the first entry for a path or kind wins: built-in resources
            // cannot be shadowed by a custom resource definition.
            by_plural.entry(t.plural.to_string()).or_default().push(i);
            by_kind.entry(t.kind.to_string()).or_default().push(i);
        }
        Registry { types, by_plural, by_kind, generation }
    }

    fn from_owned(types: Vec<ResourceType>) -> Registry {
        Registry::from_types(types.into_iter().map(Arc::new).collect(), 0)
    }

    /// This registry's resources plus `extra` (resources of CustomResourceDefinitions), as a new
    /// registry of generation `generation`. Resources of this registry that `extra` would shadow
    /// keep priority. The extra resources are ordered as discovery lists them: by group, then
    /// by version priority (`v1` before `v1beta1` before `v1alpha1`), then by name.
    pub fn extended(&self, extra: Vec<Arc<ResourceType>>, generation: u64) -> Registry {
        let mut extra = extra;
        extra.sort_by(|a, b| {
            a.group
                .cmp(&b.group)
                .then_with(|| compare_kube_aware_versions(&a.version, &b.version))
                .then_with(|| a.plural.cmp(&b.plural))
        });
        let mut types: Vec<Arc<ResourceType>> = self.types.iter().filter(|t| !t.custom).cloned().collect();
        types.extend(extra);
        Registry::from_types(types, generation)
    }

    /// Counts the registries the API server built: a cache of documents derived from the
    /// registry (OpenAPI) is stale when it was built from another generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The resource at `/apis/<group>/<version>/<plural>`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceType>> {
        self.first_of(self.by_plural.get(plural)?, group, version)
    }

    /// The resource serving objects of `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&Arc<ResourceType>> {
        let (group, version) = match api_version.split_once('/') {
            // "/v1" names no group, not the core one.
            Some(("", _)) => return None,
            Some(group_version) => group_version,
            None => ("", api_version),
        };
        self.first_of(self.by_kind.get(kind)?, group, version)
    }

    fn first_of(&self, candidates: &[usize], group: &str, version: &str) -> Option<&Arc<ResourceType>> {
        candidates.iter().map(|&i| &self.types[i]).find(|t| t.group == group && t.version == version)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.types.iter()
    }

    /// Resources of one group version, in table order.
    pub fn resources_in<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResourceType>> + 'a {
        self.types.iter().filter(move |t| t.group == group && t.version == version)
    }

    /// Groups in discovery order, each with its versions, preferred first. The preferred version
    /// is the stored one for built-in groups (autoscaling/v2 before v1), the highest by
    /// upstream's version priority for custom resource groups.
    pub fn groups(&self) -> Vec<GroupVersions<'_>> {
        let mut out: Vec<GroupVersions> = Vec::new();
        for t in &self.types {
            let g = match out.iter_mut().find(|g| g.group == t.group) {
                Some(g) => g,
                None => {
                    out.push(GroupVersions { group: &t.group, versions: Vec::new() });
                    out.last_mut().expect("just pushed")
                }
            };
            if !g.versions.contains(&&*t.version) {
                g.versions.push(&t.version);
            }
        }
        for g in &mut out {
            if self.types.iter().any(|t| t.custom && t.group == g.group) {
                g.versions.sort_by(|a, b| compare_kube_aware_versions(a, b));
            }
        }
        out
    }

    /// The view of `t`'s objects that is stored, when `t` is not itself the stored version.
    pub fn storage_view<'a>(&'a self, t: &'a ResourceType) -> &'a ResourceType {
        if t.storage_version {
            return t;
        }
        self.types.iter().find(|o| o.storage_key == t.storage_key && o.storage_version).map_or(t, |o| &**o)
    }
}

/// How a version string parses for upstream's version priority: `v<major>`, optionally followed
/// by `alpha<minor>` or `beta<minor>`.
fn kube_version(v: &str) -> Option<(u64, u8, u64)> {
    let rest = v.strip_prefix('v')?;
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let major: u64 = rest[..digits].parse().ok().filter(|m| *m > 0)?;
    let tail = &rest[digits..];
    if tail.is_empty() {
        return Some((major, 2, 0));
    }
    let (stability, minor) = if let Some(m) = tail.strip_prefix("beta") {
        (1, m)
    } else if let Some(m) = tail.strip_prefix("alpha") {
        (0, m)
    } else {
        return None;
    };
    let minor: u64 = minor.parse().ok().filter(|m| *m > 0)?;
    Some((major, stability, minor))
}

/// Upstream's `CompareKubeAwareVersionStrings`, as an ordering where the preferred version comes
/// first: GA before beta before alpha, higher numbers first, then non-Kubernetes versions in
/// alphabetical order.
pub fn compare_kube_aware_versions(a: &str, b: &str) -> Ordering {
    match (kube_version(a), kube_version(b)) {
        (Some((ma, sa, na)), Some((mb, sb, nb))) => sb.cmp(&sa).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_every_resource_of_the_listed_groups() {
        let r = Registry::builtin();
        assert_eq!(r.all().count(), 56);
        let groups: Vec<_> = r.groups().iter().map(|g| g.group).collect();
        for g in [
            "",
            "apps",
            "batch",
            "autoscaling",
            "networking.k8s.io",
            "rbac.authorization.k8s.io",
            "coordination.k8s.io",
            "discovery.k8s.io",
            "policy",
            "storage.k8s.io",
            "events.k8s.io",
            "scheduling.k8s.io",
            "node.k8s.io",
            "certificates.k8s.io",
            "admissionregistration.k8s.io",
        ] {
            assert!(groups.contains(&g), "group {g:?} missing");
        }
    }

    #[test]
    fn keys_follow_upstream_layout() {
        let r = Registry::builtin();
        let pods = r.lookup("", "v1", "pods").unwrap();
        assert_eq!(pods.key(Some("default"), "web"), "/registry/pods/default/web");
        let nodes = r.lookup("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/minions/n1");
        assert!(!nodes.namespaced);
        let deploy = r.by_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(r.by_kind("v1", "Pod").map(|t| t.plural.to_string()).as_deref(), Some("pods"));
        assert!(r.by_kind("/v1", "Pod").is_none() && r.by_kind("apps/v1/x", "Deployment").is_none());
        assert!(r.by_kind("v1", "Deployment").is_none() && r.lookup("", "v1", "deployments").is_none());
        assert_eq!(deploy.prefix(None), "/registry/deployments/");
        assert_eq!(deploy.singular, "deployment");
    }

    #[test]
    fn versions_sort_by_kubernetes_priority() {
        let mut v =
            vec!["v1alpha1", "foo10", "v2", "v11alpha2", "v1", "v10beta3", "v3beta1", "foo1", "v12alpha1", "v10"];
        v.sort_by(|a, b| compare_kube_aware_versions(a, b));
        assert_eq!(
            v,
            vec!["v10", "v2", "v1", "v10beta3", "v3beta1", "v12alpha1", "v11alpha2", "v1alpha1", "foo1", "foo10"]
        );
    }

    #[test]
    fn extended_registry_adds_resources_without_shadowing_built_ins() {
        let base = Registry::builtin();
        let fake = |group: &'static str, version: &'static str, plural: &'static str, kind: &'static str| {
            let mut t = entry::<core::ConfigMap>(DEFAULT);
            t.group = Cow::Borrowed(group);
            t.version = Cow::Borrowed(version);
            t.plural = Cow::Borrowed(plural);
            t.kind = Cow::Borrowed(kind);
            t.custom = true;
            t
        };
        let extra = vec![
            fake("example.com", "v1beta1", "widgets", "Widget"),
            fake("example.com", "v1", "widgets", "Widget"),
            fake("", "v1", "pods", "Widget"),
        ];
        let r = base.extended(extra.into_iter().map(Arc::new).collect(), 7);
        assert_eq!(r.generation(), 7);
        assert_eq!(r.all().count(), base.all().count() + 3);
        assert!(!r.lookup("", "v1", "pods").unwrap().custom, "built-ins win");
        assert!(r.lookup("example.com", "v1beta1", "widgets").unwrap().custom);
        let g = r.groups().into_iter().find(|g| g.group == "example.com").unwrap();
        assert_eq!(g.versions, vec!["v1", "v1beta1"]);
        let again = r.extended(Vec::new(), 8);
        assert_eq!(again.all().count(), base.all().count(), "extending replaces the custom resources");
    }

    #[test]
    fn autoscaling_prefers_v2_and_v1_is_a_view_of_it() {
        let r = Registry::builtin();
        let autoscaling = r.groups().into_iter().find(|g| g.group == "autoscaling").unwrap();
        assert_eq!(autoscaling.versions, vec!["v2", "v1"]);
        let v1 = r.lookup("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        assert_eq!(r.storage_view(v1).version, "v2");
    }
}
