"""SAELens' on-disk SAE format: a dir with `cfg.json` + `sae_weights.safetensors` (W_enc, b_enc, W_dec, b_dec,
and `threshold` [d_sae] for JumpReLU).

Writing: SAELens 5.x's layout (hook and data keys at the top level), which SAELens 5.5.2 loads as an `SAE` and
as a `TrainingSAE` (its TrainingSAEConfig needs every training key, jumprelu ones included) and SAELens 6 loads
through its pre-6.0 conversion; our full config goes under "sae_jax". Architectures as SAELens names them:
standard (ReLU); topk (architecture "topk", activation_fn_str "topk", k in activation_fn_kwargs and at the top
level, `rescale_acts_by_decoder_norm: false`, which SAELens 6's training config would otherwise default to true);
jumprelu (threshold = exp(log_threshold)); batchtopk is saved as the JumpReLU SAE it is at inference, as SAELens
exports it.

Reading: ours, SAELens 5.x (`save_model`, the trainer's checkpoints) and SAELens 6 (`save_model` = training
format, `save_inference_model`; hook and data keys under "metadata"): standard, topk, jumprelu, and SAELens 6's
training-format batchtopk (its scalar `topk_threshold` becomes the JumpReLU threshold, as SAELens' inference
export does). A key that changes the maths is implemented or refused by name (`_refuse_unsupported`), never
ignored: topk / batchtopk `rescale_acts_by_decoder_norm: true` (SAELens 6's training default: the top k is taken
of pre-activations times decoder row norms) is the same SAE with those norms folded in, so it loads in "folded"
units. What the weights take (raw or scaled activations) is decided once, in `saelens_units`.
"""

import json
import os
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from sae_jax import __version__
from sae_jax import io as sio
from sae_jax.errors import UserError
from sae_jax.sae.config import NORMALIZE_ACTIVATIONS, SAEConfig, parse_hook_name
from sae_jax.sae.core import SAE, architecture, checked_params, fold_W_dec_norm

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
# Where SAELens keeps the norm scaling factor of weights it has not folded yet (mid-training checkpoints):
# SAELens 6 in activation_scaler.json {"scaling_factor": s}, 5.x as a tensor of the activations store's state.
SAELENS6_SCALER = "activation_scaler.json"
SAELENS5_STORE = "activations_store_state.safetensors"
UNIT_NORM_ATOL = 1e-4  # decoder rows within this of norm 1 are written as unit-norm (normalize_sae_decoder)


def saelens_architecture(cfg: SAEConfig) -> str:
  """The architecture SAELens loads our SAE as (batchtopk is a jumprelu SAE at inference)."""
  return architecture(cfg).saelens_keys(cfg)["architecture"]


def unit_norm_rows(w_dec) -> bool:
  """Whether every decoder row has norm 1 (what a file's `normalize_*decoder` key may then truthfully say)."""
  return bool(np.all(np.abs(np.linalg.norm(np.asarray(w_dec, np.float64), axis=1) - 1) <= UNIT_NORM_ATOL))


def saelens_cfg_dict(sae: SAE) -> dict[str, Any]:
  """cfg.json contents: SAELens 5.5.2 `TrainingSAEConfig.to_dict()` keys + ours under "sae_jax"."""
  cfg = sae.cfg
  scaled = sae.units == "scaled"
  return {
      "d_in": cfg.d_in,
      "d_sae": cfg.d_sae,
      "dtype": "float32",
      "device": "cpu",
      "model_name": cfg.model_name,
      "hook_name": cfg.hook_name,
      "hook_layer": cfg.hook_layer,
      "hook_head_index": None,
      "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
      "finetuning_scaling_factor": False,
      "sae_lens_training_version": None,
      "prepend_bos": cfg.prepend_bos,
      "dataset_path": cfg.dataset_path,
      "dataset_trust_remote_code": True,
      "context_size": cfg.context_size,
      "normalize_activations": "expected_average_only_in" if scaled else "none",
      "neuronpedia_id": None,
      "model_from_pretrained_kwargs": {},
      "seqpos_slice": [None],
      # What SAELens' TrainingSAEConfig adds; it describes how these weights were trained.
      "lp_norm": 1.0,
      "use_ghost_grads": False,
      "normalize_sae_decoder": cfg.normalize_decoder and unit_norm_rows(sae.params["W_dec"]),
      "noise_scale": 0.0,
      "decoder_orthogonal_init": False,
      "mse_loss_normalization": None,
      "init_encoder_as_decoder_transpose": True,
      "jumprelu_init_threshold": cfg.jumprelu_init_threshold,
      "jumprelu_bandwidth": cfg.jumprelu_bandwidth,
      # architecture, activation_fn_str / _kwargs, l1_coefficient, decoder_heuristic_init, ...
      **architecture(cfg).saelens_keys(cfg),
      "sae_jax": {"version": __version__, "config": cfg.to_dict(), "units": sae.units,
                  "norm_scaling_factor": float(sae.scale) if scaled else None},
  }


