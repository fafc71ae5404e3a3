"""The StatefulSet controller on simulated nodes (which play the kubelet: pods become Running
and Ready), driven with kubectl and the official Python client: pods `<set>-<ordinal>` with a
stable hostname under the governing service, created one by one in ordinal order and removed
in reverse order, each with its own PersistentVolumeClaims that outlive it; Parallel pod
management; rolling updates through ControllerRevisions with a partition; and
`kubectl rollout status/history/undo` against a StatefulSet."""

import json
import threading

import pytest
from kubernetes import client, watch

from support import unique_name, wait_for

TIMEOUT = 60


class Namespace:
    """One namespace of the module's sim cluster, read with the Python client."""

    def __init__(self, cluster, name: str):
        self.cluster = cluster
        self.name = name
        self.core = client.CoreV1Api(cluster.client)
        self.apps = client.AppsV1Api(cluster.client)

    def kubectl(self, *args, version="1.36", **kwargs):
        return self.cluster.kubectl("-n", self.name, *args, version=version, **kwargs)

    def apply(self, manifest: dict):
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def sts(self, name: str):
        return self.apps.read_namespaced_stateful_set(name, self.name)

    def pods(self) -> dict:
        return {p.metadata.name: p for p in self.core.list_namespaced_pod(self.name).items}

    def claims(self) -> dict:
        return {c.metadata.name: c for c in self.core.list_namespaced_persistent_volume_claim(self.name).items}

    def events(self, reason: str) -> list[str]:
        return [e.message for e in self.core.list_namespaced_event(self.name).items if e.reason == reason]

    def wait_ready(self, name: str, replicas: int):
        def done():
            s = self.sts(name)
            st = s.status
            ok = (
                st is not None
                and st.observed_generation == s.metadata.generation
                and st.replicas == replicas
                and (st.ready_replicas or 0) == replicas
                and st.current_revision == st.update_revision
            )
            return s if ok else None

        return wait_for(done, f"statefulset {name} with {replicas} ready replicas", TIMEOUT, interval=0.3)


@pytest.fixture
def ns(sim_cluster, request):
    name = unique_name(f"sts-{request.node.name}")
    resp = sim_cluster.server.request(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    assert resp.status == 201, resp
    yield Namespace(sim_cluster, name)
    sim_cluster.server.request("DELETE", f"/api/v1/namespaces/{name}")


def statefulset(name: str, replicas: int, image: str = "registry.local/web:1", **spec) -> dict:
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": f"{name}-svc",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
            **spec,
        },
    }
    return body


def claim_template(name: str = "data") -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


class PodWatch:
    """Records the pod events of a namespace in order, from a background watch."""

    def __init__(self, ns: Namespace):
        self.events: list[tuple[str, str, bool, bool]] = []  # (type, name, ready, deleting)
        self._watch = watch.Watch()
        self._lock = threading.Lock()
        rv = ns.core.list_namespaced_pod(ns.name).metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(ns, rv), daemon=True)
        self._thread.start()

    def _run(self, ns, rv):
        try:
            stream = self._watch.stream(ns.core.list_namespaced_pod, ns.name, resource_version=rv, timeout_seconds=120)
            for ev in stream:
                p = ev["object"]
                ready = any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
                with self._lock:
                    self.events.append((ev["type"], p.metadata.name, ready, p.metadata.deletion_timestamp is not None))
        except Exception:  # noqa: BLE001 - the stream ends with the test; what was seen is kept
            pass

    def snapshot(self) -> list:
        with self._lock:
            return list(self.events)

    def stop(self):
        self._watch.stop()

    def first(self, pred) -> int:
        """The index of the first event matching `pred`, or a large number."""
        for i, e in enumerate(self.snapshot()):
            if pred(e):
                return i
        return 1 << 30


