"""Node lifecycle: pod CIDRs for nodes (node IPAM), nodes that go silent becoming Unknown and
tainted, NoExecute taint eviction honouring tolerationSeconds, the default tolerations added by
admission, and the pod garbage collector removing pods of deleted nodes."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from support import unique_name, wait_for

# Short timings (upstream: 40s, 20s, 40s); the grace period must outlast the 10 s lease renewal
# interval of the (simulated) kubelets plus the 5 s monitor period.
FAST = ("--node-monitor-grace-period", "20s", "--pod-gc-period", "1s", "--pod-gc-orphan-quarantine", "2s")


def make_namespace(server) -> str:
    name = unique_name("nl")
    server.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def get(server, path: str) -> dict:
    resp = server.request("GET", path)
    assert resp.status == 200, resp
    return resp.json()


def pod_body(name: str, tolerations: list | None = None, node_name: str | None = None) -> dict:
    spec = {"containers": [{"name": "c", "image": "busybox"}]}
    if tolerations is not None:
        spec["tolerations"] = tolerations
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def unreachable_for(seconds: int | None) -> dict:
    t = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}
    if seconds is not None:
        t["tolerationSeconds"] = seconds
    return t


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def test_nodes_get_distinct_pod_cidrs_from_the_cluster_cidr(start_server, start_sim_nodes):
    # Room for two /24s only: the third node waits until a node is deleted.
    server = start_server("--cluster-cidr", "10.99.0.0/23", "--node-cidr-mask-size", "24")
    nodes = start_sim_nodes(server, 3)

    def cidrs():
        found = {}
        for name in nodes.names:
            resp = server.request("GET", f"/api/v1/nodes/{name}")
            spec = (resp.json().get("spec") or {}) if resp.status == 200 else {}
            if spec.get("podCIDR"):
                assert spec["podCIDRs"] == [spec["podCIDR"]], spec
                found[name] = spec["podCIDR"]
        return found

    found = wait_for(lambda: len(c := cidrs()) == 2 and c, "two nodes with a podCIDR", timeout=20)
    nets = [ipaddress.ip_network(c) for c in found.values()]
    assert len(set(nets)) == 2, found
    assert all(n.prefixlen == 24 and n.subnet_of(ipaddress.ip_network("10.99.0.0/23")) for n in nets), found
    (waiting,) = set(nodes.names) - set(found)

    def cidr_not_available():
        events = get(server, "/api/v1/namespaces/default/events")["items"]
        return any(e["reason"] == "CIDRNotAvailable" and e["involvedObject"]["name"] == waiting for e in events)

    wait_for(cidr_not_available, "a CIDRNotAvailable event for the node left without a range", timeout=20)

    # Deleting a node releases its range for the waiting node.
    deleted = sorted(found)[0]
    assert server.request("DELETE", f"/api/v1/nodes/{deleted}").status == 200
    wait_for(lambda: cidrs().get(waiting) == found[deleted], "the freed range given to the waiting node", timeout=20)


def test_cordoned_node_gets_the_unschedulable_taint_until_uncordoned(start_server, start_sim_nodes):
    server = start_server()
    (node,) = start_sim_nodes(server, 1).names

    def taint_keys():
        spec = get(server, f"/api/v1/nodes/{node}").get("spec") or {}
        return {(t["key"], t["effect"]) for t in spec.get("taints") or []}

    unschedulable = ("node.kubernetes.io/unschedulable", "NoSchedule")
    for value, present in ((True, True), (False, False)):
        resp = server.request(
            "PATCH", f"/api/v1/nodes/{node}", {"spec": {"unschedulable": value}},
            content_type="application/merge-patch+json",
        )  # fmt: skip
        assert resp.status == 200, resp
        wait_for(lambda: (unschedulable in taint_keys()) == present, f"unschedulable taint present={present}", timeout=10)


def test_pods_get_default_tolerations_for_not_ready_and_unreachable_nodes(start_server):
    server = start_server()
    ns = make_namespace(server)
    pod = server.create(f"/api/v1/namespaces/{ns}/pods", pod_body("plain"))
    tolerations = {t["key"]: t for t in pod["spec"]["tolerations"]}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        assert tolerations[key] == {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    # A pod that already tolerates one of them keeps its own toleration and gets the other.
    own = server.create(f"/api/v1/namespaces/{ns}/pods", pod_body("own", [unreachable_for(7)]))
    got = [(t["key"], t.get("tolerationSeconds")) for t in own["spec"]["tolerations"]]
    assert got == [("node.kubernetes.io/unreachable", 7), ("node.kubernetes.io/not-ready", 300)], got


def test_silent_node_becomes_unknown_tainted_and_its_pods_are_evicted(start_server, start_sim_nodes):
    server = start_server(*FAST)
    ns = make_namespace(server)
    victim = start_sim_nodes(server, 1)
    node = victim.names[0]
    # A ReplicaSet whose pod lands on the victim (the only node yet), tolerating it briefly.
    template_tolerations = [unreachable_for(1)]
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}], "tolerations": template_tolerations},
            },
        },
    }
    server.create(f"/apis/apps/v1/namespaces/{ns}/replicasets", rs)
    server.create(f"/api/v1/namespaces/{ns}/pods", pod_body("brief", [unreachable_for(4)], node))
    server.create(f"/api/v1/namespaces/{ns}/pods", pod_body("forever", [unreachable_for(None)], node))

    def running_on(name_filter, node_name):
        pods = get(server, f"/api/v1/namespaces/{ns}/pods")["items"]
        return [
            p
            for p in pods
            if name_filter(p)
            and p["spec"].get("nodeName") == node_name
            and (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]

    is_web = lambda p: p["metadata"]["name"].startswith("web-")  # noqa: E731
    first = wait_for(lambda: running_on(is_web, node), "the ReplicaSet's pod running on the victim", timeout=30)[0]
    wait_for(lambda: len(running_on(lambda p: True, node)) == 3, "all three pods running on the victim", timeout=30)
    healthy = start_sim_nodes(server, 1)
    victim.stop()

    def unknown():
        n = get(server, f"/api/v1/nodes/{node}")
        ready = condition(n, "Ready")
        taints = {(t["key"], t["effect"]): t for t in (n.get("spec") or {}).get("taints") or []}
        if ready["status"] != "Unknown" or ("node.kubernetes.io/unreachable", "NoExecute") not in taints:
            return None
        return ready, taints

    ready, taints = wait_for(unknown, "the silent node Ready=Unknown and tainted unreachable", timeout=30)
    assert ready["reason"] == "NodeStatusUnknown", ready
    assert ready["message"] == "Kubelet stopped posting node status.", ready
    assert ("node.kubernetes.io/unreachable", "NoSchedule") in taints, taints
    tainted_at = parse_time(taints[("node.kubernetes.io/unreachable", "NoExecute")]["timeAdded"])

    def evicted(name):
        p = get(server, f"/api/v1/namespaces/{ns}/pods/{name}")
        return p if p["metadata"].get("deletionTimestamp") else None

    brief = wait_for(lambda: evicted("brief"), "pod 'brief' deleted by the taint manager", timeout=20)
    target = condition(brief, "DisruptionTarget")
    assert target and target["status"] == "True" and target["reason"] == "DeletionByTaintManager", brief
    # Evicted no sooner than its 4 s toleration allows (times have second resolution).
    assert (parse_time(target["lastTransitionTime"]) - tainted_at).total_seconds() >= 3, (target, tainted_at)
    events = get(server, f"/api/v1/namespaces/{ns}/events")["items"]
    assert any(
        e["reason"] == "TaintManagerEviction"
        and e["involvedObject"]["name"] == "brief"
        and e["message"] == f"Marking for deletion Pod {ns}/brief"
        for e in events
    ), [(e["reason"], e["message"]) for e in events]

    # The ReplicaSet's pod goes too and is replaced on the healthy node.
    wait_for(lambda: evicted(first["metadata"]["name"]), "the ReplicaSet's pod deleted", timeout=20)
    wait_for(lambda: running_on(is_web, healthy.names[0]), "a replacement pod running on the healthy node", timeout=30)

    # The pod tolerating the taint forever stays, but is no longer Ready.
    forever = get(server, f"/api/v1/namespaces/{ns}/pods/forever")
    assert not forever["metadata"].get("deletionTimestamp"), forever["metadata"]
    assert condition(forever, "Ready")["status"] == "False", forever["status"]


def test_pods_of_a_deleted_node_are_garbage_collected(start_server):
    server = start_server(*FAST)
    ns = make_namespace(server)
    node = unique_name("gone")
    server.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    server.create(f"/api/v1/namespaces/{ns}/pods", pod_body("orphan", node_name=node))
    resp = server.request("DELETE", f"/api/v1/nodes/{node}")
    assert resp.status == 200, resp

    def gone():
        return server.request("GET", f"/api/v1/namespaces/{ns}/pods/orphan").status == 404

    wait_for(gone, "the orphaned pod deleted", timeout=20)
