"""The container runtime on a cgroup v2 host, as Debian 12 and every current distribution run.

This machine's own layout is v1 (hybrid: its v2 mount has no controllers, and the memory
controller is held by the machine's own v1 hierarchy), which no test may change. So the test
boots Debian 12's kernel (fetched by scripts/install-test-deps.sh) under qemu with a cgroup v2
hierarchy, every controller enabled for the root's children as systemd leaves it, and this
machine's files shared read-only (tests/e2e/vm/init), and runs there the runtime's cgroup
tests and its container tests: pod cgroups with cpu, memory and pids limits (cpu.weight,
cpu.max, memory.max, pids.max), processes killed by removing their cgroup, a sandbox joining
its pod cgroup, a container over its memory limit reported OOMKilled from memory.events.

qemu emulates the CPU (TCG): this machine is itself a VM and nested KVM hangs at boot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from registry import tug_binary
from support import REPO_ROOT, require

QEMU = "qemu-system-x86_64"
KERNEL = REPO_ROOT / ".tools" / "vm" / "kernel"
INIT = Path(__file__).parent / "vm" / "init"
MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]


def built_tests(package: str) -> dict[str, Path]:
    """The test executables of `package` by target name, as cargo built them."""
    out = subprocess.run(
        ["cargo", "test", "-p", package, "--no-run", "--message-format=json"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = {}
    for line in out.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable") and message["profile"]["test"]:
            found[message["target"]["name"]] = Path(message["executable"])
    return found


def initramfs(work: Path) -> Path:
    """busybox, the modules the VM loads (with their dependencies) and our init, as a cpio."""
    root = work / "initramfs"
    for d in ["bin", "proc", "sys", "dev", "host", "newroot"]:
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    shutil.copy(INIT, root / "init")
    (root / "init").chmod(0o755)
    (version,) = [p.name for p in (KERNEL / "lib" / "modules").iterdir()]
    source, target = KERNEL / "lib" / "modules" / version, root / "lib" / "modules" / version
    deps = {}
    for line in (source / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[Path(module).stem] = [module, *needs.split()]
    for name in MODULES:
        for module in deps[name]:
            (target / module).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / module, target / module)
    shutil.copy(source / "modules.dep", target / "modules.dep")
    image = work / "initramfs.cpio"
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    with image.open("wb") as out:
        subprocess.run(["busybox", "cpio", "-o", "-H", "newc"], cwd=root, input=files, stdout=out,
                       stderr=subprocess.DEVNULL, check=True)  # fmt: skip
    return image


def boot(work: Path, script: str, timeout: float = 600) -> str:
    """Runs `script` (sh) in the VM with `work` shared read-write at the same path; the console."""
    run = work / "run.sh"
    run.write_text(script)
    console = subprocess.run(
        [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "2048", "-smp", "2",
         "-nographic", "-no-reboot", "-kernel", str(KERNEL / "vmlinuz"), "-initrd", str(initramfs(work)),
         "-append", f"console=ttyS0 panic=-1 quiet tug.run={run} tug.work={work}",
         "-fsdev", "local,id=host,path=/,security_model=passthrough,readonly=on",
         "-device", "virtio-9p-pci,fsdev=host,mount_tag=hostroot",
         "-fsdev", f"local,id=work,path={work},security_model=passthrough",
         "-device", "virtio-9p-pci,fsdev=work,mount_tag=work"],
        capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return console.stdout.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def vm_run(tmp_path_factory):
    """The runtime's tests, run once in the VM; their logs and exit codes by name."""
    require(os.geteuid() == 0, "the container tests need root")
    require(shutil.which(QEMU) is not None, f"{QEMU} missing: scripts/install-test-deps.sh installs qemu-system-x86")
    require((KERNEL / "vmlinuz").is_file(), f"no VM kernel at {KERNEL}: run scripts/install-test-deps.sh")
    require(shutil.which("cargo") is not None, "cargo is needed to find the test executables")
    binaries = built_tests("tug-runtime")
    work = tmp_path_factory.mktemp("cgroup-v2-vm")
    tug = tug_binary()
    script = f"""
cat /sys/fs/cgroup/cgroup.controllers > {work}/controllers
stat -f -c %T /sys/fs/cgroup > {work}/fstype
export CI=true TUG_BIN={tug}
{binaries["tug_runtime"]} cgroups:: shim:: --test-threads 1 > {work}/lib.log 2>&1; echo $? > {work}/lib.rc
{binaries["shim"]} --test-threads 1 --skip exec_ > {work}/shim.log 2>&1; echo $? > {work}/shim.rc
"""
    console = boot(work, script)
    assert "TUG-VM-EXIT=0" in console and "TUG-VM-ERROR" not in console, console[-5000:]

    def result(name: str) -> tuple[int, str]:
        rc, log = work / f"{name}.rc", work / f"{name}.log"
        assert rc.exists(), f"the VM did not run the {name} tests:\n{console[-3000:]}"
        return int(rc.read_text()), log.read_text()

    return {
        "fstype": (work / "fstype").read_text().strip(),
        "controllers": (work / "controllers").read_text().split(),
        "lib": result("lib"),
        "shim": result("shim"),
    }


def passed(log: str) -> set[str]:
    return {line.split()[1] for line in log.splitlines() if line.startswith("test ") and line.endswith(" ... ok")}


def test_the_vm_runs_on_cgroup_v2_with_the_controllers_the_runtime_uses(vm_run):
    assert vm_run["fstype"] == "cgroup2fs"
    assert {"cpu", "memory", "pids", "cpuset", "io"} <= set(vm_run["controllers"])


def test_pod_cgroups_get_their_limits_and_are_removed_on_cgroup_v2(vm_run):
    rc, log = vm_run["lib"]
    assert rc == 0, log[-5000:]
    assert "cgroups::tests::pod_cgroup_is_created_with_limits_and_removed_with_its_processes" in passed(log), log


def test_containers_run_and_are_oom_killed_on_cgroup_v2(vm_run):
    rc, log = vm_run["shim"]
    assert rc == 0, log[-5000:]
    ok = passed(log)
    for test in [
        "a_container_over_its_memory_limit_is_reported_oom_killed",
        "a_sandbox_holds_namespaces_that_containers_join",
        "container_output_is_logged_in_cri_format_and_its_exit_code_recorded",
        "a_container_killed_from_outside_exits_137_by_signal_9",
    ]:
        assert test in ok, log
