"""PersistentVolumes and claims with kubectl on a server with simulated nodes: the binder
picks the smallest fitting volume that the claim's class, selector and access modes accept,
marks both bound, reports claims it cannot serve with upstream's events, and reclaims a
volume whose claim is gone (Retain: Released; Delete: the volume goes). New claims without a
class get the default `local-path` class; an ephemeral volume's claim is created for its pod,
provisioned on the pod's node, and deleted with the pod."""

import json
import time

import pytest

from support import unique_name, wait_for

TIMEOUT = 30


@pytest.fixture
def ns(sim_cluster):
    name = unique_name("pv")
    sim_cluster.kubectl("create", "namespace", name)
    yield name
    sim_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def kubectl(cluster, *args, **kwargs):
    return cluster.kubectl(*args, **kwargs)


def get(cluster, *args) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster, ns, *objects):
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def volume(name, size, cls, reclaim="Retain", labels=None, modes=("ReadWriteOnce",)):
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": list(modes),
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": cls,
            "hostPath": {"path": f"/tmp/{name}"},
        },
    }


def claim(name, size, cls, selector=None, modes=("ReadWriteOnce",)):
    spec = {"accessModes": list(modes), "resources": {"requests": {"storage": size}}}
    if cls is not None:
        spec["storageClassName"] = cls
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec}


def phase(cluster, *args):
    obj = json.loads(cluster.kubectl("get", *args, "-o", "json", check=False).stdout or "{}")
    return (obj.get("status") or {}).get("phase")


def events(cluster, ns, reason):
    items = get(cluster, "-n", ns, "events")["items"]
    return [e["message"] for e in items if e.get("reason") == reason]


