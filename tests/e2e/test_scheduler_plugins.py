"""The scheduler's placement plugins end to end: host ports, topology spread, inter-pod
affinity and anti-affinity, preemption, and a scheduler configuration file with a
MostAllocated profile.

Like test_scheduler.py, most tests create plain `v1 Node` objects on a server of their own;
preemption uses simulated nodes, since evicted pods must really go away.
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter

from support import wait_for
from test_scheduler import NS, condition, events_for, get_pod, make_node, wait_bound, wait_unschedulable

ZONE = "topology.kubernetes.io/zone"
HOSTNAME = "kubernetes.io/hostname"


def create_pod(server, name: str, labels=None, cpu: str | None = None, annotations=None, **spec_extra) -> str:
    container = {"name": "c", "image": "busybox"}
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    if "ports" in spec_extra:
        container["ports"] = spec_extra.pop("ports")
    metadata = {"name": name, "namespace": NS, "labels": labels or {}}
    if annotations:
        metadata["annotations"] = annotations
    if "finalizers" in spec_extra:
        metadata["finalizers"] = spec_extra.pop("finalizers")
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": [container], **spec_extra}}
    server.create(f"/api/v1/namespaces/{NS}/pods", body)
    return name


def delete_now(server, name: str) -> None:
    resp = server.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}?gracePeriodSeconds=0")
    assert resp.status == 200, resp


def term(app: str, key: str) -> dict:
    return {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}


def test_a_second_pod_wanting_the_same_host_port_waits_for_it(fresh_server):
    make_node(fresh_server, "only")
    create_pod(fresh_server, "first", ports=[{"containerPort": 80, "hostPort": 8080}])
    wait_bound(fresh_server, "first")
    create_pod(fresh_server, "second", ports=[{"containerPort": 80, "hostPort": 8080}])
    cond = wait_unschedulable(fresh_server, "second")
    assert cond["message"] == (
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports. "
        "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    )
    # Another port, or the same port over UDP, does not conflict.
    create_pod(fresh_server, "other-port", ports=[{"containerPort": 80, "hostPort": 8081}])
    create_pod(fresh_server, "udp", ports=[{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}])
    wait_bound(fresh_server, "other-port")
    wait_bound(fresh_server, "udp")
    # The holder's deletion frees the port: the waiting pod is retried at once.
    delete_now(fresh_server, "first")
    assert wait_bound(fresh_server, "second", timeout=15)["spec"]["nodeName"] == "only"


def test_do_not_schedule_spread_balances_zones_and_skips_unlabelled_nodes(fresh_server):
    make_node(fresh_server, "a1", labels={ZONE: "a"})
    make_node(fresh_server, "a2", labels={ZONE: "a"})
    make_node(fresh_server, "b1", labels={ZONE: "b"})
    make_node(fresh_server, "c1", labels={ZONE: "c"})
    make_node(fresh_server, "nozone")
    spread = [{
        "maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "spread"}},
    }]  # fmt: skip
    names = [
        create_pod(fresh_server, f"s{i}", labels={"app": "spread"}, topologySpreadConstraints=spread) for i in range(6)
    ]
    zone_of = {"a1": "a", "a2": "a", "b1": "b", "c1": "c"}
    placed = [wait_bound(fresh_server, n)["spec"]["nodeName"] for n in names]
    assert "nozone" not in placed
    assert Counter(zone_of[n] for n in placed) == {"a": 2, "b": 2, "c": 2}


def test_required_anti_affinity_keeps_replicas_on_separate_nodes(fresh_server):
    for name in ("n1", "n2", "n3"):
        make_node(fresh_server, name)
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", HOSTNAME)]}}
    names = [create_pod(fresh_server, f"web{i}", labels={"app": "web"}, affinity=anti) for i in range(3)]
    placed = {wait_bound(fresh_server, n)["spec"]["nodeName"] for n in names}
    assert placed == {"n1", "n2", "n3"}
    create_pod(fresh_server, "web3", labels={"app": "web"}, affinity=anti)
    cond = wait_unschedulable(fresh_server, "web3")
    assert cond["message"] == (
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. "
        "preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    )
    # Symmetry: a pod without affinity of its own may not join a pod that repels it.
    create_pod(fresh_server, "loner", labels={"app": "loner"}, affinity={
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("intruder", HOSTNAME)]}
    })  # fmt: skip
    loner_node = wait_bound(fresh_server, "loner")["spec"]["nodeName"]
    create_pod(fresh_server, "intruder", labels={"app": "intruder"}, nodeSelector={HOSTNAME: loner_node})
    cond = wait_unschedulable(fresh_server, "intruder")
    assert "1 node(s) didn't satisfy existing pods anti-affinity rules" in cond["message"]


def test_required_affinity_co_locates_and_waits_for_its_target(fresh_server):
    make_node(fresh_server, "a1", labels={ZONE: "a"})
    make_node(fresh_server, "b1", labels={ZONE: "b"})
    make_node(fresh_server, "b2", labels={ZONE: "b"})
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", ZONE)]}}
    # No db pod yet, and the web pod is not one itself: it waits.
    create_pod(fresh_server, "web0", labels={"app": "web"}, affinity=affinity)
    cond = wait_unschedulable(fresh_server, "web0")
    assert cond["message"].startswith("0/3 nodes are available: 3 node(s) didn't match pod affinity rules.")
    # The db pod landing in zone b is the event that brings it back.
    create_pod(fresh_server, "db", labels={"app": "db"}, nodeSelector={HOSTNAME: "b2"})
    wait_bound(fresh_server, "db")
    assert wait_bound(fresh_server, "web0", timeout=15)["spec"]["nodeName"] in {"b1", "b2"}
    create_pod(fresh_server, "web1", labels={"app": "web"}, affinity=affinity)
    assert wait_bound(fresh_server, "web1")["spec"]["nodeName"] in {"b1", "b2"}


def test_a_high_priority_pod_preempts_a_low_priority_one(fresh_server, start_sim_nodes):
    nodes = start_sim_nodes(fresh_server, 1, "--cpu", "2")
    node = nodes.names[0]
    for name, extra in [("high", {}), ("high-polite", {"preemptionPolicy": "Never"})]:
        body = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": 1000}
        fresh_server.create("/apis/scheduling.k8s.io/v1/priorityclasses", {**body, **extra})
    # The finalizer keeps the victim visible after its deletion, to see how it was evicted.
    create_pod(fresh_server, "low", labels={"app": "low"}, cpu="1500m", finalizers=["tugboat.dev/e2e-hold"])
    wait_bound(fresh_server, "low")
    create_pod(fresh_server, "polite", cpu="1500m", priorityClassName="high-polite")
    cond = wait_unschedulable(fresh_server, "polite")
    assert cond["message"] == (
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
    )
    create_pod(fresh_server, "high", cpu="1500m", priorityClassName="high")
    high = wait_for(lambda: (p := get_pod(fresh_server, "high")).get("status", {}).get("nominatedNodeName") and p,
                    "the preemptor to be nominated")  # fmt: skip
    assert high["status"]["nominatedNodeName"] == node

    def evicted():
        p = get_pod(fresh_server, "low")
        c = condition(p, "DisruptionTarget")
        return p["metadata"].get("deletionTimestamp") and c and p

    low = wait_for(evicted, "the victim to be deleted with a DisruptionTarget condition")
    c = condition(low, "DisruptionTarget")
    assert (c["status"], c["reason"]) == ("True", "PreemptionByScheduler")
    assert c["message"] == "default-scheduler: preempting to accommodate a higher priority pod"
    preempted = wait_for(lambda: [e for e in events_for(fresh_server, "low") if e["reason"] == "Preempted"],
                         "a Preempted event")  # fmt: skip
    assert preempted[0]["message"] == f"Preempted by pod {high['metadata']['uid']} on node {node}"
    resp = fresh_server.request(
        "PATCH", f"/api/v1/namespaces/{NS}/pods/low", {"metadata": {"finalizers": None}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    assert resp.status == 200, resp
    assert wait_bound(fresh_server, "high", timeout=20)["spec"]["nodeName"] == node
    # The room freed for the preemptor was not taken by the other pending pod.
    polite = get_pod(fresh_server, "polite")
    assert not polite["spec"].get("nodeName")
    assert "Insufficient cpu" in condition(polite)["message"]


CONFIG = """\
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
  - schedulerName: default-scheduler
  - schedulerName: bin-packer
    plugins:
      score:
        disabled:
          - name: NodeResourcesBalancedAllocation
    pluginConfig:
      - name: NodeResourcesFit
        args:
          scoringStrategy:
            type: MostAllocated
            resources:
              - name: cpu
                weight: 1
              - name: memory
                weight: 1
