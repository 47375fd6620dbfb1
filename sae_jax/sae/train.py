"""One SAE training step as SAELens 5.5.2's `SAETrainer._train_step` does it, built from optax.

Order per step t: loss with lambda_t -> raw gradients -> torch-style global-norm clip -> Adam with lr_t. Both
schedules read the same step t, passed in by the caller, so a resumed run continues both exactly.

With `normalize_decoder` (every architecture but standard), in sparsify's order: the gradient component parallel
to each (unit) decoder row is removed before the clip, and the rows are renormalised after the update. The
architectures that track firing (all but standard, whose state stays SAELens' bare Adam) keep their optimizer
state in an `SAEOptState`, which also carries each latent's steps-since-fired counter for AuxK, so the signature
`train_step(params, opt_state, step, x)` and the trainer's checkpoint (params + opt_state) stay as they are.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sae_jax.sae import base, core
from sae_jax.sae.config import SAEConfig
from sae_jax.sae.schedules import lr_at

TORCH_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
  """g * min(1, max_norm / (||g|| + 1e-6)): torch's formula (optax's clip divides by the bare norm)."""

  def update_fn(updates, state, params=None):
    del params
    coef = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + TORCH_CLIP_EPS))
    return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class SAEOptState(NamedTuple):
  """Optimizer state of the non-standard architectures: the optax chain's state + per-latent bookkeeping."""

  inner: optax.OptState
  steps_since_fired: jax.Array  # [d_sae] int32; a latent is dead for AuxK once it reaches dead_steps_threshold


def make_optimizer(cfg: SAEConfig) -> optax.GradientTransformation:
  """Clip, then torch.optim.Adam's direction (no weight decay). The -lr_t scaling is applied by the step.

  For architectures that track firing the state is wrapped in an `SAEOptState` (the step updates its counters).
  """
  chain = optax.chain(clip_by_global_norm_torch(cfg.clip_grad_norm),
                      optax.scale_by_adam(b1=cfg.adam_beta1, b2=cfg.adam_beta2, eps=cfg.adam_eps))
  if not core.architecture(cfg).TRACKS_FIRING:
    return chain

  def init_fn(params):
    return SAEOptState(chain.init(params), jnp.zeros((cfg.d_sae,), jnp.int32))

  def update_fn(updates, state, params=None):
    updates, inner = chain.update(updates, state.inner, params)
    return updates, state._replace(inner=inner)

  return optax.GradientTransformation(init_fn, update_fn)


def init_train_state(cfg: SAEConfig, key: jax.Array):
  """(params, opt_state) at step 0."""
  params = core.init_params(cfg, key)
  return params, make_optimizer(cfg).init(params)


def make_train_step(cfg: SAEConfig, mesh=None) -> Callable:
  """A pure `train_step(params, opt_state, step, x) -> (params, opt_state, metrics)`.

  `x` is one batch [B, d_in] already multiplied by the norm scaling factor; `step` is the 0-based int step.
  Jit it with `jax.jit(step_fn, donate_argnums=(0, 1))`. Metrics: loss, grad_norm (before clipping; after the
  parallel component is removed, which is what the clip sees), lr, and the parts of `core.loss`: mse_loss, l0,
  explained_variance, feature_fire_count [d_sae], plus standard: l1_loss (lambda included), sparsity,
  l1_coefficient; topk / batchtopk: aux_loss, dead_fraction_auxk, threshold (batchtopk, after this step's
  update); jumprelu: l0_loss, l0_coefficient, mean_threshold. Pass the `mesh` that params and batch are sharded
  on so topk selects shard-locally (results equal the mesh-less step; the others ignore it).
  """
  optimizer = make_optimizer(cfg)
  arch = core.architecture(cfg)

  def train_step(params, opt_state, step, x):
    x = x.astype(jnp.float32)
    lr = lr_at(cfg, step)
    dead = opt_state.steps_since_fired >= cfg.dead_steps_threshold if arch.TRACKS_FIRING else None
    (loss, parts), grads = jax.value_and_grad(core.loss, has_aux=True)(params, x, cfg, step, dead, mesh)
    if cfg.normalize_decoder:
      grads = dict(grads, W_dec=base.project_out_parallel(grads["W_dec"], params["W_dec"]))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    new = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    if cfg.normalize_decoder:
      new["W_dec"] = base.unit_rows(new["W_dec"])
    new, parts = arch.after_update(new, params, parts, cfg)
    if arch.TRACKS_FIRING:
      fired = parts["feature_fire_count"] > 0
      opt_state = opt_state._replace(
          steps_since_fired=jnp.where(fired, 0, opt_state.steps_since_fired + 1).astype(jnp.int32))
    return new, opt_state, dict(parts, loss=loss, grad_norm=optax.tree.norm(grads), lr=lr)

  return train_step
