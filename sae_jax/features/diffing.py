"""Model diffing: one SAE, the same token rows, two models of one width (e.g. a base and its reasoning distill).

The paper claims its reasoning features exist only in the reasoning model. To test that, each model runs once
over the rows and, per feature, we keep the mean folded activation and the density (fraction of tokens where it
fires), both over non-ignored tokens, plus ReasonScore. Both come from one jitted step: a
`ReasonScoreAccumulator` whose step also counts firing tokens, so ReasonScore is exactly the one
`reason_score.py` computes, and one accumulator (one compile) serves both models. Then: B/A ratios, and how
many of B's top reasoning features are "B-only" (density in A below a threshold).
"""

import dataclasses
import os
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from sae_jax import io as sio
from sae_jax import pod
from sae_jax.errors import UserError
from sae_jax.features.reasonscore import (EPS, PAPER_ALPHA, ReasonScoreAccumulator, ReasonScores, feed_rows,
                                          real_tokens)
from sae_jax.models import sharding as shd
from sae_jax.sae import SAE

RATIO_EPS = 1e-6  # added to both sides of B/A so features dead in A give large finite ratios
B_ONLY_DENSITY = 1e-5  # "B-only": fires on fewer than 1 in 100k (non-ignored) tokens of A
META_FILE = "diff.json"  # written last: its presence means the arrays beside it are complete
PLOT_FILE = "diff.png"
ARRAYS = ("mean_a", "mean_b", "density_a", "density_b", "score_a", "score_b", "mean_ratio", "mean_log2_ratio",
          "density_ratio", "density_log2_ratio")


# ---- statistics of one model ----


@dataclasses.dataclass(frozen=True)
class ModelStats:
  """One model's per-feature statistics on the rows (float32 [d_sae], folded units)."""

  mean: np.ndarray  # mean activation over non-ignored tokens
  density: np.ndarray  # fraction of non-ignored tokens where the feature is > 0
  reason: ReasonScores
  n_tokens: int  # non-ignored tokens the means are over


class FeatureStatsAccumulator(ReasonScoreAccumulator):
  """ReasonScore's accumulator plus a per-feature count of firing (non-ignored) tokens, in the same step.

  Construct it once and pass it to `model_stats` for each model: the step compiles once. The step re-states
  `encode` next to the parent's; XLA merges the two (common subexpressions), so each token is encoded once.
  """

  def __init__(self, sae: SAE, vocab, **kwargs):
    super().__init__(sae, vocab, **kwargs)
    self._state["active"] = self._place(jnp.zeros((self.d_sae,), jnp.int32), 0)
    # State shardings pinned on the way out too, so the step compiles once for every batch and model.
    shardings = jax.tree.map(lambda a: a.sharding, self._state)
    self._step = jax.jit(self._make_step(), donate_argnums=(0,), out_shardings=shardings)
    self._zero = jax.jit(lambda s: jax.tree.map(jnp.zeros_like, s), out_shardings=shardings)

  def _make_step(self):
    base, ignore = super()._make_step(), self.ignore_ids

    def step(state, sae, tokens, acts, n_rows):
      out = base({"sums": state["sums"], "counts": state["counts"]}, sae, tokens, acts, n_rows)
      features = sae.encode(acts)
      fired = (features > 0) & real_tokens(tokens, n_rows, ignore)[..., None]
      return {**out, "active": state["active"] + fired.sum(axis=(0, 1), dtype=jnp.int32)}

    return step

  def reset(self) -> None:
    """Zero sums and counts (same shardings, so the compiled step is reused) for the next model."""
    self._state = self._zero(self._state)
    self.n_tokens = 0

  def finalize_stats(self, alpha: float = PAPER_ALPHA, eps: float = EPS) -> ModelStats:
    reason = self.finalize(alpha, eps)  # raises if there were no (non-ignored) tokens
    sums, counts = self.sums_and_counts()
    active = np.asarray(pod.to_host(self._state["active"]), np.int64)
    n = int(counts[0] + counts[1])  # pos and neg split the non-ignored tokens
    mean = (sums[0].astype(np.float64) + sums[1]) / n
    return ModelStats(mean=mean.astype(np.float32), density=(active / n).astype(np.float32), reason=reason,
                      n_tokens=n)


