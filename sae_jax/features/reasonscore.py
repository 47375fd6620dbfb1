"""ReasonScore (sae_jax/paper.md, "ReasonScore"): which SAE features fire on reasoning words, across many words.

Per feature j, on the W_dec-norm-folded activations: mu+_j / mu-_j = mean over tokens inside / outside the
widened word windows, mu_{j,r} = mean over word r's windows, H_j = normalised entropy of mu_{j,.} over the
words, and score_j = mu+_j / (sum_k mu+_k + eps) * H_j^alpha - mu-_j / (sum_k mu-_k + eps), the sums over
the whole dictionary.

The reference re-runs the LLM for every 48-feature slice. Here one jitted step encodes all features of a token
batch (latents sharded on `model`, tokens on the data axes) and adds per-mask sums, so the LLM runs once per
token whatever the dictionary size. `reasonscore_dense` computes the same from stored activations in float64,
as the check for the streamed path.
"""

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from sae_jax import io as sio
from sae_jax import pod
from sae_jax import paper
from sae_jax.errors import UserError
from sae_jax.features.masks import PAPER_IGNORE_IDS, PAPER_WINDOW, check_mask_settings, reason_masks
from sae_jax.features.vocab import Vocabulary
from sae_jax.models import sharding as shd
from sae_jax.sae import SAE, SAEConfig

PAPER_ALPHA = paper.ALPHA
EPS = 1e-12
ARRAYS = ("scores", "mu_pos", "mu_neg", "group_means", "entropy", "entropy_norm")
META_FILE = "reasonscore.json"  # written last, with each array's sha256: a reader checks the set is whole
# The d_sae axis of each accumulator array (split on `model` under a mesh).
STATE_LATENT_AXIS = {"sums": 1, "counts": None}
_MAX_COUNT = 2**31 - 1  # counts are int32 on device


