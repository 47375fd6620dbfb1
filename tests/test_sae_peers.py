"""SAE files against the real peers, both directions: SAELens 5.5.2 (.venv-bench), SAELens 6.54.12 and
eai-sparsify 1.3.3 (.venv-compat), for standard, topk, jumprelu and batchtopk.

One worker process per peer virtualenv (tests/sae_peer_worker.py) loads our exports and writes its own SAEs
(training and inference formats, SAELens 6's rescaled topk, mid-training checkpoints with their norm scaling
factor, the 5.x release format), with its features and reconstructions of the same tokens. Here every file
loads through `load_sae`, and:
  * features and the decode of the peer's features agree within 1e-5 of the largest value (float32 rounding:
    both sides sum d_in = 64 or d_sae = 256 float32 products in different orders, ~1e-6 relative; SAELens' rescaled
    topk also divides and multiplies by row norms);
  * active sets are equal wherever membership is decided by a margin of 1e-4 of the largest pre-activation (the
    ReLU / threshold edge, the k-th vs (k+1)-th value of a topk row); at least 90% of entries are that clear.
"""

import json
import os
import subprocess

import jax
import numpy as np
import pytest

from sae_jax.sae import SAE, SAEConfig, init_params, load_sae, save_saelens, save_sparsify

D_IN, D_SAE, K, N = 64, 256, 8, 48
ARCHS = ("standard", "topk", "jumprelu", "batchtopk")
TOL, MARGIN = 1e-5, 1e-4
WORKER = os.path.join(os.path.dirname(__file__), "sae_peer_worker.py")
THEIRS = ("saelens5_standard", "saelens5_topk", "saelens5_jumprelu", "saelens5_checkpoint", "saelens5_release",
          "saelens6_standard", "saelens6_standard_training", "saelens6_topk", "saelens6_topk_training",
          "saelens6_topk_rescaled", "saelens6_topk_rescaled_training", "saelens6_jumprelu",
          "saelens6_jumprelu_training", "saelens6_batchtopk", "saelens6_batchtopk_training", "saelens6_checkpoint",
          "sparsify")
OURS = tuple(f"{a}_{p}" for a in ARCHS for p in ("saelens5", "saelens5_training", "saelens6", "saelens6_training")
             if (a, p) != ("batchtopk", "saelens6_training")) + ("sparsify",)


def _our_sae(arch: str, seed: int) -> SAE:
  """Random weights: decoder rows of norms in [0.5, 2] (so nothing holds only for unit rows), thresholds > 0."""
  cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=K, hook_layer=3, model_name="tiny")
  rng = np.random.default_rng(seed)
  p = {n: rng.standard_normal(np.shape(v)).astype(np.float32) * (0.2 if np.ndim(v) == 1 else 1.0)
       for n, v in init_params(cfg, jax.random.key(0)).items()}
  p["W_dec"] *= (rng.uniform(0.5, 2, D_SAE) / np.linalg.norm(p["W_dec"], axis=1))[:, None].astype(np.float32)
  if "log_threshold" in p:
    p["log_threshold"] = np.log(rng.uniform(0.05, 0.6, D_SAE)).astype(np.float32)
  if "threshold" in p:
    p["threshold"] = np.full(D_SAE, 0.4, np.float32)
  return SAE(p, cfg)


@pytest.fixture(scope="module")
def peers(tmp_path_factory, bench_python, compat_python):
  """Runs both workers (in parallel) on our exports; {case: (facts, feats, recon)}, x and our SAEs."""
  root = tmp_path_factory.mktemp("peers")
  x = (np.random.default_rng(1).standard_normal((N, D_IN)) * 0.3).astype(np.float32)
  np.save(root / "x.npy", x)
  ours = {a: _our_sae(a, i) for i, a in enumerate(ARCHS)}
  dirs = {a: save_saelens(str(root / "ours" / a), sae) for a, sae in ours.items()}
  ours["sparsify"] = _our_sae("topk", 9)
  dirs["sparsify"] = save_sparsify(str(root / "ours" / "layers.3"), ours["sparsify"])
  procs = []
  for python, peer_list, name in ((bench_python, ["saelens5"], "v5"), (compat_python, ["saelens6", "sparsify"], "v6")):
    req = {"x": str(root / "x.npy"), "ours": dirs, "out": str(root / name), "peers": peer_list, "d_in": D_IN,
           "d_sae": D_SAE, "k": K}
    with open(root / f"{name}.json", "w") as f:
      json.dump(req, f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    procs.append(subprocess.Popen([python, WORKER, str(root / f"{name}.json")], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=dict(env, WANDB_MODE="disabled")))
  cases = {}
  for name, proc in zip(("v5", "v6"), procs):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    with open(root / name / "manifest.json") as f:
      for case, facts in json.load(f).items():
        with np.load(root / name / f"{case}.npz") as z:
          cases[case] = (facts, z["feats"], z["recon"])
  return {"x": x, "ours": ours, "cases": cases}


def _clear(sae: SAE, h: np.ndarray) -> np.ndarray:
  """Entries whose active / inactive state no float32 rounding can flip (see the module docstring)."""
  margin = MARGIN * np.abs(h).max()
  clear = np.abs(h) > margin
  if "threshold" in sae.params:
    clear &= np.abs(h - np.asarray(sae.params["threshold"])) > margin
  if sae.cfg.architecture == "topk":
    top = -np.sort(-h, axis=1)
    clear &= (top[:, K - 1] - top[:, K] > margin)[:, None]
  return clear


def _agree(sae: SAE, x, feats, recon):
  sae = sae.inference()
  with jax.default_matmul_precision("highest"):
    f, h, r = (np.asarray(a) for a in (sae.encode(x), sae.encode_pre(x), sae.decode(feats)))
  clear = _clear(sae, h)
  assert clear.mean() > 0.9 and 0 < (feats > 0).mean() < 0.9, "the case does not test the active sets"
  np.testing.assert_array_equal((f > 0)[clear], (feats > 0)[clear])
  np.testing.assert_allclose(f[clear], feats[clear], rtol=TOL, atol=TOL * np.abs(feats).max())
  np.testing.assert_allclose(r, recon, rtol=TOL, atol=TOL * np.abs(recon).max())


@pytest.mark.parametrize("case", THEIRS)
def test_they_write_we_load(peers, case):
  facts, feats, recon = peers["cases"][f"theirs_{case}"]
  sae = load_sae(facts["dir"])
  assert (sae.cfg.architecture, sae.units) == (facts["arch"], facts["units"])
  assert sae.scale == pytest.approx(facts.get("scale", 1.0))
  assert (sae.cfg.hook_layer, sae.cfg.hook_site, sae.d_in, sae.d_sae) == (3, "resid_post", D_IN, D_SAE)
  _agree(sae, peers["x"], feats, recon)


@pytest.mark.parametrize("case", OURS)
def test_we_write_they_load(peers, case):
  facts, feats, recon = peers["cases"][f"ours_{case}"]
  _agree(peers["ours"][facts["ours"]], peers["x"], feats, recon)
