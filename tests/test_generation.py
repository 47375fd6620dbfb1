"""The sampling engine: greedy parity with HF `generate`, continuous batching, compile counts, sampling filters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from sae_jax.generation import Engine, Request, filter_logits, greedy_generate, sample_key
from sae_jax.models.loading import load_model
from sae_jax.models.sharding import make_mesh
from sae_jax.models.transformer import Hooks

from conftest import CompileCounter


def _prompts(n, seed=0, low=3, high=70):
  rng = np.random.RandomState(seed)
  return [tuple(int(t) for t in rng.randint(0, 128, rng.randint(low, high))) for _ in range(n)]


def _run(engine, requests, hook_args=None):
  return {r.id: r.tokens for r in engine.generate(requests, hook_args)}


def test_greedy_64_tokens_equal_hf_generate_batched(assets):
  """SmolLM2 f32, 3 chat prompts of different lengths on 2 slots (a row refills): HF's greedy tokens exactly."""
  tok = transformers.AutoTokenizer.from_pretrained(assets.smollm2_hf)
  hf = transformers.AutoModelForCausalLM.from_pretrained(assets.smollm2_hf, dtype=torch.float32).eval()
  texts = ["Hi.", "Name three prime numbers and explain why each is prime.",
           "Write a short story about a robot who learns to paint, in the style of a fairy tale, with a moral."]
  ids = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                 return_dict=True)["input_ids"] for t in texts]
  assert len({len(i) for i in ids}) == len(ids)
  ours = greedy_generate(load_model(assets.smollm2_gguf, jnp.float32), ids, 64, slots=2)
  for prompt, got in zip(ids, ours):
    with torch.no_grad():
      ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                        max_new_tokens=64, do_sample=False, eos_token_id=None,
                        pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
    assert got == ref, (tok.decode(got), tok.decode(ref))


@pytest.fixture(scope="module")
def tiny(tiny_hf_dir):
  return load_model(tiny_hf_dir[1], jnp.float32)


def _requests(prompts, budgets, temperature=0.0, seed=3):
  return [Request(i, p, b, key=tuple(sample_key(seed, f"p{i}", 0)), temperature=temperature, top_p=0.9,
                  top_k=20 if temperature else 0) for i, (p, b) in enumerate(zip(prompts, budgets))]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_continuous_batching_equals_one_prompt_at_a_time(tiny, temperature):
  prompts = _prompts(7)
  budgets = [3, 25, 7, 40, 1, 12, 30]
  reqs = _requests(prompts, budgets, temperature)
  alone = {}
  single = Engine(tiny, 1, 128)
  for r in reqs:
    alone.update(_run(single, [r]))
  batched = _run(Engine(tiny, 3, 128), reqs)
  shuffled = _run(Engine(tiny, 4, 128), list(reversed(reqs)))
  assert [len(alone[i]) for i in range(7)] == budgets
  assert batched == alone and shuffled == alone
  if temperature:  # sampling really happened: not the greedy tokens
    assert alone != _run(single, _requests(prompts, budgets, 0.0))


def test_compile_count_fixed_across_lengths_and_hook_args(tiny):
  """After one pass over prompts in buckets 32/64/128: new prompt lengths (3-120), output lengths (1-60) and hook
  settings compile nothing more."""

  @dataclasses.dataclass(frozen=True)
  class AddVector:
    def __call__(self, args):
      return Hooks(transforms={(1, "resid_post"): lambda x: jnp.where(args["on"], x + args["vec"], x)})

  engine = Engine(tiny, 3, 192, make_hooks=AddVector())
  hook_args = lambda scale: {"on": jnp.asarray(scale > 0), "vec": jnp.full((64,), scale, jnp.float32)}  # noqa
  warm = [tuple(range(1, n)) for n in (20, 50, 100)]
  with CompileCounter() as first:
    _run(engine, _requests(warm, [2, 2, 2]), hook_args(1.0))
  assert first["decode_step"] <= 1 and first["prefill"] <= 3
  prompts = _prompts(9, seed=1, low=3, high=120)
  assert len({max(32, 1 << (len(p) - 1).bit_length()) for p in prompts}) == 3
  outs = []
  with CompileCounter() as compiles:
    for scale in (0.0, 0.5, 2.0):
      outs.append(_run(engine, _requests(prompts, [1 + 7 * i for i in range(9)]), hook_args(scale)))
  assert compiles.counts == {}
  assert outs[0] != outs[2]  # the hook argument really changed the tokens
  # Switched off, the hooked engine gives exactly the unhooked tokens.
  assert outs[0] == _run(Engine(tiny, 3, 192), _requests(prompts, [1 + 7 * i for i in range(9)]))


def test_same_tokens_on_the_8_device_mesh(tiny_hf_dir, tiny):
  mesh = make_mesh(4, 1, 2)
  sharded = load_model(tiny_hf_dir[1], jnp.float32, mesh=mesh)
  reqs = _requests(_prompts(6, seed=2), [5, 20, 9, 14, 2, 30], temperature=0.7)
  assert _run(Engine(sharded, 4, 128, mesh=mesh), reqs) == _run(Engine(tiny, 4, 128), reqs)


