"""CE/KL with the SAE spliced in, checked against the definitions computed by hand in torch."""

import jax.numpy as jnp
import numpy as np
import torch

from sae_jax.models.loading import load_model
from sae_jax.sae import SAE, SAEConfig
from sae_jax.sae.splice_eval import splice_metrics


def _ce(logits, tokens):
  return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                           tokens[:, 1:].reshape(-1)).item()


def test_splice_metrics_match_hand_computation(tiny_hf_dir):
  hf, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  rng = np.random.RandomState(0)
  d, d_sae, layer = 64, 128, 1
  params = {"W_enc": rng.randn(d, d_sae).astype(np.float32) * 0.1, "b_enc": np.zeros(d_sae, np.float32),
            "W_dec": rng.randn(d_sae, d).astype(np.float32) * 0.1, "b_dec": rng.randn(d).astype(np.float32)}
  tokens = rng.randint(0, 128, (2, 12))
  scale = 0.5

  def sae_hook(mod, inp, out):
    h = out[0] if isinstance(out, tuple) else out
    x = h * scale
    f = torch.relu(x @ torch.from_numpy(params["W_enc"]) + torch.from_numpy(params["b_enc"]))
    rec = (f @ torch.from_numpy(params["W_dec"]) + torch.from_numpy(params["b_dec"])) / scale
    return (rec,) + tuple(out[1:]) if isinstance(out, tuple) else rec

  def zero_hook(mod, inp, out):
    h = out[0] if isinstance(out, tuple) else out
    return (torch.zeros_like(h),) + tuple(out[1:]) if isinstance(out, tuple) else torch.zeros_like(h)

  t = torch.tensor(tokens)
  with torch.no_grad():
    clean = hf(t).logits
    handle = hf.model.layers[layer].register_forward_hook(sae_hook)
    sae = hf(t).logits
    handle.remove()
    handle = hf.model.layers[layer].register_forward_hook(zero_hook)
    zero = hf(t).logits
    handle.remove()
  want = {"ce_loss_clean": _ce(clean, t), "ce_loss_with_sae": _ce(sae, t), "ce_loss_zero_ablation": _ce(zero, t)}
  kl = torch.nn.functional.kl_div(torch.log_softmax(sae[:, :-1], -1), torch.log_softmax(clean[:, :-1], -1),
                                  log_target=True, reduction="none").sum(-1).mean().item()
  sae = SAE(params, SAEConfig(d_in=d, d_sae=d_sae, hook_layer=layer), "scaled", scale)  # acts on scale * x
  got = splice_metrics(model, sae, [tokens])
  for k, v in want.items():
    assert abs(got[k] - v) < 1e-4, (k, got[k], v)
  assert abs(got["kl_with_sae"] - kl) < 1e-4
  rec = (want["ce_loss_zero_ablation"] - want["ce_loss_with_sae"]) / (
      want["ce_loss_zero_ablation"] - want["ce_loss_clean"])
  assert abs(got["ce_loss_recovered"] - rec) < 1e-3 and got["tokens"] == 22
