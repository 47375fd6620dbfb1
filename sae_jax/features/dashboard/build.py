"""A dashboard's data (features.json): the streamed statistics with token strings, logit lens and ReasonScore."""

import dataclasses
import time

from sae_jax.features.dashboard.lens import logit_lens
from sae_jax.features.dashboard.stats import DashboardConfig


class TokenText:
  """Token id -> display string, decoded once per id (byte-level pieces may show as U+FFFD)."""

  def __init__(self, tokenizer):
    self.tokenizer, self.cache = tokenizer, {}

  def __call__(self, i: int) -> str:
    i = int(i)
    if i not in self.cache:
      try:
        self.cache[i] = self.tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
      except Exception:  # noqa: BLE001 (an id the tokenizer lacks still gets shown)
        self.cache[i] = f"<{i}>"
    return self.cache[i]


def _lens_rows(ids, values, text) -> list[dict]:
  return [{"token": int(i), "text": text(i), "value": float(v)} for i, v in zip(ids, values)]


def build_dashboards(stats: list[dict], tokenizer, *, w_dec_rows=None, unembed=None, scores=None,
                     group_names=(), config: DashboardConfig = DashboardConfig(), meta: dict | None = None,
                     summary: dict | None = None) -> dict:
  """features.json contents: stats from `collect_feature_stats` + token strings + logit lens + ReasonScore.

  `unembed` = (W_U, final norm weight) from `unembedding(model)`, with `w_dec_rows` [F, d] the decoder rows
  of the features (any scale). `scores` is a `ReasonScores` (optional). `summary` (the SAE on these tokens,
  from `collect_feature_stats`) goes into meta.
  """
  text = TokenText(tokenizer)
  if scores is not None:
    group_names = scores.group_names
  lens = {}
  if unembed is not None and w_dec_rows is not None:
    lens["raw"] = logit_lens(w_dec_rows, unembed[0], None, config.n_logits, config.n_bins)
    lens["final_norm"] = logit_lens(w_dec_rows, unembed[0], unembed[1], config.n_logits, config.n_bins)
  features = []
  for rank, st in enumerate(stats):
    f = dict(st, rank=rank + 1)
    for ex in f["top"] + [e for q in f["quantiles"] for e in q["examples"]]:
      for window in (ex, ex.get("expanded", {})):
        if "tokens" in window:
          window["text"] = [text(t) for t in window["tokens"]]
    f["logit_lens"] = {name: {"top": _lens_rows(r["top_ids"][rank], r["top_values"][rank], text),
                              "bottom": _lens_rows(r["bottom_ids"][rank], r["bottom_values"][rank], text),
                              "histogram": {"edges": r["hist_edges"][rank].tolist(),
                                            "counts": r["hist_counts"][rank].tolist()}}
                       for name, r in lens.items()}
    if scores is not None:
      j = f["feature"]
      f["reasonscore"] = {"score": float(scores.scores[j]), "mu_pos": float(scores.mu_pos[j]),
                          "mu_neg": float(scores.mu_neg[j]), "entropy_norm": float(scores.entropy_norm[j]),
                          "words": {g: float(scores.group_means[r, j]) for r, g in enumerate(group_names)}}
    features.append(f)
  summary = {} if summary is None else {"summary": summary}
  return {"meta": {**(meta or {}), **summary, "config": dataclasses.asdict(config), "group_names": list(group_names),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
          "features": features}
