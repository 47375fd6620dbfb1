"""`bench.py generate`: steered decode tokens/s of our engine against HF transformers `generate`, same run.

Both sides greedily generate `--gen_new_tokens` tokens for each of `--gen_slots` chat prompts (SmolLM2's own
template; no stop ids, so every row makes exactly that many tokens), steered at `--layer`'s resid_post by one
random SAE feature: h' = h + (c - relu(h . w_enc + b_enc)) * w_dec.
* ours: `sae_jax.generation.Engine` with `SteeringPlan(layer).make_hooks` and `SteeringArgs` as `hook_args`
  (the transform is folded into the jitted prefill and decode steps);
* HF: `model.generate` on the left-padded batch with a PyTorch forward hook on `model.layers[L]` that applies
  the same formula to the layer's output, the reference's approach.
A call is the whole batch, prefill included; tokens/s = slots * new tokens / seconds. Per-step times come from
the engine's progress callback and an HF logits processor (both fire once per decode step).

Also measured, each in paired rounds: our steering overhead (steered vs unsteered engine), HF unsteered, bf16
vs f32, and continuous batching vs a static batch on `--gen_mixed_requests` requests whose budgets run
log-uniformly from `--gen_mixed_min` to `--gen_mixed_max` new tokens: static = the same engine fed 16 requests at a time, the next
group only when the whole group is done (the longest row holds the batch), as HF `generate` on the same groups
(also run, as `hf_static`). `profile` times the bare jitted decode step (no engine loop) and counts the dots of
its compiled HLO by dtype, and the weights' matmuls alone (`weight_dots_only`: every weight matrix times a
[slots, in] input, nothing else), the floor under any decode step of XLA on this machine; `ceiling_vs_hf_step`
= HF's decode step / that floor, the most any XLA program could gain over HF per step here.
"""

import re
import statistics
import time

from absl import flags

from bench import common
from bench.forward import check_dtypes
from sae_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_integer("gen_slots", 16, "generate: batch (engine slots and HF batch).")
flags.DEFINE_integer("gen_new_tokens", 48, "generate: new tokens per row in the decode benchmark.")
flags.DEFINE_float("gen_target", 4.0, "generate: the steering target c = strength * max activation.")
flags.DEFINE_integer("gen_mixed_requests", 64, "generate: requests of the continuous vs static comparison.")
flags.DEFINE_integer("gen_mixed_min", 16, "generate: the shortest output budget of the mixed set.")
flags.DEFINE_integer("gen_mixed_max", 160, "generate: the longest output budget of the mixed set (budgets are "
                     "log-uniform between the two, a right-skewed spread like reasoning lengths).")
flags.DEFINE_integer("gen_mixed_repeats", 2, "generate: timed rounds of the continuous vs static comparison.")
flags.DEFINE_string("gen_mixed_dtype", "float32", "generate: dtype of the continuous vs static comparison "
                    "(float32: our faster decode on CPU).")
flags.DEFINE_bool("gen_mixed_hf", True, "generate: also run HF generate on the mixed set's static groups.")
flags.DEFINE_integer("gen_profile_steps", 6, "generate: bare decode steps timed in the profile (0: no profile).")

QUESTIONS = [
    "Why is the sky blue?", "What is 17 times 23?", "Name three prime numbers larger than 100.",
    "Explain photosynthesis to a ten year old in a few sentences.", "Write a haiku about autumn rain.",
    "If a train travels 60 miles per hour for 2.5 hours, how far does it go? Show your reasoning step by step.",
    "What is the capital of Australia?", "Summarize the plot of Romeo and Juliet.",
    "How many legs do four spiders and three ants have together?", "Give me a recipe for pancakes.",
    "What causes the seasons on Earth? Think about the tilt of the axis and explain carefully.",
    "Translate 'good morning' into French, Spanish and German.", "Is 221 a prime number? Check it.",
    "List the planets of the solar system in order.", "What is the derivative of x^3 + 2x?",
    "Describe how a bicycle works, including the gears, the chain and the brakes, in plain words.",
]


def _prompts(tok, n: int) -> list[list[int]]:
  out = []
  for i in range(n):
    text = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                   add_generation_prompt=True, tokenize=False)
    out.append(tok.encode(text, add_special_tokens=False))
  return out


def _feature(d: int, seed: int):
  """One random SAE feature (numpy): encoder column, bias, decoder row; sized so f(h) is sometimes active."""
  import numpy as np
  rng = np.random.RandomState(seed)
  w_enc = (rng.standard_normal(d) / np.sqrt(d)).astype(np.float32)
  w_dec = rng.standard_normal(d).astype(np.float32)
  return w_enc, np.float32(-0.1), (w_dec / np.linalg.norm(w_dec)).astype(np.float32)