def test_ordered_ready_creates_in_order_scales_down_in_reverse_and_keeps_claims(ns):
    w = PodWatch(ns)
    try:
        ns.apply(statefulset("web", 3, volumeClaimTemplates=[claim_template()]))
        ns.wait_ready("web", 3)

        # Creation 0, 1, 2: each pod appears only after the one before it was reported Ready.
        for prev, nxt in (("web-0", "web-1"), ("web-1", "web-2")):
            ready = w.first(lambda e, n=prev: e[1] == n and e[2])
            added = w.first(lambda e, n=nxt: e[0] == "ADDED" and e[1] == n)
            assert ready < added < (1 << 30), f"{nxt} created before {prev} was ready: {w.snapshot()}"

        pods = ns.pods()
        claims = ns.claims()
        assert sorted(pods) == ["web-0", "web-1", "web-2"]
        for i in range(3):
            p = pods[f"web-{i}"]
            assert p.spec.hostname == f"web-{i}"
            assert p.spec.subdomain == "web-svc"
            assert p.metadata.labels["statefulset.kubernetes.io/pod-name"] == f"web-{i}"
            assert p.metadata.labels["apps.kubernetes.io/pod-index"] == str(i)
            assert p.metadata.labels["controller-revision-hash"] == ns.sts("web").status.update_revision
            vols = {v.name: v for v in p.spec.volumes}
            assert vols["data"].persistent_volume_claim.claim_name == f"data-web-{i}"
            assert f"data-web-{i}" in claims
        wanted = {
            "create Pod web-0 in StatefulSet web successful",
            "create Claim data-web-0 Pod web-0 in StatefulSet web success",
        }
        wait_for(lambda: wanted <= set(ns.events("SuccessfulCreate")), f"events {wanted}", TIMEOUT)
        uids = {n: c.metadata.uid for n, c in claims.items()}

        # Scale-down 2, 1, 0: each deletion starts only once the pod above it is gone.
        ns.kubectl("scale", "statefulset/web", "--replicas=0")
        wait_for(lambda: not ns.pods(), "all pods gone", TIMEOUT, interval=0.3)
        for gone, nxt in (("web-2", "web-1"), ("web-1", "web-0")):
            deleted = w.first(lambda e, n=gone: e[0] == "DELETED" and e[1] == n)
            started = w.first(lambda e, n=nxt: e[1] == n and (e[3] or e[0] == "DELETED"))
            assert deleted < started < (1 << 30), f"{nxt} deleted before {gone} was gone: {w.snapshot()}"
        wait_for(lambda: ns.sts("web").status.replicas == 0, "status of 0 replicas", TIMEOUT)
        msg = "delete Pod web-2 in StatefulSet web successful"
        wait_for(lambda: msg in ns.events("SuccessfulDelete"), msg, TIMEOUT)

        # The claims outlive their pods and are reused on scale-up.
        assert {n: c.metadata.uid for n, c in ns.claims().items()} == uids
        ns.kubectl("scale", "statefulset/web", "--replicas=2")
        ns.wait_ready("web", 2)
        assert {n: c.metadata.uid for n, c in ns.claims().items()} == uids
        pods = ns.pods()
        assert sorted(pods) == ["web-0", "web-1"]
        vols = {v.name: v for v in pods["web-1"].spec.volumes}
        assert vols["data"].persistent_volume_claim.claim_name == "data-web-1"
    finally:
        w.stop()


def test_parallel_creates_all_pods_without_waiting_for_readiness(ns):
    body = statefulset("par", 3, podManagementPolicy="Parallel")
    # The pods run but never become ready: OrderedReady would stop at par-0.
    body["spec"]["template"]["metadata"]["annotations"] = {"sim.tugboat.dev/ready": "false"}
    ns.apply(body)
    wait_for(lambda: sorted(ns.pods()) == ["par-0", "par-1", "par-2"], "3 pods at once", TIMEOUT)
    s = wait_for(lambda: (s := ns.sts("par")).status and s.status.replicas == 3 and s, "status of 3 replicas", TIMEOUT)
    assert (s.status.ready_replicas or 0) == 0


