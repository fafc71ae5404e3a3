//! Objects in the store: reading them in a resource's view, and the optimistic-concurrency
//! update loop (upstream's `GuaranteedUpdate`) every write path shares.

use jiff::Timestamp;
use serde_json::{Value, json};
use tug_api::{ApiError, ResourceType};
use tug_store::{Revision, StoreError};

use crate::codec;
use crate::server::ApiServer;

/// Maps a store failure on one object to the API error upstream reports.
pub fn store_error(rt: &ResourceType, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { .. } => ApiError::not_found(rt.subject(), name),
        StoreError::AlreadyExists { .. } => ApiError::already_exists(rt.subject(), name),
        StoreError::Conflict { .. } => ApiError::modified_conflict(rt.subject(), name),
        StoreError::Compacted { requested, compacted } => ApiError::too_old_resource_version(requested, compacted),
        StoreError::FutureRevision { requested, current } => {
            ApiError::timeout(format!("Too large resource version: {requested}, current: {current}"))
        }
        StoreError::Closed => ApiError::service_unavailable("the datastore is shutting down"),
        StoreError::Unavailable { reason } => ApiError::service_unavailable(reason),
        other => ApiError::internal(other),
    }
}

/// Now, as upstream writes timestamps: RFC 3339 in UTC with second precision.
pub fn now_rfc3339() -> String {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

/// The `resourceVersion` of an object, if it has a valid one.
pub fn resource_version(obj: &Value) -> Result<Option<Revision>, ApiError> {
    match obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<Revision>()
            .ok()
            .filter(|r| *r >= 0)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {s:?}"))),
    }
}

/// What a mutation of the current object decided.
pub enum Mutation {
    /// Write this object (before admission).
    Write(Value),
    /// Write this object (before admission), whose `managedFields` a server-side apply has
    /// already computed.
    Applied(Value),
}

/// Removes and returns `metadata.managedFields` (what a request carried, or what an apply
/// computed), so that admission never sees them.
pub(crate) fn take_managed_fields(obj: &mut Value) -> Option<Value> {
    obj.get_mut("metadata").and_then(Value::as_object_mut).and_then(|m| m.remove("managedFields"))
}

fn put_managed_fields(obj: &mut Value, entries: Option<Value>) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        match entries {
            Some(e) => meta.insert("managedFields".into(), e),
            None => meta.remove("managedFields"),
        };
    }
}

impl ApiServer {
    /// A stored object converted to `rt`'s view.
    pub(crate) fn to_view(&self, rt: &ResourceType, obj: Value) -> Result<Value, ApiError> {
        if rt.storage_version {
            return Ok(obj);
        }
        rt.ops.convert(obj, &rt.api_version())
    }

    /// An object of `rt`'s view converted to the stored version.
    pub(crate) fn to_storage(&self, rt: &ResourceType, obj: Value) -> Result<Value, ApiError> {
        if rt.storage_version {
            return Ok(obj);
        }
        let registry = self.registry();
        let storage = registry.storage_view(rt);
        if std::ptr::eq(storage, rt) {
            return Ok(obj);
        }
        rt.ops.convert(obj, &storage.api_version())
    }

    /// The bytes an object of `rt`'s view is stored as; copied only when it must be converted
    /// to another version first.
    pub(crate) fn storage_bytes(&self, rt: &ResourceType, obj: &Value) -> Result<bytes::Bytes, ApiError> {
        let stored_as_is = rt.storage_version || std::ptr::eq(self.registry().storage_view(rt), rt);
        if stored_as_is {
            return codec::encode_for_storage(obj);
        }
        codec::encode_for_storage(&self.to_storage(rt, obj.clone())?)
    }

