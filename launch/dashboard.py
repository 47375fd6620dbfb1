"""Static HTML dashboards of the top ReasonScore features.

  python launch/dashboard.py --config.model.path=runs/r1_llama8b --sae=path/to/saelens_dir \
      --scores=runs/reasonscore --out=runs/dashboards

The default config (configs/paper_dashboard.py) is the reference's: the first 10,000 rows (unshuffled) of the
OpenThoughts 10k extraction set, packed like TransformerLens into 1024-token rows; the top 100 features by
ReasonScore (`dashboard.top_k`); folded activations. One model pass over the rows, which also measures the SAE as
a whole on them (L0, dead and dense fractions, explained variance) and each feature's co-activations. Writes
index.html, feature_<id>.html per feature, features.json (same data) and run.json. Open index.html in any
browser: the pages are self-contained (no server, no external assets; one inline script sorts the index).
"""

from absl import flags

import common
from sae_jax import runs
from sae_jax.errors import UserError

SECTIONS = ("model", "mesh", "data", "hook", "reasonscore", "dashboard", "autointerp")
FLAGS = flags.FLAGS
common.define_config(SECTIONS, default="paper_dashboard.py", sae=common.SAE_HELP,
                     out="Output dir (replaced atomically; must be new or an earlier dashboard).")
flags.DEFINE_string("scores", None, "ReasonScore results dir (launch/reason_score.py --out): the features are "
                    "its dashboard.top_k best, shown with their per-word breakdown.")
flags.DEFINE_list("features", None, "Feature ids to show, in this order (instead of the best of --scores).")
flags.adopt_module_key_flags(common)


def dashboard(c) -> dict:
  try:
    features = [int(f) for f in FLAGS.features or ()]
  except ValueError:
    raise UserError(f"--features must be integers, got {FLAGS.features}") from None
  return runs.dashboard(c, FLAGS.sae, FLAGS.out, FLAGS.scores, features)


if __name__ == "__main__":
  common.main(SECTIONS, dashboard)
