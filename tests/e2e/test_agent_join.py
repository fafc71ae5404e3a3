"""`tug agent` joining a cluster: with the server's node token the agent gets its client and
serving certificates through the certificates.k8s.io API (kubelet TLS bootstrapping, approved and
signed by the server's controllers), registers its Node, runs pods bound to it and serves their
logs to the API server over TLS. A restart reuses its certificates; a wrong token is refused.

Needs root (the agent runs containers); under CI=true a missing privilege fails.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry import plain_registry, test_images, tug_binary  # noqa: F401  (fixtures used by name)
from support import TOOLS_BIN, Kubectl, TugServer, cleanup_agent_leftovers, free_port, parse_table, require
from support import unique_name, wait_for

TOKEN = "join-e2e-secret"


@dataclass
class Agent:
    """A `tug agent` process joined to `server`."""

    binary: Path
    server: TugServer
    token: str
    data_dir: Path
    node_name: str
    kubelet_port: int
    log_path: Path
    process: subprocess.Popen | None = None

    def command(self, token: str | None = None) -> list[str]:
        return [
            str(self.binary), "agent",
            "--server", self.server.url,
            "--token", token if token is not None else self.token,
            "--data-dir", str(self.data_dir),
            "--node-name", self.node_name,
            "--node-ip", "127.0.0.1",
            "--kubelet-port", str(self.kubelet_port),
            "--eviction-hard", "nodefs.available<1%,imagefs.available<1%",
        ]  # fmt: skip

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


def node_ready(server: TugServer, name: str):
    resp = server.request("GET", f"/api/v1/nodes/{name}")
    if resp.status != 200:
        return None
    ready = [c for c in resp.json().get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    return ready and ready[0]["status"] == "True"


def csrs(server: TugServer) -> list[dict]:
    resp = server.request("GET", "/apis/certificates.k8s.io/v1/certificatesigningrequests")
    assert resp.status == 200, resp
    return resp.json()["items"]


@pytest.fixture(scope="module")
def joined(tmp_path_factory, plain_registry):  # noqa: F811
    """A control-plane-only server started with --token, and a `tug agent` joined to it."""
    require(os.geteuid() == 0, "the node agent runs containers: needs root")
    binary = tug_binary()
    workdir = tmp_path_factory.mktemp("join")
    server = TugServer.start(binary, workdir / "server", ["--token", TOKEN])
    agent_dir = workdir / "agent"
    agent = None
    try:
        node_token = (server.data_dir / "node-token").read_text().strip()
        assert node_token.startswith("K10") and node_token.endswith(f"::{TOKEN}"), node_token
        assert (server.data_dir / "node-token").stat().st_mode & 0o777 == 0o600
        agent = Agent(
            binary, server, node_token, agent_dir, unique_name("join"), free_port(), workdir / "agent.log"
        )  # fmt: skip
        agent.image = f"{plain_registry.address}/tugboat.test/busybox:1"
        agent.start()
        wait_for(
            lambda: node_ready(server, agent.node_name) or (agent.process.poll() is not None and agent.log()),
            "the joined node to register Ready",
            timeout=60,
        )
        assert agent.process.poll() is None, f"tug agent exited {agent.process.returncode}:\n{agent.log()}"
        yield agent
    finally:
        try:
            if not server.crashed():
                server.request("DELETE", "/api/v1/namespaces/default/pods?gracePeriodSeconds=0")
                if agent is not None and agent.process is not None and agent.process.poll() is None:
                    wait_for(
                        lambda: not server.request("GET", "/api/v1/namespaces/default/pods").json()["items"],
                        "the pods to be gone",
                        timeout=20,
                    )
        finally:
            if agent is not None:
                agent.stop()
            server.stop()
            cleanup_agent_leftovers(agent_dir)


@pytest.fixture
def k(joined) -> Kubectl:
    binary = TOOLS_BIN / "kubectl-1.36"
    require(binary.exists(), f"{binary} missing: run scripts/install-test-deps.sh")
    return Kubectl.for_version("1.36", binary, joined.server)


def test_joined_node_got_client_and_serving_certificates_approved_and_issued(joined, k):
    rows = parse_table(k("get", "csr").stdout)
    assert len(rows) == 2, rows
    assert all(r["CONDITION"] == "Approved,Issued" for r in rows), rows
    by_signer = {r["SIGNERNAME"]: r for r in rows}
    user = f"system:node:{joined.node_name}"
    assert by_signer["kubernetes.io/kube-apiserver-client-kubelet"]["REQUESTOR"] == "node-bootstrap"
    assert by_signer["kubernetes.io/kubelet-serving"]["REQUESTOR"] == user
    for csr in csrs(joined.server):
        approved = [c for c in csr["status"]["conditions"] if c["type"] == "Approved"]
        assert approved and approved[0]["status"] == "True" and approved[0]["reason"] == "AutoApproved", csr
        assert csr["metadata"]["name"].startswith("node-csr-")
        assert csr["status"]["certificate"]
    pki = joined.data_dir / "agent" / "pki"
    assert (pki / "kubelet-client.key").stat().st_mode & 0o777 == 0o600
    kubeconfig = (joined.data_dir / "agent" / "kubelet.kubeconfig").read_text()
    assert joined.server.url in kubeconfig


def test_pod_bound_to_the_joined_node_runs_and_its_logs_come_through_the_api_server(joined, k):
    name = unique_name("joined-pod")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": joined.node_name,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": joined.image, "command": ["sh", "-c", "echo hello from $(hostname)"]}],
        },
    }
    joined.server.create("/api/v1/namespaces/default/pods", pod)

    def phase():
        p = joined.server.request("GET", f"/api/v1/namespaces/default/pods/{name}").json()
        return p.get("status", {}).get("phase") in ("Succeeded", "Failed") and p

    done = wait_for(phase, "the pod on the joined node to finish", timeout=40)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["hostIP"] == "127.0.0.1"
    assert k("logs", name).stdout == f"hello from {name}\n"


def test_restarted_agent_reuses_its_certificates(joined):
    before = sorted(c["metadata"]["name"] for c in csrs(joined.server))
    joined.stop()
    log_size = joined.log_path.stat().st_size
    joined.start()
    wait_for(
        lambda: "joined the cluster" in joined.log_path.read_text(errors="replace")[log_size:]
        or (joined.process.poll() is not None and joined.log()),
        "the restarted agent to rejoin",
        timeout=30,
    )
    assert joined.process.poll() is None, joined.log()
    assert "reusing the node's client certificate" in joined.log_path.read_text(errors="replace")[log_size:]
    assert sorted(c["metadata"]["name"] for c in csrs(joined.server)) == before
    wait_for(lambda: node_ready(joined.server, joined.node_name), "the node to stay Ready", timeout=20)


def test_wrong_token_is_refused_with_a_clear_error(joined, tmp_path):
    digest = joined.token.removeprefix("K10").split("::")[0]
    other = Agent(joined.binary, joined.server, f"K10{digest}::not-the-token", tmp_path / "d",
                  unique_name("intruder"), free_port(), tmp_path / "log")  # fmt: skip
    result = subprocess.run(other.command(), capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "refused the token" in result.stderr, result.stderr
    # A plain secret cannot be checked against the CA: refused unless --ca-cert is given.
    result = subprocess.run(other.command(token=TOKEN), capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "--ca-cert" in result.stderr, result.stderr
    # A token for another CA is refused before anything is requested.
    result = subprocess.run(other.command(token=f"K10{'0' * 64}::{TOKEN}"), capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "does not match the token's CA hash" in result.stderr, result.stderr
    assert len(csrs(joined.server)) == 2
    assert not (tmp_path / "d" / "agent" / "pki" / "kubelet-client.crt").exists()


def test_csr_approved_with_kubectl_is_signed_and_a_denied_one_is_not(joined, k, tmp_path):
    def create_csr(user: str) -> str:
        key, csr = tmp_path / f"{user}.key", tmp_path / f"{user}.csr"
        subprocess.run(
            ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={user}/O=devs"],
            check=True, capture_output=True,
        )  # fmt: skip
        name = unique_name(f"csr-{user}")
        manifest = {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {
                "request": base64.b64encode(csr.read_bytes()).decode(),
                "signerName": "kubernetes.io/kube-apiserver-client",
                "usages": ["digital signature", "client auth"],
                "expirationSeconds": 3600,
                # The server records the real requester, whatever the body says.
                "username": "system:node:someone-else",
            },
        }
        joined.server.create("/apis/certificates.k8s.io/v1/certificatesigningrequests", manifest)
        return name

    jane, mallory = create_csr("jane"), create_csr("mallory")
    # Nobody approves a plain client certificate on their own.
    assert parse_table(k("get", "csr", jane).stdout)[0]["CONDITION"] == "Pending"
    assert parse_table(k("get", "csr", jane).stdout)[0]["REQUESTOR"] == "system:admin"
    k("certificate", "approve", jane)
    k("certificate", "deny", mallory)

    def issued(name):
        status = joined.server.request("GET", f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}").json()
        return status.get("status", {}).get("certificate")

    cert = base64.b64decode(wait_for(lambda: issued(jane), "jane's certificate to be issued", timeout=15))
    ca = tmp_path / "ca.crt"
    ca.write_bytes(joined.server.creds.ca_file.read_bytes())
    (tmp_path / "jane.crt").write_bytes(cert)
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(tmp_path / "jane.crt")],
                              capture_output=True, text=True)  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(tmp_path / "jane.crt")],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "CN = jane" in subject and "O = devs" in subject, subject
    assert parse_table(k("get", "csr", jane).stdout)[0]["CONDITION"] == "Approved,Issued"
    assert parse_table(k("get", "csr", mallory).stdout)[0]["CONDITION"] == "Denied"
    assert not issued(mallory)
    k("delete", "csr", jane, mallory)
