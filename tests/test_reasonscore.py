"""ReasonScore against the reference's own compute_score.py (tests/fixtures/reasonscore, README section 2).

Tolerances are the README's (2.5): masks exactly equal; mu_pos, mu_neg, group_means rtol 1e-5 atol 1e-7;
entropy and scores atol 1e-6. The fixture stores stand-in folded activations; the reference ran them through an
identity SAE (W_enc = W_dec = I, zero biases), and so does the streamed path here.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from conftest import FIXTURES
from sae_jax.errors import UserError
from sae_jax.features import (DEFAULT_REASON_STRINGS, ReasonScoreAccumulator, ReasonScores, Vocabulary,
                              load_reason_strings, reason_masks, reasonscore_corpus, reasonscore_dense)
from sae_jax.models.sharding import make_mesh
from sae_jax.sae import SAE, SAEConfig

FIXTURE_NAMES = ("paper", "alpha1_noexpand")
PAPER_GROUPS = ("alternatively", "hmm", "maybe", "wait", "perhaps", "let me", "therefore", "however", "but",
                "another")
MEANS = ("mu_pos", "mu_neg", "group_means")
ENTROPY_SCORES = ("entropy", "entropy_norm", "scores")


def _report(rule, **values):
  """Measured deviations, shown with `pytest -s`."""
  print(f"\n[{rule}] " + ", ".join(f"{k}={v:.3g}" for k, v in values.items()))


def _load(name):
  with np.load(os.path.join(FIXTURES, "reasonscore", f"{name}.npz")) as z:
    d = {k: z[k][()] if z[k].ndim == 0 else z[k] for k in z.files}
  d["name"] = name
  d["vocab"] = Vocabulary(tuple(str(s) for s in d["vocab_strings"]),
                          [ids[:n] for ids, n in zip(d["vocab_token_ids"], d["vocab_token_len"])])
  d["window"] = tuple(int(w) for w in d["expand_range"])
  return d


@pytest.fixture(scope="module", params=FIXTURE_NAMES)
def fx(request):
  return _load(request.param)


@pytest.fixture(scope="module")
def tokenizer(assets):
  return transformers.AutoTokenizer.from_pretrained(assets.llama3_tokenizer)


def _identity_sae(n):
  eye = np.eye(n, dtype=np.float32)
  return SAE({"W_enc": eye, "b_enc": np.zeros(n, np.float32), "W_dec": eye.copy(), "b_dec": np.zeros(n, np.float32)},
             SAEConfig(d_in=n, d_sae=n))


def _row_batches(fx):
  """Slices of the fixture's rows, `minibatch_size_tokens` rows each (the reference's token minibatches), covering
  every row whatever the fixture's size."""
  n, size = len(fx["tokens"]), int(fx["minibatch_size_tokens"])
  return [slice(i, i + size) for i in range(0, n, size)]


def _data_shards(fx):
  """2 data shards when every row batch of the fixture splits in two, else 1."""
  return 2 if all(len(fx["tokens"][rows]) % 2 == 0 for rows in _row_batches(fx)) else 1


def _check_stats(got: ReasonScores, fx, prefix=""):
  """The README's tolerances; returns the measured max deviations."""
  dev = {}
  for name in MEANS:
    want = fx[prefix + name]
    np.testing.assert_allclose(getattr(got, name), want, rtol=1e-5, atol=1e-7, err_msg=name)
    dev[name] = float(np.max(np.abs(getattr(got, name) - want) / np.maximum(np.abs(want), 1e-7)))
  names = ("entropy_norm", "scores") if prefix else ENTROPY_SCORES
  for name in names:
    np.testing.assert_allclose(getattr(got, name), fx[prefix + name], rtol=0, atol=1e-6, err_msg=name)
    dev[name] = float(np.max(np.abs(getattr(got, name) - fx[prefix + name])))
  return dev


# ---- vocabulary ----


def test_vocabulary_groups_in_reference_order(fx):
  vocab = Vocabulary(DEFAULT_REASON_STRINGS, [[1]] * len(DEFAULT_REASON_STRINGS))
  assert len(DEFAULT_REASON_STRINGS) == 34
  assert vocab.group_names == PAPER_GROUPS == tuple(fx["group_names"])
  assert DEFAULT_REASON_STRINGS == tuple(fx["vocab_strings"])
  np.testing.assert_array_equal(vocab.string_groups, fx["vocab_group"])


