"""Engine-agnostic evaluation loop: build requests, let an injected engine generate, grade and store each result.

`generate(requests, params)` is any callable that takes a list of `Request`s (all for one setting, with the
setting's opaque `params`, e.g. steering) and yields a `Completion` per request in any order, as a continuously
batched engine finishes them. The runner is called once per setting and never looks inside `params`.

Per-sample seeds depend on (seed, task, problem id, sample index) only, not on the setting: baseline and
steered runs draw the same random numbers for the same sample, so their difference is less noisy. Samples
already in the store are skipped; since grading is a function of the stored completion, a resumed run
reports exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from sae_jax.errors import UserError
from sae_jax.evals import chat
from sae_jax.evals.graders import default_graders
from sae_jax.evals.metrics import reasoning_length
from sae_jax.evals.store import SampleStore, fingerprint
from sae_jax.evals.tasks import Problem


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """The sampling protocol (config section `sampling`); the defaults are the paper's (T 0.6, top-p 0.95,
  32,768 new tokens, k = 1)."""
  template: str = "tokenizer"  # see chat.TEMPLATES
  temperature: float = 0.6
  top_p: float = 0.95
  top_k: int = 0  # 0: off
  max_new_tokens: int = 32768
  samples: int = 1  # k samples per problem
  seed: int = 1234
  stop: tuple[str, ...] | None = None  # None: chat.default_stop(tokenizer)

  def validate(self) -> None:
    if self.template not in chat.TEMPLATES:
      raise UserError(f"unknown chat template {self.template!r}; known: {', '.join(chat.TEMPLATES)}")
    if not (math.isfinite(self.temperature) and self.temperature >= 0):
      raise UserError(f"temperature must be finite and >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise UserError(f"top_k must be >= 0 (0: off), got {self.top_k}")
    if self.max_new_tokens < 1 or self.samples < 1:
      raise UserError(f"max_new_tokens and samples must be >= 1, got {self.max_new_tokens}, {self.samples}")
    if self.stop is not None:
      chat.check_stop(self.stop)


@dataclasses.dataclass(frozen=True)
class Setting:
  """A named generation setting: `params` is passed to `generate` untouched (empty for the baseline)."""
  name: str
  params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


BASELINE = Setting("baseline")


@dataclasses.dataclass(frozen=True)
class Request:
  uid: str
  setting: str
  task: str
  problem_id: str
  sample_index: int
  prompt_ids: tuple[int, ...]
  seed: int
  stop: tuple[str, ...]
  max_new_tokens: int
  temperature: float
  top_p: float
  top_k: int


@dataclasses.dataclass(frozen=True)
class Completion:
  """What the engine returns: the generated token ids (including a final EOS, as vLLM counts them), the text
  (cut before a stop string or not: the runner cuts at the first one) and "stop" or "length"."""
  uid: str
  token_ids: Sequence[int]
  text: str
  finish_reason: str


Generate = Callable[[list[Request], Mapping[str, Any]], Iterable[Completion]]


def sample_seed(seed: int, task: str, problem_id: str, sample_index: int) -> int:
  """A 31-bit seed from (seed, task, problem id, sample index), stable across runs and machines."""
  h = hashlib.sha256(json.dumps([seed, task, problem_id, sample_index]).encode()).digest()
  return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def setting_json(setting: Setting) -> dict:
  """The setting's params as stored in records (JSON values; anything else as its str)."""
  return json.loads(json.dumps(dict(setting.params), default=str))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
  cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
  return text[:cut]


def _group(tasks) -> dict[str, list[Problem]]:
  if isinstance(tasks, Mapping):
    groups = {name: list(ps) for name, ps in tasks.items()}
  else:
    groups = {}
    for p in tasks:
      groups.setdefault(p.task, []).append(p)
  for name, ps in groups.items():
    if not ps:
      raise UserError(f"task {name} has no problems")
    ids = [p.id for p in ps]
    if len(set(ids)) != len(ids):
      raise UserError(f"task {name}: problem ids are not unique")
  return groups


def _check_settings(settings: Sequence[Setting]) -> None:
  names = [s.name for s in settings]
  if not names:
    raise UserError("no settings to evaluate")
  if len(set(names)) != len(names) or any(not n for n in names):
    raise UserError(f"setting names must be non-empty and unique, got {names}")


