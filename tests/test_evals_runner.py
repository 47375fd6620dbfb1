"""The engine-agnostic runner with a scripted engine: requests, grading, the store, kill + resume, reports."""

import json
import os

import pytest
import transformers

from sae_jax.errors import UserError
from sae_jax.evals import chat, report
from sae_jax.evals.runner import BASELINE, Completion, SamplingConfig, Setting, run_eval, sample_seed
from sae_jax.evals.store import SampleStore
from sae_jax.evals.tasks import Problem, load_task

THINK_END, EOS = 128014, 128001


@pytest.fixture(scope="module")
def tok(assets):
  return transformers.AutoTokenizer.from_pretrained(assets.llama3_tokenizer)


@pytest.fixture(scope="module")
def problems():
  gpqa = [Problem("gpqa_diamond", f"g{i}", f"Q{i}", "ABCD"[i % 4], {"question": f"Q{i}", "choices": list("wxyz")})
          for i in range(4)]
  return {"arithmetic": load_task("arithmetic", size=6, seed=1), "gpqa_diamond": gpqa}


def scripted(gold):
  """An engine whose outputs depend on (seed, params) only; steering makes it reason longer and err less.

  Answers come out in reverse request order (a continuous-batching engine finishes in any order), and
  some completions run on past a stop string, which the runner must cut.
  """
  calls = []

  def fake_correct(req, params):
    return req.seed % 3 != 0 or (params.get("strength", 0) > 0 and req.seed % 2 == 0)

  def generate(requests, params):
    calls.append((list(requests), dict(params)))
    for req in reversed(requests):
      n = 10 + req.seed % 7 + (5 if params.get("strength", 0) > 0 else 0)
      task = req.task
      ok = fake_correct(req, params)
      answer = gold[(task, req.problem_id)] if ok else "wrong"
      final = f"Answer: {answer}" if task == "gpqa_diamond" else f"The answer is \\boxed{{{answer}}}."
      tail = "\nProblem: and another one" if req.seed % 2 else ""
      yield Completion(req.uid, [1000 + i for i in range(n)] + [THINK_END, 5, 6, EOS],
                       "<think>\n" + "hmm " * n + "</think>\n" + final + tail, "stop")

  generate.calls = calls
  generate.correct = fake_correct
  return generate


SETTINGS = [BASELINE, Setting("steer_2", {"feature": 46379, "strength": 2.0}),
            Setting("steer_4", {"feature": 46379, "strength": 4.0})]
CONFIG = SamplingConfig(template="r1_think", samples=2, max_new_tokens=64)


def _gold(problems):
  return {(t, p.id): p.gold for t, ps in problems.items() for p in ps}


def test_requests_records_and_summary(tmp_path, tok, problems):
  gen = scripted(_gold(problems))
  recs = run_eval(problems, SETTINGS, gen, str(tmp_path / "samples.jsonl"), tok, CONFIG, log=False)
  assert len(gen.calls) == 3 and len(recs) == 3 * 10 * 2
  (base_reqs, base_params), (steer_reqs, steer_params) = gen.calls[:2]
  assert base_params == {} and steer_params == {"feature": 46379, "strength": 2.0}
  r0 = base_reqs[0]
  p0 = problems["arithmetic"][0]
  assert r0.prompt_ids == tuple(chat.encode(p0.prompt, "r1_think", tok)) and r0.prompt_ids[-2:] == (128013, 198)
  assert (r0.temperature, r0.top_p, r0.top_k, r0.max_new_tokens) == (0.6, 0.95, 0, 64)
  assert r0.stop == ("Problem:", "<｜end▁of▁sentence｜>")
  # seeds: per (task, problem, sample), shared by all settings
  assert [r.seed for r in base_reqs] == [r.seed for r in steer_reqs]
  assert len({r.seed for r in base_reqs}) == len(base_reqs)
  assert r0.seed == sample_seed(1234, "arithmetic", p0.id, 0)
  by_key = {(r["setting"], r["task"], r["problem_id"], r["sample_index"]): r for r in recs}
  for reqs, params in gen.calls:
    for req in reqs:
      rec = by_key[(req.setting, req.task, req.problem_id, req.sample_index)]
      want = gen.correct(req, params)
      assert rec["correct"] is want and rec["seed"] == req.seed
      assert "Problem:" not in rec["completion"]  # cut at the stop string
      n = 10 + req.seed % 7 + (5 if params else 0)
      assert (rec["reasoning_tokens"], rec["total_tokens"]) == (n, n + 4)
      if req.task == "arithmetic":
        assert rec["grader"] == "math_verify" and set(rec["grades"]) == {"math_verify", "reference"}
        assert rec["grades"]["reference"]["correct"] is want  # a boxed integer: both graders agree
      else:
        assert rec["grader"] == "gpqa_letter"
        # cut before "Problem:", the text ends in "Answer: C\n", which the harness's exact match rejects
        assert rec["grades"]["reference"]["correct"] is (want and req.seed % 2 == 0)
  summary = report.summarize(recs, SETTINGS)
  for s, reqs_params in zip(SETTINGS, gen.calls):
    for task in problems:
      reqs = [r for r in reqs_params[0] if r.task == task]
      rates = {}
      for r in reqs:
        rates.setdefault(r.problem_id, []).append(gen.correct(r, reqs_params[1]))
      want = sum(sum(v) / len(v) for v in rates.values()) / len(rates)
      got = summary["results"][s.name][task]
      assert got["graders"][got["primary_grader"]]["pass@1"]["mean"] == pytest.approx(want)
      assert got["reasoning_tokens"]["mean"] == pytest.approx(sum(10 + r.seed % 7 + (5 if s.params else 0)
                                                                  for r in reqs) / len(reqs))
      assert got["k"] == 2 and got["graders"][got["primary_grader"]]["cons@k"] is not None
  assert summary["deltas"]["steer_2"]["arithmetic"]["reasoning_tokens_pct"] > 0
  assert set(summary["deltas"]) == {"steer_2", "steer_4"}


