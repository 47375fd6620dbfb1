"""Static HTML dashboards of the top ReasonScore features (REFERENCE.md section 7).

  python launch/dashboard.py --model=runs/r1_llama8b --sae=path/to/saelens_dir --scores=runs/reasonscore \
      --out=runs/dashboards

Paper defaults: the first 10,000 rows (unshuffled) of the OpenThoughts 10k extraction set, packed like
TransformerLens into 1024-token rows; the top 100 features by ReasonScore; folded activations. One model pass
over the rows. Writes index.html, feature_<id>.html per feature, features.json (same data) and run.json.
Open index.html in any browser: the pages are self-contained (no JS, no server, no external assets).
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
flags.DEFINE_string("scores", None, "ReasonScore results dir (launch/reason_score.py --out): the features are "
                    "its --top_k best, shown with their per-word breakdown.")
flags.DEFINE_list("features", None, "Feature ids to show, in this order (instead of, or a subset of, --scores).")
flags.DEFINE_integer("top_k", 100, "With --scores and no --features: how many of the best features to show.")
flags.DEFINE_multi_string("data", ["open-thoughts/OpenThoughts-114k#builder=openthoughts_subset,config=metadata"],
                          "Text source spec(s) `PATH#key=value,...` (see sae_jax.data.parse_source).")
flags.DEFINE_string("tokenizer", None, "Tokenizer dir (default: the model's).")
flags.DEFINE_integer("context_size", 1024, "Tokens per row.")
flags.DEFINE_enum("packing", "reference", ["reference", "clean"], "Row packing (reference = TransformerLens).")
flags.DEFINE_integer("n_rows", 10000, "The first rows of the packed corpus, unshuffled (0: all).")
flags.DEFINE_integer("batch_rows", 8, "Rows per model call.")
flags.DEFINE_string("out", None, "Output dir (replaced atomically; must be new or an earlier dashboard).",
                    required=True)
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Model dtype (the paper: bfloat16).")
flags.DEFINE_integer("layer", None, "Layer of the hook site (default: the SAE's hook layer).")
flags.DEFINE_string("site", None, "Hook site (default: the SAE's hook site).")
flags.DEFINE_list("ignore_ids", [], "Token ids that never count as firing (default none, as SAEDashboard; "
                  "e.g. BOS,EOS to keep them out of the max activation).")
flags.DEFINE_string("vocab", None, "JSON list of reasoning strings marked in contexts (default: the paper's 34).")
flags.DEFINE_integer("n_top", 20, "Examples in the top-activating group.")
flags.DEFINE_integer("n_quantiles", 10, "Equal intervals of (0, max] with sampled examples.")
flags.DEFINE_integer("quantile_group_size", 5, "Examples sampled per interval.")
flags.DEFINE_list("context", ["5", "5"], "Context tokens (left, right) around each example.")
flags.DEFINE_integer("seed", 0, "Seed of the deterministic interval samples.")
flags.DEFINE_list("mesh", ["-1", "1", "1"], "Mesh sizes data,fsdp,model.")
flags.DEFINE_string("autointerp_url", None, "OpenAI-compatible endpoint (e.g. http://host:8000/v1) asked for a "
                    "label per feature; off when unset.")
flags.DEFINE_string("autointerp_model", None, "Model name sent to --autointerp_url.")
flags.DEFINE_string("autointerp_key_env", "OPENAI_API_KEY", "Environment variable holding the endpoint's API key "
                    "(may be unset for local servers).")


def dashboard_features(scores, features, top_k):
  """Feature ids in display order: --features as given, else the top_k of the ReasonScore results."""
  if features:
    try:
      return [int(f) for f in features]
    except ValueError:
      raise UserError(f"--features must be integers, got {features}") from None
  if scores is None:
    raise UserError("give --scores (ReasonScore results) or --features=1,2,3")
  if top_k <= 0:
    raise UserError(f"--top_k must be positive, got {top_k}")
  return [t["feature"] for t in scores.top_k(top_k)]


@exit_on_user_error
def main(argv):
  del argv
  import jax.numpy as jnp
  import numpy as np
  from tqdm import tqdm
  from sae_jax.activations.collect import make_site_fn
  from sae_jax.data import build_rows, load_tokenizer
  from sae_jax.features.dashboard import (DashboardConfig, build_dashboards, check_features,
                                          collect_feature_stats, unembedding, write_dashboards)
  from sae_jax.features.reasonscore import ReasonScores
  from sae_jax.features.vocab import DEFAULT_REASON_STRINGS, Vocabulary, load_reason_strings
  from sae_jax.models import checkpoint, sharding
  from sae_jax.sae import fold_activation_norm_scaling_factor, load_saelens

  sharding.maybe_initialize_distributed()
  start = time.time()
  if FLAGS.batch_rows <= 0:
    raise UserError(f"--batch_rows must be positive, got {FLAGS.batch_rows}")
  if FLAGS.n_rows < 0:
    raise UserError(f"--n_rows must be >= 0, got {FLAGS.n_rows}")
  try:
    context = tuple(int(c) for c in FLAGS.context)
    ignore = tuple(int(i) for i in FLAGS.ignore_ids)
    mesh_sizes = [int(x) for x in FLAGS.mesh]
  except ValueError as e:
    raise UserError(f"--context, --ignore_ids and --mesh take integers: {e}") from None
  config = DashboardConfig(n_top=FLAGS.n_top, n_quantiles=FLAGS.n_quantiles,
                           quantile_group_size=FLAGS.quantile_group_size, context=context, seed=FLAGS.seed)
  if FLAGS.autointerp_url and not FLAGS.autointerp_model:
    raise UserError("--autointerp_url needs --autointerp_model")
  scores = ReasonScores.load(FLAGS.scores) if FLAGS.scores else None
  sae = load_saelens(FLAGS.sae)
  features = check_features(dashboard_features(scores, FLAGS.features, FLAGS.top_k), sae.cfg.d_sae).tolist()
  if scores is not None and len(scores.scores) != sae.cfg.d_sae:
    raise UserError(f"--scores has {len(scores.scores)} features but the SAE has {sae.cfg.d_sae}")
  params = sae.params
  if sae.norm_scaling_factor is not None:  # weights still expect s*x: fold s in, features are unchanged
    params = {k: np.asarray(v) for k, v in fold_activation_norm_scaling_factor(params, sae.norm_scaling_factor)
              .items()}
  layer = sae.cfg.hook_layer if FLAGS.layer is None else FLAGS.layer
  site = FLAGS.site or sae.cfg.hook_site
  mesh = sharding.make_mesh(*mesh_sizes)
  tokenizer = load_tokenizer(FLAGS.tokenizer or FLAGS.model)
  model = checkpoint.load_any(FLAGS.model, dtype=jnp.dtype(FLAGS.dtype), mesh=mesh)
  if model.cfg.hidden_size != sae.cfg.d_in:
    raise UserError(f"SAE d_in {sae.cfg.d_in} != model width {model.cfg.hidden_size}")
  strings = load_reason_strings(FLAGS.vocab) if FLAGS.vocab else DEFAULT_REASON_STRINGS
  vocab = Vocabulary.from_tokenizer(tokenizer, strings)
  rows = build_rows(list(FLAGS.data), tokenizer, context_size=FLAGS.context_size, mode=FLAGS.packing,
                    num_rows=FLAGS.n_rows or None)
  if len(rows) == 0:
    raise UserError(f"the corpus {list(FLAGS.data)} gave no rows of {FLAGS.context_size} tokens")
  n_data = mesh.shape["data"] * mesh.shape["fsdp"]
  if FLAGS.batch_rows % n_data:
    raise UserError(f"--batch_rows={FLAGS.batch_rows} does not split over {n_data} data shards (--mesh)")

  site_fn = make_site_fn(model, layer, site, mesh)
  with tqdm(total=len(rows), desc="dashboard", unit="row", mininterval=2.0) as bar:
    stats = collect_feature_stats(site_fn, rows, params, features, batch_rows=FLAGS.batch_rows, mesh=mesh,
                                  progress=lambda done, n: bar.update(done - bar.n), sae_cfg=sae.cfg,
                                  vocab=vocab, config=config, ignore_ids=ignore)
  meta = {"model": FLAGS.model, "sae": FLAGS.sae, "hook": f"blocks.{layer}.hook_{site}", "scores": FLAGS.scores,
          "data": list(FLAGS.data), "packing": FLAGS.packing, "context_size": FLAGS.context_size,
          "n_rows": int(len(rows)), "n_tokens": int(rows.size), "ignore_ids": list(ignore)}
  data = build_dashboards(stats, tokenizer, w_dec_rows=np.asarray(params["W_dec"])[features],
                          unembed=unembedding(model), scores=scores, group_names=vocab.group_names,
                          config=config, meta=meta)
  if FLAGS.autointerp_url:
    from sae_jax.features.autointerp import label_features
    label_features(data, FLAGS.autointerp_url, FLAGS.autointerp_model,
                   api_key=os.environ.get(FLAGS.autointerp_key_env))
  write_dashboards(data, FLAGS.out)
  runinfo.write_run_json(FLAGS.out)
  print(json.dumps({"out": FLAGS.out, "index": os.path.join(FLAGS.out, "index.html"), "rows": int(len(rows)),
                    "tokens": int(rows.size), "features": len(features), "seconds": round(time.time() - start, 1),
                    "max_activation": {str(f["feature"]): round(f["max_activation"], 4)
                                       for f in data["features"][:10]}}))


if __name__ == "__main__":
  app.run(main)
