"""The `standard` SAE of SAELens 5.5.2: ReLU encoder, decoder-norm-weighted L1 penalty.

The formulas and their order follow tests/fixtures/README.md section 1.2, which the fixture checks to float32
rounding. Like every architecture module it exports `param_names`, `init_params`, `encode`, `loss_terms`,
`after_update`, `inference_params`, `saelens_keys` and the flags `PER_LATENT` and `TRACKS_FIRING` (core.py).
"""

import jax
import jax.numpy as jnp

from sae_jax.sae import base
from sae_jax.sae.schedules import l1_coefficient_at

PER_LATENT = True  # a latent's activation depends on its own encoder column only
TRACKS_FIRING = False  # the optimizer state is SAELens' bare Adam state (no steps-since-fired counters)
after_update = base.unchanged
inference_params = base.identity


def param_names(training: bool = True) -> tuple[str, ...]:
  del training
  return base.BASE_PARAMS


def init_params(cfg, key: jax.Array) -> dict[str, jax.Array]:
  """Decoder heuristic init: W_dec ~ U[0, 1) rows rescaled to `decoder_init_norm`, W_enc = W_dec.T, zero biases.

  The draws are all positive, as in SAELens (`torch.rand`); torch's stream itself cannot be reproduced.
  """
  w_dec = jax.random.uniform(key, (cfg.d_sae, cfg.d_in), jnp.float32)
  w_dec = w_dec / jnp.linalg.norm(w_dec, axis=1, keepdims=True) * jnp.float32(cfg.decoder_init_norm)
  return {"W_enc": w_dec.T.copy(), "b_enc": jnp.zeros((cfg.d_sae,), jnp.float32), "W_dec": w_dec,
          "b_dec": jnp.zeros((cfg.d_in,), jnp.float32)}


def encode(params, x, cfg):
  """Feature activations f = ReLU(h)."""
  return jax.nn.relu(base.encode_pre(params, x, cfg.apply_b_dec_to_input))


def loss_terms(params, x, cfg, step, dead=None, mesh=None):
  """(x_hat, fire counts, penalty, parts): penalty = l1_loss = lambda_t * sparsity, sparsity =
  mean_b sum_i |f_i| ||W_dec_i|| (the gradient also flows through the norm), as SAELens' losses["l1_loss"]."""
  del dead, mesh
  l1_coefficient = l1_coefficient_at(cfg, step)
  f = encode(params, x, cfg)
  x_hat = base.decode(params, f)
  sparsity = jnp.mean(jnp.sum(jnp.abs(f) * jnp.linalg.norm(params["W_dec"], axis=1), axis=-1))
  l1_loss = l1_coefficient * sparsity
  return x_hat, base.fire_count(f), l1_loss, {"l1_loss": l1_loss, "sparsity": sparsity,
                                               "l1_coefficient": l1_coefficient}


def saelens_keys(cfg) -> dict:
  return {"architecture": "standard", "activation_fn_str": "relu", "activation_fn_kwargs": {},
          "l1_coefficient": cfg.l1_coefficient, "decoder_heuristic_init": True,
          "scale_sparsity_penalty_by_decoder_norm": True}
