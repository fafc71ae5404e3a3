//! CustomResourceDefinitions brought to life: what upstream's apiextensions server does with
//! its in-process controllers, done here by one controller watching the definitions' keys.
//!
//! - Naming (upstream's `NamingConditionController`): a definition's names are accepted unless
//!   another definition of the group already holds them; `status.acceptedNames` and the
//!   `NamesAccepted` condition say which.
//! - Establishing: once its names are accepted, a definition is `Established` and its resources
//!   are served (the registry is rebuilt with them).
//! - `status.storedVersions` always lists the storage version.
//! - Finalizing (upstream's `CRDFinalizer`): a deleted definition keeps its
//!   `customresourcecleanup.apiextensions.k8s.io` finalizer (added by the delete) until all its
//!   custom resources are deleted; then the finalizer goes, and with it the definition and its
//!   resources.
//!
//! Every change of a definition triggers a pass over all of them; a pass is idempotent.

use std::collections::{BTreeSet, HashMap, hash_map::DefaultHasher};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tug_api::custom::{self, CLEANUP_FINALIZER};
use tug_api::{ApiError, ResourceType};
use tug_store::ListOptions;

use crate::codec;
use crate::handlers::delete::{DeleteOptions, delete_object};
use crate::objects::{Mutation, is_deleting, now_rfc3339, store_error};
use crate::server::ApiServer;

const GROUP: &str = "apiextensions.k8s.io";
const PLURAL: &str = "customresourcedefinitions";
/// How often a definition waiting for its custom resources to go is looked at again.
const FINALIZE_RETRY: Duration = Duration::from_secs(5);

/// What the controller remembers between passes.
#[derive(Default)]
pub struct State {
    /// A hash of what the served custom resources were built from, so that the registry (and
    /// the OpenAPI documents derived from it) is rebuilt only when that changes.
    served: Mutex<Option<u64>>,
    /// The registry entries of each served definition, with the hash of what they were built
    /// from: a change of one definition does not parse the schemas of all the others again.
    built: Mutex<HashMap<String, BuiltEntries>>,
}

/// The registry entries built from one definition, and the hash of what they came from.
type BuiltEntries = (u64, Vec<Arc<ResourceType>>);

/// A condition of a definition's status, in upstream's field order.
fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "lastTransitionTime": now_rfc3339(), "reason": reason, "message": message})
}

/// upstream's `SetCRDCondition`: replaces the condition of the same type, keeping its
/// transition time when the status did not change; appends a new one.
pub(crate) fn set_condition(status: &mut Value, new: Value) {
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let conditions = status["conditions"].as_array_mut().expect("just made an array");
    match conditions.iter_mut().find(|c| c["type"] == new["type"]) {
        Some(old) => {
            let time = if old["status"] == new["status"] {
                old["lastTransitionTime"].clone()
            } else {
                new["lastTransitionTime"].clone()
            };
            *old = new;
            old["lastTransitionTime"] = time;
        }
        None => conditions.push(new),
    }
}

fn condition_of<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn is_true(status: &Value, type_: &str) -> bool {
    condition_of(status, type_).is_some_and(|c| c["status"] == "True")
}

/// The names a definition asks for, with upstream's defaults.
fn requested_names(crd: &CustomResourceDefinition) -> CustomResourceDefinitionNames {
    let mut names = crd.spec.names.clone();
    if names.singular.as_deref().is_none_or(str::is_empty) {
        names.singular = Some(names.kind.to_lowercase());
    }
    if names.list_kind.as_deref().is_none_or(str::is_empty) {
        names.list_kind = Some(format!("{}List", names.kind));
    }
    names
}

/// upstream's `equalToAcceptedOrFresh`.
fn accept(requested: &str, accepted: &str, used: &BTreeSet<String>) -> Result<(), String> {
    if requested == accepted || !used.contains(requested) {
        Ok(())
    } else {
        Err(format!("{requested:?} is already in use"))
    }
}

