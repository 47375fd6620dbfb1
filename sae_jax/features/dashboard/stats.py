"""A dashboard's statistics of each selected feature, streamed in one pass over the rows.

The reference ran SAEDashboard on the first 10,000 (unshuffled) rows of the extraction set. Per selected
feature, on the W_dec-norm-folded activations (the units steering's max activation is in), we collect in one
pass over the rows:

* the top group: the `n_top` (20) highest activations, ties to the earlier (row, position);
* quantile groups: (0, max] cut into `n_quantiles` (10) equal intervals, `quantile_group_size` (5) examples
  drawn from each;
* `context` (5, 5) tokens either side of every example, each with the feature's activation and the
  reasoning word it belongs to (if any), and a longer `expanded_context` (24, 12) that the pages open on click;
* a 50-bin histogram of the positive activations, density (fraction of tokens > 0), max activation;
* logit lens: unit(W_dec_i) @ W_U, top / bottom 10 tokens, without the final norm (the reference) and with
  the final norm's weight folded in;
* the feature's ReasonScore and per-word means, when scores are given;
* whether it is dense (density > `dense_threshold`), its nearest latents by decoder cosine and by co-activation
  (Jaccard over these tokens), and the SAE's own numbers on these tokens (L0, dead and dense fractions, explained
  variance): `summary.py`, in the same jitted pass.

Streaming, in memory that does not grow with the corpus (nothing per token is kept):

* Histograms count on a fine linear grid of `grid_bins` bins (k w, (k+1) w], w = 2^e / grid_bins, where
  e = ceil(log2(running max)). When the max passes 2^e the grid doubles and adjacent bins merge (the grids
  nest), so counts are exact and the final grid depends only on the final max, never on batching. The
  `n_bins` shown have their edges on that grid, at the grid point nearest k * max / n_bins (widths equal to
  within 2 n_bins / grid_bins); the edges are part of the output.
* Quantile examples: every token has a pseudo-random key `sample_keys(seed, feature, row, position)`. Per
  feature and cell of a coarser grid (`sample_cells` cells over (0, 2^e], nesting like the bins) the
  `quantile_group_size` smallest keys are kept. Interval edges are cell edges (nearest k * max / n_quantiles),
  so an interval's examples, the smallest keys of the cells inside it, are exactly the smallest keys among
  all its tokens: a uniform sample without replacement, deterministic and independent of batching.
* Contexts are cut from the batch when an example is kept, so no row is read twice.

Contexts stay inside a row (rows are the model's sequences); examples may sit at a row's edge, where the
context is shorter. Token ids in `ignore_ids` (none by default, as SAEDashboard) count as not firing and are
left out of the density's denominator.
"""

import dataclasses
import math

import numpy as np

from sae_jax import pod
from sae_jax.errors import UserError
from sae_jax.features.dashboard.summary import (SummaryAccumulator, coactivation_neighbours, decoder_cosine_baseline,
                                                decoder_neighbours)
from sae_jax.features.masks import reason_masks
from sae_jax.features.vocab import Vocabulary
from sae_jax.models import sharding as shd
from sae_jax.sae import SAE

_NO_EXP = -(2**40)  # exponent of a feature that has not fired yet
_KEY_MAX = np.iinfo(np.uint64).max


