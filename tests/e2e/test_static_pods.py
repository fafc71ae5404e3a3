"""Static pods: the node agent runs the pods of its manifest directory (`--pod-manifest-path`)
itself and shows each in the API as a mirror pod, as upstream's kubelet does for control-plane
components. Deleting the mirror does not stop the pod; changing or removing the manifest does.

Needs root (real containers); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, agent_server, require, wait_for


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("manifests")


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry, manifests):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("agent"), image, ["--pod-manifest-path", str(manifests)]) as server:
        yield server


@pytest.fixture
def k(node) -> Kubectl:
    binary = TOOLS_BIN / "kubectl-1.36"
    require(binary.exists(), f"{binary} missing: run scripts/install-test-deps.sh")
    return Kubectl.for_version("1.36", binary, node)


def manifest(name: str, image: str, script: str, namespace: str | None = None) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}, **({"namespace": namespace} if namespace else {})},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "command": ["sh", "-c", script]}],
        },
    }
    return json.dumps(pod)


def get_pod(node, name: str, namespace: str = "default") -> dict | None:
    resp = node.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    return resp.json() if resp.status == 200 else None


def running(pod: dict | None) -> bool:
    if not pod or pod.get("status", {}).get("phase") != "Running":
        return False
    statuses = pod["status"].get("containerStatuses") or []
    return bool(statuses) and all(s.get("ready") for s in statuses)


def wait_mirror_running(node, name: str, namespace: str = "default", timeout: float = 60) -> dict:
    return wait_for(lambda: (p := get_pod(node, name, namespace)) and running(p) and p, f"mirror pod {name} Running", timeout=timeout)


def test_a_manifest_runs_as_a_static_pod_shown_by_its_mirror(node, manifests, k):
    (manifests / "hello.yaml").write_text(manifest("hello", node.image, "echo hello from a static pod; exec sleep 3600"))
    name = f"hello-{node.node_name}"
    mirror = wait_mirror_running(node, name)
    annotations = mirror["metadata"]["annotations"]
    assert annotations["kubernetes.io/config.source"] == "file"
    assert annotations["kubernetes.io/config.mirror"] == annotations["kubernetes.io/config.hash"]
    assert "kubernetes.io/config.seen" in annotations
    owners = mirror["metadata"]["ownerReferences"]
    node_obj = node.request("GET", f"/api/v1/nodes/{node.node_name}").json()
    assert owners == [
        {"apiVersion": "v1", "kind": "Node", "name": node.node_name, "uid": node_obj["metadata"]["uid"], "controller": True}
    ]
    spec = mirror["spec"]
    assert spec["nodeName"] == node.node_name
    assert {"operator": "Exists", "effect": "NoExecute"} in spec["tolerations"]
    assert "serviceAccountName" not in spec, "a static pod runs without a service account"
    assert mirror["metadata"]["uid"] != annotations["kubernetes.io/config.hash"], "the mirror is its own object"
    logs = wait_for(lambda: (out := k("logs", name, check=False).stdout) and "hello" in out and out, "the static pod's log")
    assert "hello from a static pod" in logs
    assert k("exec", name, "--", "cat", "/proc/1/cmdline").stdout.startswith("sleep")
    listed = k("get", "pods", "-o", "wide").stdout
    assert name in listed and "Running" in listed


def test_deleting_the_mirror_does_not_stop_the_static_pod(node, manifests, k):
    (manifests / "keep.yaml").write_text(manifest("keep", node.image, "exec sleep 3600"))
    name = f"keep-{node.node_name}"
    before = wait_mirror_running(node, name)
    container = before["status"]["containerStatuses"][0]
    k("delete", "pod", name, "--wait=false")
    # The agent deletes the mirror for good and makes it again; the container never stops.
    after = wait_for(
        lambda: (p := get_pod(node, name)) and p["metadata"]["uid"] != before["metadata"]["uid"] and running(p) and p,
        "a new mirror pod with the running container's status",
        timeout=60,
    )
    again = after["status"]["containerStatuses"][0]
    assert again["containerID"] == container["containerID"]
    assert again["restartCount"] == 0
    assert again["state"]["running"]["startedAt"] == container["state"]["running"]["startedAt"]


def test_a_changed_manifest_replaces_the_pod_and_a_removed_one_stops_it(node, manifests, k):
    path = manifests / "change.yaml"
    path.write_text(manifest("change", node.image, "echo version 1; exec sleep 3600"))
    name = f"change-{node.node_name}"
    first = wait_mirror_running(node, name)
    path.write_text(manifest("change", node.image, "echo version 2; exec sleep 3600"))
    second = wait_for(
        lambda: (p := get_pod(node, name))
        and p["metadata"]["annotations"]["kubernetes.io/config.hash"] != first["metadata"]["annotations"]["kubernetes.io/config.hash"]
        and running(p)
        and p,
        "the mirror of the changed manifest Running",
        timeout=60,
    )
    assert second["status"]["containerStatuses"][0]["containerID"] != first["status"]["containerStatuses"][0]["containerID"]
    wait_for(lambda: "version 2" in k("logs", name, check=False).stdout, "the new pod's log")
    uid = second["metadata"]["annotations"]["kubernetes.io/config.hash"]
    records = node.data_dir / "agent" / "runtime" / "sandboxes"

    def sandbox_recorded() -> bool:
        return any(uid in p.read_text(errors="ignore") for p in records.glob("*/sandbox.json"))

    assert sandbox_recorded(), "the runtime records the static pod's sandbox under its UID"
    path.unlink()
    wait_for(lambda: get_pod(node, name) is None, "the mirror pod removed with its manifest", timeout=60)
    # And the pod itself is gone from the node.
    wait_for(lambda: not sandbox_recorded(), "the static pod's sandbox removed", timeout=60)


def test_a_broken_manifest_is_skipped_and_the_others_run(node, manifests):
    (manifests / "broken.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: [not, a, map\n")
    (manifests / "service.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n")
    (manifests / "ns.yaml").write_text(manifest("other-ns", node.image, "exec sleep 3600", namespace="kube-system"))
    wait_mirror_running(node, f"other-ns-{node.node_name}", namespace="kube-system")
    assert not node.crashed()
    (manifests / "broken.yaml").unlink()
    (manifests / "service.yaml").unlink()


def test_a_static_pod_keeps_running_across_an_agent_restart(node, manifests):
    (manifests / "durable.yaml").write_text(manifest("durable", node.image, "exec sleep 3600"))
    name = f"durable-{node.node_name}"
    before = wait_mirror_running(node, name)
    node.restart()
    time.sleep(3)  # past the agent's first read of the manifests and of the API
    after = wait_mirror_running(node, name)
    assert after["status"]["containerStatuses"][0]["containerID"] == before["status"]["containerStatuses"][0]["containerID"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0


def test_mirror_pods_may_not_reference_secrets_or_service_accounts(node):
    def mirror_pod(spec_extra: dict) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "fake-mirror", "annotations": {"kubernetes.io/config.mirror": "abc"}},
            "spec": {"containers": [{"name": "c", "image": node.image}], **spec_extra},
        }

    for extra, message in [
        ({"serviceAccountName": "default"}, "a mirror pod may not reference service accounts"),
        ({"imagePullSecrets": [{"name": "creds"}]}, "a mirror pod may not reference secrets"),
    ]:
        resp = node.request("POST", "/api/v1/namespaces/default/pods", mirror_pod(extra))
        assert resp.status == 403, resp
        status = resp.json()
        assert status["reason"] == "Forbidden"
        assert status["message"] == f'pods "fake-mirror" is forbidden: {message}'
    assert get_pod(node, "fake-mirror") is None
