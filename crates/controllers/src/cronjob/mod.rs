//! The CronJob controller (upstream's `pkg/controller/cronjob`, the "v2" controller): creates a
//! Job at each scheduled time, honouring `timeZone`, `concurrencyPolicy`,
//! `startingDeadlineSeconds` and `suspend`, keeps `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime`, and deletes finished Jobs beyond the history limits.
//!
//! Each sync computes when the CronJob is next due and requeues itself for then, so no
//! polling is needed; Job changes (a Job finishing) enqueue their CronJob.

pub mod schedule;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use tug_api::cron::Schedule;

use crate::events::{NORMAL, Recorder, WARNING};
use crate::informer::{Change, Informers};
use crate::job::pod_control::namespace_terminating;
use crate::job::status::{COMPLETE, FAILED, true_condition};
use crate::replicaset::{backoff as retry_backoff, controller_of};

/// The Events' source component.
pub const COMPONENT: &str = "cronjob-controller";
/// The annotation with a Job's scheduled time.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Requeues land this long after the scheduled time (upstream's `nextScheduleDelta`).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);
const CONCURRENT_SYNCS: u16 = 5;

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating job {job} for {key}")]
    Create {
        key: String,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading job {job} of {key}")]
    Get {
        key: String,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting job {job} of {key}")]
    Delete {
        key: String,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {key} again")]
    Recheck {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status of {key}")]
    Status {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// Runs the CronJob controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (cronjobs, cj_writer) = informers.store::<CronJob>().await;
    let (jobs, job_writer) = informers.store::<Job>().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let manager = Arc::new(Manager {
        client: client.clone(),
        cronjobs: cronjobs.clone(),
        jobs,
        queue: tx,
        recorder: Recorder::new(client.clone(), COMPONENT),
        failures: Mutex::new(HashMap::new()),
    });
    let m = manager.clone();
    let cj_informer = cj_writer.run(shutdown.clone(), move |c| match c {
        Change::Add(cj) | Change::Update(_, cj) => m.enqueue(&cj),
        Change::Delete(cj) => {
            lock(&m.failures).remove(&key_of(&cj));
        }
    });
    let m = manager.clone();
    let job_informer = job_writer.run(shutdown.clone(), move |c: Change<Job>| {
        for job in c.objects() {
            m.job_changed(job);
        }
    });
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    let workers = applier(
        |cj, m| {
            let span = info_span!("sync_cronjob", key = %key_of(&cj));
            Box::pin(sync(cj, m).instrument(span))
        },
        error_policy,
        manager,
        cronjobs,
        queue,
        Config::default().concurrency(CONCURRENT_SYNCS),
    )
    .for_each(|res| async move {
        match res {
            Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
            Err(e) => debug!(error = %e, "cronjob sync failed"),
        }
    });
    info!("starting cronjob controller");
    tokio::join!(cj_informer, job_informer, workers);
}

pub struct Manager {
    client: Client,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
    queue: mpsc::UnboundedSender<ObjectRef<CronJob>>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

fn key_of(cj: &CronJob) -> String {
    format!("{}/{}", cj.namespace().unwrap_or_default(), cj.name_any())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Manager {
    fn enqueue(&self, cj: &CronJob) {
        let _ = self.queue.send(ObjectRef::from_obj(cj));
    }

    fn job_changed(&self, job: &Job) {
        let Some(r) = controller_of(&job.metadata).filter(|r| r.kind == "CronJob") else { return };
        let ns = job.namespace().unwrap_or_default();
        if let Some(cj) = self.cronjobs.get(&ObjectRef::new(&r.name).within(&ns))
            && cj.metadata.uid.as_deref() == Some(r.uid.as_str())
        {
            self.enqueue(&cj);
        }
    }

    fn jobs_api(&self, ns: &str) -> Api<Job> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Deletes a Job of `cj` in the background, with an Event (upstream's `deleteJob`).
    async fn delete_job(&self, cj: &CronJob, key: &str, ns: &str, name: &str) -> Result<(), Error> {
        let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match self.jobs_api(ns).delete(name, &params).await.map(|_| ()) {
            // Deleted already (the cache lags): nothing new to report.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Ok(()) => {
                self.recorder.record(cj, NORMAL, "SuccessfulDelete", format!("Deleted job {name}"));
                Ok(())
            }
            Err(source) => {
                self.recorder.record(cj, WARNING, "FailedDelete", format!("Deleted job: {source}"));
                Err(Error::Delete { key: key.into(), job: name.into(), source })
            }
        }
    }
}

fn error_policy(cj: Arc<CronJob>, err: &Error, m: Arc<Manager>) -> Action {
    let key = key_of(&cj);
    let failures = {
        let mut f = lock(&m.failures);
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    warn!(%key, error = %err, source = ?std::error::Error::source(err).map(|s| s.to_string()), "cronjob sync failed; retrying");
    Action::requeue(retry_backoff(failures))
}

/// The terminal condition type of a finished Job.
fn finished(job: &Job) -> Option<&'static str> {
    let status = job.status.as_ref()?;
    if true_condition(status, COMPLETE).is_some() {
        Some(COMPLETE)
    } else if true_condition(status, FAILED).is_some() {
        Some(FAILED)
    } else {
        None
    }
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job for the scheduled time (upstream's `getJobFromTemplate2`).
pub fn job_from_template(cj: &CronJob, scheduled: Timestamp, zone: &TimeZone) -> Job {
    let template = &cj.spec.job_template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    // Without a timeZone the annotation is in UTC, as upstream's `time.LoadLocation("")`.
    annotations.insert(SCHEDULED_TIMESTAMP.into(), schedule::scheduled_timestamp(scheduled, zone));
    Job {
        metadata: ObjectMeta {
            name: Some(schedule::job_name(&cj.name_any(), scheduled)),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: cj.name_any(),
                uid: cj.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// How long until the activation after `now`, plus a small delta.
fn until_next(schedule: &Schedule, zone: &TimeZone, now: Timestamp) -> Option<Duration> {
    let next = schedule.next(now, zone)?;
    let d = Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO);
    Some(d + NEXT_SCHEDULE_DELTA)
}

/// Upstream's `syncCronJob`.
async fn sync(cj: Arc<CronJob>, m: Arc<Manager>) -> Result<Action, Error> {
    let _ = m.jobs.wait_until_ready().await;
    let key = key_of(&cj);
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let now = Timestamp::now();
    let owned: Vec<Arc<Job>> = m.jobs.state_filter(|j| {
        j.namespace().as_deref() == Some(ns.as_str()) && controller_of(&j.metadata).is_some_and(|r| r.uid == uid)
    });
    let old = cj.status.clone().unwrap_or_default();
    let mut status = old.clone();
    if reconcile_jobs(&m, &cj, &key, &owned, &mut status).await? == Cache::Stale {
        // Our own status update is on its way; its event brings the CronJob back.
        return Ok(Action::await_change());
    }
    // A CronJob being deleted only gets its status brought up to date.
    let deleting = cj.metadata.deletion_timestamp.is_some();
    let result = if deleting { Ok(None) } else { schedule_next(&m, &cj, &key, now, &mut status).await };
    if !deleting {
        cleanup_finished(&m, &cj, &key, &owned).await?;
    }
    if status != old {
        let api: Api<CronJob> = Api::namespaced(m.client.clone(), &ns);
        let mut copy = (*cj).clone();
        copy.status = Some(status);
        match api.replace_status(&cj.name_any(), &PostParams::default(), &copy).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(Error::Status { key, source }),
        }
    }
    let requeue = result?;
    lock(&m.failures).remove(&key);
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Whether the cached CronJob was found older than the API's.
#[derive(Debug, PartialEq, Eq)]
enum Cache {
    Current,
    Stale,
}

/// Brings `status.active` and `lastSuccessfulTime` up to date with the Jobs.
async fn reconcile_jobs(
    m: &Manager,
    cj: &CronJob,
    key: &str,
    owned: &[Arc<Job>],
    status: &mut CronJobStatus,
) -> Result<Cache, Error> {
    let in_active = |s: &CronJobStatus, uid: &Option<String>| s.active.iter().flatten().any(|r| r.uid == *uid);
    for job in owned {
        let name = job.name_any();
        match (in_active(status, &job.metadata.uid), finished(job)) {
            (false, None) => {
                // Just created by us, with the status update not yet in the cache?
                let api: Api<CronJob> = Api::namespaced(m.client.clone(), &cj.namespace().unwrap_or_default());
                let fresh =
                    api.get_opt(&cj.name_any()).await.map_err(|source| Error::Recheck { key: key.into(), source })?;
                let fresh_status = fresh.and_then(|f| f.status).unwrap_or_default();
                if in_active(&fresh_status, &job.metadata.uid) {
                    return Ok(Cache::Stale);
                }
                m.recorder.record(
                    cj,
                    WARNING,
                    "UnexpectedJob",
                    format!("Saw a job that the controller did not create or forgot: {name}"),
                );
            }
            (true, Some(condition)) => {
                status.active.get_or_insert_with(Vec::new).retain(|r| r.uid != job.metadata.uid);
                m.recorder.record(
                    cj,
                    NORMAL,
                    "SawCompletedJob",
                    format!("Saw completed job: {name}, status: {condition}"),
                );
            }
            (false, Some(_)) | (true, None) => {}
        }
        // Only completed Jobs have a completion time.
        if let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.clone())
            && status.last_successful_time.as_ref().is_none_or(|t| t.0 < done.0)
        {
            status.last_successful_time = Some(done);
        }
    }
    // Active Jobs that are gone (checked with a live read: the cache may lag).
    let refs: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
    for r in refs {
        if owned.iter().any(|j| j.metadata.uid == r.uid) {
            continue;
        }
        let (ns, name) = (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default());
        let found = m.jobs_api(&ns).get_opt(&name).await.map_err(|source| Error::Get {
            key: key.into(),
            job: name.clone(),
            source,
        })?;
        if found.is_none_or(|j| j.metadata.uid != r.uid) {
            status.active.get_or_insert_with(Vec::new).retain(|a| a.uid != r.uid);
            m.recorder.record(cj, NORMAL, "MissingJob", format!("Active job went missing: {name}"));
        }
    }
    if status.active.as_ref().is_some_and(|a| a.is_empty()) {
        status.active = None;
    }
    Ok(Cache::Current)
}

/// Starts the Job that is due, if any; returns when to look again.
async fn schedule_next(
    m: &Manager,
    cj: &CronJob,
    key: &str,
    now: Timestamp,
    status: &mut CronJobStatus,
) -> Result<Option<Duration>, Error> {
    let spec = &cj.spec;
    let zone = match &spec.time_zone {
        Some(name) => match TimeZone::get(name) {
            Ok(z) => z,
            Err(e) => {
                m.recorder.record(cj, WARNING, "UnknownTimeZone", format!("invalid timeZone: {name:?}: {e}"));
                return Ok(None);
            }
        },
        None => TimeZone::system(),
    };
    if spec.suspend == Some(true) {
        debug!(%key, "not starting job because the cron is suspended");
        return Ok(None);
    }
    if spec.schedule.contains("TZ") {
        m.recorder.record(
            cj,
            WARNING,
            "UnsupportedSchedule",
            format!(
                "CRON_TZ or TZ used in schedule {:?} is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details",
                spec.schedule
            ),
        );
    }
    let sched = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            m.recorder.record(
                cj,
                WARNING,
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            );
            return Ok(None);
        }
    };
    let next = until_next(&sched, &zone, now);
    let earliest = status.last_schedule_time.as_ref().or(cj.metadata.creation_timestamp.as_ref()).map_or(now, |t| t.0);
    let due = match schedule::most_recent(&sched, &zone, earliest, now, spec.starting_deadline_seconds) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(next),
        Err(e) => {
            m.recorder.record(cj, WARNING, "InvalidSchedule", format!("invalid schedule: {} : {e}", spec.schedule));
            return Ok(None);
        }
    };
    if due.missed > schedule::TOO_MANY_MISSED {
        m.recorder.record(
            cj,
            WARNING,
            "TooManyMissedTimes",
            format!(
                "too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                due.missed
            ),
        );
    }
    let scheduled = due.time;
    if let Some(sds) = spec.starting_deadline_seconds
        && scheduled.as_second() + sds < now.as_second()
    {
        let when = scheduled.to_zoned(TimeZone::UTC).strftime("%a, %d %b %Y %H:%M:%S %z").to_string();
        m.recorder.record(cj, WARNING, "MissSchedule", format!("Missed scheduled time to start a job: {when}"));
        return Ok(next);
    }
    let name = schedule::job_name(&cj.name_any(), scheduled);
    let already = status.active.iter().flatten().any(|r| r.name.as_deref() == Some(name.as_str()))
        || status.last_schedule_time.as_ref().is_some_and(|t| t.0 == scheduled);
    if already {
        return Ok(next);
    }
    let active: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            m.recorder.record(
                cj,
                NORMAL,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            );
            return Ok(next);
        }
        Some("Replace") => {
            for r in &active {
                let (ns, job) = (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default());
                m.delete_job(cj, key, &ns, &job).await?;
                status.active.get_or_insert_with(Vec::new).retain(|a| a.uid != r.uid);
            }
        }
        _ => {}
    }
    let zone_for_annotation = if spec.time_zone.is_some() { zone.clone() } else { TimeZone::UTC };
    let job = job_from_template(cj, scheduled, &zone_for_annotation);
    let ns = cj.namespace().unwrap_or_default();
    let created = match m.jobs_api(&ns).create(&PostParams::default(), &job).await {
        Ok(j) => {
            m.recorder.record(cj, NORMAL, "SuccessfulCreate", format!("Created job {name}"));
            j
        }
        // Created before (e.g. the status write was lost): ours if it names us.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = m.jobs_api(&ns).get(&name).await.map_err(|source| Error::Get {
                key: key.into(),
                job: name.clone(),
                source,
            })?;
            if controller_of(&existing.metadata).is_none_or(|r| Some(&r.uid) != cj.metadata.uid.as_ref()) {
                return Ok(next);
            }
            existing
        }
        Err(e) if namespace_terminating(&e) => return Ok(None),
        Err(source) => {
            let message = match &source {
                kube::Error::Api(s) => s.message.clone(),
                e => e.to_string(),
            };
            m.recorder.record(cj, WARNING, "FailedCreate", format!("Error creating job: {message}"));
            return Err(Error::Create { key: key.into(), job: name, source });
        }
    };
    let r = job_ref(&created);
    let list = status.active.get_or_insert_with(Vec::new);
    if !list.iter().any(|a| a.uid == r.uid) {
        list.push(r);
    }
    status.last_schedule_time = Some(Time(scheduled));
    Ok(next)
}

/// Deletes the oldest finished Jobs beyond the history limits (upstream's
/// `cleanupFinishedJobs`).
async fn cleanup_finished(m: &Manager, cj: &CronJob, key: &str, owned: &[Arc<Job>]) -> Result<(), Error> {
    for (condition, limit) in
        [(COMPLETE, cj.spec.successful_jobs_history_limit), (FAILED, cj.spec.failed_jobs_history_limit)]
    {
        let Some(limit) = limit else { continue };
        let mut done: Vec<&Arc<Job>> = owned.iter().filter(|j| finished(j) == Some(condition)).collect();
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        if excess == 0 {
            continue;
        }
        // Oldest start first; Jobs that never started last; then by name.
        done.sort_by_key(|j| {
            let start = j.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0);
            (start.is_none(), start, j.name_any())
        });
        for job in done.into_iter().take(excess) {
            m.delete_job(cj, key, &job.namespace().unwrap_or_default(), &job.name_any()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobSpec, JobTemplateSpec};

    use super::*;

    #[test]
    fn jobs_from_the_template_are_named_and_annotated_by_schedule() {
        let cj = CronJob {
            metadata: ObjectMeta {
                name: Some("hello".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: CronJobSpec {
                schedule: "* * * * *".into(),
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "hello".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(JobSpec::default()),
                },
                ..Default::default()
            },
            status: None,
        };
        let t: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let job = job_from_template(&cj, t, &TimeZone::UTC);
        assert_eq!(job.metadata.name.as_deref(), Some("hello-28401120"));
        assert_eq!(
            job.metadata.annotations.as_ref().unwrap().get(SCHEDULED_TIMESTAMP).map(String::as_str),
            Some("2024-01-01T00:00:00Z")
        );
        assert_eq!(job.metadata.labels.as_ref().unwrap().get("app").map(String::as_str), Some("hello"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("CronJob", Some(true)));
    }
}
