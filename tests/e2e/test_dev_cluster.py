"""`tug dev cluster up|load-image|down`: a real three-node cluster on this machine (kind's role),
one network namespace per node on a bridge, used from the test's own namespace with kubectl."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import TOOLS_BIN, require, wait_for
from registry import run_checked, test_images, tug_binary  # noqa: F401

NODES = 3
NAME = "tug-dev"


@dataclass
class DevCluster:
    dir: Path
    binary: Path

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig.yaml"

    def tug(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.binary), "dev", "cluster", *args], capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        result = subprocess.run(
            [str(TOOLS_BIN / "kubectl-1.36"), "--kubeconfig", str(self.kubeconfig),
             "--cache-dir", str(self.dir.parent / "kubectl-cache"), *args],
            input=input, capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


def leftovers(cluster_dir: Path) -> dict[str, list[str]]:
    """What of a cluster is still on the machine: mounts under its directory, its links (the
    bridge and veths named after the directory, per cluster.json) and processes naming it."""
    marker = str(cluster_dir)
    mounts = [
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(marker)
    ]  # fmt: skip
    processes = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                processes.append(proc.name)
        except OSError:
            pass
    return {"mounts": mounts, "processes": processes}


def pod_cgroups(uids: list[str]) -> list[str]:
    """The cgroups left of the given pods, in any hierarchy (kubepods/[qos/]pod<uid>)."""
    found = []
    for root in Path("/sys/fs/cgroup").iterdir():
        for uid in uids:
            found += [str(p) for p in root.glob(f"kubepods/pod{uid}")] + [str(p) for p in root.glob(f"kubepods/*/pod{uid}")]
    return found


def links_named(prefixes: list[str]) -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if any(n.startswith(p) for p in prefixes)]


def down_leaving_nothing(cluster: DevCluster) -> None:
    """`tug dev cluster down`, then nothing of the cluster may be left: no mount under its
    directory, no process naming it, no cgroup of its pods, none of its links."""
    state_file = cluster.dir / "cluster.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    pods = cluster.kubectl("get", "pods", "-A", "-o", "json", check=False).stdout
    uids = [p["metadata"]["uid"] for p in json.loads(pods)["items"]] if pods else []
    down = cluster.tug("down", "--dir", str(cluster.dir))
    assert down.returncode == 0, f"down failed ({down.returncode}):\n{down.stderr[-3000:]}"
    assert leftovers(cluster.dir) == {"mounts": [], "processes": []}
    assert pod_cgroups(uids) == []
    if state:
        assert links_named([state["bridge"]] + [n["host_veth"] for n in state["nodes"]]) == []


@pytest.fixture(scope="module")
def dev_cluster(tmp_path_factory):
    require(os.geteuid() == 0, "a dev cluster needs root (network namespaces, bridges, containers)")
    require((TOOLS_BIN / "kubectl-1.36").is_file(), f"no kubectl-1.36 in {TOOLS_BIN}")
    cluster = DevCluster(tmp_path_factory.mktemp("dev-cluster") / "c", tug_binary())
    try:
        up = cluster.tug("up", "--nodes", str(NODES), "--dir", str(cluster.dir), "--name", NAME)
        assert up.returncode == 0, f"up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-5000:]}"
        assert f"kubeconfig: {cluster.kubeconfig}" in up.stdout
        yield cluster
    finally:
        down_leaving_nothing(cluster)


def test_all_nodes_are_ready_with_their_own_address_and_pod_cidr(dev_cluster):
    nodes = json.loads(dev_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert sorted(by_name) == [f"{NAME}-{i}" for i in range(NODES)]
    cidrs = set()
    for i in range(NODES):
        node = by_name[f"{NAME}-{i}"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["status"]["conditions"]
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal == [f"172.30.0.{2 + i}"]
        cidrs.add(node["spec"]["podCIDR"])
    assert len(cidrs) == NODES, cidrs


@pytest.fixture(scope="module")
def image(dev_cluster, test_images, tmp_path_factory) -> str:  # noqa: F811
    """The busybox test image, loaded into every node as `kind load` would."""
    archive = tmp_path_factory.mktemp("image") / "busybox.tar"
    run_checked("skopeo", "copy", f"oci:{test_images}:1", f"oci-archive:{archive}:tugboat.test/busybox:1")
    loaded = dev_cluster.tug("load-image", "--dir", str(dev_cluster.dir), str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert "imported tugboat.test/busybox:1" in loaded.stdout
    return "tugboat.test/busybox:1"


def test_a_loaded_image_runs_on_a_joined_node_with_logs_and_exec(dev_cluster, image):
    node = f"{NAME}-2"
    manifest = f"""
