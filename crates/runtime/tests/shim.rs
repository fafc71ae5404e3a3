//! The container shim driven as the built-in runtime drives it: real containers from a busybox
//! root filesystem, through `tug shim` (the binary from TUG_BIN, default
//! `<workspace>/target/debug/tug`). Needs root; outside CI the tests skip with a message when
//! they cannot run, under CI=true they fail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tug_runtime::shim::{
    ExecArgs, ExitRecord, RunArgs, SandboxArgs, ShimBinary, ShimError, attach, read_exit_file, run_container,
    run_sandbox, spawn_exec,
};

const BUSYBOX: &str = "/bin/busybox";

fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// The shim binary, or `None` (with a message) when these tests cannot run here.
fn shim() -> Option<ShimBinary> {
    let bin = std::env::var_os("TUG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/tug"));
    let problem = if !rustix::process::geteuid().is_root() {
        Some("not running as root".to_string())
    } else if !bin.exists() {
        Some(format!("{} does not exist (cargo build -p tug)", bin.display()))
    } else if !Path::new(BUSYBOX).exists() {
        Some(format!("{BUSYBOX} is missing (apt-get install busybox-static)"))
    } else {
        None
    };
    match problem {
        Some(p) if in_ci() => panic!("shim tests cannot run: {p}"),
        Some(p) => {
            eprintln!("skipping shim test: {p}");
            None
        }
        None => Some(ShimBinary(bin)),
    }
}

/// A container's bundle, state and log locations in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    id: String,
    /// Processes to kill if the test ends early (a failed assertion), so nothing leaks.
    pids: std::sync::Mutex<Vec<std::os::fd::OwnedFd>>,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let id = format!("{name}-{}", std::process::id());
        let dir = tempfile::Builder::new().prefix("tug-shim-").tempdir().unwrap();
        let rootfs = dir.path().join("bundle/rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "sleep", "cat", "head", "tr", "hostname", "true", "stty", "ps"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("bin/noexec"), "not a program").unwrap();
        Fixture { dir, id, pids: Default::default() }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Writes config.json for `args`, with extra `linux` settings merged in.
    fn write_spec(&self, args: &[&str], linux_extra: serde_json::Value) {
        self.write_spec_with_terminal(args, linux_extra, false)
    }

    fn write_spec_with_terminal(&self, args: &[&str], linux_extra: serde_json::Value, terminal: bool) {
        let mut linux = serde_json::json!({
            "cgroupsPath": format!("/tugboat-test-{}/container", self.id),
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        });
        if let serde_json::Value::Object(extra) = linux_extra {
            for (k, v) in extra {
                linux[k] = v;
            }
        }
        let caps = ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"];
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": terminal,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "HOME=/"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "shim-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": linux
        });
        std::fs::write(self.path("bundle/config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    }

    fn run_args(&self) -> RunArgs {
        RunArgs {
            id: self.id.clone(),
            bundle: self.path("bundle"),
            root: self.path("state"),
            log: self.path("logs/c/0.log"),
            exit_file: self.path("shim/exit"),
            stdin: false,
            stdin_once: false,
            tty: false,
            log_max_size: 10 << 20,
            log_max_files: 5,
        }
    }

    async fn start(&self, bin: &ShimBinary, args: &RunArgs) -> tug_runtime::shim::Started {
        let started = run_container(bin, args).await.expect("container starts");
        self.track(started.pid);
        started
    }

    /// Remembers the process by pidfd, which cannot point at a recycled pid later.
    fn track(&self, pid: u32) {
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        if let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            self.pids.lock().unwrap().push(fd);
        }
    }

    async fn wait_exit(&self) -> ExitRecord {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(record) = read_exit_file(&self.path("shim/exit")).unwrap() {
                return record;
            }
            assert!(Instant::now() < deadline, "container {} did not exit", self.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("logs/c/0.log")).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pidfd in self.pids.lock().unwrap().iter() {
            let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
        }
        // Give a killed container's shim the time to delete it while its state still exists.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids.lock().unwrap().is_empty()
            && self.path("state").join(&self.id).exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for name in ["net", "ipc", "uts", "pid"] {
            let _ = rustix::mount::unmount(self.path("sandbox/ns").join(name), rustix::mount::UnmountFlags::DETACH);
        }
        // The shim deletes each container's cgroup; the sandbox's and the parent go here. Each
        // fixture has its own parent: a shared one could vanish under another test's feet.
        // ("" is the unified hierarchy of a cgroup v2 host.)
        for controller in ["", "memory", "cpu", "cpuacct", "pids", "blkio", "devices", "freezer", "cpuset"] {
            for path in ["container", "pod", ""] {
                let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{controller}/tugboat-test-{}/{path}", self.id));
            }
        }
    }
}

