"""Pod priority: PriorityClasses, the Priority admission step and the system classes."""

from __future__ import annotations

from support import unique_name


def priority_class(name: str, value: int, **extra) -> dict:
    return {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value, **extra}


def pod(name: str, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }


def test_the_system_classes_exist(kubectl):
    out = kubectl("get", "priorityclasses").stdout
    assert "system-node-critical" in out and "2000001000" in out, out
    assert "system-cluster-critical" in out and "2000000000" in out, out


def test_a_pod_gets_the_priority_of_its_class(tug, namespace):
    name = unique_name("high")
    tug.create("/apis/scheduling.k8s.io/v1/priorityclasses", priority_class(name, 1000, preemptionPolicy="Never"))
    created = tug.create(f"/api/v1/namespaces/{namespace}/pods", pod("p", priorityClassName=name))
    assert created["spec"]["priority"] == 1000
    assert created["spec"]["preemptionPolicy"] == "Never"
    plain = tug.create(f"/api/v1/namespaces/{namespace}/pods", pod("plain"))
    assert plain["spec"]["priority"] == 0
    assert plain["spec"]["preemptionPolicy"] == "PreemptLowerPriority"
    critical = tug.create(f"/api/v1/namespaces/{namespace}/pods", pod("critical", priorityClassName="system-node-critical"))
    assert critical["spec"]["priority"] == 2000001000


def test_unknown_classes_and_conflicting_priorities_are_forbidden(tug, namespace):
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod("p", priorityClassName="no-such-class"))
    assert resp.status == 403, resp
    assert resp.json()["message"] == 'pods "p" is forbidden: no PriorityClass with name no-such-class was found'
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod("q", priority=5))
    assert resp.status == 403, resp
    assert "the integer value of priority (5) must not be provided in pod spec" in resp.json()["message"]
    assert tug.request("GET", f"/api/v1/namespaces/{namespace}/pods/q").status == 404


def test_class_values_and_system_names_are_validated(tug):
    resp = tug.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", priority_class(unique_name("huge"), 2000000000))
    assert resp.status == 422, resp
    cause = resp.json()["details"]["causes"][0]
    assert cause["field"] == "value" and "maximum allowed value of a user defined priority is 1000000000" in cause["message"]
    resp = tug.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", priority_class("system-mine", 10))
    assert resp.status == 422, resp
    assert "reserved for system use only" in resp.json()["message"]
    name = unique_name("fixed")
    tug.create("/apis/scheduling.k8s.io/v1/priorityclasses", priority_class(name, 10))
    resp = tug.request(
        "PATCH", f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}", {"value": 11},
        headers={"Content-Type": "application/merge-patch+json"},
    )  # fmt: skip
    assert resp.status == 422, resp
    assert resp.json()["details"]["causes"][0]["field"] == "value"


def test_the_global_default_class_applies_to_pods_without_one_and_is_unique(fresh_server):
    server = fresh_server
    server.create("/apis/scheduling.k8s.io/v1/priorityclasses", priority_class("everyone", 50, globalDefault=True))
    resp = server.request(
        "POST", "/apis/scheduling.k8s.io/v1/priorityclasses", priority_class("another", 60, globalDefault=True)
    )
    assert resp.status == 403, resp
    assert "another default PriorityClass everyone already exists" in resp.json()["message"]
    created = server.create("/api/v1/namespaces/default/pods", pod("p"))
    assert created["spec"]["priority"] == 50
    assert created["spec"]["priorityClassName"] == "everyone"
