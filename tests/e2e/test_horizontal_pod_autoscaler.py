"""HorizontalPodAutoscalers driven by the controller manager's `horizontalpodautoscaling`
controller.

On the session server (no node agent, so no pod metrics): the conditions and events upstream
gives when metrics are unavailable, min/max replicas enforced through the target's scale
subresource without metrics, a zero-replica target disabling autoscaling, `kubectl autoscale`
and `kubectl get hpa` with kubectl 1.36 and 1.27.

With a node agent (needs root; under CI=true a missing privilege fails): a CPU-busy Deployment
scaled up from the built-in metrics-server's pod metrics, and back down once it idles."""

from __future__ import annotations

import json

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import agent_server, parse_table, wait_for

TIMEOUT = 30
HPA_PATH = "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers"


def deployment(name: str, replicas: int) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox",
                                                       "resources": {"requests": {"cpu": "50m"}}}]}}},
    }  # fmt: skip


def hpa(name: str, target: dict, min_replicas: int, max_replicas: int, metrics: list | None = None) -> dict:
    cpu = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
        "spec": {"scaleTargetRef": target, "minReplicas": min_replicas, "maxReplicas": max_replicas,
                 "metrics": metrics if metrics is not None else [cpu]},
    }  # fmt: skip


def to_deployment(name: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


def get_hpa(tug, ns: str, name: str) -> dict:
    resp = tug.request("GET", f"{HPA_PATH.format(ns=ns)}/{name}")
    assert resp.status == 200, resp
    return resp.json()


def condition(tug, ns: str, name: str, type_: str) -> dict | None:
    conditions = get_hpa(tug, ns, name).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), None)


def wait_condition(tug, ns: str, name: str, type_: str, status: str, reason: str) -> dict:
    def found():
        c = condition(tug, ns, name, type_)
        return c if c and (c["status"], c.get("reason")) == (status, reason) else None

    return wait_for(found, f"{type_}={status} {reason} on {name}", timeout=TIMEOUT)


def events(tug, ns: str, name: str) -> list[dict]:
    items = tug.request("GET", f"/api/v1/namespaces/{ns}/events").json()["items"]
    return [e for e in items if e["involvedObject"].get("kind") == "HorizontalPodAutoscaler"
            and e["involvedObject"]["name"] == name]  # fmt: skip


def wait_event(tug, ns: str, name: str, reason: str) -> dict:
    def found():
        return next((e for e in events(tug, ns, name) if e["reason"] == reason), None)

    return wait_for(found, f"a {reason} event about {name}", timeout=TIMEOUT)


def deployment_replicas(tug, ns: str, name: str) -> int:
    return tug.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}").json()["spec"]["replicas"]


def test_without_metrics_scaling_is_inactive_and_nothing_scales(tug, namespace):
    ns = namespace
    tug.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("web", 2))
    tug.create(HPA_PATH.format(ns=ns), hpa("web", to_deployment("web"), 1, 5))

    active = wait_condition(tug, ns, "web", "ScalingActive", "False", "FailedGetResourceMetric")
    prefix = "the HPA was unable to compute the replica count: failed to get cpu utilization: "
    assert active["message"].startswith(prefix + "unable to get metrics for resource cpu: "), active
    able = condition(tug, ns, "web", "AbleToScale")
    assert (able["status"], able["reason"]) == ("True", "SucceededGetScale"), able
    assert able["message"] == "the HPA controller was able to get the target's current scale"
    status = get_hpa(tug, ns, "web")["status"]
    assert status["currentReplicas"] == 2, status
    assert "lastScaleTime" not in status, status

    failed = wait_event(tug, ns, "web", "FailedGetResourceMetric")
    assert failed["type"] == "Warning"
    assert failed["source"]["component"] == "horizontal-pod-autoscaler"
    assert failed["message"].startswith("failed to get cpu utilization: unable to get metrics for resource cpu: ")
    computed = wait_event(tug, ns, "web", "FailedComputeMetricsReplicas")
    assert computed["message"].startswith(
        "invalid metrics (1 invalid out of 1), first error is: failed to get cpu resource metric value: "
    ), computed
    assert deployment_replicas(tug, ns, "web") == 2
    assert not [e for e in events(tug, ns, "web") if e["reason"] == "SuccessfulRescale"]


