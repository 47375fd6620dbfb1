"""ReasonScore of every SAE feature in one pass over the extraction corpus.

  python launch/reason_score.py --config.model.path=runs/r1_llama8b --sae=path/to/saelens_dir --out=runs/rs

The default config (configs/paper_reasonscore_extraction.py) is the paper's: the OpenThoughts 10k extraction
subset in the DeepSeek template, TransformerLens-style packing into 1024-token rows, rows shuffled with seed 42
(HF `datasets` shuffle, as the reference), the first 4096 rows; window (1, 2) with the reference's rule, alpha
0.7, BOS/EOS ignored. The model runs once per token whatever the dictionary size. Writes scores, mu+, mu-,
per-word means, entropy (.npy), reasonscore.json (with each array's sha256, checked by every reader), the top-k
list (`top_k.json`), and run.json: one dir, filled aside and swapped in whole (--out must be new, empty or an
earlier reason_score output).

With `--config.activations.cache_dir=DIR` (a cache of collect_activations.py) no model runs: the cache's token
rows (the first data.num_rows) and activations are scored, so one collection serves many SAEs and settings.
"""

from absl import flags

import common
from sae_jax import runs

SECTIONS = ("model", "mesh", "data", "activations", "hook", "reasonscore")
FLAGS = flags.FLAGS
common.define_config(SECTIONS, default="paper_reasonscore_extraction.py", sae=common.SAE_HELP, out="Output dir.")
flags.adopt_module_key_flags(common)

if __name__ == "__main__":
  common.main(SECTIONS, lambda c: runs.reason_score(c, FLAGS.sae, FLAGS.out, given=common.given()))