    /// The current object and its revision, in `rt`'s view.
    pub(crate) async fn read(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(Value, Revision), ApiError> {
        let key = rt.key(ns, name);
        let kv = self
            .store
            .get(&key)
            .await
            .map_err(|e| store_error(rt, name, e))?
            .ok_or_else(|| ApiError::not_found(rt.subject(), name))?;
        let obj = codec::decode_stored(&kv)?;
        Ok((self.to_view(rt, obj)?, kv.mod_revision))
    }

    /// Fills in what the server owns of a new object (uid, creationTimestamp, generation) and
    /// admits it: typed decoding, defaults, validation.
    pub(crate) fn admit_new(&self, rt: &ResourceType, mut obj: Value) -> Result<tug_api::kinds::Admitted, ApiError> {
        let meta =
            obj["metadata"].as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be a JSON object"))?;
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        for f in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "generation", "managedFields"] {
            meta.remove(f);
        }
        if obj.get("spec").is_some() && rt.kind != "Namespace" {
            obj["metadata"]["generation"] = json!(1);
        }
        rt.ops.admit_create(obj)
    }

    /// Runs admission on an admitted new object and stores it (unless `dry_run`); allocations
    /// made for it are released again if the write fails.
    pub(crate) async fn store_new(&self, rt: &ResourceType, mut obj: Value, dry_run: bool) -> Result<Value, ApiError> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
        self.admission_create(rt, &mut obj, dry_run).await?;
        if dry_run {
            self.release_allocations(rt, &obj, true).await;
            return Ok(obj);
        }
        match self.create_object(rt, ns.as_deref(), &name, &obj).await {
            Ok(rev) => {
                codec::set_resource_version(&mut obj, rev);
                Ok(obj)
            }
            Err(e) => {
                self.release_allocations(rt, &obj, false).await;
                Err(e)
            }
        }
    }

    /// Writes a new object (already admitted, in `rt`'s view); returns its resourceVersion.
    pub(crate) async fn create_object(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        obj: &Value,
    ) -> Result<Revision, ApiError> {
        let bytes = self.storage_bytes(rt, obj)?;
        self.store.create(&rt.key(ns, name), bytes).await.map_err(|e| store_error(rt, name, e))
    }

    /// Upstream's `GuaranteedUpdate`: read the object, let `mutate` decide, admit the result
    /// and compare-and-swap it in, retrying on conflicts unless the caller pinned a
    /// resourceVersion. Returns the object as stored (or as deleted) and whether anything was
    /// written.
    ///
    /// The object's `managedFields` are kept as they were; [`ApiServer::update_object_as`]
    /// records the write's field manager instead.
    pub(crate) async fn update_object<F>(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        dry_run: bool,
        mutate: F,
    ) -> Result<(Value, bool), ApiError>
    where
        F: FnMut(&Value) -> Result<Mutation, ApiError>,
    {
        self.update_object_as(rt, ns, name, subresource, dry_run, None, mutate).await
    }

    /// [`ApiServer::update_object`], recording in `managedFields` that `manager` made the
    /// write (unless the mutation is an apply, which computed them itself).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn update_object_as<F>(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        dry_run: bool,
        manager: Option<&str>,
        mut mutate: F,
    ) -> Result<(Value, bool), ApiError>
    where
        F: FnMut(&Value) -> Result<Mutation, ApiError>,
    {
        let key = rt.key(ns, name);
        loop {
            let (current, rev) = self.read(rt, ns, name).await?;
            let (mut desired, applied) = match mutate(&current)? {
                Mutation::Write(desired) => (desired, false),
                Mutation::Applied(desired) => (desired, true),
            };
            let requested = take_managed_fields(&mut desired);
            let pinned = resource_version(&desired)?;
            if let Some(p) = pinned
                && p != rev
            {
                return Err(ApiError::modified_conflict(rt.subject(), name));
            }
            let mut admitted = self.admit_update(rt, &current, desired, subresource).await?;
            match (applied, manager) {
                (true, _) => put_managed_fields(&mut admitted, requested),
                (false, Some(manager)) => {
                    self.track_write(rt, subresource, Some(&current), requested.as_ref(), &mut admitted, manager)?;
                }
                (false, None) => put_managed_fields(&mut admitted, current.pointer("/metadata/managedFields").cloned()),
            }
            // An update that changes nothing is not written, so its resourceVersion stays.
            if unchanged(&admitted, &current) {
                return Ok((current, false));
            }
            // Removing the last finalizer of an object being deleted completes its deletion.
            if is_deleting(&admitted) && !has_finalizers(&admitted) && !namespace_held(rt, &admitted) {
                if dry_run {
                    return Ok((admitted, false));
                }
                match self.store.delete(&key, Some(rev)).await {
                    Ok(_) => {
                        self.after_delete(rt, &admitted).await;
                        return Ok((admitted, true));
                    }
                    Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
                    Err(e) => return Err(store_error(rt, name, e)),
                }
            }
            if dry_run {
                return Ok((admitted, false));
            }
            let bytes = self.storage_bytes(rt, &admitted)?;
            match self.store.update(&key, bytes, rev).await {
                Ok(new_rev) => {
                    let mut out = admitted;
                    codec::set_resource_version(&mut out, new_rev);
                    return Ok((out, true));
                }
                Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
                Err(StoreError::Conflict { .. }) => return Err(ApiError::modified_conflict(rt.subject(), name)),
                Err(e) => return Err(store_error(rt, name, e)),
            }
        }
    }

    /// The update strategy: what a write may change, and admission of the result.
    async fn admit_update(
        &self,
        rt: &ResourceType,
        current: &Value,
        mut desired: Value,
        subresource: Option<&str>,
    ) -> Result<Value, ApiError> {
        if !desired.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        match desired.get("metadata") {
            None | Some(Value::Null) => desired["metadata"] = json!({}),
            Some(Value::Object(_)) => {}
            Some(_) => return Err(ApiError::bad_request("metadata must be a JSON object")),
        }
        check_identity(rt, current, &desired)?;
        let status_sub = rt.has_subresource("status");
        match subresource {
            // A status write changes only status (upstream's ResetObjectMetaForStatus).
            Some("status") => {
                let mut next = current.clone();
                next["status"] = desired.get("status").cloned().unwrap_or(Value::Null);
                if next["status"].is_null() {
                    next.as_object_mut().map(|m| m.remove("status"));
                }
                desired = next;
            }
            // Through the main resource, status is kept as it was.
            None if status_sub => match current.get("status") {
                Some(s) => desired["status"] = s.clone(),
                None => {
                    desired.as_object_mut().map(|m| m.remove("status"));
                }
            },
            _ => {}
        }
        // Fields the server owns are kept from the stored object.
        for f in
            ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "namespace"]
        {
            match current["metadata"].get(f) {
                Some(v) => desired["metadata"][f] = v.clone(),
                None => {
                    desired["metadata"].as_object_mut().map(|m| m.remove(f));
                }
            }
        }
        if desired["metadata"].get("resourceVersion").is_some() {
            desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        }
        // A deleting object may lose finalizers but not gain new ones.
        if is_deleting(current) {
            let old: Vec<&Value> = current
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if let Some(new) = desired.pointer("/metadata/finalizers").and_then(Value::as_array)
                && let Some(added) = new.iter().find(|f| !old.contains(f))
            {
                return Err(ApiError::forbidden(
                    rt.subject(),
                    current["metadata"]["name"].as_str().unwrap_or(""),
                    format_args!(
                        "no new finalizers can be added if the object is being deleted, found new finalizers [{}]",
                        added.as_str().unwrap_or("")
                    ),
                ));
            }
        }
        let admitted = rt.ops.admit_update(desired, current)?;
        let mut obj = admitted.object;
        // The generation counts changes of everything but metadata and status.
        if current["metadata"].get("generation").is_some() && spec_changed(current, &obj) {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(g + 1);
        }
        self.admission_update(rt, current, &mut obj).await?;
        Ok(obj)
    }
}

