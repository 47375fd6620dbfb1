"""TopK SAE (Gao et al. 2024) with the AuxK loss for dead latents (also batchtopk's, batchtopk.py).

Encoder: a = ReLU((x - b_dec) W_enc + b_enc) (the pre-bias when `apply_b_dec_to_input`, the default here), then
only the k largest a per token survive. The decoder is the standard one. Decoder rows are kept unit norm by the
training step (train.py), as in sparsify / OpenAI.

topk trains with a sparse decode (`topk_decode`): x_hat = sum_j a[i_j] W_dec[i_j] + b_dec over the k chosen latents
i_j, gathering [B, k] values and [B, k, d_in] rows; autodiff turns the gathers into scatter-adds (into dW_dec and
into the gradient of a), so neither direction has a [B, d_sae] x [d_sae, d_in] decoder matmul. With the pre-bias
gradient summed over the batch before it meets W_enc (`train_encode_pre`), 2 of the dense step's 6 matmuls remain
(`launch/bench.py sae` measures the step against the dense one in PyTorch). Per token, `lax.top_k`; left to GSPMD
a top_k over a sharded latent axis all-gathers the whole [B, d_sae] block onto every device, so given the mesh
the step runs it in `jax.shard_map` as a local top k per latent shard + a merge of the n_shards * k candidates
(the same indices), and each shard decodes its own chosen latents, psummed over shards. `topk_mask` is the same
selection as a dense mask (the inference encoder, AuxK).

AuxK keeps the dense mask and decode: its aux_k (d_in / 2 by default) is too many for gathers to pay ([B, aux_k,
d_in] rows: 34 GB at d_in 2048, and slower than the matmul at aux_k / d_sae = 1/32). The module interface is
core.py's.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from sae_jax.models.sharding import LOGICAL_RULES
from sae_jax.sae import base

PER_LATENT = False  # a latent's activation depends on the other latents (the per-token top k)
TRACKS_FIRING = True
after_update = base.unchanged
inference_params = base.identity

_TINY = 1e-12  # guards the AuxK denominator when the residual is exactly constant over the batch


def topk_mask(a, k: int, mesh=None):
  """Bool mask of the k largest entries of each row of a [N, d] (ties to the lower index, as lax.top_k).

  With a `mesh`, rows split over the batch axes and columns over the latent axis (see `_merged_top_k`): the same
  mask without gathering [N, d].
  """
  if mesh is None:
    return _scatter_mask(a.shape, lax.top_k(a, k)[1])
  latent, spec = _specs(mesh)

  def local(block):
    width = block.shape[-1]
    return _scatter_mask(block.shape, _local_indices(_merged_top_k(block, k, latent), width, latent))

  return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec)(a)


def topk_decode(a, w_dec, k: int, mesh=None):
  """Sparse decode of a [N, d_sae]'s top k per row: (sum_j a[n, i_j] W_dec[i_j] [N, d_in], fire_count [d_sae]).

  Equals where(topk_mask(a, k), a, 0) @ W_dec up to summation order (same ties; no gradient through the choice).
  fire_count (int32): per latent, the rows that chose it with a positive value. With a `mesh` (a sharded (batch,
  latent), W_dec on latent) each latent shard gathers only its own chosen latents; partial sums are psummed.
  """
  if mesh is None:
    return _gather_decode(a, lax.top_k(lax.stop_gradient(a), k)[1], w_dec)
  latent, spec = _specs(mesh)
  batch_axes = spec[0]

  def local(block, w_block):
    width = block.shape[-1]
    idx = _local_indices(_merged_top_k(lax.stop_gradient(block), k, latent), width, latent)
    recon, counts = _gather_decode(block, idx, w_block)
    return lax.psum(recon, latent), (lax.psum(counts, batch_axes) if batch_axes else counts)

  return jax.shard_map(local, mesh=mesh, in_specs=(spec, PartitionSpec(latent, None)),
                       out_specs=(PartitionSpec(batch_axes, None), PartitionSpec(latent)))(a, w_dec)


def _gather_decode(values, idx, w_dec):
  """(sum_j values[n, idx_j] W_dec[idx_j], per-latent count of positive picks); an idx >= d_sae reads 0.

  Autodiff of the gathers gives scatter-adds ([N, k] into the values' gradient, [N, k, d_in] into dW_dec's).
  """
  vals = jnp.take_along_axis(values, idx, axis=1, mode="fill", fill_value=0)
  rows = jnp.take(w_dec, idx, axis=0, mode="fill", fill_value=0)
  recon = jnp.einsum("nk,nkd->nd", vals, rows)
  counts = jnp.zeros(w_dec.shape[:1], jnp.int32).at[idx].add((vals > 0).astype(jnp.int32), mode="drop")
  return recon, counts


def _specs(mesh):
  """(latent mesh axis, PartitionSpec of an [N, d_sae] block: rows on the batch axes that split, latents)."""
  latent, batch = LOGICAL_RULES["latent"], LOGICAL_RULES["batch"]
  return latent, PartitionSpec(tuple(ax for ax in batch if mesh.shape[ax] > 1) or None, latent)


def _merged_top_k(block, k: int, latent: str):
  """Inside shard_map: global column indices [n, k] of the k largest entries of each row over all latent shards.

  Each shard takes its local top k; the n_shards * k candidates are all-gathered along the latent axis and merged
  by a second top k. The global top k of a row is inside its shards' local top k, and candidates are ordered by
  shard then local rank, so ties still go to the lower global index.
  """
  width = block.shape[-1]
  vals, idx = lax.top_k(block, min(k, width))
  vals = lax.all_gather(vals, latent, axis=1, tiled=True)
  idx = lax.all_gather(idx + lax.axis_index(latent) * width, latent, axis=1, tiled=True)
  return jnp.take_along_axis(idx, lax.top_k(vals, k)[1], axis=1)


def _local_indices(idx, width: int, latent: str):
  """Global column indices -> this shard's; other shards' columns become `width` (out of range, dropped)."""
  idx = idx - lax.axis_index(latent) * width
  return jnp.where((idx >= 0) & (idx < width), idx, width)


def _scatter_mask(shape, idx):
  """[N, d] bool, True at the column indices idx [N, j] of each row (indices >= d dropped; none are < 0)."""
  rows = jnp.arange(shape[0])[:, None]
  return jnp.zeros(shape, bool).at[rows, idx].set(True, mode="drop")


def auxk_loss(a, dead, residual, w_dec, aux_k: int, coefficient: float, mesh=None):
  """AuxK: the top `aux_k` dead latents per token reconstruct the (stopped) residual e = x - x_hat.

  aux = coefficient * min(n_dead / aux_k, 1) * sum_b ||e_hat_b - e_b||^2 / sum_b ||e_b - mean_b e||^2,
  e_hat = z_aux W_dec (the dead latents' own contribution; sparsify and SAELens decode it with + b_dec). This is
  sparsify's form (batch sum of squared errors over a total variance, down-weighted by min(n_dead / aux_k, 1)
  when few latents are dead) with the residual's own variance as denominator: the fraction of e's variance the
  dead latents fail to explain. (OpenAI's `normalized_mean_squared_error` divides per token by the uncentred
  ||target||^2; sparsify divides by the variance of x.) Exactly 0 when no latent is dead. Of the latents'
  parameters only the dead ones' get a gradient (live ones are masked out, e is stopped); b_dec gets one too
  through the pre-bias.
  """
  n_dead = jnp.sum(dead.astype(jnp.float32))

  def aux(a, w_dec):
    candidates = jnp.where(dead[None, :], a, -jnp.inf)
    z = jnp.where(topk_mask(candidates, aux_k, mesh) & dead[None, :], a, 0.0)
    num = jnp.sum(jnp.square(z @ w_dec - residual))
    den = jnp.sum(jnp.square(residual - jnp.mean(residual, axis=0)))
    scale = jnp.minimum(n_dead / aux_k, 1.0)
    return jnp.float32(coefficient) * scale * num / jnp.maximum(den, _TINY)

  # Skipped (a second top-k and decode) while nothing is dead, which is most steps of a healthy run.
  return lax.cond(n_dead > 0, aux, lambda a, w_dec: jnp.zeros((), jnp.float32), a, w_dec)


def train_encode_pre(params, x, apply_b_dec_to_input: bool):
  """base.encode_pre, with b_dec's gradient through the pre-bias taken as -(sum_b g_h) W_enc^T.

  Autodiff of (x - b_dec) W_enc would form g_h W_enc^T, a [B, d_sae] x [d_sae, d_in] matmul, only to sum it over
  the batch. Here b_dec's gradient flows through a term (b_dec - stop_gradient(b_dec)) W_enc that is exactly 0, so
  the value is unchanged and the gradient is the same, for one vector-matrix product.
  """
  if not apply_b_dec_to_input:
    return base.encode_pre(params, x, False)
  b_dec, w_enc = params["b_dec"], params["W_enc"]
  stopped = lax.stop_gradient(b_dec)
  return (x - stopped) @ w_enc + params["b_enc"] - (b_dec - stopped) @ w_enc


def param_names(training: bool = True) -> tuple[str, ...]:
  del training
  return base.BASE_PARAMS


def init_params(cfg, key: jax.Array) -> dict[str, jax.Array]:
  return base.init_random_directions(cfg, key)


def encode(params, x, cfg):
  """The k largest ReLU(h) of each token (x [..., d_in])."""
  a = jax.nn.relu(base.encode_pre(params, x, cfg.apply_b_dec_to_input))
  flat = a.reshape(-1, a.shape[-1])
  return jnp.where(topk_mask(flat, cfg.k), flat, 0.0).reshape(a.shape)


def loss_terms(params, x, cfg, step, dead, mesh=None):
  """(x_hat, fire counts, penalty, parts): penalty = aux_loss, the AuxK term (no sparsity penalty: k is the
  sparsity), over the latents marked in `dead` [d_sae] bool, which have not fired for `dead_steps_threshold`
  steps. `mesh`: see topk_decode."""
  del step
  a = jax.nn.relu(train_encode_pre(params, x, cfg.apply_b_dec_to_input))
  recon, fired = topk_decode(a, params["W_dec"], cfg.k, mesh)
  x_hat = recon + params["b_dec"]
  return (x_hat, fired) + auxk_terms(params, x, x_hat, a, dead, cfg, mesh)


def auxk_terms(params, x, x_hat, a, dead, cfg, mesh=None):
  """(aux_loss, parts) of the AuxK term, which topk and batchtopk share."""
  aux = auxk_loss(a, dead, lax.stop_gradient(x - x_hat), params["W_dec"], cfg.aux_k_effective,
                  cfg.aux_k_coefficient, mesh)
  return aux, {"aux_loss": aux, "dead_fraction_auxk": jnp.mean(dead.astype(jnp.float32))}


def saelens_keys(cfg) -> dict:
  # SAELens 5.5.2 reads k from activation_fn_kwargs, SAELens 6 from a top-level "k". Our top k is of the plain
  # pre-activations: said explicitly, as SAELens 6's TopKTrainingSAEConfig defaults to rescaling them by |W_dec_i|.
  return {"architecture": "topk", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": cfg.k},
          "l1_coefficient": 0.0, "decoder_heuristic_init": False, "scale_sparsity_penalty_by_decoder_norm": False,
          "k": cfg.k, "rescale_acts_by_decoder_norm": False}
