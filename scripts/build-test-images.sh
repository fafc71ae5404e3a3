#!/usr/bin/env bash
# Builds the project's test images from Debian's busybox-static into an OCI image layout, and
# optionally pushes them to a registry. Needs root (umoci keeps file ownership), umoci, skopeo,
# busybox-static and python3 (scripts/install-test-deps.sh installs them).
#
#   scripts/build-test-images.sh --out DIR
#       builds DIR (an OCI layout) with these images:
#         busybox:1      one layer: /bin/busybox plus a symlink per applet (sh, httpd, nc,
#                        nslookup, wget, sleep, cat, echo, ...), /etc/passwd and /etc/group,
#                        /tmp; Cmd ["sh"], Env PATH, linux/amd64
#         busybox:multi  an image index: the busybox:1 manifest for linux/amd64 beside a decoy
#                        linux/arm64 manifest whose config sets Cmd ["wrong-platform"]
#       Rebuilds only when DIR lacks them (delete DIR to force a rebuild).
#   scripts/build-test-images.sh --out DIR --push REGISTRY [--creds USER:PASS] [--cert-dir DIR]
#       also copies them to REGISTRY (host:port) as tugboat.test/busybox:1,
#       tugboat.test/busybox:multi and tugboat.test/busybox:v2s2 (busybox:1 with Docker v2
#       schema 2 media types; gzip layer, so its digests differ from :1's). Plain HTTP unless --cert-dir names a directory holding the
#       registry's CA as *.crt (skopeo's certs.d layout).
set -euo pipefail

OUT=""
PUSH=""
CREDS=""
CERT_DIR=""
while (($#)); do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --push) PUSH="$2"; shift 2 ;;
    --creds) CREDS="$2"; shift 2 ;;
    --cert-dir) CERT_DIR="$2"; shift 2 ;;
    *) echo "usage: $0 --out DIR [--push REGISTRY [--creds USER:PASS] [--cert-dir DIR]]" >&2; exit 2 ;;
  esac
done
[[ -n "$OUT" ]] || { echo "$0: --out DIR is required" >&2; exit 2; }

log() { printf '[build-test-images] %s\n' "$*" >&2; }
for tool in umoci skopeo python3; do
  command -v "$tool" >/dev/null || { log "error: $tool not found (run scripts/install-test-deps.sh)"; exit 1; }
done
BUSYBOX=/bin/busybox
[[ -x "$BUSYBOX" ]] && "$BUSYBOX" --list >/dev/null 2>&1 || { log "error: $BUSYBOX (busybox-static) missing"; exit 1; }

build() {
  local work bundle
  work="$(mktemp -d "${TMPDIR:-/tmp}/tug-test-images.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  rm -rf "$OUT"
  umoci init --layout "$OUT"
  umoci new --image "$OUT:1"
  bundle="$work/bundle"
  umoci unpack --image "$OUT:1" "$bundle" >/dev/null
  local rootfs="$bundle/rootfs"
  mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root" "$rootfs/var/www"
  chmod 1777 "$rootfs/tmp"
  install -m 0755 "$BUSYBOX" "$rootfs/bin/busybox"
  local applet
  for applet in $("$BUSYBOX" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
  echo "tugboat test image" >"$rootfs/var/www/index.html"
  umoci repack --image "$OUT:1" "$bundle" >/dev/null
  umoci config --image "$OUT:1" --os linux --architecture amd64 \
    --config.cmd sh --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.workingdir / >/dev/null
  umoci gc --layout "$OUT"
  make_index "$OUT"
}

# Adds "multi": an index of the amd64 image and a decoy arm64 image sharing its layers.
make_index() {
  python3 - "$1" <<'PY'
import hashlib, json, os, sys

layout = sys.argv[1]
blobs = os.path.join(layout, "blobs", "sha256")

def read(digest):
    with open(os.path.join(blobs, digest.split(":", 1)[1]), "rb") as f:
        return f.read()

def write(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest.split(":", 1)[1]), "wb") as f:
        f.write(data)
    return digest

with open(os.path.join(layout, "index.json")) as f:
    index = json.load(f)
amd64 = next(m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "1")
manifest = json.loads(read(amd64["digest"]))
config = json.loads(read(manifest["config"]["digest"]))
config["architecture"] = "arm64"
config["config"]["Cmd"] = ["wrong-platform"]
config_bytes = json.dumps(config).encode()
manifest["config"] = {"mediaType": manifest["config"]["mediaType"], "digest": write(config_bytes), "size": len(config_bytes)}
arm64_bytes = json.dumps(manifest).encode()
arm64 = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": write(arm64_bytes), "size": len(arm64_bytes),
         "platform": {"architecture": "arm64", "os": "linux"}}
amd64_entry = {k: amd64[k] for k in ("mediaType", "digest", "size")}
amd64_entry["platform"] = {"architecture": "amd64", "os": "linux"}
multi = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [arm64, amd64_entry]}
multi_bytes = json.dumps(multi).encode()
index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": write(multi_bytes),
                           "size": len(multi_bytes), "annotations": {"org.opencontainers.image.ref.name": "multi"}})
with open(os.path.join(layout, "index.json") + ".tmp", "w") as f:
    json.dump(index, f)
os.replace(os.path.join(layout, "index.json") + ".tmp", os.path.join(layout, "index.json"))
PY
}

if [[ -f "$OUT/index.json" ]] && grep -q '"multi"' "$OUT/index.json"; then
  log "test images present in $OUT"
else
  log "building test images in $OUT"
  build
fi

if [[ -n "$PUSH" ]]; then
  args=(--quiet)
  if [[ -n "$CERT_DIR" ]]; then
    args+=(--dest-cert-dir "$CERT_DIR")
  else
    args+=(--dest-tls-verify=false)
  fi
  [[ -n "$CREDS" ]] && args+=(--dest-creds "$CREDS")
  log "pushing to $PUSH"
  skopeo copy "${args[@]}" "oci:$OUT:1" "docker://$PUSH/tugboat.test/busybox:1"
  skopeo copy --all "${args[@]}" "oci:$OUT:multi" "docker://$PUSH/tugboat.test/busybox:multi"
  # The same image with Docker v2 schema 2 media types, as Docker Hub serves most images.
  skopeo copy --format v2s2 "${args[@]}" "oci:$OUT:1" "docker://$PUSH/tugboat.test/busybox:v2s2"
fi
