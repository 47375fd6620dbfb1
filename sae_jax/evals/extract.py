"""Answer extraction as the paper's evaluation harness does it, kept separate so both graders can share it.

The paper's numbers come from an lm-evaluation-harness task that takes the last `\\boxed{...}` of a completion,
else everything after an `Answer:`, else "0". Quirks are kept on purpose (numbers must be comparable):

* a `\\boxed ` (with a space) anywhere wins over any `\\boxed{...}`: the answer is the text after the last
  `\\boxed ` up to the next `$`;
* braces are matched by counting from the last `\\boxed` (or `\\fbox` when there is no `\\boxed`); an unclosed
  box counts as no box;
* `Answer\\s*:\\s*(.*)` runs with DOTALL, so it captures everything after the FIRST `Answer:` (trailing text and
  newlines included, nothing stripped).

One deliberate difference: the harness asserts that a box starts with `\\boxed{` and crashes on `\\fbox{12}` or
`\\boxed\\text{5}`; here the box command and its outer braces are dropped instead.
"""

from __future__ import annotations

import re

ANSWER_RE = re.compile(r"(?i)Answer\s*:\s*(.*)", re.DOTALL)
NO_ANSWER = "0"  # what the harness grades when it finds neither a box nor "Answer:" (math tasks)


def last_boxed(text: str) -> str | None:
  """Content of the last box (see the module doc for which one), or None when there is none."""
  if "\\boxed " in text:
    return text.split("\\boxed ")[-1].split("$")[0]
  start = text.rfind("\\boxed")
  if start < 0:
    start = text.rfind("\\fbox")
    if start < 0:
      return None
  depth = 0
  for i in range(start, len(text)):
    if text[i] == "{":
      depth += 1
    elif text[i] == "}":
      depth -= 1
      if depth == 0:
        box = text[start:i + 1]
        return box[box.index("{") + 1:-1]
  return None


def answer_after_colon(text: str) -> str | None:
  """Everything after the first `Answer:` (case-insensitive), or None. Greedy DOTALL: one match at most."""
  m = ANSWER_RE.search(text)
  return m.group(1) if m else None


def extract_reference(text: str, default: str | None = NO_ANSWER) -> str | None:
  """The harness's answer string: last box, else the `Answer:` capture, else `default`."""
  box = last_boxed(text)
  if box is not None:
    return box
  after = answer_after_colon(text)
  return after if after is not None else default


def is_digits(s: str) -> bool:
  """`str.isdigit` as the harness tests it, minus digits that int() cannot read (superscripts such as "²")."""
  if not s.isdigit():
    return False
  try:
    int(s)
  except ValueError:
    return False
  return True


def normalize_int(s: str) -> str:
  """"023" -> "23" for digit strings (AIME golds and answers); anything else unchanged."""
  return str(int(s)) if is_digits(s) else s
