"""sae_jax: reasoning-feature sparse autoencoders (Galichin et al., 2025) in JAX/Flax, made for TPUs."""

import os

from setuptools import find_packages, setup


def _requirements():
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")) as f:
    lines = [line.split("#")[0].strip() for line in f]
  # torch and pytest serve the reference path and the tests; they are extras, not library requirements.
  return [r for r in lines if r and not r.startswith(("torch", "pytest"))]


setup(
    name="sae_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["sae_jax", "sae_jax.*", "configs"]),  # configs import each other
    python_requires=">=3.11",
    install_requires=_requirements(),
    extras_require={
        "test": ["pytest==9.2.0", "torch==2.13.0"],
        "tpu": ["libtpu==0.0.42.1"],
        "demo": ["reasoning-gym==0.1.25", "gguf==0.19.0"],
    },
)
