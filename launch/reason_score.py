"""ReasonScore of every SAE feature in one pass over the extraction corpus (REFERENCE.md section 6).

  python launch/reason_score.py --model=runs/r1_llama8b --sae=path/to/saelens_dir --out=runs/reasonscore

Paper defaults: the OpenThoughts 10k extraction subset in the DeepSeek template, TransformerLens-style
packing into 1024-token rows, rows shuffled with seed 42 (HF `datasets` shuffle, as the reference), the
first 4096 rows; window (1, 2) with the reference's rule, alpha 0.7, BOS/EOS ignored. The model runs once
per token whatever the dictionary size. Writes scores, mu+, mu-, per-word means, entropy (.npy), the
top-k list (`top_k.json`), and run.json.
"""

import json
import os
import time

from absl import app, flags

from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Converted checkpoint dir, HF dir, .gguf or hub id.", required=True)
flags.DEFINE_string("sae", None, "SAE dir in SAELens format (ours or e.g. the paper's released SAE).",
                    required=True)
flags.DEFINE_string("out", None, "Output dir.", required=True)
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Model dtype (the paper: bfloat16).")
flags.DEFINE_integer("layer", None, "Layer of the hook site (default: the SAE's hook layer).")
flags.DEFINE_string("site", None, "Hook site (default: the SAE's hook site).")
flags.DEFINE_multi_string("data", ["open-thoughts/OpenThoughts-114k#builder=openthoughts_subset,config=metadata"],
                          "Text source spec(s) `PATH#key=value,...` (see sae_jax.data.parse_source).")
flags.DEFINE_string("tokenizer", None, "Tokenizer dir (default: the model's).")
flags.DEFINE_integer("context_size", 1024, "Tokens per row.")
flags.DEFINE_enum("packing", "reference", ["reference", "clean"], "Row packing (reference = TransformerLens).")
flags.DEFINE_integer("n_rows", 4096, "Rows scored, taken after the shuffle (0: all).")
flags.DEFINE_integer("shuffle_seed", 42, "Seed of the row shuffle (HF datasets); -1 keeps corpus order.")
flags.DEFINE_integer("batch_rows", 8, "Rows per model call.")
flags.DEFINE_string("vocab", None, "JSON file with the list of reasoning strings (default: the paper's 34).")
flags.DEFINE_list("window", ["1", "2"], "Window widening (left, right) around matched tokens.")
flags.DEFINE_enum("window_mode", "reference", ["reference", "intended"],
                  "reference: the reference's distinct-starts/ends rule; intended: plain union of windows.")
flags.DEFINE_float("alpha", 0.7, "Entropy exponent.")
flags.DEFINE_list("ignore_ids", None, "Token ids left out of every mask (default: the tokenizer's BOS and EOS).")
flags.DEFINE_integer("top_k", 100, "Features listed in top_k.json.")
flags.DEFINE_list("mesh", ["-1", "1", "1"], "Mesh sizes data,fsdp,model (latents shard on model).")


@exit_on_user_error
def main(argv):
  del argv
  import jax.numpy as jnp
  from tqdm import tqdm
  from sae_jax.activations.collect import make_site_fn
  from sae_jax.data import load_tokenizer
  from sae_jax.data.packing import extraction_rows
  from sae_jax.features import Vocabulary, load_reason_strings, reasonscore_corpus, DEFAULT_REASON_STRINGS
  from sae_jax.models import checkpoint, sharding
  from sae_jax.sae import load_saelens

  sharding.maybe_initialize_distributed()
  start = time.time()
  mesh = sharding.make_mesh(*[int(x) for x in FLAGS.mesh])
  sae = load_saelens(FLAGS.sae)
  layer = sae.cfg.hook_layer if FLAGS.layer is None else FLAGS.layer
  site = FLAGS.site or sae.cfg.hook_site
  tokenizer = load_tokenizer(FLAGS.tokenizer or FLAGS.model)
  model = checkpoint.load_any(FLAGS.model, dtype=jnp.dtype(FLAGS.dtype), mesh=mesh)
  if model.cfg.hidden_size != sae.cfg.d_in:
    raise UserError(f"SAE d_in {sae.cfg.d_in} != model width {model.cfg.hidden_size}")
  strings = load_reason_strings(FLAGS.vocab) if FLAGS.vocab else DEFAULT_REASON_STRINGS
  vocab = Vocabulary.from_tokenizer(tokenizer, strings)
  if FLAGS.ignore_ids is None:
    ignore = tuple(sorted({i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None}))
  else:
    ignore = tuple(int(i) for i in FLAGS.ignore_ids)
  rows = extraction_rows(FLAGS.data, tokenizer, FLAGS.context_size, FLAGS.packing, FLAGS.n_rows,
                         FLAGS.shuffle_seed)
  site_fn = make_site_fn(model, layer, site, mesh)
  with tqdm(total=len(rows), desc="reason_score", unit="row", mininterval=2.0) as bar:
    scores = reasonscore_corpus(
        site_fn, rows, sae.params, vocab, batch_rows=FLAGS.batch_rows, alpha=FLAGS.alpha,
        progress=lambda done, n: bar.update(done - bar.n), sae_cfg=sae.cfg,
        window=tuple(int(w) for w in FLAGS.window), mode=FLAGS.window_mode, ignore_ids=ignore, mesh=mesh)
  scores.save(FLAGS.out)
  top = scores.top_k(FLAGS.top_k)
  tmp = os.path.join(FLAGS.out, "top_k.json.tmp")
  with open(tmp, "w") as f:
    json.dump(top, f, indent=1, default=float)
  os.replace(tmp, os.path.join(FLAGS.out, "top_k.json"))
  runinfo.write_run_json(FLAGS.out)
  print(json.dumps({"out": FLAGS.out, "rows": int(len(rows)), "tokens": int(rows.size),
                    "features": int(len(scores.scores)), "seconds": round(time.time() - start, 1),
                    "top": [{"feature": t["feature"], "score": round(float(t["score"]), 5),
                             "top_words": sorted(t["words"], key=lambda w: -t["words"][w])[:3]
                             if isinstance(t.get("words"), dict) else t.get("words")}
                            for t in top[:10]]}, default=float))


if __name__ == "__main__":
  app.run(main)
