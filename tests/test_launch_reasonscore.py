"""launch/reason_score.py end to end on SmolLM2: one pass, every feature scored, clear errors."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO
from sae_jax.sae import SAEConfig, init_sae_params, save_saelens


def _sae(path, d_in):
  import jax
  cfg = SAEConfig(d_in=d_in, d_sae=256, hook_layer=5, exclude_special_tokens=(1, 2))
  params = jax.tree.map(np.asarray, init_sae_params(cfg, jax.random.key(0)))
  params["b_enc"] = params["b_enc"] - 0.5  # the heuristic init fires everywhere; make it selective
  return save_saelens(str(path), params, cfg)


def _run(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "reason_score.py"), "--dtype=float32",
                         "--data=demo#n=12", "--context_size=64", "--packing=clean", "--n_rows=0",
                         "--batch_rows=4", "--top_k=5", "--verbosity=-1", *args],
                        capture_output=True, text=True, env=env, timeout=300)


def test_scores_every_feature(assets, tmp_path):
  sae = _sae(tmp_path / "sae", 576)
  proc = _run(f"--model={assets.smollm2_hf}", f"--sae={sae}", f"--out={tmp_path / 'rs'}")
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["features"] == 256 and len(report["top"]) == 5
  top = json.load(open(tmp_path / "rs" / "top_k.json"))
  assert [t["feature"] for t in top] == [t["feature"] for t in report["top"]]
  assert len(top[0]["words"]) == 10  # the paper's ten word groups
  scores = np.load(tmp_path / "rs" / "scores.npy")
  assert scores.shape == (256,) and np.all(np.isfinite(scores)) and scores[top[0]["feature"]] == scores.max()
  assert os.path.exists(tmp_path / "rs" / "run.json")


def test_errors(assets, tmp_path):
  sae = _sae(tmp_path / "sae", 64)
  proc = _run(f"--model={assets.smollm2_hf}", f"--sae={sae}", f"--out={tmp_path / 'rs'}")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "SAE d_in 64 != model width 576" in proc.stderr.strip().splitlines()[-1]
  sae = _sae(tmp_path / "sae576", 576)
  vocab = tmp_path / "vocab.json"
  vocab.write_text(json.dumps(["Wait", ""]))
  proc = _run(f"--model={assets.smollm2_hf}", f"--sae={sae}", f"--out={tmp_path / 'rs'}", f"--vocab={vocab}")
  assert proc.returncode != 0 and "tokenizes to no ids" in proc.stderr.strip().splitlines()[-1]
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  proc = _run(f"--model={assets.smollm2_hf}", f"--sae={sae}", f"--out={tmp_path / 'rs'}", f"--data={empty}")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error:")
