"""SAELens' on-disk SAE format: a dir with `cfg.json` + `sae_weights.safetensors` (W_enc, b_enc, W_dec, b_dec,
and `threshold` [d_sae] for JumpReLU).

What we write loads with SAELens 5.5.2 `SAE.load_from_pretrained(dir)` (and, uploaded to the hub, with
`SAE.from_pretrained`): cfg.json carries every `SAEConfig` field, the training keys SAELens' trainer writes,
and our full config under "sae_jax". Architectures as SAELens 5.5.2 names them: standard (ReLU); topk
(architecture "topk", activation_fn_str "topk", k in activation_fn_kwargs; also a top-level "k" as SAELens 6
reads it); jumprelu (threshold tensor = exp(log_threshold)); batchtopk is saved as a jumprelu SAE, as SAELens
exports it. What SAELens writes loads here in those forms too (also the older standard + activation "topk").
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
from sae_jax.sae.core import SAE, architecture, checked_params

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"


def saelens_architecture(cfg: SAEConfig) -> str:
  """The architecture SAELens loads our SAE as (batchtopk is a jumprelu SAE at inference)."""
  return architecture(cfg).saelens_keys(cfg)["architecture"]


def saelens_cfg_dict(sae: SAE) -> dict[str, Any]:
  """cfg.json contents: SAELens 5.5.2 `SAEConfig.to_dict()` keys + its trainer's keys + ours under "sae_jax"."""
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
      "normalize_sae_decoder": cfg.normalize_decoder,
      "noise_scale": 0.0,
      "decoder_orthogonal_init": False,
      "mse_loss_normalization": None,
      "init_encoder_as_decoder_transpose": True,
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
  arrays = checked_params(sae.inference().params, sae.cfg, "params to save")
  return write_sae_dir(out_dir, arrays, saelens_cfg_dict(sae), CFG_FILENAME, WEIGHTS_FILENAME)


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


def load_saelens(path: str) -> SAE:
  """Reads a SAELens SAE dir (ours or SAELens') as an SAE of float32 numpy params, whatever their stored dtype.

  Its units are "scaled" when we saved it with its norm scaling factor, else as saved ("raw" for SAELens' own
  files: a SAELens file that expects scaled activations does not store the factor, so it is used as it is).
  """
  raw, cfg_path, weights_path = read_sae_dir(path, "SAELens", CFG_FILENAME, WEIGHTS_FILENAME)
  try:
    cfg, units, s = _config_from_saelens(raw, cfg_path)
  except UserError as e:
    msg = str(e)
    raise UserError(msg if msg.startswith(cfg_path) else f"{cfg_path}: {msg}") from None
  tensors = read_tensors(weights_path)
  if "threshold" in architecture(cfg).param_names(training=False) and "threshold" not in tensors:
    raise UserError(f"{weights_path}: unsupported SAE architecture {raw.get('architecture')!r} with no 'threshold' "
                    f"tensor: expected 'standard' weights, or a threshold [{cfg.d_sae}] for jumprelu")
  return SAE(checked_params(tensors, cfg, weights_path), cfg, units, s)


def _config_from_saelens(raw: dict[str, Any], where: str) -> tuple[SAEConfig, str, float]:
  """SAELens keys -> (SAEConfig, units, scale), with SAELens' defaults for old cfg.json files
  (`handle_config_defaulting`)."""
  d = dict(raw)
  if isinstance(d.get("normalize_activations"), bool):  # pre-2024 files stored a bool
    d["normalize_activations"] = "expected_average_only_in" if d["normalize_activations"] else "none"
  architecture = d.get("architecture", "standard")
  activation = d.get("activation_fn_str", d.get("activation_fn", "relu"))
  normalize = d.get("normalize_activations", "none")
  arch_kwargs = _saelens_architecture_kwargs(architecture, activation, d, where)
  if d.get("finetuning_scaling_factor", False):
    raise UserError(f"{where}: finetuning_scaling_factor=true is not supported: expected false")
  if normalize not in NORMALIZE_ACTIVATIONS:
    raise UserError(f"{where}: unsupported normalize_activations {normalize!r}: "
                    f"expected one of {NORMALIZE_ACTIVATIONS}")
  for key in ("d_in", "d_sae", "hook_name"):
    if key not in d:
      raise UserError(f"{where} is missing the key {key!r}")
  ours = d.get("sae_jax")
  if isinstance(ours, dict) and "config" in ours:
    cfg = SAEConfig.from_dict(ours["config"])
    if ((cfg.d_in, cfg.d_sae, cfg.hook_name, saelens_architecture(cfg))
        != (d["d_in"], d["d_sae"], d["hook_name"], architecture)):
      raise UserError(f"{where}: the 'sae_jax' config disagrees with d_in/d_sae/hook_name/architecture: "
                      "expected the same")
    s = ours.get("norm_scaling_factor")
    return cfg, ("scaled" if s is not None else ours.get("units", "raw")), (1.0 if s is None else float(s))
  layer, site = parse_hook_name(d["hook_name"])
  kwargs = dict(d_in=d["d_in"], d_sae=d["d_sae"], apply_b_dec_to_input=bool(d.get("apply_b_dec_to_input", True)),
                model_name=str(d.get("model_name") or ""), hook_layer=layer, hook_site=site,
                dataset_path=str(d.get("dataset_path") or ""), prepend_bos=bool(d.get("prepend_bos", True)),
                normalize_activations=normalize, **arch_kwargs)
  if d.get("context_size"):
    kwargs["context_size"] = d["context_size"]
  if d.get("l1_coefficient") is not None:
    kwargs["l0_coefficient" if kwargs["architecture"] == "jumprelu" else "l1_coefficient"] = d["l1_coefficient"]
  for key in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
    if kwargs["architecture"] == "jumprelu" and d.get(key):
      kwargs[key] = d[key]
  return SAEConfig(**kwargs), "raw", 1.0


def _saelens_architecture_kwargs(architecture, activation, d, where) -> dict[str, Any]:
  """SAEConfig fields for SAELens' (architecture, activation_fn_str): standard+relu, topk (as architecture "topk"
  or, in older files, standard + activation "topk"), jumprelu+relu."""
  if architecture == "jumprelu" and activation == "relu":
    return {"architecture": "jumprelu"}
  if architecture == "standard" and activation == "relu":
    return {"architecture": "standard"}
  if architecture in ("standard", "topk") and activation in ("topk", "relu"):
    kwargs = d.get("activation_fn_kwargs") or {}
    k = kwargs.get("k", d.get("k")) if isinstance(kwargs, dict) else None
    if k is None:
      raise UserError(f"{where}: unsupported activation_fn_str {activation!r} without a k "
                      "(activation_fn_kwargs {'k': ...}): expected 'relu', or 'topk' with k")
    return {"architecture": "topk", "k": k}
  if architecture in ("standard", "jumprelu", "topk"):
    raise UserError(f"{where}: unsupported activation_fn_str {activation!r} for architecture {architecture!r}: "
                    "expected 'relu' (or 'topk' for topk)")
  raise UserError(f"{where}: unsupported SAE architecture {architecture!r}: expected 'standard', 'topk' or "
                  "'jumprelu'")


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
