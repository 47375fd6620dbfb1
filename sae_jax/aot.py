"""Ahead-of-time compilation of the pipeline's jitted steps for a Cloud TPU topology, on a machine without TPUs.

Renting a pod to find out that the model does not fit is slow and costly. With `libtpu` installed,
`jax.experimental.topologies` gives compile-only TPU devices; each stage's real step function is lowered with
abstract inputs (`jax.ShapeDtypeStruct` with the shardings the run uses) and compiled for them, and XLA's memory
and cost analyses say how many bytes each device holds during a step and how much work a step is. No weights
are read: model shapes come from `peek_config` (config.json, GGUF metadata, or `KNOWN_HF_CONFIGS`).

Byte counts are per device and include TPU tile padding. A stage's `total` is what the step needs on a device
at once, counted on the safe side: the larger of XLA's buffer-assignment peak (`xla_peak`) and the buffer sum
arguments + outputs - outputs aliased to donated arguments + temporaries, plus the generated code. (The peak
can be lower, as temporaries reuse dead arguments; for some TPU executables XLA reports `temps` as 0 and only
the peak counts them.)
"""

import os
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from sae_jax import paper
from sae_jax.errors import UserError
from sae_jax.models import sharding as shd

LIBTPU_REQUIREMENT = "libtpu==0.0.42.1"  # the libtpu jax 0.10.2 is built against (requirements.txt)
STAGES = ("collect", "train_sae", "reason_score")
GIB = 2**30
# HBM per device (one chip; v4 is compiled as megacore, one device per chip), by `device.device_kind`.
HBM_BYTES = {"TPU v4": 32 * GIB, "TPU v5 lite": 16 * GIB, "TPU v5": 95 * GIB, "TPU v6 lite": 32 * GIB}
TIGHT = 0.95  # a plan using more of the nominal HBM than this is flagged: the runtime keeps some for itself
TOPOLOGY_EXAMPLES = "v5e:2x2, v5e:4x4, v4:2x2x1, v5p:2x2x1, v6e:2x2"
# Which mesh axes shrink each stage's per-device bytes (sharding.LOGICAL_RULES): the model weights shard on
# fsdp (embed) and model (heads, mlp, vocab); the SAE's latents only on model; fsdp and data split tokens.
_ADVICE = {"collect": "shard the model weights: raise --config.mesh.fsdp (or --config.mesh.model)",
           "train_sae": "shard the SAE latents: raise --config.mesh.model",
           "reason_score": "shard the SAE latents: raise --config.mesh.model"}
_RUN_ADVICE = {"train_sae.py": "raise --config.mesh.model (splits the SAE latents and the model weights), or "
                               "lower trainer.buffer_half_tokens: the shuffle buffer sits whole on the first device",
               "reason_score.py": "raise --config.mesh.model (splits the SAE latents and the model weights)"}


def topology_devices(name: str) -> list:
  """Compile-only devices of a TPU topology such as "v5e:2x2" (libtpu must be installed, no TPU needed)."""
  if not _libtpu_installed():
    raise UserError(f"AOT compilation for TPUs needs libtpu: pip install '{LIBTPU_REQUIREMENT}'")
  # Off a TPU VM libtpu asks the metadata server for these and logs warnings; any valid values quiet it.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # Compile-only use touches no chip, so skip libtpu's one-process-per-host lock (/tmp/libtpu_lockfile): any
  # JAX process started without JAX_PLATFORMS=cpu holds it while it lives, and parallel plans would collide.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  # A v4 chip has two TensorCores; JAX on a v4 VM drives each chip as one "megacore" device.
  kwargs = {"chip_config_name": "megacore"} if name.lower().startswith("v4") else {}
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs).devices)
  except Exception as e:  # libtpu raises JaxRuntimeError (INVALID_ARGUMENT / NOT_FOUND) for bad names
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"unknown TPU topology {name!r} (expected e.g. {TOPOLOGY_EXAMPLES}): {reason}") from None


