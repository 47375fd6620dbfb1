#!/usr/bin/env bash
# Builds .venv-bench: the real peers of launch/bench.py and of the packing tests that cannot live in .venv
# (SAELens 5.5.2 pins transformers < 5 and numpy < 2; TransformerLens 2.17), pinned in launch/bench_requirements.txt.
exec bash "$(dirname "${BASH_SOURCE[0]}")/peer_env.sh" bench "torch 2.13.0+cpu, sae-lens 5.5.2" <<'PY'
import torch, sae_lens
from sae_lens.training.sae_trainer import SAETrainer  # noqa: F401  (what bench/saelens_worker.py runs)
assert torch.__version__ == "2.13.0+cpu", f"bench venv has torch {torch.__version__}, expected the 2.13.0+cpu wheel"
assert sae_lens.__version__ == "5.5.2", sae_lens.__version__
from importlib.metadata import version
assert version("transformer-lens") == "2.17.0", version("transformer-lens")
PY
