"""`bench.py sae`: our jitted SAE train step against real SAELens 5.5.2's, tokens/s per (arch, d_in).

The torch side is SAELens itself (`SAETrainer._train_step` on a `TrainingSAE`), run by `saelens_worker.py` in
the bench virtualenv (`bash launch/bench_env.sh` builds it) and stepped over a pipe, one step per round,
alternating with ours. Both start from the same params (our init) and cycle the same random float32 batches
through the same step indices; `loss_max_rel_diff` compares their losses (SAELens draws `randn_like` noise
scaled by noise_scale = 0, so the values agree while the draw still costs time, as in a real SAELens run).
SAELens' topk encodes with `TopK` (dense scatter) and decodes densely; ours decodes from the [B, k] values and
indices (`sae_jax.sae.topk.topk_decode`). FLOPs per step are counted analytically (`flops_formula`); the matmul
peak is the best [n, n] @ [n, n] float32 jax matmul, measured at the start and after every round, so
`fraction_of_jax_matmul_peak` compares our GFLOP/s with the peak under the same load.
"""

import gc
import json
import os
import subprocess
import tempfile

from absl import flags

from bench import common
from sae_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_list("sae_d_in", ["576", "2048"], "sae: SAE input widths (d_sae = d_in * --sae_expansion).")
flags.DEFINE_integer("sae_expansion", 16, "sae: d_sae / d_in.")
flags.DEFINE_integer("sae_batch", 4096, "sae: tokens per train step.")
flags.DEFINE_list("sae_archs", ["standard", "topk"], "sae: architectures, each run on both sides.")
flags.DEFINE_integer("sae_k", 32, "sae: k of topk.")
flags.DEFINE_integer("sae_batches", 4, "sae: distinct random batches, cycled.")
flags.DEFINE_float("sae_large_tflop", 1.0, "sae: steps above this many TFLOP use --sae_large_warmup/repeats.")
flags.DEFINE_integer("sae_large_warmup", 1, "sae: --warmup for large steps.")
flags.DEFINE_integer("sae_large_repeats", 2, "sae: --repeats for large steps.")
flags.DEFINE_integer("sae_peak_n", 4096, "sae: size n of the [n, n] @ [n, n] float32 matmul of the peak.")
flags.DEFINE_string("bench_python", None, "sae: python of the bench virtualenv holding SAELens 5.5.2. Default: "
                    ".venv-bench/bin/python in the repo (`bash launch/bench_env.sh` builds it).")

