"""What the launch scripts that read a run config share: --config, --print_config, and the end of a run.

Every such script takes the same config (sections `model`, `mesh`, `data`, ... of `sae_jax.runs.SECTIONS`, keys
overridden with --config.<section>.<key>=value; an unknown key is an error) and flags only for paths.
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from sae_jax import runinfo
from sae_jax.errors import UserError

FLAGS = flags.FLAGS
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def define_config(sections, default: str | None = None) -> None:
  """--config (a configs/*.py file, default `configs/<default>`) and --print_config (`sections` as read)."""
  config_flags.DEFINE_config_file(
      "config", os.path.join(CONFIGS, default) if default else None,
      f"Run config (configs/*.py{'; default configs/' + default if default else ''}); override any key with "
      f"--config.<section>.<key>=value. Read here: {', '.join(sections)}.", lock_config=True)
  flags.DEFINE_bool("print_config", False, f"Print the sections this script reads ({', '.join(sections)}) as the run "
                    "sees them, then exit without running.")


def config(sections):
  """The run config; with --print_config, prints `sections` resolved by `sae_jax.runs` and exits."""
  from sae_jax import runs
  if FLAGS.config is None:
    raise UserError("--config is required (a configs/*.py file)")
  if FLAGS.print_config:
    print(json.dumps(runs.resolved(FLAGS.config, sections), indent=1, default=str))
    raise SystemExit(0)
  return FLAGS.config


def require(*names) -> None:
  """Path flags a run needs (not absl-required, so that --print_config and --helpfull work without them)."""
  missing = [f"--{n}" for n in names if not FLAGS[n].value]
  if missing:
    raise UserError(f"{', '.join(missing)} required")


def given() -> frozenset:
  """The config keys set on the command line (`data.sources`, ...)."""
  return frozenset(config_flags.get_override_values(FLAGS["config"]))


def finish(out_dir: str | None, summary: dict) -> None:
  """run.json (flags and the whole config) in `out_dir`, and the summary as one JSON line on stdout."""
  if out_dir:
    runinfo.write_run_json(out_dir, {**runinfo.main_flags(), "config": FLAGS.config.to_dict()})
  print(json.dumps(summary, default=float))


def run(main) -> None:
  """`app.run(main)`; a --config.<key> the config does not have is one `error:` line (exit 2), not a traceback."""
  app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
    sys.exit(1)
  except (AttributeError, KeyError):
    from sae_jax import runs
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
