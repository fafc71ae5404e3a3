//! One sync of a DaemonSet (upstream's `syncDaemonSet` and what it calls): revisions, pods,
//! rolling update, history cleanup and status, written through the API.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use serde_json::json;
use tracing::{Instrument, debug, info_span, warn};

use super::claim::{self, AdoptionCheck, controller_ref};
use super::manage::{NodePods, pods_should_be_on_node, unscheduled_pods_without_node};
use super::placement::{Placement, node_should_run};
use super::update::{revision_data, revisions_to_clean, rolling_update};
use super::util::{
    REVISION_HASH_LABEL, allows_surge, pin_to_node, pod_template, rolling_budgets, target_node_name,
    template_generation,
};
use super::{BURST_REPLICAS, Error, Manager, key_of, status};
use crate::events::{NORMAL, WARNING};
use crate::history::{self, hash_controller_revision};
use crate::replicaset::pod_control::{PodError, SLOW_START_INITIAL_BATCH, slow_start_batch};

/// Upstream's `syncDaemonSet`, for the DaemonSet the queue handed over.
pub(super) async fn sync(ds: Arc<DaemonSet>, m: Arc<Manager>) -> Result<Action, Error> {
    let key = key_of(&*ds);
    let span = info_span!("sync_daemon_set", daemonset = %key);
    async move {
        // Never act on caches that have not been filled yet.
        let _ = m.pods.wait_until_ready().await;
        let _ = m.nodes.wait_until_ready().await;
        let _ = m.revisions.wait_until_ready().await;
        // Being deleted: what it owns may be going too, so neither act nor report.
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let Some(spec) = ds.spec.as_ref() else { return Ok(Action::await_change()) };
        let selector = match Selector::try_from(spec.selector.clone()) {
            Ok(s) if !s.selects_all() => s,
            Ok(_) => {
                let message = "This daemon set is selecting all pods. A non-empty selector is required.";
                m.recorder.record(&*ds, WARNING, "SelectingAll", message.into());
                return Ok(Action::await_change());
            }
            Err(e) => {
                warn!(error = %e, "invalid selector; not syncing");
                return Ok(Action::await_change());
            }
        };
        let nodes = m.nodes.state();
        let mut check = AdoptionCheck::default();
        let (cur, old) = match m.construct_history(&ds, &selector, &mut check).await {
            // The namespace is going (its revisions are deleted before the DaemonSet): there is
            // nothing to record, and that is no failure.
            Err(e) if e.is_namespace_terminating() => return Ok(Action::await_change()),
            r => r?,
        };
        let hash = cur.metadata.labels.as_ref().and_then(|l| l.get(REVISION_HASH_LABEL)).cloned().unwrap_or_default();
        let node_pods = m.node_to_daemon_pods(&ds, &selector, &mut check).await?;
        if !m.satisfied(&key) {
            // Only report: this generation has not been acted on.
            m.update_status(&ds, &nodes, &node_pods, &hash, false).await?;
            return Ok(Action::await_change());
        }
        let result = m.update_daemon_set(&ds, &nodes, &node_pods, &hash, &old).await;
        let status = m.update_status(&ds, &nodes, &node_pods, &hash, true).await;
        result?;
        status?;
        m.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        Ok(Action::await_change())
    }
    .instrument(span)
    .await
}

fn placement_of<'a>(ds: &'a DaemonSet) -> impl Fn(&Node) -> Placement + 'a {
    move |node| node_should_run(node, ds)
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

impl Manager {
    /// The current revision (created or renumbered as needed) and the old ones (upstream's
    /// `constructHistory`).
    async fn construct_history(
        &self,
        ds: &DaemonSet,
        selector: &Selector,
        check: &mut AdoptionCheck,
    ) -> Result<(ControllerRevision, Vec<ControllerRevision>), Error> {
        let key = key_of(ds);
        let mut current = Vec::new();
        let mut old = Vec::new();
        for mut rev in claim::claim_revisions(self, ds, selector, check).await? {
            if rev.metadata.labels.as_ref().is_none_or(|l| !l.contains_key(REVISION_HASH_LABEL)) {
                // Older revisions may lack the label; the name is unique, so it serves.
                rev = self.label_revision(ds, &rev, &rev.name_any()).await?;
            }
            if super::update::matches(ds, &rev) { current.push(rev) } else { old.push(rev) }
        }
        let next = history::next_revision(&old);
        let cur = if current.is_empty() {
            self.snapshot(ds, next).await?
        } else {
            let cur = self.dedup_current(ds, current).await?;
            if cur.revision < next {
                // A rollback to an earlier template: it becomes the newest revision again.
                self.history
                    .update_controller_revision(&cur, next)
                    .await
                    .map_err(|source| Error::History { key: key.clone(), source })?
            } else {
                cur
            }
        };
        Ok((cur, old))
    }

