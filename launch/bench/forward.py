"""`bench.py forward`: tokens/s of our jitted forward against HF transformers' torch forward, same checkpoint.

Two cases per dtype, the same random tokens on both sides:
* `full`: logits [B, T, V] of the whole model (`inference.forward_logits` vs `model(input_ids, ...).logits`).
* `truncated`: the activations at `--layer`'s resid_post only, what the collector and ReasonScore run: ours
  stops after that layer (`inference.site_forward`); HF gets a forward hook on `model.layers[L]` that stores the
  output and raises, so neither side runs later layers or the LM head (TransformerLens' stop_at_layer).
Warm-up rounds are excluded; each timed call ends when its output is ready (`block_until_ready`; torch CPU is
synchronous). Torch runs `torch.inference_mode()`, eval, with as many intra-op threads as usable cores.
"""

from absl import flags

from bench import common
from sae_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 8, "forward: batch size.")
flags.DEFINE_integer("seq", 512, "forward: sequence length (tokens per row).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "forward, generate: dtypes to run, each on both sides.")
flags.DEFINE_list("cases", ["full", "truncated"], "forward: full (logits) and/or truncated (stop at --layer).")
flags.DEFINE_integer("layer", 19, "forward (truncated), generate: the hooked layer.")

DTYPES = ("float32", "bfloat16")
CASES = ("full", "truncated")


class _Stop(Exception):
  """Raised by the HF stop hook once the hooked layer's output is captured."""


def _discard(fn):
  def call(i):
    fn()
  return call


def check_dtypes() -> None:
  for name in FLAGS.dtypes:
    if name not in DTYPES:
      raise UserError(f"--dtypes: unknown dtype {name!r}: expected a subset of {','.join(DTYPES)}")


def run() -> dict:
  """Our jitted forward (full and stopped at a layer) vs HF torch's, tokens/s per dtype."""
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers
  from flax import nnx

  from sae_jax.models import inference
  from sae_jax.models.loading import load_model

  check_dtypes()
  for case in FLAGS.cases:
    if case not in CASES:
      raise UserError(f"--cases: unknown case {case!r}: expected a subset of {','.join(CASES)}")
  common.check_counts(batch=(FLAGS.batch, 1), seq=(FLAGS.seq, 1), repeats=(FLAGS.repeats, 1),
                      warmup=(FLAGS.warmup, 0))
  path = common.resolve_model_dir()
  torch.set_num_threads(common.torch_threads())
  b, t, layer = FLAGS.batch, FLAGS.seq, FLAGS.layer
  results = {}
  tokens = None
  for name in FLAGS.dtypes:
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, name)).eval()
    if tokens is None:  # the same tokens for every dtype and both sides
      tokens = np.random.RandomState(FLAGS.seed).randint(0, hf.config.vocab_size, (b, t)).astype(np.int32)
    t_tokens = torch.from_numpy(tokens.astype(np.int64))
    t_mask = torch.ones_like(t_tokens)
    model = load_model(path, dtype=jnp.dtype(name))
    model.cfg.validate_layer(layer)
    graphdef, state = nnx.split(model)
    j_tokens, j_mask = jnp.asarray(tokens), jnp.ones((b, t), bool)
    captured = {}

    def stop_hook(module, inp, out):
      captured["x"] = out[0] if isinstance(out, tuple) else out
      raise _Stop

    def hf_truncated():
      handle = hf.model.layers[layer].register_forward_hook(stop_hook)
      try:
        with torch.inference_mode():
          hf(input_ids=t_tokens, attention_mask=t_mask, use_cache=False)
      except _Stop:
        pass
      finally:
        handle.remove()
      return captured.pop("x")

    def hf_full():
      with torch.inference_mode():
        return hf(input_ids=t_tokens, attention_mask=t_mask, use_cache=False).logits

    site_run = inference.site_forward(model.cfg, graphdef, layer, "resid_post")
    calls = {
        "full": (lambda: inference.forward_logits(graphdef, state, j_tokens, j_mask),
                 lambda: inference.forward_logits.lower(graphdef, state, j_tokens, j_mask).compile(), hf_full),
        "truncated": (lambda: site_run(state, j_tokens), lambda: site_run.lower(state, j_tokens).compile(),
                      hf_truncated),
    }
    for case in FLAGS.cases:
      ours_fn, compile_fn, hf_fn = calls[case]
      compile_s = common.timed(compile_fn).seconds  # fills the jit cache of the jitted function
      first_call_s = common.timed(lambda: ours_fn().block_until_ready()).seconds
      # The sides return nothing: [8, 512, V] float32 logits are 0.8 GB a call.
      rounds = common.paired_rounds({"ours": _discard(lambda: ours_fn().block_until_ready()),
                                     "hf": _discard(hf_fn)}, FLAGS.warmup, FLAGS.repeats)
      a, c = np.asarray(ours_fn(), np.float32), hf_fn().float().numpy()
      diff = float(np.max(np.abs(a - c)))
      o, h = common.spread(rounds.seconds["ours"], b * t), common.spread(rounds.seconds["hf"], b * t)
      key = f"{case}_{name}"
      results[key] = {"case": case, "dtype": name, "ours_tokens_per_s": o["tokens_per_s"],
                      "hf_tokens_per_s": h["tokens_per_s"],
                      **common.ratio(rounds.seconds["ours"], rounds.seconds["hf"]),
                      "compile_s": compile_s, "first_call_s": first_call_s, "loadavg_1min": rounds.loadavg_1min,
                      "output_max_abs_diff": diff, "ours": o, "hf": h,
                      "hf_attn_implementation": getattr(hf.config, "_attn_implementation", None)}
      common.log("forward", f"{key}: ours {o['tokens_per_s']:.0f} tok/s, HF {h['tokens_per_s']:.0f} tok/s, ratio "
                 f"{results[key]['ratio']:.2f} (rounds {results[key]['ratio_per_round_range'][0]:.2f}-"
                 f"{results[key]['ratio_per_round_range'][1]:.2f}), load {rounds.loadavg_1min[0]:.1f}->"
                 f"{rounds.loadavg_1min[1]:.1f}")
      del rounds, a, c
    del hf, model, graphdef, state, site_run, calls
  return {"model": path, "batch": b, "seq": t, "layer": layer, "tokens_per_call": b * t, "repeats": FLAGS.repeats,
          "warmup": FLAGS.warmup, "seed": FLAGS.seed, "results": results}
