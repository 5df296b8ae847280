#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need,
# checks formatting and lints, then runs every test (unit, property and
# integration tests with real ringkv processes on loopback or in network
# namespaces, and the status page in headless Chromium). Needs root for the
# namespaces (CI has it).
# The last lines printed are the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The status page test drives headless Chromium through chromedriver; the
# partition tests put nodes in network namespaces (iproute2, and root).
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# tests/deploy.rs: the systemd unit (systemd-analyze), the container image
# (podman; runc where crun cannot run here), the Kubernetes manifest (YAML).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
# The Redis protocol tests drive redis-cli (and benchmarks redis-benchmark).
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# tests/security.rs sends requests with the real curl.
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]}…"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
# redis-py, for tests/resp.rs, in a virtual environment of its own.
if ! target/redis-venv/bin/python -c 'import redis' >/dev/null 2>&1; then
  echo "installing redis-py in target/redis-venv…"
  mkdir -p target
  python3 -m venv target/redis-venv
  target/redis-venv/bin/pip install -q redis
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest…"
  cargo install --locked cargo-nextest
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo nextest"
cargo nextest run --locked --workspace --all-targets --profile ci
