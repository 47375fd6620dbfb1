"""The model: config, Flax transformer with hook sites, checkpoint loading, sharding, parity metrics."""

from sae_jax.models.config import ModelConfig
from sae_jax.models.transformer import SITES, ForwardOutput, Hooks, KVCache, Transformer