class _StepClock:
  """Timestamps of every decode step: the engine's progress callback / an HF logits processor."""

  def __init__(self):
    self.stamps = []

  def __call__(self, *args):
    self.stamps.append(time.perf_counter())
    return args[1] if len(args) == 2 else None  # as a logits processor: the scores, unchanged

  def step_ms(self) -> float:
    gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
    return 1e3 * statistics.median(gaps) if gaps else float("nan")


def _hlo_dots(text: str) -> dict:
  """Dots of a compiled module's HLO text by operand and result dtypes, and its bf16 -> f32 converts.

  Operands are printed by name only, so their dtypes come from the instructions that define them (HLO names
  are unique within a module).
  """
  types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", text))
  counts = {}
  for m in re.finditer(r"= (\w+)\[[^\]]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)", text):
    key = f"{types.get(m.group(2))}x{types.get(m.group(3))}->{m.group(1)}"
    counts[key] = counts.get(key, 0) + 1
  converts = sum(types.get(a) == "bf16" for a in re.findall(r"= f32\[[^\]]*\]\S* convert\(%([\w.\-]+)\)", text))
  return {"dots": counts, "dots_total": sum(counts.values()), "bf16_to_f32_converts": converts}


def run() -> dict:
  """Steered decode tokens/s of our engine vs HF generate with a steering forward hook, and the extras."""
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers

  from sae_jax import steering
  from sae_jax.generation import Engine, Request
  from sae_jax.models.loading import load_model

  check_dtypes()
  if FLAGS.gen_mixed_dtype not in FLAGS.dtypes:
    raise UserError(f"--gen_mixed_dtype={FLAGS.gen_mixed_dtype} must be one of --dtypes={','.join(FLAGS.dtypes)}")
  common.check_counts(gen_slots=(FLAGS.gen_slots, 1), gen_new_tokens=(FLAGS.gen_new_tokens, 2),
                      repeats=(FLAGS.repeats, 1), warmup=(FLAGS.warmup, 0),
                      gen_mixed_requests=(FLAGS.gen_mixed_requests, 0), gen_mixed_min=(FLAGS.gen_mixed_min, 1),
                      gen_mixed_max=(FLAGS.gen_mixed_max, FLAGS.gen_mixed_min),
                      gen_mixed_repeats=(FLAGS.gen_mixed_repeats, 1), gen_profile_steps=(FLAGS.gen_profile_steps, 0))
  path = common.resolve_model_dir()
  torch.set_num_threads(common.torch_threads())
  tok = transformers.AutoTokenizer.from_pretrained(path)
  n, new, layer = FLAGS.gen_slots, FLAGS.gen_new_tokens, FLAGS.layer
  prompts = _prompts(tok, n)
  rng = np.random.RandomState(FLAGS.seed)
  budgets = [int(round(x)) for x in np.geomspace(FLAGS.gen_mixed_min, FLAGS.gen_mixed_max, FLAGS.gen_mixed_requests)]
  rng.shuffle(budgets)
  longest_prompt = max(len(p) for p in prompts)
  max_len = -(-(longest_prompt + max([new] + budgets)) // 64) * 64  # one cache length for every engine

  results, mixed, profile = {}, None, {}
  for name in FLAGS.dtypes:
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, name)).eval()
    model = load_model(path, dtype=jnp.dtype(name))
    model.cfg.validate_layer(layer)
    w_enc, b_enc, w_dec = _feature(model.cfg.hidden_size, FLAGS.seed)
    plan = steering.SteeringPlan(layer=layer, site="resid_post", method="intervention")
    args = steering.SteeringArgs(enabled=jnp.asarray(True), w_dec=jnp.asarray(w_dec[None]),
                                 target=jnp.float32([FLAGS.gen_target]), w_enc=jnp.asarray(w_enc[None]),
                                 b_enc=jnp.float32([b_enc]))
    clocks = {k: _StepClock() for k in ("ours_steered", "ours_unsteered", "hf_steered", "hf_unsteered")}
    engines = {"ours_steered": (Engine(model, n, max_len, make_hooks=plan, progress=clocks["ours_steered"]), args),
               "ours_unsteered": (Engine(model, n, max_len, progress=clocks["ours_unsteered"]), None)}

    def ours(key, reqs):
      engine, hook_args = engines[key]
      clocks[key].stamps.clear()
      done = {r.id: r.tokens for r in engine.generate(reqs, hook_args=hook_args)}
      return [done[i] for i in range(len(done))]

    t_w_enc, t_w_dec = torch.from_numpy(w_enc).to(hf.dtype), torch.from_numpy(w_dec).to(hf.dtype)
    t_b_enc, t_c = torch.tensor(float(b_enc), dtype=hf.dtype), torch.tensor(FLAGS.gen_target, dtype=hf.dtype)

    def steer_hook(module, inp, out):
      h = out[0] if isinstance(out, tuple) else out
      f = torch.relu(h @ t_w_enc + t_b_enc)[..., None]
      h = h + (t_c - f) * t_w_dec
      return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    def hf_generate(key, batch_prompts, tokens_each):
      width = max(len(p) for p in batch_prompts)
      ids = torch.full((len(batch_prompts), width), tok.pad_token_id, dtype=torch.long)
      mask = torch.zeros_like(ids)
      for i, p in enumerate(batch_prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
      handle = hf.model.layers[layer].register_forward_hook(steer_hook) if key.endswith("_steered") else None
      clock = clocks.get(key)
      if clock is not None:
        clock.stamps.clear()
      try:
        with torch.inference_mode():
          out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens_each,
                            min_new_tokens=tokens_each, do_sample=False, pad_token_id=tok.pad_token_id,
                            logits_processor=transformers.LogitsProcessorList([clock]) if clock else None)
      finally:
        if handle is not None:
          handle.remove()
      return out[:, width:].tolist()

    reqs = [Request(i, tuple(p), new) for i, p in enumerate(prompts)]
    compile_s = {k: common.timed(lambda: ours(k, reqs)).seconds for k in engines}  # compiles every step
    sides = {"ours_steered": lambda i: ours("ours_steered", reqs),
             "hf_steered": lambda i: hf_generate("hf_steered", prompts, new),
             "ours_unsteered": lambda i: ours("ours_unsteered", reqs),
             "hf_unsteered": lambda i: hf_generate("hf_unsteered", prompts, new)}
    step_ms = {k: [] for k in sides}
    rounds = common.paired_rounds(sides, FLAGS.warmup, FLAGS.repeats,
                                  after_round=lambda i: [step_ms[k].append(c.step_ms()) for k, c in clocks.items()])
    work = n * new
    report = {k: common.spread(rounds.seconds[k], work) | {"decode_step_ms_median": statistics.median(step_ms[k])}
              for k in sides}
    for k in engines:
      report[k]["first_call_with_compile_s"] = compile_s[k]
    agree = {}
    for kind in ("steered", "unsteered"):  # same greedy tokens? (a check that both sides do the same work)
      a, b = rounds.values[f"ours_{kind}"][-1], rounds.values[f"hf_{kind}"][-1]
      agree[kind] = float(np.mean([x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb)]))
    steer_changed = float(np.mean([x != y for ra, rb in zip(rounds.values["ours_steered"][-1],
                                                            rounds.values["ours_unsteered"][-1])
                                   for x, y in zip(ra, rb)]))
    results[name] = {
        "ours_steered_tokens_per_s": report["ours_steered"]["tokens_per_s"],
        "hf_steered_tokens_per_s": report["hf_steered"]["tokens_per_s"],
        "ours_vs_hf_steered": common.ratio(rounds.seconds["ours_steered"], rounds.seconds["hf_steered"]),
        "ours_vs_hf_unsteered": common.ratio(rounds.seconds["ours_unsteered"], rounds.seconds["hf_unsteered"]),
        # > 0: steering costs us that fraction of the unsteered time (target <= 0.05)
        "ours_steering_overhead": statistics.median(rounds.seconds["ours_steered"])
                                  / statistics.median(rounds.seconds["ours_unsteered"]) - 1,
        "ours_steering_overhead_per_round": [s / u - 1 for s, u in zip(rounds.seconds["ours_steered"],
                                                                      rounds.seconds["ours_unsteered"])],
        "hf_steering_overhead": statistics.median(rounds.seconds["hf_steered"])
                                / statistics.median(rounds.seconds["hf_unsteered"]) - 1,
        "greedy_token_agreement_with_hf": agree, "tokens_changed_by_steering": steer_changed,
        "loadavg_1min": rounds.loadavg_1min, "sides": report}
    common.log("generate", f"{name}: ours steered {report['ours_steered']['tokens_per_s']:.0f} tok/s "
               f"({report['ours_steered']['decode_step_ms_median']:.0f} ms/step), HF steered "
               f"{report['hf_steered']['tokens_per_s']:.0f} tok/s ({report['hf_steered']['decode_step_ms_median']:.0f}"
               f" ms/step), ratio {results[name]['ours_vs_hf_steered']['ratio']:.2f}, our steering overhead "
               f"{100 * results[name]['ours_steering_overhead']:+.1f}%, agreement {agree}, load "
               f"{rounds.loadavg_1min[0]:.1f}->{rounds.loadavg_1min[1]:.1f}")

    if FLAGS.gen_profile_steps:
      profile[name] = _profile(model, plan, args, prompts, max_len)
      profile[name]["ceiling_vs_hf_step"] = (report["hf_steered"]["decode_step_ms_median"] / 1e3
                                             / profile[name]["weight_dots_only"]["median_s"])
      common.log("generate", f"{name} profile: {profile[name]}")

    if name == FLAGS.gen_mixed_dtype and FLAGS.gen_mixed_requests:
      mixed = _mixed(engines, ours, hf_generate, prompts, budgets, Request, clocks["ours_steered"])
    del hf, model, engines, rounds
  for a, b in (("bfloat16", "float32"),):
    if a in results and b in results:
      for kind in ("ours_steered", "hf_steered"):
        results[f"{kind}_{a}_vs_{b}"] = (results[a]["sides"][kind]["tokens_per_s"]
                                         / results[b]["sides"][kind]["tokens_per_s"])
  return {"model": path, "slots": n, "new_tokens": new, "layer": layer, "site": "resid_post",
          "method": "intervention", "target_c": FLAGS.gen_target, "prompt_tokens": [len(p) for p in prompts],
          "cache_max_len": max_len, "repeats": FLAGS.repeats, "warmup": FLAGS.warmup,
          "targets": {"ours_vs_hf_steered": ">= 3", "ours_steering_overhead": "<= 0.05",
                      "continuous_vs_static": ">= 1.5"},
          "results": results, "continuous_vs_static": mixed, "profile": profile}


