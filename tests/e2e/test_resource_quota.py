"""ResourceQuota: the quota controller's status (hard, used) and quota admission."""

from __future__ import annotations

import json

from support import parse_table, wait_for


def pod(name: str, cpu: str | None = None) -> dict:
    container = {"name": "c", "image": "busybox"}
    if cpu is not None:
        container["resources"] = {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container]}}


def quota(name: str, hard: dict, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": hard, **spec}}


def used(tug, namespace: str, name: str) -> dict:
    resp = tug.request("GET", f"/api/v1/namespaces/{namespace}/resourcequotas/{name}")
    assert resp.status == 200, resp
    return resp.json().get("status", {}).get("used", {})


def wait_used(tug, namespace: str, name: str, expected: dict) -> None:
    wait_for(lambda: used(tug, namespace, name) == expected, f"quota {name} used == {expected}")


def test_quota_counts_pods_blocks_the_next_and_frees_on_delete(tug, namespace, kubectl):
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(quota("q", {"pods": "2", "configmaps": "5"})))
    wait_used(tug, namespace, "q", {"pods": "0", "configmaps": "1"})  # kube-root-ca.crt may or may not exist
    base = used(tug, namespace, "q")["configmaps"]
    for name in ("a", "b"):
        tug.create(f"/api/v1/namespaces/{namespace}/pods", pod(name))
    assert used(tug, namespace, "q")["pods"] == "2"
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod("c"))
    assert resp.status == 403, resp
    assert resp.json()["reason"] == "Forbidden"
    assert resp.json()["message"] == 'pods "c" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2'
    out = kubectl("run", "d", "-n", namespace, "--image=busybox", check=False)
    assert out.returncode != 0
    assert "exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2" in out.stderr
    rows = parse_table(kubectl("get", "quota", "-n", namespace).stdout)
    assert rows[0]["NAME"] == "q"
    assert "pods: 2/2" in rows[0]["REQUEST"], rows
    described = kubectl("describe", "quota", "q", "-n", namespace).stdout
    assert any(line.split() == ["pods", "2", "2"] for line in described.splitlines()), described
    assert any(line.split() == ["configmaps", base, "5"] for line in described.splitlines()), described
    tug.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/a?gracePeriodSeconds=0")
    wait_used(tug, namespace, "q", {"pods": "1", "configmaps": base})
    tug.create(f"/api/v1/namespaces/{namespace}/pods", pod("c"))


def test_compute_quota_sums_requests_and_requires_them(tug, namespace):
    tug.create(
        f"/api/v1/namespaces/{namespace}/resourcequotas",
        quota("compute", {"requests.cpu": "1", "limits.cpu": "2", "requests.memory": "1Gi"}),
    )
    wait_used(tug, namespace, "compute", {"requests.cpu": "0", "limits.cpu": "0", "requests.memory": "0"})
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod("bare"))
    assert resp.status == 403, resp
    assert resp.json()["message"] == (
        'pods "bare" is forbidden: failed quota: compute: must specify limits.cpu for: c; requests.cpu for: c; requests.memory for: c'
    )
    good = pod("p1", cpu="600m")
    good["spec"]["containers"][0]["resources"]["requests"]["memory"] = "256Mi"
    tug.create(f"/api/v1/namespaces/{namespace}/pods", good)
    assert used(tug, namespace, "compute") == {"requests.cpu": "600m", "limits.cpu": "600m", "requests.memory": "256Mi"}
    again = json.loads(json.dumps(good))
    again["metadata"]["name"] = "p2"
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/pods", again)
    assert resp.status == 403, resp
    assert resp.json()["message"] == (
        'pods "p2" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1'
    )


def test_scoped_quota_counts_only_pods_in_scope(tug, namespace):
    tug.create(f"/api/v1/namespaces/{namespace}/resourcequotas", quota("besteffort", {"pods": "1"}, scopes=["BestEffort"]))
    wait_used(tug, namespace, "besteffort", {"pods": "0"})
    tug.create(f"/api/v1/namespaces/{namespace}/pods", pod("be"))
    tug.create(f"/api/v1/namespaces/{namespace}/pods", pod("burstable", cpu="100m"))
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod("be2"))
    assert resp.status == 403, resp
    assert "exceeded quota: besteffort" in resp.json()["message"]
    assert used(tug, namespace, "besteffort") == {"pods": "1"}


