//! Builders shared by the unit tests of the pod lifecycle modules.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tug_runtime::cri::{
    ContainerMetadata, ContainerState, ContainerStatus, NamespaceOptions, PodSandboxMetadata, PodSandboxState,
    PodSandboxStatus,
};

use crate::config::Config;

pub(crate) fn config() -> Config {
    Config {
        node_name: "node1".into(),
        node_ip: "10.0.0.5".parse().unwrap(),
        hostname: "node1".into(),
        ..Config::for_tests(std::path::Path::new("/var/lib/tug/agent"))
    }
}

pub(crate) fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// A pod named `p` in `ns` with uid `u`, one busybox container per name.
pub(crate) fn pod(restart_policy: &str, containers: &[&str], init: &[&str]) -> Pod {
    let c = |n: &&str| Container { name: n.to_string(), image: Some("busybox:1".into()), ..Default::default() };
    Pod {
        metadata: ObjectMeta {
            name: Some("p".into()),
            namespace: Some("ns".into()),
            uid: Some("u".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some(restart_policy.into()),
            containers: containers.iter().map(c).collect(),
            init_containers: (!init.is_empty()).then(|| init.iter().map(c).collect()),
            node_name: Some("node1".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn sandbox(id: &str, attempt: u32, state: PodSandboxState) -> PodSandboxStatus {
    PodSandboxStatus {
        id: id.into(),
        metadata: PodSandboxMetadata { name: "p".into(), namespace: "ns".into(), uid: "u".into(), attempt },
        state,
        created_at: at(0),
        ips: vec!["10.42.0.7".into()],
        namespace_options: NamespaceOptions::default(),
        labels: Default::default(),
        annotations: Default::default(),
    }
}

pub(crate) fn container_status(
    id: &str,
    name: &str,
    attempt: u32,
    state: ContainerState,
    exit_code: Option<i32>,
) -> ContainerStatus {
    let done = state == ContainerState::Exited;
    ContainerStatus {
        id: id.into(),
        metadata: ContainerMetadata { name: name.into(), attempt },
        state,
        created_at: at(10 + u64::from(attempt) * 100),
        started_at: Some(at(11 + u64::from(attempt) * 100)),
        finished_at: done.then(|| at(20 + u64::from(attempt) * 100)),
        exit_code,
        image: "busybox:1".into(),
        image_ref: "sha256:abc".into(),
        reason: None,
        message: None,
        labels: Default::default(),
        annotations: Default::default(),
        log_path: Default::default(),
        pid: None,
    }
}