    async fn label_revision(
        &self,
        ds: &DaemonSet,
        rev: &ControllerRevision,
        hash: &str,
    ) -> Result<ControllerRevision, Error> {
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), &ds.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"labels": {REVISION_HASH_LABEL: hash}}});
        api.patch(&rev.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|source| Error::Revision { key: key_of(ds), name: rev.name_any(), source })
    }

    /// Records the current template as revision `revision` (upstream's `snapshot`). A name
    /// collision with a revision of other data bumps `status.collisionCount`.
    async fn snapshot(&self, ds: &DaemonSet, revision: i64) -> Result<ControllerRevision, Error> {
        let key = key_of(ds);
        let ns = ds.namespace().unwrap_or_default();
        let before = ds.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
        let labels = ds.spec.as_ref().and_then(|s| s.template.metadata.as_ref()?.labels.clone()).unwrap_or_default();
        let data = revision_data(ds);
        let mut rev =
            history::new_controller_revision(ds, controller_ref(ds), &labels, data.clone(), revision, Some(before));
        rev.metadata.annotations = ds.metadata.annotations.clone();
        let mut count = before;
        let created = self
            .history
            .create_controller_revision(&ns, &rev, &mut count)
            .await
            .map_err(|source| Error::History { key: key.clone(), source })?;
        if count == before {
            return Ok(created);
        }
        // The name moved on with the count: the hash label must follow, or two revisions
        // would share it.
        let created = self.label_revision(ds, &created, &hash_controller_revision(&data, Some(count))).await?;
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &ns);
        let patch = json!({"status": {"collisionCount": count}});
        api.patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|source| Error::Status { key, source })?;
        Ok(created)
    }

    /// Keeps the newest of several revisions holding the current template (upstream's
    /// `dedupCurHistories`), moving the pods of the others onto its hash first.
    async fn dedup_current(
        &self,
        ds: &DaemonSet,
        mut current: Vec<ControllerRevision>,
    ) -> Result<ControllerRevision, Error> {
        history::sort_controller_revisions(&mut current);
        let keep = current.pop().expect("at least one current revision");
        let keep_hash =
            keep.metadata.labels.as_ref().and_then(|l| l.get(REVISION_HASH_LABEL)).cloned().unwrap_or_default();
        let key = key_of(ds);
        let ns = ds.namespace();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns.as_deref().unwrap_or_default());
        for dup in current {
            let dup_hash = dup.metadata.labels.as_ref().and_then(|l| l.get(REVISION_HASH_LABEL)).cloned();
            // Upstream relabels every pod with another hash; only the duplicate's pods run
            // this template, so only they move.
            let owned = self.pods.state_filter(|p| {
                p.namespace() == ns
                    && p.labels().get(REVISION_HASH_LABEL) == dup_hash.as_ref()
                    && crate::replicaset::controller_of(&p.metadata)
                        .is_some_and(|r| Some(&r.uid) == ds.metadata.uid.as_ref())
            });
            for pod in owned {
                let patch = json!({"metadata": {"labels": {REVISION_HASH_LABEL: keep_hash}}});
                pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await.map_err(|e| {
                    Error::Pod {
                        key: key.clone(),
                        action: "relabelling",
                        pod: pod.name_any(),
                        source: PodError::Api(e),
                    }
                })?;
            }
            self.history
                .delete_controller_revision(&dup)
                .await
                .map_err(|source| Error::History { key: key.clone(), source })?;
        }
        Ok(keep)
    }

    /// The DaemonSet's pods by the node they are for (upstream's `getNodesToDaemonPods`).
    async fn node_to_daemon_pods(
        &self,
        ds: &DaemonSet,
        selector: &Selector,
        check: &mut AdoptionCheck,
    ) -> Result<NodePods, Error> {
        let mut node_pods = NodePods::new();
        for pod in claim::claim_pods(self, ds, selector, check).await? {
            match target_node_name(&pod) {
                Some(node) => node_pods.entry(node).or_default().push(pod),
                None => debug!(pod = %pod.name_any(), "daemon pod has no target node"),
            }
        }
        Ok(node_pods)
    }

    /// Upstream's `updateDaemonSet`: manage, then the rolling update if manage had nothing to
    /// do, then history cleanup.
    async fn update_daemon_set(
        &self,
        ds: &DaemonSet,
        nodes: &[Arc<Node>],
        node_pods: &NodePods,
        hash: &str,
        old: &[ControllerRevision],
    ) -> Result<(), Error> {
        self.manage(ds, nodes, node_pods, hash).await?;
        let rolling = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|s| s.type_.as_deref())
            == Some("RollingUpdate");
        if self.satisfied(&key_of(ds)) && rolling {
            self.rolling_update(ds, nodes, node_pods, hash).await?;
        }
        let limit = ds.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10);
        for rev in revisions_to_clean(old, limit, node_pods) {
            self.history
                .delete_controller_revision(&rev)
                .await
                .map_err(|source| Error::History { key: key_of(ds), source })?;
        }
        Ok(())
    }

    /// Upstream's `manage`: pods where they belong and nowhere else.
    async fn manage(&self, ds: &DaemonSet, nodes: &[Arc<Node>], node_pods: &NodePods, hash: &str) -> Result<(), Error> {
        let surge = allows_surge(ds);
        let min_ready = ds.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
        let now = k8s_openapi::jiff::Timestamp::now();
        let (mut create, mut delete) = (Vec::new(), Vec::new());
        for node in nodes {
            let name = node_name(node);
            let placement = node_should_run(node, ds);
            let plan = pods_should_be_on_node(placement, node_pods.get(name), hash, surge, min_ready, now, |pod| {
                self.finished_pod_may_go(ds, name, pod)
            });
            if plan.create {
                create.push(name.to_string());
            }
            delete.extend(plan.delete);
        }
        let names: HashSet<String> = nodes.iter().map(|n| node_name(n).to_string()).collect();
        delete.extend(unscheduled_pods_without_node(&names, node_pods));
        self.sync_nodes(ds, delete, create, hash).await
    }

    /// Whether a finished pod may be deleted now; a failed one is replaced with a per-node
    /// backoff, so that a node that keeps failing the pod is not hammered.
    fn finished_pod_may_go(&self, ds: &DaemonSet, node: &str, pod: &Pod) -> bool {
        let pod_ref = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
        if !failed {
            let message = format!("Found succeeded daemon pod {pod_ref} on node {node}, will try to delete it");
            self.recorder.record(ds, NORMAL, "SucceededDaemonPod", message);
            return true;
        }
        let observed = ds.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0);
        let backoff_key = format!("{}/{observed}/{node}", ds.uid().unwrap_or_default());
        let now = tokio::time::Instant::now();
        if let Some(delay) = self.failed_pods.in_backoff(&backoff_key, now) {
            debug!(pod = %pod_ref, node, ?delay, "deleting failed pod held back by backoff");
            self.enqueue_after(ds, delay);
            return false;
        }
        self.failed_pods.next(&backoff_key, now);
        let message = format!("Found failed daemon pod {pod_ref} on node {node}, will try to kill it");
        self.recorder.record(ds, WARNING, "FailedDaemonPod", message);
        true
    }

    /// Upstream's `rollingUpdate`.
    async fn rolling_update(
        &self,
        ds: &DaemonSet,
        nodes: &[Arc<Node>],
        node_pods: &NodePods,
        hash: &str,
    ) -> Result<(), Error> {
        let mut all = node_pods.clone();
        let mut desired = 0;
        let mut runs = BTreeMap::new();
        for node in nodes {
            let should_run = node_should_run(node, ds).should_run;
            runs.insert(node_name(node).to_string(), should_run);
            if should_run {
                desired += 1;
                all.entry(node_name(node).to_string()).or_default();
            }
        }
        let (max_surge, max_unavailable) = rolling_budgets(ds, desired);
        let min_ready = ds.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
        let now = k8s_openapi::jiff::Timestamp::now();
        let generation = template_generation(ds);
        let plan = rolling_update(&all, hash, generation, max_surge, max_unavailable, min_ready, now, |n| {
            runs.get(n).copied().unwrap_or(false)
        });
        debug!(
            max_surge,
            max_unavailable,
            delete = plan.delete.len(),
            create = plan.create.len(),
            "rolling update step"
        );
        self.sync_nodes(ds, plan.delete, plan.create, hash).await
    }

    /// Deletes `delete` and creates a pod on each node of `create`, at most
    /// [`BURST_REPLICAS`] of each, creations in slow-start batches (upstream's `syncNodes`).
    async fn sync_nodes(
        &self,
        ds: &DaemonSet,
        mut delete: Vec<String>,
        mut create: Vec<String>,
        hash: &str,
    ) -> Result<(), Error> {
        let key = key_of(ds);
        let ns = ds.namespace().unwrap_or_default();
        create.truncate(BURST_REPLICAS);
        delete.truncate(BURST_REPLICAS);
        self.creations.expect_creations(&key, create.len());
        self.deletions.expect_deletions(&key, delete.iter().map(|p| format!("{ns}/{p}")));
        let template = pod_template(ds, template_generation(ds), hash);
        let next = AtomicUsize::new(0);
        let (created, create_err) = slow_start_batch(create.len(), SLOW_START_INITIAL_BATCH, || {
            let node = &create[next.fetch_add(1, Ordering::SeqCst)];
            let template = &template;
            async move {
                match self.create_pod(ds, template, node).await {
                    // The namespace is going: nothing can be created, and that is no failure.
                    Err(Error::Create { source, .. }) if source.is_namespace_terminating() => Ok(()),
                    r => r,
                }
            }
        })
        .await;
        // Creations that failed or were never tried will never be observed.
        for _ in created..create.len() {
            self.creations.creation_observed(&key);
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let results = futures::future::join_all(delete.iter().map(|name| {
            let pods = pods.clone();
            async move { (name, pods.delete(name, &DeleteParams::default()).await) }
        }))
        .await;
        let mut delete_err = None;
        for (name, result) in results {
            match result {
                Ok(_) => self.recorder.record(ds, NORMAL, "SuccessfulDelete", format!("Deleted pod: {name}")),
                Err(e) => {
                    self.deletions.deletion_observed(&key, &format!("{ns}/{name}"));
                    let err = PodError::Api(e);
                    if !err.is_not_found() {
                        self.recorder.record(ds, WARNING, "FailedDelete", format!("Error deleting: {err}"));
                        delete_err.get_or_insert(Error::Pod {
                            key: key.clone(),
                            action: "deleting",
                            pod: name.clone(),
                            source: err,
                        });
                    }
                }
            }
        }
        create_err.or(delete_err).map_or(Ok(()), Err)
    }

    /// Creates one pod from `template` pinned to `node` (upstream's `CreatePods` with
    /// `ReplaceDaemonSetPodNodeNameNodeAffinity`).
    async fn create_pod(&self, ds: &DaemonSet, template: &PodTemplateSpec, node: &str) -> Result<(), Error> {
        let meta = template.metadata.clone().unwrap_or_default();
        let mut spec = template.spec.clone().unwrap_or_default();
        spec.affinity = Some(pin_to_node(spec.affinity.take(), node));
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", ds.name_any())),
                namespace: ds.namespace(),
                labels: meta.labels,
                annotations: meta.annotations,
                finalizers: meta.finalizers,
                owner_references: Some(vec![controller_ref(ds)]),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ds.namespace().unwrap_or_default());
        match api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                self.recorder.record(ds, NORMAL, "SuccessfulCreate", format!("Created pod: {}", created.name_any()));
                Ok(())
            }
            Err(e) => {
                let source = PodError::Api(e);
                if !source.is_namespace_terminating() {
                    self.recorder.record(ds, WARNING, "FailedCreate", format!("Error creating: {source}"));
                }
                Err(Error::Create { key: key_of(ds), node: node.to_string(), source })
            }
        }
    }

    /// Writes the status counts when they changed (upstream's `updateDaemonSetStatus`); the
    /// observed generation only when this sync acted on the DaemonSet.
    async fn update_status(
        &self,
        ds: &DaemonSet,
        nodes: &[Arc<Node>],
        node_pods: &NodePods,
        hash: &str,
        observe: bool,
    ) -> Result<(), Error> {
        let min_ready = ds.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
        let now = k8s_openapi::jiff::Timestamp::now();
        let counts =
            status::calculate(nodes, node_pods, hash, template_generation(ds), min_ready, now, placement_of(ds));
        if min_ready > 0 && counts.number_ready != counts.number_available.unwrap_or(0) {
            // A last line of defence against clock skew: look at availability again.
            self.enqueue_after(ds, std::time::Duration::from_secs(min_ready as u64));
        }
        if status::unchanged(ds, &counts) {
            return Ok(());
        }
        let key = key_of(ds);
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &ds.namespace().unwrap_or_default());
        let name = ds.name_any();
        let mut current = ds.clone();
        let mut retried = false;
        loop {
            let old = current.status.take().unwrap_or_default();
            current.status = Some(DaemonSetStatus {
                observed_generation: if observe { ds.metadata.generation } else { old.observed_generation },
                collision_count: old.collision_count,
                conditions: old.conditions,
                ..counts.clone()
            });
            match api.replace_status(&name, &PostParams::default(), &current).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(source) if retried => return Err(Error::Status { key, source }),
                Err(_) => {
                    retried = true;
                    current = api.get(&name).await.map_err(|source| Error::Status { key: key.clone(), source })?;
                }
            }
        }
    }
}
