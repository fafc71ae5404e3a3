"""The service proxy (kube-proxy's role) on a real three-node dev cluster, once per backend
(`--proxy-mode nftables`, then `iptables`): a Service's ClusterIP spreads connections over its
ready pods from pods and from the nodes themselves, a pod reaches its own Service (hairpin),
NodePorts answer on every node's address, and a Service without endpoints refuses connections
at once."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from support import TOOLS_BIN, require, wait_for
from registry import run_checked, test_images, tug_binary  # noqa: F401
from test_cluster_dns import FakeUpstream
from test_dev_cluster import DevCluster, in_node, leftovers, run_pod

NODES = 3
NAME = "tug-svc"
SUBNET_PREFIX = "172.30.40."
REPLICAS = 3
# An httpd on 8080 answering with the pod's hostname (its name).
SERVE_HOSTNAME = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"


# Module-scoped and parametrized: pytest runs every test on the first backend's cluster, takes
# it down, then runs them all again on the second's.
@pytest.fixture(scope="module", params=["nftables", "iptables"])
def cluster(request, tmp_path_factory, test_images):  # noqa: F811
    require(os.geteuid() == 0, "a dev cluster needs root (network namespaces, bridges, containers)")
    require((TOOLS_BIN / "kubectl-1.36").is_file(), f"no kubectl-1.36 in {TOOLS_BIN}")
    cluster = DevCluster(tmp_path_factory.mktemp("svc-cluster") / "c", tug_binary())
    # The cluster DNS forwards names outside the cluster to a resolver of the test's, on the
    # machine's end of the nodes' network (bound to every address: that one exists only once
    # the cluster is up).
    cluster.upstream = FakeUpstream("0.0.0.0")
    cluster.proxy_mode = request.param
    try:
        up = cluster.tug(
            "up", "--nodes", str(NODES), "--dir", str(cluster.dir), "--name", NAME, "--subnet", f"{SUBNET_PREFIX}0/24",
            f"--server-arg=--cluster-dns-upstream={SUBNET_PREFIX}1:{cluster.upstream.port}",
            f"--server-arg=--proxy-mode={cluster.proxy_mode}", f"--agent-arg=--proxy-mode={cluster.proxy_mode}",
        )  # fmt: skip
        assert up.returncode == 0, f"up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-5000:]}"
        archive = tmp_path_factory.mktemp("svc-image") / "busybox.tar"
        run_checked("skopeo", "copy", f"oci:{test_images}:1", f"oci-archive:{archive}:tugboat.test/busybox:1")
        loaded = cluster.tug("load-image", "--dir", str(cluster.dir), str(archive))
        assert loaded.returncode == 0, loaded.stderr
        yield cluster
    finally:
        cluster.upstream.close()
        down = cluster.tug("down", "--dir", str(cluster.dir))
        assert down.returncode == 0, f"down failed ({down.returncode}):\n{down.stderr[-3000:]}"
        assert leftovers(cluster.dir) == {"mounts": [], "processes": []}


def deployment(replicas: int) -> str:
    return json.dumps({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "httpd", "image": "tugboat.test/busybox:1", "imagePullPolicy": "Never",
                        "command": ["sh", "-c", SERVE_HOSTNAME],
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }],
                },
            },
        },
    })  # fmt: skip


SERVICE = json.dumps({
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "type": "NodePort",
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    },
})  # fmt: skip


def ready_endpoints(cluster: DevCluster) -> list[str]:
    out = cluster.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "json").stdout
    return sorted(
        ip
        for item in json.loads(out)["items"]
        for ep in item.get("endpoints") or []
        if (ep.get("conditions") or {}).get("ready", True)
        for ip in ep["addresses"]
    )


@pytest.fixture(scope="module")
def web(cluster) -> dict:
    """The `web` Deployment's pods (serving their own hostname) behind the `web` Service."""
    cluster.kubectl("apply", "-f", "-", input=deployment(REPLICAS))
    cluster.kubectl("apply", "-f", "-", input=SERVICE)

    def pods_ready():
        out = cluster.kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout
        items = json.loads(out)["items"]
        pods = [p for p in items if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
        return len(pods) == REPLICAS and len(ready_endpoints(cluster)) == REPLICAS and pods

    pods = wait_for(pods_ready, "the web pods to run with ready endpoints", timeout=90)
    svc = json.loads(cluster.kubectl("get", "service", "web", "-o", "json").stdout)
    return {
        "cluster_ip": svc["spec"]["clusterIP"],
        "node_port": svc["spec"]["ports"][0]["nodePort"],
        "pods": {p["metadata"]["name"]: p for p in pods},
    }


@pytest.fixture(scope="module")
def client(cluster, web) -> str:
    """A client pod on a node none of the web pods is on if there is one, else on node 2."""
    used = {p["spec"]["nodeName"] for p in web["pods"].values()}
    free = [f"{NAME}-{i}" for i in range(NODES) if f"{NAME}-{i}" not in used]
    run_pod(cluster, "client", (free or [f"{NAME}-2"])[0], "exec sleep 3600", "tugboat.test/busybox:1")
    return "client"


def fetch_many(cluster: DevCluster, pod: str, url: str, count: int) -> list[str]:
    """`count` GETs of `url` from inside `pod`, one line per answer ("FAIL" for a failed one).

    Each gives up after 3 s: until the proxy has programmed a new service's address, packets to
    it go nowhere, and busybox's wget would wait far longer than the exec's own timeout."""
    script = f"for i in $(seq {count}); do timeout 3 wget -q -O - {url} || echo FAIL; done"
    out = cluster.kubectl("exec", pod, "--", "sh", "-c", script, check=False)
    return out.stdout.split()


def node_get(cluster: DevCluster, node: int, url: str) -> str:
    """A GET from node `node`'s own network namespace (as a process on that host)."""
    try:
        return in_node(cluster, node, "curl", "-sS", "--max-time", "5", url).strip()
    except subprocess.CalledProcessError as error:
        return f"FAIL: {error.stderr}"


def test_a_cluster_ip_spreads_connections_over_ready_pods_from_a_pod_on_another_node(cluster, web, client):
    url = f"http://{web['cluster_ip']}/"
    # The first answer may wait for the rules to reach the client's node.
    wait_for(lambda: fetch_many(cluster, client, url, 1) != ["FAIL"], "the ClusterIP to answer the client pod")
    answers = fetch_many(cluster, client, url, 30)
    assert "FAIL" not in answers, answers
    assert set(answers) <= set(web["pods"]), answers
    assert len(set(answers)) > 1, f"all 30 connections went to one pod: {answers}"


def test_a_cluster_ip_answers_processes_of_every_node(cluster, web):
    url = f"http://{web['cluster_ip']}/"
    for node in range(NODES):
        first = wait_for(
            lambda: (a := node_get(cluster, node, url)) in web["pods"] and a, f"node {node} to reach the ClusterIP"
        )
        seen = {first} | {node_get(cluster, node, url) for _ in range(15)}
        assert seen <= set(web["pods"]), seen
        assert len(seen) > 1, f"node {node}: every connection went to one pod: {seen}"


def http_body(url: str) -> str | None:
    """The body of a GET of `url` from the machine, stripped; None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.read().decode().strip()
    except OSError:
        return None


def test_a_node_port_answers_on_every_nodes_address_from_outside(cluster, web):
    for node in range(NODES):
        url = f"http://{SUBNET_PREFIX}{2 + node}:{web['node_port']}/"
        body = wait_for(lambda: http_body(url), f"the NodePort on node {node}")
        assert body in web["pods"], body


def load_balancer(name: str, port: int) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": port, "targetPort": 8080}]},
    })  # fmt: skip


def test_a_load_balancer_service_answers_on_every_nodes_address_and_holds_its_port(cluster, web):
    """The built-in service load balancer (k3s' servicelb): the nodes' addresses become the
    service's ingress, each answers on the service's own port; a second service asking for
    the same port stays pending until the first is gone."""

    def ingress(name: str) -> list[str]:
        svc = json.loads(cluster.kubectl("get", "service", name, "-o", "json").stdout)
        return sorted(i["ip"] for i in svc.get("status", {}).get("loadBalancer", {}).get("ingress", []))

    node_ips = sorted(f"{SUBNET_PREFIX}{2 + node}" for node in range(NODES))
    cluster.kubectl("apply", "-f", "-", input=load_balancer("web-lb", 8081))
    wait_for(lambda: ingress("web-lb") == node_ips, "the nodes' addresses as the load balancer's ingress")
    for ip in node_ips:
        body = wait_for(lambda: http_body(f"http://{ip}:8081/"), f"the load balancer on {ip}")
        assert body in web["pods"], body
    table = cluster.kubectl("get", "service", "web-lb").stdout
    assert all(ip in table for ip in node_ips), table  # EXTERNAL-IP column

    cluster.kubectl("apply", "-f", "-", input=load_balancer("web-lb-2", 8081))
    time.sleep(2)  # a wrong assignment would have been written by now
    assert ingress("web-lb-2") == [], "the port is held by web-lb"
    cluster.kubectl("delete", "service", "web-lb")
    wait_for(lambda: ingress("web-lb-2") == node_ips, "the freed port to go to the waiting service")
    cluster.kubectl("delete", "service", "web-lb-2")


def test_a_pod_reaches_its_own_service_hairpin(cluster, web):
    name = sorted(web["pods"])[0]
    answers = fetch_many(cluster, name, f"http://{web['cluster_ip']}/", 30)
    assert "FAIL" not in answers, answers
    # One in three connections lands on the pod itself: those come back through the node.
    assert name in answers, f"{name} never reached itself through its service: {answers}"


def test_client_ip_session_affinity_sticks_a_client_to_one_pod(cluster, web, client):
    sticky = json.loads(SERVICE)
    sticky["metadata"]["name"] = "sticky"
    sticky["spec"] = {
        "selector": {"app": "web"},
        "sessionAffinity": "ClientIP",
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sticky))
    ip = json.loads(cluster.kubectl("get", "service", "sticky", "-o", "json").stdout)["spec"]["clusterIP"]
    url = f"http://{ip}/"
    wait_for(lambda: fetch_many(cluster, client, url, 1) != ["FAIL"], "the sticky ClusterIP to answer")
    answers = fetch_many(cluster, client, url, 20)
    assert "FAIL" not in answers, answers
    assert len(set(answers)) == 1, f"one client went to several pods: {answers}"
    assert answers[0] in web["pods"]


def probed_pod(name: str, node: str) -> str:
    """An httpd pod of app=probed, ready while /www/ready exists."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "probed"}},
        "spec": {
            "nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "httpd", "image": "tugboat.test/busybox:1", "imagePullPolicy": "Never",
                "command": ["sh", "-c",
                            "mkdir -p /www && hostname > /www/index.html && touch /www/ready && "
                            "exec httpd -f -p 8080 -h /www"],
                "readinessProbe": {"exec": {"command": ["cat", "/www/ready"]}, "periodSeconds": 1,
                                   "failureThreshold": 1},
            }],
        },
    })  # fmt: skip


