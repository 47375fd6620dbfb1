"""sae_jax: reasoning-feature SAEs (Galichin et al., 2025) in JAX/Flax, made for TPUs."""

__version__ = "0.1.0"
