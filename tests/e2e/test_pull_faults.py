"""A registry lost in the middle of a pull: the connection drops while a layer downloads. The
pod shows ErrImagePull / ImagePullBackOff with the cause, the agent keeps running and keeps no
half-downloaded blob, and once the registry answers again the pull is retried and the pod runs.

A small TCP relay stands between the agent and the local registry; while "cutting", it closes
each connection after a few kilobytes of the registry's answer (manifests fit, layers do not).
Needs root (real containers); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import agent_server, wait_for

# Bytes of a registry answer relayed before the connection is cut: more than a manifest or an
# image config, less than a busybox layer.
CUT_AFTER = 8 * 1024


class CuttingRelay:
    """Relays TCP connections from a loopback port to `target`; with `cutting` set, each
    connection is closed after CUT_AFTER bytes from the target."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.cutting = True
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        limit = CUT_AFTER if self.cutting else None

        def pump(src: socket.socket, dst: socket.socket, budget: int | None) -> None:
            sent = 0
            try:
                while data := src.recv(65536):
                    if budget is not None and sent + len(data) > budget:
                        dst.sendall(data[: budget - sent])
                        self.cuts += 1
                        break
                    dst.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            finally:
                for s in (client, upstream):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(client, upstream, None), daemon=True).start()
        pump(upstream, client, limit)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def relay(plain_registry):  # noqa: F811
    relay = CuttingRelay(plain_registry.address)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory, relay):
    # A fresh agent: no layer of the test image is in its store yet.
    image = f"{relay.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("pullfault"), image) as server:
        yield server


def waiting_state(node, name: str) -> dict:
    pod = node.request("GET", f"/api/v1/namespaces/default/pods/{name}").json()
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return statuses[0].get("state", {}).get("waiting") or {}


def store_leftovers(node) -> list[Path]:
    tmp = node.data_dir / "agent" / "images" / "tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


def test_a_registry_lost_mid_pull_fails_the_pull_and_a_later_retry_succeeds(node, relay):
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "midpull"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": node.image, "command": ["sleep", "3600"]}],
        },
    }
    node.create("/api/v1/namespaces/default/pods", body)
    waiting = wait_for(
        lambda: (w := waiting_state(node, "midpull")).get("reason") in ("ErrImagePull", "ImagePullBackOff") and w,
        "the pull to fail",
        timeout=60,
    )
    assert relay.cuts > 0, "the relay cut a download"
    # ErrImagePull's message, or ImagePullBackOff's `Back-off pulling image "...": ErrImagePull: ` before it.
    assert f'failed to pull and unpack image "{node.image}": ' in waiting["message"], waiting
    assert "end of file" in waiting["message"], waiting
    events = node.request("GET", "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name=midpull").json()
    assert any(e["reason"] == "Failed" and e["message"].startswith(f'Failed to pull image "{node.image}"') for e in events["items"])
    assert not node.crashed()
    assert store_leftovers(node) == [], "no half-downloaded blob kept"

    relay.cutting = False
    pod = wait_for(
        lambda: (p := node.request("GET", "/api/v1/namespaces/default/pods/midpull").json())
        .get("status", {})
        .get("phase")
        == "Running"
        and p,
        "the pod running after the registry came back",
        timeout=90,
    )
    assert pod["status"]["containerStatuses"][0]["imageID"]
    assert store_leftovers(node) == []
