"""SAELens and sparsify files for the topk / batchtopk / jumprelu SAEs: bit-exact round trips, files written by
the other libraries (layouts as SAELens 5.5.2 / sparsify write them), bad dirs -> UserError, trainer export."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from sae_jax.errors import UserError
from sae_jax.io import MARKER
from sae_jax.sae import SAE, SAEConfig, init_params, load_saelens, load_sparsify, save_saelens, save_sparsify

D_IN, D_SAE = 8, 32


def _cfg(architecture, **kw):
  return SAEConfig(**dict(dict(d_in=D_IN, d_sae=D_SAE, architecture=architecture, k=4, hook_layer=3,
                               model_name="deepseek-ai/DeepSeek-R1-Distill-Llama-8B"), **kw))


def _params(cfg, seed=0):
  """Random (not init-shaped) training params of `cfg`'s architecture."""
  keys = jax.random.split(jax.random.key(seed), 6)
  shapes = {n: np.shape(v) for n, v in init_params(cfg, keys[5]).items()}
  p = {n: np.asarray(jax.random.normal(k, s)) for k, (n, s) in zip(keys, shapes.items())}
  if "log_threshold" in p:
    p["log_threshold"] = p["log_threshold"] * 0.1 - 2.0
  if "threshold" in p:
    p["threshold"] = np.full(D_SAE, 0.37, np.float32)
  return p


def _dir(tmp_path, name, cfg_dict, tensors, cfg_name="cfg.json", weights="sae_weights.safetensors"):
  path = tmp_path / name
  path.mkdir()
  with open(path / cfg_name, "w") as f:
    json.dump(cfg_dict, f)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path / weights))
  return str(path)


def _x(n=6, seed=1):
  return np.asarray(jax.random.normal(jax.random.key(seed), (n, D_IN))) * 2


# --- SAELens --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_saelens_round_trip_is_bit_exact(tmp_path, arch):
  cfg = _cfg(arch)
  params = _params(cfg)
  loaded = load_saelens(save_saelens(str(tmp_path / "sae"), SAE(params, cfg)))
  assert loaded.cfg == cfg
  expected = jax.tree.map(np.asarray, SAE(params, cfg).inference().params)
  assert sorted(loaded.params) == sorted(expected)
  for n, a in expected.items():
    assert loaded.params[n].dtype == np.float32
    np.testing.assert_array_equal(loaded.params[n], a)
  x = jnp.asarray(_x())
  np.testing.assert_array_equal(loaded.encode(x), SAE(params, cfg).encode(x))


def test_saelens_cfg_json_per_architecture(tmp_path):
  def written(arch):
    out = save_saelens(str(tmp_path / arch), SAE(_params(_cfg(arch)), _cfg(arch)))
    with open(os.path.join(out, "cfg.json")) as f, safe_open(os.path.join(out, "sae_weights.safetensors"),
                                                               "numpy") as w:
      return json.load(f), {k: w.get_slice(k).get_dtype() for k in w.keys()}

  d, tensors = written("topk")
  assert (d["architecture"], d["activation_fn_str"], d["activation_fn_kwargs"], d["k"]) == ("topk", "topk",
                                                                                           {"k": 4}, 4)
  assert d["apply_b_dec_to_input"] is True and d["rescale_acts_by_decoder_norm"] is False
  assert d["normalize_sae_decoder"] is False  # random rows: the file says what is true of them, not cfg's True
  unit = _params(_cfg("topk"))
  unit["W_dec"] = unit["W_dec"] / np.linalg.norm(unit["W_dec"], axis=1, keepdims=True)
  with open(os.path.join(save_saelens(str(tmp_path / "unit"), SAE(unit, _cfg("topk"))), "cfg.json")) as f:
    assert json.load(f)["normalize_sae_decoder"] is True
  assert tensors == {"W_enc": "F32", "b_enc": "F32", "W_dec": "F32", "b_dec": "F32"}
  for arch in ("jumprelu", "batchtopk"):  # SAELens exports BatchTopK as JumpReLU
    d, tensors = written(arch)
    assert (d["architecture"], d["activation_fn_str"], d["activation_fn_kwargs"]) == ("jumprelu", "relu", {})
    assert tensors["threshold"] == "F32" and len(tensors) == 5
    assert d["sae_jax"]["config"]["architecture"] == arch


