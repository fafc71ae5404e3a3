//! The CRI client ([`RemoteRuntime`]) against a real containerd (Debian's `containerd` package):
//! a private containerd started for the test (its own config, root, state and socket under a
//! temporary directory), images pulled from a registry the test serves on 127.0.0.1 (plain
//! HTTP, configured in containerd's `certs.d`), a host-network sandbox, a container whose CRI
//! log the test reads, `ExecSync`, stop and removal.
//!
//! Needs root, `/usr/bin/containerd`, runc and `/bin/busybox` (busybox-static). Outside CI the
//! test skips with a message when it cannot run; under CI=true it fails.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tug_runtime::ImageService;
use tug_runtime::cri::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState, NamespaceMode, NamespaceOptions,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState, RuntimeError, RuntimeService,
};
use tug_runtime::remote::RemoteRuntime;

const CONTAINERD: &str = "/usr/bin/containerd";
const BUSYBOX: &str = "/bin/busybox";
/// The cgroup the test's pod goes under (removed at the end).
const CGROUP_PARENT: &str = "/tug-cri-test";

fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Whether the test can run here; panics under CI when it cannot.
fn can_run() -> bool {
    let problem = if !rustix::process::geteuid().is_root() {
        Some("not running as root".to_owned())
    } else if !Path::new(CONTAINERD).exists() {
        Some(format!("{CONTAINERD} is missing (apt-get install containerd)"))
    } else if !Path::new(BUSYBOX).exists() {
        Some(format!("{BUSYBOX} is missing (apt-get install busybox-static)"))
    } else {
        None
    };
    match problem {
        Some(p) if in_ci() => panic!("containerd test cannot run: {p}"),
        Some(p) => {
            eprintln!("skipping containerd test: {p}");
            false
        }
        None => true,
    }
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An uncompressed layer: /bin/busybox with the applets the test runs, and the directories a
/// container's runtime spec mounts over.
fn busybox_layer() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/", "tmp/", "proc/", "sys/", "dev/"] {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_cksum();
        tar.append_data(&mut header, dir, std::io::empty()).unwrap();
    }
    let busybox = std::fs::read(BUSYBOX).unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_mode(0o755);
    header.set_size(busybox.len() as u64);
    header.set_cksum();
    tar.append_data(&mut header, "bin/busybox", busybox.as_slice()).unwrap();
    for applet in ["sh", "sleep", "echo", "cat"] {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        tar.append_link(&mut header, format!("bin/{applet}"), "busybox").unwrap();
    }
    let passwd = b"root:x:0:0:root:/:/bin/sh\n";
    let mut header = tar::Header::new_ustar();
    header.set_mode(0o644);
    header.set_size(passwd.len() as u64);
    header.set_cksum();
    tar.append_data(&mut header, "etc/passwd", &passwd[..]).unwrap();
    tar.into_inner().unwrap()
}

/// The test registry's content: manifests by `repo:reference`, blobs by digest.
#[derive(Default)]
struct Registry {
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Vec<u8>>,
}

impl Registry {
    /// Adds `repo:tag`, an image of `layer` whose config runs `cmd`.
    fn add(&mut self, repo: &str, tag: &str, layer: &[u8], cmd: &[&str]) {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config),
                       "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer),
                        "size": layer.len()}],
        }))
        .unwrap();
        self.manifests.insert(format!("{repo}:{}", digest(&manifest)), manifest.clone());
        self.manifests.insert(format!("{repo}:{tag}"), manifest);
        self.blobs.insert(digest(&config), config);
        self.blobs.insert(digest(layer), layer.to_vec());
    }

    fn handle(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let found = if path == "/v2/" {
            Some(("application/json", b"{}".to_vec(), None))
        } else if let Some((repo, reference)) = path.strip_prefix("/v2/").and_then(|p| p.split_once("/manifests/")) {
            self.manifests
                .get(&format!("{repo}:{reference}"))
                .map(|m| ("application/vnd.oci.image.manifest.v1+json", m.clone(), Some(digest(m))))
        } else if let Some((_, blob)) = path.strip_prefix("/v2/").and_then(|p| p.split_once("/blobs/")) {
            self.blobs.get(blob).map(|b| ("application/octet-stream", b.clone(), Some(blob.to_owned())))
        } else {
            None
        };
        let Some((content_type, body, digest)) = found else {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#)))
                .unwrap();
        };
        let mut response = Response::builder()
            .header("content-type", content_type)
            .header("content-length", body.len())
            .header("docker-distribution-api-version", "registry/2.0");
        if let Some(digest) = digest {
            response = response.header("docker-content-digest", digest);
        }
        response.body(Full::new(Bytes::from(body))).unwrap()
    }

    /// Serves the registry on 127.0.0.1; returns its `host:port`.
    async fn serve(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let registry = Arc::new(self);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let registry = registry.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let response = registry.handle(&request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        address
    }
}

