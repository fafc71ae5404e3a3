"""The container runtime on a cgroup v2 host, as Debian 12 and every current distribution run.

This machine's own layout is v1 (hybrid: its v2 mount has no controllers, and the memory
controller is held by the machine's own v1 hierarchy), which no test may change. So the test
boots Debian 12's kernel (fetched by scripts/install-test-deps.sh) under qemu with a cgroup v2
hierarchy, every controller enabled for the root's children as systemd leaves it, and this
machine's files shared read-only (tests/e2e/vm/init), and runs there the runtime's cgroup
tests and its container tests: pod cgroups with cpu, memory and pids limits (cpu.weight,
cpu.max, memory.max, pids.max), processes killed by removing their cgroup, a sandbox joining
its pod cgroup, a container over its memory limit reported OOMKilled from memory.events. Then
`tug server` with its node agent runs pods there, driven by kubectl: limits land in the pod's
cgroup, the pod's cgroup itself holds no process (v2 lets a cgroup hold processes or give
controllers to children, not both: the pause process has a cgroup of its own below it), a
container over its limit is OOMKilled, and the agent's resource metrics come from the v2 files.

qemu emulates the CPU (TCG): this machine is itself a VM and nested KVM hangs at boot.
The shim's own exec tests are left out in the VM: they fail there with v1 hierarchies as well
(their fixture's exec does not find the container's files), while `kubectl exec` through the
node agent works there (tested below); they run on this machine with the rest of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from registry import run_checked, test_images, tug_binary  # noqa: F401
from support import REPO_ROOT, TOOLS_BIN, require

QEMU = "qemu-system-x86_64"
KERNEL = REPO_ROOT / ".tools" / "vm" / "kernel"
INIT = Path(__file__).parent / "vm" / "init"
MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]

# The VM emulates its CPU: booting, the runtime's tests and a node with two pods take a while.
pytestmark = pytest.mark.timeout(600)


def built_tests(package: str) -> dict[str, Path]:
    """The test executables of `package` by target name, as the suite's build made them: asked
    of the whole workspace, as scripts/test.sh builds it, so that cargo resolves the same
    features and has nothing to rebuild."""
    out = subprocess.run(
        ["cargo", "test", "--workspace", "--no-run", "--message-format=json"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = {}
    for line in out.stdout.splitlines():
        message = json.loads(line)
        # A package id reads "path+file:///.../crates/runtime#tug-runtime@0.1.0".
        name = message.get("package_id", "").rsplit("#", 1)[-1].split("@")[0]
        if message.get("reason") == "compiler-artifact" and message.get("executable") and name == package:
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


def boot(work: Path, script: str, binds: list[Path], timeout: float = 480) -> str:
    """Runs `script` (sh) in the VM with `work` shared read-write at the same path and `binds`
    visible read-only at theirs (the VM has a fresh /tmp and /run); the console."""
    run = work / "run.sh"
    run.write_text(script)
    bind = ",".join(sorted({str(p) for p in binds}))
    assert not any(c in bind for c in " \t\n"), f"paths the kernel command line cannot carry: {bind}"
    console = subprocess.run(
        [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "2048", "-smp", "2",
         "-nographic", "-no-reboot", "-kernel", str(KERNEL / "vmlinuz"), "-initrd", str(initramfs(work)),
         "-append", f"console=ttyS0 panic=-1 quiet tug.run={run} tug.work={work} tug.bind={bind}",
         "-fsdev", "local,id=host,path=/,security_model=passthrough,readonly=on",
         "-device", "virtio-9p-pci,fsdev=host,mount_tag=hostroot",
         "-fsdev", f"local,id=work,path={work},security_model=passthrough",
         "-device", "virtio-9p-pci,fsdev=work,mount_tag=work"],
        capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    text = console.stdout.decode("utf-8", "replace")
    (work / "console.log").write_text(text)
    return text


PODS = """
apiVersion: v1
kind: Pod
metadata: {name: oom}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: tugboat.test/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "x=$(yes | head -c 64000000); echo survived"]
    resources: {limits: {memory: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: limited}
spec:
  containers:
  - name: c
    image: tugboat.test/busybox:1
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    resources: {limits: {cpu: 250m, memory: 32Mi}, requests: {cpu: 100m, memory: 32Mi}}
"""


def node_script(work: Path, tug: Path) -> str:
    """A node on the VM: `tug server` with its agent (loopback only, no pod network), the busybox
    image imported, the PODS applied; what kubectl and the cgroup files then say, into `work`."""
    kubectl = f"{TOOLS_BIN / 'kubectl-1.36'} --kubeconfig /tmp/node/kubeconfig.yaml"
    return f"""
W={work}
K="{kubectl}"
{tug} images import -d /tmp/node $W/busybox.tar > $W/import.log 2>&1
{tug} server --data-dir /tmp/node --node-name tug-vm --node-ip 127.0.0.1 --flannel-backend none \
  --disable-kube-proxy --eviction-hard 'memory.available<10Mi,nodefs.available<1%,imagefs.available<1%' \
  > $W/server.log 2>&1 &
for i in $(seq 1 240); do $K get nodes 2>/dev/null | grep -q ' Ready' && break; sleep 0.5; done
$K apply -f $W/pods.yaml > $W/apply.log 2>&1
for i in $(seq 1 240); do
  [ "$($K get pod oom -o jsonpath='{{.status.phase}}')" = Failed ] &&
    [ "$($K get pod limited -o jsonpath='{{.status.phase}}')" = Running ] && break
  sleep 0.5
done
$K get pod oom -o json > $W/oom.json
$K get pod limited -o json > $W/limited.json
pod=/sys/fs/cgroup/kubepods/burstable/pod$($K get pod limited -o jsonpath='{{.metadata.uid}}')
for f in cpu.max memory.max cgroup.procs; do echo "$f=$(cat $pod/$f | tr '\n' ' ')"; done > $W/pod-cgroup
for d in $pod/*/; do echo "$(basename $d) procs=$(cat $d/cgroup.procs | wc -l) memory.max=$(cat $d/memory.max)"; done \
  > $W/pod-children
$K exec limited -- sh -c 'echo exec in $(hostname); exit 3' > $W/exec.out 2> $W/exec.err; echo $? > $W/exec.rc
for i in $(seq 1 60); do
  $K get --raw /api/v1/nodes/tug-vm/proxy/metrics/resource > $W/metrics 2>&1
  grep -q '^container_memory_working_set_bytes{{container="c",namespace="default",pod="limited"}}' $W/metrics && break
  sleep 1
done
"""


@pytest.fixture(scope="module")
def vm_run(tmp_path_factory, test_images):  # noqa: F811
    """The runtime's tests and a node with pods, run once in the VM; what they left in `work`."""
    require(os.geteuid() == 0, "the container tests need root")
    require(shutil.which(QEMU) is not None, f"{QEMU} missing: scripts/install-test-deps.sh installs qemu-system-x86")
    require((KERNEL / "vmlinuz").is_file(), f"no VM kernel at {KERNEL}: run scripts/install-test-deps.sh")
    require(shutil.which("cargo") is not None, "cargo is needed to find the test executables")
    require((TOOLS_BIN / "kubectl-1.36").is_file(), f"no kubectl-1.36 in {TOOLS_BIN}")
    binaries = built_tests("tug-runtime")
    work = tmp_path_factory.mktemp("cgroup-v2-vm")
    run_checked("skopeo", "copy", f"oci:{test_images}:1", f"oci-archive:{work / 'busybox.tar'}:tugboat.test/busybox:1")
    (work / "pods.yaml").write_text(PODS)
    tug = tug_binary()
    script = f"""
cat /sys/fs/cgroup/cgroup.controllers > {work}/controllers
stat -f -c %T /sys/fs/cgroup > {work}/fstype
export CI=true TUG_BIN={tug}
{binaries["tug_runtime"]} cgroups:: shim:: --test-threads 1 > {work}/lib.log 2>&1; echo $? > {work}/lib.rc
{binaries["shim"]} --test-threads 1 --skip exec_ > {work}/shim.log 2>&1; echo $? > {work}/shim.rc
{node_script(work, tug)}
"""
    binds = [REPO_ROOT, tug.parent, *(b.parent for b in binaries.values())]
    console = boot(work, script, binds)
    assert "TUG-VM-ERROR" not in console, console[-5000:]
    assert "TUG-VM-EXIT=" in console, f"the VM did not finish:\n{console[-5000:]}"

    def result(name: str) -> tuple[int, str]:
        rc, log = work / f"{name}.rc", work / f"{name}.log"
        assert rc.exists(), f"the VM did not run the {name} tests:\n{console[-3000:]}"
        return int(rc.read_text()), log.read_text()

    return work, result


def passed(log: str) -> set[str]:
    return {line.split()[1] for line in log.splitlines() if line.startswith("test ") and line.endswith(" ... ok")}


def test_the_vm_runs_on_cgroup_v2_with_the_controllers_the_runtime_uses(vm_run):
    work, _ = vm_run
    assert (work / "fstype").read_text().strip() == "cgroup2fs"
    assert {"cpu", "memory", "pids", "cpuset", "io"} <= set((work / "controllers").read_text().split())


def test_pod_cgroups_get_their_limits_and_are_removed_on_cgroup_v2(vm_run):
    _, result = vm_run
    rc, log = result("lib")
    assert rc == 0, log[-5000:]
    assert "cgroups::tests::pod_cgroup_is_created_with_limits_and_removed_with_its_processes" in passed(log), log


def test_containers_run_and_are_oom_killed_on_cgroup_v2(vm_run):
    _, result = vm_run
    rc, log = result("shim")
    assert rc == 0, log[-5000:]
    ok = passed(log)
    for test in [
        "a_container_over_its_memory_limit_is_reported_oom_killed",
        "a_sandbox_holds_namespaces_that_containers_join",
        "container_output_is_logged_in_cri_format_and_its_exit_code_recorded",
        "a_container_killed_from_outside_exits_137_by_signal_9",
    ]:
        assert test in ok, log


def server_log(work: Path) -> str:
    log = work / "server.log"
    return log.read_text(errors="replace")[-5000:] if log.exists() else "(no server log)"


def test_pods_run_with_their_limits_in_the_pods_cgroup_on_cgroup_v2(vm_run):
    work, _ = vm_run
    limited = json.loads((work / "limited.json").read_text())
    assert limited["status"]["phase"] == "Running", (limited["status"], server_log(work))
    # 250m of CPU is 25 ms per 100 ms period; 32Mi of memory.
    pod = dict(line.split("=", 1) for line in (work / "pod-cgroup").read_text().splitlines())
    assert pod["cpu.max"].strip() == "25000 100000", pod
    assert pod["memory.max"].strip() == str(32 << 20), pod
    # The pod's cgroup holds no process itself: the pause process and the container each
    # have a cgroup below it, the container's with the container's limit.
    assert pod["cgroup.procs"].strip() == "", pod
    children = (work / "pod-children").read_text().splitlines()
    assert len(children) == 2, children
    assert all("procs=1" in child for child in children), children
    assert any(f"memory.max={32 << 20}" in child for child in children), children


def test_a_container_over_its_memory_limit_is_oom_killed_on_cgroup_v2(vm_run):
    work, _ = vm_run
    oom = json.loads((work / "oom.json").read_text())
    assert oom["status"]["phase"] == "Failed", (oom["status"], server_log(work))
    terminated = oom["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137), terminated


def test_exec_reaches_a_container_on_cgroup_v2(vm_run):
    work, _ = vm_run
    assert (work / "exec.out").read_text() == "exec in limited\n"
    assert (work / "exec.rc").read_text().strip() == "3"


def test_resource_metrics_come_from_the_v2_files(vm_run):
    work, _ = vm_run
    metrics = (work / "metrics").read_text()
    samples = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition(" ")
            samples[name] = float(rest.split()[0])
    memory = samples.get('container_memory_working_set_bytes{container="c",namespace="default",pod="limited"}')
    assert memory is not None and 0 < memory < 32 << 20, metrics[-3000:]
    cpu = samples.get('pod_cpu_usage_seconds_total{namespace="default",pod="limited"}')
    assert cpu is not None and cpu > 0, metrics[-3000:]
