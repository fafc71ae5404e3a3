//! watch: a stream of `{"type": ..., "object": ...}` events, as upstream's watch endpoint sends.
//!
//! Semantics follow upstream: without a resourceVersion (or with "0"), the current objects come
//! first as ADDED events; with one, the changes after it; a compacted one ends the stream with
//! an ERROR event carrying a 410 `Status`. Label and field selectors apply to both the old and
//! the new state, so an object that stops matching is reported DELETED. Bookmarks are sent when
//! the client allows them, including the `k8s.io/initial-events-end` one of `sendInitialEvents`;
//! like upstream's, they carry a recent revision even when the watched resource is idle.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tug_api::{ApiError, ResourceType};
use tug_store::{EventKind, ListOptions, Revision, StoreError, WatchEvent, WatchItem};

use super::Call;
use super::read::Filter;
use crate::codec::{self, Accept};
use crate::objects::store_error;
use crate::response::Body;
use crate::server::ApiServer;

/// How often an idle watch with bookmarks allowed gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);
/// How often the store tells a watch with bookmarks how far it has seen every change: a
/// bookmark carries that revision, so that a client resuming from it is never further behind
/// than this plus the bookmark interval, however idle its resource. (Resuming from a revision
/// compaction has passed costs the client a 410 and a full list.)
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// How often a watch of a custom resource checks that the resource is still served.
const SERVED_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The default lifetime of a watch; upstream picks between 30 and 60 minutes.
const DEFAULT_TIMEOUT_SECS: u64 = 1800;

struct Encoder {
    accept: Accept,
    rt: Arc<ResourceType>,
    api_version: String,
    include: tug_api::table::IncludeObject,
}

