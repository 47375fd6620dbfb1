"""The SAE as a whole on the dashboard's tokens, computed in the dashboard's one pass, and each shown feature's
nearest features.

In the jitted step of every batch (the same encode that gives the shown features' activations):

* how many valid tokens each of the d_sae latents fires on (> 0): density, dead and dense fractions, L0;
* the explained variance two ways: SAELens' (as the trainer logs it), the mean over tokens of
  1 - |x - x_hat|^2 / |x - batch mean|^2; and pooled, 1 - sum |x - x_hat|^2 / sum |x - mean x|^2 with one mean
  over all valid tokens (batching-independent, but a few tokens of huge variance, such as a row's first
  positions in many models, can dominate both sums and push it near 1). For the pooled one, per batch: token
  count, mean and centred sum of squares per dimension, combined on the host in float64 (Chan et al.'s pairwise
  update), so no catastrophic cancellation;
* co-activation counts [F, d_sae]: on how many tokens shown feature i and latent j both fire. With the firing
  counts this gives the Jaccard index |i and j| / |i or j| of every pair, never a d_sae x d_sae matrix.

Decoder-cosine neighbours come from the weights alone, in blocks of shown features (`block` x d_sae floats at
a time), so the paper's 65,536 latents never need a d_sae x d_sae matrix either.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sae_jax.errors import UserError
from sae_jax import pod
from sae_jax.features.reasonscore import latent_sharding, real_tokens
from sae_jax.models import sharding as shd
from sae_jax.sae import SAE

MAX_COACTIVATION = 2**28  # shown features x d_sae co-activation counts kept on device (1 GiB of int32)
_BLOCK_FLOATS = 2**24  # decoder cosines computed per block of shown features: at most this many at once
_RANDOM_PAIRS = 4096  # random latent pairs for the baseline decoder cosine


def make_summary_step(features, ignore_ids=(), mesh=None):
  """step(state, sae, tokens, acts, n_rows) -> (state, feats [B, T, F], moments): one batch.

  `sae` is folded (unit decoder rows); state = {"fired": [d_sae], "coact": [F, d_sae]} int32; feats are the shown
  features' folded activations; moments = (n, mean [d], centred sum of squares [d], squared error, sum of the
  per-token explained variances) of the valid tokens in float32.
  """
  features = jnp.asarray(np.asarray(features, np.int32))
  ignore_ids = tuple(int(i) for i in ignore_ids)

  def step(state, sae, tokens, acts, n_rows):
    valid = real_tokens(tokens, n_rows, ignore_ids)
    f = sae.encode(acts)  # [B, T, d_sae]
    if mesh is not None:
      f = jax.lax.with_sharding_constraint(f, shd.logical_sharding(("batch", None, "latent"), f.shape, mesh))
    fires = (f > 0) & valid[..., None]
    shown = f[..., features]
    one = fires.astype(jnp.bfloat16)  # 0/1 are exact in bf16, sums exact in f32 below 2^24 tokens a batch
    coact = jnp.einsum("btf,btj->fj", one[..., features], one, preferred_element_type=jnp.float32)
    state = {"fired": state["fired"] + fires.sum(axis=(0, 1), dtype=jnp.int32),
             "coact": state["coact"] + coact.astype(jnp.int32)}
    x = acts.astype(jnp.float32)
    w = valid[..., None].astype(jnp.float32)
    n = w.sum()
    mean = (x * w).sum(axis=(0, 1)) / jnp.maximum(n, 1)
    centred = jnp.square(x - mean)
    m2 = (centred * w).sum(axis=(0, 1))
    err = jnp.square(sae.decode(f) - x).sum(axis=-1)  # [B, T]
    ev_tokens = jnp.where(valid, 1 - err / jnp.where(valid, centred.sum(axis=-1), 1.0), 0.0).sum()
    return state, shown, (n, mean, m2, (err * valid).sum(), ev_tokens)

  return step


def combine_moments(moments) -> tuple[int, float, float, float]:
  """(tokens, total centred sum of squares, squared error, summed per-token explained variance) of per-batch
  (n, mean [d], m2 [d], sse, ev sum), in float64."""
  n_tot, mean, m2, sse, ev = 0.0, None, None, 0.0, 0.0
  for n, m, q, e, v in moments:
    n, m, q = float(n), np.asarray(m, np.float64), np.asarray(q, np.float64)
    sse, ev = sse + float(e), ev + float(v)
    if n == 0:
      continue
    if mean is None:
      n_tot, mean, m2 = n, m, q
      continue
    delta = m - mean
    total = n_tot + n
    mean = mean + delta * (n / total)
    m2 = m2 + q + np.square(delta) * (n_tot * n / total)
    n_tot = total
  return int(n_tot), (float(m2.sum()) if m2 is not None else 0.0), sse, ev


class SummaryAccumulator:
  """Device-side counts over every latent plus host-side moments; `update` returns the shown features."""

  def __init__(self, sae: SAE, features, *, ignore_ids=(), mesh=None, matmul_precision: str = "highest"):
    self.features = np.asarray(features, np.int64)
    self.d_sae, self.mesh, self.matmul_precision = sae.d_sae, mesh, matmul_precision
    if len(self.features) * self.d_sae > MAX_COACTIVATION:
      raise UserError(f"{len(self.features)} features x {self.d_sae} latents of co-activation counts is more than "
                      f"{MAX_COACTIVATION}: show fewer features (dashboard.top_k or --features)")
    self.sae = sae.place(mesh).folded()

    def put(shape, axis):
      z = jnp.zeros(shape, jnp.int32)
      return z if mesh is None else jax.device_put(z, latent_sharding(shape, axis, mesh))

    self._state = {"fired": put((self.d_sae,), 0), "coact": put((len(self.features), self.d_sae), 1)}
    self._step = jax.jit(make_summary_step(self.features, ignore_ids, mesh), donate_argnums=(0,))
    self._moments = []

  def update(self, tokens, acts, n_rows: int):
    """Adds rows [:n_rows] of one batch; returns the shown features' activations [B, T, F] (on device)."""
    with jax.default_matmul_precision(self.matmul_precision):
      self._state, shown, moments = self._step(self._state, self.sae, tokens, acts, np.int32(n_rows))
    self._moments.append(moments)
    return shown

  def counts(self) -> tuple[np.ndarray, np.ndarray]:
    """Host copies: fired [d_sae] and co-activation [F, d_sae]."""
    state = pod.to_host(self._state)
    return np.asarray(state["fired"], np.int64), np.asarray(state["coact"], np.int64)

  def finalize(self, dense_threshold: float) -> dict:
    """The SAE's numbers on these tokens (JSON-ready); `fired` and `coact` stay for the neighbours."""
    n, variance, sse, ev = combine_moments(pod.to_host(self._moments))
    fired, _ = self.counts()
    density = fired / max(n, 1)
    return {"n_tokens": n, "d_sae": self.d_sae, "l0": float(fired.sum() / max(n, 1)),
            "dead_fraction": float(np.mean(fired == 0)), "dense_fraction": float(np.mean(density > dense_threshold)),
            "dense_threshold": float(dense_threshold), "explained_variance": ev / n if n else float("nan"),
            "explained_variance_pooled": float(1 - sse / variance) if variance > 0 else float("nan"),
            "mse": float(sse / max(n, 1))}


