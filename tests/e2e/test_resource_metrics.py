"""Resource metrics on a real node: the node agent's `/metrics/resource` (upstream kubelet's
series, read from the pods' cgroups and the node's /proc) and the API server's built-in
metrics-server, which scrapes it every 15 s and serves `metrics.k8s.io/v1beta1`, so that
`kubectl top pod` and `kubectl top node` (1.36 and 1.27) show a pod burning a CPU at about one
core and an idle pod near zero.

Needs root (containers); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, agent_server, wait_for

KUBECTL_VERSIONS = ["1.36", "1.27"]
SUFFIX = os.getpid() % 1000
BURN = f"burn-{SUFFIX}"
IDLE = f"idle-{SUFFIX}"
# Two scrapes 15 s apart after the containers run, plus slack for a loaded machine.
METRICS_TIMEOUT = 60


def pod(node, name: str, script: str, labels: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": node.image, "command": ["sh", "-c", script]}],
        },
    }


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("metrics"), image) as server:
        server.create("/api/v1/namespaces/default/pods", pod(server, BURN, "while :; do :; done", {"load": "burn"}))
        server.create("/api/v1/namespaces/default/pods", pod(server, IDLE, "exec sleep 3600", {"load": "idle"}))

        def running() -> bool:
            for name in (BURN, IDLE):
                got = server.request("GET", f"/api/v1/namespaces/default/pods/{name}").json()
                if got.get("status", {}).get("phase") != "Running":
                    return False
            return True

        wait_for(running, "both pods to run", timeout=60)
        yield server


def kubectl(node, version: str) -> Kubectl:
    return Kubectl.for_version(version, TOOLS_BIN / f"kubectl-{version}", node)


def top_pods(k: Kubectl, *args: str) -> dict[str, tuple[int, str]] | None:
    """`kubectl top pod` as {pod: (millicores, memory)}; None while metrics are not there yet."""
    result = k("top", "pod", *args, check=False)
    if result.returncode != 0:
        return None
    rows: dict[str, tuple[int, str]] = {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.split()
        # NAME CPU MEMORY, with NAMESPACE first under -A.
        name, cpu, memory = fields[-3:]
        rows[name] = (int(cpu.rstrip("m")), memory)
    return rows


def test_node_agent_serves_resource_metrics_for_the_node_and_its_pods(node):
    k = kubectl(node, "1.36")
    text = k("get", "--raw", f"/api/v1/nodes/{node.node_name}/proxy/metrics/resource").stdout
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            parts = line.rsplit(" ", 2)
            series[parts[0]] = parts[1:]
    labels = f'{{container="main",namespace="default",pod="{BURN}"}}'
    for name in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes", "container_start_time_seconds"):
        assert name + labels in series, f"{name}{labels} missing from:\n{text}"
    assert f'pod_cpu_usage_seconds_total{{namespace="default",pod="{BURN}"}}' in series
    assert float(series["node_cpu_usage_seconds_total"][0]) > 0
    assert float(series["node_memory_working_set_bytes"][0]) > 0
    assert series["resource_scrape_error"] == ["0"]
    # Samples carry the time they were measured at, in milliseconds.
    assert re.fullmatch(r"\d{13}", series[f"container_cpu_usage_seconds_total{labels}"][1])


@pytest.mark.parametrize("version", KUBECTL_VERSIONS)
def test_kubectl_top_pod_shows_a_busy_pod_near_one_core_and_an_idle_pod_near_zero(node, version):
    k = kubectl(node, version)
    rows = wait_for(
        lambda: (r := top_pods(k)) and BURN in r and IDLE in r and r,
        "kubectl top pod to list both pods",
        timeout=METRICS_TIMEOUT,
        interval=1,
    )
    burn_cpu, burn_memory = rows[BURN]
    idle_cpu, _ = rows[IDLE]
    # A spinning shell takes a core when the machine is otherwise quiet, less when it is busy;
    # far above the idle pod either way.
    assert burn_cpu > 300, rows
    assert idle_cpu < 50, rows
    assert re.fullmatch(r"\d+Mi", burn_memory), rows

    # Label selection, all namespaces, per container.
    assert set(top_pods(k, "-l", "load=burn") or {}) == {BURN}
    assert {BURN, IDLE} <= set(top_pods(k, "-A") or {})
    containers = k("top", "pod", BURN, "--containers").stdout.splitlines()
    assert containers[0].split()[:2] == ["POD", "NAME"], containers
    assert containers[1].split()[:2] == [BURN, "main"], containers


@pytest.mark.parametrize("version", KUBECTL_VERSIONS)
def test_kubectl_top_node_lists_the_node_with_its_usage(node, version):
    k = kubectl(node, version)

    def listed():
        result = k("top", "node", check=False)
        return result.returncode == 0 and result.stdout

    out = wait_for(listed, "kubectl top node to succeed", timeout=METRICS_TIMEOUT, interval=1)
    header, *rows = out.splitlines()
    assert header.split()[0] == "NAME", out
    row = next(r.split() for r in rows if r.split()[0] == node.node_name)
    # NAME CPU(cores) CPU% MEMORY(bytes) MEMORY%: the burning pod alone uses more than half a core.
    assert int(row[1].rstrip("m")) > 500, out
    assert row[2].endswith("%") and row[3].endswith("Mi"), out


def test_metrics_api_answers_as_metrics_server(node):
    wait_for(
        lambda: node.request("GET", f"/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/{BURN}").status == 200,
        "the busy pod's metrics",
        timeout=METRICS_TIMEOUT,
        interval=1,
    )
    got = node.request("GET", f"/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/{BURN}").json()
    assert (got["kind"], got["apiVersion"]) == ("PodMetrics", "metrics.k8s.io/v1beta1")
    assert got["metadata"]["labels"] == {"load": "burn"}
    assert re.fullmatch(r"\d+(\.\d+)?s", got["window"]), got
    assert [c["name"] for c in got["containers"]] == ["main"]
    assert re.fullmatch(r"\d+[num]?", got["containers"][0]["usage"]["cpu"]), got
    assert re.fullmatch(r"\d+(Ki|Mi)?", got["containers"][0]["usage"]["memory"]), got

    # The HorizontalPodAutoscaler's request: pods of a namespace by label selector.
    listed = node.request("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=load%3Dburn").json()
    assert listed["kind"] == "PodMetricsList"
    assert [i["metadata"]["name"] for i in listed["items"]] == [BURN]
    assert "kind" not in listed["items"][0]
    by_name = node.request("GET", f"/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.name%3D{IDLE}").json()
    assert [i["metadata"]["name"] for i in by_name["items"]] == [IDLE]

    nodes = node.request("GET", "/apis/metrics.k8s.io/v1beta1/nodes").json()
    assert node.node_name in [i["metadata"]["name"] for i in nodes["items"]]

    # A pod that exists but has no metrics (it never runs: its node does not exist), and one
    # that does not exist, answer as metrics-server does.
    ghost = pod(node, f"ghost-{SUFFIX}", "true", {})
    ghost["spec"]["nodeName"] = "no-such-node"
    node.create("/api/v1/namespaces/default/pods", ghost)
    missing = node.request("GET", f"/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/ghost-{SUFFIX}")
    assert missing.status == 404
    assert missing.json()["message"] == f'podmetrics.metrics.k8s.io "default/ghost-{SUFFIX}" not found'
    absent = node.request("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope")
    assert (absent.status, absent.json()["message"]) == (404, 'pods "nope" not found')
    refused = node.request("DELETE", f"/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/{BURN}")
    assert refused.status == 405

    # Discovery, legacy and aggregated, names the group (kubectl top checks it first).
    groups = node.request("GET", "/apis").json()
    assert any(g["name"] == "metrics.k8s.io" for g in groups["groups"])
    resources = node.request("GET", "/apis/metrics.k8s.io/v1beta1").json()
    assert {(r["name"], r["kind"]) for r in resources["resources"]} == {("nodes", "NodeMetrics"), ("pods", "PodMetrics")}


def test_the_pods_together_weigh_the_nodes_allocatable_cpu(node):
    # Upstream's node allocatable cgroup: cpu.shares of the node's allocatable CPU, so pods
    # compete with the host's processes as the CPUs they were promised; best-effort pods least.
    allocatable = node.request("GET", f"/api/v1/nodes/{node.node_name}").json()["status"]["allocatable"]["cpu"]
    cpu = Path("/sys/fs/cgroup/cpu")
    assert (cpu / "kubepods" / "cpu.shares").read_text().strip() == str(int(allocatable) * 1024)
    assert (cpu / "kubepods" / "besteffort" / "cpu.shares").read_text().strip() == "2"
