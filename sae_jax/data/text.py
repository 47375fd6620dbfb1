"""The reference's corpus builders as exact strings (sae_jax/paper.md, "Text templates", "The extraction set").

The SAE is trained and scored on text laid out exactly as the reference's prepare scripts lay it out
(DeepSeek-R1 special strings, the OpenThoughts system prompt with its line breaks, per-domain user
prompts); any difference moves token boundaries, so every string here is the reference's, byte for byte.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from sae_jax.errors import UserError

# DeepSeek-R1 special strings (fullwidth bars U+FF5C, U+2581 as the word separator).
BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"  # <｜begin▁of▁sentence｜>
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"  # <｜end▁of▁sentence｜>
USER = "<\uff5cUser\uff5c>"  # <｜User｜>
ASSISTANT = "<\uff5cAssistant\uff5c>"  # <｜Assistant｜>

# Domains kept by both OpenThoughts scripts, in this order (the subset builder walks them in order).
OPENTHOUGHTS_DOMAINS = ("code", "math", "puzzle", "biology", "chemistry", "physics")

# Leading and trailing newline are part of the prompt; the inner line breaks are the reference's too.
OPENTHOUGHTS_SYSTEM = (
  "\nYour role as an assistant involves thoroughly exploring questions through a systematic long thinking"
  " process\nbefore providing the final precise and accurate solutions. This requires engaging in a"
  " comprehensive cycle of\nanalysis, summarizing, exploration, reassessment, reflection, backtracing, and"
  " iteration to develop well-considered\nthinking process.\n"
)

CODE_STDIN_PROMPT = (
  "Generate an executable Python function generated from the given prompt. The function should take stdin"
  " as input and print the output. Simply call the function after the definition."
)
CODE_FN_PROMPT = (
  "Generate an executable Python function generated from the given prompt. Return the function body without"
  " invoking it at the final solution."
)
MATH_PROMPT = "Return your final response within \\boxed{}. "


def lmsys_conversation_text(conversation: Sequence[Mapping[str, Any]]) -> str:
  """One LMSYS-Chat-1M conversation as one string, as `prepare_lmsys_dataset.py` writes it.

  system -> raw content; user -> USER + content; assistant -> ASSISTANT + content, then EOS unless it is
  the last message. No BOS, no <think>. Other roles are skipped, as in the reference.
  """
  if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
    raise UserError("an LMSYS conversation must be a list of {role, content} messages, "
                    f"got {type(conversation).__name__}")
  parts = []
  for i, message in enumerate(conversation, start=1):
    try:
      role, content = message["role"], message["content"]
    except (KeyError, TypeError):
      raise UserError(f"LMSYS message {i} has no 'role'/'content': {str(message)[:80]!r}") from None
    if role == "system":
      parts.append(content)
    elif role == "user":
      parts.append(USER + content)
    elif role == "assistant":
      parts.append(ASSISTANT + content)
      if i != len(conversation):
        parts.append(EOS)
  return "".join(parts)


def _code_user_prompt(row: Mapping[str, Any]) -> str:
  tests = row.get("test_cases")
  if isinstance(tests, str):
    try:
      tests = json.loads(tests)
    except ValueError:
      raise UserError(f"OpenThoughts code row: 'test_cases' is not JSON: {tests[:80]!r}") from None
  has_fn = bool(tests.get("fn_name")) if isinstance(tests, Mapping) else False
  prompt = (CODE_FN_PROMPT if has_fn else CODE_STDIN_PROMPT) + row["problem"]
  # The reference tests `is not None`, so an empty starter_code still adds the newline.
  if row.get("starter_code") is not None:
    prompt += "\n" + row["starter_code"]
  return prompt


def openthoughts_user_prompt(row: Mapping[str, Any]) -> str:
  """The per-domain user turn of the reference's `Reasoner` (math boxed, code header, others raw)."""
  domain = row.get("domain")
  if domain == "code":
    return _code_user_prompt(row)
  if domain == "math":
    return MATH_PROMPT + row["problem"]
  if domain in ("puzzle", "biology", "chemistry", "physics"):
    return row["problem"]
  raise UserError(f"unsupported OpenThoughts domain {domain!r}: expected one of {OPENTHOUGHTS_DOMAINS}")


