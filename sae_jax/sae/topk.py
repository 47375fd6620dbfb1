"""TopK (Gao et al. 2024) and BatchTopK (Bussmann et al. 2024) SAEs with the AuxK loss for dead latents.

Encoder: a = ReLU((x - b_dec) W_enc + b_enc) (the pre-bias when `apply_b_dec_to_input`, the default here), then
only the k largest a per token survive (topk), or the k * B largest over the whole batch (batchtopk). The decoder
is the standard one. Decoder rows are kept unit norm by the training step (train.py), as in sparsify / OpenAI.

topk trains with a sparse decode (`topk_decode`): x_hat = sum_j a[i_j] W_dec[i_j] + b_dec over the k chosen latents
i_j, gathering [B, k] values and [B, k, d_in] rows; autodiff turns the gathers into scatter-adds (into dW_dec and
into the gradient of a), so neither direction has a [B, d_sae] x [d_sae, d_in] decoder matmul. With the pre-bias
gradient summed over the batch before it meets W_enc (`_encode_pre`), 2 of the dense step's 6 matmuls remain
(`launch/bench.py sae` measures the step against the dense one in PyTorch). Per token, `lax.top_k`; left to GSPMD
a top_k over a sharded latent axis all-gathers the whole [B, d_sae] block onto every device, so given the mesh
the step runs it in `jax.shard_map` as a local top k per latent shard + a merge of the n_shards * k candidates
(the same indices), and each shard decodes its own chosen latents, psummed over shards. `topk_mask` is the same
selection as a dense mask (the inference encoder, AuxK).

AuxK keeps the dense mask and decode: its aux_k (d_in / 2 by default) is too many for gathers to pay ([B, aux_k,
d_in] rows: 34 GB at d_in 2048, and slower than the matmul at aux_k / d_sae = 1/32). batchtopk does too: its k
varies per token (and ties with the threshold are kept). Its exact (k * B)-th largest value is found by bisection
on the float bits (one all-reduced count per halving, 32 of them): elementwise on any sharding, and no sort of
B * d_sae values.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from sae_jax.models.sharding import LOGICAL_RULES
from sae_jax.sae import standard

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


def kth_largest_nonnegative(a, kk: int):
  """The exact kk-th largest entry of a >= 0 (any shape), by bisection on its int32 bits.

  For non-negative floats the bit pattern orders like the value, so 32 halvings of [0, bits(inf) + 1) find the
  largest t with count(bits >= t) >= kk. Counts are float32: exact below 2**24 and only compared with kk.
  """
  bits = lax.bitcast_convert_type(a.astype(jnp.float32), jnp.int32)

  def halve(_, bounds):
    lo, hi = bounds  # count(bits >= lo) >= kk > count(bits >= hi)
    mid = lo + (hi - lo) // 2
    ok = jnp.sum((bits >= mid).astype(jnp.float32)) >= kk
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo, _ = lax.fori_loop(0, 32, halve, (jnp.int32(0), jnp.int32(0x7F800001)))
  return lax.bitcast_convert_type(lo, jnp.float32)


def batch_topk_mask(a, kk: int):
  """Bool mask of the kk largest entries of a >= 0 over the whole batch (plus any ties with the kk-th)."""
  return a >= kth_largest_nonnegative(a, kk)


def select(a, cfg, mesh=None):
  """The architecture's selection applied to ReLU activations a [B, d_sae] during training."""
  if cfg.architecture == "topk":
    mask = topk_mask(a, cfg.k, mesh)
  else:
    mask = batch_topk_mask(a, cfg.k * a.shape[0])
  return jnp.where(mask, a, 0.0)


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


def _encode_pre(params, x, apply_b_dec_to_input: bool):
  """standard.encode_pre, with b_dec's gradient through the pre-bias taken as -(sum_b g_h) W_enc^T.

  Autodiff of (x - b_dec) W_enc would form g_h W_enc^T, a [B, d_sae] x [d_sae, d_in] matmul, only to sum it over
  the batch. Here b_dec's gradient flows through a term (b_dec - stop_gradient(b_dec)) W_enc that is exactly 0, so
  the value is unchanged and the gradient is the same, for one vector-matrix product.
  """
  if not apply_b_dec_to_input:
    return standard.encode_pre(params, x, False)
  b_dec, w_enc = params["b_dec"], params["W_enc"]
  stopped = lax.stop_gradient(b_dec)
  return (x - stopped) @ w_enc + params["b_enc"] - (b_dec - stopped) @ w_enc


def loss_fn(params, x, cfg, dead, mesh=None):
  """(loss, parts) for topk / batchtopk: loss = mse_loss + aux_loss (no sparsity penalty: k is the sparsity).

  mse_loss is the standard one (mean_b sum_d (x_hat - x)^2, as SAELens); `dead` [d_sae] bool marks the latents
  that have not fired for `dead_steps_threshold` steps. batchtopk's parts["min_positive"] is the smallest selected
  positive activation (inf if none): its inference threshold is a running average of it. `mesh`: see topk_decode.
  """
  a = jax.nn.relu(_encode_pre(params, x, cfg.apply_b_dec_to_input))
  parts = {}
  if cfg.architecture == "topk":
    recon, fire_count = topk_decode(a, params["W_dec"], cfg.k, mesh)
    x_hat = recon + params["b_dec"]
  else:
    f = select(a, cfg, mesh)
    x_hat = standard.decode(params, f)
    fire_count = jnp.sum((f > 0).astype(jnp.int32), axis=0)
    parts["min_positive"] = lax.stop_gradient(jnp.min(jnp.where(f > 0, f, jnp.inf)))
  per_token_l2 = jnp.sum(jnp.square(x_hat - x), axis=-1)
  mse_loss = jnp.mean(per_token_l2)
  residual = lax.stop_gradient(x - x_hat)
  aux = auxk_loss(a, dead, residual, params["W_dec"], cfg.aux_k_effective, cfg.aux_k_coefficient, mesh)
  total_variance = jnp.sum(jnp.square(x - jnp.mean(x, axis=0)), axis=-1)
  parts.update(
      mse_loss=mse_loss,
      aux_loss=aux,
      l0=jnp.sum(fire_count.astype(jnp.float32)) / x.shape[0],  # mean_b of the per-token counts, exactly
      explained_variance=jnp.mean(1 - per_token_l2 / total_variance),
      feature_fire_count=fire_count,
      dead_fraction_auxk=jnp.mean(dead.astype(jnp.float32)),
  )
  return mse_loss + aux, parts
