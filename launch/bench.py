"""Benchmarks, one subcommand each (positional argv):

  python launch/bench.py forward [--batch=8 --seq=512 --dtypes=float32,bfloat16 --repeats=5 --warmup=2]
      [--model=HF_DIR] [--out=runs/bench]

`forward`: tokens/s of our jitted full-sequence forward (`generation.forward_logits`) against the HF torch
forward of the same checkpoint (default: the offline SmolLM2-135M-Instruct asset), same dtype, same random
tokens. Warm-up calls are excluded; each timed call ends when the full [B, T, vocab] logits are ready
(`block_until_ready` on our side; torch CPU is synchronous) and the two sides' calls alternate. Reports the
median of `--repeats` calls; compile seconds are our `lower().compile()` (which fills the jit cache).
Torch runs `torch.inference_mode()`, eval, with as many intra-op threads as usable cores.

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
  tokens = None
  rng = np.random.RandomState(FLAGS.seed)
  for name in FLAGS.dtypes:
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, name)).eval()
    if tokens is None:  # the same tokens for every dtype and both sides
      tokens = rng.randint(0, hf.config.vocab_size, (b, t)).astype(np.int32)
    mask = np.ones((b, t), bool)
    t_tokens = torch.from_numpy(tokens.astype(np.int64))
    t_mask = torch.from_numpy(mask.astype(np.int64))

    def torch_call():
      with torch.inference_mode():
        return hf(input_ids=t_tokens, attention_mask=t_mask, use_cache=False).logits

    model = load_model(path, dtype=jnp.dtype(name))
    graphdef, state = nnx.split(model)
    j_tokens, j_mask = jnp.asarray(tokens), jnp.asarray(mask)
    start = time.perf_counter()
    forward_logits.lower(graphdef, state, j_tokens, j_mask).compile()  # fills forward_logits' cache
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    forward_logits(graphdef, state, j_tokens, j_mask).block_until_ready()
    first_call_s = time.perf_counter() - start

    def ours_call():
      return forward_logits(graphdef, state, j_tokens, j_mask).block_until_ready()

    # Interleaved calls (the order alternating each round), so a change in background load on a shared
    # machine hits both sides alike; the load average is reported next to the numbers.
    times, logits_dtype = {"ours": [], "torch": []}, {}
    load_before = os.getloadavg()[0]
    sides = [("ours", ours_call), ("torch", torch_call)]
    for i in range(FLAGS.warmup + FLAGS.repeats):
      for side, fn in (sides if i % 2 == 0 else sides[::-1]):
        start = time.perf_counter()
        out = fn()
        if i >= FLAGS.warmup:
          times[side].append(time.perf_counter() - start)
        logits_dtype[side] = str(out.dtype).removeprefix("torch.")
        del out
    load_after = os.getloadavg()[0]

    ours = _side_report(times["ours"], per_call)
    theirs = _side_report(times["torch"], per_call)
    ours.update(compile_s=compile_s, first_call_s=first_call_s, logits_dtype=logits_dtype["ours"])
    theirs.update(logits_dtype=logits_dtype["torch"],
                  attn_implementation=getattr(hf.config, "_attn_implementation", None))
    del hf, model, graphdef, state
    results[name] = {
        "ours_tokens_per_s": ours["tokens_per_s"],
        "torch_tokens_per_s": theirs["tokens_per_s"],
        "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
        "compile_s": compile_s,
        "loadavg_1min": [load_before, load_after],
        "ours": ours,
        "torch": theirs,
    }
    print(f"[forward] {name}: ours {ours['tokens_per_s']:.0f} tok/s, torch {theirs['tokens_per_s']:.0f} "
          f"tok/s, ratio {results[name]['ratio']:.3f}, compile {compile_s:.1f}s", file=sys.stderr,
          flush=True)
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
  names = ", ".join(SUBCOMMANDS)
  if not args:
    raise UserError(f"missing subcommand: expected one of {names}")
  if len(args) > 1:
    raise UserError(f"expected one subcommand, got {' '.join(args)!r}: one of {names}")
  if args[0] not in SUBCOMMANDS:
    raise UserError(f"unknown subcommand {args[0]!r}: expected one of {names}")
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
