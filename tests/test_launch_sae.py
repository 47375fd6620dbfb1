"""collect_activations.py and train_sae.py end to end on real SmolLM2 weights and the offline demo corpus."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO

SMALL = ["--config=" + os.path.join(REPO, "configs", "demo_smollm2.py"), "--config.data.sources=('demo#n=40',)",
         "--config.data.context_size=64", "--config.data.store_batch_rows=4", "--verbosity=-1"]


def _cmd(script, *args):
  return [sys.executable, os.path.join(REPO, "launch", script), *args]


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")


def _collect(model, out, *extra):
  return subprocess.run(_cmd("collect_activations.py", *SMALL, f"--config.model.path={model}", f"--out={out}",
                             "--shard_tokens=512", *extra), capture_output=True, text=True, env=_env(),
                        timeout=300)


def _read_all(path):
  manifest = json.load(open(os.path.join(path, "manifest.json")))
  return manifest, np.concatenate([np.load(os.path.join(path, s["file"])) for s in manifest["shards"]])


def test_killed_collection_resumes_to_the_same_shards(assets, tmp_path):
  proc = _collect(assets.smollm2_hf, tmp_path / "straight")
  assert proc.returncode == 0, proc.stderr
  want_manifest, want = _read_all(tmp_path / "straight")
  assert len(want_manifest["shards"]) >= 3 and want.shape[1] == 576

  out = tmp_path / "killed"
  child = subprocess.Popen(_cmd("collect_activations.py", *SMALL, f"--config.model.path={assets.smollm2_hf}",
                                f"--out={out}", "--shard_tokens=512"), env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and child.poll() is None:
    if (out / "shard_000001.npy").exists():
      break
    time.sleep(0.02)
  child.send_signal(signal.SIGKILL)
  child.wait()
  manifest = json.load(open(out / "manifest.json"))
  assert not manifest["done"] and len(manifest["shards"]) < len(want_manifest["shards"])
  proc = _collect(assets.smollm2_hf, out)
  assert proc.returncode == 0, proc.stderr
  got_manifest, got = _read_all(out)
  assert got_manifest["shards"] == want_manifest["shards"]
  np.testing.assert_array_equal(got, want)


def _error_line(proc):
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
  return proc.stderr.strip().splitlines()[-1]


def test_train_sae_bad_inputs(assets, tmp_path):
  proc = subprocess.run(_cmd("train_sae.py", *SMALL, f"--config.model.path={assets.smollm2_hf}",
                             "--config.sae.d_in=100"), capture_output=True, text=True, env=_env(), timeout=300)
  assert "SAE d_in 100 != model width 576" in _error_line(proc)
  proc = subprocess.run(_cmd("train_sae.py", *SMALL, "--config.sae.no_such_key=1"), capture_output=True,
                        text=True, env=_env(), timeout=300)
  assert proc.returncode != 0 and "no_such_key" in proc.stderr
  proc = subprocess.run(_cmd("train_sae.py", *SMALL, "--config.activations.cache_dir=/nonexistent/acts"),
                        capture_output=True, text=True, env=_env(), timeout=300)
  assert "activations.cache_dir /nonexistent/acts does not exist" in _error_line(proc)


def test_train_sae_from_cache_exports_saelens(assets, tmp_path):
  assert _collect(assets.smollm2_hf, tmp_path / "acts").returncode == 0
  out = tmp_path / "train"
  cmd = _cmd("train_sae.py", *SMALL, f"--config.activations.cache_dir={tmp_path / 'acts'}",
             f"--config.trainer.out_dir={out}", "--config.sae.n_steps=40",
             "--config.sae.batch_size=128", "--config.sae.d_sae=1152",
             "--config.sae.lr_decay_steps=10", "--config.sae.l1_warm_up_steps=10",
             "--config.sae.n_batches_for_norm_estimate=4", "--config.trainer.buffer_half_tokens=1024",
             "--config.trainer.progress=false", "--config.trainer.dead_window=500")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
  assert proc.returncode == 0, proc.stderr
  result = json.load(open(out / "result.json"))
  assert result["steps"] == 40 and np.isfinite(result["loss"])
  cfg = json.load(open(out / "sae" / "cfg.json"))
  assert cfg["d_in"] == 576 and cfg["d_sae"] == 1152 and cfg["hook_name"] == "blocks.19.hook_resid_post"
  assert os.path.exists(out / "sae" / "sae_weights.safetensors") and os.path.exists(out / "run.json")
  # Rerunning the finished command changes nothing and says so.
  before = {p: os.stat(out / p).st_mtime_ns for p in ("sae/sae_weights.safetensors", "result.json", "metrics.jsonl")}
  again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
  assert again.returncode == 0, again.stderr
  assert f"{out} already holds this run, trained to step 40: nothing to do" in again.stdout
  assert {p: os.stat(out / p).st_mtime_ns for p in before} == before
  assert json.loads(again.stdout.strip().splitlines()[-1]) == result


def test_train_sae_on_the_fly(assets, tmp_path):
  """No cache: the model runs inside the loop, excluded ids dropped, then the splice eval on the corpus. The start
  says what it does (a line per phase), and a SIGTERM during the norm estimate saves it: the rerun exports the
  same bytes as the run never stopped."""
  def cmd(out, *extra):
    return _cmd("train_sae.py", *SMALL, f"--config.model.path={assets.smollm2_hf}", f"--config.trainer.out_dir={out}",
                "--config.sae.n_steps=20", "--config.sae.batch_size=128", "--config.sae.d_sae=1152",
                "--config.sae.lr_decay_steps=5", "--config.sae.l1_warm_up_steps=5",
                "--config.sae.n_batches_for_norm_estimate=4", "--config.trainer.buffer_half_tokens=512",
                "--config.trainer.progress=false", *extra)

  out = tmp_path / "train"
  proc = subprocess.run(cmd(out, "--config.eval.batches=2", "--config.eval.sources=('demo#n=12,seed=7',)"),
                        capture_output=True, text=True, env=_env(), timeout=300)
  assert proc.returncode == 0, proc.stderr
  result = json.load(open(out / "result.json"))
  ev = result["splice_eval"]
  assert ev["ce_loss_clean"] < ev["ce_loss_zero_ablation"] and ev["tokens"] > 0
  assert ev["rows"] == "held-out: eval.sources" and ev["explained_variance"] < 1 and ev["l0"] > 0
  assert result["steps"] == 20 and result["data"]["loop"] and result["data"]["batches_needed"] == 24
  for line in [f"[train] model {assets.smollm2_hf}: done in ", "30 layers, width 576", "[train] corpus: done in ",
               "rows of 64 tokens", "[train] buffer fill: done in ", "[train] norm estimate: done in ",
               "4/4 batches", "scaling factor", "[train] splice eval: done in "]:
    assert line in proc.stderr, (line, proc.stderr)

  def stop_at(out, start):
    """Runs `cmd(out)` (no splice eval: it does not change the SAE), SIGTERM once a stderr line starts `start`.
    (A stop before training state exists, e.g. in the model load, is test_trainer's test_stop_before_any_state.)"""
    child = subprocess.Popen(cmd(out, "--config.eval.batches=0"), env=_env(), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    seen = []
    for line in child.stderr:
      seen.append(line)
      if line.startswith(start):
        child.send_signal(signal.SIGTERM)
        break
    err = "".join(seen) + child.communicate(timeout=120)[1]
    assert child.returncode == 143 and "Traceback" not in err, err
    return err

  stopped = tmp_path / "stopped"
  err = stop_at(stopped, "[train] norm estimate: ")  # its start line: the first fill runs the model next
  assert re.search(r"SIGTERM: saved the norm estimate \([0-3]/4 batches\) and the data position to "
                   rf"{re.escape(str(stopped))}/checkpoints; rerun the same command to resume\n$", err), err
  assert not (stopped / "sae").exists() and os.listdir(stopped / "checkpoints") == ["0"]
  proc = subprocess.run(cmd(stopped, "--config.eval.batches=0"), capture_output=True, text=True, env=_env(),
                        timeout=300)
  assert proc.returncode == 0 and "resumed from step 0" in proc.stdout, proc.stderr
  for name in ("sae_weights.safetensors", "cfg.json"):
    assert (stopped / "sae" / name).read_bytes() == (out / "sae" / name).read_bytes(), name


def test_paper_config_is_the_paper_sae_and_other_architectures_get_their_defaults():
  """The paper's values (sae_jax/paper.md, "The SAE"); `--config.sae.architecture=topk` gets topk's own defaults
  (pre-bias and unit decoder, as OpenAI) unless overridden. The keys are typed, which is what lets the command
  line set them (`--config.sae.apply_b_dec_to_input=false`, `--config.sae.k=64`)."""
  from configs import paper_r1_llama8b_l19
  from sae_jax.runs import section

  def sae_config_from_config(c):
    return section(c, "sae")

  c = paper_r1_llama8b_l19.get_config()
  paper = sae_config_from_config(c)
  assert (paper.architecture, paper.d_in, paper.d_sae, paper.lr, paper.l1_coefficient, paper.batch_size) == (
      "standard", 4096, 65536, 5e-5, 5.0, 4096)
  assert paper.apply_b_dec_to_input is False and paper.normalize_decoder is False  # SAELens' standard SAE
  c.sae.architecture, c.sae.k = "topk", 64
  topk = sae_config_from_config(c)
  assert (topk.k, topk.apply_b_dec_to_input, topk.normalize_decoder) == (64, True, True)
  c.sae.apply_b_dec_to_input = False
  assert sae_config_from_config(c).apply_b_dec_to_input is False
  with pytest.raises(TypeError):
    c.sae.normalize_decoder = "yes"


_NO_NETWORK = """
import socket
def _refuse(*args, **kwargs):
  with open({log!r}, "a") as f:
    f.write(repr(args[:2]) + "\\n")
  raise OSError("network blocked by the test")
socket.getaddrinfo = _refuse
socket.socket.connect = lambda self, *a: _refuse(*a)
"""


def test_local_data_makes_no_connection_attempt(assets, tmp_path):
  """HF_HUB_OFFLINE unset, a local jsonl corpus and model: `datasets` must not ping the hub (sockets recorded)."""
  hook = tmp_path / "hook"
  hook.mkdir()
  log = tmp_path / "connections.log"
  (hook / "sitecustomize.py").write_text(_NO_NETWORK.format(log=str(log)))
  docs = tmp_path / "docs.jsonl"
  docs.write_text("".join(json.dumps({"text": f"Document {i}: " + "wait, let me check that again. " * 20}) + "\n"
                          for i in range(12)))
  env = {k: v for k, v in _env().items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
  env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")])
  env["HF_DATASETS_CACHE"] = str(tmp_path / "hf_cache")
  proc = subprocess.run(_cmd("collect_activations.py", *SMALL, f"--config.data.sources=('{docs}',)",
                             f"--config.model.path={assets.smollm2_hf}", f"--out={tmp_path / 'acts'}",
                             "--shard_tokens=64", "--max_batches=1"), capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not log.exists(), log.read_text()
