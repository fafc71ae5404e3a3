"""A pod's life and configuration seen from inside its containers, on a real node with kubectl:
init containers one at a time in order (and `Init:N/M`, `Init:Error`, `Init:CrashLoopBackOff`),
sidecars beside the app, CrashLoopBackOff's doubling delays, the environment (values, `$(VAR)`
expansion, configMap/secret/field/resource references, envFrom, service links), every local
volume type's content, modes and updates, mount options, fsGroup, and the pod's identity and
resolver files.

Probes and hooks (test_probes.py), PVCs (test_local_path.py), emptyDir eviction and restart
counting (test_node_agent.py), CSI and service account tokens are tested elsewhere.

Needs root (containers); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, agent_server, parse_table, unique_name, wait_for

NS = "default"
CLUSTER_DOMAIN = "cluster.local"
CLUSTER_DNS = "10.43.0.10"

@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry):  # noqa: F811
    """A server with its node agent, the busybox test image pushed to a local registry."""
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("lifecycle"), image) as server:
        yield server


@pytest.fixture(scope="module")
def k(node) -> Kubectl:
    return Kubectl.for_version("1.36", TOOLS_BIN / "kubectl-1.36", node)


# --- helpers -------------------------------------------------------------------------------


def container(node, name: str, script: str, **extra) -> dict:
    return {"name": name, "image": node.image, "command": ["sh", "-c", script], **extra}


def pod(name: str, containers: list[dict], restart: str = "Never", labels=None, annotations=None, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1, "containers": containers, **spec},
    }


def create(k: Kubectl, *objects: dict) -> None:
    """Creates the objects with `kubectl create` (not apply: no last-applied annotation)."""
    k("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def config_map(name: str, data: dict) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS}, "data": data}


def secret(name: str, data: dict) -> dict:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": encoded}


def get_pod(node, name: str) -> dict:
    resp = node.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
    assert resp.status == 200, resp
    return resp.json()


def wait_pod(node, name: str, condition, what: str, timeout: float = 60) -> dict:
    """The pod once `condition(pod)` holds; on a timeout its status and the server's log are printed."""
    def reached():
        p = get_pod(node, name)
        return p if condition(p) else None

    try:
        return wait_for(reached, what, timeout=timeout)
    except BaseException:
        print(json.dumps(get_pod(node, name).get("status"), indent=1))
        print(node.log_tail(60))
        raise


def wait_phase(node, name: str, phases: set[str], timeout: float = 60) -> dict:
    return wait_pod(node, name, lambda p: p.get("status", {}).get("phase") in phases, f"{name} in {phases}", timeout)


def wait_running(node, name: str, timeout: float = 60) -> dict:
    """The pod once Running with every app container running."""

    def running(p):
        statuses = p.get("status", {}).get("containerStatuses") or []
        return p["status"].get("phase") == "Running" and statuses and all("running" in s["state"] for s in statuses)

    return wait_pod(node, name, running, f"pod {name} running", timeout)


def status_of(p: dict, name: str) -> dict:
    statuses = p.get("status", {}).get("containerStatuses", []) + p.get("status", {}).get("initContainerStatuses", [])
    found = [s for s in statuses if s["name"] == name]
    return found[0] if found else {}


def table_row(k: Kubectl, name: str) -> dict[str, str]:
    rows = parse_table(k("get", "pod", name).stdout)
    return rows[0] if rows else {}


def sh(k: Kubectl, name: str, script: str, container_name: str | None = None, check: bool = True):
    args = ["exec", name] + (["-c", container_name] if container_name else []) + ["--", "sh", "-c", script]
    result = k(*args, check=check)
    return result if not check else result.stdout


def events_of(node, name: str) -> list[tuple[str, str]]:
    items = node.request("GET", f"/api/v1/namespaces/{NS}/events?fieldSelector=involvedObject.name%3D{name}").json()
    return [(e["reason"], e["message"]) for e in items["items"]]


