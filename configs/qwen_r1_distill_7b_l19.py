"""The paper's recipe on DeepSeek-R1-Distill-Qwen-7B (28 layers, d_model 3584)."""

from configs import qwen_r1_distill_1p5b_l19 as qwen


def get_config():
  c = qwen.get_config()
  c.model.path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
  c.sae.d_in, c.sae.d_sae = 3584, 3584 * 16
  c.sae.model_name = c.model.path
  c.trainer.out_dir = "runs/qwen_r1_7b_l19"
  return c
