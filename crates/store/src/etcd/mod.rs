//! The etcd v3 backend, for control planes of several servers sharing one datastore.
//!
//! Keys and values are stored as they are (`/registry/...`, as upstream's apiserver), and the
//! store's revision *is* etcd's revision, so `resourceVersion`s match what `etcdctl` shows. A
//! fresh etcd is at revision 1, not 0: nothing in the [`Store`] contract depends on where the
//! count starts.
//!
//! - Guarded writes are etcd transactions comparing the key's `mod_revision` (and its existence),
//!   with a read of the current value on the failure branch, so a conflict costs one round trip.
//! - Watches use etcd's watch API with `prev_kv`, and resume by themselves after a dropped
//!   stream from the revision after the last one delivered (see [`watch`]).
//! - etcd keeps no record of the compacted revision that a client can read cheaply, so
//!   [`EtcdStore::compacted_revision`] finds it from which old revisions are still readable.
//! - Every request names a deadline and asks etcd to fail at once when its member has no leader
//!   (instead of waiting for one), so a cluster without quorum yields
//!   [`StoreError::Unavailable`] promptly; callers answer 503.

mod watch;

pub mod local;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, Identity, KvClient, TlsOptions,
    Txn, TxnOp, TxnOpResponse,
};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{KeyValue, ListOptions, ListResult, ProgressWatchStream, Revision, Store, StoreError, rules};

/// How long one request to etcd may take before it fails as unavailable. Upstream's apiserver
/// allows a request 60 s in all; a datastore that has not answered in 10 s has no quorum.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the etcd cluster is and how to authenticate to it (k3s' `--datastore-*` flags).
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// Client URLs of the members, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// CA bundle to verify the members' serving certificates (`--datastore-cafile`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key presented to the members (`--datastore-certfile/keyfile`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// The endpoints of a `--datastore-endpoint` value: `http(s)://host:port[,...]`, with k3s'
    /// optional `etcd://`-less form only (no path).
    pub fn parse_endpoints(value: &str) -> Result<Vec<String>, String> {
        let endpoints: Vec<String> =
            value.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect();
        if endpoints.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        for endpoint in &endpoints {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .ok_or_else(|| format!("{endpoint:?} is not an http:// or https:// URL"))?;
            if rest.is_empty() || rest.contains('/') && !rest.ends_with('/') {
                return Err(format!("{endpoint:?} must be scheme://host:port without a path"));
            }
        }
        Ok(endpoints)
    }
}

/// The etcd backend. Dropping it ends its watches with [`StoreError::Closed`], once each has
/// delivered the writes this store acknowledged.
pub struct EtcdStore {
    client: Client,
    /// How many members the client knows, which bounds retries on another one.
    endpoints: usize,
    shared: Arc<Shared>,
    _stop_watches: DropGuard,
}

/// What the store's watches share with it.
struct Shared {
    /// The revision of the newest write this store acknowledged: a watch ending because the
    /// store was dropped first delivers everything up to it.
    last_write: AtomicI64,
    /// The newest compacted revision seen; compaction only moves forward, so it bounds the
    /// search for the current one from below.
    compacted_floor: AtomicI64,
    /// Cancelled when the store is dropped.
    stopped: CancellationToken,
    /// Whether the members' etcd answers progress requests in order with the events (see
    /// [`answers_progress_in_order`]); watches report progress only then.
    progress_in_order: bool,
}

