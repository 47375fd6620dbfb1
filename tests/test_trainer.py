"""The SAE trainer: it learns, resumes bit-identically after SIGKILL, shards, and stops on NaN."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.sae import SAEConfig, load_saelens
from sae_jax.sae.trainer import BatchStream, TrainerOptions, train
from synthetic_acts import SyntheticActs

D, D_SAE, BATCH = 16, 64, 32


def _cfg(n_steps=60, architecture="standard"):
  return SAEConfig(d_in=D, d_sae=D_SAE, n_steps=n_steps, batch_size=BATCH, lr=2e-2, l1_coefficient=0.5,
                   architecture=architecture, k=4, l0_warm_up_steps=10,
                   l1_warm_up_steps=10, lr_decay_steps=10, n_batches_for_norm_estimate=4, hook_layer=1,
                   exclude_special_tokens=())


def _run(out_dir, n_steps=60, mesh=None, nan_at=-1, checkpoint_every=20, architecture="standard"):
  cfg = _cfg(n_steps, architecture)
  stream = BatchStream(SyntheticActs(D, nan_at=nan_at), d=D, batch_size=BATCH, half=128, slack=64, seed=1,
                       sharding=None if mesh is None else shd.batch_sharding(mesh))
  opts = TrainerOptions(out_dir=str(out_dir), log_every=10, checkpoint_every=checkpoint_every,
                        buffer_half_tokens=128, progress=False)
  return train(cfg, stream, opts, mesh=mesh)


def test_trains_and_exports(tmp_path):
  result = _run(tmp_path)
  lines = open(tmp_path / "metrics.jsonl").read().splitlines()
  assert len(lines) == 6
  import json
  first, last = json.loads(lines[0]), json.loads(lines[-1])
  assert last["mse_loss"] < 0.5 * first["mse_loss"]
  assert last["explained_variance"] > 0.4 and last["l0"] < 0.5 * first["l0"]
  assert {"l0", "dead_fraction", "dense_fraction", "fvu", "grad_norm", "lr"} <= set(last)
  loaded = load_saelens(result["sae_dir"])
  np.testing.assert_array_equal(loaded.params["W_enc"], result["sae"].params["W_enc"])
  assert loaded.units == "raw" and os.path.isdir(tmp_path / "tensorboard")


_CHILD = """
import sys, os
sys.path.insert(0, {tests!r})
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
import test_trainer
test_trainer._run({out!r}, n_steps=80, checkpoint_every=10)
"""


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  straight = _run(tmp_path / "straight", n_steps=80, checkpoint_every=10)
  out = tmp_path / "killed"
  child = subprocess.Popen([sys.executable, "-c", _CHILD.format(tests=os.path.dirname(__file__), out=str(out))],
                           stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
  ckpts = out / "checkpoints"
  deadline = time.time() + 120
  while time.time() < deadline and child.poll() is None:
    if ckpts.exists() and any(p.isdigit() and int(p) >= 30 for p in os.listdir(ckpts)):
      break
    time.sleep(0.05)
  assert child.poll() is None, "the child finished before it could be killed"
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert not (out / "sae").exists()
  resumed = _run(out, n_steps=80, checkpoint_every=10)
  for k in straight["sae"].params:
    np.testing.assert_array_equal(resumed["sae"].params[k], straight["sae"].params[k])


@pytest.mark.parametrize("architecture", ["standard", "topk", "batchtopk", "jumprelu"])
def test_sharded_2x4_matches_one_device(tmp_path, architecture):
  single = _run(tmp_path / "one", n_steps=30, architecture=architecture)
  mesh = shd.make_mesh(2, 1, 4)
  sharded = _run(tmp_path / "eight", n_steps=30, mesh=mesh, architecture=architecture)
  for k in single["sae"].params:
    np.testing.assert_allclose(sharded["sae"].params[k], single["sae"].params[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_state_starts_sharded_as_it_stays(architecture):
  """Adam's moments (and topk's counters) start split on `model` like the params: one compile, no replicated
  copy on the first step."""
  import jax.numpy as jnp
  from sae_jax.sae.trainer import init_state_fn, make_jit_step, param_shardings
  cfg, mesh = _cfg(architecture=architecture), shd.make_mesh(2, 1, 4)
  params, opt_state = init_state_fn(cfg, mesh)(jax.random.PRNGKey(0))
  inner = opt_state[1] if architecture == "standard" else opt_state.inner[1]
  assert params["W_enc"].sharding.spec == jax.sharding.PartitionSpec(None, "model")
  for name, p in params.items():
    for moment in (inner.mu[name], inner.nu[name]):
      assert moment.sharding.is_equivalent_to(p.sharding, p.ndim), name
  step = make_jit_step(cfg, mesh)
  fire = jax.device_put(jnp.zeros((D_SAE,), jnp.int32), param_shardings(cfg, mesh)["b_enc"])
  x = jax.device_put(np.random.default_rng(0).normal(size=(BATCH, D)).astype(np.float32), shd.batch_sharding(mesh))
  for t in range(3):
    params, opt_state, _, fire = step(params, opt_state, jnp.int32(t), x, jnp.float32(1.0), fire)
  assert step._cache_size() == 1


def test_nan_in_activations_stops_with_step_and_count(tmp_path):
  # Chunks 0..7 feed the norm estimate (4 batches of 32 from 64-row chunks) and the first buffer refills.
  with pytest.raises(UserError, match=r"non-finite activations at step \d+: 1 NaN/inf values"):
    _run(tmp_path, n_steps=60, nan_at=12)