def test_a_pod_failing_readiness_leaves_the_rotation(cluster, client):
    for i, name in enumerate(["probed-a", "probed-b"]):
        cluster.kubectl("apply", "-f", "-", input=probed_pod(name, f"{NAME}-{i}"))
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "probed", "namespace": "default"},
        "spec": {"selector": {"app": "probed"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))  # fmt: skip
    ip = json.loads(cluster.kubectl("get", "service", "probed", "-o", "json").stdout)["spec"]["clusterIP"]
    url = f"http://{ip}/"
    both = {"probed-a", "probed-b"}
    wait_for(lambda: set(fetch_many(cluster, client, url, 10)) == both, "both pods to answer", timeout=60)

    cluster.kubectl("exec", "probed-a", "--", "rm", "/www/ready")
    # Within a few probe periods only probed-b answers, and none fails.
    def only_b() -> bool:
        # One request first, so the wait is not 20 requests long per round.
        return fetch_many(cluster, client, url, 1) == ["probed-b"] and set(fetch_many(cluster, client, url, 20)) == {
            "probed-b"
        }

    wait_for(only_b, "probed-a to leave the rotation", timeout=30)
    # Ready again: back in.
    cluster.kubectl("exec", "probed-a", "--", "touch", "/www/ready")
    wait_for(lambda: "probed-a" in fetch_many(cluster, client, url, 10), "probed-a to return", timeout=30)


