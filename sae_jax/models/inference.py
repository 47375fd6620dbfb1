"""The only place the model's forward is jitted: full-sequence forwards, the truncated site forward, and the
prefill / insert / decode steps of the sampling engine.

Every function takes the model split into `(graphdef, state)` (state is an argument, so weights are never
baked into a program and one compile serves any checkpoint of the same shape). Hooks are built inside the
jitted function from a static `make_hooks(hook_args) -> Hooks` and a traced `hook_args` pytree: changing what a
hook does numerically (a steering strength, which feature) reuses the compiled program.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.models.config import ModelConfig
from sae_jax.models.transformer import SITES, Hooks, KVCache, write_rows

MakeHooks = Callable[..., Hooks] | None


def _hooks(make_hooks: MakeHooks, hook_args, capture=frozenset()) -> Hooks:
  hooks = make_hooks(hook_args) if make_hooks is not None else Hooks()
  return dataclasses.replace(hooks, capture=hooks.capture | frozenset(capture)) if capture else hooks


@functools.partial(jax.jit, static_argnames=("graphdef", "make_hooks"))
def forward_logits(graphdef, state, tokens, attention_mask, hook_args=None, make_hooks: MakeHooks = None):
  """Logits [B, T, V] of a padded batch; one compile per (batch, length) shape and hook factory."""
  model = nnx.merge(graphdef, state)
  return model(tokens, attention_mask=attention_mask, hooks=_hooks(make_hooks, hook_args)).logits


@functools.partial(jax.jit, static_argnames=("graphdef", "capture", "make_hooks"))
def forward_captured(graphdef, state, tokens, attention_mask, capture: frozenset, hook_args=None,
                     make_hooks: MakeHooks = None):
  """(logits [B, T, V], {(layer, site): [B, T, d]}) of a padded batch: parity checks read both at once."""
  model = nnx.merge(graphdef, state)
  out = model(tokens, attention_mask=attention_mask, hooks=_hooks(make_hooks, hook_args, capture))
  return out.logits, out.captured


def site_forward(cfg: ModelConfig, graphdef, layer: int, site: str, mesh=None):
  """Jitted `run(state, tokens [B, T]) -> float32 [B, T, d]` of `site` at `layer`, never running later layers.

  With a mesh, the output keeps the batch on the data axes. It also lowers with abstract state (aot.py).
  """
  cfg.validate_layer(layer)
  if site not in SITES:
    raise UserError(f"unknown site {site!r}: expected one of {SITES}")
  hooks = Hooks(capture=frozenset({(layer, site)}))
  out_sharding = shd.batch_sharding(mesh, 3) if mesh is not None else None

  @functools.partial(jax.jit, out_shardings=out_sharding)
  def run(state, tokens):
    out = nnx.merge(graphdef, state)(tokens, hooks=hooks, stop_after_layer=layer)
    return out.captured[(layer, site)].astype(jnp.float32)

  return run


def make_site_fn(model, layer: int, site: str, mesh=None):
  """fn(tokens [B, T]) -> float32 activations [B, T, d] of `site` at `layer` (the activation collector's forward)."""
  graphdef, state = nnx.split(model)
  run = site_forward(model.cfg, graphdef, layer, site, mesh)
  return lambda tokens: run(state, tokens)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists into (tokens [B, P], mask [B, P]) so every row's last token is at P-1."""
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = p
    mask[i, width - len(p):] = True
  return tokens, mask


# ---- the sampling engine's steps ------------------------------------------------------------------------------

def cache_shardings(cfg: ModelConfig, mesh, slots: int, max_len: int) -> KVCache:
  """Shardings of a decode cache: slots on the data axes, KV heads on `model` (the weights' rules)."""
  kv = shd.logical_sharding(KVCache.AXES, KVCache.kv_shape(cfg, slots, max_len), mesh)
  row = shd.logical_sharding(("batch", "seq"), (slots, max_len), mesh)
  per_slot = shd.logical_sharding(("batch",), (slots,), mesh)
  return KVCache(k=(kv,) * cfg.num_layers, v=(kv,) * cfg.num_layers, valid=row, offset=per_slot)


def new_cache(cfg: ModelConfig, slots: int, max_len: int, dtype, mesh=None) -> KVCache:
  """An empty decode cache, created directly on its shardings (no host copy of a multi-GiB buffer)."""
  return _cache_maker(cfg, slots, max_len, jnp.dtype(dtype), mesh)()


@functools.lru_cache(maxsize=16)
def _cache_maker(cfg, slots, max_len, dtype, mesh):
  make = functools.partial(KVCache.zeros, cfg, slots, max_len, dtype)
  return jax.jit(make, out_shardings=cache_shardings(cfg, mesh, slots, max_len) if mesh is not None else None)


@functools.partial(jax.jit, static_argnames=("graphdef", "make_hooks"))
def prefill(graphdef, state, tokens, lengths, hook_args=None, make_hooks: MakeHooks = None):
  """Runs right-padded prompts tokens [n, P] (real lengths [n]) through the model with the hooks applied.

  Returns (float32 logits [n, V] at each prompt's last real token, the prompts' KVCache [n, P]). One compile per
  (n, P): callers bucket P.
  """
  model = nnx.merge(graphdef, state)
  n, p = tokens.shape
  mask = jnp.arange(p)[None, :] < lengths[:, None]
  cache = KVCache.zeros(model.cfg, n, p, model.dtype)
  out = model(tokens, attention_mask=mask, cache=cache, hooks=_hooks(make_hooks, hook_args), logits_at=lengths - 1)
  return out.logits[:, 0].astype(jnp.float32), out.cache


@functools.partial(jax.jit, donate_argnums=(0,))
def insert(cache: KVCache, prompt: KVCache, slots, lengths) -> KVCache:
  """Writes prefilled prompts (KVCache [n, P], real lengths [n]) into rows `slots` [n] of the decode cache.

  The rows' old contents are invalidated and their next write goes right after the prompt's real tokens, so
  the prompt's bucket padding is overwritten by generated tokens.
  """
  p = prompt.valid.shape[1]

  def put(buf, upd):  # [slots, Kv, S, D] <- [n, Kv, P, D]
    rows = jnp.zeros((upd.shape[0],) + buf.shape[1:], buf.dtype)
    rows = jax.lax.dynamic_update_slice_in_dim(rows, upd.astype(buf.dtype), 0, axis=2)
    return buf.at[slots].set(rows)

  valid = jnp.arange(cache.valid.shape[1])[None, :] < jnp.minimum(lengths, p)[:, None]
  return KVCache(k=tuple(put(b, u) for b, u in zip(cache.k, prompt.k)),
                 v=tuple(put(b, u) for b, u in zip(cache.v, prompt.v)),
                 valid=cache.valid.at[slots].set(valid),
                 offset=cache.offset.at[slots].set(lengths.astype(jnp.int32)))


@functools.partial(jax.jit, static_argnames=("graphdef", "make_hooks", "sampler"), donate_argnums=(2,))
def decode_step(graphdef, state, cache: KVCache, tokens, active, hook_args=None, sampler_args=None,
                make_hooks: MakeHooks = None, sampler=None):
  """One token for every slot: tokens [B] are appended to their rows and the next ones sampled.

  `active` [B] marks slots that hold a sequence; the others compute but write nothing valid and do not move.
  `sampler(logits [B, V] float32, sampler_args) -> tokens [B]` is folded into the step (None: greedy).
  Returns (next tokens [B] int32, the cache).
  """
  model = nnx.merge(graphdef, state)
  out = model(tokens[:, None], attention_mask=active[:, None], cache=cache, hooks=_hooks(make_hooks, hook_args))
  logits = out.logits[:, -1].astype(jnp.float32)
  nxt = sampler(logits, sampler_args) if sampler is not None else jnp.argmax(logits, axis=-1)
  moved = jnp.where(active, out.cache.offset, cache.offset)
  return nxt.astype(jnp.int32), out.cache.replace(offset=moved)


__all__ = ["forward_logits", "forward_captured", "site_forward", "make_site_fn", "left_pad", "cache_shardings",
           "new_cache", "prefill", "insert", "decode_step", "write_rows"]
