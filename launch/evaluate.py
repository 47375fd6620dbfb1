"""Benchmark evaluation of the model unsteered and steered by SAE features, with a side-by-side report.

  python launch/evaluate.py --config=configs/eval_paper_r1_llama8b.py --config.model.path=runs/r1_llama8b \
      --config.steering.sae=SAE_DIR --out=runs/eval_paper

One process runs the baseline and every steering setting (features x strengths) on one compiled engine.
Every finished sample is appended to `samples.jsonl` in --out: rerun the same command after a kill and only
the missing samples run. Writes summary.json, report.md, PNG plots, steering.json and run.json.
Task sources: `--config.tasks.sources` lists `task=PATH` (parquet, jsonl, csv or a save_to_disk dir) for
tasks that should not come from the hub.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Eval config (configs/eval_*.py); override keys with --config.a.b=v.")
flags.DEFINE_string("out", None, "Output dir (samples.jsonl, summary.json, report.md, plots).", required=True)


def _dataclass(cls, section, name):
  try:
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(section).items()})
  except TypeError as e:
    raise UserError(f"bad {name} config: {e}") from None


def _tasks(c) -> dict:
  from sae_jax.evals.tasks import load_task
  sources = {}
  for spec in c.tasks.sources:
    name, sep, path = spec.partition("=")
    if not sep or not path:
      raise UserError(f"tasks.sources entries are task=PATH, got {spec!r}")
    sources[name] = path
  unknown = set(sources) - set(c.tasks.names)
  if unknown:
    raise UserError(f"tasks.sources names tasks that are not in tasks.names: {sorted(unknown)}")
  out = {}
  for name in c.tasks.names:
    options = {"shuffle_seed": c.tasks.gpqa_shuffle_seed} if name == "gpqa_diamond" else {}
    out[name] = load_task(name, sources.get(name), c.tasks.limit or None, **options)
  return out


@exit_on_user_error
def main(argv):
  del argv
  import jax.numpy as jnp
  from sae_jax.activations import pipeline
  from sae_jax.evals.runner import EvalConfig
  from sae_jax.features import steer_eval
  from sae_jax.models import checkpoint, sharding
  from sae_jax.sae import load_saelens

  sharding.maybe_initialize_distributed()
  c = FLAGS.config
  if c is None:
    raise UserError("--config is required")
  ev = dict(c.eval)
  ev["stop"] = tuple(ev["stop"]) or None
  config = _dataclass(EvalConfig, ev, "eval")
  engine_opts = _dataclass(steer_eval.EngineOptions, c.engine, "engine")
  steering_opts = _dataclass(steer_eval.SteeringOptions, c.steering, "steering")
  config.validate()
  tasks = _tasks(c)
  if os.path.isfile(FLAGS.out):
    raise UserError(f"--out {FLAGS.out} is a file, expected a directory")
  mesh = pipeline.mesh_from_config(c)
  sae = load_saelens(steering_opts.sae) if steering_opts.sae else None
  model = checkpoint.load_any(c.model.path, dtype=jnp.dtype(c.model.dtype), mesh=mesh)
  tokenizer = c.model.tokenizer or c.model.path
  summary = steer_eval.evaluate(model, tokenizer, tasks, FLAGS.out, config, engine_opts, steering_opts, sae=sae,
                                mesh=mesh)
  with open(os.path.join(FLAGS.out, "steering.json.tmp"), "w") as f:
    json.dump(summary["steering"], f, indent=1)
  os.replace(os.path.join(FLAGS.out, "steering.json.tmp"), os.path.join(FLAGS.out, "steering.json"))
  runinfo.write_run_json(FLAGS.out, {"config": c.to_dict()})
  steer_eval.print_table(summary)


if __name__ == "__main__":
  app.run(main)
