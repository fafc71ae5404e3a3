"""Namespaces: creating and deleting them with kubectl, the namespace controller
emptying a deleted namespace, and the server refusing new content in a namespace
that is being terminated."""

import pytest
import yaml

from support import unique_name, wait_for

HOLD = "e2e.tugboat.dev/hold"
DELETE_TIMEOUT = 60


@pytest.fixture
def namespace_name(tug):
    """A fresh namespace name; the namespace is removed afterwards if the test left it."""
    name = unique_name("e2e-ns-lifecycle")
    yield name
    held = tug.request("GET", f"/api/v1/namespaces/{name}/configmaps/held")
    if held.status == 200:
        tug.request(
            "PATCH",
            f"/api/v1/namespaces/{name}/configmaps/held",
            {"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json",
        )
    tug.request("DELETE", f"/api/v1/namespaces/{name}")


def configmap(name: str, finalizers: list[str] | None = None) -> dict:
    meta: dict = {"name": name, "labels": {"e2e": "ns"}}
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def fill(tug, namespace: str) -> list[str]:
    """Puts a few objects of different kinds in `namespace`; returns their paths."""
    paths = []
    core = f"/api/v1/namespaces/{namespace}"
    tug.create(f"{core}/configmaps", configmap("settings"))
    paths.append(f"{core}/configmaps/settings")
    tug.create(
        f"{core}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"t": "s3cret"}},
    )
    paths.append(f"{core}/secrets/token")
    tug.create(
        f"{core}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        },
    )
    paths.append(f"{core}/services/web")
    tug.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "127.0.0.1:5000/tugboat/busybox:1"}]},
                },
            },
        },
    )
    paths.append(f"/apis/apps/v1/namespaces/{namespace}/deployments/web")
    return paths


def namespace_gone(tug, name: str) -> bool:
    return tug.request("GET", f"/api/v1/namespaces/{name}").status == 404


def test_kubectl_create_and_delete_namespace(kubectl, tug, namespace_name):
    created = kubectl("create", "namespace", namespace_name)
    assert created.stdout.strip() == f"namespace/{namespace_name} created"
    phase = kubectl("get", "namespace", namespace_name, "-o", "jsonpath={.status.phase}")
    assert phase.stdout == "Active"
    paths = fill(tug, namespace_name)

    # kubectl waits until the namespace is really gone, which takes the namespace
    # controller emptying it first.
    deleted = kubectl("delete", "namespace", namespace_name, f"--timeout={DELETE_TIMEOUT}s", timeout=DELETE_TIMEOUT + 30)
    assert deleted.stdout.strip() == f'namespace "{namespace_name}" deleted'

    missing = kubectl("get", "namespace", namespace_name, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f'Error from server (NotFound): namespaces "{namespace_name}" not found'
    for path in paths:
        assert tug.request("GET", path).status == 404, f"{path} outlived its namespace"


def test_deleted_namespace_is_emptied_and_its_name_reusable(tug, namespace_name):
    tug.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace_name}})
    paths = fill(tug, namespace_name)

    resp = tug.request("DELETE", f"/api/v1/namespaces/{namespace_name}")
    assert resp.status == 200, resp
    terminating = resp.json()
    assert terminating["kind"] == "Namespace", terminating
    assert terminating["metadata"].get("deletionTimestamp"), terminating["metadata"]
    assert terminating["status"]["phase"] == "Terminating", terminating
    assert terminating["spec"]["finalizers"] == ["kubernetes"], terminating

    wait_for(lambda: namespace_gone(tug, namespace_name), "the namespace controller to finish", DELETE_TIMEOUT)
    for path in paths:
        assert tug.request("GET", path).status == 404, f"{path} outlived its namespace"
    everywhere = tug.request("GET", f"/api/v1/configmaps?fieldSelector=metadata.namespace%3D{namespace_name}")
    assert everywhere.json()["items"] == []

    # The name is free again, and the new namespace starts empty.
    tug.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace_name}})
    again = tug.request("GET", f"/api/v1/namespaces/{namespace_name}/configmaps?labelSelector=e2e%3Dns")
    assert again.json()["items"] == []
    assert tug.request("GET", paths[0]).status == 404


