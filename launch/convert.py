"""Convert a HF checkpoint (safetensors dir, GGUF file or hub id) to a sae_jax Orbax checkpoint.

  python launch/convert.py --model=path/to/hf_dir_or.gguf --out=runs/model --dtype=bfloat16
"""

import json
import os
import time

from absl import app, flags, logging

import common
from sae_jax import io as sio
from sae_jax import pod, runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "HF checkpoint dir, .gguf file, or hub id (owner/name).", required=True)
flags.DEFINE_string("out", None, "Output dir for the converted checkpoint: new, empty, or an earlier output of "
                    "this script (replaced atomically). Required unless --root is given.")
common.define_root()
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Parameter dtype of the checkpoint.")
flags.DEFINE_string("tokenizer", None, "Dir with tokenizer files to copy (default: the model dir; for a "
                    "GGUF file the tokenizer embedded in it).")


@exit_on_user_error
def main(argv):
  del argv
  from sae_jax.models import checkpoint
  import jax.numpy as jnp
  logging.set_verbosity(logging.WARNING)  # Orbax logs dozens of INFO lines per save
  common.apply_root()
  if FLAGS.out is None:
    raise UserError("--out (or --root) required")
  sio.check_replaceable(FLAGS.out, checkpoint.KIND)  # before the long load: a bad --out fails at once
  if FLAGS.tokenizer and not os.path.isdir(FLAGS.tokenizer):
    raise UserError(f"--tokenizer {FLAGS.tokenizer} is not a directory")
  pod.initialize()
  start = time.time()
  out = checkpoint.convert(FLAGS.model, FLAGS.out, jnp.dtype(FLAGS.dtype), FLAGS.tokenizer)
  if not pod.is_writer():
    return
  runinfo.write_run_json(out)
  print(json.dumps({"checkpoint": out, "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
  app.run(main)
