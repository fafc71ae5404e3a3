//! CNI delegation: the invocation protocol against fake plugins (shell scripts, no root), and
//! (as root) the real bridge, host-local, portmap and loopback plugins. Every root test runs on
//! a thread moved into a new network namespace, so the plugins' bridge and rules never land in
//! the host's own namespace; the pod's namespace is another new one, pinned to a file.
// unshare(CLONE_NEWNET) is an unsafe call in rustix 1 (see `in_new_netns`).
#![allow(unsafe_code)]

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::{Protocol, link, netns};

const PLUGINS: &str = "/usr/lib/cni";

fn request(sandbox_id: &str, netns: &Path) -> AttachRequest {
    AttachRequest {
        sandbox_id: sandbox_id.to_string(),
        netns: netns.to_path_buf(),
        pod_namespace: "default".to_string(),
        pod_name: "web".to_string(),
        host_ports: vec![HostPort { protocol: Protocol::Tcp, host_port: 18080, container_port: 80, host_ip: None }],
    }
}

struct Dirs {
    _root: tempfile::TempDir,
    conf: PathBuf,
    bin: PathBuf,
    state: PathBuf,
    ipam: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().to_path_buf();
    for sub in ["conf", "bin", "state", "ipam"] {
        std::fs::create_dir(path.join(sub)).unwrap();
    }
    Dirs {
        conf: path.join("conf"),
        bin: path.join("bin"),
        state: path.join("state"),
        ipam: path.join("ipam"),
        _root: root,
    }
}

fn network(dirs: &Dirs, bin_dirs: Vec<PathBuf>) -> CniNetwork {
    CniNetwork::new(CniConfig { conf_dir: dirs.conf.clone(), bin_dirs, state_dir: dirs.state.clone() })
}

/// A fake plugin: records its environment and stdin under `<bin>/<name>.<command>.{env,json}`,
/// then runs `body` (shell).
fn fake_plugin(bin: &Path, name: &str, body: &str) {
    let path = bin.join(name);
    let script = format!(
        "#!/bin/sh\ncat > \"{dir}/{name}.$CNI_COMMAND.json\"\nenv | grep ^CNI_ | sort > \"{dir}/{name}.$CNI_COMMAND.env\"\n{body}\n",
        dir = bin.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn recorded(bin: &Path, name: &str, command: &str) -> Value {
    serde_json::from_slice(&std::fs::read(bin.join(format!("{name}.{command}.json"))).unwrap()).unwrap()
}

const FAKE_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"br0"},{"name":"eth0","sandbox":"/x"}],
"ips":[{"address":"fd00::5/64","interface":1},{"address":"10.1.2.3/24","interface":1},{"address":"10.1.2.1/24","interface":0}]}"#;