/// Whether etcd of this version answers a watch's progress request only after the events up
/// to the revision it reports. Before 3.4.25 and 3.5.8 the answer could overtake events still
/// queued for the watch (etcd issue 15220), and a watch resuming from it would miss them;
/// before 3.4.31 and 3.5.13 a watch that started in the past and saw no event could go
/// unanswered (etcd issue 17507). The bounds are the ones upstream's API server requires before
/// it relies on progress requests.
fn answers_progress_in_order(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-', '+']).map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    match (major, minor) {
        (3, 4) => patch >= 31,
        (3, 5) => patch >= 13,
        (3, 0..=3) => false,
        (major, _) => major >= 3,
    }
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers.
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let mut options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if config.endpoints.iter().any(|e| e.starts_with("https://")) || config.ca_file.is_some() {
            options = options.with_tls(tls_options(config)?);
        }
        let client =
            Client::connect(&config.endpoints, Some(options)).await.map_err(|source| etcd_error("connect", source))?;
        // Asked of the member that answers; the members of a cluster run one version but
        // during an upgrade. A member that cannot be asked counts as one that does not answer
        // in order.
        let version = client.maintenance_client().status().await.map(|s| s.version().to_owned());
        let progress_in_order = version.as_deref().is_ok_and(answers_progress_in_order);
        tracing::debug!(?version, progress_in_order, "etcd version");
        let stopped = CancellationToken::new();
        let store = EtcdStore {
            client,
            endpoints: config.endpoints.len(),
            shared: Arc::new(Shared {
                last_write: AtomicI64::new(0),
                compacted_floor: AtomicI64::new(0),
                stopped: stopped.clone(),
                progress_in_order,
            }),
            _stop_watches: stopped.drop_guard(),
        };
        store.current_revision().await?;
        Ok(store)
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client.kv_client()
    }

    /// Runs a read, again on another member when one cannot serve it: reads may be repeated.
    async fn read<T, Fut>(&self, call: impl Fn(KvClient) -> Fut) -> Result<T, etcd_client::Error>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.with_retries(call, is_unavailable).await
    }

    /// Runs a write, again only when it never reached etcd (the connection could not be made):
    /// a write that may have been applied is not repeated, its caller gets `Unavailable`.
    async fn write<T, Fut>(&self, call: impl Fn(KvClient) -> Fut) -> Result<T, etcd_client::Error>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.with_retries(call, never_sent).await
    }

    /// The client spreads requests over the endpoints and keeps trying a member that went away
    /// for a while, so a request that fails for want of a member is tried again, a few times
    /// per endpoint, briefly spaced (refused connections fail fast).
    async fn with_retries<T, Fut>(
        &self,
        call: impl Fn(KvClient) -> Fut,
        retryable: fn(&etcd_client::Error) -> bool,
    ) -> Result<T, etcd_client::Error>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempts = 2 * self.endpoints + 1;
        let mut attempt = 1;
        loop {
            match call(self.kv()).await {
                Err(e) if attempt < attempts && retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "etcd request failed; trying again");
                    tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn acknowledged(&self, revision: Revision) -> Revision {
        self.shared.last_write.fetch_max(revision, Ordering::AcqRel);
        revision
    }
}

/// The key's value as the failure branch of a guarded write read it, in the same transaction:
/// `None` if the key does not exist.
fn value_on_failure(response: &etcd_client::TxnResponse) -> Result<Option<KeyValue>, StoreError> {
    for op in response.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            return get.kvs().first().map(key_value).transpose();
        }
    }
    Ok(None)
}

/// A guarded write's failure: the key is missing, or (read in the same transaction, so its
/// revision differs from `expected`) it changed.
fn guard_failure(key: &str, expected: Revision, current: Option<KeyValue>) -> StoreError {
    match current {
        None => StoreError::NotFound { key: key.to_string() },
        Some(current) => StoreError::Conflict { key: key.to_string(), expected, current: Box::new(current) },
    }
}

