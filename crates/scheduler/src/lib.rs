//! The scheduler: picks a node for every pending pod whose `spec.schedulerName` names one of
//! its profiles (`default-scheduler` unless a [`config`] file says otherwise) and binds it there.
//!
//! It mirrors upstream's `pkg/scheduler`: a plugin [`framework`] with one trait per extension
//! point, the default [`plugins`] with upstream's weights, a scheduling [`queue`] with active,
//! backoff and unschedulable pools, and the [`scheduler`] loop fed by informers. It reads and
//! writes the cluster only through the Kubernetes API with a kube-rs client (design rule 1); it
//! never touches the store or the API server's internals.

pub mod backend;
pub mod cache;
pub mod config;
pub mod framework;
pub mod plugins;
pub mod queue;
pub mod scheduler;

pub use config::SchedulerConfig;
pub use scheduler::{SCHEDULER_NAME, run, run_with, run_with_config};
