"""The scheduler: pods without a node get bound to one that fits, through the API.

There is no kubelet here: the tests create `v1 Node` objects with capacity,
allocatable and a Ready condition as simulated nodes. Each test runs on a server
of its own so its nodes do not leak into other tests.
"""

from __future__ import annotations

import signal
import subprocess
import time

from support import unique_name, wait_for

NS = "default"


def make_node(server, name: str, cpu: str = "4", memory: str = "8Gi", pods: str = "110", *, labels=None, taints=None):
    resources = {"cpu": cpu, "memory": memory, "pods": pods}
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"taints": taints or []},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated"}],
        },
    }
    node = server.create("/api/v1/nodes", body)
    # The API server may drop status on create, as upstream does: write it through node/status.
    if not node.get("status", {}).get("allocatable"):
        resp = server.request(
            "PATCH", f"/api/v1/nodes/{name}/status", {"status": body["status"]},
            content_type="application/merge-patch+json",
        )  # fmt: skip
        assert resp.status == 200, resp
    return name


def make_pod(server, name: str, cpu: str | None = None, **spec_extra) -> str:
    container = {"name": "c", "image": "busybox"}
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"containers": [container], **spec_extra},
    }
    server.create(f"/api/v1/namespaces/{NS}/pods", body)
    return name


def get_pod(server, name: str) -> dict:
    resp = server.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
    assert resp.status == 200, resp
    return resp.json()


def condition(pod: dict, kind: str = "PodScheduled") -> dict | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == kind:
            return c
    return None


def wait_bound(server, name: str, timeout: float = 20) -> dict:
    return wait_for(
        lambda: (p := get_pod(server, name)).get("spec", {}).get("nodeName") and p,
        f"pod {name} to be bound",
        timeout=timeout,
    )


def wait_unschedulable(server, name: str, message_part: str = "") -> dict:
    def check():
        c = condition(get_pod(server, name))
        if c and c["status"] == "False" and c.get("reason") == "Unschedulable" and message_part in c.get("message", ""):
            return c
        return None

    return wait_for(check, f"pod {name} to be marked Unschedulable", timeout=20)


def events_for(server, name: str) -> list[dict]:
    resp = server.request("GET", f"/api/v1/namespaces/{NS}/events")
    assert resp.status == 200, resp
    return [e for e in resp.json()["items"] if e["involvedObject"].get("name") == name]


def test_pod_is_bound_to_a_node_and_marked_scheduled(fresh_server):
    make_node(fresh_server, "node-a")
    make_pod(fresh_server, "web", cpu="500m")
    pod = wait_bound(fresh_server, "web")
    assert pod["spec"]["nodeName"] == "node-a"
    assert condition(pod)["status"] == "True"


def test_a_bound_pod_gets_a_scheduled_event(fresh_server):
    make_node(fresh_server, "node-a")
    make_pod(fresh_server, "web")
    wait_bound(fresh_server, "web")
    events = wait_for(
        lambda: [e for e in events_for(fresh_server, "web") if e["reason"] == "Scheduled"],
        "a Scheduled event",
    )
    assert events[0]["type"] == "Normal"
    assert events[0]["message"] == f"Successfully assigned {NS}/web to node-a"


def test_without_nodes_the_pod_waits_for_the_first_node(fresh_server):
    make_pod(fresh_server, "early")
    cond = wait_unschedulable(fresh_server, "early")
    assert cond["message"] == "no nodes available to schedule pods"
    make_node(fresh_server, "late-node")
    assert wait_bound(fresh_server, "early")["spec"]["nodeName"] == "late-node"


def test_pods_spread_to_the_least_allocated_node(fresh_server):
    make_node(fresh_server, "small", cpu="2", memory="4Gi")
    make_node(fresh_server, "big", cpu="16", memory="32Gi")
    make_pod(fresh_server, "first", cpu="1")
    assert wait_bound(fresh_server, "first")["spec"]["nodeName"] == "big"


