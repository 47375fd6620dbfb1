"""Answer one chat prompt with greedy decoding on a converted checkpoint.

  python launch/chat.py --model=runs/model --prompt="What is 2+2?" --max_new_tokens=64
"""

import json
import time

from absl import app, flags

from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Converted checkpoint dir (or HF dir / .gguf).", required=True)
flags.DEFINE_string("prompt", "What is the sum of the first 10 positive integers? Answer briefly.",
                    "User message.")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate.")
flags.DEFINE_enum("dtype", None, ["bfloat16", "float32"], "Override the checkpoint dtype.")


@exit_on_user_error
def main(argv):
  del argv
  import transformers
  from sae_jax.generation import greedy_generate
  from sae_jax.models import checkpoint

  if FLAGS.max_new_tokens < 1:
    raise UserError("--max_new_tokens must be >= 1")
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(FLAGS.model)
  except (OSError, ValueError) as e:
    raise UserError(f"no tokenizer in {FLAGS.model}: {str(e).splitlines()[0]}") from None
  model = checkpoint.load_any(FLAGS.model, dtype=FLAGS.dtype)
  ids = tokenizer.apply_chat_template([{"role": "user", "content": FLAGS.prompt}],
                                      add_generation_prompt=True, tokenize=True)
  ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
  eos = set(model.cfg.eos_token_ids) | ({tokenizer.eos_token_id} - {None})
  start = time.time()
  out = greedy_generate(model, [ids], FLAGS.max_new_tokens, eos_ids=tuple(eos),
                        pad_id=tokenizer.pad_token_id or 0)[0]
  seconds = time.time() - start
  answer = tokenizer.decode(out, skip_special_tokens=True)
  print(f"user: {FLAGS.prompt}\nassistant: {answer}")
  print(json.dumps({"prompt_tokens": len(ids), "new_tokens": len(out), "seconds": round(seconds, 2)}))


if __name__ == "__main__":
  app.run(main)
