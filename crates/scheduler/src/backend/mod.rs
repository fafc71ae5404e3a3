//! The scheduler's backend (upstream's `pkg/scheduler/backend`): the node [`cache`] the
//! scheduling cycles take their snapshots from.

pub mod cache;
