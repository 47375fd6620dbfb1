"""Token sampling folded into the decode step: greedy, temperature, top-k and top-p, one PRNG stream per sample.

A sample's key is derived from (seed, problem id, sample index) and folded with the index of the token being
drawn, so the tokens of a sample do not depend on the batch, slot or restart it ran in.
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class SamplerArgs:
  """Per-slot sampling settings and PRNG state (all traced: a new setting never recompiles)."""

  temperature: jax.Array  # [B] float32; 0 means greedy
  top_p: jax.Array  # [B] float32 in (0, 1]; 1 disables
  top_k: jax.Array  # [B] int32; 0 disables
  key: jax.Array  # [B, 2] uint32: the sample's key data
  step: jax.Array  # [B] int32: index of the token being drawn (0 = the first generated token)


def sample_key(seed: int, problem_id: str | int, sample_index: int) -> np.ndarray:
  """Raw uint32 [2] key of one sample, from (seed, problem id, sample index) only."""
  pid = problem_id if isinstance(problem_id, int) else _stable_hash(str(problem_id))
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), pid), sample_index)
  return np.asarray(key, np.uint32)


def _stable_hash(text: str) -> int:
  """A 31-bit FNV-1a hash: Python's own `hash` of a str changes between processes."""
  h = 2166136261
  for b in text.encode():
    h = ((h ^ b) * 16777619) & 0xFFFFFFFF
  return h & 0x7FFFFFFF


def filter_logits(logits: jax.Array, temperature, top_p, top_k) -> jax.Array:
  """logits [V] / temperature with everything outside the top-k and the top-p nucleus set to -inf.

  top-k keeps the k largest (ties at the k-th value kept); top-p keeps the smallest prefix of tokens sorted
  by probability whose mass reaches top_p (the token that crosses it included), as vLLM and HF do.
  """
  scaled = logits / jnp.maximum(temperature, 1e-6)
  order = jnp.argsort(-scaled)
  ranked = scaled[order]
  vocab = logits.shape[-1]
  kth = ranked[jnp.clip(top_k - 1, 0, vocab - 1)]
  keep = jnp.where(top_k > 0, scaled >= kth, True)
  probs = jax.nn.softmax(jnp.where(jnp.where(top_k > 0, ranked >= kth, True), ranked, -jnp.inf))
  before = jnp.cumsum(probs) - probs  # mass of the tokens ranked above each one
  in_nucleus_ranked = before < top_p
  in_nucleus = jnp.zeros((vocab,), bool).at[order].set(in_nucleus_ranked)
  keep = keep & jnp.where(top_p < 1.0, in_nucleus, True)
  return jnp.where(keep, scaled, -jnp.inf)


def sample(logits: jax.Array, args: SamplerArgs) -> jax.Array:
  """Next tokens [B] from float32 logits [B, V]: argmax where temperature is 0, else a filtered draw."""

  def one(row, temperature, top_p, top_k, key, step):
    key = jax.random.fold_in(key, step)
    drawn = jax.random.categorical(key, filter_logits(row, temperature, top_p, top_k))
    return jnp.where(temperature > 0, drawn, jnp.argmax(row))

  return jax.vmap(one)(logits, args.temperature, args.top_p, args.top_k, args.key, args.step).astype(jnp.int32)
