//! ResourceQuota admission (upstream's `plugin/pkg/admission/resourcequota`): a new object is
//! charged against every quota of its namespace that limits what it uses. A create that would
//! go over `status.hard` is refused; an allowed one raises `status.used` with a
//! compare-and-swap on the quota, so two concurrent creates cannot both take the last unit.
//! The quota controller later recomputes `used` from what really exists.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ResourceQuota;
use serde::Deserialize as _;
use serde_json::{Value, json};
use tug_api::quota::evaluator::Evaluator;
use tug_api::quota::{self, ResourceList};
use tug_api::{ApiError, ResourceType};
use tug_store::StoreError;

use crate::admission_cache::Cached;
use crate::codec;
use crate::objects::store_error;
use crate::server::ApiServer;

/// How often a charge is retried when another writer changed a quota in between.
const CONFLICT_RETRIES: usize = 10;

/// One quota that the new object is charged to, with its new usage.
struct Charge {
    quota: Arc<Cached>,
    name: String,
    used: ResourceList,
}

impl ApiServer {
    /// Checks a new namespaced object (or, with `old`, an update) against its namespace's
    /// quotas and, unless `dry_run`, records its usage in them.
    pub(crate) async fn admit_resource_quota(
        &self,
        rt: &ResourceType,
        old: Option<&Value>,
        obj: &Value,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let evaluator = Evaluator::for_resource(&rt.group, &rt.plural);
        // Of updates, only a service's (its type and ports) changes what it uses; upstream also
        // charges claim expansion and pod resizes, which are not served here yet.
        if old.is_some() && evaluator != Evaluator::Services {
            return Ok(());
        }
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut charged: BTreeSet<String> = BTreeSet::new();
        for attempt in 0..CONFLICT_RETRIES {
            // After a conflict, the store: the cache may not have the other write yet.
            let fresh = attempt > 0;
            let charges = self.quota_charges(rt, &evaluator, &ns, old, obj, &charged, fresh).await?;
            if dry_run {
                return Ok(());
            }
            let mut conflicted = false;
            for charge in charges {
                if !self.write_usage(&charge).await? {
                    conflicted = true;
                    break;
                }
                charged.insert(charge.name);
            }
            if !conflicted {
                return Ok(());
            }
        }
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        Err(ApiError::forbidden(rt.subject(), name, "status unknown for quota: too many concurrent quota updates"))
    }

    /// The namespace's quotas: from the admission cache unless `fresh`, else from the store.
    async fn quotas(&self, ns: &str, fresh: bool) -> Result<Vec<Arc<Cached>>, ApiError> {
        let registry = self.registry();
        let quotas_rt = registry.lookup("", "v1", "resourcequotas").expect("resource quotas are served");
        let prefix = quotas_rt.prefix(Some(ns));
        if !fresh && let Some(cached) = self.admission_caches.resource_quotas.list(&prefix).await {
            return Ok(cached);
        }
        let listed = self.store.list(&prefix, Default::default()).await.map_err(|e| store_error(quotas_rt, "", e))?;
        listed.items.into_iter().map(|kv| Ok(Arc::new(Cached { value: codec::decode_stored(&kv)?, kv }))).collect()
    }

    /// Upstream's `CheckRequest`: the quotas to charge and their new usage, or why the object
    /// is refused. Quotas in `skip` were already charged by an earlier attempt.
    #[allow(clippy::too_many_arguments)]
    async fn quota_charges(
        &self,
        rt: &ResourceType,
        evaluator: &Evaluator,
        ns: &str,
        old: Option<&Value>,
        obj: &Value,
        skip: &BTreeSet<String>,
        fresh: bool,
    ) -> Result<Vec<Charge>, ApiError> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let forbidden = |why: String| ApiError::forbidden(rt.subject(), name, why);
        let quotas = self.quotas(ns, fresh).await?;
        let mut interesting = Vec::new();
        for quota in quotas {
            let q = ResourceQuota::deserialize(&quota.value).map_err(ApiError::internal)?;
            let quota_name = q.metadata.name.clone().unwrap_or_default();
            if skip.contains(&quota_name) {
                continue;
            }
            let (hard, used) = quota::status_lists(&q);
            let restricted = evaluator.matching_resources(hard.keys());
            let in_scope = evaluator.matches_scopes(&quota::scope_selectors(&q), obj).map_err(evaluation_error)?;
            if restricted.is_empty() || !in_scope {
                continue;
            }
            if let Err(why) = evaluator.constraints(&restricted, obj).map_err(evaluation_error)? {
                return Err(forbidden(format!("failed quota: {quota_name}: {why}")));
            }
            let missing: Vec<&String> = restricted.iter().filter(|r| !used.contains_key(*r)).collect();
            if !missing.is_empty() {
                let names = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
                return Err(forbidden(format!("status unknown for quota: {quota_name}, resources: {names}")));
            }
            interesting.push((quota, quota_name, hard, used));
        }
        if interesting.is_empty() {
            return Ok(Vec::new());
        }
        let delta = evaluator.usage(obj, jiff::Timestamp::now()).map_err(evaluation_error)?;
        let negative: Vec<&str> = delta.iter().filter(|(_, v)| v.is_negative()).map(|(k, _)| k.as_str()).collect();
        if !negative.is_empty() {
            return Err(forbidden(format!("quota usage is negative for resource(s): {}", negative.join(","))));
        }
        let delta = match old {
            // An update is charged what it adds, never credited what it frees.
            Some(old) => {
                let before = evaluator.usage(old, jiff::Timestamp::now()).map_err(evaluation_error)?;
                quota::subtract_non_negative(&delta, &before)
            }
            None => delta,
        };
        let delta = quota::remove_zeros(&delta);
        if delta.is_empty() {
            return Ok(Vec::new());
        }
        let mut charges = Vec::new();
        for (quota, quota_name, hard, used) in interesting {
            let requested = quota::mask(&delta, &quota::names(&hard));
            let new_used = quota::add(&used, &requested);
            let masked = quota::mask(&new_used, &quota::names(&requested));
            let (allowed, exceeded) = quota::less_than_or_equal(&masked, &hard);
            if !allowed {
                return Err(forbidden(format!(
                    "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
                    quota::pretty_print(&quota::mask(&requested, &exceeded)),
                    quota::pretty_print(&quota::mask(&used, &exceeded)),
                    quota::pretty_print(&quota::mask(&hard, &exceeded)),
                )));
            }
            if requested.is_empty() {
                continue;
            }
            charges.push(Charge { quota, name: quota_name, used: new_used });
        }
        Ok(charges)
    }

    /// Writes a quota's new `status.used` if nobody changed the quota since it was read; false
    /// if somebody did.
    async fn write_usage(&self, charge: &Charge) -> Result<bool, ApiError> {
        let mut next = charge.quota.value.clone();
        next["status"]["used"] = json!(quota::to_api(&charge.used));
        if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let bytes = codec::encode_for_storage(&next)?;
        match self.store.update(&charge.quota.kv.key, bytes, charge.quota.kv.mod_revision).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => {
                let registry = self.registry();
                let quotas = registry.lookup("", "v1", "resourcequotas").expect("resource quotas are served");
                Err(store_error(quotas, &charge.name, e))
            }
        }
    }
}

/// An object that passed validation but does not decode as its kind: a server bug.
fn evaluation_error(e: tug_api::quota::evaluator::EvaluatorError) -> ApiError {
    let source = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
    ApiError::internal(format_args!("{e}: {source}"))
}
