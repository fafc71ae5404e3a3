"""The datastore behind the API: a real etcd as well as the embedded SQLite, and what each
must survive (issue 9): keys where upstream keeps them, acknowledged writes kept through a
kill -9, a clear 503 instead of a hang while etcd is gone (and recovery without a restart),
watches that outlive an etcd restart, and a refusal to start on a damaged SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from support import TOOLS_BIN, EtcdServer, Kubectl, etcd_cluster, unique_name, wait_for


def _configmap(name: str, value: str = "v") -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}}


def _on(etcd: EtcdServer, token: str = "test-cluster-token") -> list[str]:
    """Server flags for a cluster on `etcd` (a token is required: it seals the shared CA)."""
    return ["--datastore-endpoint", etcd.endpoint, "--token", token]


@pytest.fixture(params=["sqlite", "etcd"])
def datastore_flags(request, tmp_path):
    """Server flags for each backend in turn: none (the embedded SQLite) or a fresh etcd's.
    Ask for it before `start_server`, so that the servers stop before their etcd does."""
    if request.param == "sqlite":
        yield []
        return
    etcd = EtcdServer(tmp_path / "etcd-param")
    yield _on(etcd)
    etcd.kill()


@pytest.fixture
def etcd(tmp_path):
    server = EtcdServer(tmp_path / "etcd")
    yield server
    server.kill()


def _etcdctl(etcd: EtcdServer, *args: str) -> str:
    result = subprocess.run(
        ["etcdctl", "--endpoints", etcd.endpoint, *args],
        env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_objects_live_in_etcd_under_registry_keys_with_etcds_revisions(start_server, etcd, kubectl):
    server = start_server(*_on(etcd))
    name = unique_name("cm")
    kubectl.for_server(server)("create", "configmap", name, "--from-literal=k=v")

    key = f"/registry/configmaps/default/{name}"
    stored = _etcdctl(etcd, "get", key, "--print-value-only")
    assert json.loads(stored)["data"] == {"k": "v"}
    # resourceVersion is etcd's mod_revision of the key, as on upstream Kubernetes.
    meta = json.loads(_etcdctl(etcd, "get", key, "-w", "json"))
    got = server.request("GET", f"/api/v1/namespaces/default/configmaps/{name}").json()
    assert got["metadata"]["resourceVersion"] == str(meta["kvs"][0]["mod_revision"])


def _etcd_pki(directory) -> dict:
    """A CA, a serving certificate for 127.0.0.1 and a client certificate, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.crt", "-days", "2", "-subj", "/CN=etcd-test-ca")  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):  # fmt: skip
        (directory / f"{name}.ext").write_text(ext + "\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN=etcd-{name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return {
        "ca": directory / "ca.crt", "cert": directory / "server.crt", "key": directory / "server.key",
        "client_cert": directory / "client.crt", "client_key": directory / "client.key",
    }  # fmt: skip