/// The status the naming and establishing controllers give `crd`, given the names the other
/// definitions of its group hold.
fn desired_status(crd: &CustomResourceDefinition, current: &Value, others: &[&CustomResourceDefinition]) -> Value {
    let mut resources = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for other in others {
        let Some(names) = other.status.as_ref().and_then(|s| s.accepted_names.as_ref()) else { continue };
        resources.insert(names.plural.clone());
        resources.extend(names.singular.clone());
        resources.extend(names.short_names.iter().flatten().cloned());
        kinds.insert(names.kind.clone());
        kinds.extend(names.list_kind.clone());
    }
    let requested = requested_names(crd);
    let accepted = crd.status.as_ref().and_then(|s| s.accepted_names.clone()).unwrap_or_default();
    let mut names = accepted.clone();
    let mut conflict: Option<(&str, String)> = None;
    match accept(&requested.plural, &accepted.plural, &resources) {
        Ok(()) => names.plural = requested.plural.clone(),
        Err(e) => conflict = Some(("PluralConflict", e)),
    }
    let (req_singular, acc_singular) =
        (requested.singular.clone().unwrap_or_default(), accepted.singular.clone().unwrap_or_default());
    match accept(&req_singular, &acc_singular, &resources) {
        Ok(()) => names.singular = Some(req_singular),
        Err(e) => conflict = Some(("SingularConflict", e)),
    }
    if requested.short_names != accepted.short_names {
        let held: BTreeSet<String> = accepted.short_names.iter().flatten().cloned().collect();
        let errs: Vec<String> = requested
            .short_names
            .iter()
            .flatten()
            .filter(|s| !held.contains(*s) && **s != accepted.plural && Some(*s) != accepted.singular.as_ref())
            .filter_map(|s| accept(s, "", &resources).err())
            .collect();
        if errs.is_empty() {
            names.short_names = requested.short_names.clone();
        } else {
            conflict = Some(("ShortNamesConflict", errs.join(", ")));
        }
    }
    match accept(&requested.kind, &accepted.kind, &kinds) {
        Ok(()) => names.kind = requested.kind.clone(),
        Err(e) => conflict = Some(("KindConflict", e)),
    }
    let (req_list, acc_list) =
        (requested.list_kind.clone().unwrap_or_default(), accepted.list_kind.clone().unwrap_or_default());
    match accept(&req_list, &acc_list, &kinds) {
        Ok(()) => names.list_kind = Some(req_list),
        Err(e) => conflict = Some(("ListKindConflict", e)),
    }
    names.categories = requested.categories.clone();

    let mut status = current.clone();
    if !status.is_object() {
        status = json!({});
    }
    status["acceptedNames"] = serde_json::to_value(&names).unwrap_or_else(|_| json!({}));
    let names_accepted = conflict.is_none();
    set_condition(
        &mut status,
        match &conflict {
            None => condition("NamesAccepted", "True", "NoConflicts", "no conflicts found"),
            Some((reason, message)) => condition("NamesAccepted", "False", reason, message),
        },
    );
    // The establishing controller's part: served as soon as the names are accepted.
    if names_accepted && !is_true(&status, "Established") {
        set_condition(
            &mut status,
            condition("Established", "True", "InitialNamesAccepted", "the initial names have been accepted"),
        );
    } else if condition_of(&status, "Established").is_none() {
        set_condition(&mut status, condition("Established", "False", "NotAccepted", "not all names are accepted"));
    }
    let mut stored: Vec<Value> = status["storedVersions"].as_array().cloned().unwrap_or_default();
    if let Some(v) = crd.spec.versions.iter().find(|v| v.storage)
        && !stored.iter().any(|s| s == v.name.as_str())
    {
        stored.push(json!(v.name));
    }
    status["storedVersions"] = Value::Array(stored);
    status
}

/// Equal up to the transition times of conditions.
fn same_status(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(conds) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in conds.iter_mut() {
                c.as_object_mut().map(|m| m.remove("lastTransitionTime"));
            }
        }
        v
    };
    strip(a) == strip(b)
}

