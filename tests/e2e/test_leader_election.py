"""Leader election: copies of `tug controller-manager` against one server share the
`kube-system/kube-controller-manager` Lease; only its holder runs controllers, and another takes
over when the holder dies (or releases the lease when it stops gracefully)."""

from __future__ import annotations

import os
import re
import signal
import subprocess

from support import unique_name, wait_for

LEASE = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{}"
# Short timings keep the test quick; the defaults are 10s/7s/2s (upstream's 15s/10s/2s).
TIMINGS = (
    "--leader-elect-lease-duration", "4s",
    "--leader-elect-renew-deadline", "3s",
    "--leader-elect-retry-period", "1s",
)  # fmt: skip


class ControllerManager:
    def __init__(self, binary: str, server, log_path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [binary, "controller-manager", "--kubeconfig", str(server.kubeconfig), *TIMINGS],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=15)

    def close(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
        self._log.close()


def lease_spec(server, name: str) -> dict:
    resp = server.request("GET", LEASE.format(name))
    return resp.json()["spec"] if resp.status == 200 else {}


def replicaset(name: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        },
    }


def pods_of(server, ns: str, app: str) -> list:
    return server.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3D{app}").json()["items"]


def test_server_components_hold_their_leases(start_server):
    server = start_server()
    for name in ("kube-controller-manager", "kube-scheduler"):
        spec = wait_for(lambda: lease_spec(server, name).get("holderIdentity") and lease_spec(server, name), f"{name} lease held")
        assert re.fullmatch(r".+_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", spec["holderIdentity"]), spec
        # Tugboat's default (upstream's is 15 s): a standby takes over within 15 s.
        assert spec["leaseDurationSeconds"] == 10, spec


def test_only_the_lease_holder_acts_and_another_takes_over_when_it_dies(start_server, tmp_path):
    server = start_server("--disable-controller-manager")
    binary = str(server.binary)
    ns = unique_name("le")
    server.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    first = ControllerManager(binary, server, tmp_path / "cm1.log")
    second = None
    try:
        holder = wait_for(lambda: lease_spec(server, "kube-controller-manager").get("holderIdentity"), "a leader")
        second = ControllerManager(binary, server, tmp_path / "cm2.log")
        wait_for(lambda: "attempting to acquire leader lease" in second.log(), "the second candidate running")
        # The leader works: a ReplicaSet gets its pod.
        server.create(f"/apis/apps/v1/namespaces/{ns}/replicasets", replicaset("one"))
        wait_for(lambda: pods_of(server, ns, "one"), "the leader creating the first ReplicaSet's pod")
        spec = lease_spec(server, "kube-controller-manager")
        assert spec["holderIdentity"] == holder, spec
        assert "started leading" in first.log()
        assert "started leading" not in second.log(), second.log()
        transitions = spec.get("leaseTransitions", 0)

        first.signal(signal.SIGKILL)
        new = wait_for(
            lambda: (h := lease_spec(server, "kube-controller-manager").get("holderIdentity")) not in (None, holder) and h,
            "the second candidate taking the lease over",
            timeout=20,
        )
        assert lease_spec(server, "kube-controller-manager")["leaseTransitions"] == transitions + 1
        wait_for(lambda: "started leading" in second.log(), "the second candidate leading")
        server.create(f"/apis/apps/v1/namespaces/{ns}/replicasets", replicaset("two"))
        wait_for(lambda: pods_of(server, ns, "two"), "the new leader creating the second ReplicaSet's pod")

        # A graceful stop gives the lease up at once.
        second.signal(signal.SIGTERM)
        assert second.process.returncode == 0, second.log()
        assert not lease_spec(server, "kube-controller-manager").get("holderIdentity"), new
    finally:
        first.close()
        if second:
            second.close()


def test_leader_that_cannot_renew_stops_and_exits_non_zero(start_server, tmp_path):
    server = start_server("--disable-controller-manager")
    leader = ControllerManager(str(server.binary), server, tmp_path / "cm.log")
    try:
        wait_for(lambda: "started leading" in leader.log(), "the controller manager leading")
        server.stop()  # renewals now fail; after the 3 s renew deadline leading must end
        wait_for(lambda: leader.process.poll() is not None, "the controller manager exiting", timeout=20)
        assert leader.process.returncode != 0, leader.log()
        assert "leader election lost" in leader.log(), leader.log()
    finally:
        leader.close()
