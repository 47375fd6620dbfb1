"""The SAE training loop: jitted donated step, sharded latents, metrics, Orbax checkpoints, resume.

Everything a resumed run needs is in the checkpoint: params, optimizer state, step, the norm scaling
factor, the shuffle buffer's arrays and PRNG key, and the data position, so a killed run (SIGKILL, or
SIGTERM on TPU preemption, which also saves first) continues bit-identically. A SIGTERM or SIGINT during the
norm estimate saves a step-0 checkpoint holding the estimate's per-batch norms so far, and one during a buffer
fill saves between two producer chunks (`Interrupted`), so a stop is never more than a chunk or a step away.
"""

import dataclasses
import json
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from sae_jax import io as sio
from sae_jax import runinfo
from sae_jax import pod
from sae_jax.activations.buffer import BufferState, ShuffleBuffer
from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.sae.core import SAE, param_specs
from sae_jax.sae.config import SAEConfig
from sae_jax.sae.norm import batch_norm, scaling_factor
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
# Keys a resumed run may change (logs, checkpoints, progress, where the outputs and devices are): the training
# itself stays the same (a changed mesh only reorders float sums). A key ending in "." is a whole section.
HARMLESS = ("trainer.out_dir", "trainer.log_every", "trainer.checkpoint_every", "trainer.keep_checkpoints",
            "trainer.dead_window", "trainer.dense_threshold", "trainer.progress", "mesh.")


def harmless(key: str) -> bool:
  return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS)


class Interrupted(Exception):
  """Raised between two producer chunks of a buffer fill once a stop was requested: the stream's state is whole
  there (every chunk so far appended, the producer's position after it), so it can be checkpointed."""


