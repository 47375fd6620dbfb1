"""Chat rendering of a benchmark prompt: one user turn, no system prompt, as the harness sent it.

Three templates, because DeepSeek changed the R1-Distill tokenizer after release and results depend on it:

* `tokenizer`: the tokenizer's own chat template (what `--apply_chat_template` used);
* `r1_think`: BOS + "<｜User｜>" + prompt + "<｜Assistant｜><think>\\n" (the current R1-Distill template, which
  forces the model to open its reasoning);
* `r1`: the same without the forced "<think>\\n" (the first release: the model opens `<think>` itself).

The text is tokenized without adding special tokens, as the harness did: the rendered text already holds the
BOS, and a second one would shift every position.
"""

from __future__ import annotations

from typing import Any, Sequence

from sae_jax.errors import UserError

R1_BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
R1_EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
R1_USER = "<\uff5cUser\uff5c>"
R1_ASSISTANT = "<\uff5cAssistant\uff5c>"
THINK_END = "</think>"
TEMPLATES = ("tokenizer", "r1_think", "r1")


def load_tokenizer(tokenizer: Any):
  """A tokenizer object, or one loaded from a local dir (no hub lookups)."""
  if isinstance(tokenizer, str):
    import transformers
    try:
      return transformers.AutoTokenizer.from_pretrained(tokenizer)
    except Exception as e:  # noqa: BLE001
      raise UserError(f"cannot load a tokenizer from {tokenizer}: {str(e).splitlines()[0][:160]}") from None
  return tokenizer


def render(prompt: str, template: str, tokenizer: Any = None) -> str:
  """The prompt as one user turn plus the generation prompt, as text."""
  if template == "r1_think":
    return R1_BOS + R1_USER + prompt + R1_ASSISTANT + "<think>\n"
  if template == "r1":
    return R1_BOS + R1_USER + prompt + R1_ASSISTANT
  if template != "tokenizer":
    raise UserError(f"unknown chat template {template!r}; known: {', '.join(TEMPLATES)}")
  tok = load_tokenizer(tokenizer)
  if tok is None or not getattr(tok, "chat_template", None):
    raise UserError("chat template 'tokenizer' needs a tokenizer that has a chat template")
  return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def encode(prompt: str, template: str, tokenizer: Any) -> list[int]:
  """Token ids of `render(...)`, tokenized without adding special tokens (see the module doc)."""
  tok = load_tokenizer(tokenizer)
  return list(tok(render(prompt, template, tok), add_special_tokens=False)["input_ids"])


def think_end_id(tokenizer: Any) -> int | None:
  """Id of the single token `</think>`, or None when the tokenizer has no such token (reasoning = all tokens)."""
  tok = load_tokenizer(tokenizer)
  ids = tok.encode(THINK_END, add_special_tokens=False)
  if len(ids) != 1:
    return None
  return ids[0] if tok.convert_ids_to_tokens(ids[0]) == THINK_END else None


def eos_text(tokenizer: Any) -> str | None:
  tok = load_tokenizer(tokenizer)
  return tok.decode([tok.eos_token_id]) if tok.eos_token_id is not None else None


def default_stop(tokenizer: Any) -> tuple[str, ...]:
  """The harness's stop strings (GPQA included): "Problem:", R1's EOS text and the tokenizer's EOS text."""
  stops = ["Problem:", R1_EOS]
  eos = eos_text(tokenizer)
  if eos and eos not in stops:
    stops.append(eos)
  return tuple(stops)


def check_stop(stop: Sequence[str]) -> tuple[str, ...]:
  for s in stop:
    if not isinstance(s, str) or s == "":
      raise UserError(f"stop strings must be non-empty strings, got {list(stop)!r}")
  return tuple(stop)