def _saelens_cfg(**kw):
  """A cfg.json as SAELens 5.5.2 writes it, without our "sae_jax" key."""
  return dict({"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
               "model_name": "gemma-2-2b", "hook_name": "blocks.12.hook_resid_post", "hook_layer": 12,
               "hook_head_index": None, "activation_fn_str": "relu", "activation_fn_kwargs": {},
               "apply_b_dec_to_input": False, "finetuning_scaling_factor": False,
               "sae_lens_training_version": None, "prepend_bos": True, "dataset_path": "", "context_size": 1024,
               "dataset_trust_remote_code": True, "normalize_activations": "none"}, **kw)


def test_saelens_written_jumprelu_loads(tmp_path):
  """A Gemma-Scope-like JumpReLU dir: features = ReLU(h) * (h > threshold), numpy reference."""
  params = _params(_cfg("standard"), seed=3)
  params["threshold"] = np.abs(np.asarray(jax.random.normal(jax.random.key(9), (D_SAE,))))
  loaded = load_saelens(_dir(tmp_path, "gs", _saelens_cfg(architecture="jumprelu"), params))
  assert loaded.cfg.architecture == "jumprelu" and not loaded.cfg.apply_b_dec_to_input
  x = _x()
  h = x.astype(np.float64) @ params["W_enc"] + params["b_enc"]
  with jax.default_matmul_precision("highest"):
    f = np.asarray(loaded.encode(jnp.asarray(x)))
  np.testing.assert_allclose(f, np.maximum(h, 0) * (h > params["threshold"]), rtol=1e-5, atol=1e-5)
  assert 0 < (f > 0).sum() < f.size


@pytest.mark.parametrize("arch_keys", [
    {"architecture": "topk", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}},  # SAELens 5.x
    {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}},  # older: standard + topk activation
    {"architecture": "topk", "k": 5},  # SAELens 6: k at the top level
])
def test_saelens_written_topk_loads(tmp_path, arch_keys):
  params = _params(_cfg("standard"), seed=4)
  loaded = load_saelens(_dir(tmp_path, "topk", _saelens_cfg(apply_b_dec_to_input=True, **arch_keys), params))
  assert (loaded.cfg.architecture, loaded.cfg.k, loaded.cfg.apply_b_dec_to_input) == ("topk", 5, True)
  x = _x()
  a = np.maximum((x.astype(np.float64) - params["b_dec"]) @ params["W_enc"] + params["b_enc"], 0)
  keep = np.argsort(-a, axis=1)[:, :5]
  expected = np.zeros_like(a)
  np.put_along_axis(expected, keep, np.take_along_axis(a, keep, 1), axis=1)
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(loaded.encode(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg_change, tensor_change, message", [
    ({"architecture": "gated"}, None, "unsupported SAE architecture 'gated': expected 'standard', 'topk', 'batc"),
    ({"architecture": "topk", "activation_fn_str": "topk"}, None, "unsupported activation_fn_str 'topk' without a k"),
    ({"architecture": "jumprelu", "activation_fn_str": "tanh-relu"}, None, "activation_fn_str 'tanh-relu'"),
    ({"architecture": "jumprelu"}, None, "'jumprelu' with no 'threshold' tensor"),
    ({"architecture": "jumprelu"}, "short threshold", "tensor threshold has shape \\(31,\\): expected \\(32,\\)"),
    ({"architecture": "topk", "k": 33}, None, "k=33: expected an integer in \\[1, d_sae=32\\]"),
])
def test_bad_saelens_dirs_raise_user_error(tmp_path, cfg_change, tensor_change, message):
  params = _params(_cfg("standard"))
  if tensor_change:
    params["threshold"] = np.ones(D_SAE - 1, np.float32)
  with pytest.raises(UserError, match=message):
    load_saelens(_dir(tmp_path, "bad", _saelens_cfg(**cfg_change), params))