def save_saelens(out_dir: str, sae: SAE) -> str:
  """Writes `out_dir` atomically (temp dir beside it, then rename); an existing `out_dir` is replaced.

  An SAE in raw (or folded) units is what SAELens itself saves at the end of training; one in scaled units keeps
  its norm scaling factor (normalize_activations 'expected_average_only_in'). Training params are fine: a
  jumprelu log_threshold is written as threshold = exp(log_threshold).
  """
  if sae.units == "scaled" and sae.cfg.normalize_activations == "none":
    raise UserError("norm_scaling_factor given but the SAE config has normalize_activations='none'")
  sae = sae.inference()
  arrays = checked_params(sae.params, sae.cfg, "params to save")
  return write_sae_dir(out_dir, arrays, saelens_cfg_dict(sae.replace(params=arrays)), CFG_FILENAME,
                       WEIGHTS_FILENAME)


def write_sae_dir(out_dir: str, arrays: dict, cfg_dict: dict, cfg_name: str, weights_name: str) -> str:
  """An SAE dir, `cfg_name` (JSON) + `weights_name` (safetensors, as torch writes them), complete or absent."""

  def write(tmp):
    save_file(arrays, os.path.join(tmp, weights_name), metadata={"format": "pt"})
    with open(os.path.join(tmp, cfg_name), "w") as f:
      json.dump(cfg_dict, f, indent=2)

  return sio.write_dir(out_dir, write, "SAE")


def read_sae_dir(path: str, kind: str, cfg_name: str, weights_name: str) -> tuple[dict, str, str]:
  """(cfg.json as a dict, its path, the weights path) of an SAE dir, with one-line errors for what is off."""
  cfg_path, weights_path = os.path.join(path, cfg_name), os.path.join(path, weights_name)
  for p in (cfg_path, weights_path):
    if not os.path.isfile(p):
      raise UserError(f"{p} not found: expected a {kind} SAE dir with {cfg_name} and {weights_name}")
  try:
    with open(cfg_path) as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{cfg_path} is not valid JSON: {e}") from None
  if not isinstance(raw, dict):
    raise UserError(f"{cfg_path} must hold a JSON object")
  return raw, cfg_path, weights_path


def load_saelens(path: str, overrides: dict | None = None, norm_scaling_factor: float | None = None) -> SAE:
  """Reads a SAELens SAE dir (ours, SAELens 5.x or 6) as an SAE of float32 numpy params, whatever their stored
  dtype, in the units `saelens_units` gives.

  `overrides` (cfg.json keys) and `norm_scaling_factor` are what SAELens' pretrained_saes.yaml says of a hub
  release (`config_overrides`, a factor SAELens folds in when loading it).
  """
  raw, cfg_path, weights_path = read_sae_dir(path, "SAELens", CFG_FILENAME, WEIGHTS_FILENAME)
  d = _flat(dict(raw, **(overrides or {})))
  try:
    cfg = _config_from_saelens(d)
    units, scale = saelens_units(d, path, norm_scaling_factor)
  except UserError as e:
    msg = str(e)
    raise UserError(msg if msg.startswith(cfg_path) else f"{cfg_path}: {msg}") from None
  tensors = read_tensors(weights_path)
  if "threshold" in architecture(cfg).param_names(training=False) and not {"threshold", "log_threshold",
                                                                            "topk_threshold"} & set(tensors):
    raise UserError(f"{weights_path}: unsupported SAE architecture {d.get('architecture')!r} with no 'threshold' "
                    f"tensor: expected 'standard' weights, or a threshold [{cfg.d_sae}] for jumprelu")
  threshold = _threshold(tensors, cfg.d_sae)
  if d.get("rescale_acts_by_decoder_norm") and cfg.architecture in ("topk", "batchtopk"):  # SAELens' TopK field
    # SAELens: topk of h * |W_dec_i|, decoded with f / |W_dec_i|: the folded SAE. A threshold (batchtopk) is
    # already in those units, so it is not folded.
    tensors = {k: np.asarray(v, np.float32) for k, v in fold_W_dec_norm(tensors).items()}
    units = "folded" if units == "raw" else units
  if threshold is not None:
    tensors["threshold"] = threshold
  return SAE(checked_params(tensors, cfg, weights_path), cfg, units, scale)


