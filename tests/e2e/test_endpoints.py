"""Endpoints, EndpointSlices and their mirroring: the controllers publish the pods a Service
selects, as a client (kube-proxy, DNS, kubectl) reads them.

Pods whose readiness a test controls are bound to a plain Node object of the test module that
no simulated kubelet drives, and their status is written by the test; pods that only need to
become Running and Ready run on the module's simulated nodes."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from urllib.parse import quote

import pytest

from support import parse_table, unique_name, wait_for

KUBECTL_VERSIONS = ["1.36", "1.27"]
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME = "kubernetes.io/service-name"


def now(micro: bool = False) -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def cluster(sim_cluster):
    """The module's cluster, plus a plain node (zone z1) whose pods' status the tests write.

    The node is Ready and its Lease is renewed here (the heartbeat of a kubelet), so that the
    node lifecycle controller leaves its pods' readiness to the tests."""
    server = sim_cluster.server
    node = unique_name("plain-node")
    server.create(
        "/api/v1/nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node, "labels": {"topology.kubernetes.io/zone": "z1"}},
        },
    )
    ready = {"type": "Ready", "status": "True", "lastHeartbeatTime": now(), "lastTransitionTime": now()}
    patch = {"status": {"conditions": [ready]}}
    resp = server.request(
        "PATCH", f"/api/v1/nodes/{node}/status", patch, content_type="application/merge-patch+json"
    )
    assert resp.status == 200, resp
    lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now(micro=True)},
    }
    server.create(lease_path, lease)
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(5):
            patch = {"spec": {"renewTime": now(micro=True)}}
            server.request("PATCH", f"{lease_path}/{node}", patch, content_type="application/merge-patch+json")

    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    sim_cluster.plain_node = node
    yield sim_cluster
    stop.set()
    beating.join()


@pytest.fixture
def ns(cluster, request) -> str:
    name = unique_name(f"ep-{request.node.name}")
    cluster.server.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.server.request("DELETE", f"/api/v1/namespaces/{name}")


def create_service(server, ns: str, name: str, selector: dict | None, ports: list[dict], **spec) -> dict:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"team": "blue"}},
        "spec": {"ports": ports, **spec},
    }
    if selector is not None:
        body["spec"]["selector"] = selector
    return server.create(f"/api/v1/namespaces/{ns}/services", body)


def create_pod(server, ns: str, name: str, node: str, labels: dict, ports: list[dict] | None = None, **spec) -> dict:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            # The plain node has no kubelet and may be marked unreachable: stay on it.
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "busybox", "ports": ports or []}],
            **spec,
        },
    }
    return server.create(f"/api/v1/namespaces/{ns}/pods", body)


def set_status(server, ns: str, name: str, ip: str, ready: bool) -> None:
    """Plays the kubelet: the pod runs with `ip`, Ready or not."""
    status = "True" if ready else "False"
    patch = {
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": status, "lastTransitionTime": now()},
                {"type": "ContainersReady", "status": status, "lastTransitionTime": now()},
            ],
        }
    }
    resp = server.request(
        "PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", patch, content_type="application/merge-patch+json"
    )
    assert resp.status == 200, resp


def get_endpoints(server, ns: str, name: str) -> dict | None:
    resp = server.request("GET", f"/api/v1/namespaces/{ns}/endpoints/{name}")
    return resp.json() if resp.status == 200 else None


def get_slices(server, ns: str, service: str) -> list[dict]:
    selector = quote(f"{SERVICE_NAME}={service}")
    resp = server.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector={selector}")
    assert resp.status == 200, resp
    return resp.json()["items"]


def addresses(subsets: list[dict], field: str = "addresses") -> list[str]:
    return sorted(a["ip"] for s in subsets for a in s.get(field) or [])


def endpoints_where(server, ns: str, name: str, check):
    """Waits for the Endpoints object for which `check(endpoints)` holds, and returns it."""

    def ready():
        ep = get_endpoints(server, ns, name)
        return ep if ep is not None and check(ep) else None

    return wait_for(ready, f"endpoints {ns}/{name} as expected", timeout=20)


def slice_endpoints(slices: list[dict]) -> dict[str, dict]:
    """The endpoints of a service's slices by address."""
    return {e["addresses"][0]: e for s in slices for e in s.get("endpoints") or []}


def is_ready_in(slices: list[dict], ip: str) -> bool:
    return slice_endpoints(slices).get(ip, {}).get("conditions", {}).get("ready") is True


def slices_where(server, ns: str, service: str, check):
    def ready():
        slices = get_slices(server, ns, service)
        return slices if check(slices) else None

    return wait_for(ready, f"endpointslices of {ns}/{service} as expected", timeout=20)


