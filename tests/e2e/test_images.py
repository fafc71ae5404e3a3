"""`tug images pull/ls/rm/import` against real registries: Debian's docker-registry on
loopback ports, one plain HTTP and anonymous, one HTTPS (a CA made here) behind htpasswd basic
auth, both filled by scripts/build-test-images.sh with the busybox test images.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import REPO_ROOT, free_port, require, wait_for

BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-test-images.sh"
REPO = "tugboat.test/busybox"
USER, PASSWORD = "tugboat", "s3cret-pw"


def tug_binary() -> Path:
    configured = os.environ.get("TUG_BIN")
    binary = Path(configured) if configured else REPO_ROOT / "target" / "debug" / "tug"
    require(binary.is_file() and os.access(binary, os.X_OK), f"no tug binary at {binary}")
    return binary


def require_tools() -> None:
    require(os.geteuid() == 0, "image tests need root (layers keep ownership and overlay whiteouts)")
    for tool in ("docker-registry", "skopeo", "umoci", "openssl", "htpasswd"):
        require(shutil.which(tool) is not None, f"{tool} not installed (scripts/install-test-deps.sh)")
    require(Path("/bin/busybox").is_file(), "busybox-static not installed (scripts/install-test-deps.sh)")


def run_checked(*args) -> None:
    """Runs a setup command; a failure shows its output."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{args[0]} failed ({result.returncode}): {result.stderr[-3000:]}{result.stdout[-1000:]}")


@dataclass
class Registry:
    address: str
    process: subprocess.Popen
    log: Path
    ca_file: Path | None = None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_registry(workdir: Path, tls: tuple[Path, Path] | None = None, htpasswd: Path | None = None) -> Registry:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = [
        "version: 0.1",
        "log: {level: warn}",
        f"storage: {{filesystem: {{rootdirectory: {workdir / 'data'}}}, delete: {{enabled: true}}}}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if tls:
        config += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
    if htpasswd:
        config += ["auth:", "  htpasswd:", "    realm: tugboat-test", f"    path: {htpasswd}"]
    (workdir / "config.yml").write_text("\n".join(config) + "\n")
    log = workdir / "registry.log"
    process = subprocess.Popen(
        ["docker-registry", "serve", str(workdir / "config.yml")],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )

    def listening():
        if process.poll() is not None:
            pytest.fail(f"docker-registry exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, "docker-registry to listen", timeout=20)
    return Registry(f"127.0.0.1:{port}", process, log)


def make_tls(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, server.crt, server.key)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = workdir / "ca.key", workdir / "ca.crt"
    key, csr, crt, ext = workdir / "server.key", workdir / "server.csr", workdir / "server.crt", workdir / "ext.cnf"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args):
        run_checked("openssl", *args)

    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-subj", "/CN=tugboat test CA", "-days", "2")
    run("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial", "-out", crt,
        "-days", "2", "-extfile", ext)
    return ca_crt, crt, key


@pytest.fixture(scope="module")
def test_images(tmp_path_factory) -> Path:
    require_tools()
    layout = tmp_path_factory.mktemp("test-images") / "oci"
    run_checked(BUILD_SCRIPT, "--out", layout)
    return layout


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory, test_images):
    registry = start_registry(tmp_path_factory.mktemp("plain-registry"))
    try:
        run_checked(BUILD_SCRIPT, "--out", test_images, "--push", registry.address)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory, test_images):
    workdir = tmp_path_factory.mktemp("auth-registry")
    ca, crt, key = make_tls(workdir / "tls")
    htpasswd = workdir / "htpasswd"
    run_checked("htpasswd", "-Bbc", htpasswd, USER, PASSWORD)
    registry = start_registry(workdir / "registry", tls=(crt, key), htpasswd=htpasswd)
    registry.ca_file = ca
    cert_dir = workdir / "certs.d"
    cert_dir.mkdir()
    shutil.copy(ca, cert_dir / "ca.crt")
    try:
        run_checked(BUILD_SCRIPT, "--out", test_images, "--push", registry.address,
                    "--creds", f"{USER}:{PASSWORD}", "--cert-dir", cert_dir)
        yield registry
    finally:
        registry.stop()