def test_too_big_pod_stays_pending_until_a_big_enough_node_appears(fresh_server):
    make_node(fresh_server, "n1", cpu="2")
    make_node(fresh_server, "n2", cpu="2", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    make_node(fresh_server, "n3", cpu="2", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    make_pod(fresh_server, "huge", cpu="8")
    expected = (
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}. "
        "preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, "
        "2 Preemption is not helpful for scheduling."
    )
    cond = wait_unschedulable(fresh_server, "huge")
    assert cond["message"] == expected
    pod = get_pod(fresh_server, "huge")
    assert pod["status"].get("phase", "Pending") == "Pending"
    assert not pod["spec"].get("nodeName")

    events = wait_for(
        lambda: [e for e in events_for(fresh_server, "huge") if e["reason"] == "FailedScheduling"],
        "a FailedScheduling event",
    )
    ev = events[0]
    assert ev["type"] == "Warning"
    assert ev["message"] == expected
    assert ev["source"]["component"] == "default-scheduler"
    assert ev["involvedObject"]["kind"] == "Pod"

    # A node event, not a timer, brings the pod back: the flush would take 5 minutes.
    make_node(fresh_server, "n4", cpu="16")
    pod = wait_bound(fresh_server, "huge", timeout=15)
    assert pod["spec"]["nodeName"] == "n4"
    assert condition(pod)["status"] == "True"


def test_taints_keep_off_pods_that_do_not_tolerate_them(fresh_server):
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    make_node(fresh_server, "gpu-node", taints=[taint])
    make_pod(fresh_server, "plain")
    cond = wait_unschedulable(fresh_server, "plain")
    assert "1 node(s) had untolerated taint {dedicated: gpu}" in cond["message"]
    toleration = {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    make_pod(fresh_server, "tolerant", tolerations=[toleration])
    assert wait_bound(fresh_server, "tolerant")["spec"]["nodeName"] == "gpu-node"
    assert not get_pod(fresh_server, "plain")["spec"].get("nodeName")


def test_removing_a_taint_schedules_the_waiting_pod(fresh_server):
    make_node(fresh_server, "tainted", taints=[{"key": "maintenance", "value": "", "effect": "NoExecute"}])
    make_pod(fresh_server, "waiting")
    wait_unschedulable(fresh_server, "waiting", "untolerated taint {maintenance: }")
    resp = fresh_server.request(
        "PATCH", "/api/v1/nodes/tainted", {"spec": {"taints": None}}, content_type="application/merge-patch+json"
    )
    assert resp.status == 200, resp
    assert wait_bound(fresh_server, "waiting", timeout=15)["spec"]["nodeName"] == "tainted"


def test_prefer_no_schedule_taint_steers_pods_away(fresh_server):
    make_node(fresh_server, "soft", taints=[{"key": "spot", "value": "true", "effect": "PreferNoSchedule"}])
    make_node(fresh_server, "clean")
    for i in range(3):
        make_pod(fresh_server, f"p{i}")
    for i in range(3):
        assert wait_bound(fresh_server, f"p{i}")["spec"]["nodeName"] == "clean"


def test_node_selector_picks_the_labelled_node(fresh_server):
    make_node(fresh_server, "hdd-node", labels={"disk": "hdd"})
    make_node(fresh_server, "ssd-node", labels={"disk": "ssd"})
    make_pod(fresh_server, "wants-ssd", nodeSelector={"disk": "ssd"})
    assert wait_bound(fresh_server, "wants-ssd")["spec"]["nodeName"] == "ssd-node"
    make_pod(fresh_server, "wants-nvme", nodeSelector={"disk": "nvme"})
    cond = wait_unschedulable(fresh_server, "wants-nvme")
    assert cond["message"].startswith("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.")


def test_required_node_affinity(fresh_server):
    make_node(fresh_server, "zone-a", labels={"zone": "a"})
    make_node(fresh_server, "zone-b", labels={"zone": "b"})
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}]
            }
        }
    }
    make_pod(fresh_server, "not-a", affinity=affinity)
    assert wait_bound(fresh_server, "not-a")["spec"]["nodeName"] == "zone-b"


def test_pod_for_another_scheduler_is_left_alone(fresh_server):
    make_node(fresh_server, "node-a")
    make_pod(fresh_server, "theirs", schedulerName="my-scheduler")
    make_pod(fresh_server, "ours")
    wait_bound(fresh_server, "ours")
    time.sleep(1)
    pod = get_pod(fresh_server, "theirs")
    assert not pod["spec"].get("nodeName")
    assert condition(pod) is None
    assert events_for(fresh_server, "theirs") == []


def test_deleting_an_assigned_pod_frees_room_for_a_pending_one(fresh_server):
    make_node(fresh_server, "only", cpu="1")
    make_pod(fresh_server, "holder", cpu="800m")
    wait_bound(fresh_server, "holder")
    make_pod(fresh_server, "waiter", cpu="800m")
    wait_unschedulable(fresh_server, "waiter", "Insufficient cpu")
    # With no kubelet, a bound pod goes at once only with a zero grace period.
    resp = fresh_server.request("DELETE", f"/api/v1/namespaces/{NS}/pods/holder?gracePeriodSeconds=0")
    assert resp.status == 200, resp
    assert fresh_server.request("GET", f"/api/v1/namespaces/{NS}/pods/holder").status == 404
    assert wait_bound(fresh_server, "waiter")["spec"]["nodeName"] == "only"


def test_pods_fill_a_node_up_to_its_pod_count(fresh_server):
    make_node(fresh_server, "tiny", pods="2")
    names = [make_pod(fresh_server, unique_name("fill")) for _ in range(3)]

    def bound_and_pending():
        pods = [get_pod(fresh_server, n) for n in names]
        bound = [p for p in pods if p["spec"].get("nodeName")]
        pending = [p for p in pods if (c := condition(p)) and c["status"] == "False"]
        return len(bound) == 2 and len(pending) == 1 and pending

    pending = wait_for(bound_and_pending, "two pods bound and one unschedulable")
    assert "1 Too many pods" in condition(pending[0])["message"]


def test_kubectl_describe_shows_why_a_pod_is_pending(fresh_server, kubectl):
    make_node(fresh_server, "n1", cpu="1")
    make_pod(fresh_server, "greedy", cpu="3")
    wait_unschedulable(fresh_server, "greedy")
    wait_for(lambda: events_for(fresh_server, "greedy"), "a FailedScheduling event")
    out = kubectl.for_server(fresh_server)("describe", "pod", "greedy", "-n", NS).stdout
    assert "FailedScheduling" in out
    assert "default-scheduler" in out
    assert "0/1 nodes are available: 1 Insufficient cpu." in out


def test_the_scheduler_runs_alone_from_its_subcommand(start_server):
    server = start_server("--disable-scheduler")
    make_node(server, "node-a")
    make_pod(server, "web")
    time.sleep(1.5)
    pod = get_pod(server, "web")
    assert not pod["spec"].get("nodeName") and condition(pod) is None, "the server scheduled despite --disable-scheduler"
    log = open(server.data_dir.parent / "scheduler.log", "wb")
    proc = subprocess.Popen(
        [str(server.binary), "scheduler", "--kubeconfig", str(server.kubeconfig)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_bound(server, "web")["spec"]["nodeName"] == "node-a"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (server.data_dir.parent / "scheduler.log").read_text()