def test_stop_ids_stop_strings_and_budget(tiny):
  letters = lambda ids: "".join(chr(97 + t % 26) for t in ids)  # noqa: E731  a fake detokenizer
  prompt = _prompts(1, seed=5)[0]
  free = _run(Engine(tiny, 1, 128), [Request("a", prompt, 30)])["a"]
  text = letters(free)
  stop_id = free[10]
  engine = Engine(tiny, 2, 128, decode=letters)
  res = {r.id: r for r in engine.generate([
      Request("id", prompt, 30, stop_ids=(stop_id,)),
      Request("str", prompt, 30, stop_strings=(text[12:15],)),
      Request("len", prompt, 7)])}
  first = free.index(stop_id)
  assert res["id"].tokens == free[:first + 1] and res["id"].finish_reason == "stop_id"
  cut = text.find(text[12:15])
  assert res["str"].finish_reason == "stop_string" and res["str"].text == text[:cut]
  assert res["str"].tokens == free[:cut + 3]
  assert res["len"].tokens == free[:7] and res["len"].finish_reason == "length"


def _numpy_filter(logits, temperature, top_p, top_k):
  """Direct implementation: scale, keep the top-k (ties kept), then the smallest nucleus reaching top_p."""
  x = logits / temperature
  keep = np.ones_like(x, bool)
  if top_k > 0:
    keep &= x >= np.sort(x)[::-1][top_k - 1]
  if top_p < 1:
    order = np.argsort(-x, kind="stable")
    p = np.exp(np.where(keep, x, -np.inf) - x[keep].max())
    p = p / p.sum()
    mass = 0.0
    nucleus = np.zeros_like(keep)
    for i in order:
      if mass >= top_p:
        break
      nucleus[i] = keep[i]
      mass += p[i]
    keep &= nucleus
  return np.where(keep, x, -np.inf)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.6, 0.95, 0), (0.7, 1.0, 5), (1.3, 0.5, 12),
                                                     (0.6, 0.95, 3)])
def test_filter_matches_numpy_and_draws_follow_it(temperature, top_p, top_k):
  rng = np.random.RandomState(0)
  logits = (rng.randn(50) * 2).astype(np.float32)
  want = _numpy_filter(logits.astype(np.float64), temperature, top_p, top_k)
  got = np.asarray(filter_logits(jnp.asarray(logits), jnp.float32(temperature), jnp.float32(top_p),
                                 jnp.int32(top_k)))
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
  np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)
  # 20k draws: every token inside the kept set, frequencies within 5 sigma of the filtered softmax.
  from sae_jax.generation.sampling import SamplerArgs, sample
  n = 20000
  args = SamplerArgs(temperature=jnp.full((n,), temperature, jnp.float32), top_p=jnp.full((n,), top_p, jnp.float32),
                     top_k=jnp.full((n,), top_k, jnp.int32), key=jnp.tile(jnp.asarray(sample_key(1, "x", 0)), (n, 1)),
                     step=jnp.arange(n, dtype=jnp.int32))
  draws = np.asarray(jax.jit(sample)(jnp.tile(jnp.asarray(logits), (n, 1)), args))
  p = np.exp(want - want[np.isfinite(want)].max())
  p /= p.sum()
  freq = np.bincount(draws, minlength=50) / n
  assert np.all(freq[p == 0] == 0)
  assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9)


def test_sample_keys_depend_on_the_sample_only():
  a = sample_key(1234, "aime/3", 0)
  assert np.array_equal(a, sample_key(1234, "aime/3", 0))
  assert not np.array_equal(a, sample_key(1234, "aime/3", 1))
  assert not np.array_equal(a, sample_key(1234, "aime/4", 0))
  assert not np.array_equal(a, sample_key(1, "aime/3", 0))


def test_f32_cache_of_a_bf16_model_costs_no_accuracy(assets):
  """The CPU default stores the bf16 model's keys/values in f32 (where XLA fuses RoPE into that store, without
  bf16's intermediate roundings, entries differ by a few ulps). Teacher-forced on the f32 model's greedy tokens,
  its logits are as close to the f32 model's as the bf16 cache's are (mean |error| within 1.25x; both are bf16
  noise). Greedy tokens of the two caches may part at a near-tie, so they are not compared."""
  from flax import nnx
  from sae_jax.models.transformer import KVCache
  tok = transformers.AutoTokenizer.from_pretrained(assets.smollm2_hf)
  prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                     return_dict=True)["input_ids"]
             for t in ["Why is the sky blue?", "List three uses of a paperclip."]]
  f32, bf16 = load_model(assets.smollm2_gguf, jnp.float32), load_model(assets.smollm2_gguf, jnp.bfloat16)
  continuations = greedy_generate(f32, prompts, 16)

  def forced(model, cache_dtype, prompt, cont):
    graphdef, state = nnx.split(model)
    step = jax.jit(lambda s, t, c: (lambda o: (o.logits[0, -1].astype(jnp.float32), o.cache))(
        nnx.merge(graphdef, s)(t, cache=c)))
    logits, cache = step(state, jnp.asarray([prompt]), KVCache.zeros(model.cfg, 1, 96, cache_dtype))
    out = [logits]
    for t in cont[:-1]:
      logits, cache = step(state, jnp.asarray([[t]]), cache)
      out.append(logits)
    return np.stack(out)

  for prompt, cont in zip(prompts, continuations):
    wide, narrow, truth = (forced(m, d, prompt, cont) for m, d in ((bf16, jnp.float32), (bf16, jnp.bfloat16),
                                                                    (f32, jnp.float32)))
    assert np.abs(wide - truth).mean() <= 1.25 * np.abs(narrow - truth).mean()
