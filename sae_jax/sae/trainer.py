"""The SAE training loop: jitted donated step, sharded latents, metrics, Orbax checkpoints, resume.

Everything a resumed run needs is in the checkpoint: params, optimizer state, step, the norm scaling
factor, the shuffle buffer's arrays and PRNG key, and the data position, so a killed run (SIGKILL, or
SIGTERM on TPU preemption, which also saves first) continues bit-identically.
"""

import dataclasses
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from sae_jax import io as sio
from sae_jax import pod
from sae_jax.activations.buffer import BufferState, ShuffleBuffer
from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.sae.core import SAE, param_specs
from sae_jax.sae.config import SAEConfig
from sae_jax.sae.norm import estimate_norm_scaling_factor
from sae_jax.sae.saelens_format import save_saelens
from sae_jax.sae.train import init_train_state, make_optimizer, make_train_step


@dataclasses.dataclass(frozen=True)
class TrainerOptions:
  out_dir: str
  log_every: int = 50
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  buffer_half_tokens: int = 131_072  # SAELens: 16 batches x 8 prompts x 1024 tokens per refill
  dead_window: int = 1000  # steps without firing that count a feature as dead (SAELens' window)
  dense_threshold: float = 0.1  # firing on more than this fraction of tokens counts as dense
  matmul_precision: str = "default"  # "highest" for float32 parity on TPU (CPU is exact either way)
  progress: bool = True

  def __post_init__(self):
    for name in ("log_every", "checkpoint_every", "keep_checkpoints", "buffer_half_tokens", "dead_window"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        why = " (0 would leave nothing to resume from)" if name == "keep_checkpoints" else ""
        raise UserError(f"trainer.{name}={value!r}: expected an integer >= 1{why}")
    if not 0 <= self.dense_threshold <= 1:
      raise UserError(f"trainer.dense_threshold={self.dense_threshold!r}: expected a number in [0, 1]")
    if self.matmul_precision not in MATMUL_PRECISIONS:
      raise UserError(f"trainer.matmul_precision={self.matmul_precision!r}: expected one of {MATMUL_PRECISIONS}")

  def check(self, cfg: SAEConfig) -> None:
    """What depends on the SAE too; run before any model or data is read."""
    if self.buffer_half_tokens < cfg.batch_size:
      raise UserError(f"trainer.buffer_half_tokens={self.buffer_half_tokens} is smaller than one batch "
                      f"(sae.batch_size={cfg.batch_size})")


MATMUL_PRECISIONS = ("default", "high", "highest")
# Trainer keys a resumed run may change (logs, checkpoints, progress): the training itself stays the same.
HARMLESS = ("out_dir", "log_every", "checkpoint_every", "keep_checkpoints", "dead_window", "dense_threshold",
            "progress")


class BatchStream:
  """Training batches from a chunk producer through the shuffle buffer, with a checkpointable position.

  `producer()` returns (acts [n, d], keep [n]) or None; `producer.position` counts chunks consumed and
  `producer.seek(position)` restores it (re-reading the token rows without running the model is cheap).
  """

  def __init__(self, producer, d: int, batch_size: int, half: int, slack: int, seed: int, sharding=None):
    self.producer, self.batch_size, self.sharding = producer, batch_size, sharding
    mesh = None if sharding is None else sharding.mesh  # the buffer lives on the mesh: one global buffer in a pod
    self.buffer = ShuffleBuffer(producer, half=half, slack=slack, d=d, batch_size=batch_size, seed=seed, mesh=mesh)
    self.batches, self.cursor = None, 0
    empty = np.zeros((half // batch_size, batch_size, d), np.float32)  # fixed shape for checkpoints
    self.empty = jnp.asarray(empty) if mesh is None else jax.device_put(
        empty, shd.logical_sharding((None, "batch", None), empty.shape, mesh))  # each batch split like the steps

  def next(self) -> jax.Array:
    if self.batches is None or self.cursor >= self.batches.shape[0]:
      self.batches, self.cursor = self.buffer.next_batches(), 0
      if self.batches is None:
        raise UserError("the activation stream ran out before training finished: add data or lower n_steps")
    batch = self.batches[self.cursor]
    self.cursor += 1
    return batch if self.sharding is None else jax.device_put(batch, self.sharding)

  def state(self) -> dict:
    return {"buffer": self.buffer.state,
            "batches": self.batches if self.batches is not None else self.empty}

  def meta(self) -> dict:
    return {"cursor": self.cursor, "has_batches": self.batches is not None,
            "producer_position": int(self.producer.position)}

  def restore(self, state: dict, meta: dict) -> None:
    self.buffer.state = BufferState(**state["buffer"]) if isinstance(state["buffer"], dict) else state["buffer"]
    self.batches = state["batches"] if meta["has_batches"] else None
    self.cursor = meta["cursor"]
    self.producer.seek(meta["producer_position"])


def param_shardings(cfg: SAEConfig, mesh) -> dict:
  """Latents on `model`, the rest replicated (the architecture's own parameter list).

  A replicated spec is spelled P(), as jit returns it: P(None,) would miss the step's cache on step 2.
  """
  return {n: NamedSharding(mesh, spec if any(spec) else PartitionSpec()) for n, spec in param_specs(cfg).items()}


def make_jit_step(cfg: SAEConfig, mesh):
  """The loop's jitted `(params, opt_state, step, x, s, fire_steps) -> (params, opt_state, metrics, fire_steps)`.

  The train step on `s * x`, plus the non-finite count and per-feature steps-since-fired; params, optimizer
  state and fire_steps are donated. Also what launch/aot_compile.py compiles.
  """
  step_fn = make_train_step(cfg, mesh)  # with a mesh, top-k selection stays on each latent shard

  def step_with_checks(params, opt_state, step, x, s, fire_steps):
    x = x * s
    nonfinite = jnp.sum(~jnp.isfinite(x))
    params, opt_state, m = step_fn(params, opt_state, step, x)
    fired = m.pop("feature_fire_count")
    fire_steps = jnp.where(fired > 0, 0, fire_steps + 1)  # steps since each feature last fired
    return params, opt_state, dict(m, nonfinite=nonfinite, fired=fired), fire_steps

  return jax.jit(step_with_checks, donate_argnums=(0, 1, 5))


def state_shardings(cfg: SAEConfig, mesh) -> tuple:
  """(params, opt_state) shardings: the optimizer's copies of the params sharded like them, per-latent counters
  like b_enc, the rest replicated.

  Left to XLA, Adam's zero moments came out replicated: every device held both whole on the first step (the
  step returns them sharded, so the second step compiled again).
  """
  shardings = param_shardings(cfg, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract = jax.eval_shape(lambda k: init_train_state(cfg, k)[1], jax.random.PRNGKey(0))
  return shardings, optax.tree_map_params(
      make_optimizer(cfg), lambda _, s: s, abstract, shardings,
      transform_non_params=lambda a: shardings["b_enc"] if a.shape == (cfg.d_sae,) else replicated)


def check_mesh(cfg: SAEConfig, mesh) -> None:
  """The batch splits over the data axes and the latents over `model`: said here, not in an XLA traceback."""
  shd.check_batch_splits(cfg.batch_size, mesh, "an SAE batch (sae.batch_size)")
  n = int(mesh.shape["model"])
  if cfg.d_sae % n:
    raise UserError(f"sae.d_sae={cfg.d_sae} latents do not split over the model axis ({n} devices): make it a "
                    f"multiple of {n}")


def init_state_fn(cfg: SAEConfig, mesh):
  """jitted key -> (params, opt_state) at step 0, placed by `state_shardings`."""
  return jax.jit(lambda k: init_train_state(cfg, k), out_shardings=state_shardings(cfg, mesh))


class _Stop:
  """SIGTERM (TPU preemption) asks the loop to checkpoint and exit after the current step (in a pod: after the
  next step that is a multiple of log_every, where the processes agree)."""

  def __init__(self):
    self.requested = False
    self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self, check: bool) -> bool:
    """Whether to stop after this step. In a pod all processes must stop at the same step (the checkpoint is
    collective), so they agree only when `check` (every log_every steps) and stop if any was asked to."""
    if pod.count() == 1:
      return self.requested
    return check and pod.any_process(self.requested)

  def close(self):
    signal.signal(signal.SIGTERM, self.previous)


class MetricsLog:
  """JSONL always; TensorBoard event files when tensorboardX is importable.

  A run resumed at step `start` first drops what a killed run logged after that step, so no step is logged twice.
  """

  def __init__(self, out_dir: str, start: int):
    self.jsonl = self.tb = None
    if not pod.is_writer():  # process 0 logs for the pod
      return
    path = os.path.join(out_dir, "metrics.jsonl")
    if os.path.exists(path):
      with open(path) as f:
        sio.write_text(path, "".join(line for line in f if _logged_step(line) <= start))
    self.jsonl = open(path, "a")
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=start + 1)
    except ImportError:
      self.tb = None

  def write(self, step: int, scalars: dict, density: np.ndarray | None = None) -> None:
    if self.jsonl is None:
      return
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, step)
      if density is not None:
        self.tb.add_histogram("feature_density_log10", np.log10(density + 1e-10), step)

  def close(self):
    if self.jsonl is not None:
      self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def _logged_step(line: str) -> float:
  """The step of a metrics.jsonl line; inf for a line cut by a kill."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return float("inf")


def _manager(opts: TrainerOptions, create: bool = True) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(opts.out_dir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=opts.keep_checkpoints, create=create))


def _run_meta(cfg: SAEConfig, opts: TrainerOptions) -> dict:
  """The keys a checkpoint stores to check a resumed run against, `section.key` -> value as JSON sees it."""
  keys = {**{f"sae.{k}": v for k, v in cfg.to_dict().items()},
          **{f"trainer.{k}": v for k, v in dataclasses.asdict(opts).items()}}
  return json.loads(json.dumps(keys, default=str))


def _check_resume(saved: dict, cfg: SAEConfig, opts: TrainerOptions, step: int) -> None:
  """A checkpoint resumes only under the settings it trained with; HARMLESS trainer keys may change (said)."""
  now = _run_meta(cfg, opts)
  differ = [k for k in saved if k in now and saved[k] != now[k]]
  bad = [k for k in differ if k.removeprefix("trainer.") not in HARMLESS]
  if bad:
    changes = "; ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in bad)
    raise UserError(f"{opts.out_dir}/checkpoints holds step {step} of a run with other settings ({changes}): "
                    "rerun with the old values, or give a new trainer.out_dir")
  if differ:
    print(f"resuming step {step} with changed {', '.join(differ)} (logging and checkpointing only)")


def _saved_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  try:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f"cannot read checkpoint {step} in {manager.directory}: {e}") from None


def finished(cfg: SAEConfig, opts: TrainerOptions) -> bool:
  """True if `opts.out_dir` holds the last step of this very run (checked like a resume)."""
  if not os.path.isdir(os.path.join(opts.out_dir, "checkpoints")):
    return False
  with _manager(opts, create=False) as manager:
    step = manager.latest_step()
    if step is None:
      return False
    meta = _saved_meta(manager, step)
  _check_resume(meta.get("run", {}), cfg, opts, step)
  return step >= cfg.n_steps


def train(cfg: SAEConfig, stream: BatchStream, opts: TrainerOptions, mesh=None) -> dict:
  """Trains (or resumes) and writes `opts.out_dir`/{checkpoints, metrics.jsonl, sae/ (SAELens format)}.

  Returns the run's summary (`runs.train` writes it to result.json) plus "sae": the trained SAE in raw units (the
  norm scaling factor folded in).
  """
  opts.check(cfg)
  os.makedirs(opts.out_dir, exist_ok=True)
  mesh = mesh or shd.make_mesh(devices=jax.devices()[:1])
  check_mesh(cfg, mesh)
  jit_step = make_jit_step(cfg, mesh)
  manager = _manager(opts)

  with jax.default_matmul_precision(opts.matmul_precision):
    params, opt_state = init_state_fn(cfg, mesh)(jax.random.PRNGKey(cfg.seed))
    fire_steps = jax.device_put(np.zeros((cfg.d_sae,), np.int32), param_shardings(cfg, mesh)["b_enc"])
    start = manager.latest_step()
    if pod.count() > 1:  # every process resumes from the step process 0 found
      start = int(pod.broadcast(-1 if start is None else start))
      start = None if start < 0 else start
    if start is not None:
      _check_resume(_saved_meta(manager, start).get("run", {}), cfg, opts, start)
      state = {"params": params, "opt_state": opt_state, "fire_steps": fire_steps, "stream": stream.state()}
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      restored = manager.restore(start, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      state, meta = restored["state"], restored["meta"]
      params, opt_state, fire_steps = state["params"], state["opt_state"], state["fire_steps"]
      stream.restore(state["stream"], meta["stream"])
      s = meta["norm_scaling_factor"]
      print(f"resumed from step {start} in {opts.out_dir}/checkpoints")
    else:
      start = 0
      s = _estimate_scale(cfg, stream)
    s32 = np.float32(s)  # host scalars (not one process's device arrays) beside the global ones

    def good_checkpoint() -> str:
      step = manager.latest_step()
      where = f"step {step} in {opts.out_dir}/checkpoints" if step is not None else "none (no step was saved)"
      return f"the last good checkpoint: {where}"

    def save(step):
      bad = [n for n, p in params.items() if not bool(jnp.all(jnp.isfinite(p)))]
      if bad:
        raise UserError(f"training diverged: non-finite {', '.join(bad)} after step {step} (lower sae.lr?); "
                        f"{good_checkpoint()}")
      state = {"params": params, "opt_state": opt_state, "fire_steps": fire_steps, "stream": stream.state()}
      meta = {"stream": stream.meta(), "norm_scaling_factor": s, "config": cfg.to_dict(),
              "run": _run_meta(cfg, opts)}
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
      manager.wait_until_finished()

    log = MetricsLog(opts.out_dir, start)
    stop = _Stop()
    window, last = [], None
    progress = _progress(opts.progress, start, cfg.n_steps)
    t0 = time.time()
    try:
      for step in range(start, cfg.n_steps):
        x = stream.next()
        params, opt_state, metrics, fire_steps = jit_step(params, opt_state, np.int32(step), x, s32,
                                                          fire_steps)
        window.append(metrics)
        done = step + 1
        stopping = stop.agreed(done % opts.log_every == 0)
        if done % opts.log_every == 0 or done == cfg.n_steps or stopping:
          last = _log_window(window, step, fire_steps, opts, log, cfg.batch_size, good_checkpoint)
          window = []
          progress.set_postfix(loss=f"{last['loss']:.3g}", l0=f"{last['l0']:.1f}",
                               ev=f"{last['explained_variance']:.3f}")
        progress.update(1)
        if stopping or done % opts.checkpoint_every == 0 or done == cfg.n_steps:  # the last too: a rerun
          if window:                                                                     # of a done run is a no-op
            last = _log_window(window, step, fire_steps, opts, log, cfg.batch_size, good_checkpoint)
            window = []
          save(done)
          if stopping:
            print(f"SIGTERM: saved step {done} to {opts.out_dir}/checkpoints; rerun the same command to resume")
            raise SystemExit(143)
    finally:
      progress.close()
      log.close()
      stop.close()

    sae = SAE(params, cfg, "scaled", s).raw().numpy()
  sae_dir = os.path.join(opts.out_dir, "sae")
  if pod.is_writer():
    sae_dir = save_saelens(sae_dir, sae)
  manager.close()
  result = {"steps": cfg.n_steps, "norm_scaling_factor": s, "seconds": round(time.time() - t0, 1),
            "tokens_per_second": round((cfg.n_steps - start) * cfg.batch_size / max(time.time() - t0, 1e-9)),
            "sae_dir": sae_dir, **(last or {})}
  return {"sae": sae, **result}


def _estimate_scale(cfg: SAEConfig, stream: BatchStream) -> float:
  if cfg.normalize_activations == "none":
    return 1.0
  batches = (stream.next() for _ in range(cfg.n_batches_for_norm_estimate))
  return estimate_norm_scaling_factor(batches, cfg.norm_estimate)


def _log_window(window, step, fire_steps, opts, log, batch_size, good_checkpoint) -> dict:
  """Averages the window's metrics on the host; stops the run on non-finite activations or loss (before the
  next checkpoint, so the last one stays good)."""
  host = pod.to_host(window)
  for at, m in enumerate(host, step + 2 - len(host)):  # steps count from 1, as in metrics.jsonl and checkpoints
    if m["nonfinite"] > 0:
      raise UserError(f"non-finite activations at step {at}: "
                      f"{int(m['nonfinite'])} NaN/inf values in the batch; {good_checkpoint()}")
    bad = [k for k, v in m.items() if k not in ("fired", "nonfinite") and not np.all(np.isfinite(v))]
    if bad:
      raise UserError(f"training diverged: {bad[0]} {float(m[bad[0]])} at step {at} "
                      f"(lower sae.lr?); {good_checkpoint()}")
  fired = np.sum([m["fired"] for m in host], axis=0)
  density = fired / (len(host) * batch_size)
  scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k not in ("fired", "nonfinite")}
  fire_steps = pod.to_host(fire_steps)
  scalars["dead_fraction"] = float(np.mean(fire_steps >= opts.dead_window))
  scalars["dense_fraction"] = float(np.mean(density > opts.dense_threshold))
  scalars["fvu"] = 1.0 - scalars["explained_variance"]
  log.write(step + 1, scalars, density)
  return scalars


def _progress(enabled: bool, start: int, total: int):
  from tqdm import tqdm
  return tqdm(total=total, initial=start, disable=not enabled, desc="train_sae", mininterval=2.0)