fn tls_options(config: &EtcdConfig) -> Result<TlsOptions, StoreError> {
    let read = |path: &PathBuf| {
        std::fs::read(path)
            .map_err(|source| StoreError::Config { reason: format!("cannot read {}: {source}", path.display()) })
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => {
            return Err(StoreError::Config {
                reason: "--datastore-certfile and --datastore-keyfile go together".into(),
            });
        }
    }
    Ok(tls)
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` for a prefix);
/// `"\0"` for the empty prefix, which etcd reads as "to the end of the keyspace".
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `(key, range_end)` for everything under `prefix`.
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() { (vec![0], vec![0]) } else { (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes())) }
}

fn key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key = kv.key_str().map_err(|_| StoreError::Corrupt {
        path: "etcd".into(),
        reason: format!("key {:?} is not UTF-8", String::from_utf8_lossy(kv.key())),
    })?;
    Ok(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

/// What an etcd failure means to a caller: compaction and future revisions are distinguished by
/// etcd only in the message text (its `ErrCompacted`/`ErrFutureRev`), deadlines and a missing
/// leader mean the cluster cannot serve now.
enum Failure {
    Compacted,
    FutureRevision,
    Other(StoreError),
}

fn classify(operation: &'static str, source: etcd_client::Error) -> Failure {
    if let etcd_client::Error::GRpcStatus(status) = &source {
        let message = status.message();
        if message.contains("required revision has been compacted") {
            return Failure::Compacted;
        }
        if message.contains("required revision is a future revision") {
            return Failure::FutureRevision;
        }
    }
    Failure::Other(etcd_error(operation, source))
}

pub(crate) fn etcd_error(operation: &'static str, source: etcd_client::Error) -> StoreError {
    if is_unavailable(&source) {
        return StoreError::Unavailable { reason: format!("etcd {operation}: {source}") };
    }
    StoreError::Etcd { operation, source: Box::new(source) }
}

// The requests, as futures that own their arguments, so that a retry can make a fresh one.

async fn range(
    mut kv: KvClient,
    key: impl Into<Vec<u8>>,
    options: Option<GetOptions>,
) -> Result<GetResponse, etcd_client::Error> {
    kv.get(key, options).await
}

async fn txn_op(mut kv: KvClient, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
    kv.txn(txn).await
}

async fn compact(mut kv: KvClient, revision: Revision) -> Result<etcd_client::CompactionResponse, etcd_client::Error> {
    kv.compact(revision, None).await
}

/// Whether a request failed before it was sent: no connection to the member could be made.
fn never_sent(source: &etcd_client::Error) -> bool {
    match source {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable && status.message().contains("connect error")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Whether a failure is etcd (or the way to it) not serving now, as opposed to a request etcd
/// refuses. Connections that break mid-call surface as several codes (Unknown, Internal with a
/// transport message, Cancelled), so the refusals are listed and the rest counts as unavailable.
fn is_unavailable(source: &etcd_client::Error) -> bool {
    use tonic::Code;
    match source {
        etcd_client::Error::GRpcStatus(status) => !matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::ResourceExhausted
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
        ),
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_)
        | etcd_client::Error::EndpointError(_) => true,
        _ => false,
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self.read(|kv| range(kv, key, None)).await.map_err(|e| etcd_error("get", e))?;
        response.kvs().first().map(key_value).transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let (prefix_key, end) = prefix_range(prefix);
        let start = match opts.start_key.as_deref() {
            Some(start) if start.as_bytes() > prefix_key.as_slice() => start.as_bytes().to_vec(),
            _ => prefix_key,
        };
        let mut get = GetOptions::new().with_range(end);
        if opts.limit > 0 {
            get = get.with_limit(opts.limit as i64);
        }
        let requested = opts.revision.filter(|r| *r > 0);
        if let Some(revision) = requested {
            get = get.with_revision(revision);
        }
        let response = match self.read(|kv| range(kv, start.clone(), Some(get.clone()))).await {
            Ok(response) => response,
            Err(e) => return Err(self.revision_error("list", requested.unwrap_or(0), e).await),
        };
        let items = response.kvs().iter().map(key_value).collect::<Result<Vec<_>, _>>()?;
        // etcd's `count` is every key in the range at that revision, the returned ones included.
        let remaining = (response.count().max(0) as usize).saturating_sub(items.len());
        let revision = requested.unwrap_or_else(|| header_revision(response.header()));
        Ok(ListResult { items, revision, more: response.more(), remaining })
    }

    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let (key, end) = prefix_range(prefix);
        let options = GetOptions::new().with_range(end).with_count_only();
        let response =
            self.read(|kv| range(kv, key.clone(), Some(options.clone()))).await.map_err(|e| etcd_error("count", e))?;
        Ok(response.count().max(0) as usize)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            value.to_vec(),
            None,
        )]);
        let response = self.write(|kv| txn_op(kv, txn.clone())).await.map_err(|e| etcd_error("create", e))?;
        if !response.succeeded() {
            return Err(StoreError::AlreadyExists { key: key.to_string() });
        }
        Ok(self.acknowledged(header_revision(response.header())))
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision, StoreError> {
        // The existence check keeps `expected == 0` from creating a missing key.
        let txn = Txn::new()
            .when([
                Compare::version(key, CompareOp::Greater, 0),
                Compare::mod_revision(key, CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.write(|kv| txn_op(kv, txn.clone())).await.map_err(|e| etcd_error("update", e))?;
        if response.succeeded() {
            return Ok(self.acknowledged(header_revision(response.header())));
        }
        Err(guard_failure(key, expected, value_on_failure(&response)?))
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let mut compares = vec![Compare::version(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key()))])
            .or_else([TxnOp::get(key, None)]);
        let response = self.write(|kv| txn_op(kv, txn.clone())).await.map_err(|e| etcd_error("delete", e))?;
        if !response.succeeded() {
            // Only the revision guard can fail on a key that exists.
            return Err(guard_failure(key, expected.unwrap_or_default(), value_on_failure(&response)?));
        }
        let revision = self.acknowledged(header_revision(response.header()));
        let deleted = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Delete(delete) => delete.prev_kvs().first().map(key_value),
            _ => None,
        });
        match deleted {
            Some(kv) => Ok(KeyValue { mod_revision: revision, ..kv? }),
            // A compare that passed means the key existed; etcd always returns it with prev_kv.
            None => Err(StoreError::NotFound { key: key.to_string() }),
        }
    }

    /// Only when etcd's version answers progress requests in order with the events (see
    /// [`answers_progress_in_order`]).
    fn reports_watch_progress(&self) -> bool {
        self.shared.progress_in_order
    }

    async fn watch_with_progress(
        &self,
        prefix: &str,
        after: Revision,
        progress_every: Option<Duration>,
    ) -> Result<ProgressWatchStream, StoreError> {
        if after > 0 {
            // etcd reports a compacted start revision only later, on the stream; a read at
            // `after` fails the same way at once.
            let (key, end) = prefix_range(prefix);
            let probe = GetOptions::new().with_range(end).with_count_only().with_revision(after);
            if let Err(e) = self.read(|kv| range(kv, key.clone(), Some(probe.clone()))).await {
                match self.revision_error("watch", after, e).await {
                    // Watching from a revision not written yet is allowed: it skips up to it.
                    StoreError::FutureRevision { .. } => {}
                    // The watch waits for etcd to come back (and reports compaction then).
                    StoreError::Unavailable { .. } => {}
                    other => return Err(other),
                }
            }
        }
        let progress_every = progress_every.filter(|_| self.shared.progress_in_order);
        watch::start(self.client.clone(), Arc::clone(&self.shared), prefix, after, progress_every).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.current_revision().await?;
        let compacted = self.compacted_revision().await?;
        if !rules::compaction_needed(revision, current, compacted)? {
            return Ok(());
        }
        match self.write(|kv| compact(kv, revision)).await {
            Ok(_) => {
                self.shared.compacted_floor.fetch_max(revision, Ordering::AcqRel);
                Ok(())
            }
            // Another server compacted in between, further than this one wanted to.
            Err(e) => Err(self.revision_error("compact", revision, e).await),
        }
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let response = self
            .read(|kv| range(kv, vec![0], Some(GetOptions::new().with_count_only())))
            .await
            .map_err(|e| etcd_error("read the revision", e))?;
        Ok(header_revision(response.header()))
    }

    /// etcd answers a read at a revision older than its compacted one with `ErrCompacted`, so
    /// the compacted revision is the oldest readable one: a binary search between the newest
    /// compaction seen and now, one cheap count-only read per step (about 30 at most). Callers
    /// need it on error paths and for compaction, every few minutes.
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        let current = self.current_revision().await?;
        let mut low = self.shared.compacted_floor.load(Ordering::Acquire).max(1);
        let mut high = current.max(low);
        // Invariant: the answer is in [low, high], and `high` is readable.
        while low < high {
            let mid = low + (high - low) / 2;
            let probe = GetOptions::new().with_count_only().with_revision(mid);
            match self.read(|kv| range(kv, vec![0], Some(probe.clone()))).await {
                Ok(_) => high = mid,
                Err(e) => match classify("find the compacted revision", e) {
                    Failure::Compacted => low = mid + 1,
                    // The cluster moved on while searching: `mid` exists, so it is readable.
                    Failure::FutureRevision => high = mid,
                    Failure::Other(error) => return Err(error),
                },
            }
        }
        // Revision 1 is an empty keyspace, readable whether or not it was "compacted".
        let compacted = if low <= 1 { 0 } else { low };
        self.shared.compacted_floor.fetch_max(compacted, Ordering::AcqRel);
        Ok(compacted)
    }
}

impl EtcdStore {
    /// Turns an etcd failure of a read or compaction at `requested` into the store's error,
    /// finding the numbers etcd's messages leave out.
    async fn revision_error(&self, operation: &'static str, requested: Revision, e: etcd_client::Error) -> StoreError {
        match classify(operation, e) {
            Failure::Compacted => match self.compacted_revision().await {
                Ok(compacted) => StoreError::Compacted { requested, compacted },
                Err(error) => error,
            },
            Failure::FutureRevision => match self.current_revision().await {
                Ok(current) => StoreError::FutureRevision { requested, current },
                Err(error) => error,
            },
            Failure::Other(error) => error,
        }
    }
}
