"""The built-in local-path provisioner on a real node: a StatefulSet's volumeClaimTemplate gets
a directory under `<data-dir>/storage` through the default `local-path` class; what the pod
writes there is found again by the pod recreated in its place; deleting the claim deletes the
volume and, on the node, its directory.

Needs root (containers); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, agent_server, wait_for

TIMEOUT = 60


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("local-path"), image) as server:
        yield server


@pytest.fixture
def k(node) -> Kubectl:
    return Kubectl.for_version("1.36", TOOLS_BIN / "kubectl-1.36", node)


def get(k, *args) -> dict | None:
    r = k("get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


SCRIPT = (
    "if [ -f /data/stamp ]; then echo found $(cat /data/stamp); "
    "else echo $(hostname)-$(date +%s%N) > /data/stamp && echo wrote $(cat /data/stamp); fi; "
    "exec sleep 3600"
)


def statefulset(image: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "serviceName": "db",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "command": ["sh", "-c", SCRIPT],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
                }
            ],
        },
    }


def log_line(k, pod: str) -> str:
    def line():
        r = k("logs", pod, check=False)
        return r.returncode == 0 and r.stdout.strip()

    return wait_for(line, f"output of {pod}", TIMEOUT)


def running_uid(k, name: str, not_uid: str | None = None) -> str | None:
    pod = get(k, "pod", name)
    if not pod or pod["metadata"]["uid"] == not_uid or pod["metadata"].get("deletionTimestamp"):
        return None
    return pod["metadata"]["uid"] if pod.get("status", {}).get("phase") == "Running" else None


def test_a_statefulset_pod_finds_its_data_again_and_the_claim_takes_it_away(node, k):
    k("apply", "-f", "-", input=json.dumps(statefulset(node.image)))
    first = wait_for(lambda: running_uid(k, "db-0"), "db-0 running", TIMEOUT)
    claim = get(k, "pvc", "data-db-0")
    assert claim["spec"]["storageClassName"] == "local-path"
    assert claim["status"]["phase"] == "Bound"
    pv = get(k, "pv", claim["spec"]["volumeName"])
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    directory = Path(pv["spec"]["hostPath"]["path"])
    assert directory == node.data_dir / "storage" / f"pvc-{claim['metadata']['uid']}_default_data-db-0"
    wrote = log_line(k, "db-0")
    assert wrote.startswith("wrote db-0-"), wrote
    stamp = wrote.split(" ", 1)[1]
    assert (directory / "stamp").read_text().strip() == stamp

    k("delete", "pod", "db-0", "--wait=false")
    wait_for(lambda: running_uid(k, "db-0", not_uid=first), "db-0 recreated and running", TIMEOUT)
    assert log_line(k, "db-0") == f"found {stamp}"
    assert get(k, "pvc", "data-db-0")["metadata"]["uid"] == claim["metadata"]["uid"]

    k("delete", "statefulset", "db")
    wait_for(lambda: get(k, "pod", "db-0") is None, "db-0 gone", TIMEOUT)
    k("delete", "pvc", "data-db-0", "--wait=false")
    wait_for(lambda: get(k, "pv", pv["metadata"]["name"]) is None, "the volume deleted", TIMEOUT)
    assert not directory.exists()