HTTP = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]


def test_ready_and_not_ready_pods_are_published_apart(cluster, ns):
    server, node = cluster.server, cluster.plain_node
    svc = create_service(server, ns, "web", {"app": "web"}, HTTP)
    for name, ip, ready in [("a", "10.250.1.1", True), ("b", "10.250.1.2", False)]:
        create_pod(server, ns, name, node, {"app": "web"})
        set_status(server, ns, name, ip, ready)
    create_pod(server, ns, "other", node, {"app": "other"})
    set_status(server, ns, "other", "10.250.1.9", True)

    ep = endpoints_where(
        server, ns, "web", lambda e: addresses(e.get("subsets") or [], "notReadyAddresses") == ["10.250.1.2"]
    )
    (subset,) = ep["subsets"]
    assert addresses([subset]) == ["10.250.1.1"]
    assert subset["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    (address,) = subset["addresses"]
    assert address["targetRef"]["kind"] == "Pod" and address["targetRef"]["name"] == "a"
    assert address["nodeName"] == node
    assert ep["metadata"]["labels"] == {"team": "blue", "endpoints.kubernetes.io/managed-by": "endpoint-controller"}
    assert "endpoints.kubernetes.io/last-change-trigger-time" in ep["metadata"]["annotations"]

    slices = slices_where(server, ns, "web", lambda s: len(slice_endpoints(s)) == 2)
    (s,) = slices
    assert s["metadata"]["name"].startswith("web-") and s["metadata"]["name"] != "web-"
    assert s["metadata"]["labels"][MANAGED_BY] == "endpointslice-controller.k8s.io"
    assert s["metadata"]["labels"]["team"] == "blue"
    (owner,) = s["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == (
        "Service",
        svc["metadata"]["uid"],
        True,
        True,
    )
    assert s["addressType"] == "IPv4"
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    eps = slice_endpoints(slices)
    assert eps["10.250.1.1"]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert eps["10.250.1.2"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert eps["10.250.1.1"]["zone"] == "z1" and eps["10.250.1.1"]["nodeName"] == node
    assert eps["10.250.1.1"]["targetRef"]["name"] == "a"

    # The pod becomes ready: it moves over.
    set_status(server, ns, "b", "10.250.1.2", True)
    endpoints_where(server, ns, "web", lambda e: addresses(e["subsets"]) == ["10.250.1.1", "10.250.1.2"])
    slices_where(server, ns, "web", lambda s: is_ready_in(s, "10.250.1.2"))


def test_a_named_target_port_is_resolved_in_each_pod(cluster, ns):
    server, node = cluster.server, cluster.plain_node
    create_service(server, ns, "api", {"app": "api"}, [{"name": "web", "port": 80, "targetPort": "web"}])
    pods = [("p8080", "10.250.2.1", 8080), ("p9090", "10.250.2.2", 9090), ("noport", "10.250.2.3", None)]
    for name, ip, port in pods:
        ports = [{"name": "web", "containerPort": port}] if port else [{"name": "other", "containerPort": 7000}]
        create_pod(server, ns, name, node, {"app": "api"}, ports)
        set_status(server, ns, name, ip, True)

    def by_port(e):
        return {s["ports"][0]["port"]: addresses([s]) for s in e.get("subsets") or []}

    ep = endpoints_where(server, ns, "api", lambda e: len(by_port(e)) == 2)
    assert by_port(ep) == {8080: ["10.250.2.1"], 9090: ["10.250.2.2"]}

    # Slices group pods by their resolved ports; a pod without the port is listed without ports.
    slices = slices_where(server, ns, "api", lambda s: len(slice_endpoints(s)) == 3)
    ports = sorted(tuple(p["port"] for p in s.get("ports") or []) for s in slices)
    assert ports == [(), (8080,), (9090,)]


def test_publish_not_ready_addresses_lists_unready_pods_as_ready(cluster, ns):
    server, node = cluster.server, cluster.plain_node
    create_service(server, ns, "db", {"app": "db"}, HTTP, publishNotReadyAddresses=True)
    create_pod(server, ns, "db-0", node, {"app": "db"})
    set_status(server, ns, "db-0", "10.250.3.1", False)
    ep = endpoints_where(server, ns, "db", lambda e: addresses(e.get("subsets") or []) == ["10.250.3.1"])
    assert not addresses(ep["subsets"], "notReadyAddresses")
    slices = slices_where(server, ns, "db", lambda s: "10.250.3.1" in slice_endpoints(s))
    conditions = slice_endpoints(slices)["10.250.3.1"]["conditions"]
    assert conditions == {"ready": True, "serving": False, "terminating": False}


def test_terminating_and_deleted_pods_leave_the_endpoints(cluster, ns):
    server, node = cluster.server, cluster.plain_node
    create_service(server, ns, "web", {"app": "web"}, HTTP)
    for name, ip in [("keep", "10.250.4.1"), ("going", "10.250.4.2"), ("gone", "10.250.4.3")]:
        create_pod(server, ns, name, node, {"app": "web"})
        set_status(server, ns, name, ip, True)
    endpoints_where(server, ns, "web", lambda e: len(addresses(e.get("subsets") or [])) == 3)

    # No kubelet finishes this deletion: the pod stays, terminating.
    resp = server.request("DELETE", f"/api/v1/namespaces/{ns}/pods/going", {"gracePeriodSeconds": 300})
    assert resp.status == 200, resp
    resp = server.request("DELETE", f"/api/v1/namespaces/{ns}/pods/gone", {"gracePeriodSeconds": 0})
    assert resp.status == 200, resp
    endpoints_where(server, ns, "web", lambda e: addresses(e.get("subsets") or []) == ["10.250.4.1"])
    slices = slices_where(server, ns, "web", lambda s: "10.250.4.3" not in slice_endpoints(s))
    eps = slice_endpoints(slices)
    assert eps["10.250.4.2"]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert eps["10.250.4.1"]["conditions"]["ready"] is True


def test_endpoints_are_recreated_while_the_service_exists_and_deleted_with_it(cluster, ns):
    server, node = cluster.server, cluster.plain_node
    create_service(server, ns, "web", {"app": "web"}, HTTP)
    create_pod(server, ns, "a", node, {"app": "web"})
    set_status(server, ns, "a", "10.250.5.1", True)
    first = endpoints_where(server, ns, "web", lambda e: addresses(e.get("subsets") or []) == ["10.250.5.1"])
    slices_where(server, ns, "web", lambda s: len(s) == 1)

    # Endpoints deleted by hand come back while the service is there.
    resp = server.request("DELETE", f"/api/v1/namespaces/{ns}/endpoints/web")
    assert resp.status == 200, resp
    endpoints_where(
        server,
        ns,
        "web",
        lambda e: e["metadata"]["uid"] != first["metadata"]["uid"] and addresses(e.get("subsets") or []),
    )

    resp = server.request("DELETE", f"/api/v1/namespaces/{ns}/services/web")
    assert resp.status == 200, resp
    wait_for(lambda: get_endpoints(server, ns, "web") is None, "endpoints deleted with the service")
    wait_for(lambda: not get_slices(server, ns, "web"), "endpointslices deleted with the service")


def test_a_headless_service_publishes_pod_hostnames(cluster, ns):
    server, node = cluster.server, cluster.plain_node
    create_service(server, ns, "db", {"app": "db"}, HTTP, clusterIP="None")
    create_pod(server, ns, "db-0", node, {"app": "db"}, hostname="db-0", subdomain="db")
    set_status(server, ns, "db-0", "10.250.6.1", True)
    ep = endpoints_where(server, ns, "db", lambda e: addresses(e.get("subsets") or []) == ["10.250.6.1"])
    assert ep["subsets"][0]["addresses"][0]["hostname"] == "db-0"
    assert ep["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    slices = slices_where(server, ns, "db", lambda s: "10.250.6.1" in slice_endpoints(s))
    assert slice_endpoints(slices)["10.250.6.1"]["hostname"] == "db-0"
    assert "service.kubernetes.io/headless" in slices[0]["metadata"]["labels"]


def test_more_than_a_hundred_pods_are_spread_over_slices(cluster, ns):
    server, nodes = cluster.server, cluster.node_names
    create_service(server, ns, "big", {"app": "big"}, HTTP)
    count = 130
    for i in range(count):
        # Bound directly to the simulated nodes, which start them and report them Ready.
        create_pod(server, ns, f"big-{i}", nodes[i % len(nodes)], {"app": "big"})

    ep = endpoints_where(server, ns, "big", lambda e: len(addresses(e.get("subsets") or [])) == count)
    assert len(set(addresses(ep["subsets"]))) == count
    slices = slices_where(server, ns, "big", lambda s: len(slice_endpoints(s)) == count)
    assert sorted(len(s["endpoints"]) for s in slices) == [30, 100]
    assert all(e["conditions"]["ready"] for e in slice_endpoints(slices).values())

    out = cluster.kubectl("-n", ns, "get", "endpointslices", "-l", f"{SERVICE_NAME}=big").stdout
    assert len(parse_table(out)) == 2, out


def test_selectorless_endpoints_are_mirrored_to_slices(cluster, ns):
    server = cluster.server
    create_service(server, ns, "ext", None, [{"name": "pg", "port": 5432}])
    body = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "ext", "labels": {"team": "red"}},
        "subsets": [
            {
                "addresses": [{"ip": "192.0.2.1"}],
                "notReadyAddresses": [{"ip": "192.0.2.2"}],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            }
        ],
    }
    ep = server.create(f"/api/v1/namespaces/{ns}/endpoints", body)
    slices = slices_where(server, ns, "ext", lambda s: len(slice_endpoints(s)) == 2)
    (s,) = slices
    assert s["metadata"]["labels"][MANAGED_BY] == "endpointslicemirroring-controller.k8s.io"
    assert s["metadata"]["labels"]["team"] == "red"
    assert s["metadata"]["ownerReferences"][0]["kind"] == "Endpoints"
    assert s["metadata"]["ownerReferences"][0]["uid"] == ep["metadata"]["uid"]
    assert s["ports"] == [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    eps = slice_endpoints(slices)
    assert eps["192.0.2.1"]["conditions"]["ready"] is True
    assert eps["192.0.2.2"]["conditions"]["ready"] is False
    # The controllers leave a selectorless service's Endpoints alone.
    assert get_endpoints(server, ns, "ext")["subsets"] == body["subsets"]

    # An update is mirrored into the same slice.
    body["subsets"][0]["addresses"].append({"ip": "192.0.2.3"})
    resp = server.request("PUT", f"/api/v1/namespaces/{ns}/endpoints/ext", {**body, "metadata": ep["metadata"]})
    assert resp.status == 200, resp
    slices = slices_where(server, ns, "ext", lambda s: "192.0.2.3" in slice_endpoints(s))
    assert [x["metadata"]["name"] for x in slices] == [s["metadata"]["name"]]

    # Endpoints that ask not to be mirrored lose their slices.
    patch = {"metadata": {"labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}}
    resp = server.request(
        "PATCH", f"/api/v1/namespaces/{ns}/endpoints/ext", patch, content_type="application/merge-patch+json"
    )
    assert resp.status == 200, resp
    wait_for(lambda: not get_slices(server, ns, "ext"), "mirrored slices removed")


def test_the_kubernetes_service_has_one_slice_not_mirrored(cluster):
    slices = get_slices(cluster.server, "default", "kubernetes")
    assert [s["metadata"]["name"] for s in slices] == ["kubernetes"]
    assert len(slices[0]["endpoints"]) == 1


def ready_service(cluster, ns: str) -> None:
    server, node = cluster.server, cluster.plain_node
    create_service(server, ns, "web", {"app": "web"}, HTTP)
    for name, ip in [("a", "10.250.7.1"), ("b", "10.250.7.2")]:
        create_pod(server, ns, name, node, {"app": "web"})
        set_status(server, ns, name, ip, True)
    endpoints_where(server, ns, "web", lambda e: len(addresses(e.get("subsets") or [])) == 2)
    slices_where(server, ns, "web", lambda s: len(slice_endpoints(s)) == 2)


@pytest.mark.parametrize("version", KUBECTL_VERSIONS)
def test_kubectl_shows_endpoints_and_endpointslices(cluster, ns, version):
    ready_service(cluster, ns)
    out = cluster.kubectl("-n", ns, "get", "endpoints", "web", version=version).stdout
    (row,) = parse_table(out)
    assert row["NAME"] == "web"
    assert row["ENDPOINTS"] == "10.250.7.1:8080,10.250.7.2:8080", out

    out = cluster.kubectl("-n", ns, "get", "endpointslices", version=version).stdout
    (row,) = parse_table(out)
    assert row["NAME"].startswith("web-")
    assert (row["ADDRESSTYPE"], row["PORTS"]) == ("IPv4", "8080"), out
    assert sorted(row["ENDPOINTS"].split(",")) == ["10.250.7.1", "10.250.7.2"], out

    out = cluster.kubectl("-n", ns, "describe", "service", "web", version=version).stdout
    line = next(line for line in out.splitlines() if line.startswith("Endpoints:"))
    assert sorted(line.split()[1].split(",")) == ["10.250.7.1:8080", "10.250.7.2:8080"], out

    # The Python client reads the same through the typed API.
    from kubernetes import client

    ep = client.CoreV1Api(cluster.client).read_namespaced_endpoints("web", ns)
    assert sorted(a.ip for s in ep.subsets for a in s.addresses) == ["10.250.7.1", "10.250.7.2"]
    slices = client.DiscoveryV1Api(cluster.client).list_namespaced_endpoint_slice(
        ns, label_selector=f"{SERVICE_NAME}=web"
    )
    assert json.dumps(sorted(e.addresses[0] for s in slices.items for e in s.endpoints)) == json.dumps(
        ["10.250.7.1", "10.250.7.2"]
    )