def run_eval(tasks: Mapping[str, Sequence[Problem]] | Sequence[Problem], settings: Sequence[Setting],
             generate: Generate, store: SampleStore | str, tokenizer: Any, config: SamplingConfig = SamplingConfig(),
             graders: Mapping[str, Sequence] | None = None, judge=None, log=None) -> list[dict]:
  """Evaluate every (setting, problem, sample) not yet in `store`; returns the records of this plan.

  graders: task -> graders (the first is the primary one); default `graders.default_graders(task, judge)`.
  log: a callable taking one progress line (default: stderr), or False for silence.
  """
  config.validate()
  _check_settings(settings)
  groups = _group(tasks)
  tok = chat.load_tokenizer(tokenizer)
  stop = chat.check_stop(config.stop if config.stop is not None else chat.default_stop(tok))
  think_end = chat.think_end_id(tok)
  if log is None:
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  owned = isinstance(store, str)
  store = SampleStore(store) if owned else store
  task_graders = {t: list(graders[t]) if graders and t in graders else default_graders(t, judge) for t in groups}
  grader_names = {t: [g.name for g in gs] for t, gs in task_graders.items()}
  prompts = {(t, p.id): tuple(chat.encode(p.prompt, config.template, tok)) for t, ps in groups.items() for p in ps}
  sampling = {k: v for k, v in dataclasses.asdict(config).items() if k != "samples"}
  sampling["stop"] = list(stop)
  try:
    plan_keys = []
    for setting in settings:
      pending, problems, params = [], {}, setting_json(setting)
      for t, ps in groups.items():
        for p in ps:
          for j in range(config.samples):
            key = (setting.name, t, p.id, j)
            plan_keys.append(key)
            seed = sample_seed(config.seed, t, p.id, j)
            fp = fingerprint([prompts[(t, p.id)], sampling, params, seed, p.gold, grader_names[t]])
            done = store.get(key)
            if done is not None:
              if done.get("fingerprint") != fp:
                raise UserError(f"{store.path} holds sample {key} of a different configuration (prompt, sampling, "
                                f"setting params, seed or graders changed); use a new output dir")
              continue
            uid = json.dumps(list(key))
            problems[uid] = (p, fp, params)
            pending.append(Request(uid, setting.name, t, p.id, j, prompts[(t, p.id)], seed, stop,
                                   config.max_new_tokens, config.temperature, config.top_p, config.top_k))
      if not pending:
        continue
      if log:
        log(f"[evals] {setting.name}: {len(pending)} samples to generate")
      _consume(setting, pending, problems, generate, store, task_graders, think_end, stop, log)
    return [store.get(k) for k in plan_keys]
  finally:
    if owned:
      store.close()


def grade(text: str, problem: Problem, graders: Sequence) -> dict:
  """{grader name: {"extracted", "correct"}} for one completion."""
  out = {}
  for g in graders:
    v = g(text, problem)
    out[g.name] = {"extracted": v.extracted, "correct": bool(v.correct)}
  return out


def regrade(records: Iterable[dict], tasks, graders: Mapping[str, Sequence]) -> list[dict]:
  """Records with their grades recomputed from the stored completions (e.g. adding the LLM judge after a run
  instead of stalling the engine on it); the first grader of a task becomes the primary one."""
  groups = _group(tasks)
  problems = {(t, p.id): p for t, ps in groups.items() for p in ps}
  out = []
  for r in records:
    p = problems.get((r["task"], r["problem_id"]))
    if p is None or r["task"] not in graders:
      raise UserError(f"no problem or graders for {r['task']}/{r['problem_id']} to regrade")
    grades = grade(r["completion"], p, graders[r["task"]])
    primary = graders[r["task"]][0].name
    out.append({**r, "grades": grades, "grader": primary, "extracted": grades[primary]["extracted"],
                "correct": grades[primary]["correct"]})
  return out


def _consume(setting, pending, problems, generate, store, task_graders, think_end, stop, log) -> None:
  left = {r.uid: r for r in pending}
  t0, n_done, n_tokens = time.time(), 0, 0
  for out in generate(pending, dict(setting.params)):
    req = left.pop(out.uid, None)
    if req is None:
      raise RuntimeError(f"the engine returned an unknown or repeated request {out.uid}")
    problem, fp, params = problems[out.uid]
    text = cut_at_stop(out.text, stop)
    tokens = [int(t) for t in out.token_ids]
    grades = grade(text, problem, task_graders[req.task])
    primary = task_graders[req.task][0].name
    store.append({
      "setting": req.setting, "params": params, "task": req.task, "problem_id": req.problem_id,
      "sample_index": req.sample_index, "seed": req.seed, "prompt_tokens": len(req.prompt_ids), "tokens": tokens, "completion": text,
      "finish_reason": out.finish_reason, "gold": problem.gold, "reasoning_tokens": reasoning_length(tokens, think_end),
      "total_tokens": len(tokens), "think_end_id": think_end, "grader": primary,
      "extracted": grades[primary]["extracted"], "correct": grades[primary]["correct"], "grades": grades,
      "fingerprint": fp,
    })
    n_done += 1
    n_tokens += len(tokens)
    if log and (n_done == len(pending) or n_done % max(1, len(pending) // 20) == 0):
      dt = max(time.time() - t0, 1e-9)
      log(f"[evals] {setting.name}: {n_done}/{len(pending)} samples, {n_tokens / dt:.1f} generated tok/s")
  if left:
    raise RuntimeError(f"the engine finished without {len(left)} of {len(pending)} requests "
                       f"(e.g. {next(iter(left))}); rerun to resume")
