"""Truncated site forward, the on-device shuffle buffer, and cached shards."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.activations.buffer import ShuffleBuffer
from sae_jax.activations.collect import ActivationSource, make_site_fn
from sae_jax.activations.shards import CachedRows, ShardReader, ShardWriter
from sae_jax.errors import UserError
from sae_jax.models import parity
from sae_jax.models.loading import load_model


def test_site_fn_equals_hf_hidden_state(tiny_hf_dir):
  hf, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  tokens = np.random.RandomState(0).randint(0, 128, (2, 16))
  _, hidden = parity.hf_forward(hf, tokens, np.ones_like(tokens))
  np.testing.assert_allclose(make_site_fn(model, 2, "resid_post")(tokens), hidden[3], atol=1e-4)
  with pytest.raises(UserError, match="layer 9 is out of range"):
    make_site_fn(model, 9, "resid_post")


def test_source_drops_excluded_ids(tiny_hf_dir):
  _, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  rows = np.random.RandomState(0).randint(2, 128, (3, 2, 8))
  rows[:, :, 0] = 1  # a BOS-like id at every row start
  rows[0, 1, 5] = 0
  src = ActivationSource(model, rows.reshape(6, 8), layer=1, exclude_ids=(0, 1), batch_rows=2)
  acts, keep = src()
  assert acts.shape == (16, 64) and keep.sum() == 16 - 3
  full = np.asarray(make_site_fn(model, 1, "resid_post")(rows[0])).reshape(-1, 64)
  np.testing.assert_array_equal(np.asarray(acts)[keep], full[~np.isin(rows[0].ravel(), (0, 1))])
  assert src.position == 1


def _counter_producer(n_chunks, size=10, d=3):
  made = []

  def produce():
    if len(made) >= n_chunks:
      return None
    start = len(made) * size
    made.append(start)
    acts = np.repeat(np.arange(start, start + size, dtype=np.float32)[:, None], d, axis=1)
    keep = (np.arange(start, start + size) % 7) != 0
    return jnp.asarray(acts), keep
  return produce


def test_buffer_serves_every_kept_row_once_and_mixes():
  buf = ShuffleBuffer(_counter_producer(30), half=40, slack=10, d=3, batch_size=8, seed=0)
  served = []
  while (b := buf.next_batches()) is not None:
    assert b.shape == (5, 8, 3)
    served.append(np.asarray(b)[..., 0].ravel())
  values = np.concatenate(served)
  assert len(values) == len(set(values.tolist()))  # no row twice
  assert not np.any(values % 7 == 0)  # excluded rows never served
  assert len(values) == 200  # 257 kept rows: 40 primed the store, 5 full refills of 40 served
  assert np.mean(np.abs(np.diff(values))) > 10  # shuffled across chunks, not in stream order


def test_buffer_is_deterministic():
  def run():
    buf = ShuffleBuffer(_counter_producer(12), half=16, slack=10, d=3, batch_size=4, seed=3)
    return np.asarray(buf.next_batches())
  np.testing.assert_array_equal(run(), run())


def test_shards_resume_and_never_read_partial(tmp_path):
  d = 5
  data = np.random.RandomState(0).randn(100, d).astype(np.float32)
  w = ShardWriter(str(tmp_path), shard_tokens=16, d=d, meta={"model": "m", "layer": 1})
  for i in range(0, 40, 8):
    w.add(data[i:i + 8], batch_end=i // 8 + 1)
  assert len(w.manifest["shards"]) == 2 and w.resume_point == (4, 0)
  # A killed writer leaves a temp file; a new writer resumes after the last complete shard.
  open(tmp_path / "shard_000002.npy.tmp", "wb").write(b"partial")
  w2 = ShardWriter(str(tmp_path), shard_tokens=16, d=d, meta={"model": "m", "layer": 1})
  assert w2.resume_point == (4, 0)
  for i in range(32, 64, 8):
    w2.add(data[i:i + 8], batch_end=i // 8 + 1)
  w2.finish()
  reader = ShardReader(str(tmp_path), d=d)
  got = []
  while (item := reader()) is not None:
    got.append(item[0])
  np.testing.assert_array_equal(np.concatenate(got), data[:64])
  with pytest.raises(UserError, match=r"other settings \(layer 1 -> 2\): resume it with the same ones"):
    ShardWriter(str(tmp_path), shard_tokens=16, d=d, meta={"model": "m", "layer": 2})
  with pytest.raises(UserError, match="width 5, the SAE expects d_in 7"):
    ShardReader(str(tmp_path), d=7)


def test_resume_point_inside_a_batch(tmp_path):
  w = ShardWriter(str(tmp_path), shard_tokens=10, d=1, meta={})
  w.add(np.zeros((6, 1), np.float32), batch_end=1)
  w.add(np.zeros((7, 1), np.float32), batch_end=2)  # 13 rows: one shard, 3 left over from batch 1
  assert w.resume_point == (1, 4)


def test_corrupted_shard_is_named(tmp_path):
  w = ShardWriter(str(tmp_path), shard_tokens=4, d=2, meta={})
  w.add(np.ones((4, 2), np.float32), batch_end=1)
  with open(tmp_path / "shard_000000.npy", "r+b") as f:
    f.truncate(60)
  with pytest.raises(UserError, match="corrupted shard .*shard_000000.npy"):
    ShardReader(str(tmp_path))()


def test_shards_on_an_fsspec_url():
  """Remote paths (gs:// with gcsfs) go through fsspec; the in-memory filesystem stands in for a bucket."""
  data = np.random.RandomState(1).randn(40, 3).astype(np.float32)
  w = ShardWriter("memory://acts/run1", shard_tokens=16, d=3, meta={"m": 1})
  for i in range(0, 40, 8):
    w.add(data[i:i + 8], batch_end=i // 8 + 1)
  w.finish()
  reader = ShardReader("memory://acts/run1", d=3)
  got = [reader()[0], reader()[0]]
  assert reader() is None
  np.testing.assert_array_equal(np.concatenate(got), data[:32])
  assert ShardWriter("memory://acts/run1", shard_tokens=16, d=3, meta={"m": 1}).resume_point == (4, 0)


def _position_acts(tokens, d=3):
  """Activations that name their place: (row, position, token) in the first three dims."""
  b, length = tokens.shape
  acts = np.zeros((b, length, d), np.float32)
  acts[..., 0] = np.arange(b)[:, None]
  acts[..., 1] = np.arange(length)[None, :]
  acts[..., 2] = tokens
  return acts


def _write_cache(path, rows, exclude, shard_tokens, batch_rows=2):
  """What collect_activations.py does: kept activations per batch, the rows stored beside them."""
  w = ShardWriter(path, shard_tokens=shard_tokens, d=3, meta={"layer": 1, "site": "resid_post",
                                                              "exclude_ids": list(exclude)}, rows=rows)
  for i in range(0, len(rows), batch_rows):
    acts = _position_acts(rows[i:i + batch_rows])
    acts[..., 0] += i
    keep = ~np.isin(rows[i:i + batch_rows], exclude)
    w.add(acts[keep], batch_end=i // batch_rows + 1)
  return w.finish()


def test_cached_rows_put_each_activation_back_at_its_token(tmp_path):
  rng = np.random.default_rng(0)
  rows = rng.integers(3, 50, (8, 10)).astype(np.int32)
  rows[:, 0] = 1  # BOS
  rows[rng.random(rows.shape) < 0.1] = 2  # EOS inside rows
  manifest = _write_cache(str(tmp_path), rows, exclude=(1, 2), shard_tokens=13)
  cached = sum(s["tokens"] for s in manifest["shards"])
  kept_per_row = (~np.isin(rows, (1, 2))).sum(axis=1)
  cache = CachedRows(str(tmp_path), d=3)
  n = int(np.sum(np.cumsum(kept_per_row) <= cached))  # rows whose kept tokens all made it into full shards
  assert 0 < n < len(rows)  # the partial last shard was dropped, so the last rows are not served
  np.testing.assert_array_equal(cache.rows, rows[:n])
  site_fn = cache.site_fn()
  got = np.concatenate([site_fn(cache.rows[i:i + 3]) for i in range(0, n, 3)])  # batches unlike the writer's
  want = _position_acts(rows[:n])
  want[np.isin(rows[:n], (1, 2))] = 0  # uncached positions come back as zeros
  np.testing.assert_array_equal(got, want)
  with pytest.raises(UserError, match="served in row order"):
    cache.site_fn()(cache.rows[1:3])
  # a pass over the first m rows (odd, fewer than the cache holds) in batches of 2, the last one padded as
  # token_batches pads it
  m = n - 1 if (n - 1) % 2 else n - 2
  assert m >= 1
  site_fn = cache.site_fn(m)
  batches = [np.asarray(cache.rows[i:i + 2]) for i in range(0, m, 2)]
  batches[-1] = np.concatenate([batches[-1], batches[-1][-1:]])
  got = np.concatenate([site_fn(b) for b in batches])
  np.testing.assert_array_equal(got[:m], want[:m])
  assert not got[m:].any()
  cache.check_ignored((1, 2, 7))
  with pytest.raises(UserError, match=r"left out token ids \[2\]"):
    cache.check_ignored((1,))
  with pytest.raises(UserError, match="width 3, the SAE expects d_in 4"):
    CachedRows(str(tmp_path), d=4)


def test_resume_takes_the_model_path_written_another_way(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "model").mkdir()
  ShardWriter(str(tmp_path / "acts"), shard_tokens=4, d=2, meta={"model": "model"}).finish()
  assert ShardWriter("acts", shard_tokens=4, d=2, meta={"model": str(tmp_path / "model")}).resume_point == (0, 0)
  with pytest.raises(UserError, match=r"\(model 'model' -> 'other'; shard_tokens 4 -> 8\)"):
    ShardWriter("acts", shard_tokens=8, d=2, meta={"model": "other"})


def test_cached_rows_need_rows_and_guard_them(tmp_path):
  rows = np.arange(40, dtype=np.int32).reshape(4, 10)
  _write_cache(str(tmp_path / "a"), rows, exclude=(), shard_tokens=10)
  with pytest.raises(UserError, match="other settings"):  # resuming on other rows is refused
    ShardWriter(str(tmp_path / "a"), shard_tokens=10, d=3, meta={"layer": 1, "site": "resid_post",
                                                                   "exclude_ids": []}, rows=rows + 1)
  np.save(tmp_path / "a" / "rows.npy", rows + 1)
  with pytest.raises(UserError, match="does not match its manifest"):
    CachedRows(str(tmp_path / "a"))
  with pytest.raises(UserError, match="does not match its manifest"):  # nor does a resumed collection append to it
    ShardWriter(str(tmp_path / "a"), shard_tokens=10, d=3, meta={"layer": 1, "site": "resid_post",
                                                                   "exclude_ids": []}, rows=rows)
  w = ShardWriter(str(tmp_path / "b"), shard_tokens=10, d=3, meta={})
  w.add(np.zeros((10, 3), np.float32), batch_end=1)
  w.finish()
  with pytest.raises(UserError, match="has no token rows"):
    CachedRows(str(tmp_path / "b"))