/// The content of the log's records of `stream`, in order.
fn records<'a>(log: &'a str, stream: &str) -> Vec<&'a str> {
    log.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let time = parts.next()?;
            assert!(time.parse::<jiff::Timestamp>().is_ok(), "bad timestamp in {line:?}");
            let s = parts.next()?;
            assert_eq!(parts.next()?, "F", "{line:?}");
            (s == stream).then(|| parts.next().unwrap_or(""))
        })
        .collect()
}

fn kill(pid: u32, signal: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), signal).unwrap();
}

#[tokio::test]
async fn container_output_is_logged_in_cri_format_and_its_exit_code_recorded() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("logs");
    f.write_spec(&["sh", "-c", "echo hello; echo err >&2; exit 3"], serde_json::json!({}));
    let started = f.start(&bin, &f.run_args()).await;
    assert!(started.pid > 0 && started.shim_pid > 0);
    let exit = f.wait_exit().await;
    assert_eq!((exit.exit_code, exit.signal, exit.oom_killed), (3, None, false));
    assert!(exit.finished_at >= exit.started_at);
    let log = f.log();
    assert_eq!(records(&log, "stdout"), vec!["hello"], "{log}");
    assert_eq!(records(&log, "stderr"), vec!["err"], "{log}");
    assert!(!f.path("state").join(&f.id).exists(), "the shim deletes the container's state");
}

#[tokio::test]
async fn a_missing_executable_is_reported_as_runtimes_word_it() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("nope");
    f.write_spec(&["nope"], serde_json::json!({}));
    let err = run_container(&bin, &f.run_args()).await.expect_err("nothing to run");
    match err {
        ShimError::Report(message) => {
            assert_eq!(message, r#"exec: "nope": executable file not found in $PATH"#)
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!f.path("state").join(&f.id).exists(), "the half-made container is deleted");
}

#[tokio::test]
async fn a_container_killed_from_outside_exits_137_by_signal_9() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("killed");
    f.write_spec(&["sleep", "1000"], serde_json::json!({}));
    let started = f.start(&bin, &f.run_args()).await;
    kill(started.pid, rustix::process::Signal::KILL);
    let exit = f.wait_exit().await;
    assert_eq!((exit.exit_code, exit.signal, exit.oom_killed), (137, Some(9), false));
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_reported_oom_killed() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("oom");
    f.write_spec(
        &["sh", "-c", r#"x=$(head -c 64000000 /dev/zero | tr "\0" a); echo survived"#],
        serde_json::json!({"resources": {"memory": {"limit": 8 << 20}}}),
    );
    f.start(&bin, &f.run_args()).await;
    let exit = f.wait_exit().await;
    assert!(exit.oom_killed, "{exit:?}");
    assert_ne!(exit.exit_code, 0);
    assert!(!f.log().contains("survived"));
}

#[tokio::test]
async fn exec_runs_a_command_in_a_running_container_with_its_exit_code() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("exec");
    f.write_spec(&["sleep", "1000"], serde_json::json!({}));
    let started = f.start(&bin, &f.run_args()).await;
    let exec = |cmd: &[&str]| ExecArgs {
        id: f.id.clone(),
        root: f.path("state"),
        tty: false,
        cwd: None,
        env: vec![("GREETING".into(), "hi".into())],
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
    };
    let out = spawn_exec(&bin, &exec(&["sh", "-c", "echo $GREETING; hostname"]))
        .unwrap()
        .child
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\nshim-test\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));

    let out = spawn_exec(&bin, &exec(&["sh", "-c", "exit 5"])).unwrap().child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(5));

    let out = spawn_exec(&bin, &exec(&["nope"])).unwrap().child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"exec: "nope": executable file not found in $PATH"#));

    let out = spawn_exec(&bin, &exec(&["noexec"])).unwrap().child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(126), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"exec: "noexec": permission denied"#));

    kill(started.pid, rustix::process::Signal::KILL);
    f.wait_exit().await;
}

#[tokio::test]
async fn attach_carries_stdin_output_and_the_exit_code() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("attach");
    f.write_spec(&["sh", "-c", "read line; echo got $line; echo err >&2; exit 4"], serde_json::json!({}));
    let args = RunArgs { stdin: true, stdin_once: true, ..f.run_args() };
    f.start(&bin, &args).await;
    let mut session = attach(&f.path("shim/attach.sock"), true, false).await.unwrap();
    let mut stdin = session.stdin.take().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    stdin.flush().await.unwrap();
    let mut stdout = String::new();
    session.stdout.take().unwrap().read_to_string(&mut stdout).await.unwrap();
    let mut stderr = String::new();
    session.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert_eq!(stdout, "got ping\n");
    assert_eq!(stderr, "err\n");
    assert_eq!(session.exit.await.unwrap(), Some(4));
    assert_eq!(f.wait_exit().await.exit_code, 4);
    assert_eq!(records(&f.log(), "stdout"), vec!["got ping"]);
}