def _libtpu_installed() -> bool:
  import importlib.util
  return importlib.util.find_spec("libtpu") is not None or bool(os.environ.get("TPU_LIBRARY_PATH"))


def hbm_bytes(device) -> int | None:
  """HBM of one device of this kind, or None for a kind not in `HBM_BYTES`."""
  return HBM_BYTES.get(device.device_kind)


def timed_compile(jitted, *args):
  """(compiled, seconds): `jitted` lowered for `args` (ShapeDtypeStructs) and compiled."""
  start = time.time()
  compiled = jitted.lower(*args).compile()
  return compiled, time.time() - start


def stage_stats(compile_fn, hbm: int | None = None) -> dict:
  """Runs `compile_fn() -> (compiled, seconds)` and reads XLA's memory and cost analyses (see `compiled_stats`).

  XLA refuses to compile a program whose buffers exceed the device's HBM; that is reported as not fitting,
  with XLA's message, instead of raised.
  """
  start = time.time()
  try:
    compiled, seconds = compile_fn()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return {"compile_seconds": round(time.time() - start, 2), "bytes_per_device": None, "flops_per_device": None,
            "bytes_accessed_per_device": None, **_fit(None, hbm), "xla_error": str(e).strip().splitlines()[0]}
  return compiled_stats(compiled, seconds, hbm)


def compiled_stats(compiled, seconds: float, hbm: int | None = None) -> dict:
  """Compile time, per-device bytes (`total`: see the module doc), fit in `hbm`, flops and bytes accessed."""
  m = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
  per_device = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
                "aliased": m.alias_size_in_bytes, "temps": m.temp_size_in_bytes,
                "generated_code": m.generated_code_size_in_bytes}
  per_device["xla_peak"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
  summed = per_device["arguments"] + per_device["outputs"] - per_device["aliased"] + per_device["temps"]
  per_device["total"] = max(per_device["xla_peak"], summed) + per_device["generated_code"]
  return {"compile_seconds": round(seconds, 2), "bytes_per_device": per_device,
          "flops_per_device": float(cost.get("flops", 0.0)),
          "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
          **_fit(per_device["total"], hbm)}


def _fit(total: int | None, hbm: int | None) -> dict:
  """`fits` compares with the nominal HBM (None: unknown chip); total None: XLA refused the program for lack of
  HBM. `hbm_used` above TIGHT leaves no room for the runtime's own reserve (XLA allows 15.75 GiB on a v5e)."""
  out = {"hbm_per_device": hbm if hbm is not None else "unknown",
         "fits": False if total is None else (None if hbm is None else bool(total <= hbm))}
  if total is not None and hbm is not None:
    out["hbm_used"] = round(total / hbm, 3)
  return out


def _sds(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def _replicated(mesh):
  return NamedSharding(mesh, PartitionSpec())


# ---- the stages: abstract inputs with the run's shardings, and the step the run jits ----


def compile_collect(model_cfg, dtype, layer: int, site: str, batch_rows: int, context_size: int, mesh):
  """(compiled, seconds): `make_site_fn`'s forward on [batch_rows, context_size] tokens, every weight an argument.

  The run holds the whole model on the devices though the step reads layers 0..layer only, so the step is
  wrapped with keep_unused=True: XLA's argument bytes are then the resident weights.
  """
  from sae_jax.activations.collect import site_forward
  from sae_jax.models.loading import abstract_model
  shd.check_batch_splits(batch_rows, mesh, "a model batch (data.store_batch_rows)")
  graphdef, state = abstract_model(model_cfg, dtype, mesh)
  run = site_forward(model_cfg, graphdef, layer, site, mesh)
  tokens = _sds((batch_rows, context_size), jnp.int32, shd.batch_sharding(mesh, 2))
  return timed_compile(jax.jit(lambda state, tokens: run(state, tokens), keep_unused=True), state, tokens)


def compile_train_sae(sae_cfg, mesh):
  """(compiled, seconds): the trainer's donated step (`trainer.make_jit_step`), its state placed as the trainer's
  init places it (`trainer.state_shardings`; tests/test_trainer.py checks that later steps keep it)."""
  from sae_jax.sae import init_train_state
  from sae_jax.sae.trainer import make_jit_step, param_shardings, state_shardings
  rep = _replicated(mesh)
  shapes = jax.eval_shape(lambda k: init_train_state(sae_cfg, k), jax.random.PRNGKey(0))
  params, opt_state = jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), shapes, state_shardings(sae_cfg, mesh))
  fire_steps = _sds((sae_cfg.d_sae,), jnp.int32, param_shardings(sae_cfg, mesh)["b_enc"])
  x = _sds((sae_cfg.batch_size, sae_cfg.d_in), jnp.float32, shd.batch_sharding(mesh, 2))
  return timed_compile(make_jit_step(sae_cfg, mesh), params, opt_state, _sds((), jnp.int32, rep), x,
                       _sds((), jnp.float32, rep), fire_steps)


