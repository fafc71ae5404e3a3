//! The field manager: what upstream's `FieldManager` chain does around structured merge.
//!
//! - **Update** (create, update and the non-apply patches): the writer becomes the owner of
//!   every field the write added or changed, and every manager loses the fields the write
//!   changed or removed. Objects without managed fields stay untracked until their first apply
//!   (`skipNonApplied`), except on create; a request may replace the entries it is sent with,
//!   and an empty list resets them. Tracking never fails a write (upstream's `UpdateNoErrors`):
//!   entries that cannot be decoded are ignored.
//! - **Apply**: the configuration is merged into the live object; fields the applier applied
//!   last time and omits now are removed unless another manager owns them; the applier's set
//!   becomes exactly the configuration's fields; changing a field another manager owns is a
//!   conflict unless forced, and forcing takes the field over. `kubectl` applying over an object
//!   managed by client-side apply is let through on the fields its last-applied annotation
//!   still matches, and that annotation is kept up to date.
//!
//! Bookkeeping fields (`apiVersion`, `kind`, `metadata.name`, `uid`, `resourceVersion`, ...)
//! are never owned. Fields the resource's strategy resets are ignored: `status` through the
//! main resource of a type with a status subresource, everything but `status` through `status`.

use std::sync::LazyLock;

use serde_json::{Value, json};

use super::fieldpath::{Path, PathElement, Set, values_equal};
use super::managed::{DecodeError, Managed, ManagerId, Operation, VersionedSet, is_reset, seconds};
use super::merge::{merge, remove_items};
use super::typed::{Atom, Schema};
use super::walk::{Comparison, FieldSetWalk, compare, ensure_named_fields_are_members};
use crate::schema::SchemaSet;
use crate::status::{ApiError, Cause, Details};

/// The annotation client-side `kubectl apply` records its configuration in.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Upstream caps the number of `Update` entries, merging the oldest.
const MAX_UPDATE_MANAGERS: usize = 10;
const ANCIENT_CHANGES: &str = "ancient-changes";
const BEFORE_FIRST_APPLY: &str = "before-first-apply";
/// The manager that `lastApplied` handling applies to, as upstream hard-codes it.
const KUBECTL: &str = "kubectl";

/// Which fields the resource's strategy resets on writes through this endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    Nothing,
    /// The main resource of a type with a status subresource.
    Status,
    /// The status subresource.
    AllButStatus,
}

/// One conflict: a field another manager owns that the apply would change.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: ManagerId,
    pub path: Path,
}

/// Why an apply failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    #[error("metadata.managedFields must be nil")]
    ManagedFieldsSet,
    #[error("failed to create typed patch object ({object}): {}", join_errors(.errors))]
    InvalidConfiguration { object: String, errors: Vec<String> },
    #[error("failed to decode managed fields: {0}")]
    LiveManagedFields(#[from] DecodeError),
}

fn join_errors(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("errors:\n{}", many.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")),
    }
}

