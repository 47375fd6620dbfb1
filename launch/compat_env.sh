#!/usr/bin/env bash
# Builds .venv-compat: SAELens 6 and eai-sparsify, the peers of the SAE file-format tests, pinned in
# launch/compat_requirements.txt (they cannot share .venv-bench, whose SAELens 5.5.2 they would replace). CPU torch
# only: the install fails if pip picked anything but the local 2.13.0+cpu wheel. Safe to re-run: skipped while the
# pins are unchanged.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${COMPAT_VENV:-$REPO/.venv-compat}"
PY="${PYTHON:-python3.11}"
REQ="launch/compat_requirements.txt"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[compat_env] creating $VENV"
  "$PY" -m venv "$VENV"
  echo "*" > "$VENV/.gitignore"
fi
stamp="$VENV/.compat_installed"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[compat_env] installing $REQ (a few minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" - <<'PY'
import torch, sae_lens, sparsify  # noqa: F401
from importlib.metadata import version
assert torch.__version__ == "2.13.0+cpu", f"compat venv has torch {torch.__version__}, expected the 2.13.0+cpu wheel"
assert sae_lens.__version__ == "6.54.12", sae_lens.__version__
assert version("eai-sparsify") == "1.3.3", version("eai-sparsify")
PY
  echo "$want" > "$stamp"
fi
echo "[compat_env] ready: $VENV/bin/python (torch 2.13.0+cpu, sae-lens 6.54.12, eai-sparsify 1.3.3)"
