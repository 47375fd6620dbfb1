"""Collect residual-stream activations into cached shards (resumable; a shard is visible once complete).

  python launch/collect_activations.py --config=configs/demo_smollm2.py --out=runs/acts \
      --config.model.path=runs/model --shard_tokens=65536

A killed run restarts at the first missing shard. `launch/train_sae.py --config.activations.cache_dir=DIR`
then trains from the shards without running the model. The token rows are stored too (rows.npy), so
reason_score.py and diff_models.py can score them (`--config.activations.cache_dir=DIR`).
"""

from absl import flags

import common
from sae_jax import runs

SECTIONS = ("model", "mesh", "data", "sae")
FLAGS = flags.FLAGS
common.define_config(SECTIONS, out="Output dir of the shards and manifest (local or fsspec URL).")
flags.DEFINE_integer("shard_tokens", 65536, "Activations per shard (the last partial shard is dropped).")
flags.DEFINE_integer("max_batches", 0, "Stop after this many model batches (0: the whole corpus).")
flags.adopt_module_key_flags(common)

if __name__ == "__main__":
  common.main(SECTIONS, lambda c: runs.collect(c, FLAGS.out, FLAGS.shard_tokens, FLAGS.max_batches), ("out",))
