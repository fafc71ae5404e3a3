"""Network faults on a three-node `tug dev cluster` (issue 7, point 6): a node agent restarted, a
node's link cut and restored, pods churned, a node removed. Routes, neighbour and FDB entries
converge again, no pod gets another pod's address and none leaks.

Its own dev network (172.30.20.0/24, nodes tug-faults-<i>) so that it can run beside the other
dev cluster tests."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from support import TOOLS_BIN, require, wait_for
from registry import run_checked, test_images, tug_binary  # noqa: F401
from test_dev_cluster import DevCluster, down_leaving_nothing, in_node, run_pod, web

NODES = 3
NAME = "tug-faults"
NET = "172.30.20"  # the bridge is .1, node i is .(2+i)
IMAGE = "tugboat.test/busybox:1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require(os.geteuid() == 0, "a dev cluster needs root (network namespaces, bridges, containers)")
    require((TOOLS_BIN / "kubectl-1.36").is_file(), f"no kubectl-1.36 in {TOOLS_BIN}")
    cluster = DevCluster(tmp_path_factory.mktemp("faults-cluster") / "c", tug_binary())
    try:
        up = cluster.tug(
            "up", "--nodes", str(NODES), "--dir", str(cluster.dir), "--name", NAME, "--subnet", f"{NET}.0/24",
        )  # fmt: skip
        assert up.returncode == 0, f"up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-5000:]}"
        yield cluster
    finally:
        # Everything must go, including what nodes stopped and started again left behind.
        down_leaving_nothing(cluster)


@pytest.fixture(scope="module")
def image(cluster, test_images, tmp_path_factory) -> str:  # noqa: F811
    archive = tmp_path_factory.mktemp("faults-image") / "busybox.tar"
    run_checked("skopeo", "copy", f"oci:{test_images}:1", f"oci-archive:{archive}:{IMAGE}")
    loaded = cluster.tug("load-image", "--dir", str(cluster.dir), str(archive))
    assert loaded.returncode == 0, loaded.stderr
    return IMAGE


def node_name(i: int) -> str:
    return f"{NAME}-{i}"


def fetch(cluster: DevCluster, pod: str, url: str, seconds: int = 3) -> str | None:
    """The body `pod` gets from `url`, or None. Bounded: an unreachable address must not hang
    (busybox wget's own -T crashes in the test image, hence timeout(1))."""
    out = cluster.kubectl("exec", pod, "--", "timeout", str(seconds), "wget", "-q", "-O", "-", url, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def from_node(cluster: DevCluster, node: int, url: str) -> str | None:
    netns = cluster.dir / "nodes" / str(node) / "netns"
    out = subprocess.run(["nsenter", f"--net={netns}", "curl", "-sf", "-m", "3", url], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def addresses(cluster: DevCluster, node: int, link: str) -> list[str]:
    out = in_node(cluster, node, "ip", "-o", "-4", "addr", "show", "dev", link)
    return [line.split()[3] for line in out.splitlines()]


def get(cluster: DevCluster, *what: str) -> dict:
    return json.loads(cluster.kubectl("get", *what, "-o", "json").stdout)


def is_ready(cluster: DevCluster, node: str) -> bool:
    out = cluster.kubectl("get", "node", node, "-o", "json", check=False)
    if out.returncode != 0:
        return False
    conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def dev(cluster: DevCluster, command: str, node: int) -> None:
    result = cluster.tug(command, "--dir", str(cluster.dir), "--node", str(node))
    assert result.returncode == 0, f"{command} --node {node} failed ({result.returncode}):\n{result.stderr[-3000:]}"


def node_state(cluster: DevCluster, node: int) -> dict:
    return json.loads((cluster.dir / "cluster.json").read_text())["nodes"][node]


def tug_processes(cluster: DevCluster, node: int) -> list[int]:
    """The `tug server|agent` processes running with node `node`'s data directory."""
    data_dir = str(cluster.dir / "nodes" / str(node))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if len(argv) > 3 and argv[1] in ("server", "agent") and data_dir in argv:
            found.append(int(proc.name))
    return found


def overlay_routes(cluster: DevCluster, node: int, cidr: str) -> list[str]:
    return [line for line in in_node(cluster, node, "ip", "route").splitlines() if line.startswith(f"{cidr} ")]


def node_network(cluster: DevCluster, name: str) -> tuple[str, str, str]:
    """A node's podCIDR, VTEP MAC and public IP, from its spec and flannel annotations."""
    node = get(cluster, "node", name)
    ann = node["metadata"]["annotations"]
    mac = json.loads(ann["flannel.alpha.coreos.com/backend-data"])["VtepMAC"]
    return node["spec"]["podCIDR"], mac.lower(), ann["flannel.alpha.coreos.com/public-ip"]


def overlay_entries(cluster: DevCluster, node: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Node `node`'s neighbour entries (address, MAC) and FDB entries (MAC, destination) on flannel.1."""
    neigh = set()
    for line in in_node(cluster, node, "ip", "neigh", "show", "dev", "flannel.1").splitlines():
        fields = line.split()
        if "lladdr" in fields:
            neigh.add((fields[0], fields[fields.index("lladdr") + 1].lower()))
    fdb = set()
    for line in in_node(cluster, node, "bridge", "fdb", "show", "dev", "flannel.1").splitlines():
        fields = line.split()
        if "dst" in fields:
            fdb.add((fields[0].lower(), fields[fields.index("dst") + 1]))
    return neigh, fdb


def test_an_agent_restart_keeps_pods_their_addresses_and_routes(cluster, image):
    server = web(cluster, "web-r", node_name(1), image)
    ip = server["status"]["podIP"]
    started_at = server["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    run_pod(cluster, "client-r", node_name(2), "exec sleep 3600", image)
    assert wait_for(lambda: fetch(cluster, "client-r", f"http://{ip}:8080/"), "web-r from node 2") == "web-r"
    cidr1 = get(cluster, "node", node_name(1))["spec"]["podCIDR"]

    dev(cluster, "stop-node", 1)
    assert tug_processes(cluster, 1) == []
    assert node_state(cluster, 1)["stopped"] is True
    dev(cluster, "stop-node", 1)  # idempotent
    # The data plane does not need the agent: the pod keeps running and answering.
    assert fetch(cluster, "client-r", f"http://{ip}:8080/") == "web-r"

    dev(cluster, "start-node", 1)
    dev(cluster, "start-node", 1)  # idempotent: still one process
    assert len(tug_processes(cluster, 1)) == 1
    assert node_state(cluster, 1)["stopped"] is False
    wait_for(lambda: is_ready(cluster, node_name(1)), "node 1 Ready after the restart", timeout=30)

    # The runtime adopted the running container instead of starting it again...
    pod = get(cluster, "pod", "web-r")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and status["state"]["running"]["startedAt"] == started_at
    # ...and it kept its address, in the API and inside the pod.
    assert pod["status"]["podIP"] == ip
    assert f"inet {ip}/" in cluster.kubectl("exec", "web-r", "--", "ip", "-4", "addr", "show", "eth0").stdout
    assert wait_for(lambda: fetch(cluster, "client-r", f"http://{ip}:8080/"), "web-r after the restart") == "web-r"
    # The restarted agent's overlay did not duplicate what the other nodes already had.
    routes = overlay_routes(cluster, 0, cidr1)
    assert len(routes) == 1 and "dev flannel.1" in routes[0], routes


def test_a_cut_link_isolates_the_node_until_it_is_restored(cluster, image):
    ip = web(cluster, "web-l", node_name(1), image)["status"]["podIP"]
    run_pod(cluster, "client-l", node_name(2), "exec sleep 3600", image)
    assert wait_for(lambda: fetch(cluster, "client-l", f"http://{ip}:8080/"), "web-l from node 2") == "web-l"

    netns = str(cluster.dir / "nodes" / "1" / "netns")

    def link(state: str) -> None:
        subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "set", "eth0", state], check=True)

    link("down")
    try:
        assert fetch(cluster, "client-l", f"http://{ip}:8080/") is None
    finally:
        link("up")
        # The kernel drops the default route with the link; a real host's network manager would
        # add it back, here that is us. (The overlay's own routes are onlink and stay.)
        if not any(r.startswith("default ") for r in in_node(cluster, 1, "ip", "route").splitlines()):
            default = ["ip", "route", "add", "default", "via", f"{NET}.1"]
            subprocess.run(["nsenter", f"--net={netns}", *default], check=True)
    assert wait_for(lambda: fetch(cluster, "client-l", f"http://{ip}:8080/"), "web-l after the link is back") == "web-l"
    wait_for(lambda: is_ready(cluster, node_name(1)), "node 1 Ready after the link is back", timeout=30)


def pod_manifest(name: str, node: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"test": "ipam"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}],
        },
    }  # fmt: skip


