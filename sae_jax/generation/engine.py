"""Continuous-batching generation on the jitted prefill / insert / decode steps of `models.inference`.

A fixed number of slots decode together; when a row finishes (a stop id, a stop string, or its token budget)
the next pending prompt is prefilled into that slot at once, as vLLM does, instead of waiting for the longest
row of a static batch. Prompt lengths are bucketed (powers of two), so prompts of any length and outputs of any
length reuse a handful of compiled programs.
"""

import collections
import dataclasses
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sae_jax import pod
from sae_jax.errors import UserError
from sae_jax.generation import sampling
from sae_jax.models import inference
from sae_jax.models import sharding as shd
from sae_jax.models.transformer import Transformer

MIN_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class Request:
  """One sample to generate. `key` comes from `sampling.sample_key(seed, problem id, sample index)`."""

  id: Any
  prompt: tuple[int, ...]
  max_new_tokens: int
  key: tuple[int, int] = (0, 0)
  temperature: float = 0.0  # 0: greedy
  top_p: float = 1.0
  top_k: int = 0
  stop_ids: tuple[int, ...] = ()
  stop_strings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Result:
  id: Any
  tokens: list[int]  # generated ids; a stop id that ended the row is kept
  text: str | None  # decoded, cut before the first stop string (None without a decoder)
  finish_reason: str  # "stop_id" | "stop_string" | "length"
  prompt_tokens: int


def _mesh_of(state):
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      return sharding.mesh
  return None


def default_cache_dtype(model: Transformer):
  """The KV cache's storage dtype: the model's, except float32 on CPU.

  XLA CPU runs bf16 batched attention dots by converting both operands to f32, i.e. the whole cache every
  decode step (2.5x slower than an f32 cache, measured on SmolLM2). An f32 cache holds the same bf16-rounded
  keys and values, so tokens are unchanged; TPUs keep the model dtype (half the memory).
  """
  return jnp.dtype(jnp.float32) if jax.default_backend() == "cpu" else jnp.dtype(model.dtype)


def bucket(length: int, max_len: int) -> int:
  """The prefill length for a prompt: the next power of two >= length (at least MIN_BUCKET), capped at max_len."""
  b = MIN_BUCKET
  while b < length:
    b *= 2
  return min(b, max_len)