def _mixed(engines, ours, hf_generate, prompts, budgets, Request, clock) -> dict:
  """Continuous batching vs a static batch (groups of `slots`, each run until its longest row is done)."""
  n = FLAGS.gen_slots
  reqs = [Request(i, tuple(prompts[i % len(prompts)]), b) for i, b in enumerate(budgets)]
  groups = [reqs[i:i + n] for i in range(0, len(reqs), n)]

  steps = {"continuous": 0, "static": 0}

  def continuous(i):
    out = ours("ours_steered", reqs)
    steps["continuous"] = len(clock.stamps)
    return out

  def static(i):
    out, steps["static"] = [], 0
    for g in groups:
      out += ours("ours_steered", [Request(j, r.prompt, r.max_new_tokens) for j, r in enumerate(g)])
      steps["static"] += len(clock.stamps)
    return out

  def hf_static(i):
    out = []
    for g in groups:
      toks = hf_generate("hf_mixed_steered", [list(r.prompt) for r in g], max(r.max_new_tokens for r in g))
      out += [t[:r.max_new_tokens] for t, r in zip(toks, g)]
    return out

  sides = {"continuous": continuous, "static": static}
  if FLAGS.gen_mixed_hf:
    sides["hf_static"] = hf_static
  rounds = common.paired_rounds(sides, 0, FLAGS.gen_mixed_repeats)
  useful = sum(budgets)
  report = {k: common.spread(v, useful) for k, v in rounds.seconds.items()}
  out = {"dtype": FLAGS.gen_mixed_dtype, "requests": len(budgets), "budgets_min_max": [min(budgets), max(budgets)],
         "useful_tokens": useful,
         "static_decode_steps": sum(max(r.max_new_tokens for r in g) for g in groups),
         "continuous_decode_steps_lower_bound": -(-useful // n),
         "continuous_decode_steps_fifo": _fifo_steps(budgets, n), "engine_decode_steps": steps,
         "continuous_vs_static": common.ratio(rounds.seconds["continuous"], rounds.seconds["static"]),
         "loadavg_1min": rounds.loadavg_1min, "sides": report}
  if "hf_static" in rounds.seconds:
    out["continuous_vs_hf_static"] = common.ratio(rounds.seconds["continuous"], rounds.seconds["hf_static"])
  common.log("generate", f"mixed set: continuous {report['continuous']['tokens_per_s']:.0f} tok/s, static "
             f"{report['static']['tokens_per_s']:.0f} tok/s, ratio {out['continuous_vs_static']['ratio']:.2f}")
  return out


def _fifo_steps(budgets: list[int], slots: int) -> int:
  """Decode steps of continuous batching with free prefills: requests taken in order by the first free slot."""
  import heapq
  free = [0] * slots
  for b in budgets:
    heapq.heappush(free, heapq.heappop(free) + b)
  return max(free)


def _profile(model, plan, args, prompts, max_len) -> dict:
  """The bare jitted decode step (no engine loop) with and without steering and sampler, in paired rounds, and
  the dots of each compiled step's HLO."""
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from sae_jax.generation import SamplerArgs, sample
  from sae_jax.generation.engine import default_cache_dtype
  from sae_jax.models import inference
  graphdef, state = nnx.split(model)
  n = FLAGS.gen_slots
  p = 64 if max(len(x) for x in prompts) <= 64 else 128
  tokens = np.zeros((n, p), np.int32)
  for i, x in enumerate(prompts):
    tokens[i, :len(x)] = x
  lengths = jnp.asarray([len(x) for x in prompts], jnp.int32)
  sargs = SamplerArgs(temperature=jnp.zeros(n), top_p=jnp.ones(n), top_k=jnp.zeros(n, jnp.int32),
                      key=jnp.zeros((n, 2), jnp.uint32), step=jnp.zeros(n, jnp.int32))
  active = jnp.ones(n, bool)
  # sampler=None: the step's own argmax, without the sampler's full-vocabulary sort (all rows here are greedy)
  variants = {"steered": (plan, args, sample), "unsteered": (None, None, sample),
              "steered_argmax_only": (plan, args, None), "unsteered_argmax_only": (None, None, None)}
  live, hlo = {}, {}
  for key, (hooks, hook_args, sampler) in variants.items():
    _, prompt_cache = inference.prefill(graphdef, state, tokens, lengths, hook_args, make_hooks=hooks)
    cache = inference.new_cache(model.cfg, n, max_len, default_cache_dtype(model))  # the engine's
    cache = inference.insert(cache, prompt_cache, jnp.arange(n, dtype=jnp.int32), lengths)
    cur = jnp.ones(n, jnp.int32)
    hlo[key] = _hlo_dots(inference.decode_step.lower(graphdef, state, cache, cur, active, hook_args, sargs,
                                                     make_hooks=hooks, sampler=sampler).compile().as_text())
    live[key] = {"cache": cache, "cur": cur}

  def step(key):
    hooks, hook_args, sampler = variants[key]
    v = live[key]
    v["cur"], v["cache"] = inference.decode_step(graphdef, state, v["cache"], v["cur"], active, hook_args, sargs,
                                                 make_hooks=hooks, sampler=sampler)
    v["cur"].block_until_ready()

  dots, ws, xs = _weight_dots(state, n)
  sides = {k: (lambda i, k=k: step(k)) for k in variants}
  sides["weight_dots_only"] = lambda i: dots(ws, xs).block_until_ready()
  rounds = common.paired_rounds(sides, 2, FLAGS.gen_profile_steps)
  out = {k: {"bare_decode_step": common.spread(rounds.seconds[k]), "hlo": hlo[k]}
         for k in variants}
  out["weight_dots_only"] = common.spread(rounds.seconds["weight_dots_only"])
  for kind in ("", "_argmax_only"):
    out[f"steering_overhead{kind}"] = (statistics.median(rounds.seconds[f"steered{kind}"])
                                       / statistics.median(rounds.seconds[f"unsteered{kind}"]) - 1)
  out["sampler_share_of_unsteered_step"] = 1 - (statistics.median(rounds.seconds["unsteered_argmax_only"])
                                                / statistics.median(rounds.seconds["unsteered"]))
  out["loadavg_1min"] = rounds.loadavg_1min
  return out


def _weight_dots(state, n: int):
  """(fn, ws, xs): `fn(ws, xs)` multiplies each weight matrix of the model (the embedding as the unembedding) by
  an [n, in] input in the weights' dtype with float32 results, as the model's own dots; reduced to one number."""
  import jax
  import jax.numpy as jnp
  leaves = [(("embed" in jax.tree_util.keystr(p)), v) for p, v in jax.tree_util.tree_leaves_with_path(state)
            if getattr(v, "ndim", 0) == 2]
  emb, ws = tuple(e for e, _ in leaves), [jnp.asarray(w) for _, w in leaves]
  xs = {k: jnp.full((n, k), 0.01, ws[0].dtype) for k in {w.shape[1] if e else w.shape[0] for e, w in zip(emb, ws)}}

  @jax.jit
  def dots(ws, xs):
    total = jnp.float32(0)
    for e, w in zip(emb, ws):
      total += jnp.dot(xs[w.shape[1] if e else w.shape[0]], w.T if e else w, preferred_element_type=jnp.float32).sum()
    return total

  return dots, ws, xs