def test_creating_in_a_terminating_namespace_is_forbidden(kubectl, tug, namespace_name):
    tug.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace_name}})
    configmaps = f"/api/v1/namespaces/{namespace_name}/configmaps"
    # A finalizer nobody removes keeps the namespace Terminating until the test lets go.
    tug.create(configmaps, configmap("held", finalizers=[HOLD]))
    assert tug.request("DELETE", f"/api/v1/namespaces/{namespace_name}").status == 200

    refused = tug.request("POST", configmaps, configmap("late"))
    assert refused.status == 403, refused
    status = refused.json()
    assert status["reason"] == "Forbidden", status
    message = f"unable to create new content in namespace {namespace_name} because it is being terminated"
    assert status["message"] == f'configmaps "late" is forbidden: {message}'
    assert status["details"] == {
        "name": "late",
        "kind": "configmaps",
        "causes": [
            {
                "reason": "NamespaceTerminating",
                "message": f"namespace {namespace_name} is being terminated",
                "field": "metadata.namespace",
            }
        ],
    }, status

    via_kubectl = kubectl("create", "-f", "-", "-n", namespace_name, input=yaml.safe_dump(configmap("late")), check=False)
    assert via_kubectl.returncode == 1
    assert f'configmaps "late" is forbidden: {message}' in via_kubectl.stderr, via_kubectl.stderr
    assert tug.request("GET", f"{configmaps}/late").status == 404

    # The controller deleted what it could; the held object waits for its finalizer,
    # and the namespace says why it is not gone yet.
    held = wait_for(
        lambda: (r := tug.request("GET", f"{configmaps}/held")).status == 200
        and r.json()["metadata"].get("deletionTimestamp")
        and r.json(),
        "the namespace controller to delete the held configmap",
        DELETE_TIMEOUT,
    )
    assert held["metadata"]["finalizers"] == [HOLD]

    def finalizers_condition():
        ns = tug.request("GET", f"/api/v1/namespaces/{namespace_name}").json()
        conditions = {c["type"]: c for c in ns.get("status", {}).get("conditions", [])}
        return conditions.get("NamespaceFinalizersRemaining", {}).get("status") == "True" and conditions[
            "NamespaceFinalizersRemaining"
        ]

    condition = wait_for(finalizers_condition, "the NamespaceFinalizersRemaining condition", DELETE_TIMEOUT)
    assert condition["reason"] == "SomeFinalizersRemain"
    assert condition["message"] == f"Some content in the namespace has finalizers remaining: {HOLD} in 1 resource instances"
    ns = tug.request("GET", f"/api/v1/namespaces/{namespace_name}").json()
    assert ns["status"]["phase"] == "Terminating"

    # Existing objects can still be changed: here, released.
    released = tug.request(
        "PATCH",
        f"{configmaps}/held",
        {"metadata": {"finalizers": None}},
        content_type="application/merge-patch+json",
    )
    assert released.status == 200, released
    wait_for(lambda: namespace_gone(tug, namespace_name), "the namespace to go once its content is gone", DELETE_TIMEOUT)


def test_creating_in_a_missing_namespace_is_not_found(tug):
    name = unique_name("e2e-no-such-namespace")
    resp = tug.request("POST", f"/api/v1/namespaces/{name}/configmaps", configmap("x"))
    assert resp.status == 404, resp
    status = resp.json()
    assert status["reason"] == "NotFound"
    assert status["message"] == f'namespaces "{name}" not found'
    assert status["details"] == {"name": name, "kind": "namespaces"}


@pytest.mark.parametrize("name", ["default", "kube-system", "kube-public"])
def test_system_namespaces_cannot_be_deleted(fresh_server, name):
    resp = fresh_server.request("DELETE", f"/api/v1/namespaces/{name}")
    assert resp.status == 403, resp
    status = resp.json()
    assert status["reason"] == "Forbidden"
    assert status["message"] == f'namespaces "{name}" is forbidden: this namespace may not be deleted'
    ns = fresh_server.request("GET", f"/api/v1/namespaces/{name}").json()
    assert "deletionTimestamp" not in ns["metadata"]
    assert ns["status"]["phase"] == "Active"
