"""An offline reasoning corpus for the embedded demo model (SmolLM2-135M-Instruct, ChatML).

The paper's corpora need a hub; the demo must run anywhere. So: worked math problems in the model's chat
template, the assistant turn a "<think>...</think>" trace that uses the ReasonScore vocabulary
(sae_jax/paper.md, "Vocabulary and groups": Wait, Let me, Therefore, However, Alternatively, Hmm, Maybe,
Perhaps, But, Another), so reasoning features have something to fire on. Problems come from a small
deterministic generator of arithmetic word problems, or from `reasoning_gym` when asked
(`use_reasoning_gym=True`): the corpus never depends on what happens to be installed.
"""

from __future__ import annotations

import importlib.util
import random
from typing import Callable

from sae_jax.data.tokenizers import load_tokenizer
from sae_jax.errors import UserError

REASONING_WORDS = ("Wait", "Let me", "Therefore", "However", "Alternatively", "Hmm", "Maybe", "Perhaps", "But",
                   "Another")
RG_TASKS = ("basic_arithmetic", "chain_sum", "leg_counting", "gcd", "lcm")

_NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kira", "Liam")
_ITEMS = ("apple", "notebook", "pencil", "ticket", "muffin", "battery", "sticker", "candle")


def _explain(rng: random.Random, restate: str, steps: list[str], answer: int, wrong: int, check: str) -> str:
  """A worked answer: restate, compute, catch a slip ("Wait"), verify another way, conclude."""
  pick = rng.choice
  lines = [
    pick(["Let me work through this step by step.", "Let me think about this carefully.",
          "Okay, let me break this down."]) + " " + restate,
    pick(["Hmm, the quickest route is ", "Hmm, I think the way in is "]) + steps[0],
    pick([f"So I get {wrong}. Wait, that does not look right.", f"That gives {wrong}? Wait, no, I mixed it up."]),
    pick(["Maybe I combined the numbers the wrong way. Let me redo it carefully.",
          "Maybe I misread the question. Let me go through it again."]),
    *steps[1:],
    pick(["However, a slip is easy here, so I should double-check.",
          "However, I want to be sure before answering."]),
    f"Perhaps the simplest check is {check}",
    f"Alternatively, I can reason backwards from {answer} and see that it fits.",
    pick(["But the two ways agree, so that is reassuring.", "But both routes give the same number."]),
    f"Another quick sanity check: {answer} is a sensible size for this question.",
    f"Therefore, the answer is {answer}.",
  ]
  return "<think>\n" + "\n".join(lines) + "\n</think>\n" + f"The answer is {answer}."


def _shopping(rng):
  name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
  a, p = rng.randint(2, 9), rng.randint(2, 12)
  bill = min(x for x in (20, 50, 100, 200) if x > a * p)  # the smallest note that covers it
  cost, ans = a * p, bill - a * p
  q = f"{name} buys {a} {item}s at ${p} each and pays with a ${bill} bill. How much change does {name} get?"
  steps = [f"to multiply the count by the price: {a} x {p}.", f"{a} x {p} = {cost}, so the {item}s cost ${cost}.",
           f"The change is {bill} - {cost} = {ans} dollars."]
  check = f"to add the change back: {cost} + {ans} = {bill}, which is the bill."
  return q, _explain(rng, f"{name} spends {a} x ${p} and pays ${bill}.", steps, ans, bill - a - p, check)


def _train(rng):
  v, t, w, u = rng.randint(40, 90), rng.randint(2, 5), rng.randint(30, 80), rng.randint(1, 4)
  ans = v * t + w * u
  q = (f"A train travels at {v} km/h for {t} hours, then at {w} km/h for {u} hours. "
       "How far does it travel in total?")
  steps = ["to add the two legs separately.", f"First leg: {v} x {t} = {v * t} km.",
           f"Second leg: {w} x {u} = {w * u} km.", f"Total: {v * t} + {w * u} = {ans} km."]
  check = f"the average speed: {ans} / {t + u} is between {min(v, w)} and {max(v, w)} km/h, as it must be."
  return q, _explain(rng, "Distance is speed times time for each leg.", steps, ans, (v + w) * (t + u), check)


def _marbles(rng):
  name = rng.choice(_NAMES)
  k, m = rng.randint(2, 7), rng.randint(2, 6)
  n = k * m + rng.randint(1, 30)
  ans = n - k * m
  q = f"{name} has {n} marbles and gives {k} marbles to each of {m} friends. How many marbles are left?"
  steps = [f"to find how many are given away: {k} x {m}.", f"{k} x {m} = {k * m} marbles are given away.",
           f"{n} - {k * m} = {ans} marbles remain."]
  check = f"that {ans} + {k * m} = {n}, the starting amount."
  return q, _explain(rng, f"{name} starts with {n} and gives away {m} groups of {k}.", steps, ans, n - k - m, check)


def _garden(rng):
  length, width = rng.randint(5, 30), rng.randint(3, 20)
  ans = length * width
  q = f"A rectangular garden is {length} m long and {width} m wide. What is its area in square meters?"
  steps = ["length times width.", f"{length} x {width} = {ans}.", f"So the area is {ans} square meters."]
  check = f"to split it: {length} x {width - 1} + {length} = {length * (width - 1)} + {length} = {ans}."
  return q, _explain(rng, "The area of a rectangle is length times width.", steps, ans,
                     2 * (length + width), check)


