"""Fixtures of the end-to-end suite.

- `tug`: one `tug server --disable-agent` for the whole session (see support.TugServer).
- `fresh_server`: a server of the test's own, for tests that need an empty cluster.
- `start_server`: `start_server(*extra_args)` starts more servers of the test's own.
- `kubectl`: a kubectl runner, parametrized over the newest and oldest supported versions.
- `kube_client`: a `kubernetes.client.ApiClient` configured from the server's kubeconfig.
- `namespace`: a namespace of the test's own on the session server.
- `make_namespace`: more namespaces of the test's own, made on demand.
- `sim_cluster` (module scope): a server of the module's own with 3 simulated nodes, on which
  pods become Running and Ready (see support.SimNodes).
- `start_sim_nodes`: `start_sim_nodes(server, count, *extra_args)` adds simulated nodes to a
  server for this test only.

The binary comes from $TUG_BIN (scripts/test.sh sets it), else target/debug/tug.
Outside CI a missing binary or tool skips the tests that need it; under CI=true
it fails them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import REPO_ROOT, TOOLS_BIN, Kubectl, SimNodes, TugServer, require, unique_name

KUBECTL_VERSIONS = ["1.36", "1.27"]

_servers: list[TugServer] = []


def _tug_binary() -> Path:
    configured = os.environ.get("TUG_BIN")
    binary = Path(configured) if configured else REPO_ROOT / "target" / "debug" / "tug"
    require(
        binary.is_file() and os.access(binary, os.X_OK),
        f"no tug binary at {binary} (build it with `cargo build -p tug` or set TUG_BIN)",
    )
    return binary


def _start(workdir: Path, extra_args: list[str] | None = None) -> TugServer:
    server = TugServer.start(_tug_binary(), workdir, extra_args)
    _servers.append(server)
    return server


@pytest.fixture(scope="session")
def tug(tmp_path_factory):
    """The session's server: .url, .kubeconfig, .data_dir, .request(method, path, body)."""
    server = _start(tmp_path_factory.mktemp("tug"))
    yield server
    crashed = server.crashed()
    server.stop()
    if crashed:
        pytest.fail(f"tug server exited on its own with code {server.exit_code} during the session")


@pytest.fixture
def fresh_server(tmp_path):
    """A server started for this test only (an empty cluster)."""
    server = _start(tmp_path / "tug")
    yield server
    crashed = server.crashed()
    server.stop()
    if crashed:
        pytest.fail(f"tug server exited on its own with code {server.exit_code} during the test")


@pytest.fixture
def start_server(tmp_path):
    """`start_server(*extra_args) -> TugServer`: servers for this test only, started with extra
    command-line flags (stopped afterwards)."""
    started: list[TugServer] = []

    def start(*extra_args: str) -> TugServer:
        server = _start(tmp_path / f"tug-{len(started)}", list(extra_args))
        started.append(server)
        return server

    yield start
    crashed = [s for s in started if s.crashed()]
    for server in started:
        server.stop()
    if crashed:
        pytest.fail(f"tug server exited on its own with code {crashed[0].exit_code} during the test")


@pytest.fixture(params=KUBECTL_VERSIONS, ids=lambda v: f"kubectl-{v}")
def kubectl(request, tug) -> Kubectl:
    """`kubectl(*args, input=None, check=True) -> CompletedProcess` against `tug`."""
    version = request.param
    binary = TOOLS_BIN / f"kubectl-{version}"
    require(binary.exists(), f"{binary} missing: run scripts/install-test-deps.sh")
    return Kubectl.for_version(version, binary, tug)


@pytest.fixture
def kube_client(tug):
    """The official Python client's ApiClient, configured from the server's kubeconfig."""
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(tug.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(request, tug) -> str:
    """A namespace created for this test on the session server (deleted afterwards)."""
    name = unique_name(f"e2e-{request.node.name}")
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    resp = tug.request("POST", "/api/v1/namespaces", body)
    assert resp.status == 201, f"creating namespace {name}: {resp!r}"
    yield name
    tug.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def make_namespace(request, tug):
    """`make_namespace(label) -> name`: more namespaces for the test (deleted afterwards)."""
    created: list[str] = []

    def make(label: str = "extra") -> str:
        name = unique_name(f"e2e-{label}")
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        resp = tug.request("POST", "/api/v1/namespaces", body)
        assert resp.status == 201, f"creating namespace {name}: {resp!r}"
        created.append(name)
        return name

    yield make
    for name in created:
        tug.request("DELETE", f"/api/v1/namespaces/{name}")


class SimCluster:
    """A server with simulated nodes: .server, .nodes (SimNodes), .node_names,
    .kubectl(*args, version=..., check=True, input=None), .client (a Python ApiClient)."""

    def __init__(self, server: TugServer, nodes: SimNodes):
        self.server = server
        self.nodes = nodes
        self.node_names = nodes.names
        self._client = None

    def kubectl(self, *args: str, version: str = KUBECTL_VERSIONS[0], **kwargs):
        binary = TOOLS_BIN / f"kubectl-{version}"
        require(binary.exists(), f"{binary} missing: run scripts/install-test-deps.sh")
        return Kubectl.for_version(version, binary, self.server)(*args, **kwargs)

    @property
    def client(self):
        if self._client is None:
            from kubernetes import config

            self._client = config.new_client_from_config(config_file=str(self.server.kubeconfig))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


_sim_nodes: list[SimNodes] = []


@pytest.fixture(scope="module")
def sim_cluster(tmp_path_factory):
    """A server for the test module with 3 simulated nodes (see SimCluster)."""
    workdir = tmp_path_factory.mktemp("sim-cluster")
    server = _start(workdir)
    nodes = SimNodes.start(_tug_binary(), server, 3)
    _sim_nodes.append(nodes)
    cluster = SimCluster(server, nodes)
    yield cluster
    cluster.close()
    nodes.stop()
    crashed = server.crashed()
    server.stop()
    if crashed:
        pytest.fail(f"tug server exited on its own with code {server.exit_code} during the module")


@pytest.fixture
def start_sim_nodes():
    """`start_sim_nodes(server, count, *extra_args) -> SimNodes`: simulated nodes for this test
    (stopped afterwards)."""
    started: list[SimNodes] = []

    def start(server: TugServer, count: int = 1, *extra_args: str) -> SimNodes:
        nodes = SimNodes.start(_tug_binary(), server, count, *extra_args)
        started.append(nodes)
        _sim_nodes.append(nodes)
        return nodes

    yield start
    for nodes in started:
        nodes.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Shows the servers' logs when something failed, or a server died on its own."""
    failed = bool(terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"))
    for server in _servers:
        if failed or server.crashed() or (server.exit_code not in (None, 0) and not server.stopped_by_us):
            terminalreporter.section(f"tug server log {server.log_path} (last 300 lines)")
            terminalreporter.write_line(server.log_tail())
    if failed:
        for nodes in _sim_nodes:
            terminalreporter.section(f"tug sim-nodes log {nodes.log_path} (last 100 lines)")
            try:
                text = nodes.log_path.read_text(errors="replace")
            except OSError as e:
                text = f"(no log: {e})"
            terminalreporter.write_line("\n".join(text.splitlines()[-100:]))
