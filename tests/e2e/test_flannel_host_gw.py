"""flannel's host-gw backend (`--flannel-backend host-gw`): nodes on one L2 segment route each
other's podCIDRs through their own addresses, with no VXLAN device, and pods on different
nodes reach each other at the full MTU of the link."""

from __future__ import annotations

import json
import os

import pytest

from registry import run_checked, test_images, tug_binary  # noqa: F401
from support import TOOLS_BIN, require, wait_for
from test_dev_cluster import DevCluster, in_node, leftovers, run_pod, web

NAME = "tug-hostgw"
IMAGE = "tugboat.test/busybox:1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, test_images):  # noqa: F811
    require(os.geteuid() == 0, "a dev cluster needs root")
    require((TOOLS_BIN / "kubectl-1.36").is_file(), f"no kubectl-1.36 in {TOOLS_BIN}")
    work = tmp_path_factory.mktemp("hostgw")
    cluster = DevCluster(work / "c", tug_binary())
    try:
        up = cluster.tug(
            "up", "--nodes", "2", "--dir", str(cluster.dir), "--name", NAME, "--subnet", "172.30.70.0/24",
            "--server-arg=--flannel-backend=host-gw", "--agent-arg=--flannel-backend=host-gw",
        )  # fmt: skip
        assert up.returncode == 0, f"up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-5000:]}"
        archive = work / "busybox.tar"
        run_checked("skopeo", "copy", f"oci:{test_images}:1", f"oci-archive:{archive}:{IMAGE}")
        loaded = cluster.tug("load-image", "--dir", str(cluster.dir), str(archive))
        assert loaded.returncode == 0, loaded.stderr
        yield cluster
    finally:
        down = cluster.tug("down", "--dir", str(cluster.dir))
        assert down.returncode == 0, down.stderr[-3000:]
        assert leftovers(cluster.dir) == {"mounts": [], "processes": []}


def test_pods_on_two_nodes_talk_through_plain_routes(cluster):
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    for node in nodes:
        assert node["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"] == "host-gw"
    cidr1 = next(n["spec"]["podCIDR"] for n in nodes if n["metadata"]["name"] == f"{NAME}-1")
    # Node 0 routes node 1's pods through node 1's own address; there is no VXLAN device.
    routes = in_node(cluster, 0, "ip", "route")
    assert f"{cidr1} via 172.30.70.3 dev eth0" in routes, routes
    assert "flannel.1" not in in_node(cluster, 0, "ip", "-o", "link")
    server = web(cluster, "gw-web", f"{NAME}-1", IMAGE)
    client = run_pod(cluster, "gw-client", f"{NAME}-0", "exec sleep 3600", IMAGE)
    url = f"http://{server['status']['podIP']}:8080/"
    out = wait_for(lambda: (r := cluster.kubectl("exec", "gw-client", "--", "wget", "-q", "-O", "-", url, check=False))
                   .returncode == 0 and r.stdout.strip(), "pod to pod across nodes")  # fmt: skip
    assert out == "gw-web"
    # No overlay overhead: the pods get the link's whole MTU.
    assert "mtu 1500" in cluster.kubectl("exec", "gw-client", "--", "ip", "link", "show", "eth0").stdout
    assert client["status"]["podIP"] != server["status"]["podIP"]