def compile_reason_score(sae_cfg, batch_rows: int, context_size: int, mesh, vocab=None):
  """(compiled, seconds): the ReasonScore accumulator's donated step on one batch of site activations.

  `vocab` defaults to the paper's strings with made-up ids (`placeholder_vocabulary`): the step's shapes and
  work depend on how many strings there are and their lengths, not on the ids.
  """
  from sae_jax.features.reasonscore import abstract_step_args, make_step
  shd.check_batch_splits(batch_rows, mesh, "a ReasonScore batch (data.store_batch_rows)")
  vocab = vocab or placeholder_vocabulary()
  step = jax.jit(make_step(vocab, mesh=mesh), donate_argnums=(0,))
  with jax.default_matmul_precision("highest"):  # ReasonScoreAccumulator's default
    return timed_compile(step, *abstract_step_args(vocab, sae_cfg, batch_rows, context_size, mesh))


def placeholder_vocabulary():
  """The paper's reasoning strings, each word one made-up token id (" let me" two)."""
  from sae_jax.features.vocab import Vocabulary
  return Vocabulary(paper.REASON_STRINGS, tuple(tuple(range(10 * i, 10 * i + len(s.split())))
                                                for i, s in enumerate(paper.REASON_STRINGS)))


# ---- a whole config ----


def plan(c, devices, stages=STAGES) -> dict:
  """Compiles `stages` of the run config `c` (configs/*.py) for `devices` (from `topology_devices`).

  The mesh is `c.mesh` over those devices. Returns per stage the compile time, per-device bytes, whether
  they fit the chip's HBM, and flops / bytes accessed per step; `runs` adds up the stages a launch script
  keeps on the devices together.
  """
  from sae_jax.runs import section
  unknown = [s for s in stages if s not in STAGES]
  if unknown or not stages:
    raise UserError(f"unknown stages {unknown}: expected some of {list(STAGES)}")
  try:
    mesh = section(c, "mesh").make(devices)
  except UserError as e:
    raise UserError(f"{e} on the topology: set --config.mesh.data/fsdp/model (one may be -1)") from None
  hbm = hbm_bytes(devices[0])
  sae_cfg, model, data = section(c, "sae"), section(c, "model"), section(c, "data")
  rows, context = data.store_batch_rows, data.context_size
  out = {"devices": len(devices), "device_kind": devices[0].device_kind,
         "hbm_per_device": hbm if hbm is not None else "unknown",
         "mesh": {k: int(v) for k, v in mesh.shape.items()}}
  done = {}
  if "collect" in stages:
    if not model.path:
      raise UserError("config.model.path is empty: the collect stage needs the model (--config.model.path)")
    model_cfg = model.peek()
    if model_cfg is None:
      raise UserError(f"the shape of model {model.path!r} is unknown offline: pass a local HF dir, converted "
                      f"checkpoint dir or .gguf file as --config.model.path (known hub ids: "
                      f"{', '.join(_known_ids())})")
    sae_cfg.check_width(model_cfg.hidden_size)
    out["model"] = {"source": model.path, "dtype": model.dtype, "hidden_size": model_cfg.hidden_size,
                    "num_layers": model_cfg.num_layers}
    done["collect"] = {"tokens_per_step": rows * context, **stage_stats(lambda: compile_collect(
        model_cfg, jnp.dtype(model.dtype), sae_cfg.hook_layer, sae_cfg.hook_site, rows, context, mesh), hbm)}
  if "train_sae" in stages:
    from sae_jax.sae.trainer import check_mesh
    check_mesh(sae_cfg, mesh)
    with jax.default_matmul_precision(section(c, "trainer").matmul_precision):
      done["train_sae"] = {"tokens_per_step": sae_cfg.batch_size,
                           **stage_stats(lambda: compile_train_sae(sae_cfg, mesh), hbm)}
  if "reason_score" in stages:
    done["reason_score"] = {"tokens_per_step": rows * context, **stage_stats(
        lambda: compile_reason_score(sae_cfg, rows, context, mesh), hbm)}
  for name, stage in done.items():
    if stage["fits"] is False:
      stage["advice"] = _ADVICE[name]
  return {**out, "stages": done, "runs": runs(done, sae_cfg, hbm, data, section(c, "trainer"),
                                             from_cache=bool(section(c, "activations").cache_dir))}


