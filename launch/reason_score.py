"""ReasonScore of every SAE feature in one pass over the extraction corpus (REFERENCE.md section 6).

  python launch/reason_score.py --model=runs/r1_llama8b --sae=path/to/saelens_dir --out=runs/reasonscore

Paper defaults: the OpenThoughts 10k extraction subset in the DeepSeek template, TransformerLens-style
packing into 1024-token rows, rows shuffled with seed 42 (HF `datasets` shuffle, as the reference), the
first 4096 rows; window (1, 2) with the reference's rule, alpha 0.7, BOS/EOS ignored. The model runs once
per token whatever the dictionary size. Writes scores, mu+, mu-, per-word means, entropy (.npy), the
top-k list (`top_k.json`), and run.json.

With `--activations=DIR` (a cache from collect_activations.py) no model runs: the cache's token rows and
activations are scored, so one collection serves many SAEs, vocabularies and window settings.
"""

import json
import os
import time

from absl import app, flags

import common_flags
from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Converted checkpoint dir, HF dir, .gguf or hub id (not needed with "
                    "--activations).")
flags.DEFINE_string("activations", None, "Activation cache of launch/collect_activations.py (with its token rows) "
                    "to score instead of running the model; --n_rows then takes the cache's first rows.")
flags.DEFINE_string("sae", None, "SAE dir in SAELens format (ours or e.g. the paper's released SAE).",
                    required=True)
flags.DEFINE_string("out", None, "Output dir.", required=True)
flags.DEFINE_integer("top_k", 100, "Features listed in top_k.json.")
common_flags.define_site_flags()
common_flags.define_corpus_flags(n_rows=4096, shuffle=True, tokenizer_help="Tokenizer dir (default: the model's, "
                                 "or with --activations the one the cache was collected with).")
common_flags.define_reasonscore_flags()
flags.adopt_module_key_flags(common_flags)  # in --help and run.json like the script's own


@exit_on_user_error
def main(argv):
  del argv
  import jax.numpy as jnp
  from tqdm import tqdm
  from sae_jax.activations.collect import make_site_fn
  from sae_jax.data import load_tokenizer
  from sae_jax.features import reasonscore_corpus
  from sae_jax.models import checkpoint, sharding
  from sae_jax.sae import load_saelens

  sharding.maybe_initialize_distributed()
  start = time.time()
  if FLAGS.top_k < 1:
    raise UserError(f"--top_k must be positive, got {FLAGS.top_k}")
  if bool(FLAGS.model) == bool(FLAGS.activations):
    raise UserError("give exactly one of --model (run the model) and --activations (a cache of its activations)")
  mesh = common_flags.mesh()
  sae = load_saelens(FLAGS.sae)
  layer, site = common_flags.hook(sae)
  if FLAGS.activations:
    cache = common_flags.open_cache(FLAGS.activations, sae, layer, site)
    tokenizer = load_tokenizer(FLAGS.tokenizer or cache.tokenizer)
    settings = common_flags.reasonscore_settings(tokenizer)
    cache.check_ignored(settings["ignore_ids"])
    rows, site_fn = common_flags.head_rows(cache.rows), cache.site_fn()
  else:
    tokenizer = load_tokenizer(FLAGS.tokenizer or FLAGS.model)
    settings = common_flags.reasonscore_settings(tokenizer)
    model = checkpoint.load_any(FLAGS.model, dtype=jnp.dtype(FLAGS.dtype), mesh=mesh)
    if model.cfg.hidden_size != sae.cfg.d_in:
      raise UserError(f"SAE d_in {sae.cfg.d_in} != model width {model.cfg.hidden_size}")
    rows = common_flags.corpus_rows(tokenizer)
    site_fn = make_site_fn(model, layer, site, mesh)
  vocab = common_flags.vocabulary(tokenizer)
  with tqdm(total=len(rows), desc="reason_score", unit="row", mininterval=2.0) as bar:
    scores = reasonscore_corpus(
        site_fn, rows, sae.raw_input_params(), vocab, batch_rows=FLAGS.batch_rows, alpha=FLAGS.alpha,
        progress=lambda done, n: bar.update(done - bar.n), sae_cfg=sae.cfg, mesh=mesh, **settings)
  scores.save(FLAGS.out)
  top = scores.top_k(FLAGS.top_k)
  tmp = os.path.join(FLAGS.out, "top_k.json.tmp")
  with open(tmp, "w") as f:
    json.dump(top, f, indent=1, default=float)
  os.replace(tmp, os.path.join(FLAGS.out, "top_k.json"))
  runinfo.write_run_json(FLAGS.out)
  print(json.dumps({"out": FLAGS.out, "rows": int(len(rows)), "tokens": int(rows.size),
                    "source": FLAGS.activations or FLAGS.model,
                    "features": int(len(scores.scores)), "seconds": round(time.time() - start, 1),
                    "top": [{"feature": t["feature"], "score": round(float(t["score"]), 5),
                             "top_words": sorted(t["words"], key=lambda w: -t["words"][w])[:3]}
                            for t in top[:10]]}, default=float))


if __name__ == "__main__":
  app.run(main)