def test_claims_bind_to_the_smallest_volume_their_class_selector_and_modes_accept(sim_cluster, ns):
    c = sim_cluster
    cls = unique_name("manual")
    names = {k: unique_name(f"pv-{k}") for k in ("small", "mid", "big", "rwx", "gold")}
    for k, size in (("small", "1Gi"), ("mid", "2Gi"), ("big", "5Gi")):
        c.kubectl("apply", "-f", "-", input=json.dumps(volume(names[k], size, cls)))
    c.kubectl("apply", "-f", "-", input=json.dumps(volume(names["rwx"], "10Gi", cls, modes=("ReadWriteMany",))))
    c.kubectl("apply", "-f", "-", input=json.dumps(volume(names["gold"], "8Gi", cls, labels={"tier": "gold"})))
    apply(c, ns, claim("fit", "1500Mi", cls))
    bound = wait_for(lambda: phase(c, "-n", ns, "pvc", "fit") == "Bound" and get(c, "-n", ns, "pvc", "fit"), "claim fit bound", TIMEOUT)
    assert bound["spec"]["volumeName"] == names["mid"]
    assert bound["status"]["capacity"] == {"storage": "2Gi"}
    assert bound["status"]["accessModes"] == ["ReadWriteOnce"]
    assert bound["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] == "yes"
    assert bound["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
    pv = wait_for(lambda: phase(c, "pv", names["mid"]) == "Bound" and get(c, "pv", names["mid"]), "volume bound", TIMEOUT)
    assert pv["spec"]["claimRef"]["name"] == "fit" and pv["spec"]["claimRef"]["namespace"] == ns
    assert pv["spec"]["claimRef"]["uid"] == bound["metadata"]["uid"]
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
    line = c.kubectl("get", "pv", names["mid"], "--no-headers").stdout
    assert "Bound" in line and f"{ns}/fit" in line

    apply(c, ns, claim("shared", "1Gi", cls, modes=("ReadWriteMany",)), claim("golden", "1Gi", cls, selector={"tier": "gold"}))
    wait_for(lambda: phase(c, "-n", ns, "pvc", "shared") == "Bound", "claim shared bound", TIMEOUT)
    wait_for(lambda: phase(c, "-n", ns, "pvc", "golden") == "Bound", "claim golden bound", TIMEOUT)
    assert get(c, "-n", ns, "pvc", "shared")["spec"]["volumeName"] == names["rwx"]
    assert get(c, "-n", ns, "pvc", "golden")["spec"]["volumeName"] == names["gold"]
    for n in names.values():
        c.kubectl("delete", "pv", n, "--wait=false", check=False)


def test_claims_nothing_can_serve_stay_pending_with_upstreams_events(sim_cluster, ns):
    c = sim_cluster
    apply(c, ns, claim("huge", "100Ti", ""), claim("unknown-class", "1Gi", "no-such-class"))
    wait_for(
        lambda: "no persistent volumes available for this claim and no storage class is set" in events(c, ns, "FailedBinding"),
        "FailedBinding event",
        TIMEOUT,
    )
    wait_for(
        lambda: 'storageclass.storage.k8s.io "no-such-class" not found' in events(c, ns, "ProvisioningFailed"),
        "ProvisioningFailed event",
        TIMEOUT,
    )
    assert phase(c, "-n", ns, "pvc", "huge") == "Pending"
    assert phase(c, "-n", ns, "pvc", "unknown-class") == "Pending"
    described = c.kubectl("-n", ns, "describe", "pvc", "huge").stdout
    assert "FailedBinding" in described


def test_a_pre_bound_claim_gets_its_volume_and_a_claim_without_class_gets_the_default(sim_cluster, ns):
    c = sim_cluster
    cls = unique_name("manual")
    pv = unique_name("pv-named")
    c.kubectl("apply", "-f", "-", input=json.dumps(volume(pv, "3Gi", cls)))
    named = claim("named", "1Gi", cls)
    named["spec"]["volumeName"] = pv
    apply(c, ns, named, claim("plain", "1Gi", None))
    wait_for(lambda: phase(c, "-n", ns, "pvc", "named") == "Bound", "pre-bound claim bound", TIMEOUT)
    assert get(c, "pv", pv)["spec"]["claimRef"]["name"] == "named"
    plain = get(c, "-n", ns, "pvc", "plain")
    assert plain["spec"]["storageClassName"] == "local-path"
    assert get(c, "storageclass", "local-path")["volumeBindingMode"] == "WaitForFirstConsumer"
    wait_for(
        lambda: "waiting for first consumer to be created before binding" in events(c, ns, "WaitForFirstConsumer"),
        "WaitForFirstConsumer event",
        TIMEOUT,
    )
    assert phase(c, "-n", ns, "pvc", "plain") == "Pending"
    c.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_retain_releases_the_volume_and_delete_removes_it(sim_cluster, ns):
    c = sim_cluster
    cls = unique_name("manual")
    keep, drop = unique_name("pv-keep"), unique_name("pv-drop")
    c.kubectl("apply", "-f", "-", input=json.dumps(volume(keep, "1Gi", cls, reclaim="Retain", labels={"v": "keep"})))
    c.kubectl("apply", "-f", "-", input=json.dumps(volume(drop, "1Gi", cls, reclaim="Delete", labels={"v": "drop"})))
    apply(c, ns, claim("keep", "1Gi", cls, selector={"v": "keep"}), claim("drop", "1Gi", cls, selector={"v": "drop"}))
    for n in ("keep", "drop"):
        wait_for(lambda n=n: phase(c, "-n", ns, "pvc", n) == "Bound", f"claim {n} bound", TIMEOUT)
    c.kubectl("-n", ns, "delete", "pvc", "keep", "drop")
    wait_for(lambda: phase(c, "pv", keep) == "Released", "retained volume released", TIMEOUT)
    wait_for(
        lambda: c.kubectl("get", "pv", drop, check=False).returncode != 0, "volume with reclaim Delete deleted", TIMEOUT
    )
    assert get(c, "pv", keep)["spec"]["claimRef"]["name"] == "keep"
    c.kubectl("delete", "pv", keep, "--wait=false", check=False)


def test_an_ephemeral_volume_gets_a_claim_owned_by_its_pod_and_loses_it_with_the_pod(sim_cluster, ns):
    c = sim_cluster
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "eph"},
        "spec": {
            "containers": [{"name": "c", "image": "registry.local/web:1", "volumeMounts": [{"name": "scratch", "mountPath": "/s"}]}],
            "volumes": [
                {
                    "name": "scratch",
                    "ephemeral": {
                        "volumeClaimTemplate": {
                            "metadata": {"labels": {"kind": "scratch"}},
                            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                        }
                    },
                }
            ],
        },
    }
    apply(c, ns, pod)
    pvc = wait_for(lambda: phase(c, "-n", ns, "pvc", "eph-scratch") and get(c, "-n", ns, "pvc", "eph-scratch"), "ephemeral claim", TIMEOUT)
    owner = pvc["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Pod", "eph", True)
    assert pvc["metadata"]["labels"] == {"kind": "scratch"}
    # The scheduler picks a node, the provisioner makes a volume there, the binder binds it.
    wait_for(lambda: phase(c, "-n", ns, "pvc", "eph-scratch") == "Bound", "ephemeral claim bound", TIMEOUT)
    node = wait_for(lambda: get(c, "-n", ns, "pod", "eph")["spec"].get("nodeName"), "pod scheduled", TIMEOUT)
    pvc = get(c, "-n", ns, "pvc", "eph-scratch")
    assert pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == node
    assert pvc["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"] == "rancher.io/local-path"
    assert pvc["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-provisioner"] == "rancher.io/local-path"
    assert any("external provisioner 'rancher.io/local-path'" in m for m in events(c, ns, "ExternalProvisioning"))
    pv = get(c, "pv", pvc["spec"]["volumeName"])
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [node]
    assert pv["spec"]["hostPath"]["path"].endswith(f"pvc-{pvc['metadata']['uid']}_{ns}_eph-scratch")
    assert "ProvisioningSucceeded" in c.kubectl("-n", ns, "describe", "pvc", "eph-scratch").stdout
    c.kubectl("-n", ns, "delete", "pod", "eph", "--wait=false")
    wait_for(
        lambda: c.kubectl("-n", ns, "get", "pvc", "eph-scratch", check=False).returncode != 0,
        "ephemeral claim deleted with its pod",
        TIMEOUT,
    )