def runs(stages: dict, sae_cfg, hbm, data, trainer, from_cache: bool = False) -> dict:
  """Per-device bytes of the launch scripts that keep several stages' state on the devices at once.

  Each stage's arguments (weights, SAE state) stay resident; the step running adds its outputs, temporaries
  and code, so the estimate is the sum of arguments plus the largest such extra. train_sae.py also keeps the
  shuffle buffer (activations.buffer) unsharded on the first device: store, pending, served batches and the
  trainer's empty copy for checkpoints, float32 (pending's slack is one model batch; from a cache it is a shard).
  """
  out = {}

  def combine(names, extra=0):
    parts = [stages[n]["bytes_per_device"] for n in names]
    if None in parts:  # a stage that XLA could not fit
      return {"stages": list(names), "bytes_per_device": None, **_fit(None, hbm)}
    total = sum(p["arguments"] for p in parts) + max(p["total"] - p["arguments"] for p in parts) + extra
    return {"stages": list(names), "bytes_per_device": int(total), **_fit(total, hbm)}

  train = [n for n in (() if from_cache else ("collect",)) + ("train_sae",) if n in stages]
  if "train_sae" in train:
    half, slack = trainer.buffer_half_tokens, data.store_batch_rows * data.context_size
    served = half // sae_cfg.batch_size * sae_cfg.batch_size
    buffer = (half + (half + slack) + 2 * served) * sae_cfg.d_in * 4
    out["train_sae.py"] = {**combine(train, buffer), "shuffle_buffer_bytes_device0": buffer,
                           "model_on_device": train[0] == "collect"}
  if "collect" in stages and "reason_score" in stages:
    out["reason_score.py"] = combine(("collect", "reason_score"))
  for name, run in out.items():
    if run["fits"] is False:
      run["advice"] = _RUN_ADVICE[name]
  return out


def fit_warnings(report: dict) -> list[str]:
  """One line per stage or script of a `plan` report that does not fit, or fits only just, with its advice."""
  lines = []
  for name, part in [*report["stages"].items(), *report["runs"].items()]:
    if part["fits"] is False:
      need = part["bytes_per_device"]
      need = need["total"] if isinstance(need, dict) else need
      why = (f"{need / GIB:.2f} GiB per device > {part['hbm_per_device'] / GIB:.0f} GiB HBM" if need
             else part.get("xla_error", "a stage it needs does not fit"))
      lines.append(f"{name} does not fit: {why}; {part['advice']}")
    elif part.get("hbm_used", 0) > TIGHT:
      lines.append(f"{name} fits only just: {part['hbm_used']:.0%} of the nominal HBM, and the runtime keeps some "
                   "for itself")
  return lines


def _known_ids():
  from sae_jax.models.config import KNOWN_HF_CONFIGS
  return sorted(KNOWN_HF_CONFIGS)