fn name_of(crd: &CustomResourceDefinition) -> &str {
    crd.metadata.name.as_deref().unwrap_or("")
}

impl ApiServer {
    fn crd_resource(&self) -> Arc<ResourceType> {
        self.registry().lookup(GROUP, "v1", PLURAL).expect("customresourcedefinitions are served").clone()
    }

    /// Writes a definition's status; returns the definition as stored.
    async fn write_crd_status(&self, crd_rt: &ResourceType, name: &str, status: &Value) -> Result<Value, ApiError> {
        let (out, _) = self
            .update_object(crd_rt, None, name, Some("status"), false, |current| {
                let mut next = current.clone();
                next["status"] = status.clone();
                next["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
                Ok(Mutation::Write(next))
            })
            .await?;
        Ok(out)
    }

    /// One pass of the controller. Returns whether a deleted definition still waits for its
    /// custom resources to go (then the pass should be repeated after a while).
    pub(crate) async fn sync_custom_resources(&self) -> Result<bool, ApiError> {
        let crd_rt = self.crd_resource();
        let listed = self
            .store
            .list(&crd_rt.prefix(None), ListOptions::default())
            .await
            .map_err(|e| store_error(&crd_rt, "", e))?;
        let mut crds: Vec<CustomResourceDefinition> = Vec::new();
        for kv in &listed.items {
            let obj = codec::decode_stored(kv)?;
            match serde_json::from_value(obj) {
                Ok(crd) => crds.push(crd),
                Err(e) => warn!(key = %kv.key, error = %e, "skipping a CustomResourceDefinition that does not decode"),
            }
        }
        // Older definitions keep their names when a newer one asks for the same.
        crds.sort_by(|a, b| {
            let t = |c: &CustomResourceDefinition| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a).cmp(&t(b)).then_with(|| name_of(a).cmp(name_of(b)))
        });
        // The statuses the naming and establishing controllers want. Later definitions see
        // the names of earlier ones as accepted already.
        let mut writes = Vec::new();
        for i in 0..crds.len() {
            let current = serde_json::to_value(&crds[i].status).unwrap_or(Value::Null);
            let others: Vec<&CustomResourceDefinition> = crds
                .iter()
                .enumerate()
                .filter(|(j, c)| *j != i && c.spec.group == crds[i].spec.group)
                .map(|(_, c)| c)
                .collect();
            let desired = desired_status(&crds[i], &current, &others);
            if same_status(&desired, &current) {
                continue;
            }
            match serde_json::from_value(desired.clone()) {
                Ok(status) => crds[i].status = Some(status),
                Err(e) => warn!(crd = %name_of(&crds[i]), error = %e, "computed status does not decode"),
            }
            writes.push((name_of(&crds[i]).to_string(), desired));
        }
        // Resources are served before their definition says `Established`, so that a client
        // that waited for the condition finds them.
        self.serve_custom_resources(&crds);
        for (name, desired) in writes {
            match self.write_crd_status(&crd_rt, &name, &desired).await {
                Ok(_) => {}
                // Changed or gone meanwhile: the watch brings the next pass.
                Err(e) if matches!(e.code, 404 | 409) => {
                    debug!(crd = %name, "definition changed during the status update")
                }
                Err(e) => warn!(crd = %name, error = %e, "updating the definition's status"),
            }
        }
        let mut pending = false;
        for crd in crds.iter().filter(|c| c.metadata.deletion_timestamp.is_some()) {
            if crd.metadata.finalizers.iter().flatten().any(|f| f == CLEANUP_FINALIZER) {
                pending |= self.finalize_crd(&crd_rt, crd, &crds).await?;
            }
        }
        Ok(pending)
    }