def format_pod(p: dict) -> str:
    """Upstream's `format.Pod`: name_namespace(uid)."""
    return f"{p['metadata']['name']}_{p['metadata']['namespace']}({p['metadata']['uid']})"


# --- init containers -------------------------------------------------------------------------


# The host's uptime (1/100 s), the same clock in every container: busybox's date has no %N.
NOW = "read t _ < /proc/uptime"


def stamp(who: str, sleep: float = 0) -> str:
    """Appends `who start <t>` and `who end <t>` to the shared log, `sleep` seconds apart."""
    return f'{NOW}; echo "{who} start $t" >> /work/log; sleep {sleep}; {NOW}; echo "{who} end $t" >> /work/log'


def test_init_containers_run_one_at_a_time_in_order_before_the_app(node, k):
    name = unique_name("init")
    mount = [{"name": "work", "mountPath": "/work"}]
    inits = [
        container(node, "first", stamp("first", 3), volumeMounts=mount),
        container(node, "second", stamp("second", 3), volumeMounts=mount),
        container(node, "third", stamp("third"), volumeMounts=mount),
    ]
    app = container(node, "app", f'{NOW}; echo "app start $t" >> /work/log; cat /work/log', volumeMounts=mount)
    create(k, pod(name, [app], initContainers=inits, volumes=[{"name": "work", "emptyDir": {}}]))

    seen = []

    def finished():
        status = table_row(k, name).get("STATUS")
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        return status == "Completed"

    wait_for(finished, "the pod to complete", timeout=60, interval=0.1)
    assert "Init:0/3" in seen and "Init:1/3" in seen, seen
    assert seen.index("Init:0/3") < seen.index("Init:1/3") < seen.index("Completed"), seen

    lines = [line.split() for line in k("logs", name, "-c", "app").stdout.splitlines()]
    order = [(who, what) for who, what, _ in lines]
    assert order == [
        ("first", "start"), ("first", "end"), ("second", "start"), ("second", "end"),
        ("third", "start"), ("third", "end"), ("app", "start"),
    ]  # fmt: skip
    stamps = [float(t) for _, _, t in lines]
    # No overlap: each container starts after the previous one ended.
    assert stamps == sorted(stamps), stamps
    assert stamps[1] - stamps[0] >= 2.95 and stamps[3] - stamps[2] >= 2.95, stamps
    p = get_pod(node, name)
    for init in ("first", "second", "third"):
        terminated = status_of(p, init)["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed"), terminated
    conditions = {c["type"]: c["status"] for c in p["status"]["conditions"]}
    assert conditions["Initialized"] == "True", conditions


