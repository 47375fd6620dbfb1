"""One entry point per idea for every SAE architecture: init, encode, decode, loss, parameter names and shardings.

The trainer, ReasonScore, the dashboards and the evals call these with the `SAEConfig`, never an architecture
module directly. Params are a dict of float32 arrays: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
b_dec [d_in], plus `log_threshold` [d_sae] (jumprelu, trained) or `threshold` [d_sae] (batchtopk: a running
estimate the step writes; jumprelu / batchtopk at inference and on disk).

Inference encoders: standard ReLU(h); topk keeps the k largest ReLU(h) per token; jumprelu and batchtopk are
JumpReLU, ReLU(h) * (h > threshold) (SAELens' JumpReLU encode), so a batchtopk SAE's features no longer depend on
the rest of the batch once trained (Bussmann et al. 2024, as SAELens exports it).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from sae_jax.errors import UserError
from sae_jax.models.sharding import LOGICAL_RULES
from sae_jax.sae import jumprelu, standard, topk
from sae_jax.sae.config import SAEConfig
from sae_jax.sae.schedules import l0_coefficient_at, l1_coefficient_at

# Logical axes of every tensor any architecture has ("latent" is the dictionary axis, sharded on `model`).
PARAM_AXES = {"W_enc": (None, "latent"), "b_enc": ("latent",), "W_dec": ("latent", None), "b_dec": (None,),
              "threshold": ("latent",), "log_threshold": ("latent",)}
BASE_PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def param_names(cfg: SAEConfig, training: bool = True) -> tuple[str, ...]:
  """Tensor names of the params pytree: training state (`training`) or inference / on-disk form."""
  if cfg.architecture == "jumprelu":
    return BASE_PARAMS + ("log_threshold" if training else "threshold",)
  if cfg.architecture == "batchtopk":
    return BASE_PARAMS + ("threshold",)
  return BASE_PARAMS


def param_shapes(cfg: SAEConfig, training: bool = True) -> dict[str, tuple[int, ...]]:
  sizes = {None: cfg.d_in, "latent": cfg.d_sae}
  return {n: tuple(sizes[a] for a in PARAM_AXES[n]) for n in param_names(cfg, training)}


def param_specs(cfg: SAEConfig, training: bool = True) -> dict[str, PartitionSpec]:
  """PartitionSpecs (latents on the mesh axis of "latent", the rest replicated) for `NamedSharding(mesh, spec)`."""
  latent = LOGICAL_RULES["latent"]
  return {n: PartitionSpec(*(latent if a == "latent" else None for a in PARAM_AXES[n]))
          for n in param_names(cfg, training)}


def init_sae_params(cfg: SAEConfig, key: jax.Array) -> dict[str, jax.Array]:
  """Step-0 params. standard: SAELens' heuristic init (standard.init_params).

  Others: W_dec rows in random (Gaussian) directions, unit norm when `normalize_decoder` (sparsify / OpenAI) else
  `decoder_init_norm` (SAELens); W_enc = W_dec.T; zero biases; jumprelu log_threshold = log(init threshold);
  batchtopk threshold = 0 (set from the first batch).
  """
  if cfg.architecture == "standard":
    return standard.init_params(key, cfg.d_in, cfg.d_sae, cfg.decoder_init_norm)
  w_dec = jax.random.normal(key, (cfg.d_sae, cfg.d_in), jnp.float32)
  w_dec = w_dec / jnp.linalg.norm(w_dec, axis=1, keepdims=True)
  if not cfg.normalize_decoder:
    w_dec = w_dec * jnp.float32(cfg.decoder_init_norm)
  params = {"W_enc": w_dec.T.copy(), "b_enc": jnp.zeros((cfg.d_sae,), jnp.float32), "W_dec": w_dec,
            "b_dec": jnp.zeros((cfg.d_in,), jnp.float32)}
  if cfg.architecture == "jumprelu":
    params["log_threshold"] = jnp.full((cfg.d_sae,), np.log(cfg.jumprelu_init_threshold), jnp.float32)
  if cfg.architecture == "batchtopk":
    params["threshold"] = jnp.zeros((cfg.d_sae,), jnp.float32)
  return params


def _b_dec_flag(cfg) -> bool:
  return cfg.apply_b_dec_to_input if isinstance(cfg, SAEConfig) else bool(cfg)


def encode_pre(params, x, cfg: SAEConfig | bool = False):
  """Pre-activations h = (x [- b_dec]) W_enc + b_enc. `cfg` may be the old bool `apply_b_dec_to_input`."""
  return standard.encode_pre(params, x, _b_dec_flag(cfg))


def encode(params, x, cfg: SAEConfig | bool = False):
  """Feature activations [..., d_sae] for x [..., d_in], the architecture's inference encoder.

  A bool (or nothing) instead of a config means the standard SAE with that `apply_b_dec_to_input`, the
  signature this function had before the other architectures.
  """
  if not isinstance(cfg, SAEConfig) or cfg.architecture == "standard":
    return standard.encode(params, x, _b_dec_flag(cfg))
  h = standard.encode_pre(params, x, cfg.apply_b_dec_to_input)
  a = jax.nn.relu(h)
  if cfg.architecture == "topk":
    flat = a.reshape(-1, a.shape[-1])
    return jnp.where(topk.topk_mask(flat, cfg.k), flat, 0.0).reshape(a.shape)
  if "threshold" not in params and "log_threshold" not in params:
    raise UserError(f"{cfg.architecture} SAE params have no 'threshold': expected trained or loaded params "
                    "(init_sae_params / the train step / load_saelens give it)")
  return a * (h > jumprelu.threshold_of(params)).astype(a.dtype)


def decode(params, f, cfg: SAEConfig | None = None):
  """Reconstruction x_hat = f W_dec + b_dec (every architecture)."""
  del cfg
  return standard.decode(params, f)


def loss(params, x, cfg: SAEConfig, step=0, dead=None, mesh=None):
  """(loss, parts) of one batch x [B, d_in] (scaled units) at 0-based step `step`.

  standard: SAELens' MSE + lambda_t * decoder-norm-weighted L1 (parts as standard.loss_fn). topk / batchtopk:
  MSE + AuxK over the latents marked in `dead` [d_sae] bool (none if None). jumprelu: MSE + L0 penalty with the
  warmed-up l0 coefficient. parts always has mse_loss, l0, explained_variance and feature_fire_count [d_sae].
  `mesh` (the one params and batch are sharded on) lets topk's per-token selection run shard-locally.
  """
  if cfg.architecture == "standard":
    return standard.loss_fn(params, x, l1_coefficient_at(cfg, step), cfg.apply_b_dec_to_input)
  if cfg.architecture == "jumprelu":
    return jumprelu.loss_fn(params, x, cfg, l0_coefficient_at(cfg, step))
  if dead is None:
    dead = jnp.zeros((cfg.d_sae,), bool)
  return topk.loss_fn(params, x, cfg, dead, mesh)


def inference_params(params, cfg: SAEConfig) -> dict:
  """The inference / on-disk form: jumprelu's log_threshold becomes threshold = exp(log_threshold) (SAELens)."""
  out = dict(params)
  if cfg.architecture == "jumprelu" and "log_threshold" in out:
    out["threshold"] = jnp.exp(jnp.asarray(out.pop("log_threshold")))
  return out


def project_out_parallel(g_dec, w_dec):
  """g - (g . w_i) w_i per decoder row: the gradient component that would change a unit row's norm, removed."""
  return g_dec - jnp.sum(g_dec * w_dec, axis=1, keepdims=True) * w_dec


def unit_rows(w_dec):
  """Decoder rows rescaled to unit norm (eps as sparsify, so a zero row stays finite)."""
  return w_dec / (jnp.linalg.norm(w_dec, axis=1, keepdims=True) + jnp.finfo(w_dec.dtype).eps)
