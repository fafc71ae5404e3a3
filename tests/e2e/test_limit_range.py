"""LimitRange: defaults and limits applied to new pods and claims at admission."""

from __future__ import annotations

import json

from support import unique_name


def limit_range(name: str, *items: dict) -> dict:
    return {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": name}, "spec": {"limits": list(items)}}


def pod(name: str, resources: dict | None = None) -> dict:
    container = {"name": "c", "image": "busybox"}
    if resources is not None:
        container["resources"] = resources
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container]}}


def test_defaults_appear_on_a_new_pod_with_the_annotation(tug, namespace, kubectl):
    body = limit_range("defaults", {"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"},
                                    "defaultRequest": {"cpu": "100m", "memory": "64Mi"}})  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    name = unique_name("p")
    kubectl("run", name, "-n", namespace, "--image=busybox")
    got = json.loads(kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
    resources = got["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}}
    assert got["metadata"]["annotations"]["kubernetes.io/limit-ranger"] == (
        f"LimitRanger plugin set: cpu, memory request for container {name}; cpu, memory limit for container {name}"
    )
    described = kubectl("describe", "limitrange", "defaults", "-n", namespace).stdout
    assert "Container" in described and "500m" in described and "100m" in described, described


def test_violating_max_and_min_is_forbidden_with_upstream_wording(tug, namespace, kubectl):
    tug.create(f"/api/v1/namespaces/{namespace}/limitranges",
               limit_range("bounds", {"type": "Container", "max": {"cpu": "500m"}, "min": {"cpu": "50m"}}))  # fmt: skip
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/pods",
                       pod("big", {"limits": {"cpu": "1"}, "requests": {"cpu": "100m"}}))  # fmt: skip
    assert resp.status == 403, resp
    assert resp.json()["reason"] == "Forbidden"
    assert resp.json()["message"] == 'pods "big" is forbidden: maximum cpu usage per Container is 500m, but limit is 1'
    out = kubectl("run", "small", "-n", namespace, "--image=busybox", "--overrides",
                  json.dumps({"spec": {"containers": [{"name": "small", "image": "busybox",
                                                       "resources": {"requests": {"cpu": "10m"}, "limits": {"cpu": "10m"}}}]}}),
                  check=False)  # fmt: skip
    assert out.returncode != 0
    assert 'pods "small" is forbidden: minimum cpu usage per Container is 50m, but request is 10m' in out.stderr
    # Defaulted from max (the LimitRange's own defaulting), the pod fits.
    created = tug.create(f"/api/v1/namespaces/{namespace}/pods", pod("fits"))
    assert created["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "500m"}


def test_pod_and_claim_items_are_enforced(tug, namespace):
    tug.create(f"/api/v1/namespaces/{namespace}/limitranges",
               limit_range("pods", {"type": "Pod", "max": {"memory": "100Mi"}},
                           {"type": "PersistentVolumeClaim", "max": {"storage": "1Gi"}}))  # fmt: skip
    two = pod("two", {"limits": {"memory": "60Mi"}})
    two["spec"]["containers"].append({"name": "d", "image": "busybox", "resources": {"limits": {"memory": "60Mi"}}})
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/pods", two)
    assert resp.status == 403, resp
    assert resp.json()["message"] == 'pods "two" is forbidden: maximum memory usage per Pod is 100Mi, but limit is 120Mi'
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "big"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}}  # fmt: skip
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", claim)
    assert resp.status == 403, resp
    assert resp.json()["message"] == (
        'persistentvolumeclaims "big" is forbidden: maximum storage usage per PersistentVolumeClaim is 1Gi, but request is 5Gi'
    )


def test_limit_ranges_are_validated(tug, namespace):
    body = limit_range("bad", {"type": "Container", "default": {"cpu": "2"}, "max": {"cpu": "1"}})
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/limitranges", body)
    assert resp.status == 422, resp
    status = resp.json()
    assert status["reason"] == "Invalid"
    causes = {c["field"]: c["message"] for c in status["details"]["causes"]}
    assert "default value 2 is greater than max value 1" in causes["spec.limits[0].default[cpu]"], causes
    # defaultRequest is defaulted from default, so it is over max too, as upstream reports.
    assert "default request value 2 is greater than max value 1" in causes["spec.limits[0].defaultRequest[cpu]"]
    body = limit_range("pod-defaults", {"type": "Pod", "default": {"cpu": "1"}})
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/limitranges", body)
    assert resp.status == 422, resp
    assert resp.json()["details"]["causes"][0]["field"] == "spec.limits[0].default"