def test_a_failing_init_container_fails_the_pod_under_never_and_loops_under_always(node, k):
    never, always = unique_name("initerr"), unique_name("initloop")
    failing = container(node, "setup", "echo setting up; exit 2")
    app = container(node, "app", "echo app ran")
    create(k, pod(never, [app], initContainers=[failing]), pod(always, [app], restart="Always", initContainers=[failing]))

    p = wait_phase(node, never, {"Failed", "Succeeded"})
    assert p["status"]["phase"] == "Failed"
    terminated = status_of(p, "setup")["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (2, "Error"), terminated
    assert status_of(p, "setup")["restartCount"] == 0
    assert "running" not in status_of(p, "app").get("state", {}) and not status_of(p, "app").get("started")
    wait_for(lambda: table_row(k, never).get("STATUS") == "Init:Error", "kubectl to show Init:Error", timeout=20)

    wait_for(
        lambda: table_row(k, always).get("STATUS") == "Init:CrashLoopBackOff",
        "kubectl to show Init:CrashLoopBackOff",
        timeout=40,
    )
    p = get_pod(node, always)
    assert p["status"]["phase"] == "Pending"
    setup = status_of(p, "setup")
    assert setup["restartCount"] >= 1, setup
    assert setup["state"]["waiting"]["reason"] == "CrashLoopBackOff", setup
    assert setup["lastState"]["terminated"]["exitCode"] == 2, setup
    assert "running" not in status_of(p, "app").get("state", {}) and not status_of(p, "app").get("started")
    assert k("logs", always, "-c", "setup", "--previous").stdout == "setting up\n"


# --- sidecars ----------------------------------------------------------------------------------


def test_sidecars_start_in_order_and_keep_running_beside_the_app(node, k):
    name = unique_name("sidecar")
    mount = [{"name": "work", "mountPath": "/work"}]
    always = {"restartPolicy": "Always", "volumeMounts": mount}
    beat = f"while true; do {NOW}; echo $t > /work/beat.tmp; mv /work/beat.tmp /work/beat; sleep 0.2; done"
    inits = [
        container(node, "beater", f'{NOW}; echo "beater $t" >> /work/order; {beat}', **always),
        container(node, "helper", f'{NOW}; echo "helper $t" >> /work/order; exec sleep 3600', **always),
        container(node, "setup", f'{NOW}; echo "setup $t" >> /work/order', volumeMounts=mount),
    ]
    app = container(node, "app", f'{NOW}; echo "app $t" >> /work/order; exec sleep 3600', volumeMounts=mount)
    create(k, pod(name, [app], restart="Always", initContainers=inits, volumes=[{"name": "work", "emptyDir": {}}]))
    p = wait_running(node, name)

    lines = [line.split() for line in sh(k, name, "cat /work/order", "app").splitlines()]
    assert [who for who, _ in lines] == ["beater", "helper", "setup", "app"]
    assert [float(t) for _, t in lines] == sorted(float(t) for _, t in lines)
    # The app sees the sidecar at work: its heartbeat file keeps changing.
    first = sh(k, name, "cat /work/beat", "app")
    wait_for(lambda: sh(k, name, "cat /work/beat", "app") != first, "the sidecar's heartbeat to change", timeout=10)

    p = get_pod(node, name)
    for sidecar in ("beater", "helper"):
        s = status_of(p, sidecar)
        assert "running" in s["state"] and s["started"] is True and s["restartCount"] == 0, s
    assert status_of(p, "setup")["state"]["terminated"]["reason"] == "Completed"
    assert "running" in status_of(p, "app")["state"]
    wait_for(lambda: table_row(k, name).get("READY") == "3/3", "kubectl to count the sidecars ready: 3/3")
    assert table_row(k, name)["STATUS"] == "Running"


# --- CrashLoopBackOff --------------------------------------------------------------------------


def test_crash_loop_back_off_waits_10s_then_20s(node, k):
    name = unique_name("crash")
    mount = [{"name": "data", "mountPath": "/data"}]
    crash = container(node, "crash", f"{NOW}; echo $t >> /data/starts; exit 1", volumeMounts=mount)
    watcher = container(node, "watcher", "exec sleep 3600", volumeMounts=mount)
    create(k, pod(name, [crash, watcher], restart="Always", volumes=[{"name": "data", "emptyDir": {}}]))

    messages = set()

    def third_restart():
        p = get_pod(node, name)
        s = status_of(p, "crash")
        waiting = s.get("state", {}).get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff":
            messages.add(waiting.get("message"))
        return p if s.get("restartCount", 0) >= 3 else None

    p = wait_for(third_restart, "three restarts", timeout=60)
    # The fourth instance writes its line as it starts, just after the restart was counted.
    def four_starts():
        lines = sh(k, name, "cat /data/starts", "watcher").split()
        return lines if len(lines) >= 4 else None

    starts = [float(t) for t in wait_for(four_starts, "the fourth start", timeout=10)]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # The first restart is immediate; then 10 s, then 20 s after the previous exit.
    assert gaps[0] < 3, gaps
    assert 9.5 <= gaps[1] <= 14, gaps
    assert 19.5 <= gaps[2] <= 25, gaps
    pod_id = format_pod(p)
    assert f"back-off 10s restarting failed container=crash pod={pod_id}" in messages, messages
    assert f"back-off 20s restarting failed container=crash pod={pod_id}" in messages, messages
    assert any(
        reason == "BackOff" and message == f"Back-off restarting failed container crash in pod {pod_id}"
        for reason, message in events_of(node, name)
    ), events_of(node, name)


# --- environment -------------------------------------------------------------------------------


def test_the_environment_from_values_references_and_service_links(node, k):
    name, cm, sec, svc = unique_name("env"), unique_name("envcm"), unique_name("envsec"), unique_name("envsvc")
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 80}], "selector": {"app": "nothing"}},
    }  # fmt: skip
    create(k, config_map(cm, {"key": "cm-value", "other": "two"}), secret(sec, {"password": "s3cret"}), service)
    cluster_ip = node.request("GET", f"/api/v1/namespaces/{NS}/services/{svc}").json()["spec"]["clusterIP"]

    def field(path):
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    def resource(res, divisor=None):
        ref = {"resource": res, **({"divisor": divisor} if divisor else {})}
        return {"valueFrom": {"resourceFieldRef": ref}}

    env = [
        {"name": "GREETING", "value": "hello"},
        {"name": "COMPOSED", "value": "$(GREETING)-world $$(GREETING) $(NOPE)"},
        {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": cm, "key": "key"}}},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": sec, "key": "password"}}},
        {"name": "OPTIONAL_KEY", "valueFrom": {"configMapKeyRef": {"name": cm, "key": "absent", "optional": True}}},
        {"name": "OPTIONAL_CM", "valueFrom": {"configMapKeyRef": {"name": "no-such", "key": "k", "optional": True}}},
        {"name": "OPTIONAL_SECRET", "valueFrom": {"secretKeyRef": {"name": sec, "key": "absent", "optional": True}}},
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_UID", **field("metadata.uid")},
        {"name": "LABEL", **field("metadata.labels['app']")},
        {"name": "ANNOTATION", **field("metadata.annotations['note']")},
        {"name": "NODE_NAME", **field("spec.nodeName")},
        {"name": "SERVICE_ACCOUNT", **field("spec.serviceAccountName")},
        {"name": "POD_IP", **field("status.podIP")},
        {"name": "POD_IPS", **field("status.podIPs")},
        {"name": "HOST_IP", **field("status.hostIP")},
        {"name": "HOST_IPS", **field("status.hostIPs")},
        {"name": "CPU_LIMIT_MILLIS", **resource("limits.cpu", "1m")},
        {"name": "CPU_LIMIT", **resource("limits.cpu")},
        {"name": "MEMORY_REQUEST", **resource("requests.memory")},
        {"name": "MEMORY_LIMIT_MI", **resource("limits.memory", "1Mi")},
    ]
    env_from = [
        {"prefix": "CM_", "configMapRef": {"name": cm}},
        {"prefix": "SEC_", "secretRef": {"name": sec}},
        {"configMapRef": {"name": "no-such-map", "optional": True}},
    ]
    resources = {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "32Mi"}}
    printer = container(node, "env", "env", env=env, envFrom=env_from, resources=resources)
    # Expanded by the agent before the shell sees them: $0..$3 are the expanded words.
    expander = {
        "name": "expand", "image": node.image, "env": env[:2],
        "command": ["sh", "-c", 'echo "0=$0 1=$1 2=$2 3=$3"', "$(GREETING)"],
        "args": ["$(COMPOSED)", "$$(GREETING)", "$(NOPE)"],
    }  # fmt: skip
    labels, annotations = {"app": "envtest"}, {"note": "from the annotation"}
    create(k, pod(name, [printer, expander], labels=labels, annotations=annotations))
    p = wait_phase(node, name, {"Succeeded", "Failed"})
    assert p["status"]["phase"] == "Succeeded", p["status"]

    got = dict(line.split("=", 1) for line in k("logs", name, "-c", "env").stdout.splitlines() if "=" in line)
    expected = {
        "GREETING": "hello",
        "COMPOSED": "hello-world $(GREETING) $(NOPE)",
        "FROM_CM": "cm-value",
        "FROM_SECRET": "s3cret",
        "POD_NAME": name,
        "POD_NAMESPACE": NS,
        "POD_UID": p["metadata"]["uid"],
        "LABEL": "envtest",
        "ANNOTATION": "from the annotation",
        "NODE_NAME": node.node_name,
        "SERVICE_ACCOUNT": "default",
        "POD_IP": p["status"]["podIP"],
        "POD_IPS": ",".join(ip["ip"] for ip in p["status"]["podIPs"]),
        "HOST_IP": "127.0.0.1",
        "HOST_IPS": "127.0.0.1",
        "CPU_LIMIT_MILLIS": "500",
        "CPU_LIMIT": "1",  # rounded up to whole cores without a divisor, as upstream
        "MEMORY_REQUEST": str(32 * 1024 * 1024),
        "MEMORY_LIMIT_MI": "64",
        "CM_key": "cm-value",
        "CM_other": "two",
        "SEC_password": "s3cret",
    }
    assert {key: got.get(key) for key in expected} == expected
    for absent in ("OPTIONAL_KEY", "OPTIONAL_CM", "OPTIONAL_SECRET"):
        assert absent not in got, absent
    prefix = svc.upper().replace("-", "_")
    links = {
        f"{prefix}_SERVICE_HOST": cluster_ip,
        f"{prefix}_SERVICE_PORT": "8080",
        f"{prefix}_SERVICE_PORT_HTTP": "8080",
        f"{prefix}_PORT": f"tcp://{cluster_ip}:8080",
        f"{prefix}_PORT_8080_TCP": f"tcp://{cluster_ip}:8080",
        f"{prefix}_PORT_8080_TCP_PROTO": "tcp",
        f"{prefix}_PORT_8080_TCP_PORT": "8080",
        f"{prefix}_PORT_8080_TCP_ADDR": cluster_ip,
    }
    assert {key: got.get(key) for key in links} == links
    assert got.get("KUBERNETES_SERVICE_PORT") == "443" and got.get("KUBERNETES_SERVICE_HOST")
    assert k("logs", name, "-c", "expand").stdout == "0=hello 1=hello-world $(GREETING) $(NOPE) 2=$(GREETING) 3=$(NOPE)\n"


