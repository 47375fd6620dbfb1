"""Model diffing: the same SAE and token rows through two models of one width, per-feature A vs B.

  python launch/diff_models.py --model_a=runs/llama31_8b --model_b=runs/r1_llama8b --sae=path/to/sae --out=runs/diff

Tests the paper's claim that its reasoning features exist only in the reasoning model: with the SAE trained on
B (e.g. DeepSeek-R1-Distill-Llama-8B) and A its base (Llama-3.1-8B), how many of B's top ReasonScore features
(almost) never fire in A. Corpus flags and defaults are reason_score.py's, so B's scores here are the ones it
computes. The models run one after the other (one in memory at a time), each once per token. Writes per-feature
.npy arrays (means, densities, ReasonScores, B/A ratios), each model's full ReasonScore results in a/ and b/,
diff.png (log density A vs B, B's top-k in red), diff.json (summary + B's top-k list), and run.json.
Either model may be replaced by a cache of its activations (--activations_a/_b, from collect_activations.py
with the same data config); the rows are then the cache's.
"""

import gc
import json
import time

from absl import app, flags

import common_flags
from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_string("model_a", None, "Model A, the reference (e.g. the base model): converted checkpoint dir, "
                    "HF dir, .gguf or hub id.")
flags.DEFINE_string("model_b", None, "Model B, the one whose reasoning features are listed (e.g. the reasoning "
                    "distill); same width as A.")
flags.DEFINE_string("activations_a", None, "Instead of --model_a: a cache of A's activations "
                    "(launch/collect_activations.py); the rows are then the cache's.")
flags.DEFINE_string("activations_b", None, "Instead of --model_b: a cache of B's activations on the same rows.")
flags.DEFINE_string("sae", None, "SAE dir in SAELens format, applied to both models (usually trained on B).",
                    required=True)
flags.DEFINE_string("out", None, "Output dir.", required=True)
flags.DEFINE_integer("top_k", 100, "B's top ReasonScore features listed in diff.json and highlighted in the plot.")
flags.DEFINE_float("b_only_density", 1e-5, "A feature is B-only when its density in A (fraction of non-ignored "
                   "tokens where it is > 0) is below this.")
flags.DEFINE_float("ratio_eps", 1e-6, "Added to numerator and denominator of the B/A ratios.")
common_flags.define_site_flags()
common_flags.define_corpus_flags(n_rows=4096, shuffle=True, tokenizer_help="Tokenizer dir for the corpus and the "
                                 "vocabulary (default: model B's, or the tokenizer of B's cache); its ids must "
                                 "fit both models' vocabularies.")
common_flags.define_reasonscore_flags()
flags.adopt_module_key_flags(common_flags)  # in --help and run.json like the script's own


