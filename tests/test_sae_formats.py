"""SAELens on-disk format: our round trip is bit-exact, SAELens-written dirs load, bad dirs raise UserError."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from conftest import FIXTURES
from sae_jax.errors import UserError
from sae_jax.io import MARKER
from sae_jax.sae import SAE, SAEConfig, load_saelens, save_saelens

D_IN, D_SAE = 8, 32

# Fields of SAELens 5.5.2's `SAEConfig` without a default: `SAE.load_from_pretrained` / `from_pretrained`
# need each of them in cfg.json (after its `handle_config_defaulting`, which fills only some).
SAELENS_REQUIRED = ("architecture", "d_in", "d_sae", "activation_fn_str", "apply_b_dec_to_input",
                    "finetuning_scaling_factor", "context_size", "model_name", "hook_name", "hook_layer",
                    "hook_head_index", "prepend_bos", "dataset_path", "dataset_trust_remote_code",
                    "normalize_activations", "dtype", "device", "sae_lens_training_version")


def _random_params(seed=0, d_in=D_IN, d_sae=D_SAE):
  k = jax.random.split(jax.random.key(seed), 4)
  shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
  return {n: np.asarray(jax.random.normal(kk, s)) for kk, (n, s) in zip(k, shapes.items())}


def _cfg(**kw):
  return SAEConfig(**dict(dict(d_in=D_IN, d_sae=D_SAE, model_name="deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
                               hook_layer=3, hook_site="resid_mid", dataset_path="user/OpenThoughts", n_steps=50,
                               lr_decay_steps=10, l1_warm_up_steps=5), **kw))


def _saelens_dir(tmp_path, cfg_dict, tensors, name="theirs"):
  """A dir as SAELens writes it: json.dump(cfg) + safetensors save_file(state_dict)."""
  path = tmp_path / name
  path.mkdir()
  with open(path / "cfg.json", "w") as f:
    json.dump(cfg_dict, f)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))
  return str(path)


# What SAELens 5.5.2's SAETrainingRunner writes for the paper's config (TrainingSAEConfig.to_dict()).
SAELENS_TRAINED_CFG = {
    "architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cuda",
    "model_name": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "hook_name": "blocks.19.hook_resid_post",
    "hook_layer": 19, "hook_head_index": None, "activation_fn_str": "relu", "activation_fn_kwargs": {},
    "apply_b_dec_to_input": False, "finetuning_scaling_factor": False, "sae_lens_training_version": "5.5.2",
    "prepend_bos": False, "dataset_path": "user/OpenThoughts-tokenized", "dataset_trust_remote_code": True,
    "context_size": 1024, "normalize_activations": "none", "neuronpedia_id": None,
    "model_from_pretrained_kwargs": {}, "seqpos_slice": [None], "l1_coefficient": 5.0, "lp_norm": 1.0,
    "use_ghost_grads": False, "normalize_sae_decoder": False, "noise_scale": 0.0, "decoder_orthogonal_init": False,
    "mse_loss_normalization": None, "decoder_heuristic_init": True, "init_encoder_as_decoder_transpose": True,
    "scale_sparsity_penalty_by_decoder_norm": True, "jumprelu_init_threshold": 0.001, "jumprelu_bandwidth": 0.001,
}


def test_round_trip_is_bit_exact(tmp_path):
  params, cfg = _random_params(), _cfg()
  out = str(tmp_path / "sae")
  assert save_saelens(out, SAE(params, cfg)) == out
  save_saelens(out, SAE(_random_params(1), cfg))  # replacing an existing dir
  save_saelens(out, SAE(params, cfg))
  assert sorted(os.listdir(tmp_path)) == ["sae"]  # no temp dirs left behind
  assert sorted(os.listdir(out)) == [MARKER, "cfg.json", "sae_weights.safetensors"]
  loaded = load_saelens(out)
  assert loaded.cfg == cfg and (loaded.units, loaded.scale) == ("raw", 1.0)
  for n, a in params.items():
    assert loaded.params[n].dtype == np.float32
    np.testing.assert_array_equal(loaded.params[n], a)
  with safe_open(os.path.join(out, "sae_weights.safetensors"), "numpy") as f:
    assert sorted(f.keys()) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())


def test_cfg_json_has_what_saelens_needs(tmp_path):
  out = save_saelens(str(tmp_path / "sae"), SAE(_random_params(), _cfg()))
  with open(os.path.join(out, "cfg.json")) as f:
    d = json.load(f)
  assert set(SAELENS_REQUIRED) <= set(d)
  assert d["architecture"] == "standard" and d["activation_fn_str"] == "relu" and d["apply_b_dec_to_input"] is False
  assert d["hook_name"] == "blocks.3.hook_resid_mid" and d["hook_layer"] == 3 and d["hook_head_index"] is None
  assert d["normalize_activations"] == "none" and d["dtype"] == "float32" and d["finetuning_scaling_factor"] is False
  assert (d["d_in"], d["d_sae"], d["context_size"]) == (D_IN, D_SAE, 1024)


def test_unfolded_weights_keep_their_scaling_factor(tmp_path):
  out = save_saelens(str(tmp_path / "sae"), SAE(_random_params(), _cfg(), "scaled", 1.375576414271735))
  loaded = load_saelens(out)
  assert (loaded.units, loaded.scale) == ("scaled", 1.375576414271735)
  with open(os.path.join(out, "cfg.json")) as f:
    assert json.load(f)["normalize_activations"] == "expected_average_only_in"


def test_saelens_written_dir_loads(tmp_path):
  params = _random_params(2)
  loaded = load_saelens(_saelens_dir(tmp_path, SAELENS_TRAINED_CFG, params))
  cfg = loaded.cfg
  assert (cfg.d_in, cfg.d_sae, cfg.hook_layer, cfg.hook_site) == (D_IN, D_SAE, 19, "resid_post")
  assert not cfg.apply_b_dec_to_input and cfg.l1_coefficient == 5.0 and cfg.context_size == 1024
  assert cfg.model_name == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B" and loaded.units == "raw"
  for n, a in params.items():
    np.testing.assert_array_equal(loaded.params[n], a)


def test_old_saelens_cfg_gets_saelens_defaults(tmp_path):
  """Old files: no architecture, `activation_fn`, bool normalize_activations, no apply_b_dec_to_input (True)."""
  old = {"d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.8.hook_resid_pre", "hook_layer": 8,
         "activation_fn": "relu", "normalize_activations": False, "model_name": "gpt2-small", "dtype": "torch.float32"}
  params = dict(_random_params(3), scaling_factor=np.ones(D_SAE, np.float32))  # an all-ones one is dropped
  loaded = load_saelens(_saelens_dir(tmp_path, old, params))
  assert loaded.cfg.apply_b_dec_to_input and loaded.cfg.hook_site == "resid_pre" and loaded.cfg.hook_layer == 8
  assert sorted(loaded.params) == ["W_dec", "W_enc", "b_dec", "b_enc"]
  x = np.ones((2, D_IN), np.float32)
  with jax.default_matmul_precision("highest"):
    f = loaded.encode(x)
  np.testing.assert_allclose(f, np.maximum((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"], 0), rtol=1e-5,
                             atol=1e-6)


def test_bfloat16_weights_load_as_float32(tmp_path):
  import torch
  from safetensors.torch import save_file as save_torch
  path = tmp_path / "bf16"
  path.mkdir()
  with open(path / "cfg.json", "w") as f:
    json.dump(dict(SAELENS_TRAINED_CFG, dtype="bfloat16"), f)
  tensors = {n: torch.from_numpy(a.copy()).to(torch.bfloat16) for n, a in _random_params(4).items()}
  save_torch(tensors, str(path / "sae_weights.safetensors"))
  loaded = load_saelens(str(path))
  for n, t in tensors.items():
    assert loaded.params[n].dtype == np.float32
    np.testing.assert_array_equal(loaded.params[n], t.float().numpy())


def test_saved_fixture_sae_reproduces_saelens_features(tmp_path):
  """SAELens' own folded weights, saved and reloaded by us, give SAELens' features on raw activations."""
  with np.load(os.path.join(FIXTURES, "saelens_standard", "trajectory.npz")) as z:
    params = {n: z[f"folded_{n}"] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    x, expected = z["inputs"][0], z["eval_folded_feature_acts"]
  d_in, d_sae = params["W_enc"].shape
  loaded = load_saelens(save_saelens(str(tmp_path / "sae"), SAE(params, SAEConfig(d_in=d_in, d_sae=d_sae))))
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(loaded.encode(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg_change, tensor_change, message", [
    ({"architecture": "jumprelu"}, None, "unsupported SAE architecture 'jumprelu'.*expected 'standard'"),
    ({"activation_fn_str": "topk"}, None, "unsupported activation_fn_str 'topk'"),
    ({"normalize_activations": "layer_norm"}, None, "normalize_activations='layer_norm' is not supported"),
    ({"metadata": {"sae_lens_version": "6.54.12"}, "normalize_activations": "covariance_whitening"}, None,
     "normalize_activations='covariance_whitening' is not supported: expected one of"),
    ({"finetuning_scaling_factor": True}, None, "finetuning_scaling_factor=True is not supported"),
    ({"reshape_activations": "hook_z"}, None, "reshape_activations='hook_z' is not supported: expected one of"),
    ({"hook_head_index": 3}, None, "hook_head_index=3 is not supported"),
    ({"hook_name": "blocks.8.attn.hook_z"}, None, "unsupported hook_name 'blocks.8.attn.hook_z'"),
    ({"d_sae": "many"}, None, "d_sae='many': expected an integer"),
    ({"d_in": None}, None, "d_in=None: expected an integer"),
    ({"d_sae": 2 * D_SAE}, None, f"tensor W_enc has shape \\({D_IN}, {D_SAE}\\): expected \\({D_IN}, {2 * D_SAE}\\)"),
    (None, {"drop": "b_dec"}, "tensors missing \\['b_dec'\\]"),
    (None, {"add": "threshold"}, "unexpected \\['threshold'\\]"),
    (None, {"add": "scaling_factor"}, "non-trivial 'scaling_factor'"),
    (None, {"transpose": "W_dec"}, f"tensor W_dec has shape \\({D_IN}, {D_SAE}\\): expected \\({D_SAE}, {D_IN}\\)"),
])
def test_bad_saelens_dirs_raise_user_error(tmp_path, cfg_change, tensor_change, message):
  cfg, tensors = dict(SAELENS_TRAINED_CFG, **(cfg_change or {})), _random_params(5)
  tensor_change = tensor_change or {}
  if "drop" in tensor_change:
    del tensors[tensor_change["drop"]]
  if "add" in tensor_change:
    tensors[tensor_change["add"]] = np.full(D_SAE, 0.5, np.float32)
  if "transpose" in tensor_change:
    tensors[tensor_change["transpose"]] = tensors[tensor_change["transpose"]].T
  with pytest.raises(UserError, match=message) as e:
    load_saelens(_saelens_dir(tmp_path, cfg, tensors))
  assert "\n" not in str(e.value)


def test_missing_and_broken_files_raise_user_error(tmp_path):
  with pytest.raises(UserError, match="cfg.json not found: expected a SAELens SAE dir"):
    load_saelens(str(tmp_path / "nowhere"))
  path = _saelens_dir(tmp_path, SAELENS_TRAINED_CFG, _random_params())
  missing_key = dict(SAELENS_TRAINED_CFG)
  del missing_key["hook_name"]
  with open(os.path.join(path, "cfg.json"), "w") as f:
    json.dump(missing_key, f)
  with pytest.raises(UserError, match="missing the key 'hook_name'"):
    load_saelens(path)
  with open(os.path.join(path, "cfg.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(UserError, match="cfg.json is not valid JSON"):
    load_saelens(path)
  with open(os.path.join(path, "cfg.json"), "w") as f:
    json.dump(SAELENS_TRAINED_CFG, f)
  with open(os.path.join(path, "sae_weights.safetensors"), "wb") as f:
    f.write(b"garbage")
  with pytest.raises(UserError, match="sae_weights.safetensors is not a readable safetensors file"):
    load_saelens(path)
  os.remove(os.path.join(path, "sae_weights.safetensors"))
  with pytest.raises(UserError, match="sae_weights.safetensors not found"):
    load_saelens(path)


def test_save_rejects_wrong_params(tmp_path):
  params = _random_params()
  params["W_enc"] = params["W_enc"][:, :-1]
  with pytest.raises(UserError, match="tensor W_enc has shape"):
    save_saelens(str(tmp_path / "sae"), SAE(params, _cfg()))
  with pytest.raises(UserError, match="norm_scaling_factor given but .* normalize_activations='none'"):
    save_saelens(str(tmp_path / "sae"), SAE(_random_params(), _cfg(normalize_activations="none"), "scaled", 2.0))
  assert not os.path.exists(tmp_path / "sae")
