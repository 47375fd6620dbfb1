"""The SAE core: SAELens 5.5.2's `standard` SAE, its training step, norm scaling, folds and file format."""

from sae_jax.sae.config import SAEConfig, parse_hook_name
from sae_jax.sae.norm import estimate_norm_scaling_factor
from sae_jax.sae.saelens_format import LoadedSAE, load_saelens, save_saelens
from sae_jax.sae.schedules import l1_coefficient_at, lr_at
from sae_jax.sae.standard import (decode, encode, encode_pre, fold_activation_norm_scaling_factor, fold_W_dec_norm,
                                  init_params, loss_fn, param_shapes)
from sae_jax.sae.train import clip_by_global_norm_torch, init_train_state, make_optimizer, make_train_step

__all__ = [
    "SAEConfig", "parse_hook_name", "estimate_norm_scaling_factor", "LoadedSAE", "load_saelens", "save_saelens",
    "l1_coefficient_at", "lr_at", "decode", "encode", "encode_pre", "fold_activation_norm_scaling_factor",
    "fold_W_dec_norm", "init_params", "loss_fn", "param_shapes", "clip_by_global_norm_torch", "init_train_state",
    "make_optimizer", "make_train_step",
]