@dataclasses.dataclass(frozen=True)
class ReasonScores:
  """Per-feature ReasonScore and the statistics behind it (float32, feature axis last)."""

  scores: np.ndarray  # [d_sae]
  mu_pos: np.ndarray  # [d_sae] mean over tokens inside any word window
  mu_neg: np.ndarray  # [d_sae] mean over the other (non-ignored) tokens
  group_means: np.ndarray  # [n_groups, d_sae] mean over each word's windows (0 where a word never occurs)
  entropy: np.ndarray  # [d_sae] H in nats of group_means normalised per feature
  entropy_norm: np.ndarray  # [d_sae] H / ln(n_groups) (1 with a single group), the factor raised to alpha
  group_names: tuple[str, ...]
  pos_count: int
  neg_count: int
  group_counts: tuple[int, ...]
  settings: dict  # alpha, eps, window, mode, ignore_ids, n_tokens

  def top_k(self, k: int) -> list[dict]:
    """The k best features (ties: lower id first), each with its per-word breakdown."""
    order = np.argsort(-self.scores, kind="stable")[:k]
    return [{"feature": int(j), "score": float(self.scores[j]), "mu_pos": float(self.mu_pos[j]),
             "mu_neg": float(self.mu_neg[j]), "entropy_norm": float(self.entropy_norm[j]),
             "words": {g: float(self.group_means[r, j]) for r, g in enumerate(self.group_names)}}
            for j in order]

  def save(self, out_dir: str) -> str:
    """<name>.npy per array, then reasonscore.json with their sha256 (each file replaced atomically; the
    launch script fills a new dir and swaps it in whole)."""
    os.makedirs(out_dir, exist_ok=True)
    digests = {}
    for name in ARRAYS:
      path = sio.write_npy(os.path.join(out_dir, f"{name}.npy"), getattr(self, name))
      digests[name] = _sha256(path)
    meta = {"group_names": list(self.group_names), "pos_count": self.pos_count, "neg_count": self.neg_count,
            "group_counts": list(self.group_counts), "settings": self.settings, "arrays": list(ARRAYS),
            "sha256": digests}
    sio.write_json(os.path.join(out_dir, META_FILE), meta)
    return out_dir

  @classmethod
  def load(cls, out_dir: str) -> "ReasonScores":
    """The results in `out_dir`; a missing, cut or changed file (checked against the sha256 in reasonscore.json)
    is a UserError naming it."""
    path = os.path.join(out_dir, META_FILE)
    if not os.path.exists(path):
      raise UserError(f"no ReasonScore results in {out_dir}: {META_FILE} is missing")
    try:
      with open(path) as f:
        meta = json.load(f)
      fields = dict(group_names=tuple(meta["group_names"]), pos_count=meta["pos_count"],
                    neg_count=meta["neg_count"], group_counts=tuple(meta["group_counts"]), settings=meta["settings"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path} is truncated or not ReasonScore results ({type(e).__name__}: {e})") from None
    arrays = {}
    for name in ARRAYS:
      file = os.path.join(out_dir, f"{name}.npy")
      if not os.path.exists(file):
        raise UserError(f"ReasonScore results {out_dir} are incomplete: {name}.npy is missing")
      if name in meta.get("sha256", {}) and _sha256(file) != meta["sha256"][name]:
        raise UserError(f"ReasonScore results {out_dir}: {name}.npy does not match {META_FILE} (truncated or "
                        "changed): rerun launch/reason_score.py")
      try:
        arrays[name] = np.load(file, allow_pickle=False)
      except (OSError, ValueError, EOFError) as e:
        raise UserError(f"ReasonScore results {out_dir}: cannot read {name}.npy ({e})") from None
    return cls(**arrays, **fields)


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def real_tokens(tokens, n_rows, ignore_ids=()):
  """[B, T] bool (jnp): tokens of the batch's real rows (index < `n_rows`; the rest pads a short last batch)
  that are not in `ignore_ids`."""
  real = jnp.broadcast_to((jnp.arange(tokens.shape[0]) < n_rows)[:, None], tokens.shape)
  if len(ignore_ids):
    real = real & ~jnp.isin(tokens, jnp.asarray(np.asarray(ignore_ids, np.int64).astype(tokens.dtype)))
  return real


def _mask_rows(masks, xp):
  """[2 + n_groups, B, L]: pos, neg, then each group; the rows of the sums and counts."""
  return xp.concatenate([masks.pos[None], masks.neg[None], masks.groups])


def scores_from_sums(sums, counts, group_names, alpha: float = PAPER_ALPHA, eps: float = EPS,
                     settings: dict | None = None) -> ReasonScores:
  """Means, entropy and scores from per-mask activation sums [2 + R, F] and token counts [2 + R].

  The reference's formula (compute_score.py:328-350, fixtures README 2.3 steps 5-7), evaluated in float64.
  """
  sums = np.asarray(sums, np.float64)
  counts = np.asarray(counts, np.int64)
  if counts[0] + counts[1] == 0:
    raise UserError("ReasonScore has no tokens to average: every token is an ignored id")
  means = sums / np.maximum(counts, 1)[:, None]  # an empty mask has sum 0, so mean 0 as in the reference
  mu_pos, mu_neg, group_means = means[0], means[1], means[2:]
  probs = group_means / (group_means.sum(axis=0) + eps)
  entropy = -np.sum(probs * np.log(np.where(probs > 0, probs, 1.0)), axis=0)  # 0 log 0 := 0
  n_groups = len(group_names)
  entropy_norm = entropy / np.log(n_groups) if n_groups > 1 else np.ones_like(entropy)
  scores = mu_pos / (mu_pos.sum() + eps) * entropy_norm**alpha - mu_neg / (mu_neg.sum() + eps)
  f32 = lambda a: a.astype(np.float32)  # noqa: E731
  return ReasonScores(
      scores=f32(scores), mu_pos=f32(mu_pos), mu_neg=f32(mu_neg), group_means=f32(group_means),
      entropy=f32(entropy), entropy_norm=f32(entropy_norm), group_names=tuple(group_names),
      pos_count=int(counts[0]), neg_count=int(counts[1]), group_counts=tuple(int(c) for c in counts[2:]),
      settings={"alpha": float(alpha), "eps": float(eps), **(settings or {})})


def _settings(window, mode, ignore_ids, n_tokens) -> dict:
  return {"window": [int(w) for w in window], "mode": mode, "ignore_ids": [int(i) for i in ignore_ids],
          "n_tokens": int(n_tokens)}


def reasonscore_dense(acts, tokens, vocab: Vocabulary, *, window=PAPER_WINDOW, mode: str = "reference",
                      ignore_ids=PAPER_IGNORE_IDS, alpha: float = PAPER_ALPHA, eps: float = EPS) -> ReasonScores:
  """ReasonScore of feature activations `acts` [B, L, F] (already folded) on `tokens` [B, L], all at once."""
  check_mask_settings(window, mode)
  acts = np.asarray(acts, np.float64)
  tokens = np.asarray(tokens)
  if tokens.size == 0:
    raise UserError("ReasonScore got no tokens: the corpus is empty")
  if acts.ndim != 3 or acts.shape[:2] != tokens.shape:
    raise UserError(f"activations {acts.shape} do not match tokens {tokens.shape}: expected [B, L, features]")
  rows = _mask_rows(reason_masks(tokens, vocab, window, mode, ignore_ids), np)
  sums = np.einsum("mbl,blf->mf", rows.astype(np.float64), acts)
  return scores_from_sums(sums, rows.sum(axis=(1, 2)), vocab.group_names, alpha, eps,
                          _settings(window, mode, ignore_ids, tokens.size))


def state_shapes(vocab: Vocabulary, d_sae: int) -> dict:
  """The accumulator state: per-mask sums [2 + n_groups, d_sae] float32 and token counts [2 + n_groups] int32."""
  n_rows = 2 + len(vocab.group_names)
  return {"sums": jax.ShapeDtypeStruct((n_rows, d_sae), jnp.float32),
          "counts": jax.ShapeDtypeStruct((n_rows,), jnp.int32)}


def latent_sharding(shape, latent_axis, mesh):
  """The accumulator's placement of an array: its d_sae axis (`latent_axis`, or None) split on `model`."""
  axes = tuple("latent" if i == latent_axis else None for i in range(len(shape)))
  return shd.logical_sharding(axes, shape, mesh)


def make_step(vocab: Vocabulary, *, window=PAPER_WINDOW, mode: str = "reference", ignore_ids=PAPER_IGNORE_IDS,
              mesh=None):
  """The accumulator's pure `step(state, sae, tokens, acts, n_rows) -> state`: adds one batch's per-mask
  sums/counts of the features `sae` (an `SAE`, folded) gives raw site activations `acts`. Rows from `n_rows` on
  (an int32 scalar) are padding and count nowhere: a short last batch is padded, so it still splits over the
  mesh and the step compiles once.

  A module function (not a method) so launch/aot_compile.py can lower it with `abstract_step_args`.
  """

  def step(state, sae, tokens, acts, n_rows):
    rows = _mask_rows(reason_masks(tokens, vocab, window, mode, ignore_ids), jnp) & real_tokens(tokens, n_rows)[None]
    features = sae.encode(acts)
    if mesh is not None:
      features = jax.lax.with_sharding_constraint(
          features, shd.logical_sharding(("batch", None, "latent"), features.shape, mesh))
    sums = jnp.einsum("mbl,blf->mf", rows.astype(jnp.float32), features)
    return {"sums": state["sums"] + sums, "counts": state["counts"] + rows.sum(axis=(1, 2), dtype=jnp.int32)}

  return step


def abstract_step_args(vocab: Vocabulary, sae_cfg: SAEConfig, batch_rows: int, context_size: int, mesh) -> tuple:
  """(state, sae, tokens, acts, n_rows) of `make_step` as ShapeDtypeStructs placed as the accumulator places
  them."""
  def sds(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

  state = {k: sds(a.shape, a.dtype, latent_sharding(a.shape, STATE_LATENT_AXIS[k], mesh))
           for k, a in state_shapes(vocab, sae_cfg.d_sae).items()}
  return (state, SAE.abstract(sae_cfg, mesh).encoder_only(),
          sds((batch_rows, context_size), jnp.int32, shd.batch_sharding(mesh, 2)),
          sds((batch_rows, context_size, sae_cfg.d_in), jnp.float32, shd.batch_sharding(mesh, 3)),
          jax.ShapeDtypeStruct((), jnp.int32))


class ReasonScoreAccumulator:
  """One pass over a corpus: `update(tokens, acts)` per batch of raw site activations, then `finalize()`.

  `sae` is an `SAE` as trained or loaded, in any units; features are read `folded()` (unit decoder rows), as the
  reference does. With a `mesh`, latents are split on its `model` axis and token batches on its data axes; sums
  are float32 and counts int32 on device. Matmuls run at `matmul_precision` ("highest" = float32 on TPU too).
  """

  def __init__(self, sae: SAE, vocab: Vocabulary, *, window=PAPER_WINDOW, mode: str = "reference",
               ignore_ids=PAPER_IGNORE_IDS, mesh=None, matmul_precision: str = "highest"):
    window = check_mask_settings(window, mode)
    self.d_sae = sae.d_sae
    self.vocab, self.window, self.mode, self.mesh = vocab, window, mode, mesh
    self.ignore_ids = tuple(int(i) for i in ignore_ids)
    self.matmul_precision = matmul_precision
    self.n_tokens = 0
    self.sae = sae.place(mesh).folded().encoder_only()  # encoding never reads the decoder
    self._state = {k: self._place(jnp.zeros(a.shape, a.dtype), STATE_LATENT_AXIS[k])
                   for k, a in state_shapes(vocab, self.d_sae).items()}
    self._step = jax.jit(self._make_step(), donate_argnums=(0,))

  def _place(self, a, latent_axis):
    """On the mesh with the d_sae axis (if any) split on `model`."""
    return a if self.mesh is None else jax.device_put(a, latent_sharding(a.shape, latent_axis, self.mesh))

  def _make_step(self):
    return make_step(self.vocab, window=self.window, mode=self.mode, ignore_ids=self.ignore_ids, mesh=self.mesh)

  def update(self, tokens, acts, n_rows: int | None = None) -> None:
    """Adds one batch: tokens [B, L] ids, acts [B, L, d_in] raw site activations (e.g. from make_site_fn); only
    its first `n_rows` rows (default all) count, the rest being padding."""
    shape = tuple(np.shape(tokens))
    if len(shape) != 2:
      raise UserError(f"tokens must be [batch, length], got shape {shape}")
    acts_shape = tuple(np.shape(acts))
    if len(acts_shape) != 3 or acts_shape[:2] != shape:
      raise UserError(f"activations {acts_shape} do not match tokens {shape}: expected [B, L, d_in]")
    self.sae.check_width(acts_shape[2], "activation width")
    n_rows = shape[0] if n_rows is None else int(n_rows)
    if not 0 <= n_rows <= shape[0]:
      raise UserError(f"n_rows {n_rows} is outside the batch of {shape[0]} rows")
    if self.n_tokens + n_rows * shape[1] > _MAX_COUNT:
      raise UserError(f"more than {_MAX_COUNT} tokens: split the corpus and add the sums and counts")
    if self.mesh is not None:
      n_data = shd.data_shards(self.mesh)
      if shape[0] % n_data:
        raise UserError(f"batch of {shape[0]} rows does not split over {n_data} data shards")
      tokens = jax.device_put(tokens, shd.batch_sharding(self.mesh, 2))
      acts = jax.device_put(acts, shd.batch_sharding(self.mesh, 3))
    with jax.default_matmul_precision(self.matmul_precision):
      self._state = pod.pace(self._step(self._state, self.sae, tokens, acts, np.int32(n_rows)))
    self.n_tokens += n_rows * shape[1]

  def sums_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
    """Host copies of the per-mask sums [2 + R, d_sae] (pos, neg, groups) and counts [2 + R]."""
    state = pod.to_host(self._state)
    return np.asarray(state["sums"]), np.asarray(state["counts"])

  def finalize(self, alpha: float = PAPER_ALPHA, eps: float = EPS) -> ReasonScores:
    if self.n_tokens == 0:
      raise UserError("ReasonScore got no tokens: the corpus is empty")
    sums, counts = self.sums_and_counts()
    return scores_from_sums(sums, counts, self.vocab.group_names, alpha, eps,
                            _settings(self.window, self.mode, self.ignore_ids, self.n_tokens))


def reasonscore_corpus(site_fn, rows, sae: SAE, vocab: Vocabulary, *, batch_rows: int, alpha: float = PAPER_ALPHA,
                       eps: float = EPS, progress=None, **accumulator_kwargs) -> ReasonScores:
  """ReasonScore of token `rows` [n, L] with `site_fn(tokens) -> [B, L, d_in]`, one forward per token.

  `site_fn` is `sae_jax.activations.collect.make_site_fn(model, layer, "resid_post", mesh)`; the paper scores
  the first 4096 shuffled rows of 1024 tokens (sae_jax/paper.md, "The extraction set").
  `progress(rows_done, n_rows)` is called after each batch; other keywords go to `ReasonScoreAccumulator`.
  """
  if len(rows) == 0:
    raise UserError("ReasonScore got no tokens: the corpus is empty")
  acc = ReasonScoreAccumulator(sae, vocab, **accumulator_kwargs)
  feed_rows(acc, site_fn, rows, batch_rows, progress)
  return acc.finalize(alpha, eps)


def feed_rows(acc: "ReasonScoreAccumulator", site_fn, rows, batch_rows: int, progress=None) -> None:
  """Runs the model over `rows` in batches (placed on the accumulator's mesh; the last one padded) and updates
  `acc`."""
  for start, n, tokens in shd.token_batches(rows, batch_rows, acc.mesh, pad=True):
    acc.update(tokens, site_fn(tokens), n)
    if progress is not None:
      progress(start + n, len(rows))
