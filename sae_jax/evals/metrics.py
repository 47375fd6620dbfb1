"""Accuracy and length statistics over per-sample results.

pass@1 is the mean over problems of each problem's fraction of correct samples (k samples each). Its 95%
interval is the Wilson score interval with n = the number of problems: a problem, not a sample, is the unit, so
k correlated samples do not narrow it; for k = 1 it is the usual binomial Wilson interval, for k > 1 it is
conservative (a per-problem rate varies less than a 0/1 outcome with the same mean), and unlike mean +- 1.96 se
it does not collapse to a point at 0% or 100%. `stderr` is lm-eval's (sample sd of the per-problem rates over
sqrt(n)). With 30 AIME problems the interval is wide (about +-17 points at 50%): deltas of a few points between
settings are within noise, which the report shows. A setting is compared with the baseline by the paired
difference of per-problem rates (same problems, same per-sample seeds): mean +- 1.96 sd / sqrt(n) of the
differences, narrower than the intervals of two independent means.

cons@k is majority voting over the extracted answers of a problem's k samples (ties go to the answer seen in
the lowest sample index, as `Counter.most_common` does when samples are counted in order); the vote is correct
when the samples that gave the winning answer were graded correct.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
  d = 1 + z * z / n
  center = (p + z * z / (2 * n)) / d
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
  return max(0.0, min(p, center - half)), min(1.0, max(p, center + half))  # rounding must not exclude p


def rate_ci(values: Sequence[float]) -> dict:
  """Mean of per-problem rates in [0, 1], lm-eval's stderr and the Wilson 95% interval (module doc)."""
  v = np.asarray(values, np.float64)
  n = len(v)
  if n == 0:
    return {"mean": None, "stderr": None, "ci_low": None, "ci_high": None, "n": 0}
  mean = float(v.mean())
  lo, hi = wilson(mean, n)
  se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else None
  return {"mean": mean, "stderr": se, "ci_low": lo, "ci_high": hi, "n": n}


def per_problem_rates(correct: Mapping[str, Sequence[bool]]) -> dict[str, float]:
  return {pid: float(np.mean(c)) for pid, c in correct.items() if len(c)}


def pass_at_1(correct: Mapping[str, Sequence[bool]]) -> dict:
  """pass@1 averaged over each problem's samples, with the interval described in the module doc."""
  out = rate_ci(list(per_problem_rates(correct).values()))
  ks = sorted({len(c) for c in correct.values()})
  out["k"] = ks[0] if len(ks) == 1 else ks
  return out


def cons_at_k(votes: Mapping[str, Sequence[tuple[int, str | None, bool]]]) -> float | None:
  """Majority-vote accuracy; votes[pid] = [(sample_index, extracted, correct), ...] in any order."""
  if not votes:
    return None
  wins = 0
  for samples in votes.values():
    ordered = sorted(samples)
    counts = Counter(_vote_key(a) for _, a, _ in ordered)
    top = counts.most_common(1)[0][0]
    wins += any(ok for _, a, ok in ordered if _vote_key(a) == top)
  return wins / len(votes)


def _vote_key(answer: str | None) -> str | None:
  return answer.strip() if isinstance(answer, str) else None


def paired_delta(base: Mapping[str, float], other: Mapping[str, float]) -> dict:
  """other - base over the problems both have: mean and 95% interval of the per-problem differences."""
  common = sorted(set(base) & set(other))
  d = np.asarray([other[p] - base[p] for p in common], np.float64)
  n = len(d)
  if n == 0:
    return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
  mean = float(d.mean())
  if n < 2:
    return {"mean": mean, "ci_low": None, "ci_high": None, "n": n}
  se = float(d.std(ddof=1) / math.sqrt(n))
  return {"mean": mean, "ci_low": mean - Z95 * se, "ci_high": mean + Z95 * se, "n": n}


def length_stats(values: Iterable[int]) -> dict:
  """mean, median, ceil(mean) (what the harness logged), min, max and count of token lengths."""
  v = np.asarray(list(values), np.float64)
  if len(v) == 0:
    return {"mean": None, "median": None, "ceil_mean": None, "min": None, "max": None, "n": 0}
  return {"mean": float(v.mean()), "median": float(np.median(v)), "ceil_mean": int(math.ceil(v.mean())),
          "min": int(v.min()), "max": int(v.max()), "n": int(len(v))}


def reasoning_length(token_ids: Sequence[int], think_end: int | None) -> int:
  """Generated tokens before the first `</think>`; all of them when it never comes (or has no id)."""
  if think_end is None:
    return len(token_ids)
  try:
    return list(token_ids).index(think_end)
  except ValueError:
    return len(token_ids)
