//! Controller history (upstream's `pkg/controller/history`): the ControllerRevisions through
//! which StatefulSets and DaemonSets remember each state of their pod template, so that they
//! can tell current pods from updated ones and `kubectl rollout history|undo` can read and
//! restore an earlier state.
//!
//! A revision is named `<parent>-<hash>`, the hash being taken over its data (plus the
//! parent's collision count when two different states hash alike), and carries that hash in
//! its `controller-revision-hash` label. Revisions are immutable but for their revision
//! number, which a parent bumps when it rolls back to an earlier state.
//!
//! This module only reads and writes ControllerRevisions, through the API.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::debug;

/// The label a revision carries its hash in (and that StatefulSet pods carry their revision's
/// name in).
pub const CONTROLLER_REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// Names longer than this are cut so that `<prefix>-<hash>` stays within 253 bytes.
const MAX_PREFIX_LEN: usize = 223;

/// Upstream's alphabet for names made from numbers (no vowels, no look-alikes).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Why a history write failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("creating controller revision {name}")]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading controller revision {name} after a name collision")]
    ReadExisting {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating controller revision {name}")]
    Update {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting controller revision {name}")]
    Delete {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching the owner references of controller revision {name}")]
    Patch {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("controller revision {name} is owned by {owner}; not adopting it")]
    AlreadyOwned { name: String, owner: String },
    #[error("controller revision {name} has no controller reference to name it after")]
    NoParent { name: String },
}

/// 32-bit FNV-1 (Go's `fnv.New32`, which upstream uses here; not the 1a variant).
fn fnv32(data: &[u8], mut hash: u32) -> u32 {
    for b in data {
        hash = hash.wrapping_mul(0x0100_0193);
        hash ^= u32::from(*b);
    }
    hash
}

const FNV32_OFFSET: u32 = 0x811c_9dc5;

/// Maps every character of `s` into the safe alphabet (upstream's `rand.SafeEncodeString`).
fn safe_encode(s: &str) -> String {
    s.bytes().map(|b| SAFE_ALPHABET[b as usize % SAFE_ALPHABET.len()] as char).collect()
}

/// The hash of a revision's data and the parent's collision count (upstream's
/// `HashControllerRevision`): FNV-32 over the data's JSON then the count in decimal, rendered
/// with the safe alphabet so that it is a valid name part and label value.
pub fn hash_controller_revision(data: &serde_json::Value, collision_count: Option<i32>) -> String {
    let raw = serde_json::to_vec(data).unwrap_or_default();
    let mut hash = fnv32(&raw, FNV32_OFFSET);
    if let Some(c) = collision_count {
        hash = fnv32(c.to_string().as_bytes(), hash);
    }
    safe_encode(&hash.to_string())
}

/// `<prefix>-<hash>`, the prefix cut to keep the name valid (upstream's
/// `ControllerRevisionName`).
pub fn controller_revision_name(prefix: &str, hash: &str) -> String {
    let mut end = prefix.len().min(MAX_PREFIX_LEN);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash}", &prefix[..end])
}

/// A revision of `parent` holding `data` (upstream's `NewControllerRevision`): the template's
/// labels plus the hash label, the controller reference, named after the parent and hash.
pub fn new_controller_revision(
    parent: &impl Resource,
    controller_ref: OwnerReference,
    template_labels: &BTreeMap<String, String>,
    data: serde_json::Value,
    revision: i64,
    collision_count: Option<i32>,
) -> ControllerRevision {
    let hash = hash_controller_revision(&data, collision_count);
    let mut labels = template_labels.clone();
    labels.insert(CONTROLLER_REVISION_HASH_LABEL.to_string(), hash.clone());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(controller_revision_name(&parent.name_any(), &hash)),
            namespace: parent.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![controller_ref]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision,
    }
}

fn data_of(r: &ControllerRevision) -> &serde_json::Value {
    static NULL: serde_json::Value = serde_json::Value::Null;
    r.data.as_ref().map(|d| &d.0).unwrap_or(&NULL)
}

/// Upstream's `byRevision` order: revision number, then creation time, then name.
fn compare(a: &ControllerRevision, b: &ControllerRevision) -> Ordering {
    a.revision
        .cmp(&b.revision)
        .then_with(|| {
            let t = |r: &ControllerRevision| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a).cmp(&t(b))
        })
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Sorts revisions oldest first (upstream's `SortControllerRevisions`, a stable sort).
pub fn sort_controller_revisions(revisions: &mut [ControllerRevision]) {
    revisions.sort_by(compare);
}

/// The revision number a new revision gets: one more than the highest, 1 for the first
/// (upstream's `NextRevision`, which takes the last of a sorted list).
pub fn next_revision(revisions: &[ControllerRevision]) -> i64 {
    revisions.iter().map(|r| r.revision).max().map_or(1, |m| m + 1)
}

/// Whether two revisions hold the same state (upstream's `EqualRevision`). Upstream first
/// compares hash labels that parse as numbers, which safe-encoded hashes almost never do;
/// the data decides.
pub fn equal_revision(a: &ControllerRevision, b: &ControllerRevision) -> bool {
    data_of(a) == data_of(b)
}

/// The revisions of `revisions` equal to `needle` (upstream's `FindEqualRevisions`).
pub fn find_equal_revisions<'a>(
    revisions: &'a [ControllerRevision],
    needle: &ControllerRevision,
) -> Vec<&'a ControllerRevision> {
    revisions.iter().filter(|r| equal_revision(r, needle)).collect()
}