fn check_identity(rt: &ResourceType, current: &Value, desired: &Value) -> Result<(), ApiError> {
    let name = current["metadata"]["name"].as_str().unwrap_or("");
    match desired.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        _ => {}
    }
    if let Some(uid) = desired.pointer("/metadata/uid").and_then(Value::as_str)
        && !uid.is_empty()
        && Some(uid) != current.pointer("/metadata/uid").and_then(Value::as_str)
    {
        return Err(ApiError::conflict(
            rt.subject(),
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                current.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("")
            ),
        ));
    }
    for (field, expected) in [("apiVersion", rt.api_version()), ("kind", rt.kind.to_string())] {
        if let Some(v) = desired.get(field).and_then(Value::as_str)
            && v != expected
        {
            return Err(ApiError::bad_request(format!(
                "{field} in the object ({v}) does not match the {field} of the URL ({expected})"
            )));
        }
    }
    Ok(())
}

/// Whether an update leaves the object as it was, apart from what every write rewrites: its
/// resourceVersion, and the times of its managed fields (upstream's
/// `IgnoreManagedFieldsTimestampsTransformer`). Compared in place, as every update runs this.
fn unchanged(new: &Value, current: &Value) -> bool {
    same_except(new, current, "", &|key, a, b| match key {
        "metadata" => same_except(a, b, "resourceVersion", &|key, a, b| match (key, a, b) {
            ("managedFields", Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_except(a, b, "time", &|_, a, b| a == b))
            }
            _ => a == b,
        }),
        _ => a == b,
    })
}

