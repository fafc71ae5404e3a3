//! The pod sync against an in-memory runtime and image service, with a stand-in API server on
//! loopback that accepts events and answers lists empty.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tug_runtime::cri::{
    Container as RuntimeContainer, ContainerConfig, ContainerFilter, ContainerState, ContainerStatus, ExecRequest,
    ExecSyncResult, PodSandbox, PodSandboxConfig, PodSandboxState, PodSandboxStatus, RuntimeError, RuntimeService,
    StreamSession,
};
use tug_runtime::image::Credentials;
use tug_runtime::{Image, ImageService, ImageServiceError};

use super::*;
use crate::kuberuntime::tests_support::{config, pod};

#[derive(Default)]
struct Fake {
    sandboxes: Vec<(PodSandboxStatus, PodSandboxConfig)>,
    containers: Vec<(ContainerStatus, String, ContainerConfig)>,
    stops: Vec<(String, Duration)>,
    next: u32,
}

#[derive(Default, Clone)]
struct FakeRuntime(Arc<Mutex<Fake>>);

impl FakeRuntime {
    fn exit(&self, name: &str, code: i32) {
        let mut f = self.0.lock().unwrap();
        for (c, _, _) in f.containers.iter_mut().filter(|(c, _, _)| c.metadata.name == name) {
            if c.state == ContainerState::Running {
                c.state = ContainerState::Exited;
                c.exit_code = Some(code);
                c.finished_at = Some(SystemTime::now());
            }
        }
    }
    fn created(&self) -> Vec<ContainerConfig> {
        self.0.lock().unwrap().containers.iter().map(|(_, _, cfg)| cfg.clone()).collect()
    }
}

#[async_trait::async_trait]
impl RuntimeService for FakeRuntime {
    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError> {
        let mut f = self.0.lock().unwrap();
        f.next += 1;
        let id = format!("sb{}", f.next);
        let status = PodSandboxStatus {
            id: id.clone(),
            metadata: config.metadata.clone(),
            state: PodSandboxState::Ready,
            created_at: SystemTime::now(),
            ips: vec!["10.42.0.9".into()],
            namespace_options: config.namespace_options,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
        };
        f.sandboxes.push((status, config.clone()));
        Ok(id)
    }
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut f = self.0.lock().unwrap();
        for (s, _) in f.sandboxes.iter_mut().filter(|(s, _)| s.id == id) {
            s.state = PodSandboxState::NotReady;
        }
        Ok(())
    }
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut f = self.0.lock().unwrap();
        f.sandboxes.retain(|(s, _)| s.id != id);
        f.containers.retain(|(_, sb, _)| sb != id);
        Ok(())
    }
    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        let f = self.0.lock().unwrap();
        f.sandboxes
            .iter()
            .find(|(s, _)| s.id == id)
            .map(|(s, _)| s.clone())
            .ok_or(RuntimeError::SandboxNotFound(id.into()))
    }
    async fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, RuntimeError> {
        let f = self.0.lock().unwrap();
        Ok(f.sandboxes
            .iter()
            .map(|(s, _)| PodSandbox {
                id: s.id.clone(),
                metadata: s.metadata.clone(),
                state: s.state,
                created_at: s.created_at,
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
            })
            .collect())
    }
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        _sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        let mut f = self.0.lock().unwrap();
        f.next += 1;
        let id = format!("c{}", f.next);
        let status = ContainerStatus {
            id: id.clone(),
            metadata: config.metadata.clone(),
            state: ContainerState::Created,
            created_at: SystemTime::now() + Duration::from_millis(u64::from(f.next)),
            started_at: None,
            finished_at: None,
            exit_code: None,
            image: config.image.clone(),
            image_ref: "sha256:cfg".into(),
            reason: None,
            message: None,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            log_path: config.log_path.clone(),
            pid: None,
        };
        f.containers.push((status, sandbox_id.into(), config.clone()));
        Ok(id)
    }
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut f = self.0.lock().unwrap();
        let (c, _, _) =
            f.containers.iter_mut().find(|(c, _, _)| c.id == id).ok_or(RuntimeError::ContainerNotFound(id.into()))?;
        c.state = ContainerState::Running;
        c.started_at = Some(SystemTime::now());
        Ok(())
    }
    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let mut f = self.0.lock().unwrap();
        f.stops.push((id.into(), timeout));
        for (c, _, _) in f.containers.iter_mut().filter(|(c, _, _)| c.id == id && c.state == ContainerState::Running) {
            c.state = ContainerState::Exited;
            c.exit_code = Some(137);
            c.finished_at = Some(SystemTime::now());
        }
        Ok(())
    }
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.0.lock().unwrap().containers.retain(|(c, _, _)| c.id != id);
        Ok(())
    }
    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<RuntimeContainer>, RuntimeError> {
        let f = self.0.lock().unwrap();
        Ok(f.containers
            .iter()
            .filter(|(_, sb, _)| filter.pod_sandbox_id.as_ref().is_none_or(|want| want == sb))
            .map(|(c, sb, _)| RuntimeContainer {
                id: c.id.clone(),
                pod_sandbox_id: sb.clone(),
                metadata: c.metadata.clone(),
                image: c.image.clone(),
                image_ref: c.image_ref.clone(),
                state: c.state,
                created_at: c.created_at,
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
            })
            .collect())
    }
    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let f = self.0.lock().unwrap();
        f.containers
            .iter()
            .find(|(c, _, _)| c.id == id)
            .map(|(c, _, _)| c.clone())
            .ok_or(RuntimeError::ContainerNotFound(id.into()))
    }
    async fn exec_sync(&self, _: &str, _: &[String], _: Duration) -> Result<ExecSyncResult, RuntimeError> {
        Err(RuntimeError::Unavailable("not in the fake".into()))
    }
    async fn exec(&self, _: &str, _: &ExecRequest) -> Result<StreamSession, RuntimeError> {
        Err(RuntimeError::Unavailable("not in the fake".into()))
    }
    async fn attach(&self, _: &str, _: bool, _: bool) -> Result<StreamSession, RuntimeError> {
        Err(RuntimeError::Unavailable("not in the fake".into()))
    }
    async fn port_forward(&self, _: &str, _: u16) -> Result<tokio::net::TcpStream, RuntimeError> {
        Err(RuntimeError::Unavailable("not in the fake".into()))
    }
}