"""


def test_a_most_allocated_profile_from_a_config_file_packs_pods(start_server):
    server = start_server("--disable-scheduler")
    make_node(server, "n1", cpu="8", memory="16Gi")
    make_node(server, "n2", cpu="8", memory="16Gi")
    config = server.data_dir.parent / "scheduler-config.yaml"
    config.write_text(CONFIG)
    log = open(server.data_dir.parent / "scheduler.log", "wb")
    proc = subprocess.Popen(
        [str(server.binary), "scheduler", "--kubeconfig", str(server.kubeconfig), "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        packed = []
        for i in range(4):
            create_pod(server, f"packed{i}", cpu="1", schedulerName="bin-packer")
            packed.append(wait_bound(server, f"packed{i}")["spec"]["nodeName"])
        assert len(set(packed)) == 1, packed
        # Events name the profile that placed the pod, as upstream's per-profile recorders do.
        scheduled = wait_for(lambda: [e for e in events_for(server, "packed0") if e["reason"] == "Scheduled"],
                             "a Scheduled event")  # fmt: skip
        assert scheduled[0]["source"]["component"] == "bin-packer"
        # The default profile still spreads: its pod goes to the emptier node.
        create_pod(server, "spread", cpu="1")
        assert wait_bound(server, "spread")["spec"]["nodeName"] != packed[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (server.data_dir.parent / "scheduler.log").read_text()


def test_the_scheduler_refuses_a_bad_config_file(start_server, tmp_path):
    server = start_server("--disable-scheduler")
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG.replace("MostAllocated", "Fanciest"))
    out = subprocess.run(
        [str(server.binary), "scheduler", "--kubeconfig", str(server.kubeconfig), "--config", str(config)],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.returncode != 0
    assert "unknown scoringStrategy.type Fanciest" in out.stderr
