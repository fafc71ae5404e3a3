"""The DaemonSet controller on simulated nodes (which play the kubelet: pods become Running
and Ready), driven with kubectl and the official Python client: one pod per eligible node,
pinned to it by required node affinity and bound by the scheduler; nodeSelector and taints
decide which nodes are eligible, and a node that stops being eligible loses its pod; a new
node gets a pod; rolling updates (maxUnavailable, maxSurge) and OnDelete through
ControllerRevisions; failed pods are replaced; `kubectl rollout status/history/undo`.

The module's three nodes are shared: tests that label or taint them undo it afterwards."""

import json
import time

import pytest
from kubernetes import client

from support import unique_name, wait_for

TIMEOUT = 60
HASH = "controller-revision-hash"
GENERATION = "pod-template-generation"
NOT_READY = {"sim.tugboat.dev/ready": "false"}


class Namespace:
    """One namespace of the module's sim cluster, read with the Python client."""

    def __init__(self, cluster, name: str):
        self.cluster = cluster
        self.name = name
        self.core = client.CoreV1Api(cluster.client)
        self.apps = client.AppsV1Api(cluster.client)

    def kubectl(self, *args, version="1.36", **kwargs):
        return self.cluster.kubectl("-n", self.name, *args, version=version, **kwargs)

    def apply(self, manifest: dict):
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def ds(self, name: str):
        return self.apps.read_namespaced_daemon_set(name, self.name)

    def pods(self, name: str) -> list:
        """The live pods of DaemonSet `name`."""
        items = self.core.list_namespaced_pod(self.name, label_selector=f"app={name}").items
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def pods_by_node(self, name: str) -> dict:
        by_node: dict = {}
        for p in self.pods(name):
            by_node.setdefault(p.spec.node_name, []).append(p)
        return by_node

    def events(self, reason: str) -> list[str]:
        return [e.message for e in self.core.list_namespaced_event(self.name).items if e.reason == reason]

    def wait_status(self, name: str, what: str, **expected):
        """Waits until the DaemonSet has observed its generation and its status has `expected`."""

        def done():
            ds = self.ds(name)
            st = ds.status
            if st is None or st.observed_generation != ds.metadata.generation:
                return None
            seen = {k: getattr(st, k) or 0 for k in expected}
            return ds if seen == expected else None

        return wait_for(done, f"daemonset {name}: {what} {expected}", TIMEOUT, interval=0.3)


@pytest.fixture
def ns(sim_cluster, request):
    name = unique_name(f"ds-{request.node.name}")
    resp = sim_cluster.server.request(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    assert resp.status == 201, resp
    yield Namespace(sim_cluster, name)
    sim_cluster.server.request("DELETE", f"/api/v1/namespaces/{name}")


def daemonset(name: str, image: str = "registry.local/agent:1", annotations=None, pod_spec=None, **spec) -> dict:
    body = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {"containers": [{"name": "agent", "image": image}], **(pod_spec or {})},
            },
            **spec,
        },
    }
    return body


def full(count: int) -> dict:
    """The status of a DaemonSet fully rolled out on `count` nodes."""
    return {
        "desired_number_scheduled": count,
        "current_number_scheduled": count,
        "number_ready": count,
        "number_available": count,
        "updated_number_scheduled": count,
        "number_misscheduled": 0,
    }


def test_a_pod_per_node_pinned_by_affinity_with_revision_labels(ns, sim_cluster):
    ns.apply(daemonset("agent"))
    ns.wait_status("agent", "running everywhere", **full(3), number_unavailable=0)
    by_node = ns.pods_by_node("agent")
    assert sorted(by_node) == sorted(sim_cluster.node_names)
    assert all(len(pods) == 1 for pods in by_node.values()), by_node

    revisions = ns.apps.list_namespaced_controller_revision(ns.name).items
    assert [r.revision for r in revisions] == [1]
    rev = revisions[0]
    assert rev.metadata.owner_references[0].kind == "DaemonSet"
    assert rev.metadata.owner_references[0].controller is True
    for node, (pod,) in by_node.items():
        # Upstream's way: the scheduler binds the pod, led by the affinity to its node.
        terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
        assert [(f.key, f.operator, f.values) for f in terms[0].match_fields] == [("metadata.name", "In", [node])]
        assert pod.metadata.labels[HASH] == rev.metadata.labels[HASH]
        assert pod.metadata.labels[GENERATION] == "1"
        keys = {t.key for t in pod.spec.tolerations}
        assert {"node.kubernetes.io/not-ready", "node.kubernetes.io/unschedulable"} <= keys
        assert pod.metadata.owner_references[0].kind == "DaemonSet"
    assert len(ns.events("SuccessfulCreate")) == 3

    # A deleted pod comes back on its node.
    victim = by_node[sim_cluster.node_names[1]][0].metadata.name
    ns.core.delete_namespaced_pod(victim, ns.name)
    wait_for(
        lambda: [p for p in ns.pods_by_node("agent").get(sim_cluster.node_names[1], []) if p.metadata.name != victim],
        "a replacement on the node",
        TIMEOUT,
    )


