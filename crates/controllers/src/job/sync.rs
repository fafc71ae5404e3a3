//! Upstream's `syncJob`: count finished pods, decide whether the Job is done, create or delete
//! pods, write the status, then release the counted pods' finalizers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use tracing::{Instrument, debug, info_span};

use super::backoff;
use super::claim;
use super::indexed::{self, INDEX_FAILURE_COUNT, index_of};
use super::pod_control::{has_finalizer, new_pod};
use super::pod_failure_policy::{Action as PolicyAction, match_pod};
use super::status::{self as st, Finish};
use super::{Error, MANAGED_BY, Manager, key_of, lock, until};
use crate::events::{NORMAL, WARNING};
use crate::replicaset::controller_of;
use crate::replicaset::pod_control::{SLOW_START_INITIAL_BATCH, slow_start_batch};

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn is_terminal(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

/// Running or pending, and not being deleted (upstream's `IsPodActive`).
fn is_active(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_none()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn restarts(p: &Pod) -> i64 {
    let s = p.status.as_ref();
    let all = s
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .chain(s.and_then(|s| s.init_container_statuses.as_ref()));
    all.flatten().map(|c| i64::from(c.restart_count)).sum()
}

/// The resourceVersion as a number, when it is one (ours are store revisions).
fn rv(job: &Job) -> Option<u64> {
    job.metadata.resource_version.as_deref()?.parse().ok()
}

/// The sync of one Job.
pub(super) async fn sync(job: Arc<Job>, m: Arc<Manager>) -> Result<Action, Error> {
    let key = key_of(&*job);
    let span = info_span!("sync_job", %key);
    sync_job(job, m, key).instrument(span).await
}

async fn sync_job(job: Arc<Job>, m: Arc<Manager>, key: String) -> Result<Action, Error> {
    let _ = m.pods.wait_until_ready().await;
    let Some(spec) = job.spec.clone() else { return Ok(Action::await_change()) };
    if spec.managed_by.as_deref().is_some_and(|v| v != MANAGED_BY) {
        return Ok(Action::await_change());
    }
    // The cache is older than our last status write: its event is on the way.
    if let (Some(cached), Some(written)) = (rv(&job), lock(&m.written).get(&key).copied())
        && cached < written
    {
        return Ok(Action::await_change());
    }
    let ns = job.namespace();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let selector = spec.selector.clone().map(Selector::try_from);
    let pods: Vec<Arc<Pod>> = match &selector {
        // A live Job claims its pods: adopts matching orphans, releases owned misfits.
        Some(Ok(s)) if !s.selects_all() && !st::is_finished(&job) => claim::claim_pods(&m, &job, s).await?,
        _ => m.pods.state_filter(|p| {
            p.namespace() == ns
                && controller_of(&p.metadata).is_some_and(|r| r.uid == uid)
                && match &selector {
                    Some(Ok(s)) => s.matches(p.labels()),
                    _ => true,
                }
        }),
    };
    if st::is_finished(&job) || job.metadata.deletion_timestamp.is_some() {
        // Nothing more is counted: let every pod go.
        for pod in pods.iter().filter(|p| has_finalizer(p)) {
            m.pod_control
                .remove_finalizer(pod)
                .await
                .map_err(|source| Error::Finalizer { key: key.clone(), source })?;
        }
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let mut s = Sync::new(&job, spec, &pods, now);
    s.count_finished(&m, &key);
    s.decide(&m, &key);
    let (status, unfinalize, requeue, manage_err) = s.act(&m, &job, &key).await;
    // The status records what was counted even when managing pods failed.
    write_status(&m, &job, &key, status).await?;
    let mut first = manage_err;
    for pod in unfinalize {
        if let Err(source) = m.pod_control.remove_finalizer(&pod).await {
            first.get_or_insert(Error::Finalizer { key: key.clone(), source });
        }
    }
    if let Some(e) = first {
        return Err(e);
    }
    lock(&m.failures).remove(&key);
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Writes `status` if it changed; remembers the new resourceVersion.
async fn write_status(m: &Manager, job: &Job, key: &str, status: JobStatus) -> Result<(), Error> {
    if job.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Job> = Api::namespaced(m.client.clone(), &job.namespace().unwrap_or_default());
    let mut copy = job.clone();
    copy.status = Some(status);
    match api.replace_status(&job.name_any(), &PostParams::default(), &copy).await {
        Ok(written) => {
            if let Some(v) = rv(&written) {
                lock(&m.written).insert(key.to_string(), v);
            }
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Status { key: key.to_string(), source }),
    }
}

/// The state of one sync.
struct Sync<'a> {
    spec: JobSpec,
    pods: &'a [Arc<Pod>],
    now: Timestamp,
    status: JobStatus,
    indexed: bool,
    completions: Option<i32>,
    per_index: Option<i32>,
    /// Pods being deleted are replaced only once they have failed.
    only_failed: bool,
    uncounted_succeeded: Vec<String>,
    uncounted_failed: Vec<String>,
    completed: BTreeSet<i32>,
    failed_indexes: BTreeSet<i32>,
    finish: Option<Finish>,
    unfinalize: Vec<Arc<Pod>>,
    new_succeeded: usize,
    new_failures: Vec<Timestamp>,
}

impl<'a> Sync<'a> {
    fn new(job: &'a Job, spec: JobSpec, pods: &'a [Arc<Pod>], now: Timestamp) -> Self {
        let status = job.status.clone().unwrap_or_default();
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let completions = spec.completions;
        let c = completions.unwrap_or(0);
        let per_index = if indexed { spec.backoff_limit_per_index } else { None };
        let only_failed = spec.pod_replacement_policy.as_deref() == Some("Failed") || spec.pod_failure_policy.is_some();
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        Self {
            only_failed,
            per_index,
            completed: if indexed { indexed::parse(status.completed_indexes.as_deref(), c) } else { BTreeSet::new() },
            failed_indexes: if indexed { indexed::parse(status.failed_indexes.as_deref(), c) } else { BTreeSet::new() },
            finish: st::interim(&status),
            uncounted_succeeded: uncounted.succeeded.unwrap_or_default(),
            uncounted_failed: uncounted.failed.unwrap_or_default(),
            status,
            indexed,
            completions,
            spec,
            pods,
            now,
            unfinalize: Vec::new(),
            new_succeeded: 0,
            new_failures: Vec::new(),
        }
    }

    fn succeeded(&self) -> i32 {
        // An Indexed Job counts its completed indexes (no pod uid is tracked for them).
        if self.indexed {
            return self.completed.len() as i32;
        }
        self.status.succeeded.unwrap_or(0) + self.uncounted_succeeded.len() as i32
    }

    fn failed(&self) -> i32 {
        self.status.failed.unwrap_or(0) + self.uncounted_failed.len() as i32
    }

    fn active(&self) -> Vec<&'a Arc<Pod>> {
        self.pods.iter().filter(|p| is_active(p)).collect()
    }

    fn terminating(&self) -> Vec<&'a Arc<Pod>> {
        self.pods.iter().filter(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_some()).collect()
    }

    /// Moves pods whose finalizer is gone from the uncounted lists into the counts, and records
    /// newly finished pods as uncounted (upstream's `trackJobStatusAndRemoveFinalizers`).
    fn count_finished(&mut self, m: &Manager, key: &str) {
        let by_uid: HashMap<&str, &Arc<Pod>> =
            self.pods.iter().filter_map(|p| Some((p.metadata.uid.as_deref()?, p))).collect();
        let flushed = |list: &mut Vec<String>| {
            let before = list.len();
            list.retain(|uid| by_uid.get(uid.as_str()).is_some_and(|p| has_finalizer(p)));
            (before - list.len()) as i32
        };
        let s = flushed(&mut self.uncounted_succeeded);
        let f = flushed(&mut self.uncounted_failed);
        if s > 0 {
            self.status.succeeded = Some(self.status.succeeded.unwrap_or(0) + s);
        }
        if f > 0 {
            self.status.failed = Some(self.status.failed.unwrap_or(0) + f);
        }
        let recorded: HashSet<String> =
            self.uncounted_succeeded.iter().chain(self.uncounted_failed.iter()).cloned().collect();
        let completions = self.completions.unwrap_or(0);
        let failing = self.finish.as_ref().is_some_and(|f| f.failed);
        for pod in self.pods {
            if !has_finalizer(pod) {
                continue;
            }
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let deleting = pod.metadata.deletion_timestamp.is_some();
            if recorded.contains(&uid) {
                // Counted already; its finalizer removal failed or was not seen yet.
                self.unfinalize.push(pod.clone());
                continue;
            }
            let phase = phase(pod);
            if phase == "Succeeded" {
                match (self.indexed, index_of(pod)) {
                    (false, _) => {
                        self.uncounted_succeeded.push(uid);
                        self.new_succeeded += 1;
                    }
                    // The completion index is recorded at once: it cannot be counted twice.
                    (true, Some(ix)) if ix < completions && self.completed.insert(ix) => self.new_succeeded += 1,
                    (true, _) => {}
                }
                self.unfinalize.push(pod.clone());
                continue;
            }
            // Pods being deleted count as failed (they may never reach the phase), unless
            // only failed pods are replaced; all do once the Job is failing.
            let considered_failed = phase == "Failed" || (deleting && (!self.only_failed || failing));
            if !considered_failed {
                if deleting && self.finish.is_some() {
                    self.unfinalize.push(pod.clone());
                }
                continue;
            }
            let matched = if phase == "Failed" {
                self.spec.pod_failure_policy.as_ref().and_then(|p| match_pod(p, pod))
            } else {
                None
            };
            let action = matched.as_ref().map_or(PolicyAction::Count, |m| m.action);
            if action != PolicyAction::Ignore {
                self.uncounted_failed.push(uid);
                self.new_failures.push(backoff::finish_time(pod, self.now));
            }
            match (action, &matched) {
                (PolicyAction::FailJob, Some(m)) if self.finish.is_none() => {
                    self.finish = Some(Finish::failure(st::REASON_POD_FAILURE_POLICY, m.message.clone()));
                }
                (PolicyAction::FailIndex, _) => {
                    if let Some(ix) = index_of(pod).filter(|_| self.per_index.is_some()) {
                        self.failed_indexes.insert(ix);
                    }
                }
                (PolicyAction::Count, _) => {
                    if let (Some(limit), Some(ix)) = (self.per_index, index_of(pod))
                        && indexed::count_annotation(pod, INDEX_FAILURE_COUNT) + 1 > limit
                    {
                        self.failed_indexes.insert(ix);
                    }
                }
                _ => {}
            }
            self.unfinalize.push(pod.clone());
        }
        let mut backoffs = lock(&m.backoff);
        let record = backoffs.entry(key.to_string()).or_default();
        *record = record.observe(self.new_succeeded, &self.new_failures);
    }

    /// Whether the Job has reached an end (upstream's checks, in upstream's order).
    fn decide(&mut self, m: &Manager, key: &str) {
        if self.finish.is_some() || self.spec.suspend == Some(true) {
            return;
        }
        let limit = self.spec.backoff_limit.unwrap_or(6);
        let on_failure =
            self.spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure");
        let active = self.active();
        let restarts: i64 = if on_failure { active.iter().map(|p| restarts(p)).sum() } else { 0 };
        let past_on_failure = on_failure && if limit == 0 { restarts > 0 } else { restarts >= i64::from(limit) };
        if self.per_index.is_none() && (self.failed() > limit || past_on_failure) {
            self.finish =
                Some(Finish::failure(st::REASON_BACKOFF_LIMIT_EXCEEDED, "Job has reached the specified backoff limit"));
            return;
        }
        if let (Some(ads), Some(start)) = (self.spec.active_deadline_seconds, &self.status.start_time)
            && start.0.as_second() + ads <= self.now.as_second()
        {
            self.finish =
                Some(Finish::failure(st::REASON_DEADLINE_EXCEEDED, "Job was active longer than specified deadline"));
            return;
        }
        if let (Some(_), Some(max)) = (self.per_index, self.spec.max_failed_indexes)
            && self.failed_indexes.len() as i64 > i64::from(max)
        {
            self.finish = Some(Finish::failure(
                st::REASON_MAX_FAILED_INDEXES_EXCEEDED,
                "Job has exceeded the specified maximal number of failed indexes",
            ));
            return;
        }
        if self.indexed
            && let (Some(policy), Some(c)) = (&self.spec.success_policy, self.completions)
            && let Some(i) = indexed::success_rule_met(policy, &self.completed, c)
        {
            self.finish = Some(Finish::success(st::REASON_SUCCESS_POLICY, format!("Matched rules at index {i}")));
            return;
        }
        let complete = match self.completions {
            None => self.succeeded() > 0 && active.is_empty(),
            Some(c) if self.indexed => {
                if self.per_index.is_some()
                    && !self.failed_indexes.is_empty()
                    && self.completed.union(&self.failed_indexes).count() as i64 >= i64::from(c)
                {
                    self.finish = Some(Finish::failure(st::REASON_FAILED_INDEXES, "Job has failed indexes"));
                    return;
                }
                self.completed.len() as i64 >= i64::from(c)
            }
            Some(c) => self.succeeded() >= c,
        };
        if complete {
            self.finish =
                Some(Finish::success(st::REASON_COMPLETIONS_REACHED, "Reached expected number of succeeded pods"));
        }
        if self.finish.is_some() {
            debug!(%key, finish = ?self.finish, "job reached an end");
            lock(&m.backoff).remove(key);
        }
    }

    /// Creates or deletes pods and builds the new status; returns it with the pods whose
    /// finalizer goes once it is written, and when to look again.
    async fn act(
        mut self,
        m: &Manager,
        job: &Job,
        key: &str,
    ) -> (JobStatus, Vec<Arc<Pod>>, Option<Duration>, Option<Error>) {
        let now = self.now;
        let active = self.active();
        let mut terminating = self.terminating().len() as i32;
        let mut active_count = active.len() as i32;
        let mut ready = active.iter().filter(|p| is_ready(p)).count() as i32;
        let mut requeue = None;
        let mut manage_err = None;
        let satisfied = m.expectations.satisfied(key);
        if let Some(finish) = self.finish.clone() {
            st::set_condition(&mut self.status, finish.interim_type(), "True", &finish.reason, &finish.message, now);
            if !active.is_empty() && satisfied {
                // Their finalizers stay: they are counted once they are gone.
                let (deleted, err) = delete_pods(m, job, key, &active, false).await;
                active_count -= deleted;
                terminating += deleted;
                manage_err = err;
            }
            ready = 0;
            let settled = active_count == 0
                && terminating == 0
                && self.uncounted_succeeded.is_empty()
                && self.uncounted_failed.is_empty()
                && self.unfinalize.is_empty();
            if settled {
                st::set_condition(
                    &mut self.status,
                    finish.terminal_type(),
                    "True",
                    &finish.reason,
                    &finish.message,
                    now,
                );
                if finish.failed {
                    m.pod_control.recorder.record(job, WARNING, &finish.reason, finish.message.clone());
                } else {
                    self.status.completion_time = Some(Time(now));
                    m.pod_control.recorder.record(job, NORMAL, "Completed", "Job completed".into());
                }
            }
        } else if self.spec.suspend == Some(true) {
            if !active.is_empty() && satisfied {
                let (deleted, err) = delete_pods(m, job, key, &active, true).await;
                active_count -= deleted;
                terminating += deleted;
                ready = 0;
                manage_err = err;
            }
            if st::set_condition(&mut self.status, st::SUSPENDED, "True", "JobSuspended", "Job suspended", now) {
                m.pod_control.recorder.record(job, NORMAL, "Suspended", "Job suspended".into());
            }
        } else {
            if st::true_condition(&self.status, st::SUSPENDED).is_some() {
                st::set_condition(&mut self.status, st::SUSPENDED, "False", "JobResumed", "Job resumed", now);
                m.pod_control.recorder.record(job, NORMAL, "Resumed", "Job resumed".into());
                // The deadline counts from the resumption (upstream resets the start time).
                self.status.start_time = Some(Time(now));
            }
            self.status.start_time.get_or_insert(Time(now));
            if satisfied {
                let wait = lock(&m.backoff).get(key).copied().unwrap_or_default().remaining(now);
                let (created, deleted, err, wait_needed) = self.manage(m, job, key, &active, wait).await;
                active_count += created - deleted;
                terminating += deleted;
                manage_err = err;
                if wait_needed {
                    requeue = Some(wait.max(Duration::from_secs(1)));
                }
            }
            if let (Some(ads), Some(start)) = (self.spec.active_deadline_seconds, &self.status.start_time) {
                let deadline = start.0.checked_add(jiff::SignedDuration::from_secs(ads)).unwrap_or(start.0);
                let d = until(deadline, now);
                requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
            }
        }
        let status = &mut self.status;
        status.active = Some(active_count.max(0));
        status.ready = Some(ready.max(0));
        status.terminating = Some(terminating);
        status.succeeded.get_or_insert(0);
        status.failed.get_or_insert(0);
        let nonempty = |v: Vec<String>| (!v.is_empty()).then_some(v);
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: nonempty(self.uncounted_succeeded),
            failed: nonempty(self.uncounted_failed),
        });
        if self.indexed {
            status.succeeded = Some(self.completed.len() as i32);
            status.completed_indexes = indexed::format(&self.completed);
            if self.per_index.is_some() {
                status.failed_indexes = Some(indexed::format(&self.failed_indexes).unwrap_or_default());
            }
        }
        (self.status, self.unfinalize, requeue, manage_err)
    }

    /// Creates or deletes pods towards `parallelism` (upstream's `manageJob`). Returns pods
    /// created and deleted, the first error and whether creation waits for the backoff.
    async fn manage(
        &self,
        m: &Manager,
        job: &Job,
        key: &str,
        active: &[&'a Arc<Pod>],
        wait: Duration,
    ) -> (i32, i32, Option<Error>, bool) {
        let parallelism = self.spec.parallelism.unwrap_or(1).max(0);
        let terminating = if self.only_failed { self.terminating() } else { Vec::new() };
        let mut excess: Vec<&Arc<Pod>> = Vec::new();
        let mut to_create: Vec<Option<i32>> = Vec::new();
        if self.indexed {
            let c = self.completions.unwrap_or(0);
            let mut seen = BTreeSet::new();
            let mut keep = Vec::new();
            // Newest first loses: keep the oldest pod of each index.
            let mut sorted: Vec<&Arc<Pod>> = active.to_vec();
            sorted.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            for p in sorted {
                match index_of(p) {
                    Some(ix)
                        if ix < c
                            && !self.completed.contains(&ix)
                            && !self.failed_indexes.contains(&ix)
                            && seen.insert(ix) =>
                    {
                        keep.push(p)
                    }
                    _ => excess.push(p),
                }
            }
            let busy: BTreeSet<i32> = terminating.iter().filter_map(|p| index_of(p)).collect();
            let running = (keep.len() + busy.len()) as i32;
            if running > parallelism {
                keep.sort_by_key(|p| std::cmp::Reverse(index_of(p)));
                let n = (running - parallelism).min(keep.len() as i32) as usize;
                excess.extend(keep.drain(..n));
            } else {
                let want = (parallelism - running) as usize;
                to_create = indexed::first_pending(c, want, &[&self.completed, &self.failed_indexes, &seen, &busy])
                    .into_iter()
                    .map(Some)
                    .collect();
            }
        } else {
            let want = match self.completions {
                Some(c) => parallelism.min((c - self.succeeded()).max(0)),
                // Once a pod succeeded, no new ones start; the others finish.
                None if self.succeeded() > 0 => active.len() as i32,
                None => parallelism,
            };
            let have = (active.len() + terminating.len()) as i32;
            if (active.len() as i32) > want {
                let mut victims: Vec<&Arc<Pod>> = active.to_vec();
                // Not ready first, then the newest.
                victims.sort_by_key(|p| {
                    (is_ready(p), std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)))
                });
                excess.extend(victims.into_iter().take((active.len() as i32 - want) as usize));
            } else if have < want {
                to_create = vec![None; (want - have) as usize];
            }
        }
        let mut first = None;
        let mut deleted = 0;
        if !excess.is_empty() {
            let (n, err) = delete_pods(m, job, key, &excess, true).await;
            deleted = n;
            first = err;
        }
        if to_create.is_empty() {
            return (0, deleted, first, false);
        }
        if !wait.is_zero() {
            debug!(%key, ?wait, "waiting out the backoff before creating pods");
            return (0, deleted, first, true);
        }
        let count = to_create.len();
        m.expectations.expect_creations(key, count);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (created, err) = slow_start_batch(count, SLOW_START_INITIAL_BATCH, || {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let index = to_create.get(i).copied().flatten();
            let failures = self.per_index.map(|_| index.map_or(0, |ix| self.index_failures(ix)));
            let pod = new_pod(job, index, failures);
            async move { m.pod_control.create(job, &pod).await }
        })
        .await;
        for _ in created..count {
            m.expectations.creation_observed(key);
        }
        let err = err.map(|source| Error::Create { key: key.to_string(), source });
        (created as i32, deleted, first.or(err), false)
    }

    /// How often index `ix` failed so far: the most any of its failed pods saw, plus one.
    fn index_failures(&self, ix: i32) -> i32 {
        self.pods
            .iter()
            .filter(|p| phase(p) == "Failed" && index_of(p) == Some(ix))
            .map(|p| indexed::count_annotation(p, INDEX_FAILURE_COUNT) + 1)
            .max()
            .unwrap_or(0)
    }
}

/// Deletes `pods` of `job`, first releasing their finalizers when they are not to be counted
/// (upstream's `deleteJobPods`; `deleteActivePods` keeps them). Returns how many went.
async fn delete_pods(m: &Manager, job: &Job, key: &str, pods: &[&Arc<Pod>], release: bool) -> (i32, Option<Error>) {
    m.expectations.expect_deletions(key, pods.iter().map(|p| key_of(&***p)));
    let results = futures::future::join_all(pods.iter().map(|p| async move {
        if release {
            m.pod_control
                .remove_finalizer(p)
                .await
                .map_err(|source| Error::Finalizer { key: key.to_string(), source })?;
        }
        m.pod_control.delete(job, p).await.map_err(|source| Error::Delete { key: key.to_string(), source })
    }))
    .await;
    let mut deleted = 0;
    let mut first = None;
    for (pod, r) in pods.iter().zip(results) {
        match r {
            Ok(()) => deleted += 1,
            Err(e) => {
                m.expectations.deletion_observed(key, &key_of(&***pod));
                first.get_or_insert(e);
            }
        }
    }
    (deleted, first)
}
