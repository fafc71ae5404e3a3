//! The container shim: the `tug` binary re-executed as `tug shim <mode>`, one small
//! single-threaded process per container (and per pod sandbox) that holds the container's
//! stdio, logs and exit status, so that containers outlive the node agent and libcontainer
//! never runs inside the agent's multi-threaded tokio process (design rule 6).
//!
//! - `tug shim run` ([`run`]): creates and starts a container from an OCI bundle with youki's
//!   libcontainer, daemonizes, writes its output to a CRI-format log ([`log_writer`]), serves
//!   the attach socket ([`attach`]), and records the exit in the exit file.
//! - `tug shim exec` ([`exec`]): runs a process in a running container and exits with its code.
//! - `tug shim sandbox` ([`sandbox`]): holds a pod's namespaces, as the pause container does.
//!
//! [`client`] is the other side, used by the built-in runtime from async code; the command
//! lines and wire formats between the two live together in [`protocol`].

pub mod attach;
mod cgroup;
pub mod client;
mod daemon;
mod exec;
mod executor;
pub mod log_writer;
pub mod protocol;
mod run;
mod sandbox;
mod sys;

pub use client::{
    ExecArgs, ExecProcess, ExitRecord, ResizeWriter, RunArgs, SandboxArgs, ShimBinary, ShimError, Started, attach,
    read_exit_file, run_container, run_sandbox, spawn_exec,
};

use std::process::ExitCode;

use crate::error_chain;

/// The entry point of `tug shim ...` (argv[1] == "shim", argv[2] the mode). Runs without a
/// tokio runtime and must be called before any thread is started.
pub fn main() -> ExitCode {
    let args = std::env::args_os().skip(2);
    match protocol::parse(args) {
        Err(e) => {
            eprintln!("tug shim: {e}");
            ExitCode::from(2)
        }
        Ok(protocol::Mode::Run(args)) => run::main(args),
        Ok(protocol::Mode::Exec(args)) => exec::main(args),
        Ok(protocol::Mode::Sandbox(args)) => sandbox::main(args),
    }
}
