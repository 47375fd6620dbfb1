"""What every SAE architecture shares: the affine encoder and decoder, the random-direction init, and the
reconstruction metrics of the loss (computed here once for all of them).

Params are a dict of float32 arrays: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], plus
what an architecture adds (its module's `param_names`).
"""

import jax
import jax.numpy as jnp

BASE_PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def encode_pre(params, x, apply_b_dec_to_input: bool = False):
  """Pre-activations h = (x [- b_dec]) W_enc + b_enc; the paper's config does not subtract b_dec."""
  if apply_b_dec_to_input:
    x = x - params["b_dec"]
  return x @ params["W_enc"] + params["b_enc"]


def decode(params, f):
  """Reconstruction x_hat = f W_dec + b_dec."""
  return f @ params["W_dec"] + params["b_dec"]


def init_random_directions(cfg, key: jax.Array) -> dict[str, jax.Array]:
  """W_dec rows in random (Gaussian) directions, unit norm when `normalize_decoder` (sparsify / OpenAI) else
  `decoder_init_norm` (SAELens); W_enc = W_dec.T; zero biases."""
  w_dec = jax.random.normal(key, (cfg.d_sae, cfg.d_in), jnp.float32)
  w_dec = w_dec / jnp.linalg.norm(w_dec, axis=1, keepdims=True)
  if not cfg.normalize_decoder:
    w_dec = w_dec * jnp.float32(cfg.decoder_init_norm)
  return {"W_enc": w_dec.T.copy(), "b_enc": jnp.zeros((cfg.d_sae,), jnp.float32), "W_dec": w_dec,
          "b_dec": jnp.zeros((cfg.d_in,), jnp.float32)}


def fire_count(f):
  """[d_sae] int32: tokens of the batch on which each latent is > 0."""
  return jnp.sum((f > 0).astype(jnp.int32), axis=0)


def reconstruction_metrics(x, x_hat, fired) -> dict:
  """mse_loss = mean_b sum_d (x_hat - x)^2 (SAELens' MSE), l0 = mean active latents per token (from `fired`, the
  per-latent counts), explained variance mean_b(1 - |x_hat - x|^2 / |x - mean_b x|^2), feature_fire_count."""
  per_token_l2 = jnp.sum(jnp.square(x_hat - x), axis=-1)
  total_variance = jnp.sum(jnp.square(x - jnp.mean(x, axis=0)), axis=-1)
  return {"mse_loss": jnp.mean(per_token_l2),
          "l0": jnp.sum(fired.astype(jnp.float32)) / x.shape[0],  # integer counts: exact below 2**24
          "explained_variance": jnp.mean(1 - per_token_l2 / total_variance),
          "feature_fire_count": fired}


def project_out_parallel(g_dec, w_dec):
  """g - (g . w_i) w_i per decoder row: the gradient component that would change a unit row's norm, removed."""
  return g_dec - jnp.sum(g_dec * w_dec, axis=1, keepdims=True) * w_dec


def unit_rows(w_dec):
  """Decoder rows rescaled to unit norm (eps as sparsify, so a zero row stays finite)."""
  return w_dec / (jnp.linalg.norm(w_dec, axis=1, keepdims=True) + jnp.finfo(w_dec.dtype).eps)


def identity(params):
  """`inference_params` of an architecture whose training params are its inference params."""
  return dict(params)


def unchanged(new, old, parts, cfg):
  """`after_update` of an architecture whose step changes nothing after the optimizer update."""
  del old, cfg
  return new, parts