apiVersion: v1
kind: Pod
metadata: {{name: hello, namespace: default}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: tugboat.test/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello from $(hostname); exec sleep 3600"]
"""
    dev_cluster.kubectl("apply", "-f", "-", input=manifest)

    def phase():
        pod = json.loads(dev_cluster.kubectl("get", "pod", "hello", "-o", "json").stdout)
        return pod["status"].get("phase") == "Running" and pod

    pod = wait_for(phase, "the pod to run on the joined node", timeout=60)
    assert pod["spec"]["nodeName"] == node
    # Logs and exec are proxied by the API server on node 0 to node 2's agent over the bridge.
    logs = wait_for(lambda: dev_cluster.kubectl("logs", "hello", check=False).stdout, "the pod's logs")
    assert logs.strip() == "hello from hello"
    exec_ = dev_cluster.kubectl("exec", "hello", "--", "sh", "-c", "echo exec-ok; hostname")
    assert exec_.stdout.split() == ["exec-ok", "hello"]


# --- the pod network across nodes ------------------------------------------------------------


def run_pod(cluster: DevCluster, name: str, node: str, command: str, image: str, **spec) -> dict:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "main", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", command],
                 **spec.pop("container", {})},
            ],
            **spec,
        },
    }  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def running():
        pod = json.loads(cluster.kubectl("get", "pod", name, "-o", "json").stdout)
        status = pod.get("status", {})
        return status.get("phase") == "Running" and status.get("podIP") and pod

    return wait_for(running, f"pod {name} running on {node}", timeout=60)


def web(cluster: DevCluster, name: str, node: str, image: str, port: int = 8080, **spec) -> dict:
    script = f"mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p {port} -h /www"
    return run_pod(cluster, name, node, script, image, **spec)


def fetch(cluster: DevCluster, pod: str, url: str) -> str | None:
    out = cluster.kubectl("exec", pod, "--", "wget", "-q", "-O", "-", url, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def in_node(cluster: DevCluster, node: int, *command: str) -> str:
    """Runs a command in node `node`'s network namespace (as if logged in on that host)."""
    netns = cluster.dir / "nodes" / str(node) / "netns"
    return subprocess.run(["nsenter", f"--net={netns}", *command], capture_output=True, text=True, check=True).stdout


def test_nodes_publish_flannel_annotations(dev_cluster):
    nodes = json.loads(dev_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    for node in nodes:
        ann = node["metadata"]["annotations"]
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"][0]
        assert ann["flannel.alpha.coreos.com/backend-type"] == "vxlan"
        assert ann["flannel.alpha.coreos.com/public-ip"] == internal
        assert ann["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
        data = json.loads(ann["flannel.alpha.coreos.com/backend-data"])
        assert data["VNI"] == 1 and len(data["VtepMAC"].split(":")) == 6


def test_pods_on_different_nodes_reach_each_other(dev_cluster, image):
    server = web(dev_cluster, "web-1", f"{NAME}-1", image)
    ip = server["status"]["podIP"]
    for node in (0, 2):
        client = run_pod(dev_cluster, f"client-{node}", f"{NAME}-{node}", "exec sleep 3600", image)
        assert client["status"]["podIP"] != ip
        # TCP across the VXLAN overlay, by the pod's IP.
        body = wait_for(lambda: fetch(dev_cluster, f"client-{node}", f"http://{ip}:8080/"), f"node {node} to reach web-1")
        assert body == "web-1"
        # ICMP too.
        ping = dev_cluster.kubectl("exec", f"client-{node}", "--", "ping", "-c", "1", "-W", "2", ip, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    # Both ends of the pod's veth carry the overlay's MTU: the wire's 1500 less VXLAN's 50.
    assert "mtu 1450" in dev_cluster.kubectl("exec", "client-0", "--", "ip", "link", "show", "eth0").stdout
    # The node's own namespace reaches the remote pod through flannel.1 as well.
    route = in_node(dev_cluster, 0, "ip", "route", "get", ip)
    assert "dev flannel.1" in route


def test_a_pod_reaches_a_host_network_pod_on_another_node(dev_cluster, image):
    web(dev_cluster, "hostnet-2", f"{NAME}-2", image, port=8081, hostNetwork=True)
    body = wait_for(lambda: fetch(dev_cluster, "client-0", "http://172.30.0.4:8081/"), "the hostNetwork pod")
    assert body == "hostnet-2"


def test_a_host_port_is_reached_on_its_nodes_address(dev_cluster, image):
    web(dev_cluster, "hostport-1", f"{NAME}-1", image, container={"ports": [{"containerPort": 8080, "hostPort": 30080}]})
    # From the machine's own namespace, through node 1's address on the dev network.
    body = wait_for(lambda: _get("http://172.30.0.3:30080/"), "the hostPort to answer")
    assert body == "hostport-1"
    # From a pod on another node, through the same address.
    assert wait_for(lambda: fetch(dev_cluster, "client-0", "http://172.30.0.3:30080/"), "hostPort from a pod") == "hostport-1"


def _get(url: str) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.read().decode().strip()
    except OSError:
        return None


def test_egress_leaves_with_the_nodes_address(dev_cluster, image):
    """A pod reaching outside the cluster's pod networks is masqueraded behind its node."""
    import socket

    with socket.socket() as listener:
        listener.bind(("172.30.0.1", 0))  # the dev network's bridge, in the test's own namespace
        listener.listen(1)
        listener.settimeout(30)
        port = listener.getsockname()[1]
        run_pod(dev_cluster, "egress-1", f"{NAME}-1", f"echo hi | nc 172.30.0.1 {port}; exec sleep 3600", image)
        conn, (peer, _) = listener.accept()
        conn.close()
    assert peer == "172.30.0.3"  # node 1's address, not the pod's


def test_the_overlay_follows_a_node_that_leaves_and_rejoins(dev_cluster, image):
    node2 = f"{NAME}-2"
    old_cidr = json.loads(dev_cluster.kubectl("get", "node", node2, "-o", "json").stdout)["spec"]["podCIDR"]
    assert f"{old_cidr} via" in in_node(dev_cluster, 0, "ip", "route")
    dev_cluster.kubectl("delete", "node", node2, "--wait=true")
    # The other nodes drop the route to its pods...
    wait_for(lambda: f"{old_cidr} via" not in in_node(dev_cluster, 0, "ip", "route"), "node 0 to drop the route")
    # ...and its agent registers it again (with a podCIDR of its own), and the overlay returns.
    wait_for(
        lambda: (n := json.loads(dev_cluster.kubectl("get", "node", node2, "-o", "json", check=False).stdout or "{}"))
        and n.get("spec", {}).get("podCIDR") and n,
        "node 2 to register again with a podCIDR", timeout=60,
    )  # fmt: skip
    server = web(dev_cluster, "web-back", node2, image)
    body = wait_for(lambda: fetch(dev_cluster, "client-0", f"http://{server['status']['podIP']}:8080/"), "web-back reachable")
    assert body == "web-back"
