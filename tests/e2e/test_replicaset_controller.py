"""The ReplicaSet and ReplicationController controllers, driven with kubectl and the
official Python client: pod counts follow spec.replicas, pods carry the controller
reference and the template's labels, orphans are adopted and non-matching pods
released, deletion cascades through the garbage collector, and the controller reports
status and events.

No scheduler node or kubelet runs here, so the pods stay Pending; nothing relies on
them running."""

import json
import time

from kubernetes import client

from support import wait_for

TIMEOUT = 30


def replicaset(name: str, replicas: int, app: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app, "tier": "web"}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    }


def replication_controller(name: str, replicas: int, app: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"app": app},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    }


def bare_pod(name: str, labels: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }


class Cluster:
    """Python-client reads of one namespace."""

    def __init__(self, kube_client, namespace: str):
        self.core = client.CoreV1Api(kube_client)
        self.apps = client.AppsV1Api(kube_client)
        self.ns = namespace

    def pods(self, selector: str | None = None) -> list:
        items = self.core.list_namespaced_pod(self.ns, label_selector=selector).items
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def owned_by(self, uid: str) -> list:
        return [p for p in self.pods() if any(r.uid == uid for r in p.metadata.owner_references or [])]

    def pod_count(self, uid: str, count: int) -> list:
        """Waits until exactly `count` (at least 1) live pods are owned by `uid`; returns them."""

        def exactly():
            pods = self.owned_by(uid)
            return pods if len(pods) == count else None

        return wait_for(exactly, f"{count} pods owned by {uid}", TIMEOUT)

    def rs(self, name: str):
        return self.apps.read_namespaced_replica_set(name, self.ns)

    def settled(self, name: str, replicas: int):
        """The ReplicaSet once its status reports `replicas` for its current generation."""
        rs = self.rs(name)
        status = rs.status
        ok = status and status.replicas == replicas and status.observed_generation == rs.metadata.generation
        return rs if ok else None

    def events(self, reason: str) -> list:
        items = self.core.list_namespaced_event(self.ns).items
        return [e for e in items if e.reason == reason]