#[tokio::test]
async fn a_sandbox_holds_namespaces_that_containers_join() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("sandbox");
    let sandbox_dir = f.path("sandbox");
    let cgroup = format!("/tugboat-test-{}/pod", f.id);
    let sandbox = run_sandbox(
        &bin,
        &SandboxArgs {
            id: f.id.clone(),
            dir: sandbox_dir.clone(),
            hostname: "web-0".into(),
            new_net: true,
            new_ipc: true,
            new_uts: true,
            share_pid: false,
            cgroup: Some(cgroup.clone()),
            sysctls: vec![("net.ipv4.ip_unprivileged_port_start".into(), "80".into())],
        },
    )
    .await
    .expect("sandbox starts");
    f.track(sandbox.pid);
    let ns = |name: &str| sandbox_dir.join("ns").join(name);
    let pinned = rustix::fs::stat(ns("net")).unwrap();
    let live = rustix::fs::stat(format!("/proc/{}/ns/net", sandbox.pid)).unwrap();
    assert_eq!((pinned.st_dev, pinned.st_ino), (live.st_dev, live.st_ino), "ns/net pins the sandbox's namespace");
    // The unified (v2) hierarchy, or v1's memory controller.
    let hierarchy = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "" } else { "/memory" };
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup{hierarchy}{cgroup}/cgroup.procs")).unwrap_or_default();
    assert!(procs.lines().any(|p| p == sandbox.pid.to_string()), "sandbox joined its cgroup: {procs:?}");

    f.write_spec(
        &["sh", "-c", "hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; cat /sys/class/net/lo/operstate"],
        serde_json::json!({"namespaces": [
            {"type": "pid"}, {"type": "mount"},
            {"type": "uts", "path": ns("uts")}, {"type": "network", "path": ns("net")}, {"type": "ipc", "path": ns("ipc")},
        ]}),
    );
    f.start(&bin, &f.run_args()).await;
    let exit = f.wait_exit().await;
    let log = f.log();
    assert_eq!(exit.exit_code, 0, "{log}");
    assert_eq!(records(&log, "stdout"), vec!["web-0", "80", "unknown"], "{log}");

    kill(sandbox.pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", sandbox.pid)).exists() {
        assert!(Instant::now() < deadline, "the sandbox exits on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in ["net", "ipc", "uts"] {
        rustix::mount::unmount(ns(name), rustix::mount::UnmountFlags::DETACH).expect("the namespace was pinned");
    }
    for controller in ["", "/memory", "/cpu", "/cpuacct", "/pids", "/blkio", "/devices", "/freezer", "/cpuset"] {
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup{controller}{cgroup}"));
    }
}

#[tokio::test]
async fn a_terminal_container_is_attached_with_resizes_and_input() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("tty");
    f.write_spec_with_terminal(&["sh", "-c", "read line; stty size; echo got $line"], serde_json::json!({}), true);
    let args = RunArgs { stdin: true, tty: true, ..f.run_args() };
    f.start(&bin, &args).await;
    let mut session = attach(&f.path("shim/attach.sock"), true, true).await.unwrap();
    assert!(session.stderr.is_none(), "a terminal has one output stream");
    let resize = session.resize.take().unwrap();
    resize.send(tug_runtime::cri::TerminalSize { width: 100, height: 30 }).await.unwrap();
    let mut stdin = session.stdin.take().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    let mut stdout = String::new();
    session.stdout.take().unwrap().read_to_string(&mut stdout).await.unwrap();
    assert!(stdout.contains("30 100\r\n") && stdout.contains("got ping\r\n"), "{stdout:?}");
    assert_eq!(session.exit.await.unwrap(), Some(0));
    let log = f.log();
    assert!(log.contains(" stdout F got ping\r\n"), "{log}");
}

#[tokio::test]
async fn exec_with_a_terminal_applies_resizes() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("exectty");
    f.write_spec(&["sleep", "1000"], serde_json::json!({}));
    let started = f.start(&bin, &f.run_args()).await;
    let args = ExecArgs {
        id: f.id.clone(),
        root: f.path("state"),
        tty: true,
        cwd: Some("/tmp".into()),
        env: vec![],
        cmd: vec!["sh".into(), "-c".into(), "read x; stty size; pwd; exit 3".into()],
    };
    let mut exec = spawn_exec(&bin, &args).unwrap();
    exec.resize.as_mut().unwrap().resize(tug_runtime::cri::TerminalSize { width: 90, height: 20 }).await.unwrap();
    let mut stdin = exec.child.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    let out = exec.child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("20 90\r\n/tmp\r\n"), "{stdout:?} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3));
    kill(started.pid, rustix::process::Signal::KILL);
    f.wait_exit().await;
}

