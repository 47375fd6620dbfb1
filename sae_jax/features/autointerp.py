"""Automatic labels for dashboard features from an LLM behind an OpenAI-compatible chat endpoint.

The paper mentions automatic interpretation without method or prompt (sae_jax/paper.md, "Dashboards"), so this
is our own, in the spirit of Bills et al. (2023): show the feature's top contexts and a few from lower intervals
with activations on a 0-10 scale, plus the logit lens, and ask for a short label. Off unless a URL is given; the
tests only check the prompt.
"""

import json
import urllib.error
import urllib.request

from sae_jax.errors import UserError

SYSTEM_PROMPT = (
    "You label features of a sparse autoencoder trained on the residual stream of a reasoning language model. "
    "A feature is a direction that activates on some tokens. You see text excerpts where the feature fires: "
    "the token the excerpt is centred on is wrapped as <<token>>, other tokens where the feature is active are "
    "wrapped as [[token]], and every excerpt starts with the centre token's activation on a 0-10 scale "
    "(10 = the feature's maximum). Find what the high-activation tokens have in common (a word, a concept, a "
    "step of reasoning such as hesitation, self-correction, exploring alternatives or checking). Answer with a "
    "label of at most 8 words on the first line, then one sentence of explanation on the second line.")


def _scale(a: float, max_act: float) -> int:
  return int(round(10 * a / max_act)) if max_act > 0 else 0


def format_example(ex: dict, max_act: float) -> str:
  """One excerpt: `[7] text with [[active]] tokens and the <<centre>> token`, from a dashboard example."""
  parts = []
  for i, (tok, a) in enumerate(zip(ex["text"], ex["acts"])):
    tok = tok.replace("\n", "\\n")
    if i == ex["center"]:
      parts.append(f"<<{tok}>>")
    elif a > 0 and _scale(a, max_act) > 0:
      parts.append(f"[[{tok}]]")
    else:
      parts.append(tok)
  return f"[{_scale(ex['value'], max_act)}] " + "".join(parts)


def label_prompt(feature: dict, n_top: int = 12, per_interval: int = 1, n_logits: int = 10) -> list[dict]:
  """Chat messages asking for a label of one dashboard feature (an entry of features.json, with texts)."""
  max_act = feature["max_activation"]
  if not feature.get("top"):
    raise UserError(f"feature {feature.get('feature')} never fired: nothing to label")
  lines = [f"Feature {feature['feature']}. Density: {100 * feature['density']:.3g}% of tokens.", "",
           "Top-activating excerpts:"]
  lines += [format_example(ex, max_act) for ex in feature["top"][:n_top]]
  lower = [ex for q in reversed(feature.get("quantiles", [])) for ex in q["examples"][:per_interval]]
  if lower:
    lines += ["", "Excerpts from lower activation ranges:"]
    lines += [format_example(ex, max_act) for ex in lower]
  lens = feature.get("logit_lens", {}).get("raw")
  if lens:
    lines += ["", "Tokens this direction promotes (logit lens): "
              + ", ".join(repr(r["text"]) for r in lens["top"][:n_logits])]
  words = feature.get("reasonscore", {}).get("words")
  if words:
    ranked = sorted(words, key=lambda w: -words[w])
    lines += ["", "Reasoning words it fires near most (ReasonScore): " + ", ".join(ranked[:5])]
  lines += ["", "Label (line 1) and explanation (line 2):"]
  return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def parse_label(text: str) -> tuple[str, str]:
  """(label, explanation) from the reply: its first two non-empty lines, "Label:" prefixes dropped."""
  lines = [ln.strip(" *\t") for ln in text.splitlines() if ln.strip(" *\t")]
  clean = [ln.split(":", 1)[1].strip(" *\t") if ln.lower().startswith(("label:", "explanation:")) else ln
           for ln in lines]
  return (clean[0][:120] if clean else ""), (clean[1] if len(clean) > 1 else "")


def request_completion(messages: list[dict], url: str, model: str, api_key: str | None = None,
                       timeout: float = 120.0, max_tokens: int = 120) -> str:
  """POST {url}/chat/completions (OpenAI-compatible), temperature 0; the reply's text."""
  body = json.dumps({"model": model, "messages": messages, "temperature": 0.0,
                     "max_tokens": max_tokens}).encode()
  headers = {"Content-Type": "application/json"}
  if api_key:
    headers["Authorization"] = f"Bearer {api_key}"
  req = urllib.request.Request(url.rstrip("/") + "/chat/completions", data=body, headers=headers)
  try:
    with urllib.request.urlopen(req, timeout=timeout) as resp:
      reply = json.load(resp)
    return reply["choices"][0]["message"]["content"] or ""
  except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as e:
    raise UserError(f"autointerp endpoint {url} failed: {e}") from None


def label_features(data: dict, url: str, model: str, api_key: str | None = None, **kwargs) -> dict:
  """Adds `label` and `label_explanation` to every feature of the dashboard data that fired."""
  for f in data["features"]:
    if f.get("top"):
      f["label"], f["label_explanation"] = parse_label(request_completion(label_prompt(f), url, model, api_key,
                                                                          **kwargs))
  data["meta"]["autointerp"] = {"url": url, "model": model}
  return data