class BatchStream:
  """Training batches from a chunk producer through the shuffle buffer, with a checkpointable position.

  `producer()` returns (acts [n, d], keep [n]) or None; `producer.position` counts chunks consumed and
  `producer.seek(position)` restores it (re-reading the token rows without running the model is cheap). `loop`:
  start the producer again at its end, as SAELens does (`ShuffleBuffer`).
  """

  def __init__(self, producer, d: int, batch_size: int, half: int, slack: int, seed: int, sharding=None,
               loop: bool = False):
    self.producer, self.batch_size, self.sharding, self.half = producer, batch_size, sharding, half
    mesh = None if sharding is None else sharding.mesh  # the buffer lives on the mesh: one global buffer in a pod
    self.buffer = ShuffleBuffer(self._produce, half=half, slack=slack, d=d, batch_size=batch_size, seed=seed,
                                rewind=(lambda: producer.seek(0)) if loop else None, mesh=mesh)
    self.batches, self.cursor = None, 0
    empty = np.zeros((half // batch_size, batch_size, d), np.float32)  # fixed shape for checkpoints
    self.empty = jnp.asarray(empty) if mesh is None else jax.device_put(
        empty, shd.logical_sharding((None, "batch", None), empty.shape, mesh))  # each batch split like the steps
    self.stop = None  # a StopSignals: a requested stop raises Interrupted between two chunks of a fill
    self.fill = None  # the Phase of the fill under way (its progress lines)

  def _produce(self):
    # One process alone must not leave a fill half done: in a pod stops wait for a step all processes agree on.
    if self.stop is not None and self.stop.requested and pod.count() == 1:
      raise Interrupted
    item = self.producer()
    if item is not None and self.fill is not None:
      self.fill.update(self.fill.done + int(np.sum(item[1])))
    return item

  def next(self) -> jax.Array:
    if self.batches is None or self.cursor >= self.batches.shape[0]:
      # The first fill (two halves; after a resume, what is pending) is a phase with its lines; later refills
      # only say something when one takes long.
      first = self.batches is None
      pending = int(self.buffer.state.count) + (self.half if bool(self.buffer.state.primed) else 0)
      with runinfo.Phase("[train] buffer fill", unit="tokens", done=pending if first else 0, quiet=not first,
                         start=f"2 halves of {self.half} tokens") as self.fill:
        self.batches, self.cursor = self.buffer.next_batches(), 0
      self.fill = None
      if self.batches is None:
        raise UserError("the activation stream ran out before training finished: add data, lower n_steps, or "
                        "set activations.loop=true")
    batch = self.batches[self.cursor]
    self.cursor += 1
    return batch if self.sharding is None else jax.device_put(batch, self.sharding)

  def state(self) -> dict:
    return {"buffer": self.buffer.state,
            "batches": self.batches if self.batches is not None else self.empty}

  def meta(self) -> dict:
    return {"cursor": self.cursor, "has_batches": self.batches is not None,
            "producer_position": int(self.producer.position), "epoch": self.buffer.epoch}

  def restore(self, state: dict, meta: dict) -> None:
    self.buffer.state = BufferState(**state["buffer"]) if isinstance(state["buffer"], dict) else state["buffer"]
    self.batches = state["batches"] if meta["has_batches"] else None
    self.cursor = meta["cursor"]
    self.producer.seek(meta["producer_position"])
    self.buffer.epoch = meta.get("epoch", 0)


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


SIGNALS = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("SIGINT", 130)}  # name, exit code (128 + n)


class StopSignals:
  """SIGTERM (TPU preemption) and SIGINT (Ctrl-C) from the first moment of a run to its last.

  While nothing can be saved (`immediate(phase)`: model load, tokenization; the splice eval after the export)
  a signal ends the run at once with one stderr line saying what is (not) saved. Once training state exists
  (`deferred()`) it is only recorded: the trainer checkpoints at the next safe point (between two producer
  chunks of a buffer fill, between two norm-estimate batches or steps) and exits with the same code.
  """

  def __init__(self):
    self.requested = None  # the signal's number once one arrived while deferred
    self.phase, self.after = "the start-up", "before the first checkpoint: nothing saved"
    self.is_deferred = False
    main = threading.current_thread() is threading.main_thread()  # Python takes handlers there only
    self.previous = {s: signal.signal(s, self._handle) for s in SIGNALS} if main else {}

  def immediate(self, phase: str, after: str = "before the first checkpoint: nothing saved") -> None:
    self.phase, self.after, self.is_deferred = phase, after, False

  def deferred(self) -> None:
    self.is_deferred = True

  def _handle(self, signum, frame):
    del frame
    if self.is_deferred:
      self.requested = signum
      return
    name, code = SIGNALS[signum]
    runinfo.say(f"{name} during {self.phase}, {self.after}; rerun the same command to go on")
    raise SystemExit(code)

  def exit(self, saved: str) -> None:
    """Ends the run after the checkpoint a requested stop asked for (`saved` says which)."""
    name, code = SIGNALS[self.requested] if self.requested else ("a stop of another process", 143)
    runinfo.say(f"{name}: {saved}; rerun the same command to resume")
    raise SystemExit(code)

  def agreed(self, check: bool) -> bool:
    """Whether to stop after this step. In a pod all processes must stop at the same step (the checkpoint is
    collective), so they agree only when `check` (every log_every steps) and stop if any was asked to."""
    if pod.count() == 1:
      return self.requested is not None
    return check and pod.any_process(self.requested is not None)

  def close(self):
    for s, handler in self.previous.items():
      signal.signal(s, handler)


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


def _run_meta(cfg: SAEConfig, opts: TrainerOptions, data: dict | None = None) -> dict:
  """The keys a checkpoint stores to check a resumed run against, `section.key` -> value as JSON sees it.

  `data`: the caller's keys that fix the activation stream (`model.*`, `data.*`, `activations.*`: see
  `runs.stream_keys`), paths already normalised; the SAE and trainer keys are added here.
  """
  keys = {**{f"sae.{k}": v for k, v in cfg.to_dict().items()},
          **{f"trainer.{k}": v for k, v in dataclasses.asdict(opts).items()}, **(data or {})}
  return json.loads(json.dumps(keys, default=str))


def _check_resume(saved: dict, cfg: SAEConfig, opts: TrainerOptions, step: int, data: dict | None = None) -> None:
  """A checkpoint resumes only under the settings it trained with; HARMLESS keys may change (said). A key one
  side lacks (a checkpoint from before it was stored, or a section that no longer applies) is not compared."""
  now = _run_meta(cfg, opts, data)
  differ = [k for k in saved if k in now and saved[k] != now[k]]
  bad = [k for k in differ if not harmless(k)]
  if bad:
    changes = "; ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in bad)
    raise UserError(f"{opts.out_dir}/checkpoints holds step {step} of a run with other settings ({changes}): "
                    "rerun with the old values, or give a new trainer.out_dir")
  if differ:
    print(f"resuming step {step} with changed {', '.join(differ)} (logging, checkpointing or device layout "
          "only: the training is the same)")


def _saved_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  try:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f"cannot read checkpoint {step} in {manager.directory}: {e}") from None


