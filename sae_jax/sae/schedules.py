"""The learning-rate and sparsity-coefficient schedules of SAELens 5.5.2, as functions of the 0-based step t.

Both are traceable (t may be a traced int) and exact in float32: integer ratios are formed before the one
multiplication by the base value.
"""

import jax.numpy as jnp

from sae_jax.sae.config import SAEConfig


def l1_coefficient_at(cfg: SAEConfig, step):
  """lambda_t = lambda * min(t, W) / W (lambda_0 = 0: SAELens' L1Scheduler starts at 0 and steps after Adam)."""
  return _warmed_up(cfg.l1_coefficient, cfg.l1_warm_up_steps, step)


def l0_coefficient_at(cfg: SAEConfig, step):
  """jumprelu's L0 coefficient, warmed up from 0 like lambda: l0_coefficient * min(t, W) / W."""
  return _warmed_up(cfg.l0_coefficient, cfg.l0_warm_up_steps, step)


def _warmed_up(value: float, w: int, step):
  """value * min(t, W) / W as float32 (value itself when W = 0)."""
  step = jnp.asarray(step, jnp.int32)
  if w == 0:
    return jnp.full(step.shape, value, jnp.float32)
  return jnp.float32(value) * (jnp.minimum(step, w).astype(jnp.float32) / jnp.float32(w))


def lr_at(cfg: SAEConfig, step):
  """SAELens' `constant` scheduler wrapped in SequentialLR: warm-up, constant, then linear decay.

  Warm-up (LinearLR from 1/W to 1 over W - 1 iterations) gives lr * (t + 1) / W for t < W. The decay
  (LinearLR from 1 to 0 over D iterations, starting at milestone N - D) gives lr * (D - k) / D with
  k = t - (N - D): the last step uses lr / D and lr reaches 0 only after training.
  """
  step = jnp.asarray(step, jnp.int32)
  factor = jnp.ones(step.shape, jnp.float32)
  w, d, n = cfg.lr_warm_up_steps, cfg.lr_decay_steps, cfg.n_steps
  if w > 0:
    factor = jnp.where(step < w, (step + 1).astype(jnp.float32) / jnp.float32(w), factor)
  if d > 0:
    left = jnp.clip(n - step, 0, d)  # D - k, clamped so steps past the end stay at 0
    factor = jnp.where(step >= n - d, left.astype(jnp.float32) / jnp.float32(d), factor)
  return jnp.float32(cfg.lr) * factor
