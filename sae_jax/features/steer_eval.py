"""Benchmark evaluation of a baseline and any number of steering settings with one compiled engine.

Every setting runs through the same jitted prefill / decode steps: the baseline is the steering hook switched
off (bitwise the unsteered model), and a setting that steers other features or strengths only changes the
traced hook arguments. Samples go to a resumable per-sample JSONL store (`sae_jax.evals.store`), so a killed
run continues where it stopped and ends with the same report.
"""

import dataclasses
import math
import os
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from sae_jax import io as sio
from sae_jax import pod
from sae_jax.errors import UserError
from sae_jax.evals import report as eval_report
from sae_jax.evals import runner
from sae_jax.features import steer
from sae_jax.generation import Engine, Request, sample_key
from sae_jax.generation.engine import default_cache_dtype

SAMPLES_FILE = "samples.jsonl"


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Decode slots and tokens per slot (config section `engine`); 0 slots: as many as the memory holds (<= 64)."""

  slots: int = 0
  max_len: int = 0  # 0: the longest prompt + eval max_new_tokens
  memory_fraction: float = 0.85  # of the free device (or host) memory the KV cache may take when sizing slots


@dataclasses.dataclass(frozen=True)
class SteeringConfig:
  """Which features of the --sae to steer and how (config section `steering`). One setting per (feature group,
  strength), plus the unsteered baseline."""

  features: tuple[int, ...] = ()
  together: bool = False  # steer all features in one setting instead of one setting per feature
  strengths: tuple[float, ...] = (2.0,)  # a sweep: one setting per strength
  max_activations: tuple[float, ...] = ()  # per feature; empty: read from the --dashboard dir
  method: str = "intervention"  # intervention | clamp | add
  site: str = "resid_post"  # resid_post (what the SAE was trained on) | mlp_out (the reference's behaviour)
  units: str = "raw"  # raw decoder rows as released (the reference) | folded (unit rows)
  layer: int = -1  # -1: the SAE's hook layer
  baseline: bool = True


def kv_bytes_per_slot(cfg, max_len: int, dtype) -> int:
  """Bytes of one slot's KV cache: keys and values of every layer, plus the validity mask."""
  return 2 * cfg.num_layers * max_len * cfg.num_kv_heads * cfg.head_dim * np.dtype(dtype).itemsize + max_len


