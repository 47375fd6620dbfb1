"""The paper's SAE: DeepSeek-R1-Distill-Llama-8B, resid_post of layer 19, 4096 -> 65536.

  python launch/train_sae.py --config=configs/paper_r1_llama8b_l19.py --config.model.path=/ckpt/r1_llama8b

Every other value of the paper's run is a default: the training corpus (`sae_jax.paper`), the SAE and its
schedule (`sae_jax.sae.SAEConfig`), the trainer (`sae_jax.sae.trainer.TrainerOptions`), ReasonScore.

The token budget, as the reference had it: 781,250 rows of 1024 tokens (800M; `paper.TRAINING_ROWS`) keep ~799M
activations without BOS/EOS, i.e. ~6,100 buffer halves of 131,072, the first only priming the buffer: ~195,000
batches of 4096 a pass. The run takes 200,000 steps + 1,000 batches for the norm estimate = 201,000 (823.3M
activations), so the data starts again once, as SAELens did (`activations.loop`): ~1.03 passes. train_sae.py
prints the exact numbers before step 0; with `--config.activations.loop=false` a run that one pass cannot
cover fails there with them.
"""

from configs import default
from sae_jax import paper


def get_config():
  c = default.get_config()
  c.model.path = paper.MODEL
  c.sae.update(d_in=paper.D_IN, d_sae=paper.D_IN * paper.EXPANSION, model_name=paper.MODEL)
  c.trainer.update(out_dir="runs/paper_r1_llama8b_l19", log_every=100, checkpoint_every=5000)
  c.activations.loop = True  # start the data again when it runs out, as SAELens does (see above)
  return c
