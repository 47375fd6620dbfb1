"""Every config-reading launch script: --helpfull works, and an override of each section it reads reaches the run.

`--print_config` prints the sections as `sae_jax.runs.section` builds them for the stage (the same call the run
makes), then exits before any model or corpus is read; the scripts run in parallel, a subprocess each.
"""

import json
import os
import subprocess
import sys

from conftest import REPO

DEMO = "--config=" + os.path.join(REPO, "configs", "demo_smollm2.py")
# One override per section: (key, command-line value, value the run sees).
OVERRIDES = {
    "model": ("model.dtype", "float32", "float32"),
    "mesh": ("mesh.fsdp", "2", 2),
    "data": ("data.context_size", "64", 64),
    "activations": ("activations.loop", "true", True),
    "sae": ("sae.k", "64", 64),
    "trainer": ("trainer.dead_window", "500", 500),  # README documents it; it used to be an AttributeError
    "eval": ("eval.batches", "3", 3),
    "hook": ("hook.layer", "4", 4),
    "reasonscore": ("reasonscore.alpha", "0.5", 0.5),
    "dashboard": ("dashboard.n_top", "7", 7),
    "autointerp": ("autointerp.key_env", "MY_KEY", "MY_KEY"),
    "diff": ("diff.ratio_eps", "0.001", 0.001),
    "tasks": ("tasks.limit", "5", 5),
    "sampling": ("sampling.temperature", "0.0", 0.0),
    "engine": ("engine.slots", "4", 4),
    "steering": ("steering.site", "mlp_out", "mlp_out"),
}
# script -> (its extra args, the sections it reads)
SCRIPTS = {
    "collect_activations.py": ((DEMO,), ("model", "mesh", "data", "sae")),
    "train_sae.py": ((DEMO,), ("model", "mesh", "data", "activations", "sae", "trainer", "eval")),
    "aot_compile.py": ((DEMO,), ("model", "mesh", "data", "activations", "sae", "trainer", "engine", "sampling",
                                "steering")),
    "reason_score.py": ((), ("model", "mesh", "data", "activations", "hook", "reasonscore")),
    "dashboard.py": ((), ("model", "mesh", "data", "hook", "reasonscore", "dashboard", "autointerp")),
    "diff_models.py": ((), ("model", "mesh", "data", "activations", "hook", "reasonscore", "diff")),
    "evaluate.py": ((), ("model", "mesh", "tasks", "sampling", "engine", "steering")),
}


def _start(script, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, os.path.join(REPO, "launch", script), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)


def test_helpfull_and_one_override_per_section():
  assert set(OVERRIDES) == {s for _, sections in SCRIPTS.values() for s in sections}
  runs = {}
  for script, (extra, sections) in SCRIPTS.items():
    overrides = [f"--config.{OVERRIDES[s][0]}={OVERRIDES[s][1]}" for s in sections]
    runs[script, "help"] = _start(script, *extra, "--helpfull")
    runs[script, "config"] = _start(script, *extra, *overrides, "--print_config")
  out = {key: (proc.communicate(timeout=300), proc.returncode) for key, proc in runs.items()}
  for script, (_, sections) in SCRIPTS.items():
    (stdout, stderr), code = out[script, "help"]
    assert code == 1 and "Traceback" not in stderr, stderr  # absl's help exits 1
    text = " ".join(stdout.split())  # absl wraps the help
    assert "--config:" in text and "print_config:" in text and "Read here: " + ", ".join(sections) + "." in text
    (stdout, stderr), code = out[script, "config"]
    assert code == 0, stderr
    seen = json.loads(stdout)
    assert list(seen) == list(sections), script
    for s in sections:
      key, _, want = OVERRIDES[s]
      assert seen[s][key.split(".")[1]] == want, (script, key)


def test_unknown_key_is_one_error_line():
  proc = _start("train_sae.py", DEMO, "--config.trainer.no_such_key=1")
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 2 and "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == ("error: unknown config key trainer.no_such_key: see the keys with "
                                             "--print_config or configs/default.py")
