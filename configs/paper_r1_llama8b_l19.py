"""The paper's SAE: DeepSeek-R1-Distill-Llama-8B, resid_post of layer 19, 4096 -> 65536.

  python launch/train_sae.py --config=configs/paper_r1_llama8b_l19.py --config.model.path=/ckpt/r1_llama8b

Every other value of the paper's run is a default: the training corpus (`sae_jax.paper`), the SAE and its
schedule (`sae_jax.sae.SAEConfig`), the trainer (`sae_jax.sae.trainer.TrainerOptions`), ReasonScore.
"""

from configs import default
from sae_jax import paper


def get_config():
  c = default.get_config()
  c.model.path = paper.MODEL
  c.sae.update(d_in=paper.D_IN, d_sae=paper.D_IN * paper.EXPANSION, model_name=paper.MODEL)
  c.trainer.update(out_dir="runs/paper_r1_llama8b_l19", log_every=100, checkpoint_every=5000)
  return c
