//! Netlink work inside another network namespace.
//!
//! A netlink socket talks to the namespace it was created in, and `setns` moves only the
//! calling thread. So work for a pod's namespace runs on a thread of its own that enters the
//! namespace, opens its socket there and drives it with a small current-thread runtime; the
//! agent's tokio workers never change namespace.

use std::future::Future;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::NetworkError;

/// Runs `work` with a netlink handle whose socket lives in the network namespace at `netns`
/// (a pinned namespace file such as `/proc/<pid>/ns/net` or a bind mount of it).
pub async fn run_in<F, Fut, T>(netns: &Path, work: F) -> Result<T, NetworkError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let _ = tx.send(enter_and_run(path, work));
        })
        .map_err(|source| NetworkError::Netns { path: netns.to_path_buf(), source })?;
    rx.await.map_err(|_| NetworkError::Netns {
        path: netns.to_path_buf(),
        source: std::io::Error::other("the namespace thread ended without an answer"),
    })?
}

fn enter_and_run<F, Fut, T>(path: PathBuf, work: F) -> Result<T, NetworkError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: Future<Output = T>,
{
    let failed = |source: std::io::Error| NetworkError::Netns { path: path.clone(), source };
    let file = std::fs::File::open(&path).map_err(failed)?;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|e| failed(e.into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(failed)?;
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(failed)?;
        let driver = tokio::spawn(connection);
        let result = work(handle).await;
        driver.abort();
        Ok(result)
    })
}
