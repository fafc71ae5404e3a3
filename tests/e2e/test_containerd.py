"""The node agent driving containerd over the CRI: `tug server --container-runtime-endpoint
unix:///...` runs pods through a private containerd (Debian's package) instead of the built-in
runtime. containerd pulls from the local plain-HTTP registry, gives pods their network through
the CNI configuration the agent writes for the node's podCIDR, and writes the CRI logs the agent
serves; kubectl sees the pod run, its logs and exec's exit codes, and deletes it.

Needs root, containerd and the CNI plugins; under CI=true a missing one fails.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from registry import (  # noqa: F401  (fixtures used by name)
    PASSWORD,
    USER,
    auth_registry,
    pause_image,
    plain_registry,
    run_checked,
    test_images,
    tug_binary,
)
from support import TOOLS_BIN, Kubectl, agent_server, free_port, get_through_port_forward, require, wait_for

CONTAINERD = Path("/usr/bin/containerd")
CNI_BIN = Path("/usr/lib/cni")
# Apart from the built-in network's 10.42.0.0/16, so a node agent of another test on this host
# does not share addresses with this one.
CLUSTER_CIDR = "10.77.0.0/16"
# The bridge the agent's CNI configuration names (crates/network/src/runtime_cni.rs).
BRIDGE = "tug-cri0"


class Containerd:
    """A private containerd: config, root, state, sockets and runc state under `workdir`."""

    def __init__(self, workdir: Path, registry: str, sandbox_image: str, tls_registry: tuple[str, Path]):
        self.dir = workdir
        self.cni_conf_dir = workdir / "net.d"
        self.socket = workdir / "containerd.sock"
        # containerd's per-registry settings: plain HTTP for one, the test CA for the other.
        hosts = workdir / "certs.d" / registry
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(
            f'server = "http://{registry}"\n[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        address, ca = tls_registry
        hosts = workdir / "certs.d" / address
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(
            f'server = "https://{address}"\n[host."https://{address}"]\n'
            f'  capabilities = ["pull", "resolve"]\n  ca = "{ca}"\n'
        )
        d = workdir
        (workdir / "config.toml").write_text(f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "{free_port()}"
  # Pods' network namespaces pinned under the state directory, where stop() unmounts them.
  netns_mounts_under_state_dir = true
  # This host may not lower oom_score_adj below the test's own: clamp instead of failing.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.cni_conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
""")  # fmt: skip
        self.log = workdir / "containerd.log"
        self.process = subprocess.Popen(
            [str(CONTAINERD), "--config", str(workdir / "config.toml")],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip

        def up():
            if self.process.poll() is not None:
                pytest.fail(f"containerd exited: {self.log.read_text()[-3000:]}")
            return self.socket.exists()

        wait_for(up, "containerd's socket", timeout=20)

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def stop(self) -> None:
        """Stops containerd and removes what it left: containers (runc), shims, mounts, the bridge."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        runc_root = str(self.dir / "runc" / "k8s.io")
        listed = subprocess.run(["runc", "--root", runc_root, "list", "-q"], capture_output=True, text=True)
        for container in listed.stdout.split():
            subprocess.run(["runc", "--root", runc_root, "delete", "--force", container], capture_output=True)
        shims = subprocess.run(["pgrep", "-f", f"containerd-shim.*{self.dir}"], capture_output=True, text=True)
        for pid in shims.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(str(self.dir))), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory, test_images, plain_registry, auth_registry):  # noqa: F811
    require(os.geteuid() == 0, "containerd runs containers: needs root")
    require(CONTAINERD.is_file(), f"{CONTAINERD} missing: apt-get install containerd (scripts/install-test-deps.sh)")
    require((CNI_BIN / "bridge").is_file(), f"no CNI plugins in {CNI_BIN}: install containernetworking-plugins")
    layout = pause_image(test_images, tmp_path_factory.mktemp("pause"))
    pause = f"{plain_registry.address}/tugboat.test/pause:1"
    run_checked("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:pause", f"docker://{pause}")
    tls_registry = (auth_registry.address, auth_registry.ca_file)
    runtime = Containerd(tmp_path_factory.mktemp("containerd"), plain_registry.address, pause, tls_registry)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry, containerd):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    args = [
        "--container-runtime-endpoint", containerd.endpoint,
        "--cni-conf-dir", str(containerd.cni_conf_dir),
        "--cluster-cidr", CLUSTER_CIDR,
        # Services are not what this file tests; another test's proxy may own this host's rules.
        "--disable-kube-proxy",
    ]  # fmt: skip
    with agent_server(tug_binary(), tmp_path_factory.mktemp("agent"), image, extra_args=args) as server:
        yield server


def kubectl_for(node, version: str) -> Kubectl:
    binary = TOOLS_BIN / f"kubectl-{version}"
    require(binary.exists(), f"{binary} missing: run scripts/install-test-deps.sh")
    return Kubectl.for_version(version, binary, node)


@pytest.fixture
def k(node) -> Kubectl:
    return kubectl_for(node, "1.36")


@pytest.fixture(params=["1.36", "1.27"], ids=lambda v: f"kubectl-{v}")
def kubectl(request, node) -> Kubectl:
    """kubectl 1.36 (WebSocket, SPDY as fallback) and 1.27 (SPDY only)."""
    return kubectl_for(node, request.param)


@pytest.fixture(scope="module")
def web(node) -> str:
    """A pod serving a page on 8080 and printing a tick every 0.3 s."""
    name = "cri-web"
    script = (
        "mkdir -p /www && echo hello over containerd > /www/index.html && httpd -p 8080 -h /www && "
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"
    )
    kubectl_for(node, "1.36")("run", name, f"--image={node.image}", "--restart=Never", "--", "sh", "-c", script)
    running(node, name)
    return name


def pod(node, name: str) -> dict | None:
    resp = node.request("GET", f"/api/v1/namespaces/default/pods/{name}")
    return resp.json() if resp.status == 200 else None


def running(node, name: str) -> dict:
    def check():
        p = pod(node, name)
        return p if p and p.get("status", {}).get("phase") == "Running" else None

    return wait_for(check, f"pod {name} to run", timeout=60)


def test_the_agent_writes_containerds_cni_config_for_the_pod_cidr(node, containerd):
    config = json.loads((containerd.cni_conf_dir / "10-tug.conflist").read_text())
    pod_cidr = node.request("GET", f"/api/v1/nodes/{node.node_name}").json()["spec"]["podCIDR"]
    assert ipaddress.ip_network(pod_cidr).subnet_of(ipaddress.ip_network(CLUSTER_CIDR))
    assert config["plugins"][0]["ipam"]["ranges"] == [[{"subnet": pod_cidr}]]


def test_a_pod_runs_in_containerd_with_logs_exec_and_delete(node, k):
    name = "cri-hello"
    k("run", name, f"--image={node.image}", "--restart=Never", "--",
      "sh", "-c", "echo hello from containerd; exec sleep 3600")  # fmt: skip
    status = running(node, name)["status"]
    assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network(CLUSTER_CIDR)
    container = status["containerStatuses"][0]
    assert container["ready"] and container["state"].get("running"), container
    assert container["imageID"].startswith(f"{node.image.rsplit(':', 1)[0]}@sha256:"), container
    # Upstream's `<runtime name>://<id>`, the name from CRI Version.
    assert container["containerID"].startswith("containerd://"), container
    wait_for(lambda: k("logs", name).stdout == "hello from containerd\n", "the pod's log")
    exec_ok = k("exec", name, "--", "sh", "-c", "echo out; hostname")
    assert exec_ok.stdout == f"out\n{name}\n"
    failed = k("exec", name, "--", "sh", "-c", "exit 7", check=False)
    assert failed.returncode == 7, failed
    k("delete", "pod", name, "--grace-period=1")
    wait_for(lambda: pod(node, name) is None, "the pod to be gone", timeout=60)


def test_a_failing_container_reports_its_exit_code(node, k):
    name = "cri-exit"
    k("run", name, f"--image={node.image}", "--restart=Never", "--", "sh", "-c", "echo bye; exit 3")

    def terminated():
        p = pod(node, name)
        statuses = (p or {}).get("status", {}).get("containerStatuses") or []
        return statuses and statuses[0]["state"].get("terminated")

    state = wait_for(terminated, "the container to end", timeout=60)
    assert (state["exitCode"], state["reason"]) == (3, "Error"), state
    assert pod(node, name)["status"]["phase"] == "Failed"
    assert k("logs", name).stdout == "bye\n"
    k("delete", "pod", name, "--grace-period=0", "--force")


def test_exec_passes_stdin_output_and_exit_codes(node, web, kubectl):
    out = kubectl("exec", web, "--", "sh", "-c", "echo out; echo err >&2")
    assert (out.stdout, out.stderr) == ("out\n", "err\n")
    failed = kubectl("exec", web, "--", "sh", "-c", "exit 4", check=False)
    assert failed.returncode == 4, failed
    piped = kubectl("exec", "-i", web, "--", "cat", input="through stdin\n")
    assert piped.stdout == "through stdin\n"


def test_exec_with_a_tty(node, web, kubectl):
    # `script` gives kubectl a terminal of its own, so -t is honoured.
    command = f"{kubectl.binary} --kubeconfig {kubectl.kubeconfig} exec -it {web} -- sh -c 'tty; exit 5'"
    result = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=60)
    assert "/dev/pts/" in result.stdout, result
    assert result.returncode == 5, result


def test_attach_and_port_forward(node, web, kubectl):
    attached = kubectl.start("attach", web)
    try:
        attached.wait_for_line(lambda line: line.startswith("tick "), timeout=20)
    finally:
        attached.stop()
    assert get_through_port_forward(kubectl, web, 8080) == "hello over containerd\n"


def test_an_unreachable_runtime_endpoint_stops_the_server_with_a_clear_error(tmp_path):
    missing = tmp_path / "no-such.sock"
    result = subprocess.run(
        [str(tug_binary()), "server", "--data-dir", str(tmp_path / "data"), "--https-listen-port", str(free_port()),
         "--bind-address", "127.0.0.1", "--node-name", "cri-missing", "--kubelet-port", str(free_port()),
         "--disable-kube-proxy", "--container-runtime-endpoint", f"unix://{missing}"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"connecting to the container runtime at {missing}" in result.stderr, result.stderr[-2000:]


def test_pull_secrets_reach_containerd_as_credentials(node, k, auth_registry):  # noqa: F811
    image = f"{auth_registry.address}/tugboat.test/busybox:1"
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config = json.dumps({"auths": {auth_registry.address: {"auth": auth}}})
    node.create("/api/v1/namespaces/default/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    })  # fmt: skip

    def pod_with(name: str, secrets: list[dict]) -> None:
        node.create("/api/v1/namespaces/default/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "imagePullSecrets": secrets,
                     "containers": [{"name": "main", "image": image, "imagePullPolicy": "Always",
                                     "command": ["echo", "pulled with a secret"]}]},
        })  # fmt: skip

    pod_with("cri-secret", [{"name": "regcred"}])
    pod_with("cri-nosecret", [])
    wait_for(lambda: (pod(node, "cri-secret") or {}).get("status", {}).get("phase") == "Succeeded", "the pull", timeout=60)
    assert k("logs", "cri-secret").stdout == "pulled with a secret\n"

    def refused():
        statuses = (pod(node, "cri-nosecret") or {}).get("status", {}).get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return waiting if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") else None

    waiting = wait_for(refused, "the anonymous pull to be refused", timeout=60)
    assert "401" in waiting.get("message", "") or "nauthorized" in waiting.get("message", ""), waiting
    k("delete", "pod", "cri-secret", "cri-nosecret", "--grace-period=0", "--force")


def test_the_node_reports_containerd_as_its_runtime(node):
    info = node.request("GET", f"/api/v1/nodes/{node.node_name}").json()["status"]["nodeInfo"]
    runtime, _, version = info["containerRuntimeVersion"].partition("://")
    assert runtime == "containerd" and version[:1].isdigit(), info


def test_a_privileged_container_runs_with_every_capability(node, k):
    name = "cri-privileged"
    node.create("/api/v1/namespaces/default/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [
            {"name": "main", "image": node.image, "command": ["sh", "-c", "grep CapEff /proc/self/status; sleep 3600"],
             "securityContext": {"privileged": True}},
        ]},
    })  # fmt: skip
    running(node, name)
    line = wait_for(lambda: k("logs", name).stdout.strip(), "the capabilities in the log")
    effective = int(line.split()[1], 16)
    # A privileged container gets every capability containerd has (ours: the test runs as
    # root), CAP_SYS_ADMIN (21) among them, which no runtime's default set includes.
    ours = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("CapEff:"))
    assert effective & (1 << 21), line
    assert effective == int(ours.split()[1], 16), (line, ours)
    k("delete", "pod", name, "--grace-period=0", "--force")


def test_a_log_past_its_size_limit_is_rotated_and_logs_keep_following(node, k):
    """The kubelet rotates a CRI runtime's log at --container-log-max-size (10Mi): the file is
    renamed to `0.log.<YYYYMMDD-HHMMSS>`, containerd reopens it, and `kubectl logs -f` follows
    into the new file."""
    name = "cri-rotate"
    payload = "x" * 1000
    script = f"yes {payload} | head -n 11000; i=0; while true; do i=$((i+1)); echo after $i; sleep 0.2; done"
    k("run", name, f"--image={node.image}", "--restart=Never", "--", "sh", "-c", script)
    uid = running(node, name)["metadata"]["uid"]
    log_dir = node.data_dir / "agent" / "pods" / f"default_{name}_{uid}" / name
    follower = k.start("logs", "-f", name)
    try:
        # The whole payload arrives before the rotation can take it away.
        follower.wait_for_line(lambda line: line.startswith("after "), timeout=60)
        rotated = wait_for(lambda: sorted(log_dir.glob("0.log.*")), "the log to be rotated", timeout=30)
        assert len(rotated) == 1 and len(rotated[0].name) == len("0.log.20260101-000000"), rotated
        assert rotated[0].stat().st_size >= 10 << 20
        assert (log_dir / "0.log").stat().st_size < 1 << 20
        # Lines written after the rotation reach the follower and a new reader.
        # The new file is empty until the container's next line (every 0.2 s).
        last = wait_for(lambda: k("logs", "--tail=1", name).stdout.split(), "a line in the new log", timeout=10)
        counted = int(last[1])
        follower.wait_for_line(lambda line: line == f"after {counted + 3}", timeout=20)
        assert payload not in k("logs", name).stdout, "the rotated content is no longer the current log"
    finally:
        follower.stop()
    k("delete", "pod", name, "--grace-period=0", "--force")
