"""The SAE trainer: it learns, resumes bit-identically after SIGKILL, shards, and stops on NaN."""

import os
import re
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


def _cfg(n_steps=60, architecture="standard", lr=2e-2, **kw):
  return SAEConfig(**{**dict(d_in=D, d_sae=D_SAE, n_steps=n_steps, batch_size=BATCH, lr=lr, l1_coefficient=0.5,
                             architecture=architecture, k=4, l0_warm_up_steps=10, l1_warm_up_steps=10,
                             lr_decay_steps=10, n_batches_for_norm_estimate=4, hook_layer=1,
                             exclude_special_tokens=()), **kw})


class _SigtermAt(SyntheticActs):
  """Sends this process a SIGTERM just before it makes chunk `at` (as a preemption would, mid-fill)."""

  def __init__(self, d, at, **kw):
    super().__init__(d, **kw)
    self.at = at

  def __call__(self):
    if self.position == self.at:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().__call__()


def _run(out_dir, n_steps=60, mesh=None, nan_at=-1, checkpoint_every=20, architecture="standard", lr=2e-2,
         log_every=10, sigterm_at=-1, **kw):
  cfg = _cfg(n_steps, architecture, lr, **kw)
  stream = BatchStream(_SigtermAt(D, sigterm_at, nan_at=nan_at), d=D, batch_size=BATCH, half=128, slack=64, seed=1,
                       sharding=None if mesh is None else shd.batch_sharding(mesh))
  opts = TrainerOptions(out_dir=str(out_dir), log_every=log_every, checkpoint_every=checkpoint_every,
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
  # Each step is logged once, as the straight run logged it (what the killed run logged past its checkpoint goes).
  assert open(out / "metrics.jsonl").read() == open(tmp_path / "straight" / "metrics.jsonl").read()


def test_sigterm_in_the_norm_estimate_saves_it_and_the_rerun_is_byte_identical(tmp_path, capsys):
  """Chunks of 64 rows, halves of 128, batches of 32: the first fill (chunks 0-3) gives norm batches 1-4, each
  later refill two chunks and four batches. A SIGTERM before chunk 4 stops the second fill after chunk 4 (4 of
  10 norms, 64 rows pending); in the resumed run one before chunk 6 stops the third (8 norms); the third run
  finishes to the same bytes as a run never stopped."""
  run = lambda out, at=-1: _run(out, n_steps=12, checkpoint_every=6, n_batches_for_norm_estimate=10,  # noqa: E731
                                sigterm_at=at)
  handler = signal.getsignal(signal.SIGTERM)
  run(tmp_path / "straight")
  out = tmp_path / "stopped"
  for at, norms in [(4, 4), (6, 8)]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
      run(out, at)
    err = capsys.readouterr().err
    assert stopped.value.code == 143 and os.listdir(out / "checkpoints") == ["0"], err
    assert (f"SIGTERM: saved the norm estimate ({norms}/10 batches) and the data position to {out}/checkpoints; "
            "rerun the same command to resume") in err
    assert "[train] norm estimate: reference mode, batches of 32 tokens, 10 batches" + (
        " (4 done before)" if norms > 4 else "") + " ..." in err
    assert signal.getsignal(signal.SIGTERM) == handler  # the run's own handler is gone with it
  run(out)
  for name in ("sae_weights.safetensors", "cfg.json"):
    assert (out / "sae" / name).read_bytes() == (tmp_path / "straight" / "sae" / name).read_bytes()
  assert (out / "metrics.jsonl").read_text() == (tmp_path / "straight" / "metrics.jsonl").read_text()


def test_resume_under_a_changed_config(tmp_path, capsys):
  _run(tmp_path, n_steps=30, checkpoint_every=10)
  assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "30"  # the last step is saved too
  with pytest.raises(UserError, match=r"holds step 30 of a run with other settings \(sae\.lr 0\.02 -> 0\.01\)"):
    _run(tmp_path, n_steps=30, checkpoint_every=10, lr=1e-2)
  with pytest.raises(UserError, match=r"sae\.d_sae 64 -> 32; sae\.k 4 -> 2"):
    from sae_jax.sae.trainer import _check_resume
    _check_resume(_run_meta_of(tmp_path), SAEConfig(**{**_cfg(30).to_dict(), "d_sae": 32, "k": 2}),
                  TrainerOptions(out_dir=str(tmp_path), checkpoint_every=10), 30)
  capsys.readouterr()
  _run(tmp_path, n_steps=30, checkpoint_every=5, log_every=3)  # harmless: resumed (nothing left to train)
  assert "resuming step 30 with changed trainer.log_every, trainer.checkpoint_every" in capsys.readouterr().out
  for p in (tmp_path / "checkpoints" / "30" / "state").rglob("*"):  # a damaged checkpoint is named
    if p.is_file() and p.parent.name == "d":
      p.write_bytes(p.read_bytes()[:7])
  with pytest.raises(UserError, match=rf"checkpoint 30 in {tmp_path}/checkpoints is damaged \(.+\): delete "
                     rf"{tmp_path}/checkpoints/30 to resume from the one before"):
    _run(tmp_path, n_steps=30, checkpoint_every=10)


def _run_meta_of(out_dir):
  from sae_jax.sae.trainer import _manager, _saved_meta
  opts = TrainerOptions(out_dir=str(out_dir))
  with _manager(opts, create=False) as m:
    return _saved_meta(m, m.latest_step())["run"]


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  with pytest.raises(UserError, match=r"training diverged: grad_norm inf at step \d+ .* checkpoint: none"):
    _run(tmp_path / "at_once", n_steps=60, checkpoint_every=10, lr=1e6)
  # The lr warms up to 3e5: the run diverges after some good checkpoints.
  with pytest.raises(UserError, match=r"training diverged: \w+ [-\w.]+ at step (\d+) \(lower sae.lr\?\); the last good "
                     r"checkpoint: step (\d+) in ") as first:
    _run(tmp_path, n_steps=60, checkpoint_every=10, lr=3e5, lr_warm_up_steps=50)
  at, good = map(int, re.search(r"at step (\d+).*step (\d+) in", str(first.value)).groups())
  assert 10 <= good < at and not (tmp_path / "sae").exists()
  # The checkpoint it names restores and resumes to the same failure: it is whole and was saved before it.
  with pytest.raises(UserError) as again:
    _run(tmp_path, n_steps=60, checkpoint_every=10, lr=3e5, lr_warm_up_steps=50)
  assert str(again.value) == str(first.value)


def test_bad_trainer_and_sae_values_are_refused():
  with pytest.raises(UserError, match=r"SAE config lr=inf: expected a finite number"):
    _cfg(lr=float("inf"))
  for key, value, want in [("keep_checkpoints", 0, "expected an integer >= 1 (0 would leave nothing to resume"),
                           ("log_every", 0, "expected an integer >= 1"), ("checkpoint_every", -5, ">= 1"),
                           ("matmul_precision", "foo", "expected one of"), ("dense_threshold", 2.0, "in [0, 1]")]:
    with pytest.raises(UserError, match=re.escape(f"trainer.{key}={value!r}: ") + ".*" + re.escape(want)):
      TrainerOptions(out_dir="x", **{key: value})
  with pytest.raises(UserError, match=r"buffer_half_tokens=16 is smaller than one batch \(sae.batch_size=32\)"):
    TrainerOptions(out_dir="x", buffer_half_tokens=16).check(_cfg())
  from sae_jax.sae.trainer import check_mesh
  with pytest.raises(UserError, match=r"sae.d_sae=66 latents do not split over the model axis \(4 devices\)"):
    check_mesh(SAEConfig(**{**_cfg().to_dict(), "d_sae": 66}), shd.make_mesh(2, 1, 4))
  with pytest.raises(UserError, match=r"sae.batch_size\) of 30 rows does not split over data x fsdp = 8"):
    check_mesh(SAEConfig(**{**_cfg().to_dict(), "batch_size": 30}), shd.make_mesh(8, 1, 1))


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


def test_resume_check_covers_model_and_data_keys(tmp_path, monkeypatch, capsys):
  """A checkpoint stores the keys that fix the activation stream (runs.stream_keys): a changed corpus, context,
  model or dtype is refused with the keys named; the same file written relative or absolute is the same; a
  changed mesh resumes, and says so."""
  from sae_jax import runs
  from sae_jax.sae.trainer import _check_resume, _run_meta
  (tmp_path / "model").mkdir()
  (tmp_path / "docs.jsonl").write_text("")
  monkeypatch.chdir(tmp_path)

  def keys(**changes):
    c = runs.default_config()
    c.model.path, c.data.sources, c.data.context_size = "model", ("docs.jsonl#weight=1",), 64
    for key, value in changes.items():
      section, name = key.split("__")
      c[section][name] = value
    return runs.stream_keys(c)

  cfg, opts = _cfg(), TrainerOptions(out_dir=str(tmp_path / "t"))
  saved = _run_meta(cfg, opts, keys())
  assert saved["model.path"] == str(tmp_path / "model") and saved["data.tokenizer"] == str(tmp_path / "model")
  assert saved["data.sources"] == [f"{tmp_path}/docs.jsonl#weight=1"] and saved["activations.cache_dir"] == ""
  _check_resume(saved, cfg, opts, 5, keys(model__path=str(tmp_path / "model") + "/",
                                          data__sources=("./docs.jsonl#weight=1",)))  # the same files
  for changes, named in [({"data__context_size": 128}, "data.context_size 64 -> 128"),
                         ({"model__dtype": "float32"}, "model.dtype 'bfloat16' -> 'float32'"),
                         ({"model__path": "other/model"}, f"model.path '{tmp_path}/model' -> 'other/model'"),
                         ({"data__sources": ("demo#n=40",)}, "data.sources"),
                         ({"data__store_batch_rows": 4}, "data.store_batch_rows 8 -> 4"),
                         ({"activations__cache_dir": "acts"}, "activations.cache_dir '' -> 'acts'")]:
    with pytest.raises(UserError, match=r"holds step 5 of a run with other settings \(.*" + re.escape(named)):
      _check_resume(saved, cfg, opts, 5, keys(**changes))
  # A cache run stores no model or corpus keys: those may change (the cache fixed the rows).
  cached = _run_meta(cfg, opts, keys(activations__cache_dir="acts"))
  assert not any(k.startswith(("model.", "data.")) for k in cached)
  _check_resume(cached, cfg, opts, 5, keys(activations__cache_dir="acts", data__context_size=128))
  capsys.readouterr()
  _check_resume(saved, cfg, opts, 5, keys(mesh__data=2))
  assert "resuming step 5 with changed mesh.data (logging, checkpointing or device layout only" in capsys.readouterr().out


def test_stop_before_any_state_says_nothing_was_saved(capsys):
  """SIGTERM / SIGINT while nothing can be saved (runs.train's model load, tokenization) end the run at once."""
  from sae_jax.sae.trainer import StopSignals
  before = signal.getsignal(signal.SIGINT)
  stop = StopSignals()
  try:
    for sig, code, name in [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")]:
      stop.immediate("the model load")
      with pytest.raises(SystemExit) as stopped:
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler runs at the next bytecode
      assert stopped.value.code == code
      assert capsys.readouterr().err == (f"{name} during the model load, before the first checkpoint: nothing "
                                         "saved; rerun the same command to go on\n")
    stop.deferred()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested == signal.SIGINT  # recorded only: the trainer saves, then exits
  finally:
    stop.close()
  assert signal.getsignal(signal.SIGINT) == before
