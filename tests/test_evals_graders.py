"""Grader verdicts on tricky answers, for the reference (paper harness) grader and math-verify / GPQA letters.

Expected values follow from the rules, not from running these graders: the reference takes the last box
(a `\\boxed ` with a space wins), else everything after the first "Answer:", else "0", compares digit
strings as integers and anything else exactly; math-verify compares mathematical values.
"""

import urllib.request

import pytest

from sae_jax.errors import UserError
from sae_jax.evals import extract
from sae_jax.evals.graders import GpqaLetter, MathVerify, ReferenceGpqa, ReferenceMath, answer_section
from sae_jax.evals.judge import Judge, gpqa_letter_prompt, math_option_prompt
from sae_jax.evals.tasks import Problem

# (completion, gold, reference extracted, reference correct, math-verify correct)
MATH_TABLE = [
  (r"so the answer is \boxed{\dfrac{1}{2}}.", r"\frac{1}{2}", r"\dfrac{1}{2}", False, True),  # \dfrac
  (r"\boxed{0.5}", r"\frac12", "0.5", False, True),  # decimal vs fraction
  (r"\boxed{\frac{14}{3}}", r"\frac{14}{3}", r"\frac{14}{3}", True, True),
  (r"The length is \boxed{5\text{ cm}}.", "5", r"5\text{ cm}", False, True),  # units
  (r"\boxed{(-\infty, 3]}", r"(-\infty,3]", r"(-\infty, 3]", False, True),  # interval, spacing
  (r"\boxed{30^\circ}", "30", r"30^\circ", False, True),  # degrees
  (r"\boxed{50\%}", "50", r"50\%", False, True),  # percent
  (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", r"\text{Evelyn}", True, True),  # text answer
  (r"\boxed{\text{(C)}}", r"\text{(C)}", r"\text{(C)}", True, True),
  (r"First \boxed{3}, but wait: it is \boxed{5}.", "5", "5", True, True),  # several boxed: the last
  (r"First \boxed{3}, but wait: it is \boxed{5}.", "3", "5", False, False),
  ("</think>\nAnswer: 42", "42", "42", True, True),  # no box: "Answer:"
  ("The result is 42.", "42", "0", False, True),  # no box, no "Answer:": the reference grades "0"
  ("Answer: 42\nThat is all.", "42", "42\nThat is all.", False, True),  # DOTALL capture keeps the tail
  (r"\boxed{023}", "23", "23", True, True),  # digit strings compare as integers
  (r"\boxed{1,000}", "1000", "1,000", False, True),
  (r"so $\boxed 5$.", "5", "5", True, True),  # "\boxed " variant, cut at "$"
  (r"\boxed{5", "5", "0", False, False),  # unclosed box: no box, no "Answer:"
  (r"\boxed{-4}", "-4", "-4", True, True),  # not a digit string: exact compare
  (r"\boxed{x=5}", "5", "x=5", False, True),
  (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}", False, True),
  (r"\boxed{3, 5}", "5, 3", "3, 5", False, True),  # a set in another order
  (r"\boxed{7}", "5", "7", False, False),
  (r"\fbox{12}", "12", "12", True, True),  # \fbox: the extractor's fallback when there is no \boxed
  # A box in the reasoning and a plain answer after </think>: the reference takes the box, math-verify the answer.
  ("<think>\nmaybe \\boxed{6}\n</think>\nSo the final answer is 4.", "6", "6", True, False),
  ("<think>\nmaybe \\boxed{4}\n</think>\nThe answer is \\boxed{6}.", "6", "6", True, True),
]


@pytest.mark.parametrize("completion,gold,ref_extracted,ref_ok,mv_ok", MATH_TABLE)
def test_math_graders_table(completion, gold, ref_extracted, ref_ok, mv_ok):
  p = Problem("math500", "x", "prompt", gold)
  ref = ReferenceMath()(completion, p)
  assert (ref.extracted, ref.correct) == (ref_extracted, ref_ok)
  assert MathVerify()(completion, p).correct is mv_ok


def test_math_verify_reports_what_it_read():
  p = Problem("math500", "x", "prompt", r"\frac{1}{2}")
  v = MathVerify()(r"<think>1/3?</think> so $\boxed{\dfrac{1}{2}}$", p)
  assert v.correct and v.extracted == r"\frac{1}{2}"
  v = MathVerify()("nothing to read here", p)
  assert v.extracted is None and not v.correct


# (completion, gold, reference extracted, reference correct, gpqa_letter extracted, gpqa_letter correct)
GPQA_TABLE = [
  ("Reasoning...\nAnswer: C", "C", "C", True, "C", True),
  ("Answer: c", "C", "C", True, "C", True),  # lower case is upper-cased by both
  (r"so \boxed{B}", "B", "B", True, "B", True),
  ("Answer: C\n", "C", "None", False, "C", True),  # the harness keeps the newline and fails
  ("Answer: (C)", "C", "None", False, "C", True),
  ("Answer: **D**", "D", "None", False, "D", True),
  ("The answer is D.", "D", "None", False, "D", True),  # no "Answer:" with a colon
  (r"\boxed{\text{A}}", "A", "None", False, "A", True),
  ("Answer: B\nHmm, actually \\boxed{D}", "D", "D", True, "D", True),  # a box wins over "Answer:"
  ("Answer: A\nAnswer: B", "B", "None", False, "B", True),  # the harness captures from the first "Answer:"
  ("The answer is a bit unclear.", "A", "None", False, None, False),  # "a" in prose is not a choice
  ("I am not sure.", "A", "None", False, None, False),
]


@pytest.mark.parametrize("completion,gold,ref_extracted,ref_ok,letter,letter_ok", GPQA_TABLE)
def test_gpqa_graders_table(completion, gold, ref_extracted, ref_ok, letter, letter_ok):
  p = Problem("gpqa_diamond", "q", "prompt", gold, {"question": "Q", "choices": ["w", "x", "y", "z"]})
  assert tuple(ReferenceGpqa()(completion, p).__dict__.values()) == (ref_extracted, ref_ok)
  assert tuple(GpqaLetter()(completion, p).__dict__.values()) == (letter, letter_ok)


def test_extract_rules():
  assert extract.last_boxed(r"a \boxed{x^{2}} b") == "x^{2}"
  assert extract.last_boxed(r"$\boxed 7$ and later \boxed{9}") == "7"  # the space variant wins
  assert extract.last_boxed("no box") is None
  assert extract.answer_after_colon("Final answer: 3. Answer: 4") == "3. Answer: 4"
  assert extract.normalize_int("007") == "7" and extract.normalize_int("-7") == "-7"
  assert extract.normalize_int("²") == "²"  # isdigit() is true but int() cannot read it


class _FakeJudge:
  name = "judge:fake"

  def __init__(self, reply):
    self.reply, self.prompts = reply, []

  def __call__(self, prompt):
    self.prompts.append(prompt)
    return self.reply


def test_reference_with_judge_maps_onto_the_gold():
  p = Problem("math500", "x", "prompt", r"\frac{1}{2}")
  j = _FakeJudge("1")
  v = ReferenceMath(j)(r"\boxed{0.5}", p)
  assert v.correct and v.extracted == r"\frac{1}{2}"
  assert "Options: ['\\frac{1}{2}']\n    Attempt: 0.5" in j.prompts[0]
  assert ReferenceMath(j).name == "reference+judge"
  assert not ReferenceMath(_FakeJudge("-1"))(r"\boxed{0.5}", p).correct
  assert not ReferenceMath(_FakeJudge("1\n"))(r"\boxed{0.5}", p).correct  # the harness does not strip replies
  j = _FakeJudge("1")
  assert ReferenceMath(j)(r"\boxed{12}", Problem("aime24", "x", "p", "12")).correct and not j.prompts  # ints: no call
  g = _FakeJudge("B")
  q = Problem("gpqa_diamond", "q", "p", "B", {"question": "Q?", "choices": ["w", "x", "y", "z"]})
  assert ReferenceGpqa(g)("It is x.", q).correct
  assert "Q?\nAnswer Choices:\n(A) w\n(B) x\n(C) y\n(D) z\n    Attempt: It is x." in g.prompts[0]


def test_judge_prompts_differ_only_in_one_example():
  aime, math = math_option_prompt(["5"], "x", "aime"), math_option_prompt(["5"], "x", "math")
  assert "Options: ['11', '100', '50', '-5', '12', '10']" in aime and "Options: ['12']\n" in math
  assert aime.endswith("Options: ['5']\n    Attempt: x") and aime.startswith("Look at the following attempt")
  assert "(A) 7 \n" in gpqa_letter_prompt("Q", list("abcd"), "a")


def test_judge_client_request(monkeypatch):
  """The client's HTTP request, against a stand-in for urlopen (no network)."""
  import io
  import json
  sent = {}

  class Resp(io.BytesIO):
    def __enter__(self):
      return self

    def __exit__(self, *a):
      return False

  def fake_urlopen(req, timeout):
    sent.update(url=req.full_url, body=json.loads(req.data), auth=req.get_header("Authorization"), timeout=timeout)
    return Resp(json.dumps({"choices": [{"message": {"content": "3"}}]}).encode())

  monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
  monkeypatch.setenv("MY_KEY", "k123")
  j = Judge(base_url="http://judge.invalid/v1/", api_key_env="MY_KEY")
  assert j("hello") == "3"
  assert sent["url"] == "http://judge.invalid/v1/chat/completions" and sent["auth"] == "Bearer k123"
  assert sent["body"] == {"model": "meta-llama/llama-3.3-70b-instruct", "temperature": 0.5, "max_tokens": 1024,
                          "messages": [{"role": "user", "content": "hello"}]}
  monkeypatch.delenv("MY_KEY")
  with pytest.raises(UserError, match="MY_KEY"):
    j("hello")


def test_answer_section():
  assert answer_section("<think>a</think>\nb") == "\nb"
  assert answer_section("<think>a</think>  ") == "<think>a</think>  "  # nothing after it: the whole text
  assert answer_section("no think") == "no think"
