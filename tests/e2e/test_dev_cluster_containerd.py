"""Two nodes driving containerd over CRI (`tug dev cluster up --container-runtime containerd`):
each node a network namespace running its own containerd (Debian's) beside `tug`, pods
networked by containerd's CNI call with the configuration the agent writes, and the VXLAN
overlay between the nodes. Pods on different nodes reach each other with their own addresses
(no masquerade inside the cluster), traffic leaving the cluster is masqueraded to the node's
address, and `down` leaves no process, mount or pod cgroup behind.

Needs root, containerd (with ctr), the CNI plugins and kubectl 1.36; under CI=true a missing
one fails."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from registry import pause_image, run_checked, test_images, tug_binary  # noqa: F401
from support import TOOLS_BIN, require, wait_for
from test_dev_cluster import DevCluster, down_leaving_nothing, in_node, run_pod

NAME = "tug-cri"
SUBNET = "172.30.72"
IMAGE = "tugboat.test/busybox:1"
PAUSE = "tugboat.test/pause:1"
CNI_BIN = Path("/usr/lib/cni")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, test_images):  # noqa: F811
    require(os.geteuid() == 0, "a dev cluster needs root")
    require(Path("/usr/bin/containerd").is_file(), "containerd missing: apt-get install containerd")
    require(shutil.which("ctr") is not None, "ctr missing (it comes with containerd)")
    require((CNI_BIN / "bridge").is_file(), f"no CNI plugins in {CNI_BIN}: install containernetworking-plugins")
    require((TOOLS_BIN / "kubectl-1.36").is_file(), f"no kubectl-1.36 in {TOOLS_BIN}")
    work = tmp_path_factory.mktemp("cri-dev")
    cluster = DevCluster(work / "c", tug_binary())
    try:
        up = cluster.tug(
            "up", "--nodes", "2", "--dir", str(cluster.dir), "--name", NAME, "--subnet", f"{SUBNET}.0/24",
            "--container-runtime", "containerd", "--sandbox-image", PAUSE, "--cni-bin-dir", str(CNI_BIN),
        )  # fmt: skip
        assert up.returncode == 0, f"up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-5000:]}"
        pause = pause_image(test_images, work / "pause")
        for layout, tag, name in [(test_images, "1", IMAGE), (pause, "pause", PAUSE)]:
            archive = work / f"{tag}.tar"
            run_checked("skopeo", "copy", f"oci:{layout}:{tag}", f"oci-archive:{archive}:{name}")
            loaded = cluster.tug("load-image", "--dir", str(cluster.dir), str(archive))
            assert loaded.returncode == 0, loaded.stderr
            assert f"imported {name}" in loaded.stdout, loaded.stdout
        yield cluster
    finally:
        down_leaving_nothing(cluster)


def peer_server(cluster: DevCluster, name: str, node: str) -> dict:
    """A pod whose page at /cgi-bin/peer is the address its client connected from."""
    script = (
        "mkdir -p /www/cgi-bin && "
        "printf '#!/bin/sh\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n%%s\\\\n\" \"$REMOTE_ADDR\"\\n' "
        "> /www/cgi-bin/peer && chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www"
    )
    return run_pod(cluster, name, node, script, IMAGE)


def http_get(cluster: DevCluster, pod: str, host: str, port: int, path: str) -> str | None:
    """The body of an HTTP/1.0 GET from inside `pod`, or None when it fails."""
    request = f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}"
    out = cluster.kubectl("exec", pod, "--", "sh", "-c", request, check=False)
    # Text mode has turned the response's CRLFs into newlines.
    if out.returncode != 0 or "\n\n" not in out.stdout:
        return None
    return out.stdout.split("\n\n", 1)[1].strip()


def test_nodes_run_containerd_and_publish_their_overlay(cluster):
    nodes = {n["metadata"]["name"]: n for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    assert sorted(nodes) == [f"{NAME}-0", f"{NAME}-1"]
    for i, node in enumerate(nodes.values()):
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://"), node["status"]
        annotations = node["metadata"]["annotations"]
        assert annotations["flannel.alpha.coreos.com/backend-type"] == "vxlan"
        assert annotations["flannel.alpha.coreos.com/public-ip"] == f"{SUBNET}.{2 + i}"
    # Node 0 routes node 1's pods through the VXLAN device, as flannel does.
    cidr1 = nodes[f"{NAME}-1"]["spec"]["podCIDR"]
    network1 = cidr1.split("/")[0]
    routes = in_node(cluster, 0, "ip", "route").splitlines()
    overlay = [r for r in routes if r.startswith(f"{cidr1} via {network1} dev flannel.1 ")]
    assert len(overlay) == 1 and "onlink" in overlay[0], routes
    # The configuration the agent wrote for containerd: the node's podCIDR, no masquerade by
    # the bridge plugin (the node's table does it), the overlay's 50 bytes off the MTU.
    config = json.loads((cluster.dir / "nodes" / "1" / "containerd" / "net.d" / "10-tug.conflist").read_text())
    bridge = config["plugins"][0]
    assert bridge["ipam"]["ranges"] == [[{"subnet": cidr1}]]
    assert bridge["ipMasq"] is False and bridge["mtu"] == 1450


def test_pods_on_two_nodes_reach_each_other_with_their_own_addresses(cluster):
    server = peer_server(cluster, "peer-web", f"{NAME}-1")
    client = run_pod(cluster, "peer-client", f"{NAME}-0", "exec sleep 3600", IMAGE)
    assert server["spec"]["nodeName"] != client["spec"]["nodeName"]
    server_ip, client_ip = server["status"]["podIP"], client["status"]["podIP"]
    seen = wait_for(lambda: http_get(cluster, "peer-client", server_ip, 8080, "/cgi-bin/peer"), "pod to pod across nodes")
    # busybox httpd listens on an IPv6 socket: an IPv4 peer shows as [::ffff:a.b.c.d].
    assert seen.strip("[]").removeprefix("::ffff:") == client_ip
    assert "mtu 1450" in cluster.kubectl("exec", "peer-client", "--", "ip", "link", "show", "eth0").stdout
    # The way back works too: the server's pod reaches the client's node's pod network.
    back = cluster.kubectl("exec", "peer-web", "--", "ping", "-c", "1", "-W", "5", client_ip, check=False)
    assert back.returncode == 0, back.stdout + back.stderr


def test_traffic_leaving_the_cluster_is_masqueraded_to_the_node(cluster):
    """A TCP server on the machine's end of the nodes' network sees the node's address, not the
    pod's: pods' addresses mean nothing outside the cluster."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((f"{SUBNET}.1", 0))
    listener.listen(1)
    listener.settimeout(30)
    port = listener.getsockname()[1]
    peers: list[str] = []

    def answer():
        try:
            conn, (address, _) = listener.accept()
        except OSError:
            return
        with conn:
            peers.append(address)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        run_pod(cluster, "egress-client", f"{NAME}-1", "exec sleep 3600", IMAGE)
        assert http_get(cluster, "egress-client", f"{SUBNET}.1", port, "/") == "hello"
        thread.join(timeout=10)
    finally:
        listener.close()
    assert peers == [f"{SUBNET}.3"], peers
