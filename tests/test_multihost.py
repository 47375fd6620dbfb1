"""Every stage as 2 processes x 4 CPU devices (launch/local_pod.py) against 1 process x 8 devices.

One chained run per layout (tests/pod_stages.py: convert, collect, train from the cache and on the fly,
reason_score, dashboard, diff, evaluate), both started at once. The pod run is killed (-9, one process) while it
trains from the cache and restarted whole, so its results also show the resume. Compared: the activation shards
byte for byte, the SAE weights to float32 rounding (gradients are summed over the devices in another order
across processes), the ReasonScore arrays to the fixture tolerances, the dashboards' statistics and the diff's
arrays to float32 rounding, the evaluation samples exactly, and every file's writer.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO

STAGES = ["convert", "collect", "train_cache", "train_fly", "reason_score", "dashboard", "diff", "evaluate"]
DRIVER = os.path.join(REPO, "tests", "pod_stages.py")


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "SAE_JAX_WRITE_LOG"}
  return dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **extra)


def _pod(work, model, logs, env):
  return subprocess.Popen([sys.executable, os.path.join(REPO, "launch", "local_pod.py"), "--processes=2",
                           "--devices=4", f"--logs={logs}", "--", DRIVER, str(work), model, *STAGES],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory):
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from pod_stages import tiny_model
  root = tmp_path_factory.mktemp("multihost")
  model = tiny_model(str(root / "model"), assets.smollm2_hf)
  one, two = root / "one", root / "two"
  single = subprocess.Popen([sys.executable, DRIVER, str(one), model, *STAGES], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  env = _env(SAE_JAX_WRITE_LOG=str(root / "writes"))
  pod = _pod(two, model, root / "logs_killed", env)
  first_checkpoint = two / "train_cache" / "checkpoints" / "8"
  deadline = time.time() + 600
  while not first_checkpoint.exists() and pod.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  victim = int(open(root / "logs_killed" / "proc_1.pid").read())
  os.kill(victim, signal.SIGKILL)  # process 1 of the pod, which the launcher started
  killed_log = pod.communicate(timeout=120)[0]
  steps = sorted(int(n) for n in os.listdir(two / "train_cache" / "checkpoints") if n.isdigit())
  restarted = _pod(two, model, root / "logs", env)
  out = restarted.communicate(timeout=900)[0]
  single_out = single.communicate(timeout=900)[0]
  assert single.returncode == 0, single_out[-3000:]
  assert restarted.returncode == 0, out[-3000:]
  return {"one": one, "two": two, "root": root, "killed": (pod.returncode, steps, killed_log)}


def test_kill_of_one_process_stops_the_pod_mid_training(runs):
  code, steps, log = runs["killed"]
  assert code == 128 + signal.SIGKILL, log[-2000:]
  assert "process 1 exited with -9" in log
  assert steps and max(steps) < 24, steps  # it stopped before the last step; the restart resumed from there


def _digests(root):
  """sha256 of every file of root/collect; the run's own dir (in the manifest's model path) made neutral."""
  path = root / "collect"
  data = {n: open(path / n, "rb").read() for n in os.listdir(path) if n != "run.json"}
  data["manifest.json"] = data["manifest.json"].replace(str(root).encode(), b"RUN")
  return {n: hashlib.sha256(d).hexdigest() for n, d in data.items()}


def test_activation_shards_are_byte_equal_as_a_set(runs):
  one, two = _digests(runs["one"]), _digests(runs["two"])
  assert sum(n.startswith("shard_s007_") for n in one) >= 2  # 8 streams, one per data shard
  assert one == two


@pytest.mark.parametrize("stage", ["train_cache", "train_fly"])
def test_sae_weights_equal_to_float32_rounding(runs, stage):
  one = load_file(str(runs["one"] / stage / "sae" / "sae_weights.safetensors"))
  two = load_file(str(runs["two"] / stage / "sae" / "sae_weights.safetensors"))
  assert one.keys() == two.keys()
  for name in one:  # as the fixtures judge N steps (tests/fixtures/README.md, C3): Adam's division by a tiny
    # second moment can magnify a rounding difference in a stray element, never in a tensor
    scale = float(np.abs(one[name]).max())
    close = np.isclose(two[name], one[name], rtol=1e-4, atol=1e-5 * scale)
    assert close.mean() >= 0.999, (name, int((~close).sum()))
    assert np.linalg.norm(two[name] - one[name]) <= 1e-5 * np.linalg.norm(one[name]), name
  result = json.load(open(runs["two"] / stage / "result.json"))
  assert result["steps"] == 24 and ("splice_eval" in result) == (stage == "train_cache")  # pod_stages.py


def test_reasonscore_within_the_fixture_tolerance(runs):
  for name, tol in (("mu_pos", dict(rtol=1e-5, atol=1e-7)), ("mu_neg", dict(rtol=1e-5, atol=1e-7)),
                    ("group_means", dict(rtol=1e-5, atol=1e-7)), ("entropy", dict(atol=1e-6)),
                    ("scores", dict(atol=1e-6))):
    one, two = (np.load(runs[k] / "reason_score" / f"{name}.npy") for k in ("one", "two"))
    np.testing.assert_allclose(two, one, err_msg=name, **tol)
  meta = [json.load(open(runs[k] / "reason_score" / "reasonscore.json")) for k in ("one", "two")]
  assert meta[0]["group_counts"] == meta[1]["group_counts"] and meta[0]["pos_count"] == meta[1]["pos_count"]


def test_dashboards_agree(runs):
  one, two = (json.load(open(runs[k] / "dashboard" / "features.json"))["features"] for k in ("one", "two"))
  assert [f["feature"] for f in one] == [f["feature"] for f in two] == [3, 5]
  for a, b in zip(one, two):
    assert (a["n_tokens"], a["n_active"]) == (b["n_tokens"], b["n_active"])
    assert b["max_activation"] == pytest.approx(a["max_activation"], rel=1e-5)
    assert b["mean_active"] == pytest.approx(a["mean_active"], rel=1e-5)
    assert len(a["top"]) == len(b["top"]) > 0


def test_diff_arrays_agree(runs):
  from sae_jax.features.diffing import ARRAYS
  for name in ARRAYS:
    one, two = (np.load(runs[k] / "diff" / f"{name}.npy") for k in ("one", "two"))
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6, err_msg=name)


def test_evaluation_samples_are_identical(runs):
  def samples(k):
    recs = [json.loads(line) for line in open(runs[k] / "evaluate" / "samples.jsonl")]
    return sorted((r["setting"], r["problem_id"], r["tokens"], r["completion"]) for r in recs)

  one = samples("one")
  assert len(one) == 6 and {s[0] for s in one} == {"baseline", "f3@2"}
  assert samples("two") == one


def test_each_file_has_one_writer(runs):
  logs = {k: set(open(runs["root"] / "writes" / f"writes_{k}.txt").read().split()) for k in (0, 1)}
  assert logs[0] and logs[1] and not logs[0] & logs[1]
  # process 1 wrote only the activation shards its devices held (streams 4-7); everything shared is process 0's
  # (Orbax's own writes of the converted params and the trainer checkpoints are not in these logs)
  assert {os.path.basename(p)[:10] for p in logs[1]} == {f"shard_s00{k}" for k in range(4, 8)}
  two = str(runs["two"])
  # a dir swapped in whole (io.write_dir) is written under a temp name beside it: count those writes as the dir's
  written = {re.sub(r"/\.([^/]+)\.tmp-[0-9a-f]+/", r"/\1/", p) for p in logs[0]}
  for shared in ("convert", "collect/manifest.json", "collect/rows.npy", "train_cache/result.json", "train_cache/sae",
                 "reason_score/scores.npy", "reason_score/top_k.json", "evaluate/samples.jsonl",
                 "evaluate/steering.json"):
    assert os.path.join(two, shared) in written, shared


def test_only_process_0_writes_shared_files(tmp_path, monkeypatch):
  from sae_jax import io as sio
  from sae_jax import pod
  monkeypatch.setattr(pod, "index", lambda: 1)
  with pytest.raises(RuntimeError, match="process 1 tried to write .*x.json: only process 0 writes shared files"):
    sio.write_json(str(tmp_path / "x.json"), {})
  with pytest.raises(RuntimeError, match="only process 0"):
    with sio.replaced_dir(str(tmp_path / "out"), "test"):
      pass
  sio.write_bytes(str(tmp_path / "shard.npy"), b"mine", own=True)  # a process's own file (its shard)
  assert sorted(os.listdir(tmp_path)) == ["shard.npy"]


def test_local_pod_without_a_command_is_one_error_line():
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "local_pod.py"), "--processes=2"],
                        capture_output=True, text=True, env=_env(), timeout=120)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: give the script"), \
      proc.stderr


def test_sigterm_to_local_pod_lets_every_process_save(tmp_path):
  """The launcher passes SIGTERM on and waits: each process runs its handler (a trainer saves there) and exits
  with its own code; no process is left behind."""
  script = tmp_path / "saver.py"
  script.write_text(
      "import os, signal, sys, time\n"
      "def save(*_):\n"
      "  time.sleep(1)  # a save that takes a while\n"
      "  open(os.path.join(sys.argv[1], 'saved_' + os.environ['SAE_JAX_PROCESS_ID']), 'w').close()\n"
      "  sys.exit(3)\n"
      "signal.signal(signal.SIGTERM, save)\n"
      "open(os.path.join(sys.argv[1], 'ready_' + os.environ['SAE_JAX_PROCESS_ID']), 'w').close()\n"
      "time.sleep(120)\n")
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "launch", "local_pod.py"), "--processes=2",
                           f"--logs={tmp_path / 'logs'}", "--", str(script), str(tmp_path)],
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while not all((tmp_path / f"ready_{k}").exists() for k in (0, 1)) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 3, err
  assert sorted(p.name for p in tmp_path.glob("saved_*")) == ["saved_0", "saved_1"]
  assert "exited with 3 (stopped by signal 15)" in err
  for k in (0, 1):
    pid = int((tmp_path / "logs" / f"proc_{k}.pid").read_text())
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