def finished(cfg: SAEConfig, opts: TrainerOptions, data: dict | None = None) -> bool:
  """True if `opts.out_dir` holds the last step of this very run (checked like a resume, before any model is
  read: a changed setting fails in a second)."""
  if not os.path.isdir(os.path.join(opts.out_dir, "checkpoints")):
    return False
  with _manager(opts, create=False) as manager:
    step = manager.latest_step()
    if step is None:
      return False
    meta = _saved_meta(manager, step)
  _check_resume(meta.get("run", {}), cfg, opts, step, data)
  return step >= cfg.n_steps


def train(cfg: SAEConfig, stream: BatchStream, opts: TrainerOptions, mesh=None, data: dict | None = None,
          stop: StopSignals | None = None) -> dict:
  """Trains (or resumes) and writes `opts.out_dir`/{checkpoints, metrics.jsonl, sae/ (SAELens format)}.

  `data`: the keys that fix the activation stream, stored and checked on resume like the SAE's (`_run_meta`).
  `stop`: the run's `StopSignals` if the caller installed them earlier (otherwise they are installed here).
  Returns the run's summary (`runs.train` writes it to result.json) plus "sae": the trained SAE in raw units (the
  norm scaling factor folded in).
  """
  if stop is not None:
    return _train(cfg, stream, opts, mesh, data, stop)
  stop = StopSignals()
  try:
    return _train(cfg, stream, opts, mesh, data, stop)
  finally:
    stop.close()


