//! A container's `ContainerConfig` (upstream's `generateContainerConfig`,
//! `generateLinuxContainerConfig` and `determineEffectiveSecurityContext`).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};
use tug_runtime::cri::{
    Capabilities, ContainerConfig, ContainerMetadata, Labels, LinuxResources, LinuxSecurityContext, Mount,
    SeccompProfile,
};

use super::{expand_env, labels};
use crate::qos::{self, QosClass};

/// Why a container's config cannot be generated; the message is what the pod's waiting state
/// shows under `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerConfigError {
    #[error("container's runAsUser breaks non-root policy (pod: \"{pod}\", container: {container})")]
    RunAsUserRoot { pod: String, container: String },
    #[error(
        "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: \"{pod}\", container: {container})"
    )]
    NonNumericImageUser { user: String, pod: String, container: String },
    #[error("container has runAsNonRoot and image will run as root (pod: \"{pod}\", container: {container})")]
    ImageRunsAsRoot { pod: String, container: String },
}

/// What goes into one container's config besides its spec.
#[derive(Debug)]
pub struct ContainerInputs<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub qos: QosClass,
    /// The node's memory in bytes (for burstable OOM score adjustments).
    pub memory_capacity: i64,
    pub restart_count: u32,
    /// The image to run (the reference or image ID already present).
    pub image: String,
    /// The image's configured `User`, if it sets one (for the `runAsNonRoot` check).
    pub image_user: Option<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
}

