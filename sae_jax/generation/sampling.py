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


def _ordered(x: jax.Array) -> jax.Array:
  """float32 -> uint32 with the same order (so a threshold can be bisected bit by bit)."""
  u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(u >> 31 == 1, ~u, u | jnp.uint32(1 << 31))


def _largest_threshold(keys: jax.Array, enough) -> jax.Array:
  """The largest uint32 t with enough(keys >= t), for `enough` monotone (true at t = 0): 32 halvings of [0, 2^32).

  Each step is one pass over the vocabulary, so a row costs 32 passes instead of a sort (slow on CPU)."""

  def step(i, t):
    bit = jnp.uint32(1) << (31 - i).astype(jnp.uint32)
    return jnp.where(enough(keys >= (t | bit)), t | bit, t)

  return jax.lax.fori_loop(0, 32, step, jnp.uint32(0))


def filter_logits(logits: jax.Array, temperature, top_p, top_k) -> jax.Array:
  """logits [V] / temperature with everything outside the top-k and the top-p nucleus set to -inf.

  top-k keeps the k largest (ties at the k-th value kept); top-p then keeps the smallest set of most likely
  tokens whose mass reaches top_p (the token that crosses it included; ties at the boundary kept), as vLLM and
  HF do. Both thresholds are found by bisection, without sorting the vocabulary.
  """
  scaled = logits / jnp.maximum(temperature, 1e-6)
  keys = _ordered(scaled)
  kth = _largest_threshold(keys, lambda kept: jnp.sum(kept) >= top_k)
  keep = jnp.where(top_k > 0, keys >= kth, True)
  probs = jax.nn.softmax(jnp.where(keep, scaled, -jnp.inf))
  pkeys = _ordered(probs)
  cut = _largest_threshold(pkeys, lambda kept: jnp.sum(jnp.where(kept, probs, 0.0)) >= top_p)
  keep = keep & jnp.where(top_p < 1.0, pkeys >= cut, True)
  return jnp.where(keep, scaled, -jnp.inf)


def sample(logits: jax.Array, args: SamplerArgs) -> jax.Array:
  """Next tokens [B] from float32 logits [B, V]: argmax where temperature is 0, else a filtered draw.

  A batch with no sampled row (all greedy) skips the filters and the random draws entirely."""

  def one(row, temperature, top_p, top_k, key, step):
    key = jax.random.fold_in(key, step)
    drawn = jax.random.categorical(key, filter_logits(row, temperature, top_p, top_k))
    return jnp.where(temperature > 0, drawn, jnp.argmax(row))

  def draw(logits):
    return jax.vmap(one)(logits, args.temperature, args.top_p, args.top_k, args.key, args.step).astype(jnp.int32)

  greedy = lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32)  # noqa: E731
  return jax.lax.cond(jnp.any(args.temperature > 0), draw, greedy, logits)