def test_kill_and_resume_gives_the_same_report(tmp_path, tok, problems):
  gold = _gold(problems)
  full = run_eval(problems, SETTINGS, scripted(gold), str(tmp_path / "a.jsonl"), tok, CONFIG, log=False)
  path = str(tmp_path / "b.jsonl")

  def killed_after(n):
    gen, done = scripted(gold), [0]

    def generate(requests, params):
      for out in gen(requests, params):
        if done[0] == n:
          raise KeyboardInterrupt
        done[0] += 1
        yield out
    return generate

  with pytest.raises(KeyboardInterrupt):
    run_eval(problems, SETTINGS, killed_after(27), path, tok, CONFIG, log=False)
  with open(path, "a") as f:  # a kill in the middle of a write
    f.write('{"setting": "steer_2", "task": "arith')
  store = SampleStore(path)
  assert len(store) == 27 and store.repaired_bytes == len('{"setting": "steer_2", "task": "arith')  # 20 + 7
  store.close()
  gen = scripted(gold)
  resumed = run_eval(problems, SETTINGS, gen, path, tok, CONFIG, log=False)
  assert [len(c[0]) for c in gen.calls] == [13, 20]  # baseline was done; only the rest is generated
  key = lambda r: (r["setting"], r["task"], r["problem_id"], r["sample_index"])  # noqa: E731
  assert sorted(map(json.dumps, resumed)) == sorted(map(json.dumps, full))
  assert [key(r) for r in resumed] == [key(r) for r in full]
  a = report.write_report(str(tmp_path / "ra"), full, SETTINGS, plots=False)
  b = report.write_report(str(tmp_path / "rb"), resumed, SETTINGS, plots=False)
  assert a == b
  assert open(tmp_path / "ra" / "report.md").read() == open(tmp_path / "rb" / "report.md").read()
  # nothing left: a third run generates nothing
  gen = scripted(gold)
  run_eval(problems, SETTINGS, gen, path, tok, CONFIG, log=False)
  assert gen.calls == []


def test_changed_configuration_and_bad_engines_are_refused(tmp_path, tok, problems):
  gold = _gold(problems)
  path = str(tmp_path / "s.jsonl")
  run_eval(problems, [BASELINE], scripted(gold), path, tok, CONFIG, log=False)
  with pytest.raises(UserError, match="different configuration"):
    hotter = SamplingConfig(template="r1_think", samples=2, max_new_tokens=64, temperature=0.7)
    run_eval(problems, [BASELINE], scripted(gold), path, tok, hotter, log=False)
  with pytest.raises(UserError, match="non-empty"):
    run_eval(problems, [BASELINE], scripted(gold), str(tmp_path / "t.jsonl"), tok,
             SamplingConfig(stop=("Problem:", "")), log=False)
  with pytest.raises(UserError, match="unique"):
    run_eval(problems, [BASELINE, Setting("baseline", {"strength": 1})], scripted(gold), str(tmp_path / "u.jsonl"),
             tok, CONFIG, log=False)

  def drops_one(requests, params):
    yield from list(scripted(gold)(requests, params))[1:]
  with pytest.raises(RuntimeError, match="without 1 of 20"):
    run_eval(problems, [BASELINE], drops_one, str(tmp_path / "v.jsonl"), tok, CONFIG, log=False)

  def repeats(requests, params):
    outs = list(scripted(gold)(requests, params))
    yield from outs + outs[:1]
  with pytest.raises(RuntimeError, match="unknown or repeated"):
    run_eval(problems, [BASELINE], repeats, str(tmp_path / "w.jsonl"), tok, CONFIG, log=False)


