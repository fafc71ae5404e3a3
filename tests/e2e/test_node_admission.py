"""Pod admission on the node, and a full disk: a pod that reaches the node agent but cannot
run there (the node is under disk pressure, or pods bound by name already use its CPU) is
rejected as upstream's kubelet rejects it: `Failed`, the reason, `Pod was rejected: ...`, and
an event. The agent's disk filling up shows as DiskPressure; the agent keeps serving and its
running pods keep running; once space is free again, new pods run.

The agent's data directory is a small tmpfs here, so that the test can fill it.
Needs root (mounts, real containers); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import agent_server, wait_for

AGENT_FS_SIZE = "96m"


def mount_small_agent_fs(data_dir: Path) -> None:
    agent = data_dir / "agent"
    agent.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={AGENT_FS_SIZE}", "tugboat-e2e-agentfs", str(agent)], check=True)


def unmount_if_mounted(path: Path) -> None:
    mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    if str(path) in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    workdir = tmp_path_factory.mktemp("admission")
    try:
        # DiskPressure clears 5 s after space returns, not upstream's default 5 minutes.
        args = ["--eviction-pressure-transition-period", "5s"]
        with agent_server(tug_binary(), workdir, image, extra_args=args, prepare=mount_small_agent_fs) as server:
            yield server
    finally:
        unmount_if_mounted(workdir / "data" / "agent")


def pod_body(
    node, name: str, node_name: str | None = None, cpu: str | None = None, critical: bool = False
) -> dict:
    container = {"name": "main", "image": node.image, "command": ["sleep", "3600"]}
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    spec = {"terminationGracePeriodSeconds": 1, "containers": [container]}
    if critical:
        # Critical pods are never evicted for node pressure (test_node_pressure_eviction.py
        # shows the others going).
        spec["priorityClassName"] = "system-node-critical"
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def get_pod(node, name: str) -> dict:
    return node.request("GET", f"/api/v1/namespaces/default/pods/{name}").json()


def phase_is(node, name: str, phase: str):
    pod = get_pod(node, name)
    return pod if pod.get("status", {}).get("phase") == phase else None


def events_of(node, name: str) -> list[dict]:
    path = f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name={name}"
    return node.request("GET", path).json()["items"]


def condition(node, type_: str) -> str | None:
    status = node.request("GET", f"/api/v1/nodes/{node.node_name}").json().get("status", {})
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == type_), None)


def test_a_pod_bound_beyond_the_nodes_cpu_is_rejected_with_outofcpu(node):
    allocatable = node.request("GET", f"/api/v1/nodes/{node.node_name}").json()["status"]["allocatable"]["cpu"]
    node.create("/api/v1/namespaces/default/pods", pod_body(node, "too-big", node.node_name, cpu="1000"))
    pod = wait_for(lambda: phase_is(node, "too-big", "Failed"), "the pod rejected", timeout=30)
    status = pod["status"]
    assert status["reason"] == "OutOfcpu"
    capacity = int(allocatable) * 1000 if allocatable.isdigit() else int(allocatable.rstrip("m"))
    assert status["message"] == (
        f"Pod was rejected: Node didn't have enough resource: cpu, requested: 1000000, used: 0, capacity: {capacity}"
    )
    events = wait_for(lambda: [e for e in events_of(node, "too-big") if e["reason"] == "OutOfcpu"], "an OutOfcpu event")
    assert events[0]["type"] == "Warning"
    assert not any(s.get("state", {}).get("running") for s in status.get("containerStatuses") or [])


def test_a_full_disk_is_disk_pressure_and_new_pods_are_refused_until_space_returns(node):
    node.create("/api/v1/namespaces/default/pods", pod_body(node, "before", critical=True))
    wait_for(lambda: phase_is(node, "before", "Running"), "a pod running before the disk fills", timeout=60)
    filler = node.data_dir / "agent" / "filler"
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    try:
        wait_for(lambda: condition(node, "DiskPressure") == "True", "DiskPressure on the node", timeout=40)
        # Bound by name (past the scheduler, which the disk-pressure taint keeps away): refused.
        node.create("/api/v1/namespaces/default/pods", pod_body(node, "during", node.node_name))
        pod = wait_for(lambda: phase_is(node, "during", "Failed"), "the pod rejected under disk pressure", timeout=30)
        assert pod["status"]["reason"] == "Evicted"
        assert pod["status"]["message"] == "Pod was rejected: The node had condition: [DiskPressure]. "
        assert any(e["reason"] == "Evicted" for e in events_of(node, "during"))
        # Through the scheduler: the node is tainted, so the pod waits unscheduled.
        node.create("/api/v1/namespaces/default/pods", pod_body(node, "waiting"))
        waiting = wait_for(
            lambda: next(
                (c for c in get_pod(node, "waiting").get("status", {}).get("conditions", []) if c["type"] == "PodScheduled"),
                None,
            ),
            "the scheduler's verdict",
            timeout=40,
        )
        assert waiting["status"] == "False" and waiting["reason"] == "Unschedulable", waiting
        assert "disk-pressure" in waiting["message"], waiting
        # The agent is alive and the running critical pod untouched.
        assert not node.crashed()
        assert phase_is(node, "before", "Running")
    finally:
        filler.unlink()
    wait_for(lambda: condition(node, "DiskPressure") == "False", "DiskPressure gone", timeout=40)
    wait_for(lambda: phase_is(node, "waiting", "Running"), "the waiting pod scheduled and running", timeout=90)
