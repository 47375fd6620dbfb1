"""Model diffing: the same SAE and token rows through two models of one width, per-feature A vs B.

  python launch/diff_models.py --model_a=runs/llama31_8b --config.model.path=runs/r1_llama8b --sae=path/to/sae \
      --out=runs/diff

Tests the paper's claim that its reasoning features exist only in the reasoning model: with the SAE trained on
B (e.g. DeepSeek-R1-Distill-Llama-8B, the config's model) and A its base (Llama-3.1-8B), how many of B's top
ReasonScore features (almost) never fire in A. The default config is reason_score.py's, so B's scores here are
the ones it computes. The models run one after the other (one in memory at a time), each once per token.
Writes per-feature .npy arrays (means, densities, ReasonScores, B/A ratios), each model's full ReasonScore
results in a/ and b/, diff.png (log density A vs B, B's top-k in red), diff.json (summary + B's top-k list), and
run.json. Either model may be replaced by a cache of its activations (--activations_a,
--config.activations.cache_dir for B; collected with the same data config); the rows are then the cache's.
"""

from absl import flags

import common
from sae_jax import runs

SECTIONS = ("model", "mesh", "data", "activations", "hook", "reasonscore", "diff")
FLAGS = flags.FLAGS
common.define_config(SECTIONS, default="paper_reasonscore_extraction.py", out="Output dir.",
                     sae=common.SAE_HELP + " Applied to both models (usually trained on B).")
flags.DEFINE_string("model_a", None, "Model A, the reference (e.g. the base model): converted checkpoint dir, HF "
                    "dir, .gguf or hub id; same width as B (--config.model.path), read with model.dtype.")
flags.DEFINE_string("activations_a", None, "Instead of --model_a: a cache of A's activations "
                    "(launch/collect_activations.py) on the same rows as B's.")
flags.adopt_module_key_flags(common)

if __name__ == "__main__":
  common.main(SECTIONS, lambda c: runs.diff_models(c, FLAGS.sae, FLAGS.out, model_a=FLAGS.model_a or "",
                                                   activations_a=FLAGS.activations_a or "", given=common.given()))