def test_node_selector_restricts_and_relabelling_moves_the_pod(ns, sim_cluster):
    label = unique_name("e2e-ds")
    first, second = sim_cluster.node_names[0], sim_cluster.node_names[1]
    try:
        ns.cluster.kubectl("label", "node", first, f"{label}=yes")
        ns.apply(daemonset("picky", pod_spec={"nodeSelector": {label: "yes"}}))
        ns.wait_status("picky", "on the labelled node", **full(1))
        assert list(ns.pods_by_node("picky")) == [first]

        ns.cluster.kubectl("label", "node", second, f"{label}=yes")
        ns.wait_status("picky", "on both labelled nodes", **full(2))
        ns.cluster.kubectl("label", "node", first, f"{label}-")
        ns.wait_status("picky", "after the label went", **full(1))
        wait_for(lambda: list(ns.pods_by_node("picky")) == [second], "the pod gone from the unlabelled node", TIMEOUT)
        assert ns.events("SuccessfulDelete")
    finally:
        for node in (first, second):
            ns.cluster.kubectl("label", "node", node, f"{label}-", check=False)


def test_tainted_node_is_skipped_unless_tolerated(ns, sim_cluster):
    key = unique_name("e2e-dedicated")
    tainted = sim_cluster.node_names[2]
    try:
        ns.cluster.kubectl("taint", "node", tainted, f"{key}=db:NoSchedule")
        ns.apply(daemonset("plain"))
        toleration = {"key": key, "operator": "Equal", "value": "db", "effect": "NoSchedule"}
        ns.apply(daemonset("tolerant", pod_spec={"tolerations": [toleration]}))
        ns.wait_status("plain", "off the tainted node", **full(2))
        ns.wait_status("tolerant", "everywhere", **full(3))
        assert tainted not in ns.pods_by_node("plain")
        assert tainted in ns.pods_by_node("tolerant")

        # A NoExecute taint the pod does not tolerate takes the running daemon off.
        ns.cluster.kubectl("taint", "node", tainted, f"{key}=db:NoExecute")
        ns.wait_status("tolerant", "off the NoExecute node", **full(2))
        wait_for(lambda: tainted not in ns.pods_by_node("tolerant"), "the pod gone from the node", TIMEOUT)
    finally:
        ns.cluster.kubectl("taint", "node", tainted, f"{key}-", check=False)


def test_rolling_update_keeps_max_unavailable_then_rollout_status_history_and_undo(ns):
    ns.apply(daemonset("roll", updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}))
    ns.wait_status("roll", "rolled out", **full(3))
    out = ns.kubectl("rollout", "status", "daemonset/roll", "--timeout=30s").stdout
    assert 'daemon set "roll" successfully rolled out' in out

    # New pods that never become ready: with maxUnavailable 1 the update stops after one.
    ns.apply(daemonset("roll", image="registry.local/agent:2", annotations=NOT_READY,
                       updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}))  # fmt: skip
    ds = ns.wait_status("roll", "stuck after one new pod", updated_number_scheduled=1, number_unavailable=1)
    images = sorted(p.spec.containers[0].image for p in ns.pods("roll"))
    assert images == ["registry.local/agent:1", "registry.local/agent:1", "registry.local/agent:2"], images
    stuck = ns.kubectl("rollout", "status", "daemonset/roll", "--timeout=2s", check=False)
    assert stuck.returncode != 0
    assert "1 out of 3 new pods have been updated" in stuck.stdout + stuck.stderr
    assert ds.status.desired_number_scheduled == 3

    history = ns.kubectl("rollout", "history", "daemonset/roll").stdout
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "2"], history
    detail = ns.kubectl("rollout", "history", "daemonset/roll", "--revision=2").stdout
    assert "registry.local/agent:2" in detail, detail

    ns.kubectl("rollout", "undo", "daemonset/roll")
    ns.wait_status("roll", "back on the first template", **full(3))
    assert {p.spec.containers[0].image for p in ns.pods("roll")} == {"registry.local/agent:1"}
    out = ns.kubectl("rollout", "status", "daemonset/roll", "--timeout=30s").stdout
    assert "successfully rolled out" in out
    # The first template's revision became the newest.
    revisions = sorted(r.revision for r in ns.apps.list_namespaced_controller_revision(ns.name).items)
    assert revisions == [2, 3]


