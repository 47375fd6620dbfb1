"""A deterministic, seekable producer of synthetic activations (sparse non-negative codes + noise)."""

import jax.numpy as jnp
import numpy as np


class SyntheticActs:

  def __init__(self, d: int, chunk: int = 64, n_chunks: int = 10_000, seed: int = 0, nan_at: int = -1):
    rng = np.random.RandomState(seed)
    self.dirs = rng.randn(4 * d, d).astype(np.float32)
    self.dirs /= np.linalg.norm(self.dirs, axis=1, keepdims=True)
    self.d, self.chunk, self.n_chunks, self.seed, self.nan_at = d, chunk, n_chunks, seed, nan_at
    self.position = 0

  def seek(self, position: int) -> None:
    self.position = position

  def __call__(self):
    if self.position >= self.n_chunks:
      return None
    rng = np.random.RandomState(self.seed * 100_003 + self.position)
    codes = rng.exponential(1.0, (self.chunk, len(self.dirs))) * (rng.rand(self.chunk, len(self.dirs)) < 0.03)
    acts = (codes @ self.dirs + 0.05 * rng.randn(self.chunk, self.d) + 0.5).astype(np.float32)
    if self.position == self.nan_at:
      acts[3, 1] = np.nan
    self.position += 1
    return jnp.asarray(acts), np.ones(self.chunk, bool)
