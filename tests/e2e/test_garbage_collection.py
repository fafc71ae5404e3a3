"""The garbage collector: dependents (objects with an ownerReference) follow their
owner's deletion as its propagation policy says, driven through kubectl and raw
DELETE requests.

No workload controller runs in these tests, so owners and dependents are made by
hand: mostly ConfigMaps that own ConfigMaps, which nothing else touches."""

from support import wait_for

HOLD = "e2e.tugboat.dev/hold"
GC_TIMEOUT = 30


def configmap(name: str, owners: list[dict] | None = None, finalizers: list[str] | None = None) -> dict:
    meta: dict = {"name": name, "labels": {"e2e": "gc"}}
    if owners:
        meta["ownerReferences"] = owners
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"name": name}}


def owner_ref(owner: dict, block: bool | None = None) -> dict:
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    if block is not None:
        ref["blockOwnerDeletion"] = block
    return ref


class Objects:
    """GETs of one namespace's configmaps."""

    def __init__(self, tug, namespace: str):
        self.tug = tug
        self.collection = f"/api/v1/namespaces/{namespace}/configmaps"

    def create(self, body: dict) -> dict:
        return self.tug.create(self.collection, body)

    def get(self, name: str) -> dict | None:
        resp = self.tug.request("GET", f"{self.collection}/{name}")
        if resp.status == 404:
            return None
        assert resp.status == 200, resp
        return resp.json()

    def gone(self, name: str) -> bool:
        return self.get(name) is None

    def delete(self, name: str, policy: str | None = None):
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if policy:
            body["propagationPolicy"] = policy
        return self.tug.request("DELETE", f"{self.collection}/{name}", body)

    def drop_finalizers(self, name: str) -> None:
        resp = self.tug.request(
            "PATCH",
            f"{self.collection}/{name}",
            {"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json",
        )
        assert resp.status == 200, resp


def deleted_line(kubectl, kind: str, name: str, namespace: str) -> str:
    if kubectl.version == "1.27":
        return f'{kind} "{name}" deleted'
    return f'{kind} "{name}" deleted from {namespace} namespace'


def test_background_deletion_of_an_owner_collects_its_dependents(kubectl, tug, namespace):
    objects = Objects(tug, namespace)
    owner = objects.create(configmap("owner"))
    objects.create(configmap("dependent", owners=[owner_ref(owner)]))
    objects.create(configmap("bystander"))

    result = kubectl("delete", "configmap", "owner", "--cascade=background", "-n", namespace)
    assert result.stdout.strip() == deleted_line(kubectl, "configmap", "owner", namespace)
    # Background: the owner goes at once, the collector removes the dependent afterwards.
    assert objects.gone("owner")
    wait_for(lambda: objects.gone("dependent"), "the garbage collector to delete the dependent", GC_TIMEOUT)
    assert objects.get("bystander") is not None


def test_plain_kubectl_delete_collects_dependents(kubectl, tug, namespace):
    # kubectl's default --cascade is background.
    objects = Objects(tug, namespace)
    owner = objects.create(configmap("owner"))
    objects.create(configmap("dependent", owners=[owner_ref(owner)]))

    kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(lambda: objects.gone("dependent"), "the garbage collector to delete the dependent", GC_TIMEOUT)


def test_orphan_deletion_keeps_dependents_and_drops_their_owner_reference(kubectl, tug, namespace):
    objects = Objects(tug, namespace)
    owner = objects.create(configmap("owner"))
    dependent = objects.create(configmap("dependent", owners=[owner_ref(owner, block=True)]))

    # kubectl waits until the owner is gone, which takes the collector's work:
    # the server only marks the owner with the `orphan` finalizer.
    result = kubectl("delete", "configmap", "owner", "--cascade=orphan", "--timeout=60s", "-n", namespace, timeout=90)
    assert result.stdout.strip() == deleted_line(kubectl, "configmap", "owner", namespace)
    assert objects.gone("owner")

    kept = objects.get("dependent")
    assert kept is not None, "an orphaned dependent was deleted"
    assert kept["metadata"]["uid"] == dependent["metadata"]["uid"]
    assert not kept["metadata"].get("ownerReferences"), kept["metadata"]
    assert "deletionTimestamp" not in kept["metadata"]


def test_orphan_deletion_marks_the_owner_until_the_collector_is_done(tug, namespace):
    objects = Objects(tug, namespace)
    owner = objects.create(configmap("owner"))
    objects.create(configmap("dependent", owners=[owner_ref(owner)]))

    # The DELETE answers with the owner as it now is: being deleted, with the orphan finalizer.
    resp = objects.delete("owner", "Orphan")
    assert resp.status == 200, resp
    marked = resp.json()
    assert marked["kind"] == "ConfigMap", marked
    assert marked["metadata"].get("deletionTimestamp"), marked["metadata"]
    assert "orphan" in marked["metadata"]["finalizers"], marked["metadata"]

    wait_for(lambda: objects.gone("owner"), "the collector to orphan the dependents and release the owner", GC_TIMEOUT)
    kept = objects.get("dependent")
    assert kept is not None
    assert not kept["metadata"].get("ownerReferences"), kept["metadata"]


def test_foreground_deletion_deletes_dependents_before_the_owner(kubectl, tug, namespace):
    objects = Objects(tug, namespace)
    owner = objects.create(configmap("owner"))
    objects.create(configmap("dependent", owners=[owner_ref(owner, block=True)]))

    # kubectl waits for the owner, and the owner is only deleted once its blocking
    # dependents are: by the time kubectl returns, both are gone.
    result = kubectl(
        "delete", "configmap", "owner", "--cascade=foreground", "--timeout=60s", "-n", namespace, timeout=90
    )  # fmt: skip
    assert result.stdout.strip() == deleted_line(kubectl, "configmap", "owner", namespace)
    assert objects.gone("owner")
    assert objects.gone("dependent")


def test_foreground_deletion_waits_for_a_dependent_held_by_a_finalizer(tug, namespace):
    objects = Objects(tug, namespace)
    owner = objects.create(configmap("owner"))
    objects.create(configmap("held", owners=[owner_ref(owner, block=True)], finalizers=[HOLD]))

    resp = objects.delete("owner", "Foreground")
    assert resp.status == 200, resp
    marked = resp.json()
    assert marked["metadata"].get("deletionTimestamp"), marked["metadata"]
    assert "foregroundDeletion" in marked["metadata"]["finalizers"], marked["metadata"]

    # The collector deletes the dependent; its finalizer keeps it, and it keeps the owner.
    held = wait_for(
        lambda: (obj := objects.get("held")) and obj["metadata"].get("deletionTimestamp") and obj,
        "the collector to delete the held dependent",
        GC_TIMEOUT,
    )
    assert held["metadata"]["finalizers"] == [HOLD]
    still = objects.get("owner")
    assert still is not None, "the owner went before its blocking dependent"
    assert "foregroundDeletion" in still["metadata"]["finalizers"]

    # Releasing the dependent lets both go: first it, then the owner.
    objects.drop_finalizers("held")
    assert objects.gone("held")
    wait_for(lambda: objects.gone("owner"), "the owner to be deleted after its dependent", GC_TIMEOUT)


def test_dependent_of_a_missing_owner_is_collected(tug, namespace):
    objects = Objects(tug, namespace)
    ghost = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ghost", "uid": "00000000-0000-4000-8000-000000000001"},
    }
    objects.create(configmap("orphan-of-ghost", owners=[owner_ref(ghost)]))
    # An owner of that name exists, but it is another object (another uid).
    objects.create(configmap("impostor-owner"))
    impostor = {**ghost, "metadata": {"name": "impostor-owner", "uid": "00000000-0000-4000-8000-000000000002"}}
    objects.create(configmap("orphan-of-impostor", owners=[owner_ref(impostor)]))

    wait_for(lambda: objects.gone("orphan-of-ghost"), "the collector to delete a dependent of a missing owner", GC_TIMEOUT)
    wait_for(
        lambda: objects.gone("orphan-of-impostor"),
        "the collector to delete a dependent whose owner's uid does not match",
        GC_TIMEOUT,
    )
    assert objects.get("impostor-owner") is not None


