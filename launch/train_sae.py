"""Train an SAE on residual-stream activations (on the fly from the model, or from cached shards).

  python launch/train_sae.py --config=configs/paper_r1_llama8b_l19.py --config.model.path=/ckpt/r1_llama8b
  python launch/train_sae.py --config=configs/demo_smollm2.py --config.activations.cache_dir=runs/acts

Rerunning the same command after a kill or preemption resumes from the last checkpoint in
`trainer.out_dir`/checkpoints (under the same settings: a changed key is refused by name). SIGTERM / SIGINT
save first (exit 143 / 130), from the norm estimate on; before it (model load, tokenization) they stop at once
saying nothing was saved. Each phase of the start prints a line on stderr. Writes metrics.jsonl, tensorboard/,
result.json, run.json, and the final SAE in SAELens format under `trainer.out_dir`/sae.
"""

from absl import flags

import common
from sae_jax import runs

SECTIONS = ("model", "mesh", "data", "activations", "sae", "trainer", "eval")
common.define_config(SECTIONS)
flags.adopt_module_key_flags(common)

if __name__ == "__main__":
  common.main(SECTIONS, runs.train, required=(), out_dir=lambda c: runs.section(c, "trainer").out_dir)
