"""What the launch scripts that read a run config share: --config, --print_config, path flags, the end of a run.

Every such script takes the same config (sections `model`, `mesh`, `data`, ... of `sae_jax.runs.SECTIONS`, keys
overridden with --config.<section>.<key>=value; an unknown key is an error) and flags only for paths. A script
is its sections, its path flags and one `sae_jax.runs` call: `main(SECTIONS, stage)`.
"""

import json
import os
import posixpath
import re
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from sae_jax import pod, runinfo, runs
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SAE_HELP = ("SAE: a dir in SAELens (ours, SAELens 5 or 6) or sparsify format, or a hub SAE 'release/sae_id' "
            "(a SAELens release, or 'owner/name/sae_id', e.g. the paper's released SAE; README, 'SAE files').")
# The artifacts root (--root, a local dir or gs://bucket/run): per script, the path flags and config keys whose
# default is a dir under it, so the stages of one run find each other's outputs. Each output dir gets run.json.
ROOT_LAYOUT = {
    "convert.py": {"out": "model"},
    "collect_activations.py": {"config.model.path": "model", "out": "activations"},
    "train_sae.py": {"config.model.path": "model", "config.trainer.out_dir": "sae"},
    "reason_score.py": {"config.model.path": "model", "sae": "sae/sae", "out": "scores"},
    "dashboard.py": {"config.model.path": "model", "sae": "sae/sae", "scores": "scores", "out": "dashboards"},
    "diff_models.py": {"config.model.path": "model", "sae": "sae/sae", "out": "diff"},
    "evaluate.py": {"config.model.path": "model", "sae": "sae/sae", "dashboard": "dashboards", "out": "evals"},
}


def define_root() -> None:
  """--root: the artifacts root whose subdirs are this script's default paths (`ROOT_LAYOUT`; a script
  without a layout, e.g. aot_compile.py, gets no --root)."""
  layout = ROOT_LAYOUT.get(os.path.basename(sys.argv[0]))
  if not layout:
    return
  flags.DEFINE_string("root", None, "Artifacts root (a local dir or gs://bucket/run) holding model/, activations/, "
                      "sae/, scores/, dashboards/, evals/: unset paths of this script default to "
                      + ", ".join(f"{k}={v}/" for k, v in layout.items()) +
                      " under it (config.model.path only without an activations.cache_dir).")


def apply_root(c=None) -> None:
  """Fills the paths --root gives (`ROOT_LAYOUT`): a path flag left unset, a config key not on the command line
  (model.path neither when the config reads an activation cache instead)."""
  if "root" not in FLAGS or not FLAGS.root:
    return
  on_command_line = given() if c is not None else frozenset()
  for key, sub in ROOT_LAYOUT.get(os.path.basename(sys.argv[0]), {}).items():
    path = posixpath.join(FLAGS.root, sub)
    if not key.startswith("config."):
      if not FLAGS[key].value:
        FLAGS[key].value = path
      continue
    section, name = key[len("config."):].split(".")
    if f"{section}.{name}" in on_command_line or (name == "path" and c.get("activations", {}).get("cache_dir")):
      continue
    c[section][name] = path


def define_config(sections, default: str | None = None, sae: str | None = None, out: str | None = None) -> None:
  """--config (a configs/*.py file, default `configs/<default>`), --print_config (`sections` as read), and the
  path flags --sae and --out when their help is given."""
  path = os.path.join(CONFIGS, default) if default else None
  try:  # with a default file, the overrides in sys.argv are applied here already
    config_flags.DEFINE_config_file(
        "config", path,
        f"Run config (configs/*.py{'; default configs/' + default if default else ''}); override any key with "
        f"--config.<section>.<key>=value. Read here: {', '.join(sections)}.", lock_config=True)
  except Exception as e:  # noqa: BLE001  (a config file may raise anything)
    _exit_config_error(e, path, sys.argv)
  flags.DEFINE_bool("print_config", False, f"Print the sections this script reads ({', '.join(sections)}) as the run "
                    "sees them, then exit without running.")
  if sae:
    flags.DEFINE_string("sae", None, sae)
  if out:
    flags.DEFINE_string("out", None, out)
  define_root()


def main(sections, stage, required=("sae", "out"), out_dir=lambda c: FLAGS.out) -> None:
  """Runs `stage(config) -> summary` under absl: the `required` path flags checked, then run.json in
  `out_dir(config)` and the summary as one JSON line. A --config.<key> the config lacks is one `error:` line."""

  @exit_on_user_error
  def run(argv):
    del argv
    pod.initialize()  # in a pod (sae_jax.pod's environment), before any JAX call
    c = config(sections)
    apply_root(c)
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
    given = _config_arg(sys.argv)
    raise UserError(f"--config {given}: get_config() returned None" if given else
                    "--config is required (a configs/*.py file)")
  if FLAGS.print_config:
    apply_root(c)
    print(json.dumps(runs.resolved(FLAGS.config, sections), indent=1, default=str))
    raise SystemExit(0)
  return c


def given() -> frozenset:
  """The config keys set on the command line (`data.sources`, ...)."""
  return frozenset(config_flags.get_override_values(FLAGS["config"]))


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except Exception as e:  # noqa: BLE001  (a config file may raise anything)
    _exit_config_error(e, _config_arg(argv), argv)


def _config_arg(argv) -> str | None:
  """The file of --config in `argv` (without ml_collections' `:argument` tail), if given."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":", 1)[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def _exit_config_error(e: Exception, path: str | None, argv) -> None:
  """One `error:` line (exit 2) for a config that does not load: a syntax error, or an exception on import or in
  get_config (named by the innermost line of the file, or of a configs/ file it imports), or no get_config; a
  --config.<key> the config lacks; else absl's own flag error (exit 1). Never a traceback."""
  text = "".join(traceback.format_exception(e))  # ml_collections puts a TypeError's traceback in the message
  mine = [os.path.abspath(path)] if path else []
  frames = [(f, int(n)) for f, n in re.findall(r'File "([^"]+)", line (\d+)', text)
            if os.path.abspath(f) in mine or os.path.dirname(os.path.abspath(f)) == CONFIGS]
  if isinstance(e, SyntaxError) and e.filename:
    frames.append((e.filename, e.lineno or 0))
  last = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  if frames:
    file, line = frames[-1]
    what = f"SyntaxError: {e.msg}" if isinstance(e, SyntaxError) else (last[-1] if last and isinstance(
        e, flags.Error) else f"{type(e).__name__}: {e}")
    _exit_error(f"cannot load --config {file}, line {line}: {what}")
  if "get_config" in str(e):
    _exit_error(f"cannot load --config {path}: it defines no get_config() returning the config")
  if isinstance(e, (AttributeError, KeyError)):
    _exit_unknown_keys(argv)
  if isinstance(e, flags.Error):
    print(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
    sys.exit(1)
  raise e


def _exit_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _exit_unknown_keys(argv):
  """The `--config.<key>` of `argv` the config lacks, as one error line (exit 2)."""
  keys = set(_flat_keys(runs.default_config()))
  given = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
  unknown = [k for k in given if k not in keys] or given
  _exit_error(f"unknown config key {', '.join(unknown)}: see the keys with --print_config or configs/default.py")


def _flat_keys(c, prefix=""):
  for key, value in c.items():
    if hasattr(value, "items"):
      yield from _flat_keys(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"