def test_object_count_quota_for_any_resource(tug, namespace):
    tug.create(f"/api/v1/namespaces/{namespace}/resourcequotas", quota("objects", {"count/deployments.apps": "1", "services.nodeports": "1"}))
    wait_used(tug, namespace, "objects", {"count/deployments.apps": "0", "services.nodeports": "0"})
    dep = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d1"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "d"}},
                 "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }  # fmt: skip
    tug.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", dep)
    dep["metadata"]["name"] = "d2"
    resp = tug.request("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", dep)
    assert resp.status == 403, resp
    assert resp.json()["message"] == (
        'deployments.apps "d2" is forbidden: exceeded quota: objects, requested: count/deployments.apps=1, '
        "used: count/deployments.apps=1, limited: count/deployments.apps=1"
    )
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
           "spec": {"type": "NodePort", "ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b"}]}}  # fmt: skip
    resp = tug.request("POST", f"/api/v1/namespaces/{namespace}/services", svc)
    assert resp.status == 403, resp
    assert "requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1" in resp.json()["message"]
    tug.request("DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments/d1")
    wait_for(
        lambda: tug.request("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", dep).status == 201,
        "a deployment fits again after the first is deleted (resync)",
        timeout=10,
    )


def test_concurrent_creates_cannot_both_take_the_last_unit(tug, namespace):
    from concurrent.futures import ThreadPoolExecutor

    tug.create(f"/api/v1/namespaces/{namespace}/resourcequotas", quota("one", {"count/secrets": "3"}))
    wait_used(tug, namespace, "one", {"count/secrets": "0"})

    def create(i: int) -> int:
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i}"}}
        return tug.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body).status

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(create, range(8)))
    assert sorted(statuses) == [201] * 3 + [403] * 5, statuses
    assert used(tug, namespace, "one") == {"count/secrets": "3"}
    listed = tug.request("GET", f"/api/v1/namespaces/{namespace}/secrets").json()["items"]
    assert len(listed) == 3


def test_a_service_update_that_adds_node_ports_is_charged(tug, namespace):
    tug.create(f"/api/v1/namespaces/{namespace}/resourcequotas", quota("ports", {"services.nodeports": "1"}))
    wait_used(tug, namespace, "ports", {"services.nodeports": "0"})
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b"}]}}  # fmt: skip
    tug.create(f"/api/v1/namespaces/{namespace}/services", svc)
    resp = tug.request(
        "PATCH", f"/api/v1/namespaces/{namespace}/services/s", {"spec": {"type": "NodePort"}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    assert resp.status == 403, resp
    assert resp.json()["message"] == (
        'services "s" is forbidden: exceeded quota: ports, requested: services.nodeports=2, '
        "used: services.nodeports=0, limited: services.nodeports=1"
    )


def test_python_client_reads_quota_status_and_sees_the_forbidden_create(kube_client, namespace):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(kube_client)
    core.create_namespaced_resource_quota(
        namespace, client.V1ResourceQuota(metadata=client.V1ObjectMeta(name="py"), spec=client.V1ResourceQuotaSpec(hard={"configmaps": "1"}))
    )
    def computed() -> bool:
        status = core.read_namespaced_resource_quota("py", namespace).status
        return status is not None and "configmaps" in (status.used or {})

    wait_for(computed, "usage computed")
    got = core.read_namespaced_resource_quota("py", namespace).status
    assert got.hard == {"configmaps": "1"}
    if got.used["configmaps"] == "0":
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="first")))
    try:
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="over")))
    except ApiException as e:
        assert e.status == 403
        body = json.loads(e.body)
        assert body["reason"] == "Forbidden"
        assert body["message"] == (
            'configmaps "over" is forbidden: exceeded quota: py, requested: configmaps=1, used: configmaps=1, limited: configmaps=1'
        )
    else:
        raise AssertionError("a configmap over quota was created")


def test_deleting_a_configmap_or_secret_frees_its_unit_at_once(tug, namespace):
    """Quota usage of ConfigMaps and Secrets drops as soon as one is deleted (the controller
    replenishes from their deletions), not at the next full resync minutes later."""
    tug.create(f"/api/v1/namespaces/{namespace}/resourcequotas", quota("q", {"count/secrets": "2", "count/configmaps": "9"}))
    wait_used(tug, namespace, "q", {"count/secrets": "0", "count/configmaps": "1"})  # kube-root-ca.crt
    for i in range(2):
        tug.create(f"/api/v1/namespaces/{namespace}/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i}"}})
        tug.create(f"/api/v1/namespaces/{namespace}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}})
    wait_used(tug, namespace, "q", {"count/secrets": "2", "count/configmaps": "3"})
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s2"}}
    assert tug.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body).status == 403

    assert tug.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/s0").status == 200
    assert tug.request("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/c0").status == 200
    wait_used(tug, namespace, "q", {"count/secrets": "1", "count/configmaps": "2"})
    assert tug.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body).status == 201