def test_ordered_ready_waits_for_an_unready_pod(ns):
    body = statefulset("slow", 3)
    body["spec"]["template"]["metadata"]["annotations"] = {"sim.tugboat.dev/ready": "false"}
    ns.apply(body)
    wait_for(lambda: (p := ns.pods().get("slow-0")) and p.status.phase == "Running" and p, "slow-0 running", TIMEOUT)
    # The controller re-syncs on every pod change; give it a few of them, then look.
    s = wait_for(lambda: (s := ns.sts("slow")).status and s.status.replicas == 1 and s, "status of 1 replica", TIMEOUT)
    assert sorted(ns.pods()) == ["slow-0"], "slow-1 must wait for slow-0 to be ready"
    assert (s.status.ready_replicas or 0) == 0


@pytest.mark.parametrize("version", ["1.36", "1.27"])
def test_rolling_update_with_partition_and_kubectl_rollout(ns, version):
    ns.apply(statefulset("db", 3))
    ns.wait_ready("db", 3)
    out = ns.kubectl("rollout", "status", "statefulset/db", "--timeout=60s", version=version).stdout
    assert "roll out complete" in out or "rolling update complete" in out, out
    rev1 = ns.sts("db").status.current_revision

    # Partition 2: only db-2 moves to the new revision.
    ns.kubectl("patch", "statefulset/db", "-p", json.dumps({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}}}}))
    ns.kubectl("set", "image", "statefulset/db", "web=registry.local/web:2", version=version)

    def partitioned():
        s = ns.sts("db")
        pods = ns.pods()
        images = {n: p.spec.containers[0].image for n, p in pods.items() if p.metadata.deletion_timestamp is None}
        ready = s.status.ready_replicas == 3 and s.status.updated_replicas == 1
        want = {"db-0": "registry.local/web:1", "db-1": "registry.local/web:1", "db-2": "registry.local/web:2"}
        return s if ready and images == want else None

    s = wait_for(partitioned, "db-2 updated, db-0 and db-1 kept", TIMEOUT, interval=0.3)
    rev2 = s.status.update_revision
    assert rev2 != rev1 and s.status.current_revision == rev1
    assert ns.pods()["db-2"].metadata.labels["controller-revision-hash"] == rev2
    out = ns.kubectl("rollout", "status", "statefulset/db", "--timeout=60s", version=version).stdout
    assert "partitioned roll out complete: 1 new pods have been updated" in out, out

    # Partition 0: the rest follows, highest ordinal first, and the update becomes current.
    ns.kubectl("patch", "statefulset/db", "-p", json.dumps({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}))
    ns.kubectl("rollout", "status", "statefulset/db", "--timeout=60s", version=version)
    s = ns.wait_ready("db", 3)
    assert s.status.current_revision == rev2 and s.status.updated_replicas == 3
    assert {p.spec.containers[0].image for p in ns.pods().values()} == {"registry.local/web:2"}

    revisions = ns.apps.list_namespaced_controller_revision(ns.name).items
    assert sorted(r.revision for r in revisions) == [1, 2]
    history = ns.kubectl("rollout", "history", "statefulset/db", version=version).stdout
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "2"], history
    detail = ns.kubectl("rollout", "history", "statefulset/db", "--revision=1", version=version).stdout
    assert "registry.local/web:1" in detail, detail

    # Undo goes back to revision 1's template, which becomes revision 3.
    ns.kubectl("rollout", "undo", "statefulset/db", version=version)
    wait_for(
        lambda: ns.sts("db").spec.template.spec.containers[0].image == "registry.local/web:1",
        "the template of revision 1",
        TIMEOUT,
    )
    ns.kubectl("rollout", "status", "statefulset/db", "--timeout=60s", version=version)
    s = ns.wait_ready("db", 3)
    assert s.status.current_revision == rev1
    assert {p.spec.containers[0].image for p in ns.pods().values()} == {"registry.local/web:1"}
    revisions = {r.metadata.name: r.revision for r in ns.apps.list_namespaced_controller_revision(ns.name).items}
    assert revisions == {rev1: 3, rev2: 2}


