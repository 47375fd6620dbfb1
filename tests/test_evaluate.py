"""launch/evaluate.py end to end on SmolLM2 with an SAE at layer 19: resume after a kill, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, selective_sae_dir

ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")


def _evaluate(out, *overrides, model):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "evaluate.py"),
       "--config=" + os.path.join(REPO, "configs", "eval_demo_smollm2.py"), f"--config.model.path={model}",
       "--config.tasks.limit=3", "--config.sampling.max_new_tokens=12", "--config.engine.slots=2",
       "--config.sampling.temperature=0.7", "--config.sampling.top_p=0.9",  # sampled: resume must replay the keys
       "--config.engine.max_len=128", "--config.steering.strengths=(4.0,)", f"--out={out}", "--verbosity=-1",
       *overrides], capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def finished(assets, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("evaluate")
  sae = selective_sae_dir(tmp / "sae", 576, hook_layer=19)
  out = tmp / "out"
  steer = [f"--sae={sae}", "--config.steering.features=(7,)",
           "--config.steering.max_activations=(60.0,)"]
  proc = _evaluate(out, *steer, model=assets.smollm2_hf)
  assert proc.returncode == 0, proc.stderr
  return assets.smollm2_hf, sae, out, steer, proc


def test_report_has_baseline_and_steered_rows(finished):
  _, _, out, _, proc = finished
  summary = json.load(open(out / "summary.json"))
  assert [s["name"] for s in summary["settings"]] == ["baseline", "f7@4"]
  records = [json.loads(line) for line in open(out / "samples.jsonl")]
  assert len(records) == 6 and {r["setting"] for r in records} == {"baseline", "f7@4"}
  assert all(1 <= r["total_tokens"] <= 12 for r in records)
  steering = json.load(open(out / "steering.json"))
  f = steering[0]["per_feature"][0]
  assert f["feature"] == 7 and f["target"] == pytest.approx(240.0)
  assert "| baseline |" in proc.stdout and "| f7@4 |" in proc.stdout
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(line["results"]["arithmetic"]) == {"baseline", "f7@4"}
  for name in ("report.md", "accuracy.png", "run.json"):
    assert os.path.getsize(out / name) > 0
  # Steering really changed the generations.
  by = {(r["setting"], r["problem_id"]): r["tokens"] for r in records}
  assert any(by[("baseline", p)] != by[("f7@4", p)] for s, p in by if s == "baseline")


def test_killed_run_resumes_to_the_same_report(finished, tmp_path):
  model, _, out, steer, _ = finished
  lines = open(out / "samples.jsonl").read().splitlines(keepends=True)
  resumed = tmp_path / "resumed"
  resumed.mkdir()
  with open(resumed / "samples.jsonl", "w") as f:  # two samples done, the third torn mid-write by a kill
    f.writelines(lines[:2])
    f.write(lines[2][:len(lines[2]) // 2])
  proc = _evaluate(resumed, *steer, model=model)
  assert proc.returncode == 0, proc.stderr
  assert "baseline: 1 samples to generate" in proc.stderr and "f7@4: 3 samples to generate" in proc.stderr
  want, got = json.load(open(out / "summary.json")), json.load(open(resumed / "summary.json"))
  assert got["results"] == want["results"] and got["deltas"] == want["deltas"]
  key = lambda r: (r["setting"], r["problem_id"])  # noqa: E731
  a = sorted((json.loads(x) for x in open(out / "samples.jsonl")), key=key)
  b = sorted((json.loads(x) for x in open(resumed / "samples.jsonl") if x.strip().endswith("}")), key=key)
  assert [r["tokens"] for r in a] == [r["tokens"] for r in b]


@pytest.mark.parametrize("case,overrides", [
    ("unknown task", ["--config.tasks.names=('aime2025',)"]),
    ("missing dataset file", ["--config.tasks.names=('math500',)", "--config.tasks.sources=('math500=/nonexistent/x.parquet',)"]),
    ("feature out of range", ["--config.steering.features=(256,)"]),
    ("strength not finite", ["--config.steering.strengths=(1e999,)"]),
    ("empty stop string", ["--config.sampling.stop=('',)"]),
    ("SAE width differs", ["SMALL_SAE"]),
])
def test_bad_input_one_line_and_nothing_lost(finished, tmp_path, case, overrides):
  model, sae, out, steer, _ = finished
  if overrides == ["SMALL_SAE"]:
    overrides = [f"--sae={selective_sae_dir(tmp_path / 'small', 64, hook_layer=19)}"]
  before = {n: open(out / n, "rb").read() for n in ("samples.jsonl", "summary.json")}
  proc = _evaluate(out, *steer, *overrides, model=model)
  assert proc.returncode == 2, (case, proc.stderr[-2000:])
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, (case, proc.stderr[-2000:])
  assert before == {n: open(out / n, "rb").read() for n in before}, case


def test_dashboard_max_activation_lookup(finished, tmp_path):
  """Without max_activations, the max comes from a dashboard's features.json (folded units)."""
  model, sae, _, _, _ = finished
  dash = tmp_path / "dash"
  dash.mkdir()
  json.dump({"features": [{"feature": 7, "max_activation": 2.5}]}, open(dash / "features.json", "w"))
  out = tmp_path / "out"
  proc = _evaluate(out, f"--sae={sae}", "--config.steering.features=(7,)", f"--dashboard={dash}",
                   "--config.tasks.limit=1", "--config.steering.baseline=false", "--config.sampling.max_new_tokens=4",
                   model=model)
  assert proc.returncode == 0, proc.stderr
  f = json.load(open(out / "steering.json"))[0]["per_feature"][0]
  assert f["max_activation"] == 2.5 and f["target"] == pytest.approx(10.0)
  assert np.isclose(f["vector_norm"], 10.0)  # folded units: a unit row times c