# --- sparsify -------------------------------------------------------------------------------------------------------

def test_sparsify_round_trip_is_bit_exact_and_has_sparsify_layout(tmp_path):
  cfg = _cfg("topk")
  params = _params(cfg)
  out = save_sparsify(str(tmp_path / "layers.3"), SAE(params, cfg))
  assert sorted(os.listdir(out)) == [MARKER, "cfg.json", "sae.safetensors"]
  with open(os.path.join(out, "cfg.json")) as f:
    d = json.load(f)
  assert {k: d[k] for k in ("activation", "expansion_factor", "normalize_decoder", "num_latents", "k", "d_in",
                            "multi_topk", "skip_connection", "transcode")} == {
      "activation": "topk", "expansion_factor": 4, "normalize_decoder": False, "num_latents": D_SAE, "k": 4,
      "d_in": D_IN, "multi_topk": False, "skip_connection": False, "transcode": False}  # random rows: not unit
  with safe_open(os.path.join(out, "sae.safetensors"), "numpy") as f:
    assert sorted(f.keys()) == ["W_dec", "b_dec", "encoder.bias", "encoder.weight"]
    np.testing.assert_array_equal(f.get_tensor("encoder.weight"), params["W_enc"].T)
    assert f.get_tensor("encoder.weight").shape == (D_SAE, D_IN) and f.get_tensor("W_dec").shape == (D_SAE, D_IN)
  loaded = load_sparsify(out)
  assert loaded.cfg == cfg and loaded.units == "raw"
  for n, a in params.items():
    np.testing.assert_array_equal(loaded.params[n], a)
  # Unit rows trained on scaled activations (s = 1/18) are rows of norm 18 in raw units: written as not unit norm.
  unit = dict(params, W_dec=params["W_dec"] / np.linalg.norm(params["W_dec"], axis=1, keepdims=True))
  for units, scale, unit_rows in (("raw", 1.0, True), ("scaled", 1 / 18, False)):
    out = save_sparsify(str(tmp_path / "layers.5"), SAE(unit, cfg, units, scale))
    with open(os.path.join(out, "cfg.json")) as f, safe_open(os.path.join(out, "sae.safetensors"), "numpy") as w:
      assert json.load(f)["normalize_decoder"] is unit_rows
      np.testing.assert_allclose(np.linalg.norm(w.get_tensor("W_dec"), axis=1), 1 / scale, rtol=1e-5)