    /// Serves the resources of every definition whose names are accepted.
    fn serve_custom_resources(&self, crds: &[CustomResourceDefinition]) {
        let served: Vec<(&CustomResourceDefinition, u64)> = crds
            .iter()
            .filter(|c| custom::condition_is_true(c, "NamesAccepted") || custom::condition_is_true(c, "Established"))
            .map(|c| {
                let mut hasher = DefaultHasher::new();
                let terminating = c.metadata.deletion_timestamp.is_some();
                json!([c.metadata.uid, c.spec, custom::served_names(c), terminating]).to_string().hash(&mut hasher);
                (c, hasher.finish())
            })
            .collect();
        let mut hasher = DefaultHasher::new();
        for (crd, h) in &served {
            (name_of(crd), h).hash(&mut hasher);
        }
        let fingerprint = hasher.finish();
        let mut last = self.crd_state.served.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some(fingerprint) {
            return;
        }
        *last = Some(fingerprint);
        let mut built = self.crd_state.built.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        let mut types = Vec::new();
        for (crd, h) in served {
            let name = name_of(crd).to_string();
            let entries = match built.remove(&name) {
                Some((old, entries)) if old == h => entries,
                _ => custom::resource_types(crd).into_iter().map(Arc::new).collect(),
            };
            types.extend(entries.iter().cloned());
            next.insert(name, (h, entries));
        }
        *built = next;
        info!(definitions = built.len(), resources = types.len(), "serving custom resources");
        self.set_custom_resources(types);
    }

