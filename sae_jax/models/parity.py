"""Our model against HF transformers (torch): the metrics users and tests read."""

import numpy as np


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def logit_metrics(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict:
  """Max |logit diff|, per-token KL(ref || ours) mean and max, and top-1 agreement over real tokens."""
  mask = np.asarray(mask, bool)
  ours, ref = np.asarray(ours, np.float64)[mask], np.asarray(ref, np.float64)[mask]
  lp_ours, lp_ref = _log_softmax(ours), _log_softmax(ref)
  kl = (np.exp(lp_ref) * (lp_ref - lp_ours)).sum(-1)
  return {
      "tokens": int(mask.sum()),
      "max_abs_logit_diff": float(np.abs(ours - ref).max()),
      "mean_kl": float(kl.mean()),
      "max_kl": float(kl.max()),
      "top1_agreement": float((ours.argmax(-1) == ref.argmax(-1)).mean()),
  }


def activation_metrics(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict:
  """Max |diff| and relative L2 error of a hook site over real tokens."""
  mask = np.asarray(mask, bool)
  ours, ref = np.asarray(ours, np.float64)[mask], np.asarray(ref, np.float64)[mask]
  return {
      "max_abs_diff": float(np.abs(ours - ref).max()),
      "relative_l2_error": float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30)),
  }


def hf_forward(hf_model, tokens: np.ndarray, mask: np.ndarray):
  """(logits, hidden_states tuple) from a transformers model, as float32 numpy.

  Positions count real tokens only (as ours do), so left-padded rows match their unpadded selves.
  """
  import torch
  mask_t = torch.as_tensor(np.asarray(mask), dtype=torch.long)
  with torch.no_grad():
    out = hf_model(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long), attention_mask=mask_t,
                   position_ids=(mask_t.cumsum(-1) - 1).clamp(min=0), output_hidden_states=True)
  return (out.logits.float().numpy(), tuple(h.float().numpy() for h in out.hidden_states))
