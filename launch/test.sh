#!/usr/bin/env bash
# Set up from scratch if needed, then run the whole test suite (8 fake CPU devices, offline).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Peer packages that cannot share .venv (SAELens 5.5.2, TransformerLens 2.17): tests call them in .venv-bench.
bash launch/bench_env.sh
# SAELens 6 and sparsify (the SAE file-format round trips) cannot share either: tests call them in .venv-compat.
bash launch/compat_env.sh
# The dashboard test renders a page in headless Chromium (Debian package).
if ! command -v chromium > /dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "[test] installing chromium (Debian package) for the dashboard rendering test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null) \
      || echo "[test] warning: could not install chromium; the dashboard test will fail" >&2
  else
    echo "[test] warning: chromium is missing (sudo apt-get install chromium); the dashboard test will fail" >&2
  fi
fi
export XLA_FLAGS="--xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu
set +e
.venv/bin/python -m pytest -q tests "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$code"