def model_stats(site_fn, rows, acc: FeatureStatsAccumulator, *, batch_rows: int, alpha: float = PAPER_ALPHA,
                eps: float = EPS, progress=None) -> ModelStats:
  """Statistics of token `rows` [n, L] through `site_fn(tokens) -> [B, L, d_in]` (make_site_fn), one pass.

  `acc` is reset first, so one accumulator serves both models. `progress(rows_done, n_rows)` after each batch.
  """
  rows = np.asarray(rows) if not hasattr(rows, "shape") else rows
  if len(rows) == 0:
    raise UserError("model diffing got no tokens: the corpus is empty")
  check_batches(batch_rows, acc.mesh)  # up front, not after a model's worth of batches
  acc.reset()
  feed_rows(acc, site_fn, rows, batch_rows, progress)
  return acc.finalize_stats(alpha, eps)


# ---- checks ----


def check_pair(cfg_a, cfg_b, sae: SAE, layer: int) -> None:
  """Both models (ModelConfig) have one width, the SAE's d_in, and the hooked layer."""
  if cfg_a.hidden_size != cfg_b.hidden_size:
    raise UserError(f"model widths differ: A hidden_size {cfg_a.hidden_size}, B {cfg_b.hidden_size}; "
                    "diffing needs one SAE on both residual streams")
  sae.check_width(cfg_a.hidden_size)
  for name, cfg in (("A", cfg_a), ("B", cfg_b)):
    if not 0 <= layer < cfg.num_layers:
      raise UserError(f"layer {layer} is out of range for model {name}: it has layers 0..{cfg.num_layers - 1}")


def check_batches(batch_rows: int, mesh=None) -> None:
  """A batch splits over the mesh's data shards (a short last batch is padded to `batch_rows`)."""
  if batch_rows < 1:
    raise UserError(f"batch_rows must be positive, got {batch_rows}")
  if mesh is not None:
    shd.check_batch_splits(batch_rows, mesh, f"a batch (batch_rows {batch_rows})")


def check_rows_fit(rows, cfg, name: str) -> None:
  """Token ids inside the model's vocabulary (an embedding lookup would clamp them silently)."""
  top = int(np.max(rows)) if np.size(rows) else -1
  if top >= cfg.vocab_size:
    raise UserError(f"token id {top} is outside model {name}'s vocabulary of {cfg.vocab_size}: "
                    "use a tokenizer both models share (--tokenizer)")


# ---- the diff ----


def _ratio(b, a, eps):
  return ((b.astype(np.float64) + eps) / (a.astype(np.float64) + eps)).astype(np.float32)


def _order(scores):
  """Descending, ties by lower id (as ReasonScores.top_k)."""
  return np.argsort(-np.asarray(scores), kind="stable")


