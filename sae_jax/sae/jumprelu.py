"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"; Gemma Scope) with straight-through estimators.

f = JumpReLU_theta(h) = h * H(h - theta), theta = exp(log_threshold) > 0 per latent, trained on
mse_loss + lambda_t * mean_b sum_i H(h_bi - theta_i) (an L0 penalty, lambda_t warmed up like the L1
coefficient). H has no gradient, so theta learns through pseudo-derivatives with the rectangle kernel
K(u) = 1{-1/2 < u < 1/2} and bandwidth eps (the paper's rectangle-kernel STEs; SAELens' `JumpReLU` / `Step`):

  d JumpReLU / d theta = -(theta / eps) K((h - theta) / eps)
  d H(h - theta) / d theta = -(1 / eps) K((h - theta) / eps)

and d JumpReLU / d h = H(h - theta) (no STE towards h). So theta gets a gradient only from tokens whose
pre-activation lies within eps / 2 of it. Trained as `log_threshold`; stored and used at inference as
`threshold` = exp(log_threshold) (SAELens). The module interface is core.py's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sae_jax.errors import UserError
from sae_jax.sae import base
from sae_jax.sae.schedules import l0_coefficient_at

PER_LATENT = True
TRACKS_FIRING = True
after_update = base.unchanged


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
def heaviside(h, theta, bandwidth: float):
  """Heaviside H(h - theta) as float, with the pseudo-derivative towards theta above (none towards h)."""
  return (h > theta).astype(h.dtype)


def _step_fwd(h, theta, bandwidth):
  return heaviside(h, theta, bandwidth), (h, theta)


def _step_bwd(bandwidth, res, g):
  h, theta = res
  dtheta = -(1.0 / bandwidth) * _rectangle((h - theta) / bandwidth) * g
  return jnp.zeros_like(h), _sum_to(dtheta, theta)


heaviside.defvjp(_step_fwd, _step_bwd)


def param_names(training: bool = True) -> tuple[str, ...]:
  return base.BASE_PARAMS + ("log_threshold" if training else "threshold",)


def init_params(cfg, key: jax.Array) -> dict[str, jax.Array]:
  """base's random directions; log_threshold = log(jumprelu_init_threshold)."""
  params = base.init_random_directions(cfg, key)
  params["log_threshold"] = jnp.full((cfg.d_sae,), np.log(cfg.jumprelu_init_threshold), jnp.float32)
  return params


def threshold_of(params):
  """theta: the stored `threshold` (inference / SAELens files) or exp(`log_threshold`) (training)."""
  if "threshold" in params:
    return params["threshold"]
  return jnp.exp(params["log_threshold"])


def encode(params, x, cfg):
  """JumpReLU at inference, ReLU(h) * (h > threshold) (SAELens' JumpReLU encode); also batchtopk's encoder."""
  if "threshold" not in params and "log_threshold" not in params:
    raise UserError(f"{cfg.architecture} SAE params have no 'threshold': expected trained or loaded params "
                    "(init_params / the train step / load_saelens give it)")
  h = base.encode_pre(params, x, cfg.apply_b_dec_to_input)
  a = jax.nn.relu(h)
  return a * (h > threshold_of(params)).astype(a.dtype)


def loss_terms(params, x, cfg, step, dead=None, mesh=None):
  """(x_hat, fire counts, penalty, parts): penalty = l0_loss = l0_coefficient_t * mean_b sum_i H(h_bi - theta_i)."""
  del dead, mesh
  l0_coefficient = l0_coefficient_at(cfg, step)
  h = base.encode_pre(params, x, cfg.apply_b_dec_to_input)
  theta = jnp.exp(params["log_threshold"])
  f = jumprelu(h, theta, cfg.jumprelu_bandwidth)
  x_hat = base.decode(params, f)
  l0_loss = l0_coefficient * jnp.mean(jnp.sum(heaviside(h, theta, cfg.jumprelu_bandwidth), axis=-1))
  return x_hat, base.fire_count(f), l0_loss, {"l0_loss": l0_loss, "mean_threshold": jnp.mean(theta),
                                               "l0_coefficient": l0_coefficient}


def inference_params(params):
  """threshold = exp(log_threshold), as SAELens stores a JumpReLU SAE."""
  out = dict(params)
  if "log_threshold" in out:
    out["threshold"] = jnp.exp(jnp.asarray(out.pop("log_threshold")))
  return out


def saelens_keys(cfg) -> dict:
  # SAELens 5.5.2 uses l1_coefficient as jumprelu's L0 coefficient.
  return {"architecture": "jumprelu", "activation_fn_str": "relu", "activation_fn_kwargs": {},
          "l1_coefficient": cfg.l0_coefficient, "decoder_heuristic_init": False,
          "scale_sparsity_penalty_by_decoder_norm": False}