@dataclasses.dataclass(frozen=True)
class DashboardConfig:
  """What a dashboard shows (config section `dashboard`); defaults are SAEDashboard's."""

  top_k: int = 100  # with ReasonScore results and no feature ids: how many of the best features
  ignore_ids: tuple[int, ...] = ()  # tokens that never count as firing (none, as SAEDashboard; e.g. BOS, EOS)
  n_top: int = 20  # top-activating group
  n_quantiles: int = 10  # equal intervals of (0, max]
  quantile_group_size: int = 5  # examples per interval
  context: tuple[int, int] = (5, 5)  # tokens left and right of an example
  expanded_context: tuple[int, int] = (24, 12)  # the longer context an example opens to on click (at least context)
  dense_threshold: float = 0.1  # density above which a feature is flagged dense (trainer.dense_threshold's 10%)
  n_neighbours: int = 5  # nearest latents shown per feature, by decoder cosine and by co-activation
  n_bins: int = 50  # activation histogram
  n_logits: int = 10  # logit-lens rows, top and bottom
  grid_bins: int = 4096  # fine histogram grid over (0, 2^e]
  sample_cells: int = 512  # sampling cells over (0, 2^e]
  seed: int = 0  # of the example keys

  def __post_init__(self):
    object.__setattr__(self, "context", tuple(int(c) for c in self.context))
    object.__setattr__(self, "expanded_context", tuple(int(c) for c in self.expanded_context))
    object.__setattr__(self, "ignore_ids", tuple(int(i) for i in self.ignore_ids))
    for name in ("top_k", "n_top", "n_quantiles", "quantile_group_size", "n_bins", "n_logits", "n_neighbours"):
      if int(getattr(self, name)) <= 0:
        raise UserError(f"dashboard {name} must be positive, got {getattr(self, name)}")
    if len(self.context) != 2 or min(self.context) < 0:
      raise UserError(f"dashboard context must be (left, right) >= 0, got {self.context}")
    if len(self.expanded_context) != 2 or min(self.expanded_context) < 0:
      raise UserError(f"dashboard expanded_context must be (left, right) >= 0, got {self.expanded_context}")
    object.__setattr__(self, "expanded_context", tuple(max(e, c) for e, c in zip(self.expanded_context, self.context)))
    if not 0 <= self.dense_threshold <= 1:
      raise UserError(f"dashboard dense_threshold must be in [0, 1], got {self.dense_threshold}")
    for name, least in (("grid_bins", 4 * self.n_bins), ("sample_cells", 4 * self.n_quantiles)):
      n = getattr(self, name)
      if n < least or n & (n - 1):
        raise UserError(f"dashboard {name} must be a power of two >= {least}, got {n}")
    if self.sample_cells > self.grid_bins:
      raise UserError(f"dashboard sample_cells {self.sample_cells} > grid_bins {self.grid_bins}")


# ---- deterministic example keys ----