@dataclasses.dataclass(frozen=True)
class ModelDiff:
  """Per-feature statistics of A and B and their ratios (B + eps) / (A + eps)."""

  a: ModelStats
  b: ModelStats
  ratio_eps: float = RATIO_EPS
  b_only_density: float = B_ONLY_DENSITY

  def __post_init__(self):
    if self.a.mean.shape != self.b.mean.shape:
      raise UserError(f"A has {self.a.mean.shape[0]} features, B {self.b.mean.shape[0]}: not the same SAE")
    if not self.ratio_eps > 0:
      raise UserError(f"ratio eps must be positive, got {self.ratio_eps}")
    if not 0 <= self.b_only_density <= 1:
      raise UserError(f"b_only_density is a fraction of tokens in [0, 1], got {self.b_only_density}")

  @property
  def mean_ratio(self):
    return _ratio(self.b.mean, self.a.mean, self.ratio_eps)

  @property
  def density_ratio(self):
    return _ratio(self.b.density, self.a.density, self.ratio_eps)

  @property
  def mean_log2_ratio(self):
    return np.log2(self.mean_ratio)

  @property
  def density_log2_ratio(self):
    return np.log2(self.density_ratio)

  @property
  def b_only(self):
    """[d_sae] bool: (almost) never fires in A."""
    return self.a.density < self.b_only_density

  def arrays(self) -> dict[str, np.ndarray]:
    return {"mean_a": self.a.mean, "mean_b": self.b.mean, "density_a": self.a.density, "density_b": self.b.density,
            "score_a": self.a.reason.scores, "score_b": self.b.reason.scores, "mean_ratio": self.mean_ratio,
            "mean_log2_ratio": self.mean_log2_ratio, "density_ratio": self.density_ratio,
            "density_log2_ratio": self.density_log2_ratio}

  def top(self, k: int) -> list[dict]:
    """B's k best features by ReasonScore, each with its A statistics, ratios and rank in A (0 = best)."""
    order_b = _order(self.b.reason.scores)[:k]
    rank_a = np.empty(len(self.a.mean), np.int64)
    rank_a[_order(self.a.reason.scores)] = np.arange(len(rank_a))
    arrays, b_only = self.arrays(), self.b_only
    out = []
    for rank, j in enumerate(order_b):
      item = {"feature": int(j), "rank_b": rank, "rank_a": int(rank_a[j]), "b_only": bool(b_only[j])}
      item.update({name: float(arrays[name][j]) for name in ARRAYS})
      out.append(item)
    return out

  def summary(self, k: int) -> dict:
    """The headline numbers: how much of B's top-k is B-only, and the reverse (A's top-k dead in B).

    b_only_features / a_only_features count all features below the density threshold in one model only.
    """
    if k < 1:
      raise UserError(f"top_k must be positive, got {k}")
    k = min(k, len(self.a.mean))
    top_b, top_a = _order(self.b.reason.scores)[:k], _order(self.a.reason.scores)[:k]
    log2 = self.mean_log2_ratio
    return {
        "d_sae": int(len(self.a.mean)), "top_k": k, "b_only_density": self.b_only_density,
        "ratio_eps": self.ratio_eps, "n_tokens_a": self.a.n_tokens, "n_tokens_b": self.b.n_tokens,
        "b_only_in_top_k": int(self.b_only[top_b].sum()),
        "b_only_fraction_of_top_k": float(self.b_only[top_b].mean()),
        "a_only_fraction_of_a_top_k": float((self.b.density[top_a] < self.b_only_density).mean()),
        "top_k_overlap": float(len(np.intersect1d(top_a, top_b)) / k),
        "b_only_features": int((self.b_only & (self.b.density >= self.b_only_density)).sum()),  # alive in B
        "a_only_features": int(((self.b.density < self.b_only_density) & ~self.b_only).sum()),
        "dead_a": int((self.a.density == 0).sum()), "dead_b": int((self.b.density == 0).sum()),
        "median_mean_log2_ratio_top_k": float(np.median(log2[top_b])),
        "median_mean_log2_ratio_all": float(np.median(log2)),
        "score_correlation": _pearson(self.a.reason.scores, self.b.reason.scores),
    }

  def save(self, out_dir: str, top_k: int, extra: dict | None = None) -> str:
    """<array>.npy, ReasonScores of A and B in a/ and b/, diff.png, then diff.json (summary + top list)."""
    os.makedirs(out_dir, exist_ok=True)
    for name, array in self.arrays().items():
      sio.write_npy(os.path.join(out_dir, f"{name}.npy"), array)
    self.a.reason.save(os.path.join(out_dir, "a"))
    self.b.reason.save(os.path.join(out_dir, "b"))
    top = self.top(top_k)
    png = density_scatter_png(self, [t["feature"] for t in top])
    sio.write_bytes(os.path.join(out_dir, PLOT_FILE), png)
    meta = {**(extra or {}), "summary": self.summary(top_k), "arrays": list(ARRAYS), "reasonscores": ["a", "b"],
            "plot": f"{PLOT_FILE}: log10 density A (x) vs B (y), top-k of B in red, y = x grey, "
                    "b_only_density dashed; never-firing features sit on the lower/left edge",
            "top": top}
    sio.write_json(os.path.join(out_dir, META_FILE), meta, indent=1, default=float)
    return out_dir


def _pearson(x, y) -> float | None:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.std() == 0 or y.std() == 0:
    return None
  return float(np.corrcoef(x, y)[0, 1])


def diff_stats(a: ModelStats, b: ModelStats, *, ratio_eps: float = RATIO_EPS,
               b_only_density: float = B_ONLY_DENSITY) -> ModelDiff:
  return ModelDiff(a, b, ratio_eps, b_only_density)


# ---- the plot, without matplotlib: numpy raster + a PNG writer ----

_GLYPHS = {  # 3x5 pixel font for the tick labels and axis names
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", "-": "000000111000000", "A": "010101111101101",
    "B": "110101110101110",
}
_INK, _GRID, _DIAG, _POINT, _TOP, _THRESH = (60, 60, 60), (236, 236, 236), (170, 170, 170), (40, 80, 150), \
    (215, 30, 30), (230, 140, 20)


