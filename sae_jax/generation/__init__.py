"""Sampling engine: continuous batching on the jitted steps of `models.inference`, with per-sample PRNG keys."""

from sae_jax.generation.engine import Engine, Request, Result, bucket, greedy_generate
from sae_jax.generation.sampling import SamplerArgs, filter_logits, sample, sample_key
from sae_jax.models.inference import forward_logits, left_pad
