"""CSI dynamic provisioning and attaching on a real node: the project's hostpath CSI driver
(`tug-csi-hostpath`) runs beside `tug csi-controller` (the external-provisioner and
external-attacher roles). A claim of a WaitForFirstConsumer class of the driver gets a volume
from the driver once its pod is scheduled, as a PersistentVolume with `spec.csi`; the
attach/detach controller asks for the volume on the pod's node with a VolumeAttachment, which
the attacher publishes; the pod writes into the driver's volume. The pod going detaches the
volume; the claim going deletes the volume and its storage.

Needs root (containers, mounts); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, agent_server, wait_for

TIMEOUT = 60
DRIVER = "hostpath.csi.tugboat.dev"
CLASS = "csi-hostpath"


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("csi-provisioning"), image) as server:
        yield server


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def driver(node, tmp_path_factory):
    """The hostpath driver (registered with the node's kubelet) and `tug csi-controller` for
    it; yields the driver's state directory."""
    binary = tug_binary().parent / "tug-csi-hostpath"
    assert binary.is_file(), f"no driver binary at {binary} (cargo build -p tug-csi)"
    workdir = tmp_path_factory.mktemp("csi-driver")
    state = workdir / "state"
    socket = f"unix://{workdir}/csi.sock"
    driver_log = open(workdir / "driver.log", "wb")
    driver = subprocess.Popen(
        [
            str(binary),
            "--endpoint", socket,
            "--node-id", node.node_name,
            "--state-dir", str(state),
            "--registration-dir", str(node.data_dir / "agent" / "kubelet" / "plugins_registry"),
        ],
        stdout=driver_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    controller_log = open(workdir / "csi-controller.log", "wb")
    controller = None
    try:
        wait_for(lambda: Path(socket.removeprefix("unix://")).exists(), "the driver's socket", 20)
        controller = subprocess.Popen(
            [
                str(tug_binary()), "csi-controller",
                "--kubeconfig", str(node.kubeconfig),
                "--csi-address", socket,
                "--leader-elect", "false",
            ],
            stdout=controller_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        yield state
        assert controller.poll() is None, (workdir / "csi-controller.log").read_text()[-3000:]
    finally:
        if controller is not None:
            stop(controller)
        stop(driver)
        driver_log.close()
        controller_log.close()


@pytest.fixture
def k(node) -> Kubectl:
    return Kubectl.for_version("1.36", TOOLS_BIN / "kubectl-1.36", node)


def get(k, *args) -> dict | None:
    r = k("get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def apply(k, *objects: dict) -> None:
    k("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def objects(image: str) -> list[dict]:
    return [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": {"name": DRIVER},
            "spec": {"attachRequired": True, "volumeLifecycleModes": ["Persistent"]},
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": CLASS},
            "provisioner": DRIVER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
            "parameters": {"purpose": "e2e"},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "default"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": CLASS,
                "resources": {"requests": {"storage": "16Mi"}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "writer", "namespace": "default"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": image,
                        "command": ["sh", "-c", "echo written by the pod > /data/hello && exec sleep 3600"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            },
        },
    ]


def events_of(k, name: str, reason: str) -> list[str]:
    items = get(k, "events")["items"]
    return [e["message"] for e in items if e["involvedObject"]["name"] == name and e["reason"] == reason]


def attachments(k, pv: str) -> list[dict]:
    items = get(k, "volumeattachments")["items"]
    return [va for va in items if va["spec"]["source"].get("persistentVolumeName") == pv]


def attached_on_node(k, node) -> list[str]:
    status = get(k, "node", node.node_name)["status"]
    return [v["name"] for v in status.get("volumesAttached") or []]


def test_a_claim_is_provisioned_attached_mounted_detached_and_deleted_through_the_driver(node, driver, k):
    state = driver
    apply(k, *objects(node.image))

    claim = wait_for(
        lambda: (c := get(k, "pvc", "data")) and c["status"].get("phase") == "Bound" and c, "the claim bound", TIMEOUT
    )
    pv_name = f"pvc-{claim['metadata']['uid']}"
    assert claim["spec"]["volumeName"] == pv_name
    pv = get(k, "pv", pv_name)
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == DRIVER
    assert "external-provisioner.volume.kubernetes.io/finalizer" in pv["metadata"]["finalizers"]
    csi = pv["spec"]["csi"]
    assert csi["driver"] == DRIVER
    handle = csi["volumeHandle"]
    assert pv["spec"]["capacity"]["storage"] == "16Mi"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert pv["spec"]["storageClassName"] == CLASS
    assert (pv["spec"]["claimRef"]["name"], pv["spec"]["claimRef"]["uid"]) == ("data", claim["metadata"]["uid"])
    # The driver's volumes are reachable from the node they were made for.
    term = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert (term["operator"], term["values"]) == ("In", [node.node_name])
    assert (state / "volumes" / handle).is_dir()
    assert wait_for(lambda: events_of(k, "data", "ProvisioningSucceeded"), "a ProvisioningSucceeded event") == [
        f"Successfully provisioned volume {pv_name}"
    ]

    # Attached to the pod's node by the attach/detach controller and the attacher.
    va = wait_for(
        lambda: (v := attachments(k, pv_name)) and v[0].get("status", {}).get("attached") and v[0],
        "the volume attached",
        TIMEOUT,
    )
    assert (va["spec"]["attacher"], va["spec"]["nodeName"]) == (DRIVER, node.node_name)
    assert va["metadata"]["name"].startswith("csi-") and len(va["metadata"]["name"]) == 4 + 64
    assert va["metadata"]["finalizers"] == ["external-attacher/hostpath-csi-tugboat-dev"]
    assert va["metadata"]["annotations"]["csi.alpha.kubernetes.io/node-id"] == node.node_name
    assert va["status"]["attachmentMetadata"] == {"hostpath.csi.tugboat.dev/node": node.node_name}
    unique_name = f"kubernetes.io/csi/{DRIVER}^{handle}"
    wait_for(lambda: unique_name in attached_on_node(k, node), "the volume in the node's volumesAttached", TIMEOUT)
    meta = json.loads((state / "meta" / f"{handle}.json").read_text())
    assert meta["published_nodes"] == [node.node_name]
    assert "external-attacher/hostpath-csi-tugboat-dev" in get(k, "pv", pv_name)["metadata"]["finalizers"]

    # Mounted into the pod: what it writes lands in the driver's volume.
    wait_for(
        lambda: (get(k, "pod", "writer") or {}).get("status", {}).get("phase") == "Running", "the pod running", TIMEOUT
    )
    written = state / "volumes" / handle / "hello"
    wait_for(lambda: written.exists() and written.read_text().strip(), "the pod's file in the driver's volume")
    assert written.read_text().strip() == "written by the pod"
    assert wait_for(lambda: events_of(k, "writer", "SuccessfulAttachVolume"), "a SuccessfulAttachVolume event") == [
        f'AttachVolume.Attach succeeded for volume "{pv_name}" '
    ]

    # The pod gone, the volume is unmounted and then detached.
    k("delete", "pod", "writer", "--wait=false")
    wait_for(lambda: not attachments(k, pv_name), "the VolumeAttachment deleted", TIMEOUT)
    assert unique_name not in attached_on_node(k, node)
    meta = json.loads((state / "meta" / f"{handle}.json").read_text())
    assert meta["published_nodes"] == []
    assert written.read_text().strip() == "written by the pod", "detaching keeps the data"

    # The claim gone, the volume's storage and object go (reclaim policy Delete).
    k("delete", "pvc", "data", "--wait=false")
    wait_for(lambda: get(k, "pv", pv_name) is None, "the PersistentVolume deleted", TIMEOUT)
    assert not (state / "volumes" / handle).exists()
    assert not (state / "meta" / f"{handle}.json").exists()


def test_a_claim_waits_for_its_provisioner_secret_and_the_driver_gets_it(node, driver, k):
    secret_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "csi-hostpath-secret"},
        "provisioner": DRIVER,
        "reclaimPolicy": "Delete",
        "parameters": {
            "csi.storage.k8s.io/provisioner-secret-name": "${pvc.name}-credentials",
            "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
        },
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "guarded", "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "csi-hostpath-secret",
            "resources": {"requests": {"storage": "1Mi"}},
        },
    }
    apply(k, objects(node.image)[0], secret_class, claim)
    message = wait_for(lambda: events_of(k, "guarded", "ProvisioningFailed"), "a ProvisioningFailed event", TIMEOUT)[0]
    assert message == (
        'failed to provision volume with StorageClass "csi-hostpath-secret": '
        'error getting secret guarded-credentials in namespace default: secrets "guarded-credentials" not found'
    )
    assert get(k, "pvc", "guarded")["status"]["phase"] == "Pending"

    k("create", "secret", "generic", "guarded-credentials", "--from-literal=token=t0ken")
    bound = wait_for(
        lambda: (c := get(k, "pvc", "guarded")) and c["status"].get("phase") == "Bound" and c,
        "the claim bound once the secret exists",
        TIMEOUT,
    )
    pv = get(k, "pv", bound["spec"]["volumeName"])
    annotations = pv["metadata"]["annotations"]
    assert annotations["volume.kubernetes.io/provisioner-deletion-secret-name"] == "guarded-credentials"
    assert annotations["volume.kubernetes.io/provisioner-deletion-secret-namespace"] == "default"
    k("delete", "pvc", "guarded", "--wait=false")
    wait_for(lambda: get(k, "pv", pv["metadata"]["name"]) is None, "the PersistentVolume deleted", TIMEOUT)
    assert not (driver / "volumes" / pv["spec"]["csi"]["volumeHandle"]).exists()