def png_bytes(rgb) -> bytes:
  """An 8-bit RGB PNG of `rgb` [H, W, 3] uint8 (filter 0 on every row)."""
  rgb = np.ascontiguousarray(rgb, np.uint8)
  if rgb.ndim != 3 or rgb.shape[2] != 3:
    raise UserError(f"png_bytes needs an [H, W, 3] image, got shape {rgb.shape}")
  h, w, _ = rgb.shape
  raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _text(img, x, y, s, scale=2, color=_INK):
  """Draws `s` with its top-left corner at (x, y)."""
  for c in s:
    bits = np.array([int(b) for b in _GLYPHS[c]], bool).reshape(5, 3)
    block = np.kron(bits, np.ones((scale, scale), bool))
    h, w = block.shape
    img[y:y + h, x:x + w][block] = color
    x += 4 * scale


def density_scatter_rgb(x_density, y_density, highlight=(), n_tokens: int = 1, threshold: float | None = None,
                        size: int = 360):
  """[size, size, 3] uint8: log10 density x vs y per feature, `highlight` ids in red on top.

  Zero densities are drawn at the lower axis bound, just below 1 / n_tokens (the smallest non-zero density).
  """
  x = np.asarray(x_density, np.float64)
  y = np.asarray(y_density, np.float64)
  lo = int(np.floor(np.log10(0.5 / max(int(n_tokens), 1))))
  left, right, top, bottom = 40, 12, 12, 36
  w, h = size - left - right, size - top - bottom
  img = np.full((size, size, 3), 255, np.uint8)

  def to_px(d, n):  # decade lo .. 0 -> pixel 0 .. n - 1
    t = (np.log10(np.maximum(d, 10.0**lo)) - lo) / -lo
    return np.clip(np.round(t * (n - 1)).astype(np.int64), 0, n - 1)

  step = max(1, -lo // 8)  # at most ~9 labelled decades
  for e in range(lo, 1):
    p = int(round((e - lo) / -lo * (w - 1)))
    q = int(round((e - lo) / -lo * (h - 1)))
    img[top:top + h, left + p] = _GRID
    img[top + h - 1 - q, left:left + w] = _GRID
    img[top + h:top + h + 4, left + p] = _INK
    img[top + h - 1 - q, left - 4:left] = _INK
    if (e - lo) % step == 0 or e == 0:
      label = str(e)
      _text(img, left + p - (len(label) * 8 - 2) // 2, top + h + 6, label)
      _text(img, left - 6 - len(label) * 8, top + h - 1 - q - 5, label)
  diag = np.arange(min(w, h))
  img[top + h - 1 - np.round(diag * (h - 1) / (w - 1)).astype(int), left + diag] = _DIAG
  if threshold is not None and 10.0**lo < threshold < 1:
    p = int(to_px(np.array([threshold]), w)[0])
    rows = np.arange(top, top + h)
    img[rows[(rows // 4) % 2 == 0], left + p] = _THRESH

  px, py = to_px(x, w), to_px(y, h)
  counts = np.zeros((h, w), np.int64)
  for dy in (-1, 0, 1):  # 3x3 dots
    for dx in (-1, 0, 1):
      np.add.at(counts, (np.clip(h - 1 - py + dy, 0, h - 1), np.clip(px + dx, 0, w - 1)), 1)
  hit = counts > 0
  shade = 0.5 + 0.5 * np.log1p(counts[hit]) / np.log1p(counts.max()) if hit.any() else 0
  plot = img[top:top + h, left:left + w]
  plot[hit] = np.round(255 - shade[:, None] * (255 - np.array(_POINT))).astype(np.uint8)
  for j in highlight:
    cy, cx = h - 1 - py[j], px[j]
    plot[max(cy - 2, 0):cy + 3, max(cx - 2, 0):cx + 3] = _TOP

  img[top:top + h, [left - 1, left + w]] = _INK  # frame
  img[[top - 1, top + h], left - 1:left + w + 1] = _INK
  _text(img, left + w // 2 - 3, size - 12, "A")
  _text(img, 4, top + h // 2 - 5, "B")
  return img


def density_scatter_png(diff: ModelDiff, highlight=()) -> bytes:
  return png_bytes(density_scatter_rgb(diff.a.density, diff.b.density, highlight,
                                       max(diff.a.n_tokens, diff.b.n_tokens), diff.b_only_density))