def test_dependent_with_a_remaining_owner_survives(tug, namespace):
    objects = Objects(tug, namespace)
    first = objects.create(configmap("first-owner"))
    second = objects.create(configmap("second-owner"))
    shared = objects.create(configmap("shared", owners=[owner_ref(first), owner_ref(second)]))

    assert objects.delete("first-owner", "Background").status == 200
    # The collector drops the reference to the deleted owner and keeps the object.
    kept = wait_for(
        lambda: (obj := objects.get("shared")) and len(obj["metadata"].get("ownerReferences", [])) == 1 and obj,
        "the collector to drop the dangling owner reference",
        GC_TIMEOUT,
    )
    assert kept["metadata"]["uid"] == shared["metadata"]["uid"]
    assert kept["metadata"]["ownerReferences"] == [owner_ref(second)]
    assert "deletionTimestamp" not in kept["metadata"]

    assert objects.delete("second-owner", "Background").status == 200
    wait_for(lambda: objects.gone("shared"), "the collector to delete the dependent of its last owner", GC_TIMEOUT)


def replica_set_of(deployment: dict) -> dict:
    """A ReplicaSet owned by `deployment`, as its controller would make it (with no pods)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "web-5d4b9c8f7",
            "labels": {"app": "web", "pod-template-hash": "5d4b9c8f7"},
            "ownerReferences": [{**owner_ref(deployment, block=True), "controller": True}],
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d4b9c8f7"}},
            "template": {
                "metadata": {"labels": {"app": "web", "pod-template-hash": "5d4b9c8f7"}},
                "spec": {"containers": [{"name": "web", "image": "127.0.0.1:5000/tugboat/busybox:1"}]},
            },
        },
    }


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {
        "replicas": 0,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "127.0.0.1:5000/tugboat/busybox:1"}]},
        },
    },
}


def test_deleting_a_deployment_with_cascade_orphan_keeps_its_replica_set(kubectl, tug, namespace):
    apps = f"/apis/apps/v1/namespaces/{namespace}"
    deployment = tug.create(f"{apps}/deployments", DEPLOYMENT)
    rs = tug.create(f"{apps}/replicasets", replica_set_of(deployment))

    result = kubectl("delete", "deployment", "web", "--cascade=orphan", "--timeout=60s", "-n", namespace, timeout=90)
    assert result.stdout.strip() == deleted_line(kubectl, "deployment.apps", "web", namespace)
    assert tug.request("GET", f"{apps}/deployments/web").status == 404
    kept = tug.request("GET", f"{apps}/replicasets/{rs['metadata']['name']}")
    assert kept.status == 200, kept
    assert kept.json()["metadata"]["uid"] == rs["metadata"]["uid"]
    assert not kept.json()["metadata"].get("ownerReferences"), kept.json()["metadata"]


def test_deleting_a_deployment_with_cascade_background_deletes_its_replica_set(kubectl, tug, namespace):
    apps = f"/apis/apps/v1/namespaces/{namespace}"
    deployment = tug.create(f"{apps}/deployments", DEPLOYMENT)
    rs = tug.create(f"{apps}/replicasets", replica_set_of(deployment))

    kubectl("delete", "deployment", "web", "--cascade=background", "-n", namespace)
    assert tug.request("GET", f"{apps}/deployments/web").status == 404
    wait_for(
        lambda: tug.request("GET", f"{apps}/replicasets/{rs['metadata']['name']}").status == 404,
        "the collector to delete the deployment's replica set",
        GC_TIMEOUT,
    )
