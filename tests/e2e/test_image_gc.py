"""Image garbage collection at disk thresholds: with `--image-gc-high-threshold 1` every unused
image is over the threshold, so the node agent removes an image once no container uses it, and
never one a container still uses.

Needs root (containers); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TugServer, agent_server, wait_for

GC_FLAGS = [
    "--image-gc-high-threshold", "1",
    "--image-gc-low-threshold", "0",
    "--minimum-image-ttl-duration", "0s",
    "--image-gc-period", "1s",
]  # fmt: skip


@pytest.fixture
def node(tmp_path, plain_registry):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path / "gc", image, GC_FLAGS, wait_ready=False) as server:
        yield server


def stored_images(server: TugServer) -> list[str]:
    result = subprocess.run(
        [str(tug_binary()), "images", "ls", "-o", "json", "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [image["name"] for image in json.loads(result.stdout)["images"]]


def phase(server: TugServer, name: str) -> str | None:
    resp = server.request("GET", f"/api/v1/namespaces/default/pods/{name}")
    return resp.json().get("status", {}).get("phase") if resp.status == 200 else None


def test_an_image_in_use_stays_and_is_removed_once_unused(node):
    name = "uses-the-image"
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": node.image, "command": ["sleep", "3600"]}],
        },
    }
    node.create("/api/v1/namespaces/default/pods", body)
    wait_for(lambda: phase(node, name) == "Running", "the pod to run", timeout=60)
    expected = node.image
    # Several collection periods pass while the image is in use: it stays.
    time.sleep(4)
    assert expected in stored_images(node)
    assert phase(node, name) == "Running"

    node.request("DELETE", f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")
    wait_for(lambda: phase(node, name) is None, "the pod to be deleted", timeout=30)
    wait_for(lambda: expected not in stored_images(node), "the unused image to be collected", timeout=30)
