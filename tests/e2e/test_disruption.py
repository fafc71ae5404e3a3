"""PodDisruptionBudgets on a cluster of simulated nodes: the disruption controller's status
and the eviction subresource honouring it."""

from __future__ import annotations

import json
import re

import pytest

from support import unique_name, wait_for

TIMEOUT = 60


@pytest.fixture
def ns(sim_cluster):
    name = unique_name("pdb")
    sim_cluster.server.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    sim_cluster.server.request("DELETE", f"/api/v1/namespaces/{name}")


def deployment(name: str, replicas: int) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }  # fmt: skip


def pdb(name: str, app: str, **spec) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": app}}, **spec}}  # fmt: skip


def columns(text: str) -> dict[str, dict[str, str]]:
    """kubectl's table by NAME; headers may have spaces (`MIN AVAILABLE`), columns are
    separated by two or more."""
    lines = [line for line in text.splitlines() if line.strip()]
    heads = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    rows = {}
    for line in lines[1:]:
        bounds = [h[0] for h in heads] + [len(line)]
        row = {name: line[bounds[i] : bounds[i + 1]].strip() for i, (_, name) in enumerate(heads)}
        rows[row["NAME"]] = row
    return rows


def get_status(cluster, ns: str, name: str) -> dict:
    resp = cluster.server.request("GET", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}")
    assert resp.status == 200, resp
    return resp.json().get("status", {})


def ready_pods(cluster, ns: str, app: str) -> list[str]:
    resp = cluster.server.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3D{app}")
    names = []
    for p in resp.json()["items"]:
        conds = p.get("status", {}).get("conditions", [])
        if p["metadata"].get("deletionTimestamp") is None and any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
            names.append(p["metadata"]["name"])
    return names


def evict(cluster, ns: str, pod: str):
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}}
    return cluster.server.request("POST", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", body)


def test_pdb_status_and_kubectl_columns(sim_cluster, ns):
    cluster = sim_cluster
    cluster.server.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("web", 3))
    wait_for(lambda: len(ready_pods(cluster, ns, "web")) == 3, "3 ready pods", timeout=TIMEOUT)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pdb("by-min", "web", minAvailable=2)))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pdb("by-max", "web", maxUnavailable="34%")))
    wait_for(lambda: get_status(cluster, ns, "by-min").get("disruptionsAllowed") == 1, "by-min allows 1", timeout=TIMEOUT)
    status = get_status(cluster, ns, "by-min")
    assert (status["currentHealthy"], status["desiredHealthy"], status["expectedPods"]) == (3, 2, 3), status
    assert status["observedGeneration"] == 1
    cond = next(c for c in status["conditions"] if c["type"] == "DisruptionAllowed")
    assert (cond["status"], cond["reason"]) == ("True", "SufficientPods"), cond
    # maxUnavailable 34% of the Deployment's 3 replicas rounds up to 2 unavailable.
    wait_for(lambda: get_status(cluster, ns, "by-max").get("disruptionsAllowed") == 2, "by-max allows 2", timeout=TIMEOUT)
    status = get_status(cluster, ns, "by-max")
    assert (status["desiredHealthy"], status["expectedPods"]) == (1, 3), status
    rows = columns(cluster.kubectl("get", "pdb", "-n", ns).stdout)
    assert (rows["by-min"]["MIN AVAILABLE"], rows["by-min"]["MAX UNAVAILABLE"], rows["by-min"]["ALLOWED DISRUPTIONS"]) == ("2", "N/A", "1")
    assert (rows["by-max"]["MIN AVAILABLE"], rows["by-max"]["MAX UNAVAILABLE"], rows["by-max"]["ALLOWED DISRUPTIONS"]) == ("N/A", "34%", "2")


def bare_pod(name: str, app: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}  # fmt: skip


