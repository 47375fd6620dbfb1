# Sourced by demo.sh and test.sh: a .venv with the pinned requirements and the package, offline assets
# built into the cache. Safe to re-run: pip is skipped while requirements.txt and setup.py are unchanged.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SAE_JAX_ASSETS="${SAE_JAX_ASSETS:-$HOME/.cache/sae_jax/assets}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.sae_jax_installed"
want="$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing pinned requirements (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import jax, flax, torch, transformers, sae_jax" \
    || { echo "[setup] error: the environment did not install"; exit 1; }
  echo "$want" > "$stamp"
fi
echo "[setup] building offline assets in $SAE_JAX_ASSETS"
.venv/bin/python -m sae_jax.assets --cache_dir "$SAE_JAX_ASSETS" > /dev/null
