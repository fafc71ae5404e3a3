"""CSI on a real node: the project's hostpath CSI driver (`tug-csi-hostpath`, run as a plain
process that also plays node-driver-registrar) registers through the kubelet's plugin registry;
the node agent records it in the CSINode object and the Node's annotation and labels, mounts a
statically provisioned CSI PersistentVolume and an inline ephemeral CSI volume into pods through
the driver (NodeStage/NodePublish), unmounts them when the pods go, and drops the driver when it
stops.

Needs root (containers, mounts); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, agent_server, wait_for

TIMEOUT = 45
DRIVER = "hostpath.csi.tugboat.dev"
TOPOLOGY_KEY = "topology.hostpath.csi/node"


@pytest.fixture(scope="module")
def node(tmp_path_factory, plain_registry):  # noqa: F811
    image = f"{plain_registry.address}/tugboat.test/busybox:1"
    with agent_server(tug_binary(), tmp_path_factory.mktemp("csi-node"), image) as server:
        yield server


@pytest.fixture(scope="module")
def driver(node, tmp_path_factory):
    """The hostpath driver serving CSI on its own socket and registration in the kubelet's
    plugins_registry; yields (process, state dir). Stopped by the last test, or here."""
    binary = tug_binary().parent / "tug-csi-hostpath"
    assert binary.is_file(), f"no driver binary at {binary} (cargo build -p tug-csi)"
    workdir = tmp_path_factory.mktemp("csi-driver")
    state = workdir / "state"
    log = open(workdir / "driver.log", "wb")
    process = subprocess.Popen(
        [
            str(binary),
            "--endpoint", f"unix://{workdir}/csi.sock",
            "--node-id", node.node_name,
            "--state-dir", str(state),
            "--max-volumes-per-node", "10",
            "--registration-dir", str(node.data_dir / "agent" / "kubelet" / "plugins_registry"),
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield process, state, workdir / "driver.log"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def k(node) -> Kubectl:
    return Kubectl.for_version("1.36", TOOLS_BIN / "kubectl-1.36", node)


def get(k, *args) -> dict | None:
    r = k("get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def apply(k, *objects: dict) -> None:
    k("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def csidriver(attach_required: bool = False) -> dict:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": DRIVER},
        "spec": {
            "attachRequired": attach_required,
            "podInfoOnMount": True,
            "volumeLifecycleModes": ["Persistent", "Ephemeral"],
        },
    }


def pod(name: str, image: str, volume: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    # A file of its own: pods sharing a volume would otherwise write one file
                    # at once, and two truncating writes can interleave.
                    "command": ["sh", "-c", f"echo hello from {name} > /data/from-{name} && exec sleep 3600"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", **volume}],
        },
    }


def static_volume(state: Path, handle: str, name: str) -> list[dict]:
    """A statically provisioned volume (made in the driver's state as its CreateVolume would),
    its PersistentVolume and a claim bound to it, both called `name`."""
    (state / "volumes" / handle).mkdir(parents=True, exist_ok=True)
    (state / "meta" / f"{handle}.json").write_text(
        json.dumps({"id": handle, "name": name, "capacity_bytes": 1 << 20, "published_nodes": []})
    )
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Mi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "csi": {"driver": DRIVER, "volumeHandle": handle, "volumeAttributes": {"origin": "e2e"}},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": name,
            "resources": {"requests": {"storage": "1Mi"}},
        },
    }
    return [pv, pvc]


def replace_csidriver(k, attach_required: bool) -> None:
    # attachRequired is immutable: the object is replaced.
    k("delete", "csidriver", DRIVER, "--ignore-not-found")
    apply(k, csidriver(attach_required))


def mount_points() -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]


def running(k, name: str) -> dict | None:
    p = get(k, "pod", name)
    return p if p and p.get("status", {}).get("phase") == "Running" else None


def test_the_driver_registers_in_csinode_and_on_the_node(node, driver, k):
    def registered():
        csinode = get(k, "csinode", node.node_name)
        drivers = (csinode or {}).get("spec", {}).get("drivers") or []
        return csinode if any(d["name"] == DRIVER for d in drivers) else None

    csinode = wait_for(registered, "the driver in the CSINode object", TIMEOUT)
    entry = next(d for d in csinode["spec"]["drivers"] if d["name"] == DRIVER)
    assert entry["nodeID"] == node.node_name
    assert entry["topologyKeys"] == [TOPOLOGY_KEY]
    assert entry["allocatable"] == {"count": 10}
    owner = csinode["metadata"]["ownerReferences"][0]
    the_node = get(k, "node", node.node_name)
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", node.node_name, the_node["metadata"]["uid"])
    ids = json.loads(the_node["metadata"]["annotations"]["csi.volume.kubernetes.io/nodeid"])
    assert ids == {DRIVER: node.node_name}
    assert the_node["metadata"]["labels"][TOPOLOGY_KEY] == node.node_name


def test_a_csi_persistent_volume_is_staged_once_published_per_pod_and_unstaged_after_the_last(node, driver, k):
    _, state, _ = driver
    handle = "vol-static-1"
    apply(k, csidriver(), *static_volume(state, handle, "csi-static"))
    wait_for(lambda: (get(k, "pvc", "csi-static") or {}).get("status", {}).get("phase") == "Bound", "the claim bound")
    claim = {"persistentVolumeClaim": {"claimName": "csi-static"}}
    apply(k, pod("csi-user", node.image, claim), pod("csi-user-2", node.image, claim))
    uids = {}
    for name in ("csi-user", "csi-user-2"):
        p = wait_for(lambda: running(k, name), f"{name} running with the CSI volume", TIMEOUT)
        uids[name] = p["metadata"]["uid"]
    for name in ("csi-user", "csi-user-2"):
        written = state / "volumes" / handle / f"from-{name}"
        wait_for(lambda: written.exists() and written.read_text().strip(), f"{name}'s file in the driver's volume")
        assert written.read_text().strip() == f"hello from {name}"

    def target(name):
        pods = node.data_dir / "agent" / "kubelet" / "pods"
        return str(pods / uids[name] / "volumes" / "kubernetes.io~csi" / "csi-static" / "mount")

    staging = str(
        node.data_dir / "agent" / "kubelet" / "plugins" / "kubernetes.io" / "csi" / DRIVER
        / hashlib.sha256(handle.encode()).hexdigest() / "globalmount"
    )  # fmt: skip
    mounts = mount_points()
    assert target("csi-user") in mounts and target("csi-user-2") in mounts
    assert mounts.count(staging) == 1, "staged once for both pods"

    k("delete", "pod", "csi-user", "--wait=false")
    wait_for(lambda: get(k, "pod", "csi-user") is None, "the first pod gone", TIMEOUT)
    wait_for(lambda: target("csi-user") not in mount_points(), "the first pod's target unmounted", TIMEOUT)
    assert staging in mount_points(), "still staged for the second pod"
    assert target("csi-user-2") in mount_points()

    k("delete", "pod", "csi-user-2", "--wait=false")
    wait_for(lambda: get(k, "pod", "csi-user-2") is None, "the second pod gone", TIMEOUT)
    wait_for(lambda: target("csi-user-2") not in mount_points(), "the second pod's target unmounted", TIMEOUT)
    wait_for(lambda: staging not in mount_points(), "the volume unstaged", TIMEOUT)
    # The data stays with the volume.
    assert written.exists()


def test_an_attachable_csi_volume_waits_for_its_attachment_and_is_reported_in_use(node, driver, k):
    _, state, driver_log = driver
    handle = "vol-attach-1"
    replace_csidriver(k, attach_required=True)
    apply(k, *static_volume(state, handle, "csi-attach"))
    apply(k, pod("csi-attached", node.image, {"persistentVolumeClaim": {"claimName": "csi-attach"}}))
    unique_name = f"kubernetes.io/csi/{DRIVER}^{handle}"

    def in_use():
        return unique_name in (get(k, "node", node.node_name)["status"].get("volumesInUse") or [])

    wait_for(in_use, "the volume in the node's volumesInUse", TIMEOUT)
    # Nobody attaches the volume yet: the pod waits, with FailedMount events.
    events = wait_for(
        lambda: [e for e in get(k, "events")["items"] if e["involvedObject"]["name"] == "csi-attached"
                 and e["reason"] == "FailedMount"],
        "a FailedMount event while the volume is not attached", TIMEOUT,
    )  # fmt: skip
    assert events[0]["message"].startswith('MountVolume.SetUp failed for volume "data" : '), events[0]["message"]
    assert running(k, "csi-attached") is None

    # Play the attacher: the attach-detach controller made the VolumeAttachment; mark it attached.
    attachment = "csi-" + hashlib.sha256(f"{handle}{DRIVER}{node.node_name}".encode()).hexdigest()
    if get(k, "volumeattachment", attachment) is None:
        apply(k, {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "VolumeAttachment",
            "metadata": {"name": attachment},
            "spec": {"attacher": DRIVER, "nodeName": node.node_name, "source": {"persistentVolumeName": "csi-attach"}},
        })  # fmt: skip
    status = {"status": {"attached": True, "attachmentMetadata": {"devicePath": "/dev/e2e-fake"}}}
    k("patch", "volumeattachment", attachment, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    wait_for(lambda: running(k, "csi-attached"), "the pod running once the volume is attached", TIMEOUT)
    written = state / "volumes" / handle / "from-csi-attached"
    wait_for(lambda: written.exists(), "the pod's file in the attached volume")
    # The attachment's metadata reached the driver as publish_context.
    assert "/dev/e2e-fake" in driver_log.read_text()

    k("delete", "pod", "csi-attached", "--wait=false")
    wait_for(lambda: get(k, "pod", "csi-attached") is None, "the pod gone", TIMEOUT)
    wait_for(lambda: not in_use(), "the volume dropped from volumesInUse", TIMEOUT)
    replace_csidriver(k, attach_required=False)


def test_an_inline_ephemeral_csi_volume_lives_as_long_as_its_pod(node, driver, k):
    _, state, _ = driver
    apply(k, csidriver(), pod("csi-inline", node.image, {"csi": {"driver": DRIVER}}))
    p = wait_for(lambda: running(k, "csi-inline"), "the pod with the inline CSI volume running", TIMEOUT)
    uid = p["metadata"]["uid"]
    handle = "csi-" + hashlib.sha256(f"{uid}data".encode()).hexdigest()
    written = state / "ephemeral" / handle / "from-csi-inline"
    wait_for(lambda: written.exists() and written.read_text().strip(), "the pod's file in the ephemeral volume")
    assert written.read_text().strip() == "hello from csi-inline"
    target = node.data_dir / "agent" / "kubelet" / "pods" / uid / "volumes" / "kubernetes.io~csi" / "data" / "mount"
    assert str(target) in mount_points()

    k("delete", "pod", "csi-inline", "--wait=false")
    wait_for(lambda: get(k, "pod", "csi-inline") is None, "the pod gone", TIMEOUT)
    wait_for(lambda: str(target) not in mount_points(), "the inline volume unmounted", TIMEOUT)
    wait_for(lambda: not (state / "ephemeral" / handle).exists(), "the ephemeral volume removed", TIMEOUT)


def test_an_inline_volume_of_a_driver_without_ephemeral_mode_fails_to_mount(node, driver, k):
    persistent_only = csidriver()
    persistent_only["spec"]["volumeLifecycleModes"] = ["Persistent"]
    k("delete", "csidriver", DRIVER, "--ignore-not-found")
    apply(k, persistent_only, pod("csi-refused", node.image, {"csi": {"driver": DRIVER}}))

    def failed_mount():
        events = get(k, "events")["items"]
        mine = [e for e in events if e["involvedObject"]["name"] == "csi-refused"]
        messages = [e["message"] for e in mine if e["reason"] == "FailedMount"]
        return messages[0] if messages else None

    message = wait_for(failed_mount, "a FailedMount event", TIMEOUT)
    assert message == (
        f'MountVolume.SetUp failed for volume "data" : volume mode "Ephemeral" not supported by driver {DRIVER} '
        f'(only supports ["Persistent"])'
    )
    statuses = get(k, "pod", "csi-refused")["status"].get("containerStatuses") or []
    assert all(s["state"]["waiting"]["reason"] == "ContainerCreating" for s in statuses), statuses
    k("delete", "pod", "csi-refused", "--wait=false")
    apply(k, csidriver())


def test_a_stopped_driver_leaves_csinode_and_the_node(node, driver, k):
    process, _, _ = driver
    wait_for(lambda: get(k, "csinode", node.node_name), "the CSINode object", TIMEOUT)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)

    def gone():
        csinode = get(k, "csinode", node.node_name)
        drivers = (csinode or {}).get("spec", {}).get("drivers") or []
        return csinode is not None and not any(d["name"] == DRIVER for d in drivers)

    wait_for(gone, "the driver removed from the CSINode object", TIMEOUT)
    annotations = get(k, "node", node.node_name)["metadata"].get("annotations", {})
    assert DRIVER not in json.loads(annotations.get("csi.volume.kubernetes.io/nodeid", "{}"))
