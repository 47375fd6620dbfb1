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
  graphdef, state = nnx.split(model)
  run = site_forward(model.cfg, graphdef, layer, site, mesh)
  return lambda tokens: run(state, tokens)


def site_forward(cfg, graphdef, layer: int, site: str, mesh=None):
  """The pure jitted `run(state, tokens)` behind `make_site_fn`; it also lowers with abstract state (aot.py)."""
  cfg.validate_layer(layer)
  if site not in SITES:
    raise UserError(f"unknown site {site!r}: expected one of {SITES}")
  hooks = Hooks(capture=frozenset({(layer, site)}))
  out_sharding = shd.batch_sharding(mesh, 3) if mesh is not None else None

  @functools.partial(jax.jit, out_shardings=out_sharding)
  def run(state, tokens):
    out = nnx.merge(graphdef, state)(tokens, hooks=hooks, stop_after_layer=layer)
    return out.captured[(layer, site)].astype(jnp.float32)

  return run


class ActivationSource:
  """Token rows -> activation chunks with excluded ids (BOS/EOS by default) marked for dropping.

  `rows` is an array-like [n_rows, context] (numpy or a memmap of the packed corpus); each call runs the
  model on the next `batch_rows` rows. `position` (batches consumed) and `seek` let a resumed run continue.
  """

  def __init__(self, model: Transformer, rows, layer: int, site: str = "resid_post", exclude_ids=(),
               batch_rows: int = 8, mesh=None, loop: bool = False):
    if len(rows) < batch_rows:
      raise UserError(f"the token corpus has {len(rows)} rows, fewer than one batch of {batch_rows}")
    self.site_fn = make_site_fn(model, layer, site, mesh)
    self.rows, self.batch_rows, self.loop = rows, batch_rows, loop
    self.exclude_ids = np.asarray(sorted(set(exclude_ids)), np.int64)
    self.mesh = mesh
    self.position = 0
    self.d_model = model.cfg.hidden_size
    self.batches_per_epoch = len(rows) // batch_rows

  def seek(self, position: int) -> None:
    self.position = position

  def __call__(self):
    """(activations [B*T, d] on device, keep mask [B*T] on host) of the next token batch, or None."""
    index = self.position % self.batches_per_epoch if self.loop else self.position
    if index >= self.batches_per_epoch:
      return None
    tokens = np.asarray(self.rows[index * self.batch_rows:(index + 1) * self.batch_rows])
    keep = ~np.isin(tokens.reshape(-1), self.exclude_ids)
    placed = jax.device_put(tokens, shd.batch_sharding(self.mesh)) if self.mesh is not None else tokens
    acts = self.site_fn(placed).reshape(-1, self.d_model)
    self.position += 1
    return acts, keep
