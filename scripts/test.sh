#!/usr/bin/env bash
# The project's test command: installs the test dependencies, builds `tug`, runs
# the Rust tests and the end-to-end suite. Exits non-zero if any phase fails.
#
#   scripts/test.sh                 everything (what CI runs)
#   scripts/test.sh -- -k configmap extra arguments after `--` go to pytest
#
# Environment:
#   TUG_SKIP_INSTALL=1   do not run scripts/install-test-deps.sh
#   TUG_SKIP_CARGO_TEST=1  skip the Rust tests (build + e2e only)
#   TUG_SKIP_E2E=1       skip the end-to-end suite
#
# The whole e2e suite runs on the default datastore (SQLite); its API part (the
# files in API_SUITE below) runs again with every server on etcd and on the
# memory store (TUG_E2E_DATASTORE, see tests/e2e/support.py), so that one suite
# holds for every backend.
#
# The binary is built with the dev profile: on 2 cores a release build of the
# workspace takes about 6 minutes against about 2.5 for dev, and the dev profile
# already optimises dependencies (opt-level 1), which is fast enough for e2e.
# The test phases all run even when one fails, so one CI log shows every failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTEST_ARGS=()
while (($#)); do
  case "$1" in
    --) shift; PYTEST_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "test.sh: unknown argument $1 (pytest arguments go after --)" >&2; exit 2 ;;
  esac
done

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

declare -a SUMMARY=()
FAILED=0
TOTAL_START=$SECONDS

# phase NAME CMD...: runs CMD, records its time and result.
phase() {
  local name="$1"; shift
  local start=$SECONDS rc
  printf '\n==> [%s] %s\n' "$name" "$*"
  "$@"
  rc=$?
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    SUMMARY+=("$(printf '%-12s ok      %4ds' "$name" "$took")")
  else
    SUMMARY+=("$(printf '%-12s FAILED  %4ds  (exit %d)' "$name" "$took" "$rc")")
    FAILED=1
  fi
  printf '==> [%s] exit %d after %ds\n' "$name" "$rc" "$took"
  return "$rc"
}

summary() {
  printf '\n==> phase times\n'
  printf '    %s\n' "${SUMMARY[@]}"
  printf '    %-12s         %4ds\n' total "$((SECONDS - TOTAL_START))"
}

if [[ "${TUG_SKIP_INSTALL:-}" != 1 ]]; then
  phase install bash scripts/install-test-deps.sh || { summary; exit 1; }
fi

# One build for the binaries and every test target, so that cargo resolves the
# features once: building the binaries alone leaves out the dev-dependencies'
# features (tokio's test-util), and the test phase would then compile a second
# copy of tokio and everything above it. That second copy is gigabytes of
# target/, and CI machines can be short of disk.
# Incremental compilation only pays on a checkout that is built again; on a
# fresh clone its caches just take disk.
if [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then
  export CARGO_INCREMENTAL=0
fi
phase build cargo build --workspace --bins --tests || { summary; exit 1; }

if [[ "${TUG_SKIP_CARGO_TEST:-}" != 1 ]]; then
  if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests: cargo test --doc does.
    phase unit cargo nextest run --workspace --no-fail-fast --no-tests=warn
    phase doctest cargo test --workspace --doc
  else
    phase unit cargo test --workspace --no-fail-fast
  fi
fi

if [[ "${TUG_SKIP_E2E:-}" != 1 ]]; then
  PYTHON="$ROOT/.tools/venv/bin/python"
  TARGET_DIR="$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  export TUG_BIN="$TARGET_DIR/debug/tug"
  if [[ ! -x "$PYTHON" ]]; then
    echo "test.sh: no venv at .tools/venv: run scripts/install-test-deps.sh" >&2
    SUMMARY+=("$(printf '%-12s FAILED  (no .tools/venv)' e2e)")
    FAILED=1
  elif [[ ! -x "$TUG_BIN" ]]; then
    echo "test.sh: built binary not found at $TUG_BIN" >&2
    SUMMARY+=("$(printf '%-12s FAILED  (no binary at %s)' e2e "$TUG_BIN")")
    FAILED=1
  else
    # pytest exits 5 when it collected no test: that is a failure here too.
    phase e2e "$PYTHON" -m pytest tests/e2e "${PYTEST_ARGS[@]}"
    if ((${#PYTEST_ARGS[@]} == 0)); then
      API_SUITE=(
        tests/e2e/test_kubectl_basic.py tests/e2e/test_kubectl_get.py tests/e2e/test_kubectl_modify.py
        tests/e2e/test_kubectl_describe_explain.py tests/e2e/test_python_client.py
        tests/e2e/test_python_client_resources.py tests/e2e/test_bad_input.py tests/e2e/test_discovery.py
        tests/e2e/test_server_side_apply.py tests/e2e/test_custom_resources.py
        tests/e2e/test_namespace_lifecycle.py tests/e2e/test_garbage_collection.py
      )
      for datastore in etcd memory; do
        phase "e2e-$datastore" env TUG_E2E_DATASTORE="$datastore" "$PYTHON" -m pytest "${API_SUITE[@]}"
      done
    fi
  fi
fi

summary
exit "$FAILED"