/// Upstream's pod name format in messages: `name_namespace(uid)`.
pub fn format_pod(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// The hash kept in the container's annotations: a running container whose hash differs from
/// the spec's (the image was changed) is restarted, as upstream does. Like upstream since 1.31,
/// only the fields a pod update may change and that need a new container are hashed.
pub fn container_hash(c: &Container) -> String {
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in c.name.bytes().chain([0]).chain(c.image.as_deref().unwrap_or_default().bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:x}")
}

/// The container's resources (upstream's `generateLinuxContainerResources`).
pub fn linux_resources(c: &Container, class: QosClass, memory_capacity: i64) -> LinuxResources {
    let quota = qos::cpu_limit_millis(c).filter(|m| *m > 0).map(qos::milli_cpu_to_quota);
    LinuxResources {
        cpu_period: quota.map(|_| qos::QUOTA_PERIOD),
        cpu_quota: quota,
        cpu_shares: Some(qos::milli_cpu_to_shares(qos::cpu_request_millis(c))),
        memory_limit_in_bytes: qos::memory_limit(c).filter(|m| *m > 0),
        oom_score_adj: Some(qos::oom_score_adj(class, c, memory_capacity)),
        pids_limit: None,
    }
}

/// The pod's security context overlaid with the container's (upstream's
/// `DetermineEffectiveSecurityContext`).
fn effective(pod_sc: Option<&PodSecurityContext>, sc: Option<&SecurityContext>) -> SecurityContext {
    let mut out = sc.cloned().unwrap_or_default();
    if let Some(p) = pod_sc {
        out.run_as_user = out.run_as_user.or(p.run_as_user);
        out.run_as_group = out.run_as_group.or(p.run_as_group);
        out.run_as_non_root = out.run_as_non_root.or(p.run_as_non_root);
        out.seccomp_profile = out.seccomp_profile.or_else(|| p.seccomp_profile.clone());
        out.se_linux_options = out.se_linux_options.or_else(|| p.se_linux_options.clone());
    }
    out
}

/// The container's security settings, checking `runAsNonRoot` (upstream's `verifyRunAsNonRoot`).
///
/// Without a `runAsUser`, the image's `User` decides: none (root), or a uid of 0, runs as root;
/// a user name cannot be verified without reading the image's passwd file, and upstream refuses
/// it too.
pub fn security_context(
    pod: &Pod,
    c: &Container,
    image_user: Option<&str>,
) -> Result<LinuxSecurityContext, ContainerConfigError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = effective(pod_sc, c.security_context.as_ref());
    if sc.run_as_non_root == Some(true) {
        let (pod_name, container) = (format_pod(pod), c.name.clone());
        match sc.run_as_user {
            Some(0) => return Err(ContainerConfigError::RunAsUserRoot { pod: pod_name, container }),
            Some(_) => {}
            None => {
                // `uid`, `uid:gid`, `name` or `name:group`: the part before the colon is the user.
                let user = image_user.map(|u| u.split(':').next().unwrap_or_default()).unwrap_or_default();
                match user.parse::<u32>() {
                    Ok(0) => return Err(ContainerConfigError::ImageRunsAsRoot { pod: pod_name, container }),
                    Ok(_) => {}
                    Err(_) if user.is_empty() => {
                        return Err(ContainerConfigError::ImageRunsAsRoot { pod: pod_name, container });
                    }
                    Err(_) => {
                        return Err(ContainerConfigError::NonNumericImageUser {
                            user: user.to_owned(),
                            pod: pod_name,
                            container,
                        });
                    }
                }
            }
        }
    }
    let mut supplemental_groups: Vec<u32> = Vec::new();
    if let Some(p) = pod_sc {
        if let Some(fs_group) = p.fs_group.and_then(|g| u32::try_from(g).ok()) {
            supplemental_groups.push(fs_group);
        }
        for g in p.supplemental_groups.iter().flatten() {
            if let Ok(g) = u32::try_from(*g)
                && !supplemental_groups.contains(&g)
            {
                supplemental_groups.push(g);
            }
        }
    }
    let seccomp = match sc.seccomp_profile.as_ref() {
        Some(p) if p.type_ == "RuntimeDefault" => SeccompProfile::RuntimeDefault,
        Some(p) if p.type_ == "Localhost" => {
            SeccompProfile::Localhost(PathBuf::from(p.localhost_profile.clone().unwrap_or_default()))
        }
        _ => SeccompProfile::Unconfined,
    };
    let unmasked = sc.proc_mount.as_deref() == Some("Unmasked");
    let caps = sc.capabilities.clone().unwrap_or_default();
    Ok(LinuxSecurityContext {
        capabilities: Capabilities { add: caps.add.unwrap_or_default(), drop: caps.drop.unwrap_or_default() },
        privileged: sc.privileged.unwrap_or(false),
        namespace_options: super::sandbox::namespace_options(pod),
        run_as_user: sc.run_as_user.and_then(|u| u32::try_from(u).ok()),
        run_as_username: None,
        run_as_group: sc.run_as_group.and_then(|g| u32::try_from(g).ok()),
        supplemental_groups,
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        // Upstream's AddNoNewPrivileges: only an explicit `allowPrivilegeEscalation: false`.
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        seccomp,
        masked_paths: unmasked.then(Vec::new),
        readonly_paths: unmasked.then(Vec::new),
    })
}