impl Encoder {
    fn frame(&self, kind: &str, obj: &Value) -> Bytes {
        let object = match self.accept {
            Accept::Table => self.rt.ops.table(
                std::slice::from_ref(obj),
                &json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or_default()}),
                self.include,
                jiff::Timestamp::now(),
            ),
            Accept::PartialMetadata => super::read::partial_metadata(obj),
            _ => obj.clone(),
        };
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rev: Revision, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.rt.kind, "apiVersion": self.api_version, "metadata": meta});
        let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn error(&self, e: &ApiError) -> Bytes {
        let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Where a watch starts.
enum Start {
    /// Send the current state first, then changes after the revision it was read at.
    WithInitialState,
    /// Only changes after this revision.
    After(Revision),
}

pub(crate) async fn watch(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from_call(call)?;
    let bookmarks = call.query.flag("allowWatchBookmarks");
    let send_initial = call.query.get("sendInitialEvents");
    let rv = call.query.get("resourceVersion").filter(|s| !s.is_empty());
    let start = match (send_initial, rv) {
        (Some("true"), _) => {
            if call.query.get("resourceVersionMatch") != Some("NotOlderThan") {
                return Err(ApiError::invalid(
                    "",
                    "ListOptions",
                    "",
                    &[tug_api::field::FieldError::forbidden(
                        &tug_api::field::FieldPath::new("resourceVersionMatch"),
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    )],
                ));
            }
            if !bookmarks {
                return Err(ApiError::invalid(
                    "",
                    "ListOptions",
                    "",
                    &[tug_api::field::FieldError::forbidden(
                        &tug_api::field::FieldPath::new("allowWatchBookmarks"),
                        "sendInitialEvents requires setting allowWatchBookmarks to true",
                    )],
                ));
            }
            Start::WithInitialState
        }
        (_, None) | (_, Some("0")) => Start::WithInitialState,
        (_, Some(v)) => Start::After(super::read::parse_resource_version(v)?),
    };
    let initial_end_bookmark = send_initial == Some("true");
    let timeout = call.query.int("timeoutSeconds")?.filter(|t| *t > 0).map_or(DEFAULT_TIMEOUT_SECS, |t| t as u64);
    let include = match call.query.get("includeObject") {
        Some("None") => tug_api::table::IncludeObject::None,
        Some("Object") => tug_api::table::IncludeObject::Object,
        _ => tug_api::table::IncludeObject::Metadata,
    };
    let enc = Encoder { accept: call.accept, rt: call.rt.clone(), api_version: call.rt.api_version(), include };
    let prefix = call.rt.prefix(call.ns());
    let srv = call.srv.clone();
    let rt = call.rt.clone();
    let fast = filter.is_everything() && call.accept == Accept::Json && call.rt.storage_version;
    // The garbage collector and other metadata informers watch every resource this way: their
    // events need only each object's metadata, which is the same in every version.
    let metadata_only = call.accept == Accept::PartialMetadata && filter.needs_only_labels();

    // Read the initial state (if any) and open the store watch before answering, so that
    // errors such as a bad selector or a compacted revision are reported synchronously.
    let (initial, after) = match start {
        Start::WithInitialState => {
            let list =
                srv.store.list(&prefix, ListOptions::default()).await.map_err(|e| store_error(call.rt, "", e))?;
            (Some(list.items), list.revision)
        }
        Start::After(r) => (None, r),
    };
    // A short watch hears from the store more often, so that its closing bookmark is recent.
    let progress_every =
        bookmarks.then(|| PROGRESS_INTERVAL.min(Duration::from_secs(timeout) / 3).max(Duration::from_millis(500)));
    let stream = match srv.store.watch_with_progress(&prefix, after, progress_every).await {
        Ok(s) => Ok(s),
        // Answered with an ERROR event in the stream, as upstream does, not an HTTP error.
        Err(StoreError::Compacted { compacted, .. }) => Err(compacted),
        Err(e) => return Err(store_error(call.rt, "", e)),
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    tokio::spawn(async move {
        let rt = &*rt;
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(Frame::data(b))).await.is_ok() }
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(compacted) => {
                let _ = send(enc.error(&ApiError::too_old_resource_version(after, compacted))).await;
                return;
            }
        };
        if let Some(items) = initial {
            for kv in items {
                let Ok(obj) = codec::decode_stored(&kv).and_then(|o| srv.to_view(rt, o)) else { continue };
                if filter.matches(rt, &obj) && !send(enc.frame("ADDED", &obj)).await {
                    return;
                }
            }
            if initial_end_bookmark && !send(enc.bookmark(after, true)).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.reset();
        let mut served = tokio::time::interval(SERVED_CHECK_INTERVAL);
        served.reset();
        let mut last_rev = after;
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    // As upstream, a watch that times out ends with a bookmark: the client
                    // resumes from a recent revision.
                    if bookmarks {
                        let _ = send(enc.bookmark(last_rev, false)).await;
                    }
                    return;
                }
                // A custom resource's watches end when its definition goes, as upstream's do.
                _ = served.tick(), if rt.custom => {
                    if srv.registry().lookup(&rt.group, &rt.version, &rt.plural).is_none_or(|now| !now.custom) {
                        return;
                    }
                }
                _ = ticker.tick(), if bookmarks => {
                    if !send(enc.bookmark(last_rev, false)).await { return; }
                }
                _ = tx.closed() => return,
                next = stream.next() => match next {
                    None => return,
                    // History the watcher still needed was compacted while it followed (etcd
                    // reports that on the stream): an ERROR event with 410, as upstream.
                    Some(Err(StoreError::Compacted { compacted, .. })) => {
                        let _ = send(enc.error(&ApiError::too_old_resource_version(last_rev, compacted))).await;
                        return;
                    }
                    Some(Err(e)) => {
                        // A watcher that fell behind is ended; the client resumes from its last
                        // resourceVersion, as after any dropped watch.
                        tracing::debug!(error = %e, "watch ended");
                        return;
                    }
                    Some(Ok(WatchItem::Progress(revision))) => last_rev = last_rev.max(revision),
                    Some(Ok(WatchItem::Event(ev))) => {
                        last_rev = ev.revision();
                        if fast {
                            // No selector, no conversion, plain JSON: the stored bytes go out
                            // as they are, with the resourceVersion spliced in; no parsing.
                            if !send(raw_frame(&ev)).await {
                                return;
                            }
                        } else if !filter.may_match_key(&ev.kv.key) {
                            // Neither the old nor the new state can match: the name is the key's.
                        } else if metadata_only {
                            if let Some(frame) = metadata_frame(&filter, &ev)
                                && !send(frame).await
                            {
                                return;
                            }
                        } else if let Some((kind, obj)) = translate(&srv, rt, &filter, &ev)
                            && !send(enc.frame(kind, &obj)).await
                        {
                            return;
                        }
                    }
                }
            }
        }
    });
    let body = BodyExt::boxed(StreamBody::new(ReceiverStream::new(rx)));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    Ok(resp)
}

