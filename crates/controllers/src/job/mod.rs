//! The Job controller (upstream's `pkg/controller/job`): runs a Job's pods to completion.
//!
//! The recipe is the ReplicaSet controller's (informers that only enqueue keys and lower
//! [`Expectations`], kube-runtime's applier as the work queue, a sync that reads the caches).
//! The sync follows upstream's `syncJob`:
//!
//! - Pods carry the `batch.kubernetes.io/job-tracking` finalizer. A finished pod is first
//!   recorded in `status.uncountedTerminatedPods`, then its finalizer is removed, then (once the
//!   pod is seen without it, or gone) it moves into `succeeded`/`failed`. So no pod is counted
//!   twice or lost, whatever fails in between.
//! - The Job fails on `backoffLimit`, `activeDeadlineSeconds`, a pod failure policy's `FailJob`
//!   or too many failed indexes; it succeeds on its completions or a success policy. It first
//!   gets the interim condition (`FailureTarget` / `SuccessCriteriaMet`), its remaining pods are
//!   deleted, and the terminal `Failed` / `Complete` follows once no pod is left running or
//!   uncounted (upstream's delayed terminal condition, on by default since 1.31).
//! - Replacement pods wait out an exponential [`backoff`] after failures; a suspended Job's
//!   pods are deleted (and not counted); Indexed Jobs keep one pod per pending index.
//!
//! - A running Job claims its pods ([`claim`]): it adopts orphans matching its selector and
//!   releases owned pods that stopped matching.
//!
//! A pod whose Job is gone loses its finalizer (upstream's orphan-pod cleanup), so deleting a
//! Job never leaves pods stuck.

pub mod backoff;
mod claim;
pub mod indexed;
pub mod pod_control;
pub mod pod_failure_policy;
pub mod status;
mod sync;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::Recorder;
use crate::expectations::Expectations;
use crate::informer::{Change, Informers};
use crate::replicaset::{backoff as retry_backoff, controller_of};
use pod_control::{PodControl, has_finalizer};

