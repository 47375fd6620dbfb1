"""Opt-in LLM judge through an OpenAI-compatible chat endpoint (off by default; tests never call it).

The paper's numbers were graded with an LLM that maps a free-form answer onto the gold one (math) or onto a
letter (GPQA) whenever the plain comparison could not decide: Llama-3.3-70B-Instruct via OpenRouter,
temperature 0.5, 1024 max tokens, with the answer-extraction prompts below (simple-evals style, as the
paper's harness sent them). The client uses only urllib, reads its key from an environment variable, and
retries with exponential back-off; after `max_retries` failures it raises, and a rerun resumes from the store.
Graded inline, every judge call pauses the engine's generator; for long runs generate without the judge and
add it afterwards with `runner.regrade`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.error
import urllib.request

from sae_jax.errors import UserError

_MATH_EXAMPLES_HEAD = r"""
Look at the following attempt by a student and extract the student's answer. If it is equivalent (ignoring trivial simplifications) to any of the provided options, return the index of that option starting from 1. Else, return -1.

Examples:

    Options: ['2x+4', '2x', '4x']
    Attempt: The answer is 3+2x.

-1
(the student's answer is not among the options)

    Options: ['72,000']
    Attempt: 72000 \text{ cents}.

1
(always give benefit of the doubt to units and ignore formatting which makes the 1st option match)

    Options: ['2/(-3)', '2/3']
    Attempt: -1 * 2/3

1
(the 1st option matches after trivial simplifications which are fine)

    Options: ['x=5']
    Attempt: 5

1

    Options: ['\dfrac{33}{100}']
    Attempt: 0.33

1

    Options: ['75^\circ']
    Attempt: ...various calculations and explanations...hence the answer is $\boxed{x in 75}$.

1

    Options: ['(1,-3)', '(1,-1)', '(1,0)', '(1,-2)']
    Attempt: -2, 1

4
(ignore whitespace and other formatting which makes the 4th option match)

    Options: ['-2,1']
    Attempt: 1, -2

1
(likely a problem where multiple solutions are possible thus ignore order)
"""

# The AIME and MATH-500 prompts differ in one example only.
_MATH_ORDINAL_EXAMPLE = {
  "aime": r"""
    Options: ['11', '100', '50', '-5', '12', '10']
    Attempt: ...$\boxed{12^{\mathrm{th}}}$.

5
""",
  "math": r"""
    Options: ['12']
    Attempt: ...$\boxed{12^{\mathrm{th}}}$.

1
""",
}

_MATH_EXAMPLES_TAIL = r"""
    Options: ['2516_8']
    Attempt: 2516

1
(give benefit of the doubt for different bases)

    Options: ['11\sqrt2']
    Attempt: 11\sqrt{2}

1

    Options: ['11,\! 111,\! 111,\! 100']
    Attempt: 11111111100

1

    Options: ['\text{Navin}']
    Attempt: ...it is navin.

1

---

YOUR TASK


Respond with only the index of the matching option starting from 1 or -1 if there is absolutely no reasonable match. Do not include a rationale.

    Options: %(options)s
    Attempt: %(attempt)s
"""


def math_option_prompt(options: list[str], attempt: str, variant: str = "math") -> str:
  """The option-index prompt; options are listed as ['a', 'b'] without escaping, as the harness did."""
  template = (_MATH_EXAMPLES_HEAD + _MATH_ORDINAL_EXAMPLE[variant] + _MATH_EXAMPLES_TAIL).strip()
  options_str = "[" + ", ".join("'" + o + "'" for o in options) + "]"
  return template % {"options": options_str, "attempt": attempt}


GPQA_LETTER_PROMPT = r"""
Look at the following question and an attempt by a student and extract which choice among A, B, C, D the student picked. If the student did not pick any choice, respond with "-1".

Examples:

    Question: ...
    Attempt: Answer: **A**

A

    Question: A) Dinosaur B) Elephant C) Cat D) Dog
    Attempt: ...The answer is therefore Elephant...

B

    Question: ...
    Attempt: Answer: None of the above

-1

    Question: ...
    Attempt: ...Answer: D), because...

D

    Question: ...
(A) 7 
(B) 8 
(C) 4 
(D) 10
    Attempt: 4

C

    Question: ...
    Attempt: ...\\boxed{C}...

C

---

YOUR TASK


Respond only with the capitalized alphabetic letter (without quotes) or -1. Do not include a rationale.

    Question: %(question)s
    Attempt: %(attempt)s
""".strip()

GPQA_JUDGE_QUESTION = "{question}\nAnswer Choices:\n(A) {a}\n(B) {b}\n(C) {c}\n(D) {d}"


def gpqa_letter_prompt(question: str, choices: list[str], attempt: str) -> str:
  q = GPQA_JUDGE_QUESTION.format(question=question, a=choices[0], b=choices[1], c=choices[2], d=choices[3])
  return GPQA_LETTER_PROMPT % {"question": q, "attempt": attempt}


@dataclasses.dataclass
class Judge:
  """A chat-completions client; `name` labels the numbers it helped produce."""
  model: str = "meta-llama/llama-3.3-70b-instruct"
  base_url: str = "https://openrouter.ai/api/v1"
  api_key_env: str = "OPENROUTER_API_KEY"
  temperature: float = 0.5
  max_tokens: int = 1024
  timeout_s: float = 120.0
  max_retries: int = 8

  @property
  def name(self) -> str:
    return f"judge:{self.model}"

  def __call__(self, prompt: str) -> str:
    key = os.environ.get(self.api_key_env)
    if not key:
      raise UserError(f"the LLM judge needs an API key in ${self.api_key_env}")
    body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                       "temperature": self.temperature, "max_tokens": self.max_tokens}).encode()
    url = self.base_url.rstrip("/") + "/chat/completions"
    last = None
    for trial in range(self.max_retries + 1):
      req = urllib.request.Request(url, data=body, method="POST", headers={
          "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
      try:
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
          return json.loads(resp.read().decode())["choices"][0]["message"]["content"]
      except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as e:
        if isinstance(e, urllib.error.HTTPError) and e.code in (400, 401, 403, 404):
          raise UserError(f"LLM judge at {url}: HTTP {e.code} ({e.reason})") from None
        last = e
        if trial < self.max_retries:
          time.sleep(min(2 ** trial, 60))
    raise RuntimeError(f"LLM judge at {url} failed {self.max_retries + 1} times; last error: {last!r}")
