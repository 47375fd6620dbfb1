"""What a run tells its user: `run.json` next to its outputs (flags, versions, git commit, devices), and `Phase`
lines on stderr while it works."""

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


PHASE_EVERY = 10.0  # seconds between the progress lines of one long phase


def say(line: str) -> None:
  """One status line on stderr (stdout keeps the run's JSON summary), flushed at once."""
  print(line, file=sys.stderr, flush=True)


class Phase:
  """A long step of a run (model load, tokenization, norm estimate, buffer fill): one stderr line when it starts,
  one when it ends (seconds, count, throughput), and a progress line at most every `every` seconds between
  them, so a start that takes minutes is never silent. `quiet` keeps only the progress lines.

    with Phase("[train] norm estimate", total=20, unit="batches") as p:
      for i in ...: p.update(i + 1)
      p.result = "scaling factor 0.83"
  """

  def __init__(self, what: str, total: int = 0, unit: str = "", done: int = 0, every: float = PHASE_EVERY,
               quiet: bool = False, start: str = ""):
    self.what, self.total, self.unit, self.every, self.quiet, self.start = what, total, unit, every, quiet, start
    self.done = self.first = done
    self.result = ""
    self.t0 = self.last = time.time()

  def __enter__(self) -> "Phase":
    if not self.quiet:
      of = f"{self.total} {self.unit}" if self.total else ""
      say(f"{self.what}: {', '.join(x for x in (self.start, of) if x) or 'starting'}"
          + (f" ({self.done} done before)" if self.done else "") + " ...")
    return self

  def update(self, done: int, total: int | None = None) -> None:
    self.done, self.total = done, self.total if total is None else total
    now = time.time()
    if now - self.last >= self.every:
      self.last = now
      say(f"{self.what}: {self._count()}{self._rate(now)}")

  def _count(self) -> str:
    return f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"

  def _rate(self, now: float) -> str:
    n = self.done - self.first
    return f", {n / max(now - self.t0, 1e-9):.4g} {self.unit}/s" if n > 0 and self.unit else ""

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None and not self.quiet:
      now = time.time()
      count = f", {self._count()}{self._rate(now)}" if self.done else ""
      say(f"{self.what}: done in {now - self.t0:.1f} s{count}{': ' + self.result if self.result else ''}")
