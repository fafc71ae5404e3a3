"""CNI delegation: a node started with `--cni-conf-dir`/`--cni-bin-dir` gives its pods the network
that standard CNI plugins build (Debian's containernetworking-plugins: bridge, host-local, portmap)
instead of the built-in one. The node runs in a dev cluster of its own, so the plugins' bridge and
iptables rules stay inside its network namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from registry import run_checked, test_images, tug_binary  # noqa: F401
from support import TOOLS_BIN, require, wait_for
from test_dev_cluster import DevCluster, fetch, in_node, leftovers, run_pod, web

CNI_BIN = Path("/usr/lib/cni")
SUBNET = "10.88.0.0/16"


@pytest.fixture(scope="module")
def cni_node(tmp_path_factory, test_images):  # noqa: F811
    require(os.geteuid() == 0, "a dev cluster needs root")
    require((CNI_BIN / "bridge").is_file(), f"no CNI plugins in {CNI_BIN}: install containernetworking-plugins")
    require((TOOLS_BIN / "kubectl-1.36").is_file(), f"no kubectl-1.36 in {TOOLS_BIN}")
    work = tmp_path_factory.mktemp("cni")
    conf_dir, ipam_dir = work / "net.d", work / "ipam"
    conf_dir.mkdir()
    (conf_dir / "10-test.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": "cni-test",
        "plugins": [
            {"type": "bridge", "bridge": "cnitest0", "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(ipam_dir)}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }))  # fmt: skip
    cluster = DevCluster(work / "c", tug_binary())
    try:
        up = cluster.tug(
            "up", "--nodes", "1", "--dir", str(cluster.dir), "--name", "tug-cni", "--subnet", "172.30.30.0/24",
            f"--server-arg=--cni-conf-dir={conf_dir}", f"--server-arg=--cni-bin-dir={CNI_BIN}",
        )  # fmt: skip
        assert up.returncode == 0, f"up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-5000:]}"
        archive = work / "busybox.tar"
        run_checked("skopeo", "copy", f"oci:{test_images}:1", f"oci-archive:{archive}:tugboat.test/busybox:1")
        loaded = cluster.tug("load-image", "--dir", str(cluster.dir), str(archive))
        assert loaded.returncode == 0, loaded.stderr
        cluster.ipam_dir = ipam_dir
        yield cluster
    finally:
        down = cluster.tug("down", "--dir", str(cluster.dir))
        assert down.returncode == 0, down.stderr[-3000:]
        assert leftovers(cluster.dir) == {"mounts": [], "processes": []}


IMAGE = "tugboat.test/busybox:1"


def reserved(cluster) -> set[str]:
    return {p.name for p in Path(cluster.ipam_dir).glob("cni-test/*") if p.name[0].isdigit()}


def test_pods_get_addresses_from_the_plugins_and_reach_each_other(cni_node):
    server = web(cni_node, "cni-web", "tug-cni-0", IMAGE)
    client = run_pod(cni_node, "cni-client", "tug-cni-0", "exec sleep 3600", IMAGE)
    for pod in (server, client):
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(SUBNET)
    assert {server["status"]["podIP"], client["status"]["podIP"]} <= reserved(cni_node)
    # The plugins' bridge, not the built-in one, carries the pods.
    links = in_node(cni_node, 0, "ip", "-o", "link")
    assert "cnitest0" in links and "cni0:" not in links
    body = wait_for(lambda: fetch(cni_node, "cni-client", f"http://{server['status']['podIP']}:8080/"), "pod to pod")
    assert body == "cni-web"


def test_a_host_port_is_published_by_the_portmap_plugin(cni_node):
    web(cni_node, "cni-hostport", "tug-cni-0", IMAGE, container={"ports": [{"containerPort": 8080, "hostPort": 30090}]})
    import urllib.request

    def get():
        try:
            with urllib.request.urlopen("http://172.30.30.2:30090/", timeout=3) as resp:
                return resp.read().decode().strip()
        except OSError:
            return None

    assert wait_for(get, "the hostPort through portmap") == "cni-hostport"


def test_deleting_a_pod_releases_its_address_through_the_plugins(cni_node):
    pod = run_pod(cni_node, "cni-gone", "tug-cni-0", "exec sleep 3600", IMAGE)
    ip = pod["status"]["podIP"]
    assert ip in reserved(cni_node)
    cni_node.kubectl("delete", "pod", "cni-gone", "--wait=true")
    wait_for(lambda: ip not in reserved(cni_node), "host-local to release the address")
