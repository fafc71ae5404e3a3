"""`tug sim-nodes`: simulated nodes register, keep their Leases and play their pods' lifecycle,
so controllers can be tested with pods that become Running and Ready without containers."""

from __future__ import annotations

from support import unique_name, wait_for


def pod_body(name: str, annotations: dict | None = None, restart_policy: str = "Always") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"restartPolicy": restart_policy, "containers": [{"name": "c", "image": "busybox"}]},
    }


def get_pod(server, namespace: str, name: str) -> dict:
    resp = server.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    assert resp.status == 200, resp
    return resp.json()


def phase_is(server, namespace: str, name: str, phase: str):
    def check():
        pod = get_pod(server, namespace, name)
        return pod if pod.get("status", {}).get("phase") == phase else None

    return wait_for(check, f"pod {name} {phase}", timeout=30)


def make_namespace(server) -> str:
    name = unique_name("sim")
    server.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def test_simulated_nodes_are_ready_with_capacity_and_a_lease(sim_cluster):
    server = sim_cluster.server
    for name in sim_cluster.node_names:
        node = server.request("GET", f"/api/v1/nodes/{name}").json()
        assert node["status"]["capacity"]["cpu"] == "16"
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name
        lease = server.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
        assert lease.status == 200, lease
        assert lease.json()["spec"]["holderIdentity"] == name
    out = sim_cluster.kubectl("get", "nodes").stdout
    assert all(f"{n}   Ready" in out for n in sim_cluster.node_names), out


def test_deployment_pods_become_running_and_ready_with_distinct_ips(sim_cluster):
    ns = make_namespace(sim_cluster.server)
    sim_cluster.kubectl("-n", ns, "create", "deployment", "web", "--image=busybox", "--replicas=6")

    def available():
        out = sim_cluster.kubectl("-n", ns, "get", "deployment", "web", "-o", "jsonpath={.status.availableReplicas}")
        return out.stdout == "6"

    wait_for(available, "6 available replicas", timeout=45)
    pods = sim_cluster.server.request("GET", f"/api/v1/namespaces/{ns}/pods").json()["items"]
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 6
    for pod in pods:
        assert pod["spec"]["nodeName"] in sim_cluster.node_names
        conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert conditions["Ready"] == "True" and conditions["PodScheduled"] == "True"
        assert pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]


def test_annotated_pods_exit_with_their_code_under_their_restart_policy(sim_cluster):
    server = sim_cluster.server
    ns = make_namespace(server)
    exits = {"sim.tugboat.dev/exit-code": "3", "sim.tugboat.dev/run-seconds": "1"}
    server.create(f"/api/v1/namespaces/{ns}/pods", pod_body("fails", exits, "Never"))
    server.create(f"/api/v1/namespaces/{ns}/pods", pod_body("succeeds", {"sim.tugboat.dev/exit-code": "0"}, "Never"))
    server.create(f"/api/v1/namespaces/{ns}/pods", pod_body("crashes", {"sim.tugboat.dev/exit-code": "1"}))

    failed = phase_is(server, ns, "fails", "Failed")
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    phase_is(server, ns, "succeeds", "Succeeded")

    def backing_off():
        status = get_pod(server, ns, "crashes")["status"]
        cs = (status.get("containerStatuses") or [{}])[0]
        return cs.get("restartCount") == 1 and cs["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"

    wait_for(backing_off, "crashing pod in CrashLoopBackOff", timeout=20)
    rows = sim_cluster.kubectl("-n", ns, "get", "pods", "--no-headers").stdout
    assert "CrashLoopBackOff" in rows and "Error" in rows and "Completed" in rows, rows


def test_unready_annotation_and_deletion(sim_cluster):
    server = sim_cluster.server
    ns = make_namespace(server)
    server.create(f"/api/v1/namespaces/{ns}/pods", pod_body("slow", {"sim.tugboat.dev/ready": "false"}))
    pod = phase_is(server, ns, "slow", "Running")
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "False"

    sim_cluster.kubectl("-n", ns, "delete", "pod", "slow", "--wait=true", "--timeout=20s")
    assert server.request("GET", f"/api/v1/namespaces/{ns}/pods/slow").status == 404
