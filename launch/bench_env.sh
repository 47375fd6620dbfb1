#!/usr/bin/env bash
# Builds .venv-bench: the real peers of launch/bench.py that cannot live in .venv (SAELens 5.5.2 pins
# transformers < 5 and numpy < 2), pinned in launch/bench_requirements.txt. CPU torch only: the install
# fails if pip picked anything but the local 2.13.0+cpu wheel. Safe to re-run: skipped while the pins are unchanged.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${BENCH_VENV:-$REPO/.venv-bench}"
PY="${PYTHON:-python3.11}"
REQ="launch/bench_requirements.txt"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bench_env] creating $VENV"
  "$PY" -m venv "$VENV"
  echo "*" > "$VENV/.gitignore"
fi
stamp="$VENV/.bench_installed"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bench_env] installing $REQ (a few minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" 2>&1 | grep -v "^WARNING: Location" || true
  WANDB_MODE=disabled "$VENV/bin/python" - <<'PY'
import torch, sae_lens
from sae_lens.training.sae_trainer import SAETrainer  # noqa: F401  (what bench/saelens_worker.py runs)
assert torch.__version__ == "2.13.0+cpu", f"bench venv has torch {torch.__version__}, expected the 2.13.0+cpu wheel"
assert sae_lens.__version__ == "5.5.2", sae_lens.__version__
from importlib.metadata import version
assert version("transformer-lens") == "2.17.0", version("transformer-lens")
PY
  echo "$want" > "$stamp"
fi
echo "[bench_env] ready: $VENV/bin/python (torch 2.13.0+cpu, sae-lens 5.5.2)"