#[tokio::test]
async fn status_follows_the_config_directory() {
    let dirs = dirs();
    let cni = network(&dirs, vec![dirs.bin.clone()]);
    let NetworkStatus::NotReady(reason) = cni.status() else { panic!("ready without a config") };
    assert!(reason.contains("cni plugin not initialized"), "{reason}");
    assert!(reason.contains(&dirs.conf.display().to_string()), "{reason}");
    // Not a config file, and an invalid one: still not ready.
    std::fs::write(dirs.conf.join("README"), "{}").unwrap();
    std::fs::write(dirs.conf.join("05-broken.conflist"), "{\"name\": \"x\"}").unwrap();
    assert!(matches!(cni.status(), NetworkStatus::NotReady(_)));
    std::fs::write(dirs.conf.join("10-net.conf"), r#"{"cniVersion":"1.0.0","name":"net","type":"bridge"}"#).unwrap();
    assert_eq!(cni.status(), NetworkStatus::Ready);
}

#[test]
fn the_lexically_first_valid_file_wins_and_a_conf_is_wrapped() {
    let dirs = dirs();
    let cni = network(&dirs, vec![]);
    std::fs::write(dirs.conf.join("20-b.conflist"), r#"{"cniVersion":"0.4.0","name":"b","plugins":[{"type":"ptp"}]}"#)
        .unwrap();
    std::fs::write(dirs.conf.join("10-a.conf"), r#"{"cniVersion":"1.0.0","name":"a","type":"bridge","x":1}"#).unwrap();
    std::fs::write(dirs.conf.join("00-broken.json"), "not json").unwrap();
    let list = cni.load_config().unwrap();
    assert_eq!(list.name, "a");
    assert_eq!(list.cni_version.as_deref(), Some("1.0.0"));
    assert_eq!(list.plugins.len(), 1);
    assert_eq!(list.plugins[0]["x"], json!(1));
    std::fs::remove_file(dirs.conf.join("10-a.conf")).unwrap();
    assert_eq!(cni.load_config().unwrap().name, "b");
}

#[test]
fn plugin_stdin_carries_name_version_prev_result_and_port_mappings() {
    let list = NetworkList::from_value(json!({"cniVersion": "1.0.0", "name": "net", "plugins": [
        {"type": "bridge", "cniVersion": "0.3.1"},
        {"type": "portmap", "capabilities": {"portMappings": true}},
    ]}))
    .unwrap();
    let ports = [HostPort {
        protocol: Protocol::Udp,
        host_port: 53,
        container_port: 5353,
        host_ip: Some("192.0.2.1".parse().unwrap()),
    }];
    let first = CniNetwork::plugin_stdin(&list, &list.plugins[0], None, &ports);
    assert_eq!(first, json!({"type": "bridge", "cniVersion": "1.0.0", "name": "net"}));
    let prev = json!({"ips": []});
    let second = CniNetwork::plugin_stdin(&list, &list.plugins[1], Some(&prev), &ports);
    assert_eq!(second["prevResult"], prev);
    assert_eq!(
        second["runtimeConfig"]["portMappings"],
        json!([{"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "192.0.2.1"}])
    );
}

#[test]
fn result_ips_are_the_containers_ipv4_first() {
    let result: Value = serde_json::from_str(FAKE_RESULT).unwrap();
    let ips = result_ips("p", &result).unwrap();
    assert_eq!(ips, vec!["10.1.2.3".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
    assert!(matches!(result_ips("p", &json!({"ips": []})), Err(CniError::InvalidResult { .. })));
    assert!(matches!(result_ips("p", &json!({"ips": [{"address": "x"}]})), Err(CniError::InvalidResult { .. })));
}

#[tokio::test]
async fn add_and_del_invoke_the_plugins_as_containerd_does() {
    let dirs = dirs();
    let second_bin = dirs.conf.parent().unwrap().join("bin2");
    std::fs::create_dir(&second_bin).unwrap();
    fake_plugin(&dirs.bin, "loopback", r#"echo '{"cniVersion":"1.0.0"}'"#);
    fake_plugin(&dirs.bin, "first", &format!("echo '{}'", FAKE_RESULT.replace('\n', "")));
    // Found in the second bin dir only.
    fake_plugin(&second_bin, "second", &format!("echo '{}'", FAKE_RESULT.replace('\n', "")));
    std::fs::write(
        dirs.conf.join("10-net.conflist"),
        r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"first"},{"type":"second","capabilities":{"portMappings":true}}]}"#,
    )
    .unwrap();
    let cni = network(&dirs, vec![dirs.bin.clone(), second_bin.clone()]);
    let netns = dirs.conf.join("10-net.conflist"); // any existing file stands for the netns
    let attached = cni.attach(&request("sandbox-1", &netns)).await.unwrap();
    assert_eq!(attached.ips[0], "10.1.2.3".parse::<IpAddr>().unwrap());

    let env = std::fs::read_to_string(dirs.bin.join("first.ADD.env")).unwrap();
    for line in [
        "CNI_COMMAND=ADD".to_string(),
        "CNI_CONTAINERID=sandbox-1".to_string(),
        format!("CNI_NETNS={}", netns.display()),
        "CNI_IFNAME=eth0".to_string(),
        format!("CNI_PATH={}:{}", dirs.bin.display(), second_bin.display()),
        "CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sandbox-1;IgnoreUnknown=1"
            .to_string(),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    }
    let lo_env = std::fs::read_to_string(dirs.bin.join("loopback.ADD.env")).unwrap();
    assert!(lo_env.contains("CNI_IFNAME=lo"), "{lo_env}");
    assert_eq!(
        recorded(&dirs.bin, "loopback", "ADD"),
        json!({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"})
    );
    assert!(recorded(&dirs.bin, "first", "ADD").get("prevResult").is_none());
    let second = recorded(&second_bin, "second", "ADD");
    assert_eq!(second["prevResult"]["ips"][1]["address"], json!("10.1.2.3/24"));
    assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], json!(18080));

    // Attaching again answers from the cache, without running the plugins.
    std::fs::remove_file(dirs.bin.join("first.ADD.json")).unwrap();
    assert_eq!(cni.attach(&request("sandbox-1", &netns)).await.unwrap(), attached);
    assert!(!dirs.bin.join("first.ADD.json").exists());

    // DEL uses the cached result; the config file may have changed meanwhile.
    std::fs::remove_file(dirs.conf.join("10-net.conflist")).unwrap();
    cni.detach("sandbox-1").await.unwrap();
    let del = recorded(&dirs.bin, "first", "DEL");
    assert_eq!(del["prevResult"]["ips"][1]["address"], json!("10.1.2.3/24"));
    assert_eq!(recorded(&second_bin, "second", "DEL")["runtimeConfig"]["portMappings"][0]["containerPort"], json!(80));
    let del_env = std::fs::read_to_string(dirs.bin.join("first.DEL.env")).unwrap();
    assert!(del_env.contains("CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"), "{del_env}");
    assert!(recorded(&dirs.bin, "loopback", "DEL").is_object());
    assert!(!cni.cache_path("sandbox-1").exists());
    // Nothing cached and no config: nothing to undo.
    cni.detach("sandbox-1").await.unwrap();
}

#[tokio::test]
async fn a_plugin_error_is_typed_and_leaves_no_cache() {
    let dirs = dirs();
    fake_plugin(&dirs.bin, "loopback", "exit 0");
    fake_plugin(
        &dirs.bin,
        "failing",
        r#"if [ "$CNI_COMMAND" = ADD ]; then echo '{"cniVersion":"1.0.0","code":11,"msg":"no luck","details":"really"}'; echo oops >&2; exit 1; fi"#,
    );
    std::fs::write(
        dirs.conf.join("10-net.conflist"),
        r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"failing"}]}"#,
    )
    .unwrap();
    let cni = network(&dirs, vec![dirs.bin.clone()]);
    let netns = dirs.conf.join("10-net.conflist");
    let error = cni.attach(&request("sandbox-1", &netns)).await.unwrap_err();
    match &error {
        NetworkError::Cni(CniError::Plugin { plugin, code, msg, details }) => {
            assert_eq!((plugin.as_str(), *code, msg.as_str(), details.as_str()), ("failing", 11, "no luck", "really"));
        }
        other => panic!("{other:?}"),
    }
    // The failed ADD was undone with a DEL, as containerd does.
    assert!(dirs.bin.join("failing.DEL.json").exists());
    assert!(!cni.cache_path("sandbox-1").exists());

    // Output that is no error object: the exit status and stderr tell.
    fake_plugin(&dirs.bin, "failing", "echo garbage; echo 'bad things' >&2; exit 3");
    let error = cni.attach(&request("sandbox-1", &netns)).await.unwrap_err();
    assert!(
        matches!(&error, NetworkError::Cni(CniError::Plugin { details, .. }) if details == "bad things"),
        "{error:?}"
    );
}

// ---- Real plugins, as root ----

/// Root tests skip outside CI when not root, and fail under `CI=true`.
fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() && Path::new(PLUGINS).join("bridge").exists() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs root and {PLUGINS} (CI=true)");
    eprintln!("skipping {test}: needs root and the CNI plugins in {PLUGINS}");
    false
}

/// Runs `body` on a thread of its own in a new, empty network namespace (gone when the thread
/// ends), with a current-thread tokio runtime: plugins spawned from that thread inherit it.
fn in_new_netns<T: Send>(body: impl AsyncFnOnce() -> T + Send) -> T {
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

/// A new network namespace pinned by a bind mount on a file, unmounted on drop.
struct PodNetns {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl PodNetns {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns");
        std::fs::write(&path, "").unwrap();
        let target = path.clone();
        std::thread::spawn(move || {
            // SAFETY: as in `in_new_netns`; this thread only pins its new namespace and ends.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .expect("unshare(CLONE_NEWNET)");
            rustix::mount::mount_bind("/proc/thread-self/ns/net", &target).expect("pinning the namespace");
        })
        .join()
        .unwrap();
        PodNetns { path, _dir: dir }
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
    }
}

fn write_conflist(dirs: &Dirs, subnet: &str, first_type: &str) {
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "cnitest",
        "plugins": [
            {"type": first_type, "bridge": "cnitest0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "subnet": subnet, "dataDir": dirs.ipam}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    std::fs::write(dirs.conf.join("10-cnitest.conflist"), serde_json::to_vec(&conflist).unwrap()).unwrap();
}

/// `iptables -t nat -S` in the calling thread's namespace.
fn nat_rules() -> String {
    let output = std::process::Command::new("iptables").args(["-w", "-t", "nat", "-S"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The IPv4 addresses of `eth0` and whether `lo` is up, inside the namespace at `path`.
async fn pod_view(path: &Path) -> (Vec<(std::net::Ipv4Addr, u8)>, bool) {
    netns::run_in(path, |handle| async move {
        let eth0 = link::index_of(&handle, "eth0").await.unwrap().expect("eth0 in the pod");
        let addresses = link::addresses(&handle, eth0).await.unwrap();
        let lo = link::get(&handle, "lo").await.unwrap().expect("lo");
        let up = lo.header.flags.contains(rtnetlink::packet_route::link::LinkFlags::Up);
        (addresses, up)
    })
    .await
    .unwrap()
}

#[test]
fn real_plugins_attach_check_detach_and_retain() {
    if !require_root("real_plugins_attach_check_detach_and_retain") {
        return;
    }
    let dirs = dirs();
    write_conflist(&dirs, "10.99.0.0/24", "bridge");
    let pod = PodNetns::new();
    let other = PodNetns::new();
    in_new_netns(async || {
        let cni = network(&dirs, vec![PathBuf::from(PLUGINS)]);
        assert_eq!(cni.status(), NetworkStatus::Ready);
        let request = request("sandbox-a", &pod.path);
        let attached = cni.attach(&request).await.unwrap();
        let IpAddr::V4(ip) = attached.ips[0] else { panic!("{attached:?}") };
        assert!("10.99.0.0/24".parse::<ipnet::Ipv4Net>().unwrap().contains(&ip), "{ip}");
        let (addresses, lo_up) = pod_view(&pod.path).await;
        assert!(addresses.contains(&(ip, 24)), "{addresses:?}");
        assert!(lo_up, "lo is brought up by the loopback plugin");
        let reserved = dirs.ipam.join("cnitest").join(ip.to_string());
        assert!(reserved.exists(), "host-local reserved {ip}");
        let rules = nat_rules();
        assert!(rules.contains("--dport 18080") && rules.contains(&format!("{ip}:80")), "{rules}");

        // A second sandbox, orphaned: retain frees it and keeps the live one.
        let orphan = cni.attach(&AttachRequest { host_ports: vec![], ..self::request("sandbox-b", &other.path) }).await;
        let IpAddr::V4(orphan_ip) = orphan.unwrap().ips[0] else { panic!() };
        assert_ne!(orphan_ip, ip);
        // CHECK on the sandbox without hostPorts: Debian's portmap 1.1.1 fails CHECK with
        // hostPorts on IPv4-only pods (containernetworking/plugins#819, fixed upstream).
        let orphan_request = AttachRequest { host_ports: vec![], ..self::request("sandbox-b", &other.path) };
        cni.check(&orphan_request).await.unwrap();
        // And CHECK can fail: the bridge plugin notices eth0's address is gone.
        netns::run_in(&other.path, move |handle| async move {
            let eth0 = link::index_of(&handle, "eth0").await.unwrap().unwrap();
            let mut addresses = handle.address().get().set_link_index_filter(eth0).execute();
            while let Some(address) = futures::TryStreamExt::try_next(&mut addresses).await.unwrap() {
                handle.address().del(address).execute().await.unwrap();
            }
        })
        .await
        .unwrap();
        let failed = cni.check(&orphan_request).await;
        assert!(matches!(failed, Err(NetworkError::Cni(CniError::Plugin { .. }))), "{failed:?}");
        // Its namespace's bind mount is gone, the file left behind: DEL still frees the address.
        rustix::mount::unmount(&other.path, rustix::mount::UnmountFlags::DETACH).unwrap();
        assert!(other.path.exists());
        cni.retain(&["sandbox-a".to_string()]).await.unwrap();
        assert!(!cni.cache_path("sandbox-b").exists());
        assert!(!dirs.ipam.join("cnitest").join(orphan_ip.to_string()).exists());
        assert!(reserved.exists());

        cni.detach("sandbox-a").await.unwrap();
        assert!(!reserved.exists(), "host-local released {ip}");
        assert!(!nat_rules().contains("--dport 18080"), "portmap removed its rules");
        assert!(!cni.cache_path("sandbox-a").exists());
        cni.detach("sandbox-a").await.unwrap();
    });
}

#[test]
fn real_plugin_failures_leave_no_cache() {
    if !require_root("real_plugin_failures_leave_no_cache") {
        return;
    }
    let dirs = dirs();
    let pod = PodNetns::new();
    in_new_netns(async || {
        let cni = network(&dirs, vec![PathBuf::from(PLUGINS)]);
        write_conflist(&dirs, "10.99.0.0/24", "no-such-plugin");
        let error = cni.attach(&request("sandbox-a", &pod.path)).await.unwrap_err();
        assert!(
            matches!(&error, NetworkError::Cni(CniError::PluginNotFound { plugin, .. }) if plugin == "no-such-plugin"),
            "{error:?}"
        );
        assert!(!cni.cache_path("sandbox-a").exists());

        write_conflist(&dirs, "10.99.0.0/33", "bridge");
        let error = cni.attach(&request("sandbox-a", &pod.path)).await.unwrap_err();
        let NetworkError::Cni(CniError::Plugin { plugin, msg, .. }) = &error else { panic!("{error:?}") };
        assert_eq!(plugin, "bridge");
        assert!(msg.contains("10.99.0.0/33"), "{msg}");
        assert!(!cni.cache_path("sandbox-a").exists());
    });
}
