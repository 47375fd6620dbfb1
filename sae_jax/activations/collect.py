"""The truncated forward that returns one hook site, and the token stream it turns into activations."""

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.models.transformer import SITES, Hooks, Transformer


def make_site_fn(model: Transformer, layer: int, site: str, mesh=None):
  """jitted fn(tokens [B, T]) -> f32 activations [B, T, d] of `site` at `layer`; stops after `layer`.

  Batches are sharded on the data axes; the forward never runs the layers past `layer`.
  """
  model.cfg.validate_layer(layer)
  if site not in SITES:
    raise UserError(f"unknown site {site!r}: expected one of {SITES}")
  graphdef, state = nnx.split(model)
  hooks = Hooks(capture=frozenset({(layer, site)}))
  out_sharding = shd.batch_sharding(mesh, 3) if mesh is not None else None

  @functools.partial(jax.jit, out_shardings=out_sharding)
  def run(state, tokens):
    out = nnx.merge(graphdef, state)(tokens, hooks=hooks, stop_after_layer=layer)
    return out.captured[(layer, site)].astype(jnp.float32)

  return lambda tokens: run(state, tokens)


class ActivationSource:
  """Rows of token ids -> activation batches with excluded ids (BOS/EOS by default) dropped.

  `rows` yields int arrays [store_batch, context]; every call of `__iter__` continues where it stopped,
  and `position` counts consumed rows so a resumed run can skip exactly those.
  """

  def __init__(self, model: Transformer, rows: Iterator[np.ndarray], layer: int, site: str = "resid_post",
               exclude_ids=(), mesh=None):
    self.site_fn = make_site_fn(model, layer, site, mesh)
    self.rows = rows
    self.exclude_ids = np.asarray(sorted(set(exclude_ids)), np.int64)
    self.mesh = mesh
    self.position = 0
    self.d_model = model.cfg.hidden_size

  def __call__(self):
    """(activations [B*T, d] on device, keep mask [B*T] on host) of the next token batch, or None."""
    tokens = next(self.rows, None)
    if tokens is None:
      return None
    tokens = np.asarray(tokens)
    keep = ~np.isin(tokens.reshape(-1), self.exclude_ids)
    placed = jax.device_put(tokens, shd.batch_sharding(self.mesh)) if self.mesh is not None else tokens
    acts = self.site_fn(placed).reshape(-1, self.d_model)
    self.position += 1
    return acts, keep
