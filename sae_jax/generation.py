"""Jitted entry points on a split (graphdef, state) model: full-sequence logits and greedy decoding.

A later issue replaces greedy decoding with the real sampler; the KV-cache layout stays the same.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sae_jax.models.transformer import KVCache, Transformer


@functools.partial(jax.jit, static_argnames=("graphdef",))
def forward_logits(graphdef, state, tokens, attention_mask):
  """Logits [B, T, V] of a padded batch; one compile per (batch, length) shape."""
  return nnx.merge(graphdef, state)(tokens, attention_mask=attention_mask).logits


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy(graphdef, state, tokens, attention_mask, eos_ids, pad_id, max_new_tokens):
  model = nnx.merge(graphdef, state)
  batch, prompt_len = tokens.shape
  cache = KVCache.zeros(model.cfg, batch, prompt_len + max_new_tokens, model.dtype)
  out = model(tokens, attention_mask=attention_mask, cache=cache)
  first = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)

  def step(carry, _):
    tok, cache, done = carry
    out = model(tok[:, None], cache=cache)
    nxt = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
    done = done | jnp.isin(tok, eos_ids)
    nxt = jnp.where(done, pad_id, nxt)
    return (nxt, out.cache, done), tok

  init = (first, out.cache, jnp.zeros((batch,), bool))
  (last, _, _), toks = jax.lax.scan(step, init, None, length=max_new_tokens - 1)
  return jnp.concatenate([toks.T, last[:, None]], axis=1)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists into (tokens [B, P], mask [B, P]) so every row's last token is at P-1."""
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = p
    mask[i, width - len(p):] = True
  return tokens, mask


def greedy_generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int,
                    eos_ids=(), pad_id: int = 0) -> list[list[int]]:
  """Greedy continuation of each prompt (stops at the first EOS id, which is kept)."""
  graphdef, state = nnx.split(model)
  tokens, mask = left_pad(prompts, pad_id)
  eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
  out = np.asarray(_greedy(graphdef, state, tokens, mask, eos, jnp.int32(pad_id), max_new_tokens))
  results = []
  for row in out.tolist():
    cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
    results.append(row[:cut])
  return results
