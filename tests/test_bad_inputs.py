"""Bad inputs to every launch script: one `error:` line, exit 2 (1 for absl's own flag errors), no traceback, and
nothing next to or inside the output path touched. One row per case; the rows run in parallel, a subprocess each,
and fail before any model is read.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, _tiny_hf
from sae_jax import io as sio
from sae_jax.activations.shards import ShardWriter
from sae_jax.features.reasonscore import scores_from_sums

DEMO = "--config=" + os.path.join(REPO, "configs", "demo_smollm2.py")
FLAG_ERROR = 1  # absl's exit code for a flag it refuses itself (enum, required)

# (id, script, args, exit code, text of the error line). In args: {d} the row's own dir (its cwd, holding
# canary.txt and user/notes.txt), {tiny} a tiny HF model, {model} SmolLM2, {partial} a cache whose collection
# stopped early, {sae} a dir that is no SAE, {scores_cut} / {scores_missing} / {scores_json} ReasonScore results
# with a cut scores.npy / no mu_pos.npy / a cut reasonscore.json, {cfg_syntax} / {cfg_raises} / {cfg_get} /
# {cfg_none} config files with a syntax error / raising on import / raising in get_config / without get_config.
ROWS = [
    # convert.py: its --out is replaced, so only new, empty or its own earlier outputs are accepted
    ("convert_out_dot", "convert.py", ["--model={tiny}", "--out=."], 2, "is the working directory or holds it"),
    ("convert_out_parent", "convert.py", ["--model={tiny}", "--out=.."], 2, "is the working directory or holds it"),
    ("convert_out_abs_cwd", "convert.py", ["--model={tiny}", "--out={d}"], 2, "is the working directory or holds it"),
    ("convert_out_empty", "convert.py", ["--model={tiny}", "--out="], 2, "output path is empty"),
    ("convert_out_user_dir", "convert.py", ["--model={tiny}", "--out={d}/user"], 2,
     "holds files sae_jax did not write (notes.txt, ...)"),
    ("convert_out_other_kind", "convert.py", ["--model={tiny}", "--out={d}/dash"], 2, "holds a dashboard output"),
    ("convert_out_file", "convert.py", ["--model={tiny}", "--out={d}/canary.txt"], 2, "exists and is not a directory"),
    ("convert_out_under_file", "convert.py", ["--model={tiny}", "--out={d}/canary.txt/x"], 2,
     "is not a writable directory"),
    ("convert_tokenizer_missing", "convert.py", ["--model={tiny}", "--out={d}/o", "--tokenizer={d}/nope"], 2,
     "--tokenizer {d}/nope is not a directory"),
    ("convert_model_missing", "convert.py", ["--model={d}/nope", "--out={d}/o"], 2,
     "is neither a checkpoint dir, a .gguf file, nor a hub id"),
    ("convert_dtype", "convert.py", ["--model={tiny}", "--out={d}/o", "--dtype=float8"], FLAG_ERROR, None),
    ("convert_no_out", "convert.py", ["--model={tiny}"], 2, "--out (or --root) required"),
    # collect_activations.py
    ("collect_shard_tokens_0", "collect_activations.py", [DEMO, "--config.model.path={model}", "--out={d}/o",
                                                          "--shard_tokens=0"], 2, "--shard_tokens=0: expected"),
    ("collect_shard_tokens_neg", "collect_activations.py", [DEMO, "--config.model.path={model}", "--out={d}/o",
                                                            "--shard_tokens=-5"], 2, "--shard_tokens=-5: expected"),
    ("collect_max_batches_neg", "collect_activations.py", [DEMO, "--config.model.path={model}", "--out={d}/o",
                                                           "--max_batches=-1"], 2, "--max_batches=-1: expected"),
    ("collect_out_file", "collect_activations.py", [DEMO, "--config.model.path={model}", "--out={d}/canary.txt"],
     2, "activation cache {d}/canary.txt exists and is not a directory"),
    ("collect_out_empty", "collect_activations.py", [DEMO, "--config.model.path={model}", "--out="], 2,
     "--out required"),
    ("collect_config_missing", "collect_activations.py", ["--config={d}/nope.py", "--out={d}/o"], 2,
     "cannot load --config: [Errno 2] No such file or directory: '{d}/nope.py'"),
    ("collect_unknown_key", "collect_activations.py", [DEMO, "--out={d}/o", "--config.data.nope=1"], 2,
     "unknown config key data.nope"),
    ("collect_dtype", "collect_activations.py", [DEMO, "--config.model.path={model}", "--out={d}/o",
                                                 "--config.model.dtype=float8"], 2, "model.dtype must be one of"),
    ("collect_store_batch_rows", "collect_activations.py", [DEMO, "--config.model.path={model}", "--out={d}/o",
                                                            "--config.data.store_batch_rows=0"], 2,
     "data.store_batch_rows must be positive"),
    ("collect_mesh_zero", "collect_activations.py", [DEMO, "--config.model.path={model}", "--out={d}/o",
                                                     "--config.mesh.data=0"], 2, "needs 0 devices"),
    ("collect_out_under_file", "collect_activations.py", [DEMO, "--config.model.path={model}",
                                                          "--out={d}/canary.txt/x"], 2, "is not a writable directory"),
    # train_sae.py
    ("train_lr_inf", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t", "--config.sae.lr=inf"], 2,
     "SAE config lr=inf: expected a finite number"),
    ("train_lr_nan", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t", "--config.sae.lr=nan"], 2,
     "SAE config lr=nan: expected a finite number"),
    ("train_keep_checkpoints_0", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t",
                                                  "--config.trainer.keep_checkpoints=0"], 2,
     "trainer.keep_checkpoints=0: expected an integer >= 1 (0 would leave nothing to resume from)"),
    ("train_log_every_0", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t", "--config.trainer.log_every=0"],
     2, "trainer.log_every=0: expected an integer >= 1"),
    ("train_checkpoint_every_neg", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t",
                                                    "--config.trainer.checkpoint_every=-1"], 2,
     "trainer.checkpoint_every=-1: expected an integer >= 1"),
    ("train_matmul_precision", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t",
                                                "--config.trainer.matmul_precision=foo"], 2,
     "trainer.matmul_precision='foo': expected one of"),
    ("train_buffer_below_batch", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t",
                                                  "--config.trainer.buffer_half_tokens=64"], 2,
     "trainer.buffer_half_tokens=64 is smaller than one batch (sae.batch_size=512)"),
    ("train_out_file", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/canary.txt"], 2,
     "trainer.out_dir {d}/canary.txt exists and is not a directory"),
    ("train_partial_cache", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t",
                                             "--config.activations.cache_dir={partial}"], 2,
     "is incomplete (done=false: its collection stopped early): rerun the same collect_activations.py command"),
    ("train_cache_missing", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t",
                                             "--config.activations.cache_dir={d}/nope"], 2, "does not exist"),
    ("train_dead_window_0", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t",
                                             "--config.trainer.dead_window=0"], 2,
     "trainer.dead_window=0: expected an integer >= 1"),
    ("train_dense_threshold", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t",
                                               "--config.trainer.dense_threshold=2"], 2,
     "trainer.dense_threshold=2.0: expected a number in [0, 1]"),
    ("train_mesh_zero", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t", "--config.mesh.model=0"], 2,
     "needs 0 devices"),
    ("train_store_batch_rows", "train_sae.py", [DEMO, "--config.model.path={model}", "--config.trainer.out_dir={d}/t",
                                                "--config.data.store_batch_rows=0"], 2,
     "data.store_batch_rows must be positive"),
    ("train_data_short", "train_sae.py", [DEMO, "--config.model.path={model}", "--config.trainer.out_dir={d}/t",
                                          "--config.data.sources=('demo#n=200',)", "--config.activations.loop=false"],
     2, "the run takes 620 = sae.n_steps 600 + 20 for the norm estimate: add data, lower sae.n_steps, or set"),
    ("train_num_proc_0", "train_sae.py", [DEMO, "--config.model.path={model}", "--config.trainer.out_dir={d}/t",
                                          "--config.data.num_proc=0"], 2, "data.num_proc must be positive"),
    ("train_unknown_key", "train_sae.py", [DEMO, "--config.trainer.nope=1"], 2, "unknown config key trainer.nope"),
    ("train_config_missing", "train_sae.py", ["--config={d}/nope.py"], 2, "cannot load --config: [Errno 2]"),
    ("train_negative_steps", "train_sae.py", [DEMO, "--config.trainer.out_dir={d}/t", "--config.sae.n_steps=-3"],
     2, "SAE config n_steps=-3"),
    # the feature scripts: outputs checked before any work
    ("reason_score_out_file", "reason_score.py", ["--config.model.path={model}", "--sae={sae}",
                                                  "--out={d}/canary.txt"], 2, "exists and is not a directory"),
    ("reason_score_out_under_file", "reason_score.py", ["--config.model.path={model}", "--sae={sae}",
                                                        "--out={d}/canary.txt/x"], 2, "is not a writable directory"),
    ("reason_score_not_an_sae", "reason_score.py", ["--config.model.path={model}", "--sae={sae}", "--out={d}/o"],
     2, "cfg.json not found"),
    ("reason_score_no_sae", "reason_score.py", ["--config.model.path={model}", "--out={d}/o"], 2, "--sae required"),
    ("reason_score_no_out", "reason_score.py", ["--config.model.path={model}", "--sae={sae}", "--out="], 2,
     "--out required"),
    ("reason_score_unknown_key", "reason_score.py", ["--sae={sae}", "--out={d}/o", "--config.reasonscore.nope=1"], 2,
     "unknown config key reasonscore.nope"),
    ("dashboard_unknown_key", "dashboard.py", ["--sae={sae}", "--out={d}/o", "--config.dashboard.nope=1"], 2,
     "unknown config key dashboard.nope"),
    ("dashboard_out_user_dir", "dashboard.py", ["--config.model.path={model}", "--sae={sae}", "--scores={d}/s",
                                                "--out={d}/user"], 2, "holds files sae_jax did not write"),
    ("dashboard_out_dot", "dashboard.py", ["--config.model.path={model}", "--sae={sae}", "--scores={d}/s",
                                           "--out=."], 2, "is the working directory or holds it"),
    ("dashboard_out_parent", "dashboard.py", ["--config.model.path={model}", "--sae={sae}", "--scores={d}/s",
                                              "--out=.."], 2, "is the working directory or holds it"),
    ("dashboard_out_file", "dashboard.py", ["--config.model.path={model}", "--sae={sae}", "--scores={d}/s",
                                            "--out={d}/canary.txt"], 2, "exists and is not a directory"),
    ("dashboard_no_scores", "dashboard.py", ["--config.model.path={model}", "--sae={sae}", "--scores={d}/s",
                                             "--out={d}/o"], 2, "no ReasonScore results in {d}/s"),
    ("dashboard_scores_cut", "dashboard.py", ["--config.model.path={model}", "--sae={sae}",
                                              "--scores={scores_cut}", "--out={d}/o"], 2,
     "ReasonScore results {scores_cut}: scores.npy does not match reasonscore.json (truncated or changed)"),
    ("dashboard_scores_missing", "dashboard.py", ["--config.model.path={model}", "--sae={sae}",
                                                  "--scores={scores_missing}", "--out={d}/o"], 2,
     "ReasonScore results {scores_missing} are incomplete: mu_pos.npy is missing"),
    ("dashboard_scores_json_cut", "dashboard.py", ["--config.model.path={model}", "--sae={sae}",
                                                   "--scores={scores_json}", "--out={d}/o"], 2,
     "{scores_json}/reasonscore.json is truncated or not ReasonScore results (JSONDecodeError"),
    ("reason_score_out_user_dir", "reason_score.py", ["--config.model.path={model}", "--sae={sae}",
                                                      "--out={d}/user"], 2, "holds files sae_jax did not write"),
    # a --config file that does not load: the file and line named, no traceback
    ("train_config_syntax", "train_sae.py", ["--config={cfg_syntax}"], 2,
     "cannot load --config {cfg_syntax}, line 1: SyntaxError: invalid syntax"),
    ("collect_config_raises", "collect_activations.py", ["--config={cfg_raises}", "--out={d}/o"], 2,
     "cannot load --config {cfg_raises}, line 3: RuntimeError: boom"),
    ("reason_score_config_get_raises", "reason_score.py", ["--config={cfg_get}", "--sae={sae}", "--out={d}/o"], 2,
     "cannot load --config {cfg_get}, line 4: ValueError: bad value"),
    ("dashboard_config_no_get_config", "dashboard.py", ["--config={cfg_none}", "--sae={sae}", "--out={d}/o"], 2,
     "cannot load --config {cfg_none}: it defines no get_config() returning the config"),
    ("diff_out_file", "diff_models.py", ["--config.model.path={model}", "--model_a={model}", "--sae={sae}",
                                         "--out={d}/canary.txt"], 2, "exists and is not a directory"),
    ("diff_no_out", "diff_models.py", ["--config.model.path={model}", "--model_a={model}", "--sae={sae}", "--out="],
     2, "--out required"),
    ("diff_no_model_a", "diff_models.py", ["--config.model.path={model}", "--sae={sae}", "--out={d}/o"], 2,
     "give exactly one of --model_a and --activations_a"),
    ("aot_unknown_key", "aot_compile.py", [DEMO, "--topology=v5e:2x2", "--config.mesh.nope=1"], 2,
     "unknown config key mesh.nope"),
    ("aot_mesh", "aot_compile.py", [DEMO, "--topology=v5e:2x2", "--config.model.path={model}"], 2,
     "needs 1 devices, have 4 on the topology"),
    ("aot_d_sae_mesh", "aot_compile.py", [DEMO, "--topology=v5e:2x2", "--stages=train_sae", "--config.mesh.model=4",
                                          "--config.sae.d_sae=1001"], 2,
     "sae.d_sae=1001 latents do not split over the model axis (4 devices): make it a multiple of 4"),
    ("aot_batch_mesh", "aot_compile.py", [DEMO, "--topology=v5e:2x2", "--stages=train_sae", "--config.mesh.data=4",
                                          "--config.sae.batch_size=510"], 2,
     "an SAE batch (sae.batch_size) of 510 rows does not split over data x fsdp = 4 devices"),
    ("evaluate_out_file", "evaluate.py", ["--config.model.path={model}", "--out={d}/canary.txt"], 2,
     "exists and is not a directory"),
    ("evaluate_out_under_file", "evaluate.py", ["--config.model.path={model}", "--out={d}/canary.txt/x"], 2,
     "is not a writable directory"),
]


@pytest.fixture(scope="module")
def inputs(assets, tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_inputs")
  _tiny_hf("llama").save_pretrained(root / "tiny")
  w = ShardWriter(str(root / "partial"), shard_tokens=64, d=576, meta={"layer": 19, "site": "resid_post"})
  w.add(np.ones((100, 576), np.float32), batch_end=1)  # one shard, then "killed": done stays false
  (root / "not_an_sae").mkdir()
  scores = scores_from_sums(np.arange(16.0).reshape(4, 4), np.array([5, 6, 2, 3]), ("wait", "hmm"))
  for name in ("scores_cut", "scores_missing", "scores_json"):
    scores.save(str(root / name))
  cut = (root / "scores_cut" / "scores.npy").read_bytes()
  (root / "scores_cut" / "scores.npy").write_bytes(cut[:len(cut) - 5])
  (root / "scores_missing" / "mu_pos.npy").unlink()
  meta = (root / "scores_json" / "reasonscore.json").read_text()
  (root / "scores_json" / "reasonscore.json").write_text(meta[:len(meta) // 2])
  configs = {"cfg_syntax": "def get_config(:\n  pass\n", "cfg_raises": "import os\n\nraise RuntimeError('boom')\n",
             "cfg_get": "from configs import default\n\ndef get_config():\n  raise ValueError('bad value')\n",
             "cfg_none": "x = 1\n"}
  for name, text in configs.items():
    (root / f"{name}.py").write_text(text)
  return {"tiny": root / "tiny", "model": assets.smollm2_hf, "partial": root / "partial",
          "sae": root / "not_an_sae", **{name: root / name for name in ("scores_cut", "scores_missing", "scores_json")},
          **{name: root / f"{name}.py" for name in configs}}


def _row_dir(root, name):
  d = root / name
  (d / "user").mkdir(parents=True)
  (d / "canary.txt").write_text("canary")
  (d / "user" / "notes.txt").write_text("mine")
  sio.write_dir(str(d / "dash"), lambda tmp: open(os.path.join(tmp, "index.html"), "w").close(), "dashboard")
  return d


def _snapshot(root):
  """Every dir and file under `root`, with the files' bytes."""
  out = {}
  for p, dirs, names in os.walk(root):
    out.update({os.path.relpath(os.path.join(p, n), root): None for n in dirs})
    out.update({os.path.relpath(os.path.join(p, n), root): open(os.path.join(p, n), "rb").read() for n in names})
  return out