def test_a_server_reaches_etcd_over_tls_with_a_client_certificate(start_server, tmp_path):
    pki = _etcd_pki(tmp_path / "pki")
    etcd = EtcdServer(tmp_path / "etcd-tls", tls=pki)
    try:
        assert etcd.endpoint.startswith("https://")
        server = start_server(
            "--datastore-endpoint", etcd.endpoint, "--token", "tls-cluster",
            "--datastore-cafile", str(pki["ca"]), "--datastore-certfile", str(pki["client_cert"]),
            "--datastore-keyfile", str(pki["client_key"]),
        )  # fmt: skip
        assert server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap("over-tls")).status == 201
        # Without a client certificate etcd refuses the connection: the server does not start.
        result = subprocess.run(
            [str(server.binary), "server", "--data-dir", str(tmp_path / "no-cert"), "--https-listen-port", "1",
             "--bind-address", "127.0.0.1", "--disable-agent", "--datastore-endpoint", etcd.endpoint,
             "--token", "tls-cluster", "--datastore-cafile", str(pki["ca"])],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode != 0
        assert "etcd" in result.stderr, result.stderr[-2000:]
    finally:
        etcd.kill()


def test_a_second_server_on_the_same_etcd_sees_the_first_ones_writes(start_server, etcd):
    first = start_server(*_on(etcd))
    name = unique_name("cm")
    assert first.request("POST", "/api/v1/namespaces/default/configmaps", _configmap(name)).status == 201
    second = start_server(*_on(etcd))
    got = second.request("GET", f"/api/v1/namespaces/default/configmaps/{name}")
    assert got.status == 200, got
    assert got.json()["data"] == {"k": "v"}


def test_every_acknowledged_write_survives_kill_9_of_the_server(datastore_flags, start_server):
    server = start_server(*datastore_flags)
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            name = f"w-{i:05d}"
            try:
                resp = server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap(name), timeout=5)
            except OSError:
                return  # the server is gone: this write was never acknowledged
            if resp.status == 201:
                acknowledged.append(name)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    wait_for(lambda: len(acknowledged) >= 50, timeout=60, what="50 acknowledged writes")
    server.kill()
    stop.set()
    thread.join(timeout=30)

    server.restart()
    listed = server.request("GET", "/api/v1/namespaces/default/configmaps").json()["items"]
    present = {item["metadata"]["name"] for item in listed}
    missing = [name for name in acknowledged if name not in present]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


def test_while_etcd_is_gone_the_api_answers_503_promptly_and_recovers_by_itself(start_server, etcd):
    server = start_server(*_on(etcd))
    assert server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap("before")).status == 201

    etcd.kill()
    started = time.monotonic()
    resp = server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap("during"), timeout=60)
    took = time.monotonic() - started
    assert resp.status == 503, resp
    status = resp.json()
    assert (status["kind"], status["reason"]) == ("Status", "ServiceUnavailable")
    assert "etcd" in status["message"]
    assert took < 15, f"the error took {took:.1f}s"

    etcd.start()

    def created():
        return server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap("after"), timeout=30).status == 201

    wait_for(created, timeout=60, what="a write accepted once etcd is back")
    names = {i["metadata"]["name"] for i in server.request("GET", "/api/v1/namespaces/default/configmaps").json()["items"]}
    assert {"before", "after"} <= names and "during" not in names


def test_a_three_member_etcd_serves_with_one_member_down_and_answers_503_without_quorum(start_server, tmp_path):
    members = etcd_cluster(tmp_path / "etcd3", members=3)
    try:
        endpoints = ",".join(m.endpoint for m in members)
        server = start_server("--datastore-endpoint", endpoints, "--token", "three-members")

        def create(name: str, timeout: float = 30):
            return server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap(name), timeout=timeout)

        assert create("all-up").status == 201
        members[0].kill()
        # Two of three still form a quorum. If the killed member led, a write proposed before
        # the other two elect a leader may time out in etcd (as it would for upstream's API
        # server); once they have one, every write is accepted.
        # (A new name each try: a write that timed out may still have been applied.)
        tries = iter(range(1000))
        wait_for(
            lambda: create(f"election-{next(tries)}").status == 201, timeout=30, what="a write once two members lead"
        )
        for i in range(20):
            resp = create(f"one-down-{i}")
            assert resp.status == 201, f"write {i} with one member down: {resp}"

        members[1].kill()
        started = time.monotonic()
        resp = create("no-quorum", timeout=60)
        took = time.monotonic() - started
        assert resp.status == 503, resp
        assert resp.json()["reason"] == "ServiceUnavailable"
        assert took < 15, f"the error took {took:.1f}s"

        members[0].start()  # quorum again: the API recovers by itself
        wait_for(lambda: create("recovered").status == 201, timeout=60, what="a write once quorum is back")
        names = {i["metadata"]["name"] for i in server.request("GET", "/api/v1/namespaces/default/configmaps").json()["items"]}
        # Whether "no-quorum" exists is not asserted: etcd may keep a proposal it timed out in
        # the surviving member's log and commit it once quorum is back (upstream's API server
        # answers such a write with an error too, and the object may still appear).
        assert {"all-up", "one-down-19", "recovered"} <= names
    finally:
        for member in members:
            member.kill()