def test_min_and_max_replicas_are_enforced_without_metrics(tug, namespace):
    ns = namespace
    tug.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("small", 1))
    tug.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("big", 7))
    tug.create(HPA_PATH.format(ns=ns), hpa("small", to_deployment("small"), 3, 5))
    tug.create(HPA_PATH.format(ns=ns), hpa("big", to_deployment("big"), 1, 4))

    wait_for(lambda: deployment_replicas(tug, ns, "small") == 3, "small scaled up to minReplicas", timeout=TIMEOUT)
    wait_for(lambda: deployment_replicas(tug, ns, "big") == 4, "big scaled down to maxReplicas", timeout=TIMEOUT)
    up = wait_event(tug, ns, "small", "SuccessfulRescale")
    assert up["type"] == "Normal", up
    assert up["message"] == "New size: 3; reason: Current number of replicas below Spec.MinReplicas"
    down = wait_event(tug, ns, "big", "SuccessfulRescale")
    assert down["message"] == "New size: 4; reason: Current number of replicas above Spec.MaxReplicas"

    def rescaled():
        s = get_hpa(tug, ns, "small").get("status", {})
        return s if s.get("desiredReplicas") == 3 and s.get("lastScaleTime") else None

    status = wait_for(rescaled, "small's status to record the rescale", timeout=TIMEOUT)
    able = next(c for c in status["conditions"] if c["type"] == "AbleToScale")
    if status["currentReplicas"] == 1:
        # The status the rescaling sync wrote: the size it found, and what it did.
        assert able["reason"] == "SucceededRescale", status
        assert able["message"] == "the HPA controller was able to update the target scale to 3"
    else:
        # On a loaded machine the next sync (every 15 s) may already have seen the new size;
        # without pod metrics it stops before deciding anything new, keeping the condition.
        assert status["currentReplicas"] == 3, status
        assert able["reason"] in ("SucceededRescale", "ReadyForNewScale"), status


def test_zero_replicas_disable_autoscaling(tug, namespace):
    ns = namespace
    tug.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("off", 0))
    tug.create(HPA_PATH.format(ns=ns), hpa("off", to_deployment("off"), 2, 5))
    active = wait_condition(tug, ns, "off", "ScalingActive", "False", "ScalingDisabled")
    assert active["message"] == "scaling is disabled since the replica count of the target is zero"
    assert deployment_replicas(tug, ns, "off") == 0
    assert get_hpa(tug, ns, "off")["status"]["desiredReplicas"] == 0


def test_a_missing_target_fails_to_get_scale(tug, namespace):
    ns = namespace
    tug.create(HPA_PATH.format(ns=ns), hpa("ghost", to_deployment("nope"), 1, 3))
    able = wait_condition(tug, ns, "ghost", "AbleToScale", "False", "FailedGetScale")
    unable = "the HPA controller was unable to get the target's current scale"
    assert able["message"] == f'{unable}: deployments.apps "nope" not found'
    event = wait_event(tug, ns, "ghost", "FailedGetScale")
    assert event["message"] == 'deployments.apps "nope" not found'


def test_any_kind_with_a_scale_subresource_is_scaled(tug, namespace):
    ns = namespace
    rs = deployment("rs", 1) | {"apiVersion": "apps/v1", "kind": "ReplicaSet"}
    tug.create(f"/apis/apps/v1/namespaces/{ns}/replicasets", rs)
    target = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs"}
    tug.create(HPA_PATH.format(ns=ns), hpa("rs", target, 2, 3))

    def replicas():
        return tug.request("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets/rs").json()["spec"]["replicas"]

    wait_for(lambda: replicas() == 2, "the ReplicaSet scaled to minReplicas", timeout=TIMEOUT)


def test_a_custom_resource_with_a_scale_subresource_is_scaled(tug, namespace):
    ns = namespace
    group = f"{namespace}.example.com"
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    scale = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
             "labelSelectorPath": ".status.selector"}  # fmt: skip
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema},
                               "subresources": {"status": {}, "scale": scale}}]},
    }  # fmt: skip
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    tug.create(crd_path, crd)
    try:
        widgets = f"/apis/{group}/v1/namespaces/{ns}/widgets"

        def served():
            return tug.request("GET", widgets).status == 200

        wait_for(served, "the Widget resource to be served", timeout=TIMEOUT)
        widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"replicas": 1}}
        tug.create(widgets, widget)
        target = {"apiVersion": f"{group}/v1", "kind": "Widget", "name": "w"}
        tug.create(HPA_PATH.format(ns=ns), hpa("w", target, 2, 4))
        def scaled():
            return tug.request("GET", f"{widgets}/w").json()["spec"]["replicas"] == 2

        wait_for(scaled, "the Widget scaled to minReplicas", timeout=TIMEOUT)
        event = wait_event(tug, ns, "w", "SuccessfulRescale")
        assert event["message"] == "New size: 2; reason: Current number of replicas below Spec.MinReplicas"
    finally:
        tug.request("DELETE", f"{crd_path}/widgets.{group}")