def test_rolling_update_runs_to_completion_with_kubectl_set_image(ns):
    ns.apply(daemonset("web", updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "50%"}}))
    ns.wait_status("web", "rolled out", **full(3))
    old = {p.metadata.name for p in ns.pods("web")}
    ns.kubectl("set", "image", "daemonset/web", "agent=registry.local/agent:2")
    # The oldest supported kubectl reads the same status.
    out = ns.kubectl("rollout", "status", "daemonset/web", "--timeout=60s", version="1.27").stdout
    assert "successfully rolled out" in out
    pods = ns.pods("web")
    assert {p.spec.containers[0].image for p in pods} == {"registry.local/agent:2"}
    assert not old & {p.metadata.name for p in pods}
    assert {p.metadata.labels[GENERATION] for p in pods} == {"2"}


def test_max_surge_starts_the_new_pod_beside_the_old_one(ns):
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    ns.apply(daemonset("surge", updateStrategy=strategy))
    ns.wait_status("surge", "rolled out", **full(3))
    # The status judges a node by its oldest pod, ordered by creationTimestamp (whole seconds),
    # ties broken by name as upstream: the surge pod must be created in a later second than the
    # old ones for "oldest" to mean the old pod (sim nodes roll out within the same second).
    time.sleep(1.1)
    ns.apply(daemonset("surge", image="registry.local/agent:2", annotations=NOT_READY, updateStrategy=strategy))

    def doubled():
        by_node = ns.pods_by_node("surge")
        crowded = [n for n, pods in by_node.items() if len(pods) == 2]
        return crowded if len(ns.pods("surge")) == 4 else None

    (node,) = wait_for(doubled, "one node running old and new pod", TIMEOUT)
    images = sorted(p.spec.containers[0].image for p in ns.pods_by_node("surge")[node])
    assert images == ["registry.local/agent:1", "registry.local/agent:2"]
    ds = ns.wait_status("surge", "surging", updated_number_scheduled=0, number_available=3)
    assert ds.status.number_unavailable == 0


def test_on_delete_replaces_only_deleted_pods(ns, sim_cluster):
    ns.apply(daemonset("manual", updateStrategy={"type": "OnDelete"}))
    ns.wait_status("manual", "rolled out", **full(3))
    ns.apply(daemonset("manual", image="registry.local/agent:2", updateStrategy={"type": "OnDelete"}))
    ns.wait_status("manual", "updated template seen", updated_number_scheduled=0, number_available=3)
    node = sim_cluster.node_names[0]
    (pod,) = ns.pods_by_node("manual")[node]
    ns.core.delete_namespaced_pod(pod.metadata.name, ns.name)

    def replaced():
        pods = ns.pods_by_node("manual").get(node, [])
        return pods if pods and pods[0].metadata.name != pod.metadata.name else None

    (new,) = wait_for(replaced, "a replacement with the new template", TIMEOUT)
    assert new.spec.containers[0].image == "registry.local/agent:2"
    ns.wait_status("manual", "one pod updated", updated_number_scheduled=1, number_available=3)
    assert {p.spec.containers[0].image for n, ps in ns.pods_by_node("manual").items() if n != node for p in ps} == {
        "registry.local/agent:1"
    }


def test_a_failed_pod_is_deleted_and_replaced(ns, sim_cluster):
    ns.apply(daemonset("flaky"))
    ns.wait_status("flaky", "rolled out", **full(3))
    node = sim_cluster.node_names[0]
    (pod,) = ns.pods_by_node("flaky")[node]
    # What a kubelet reports when it rejects or loses a pod.
    patch = {"status": {"phase": "Failed", "reason": "Evicted"}}
    path = f"/api/v1/namespaces/{ns.name}/pods/{pod.metadata.name}/status"
    resp = sim_cluster.server.request("PATCH", path, json.dumps(patch), content_type="application/merge-patch+json")
    assert resp.status == 200, resp

    def replaced():
        pods = ns.pods_by_node("flaky").get(node, [])
        return [p for p in pods if p.metadata.name != pod.metadata.name]

    wait_for(replaced, "a replacement for the failed pod", TIMEOUT)
    assert any(pod.metadata.name in m for m in ns.events("FailedDaemonPod"))


def test_a_new_node_gets_a_pod(ns, sim_cluster, start_sim_nodes):
    ns.apply(daemonset("spread"))
    ns.wait_status("spread", "rolled out", **full(3))
    extra = start_sim_nodes(sim_cluster.server, 1)
    try:
        ns.wait_status("spread", "on the new node too", **full(4))
        assert extra.names[0] in ns.pods_by_node("spread")
    finally:
        extra.stop()
        # Later tests expect the module's three nodes only.
        sim_cluster.server.request("DELETE", f"/api/v1/nodes/{extra.names[0]}")
    ns.wait_status("spread", "back to three nodes", desired_number_scheduled=3)
