"""The Deployment controller, driven with kubectl and the official Python client: a
Deployment owns one ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`,
annotated with its revision), rolls out new templates with RollingUpdate or Recreate, and
reports the rollout in its status so that `kubectl rollout status/history/undo` work. It
adopts matching orphan ReplicaSets, releases owned ones whose labels stop matching, and
carries a ReplicaSet's ReplicaFailure condition over to the Deployment.

No kubelet runs here: the tests play its part by marking pods Running and Ready through the
pods' status subresource, which the ReplicaSet controller then counts as available."""

import json
import time
from datetime import datetime, timezone

from kubernetes import client

from support import wait_for

TIMEOUT = 30


class Cluster:
    """Python-client reads of one namespace, and the kubelet's readiness reports."""

    def __init__(self, tug, kube_client, namespace: str):
        self.tug = tug
        self.core = client.CoreV1Api(kube_client)
        self.apps = client.AppsV1Api(kube_client)
        self.ns = namespace

    def deploy(self, name: str):
        return self.apps.read_namespaced_deployment(name, self.ns)

    def replica_sets(self) -> list:
        return self.apps.list_namespaced_replica_set(self.ns).items

    def pods(self) -> list:
        items = self.core.list_namespaced_pod(self.ns).items
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def mark_ready(self) -> None:
        """Reports every live, not yet ready pod Running and Ready, as a kubelet would (again
        when the scheduler's status patch replaced the conditions)."""
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            }
        }
        for p in self.pods():
            ready = any(x.type == "Ready" and x.status == "True" for x in p.status.conditions or [])
            if p.status.phase == "Running" and ready:
                continue
            path = f"/api/v1/namespaces/{self.ns}/pods/{p.metadata.name}/status"
            self.tug.request("PATCH", path, json.dumps(patch), content_type="application/merge-patch+json")

    def rollout(self, name: str, image: str):
        """Marks pods ready until the deployment's rollout of `image` is complete."""

        def done():
            self.mark_ready()
            d = self.deploy(name)
            s = d.status
            want = d.spec.replicas
            complete = s is not None and (
                d.spec.template.spec.containers[0].image == image
                and s.observed_generation == d.metadata.generation
                and s.updated_replicas == want
                and s.replicas == want
                and s.available_replicas == want
            )
            return d if complete else None

        return wait_for(done, f"rollout of {image}", TIMEOUT, interval=0.5)

    def events(self, reason: str) -> list:
        return [e for e in self.core.list_namespaced_event(self.ns).items if e.reason == reason]