    /// upstream's `CRDFinalizer`: deletes the definition's custom resources, then removes the
    /// cleanup finalizer. Returns whether resources remain (to be looked at again).
    async fn finalize_crd(
        &self,
        crd_rt: &ResourceType,
        crd: &CustomResourceDefinition,
        all: &[CustomResourceDefinition],
    ) -> Result<bool, ApiError> {
        let name = name_of(crd).to_string();
        let mut status = serde_json::to_value(&crd.status).unwrap_or_else(|_| json!({}));
        set_condition(
            &mut status,
            condition("Terminating", "True", "InstanceDeletionInProgress", "CustomResource deletion is in progress"),
        );
        let established = is_true(&status, "Established");
        let outcome = if established {
            match self.delete_instances(crd).await {
                Ok(0) => condition("Terminating", "False", "InstanceDeletionCompleted", "removed all instances"),
                Ok(left) => {
                    debug!(crd = %name, left, "waiting for custom resources to be removed");
                    self.write_crd_status_if_changed(crd_rt, crd, &status).await;
                    return Ok(true);
                }
                Err(e) => {
                    set_condition(
                        &mut status,
                        condition(
                            "Terminating",
                            "True",
                            "InstanceDeletionFailed",
                            &format!("could not issue all deletes: {}", e.message),
                        ),
                    );
                    self.write_crd_status_if_changed(crd_rt, crd, &status).await;
                    return Ok(true);
                }
            }
        } else {
            condition("Terminating", "False", "NeverEstablished", "resource was never established")
        };
        set_condition(&mut status, outcome);
        self.write_crd_status_if_changed(crd_rt, crd, &status).await;
        // No longer served before the definition is gone, so that whoever sees it gone finds
        // no trace of it in discovery either. Should the finalizer stay, the next pass serves
        // it again.
        let rest: Vec<CustomResourceDefinition> = all.iter().filter(|c| name_of(c) != name).cloned().collect();
        self.serve_custom_resources(&rest);
        let removed = self
            .update_object(crd_rt, None, &name, None, false, |current| {
                let mut next = current.clone();
                if let Some(f) = next["metadata"]["finalizers"].as_array_mut() {
                    f.retain(|x| x != CLEANUP_FINALIZER);
                }
                next["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
                Ok(Mutation::Write(next))
            })
            .await;
        match removed {
            Ok(_) => info!(crd = %name, "custom resource definition finalized"),
            Err(e) if e.code == 404 => {}
            Err(e) => warn!(crd = %name, error = %e, "removing the cleanup finalizer"),
        }
        Ok(false)
    }

    async fn write_crd_status_if_changed(&self, crd_rt: &ResourceType, crd: &CustomResourceDefinition, status: &Value) {
        let current = serde_json::to_value(&crd.status).unwrap_or(Value::Null);
        if same_status(status, &current) {
            return;
        }
        if let Err(e) = self.write_crd_status(crd_rt, name_of(crd), status).await {
            debug!(crd = %name_of(crd), error = %e, "updating the terminating condition");
        }
    }

    /// Deletes every custom resource of a definition (in all namespaces), with the usual delete
    /// semantics (finalizers are honoured). Returns how many are left.
    async fn delete_instances(&self, crd: &CustomResourceDefinition) -> Result<usize, ApiError> {
        let names = custom::served_names(crd);
        let registry = self.registry();
        let rt = registry
            .all()
            .filter(|t| t.custom && t.group == crd.spec.group && t.plural == names.plural)
            .max_by_key(|t| t.storage_version)
            .cloned();
        let prefix = format!("/registry/{}/{}/", crd.spec.group, names.plural);
        let listed = self.store.list(&prefix, ListOptions::default()).await.map_err(ApiError::internal)?;
        for kv in &listed.items {
            let obj = codec::decode_stored(kv)?;
            if is_deleting(&obj) {
                continue;
            }
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
            let result = match &rt {
                Some(rt) => delete_object(self, rt, ns.as_deref(), &name, &DeleteOptions::default()).await.map(|_| ()),
                // Not served (never was, or no longer): the objects go without ceremony.
                None => self.store.delete(&kv.key, None).await.map(|_| ()).map_err(ApiError::internal),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        self.store.count(&prefix).await.map_err(ApiError::internal)
    }

    /// Keeps custom resources in step with their definitions until `shutdown`: a pass after
    /// every change of a definition, and every few seconds while a deletion waits.
    pub async fn run_crd_controller(self, shutdown: CancellationToken) {
        let prefix = format!("/registry/{GROUP}/{PLURAL}/");
        loop {
            let revision = match self.store.current_revision().await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "reading the store revision");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(FINALIZE_RETRY) => continue,
                    }
                }
            };
            let mut pending = self.sync_logged().await;
            let mut stream = match self.store.watch(&prefix, revision).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "watching custom resource definitions");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(FINALIZE_RETRY) => continue,
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(FINALIZE_RETRY), if pending => {}
                    event = stream.next() => match event {
                        Some(Ok(_)) => {
                            // Take whatever else already arrived: one pass covers them all.
                            while let Some(Some(Ok(_))) = stream.next().now_or_never() {}
                        }
                        // Ended or fell behind: start over from the current state.
                        _ => break,
                    },
                }
                pending = self.sync_logged().await;
            }
        }
    }

    async fn sync_logged(&self) -> bool {
        match self.sync_custom_resources().await {
            Ok(pending) => pending,
            Err(e) => {
                warn!(error = %e, "syncing custom resource definitions");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(name: &str, plural: &str, kind: &str, status: Value) -> CustomResourceDefinition {
        let group = name.split_once('.').unwrap().1;
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"group": group, "scope": "Namespaced", "names": {"plural": plural, "kind": kind, "shortNames": ["x"]},
                     "versions": [{"name": "v1", "served": true, "storage": true}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn fresh_names_are_accepted_and_established() {
        let c = crd("widgets.example.com", "widgets", "Widget", json!(null));
        let status = desired_status(&c, &Value::Null, &[]);
        assert_eq!(status["acceptedNames"]["plural"], "widgets");
        assert_eq!(status["acceptedNames"]["singular"], "widget");
        assert_eq!(status["acceptedNames"]["listKind"], "WidgetList");
        assert_eq!(status["storedVersions"], json!(["v1"]));
        let names = condition_of(&status, "NamesAccepted").unwrap();
        assert_eq!((&names["status"], &names["reason"]), (&json!("True"), &json!("NoConflicts")));
        let est = condition_of(&status, "Established").unwrap();
        assert_eq!((&est["status"], &est["reason"]), (&json!("True"), &json!("InitialNamesAccepted")));
        assert!(same_status(&status, &desired_status(&c, &status, &[])), "a second pass changes nothing");
    }

    #[test]
    fn names_held_by_another_definition_conflict() {
        let holder = crd(
            "widgets.example.com",
            "widgets",
            "Widget",
            json!({"acceptedNames": {"plural": "widgets", "kind": "Widget", "singular": "widget", "listKind": "WidgetList"}}),
        );
        let late = crd("gadgets.example.com", "gadgets", "Widget", json!(null));
        let status = desired_status(&late, &Value::Null, &[&holder]);
        let names = condition_of(&status, "NamesAccepted").unwrap();
        assert_eq!(names["status"], "False");
        assert_eq!(names["reason"], "ListKindConflict");
        assert_eq!(status["acceptedNames"]["plural"], "gadgets");
        assert_eq!(status["acceptedNames"]["kind"], "");
        assert_eq!(condition_of(&status, "Established").unwrap()["reason"], "NotAccepted");
    }

    fn server() -> ApiServer {
        ApiServer::new(
            std::sync::Arc::new(tug_store::memory::MemoryStore::new()),
            None,
            crate::ServerOptions::default(),
        )
    }

    fn widget_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}},
                    {"name": "v1alpha1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                ],
            },
        })
    }

    #[tokio::test]
    async fn stored_definitions_are_served_and_finalized_on_delete() {
        let srv = server();
        srv.bootstrap().await.unwrap();
        let before = srv.registry().generation();
        srv.ensure_object(GROUP, "v1", PLURAL, widget_crd(), false).await.unwrap();
        assert!(srv.registry().lookup("example.com", "v1", "widgets").is_none(), "not served before a pass");
        assert!(!srv.sync_custom_resources().await.unwrap());
        let registry = srv.registry();
        assert!(registry.generation() > before);
        let rt = registry.lookup("example.com", "v1", "widgets").unwrap().clone();
        assert!(rt.custom && rt.storage_version);
        assert!(registry.by_kind("example.com/v1alpha1", "Widget").is_some());
        let group = registry.groups().into_iter().find(|g| g.group == "example.com").unwrap();
        assert_eq!(group.versions, vec!["v1", "v1alpha1"]);
        let listed = crate::discovery::resource_list(&registry, "example.com", "v1").unwrap();
        assert_eq!(listed["resources"][0]["name"], "widgets");
        let doc = crate::openapi::group_version(&srv, &registry, "example.com", "v1").unwrap();
        assert!(doc["components"]["schemas"]["com.example.v1.Widget"].is_object());
        assert!(doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());

        // A second pass changes nothing, so the registry (and what derives from it) stays.
        srv.sync_custom_resources().await.unwrap();
        assert_eq!(srv.registry().generation(), registry.generation());

        let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "default"}, "spec": {"size": 2}});
        let admitted = srv.admit_new(&rt, widget).unwrap();
        srv.store_new(&rt, admitted.object, false).await.unwrap();

        let crd_rt = srv.crd_resource();
        delete_object(&srv, &crd_rt, None, "widgets.example.com", &DeleteOptions::default()).await.unwrap();
        let (pending, _) = srv.read(&crd_rt, None, "widgets.example.com").await.unwrap();
        assert_eq!(pending["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
        assert_eq!(condition_of(&pending["status"], "Terminating").unwrap()["reason"], "InstanceDeletionPending");

        assert!(!srv.sync_custom_resources().await.unwrap());
        assert_eq!(srv.read(&crd_rt, None, "widgets.example.com").await.unwrap_err().code, 404);
        assert_eq!(srv.store.count("/registry/example.com/widgets/").await.unwrap(), 0);
        srv.sync_custom_resources().await.unwrap();
        assert!(srv.registry().lookup("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_holds() {
        let mut status = json!({"conditions": [{"type": "A", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z", "reason": "x", "message": ""}]});
        set_condition(&mut status, condition("A", "True", "y", "m"));
        assert_eq!(status["conditions"][0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(status["conditions"][0]["reason"], "y");
        set_condition(&mut status, condition("A", "False", "z", "m"));
        assert_ne!(status["conditions"][0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        set_condition(&mut status, condition("B", "True", "b", ""));
        assert_eq!(status["conditions"].as_array().unwrap().len(), 2);
    }
}