/// The watch event of a store change for a watcher with no selector and no conversion: every
/// change under its prefix, encoded straight from the stored bytes.
fn raw_frame(ev: &WatchEvent) -> Bytes {
    let object = codec::stored_to_wire(&ev.kv.value, ev.revision());
    frame_line(unfiltered_kind(ev), &[&object])
}

/// The watch event type of a change for a watcher that sees every object under its prefix.
fn unfiltered_kind(ev: &WatchEvent) -> &'static str {
    match (ev.kind, &ev.prev) {
        (EventKind::Delete, _) => "DELETED",
        (EventKind::Put, None) => "ADDED",
        (EventKind::Put, Some(_)) => "MODIFIED",
    }
}

/// `{"type":"<kind>","object":<the parts>}` and a newline.
fn frame_line(kind: &str, object: &[&[u8]]) -> Bytes {
    let mut line = Vec::with_capacity(object.iter().map(|part| part.len()).sum::<usize>() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    for part in object {
        line.extend_from_slice(part);
    }
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// An object's metadata, read from its stored form without building the rest of it.
#[derive(serde::Deserialize)]
struct MetadataOnly {
    #[serde(default)]
    metadata: Value,
}

/// The `PartialObjectMetadata` watch event a store change becomes for a watcher whose filter
/// needs only labels, if any; the stored object is decoded only as far as its metadata.
fn metadata_frame(filter: &Filter, ev: &WatchEvent) -> Option<Bytes> {
    if filter.is_everything() {
        // Every change is reported: its metadata is cut from the stored bytes, unparsed.
        let metadata = codec::stored_metadata_to_wire(&ev.kv.value, ev.revision())?;
        let head: &[u8] = br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#;
        return Some(frame_line(unfiltered_kind(ev), &[head, &metadata, b"}"]));
    }
    let metadata = |kv: &tug_store::KeyValue, rev: Revision| -> Option<Value> {
        let mut metadata = serde_json::from_slice::<MetadataOnly>(&kv.value).ok()?.metadata;
        metadata.as_object_mut()?.insert("resourceVersion".into(), Value::String(rev.to_string()));
        Some(metadata)
    };
    let new = metadata(&ev.kv, ev.revision())?;
    let kind = match ev.kind {
        EventKind::Delete => filter.matches_metadata(&new).then_some("DELETED")?,
        EventKind::Put => {
            let new_matches = filter.matches_metadata(&new);
            let old_matches = match &ev.prev {
                None => false,
                Some(_) if filter.is_everything() => true,
                Some(p) => metadata(p, p.mod_revision).is_some_and(|o| filter.matches_metadata(&o)),
            };
            match (old_matches, new_matches) {
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => return None,
            }
        }
    };
    let object = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": new});
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).ok()?;
    line.push(b'\n');
    Some(Bytes::from(line))
}

/// The watch event a store change becomes for this watcher, if any.
fn translate(srv: &ApiServer, rt: &ResourceType, filter: &Filter, ev: &WatchEvent) -> Option<(&'static str, Value)> {
    let decode = |kv: &tug_store::KeyValue, rev: Revision| -> Option<Value> {
        let mut obj = codec::decode_stored(kv).ok()?;
        codec::set_resource_version(&mut obj, rev);
        srv.to_view(rt, obj).ok()
    };
    match ev.kind {
        EventKind::Delete => {
            let obj = decode(&ev.kv, ev.revision())?;
            filter.matches(rt, &obj).then_some(("DELETED", obj))
        }
        EventKind::Put => {
            let new = decode(&ev.kv, ev.revision())?;
            let new_matches = filter.matches(rt, &new);
            let old_matches = match &ev.prev {
                None => false,
                Some(_) if filter.is_everything() => true,
                Some(p) => decode(p, p.mod_revision).is_some_and(|o| filter.matches(rt, &o)),
            };
            match (old_matches, new_matches) {
                (false, true) => Some(("ADDED", new)),
                (true, true) => Some(("MODIFIED", new)),
                (true, false) => Some(("DELETED", new)),
                (false, false) => None,
            }
        }
    }
}
