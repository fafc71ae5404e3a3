//! The revision rules every backend applies the same way, kept in one place so the backends
//! cannot drift apart on them.

use crate::{KeyValue, Revision, StoreError};

/// The revision a read asking for `requested` happens at, given the store's current and
/// compacted revisions. `None` and `Some(0)` mean the latest, as in etcd.
pub(crate) fn read_revision(
    requested: Option<Revision>,
    current: Revision,
    compacted: Revision,
) -> Result<Revision, StoreError> {
    match requested {
        None | Some(0) => Ok(current),
        Some(r) if r > current => Err(StoreError::FutureRevision { requested: r, current }),
        Some(r) if r < compacted => Err(StoreError::Compacted { requested: r, compacted }),
        Some(r) => Ok(r),
    }
}

/// Checks that a watch can start after `after`: every change after it must still be known.
pub(crate) fn watch_start(after: Revision, compacted: Revision) -> Result<(), StoreError> {
    if after != 0 && after < compacted {
        return Err(StoreError::Compacted { requested: after, compacted });
    }
    Ok(())
}

/// Checks a compaction to `target`; `Ok(false)` means it is already done.
pub(crate) fn compaction_needed(target: Revision, current: Revision, compacted: Revision) -> Result<bool, StoreError> {
    if target > current {
        return Err(StoreError::FutureRevision { requested: target, current });
    }
    if target < compacted {
        return Err(StoreError::Compacted { requested: target, compacted });
    }
    Ok(target > compacted)
}

/// Checks a guarded write: `expected`, if given, must be the key's current `mod_revision`.
pub(crate) fn check_expected(current: KeyValue, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
    match expected {
        Some(expected) if expected != current.mod_revision => {
            Err(StoreError::Conflict { key: current.key.clone(), expected, current: Box::new(current) })
        }
        _ => Ok(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_revision_zero_means_latest() {
        assert_eq!(read_revision(Some(0), 9, 3).unwrap(), 9);
        assert_eq!(read_revision(None, 9, 3).unwrap(), 9);
    }

    #[test]
    fn read_revision_accepts_the_compacted_revision_itself() {
        assert_eq!(read_revision(Some(3), 9, 3).unwrap(), 3);
        assert!(matches!(read_revision(Some(2), 9, 3), Err(StoreError::Compacted { .. })));
        assert!(matches!(read_revision(Some(10), 9, 3), Err(StoreError::FutureRevision { .. })));
    }

    #[test]
    fn watch_may_start_at_the_compacted_revision_or_from_now() {
        assert!(watch_start(3, 3).is_ok());
        assert!(watch_start(0, 3).is_ok());
        assert!(matches!(watch_start(2, 3), Err(StoreError::Compacted { .. })));
    }

    #[test]
    fn repeated_compaction_is_a_no_op_and_older_fails() {
        assert!(!compaction_needed(3, 9, 3).unwrap());
        assert!(compaction_needed(4, 9, 3).unwrap());
        assert!(matches!(compaction_needed(2, 9, 3), Err(StoreError::Compacted { .. })));
        assert!(matches!(compaction_needed(10, 9, 3), Err(StoreError::FutureRevision { .. })));
    }
}
