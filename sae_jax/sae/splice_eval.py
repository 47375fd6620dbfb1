"""The SAE spliced into the model: next-token CE and KL with the reconstruction vs clean vs zero-ablation, and
the reconstruction itself (explained variance, L0) on the same tokens.

CE-loss-recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), as SAELens' `run_evals` reports it: 1 means
the reconstruction loses nothing the model uses downstream, 0 means it is as bad as deleting the site.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sae_jax.models.inference import forward_logits, make_site_fn
from sae_jax.models.transformer import Hooks, Transformer
from sae_jax.sae import base
from sae_jax.sae.core import SAE


def _token_stats(logits, clean_logp, tokens, valid):
  """Per-batch sums of next-token CE and KL(clean || this) over valid positions."""
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  target = tokens[:, 1:]
  ce = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  kl = jnp.sum(jnp.exp(clean_logp) * (clean_logp - logp), axis=-1)
  return jnp.sum(ce * valid), jnp.sum(kl * valid)


@jax.jit
def _stats(clean, spliced, zero, tokens, valid):
  clean_logp = jax.nn.log_softmax(clean[:, :-1].astype(jnp.float32), axis=-1)
  ce_clean, _ = _token_stats(clean, clean_logp, tokens, valid)
  ce_sae, kl_sae = _token_stats(spliced, clean_logp, tokens, valid)
  ce_zero, kl_zero = _token_stats(zero, clean_logp, tokens, valid)
  return jnp.stack([ce_clean, ce_sae, ce_zero, kl_sae, kl_zero, jnp.sum(valid)])


@dataclasses.dataclass(frozen=True)
class _Splice:
  """Static hook factory: the site replaced by the reconstruction of the traced `SAE` argument, or by zeros."""

  layer: int
  site: str
  zero: bool = False

  def __call__(self, sae) -> Hooks:
    if self.zero:
      return Hooks(transforms={(self.layer, self.site): jnp.zeros_like})
    return Hooks(transforms={(self.layer, self.site): lambda x: sae.decode(sae.encode(x))})


def make_splice_eval(model: Transformer, layer: int, site: str):
  """fn(sae, tokens, valid) -> (sums of CE clean/sae/zero, KL sae/zero, count), `sae` an `SAE`."""
  graphdef, state = nnx.split(model)
  splice, zero = _Splice(layer, site), _Splice(layer, site, zero=True)

  def run(sae, tokens, valid):
    clean = forward_logits(graphdef, state, tokens, None)
    spliced = forward_logits(graphdef, state, tokens, None, sae, make_hooks=splice)
    zeroed = forward_logits(graphdef, state, tokens, None, make_hooks=zero)
    return _stats(clean, spliced, zeroed, tokens, valid)

  return run


def splice_metrics(model: Transformer, sae: SAE, token_batches, exclude_ids=()) -> dict:
  """Means over `token_batches` ([B, T] int arrays) with `sae` spliced in at its hook (any units);
  predictions of excluded ids (BOS/EOS) do not count."""
  run = make_splice_eval(model, sae.cfg.hook_layer, sae.cfg.hook_site)
  totals = np.zeros(6)
  for tokens in token_batches:
    tokens = np.asarray(tokens)
    valid = ~np.isin(tokens[:, 1:], np.asarray(list(exclude_ids), np.int64))
    totals += np.asarray(run(sae, tokens, valid), np.float64)
  n = max(totals[5], 1.0)
  ce_clean, ce_sae, ce_zero, kl_sae, kl_zero = totals[:5] / n
  return {"ce_loss_clean": ce_clean, "ce_loss_with_sae": ce_sae, "ce_loss_zero_ablation": ce_zero,
          "kl_with_sae": kl_sae, "kl_zero_ablation": kl_zero,
          "ce_loss_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
          "tokens": int(totals[5])}


def reconstruction_eval(model: Transformer, sae: SAE, token_batches, exclude_ids=()) -> dict:
  """Explained variance, L0 and MSE (raw units) of `sae` on the activations of `token_batches` at its hook, excluded
  ids (BOS/EOS) dropped: the trainer's per-batch definitions (`base.reconstruction_metrics`), averaged over the
  batches weighted by their tokens. On rows the SAE never trained on, this is its held-out reconstruction."""
  site_fn = make_site_fn(model, sae.cfg.hook_layer, sae.cfg.hook_site)
  exclude = np.asarray(list(exclude_ids), np.int64)
  sums, count = {"explained_variance": 0.0, "l0": 0.0, "mse_loss": 0.0}, 0
  for tokens in token_batches:
    tokens = np.asarray(tokens)
    x = jnp.asarray(np.asarray(site_fn(tokens))[~np.isin(tokens, exclude)])
    f = sae.encode(x)
    m = base.reconstruction_metrics(x, sae.decode(f), base.fire_count(f))
    for k in sums:
      sums[k] += float(m[k]) * len(x)
    count += len(x)
  return {**{k: v / max(count, 1) for k, v in sums.items()}, "tokens": count}