def create_pods(cluster: DevCluster, names: list[str]) -> None:
    items = [pod_manifest(n, node_name(int(n.rsplit("-", 1)[1]) % NODES)) for n in names]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def all_running():
        pods = get(cluster, "pods", "-l", "test=ipam")["items"]
        running = {
            p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")
        }  # fmt: skip
        return set(names) <= running

    wait_for(all_running, f"pods {names} running", timeout=90)


def pod_network_pods(cluster: DevCluster) -> list[dict]:
    """Every pod that has (or is about to have) an address on its node's pod network."""
    return [p for p in get(cluster, "pods", "-A")["items"] if not p["spec"].get("hostNetwork")]


def ipam_addresses(cluster: DevCluster, node: int) -> set[str]:
    """The addresses node `node`'s IPAM store holds (every range it has used)."""
    store = cluster.dir / "nodes" / str(node) / "agent" / "network" / "ipam"
    held = set()
    for entry in store.glob("*/*"):
        if entry.name == "lock" or entry.name.startswith("last_reserved_ip"):
            continue
        ipaddress.ip_address(entry.name)  # anything else there is a bug too
        held.add(entry.name)
    return held


def cni0_veths(cluster: DevCluster, node: int) -> int:
    return len(in_node(cluster, node, "ip", "-o", "link", "show", "master", "cni0").splitlines())


