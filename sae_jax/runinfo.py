"""`run.json` next to every run's outputs: flags, versions, git commit, devices."""

import os
import subprocess
import sys
import time

from sae_jax import io as sio


def run_info(flags: dict) -> dict:
  import jax
  commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  versions = {}
  for name in ("jax", "flax", "optax", "orbax.checkpoint", "transformers", "numpy", "torch"):
    mod = sys.modules.get(name)
    if mod is not None:
      versions[name] = getattr(mod, "__version__", "?")
  return {
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "flags": {k: v for k, v in flags.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))},
      "versions": versions,
      "git_commit": commit or None,
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
  }


def main_flags() -> dict:
  """The absl flags defined by the running launch script (not every library's flags)."""
  from absl import flags
  return {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(sys.argv[0])}


def write_run_json(out_dir: str, flags: dict | None = None) -> str:
  flags = main_flags() if flags is None else flags
  return sio.write_json(sio.join(out_dir, "run.json"), run_info(flags), default=str)
