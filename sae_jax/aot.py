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

Every stage also gets an estimated step time (`step_time`: the roofline of XLA's flops and bytes against the
chip's peak, `PEAK`), tokens/s, MFU, and the wall time and chip-hours of the config's whole run (`full_run`:
819.2M training tokens for the paper's SAE, the extraction set for ReasonScore, the benchmarks for evaluate).

The `evaluate` stage is the sampling engine's steered decode step (`inference.decode_step` with the steering hook
and the sampler folded in) on the eval config's slots and KV cache. Beside bytes and fit it estimates the step's
time from XLA's cost analysis against the chip's peak (`PEAK`), the largest number of slots that fits, and the
wall time of the paper's three benchmarks (see `evaluate_stage`).
"""

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from sae_jax import paper
from sae_jax.errors import UserError
from sae_jax.models import sharding as shd

LIBTPU_REQUIREMENT = "libtpu==0.0.42.1"  # the libtpu jax 0.10.2 is built against (requirements.txt)
STAGES = ("collect", "train_sae", "reason_score", "evaluate")
GIB = 2**30
# HBM per device (one chip; v4 is compiled as megacore, one device per chip), by `device.device_kind`.
HBM_BYTES = {"TPU v4": 32 * GIB, "TPU v5 lite": 16 * GIB, "TPU v5": 95 * GIB, "TPU v6 lite": 32 * GIB}
# (peak bf16 flop/s, HBM bytes/s) of one chip, from the Cloud TPU system architecture pages
# (https://cloud.google.com/tpu/docs/v4, .../v5e, .../v5p, .../v6e): v4 275 TFLOPs and 1,200 GBps, v5e 197 TFLOPs
# and 819 GBps, v5p 459 TFLOPs and 2,765 GBps, v6e 918 TFLOPs and 1,640 GBps. One device is one chip (see above).
PEAK = {"TPU v4": (275e12, 1200e9), "TPU v5 lite": (197e12, 819e9), "TPU v5": (459e12, 2765e9),
        "TPU v6 lite": (918e12, 1640e9)}
# The paper's benchmarks at k = 1 (sae_jax.evals.tasks): AIME 2024, MATH-500, GPQA Diamond.
PAPER_BENCHMARKS = {"aime24": 30, "math500": 500, "gpqa_diamond": 198}
MEAN_NEW_TOKENS = 8192  # assumed mean generated tokens per sample for the wall-time estimate (see evaluate_stage)
MAX_AUTO_SLOTS = 64  # engine.slots = 0: the engine takes as many slots as memory holds, at most this many
TIGHT = 0.95  # a plan using more of the nominal HBM than this is flagged: the runtime keeps some for itself
TOPOLOGY_EXAMPLES = "v5e:2x2, v5e:4x4, v4:2x2x1, v5p:2x2x1, v6e:2x2"
# Which mesh axes shrink each stage's per-device bytes (sharding.LOGICAL_RULES): the model weights shard on
# fsdp (embed) and model (heads, mlp, vocab); the SAE's latents only on model; fsdp and data split tokens.
_ADVICE = {"collect": "shard the model weights: raise --config.mesh.fsdp (or --config.mesh.model)",
           "train_sae": "shard the SAE latents: raise --config.mesh.model",
           "reason_score": "shard the SAE latents: raise --config.mesh.model",
           "evaluate": "shard the weights and the KV heads: raise --config.mesh.model (up to the model's KV "
                       "heads), or lower engine.slots or engine.max_len"}
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


def timed_compile(jitted, *args, **static):
  """(compiled, seconds): `jitted` lowered for `args` (ShapeDtypeStructs; `static`: its static keyword args) and
  compiled."""
  start = time.time()
  compiled = jitted.lower(*args, **static).compile()
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
  from sae_jax.models.inference import site_forward
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


def abstract_decode_args(model_cfg, dtype, slots: int, max_len: int, mesh, n_features: int = 1) -> tuple:
  """(cache, tokens, active, hook_args, sampler_args) of the engine's decode step as ShapeDtypeStructs, placed as
  the engine places them: the KV cache on `inference.cache_shardings` in the model dtype (the engine's cache dtype
  on TPU), per-slot arrays on the data axes, the steering args ([] switch, n features of width d) replicated."""
  from sae_jax.generation.sampling import SamplerArgs
  from sae_jax.models.inference import cache_shardings
  from sae_jax.models.transformer import KVCache
  from sae_jax.steering import SteeringArgs
  place = cache_shardings(model_cfg, mesh, slots, max_len)
  kv = KVCache.kv_shape(model_cfg, slots, max_len)
  cache = KVCache(k=tuple(_sds(kv, dtype, s) for s in place.k), v=tuple(_sds(kv, dtype, s) for s in place.v),
                  valid=_sds((slots, max_len), bool, place.valid), offset=_sds((slots,), jnp.int32, place.offset))

  def per_slot(dtype_, *tail):
    return _sds((slots, *tail), dtype_, shd.logical_sharding(("batch",), (slots, *tail), mesh))

  rep, n, d = _replicated(mesh), n_features, model_cfg.hidden_size
  hook_args = SteeringArgs(enabled=_sds((), bool, rep), w_dec=_sds((n, d), jnp.float32, rep),
                           target=_sds((n,), jnp.float32, rep), w_enc=_sds((n, d), jnp.float32, rep),
                           b_enc=_sds((n,), jnp.float32, rep))
  sampler_args = SamplerArgs(temperature=per_slot(jnp.float32), top_p=per_slot(jnp.float32),
                             top_k=per_slot(jnp.int32), key=per_slot(jnp.uint32, 2), step=per_slot(jnp.int32))
  return cache, per_slot(jnp.int32), per_slot(bool), hook_args, sampler_args


@functools.lru_cache(maxsize=32)  # compiled programs hold no weights; the search and the stage share compiles
def compile_evaluate(model_cfg, dtype, slots: int, max_len: int, steering_plan, mesh, n_features: int = 1):
  """(compiled, seconds): the engine's donated decode step (`inference.decode_step` with `steering_plan` as its
  hook factory, None: unsteered, and `sampling.sample` folded in) on `slots` rows of a `max_len`-token KV cache."""
  from sae_jax.generation import sampling
  from sae_jax.models.inference import decode_step
  from sae_jax.models.loading import abstract_model
  graphdef, state = abstract_model(model_cfg, dtype, mesh)
  cache, tokens, active, hook_args, sampler_args = abstract_decode_args(model_cfg, dtype, slots, max_len, mesh,
                                                                        n_features)
  args = (cache, tokens, active, None if steering_plan is None else hook_args, sampler_args)
  return timed_compile(decode_step, graphdef, state, *args, make_hooks=steering_plan, sampler=sampling.sample)


def step_time(stats: dict, device_kind: str) -> dict:
  """Estimated seconds per step of a compiled stage, by the roofline of one device (`PEAK`).

  `xla_seconds` = max(flops / peak flop/s, bytes accessed / HBM bandwidth) from XLA's cost analysis. Those
  `bytes accessed` add up every op's operands and results as XLA schedules them (a cache update done in place
  counts its whole buffer), and are no plain sum of reads: 26.0 GB per device at 8 and at 26 slots of the paper's
  model on v5e:2x4, model=8. `floor_seconds` = max(flops / peak, argument bytes / bandwidth): every resident byte
  (weights, the whole cache, which attention reads to max_len) read once. `seconds` is the larger of the two;
  decode is memory-bound. None of them counts collectives over ICI or the host's work between steps.
  `mfu` = (flops per device x devices) / (seconds x devices x peak) = compute_seconds / seconds: the share of
  the chips' peak the step reaches at that estimate, by XLA's flop count (an upper bound on the real MFU).
  """
  peak = PEAK.get(device_kind)
  if peak is None or stats.get("bytes_per_device") is None:
    return {"seconds": None, "xla_seconds": None, "floor_seconds": None, "bound": None, "mfu": None}
  flops_s = stats["flops_per_device"] / peak[0]
  bytes_s = stats["bytes_accessed_per_device"] / peak[1]
  floor = max(flops_s, stats["bytes_per_device"]["arguments"] / peak[1])
  seconds = max(flops_s, bytes_s, floor)
  return {"seconds": seconds, "xla_seconds": max(flops_s, bytes_s), "floor_seconds": floor,
          "bound": "compute" if flops_s >= max(bytes_s, floor) else "memory", "compute_seconds": flops_s,
          "memory_seconds": bytes_s, "peak_flops_per_second": peak[0], "hbm_bytes_per_second": peak[1],
          "mfu": round(flops_s / seconds, 4) if seconds else None}


def kv_cache_bytes_per_slot(model_cfg, max_len: int, dtype) -> int:
  """Bytes of one slot's KV cache over all devices: keys and values of every layer, the validity mask and the
  write offset."""
  return 2 * model_cfg.num_layers * max_len * model_cfg.num_kv_heads * model_cfg.head_dim * \
      jnp.dtype(dtype).itemsize + max_len + 4


def benchmark_time(step_seconds: dict, slots: int, samples: int, mean_new_tokens: int, max_new_tokens: int,
                   settings: int = 1) -> dict:
  """Wall time of `samples` samples per setting decoded on `slots` slots, at the estimated step time.

  Continuous batching keeps every slot busy, so a setting takes samples x mean_new_tokens / slots steps; a step
  costs the same however full the cache is (attention reads every row to max_len). Prefill is neglected: one
  forward per prompt of at most ~2k tokens, ~2 x params x tokens flops, under a minute per setting on any of these
  topologies. The drain at the end (fewer busy slots) adds at most max_new_tokens steps (`drain_hours_max`).
  """
  steps = math.ceil(samples * mean_new_tokens / slots)
  hours = lambda s: None if s is None else round(steps * s / 3600, 2)  # noqa: E731
  out = {"samples_per_setting": samples, "mean_new_tokens": mean_new_tokens, "decode_steps_per_setting": steps,
         "hours_per_setting": hours(step_seconds["seconds"]),
         "hours_per_setting_floor": hours(step_seconds["floor_seconds"]), "settings": settings,
         "hours_all_settings": None if step_seconds["seconds"] is None else
         round(settings * steps * step_seconds["seconds"] / 3600, 2),
         "drain_hours_max": None if step_seconds["seconds"] is None else
         round(max_new_tokens * step_seconds["seconds"] / 3600, 2),
         "prefill": "neglected"}
  if step_seconds["seconds"]:
    out["tokens_per_second"] = round(slots / step_seconds["seconds"], 1)
  return out


def evaluate_stage(model_cfg, dtype, mesh, hbm: int | None, slots: int, max_len: int, steering_plan,
                   n_features: int = 1, samples: int = sum(PAPER_BENCHMARKS.values()), settings: int = 1,
                   mean_new_tokens: int = MEAN_NEW_TOKENS, max_new_tokens: int | None = None, search: bool = True,
                   log=None) -> dict:
  """The evaluate stage: the steered decode step compiled at `slots` (0: the largest that fits, at most
  MAX_AUTO_SLOTS as the engine caps it), its bytes, fit and step time, the largest slot count that fits, and
  the benchmarks' wall time at the stage's slots.

  The largest fit is searched over multiples of the data shards (slots split over data x fsdp): from the bytes
  of a count that fits, the remaining room at TIGHT x HBM is filled at the cache's bytes per slot, and the
  count found compiled to confirm, the line through the measured counts refining it (`_max_slots`; 2-3
  compiles). `search=False` skips this when `slots` is given.
  """
  device_kind = mesh.devices.flat[0].device_kind
  shards = shd.data_shards(mesh)
  if slots:
    shd.check_batch_splits(slots, mesh, "the decode batch (engine.slots)")
  compiled = {}

  def at(n):
    if n not in compiled:
      start = time.time()
      compiled[n] = stage_stats(lambda: compile_evaluate(model_cfg, dtype, n, max_len, steering_plan, mesh,
                                                         n_features), hbm)
      if log:
        log(f"evaluate: {n} slots compiled in {time.time() - start:.0f} s")
    return compiled[n]

  def total(n):
    b = at(n)["bytes_per_device"]
    return None if b is None else b["total"]

  found = None
  if hbm is not None and (search or not slots):
    found = _max_slots(at, total, shards, hbm, slots, _cache_bytes_per_slot_per_device(model_cfg, dtype, max_len,
                                                                                       mesh))
  if found is not None and found["slots"]:
    found.setdefault("bytes_per_device", total(found["slots"]))
    found.setdefault("hbm_used", round(total(found["slots"]) / hbm, 3))
  if not slots:
    slots = min(found["slots"], MAX_AUTO_SLOTS // shards * shards) if found and found["slots"] else shards
  stats = at(slots)
  if found is not None:  # every slot count compiled: per-device total bytes (None: XLA refused it)
    found["compiled"] = {str(n): total(n) for n in sorted(compiled)}
  timing = step_time(stats, device_kind)
  return {"slots": slots, "max_len": max_len, "cache_dtype": jnp.dtype(dtype).name,
          "kv_cache_bytes_per_slot": kv_cache_bytes_per_slot(model_cfg, max_len, dtype),
          "tokens_per_step": slots, **stats, "step_seconds": timing, "max_slots": found,
          "benchmarks": benchmark_time(timing, slots, samples, mean_new_tokens, max_new_tokens or max_len, settings)}


def _max_slots(at, total, shards: int, hbm: int, slots: int, cache_per_slot: float) -> dict:
  """{"slots": the largest multiple of `shards` whose step fits TIGHT x `hbm` (0: not even `shards`), and the
  measured per-device bytes per slot}.

  From a count that fits (`slots`, else `shards`), the next guess spends the remaining budget at
  `cache_per_slot` per-device bytes per slot (the KV cache's shards); once two counts are compiled, the line
  through the two largest replaces it (the step's per-slot temporaries and tile padding included). A few
  compiles at most.
  """
  budget = TIGHT * hbm
  fits = lambda n: total(n) is not None and total(n) <= budget  # noqa: E731
  out = {"budget_bytes_per_device": int(budget), "slots": 0}
  best, ceiling, per_slot = None, None, None  # ceiling: the smallest count known not to fit
  for n in ([slots] if slots > shards else []) + [shards]:
    if fits(n):
      best = n
      break
    ceiling = n
  if best is None:
    return out
  tried, slope = [best], cache_per_slot
  for _ in range(4):
    guess = best + int((budget - total(best)) / slope) // shards * shards
    if ceiling is not None:
      guess = min(guess, ceiling - shards)
    if guess <= best or guess in tried:
      break
    tried.append(guess)
    if fits(guess):
      best = guess
    else:
      ceiling = guess if ceiling is None else min(ceiling, guess)
    known = sorted(n for n in tried if total(n) is not None)
    if len(known) > 1 and total(known[-1]) > total(known[-2]):
      per_slot = slope = (total(known[-1]) - total(known[-2])) / (known[-1] - known[-2])
  return {**out, "slots": best, "bytes_per_slot_per_device": None if per_slot is None else int(per_slot)}


def _cache_bytes_per_slot_per_device(model_cfg, dtype, max_len: int, mesh) -> float:
  """Per-device bytes one more slot per data shard adds to the KV cache, from its shardings (no tile padding)."""
  from sae_jax.models.inference import cache_shardings
  from sae_jax.models.transformer import KVCache
  shards = shd.data_shards(mesh)

  def per_device(slots):
    place = cache_shardings(model_cfg, mesh, slots, max_len)
    kv = KVCache.kv_shape(model_cfg, slots, max_len)
    shapes = [(s.shard_shape(kv), jnp.dtype(dtype).itemsize) for s in (*place.k, *place.v)]
    shapes += [(place.valid.shard_shape((slots, max_len)), 1), (place.offset.shard_shape((slots,)), 4)]
    return sum(math.prod(shape) * size for shape, size in shapes)

  return (per_device(2 * shards) - per_device(shards)) / shards


# ---- a whole config ----


def plan(c, devices, stages=STAGES, mean_new_tokens: int = MEAN_NEW_TOKENS, log=None) -> dict:
  """Compiles `stages` of the run config `c` (configs/*.py) for `devices` (from `topology_devices`).

  The mesh is `c.mesh` over those devices. Returns per stage the compile time, per-device bytes, whether
  they fit the chip's HBM, and flops / bytes accessed per step; `runs` adds up the stages a launch script
  keeps on the devices together. `evaluate` (sections model, engine, sampling, steering) adds the step time,
  the largest slot count that fits and the benchmarks' wall time at `mean_new_tokens` per sample
  (`evaluate_stage`); the other stages read sae, data, trainer and activations.
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
  model = section(c, "model")
  out = {"devices": len(devices), "device_kind": devices[0].device_kind,
         "hbm_per_device": hbm if hbm is not None else "unknown",
         "mesh": {k: int(v) for k, v in mesh.shape.items()}}
  done = {}
  pipeline = [s for s in stages if s != "evaluate"]
  if pipeline:
    sae_cfg, data = section(c, "sae"), section(c, "data")
    rows, context = data.store_batch_rows, data.context_size
  if "collect" in stages:
    model_cfg = _peek(model, "collect", out)
    sae_cfg.check_width(model_cfg.hidden_size)
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
  if "evaluate" in stages:
    done["evaluate"] = _evaluate_from_config(c, model, _peek(model, "evaluate", out), mesh, hbm, mean_new_tokens,
                                             log)
  for name, stage in done.items():
    if stage["fits"] is False:
      stage["advice"] = _ADVICE[name]
    if name != "evaluate":
      stage["step_seconds"] = step_time(stage, out["device_kind"])
      seconds = stage["step_seconds"]["seconds"]
      stage["tokens_per_second"] = round(stage["tokens_per_step"] / seconds) if seconds else None
  report = {**out, "stages": done, "runs": {}}
  if pipeline:
    report["runs"] = runs(done, sae_cfg, hbm, data, section(c, "trainer"),
                          from_cache=bool(section(c, "activations").cache_dir))
  full_run(report, sae_cfg if pipeline else None, data if pipeline else None)
  return report


def full_run(report: dict, sae_cfg, data) -> None:
  """Adds `full_run` (tokens, steps, hours, chip_hours at the estimated step time) to each stage and script of
  a `plan` report: the whole of the config's run, not one step.

  collect: the activations `train_sae` consumes (sae.n_steps x sae.batch_size tokens, the paper's 819.2M) in
  model batches of data.store_batch_rows x data.context_size; train_sae: those tokens in SAE steps;
  reason_score: the paper's extraction set (`paper.EXTRACTION_ROWS` rows of data.context_size tokens) in
  accumulator steps; evaluate: the benchmarks at k = 1 in every steering setting (`benchmarks`). The scripts:
  train_sae.py adds the collect steps when it runs the model on the fly, reason_score.py adds one forward per
  batch of the extraction set. Chip-hours are hours x devices (one device per chip, v4 as megacore). Host
  work, input pipelines, checkpoints and collectives are not counted: a lower bound on the wall time.
  """
  stages, devices = report["stages"], report["devices"]

  def estimate(name, tokens, steps):
    seconds = stages[name]["step_seconds"]["seconds"] if name in stages else None
    hours = None if seconds is None else steps * seconds / 3600
    return {"tokens": int(tokens), "steps": int(steps), "hours": _round(hours),
            "chip_hours": _round(None if hours is None else hours * devices)}

  if data is not None:
    batch = data.store_batch_rows * data.context_size
    train_tokens = sae_cfg.training_tokens
    extraction = paper.EXTRACTION_ROWS * data.context_size
    parts = {"collect": (train_tokens, math.ceil(train_tokens / batch)),
             "train_sae": (train_tokens, sae_cfg.n_steps),
             "reason_score": (extraction, math.ceil(paper.EXTRACTION_ROWS / data.store_batch_rows))}
    for name, (tokens, steps) in parts.items():
      if name in stages:
        stages[name]["full_run"] = estimate(name, tokens, steps)
    scripts = report["runs"]
    if "train_sae.py" in scripts:  # the collect steps only when the model runs in the loop
      run = scripts["train_sae.py"]
      run["full_run"] = _sum_runs({n: stages[n]["full_run"] for n in run["stages"]})
    if "reason_score.py" in scripts:  # one forward per batch of the extraction set, then the accumulator
      scripts["reason_score.py"]["full_run"] = _sum_runs(
          {"collect": estimate("collect", *parts["reason_score"]), "reason_score": stages["reason_score"]["full_run"]})
  if "evaluate" in stages:
    bench = stages["evaluate"]["benchmarks"]
    hours = bench["hours_all_settings"]
    stages["evaluate"]["full_run"] = {
        "tokens": bench["samples_per_setting"] * bench["mean_new_tokens"] * bench["settings"],
        "steps": bench["decode_steps_per_setting"] * bench["settings"], "hours": hours,
        "chip_hours": _round(None if hours is None else hours * devices)}


def _sum_runs(parts: dict) -> dict:
  """A script's full run from its stages' (name -> full_run): steps per stage, hours and chip-hours summed."""
  hours = [p["hours"] for p in parts.values()]
  chip = [p["chip_hours"] for p in parts.values()]
  return {"tokens": max(p["tokens"] for p in parts.values()), "steps": {n: p["steps"] for n, p in parts.items()},
          "hours": None if None in hours else _round(sum(hours)),
          "chip_hours": None if None in chip else _round(sum(chip))}


def _round(hours):
  return None if hours is None else float(f"{hours:.4g}")


def _duration(hours: float) -> str:
  return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min" if hours * 60 >= 1 else f"{hours * 3600:.1f} s"


def _peek(model, stage: str, out: dict):
  """The ModelConfig of the config's model (its shape only), noted in the report `out`."""
  if not model.path:
    raise UserError(f"config.model.path is empty: the {stage} stage needs the model (--config.model.path)")
  model_cfg = model.peek()
  if model_cfg is None:
    raise UserError(f"the shape of model {model.path!r} is unknown offline: pass a local HF dir, converted "
                    f"checkpoint dir or .gguf file as --config.model.path (known hub ids: "
                    f"{', '.join(_known_ids())})")
  out["model"] = {"source": model.path, "dtype": model.dtype, "hidden_size": model_cfg.hidden_size,
                  "num_layers": model_cfg.num_layers}
  return model_cfg


def _evaluate_from_config(c, model, model_cfg, mesh, hbm, mean_new_tokens: int, log) -> dict:
  """`evaluate_stage` for the eval config: engine.slots (0: the largest that fits), a cache of engine.max_len
  tokens (0: sampling.max_new_tokens; the engine adds the longest prompt), the steering section's plan (layer
  -1: sae.hook_layer) with its features per setting, the paper's benchmarks x sampling.samples."""
  from sae_jax.runs import section
  from sae_jax.steering import SteeringPlan
  engine, sampling, steering = section(c, "engine"), section(c, "sampling"), section(c, "steering")
  max_len = engine.max_len or sampling.max_new_tokens
  if mean_new_tokens < 1 or mean_new_tokens > max_len:
    raise UserError(f"the mean generated length {mean_new_tokens} must be in [1, {max_len}] (the cache's tokens)")
  steer_plan, n_features, settings = None, 1, 1
  if steering.features:
    layer = steering.layer if steering.layer >= 0 else int(c.sae.hook_layer)
    model_cfg.validate_layer(layer)
    steer_plan = SteeringPlan(layer=layer, site=steering.site, method=steering.method)
    groups = 1 if steering.together else len(steering.features)
    n_features = len(steering.features) if steering.together else 1
    settings = groups * len(steering.strengths) + int(steering.baseline)
  stage = evaluate_stage(model_cfg, jnp.dtype(model.dtype), mesh, hbm, engine.slots, max_len, steer_plan,
                         n_features, samples=sum(PAPER_BENCHMARKS.values()) * sampling.samples, settings=settings,
                         mean_new_tokens=mean_new_tokens, max_new_tokens=sampling.max_new_tokens, log=log)
  stage["benchmarks"]["problems"] = dict(PAPER_BENCHMARKS)
  stage["benchmarks"]["samples_per_problem"] = sampling.samples
  stage["steering"] = None if steer_plan is None else {"layer": steer_plan.layer, "site": steer_plan.site,
                                                       "method": steer_plan.method, "features": n_features}
  return stage


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
    if (part.get("max_slots") or {}).get("slots") == 0:
      lines.append(f"{name}: not even {report['mesh']['data'] * report['mesh']['fsdp']} slot(s) of "
                   f"{part['max_len']} tokens fit; {_ADVICE[name]}")
  return lines


def _known_ids():
  from sae_jax.models.config import KNOWN_HF_CONFIGS
  return sorted(KNOWN_HF_CONFIGS)


def not_fitting(report: dict) -> list[str]:
  """The stages and scripts of a `plan` report that do not fit the chip's HBM."""
  return [name for name, part in [*report["stages"].items(), *report["runs"].items()] if part["fits"] is False]


def summary(report: dict) -> list[str]:
  """A table of a `plan` report, one row per stage and script: fit, HBM used, estimated step time, tokens/s,
  MFU, and the full run's wall time and chip-hours (see `full_run`)."""
  rows = [("stage", "fits", "HBM/device", "step", "tokens/s", "MFU", "full run", "chip-hours")]
  for name, part in [*report["stages"].items(), *report["runs"].items()]:
    timing = part.get("step_seconds") or {}
    run = part.get("full_run") or {}
    used = part.get("hbm_used")
    seconds = timing.get("seconds")
    rate = part.get("tokens_per_second") or (part.get("benchmarks") or {}).get("tokens_per_second")
    rows.append((name, {True: "yes", False: "NO", None: "?"}[part["fits"]],
                 "-" if used is None else f"{used:.0%}", "-" if seconds is None else f"{seconds * 1e3:.1f} ms",
                 "-" if not rate else f"{rate:,.0f}", "-" if timing.get("mfu") is None else f"{timing['mfu']:.0%}",
                 "-" if run.get("hours") is None else _duration(run["hours"]),
                 "-" if run.get("chip_hours") is None else f"{run['chip_hours']:.1f}"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