def network_matches_pods(cluster: DevCluster):
    """Per node: (IPAM addresses, addresses of its pods, veths on cni0, its pod count), or None
    while they disagree."""
    pods = pod_network_pods(cluster)
    seen = []
    for i in range(NODES):
        mine = [p for p in pods if p["spec"].get("nodeName") == node_name(i)]
        ips = {p["status"]["podIP"] for p in mine if p["status"].get("podIP")}
        held, veths = ipam_addresses(cluster, i), cni0_veths(cluster, i)
        seen.append((held, ips, veths, len(mine)))
        if held != ips or veths != len(mine) or len(ips) != len(mine):
            return None
    return seen


def test_churned_pods_never_share_an_address_and_leak_none(cluster, image):
    create_pods(cluster, [f"ipam-{k}" for k in range(10)])
    cluster.kubectl("delete", "pod", *[f"ipam-{k}" for k in range(0, 10, 2)], "--wait=true")
    create_pods(cluster, [f"ipam-{k}" for k in range(10, 15)])

    ips = [p["status"]["podIP"] for p in pod_network_pods(cluster) if p["status"].get("phase") == "Running"]
    assert len(ips) == len(set(ips)), sorted(ips)
    # Each node's IPAM store holds exactly its pods' addresses, and cni0 one veth per pod.
    wait_for(lambda: network_matches_pods(cluster), "IPAM stores and veths to match the pods", timeout=30)

    cluster.kubectl("delete", "pods", "--all", "-n", "default", "--wait=true")
    wait_for(
        lambda: all(not ipam_addresses(cluster, i) and cni0_veths(cluster, i) == 0 for i in range(NODES)),
        "no addresses held and no veths once every pod is gone", timeout=30,
    )  # fmt: skip


