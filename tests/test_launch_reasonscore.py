"""launch/reason_score.py end to end on SmolLM2: one pass, every feature scored, clear errors."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO, collect_cache, selective_sae_dir


CORPUS = ("--config.data.sources=('demo#n=12',)", "--config.data.context_size=64",
          "--config.data.mode=clean")


def _model(path):
  return f"--config.model.path={path}"


def _cache(path):
  return f"--config.activations.cache_dir={path}"


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")


def _run(*args, corpus=CORPUS):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "reason_score.py"),
                         "--config.model.dtype=float32", *corpus, "--config.data.num_rows=0",
                         "--config.data.store_batch_rows=4",
                         "--config.reasonscore.top_k=5", "--verbosity=-1", *args],
                        capture_output=True, text=True, env=_env(), timeout=300)


def _error_line(proc):
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
  return proc.stderr.strip().splitlines()[-1]


def test_scores_every_feature(assets, tmp_path):
  sae = selective_sae_dir(tmp_path / "sae", 576)
  proc = _run(_model(assets.smollm2_hf), f"--sae={sae}", f"--out={tmp_path / 'rs'}")
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
  sae = selective_sae_dir(tmp_path / "sae", 64)
  proc = _run(_model(assets.smollm2_hf), f"--sae={sae}", f"--out={tmp_path / 'rs'}")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "SAE d_in 64 != model width 576" in proc.stderr.strip().splitlines()[-1]
  sae = selective_sae_dir(tmp_path / "sae576", 576)
  vocab = tmp_path / "vocab.json"
  vocab.write_text(json.dumps(["Wait", ""]))
  proc = _run(_model(assets.smollm2_hf), f"--sae={sae}", f"--out={tmp_path / 'rs'}",
              f"--config.reasonscore.vocab={vocab}")
  assert proc.returncode != 0 and "tokenizes to no ids" in proc.stderr.strip().splitlines()[-1]
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  proc = _run(_model(assets.smollm2_hf), f"--sae={sae}", f"--out={tmp_path / 'rs'}",
              f"--config.data.sources=('{empty}',)")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error:")


def test_scores_from_cached_activations_equal_the_model_pass(assets, tmp_path):
  """collect_activations.py stores the rows; scoring its cache gives the on-the-fly result without the model."""
  from sae_jax.activations.shards import CachedRows
  cache = collect_cache(assets.smollm2_hf, tmp_path / "acts", "demo#n=12")
  n_rows = len(CachedRows(str(cache)).rows)
  assert n_rows >= 8
  n_rows -= n_rows % 4 == 0  # a short last batch (padded) in batches of 4
  sae = selective_sae_dir(tmp_path / "sae", 576)
  # The demo config leaves out ids 0, 1, 2; SmolLM2's BOS/EOS are 1 and 2, so 0 must be ignored too.
  line = _error_line(_run(_cache(cache), f"--sae={sae}", f"--out={tmp_path / 'x'}", corpus=()))
  assert "left out token ids [0]" in line
  proc = _run(_cache(cache), f"--sae={sae}", f"--out={tmp_path / 'cached'}", "--config.reasonscore.ignore_ids=(0,1,2)",
              f"--config.data.num_rows={n_rows}", corpus=())
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["rows"] == n_rows and report["source"] == cache
  proc = _run(_model(assets.smollm2_hf), f"--sae={sae}", f"--out={tmp_path / 'model'}",
              "--config.reasonscore.ignore_ids=(0,1,2)", f"--config.data.num_rows={n_rows}",
              "--config.data.shuffle_seed=-1")
  assert proc.returncode == 0, proc.stderr
  for name in ("scores", "mu_pos", "mu_neg", "group_means"):
    cached, direct = (np.load(tmp_path / run / f"{name}.npy") for run in ("cached", "model"))
    # Same float32 activations up to XLA CPU's batch-size-dependent summation (batches of 4 rows both here).
    np.testing.assert_allclose(cached, direct, rtol=1e-5, atol=1e-7 * np.abs(direct).max())
  meta = json.load(open(tmp_path / "cached" / "reasonscore.json"))
  assert meta["pos_count"] > 0 and meta["settings"]["ignore_ids"] == [0, 1, 2]

  line = _error_line(_run(_cache(cache), f"--sae={sae}", f"--out={tmp_path / 'x'}"))
  assert ("--config.data.sources, --config.data.context_size, --config.data.mode cannot be used with cached "
          "activations") in line
  line = _error_line(_run(_cache(cache), _model(assets.smollm2_hf), f"--sae={sae}", f"--out={tmp_path / 'x'}",
                          corpus=()))
  assert "exactly one of --config.model.path" in line
  line = _error_line(_run(_cache(cache), f"--sae={sae}", f"--out={tmp_path / 'x'}", "--config.hook.layer=4",
                          corpus=()))
  assert "holds layer 5 resid_post, the SAE reads layer 4 resid_post" in line