def coactivation_neighbours(features, fired, coact, k: int) -> list[list[dict]]:
  """Per shown feature, the k latents with the highest Jaccard index (co-active tokens / tokens either fires on),
  itself and latents never co-active left out; ties to the lower id."""
  out = []
  for i, f in enumerate(np.asarray(features, np.int64)):
    both = coact[i].astype(np.float64)
    union = fired[f] + fired - both
    jac = np.divide(both, union, out=np.zeros_like(both), where=union > 0)
    jac[f] = -1.0
    order = np.lexsort((np.arange(len(jac)), -jac))[:k]
    out.append([{"feature": int(j), "jaccard": float(jac[j]), "count": int(both[j])}
                for j in order if both[j] > 0])
  return out


def _unit(w):
  """Unit decoder rows (a zero row stays zero)."""
  norm = jnp.linalg.norm(w, axis=1, keepdims=True)
  return w / jnp.where(norm > 0, norm, 1.0)


def decoder_neighbours(w_dec, features, k: int) -> list[list[dict]]:
  """Per shown feature, the k latents whose decoder rows have the highest cosine with its own (itself left
  out; ties to the lower id), computed for blocks of shown features against all rows."""
  w = jnp.asarray(w_dec, jnp.float32)
  features = np.asarray(features, np.int64)
  d_sae = int(w.shape[0])
  k = min(k, d_sae - 1)
  if k <= 0:
    return [[] for _ in features]
  block = int(max(1, min(len(features), _BLOCK_FLOATS // d_sae)))
  padded = np.concatenate([features, np.repeat(features[-1:], -len(features) % block)])

  @jax.jit
  def run(w, ids):
    u = _unit(w)
    cos = jnp.matmul(u[ids], u.T, precision=jax.lax.Precision.HIGHEST)  # [block, d_sae]
    cos = jnp.where(jnp.arange(d_sae)[None, :] == ids[:, None], -jnp.inf, cos)
    return jax.lax.top_k(cos, k)

  vals, idx = [], []
  for start in range(0, len(padded), block):
    v, i = jax.device_get(run(w, jnp.asarray(padded[start:start + block], jnp.int32)))
    vals.append(v)
    idx.append(i)
  vals, idx = np.concatenate(vals)[:len(features)], np.concatenate(idx)[:len(features)]
  return [[{"feature": int(j), "cosine": float(c)} for j, c in zip(idx[r], vals[r])] for r in range(len(features))]


def decoder_cosine_baseline(w_dec, features, seed: int = 0) -> dict:
  """Mean decoder cosine over pairs of the shown features, and over random pairs of distinct latents (the
  baseline: shown features far more aligned than that are likely one direction split up)."""
  w = np.asarray(w_dec, np.float32)
  u = np.asarray(_unit(jnp.asarray(w[np.asarray(features, np.int64)])), np.float64)
  f = len(features)
  shown = float((np.sum(u @ u.T) - np.trace(u @ u.T)) / (f * (f - 1))) if f > 1 else float("nan")
  rng = np.random.default_rng(seed)
  a = rng.integers(0, len(w), _RANDOM_PAIRS)
  b = (a + rng.integers(1, len(w), _RANDOM_PAIRS)) % len(w)  # never a itself
  ua, ub = (np.asarray(_unit(jnp.asarray(w[i])), np.float64) for i in (a, b))
  random = float(np.mean(np.sum(ua * ub, axis=1))) if len(w) > 1 else float("nan")
  return {"shown_mean": shown, "random_mean": random, "random_pairs": _RANDOM_PAIRS}
