"""The attach/detach controller, without a driver or a node agent: Node objects that leave
attaching to the controller, pods bound to them, and CSI PersistentVolumes of a driver nobody
runs. The test plays the external attacher (it marks VolumeAttachments attached) and the
kubelet (it reports volumes in use on the Node), and watches what the controller does: a
VolumeAttachment named as upstream's per volume and node, the Node's `volumesAttached`, the
Multi-Attach error for a ReadWriteOnce volume wanted on a second node, and the detach that waits
until the node no longer uses the volume.
"""

from __future__ import annotations

import hashlib
import json
import secrets

import pytest

from support import TOOLS_BIN, Kubectl, wait_for

DRIVER = "attach.e2e.tugboat.dev"
TIMEOUT = 30


@pytest.fixture
def k(tug) -> Kubectl:
    return Kubectl.for_version("1.36", TOOLS_BIN / "kubectl-1.36", tug)


def get(k, *args) -> dict | None:
    r = k("get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def apply(k, *objects: dict) -> None:
    k("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def attachment_name(handle: str, node: str) -> str:
    return "csi-" + hashlib.sha256(f"{handle}{DRIVER}{node}".encode()).hexdigest()


def node(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
    }


def volume_and_claim(name: str, namespace: str) -> list[dict]:
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Mi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"name": name, "namespace": namespace},
                "csi": {"driver": DRIVER, "volumeHandle": f"h-{name}"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": name,
                "resources": {"requests": {"storage": "1Mi"}},
            },
        },
    ]


def pod(name: str, namespace: str, node_name: str, claim: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "main", "image": "busybox"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def events_of(k, namespace: str, name: str, reason: str) -> list[str]:
    items = get(k, "events", "-n", namespace)["items"]
    return [e["message"] for e in items if e["involvedObject"]["name"] == name and e["reason"] == reason]


def attached_on(k, node_name: str) -> list[dict]:
    return get(k, "node", node_name).get("status", {}).get("volumesAttached") or []


def test_volumes_are_attached_per_node_once_and_detached_after_the_node_stops_using_them(tug, k, namespace):
    suffix = secrets.token_hex(3)
    node_a, node_b = f"ad-{suffix}-a", f"ad-{suffix}-b"
    pv1, pv2 = f"ad-{suffix}-1", f"ad-{suffix}-2"
    try:
        apply(k, node(node_a), node(node_b), *volume_and_claim(pv1, namespace), *volume_and_claim(pv2, namespace))
        for claim in (pv1, pv2):
            wait_for(
                lambda c=claim: get(k, "pvc", c, "-n", namespace)["status"].get("phase") == "Bound",
                f"claim {claim} bound",
            )

        # A pod on node A: the volume is attached there, under upstream's name.
        apply(k, pod("first", namespace, node_a, pv1))
        va_a = attachment_name(f"h-{pv1}", node_a)
        va = wait_for(lambda: get(k, "volumeattachment", va_a), "the VolumeAttachment for node A", TIMEOUT)
        assert va["spec"] == {"attacher": DRIVER, "nodeName": node_a, "source": {"persistentVolumeName": pv1}}
        assert attached_on(k, node_a) == [], "not reported before the attacher says attached"

        # The attacher's part: attached. The node reports it, the pod hears of it.
        attached = '{"status":{"attached":true}}'
        k("patch", "volumeattachment", va_a, "--subresource=status", "--type=merge", "-p", attached)
        unique = f"kubernetes.io/csi/{DRIVER}^h-{pv1}"
        reported = [{"name": unique, "devicePath": ""}]
        wait_for(lambda: attached_on(k, node_a) == reported, "the volume in node A's volumesAttached", TIMEOUT)
        assert wait_for(lambda: events_of(k, namespace, "first", "SuccessfulAttachVolume"), "an attach event") == [
            f'AttachVolume.Attach succeeded for volume "{pv1}" '
        ]

        # The kubelet's part: it mounts the volume and says so.
        k("patch", "node", node_a, "--subresource=status", "--type=merge", "-p",
          json.dumps({"status": {"volumesInUse": [unique]}}))  # fmt: skip

        # The same ReadWriteOnce volume wanted on node B: refused while attached to A.
        apply(k, pod("second", namespace, node_b, pv1))
        message = wait_for(lambda: events_of(k, namespace, "second", "FailedAttachVolume"), "a Multi-Attach error")
        assert message == [f'Multi-Attach error for volume "{pv1}" Volume is already used by pod(s) first']
        va_b = attachment_name(f"h-{pv1}", node_b)
        assert get(k, "volumeattachment", va_b) is None

        # Node A still has the volume mounted when its pod goes.
        k("delete", "pod", "first", "-n", namespace, "--grace-period=0", "--force")
        # A later change on node A (another volume attached there) shows the controller has
        # seen the pod go, and the mounted volume still attached.
        apply(k, pod("third", namespace, node_a, pv2))
        va_a2 = attachment_name(f"h-{pv2}", node_a)
        wait_for(lambda: get(k, "volumeattachment", va_a2), "the second volume's attachment", TIMEOUT)
        assert get(k, "volumeattachment", va_a) is not None, "detached while the node still uses the volume"
        assert get(k, "volumeattachment", va_b) is None

        # Unmounted: detached from A, and attached to B for the waiting pod.
        k("patch", "node", node_a, "--subresource=status", "--type=merge", "-p", '{"status":{"volumesInUse":null}}')
        wait_for(lambda: get(k, "volumeattachment", va_a) is None, "the volume detached from node A", TIMEOUT)
        assert unique not in [v["name"] for v in attached_on(k, node_a)]
        wait_for(lambda: get(k, "volumeattachment", va_b), "the volume attached to node B", TIMEOUT)
    finally:
        k("delete", "pod", "--all", "-n", namespace, "--grace-period=0", "--force", check=False)
        k("delete", "node", node_a, node_b, "--ignore-not-found", check=False)
        # With the nodes gone, their attachments are detached.
        for name in (attachment_name(f"h-{pv1}", node_b), attachment_name(f"h-{pv2}", node_a)):
            wait_for(lambda n=name: get(k, "volumeattachment", n) is None, f"attachment {name} gone", TIMEOUT)
        k("delete", "pv", pv1, pv2, "--ignore-not-found", "--wait=false", check=False)
