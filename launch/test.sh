#!/usr/bin/env bash
# Set up from scratch if needed, then run the whole test suite (8 fake CPU devices, offline).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
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
