"""Test images and local registries shared by the image and node agent tests: Debian's
docker-registry on loopback ports (plain HTTP and anonymous, or HTTPS with a CA made here behind
htpasswd basic auth), filled by scripts/build-test-images.sh with the busybox test images.
"""

from __future__ import annotations

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


def pause_image(test_images: Path, workdir: Path) -> Path:
    """An OCI layout whose image tagged `pause` is a CRI runtime's sandbox ("pause") image: it
    only has to stay up, so the busybox image sleeping."""
    layout = workdir / "oci"
    shutil.copytree(test_images, layout)
    run_checked("umoci", "config", "--image", f"{layout}:1", "--tag", "pause",
                "--clear=config.cmd", "--config.cmd", "sleep", "--config.cmd", "2147483647")  # fmt: skip
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
