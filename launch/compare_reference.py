"""Check our model against HF transformers (torch) on the same prompts: logits and one hook site.

  python launch/compare_reference.py --model=runs/model --reference=path/to/hf_dir --dtype=float32 \
      --layer=19 --site=resid_post --out=runs/parity.json

Prints and writes JSON: max |logit diff|, mean/max per-token KL(ref || ours), top-1 agreement, and the same
for `--site` at `--layer` against HF `output_hidden_states` (resid_post of layer L = hidden_states[L+1]).
"""

import json
import os

from absl import app, flags

from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Our side: converted checkpoint dir, HF dir, .gguf or hub id.",
                    required=True)
flags.DEFINE_string("reference", None, "HF (torch) side: HF dir or hub id (default: --model when that is "
                    "a HF dir).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of both models.")
flags.DEFINE_multi_string("prompt", None, "Prompt text (repeatable). Default: three built-in prompts.")
flags.DEFINE_integer("layer", None, "Layer whose hook site is compared (default: the middle layer).")
flags.DEFINE_enum("site", "resid_post", ["resid_post"], "Hook site compared with HF hidden_states.")
flags.DEFINE_string("out", None, "Write the JSON report here (dir or .json path).")

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Question: what is 17 * 23? Let me think step by step.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
)


def compare(model, hf_model, tokenizer, prompts, layer: int) -> dict:
  """Runs both models on a right-padded batch of prompts and returns the parity report."""
  import numpy as np
  from flax import nnx
  from sae_jax.models import parity
  from sae_jax.models.inference import forward_captured, left_pad

  ids = [tokenizer(p)["input_ids"] for p in prompts]
  tokens, mask = left_pad(ids, tokenizer.pad_token_id or 0)
  graphdef, state = nnx.split(model)
  logits, captured = forward_captured(graphdef, state, tokens, mask, frozenset({(layer, "resid_post")}))
  site = captured[(layer, "resid_post")]
  ref_logits, ref_hidden = parity.hf_forward(hf_model, tokens, mask)
  return {
      "prompts": len(prompts),
      "logits": parity.logit_metrics(np.asarray(logits, np.float32), ref_logits, mask),
      f"layer{layer}_resid_post": parity.activation_metrics(np.asarray(site, np.float32),
                                                            ref_hidden[layer + 1], mask),
  }


@exit_on_user_error
def main(argv):
  del argv
  import jax.numpy as jnp
  import torch
  import transformers
  from sae_jax.models import checkpoint

  reference = FLAGS.reference or (FLAGS.model if os.path.isfile(os.path.join(FLAGS.model, "model.safetensors"))
                                  or os.path.isfile(os.path.join(FLAGS.model,
                                                                 "model.safetensors.index.json")) else None)
  if reference is None:
    raise UserError("--reference is required: a HF dir or hub id for the torch side")
  model = checkpoint.load_any(FLAGS.model, dtype=jnp.dtype(FLAGS.dtype))
  layer = model.cfg.num_layers // 2 if FLAGS.layer is None else model.cfg.validate_layer(FLAGS.layer)
  try:
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        reference, dtype=getattr(torch, FLAGS.dtype)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(reference)
  except OSError as e:
    raise UserError(f"cannot load the reference {reference!r}: {str(e).splitlines()[0]}") from None
  report = compare(model, hf_model, tokenizer, FLAGS.prompt or DEFAULT_PROMPTS, layer)
  report.update({"model": FLAGS.model, "reference": reference, "dtype": FLAGS.dtype})
  print(json.dumps(report, indent=2))
  if FLAGS.out:
    path = FLAGS.out if FLAGS.out.endswith(".json") else os.path.join(FLAGS.out, "parity.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
    runinfo.write_run_json(os.path.dirname(os.path.abspath(path)))


if __name__ == "__main__":
  app.run(main)
