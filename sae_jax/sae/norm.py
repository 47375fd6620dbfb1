"""The activation-norm scaling factor s = sqrt(d_in) / mean ||x|| (`expected_average_only_in` normalisation)."""

from typing import Iterable

import jax.numpy as jnp
import numpy as np

from sae_jax.errors import UserError
from sae_jax.sae.config import NORM_ESTIMATES


def estimate_norm_scaling_factor(batches: Iterable, mode: str = "reference") -> float:
  """s from every batch of `batches` (arrays [..., d_in], raw units); consumes the iterable.

  mode "reference" is SAELens 5.5.2: `next_batch()[0]`, i.e. the norm of the FIRST token of each batch only.
  mode "all_tokens" averages the norms of every token (the evident intent). Norms are float32; the mean over
  batches and the sqrt are float64, as in SAELens (per-batch `.item()` then numpy).
  """
  if mode not in NORM_ESTIMATES:
    raise UserError(f"norm estimate mode {mode!r}: expected one of {NORM_ESTIMATES}")
  per_batch, d_in = [], None
  for x in batches:
    x = jnp.asarray(x)
    d_in = x.shape[-1]
    x = x.reshape(-1, d_in)
    if x.shape[0] == 0:
      raise UserError("empty activation batch in the norm estimate: expected at least one token per batch")
    if mode == "reference":
      x = x[:1]
    per_batch.append(float(jnp.mean(jnp.linalg.norm(x.astype(jnp.float32), axis=-1))))
  if not per_batch:
    raise UserError("no activation batches for the norm estimate: expected at least one")
  return float(np.sqrt(d_in) / np.mean(np.asarray(per_batch, np.float64)))