def test_sparsify_written_dir_loads(tmp_path):
  """As sparsify's SparseCoder.save_to_disk writes it: cfg (SparseCoderConfig.to_dict() + d_in) + state dict."""
  rng = np.random.RandomState(0)
  tensors = {"encoder.weight": rng.randn(D_SAE, D_IN).astype(np.float32),
             "encoder.bias": rng.randn(D_SAE).astype(np.float32) * 0.1,
             "W_dec": rng.randn(D_SAE, D_IN).astype(np.float32), "b_dec": rng.randn(D_IN).astype(np.float32)}
  raw = {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": 0, "k": 6,
         "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN}
  loaded = load_sparsify(_dir(tmp_path, "layers.7", raw, tensors, weights="sae.safetensors"))
  cfg = loaded.cfg
  assert (cfg.architecture, cfg.d_sae, cfg.k, cfg.hook_layer, cfg.hook_site) == ("topk", 32, 6, 7, "resid_post")
  x = _x().astype(np.float64)
  pre = np.maximum((x - tensors["b_dec"]) @ tensors["encoder.weight"].T + tensors["encoder.bias"], 0)  # sparsify
  keep = np.argsort(-pre, axis=1)[:, :6]
  expected = np.zeros_like(pre)
  np.put_along_axis(expected, keep, np.take_along_axis(pre, keep, 1), axis=1)
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(loaded.encode(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5, atol=1e-5)
  mlp = load_sparsify(_dir(tmp_path, "layers.2.mlp", raw, tensors, weights="sae.safetensors"))
  assert (mlp.cfg.hook_layer, mlp.cfg.hook_site) == (2, "mlp_out")
  named = load_sparsify(_dir(tmp_path, "my_sae", raw, tensors, weights="sae.safetensors"),
                        hook_name="blocks.19.hook_resid_post")
  assert named.cfg.hook_layer == 19


def test_sparsify_errors(tmp_path):
  with pytest.raises(UserError, match="sparsify format holds topk SAEs: got architecture='jumprelu'"):
    save_sparsify(str(tmp_path / "a"), SAE(_params(_cfg("jumprelu")), _cfg("jumprelu")))
  with pytest.raises(UserError, match="expected apply_b_dec_to_input=true"):
    save_sparsify(str(tmp_path / "a"), SAE(_params(_cfg("topk")), _cfg("topk", apply_b_dec_to_input=False)))
  raw = {"activation": "topk", "num_latents": D_SAE, "k": 4, "d_in": D_IN}
  tensors = {"encoder.weight": np.zeros((D_SAE, D_IN), np.float32), "encoder.bias": np.zeros(D_SAE, np.float32),
             "W_dec": np.zeros((D_SAE, D_IN), np.float32), "b_dec": np.zeros(D_IN, np.float32)}
  with pytest.raises(UserError, match="cannot tell the hook of this sparsify SAE"):
    load_sparsify(_dir(tmp_path, "noname", raw, tensors, weights="sae.safetensors"))
  with pytest.raises(UserError, match="sparsify transcode=True is not supported"):
    load_sparsify(_dir(tmp_path, "layers.1", dict(raw, transcode=True), tensors, weights="sae.safetensors"))
  with pytest.raises(UserError, match="skip connection \\(W_skip\\) is not supported"):
    load_sparsify(_dir(tmp_path, "layers.2", raw, dict(tensors, W_skip=np.zeros((D_IN, D_IN), np.float32)),
                       weights="sae.safetensors"))
  with pytest.raises(UserError, match="tensors missing \\['b_dec'\\]"):
    load_sparsify(_dir(tmp_path, "layers.3", raw, {k: v for k, v in tensors.items() if k != "b_dec"},
                       weights="sae.safetensors"))
  with pytest.raises(UserError, match="layers.9/cfg.json not found: expected a sparsify SAE dir"):
    load_sparsify(str(tmp_path / "layers.9"))


# --- the trainer (trainer.py is unchanged): export, and resume with SAEOptState in the checkpoint ---------------

def test_trainer_trains_exports_and_resumes_a_topk_sae(tmp_path):
  import shutil
  from sae_jax.sae.trainer import BatchStream, TrainerOptions, train
  from synthetic_acts import SyntheticActs
  cfg = SAEConfig(d_in=16, d_sae=64, architecture="topk", k=8, n_steps=60, batch_size=32, lr=5e-3,
                  lr_decay_steps=10, n_batches_for_norm_estimate=4, hook_layer=1, exclude_special_tokens=(),
                  dead_steps_threshold=5)

  def run(out):
    stream = BatchStream(SyntheticActs(16), d=16, batch_size=32, half=128, slack=64, seed=1)
    return train(cfg, stream, TrainerOptions(out_dir=str(out), log_every=20, checkpoint_every=30,
                                             buffer_half_tokens=128, progress=False))

  full = run(tmp_path / "full")
  assert full["explained_variance"] > 0.5 and full["l0"] <= 8 and full["aux_loss"] > 0
  loaded = load_saelens(full["sae_dir"])
  assert loaded.cfg == cfg
  np.testing.assert_array_equal(loaded.params["W_dec"], full["sae"].params["W_dec"])
  shutil.copytree(tmp_path / "full" / "checkpoints", tmp_path / "resumed" / "checkpoints")  # the step-30 one
  resumed = run(tmp_path / "resumed")
  for n, a in full["sae"].params.items():
    np.testing.assert_array_equal(resumed["sae"].params[n], a)
