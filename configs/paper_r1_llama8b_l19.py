"""The paper's SAE: DeepSeek-R1-Distill-Llama-8B, resid_post of layer 19, 4096 -> 65536.

  python launch/train_sae.py --config=configs/paper_r1_llama8b_l19.py --config.model.path=/ckpt/r1_llama8b

Every other value of the paper's run is a default: the training corpus (`sae_jax.data.corpus`), the SAE and
its schedule (`sae_jax.sae.SAEConfig`), the trainer (`sae_jax.sae.trainer.TrainerOptions`), ReasonScore.
"""

from configs import default

MODEL = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
D_IN, EXPANSION = 4096, 16


def get_config():
  c = default.get_config()
  c.model.path = MODEL
  c.sae.update(d_in=D_IN, d_sae=D_IN * EXPANSION, model_name=MODEL)
  c.trainer.update(out_dir="runs/paper_r1_llama8b_l19", log_every=100, checkpoint_every=5000)
  return c
