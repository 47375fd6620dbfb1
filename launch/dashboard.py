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

import common_flags
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
flags.DEFINE_string("out", None, "Output dir (replaced atomically; must be new or an earlier dashboard).",
                    required=True)
common_flags.define_site_flags()
common_flags.define_corpus_flags(n_rows=10000, shuffle=False)
flags.DEFINE_list("ignore_ids", [], "Token ids that never count as firing (default none, as SAEDashboard; "
                  "e.g. BOS,EOS to keep them out of the max activation).")
flags.DEFINE_string("vocab", None, "JSON list of reasoning strings marked in contexts (default: the paper's 34).")
flags.DEFINE_integer("n_top", 20, "Examples in the top-activating group.")
flags.DEFINE_integer("n_quantiles", 10, "Equal intervals of (0, max] with sampled examples.")
flags.DEFINE_integer("quantile_group_size", 5, "Examples sampled per interval.")
flags.DEFINE_list("context", ["5", "5"], "Context tokens (left, right) around each example.")
flags.DEFINE_integer("seed", 0, "Seed of the deterministic interval samples.")
flags.DEFINE_string("autointerp_url", None, "OpenAI-compatible endpoint (e.g. http://host:8000/v1) asked for a "
                    "label per feature; off when unset.")
flags.DEFINE_string("autointerp_model", None, "Model name sent to --autointerp_url.")
flags.DEFINE_string("autointerp_key_env", "OPENAI_API_KEY", "Environment variable holding the endpoint's API key "
                    "(may be unset for local servers).")
flags.adopt_module_key_flags(common_flags)  # in --help and run.json like the script's own


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
  from sae_jax.data import load_tokenizer
  from sae_jax.features.dashboard import (DashboardConfig, build_dashboards, check_features,
                                          collect_feature_stats, unembedding, write_dashboards)
  from sae_jax.features.reasonscore import ReasonScores
  from sae_jax.models import checkpoint, sharding
  from sae_jax.sae import load_saelens

  sharding.maybe_initialize_distributed()
  start = time.time()
  if FLAGS.batch_rows <= 0:
    raise UserError(f"--batch_rows must be positive, got {FLAGS.batch_rows}")
  context = common_flags.int_list("context")
  ignore = common_flags.int_list("ignore_ids")
  config = DashboardConfig(n_top=FLAGS.n_top, n_quantiles=FLAGS.n_quantiles,
                           quantile_group_size=FLAGS.quantile_group_size, context=context, seed=FLAGS.seed)
  if FLAGS.autointerp_url and not FLAGS.autointerp_model:
    raise UserError("--autointerp_url needs --autointerp_model")
  scores = ReasonScores.load(FLAGS.scores) if FLAGS.scores else None
  sae = load_saelens(FLAGS.sae)
  features = check_features(dashboard_features(scores, FLAGS.features, FLAGS.top_k), sae.cfg.d_sae).tolist()
  if scores is not None and len(scores.scores) != sae.cfg.d_sae:
    raise UserError(f"--scores has {len(scores.scores)} features but the SAE has {sae.cfg.d_sae}")
  params = sae.raw_input_params()
  layer, site = common_flags.hook(sae)
  mesh = common_flags.mesh()
  tokenizer = load_tokenizer(FLAGS.tokenizer or FLAGS.model)
  model = checkpoint.load_any(FLAGS.model, dtype=jnp.dtype(FLAGS.dtype), mesh=mesh)
  if model.cfg.hidden_size != sae.cfg.d_in:
    raise UserError(f"SAE d_in {sae.cfg.d_in} != model width {model.cfg.hidden_size}")
  vocab = common_flags.vocabulary(tokenizer)
  rows = common_flags.corpus_rows(tokenizer)
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
