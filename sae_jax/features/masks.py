"""ReasonScore token masks: where the reasoning words are, widened to a window, minus ignored ids.

One implementation for the host (numpy in, numpy out) and for jitted code (jnp or traced arrays in), so the
streamed accumulator and the dense reference build exactly the same masks. The rule is
tests/fixtures/README.md section 2.3, which the reference's `compute_score.py` produced.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from sae_jax import paper
from sae_jax.errors import UserError
from sae_jax.features.vocab import Vocabulary

MODES = ("reference", "intended")
PAPER_WINDOW, PAPER_IGNORE_IDS = paper.WINDOW, paper.IGNORE_IDS


class ReasonMasks(NamedTuple):
  groups: object  # [n_groups, B, L] bool: the widened matches of each word's strings
  pos: object  # [B, L] bool: any word
  neg: object  # [B, L] bool: no word


def check_mask_settings(window, mode: str) -> tuple[int, int]:
  if mode not in MODES:
    raise UserError(f"unknown window mode {mode!r}: expected one of {MODES}")
  try:
    left, right = (int(w) for w in window)
  except (TypeError, ValueError) as e:
    raise UserError(f"window must be (left, right) token counts, got {window!r}") from e
  if left < 0 or right < 0:
    raise UserError(f"window must be non-negative, got {window!r}")
  return left, right


def reason_masks(tokens, vocab: Vocabulary, window=PAPER_WINDOW, mode: str = "reference",
                 ignore_ids=PAPER_IGNORE_IDS) -> ReasonMasks:
  """Masks of a token batch [B, L]; matching and widening stay within a row.

  mode "reference" reproduces the reference's widening, which counts a clamped window start shared by two
  matched positions once (its scatter `delta[rows, starts] += 1` does not accumulate repeats); "intended"
  is the plain union of the windows. They differ only where positions 0..left hold two matches of one string.
  """
  left, right = check_mask_settings(window, mode)
  xp = jnp if isinstance(tokens, jnp.ndarray) else np
  tokens = xp.asarray(tokens)
  if tokens.ndim != 2:
    raise UserError(f"tokens must be [batch, length], got shape {tuple(tokens.shape)}")
  ids, lens = vocab.padded_ids()
  ids = ids.astype(tokens.dtype)
  tok = tokens[:, None, :]  # [B, 1, L] against every string at once

  # hit[b, s, p]: string s starts at p. Past the row end the fill -1 never equals an id (ids are >= 0).
  hit = xp.ones(tokens.shape[:1] + (len(lens),) + tokens.shape[1:], bool)
  for k in range(ids.shape[1]):
    hit = hit & ((lens[:, None] <= k) | (_shift(xp, tok, k, -1) == ids[:, k, None]))
  marked = hit
  for k in range(1, ids.shape[1]):
    marked = marked | ((lens[:, None] > k) & _shift(xp, hit, -k, False))

  widened = _widen(xp, marked, left, right, mode) if (left, right) != (0, 0) else marked
  members = [np.flatnonzero(vocab.string_groups == g) for g in range(len(vocab.group_names))]
  groups = xp.stack([widened[:, m, :].any(axis=1) for m in members])
  ignored = xp.isin(tokens, xp.asarray(np.asarray(ignore_ids, np.int64).astype(tokens.dtype)))
  any_word = groups.any(axis=0)
  return ReasonMasks(groups & ~ignored, any_word & ~ignored, ~any_word & ~ignored)


def _shift(xp, a, k: int, fill):
  """out[..., i] = a[..., i + k], `fill` where i + k falls outside the last axis."""
  n = a.shape[-1]
  if k == 0:
    return a
  pad = xp.full(a.shape[:-1] + (min(abs(k), n),), fill, a.dtype)
  if k > 0:
    return xp.concatenate([a[..., k:], pad], axis=-1)
  return xp.concatenate([pad, a[..., :n + k]], axis=-1) if -k < n else pad


def _widen(xp, marked, left: int, right: int, mode: str):
  """Window [p - left, p + right] (clamped to the row) around every marked p, per string, as a coverage count.

  coverage(i) = #starts <= i - #ends <= i, with ends exclusive. Starts are distinct except the ones clamped
  to 0 (p <= left); the reference counts those once. Ends clamped to L never affect the row.
  """
  c = marked.astype(xp.int32)
  starts = _shift(xp, c, left, 0)  # a window starting at j > 0 belongs to p = j + left
  clamped = c[..., :left + 1].sum(axis=-1, keepdims=True)
  if mode == "reference":
    clamped = xp.minimum(clamped, 1)
  starts = xp.concatenate([clamped, starts[..., 1:]], axis=-1)
  ends = _shift(xp, c, -(right + 1), 0)  # p's window ends before p + right + 1
  return (xp.cumsum(starts, axis=-1) - xp.cumsum(ends, axis=-1)) > 0