/// Whether two JSON objects hold the same keys, `ignored` aside, with values `same` calls
/// equal (given the key); values other than objects are compared as they are.
fn same_except(a: &Value, b: &Value, ignored: &str, same: &dyn Fn(&str, &Value, &Value) -> bool) -> bool {
    let (Value::Object(a), Value::Object(b)) = (a, b) else { return a == b };
    let counted = |m: &serde_json::Map<String, Value>| m.keys().filter(|k| *k != ignored).count();
    counted(a) == counted(b)
        && a.iter().filter(|(k, _)| *k != ignored).all(|(k, v)| b.get(k).is_some_and(|w| same(k, v, w)))
}

/// Whether anything besides metadata and status differs.
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else { return true };
    let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    keys.into_iter()
        .filter(|k| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
        .any(|k| o.get(k) != n.get(k))
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null())
}

/// A namespace is also held by its `spec.finalizers`, which only the namespace controller
/// clears (through `finalize`) once the namespace is empty.
pub fn namespace_held(rt: &ResourceType, obj: &Value) -> bool {
    rt.group.is_empty()
        && rt.kind == "Namespace"
        && obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

pub fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_that_only_moves_the_resource_version_or_field_times_changes_nothing() {
        let current = json!({"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "5", "labels": {"x": "1"},
            "managedFields": [{"manager": "m", "time": "2026-01-01T00:00:00Z", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"nodeName": "n"}});
        let mut same = current.clone();
        same["metadata"]["resourceVersion"] = json!("9");
        same["metadata"]["managedFields"][0]["time"] = json!("2026-02-02T00:00:00Z");
        assert!(unchanged(&same, &current));
        let mut without_rv = current.clone();
        without_rv["metadata"].as_object_mut().unwrap().remove("resourceVersion");
        assert!(unchanged(&without_rv, &current));

        for (pointer, value) in [
            ("/spec/nodeName", json!("other")),
            ("/metadata/labels/x", json!("2")),
            ("/metadata/managedFields/0/manager", json!("other")),
        ] {
            let mut changed = current.clone();
            *changed.pointer_mut(pointer).unwrap() = value;
            assert!(!unchanged(&changed, &current), "{pointer}");
        }
        let mut added = current.clone();
        added["status"] = json!({});
        assert!(!unchanged(&added, &current) && !unchanged(&current, &added));
        let mut no_fields = current.clone();
        no_fields["metadata"].as_object_mut().unwrap().remove("managedFields");
        assert!(!unchanged(&no_fields, &current));
    }
}