class Engine:
  """Generates many requests on `slots` rows of one KV cache of `max_len` tokens per row.

  `make_hooks` / `hook_args` fold a transform (steering) into every prefill and decode step; `hook_args` is
  traced, so another strength or feature reuses the compiled steps. `decode(ids) -> str` is needed for stop
  strings and result text.
  """

  def __init__(self, model: Transformer, slots: int, max_len: int, *, mesh=None, make_hooks=None,
               decode: Callable[[list[int]], str] | None = None, progress: Callable[[dict], None] | None = None,
               cache_dtype=None):
    if slots < 1 or max_len < 2:
      raise UserError(f"the engine needs at least 1 slot and 2 tokens per row, got slots={slots} max_len={max_len}")
    self.cfg = model.cfg
    self.graphdef, self.state = nnx.split(model)
    self.slots, self.max_len = slots, max_len
    # The cache and the step inputs live on the weights' mesh (a 1-device one when the model was loaded without
    # a mesh), so every call of a step sees the same input shardings and the steps compile once.
    self.mesh = mesh if mesh is not None else _mesh_of(self.state)
    self.make_hooks, self.decode, self.progress = make_hooks, decode, progress
    self.dtype = default_cache_dtype(model) if cache_dtype is None else jnp.dtype(cache_dtype)
    self._sample_one = jax.jit(sampling.sample)
    self._cache = None

  def _place(self, x):
    return jax.device_put(x, shd.logical_sharding(("batch",), x.shape, self.mesh)) if self.mesh is not None else x

  def generate(self, requests: Iterable[Request], hook_args=None) -> Iterator[Result]:
    """Yields each request's Result as soon as it finishes (not in request order).

    The host runs one step behind the device: step t+1 is dispatched (its input tokens are step t's output,
    still on the device) before step t's tokens are read, so the host's bookkeeping overlaps the device's work.
    A row whose token budget is reached is known without reading tokens and leaves at once; a row ended by a stop
    id or string is seen one step late, and that extra token is dropped.
    """
    pending = collections.deque(requests)
    for r in pending:
      self._check(r)
    total, done, emitted, start = len(pending), 0, 0, time.time()
    n = self.slots
    cache, self._cache = self._cache, None  # donated through the steps; kept for the next call
    if cache is None:
      cache = inference.new_cache(self.cfg, n, self.max_len, self.dtype, self.mesh)
    rows: list[_Row | None] = [None] * n  # the row each slot decodes next (None: free)
    cur = self._place(np.zeros(n, np.int32))  # each slot's next input token, on the device
    firsts: dict[int, int] = {}  # slot -> first token of a row prefilled since the last step
    sampler = {k: np.zeros(n, d) for k, d in (("temperature", np.float32), ("top_p", np.float32),
                                                ("top_k", np.int32))}
    keys, placed = np.zeros((n, 2), np.uint32), None
    inflight = None  # (next tokens on the device, the rows they belong to)
    try:
      while True:
        for s in range(n):  # refill every free slot before the next decode step
          while (rows[s] is None or rows[s].retired) and pending:
            req = pending.popleft()
            first, cache = self._prefill(cache, s, req, hook_args)
            row = _Row(req, [first], self._budget(req))
            if self._finished(row):
              done, emitted = done + 1, emitted + len(row.tokens)
              yield self._result(row)
              continue
            rows[s], firsts[s], placed = row, first, None
            sampler["temperature"][s], sampler["top_p"][s], sampler["top_k"][s] = req.temperature, req.top_p, req.top_k
            keys[s] = req.key
        active = np.array([r is not None and not r.retired for r in rows])
        dispatched = None
        if active.any():
          if firsts:
            mask = np.zeros(n, bool)
            values = np.zeros(n, np.int32)
            for s, t in firsts.items():
              mask[s], values[s] = True, t
            cur = _merge(cur, self._place(mask), self._place(values))
            firsts.clear()
          if placed is None or not np.array_equal(placed[0], active):
            placed = (active, self._place(active), {k: self._place(v) for k, v in sampler.items()},
                      self._place(keys))
          steps = np.array([1 + r.dispatched if r is not None else 0 for r in rows], np.int32)
          args = sampling.SamplerArgs(**placed[2], key=placed[3], step=self._place(steps))
          cur, cache = inference.decode_step(self.graphdef, self.state, cache, cur, placed[1], hook_args, args,
                                             make_hooks=self.make_hooks, sampler=sampling.sample)
          dispatched = (cur, [r if a else None for r, a in zip(rows, active)])
          for s in np.flatnonzero(active):
            rows[s].dispatched += 1
            rows[s].retired = 1 + rows[s].dispatched >= rows[s].budget
        if inflight is not None:  # the previous step's tokens, read while this step runs
          tokens = pod.to_host(inflight[0])  # every process sees every slot's token, decides the same
          for s, row in enumerate(inflight[1]):
            if row is None or row.finished:
              continue
            row.tokens.append(int(tokens[s]))
            if self._finished(row):
              done, emitted = done + 1, emitted + len(row.tokens)
              yield self._result(row)
          if self.progress is not None:
            self.progress({"done": done, "total": total, "busy_slots": int(active.sum()), "slots": n,
                           "generated_tokens": emitted + sum(len(r.tokens) for r in rows if r and not r.finished),
                           "seconds": time.time() - start})
        inflight = dispatched
        if inflight is None and not pending and not any(r is not None and not r.finished for r in rows):
          break
    finally:
      self._cache = cache

  def _check(self, r: Request) -> None:
    if len(r.prompt) < 1:
      raise UserError(f"request {r.id!r} has an empty prompt")
    if len(r.prompt) >= self.max_len:
      raise UserError(f"request {r.id!r}: prompt of {len(r.prompt)} tokens does not fit rows of {self.max_len}")
    if r.max_new_tokens < 1:
      raise UserError(f"request {r.id!r}: max_new_tokens must be positive, got {r.max_new_tokens}")
    if any(not s for s in r.stop_strings):
      raise UserError(f"request {r.id!r}: a stop string is empty")
    if r.stop_strings and self.decode is None:
      raise UserError("stop strings need a tokenizer (the engine's `decode`)")

  def _prefill(self, cache, slot: int, req: Request, hook_args):
    p = bucket(len(req.prompt), self.max_len)
    tokens = np.zeros((1, p), np.int32)
    tokens[0, :len(req.prompt)] = req.prompt
    lengths = np.array([len(req.prompt)], np.int32)
    logits, prompt_cache = inference.prefill(self.graphdef, self.state, tokens, lengths, hook_args,
                                             make_hooks=self.make_hooks)
    # host arrays, not one process's device arrays, beside the global logits and cache
    args = sampling.SamplerArgs(temperature=np.float32([req.temperature]), top_p=np.float32([req.top_p]),
                                top_k=np.int32([req.top_k]), key=np.asarray([req.key], np.uint32),
                                step=np.zeros((1,), np.int32))
    first = int(pod.to_host(self._sample_one(logits, args))[0])
    cache = inference.insert(cache, prompt_cache, np.int32([slot]), lengths)
    return first, cache

  def _budget(self, req: Request) -> int:
    return min(req.max_new_tokens, self.max_len - len(req.prompt))

  def _finished(self, row: "_Row") -> bool:
    """Whether the row's last token ends it; sets `row.reason` (and retires it) when it does."""
    req, toks = row.req, row.tokens
    if toks[-1] in req.stop_ids:
      row.reason = "stop_id"
    elif req.stop_strings and any(s in self.decode(toks[-(max(len(s) for s in req.stop_strings) + 2):])
                                  for s in req.stop_strings):
      row.reason = "stop_string"
    elif len(toks) >= row.budget:
      row.reason = "length"
    row.retired = row.retired or row.finished
    return row.finished

  def _result(self, row: "_Row") -> Result:
    req, toks = row.req, row.tokens
    text = self.decode(toks) if self.decode is not None else None
    if text is not None and req.stop_strings:
      cuts = [text.find(s) for s in req.stop_strings if s in text]
      text = text[:min(cuts)] if cuts else text
    return Result(id=req.id, tokens=list(toks), text=text, finish_reason=row.reason, prompt_tokens=len(req.prompt))


