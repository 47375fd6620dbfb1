"""pass@1 with its interval, cons@k, paired deltas and lengths, on numbers worked out by hand."""

import math

import pytest

from sae_jax.evals import metrics as M


def test_pass_at_1_averages_over_samples_then_problems():
  r = M.pass_at_1({"a": [True, True], "b": [True, False], "c": [False, False], "d": [True, True]})
  # rates 1, .5, 0, 1: mean .625, sample sd sqrt(.6875 / 3) = .478714, se = .239357
  assert r["mean"] == pytest.approx(0.625) and r["k"] == 2 and r["n"] == 4
  assert r["stderr"] == pytest.approx(0.2393568, abs=1e-6)
  # Wilson, z^2 = 3.841459, n = 4: center 1.105182 / 1.960365 = .563763, half .675027 / 1.960365 = .344336
  assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.219427, 0.908099), abs=2e-6)
  one = M.pass_at_1({"a": [True]})
  assert one["mean"] == 1.0 and one["stderr"] is None and one["k"] == 1
  # all correct: no collapse to a point (Wilson lower bound n / (n + z^2) = 4 / 7.841459)
  assert M.pass_at_1({c: [True] for c in "abcd"})["ci_low"] == pytest.approx(4 / (4 + 1.959964 ** 2), abs=1e-6)
  for n in range(1, 40):  # all wrong: the interval starts at exactly 0, never above the mean
    none = M.pass_at_1({str(i): [False] for i in range(n)})
    assert none["mean"] == 0.0 and none["ci_low"] == 0.0 and none["ci_high"] > 0
  assert M.pass_at_1({"a": [True], "b": [False, True]})["k"] == [1, 2]


def test_k1_stderr_is_lm_evals():
  """For k = 1 the stderr is lm-eval's sample stderr: sqrt(p (1 - p) / (n - 1))."""
  correct = {str(i): [i < 12] for i in range(30)}  # 12 of 30
  p = 12 / 30
  assert M.pass_at_1(correct)["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / 29))


def test_cons_at_k_majority_with_ties_to_the_first_sample():
  votes = {
    "a": [(0, "5", True), (1, "5", True)],
    "b": [(1, "7", False), (0, "5", True)],  # 1-1 tie: sample 0's answer wins
    "c": [(0, "3", False), (1, "4", False)],
    "d": [(0, " 2", True), (1, "2 ", True)],  # surrounding spaces do not split a vote
    "e": [(0, "1", False), (1, "2", True), (2, "1", False)],  # the majority is wrong
  }
  assert M.cons_at_k(votes) == pytest.approx(3 / 5)
  assert M.cons_at_k({}) is None


def test_paired_delta():
  d = M.paired_delta({"a": 0.0, "b": 1.0, "c": 0.0}, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0})
  # differences 1, 0, 1 over the shared problems: mean 2/3, sd sqrt(1/3), se 1/3
  assert d["n"] == 3 and d["mean"] == pytest.approx(2 / 3)
  assert (d["ci_low"], d["ci_high"]) == pytest.approx((2 / 3 - 1.959964 / 3, 2 / 3 + 1.959964 / 3), abs=1e-5)


def test_lengths():
  s = M.length_stats([1, 2, 4])
  assert (s["mean"], s["median"], s["ceil_mean"], s["min"], s["max"], s["n"]) == (pytest.approx(7 / 3), 2.0, 3, 1, 4, 3)
  assert M.length_stats([])["mean"] is None
  assert M.reasoning_length([5, 6, 128014, 7, 128014], 128014) == 2  # the first </think>
  assert M.reasoning_length([5, 6, 7], 128014) == 3
  assert M.reasoning_length([5, 128014], None) == 2
