"""`tug images pull/ls/rm/import` against real registries: Debian's docker-registry on
loopback ports, one plain HTTP and anonymous, one HTTPS (a CA made here) behind htpasswd basic
auth, both filled by scripts/build-test-images.sh with the busybox test images.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from support import free_port

# The registry fixtures are used by name in the tests below.
from registry import (  # noqa: F401
    PASSWORD,
    REPO,
    USER,
    auth_registry,
    plain_registry,
    run_checked,
    test_images,
    tug_binary,
)


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