/// A private containerd; killed (with the shims it started) when dropped.
struct Containerd {
    process: std::process::Child,
    dir: PathBuf,
}

impl Containerd {
    /// Starts containerd with everything under `dir`, its sandbox image `pause_image` and plain
    /// HTTP to the registry at `registry`.
    fn start(dir: &Path, registry: &str, pause_image: &str) -> Self {
        let certs = dir.join("certs.d").join(registry);
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(
            certs.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  \
                 capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # Unprivileged hosts (containers, CI sandboxes) may not lower oom_score_adj below the
  # agent's own; containerd then clamps its values instead of failing every start.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "{port}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#,
            port = free_port(),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let process = std::process::Command::new(CONTAINERD)
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Containerd { process, dir: dir.to_owned() }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.join("containerd.sock").display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    async fn connect(&mut self) -> RemoteRuntime {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match RemoteRuntime::connect(&self.endpoint()).await {
                Ok(runtime) => return runtime,
                Err(e) if Instant::now() < deadline && self.process.try_wait().unwrap().is_none() => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("containerd did not come up: {e}\n{}", self.log()),
            }
        }
    }
}

impl Drop for Containerd {
    /// Leaves nothing behind even when the test failed half-way: containerd, the containers
    /// runc still knows, their shims, the mounts under the test directory and the cgroups.
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let runc_root = self.dir.join("runc/k8s.io");
        let run = |program: &str, args: &[&str]| std::process::Command::new(program).args(args).output().ok();
        let root = runc_root.to_string_lossy();
        if let Some(out) = run("runc", &["--root", &root, "list", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                run("runc", &["--root", &root, "delete", "--force", id]);
            }
        }
        let dir = self.dir.to_string_lossy();
        if let Some(out) = run("pgrep", &["-f", &format!("containerd-shim.*{dir}")]) {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                run("kill", &["-9", pid]);
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|p| p.starts_with(dir.as_ref())).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            run("umount", &["-l", point]);
        }
        for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            remove_cgroup(&controller.path().join(CGROUP_PARENT.trim_start_matches('/')));
        }
    }
}

/// Removes a cgroup directory and its children, deepest first (rmdir is how cgroups go).
fn remove_cgroup(dir: &Path) {
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&child.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sandbox_config(dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: PodSandboxMetadata {
            name: "web".into(),
            namespace: "default".into(),
            uid: "uid-1".into(),
            attempt: 0,
        },
        hostname: "web".into(),
        log_directory: dir.join("pods/default_web_uid-1"),
        dns_config: None,
        port_mappings: vec![],
        labels: [("io.kubernetes.pod.name".to_owned(), "web".to_owned())].into(),
        annotations: [("note".to_owned(), "kept".to_owned())].into(),
        cgroup_parent: format!("{CGROUP_PARENT}/poduid-1"),
        // Host network: the test needs no CNI configuration.
        namespace_options: NamespaceOptions {
            network: NamespaceMode::Node,
            pid: NamespaceMode::Container,
            ipc: NamespaceMode::Pod,
        },
        sysctls: Default::default(),
        privileged: false,
    }
}