/// Upstream's `getConflictMessage`.
fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [one] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", one.manager.describe(), one.path);
    }
    let mut by_manager: std::collections::BTreeMap<String, (&ManagerId, Vec<&Path>)> = Default::default();
    for c in conflicts {
        by_manager.entry(c.manager.identifier()).or_insert_with(|| (&c.manager, Vec::new())).1.push(&c.path);
    }
    let mut lines = Vec::new();
    for (manager, paths) in by_manager.values() {
        lines.push(format!("conflicts with {}:", manager.describe()));
        lines.extend(paths.iter().map(|p| format!("- {p}")));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> ApiError {
        match &e {
            ApplyError::Conflicts(conflicts) => ApiError {
                code: 409,
                reason: "Conflict",
                message: e.to_string(),
                details: Some(Box::new(Details {
                    causes: conflicts
                        .iter()
                        .map(|c| Cause {
                            reason: "FieldManagerConflict".into(),
                            message: format!("conflict with {}", c.manager.describe()),
                            field: Some(c.path.to_string()),
                        })
                        .collect(),
                    ..Details::default()
                })),
            },
            ApplyError::ManagedFieldsSet => ApiError::bad_request(e.to_string()),
            // Upstream answers these with 500 as well.
            ApplyError::InvalidConfiguration { .. } | ApplyError::LiveManagedFields(_) => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

/// The field manager of one resource endpoint.
pub struct FieldManager<'s> {
    schema: Schema<'s>,
    definition: &'s str,
    api_version: &'s str,
    subresource: &'s str,
    reset: Reset,
}

impl<'s> FieldManager<'s> {
    /// `definition` is the kind's schema definition (absent definitions are treated as
    /// free-form), `api_version` the endpoint's group version (`apps/v1`), `subresource` empty
    /// for the main resource.
    pub fn new(
        set: &'s SchemaSet,
        definition: &'s str,
        api_version: &'s str,
        subresource: &'s str,
        reset: Reset,
    ) -> Self {
        FieldManager { schema: Schema { set }, definition, api_version, subresource, reset }
    }

    fn root(&self) -> Atom<'s> {
        self.schema.root(self.definition)
    }

    /// Records a non-apply write by `manager` in `new`'s `metadata.managedFields`. `live` is the
    /// stored object (`None` on create); `requested` the `managedFields` the request carried.
    pub fn update(&self, live: Option<&Value>, requested: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
        remove_managed_fields(new);
        let entries = self.tracked(live, requested, new, manager, now);
        set_managed_fields(new, entries);
    }

    /// The entries after the write; entries that cannot be decoded count as none, so tracking
    /// never fails a write.
    fn tracked(
        &self,
        live: Option<&Value>,
        requested: Option<&Value>,
        new: &Value,
        manager: &str,
        now: &str,
    ) -> Option<Value> {
        let live_entries = live.and_then(|l| l.pointer("/metadata/managedFields"));
        let mut managed = if !self.subresource.is_empty() {
            Managed::decode(live_entries).unwrap_or_default()
        } else if is_reset(requested) {
            Managed::default()
        } else {
            match requested.map(|r| Managed::decode(Some(r))) {
                Some(Ok(m)) if !m.is_empty() => m,
                _ => Managed::decode(live_entries).unwrap_or_default(),
            }
        };
        // Existing objects without managed fields stay untracked until they are applied to.
        if managed.is_empty() && live.is_some() {
            return None;
        }
        let empty = json!({});
        self.track_update(live.unwrap_or(&empty), new, &mut managed, manager, now);
        managed.encode()
    }

    /// Upstream's `Updater.Update` with the manager bookkeeping around it.
    fn track_update(&self, live: &Value, new: &Value, managed: &mut Managed, manager: &str, now: &str) {
        let id = ManagerId::new(manager, Operation::Update, self.api_version, self.subresource);
        // The write's own changes are computed as a fresh manager's, so the writer's previous
        // entry loses what it changed or removed like everyone else's, then gets them back.
        let Ok(cmp) = self.update_managers(live, new, managed, None, true) else {
            return;
        };
        let mut set = merged(cmp.modified, cmp.added);
        strip_meta(&mut set);
        if set.is_empty() {
            return;
        }
        let merged = match managed.fields.remove(&id) {
            Some(previous) => set.union(&previous.set),
            None => set,
        };
        managed
            .fields
            .insert(id.clone(), VersionedSet { set: merged, api_version: self.api_version.into(), applied: false });
        managed.times.insert(id, now.into());
        cap_update_managers(managed);
    }

    /// Applies `config` as `manager`. `live` is the stored object, `None` when the apply creates
    /// it. Returns the object to write, with its managed fields.
    pub fn apply(
        &self,
        live: Option<&Value>,
        config: &Value,
        manager: &str,
        force: bool,
        now: &str,
    ) -> Result<Value, ApplyError> {
        if config.pointer("/metadata/managedFields").is_some_and(|v| !v.is_null()) {
            return Err(ApplyError::ManagedFieldsSet);
        }
        let empty = json!({});
        let live = live.unwrap_or(&empty);
        let mut managed = Managed::decode(live.pointer("/metadata/managedFields"))?;
        let root = self.root();
        let mut walk = FieldSetWalk::new(self.schema, true);
        let config_set = walk.run(config, &root);
        if !walk.errors.is_empty() {
            return Err(ApplyError::InvalidConfiguration { object: describe_object(config), errors: walk.errors });
        }
        // The fields of an object no one tracked yet go to a placeholder manager first.
        if managed.is_empty() && !live.as_object().is_none_or(|o| o.is_empty()) {
            self.track_update(&empty, live, &mut managed, BEFORE_FIRST_APPLY, now);
        }
        let id = ManagerId::new(manager, Operation::Apply, self.api_version, self.subresource);
        let (mut object, managed) = match self.apply_once(live, config, &config_set, managed.clone(), &id, force, now) {
            Err(ApplyError::Conflicts(conflicts)) if manager == KUBECTL => {
                let allowed = self.allowed_by_last_applied(live).unwrap_or_default();
                let remaining: Vec<Conflict> = conflicts.iter().filter(|c| !allowed.has(&c.path.0)).cloned().collect();
                if !remaining.is_empty() {
                    return Err(ApplyError::Conflicts(remaining));
                }
                self.apply_once(live, config, &config_set, managed, &id, true, now)?
            }
            other => other?,
        };
        if manager == KUBECTL && has_last_applied(&object) {
            object["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] = json!(last_applied_of(config));
        }
        set_managed_fields(&mut object, managed.encode());
        Ok(object)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_once(
        &self,
        live: &Value,
        config: &Value,
        config_set: &Set,
        mut managed: Managed,
        id: &ManagerId,
        force: bool,
        now: &str,
    ) -> Result<(Value, Managed), ApplyError> {
        let root = self.root();
        let merged = merge(self.schema, live, config, &root);
        let last = managed.fields.get(id).map(|vs| vs.set.clone());
        managed.fields.insert(
            id.clone(),
            VersionedSet { set: self.exclude(config_set.clone()), api_version: self.api_version.into(), applied: true },
        );
        let merged = match last {
            Some(last) if !last.is_empty() => self.prune(merged, &managed, &last),
            _ => merged,
        };
        self.update_managers(live, &merged, &mut managed, Some(id), force)?;
        if let Some(vs) = managed.fields.get_mut(id) {
            strip_meta(&mut vs.set);
            if vs.set.is_empty() {
                managed.fields.remove(id);
            }
        }
        if values_equal(live, &merged) {
            let mut object = live.clone();
            remove_managed_fields(&mut object);
            Ok((object, managed))
        } else {
            managed.times.insert(id.clone(), now.into());
            Ok((merged, managed))
        }
    }

    /// Removes what the applier owned last time and no longer applies, unless someone
    /// (including the applier's new configuration) owns it (upstream's `prune`).
    fn prune(&self, merged: Value, managed: &Managed, last: &Set) -> Value {
        let root = self.root();
        let named = |set: &Set| ensure_named_fields_are_members(self.schema, set, &root);
        let field_set = |v: &Value| FieldSetWalk::new(self.schema, false).run(v, &root);
        let pruned = remove_items(self.schema, &merged, &named(last), &root);
        // Add back what anyone owns.
        let mut owned = Set::new();
        for vs in managed.fields.values() {
            owned.union_with(&vs.set);
        }
        let merged_set = named(&field_set(&merged));
        let pruned_set = named(&field_set(&pruned));
        let pruned =
            remove_items(self.schema, &merged, &merged_set.difference(&pruned_set.union(&named(&owned))), &root);
        // Only remove what the applier owned: add back dangling items.
        let pruned_set = named(&field_set(&pruned));
        remove_items(self.schema, &merged, &merged_set.difference(&pruned_set).intersection(&named(last)), &root)
    }

    /// Upstream's `Updater.update`: managers other than `except` lose the fields the write
    /// changes (a conflict unless `force`) or removes; managers left with nothing are dropped.
    fn update_managers(
        &self,
        old: &Value,
        new: &Value,
        managed: &mut Managed,
        except: Option<&ManagerId>,
        force: bool,
    ) -> Result<Comparison, ApplyError> {
        let mut cmp = compare(self.schema, old, new, &self.root());
        for set in [&mut cmp.added, &mut cmp.modified, &mut cmp.removed] {
            *set = self.exclude(std::mem::take(set));
        }
        // With no other manager there is nobody to conflict with: a create's common case, where
        // building the changed set would copy the whole object's fields for nothing.
        let mut conflicts = Vec::new();
        let others = managed.fields.keys().any(|id| Some(id) != except);
        let changed = if others { cmp.modified.union(&cmp.added) } else { Set::new() };
        for (id, vs) in &managed.fields {
            if Some(id) == except {
                continue;
            }
            let taken = vs.set.intersection(&changed);
            if !taken.is_empty() {
                conflicts.push((id.clone(), taken));
            }
        }
        if !force && !conflicts.is_empty() {
            let list = conflicts
                .iter()
                .flat_map(|(id, set)| set.paths().into_iter().map(move |path| Conflict { manager: id.clone(), path }))
                .collect();
            return Err(ApplyError::Conflicts(list));
        }
        for (id, taken) in conflicts {
            if let Some(vs) = managed.fields.get_mut(&id) {
                vs.set = vs.set.difference(&taken);
            }
        }
        if !cmp.removed.is_empty() {
            for (id, vs) in managed.fields.iter_mut() {
                if Some(id) != except {
                    vs.set = vs.set.difference(&cmp.removed);
                }
            }
        }
        managed.fields.retain(|_, vs| !vs.set.is_empty());
        let fields = &managed.fields;
        managed.times.retain(|id, _| fields.contains_key(id));
        Ok(cmp)
    }

    /// The fields of the last-applied annotation that the live object still has unchanged:
    /// conflicts on them are client-side apply's, which `kubectl` may take over.
    fn allowed_by_last_applied(&self, live: &Value) -> Option<Set> {
        let text =
            live.pointer("/metadata/annotations")?.get(LAST_APPLIED_ANNOTATION)?.as_str().filter(|s| !s.is_empty())?;
        let last: Value = serde_json::from_str(text).ok()?;
        if last.get("apiVersion").and_then(Value::as_str) != Some(self.api_version) {
            return None;
        }
        let root = self.root();
        let mut walk = FieldSetWalk::new(self.schema, true);
        let set = walk.run(&last, &root);
        if !walk.errors.is_empty() {
            return None;
        }
        let cmp = compare(self.schema, &last, live, &root);
        Some(set.difference(&cmp.modified).difference(&cmp.added).difference(&cmp.removed))
    }

    /// Drops the fields the strategy resets (upstream's `IgnoredFields`).
    fn exclude(&self, mut set: Set) -> Set {
        let status = PathElement::Field("status".into());
        match self.reset {
            Reset::Nothing => {}
            Reset::Status => set.remove_subtree(&status),
            Reset::AllButStatus => set.retain_only(&status),
        }
        set
    }
}

/// The union of two sets; when one is empty, the other as it is, without copying it.
fn merged(a: Set, b: Set) -> Set {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b,
        (_, true) => a,
        _ => {
            let mut a = a;
            a.union_with(&b);
            a
        }
    }
}

/// Removes the bookkeeping fields no manager owns (upstream's `stripMetaManager`).
fn strip_meta(set: &mut Set) {
    // Built once: every tracked write strips them.
    static META: LazyLock<Vec<Path>> = LazyLock::new(|| {
        [
            &["apiVersion"][..],
            &["kind"],
            &["metadata"],
            &["metadata", "name"],
            &["metadata", "namespace"],
            &["metadata", "creationTimestamp"],
            &["metadata", "selfLink"],
            &["metadata", "uid"],
            &["metadata", "clusterName"],
            &["metadata", "generation"],
            &["metadata", "managedFields"],
            &["metadata", "resourceVersion"],
        ]
        .into_iter()
        .map(Path::fields)
        .collect()
    });
    for path in META.iter() {
        set.remove(&path.0);
    }
}

/// Upstream's `capManagersManager`: past ten `Update` entries, the oldest are merged into one
/// `ancient-changes` entry per API version.
fn cap_update_managers(managed: &mut Managed) {
    let mut updaters: Vec<ManagerId> =
        managed.fields.iter().filter(|(_, vs)| !vs.applied).map(|(id, _)| id.clone()).collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort_by(|a, b| {
        seconds(managed.times.get(a))
            .cmp(&seconds(managed.times.get(b)))
            .then_with(|| a.identifier().cmp(&b.identifier()))
    });
    let mut first_of_version: std::collections::HashMap<String, ManagerId> = Default::default();
    let mut length = updaters.len();
    for id in updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let Some(vs) = managed.fields.get(&id).cloned() else {
            continue;
        };
        let time = managed.times.get(&id).cloned();
        let bucket = ManagerId::new(ANCIENT_CHANGES, Operation::Update, &vs.api_version, "");
        match first_of_version.get(&vs.api_version) {
            Some(first) => {
                if !managed.fields.contains_key(&bucket)
                    && let Some(first_set) = managed.fields.remove(first)
                {
                    managed.times.remove(first);
                    managed.fields.insert(bucket.clone(), first_set);
                }
                let union = managed.fields.get(&bucket).map(|b| b.set.union(&vs.set)).unwrap_or_else(|| vs.set.clone());
                managed.fields.insert(
                    bucket.clone(),
                    VersionedSet { set: union, api_version: vs.api_version.clone(), applied: false },
                );
                managed.fields.remove(&id);
                managed.times.remove(&id);
                match time {
                    Some(t) => managed.times.insert(bucket, t),
                    None => managed.times.remove(&bucket),
                };
                length -= 1;
            }
            None => {
                first_of_version.insert(vs.api_version.clone(), id);
            }
        }
    }
}

fn remove_managed_fields(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
}

fn set_managed_fields(obj: &mut Value, entries: Option<Value>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    match entries {
        Some(e) => {
            meta.insert("managedFields".into(), e);
        }
        None => {
            meta.remove("managedFields");
        }
    }
}

fn has_last_applied(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

/// The configuration as upstream records it in the last-applied annotation: without that
/// annotation, keys sorted, with a trailing newline.
fn last_applied_of(config: &Value) -> String {
    let mut config = config.clone();
    if let Some(annotations) = config.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
    format!("{}\n", sorted(&config))
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Upstream's `objectGVKNN`: `namespace/name; apps/v1, Kind=Deployment`.
fn describe_object(obj: &Value) -> String {
    let text = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
    let api_version = text("/apiVersion");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    format!("{}/{}; {group}/{version}, Kind={}", text("/metadata/namespace"), text("/metadata/name"), text("/kind"))
}