class Images:
    """`tug images ...` on one data directory."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.store = data_dir / "agent" / "images"

    def run(self, *args, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tug_binary(), "images", *map(str, args), "--data-dir", self.data_dir],
            capture_output=True, text=True, input=input, timeout=60,
        )

    def ok(self, *args, input: str | None = None) -> str:
        result = self.run(*args, input=input)
        assert result.returncode == 0, f"tug images {args} failed: {result.stderr}"
        return result.stdout

    def ls(self) -> dict[str, dict]:
        return {image["name"]: image for image in json.loads(self.ok("ls", "-o", "json"))["images"]}

    def layer_dirs(self, name: str) -> list[Path]:
        return [self.store / "layers" / "sha256" / d.split(":", 1)[1] for d in self.ls()[name]["layers"]]


@pytest.fixture
def images(tmp_path) -> Images:
    return Images(tmp_path / "data")


def layout_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    return next(m["digest"] for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)


def test_pull_from_a_plain_http_loopback_registry_stores_an_unpacked_busybox(images, plain_registry, test_images):
    ref = f"{plain_registry.address}/{REPO}:1"
    out = images.ok("pull", ref)
    assert ref in out
    image = images.ls()[ref]
    assert image["repoDigest"] == f"{plain_registry.address}/{REPO}@{layout_digest(test_images, '1')}"
    [layer] = images.layer_dirs(ref)
    busybox = layer / "bin" / "busybox"
    assert busybox.is_file() and os.access(busybox, os.X_OK)
    for applet in ("sh", "httpd", "nc", "nslookup", "wget", "sleep"):
        assert os.readlink(layer / "bin" / applet) == "busybox"
    assert (layer / "tmp").stat().st_mode & 0o7777 == 0o1777
    table = images.ok("ls").splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "DIGEST", "IMAGE", "ID", "SIZE"]
    assert table[1].split()[:2] == [f"{plain_registry.address}/{REPO}", "1"]
    # A second pull of the same image changes nothing and succeeds.
    images.ok("pull", ref)
    assert images.ls()[ref] == image


def test_a_multi_arch_index_resolves_to_the_linux_amd64_image(images, plain_registry, test_images):
    single, multi = f"{plain_registry.address}/{REPO}:1", f"{plain_registry.address}/{REPO}:multi"
    images.ok("pull", single)
    images.ok("pull", multi)
    listed = images.ls()
    assert listed[multi]["id"] == listed[single]["id"], "the amd64 entry, not the arm64 decoy"
    assert listed[multi]["manifest"] == layout_digest(test_images, "1")
    assert listed[multi]["repoDigest"].endswith("@" + layout_digest(test_images, "multi"))


def test_docker_v2_schema_2_images_pull_too(images, plain_registry):
    oci, docker = f"{plain_registry.address}/{REPO}:1", f"{plain_registry.address}/{REPO}:v2s2"
    images.ok("pull", oci)
    images.ok("pull", docker)
    manifest = images.store / "blobs" / "sha256" / images.ls()[docker]["manifest"].split(":", 1)[1]
    assert json.loads(manifest.read_text())["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    [layer] = images.layer_dirs(docker)
    assert os.readlink(layer / "bin" / "wget") == "busybox"
    assert images.layer_dirs(docker) == images.layer_dirs(oci), "same content, same diffID, unpacked once"


def test_digest_pinned_pull(images, plain_registry, test_images):
    digest = layout_digest(test_images, "1")
    ref = f"{plain_registry.address}/{REPO}@{digest}"
    images.ok("pull", ref)
    assert images.ls()[ref]["manifest"] == digest
    absent = f"{plain_registry.address}/{REPO}@sha256:{'0' * 64}"
    result = images.run("pull", absent)
    assert result.returncode != 0
    assert "not found" in result.stderr
    assert absent not in images.ls()


def test_pull_errors_say_what_went_wrong(images, plain_registry):
    missing = images.run("pull", f"{plain_registry.address}/{REPO}:no-such-tag")
    assert missing.returncode != 0 and "not found" in missing.stderr, missing.stderr
    closed = f"127.0.0.1:{free_port()}"
    unreachable = images.run("pull", f"{closed}/{REPO}:1")
    assert unreachable.returncode != 0 and f"cannot reach registry {closed}" in unreachable.stderr, unreachable.stderr
    invalid = images.run("pull", "Not/A Reference")
    assert invalid.returncode != 0 and "invalid image reference" in invalid.stderr
    assert images.ls() == {}


def test_auth_registry_needs_the_right_password_and_the_ca(images, auth_registry, tmp_path):
    ref = f"{auth_registry.address}/{REPO}:1"
    ca = ["--ca-file", auth_registry.ca_file]

    anonymous = images.run("pull", ref, *ca)
    assert anonymous.returncode != 0 and "unauthorized" in anonymous.stderr, anonymous.stderr
    wrong = images.run("pull", ref, *ca, "--username", USER, "--password", "wrong")
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr, wrong.stderr
    untrusted = images.run("pull", ref, "--username", USER, "--password", PASSWORD)
    assert untrusted.returncode != 0 and "invalid peer certificate" in untrusted.stderr, untrusted.stderr
    assert images.ls() == {}

    images.ok("pull", ref, *ca, "--username", USER, "--password-stdin", input=PASSWORD + "\n")
    assert ref in images.ls()


def test_auth_registry_with_a_dockerconfigjson(images, auth_registry, tmp_path):
    ref = f"{auth_registry.address}/{REPO}:multi"
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {
        "registry.example.com": {"auth": base64.b64encode(b"other:creds").decode()},
        auth_registry.address: {"auth": auth},
    }}))
    images.ok("pull", ref, "--ca-file", auth_registry.ca_file, "--docker-config", config)
    assert ref in images.ls()


def test_rm_forgets_the_image_and_collects_its_content(images, plain_registry):
    single, multi = f"{plain_registry.address}/{REPO}:1", f"{plain_registry.address}/{REPO}:multi"
    images.ok("pull", single)
    images.ok("pull", multi)
    layers = images.layer_dirs(single)
    images.ok("rm", single)
    assert list(images.ls()) == [multi]
    assert all(d.is_dir() for d in layers), "still used by :multi"
    images.ok("rm", multi)
    assert images.ls() == {}
    assert not any(d.exists() for d in layers)
    assert list((images.store / "blobs" / "sha256").iterdir()) == []
    missing = images.run("rm", single)
    assert missing.returncode != 0 and "no such image" in missing.stderr


def test_import_oci_layout_directory_and_archives(images, test_images, tmp_path):
    images.ok("import", test_images, "--name", f"{REPO}:dir")
    oci_archive = tmp_path / "busybox-oci.tar"
    docker_archive = tmp_path / "busybox-docker.tar"
    run_checked("skopeo", "copy", "--quiet", f"oci:{test_images}:1", f"oci-archive:{oci_archive}:1")
    run_checked("skopeo", "copy", "--quiet", f"oci:{test_images}:1", f"docker-archive:{docker_archive}:{REPO}:docker")
    images.ok("import", oci_archive, "--name", f"{REPO}:archive")
    images.ok("import", docker_archive)
    listed = images.ls()
    # "tugboat.test" has a dot: it is the registry host, as Docker reads such names.
    names = {f"{REPO}:{tag}" for tag in ("dir", "archive", "docker")}
    assert set(listed) == names
    assert len({listed[n]["id"] for n in names}) == 1, "the same image config whatever the format"
    [layer] = images.layer_dirs(f"{REPO}:docker")
    assert os.readlink(layer / "bin" / "sh") == "busybox"
    no_name = images.run("import", test_images)
    assert no_name.returncode != 0 and "--name" in no_name.stderr
