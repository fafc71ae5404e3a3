//! The TTL-after-finished controller (upstream's `pkg/controller/ttlafterfinished`): deletes a
//! finished Job `spec.ttlSecondsAfterFinished` seconds after its terminal condition, in the
//! foreground so its pods go first, and only if a fresh read still says it has expired.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::informer::{Change, Informers};
use crate::job::status::{COMPLETE, FAILED, true_condition};
use crate::replicaset::backoff as retry_backoff;

const CONCURRENT_SYNCS: u16 = 5;

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading job {key}")]
    Get {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting job {key}")]
    Delete {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// When the Job expires: its terminal condition's transition time plus the TTL; `None` if it
/// has no TTL or has not finished (upstream's `needsCleanup` and `timeLeft`).
pub fn expires_at(job: &Job) -> Option<Timestamp> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let status = job.status.as_ref()?;
    let c = true_condition(status, COMPLETE).or_else(|| true_condition(status, FAILED))?;
    let finished = c.last_transition_time.as_ref()?.0;
    finished.checked_add(SignedDuration::from_secs(i64::from(ttl))).ok()
}

struct Ctx {
    client: Client,
    failures: Mutex<HashMap<String, u32>>,
}

fn key_of(job: &Job) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// Runs the controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (jobs, writer) = informers.store::<Job>().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<ObjectRef<Job>>();
    let informer = writer.run(shutdown.clone(), move |c| {
        if let Change::Add(j) | Change::Update(_, j) = c
            && expires_at(&j).is_some()
            && j.metadata.deletion_timestamp.is_none()
        {
            let _ = tx.send(ObjectRef::from_obj(&*j));
        }
    });
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    let ctx = Arc::new(Ctx { client, failures: Mutex::new(HashMap::new()) });
    let workers = applier(
        |job, ctx| Box::pin(sync(job, ctx)),
        error_policy,
        ctx,
        jobs,
        queue,
        Config::default().concurrency(CONCURRENT_SYNCS),
    )
    .for_each(|res| async move {
        match res {
            Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
            Err(e) => debug!(error = %e, "ttl-after-finished sync failed"),
        }
    });
    info!("starting ttl-after-finished controller");
    tokio::join!(informer, workers);
}

fn error_policy(job: Arc<Job>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = key_of(&job);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    warn!(%key, error = %err, "ttl-after-finished sync failed; retrying");
    Action::requeue(retry_backoff(n))
}

/// The time left before `expiry`, if any.
fn left(expiry: Timestamp, now: Timestamp) -> Option<Duration> {
    Duration::try_from(expiry.duration_since(now)).ok().filter(|d| !d.is_zero())
}

async fn sync(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&job);
    let Some(expiry) = expires_at(&job) else { return Ok(Action::await_change()) };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if let Some(d) = left(expiry, Timestamp::now()) {
        return Ok(Action::requeue(d));
    }
    // The cache may be stale (the TTL changed, the Job was re-run): check a fresh copy.
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let Some(fresh) = api.get_opt(&job.name_any()).await.map_err(|source| Error::Get { key: key.clone(), source })?
    else {
        return Ok(Action::await_change());
    };
    let Some(expiry) = expires_at(&fresh) else { return Ok(Action::await_change()) };
    if fresh.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if let Some(d) = left(expiry, Timestamp::now()) {
        return Ok(Action::requeue(d));
    }
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions { uid: fresh.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    debug!(%key, "cleaning up finished job");
    match api.delete(&fresh.name_any(), &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(source) => return Err(Error::Delete { key, source }),
    }
    ctx.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn job(ttl: Option<i32>, condition: Option<(&str, &str)>) -> Job {
        Job {
            spec: Some(JobSpec { ttl_seconds_after_finished: ttl, ..Default::default() }),
            status: Some(JobStatus {
                conditions: condition.map(|(t, s)| {
                    vec![JobCondition {
                        type_: t.into(),
                        status: s.into(),
                        last_transition_time: Some(Time("2024-01-01T00:00:00Z".parse().unwrap())),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn finished_jobs_with_a_ttl_expire_after_it() {
        let t = expires_at(&job(Some(30), Some(("Complete", "True")))).unwrap();
        assert_eq!(t.to_string(), "2024-01-01T00:00:30Z");
        assert!(expires_at(&job(Some(0), Some(("Failed", "True")))).is_some());
    }

    #[test]
    fn running_jobs_and_jobs_without_a_ttl_never_expire() {
        assert_eq!(expires_at(&job(None, Some(("Complete", "True")))), None);
        assert_eq!(expires_at(&job(Some(5), None)), None);
        assert_eq!(expires_at(&job(Some(5), Some(("Complete", "False")))), None);
        assert_eq!(expires_at(&job(Some(5), Some(("SuccessCriteriaMet", "True")))), None);
    }

    #[test]
    fn time_left() {
        let now: Timestamp = "2024-01-01T00:00:10Z".parse().unwrap();
        assert_eq!(left("2024-01-01T00:00:30Z".parse().unwrap(), now), Some(Duration::from_secs(20)));
        assert_eq!(left("2024-01-01T00:00:05Z".parse().unwrap(), now), None);
    }
}
