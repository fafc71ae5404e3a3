"""The official Python client on Deployments and Services: CRUD, server defaults,
the scale subresource, conflicts, and the Service IP and node port allocators."""

import ipaddress
import json
import random
import threading

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

SERVICE_CIDR = ipaddress.ip_network("10.43.0.0/16")
NODE_PORTS = range(30000, 32768)
IMAGE = "127.0.0.1:5000/tugboat/busybox:1"


def api_error(excinfo) -> dict:
    return json.loads(excinfo.value.body)


def deployment(name: str, replicas: int, labels: dict[str, str] | None = None) -> client.V1Deployment:
    selector = {"app": name}
    return client.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=client.V1ObjectMeta(name=name, labels={**selector, **(labels or {})}),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=selector),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=selector),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="web", image=IMAGE, command=["httpd", "-f", "-p", "8080"])]
                ),
            ),
        ),
    )


def service(
    name: str,
    type_: str = "ClusterIP",
    cluster_ip: str | None = None,
    node_port: int | None = None,
    labels: dict[str, str] | None = None,
) -> client.V1Service:
    port = client.V1ServicePort(port=80, target_port=8080, node_port=node_port)
    return client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=client.V1ObjectMeta(name=name, labels=labels or {"e2e": "svc"}),
        spec=client.V1ServiceSpec(type=type_, cluster_ip=cluster_ip, selector={"app": name}, ports=[port]),
    )


