"""One SAE training step as SAELens 5.5.2's `SAETrainer._train_step` does it, built from optax.

Order per step t: loss with lambda_t -> raw gradients -> torch-style global-norm clip -> Adam with lr_t. Both
schedules read the same step t, passed in by the caller, so a resumed run continues both exactly.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from sae_jax.sae import standard
from sae_jax.sae.config import SAEConfig
from sae_jax.sae.schedules import l1_coefficient_at, lr_at

TORCH_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
  """g * min(1, max_norm / (||g|| + 1e-6)): torch's formula (optax's clip divides by the bare norm)."""

  def update_fn(updates, state, params=None):
    del params
    coef = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + TORCH_CLIP_EPS))
    return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(cfg: SAEConfig) -> optax.GradientTransformation:
  """Clip, then torch.optim.Adam's direction (no weight decay). The -lr_t scaling is applied by the step."""
  return optax.chain(clip_by_global_norm_torch(cfg.clip_grad_norm),
                     optax.scale_by_adam(b1=cfg.adam_beta1, b2=cfg.adam_beta2, eps=cfg.adam_eps))


def init_train_state(cfg: SAEConfig, key: jax.Array):
  """(params, opt_state) at step 0."""
  params = standard.init_params(key, cfg.d_in, cfg.d_sae, cfg.decoder_init_norm)
  return params, make_optimizer(cfg).init(params)


def make_train_step(cfg: SAEConfig) -> Callable:
  """A pure `train_step(params, opt_state, step, x) -> (params, opt_state, metrics)`.

  `x` is one batch [B, d_in] already multiplied by the norm scaling factor; `step` is the 0-based int step.
  Jit it with `jax.jit(step_fn, donate_argnums=(0, 1))`. Metrics: loss, mse_loss, l1_loss (lambda included),
  sparsity, l0, explained_variance, feature_fire_count [d_sae], grad_norm (before clipping), lr,
  l1_coefficient.
  """
  optimizer = make_optimizer(cfg)

  def train_step(params, opt_state, step, x):
    x = x.astype(jnp.float32)
    l1_coefficient = l1_coefficient_at(cfg, step)
    lr = lr_at(cfg, step)
    (loss, parts), grads = jax.value_and_grad(standard.loss_fn, has_aux=True)(
        params, x, l1_coefficient, cfg.apply_b_dec_to_input)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    metrics = dict(parts, loss=loss, grad_norm=optax.tree.norm(grads), lr=lr, l1_coefficient=l1_coefficient)
    return params, opt_state, metrics

  return train_step