/// The full container config.
pub fn container_config(inputs: &ContainerInputs<'_>) -> Result<ContainerConfig, ContainerConfigError> {
    let ContainerInputs { pod, container: c, qos: class, memory_capacity, restart_count, .. } = *inputs;
    let security_context = security_context(pod, c, inputs.image_user.as_deref())?;
    let env = &inputs.env;
    let expand_all = |l: &Option<Vec<String>>| l.iter().flatten().map(|s| expand_env(s, env)).collect::<Vec<_>>();
    let mut container_labels = Labels::new();
    container_labels.insert(labels::CONTAINER_NAME.into(), c.name.clone());
    container_labels.insert(labels::POD_NAME.into(), pod.metadata.name.clone().unwrap_or_default());
    container_labels.insert(labels::POD_NAMESPACE.into(), pod.metadata.namespace.clone().unwrap_or_default());
    container_labels.insert(labels::POD_UID.into(), pod.metadata.uid.clone().unwrap_or_default());
    let mut annotations = Labels::new();
    annotations.insert(labels::CONTAINER_HASH.into(), container_hash(c));
    annotations.insert(labels::RESTART_COUNT.into(), restart_count.to_string());
    annotations.insert(
        labels::TERMINATION_MESSAGE_PATH.into(),
        c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into()),
    );
    annotations.insert(
        labels::TERMINATION_MESSAGE_POLICY.into(),
        c.termination_message_policy.clone().unwrap_or_else(|| "File".into()),
    );
    if let Some(grace) = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds) {
        annotations.insert(labels::POD_TERMINATION_GRACE_PERIOD.into(), grace.to_string());
    }
    Ok(ContainerConfig {
        metadata: ContainerMetadata { name: c.name.clone(), attempt: restart_count },
        image: inputs.image.clone(),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        envs: inputs.env.clone(),
        mounts: inputs.mounts.clone(),
        labels: container_labels,
        annotations,
        log_path: PathBuf::from(&c.name).join(format!("{restart_count}.log")),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        resources: linux_resources(c, class, memory_capacity),
        security_context,
        stop_signal: c.lifecycle.as_ref().and_then(|l| l.stop_signal.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(c: Container, pod_sc: Option<PodSecurityContext>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            spec: Some(PodSpec { containers: vec![c], security_context: pod_sc, ..Default::default() }),
            ..Default::default()
        }
    }

    fn inputs<'a>(pod: &'a Pod, env: Vec<(String, String)>) -> ContainerInputs<'a> {
        ContainerInputs {
            pod,
            container: &pod.spec.as_ref().unwrap().containers[0],
            qos: QosClass::Burstable,
            memory_capacity: 4 << 30,
            restart_count: 3,
            image: "busybox:latest".into(),
            image_user: None,
            env,
            mounts: Vec::new(),
        }
    }

    #[test]
    fn command_and_args_expand_variables() {
        let c = Container {
            name: "c".into(),
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec!["echo $(GREETING) $(MISSING) $$(GREETING)".into()]),
            ..Default::default()
        };
        let p = pod(c, None);
        let cfg = container_config(&inputs(&p, vec![("GREETING".into(), "hi".into())])).unwrap();
        assert_eq!(cfg.command, vec!["sh", "-c"]);
        assert_eq!(cfg.args, vec!["echo hi $(MISSING) $(GREETING)"]);
        assert_eq!(cfg.log_path, PathBuf::from("c/3.log"));
        assert_eq!(cfg.metadata.attempt, 3);
        assert_eq!(cfg.labels[labels::CONTAINER_NAME], "c");
        assert_eq!(cfg.annotations[labels::RESTART_COUNT], "3");
        assert_eq!(cfg.annotations[labels::TERMINATION_MESSAGE_PATH], "/dev/termination-log");
    }

    #[test]
    fn resources_translate_requests_and_limits() {
        let list = |l: &[(&str, &str)]| Some(l.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect());
        let c = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: list(&[("cpu", "250m"), ("memory", "1Gi")]),
                limits: list(&[("cpu", "500m"), ("memory", "2Gi")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = linux_resources(&c, QosClass::Burstable, 4 << 30);
        assert_eq!(r.cpu_shares, Some(256));
        assert_eq!(r.cpu_quota, Some(50_000));
        assert_eq!(r.cpu_period, Some(100_000));
        assert_eq!(r.memory_limit_in_bytes, Some(2 << 30));
        assert_eq!(r.oom_score_adj, Some(750));
        let none = linux_resources(&Container::default(), QosClass::BestEffort, 4 << 30);
        assert_eq!(none.cpu_shares, Some(2));
        assert_eq!(none.cpu_quota, None);
        assert_eq!(none.memory_limit_in_bytes, None);
        assert_eq!(none.oom_score_adj, Some(1000));
    }

    #[test]
    fn security_context_merges_pod_and_container() {
        let c = Container {
            name: "c".into(),
            security_context: Some(SecurityContext {
                run_as_user: Some(1000),
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                    add: Some(vec!["NET_ADMIN".into()]),
                    drop: Some(vec!["ALL".into()]),
                }),
                proc_mount: Some("Unmasked".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod_sc = PodSecurityContext {
            run_as_user: Some(5),
            run_as_group: Some(3000),
            fs_group: Some(2000),
            supplemental_groups: Some(vec![4000, 2000]),
            run_as_non_root: Some(true),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        };
        let p = pod(c, Some(pod_sc));
        let sc = security_context(&p, &p.spec.as_ref().unwrap().containers[0], None).unwrap();
        assert_eq!(sc.run_as_user, Some(1000));
        assert_eq!(sc.run_as_group, Some(3000));
        assert_eq!(sc.supplemental_groups, vec![2000, 4000]);
        assert!(sc.no_new_privs);
        assert!(sc.readonly_rootfs);
        assert_eq!(sc.capabilities.add, vec!["NET_ADMIN"]);
        assert_eq!(sc.capabilities.drop, vec!["ALL"]);
        assert_eq!(sc.seccomp, SeccompProfile::RuntimeDefault);
        assert_eq!(sc.masked_paths, Some(vec![]));
    }

    #[test]
    fn run_as_non_root_refuses_root() {
        let c = Container { name: "c".into(), ..Default::default() };
        let p = pod(c, Some(PodSecurityContext { run_as_non_root: Some(true), ..Default::default() }));
        let err = security_context(&p, &p.spec.as_ref().unwrap().containers[0], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container has runAsNonRoot and image will run as root (pod: \"p_ns(u)\", container: c)"
        );
        let c = Container {
            name: "c".into(),
            security_context: Some(SecurityContext { run_as_user: Some(0), ..Default::default() }),
            ..Default::default()
        };
        let p = pod(c, Some(PodSecurityContext { run_as_non_root: Some(true), ..Default::default() }));
        assert!(matches!(
            security_context(&p, &p.spec.as_ref().unwrap().containers[0], None),
            Err(ContainerConfigError::RunAsUserRoot { .. })
        ));
        // Without runAsNonRoot nothing is checked, and allowPrivilegeEscalation unset keeps
        // no_new_privs off, as upstream.
        let c = Container { name: "c".into(), ..Default::default() };
        let p = pod(c, None);
        let sc = security_context(&p, &p.spec.as_ref().unwrap().containers[0], None).unwrap();
        assert!(!sc.no_new_privs);
        assert_eq!(sc.seccomp, SeccompProfile::Unconfined);
    }

    #[test]
    fn hash_changes_with_image() {
        let a = Container { name: "c".into(), image: Some("a:1".into()), ..Default::default() };
        let b = Container { name: "c".into(), image: Some("a:2".into()), ..Default::default() };
        assert_ne!(container_hash(&a), container_hash(&b));
        assert_eq!(container_hash(&a), container_hash(&a.clone()));
    }

    #[test]
    fn run_as_non_root_follows_the_image_user_when_the_pod_names_no_uid() {
        let c = Container { name: "c".into(), ..Default::default() };
        let p = pod(c, Some(PodSecurityContext { run_as_non_root: Some(true), ..Default::default() }));
        let container = &p.spec.as_ref().unwrap().containers[0];
        assert!(security_context(&p, container, Some("1000")).is_ok());
        assert!(security_context(&p, container, Some("1000:1000")).is_ok());
        assert!(matches!(
            security_context(&p, container, Some("0:0")),
            Err(ContainerConfigError::ImageRunsAsRoot { .. })
        ));
        assert!(matches!(security_context(&p, container, None), Err(ContainerConfigError::ImageRunsAsRoot { .. })));
        assert_eq!(
            security_context(&p, container, Some("nobody")).unwrap_err().to_string(),
            "container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root \
             (pod: \"p_ns(u)\", container: c)"
        );
    }
}
