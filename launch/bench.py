"""Benchmarks, one subcommand each (positional argv):

  python launch/bench.py forward [--batch=8 --seq=512 --dtypes=float32,bfloat16 --repeats=5 --warmup=2]
      [--model=HF_DIR] [--out=runs/bench]

`forward`: tokens/s of our jitted full-sequence forward (`generation.forward_logits`) against the HF torch
forward of the same checkpoint (default: the offline SmolLM2-135M-Instruct asset), same dtype, same random
tokens. Warm-up calls are excluded; each timed call ends when the full [B, T, vocab] logits are ready
(`block_until_ready` on our side; torch CPU is synchronous). Reports the median of `--repeats` calls.

Prints JSON (and writes it with `--out`, a dir or a .json path): per dtype our tokens/s, torch tokens/s,
ratio = ours / torch, our compile seconds, plus the machine (cpu count, versions, XLA_FLAGS, torch threads).
"""

import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags

from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "HF dir (safetensors) used by both sides. Default: the offline "
                    "SmolLM2-135M-Instruct asset.")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("seq", 512, "Sequence length (tokens per row).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Dtypes to run, each on both sides.")
flags.DEFINE_integer("repeats", 5, "Timed calls per side and dtype; the median is reported.")
flags.DEFINE_integer("warmup", 2, "Untimed calls before timing (after compilation on our side).")
flags.DEFINE_integer("seed", 0, "Seed of the random tokens.")
flags.DEFINE_string("out", None, "Also write the JSON report here (dir or .json path).")

_DTYPES = ("float32", "bfloat16")


def _num_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _time_calls(fn, warmup: int, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of `fn` (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def _side_report(times: list[float], tokens_per_call: int) -> dict:
  median = statistics.median(times)
  return {
      "tokens_per_s": tokens_per_call / median,
      "median_s": median,
      "min_s": min(times),
      "max_s": max(times),
  }


def _machine_info() -> dict:
  import jax
  import torch
  return {
      "cpu": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "cores_available": _num_cores(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jax_backend": jax.default_backend(),
      "jax_devices": [str(d) for d in jax.devices()],
      "torch": torch.__version__,
      "torch_num_threads": torch.get_num_threads(),
      "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def _resolve_model_dir() -> str:
  if FLAGS.model:
    if not os.path.isdir(FLAGS.model):
      raise UserError(f"--model={FLAGS.model!r} is not a directory (expected a HF safetensors dir)")
    return FLAGS.model
  from sae_jax.assets import build_all
  return build_all().smollm2_hf


def bench_forward() -> dict:
  """Our jitted forward vs HF torch forward, tokens/s per dtype."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers
  from flax import nnx

  from sae_jax.generation import forward_logits
  from sae_jax.models.loading import load_model

  for name in FLAGS.dtypes:
    if name not in _DTYPES:
      raise UserError(f"--dtypes: unknown dtype {name!r}: expected a subset of {','.join(_DTYPES)}")
  if FLAGS.batch < 1 or FLAGS.seq < 1 or FLAGS.repeats < 1 or FLAGS.warmup < 0:
    raise UserError("--batch, --seq and --repeats must be >= 1 and --warmup >= 0")
  path = _resolve_model_dir()
  torch.set_num_threads(_num_cores())

  b, t = FLAGS.batch, FLAGS.seq
  per_call = b * t
  results = {}
  vocab = None
  for name in FLAGS.dtypes:
    # --- torch (HF) side ---
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, name)).eval()
    if vocab is None:
      vocab = hf.config.vocab_size
      rng = np.random.RandomState(FLAGS.seed)
      tokens = rng.randint(0, vocab, (b, t)).astype(np.int32)
      mask = np.ones((b, t), bool)
    t_tokens = torch.from_numpy(tokens.astype(np.int64))
    t_mask = torch.from_numpy(mask.astype(np.int64))

    def torch_call():
      with torch.inference_mode():
        return hf(input_ids=t_tokens, attention_mask=t_mask, use_cache=False).logits

    torch_times = _time_calls(torch_call, FLAGS.warmup, FLAGS.repeats)
    torch_logits_dtype = str(torch_call().dtype)
    attn_impl = getattr(hf.config, "_attn_implementation", None)
    del hf

    # --- our side ---
    model = load_model(path, dtype=jnp.dtype(name))
    graphdef, state = nnx.split(model)
    j_tokens, j_mask = jnp.asarray(tokens), jnp.asarray(mask)
    start = time.perf_counter()
    forward_logits(graphdef, state, j_tokens, j_mask).block_until_ready()
    first_call_s = time.perf_counter() - start

    def ours_call():
      return forward_logits(graphdef, state, j_tokens, j_mask).block_until_ready()

    ours_times = _time_calls(ours_call, FLAGS.warmup, FLAGS.repeats)
    ours_logits_dtype = str(ours_call().dtype)
    del model, graphdef, state

    ours = _side_report(ours_times, per_call)
    theirs = _side_report(torch_times, per_call)
    ours["compile_s"] = max(first_call_s - ours["median_s"], 0.0)
    ours["first_call_s"] = first_call_s
    ours["logits_dtype"] = ours_logits_dtype
    theirs["logits_dtype"] = torch_logits_dtype
    theirs["attn_implementation"] = attn_impl
    results[name] = {
        "ours_tokens_per_s": ours["tokens_per_s"],
        "torch_tokens_per_s": theirs["tokens_per_s"],
        "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
        "compile_s": ours["compile_s"],
        "ours": ours,
        "torch": theirs,
    }
    print(f"[forward] {name}: ours {ours['tokens_per_s']:.0f} tok/s, torch {theirs['tokens_per_s']:.0f} "
          f"tok/s, ratio {results[name]['ratio']:.3f}", file=sys.stderr, flush=True)
  return {
      "model": path,
      "batch": b,
      "seq": t,
      "tokens_per_call": per_call,
      "repeats": FLAGS.repeats,
      "warmup": FLAGS.warmup,
      "seed": FLAGS.seed,
      "results": results,
  }


SUBCOMMANDS = {
    "forward": bench_forward,
}


@exit_on_user_error
def main(argv):
  args = argv[1:]
  if len(args) != 1 or args[0] not in SUBCOMMANDS:
    got = " ".join(args) if args else "none"
    raise UserError(f"unknown subcommand {got!r}: expected exactly one of {', '.join(SUBCOMMANDS)}")
  command = args[0]
  report = {"benchmark": command}
  report.update(SUBCOMMANDS[command]())
  report["machine"] = _machine_info()
  print(json.dumps(report, indent=2))
  if FLAGS.out:
    path = FLAGS.out if FLAGS.out.endswith(".json") else os.path.join(FLAGS.out, f"bench_{command}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
    runinfo.write_run_json(os.path.dirname(os.path.abspath(path)))


if __name__ == "__main__":
  app.run(main)