def test_create_deployment_makes_a_hashed_replica_set_with_revision_1(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    kubectl("create", "deployment", "web", "--image=nginx:1", "--replicas=3", "-n", namespace)
    d = c.deploy("web")

    (rs,) = wait_for(lambda: c.replica_sets(), "the deployment's replica set", TIMEOUT)
    h = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"web-{h}"
    assert rs.metadata.labels == {"app": "web", "pod-template-hash": h}
    assert rs.spec.selector.match_labels == {"app": "web", "pod-template-hash": h}
    assert rs.spec.template.metadata.labels == {"app": "web", "pod-template-hash": h}
    (ref,) = rs.metadata.owner_references
    assert (ref.kind, ref.name, ref.uid, ref.controller) == ("Deployment", "web", d.metadata.uid, True)
    a = rs.metadata.annotations
    assert a["deployment.kubernetes.io/revision"] == "1"
    assert a["deployment.kubernetes.io/desired-replicas"] == "3"
    assert a["deployment.kubernetes.io/max-replicas"] == "4"  # 3 + 25% surge rounded up
    assert rs.spec.replicas == 3

    def three_pods():
        pods = [p for p in c.pods() if any(r.uid == rs.metadata.uid for r in p.metadata.owner_references or [])]
        return pods if len(pods) == 3 else None

    for p in wait_for(three_pods, "3 pods owned by the replica set", TIMEOUT):
        assert p.metadata.name.startswith(f"web-{h}-")
        assert p.metadata.labels["pod-template-hash"] == h

    def progressing():
        d = c.deploy("web")
        s = d.status
        return d if s and s.observed_generation == d.metadata.generation and s.updated_replicas == 3 else None

    d = wait_for(progressing, "status with 3 updated replicas", TIMEOUT)
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert d.status.unavailable_replicas == 3
    conds = {x.type: x for x in d.status.conditions}
    assert (conds["Available"].status, conds["Available"].reason) == ("False", "MinimumReplicasUnavailable")
    assert conds["Progressing"].status == "True"
    (ev,) = wait_for(lambda: c.events("ScalingReplicaSet"), "a ScalingReplicaSet event", TIMEOUT)
    assert ev.message == f"Scaled up replica set web-{h} from 0 to 3"
    assert ev.involved_object.kind == "Deployment"

    d = c.rollout("web", "nginx:1")
    conds = {x.type: x for x in d.status.conditions}
    assert (conds["Available"].status, conds["Available"].reason) == ("True", "MinimumReplicasAvailable")
    assert (conds["Progressing"].status, conds["Progressing"].reason) == ("True", "NewReplicaSetAvailable")
    assert d.status.ready_replicas == 3
    assert not d.status.unavailable_replicas
    out = kubectl("get", "deploy,rs", "-n", namespace).stdout
    assert "deployment.apps/web" in out and "3/3" in out, out
    assert f"replicaset.apps/web-{h}" in out, out


def test_kubectl_scale_moves_the_replica_set(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    kubectl("create", "deployment", "web", "--image=nginx:1", "--replicas=2", "-n", namespace)
    c.rollout("web", "nginx:1")
    kubectl("scale", "deployment", "web", "--replicas=4", "-n", namespace)
    d = c.rollout("web", "nginx:1")
    (rs,) = c.replica_sets()
    assert rs.spec.replicas == 4
    assert rs.metadata.annotations["deployment.kubernetes.io/desired-replicas"] == "4"
    assert rs.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert d.status.replicas == 4


def test_set_image_rolls_out_a_second_replica_set_as_pods_become_ready(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    kubectl("create", "deployment", "web", "--image=nginx:1", "--replicas=3", "-n", namespace)
    c.rollout("web", "nginx:1")
    (first,) = c.replica_sets()

    kubectl("set", "image", "deployment/web", "nginx=nginx:2", "-n", namespace)
    # Until new pods are ready, the surge (1) is all that happens: no old pod goes.
    second = wait_for(
        lambda: [r for r in c.replica_sets() if r.metadata.name != first.metadata.name],
        "a second replica set",
        TIMEOUT,
    )[0]
    assert second.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    assert second.spec.replicas == 1
    time.sleep(1)
    old = next(r for r in c.replica_sets() if r.metadata.name == first.metadata.name)
    assert old.spec.replicas == 3, "old pods are kept while the new one is not available"

    status = kubectl.start("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s")
    try:
        c.rollout("web", "nginx:2")
        # rollout status returns once the rollout is complete.
        deadline = time.monotonic() + TIMEOUT
        while status.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status.process.returncode == 0
    finally:
        status.stop()

    sets = {r.metadata.name: r for r in c.replica_sets()}
    assert sets[first.metadata.name].spec.replicas == 0
    assert sets[second.metadata.name].spec.replicas == 3
    assert c.deploy("web").metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    msgs = [e.message for e in c.events("ScalingReplicaSet")]
    assert f"Scaled up replica set {second.metadata.name} from 0 to 1" in msgs
    assert f"Scaled down replica set {first.metadata.name} from 1 to 0" in msgs

    history = kubectl("rollout", "history", "deployment/web", "-n", namespace).stdout
    revisions = [line.split()[0] for line in history.splitlines()[2:] if line.strip()]
    assert revisions == ["1", "2"], history

    kubectl("rollout", "undo", "deployment/web", "-n", namespace)
    d = c.rollout("web", "nginx:1")
    sets = {r.metadata.name: r for r in c.replica_sets()}
    assert len(sets) == 2
    assert sets[first.metadata.name].spec.replicas == 3
    assert sets[first.metadata.name].metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "3"


def test_recreate_removes_every_old_pod_before_creating_new_ones(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    kubectl("create", "deployment", "web", "--image=nginx:1", "--replicas=2", "-n", namespace)
    kubectl("patch", "deployment", "web", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}')  # fmt: skip
    c.rollout("web", "nginx:1")
    (first,) = c.replica_sets()
    assert first.metadata.annotations["deployment.kubernetes.io/max-replicas"] == "2"

    kubectl("set", "image", "deployment/web", "nginx=nginx:2", "-n", namespace)
    d = c.rollout("web", "nginx:2")
    sets = {r.metadata.name: r for r in c.replica_sets()}
    assert sets[first.metadata.name].spec.replicas == 0
    (second,) = [r for n, r in sets.items() if n != first.metadata.name]
    assert second.spec.replicas == 2
    assert d.status.replicas == 2
    # The old set went to 0 in one step, and the new one came up from 0 in one step.
    msgs = [e.message for e in c.events("ScalingReplicaSet")]
    assert f"Scaled down replica set {first.metadata.name} from 2 to 0" in msgs
    assert f"Scaled up replica set {second.metadata.name} from 0 to 2" in msgs


def test_revision_history_limit_deletes_old_empty_replica_sets(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    kubectl("create", "deployment", "web", "--image=nginx:1", "--replicas=1", "-n", namespace)
    kubectl("patch", "deployment", "web", "-n", namespace, "--type=merge", "-p", '{"spec":{"revisionHistoryLimit":1}}')
    c.rollout("web", "nginx:1")
    for image in ["nginx:2", "nginx:3"]:
        kubectl("set", "image", "deployment/web", f"nginx={image}", "-n", namespace)
        c.rollout("web", image)
    sets = wait_for(lambda: len(c.replica_sets()) == 2 and c.replica_sets(), "2 replica sets left", TIMEOUT)
    revisions = sorted(r.metadata.annotations["deployment.kubernetes.io/revision"] for r in sets)
    assert revisions == ["2", "3"]


def test_a_paused_deployment_does_not_roll_until_resumed(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    kubectl("create", "deployment", "web", "--image=nginx:1", "--replicas=2", "-n", namespace)
    c.rollout("web", "nginx:1")
    kubectl("rollout", "pause", "deployment/web", "-n", namespace)
    kubectl("set", "image", "deployment/web", "nginx=nginx:2", "-n", namespace)

    def paused():
        d = c.deploy("web")
        conds = (d.status and d.status.conditions) or []
        cond = next((x for x in conds if x.type == "Progressing"), None)
        return d if cond and cond.reason == "DeploymentPaused" and cond.status == "Unknown" else None

    wait_for(paused, "Progressing=Unknown DeploymentPaused", TIMEOUT)
    time.sleep(1)
    assert len(c.replica_sets()) == 1
    kubectl("rollout", "resume", "deployment/web", "-n", namespace)
    c.rollout("web", "nginx:2")
    assert len(c.replica_sets()) == 2


def test_progress_deadline_exceeded_when_pods_never_become_ready(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    kubectl("create", "deployment", "web", "--image=nginx:1", "--replicas=1", "-n", namespace)
    kubectl("patch", "deployment", "web", "-n", namespace, "--type=merge", "-p", '{"spec":{"progressDeadlineSeconds":2}}')

    def timed_out():
        d = c.deploy("web")
        conds = (d.status and d.status.conditions) or []
        cond = next((x for x in conds if x.type == "Progressing"), None)
        return cond if cond and cond.reason == "ProgressDeadlineExceeded" else None

    cond = wait_for(timed_out, "Progressing=False ProgressDeadlineExceeded", TIMEOUT)
    assert cond.status == "False"
    assert "has timed out progressing" in cond.message
    out = kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=10s", check=False)
    assert out.returncode != 0
    assert "exceeded its progress deadline" in out.stderr + out.stdout


def test_scaling_mid_rollout_is_proportional(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    kubectl("create", "deployment", "web", "--image=nginx:1", "--replicas=10", "-n", namespace)
    c.rollout("web", "nginx:1")
    (first,) = c.replica_sets()
    # New pods never become ready: the rollout stops once 2 old replicas (25% unavailable)
    # went and the new set took the room (25% surge): 8 old + 5 new.
    kubectl("set", "image", "deployment/web", "nginx=nginx:2", "-n", namespace)

    def stalled():
        sets = {r.metadata.name: r.spec.replicas for r in c.replica_sets()}
        return sets if len(sets) == 2 and sum(sets.values()) == 13 else None

    def stalled_at_8_and_5():
        sets = stalled()
        return sets if sets and sets[first.metadata.name] == 8 else None

    wait_for(stalled_at_8_and_5, "8 old and 5 new replicas", TIMEOUT)

    kubectl("scale", "deployment", "web", "--replicas=20", "-n", namespace)

    def scaled():
        sets = {r.metadata.name: r for r in c.replica_sets()}
        desired = {r.metadata.annotations.get("deployment.kubernetes.io/desired-replicas") for r in sets.values()}
        return sets if desired == {"20"} else None

    sets = wait_for(scaled, "both sets annotated for 20 replicas", TIMEOUT)
    # 25 allowed (20 + 5 surge), shared by the max-replicas annotation (13):
    # old round(8 * 25 / 13) = 15, new round(5 * 25 / 13) = 10.
    sizes = {n: r.spec.replicas for n, r in sets.items()}
    assert sizes.pop(first.metadata.name) == 15
    assert list(sizes.values()) == [10]


def owner_uids(obj) -> list:
    return [r.uid for r in obj.metadata.owner_references or [] if r.controller]


def test_a_matching_orphan_replica_set_is_adopted(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    orphan = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "api-orphan", "labels": {"app": "api"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    }
    stranger = json.loads(json.dumps(orphan))
    stranger["metadata"] = {"name": "stranger", "labels": {"app": "other"}}
    stranger["spec"]["selector"]["matchLabels"] = {"app": "other"}
    stranger["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    c.apps.create_namespaced_replica_set(namespace, orphan)
    c.apps.create_namespaced_replica_set(namespace, stranger)
    kubectl("create", "deployment", "api", "--image=nginx:1", "--replicas=1", "-n", namespace)
    d = c.deploy("api")

    adopted = wait_for(
        lambda: (rs := c.apps.read_namespaced_replica_set("api-orphan", namespace))
        and owner_uids(rs) == [d.metadata.uid]
        and rs,
        "the orphan replica set adopted by the deployment",
        TIMEOUT,
    )
    (ref,) = adopted.metadata.owner_references
    assert (ref.kind, ref.name, ref.block_owner_deletion) == ("Deployment", "api", True)
    # Its template is not the Deployment's: the Deployment still rolls out its own set.
    c.rollout("api", "nginx:1")
    names = {rs.metadata.name for rs in c.replica_sets() if owner_uids(rs) == [d.metadata.uid]}
    assert "api-orphan" in names and len(names) == 2, names
    assert not c.apps.read_namespaced_replica_set("stranger", namespace).metadata.owner_references


def test_a_replica_set_whose_labels_stop_matching_is_released(kubectl, tug, kube_client, namespace):
    c = Cluster(tug, kube_client, namespace)
    kubectl("create", "deployment", "web", "--image=nginx:1", "--replicas=1", "-n", namespace)
    d = c.rollout("web", "nginx:1")
    (rs,) = c.replica_sets()
    kubectl("label", "rs", rs.metadata.name, "app=elsewhere", "--overwrite", "-n", namespace)

    wait_for(
        lambda: not c.apps.read_namespaced_replica_set(rs.metadata.name, namespace).metadata.owner_references,
        "the deployment's owner reference removed from the relabelled replica set",
        TIMEOUT,
    )
    # The Deployment has no set for its template any more and makes another one; the name
    # of the released set is taken, so the hash moves on with a collision count.
    def replacement():
        d = c.deploy("web")
        owned = [x for x in c.replica_sets() if owner_uids(x) == [d.metadata.uid]]
        return owned if len(owned) == 1 and owned[0].metadata.name != rs.metadata.name else None

    (new,) = wait_for(replacement, "a new replica set owned by the deployment", TIMEOUT)
    assert new.metadata.labels["app"] == "web"
    assert c.deploy("web").status.collision_count == 1
    assert d.metadata.uid not in owner_uids(c.apps.read_namespaced_replica_set(rs.metadata.name, namespace))


def test_replica_failure_of_a_replica_set_shows_on_the_deployment_until_it_clears(kubectl, tug, kube_client, namespace):
    # A template finalizer that is no qualified name passes the Deployment's and ReplicaSet's
    # validation (as upstream's) but not the pod's, so every pod creation is refused.
    c = Cluster(tug, kube_client, namespace)
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "broken"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "broken"}},
            "template": {
                "metadata": {"labels": {"app": "broken"}, "finalizers": ["not a finalizer!"]},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]},
            },
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def failure():
        d = c.deploy("broken")
        conds = (d.status and d.status.conditions) or []
        return next((x for x in conds if x.type == "ReplicaFailure"), None)

    cond = wait_for(failure, "ReplicaFailure on the deployment", TIMEOUT)
    assert (cond.status, cond.reason) == ("True", "FailedCreate")
    assert "finalizers" in cond.message, cond.message
    (rs,) = c.replica_sets()
    (rs_cond,) = [x for x in rs.status.conditions if x.type == "ReplicaFailure"]
    assert cond.message == rs_cond.message
    out = kubectl("describe", "deployment", "broken", "-n", namespace).stdout
    assert "ReplicaFailure" in out and "FailedCreate" in out, out

    c.apps.patch_namespaced_deployment(
        "broken", namespace, [{"op": "remove", "path": "/spec/template/metadata/finalizers"}]
    )
    c.rollout("broken", "nginx:1")
    wait_for(lambda: failure() is None, "the ReplicaFailure condition removed from the deployment", TIMEOUT)