def _mix(x):
  """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, features, rows, positions) -> np.ndarray:
  """uint64 key of each (feature id, row, position): the quantile samples keep the smallest keys."""
  f, r, p = (np.atleast_1d(np.asarray(a)).astype(np.uint64) for a in (features, rows, positions))
  x = _mix(np.full(np.broadcast(f, r, p).shape, seed, np.uint64) ^ np.uint64(0x9E3779B97F4A7C15))
  return _mix(_mix(_mix(x ^ f) ^ r) ^ p)


# ---- grid arithmetic (exact: scaling by powers of two) ----


def _ceil_log2(v: np.ndarray) -> np.ndarray:
  """Smallest e with v <= 2^e, for v > 0."""
  mant, ex = np.frexp(np.asarray(v, np.float64))
  return (ex - (mant == 0.5)).astype(np.int64)


def _grid_index(values, exps, n: int) -> np.ndarray:
  """Bin k of (k w, (k+1) w], w = 2^exp / n, for values in (0, 2^exp]."""
  scaled = np.ldexp(np.asarray(values, np.float64), int(math.log2(n)) - np.asarray(exps, np.int64))
  return np.clip(np.ceil(scaled).astype(np.int64) - 1, 0, n - 1)


def _snapped_edges(max_value: float, exp: int, n_grid: int, n_out: int) -> np.ndarray:
  """n_out + 1 edges on the grid (multiples of 2^exp / n_grid), nearest k * max / n_out; the last covers max."""
  units = max_value * n_grid / 2.0**exp  # max in grid units
  k = np.rint(np.arange(n_out + 1) * units / n_out)
  k[0], k[-1] = 0, math.ceil(units)
  return np.ldexp(k, exp - int(math.log2(n_grid)))


# ---- example tables: parallel arrays, one entry per kept example ----

_TABLE_COLS = ("slot", "value", "row", "pos", "key", "ctx_tok", "ctx_act", "ctx_word")


def _empty_table(width: int) -> dict:
  return {"slot": np.zeros(0, np.int64), "value": np.zeros(0, np.float32), "row": np.zeros(0, np.int64),
          "pos": np.zeros(0, np.int64), "key": np.zeros(0, np.uint64),
          "ctx_tok": np.zeros((0, width), np.int32), "ctx_act": np.zeros((0, width), np.float32),
          "ctx_word": np.zeros((0, width), np.int8)}


def _concat(a: dict, b: dict) -> dict:
  return {c: np.concatenate([a[c], b[c]]) for c in _TABLE_COLS}


def _take(t: dict, idx) -> dict:
  return {c: t[c][idx] for c in _TABLE_COLS}


def _rank_in_group(group_sorted: np.ndarray) -> np.ndarray:
  """0, 1, 2 ... within each run of equal values of a sorted array."""
  n = len(group_sorted)
  if n == 0:
    return np.zeros(0, np.int64)
  starts = np.r_[True, group_sorted[1:] != group_sorted[:-1]]
  idx = np.arange(n)
  return idx - np.maximum.accumulate(np.where(starts, idx, 0))


class DashboardAccumulator:
  """One pass over token rows for a set of features: `update(tokens, acts, row_offset)`, then `finalize()`.

  `sae` is an `SAE` as trained or loaded, in any units, read `folded()`. Each batch encodes every latent, for the
  SAE summary and co-activations (`summary.py`), and keeps the selected features' activations. `vocab` marks
  reasoning words in the contexts. With a `mesh`, latents are split on its `model` axis.
  """

  def __init__(self, sae: SAE, features, *, vocab: Vocabulary | None = None,
               config: DashboardConfig = DashboardConfig(), ignore_ids=(), matmul_precision: str = "highest",
               mesh=None):
    self.sae = sae
    self.features = check_features(features, sae.d_sae)
    self.config, self.vocab = config, vocab
    self.ignore_ids = np.asarray(sorted({int(i) for i in ignore_ids}), np.int64)
    self.matmul_precision = matmul_precision
    self._summary = SummaryAccumulator(sae, self.features, ignore_ids=self.ignore_ids.tolist(), mesh=mesh,
                                       matmul_precision=matmul_precision)
    self._observed = False
    n = len(self.features)
    self.n_tokens = 0
    self.n_active = np.zeros(n, np.int64)
    self.act_sum = np.zeros(n, np.float64)
    self.max = np.zeros(n, np.float64)
    self.exp = np.full(n, _NO_EXP, np.int64)
    self.counts = np.zeros((n, config.grid_bins), np.int64)
    width = sum(config.expanded_context) + 1
    self._top = _empty_table(width)
    self._samples = _empty_table(width)
    self._grew = False

  # -- per batch --

  def update(self, tokens, acts, row_offset: int, n_rows: int | None = None) -> None:
    """tokens [B, T] ids, acts [B, T, d_in] raw site activations of rows row_offset.. (first `n_rows` real)."""
    shape = tuple(np.shape(tokens))
    acts_shape = tuple(np.shape(acts))
    if len(shape) != 2 or len(acts_shape) != 3 or acts_shape[:2] != shape:
      raise UserError(f"activations {acts_shape} do not match tokens {shape}: expected [B, T, d_in]")
    self.sae.check_width(acts_shape[2], "activation width")
    self.update_features(pod.to_host(tokens), self.observe(tokens, acts, n_rows), row_offset, n_rows)

  def observe(self, tokens, acts, n_rows: int | None = None):
    """The device side of `update`: adds the batch to the SAE summary and returns the selected features' folded
    activations [B, T, n_features] (dispatched, not awaited)."""
    self._observed = True
    return self._summary.update(tokens, acts, len(tokens) if n_rows is None else n_rows)

  def update_features(self, tokens, feats, row_offset: int, n_rows: int | None = None) -> None:
    """The host side of `update`: feats [B, T, n_features] are the folded activations of the features."""
    tokens = np.asarray(tokens, np.int64)
    feats = np.asarray(pod.to_host(feats), np.float32)
    if n_rows is not None:  # the rest is padding
      tokens, feats = tokens[:n_rows], feats[:n_rows]
    if feats.ndim != 3 or feats.shape[:2] != tokens.shape or feats.shape[2] != len(self.features):
      raise UserError(f"feature activations {feats.shape} do not match tokens {tokens.shape} and "
                      f"{len(self.features)} features")
    valid = ~np.isin(tokens, self.ignore_ids)
    feats = np.where(valid[..., None] & (feats > 0), feats, np.float32(0))
    self.n_tokens += int(valid.sum())
    b, p, s = np.nonzero(feats)
    if len(b) == 0:
      return
    v = feats[b, p, s]
    self.n_active += np.bincount(s, minlength=len(self.features))
    self.act_sum += np.bincount(s, weights=v.astype(np.float64), minlength=len(self.features))
    batch_max = feats.max(axis=(0, 1)).astype(np.float64)
    self.max = np.maximum(self.max, batch_max)
    self._grow_grids(np.where(batch_max > 0, _ceil_log2(np.where(batch_max > 0, batch_max, 1.0)), _NO_EXP))
    cfg = self.config
    idx = _grid_index(v, self.exp[s], cfg.grid_bins)
    self.counts += np.bincount(s * cfg.grid_bins + idx, minlength=self.counts.size).reshape(self.counts.shape)
    batch = _BatchView(tokens, feats, self._word_index(tokens), cfg.expanded_context, row_offset)
    self._update_top(batch, b, p, s, v, feats)
    self._update_samples(batch, b, p, s, v)

  def _grow_grids(self, new_exp: np.ndarray) -> None:
    """Raise each feature's grid to 2^new_exp where that is larger, merging 2^d adjacent bins."""
    grid = self.config.grid_bins
    self._grew = bool((new_exp > self.exp).any())
    for j in np.flatnonzero(new_exp > self.exp):
      if self.exp[j] != _NO_EXP:
        d = min(int(new_exp[j] - self.exp[j]), int(math.log2(grid)))
        merged = self.counts[j].reshape(grid >> d, 1 << d).sum(axis=1)
        self.counts[j] = 0
        self.counts[j, :len(merged)] = merged
      self.exp[j] = new_exp[j]

  def _word_index(self, tokens) -> np.ndarray:
    """[B, T] int8: the reasoning word (group) a token is part of, -1 for none."""
    if self.vocab is None:
      return np.full(tokens.shape, -1, np.int8)
    groups = reason_masks(tokens, self.vocab, window=(0, 0), mode="intended", ignore_ids=()).groups
    return np.where(groups.any(axis=0), groups.argmax(axis=0), -1).astype(np.int8)

  def _update_top(self, batch, b, p, s, v, feats) -> None:
    """Keep the n_top largest (value desc, row, position) per feature."""
    k = self.config.n_top
    flat = feats.reshape(-1, feats.shape[2])
    kth = np.partition(flat, -k, axis=0)[-k] if flat.shape[0] >= k else np.zeros(flat.shape[1], np.float32)
    keep = v >= kth[s]  # the batch's candidates, ties included
    new = batch.table(b[keep], p[keep], s[keep], v[keep], np.zeros(int(keep.sum()), np.uint64))
    t = _concat(self._top, new)
    order = np.lexsort((t["pos"], t["row"], -t["value"], t["slot"]))
    t = _take(t, order)
    self._top = _take(t, _rank_in_group(t["slot"]) < k)

  def _update_samples(self, batch, b, p, s, v) -> None:
    """Keep the quantile_group_size smallest keys per feature and sampling cell."""
    cfg = self.config
    group_size, cells = cfg.quantile_group_size, cfg.sample_cells
    stored = self._trim_samples(self._samples) if self._grew else self._samples  # cells merged: re-trim
    cell = _grid_index(stored["value"], self.exp[stored["slot"]], cells)
    threshold = np.full((len(self.features), cells), _KEY_MAX, np.uint64)
    full = _rank_in_group(stored["slot"] * cells + cell) == group_size - 1  # sorted by (slot, cell, key)
    threshold[stored["slot"][full], cell[full]] = stored["key"][full]
    keys = sample_keys(cfg.seed, self.features[s], batch.row_offset + b, p)
    keep = keys < threshold[s, _grid_index(v, self.exp[s], cells)]
    if not keep.any():
      self._samples = stored
      return
    new = batch.table(b[keep], p[keep], s[keep], v[keep], keys[keep])
    self._samples = self._trim_samples(_concat(stored, new))

  def _trim_samples(self, t: dict) -> dict:
    cells = self.config.sample_cells
    group = t["slot"] * cells + _grid_index(t["value"], self.exp[t["slot"]], cells)
    t = _take(t, np.lexsort((t["key"], group)))
    return _take(t, _rank_in_group(np.sort(group)) < self.config.quantile_group_size)

  # -- results --

  def finalize(self) -> list[dict]:
    """Per feature, in the order given: counts, max, histogram, top and quantile groups (token ids only), the
    dense flag and the nearest latents (by co-activation only after `update` / `observe`)."""
    stats = [self._feature_stats(j) for j in range(len(self.features))]
    k = self.config.n_neighbours
    decoder = decoder_neighbours(self.sae.raw().params["W_dec"], self.features, k)
    coact = [None] * len(stats)
    if self._observed:
      fired, counts = self._summary.counts()
      coact = coactivation_neighbours(self.features, fired, counts, k)
      density = fired / max(self.n_tokens, 1)
    for st, dec, co in zip(stats, decoder, coact):
      st["dense"] = st["density"] > self.config.dense_threshold
      st["neighbours"] = {"decoder": dec}
      if co is not None:
        st["neighbours"]["coactivation"] = co
        for n in dec + co:
          n["density"] = float(density[n["feature"]])
    return stats

  def summary(self) -> dict | None:
    """The SAE on these tokens (`SummaryAccumulator.finalize`) and the mean decoder cosines of the shown features
    against random pairs; None before any `update` / `observe`."""
    if not self._observed:
      return None
    return {**self._summary.finalize(self.config.dense_threshold),
            "decoder_cosine": decoder_cosine_baseline(self.sae.raw().params["W_dec"], self.features, self.config.seed)}

  def _feature_stats(self, j: int) -> dict:
    cfg = self.config
    out = {"feature": int(self.features[j]), "n_tokens": int(self.n_tokens), "n_active": int(self.n_active[j]),
           "density": float(self.n_active[j] / self.n_tokens) if self.n_tokens else 0.0,
           "max_activation": float(self.max[j]),
           "mean_active": float(self.act_sum[j] / self.n_active[j]) if self.n_active[j] else 0.0,
           "histogram": {"edges": [], "counts": []}, "top": [], "quantiles": []}
    if self.n_active[j] == 0:
      return out
    exp = int(self.exp[j])
    edges = _snapped_edges(self.max[j], exp, cfg.grid_bins, cfg.n_bins)
    out["histogram"] = {"edges": edges.tolist(), "counts": self._interval_counts(j, edges).tolist()}
    top = _take(self._top, self._top["slot"] == j)
    out["top"] = [self._example(top, i) for i in range(len(top["slot"]))]
    q_edges = _snapped_edges(self.max[j], exp, cfg.sample_cells, cfg.n_quantiles)
    q_counts = self._interval_counts(j, q_edges)
    samples = _take(self._samples, self._samples["slot"] == j)
    interval = np.searchsorted(q_edges, samples["value"].astype(np.float64), side="left") - 1
    for i in range(cfg.n_quantiles):
      mine = _take(samples, np.flatnonzero(interval == i))
      mine = _take(mine, np.lexsort((mine["key"],))[:cfg.quantile_group_size])
      mine = _take(mine, np.lexsort((mine["pos"], mine["row"], -mine["value"])))
      out["quantiles"].append({"lo": float(q_edges[i]), "hi": float(q_edges[i + 1]), "count": int(q_counts[i]),
                               "examples": [self._example(mine, e) for e in range(len(mine["slot"]))]})
    return out

  def _interval_counts(self, j: int, edges: np.ndarray) -> np.ndarray:
    """Tokens in each (edges[i], edges[i+1]] (edges on the fine grid, so the sums are exact)."""
    fine = np.rint(np.ldexp(edges, int(math.log2(self.config.grid_bins)) - int(self.exp[j]))).astype(np.int64)
    cum = np.r_[0, np.cumsum(self.counts[j])]
    return cum[np.minimum(fine[1:], self.config.grid_bins)] - cum[np.minimum(fine[:-1], self.config.grid_bins)]

  def _example(self, t: dict, i: int) -> dict:
    """The example with its `context` window (tokens, acts, words, center) and its `expanded` one."""
    (left, right), (big_left, _) = self.config.context, self.config.expanded_context
    short = slice(big_left - left, big_left + right + 1)
    window = {"row": int(t["row"][i]), "pos": int(t["pos"][i]), "value": float(t["value"][i]),
              **_window(t["ctx_tok"][i][short], t["ctx_act"][i][short], t["ctx_word"][i][short], left)}
    window["expanded"] = _window(t["ctx_tok"][i], t["ctx_act"][i], t["ctx_word"][i], big_left)
    return window