def test_report_files_and_paper_deltas(tmp_path, tok, problems):
  recs = run_eval(problems, SETTINGS, scripted(_gold(problems)), str(tmp_path / "s.jsonl"), tok, CONFIG, log=False)
  out = str(tmp_path / "report")
  summary = report.write_report(out, recs, SETTINGS, protocol={"temperature": 0.6, "k": 2})
  for f in ("summary.json", "report.md", "accuracy.png", "reasoning_lengths.png", "sweep.png"):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
  with open(os.path.join(out, "accuracy.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert json.load(open(os.path.join(out, "summary.json")))["results"].keys() == {"baseline", "steer_2", "steer_4"}
  md = open(os.path.join(out, "report.md")).read()
  assert "| baseline | math_verify (primary) |" in md and "| baseline | reference |" in md
  assert "| baseline | gpqa_letter (primary) |" in md
  assert "+13.4%" not in md  # the arithmetic and GPQA tables carry only their own paper deltas
  assert "+4% (secondary source)" in md and "up to +20.5%" in md
  assert "no `</think>` token" not in md and not summary["no_think_token"]
  plain = report.summarize([{**r, "think_end_id": None} for r in recs], SETTINGS)
  assert "no `</think>` token: reasoning length = total length" in report.render_markdown(plain)
  assert summary["paper"]["accuracy_delta"]["aime24"] == "+13.4%"
  e = summary["results"]["steer_2"]["arithmetic"]
  line = next(x for x in md.splitlines() if x.startswith("| steer_2 | math_verify (primary) |"))
  assert f"| {100 * e['graders']['math_verify']['pass@1']['mean']:.1f} |" in line
  assert f"/ {e['reasoning_tokens']['ceil_mean']} |" in line


def test_regrade_adds_a_judge_after_the_run_and_records_rebuild_the_report(tmp_path, tok, problems):
  from sae_jax.evals.graders import MathVerify, ReferenceMath
  from sae_jax.evals.runner import regrade

  recs = run_eval(problems, SETTINGS, scripted(_gold(problems)), str(tmp_path / "s.jsonl"), tok, CONFIG, log=False)
  calls = []

  def judge(prompt):  # maps every non-integer answer onto the gold
    calls.append(prompt)
    return "1"

  arith = [r for r in recs if r["task"] == "arithmetic"]
  again = regrade(arith, problems, {"arithmetic": [ReferenceMath(judge), MathVerify()]})
  assert [r["grader"] for r in again] == ["reference+judge"] * len(arith)
  # the judge is asked whenever answer and gold are not both digit strings: "wrong", and negative golds
  asked = [r for r in arith if not (r["grades"]["reference"]["extracted"].isdigit() and r["gold"].isdigit())]
  assert any(not r["correct"] for r in asked) and any(r["gold"].startswith("-") for r in asked)
  assert len(calls) == len(asked)
  assert all(r["correct"] for r in again)
  assert [r["grades"]["math_verify"] for r in again] == [r["grades"]["math_verify"] for r in arith]
  # the records alone (params included) rebuild the sweep
  with SampleStore(str(tmp_path / "s.jsonl")) as store:
    summary = report.write_report(str(tmp_path / "r"), list(store.records()))
  assert [s["params"] for s in summary["settings"]] == [{}, {"feature": 46379, "strength": 2.0},
                                                       {"feature": 46379, "strength": 4.0}]
  assert os.path.exists(tmp_path / "r" / "sweep.png")
  # a param that repeats the setting's name (an engine's lookup key) does not split the sweep
  labelled = [{"name": n, "params": {"setting": n, "feature": 1, "strength": x}} for n, x in (("s1", 1.0), ("s2", 2.0))]
  assert report._sweeps({"settings": labelled}) == {'{"feature": 1}': [(1.0, "s1"), (2.0, "s2")]}