def test_custom_metrics_unavailable_are_reported(tug, namespace):
    ns = namespace
    tug.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("qps", 1))
    pods_metric = {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"},
                                            "target": {"type": "AverageValue", "averageValue": "10"}}}  # fmt: skip
    external = {"type": "External", "external": {"metric": {"name": "queue_depth"},
                                                 "target": {"type": "Value", "value": "30"}}}  # fmt: skip
    tug.create(HPA_PATH.format(ns=ns), hpa("qps", to_deployment("qps"), 1, 3, [pods_metric, external]))
    active = wait_condition(tug, ns, "qps", "ScalingActive", "False", "FailedGetPodsMetric")
    unable = "the HPA was unable to compute the replica count"
    assert active["message"].startswith(f"{unable}: unable to get metric requests_per_second: "), active
    wait_event(tug, ns, "qps", "FailedGetExternalMetric")
    computed = wait_event(tug, ns, "qps", "FailedComputeMetricsReplicas")
    first = "invalid metrics (2 invalid out of 2), first error is: failed to get pods metric value: "
    assert computed["message"].startswith(first), computed


def test_kubectl_autoscale_and_get_hpa(kubectl, tug, namespace):
    ns = namespace
    kubectl("create", "deployment", "x", "--image=busybox", "-n", ns)
    out = kubectl("autoscale", "deployment", "x", "--cpu-percent=50", "--min=1", "--max=5", "-n", ns).stdout
    assert "horizontalpodautoscaler.autoscaling/x autoscaled" in out, out

    def row():
        rows = parse_table(kubectl("get", "hpa", "-n", ns).stdout)
        return rows[0] if rows and rows[0].get("REPLICAS") == "1" else None

    got = wait_for(row, "kubectl get hpa to show the current replicas", timeout=TIMEOUT)
    assert list(got)[:6] == ["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS"], got
    assert (got["NAME"], got["REFERENCE"], got["MINPODS"], got["MAXPODS"]) == ("x", "Deployment/x", "1", "5"), got
    assert "50%" in got["TARGETS"], got
    described = kubectl("describe", "hpa", "x", "-n", ns).stdout
    assert "FailedGetResourceMetric" in described, described
    assert "SucceededGetScale" in described, described


# --- With real metrics: a node agent and the API server's built-in metrics-server. ---

BURN = "while :; do :; done"
IDLE = "exec sleep 3600"


def burner(image: str, script: str) -> dict:
    # A CPU limit keeps the busy loop at 100m (twice its request) so the test stays light.
    resources = {"requests": {"cpu": "50m"}, "limits": {"cpu": "100m"}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "load"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "load"}},
                 "template": {"metadata": {"labels": {"app": "load"}},
                              "spec": {"terminationGracePeriodSeconds": 0,
                                       "containers": [{"name": "c", "image": image, "command": ["sh", "-c", script],
                                                       "resources": resources}]}}},
    }  # fmt: skip


def test_cpu_load_scales_a_deployment_up_and_idleness_back_down(tmp_path, plain_registry):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    # A 5 s sync period (upstream's flag) keeps the test short; metrics arrive every 15 s.
    with agent_server(tug_binary(), tmp_path, image, ["--horizontal-pod-autoscaler-sync-period=5s"]) as server:
        ns = "default"
        server.create(f"/apis/apps/v1/namespaces/{ns}/deployments", burner(image, BURN))
        spec = hpa("load", to_deployment("load"), 1, 2)
        spec["spec"]["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": 0}}
        server.create(HPA_PATH.format(ns=ns), spec)

        wait_for(lambda: deployment_replicas(server, ns, "load") == 2, "the busy Deployment scaled up", timeout=120)
        up = wait_event(server, ns, "load", "SuccessfulRescale")
        assert up["message"] == "New size: 2; reason: cpu resource utilization (percentage of request) above target", up
        status = get_hpa(server, ns, "load")["status"]
        current = status["currentMetrics"][0]["resource"]["current"]
        assert current["averageUtilization"] > 110, status
        active = condition(server, ns, "load", "ScalingActive")
        assert (active["status"], active["reason"]) == ("True", "ValidMetricFound"), active
        v1 = server.request("GET", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/load").json()
        assert v1["status"]["currentCPUUtilizationPercentage"] > 110, v1["status"]

        patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/command/2", "value": IDLE}]
        path = f"/apis/apps/v1/namespaces/{ns}/deployments/load"
        resp = server.request("PATCH", path, json.dumps(patch), content_type="application/json-patch+json")
        assert resp.status == 200, resp
        wait_for(lambda: deployment_replicas(server, ns, "load") == 1, "the idle Deployment scaled down", timeout=120)
        # The event is recorded after the scale is written: wait for it rather than read once.
        down = wait_for(
            lambda: [e for e in events(server, ns, "load") if e["message"].startswith("New size: 1;")],
            "the scale-down event",
            timeout=TIMEOUT,
        )
        assert down[0]["message"] == "New size: 1; reason: All metrics below target", down
