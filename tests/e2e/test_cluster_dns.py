"""Cluster DNS (issue 8, point 2): `tug server` answers the cluster's names from Services and
EndpointSlices, publishes itself as kube-system/kube-dns, and forwards other names.

The server's DNS listens on 127.0.0.1:<free port> (--cluster-dns-bind) and forwards to a tiny
resolver this module runs on loopback (--cluster-dns-upstream). Queries are raw DNS packets
(no dig/dnspython on the test machines), over UDP and TCP.
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import threading
import time
import urllib.request

import pytest

from registry import tug_binary
from support import TugServer, free_port, unique_name, wait_for

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "AAAA": 28, "SRV": 33}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
NOERROR, NXDOMAIN = 0, 3
# "Within a second" of a change, with a little slack for a busy 2-core CI machine.
UPDATE_BUDGET = 1.5
METRICS_PORT = free_port()


# --- a minimal DNS codec ------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def build_query(name: str, qtype: str, qid: int | None = None) -> bytes:
    qid = random.randrange(65536) if qid is None else qid
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD set
    return header + encode_name(name) + struct.pack("!HH", TYPES[qtype], 1)


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels, end = [], None
    while True:
        length = msg[pos]
        if length & 0xC0 == 0xC0:  # compression pointer
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        pos += 1
        if length == 0:
            break
        labels.append(msg[pos : pos + length].decode())
        pos += length
    return ".".join(labels) + ".", (end if end is not None else pos)


def parse_response(msg: bytes) -> dict:
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
    pos = 12
    for _ in range(qd):
        _, pos = read_name(msg, pos)
        pos += 4
    sections = []
    for count in (an, ns, ar):
        records = []
        for _ in range(count):
            name, pos = read_name(msg, pos)
            rtype, _cls, ttl, rdlen = struct.unpack("!HHIH", msg[pos : pos + 10])
            pos += 10
            rdata = msg[pos : pos + rdlen]
            if rtype == 1:
                data = socket.inet_ntoa(rdata)
            elif rtype in (2, 5, 12):
                data = read_name(msg, pos)[0]
            elif rtype == 33:
                prio, weight, port = struct.unpack("!HHH", rdata[:6])
                data = (prio, weight, port, read_name(msg, pos + 6)[0])
            else:
                data = rdata
            records.append({"name": name, "type": TYPE_NAMES.get(rtype, rtype), "ttl": ttl, "data": data})
            pos += rdlen
        sections.append(records)
    return {
        "id": qid,
        "rcode": flags & 0xF,
        "aa": bool(flags & 0x0400),
        "tc": bool(flags & 0x0200),
        "answers": sections[0],
        "authority": sections[1],
        "additional": sections[2],
    }


def query(server: tuple[str, int], name: str, qtype: str = "A", tcp: bool = False) -> dict:
    qid = random.randrange(65536)
    packet = build_query(name, qtype, qid)
    if tcp:
        with socket.create_connection(server, timeout=5) as s:
            s.sendall(struct.pack("!H", len(packet)) + packet)
            length = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            reply = s.recv(length, socket.MSG_WAITALL)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(packet, server)
            reply, _ = s.recvfrom(4096)
    response = parse_response(reply)
    assert response["id"] == qid
    return response


def addresses(response: dict) -> list[str]:
    return sorted(r["data"] for r in response["answers"] if r["type"] == "A")


# --- a resolver standing in for the host's ----------------------------------------------


class FakeUpstream:
    """Answers `outside.test.` A 192.0.2.44 (TTL 60) and NXDOMAIN for anything else; counts
    the questions that reach it."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            qid = struct.unpack("!H", packet[:2])[0]
            name, pos = read_name(packet, 12)
            question = packet[12 : pos + 4]
            self.seen.append(name)
            if name == "outside.test.":
                header = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
                answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.44")
                self.sock.sendto(header + question + answer, peer)
            else:
                header = struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0)
                self.sock.sendto(header + question, peer)

    def close(self):
        self.sock.close()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def dns(tmp_path_factory, upstream):
    """(server, (host, port)): a server whose cluster DNS listens on a free loopback port."""
    port = free_port()
    server = TugServer.start(
        tug_binary(),
        tmp_path_factory.mktemp("dns"),
        [
            "--cluster-dns-bind", f"127.0.0.1:{port}",
            "--cluster-dns-upstream", f"127.0.0.1:{upstream.port}",
            "--cluster-dns-metrics-bind", f"127.0.0.1:{METRICS_PORT}",
        ],
    )  # fmt: skip
    yield server, ("127.0.0.1", port)
    server.stop()


