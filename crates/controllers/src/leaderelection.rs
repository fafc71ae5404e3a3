//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's `tools/leaderelection`
//! with a `LeaseLock`: of several copies of a component (controller manager, scheduler), only
//! the one holding the lease works; the others wait to take it over.
//!
//! A candidate takes the lease when it does not exist, has no holder, or its record has not
//! changed for `lease_duration` as observed on the candidate's own clock (not the record's
//! times: clocks of different hosts may disagree). The leader renews every `retry_period`; if no
//! renewal succeeds within `renew_deadline` it stops working and reports the loss. On a graceful
//! shutdown the leader releases the lease (empty holder) so that a successor need not wait.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Why leading ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election lost: lease {namespace}/{name} could not be renewed within the renew deadline")]
    Lost { namespace: String, name: String },
}

/// What to elect on and how (client-go's `LeaderElectionConfig`).
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity, written as the lease's `holderIdentity`.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// Upstream's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

impl Config {
    /// A lease `kube-system/<name>` with upstream's default timings and a fresh identity.
    pub fn new(name: &str) -> Self {
        Self {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity(),
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        }
    }
}

/// `<hostname>_<random uuid>`, as upstream components name themselves.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}_{}", uuid_v4())
}

/// A random number from std's randomly keyed hasher (no extra dependency for a few bits).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&random_u64().to_le_bytes());
    b[8..].copy_from_slice(&random_u64().to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// `d` stretched by up to `factor` at random (client-go's `wait.Jitter`).
fn jitter(d: Duration, factor: f64) -> Duration {
    let r = (random_u64() % 1_000_000) as f64 / 1_000_000.0;
    d + d.mul_f64(factor * r)
}

/// One candidate's view of the lease.
struct Elector {
    api: Api<Lease>,
    config: Config,
    /// The last lease spec seen and when (on our clock) it was first seen so.
    observed: Option<(LeaseSpec, Instant)>,
}

fn same_record(a: &LeaseSpec, b: &LeaseSpec) -> bool {
    a.holder_identity == b.holder_identity
        && a.renew_time == b.renew_time
        && a.acquire_time == b.acquire_time
        && a.lease_transitions == b.lease_transitions
}

impl Elector {
    fn observe(&mut self, spec: &LeaseSpec) {
        if !self.observed.as_ref().is_some_and(|(s, _)| same_record(s, spec)) {
            self.observed = Some((spec.clone(), Instant::now()));
        }
    }

    /// client-go's `tryAcquireOrRenew`: whether we hold the lease after this attempt.
    async fn try_acquire_or_renew(&mut self) -> bool {
        let now = MicroTime(Timestamp::now());
        let secs = self.config.lease_duration.as_secs() as i32;
        let me = self.config.identity.clone();
        let existing = match self.api.get_opt(&self.config.name).await {
            Ok(l) => l,
            Err(e) => {
                warn!(lease = %self.config.name, error = %e, "error retrieving lease");
                return false;
            }
        };
        let Some(mut lease) = existing else {
            let spec = LeaseSpec {
                holder_identity: Some(me),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            };
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec.clone()),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.observed = Some((spec, Instant::now()));
                    true
                }
                Err(e) => {
                    warn!(lease = %self.config.name, error = %e, "error creating lease");
                    false
                }
            };
        };
        let old = lease.spec.clone().unwrap_or_default();
        self.observe(&old);
        let holder = old.holder_identity.clone().unwrap_or_default();
        let valid = self.observed.as_ref().is_some_and(|(_, at)| at.elapsed() < self.config.lease_duration);
        if !holder.is_empty() && holder != me && valid {
            return false;
        }
        let mut spec = LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(secs),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: old.lease_transitions,
            ..old.clone()
        };
        if holder == me {
            spec.acquire_time = old.acquire_time.clone();
        } else {
            spec.lease_transitions = Some(old.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(spec.clone());
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => {
                if holder != me {
                    info!(lease = %self.config.name, identity = %me, previous = %holder, "acquired lease");
                }
                self.observed = Some((spec, Instant::now()));
                true
            }
            Err(e) => {
                warn!(lease = %self.config.name, error = %e, "failed to update lease");
                false
            }
        }
    }

    /// Gives the lease up if we still hold it (client-go's `release`).
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else { return };
        let old = lease.spec.clone().unwrap_or_default();
        if old.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        let now = MicroTime(Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: old.lease_transitions,
            ..Default::default()
        });
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.config.name, "released lease"),
            Err(e) => warn!(lease = %self.config.name, error = %e, "failed to release lease"),
        }
    }
}

/// Waits to become the leader, then runs `work` with a token cancelled when leading ends.
/// Returns `Ok` after `shutdown` (the lease released) and [`Error::Lost`] when renewal failed
/// (after `work` has stopped).
pub async fn run<F, Fut>(client: Client, config: Config, shutdown: CancellationToken, work: F) -> Result<(), Error>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut elector = Elector { api, config, observed: None };
    info!(lease = %elector.config.name, identity = %elector.config.identity, "attempting to acquire leader lease");
    loop {
        if elector.try_acquire_or_renew().await {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(jitter(elector.config.retry_period, 1.2)) => {}
        }
    }
    info!(lease = %elector.config.name, identity = %elector.config.identity, "successfully acquired lease; started leading");
    let leading = shutdown.child_token();
    let mut task = tokio::spawn(work(leading.clone()));
    let mut last_renew = Instant::now();
    let lost = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break false,
            _ = &mut task => break false,
            _ = tokio::time::sleep(elector.config.retry_period) => {}
        }
        let attempt = tokio::time::timeout(elector.config.renew_deadline, elector.try_acquire_or_renew()).await;
        if attempt == Ok(true) {
            last_renew = Instant::now();
        } else if last_renew.elapsed() >= elector.config.renew_deadline {
            break true;
        }
    };
    leading.cancel();
    if !task.is_finished() {
        let _ = task.await;
    }
    if lost {
        warn!(lease = %elector.config.name, identity = %elector.config.identity, "leaderelection lost");
        return Err(Error::Lost { namespace: elector.config.namespace.clone(), name: elector.config.name.clone() });
    }
    elector.release().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_hostname_underscore_uuid() {
        let id = identity();
        let (host, uuid) = id.rsplit_once('_').unwrap();
        assert!(!host.is_empty());
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert_ne!(identity(), id);
    }

    #[test]
    fn jitter_stays_within_its_factor() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2), 1.2);
            assert!(j >= Duration::from_secs(2) && j <= Duration::from_millis(4400));
        }
    }
}