def test_llama3_tokenization(tokenizer, fx):
  vocab = Vocabulary.from_tokenizer(tokenizer)
  assert vocab.token_ids == fx["vocab"].token_ids  # the fixture's ids came from the same Llama-3 BPE
  ids = dict(zip(vocab.strings, vocab.token_ids))
  assert ids[" let me"] == (1095, 757) and ids[" Let me"] == (6914, 757)
  two_token = {s for s, t in ids.items() if len(t) == 2}
  assert two_token == {"alternatively", "hmm", "let me", " let me", "Let me", " Let me", "therefore"}
  assert all(len(t) == 1 for s, t in ids.items() if s not in two_token)


def test_vocabulary_json(tmp_path):
  path = tmp_path / "reason_tokens.json"
  path.write_text(json.dumps(["Wait", " wait", "So"]))
  strings = load_reason_strings(str(path))
  assert strings == ("Wait", " wait", "So")
  assert Vocabulary(strings, [[1], [2], [3]]).group_names == ("wait", "so")
  path.write_text('{"not": "a list"}')
  with pytest.raises(UserError, match="list of strings"):
    load_reason_strings(str(path))


# ---- masks ----


def test_masks_match_fixture(fx):
  vocab, window = fx["vocab"], fx["window"]
  host = reason_masks(fx["tokens"], vocab, window)
  jitted = jax.jit(lambda t: reason_masks(t, vocab, window))
  batches = [jitted(jnp.asarray(fx["tokens"][rows])) for rows in _row_batches(fx)]
  device = [np.concatenate([np.asarray(getattr(b, f)) for b in batches], axis=-2) for f in ("groups", "pos", "neg")]
  for got in (host, device):
    np.testing.assert_array_equal(got[0], fx["group_masks"])
    np.testing.assert_array_equal(got[1], fx["pos_mask"])
    np.testing.assert_array_equal(got[2], fx["neg_mask"])
  intended = reason_masks(fx["tokens"], vocab, window, mode="intended")
  np.testing.assert_array_equal(intended.groups, fx["intended_group_masks"])
  np.testing.assert_array_equal(intended.pos, fx["intended_pos_mask"])
  np.testing.assert_array_equal(intended.neg, fx["intended_neg_mask"])


def test_window_modes_differ_only_at_shared_clamped_starts(fx):
  """README 2.5: the modes differ only in rows where positions 0 and 1 hold two matches of one string."""
  vocab, window = fx["vocab"], fx["window"]
  ref = reason_masks(fx["tokens"], vocab, window).groups
  intended = reason_masks(fx["tokens"], vocab, window, mode="intended").groups
  diff = np.argwhere(ref != intended)
  assert len(diff) == (fx["quirk_mask_positions_differing"] if fx["name"] == "paper" else 0)
  assert not np.any(ref & ~intended)  # the quirk only ever removes coverage
  first_two = {tuple(t) for t in vocab.token_ids if len(t) == 2}
  for group, row, _ in diff:
    head = tuple(int(t) for t in fx["tokens"][row, :2])
    assert head in first_two and vocab.group_names[group] == "let me"


def test_window_quirk_by_hand():
  """" Let me" at 0-1 and 10-11: the shared clamped start loses position 3; the later window shrinks."""
  vocab = Vocabulary((" Let me",), [(6914, 757)])
  row = np.full((1, 16), 5)
  row[0, [0, 10]], row[0, [1, 11]] = 6914, 757
  ref = reason_masks(row, vocab, (1, 2), ignore_ids=()).pos[0]
  intended = reason_masks(row, vocab, (1, 2), mode="intended", ignore_ids=()).pos[0]
  assert np.flatnonzero(ref).tolist() == [0, 1, 2, 10, 11, 12]
  assert np.flatnonzero(intended).tolist() == [0, 1, 2, 3, 9, 10, 11, 12, 13]
  row[0, :3] = 5, 6914, 757  # the first match moved to 1-2: distinct starts, both modes are the plain union
  for mode in ("reference", "intended"):
    got = reason_masks(row, vocab, (1, 2), mode=mode, ignore_ids=()).pos[0]
    assert np.flatnonzero(got).tolist() == [0, 1, 2, 3, 4, 9, 10, 11, 12, 13]


