"""The SAE core: SAELens 5.5.2's `standard` SAE plus topk, batchtopk and jumprelu, their training step, norm
scaling, folds and file formats (SAELens, sparsify).

`encode` / `encode_pre` / `decode` / `loss` / `init_sae_params` dispatch on `SAEConfig.architecture` (core.py);
`loss_fn` and `init_params` are the standard SAE's own (SAELens-exact) functions.
"""

from sae_jax.sae.config import SAEConfig, parse_hook_name
from sae_jax.sae.core import (decode, encode, encode_pre, inference_params, init_sae_params, loss, param_names,
                              param_specs)
from sae_jax.sae.norm import estimate_norm_scaling_factor
from sae_jax.sae.saelens_format import LoadedSAE, load_saelens, save_saelens
from sae_jax.sae.schedules import l0_coefficient_at, l1_coefficient_at, lr_at
from sae_jax.sae.sparsify_format import load_sparsify, save_sparsify
from sae_jax.sae.standard import fold_activation_norm_scaling_factor, fold_W_dec_norm, init_params, loss_fn
from sae_jax.sae.standard import param_shapes
from sae_jax.sae.train import (SAEOptState, clip_by_global_norm_torch, init_train_state, make_optimizer,
                               make_train_step)

__all__ = [
    "SAEConfig", "parse_hook_name", "estimate_norm_scaling_factor", "LoadedSAE", "load_saelens", "save_saelens",
    "load_sparsify", "save_sparsify", "l0_coefficient_at", "l1_coefficient_at", "lr_at", "decode", "encode",
    "encode_pre", "inference_params", "init_sae_params", "loss", "param_names", "param_specs",
    "fold_activation_norm_scaling_factor", "fold_W_dec_norm", "init_params", "loss_fn", "param_shapes",
    "SAEOptState", "clip_by_global_norm_torch", "init_train_state", "make_optimizer", "make_train_step",
]