@exit_on_user_error
def main(argv):
  del argv
  import jax.numpy as jnp
  import numpy as np
  from tqdm import tqdm
  from sae_jax.activations.collect import make_site_fn
  from sae_jax.data import load_tokenizer
  from sae_jax.features.diffing import (FeatureStatsAccumulator, check_batches, check_pair, check_rows_fit,
                                        diff_stats, model_stats)
  from sae_jax.models import checkpoint, sharding
  from sae_jax.models.config import peek_config
  from sae_jax.sae import load_saelens

  sharding.maybe_initialize_distributed()
  start = time.time()
  if FLAGS.top_k < 1:
    raise UserError(f"--top_k must be positive, got {FLAGS.top_k}")
  if not 0 <= FLAGS.b_only_density <= 1:
    raise UserError(f"--b_only_density is a fraction of tokens in [0, 1], got {FLAGS.b_only_density}")
  if not FLAGS.ratio_eps > 0:
    raise UserError(f"--ratio_eps must be positive, got {FLAGS.ratio_eps}")
  sources = {"A": FLAGS.model_a, "B": FLAGS.model_b}
  cache_dirs = {"A": FLAGS.activations_a, "B": FLAGS.activations_b}
  for name in sources:
    if bool(sources[name]) == bool(cache_dirs[name]):
      raise UserError(f"give exactly one of --model_{name.lower()} and --activations_{name.lower()}")
  mesh = common_flags.mesh()
  sae = load_saelens(FLAGS.sae)
  params = sae.raw_input_params()
  layer, site = common_flags.hook(sae)
  caches = {name: common_flags.open_cache(path, sae, layer, site) for name, path in cache_dirs.items() if path}
  cfgs = {name: peek_config(src) for name, src in sources.items() if src}
  if len(cfgs) == 2 and all(cfgs.values()):  # before any weights or corpus are read
    check_pair(cfgs["A"], cfgs["B"], sae.cfg.d_in, layer)
  for cfg in cfgs.values():
    if cfg is not None and cfg.hidden_size != sae.cfg.d_in:
      raise UserError(f"SAE d_in {sae.cfg.d_in} != model width {cfg.hidden_size}")

  b_tokenizer = FLAGS.model_b or caches["B"].tokenizer
  tokenizer = load_tokenizer(FLAGS.tokenizer or b_tokenizer)
  vocab = common_flags.vocabulary(tokenizer)
  settings = common_flags.reasonscore_settings(tokenizer)
  if caches:
    rows = shared_cache_rows(caches)
    for cache in caches.values():
      cache.check_ignored(settings["ignore_ids"])
  else:
    rows = common_flags.corpus_rows(tokenizer)
  for name, cfg in cfgs.items():
    if cfg is not None:
      check_rows_fit(rows, cfg, name)
  check_batches(len(rows), FLAGS.batch_rows, mesh)

  acc = FeatureStatsAccumulator(params, vocab, sae_cfg=sae.cfg, mesh=mesh, **settings)
  stats, described, loaded = {}, {}, {}
  for name in ("A", "B"):
    if name in caches:
      site_fn = caches[name].site_fn()
      described[name] = {"activations": cache_dirs[name], "source": caches[name].meta.get("model")}
    else:
      model = checkpoint.load_any(sources[name], dtype=jnp.dtype(FLAGS.dtype), mesh=mesh)
      loaded[name] = model.cfg
      check_rows_fit(rows, model.cfg, name)  # again, as loaded (hub ids are only known now)
      if len(loaded) == 2:
        check_pair(loaded["A"], model.cfg, sae.cfg.d_in, layer)
      elif model.cfg.hidden_size != sae.cfg.d_in:
        raise UserError(f"SAE d_in {sae.cfg.d_in} != model width {model.cfg.hidden_size}")
      site_fn = make_site_fn(model, layer, site, mesh)
      described[name] = {"source": sources[name], "architecture": model.cfg.architecture,
                         "hidden_size": model.cfg.hidden_size, "num_layers": model.cfg.num_layers}
      del model  # one model in memory at a time: site_fn holds the weights until its pass ends
    with tqdm(total=len(rows), desc=f"model {name}", unit="row", mininterval=2.0) as bar:
      stats[name] = model_stats(site_fn, rows, acc, batch_rows=FLAGS.batch_rows, alpha=FLAGS.alpha,
                                progress=lambda done, n: bar.update(done - bar.n))
    del site_fn
    gc.collect()

  diff = diff_stats(stats["A"], stats["B"], ratio_eps=FLAGS.ratio_eps, b_only_density=FLAGS.b_only_density)
  diff.save(FLAGS.out, FLAGS.top_k, extra={
      "models": {name.lower(): d for name, d in described.items()}, "sae": FLAGS.sae, "layer": layer,
      "site": site, "rows": int(len(rows)), "context_size": int(rows.shape[1]),
      "reasonscore": stats["B"].reason.settings})
  runinfo.write_run_json(FLAGS.out)
  summary = diff.summary(FLAGS.top_k)
  print(json.dumps({"out": FLAGS.out, "rows": int(len(rows)), "tokens": int(rows.size),
                    "seconds": round(time.time() - start, 1), "summary": summary,
                    "top": [{k: t[k] for k in ("feature", "score_b", "score_a", "density_a", "density_b",
                                               "mean_log2_ratio", "b_only")}
                            for t in diff.top(min(10, FLAGS.top_k))]}, default=float))


def shared_cache_rows(caches):
  """The rows every cache covers (their common prefix), the first --n_rows of them; the caches must agree."""
  import numpy as np
  rows = None
  for name, cache in caches.items():
    if rows is None:
      rows = cache.rows
      continue
    n = min(len(rows), len(cache.rows))
    if not np.array_equal(rows[:n], cache.rows[:n]):
      raise UserError(f"the activation caches hold different token rows (model {name}'s differs); collect "
                      "both with the same data config")
    rows = rows[:n]
  return common_flags.head_rows(rows)


if __name__ == "__main__":
  app.run(main)