def _train(cfg: SAEConfig, stream: BatchStream, opts: TrainerOptions, mesh, data: dict | None,
           stop: StopSignals) -> dict:
  opts.check(cfg)
  os.makedirs(opts.out_dir, exist_ok=True)
  mesh = mesh or shd.make_mesh(devices=jax.devices()[:1])
  check_mesh(cfg, mesh)
  jit_step = make_jit_step(cfg, mesh)
  manager = _manager(opts)
  stop.deferred()
  stream.stop = stop
  run_meta = _run_meta(cfg, opts, data)

  with jax.default_matmul_precision(opts.matmul_precision):
    params, opt_state = init_state_fn(cfg, mesh)(jax.random.PRNGKey(cfg.seed))
    fire_steps = jax.device_put(np.zeros((cfg.d_sae,), np.int32), param_shardings(cfg, mesh)["b_enc"])
    start = manager.latest_step()
    s, norms = None, []
    if pod.count() > 1:  # every process resumes from the step process 0 found
      start = int(pod.broadcast(-1 if start is None else start))
      start = None if start < 0 else start
    if start is not None:
      _check_resume(_saved_meta(manager, start).get("run", {}), cfg, opts, start, data)
      state = {"params": params, "opt_state": opt_state, "fire_steps": fire_steps, "stream": stream.state()}
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      try:
        restored = manager.restore(start, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 (Orbax and TensorStore raise bare Exceptions for damaged files)
        raise UserError(f"checkpoint {start} in {opts.out_dir}/checkpoints is damaged "
                        f"({str(e).strip().splitlines()[0][:160]}): delete {opts.out_dir}/checkpoints/{start} to "
                        "resume from the one before, or give a new trainer.out_dir") from None
      state, meta = restored["state"], restored["meta"]
      params, opt_state, fire_steps = state["params"], state["opt_state"], state["fire_steps"]
      stream.restore(state["stream"], meta["stream"])
      s, norms = meta["norm_scaling_factor"], list(meta.get("norm_estimate", []))
      print(f"resumed from step {start} in {opts.out_dir}/checkpoints")
    else:
      start = 0

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
      meta = {"stream": stream.meta(), "norm_scaling_factor": s, "config": cfg.to_dict(), "run": run_meta}
      if s is None:  # stopped during the norm estimate: the norms so far, to go on from
        meta["norm_estimate"] = norms
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
      manager.wait_until_finished()

    if s is None:
      try:
        s = _estimate_scale(cfg, stream, norms, stop)
      except Interrupted:
        if manager.latest_step() == 0:  # the estimate's earlier stop: this one got further
          manager.delete(0)
        save(0)
        stop.exit(f"saved the norm estimate ({len(norms)}/{cfg.n_batches_for_norm_estimate} batches) and the "
                  f"data position to {opts.out_dir}/checkpoints")
    s32 = np.float32(s)  # host scalars (not one process's device arrays) beside the global ones

    log = MetricsLog(opts.out_dir, start)
    window, last = [], None
    progress = _progress(opts.progress, start, cfg.n_steps)
    t0 = time.time()

    def stop_after(done: int) -> None:
      """Logs and saves what `done` steps did (unless that step is saved), then exits as the stop asks."""
      if window:
        _log_window(window, done - 1, fire_steps, opts, log, cfg.batch_size, good_checkpoint)
      if manager.latest_step() != done:
        save(done)
      stop.exit(f"saved step {done} to {opts.out_dir}/checkpoints")

    try:
      for step in range(start, cfg.n_steps):
        try:
          x = stream.next()
        except Interrupted:  # during a buffer refill
          stop_after(step)
        params, opt_state, metrics, fire_steps = pod.pace(jit_step(params, opt_state, np.int32(step), x, s32,
                                                                   fire_steps))
        window.append(metrics)
        done = step + 1
        if done % opts.log_every == 0 or done == cfg.n_steps:
          last = _log_window(window, step, fire_steps, opts, log, cfg.batch_size, good_checkpoint)
          window = []
          progress.set_postfix(loss=f"{last['loss']:.3g}", l0=f"{last['l0']:.1f}",
                               ev=f"{last['explained_variance']:.3f}")
        progress.update(1)
        if stop.agreed(done % opts.log_every == 0):  # in a pod: at a log step, where the processes agree
          stop_after(done)
        if done % opts.checkpoint_every == 0 or done == cfg.n_steps:  # the last too: a rerun of a done run
          if window:                                                   # is a no-op
            last = _log_window(window, step, fire_steps, opts, log, cfg.batch_size, good_checkpoint)
            window = []
          save(done)
      if stop.agreed(True):  # arrived during the last save: it is saved
        stop_after(cfg.n_steps)
    finally:
      progress.close()
      log.close()

    sae = SAE(params, cfg, "scaled", s).raw().numpy()
  sae_dir = os.path.join(opts.out_dir, "sae")
  if pod.is_writer():
    sae_dir = save_saelens(sae_dir, sae)
  manager.close()
  result = {"steps": cfg.n_steps, "norm_scaling_factor": s, "seconds": round(time.time() - t0, 1),
            "tokens_per_second": round((cfg.n_steps - start) * cfg.batch_size / max(time.time() - t0, 1e-9)),
            "sae_dir": sae_dir, **(last or {})}
  return {"sae": sae, **result}


def _estimate_scale(cfg: SAEConfig, stream: BatchStream, norms: list, stop: StopSignals) -> float:
  """The norm scaling factor from `cfg.n_batches_for_norm_estimate` training batches (SAELens draws them from
  the training stream too). `norms` holds the per-batch norms so far (a resumed estimate's) and grows in place,
  so a stop (`Interrupted`, between two batches or inside a fill) leaves what to save."""
  if cfg.normalize_activations == "none":
    return 1.0
  n = cfg.n_batches_for_norm_estimate
  with runinfo.Phase("[train] norm estimate", total=n, unit="batches", done=len(norms),
                     start=f"{cfg.norm_estimate} mode, batches of {cfg.batch_size} tokens") as phase:
    while len(norms) < n:
      if stop.requested and pod.count() == 1:  # in a pod a stop waits for the first agreed step
        raise Interrupted
      norms.append(batch_norm(stream.next(), cfg.norm_estimate))
      phase.update(len(norms))
    s = scaling_factor(norms, cfg.d_in)
    phase.result = f"scaling factor {s:.6g}"
  return s


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
