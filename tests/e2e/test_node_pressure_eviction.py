"""Node-pressure eviction (the kubelet's eviction manager): when the agent's disk runs short of
its `--eviction-hard` threshold, the pod using the most disk beyond its request is evicted, as
upstream words it: `Failed`, reason `Evicted`, `The node was low on resource: ...`, an
`Evicted` event and a `DisruptionTarget` condition; the other pods keep running. The evicted
pod's emptyDir is torn down, the space returns, and DiskPressure clears once the pressure
transition period has passed since it was last seen, not before. Under memory pressure
(`memory.available`, the machine's MemAvailable) the pod using the most memory beyond its
request goes the same way, and the node is tainted `node.kubernetes.io/memory-pressure` while
the pressure lasts.

The agent's data directory is a small tmpfs here (see test_node_admission.py), so that one pod
can push it past the threshold. Needs root (mounts, real containers); under CI=true a missing
privilege fails.
"""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import agent_server, wait_for
from test_node_admission import condition, events_of, get_pod, mount_small_agent_fs, phase_is, unmount_if_mounted

# The agent's tmpfs is 96m; images and state take a few MiB of it.
THRESHOLD = "40Mi"
TRANSITION_SECONDS = 12
WRITE_MIB = 60


def small_node(tmp_path_factory, registry, args: list[str]):
    """A server whose agent has a small tmpfs as its disk, observed every second rather than
    every 10 s so that the tests are quick."""
    image = f"{registry.address}/tugboat.test/busybox:1"
    workdir = tmp_path_factory.mktemp("eviction")
    args = [*args, "--eviction-monitoring-period", "1s"]
    try:
        with agent_server(tug_binary(), workdir, image, extra_args=args, prepare=mount_small_agent_fs) as server:
            yield server
    finally:
        unmount_if_mounted(workdir / "data" / "agent")


@pytest.fixture
def node(tmp_path_factory, plain_registry):  # noqa: F811
    yield from small_node(
        tmp_path_factory,
        plain_registry,
        [
            "--eviction-hard", f"memory.available<100Mi,nodefs.available<{THRESHOLD},imagefs.available<1%",
            "--eviction-pressure-transition-period", f"{TRANSITION_SECONDS}s",
        ],
    )  # fmt: skip


SOFT_GRACE_SECONDS = 5


@pytest.fixture
def soft_node(tmp_path_factory, plain_registry):  # noqa: F811
    yield from small_node(
        tmp_path_factory,
        plain_registry,
        [
            "--eviction-hard", "memory.available<100Mi,nodefs.available<1Mi,imagefs.available<1%",
            "--eviction-soft", f"nodefs.available<{THRESHOLD}",
            "--eviction-soft-grace-period", f"nodefs.available={SOFT_GRACE_SECONDS}s",
            "--eviction-max-pod-grace-period", "1",
        ],
    )  # fmt: skip