# ---- scores ----


def test_fixture_dense(fx):
  got = reasonscore_dense(fx["activations"], fx["tokens"], fx["vocab"], window=fx["window"], alpha=fx["alpha"],
                          eps=fx["epsilon"])
  _report(f"dense {fx['name']} max rel (means) / abs (entropy, scores)", **_check_stats(got, fx))
  intended = reasonscore_dense(fx["activations"], fx["tokens"], fx["vocab"], window=fx["window"],
                               mode="intended", alpha=fx["alpha"], eps=fx["epsilon"])
  _check_stats(intended, fx, prefix="intended_")


@pytest.mark.parametrize("sharded", [False, True], ids=["1dev", "2x4"])
def test_fixture_streamed(fx, sharded):
  data = _data_shards(fx)
  mesh_shape = (data, 1, 8 // data) if sharded else None
  mesh = make_mesh(*mesh_shape) if mesh_shape else None
  acc = ReasonScoreAccumulator(_identity_sae(fx["activations"].shape[-1]), fx["vocab"], window=fx["window"],
                               mesh=mesh)
  for rows in _row_batches(fx):  # the reference's row minibatches
    acc.update(fx["tokens"][rows], fx["activations"][rows])
  assert acc.n_tokens == fx["tokens"].size
  got = acc.finalize(alpha=fx["alpha"], eps=fx["epsilon"])
  _report(f"streamed {fx['name']} {mesh_shape}", **_check_stats(got, fx))
  assert got.pos_count == fx["pos_mask"].sum() and got.neg_count == fx["neg_mask"].sum()
  assert got.group_counts == tuple(fx["group_masks"].sum(axis=(1, 2)))


def _random_case(seed=0, rows=12, length=48, d_in=16, d_sae=64):
  """Tokens dense in vocabulary ids, BOS/EOS and noise; an SAE whose decoder rows are not unit norm."""
  rng = np.random.default_rng(seed)
  vocab = _load("paper")["vocab"]  # the paper vocabulary with its Llama-3 ids
  tokens = rng.choice(np.r_[10:40, 128000, 128001], size=(rows, length))  # noise, BOS and EOS
  for r in range(rows):  # vocabulary entries (some two-token) at random places, row starts included
    for p in [0, *rng.choice(length - 1, size=length // 8, replace=False)]:
      ids = vocab.token_ids[rng.integers(len(vocab.token_ids))]
      tokens[r, p:p + len(ids)] = ids[:length - p]
  params = SAE({"W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
                "b_enc": rng.normal(scale=0.5, size=d_sae).astype(np.float32),
                "W_dec": (rng.normal(size=(d_sae, d_in)) * rng.uniform(0.05, 2, size=(d_sae, 1))).astype(np.float32),
                "b_dec": rng.normal(size=d_in).astype(np.float32)}, SAEConfig(d_in=d_in, d_sae=d_sae))
  x = rng.normal(size=(rows, length, d_in)).astype(np.float32)
  return vocab, tokens, params, x


def _folded_acts(sae, x):
  """ReLU(x W_enc + b_enc) * |W_dec_j| in float64: the reference's folded activations, written out."""
  params = sae.params
  n = np.linalg.norm(params["W_dec"].astype(np.float64), axis=1)
  return np.maximum(x.astype(np.float64) @ params["W_enc"] + params["b_enc"], 0) * n


def _assert_same(got: ReasonScores, want: ReasonScores):
  for name in MEANS:
    np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-7, err_msg=name)
  for name in ENTROPY_SCORES:
    np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=1e-6, err_msg=name)
  assert (got.pos_count, got.neg_count, got.group_counts) == (want.pos_count, want.neg_count, want.group_counts)


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 1, 4)], ids=["1dev", "2x4"])
def test_streamed_equals_dense(mesh_shape):
  vocab, tokens, params, x = _random_case()
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = make_mesh(*mesh_shape, devices=devices)
  acc = ReasonScoreAccumulator(params, vocab, mesh=mesh)
  latent = "model" if len(devices) > 1 else None
  assert acc.sae.params["W_enc"].sharding.spec == jax.sharding.PartitionSpec(None, latent)
  for i in range(0, len(tokens), 4):
    acc.update(tokens[i:i + 4], x[i:i + 4])
  got = acc.finalize()
  want = reasonscore_dense(_folded_acts(params, x), tokens, vocab)
  assert want.pos_count > 50 and min(want.group_counts) > 0 and sum(tokens.ravel() >= 128000) > 0
  _assert_same(got, want)
  assert got.settings == {**want.settings, "n_tokens": tokens.size}