def test_rollout_restart_and_on_delete(ns):
    body = statefulset("od", 2, updateStrategy={"type": "OnDelete"})
    ns.apply(body)
    ns.wait_ready("od", 2)
    old = {n: p.metadata.uid for n, p in ns.pods().items()}
    ns.kubectl("set", "image", "statefulset/od", "web=registry.local/web:2")
    s = wait_for(
        lambda: (s := ns.sts("od")).status.update_revision != s.status.current_revision and s,
        "a new update revision",
        TIMEOUT,
    )
    # OnDelete: nothing is replaced until a pod is deleted by hand.
    assert {n: p.metadata.uid for n, p in ns.pods().items()} == old
    assert s.status.updated_replicas in (0, None)
    ns.kubectl("delete", "pod", "od-1")
    wait_for(
        lambda: (p := ns.pods().get("od-1")) and p.metadata.uid != old["od-1"] and p.spec.containers[0].image.endswith(":2"),
        "od-1 recreated at the new revision",
        TIMEOUT,
    )
    assert ns.pods()["od-0"].metadata.uid == old["od-0"]

    # rollout restart on a RollingUpdate set replaces every pod.
    ns.apply(statefulset("rr", 2))
    ns.wait_ready("rr", 2)
    before = {n: p.metadata.uid for n, p in ns.pods().items() if n.startswith("rr-")}
    ns.kubectl("rollout", "restart", "statefulset/rr")
    ns.kubectl("rollout", "status", "statefulset/rr", "--timeout=60s")
    after = {n: p.metadata.uid for n, p in ns.pods().items() if n.startswith("rr-")}
    assert sorted(after) == ["rr-0", "rr-1"] and all(after[n] != before[n] for n in after)


def test_start_ordinal_retention_policy_and_failed_pod_recreation(ns):
    body = statefulset(
        "ret",
        2,
        ordinals={"start": 5},
        volumeClaimTemplates=[claim_template("www")],
        persistentVolumeClaimRetentionPolicy={"whenScaled": "Delete", "whenDeleted": "Retain"},
    )
    ns.apply(body)
    ns.wait_ready("ret", 2)
    assert sorted(ns.pods()) == ["ret-5", "ret-6"]
    assert sorted(ns.claims()) == ["www-ret-5", "www-ret-6"]

    # whenScaled: Delete hands the claim of a scaled-away pod to that pod, so it goes with it.
    ns.kubectl("scale", "statefulset/ret", "--replicas=1")
    wait_for(lambda: sorted(ns.pods()) == ["ret-5"], "ret-6 gone", TIMEOUT)
    wait_for(lambda: sorted(ns.claims()) == ["www-ret-5"], "www-ret-6 deleted with its pod", TIMEOUT)

    # A failed pod is deleted and made again under the same name, with the same claim.
    old = ns.pods()["ret-5"].metadata.uid
    claim_uid = ns.claims()["www-ret-5"].metadata.uid
    patch = {"status": {"phase": "Failed"}}
    path = f"/api/v1/namespaces/{ns.name}/pods/ret-5/status"
    ns.cluster.server.request("PATCH", path, json.dumps(patch), content_type="application/merge-patch+json")
    wait_for(
        lambda: (p := ns.pods().get("ret-5")) and p.metadata.uid != old and p.status.phase == "Running",
        "ret-5 recreated",
        TIMEOUT,
    )
    assert ns.claims()["www-ret-5"].metadata.uid == claim_uid
    msg = f"StatefulSet {ns.name}/ret is recreating failed Pod ret-5"
    wait_for(lambda: msg in ns.events("RecreatingFailedPod"), msg, TIMEOUT)