def test_python_client_deployment_crud(kube_client, namespace):
    apps = client.AppsV1Api(kube_client)

    created = apps.create_namespaced_deployment(namespace, deployment("web", 2, {"e2e": "crud"}))
    assert created.metadata.uid
    assert created.metadata.generation == 1
    # What the server defaulted.
    spec = created.spec
    assert spec.strategy.type == "RollingUpdate"
    assert spec.strategy.rolling_update.max_surge == "25%"
    assert spec.strategy.rolling_update.max_unavailable == "25%"
    assert spec.revision_history_limit == 10
    assert spec.progress_deadline_seconds == 600
    pod_spec = spec.template.spec
    assert pod_spec.restart_policy == "Always"
    assert pod_spec.dns_policy == "ClusterFirst"
    assert pod_spec.termination_grace_period_seconds == 30
    assert pod_spec.scheduler_name == "default-scheduler"
    container = pod_spec.containers[0]
    assert container.image_pull_policy == "IfNotPresent"
    assert container.termination_message_path == "/dev/termination-log"
    assert container.termination_message_policy == "File"

    read = apps.read_namespaced_deployment("web", namespace)
    assert read.metadata.uid == created.metadata.uid
    assert read.metadata.generation == 1

    # Read, modify, write; the Deployment controller writes the object too (its revision
    # annotation and status), so a write may meet a conflict and is then retried on a new read.
    for _ in range(20):
        read.spec.replicas = 3
        try:
            replaced = apps.replace_namespaced_deployment("web", namespace, read)
            break
        except ApiException as e:
            if e.status != 409:
                raise
            read = apps.read_namespaced_deployment("web", namespace)
    assert replaced.spec.replicas == 3
    assert replaced.metadata.generation == 2

    patched = apps.patch_namespaced_deployment(
        "web",
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.local/web:2"}]}}}},
        _content_type="application/strategic-merge-patch+json",
    )
    container = patched.spec.template.spec.containers[0]
    assert container.image == "registry.local/web:2"
    assert container.command == ["httpd", "-f", "-p", "8080"]
    assert patched.metadata.generation == 3

    # The scale subresource reads and writes spec.replicas.
    scale = apps.read_namespaced_deployment_scale("web", namespace)
    assert scale.spec.replicas == 3
    assert scale.status.selector == "app=web"
    apps.patch_namespaced_deployment_scale(
        "web", namespace, {"spec": {"replicas": 1}}, _content_type="application/merge-patch+json"
    )
    assert apps.read_namespaced_deployment("web", namespace).spec.replicas == 1

    # An update carrying a resourceVersion that is no longer current is refused.
    stale = deployment("web", 5)
    stale.metadata.resource_version = created.metadata.resource_version
    with pytest.raises(ApiException) as conflict:
        apps.replace_namespaced_deployment("web", namespace, stale)
    assert conflict.value.status == 409
    status = api_error(conflict)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on deployments.apps "web": '
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    assert status["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    assert apps.read_namespaced_deployment("web", namespace).spec.replicas == 1

    listed = apps.list_namespaced_deployment(namespace, label_selector="e2e=crud")
    assert [d.metadata.name for d in listed.items] == ["web"]

    apps.delete_namespaced_deployment("web", namespace)
    with pytest.raises(ApiException) as gone:
        apps.read_namespaced_deployment("web", namespace)
    assert gone.value.status == 404
    assert api_error(gone)["message"] == 'deployments.apps "web" not found'


def test_scale_patches_are_reapplied_when_another_writer_changes_the_object(kube_client, namespace):
    """A patch that does not name a resourceVersion never fails with a conflict: when another
    writer changes the object between the server's read and write, upstream re-applies the
    patch to the newer object. Two writers race here; every scale patch must succeed."""
    apps = client.AppsV1Api(kube_client)
    apps.create_namespaced_deployment(namespace, deployment("raced", 0))
    stop = threading.Event()
    writes = []

    def annotate():
        i = 0
        while not stop.is_set():
            i += 1
            apps.patch_namespaced_deployment("raced", namespace, {"metadata": {"annotations": {"e2e/writer": str(i)}}})
            writes.append(i)

    writer = threading.Thread(target=annotate)
    writer.start()
    try:
        for replicas in range(40):
            apps.patch_namespaced_deployment_scale(
                "raced", namespace, {"spec": {"replicas": replicas % 3}}, _content_type="application/merge-patch+json"
            )
    finally:
        stop.set()
        writer.join()
    assert len(writes) > 10, "the other writer ran alongside"
    assert apps.read_namespaced_deployment("raced", namespace).spec.replicas == 39 % 3


def test_python_client_service_gets_cluster_ip_and_node_port(kube_client, namespace):
    v1 = client.CoreV1Api(kube_client)

    plain = v1.create_namespaced_service(namespace, service("plain"))
    spec = plain.spec
    assert ipaddress.ip_address(spec.cluster_ip) in SERVICE_CIDR, spec.cluster_ip
    assert spec.cluster_ips == [spec.cluster_ip]
    assert spec.type == "ClusterIP"
    assert spec.ip_families == ["IPv4"]
    assert spec.ip_family_policy == "SingleStack"
    assert spec.session_affinity == "None"
    assert spec.internal_traffic_policy == "Cluster"
    assert spec.ports[0].protocol == "TCP"
    assert spec.ports[0].target_port == 8080
    assert spec.ports[0].node_port is None

    node_port = v1.create_namespaced_service(namespace, service("exposed", type_="NodePort"))
    assert node_port.spec.type == "NodePort"
    assert node_port.spec.ports[0].node_port in NODE_PORTS, node_port.spec.ports
    assert node_port.spec.external_traffic_policy == "Cluster"
    assert ipaddress.ip_address(node_port.spec.cluster_ip) in SERVICE_CIDR
    assert node_port.spec.cluster_ip != plain.spec.cluster_ip

    # An update that leaves the allocated values out keeps them.
    update = service("plain")
    update.metadata.resource_version = plain.metadata.resource_version
    update.spec.ports[0].target_port = 9090
    replaced = v1.replace_namespaced_service("plain", namespace, update)
    assert replaced.spec.cluster_ip == plain.spec.cluster_ip
    assert replaced.spec.ports[0].target_port == 9090

    # Changing the type to NodePort allocates a node port, and keeps the IP.
    promoted = v1.patch_namespaced_service(
        "plain", namespace, {"spec": {"type": "NodePort"}}, _content_type="application/merge-patch+json"
    )
    assert promoted.spec.cluster_ip == plain.spec.cluster_ip
    assert promoted.spec.ports[0].node_port in NODE_PORTS
    assert promoted.spec.ports[0].node_port != node_port.spec.ports[0].node_port

    v1.delete_namespaced_service("plain", namespace)
    v1.delete_namespaced_service("exposed", namespace)
    assert v1.list_namespaced_service(namespace, label_selector="e2e=svc").items == []


def test_services_never_share_a_cluster_ip_or_node_port(kube_client, namespace):
    v1 = client.CoreV1Api(kube_client)
    made = [
        v1.create_namespaced_service(namespace, service(f"svc-{i}", type_="NodePort" if i % 2 else "ClusterIP"))
        for i in range(12)
    ]
    ips = [svc.spec.cluster_ip for svc in made]
    assert len(set(ips)) == len(ips), ips
    assert all(ipaddress.ip_address(ip) in SERVICE_CIDR for ip in ips), ips
    ports = [svc.spec.ports[0].node_port for svc in made if svc.spec.type == "NodePort"]
    assert len(ports) == 6
    assert len(set(ports)) == len(ports), ports

    # No other service in the cluster holds one of them either.
    everywhere = v1.list_service_for_all_namespaces()
    holders = {}
    for svc in everywhere.items:
        for ip in svc.spec.cluster_ips or []:
            if ip != "None":
                holders.setdefault(ip, []).append(f"{svc.metadata.namespace}/{svc.metadata.name}")
    shared = {ip: names for ip, names in holders.items() if len(names) > 1}
    assert not shared, f"cluster IPs held by more than one service: {shared}"


def test_deleting_a_service_frees_its_cluster_ip_and_node_port(kube_client, namespace):
    v1 = client.CoreV1Api(kube_client)
    rng = random.Random()
    ip = f"10.43.{rng.randint(180, 250)}.{rng.randint(2, 250)}"
    port = rng.randint(31000, 32700)

    fixed = v1.create_namespaced_service(namespace, service("fixed", "NodePort", cluster_ip=ip, node_port=port))
    assert fixed.spec.cluster_ip == ip
    assert fixed.spec.ports[0].node_port == port

    with pytest.raises(ApiException) as taken_ip:
        v1.create_namespaced_service(namespace, service("same-ip", cluster_ip=ip))
    assert taken_ip.value.status == 422
    status = api_error(taken_ip)
    assert status["reason"] == "Invalid"
    assert status["message"].startswith('Service "same-ip" is invalid: spec.clusterIPs: Invalid value: '), status
    assert status["message"].endswith(f"failed to allocate IP {ip}: provided IP is already allocated"), status
    assert [cause["field"] for cause in status["details"]["causes"]] == ["spec.clusterIPs"]

    with pytest.raises(ApiException) as taken_port:
        v1.create_namespaced_service(namespace, service("same-port", "NodePort", node_port=port))
    assert taken_port.value.status == 422
    status = api_error(taken_port)
    assert status["message"] == (
        f'Service "same-port" is invalid: spec.ports[0].nodePort: Invalid value: {port}: provided port is already allocated'
    )
    assert [cause["field"] for cause in status["details"]["causes"]] == ["spec.ports[0].nodePort"]

    # The failed creates stored nothing and held nothing.
    assert [s.metadata.name for s in v1.list_namespaced_service(namespace, label_selector="e2e=svc").items] == ["fixed"]

    v1.delete_namespaced_service("fixed", namespace)
    reused = v1.create_namespaced_service(namespace, service("reuse", "NodePort", cluster_ip=ip, node_port=port))
    assert reused.spec.cluster_ip == ip
    assert reused.spec.ports[0].node_port == port


def test_service_allocations_outside_the_ranges_are_invalid(kube_client, namespace):
    v1 = client.CoreV1Api(kube_client)

    with pytest.raises(ApiException) as outside_ip:
        v1.create_namespaced_service(namespace, service("outside", cluster_ip="192.168.7.7"))
    assert outside_ip.value.status == 422
    message = api_error(outside_ip)["message"]
    assert message.startswith('Service "outside" is invalid: spec.clusterIPs: Invalid value: '), message
    assert message.endswith(
        "failed to allocate IP 192.168.7.7: the provided IP (192.168.7.7) is not in the valid range. "
        "The range of valid IPs is 10.43.0.0/16"
    ), message

    with pytest.raises(ApiException) as outside_port:
        v1.create_namespaced_service(namespace, service("low-port", "NodePort", node_port=8080))
    assert outside_port.value.status == 422
    assert api_error(outside_port)["message"] == (
        'Service "low-port" is invalid: spec.ports[0].nodePort: Invalid value: 8080: '
        "provided port is not in the valid range. The range of valid ports is 30000-32767"
    )
    assert v1.list_namespaced_service(namespace, label_selector="e2e=svc").items == []