def test_a_removed_node_leaves_no_overlay_entries_and_comes_back(cluster, image):
    gone = node_name(2)
    cidr, mac, public_ip = node_network(cluster, gone)
    others = [0, 1]
    for i in others:
        assert (ipaddress.ip_network(cidr).network_address.compressed, mac) in overlay_entries(cluster, i)[0]
        assert (mac, public_ip) in overlay_entries(cluster, i)[1]
    # A running agent registers its node again within a second, with the same VTEP MAC, so the
    # window in which the MAC is gone is too short to observe: stop the agent first.
    dev(cluster, "stop-node", 2)
    cluster.kubectl("delete", "node", gone, "--wait=true")

    def forgotten(i: int) -> bool:
        neigh, fdb = overlay_entries(cluster, i)
        return (
            not overlay_routes(cluster, i, cidr)
            and not any(m == mac for _, m in neigh)
            and not any(m == mac for m, _ in fdb)
        )

    for i in others:
        what = f"node {i} to drop the removed node's route, neighbour and FDB entry"
        wait_for(lambda: forgotten(i), what, timeout=20)

    # The agent registers the node again by itself once it runs.
    dev(cluster, "start-node", 2)
    wait_for(lambda: is_ready(cluster, gone), "the removed node registered again and Ready", timeout=60)
    new_cidr, new_mac, _ = node_network(cluster, gone)

    def converged(i: int) -> bool:
        # Exactly the current other nodes' entries: nothing stale of the old registration.
        want_neigh, want_fdb = set(), set()
        for j in range(NODES):
            if j != i:
                c, m, pub = node_network(cluster, node_name(j))
                want_neigh.add((ipaddress.ip_network(c).network_address.compressed, m))
                want_fdb.add((m, pub))
        neigh, fdb = overlay_entries(cluster, i)
        routes = overlay_routes(cluster, i, new_cidr)
        return (neigh, fdb) == (want_neigh, want_fdb) and len(routes) == 1 and (neigh, fdb)

    for i in others:
        wait_for(lambda: converged(i), f"node {i}'s overlay to hold exactly the current nodes", timeout=20)
    if new_cidr != cidr:
        assert not overlay_routes(cluster, 0, cidr)

    ip = web(cluster, "web-back", gone, image)["status"]["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(new_cidr)
    ip0 = web(cluster, "web-0", node_name(0), image)["status"]["podIP"]
    assert wait_for(lambda: fetch(cluster, "web-0", f"http://{ip}:8080/"), "web-back from node 0") == "web-back"
    # The node's own namespace reaches the other nodes' pods too: traffic it originates leaves
    # flannel.1 from the address of its current podCIDR, which the others route back to it.
    reached = wait_for(lambda: from_node(cluster, 2, f"http://{ip0}:8080/"), "node 2's host to reach web-0", timeout=10)
    assert reached == "web-0"
    # Nothing of the old podCIDR stays on the node: an old connected route would capture the
    # traffic for whichever node gets that range next.
    gateway = ipaddress.ip_network(new_cidr).network_address + 1
    assert addresses(cluster, 2, "cni0") == [f"{gateway}/{ipaddress.ip_network(new_cidr).prefixlen}"]
    assert addresses(cluster, 2, "flannel.1") == [f"{ipaddress.ip_network(new_cidr).network_address}/32"]


def test_the_control_plane_node_restarts_and_the_cluster_carries_on(cluster, image):
    ip = web(cluster, "web-s", node_name(2), image)["status"]["podIP"]
    run_pod(cluster, "client-s", node_name(1), "exec sleep 3600", image)
    assert wait_for(lambda: fetch(cluster, "client-s", f"http://{ip}:8080/"), "web-s from node 1") == "web-s"

    dev(cluster, "stop-node", 0)
    assert tug_processes(cluster, 0) == []
    assert cluster.kubectl("get", "nodes", check=False).returncode != 0  # no API server
    # The overlay keeps working without the control plane (exec needs the API server, so the
    # request comes from node 1's own namespace).
    assert from_node(cluster, 1, f"http://{ip}:8080/") == "web-s"

    dev(cluster, "start-node", 0)
    # start-node returns once the API answers.
    assert cluster.kubectl("get", "nodes", check=False).returncode == 0
    for i in range(NODES):
        wait_for(lambda: is_ready(cluster, node_name(i)), f"node {i} Ready after the server restart", timeout=30)
    assert get(cluster, "pod", "web-s")["status"]["podIP"] == ip
    assert fetch(cluster, "client-s", f"http://{ip}:8080/") == "web-s"