fn container_config(image: &str, name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: ContainerMetadata { name: name.into(), attempt: 0 },
        image: image.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: vec![],
        working_dir: None,
        envs: vec![("GREETING".into(), "hello".into())],
        mounts: vec![],
        labels: Default::default(),
        annotations: Default::default(),
        log_path: PathBuf::from(name).join("0.log"),
        stdin: false,
        stdin_once: false,
        tty: false,
        resources: Default::default(),
        security_context: Default::default(),
        stop_signal: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_a_pod_through_the_cri_client() {
    if !can_run() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("tug-containerd-").tempdir().unwrap();
    let layer = busybox_layer();
    let mut registry = Registry::default();
    registry.add("tugboat.test/busybox", "1", &layer, &["sh"]);
    // The sandbox ("pause") container only has to stay up; containerd kills it with SIGKILL.
    registry.add("tugboat.test/pause", "1", &layer, &["sleep", "2147483647"]);
    let registry = registry.serve().await;
    let mut containerd = Containerd::start(dir.path(), &registry, &format!("{registry}/tugboat.test/pause:1"));
    let runtime = containerd.connect().await;
    assert_eq!(runtime.runtime_version().name, "containerd");
    assert!(runtime.runtime_version().version.starts_with("1."), "{:?}", runtime.runtime_version());

    // Without a CNI configuration containerd says its network is not ready, and why.
    let status = runtime.status().await;
    assert!(!status.network_ready, "{status:?}");
    assert_eq!(status.network_message, "cni plugin not initialized", "{status:?}");

    // Images: pull, list, status.
    let reference = format!("{registry}/tugboat.test/busybox:1");
    let image = runtime.pull_image(&reference, &[]).await.unwrap_or_else(|e| panic!("pull: {e}\n{}", containerd.log()));
    assert!(image.id.starts_with("sha256:"), "{image:?}");
    assert!(image.repo_tags.contains(&reference), "{image:?}");
    assert!(runtime.list_images().await.unwrap().iter().any(|i| i.id == image.id));
    assert_eq!(runtime.image_status(&reference).await.unwrap().map(|i| i.id), Some(image.id.clone()));
    // The image filesystem is containerd's: its snapshotter's directory under its root. (Its
    // used bytes come from a periodic scan, so they may still be 0 right after the pull.)
    let image_fs = runtime.image_fs_info().await.unwrap().expect("containerd names its image filesystem");
    assert!(image_fs.mountpoint.starts_with(dir.path()) && image_fs.mountpoint.is_dir(), "{image_fs:?}");
    let missing = format!("{registry}/tugboat.test/nope:1");
    assert!(runtime.pull_image(&missing, &[]).await.is_err());
    assert_eq!(runtime.image_status(&missing).await.unwrap(), None);

    // A sandbox and a container whose output lands in the CRI log the kubelet reads.
    let sandbox = sandbox_config(dir.path());
    let sandbox_id =
        runtime.run_pod_sandbox(&sandbox).await.unwrap_or_else(|e| panic!("sandbox: {e}\n{}", containerd.log()));
    let status = runtime.pod_sandbox_status(&sandbox_id).await.unwrap();
    assert_eq!(status.state, PodSandboxState::Ready);
    assert_eq!(status.metadata, sandbox.metadata);
    assert_eq!(status.namespace_options.network, NamespaceMode::Node);
    assert_eq!(status.annotations.get("note").map(String::as_str), Some("kept"));
    assert!(runtime.list_pod_sandboxes().await.unwrap().iter().any(|s| s.id == sandbox_id));

    let script = "trap 'echo bye; exit 7' TERM; echo $GREETING; echo oops >&2; sleep 1000 & wait";
    let config = container_config(&image.id, "app", &["sh", "-c", script]);
    let id = runtime.create_container(&sandbox_id, &config, &sandbox).await.unwrap();
    runtime.start_container(&id).await.unwrap();
    let log_path = sandbox.log_directory.join("app/0.log");
    let log = wait_for("the container's log", async || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        (log.contains("stdout F hello") && log.contains("stderr F oops")).then_some(log)
    })
    .await;
    assert!(log.lines().all(|l| l.split(' ').count() >= 4), "not CRI log lines: {log}");
    let status = runtime.container_status(&id).await.unwrap();
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.metadata.name, "app");
    assert_eq!(status.log_path, log_path);
    assert_eq!(status.image_ref, image.id);
    assert!(status.started_at.is_some() && status.exit_code.is_none(), "{status:?}");
    let listed = runtime
        .list_containers(&ContainerFilter { pod_sandbox_id: Some(sandbox_id.clone()), state: None })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec![id.as_str()]);

    // Statistics for /metrics/resource: the pod's cgroup and its running container.
    let stats = runtime.list_pod_sandbox_stats().await.unwrap();
    let pod =
        stats.iter().find(|s| s.id == sandbox_id).unwrap_or_else(|| panic!("no stats for the sandbox: {stats:?}"));
    assert_eq!(pod.metadata, sandbox.metadata);
    let app = pod.containers.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no container stats: {pod:?}"));
    assert!(app.memory.working_set_bytes > 0, "{app:?}");

    // ExecSync: output and exit code, as probes use it.
    let cmd = ["sh", "-c", "echo out; echo err >&2; exit 3"].map(String::from);
    let result = runtime.exec_sync(&id, &cmd, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (result.stdout.as_slice(), result.stderr.as_slice(), result.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );

    // A command that does not exist fails to start with the runtime's words.
    let bad =
        runtime.create_container(&sandbox_id, &container_config(&image.id, "bad", &["nope"]), &sandbox).await.unwrap();
    match runtime.start_container(&bad).await {
        Err(RuntimeError::StartFailed(message)) => assert!(message.contains("nope"), "{message}"),
        other => panic!("start of a missing command: {other:?}"),
    }

    // Rotation as the kubelet does it: rename the log aside, ReopenContainerLog; what follows
    // goes to a new file at the log path.
    let rotated = log_path.with_extension("log.20260101-000000");
    std::fs::rename(&log_path, &rotated).unwrap();
    runtime.reopen_container_log(&id).await.unwrap();
    assert!(log_path.exists(), "containerd reopened the log at its path");
    assert!(!runtime.rotates_container_logs(), "the kubelet rotates a CRI runtime's logs");

    // Stop sends SIGTERM first: the container's handler runs and its exit code is kept.
    runtime.stop_container(&id, Duration::from_secs(10)).await.unwrap();
    let status = runtime.container_status(&id).await.unwrap();
    assert_eq!(status.state, ContainerState::Exited);
    assert_eq!(status.exit_code, Some(7), "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("Error"));
    assert!(status.finished_at.is_some());
    assert!(std::fs::read_to_string(&log_path).unwrap().contains("stdout F bye"));
    assert!(!std::fs::read_to_string(&rotated).unwrap().contains("bye"), "written before the rotation only");
    runtime.stop_container(&id, Duration::from_secs(1)).await.unwrap();
    for container in [&id, &bad] {
        runtime.remove_container(container).await.unwrap();
        assert!(matches!(runtime.container_status(container).await, Err(RuntimeError::ContainerNotFound(_))));
        runtime.remove_container(container).await.unwrap();
    }
    assert!(log_path.exists(), "removing a container keeps its log");

    runtime.stop_pod_sandbox(&sandbox_id).await.unwrap();
    assert_eq!(runtime.pod_sandbox_status(&sandbox_id).await.unwrap().state, PodSandboxState::NotReady);
    runtime.remove_pod_sandbox(&sandbox_id).await.unwrap();
    assert!(matches!(runtime.pod_sandbox_status(&sandbox_id).await, Err(RuntimeError::SandboxNotFound(_))));
    runtime.stop_pod_sandbox(&sandbox_id).await.unwrap();
    runtime.remove_pod_sandbox(&sandbox_id).await.unwrap();

    runtime.remove_image(&reference).await.unwrap();
    assert_eq!(runtime.image_status(&reference).await.unwrap(), None);
    runtime.remove_image(&reference).await.unwrap();
    drop(containerd);
}