def free_memory_bytes(mesh=None) -> tuple[int, str]:
  """(free bytes for the cache over the mesh's devices, where the number comes from)."""
  devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
  local = [d for d in devices if d.process_index == jax.process_index()]  # another host's are not readable
  stats = [d.memory_stats() or {} for d in local]
  if local[0].platform != "cpu" and all("bytes_limit" in s for s in stats):  # CPU: the host's memory
    free = sum(s["bytes_limit"] - s.get("bytes_in_use", 0) for s in stats) * len(devices) // len(local)
    return _agreed(free), f"{devices[0].device_kind} memory_stats"
  return _agreed(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "available host memory"


def _agreed(free: int) -> int:
  """Process 0's byte count on every process, so all size the cache alike (in MiB: JAX's int32 holds them)."""
  return int(pod.broadcast(free >> 20)) << 20


def size_slots(model_cfg, dtype, max_len: int, opts: EngineConfig, mesh=None, log=print) -> int:
  """Slots the KV cache can hold in the memory there is (or the requested number, checked against it)."""
  per_slot = kv_bytes_per_slot(model_cfg, max_len, dtype)
  free, source = free_memory_bytes(mesh)
  fit = int(free * opts.memory_fraction // per_slot)
  slots = opts.slots or max(1, min(64, fit))
  if fit < slots:
    raise UserError(f"{slots} slots of {max_len} tokens need {slots * per_slot / 2**30:.2f} GiB of KV cache; "
                    f"{source} leaves {free / 2**30:.2f} GiB ({fit} slots): lower engine.slots or engine.max_len")
  log(f"[evaluate] KV cache: {slots} slots x {max_len} tokens x {per_slot / max_len / 1024:.1f} KiB/token = "
      f"{slots * per_slot / 2**30:.2f} GiB ({source}: {free / 2**30:.1f} GiB free, room for {fit} slots)")
  return slots


def steering_settings(sae, model_cfg, opts: SteeringConfig, dashboard: str = "") -> tuple[Any, dict[str, Any],
                                                                                          list[dict]]:
  """(plan or None, {setting name: SteeringArgs (None = unhooked baseline)}, per-setting descriptions)."""
  settings, described, plan = {}, [], None
  if sae is None:
    if opts.features:
      raise UserError("steering.features needs an SAE (--sae)")
    return None, {"baseline": None}, []
  if not opts.features:
    raise UserError("an SAE is given but steering.features is empty")
  if not opts.strengths or not all(math.isfinite(s) for s in opts.strengths):
    raise UserError(f"steering.strengths must be finite numbers, got {list(opts.strengths)}")
  groups = [tuple(opts.features)] if opts.together else [(f,) for f in opts.features]
  maxes = dict(zip(opts.features, opts.max_activations)) if opts.max_activations else {}
  if opts.max_activations and len(opts.max_activations) != len(opts.features):
    raise UserError(f"steering.max_activations has {len(opts.max_activations)} values for "
                    f"{len(opts.features)} features")
  for group in groups:
    for strength in opts.strengths:
      built = steer.build_steering(sae, list(group), strength, [maxes[f] for f in group] if maxes else None,
                                   dashboard=dashboard or None, method=opts.method, site=opts.site,
                                   layer=None if opts.layer < 0 else opts.layer, units=opts.units,
                                   model_cfg=model_cfg)
      if plan is not None and built.plan != plan:
        raise UserError("all steering settings must share one layer, site and method")
      plan = built.plan
      name = f"f{'+'.join(map(str, group))}@{strength:g}"
      settings[name] = built.args
      described.append({"setting": name, "strength": strength, "features": list(group),
                        "method": opts.method, "site": opts.site, "units": opts.units,
                        "per_feature": steer.describe(built)})
  if opts.baseline:
    any_args = next(iter(settings.values()))
    settings = {"baseline": any_args.switched(False), **settings}
  return plan, settings, described


def make_generate(engine: Engine, settings: dict[str, Any], stop_ids: Sequence[int]):
  """The runner's `generate(requests, params)` on the engine; params["setting"] picks the hook args."""

  def generate(requests, params):
    hook_args = settings[params["setting"]]
    reqs = [Request(r.uid, r.prompt_ids, r.max_new_tokens, key=tuple(int(k) for k in sample_key(r.seed, 0, 0)),
                    temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, stop_ids=tuple(stop_ids),
                    stop_strings=tuple(r.stop)) for r in requests]
    for res in engine.generate(reqs, hook_args):
      yield runner.Completion(uid=res.id, token_ids=res.tokens, text=res.text or "",
                              finish_reason="length" if res.finish_reason == "length" else "stop")

  return generate


def evaluate(model, tokenizer, tasks: dict, out_dir: str, config: runner.SamplingConfig, engine_opts: EngineConfig,
             steering: tuple, mesh=None, log=None) -> dict:
  """Runs every setting on every task (resuming from `out_dir`); writes summary.json, report.md, plots and
  steering.json (the units of every steered feature). `steering` is what `steering_settings` built. Returns the
  full summary."""
  config.validate()
  log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
  plan, settings, described = steering  # from `steering_settings`
  for d in described:
    for f in d["per_feature"]:
      log(f"[evaluate] {d['setting']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in f.items()))
  prompts = [p for ps in tasks.values() for p in ps]
  from sae_jax.evals import chat
  tok = chat.load_tokenizer(tokenizer)
  longest = max(len(chat.encode(p.prompt, config.template, tok)) for p in prompts)
  max_len = engine_opts.max_len or longest + config.max_new_tokens
  if longest >= max_len:
    raise UserError(f"engine.max_len {max_len} does not hold the longest prompt ({longest} tokens)")
  slots = size_slots(model.cfg, default_cache_dtype(model), max_len, engine_opts, mesh, log)
  last = {"t": 0.0}

  def progress(p):
    if time.time() - last["t"] >= 10 or p["done"] == p["total"]:
      last["t"] = time.time()
      rate = p["generated_tokens"] / max(p["seconds"], 1e-9)
      log(f"[evaluate] {p['done']}/{p['total']} samples, {rate:.1f} tok/s, {p['busy_slots']}/{p['slots']} slots busy")

  engine = Engine(model, slots, max_len, mesh=mesh, make_hooks=plan,
                  decode=lambda ids: tok.decode(ids, skip_special_tokens=True), progress=progress)
  stop_ids = sorted({*model.cfg.eos_token_ids, *([tok.eos_token_id] if tok.eos_token_id is not None else [])})
  os.makedirs(out_dir, exist_ok=True)
  params = {d["setting"]: {"strength": d["strength"], "features": d["features"]} for d in described}
  records = runner.run_eval(tasks, [runner.Setting(name, {"setting": name, **params.get(name, {})})
                                    for name in settings],
                            make_generate(engine, settings, stop_ids), os.path.join(out_dir, SAMPLES_FILE), tok,
                            config, log=lambda m: log(m))
  protocol = {k: v for k, v in dataclasses.asdict(config).items() if k != "stop"}
  protocol.update(slots=slots, max_len=max_len)
  summary = eval_report.write_report(out_dir, records, baseline="baseline" if "baseline" in settings else None,
                                     protocol=protocol)
  summary["steering"] = described
  if pod.is_writer():
    sio.write_json(os.path.join(out_dir, "steering.json"), described, indent=1)
  return summary


def print_table(summary: dict, out=sys.stdout) -> None:
  """The report's tables (accuracy and lengths per setting, deltas against the baseline) as markdown."""
  text = eval_report.render_markdown(summary)
  print(text[text.index("## "):].rstrip(), file=out)