def saelens_units(d: dict, path: str | None, norm_scaling_factor: float | None = None) -> tuple[str, float]:
  """(units, scale) of a SAELens dir's weights: the one place that decides it.

  Ours: as saved under "sae_jax". SAELens' `normalize_activations: expected_average_only_in` says how the SAE was
  trained, not what its weights take: SAELens folds the factor into the weights at the end of training (5.x still
  writes the key into the final cfg.json; SAELens' SAE never scales at inference), so such weights are raw unless
  the factor that was not folded is known: a mid-training checkpoint's (SAELens 6 activation_scaler.json, 5.x
  activations store state) or a hub release's `norm_scaling_factor` (which SAELens' from_pretrained folds in).
  """
  ours = d.get("sae_jax")
  if isinstance(ours, dict) and "config" in ours:
    s = ours.get("norm_scaling_factor")
    return ("scaled", float(s)) if s is not None else (ours.get("units", "raw"), 1.0)
  if d.get("normalize_activations") != "expected_average_only_in":
    return "raw", 1.0
  s = norm_scaling_factor if norm_scaling_factor is not None else _checkpoint_scaling_factor(path)
  return ("raw", 1.0) if s is None else ("scaled", float(s))


def _checkpoint_scaling_factor(path: str | None) -> float | None:
  if path is None:
    return None
  scaler = os.path.join(path, SAELENS6_SCALER)
  if os.path.isfile(scaler):
    try:
      with open(scaler) as f:
        s = json.load(f).get("scaling_factor")
    except (json.JSONDecodeError, AttributeError) as e:
      raise UserError(f"{scaler} is not a JSON object with 'scaling_factor': {e}") from None
    return None if s is None else float(s)
  store = os.path.join(path, SAELENS5_STORE)
  if not os.path.isfile(store):
    return None
  try:  # read the one scalar: the file also holds the activation buffer
    with safe_open(store, framework="numpy") as f:
      names = set(f.keys())  # noqa: SIM118 (safe_open is not a mapping)
      s = f.get_tensor("estimated_norm_scaling_factor") if "estimated_norm_scaling_factor" in names else None
  except (OSError, SafetensorError) as e:
    raise UserError(f"{store} is not a readable safetensors file: {e}") from None
  return None if s is None else float(s)


def _flat(d: dict) -> dict:
  """SAELens 6 keeps hook and data keys under "metadata", 5.x at the top level: one flat dict (top level wins);
  pre-2024 files stored normalize_activations as a bool."""
  meta = d.get("metadata")
  out = {**(meta if isinstance(meta, dict) else {}), **{k: v for k, v in d.items() if k != "metadata"}}
  if isinstance(out.get("normalize_activations"), bool):
    out["normalize_activations"] = "expected_average_only_in" if out["normalize_activations"] else "none"
  return out


# Keys of SAELens 5.x / 6 cfg.json files that change what the SAE computes, with the values we implement; any
# other value is refused by name. (rescale_acts_by_decoder_norm is implemented in load_saelens; training-only
# keys, such as losses and their coefficients, change nothing at inference; model_from_pretrained_kwargs'
# TransformerLens processing leaves the residual stream of RMSNorm models, the only ones we run, as it is.)
_MATHS_KEYS = {"finetuning_scaling_factor": (False, None), "hook_head_index": (None,),
               "reshape_activations": ("none", None), "normalize_activations": NORMALIZE_ACTIVATIONS + (None,)}


def _refuse_unsupported(d: dict) -> None:
  for key, ok in _MATHS_KEYS.items():
    if key in d and d[key] not in ok:
      raise UserError(f"{key}={d[key]!r} is not supported: expected one of {[v for v in ok if v is not None]}")


