"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"; Gemma Scope) with straight-through estimators.

f = JumpReLU_theta(h) = h * H(h - theta), theta = exp(log_threshold) > 0 per latent, trained on
mse_loss + lambda_t * mean_b sum_i H(h_bi - theta_i) (an L0 penalty, lambda_t warmed up like the L1
coefficient). H has no gradient, so theta learns through pseudo-derivatives with the rectangle kernel
K(u) = 1{-1/2 < u < 1/2} and bandwidth eps (the paper's rectangle-kernel STEs; SAELens' `JumpReLU` / `Step`):

  d JumpReLU / d theta = -(theta / eps) K((h - theta) / eps)
  d H(h - theta) / d theta = -(1 / eps) K((h - theta) / eps)

and d JumpReLU / d h = H(h - theta) (no STE towards h). So theta gets a gradient only from tokens whose
pre-activation lies within eps / 2 of it.
"""

import functools

import jax
import jax.numpy as jnp

from sae_jax.sae import standard


def _rectangle(u):
  return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


def _sum_to(g, theta):
  """Sums a [..., d_sae] cotangent over every leading axis, to theta's shape [d_sae]."""
  return jnp.sum(g.reshape(-1, g.shape[-1]), axis=0).reshape(theta.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(h, theta, bandwidth: float):
  """h * (h > theta), with the pseudo-derivative towards theta above."""
  return h * (h > theta).astype(h.dtype)


def _jumprelu_fwd(h, theta, bandwidth):
  return jumprelu(h, theta, bandwidth), (h, theta)


def _jumprelu_bwd(bandwidth, res, g):
  h, theta = res
  dh = (h > theta).astype(h.dtype) * g
  dtheta = -(theta / bandwidth) * _rectangle((h - theta) / bandwidth) * g
  return dh, _sum_to(dtheta, theta)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(h, theta, bandwidth: float):
  """Heaviside H(h - theta) as float, with the pseudo-derivative towards theta above (none towards h)."""
  return (h > theta).astype(h.dtype)


def _step_fwd(h, theta, bandwidth):
  return step(h, theta, bandwidth), (h, theta)


def _step_bwd(bandwidth, res, g):
  h, theta = res
  dtheta = -(1.0 / bandwidth) * _rectangle((h - theta) / bandwidth) * g
  return jnp.zeros_like(h), _sum_to(dtheta, theta)


step.defvjp(_step_fwd, _step_bwd)


def threshold_of(params):
  """theta: the stored `threshold` (inference / SAELens files) or exp(`log_threshold`) (training)."""
  if "threshold" in params:
    return params["threshold"]
  return jnp.exp(params["log_threshold"])


def loss_fn(params, x, cfg, l0_coefficient):
  """(loss, parts): loss = mse_loss + l0_loss, l0_loss = l0_coefficient * mean_b sum_i H(h_bi - theta_i)."""
  h = standard.encode_pre(params, x, cfg.apply_b_dec_to_input)
  theta = jnp.exp(params["log_threshold"])
  f = jumprelu(h, theta, cfg.jumprelu_bandwidth)
  x_hat = standard.decode(params, f)
  per_token_l2 = jnp.sum(jnp.square(x_hat - x), axis=-1)
  mse_loss = jnp.mean(per_token_l2)
  l0_ste = jnp.mean(jnp.sum(step(h, theta, cfg.jumprelu_bandwidth), axis=-1))
  l0_loss = l0_coefficient * l0_ste
  fired = f > 0
  total_variance = jnp.sum(jnp.square(x - jnp.mean(x, axis=0)), axis=-1)
  parts = {
      "mse_loss": mse_loss,
      "l0_loss": l0_loss,
      "l0": jnp.mean(jnp.sum(fired.astype(jnp.float32), axis=-1)),
      "explained_variance": jnp.mean(1 - per_token_l2 / total_variance),
      "feature_fire_count": jnp.sum(fired.astype(jnp.int32), axis=0),
      "mean_threshold": jnp.mean(theta),
  }
  return mse_loss + l0_loss, parts
