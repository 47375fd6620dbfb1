"""BatchTopK SAE (Bussmann et al. 2024): the k * B largest ReLU activations over a whole batch survive.

Trained like topk (same pre-bias encoder, AuxK for dead latents, unit-norm decoder), with the dense mask and
decode: its k varies per token (and ties with the threshold are kept). The exact (k * B)-th largest value is found
by bisection on the float bits (one all-reduced count per halving, 32 of them): elementwise on any sharding, and no
sort of B * d_sae values. At inference it is a JumpReLU with one learned `threshold` (a running average of the
smallest selected activation, as SAELens exports it), so a feature no longer depends on the rest of the batch.
The module interface is core.py's.
"""

import jax
import jax.numpy as jnp
from jax import lax

from sae_jax.sae import base, jumprelu, topk

PER_LATENT = True  # at inference (the JumpReLU encoder)
TRACKS_FIRING = True
encode = jumprelu.encode
inference_params = base.identity


def param_names(training: bool = True) -> tuple[str, ...]:
  del training
  return base.BASE_PARAMS + ("threshold",)


def init_params(cfg, key: jax.Array) -> dict[str, jax.Array]:
  """base's random directions; threshold = 0 (set from the first batch)."""
  return {**base.init_random_directions(cfg, key), "threshold": jnp.zeros((cfg.d_sae,), jnp.float32)}


def kth_largest_nonnegative(a, kk: int):
  """The exact kk-th largest entry of a >= 0 (any shape), by bisection on its int32 bits.

  For non-negative floats the bit pattern orders like the value, so 32 halvings of [0, bits(inf) + 1) find the
  largest t with count(bits >= t) >= kk. Counts are float32: exact below 2**24 and only compared with kk.
  """
  bits = lax.bitcast_convert_type(a.astype(jnp.float32), jnp.int32)

  def halve(_, bounds):
    lo, hi = bounds  # count(bits >= lo) >= kk > count(bits >= hi)
    mid = lo + (hi - lo) // 2
    ok = jnp.sum((bits >= mid).astype(jnp.float32)) >= kk
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo, _ = lax.fori_loop(0, 32, halve, (jnp.int32(0), jnp.int32(0x7F800001)))
  return lax.bitcast_convert_type(lo, jnp.float32)


def batch_topk_mask(a, kk: int):
  """Bool mask of the kk largest entries of a >= 0 over the whole batch (plus any ties with the kk-th)."""
  return a >= kth_largest_nonnegative(a, kk)


def select(a, cfg):
  """The training selection applied to ReLU activations a [B, d_sae]: the k * B largest of the batch."""
  return jnp.where(batch_topk_mask(a, cfg.k * a.shape[0]), a, 0.0)


def loss_terms(params, x, cfg, step, dead, mesh=None):
  """(x_hat, fire counts, penalty, parts) as topk's, plus parts["min_positive"], the smallest selected positive
  activation (inf if none), which `after_update` averages into the inference threshold."""
  del step
  a = jax.nn.relu(topk.train_encode_pre(params, x, cfg.apply_b_dec_to_input))
  f = select(a, cfg)
  x_hat = base.decode(params, f)
  aux, parts = topk.auxk_terms(params, x, x_hat, a, dead, cfg, mesh)
  parts["min_positive"] = lax.stop_gradient(jnp.min(jnp.where(f > 0, f, jnp.inf)))
  return x_hat, base.fire_count(f), aux, parts


def after_update(new, old, parts, cfg):
  """The inference threshold after this step: EMA of the batch's smallest selected activation (SAELens' update).

  The first batch sets it outright (0 means never set) instead of SAELens' decay from 0; a batch with no
  positive activation leaves it unchanged. One value, broadcast over the d_sae latents as SAELens exports it.
  """
  parts = dict(parts)
  min_positive, threshold, rate = parts.pop("min_positive"), old["threshold"], cfg.topk_threshold_lr
  ema = jnp.where(threshold > 0, (1 - rate) * threshold + rate * min_positive, min_positive)
  new = dict(new, threshold=jnp.where(jnp.isfinite(min_positive), ema, threshold).astype(jnp.float32))
  return new, dict(parts, threshold=new["threshold"][0])


def saelens_keys(cfg) -> dict:
  """Saved as the JumpReLU SAE it is at inference, as SAELens exports BatchTopK."""
  return {"architecture": "jumprelu", "activation_fn_str": "relu", "activation_fn_kwargs": {},
          "l1_coefficient": 0.0, "decoder_heuristic_init": False, "scale_sparsity_penalty_by_decoder_norm": False}
