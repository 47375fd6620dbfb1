"""Collect residual-stream activations into cached shards (resumable; a shard is visible once complete).

  python launch/collect_activations.py --config=configs/demo_smollm2.py --out=runs/acts \
      --config.model.path=runs/model --shard_tokens=65536

A killed run restarts at the first missing shard. `launch/train_sae.py --config.activations.cache_dir=DIR`
then trains from the shards without running the model. The token rows are stored too (rows.npy), so
`launch/reason_score.py --activations=DIR` and `launch/diff_models.py --activations_a/_b` can score them.
"""

import json
import time

from absl import app, flags
from ml_collections import config_flags

from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py); model, data and sae.hook_* are used.")
flags.DEFINE_string("out", None, "Output dir of the shards and manifest.", required=True)
flags.DEFINE_integer("shard_tokens", 65536, "Activations per shard (the last partial shard is dropped).")
flags.DEFINE_integer("max_batches", 0, "Stop after this many model batches (0: the whole corpus).")


@exit_on_user_error
def main(argv):
  del argv
  import numpy as np
  from tqdm import tqdm
  from sae_jax.activations import pipeline
  from sae_jax.activations.shards import ShardWriter
  from sae_jax.models import sharding

  sharding.maybe_initialize_distributed()
  c = FLAGS.config
  if c is None:
    raise UserError("--config is required")
  sae_cfg = pipeline.sae_config_from_config(c)
  source = pipeline.model_source_from_config(c, sae_cfg, pipeline.mesh_from_config(c), loop=False)
  meta = {"model": c.model.path, "layer": sae_cfg.hook_layer, "site": sae_cfg.hook_site,
          "sources": list(c.data.sources), "context_size": c.data.context_size, "mode": c.data.mode,
          "exclude_ids": list(sae_cfg.exclude_special_tokens), "tokenizer": pipeline.tokenizer_path(c)}
  rows = np.asarray(source.rows[:source.batches_per_epoch * source.batch_rows])  # all the source will run
  writer = ShardWriter(FLAGS.out, FLAGS.shard_tokens, sae_cfg.d_in, meta, rows=rows)
  resume_batch, skip = writer.resume_point
  source.seek(resume_batch)
  total = source.batches_per_epoch if not FLAGS.max_batches else min(FLAGS.max_batches,
                                                                        source.batches_per_epoch)
  start = time.time()
  with tqdm(total=total, initial=resume_batch, desc="collect", mininterval=2.0) as bar:
    while source.position < total:
      acts, keep = source()
      writer.add(np.asarray(acts)[keep][skip:], batch_end=source.position)
      skip = 0
      bar.update(1)
  manifest = writer.finish()
  runinfo.write_run_json(FLAGS.out)
  tokens = sum(s["tokens"] for s in manifest["shards"])
  print(json.dumps({"out": FLAGS.out, "shards": len(manifest["shards"]), "tokens": tokens,
                    "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
  app.run(main)
