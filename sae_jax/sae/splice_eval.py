"""The SAE spliced into the model: next-token CE and KL with the reconstruction vs clean vs zero-ablation.

CE-loss-recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), as SAELens' `run_evals` reports it: 1 means
the reconstruction loses nothing the model uses downstream, 0 means it is as bad as deleting the site.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sae_jax.models.inference import forward_logits
from sae_jax.models.transformer import Hooks, Transformer
from sae_jax.sae import core
from sae_jax.sae.config import SAEConfig


def _token_stats(logits, clean_logp, tokens, valid):
  """Per-batch sums of next-token CE and KL(clean || this) over valid positions."""
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  target = tokens[:, 1:]
  ce = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  kl = jnp.sum(jnp.exp(clean_logp) * (clean_logp - logp), axis=-1)
  return jnp.sum(ce * valid), jnp.sum(kl * valid)


@jax.jit
def _stats(clean, sae, zero, tokens, valid):
  clean_logp = jax.nn.log_softmax(clean[:, :-1].astype(jnp.float32), axis=-1)
  ce_clean, _ = _token_stats(clean, clean_logp, tokens, valid)
  ce_sae, kl_sae = _token_stats(sae, clean_logp, tokens, valid)
  ce_zero, kl_zero = _token_stats(zero, clean_logp, tokens, valid)
  return jnp.stack([ce_clean, ce_sae, ce_zero, kl_sae, kl_zero, jnp.sum(valid)])


@dataclasses.dataclass(frozen=True)
class _Splice:
  """Static hook factory: the site replaced by the SAE reconstruction (`args` = (params, scale)) or by zeros."""

  layer: int
  site: str
  sae_cfg: SAEConfig | None = None
  zero: bool = False

  def __call__(self, args) -> Hooks:
    if self.zero:
      return Hooks(transforms={(self.layer, self.site): jnp.zeros_like})
    params, scale = args

    def reconstruct(x):
      xs = x.astype(jnp.float32) * scale
      return core.decode(params, core.encode(params, xs, self.sae_cfg if self.sae_cfg is not None else False)) / scale

    return Hooks(transforms={(self.layer, self.site): reconstruct})


def make_splice_eval(model: Transformer, layer: int, site: str, sae_cfg: SAEConfig | None = None):
  """fn(sae_params, scale, tokens, valid) -> (sums of CE clean/sae/zero, KL sae/zero, count).

  `sae_params` act on `scale * x` (pass the trainer's unfolded params with s, or folded params with 1).
  `sae_cfg` selects the architecture's encoder (None: the standard SAE without b_dec on the input).
  """
  graphdef, state = nnx.split(model)
  splice, zero = _Splice(layer, site, sae_cfg), _Splice(layer, site, zero=True)

  def run(params, scale, tokens, valid):
    clean = forward_logits(graphdef, state, tokens, None)
    sae = forward_logits(graphdef, state, tokens, None, (params, scale), make_hooks=splice)
    zeroed = forward_logits(graphdef, state, tokens, None, make_hooks=zero)
    return _stats(clean, sae, zeroed, tokens, valid)

  return run


def splice_metrics(model: Transformer, sae_params, token_batches, layer: int, site: str = "resid_post",
                   scale: float = 1.0, exclude_ids=(), sae_cfg: SAEConfig | None = None) -> dict:
  """Means over `token_batches` ([B, T] int arrays); predictions of excluded ids (BOS/EOS) do not count."""
  run = make_splice_eval(model, layer, site, sae_cfg)
  totals = np.zeros(6)
  for tokens in token_batches:
    tokens = np.asarray(tokens)
    valid = ~np.isin(tokens[:, 1:], np.asarray(list(exclude_ids), np.int64))
    totals += np.asarray(run(sae_params, jnp.float32(scale), tokens, valid), np.float64)
  n = max(totals[5], 1.0)
  ce_clean, ce_sae, ce_zero, kl_sae, kl_zero = totals[:5] / n
  return {"ce_loss_clean": ce_clean, "ce_loss_with_sae": ce_sae, "ce_loss_zero_ablation": ce_zero,
          "kl_with_sae": kl_sae, "kl_zero_ablation": kl_zero,
          "ce_loss_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
          "tokens": int(totals[5])}