def _ages(rng):
  a_name, b_name = rng.sample(_NAMES, 2)
  b, d, y = rng.randint(3, 30), rng.randint(1, 15), rng.randint(1, 10)
  s = (b + d + y) + (b + y)
  q = (f"{a_name} is {d} years older than {b_name}. In {y} years, the sum of their ages will be {s}. "
       f"How old is {b_name} now?")
  steps = [f"to write {b_name}'s age as x, so {a_name} is x + {d}.",
           f"In {y} years: (x + {d} + {y}) + (x + {y}) = {s}.",
           f"That is 2x + {d + 2 * y} = {s}, so 2x = {s - d - 2 * y} and x = {b}."]
  check = f"that {b_name} will be {b + y} and {a_name} {b + d + y}; {b + y} + {b + d + y} = {s}."
  return q, _explain(rng, f"The age gap of {d} years never changes.", steps, b, (s - d) // 2, check)


def _savings(rng):
  name = rng.choice(_NAMES)
  per, weeks = rng.randint(5, 25), rng.randint(3, 12)
  spent = rng.randint(1, per * weeks - 1)
  ans = per * weeks - spent
  q = f"{name} saves ${per} every week for {weeks} weeks and then spends ${spent} on a gift. How much is left?"
  steps = [f"to total the savings: {per} x {weeks}.", f"{per} x {weeks} = {per * weeks} dollars saved.",
           f"{per * weeks} - {spent} = {ans} dollars left."]
  check = f"that {ans} + {spent} = {per * weeks}, the total saved."
  return q, _explain(rng, f"{name} saves {weeks} times ${per}.", steps, ans, per + weeks - spent, check)


FALLBACK_TEMPLATES: tuple[Callable, ...] = (_shopping, _train, _marbles, _garden, _ages, _savings)


def _rg_worked(rng: random.Random, question: str, answer: str) -> str:
  """A worked trace around a reasoning_gym answer (the gym gives only the final answer)."""
  lines = [
    "Let me read the question carefully and work it out step by step.",
    "Hmm, first I should restate what is asked.",
    f"The question: {question.strip()}",
    f"Perhaps the direct computation works. That gives {answer}.",
    "Wait, let me double-check that, since it is easy to slip.",
    "Maybe I misread something, so I go through it once more.",
    "However, redoing the computation carefully gives the same value.",
    f"Alternatively, I can check whether {answer} satisfies every condition, and it does.",
    "But I should not skip anything. Checking again, nothing is missing.",
    "Another pass agrees.",
    f"Therefore, the answer is {answer}.",
  ]
  if rng.random() < 0.5:
    lines.insert(1, "Okay.")
  return "<think>\n" + "\n".join(lines) + "\n</think>\n" + f"The answer is {answer}."


def _rg_problems(n: int, seed: int) -> list[tuple[str, str]] | None:
  """n (question, worked answer) from reasoning_gym round-robin over RG_TASKS, or None if unusable."""
  import reasoning_gym

  per_task = {}
  for task in RG_TASKS:
    try:  # procedural datasets: items are made on indexing, so asking for n each is cheap
      per_task[task] = reasoning_gym.create_dataset(task, size=n, seed=seed)
    except Exception:  # noqa: BLE001 - task names differ between reasoning_gym versions
      continue
  if not per_task:
    return None
  rng = random.Random(seed)
  tasks = list(per_task)
  out = []
  for i in range(n):
    item = per_task[tasks[i % len(tasks)]][i // len(tasks)]
    out.append((str(item["question"]), _rg_worked(rng, str(item["question"]), str(item["answer"]))))
  return out


def demo_problems(n: int, seed: int = 0, use_reasoning_gym: bool | None = None) -> list[tuple[str, str]]:
  """n (question, worked answer) pairs from the built-in generator, or reasoning_gym when `use_reasoning_gym`."""
  if n <= 0:
    raise UserError(f"the demo corpus needs n > 0 documents, got {n}")
  have_rg = importlib.util.find_spec("reasoning_gym") is not None
  if use_reasoning_gym and not have_rg:
    raise UserError("use_reasoning_gym=True but reasoning_gym is not installed (pip install reasoning-gym)")
  if use_reasoning_gym:
    problems = _rg_problems(n, seed)
    if problems is not None:
      return problems
  rng = random.Random(seed)
  return [FALLBACK_TEMPLATES[i % len(FALLBACK_TEMPLATES)](rng) for i in range(n)]


def demo_corpus(n: int = 2000, tokenizer=None, seed: int = 0, use_reasoning_gym: bool | None = None) -> list[str]:
  """n chat-formatted documents (user = question, assistant = worked "<think>" answer).

  tokenizer: object or dir whose chat template renders the turns; default: the embedded SmolLM2 (offline
  assets). Same n, seed and tokenizer -> same documents.
  """
  if tokenizer is None:
    from sae_jax.assets import build_all
    tokenizer = build_all().smollm2_hf
  tok = load_tokenizer(tokenizer)
  if not getattr(tok, "chat_template", None):
    raise UserError("the demo corpus needs a tokenizer with a chat template")
  return [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                  tokenize=False)
          for q, a in demo_problems(n, seed, use_reasoning_gym)]
