"""The activation-norm scaling factor s = sqrt(d_in) / mean ||x|| (`expected_average_only_in` normalisation)."""

from typing import Iterable

import jax.numpy as jnp
import numpy as np

from sae_jax.errors import UserError
from sae_jax.sae.config import NORM_ESTIMATES


def batch_norm(x, mode: str = "reference") -> float:
  """What one batch [..., d_in] (raw units) adds to the estimate: the mean token norm, a Python float.

  mode "reference" is SAELens 5.5.2: `next_batch()[0]`, i.e. the norm of the FIRST token of each batch only.
  mode "all_tokens" averages the norms of every token (the evident intent). Norms are float32, as in SAELens
  (per-batch `.item()`); a float survives a JSON checkpoint exactly, so a resumed estimate is the same.
  """
  if mode not in NORM_ESTIMATES:
    raise UserError(f"norm estimate mode {mode!r}: expected one of {NORM_ESTIMATES}")
  x = jnp.asarray(x)
  x = x.reshape(-1, x.shape[-1])
  if x.shape[0] == 0:
    raise UserError("empty activation batch in the norm estimate: expected at least one token per batch")
  if mode == "reference":
    x = x[:1]
  return float(jnp.mean(jnp.linalg.norm(x.astype(jnp.float32), axis=-1)))


def scaling_factor(norms, d_in: int) -> float:
  """s from the per-batch norms of `batch_norm`: the mean over batches and the sqrt in float64, as SAELens."""
  if not len(norms):
    raise UserError("no activation batches for the norm estimate: expected at least one")
  return float(np.sqrt(d_in) / np.mean(np.asarray(norms, np.float64)))


def estimate_norm_scaling_factor(batches: Iterable, mode: str = "reference") -> float:
  """s from every batch of `batches` (arrays [..., d_in], raw units); consumes the iterable."""
  norms, d_in = [], None
  for x in batches:
    norms.append(batch_norm(x, mode))
    d_in = np.shape(x)[-1]
  return scaling_factor(norms, d_in)
