"""EleutherAI sparsify's on-disk SAE format (`SparseCoder.save_to_disk` / `load_from_disk`), for topk SAEs.

A dir (sparsify names it after the hookpoint, e.g. `layers.19`) with `cfg.json` (the `SparseCoderConfig` fields
activation, expansion_factor, normalize_decoder, num_latents, k, multi_topk, skip_connection, transcode, plus
d_in) and `sae.safetensors` with encoder.weight [d_sae, d_in] (= W_enc.T, an nn.Linear), encoder.bias [d_sae],
W_dec [d_sae, d_in] and b_dec [d_in]. sparsify always encodes x - b_dec, so only topk SAEs with
apply_b_dec_to_input = true map onto it. We add our full config under "sae_jax" (sparsify drops unknown keys).
"""

import os
import re
from typing import Any

import numpy as np

from sae_jax import __version__
from sae_jax.errors import UserError
from sae_jax.sae.config import SAEConfig, parse_hook_name
from sae_jax.sae.core import SAE, checked_params
from sae_jax.sae.saelens_format import read_sae_dir, read_tensors, unit_norm_rows, write_sae_dir

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae.safetensors"
_HOOKPOINT = re.compile(r"^layers\.(\d+)(\.mlp)?$")  # sparsify's hookpoint names: block output / its MLP output


def sparsify_cfg_dict(cfg: SAEConfig, w_dec) -> dict[str, Any]:
  """`normalize_decoder` says what is true of the written rows: an SAE trained with unit rows on scaled
  activations has rows of norm 1 / scale in raw units (sparsify renormalises rows when it trains on)."""
  return {"activation": "topk", "expansion_factor": max(cfg.d_sae // cfg.d_in, 1),
          "normalize_decoder": cfg.normalize_decoder and unit_norm_rows(w_dec), "num_latents": cfg.d_sae, "k": cfg.k,
          "multi_topk": False,
          "skip_connection": False, "transcode": False, "d_in": cfg.d_in,
          "sae_jax": {"version": __version__, "config": cfg.to_dict()}}


def save_sparsify(out_dir: str, sae: SAE) -> str:
  """Writes a topk SAE atomically, in raw units (sparsify has no activation scaling)."""
  cfg = sae.cfg
  if cfg.architecture != "topk":
    raise UserError(f"sparsify format holds topk SAEs: got architecture={cfg.architecture!r}")
  if not cfg.apply_b_dec_to_input:
    raise UserError("sparsify encodes x - b_dec: expected apply_b_dec_to_input=true for the sparsify format")
  p = checked_params(sae.raw().params, cfg, "params to save")
  arrays = {"encoder.weight": np.ascontiguousarray(p["W_enc"].T), "encoder.bias": p["b_enc"], "W_dec": p["W_dec"],
            "b_dec": p["b_dec"]}
  return write_sae_dir(out_dir, arrays, sparsify_cfg_dict(cfg, p["W_dec"]), CFG_FILENAME, WEIGHTS_FILENAME)


def load_sparsify(path: str, hook_name: str | None = None) -> SAE:
  """Reads a sparsify SAE dir as a topk SAE in raw units (params float32, W_enc = encoder.weight.T).

  The hook comes from our "sae_jax" config, else `hook_name`, else the dir name (`layers.N` -> resid_post of
  block N, `layers.N.mlp` -> its mlp_out).
  """
  raw, cfg_path, weights_path = read_sae_dir(path, "sparsify", CFG_FILENAME, WEIGHTS_FILENAME)
  cfg = _config_from_sparsify(raw, path, hook_name, cfg_path)
  tensors = read_tensors(weights_path)
  if "W_skip" in tensors:
    raise UserError(f"{weights_path}: a skip connection (W_skip) is not supported: expected a plain SAE")
  if "encoder.weight" in tensors:
    tensors["W_enc"] = np.ascontiguousarray(tensors.pop("encoder.weight").T)
  if "encoder.bias" in tensors:
    tensors["b_enc"] = tensors.pop("encoder.bias")
  return SAE(checked_params(tensors, cfg, weights_path), cfg)


def _config_from_sparsify(raw, path, hook_name, where) -> SAEConfig:
  for key, ok in (("activation", "topk"), ("transcode", False), ("skip_connection", False)):
    if raw.get(key, ok) != ok:
      raise UserError(f"{where}: sparsify {key}={raw[key]!r} is not supported: expected {ok!r}")
  if "d_in" not in raw:
    raise UserError(f"{where} is missing the key 'd_in'")
  ours = raw.get("sae_jax")
  if isinstance(ours, dict) and "config" in ours:
    cfg = SAEConfig.from_dict(ours["config"])
    if (cfg.d_in, cfg.d_sae, cfg.k) != (raw["d_in"], raw.get("num_latents"), raw.get("k")):
      raise UserError(f"{where}: the 'sae_jax' config disagrees with d_in/num_latents/k: expected the same")
    return cfg
  d_in = raw["d_in"]
  d_sae = raw.get("num_latents") or (d_in * raw.get("expansion_factor", 32) if isinstance(d_in, int) else None)
  if hook_name is None:
    m = _HOOKPOINT.match(os.path.basename(os.path.normpath(path)))
    if not m:
      raise UserError(f"{where}: cannot tell the hook of this sparsify SAE from its dir name: pass hook_name "
                      "(e.g. 'blocks.19.hook_resid_post') or name the dir 'layers.<N>'")
    hook_name = f"blocks.{m.group(1)}.hook_{'mlp_out' if m.group(2) else 'resid_post'}"
  layer, site = parse_hook_name(hook_name)
  return SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=raw.get("k", 32), apply_b_dec_to_input=True,
                   normalize_decoder=raw.get("normalize_decoder", True), hook_layer=layer, hook_site=site,
                   normalize_activations="none")