def test_a_watch_through_the_api_keeps_its_events_across_an_etcd_restart(start_server, etcd):
    server = start_server(*_on(etcd))
    client = Kubectl.for_version("1.36", TOOLS_BIN / "kubectl-1.36", server)
    client("create", "configmap", "first", "--from-literal=k=1")
    watch = client.start("get", "configmaps", "--watch", "-o", "name")
    try:
        # The watch is open once it has listed what exists.
        watch.wait_for_line(lambda line: "configmap/first" in line, timeout=30)
        etcd.kill()
        etcd.start()
        wait_for(
            lambda: server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap("second")).status == 201,
            timeout=60, what="a write after the etcd restart",
        )  # fmt: skip
        watch.wait_for_line(lambda line: "configmap/second" in line, timeout=60)
    finally:
        watch.stop()


def test_a_damaged_sqlite_file_stops_the_server_with_a_clear_error(start_server, tmp_path):
    server = start_server()
    assert server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap("x")).status == 201
    server.stop()
    db = server.data_dir / "db" / "state.db"
    with open(db, "r+b") as f:
        f.seek(100)
        f.write(os.urandom(4096))
    result = subprocess.run(
        [str(server.binary), "server", "--data-dir", str(server.data_dir), "--https-listen-port", str(server.port),
         "--bind-address", "127.0.0.1", "--disable-agent"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "unreadable" in result.stderr or "corrupt" in result.stderr.lower(), result.stderr[-2000:]
    assert db.stat().st_size > 0, "the damaged file is left for the operator, not replaced"


def _names(server) -> set[str]:
    return {i["metadata"]["name"] for i in server.request("GET", "/api/v1/namespaces/default/configmaps").json()["items"]}


def test_a_snapshot_restores_every_object_it_holds(datastore_flags, start_server, tmp_path):
    args = datastore_flags
    server = start_server(*args)
    for name in ("kept-1", "kept-2", "changed"):
        assert server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap(name)).status == 201
    snapshot = tmp_path / "snapshot.db"
    save = subprocess.run(
        [str(server.binary), "datastore", "snapshot", "save", str(snapshot), "--data-dir", str(server.data_dir),
         *args[:2]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert save.returncode == 0, save.stderr[-2000:]
    assert "snapshot saved" in save.stdout

    # Changes after the snapshot: an object added, one deleted, one changed.
    assert server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap("after")).status == 201
    assert server.request("DELETE", "/api/v1/namespaces/default/configmaps/kept-1").status == 200
    changed = server.request("GET", "/api/v1/namespaces/default/configmaps/changed").json()
    changed["data"] = {"k": "new"}
    assert server.request("PUT", "/api/v1/namespaces/default/configmaps/changed", changed).status == 200

    server.stop(keep_datastore=True)
    reset = subprocess.run(
        [str(server.binary), "server", "--data-dir", str(server.data_dir), "--cluster-reset",
         "--cluster-reset-restore-path", str(snapshot), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert reset.returncode == 0, reset.stderr[-2000:]
    assert "restored" in reset.stdout

    server.restart()
    names = _names(server)
    assert {"kept-1", "kept-2", "changed"} <= names and "after" not in names
    got = server.request("GET", "/api/v1/namespaces/default/configmaps/changed").json()
    assert got["data"] == {"k": "v"}
    # The restored cluster works: it takes writes again.
    assert server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap("post-restore")).status == 201


def test_a_damaged_snapshot_is_refused_and_changes_nothing(start_server, tmp_path):
    server = start_server()
    assert server.request("POST", "/api/v1/namespaces/default/configmaps", _configmap("precious")).status == 201
    server.stop()
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(os.urandom(8192))
    reset = subprocess.run(
        [str(server.binary), "server", "--data-dir", str(server.data_dir), "--cluster-reset",
         "--cluster-reset-restore-path", str(bogus)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert reset.returncode != 0
    assert "not a usable Tugboat snapshot" in reset.stderr, reset.stderr[-2000:]
    server.restart()
    assert "precious" in _names(server)