/// Reads and writes ControllerRevisions through the API (upstream's `realHistory`).
#[derive(Clone)]
pub struct History {
    client: Client,
}

impl History {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn api(&self, ns: &str) -> Api<ControllerRevision> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Creates `revision` in `parent_ns` (upstream's `CreateControllerRevision`). The name is
    /// `<parent>-<hash>` with the hash taken with `collision_count`; when that name is taken by
    /// a revision with other data, the count is bumped and the next name tried. A namesake with
    /// the same data is returned as if created.
    pub async fn create_controller_revision(
        &self,
        parent_ns: &str,
        revision: &ControllerRevision,
        collision_count: &mut i32,
    ) -> Result<ControllerRevision, HistoryError> {
        let parent = crate::replicaset::controller_of(&revision.metadata)
            .map(|r| r.name.clone())
            .ok_or_else(|| HistoryError::NoParent { name: revision.name_any() })?;
        let api = self.api(parent_ns);
        let mut clone = revision.clone();
        clone.metadata.namespace = Some(parent_ns.to_string());
        loop {
            let hash = hash_controller_revision(data_of(revision), Some(*collision_count));
            let name = controller_revision_name(&parent, &hash);
            clone.metadata.name = Some(name.clone());
            match api.create(&PostParams::default(), &clone).await {
                Ok(created) => return Ok(created),
                Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                    let existing = api
                        .get(&name)
                        .await
                        .map_err(|source| HistoryError::ReadExisting { name: name.clone(), source })?;
                    if data_of(&existing) == data_of(&clone) {
                        return Ok(existing);
                    }
                    debug!(%name, collision_count = *collision_count + 1, "controller revision hash collision");
                    *collision_count += 1;
                }
                Err(source) => return Err(HistoryError::Create { name, source }),
            }
        }
    }

