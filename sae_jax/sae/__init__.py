"""The SAE core: SAELens 5.5.2's `standard` SAE plus topk, batchtopk and jumprelu, their training step, norm
scaling, folds and file formats (SAELens, sparsify).

An `SAE` (core.py) is what loaders return (`load_sae`, loading.py, reads every format) and consumers take:
params, config and units, with `encode`, `decode`, `raw()`, `folded()`. Functions on bare params (`init_params`, `loss`, the folds, the train step) dispatch on
`SAEConfig.architecture` through the one table `ARCHITECTURES`.
"""

from sae_jax.sae.config import SAEConfig, parse_hook_name
from sae_jax.sae.core import (ARCHITECTURES, SAE, fold_activation_norm_scaling_factor, fold_W_dec_norm, init_params,
                              loss, param_names, param_shapes, param_specs)
from sae_jax.sae.loading import load_sae
from sae_jax.sae.norm import estimate_norm_scaling_factor
from sae_jax.sae.saelens_format import load_saelens, save_saelens
from sae_jax.sae.schedules import l0_coefficient_at, l1_coefficient_at, lr_at
from sae_jax.sae.sparsify_format import load_sparsify, save_sparsify
from sae_jax.sae.train import (SAEOptState, clip_by_global_norm_torch, init_train_state, make_optimizer,
                               make_train_step)

__all__ = [
    "SAEConfig", "parse_hook_name", "ARCHITECTURES", "SAE", "fold_activation_norm_scaling_factor", "fold_W_dec_norm",
    "init_params", "loss", "param_names", "param_shapes", "param_specs", "estimate_norm_scaling_factor", "load_sae",
    "load_saelens", "save_saelens", "l0_coefficient_at", "l1_coefficient_at", "lr_at", "load_sparsify",
    "save_sparsify", "SAEOptState", "clip_by_global_norm_torch", "init_train_state", "make_optimizer",
    "make_train_step",
]