def apply(kubectl, namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def test_replicaset_creates_its_replicas_with_owner_references_and_labels(kubectl, kube_client, namespace):
    c = Cluster(kube_client, namespace)
    apply(kubectl, namespace, replicaset("web", 3, "web"))
    rs = c.rs("web")
    pods = c.pod_count(rs.metadata.uid, 3)

    for pod in pods:
        assert pod.metadata.name.startswith("web-")
        assert pod.metadata.generate_name == "web-"
        assert pod.metadata.labels == {"app": "web", "tier": "web"}
        assert pod.status.phase == "Pending"
        (ref,) = pod.metadata.owner_references
        assert (ref.api_version, ref.kind, ref.name, ref.uid) == ("apps/v1", "ReplicaSet", "web", rs.metadata.uid)
        assert ref.controller is True
        assert ref.block_owner_deletion is True

    status = wait_for(lambda: c.settled("web", 3), "status.replicas 3 and observedGeneration current", TIMEOUT).status
    assert status.fully_labeled_replicas == 3
    assert not status.ready_replicas
    assert not status.available_replicas

    # The count holds: nothing more is created once the pods are in the cache.
    time.sleep(2)
    assert len(c.owned_by(rs.metadata.uid)) == 3

    names = {p.metadata.name for p in pods}
    created = wait_for(lambda: len(c.events("SuccessfulCreate")) >= 3 and c.events("SuccessfulCreate"), "3 SuccessfulCreate events", TIMEOUT)
    assert {e.message for e in created} == {f"Created pod: {n}" for n in names}
    for e in created:
        assert (e.involved_object.kind, e.involved_object.name, e.involved_object.uid) == ("ReplicaSet", "web", rs.metadata.uid)
        assert e.source.component == "replicaset-controller"
        assert e.type == "Normal"
    table = kubectl("get", "events", "-n", namespace).stdout
    for n in names:
        assert "SuccessfulCreate" in table and f"Created pod: {n}" in table, table


def test_kubectl_scale_moves_the_pod_count_both_ways(kubectl, kube_client, namespace):
    c = Cluster(kube_client, namespace)
    apply(kubectl, namespace, replicaset("web", 2, "web"))
    uid = c.rs("web").metadata.uid
    c.pod_count(uid, 2)

    kubectl("scale", "rs", "web", "--replicas=5", "-n", namespace)
    c.pod_count(uid, 5)
    wait_for(lambda: c.settled("web", 5), "status.replicas 5", TIMEOUT)

    kubectl("scale", "rs", "web", "--replicas=1", "-n", namespace)
    c.pod_count(uid, 1)
    wait_for(lambda: c.settled("web", 1), "status.replicas 1", TIMEOUT)
    wait_for(lambda: len(c.events("SuccessfulDelete")) == 4, "4 SuccessfulDelete events", TIMEOUT)
    time.sleep(2)
    assert len(c.owned_by(uid)) == 1


def test_many_replicas_are_created_exactly_once_and_scale_to_zero(kube_client, namespace):
    # 25 pods take slow-start batches of 1, 2, 4, 8 and 10; expectations keep later syncs
    # from creating more while the cache catches up.
    c = Cluster(kube_client, namespace)
    rs = c.apps.create_namespaced_replica_set(namespace, replicaset("many", 25, "many"))
    c.pod_count(rs.metadata.uid, 25)
    wait_for(lambda: c.settled("many", 25), "status.replicas 25", TIMEOUT)
    time.sleep(2)
    assert len(c.owned_by(rs.metadata.uid)) == 25
    assert len(c.events("SuccessfulCreate")) == 25

    c.apps.patch_namespaced_replica_set_scale("many", namespace, {"spec": {"replicas": 0}})
    wait_for(lambda: not c.owned_by(rs.metadata.uid), "every pod deleted", TIMEOUT)
    wait_for(lambda: c.settled("many", 0), "status.replicas 0", TIMEOUT)


def test_scale_down_deletes_the_pod_with_the_lowest_deletion_cost(kube_client, namespace):
    c = Cluster(kube_client, namespace)
    rs = c.apps.create_namespaced_replica_set(namespace, replicaset("web", 3, "web"))
    pods = c.pod_count(rs.metadata.uid, 3)
    cheap = pods[1].metadata.name
    c.core.patch_namespaced_pod(
        cheap, namespace, {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-100"}}}
    )
    c.apps.patch_namespaced_replica_set_scale("web", namespace, {"spec": {"replicas": 2}})
    left = c.pod_count(rs.metadata.uid, 2)
    assert cheap not in {p.metadata.name for p in left}


def test_failed_creations_set_replica_failure_and_warn_until_fixed(kube_client, namespace):
    # A template finalizer that is no qualified name passes the ReplicaSet's validation (as
    # upstream's) but not the pod's, so every create fails.
    c = Cluster(kube_client, namespace)
    manifest = replicaset("broken", 3, "broken")
    manifest["spec"]["template"]["metadata"]["finalizers"] = ["not a finalizer!"]
    rs = c.apps.create_namespaced_replica_set(namespace, manifest)

    def failure():
        status = c.rs("broken").status
        conditions = (status.conditions if status else None) or []
        return next((x for x in conditions if x.type == "ReplicaFailure"), None)

    cond = wait_for(failure, "the ReplicaFailure condition", TIMEOUT)
    assert (cond.status, cond.reason) == ("True", "FailedCreate")
    assert "finalizers" in cond.message, cond.message
    warnings = wait_for(lambda: c.events("FailedCreate"), "FailedCreate events", TIMEOUT)
    assert all(e.type == "Warning" and e.message.startswith("Error creating: ") for e in warnings)
    assert not c.owned_by(rs.metadata.uid)

    c.apps.patch_namespaced_replica_set(
        "broken", namespace, [{"op": "remove", "path": "/spec/template/metadata/finalizers"}]
    )
    c.pod_count(rs.metadata.uid, 3)
    wait_for(lambda: failure() is None and c.settled("broken", 3), "the condition to clear", TIMEOUT)


def test_a_deleted_pod_is_replaced(kubectl, kube_client, namespace):
    c = Cluster(kube_client, namespace)
    apply(kubectl, namespace, replicaset("web", 2, "web"))
    uid = c.rs("web").metadata.uid
    victim = c.pod_count(uid, 2)[0].metadata.name

    kubectl("delete", "pod", victim, "-n", namespace)
    pods = wait_for(
        lambda: (p := c.owned_by(uid)) and len(p) == 2 and victim not in {x.metadata.name for x in p} and p,
        "a replacement pod",
        TIMEOUT,
    )
    assert len(pods) == 2


def test_a_matching_orphan_is_adopted_and_one_fewer_pod_created(kubectl, kube_client, namespace):
    c = Cluster(kube_client, namespace)
    c.core.create_namespaced_pod(namespace, bare_pod("orphan", {"app": "web", "tier": "web"}))
    c.core.create_namespaced_pod(namespace, bare_pod("stranger", {"app": "other"}))
    time.sleep(1)  # the orphan reaches the controller's cache before the ReplicaSet does

    apply(kubectl, namespace, replicaset("web", 3, "web"))
    rs = c.rs("web")
    pods = c.pod_count(rs.metadata.uid, 3)
    orphan = next((p for p in pods if p.metadata.name == "orphan"), None)
    assert orphan is not None, [p.metadata.name for p in pods]
    (ref,) = orphan.metadata.owner_references
    assert (ref.kind, ref.name, ref.uid, ref.controller, ref.block_owner_deletion) == (
        "ReplicaSet", "web", rs.metadata.uid, True, True,
    )  # fmt: skip
    assert not c.core.read_namespaced_pod("stranger", namespace).metadata.owner_references
    time.sleep(2)
    assert len(c.events("SuccessfulCreate")) == 2
    assert len(c.owned_by(rs.metadata.uid)) == 3


def test_a_pod_whose_labels_stop_matching_is_released_and_replaced(kubectl, kube_client, namespace):
    c = Cluster(kube_client, namespace)
    apply(kubectl, namespace, replicaset("web", 2, "web"))
    uid = c.rs("web").metadata.uid
    leaver = c.pod_count(uid, 2)[0].metadata.name

    kubectl("label", "pod", leaver, "app=elsewhere", "--overwrite", "-n", namespace)
    wait_for(
        lambda: not c.core.read_namespaced_pod(leaver, namespace).metadata.owner_references,
        "the owner reference to be removed",
        TIMEOUT,
    )
    pods = wait_for(
        lambda: (p := c.owned_by(uid)) and len(p) == 2 and leaver not in {x.metadata.name for x in p} and p,
        "a replacement pod",
        TIMEOUT,
    )
    assert all(p.metadata.labels["app"] == "web" for p in pods)
    # The released pod is left alone.
    assert c.core.read_namespaced_pod(leaver, namespace).metadata.deletion_timestamp is None


def test_deleting_a_replicaset_deletes_its_pods(kubectl, kube_client, namespace):
    c = Cluster(kube_client, namespace)
    apply(kubectl, namespace, replicaset("web", 3, "web"))
    uid = c.rs("web").metadata.uid
    c.pod_count(uid, 3)

    kubectl("delete", "rs", "web", "-n", namespace)
    wait_for(lambda: not c.pods("app=web"), "the garbage collector to delete the pods", TIMEOUT)


def test_orphan_deletion_of_a_replicaset_keeps_its_pods_without_owner(kubectl, kube_client, namespace):
    c = Cluster(kube_client, namespace)
    apply(kubectl, namespace, replicaset("web", 2, "web"))
    uid = c.rs("web").metadata.uid
    names = {p.metadata.name for p in c.pod_count(uid, 2)}

    kubectl("delete", "rs", "web", "--cascade=orphan", "--timeout=60s", "-n", namespace, timeout=90)
    time.sleep(1)
    kept = c.pods("app=web")
    assert {p.metadata.name for p in kept} == names
    assert all(not p.metadata.owner_references for p in kept)


def test_replication_controller_creates_scales_and_cascades(kubectl, kube_client, namespace):
    c = Cluster(kube_client, namespace)
    apply(kubectl, namespace, replication_controller("legacy", 2, "legacy"))
    rc = c.core.read_namespaced_replication_controller("legacy", namespace)
    pods = c.pod_count(rc.metadata.uid, 2)
    for pod in pods:
        assert pod.metadata.name.startswith("legacy-")
        assert pod.metadata.labels == {"app": "legacy"}
        (ref,) = pod.metadata.owner_references
        assert (ref.api_version, ref.kind, ref.name, ref.controller, ref.block_owner_deletion) == (
            "v1", "ReplicationController", "legacy", True, True,
        )  # fmt: skip

    kubectl("scale", "rc", "legacy", "--replicas=4", "-n", namespace)
    c.pod_count(rc.metadata.uid, 4)

    def rc_settled():
        r = c.core.read_namespaced_replication_controller("legacy", namespace)
        ok = r.status and r.status.replicas == 4 and r.status.observed_generation == r.metadata.generation
        return r if ok else None

    status = wait_for(rc_settled, "RC status.replicas 4", TIMEOUT).status
    assert status.fully_labeled_replicas == 4

    kubectl("scale", "rc", "legacy", "--replicas=1", "-n", namespace)
    c.pod_count(rc.metadata.uid, 1)
    created = c.events("SuccessfulCreate")
    assert len(created) == 4
    assert all(e.source.component == "replication-controller" for e in created)

    kubectl("delete", "rc", "legacy", "-n", namespace)
    wait_for(lambda: not c.pods("app=legacy"), "the garbage collector to delete the RC's pods", TIMEOUT)
