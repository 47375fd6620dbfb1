"""Residual-stream activations: a truncated jitted forward, an on-device shuffle buffer, cached shards."""

from sae_jax.activations.collect import ActivationSource, make_site_fn
