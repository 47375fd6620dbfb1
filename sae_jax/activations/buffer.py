"""On-device shuffle buffer that mixes activations like SAELens' half-buffer scheme.

Each refill collects `half` new activations, concatenates them with the stored half, permutes, keeps one
half for the next refill and serves the other as training batches. The whole state is a pytree of arrays
(`BufferState`), so a checkpoint can save it and a resumed run continues bit-identically.

When the data runs out and looping is on, the buffer does what SAELens 5.5.2's `ActivationsStore` does at a
dataset's end: the half being collected and the stored half are dropped (no sample leaks across epochs), the
data starts again from its first row, and the store is primed anew. `batches_per_epoch` is that arithmetic,
so a run can check its token budget before step 0.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sae_jax.models import sharding as shd

from sae_jax.errors import UserError


@flax.struct.dataclass
class BufferState:
  store: jax.Array  # [half, d] mixed activations kept from the last refill
  pending: jax.Array  # [half + slack, d] new activations collected since the last refill
  count: jax.Array  # int32: rows of `pending` in use
  key: jax.Array  # PRNG key of the next permutation
  primed: jax.Array  # bool: `store` holds real data (the first refill only fills it)


def init_buffer(half: int, slack: int, d: int, seed: int, mesh=None) -> BufferState:
  """The empty buffer; with a `mesh`, its rows split over the data axes (where they divide) and the scalars
  replicated, so every process of a pod holds its part of one global buffer."""
  state = BufferState(store=np.zeros((half, d), np.float32), pending=np.zeros((half + slack, d), np.float32),
                      count=np.zeros((), np.int32), key=np.asarray(jax.random.PRNGKey(seed)),
                      primed=np.zeros((), bool))
  if mesh is None:
    return jax.tree.map(jnp.asarray, state)
  rows = lambda a: shd.logical_sharding(("batch", None), a.shape, mesh)  # noqa: E731
  return jax.tree.map(lambda a: jax.device_put(a, rows(a) if a.ndim == 2 else NamedSharding(mesh, PartitionSpec())),
                      state)


@functools.partial(jax.jit, donate_argnums=(0,))
def append(state: BufferState, acts: jax.Array, keep: jax.Array) -> BufferState:
  """Writes the kept rows of `acts` [n, d] (n <= slack) after the pending ones, in their original order."""
  order = jnp.argsort(~keep, stable=True)
  pending = jax.lax.dynamic_update_slice_in_dim(state.pending, acts[order], state.count, axis=0)
  return state.replace(pending=pending, count=state.count + jnp.sum(keep, dtype=jnp.int32))


def batches_per_epoch(kept_tokens: int, half: int, batch_size: int) -> int:
  """Batches one pass over `kept_tokens` activations serves: the first half only primes the store, every further
  full half serves half // batch_size batches, and the last partial half is dropped."""
  return max(kept_tokens // half - 1, 0) * (half // batch_size)


@jax.jit
def restart(state: BufferState) -> BufferState:
  """Drops the pending and stored activations (the next refill primes the store from the new epoch)."""
  return state.replace(count=jnp.zeros((), jnp.int32), primed=jnp.zeros((), bool))


@functools.partial(jax.jit, donate_argnums=(0,))
def prime(state: BufferState) -> BufferState:
  """The first refill only fills the store (SAELens' first half-buffer is not served)."""
  half = state.store.shape[0]
  key, sub = jax.random.split(state.key)
  store = state.pending[:half][jax.random.permutation(sub, half)]
  return state.replace(store=store, pending=jnp.roll(state.pending, -half, axis=0),
                       count=state.count - half, key=key, primed=jnp.ones((), bool))


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=("batch_size",))
def refill(state: BufferState, batch_size: int) -> tuple[BufferState, jax.Array]:
  """Mixes the stored half with `half` pending rows; returns the new state and [half // bs, bs, d] batches."""
  half = state.store.shape[0]
  new = state.pending[:half]
  key, sub = jax.random.split(state.key)
  mixed = jnp.concatenate([state.store, new])
  perm = jax.random.permutation(sub, mixed.shape[0])
  store, out = mixed[perm[:half]], mixed[perm[half:]]
  n = half // batch_size
  leftover = jnp.roll(state.pending, -half, axis=0)
  state = state.replace(store=store, pending=leftover, count=state.count - half, key=key)
  return state, out[: n * batch_size].reshape(n, batch_size, -1)


class ShuffleBuffer:
  """Feeds SAE training batches from an `ActivationSource`-like producer of (acts [n, d], keep [n]).

  `rewind`: called when the producer is exhausted to start the data again from its first row (an epoch; see the
  module docstring); None ends the stream there instead. `epoch` counts the restarts.
  """

  def __init__(self, produce, half: int, slack: int, d: int, batch_size: int, seed: int, rewind=None,
               mesh=None):
    if half < batch_size:
      raise ValueError(f"buffer half size {half} is smaller than the batch size {batch_size}")
    self.produce, self.half, self.slack, self.batch_size = produce, half, slack, batch_size
    self.rewind, self.epoch, self.mesh = rewind, 0, mesh
    self.state = init_buffer(half, slack, d, seed, mesh)

  def next_batches(self) -> jax.Array | None:
    """[k, batch, d] batches from one refill, or None when the producer is exhausted (and not rewound)."""
    served = bool(self.state.primed)  # False: no refill served since this epoch began
    while True:
      while int(self.state.count) < self.half:
        item = self.produce()
        if item is None:
          if self.rewind is None:
            return None
          if not served:
            raise UserError(f"one pass over the data fills fewer than two buffer halves of {self.half} "
                            "activations, so it serves no batch: add data or lower trainer.buffer_half_tokens")
          self.epoch += 1
          print(f"the data ran out: starting epoch {self.epoch + 1} from its first row (as SAELens does)")
          self.state = restart(self.state)
          self.rewind()
          served = False
          continue
        acts, keep = item
        if acts.shape[0] > self.slack:
          raise ValueError(f"a producer chunk of {acts.shape[0]} rows exceeds the buffer slack {self.slack}")
        keep = np.asarray(keep)  # the whole mask on every process: replicated on the mesh
        self.state = append(self.state, acts, keep if self.mesh is None else
                            jax.device_put(keep, NamedSharding(self.mesh, PartitionSpec())))
      if not bool(self.state.primed):
        self.state = prime(self.state)
        continue
      self.state, batches = refill(self.state, self.batch_size)
      return batches
