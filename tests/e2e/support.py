"""Shared machinery of the end-to-end suite: a `tug server` process, raw HTTPS
requests with the kubeconfig's credentials, and a kubectl runner.

The fixtures that use these live in conftest.py; tests import the helpers they
need from here (`from support import ...`).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Callable

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = Path(os.environ.get("TUG_TOOLS_BIN", REPO_ROOT / ".tools" / "bin"))
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
READY_TIMEOUT_SECONDS = 30

# The datastore every server of the suite runs on: sqlite (tug's default), etcd (a fresh
# single-member etcd per server, started here) or memory.
E2E_DATASTORE = os.environ.get("TUG_E2E_DATASTORE", "sqlite")
ETCD_BINARY = os.environ.get("TUG_ETCD_BIN", "etcd")


def require(condition: bool, reason: str) -> None:
    """Skips the test when a prerequisite is missing, or fails it under CI=true.

    CI must never pass by skipping: there a missing tool or binary is a failure.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure)", pytrace=False)
    pytest.skip(reason)


def unique_name(prefix: str) -> str:
    """A DNS-1123 label (at most 63 characters) from `prefix` plus a random suffix."""
    base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")
    base = re.sub(r"-+", "-", base)[:50].strip("-")
    return f"{base}-{secrets.token_hex(3)}"


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30, interval: float = 0.2):
    """Polls `condition` until it returns something truthy, and returns that;
    fails the test with `what` (and the last value seen) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {value!r})", pytrace=False)
        time.sleep(interval)


def get_through_port_forward(kubectl: "Kubectl", pod: str, port: int, timeout: float = 20) -> str:
    """Runs `kubectl port-forward pod/<pod> LOCAL:<port>` on a free local port and returns the
    body of `GET /` through it (waiting until the forward answers), then stops kubectl."""
    local = free_port()
    forward = kubectl.start("port-forward", f"pod/{pod}", f"{local}:{port}")
    try:
        forward.wait_for_line(lambda line: "Forwarding from" in line, timeout=timeout)

        def fetch():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                return None

        return wait_for(fetch, "the page through port-forward", timeout=timeout)
    finally:
        forward.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- kubeconfig ----------------------------------------------------------------


@dataclass
class Credentials:
    """What a client needs from a kubeconfig, with PEM material written to files."""

    server: str
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None


def _named(entries: list[dict], name: str, kind: str) -> dict:
    for entry in entries or []:
        if entry.get("name") == name:
            return entry[kind]
    raise KeyError(f"kubeconfig has no {kind} named {name!r}")


def load_credentials(kubeconfig: Path, scratch: Path) -> Credentials:
    """Reads the current context of `kubeconfig`; `*-data` fields go to files in `scratch`."""
    config = yaml.safe_load(kubeconfig.read_text())
    context = _named(config["contexts"], config["current-context"], "context")
    cluster = _named(config["clusters"], context["cluster"], "cluster")
    user = _named(config["users"], context["user"], "user")
    scratch.mkdir(parents=True, exist_ok=True)

    def material(section: dict, key: str) -> Path | None:
        if section.get(f"{key}-data"):
            path = scratch / f"{key}.pem"
            path.write_bytes(base64.b64decode(section[f"{key}-data"]))
            return path
        if section.get(key):
            path = Path(section[key])
            return path if path.is_absolute() else kubeconfig.parent / path
        return None

    ca_file = material(cluster, "certificate-authority")
    if ca_file is None:
        raise ValueError(f"{kubeconfig}: cluster has no certificate-authority(-data)")
    return Credentials(
        server=cluster["server"],
        ca_file=ca_file,
        cert_file=material(user, "client-certificate"),
        key_file=material(user, "client-key"),
        token=user.get("token"),
    )


# --- raw HTTPS -----------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        text = self.body[:2000].decode("utf-8", "replace")
        return f"Response(status={self.status}, headers={self.headers}, body={text!r})"


def request(
    url: str,
    creds: Credentials,
    method: str,
    path: str,
    body: bytes | str | dict | None = None,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    credentials: bool = True,
    timeout: float = 30,
) -> Response:
    """One HTTPS request to the server, verifying its certificate with the
    kubeconfig's CA. With `credentials=False` no client certificate or token is sent."""
    ctx = ssl.create_default_context(cafile=str(creds.ca_file))
    hdrs = {"Accept": "application/json"}
    if credentials:
        if creds.cert_file and creds.key_file:
            ctx.load_cert_chain(str(creds.cert_file), str(creds.key_file))
        if creds.token:
            hdrs["Authorization"] = f"Bearer {creds.token}"
    hdrs.update(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    if body is not None:
        hdrs.setdefault("Content-Type", content_type)
    host, port = url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


# --- the server ------------------------------------------------------------------


class EtcdServer:
    """An etcd member on loopback (Debian's etcd-server), its data under `workdir`.

    Alone it is a single-member cluster: the suite's servers use one each when
    TUG_E2E_DATASTORE=etcd, and the datastore tests start their own. `etcd_cluster(...)` makes
    several members of one cluster. `kill()` and `start()` again keep the data and the ports,
    as a crashed member that comes back."""

    def __init__(self, workdir: Path, name: str = "e2e", start: bool = True, tls: dict[str, Path] | None = None):
        require(shutil.which(ETCD_BINARY) is not None, f"no {ETCD_BINARY} binary (install Debian's etcd-server)")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.initial_cluster = f"{name}={self.peer_url}"
        # With `tls` (keys ca, cert, key: PEM files): clients must present a certificate of
        # that CA, over HTTPS.
        self.tls = tls
        self.process: subprocess.Popen | None = None
        if start:
            self.start()

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self) -> None:
        self.launch()
        self.wait_healthy()

    def launch(self) -> None:
        log = open(self.workdir / "etcd.log", "ab")
        self.process = subprocess.Popen(
            [
                ETCD_BINARY, "--name", self.name, "--data-dir", str(self.workdir / "data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.initial_cluster, "--initial-cluster-token", "e2e",
                "--log-level", "warn",
                *(
                    ["--cert-file", str(self.tls["cert"]), "--key-file", str(self.tls["key"]),
                     "--trusted-ca-file", str(self.tls["ca"]), "--client-cert-auth"]
                    if self.tls else []
                ),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()

    def healthy(self) -> bool:
        try:
            if self.tls:
                ctx = ssl.create_default_context(cafile=str(self.tls["ca"]))
                ctx.load_cert_chain(str(self.tls["client_cert"]), str(self.tls["client_key"]))
                conn = http.client.HTTPSConnection("127.0.0.1", self.client_port, timeout=2, context=ctx)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=2)
            conn.request("GET", "/health")
            return json.loads(conn.getresponse().read()).get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                break
            if self.healthy():
                return
            time.sleep(0.05)
        log_text = (self.workdir / "etcd.log").read_text(errors="replace")[-3000:]
        self.kill()
        pytest.fail(f"etcd {self.name} did not become healthy on {self.endpoint}\n{log_text}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def etcd_cluster(workdir: Path, members: int = 3) -> list[EtcdServer]:
    """`members` etcd members forming one cluster, started together (each waits for a quorum)."""
    cluster = [EtcdServer(workdir / f"member-{i}", name=f"m{i}", start=False) for i in range(members)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster)
    for member in cluster:
        member.initial_cluster = initial
        member.launch()
    for member in cluster:
        member.wait_healthy()
    return cluster


@dataclass
class TugServer:
    """A running `tug server` with its own data directory and port."""

    binary: Path
    data_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen | None = None
    creds: Credentials | None = None
    stopped_by_us: bool = False
    exit_code: int | None = None
    extra_args: list[str] = field(default_factory=list)
    # With a node agent (`agent=True`): its node name and HTTPS port.
    node_name: str | None = None
    kubelet_port: int | None = None
    # With TUG_E2E_DATASTORE=etcd: the server's own etcd, kept across restart().
    etcd: EtcdServer | None = None
    _log_file: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig.yaml"

    @classmethod
    def start(
        cls,
        binary: Path,
        workdir: Path,
        extra_args: list[str] | None = None,
        agent: bool = False,
        prepare: Callable[[Path], None] | None = None,
    ) -> "TugServer":
        """Starts `tug server` in `workdir`; `extra_args` are added to its command line. With
        `agent`, the server runs its node agent (a node named after the workdir, on a free port).
        `prepare` gets the new, empty data directory before the server starts (e.g. to mount a
        small filesystem in it)."""
        data_dir = workdir / "data"
        data_dir.mkdir(parents=True)
        if prepare is not None:
            prepare(data_dir)
        server = cls(
            binary=binary, data_dir=data_dir, port=free_port(), log_path=workdir / "tug.log",
            extra_args=list(extra_args or []),
        )  # fmt: skip
        if agent:
            server.node_name = f"tug-e2e-{secrets.token_hex(3)}"
            server.kubelet_port = free_port()
        if "--datastore-endpoint" not in server.extra_args:
            if E2E_DATASTORE == "etcd":
                server.etcd = EtcdServer(workdir / "etcd")
                server.extra_args += ["--datastore-endpoint", server.etcd.endpoint]
                if "--token" not in server.extra_args:
                    server.extra_args += ["--token", "e2e-cluster-token"]
            elif E2E_DATASTORE != "sqlite":
                server.extra_args += ["--datastore-endpoint", E2E_DATASTORE]
        server._log_file = open(server.log_path, "wb")
        server._launch()
        return server

    def restart(self) -> None:
        """Stops the server and starts it again on the same data directory and port."""
        self.stop(keep_datastore=True)
        self.stopped_by_us = False
        self.exit_code = None
        self._log_file = open(self.log_path, "ab")
        self._launch()

    def _launch(self) -> None:
        """Starts the process and waits until it is ready."""
        server = self
        args = [
            str(self.binary), "server",
            "--data-dir", str(self.data_dir),
            "--https-listen-port", str(server.port),
            "--bind-address", "127.0.0.1",
            *(
                [
                    "--node-name", self.node_name, "--kubelet-port", str(self.kubelet_port), "--node-ip", "127.0.0.1",
                    # Build machines often have less than upstream's 10% of disk free; these tests
                    # are about running pods, not about eviction.
                    "--eviction-hard", "memory.available<100Mi,nodefs.available<1%,imagefs.available<1%",
                    # Nor about image garbage collection, unless a test asks for it.
                    *([] if "--image-gc-high-threshold" in self.extra_args else ["--image-gc-high-threshold", "100"]),
                ]
                if self.node_name
                else ["--disable-agent"]
            ),
            *self.extra_args,
        ]  # fmt: skip
        server._log_file.write(f"$ {' '.join(args)}\n".encode())
        server._log_file.flush()
        server.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=server._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches any children
        )
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        last_error = "kubeconfig not written yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"tug server exited with code {self.process.returncode} before it was ready\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}",
                    pytrace=False,
                )
            if self.kubeconfig.exists():
                try:
                    self.creds = load_credentials(self.kubeconfig, self.data_dir.parent / "client")
                    resp = self.request("GET", "/readyz", timeout=5)
                    if resp.status == 200:
                        return
                    last_error = f"/readyz answered {resp!r}"
                except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError, http.client.HTTPException) as e:
                    last_error = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
        pytest.fail(
            f"tug server not ready within {READY_TIMEOUT_SECONDS}s on {self.url}: {last_error}\n"
            f"--- {self.log_path} ---\n{self.log_tail()}",
            pytrace=False,
        )

    def request(self, method: str, path: str, body=None, **kwargs) -> Response:
        """A raw HTTPS request with the admin credentials (see `request`)."""
        return request(self.url, self.creds, method, path, body, **kwargs)

    def create(self, collection: str, body: dict) -> dict:
        """POSTs `body` to `collection` (a path), asserting 201; returns the stored object."""
        resp = self.request("POST", collection, body)
        assert resp.status == 201, f"POST {collection}: {resp!r}"
        return resp.json()

    def kill(self) -> None:
        """SIGKILL of the server's whole process group, as a crash or a power cut; `restart()`
        brings it back on the same data."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.stopped_by_us = True
        self.exit_code = self.process.returncode if self.process else None
        if self._log_file and not self._log_file.closed:
            self._log_file.close()

    def crashed(self) -> bool:
        """True when the process ended without us stopping it."""
        return self.process is not None and not self.stopped_by_us and self.process.poll() is not None

    def stop(self, keep_datastore: bool = False) -> None:
        if not keep_datastore and self.etcd is not None:
            # After the server: it should not see its datastore vanish while it runs.
            try:
                self._stop_process()
            finally:
                self.etcd.kill()
            return
        self._stop_process()

    def _stop_process(self) -> None:
        if self.process is None or self.stopped_by_us:
            return
        self.stopped_by_us = self.process.poll() is None
        if self.stopped_by_us:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self.exit_code = self.process.returncode
        self._log_file.close()

    def remove_containers(self) -> None:
        """After the server stopped: kills what its node agent left running (containers, shims,
        sandboxes) and undoes its mounts and cgroups, as `tug` itself would on pod deletion."""
        if self.node_name:
            cleanup_agent_leftovers(self.data_dir)

    def log_tail(self, lines: int = 300) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        tail = text.splitlines()[-lines:]
        return "\n".join(tail)


def node_ready(server: "TugServer") -> dict | None:
    """The server's own Node once it reports Ready with a podCIDR (its pod network is up)."""
    resp = server.request("GET", f"/api/v1/nodes/{server.node_name}")
    if resp.status != 200:
        return None
    node = resp.json()
    ready = [c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    return node if ready and ready[0]["status"] == "True" and node.get("spec", {}).get("podCIDR") else None


@contextmanager
def agent_server(
    binary: Path,
    workdir: Path,
    image: str,
    extra_args: list[str] | None = None,
    wait_ready: bool = True,
    prepare: Callable[[Path], None] | None = None,
):
    """A `tug server` with its node agent, for tests that run pods; `server.image` is `image`.
    Afterwards its pods are deleted as a user would, the server stops, what its agent left
    running is removed, and a server that died on its own fails the test."""
    require(os.geteuid() == 0, "the node agent runs containers: needs root")
    server = TugServer.start(binary, workdir, extra_args, agent=True, prepare=prepare)
    try:
        server.image = image
        if wait_ready:
            wait_for(lambda: node_ready(server), "the node to become Ready with a podCIDR", timeout=40)
        yield server
    finally:
        crashed = server.crashed()
        try:
            if not crashed:
                server.request("DELETE", "/api/v1/namespaces/default/pods?gracePeriodSeconds=0")
                # The agent removes each pod's containers, network and cgroup before the pod
                # leaves the API; what is left after this is removed the hard way below.
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and server.request(
                    "GET", "/api/v1/namespaces/default/pods"
                ).json().get("items"):
                    time.sleep(0.2)
        finally:
            server.stop()
            server.remove_containers()
        if crashed:
            pytest.fail(f"tug server exited on its own with code {server.exit_code}\n{server.log_tail()}")


def cleanup_agent_leftovers(data_dir: Path) -> None:
    """Kills the container processes, shims and pause processes of the node agent that used
    `data_dir`, unmounts everything mounted below it, and removes the pod cgroups it made."""
    runtime = data_dir / "agent" / "runtime"
    cgroup_paths: list[str] = []
    for config in (runtime / "containers").glob("*/config.json"):
        try:
            path = json.loads(config.read_text()).get("linux", {}).get("cgroupsPath")
        except (OSError, ValueError):
            continue
        if path:
            cgroup_paths.append(path.strip("/"))
    # Each sandbox's pause process runs in <cgroup_parent>/<sandbox id>.
    for record in (runtime / "sandboxes").glob("*/sandbox.json"):
        try:
            parent = json.loads(record.read_text()).get("config", {}).get("cgroup_parent", "")
        except (OSError, ValueError):
            continue
        if parent.strip("/"):
            cgroup_paths.append(f"{parent.strip('/')}/{record.parent.name}")
    controllers = [p for p in Path("/sys/fs/cgroup").iterdir() if (p / "cgroup.procs").exists()] or [
        Path("/sys/fs/cgroup")
    ]

    def procs(path: str) -> list[int]:
        pids = set()
        for controller in controllers:
            try:
                pids.update(int(x) for x in (controller / path / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(pids)

    for path in cgroup_paths:
        for pid in procs(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    marker = str(data_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"\0shim\0" in cmdline and marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.2)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].encode().decode("unicode_escape")
        if mount_point.startswith(str(data_dir)):
            mounts.append(mount_point)
    for mount_point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], capture_output=True)
    pod_cgroups = {str(Path(p).parent) for p in cgroup_paths}
    # The pods whose cgroups the agent made and had not removed yet (its notes).
    for note in (data_dir / "agent" / "pod-cgroups").glob("*"):
        pod_cgroups |= {f"kubepods/pod{note.name}", f"kubepods/burstable/pod{note.name}",
                        f"kubepods/besteffort/pod{note.name}"}  # fmt: skip
    for path in sorted(set(cgroup_paths) | pod_cgroups, key=len, reverse=True):
        for controller in controllers:
            try:
                (controller / path).rmdir()
            except OSError:
                pass


# --- simulated nodes ---------------------------------------------------------------


@dataclass
class SimNodes:
    """A running `tug sim-nodes` against one server: nodes that renew their Leases and play
    their pods' lifecycle without containers (see crates/simnode)."""

    names: list[str]
    process: subprocess.Popen
    log_path: Path
    _log_file: object = field(default=None, repr=False)

    @classmethod
    def start(cls, binary: Path, server: "TugServer", count: int, *extra_args: str, prefix: str | None = None) -> "SimNodes":
        """Starts the simulator and waits until all its nodes are registered and Ready."""
        prefix = prefix or unique_name("sim")[:40] + "-"
        log_path = server.data_dir.parent / f"sim-nodes-{prefix.rstrip('-')}.log"
        log_file = open(log_path, "wb")
        args = [
            str(binary), "sim-nodes", "--kubeconfig", str(server.kubeconfig),
            "--count", str(count), "--name-prefix", prefix, *extra_args,
        ]  # fmt: skip
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        sim = cls(names=[f"{prefix}{i}" for i in range(count)], process=process, log_path=log_path, _log_file=log_file)

        def all_ready():
            if process.poll() is not None:
                raise AssertionError(f"tug sim-nodes exited with {process.returncode}:\n{log_path.read_text()}")
            for name in sim.names:
                resp = server.request("GET", f"/api/v1/nodes/{name}")
                if resp.status != 200:
                    return False
                conditions = (resp.json().get("status") or {}).get("conditions") or []
                if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return False
            return True

        try:
            wait_for(all_ready, f"{count} simulated nodes Ready", timeout=30)
        except BaseException:
            sim.stop()
            raise
        return sim

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stops the simulator: its nodes go silent (Leases no longer renewed), as when their
        kubelets stop; the Node objects stay."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        if self._log_file and not self._log_file.closed:
            self._log_file.close()


# --- kubectl -----------------------------------------------------------------------


@dataclass
class Kubectl:
    """Runs one kubectl version against one server's kubeconfig."""

    version: str
    binary: Path
    kubeconfig: Path
    cache_dir: Path

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Runs kubectl to completion; `env` adds variables (e.g. KUBE_EDITOR)."""
        result = subprocess.run(
            self._command(args), input=input, capture_output=True, text=True, timeout=timeout,
            env=self._environment(env),
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {self.version} exited {result.returncode}: {' '.join(args)}\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            )
        return result

    def start(self, *args: str) -> "RunningKubectl":
        """Starts a long-running kubectl (`get -w`) whose output lines can be awaited."""
        process = subprocess.Popen(
            self._command(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._environment(None),
            start_new_session=True,
        )
        return RunningKubectl(process)

    def _command(self, args) -> list[str]:
        return [str(self.binary), "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache_dir), *args]

    @staticmethod
    def _environment(extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env.update(extra or {})
        return env

    def for_server(self, server: TugServer) -> "Kubectl":
        """The same kubectl version pointed at another server."""
        return Kubectl.for_version(self.version, self.binary, server)

    @classmethod
    def for_version(cls, version: str, binary: Path, server: TugServer) -> "Kubectl":
        # One HTTP/discovery cache per server and version, so nothing stale or
        # written by another kubectl version is read back.
        return cls(version, binary, server.kubeconfig, server.data_dir.parent / f"kubectl-cache-{version}")


class RunningKubectl:
    """A kubectl process started by `Kubectl.start`: its stdout lines arrive on a
    queue as they are printed. Use as a context manager; leaving it kills the process."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: list[str] = []
        self._queue: Queue = Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(process.stdout, self._queue), daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    @staticmethod
    def _pump(stream, queue: Queue) -> None:
        for line in stream:
            queue.put(line.rstrip("\n"))
        queue.put(None)

    def _drain(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line)

    def next_line(self, timeout: float = 15) -> str:
        """The next line printed, failing the test if none comes within `timeout`."""
        try:
            line = self._queue.get(timeout=timeout)
        except Empty:
            pytest.fail(
                f"kubectl printed no line within {timeout}s; so far: {self.lines}\nstderr: {''.join(self._stderr)}",
                pytrace=False,
            )
        if line is None:
            self._queue.put(None)
            pytest.fail(
                f"kubectl exited ({self.process.poll()}) after printing {self.lines}\n"
                f"stderr: {''.join(self._stderr)}",
                pytrace=False,
            )
        self.lines.append(line)
        return line

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 15) -> str:
        """Reads lines until one satisfies `predicate` and returns it; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(timeout=max(0.1, deadline - time.monotonic()))
            if predicate(line):
                return line

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)

    def __enter__(self) -> "RunningKubectl":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_table(text: str) -> list[dict[str, str]]:
    """Parses kubectl's column output: a cell is the text under its header's column."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[s:e].strip() for s, e in zip(starts, starts[1:] + [len(line)])]
        rows.append(dict(zip(names, cells)))
    return rows