def _window(tok, act, word, left: int) -> dict:
  """A stored window (-1 tokens: outside the row) as lists; `center` indexes the example's token."""
  real = tok >= 0
  return {"center": int(real[:left].sum()), "tokens": tok[real].tolist(), "acts": [float(a) for a in act[real]],
          "words": word[real].tolist()}


class _BatchView:
  """A batch's tokens and activations, padded so that any context window can be cut with one gather."""

  def __init__(self, tokens, feats, words, context, row_offset):
    left, right = context
    pad = ((0, 0), (left, right))
    self.tokens = np.pad(tokens.astype(np.int32), pad, constant_values=-1)
    self.feats = np.pad(feats, pad + ((0, 0),))
    self.words = np.pad(words, pad, constant_values=-1)
    self.offsets = np.arange(left + right + 1)
    self.row_offset = int(row_offset)

  def table(self, b, p, s, v, keys) -> dict:
    cols = p[:, None] + self.offsets  # padded coordinates of positions p - left .. p + right
    rows = b[:, None]
    return {"slot": s.astype(np.int64), "value": v.astype(np.float32), "row": self.row_offset + b.astype(np.int64),
            "pos": p.astype(np.int64), "key": keys.astype(np.uint64), "ctx_tok": self.tokens[rows, cols],
            "ctx_act": self.feats[rows, cols, s[:, None]], "ctx_word": self.words[rows, cols]}