def test_bad_inputs_one_error_line_nothing_touched(inputs, tmp_path):
  assert len({r[0] for r in ROWS}) == len(ROWS)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  running, done = [], {}
  for name, script, args, code, message in ROWS:
    d = _row_dir(tmp_path, name)
    argv = [a.format(d=d, **inputs) for a in args]
    while sum(p.poll() is None for *_, p in running) >= 4:
      time.sleep(0.1)
    before = _snapshot(d)
    running.append((name, d, before, subprocess.Popen(
        [sys.executable, os.path.join(REPO, "launch", script), *argv], cwd=d, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
  failures = []
  for name, d, before, proc in running:
    _, stderr = proc.communicate(timeout=600)
    row = {r[0]: r for r in ROWS}[name]
    code, message = row[3], row[4] and row[4].format(d=d, **inputs)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    why = []
    if proc.returncode != code:
      why.append(f"exit {proc.returncode}, want {code}")
    if "Traceback" in stderr:
      why.append("traceback")
    if code == 2 and (len(errors) != 1 or message not in errors[0]):
      why.append(f"error lines {errors}, want one with {message!r}")
    if _snapshot(d) != before:
      why.append(f"files changed: {sorted(set(_snapshot(d)) ^ set(before))}")
    if why:
      failures.append(f"{name}: {'; '.join(why)}\n{stderr[-600:]}")
  assert not failures, "\n\n".join(failures)


def test_steering_refuses_cut_dashboard_stats(tmp_path):
  """The steering lookup (evaluate --dashboard) reads a dashboard's features.json: a cut one is one UserError."""
  import json
  from sae_jax.errors import UserError
  from sae_jax.features.steer import dashboard_max_activations
  text = json.dumps({"meta": {}, "features": [{"feature": 7, "max_activation": 5.84}]})
  (tmp_path / "features.json").write_text(text[:len(text) // 2])
  with pytest.raises(UserError, match=r"features.json is not a dashboard features.json \(JSONDecodeError"):
    dashboard_max_activations(str(tmp_path), [7])
