//! The workload executor handed to libcontainer: its default one, after restoring the default
//! SIGPIPE action that the shim (a Rust program) ignores and the container must not inherit.

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use super::sys;

#[derive(Clone)]
pub struct ShimExecutor {
    /// Kill the process when the shim dies (`tug shim exec`: an exec whose shim the runtime
    /// killed, say at a probe's timeout, must not linger in the container). A container's own
    /// process outlives its shim instead.
    pub die_with_shim: bool,
}

impl Executor for ShimExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        sys::reset_sigpipe();
        if self.die_with_shim {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(|e| ExecutorError::Other(format!("set the parent death signal: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
