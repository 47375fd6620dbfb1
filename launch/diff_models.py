"""Model diffing: the same SAE and token rows through two models of one width, per-feature A vs B.

  python launch/diff_models.py --model_a=runs/llama31_8b --model_b=runs/r1_llama8b --sae=path/to/sae --out=runs/diff

Tests the paper's claim that its reasoning features exist only in the reasoning model: with the SAE trained on
B (e.g. DeepSeek-R1-Distill-Llama-8B) and A its base (Llama-3.1-8B), how many of B's top ReasonScore features
(almost) never fire in A. Corpus flags and defaults are reason_score.py's, so B's scores here are the ones it
computes. The models run one after the other (one in memory at a time), each once per token. Writes per-feature
.npy arrays (means, densities, ReasonScores, B/A ratios), each model's full ReasonScore results in a/ and b/,
diff.png (log density A vs B, B's top-k in red), diff.json (summary + B's top-k list), and run.json.
"""

import gc
import json
import os
import time

from absl import app, flags

from sae_jax import runinfo
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_string("model_a", None, "Model A, the reference (e.g. the base model): converted checkpoint dir, "
                    "HF dir, .gguf or hub id.", required=True)
flags.DEFINE_string("model_b", None, "Model B, the one whose reasoning features are listed (e.g. the reasoning "
                    "distill); same width as A.", required=True)
flags.DEFINE_string("sae", None, "SAE dir in SAELens format, applied to both models (usually trained on B).",
                    required=True)
flags.DEFINE_string("out", None, "Output dir.", required=True)
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Dtype of both models (the paper: bfloat16).")
flags.DEFINE_integer("layer", None, "Layer of the hook site (default: the SAE's hook layer).")
flags.DEFINE_string("site", None, "Hook site (default: the SAE's hook site).")
flags.DEFINE_multi_string("data", ["open-thoughts/OpenThoughts-114k#builder=openthoughts_subset,config=metadata"],
                          "Text source spec(s) `PATH#key=value,...` (see sae_jax.data.parse_source); repeatable.")
flags.DEFINE_string("tokenizer", None, "Tokenizer dir for the corpus and the vocabulary (default: model B's); "
                    "its ids must fit both models' vocabularies.")
flags.DEFINE_integer("context_size", 1024, "Tokens per row.")
flags.DEFINE_enum("packing", "reference", ["reference", "clean"], "Row packing (reference = TransformerLens).")
flags.DEFINE_integer("n_rows", 4096, "Rows used, taken after the shuffle (0: all).")
flags.DEFINE_integer("shuffle_seed", 42, "Seed of the row shuffle (HF datasets); -1 keeps corpus order.")
flags.DEFINE_integer("batch_rows", 8, "Rows per model call.")
flags.DEFINE_string("vocab", None, "JSON file with the list of reasoning strings (default: the paper's 34).")
flags.DEFINE_list("window", ["1", "2"], "ReasonScore window widening (left, right) around matched tokens.")
flags.DEFINE_enum("window_mode", "reference", ["reference", "intended"],
                  "reference: the reference's distinct-starts/ends rule; intended: plain union of windows.")
flags.DEFINE_float("alpha", 0.7, "ReasonScore entropy exponent.")
flags.DEFINE_list("ignore_ids", None, "Token ids left out of every statistic (default: the tokenizer's BOS "
                  "and EOS).")
flags.DEFINE_integer("top_k", 100, "B's top ReasonScore features listed in diff.json and highlighted in the plot.")
flags.DEFINE_float("b_only_density", 1e-5, "A feature is B-only when its density in A (fraction of non-ignored "
                   "tokens where it is > 0) is below this.")
flags.DEFINE_float("ratio_eps", 1e-6, "Added to numerator and denominator of the B/A ratios.")
flags.DEFINE_list("mesh", ["-1", "1", "1"], "Mesh sizes data,fsdp,model (latents shard on model).")


def peek_config(source):
  """The ModelConfig without loading weights, when the source is local (hub ids: None, checked after loading)."""
  from sae_jax.models.config import ModelConfig
  from sae_jax.models.loading import GGUFFile
  if os.path.isdir(source):
    return ModelConfig.from_json(source)
  if source.endswith(".gguf"):
    if not os.path.exists(source):
      raise UserError(f"no such GGUF file: {source}")
    return ModelConfig.from_hf_dict(GGUFFile(source).hf_config())
  return None