def test_a_missing_config_map_key_is_a_create_container_config_error(node, k):
    name, cm = unique_name("envbad"), unique_name("envbadcm")
    env = [{"name": "MISSING", "valueFrom": {"configMapKeyRef": {"name": cm, "key": "missing"}}}]
    create(k, config_map(cm, {"present": "yes"}), pod(name, [container(node, "main", "env", env=env)]))

    def waiting():
        w = status_of(get_pod(node, name), "main").get("state", {}).get("waiting") or {}
        return w if w.get("reason") == "CreateContainerConfigError" else None

    w = wait_for(waiting, "CreateContainerConfigError", timeout=40)
    assert w["message"] == f"couldn't find key missing in ConfigMap {NS}/{cm}", w
    assert table_row(k, name)["STATUS"] == "CreateContainerConfigError"
    assert ("Failed", f"Error: couldn't find key missing in ConfigMap {NS}/{cm}") in events_of(node, name)


# --- volumes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume_pod(node, k, tmp_path_factory):
    """One running pod with one volume of each local type mounted in several ways."""
    name, cm, sec = unique_name("vol"), unique_name("volcm"), unique_name("volsec")
    host_dir = tmp_path_factory.mktemp("hostpath") / "created" / "deeper"
    volumes = [
        {"name": "cm-items", "configMap": {"name": cm, "defaultMode": 0o640, "items": [
            {"key": "key", "path": "sub/renamed.txt"}, {"key": "other", "path": "other.txt", "mode": 0o600}]}},
        {"name": "cm-all", "configMap": {"name": cm}},
        {"name": "sec", "secret": {"secretName": sec, "defaultMode": 0o400, "items": [{"key": "password", "path": "pw"}]}},
        {"name": "optional", "configMap": {"name": "no-such-map", "optional": True}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "cpu_limit", "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu", "divisor": "1m"}},
            {"path": "mem_request", "resourceFieldRef": {"containerName": "main", "resource": "requests.memory"}}]}},
        {"name": "proj", "projected": {"sources": [
            {"configMap": {"name": cm, "items": [{"key": "key", "path": "cm-key"}]}},
            {"secret": {"name": sec, "items": [{"key": "password", "path": "secret-pw"}]}},
            {"downwardAPI": {"items": [{"path": "podname", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}},
        {"name": "mem", "emptyDir": {"medium": "Memory"}},
        {"name": "host", "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"}},
        {"name": "scratch", "emptyDir": {}},
    ]  # fmt: skip
    mounts = [
        {"name": "cm-items", "mountPath": "/cm-items"},
        {"name": "cm-all", "mountPath": "/cm-all"},
        {"name": "cm-all", "mountPath": "/etc/sub-key.txt", "subPath": "key"},
        {"name": "sec", "mountPath": "/sec"},
        {"name": "optional", "mountPath": "/optional"},
        {"name": "info", "mountPath": "/info"},
        {"name": "proj", "mountPath": "/proj"},
        {"name": "mem", "mountPath": "/mem"},
        {"name": "host", "mountPath": "/host"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "scratch", "mountPath": "/ro", "readOnly": True},
        {"name": "scratch", "mountPath": "/sub", "subPath": "a/b"},
        {"name": "scratch", "mountPath": "/byname", "subPathExpr": "$(POD_NAME)"},
    ]
    main = container(
        node, "main", "exec sleep 3600",
        volumeMounts=mounts,
        env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        resources={"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"memory": "32Mi"}},
    )  # fmt: skip
    body = pod(name, [main], restart="Always", labels={"app": "vol", "tier": "backend"},
               annotations={"build": "seven"}, volumes=volumes)  # fmt: skip
    create(k, config_map(cm, {"key": "one", "other": "two"}), secret(sec, {"password": "s3cret", "user": "admin"}), body)
    wait_running(node, name)
    return {"name": name, "cm": cm, "host_dir": host_dir}


def test_config_map_secret_and_projected_files_with_their_modes(k, volume_pod):
    name = volume_pod["name"]
    assert sh(k, name, "ls /cm-items") == "other.txt\nsub\n"
    assert sh(k, name, "cat /cm-items/sub/renamed.txt; echo; stat -L -c %a /cm-items/sub/renamed.txt") == "one\n640\n"
    assert sh(k, name, "cat /cm-items/other.txt; echo; stat -L -c %a /cm-items/other.txt") == "two\n600\n"
    assert sh(k, name, "ls /cm-all; stat -L -c %a /cm-all/key") == "key\nother\n644\n"
    # The files are links into the timestamped directory `..data` points at, as upstream's.
    assert sh(k, name, "readlink /cm-all/key") == "..data/key\n"
    assert sh(k, name, "readlink /cm-all/..data").startswith("..20")
    assert sh(k, name, "ls /sec; cat /sec/pw; echo; stat -L -c %a /sec/pw") == "pw\ns3cret\n400\n"
    assert sh(k, name, "ls /optional | wc -l") == "0\n"
    assert sh(k, name, "ls /proj") == "cm-key\npodname\nsecret-pw\n"
    assert sh(k, name, "cat /proj/cm-key /proj/secret-pw /proj/podname") == f"ones3cret{name}"
    # Secrets live in memory, and every API-backed volume is read-only.
    assert " /sec tmpfs " in sh(k, name, "cat /proc/mounts")
    for path in ("/cm-all", "/sec", "/info", "/proj"):
        failed = sh(k, name, f"touch {path}/new", check=False)
        assert failed.returncode != 0 and "Read-only file system" in failed.stderr, (path, failed)


def test_downward_api_files(k, volume_pod):
    name = volume_pod["name"]
    assert sh(k, name, "cat /info/labels") == 'app="vol"\ntier="backend"'
    annotations = sh(k, name, "cat /info/annotations").splitlines()
    assert [a for a in annotations if not a.startswith("kubernetes.io/config.")] == ['build="seven"'], annotations
    assert sh(k, name, "cat /info/name") == name
    assert sh(k, name, "cat /info/cpu_limit /info/mem_request") == f"500{32 * 1024 * 1024}"


def test_empty_dir_host_path_and_mount_options(k, volume_pod):
    name, host_dir = volume_pod["name"], volume_pod["host_dir"]
    mounts = {line.split()[1]: line.split() for line in sh(k, name, "cat /proc/mounts").splitlines()}
    assert mounts["/mem"][2] == "tmpfs", mounts["/mem"]
    assert mounts["/scratch"][2] != "tmpfs"
    # DirectoryOrCreate made the directory (0755) on the node; the container's writes land there.
    assert host_dir.is_dir() and (host_dir.stat().st_mode & 0o777) == 0o755
    sh(k, name, "echo from the pod > /host/hello")
    assert (host_dir / "hello").read_text() == "from the pod\n"
    # A read-only mount of a writable volume refuses writes but shows the volume's files.
    sh(k, name, "echo shared > /scratch/shared")
    failed = sh(k, name, "echo nope > /ro/x", check=False)
    assert failed.returncode != 0 and "Read-only file system" in failed.stderr, failed
    assert sh(k, name, "cat /ro/shared") == "shared\n"
    assert "ro" in mounts["/ro"][3].split(",") and "rw" in mounts["/scratch"][3].split(",")
    # subPath and subPathExpr mount a directory of the volume, created when missing.
    sh(k, name, "echo deep > /sub/f; echo named > /byname/f")
    assert sh(k, name, f"cat /scratch/a/b/f /scratch/{name}/f") == "deep\nnamed\n"


def test_config_map_and_label_updates_reach_the_files_but_not_sub_paths(node, k, volume_pod):
    name, cm = volume_pod["name"], volume_pod["cm"]
    before = sh(k, name, "readlink /cm-all/..data")
    assert sh(k, name, "cat /etc/sub-key.txt") == "one"
    k("patch", "configmap", cm, "--type=merge", "-p", json.dumps({"data": {"key": "uno"}}))
    k("label", "pod", name, "tier=frontend", "--overwrite")
    started = time.monotonic()
    wait_for(lambda: sh(k, name, "cat /cm-all/key") == "uno", "the new value in /cm-all/key", timeout=60, interval=1)
    print(f"configMap update reached the file after {time.monotonic() - started:.1f}s")
    # The swap went through a new timestamped directory, and items follow it too.
    assert sh(k, name, "readlink /cm-all/..data") != before
    assert sh(k, name, "cat /cm-all/other") == "two"
    wait_for(lambda: sh(k, name, "cat /cm-items/sub/renamed.txt") == "uno", "the item's update", timeout=30)
    wait_for(lambda: sh(k, name, "cat /proj/cm-key") == "uno", "the projected update", timeout=30)
    wait_for(
        lambda: sh(k, name, "cat /info/labels") == 'app="vol"\ntier="frontend"', "the labels file's update", timeout=60
    )
    # A subPath mount keeps the file it was given, as upstream's.
    assert sh(k, name, "cat /etc/sub-key.txt") == "one"


def test_a_host_path_file_that_does_not_exist_fails_the_mount(node, k, tmp_path):
    name = unique_name("nofile")
    missing = tmp_path / "no-such-file"
    volumes = [{"name": "missing", "hostPath": {"path": str(missing), "type": "File"}}]
    main = container(node, "main", "true", volumeMounts=[{"name": "missing", "mountPath": "/f"}])
    create(k, pod(name, [main], volumes=volumes))
    message = f"MountVolume.SetUp failed for volume \"missing\" : hostPath {missing} doesn't exist"
    wait_for(lambda: ("FailedMount", message) in events_of(node, name), "the FailedMount event", timeout=30)
    p = get_pod(node, name)
    assert p["status"]["phase"] == "Pending"
    assert table_row(k, name)["STATUS"] == "ContainerCreating"
    assert not missing.exists()


# --- identity and DNS ---------------------------------------------------------------------------


def parse_resolv_conf(text: str) -> dict[str, list[str]]:
    parsed = {"nameserver": [], "search": [], "options": []}
    for line in text.splitlines():
        fields = line.split("#")[0].split()
        if fields and fields[0] == "nameserver":
            parsed["nameserver"].append(fields[1])
        elif fields and fields[0] == "search":
            parsed["search"] = [s.rstrip(".") for s in fields[1:]]
        elif fields and fields[0] == "options":
            parsed["options"] += fields[1:]
    return parsed


def test_hostname_hosts_file_resolver_fs_group_and_no_service_links(node, k):
    name, svc = unique_name("ident"), unique_name("identsvc")
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": NS},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "nothing"}},
    }  # fmt: skip
    spec = {
        "hostname": "myhost",
        "subdomain": "mysub",
        "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}],
        "enableServiceLinks": False,
        "securityContext": {"fsGroup": 2000},
        "volumes": [{"name": "data", "emptyDir": {}}],
    }
    main = container(node, "main", "exec sleep 3600", volumeMounts=[{"name": "data", "mountPath": "/data"}])
    create(k, service, pod(name, [main], restart="Always", **spec))
    p = wait_running(node, name)
    fqdn = f"myhost.mysub.{NS}.svc.{CLUSTER_DOMAIN}"

    assert sh(k, name, "hostname") == "myhost\n"
    assert sh(k, name, "hostname -f") == f"{fqdn}\n"
    assert sh(k, name, "cat /etc/hosts") == (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        f"{p['status']['podIP']}\t{fqdn}\tmyhost\n"
        "\n# Entries added by HostAliases.\n"
        "10.1.2.3\tfoo.local\tbar.local\n"
    )
    host_searches = parse_resolv_conf(Path("/etc/resolv.conf").read_text())["search"]
    searches = [f"{NS}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN]
    searches += [s for s in host_searches if s not in searches]
    assert sh(k, name, "cat /etc/resolv.conf") == (
        f"search {' '.join(searches)}\nnameserver {CLUSTER_DNS}\noptions ndots:5\n"
    )
    # enableServiceLinks: false leaves out the namespace's services, not the API server's.
    env = sh(k, name, "env")
    assert svc.upper().replace("-", "_") + "_SERVICE_HOST" not in env
    assert "KUBERNETES_SERVICE_HOST=" in env
    # fsGroup: the process has the group, the volume belongs to it and new files inherit it.
    assert "2000" in sh(k, name, "id -G").split()
    assert sh(k, name, "stat -c %g /data; touch /data/new; stat -c %g /data/new") == "2000\n2000\n"


def test_dns_policies_default_and_none_and_set_hostname_as_fqdn(node, k):
    default, none = unique_name("dnsdefault"), unique_name("dnsnone")
    script = "hostname; cat /etc/resolv.conf"
    dns_config = {
        "nameservers": ["1.2.3.4", "5.6.7.8"],
        "searches": ["ns1.svc.cluster-domain.example", "my.dns.search.suffix"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
    }
    create(
        k,
        pod(default, [container(node, "main", script)], dnsPolicy="Default",
            hostname="myhost", subdomain="mysub", setHostnameAsFQDN=True),
        pod(none, [container(node, "main", script)], dnsPolicy="None", dnsConfig=dns_config),
    )  # fmt: skip
    for name in (default, none):
        assert wait_phase(node, name, {"Succeeded", "Failed"})["status"]["phase"] == "Succeeded"

    hostname, _, resolv = k("logs", default).stdout.partition("\n")
    assert hostname == f"myhost.mysub.{NS}.svc.{CLUSTER_DOMAIN}"
    host = parse_resolv_conf(Path("/etc/resolv.conf").read_text())
    host["nameserver"] = host["nameserver"][:3]
    assert parse_resolv_conf(resolv) == host

    hostname, _, resolv = k("logs", none).stdout.partition("\n")
    assert hostname == none
    assert resolv == (
        "search ns1.svc.cluster-domain.example my.dns.search.suffix\n"
        "nameserver 1.2.3.4\nnameserver 5.6.7.8\n"
        "options ndots:2 edns0\n"
    )