/// The Events' source component.
pub const COMPONENT: &str = "job-controller";
/// The `spec.managedBy` value of Jobs this controller handles (also when unset).
pub const MANAGED_BY: &str = "kubernetes.io/job-controller";
/// Jobs synced at once (upstream's `--concurrent-job-syncs` default).
const CONCURRENT_SYNCS: u16 = 5;

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating pods for {key}")]
    Create {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pods of {key}")]
    Delete {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing the tracking finalizer from pods of {key}")]
    Finalizer {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action} pod {pod} of {key}")]
    Claim {
        key: String,
        pod: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("re-reading job {key} before adopting pods")]
    Recheck {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("not adopting pods for {key}: the job is gone or being deleted")]
    CannotAdopt { key: String },
    #[error("updating the status of {key}")]
    Status {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// Runs the Job controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (jobs, job_writer) = informers.store::<Job>().await;
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let manager = Arc::new(Manager {
        client: client.clone(),
        jobs: jobs.clone(),
        pods,
        expectations: Expectations::new(),
        queue: tx,
        pod_control: PodControl { client: client.clone(), recorder: Recorder::new(client.clone(), COMPONENT) },
        backoff: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
    });
    let m = manager.clone();
    let job_informer = job_writer.run(shutdown.clone(), move |c| m.job_changed(&c));
    let m = manager.clone();
    let pod_informer = pod_writer.run(shutdown.clone(), move |c| m.pod_changed(&c));
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    let workers = applier(
        |job, m| Box::pin(sync::sync(job, m)),
        error_policy,
        manager,
        jobs,
        queue,
        Config::default().concurrency(CONCURRENT_SYNCS),
    )
    .for_each(|res| async move {
        match res {
            Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
            Err(e) => debug!(error = %e, "job sync failed"),
        }
    });
    info!("starting job controller");
    tokio::join!(job_informer, pod_informer, workers);
}

/// The controller's caches, expectations and queue.
pub struct Manager {
    client: Client,
    jobs: Store<Job>,
    pods: Store<Pod>,
    expectations: Expectations,
    queue: mpsc::UnboundedSender<ObjectRef<Job>>,
    pod_control: PodControl,
    /// Failures since the last success, per Job key, for the pods' backoff.
    backoff: Mutex<HashMap<String, backoff::Record>>,
    /// Consecutive failed syncs per key, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The resourceVersion of the last status written per key: a cache older than that is
    /// not acted on, so that pods whose count is only in the new status are never missed.
    written: Mutex<HashMap<String, u64>>,
}

/// `namespace/name`.
pub(crate) fn key_of<R: Resource>(obj: &R) -> String {
    format!("{}/{}", obj.meta().namespace.as_deref().unwrap_or(""), obj.meta().name.as_deref().unwrap_or(""))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Manager {
    fn enqueue(&self, job: &Job) {
        let _ = self.queue.send(ObjectRef::from_obj(job));
    }

    /// The Job a controller reference names, if it is in the cache with that uid.
    fn resolve(&self, namespace: &str, pod: &Pod) -> Option<Arc<Job>> {
        let r = controller_of(&pod.metadata).filter(|r| r.kind == "Job" && r.api_version.starts_with("batch/"))?;
        let job = self.jobs.get(&ObjectRef::new(&r.name).within(namespace))?;
        (job.metadata.uid.as_deref() == Some(r.uid.as_str())).then_some(job)
    }

    fn job_changed(&self, change: &Change<Job>) {
        match change {
            Change::Add(j) => self.enqueue(j),
            Change::Update(old, cur) => {
                if old.metadata.uid != cur.metadata.uid {
                    self.forget(&key_of(&**old));
                }
                self.enqueue(cur);
            }
            Change::Delete(j) => self.forget(&key_of(&**j)),
        }
    }

    fn forget(&self, key: &str) {
        self.expectations.delete(key);
        lock(&self.backoff).remove(key);
        lock(&self.failures).remove(key);
        lock(&self.written).remove(key);
    }

    fn pod_changed(&self, change: &Change<Pod>) {
        let (pod, old) = match change {
            Change::Add(p) => (p, None),
            Change::Update(old, cur) => {
                if old.metadata.resource_version == cur.metadata.resource_version {
                    return;
                }
                (cur, Some(old))
            }
            Change::Delete(p) => (p, None),
        };
        let ns = pod.namespace().unwrap_or_default();
        match self.resolve(&ns, pod) {
            Some(job) => {
                let key = key_of(&*job);
                match change {
                    Change::Add(p) if p.metadata.deletion_timestamp.is_none() => {
                        self.expectations.creation_observed(&key)
                    }
                    Change::Update(..) if pod.metadata.deletion_timestamp.is_none() => {}
                    _ => self.expectations.deletion_observed(&key, &key_of(&**pod)),
                }
                self.enqueue(&job);
            }
            None if has_finalizer(pod) && !matches!(change, Change::Delete(_)) => self.clean_orphan(pod.clone()),
            None => {}
        }
        // An orphan that is new or changed its labels or reference: the Jobs it matches look
        // at it, to adopt it (upstream's `getPodJobs`).
        let orphan_changed = match old {
            None => matches!(change, Change::Add(_)),
            Some(old) => old.metadata.labels != pod.metadata.labels || controller_of(&old.metadata).is_some(),
        };
        if controller_of(&pod.metadata).is_none() && orphan_changed {
            for job in self.matching_jobs(&ns, pod) {
                self.enqueue(&job);
            }
        }
        // A pod moved away from a Job (its reference changed): that Job looks again.
        if let Some(old) = old
            && controller_of(&old.metadata) != controller_of(&pod.metadata)
            && let Some(job) = self.resolve(&ns, old)
        {
            self.enqueue(&job);
        }
    }

    /// The Jobs of `namespace` whose (non-empty) selector matches the pod's labels.
    fn matching_jobs(&self, namespace: &str, pod: &Pod) -> Vec<Arc<Job>> {
        matching_jobs(&self.jobs, namespace, pod)
    }

    /// Removes the tracking finalizer from a pod whose Job is gone (upstream's
    /// `syncOrphanPod`), once the Job cache is known to be complete. A pod without any
    /// controller keeps it while an unfinished Job matching it may still adopt it.
    fn clean_orphan(&self, pod: Arc<Pod>) {
        let (jobs, pod_control) = (self.jobs.clone(), self.pod_control.clone());
        tokio::spawn(async move {
            let _ = jobs.wait_until_ready().await;
            let ns = pod.namespace().unwrap_or_default();
            let owned = match controller_of(&pod.metadata) {
                Some(r) => jobs
                    .get(&ObjectRef::new(&r.name).within(&ns))
                    .is_some_and(|j| j.metadata.uid.as_deref() == Some(&r.uid)),
                None => matching_jobs(&jobs, &ns, &pod).iter().any(|j| !status::is_finished(j)),
            };
            if owned {
                return;
            }
            if let Err(e) = pod_control.remove_finalizer(&pod).await {
                warn!(pod = %key_of(&*pod), error = %e, "could not remove the tracking finalizer of an orphan pod");
            }
        });
    }
}

fn matching_jobs(jobs: &Store<Job>, namespace: &str, pod: &Pod) -> Vec<Arc<Job>> {
    jobs.state_filter(|j| {
        j.namespace().as_deref() == Some(namespace)
            && j.spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .and_then(|s| Selector::try_from(s).ok())
                .is_some_and(|s| !s.selects_all() && s.matches(pod.labels()))
    })
}

fn error_policy(job: Arc<Job>, err: &Error, m: Arc<Manager>) -> Action {
    let key = key_of(&*job);
    let failures = {
        let mut f = lock(&m.failures);
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    warn!(%key, error = %err, source = ?std::error::Error::source(err).map(|s| s.to_string()), "job sync failed; retrying");
    Action::requeue(retry_backoff(failures))
}

/// The delay of a requeue at `at`, from `now` (at least a second, so a deadline just passed
/// is seen as passed).
fn until(at: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO).max(Duration::from_secs(1))
}