def test_external_traffic_policy_local_answers_only_on_nodes_with_an_endpoint(cluster):
    node = f"{NAME}-1"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "solo", "namespace": "default", "labels": {"app": "solo"}},
        "spec": {
            "nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "httpd", "image": "tugboat.test/busybox:1", "imagePullPolicy": "Never",
                "command": ["sh", "-c", SERVE_HOSTNAME],
            }],
        },
    }))  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "solo", "namespace": "default"},
        "spec": {"type": "NodePort", "externalTrafficPolicy": "Local", "selector": {"app": "solo"},
                 "ports": [{"port": 80, "targetPort": 8080}]},
    }))  # fmt: skip
    solo = json.loads(cluster.kubectl("get", "service", "solo", "-o", "json").stdout)
    node_port = solo["spec"]["ports"][0]["nodePort"]

    def get(address: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://{address}:{node_port}/", timeout=2) as resp:
                return resp.read().decode().strip()
        except OSError:
            return None

    assert wait_for(lambda: get(f"{SUBNET_PREFIX}3"), "the NodePort on the pod's node", timeout=60) == "solo"
    # Node 0 has no endpoint of it: connections from outside are dropped there (no answer, no
    # reset), while its ClusterIP still reaches the pod from node 0 itself.
    with socket.socket() as sock:
        sock.settimeout(2)
        with pytest.raises(TimeoutError):
            sock.connect((f"{SUBNET_PREFIX}2", node_port))
    assert node_get(cluster, 0, f"http://{solo['spec']['clusterIP']}/") == "solo"

    # As a LoadBalancer, the service gets a health check node port, where each node tells the
    # load balancer whether it has a local endpoint: 200 on the pod's node, 503 elsewhere.
    cluster.kubectl("patch", "service", "solo", "-p", json.dumps({"spec": {"type": "LoadBalancer"}}))
    solo = json.loads(cluster.kubectl("get", "service", "solo", "-o", "json").stdout)
    health_port = solo["spec"]["healthCheckNodePort"]
    assert 30000 <= health_port <= 32767 and health_port != node_port

    def health(address: str) -> tuple[int, dict] | None:
        try:
            with urllib.request.urlopen(f"http://{address}:{health_port}/healthz", timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            return None

    status, body = wait_for(lambda: health(f"{SUBNET_PREFIX}3"), "the health check port on the pod's node")
    assert (status, body["localEndpoints"]) == (200, 1), body
    assert body["service"] == {"namespace": "default", "name": "solo"}
    status, body = wait_for(lambda: health(f"{SUBNET_PREFIX}2"), "the health check port on node 0")
    assert (status, body["localEndpoints"]) == (503, 0), body


# A service whose endpoints are not programmed yet rejects (as upstream): sending can then fail
# at once on the node itself, which counts as no answer, like a timeout.
UDP_CLIENT = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(2)
    try:
        s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
        print(s.recvfrom(100)[0].decode())
    except OSError:
        print("TIMEOUT")
"""


@contextlib.contextmanager
def udp_echo_server():
    """A UDP echo server on the test's uplink address (every node routes to it): yields its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((f"{SUBNET_PREFIX}1", 0))
        server.settimeout(0.5)
        stop = threading.Event()

        def echo():
            while not stop.is_set():
                try:
                    data, peer = server.recvfrom(100)
                except OSError:
                    continue
                server.sendto(b"echo:" + data + b" from " + peer[0].encode(), peer)

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            stop.set()
            thread.join()


def udp_service(cluster: DevCluster, name: str, port: int, endpoints: list[str]) -> str:
    """A selector-less UDP Service on 5353 with a hand-written EndpointSlice (as upstream allows)
    sending to `endpoints`:`port`; returns its cluster IP."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "echo", "protocol": "UDP", "port": 5353}]},
    }))  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-manual", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "echo", "protocol": "UDP", "port": port}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}} for address in endpoints],
    }))  # fmt: skip
    return json.loads(cluster.kubectl("get", "service", name, "-o", "json").stdout)["spec"]["clusterIP"]


def test_a_udp_port_reaches_the_endpoint_of_a_hand_written_endpoint_slice(cluster):
    with udp_echo_server() as port:
        ip = udp_service(cluster, "udp-echo", port, [f"{SUBNET_PREFIX}1"])

        def ask():
            answer = in_node(cluster, 1, sys.executable, "-c", UDP_CLIENT, ip, "5353").strip()
            return answer != "TIMEOUT" and answer

        # From node 1's own processes: DNATed to the echo server, source the node's address.
        assert wait_for(ask, "the UDP service to answer", timeout=20) == f"echo:ping from {SUBNET_PREFIX}3"


def test_udp_flows_to_an_endpoint_that_left_are_deleted(cluster):
    """A UDP flow stays NATed to its first endpoint while packets keep coming; when that
    endpoint leaves the slice, the proxy deletes the flow from the kernel's conntrack table."""
    endpoint = f"{SUBNET_PREFIX}1"
    with udp_echo_server() as port:
        ip = udp_service(cluster, "udp-flush", port, [endpoint])

        def flows() -> str:
            netns = cluster.dir / "nodes" / "1" / "netns"
            command = ["nsenter", f"--net={netns}", "conntrack", "-L", "-p", "udp", "--orig-dst", ip]
            return subprocess.run(command, capture_output=True, text=True).stdout

        def asked():
            answer = in_node(cluster, 1, sys.executable, "-c", UDP_CLIENT, ip, "5353").strip()
            return answer != "TIMEOUT" and answer

        # The service's first endpoint itself clears the flows to its address once programmed,
        # so the first answer's flow may already be gone: ask until a flow is there to see.
        wait_for(
            lambda: asked() and f"src={endpoint}" in flows(), "an answered flow NATed to the endpoint", timeout=30
        )

        cluster.kubectl("patch", "endpointslice", "udp-flush-manual", "--type=merge", "-p",
                        json.dumps({"endpoints": None}))  # fmt: skip
        # Unreplied UDP entries live 30 s, answered ones 120 s: gone sooner means deleted.
        wait_for(lambda: f"src={endpoint}" not in flows(), "the stale flow to be deleted", timeout=10)


def resolve_in_pod(cluster: DevCluster, pod: str, name: str) -> str | None:
    """The address `name` resolves to inside `pod` through its libc resolver (resolv.conf's
    search path and ndots, as applications see it): what `ping` prints before pinging."""
    out = cluster.kubectl("exec", pod, "--", "ping", "-c", "1", "-W", "1", name, check=False).stdout
    first = out.splitlines()[0] if out else ""
    return first.split("(")[1].split(")")[0] if first.startswith("PING") and "(" in first else None


def test_pods_reach_services_by_name_through_the_cluster_dns(cluster, web, client):
    """The cluster DNS (kube-dns at 10.43.0.10, served by `tug server`, reached through the
    service proxy) resolves names through the pod's search path; the pod then reaches them."""
    # Short name, namespace-qualified and fully qualified: the search path of resolv.conf.
    for name in ("web", "web.default", "web.default.svc.cluster.local"):
        found = wait_for(lambda: resolve_in_pod(cluster, client, name), f"{name} to resolve in the pod", timeout=30)
        assert found == web["cluster_ip"], (name, found)
    assert resolve_in_pod(cluster, client, "kubernetes.default") == "10.43.0.1"
    # busybox's nslookup asks the server in resolv.conf directly (no search path): a full name.
    answer = cluster.kubectl("exec", client, "--", "nslookup", "web.default.svc.cluster.local").stdout
    assert "10.43.0.10" in answer and web["cluster_ip"] in answer, answer
    # And the name leads to the pods.
    answers = fetch_many(cluster, client, "http://web/", 6)
    assert answers and set(answers) <= set(web["pods"]), answers


def test_a_pod_resolves_a_name_outside_the_cluster_through_the_forwarding_cluster_dns(cluster, client):
    assert wait_for(lambda: resolve_in_pod(cluster, client, "outside.test"), "outside.test from a pod") == "192.0.2.44"
    assert "outside.test." in cluster.upstream.seen, "the answer came from the upstream resolver"


def test_a_service_without_endpoints_refuses_connections_at_once(cluster, web, client):
    cluster.kubectl("scale", "deployment", "web", "--replicas=0")
    wait_for(lambda: ready_endpoints(cluster) == [], "the endpoints to drain", timeout=60)
    ip = web["cluster_ip"]

    def refused_in_pod():
        start = time.monotonic()
        out = cluster.kubectl("exec", client, "--", "wget", "-q", "-O", "-", f"http://{ip}/", check=False)
        return "refused" in out.stderr.lower() and time.monotonic() - start

    elapsed = wait_for(refused_in_pod, "the ClusterIP to refuse the client pod", timeout=20)
    assert elapsed < 5, f"refusal took {elapsed:.1f}s: a timeout, not a reject"

    # From the test's own namespace, through a NodePort: a TCP reset, not a timeout.
    def refused_from_outside():
        with socket.socket() as sock:
            sock.settimeout(5)
            try:
                sock.connect((f"{SUBNET_PREFIX}2", web["node_port"]))
            except ConnectionRefusedError:
                return True
            except OSError:
                return False
            return False

    wait_for(refused_from_outside, "the NodePort to refuse connections", timeout=20)
    # And from a node's own processes to the ClusterIP.
    refused = node_get(cluster, 1, f"http://{ip}/")
    assert "refused" in refused.lower() or "couldn't connect" in refused.lower(), refused


def test_every_nodes_proxy_reports_its_syncs_and_health(cluster, web):
    """kube-proxy's endpoints: /metrics on 127.0.0.1:10249 and /healthz on the node's :10256."""
    for node in range(NODES):
        metrics = in_node(cluster, node, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:10249/metrics")
        values = dict(
            line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#") and " " in line
        )
        assert float(values["kubeproxy_sync_proxy_rules_duration_seconds_count"]) >= 1, metrics
        assert float(values["kubeproxy_sync_proxy_rules_last_timestamp_seconds"]) > 1.7e9
        # The web service's port and the cluster's own (kubernetes, kube-dns) at least.
        assert float(values["kubeproxy_sync_proxy_rules_service_ports"]) >= 3
        assert float(values["kubeproxy_sync_proxy_rules_nftables_rules"]) > 0
        assert float(values["kubeproxy_sync_proxy_rules_endpoint_changes_total"]) >= 1
        health = json.loads(in_node(cluster, node, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:10256/healthz"))
        assert set(health) == {"lastUpdated", "currentTime", "nodeEligible"}, health


def test_tug_proxy_cleanup_removes_the_rules(cluster):
    """`tug proxy --cleanup` (run on a node whose agent keeps its own proxy) removes the nftables
    table or the iptables chains and the jumps to them; each backend runs without the other's."""
    tables = in_node(cluster, 2, "nft", "list", "tables")
    saved = in_node(cluster, 2, "iptables-save")
    if cluster.proxy_mode == "nftables":
        assert "table ip kube-proxy" in tables
        assert "KUBE-" not in saved, saved
    else:
        assert "table ip kube-proxy" not in tables
        for line in (":KUBE-SERVICES", ":KUBE-POSTROUTING", ":KUBE-SVC-", ":KUBE-SEP-", "-j KUBE-SERVICES"):
            assert line in saved, f"{line} not in:\n{saved}"
    in_node(cluster, 2, str(cluster.binary), "proxy", "--cleanup")
    assert "table ip kube-proxy" not in in_node(cluster, 2, "nft", "list", "tables")
    saved = in_node(cluster, 2, "iptables-save")
    assert "KUBE-" not in saved, saved
    # Removing absent rules is fine too.
    in_node(cluster, 2, str(cluster.binary), "proxy", "--cleanup")
