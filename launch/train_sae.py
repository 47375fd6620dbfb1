"""Train an SAE on residual-stream activations (on the fly from the model, or from cached shards).

  python launch/train_sae.py --config=configs/paper_r1_llama8b_l19.py --config.model.path=/ckpt/r1_llama8b
  python launch/train_sae.py --config=configs/demo_smollm2.py --config.activations.cache_dir=runs/acts

Rerunning the same command after a kill or preemption resumes from the last checkpoint in
`trainer.out_dir`/checkpoints. Writes metrics.jsonl, tensorboard/, result.json, run.json, and the final
(folded) SAE in SAELens format under `trainer.out_dir`/sae.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py); override keys with --config.a.b=v.")


@exit_on_user_error
def main(argv):
  del argv
  from sae_jax.activations import pipeline
  from sae_jax.models import sharding
  from sae_jax.models.sharding import batch_sharding
  from sae_jax.sae.trainer import BatchStream, TrainerOptions, train

  sharding.maybe_initialize_distributed()
  c = FLAGS.config
  if c is None:
    raise UserError("--config is required")
  sae_cfg = pipeline.sae_config_from_config(c)
  try:
    opts = TrainerOptions(**dict(c.trainer))
  except TypeError as e:
    raise UserError(f"bad trainer config: {e}") from None
  mesh = pipeline.mesh_from_config(c)
  producer = pipeline.producer_from_config(c, sae_cfg, mesh)
  chunk = c.data.store_batch_rows * c.data.context_size
  if c.activations.cache_dir:
    chunk = producer.manifest["shard_tokens"]
  stream = BatchStream(producer, d=sae_cfg.d_in, batch_size=sae_cfg.batch_size,
                       half=opts.buffer_half_tokens, slack=chunk, seed=sae_cfg.seed,
                       sharding=batch_sharding(mesh))
  result = train(sae_cfg, stream, opts, mesh=mesh)
  params = result.pop("params")
  if c.model.path and c.eval.batches > 0:
    result["splice_eval"] = _splice_eval(c, sae_cfg, params, mesh)
    with open(os.path.join(opts.out_dir, "result.json"), "w") as f:
      json.dump(result, f, indent=2, default=float)
  runinfo.write_run_json(opts.out_dir, {"config": c.to_dict()})
  print(json.dumps(result, indent=2, default=float))


def _splice_eval(c, sae_cfg, params, mesh) -> dict:
  """CE-loss recovered etc. of the trained (folded) SAE on the last `eval.batches` batches of the corpus."""
  import jax.numpy as jnp
  from sae_jax.activations import pipeline
  from sae_jax.models import checkpoint
  from sae_jax.sae.splice_eval import splice_metrics
  model = checkpoint.load_any(c.model.path, dtype=jnp.dtype(c.model.dtype), mesh=mesh)
  rows = pipeline.token_rows_from_config(c)
  b = c.data.store_batch_rows
  n = min(c.eval.batches, len(rows) // b)
  batches = [rows[len(rows) - (i + 1) * b:len(rows) - i * b] for i in range(n)]
  return splice_metrics(model, params, batches, sae_cfg.hook_layer, sae_cfg.hook_site,
                        exclude_ids=sae_cfg.exclude_special_tokens, sae_cfg=sae_cfg)


if __name__ == "__main__":
  app.run(main)
