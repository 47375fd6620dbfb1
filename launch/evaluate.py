"""Benchmark evaluation of the model unsteered and steered by SAE features, with a side-by-side report.

  python launch/evaluate.py --config.model.path=runs/r1_llama8b --sae=SAE_DIR --out=runs/eval_paper

The default config (configs/eval_paper_r1_llama8b.py) is the paper's: feature 46379 of the layer-19 SAE at
strength 2.0 x max activation 5.840 (the reference's intervention), against the unsteered model, on AIME 2024,
MATH-500 and GPQA Diamond; T 0.6, top-p 0.95, up to 32,768 new tokens, one sample per problem. One process runs
the baseline and every setting (steering.features x steering.strengths) on one compiled engine. Every finished
sample is appended to samples.jsonl in --out: rerun the same command after a kill and only the missing samples
run. Writes summary.json, report.md, PNG plots and steering.json (which units each setting is in).
"""

from absl import flags

import common
from sae_jax import runs

SECTIONS = ("model", "mesh", "tasks", "sampling", "engine", "steering")
FLAGS = flags.FLAGS
common.define_config(SECTIONS, default="eval_paper_r1_llama8b.py",
                     sae=common.SAE_HELP + " Its steering.features are steered; without it only the baseline runs.",
                     out="Output dir (samples.jsonl, summary.json, report.md, plots, steering.json).")
flags.DEFINE_string("dashboard", "", "A launch/dashboard.py output dir: the max activation of every steered feature "
                    "when steering.max_activations is empty (and shown beside given ones).")
flags.adopt_module_key_flags(common)

if __name__ == "__main__":
  common.main(SECTIONS, lambda c: runs.evaluate(c, FLAGS.sae, FLAGS.out, FLAGS.dashboard), required=("out",))
