"""Container probes and lifecycle hooks on a real node: readiness flips the container's ready flag,
the pod's Ready condition and its endpoints; liveness failures restart the container; a startup
probe holds liveness back until it passes and restarts the container when it fails; every failed
run is an Unhealthy event worded as upstream's. postStart runs before the container counts as
running and kills it when it fails; preStop (exec, sleep) runs before the stop signal.

Needs root (containers); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import os
import time

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, agent_server, wait_for

_counter = iter(range(1, 10_000))


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 1000}-{next(_counter)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("probes"), image) as server:
        yield server


@pytest.fixture
def k(node) -> Kubectl:
    return Kubectl.for_version("1.36", TOOLS_BIN / "kubectl-1.36", node)


def create_pod(node, name: str, script: str, labels: dict | None = None, **container) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": node.image, "command": ["sh", "-c", script], **container}],
        },
    }
    node.create("/api/v1/namespaces/default/pods", body)


def get_pod(node, name: str) -> dict:
    return node.request("GET", f"/api/v1/namespaces/default/pods/{name}").json()


def main_status(pod: dict) -> dict:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return statuses[0]


def condition(pod: dict, kind: str) -> str | None:
    found = [c["status"] for c in pod.get("status", {}).get("conditions", []) if c["type"] == kind]
    return found[0] if found else None


def events_of(node, name: str) -> list[tuple[str, str]]:
    items = node.request("GET", f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}").json()
    return [(e["reason"], e["message"]) for e in items["items"]]


WEB = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"


def test_readiness_follows_an_http_probe_and_drives_ready_and_endpoints(node, k):
    name = unique("ready")
    svc = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }  # fmt: skip
    node.create("/api/v1/namespaces/default/services", svc)
    probe = {"httpGet": {"path": "/ready.html", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}
    create_pod(node, name, WEB, labels={"app": name}, readinessProbe=probe)
    running = wait_for(lambda: (p := get_pod(node, name)) and main_status(p).get("state", {}).get("running") and p,
                       "the container running")  # fmt: skip
    # Running, but the probe's page is missing: not ready, and not an endpoint that serves.
    time.sleep(2)
    pod = get_pod(node, name)
    assert main_status(pod)["ready"] is False and condition(pod, "Ready") == "False"
    assert condition(pod, "ContainersReady") == "False"
    assert ("Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 404") in events_of(node, name)

    def endpoint_ready():
        slices = node.request(
            "GET", f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{name}"
        ).json()["items"]  # fmt: skip
        eps = [e for s in slices for e in (s.get("endpoints") or [])]
        return eps[0]["conditions"].get("ready") if eps else None

    assert wait_for(lambda: endpoint_ready() is False or None, "a not-ready endpoint") is True
    k("exec", name, "--", "touch", "/www/ready.html")
    wait_for(lambda: condition(get_pod(node, name), "Ready") == "True", "Ready once the probe passes", timeout=15)
    assert main_status(get_pod(node, name))["ready"] is True
    wait_for(lambda: endpoint_ready() is True, "the endpoint ready")
    k("exec", name, "--", "rm", "/www/ready.html")
    wait_for(lambda: condition(get_pod(node, name), "Ready") == "False", "not Ready again", timeout=15)
    assert main_status(get_pod(node, name))["restartCount"] == 0  # readiness never restarts
    assert running["status"]["podIP"]


def test_a_failing_liveness_probe_restarts_the_container(node):
    name = unique("live")
    probe = {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}
    create_pod(node, name, "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600", livenessProbe=probe)
    wait_for(lambda: main_status(get_pod(node, name)).get("restartCount", 0) >= 1, "a restart after liveness fails",
             timeout=60)  # fmt: skip
    events = events_of(node, name)
    assert ("Killing", "Container main failed liveness probe, will be restarted") in events, events
    unhealthy = [m for r, m in events if r == "Unhealthy"]
    assert unhealthy and unhealthy[0].startswith("Liveness probe failed: cat: can't open '/tmp/healthy'"), unhealthy
    last = main_status(get_pod(node, name)).get("lastState", {}).get("terminated")
    assert last and last["exitCode"] != 0


def test_a_startup_probe_holds_liveness_back_until_it_passes(node):
    name = unique("startup")
    # The server listens only after 4 s; liveness would fail until then if it ran.
    script = "sleep 4; touch /tmp/alive; " + WEB
    create_pod(
        node, name, script,
        startupProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
        livenessProbe={"exec": {"command": ["test", "-f", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 1},
    )  # fmt: skip
    wait_for(lambda: main_status(get_pod(node, name)).get("state", {}).get("running"), "running")
    status = main_status(get_pod(node, name))
    assert status["started"] is False and status["ready"] is False
    wait_for(lambda: main_status(get_pod(node, name)).get("started") is True, "started once the port opens", timeout=30)
    pod = get_pod(node, name)
    assert main_status(pod)["ready"] is True and condition(pod, "Ready") == "True"
    time.sleep(2)
    assert main_status(get_pod(node, name))["restartCount"] == 0
    assert not [m for r, m in events_of(node, name) if m.startswith("Liveness probe failed")]


def test_a_failing_startup_probe_restarts_the_container(node):
    name = unique("nostart")
    create_pod(node, name, "exec sleep 3600",
               startupProbe={"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2})  # fmt: skip
    wait_for(lambda: main_status(get_pod(node, name)).get("restartCount", 0) >= 1, "a restart", timeout=60)
    events = events_of(node, name)
    assert ("Killing", "Container main failed startup probe, will be restarted") in events, events
    assert any(r == "Unhealthy" and m.startswith("Startup probe failed:") for r, m in events), events


# --- lifecycle hooks ---------------------------------------------------------------------------


def test_post_start_runs_before_the_container_counts_as_running(node, k):
    name = unique("poststart")
    create_pod(
        node, name, "while [ ! -f /tmp/post ]; do sleep 0.1; done; echo saw $(cat /tmp/post); exec sleep 3600",
        lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "echo hook-ran > /tmp/post"]}}},
    )  # fmt: skip
    wait_for(lambda: main_status(get_pod(node, name)).get("state", {}).get("running"), "running")
    assert wait_for(lambda: k("logs", name, check=False).stdout.strip() or None, "the log") == "saw hook-ran"


def test_a_failing_post_start_hook_kills_the_container(node):
    name = unique("badpost")
    create_pod(node, name, "exec sleep 3600",
               lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "echo nope; exit 3"]}}})  # fmt: skip

    def failed_hook():
        return [m for r, m in events_of(node, name) if r == "FailedPostStartHook"] or None

    (message, *_) = wait_for(failed_hook, "the FailedPostStartHook event")
    assert message.startswith(f'Exec lifecycle hook ([sh -c echo nope; exit 3]) for Container "main" in Pod "{name}_default(')
    assert "exited with 3" in message and 'message: "nope\\n"' in message, message
    assert ("Killing", "FailedPostStartHook") in events_of(node, name)
    wait_for(lambda: main_status(get_pod(node, name)).get("restartCount", 0) >= 1 or
             main_status(get_pod(node, name)).get("state", {}).get("waiting", {}).get("reason") == "PostStartHookError",
             "the container killed")  # fmt: skip


def test_pre_stop_runs_before_the_stop_signal(node, k, tmp_path):
    name = unique("prestop")
    shared = tmp_path / "shared"
    shared.mkdir()
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 20,
            "volumes": [{"name": "host", "hostPath": {"path": str(shared)}}],
            "containers": [{
                "name": "main", "image": node.image,
                "command": ["sh", "-c", "trap 'cat /host/prestop > /host/at-term; exit 0' TERM; sleep 3600 & wait"],
                "volumeMounts": [{"name": "host", "mountPath": "/host"}],
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop-ran > /host/prestop"]}}},
            }],
        },
    }  # fmt: skip
    node.create("/api/v1/namespaces/default/pods", body)
    wait_for(lambda: main_status(get_pod(node, name)).get("state", {}).get("running"), "running")
    k("delete", "pod", name, "--wait=true", timeout=60)
    # The TERM handler found what preStop wrote: the hook ran first.
    assert (shared / "at-term").read_text() == "prestop-ran\n"


def test_a_sleep_pre_stop_delays_the_stop_and_a_failing_one_is_reported(node, k):
    slow = unique("sleepy")
    create_pod(node, slow, "exec sleep 3600", lifecycle={"preStop": {"sleep": {"seconds": 3}}})
    bad = unique("badstop")
    create_pod(node, bad, "exec sleep 3600", lifecycle={"preStop": {"exec": {"command": ["sh", "-c", "exit 7"]}}})
    for name in (slow, bad):
        wait_for(lambda: main_status(get_pod(node, name)).get("state", {}).get("running"), "running")
    started = time.monotonic()
    k("delete", "pod", slow, "--wait=true", "--grace-period=10", timeout=60)
    assert time.monotonic() - started >= 3
    k("delete", "pod", bad, "--wait=true", timeout=60)
    messages = [m for r, m in events_of(node, bad) if r == "FailedPreStopHook"]
    assert messages and "exited with 7" in messages[0], messages