ARCHS = ("standard", "topk")
FLOPS_FORMULA = (
    "10 * B * d_in * d_sae per step: forward x @ W_enc and f @ W_dec (2 * B * d_in * d_sae each); backward "
    "dW_dec = f^T @ g_xhat, g_f = g_xhat @ W_dec^T and dW_enc = x^T @ g_h (2 * B * d_in * d_sae each). For topk "
    "this is the dense formulation's count (SAELens'); ours decodes by gathers and scatter-adds, so its GFLOP/s "
    "is a dense-equivalent rate. Elementwise, norm, clip and Adam work is not counted.")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SAELensWorker:
  """`saelens_worker.py` under the bench venv's python, spoken to in JSON lines."""

  def __init__(self, python: str):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saelens_worker.py")
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH="")
    self.proc = subprocess.Popen([python, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 bufsize=1, env=env, cwd=tempfile.gettempdir())

  def call(self, **req) -> dict:
    self.proc.stdin.write(json.dumps(req) + "\n")
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the SAELens worker died (exit {self.proc.wait()}); its stderr is above")
    reply = json.loads(line)
    if not reply.pop("ok"):
      raise RuntimeError(f"SAELens worker: {reply['error']}")
    return reply

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


def _bench_python() -> str:
  python = FLAGS.bench_python or os.path.join(_REPO, ".venv-bench", "bin", "python")
  if not os.path.exists(python):
    raise UserError(f"no bench virtualenv python at {python}: run `bash launch/bench_env.sh` first "
                    "(it installs SAELens 5.5.2 pinned), or pass --bench_python")
  return python


def _config(arch: str, d_in: int):
  from sae_jax.sae import SAEConfig
  kwargs = dict(d_in=d_in, d_sae=d_in * FLAGS.sae_expansion, batch_size=FLAGS.sae_batch, n_steps=200_000,
                lr=5e-5, l1_coefficient=5.0, l1_warm_up_steps=10_000, lr_decay_steps=40_000)
  if arch != "standard":
    kwargs.update(architecture=arch, k=FLAGS.sae_k)
  return SAEConfig(**kwargs)


def _matmul(n: int):
  """A jitted [n, n] @ [n, n] float32 jax matmul that waits for its result."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.RandomState(1)
  a, b = (jnp.asarray(rng.standard_normal((n, n)).astype(np.float32)) for _ in range(2))
  mm = jax.jit(jnp.matmul)
  return lambda: mm(a, b).block_until_ready()


def _one(arch: str, d_in: int, worker: SAELensWorker, mm, tmp: str) -> dict:
  import dataclasses

  import jax
  import jax.numpy as jnp
  import numpy as np

  from sae_jax.sae import init_train_state, make_train_step

  cfg = _config(arch, d_in)
  b, d_sae = cfg.batch_size, cfg.d_sae
  flops = 10 * b * d_in * d_sae
  large = flops > FLAGS.sae_large_tflop * 1e12
  warmup, repeats = (FLAGS.sae_large_warmup, FLAGS.sae_large_repeats) if large else (FLAGS.warmup, FLAGS.repeats)
  rng = np.random.RandomState(FLAGS.seed)
  batches = [rng.standard_normal((b, d_in)).astype(np.float32) for _ in range(FLAGS.sae_batches)]
  params, opt_state = init_train_state(cfg, jax.random.PRNGKey(FLAGS.seed))
  np.savez(os.path.join(tmp, "params.npz"), **{k: np.asarray(params[k]) for k in ("W_enc", "b_enc", "W_dec", "b_dec")})
  np.savez(os.path.join(tmp, "batches.npz"), *batches)
  peer = worker.call(cmd="setup", config=dataclasses.asdict(cfg) | {
      "apply_b_dec_to_input": cfg.apply_b_dec_to_input, "normalize_decoder": cfg.normalize_decoder},
      params=os.path.join(tmp, "params.npz"), batches=os.path.join(tmp, "batches.npz"),
      threads=common.torch_threads(), seed=FLAGS.seed)

  jstep = jax.jit(make_train_step(cfg), donate_argnums=(0, 1))
  j_batches = [jnp.asarray(x) for x in batches]
  j_steps = [jnp.asarray(i, jnp.int32) for i in range(warmup + repeats)]
  compile_s = common.timed(lambda: jstep.lower(params, opt_state, j_steps[0], j_batches[0]).compile()).seconds
  state = {"params": params, "opt_state": opt_state}
  del params, opt_state

  def ours(i):
    p, o, m = jstep(state["params"], state["opt_state"], j_steps[i], j_batches[i % len(j_batches)])
    jax.block_until_ready((p, o, m))
    state.update(params=p, opt_state=o)
    return float(m["loss"])

  def saelens(i):
    r = worker.call(cmd="step", i=i)
    return common.Timed(r["seconds"], r["loss"])

  mm_seconds = []
  rounds = common.paired_rounds({"ours": ours, "saelens": saelens}, warmup, repeats,
                                after_round=lambda i: mm_seconds.append(common.timed(mm).seconds))
  peak = 2 * FLAGS.sae_peak_n ** 3 / min(mm_seconds) / 1e9
  o = common.spread(rounds.seconds["ours"], b)
  t = common.spread(rounds.seconds["saelens"], b)
  o["gflop_per_s"], t["gflop_per_s"] = flops / o["median_s"] / 1e9, flops / t["median_s"] / 1e9
  drift = max(abs(u - v) / max(abs(v), 1e-12) for u, v in zip(rounds.values["ours"], rounds.values["saelens"]))
  result = {"arch": arch, "d_in": d_in, "d_sae": d_sae, "ours_tokens_per_s": o["tokens_per_s"],
            "saelens_tokens_per_s": t["tokens_per_s"],
            **common.ratio(rounds.seconds["ours"], rounds.seconds["saelens"]),
            "compile_s": compile_s, "gflop_per_step": flops / 1e9, "ours_gflop_per_s": o["gflop_per_s"],
            "jax_matmul_peak_same_rounds_gflop_per_s": peak, "fraction_of_jax_matmul_peak": o["gflop_per_s"] / peak,
            "warmup": warmup, "repeats": repeats, "loadavg_1min": rounds.loadavg_1min,
            "loss_max_rel_diff": drift, "ours": o, "saelens": t, "saelens_setup": peer}
  common.log("sae", f"{arch}_d{d_in}: ours {o['tokens_per_s']:.0f} tok/s ({o['gflop_per_s']:.0f} GFLOP/s, "
             f"{result['fraction_of_jax_matmul_peak']:.2f} of peak), SAELens {t['tokens_per_s']:.0f} tok/s, "
             f"ratio {result['ratio']:.2f} (rounds {result['ratio_per_round_range'][0]:.2f}-"
             f"{result['ratio_per_round_range'][1]:.2f}), loss diff {drift:.1e}, load "
             f"{rounds.loadavg_1min[0]:.1f}->{rounds.loadavg_1min[1]:.1f}")
  del state, jstep, j_batches
  gc.collect()
  return result


def run() -> dict:
  """Our jitted SAE train step vs SAELens 5.5.2's, tokens/s per (arch, d_in)."""
  try:
    d_ins = [int(d) for d in FLAGS.sae_d_in]
  except ValueError:
    raise UserError(f"--sae_d_in={','.join(FLAGS.sae_d_in)!r}: expected a list of integers") from None
  for arch in FLAGS.sae_archs:
    if arch not in ARCHS:
      raise UserError(f"--sae_archs: unknown architecture {arch!r}: expected a subset of {','.join(ARCHS)}")
  common.check_counts(sae_d_in=(min(d_ins, default=0), 1), sae_expansion=(FLAGS.sae_expansion, 1),
                      sae_batch=(FLAGS.sae_batch, 1), sae_batches=(FLAGS.sae_batches, 1),
                      repeats=(FLAGS.repeats, 1), warmup=(FLAGS.warmup, 0),
                      sae_large_repeats=(FLAGS.sae_large_repeats, 1), sae_large_warmup=(FLAGS.sae_large_warmup, 0))
  python = _bench_python()
  mm = _matmul(FLAGS.sae_peak_n)
  mm()
  start_peak = 2 * FLAGS.sae_peak_n ** 3 / min(common.timed(mm).seconds for _ in range(2)) / 1e9
  common.log("sae", f"jax matmul peak {start_peak:.0f} GFLOP/s")
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for d_in in d_ins:
      for arch in FLAGS.sae_archs:
        worker = SAELensWorker(python)  # a fresh process per case: no state or memory carried over
        try:
          results[f"{arch}_d{d_in}"] = _one(arch, d_in, worker, mm, tmp)
        finally:
          worker.close()
  best = max([start_peak] + [r["jax_matmul_peak_same_rounds_gflop_per_s"] for r in results.values()])
  for r in results.values():
    r["fraction_of_jax_matmul_peak_best"] = r["ours_gflop_per_s"] / best
  return {"peer": "sae_lens 5.5.2 SAETrainer._train_step (bench virtualenv)", "batch_tokens": FLAGS.sae_batch,
          "expansion": FLAGS.sae_expansion, "dtype": "float32", "k": FLAGS.sae_k,
          "distinct_batches": FLAGS.sae_batches, "seed": FLAGS.seed, "flops_formula": FLOPS_FORMULA,
          "jax_matmul_peak_gflop_per_s": {"start": start_peak, "best": best}, "results": results}
