"""Orbax round trip of converted params is bit-exact and restores onto a different mesh."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sae_jax.io import MARKER
from sae_jax.models import checkpoint
from sae_jax.models import sharding as shd
from sae_jax.models.loading import load_model


def _leaves(model):
  return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_round_trip_bit_exact_and_onto_another_mesh(tiny_hf_dir, tmp_path):
  _, path = tiny_hf_dir
  with open(os.path.join(path, "config.json")) as f:
    hf_cfg = json.load(f)
  for dtype in (jnp.float32, jnp.bfloat16):
    model = load_model(path, dtype, mesh=shd.make_mesh(1, 8, 1))
    out = checkpoint.save(str(tmp_path / f"ckpt_{jnp.dtype(dtype).name}"), model, hf_cfg)
    assert sorted(os.listdir(out)) == [MARKER, "config.json", "params"]
    for mesh in (shd.make_mesh(devices=jax.devices()[:1]), shd.make_mesh(2, 1, 4)):
      restored = checkpoint.restore(out, mesh=mesh)
      assert restored.dtype == dtype
      for a, b in zip(_leaves(model), _leaves(restored)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      kernel = restored.layers[0].mlp.up_proj.kernel[...]
      assert kernel.sharding.mesh.shape == mesh.shape
  # No temp dirs are left behind beside the checkpoints.
  assert sorted(os.listdir(tmp_path)) == ["ckpt_bfloat16", "ckpt_float32"]


def test_damaged_checkpoint_is_one_error(tiny_hf_dir, tmp_path):
  import pytest
  from sae_jax.errors import UserError
  _, path = tiny_hf_dir
  with open(os.path.join(path, "config.json")) as f:
    hf_cfg = json.load(f)
  out = checkpoint.save(str(tmp_path / "ckpt"), load_model(path, jnp.float32), hf_cfg)
  chunks = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(out, "params")) for n in names
            if os.sep + "d" + os.sep in os.path.join(d, n) + os.sep]
  biggest = max(chunks, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(100)
  with pytest.raises(UserError, match=r"converted checkpoint .*ckpt is damaged \(.*\): convert it again"):
    checkpoint.restore(out)
  with open(os.path.join(out, "config.json"), "w") as f:
    f.write("{")
  with pytest.raises(UserError, match="has no readable config.json"):
    checkpoint.restore(out)