@dataclasses.dataclass
class _Row:
  """A request in a slot: its tokens so far, decode steps dispatched for it, and whether it needs more."""

  req: Request
  tokens: list[int]
  budget: int
  dispatched: int = 0
  retired: bool = False  # no further decode step: finished, or its budget is covered by dispatched steps
  reason: str | None = None  # why it finished, once its last token is read

  @property
  def finished(self) -> bool:
    return self.reason is not None


@jax.jit
def _merge(cur, mask, values):
  """Next input tokens: `values` where `mask` (freshly prefilled rows), else the last step's output."""
  return jnp.where(mask, values, cur)


def greedy_generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int, eos_ids=(),
                    pad_id: int = 0, slots: int | None = None) -> list[list[int]]:
  """Greedy continuation of each prompt, in prompt order (stops at the first EOS id, which is kept)."""
  del pad_id  # rows are right-aligned in their own cache slots: no padding token is ever fed
  longest = max(len(p) for p in prompts)
  engine = Engine(model, slots or len(prompts), longest + max_new_tokens)
  results = {r.id: r.tokens for r in engine.generate(
      Request(i, tuple(int(t) for t in p), max_new_tokens, stop_ids=tuple(eos_ids)) for i, p in enumerate(prompts))}
  return [results[i] for i in range(len(prompts))]