def test_disable_local_storage_leaves_out_the_class_and_the_default(start_server):
    server = start_server("--disable", "local-storage")
    wait_for(lambda: server.request("GET", "/api/v1/namespaces/default").status == 200, "server ready", TIMEOUT)
    claim_body = claim("plain", "1Gi", None)
    resp = server.request("POST", "/api/v1/namespaces/default/persistentvolumeclaims", claim_body)
    assert resp.status == 201, resp
    assert "storageClassName" not in resp.json()["spec"]
    # Once the controllers run (the binder made a volume Available), the class would exist.
    resp = server.request("POST", "/api/v1/persistentvolumes", volume("pv-probe", "1Gi", ""))
    assert resp.status == 201, resp

    def available():
        return server.request("GET", "/api/v1/persistentvolumes/pv-probe").json().get("status", {}).get("phase") == "Available"

    wait_for(available, "the binder running", TIMEOUT)
    classes = server.request("GET", "/apis/storage.k8s.io/v1/storageclasses").json()["items"]
    assert classes == []


def test_pods_go_where_their_volumes_node_affinity_allows(sim_cluster, ns):
    c = sim_cluster
    cls = unique_name("local")
    target = c.node_names[1]
    pinned, nowhere = unique_name("pv-pinned"), unique_name("pv-nowhere")
    for name, host, label in ((pinned, target, "pinned"), (nowhere, "no-such-node", "nowhere")):
        pv = volume(name, "1Gi", cls, labels={"v": label})
        pv["spec"]["nodeAffinity"] = {
            "required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}
        }
        c.kubectl("apply", "-f", "-", input=json.dumps(pv))
    apply(c, ns, claim("pinned", "1Gi", cls, selector={"v": "pinned"}), claim("nowhere", "1Gi", cls, selector={"v": "nowhere"}))
    for n in ("pinned", "nowhere"):
        wait_for(lambda n=n: phase(c, "-n", ns, "pvc", n) == "Bound", f"claim {n} bound", TIMEOUT)

    def pod(name, claim_name):
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "c", "image": "registry.local/web:1"}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim_name}}],
            },
        }

    apply(c, ns, pod("on-target", "pinned"), pod("stuck", "nowhere"), pod("no-claim", "missing"))
    node = wait_for(lambda: get(c, "-n", ns, "pod", "on-target")["spec"].get("nodeName"), "pod scheduled", TIMEOUT)
    assert node == target
    failed = lambda: "\n".join(events(c, ns, "FailedScheduling"))  # noqa: E731
    wait_for(lambda: "node(s) had volume node affinity conflict" in failed(), "affinity conflict reported", TIMEOUT)
    wait_for(lambda: 'persistentvolumeclaim "missing" not found' in failed(), "missing claim reported", TIMEOUT)
    assert not get(c, "-n", ns, "pod", "stuck")["spec"].get("nodeName")
    for n in (pinned, nowhere):
        c.kubectl("delete", "pv", n, "--wait=false", check=False)


