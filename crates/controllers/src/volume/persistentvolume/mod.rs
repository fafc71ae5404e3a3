//! The PersistentVolume controller (upstream's `pkg/controller/volume/persistentvolume`, the
//! "binder"): binds pending claims to the best available volume, keeps the phases of both
//! (volumes Available, Bound, Released, Failed; claims Pending, Bound, Lost), asks a class's
//! external provisioner for a volume when none fits, and reclaims a volume whose claim is gone
//! (Retain: Released; Delete: the volume goes, its provisioner deleting the data first).
//!
//! As upstream, a claim and its volume are written one after the other (the volume first, so
//! that two claims racing for one volume conflict on its resourceVersion), and a sync that
//! finds a half-done binding finishes it.

mod binder;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::Recorder;
use crate::informer::{Change, Informers};
use crate::replicaset::backoff as retry_backoff;

/// The events' `source.component`, as upstream.
const COMPONENT: &str = "persistentvolume-controller";
/// Upstream's `--pvclaimbinder-sync-period`: how often unfinished claims are looked at again.
const SYNC_PERIOD: Duration = Duration::from_secs(15);
const CONCURRENT_SYNCS: u16 = 4;

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing persistentvolume {name}")]
    WriteVolume {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing persistentvolumeclaim {key}")]
    WriteClaim {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading persistentvolumeclaim {key}")]
    ReadClaim {
        key: String,
        #[source]
        source: kube::Error,
    },
}

pub(crate) struct Ctx {
    client: Client,
    volumes: Store<PersistentVolume>,
    claims: Store<PersistentVolumeClaim>,
    classes: Store<StorageClass>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    /// The last event recorded per claim uid. Upstream records again on every resync and its
    /// recorder folds repeats into one Event's count; this recorder writes one Event per call,
    /// so a repeat is not recorded at all.
    reported: Mutex<HashMap<String, (String, String)>>,
    claim_queue: mpsc::UnboundedSender<ObjectRef<PersistentVolumeClaim>>,
}

impl Ctx {
    fn volume_api(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    fn claim_api(&self, ns: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.classes.get(&ObjectRef::new(name))
    }

    /// Records an event about a claim unless it repeats the last one recorded for it.
    fn report(&self, claim: &PersistentVolumeClaim, type_: &str, reason: &str, message: String) {
        let uid = claim.uid().unwrap_or_default();
        let entry = (reason.to_string(), message.clone());
        if lock(&self.reported).insert(uid, entry.clone()).as_ref() != Some(&entry) {
            self.recorder.record(claim, type_, reason, message);
        }
    }

    /// Forgets what was reported about a claim (bound or gone).
    fn forget_reports(&self, claim: &PersistentVolumeClaim) {
        lock(&self.reported).remove(&claim.uid().unwrap_or_default());
    }

    fn forget_failures(&self, key: &str) {
        lock(&self.failures).remove(key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn claim_key(claim: &PersistentVolumeClaim) -> String {
    format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any())
}

/// Runs the controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (volumes, volume_writer) = informers.store::<PersistentVolume>().await;
    let (claims, claim_writer) = informers.store::<PersistentVolumeClaim>().await;
    let (classes, class_writer) = informers.store::<StorageClass>().await;
    let (volume_tx, mut volume_rx) = mpsc::unbounded_channel::<ObjectRef<PersistentVolume>>();
    let (claim_tx, mut claim_rx) = mpsc::unbounded_channel::<ObjectRef<PersistentVolumeClaim>>();

    let volume_informer = {
        let (volume_tx, claim_tx) = (volume_tx.clone(), claim_tx.clone());
        volume_writer.run(shutdown.clone(), move |c| {
            for v in c.objects() {
                let _ = volume_tx.send(ObjectRef::from_obj(&**v));
                // The claim a volume points at may now be bindable or lost.
                if let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
                    && let (Some(name), Some(ns)) = (&r.name, &r.namespace)
                {
                    let _ = claim_tx.send(ObjectRef::new(name).within(ns));
                }
            }
        })
    };
    let claim_informer = {
        let (volume_tx, claim_tx) = (volume_tx.clone(), claim_tx.clone());
        claim_writer.run(shutdown.clone(), move |c| {
            if let Change::Delete(claim) = &c {
                // Its volume is to be released and reclaimed.
                if let Some(v) = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty()) {
                    let _ = volume_tx.send(ObjectRef::new(v));
                }
                return;
            }
            for claim in c.objects() {
                let _ = claim_tx.send(ObjectRef::from_obj(&**claim));
            }
        })
    };
    let class_informer = class_writer.run(shutdown.clone(), |_: Change<_>| {});

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        volumes: volumes.clone(),
        claims: claims.clone(),
        classes,
        recorder: Recorder::new(client, COMPONENT),
        failures: Mutex::new(HashMap::new()),
        reported: Mutex::new(HashMap::new()),
        claim_queue: claim_tx,
    });
    let volume_queue = futures::stream::poll_fn(move |cx| volume_rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.clone().cancelled_owned());
    let claim_queue = futures::stream::poll_fn(move |cx| claim_rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.clone().cancelled_owned());
    let config = Config::default().concurrency(CONCURRENT_SYNCS);
    let volume_workers = applier(
        |v, ctx| Box::pin(binder::sync_volume(v, ctx)),
        |v: Arc<PersistentVolume>, e, ctx| error_policy(&v.name_any(), e, ctx),
        ctx.clone(),
        volumes,
        volume_queue,
        config.clone(),
    )
    .for_each(log_result);
    let claim_workers = applier(
        |c, ctx| Box::pin(binder::sync_claim(c, ctx)),
        |c: Arc<PersistentVolumeClaim>, e, ctx| error_policy(&claim_key(&c), e, ctx),
        ctx,
        claims,
        claim_queue,
        config,
    )
    .for_each(log_result);
    info!("starting persistentvolume controller");
    tokio::join!(volume_informer, claim_informer, class_informer, volume_workers, claim_workers);
}

async fn log_result<T, E>(res: Result<T, kube::runtime::controller::Error<E, Infallible>>)
where
    E: std::error::Error + 'static,
{
    match res {
        Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
        Err(e) => debug!(error = %e, "persistentvolume sync failed"),
    }
}

fn error_policy(key: &str, err: &Error, ctx: Arc<Ctx>) -> Action {
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_default();
        *n += 1;
        *n
    };
    warn!(%key, error = %err, "persistentvolume sync failed; retrying");
    Action::requeue(retry_backoff(n))
}
