"""Model diffing: tiny random Llama vs a copy with one layer perturbed, checked against dense numpy; the launch
script end to end on SmolLM2 vs SmolLM2 with a perturbed layer; clear errors."""

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, _tiny_hf, collect_cache, selective_sae_dir
from sae_jax.errors import UserError
from sae_jax.features.diffing import (ARRAYS, FeatureStatsAccumulator, ModelDiff, check_pair, check_rows_fit,
                                      density_scatter_png, diff_stats, model_stats, png_bytes)
from sae_jax.features.reasonscore import reasonscore_corpus, reasonscore_dense
from sae_jax.features.vocab import Vocabulary
from sae_jax.sae import SAE, SAEConfig, init_params

LAYER, D_SAE = 2, 96
VOCAB = Vocabulary(("wait", " wait", "hmm", "let me"), ((5,), (6,), (7,), (8, 9)))
IGNORE = (0, 1)
WINDOW = (1, 2)


def _sae(d_in, d_sae, spread, seed=0):
  """Standard SAE, decoder rows not unit norm (so the fold matters), biases spread for varied densities."""
  cfg = SAEConfig(d_in=d_in, d_sae=d_sae, hook_layer=LAYER)
  params = jax.tree.map(np.asarray, init_params(cfg, jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  params["W_dec"] = params["W_dec"] * rng.uniform(0.5, 2.0, (d_sae, 1)).astype(np.float32)
  params["b_enc"] = rng.uniform(-3 * spread, spread, d_sae).astype(np.float32)
  params["b_dec"] = rng.normal(0, spread / 4, d_in).astype(np.float32)
  return SAE(params, cfg)


def _rows(n=8, length=24, seed=0):
  """Random ids of the tiny vocab with reasoning ids sprinkled in and ignored ids (BOS first)."""
  rng = np.random.default_rng(seed)
  rows = rng.integers(2, 128, (n, length))
  words = rng.random(rows.shape) < 0.15
  rows[words] = rng.choice([5, 6, 7, 8], size=int(words.sum()))
  rows[:, 3] = 8
  rows[:, 4] = 9  # "let me" in every row
  rows[:, 0] = 0
  rows[rng.random(rows.shape) < 0.05] = 1
  return rows.astype(np.int32)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
  """((model A, model B), their HF dirs): tiny Llama, and a copy with layer 1's MLP output perturbed (before
  the hooked layer 2)."""
  import torch
  from sae_jax.models import checkpoint
  hf = _tiny_hf("llama")
  dirs = [str(tmp_path_factory.mktemp("tiny_a")), str(tmp_path_factory.mktemp("tiny_b"))]
  hf.save_pretrained(dirs[0])
  with torch.no_grad():
    w = hf.model.layers[1].mlp.down_proj.weight
    w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
  hf.save_pretrained(dirs[1])
  return tuple(checkpoint.load_any(d, dtype=jnp.float32) for d in dirs), dirs


def _dense(acts, tokens, sae):
  """Folded standard-SAE features in float64 numpy, then the statistics over non-ignored tokens."""
  cfg, p = sae.cfg, {k: np.asarray(v, np.float64) for k, v in sae.params.items()}
  n = np.linalg.norm(p["W_dec"], axis=1)
  x = np.asarray(acts, np.float64) - (p["b_dec"] if cfg.apply_b_dec_to_input else 0)
  f = np.maximum(x @ (p["W_enc"] * n) + p["b_enc"] * n, 0)
  keep = ~np.isin(tokens, IGNORE)
  return f, f[keep].mean(axis=0), (f[keep] > 0).mean(axis=0), int(keep.sum())


def _stats(model, rows, acc, mesh=None, batch_rows=4):
  from sae_jax.activations.collect import make_site_fn
  return model_stats(make_site_fn(model, LAYER, "resid_post", mesh), rows, acc, batch_rows=batch_rows)


def test_same_model_twice_gives_ratio_one(tiny_pair):
  from sae_jax.activations.collect import make_site_fn
  model = tiny_pair[0][0]
  sae = _sae(64, D_SAE, 0.03)
  rows = _rows()
  acc = FeatureStatsAccumulator(sae, VOCAB, window=WINDOW, ignore_ids=IGNORE)
  a, b = _stats(model, rows, acc), _stats(model, rows, acc)  # one accumulator: reset between models
  diff = diff_stats(a, b)
  for name in ("mean_ratio", "density_ratio"):
    assert np.all(getattr(diff, name) == 1), name
  for name in ("mean_log2_ratio", "density_log2_ratio"):
    assert np.all(getattr(diff, name) == 0), name
  np.testing.assert_array_equal(a.reason.scores, b.reason.scores)
  np.testing.assert_array_equal(a.mean, b.mean)
  np.testing.assert_array_equal(a.density, b.density)
  summary = diff.summary(10)
  assert summary["top_k_overlap"] == 1 and summary["b_only_in_top_k"] == 0
  assert [t["rank_a"] for t in diff.top(10)] == list(range(10))
  # the score is reason_score.py's: the plain accumulator on the same rows agrees
  plain = reasonscore_corpus(make_site_fn(model, LAYER, "resid_post"), rows, sae, VOCAB, batch_rows=4,
                             window=WINDOW, ignore_ids=IGNORE)
  np.testing.assert_allclose(b.reason.scores, plain.scores, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(b.reason.mu_neg, plain.mu_neg, rtol=1e-6, atol=1e-9)


def test_two_models_match_dense_numpy(tiny_pair):
  """On a (data 2, model 4) mesh, latents sharded; every number against float64 numpy on the same activations."""
  from sae_jax.activations.collect import make_site_fn
  from sae_jax.models import checkpoint
  from sae_jax.models.sharding import make_mesh
  mesh = make_mesh(2, 1, 4)
  models = [checkpoint.load_any(d, dtype=jnp.float32, mesh=mesh) for d in tiny_pair[1]]
  sae = _sae(64, D_SAE, 0.03)
  rows = _rows()
  acc = FeatureStatsAccumulator(sae, VOCAB, window=WINDOW, ignore_ids=IGNORE, mesh=mesh)
  stats = [_stats(m, rows, acc, mesh) for m in models]
  assert acc._step._cache_size() == 1  # one compiled step for every batch of both models
  for st, model in zip(stats, tiny_pair[0]):
    acts = np.asarray(make_site_fn(model, LAYER, "resid_post")(rows))
    f, mean, density, n = _dense(acts, rows, sae)
    assert st.n_tokens == n
    np.testing.assert_allclose(st.mean, mean, rtol=2e-5, atol=1e-7)
    assert np.max(np.abs(st.density - density)) * n <= 1  # at most one token on the 0 boundary
    want = reasonscore_dense(f, rows, VOCAB, window=WINDOW, ignore_ids=IGNORE)
    np.testing.assert_allclose(st.reason.scores, want.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(st.reason.mu_pos, want.mu_pos, rtol=2e-5, atol=1e-7)
    assert 0.05 < density.mean() < 0.8 and (density == 0).any()  # a spread of densities, some never fire

  a, b = stats
  k = 12
  want_order = sorted(range(D_SAE), key=lambda j: (-b.reason.scores[j], j))[:k]
  threshold = float(np.median(a.density[want_order]))  # splits B's top list into B-only and not
  diff = diff_stats(a, b, ratio_eps=1e-6, b_only_density=threshold)
  assert not np.allclose(diff.mean_ratio, 1)  # the perturbed layer changes the features
  np.testing.assert_allclose(diff.mean_ratio, (b.mean.astype(np.float64) + 1e-6) / (a.mean + 1e-6), rtol=1e-6)
  np.testing.assert_allclose(diff.density_log2_ratio, np.log2((b.density + 1e-6) / (a.density + 1e-6)),
                             rtol=1e-5, atol=1e-6)
  top = diff.top(k)
  assert [t["feature"] for t in top] == want_order
  for t in top:
    j = t["feature"]
    assert t["b_only"] == bool(a.density[j] < threshold)
    assert t["score_a"] == float(a.reason.scores[j]) and t["density_b"] == float(b.density[j])
    assert t["rank_a"] == int(np.sum(a.reason.scores > a.reason.scores[j]) + np.sum(
        (a.reason.scores == a.reason.scores[j]) & (np.arange(D_SAE) < j)))
  summary = diff.summary(k)
  assert 0 < summary["b_only_in_top_k"] < k
  assert summary["b_only_fraction_of_top_k"] == pytest.approx(np.mean([t["b_only"] for t in top]))
  assert summary["b_only_in_top_k"] == sum(t["b_only"] for t in top)


def test_step_encodes_each_token_once(tiny_pair):
  """The density count re-states encode next to ReasonScore's; XLA must merge them (one encoder matmul)."""
  sae = _sae(64, D_SAE, 0.03)
  acc = FeatureStatsAccumulator(sae, VOCAB, window=WINDOW, ignore_ids=IGNORE)
  tokens, acts = _rows(2, 8), np.zeros((2, 8, 64), np.float32)
  hlo = acc._step.lower(acc._state, acc.sae, tokens, acts, np.int32(2)).compile().as_text()
  assert len(re.findall(rf"= f32\[16,{D_SAE}\]\S* dot\(", hlo)) == 1


def test_png(tiny_pair, tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
  data = png_bytes(rgb)
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  chunks, pos = [], 8
  while pos < len(data):  # every chunk's CRC, then the pixels back
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
    assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
    chunks.append((kind, body))
    pos += 12 + length
  assert [c[0] for c in chunks] == [b"IHDR", b"IDAT", b"IEND"]
  assert struct.unpack(">IIBB", chunks[0][1][:10]) == (5, 7, 8, 2)
  raw = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(7, 1 + 5 * 3)
  assert np.all(raw[:, 0] == 0) and np.array_equal(raw[:, 1:].reshape(7, 5, 3), rgb)

  sae = _sae(64, D_SAE, 0.03)
  acc = FeatureStatsAccumulator(sae, VOCAB, window=WINDOW, ignore_ids=IGNORE)
  rows = _rows()
  diff = diff_stats(*[_stats(m, rows, acc) for m in tiny_pair[0]])
  png = density_scatter_png(diff, [t["feature"] for t in diff.top(5)])
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
  assert struct.unpack(">II", png[16:24]) == (360, 360)
  pixels = np.frombuffer(zlib.decompress(png[41:-12]), np.uint8).reshape(360, 1 + 360 * 3)[:, 1:]
  assert np.any(np.all(pixels.reshape(360, 360, 3) == (215, 30, 30), axis=-1))  # the highlighted features

  diff.save(str(tmp_path / "out"), top_k=5)
  meta = json.load(open(tmp_path / "out" / "diff.json"))
  assert len(meta["top"]) == 5 and meta["summary"]["top_k"] == 5
  for name in ARRAYS:
    assert np.load(tmp_path / "out" / f"{name}.npy").shape == (D_SAE,)
  assert (tmp_path / "out" / "diff.png").read_bytes() == png


def test_bad_input(tiny_pair):
  model = tiny_pair[0][0]
  cfg = model.cfg
  with pytest.raises(UserError, match="model widths differ: A hidden_size 64, B 32"):
    check_pair(cfg, dataclasses.replace(cfg, hidden_size=32), _sae(64, D_SAE, 0.03), LAYER)
  with pytest.raises(UserError, match="SAE d_in 48 != model width 64"):
    check_pair(cfg, cfg, _sae(48, D_SAE, 0.03), LAYER)
  with pytest.raises(UserError, match="layer 9 is out of range for model A"):
    check_pair(cfg, cfg, _sae(64, D_SAE, 0.03), 9)
  with pytest.raises(UserError, match="token id 200 is outside model B's vocabulary of 128"):
    check_rows_fit(np.array([[3, 200]]), cfg, "B")
  sae = _sae(48, D_SAE, 0.03)
  acc = FeatureStatsAccumulator(sae, VOCAB, window=WINDOW, ignore_ids=IGNORE)
  with pytest.raises(UserError, match="SAE d_in 48 != activation width 64"):
    _stats(model, _rows(), acc)
  sae = _sae(64, D_SAE, 0.03)
  acc = FeatureStatsAccumulator(sae, VOCAB, window=WINDOW, ignore_ids=IGNORE)
  a = _stats(model, _rows(), acc)
  small = dataclasses.replace(a, mean=a.mean[:5], density=a.density[:5])
  with pytest.raises(UserError, match="A has 5 features, B 96"):
    ModelDiff(small, a)
  with pytest.raises(UserError, match="b_only_density"):
    diff_stats(a, a, b_only_density=2.0)


# ---- launch/diff_models.py on SmolLM2 ----


@pytest.fixture(scope="module")
def smollm2_perturbed(assets, tmp_path_factory):
  """SmolLM2 with layer 3's MLP output weights perturbed (before the SAE's layer 5): same width, other model."""
  from safetensors.numpy import load_file, save_file
  out = tmp_path_factory.mktemp("smollm2_perturbed")
  for name in os.listdir(assets.smollm2_hf):
    if name != "model.safetensors" and not name.startswith("."):
      os.symlink(os.path.join(assets.smollm2_hf, name), out / name)
  tensors = load_file(os.path.join(assets.smollm2_hf, "model.safetensors"))
  w = tensors["model.layers.3.mlp.down_proj.weight"]
  tensors["model.layers.3.mlp.down_proj.weight"] = w + np.random.default_rng(0).normal(
      0, 3 * w.std(), w.shape).astype(w.dtype)
  save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  return str(out)


CORPUS = ("--config.data.sources=('demo#n=8',)", "--config.data.context_size=64", "--config.data.mode=clean")


def _run(*args, corpus=CORPUS):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "diff_models.py"), "--config.model.dtype=float32",
                         *corpus, "--config.data.num_rows=0", "--config.data.store_batch_rows=4",
                         "--config.diff.top_k=5", "--verbosity=-1", *args],
                        capture_output=True, text=True, env=env, timeout=300)


def test_launch_end_to_end(assets, smollm2_perturbed, tmp_path):
  sae = selective_sae_dir(tmp_path / "sae", 576)
  out = tmp_path / "diff"
  proc = _run(f"--model_a={assets.smollm2_hf}", f"--config.model.path={smollm2_perturbed}", f"--sae={sae}",
              f"--out={out}")
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  meta = json.load(open(out / "diff.json"))
  assert meta["summary"] == report["summary"] and meta["summary"]["d_sae"] == 256
  assert meta["models"]["a"]["hidden_size"] == meta["models"]["b"]["hidden_size"] == 576
  arrays = {name: np.load(out / f"{name}.npy") for name in ARRAYS}
  assert all(a.shape == (256,) and np.all(np.isfinite(a)) for a in arrays.values())
  assert not np.allclose(arrays["mean_ratio"], 1)  # the perturbed layer shows
  np.testing.assert_allclose(arrays["mean_ratio"], (arrays["mean_b"] + 1e-6) / (arrays["mean_a"] + 1e-6),
                             rtol=1e-5)
  top = meta["top"]
  assert [t["feature"] for t in top] == list(np.argsort(-arrays["score_b"], kind="stable")[:5])
  assert [t["b_only"] for t in top] == [bool(arrays["density_a"][t["feature"]] < 1e-5) for t in top]
  np.testing.assert_array_equal(np.load(out / "b" / "scores.npy"), arrays["score_b"])
  png = (out / "diff.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (360, 360)
  assert json.load(open(out / "run.json"))["flags"]["config"]["model"]["path"] == smollm2_perturbed


def test_launch_errors(assets, tmp_path):
  tiny = tmp_path / "tiny"
  _tiny_hf("llama").save_pretrained(str(tiny))
  sae = selective_sae_dir(tmp_path / "sae576", 576)
  proc = _run(f"--model_a={assets.smollm2_hf}", f"--config.model.path={tiny}", f"--sae={sae}",
              f"--out={tmp_path / 'o'}")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert lines[-1].startswith("error: model widths differ: A hidden_size 576, B 64")
  sae = selective_sae_dir(tmp_path / "sae64", 64)
  proc = _run(f"--model_a={assets.smollm2_hf}", f"--config.model.path={assets.smollm2_hf}", f"--sae={sae}",
              f"--out={tmp_path / 'o'}")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == "error: SAE d_in 64 != model width 576"


def test_launch_from_a_cache_equals_running_the_model(assets, smollm2_perturbed, tmp_path):
  """B from a cache of its activations (collect_activations.py), A run live on the cache's rows."""
  from sae_jax.activations.shards import CachedRows
  sae = selective_sae_dir(tmp_path / "sae", 576)
  cache_b = collect_cache(smollm2_perturbed, tmp_path / "acts_b", "demo#n=8")
  n_rows = len(CachedRows(cache_b).rows)
  common = (f"--sae={sae}", "--config.reasonscore.ignore_ids=(0,1,2)", f"--config.data.num_rows={n_rows}")
  proc = _run(f"--model_a={assets.smollm2_hf}", f"--config.activations.cache_dir={cache_b}",
              f"--out={tmp_path / 'cached'}",
              *common, corpus=())
  assert proc.returncode == 0, proc.stderr
  proc = _run(f"--model_a={assets.smollm2_hf}", f"--config.model.path={smollm2_perturbed}",
              f"--out={tmp_path / 'live'}",
              "--config.data.shuffle_seed=-1", *common)
  assert proc.returncode == 0, proc.stderr
  for name in ARRAYS:
    cached, live = (np.load(tmp_path / run / f"{name}.npy") for run in ("cached", "live"))
    np.testing.assert_allclose(cached, live, rtol=1e-4, atol=1e-6 * np.abs(live).max(), err_msg=name)
  meta = json.load(open(tmp_path / "cached" / "diff.json"))
  assert meta["models"]["b"] == {"activations": cache_b, "source": smollm2_perturbed}
  assert meta["rows"] == n_rows

  other = collect_cache(assets.smollm2_hf, tmp_path / "acts_other", "demo#n=8,seed=3")
  proc = _run(f"--activations_a={other}", f"--config.activations.cache_dir={cache_b}", f"--out={tmp_path / 'x'}",
              *common,
              corpus=())
  assert proc.returncode != 0 and "activation caches hold different token rows" in proc.stderr.splitlines()[-1]
  proc = _run(f"--model_a={assets.smollm2_hf}", f"--sae={sae}", f"--out={tmp_path / 'x'}")
  assert proc.returncode != 0 and ("exactly one of --config.model.path (run model B) and "
                                   "--config.activations.cache_dir") in proc.stderr.splitlines()[-1]