def test_an_ephemeral_volume_never_uses_a_claim_its_pod_does_not_own(sim_cluster, ns):
    c = sim_cluster
    apply(c, ns, claim("conf-scratch", "1Gi", ""))
    template = {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "conf"},
        "spec": {
            "containers": [{"name": "c", "image": "registry.local/web:1"}],
            "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": template}}],
        },
    }
    apply(c, ns, pod)
    message = f"PVC {ns}/conf-scratch was not created for pod {ns}/conf (pod is not owner)"
    wait_for(lambda: message in events(c, ns, "FailedBinding"), "the conflict reported on the pod", TIMEOUT)
    wait_for(lambda: any(message in m for m in events(c, ns, "FailedScheduling")), "the pod left unscheduled", TIMEOUT)
    assert not get(c, "-n", ns, "pod", "conf")["spec"].get("nodeName")
    assert not get(c, "-n", ns, "pvc", "conf-scratch")["metadata"].get("ownerReferences")


def test_local_path_refuses_shared_access_modes(sim_cluster, ns):
    c = sim_cluster
    apply(c, ns, claim("shared", "1Gi", "local-path", modes=("ReadWriteMany",)))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "user"},
        "spec": {
            "containers": [{"name": "c", "image": "registry.local/web:1"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "shared"}}],
        },
    }
    apply(c, ns, pod)
    wait_for(
        lambda: any("NodePath only supports ReadWriteOnce and ReadWriteOncePod" in m for m in events(c, ns, "ProvisioningFailed")),
        "ProvisioningFailed event",
        TIMEOUT,
    )
    assert phase(c, "-n", ns, "pvc", "shared") == "Pending"
    assert not get(c, "-n", ns, "pod", "user")["spec"].get("nodeName")


def test_a_claim_in_use_and_its_bound_volume_are_kept_until_the_pod_and_the_claim_are_gone(sim_cluster, ns):
    c = sim_cluster
    cls = unique_name("manual")
    pv = unique_name("pv-guarded")
    c.kubectl("apply", "-f", "-", input=json.dumps(volume(pv, "1Gi", cls)))
    apply(c, ns, claim("guarded", "1Gi", cls))
    wait_for(lambda: phase(c, "-n", ns, "pvc", "guarded") == "Bound", "claim bound", TIMEOUT)
    # The StorageObjectInUseProtection admission plugin's finalizers.
    assert get(c, "-n", ns, "pvc", "guarded")["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    assert get(c, "pv", pv)["metadata"]["finalizers"] == ["kubernetes.io/pv-protection"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "user"},
        "spec": {
            "containers": [{"name": "c", "image": "registry.local/web:1", "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "guarded"}}],
        },
    }
    apply(c, ns, pod)
    wait_for(lambda: phase(c, "-n", ns, "pod", "user") == "Running", "pod using the claim running", TIMEOUT)

    c.kubectl("-n", ns, "delete", "pvc", "guarded", "--wait=false")
    c.kubectl("delete", "pv", pv, "--wait=false")
    # Both only marked: the claim is in use, the volume bound. kubectl shows them Terminating.
    wait_for(lambda: "Terminating" in c.kubectl("-n", ns, "get", "pvc", "guarded").stdout, "claim terminating", TIMEOUT)
    assert "Terminating" in c.kubectl("get", "pv", pv).stdout
    time.sleep(2)  # the protection controllers have had time to act, and must not have
    assert get(c, "-n", ns, "pvc", "guarded")["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    assert get(c, "pv", pv)["status"]["phase"] == "Bound"
    assert phase(c, "-n", ns, "pod", "user") == "Running"

    # The pod gone, the claim goes; the claim gone, the (retained) volume is released and goes.
    c.kubectl("-n", ns, "delete", "pod", "user", "--wait=false")
    wait_for(lambda: c.kubectl("-n", ns, "get", "pvc", "guarded", check=False).returncode != 0, "claim deleted", TIMEOUT)
    wait_for(lambda: c.kubectl("get", "pv", pv, check=False).returncode != 0, "volume deleted", TIMEOUT)


def test_a_claim_no_pod_uses_is_deleted_at_once(sim_cluster, ns):
    c = sim_cluster
    apply(c, ns, claim("unused", "1Gi", unique_name("none")))
    assert get(c, "-n", ns, "pvc", "unused")["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    started = time.monotonic()
    c.kubectl("-n", ns, "delete", "pvc", "unused", "--timeout=20s")
    assert time.monotonic() - started < 10
    assert c.kubectl("-n", ns, "get", "pvc", "unused", check=False).returncode != 0
