//! What the backends' tests share: service ports to render, and running as root in a network
//! namespace of the test's own, so that no rule ever lands in the host's namespace.
// unshare(CLONE_NEWNET) is an unsafe call in rustix 1 (see `in_new_netns`).
#![allow(unsafe_code)]

use crate::serviceport::{Endpoint, Protocol, ServicePort};

pub fn ep(ip: &str, port: u16) -> Endpoint {
    Endpoint { ip: ip.parse().unwrap(), port }
}

/// A ClusterIP service port of `default/<name>`; endpoints in 10.42.0.0/24 are on this node.
pub fn port(
    name: &str,
    port_name: &str,
    protocol: Protocol,
    cluster_ip: &str,
    number: u16,
    eps: Vec<Endpoint>,
) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        name: name.into(),
        port_name: port_name.into(),
        protocol,
        cluster_ip: cluster_ip.parse().unwrap(),
        port: number,
        node_port: None,
        external_ips: Vec::new(),
        affinity_timeout_seconds: None,
        local_endpoints: eps.iter().copied().filter(|e| e.ip.octets()[2] == 0).collect(),
        endpoints: eps,
        internal_local: false,
        external_local: false,
        health_check_node_port: None,
    }
}

pub fn has(lines: &[String], expected: &str) {
    assert!(lines.iter().any(|l| l == expected), "missing {expected:?} in:\n{}", lines.join("\n"));
}

/// Root tests skip outside CI when not root, and fail under `CI=true`.
pub fn require_root(test: &str, tool: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs root for {tool} (CI=true)");
    eprintln!("skipping {test}: needs root for {tool}");
    false
}

/// Runs `body` on a thread of its own in a new, empty network namespace (gone when the thread
/// ends), with a current-thread tokio runtime: the tools it spawns from that thread inherit
/// the namespace.
pub fn in_new_netns<T: Send>(body: impl AsyncFnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: only CLONE_NEWNET is unshared, which changes this thread's network
                // namespace and nothing another thread can observe.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                    .expect("unshare(CLONE_NEWNET)");
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(body())
            })
            .join()
            .unwrap()
    })
}