/// Images present from the start; pulls of anything else succeed and are counted.
#[derive(Default)]
struct FakeImages {
    present: Mutex<Vec<String>>,
    pulls: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl ImageService for FakeImages {
    async fn pull_image(&self, image: &str, _: &[Credentials]) -> Result<Image, ImageServiceError> {
        self.pulls.lock().unwrap().push(image.into());
        self.present.lock().unwrap().push(image.into());
        Ok(Image { id: "sha256:cfg".into(), repo_tags: vec![image.into()], repo_digests: vec![], size: 1, user: None })
    }
    async fn list_images(&self) -> Result<Vec<Image>, ImageServiceError> {
        Ok(Vec::new())
    }
    async fn image_status(&self, image: &str) -> Result<Option<Image>, ImageServiceError> {
        let found = self.present.lock().unwrap().iter().any(|i| i == image) || image == "sha256:cfg";
        Ok(found.then(|| Image {
            id: "sha256:cfg".into(),
            repo_tags: vec![],
            repo_digests: vec!["docker.io/library/busybox@sha256:man".into()],
            size: 1,
            user: None,
        }))
    }
    async fn remove_image(&self, _: &str) -> Result<(), ImageServiceError> {
        Ok(())
    }
}

/// A stand-in API server: writes are echoed, lists are empty, other reads are 404.
async fn api_server() -> kube::Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let method = req.method().clone();
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let (code, out) = match method.as_str() {
                        "POST" => (201, body),
                        "PATCH" => (200, body),
                        "GET" if path.ends_with("/services") => {
                            (200, Bytes::from(r#"{"apiVersion":"v1","kind":"ServiceList","metadata":{},"items":[]}"#))
                        }
                        _ => (
                            404,
                            Bytes::from(
                                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#,
                            ),
                        ),
                    };
                    let resp = Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Full::new(out));
                    Ok::<_, Infallible>(resp.unwrap())
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

/// The manager, and the agent directory it writes pod directories into (removed when dropped).
async fn manager(runtime: FakeRuntime, images: Arc<FakeImages>) -> (KubeRuntimeManager, tempfile::TempDir) {
    let client = api_server().await;
    let agent_dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.agent_dir = agent_dir.path().to_path_buf();
    let recorder = Arc::new(EventRecorder::new(client.clone(), "node1"));
    (KubeRuntimeManager::new(client, Arc::new(cfg), Arc::new(runtime), images, recorder), agent_dir)
}

fn present(image: &str) -> Arc<FakeImages> {
    let images = FakeImages::default();
    images.present.lock().unwrap().push(image.into());
    Arc::new(images)
}

#[tokio::test]
async fn a_new_pod_gets_a_sandbox_and_a_running_container_with_upstream_labels() {
    let runtime = FakeRuntime::default();
    let (m, _agent_dir) = manager(runtime.clone(), present("busybox:1")).await;
    let p = pod("Always", &["a"], &[]);
    let mut reasons = Reasons::new();
    let state = m.sync_pod(&p, &mut reasons, true).await.unwrap();
    assert!(reasons.is_empty(), "{reasons:?}");
    assert_eq!(state.sandboxes.len(), 1);
    assert_eq!(state.latest("a").unwrap().state, ContainerState::Running);
    let cfg = &runtime.created()[0];
    assert_eq!(cfg.labels[labels::POD_UID], "u");
    assert_eq!(cfg.labels[labels::CONTAINER_NAME], "a");
    assert_eq!(cfg.log_path, std::path::PathBuf::from("a/0.log"));
    let sandbox_cfg = runtime.0.lock().unwrap().sandboxes[0].1.clone();
    assert_eq!(sandbox_cfg.cgroup_parent, "/kubepods/besteffort/podu");
    assert_eq!(sandbox_cfg.labels[labels::POD_NAME], "p");
    // A second sync changes nothing.
    let again = m.sync_pod(&p, &mut reasons, false).await.unwrap();
    assert_eq!(again.containers.len(), 1);
}

#[tokio::test]
async fn an_exiting_container_restarts_then_backs_off() {
    let runtime = FakeRuntime::default();
    let (m, _agent_dir) = manager(runtime.clone(), present("busybox:1")).await;
    let p = pod("Always", &["a"], &[]);
    let mut reasons = Reasons::new();
    m.sync_pod(&p, &mut reasons, true).await.unwrap();
    runtime.exit("a", 1);
    // The first restart is immediate, with the next attempt number.
    let state = m.sync_pod(&p, &mut reasons, false).await.unwrap();
    assert_eq!(state.latest("a").unwrap().metadata.attempt, 1);
    assert_eq!(state.latest("a").unwrap().state, ContainerState::Running);
    runtime.exit("a", 1);
    // The second waits 10 s.
    let state = m.sync_pod(&p, &mut reasons, false).await.unwrap();
    assert_eq!(state.latest("a").unwrap().state, ContainerState::Exited);
    let (reason, message) = &reasons["a"];
    assert_eq!(reason, "CrashLoopBackOff");
    assert_eq!(message, "back-off 10s restarting failed container=a pod=p_ns(u)");
}

#[tokio::test]
async fn never_pull_of_a_missing_image_waits_with_err_image_never_pull() {
    let runtime = FakeRuntime::default();
    let images = Arc::new(FakeImages::default());
    let (m, _agent_dir) = manager(runtime.clone(), images.clone()).await;
    let mut p = pod("Always", &["a"], &[]);
    p.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("Never".into());
    let mut reasons = Reasons::new();
    m.sync_pod(&p, &mut reasons, true).await.unwrap();
    assert_eq!(reasons["a"].0, "ErrImageNeverPull");
    assert_eq!(reasons["a"].1, "Container image \"busybox:1\" is not present with pull policy of Never");
    assert!(images.pulls.lock().unwrap().is_empty());
    assert!(runtime.created().is_empty());
    // IfNotPresent pulls it once, then uses it.
    p.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("IfNotPresent".into());
    m.sync_pod(&p, &mut reasons, false).await.unwrap();
    assert!(reasons.is_empty());
    assert_eq!(images.pulls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn termination_stops_containers_with_the_grace_period_and_removes_the_sandbox() {
    let runtime = FakeRuntime::default();
    let (m, _agent_dir) = manager(runtime.clone(), present("busybox:1")).await;
    let mut p = pod("Always", &["a", "b"], &[]);
    let mut reasons = Reasons::new();
    m.sync_pod(&p, &mut reasons, true).await.unwrap();
    p.metadata.deletion_grace_period_seconds = Some(7);
    m.terminate_pod(&p).await.unwrap();
    let f = runtime.0.lock().unwrap();
    assert_eq!(f.stops.len(), 2);
    assert!(f.stops.iter().all(|(_, grace)| *grace == Duration::from_secs(7)));
    assert!(f.sandboxes.is_empty());
}

#[tokio::test]
async fn orphan_sandboxes_are_removed_and_known_ones_kept() {
    let runtime = FakeRuntime::default();
    let (m, _agent_dir) = manager(runtime.clone(), present("busybox:1")).await;
    let mut reasons = Reasons::new();
    m.sync_pod(&pod("Always", &["a"], &[]), &mut reasons, true).await.unwrap();
    let mut other = pod("Always", &["a"], &[]);
    other.metadata.uid = Some("gone".into());
    m.sync_pod(&other, &mut reasons, true).await.unwrap();
    // A pod whose sandboxes went but whose cgroup the agent did not get to remove.
    seams::note_pod_cgroup(&m.config, "half-removed");
    m.remove_orphans(&["u".to_string()].into_iter().collect()).await.unwrap();
    let left: Vec<_> =
        runtime.0.lock().unwrap().sandboxes.iter().map(|(s, _)| s.labels[labels::POD_UID].clone()).collect();
    assert_eq!(left, vec!["u"]);
    // Only the live pod's cgroup is still noted; the others were removed.
    assert_eq!(seams::noted_pod_cgroups(&m.config), vec!["u"]);
    m.remove_pod_cgroups("u").await;
}
