"""Timing shared by every benchmark: paired rounds, median and range, the machine's load, and the report.

The machine these numbers come from is shared (2 cores, other jobs), so every benchmark alternates its sides
round by round (the order flipping each round) and reports the median with min/max and the 1-minute load
average before and after: a burst of background load then hits both sides of a ratio alike, and a reader can
see how loaded the machine was.
"""

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

from absl import flags

from sae_jax import runinfo
from sae_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "HF dir (safetensors) used by both sides. Default: the offline "
                    "SmolLM2-135M-Instruct asset.")
flags.DEFINE_integer("repeats", 5, "Timed rounds (each side once per round); the median is reported.")
flags.DEFINE_integer("warmup", 2, "Untimed rounds before timing (after compilation on our side).")
flags.DEFINE_integer("seed", 0, "Seed of the random inputs and initial parameters.")
flags.DEFINE_string("out", None, "Also write the JSON report here (dir or .json path).")
flags.DEFINE_integer("torch_threads", 0, "Intra-op threads of every torch side (0: as many as usable cores). On a "
                     "loaded machine 1 can be several times faster for small ops: OpenMP's barriers wait for a "
                     "descheduled thread.")


@dataclasses.dataclass(frozen=True)
class Timed:
  """A side's own measurement: a subprocess times its work itself, without the pipe round trip."""

  seconds: float
  value: Any = None


@dataclasses.dataclass
class Rounds:
  """Per side: the timed seconds and every call's value (warm-up included), plus the load around them."""

  seconds: dict[str, list[float]]
  values: dict[str, list[Any]]
  loadavg_1min: list[float]


def num_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def torch_threads() -> int:
  return FLAGS.torch_threads or num_cores()


def load() -> float:
  return os.getloadavg()[0]


def timed(fn: Callable[[], Any]) -> Timed:
  start = time.perf_counter()
  value = fn()
  return Timed(time.perf_counter() - start, value)


def paired_rounds(sides: dict[str, Callable[[int], Any]], warmup: int, repeats: int,
                  after_round: Callable[[int], None] | None = None) -> Rounds:
  """Calls every side once per round, the order reversed on odd rounds; rounds < warmup are not timed.

  A side returns its value, or a `Timed` with its own seconds (then the wall time around the call is unused).
  """
  names = list(sides)
  out = Rounds({n: [] for n in names}, {n: [] for n in names}, [load()])
  for i in range(warmup + repeats):
    for name in (names if i % 2 == 0 else names[::-1]):
      t = timed(lambda: sides[name](i))
      if isinstance(t.value, Timed):
        t = t.value
      out.values[name].append(t.value)
      if i >= warmup:
        out.seconds[name].append(t.seconds)
    if after_round is not None:
      after_round(i)
  out.loadavg_1min.append(load())
  return out


def spread(seconds: list[float], work: float | None = None, unit: str = "tokens") -> dict:
  """Median and range of a side's seconds, and `work` per second at the median (and at the extremes)."""
  median = statistics.median(seconds)
  report = {"median_s": median, "min_s": min(seconds), "max_s": max(seconds), "n": len(seconds)}
  if work is not None:
    report.update({f"{unit}_per_s": work / median, f"{unit}_per_s_range": [work / max(seconds), work / min(seconds)]})
  return report


def ratio(ours: list[float], theirs: list[float]) -> dict:
  """Their time over ours (>1: we are faster): of the medians, and the median and range of per-round ratios."""
  per_round = [t / o for o, t in zip(ours, theirs)]
  return {"ratio": statistics.median(theirs) / statistics.median(ours),
          "ratio_per_round_median": statistics.median(per_round),
          "ratio_per_round_range": [min(per_round), max(per_round)]}


def check_counts(**values: int) -> None:
  """One error line for a count flag that is too small (`repeats=1` means >= 1; `warmup=0` means >= 0)."""
  for name, (value, least) in values.items():
    if value < least:
      raise UserError(f"--{name} must be >= {least}, got {value}")


def resolve_model_dir() -> str:
  if FLAGS.model:
    if not os.path.isdir(FLAGS.model):
      raise UserError(f"--model={FLAGS.model!r} is not a directory (expected a HF safetensors dir)")
    return FLAGS.model
  from sae_jax.assets import build_all
  return build_all().smollm2_hf


def log(tag: str, message: str) -> None:
  print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info() -> dict:
  import jax
  import torch
  import transformers
  return {
      "cpu": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "cores_available": num_cores(),
      "loadavg_1_5_15min_at_end": list(os.getloadavg()),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jax_backend": jax.default_backend(),
      "jax_devices": [str(d) for d in jax.devices()],
      "torch": torch.__version__,
      "transformers": transformers.__version__,
      "torch_num_threads": torch.get_num_threads(),
      "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # Allocator settings change the cost of XLA's and torch's fresh per-call buffers (page faults).
      "malloc_env": {k: os.environ[k] for k in ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF") if k in os.environ},
  }


def emit(command: str, body: dict) -> dict:
  """Prints the report as JSON and, with --out, writes it (and run.json) there."""
  report = {"benchmark": command, **body, "machine": machine_info()}
  print(json.dumps(report, indent=2))
  if FLAGS.out:
    path = FLAGS.out if FLAGS.out.endswith(".json") else os.path.join(FLAGS.out, f"bench_{command}.json")
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(report, f, indent=2)
    os.replace(tmp, path)
    runinfo.write_run_json(out_dir)
  return report
