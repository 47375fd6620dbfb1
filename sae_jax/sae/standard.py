"""The `standard` SAE of SAELens 5.5.2 (ReLU + decoder-norm-weighted L1) as pure functions on a params dict.

Params are a pytree {W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]}, float32. The
formulas and their order follow tests/fixtures/README.md section 1.2, which the fixture checks to float32
rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np

PARAM_SHAPES = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}


def param_shapes(d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
  sizes = {"d_in": d_in, "d_sae": d_sae}
  return {name: tuple(sizes[a] for a in axes) for name, axes in PARAM_SHAPES.items()}


def init_params(key: jax.Array, d_in: int, d_sae: int, decoder_init_norm: float = 0.1) -> dict[str, jax.Array]:
  """Decoder heuristic init: W_dec ~ U[0, 1) rows rescaled to `decoder_init_norm`, W_enc = W_dec.T, zero biases.

  The draws are all positive, as in SAELens (`torch.rand`); torch's stream itself cannot be reproduced.
  """
  w_dec = jax.random.uniform(key, (d_sae, d_in), jnp.float32)
  w_dec = w_dec / jnp.linalg.norm(w_dec, axis=1, keepdims=True) * jnp.float32(decoder_init_norm)
  return {"W_enc": w_dec.T.copy(), "b_enc": jnp.zeros((d_sae,), jnp.float32), "W_dec": w_dec,
          "b_dec": jnp.zeros((d_in,), jnp.float32)}


def encode_pre(params, x, apply_b_dec_to_input: bool = False):
  """Pre-activations h = (x [- b_dec]) W_enc + b_enc; the paper's config does not subtract b_dec."""
  if apply_b_dec_to_input:
    x = x - params["b_dec"]
  return x @ params["W_enc"] + params["b_enc"]


def encode(params, x, apply_b_dec_to_input: bool = False):
  """Feature activations f = ReLU(h)."""
  return jax.nn.relu(encode_pre(params, x, apply_b_dec_to_input))


def decode(params, f):
  """Reconstruction x_hat = f W_dec + b_dec."""
  return f @ params["W_dec"] + params["b_dec"]


def loss_fn(params, x, l1_coefficient, apply_b_dec_to_input: bool = False):
  """(loss, parts) for one batch x [B, d_in] (already in scaled units).

  mse_loss = mean_b sum_d (x_hat - x)^2; sparsity = mean_b sum_i |f_i| ||W_dec_i|| (gradient also flows through
  the norm); l1_loss = l1_coefficient * sparsity, as SAELens' losses["l1_loss"]. The other parts are what
  SAELens logs: L0 (mean active features per token), explained variance mean_b(1 - |x_hat - x|^2 /
  |x - mean_b x|^2), and per-feature firing counts for dead-feature tracking.
  """
  f = encode(params, x, apply_b_dec_to_input)
  x_hat = decode(params, f)
  per_token_l2 = jnp.sum(jnp.square(x_hat - x), axis=-1)
  mse_loss = jnp.mean(per_token_l2)
  sparsity = jnp.mean(jnp.sum(jnp.abs(f) * jnp.linalg.norm(params["W_dec"], axis=1), axis=-1))
  l1_loss = l1_coefficient * sparsity
  fired = f > 0
  total_variance = jnp.sum(jnp.square(x - jnp.mean(x, axis=0)), axis=-1)
  parts = {
      "mse_loss": mse_loss,
      "l1_loss": l1_loss,
      "sparsity": sparsity,
      "l0": jnp.mean(jnp.sum(fired.astype(jnp.float32), axis=-1)),
      "explained_variance": jnp.mean(1 - per_token_l2 / total_variance),
      "feature_fire_count": jnp.sum(fired.astype(jnp.int32), axis=0),
  }
  return mse_loss + l1_loss, parts


def fold_activation_norm_scaling_factor(params, s: float):
  """Weights trained on s*x -> weights for raw x: W_enc*s, W_dec/s, b_dec/s (b_enc unchanged), in float32.

  Features are unchanged and the reconstruction comes out in raw units. SAELens does this at the end of `fit()`.
  Other tensors (the jumprelu / batchtopk `threshold`, `log_threshold`) act on the unchanged pre-activations, so
  they pass through as they are.
  """
  s = np.float32(s)
  return {**params, "W_enc": params["W_enc"] * s, "b_enc": params["b_enc"], "W_dec": params["W_dec"] / s,
          "b_dec": params["b_dec"] / s}


def fold_W_dec_norm(params):  # noqa: N802 (SAELens' name)
  """Unit-norm decoder rows: W_dec_i / n_i, W_enc[:, i] * n_i, b_enc_i * n_i (b_dec unchanged).

  Reconstructions are unchanged and features come out in units of a unit decoder direction, which is what
  ReasonScore and the dashboards read. A JumpReLU threshold scales with its pre-activation (threshold * n_i, as
  SAELens' JumpReLU fold). A TopK SAE's ranking changes unless the rows are unit norm already (the default).
  """
  n = jnp.linalg.norm(params["W_dec"], axis=1)
  out = {**params, "W_enc": params["W_enc"] * n, "b_enc": params["b_enc"] * n,
         "W_dec": params["W_dec"] / n[:, None], "b_dec": params["b_dec"]}
  if "threshold" in params:
    out["threshold"] = params["threshold"] * n
  if "log_threshold" in params:
    out["log_threshold"] = params["log_threshold"] + jnp.log(n)
  return out
