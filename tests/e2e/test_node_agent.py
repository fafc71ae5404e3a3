"""The node agent with the built-in runtime: `tug server` registers its machine as a Node and
runs pods as real containers pulled from a local registry; kubectl sees their status, logs, exec,
attach, cp and port-forward, and the containers survive a restart of the agent.

Needs root (containers, overlayfs, cgroups); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, agent_server, get_through_port_forward, node_ready, require, wait_for

KUBECTL_VERSIONS = ["1.36", "1.27"]


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry):  # noqa: F811
    """A server with its node agent, the busybox test image pushed to a local registry."""
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("agent"), image) as server:
        yield server


@pytest.fixture(params=KUBECTL_VERSIONS, ids=lambda v: f"kubectl-{v}")
def kubectl(request, node) -> Kubectl:
    version = request.param
    binary = TOOLS_BIN / f"kubectl-{version}"
    require(binary.exists(), f"{binary} missing: run scripts/install-test-deps.sh")
    return Kubectl.for_version(version, binary, node)


@pytest.fixture
def k(node) -> Kubectl:
    """kubectl 1.36 only, for tests about the agent rather than the client."""
    return Kubectl.for_version("1.36", TOOLS_BIN / "kubectl-1.36", node)


_counter = iter(range(1, 10_000))


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 1000}-{next(_counter)}"


def apply_pod(node, name: str, command: list[str] | None, restart: str = "Never", **container) -> dict:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": container.pop("grace", 30),
            "containers": [{"name": container.pop("cname", "main"), "image": node.image, **container}],
        },
    }
    if command is not None:
        body["spec"]["containers"][0]["command"] = command
    return node.create("/api/v1/namespaces/default/pods", body)


def get_pod(node, name: str) -> dict | None:
    resp = node.request("GET", f"/api/v1/namespaces/default/pods/{name}")
    return resp.json() if resp.status == 200 else None


def wait_phase(node, name: str, phases: set[str], timeout: float = 60) -> dict:
    def reached():
        pod = get_pod(node, name)
        return pod if pod and pod.get("status", {}).get("phase") in phases else None

    try:
        return wait_for(reached, f"pod {name} to reach {phases}", timeout=timeout)
    except BaseException:
        print(json.dumps(get_pod(node, name), indent=1))
        print(node.log_tail(80))
        raise


def container_state(pod: dict, index: int = 0) -> dict:
    return pod["status"]["containerStatuses"][index]


# --- the node ----------------------------------------------------------------------------


def test_the_node_registers_with_the_machines_capacity_and_info(node):
    got = node_ready(node)
    status = got["status"]
    assert status["capacity"]["cpu"] == str(os.cpu_count())
    assert int(status["capacity"]["pods"]) == 110
    meminfo = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0])
    assert status["capacity"]["memory"] == f"{meminfo}Ki"
    info = status["nodeInfo"]
    assert info["kernelVersion"] == platform.release()
    assert info["operatingSystem"] == "linux" and info["architecture"] == "amd64"
    assert info["containerRuntimeVersion"].startswith("tug://")
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == node.kubelet_port
    assert got["metadata"]["labels"]["kubernetes.io/hostname"] == node.node_name
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node.node_name}"
    lease = wait_for(
        lambda: (r := node.request("GET", lease_path)).status == 200 and r.json(), "the node's Lease", timeout=20
    )
    assert lease["spec"]["holderIdentity"] == node.node_name
    assert lease["spec"]["leaseDurationSeconds"] == 40


# --- running containers ------------------------------------------------------------------


def test_a_pod_runs_to_completion_with_its_exit_code_and_output(node, k):
    ok, bad = unique("done"), unique("fail")
    apply_pod(node, ok, ["sh", "-c", "echo hello from $(hostname)"])
    apply_pod(node, bad, ["sh", "-c", "echo oops >&2; exit 3"])
    pod = wait_phase(node, ok, {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    terminated = container_state(pod)["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert container_state(pod)["containerID"].startswith("tug://")
    assert container_state(pod)["imageID"]
    assert k("logs", ok).stdout == f"hello from {ok}\n"
    pod = wait_phase(node, bad, {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Failed"
    terminated = container_state(pod)["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"
    assert k("logs", bad).stdout == "oops\n"


def test_a_running_pod_reports_ready_with_ips_and_conditions(node):
    name = unique("run")
    apply_pod(node, name, ["sleep", "3600"], grace=1)
    pod = wait_phase(node, name, {"Running"})
    status = pod["status"]
    assert status["hostIP"] == "127.0.0.1"
    assert status["qosClass"] == "BestEffort"
    assert status["startTime"]
    running = container_state(pod)
    assert running["ready"] is True and running["started"] is True and running["restartCount"] == 0
    assert "running" in running["state"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    wait_for(
        lambda: {c["type"]: c["status"] for c in get_pod(node, name)["status"]["conditions"]}.get("Ready") == "True",
        "Ready=True",
    )
    for kind in ("PodReadyToStartContainers", "Initialized", "PodScheduled"):
        assert conditions.get(kind) == "True", conditions


def test_a_host_network_pod_sees_the_hosts_network_and_name(node, k):
    name = unique("hostnet")
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "hostNetwork": True,
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": node.image, "command": ["sh", "-c", "hostname; cat /proc/net/dev"]}],
        },
    }
    node.create("/api/v1/namespaces/default/pods", body)
    pod = wait_phase(node, name, {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["podIP"] == "127.0.0.1"  # a host-network pod has the node's address
    out = k("logs", name).stdout.splitlines()
    assert out[0] == socket.gethostname()
    # Pods' veth ends come and go on the host as other pods start and stop: compare the rest.
    def links(lines):
        names = {line.split(":")[0].strip() for line in lines}
        return {n for n in names if not n.startswith("veth")}

    host_links = links(open("/proc/net/dev").read().splitlines()[2:])
    assert links(out[3:]) == host_links
    assert "lo" in host_links and len(host_links) > 1


def test_isolation_seen_from_inside(node, k):
    name = unique("iso")
    script = "echo pid=$$$$; hostname; ls /proc | grep -c '^[0-9]'; id -u"
    apply_pod(node, name, ["sh", "-c", script])
    wait_phase(node, name, {"Succeeded"})
    lines = k("logs", name).stdout.split()
    assert lines[0] == "pid=1", lines  # the container's process is pid 1 of its own namespace
    assert lines[1] == name  # its hostname is the pod's name
    assert int(lines[2]) <= 3, lines  # only its own processes are visible
    assert lines[3] == "0"


def test_run_as_user_and_a_dropped_capability(node, k):
    name = unique("sec")
    apply_pod(
        node, name,
        ["sh", "-c", "id -u; id -g; grep CapEff /proc/self/status"],
        securityContext={"runAsUser": 1234, "runAsGroup": 2345},
    )  # fmt: skip
    wait_phase(node, name, {"Succeeded"})
    uid, gid, caps = k("logs", name).stdout.splitlines()
    assert (uid, gid) == ("1234", "2345")
    # A non-root process has no effective capabilities.
    assert caps.split()[1] == "0000000000000000"
    root = unique("caps")
    apply_pod(
        node, root,
        ["sh", "-c", "touch /tmp/f; chown 1:1 /tmp/f && echo chown-ok; grep CapEff /proc/self/status"],
        securityContext={"capabilities": {"drop": ["CHOWN"]}},
    )  # fmt: skip
    wait_phase(node, root, {"Succeeded", "Failed"})
    out = k("logs", root).stdout
    assert "chown-ok" not in out
    effective = int(out.split("CapEff:")[1].split()[0], 16)
    assert effective & (1 << 0) == 0  # CAP_CHOWN is bit 0
    assert effective & (1 << 5)  # CAP_KILL stays


def test_run_as_non_root_refuses_an_image_that_runs_as_root(node):
    refused, allowed = unique("nonroot-no"), unique("nonroot-ok")
    apply_pod(node, refused, ["id", "-u"], securityContext={"runAsNonRoot": True})
    apply_pod(node, allowed, ["id", "-u"], securityContext={"runAsNonRoot": True, "runAsUser": 1000})

    def waiting():
        pod = get_pod(node, refused)
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting")

    state = wait_for(lambda: (w := waiting()) and w.get("reason") == "CreateContainerConfigError" and w, "the refusal")
    assert "container has runAsNonRoot and image will run as root" in state["message"]
    assert wait_phase(node, allowed, {"Succeeded", "Failed"})["status"]["phase"] == "Succeeded"


def test_a_memory_limit_kills_with_oomkilled(node):
    name = unique("oom")
    apply_pod(
        node, name,
        ["sh", "-c", "x=a; while true; do x=$x$x; done"],
        resources={"limits": {"memory": "16Mi"}},
    )  # fmt: skip
    pod = wait_phase(node, name, {"Failed"})
    terminated = container_state(pod)["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled", terminated
    assert terminated["exitCode"] == 137


def test_an_empty_dir_over_its_size_limit_gets_the_pod_evicted(node, k):
    name = unique("evict")
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": "Always",
            "containers": [{
                "name": "main", "image": node.image,
                "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/fill bs=1M count=3 && exec sleep 3600"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}],
        },
    }  # fmt: skip
    node.create("/api/v1/namespaces/default/pods", body)
    # The agent looks at volume usage every 10 s.
    pod = wait_phase(node, name, {"Failed"}, timeout=60)
    message = 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi". '
    assert (pod["status"]["reason"], pod["status"]["message"]) == ("Evicted", message), pod["status"]
    target = next(c for c in pod["status"]["conditions"] if c["type"] == "DisruptionTarget")
    assert (target["status"], target["reason"]) == ("True", "TerminationByKubelet"), target
    # Stopped, not restarted, and still Failed/Evicted once the agent looks again.
    wait_for(lambda: "terminated" in container_state(get_pod(node, name))["state"], "the container stopped")
    described = k("describe", "pod", name).stdout
    assert re.search(r"^Status:\s+Failed$", described, re.M) and re.search(r"^Reason:\s+Evicted$", described, re.M)
    assert re.search(r"^Message:\s+Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\"\.", described, re.M)
    events = node.request("GET", f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}").json()
    assert any(e["reason"] == "Evicted" and e["message"] == message for e in events["items"]), events
    time.sleep(11)  # one more look by the agent must change nothing
    again = get_pod(node, name)["status"]
    assert (again["phase"], again["reason"]) == ("Failed", "Evicted"), again
    assert container_state(get_pod(node, name))["restartCount"] == 0


def test_a_restarting_container_counts_restarts_and_keeps_the_previous_log(node, k):
    name = unique("again")
    apply_pod(node, name, ["sh", "-c", "echo run at $(date +%s%N); exit 1"], restart="Always")

    def restarted():
        pod = get_pod(node, name)
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return pod if statuses[0].get("restartCount", 0) >= 1 else None

    pod = wait_for(restarted, "a restart", timeout=40)
    last = container_state(pod)["lastState"]["terminated"]
    assert last["exitCode"] == 1 and last["reason"] == "Error"
    previous = k("logs", name, "--previous").stdout
    assert previous.startswith("run at ")
    wait_for(
        lambda: (container_state(get_pod(node, name))["state"].get("waiting") or {}).get("reason")
        == "CrashLoopBackOff",
        "CrashLoopBackOff",
        timeout=40,
    )


# --- failures as upstream words them --------------------------------------------------------


def test_a_missing_image_shows_errimagepull_then_backoff(node):
    name = unique("noimg")
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": node.image.replace(":1", ":does-not-exist")}]},
    }
    node.create("/api/v1/namespaces/default/pods", body)

    def waiting_reason():
        pod = get_pod(node, name)
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return (statuses[0].get("state", {}).get("waiting") or {}).get("reason")

    reasons = set()
    wait_for(lambda: reasons.add(waiting_reason()) or "ImagePullBackOff" in reasons, "ImagePullBackOff", timeout=60)
    assert "ErrImagePull" in reasons or "ImagePullBackOff" in reasons
    events = node.request("GET", f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name={name}").json()
    assert any(e["reason"] == "Failed" for e in events["items"]), events


def test_an_unreachable_registry_shows_errimagepull_with_the_cause(node):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = unique("noreg")
    image = f"127.0.0.1:{port}/tugboat.test/busybox:1"
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": image}]}}  # fmt: skip
    node.create("/api/v1/namespaces/default/pods", body)

    def pull_error():
        statuses = (get_pod(node, name).get("status", {}).get("containerStatuses")) or [{}]
        waiting = statuses[0].get("state", {}).get("waiting") or {}
        return waiting if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") else None

    # ErrImagePull right after each attempt, ImagePullBackOff between them: both carry the cause.
    waiting = wait_for(pull_error, "ErrImagePull or ImagePullBackOff", timeout=60)
    assert "connection refused" in waiting["message"].lower(), waiting
    events = node.request("GET", f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name={name}").json()
    failed = [e["message"] for e in events["items"] if e["reason"] == "Failed"]
    assert any(m.startswith(f'Failed to pull image "{image}": ') for m in failed), failed
    assert not node.crashed()


def test_a_container_killed_from_outside_is_restarted_with_its_exit(node):
    name = unique("killed")
    marker = str(3000 + os.getpid() % 500 + next(_counter))
    apply_pod(node, name, ["sleep", marker], restart="Always", grace=1)
    wait_phase(node, name, {"Running"})

    def container_pid():
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    return int(proc.name)
            except OSError:
                pass
        return None

    pid = wait_for(container_pid, "the container's process on the host")
    os.kill(pid, 9)

    def restarted():
        status = container_state(get_pod(node, name))
        return status if status.get("restartCount", 0) >= 1 and "running" in status.get("state", {}) else None

    status = wait_for(restarted, "the container restarted after the kill", timeout=60)
    last = status["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (137, "Error"), last
    assert container_pid() not in (None, pid), "a new process runs the container"


def test_the_termination_message_comes_from_the_file_or_the_log(node):
    written = unique("tmsg")
    apply_pod(node, written, ["sh", "-c", "echo -n 'bye from the file' > /dev/termination-log; echo noise; exit 3"])
    fallback = unique("tlog")
    apply_pod(node, fallback, ["sh", "-c", "echo first; echo boom; exit 1"],
              terminationMessagePolicy="FallbackToLogsOnError")  # fmt: skip
    custom = unique("tpath")
    apply_pod(node, custom, ["sh", "-c", "echo done > /tmp/why"], terminationMessagePath="/tmp/why")
    for name, message, code in ((written, "bye from the file", 3), (fallback, "first\nboom\n", 1), (custom, "done\n", 0)):
        pod = wait_phase(node, name, {"Failed", "Succeeded"})
        terminated = container_state(pod)["state"]["terminated"]
        assert (terminated["exitCode"], terminated.get("message")) == (code, message), terminated


def test_a_command_that_does_not_exist_is_a_start_error(node):
    name = unique("nocmd")
    apply_pod(node, name, ["/no/such/program"])
    pod = wait_phase(node, name, {"Failed"})
    terminated = container_state(pod)["state"]["terminated"]
    assert terminated["reason"] == "StartError", terminated
    assert terminated["exitCode"] == 128
    assert "no/such/program" in terminated["message"]


# --- termination ---------------------------------------------------------------------------


def test_delete_waits_the_grace_period_then_kills(node, k):
    stubborn, polite = unique("stubborn"), unique("polite")
    # pid 1 ignores SIGTERM unless it handles it: this one must be killed after the grace period.
    apply_pod(node, stubborn, ["sleep", "3600"], grace=3)
    apply_pod(node, polite, ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"], grace=30)
    wait_phase(node, stubborn, {"Running"})
    wait_phase(node, polite, {"Running"})
    started = time.monotonic()
    k("delete", "pod", polite, "--wait=true", timeout=40)
    assert time.monotonic() - started < 10
    started = time.monotonic()
    k("delete", "pod", stubborn, "--wait=true", timeout=40)
    elapsed = time.monotonic() - started
    assert 2.5 <= elapsed < 15, elapsed
    assert get_pod(node, stubborn) is None


def test_containers_survive_an_agent_restart_and_are_readopted(node, k):
    name = unique("survivor")
    apply_pod(node, name, ["sh", "-c", "while true; do echo tick; sleep 0.2; done"], restart="Always", grace=1)
    before = container_state(wait_phase(node, name, {"Running"}))
    node.restart()
    wait_for(lambda: node_ready(node), "the node to be Ready again")
    time.sleep(3)
    after = container_state(get_pod(node, name))
    assert after["containerID"] == before["containerID"]
    assert after["restartCount"] == 0 and "running" in after["state"]
    assert after["state"]["running"]["startedAt"] == before["state"]["running"]["startedAt"]
    lines = k("logs", name, "--tail", "3").stdout.splitlines()
    assert lines == ["tick"] * 3


def test_deleting_a_pod_leaves_no_containers_mounts_or_cgroups(node, k):
    name = unique("gone")
    apply_pod(node, name, ["sleep", "3600"], grace=1)
    pod = wait_phase(node, name, {"Running"})
    uid = pod["metadata"]["uid"]
    container_id = container_state(pod)["containerID"].removeprefix("tug://")
    runtime = node.data_dir / "agent" / "runtime"
    assert (runtime / "containers" / container_id).is_dir()
    k("delete", "pod", name, "--wait=true", timeout=40)

    def mounts_of_pod():
        return [
            line for line in open("/proc/self/mountinfo").read().splitlines()
            if container_id in line or uid in line
        ]  # fmt: skip

    wait_for(lambda: not (runtime / "containers" / container_id).exists(), "the container's bundle to go")
    wait_for(lambda: not mounts_of_pod(), "the pod's mounts to go")
    cgroups = [p for p in Path("/sys/fs/cgroup").glob(f"*/kubepods/*/pod{uid}")]
    cgroups += [p for p in Path("/sys/fs/cgroup").glob(f"*/kubepods/pod{uid}")]
    wait_for(lambda: not any(p.exists() for p in cgroups) or None, "the pod's cgroups to go")
    assert not any(p.exists() for p in Path("/sys/fs/cgroup").glob(f"*/kubepods/**/pod{uid}"))


# --- logs, exec, attach, cp, port-forward --------------------------------------------------------


def test_logs_options(node, kubectl):
    name = unique("logs")
    apply_pod(node, name, ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; sleep 3600"], grace=1)
    wait_phase(node, name, {"Running"})
    wait_for(lambda: "line 5" in kubectl("logs", name).stdout, "the output")
    assert kubectl("logs", name, "--tail=2").stdout == "line 4\nline 5\n"
    stamped = kubectl("logs", name, "--timestamps", "--tail=1").stdout
    assert stamped.endswith(" line 5\n") and stamped[:4].isdigit() and "T" in stamped.split()[0]
    assert kubectl("logs", name, "--limit-bytes=7").stdout == "line 1\n"
    assert kubectl("logs", name, "-c", "main", "--since=1h").stdout.count("line") == 5
    follow = kubectl.start("logs", "-f", name, "--tail=1")
    try:
        follow.wait_for_line(lambda line: line == "line 5", timeout=20)
    finally:
        follow.stop()


def test_exec_passes_output_and_exit_codes(node, kubectl):
    name = unique("exec")
    apply_pod(node, name, ["sleep", "3600"], grace=1)
    wait_phase(node, name, {"Running"})
    out = kubectl("exec", name, "--", "sh", "-c", "echo out; echo err >&2; hostname")
    assert out.stdout == f"out\n{name}\n"
    assert "err" in out.stderr
    failed = kubectl("exec", name, "--", "sh", "-c", "exit 7", check=False)
    assert failed.returncode == 7, failed
    piped = kubectl("exec", "-i", name, "--", "cat", input="through stdin\n")
    assert piped.stdout == "through stdin\n"


def test_exec_with_a_tty(node, kubectl):
    name = unique("tty")
    apply_pod(node, name, ["sleep", "3600"], grace=1)
    wait_phase(node, name, {"Running"})
    # `script` gives kubectl a terminal of its own, so -t is honoured.
    result = subprocess.run(
        ["script", "-qec", f"{kubectl.binary} --kubeconfig {kubectl.kubeconfig} exec -it {name} -- sh -c 'tty; exit 4'",
         "/dev/null"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "/dev/pts/" in result.stdout, result
    assert result.returncode == 4, result


def test_cp_into_and_out_of_a_container(node, kubectl, tmp_path):
    name = unique("cp")
    apply_pod(node, name, ["sleep", "3600"], grace=1)
    wait_phase(node, name, {"Running"})
    source = tmp_path / "in.txt"
    source.write_text("copied in\n")
    kubectl("cp", str(source), f"{name}:/tmp/in.txt")
    assert kubectl("exec", name, "--", "cat", "/tmp/in.txt").stdout == "copied in\n"
    kubectl("cp", f"{name}:/tmp/in.txt", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "copied in\n"


def test_attach_sees_the_containers_output(node, kubectl):
    name = unique("attach")
    apply_pod(node, name, ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"], grace=1)
    wait_phase(node, name, {"Running"})
    attached = kubectl.start("attach", name)
    try:
        attached.wait_for_line(lambda line: line.startswith("tick "), timeout=20)
    finally:
        attached.stop()


def test_port_forward_reaches_a_server_in_the_pod(node, kubectl):
    name = unique("web")
    script = "mkdir -p /www && echo hello over port-forward > /www/index.html && httpd -f -p 8080 -h /www"
    apply_pod(node, name, ["sh", "-c", script], grace=1)
    wait_phase(node, name, {"Running"})
    assert get_through_port_forward(kubectl, name, 8080) == "hello over port-forward\n"