def openthoughts_text(row: Mapping[str, Any]) -> str:
  """One OpenThoughts-114k `metadata` row as the reference's DeepSeek-R1 training string."""
  missing = [k for k in ("domain", "problem", "deepseek_reasoning", "deepseek_solution") if k not in row]
  if missing:
    raise UserError(f"OpenThoughts row lacks {missing}: use the 'metadata' config of OpenThoughts-114k")
  return (
    f"{OPENTHOUGHTS_SYSTEM}{USER}{openthoughts_user_prompt(row)}{ASSISTANT}<think>\n"
    f"{row['deepseek_reasoning']}\n</think>\n{row['deepseek_solution']}"
  )


def _require_columns(dataset, columns, what: str) -> None:
  missing = [c for c in columns if c not in dataset.column_names]
  if missing:
    raise UserError(f"{what} needs column(s) {missing}; the dataset has {dataset.column_names}")


def lmsys_corpus(dataset, shuffle_seed: int | None = 42):
  """LMSYS-Chat-1M rows -> `text` column, then `.shuffle(seed=42)` as `prepare_lmsys_dataset.py`."""
  _require_columns(dataset, ["conversation"], "the 'lmsys' builder")
  out = dataset.map(lambda row: {"text": lmsys_conversation_text(row["conversation"])})
  return out.shuffle(seed=shuffle_seed) if shuffle_seed is not None else out


def filter_openthoughts_domains(dataset, domains: Sequence[str] = OPENTHOUGHTS_DOMAINS):
  """Rows whose `domain` is in `domains`, in original order (the reference's first `.filter`)."""
  _require_columns(dataset, ["domain"], "the OpenThoughts builders")
  keep = np.flatnonzero(np.isin(np.asarray(dataset["domain"], dtype=object), list(domains)))
  return dataset.select(keep)


def openthoughts_corpus(dataset, domains: Sequence[str] = OPENTHOUGHTS_DOMAINS, shuffle_seed: int | None = 42):
  """OpenThoughts `metadata` rows -> domain filter -> `text` -> `.shuffle(seed=42)` (training corpus)."""
  out = filter_openthoughts_domains(dataset, domains).map(lambda row: {"text": openthoughts_text(row)})
  return out.shuffle(seed=shuffle_seed) if shuffle_seed is not None else out


def openthoughts_subset(dataset, num_samples: int = 10_000, domains: Sequence[str] = OPENTHOUGHTS_DOMAINS,
                        seed: int = 42):
  """The extraction subset of `prepare_openthoughts_subset.py`, with a `text` column.

  See sae_jax/paper.md, "The extraction set".

  Per domain (in `domains` order): its rows in original order, `.shuffle(seed=42)`, first
  min(len, num_samples // len(domains)). If short of `num_samples`, top up with the first not-yet-chosen
  rows of the filtered dataset in original order. The reference crashes when even that is too few; here
  the subset is just smaller. Row order: domain blocks in order, then the top-up.
  """
  import datasets

  if num_samples <= 0:
    raise UserError(f"num_samples must be positive, got {num_samples}")
  filtered = filter_openthoughts_domains(dataset, domains)
  if len(filtered) == 0:
    raise UserError(f"no OpenThoughts rows in domains {tuple(domains)}")
  per_domain = num_samples // len(domains)
  filtered = filtered.add_column(_POS, np.arange(len(filtered)))
  domain_col = np.asarray(filtered["domain"], dtype=object)
  chosen = np.zeros(len(filtered), dtype=bool)
  parts = []
  for domain in domains:
    # `select` keeps original order, so this is the reference's `filter(domain).shuffle(seed)`.
    part = filtered.select(np.flatnonzero(domain_col == domain)).shuffle(seed=seed)
    part = part.select(range(min(len(part), per_domain)))
    chosen[np.asarray(part[_POS], dtype=np.int64)] = True
    parts.append(part)
  total = sum(len(p) for p in parts)
  if total < num_samples:
    parts.append(filtered.select(np.flatnonzero(~chosen)[: num_samples - total]))
  out = datasets.concatenate_datasets([p for p in parts if len(p)]).remove_columns(_POS)
  return out.map(lambda row: {"text": openthoughts_text(row)})


_POS = "__sae_jax_position"