def check_features(features, d_sae: int) -> np.ndarray:
  ids = np.asarray([int(f) for f in features], np.int64)
  if ids.size == 0:
    raise UserError("no features to show: give feature ids or ReasonScore results")
  bad = ids[(ids < 0) | (ids >= d_sae)]
  if bad.size:
    raise UserError(f"feature {int(bad[0])} is out of range: the SAE has {d_sae} features")
  if len(set(ids.tolist())) != ids.size:
    raise UserError(f"feature ids repeat: {ids.tolist()}")
  return ids


def collect_feature_stats(site_fn, rows, sae: SAE, features, *, batch_rows: int, progress=None, mesh=None,
                          **accumulator_kwargs) -> list[dict]:
  """Stats of `features` over token `rows` [n, T], `site_fn(tokens [B, T]) -> acts [B, T, d_in]`.

  The last batch is padded to `batch_rows` (its padding ignored), so the site function compiles once.
  `site_fn` is `sae_jax.activations.collect.make_site_fn(model, layer, site, mesh)`; with a `mesh`, token
  batches are placed on its data axes. `progress(rows_done, n_rows)` is called after each batch.
  Returns (per-feature stats, the SAE summary): `DashboardAccumulator.finalize` and `.summary`.
  """
  if len(rows) == 0:
    raise UserError("the dashboard corpus is empty: no token rows")
  acc = DashboardAccumulator(sae, features, mesh=mesh, **accumulator_kwargs)
  pending = None  # the host work of batch i overlaps the device work of batch i + 1
  for start, n, tokens in shd.token_batches(rows, batch_rows, mesh, pad=True):
    acts = site_fn(tokens)
    sae.check_width(acts.shape[-1], "activation width")
    feats = acc.observe(tokens, acts, n)
    if pending is not None:
      _flush(acc, *pending, rows, progress)
    pending = (feats, start, n)
  if pending is not None:
    _flush(acc, *pending, rows, progress)
  return acc.finalize(), acc.summary()


def _flush(acc: DashboardAccumulator, feats, start: int, n: int, rows, progress) -> None:
  acc.update_features(np.asarray(rows[start:start + n]), feats, row_offset=start, n_rows=n)
  if progress is not None:
    progress(start + n, len(rows))
