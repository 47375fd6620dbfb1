"""Convert a HF checkpoint (safetensors dir, GGUF file or hub id) to a sae_jax Orbax checkpoint.

  python launch/convert.py --model=path/to/hf_dir_or.gguf --out=runs/model --dtype=bfloat16
"""

import json
import os
import shutil
import tempfile
import time

from absl import app, flags, logging

import common
from sae_jax import io as sio
from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "HF checkpoint dir, .gguf file, or hub id (owner/name).", required=True)
flags.DEFINE_string("out", None, "Output dir for the converted checkpoint: new, empty, or an earlier output of "
                    "this script (replaced atomically). Required unless --root is given.")
common.define_root()
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Parameter dtype of the checkpoint.")
flags.DEFINE_string("tokenizer", None, "Dir with tokenizer files to copy (default: the model dir; for a "
                    "GGUF file the tokenizer embedded in it).")


def _tokenizer_dir(model: str, explicit: str | None, scratch: str) -> str | None:
  """Where the tokenizer files come from; a GGUF's embedded tokenizer is exported via transformers."""
  if explicit:
    return explicit
  if model.endswith(".gguf"):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(model)),
                                        gguf_file=os.path.basename(model))
    tok.save_pretrained(scratch)
    return scratch
  return model if os.path.isdir(model) else None


@exit_on_user_error
def main(argv):
  del argv
  from sae_jax.models import checkpoint, loading, sharding
  import jax.numpy as jnp
  logging.set_verbosity(logging.WARNING)  # Orbax logs dozens of INFO lines per save
  common.apply_root()
  if FLAGS.out is None:
    raise UserError("--out (or --root) required")
  sio.check_replaceable(FLAGS.out, checkpoint.KIND)  # before the long load: a bad --out fails at once
  if FLAGS.tokenizer and not os.path.isdir(FLAGS.tokenizer):
    raise UserError(f"--tokenizer {FLAGS.tokenizer} is not a directory")
  sharding.maybe_initialize_distributed()
  start = time.time()
  reader, hf_config = loading.open_checkpoint(FLAGS.model)
  del reader
  model = loading.load_model(FLAGS.model, dtype=jnp.dtype(FLAGS.dtype))
  print(f"loaded {FLAGS.model}: {model.cfg.architecture}, {model.cfg.num_layers} layers, "
        f"d_model {model.cfg.hidden_size} ({time.time() - start:.1f}s)")
  scratch = tempfile.mkdtemp()
  try:
    out = checkpoint.save(FLAGS.out, model, hf_config, _tokenizer_dir(FLAGS.model, FLAGS.tokenizer, scratch))
  finally:
    shutil.rmtree(scratch)
  runinfo.write_run_json(out)
  print(json.dumps({"checkpoint": out, "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
  app.run(main)