@exit_on_user_error
def main(argv):
  del argv
  import jax.numpy as jnp
  import numpy as np
  from tqdm import tqdm
  from sae_jax.activations.collect import make_site_fn
  from sae_jax.data import load_tokenizer
  from sae_jax.data.packing import extraction_rows
  from sae_jax.features import DEFAULT_REASON_STRINGS, Vocabulary, load_reason_strings
  from sae_jax.features.diffing import (FeatureStatsAccumulator, check_batches, check_pair, check_rows_fit,
                                        diff_stats, model_stats)
  from sae_jax.models import checkpoint, sharding
  from sae_jax.sae import fold_activation_norm_scaling_factor, load_saelens

  sharding.maybe_initialize_distributed()
  start = time.time()
  if FLAGS.top_k < 1:
    raise UserError(f"--top_k must be positive, got {FLAGS.top_k}")
  if not 0 <= FLAGS.b_only_density <= 1:
    raise UserError(f"--b_only_density is a fraction of tokens in [0, 1], got {FLAGS.b_only_density}")
  if not FLAGS.ratio_eps > 0:
    raise UserError(f"--ratio_eps must be positive, got {FLAGS.ratio_eps}")
  mesh = sharding.make_mesh(*[int(x) for x in FLAGS.mesh])
  sae = load_saelens(FLAGS.sae)
  params = sae.params
  if sae.norm_scaling_factor is not None:  # weights still expect s*x: fold s in, features are unchanged
    params = {k: np.asarray(v) for k, v in fold_activation_norm_scaling_factor(params, sae.norm_scaling_factor)
              .items()}
  layer = sae.cfg.hook_layer if FLAGS.layer is None else FLAGS.layer
  site = FLAGS.site or sae.cfg.hook_site
  sources = {"A": FLAGS.model_a, "B": FLAGS.model_b}
  cfgs = {name: peek_config(src) for name, src in sources.items()}
  if all(cfgs.values()):  # before any weights or corpus are read
    check_pair(cfgs["A"], cfgs["B"], sae.cfg.d_in, layer)
  for cfg in cfgs.values():
    if cfg is not None and cfg.hidden_size != sae.cfg.d_in:
      raise UserError(f"SAE d_in {sae.cfg.d_in} != model width {cfg.hidden_size}")

  tokenizer = load_tokenizer(FLAGS.tokenizer or FLAGS.model_b)
  strings = load_reason_strings(FLAGS.vocab) if FLAGS.vocab else DEFAULT_REASON_STRINGS
  vocab = Vocabulary.from_tokenizer(tokenizer, strings)
  if FLAGS.ignore_ids is None:
    ignore = tuple(sorted({i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None}))
  else:
    ignore = tuple(int(i) for i in FLAGS.ignore_ids)
  rows = extraction_rows(FLAGS.data, tokenizer, FLAGS.context_size, FLAGS.packing, FLAGS.n_rows,
                         FLAGS.shuffle_seed)
  for name, cfg in cfgs.items():
    if cfg is not None:
      check_rows_fit(rows, cfg, name)
  check_batches(len(rows), FLAGS.batch_rows, mesh)

  acc = FeatureStatsAccumulator(params, vocab, sae_cfg=sae.cfg, window=tuple(int(w) for w in FLAGS.window),
                                mode=FLAGS.window_mode, ignore_ids=ignore, mesh=mesh)
  stats, loaded = {}, {}
  for name, src in sources.items():
    model = checkpoint.load_any(src, dtype=jnp.dtype(FLAGS.dtype), mesh=mesh)
    loaded[name] = model.cfg
    check_rows_fit(rows, model.cfg, name)  # again, as loaded (hub ids are only known now)
    if name == "B":
      check_pair(loaded["A"], model.cfg, sae.cfg.d_in, layer)
    elif model.cfg.hidden_size != sae.cfg.d_in:
      raise UserError(f"SAE d_in {sae.cfg.d_in} != model width {model.cfg.hidden_size}")
    site_fn = make_site_fn(model, layer, site, mesh)
    with tqdm(total=len(rows), desc=f"model {name}", unit="row", mininterval=2.0) as bar:
      stats[name] = model_stats(site_fn, rows, acc, batch_rows=FLAGS.batch_rows, alpha=FLAGS.alpha,
                                progress=lambda done, n: bar.update(done - bar.n))
    del model, site_fn  # one model in memory at a time
    gc.collect()

  diff = diff_stats(stats["A"], stats["B"], ratio_eps=FLAGS.ratio_eps, b_only_density=FLAGS.b_only_density)
  models = {name.lower(): {"source": src, "architecture": loaded[name].architecture,
                           "hidden_size": loaded[name].hidden_size, "num_layers": loaded[name].num_layers}
            for name, src in sources.items()}
  diff.save(FLAGS.out, FLAGS.top_k, extra={
      "models": models, "sae": FLAGS.sae, "layer": layer, "site": site, "rows": int(len(rows)),
      "context_size": int(rows.shape[1]), "reasonscore": stats["B"].reason.settings})
  runinfo.write_run_json(FLAGS.out)
  summary = diff.summary(FLAGS.top_k)
  print(json.dumps({"out": FLAGS.out, "rows": int(len(rows)), "tokens": int(rows.size),
                    "seconds": round(time.time() - start, 1), "summary": summary,
                    "top": [{k: t[k] for k in ("feature", "score_b", "score_a", "density_a", "density_b",
                                               "mean_log2_ratio", "b_only")}
                            for t in diff.top(min(10, FLAGS.top_k))]}, default=float))


if __name__ == "__main__":
  app.run(main)