def pod_body(node, name: str, command: str, requests: dict | None = None, scratch: bool = False) -> dict:
    container = {"name": name, "image": node.image, "command": ["sh", "-c", command]}
    if requests:
        container["resources"] = {"requests": requests}
    spec = {"terminationGracePeriodSeconds": 1, "containers": [container]}
    if scratch:
        container["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def node_condition(node, type_: str) -> dict:
    status = node.request("GET", f"/api/v1/nodes/{node.node_name}").json()["status"]
    return next(c for c in status["conditions"] if c["type"] == type_)


QUANTITY = r"[0-9]+(Ki|Mi|Gi)?"


def evicted_status(node, name: str, resource: str, threshold: str, timeout: float) -> dict:
    """Waits for the pod `name` (one container, also `name`, with no request of `resource`) to
    be evicted for `resource` and returns its status, checked against upstream's wording."""
    status = wait_for(lambda: phase_is(node, name, "Failed"), f"the {name} pod evicted", timeout=timeout)["status"]
    assert status["reason"] == "Evicted", status
    assert re.fullmatch(
        rf"The node was low on resource: {resource}\. Threshold quantity: {threshold}, available: {QUANTITY}\. "
        rf"Container {name} was using {QUANTITY}, request is 0, has larger consumption of {resource}\. ",
        status["message"],
    ), status["message"]
    return status


def test_the_pod_filling_the_disk_is_evicted_and_disk_pressure_clears_after_the_transition_period(node):
    steady = pod_body(node, "steady", "sleep 3600", requests={"cpu": "10m", "ephemeral-storage": "10Mi"})
    node.create("/api/v1/namespaces/default/pods", steady)
    wait_for(lambda: phase_is(node, "steady", "Running"), "the steady pod running", timeout=60)
    fill = f"dd if=/dev/zero of=/scratch/fill bs=1M count={WRITE_MIB}; sleep 3600"
    writer = pod_body(node, "writer", fill, scratch=True)
    node.create("/api/v1/namespaces/default/pods", writer)

    evicted = evicted_status(node, "writer", "ephemeral-storage", THRESHOLD, timeout=60)
    disruption = next(c for c in evicted["conditions"] if c["type"] == "DisruptionTarget")
    assert (disruption["status"], disruption["reason"]) == ("True", "TerminationByKubelet"), disruption
    assert disruption["message"] == evicted["message"]
    assert not any(s.get("state", {}).get("running") for s in evicted.get("containerStatuses") or []), evicted
    event = wait_for(
        lambda: next((e for e in events_of(node, "writer") if e["reason"] == "Evicted"), None), "an Evicted event"
    )
    assert (event["type"], event["message"]) == ("Warning", evicted["message"]), event
    # As upstream's AnnotatedEventf: which containers used how much of which resource.
    annotations = event["metadata"].get("annotations") or {}
    assert annotations.get("offending_containers") == "writer", event
    assert annotations.get("starved_resource") == "ephemeral-storage", event
    assert re.fullmatch(QUANTITY, annotations.get("offending_containers_usage", "")), event
    reclaim = wait_for(
        lambda: next((e for e in events_of(node, node.node_name) if e["reason"] == "EvictionThresholdMet"), None),
        "the node's EvictionThresholdMet event",
    )
    assert (reclaim["type"], reclaim["message"]) == ("Warning", "Attempting to reclaim ephemeral-storage"), reclaim

    # The node reported the pressure; the other pod was not touched.
    wait_for(lambda: condition(node, "DiskPressure") == "True", "DiskPressure reported", timeout=15)
    assert phase_is(node, "steady", "Running")

    # The writer's emptyDir went with it: the pressure is gone, but the condition stays for the
    # transition period after it was last seen (about when the writer was evicted).
    cleared = wait_for(
        lambda: (c := node_condition(node, "DiskPressure"))["status"] == "False" and c,
        "DiskPressure cleared",
        timeout=TRANSITION_SECONDS + 30,
    )
    held = timestamp(cleared["lastTransitionTime"]) - timestamp(disruption["lastTransitionTime"])
    assert held.total_seconds() >= TRANSITION_SECONDS - 2, (cleared, disruption)
    assert cleared["reason"] == "KubeletHasNoDiskPressure"
    assert phase_is(node, "steady", "Running")
    assert get_pod(node, "writer")["status"]["phase"] == "Failed"
    assert not node.crashed()


def test_a_soft_threshold_evicts_only_after_holding_for_its_grace_period(soft_node):
    node = soft_node
    fill = f"dd if=/dev/zero of=/scratch/fill bs=1M count={WRITE_MIB}; sleep 3600"
    node.create("/api/v1/namespaces/default/pods", pod_body(node, "writer", fill, scratch=True))
    running = wait_for(lambda: phase_is(node, "writer", "Running"), "the writer running", timeout=60)
    started = timestamp(running["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    evicted = wait_for(lambda: phase_is(node, "writer", "Failed"), "the writer evicted", timeout=60)["status"]
    assert evicted["reason"] == "Evicted"
    assert evicted["message"].startswith(
        f"The node was low on resource: ephemeral-storage. Threshold quantity: {THRESHOLD}, available: "
    ), evicted["message"]
    disruption = next(c for c in evicted["conditions"] if c["type"] == "DisruptionTarget")
    # The disk filled within a second of the start; the eviction waited out the grace period.
    waited = (timestamp(disruption["lastTransitionTime"]) - started).total_seconds()
    assert waited >= SOFT_GRACE_SECONDS - 1, (started, disruption)


# Memory pressure: the threshold is set this far below what the machine has available when the
# server starts, and the hog pod takes twice as much, so that neither the server's own growth nor
# another process's moves the node across the line on its own.
MEMORY_MARGIN_MIB = 2048
HOG_MIB = 2 * MEMORY_MARGIN_MIB


def mem_available_bytes() -> int:
    """`MemAvailable` of /proc/meminfo, the memory.available signal's source."""
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


def memory_pressure_taint(node) -> bool:
    taints = node.request("GET", f"/api/v1/nodes/{node.node_name}").json()["spec"].get("taints") or []
    return any((t["key"], t["effect"]) == ("node.kubernetes.io/memory-pressure", "NoSchedule") for t in taints)


@pytest.fixture
def memory_node(tmp_path_factory, plain_registry):  # noqa: F811
    # Written in decimal megabytes, so the message must print the threshold as written.
    threshold_mb = (mem_available_bytes() - MEMORY_MARGIN_MIB * 1024 * 1024) // 1_000_000
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    workdir = tmp_path_factory.mktemp("memory-eviction")
    args = [
        "--eviction-monitoring-period", "1s",
        # The disk thresholds are lowered so that only memory can put this node under pressure.
        "--eviction-hard", f"memory.available<{threshold_mb}M,nodefs.available<1%,imagefs.available<1%",
        "--eviction-pressure-transition-period", f"{TRANSITION_SECONDS}s",
    ]  # fmt: skip
    with agent_server(tug_binary(), workdir, image, extra_args=args) as server:
        server.memory_threshold = f"{threshold_mb}M"
        yield server


def test_the_pod_using_the_most_memory_over_its_request_is_evicted_under_memory_pressure(memory_node):
    node = memory_node
    calm = pod_body(node, "calm", "sleep 3600", requests={"cpu": "10m", "memory": "64Mi"})
    node.create("/api/v1/namespaces/default/pods", calm)
    wait_for(lambda: phase_is(node, "calm", "Running"), "the calm pod running", timeout=60)
    assert condition(node, "MemoryPressure") == "False"
    # Files on a memory-backed emptyDir are the pod's memory (shmem, charged to its cgroup) and
    # are not available to the machine until the volume goes.
    hog = pod_body(node, "hog", f"dd if=/dev/zero of=/shm/fill bs=1M count={HOG_MIB}; sleep 3600")
    hog["spec"]["containers"][0]["volumeMounts"] = [{"name": "shm", "mountPath": "/shm"}]
    hog["spec"]["volumes"] = [{"name": "shm", "emptyDir": {"medium": "Memory"}}]
    node.create("/api/v1/namespaces/default/pods", hog)

    evicted_status(node, "hog", "memory", node.memory_threshold, timeout=90)
    event = wait_for(
        lambda: next((e for e in events_of(node, "hog") if e["reason"] == "Evicted"), None), "an Evicted event"
    )
    annotations = event["metadata"].get("annotations") or {}
    assert (annotations.get("offending_containers"), annotations.get("starved_resource")) == ("hog", "memory"), event
    reclaim = wait_for(
        lambda: next((e for e in events_of(node, node.node_name) if e["reason"] == "EvictionThresholdMet"), None),
        "the node's EvictionThresholdMet event",
    )
    assert reclaim["message"] == "Attempting to reclaim memory", reclaim

    # The node reports the pressure and is tainted against new pods while it lasts; the pod
    # within its request is left running.
    wait_for(lambda: condition(node, "MemoryPressure") == "True", "MemoryPressure reported", timeout=15)
    wait_for(lambda: memory_pressure_taint(node), "the memory-pressure taint", timeout=15)
    assert phase_is(node, "calm", "Running")
    # The hog's volume went with it: the pressure clears after the transition period.
    cleared = wait_for(
        lambda: (c := node_condition(node, "MemoryPressure"))["status"] == "False" and c,
        "MemoryPressure cleared",
        timeout=TRANSITION_SECONDS + 30,
    )
    assert cleared["reason"] == "KubeletHasSufficientMemory", cleared
    wait_for(lambda: not memory_pressure_taint(node), "the memory-pressure taint removed", timeout=15)
    assert phase_is(node, "calm", "Running")
    assert not node.crashed()
