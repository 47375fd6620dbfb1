#!/usr/bin/env bash
# Builds .venv-compat: SAELens 6 and eai-sparsify, the peers of the SAE file-format tests, pinned in
# launch/compat_requirements.txt (they cannot share .venv-bench, whose SAELens 5.5.2 they would replace).
exec bash "$(dirname "${BASH_SOURCE[0]}")/peer_env.sh" compat "torch 2.13.0+cpu, sae-lens 6.54.12, eai-sparsify 1.3.3" <<'PY'
import torch, sae_lens, sparsify  # noqa: F401
from importlib.metadata import version
assert torch.__version__ == "2.13.0+cpu", f"compat venv has torch {torch.__version__}, expected the 2.13.0+cpu wheel"
assert sae_lens.__version__ == "6.54.12", sae_lens.__version__
assert version("eai-sparsify") == "1.3.3", version("eai-sparsify")
PY
