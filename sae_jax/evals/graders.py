"""Graders: a completion and its problem in, (extracted answer, correct) out, labelled by the grader's name.

* `reference` reproduces the paper's harness for like-for-like numbers (see `extract`): digit strings compare
  as integers, anything else exactly, unless an LLM judge is given (then the label is `reference+judge`, the
  grader behind the paper's numbers). With k samples the harness also offered earlier samples' answers to the
  judge as distractor options; here the options are the gold alone, identical for k = 1 (the paper's protocol)
  and independent of the order in which samples finish.
* `math_verify` (the default for math) checks mathematical equivalence with the `math-verify` package: it
  reads the answer after the last `</think>` when there is one (so a number in the reasoning is not taken for
  the answer), there the last box if any (math-verify alone would read "\\boxed{3} ... \\boxed{5}" as the set
  {3, 5}), and accepts \\dfrac vs \\frac, 0.5 vs 1/2, units, degrees, intervals, sets in any order.
* GPQA: `reference` (the harness: the last box or the text after "Answer:", exactly one letter, else "None")
  and `gpqa_letter` (the default): the same places, but it also reads "Answer: **C**", "(C)", "C." and a
  trailing newline, which the harness marks wrong.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from typing import Protocol

from sae_jax.evals.chat import THINK_END
from sae_jax.evals.extract import extract_reference, is_digits, last_boxed, normalize_int
from sae_jax.evals.judge import gpqa_letter_prompt, math_option_prompt
from sae_jax.evals.tasks import LETTERS, Problem


@dataclasses.dataclass(frozen=True)
class Verdict:
  extracted: str | None
  correct: bool


class Grader(Protocol):
  name: str

  def __call__(self, completion: str, problem: Problem) -> Verdict: ...


def answer_section(completion: str) -> str:
  """Text after the last `</think>` when it is not blank, else the whole completion."""
  if THINK_END in completion:
    tail = completion.rsplit(THINK_END, 1)[1]
    if tail.strip():
      return tail
  return completion


class ReferenceMath:
  """The harness's math grading (AIME 2024, MATH-500); `judge` is an optional `judge.Judge`."""

  def __init__(self, judge=None, variant: str = "math"):
    self.judge = judge
    self.variant = variant  # "aime" or "math": the judge prompt differs in one example
    self.name = "reference+judge" if judge is not None else "reference"

  def __call__(self, completion: str, problem: Problem) -> Verdict:
    gold = normalize_int(problem.gold)
    answer = extract_reference(completion)
    if is_digits(answer) and is_digits(gold):
      answer = normalize_int(answer)
    elif self.judge is not None:
      options = [gold]
      reply = self.judge(math_option_prompt(options, answer, self.variant))
      if reply != "-1" and reply.isdigit() and 0 <= int(reply) - 1 < len(options):
        answer = options[int(reply) - 1]
    return Verdict(answer, answer == gold)


class MathVerify:
  """Equivalence by `math-verify` (gold parsed as a boxed LaTeX answer)."""

  name = "math_verify"

  def __init__(self, timeout_s: int = 5):
    self.timeout_s = timeout_s
    self._gold: dict[str, list] = {}

  def _timeout(self):
    # math-verify times out with signal.alarm, which only works in the main thread.
    return self.timeout_s if threading.current_thread() is threading.main_thread() else None

  def __call__(self, completion: str, problem: Problem) -> Verdict:
    from math_verify import parse, verify
    t = self._timeout()
    if problem.gold not in self._gold:
      self._gold[problem.gold] = parse("\\boxed{" + problem.gold + "}", parsing_timeout=t)
    gold = self._gold[problem.gold]
    text = answer_section(completion)
    box = last_boxed(text)
    pred = parse(text if box is None else "\\boxed{" + box + "}", parsing_timeout=t)
    if not pred:
      return Verdict(None, False)
    extracted = next((p for p in pred if isinstance(p, str)), str(pred[0]))
    return Verdict(extracted, bool(gold) and bool(verify(gold, pred, timeout_seconds=t)))


class ReferenceGpqa:
  """The harness's GPQA grading: one exact letter from the last box or after "Answer:", else "None"."""

  def __init__(self, judge=None):
    self.judge = judge
    self.name = "reference+judge" if judge is not None else "reference"

  def __call__(self, completion: str, problem: Problem) -> Verdict:
    answer = extract_reference(completion, default=completion)
    if answer in ("a", "b", "c", "d"):
      answer = answer.upper()
    if answer not in LETTERS and self.judge is not None:
      answer = self.judge(gpqa_letter_prompt(problem.meta["question"], list(problem.meta["choices"]), answer))
    if answer not in LETTERS:
      answer = "None"
    return Verdict(answer, answer == problem.gold)


_ANSWER_LINE = re.compile(r"(?i)\banswer\b\s*(?:is\s*)?[:\uff1a]?\s*(.*)")  # "." stops at the line end


def _letter(text: str) -> str | None:
  """The letter of a short answer: "C", "(C)", "**C**", "\\text{C}", "C) 7", "C, because ..."; a lowercase
  letter only when it stands alone (so "a bit more" is not read as A)."""
  t = re.sub(r"\\text(?:bf)?\{([^{}]*)\}", r"\1", text).strip().strip("*_$ ")
  m = re.fullmatch(r"\(?([ABCD])\)?(?:[.:,;]?(?:\s.*)?)?", t, re.DOTALL) or re.fullmatch(r"\(?([abcd])\)?\.?", t)
  return m.group(1).upper() if m else None


class GpqaLetter:
  """Lenient letters: the last box, else the last "Answer: X" / "answer is X" line (answer section first)."""

  name = "gpqa_letter"

  def __call__(self, completion: str, problem: Problem) -> Verdict:
    for text in dict.fromkeys((answer_section(completion), completion)):
      box = last_boxed(text)
      letter = _letter(box) if box is not None else None
      if letter is None:
        letters = [x for x in (_letter(m.group(1)) for m in _ANSWER_LINE.finditer(text)) if x]
        letter = letters[-1] if letters else None
      if letter is not None:
        return Verdict(letter, letter == problem.gold)
    return Verdict(None, False)


def default_graders(task: str, judge=None) -> list:
  """The graders recorded for a task, the default (primary) one first."""
  if task == "gpqa_diamond":
    return [GpqaLetter(), ReferenceGpqa(judge)]
  return [MathVerify(), ReferenceMath(judge, variant="aime" if task == "aime24" else "math")]