def _config_from_saelens(d: dict[str, Any]) -> SAEConfig:
  """SAELens keys (flattened) -> SAEConfig, with SAELens' defaults for old cfg.json files."""
  _refuse_unsupported(d)
  arch = d.get("architecture", "standard")
  activation = d.get("activation_fn_str", d.get("activation_fn", "relu"))
  arch_kwargs = _saelens_architecture_kwargs(arch, activation, d)
  for key in ("d_in", "d_sae", "hook_name"):
    if key not in d:
      raise UserError(f"missing the key {key!r}")
  ours = d.get("sae_jax")
  if isinstance(ours, dict) and "config" in ours:
    cfg = SAEConfig.from_dict(ours["config"])
    if ((cfg.d_in, cfg.d_sae, cfg.hook_name, saelens_architecture(cfg))
        != (d["d_in"], d["d_sae"], d["hook_name"], arch)):
      raise UserError("the 'sae_jax' config disagrees with d_in/d_sae/hook_name/architecture: expected the same")
    return cfg
  layer, site = parse_hook_name(d["hook_name"])
  kwargs = dict(d_in=d["d_in"], d_sae=d["d_sae"], apply_b_dec_to_input=bool(d.get("apply_b_dec_to_input", True)),
                model_name=str(d.get("model_name") or ""), hook_layer=layer, hook_site=site,
                dataset_path=str(d.get("dataset_path") or ""), prepend_bos=bool(d.get("prepend_bos", True)),
                normalize_activations=d.get("normalize_activations") or "none", **arch_kwargs)
  if d.get("context_size"):
    kwargs["context_size"] = d["context_size"]
  jumprelu = kwargs["architecture"] == "jumprelu"
  if d.get("l1_coefficient") is not None:  # SAELens 5.x: jumprelu's L0 coefficient too
    kwargs["l0_coefficient" if jumprelu else "l1_coefficient"] = d["l1_coefficient"]
  training = ("jumprelu_init_threshold", "jumprelu_bandwidth", "l0_coefficient") if jumprelu else (
      ("topk_threshold_lr",) if kwargs["architecture"] == "batchtopk" else ())
  kwargs.update({k: d[k] for k in training if d.get(k)})
  return SAEConfig(**kwargs)


def _saelens_architecture_kwargs(arch, activation, d) -> dict[str, Any]:
  """SAEConfig fields for SAELens' (architecture, activation): standard+relu, topk (as architecture "topk" or, in
  older files, standard + activation "topk"), jumprelu+relu, SAELens 6's training-format batchtopk."""
  if arch in ("jumprelu", "standard") and activation == "relu":
    return {"architecture": arch}
  if arch in ("standard", "topk", "batchtopk") and activation in ("topk", "relu"):
    kwargs = d.get("activation_fn_kwargs") or {}
    k = kwargs.get("k", d.get("k")) if isinstance(kwargs, dict) else None
    if k is None:
      raise UserError(f"unsupported activation_fn_str {activation!r} without a k "
                      "(activation_fn_kwargs {'k': ...}): expected 'relu', or 'topk' with k")
    if isinstance(k, float) and k.is_integer():
      k = int(k)
    return {"architecture": "batchtopk" if arch == "batchtopk" else "topk", "k": k}
  if arch in ("standard", "jumprelu", "topk", "batchtopk"):
    raise UserError(f"unsupported activation_fn_str {activation!r} for architecture {arch!r}: "
                    "expected 'relu' (or 'topk' for topk)")
  raise UserError(f"unsupported SAE architecture {arch!r}: expected 'standard', 'topk', 'batchtopk' or "
                  "'jumprelu'")


def _threshold(tensors: dict, d_sae: int):
  """Pops a JumpReLU threshold in any of SAELens' forms: `threshold` [d_sae], `log_threshold` (older training
  checkpoints), batchtopk's scalar `topk_threshold` (one value for every latent, as SAELens exports it)."""
  if "log_threshold" in tensors:
    return np.exp(tensors.pop("log_threshold")).astype(np.float32)
  if "topk_threshold" in tensors:
    t = tensors.pop("topk_threshold")
    return np.full((d_sae,), t, np.float32) if np.ndim(t) == 0 else t
  return tensors.pop("threshold", None)


def read_tensors(weights_path: str) -> dict[str, np.ndarray]:
  """Every tensor of a safetensors file as float32 numpy (bf16 through jax on the host)."""
  tensors = {}
  try:
    with safe_open(weights_path, framework="numpy") as f:
      for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
        if f.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16 reader; go through jax on the host
          with safe_open(weights_path, framework="flax") as g, jax.default_device(jax.devices("cpu")[0]):
            tensors[name] = np.asarray(g.get_tensor(name), np.float32)
        else:
          tensors[name] = f.get_tensor(name).astype(np.float32, copy=False)
  except (OSError, SafetensorError) as e:
    raise UserError(f"{weights_path} is not a readable safetensors file: {e}") from None
  scale = tensors.pop("scaling_factor", None)  # some SAELens-era files carry an all-ones one
  if scale is not None and not np.all(scale == 1):
    raise UserError(f"{weights_path}: a non-trivial 'scaling_factor' tensor is not supported: expected all ones")
  return tensors