    /// Gives `rev` the revision number `new_revision` (upstream's `UpdateControllerRevision`,
    /// re-reading and retrying on a conflict).
    pub async fn update_controller_revision(
        &self,
        rev: &ControllerRevision,
        new_revision: i64,
    ) -> Result<ControllerRevision, HistoryError> {
        if rev.revision == new_revision {
            return Ok(rev.clone());
        }
        let name = rev.name_any();
        let api = self.api(&rev.namespace().unwrap_or_default());
        let mut current = rev.clone();
        for attempt in 0..5 {
            current.revision = new_revision;
            match api.replace(&name, &PostParams::default(), &current).await {
                Ok(updated) => return Ok(updated),
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 4 => {
                    current =
                        api.get(&name).await.map_err(|source| HistoryError::Update { name: name.clone(), source })?;
                    if current.revision == new_revision {
                        return Ok(current);
                    }
                }
                Err(source) => return Err(HistoryError::Update { name, source }),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Deletes `rev` (upstream's `DeleteControllerRevision`); one already gone is no error.
    pub async fn delete_controller_revision(&self, rev: &ControllerRevision) -> Result<(), HistoryError> {
        let name = rev.name_any();
        match self.api(&rev.namespace().unwrap_or_default()).delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(HistoryError::Delete { name, source }),
        }
    }

    /// Puts `controller_ref` on an orphan revision (upstream's `AdoptControllerRevision`), if
    /// it is still the same object (uid precondition in the patch).
    pub async fn adopt_controller_revision(
        &self,
        controller_ref: &OwnerReference,
        rev: &ControllerRevision,
    ) -> Result<ControllerRevision, HistoryError> {
        let name = rev.name_any();
        if let Some(owner) = crate::replicaset::controller_of(&rev.metadata) {
            return Err(HistoryError::AlreadyOwned { name, owner: format!("{}/{}", owner.kind, owner.name) });
        }
        let patch = json!({"metadata": {"ownerReferences": [controller_ref], "uid": rev.metadata.uid}});
        self.api(&rev.namespace().unwrap_or_default())
            .patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(|source| HistoryError::Patch { name, source })
    }

    /// Removes the reference to `parent_uid` from `rev` (upstream's
    /// `ReleaseControllerRevision`). A revision gone or no longer owned is released already:
    /// `Ok(None)`.
    pub async fn release_controller_revision(
        &self,
        parent_uid: &str,
        rev: &ControllerRevision,
    ) -> Result<Option<ControllerRevision>, HistoryError> {
        let name = rev.name_any();
        let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": parent_uid}], "uid": rev.metadata.uid}});
        match self
            .api(&rev.namespace().unwrap_or_default())
            .patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => Ok(None),
            Err(source) => Err(HistoryError::Patch { name, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn rev(name: &str, revision: i64, created_s: i64, data: serde_json::Value) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::from_second(created_s).unwrap())),
                ..Default::default()
            },
            data: Some(RawExtension(data)),
            revision,
        }
    }

    #[test]
    fn fnv32_matches_the_reference_vectors() {
        // FNV-1 32-bit test vectors (Go's hash/fnv New32).
        assert_eq!(fnv32(b"", FNV32_OFFSET), 0x811c_9dc5);
        assert_eq!(fnv32(b"a", FNV32_OFFSET), 0x050c_5d7e);
        assert_eq!(fnv32(b"foobar", FNV32_OFFSET), 0x31f0_b262);
    }

    #[test]
    fn hashes_are_stable_and_depend_on_data_and_collision_count() {
        let data = json!({"spec": {"template": {"metadata": {"labels": {"app": "web"}}, "$patch": "replace"}}});
        let h = hash_controller_revision(&data, None);
        // Fixed forever: a changed hash renames every revision and restarts every pod.
        assert_eq!(h, hash_controller_revision(&data.clone(), None));
        assert_eq!(h, safe_encode(&fnv32(&serde_json::to_vec(&data).unwrap(), FNV32_OFFSET).to_string()));
        assert!(h.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
        assert_ne!(h, hash_controller_revision(&data, Some(0)));
        assert_ne!(hash_controller_revision(&data, Some(0)), hash_controller_revision(&data, Some(1)));
        assert_ne!(h, hash_controller_revision(&json!({"spec": {}}), None));
    }

    #[test]
    fn a_known_value_hashes_as_upstream() {
        // fnv32("a") = 84696446; each decimal digit goes through the safe alphabet ('8' is
        // byte 56, 56 % 27 = 2 -> 'd').
        assert_eq!(fnv32(b"a", FNV32_OFFSET), 84_696_446);
        assert_eq!(safe_encode("84696446"), "d8bfb88b");
        assert_eq!(hash_controller_revision(&json!({"a": 1}), None), "69966c9df7");
    }

    #[test]
    fn new_revisions_are_named_and_labelled_after_their_hash() {
        use k8s_openapi::api::apps::v1::StatefulSet;
        let parent = StatefulSet {
            metadata: ObjectMeta { name: Some("web".into()), namespace: Some("ns".into()), ..Default::default() },
            ..Default::default()
        };
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "web".into(),
            uid: "u1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let data = json!({"x": 1});
        let r = new_controller_revision(&parent, owner.clone(), &labels, data.clone(), 3, Some(2));
        let hash = hash_controller_revision(&data, Some(2));
        assert_eq!(r.metadata.name.as_deref(), Some(format!("web-{hash}").as_str()));
        assert_eq!(r.metadata.namespace.as_deref(), Some("ns"));
        let l = r.metadata.labels.unwrap();
        assert_eq!(l.get("app").map(String::as_str), Some("web"));
        assert_eq!(l.get(CONTROLLER_REVISION_HASH_LABEL), Some(&hash));
        assert_eq!(r.metadata.owner_references, Some(vec![owner]));
        assert_eq!(r.revision, 3);
    }

    #[test]
    fn long_prefixes_are_cut() {
        let name = controller_revision_name(&"a".repeat(300), "hash");
        assert_eq!(name.len(), MAX_PREFIX_LEN + 5);
    }

    #[test]
    fn revisions_sort_by_number_then_age_then_name() {
        let mut revs = vec![
            rev("c", 2, 10, json!(1)),
            rev("b", 1, 20, json!(2)),
            rev("a", 1, 20, json!(3)),
            rev("d", 1, 5, json!(4)),
        ];
        sort_controller_revisions(&mut revs);
        let names: Vec<_> = revs.iter().map(|r| r.name_any()).collect();
        assert_eq!(names, ["d", "a", "b", "c"]);
    }

    #[test]
    fn next_revision_follows_the_highest() {
        assert_eq!(next_revision(&[]), 1);
        assert_eq!(next_revision(&[rev("a", 4, 0, json!(1)), rev("b", 2, 0, json!(2))]), 5);
    }

    #[test]
    fn equal_revisions_hold_equal_data() {
        let a = rev("a", 1, 0, json!({"k": 1}));
        let b = rev("b", 2, 0, json!({"k": 1}));
        let c = rev("c", 3, 0, json!({"k": 2}));
        assert!(equal_revision(&a, &b));
        assert!(!equal_revision(&a, &c));
        let all = [a.clone(), b, c];
        let found: Vec<_> = find_equal_revisions(&all, &a).iter().map(|r| r.name_any()).collect();
        assert_eq!(found, ["a", "b"]);
    }
}
