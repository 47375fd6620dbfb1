"""Logit lens of SAE features: unit(W_dec_i) @ W_U, with and without the final norm's weight."""

import jax
import jax.numpy as jnp
import numpy as np

from sae_jax import pod
from sae_jax.errors import UserError


def unembedding(model) -> tuple[jax.Array, jax.Array]:
  """(W_U [d, vocab], final norm weight [d]) of a `sae_jax` Transformer; tied models use the embedding."""
  if getattr(model.cfg, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
    w_u = model.embed_tokens.embedding[...].T
  else:
    w_u = model.lm_head.kernel[...]
  return w_u, model.norm.weight[...]


def logit_lens(w_dec_rows, w_u, norm_weight=None, k: int = 10, n_bins: int = 50) -> dict:
  """unit(W_dec_i) @ W_U (times the final norm's weight first, if given), float32.

  Returns numpy arrays: top_ids / top_values [F, k] (largest first), bottom_ids / bottom_values [F, k]
  (smallest first), and a histogram of every token's logit (hist_edges [F, n_bins + 1], hist_counts).
  """
  w = jnp.asarray(w_dec_rows, jnp.float32)
  if w.ndim != 2 or w.shape[1] != w_u.shape[0]:
    raise UserError(f"decoder rows {tuple(w.shape)} do not match W_U {tuple(w_u.shape)}: expected [F, d_model]")
  k = min(k, int(w_u.shape[1]))
  g = None if norm_weight is None else jnp.asarray(norm_weight)

  @jax.jit
  def run(w, w_u, g):
    u = w / jnp.linalg.norm(w, axis=1, keepdims=True)
    if g is not None:
      u = u * g.astype(jnp.float32)
    logits = jnp.matmul(u, w_u.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    top_v, top_i = jax.lax.top_k(logits, k)
    bot_v, bot_i = jax.lax.top_k(-logits, k)
    lo, hi = logits.min(axis=1), logits.max(axis=1)
    scaled = (logits - lo[:, None]) / jnp.maximum(hi - lo, 1e-30)[:, None] * n_bins
    idx = jnp.clip(jnp.floor(scaled).astype(jnp.int32), 0, n_bins - 1)
    counts = jax.vmap(lambda i: jnp.bincount(i, length=n_bins))(idx)
    edges = lo[:, None] + (hi - lo)[:, None] * jnp.linspace(0.0, 1.0, n_bins + 1)[None]
    return top_i, top_v, bot_i, -bot_v, edges, counts

  out = pod.to_host(run(w, w_u, g))
  names = ("top_ids", "top_values", "bottom_ids", "bottom_values", "hist_edges", "hist_counts")
  return {n: np.asarray(a) for n, a in zip(names, out)}