def test_corpus_with_site_fn():
  """The real-run entry point: a site function (here an embedding lookup) feeds the accumulator."""
  vocab, tokens, params, _ = _random_case(seed=1)
  table = np.random.default_rng(2).normal(size=(128002, 16)).astype(np.float32)
  site_fn = jax.jit(lambda t: jnp.asarray(table)[t])
  seen = []
  got = reasonscore_corpus(site_fn, tokens, params, vocab, batch_rows=5, mode="intended",
                           progress=lambda done, n: seen.append((done, n)))  # 5 + 5 + 2 rows
  assert seen == [(5, 12), (10, 12), (12, 12)]
  _assert_same(got, reasonscore_dense(_folded_acts(params, table[tokens]), tokens, vocab, mode="intended"))


def test_corpus_pads_a_short_last_batch_on_a_mesh():
  """11 rows in batches of 8 on 2 data shards: the last 3 rows are padded to 8, and the padding counts nowhere."""
  vocab, tokens, params, _ = _random_case(seed=3)
  tokens = tokens[:11]
  table = np.random.default_rng(4).normal(size=(128002, 16)).astype(np.float32)
  mesh = make_mesh(2, 1, 4, devices=jax.devices()[:8])
  got = reasonscore_corpus(jax.jit(lambda t: jnp.asarray(table)[t]), tokens, params, vocab, batch_rows=8, mesh=mesh)
  want = reasonscore_dense(_folded_acts(params, table[tokens]), tokens, vocab)
  _assert_same(got, want)
  assert got.settings["n_tokens"] == tokens.size


def test_top_k_and_save(fx, tmp_path):
  res = reasonscore_dense(fx["activations"], fx["tokens"], fx["vocab"], window=fx["window"], alpha=fx["alpha"])
  top = res.top_k(3)
  assert [t["feature"] for t in top] == np.argsort(-fx["scores"], kind="stable")[:3].tolist()
  assert top[0]["score"] == pytest.approx(float(fx["scores"].max()), abs=1e-6)
  assert list(top[0]["words"]) == list(PAPER_GROUPS)
  assert top[0]["words"]["let me"] == pytest.approx(float(fx["group_means"][5, top[0]["feature"]]), rel=1e-5)
  out = tmp_path / "scores"
  res.save(str(out))
  res.save(str(out))  # overwrite in place
  assert sorted(os.listdir(out)) == sorted(["reasonscore.json", "scores.npy", "mu_pos.npy", "mu_neg.npy",
                                            "group_means.npy", "entropy.npy", "entropy_norm.npy"])
  back = ReasonScores.load(str(out))
  for name in MEANS + ENTROPY_SCORES:
    np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
  assert back.group_names == res.group_names and back.group_counts == res.group_counts
  assert back.settings == res.settings and back.settings["window"] == list(fx["window"])


# ---- user mistakes ----


def test_bad_inputs(tokenizer):
  with pytest.raises(UserError, match="'' tokenizes to no ids"):
    Vocabulary.from_tokenizer(tokenizer, ["Wait", ""])
  vocab, tokens, params, x = _random_case()
  acc = ReasonScoreAccumulator(params, vocab)
  with pytest.raises(UserError, match="SAE d_in 16 != activation width 8"):
    acc.update(tokens[:4], x[:4, :, :8])
  with pytest.raises(UserError, match="corpus is empty"):
    acc.finalize()
  with pytest.raises(UserError, match="corpus is empty"):
    reasonscore_dense(np.zeros((0, 8, 4)), np.zeros((0, 8), np.int64), vocab)
  with pytest.raises(UserError, match="corpus is empty"):
    reasonscore_corpus(lambda t: t, np.zeros((0, 8), np.int64), params, vocab, batch_rows=4)
  with pytest.raises(UserError, match="unknown window mode"):
    ReasonScoreAccumulator(params, vocab, mode="union")
  acc.update(np.full((4, 6), 128000), x[:4, :6])  # only BOS
  with pytest.raises(UserError, match="every token is an ignored id"):
    acc.finalize()
