"""The pod network of one node: every pod gets its own address from the node's podCIDR on the
node's bridge, pods reach each other and are reached from the node by that address, containers of
one pod share localhost, hostPorts publish a pod on the node, and addresses are neither leaked
nor handed out twice, also across a restart of the node agent.

Needs root (containers, network namespaces, nftables); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import urllib.request

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, agent_server, node_ready, wait_for

_counter = iter(range(1, 10_000))


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 1000}-{next(_counter)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("podnet"), image) as server:
        yield server


@pytest.fixture
def k(node) -> Kubectl:
    return Kubectl.for_version("1.36", TOOLS_BIN / "kubectl-1.36", node)


def pod_cidr(node) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(node.request("GET", f"/api/v1/nodes/{node.node_name}").json()["spec"]["podCIDR"])


def run_pod(node, name: str, containers: list[dict], **spec) -> dict:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": containers, **spec},
    }
    node.create("/api/v1/namespaces/default/pods", body)
    return wait_running(node, name)


def wait_running(node, name: str) -> dict:
    def running():
        pod = node.request("GET", f"/api/v1/namespaces/default/pods/{name}").json()
        status = pod.get("status", {})
        return pod if status.get("phase") == "Running" and status.get("podIP") else None

    try:
        return wait_for(running, f"pod {name} running with an IP", timeout=60)
    except BaseException:
        print(node.log_tail(60))
        raise


def web_server(node, name: str, text: str, port: int = 8080, **extra) -> dict:
    """A pod serving `text` over HTTP on `port` (busybox httpd)."""
    script = f"mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www"
    return run_pod(node, name, [{"name": "web", "image": node.image, "command": ["sh", "-c", script], **extra}])


def sleeper(node, name: str) -> dict:
    return run_pod(node, name, [{"name": "main", "image": node.image, "command": ["sleep", "3600"]}])


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode().strip()


def ipam_files(node) -> set[str]:
    root = node.data_dir / "agent" / "network" / "ipam"
    return {p.name for p in root.glob("*/*") if p.name[0].isdigit()}


def test_a_pod_gets_its_own_address_from_the_nodes_pod_cidr(node, k):
    cidr = pod_cidr(node)
    pod = sleeper(node, unique("addr"))
    ip = ipaddress.ip_address(pod["status"]["podIP"])
    assert ip in cidr and ip != next(cidr.hosts())  # the first address is the bridge's (gateway)
    assert pod["status"]["podIPs"] == [{"ip": str(ip)}]
    assert pod["status"]["podIP"] != pod["status"]["hostIP"]
    name = pod["metadata"]["name"]
    # Inside: eth0 carries the address, the default route goes through the bridge.
    addr = k("exec", name, "--", "ip", "-4", "addr", "show", "eth0").stdout
    assert f"inet {ip}/{cidr.prefixlen}" in addr
    route = k("exec", name, "--", "ip", "route").stdout
    assert f"default via {next(cidr.hosts())} dev eth0" in route
    # The pod's /etc/hosts names it by its address, as upstream's kubelet writes it.
    assert f"{ip}\t{name}" in k("exec", name, "--", "cat", "/etc/hosts").stdout


def test_pods_reach_each_other_and_the_node_reaches_pods_by_ip(node, k):
    web = web_server(node, unique("web"), "hello-from-web")
    client = sleeper(node, unique("client"))
    web_ip = web["status"]["podIP"]
    assert web_ip != client["status"]["podIP"]
    # TCP from pod to pod.
    out = wait_for(
        lambda: k("exec", client["metadata"]["name"], "--", "wget", "-q", "-O", "-", f"http://{web_ip}:8080/",
                  check=False).stdout.strip() or None,
        "the client pod to fetch the web pod's page",
    )  # fmt: skip
    assert out == "hello-from-web"
    # ICMP from pod to pod.
    ping = k("exec", client["metadata"]["name"], "--", "ping", "-c", "1", "-W", "2", web_ip, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # From the node itself (the host's namespace routes the podCIDR to the bridge).
    assert http_get(f"http://{web_ip}:8080/") == "hello-from-web"


def test_containers_of_one_pod_share_localhost(node, k):
    name = unique("duo")
    script = "mkdir -p /www && echo from-sidecar > /www/index.html && exec httpd -f -p 9090 -h /www"
    run_pod(
        node,
        name,
        [
            {"name": "sidecar", "image": node.image, "command": ["sh", "-c", script]},
            {"name": "main", "image": node.image, "command": ["sleep", "3600"]},
        ],
    )
    out = wait_for(
        lambda: k("exec", name, "-c", "main", "--", "wget", "-q", "-O", "-", "http://127.0.0.1:9090/",
                  check=False).stdout.strip() or None,
        "the main container to reach its sidecar over localhost",
    )  # fmt: skip
    assert out == "from-sidecar"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_host_port_publishes_a_pod_on_the_node(node, k):
    host_port = free_port()
    web = web_server(node, unique("hp"), "via-host-port", ports=[{"containerPort": 8080, "hostPort": host_port}])
    # Reached through the node's address (here the loopback, the node's --node-ip).
    assert wait_for(lambda: _try_get(f"http://127.0.0.1:{host_port}/"), "the hostPort to answer") == "via-host-port"
    # And through the bridge's address from another pod.
    client = sleeper(node, unique("hpclient"))
    gateway = next(pod_cidr(node).hosts())
    out = k("exec", client["metadata"]["name"], "--", "wget", "-q", "-O", "-", f"http://{gateway}:{host_port}/",
            check=False).stdout.strip()  # fmt: skip
    assert out == "via-host-port"
    # Hairpin: the pod itself through its own hostPort.
    out = k("exec", web["metadata"]["name"], "--", "wget", "-q", "-O", "-", f"http://{gateway}:{host_port}/",
            check=False).stdout.strip()  # fmt: skip
    assert out == "via-host-port"


def _try_get(url: str) -> str | None:
    try:
        return http_get(url)
    except OSError:
        return None


def test_a_host_network_pod_uses_the_nodes_address(node, k):
    name = unique("hostnet")
    pod = run_pod(node, name, [{"name": "main", "image": node.image, "command": ["sleep", "3600"]}], hostNetwork=True)
    assert pod["status"]["podIP"] == pod["status"]["hostIP"] == "127.0.0.1"
    links = k("exec", name, "--", "ip", "link").stdout
    assert "cni0" in links  # it sees the node's interfaces, the pods' bridge among them


def test_an_address_is_freed_when_its_pod_goes_and_not_reused_at_once(node, k):
    name = unique("freed")
    ip = sleeper(node, name)["status"]["podIP"]
    assert ip in ipam_files(node)
    links_before = subprocess.run(["ip", "-o", "link", "show", "master", "cni0"], capture_output=True, text=True).stdout
    k("delete", "pod", name, "--wait=true", timeout=40)
    wait_for(lambda: ip not in ipam_files(node), "the pod's address to be released")
    links_after = subprocess.run(["ip", "-o", "link", "show", "master", "cni0"], capture_output=True, text=True).stdout
    assert len(links_after.splitlines()) == len(links_before.splitlines()) - 1
    # Round robin: the next pod gets another address.
    assert sleeper(node, unique("next"))["status"]["podIP"] != ip


def test_addresses_survive_an_agent_restart_and_orphans_are_released(node, k):
    kept = sleeper(node, unique("kept"))
    # An address held by a sandbox that no longer exists (as if it went while the agent was down).
    ipam_dir = next((node.data_dir / "agent" / "network" / "ipam").iterdir())
    orphan = str(next(h for h in pod_cidr(node).hosts() if str(h) not in ipam_files(node) and h.packed[-1] > 200))
    (ipam_dir / orphan).write_text("sandbox-that-is-gone")
    node.restart()
    wait_for(lambda: node_ready(node), "the node Ready again", timeout=40)
    wait_for(lambda: orphan not in ipam_files(node), "the orphaned address to be released")
    after = wait_running(node, kept["metadata"]["name"])
    assert after["status"]["podIP"] == kept["status"]["podIP"]
    assert kept["status"]["podIP"] in ipam_files(node)
    fresh = sleeper(node, unique("fresh"))
    assert fresh["status"]["podIP"] != kept["status"]["podIP"]
