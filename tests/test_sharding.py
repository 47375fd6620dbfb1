"""The same forward on 1 device and on 8 fake CPU devices (2x4 data x model, 1x8 fsdp) gives one answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sae_jax.generation import forward_logits
from sae_jax.models import sharding as shd
from sae_jax.models.loading import load_model


@pytest.mark.parametrize("mesh_shape", [(2, 1, 4), (1, 8, 1)], ids=["data2xmodel4", "fsdp8"])
def test_sharded_forward_equals_single_device(tiny_hf_dir, mesh_shape):
  _, path = tiny_hf_dir
  tokens = np.random.RandomState(0).randint(0, 128, (8, 16)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  single = load_model(path, jnp.float32)
  graphdef, state = nnx.split(single)
  want = np.asarray(forward_logits(graphdef, state, tokens, mask))

  mesh = shd.make_mesh(*mesh_shape)
  model = load_model(path, jnp.float32, mesh=mesh)
  graphdef, state = nnx.split(model)
  # The weights really are spread over the mesh.
  q = model.layers[0].self_attn.q_proj.kernel[...]
  assert len(q.sharding.device_set) == 8
  assert q.addressable_shards[0].data.size < q.size
  batch = shd.batch_sharding(mesh)
  got = forward_logits(graphdef, state, jax.device_put(tokens, batch), jax.device_put(mask, batch))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_no_recompilation_for_same_shapes(tiny_hf_dir):
  _, path = tiny_hf_dir
  mesh = shd.make_mesh(2, 1, 4)
  model = load_model(path, jnp.float32, mesh=mesh)
  graphdef, state = nnx.split(model)
  batch = shd.batch_sharding(mesh)
  rng = np.random.RandomState(0)
  length = {"llama": 21, "qwen2": 23}[model.cfg.architecture]  # a shape no other test compiles
  before = forward_logits._cache_size()
  for _ in range(2):
    tokens = jax.device_put(rng.randint(0, 128, (8, length)).astype(np.int32), batch)
    forward_logits(graphdef, state, tokens, jax.device_put(np.ones((8, length), bool), batch))
  assert forward_logits._cache_size() - before == 1


def test_logical_rules_leave_indivisible_dims_replicated():
  mesh = shd.make_mesh(1, 2, 4)
  # 9 heads x 64 = 576 divides by 4; a vocab of 49153 does not and stays replicated.
  assert shd.logical_spec(("embed", "heads"), (576, 576), mesh) == jax.sharding.PartitionSpec("fsdp", "model")
  assert shd.logical_spec(("vocab", "embed"), (49153, 576), mesh) == jax.sharding.PartitionSpec(None, "fsdp")


def test_bad_mesh_is_a_user_error():
  from sae_jax.errors import UserError
  with pytest.raises(UserError, match="needs 12 devices"):
    shd.make_mesh(3, 1, 4)
  assert shd.make_mesh(2, -1, 1).shape == {"data": 2, "fsdp": 4, "model": 1}
