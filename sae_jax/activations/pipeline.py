"""From an ml_collections config to the pieces of a run: mesh, model, token rows, activation producer."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from sae_jax.errors import UserError
from sae_jax.models import sharding as shd


def mesh_from_config(c):
  return shd.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.model)


def tokenizer_path(c) -> str:
  return c.data.tokenizer or c.model.path


def token_rows_from_config(c) -> np.ndarray:
  """The packed corpus [rows, context_size] (int32), deterministic given the config."""
  from sae_jax.data import build_rows, load_tokenizer
  from sae_jax.data.packing import extraction_rows
  tokenizer = load_tokenizer(tokenizer_path(c))
  if c.data.get("shuffle_seed", -1) >= 0:  # the ReasonScore extraction set: packed, shuffled, first num_rows
    if c.data.add_bos or len(c.data.sources) != 1:
      raise UserError("data.shuffle_seed (the extraction set's row shuffle) takes one source and add_bos=False")
    return extraction_rows(list(c.data.sources), tokenizer, c.data.context_size, c.data.mode, c.data.num_rows,
                           c.data.shuffle_seed)
  rows = build_rows(list(c.data.sources), tokenizer, context_size=c.data.context_size, mode=c.data.mode,
                    add_bos=c.data.add_bos, num_rows=c.data.num_rows or None, seed=c.data.seed)
  if len(rows) == 0:
    raise UserError(f"the corpus {list(c.data.sources)} gave no rows of {c.data.context_size} tokens")
  return rows


def model_source_from_config(c, sae_cfg, mesh, loop: bool):
  """`ActivationSource` running the config's model to layer `hook_layer`, checking the SAE's width."""
  from sae_jax.activations.collect import ActivationSource
  from sae_jax.models import checkpoint
  model = checkpoint.load_any(c.model.path, dtype=jnp.dtype(c.model.dtype), mesh=mesh)
  if model.cfg.hidden_size != sae_cfg.d_in:
    raise UserError(f"SAE d_in {sae_cfg.d_in} != model width {model.cfg.hidden_size} at "
                    f"{sae_cfg.hook_site} of layer {sae_cfg.hook_layer}")
  rows = token_rows_from_config(c)
  return ActivationSource(model, rows, layer=sae_cfg.hook_layer, site=sae_cfg.hook_site,
                          exclude_ids=sae_cfg.exclude_special_tokens, batch_rows=c.data.store_batch_rows,
                          mesh=mesh, loop=loop)


def producer_from_config(c, sae_cfg, mesh):
  """Cached shards when `activations.cache_dir` is set, otherwise the model on the fly."""
  from sae_jax.activations.shards import ShardReader
  if c.activations.cache_dir:
    if "://" not in c.activations.cache_dir and not os.path.isdir(c.activations.cache_dir):
      raise UserError(f"activations.cache_dir {c.activations.cache_dir} does not exist")
    return ShardReader(c.activations.cache_dir, d=sae_cfg.d_in, loop=c.activations.loop)
  return model_source_from_config(c, sae_cfg, mesh, loop=c.activations.loop)


def sae_config_from_config(c):
  from sae_jax.sae import SAEConfig
  return SAEConfig.from_dict(dict(c.sae))
