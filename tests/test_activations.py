"""Truncated site forward, the on-device shuffle buffer, and cached shards."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.activations.buffer import ShuffleBuffer
from sae_jax.activations.collect import ActivationSource, make_site_fn
from sae_jax.activations.shards import ShardReader, ShardWriter
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
  with pytest.raises(UserError, match="other settings"):
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