@pytest.fixture
def ns(dns):
    server, _ = dns
    name = unique_name("dns")
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    resp = server.request("POST", "/api/v1/namespaces", body)
    assert resp.status == 201, resp
    yield name
    server.request("DELETE", f"/api/v1/namespaces/{name}")


def create(server: TugServer, path: str, body: dict) -> dict:
    resp = server.request("POST", path, body)
    assert resp.status == 201, f"POST {path}: {resp!r}"
    return resp.json()


def service(server, ns, name, spec) -> dict:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
    return create(server, f"/api/v1/namespaces/{ns}/services", body)


def slice_body(ns, svc, endpoints, name=None) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{svc}-e2e",
            "namespace": ns,
            # Our own managed-by: the endpointslice controller leaves the slice alone.
            "labels": {"kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "e2e.test"},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def timed_wait(condition, what: str) -> float:
    """Waits for `condition` (at most UPDATE_BUDGET seconds) and returns how long it took."""
    start = time.monotonic()
    wait_for(condition, what, timeout=UPDATE_BUDGET, interval=0.05)
    return time.monotonic() - start


# --- tests ---------------------------------------------------------------------------------


def test_kube_dns_service_points_at_the_server(dns):
    server, (host, port) = dns
    path = "/api/v1/namespaces/kube-system/services/kube-dns"
    svc = wait_for(lambda: (r := server.request("GET", path)).status == 200 and r.json(), "kube-dns service")
    assert svc["spec"]["clusterIP"] == "10.43.0.10"
    assert svc["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert {(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == {
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP"),
    }  # fmt: skip
    path = "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices/kube-dns"
    slice_ = wait_for(lambda: (r := server.request("GET", path)).status == 200 and r.json(), "kube-dns endpointslice")
    assert slice_["endpoints"][0]["addresses"] == [host]
    assert {(p["name"], p["port"]) for p in slice_["ports"]} == {("dns", port), ("dns-tcp", port)}
    # The cluster DNS answers for itself and for the API server's service. The server has just
    # started: its DNS may not have read the services yet when the API already shows them.
    wait_for(
        lambda: addresses(query(dns[1], "kube-dns.kube-system.svc.cluster.local")) == ["10.43.0.10"],
        "kube-dns.kube-system.svc.cluster.local to answer 10.43.0.10",
    )
    assert addresses(query(dns[1], "kubernetes.default.svc.cluster.local")) == ["10.43.0.1"]


def test_a_service_name_answers_its_cluster_ip_and_follows_changes(dns, ns):
    server, addr = dns
    fqdn = f"web.{ns}.svc.cluster.local"
    assert query(addr, fqdn)["rcode"] == NXDOMAIN
    ip = service(server, ns, "web", {"ports": [{"name": "http", "port": 80}]})["spec"]["clusterIP"]
    took = timed_wait(lambda: addresses(query(addr, fqdn)) == [ip], f"{fqdn} to answer {ip}")
    print(f"service visible in DNS after {took:.2f}s")
    for tcp in (False, True):
        response = query(addr, fqdn, tcp=tcp)
        assert response["rcode"] == NOERROR and response["aa"]
        assert addresses(response) == [ip]
        assert response["answers"][0]["ttl"] == 5
    # IPv4 only: AAAA is an empty answer, not an error.
    aaaa = query(addr, fqdn, "AAAA")
    assert aaaa["rcode"] == NOERROR and aaaa["answers"] == [] and aaaa["authority"][0]["type"] == "SOA"
    srv = query(addr, f"_http._tcp.{fqdn}", "SRV")
    assert [r["data"] for r in srv["answers"]] == [(0, 100, 80, f"{fqdn}.")]
    reverse = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
    assert [r["data"] for r in query(addr, reverse, "PTR")["answers"]] == [f"{fqdn}."]
    # Short names work through the search path in pods: the plain FQDN is what reaches us.
    assert server.request("DELETE", f"/api/v1/namespaces/{ns}/services/web").status == 200
    timed_wait(lambda: query(addr, fqdn)["rcode"] == NXDOMAIN, f"{fqdn} to disappear")


def test_a_headless_service_answers_its_ready_endpoints_by_name(dns, ns):
    server, addr = dns
    service(server, ns, "db", {"clusterIP": "None", "ports": [{"name": "http", "port": 8080}]})
    endpoints = [
        {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": True}},
        {"addresses": ["10.42.0.6"], "hostname": "db-1", "conditions": {"ready": True}},
        {"addresses": ["10.42.0.7"], "hostname": "db-2", "conditions": {"ready": False}},
    ]
    create(server, f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", slice_body(ns, "db", endpoints))
    fqdn = f"db.{ns}.svc.cluster.local"
    wait_for(lambda: addresses(query(addr, fqdn)) == ["10.42.0.5", "10.42.0.6"], "the ready endpoints", timeout=5)
    assert addresses(query(addr, f"db-0.{fqdn}")) == ["10.42.0.5"]
    assert query(addr, f"db-2.{fqdn}")["rcode"] == NXDOMAIN, "a not-ready endpoint has no name"
    srv = query(addr, f"_http._tcp.{fqdn}", "SRV")
    assert sorted(r["data"][2:] for r in srv["answers"]) == [(8080, f"db-0.{fqdn}."), (8080, f"db-1.{fqdn}.")]
    assert {r["data"] for r in srv["additional"]} == {"10.42.0.5", "10.42.0.6"}
    assert [r["data"] for r in query(addr, "5.0.42.10.in-addr.arpa", "PTR")["answers"]] == [f"db-0.{fqdn}."]
    # The third pod becomes ready: its address joins within a second.
    endpoints[2]["conditions"]["ready"] = True
    path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/db-e2e"
    resp = server.request("PATCH", path, {"endpoints": endpoints}, content_type="application/merge-patch+json")
    assert resp.status == 200, resp
    timed_wait(lambda: addresses(query(addr, fqdn)) == ["10.42.0.5", "10.42.0.6", "10.42.0.7"], "the new endpoint")
    assert addresses(query(addr, f"db-2.{fqdn}")) == ["10.42.0.7"]


def test_an_external_name_service_is_a_cname(dns, ns):
    server, addr = dns
    service(server, ns, "ext", {"type": "ExternalName", "externalName": "outside.test"})
    fqdn = f"ext.{ns}.svc.cluster.local"
    response = wait_for(lambda: (r := query(addr, fqdn))["answers"] and r, "the CNAME", timeout=5)
    assert [(r["type"], r["data"]) for r in response["answers"]] == [("CNAME", "outside.test.")]


def test_pod_names_and_unknown_names(dns, ns):
    _, addr = dns
    assert addresses(query(addr, f"10-42-1-9.{ns}.pod.cluster.local")) == ["10.42.1.9"]
    missing = query(addr, f"nothing.{ns}.svc.cluster.local")
    assert missing["rcode"] == NXDOMAIN and missing["aa"]
    assert [r["type"] for r in missing["authority"]] == ["SOA"]


def test_names_outside_the_cluster_are_forwarded_and_cached(dns, upstream):
    _, addr = dns
    before = len(upstream.seen)
    for _ in range(3):
        response = query(addr, "outside.test")
        assert response["rcode"] == NOERROR
        assert addresses(response) == ["192.0.2.44"]
    assert upstream.seen[before:] == ["outside.test."], "later answers came from the cache"
    name = f"{unique_name('nx')}.test"
    for _ in range(2):
        assert query(addr, name)["rcode"] == NXDOMAIN
    assert upstream.seen[before + 1 :] == [f"{name}."], "the denial was cached too"


def test_pods_behind_a_headless_service_are_named_by_hostname_and_subdomain(dns, ns, start_sim_nodes):
    """A StatefulSet's shape: pods with hostname and subdomain behind a headless service with a
    selector; the endpointslice controller publishes them, the DNS names them."""
    server, addr = dns
    start_sim_nodes(server, 1)
    service(server, ns, "hl", {"clusterIP": "None", "selector": {"app": "hl"}, "ports": [{"name": "web", "port": 80}]})
    for i in range(2):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"web-{i}", "labels": {"app": "hl"}},
            "spec": {"hostname": f"web-{i}", "subdomain": "hl", "containers": [{"name": "c", "image": "busybox"}]},
        }
        create(server, f"/api/v1/namespaces/{ns}/pods", pod)

    def pod_ips():
        ips = {}
        for i in range(2):
            status = server.request("GET", f"/api/v1/namespaces/{ns}/pods/web-{i}").json().get("status") or {}
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
            if not (ready and status.get("podIP")):
                return None
            ips[f"web-{i}"] = status["podIP"]
        return ips

    ips = wait_for(pod_ips, "both pods Ready with an IP", timeout=30)
    fqdn = f"hl.{ns}.svc.cluster.local"
    wait_for(lambda: addresses(query(addr, fqdn)) == sorted(ips.values()), "the headless service's pods", timeout=10)
    for host, ip in ips.items():
        assert addresses(query(addr, f"{host}.{fqdn}")) == [ip]
        reverse = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
        assert [r["data"] for r in query(addr, reverse, "PTR")["answers"]] == [f"{host}.{fqdn}."]
    srv = query(addr, f"_web._tcp.{fqdn}", "SRV")
    assert sorted(r["data"][3] for r in srv["answers"]) == [f"web-0.{fqdn}.", f"web-1.{fqdn}."]
    # A deleted pod leaves the answers.
    assert server.request("DELETE", f"/api/v1/namespaces/{ns}/pods/web-1?gracePeriodSeconds=0").status == 200
    wait_for(lambda: addresses(query(addr, fqdn)) == [ips["web-0"]], "web-1 to leave", timeout=10)


def metric(name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"no {name} in /metrics:\n{text}"
    return values[0]


def test_metrics_count_requests_and_cache_hits(dns, upstream):
    _, addr = dns
    before_requests = metric('coredns_dns_requests_total{proto="udp"}')
    before_hits = metric("coredns_cache_hits_total")
    name = f"{unique_name('m')}.test"
    for _ in range(3):
        query(addr, name)
    assert metric('coredns_dns_requests_total{proto="udp"}') == before_requests + 3
    assert metric("coredns_cache_hits_total") == before_hits + 2
    assert metric("coredns_dns_request_duration_seconds_count") >= 3


def test_tug_dns_runs_alone_with_a_kubeconfig(dns, upstream, tmp_path):
    """`tug dns --kubeconfig FILE` (as a cluster DNS outside `tug server`) answers the same names."""
    server, _ = dns
    port, metrics = free_port(), free_port()
    log = open(tmp_path / "dns.log", "wb")
    process = subprocess.Popen(
        [str(tug_binary()), "dns", "--kubeconfig", str(server.kubeconfig), "--bind", f"127.0.0.1:{port}",
         "--metrics-bind", f"127.0.0.1:{metrics}", "--upstream", f"127.0.0.1:{upstream.port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        def answered():
            try:
                return addresses(query(("127.0.0.1", port), "kubernetes.default.svc.cluster.local")) or None
            except OSError:  # not listening yet
                return None

        answer = wait_for(answered, "the standalone DNS to answer", timeout=20)
        assert answer == ["10.43.0.1"]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0, (tmp_path / "dns.log").read_text()[-2000:]