def test_eviction_is_blocked_then_allowed(sim_cluster, ns):
    # Pods without a controller, so that nothing replaces the evicted one: a Deployment's
    # replacement turns ready within milliseconds on simulated nodes and would then rightly
    # allow the last eviction below.
    cluster = sim_cluster
    for name in ("api-0", "api-1"):
        cluster.server.create(f"/api/v1/namespaces/{ns}/pods", bare_pod(name, "api"))
    wait_for(lambda: len(ready_pods(cluster, ns, "api")) == 2, "2 ready pods", timeout=TIMEOUT)
    cluster.server.create(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", pdb("keep-two", "api", minAvailable=2))
    wait_for(lambda: get_status(cluster, ns, "keep-two").get("currentHealthy") == 2, "budget counts 2 healthy", timeout=TIMEOUT)
    status = get_status(cluster, ns, "keep-two")
    assert status["disruptionsAllowed"] == 0
    cond = next(c for c in status["conditions"] if c["type"] == "DisruptionAllowed")
    assert (cond["status"], cond["reason"]) == ("False", "InsufficientPods"), cond
    victim = ready_pods(cluster, ns, "api")[0]
    resp = evict(cluster, ns, victim)
    assert resp.status == 429, resp
    body = resp.json()
    assert body["reason"] == "TooManyRequests"
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["details"]["causes"][0] == {
        "reason": "DisruptionBudget",
        "message": "The disruption budget keep-two needs 2 healthy pods and has 2 currently",
    }
    # Lower the budget: one disruption becomes allowed and the eviction spends it.
    cluster.server.request(
        "PATCH", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/keep-two", {"spec": {"minAvailable": 1}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    wait_for(lambda: get_status(cluster, ns, "keep-two").get("disruptionsAllowed") == 1, "one disruption allowed", timeout=TIMEOUT)
    resp = evict(cluster, ns, victim)
    assert resp.status == 201, resp
    after = get_status(cluster, ns, "keep-two")
    assert after["disruptionsAllowed"] == 0 or victim in after.get("disruptedPods", {}) or after["currentHealthy"] < 2
    other = next(p for p in ready_pods(cluster, ns, "api") if p != victim)
    resp = evict(cluster, ns, other)
    assert resp.status == 429, resp


def test_unhealthy_pod_eviction_policy(sim_cluster, ns):
    cluster = sim_cluster
    for name, ready in (("r1", True), ("r2", True), ("u1", False)):
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "mix"},
                             "annotations": {} if ready else {"sim.tugboat.dev/ready": "false"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}  # fmt: skip
        cluster.server.create(f"/api/v1/namespaces/{ns}/pods", body)

    def running(name: str) -> bool:
        p = cluster.server.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}").json()
        return p.get("status", {}).get("phase") == "Running"

    wait_for(lambda: all(running(n) for n in ("r1", "r2", "u1")), "pods running", timeout=TIMEOUT)
    cluster.server.create(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", pdb("all-three", "mix", minAvailable=3))
    wait_for(lambda: get_status(cluster, ns, "all-three").get("currentHealthy") == 2, "2 healthy of 3", timeout=TIMEOUT)
    assert get_status(cluster, ns, "all-three")["expectedPods"] == 3
    # IfHealthyBudget (the default): the budget is not met, so even the unready pod stays.
    resp = evict(cluster, ns, "u1")
    assert resp.status == 429, resp
    assert "needs 3 healthy pods and has 2 currently" in resp.json()["details"]["causes"][0]["message"]
    cluster.server.request(
        "PATCH", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/all-three",
        {"spec": {"unhealthyPodEvictionPolicy": "AlwaysAllow"}}, content_type="application/merge-patch+json",
    )  # fmt: skip
    wait_for(lambda: get_status(cluster, ns, "all-three").get("observedGeneration") == 2, "budget observed", timeout=TIMEOUT)
    resp = evict(cluster, ns, "u1")
    assert resp.status == 201, resp
    assert evict(cluster, ns, "r1").status == 429
