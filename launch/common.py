"""What the launch scripts that read a run config share: --config, --print_config, path flags, the end of a run.

Every such script takes the same config (sections `model`, `mesh`, `data`, ... of `sae_jax.runs.SECTIONS`, keys
overridden with --config.<section>.<key>=value; an unknown key is an error) and flags only for paths. A script
is its sections, its path flags and one `sae_jax.runs` call: `main(SECTIONS, stage)`.
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from sae_jax import pod, runinfo, runs
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SAE_HELP = "SAE dir in SAELens format (ours or e.g. the paper's released SAE)."


def define_config(sections, default: str | None = None, sae: str | None = None, out: str | None = None) -> None:
  """--config (a configs/*.py file, default `configs/<default>`), --print_config (`sections` as read), and the
  path flags --sae and --out when their help is given."""
  try:  # with a default file, the overrides in sys.argv are applied here already
    config_flags.DEFINE_config_file(
        "config", os.path.join(CONFIGS, default) if default else None,
        f"Run config (configs/*.py{'; default configs/' + default if default else ''}); override any key with "
        f"--config.<section>.<key>=value. Read here: {', '.join(sections)}.", lock_config=True)
  except (AttributeError, KeyError):
    _exit_unknown_keys(sys.argv)
  flags.DEFINE_bool("print_config", False, f"Print the sections this script reads ({', '.join(sections)}) as the run "
                    "sees them, then exit without running.")
  if sae:
    flags.DEFINE_string("sae", None, sae)
  if out:
    flags.DEFINE_string("out", None, out)


def main(sections, stage, required=("sae", "out"), out_dir=lambda c: FLAGS.out) -> None:
  """Runs `stage(config) -> summary` under absl: the `required` path flags checked, then run.json in
  `out_dir(config)` and the summary as one JSON line. A --config.<key> the config lacks is one `error:` line."""

  @exit_on_user_error
  def run(argv):
    del argv
    pod.initialize()  # in a pod (sae_jax.pod's environment), before any JAX call
    c = config(sections)
    missing = [f"--{n}" for n in required if not FLAGS[n].value]
    if missing:
      raise UserError(f"{', '.join(missing)} required")
    summary = stage(c)
    out = out_dir(c)
    if out and pod.is_writer():
      runinfo.write_run_json(out, {**runinfo.main_flags(), "config": c.to_dict()})
    if pod.is_writer():
      print(json.dumps(summary, default=float))

  app.run(run, flags_parser=_parse_flags)


def config(sections):
  """The run config; with --print_config, prints `sections` resolved by `sae_jax.runs` and exits."""
  c = FLAGS.config
  try:
    c and c.keys()
  except OSError as e:  # ml_collections defers a config file it could not load to the first read
    raise UserError(f"cannot load --config: {str(e).strip().splitlines()[-1].strip()}") from None
  if c is None:
    raise UserError("--config is required (a configs/*.py file)")
  if FLAGS.print_config:
    print(json.dumps(runs.resolved(FLAGS.config, sections), indent=1, default=str))
    raise SystemExit(0)
  return c


def given() -> frozenset:
  """The config keys set on the command line (`data.sources`, ...)."""
  return frozenset(config_flags.get_override_values(FLAGS["config"]))


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
    sys.exit(1)
  except (AttributeError, KeyError):
    _exit_unknown_keys(argv)


def _exit_unknown_keys(argv):
  """The `--config.<key>` of `argv` the config lacks, as one error line (exit 2)."""
  keys = set(_flat_keys(runs.default_config()))
  given = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
  unknown = [k for k in given if k not in keys] or given
  print(f"error: unknown config key {', '.join(unknown)}: see the keys with --print_config or configs/default.py",
        file=sys.stderr)
  sys.exit(2)


def _flat_keys(c, prefix=""):
  for key, value in c.items():
    if hasattr(value, "items"):
      yield from _flat_keys(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"