#[tokio::test]
async fn a_shared_pid_namespace_has_the_pause_process_as_pid_1() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("sharepid");
    let sandbox_dir = f.path("sandbox");
    let sandbox = run_sandbox(
        &bin,
        &SandboxArgs {
            id: f.id.clone(),
            dir: sandbox_dir.clone(),
            hostname: "web-1".into(),
            new_net: true,
            new_ipc: true,
            new_uts: true,
            share_pid: true,
            cgroup: None,
            sysctls: vec![],
        },
    )
    .await
    .expect("sandbox starts");
    f.track(sandbox.pid);
    assert_ne!(sandbox.pid, sandbox.shim_pid, "the pause process is the shim's child");
    let ns = |name: &str| sandbox_dir.join("ns").join(name);
    f.write_spec(
        &["sh", "-c", "echo $$; tr '\\0' ' ' < /proc/1/cmdline; echo"],
        serde_json::json!({"namespaces": [
            {"type": "pid", "path": ns("pid")}, {"type": "mount"},
            {"type": "uts", "path": ns("uts")}, {"type": "network", "path": ns("net")}, {"type": "ipc", "path": ns("ipc")},
        ]}),
    );
    f.start(&bin, &f.run_args()).await;
    let exit = f.wait_exit().await;
    let log = f.log();
    assert_eq!(exit.exit_code, 0, "{log}");
    let out = records(&log, "stdout");
    assert_ne!(out.first(), Some(&"1"), "the container's process is not pid 1: {log}");
    assert!(out.get(1).is_some_and(|l| l.contains("shim sandbox")), "pid 1 is the pause process: {log}");

    kill(sandbox.pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", sandbox.shim_pid)).exists() {
        assert!(Instant::now() < deadline, "the sandbox's shim exits with its pause process");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in ["net", "ipc", "uts", "pid"] {
        rustix::mount::unmount(ns(name), rustix::mount::UnmountFlags::DETACH).expect("the namespace was pinned");
    }
}

// Known race, seen once in a loaded CI dry run (passes when run alone): the exec'd process can
// outlive a SIGKILLed shim, likely when its parent-death signal is set only after it was
// re-parented away from the shim. Tracked in issue 5's notes; run with `--ignored`.
#[ignore = "racy under load: the exec'd process can outlive a SIGKILLed shim (issue 5)"]
#[tokio::test]
async fn an_exec_whose_shim_is_killed_does_not_linger_in_the_container() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("execkill");
    f.write_spec(&["sleep", "1000"], serde_json::json!({}));
    let started = f.start(&bin, &f.run_args()).await;
    let exec = |cmd: &[&str]| ExecArgs {
        id: f.id.clone(),
        root: f.path("state"),
        tty: false,
        cwd: None,
        env: vec![],
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
    };
    let lingers = || async {
        let out = spawn_exec(&bin, &exec(&["ps"])).unwrap().child.wait_with_output().await.unwrap();
        String::from_utf8_lossy(&out.stdout).contains("sleep 999")
    };
    let mut lingering = spawn_exec(&bin, &exec(&["sleep", "999"])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lingers().await {
        assert!(Instant::now() < deadline, "the exec'd process never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lingering.child.kill().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lingers().await {
        assert!(Instant::now() < deadline, "the exec'd process outlived its shim");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(started.pid, rustix::process::Signal::KILL);
    f.wait_exit().await;
}

#[tokio::test]
async fn a_chatty_container_log_is_rotated_by_size() {
    let Some(bin) = shim() else { return };
    let f = Fixture::new("rotate");
    f.write_spec(&["sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done"], serde_json::json!({}));
    let args = RunArgs { log_max_size: 2000, log_max_files: 3, ..f.run_args() };
    f.start(&bin, &args).await;
    assert_eq!(f.wait_exit().await.exit_code, 0);
    let log = f.log();
    assert!(log.len() <= 2000, "the current file stays under the limit");
    assert_eq!(records(&log, "stdout").last(), Some(&"line-299"));
    let rotated: Vec<_> = std::fs::read_dir(f.path("logs/c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "0.log")
        .collect();
    assert_eq!(rotated.len(), 2, "max files 3: the current one and two rotated: {rotated:?}");
    assert!(rotated.iter().all(|n| n.starts_with("0.log.")));
}
